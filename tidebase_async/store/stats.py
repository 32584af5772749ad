"""Dashboard rollups (migration 0015): maintained by the elected reconciler, read by
``tide.stats``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta
from uuid import UUID

import msgspec

from tidebase_async.store.base import StoreBase, read_retrying
from tidebase_async.store.sql import Q
from tidebase_async.store.translate import _translate

_MINUTE = timedelta(minutes=1)
_HOUR = timedelta(hours=1)
#: Minute rows older than this are dropped once their hour is rolled up (the overview
#: reads minute rows for at most 6 hours back, hour rows beyond).
MINUTE_ROWS_KEPT = timedelta(days=2)


class StatsRow(msgspec.Struct, frozen=True, kw_only=True):
    """One group of ``Store.run_stats_range``: a bucket (``kind`` 'bucket'), a workflow
    ('workflow') or a workflow's version ('version'); histograms of milliseconds as
    ``tidebase.stats_bucket`` buckets them (empty for a bucket's row)."""

    kind: str
    bucket: datetime | None
    workflow: str | None
    version: str | None
    created: int
    completed: int
    failed: int
    cancelled: int
    duration: list[int]
    wait: list[int]


class UsageDayRow(msgspec.Struct, frozen=True, kw_only=True):
    day: date
    model: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: float


class FailureRow(msgspec.Struct, frozen=True, kw_only=True):
    workflow: str
    run_id: UUID
    version: str | None
    error_type: str | None
    error_message: str | None
    finished_at: datetime


class QueueLoadRow(msgspec.Struct, frozen=True, kw_only=True):
    queue: str
    queued: int
    running: int
    waiting: int
    #: Seconds the oldest queued run has been due (None: none is due).
    oldest_s: float | None
    paused: bool


class RollupStep(msgspec.Struct, frozen=True, kw_only=True):
    """What one ``Store.roll_up_stats`` did: minutes [start, end) rolled up."""

    start: datetime
    end: datetime
    #: Whether minutes remain to roll up (a backfill goes on).
    behind: bool


def _minute(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


def _hour(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


class StatsMixin(StoreBase):
    """Rollups of runs and usage per minute and hour, and the dashboard's reads."""

    async def roll_up_stats(self, *, lag_s: float, max_runs: int) -> RollupStep | None:
        """Roll up the next whole minutes that ended at least ``lag_s`` ago, reading
        about ``max_runs`` runs at most (at least one minute); None when there is
        nothing to do, or while another caller holds the watermark row (it skips its
        turn rather than wait). Idempotent: minutes are recomputed, not added to."""
        with _translate("roll up run stats"):
            async with self._pool.acquire() as conn, conn.transaction():
                mark = await conn.fetchrow(Q["lock_stats_progress"])
                if mark is None:
                    return None
                now: datetime = mark["now"]
                target = _minute(now - timedelta(seconds=lag_s))
                start: datetime | None = mark["rolled_to"]
                if start is None:
                    first: datetime | None = mark["first_run"]
                    start = target if first is None else min(_minute(first), target)
                    if start == target:
                        await conn.execute(Q["set_stats_progress"], target)
                        return None
                if start >= target:
                    return None
                end: datetime = await conn.fetchval(Q["stats_chunk_end"], start, max_runs, target)
                await conn.execute(Q["roll_up_minutes"], start, end)
                if _hour(end) > _hour(start):
                    await conn.execute(
                        Q["roll_up_hours"], _hour(start), _hour(end), _hour(end) - MINUTE_ROWS_KEPT
                    )
                await conn.execute(Q["set_stats_progress"], end)
        return RollupStep(start=start, end=end, behind=end < target)

    @read_retrying
    async def stats_rolled_to(self) -> datetime | None:
        """The rollup's watermark: the first minute not rolled up (None: none is)."""
        with _translate("read the rollup watermark"):
            at: datetime | None = await self._pool.fetchval(Q["stats_rolled_to"])
        return at

    @read_retrying
    async def run_stats_range(
        self, *, start: datetime, bucket_s: int, workflow: str | None
    ) -> list[StatsRow]:
        """Runs from ``start`` on by bucket, by workflow and by version (``workflow``:
        of that workflow only): rollup rows, then the minutes not rolled up yet live
        (at most the last hour)."""
        with _translate("read run stats"):
            rows = await self._pool.fetch(Q["run_stats_range"], start, bucket_s, workflow)
        return [
            StatsRow(
                kind=r["kind"],
                bucket=r["bucket"],
                workflow=r["workflow"],
                version=r["version"],
                created=r["created"],
                completed=r["completed"],
                failed=r["failed"],
                cancelled=r["cancelled"],
                duration=list(r["duration"] or ()),
                wait=list(r["wait"] or ()),
            )
            for r in rows
        ]

    @read_retrying
    async def usage_by_day(self, *, start: datetime, bucket_s: int) -> list[UsageDayRow]:
        with _translate("read usage stats"):
            rows = await self._pool.fetch(Q["usage_by_day"], start, bucket_s)
        return [
            UsageDayRow(
                day=r["day"],
                model=r["model"],
                input_tokens=r["input_tokens"],
                output_tokens=r["output_tokens"],
                cost_usd=r["cost_usd"],
            )
            for r in rows
        ]

    @read_retrying
    async def latest_failures(self, workflows: Sequence[str], *, per: int) -> list[FailureRow]:
        """The ``per`` newest failed runs of each of ``workflows``."""
        with _translate("read latest failures"):
            rows = await self._pool.fetch(Q["latest_failures"], list(workflows), per)
        return [
            FailureRow(
                workflow=r["workflow"],
                run_id=r["id"],
                version=r["version"],
                error_type=r["error_type"],
                error_message=r["error_message"],
                finished_at=r["finished_at"],
            )
            for r in rows
        ]

    @read_retrying
    async def workflow_known(self, workflow: str) -> bool:
        with _translate("look up a workflow"):
            return bool(await self._pool.fetchval(Q["workflow_known"], workflow))

    @read_retrying
    async def queue_loads(self, *, max_count: int, max_queues: int) -> list[QueueLoadRow]:
        """Per queue: queued (up to ``max_count``), running, waiting (of up to
        ``max_count`` read) runs, the oldest due run's wait, paused."""
        with _translate("read queue loads"):
            rows = await self._pool.fetch(Q["queue_overview"], max_count, max_queues)
        return [
            QueueLoadRow(
                queue=r["queue"],
                queued=r["queued"],
                running=r["running"],
                waiting=r["waiting"],
                oldest_s=r["oldest_s"]
                if r["oldest_s"] is not None and r["oldest_s"] >= 0
                else None,
                paused=r["paused"],
            )
            for r in rows
        ]
