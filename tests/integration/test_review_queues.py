"""Regression tests for defects a review of schedules, queue controls and fair claiming
(issue 6) found; each failed before its fix."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import anyio
import asyncpg
import pytest

from tests.integration.core_support import eventually, working
from tidebase_async import Run, Tidebase
from tidebase_async._util.timing import fire_times, next_fire, parse_timing
from tidebase_async.store.sql import Q


async def _backdate(db: asyncpg.Connection, name: str, *, anchor: datetime, due: datetime) -> None:
    """Pretend the workers were down: the schedule's next tick is ``due`` (in the past)."""
    await db.execute(
        "UPDATE tidebase.schedules SET anchor_at = $2, next_fire_at = $3 WHERE name = $1",
        name,
        anchor,
        due,
    )


async def _ticks(db: asyncpg.Connection, name: str) -> list[datetime]:
    rows = await db.fetch(
        "SELECT fire_time FROM tidebase.runs WHERE schedule = $1 ORDER BY fire_time", name
    )
    return [r[0] for r in rows]


# -- 1. catchup "all" of an interval schedule drops the oldest missed tick -------------


async def test_catchup_all_of_an_interval_keeps_the_due_tick(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    every = 2 / 3
    await tide.schedules.set("third", workflow="w", every=every, catchup="all")
    now = await tide.store.db_now()
    anchor = now - timedelta(seconds=20)
    timing = parse_timing(cron=None, every=every, timezone="UTC")
    due = next_fire(timing, anchor + timedelta(seconds=10), anchor=anchor)
    await _backdate(db, "third", anchor=anchor, due=due)

    await tide.schedules.fire_due()

    ticks = await _ticks(db, "third")
    assert ticks[0] == due, f"first tick {ticks[0]} is not the due tick {due}"
    # Every tick on the schedule's own grid (anchor + k * every), as next_fire says.
    assert ticks == fire_times(
        timing, due - timedelta(microseconds=1), ticks[-1], anchor=anchor, limit=1000
    )


# -- 2. catchup "all" ignores overlap "queue" / "skip" ----------------------------------


@pytest.mark.parametrize("overlap", ["queue", "skip"])
async def test_catchup_all_respects_overlap(
    tide: Tidebase, db: asyncpg.Connection, overlap: str
) -> None:
    await tide.schedules.set("serial", workflow="w", every=1.0, catchup="all", overlap=overlap)
    now = await tide.store.db_now()
    anchor = now - timedelta(seconds=10)
    await _backdate(db, "serial", anchor=anchor, due=anchor + timedelta(seconds=5))

    await tide.schedules.fire_due()

    active = await db.fetchval(
        "SELECT count(*) FROM tidebase.runs WHERE schedule = 'serial' "
        "AND status IN ('queued', 'running', 'waiting')"
    )
    assert active <= 1, f"{active} runs of an overlap={overlap!r} schedule are active at once"


# -- 3. cron maths scans three hours of ticks on every call -----------------------------


async def test_firing_a_per_second_cron_is_cheap(tide: Tidebase, db: asyncpg.Connection) -> None:
    await tide.schedules.set(
        "secs", workflow="w", cron="* * * * * *", catchup="all", catchup_limit=5
    )
    now = await tide.store.db_now()
    anchor = now - timedelta(seconds=60)
    await _backdate(db, "secs", anchor=anchor, due=now - timedelta(seconds=30))

    started = time.monotonic()
    await tide.schedules.fire_due()
    took = time.monotonic() - started

    assert len(await _ticks(db, "secs")) == 5
    assert took < 1.0, f"firing 30 missed per-second ticks took {took:.1f}s"


# -- 4. DST: a tick that exists is skipped after a gap-shifted one ------------------------


async def test_dst_gap_shift_does_not_skip_a_real_tick(tide: Tidebase) -> None:
    # Pure maths, but stored through the real API: the schedule's ticks around the
    # transition (2026-10-04, Australia/Lord_Howe) are those of fire_times.
    info = await tide.schedules.set(
        "howe", workflow="w", cron="20,40 2 * * *", timezone="Australia/Lord_Howe"
    )
    timing = parse_timing(cron=info.cron, every=None, timezone="Australia/Lord_Howe")
    start = datetime(2026, 10, 3, 12, tzinfo=UTC)  # 2026-10-03 22:30 local
    got = [
        t.astimezone(timing.zone).strftime("%H:%M%z")
        for t in fire_times(timing, start, start + timedelta(days=1), anchor=start, limit=10)
    ]
    # 02:20 does not exist (shifted by the 30 min gap to 02:50); 02:40 exists.
    assert got == ["02:40+1100", "02:50+1100"]


# -- 5. code-declared schedules are re-enabled at every worker start -------------------


async def test_worker_start_keeps_a_paused_code_schedule_paused(tide: Tidebase) -> None:
    @tide.workflow("nightly", schedule="0 3 * * *")
    async def nightly(run: Run) -> None:
        return None

    async with working(tide, concurrency=1):
        pass
    assert (await tide.schedules.get("nightly")).enabled
    await tide.schedules.pause("nightly")
    async with working(tide, concurrency=1):
        pass
    assert not (await tide.schedules.get("nightly")).enabled, "the worker start resumed it"


# -- 6. an overlap="queue" schedule waiting for its previous run spins the reconciler ----


async def test_waiting_overlap_queue_schedule_does_not_spin_the_reconciler(
    tide: Tidebase,
) -> None:
    @tide.workflow("slow", queue="sq")
    async def slow(run: Run) -> None:
        return None

    await tide.queues.configure("sq", paused=True)  # the first tick's run stays queued
    await tide.schedules.set("serial", workflow="slow", every=0.2, overlap="queue")
    async with working(tide, concurrency=1, maintenance_interval=1.0) as worker:
        await anyio.sleep(0.5)
        before = worker.stats.maintenance_ticks
        await anyio.sleep(1.5)
        ticks = worker.stats.maintenance_ticks - before
    assert ticks <= 4, f"{ticks} maintenance ticks in 1.5 s with a 1 s interval"


# -- 7. fair claiming: one rotation counter for two rotations starves a queue ------------


async def test_one_run_claims_do_not_starve_an_uncontrolled_queue(tide: Tidebase) -> None:
    order: list[str] = []

    for queue in ("a", "b", "c"):

        @tide.workflow(f"in-{queue}", queue=queue)
        async def record(run: Run, q: str = queue) -> None:
            order.append(q)
            await anyio.sleep(0.01)

    await tide.queues.configure("c", concurrency=100)  # controlled, never binding
    await tide.enqueue("in-a", input="a")  # first of all
    await tide.enqueue_many([("in-b", "b")] * 8 + [("in-c", "c")] * 8)
    async with working(tide, queues=["a", "b", "c"], concurrency=1):
        await eventually(lambda: len(order) == 17, timeout=20, what="all ran")
    assert order.index("a") < 4, f"queue a ran at position {order.index('a')}: {order}"


# -- 8. claim_runs_many locks up to $4 runs per queue, claims $4 in all -----------------


async def test_claim_many_does_not_lock_runs_it_does_not_lease(tide: Tidebase, dsn: str) -> None:
    for queue in ("a", "b"):
        for _ in range(2):
            await tide.enqueue("w", queue=queue)
    holder = await asyncpg.connect(dsn)
    try:
        async with holder.transaction():
            # The statement of a claimer, its row locks held as they are while it runs.
            first = await holder.fetch(Q["claim_runs_many"], "w1", ["a", "b"], 30.0, 2, 1)
            assert len(first) == 2
            second = await tide.store.claim(
                worker_id="w2", queues=["a", "b"], limit=2, lease_s=30.0
            )
            assert len(second) == 2, (
                f"2 runs are free to claim; the second claimer got {len(second)}"
            )
    finally:
        await holder.close()
