"""tide.work(): concurrency, ordering, queues, graceful stop, cancellation, deadlines."""

from __future__ import annotations

import functools
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import asyncpg
import pytest

from tests.integration.core_support import (
    count_rows,
    event_types,
    eventually,
    run_row,
    status_of,
    working,
)
from tidebase_async import ConfigurationError, Run, RunCancelled, RunFailed, Tidebase, Worker


async def test_a_worker_never_runs_more_than_its_concurrency(tide: Tidebase) -> None:
    active = 0
    peak = 0

    async def busy() -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            await anyio.sleep(0.15)
        finally:
            active -= 1

    @tide.workflow("busy")
    async def busy_wf(run: Run) -> None:
        await run.step("busy", busy)

    handles = await tide.enqueue_many([("busy", i) for i in range(8)])
    async with working(tide, concurrency=3) as worker:
        for handle in handles:
            await tide.runs.wait(handle.id, timeout=10)
        assert worker.stats.completed == 8

    assert peak == 3


async def test_higher_priority_runs_are_claimed_first(tide: Tidebase) -> None:
    order: list[str] = []

    @tide.workflow("ordered")
    async def ordered(run: Run, input: str) -> None:
        order.append(input)

    low = await tide.enqueue("ordered", input="low")
    await tide.enqueue("ordered", input="high", priority=10)
    await tide.enqueue("ordered", input="mid", priority=5)
    async with working(tide, concurrency=1):
        await tide.runs.wait(low.id, timeout=10)
    assert order == ["high", "mid", "low"]


async def test_a_worker_claims_only_from_its_queues(tide: Tidebase, db: asyncpg.Connection) -> None:
    @tide.workflow("here")
    async def here(run: Run) -> None:
        return None

    @tide.workflow("elsewhere", queue="other")
    async def elsewhere(run: Run) -> None:
        return None

    away = await tide.enqueue("elsewhere")
    home = await tide.enqueue("here")
    async with working(tide, queues=["default"]):
        await tide.runs.wait(home.id, timeout=10)
        assert await status_of(db, away.id) == "queued"
    async with working(tide):  # defaults to the queues of the registered workflows
        await tide.runs.wait(away.id, timeout=10)


async def test_a_run_of_an_unregistered_workflow_fails_with_workflow_not_found(
    tide: Tidebase,
) -> None:
    @tide.workflow("known-one")
    async def known_one(run: Run) -> None:
        return None

    handle = await tide.enqueue("unregistered")
    async with working(tide):
        with pytest.raises(RunFailed) as failed:
            await tide.runs.wait(handle.id, timeout=10)
    assert failed.value.error["type"] == "WorkflowNotFound"
    assert "'unregistered'" in failed.value.error["message"]
    assert "known-one" in failed.value.error["message"]  # lists what is known


async def test_stop_lets_an_executing_run_finish_within_the_grace_period(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    entered = anyio.Event()
    workers: list[Worker] = []

    async def slow() -> str:
        entered.set()
        await anyio.sleep(0.3)
        return "slept"

    @tide.workflow("slow")
    async def slow_wf(run: Run) -> str:
        return str(await run.step("slow", slow))

    running = await tide.enqueue("slow")
    waiting = await tide.enqueue("slow")
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                functools.partial(
                    tide.work,
                    concurrency=1,
                    shutdown_grace=5,
                    handle_signals=False,
                    worker_ready=workers.append,
                )
            )
            await entered.wait()
            workers[0].stop()
        # tide.work() returned by itself after the drain.

    row = await run_row(db, running.id)
    assert (row["status"], row["output"]) == ("completed", "slept")
    # Nothing new was claimed once stopping began.
    row = await run_row(db, waiting.id)
    assert (row["status"], row["attempt"]) == ("queued", 0)


async def test_stop_releases_runs_that_outlast_the_grace_period(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    entered = anyio.Event()
    workers: list[Worker] = []

    async def forever() -> None:
        entered.set()
        await anyio.sleep(10)

    @tide.workflow("forever")
    async def forever_wf(run: Run) -> None:
        await run.step("sleep", forever)

    handle = await tide.enqueue("forever")
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                functools.partial(
                    tide.work,
                    shutdown_grace=0.1,
                    handle_signals=False,
                    worker_ready=workers.append,
                )
            )
            await entered.wait()
            t0 = time.monotonic()
            workers[0].stop()
    assert time.monotonic() - t0 < 3

    row = await run_row(db, handle.id)
    assert row["status"] == "queued"
    # The claim was handed back unspent: attempt stays monotonic (a fence token) and
    # `released` refunds it.
    assert (row["attempt"], row["released"]) == (1, 1)
    assert row["lease_owner"] is None
    assert await event_types(db, handle.id) == ["run.created", "run.claimed", "run.released"]
    data = await db.fetchval(
        "SELECT data FROM tidebase.events WHERE run_id = $1 AND type = 'run.released'",
        handle.id,
    )
    assert json.loads(data)["worker"] == workers[0].id
    assert await db.fetchval("SELECT count(*) FROM tidebase.steps") == 0
    assert workers[0].stats.released == 1


