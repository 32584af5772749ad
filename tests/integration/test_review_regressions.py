"""Regression tests of the review fixes: one test (or pair) per fix, each failing on the
code before it.

Names that only exist after the fixes (``WaitTimeout``, the ``released`` column) are
reached at run time, not imported, so that this module still imports on older code and
each test fails on its own assertion there.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import anyio
import asyncpg
import pytest

import tidebase_async
from tests.integration.core_support import FAST, event_types, eventually, run_row, working
from tidebase_async import (
    ConfigurationError,
    ConflictError,
    ConnectionLost,
    Retry,
    Run,
    RunFailed,
    StoreError,
    Tidebase,
    TidebaseError,
    Worker,
)
from tidebase_async.store import StepRecord


async def _step_completed(db: asyncpg.Connection, run_id: UUID, name: str) -> bool:
    status = await db.fetchval(
        "SELECT status FROM tidebase.steps WHERE run_id = $1 AND name = $2", run_id, name
    )
    return bool(status == "completed")


async def _claimed_attempts(db: asyncpg.Connection, run_id: UUID) -> list[int]:
    rows = await db.fetch(
        "SELECT data FROM tidebase.events WHERE run_id = $1 AND type = 'run.claimed' ORDER BY seq",
        run_id,
    )
    return [int(json.loads(r["data"])["attempt"]) for r in rows]


# -- 1. a failed step is replayed as a failure only when the workflow went past it ------


async def test_concurrent_steps_where_the_first_fails_after_the_second_completed_recover(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    """gather(step a, step b): b (position 2) is checkpointed, then a (position 1) fails
    and ends the attempt. a's failure was never handled, so the next attempt executes a
    again instead of replaying it as StepFailed (which failed every attempt)."""
    calls = {"a": 0, "b": 0}

    async def a(run_id: UUID) -> int:
        calls["a"] += 1
        if calls["a"] == 1:
            # Slowly: only once b's checkpoint is in the history.
            await eventually(lambda: _step_completed(db, run_id, "b"), what="b's checkpoint")
            raise RuntimeError("a failed once")
        return 1

    async def b() -> int:
        calls["b"] += 1
        return 2

    @tide.workflow("concurrent", max_attempts=2, retry=FAST)
    async def concurrent(run: Run) -> int:
        first, second = await asyncio.gather(run.step("a", a, run.id), run.step("b", b))
        return int(first) + int(second)

    handle = await tide.enqueue("concurrent")
    async with working(tide):
        assert await tide.runs.wait(handle.id, timeout=10) == 3

    assert calls == {"a": 2, "b": 1}  # b was replayed, a executed again
    row = await run_row(db, handle.id)
    assert (row["status"], row["attempt"]) == ("completed", 2)


async def test_a_handled_step_failure_is_executed_again_after_the_attempt_failed_later(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    """The workflow catches x's failure, goes on to y, then fails the attempt. That
    attempt's failure clears the "handled" mark: attempt 2 executes x again."""
    calls = {"x": 0, "y": 0}
    caught: list[int] = []

    def x() -> None:
        calls["x"] += 1
        raise ValueError("x always fails")

    def y() -> str:
        calls["y"] += 1
        return "y"

    @tide.workflow("handled-then-crash", max_attempts=2, retry=FAST)
    async def handled_then_crash(run: Run) -> str:
        try:
            await run.step("x", x)
        except ValueError:
            caught.append(run.attempt)
        await run.step("y", y)
        if run.attempt == 1:
            raise RuntimeError("the attempt fails after the handled failure")
        return "done"

    handle = await tide.enqueue("handled-then-crash")
    async with working(tide):
        assert await tide.runs.wait(handle.id, timeout=10) == "done"

    assert calls == {"x": 2, "y": 1}
    assert caught == [1, 2]  # a ValueError both times, never a replayed StepFailed
    assert (await run_row(db, handle.id))["attempt"] == 2


# -- 2. a StoreError raised by the workflow's own code is an ordinary failure -----------


