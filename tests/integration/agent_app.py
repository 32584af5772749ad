"""Durable Pydantic AI agents for the integration tests (``test_pydantic_ai``), with a
scripted ``FunctionModel`` (no network) and a call log in a file, so a test can count
how often each model request and tool call really happened across processes.

Run as a worker process: ``python -m tests.integration.agent_app --dsn DSN --log FILE
[--hold FILE]``; prints ``READY`` once working. While the ``--hold`` file exists the
``lookup`` tool waits (a test kills the worker there).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
from pydantic_ai import Agent
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel

from tidebase_async import Run, Tidebase
from tidebase_async.pydantic_ai import TidebaseDurability

#: Written by the scripted model and the tools, one JSON line per real call.
LOG = Path(os.environ.get("TIDEBASE_AGENT_LOG", "/tmp/tidebase-agent.log"))
#: While this file exists, ``lookup`` waits.
HOLD: Path | None = None


def log(entry: str) -> None:
    """Append one call to the log (fsynced: the process may be killed right after)."""
    with LOG.open("a") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())


def logged() -> list[str]:
    """The calls logged so far, in order."""
    if not LOG.exists():
        return []
    return [json.loads(line) for line in LOG.read_text().splitlines() if line]


def _returns(messages: list[ModelMessage]) -> list[ToolReturnPart]:
    return [
        part
        for message in messages
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, ToolReturnPart)
    ]


def _decide(messages: list[ModelMessage]) -> list[tuple[str, str, str]] | str:
    """The scripted model's next move: tool calls (name, JSON args, call id) or text.
    First two lookups (or a ``send`` that needs approval, when the question asks to
    send), then an answer quoting the tool results."""
    returns = _returns(messages)
    log(f"model:{len(returns)}")
    if returns:
        return "answer: " + "; ".join(str(r.content) for r in returns)
    question = str(messages[0].parts[-1].content)  # type: ignore[union-attr]
    if question.startswith("send"):
        return [("send", '{"to": "ops"}', "s1")]
    return [("lookup", '{"q": "tides"}', "c1"), ("lookup", '{"q": "moon"}', "c2")]


async def script(
    messages: list[ModelMessage], info: AgentInfo
) -> AsyncIterator[str | DeltaToolCalls]:
    """The scripted model, streamed (as it is inside workflows: live output)."""
    move = _decide(messages)
    if isinstance(move, str):
        head, _, tail = move.partition(" ")
        yield head + " "
        yield tail
        return
    for index, (name, args, call_id) in enumerate(move):
        yield {index: DeltaToolCall(name=name, json_args=args, tool_call_id=call_id)}


def plain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """The scripted model, not streamed (outside workflows)."""
    move = _decide(messages)
    if isinstance(move, str):
        return ModelResponse(parts=[TextPart(move)])
    return ModelResponse(
        parts=[ToolCallPart(name, args, tool_call_id=call_id) for name, args, call_id in move]
    )


agent = Agent(
    FunctionModel(plain, stream_function=script, model_name="scripted"),
    name="research",
    capabilities=[TidebaseDurability()],
)


@agent.tool_plain
async def lookup(q: str) -> str:
    """Look ``q`` up (waits while the hold file exists)."""
    log(f"lookup:{q}:start")
    while HOLD is not None and await anyio.Path(HOLD).exists():
        await anyio.sleep(0.02)
    log(f"lookup:{q}")
    return f"facts about {q}"


@agent.tool_plain(requires_approval=True)
async def send(to: str) -> str:
    """Send the report to ``to`` (needs a human's approval)."""
    log(f"send:{to}")
    return f"sent to {to}"


def register(tide: Tidebase) -> None:
    """The ``research`` workflow: one agent run on the input question."""

    @tide.workflow("research")
    async def research(run: Run, question: str) -> str:
        result = await agent.run(question)
        return str(result.output)


async def _main(args: argparse.Namespace) -> None:
    global HOLD
    HOLD = Path(args.hold) if args.hold else None
    tide = Tidebase(args.dsn)
    register(tide)
    async with tide:
        started = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_ready, started)
            await tide.work(concurrency=4, lease=args.lease, handle_signals=True, started=started)


async def _ready(started: anyio.Event) -> None:
    await started.wait()
    print("READY", flush=True)


def main() -> None:
    """Parse the options and run a worker until a signal stops it."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--hold")
    parser.add_argument("--lease", type=float, default=2.0)
    args = parser.parse_args()
    anyio.run(_main, args)
    sys.exit(0)


if __name__ == "__main__":
    main()
