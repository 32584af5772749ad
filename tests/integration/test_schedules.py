"""Managing schedules on a real Postgres: schedules declared in code, pause/resume,
get/list/delete and bad input. How due ticks fire (exactly once, catchup, overlap) is in
test_schedules_firing.py.

Downtime is simulated by moving a schedule's ``anchor_at``/``next_fire_at`` into the past
in SQL (``schedule_support.shift_back``); ``tide.schedules.fire_due()`` is the
reconciler's firing step, called directly where a worker would only add timing noise.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import asyncpg
import pytest

from tests.integration.core_support import eventually, working
from tests.integration.schedule_support import (
    count_schedules,
    db_now,
    fire_times_of,
    runs_at_least,
    runs_in_status,
    runs_of,
    shift_back,
)
from tidebase_async import InvalidSchedule, NotFoundError, Run, Tidebase
from tidebase_async.store.sql import Q

# -- fixtures --------------------------------------------------------------------------


@pytest.fixture
async def other(dsn: str) -> AsyncIterator[Tidebase]:
    """A second client on the test's database (another process's view)."""
    async with Tidebase(dsn) as t:
        yield t


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
            lambda: runs_in_status(db, "x", "completed", 1), timeout=5, what="a run of x"
        )
    assert (await tide.schedules.get("y")).every == 3600.0
    unchanged = await tide.schedules.get("y")

    # A redeploy: same "y", "x" on a new cron.
    async with Tidebase(dsn) as t2:

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
    async with Tidebase(dsn) as t3:

        @t3.workflow("x")
        async def x3(run: Run) -> str:
            return "x3"

        async with working(t3):
            pass
    names = {s.name: s.source for s in await tide.schedules.list()}
    # Only the code schedule of a workflow this worker has is deleted.
    assert names == {"x-api": "api", "y": "code"}
    assert len(await runs_of(db, "x")) >= 1  # its runs stay


async def test_worker_start_keeps_a_paused_code_schedule_paused(tide: Tidebase) -> None:
    """Regression: schedules declared in code were re-enabled at every worker start,
    undoing a pause."""

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
        await eventually(lambda: runs_at_least(db, "live", 2), timeout=5, what="two runs")
        await tide.schedules.pause("live")
        await anyio.sleep(0.3)  # a fire in flight lands
        paused_at = await db_now(db)
        n_paused = len(await runs_of(db, "live"))
        await anyio.sleep(1.0)
        assert len(await runs_of(db, "live")) == n_paused, "fired while paused"
        resumed_at = await db_now(db)
        await tide.schedules.resume("live")
        await eventually(
            lambda: runs_at_least(db, "live", n_paused + 2), timeout=5, what="runs after resume"
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


async def test_bad_schedule_stores_nothing(tide: Tidebase) -> None:
    with pytest.raises(InvalidSchedule, match="cron"):
        await tide.schedules.set("x", cron="61 * * * *", workflow="w")
    with pytest.raises(InvalidSchedule, match="time zone"):
        await tide.schedules.set("x", cron="* * * * *", workflow="w", timezone="Mars/Base")
    with pytest.raises(InvalidSchedule, match="exactly one"):
        await tide.schedules.set("x", cron="* * * * *", every=5, workflow="w")
    assert await tide.schedules.list() == []
