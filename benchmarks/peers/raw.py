"""The practical limit: a minimal job queue in raw asyncpg.

One table, ``raw_jobs``, with a partial index on queued ids. A drain runs T tasks,
each on its own connection, each looping: claim up to B queued jobs with
``UPDATE ... FROM (SELECT ... FOR UPDATE SKIP LOCKED LIMIT B)`` (committed: the
claim is durable), run the no-op, mark them done with one ``UPDATE`` (committed).
A task stops when a claim finds nothing. Concurrency C maps to ``T = min(C,
MAX_TASKS)`` and ``B = min(10, C)`` (the issue's limit: 16 tasks, batches of 10).

Enqueue is a plain ``INSERT`` (one row, or ``unnest`` of a batch). The wake-up is the
shortest path a Postgres queue can take: one statement inserts a job and notifies
(committed, flushed), the LISTEN callback on a second connection triggers the claim
``UPDATE`` on a third, and the job "starts" when the claim returns its row.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import anyio

from benchmarks.common import CpuClock, connect
from benchmarks.peers.base import (
    DrainResult,
    EnqueueResult,
    Probe,
    Unavailable,
    WakeParams,
    WakeResult,
    wake_samples,
)

MAX_TASKS = 32
CLAIM_BATCH = 10
CHANNEL = "raw_bench_wake"

SCHEMA = """
CREATE TABLE raw_jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payload jsonb,
    status smallint NOT NULL DEFAULT 0,  -- 0 queued, 1 running, 2 done
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz
);
CREATE INDEX raw_jobs_queued ON raw_jobs (id) WHERE status = 0;
"""
INSERT_ONE = "INSERT INTO raw_jobs (payload) VALUES ($1::jsonb)"
INSERT_MANY = "INSERT INTO raw_jobs (payload) SELECT unnest($1::jsonb[])"
CLAIM = """
UPDATE raw_jobs AS j SET status = 1, started_at = now()
FROM (
    SELECT id FROM raw_jobs WHERE status = 0 ORDER BY id
    LIMIT $1 FOR UPDATE SKIP LOCKED
) AS c
WHERE j.id = c.id
RETURNING j.id, j.payload
"""
DONE = "UPDATE raw_jobs SET status = 2, finished_at = now() WHERE id = ANY($1::bigint[])"
INSERT_NOTIFY = f"""
WITH j AS (INSERT INTO raw_jobs (payload) VALUES (NULL) RETURNING id)
SELECT pg_notify('{CHANNEL}', id::text) FROM j
"""


def layout_for(concurrency: int) -> tuple[int, int]:
    """``(tasks, claim batch)`` for a concurrency."""
    return min(concurrency, MAX_TASKS), min(CLAIM_BATCH, concurrency)


class _Drain:
    def __init__(self) -> None:
        self.first: float | None = None
        self.last_start: float | None = None
        self.last_done: float | None = None
        self.done = 0


async def _drainer(conn: Any, batch: int, state: _Drain) -> None:
    while True:
        rows = await conn.fetch(CLAIM, batch)
        if not rows:
            return
        now = time.perf_counter()
        if state.first is None:
            state.first = now
        state.last_start = now
        # The jobs are no-ops.
        await conn.execute(DONE, [row[0] for row in rows])
        state.done += len(rows)
        state.last_done = time.perf_counter()


class Raw:
    key = "raw"
    label = "raw asyncpg"

    async def enqueue_one_at_a_time(self, dsn: str, count: int) -> EnqueueResult:
        async with connect(dsn) as conn:
            await conn.execute(SCHEMA)
            t0 = time.perf_counter()
            for _ in range(count):
                await conn.execute(INSERT_ONE, None)
            seconds = time.perf_counter() - t0
        return EnqueueResult(
            jobs=count, seconds=seconds, settings={"call": "INSERT one row, one connection"}
        )

    async def enqueue_and_drain(
        self, dsn: str, count: int, batch: int, concurrency: int
    ) -> DrainResult:
        tasks, claim = layout_for(concurrency)
        async with connect(dsn) as conn:
            await conn.execute(SCHEMA)
            t0 = time.perf_counter()
            for start in range(0, count, batch):
                await conn.execute(INSERT_MANY, [None] * min(batch, count - start))
            enqueue_s = time.perf_counter() - t0
            state = _Drain()
            async with contextlib.AsyncExitStack() as stack:
                conns = [await stack.enter_async_context(connect(dsn)) for _ in range(tasks)]
                t_start = time.perf_counter()
                cpu = CpuClock()
                async with anyio.create_task_group() as tg:
                    for c in conns:
                        tg.start_soon(_drainer, c, claim, state)
                cpu_client_s, cpu_server_s = cpu.read()
            done = await conn.fetchval("SELECT count(*) FROM raw_jobs WHERE status = 2")
        if done != count or state.first is None or state.last_done is None:
            raise Unavailable(f"expected {count} done jobs, {done}")
        return DrainResult(
            jobs=count,
            concurrency=concurrency,
            enqueue_s=enqueue_s,
            startup_s=state.first - t_start,
            drain_s=state.last_done - state.first,
            handlers_s=None if state.last_start is None else state.last_start - state.first,
            cpu_client_s=cpu_client_s,
            cpu_server_s=cpu_server_s,
            settings={
                "enqueue": f"INSERT ... SELECT unnest($1::jsonb[]) of {batch:,}",
                "drain": f"{tasks} tasks x own connection, claim batches of {claim}, "
                "UPDATE ... FOR UPDATE SKIP LOCKED then UPDATE done",
            },
        )

    async def wakeup(self, dsn: str, params: WakeParams) -> WakeResult:
        probe = Probe()
        wake = anyio.Event()

        def on_notify(conn: Any, pid: int, channel: str, payload: str) -> None:
            wake.set()

        async with connect(dsn) as listener, connect(dsn) as sender, connect(dsn) as worker:
            await sender.execute(SCHEMA)
            await listener.add_listener(CHANNEL, on_notify)

            async def work() -> None:
                nonlocal wake
                while True:
                    await wake.wait()
                    wake = anyio.Event()
                    rows = await worker.fetch(CLAIM, 1)
                    if rows:
                        probe.hit()
                        await worker.execute(DONE, [rows[0][0]])

            async def enqueue() -> object:
                return await sender.execute(INSERT_NOTIFY)

            async with anyio.create_task_group() as tg:
                tg.start_soon(work)
                latencies = await wake_samples(probe, enqueue, params)
                tg.cancel_scope.cancel()
        return WakeResult(
            latencies_ms=latencies,
            settings={
                "measured": "INSERT + pg_notify in one committed statement, LISTEN callback "
                "on a second connection, claim UPDATE ... SKIP LOCKED on a third"
            },
        )
