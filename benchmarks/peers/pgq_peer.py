"""pgqueuer (PyPI ``pgqueuer``) doing the comparison's work, with its recommended
settings.

- Schema: ``Queries.install()`` (durability ``durable``, its default: every table
  logged, as ours) and ``Queries.optimize_autovacuum()`` (``pgq autovac``, the first
  item of its performance checklist).
- Producer: ``Queries(AsyncpgDriver(conn)).enqueue`` on a dedicated asyncpg
  connection (asyncpg is its faster driver per its benchmark docs); a batch is one
  ``enqueue`` call with lists.
- Consumer: ``PgQueuer.from_asyncpg_connection(conn)`` on its own connection (its docs:
  "always use a direct asyncpg connection, not a pool, for the QueueManager").
  Concurrency C maps to ``max_concurrent_tasks=C`` with ``batch_size=min(10, C // 2)``
  (10 is its default; it requires ``max_concurrent_tasks >= 2 * batch_size``, so C=1
  runs with ``batch_size=1, max_concurrent_tasks=2``). ``dequeue_timeout`` stays at
  its default of 30 s, which is also the idle poll for the wake-up figure.
- Its own drain benchmark's layout (``tools/benchmark.py --strategy drain``: 5
  consumers, each on its own connection, batch 10, no task cap) is measured as an
  extra figure.
- A job counts as done when its row has left the ``pgqueuer`` table (pgqueuer
  deletes it in the buffered status-log flush); the ``pgqueuer_log`` table is then
  checked for ``count`` successful jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import msgspec

from benchmarks.common import CpuClock, connect
from benchmarks.peers.base import (
    DrainResult,
    EnqueueResult,
    Probe,
    Settings,
    Unavailable,
    WakeParams,
    WakeResult,
    background,
    require,
    wait_for_jobs,
    wait_for_zero,
    wake_samples,
)

PACKAGE = "pgqueuer"
ENTRYPOINT = "noop"
# Default table names (no PGQUEUER_PREFIX).
QUEUE_TABLE = "pgqueuer"
LOG_TABLE = "pgqueuer_log"
DEFAULT_BATCH_SIZE = 10
DEFAULT_DEQUEUE_TIMEOUT_S = 30.0


class Layout(msgspec.Struct, frozen=True, kw_only=True):
    consumers: int
    batch_size: int
    max_concurrent_tasks: int | None
    dequeue_timeout_s: float = DEFAULT_DEQUEUE_TIMEOUT_S

    def describe(self) -> str:
        cap = self.max_concurrent_tasks
        return (
            f"{self.consumers} x PgQueuer.run(batch_size={self.batch_size}, "
            f"max_concurrent_tasks={cap if cap is not None else 'None'}, "
            f"dequeue_timeout={self.dequeue_timeout_s:g}s), one asyncpg connection each"
        )


def layout_for(concurrency: int) -> Layout:
    batch = max(1, min(DEFAULT_BATCH_SIZE, concurrency // 2))
    return Layout(consumers=1, batch_size=batch, max_concurrent_tasks=max(concurrency, 2 * batch))


# tools/benchmark.py --strategy drain: 5 dequeue tasks, batch size 10.
OWN_BENCH_LAYOUT = Layout(consumers=5, batch_size=DEFAULT_BATCH_SIZE, max_concurrent_tasks=None)
# The defaults of PgQueuer.run().
IDLE_LAYOUT = Layout(consumers=1, batch_size=DEFAULT_BATCH_SIZE, max_concurrent_tasks=None)


async def _install(dsn: str) -> None:
    from pgqueuer import AsyncpgDriver, Queries

    async with connect(dsn) as conn:
        queries = Queries(AsyncpgDriver(conn))
        await queries.install()
        await queries.optimize_autovacuum()


@contextlib.asynccontextmanager
async def _producer(dsn: str) -> AsyncIterator[tuple[Any, Any]]:
    """``(Queries, the asyncpg connection under it)``."""
    from pgqueuer import AsyncpgDriver, Queries

    async with connect(dsn) as conn:
        yield Queries(AsyncpgDriver(conn)), conn


def _stopper(pgq: Any) -> Callable[[object], object]:
    """Its graceful stop: set the ``shutdown`` event (in-flight jobs finish, buffers
    flush)."""
    return lambda _: pgq.shutdown.set()


@contextlib.asynccontextmanager
async def _consumers(
    dsn: str, layout: Layout, probe: Probe
) -> AsyncIterator[list[asyncio.Task[None]]]:
    from pgqueuer import Job, PgQueuer

    async def noop(job: Job) -> None:
        probe.hit()

    async with contextlib.AsyncExitStack() as stack:
        tasks: list[asyncio.Task[None]] = []
        for _ in range(layout.consumers):
            conn = await stack.enter_async_context(connect(dsn))
            pgq = PgQueuer.from_asyncpg_connection(conn)
            pgq.entrypoint(ENTRYPOINT, accepts_context=False)(noop)
            run = pgq.run(
                batch_size=layout.batch_size,
                max_concurrent_tasks=layout.max_concurrent_tasks,
                dequeue_timeout=timedelta(seconds=layout.dequeue_timeout_s),
            )
            tasks.append(await stack.enter_async_context(background(run, _stopper(pgq))))
        yield tasks


def _settings(layout: Layout, **more: Any) -> Settings:
    return {
        "version": _version(),
        "schema": "Queries.install() (durability durable) + Queries.optimize_autovacuum()",
        "producer": "Queries(AsyncpgDriver(conn)).enqueue, dedicated asyncpg connection",
        "consumer": layout.describe(),
        **more,
    }


def _version() -> str:
    from importlib.metadata import version

    return version(PACKAGE)


class PgQueuerPeer:
    key = "pgqueuer"
    label = "pgqueuer"

    async def enqueue_one_at_a_time(self, dsn: str, count: int) -> EnqueueResult:
        require(PACKAGE)
        await _install(dsn)
        async with _producer(dsn) as (queries, _):
            t0 = time.perf_counter()
            for _ in range(count):
                await queries.enqueue(ENTRYPOINT, None)
            seconds = time.perf_counter() - t0
        return EnqueueResult(
            jobs=count,
            seconds=seconds,
            settings={"version": _version(), "call": "Queries.enqueue(entrypoint, None)"},
        )

    async def enqueue_and_drain(
        self, dsn: str, count: int, batch: int, concurrency: int
    ) -> DrainResult:
        return await self.drain_with(dsn, count, batch, layout_for(concurrency), concurrency)

    async def drain_with(
        self, dsn: str, count: int, batch: int, layout: Layout, concurrency: int
    ) -> DrainResult:
        require(PACKAGE)
        await _install(dsn)
        probe = Probe()
        timeout_s = max(60.0, count / 50)
        async with _producer(dsn) as (queries, conn):
            t0 = time.perf_counter()
            for start in range(0, count, batch):
                n = min(batch, count - start)
                await queries.enqueue([ENTRYPOINT] * n, [None] * n, [0] * n)
            enqueue_s = time.perf_counter() - t0
            t_start = time.perf_counter()
            cpu = CpuClock()
            async with _consumers(dsn, layout, probe) as workers:
                await wait_for_jobs(probe, count, workers, timeout_s=timeout_s)
                t_done = await wait_for_zero(
                    conn,
                    f"SELECT count(*) FROM {QUEUE_TABLE}",
                    timeout_s=timeout_s,
                    what="jobs in the queue table",
                )
                cpu_client_s, cpu_server_s = cpu.read()
            succeeded = await conn.fetchval(
                f"SELECT count(*) FROM {LOG_TABLE} WHERE status = 'successful'"
            )
        if succeeded != count or probe.first is None or probe.last is None:
            raise Unavailable(f"expected {count} successful jobs in {LOG_TABLE}, {succeeded}")
        return DrainResult(
            jobs=count,
            concurrency=concurrency,
            enqueue_s=enqueue_s,
            startup_s=probe.first - t_start,
            drain_s=t_done - probe.first,
            handlers_s=probe.last - probe.first,
            cpu_client_s=cpu_client_s,
            cpu_server_s=cpu_server_s,
            settings=_settings(layout, enqueue=f"Queries.enqueue with lists of {batch:,}"),
        )

    async def wakeup(self, dsn: str, params: WakeParams) -> WakeResult:
        require(PACKAGE)
        await _install(dsn)
        layout = msgspec.structs.replace(IDLE_LAYOUT, dequeue_timeout_s=params.poll_interval_s)
        probe = Probe()

        async with _producer(dsn) as (queries, _), _consumers(dsn, layout, probe) as workers:

            async def enqueue() -> object:
                return await queries.enqueue(ENTRYPOINT, None)

            latencies = await wake_samples(probe, enqueue, params, workers)
        return WakeResult(
            latencies_ms=latencies,
            settings=_settings(layout, wakes_on="NOTIFY from its insert trigger"),
        )
