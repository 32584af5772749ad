"""Schedules on a real Postgres: exactly one run per tick (several tickers, several worker
processes, a crash between insert and advance), catchup and overlap policies, schedules
declared in code, pause/resume, get/list/delete and bad input.

Downtime is simulated by moving a schedule's ``anchor_at``/``next_fire_at`` into the past
in SQL; ``tide.schedules.fire_due()`` is the reconciler's firing step, called directly
where a worker would only add timing noise.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4
from zoneinfo import ZoneInfo

import anyio
import asyncpg
import pytest

from tests.conftest import opened
from tests.integration import procs
from tests.integration.core_support import eventually, working
from tidebase_async import InvalidSchedule, NotFoundError, Run, StoreError, Tidebase
from tidebase_async.store.sql import Q

SECOND = timedelta(seconds=1)


# -- helpers ---------------------------------------------------------------------------


async def runs_of(db: asyncpg.Connection, schedule: str) -> list[dict[str, Any]]:
    """The schedule's runs, oldest tick first, jsonb columns decoded."""
    rows = await db.fetch(
        "SELECT id, workflow, queue, status, fire_time, metadata::text AS metadata,"
        " error::text AS error, created_at, started_at, finished_at"
        " FROM tidebase.runs WHERE schedule = $1 ORDER BY fire_time",
        schedule,
    )
    out = []
    for row in rows:
        item = dict(row)
        for key in ("metadata", "error"):
            item[key] = None if item[key] is None else json.loads(item[key])
        out.append(item)
    return out


async def fire_times_of(db: asyncpg.Connection, schedule: str) -> list[datetime]:
    return [r["fire_time"] for r in await runs_of(db, schedule)]


async def schedule_row(db: asyncpg.Connection, name: str) -> dict[str, Any]:
    row = await db.fetchrow("SELECT * FROM tidebase.schedules WHERE name = $1", name)
    assert row is not None, f"schedule {name!r} does not exist"
    return dict(row)


async def shift_back(db: asyncpg.Connection, name: str, seconds: float) -> dict[str, Any]:
    """Simulate ``seconds`` of downtime: move the schedule's anchor and next tick back
    (interval schedules keep their grid). Returns the schedule row afterwards."""
    await db.execute(
        "UPDATE tidebase.schedules SET anchor_at = anchor_at - make_interval(secs => $2),"
        " next_fire_at = next_fire_at - make_interval(secs => $2) WHERE name = $1",
        name,
        seconds,
    )
    return await schedule_row(db, name)


async def db_now(db: asyncpg.Connection) -> datetime:
    now: datetime = await db.fetchval("SELECT tidebase.now()")
    return now


async def count_schedules(db: asyncpg.Connection) -> int:
    n: int = await db.fetchval("SELECT count(*) FROM tidebase.schedules")
    return n


def assert_on_grid(fires: list[datetime], anchor: datetime, every_s: float) -> None:
    for fire in fires:
        k = (fire - anchor).total_seconds() / every_s
        assert abs(k - round(k)) < 1e-3, f"{fire} is not on the grid of {anchor} + k*{every_s}"


async def wait_until_mid_tick(db: asyncpg.Connection, name: str, every_s: float) -> None:
    """Sleep until the database clock is half an interval away from the schedule's ticks,
    so that an action taken now is unambiguously between two ticks."""
    anchor = (await schedule_row(db, name))["anchor_at"]
    phase = ((await db_now(db)) - anchor).total_seconds() % every_s
    await anyio.sleep((every_s / 2 - phase) % every_s)


@pytest.fixture
async def other(dsn: str) -> AsyncIterator[Tidebase]:
    """A second client on the test's database (another process's view)."""
    async with opened(Tidebase(dsn)) as t:
        yield t


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
        opened(Tidebase(dsn)) as t2,
        opened(Tidebase(dsn)) as t3,
        opened(Tidebase(dsn)) as t4,
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
            lambda: _count_status(db, "allow", "running", 3),
            timeout=5,
            what="three runs of the schedule running at once",
        )
        release.set()
    fires = await fire_times_of(db, "allow")
    assert len(fires) == len(set(fires)) >= 3


async def _count_status(db: asyncpg.Connection, schedule: str, status: str, n: int) -> bool:
    runs = await runs_of(db, schedule)
    return sum(1 for r in runs if r["status"] == status) >= n


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
            lambda: _count_status(db, name, "running", 1), timeout=5, what="the first run running"
        )
        await anyio.sleep(2.0)
        await wait_until_mid_tick(db, name, 1.0)
        during = await runs_of(db, name)
        release.set()
        await eventually(
            lambda: _count_at_least(db, name, 2), timeout=5, what="a second run of the schedule"
        )
        await anyio.sleep(0.1)
        after = await runs_of(db, name)
    first = after[0]
    assert first["id"] == during[0]["id"]
    assert first["status"] == "completed"
    return during, first, after


