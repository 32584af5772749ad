"""``tide.stats``: the dashboard's overview and workflow pages, from rollups.

Runs per minute and per hour, with log-scale histograms of durations and queue waits,
are rolled up by the elected reconciler (a worker's) behind a safety lag; what it has
not rolled up yet (the last minute or two) is read live from ``runs`` through indexes,
so a page load reads a bounded number of rows however large the table is. Without any
worker running, nothing is rolled up: the pages then show the last hour only.
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import anyio

from tidebase_async import errors
from tidebase_async._util.checks import check_name
from tidebase_async.models import (
    STATS_RANGES,
    FailingWorkflow,
    Overview,
    QueueLoad,
    RecentFailure,
    RunErrorBrief,
    ScheduleInfo,
    StatsBucket,
    StatsRange,
    UsageDay,
    VersionStats,
    WorkflowOverview,
    WorkflowStats,
)

if TYPE_CHECKING:
    from tidebase_async.client.tidebase import Tidebase
    from tidebase_async.store.stats import FailureRow, QueueLoadRow, StatsRow, UsageDayRow

#: How many failing workflows the overview names, and recent failures a workflow's page.
TOP_FAILING = 5
RECENT_FAILURES = 10
#: Queue counts stop here (each is an index range scan).
QUEUE_COUNT_MAX = 10_000
QUEUES_MAX = 200
#: The histogram (migration 0015, tidebase.stats_bucket): bucket 0 is [0, 1) ms, bucket
#: k >= 1 is [2^((k-1)/2), 2^(k/2)) ms, the last one is open.
BUCKETS = 60


def check_range(range: str) -> tuple[int, int]:
    """(bucket seconds, number of buckets) of a range.

    Raises:
        ConfigurationError: not one of 1h, 6h, 24h, 7d.
    """
    spec = STATS_RANGES.get(range) if isinstance(range, str) else None
    if spec is None:
        raise errors.ConfigurationError(
            f"range must be one of {', '.join(STATS_RANGES)}, got {range!r:.40}"
        )
    return spec


def percentile(histogram: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a histogram of milliseconds, interpolated
    log-linearly inside its bucket; None when the histogram is empty."""
    total = sum(histogram)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for k, n in enumerate(histogram):
        if n == 0 or seen + n < rank:
            seen += n
            continue
        frac = max(0.0, min(1.0, (rank - seen) / n))
        if k == 0:
            return round(frac, 3)
        lo = math.pow(2.0, (k - 1) / 2)
        if k == len(histogram) - 1:
            return round(lo, 3)
        return round(lo * math.pow(2.0, frac / 2), 3)
    return None  # pragma: no cover - rank <= total


def _rate(completed: int, failed: int) -> float | None:
    finished = completed + failed
    return None if finished == 0 else completed / finished


def _series(rows: Sequence[StatsRow], start: datetime, bucket_s: int, n: int) -> list[StatsBucket]:
    by_at = {r.bucket: r for r in rows if r.kind == "bucket"}
    out = []
    for i in range(n):
        at = start + timedelta(seconds=i * bucket_s)
        r = by_at.get(at)
        out.append(
            StatsBucket(at=at)
            if r is None
            else StatsBucket(
                at=at,
                started=r.created,
                completed=r.completed,
                failed=r.failed,
                cancelled=r.cancelled,
            )
        )
    return out


def _error(row: FailureRow) -> RunErrorBrief | None:
    if row.error_type is None and row.error_message is None:
        return None
    return RunErrorBrief(type=row.error_type, message=row.error_message)


def _queue_load(q: QueueLoadRow) -> QueueLoad:
    return QueueLoad(
        queue=q.queue,
        queued=q.queued,
        running=q.running,
        waiting=q.waiting,
        oldest_queued_age_s=q.oldest_s,
        paused=q.paused,
        capped=q.queued >= QUEUE_COUNT_MAX or q.waiting >= QUEUE_COUNT_MAX,
    )


