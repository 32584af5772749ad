"""tide.work(): concurrency, ordering, queues, graceful stop and released claims,
cancellation, deadlines, a run whose error cannot be printed, and the claim bookkeeping of
the hot path (a slot reused while the previous outcome is written, a run claimed again,
late heartbeat answers, claims whose history cannot be loaded)."""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import anyio
import asyncpg
import pytest

from tests.integration.core_support import (
    FAST,
    count_rows,
    event_types,
    eventually,
    run_row,
    status_of,
    working,
)
from tidebase_async import (
    ConfigurationError,
    ConnectionLost,
    Retry,
    Run,
    RunCancelled,
    RunFailed,
    Tidebase,
    Worker,
)
from tidebase_async.store import ClaimedRun, StepRecord


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


async def test_one_run_whose_error_cannot_be_printed_does_not_take_the_worker_down(
    tide: Tidebase,
) -> None:
    """Regression: a run whose exception's ``str()`` raises took the worker down, and
    the other runs with it."""

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    @tide.workflow("bad-str", max_attempts=1)
    async def bad_str(run: Run) -> None:
        raise Unprintable

    @tide.workflow("fine")
    async def fine(run: Run) -> str:
        return "ok"

    bad = await tide.enqueue("bad-str")
    good = [await tide.enqueue("fine") for _ in range(5)]
    async with working(tide, concurrency=8):
        with pytest.raises(RunFailed) as failed:
            await tide.runs.wait(bad.id, timeout=10)
        for handle in good:
            assert await tide.runs.wait(handle.id, timeout=10) == "ok"
    assert failed.value.error["type"].endswith("Unprintable")
    assert "str() of the exception failed" in failed.value.error["message"]


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


async def _claimed_attempts(db: asyncpg.Connection, run_id: UUID) -> list[int]:
    rows = await db.fetch(
        "SELECT data FROM tidebase.events WHERE run_id = $1 AND type = 'run.claimed' ORDER BY seq",
        run_id,
    )
    return [int(json.loads(r["data"])["attempt"]) for r in rows]


