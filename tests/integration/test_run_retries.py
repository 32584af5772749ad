"""Run-level retries: attempts, backoff, events."""

from __future__ import annotations

import json

import asyncpg
import pytest

from tests.integration.core_support import FAST, event_types, eventually, run_row, working
from tidebase_async import Retry, Run, RunFailed, StoreError, Tidebase


async def test_a_run_that_fails_twice_completes_on_its_third_attempt(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    attempts: list[int] = []

    @tide.workflow("third-time", max_attempts=3, retry=FAST)
    async def third_time(run: Run) -> int:
        attempts.append(run.attempt)
        if run.attempt < 3:
            raise RuntimeError(f"attempt {run.attempt} failed")
        return run.attempt

    handle = await tide.enqueue("third-time")
    async with working(tide):
        assert await tide.runs.wait(handle.id, timeout=10) == 3

    assert attempts == [1, 2, 3]
    row = await run_row(db, handle.id)
    assert (row["status"], row["attempt"]) == ("completed", 3)
    types = await event_types(db, handle.id)
    assert types == [
        "run.created",
        "run.claimed",
        "run.retrying",
        "run.claimed",
        "run.retrying",
        "run.claimed",
        "run.completed",
    ]
    retrying = await db.fetch(
        "SELECT data FROM tidebase.events WHERE run_id = $1 AND type = 'run.retrying' ORDER BY seq",
        handle.id,
    )
    data = [json.loads(r["data"]) for r in retrying]
    assert [(d["type"], d["message"], d["attempt"]) for d in data] == [
        ("RuntimeError", "attempt 1 failed", 1),
        ("RuntimeError", "attempt 2 failed", 2),
    ]
    assert all(0 <= d["retry_in"] <= 0.05 for d in data)


async def test_a_run_fails_when_its_attempts_are_spent(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    attempts: list[int] = []

    @tide.workflow("two-tries", max_attempts=2, retry=FAST)
    async def two_tries(run: Run) -> None:
        attempts.append(run.attempt)
        raise RuntimeError(f"attempt {run.attempt} failed")

    handle = await tide.enqueue("two-tries")
    async with working(tide):
        with pytest.raises(RunFailed) as failed:
            await tide.runs.wait(handle.id, timeout=10)

    assert attempts == [1, 2]
    assert failed.value.error["message"] == "attempt 2 failed"
    row = await run_row(db, handle.id)
    assert (row["status"], row["attempt"]) == ("failed", 2)
    assert row["finished_at"] is not None
    types = await event_types(db, handle.id)
    assert types.count("run.retrying") == 1
    assert types[-1] == "run.failed"


async def test_a_store_error_raised_by_workflow_code_spends_attempts_and_fails(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    """Regression: a StoreError raised by the workflow's own code was taken for the store
    failing, so the claim was handed back and the run executed again in a loop instead of
    spending its attempts and failing."""
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


async def test_max_attempts_given_at_enqueue_overrides_the_workflow(tide: Tidebase) -> None:
    @tide.workflow("overridden", max_attempts=1, retry=FAST)
    async def overridden(run: Run) -> int:
        if run.attempt < 3:
            raise RuntimeError("not yet")
        return run.attempt

    handle = await tide.enqueue("overridden", max_attempts=3)
    async with working(tide):
        assert await tide.runs.wait(handle.id, timeout=10) == 3


async def test_the_retry_backoff_delays_the_next_attempt(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    @tide.workflow("slow-retry", max_attempts=2, retry=Retry(backoff=60, jitter=False))
    async def slow_retry(run: Run) -> None:
        raise RuntimeError("try later")

    handle = await tide.enqueue("slow-retry")
    async with working(tide):

        async def requeued() -> bool:
            row = await run_row(db, handle.id)
            return bool(row["status"] == "queued" and row["attempt"] == 1)

        await eventually(requeued, what="the run to be requeued after attempt 1")
    due_in = await db.fetchval(
        "SELECT extract(epoch FROM run_at - now()) FROM tidebase.runs WHERE id = $1", handle.id
    )
    assert 55 <= float(due_in) <= 60


async def test_a_run_on_a_very_high_attempt_is_retried_with_the_capped_backoff(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    attempts: list[int] = []

    @tide.workflow("persistent", max_attempts=5000, retry=FAST)
    async def persistent(run: Run) -> int:
        attempts.append(run.attempt)
        if run.attempt == 1501:
            raise RuntimeError("one more time")
        return run.attempt

    handle = await tide.enqueue("persistent")
    await db.execute("UPDATE tidebase.runs SET attempt = 1500 WHERE id = $1", handle.id)
    async with working(tide):
        assert await tide.runs.wait(handle.id, timeout=10) == 1502
    assert attempts == [1501, 1502]
