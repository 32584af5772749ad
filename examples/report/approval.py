"""The report workflow of the web examples: plan, fetch sources, write a draft, then wait
for a human to approve sending it.

The Python counterpart of the seed guide's Next.js example. A route enqueues
``generate-report`` and returns the run id; a worker executes it; the UI reads
``{"progress": {...}}`` from the run's state and the pending ``approve-send`` gate from
``tide.runs.get``; an approval route resolves the gate with ``tide.gates.resolve``.

While the run waits at the gate it holds no worker slot and no lease: a reviewer may
take days. The decision is checkpointed, so a later replay never asks again.

Nothing touches the network: sources and the "send" are deterministic fakes with short
sleeps (``step_delay``) so that the progress is visible while polling.
"""

from __future__ import annotations

import hashlib
from typing import Any

import anyio
import msgspec

from tidebase_async import Run, Tidebase

WORKFLOW = "generate-report"
#: Its own queue, so that workers of other examples on the same database (the demo's
#: ``generate-report`` has no gate) never take these runs.
QUEUE = "web-reports"
GATE = "approve-send"


class ReportInput(msgspec.Struct, frozen=True, kw_only=True):
    topic: str


class Outline(msgspec.Struct, frozen=True, kw_only=True):
    topic: str
    sections: list[str]


class Source(msgspec.Struct, frozen=True, kw_only=True):
    section: str
    url: str
    excerpt: str


class Draft(msgspec.Struct, frozen=True, kw_only=True):
    title: str
    text: str
    sources: int


class Receipt(msgspec.Struct, frozen=True, kw_only=True):
    message_id: str
    to: str


class ReportOutput(msgspec.Struct, frozen=True, kw_only=True):
    """The run's output: the draft, and whether it was sent (and who decided)."""

    sent: bool
    decided_by: str | None
    title: str
    text: str
    receipt: Receipt | None = None


# -- steps: plain typed functions; each result is checkpointed ------------------------


async def plan(topic: str, delay: float) -> Outline:
    await anyio.sleep(delay)  # stands in for an LLM call
    return Outline(topic=topic, sections=["Overview", "How it works", "Open questions"])


async def fetch_sources(outline: Outline, delay: float) -> list[Source]:
    await anyio.sleep(delay)  # stands in for HTTP requests
    digest = hashlib.sha256(outline.topic.encode()).hexdigest()
    return [
        Source(
            section=section,
            url=f"https://example.org/{digest[:8]}/{n}",
            excerpt=f"{section.lower()} of {outline.topic}, according to source {n}",
        )
        for n, section in enumerate(outline.sections, 1)
    ]


async def write_draft(outline: Outline, sources: list[Source], delay: float) -> Draft:
    await anyio.sleep(delay)
    title = f"A short report on {outline.topic}"
    lines = [title, *(f"- {s.section}: {s.excerpt} [{s.url}]" for s in sources)]
    return Draft(title=title, text="\n".join(lines), sources=len(sources))


async def send(draft: Draft, idempotency_key: str) -> Receipt:
    # A real mailer takes the idempotency key: the step is at-least-once, and a worker
    # that dies after sending but before the checkpoint would send again without it.
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()
    return Receipt(message_id=f"msg-{digest[:12]}", to="readers@example.org")


# -- the workflow ------------------------------------------------------------------------


async def progress(run: Run, stage: str, percent: int) -> None:
    """What the UI polls: ``runs.get(id).state["progress"]``."""
    await run.state.patch({"progress": {"stage": stage, "percent": percent}})


def register(tide: Tidebase, *, step_delay: float = 1.0) -> None:
    """Register ``generate-report`` on ``tide``; each fake step sleeps ``step_delay`` s."""

    @tide.workflow(WORKFLOW, queue=QUEUE, max_attempts=3)
    async def generate_report(run: Run, input: ReportInput) -> ReportOutput:
        await progress(run, "planning", 0)
        outline: Outline = await run.step("plan", plan, input.topic, step_delay)
        await progress(run, "fetching sources", 25)
        sources: list[Source] = await run.step("fetch-sources", fetch_sources, outline, step_delay)
        await progress(run, "writing draft", 50)
        draft: Draft = await run.step("write-draft", write_draft, outline, sources, step_delay)
        await progress(run, "awaiting approval", 75)
        preview: dict[str, Any] = {"title": draft.title, "text": draft.text}
        decision = await run.gate(GATE, prompt=f"Send {draft.title!r}?", data=preview)
        if not decision.approved:
            await progress(run, decision.decision, 100)  # rejected (or expired)
            return ReportOutput(
                sent=False, decided_by=decision.actor, title=draft.title, text=draft.text
            )
        await progress(run, "sending", 90)
        receipt: Receipt = await run.step("send", send, draft, f"{run.id}:send")
        await progress(run, "sent", 100)
        return ReportOutput(
            sent=True,
            decided_by=decision.actor,
            title=draft.title,
            text=draft.text,
            receipt=receipt,
        )