class Stats:
    """``tide.stats``."""

    def __init__(self, tide: Tidebase) -> None:
        self._tide = tide

    async def _window(self, range: str) -> tuple[datetime, datetime, int, int]:
        bucket_s, n = check_range(range)
        now = await self._tide.store.db_now()
        last = datetime.fromtimestamp(int(now.timestamp()) // bucket_s * bucket_s, UTC)
        return now, last - timedelta(seconds=(n - 1) * bucket_s), bucket_s, n

    async def overview(self, *, range: StatsRange | str = "1h") -> Overview:
        """Runs started, completed, failed and cancelled per bucket of ``range`` (1h and
        6h by the minute, 24h and 7d by the hour; every bucket, oldest first), per
        workflow with duration and queue-wait percentiles, the queues now, the
        workflows with most failures in the range with their latest failed run, and
        usage per UTC day and model. Bounded reads: rollup rows, a few live minutes,
        one index probe per queue and per failing workflow.

        Raises:
            ConfigurationError: an unknown range.
        """
        store = self._tide.store
        now, start, bucket_s, n = await self._window(range)
        rows: builtins.list[StatsRow] = []
        queues: builtins.list[QueueLoadRow] = []
        usage_rows: builtins.list[UsageDayRow] = []
        rolled_to: datetime | None = None

        async def read_rows() -> None:
            nonlocal rows
            rows = await store.run_stats_range(start=start, bucket_s=bucket_s, workflow=None)

        async def read_queues() -> None:
            nonlocal queues
            queues = await store.queue_loads(max_count=QUEUE_COUNT_MAX, max_queues=QUEUES_MAX)

        async def read_usage() -> None:
            nonlocal usage_rows, rolled_to
            usage_rows = await store.usage_by_day(start=start, bucket_s=bucket_s)
            rolled_to = await store.stats_rolled_to()

        # Independent reads on separate pool connections.
        async with anyio.create_task_group() as tg:
            tg.start_soon(read_rows)
            tg.start_soon(read_queues)
            tg.start_soon(read_usage)
        per_workflow = [r for r in rows if r.kind == "workflow" and r.workflow is not None]
        failing = await self._failing(per_workflow)
        usage = [
            UsageDay(
                day=u.day,
                model=u.model,
                input_tokens=u.input_tokens,
                output_tokens=u.output_tokens,
                cost_usd=u.cost_usd,
            )
            for u in usage_rows
        ]
        return Overview(
            now=now,
            range=range,  # type: ignore[arg-type]
            bucket_s=bucket_s,
            series=_series(rows, start, bucket_s, n),
            workflows=[
                WorkflowStats(
                    workflow=r.workflow or "",
                    started=r.created,
                    completed=r.completed,
                    failed=r.failed,
                    cancelled=r.cancelled,
                    duration_p50_ms=percentile(r.duration, 0.5),
                    duration_p95_ms=percentile(r.duration, 0.95),
                    wait_p50_ms=percentile(r.wait, 0.5),
                    wait_p95_ms=percentile(r.wait, 0.95),
                )
                for r in per_workflow
            ],
            queues=[_queue_load(q) for q in queues],
            failing=failing,
            usage=usage,
            usage_total_cost_usd=sum(u.cost_usd for u in usage),
            rolled_to=rolled_to,
        )

    async def _failing(self, per_workflow: Sequence[StatsRow]) -> builtins.list[FailingWorkflow]:
        """The workflows with most failures, each with its latest failed run (one
        index probe each)."""
        top = sorted(
            (r for r in per_workflow if r.failed > 0), key=lambda r: (-r.failed, r.workflow)
        )[:TOP_FAILING]
        names = [r.workflow or "" for r in top]
        latest = {f.workflow: f for f in await self._tide.store.latest_failures(names, per=1)}
        failing = []
        for r in top:
            f = latest.get(r.workflow or "")
            failing.append(
                FailingWorkflow(
                    workflow=r.workflow or "",
                    failed=r.failed,
                    last_run_id=None if f is None else f.run_id,
                    last_error=None if f is None else _error(f),
                    last_failed_at=None if f is None else f.finished_at,
                )
            )
        return failing

    async def workflow(self, name: str, *, range: StatsRange | str = "1h") -> WorkflowOverview:
        """One workflow over ``range``: runs per bucket, per version (success rate,
        duration percentiles), its 10 newest failed runs (whatever the range) and its
        schedules.

        Raises:
            ConfigurationError: an unknown range or a malformed name.
            WorkflowNotFound: no run of the workflow was ever rolled up or failed, none
                is in the range, and no schedule starts it.
        """
        check_name("workflow", name)
        store = self._tide.store
        now, start, bucket_s, n = await self._window(range)
        rows = await store.run_stats_range(start=start, bucket_s=bucket_s, workflow=name)
        failures = await store.latest_failures([name], per=RECENT_FAILURES)
        schedules: builtins.list[ScheduleInfo] = [
            s for s in await self._tide.schedules.list() if s.workflow == name
        ]
        overall = next((r for r in rows if r.kind == "workflow"), None)
        if (
            overall is None
            and not failures
            and not schedules
            and not await store.workflow_known(name)
        ):
            raise errors.WorkflowNotFound(f"no run of workflow {name!r}")
        versions = [
            VersionStats(
                version=r.version,
                started=r.created,
                completed=r.completed,
                failed=r.failed,
                cancelled=r.cancelled,
                success_rate=_rate(r.completed, r.failed),
                duration_p50_ms=percentile(r.duration, 0.5),
                duration_p95_ms=percentile(r.duration, 0.95),
            )
            for r in rows
            if r.kind == "version"
        ]
        return WorkflowOverview(
            workflow=name,
            now=now,
            range=range,  # type: ignore[arg-type]
            bucket_s=bucket_s,
            series=_series(rows, start, bucket_s, n),
            versions=versions,
            recent_failures=[
                RecentFailure(
                    run_id=f.run_id, version=f.version, error=_error(f), finished_at=f.finished_at
                )
                for f in failures
            ],
            schedules=schedules,
            success_rate=None if overall is None else _rate(overall.completed, overall.failed),
            duration_p50_ms=None if overall is None else percentile(overall.duration, 0.5),
            duration_p95_ms=None if overall is None else percentile(overall.duration, 0.95),
            wait_p50_ms=None if overall is None else percentile(overall.wait, 0.5),
            wait_p95_ms=None if overall is None else percentile(overall.wait, 0.95),
        )
