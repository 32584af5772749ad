"""Helpers of the single-process durable-core tests: a background worker, polling with
a deadline, and a few SQL probes."""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID

import anyio
import asyncpg

from tidebase_async import Retry, Tidebase, Worker
from tidebase_async.store.sql import Q

#: Run-level and step-level retries that do not slow the tests down.
FAST = Retry(backoff=0.01, max_backoff=0.05)


@contextlib.asynccontextmanager
async def working(
    tide: Tidebase,
    *,
    concurrency: int = 4,
    poll_interval: float = 0.5,
    **options: Any,
) -> AsyncIterator[Worker]:
    """Run ``tide.work()`` in the background while inside; yields the started worker and
    cancels it on the way out. A single failure of the body is re-raised as itself (not
    wrapped in an exception group), so ``pytest.raises`` works around the block."""
    workers: list[Worker] = []
    started = anyio.Event()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                functools.partial(
                    tide.work,
                    concurrency=concurrency,
                    poll_interval=poll_interval,
                    handle_signals=False,
                    started=started,
                    worker_ready=workers.append,
                    **options,
                )
            )
            with anyio.fail_after(10):
                await started.wait()
            yield workers[0]
            tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


async def eventually(
    predicate: Callable[[], object], *, timeout: float = 10.0, what: str = "the condition"
) -> None:
    """Poll ``predicate`` (sync or async) until it is truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout:g}s")
        await anyio.sleep(0.02)


async def run_row(db: asyncpg.Connection, run_id: UUID) -> dict[str, Any]:
    """The run's row, jsonb columns decoded."""
    row = await db.fetchrow("SELECT * FROM tidebase.runs WHERE id = $1", run_id)
    assert row is not None, f"run {run_id} does not exist"
    out = dict(row)
    for key in ("input", "output", "error", "state", "metadata"):
        if out[key] is not None:
            out[key] = json.loads(out[key])
    return out


async def status_of(db: asyncpg.Connection, run_id: UUID) -> str:
    status: str = await db.fetchval("SELECT status FROM tidebase.runs WHERE id = $1", run_id)
    return status


async def event_types(db: asyncpg.Connection, run_id: UUID) -> list[str]:
    """The run's event types as readers see them (list_events: seq 1, run.created, is
    derived from the run row), checked gap-free from 1."""
    rows = await db.fetch(Q["list_events"], run_id, 0, 100_000)
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1)), "event seq has gaps"
    return [r["type"] for r in rows]


async def count_rows(db: asyncpg.Connection) -> tuple[int, int, int]:
    """(runs, steps, events) in the test database."""
    row = await db.fetchrow(
        "SELECT (SELECT count(*) FROM tidebase.runs), (SELECT count(*) FROM tidebase.steps),"
        " (SELECT count(*) FROM tidebase.events)"
    )
    return int(row[0]), int(row[1]), int(row[2])


def with_database(dsn: str, database: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path="/" + database))