async def test_a_store_error_raised_by_workflow_code_spends_attempts_and_fails(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    executions: list[int] = []

    @tide.workflow("raises-store-error", max_attempts=2, retry=FAST)
    async def raises_store_error(run: Run) -> None:
        executions.append(run.attempt)
        raise StoreError("boom")

    handle = await tide.enqueue("raises-store-error")
    async with working(tide):
        with pytest.raises(RunFailed) as failed:
            await tide.runs.wait(handle.id, timeout=5)

    assert (failed.value.error["type"], failed.value.error["message"]) == ("StoreError", "boom")
    assert executions == [1, 2]  # not handed back and re-executed in a loop
    row = await run_row(db, handle.id)
    assert (row["status"], row["attempt"]) == ("failed", 2)


# -- 3. released claims keep `attempt` monotonic and do not spend the budget -------------


async def test_a_released_claim_keeps_attempt_monotonic_and_unspent(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
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
    assert (row["status"], row["attempt"], row.get("released")) == ("queued", 1, 1)
    assert await event_types(db, handle.id) == ["run.created", "run.claimed", "run.released"]

    # The next claim gets a new fence token, and the released claim cost nothing:
    # max_attempts=1 still leaves this attempt to run.
    hang[0] = False
    async with working(tide):
        assert await tide.runs.wait(handle.id, timeout=10) == "finished"
    row = await run_row(db, handle.id)
    assert (row["status"], row["attempt"], row["released"]) == ("completed", 2, 1)
    assert await _claimed_attempts(db, handle.id) == [1, 2]


# -- 4. retrying a run whose dedupe key another active run holds ------------------------


async def test_retry_of_a_failed_run_whose_dedupe_key_is_taken_raises_conflict(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    @tide.workflow("deduped", max_attempts=1)
    async def deduped(run: Run) -> None:
        raise RuntimeError("fails")

    first = await tide.enqueue("deduped", dedupe_key="k")
    async with working(tide):
        with pytest.raises(RunFailed):
            await tide.runs.wait(first.id, timeout=10)
    second = await tide.enqueue("deduped", dedupe_key="k")  # no worker: stays queued
    assert not second.deduplicated and second.id != first.id

    with pytest.raises(ConflictError) as conflict:
        await tide.runs.retry(first.id)
    assert "dedupe key" in str(conflict.value)
    assert (await run_row(db, first.id))["status"] == "failed"
    assert (await run_row(db, second.id))["status"] == "queued"


# -- 5. StepTimeout only for the step's own deadline ------------------------------------


async def test_a_timeout_error_raised_by_a_step_is_not_reported_as_step_timeout(
    tide: Tidebase,
) -> None:
    async def upstream() -> None:
        raise TimeoutError("upstream")

    async def too_slow() -> None:
        await anyio.sleep(10)

    @tide.workflow("upstream-timeout", max_attempts=1)
    async def upstream_timeout(run: Run) -> None:
        await run.step("call", upstream, timeout=10)

    @tide.workflow("real-timeout", max_attempts=1)
    async def real_timeout(run: Run) -> None:
        await run.step("call", too_slow, timeout=0.05)

    with pytest.raises(RunFailed) as failed:
        await tide.run("upstream-timeout")
    assert (failed.value.error["type"], failed.value.error["message"]) == (
        "TimeoutError",
        "upstream",
    )
    info = await tide.runs.get(failed.value.run_id)
    assert info.steps[0].error is not None
    assert info.steps[0].error["type"] == "TimeoutError"

    with pytest.raises(RunFailed) as failed:
        await tide.run("real-timeout")
    assert failed.value.error["type"] == "StepTimeout"
    assert "timed out after 0.05s" in failed.value.error["message"]


# -- 6. runs.wait gives up with WaitTimeout ---------------------------------------------


async def test_wait_timeout_is_a_tidebase_error_and_a_timeout_error(tide: Tidebase) -> None:
    @tide.workflow("never-claimed")
    async def never_claimed(run: Run) -> None:
        return None

    handle = await tide.enqueue("never-claimed")  # no worker runs it
    with pytest.raises(TimeoutError) as timed_out:
        await tide.runs.wait(handle.id, timeout=0.2)
    exc: BaseException = timed_out.value
    assert isinstance(exc, TidebaseError)  # catchable with the library's other errors
    assert type(exc) is tidebase_async.WaitTimeout
    assert "still queued" in str(exc)


# -- 8. a step return type msgspec cannot decode ----------------------------------------


def _undecodable() -> list[int] | tuple[int, ...]:
    """msgspec refuses this annotation (two array-like types in one union)."""
    return [1]


async def test_a_step_return_type_msgspec_cannot_decode_is_a_serialization_error(
    tide: Tidebase,
) -> None:
    @tide.workflow("bad-step-type", max_attempts=1)
    async def bad_step_type(run: Run) -> None:
        await run.step("shape", _undecodable)

    with pytest.raises(RunFailed) as failed:
        await tide.run("bad-step-type")
    assert failed.value.error["type"] == "SerializationError"
    assert "step 'shape'" in failed.value.error["message"]


# -- 9. runs.list validates status; RunInfo.inline --------------------------------------


async def test_list_rejects_an_unknown_status_and_run_info_tells_inline_runs(
    tide: Tidebase,
) -> None:
    @tide.workflow("plain")
    async def plain(run: Run) -> str:
        return "ok"

    with pytest.raises(ConfigurationError, match="bogus"):
        await tide.runs.list(status="bogus")

    assert (await tide.runs.list(status="queued")).items == []  # a known status is fine
    assert await tide.run("plain") == "ok"
    inline = (await tide.runs.list(workflow="plain")).items[0]
    queued = await tide.enqueue("plain")
    assert (await tide.runs.get(inline.id)).inline is True
    assert (await tide.runs.get(queued.id)).inline is False


# -- 10. a late heartbeat answer about an old claim does not cancel the new one ----------


async def test_a_heartbeat_about_a_finished_claim_does_not_cancel_its_successor(
    tide: Tidebase, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deterministic interleaving: the heartbeat snapshots attempt 1; while its query is
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


# -- 11. claims are released when loading their history fails ---------------------------


async def test_claims_are_released_when_loading_their_history_fails(
    tide: Tidebase, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
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


async def test_a_raw_input_cannot_smuggle_fields_into_the_enqueue_batch(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    import msgspec

    from tidebase_async import SerializationError

    smuggled = msgspec.Raw(b'1, "queue": "evil"}, {"workflow": "smuggled"')
    with pytest.raises(SerializationError):
        await tide.enqueue_many([("unregistered-wf", smuggled)])
    assert await db.fetchval("SELECT count(*) FROM tidebase.runs") == 0


async def test_one_run_whose_error_cannot_be_printed_does_not_take_the_worker_down(
    tide: Tidebase,
) -> None:
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
