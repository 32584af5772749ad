from __future__ import annotations

import anyio
import asyncpg

from tidebase_async import Run, Tidebase


async def test_enqueued_run_completes_on_a_worker(tide: Tidebase, db: asyncpg.Connection) -> None:
    @tide.workflow("double")
    async def double(run: Run, input: int) -> int:
        return int(await run.step("double", lambda: input * 2))

    handle = await tide.enqueue("double", input=21)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: tide.work(concurrency=2, handle_signals=False))
        assert await tide.runs.wait(handle.id, timeout=10) == 42
        tg.cancel_scope.cancel()
    assert await db.fetchval("SELECT status FROM tidebase.runs WHERE id = $1", handle.id) == (
        "completed"
    )
