"""Schedules firing on a real Postgres: exactly one run per tick (several tickers, several
worker processes, a crash between insert and advance), catchup and overlap policies.

Downtime is simulated by moving a schedule's ``anchor_at``/``next_fire_at`` into the past
in SQL; ``tide.schedules.fire_due()`` is the reconciler's firing step, called directly
where a worker would only add timing noise.
"""

from __future__ import annotations

import itertools
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import anyio
import asyncpg
import pytest

from tests.integration import procs
from tests.integration.core_support import eventually, working
from tests.integration.schedule_support import (
    assert_on_grid,
    db_now,
    fire_times_of,
    runs_at_least,
    runs_in_status,
    runs_of,
    schedule_row,
    shift_back,
    wait_until_mid_tick,
)
from tidebase_async import Run, StoreError, Tidebase
from tidebase_async._util.timing import fire_times, next_fire, parse_timing
from tidebase_async.store.sql import Q

SECOND = timedelta(seconds=1)


async def _backdate(db: asyncpg.Connection, name: str, *, anchor: datetime, due: datetime) -> None:
    """Pretend the workers were down: the schedule's next tick is ``due`` (in the past)."""
    await db.execute(
        "UPDATE tidebase.schedules SET anchor_at = $2, next_fire_at = $3 WHERE name = $1",
        name,
        anchor,
        due,
    )


# -- exactly once per tick ---------------------------------------------------------------


