"""The research agent's tools and what they reach: a few canned sources, their pages,
and a pretend mail service.

Canned so the example runs offline and the same way every time. Swap the bodies of
``search_sources``, ``fetch_source`` and ``deliver_report`` for a search API, an HTTP
client and your mailer; the agent and the workflow stay as they are.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    """One search hit: what the model sees of a page before it fetches it."""

    title: str
    url: str
    snippet: str


@dataclass(frozen=True)
class Receipt:
    """What the mail service answers for a sent report."""

    message_id: str
    to: str
    subject: str


SOURCES: tuple[Source, ...] = (
    Source(
        title="Durable execution: checkpoint every side effect",
        url="https://example.com/durable-execution",
        snippet="A workflow that records each step's result resumes after a crash "
        "without redoing completed work.",
    ),
    Source(
        title="SKIP LOCKED queues in Postgres",
        url="https://example.com/skip-locked",
        snippet="Workers claim jobs with SELECT ... FOR UPDATE SKIP LOCKED; "
        "no broker besides the database is needed.",
    ),
    Source(
        title="Agents are workflows",
        url="https://example.com/agents-are-workflows",
        snippet="Every model request and tool call of an LLM agent is a step: "
        "checkpoint them and a crash costs no tokens twice.",
    ),
    Source(
        title="Humans in the loop",
        url="https://example.com/human-approval",
        snippet="Let an agent propose an irreversible action and wait, without "
        "holding a worker, until a person approves it.",
    ),
)

PAGES: dict[str, str] = {
    "https://example.com/durable-execution": (
        "Durable execution records the result of every step in a database. When the "
        "process running a workflow dies, another process replays the recorded results "
        "and continues with the first step that did not complete."
    ),
    "https://example.com/skip-locked": (
        "FOR UPDATE SKIP LOCKED lets many workers take rows from one table without "
        "waiting on each other; LISTEN/NOTIFY wakes them within milliseconds."
    ),
    "https://example.com/agents-are-workflows": (
        "An agent loop alternates model requests and tool calls. Made durable, a crash "
        "in the middle of a tool call resumes at that call: the model requests before "
        "it are read back from their checkpoints, not sent (and paid for) again."
    ),
    "https://example.com/human-approval": (
        "An approval gate parks the run: it holds no worker slot while it waits, and the "
        "decision is recorded exactly once, whoever clicks first."
    ),
}


def _words(text: str) -> set[str]:
    return {w.strip(".,:;!?()\"'").casefold() for w in text.split() if len(w) > 2}


def search_sources(query: str, *, limit: int = 3) -> list[Source]:
    """The canned sources that share most words with ``query``, best first (ties
    keep the catalogue's order, so the answer is always the same)."""
    wanted = _words(query)
    ranked = sorted(
        range(len(SOURCES)),
        key=lambda i: (-len(wanted & _words(SOURCES[i].title + " " + SOURCES[i].snippet)), i),
    )
    return [SOURCES[i] for i in ranked[:limit]]


def fetch_source(url: str) -> str:
    """The text of the page at ``url`` (only the canned ones exist)."""
    return PAGES.get(url, f"No page at {url}.")


def deliver_report(*, to: str, subject: str, body: str, idempotency_key: str) -> Receipt:
    """Pretend to mail the report. A real mailer gets ``idempotency_key``: the tool's
    step runs again if the worker dies while it runs, and the key makes the second
    delivery a no-op (at-least-once steps, exactly-once effect)."""
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:12]
    return Receipt(message_id=f"msg-{digest}", to=to, subject=subject)