async def _count_at_least(db: asyncpg.Connection, schedule: str, n: int) -> bool:
    return len(await runs_of(db, schedule)) >= n


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
            lambda: _count_status(db, "held", "running", 1), timeout=5, what="the first run"
        )
        await anyio.sleep(0.5)  # the schedule is due again, and held back
        ticks = worker.stats.maintenance_ticks
        await anyio.sleep(1.0)
        spent = worker.stats.maintenance_ticks - ticks
        release.set()
    # One second at a 0.2 s interval (plus 0.2 s ticks of the schedule): ~5-10 ticks.
    assert spent <= 20, f"{spent} maintenance ticks in one second"


# -- schedules declared in code ----------------------------------------------------------


async def test_code_schedules_are_synced_at_worker_start_updated_and_deleted(
    tide: Tidebase, db: asyncpg.Connection, dsn: str
) -> None:
    @tide.workflow("x", schedule="*/5 * * * * *")
    async def x(run: Run) -> str:
        return "x"

    @tide.workflow("y", schedule=3600)
    async def y(run: Run) -> None:
        return None

    assert await tide.schedules.list() == []  # declaring is not storing
    await tide.schedules.set("x-api", cron="0 3 * * *", workflow="x")
    async with working(tide, maintenance_interval=0.2):
        info = await tide.schedules.get("x")
        assert (info.workflow, info.cron, info.every, info.source) == (
            "x",
            "*/5 * * * * *",
            None,
            "code",
        )
        # It fires: make its tick due now and wait for the worker's run.
        await db.execute("UPDATE tidebase.schedules SET next_fire_at = now() WHERE name = 'x'")
        await eventually(
            lambda: _count_status(db, "x", "completed", 1), timeout=5, what="a run of x"
        )
    assert (await tide.schedules.get("y")).every == 3600.0
    unchanged = await tide.schedules.get("y")

    # A redeploy: same "y", "x" on a new cron.
    async with opened(Tidebase(dsn)) as t2:

        @t2.workflow("x", schedule="0 3 * * *")
        async def x2(run: Run) -> str:
            return "x2"

        @t2.workflow("y", schedule=3600)
        async def y2(run: Run) -> None:
            return None

        async with working(t2):
            pass
    info = await tide.schedules.get("x")
    assert (info.cron, info.source) == ("0 3 * * *", "code")
    assert info.next_fire_at is not None
    assert (info.next_fire_at.hour, info.next_fire_at.minute, info.next_fire_at.second) == (3, 0, 0)
    # Re-registering an unchanged schedule keeps its next tick.
    assert (await tide.schedules.get("y")).next_fire_at == unchanged.next_fire_at

    # Another redeploy: "x" no longer declares a schedule, "y" is not in this worker.
    async with opened(Tidebase(dsn)) as t3:

        @t3.workflow("x")
        async def x3(run: Run) -> str:
            return "x3"

        async with working(t3):
            pass
    names = {s.name: s.source for s in await tide.schedules.list()}
    # Only the code schedule of a workflow this worker has is deleted.
    assert names == {"x-api": "api", "y": "code"}
    assert len(await runs_of(db, "x")) >= 1  # its runs stay


# -- pause, resume, get, list, delete -------------------------------------------------------


