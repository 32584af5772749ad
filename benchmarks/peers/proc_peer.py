"""procrastinate (PyPI ``procrastinate``) doing the comparison's work, with its
recommended settings.

- Schema: ``app.schema_manager.apply_schema_async()``.
- Connector: ``PsycopgConnector`` (its async connector, on psycopg's C
  implementation ``psycopg[binary]``). Pool sized by its docs ("Mind the size of your
  PostgreSQL pool": the shorter the jobs, the more the pool needs as many connections
  as the concurrency, plus one): ``min_size = max_size = concurrency + 1``, capped at
  ``POOL_CAP`` because the server allows 100 connections.
- Producer: ``task.defer_async()`` one at a time, ``task.batch_defer_async`` for a
  batch (one call per 1,000 jobs), through the same app.
- Worker: ``app.run_worker_async(concurrency=C, listen_notify=True,
  install_signal_handlers=False)`` as an asyncio task, stopped by cancelling it (its
  documented graceful stop). ``delete_jobs`` stays ``never`` (the default; ours keeps
  completed runs too). For the wake-up figure ``fetch_job_polling_interval`` is the
  long poll; for drains it stays at its default (5 s; jobs are always there).
- A job counts as done when no job is ``todo`` or ``doing``; then all ``count`` jobs
  must be ``succeeded``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from benchmarks.common import connect
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

PACKAGE = "procrastinate"
TASK = "noop"
POOL_CAP = 64
DEFAULT_FETCH_POLLING_S = 5.0


def pool_size(concurrency: int) -> int:
    return min(concurrency + 1, POOL_CAP)


def _version() -> str:
    from importlib.metadata import version

    return version(PACKAGE)


@contextlib.asynccontextmanager
async def _app(dsn: str, pool: int, probe: Probe) -> AsyncIterator[tuple[Any, Any]]:
    """An open app with the schema applied: ``(app, the noop task)``."""
    import procrastinate

    connector = procrastinate.PsycopgConnector(conninfo=dsn, min_size=pool, max_size=pool)
    app = procrastinate.App(connector=connector)

    async def noop() -> None:
        probe.hit()

    task = app.task(name=TASK)(noop)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        yield app, task


@contextlib.asynccontextmanager
async def _worker(
    app: Any, concurrency: int, polling_s: float
) -> AsyncIterator[asyncio.Task[None]]:
    run = app.run_worker_async(
        concurrency=concurrency,
        listen_notify=True,
        fetch_job_polling_interval=polling_s,
        install_signal_handlers=False,
    )
    async with background(run, lambda task: task.cancel()) as task:
        yield task


def _settings(concurrency: int, polling_s: float, **more: Any) -> Settings:
    return {
        "version": _version(),
        "connector": f"PsycopgConnector(min_size=max_size={pool_size(concurrency)})",
        "worker": f"run_worker_async(concurrency={concurrency}, listen_notify=True, "
        f"fetch_job_polling_interval={polling_s:g}, delete_jobs='never')",
        **more,
    }


class ProcrastinatePeer:
    key = "procrastinate"
    label = "procrastinate"

    async def enqueue_one_at_a_time(self, dsn: str, count: int) -> EnqueueResult:
        require(PACKAGE)
        async with _app(dsn, pool_size(1), Probe()) as (_, task):
            t0 = time.perf_counter()
            for _ in range(count):
                await task.defer_async()
            seconds = time.perf_counter() - t0
        return EnqueueResult(
            jobs=count, seconds=seconds, settings={"version": _version(), "call": "defer_async()"}
        )

    async def enqueue_and_drain(
        self, dsn: str, count: int, batch: int, concurrency: int
    ) -> DrainResult:
        require(PACKAGE)
        probe = Probe()
        timeout_s = max(60.0, count / 20)
        no_args: dict[str, Any] = {}
        async with _app(dsn, pool_size(concurrency), probe) as (app, task), connect(dsn) as conn:
            t0 = time.perf_counter()
            for start in range(0, count, batch):
                await task.batch_defer_async(*[no_args] * min(batch, count - start))
            enqueue_s = time.perf_counter() - t0
            t_start = time.perf_counter()
            async with _worker(app, concurrency, DEFAULT_FETCH_POLLING_S) as worker:
                await wait_for_jobs(probe, count, [worker], timeout_s=timeout_s)
                t_done = await wait_for_zero(
                    conn,
                    "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')",
                    timeout_s=timeout_s,
                    what="jobs todo or doing",
                )
            succeeded = await conn.fetchval(
                "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
            )
        if succeeded != count or probe.first is None or probe.last is None:
            raise Unavailable(f"expected {count} succeeded jobs, {succeeded}")
        return DrainResult(
            jobs=count,
            concurrency=concurrency,
            enqueue_s=enqueue_s,
            startup_s=probe.first - t_start,
            drain_s=t_done - probe.first,
            handlers_s=probe.last - probe.first,
            settings=_settings(
                concurrency, DEFAULT_FETCH_POLLING_S, enqueue=f"batch_defer_async of {batch:,}"
            ),
        )

    async def wakeup(self, dsn: str, params: WakeParams) -> WakeResult:
        require(PACKAGE)
        probe = Probe()
        polling_s = params.poll_interval_s
        async with (
            _app(dsn, pool_size(params.concurrency), probe) as (app, task),
            _worker(app, params.concurrency, polling_s) as worker,
        ):

            async def enqueue() -> object:
                return await task.defer_async()

            latencies = await wake_samples(probe, enqueue, params, [worker])
        return WakeResult(
            latencies_ms=latencies,
            settings=_settings(
                params.concurrency, polling_s, wakes_on="NOTIFY from its insert trigger"
            ),
        )
