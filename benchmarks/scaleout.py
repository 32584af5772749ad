"""Scale-out: how drain throughput grows with worker processes on one Postgres.

N no-op runs are enqueued due a few seconds ahead, so that P worker processes (each at
concurrency 16) are all idle and ready when the runs become claimable together. The
drain time is the database's own: from the first claim (min started_at) to the last
completion (max finished_at) of the runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec

from benchmarks.common import BenchmarkError, Context, Measurement, connect, fresh_tidebase
from benchmarks.environment import Mode
from benchmarks.report import Figure
from benchmarks.throughput import WORKFLOW, register
from tidebase_async import RunSpec, Tidebase

NAME = "scaleout"
CONCURRENCY = 16
REPO = Path(__file__).resolve().parent.parent


class Params(msgspec.Struct, frozen=True, kw_only=True):
    runs: int
    processes: tuple[int, ...]


PARAMS: dict[Mode, Params] = {
    "quick": Params(runs=5_000, processes=(1, 2)),
    "full": Params(runs=20_000, processes=(1, 2, 4)),
}


def _start_workers(dsn: str, count: int) -> list[subprocess.Popen[str]]:
    env = os.environ | {"PYTHONPATH": str(REPO)}
    return [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks.scaleout_worker", dsn, str(CONCURRENCY)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(count)
    ]


def _wait_ready(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "READY":
            raise BenchmarkError(f"worker process {proc.pid} did not start: {line!r}")


def _stop(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


async def _drain(tide: Tidebase, runs: int, processes: int) -> dict[str, Any]:
    assert tide.dsn is not None
    procs = _start_workers(tide.dsn, processes)
    try:
        await anyio.to_thread.run_sync(_wait_ready, procs)
        lead_s = 3.0
        for start in range(0, runs, 1_000):
            count = min(1_000, runs - start)
            await tide.enqueue_many([RunSpec(workflow=WORKFLOW, delay=lead_s)] * count)
        deadline = time.monotonic() + 120
        async with connect(tide.dsn) as conn:
            while True:
                row = await conn.fetchrow(
                    "SELECT count(*) FILTER (WHERE status = 'completed') AS done,"
                    " extract(epoch FROM max(finished_at) - min(started_at)) AS span"
                    " FROM tidebase.runs"
                )
                if row["done"] == runs:
                    break
                if time.monotonic() > deadline:
                    raise BenchmarkError(f"{row['done']} of {runs} runs done after 120 s")
                await anyio.sleep(0.1)
    finally:
        await anyio.to_thread.run_sync(_stop, procs)
    span = float(row["span"])
    return {"processes": processes, "runs": runs, "drain_s": span, "rate": runs / span}


async def measure(ctx: Context) -> Measurement:
    params = PARAMS[ctx.mode]
    results = []
    for processes in params.processes:
        async with fresh_tidebase(ctx, register) as tide:
            results.append(await _drain(tide, params.runs, processes))
    figures = [
        Figure(
            name=f"drain, {r['processes']} worker process(es) x concurrency {CONCURRENCY} "
            f"(N={r['runs']:,})",
            value=r["rate"],
            unit="runs/s",
        )
        for r in results
    ]
    return Measurement(figures=figures, details={"drains": results})
