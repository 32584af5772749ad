"""Output of the ``tidebase`` command: aligned tables, human times, JSON for scripts."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from tidebase_async.engine.replaycheck import ReplayCheckReport
from tidebase_async.models import GateInfo, QueueInfo, RunInfo, RunSummary, ScheduleInfo

_json_encoder = msgspec.json.Encoder()


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout (Structs, UUIDs and datetimes included)."""
    sys.stdout.write(msgspec.json.format(_json_encoder.encode(value)).decode() + "\n")


def compact(value: Any, limit: int = 120) -> str:
    """``value`` as one line of JSON, cut at ``limit`` characters."""
    text = _json_encoder.encode(value).decode()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns aligned on the widest cell; two spaces between columns."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
        for row in [list(headers), *rows]
    ]
    return "\n".join(lines)


def ago(at: datetime | None, now: datetime | None = None) -> str:
    """``3m ago``, ``in 2h``, ``just now``; ``-`` for no time."""
    if at is None:
        return "-"
    now = now or datetime.now(UTC)
    delta = (now - at).total_seconds()
    span = abs(delta)
    if span < 1:
        return "just now"
    if span >= 30 * 86400:
        return at.astimezone().strftime("%Y-%m-%d")
    text = _span(span)
    return f"{text} ago" if delta > 0 else f"in {text}"


def _span(seconds: float) -> str:
    if seconds < 60:
        return f"{int(seconds)}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h"
    return f"{int(seconds // 86400)}d"


