"""Soak: push many two-step runs through a worker with a short retention and watch the
size of the tables and their indexes. Bounded means: after the first retention period
the total stops growing with the number of runs pushed through.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import msgspec

from benchmarks.common import BenchmarkError, Context, Measurement, connect, fresh_database
from benchmarks.environment import Mode
from benchmarks.report import Figure
from tidebase_async import Run, RunSpec, Tidebase

NAME = "soak"
WORKFLOW = "two-steps"
RETENTION_S = 2.0
BACKLOG = 5_000
TABLES = ("runs", "steps", "events")


class Params(msgspec.Struct, frozen=True, kw_only=True):
    runs: int


PARAMS: dict[Mode, Params] = {"quick": Params(runs=20_000), "full": Params(runs=200_000)}


def register(tide: Tidebase) -> None:
    @tide.workflow(WORKFLOW)
    async def two_steps(run: Run, input: Any) -> None:
        await run.step("a", _noop)
        await run.step("b", _noop)


async def _noop() -> None:
    return None


async def _sizes(conn: Any) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT relname, pg_total_relation_size(c.oid) FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'tidebase' AND relname = ANY($1::text[])",
        list(TABLES),
    )
    return {str(r[0]): int(r[1]) for r in rows}


async def _push(tide: Tidebase, conn: Any, total: int, samples: list[dict[str, Any]]) -> None:
    pushed = 0
    t0 = time.perf_counter()
    next_sample = 0.0
    while True:
        queued = int(
            await conn.fetchval("SELECT count(*) FROM tidebase.runs WHERE status = 'queued'")
        )
        if pushed < total and queued < BACKLOG:
            count = min(1_000, total - pushed)
            await tide.enqueue_many([RunSpec(workflow=WORKFLOW)] * count)
            pushed += count
        elapsed = time.perf_counter() - t0
        if elapsed >= next_sample:
            done = int(await conn.fetchval("SELECT count(*) FROM tidebase.runs"))
            samples.append(
                {"t_s": round(elapsed, 2), "pushed": pushed, "rows": done} | await _sizes(conn)
            )
            next_sample = elapsed + 2.0
        if pushed >= total and queued == 0:
            active = await conn.fetchval(
                "SELECT count(*) FROM tidebase.runs WHERE status IN ('queued', 'running')"
            )
            if active == 0:
                return
        if elapsed > 900:
            raise BenchmarkError(f"soak did not finish in 900 s ({pushed} pushed)")
        await anyio.sleep(0.05)


async def measure(ctx: Context) -> Measurement:
    params = PARAMS[ctx.mode]
    samples: list[dict[str, Any]] = []
    async with fresh_database(ctx.admin_dsn) as dsn:
        tide = Tidebase(dsn, retention=RETENTION_S)
        register(tide)
        async with tide, connect(dsn) as conn, anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: tide.work(concurrency=128, maintenance_interval=0.5, handle_signals=False)
            )
            autovacuum = str(await conn.fetchval("SHOW autovacuum"))
            t0 = time.perf_counter()
            await _push(tide, conn, params.runs, samples)
            drained_s = time.perf_counter() - t0
            # Let retention and autovacuum catch up, then take the final size.
            await anyio.sleep(RETENTION_S + 3)
            samples.append({"t_s": "final", "pushed": params.runs} | await _sizes(conn))
            tg.cancel_scope.cancel()
    totals = [sum(int(s[t]) for t in TABLES) for s in samples if t_ok(s)]
    half = len(totals) // 2
    mb = 1_000_000
    figures = [
        Figure(
            name=f"runs pushed through (retention {RETENTION_S:g} s, "
            f"server autovacuum={autovacuum})",
            value=params.runs,
            unit="runs",
        ),
        Figure(name="time to push and drain", value=drained_s, unit="s"),
        Figure(
            name="tables + indexes, max in first half",
            value=max(totals[: max(half, 1)]) / mb,
            unit="MB",
        ),
        Figure(
            name="tables + indexes, max in second half", value=max(totals[half:]) / mb, unit="MB"
        ),
        Figure(name="tables + indexes, final", value=totals[-1] / mb, unit="MB"),
    ]
    return Measurement(figures=figures, details={"autovacuum": autovacuum, "samples": samples})


def t_ok(sample: dict[str, Any]) -> bool:
    return all(t in sample for t in TABLES)
