"""Wake-ups travel by NOTIFY (polling is only the floor), and workers survive losing
their connections: the LISTEN one, or all of them at once mid-load.

Workers run in this process (``tide.work`` in a task group) on a Tidebase of their own,
so that killing their connections leaves the test's ``db`` connection alone.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import anyio
import asyncpg

from tests.integration import procs
from tidebase_async import Run, RunSpec, Tidebase

# An idle worker that sees a new run within this time was woken by NOTIFY: with
# poll_interval=30 the polling floor alone would take up to 30 s.
WAKE_LIMIT_S = 1.0


@asynccontextmanager
async def working(worker: Tidebase, **options: Any) -> AsyncIterator[Tidebase]:
    """Run ``worker.work(**options)`` in the background until the block ends."""
    ready = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            functools.partial(worker.work, handle_signals=False, started=ready, **options)
        )
        with anyio.fail_after(10):
            await ready.wait()
        yield worker
        tg.cancel_scope.cancel()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Pinger:
    """A worker Tidebase with workflow ``ping``, recording when its first step starts."""

    def __init__(self, dsn: str) -> None:
        self.tide = Tidebase(dsn, pool_size=4)
        self.first_step_at: dict[UUID, float] = {}

        @self.tide.workflow("ping")
        async def ping(run: Run) -> str:
            async def first() -> str:
                self.first_step_at.setdefault(run.id, time.monotonic())
                return "pong"

            return str(await run.step("first", first))

    async def latencies(self, client: Tidebase, db: asyncpg.Connection, n: int) -> list[float]:
        """Enqueue ``n`` runs one after the other (the worker idle each time) and return
        the enqueue -> first step start latency of each."""
        out: list[float] = []
        for _ in range(n):
            enqueued = time.monotonic()
            handle = await client.enqueue("ping")

            async def started(rid: UUID = handle.id) -> bool:
                return rid in self.first_step_at

            await procs.eventually(started, timeout=5, what="the first step", interval=0.002)
            out.append(self.first_step_at[handle.id] - enqueued)
            await procs.wait_status(db, handle.id, "completed", timeout=5)
        return out


def report(label: str, latencies: list[float]) -> str:
    ms = [x * 1000 for x in latencies]
    return (
        f"{label}: n={len(ms)} p50={statistics.median(ms):.1f}ms "
        f"p99={percentile(ms, 0.99):.1f}ms max={max(ms):.1f}ms"
    )


async def test_idle_worker_is_woken_by_notify_within_milliseconds(
    tide: Tidebase, db: asyncpg.Connection, dsn: str
) -> None:
    pinger = Pinger(dsn)
    async with working(pinger.tide, poll_interval=30, concurrency=4):
        latencies = await pinger.latencies(tide, db, 20)
    print("\n" + report("wake-up via NOTIFY", latencies))
    assert max(latencies) < WAKE_LIMIT_S, latencies


async def test_wakeups_resume_after_the_listener_connection_is_killed(
    tide: Tidebase, db: asyncpg.Connection, dsn: str
) -> None:
    pinger = Pinger(dsn)
    async with working(pinger.tide, poll_interval=30, concurrency=4):
        listener = pinger.tide.listener
        assert listener is not None
        assert max(await pinger.latencies(tide, db, 3)) < WAKE_LIMIT_S
        assert listener.connections == 1
        old_pid = listener.backend_pid()
        assert old_pid is not None
        assert await db.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE pid = $1 "
            "AND application_name = 'tidebase-listener' AND datname = current_database()",
            old_pid,
        )
        assert await db.fetchval("SELECT pg_terminate_backend($1)", old_pid)

        async def reconnected() -> bool:
            return listener.connections >= 2 and listener.backend_pid() not in (None, old_pid)

        await procs.eventually(reconnected, timeout=10, what="the listener to reconnect")
        latencies = await pinger.latencies(tide, db, 10)
    print("\n" + report("wake-up after listener reconnect", latencies))
    assert max(latencies) < WAKE_LIMIT_S, latencies


async def test_all_runs_complete_when_every_connection_is_killed_mid_load(
    tide: Tidebase, db: asyncpg.Connection, dsn: str
) -> None:
    workers = [Tidebase(dsn, pool_size=6) for _ in range(2)]
    for worker in workers:

        @worker.workflow("short")
        async def short(run: Run, input: int) -> int:
            async def half(x: int) -> int:
                await anyio.sleep(0.02)
                return x * 2

            a = await run.step("one", half, input)
            return int(await run.step("two", half, a))

    handles = await tide.enqueue_many([RunSpec(workflow="short", input=i) for i in range(100)])
    ids = [h.id for h in handles]

    async def completed() -> int:
        n: int = await db.fetchval(
            "SELECT count(*) FROM tidebase.runs WHERE id = ANY($1) AND status = 'completed'",
            ids,
        )
        return n

    options: dict[str, Any] = {
        "concurrency": 4,
        "lease": 2.0,
        "maintenance_interval": 0.2,
        "poll_interval": 1.0,
    }
    async with working(workers[0], **options), working(workers[1], **options):
        await procs.eventually(
            lambda: _at_least(completed, 20), timeout=15, what="20 runs to complete"
        )
        killed = await db.fetchval(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        done_at_kill = await completed()
        # Both workers' pools and listeners, and the client's: at least 2 each per worker.
        assert killed >= 4, killed
        assert done_at_kill < 100, "the kill came too late to hit in-flight runs"
        await procs.eventually(
            lambda: _at_least(completed, 100), timeout=30, what="all 100 runs to complete"
        )

    outputs = await db.fetch(
        "SELECT input::text::int AS i, output::text::int AS o "
        "FROM tidebase.runs WHERE id = ANY($1)",
        ids,
    )
    assert sorted((r["i"], r["o"]) for r in outputs) == [(i, i * 4) for i in range(100)]
    steps = await db.fetchval(
        "SELECT count(*) FROM tidebase.steps WHERE run_id = ANY($1) AND status = 'completed'", ids
    )
    assert steps == 200
    summary = await db.fetch(
        "SELECT type, count(*) AS n FROM tidebase.events WHERE run_id = ANY($1) "
        "AND type IN ('run.requeued', 'run.released', 'run.retrying') GROUP BY type",
        ids,
    )
    print(
        f"\nkilled {killed} backends with {done_at_kill}/100 runs done; "
        f"recoveries: {dict((r['type'], r['n']) for r in summary)}"
    )


async def _at_least(probe: Any, n: int) -> bool:
    return bool(await probe() >= n)
