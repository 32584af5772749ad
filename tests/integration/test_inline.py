"""tide.run: inline execution in this process, durable like a queued run."""

from __future__ import annotations

import asyncio
import uuid

import anyio
import asyncpg
import pytest

from tests.integration.core_support import FAST, count_rows, event_types, run_row
from tidebase_async import Run, RunFailed, Tidebase, WorkflowNotFound


async def test_an_inline_run_returns_its_output_and_is_recorded_as_completed(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    @tide.workflow("double")
    async def double(run: Run, input: int) -> int:
        return int(await run.step("double", lambda: input * 2))

    assert await tide.run("double", input=21) == 42

    page = await tide.runs.list(workflow="double")
    assert len(page.items) == 1
    info = await tide.runs.get(page.items[0].id)
    assert info.status == "completed"
    assert info.output == 42
    assert info.input == 21
    assert info.attempt == 1
    assert [(s.name, s.output) for s in info.steps] == [("double", 42)]
    assert info.started_at is not None and info.finished_at is not None
    row = await run_row(db, info.id)
    assert row["inline"] is True
    assert row["lease_owner"] is None
    assert await event_types(db, info.id) == [
        "run.created",
        "run.claimed",
        "step.completed",
        "run.completed",
    ]


async def test_an_inline_run_that_fails_raises_run_failed(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    @tide.workflow("explodes", max_attempts=1)
    async def explodes(run: Run) -> None:
        raise KeyError("missing")

    with pytest.raises(RunFailed) as failed:
        await tide.run("explodes")

    assert failed.value.error["type"] == "KeyError"
    assert "missing" in failed.value.error["message"]
    assert (await run_row(db, failed.value.run_id))["status"] == "failed"


async def test_an_inline_run_retries_in_place(tide: Tidebase) -> None:
    attempts: list[int] = []

    @tide.workflow("second-time", max_attempts=2, retry=FAST)
    async def second_time(run: Run) -> int:
        attempts.append(run.attempt)
        if run.attempt == 1:
            raise RuntimeError("first attempt fails")
        return run.attempt

    assert await tide.run("second-time") == 2
    assert attempts == [1, 2]


async def test_an_inline_run_of_a_completed_run_id_returns_the_stored_output(
    tide: Tidebase,
) -> None:
    calls: list[int] = []

    @tide.workflow("once")
    async def once(run: Run, input: int) -> int:
        calls.append(input)
        return input + 1

    run_id = uuid.uuid4()
    assert await tide.run("once", input=1, run_id=run_id) == 2
    assert await tide.run("once", input=1, run_id=run_id) == 2
    assert await tide.run("once", input=1, run_id=str(run_id)) == 2
    assert calls == [1]
    assert (await tide.runs.get(run_id)).id == run_id


async def test_concurrent_inline_runs_with_one_run_id_execute_it_once(tide: Tidebase) -> None:
    calls: list[int] = []

    @tide.workflow("shared")
    async def shared(run: Run, input: int) -> int:
        calls.append(input)
        await anyio.sleep(0.2)
        return input * 10

    # Warm the pool so that every call checks for the run at the same moment.
    await asyncio.gather(*(tide.runs.list() for _ in range(8)))
    run_id = uuid.uuid4()
    outputs = await asyncio.gather(*(tide.run("shared", input=4, run_id=run_id) for _ in range(5)))

    assert outputs == [40] * 5
    assert calls == [4]
    assert (await tide.runs.get(run_id)).status == "completed"


async def test_an_inline_run_executes_a_queued_run_in_place(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    @tide.workflow("here")
    async def here(run: Run, input: int) -> int:
        return input * 3

    handle = await tide.enqueue("here", input=5)
    assert await tide.run("here", run_id=handle.id) == 15
    row = await run_row(db, handle.id)
    assert (row["status"], row["output"], row["attempt"]) == ("completed", 15, 1)


async def test_an_inline_run_of_an_unregistered_workflow_writes_nothing(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    with pytest.raises(WorkflowNotFound, match="'ghost'"):
        await tide.run("ghost", input=1)
    assert await count_rows(db) == (0, 0, 0)