async def test_pause_stops_firing_and_resume_does_not_catch_up_the_pause(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    await tide.schedules.set("pausable", every=60, workflow="nothing", catchup="all")
    paused = await tide.schedules.pause("pausable")
    assert paused.enabled is False
    await shift_back(db, "pausable", 600.5)  # ten ticks pass while paused
    assert await tide.schedules.fire_due() == []
    resumed = await tide.schedules.resume("pausable")
    now = await db_now(db)
    assert resumed.enabled is True
    assert resumed.next_fire_at is not None
    assert now < resumed.next_fire_at <= now + timedelta(seconds=60)
    assert await tide.schedules.fire_due() == []
    assert await runs_of(db, "pausable") == []
    # Resuming a running schedule changes nothing.
    again = await tide.schedules.resume("pausable")
    assert again.next_fire_at == resumed.next_fire_at


async def test_a_schedule_paused_under_a_worker_fires_again_after_resume(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    @tide.workflow("tick")
    async def tick(run: Run) -> None:
        return None

    await tide.schedules.set("live", every=0.2, workflow="tick", catchup="all")
    async with working(tide, maintenance_interval=0.2):
        await eventually(lambda: _count_at_least(db, "live", 2), timeout=5, what="two runs")
        await tide.schedules.pause("live")
        await anyio.sleep(0.3)  # a fire in flight lands
        paused_at = await db_now(db)
        n_paused = len(await runs_of(db, "live"))
        await anyio.sleep(1.0)
        assert len(await runs_of(db, "live")) == n_paused, "fired while paused"
        resumed_at = await db_now(db)
        await tide.schedules.resume("live")
        await eventually(
            lambda: _count_at_least(db, "live", n_paused + 2), timeout=5, what="runs after resume"
        )
    fires = await fire_times_of(db, "live")
    assert not [f for f in fires if paused_at < f <= resumed_at], "a tick of the pause fired"
    assert len(fires) == len(set(fires))


async def test_get_list_and_delete(tide: Tidebase, db: asyncpg.Connection) -> None:
    b = await tide.schedules.set(
        "b",
        cron="0 3 * * *",
        workflow="nightly",
        input={"n": 1},
        queue="batch",
        priority=5,
        timezone="Europe/Berlin",
        overlap="skip",
        catchup="all",
        catchup_limit=7,
    )
    a = await tide.schedules.set("a", every=timedelta(minutes=5), workflow="often")
    got = await tide.schedules.get("b")
    assert got == b
    assert (got.cron, got.every, got.timezone, got.input, got.queue, got.priority) == (
        "0 3 * * *",
        None,
        "Europe/Berlin",
        {"n": 1},
        "batch",
        5,
    )
    assert (got.catchup, got.catchup_limit, got.overlap, got.source) == ("all", 7, "skip", "api")
    assert got.next_fire_at is not None
    local = got.next_fire_at.astimezone(ZoneInfo("Europe/Berlin"))
    assert (local.hour, local.minute) == (3, 0)
    assert a.every == 300.0
    assert [s.name for s in await tide.schedules.list()] == ["a", "b"]

    # Replacing keeps one schedule of that name.
    await tide.schedules.set("a", every=10, workflow="often")
    assert [(s.name, s.every) for s in await tide.schedules.list()] == [("a", 10.0), ("b", None)]

    # Deleting keeps the runs.
    await shift_back(db, "a", 10.5)
    assert len(await tide.schedules.fire_due()) == 1
    await tide.schedules.delete("a")
    assert [s.name for s in await tide.schedules.list()] == ["b"]
    assert len(await runs_of(db, "a")) == 1
    for call in (
        tide.schedules.get("a"),
        tide.schedules.delete("a"),
        tide.schedules.pause("a"),
        tide.schedules.resume("a"),
    ):
        with pytest.raises(NotFoundError, match="'a'"):
            await call


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cron": "61 * * * *"}, "invalid cron expression"),
        ({"cron": "* * *"}, "3 fields"),
        ({"cron": "0 3 * * *", "timezone": "Mars/Base"}, "unknown time zone 'Mars/Base'"),
        ({"cron": "* * * * *", "every": 5}, "exactly one of cron= and every="),
        ({}, "exactly one of cron= and every="),
        ({"every": 0}, "every must be between"),
        ({"every": 5, "catchup": "some"}, "catchup must be one of"),
        ({"every": 5, "overlap": "never"}, "overlap must be one of"),
        ({"every": 5, "catchup_limit": 0}, "catchup_limit"),
        ({"every": 5, "input": object()}, "schedule 'bad'"),
    ],
)
async def test_bad_input_raises_invalid_schedule_and_stores_nothing(
    tide: Tidebase, db: asyncpg.Connection, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidSchedule, match=message):
        await tide.schedules.set("bad", workflow="w", **options)
    assert await count_schedules(db) == 0


async def test_bad_input_leaves_an_existing_schedule_as_it_was(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    good = await tide.schedules.set("keep", cron="0 3 * * *", workflow="w")
    with pytest.raises(InvalidSchedule, match="time zone"):
        await tide.schedules.set("keep", cron="0 4 * * *", workflow="w", timezone="Nowhere/Land")
    with pytest.raises(InvalidSchedule, match="invalid cron"):
        await tide.schedules.set("keep", cron="0 25 * * *", workflow="w")
    assert await tide.schedules.list() == [good]
    assert await count_schedules(db) == 1


def test_a_bad_schedule_in_code_fails_at_declaration(tide: Tidebase) -> None:
    with pytest.raises(InvalidSchedule, match=r"workflow 'nightly'.*invalid cron"):

        @tide.workflow("nightly", schedule="0 61 * * *")
        async def nightly(run: Run) -> None:
            return None

    assert "nightly" not in tide.workflows


async def test_a_schedule_of_an_unregistered_workflow_is_stored_and_its_runs_fail_clearly(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    @tide.workflow("known")
    async def known(run: Run) -> None:
        return None

    info = await tide.schedules.set("ghostly", every=3600, workflow="ghost")
    assert info.workflow == "ghost"
    await shift_back(db, "ghostly", 3600.5)
    [(run_id, queue)] = await tide.schedules.fire_due()
    assert queue == "default"
    async with working(tide, maintenance_interval=0.2):

        async def failed_once() -> bool:
            return (await runs_of(db, "ghostly"))[0]["error"] is not None

        await eventually(failed_once, timeout=5, what="the first attempt's failure")
    [run] = await runs_of(db, "ghostly")
    assert run["id"] == run_id
    assert run["error"]["type"] == "WorkflowNotFound"
    assert "'ghost'" in run["error"]["message"]
    assert "known" in run["error"]["message"]
    events = await db.fetch(Q["list_events"], run_id, 0, 100)
    failures = [
        json.loads(e["data"]) for e in events if e["type"] in ("run.retrying", "run.failed")
    ]
    assert failures and failures[0]["type"] == "WorkflowNotFound"
