"""run.step: threads, checkpoints and replay, ordinals, retries, timeouts, typing,
determinism, and the checkpointed helpers."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import datetime
from typing import Any
from uuid import UUID

import anyio
import asyncpg
import msgspec
import pytest

from tests.integration.core_support import FAST, eventually, run_row, working
from tidebase_async import ConfigurationError, Retry, Run, RunFailed, Tidebase


class Report(msgspec.Struct, frozen=True):
    title: str
    pages: int


class Order(msgspec.Struct, frozen=True):
    sku: str
    qty: int


class Opaque:
    """Something msgspec cannot encode."""


def make_report() -> Report:
    return Report(title="q3", pages=12)


async def run_to_end(tide: Tidebase, workflow: str, input: Any = None, **options: Any) -> UUID:
    """Enqueue a run, work until it is terminal, and return its id."""
    handle = await tide.enqueue(workflow, input=input, **options)
    async with working(tide):
        try:
            await tide.runs.wait(handle.id, timeout=10)
        except RunFailed:
            pass
    return handle.id


async def test_sync_steps_run_in_a_thread_and_async_steps_on_the_loop(tide: Tidebase) -> None:
    loop_thread = threading.current_thread()
    seen: dict[str, threading.Thread] = {}

    def sync_step(x: int) -> int:
        seen["sync"] = threading.current_thread()
        time.sleep(0.01)  # blocking is fine here: it is not the event loop's thread
        return x + 1

    async def async_step(x: int, *, times: int) -> int:
        seen["async"] = threading.current_thread()
        return x * times

    @tide.workflow("mixed")
    async def mixed(run: Run, input: int) -> int:
        a = await run.step("sync", sync_step, input)
        return int(await run.step("async", async_step, a, times=3))

    handle = await tide.enqueue("mixed", input=1)
    async with working(tide):
        assert await tide.runs.wait(handle.id, timeout=10) == 6
    assert seen["sync"] is not loop_thread
    assert seen["async"] is loop_thread


async def test_completed_steps_are_not_executed_again_on_replay(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    calls: list[str] = []

    def step(name: str) -> str:
        calls.append(name)
        return name.upper()

    @tide.workflow("replayed", max_attempts=2, retry=FAST)
    async def replayed(run: Run) -> list[str]:
        one = await run.step("one", step, "one")
        two = await run.step("two", step, "two")
        if run.attempt == 1:
            raise RuntimeError("crash after step two")
        three = await run.step("three", step, "three")
        return [one, two, three]

    run_id = await run_to_end(tide, "replayed")

    assert calls == ["one", "two", "three"]
    info = await tide.runs.get(run_id)
    assert info.status == "completed"
    assert info.output == ["ONE", "TWO", "THREE"]
    assert info.attempt == 2
    assert [(s.name, s.status, s.output) for s in info.steps] == [
        ("one", "completed", "ONE"),
        ("two", "completed", "TWO"),
        ("three", "completed", "THREE"),
    ]
    run_attempts = await db.fetch(
        "SELECT run_attempt FROM tidebase.steps WHERE run_id = $1 ORDER BY position", run_id
    )
    assert [r["run_attempt"] for r in run_attempts] == [1, 1, 2]


async def test_a_repeated_step_name_gets_ordinals(tide: Tidebase) -> None:
    @tide.workflow("loop", max_attempts=2, retry=FAST)
    async def loop(run: Run) -> list[int]:
        out = [int(await run.step("fetch", lambda i=i: i * 10)) for i in range(3)]
        if run.attempt == 1:
            raise RuntimeError("replay the loop once")
        return out

    run_id = await run_to_end(tide, "loop")

    info = await tide.runs.get(run_id)
    assert info.output == [0, 10, 20]
    assert [s.name for s in info.steps] == ["fetch", "fetch#2", "fetch#3"]
    assert [s.output for s in info.steps] == [0, 10, 20]


async def test_a_step_retried_by_its_policy_records_the_attempt_that_succeeded(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    tries: list[int] = []

    async def flaky() -> str:
        tries.append(len(tries) + 1)
        if len(tries) < 3:
            raise ConnectionError(f"try {len(tries)} failed")
        return "finally"

    @tide.workflow("flaky", max_attempts=1)
    async def flaky_wf(run: Run) -> str:
        return str(await run.step("call", flaky, retry=Retry(attempts=3, backoff=0.01)))

    run_id = await run_to_end(tide, "flaky")

    assert tries == [1, 2, 3]
    info = await tide.runs.get(run_id)
    assert info.status == "completed"
    assert info.output == "finally"
    assert info.attempt == 1
    assert [(s.name, s.status, s.attempt) for s in info.steps] == [("call", "completed", 3)]
    step_events = await db.fetch(
        "SELECT type FROM tidebase.events WHERE run_id = $1 AND type LIKE 'step.%'", run_id
    )
    assert [e["type"] for e in step_events] == ["step.completed"]


async def test_a_step_that_exhausts_its_retries_fails_the_run(tide: Tidebase) -> None:
    tries: list[int] = []

    def broken() -> None:
        tries.append(1)
        raise ValueError(f"boom number {len(tries)}")

    @tide.workflow("doomed", max_attempts=1)
    async def doomed(run: Run) -> None:
        await run.step("broken", broken, retry=Retry(attempts=2, backoff=0.01))

    handle = await tide.enqueue("doomed")
    async with working(tide):
        with pytest.raises(RunFailed) as failed:
            await tide.runs.wait(handle.id, timeout=10)

    assert len(tries) == 2
    error = failed.value.error
    assert error["type"] == "ValueError"
    assert error["message"] == "boom number 2"
    assert "Traceback" in error["traceback"]
    assert "in broken" in error["traceback"]
    assert failed.value.run_id == handle.id
    info = await tide.runs.get(handle.id)
    assert info.status == "failed"
    assert info.error is not None and info.error["type"] == "ValueError"
    assert len(info.steps) == 1
    step = info.steps[0]
    assert (step.name, step.status, step.attempt) == ("broken", "failed", 2)
    assert step.error is not None and step.error["message"] == "boom number 2"


async def _step_completed(db: asyncpg.Connection, run_id: UUID, name: str) -> bool:
    status = await db.fetchval(
        "SELECT status FROM tidebase.steps WHERE run_id = $1 AND name = $2", run_id, name
    )
    return bool(status == "completed")


async def test_concurrent_steps_where_the_first_fails_after_the_second_completed_recover(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    """Regression: a failed step was replayed as StepFailed even when the workflow never
    went past its failure, so this run failed every attempt.

    gather(step a, step b): b (position 2) is checkpointed, then a (position 1) fails
    and ends the attempt. a's failure was never handled, so the next attempt executes a
    again instead of replaying it as StepFailed."""
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
    """Regression: a step failure the workflow had handled stayed marked as handled after
    the attempt failed later, so the next attempt replayed it instead of executing it.

    The workflow catches x's failure, goes on to y, then fails the attempt. That
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


