"""The ``generate-report`` workflow: plan an outline, fetch sources, write the report.

The Python counterpart of the seed guide's report workflow: a web route enqueues
``generate-report`` and returns the run id, a worker process executes it, the UI reads
progress with ``tide.runs.get(run_id).state``.

Every step is a plain, typed function: its result is checkpointed as JSON and decoded
back into its declared return type (``Outline``, ``list[Source]``, ``Report``) when a
later attempt replays the step instead of executing it. Nothing here touches the
network: the "research" is deterministic fake data, with short sleeps so that the
progress is visible.

Run it with a worker::

    tidebase worker examples.report.workflow:tide

or see it survive a killed worker with ``python -m examples.report.demo``.
"""

from __future__ import annotations

import hashlib
import os
import signal
import textwrap

import anyio
import msgspec

from tidebase_async import Run, Tidebase

WORKFLOW = "generate-report"
STEPS = ("plan", "fetch-sources", "write-report")

# No DSN: TIDEBASE_DATABASE_URL if set, else the embedded Postgres in ./.tidebase.
tide = Tidebase()


class ReportInput(msgspec.Struct, frozen=True, kw_only=True):
    topic: str


class Section(msgspec.Struct, frozen=True, kw_only=True):
    title: str
    question: str


class Outline(msgspec.Struct, frozen=True, kw_only=True):
    topic: str
    sections: list[Section]


class Source(msgspec.Struct, frozen=True, kw_only=True):
    section: str
    title: str
    url: str
    excerpt: str


class Report(msgspec.Struct, frozen=True, kw_only=True):
    topic: str
    title: str
    text: str
    sections: int
    sources: int
    words: int


# Set by the demo's crashing worker (``--crash-in write-report``): when that step starts
# executing, the process kills itself with SIGKILL, like a power cut or the OOM killer.
# Nothing runs after that, not even `finally` blocks, so the run's lease is left
# dangling exactly as after a real crash. Real workflows have no such switch.
crash_in: str | None = None


def _executing(step: str, what: str) -> None:
    """Say that a step function is executing (replayed steps print nothing)."""
    print(f"[pid {os.getpid()}] executing step {step!r}: {what}", flush=True)
    if crash_in == step:
        print(f"[pid {os.getpid()}] simulating a crash: SIGKILL to myself", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        os._exit(137)  # not reached: SIGKILL cannot be caught or delayed


_FINDINGS = (
    "write down every finished piece of work before starting the next",
    "most failures are interruptions (deploys, restarts, timeouts), not bugs",
    "recording progress durably saves re-running hours of finished work",
    "retrying is only safe when each step is idempotent or checkpointed",
    "a queue plus checkpoints covers most real-world cases",
    "people want to see progress, not just the final result",
    "leases let another worker take over from one that died",
    "deterministic orchestration code makes replay predictable",
)


def _finding(topic: str, number: int) -> str:
    """A deterministic excerpt: the same in every process (``hash()`` is not)."""
    offset = hashlib.sha256(topic.encode()).digest()[0]
    return _FINDINGS[(offset + number) % len(_FINDINGS)]


def make_outline(topic: str) -> Outline:
    """Step ``plan``: the sections the report will have."""
    _executing("plan", f"outlining a report on {topic!r}")
    sections = [
        Section(title="Overview", question=f"What is {topic}, in one paragraph?"),
        Section(title="How it works", question=f"What are the moving parts of {topic}?"),
        Section(title="Where it is used", question=f"Who relies on {topic} today, and why?"),
        Section(title="Open questions", question=f"What is still unsolved about {topic}?"),
    ]
    return Outline(topic=topic, sections=sections)


async def fetch_sources(outline: Outline) -> list[Source]:
    """Step ``fetch-sources``: two (fake) sources per section, ~0.3 s in all."""
    _executing("fetch-sources", f"looking up sources for {len(outline.sections)} sections")
    sources: list[Source] = []
    for section in outline.sections:
        await anyio.sleep(0.075)  # stands in for an HTTP request
        slug = "-".join(section.title.lower().split())
        for n in (1, 2):
            sources.append(
                Source(
                    section=section.title,
                    title=f"{section.title}, note {n}",
                    url=f"https://example.org/{slug}/{n}",
                    excerpt=_finding(outline.topic, len(sources)),
                )
            )
    return sources


def write_report(outline: Outline, sources: list[Source]) -> Report:
    """Step ``write-report``: compose the text, citing the sources by number."""
    _executing("write-report", f"writing {len(outline.sections)} sections")
    title = f"A short report on {outline.topic}"
    lines = [title, "=" * len(title)]
    for section in outline.sections:
        cited = [(i, s) for i, s in enumerate(sources, 1) if s.section == section.title]
        findings = "; ".join(s.excerpt for _, s in cited)
        refs = "".join(f"[{i}]" for i, _ in cited)
        paragraph = f"{section.title}: {findings}. {refs}"
        lines.extend(
            textwrap.wrap(paragraph, width=80, initial_indent="- ", subsequent_indent="  ")
        )
    lines.append(f"({len(sources)} sources: example.org, offline demo data)")
    text = "\n".join(lines)
    return Report(
        topic=outline.topic,
        title=title,
        text=text,
        sections=len(outline.sections),
        sources=len(sources),
        words=len(text.split()),
    )


@tide.workflow(WORKFLOW, max_attempts=3)
async def generate_report(run: Run, input: ReportInput) -> Report:
    """Plan, fetch, write; progress goes to the run state after each step.

    The body re-runs from the top on every attempt: completed steps return their
    checkpoint without executing, so only the unfinished tail runs again.
    """
    await run.state.patch({"stage": "planning", "progress": 0.0})
    outline: Outline = await run.step("plan", make_outline, input.topic)
    await run.state.patch({"stage": "planned", "progress": 0.33})
    sources: list[Source] = await run.step("fetch-sources", fetch_sources, outline)
    await run.state.patch({"stage": "sources fetched", "progress": 0.67})
    report: Report = await run.step("write-report", write_report, outline, sources)
    await run.state.patch({"stage": "done", "progress": 1.0})
    return report
