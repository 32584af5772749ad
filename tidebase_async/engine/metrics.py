"""The in-process metrics registry, always available and dependency-free: the counters,
histograms and gauges a Tidebase client records (runs enqueued, started, completed,
failed; step and run durations; claim lag; queue depth and oldest-queued age), keyed by
label values, and their rendering in the Prometheus text format (``GET /metrics``).

Updates happen on the event loop (steps of sync functions are timed on the loop, around
their thread), so the registry needs no lock: an update is a dict lookup and an add.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence

#: Seconds; Prometheus' default buckets extended to minutes (steps call slow APIs).
DURATION_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)

Labels = tuple[str, ...]


def escape_label(value: str) -> str:
    """A label value as the Prometheus text format wants it inside double quotes."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """A sample value: integers without a fraction, ``+Inf``/``-Inf``/``NaN`` spelled
    as Prometheus spells them, anything else as Python's shortest round-trip repr."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _label_text(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    inner = ",".join(f'{n}="{escape_label(v)}"' for n, v in zip(names, values, strict=True))
    return "{" + inner + "}"


class Counter:
    """A monotonically increasing count per label values."""

    kind = "counter"

    def __init__(self, name: str, help: str, labels: Labels) -> None:
        self.name = name
        self.help = help
        self.labels = labels
        self.values: dict[Labels, float] = {}

    def inc(self, key: Labels, amount: float = 1.0) -> None:
        self.values[key] = self.values.get(key, 0.0) + amount

    def samples(self) -> Iterable[str]:
        for key in sorted(self.values):
            yield f"{self.name}{_label_text(self.labels, key)} {format_value(self.values[key])}"


class Histogram:
    """Observations per label values in cumulative buckets (``le``), with sum and count."""

    kind = "histogram"

    def __init__(
        self, name: str, help: str, labels: Labels, buckets: Sequence[float] = DURATION_BUCKETS
    ) -> None:
        self.name = name
        self.help = help
        self.labels = labels
        self.bounds = tuple(sorted(buckets))
        # Per key: a count per bucket (the last one is +Inf), not cumulative; and sums.
        self.counts: dict[Labels, list[int]] = {}
        self.sums: dict[Labels, float] = {}

    def observe(self, key: Labels, value: float) -> None:
        counts = self.counts.get(key)
        if counts is None:
            counts = self.counts[key] = [0] * (len(self.bounds) + 1)
            self.sums[key] = 0.0
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le).
        counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sums[key] += value

    def count(self, key: Labels) -> int:
        return sum(self.counts.get(key, ()))

    def samples(self) -> Iterable[str]:
        names = (*self.labels, "le")
        for key in sorted(self.counts):
            running = 0
            for bound, n in zip((*self.bounds, math.inf), self.counts[key], strict=True):
                running += n
                le = format_value(bound) if math.isinf(bound) else repr(float(bound))
                yield f"{self.name}_bucket{_label_text(names, (*key, le))} {running}"
            labels = _label_text(self.labels, key)
            yield f"{self.name}_sum{labels} {format_value(self.sums[key])}"
            yield f"{self.name}_count{labels} {running}"


class Gauge:
    """Values read at collection time (queue depth): set as a whole, never updated."""

    kind = "gauge"

    def __init__(self, name: str, help: str, labels: Labels) -> None:
        self.name = name
        self.help = help
        self.labels = labels
        self.values: dict[Labels, float] = {}

    def replace(self, values: dict[Labels, float]) -> None:
        self.values = dict(values)

    def samples(self) -> Iterable[str]:
        for key in sorted(self.values):
            yield f"{self.name}{_label_text(self.labels, key)} {format_value(self.values[key])}"


Metric = Counter | Histogram | Gauge


class Metrics:
    """The registry of one Tidebase client (its enqueues, its workers' and inline runs'
    executions); queue gauges are set from the database when collected."""

    def __init__(self) -> None:
        run = ("workflow", "queue")
        self.enqueued = Counter("tidebase_runs_enqueued_total", "Runs enqueued.", run)
        self.started = Counter(
            "tidebase_runs_started_total", "Claims of runs started (one per attempt).", run
        )
        self.completed = Counter("tidebase_runs_completed_total", "Runs completed.", run)
        self.failed = Counter("tidebase_runs_failed_total", "Runs failed for good.", run)
        self.retried = Counter(
            "tidebase_runs_retried_total", "Failed attempts requeued for a retry.", run
        )
        self.step_seconds = Histogram(
            "tidebase_step_duration_seconds",
            "Time an executed step took, its retries included (replayed steps not counted).",
            ("workflow", "step"),
        )
        self.run_seconds = Histogram(
            "tidebase_run_duration_seconds",
            "Time one claim of a run took, from the claim to its outcome written.",
            run,
        )
        self.claim_lag = Histogram(
            "tidebase_claim_lag_seconds",
            "Time from when a run was due (enqueued, or its delay, retry or wake-up) to its claim.",
            run,
        )
        self.queue_depth = Gauge(
            "tidebase_queue_depth", "Queued runs that are due, per queue.", ("queue",)
        )
        self.queue_oldest = Gauge(
            "tidebase_queue_oldest_age_seconds",
            "Age of the oldest due queued run, per queue (seconds since it was due).",
            ("queue",),
        )

    def all(self) -> list[Metric]:
        return [
            self.enqueued,
            self.started,
            self.completed,
            self.failed,
            self.retried,
            self.step_seconds,
            self.run_seconds,
            self.claim_lag,
            self.queue_depth,
            self.queue_oldest,
        ]

    def set_queues(self, rows: Iterable[tuple[str, int, float]]) -> None:
        """The gauges from (queue, depth, oldest age in seconds) rows."""
        depth: dict[Labels, float] = {}
        oldest: dict[Labels, float] = {}
        for queue, n, age in rows:
            depth[(queue,)] = float(n)
            oldest[(queue,)] = max(0.0, float(age))
        self.queue_depth.replace(depth)
        self.queue_oldest.replace(oldest)

    def render(self) -> str:
        """Every metric in the Prometheus text exposition format (version 0.0.4)."""
        lines: list[str] = []
        for metric in self.all():
            lines.append(f"# HELP {metric.name} {_escape_help(metric.help)}")
            lines.append(f"# TYPE {metric.name} {metric.kind}")
            lines.extend(metric.samples())
        return "\n".join(lines) + "\n"
