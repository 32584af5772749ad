"""No-op run throughput: enqueue one at a time, enqueue in batches, drain with a worker.

Every measurement gets a fresh database. A drain is timed from the worker's first
claim to its last completion, both seen in the worker's own counters (polled every
2 ms, no database traffic), and checked against the table afterwards.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from benchmarks.common import (
    BenchmarkError,
    Context,
    CpuClock,
    Measurement,
    count_runs,
    fresh_tidebase,
    per_second,
    running_worker,
    wait_until,
)
from benchmarks.environment import Mode
from benchmarks.report import Figure, Target
from tidebase_async import Run, Tidebase

NAME = "throughput"
WORKFLOW = "noop"

ENQUEUE_ONE_TARGET = Target(">=", 2_000)
ENQUEUE_BATCH_TARGET = Target(">=", 40_000)
DRAIN_TARGET = Target(">=", 7_500)


class Params(msgspec.Struct, frozen=True, kw_only=True):
    runs: int
    concurrencies: tuple[int, ...]
    one_at_a_time: int
    batch: int = 1_000


PARAMS: dict[Mode, Params] = {
    "quick": Params(runs=5_000, concurrencies=(16,), one_at_a_time=1_000),
    "full": Params(runs=20_000, concurrencies=(1, 16, 128), one_at_a_time=5_000),
}


class DrainTiming(msgspec.Struct, frozen=True, kw_only=True):
    startup_s: float
    drain_s: float
    stats: dict[str, int]
    # CPU seconds from the worker's start to the last completion (common.CpuClock).
    cpu_client_s: float = float("nan")
    cpu_server_s: float = float("nan")


class Drain(msgspec.Struct, frozen=True, kw_only=True):
    concurrency: int
    runs: int
    enqueue_s: float
    timing: DrainTiming

    @property
    def rate(self) -> float:
        return per_second(self.runs, self.timing.drain_s)


def register(tide: Tidebase) -> None:
    @tide.workflow(WORKFLOW)
    async def noop(run: Run, input: Any) -> None:
        return None


async def enqueue_one_at_a_time(tide: Tidebase, count: int, *, workflow: str = WORKFLOW) -> float:
    """Seconds for ``count`` sequential ``enqueue`` calls."""
    t0 = time.perf_counter()
    for _ in range(count):
        await tide.enqueue(workflow)
    return time.perf_counter() - t0


async def enqueue_batches(tide: Tidebase, count: int, batch: int) -> float:
    """Seconds for ``count`` runs enqueued with ``enqueue_many`` calls of ``batch``."""
    specs: list[tuple[str, Any]] = [(WORKFLOW, None)] * batch
    t0 = time.perf_counter()
    for start in range(0, count, batch):
        await tide.enqueue_many(specs[: min(batch, count - start)])
    return time.perf_counter() - t0


async def drain(tide: Tidebase, count: int, concurrency: int) -> DrainTiming:
    """Run a worker until ``count`` runs finished: time from its start to its first
    claim, and from the first claim to the last completion."""
    timeout_s = max(60.0, count / 50)
    cpu = CpuClock()
    async with running_worker(tide, concurrency=concurrency) as worker:
        t_start = time.perf_counter()
        t_first = await wait_until(
            lambda: worker.stats.claimed > 0, timeout_s=timeout_s, what="the first claim"
        )
        t_last = await wait_until(
            lambda: worker.stats.completed + worker.stats.failed >= count,
            timeout_s=timeout_s,
            what=f"{count} runs to finish",
        )
        cpu_client_s, cpu_server_s = cpu.read()
    return DrainTiming(
        startup_s=t_first - t_start,
        drain_s=t_last - t_first,
        stats={name: int(value) for name, value in vars(worker.stats).items()},
        cpu_client_s=cpu_client_s,
        cpu_server_s=cpu_server_s,
    )


async def enqueue_and_drain_on(tide: Tidebase, runs: int, batch: int, concurrency: int) -> Drain:
    """On an open ``tide`` with ``register(tide)`` done: enqueue ``runs`` no-op runs in
    calls of ``batch``, drain them at ``concurrency`` and check the table.

    Raises:
        BenchmarkError: not every run completed.
    """
    enqueue_s = await enqueue_batches(tide, runs, batch)
    timing = await drain(tide, runs, concurrency)
    counts = await count_runs(tide)
    if counts != {"completed": runs}:
        raise BenchmarkError(f"drain c={concurrency}: expected {runs} completed, {counts}")
    return Drain(concurrency=concurrency, runs=runs, enqueue_s=enqueue_s, timing=timing)


async def enqueue_and_drain(ctx: Context, params: Params, concurrency: int) -> Drain:
    async with fresh_tidebase(ctx, register) as tide:
        return await enqueue_and_drain_on(tide, params.runs, params.batch, concurrency)


async def measure_one_at_a_time(ctx: Context, count: int) -> float:
    async with fresh_tidebase(ctx, register) as tide:
        return await enqueue_one_at_a_time(tide, count)


def _figures(params: Params, one_s: float, drains: list[Drain]) -> list[Figure]:
    batch_runs = sum(d.runs for d in drains)
    batch_s = sum(d.enqueue_s for d in drains)
    rounds = f", {len(drains)} rounds" if len(drains) > 1 else ""
    figures = [
        Figure(
            name=f"enqueue one at a time (N={params.one_at_a_time:,})",
            value=per_second(params.one_at_a_time, one_s),
            unit="runs/s",
            target=ENQUEUE_ONE_TARGET,
        ),
        Figure(
            name=f"enqueue_many, batches of {params.batch:,} (N={params.runs:,}{rounds})",
            value=per_second(batch_runs, batch_s),
            unit="runs/s",
            target=ENQUEUE_BATCH_TARGET,
        ),
    ]
    for d in drains:
        figures.append(
            Figure(
                name=f"drain no-op runs, concurrency {d.concurrency} (N={d.runs:,})",
                value=d.rate,
                unit="runs/s",
                target=DRAIN_TARGET,
            )
        )
    return figures


async def measure(ctx: Context) -> Measurement:
    params = PARAMS[ctx.mode]
    one_s = await measure_one_at_a_time(ctx, params.one_at_a_time)
    drains = [await enqueue_and_drain(ctx, params, c) for c in params.concurrencies]
    details: dict[str, Any] = {
        "params": msgspec.to_builtins(params),
        "enqueue_one_at_a_time_s": one_s,
        "drains": [msgspec.to_builtins(d) | {"runs_per_s": d.rate} for d in drains],
    }
    return Measurement(figures=_figures(params, one_s, drains), details=details)