async def test_a_step_timeout_cancels_the_async_step(tide: Tidebase) -> None:
    cancelled = anyio.Event()

    async def hangs() -> None:
        try:
            await anyio.sleep(10)
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise

    @tide.workflow("hangs", max_attempts=1)
    async def hangs_wf(run: Run) -> None:
        await run.step("hang", hangs, timeout=0.2)

    handle = await tide.enqueue("hangs")
    t0 = time.monotonic()
    async with working(tide):
        with pytest.raises(RunFailed) as failed:
            await tide.runs.wait(handle.id, timeout=10)

    assert time.monotonic() - t0 < 5
    assert cancelled.is_set()
    assert failed.value.error["type"] == "StepTimeout"
    assert "'hang'" in failed.value.error["message"]
    assert "0.2s" in failed.value.error["message"]


async def test_a_timeout_error_raised_by_a_step_is_not_reported_as_step_timeout(
    tide: Tidebase,
) -> None:
    """Regression: any TimeoutError raised inside a step that has a timeout was reported
    as StepTimeout; only the step's own deadline is one."""

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


async def test_a_step_annotated_with_a_struct_returns_that_struct_on_replay_too(
    tide: Tidebase,
) -> None:
    seen: list[object] = []
    made: list[int] = []

    def counted_report() -> Report:
        made.append(1)
        return make_report()

    @tide.workflow("typed", max_attempts=2, retry=FAST)
    async def typed(run: Run) -> Report:
        report = await run.step("report", counted_report)
        seen.append(report)
        if run.attempt == 1:
            raise RuntimeError("replay")
        assert isinstance(report, Report)
        return Report(title=report.title.upper(), pages=report.pages)

    handle = await tide.enqueue("typed")
    async with working(tide):
        output = await tide.runs.wait(handle.id, timeout=10)

    assert made == [1]
    assert seen == [Report(title="q3", pages=12), Report(title="q3", pages=12)]
    assert all(type(r) is Report for r in seen)
    # wait() decodes into the workflow's declared return type.
    assert output == Report(title="Q3", pages=12)


async def test_a_struct_annotated_input_is_decoded_into_the_struct(tide: Tidebase) -> None:
    received: list[object] = []

    @tide.workflow("order")
    async def order(run: Run, input: Order) -> int:
        received.append(input)
        received.append(run.input)
        return input.qty * 2

    handle = await tide.enqueue("order", input={"sku": "a-1", "qty": 4})
    async with working(tide):
        assert await tide.runs.wait(handle.id, timeout=10) == 8
    assert received == [Order(sku="a-1", qty=4)] * 2
    assert type(received[0]) is Order


async def test_a_step_returning_an_unencodable_value_fails_the_run_without_retries(
    tide: Tidebase,
) -> None:
    calls: list[int] = []

    def opaque() -> Opaque:
        calls.append(1)
        return Opaque()

    @tide.workflow("opaque", max_attempts=3, retry=FAST)
    async def opaque_wf(run: Run) -> None:
        await run.step("make-opaque", opaque)

    handle = await tide.enqueue("opaque")
    async with working(tide):
        with pytest.raises(RunFailed) as failed:
            await tide.runs.wait(handle.id, timeout=10)

    assert calls == [1]
    error = failed.value.error
    assert error["type"] == "SerializationError"
    assert "step 'make-opaque'" in error["message"]
    assert "Opaque" in error["message"]
    info = await tide.runs.get(handle.id)
    assert info.attempt == 1
    assert [(s.name, s.status) for s in info.steps] == [("make-opaque", "failed")]


