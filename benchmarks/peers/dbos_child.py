"""One DBOS phase in a process of its own: ``python -m benchmarks.peers.dbos_child``.

DBOS is a process-wide singleton (``DBOS(config=...)``, ``DBOS.launch()``,
``DBOS.destroy()``), so ``benchmarks/peers/dbos_peer.py`` runs each measurement here, in
a fresh interpreter on a fresh database. The request comes as one JSON object on stdin
(``Request``); the answer is one line on stdout, ``RESULT {"ok": ...}`` or
``RESULT {"error": "..."}``.

The workflows are async ``@DBOS.workflow()`` functions calling async ``@DBOS.step()``
no-ops, as DBOS's docs write them; ``DBOS.launch()`` is called inside the running event
loop, so DBOS runs them on that loop (checked: steps start on the main thread), and the
steps hit a ``Probe`` directly. Queues are DBOS's only way to run workflows in the
background: ``DBOS.register_queue_async(name, worker_concurrency=C,
polling_interval_sec=P)`` persists the queue (in 3.4.0 every queue is database-backed:
its worker thread re-reads the queue's row before each poll) and its worker thread
claims up to C - running workflows every P seconds (+-5% jitter). DBOS has no
LISTEN/NOTIFY path for queues (``use_listen_notify`` serves ``recv``, ``get_event`` and streams), so
P bounds both the idle wake-up and how soon freed slots refill.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable, Coroutine
from importlib.metadata import version
from typing import Any

import anyio
import msgspec
from dbos import DBOS, DBOSConfig

from benchmarks.common import connect
from benchmarks.peers.base import (
    DrainResult,
    EnqueueResult,
    Probe,
    Settings,
    Unavailable,
    WakeResult,
    wait_for_zero,
    wake_samples,
)
from benchmarks.peers.dbos_peer import RESULT_PREFIX, Drain, Enqueue, Request, Wake

# Workflows are enqueued here first and drained once the queue is registered.
QUEUE = "bench"
APP_NAME = "tidebase-bench"
# Never registered: enqueue one at a time writes here, and no worker polls it.
IDLE_QUEUE = "bench-unregistered"

UNFINISHED = "SELECT count(*) FROM dbos.workflow_status WHERE status IN ('ENQUEUED', 'PENDING')"

PROBE = Probe()


@DBOS.step()
async def noop() -> None:
    PROBE.hit()


@DBOS.workflow()
async def three_steps() -> None:
    for _ in range(3):
        await noop()


@DBOS.workflow()
async def ten_steps() -> None:
    for _ in range(10):
        await noop()


@DBOS.workflow()
async def wake_probe() -> None:
    await noop()


WORKFLOWS = {3: three_steps, 10: ten_steps}


def config(dsn: str) -> DBOSConfig:
    """The DBOSConfig: DBOS's defaults (a 20-connection system database pool,
    LISTEN/NOTIFY notifications, durable commits: DBOS never lowers
    ``synchronous_commit``); only its log level lowered to WARNING."""
    return {"name": APP_NAME, "system_database_url": dsn, "log_level": "WARNING"}


def settings() -> Settings:
    return {
        "dbos": version("dbos"),
        "config": {"name": APP_NAME, "log_level": "WARNING", "sys_db_pool_size": "20 (default)"},
        "workflows": "async @DBOS.workflow, async @DBOS.step no-ops, run on the launching loop",
    }


def _launch(dsn: str) -> None:
    DBOS(config=config(dsn))
    DBOS.launch()


async def _enqueue(
    queue: str, workflow: Callable[[], Coroutine[Any, Any, None]], count: int
) -> float:
    t0 = time.perf_counter()
    for _ in range(count):
        await DBOS.enqueue_workflow_async(queue, workflow)
    return time.perf_counter() - t0


async def enqueue(req: Enqueue) -> EnqueueResult:
    seconds = await _enqueue(IDLE_QUEUE, WORKFLOWS[req.steps], req.count)
    return EnqueueResult(
        jobs=req.count,
        seconds=seconds,
        settings=settings()
        | {"call": f"await DBOS.enqueue_workflow_async(queue, {req.steps}-step workflow)"},
    )


async def _check(dsn: str, count: int, steps: int) -> None:
    async with connect(dsn) as conn:
        rows = await conn.fetch("SELECT status, count(*) FROM dbos.workflow_status GROUP BY 1")
        outputs = await conn.fetchval("SELECT count(*) FROM dbos.operation_outputs")
    statuses = {str(r[0]): int(r[1]) for r in rows}
    if statuses != {"SUCCESS": count} or outputs != count * steps:
        raise Unavailable(
            f"expected {count} SUCCESS workflows and {count * steps} step outputs, "
            f"got {statuses} and {outputs}"
        )


async def drain(req: Drain) -> DrainResult:
    enqueue_s = await _enqueue(QUEUE, WORKFLOWS[req.steps], req.count)
    async with connect(req.dsn) as conn:
        t_start = time.perf_counter()
        await DBOS.register_queue_async(
            QUEUE, worker_concurrency=req.concurrency, polling_interval_sec=req.poll_s
        )
        t_done = await wait_for_zero(
            conn,
            UNFINISHED,
            timeout_s=req.timeout_s,
            what="workflows",
        )
    await _check(req.dsn, req.count, req.steps)
    if PROBE.first is None or PROBE.last is None:
        raise Unavailable("no step started")
    return DrainResult(
        jobs=req.count,
        concurrency=req.concurrency,
        enqueue_s=enqueue_s,
        startup_s=PROBE.first - t_start,
        drain_s=t_done - PROBE.first,
        handlers_s=PROBE.last - PROBE.first,
        settings=settings()
        | {
            "enqueue": "DBOS.enqueue_workflow_async one at a time, before the queue exists",
            "queue": f"DBOS.register_queue_async(worker_concurrency={req.concurrency}, "
            f"polling_interval_sec={req.poll_s:g})",
            "done": "no workflow_status ENQUEUED or PENDING (polled every 2 ms)",
        },
    )


async def wake(req: Wake) -> WakeResult:
    await DBOS.register_queue_async(
        QUEUE, worker_concurrency=req.params.concurrency, polling_interval_sec=req.poll_s
    )

    async def one() -> object:
        return await DBOS.enqueue_workflow_async(QUEUE, wake_probe)

    latencies = await wake_samples(PROBE, one, req.params)
    # Let the last sample's workflow finish: DBOS.destroy() would cancel it.
    async with connect(req.dsn) as conn:
        await wait_for_zero(
            conn, UNFINISHED, timeout_s=req.params.sample_timeout_s, what="workflows"
        )
    return WakeResult(
        latencies_ms=latencies,
        settings=settings()
        | {
            "queue": f"DBOS.register_queue_async(worker_concurrency={req.params.concurrency}, "
            f"polling_interval_sec={req.poll_s:g})",
            "measured_to": "first step start",
        },
    )


async def run(req: Request) -> DrainResult | EnqueueResult | WakeResult:
    _launch(req.dsn)
    try:
        if isinstance(req, Enqueue):
            return await enqueue(req)
        if isinstance(req, Drain):
            return await drain(req)
        return await wake(req)
    finally:
        DBOS.destroy()


def main() -> int:
    req = msgspec.json.decode(sys.stdin.buffer.read(), type=Request)
    answer: dict[str, Any]
    try:
        answer = {"ok": anyio.run(run, req)}
    except Exception as exc:
        traceback.print_exc()
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        answer = {"error": f"{type(exc).__name__}: {text}" if text else type(exc).__name__}
    sys.stdout.write(RESULT_PREFIX + msgspec.json.encode(answer).decode() + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
