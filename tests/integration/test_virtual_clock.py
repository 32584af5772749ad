"""The testing kit's store layer: the virtual clock (``install_virtual_clock``,
``advance_clock_to``) and the reads that tell the kit what is due next (``next_timer``)
and what a worker can still move (``unsettled_work``)."""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg
import pytest

from tidebase_async import Tidebase

#: Real time passes while a test runs: the virtual clock is the server's plus an offset.
SLACK = timedelta(seconds=30)


async def _now_on(conn: asyncpg.Connection) -> datetime:
    now = await conn.fetchval("SELECT tidebase.now()")
    assert isinstance(now, datetime)
    return now


async def test_advancing_the_clock_moves_now_on_every_connection(
    tide: Tidebase, db: asyncpg.Connection, dsn: str
) -> None:
    store = tide.store
    assert not await store.virtual_clock_installed()
    await store.install_virtual_clock()
    assert await store.virtual_clock_installed()
    before = await store.db_now()
    assert abs(before - await _now_on(db)) < SLACK

    target = before + timedelta(days=10)
    reads = await store.advance_clock_to(target)
    assert target <= reads < target + SLACK
    other = await asyncpg.connect(dsn)
    try:
        for conn in (db, other):
            now = await _now_on(conn)
            assert target <= now < target + SLACK, now
    finally:
        await other.close()
    assert target <= await store.db_now() < target + SLACK


async def test_the_clock_never_goes_back(tide: Tidebase, db: asyncpg.Connection) -> None:
    store = tide.store
    await store.install_virtual_clock()
    start = await store.db_now()
    ahead = await store.advance_clock_to(start + timedelta(hours=5))
    back = await store.advance_clock_to(start + timedelta(hours=1))
    assert back >= ahead
    assert await _now_on(db) >= ahead
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("UPDATE tidebase.virtual_clock SET offset_s = -1")


async def test_next_timer_is_the_earliest_moment_the_clock_makes_something_due(
    tide: Tidebase,
) -> None:
    store = tide.store
    await store.install_virtual_clock()
    assert await store.next_timer() is None
    now = await store.db_now()

    delayed = await tide.enqueue("later", input=None, delay=timedelta(hours=3))
    run_at = (await tide.runs.get(delayed.id)).run_at
    assert run_at is not None and await store.next_timer() == run_at

    schedule = await tide.schedules.set("hourly", workflow="later", every=timedelta(hours=2))
    assert schedule.next_fire_at is not None and schedule.next_fire_at < run_at
    assert await store.next_timer() == schedule.next_fire_at

    deadline = now + timedelta(hours=1)
    await tide.enqueue("later", input=None, delay=timedelta(days=1), deadline=deadline)
    assert await store.next_timer() == deadline

    # Past everything: nothing is timed after now any more (due is not "next").
    await store.advance_clock_to(now + timedelta(days=2))
    assert await store.next_timer() is None


async def test_unsettled_work_lists_what_a_worker_can_move_now(tide: Tidebase) -> None:
    store = tide.store
    await store.install_virtual_clock()
    assert await store.unsettled_work(limit=20) == []
    now = await store.db_now()

    due = await tide.enqueue("job", input=None)
    later = await tide.enqueue("job", input=None, delay=timedelta(hours=1))
    await tide.queues.configure("held", paused=True)
    await tide.enqueue("job", input=None, queue="held")
    await tide.schedules.set("nightly", workflow="job", cron="0 3 * * *")

    rows = await store.unsettled_work(limit=20)
    assert [(r.kind, r.id, r.workflow, r.status) for r in rows] == [
        ("run", str(due.id), "job", "queued")
    ]

    await store.advance_clock_to(now + timedelta(days=1, hours=1))
    rows = await store.unsettled_work(limit=20)
    assert [(r.kind, r.id, r.status) for r in rows] == [
        ("run", str(due.id), "queued"),
        ("run", str(later.id), "queued"),
        ("schedule", "nightly", "due"),
    ]
    assert len(await store.unsettled_work(limit=1)) == 1