def _undecodable() -> list[int] | tuple[int, ...]:
    """msgspec refuses this annotation (two array-like types in one union)."""
    return [1]


async def test_a_step_return_type_msgspec_cannot_decode_is_a_serialization_error(
    tide: Tidebase,
) -> None:
    """Regression: a step whose return annotation msgspec cannot build a decoder for
    failed the run with msgspec's own error instead of a SerializationError naming the
    step."""

    @tide.workflow("bad-step-type", max_attempts=1)
    async def bad_step_type(run: Run) -> None:
        await run.step("shape", _undecodable)

    with pytest.raises(RunFailed) as failed:
        await tide.run("bad-step-type")
    assert failed.value.error["type"] == "SerializationError"
    assert "step 'shape'" in failed.value.error["message"]


async def test_a_replay_that_reaches_another_step_raises_non_determinism(
    tide: Tidebase,
) -> None:
    executed: list[str] = []

    def step(name: str) -> str:
        executed.append(name)
        return name

    @tide.workflow("drift", max_attempts=3, retry=FAST)
    async def drift(run: Run) -> None:
        await run.step("a", step, "a")
        if run.attempt == 1:
            await run.step("b", step, "b")
            raise RuntimeError("fail after b")
        await run.step("c", step, "c")

    handle = await tide.enqueue("drift")
    async with working(tide):
        with pytest.raises(RunFailed) as failed:
            await tide.runs.wait(handle.id, timeout=10)

    error = failed.value.error
    assert error["type"] == "NonDeterminismError"
    assert "'b'" in error["message"]
    assert "'c'" in error["message"]
    assert executed == ["a", "b"]  # 'c' never ran
    info = await tide.runs.get(handle.id)
    assert info.status == "failed"
    assert info.attempt == 2  # permanent: the third attempt was not spent
    assert [s.name for s in info.steps] == ["a", "b"]


async def test_reserved_and_invalid_step_names_are_rejected(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    refused: dict[str, str] = {}
    called: list[str] = []

    @tide.workflow("names", max_attempts=1)
    async def names(run: Run) -> str:
        for name in ("fetch#2", "~now", "", "x" * 201, "tab\there"):
            try:
                await run.step(name, called.append, name)
            except ConfigurationError as exc:
                refused[name] = str(exc)
        return str(await run.step("fine-name", lambda: "ok"))

    run_id = await run_to_end(tide, "names")

    assert called == []
    assert set(refused) == {"fetch#2", "~now", "", "x" * 201, "tab\there"}
    assert "'fetch#2'" in refused["fetch#2"]
    assert "'~now'" in refused["~now"]
    assert (await run_row(db, run_id))["output"] == "ok"
    assert [s.name for s in (await tide.runs.get(run_id)).steps] == ["fine-name"]


async def test_a_step_name_error_fails_the_run_without_retries(tide: Tidebase) -> None:
    @tide.workflow("bad-name", max_attempts=3, retry=FAST)
    async def bad_name(run: Run) -> None:
        await run.step("with#hash", lambda: None)

    handle = await tide.enqueue("bad-name")
    async with working(tide):
        with pytest.raises(RunFailed) as failed:
            await tide.runs.wait(handle.id, timeout=10)
    assert failed.value.error["type"] == "ConfigurationError"
    assert "'with#hash'" in failed.value.error["message"]
    assert (await tide.runs.get(handle.id)).attempt == 1


async def test_now_uuid_and_random_return_the_same_values_on_replay(tide: Tidebase) -> None:
    seen: list[tuple[datetime, UUID, float]] = []

    @tide.workflow("helpers", max_attempts=2, retry=FAST)
    async def helpers(run: Run) -> None:
        values = (await run.now(), await run.uuid(), await run.random())
        seen.append(values)
        if run.attempt == 1:
            raise RuntimeError("replay")

    run_id = await run_to_end(tide, "helpers")

    assert len(seen) == 2
    assert seen[0] == seen[1]
    now, uid, rnd = seen[0]
    assert isinstance(now, datetime) and now.tzinfo is not None
    assert isinstance(uid, UUID)
    assert isinstance(rnd, float) and 0.0 <= rnd < 1.0
    info = await tide.runs.get(run_id)
    assert info.status == "completed"
    assert [s.name for s in info.steps] == ["~now", "~uuid", "~random"]


async def test_helpers_differ_between_calls_and_runs(tide: Tidebase) -> None:
    seen: list[UUID] = []

    @tide.workflow("uuids")
    async def uuids(run: Run) -> None:
        seen.append(await run.uuid())
        seen.append(await run.uuid())

    await run_to_end(tide, "uuids")
    await run_to_end(tide, "uuids")
    assert len(set(seen)) == 4