async def test_two_worker_processes_fire_one_run_per_tick(
    tide: Tidebase, db: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    await procs.create_step_log(db)
    async with procs.Workers(dsn, tmp_path) as workers:
        first = await workers.start(maintenance_interval=0.2)
        second = await workers.start(maintenance_interval=0.2)
        # Set once both workers are up: every tick from now on has a live ticker.
        info = await tide.schedules.set("each-second", every=1, workflow="nap", input=0)
        row = await schedule_row(db, "each-second")
        await anyio.sleep(5.3)
        fires = await fire_times_of(db, "each-second")
        assert first.returncode is None, first.describe()
        assert second.returncode is None, second.describe()
        runs = await runs_of(db, "each-second")
        await eventually(
            lambda: _all_completed(db, "each-second", len(runs)),
            timeout=10,
            what="every scheduled run completed",
        )
    assert info.every == 1.0
    assert len(fires) == len(set(fires)), f"duplicate fire times: {fires}"
    assert 4 <= len(fires) <= 6, fires
    # One run per tick and no tick missed: consecutive ticks one second apart.
    assert fires[0] == row["next_fire_at"]
    assert [b - a for a, b in itertools.pairwise(fires)] == [SECOND] * (len(fires) - 1)
    assert_on_grid(fires, row["anchor_at"], 1.0)
    for run in runs:
        assert run["metadata"] == {
            "schedule": "each-second",
            "fire_time": run["fire_time"].isoformat(),
        }
    # Each run executed once (the step log counts executions across both processes).
    executions = await db.fetch("SELECT run_id, count(*) AS n FROM step_log GROUP BY run_id")
    assert {r["run_id"]: r["n"] for r in executions} == {r["id"]: 1 for r in runs}


async def _all_completed(db: asyncpg.Connection, schedule: str, at_least: int) -> bool:
    runs = await runs_of(db, schedule)
    return len(runs) >= at_least and all(r["status"] == "completed" for r in runs[:at_least])


async def test_racing_tickers_enqueue_each_tick_once(
    tide: Tidebase, db: asyncpg.Connection, dsn: str
) -> None:
    await tide.schedules.set("race", every=0.1, workflow="nothing")
    clients = [tide]
    async with (
        Tidebase(dsn) as t2,
        Tidebase(dsn) as t3,
        Tidebase(dsn) as t4,
    ):
        clients += [t2, t3, t4]
        created: list[Any] = []
        deadline = time.monotonic() + 2.0

        async def tick(client: Tidebase) -> None:
            while time.monotonic() < deadline:
                created.extend(await client.schedules.fire_due())
                await anyio.sleep(0.001)

        async with anyio.create_task_group() as tg:
            for client in clients:
                tg.start_soon(tick, client)
    fires = await fire_times_of(db, "race")
    row = await schedule_row(db, "race")
    assert len(fires) == len(set(fires)) == len(created)
    assert len({run_id for run_id, _ in created}) == len(created)
    assert 12 <= len(fires) <= 21, fires
    assert_on_grid(fires, row["anchor_at"], 0.1)
    assert row["last_fire_at"] == fires[-1]


async def test_a_crash_between_insert_and_advance_does_not_double_fire(
    tide: Tidebase, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    await tide.schedules.set("crashy", every=60, workflow="nothing", catchup="all")
    before = await shift_back(db, "crashy", 180.5)  # three missed ticks
    # The advance fails after the runs were inserted in the same transaction.
    monkeypatch.setitem(
        Q,
        "advance_schedule",
        "UPDATE tidebase.schedules SET next_fire_at = $2, last_fire_at = $3,"
        " last_run_id = $4 WHERE name = $1 AND 1 / 0 = 1",
    )
    with pytest.raises(StoreError, match="crashy"):
        await tide.schedules.fire_due()
    # Nothing of the failed attempt stayed: no run, the schedule still due.
    assert await runs_of(db, "crashy") == []
    assert (await schedule_row(db, "crashy"))["next_fire_at"] == before["next_fire_at"]

    monkeypatch.undo()
    created = await tide.schedules.fire_due()
    assert len(created) == 3
    assert await tide.schedules.fire_due() == []
    fires = await fire_times_of(db, "crashy")
    anchor = before["anchor_at"]
    assert fires == [anchor + timedelta(seconds=s) for s in (60, 120, 180)]
    after = await schedule_row(db, "crashy")
    assert after["next_fire_at"] == anchor + timedelta(seconds=240)
    assert after["last_fire_at"] == fires[-1]


async def test_a_tick_enqueued_by_a_ticker_that_died_before_advancing_is_not_enqueued_again(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    await tide.schedules.set("orphan", every=60, workflow="nothing")
    row = await shift_back(db, "orphan", 60.5)  # one tick due, half a second ago
    due = row["next_fire_at"]
    ghost = uuid4()
    await db.execute(
        "INSERT INTO tidebase.runs (id, workflow, queue, status, max_attempts, run_at,"
        " created_at, updated_at, event_seq, schedule, fire_time, metadata)"
        " VALUES ($1, 'nothing', 'default', 'queued', 3, now(), now(), now(), 1, 'orphan', $2,"
        " $3::jsonb)",
        ghost,
        due,
        json.dumps({"schedule": "orphan", "fire_time": due.isoformat()}),
    )
    assert await tide.schedules.fire_due() == []
    runs = await runs_of(db, "orphan")
    assert [(r["id"], r["fire_time"]) for r in runs] == [(ghost, due)]
    after = await schedule_row(db, "orphan")
    assert after["next_fire_at"] == due + timedelta(seconds=60)
    assert after["next_fire_at"] > await db_now(db)
    assert await tide.schedules.fire_due() == []


async def test_every_schedule_fires_once_per_tick(tide: Tidebase) -> None:
    @tide.workflow("tick")
    async def tick(run: Run, n: int) -> int:
        return n

    info = await tide.schedules.set("t", every=0.5, workflow="tick", input=7)
    assert info.every == 0.5
    async with working(tide, maintenance_interval=0.2):
        await anyio.sleep(2.2)
    page = await tide.runs.list(workflow="tick", limit=100)
    fire_times = []
    for r in page.items:
        metadata = (await tide.runs.get(r.id)).metadata
        assert metadata is not None
        fire_times.append(metadata["fire_time"])
    assert 3 <= len(fire_times) <= 5
    assert len(set(fire_times)) == len(fire_times)


# -- catchup ------------------------------------------------------------------------------


async def test_catchup_latest_enqueues_only_the_most_recent_missed_tick(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    info = await tide.schedules.set("latest", every=60, workflow="nothing", input={"k": 1})
    assert info.catchup == "latest"  # the default
    row = await shift_back(db, "latest", 600.5)  # ten missed ticks
    anchor = row["anchor_at"]
    created = await tide.schedules.fire_due()
    runs = await runs_of(db, "latest")
    assert [r["id"] for r in runs] == [run_id for run_id, _ in created]
    assert [r["fire_time"] for r in runs] == [anchor + timedelta(seconds=600)]
    assert runs[0]["metadata"] == {
        "schedule": "latest",
        "fire_time": runs[0]["fire_time"].isoformat(),
    }
    assert datetime.fromisoformat(runs[0]["metadata"]["fire_time"]) == runs[0]["fire_time"]
    got = await tide.runs.get(runs[0]["id"])
    assert got.metadata == runs[0]["metadata"]
    assert got.input == {"k": 1}
    after = await tide.schedules.get("latest")
    assert after.next_fire_at == anchor + timedelta(seconds=660)
    assert after.last_fire_at == runs[0]["fire_time"]
    assert after.last_run_id == runs[0]["id"]
    assert await tide.schedules.fire_due() == []


async def test_catchup_all_enqueues_the_latest_missed_ticks_up_to_the_limit(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    await tide.schedules.set("all4", every=60, workflow="nothing", catchup="all", catchup_limit=4)
    await tide.schedules.set("all100", every=60, workflow="nothing", catchup="all")
    a4 = (await shift_back(db, "all4", 600.5))["anchor_at"]
    a100 = (await shift_back(db, "all100", 600.5))["anchor_at"]
    created = await tide.schedules.fire_due()
    assert len(created) == 14
    assert await fire_times_of(db, "all4") == [
        a4 + timedelta(seconds=s) for s in (420, 480, 540, 600)
    ]
    assert await fire_times_of(db, "all100") == [
        a100 + timedelta(seconds=60 * k) for k in range(1, 11)
    ]
    for name, anchor in (("all4", a4), ("all100", a100)):
        assert (await tide.schedules.get(name)).next_fire_at == anchor + timedelta(seconds=660)
    assert await tide.schedules.fire_due() == []


async def test_catchup_all_of_a_cron_schedule_enqueues_the_latest_missed_minutes(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    await tide.schedules.set(
        "cron-all", cron="* * * * *", workflow="nothing", catchup="all", catchup_limit=3
    )
    await shift_back(db, "cron-all", 600)
    before = await db_now(db)
    await tide.schedules.fire_due()
    after = await db_now(db)
    # The firing read the clock somewhere in [before, after]: its minute is the latest
    # tick, whichever side of a minute boundary that fell on.
    next_fire_at = (await tide.schedules.get("cron-all")).next_fire_at
    assert next_fire_at is not None
    minute = next_fire_at - timedelta(minutes=1)
    assert minute in {t.replace(second=0, microsecond=0) for t in (before, after)}
    assert await fire_times_of(db, "cron-all") == [minute - timedelta(minutes=m) for m in (2, 1, 0)]


async def test_catchup_skip_drops_missed_ticks_but_fires_a_tick_due_just_now(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    await tide.schedules.set("skipped", every=600, workflow="nothing", catchup="skip")
    # Down for 35 minutes: three ticks missed, the latest five minutes ago.
    row = await shift_back(db, "skipped", 2100)
    assert await tide.schedules.fire_due() == []
    assert await runs_of(db, "skipped") == []
    after = await schedule_row(db, "skipped")
    assert after["next_fire_at"] == row["anchor_at"] + timedelta(seconds=2400)
    assert after["next_fire_at"] > await db_now(db)
    assert await tide.schedules.fire_due() == []

    # The same down time with catchup "latest" does enqueue that tick.
    await tide.schedules.set("caught", every=600, workflow="nothing")
    row = await shift_back(db, "caught", 2100)
    assert len(await tide.schedules.fire_due()) == 1
    assert await fire_times_of(db, "caught") == [row["anchor_at"] + timedelta(seconds=1800)]

    # A tick due just now is not a missed one.
    await tide.schedules.set("on-time", every=60, workflow="nothing", catchup="skip")
    row = await shift_back(db, "on-time", 60.5)  # one tick due half a second ago
    assert len(await tide.schedules.fire_due()) == 1
    assert await fire_times_of(db, "on-time") == [row["next_fire_at"]]


async def test_catchup_all_of_an_interval_keeps_the_due_tick(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    """Regression: catchup "all" of an interval schedule dropped the oldest missed tick,
    the one that was due."""
    every = 2 / 3
    await tide.schedules.set("third", workflow="w", every=every, catchup="all")
    now = await tide.store.db_now()
    anchor = now - timedelta(seconds=20)
    timing = parse_timing(cron=None, every=every, timezone="UTC")
    due = next_fire(timing, anchor + timedelta(seconds=10), anchor=anchor)
    await _backdate(db, "third", anchor=anchor, due=due)

    await tide.schedules.fire_due()

    ticks = await fire_times_of(db, "third")
    assert ticks[0] == due, f"first tick {ticks[0]} is not the due tick {due}"
    # Every tick on the schedule's own grid (anchor + k * every), as next_fire says.
    assert ticks == fire_times(
        timing, due - timedelta(microseconds=1), ticks[-1], anchor=anchor, limit=1000
    )


async def test_firing_a_per_second_cron_is_cheap(tide: Tidebase, db: asyncpg.Connection) -> None:
    """Regression: the cron maths scanned three hours of ticks on every call, so firing
    missed per-second ticks took seconds."""
    await tide.schedules.set(
        "secs", workflow="w", cron="* * * * * *", catchup="all", catchup_limit=5
    )
    now = await tide.store.db_now()
    anchor = now - timedelta(seconds=60)
    await _backdate(db, "secs", anchor=anchor, due=now - timedelta(seconds=30))

    started = time.monotonic()
    await tide.schedules.fire_due()
    took = time.monotonic() - started

    assert len(await fire_times_of(db, "secs")) == 5
    assert took < 1.0, f"firing 30 missed per-second ticks took {took:.1f}s"


# -- overlap ------------------------------------------------------------------------------


async def test_overlap_allow_starts_ticks_while_the_previous_run_is_running(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    release = anyio.Event()

    @tide.workflow("slow")
    async def slow(run: Run) -> None:
        await release.wait()

    await tide.schedules.set("allow", every=0.2, workflow="slow")
    async with working(tide, concurrency=8, maintenance_interval=0.2):
        await eventually(
            lambda: runs_in_status(db, "allow", "running", 3),
            timeout=5,
            what="three runs of the schedule running at once",
        )
        release.set()
    fires = await fire_times_of(db, "allow")
    assert len(fires) == len(set(fires)) >= 3


async def _hold_first_run(
    tide: Tidebase, db: asyncpg.Connection, name: str, overlap: str
) -> tuple[list[dict[str, Any]], dict[str, Any], list[dict[str, Any]]]:
    """Schedule ``name`` every second; its first run blocks for about two ticks. Returns
    the runs while it blocked, the blocked run as it finished, and the runs once a
    second run exists."""
    release = anyio.Event()

    @tide.workflow("slow")
    async def slow(run: Run) -> None:
        await release.wait()

    await tide.schedules.set(name, every=1, workflow="slow", overlap=overlap)
    async with working(tide, concurrency=8, maintenance_interval=0.2):
        await eventually(
            lambda: runs_in_status(db, name, "running", 1), timeout=5, what="the first run running"
        )
        await anyio.sleep(2.0)
        await wait_until_mid_tick(db, name, 1.0)
        during = await runs_of(db, name)
        release.set()
        await eventually(
            lambda: runs_at_least(db, name, 2), timeout=5, what="a second run of the schedule"
        )
        await anyio.sleep(0.1)
        after = await runs_of(db, name)
    first = after[0]
    assert first["id"] == during[0]["id"]
    assert first["status"] == "completed"
    return during, first, after


async def test_overlap_skip_drops_ticks_while_the_previous_run_is_active(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    during, first, after = await _hold_first_run(tide, db, "skip", "skip")
    assert len(during) == 1, "a tick fired while the previous run was active"
    second = after[1]
    # The ticks of the blocked period were dropped: the next run is a later tick's.
    assert second["fire_time"] > first["finished_at"]
    assert second["created_at"] >= first["finished_at"]


async def test_overlap_queue_fires_the_waiting_tick_once_the_previous_run_finished(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    during, first, after = await _hold_first_run(tide, db, "queued", "queue")
    assert len(during) == 1, "a tick fired while the previous run was active"
    second = after[1]
    # The tick that waited fires right after the first run finished (not at the next
    # tick), once (catchup "latest"), for a tick from before the finish.
    assert second["created_at"] >= first["finished_at"]
    assert second["fire_time"] < first["finished_at"]
    assert second["created_at"] - first["finished_at"] < timedelta(seconds=0.45)
    assert sum(r["fire_time"] < first["finished_at"] for r in after) == 2


async def test_a_queue_overlap_schedule_held_back_by_an_active_run_does_not_spin_maintenance(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    release = anyio.Event()

    @tide.workflow("slow")
    async def slow(run: Run) -> None:
        await release.wait()

    await tide.schedules.set("held", every=0.2, workflow="slow", overlap="queue")
    async with working(tide, maintenance_interval=0.2) as worker:
        await eventually(
            lambda: runs_in_status(db, "held", "running", 1), timeout=5, what="the first run"
        )
        await anyio.sleep(0.5)  # the schedule is due again, and held back
        ticks = worker.stats.maintenance_ticks
        await anyio.sleep(1.0)
        spent = worker.stats.maintenance_ticks - ticks
        release.set()
    # One second at a 0.2 s interval (plus 0.2 s ticks of the schedule): ~5-10 ticks.
    assert spent <= 20, f"{spent} maintenance ticks in one second"


@pytest.mark.parametrize("overlap", ["queue", "skip"])
async def test_catchup_all_respects_overlap(
    tide: Tidebase, db: asyncpg.Connection, overlap: str
) -> None:
    """Regression: catchup "all" ignored overlap "queue" and "skip" and started the
    runs of several missed ticks at once."""
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


async def test_waiting_overlap_queue_schedule_does_not_spin_the_reconciler(
    tide: Tidebase,
) -> None:
    """Regression: an overlap="queue" schedule waiting for its previous run made the
    reconciler spin instead of ticking at its interval."""

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


# -- ticks around a daylight-saving gap -----------------------------------------------


async def test_dst_gap_shift_does_not_skip_a_real_tick(tide: Tidebase) -> None:
    # Pure maths, but stored through the real API: the schedule's ticks around the
    # transition (2026-10-04, Australia/Lord_Howe) are those of fire_times.
    """Regression: after a tick shifted by a DST gap, a later tick that exists was
    skipped."""
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


# -- a schedule that cannot fire ------------------------------------------------------


async def test_a_schedule_that_cannot_fire_does_not_stop_the_others(
    tide: Tidebase, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tidebase_async.engine import firing

    @tide.workflow("tick")
    async def tick(run: Run) -> None:
        return None

    plan = firing._plan

    def broken(workflows: Any, row: Any, active: bool) -> Any:
        if row.name == "broken":
            raise RuntimeError("a bug in planning")
        return plan(workflows, row, active)

    monkeypatch.setattr(firing, "_plan", broken)
    await tide.schedules.set("broken", every=0.3, workflow="tick")
    await tide.schedules.set("fine", every=0.3, workflow="tick")
    async with working(tide, maintenance_interval=0.1) as worker:
        await eventually(
            lambda: _fired(tide, "fine"), timeout=10, what="the healthy schedule to fire"
        )
        ticks = worker.stats.maintenance_ticks
        await anyio.sleep(0.5)
        assert worker.stats.maintenance_ticks > ticks  # the reconciler goes on
    assert (await tide.schedules.get("broken")).last_run_id is None


async def _fired(tide: Tidebase, name: str) -> bool:
    return (await tide.schedules.get(name)).last_run_id is not None