def duration(seconds: float | None) -> str:
    """``340ms``, ``2.5s``, ``3m04s``, ``2h05m``, ``3d04h``; ``-`` for none."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = int(seconds)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def span_of(start: datetime | None, end: datetime | None, *, running: bool = False) -> str:
    """How long from ``start`` to ``end`` (to now when ``running``)."""
    if start is None:
        return "-"
    if end is None:
        if not running:
            return "-"
        end = datetime.now(UTC)
    return duration(max(0.0, (end - start).total_seconds()))


def when(at: datetime | None) -> str:
    """Local time with the relative time: ``2026-01-05 14:03:12 (3m ago)``."""
    if at is None:
        return "-"
    return f"{at.astimezone().strftime('%Y-%m-%d %H:%M:%S')} ({ago(at)})"


def error_text(error: dict[str, Any] | None) -> str:
    if not error:
        return "-"
    kind = error.get("type", "Error")
    message = str(error.get("message", "")).splitlines()
    return f"{kind}: {message[0]}" if message else str(kind)


# -- runs -------------------------------------------------------------------------------


def runs_table(items: Sequence[RunSummary]) -> str:
    now = datetime.now(UTC)
    rows = [
        [
            str(r.id),
            r.status,
            r.workflow,
            r.queue,
            str(r.attempt),
            ago(r.created_at, now),
            span_of(r.started_at, r.finished_at, running=r.status == "running"),
        ]
        for r in items
    ]
    headers = ["ID", "STATUS", "WORKFLOW", "QUEUE", "ATTEMPT", "CREATED", "DURATION"]
    return table(headers, rows)


def run_detail(run: RunInfo) -> str:
    fields: list[tuple[str, str]] = [
        ("run", str(run.id)),
        ("workflow", run.workflow),
        ("queue", run.queue),
        ("status", run.status + (f" ({run.cancel_reason})" if run.cancel_reason else "")),
        ("attempt", f"{run.attempt} (max attempts {run.max_attempts})"),
        ("priority", str(run.priority)),
        ("created", when(run.created_at)),
        ("started", when(run.started_at)),
        ("finished", when(run.finished_at)),
        ("duration", span_of(run.started_at, run.finished_at, running=run.status == "running")),
    ]
    optional: list[tuple[str, str | None]] = [
        ("dedupe key", run.dedupe_key),
        ("parent", None if run.parent_id is None else str(run.parent_id)),
        ("wakes", None if run.wake_at is None else when(run.wake_at)),
        ("deadline", None if run.deadline is None else when(run.deadline)),
        ("input", compact(run.input)),
        ("state", None if run.state is None else compact(run.state)),
        ("output", None if run.status != "completed" else compact(run.output)),
        ("error", None if run.error is None else error_text(run.error)),
        ("metadata", None if run.metadata is None else compact(run.metadata)),
    ]
    fields.extend((k, v) for k, v in optional if v is not None)
    width = max(len(k) for k, _ in fields)
    out = [f"{k.ljust(width)}  {v}" for k, v in fields]
    if run.steps:
        rows = [
            [
                str(n),
                s.name,
                s.kind,
                s.status,
                str(s.attempt),
                ago(s.started_at),
                span_of(s.started_at, s.finished_at),
                error_text(s.error) if s.error else "",
            ]
            for n, s in enumerate(run.steps, 1)
        ]
        headers = ["#", "STEP", "KIND", "STATUS", "ATTEMPT", "STARTED", "DURATION", "ERROR"]
        out += ["", "steps:", _indent(table(headers, rows))]
    if run.gates:
        out += ["", "gates:", _indent(gates_table(run.gates, with_run=False))]
    if run.children:
        rows = [[str(c.id), c.status, c.workflow, ago(c.created_at)] for c in run.children]
        out += ["", "children:", _indent(table(["ID", "STATUS", "WORKFLOW", "CREATED"], rows))]
    if run.deliveries:
        rows = [
            [d.event, d.url, d.status, str(d.attempts), d.last_error or ""] for d in run.deliveries
        ]
        headers = ["EVENT", "URL", "STATUS", "ATTEMPTS", "LAST ERROR"]
        out += ["", "deliveries:", _indent(table(headers, rows))]
    return "\n".join(out)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


# -- gates, schedules, queues -----------------------------------------------------------


def gates_table(gates: Sequence[GateInfo], *, with_run: bool = True) -> str:
    rows = []
    for g in gates:
        row = [str(g.run_id)] if with_run else []
        row += [
            g.name,
            g.status,
            ago(g.created_at),
            "-" if g.expires_at is None else ago(g.expires_at),
            g.actor or "-",
            (g.prompt or "")[:60],
        ]
        rows.append(row)
    headers = ["RUN", "GATE"] if with_run else ["GATE"]
    headers += ["STATUS", "CREATED", "EXPIRES", "ACTOR", "PROMPT"]
    return table(headers, rows)


def schedules_table(schedules: Sequence[ScheduleInfo]) -> str:
    rows = [
        [
            s.name,
            s.workflow,
            s.cron if s.cron is not None else f"every {duration(s.every)}",
            s.timezone,
            "enabled" if s.enabled else "paused",
            ago(s.next_fire_at) if s.enabled else "-",
            ago(s.last_fire_at),
            s.source,
        ]
        for s in schedules
    ]
    headers = ["NAME", "WORKFLOW", "TIMING", "TZ", "STATE", "NEXT", "LAST", "SOURCE"]
    return table(headers, rows)


_COUNTED = ("queued", "running", "waiting", "completed", "failed", "cancelled")


def queues_table(queues: Sequence[QueueInfo]) -> str:
    rows = [
        [
            q.name,
            "paused" if q.paused else "active",
            "-" if q.concurrency is None else str(q.concurrency),
            "-" if q.rate_per_minute is None else f"{q.rate_per_minute:g}/min",
            _per_key(q),
            *(str(q.counts.get(status, 0)) for status in _COUNTED),
        ]
        for q in queues
    ]
    headers = [
        "QUEUE",
        "STATE",
        "CONCURRENCY",
        "RATE",
        "PER KEY",
        *(s.upper() for s in _COUNTED),
    ]
    return table(headers, rows)


def _per_key(q: QueueInfo) -> str:
    """The per-concurrency-key caps: "2 running, 60/min", or "-"."""
    parts = []
    if q.per_key_concurrency is not None:
        parts.append(f"{q.per_key_concurrency} running")
    if q.per_key_rate_per_minute is not None:
        parts.append(f"{q.per_key_rate_per_minute:g}/min")
    return ", ".join(parts) or "-"


def queue_versions_table(queues: Sequence[QueueInfo]) -> str:
    """Queued runs of versioned workflows per version; '' when there are none. A
    version no live worker has is flagged: its runs wait for a worker with it."""
    rows = [
        [
            q.name,
            v.workflow,
            v.version,
            str(v.queued),
            duration(v.oldest_s) if v.oldest_s else "-",
            str(v.workers) if v.workers else "0  (no live worker has this version)",
        ]
        for q in queues
        for v in q.versions
    ]
    if not rows:
        return ""
    return table(["QUEUE", "WORKFLOW", "VERSION", "QUEUED", "OLDEST", "WORKERS"], rows)


def replay_check_text(report: ReplayCheckReport) -> str:
    """A table of the runs the code would fail with NonDeterminismError, the runs
    that could not be checked, and a summary line."""
    parts: list[str] = []
    if report.incompatible:
        rows = [
            [
                str(c.run_id),
                c.workflow,
                c.version or "-",
                c.status,
                "-" if c.mismatch is None else f"#{c.mismatch.position}",
                "-"
                if c.mismatch is None
                else f"{c.mismatch.recorded_kind} {c.mismatch.recorded_name}",
                "-" if c.mismatch is None else f"{c.mismatch.kind} {c.mismatch.name}",
            ]
            for c in report.incompatible
        ]
        parts.append("runs this code would fail with NonDeterminismError:")
        parts.append(
            table(["RUN", "WORKFLOW", "VERSION", "STATUS", "ENTRY", "RECORDED", "NOW"], rows)
        )
    if report.unchecked:
        parts.append("runs that could not be checked:")
        rows = [
            [str(c.run_id), c.workflow, c.version or "-", c.status, c.detail or ""]
            for c in report.unchecked
        ]
        parts.append(table(["RUN", "WORKFLOW", "VERSION", "STATUS", "ERROR"], rows))
    summary = (
        f"{report.checked} runs checked ({', '.join(report.workflows) or 'no workflows'}): "
        f"{report.compatible} compatible, {len(report.incompatible)} incompatible, "
        f"{len(report.unchecked)} could not be checked"
    )
    if report.skipped:
        summary += f"; {report.skipped} of versions not registered here skipped"
    parts.append(summary + f" in {duration(report.seconds)}")
    return "\n".join(parts)
