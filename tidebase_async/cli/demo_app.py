"""The demo app of ``tidebase dev``: a small report workflow to watch in the dashboard.

``demo.report`` plans a report, researches three sections (one checkpointed step each,
with its progress in the run's state), writes a draft, then waits at the ``approve``
gate for a human (the dashboard's Approve and Reject buttons, or ``tidebase gates
resolve RUN_ID approve --approve``) and, when approved, publishes it. Nothing touches
the network; each step sleeps ``step_delay`` seconds so that progress is visible.

``{"fail": true}`` in the input makes the ``write`` step raise, to show a failed run
(``tidebase runs retry`` puts it back; it fails again, being a demo).

Run it elsewhere with ``tidebase worker tidebase_async.cli.demo_app:tide``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import anyio
import msgspec

from tidebase_async.client.tidebase import Tidebase
from tidebase_async.engine.run import Run

WORKFLOW = "demo.report"
QUEUE = "demo"
GATE = "approve"
SECTIONS = ("background", "findings", "next steps")
TOPICS = ("tides", "harbours", "lighthouses", "estuaries", "sandbanks", "currents")


class DemoInput(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    topic: str = "tides"
    step_delay: float = msgspec.field(default=0.5)
    fail: bool = False


class DemoOutput(msgspec.Struct, frozen=True, kw_only=True):
    published: bool
    title: str
    decided_by: str | None = None
    url: str | None = None


class DemoFailure(Exception):
    """What the ``write`` step raises when the input asks it to fail."""


async def _plan(topic: str, delay: float) -> list[str]:
    await anyio.sleep(delay)
    return [f"{section} of {topic}" for section in SECTIONS]


async def _research(section: str, delay: float) -> dict[str, str]:
    await anyio.sleep(delay)
    digest = hashlib.sha256(section.encode()).hexdigest()[:8]
    return {"section": section, "source": f"https://example.org/{digest}"}


async def _write(topic: str, notes: list[dict[str, str]], delay: float, fail: bool) -> str:
    await anyio.sleep(delay)
    if fail:
        raise DemoFailure(f"the draft on {topic!r} could not be written (input fail=true)")
    return "\n".join([f"A short report on {topic}", *(f"- {n['section']}" for n in notes)])


async def _publish(title: str, key: str) -> str:
    # A real publisher takes the idempotency key: steps are at-least-once.
    return f"https://example.org/reports/{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def register(tide: Tidebase) -> None:
    """Register ``demo.report`` (queue ``demo``) on ``tide``."""

    @tide.workflow(WORKFLOW, queue=QUEUE, max_attempts=1)
    async def demo_report(run: Run, input: DemoInput | None) -> DemoOutput:
        input = input or DemoInput()
        delay = min(max(input.step_delay, 0.0), 30.0)
        total = 3 + len(SECTIONS)

        async def progress(stage: str, done: int) -> None:
            await run.state.patch({"progress": {"stage": stage, "done": done, "total": total}})

        await progress("planning", 0)
        sections: list[str] = await run.step("plan", _plan, input.topic, delay)
        notes: list[dict[str, str]] = []
        for n, section in enumerate(sections, 1):
            await progress(f"researching {section}", n)
            notes.append(await run.step(f"research-{n}", _research, section, delay))
        await progress("writing", total - 2)
        draft: str = await run.step("write", _write, input.topic, notes, delay, input.fail)
        title = draft.splitlines()[0]
        await progress("awaiting approval", total - 1)
        preview: dict[str, Any] = {"title": title, "draft": draft}
        decision = await run.gate(GATE, prompt=f"Publish {title!r}?", data=preview)
        if not decision.approved:
            await progress(decision.decision, total)
            return DemoOutput(published=False, title=title, decided_by=decision.actor)
        url: str = await run.step("publish", _publish, title, f"{run.id}:publish")
        await progress("published", total)
        return DemoOutput(published=True, title=title, decided_by=decision.actor, url=url)


def create_app(dsn: str | None = None, **options: Any) -> Tidebase:
    """A Tidebase with the demo workflow registered (``options`` go to ``Tidebase``)."""
    tide = Tidebase(dsn, **options)
    register(tide)
    return tide


async def enqueue_demo_runs(tide: Tidebase, count: int, *, step_delay: float = 0.5) -> list[str]:
    """Enqueue ``count`` demo runs (topics in turn); return their ids."""
    handles = []
    for n in range(count):
        topic = TOPICS[n % len(TOPICS)]
        demo = DemoInput(topic=topic, step_delay=step_delay)
        handles.append(await tide.enqueue(WORKFLOW, input=demo))
    return [str(h.id) for h in handles]


#: For ``tidebase worker tidebase_async.cli.demo_app:tide`` (the database comes from
#: ``TIDEBASE_DATABASE_URL``, else the embedded Postgres in ``./.tidebase``).
tide = create_app()
