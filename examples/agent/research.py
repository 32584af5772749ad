"""The research agent and its workflow.

``create_agent(model)`` is a plain Pydantic AI agent with three tools (``search``,
``fetch_page`` and ``send_report``, the last one ``requires_approval=True``) and one
line that makes it durable: ``capabilities=[TidebaseDurability()]``. ``register(tide,
agent)`` adds the ``research`` workflow that runs it. Inside that workflow every model
request and tool call is a checkpointed step, token usage goes to the run's usage
ledger, the agent's events stream live on stream ``"agent"``, and ``send_report``
waits at the gate ``approve:send_report`` until a person decides.

``choose_model()`` picks the model: the scripted one (offline, deterministic) unless an
API key or ``AGENT_MODEL`` asks for a real provider.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import anyio
import msgspec
from pydantic_ai import Agent, RunContext, Tool
from pydantic_ai.models import Model, infer_model

from examples.agent.scripted import REPORT_TO, scripted_model
from examples.agent.sources import (
    Receipt,
    Source,
    deliver_report,
    fetch_source,
    search_sources,
)
from tidebase_async import Run, Tidebase, current_run
from tidebase_async.pydantic_ai import TidebaseDurability, gate_name

AGENT = "research"
WORKFLOW = "research"
#: Its own queue: workers of the other examples on the same database never take these.
QUEUE = "agent-research"
#: The gate a call of ``send_report`` waits at.
GATE = gate_name("send_report")

INSTRUCTIONS = f"""\
You are a careful research assistant. For the user's question: call `search` once,
read the most relevant result with `fetch_page`, write a short summary that names its
sources, send it with `send_report` to {REPORT_TO}, then answer with the summary and
whether the report was sent."""

#: Real models by the API key that enables them (the first key set wins).
PROVIDERS: tuple[tuple[str, str, str], ...] = (
    # (environment variable, model, pip extra of pydantic-ai-slim)
    ("OPENAI_API_KEY", "openai:gpt-4o-mini", "openai"),
    ("ANTHROPIC_API_KEY", "anthropic:claude-haiku-4-5", "anthropic"),
)


class ModelUnavailable(Exception):
    """The chosen model's provider package is not installed (the message says how)."""


# -- what the tools reach ----------------------------------------------------------------


async def canned_search(query: str) -> list[Source]:
    """The canned sources for ``query`` (a search API would go here)."""
    return search_sources(query)


async def canned_fetch(url: str) -> str:
    """The canned page at ``url`` (an HTTP client would go here)."""
    return fetch_source(url)


@dataclass(frozen=True)
class Backends:
    """The agent's dependencies (``deps``): what its tools call. Replace them with real
    services, or with fakes in tests. ``delay`` makes ``search`` and ``fetch_page`` take
    that many seconds, long enough to kill a worker in the middle by hand."""

    search: Callable[[str], Awaitable[list[Source]]] = canned_search
    fetch: Callable[[str], Awaitable[str]] = canned_fetch
    delay: float = 0.0


def backends_from_env(env: Mapping[str, str] | None = None) -> Backends:
    """The canned backends, slowed down by ``AGENT_TOOL_DELAY`` seconds if set."""
    value = (os.environ if env is None else env).get("AGENT_TOOL_DELAY") or "0"
    return Backends(delay=float(value))


# -- the tools ---------------------------------------------------------------------------


async def search(ctx: RunContext[Backends], query: str) -> list[Source]:
    """Search the web.

    Args:
        query: what to look for.
    """
    await anyio.sleep(ctx.deps.delay)
    return await ctx.deps.search(query)


async def fetch_page(ctx: RunContext[Backends], url: str) -> str:
    """Read the text of a web page.

    Args:
        url: the page's URL, from a search result.
    """
    await anyio.sleep(ctx.deps.delay)
    return await ctx.deps.fetch(url)


async def send_report(ctx: RunContext[Backends], to: str, subject: str, body: str) -> Receipt:
    """Email a research report. A person approves every report before it goes out.

    Args:
        to: the recipient's address.
        subject: the subject line.
        body: the report.
    """
    # The run id and the tool call id identify this call across re-executions: the
    # mailer sends once per key even if the step runs again after a crash.
    run = current_run()
    key = f"{run.id if run is not None else 'local'}:{ctx.tool_call_id}"
    return deliver_report(to=to, subject=subject, body=body, idempotency_key=key)


def create_agent(model: Model | str) -> Agent[Backends, str]:
    """The research agent on ``model``, durable inside tidebase workflows."""
    return Agent(
        model,
        name=AGENT,
        deps_type=Backends,
        instructions=INSTRUCTIONS,
        tools=[search, fetch_page, Tool(send_report, requires_approval=True)],
        capabilities=[TidebaseDurability()],
    )


# -- the workflow ------------------------------------------------------------------------


class ResearchInput(msgspec.Struct, frozen=True, kw_only=True):
    question: str


class ResearchOutput(msgspec.Struct, frozen=True, kw_only=True):
    question: str
    answer: str


def register(
    tide: Tidebase, agent: Agent[Backends, str], *, backends: Backends | None = None
) -> None:
    """Add the ``research`` workflow, which runs ``agent`` on the run's question with
    ``backends`` (default: ``backends_from_env()``)."""
    deps = backends or backends_from_env()

    @tide.workflow(WORKFLOW, queue=QUEUE)
    async def research(run: Run, input: ResearchInput) -> ResearchOutput:
        result = await agent.run(input.question, deps=deps)
        return ResearchOutput(question=input.question, answer=result.output)


# -- which model -------------------------------------------------------------------------


def model_name(env: Mapping[str, str]) -> str | None:
    """``AGENT_MODEL`` (any Pydantic AI model name, e.g. ``openai:gpt-4o``), else the
    model of the first provider whose API key is set, else None (the scripted model)."""
    if env.get("AGENT_MODEL"):
        return env["AGENT_MODEL"]
    for variable, name, _extra in PROVIDERS:
        if env.get(variable):
            return name
    return None


def choose_model(env: Mapping[str, str] | None = None) -> Model:
    """The model the example runs on (see ``model_name``).

    Raises:
        ModelUnavailable: the provider's package is missing; says what to install.
    """
    name = model_name(os.environ if env is None else env)
    if name is None:
        return scripted_model()
    try:
        return infer_model(name)
    except ImportError as exc:
        extra = name.partition(":")[0]
        raise ModelUnavailable(
            f"model {name!r} needs its provider package: "
            f".venv/bin/pip install 'pydantic-ai-slim[{extra}]' ({exc})"
        ) from exc


def describe(model: Model) -> str:
    """The model's name for logs."""
    return f"{model.system}:{model.model_name}"