async def test_a_released_claim_keeps_attempt_monotonic_and_unspent(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    """Regression: a claim released at shutdown set ``attempt`` back and spent the
    attempt budget; the next claim must get a new, higher fence token and the released
    claim must cost nothing."""
    entered = anyio.Event()
    hang = [True]
    workers: list[Worker] = []

    async def long_step() -> str:
        entered.set()
        if hang[0]:
            await anyio.sleep(30)
        return "finished"

    @tide.workflow("long", max_attempts=1)
    async def long_wf(run: Run) -> str:
        return str(await run.step("long", long_step))

    handle = await tide.enqueue("long")
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
            workers[0].stop()

    row = await run_row(db, handle.id)
    assert (row["status"], row["attempt"], row["released"]) == ("queued", 1, 1)
    assert await event_types(db, handle.id) == ["run.created", "run.claimed", "run.released"]

    # The next claim gets a new fence token, and the released claim cost nothing:
    # max_attempts=1 still leaves this attempt to run.
    hang[0] = False
    async with working(tide):
        assert await tide.runs.wait(handle.id, timeout=10) == "finished"
    row = await run_row(db, handle.id)
    assert (row["status"], row["attempt"], row["released"]) == ("completed", 2, 1)
    assert await _claimed_attempts(db, handle.id) == [1, 2]


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
    async with contextlib.AsyncExitStack() as stack:
        # Every connection the pool holds: all idle now, so none is opened for this.
        size = pool.get_size()
        connections = [await stack.enter_async_context(pool.acquire()) for _ in range(size)]
        assert (pool.get_size(), pool.get_idle_size()) == (size, 0)
        settings = {await c.fetchval("SHOW synchronous_commit") for c in connections}
    assert settings == {"on"}


async def test_a_run_reclaimed_while_its_old_claim_finishes_keeps_its_slot_and_lease(
    tide: Tidebase, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the worker's bookkeeping was keyed by run id only, so a finished
    attempt's cleanup dropped the bookkeeping of the same run's next attempt.

    Attempt 1 of a run finishes, but its completion write is slow; meanwhile its
    lease expired and the reconciler requeued it. The finishing run's slot is free, so
    the worker claims the run again (attempt 2) while attempt 1's write is in flight.
    Attempt 1's write is then refused (lost), and its cleanup must not drop attempt 2's
    bookkeeping: attempt 2 still executes here, so it must stay in flight (slot taken,
    heartbeated), and at concurrency 1 no other run's code may start beside it."""
    write_may_finish = anyio.Event()
    first_write_started = anyio.Event()
    second_may_finish = anyio.Event()
    calls = 0
    active = 0
    peak = 0
    other_started = anyio.Event()
    original = tide.store.complete_runs

    async def slow_first_complete(**kwargs: Any) -> Any:
        if not first_write_started.is_set():
            first_write_started.set()
            await write_may_finish.wait()
        return await original(**kwargs)

    monkeypatch.setattr(tide.store, "complete_runs", slow_first_complete)

    @tide.workflow("reclaimed")
    async def reclaimed(run: Run) -> int:
        nonlocal calls, active, peak
        calls += 1
        mine = calls
        active += 1
        peak = max(peak, active)
        try:
            if mine > 1:
                await second_may_finish.wait()
            return mine
        finally:
            active -= 1

    @tide.workflow("other")
    async def other(run: Run) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        other_started.set()
        active -= 1

    handle = await tide.enqueue("reclaimed")
    async with working(tide, concurrency=1, poll_interval=0.1) as worker:
        with anyio.fail_after(10):
            await first_write_started.wait()
        # Attempt 1's code is done; its completion is in flight. Its lease runs out
        # (as after heartbeats that failed for a while) and the reconciler requeues it.
        await db.execute(
            "UPDATE tidebase.runs SET lease_expires_at = now() - interval '1 second' WHERE id = $1",
            handle.id,
        )
        await tide.store.requeue_expired(limit=10)
        # Give the worker a chance to claim the run again (it can only when the
        # finishing run's slot counts as free).
        with anyio.move_on_after(2):
            await eventually(lambda: calls == 2, timeout=2)
        write_may_finish.set()
        # Attempt 1's completion is refused by the fence: that execution is lost.
        await eventually(lambda: worker.stats.lost == 1, what="attempt 1 lost")
        await eventually(lambda: calls == 2, what="attempt 2 started")
        # Attempt 2 is executing its code here right now.
        assert active == 1
        assert worker.inflight == 1, "attempt 2 is executing but no longer counted in flight"
        assert handle.id in worker._executions, "attempt 2 would no longer be heartbeated"
        await tide.enqueue("other")
        with anyio.move_on_after(1):
            await other_started.wait()
        assert not other_started.is_set(), "a second run started beside attempt 2 at concurrency 1"
        second_may_finish.set()
        assert await tide.runs.wait(handle.id, timeout=10) == 2
        with anyio.fail_after(10):
            await other_started.wait()
    assert peak == 1


async def test_a_claim_that_comes_back_with_the_same_fence_starts_no_second_execution(
    tide: Tidebase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a claim that came back with the fence of an execution still in
    progress started a second execution beside it.

    That is what a server crash that undoes a claim (claims commit without waiting for
    their WAL flush) looks like to the worker that made it: its next claim returns the
    same (run, attempt), the fence of the execution still in progress there. That
    execution goes on under the re-established lease; no second one may start beside it,
    or two executions would write under one fence."""
    step_may_finish = anyio.Event()
    entered = 0
    first_claim: list[ClaimedRun] = []
    handed_again = 0
    original = tide.store.claim

    async def claim(**kwargs: Any) -> list[ClaimedRun]:
        nonlocal handed_again
        got = await original(**kwargs)
        if got and not first_claim:
            first_claim.extend(got)
        elif not got and first_claim and not step_may_finish.is_set():
            handed_again += 1
            return list(first_claim)
        return got

    monkeypatch.setattr(tide.store, "claim", claim)

    async def slow_step() -> str:
        await step_may_finish.wait()
        return "done"

    @tide.workflow("fenced-once")
    async def fenced_once(run: Run) -> str:
        nonlocal entered
        entered += 1
        return str(await run.step("slow", slow_step))

    handle = await tide.enqueue("fenced-once")
    async with working(tide, concurrency=2, poll_interval=0.05):
        await eventually(lambda: entered == 1 and handed_again >= 3)
        assert entered == 1
        step_may_finish.set()
        assert await tide.runs.wait(handle.id, timeout=10) == "done"
    assert entered == 1


async def test_a_heartbeat_about_a_finished_claim_does_not_cancel_its_successor(
    tide: Tidebase, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a late heartbeat answer about a claim that had already finished
    cancelled the same run's next claim, executing on the same worker.

    Deterministic interleaving: the heartbeat snapshots attempt 1; while its query is
    in flight attempt 1 fails, the query runs while the run is queued (so the run is not
    held), and the answer arrives once the same worker executes attempt 2."""
    attempts: list[int] = []
    hb_called = anyio.Event()
    second_started = anyio.Event()
    second_finished: list[int] = []
    real_heartbeat = tide.store.heartbeat
    intercepted: list[bool] = []

    async def step_of_second() -> None:
        await anyio.sleep(0.3)  # outlives the late heartbeat answer

    @tide.workflow("reclaimed", max_attempts=3, retry=Retry(backoff=60, max_backoff=60))
    async def reclaimed(run: Run) -> int:
        attempts.append(run.attempt)
        if run.attempt == 1:
            await hb_called.wait()
            raise RuntimeError("attempt 1 fails while the heartbeat is in flight")
        second_started.set()
        await run.step("second", step_of_second)
        second_finished.append(run.attempt)
        return run.attempt

    handle = await tide.enqueue("reclaimed")

    async def run_is_queued() -> bool:
        return bool((await run_row(db, handle.id))["status"] == "queued")

    async def late_heartbeat(*, worker_id: str, run_ids: Sequence[UUID], lease_s: float) -> Any:
        if handle.id not in run_ids or intercepted:
            return await real_heartbeat(worker_id=worker_id, run_ids=run_ids, lease_s=lease_s)
        intercepted.append(True)
        hb_called.set()  # attempt 1 fails now
        await eventually(run_is_queued, what="attempt 1 to fail")
        held = await real_heartbeat(worker_id=worker_id, run_ids=run_ids, lease_s=lease_s)
        # Due at once (the 60 s backoff kept it from being claimed before this query).
        await db.execute(
            "UPDATE tidebase.runs SET run_at = tidebase.now() WHERE id = $1", handle.id
        )
        with anyio.fail_after(10):
            await second_started.wait()
        return held

    monkeypatch.setattr(tide.store, "heartbeat", late_heartbeat)
    async with working(tide, lease=1.5, poll_interval=0.1) as worker:
        assert await tide.runs.wait(handle.id, timeout=15) == 2
        assert worker.stats.lost == 0

    assert intercepted == [True]
    assert attempts == [1, 2]
    assert second_finished == [2]
    assert await _claimed_attempts(db, handle.id) == [1, 2]


async def test_claims_are_released_when_loading_their_history_fails(
    tide: Tidebase, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: claims whose history failed to load (the connection broke) were
    neither executed nor handed back, so their runs waited for their leases to expire."""
    real_load_steps = tide.store.load_steps
    loads: list[list[UUID]] = []

    async def flaky_load_steps(run_ids: Sequence[UUID]) -> dict[UUID, list[StepRecord]]:
        loads.append(list(run_ids))
        if len(loads) == 1:
            raise ConnectionLost("injected: the connection broke while loading history")
        return await real_load_steps(run_ids)

    def checkpoint() -> str:
        return "kept"

    @tide.workflow("resumed", max_attempts=2, retry=FAST)
    async def resumed(run: Run) -> str:
        value = str(await run.step("first", checkpoint))
        if run.attempt == 1:
            raise RuntimeError("attempt 1 fails after its checkpoint")
        return value

    monkeypatch.setattr(tide.store, "load_steps", flaky_load_steps)
    handle = await tide.enqueue("resumed")
    async with working(tide):  # 30 s lease: only a release makes the run claimable soon
        assert await tide.runs.wait(handle.id, timeout=5) == "kept"

    assert len(loads) == 2
    run_events = [t for t in await event_types(db, handle.id) if t.startswith("run.")]
    assert run_events == [
        "run.created",
        "run.claimed",
        "run.retrying",
        "run.claimed",  # load_steps fails for this claim...
        "run.released",  # ...so it is handed back at once, unspent
        "run.claimed",
        "run.completed",
    ]
    row = await run_row(db, handle.id)
    # 3 claims, 1 released: 2 attempts spent, within max_attempts=2.
    assert (row["status"], row["attempt"], row["released"]) == ("completed", 3, 1)