async def test_cancelling_work_releases_in_flight_runs_at_once(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    entered = anyio.Event()
    hang = [True]
    finished_sleeping: list[str] = []

    async def maybe_forever(name: str) -> str:
        entered.set()
        if hang[0]:
            await anyio.sleep(10)
            finished_sleeping.append(name)
        return name

    @tide.workflow("forever")
    async def forever_wf(run: Run, input: str) -> str:
        return str(await run.step("sleep", maybe_forever, input))

    first = await tide.enqueue("forever", input="first")
    second = await tide.enqueue("forever", input="second")
    async with working(tide, concurrency=2, shutdown_grace=30):
        with anyio.fail_after(10):
            await entered.wait()
        await eventually(
            lambda: _both_running(db, first.id, second.id), what="both runs to be claimed"
        )
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 3  # no grace period on cancellation

    for handle in (first, second):
        row = await run_row(db, handle.id)
        assert (row["status"], row["attempt"], row["released"], row["lease_owner"]) == (
            "queued",
            1,
            1,
            None,
        )
        assert (await event_types(db, handle.id))[-1] == "run.released"
    assert finished_sleeping == []

    # Released runs are claimed again by the next worker and complete.
    hang[0] = False
    async with working(tide):
        assert await tide.runs.wait(first.id, timeout=10) == "first"
        assert await tide.runs.wait(second.id, timeout=10) == "second"
    assert (await run_row(db, first.id))["attempt"] == 2  # one claim released, one spent


async def _both_running(db: asyncpg.Connection, *run_ids: object) -> bool:
    statuses = await db.fetch("SELECT status FROM tidebase.runs WHERE id = ANY($1)", run_ids)
    return len(statuses) == 2 and all(s["status"] == "running" for s in statuses)


async def test_a_run_past_its_deadline_at_claim_is_cancelled_unexecuted(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    called: list[int] = []

    @tide.workflow("late", max_attempts=3)
    async def late(run: Run) -> None:
        called.append(1)

    deadline = datetime.now(UTC) - timedelta(seconds=1)
    handle = await tide.enqueue("late", deadline=deadline)
    async with working(tide):
        with pytest.raises(RunCancelled) as cancelled:
            await tide.runs.wait(handle.id, timeout=10)

    assert called == []
    assert cancelled.value.reason == "deadline"
    row = await run_row(db, handle.id)
    assert row["status"] == "cancelled"


async def test_a_run_within_its_deadline_runs(tide: Tidebase) -> None:
    @tide.workflow("on-time")
    async def on_time(run: Run) -> str:
        return "ok"

    handle = await tide.enqueue("on-time", deadline=datetime.now(UTC) + timedelta(minutes=5))
    async with working(tide):
        assert await tide.runs.wait(handle.id, timeout=10) == "ok"


async def test_bad_worker_options_raise_configuration_error(
    tide: Tidebase, db: asyncpg.Connection, subtests: pytest.Subtests
) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"concurrency": 0}, "concurrency"),
        ({"queues": []}, "at least one queue"),
        ({"queues": [""]}, "queue name"),
        ({"lease": -1}, "lease"),
        ({"poll_interval": "often"}, "poll_interval"),
    ]
    for options, message in cases:
        with (
            subtests.test(message, options=options),
            pytest.raises(ConfigurationError, match=message),
        ):
            await tide.work(handle_signals=False, **options)
    assert await count_rows(db) == (0, 0, 0)


async def test_a_slot_is_reused_while_the_previous_outcome_is_being_written(
    tide: Tidebase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At concurrency 1 the next run starts while the previous run's completion is in
    flight (its code is done), yet two runs' code never executes at once."""
    write_may_finish = anyio.Event()
    first_write_started = anyio.Event()
    started: list[int] = []
    active = 0
    peak = 0
    original = tide.store.complete_runs

    async def slow_complete(**kwargs: Any) -> Any:
        first_write_started.set()
        await write_may_finish.wait()
        return await original(**kwargs)

    monkeypatch.setattr(tide.store, "complete_runs", slow_complete)

    @tide.workflow("slot")
    async def slot(run: Run, input: int) -> int:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        started.append(input)
        await anyio.sleep(0.01)
        active -= 1
        return input

    first = await tide.enqueue("slot", input=1)
    async with working(tide, concurrency=1) as worker:
        with anyio.fail_after(10):
            await first_write_started.wait()
        second = await tide.enqueue("slot", input=2)
        await eventually(lambda: started == [1, 2])
        # Run 1's completion is still held back: the slot went to run 2 meanwhile.
        assert (await tide.runs.get(first.id)).status == "running"
        assert worker.inflight == 2
        write_may_finish.set()
        assert await tide.runs.wait(first.id, timeout=10) == 1
        assert await tide.runs.wait(second.id, timeout=10) == 2
    assert peak == 1


async def test_the_claims_asynchronous_commit_stays_inside_its_transaction(
    tide: Tidebase,
) -> None:
    """Claims run with synchronous_commit off inside their own transaction only: every
    pool connection still commits synchronously afterwards (a leaked setting would make
    checkpoints and completions non-durable)."""

    @tide.workflow("noop-claim")
    async def noop(run: Run) -> None:
        return None

    handles = await tide.enqueue_many([("noop-claim", None)] * 20)
    async with working(tide, concurrency=4):
        for handle in handles:
            await tide.runs.wait(handle.id, timeout=10)
    pool = tide.store._pool
    connections = [await pool.acquire() for _ in range(pool.get_size())]
    try:
        settings = {await c.fetchval("SHOW synchronous_commit") for c in connections}
    finally:
        for c in connections:
            await pool.release(c)
    assert settings == {"on"}
