"""Failover to a promoted synchronous standby, with a multi-host DSN
(``target_session_attrs=read-write``): worker processes under load, the primary
crashed (immediate shutdown) and the standby promoted. Every run completes, no run or
checkpoint that was acknowledged is lost, only steps in flight at the switch run twice,
and the client's own calls (``runs.wait``, ``runs.get``, ``enqueue``) ride the switch
out instead of raising ``ConnectionLost``."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg
import pytest

from tests.deploy_support import ReplicaPair, replica_pair
from tests.integration.procs import CHAOS_LOG_DDL, Workers, eventually
from tidebase_async import Run, RunHandle, RunSpec, Tidebase

__all__ = ["replica_pair"]  # a fixture, used by name

RUNS = 60
STEPS = 4
WORKERS = 2
CONCURRENCY = 8
# Long enough that most runs are in flight or queued when the primary goes down.
NAP_S = 0.2


async def _completed(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval("SELECT count(*) FROM tidebase.runs WHERE status = 'completed'")
        )
    finally:
        await conn.close()


async def test_runs_complete_across_a_failover_and_only_steps_in_flight_run_twice(
    replica_pair: ReplicaPair, tmp_path: Path
) -> None:
    pair = replica_pair
    admin = await asyncpg.connect(pair.primary_dsn())
    await admin.execute("CREATE DATABASE app")
    await admin.close()
    dsn = pair.multi_host_dsn("app")
    setup = await asyncpg.connect(dsn)
    await setup.execute(CHAOS_LOG_DDL)
    await setup.close()

    async with Tidebase(dsn, reconnect_timeout=60) as tide:
        specs = [
            RunSpec(workflow="chaos", input={"steps": STEPS, "nap": NAP_S}) for _ in range(RUNS)
        ]
        acknowledged: list[RunHandle] = await tide.enqueue_many(specs)
        async with Workers(dsn, tmp_path) as workers:
            for _ in range(WORKERS):
                await workers.start(concurrency=CONCURRENCY, lease=3.0, poll_interval=0.5)
            await eventually(
                lambda: _completed_at_least(pair.primary_dsn("app"), RUNS // 4),
                timeout=30,
                what="a quarter of the runs to complete before the failover",
            )
            late: list[RunHandle] = []

            async def enqueue_through_the_switch() -> None:
                # Issued while the primary is going down: it must wait for the new
                # primary and create each run exactly once.
                for _ in range(5):
                    late.append(await tide.enqueue("chaos", input={"steps": STEPS, "nap": NAP_S}))
                    await anyio.sleep(0.05)

            done_before = await _completed(pair.primary_dsn("app"))
            crashed_at = datetime.now(UTC)
            began = time.monotonic()
            async with anyio.create_task_group() as tg:
                tg.start_soon(enqueue_through_the_switch)
                await pair.crash_primary_async()
                await pair.promote_standby_async()
            promoted_s = time.monotonic() - began
            with anyio.fail_after(60):
                for handle in [*acknowledged, *late]:
                    await tide.runs.wait(handle.id)
            recovered_s = time.monotonic() - began
            assert len(workers.alive()) == WORKERS, [w.describe() for w in workers.procs]

        # Nothing acknowledged was lost, and the late enqueues made one run each.
        for handle in [*acknowledged, *late]:
            assert (await tide.runs.get(handle.id)).status == "completed"
        check = await asyncpg.connect(dsn)
        try:
            total = await check.fetchval("SELECT count(*) FROM tidebase.runs")
            assert total == RUNS + len(late)
            executions = await check.fetch(
                "SELECT run_id, step, count(*) AS n, min(at) AS first "
                "FROM chaos_log GROUP BY run_id, step"
            )
        finally:
            await check.close()
    assert len(executions) == (RUNS + len(late)) * STEPS  # every step ran
    twice = [row for row in executions if row["n"] > 1]
    # Only steps in flight at the switch run again: each started before the crash, and
    # there can be no more of them than the workers' slots.
    assert all(row["first"] < crashed_at for row in twice), twice
    assert len(twice) <= WORKERS * CONCURRENCY, twice
    assert done_before < RUNS // 2  # the failover happened with most runs unfinished
    print(
        f"failover: {RUNS + len(late)} runs ({done_before} done before the crash), "
        f"promoted after {promoted_s:.2f}s, all done {recovered_s:.2f}s after the crash, "
        f"{len(twice)} steps ran twice"
    )


async def _completed_at_least(dsn: str, n: int) -> bool:
    return await _completed(dsn) >= n


def _multi_host(dsn: str, *, dead_first: bool) -> str:
    """``dsn`` with a second, dead host (a closed port) before or after the live one."""
    parts = urlsplit(dsn)
    live = f"{parts.hostname}:{parts.port or 5432}"
    hosts = f"127.0.0.1:1,{live}" if dead_first else f"{live},127.0.0.1:1"
    user = f"{parts.username}@" if parts.username else ""
    query = "target_session_attrs=read-write" + (f"&{parts.query}" if parts.query else "")
    return urlunsplit((parts.scheme, f"{user}{hosts}", parts.path, query, ""))


async def test_an_unreachable_host_in_a_multi_host_dsn_has_no_effect(dsn: str) -> None:
    if "host=" in urlsplit(dsn).query:
        pytest.fail("this test needs a TCP test server (the embedded one listens on a socket)")
    for dead_first in (False, True):
        async with Tidebase(_multi_host(dsn, dead_first=dead_first)) as tide:

            @tide.workflow("hello")
            async def hello(run: Run) -> str:
                greeting: str = await run.step("greet", lambda: "hi")
                return greeting

            handle = await tide.enqueue("hello")
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: tide.work(handle_signals=False))
                assert await tide.runs.wait(handle.id, timeout=10) == "hi"
                tg.cancel_scope.cancel()
