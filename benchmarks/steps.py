"""10-step workflows: runs/s and checkpoints/s.

Each run executes ten no-op async steps, so every run writes ten checkpoints before it
completes. N runs are enqueued with ``enqueue_many`` (no worker running), then one
in-process worker drains them; the clock runs from its first claim to its last
completion (the worker's own counters, polled every 2 ms, as in ``throughput``).
Afterwards the tables are checked: N completed runs and 10 N completed checkpoints.

The performance issue sets no target for this one (it asks for the figures); compare
checkpoints/s with the no-op drain of ``throughput``: a 10-step run is eleven writes.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from benchmarks.common import (
    BenchmarkError,
    Context,
    Measurement,
    connect,
    count_runs,
    fresh_tidebase,
    per_second,
)
from benchmarks.environment import Mode
from benchmarks.report import Figure
from benchmarks.throughput import DrainTiming, drain
from tidebase_async import Run, Tidebase

NAME = "steps"
WORKFLOW = "ten-steps"
STEPS = 10
BATCH = 1_000


class Params(msgspec.Struct, frozen=True, kw_only=True):
    runs: int
    concurrencies: tuple[int, ...]


PARAMS: dict[Mode, Params] = {
    "quick": Params(runs=500, concurrencies=(16,)),
    "full": Params(runs=5_000, concurrencies=(16, 128)),
}


class StepsDrain(msgspec.Struct, frozen=True, kw_only=True):
    concurrency: int
    runs: int
    checkpoints: int
    enqueue_s: float
    timing: DrainTiming

    @property
    def runs_per_s(self) -> float:
        return per_second(self.runs, self.timing.drain_s)

    @property
    def checkpoints_per_s(self) -> float:
        return per_second(self.checkpoints, self.timing.drain_s)


async def _noop() -> None:
    return None


def workflow_name(steps: int) -> str:
    """The name of the workflow of ``steps`` no-op steps (``ten-steps`` for ten)."""
    return WORKFLOW if steps == STEPS else f"{steps}-steps"


def register_steps(tide: Tidebase, steps: int) -> None:
    """Register a workflow of ``steps`` no-op async steps, named ``workflow_name(steps)``."""

    @tide.workflow(workflow_name(steps))
    async def n_steps(run: Run, input: Any) -> None:
        for _ in range(steps):
            await run.step("noop", _noop)


def register(tide: Tidebase) -> None:
    register_steps(tide, STEPS)


async def enqueue(tide: Tidebase, count: int, *, steps: int = STEPS) -> float:
    """Seconds to enqueue ``count`` runs with ``enqueue_many`` calls of ``BATCH``."""
    specs: list[tuple[str, Any]] = [(workflow_name(steps), None)] * BATCH
    t0 = time.perf_counter()
    for start in range(0, count, BATCH):
        await tide.enqueue_many(specs[: min(BATCH, count - start)])
    return time.perf_counter() - t0


async def completed_checkpoints(tide: Tidebase) -> int:
    assert tide.dsn is not None
    async with connect(tide.dsn) as conn:
        return int(
            await conn.fetchval("SELECT count(*) FROM tidebase.steps WHERE status = 'completed'")
        )


async def drain_steps(tide: Tidebase, runs: int, concurrency: int, *, steps: int) -> StepsDrain:
    """On an open ``tide`` with ``register_steps(tide, steps)`` done: enqueue ``runs``
    runs, drain them, and check the tables (every run and checkpoint completed).

    Raises:
        BenchmarkError: the tables disagree.
    """
    enqueue_s = await enqueue(tide, runs, steps=steps)
    timing = await drain(tide, runs, concurrency)
    counts = await count_runs(tide)
    checkpoints = await completed_checkpoints(tide)
    if counts != {"completed": runs} or checkpoints != runs * steps:
        raise BenchmarkError(
            f"{steps}-step drain c={concurrency}: expected {runs} completed runs and "
            f"{runs * steps} checkpoints, got {counts} and {checkpoints}"
        )
    return StepsDrain(
        concurrency=concurrency,
        runs=runs,
        checkpoints=checkpoints,
        enqueue_s=enqueue_s,
        timing=timing,
    )


async def enqueue_and_drain(
    ctx: Context, runs: int, concurrency: int, *, steps: int = STEPS
) -> StepsDrain:
    async with fresh_tidebase(ctx, lambda tide: register_steps(tide, steps)) as tide:
        return await drain_steps(tide, runs, concurrency, steps=steps)


def _figures(drains: list[StepsDrain]) -> list[Figure]:
    figures: list[Figure] = []
    for d in drains:
        label = f"concurrency {d.concurrency} (N={d.runs:,})"
        figures.append(Figure(name=f"10-step runs, {label}", value=d.runs_per_s, unit="runs/s"))
        figures.append(
            Figure(name=f"  checkpoints, {label}", value=d.checkpoints_per_s, unit="checkpoints/s")
        )
    return figures


async def measure(ctx: Context) -> Measurement:
    params = PARAMS[ctx.mode]
    drains = [await enqueue_and_drain(ctx, params.runs, c) for c in params.concurrencies]
    details: dict[str, Any] = {
        "params": msgspec.to_builtins(params),
        "steps_per_run": STEPS,
        "enqueue_batch": BATCH,
        "drains": [
            msgspec.to_builtins(d)
            | {"runs_per_s": d.runs_per_s, "checkpoints_per_s": d.checkpoints_per_s}
            for d in drains
        ],
    }
    return Measurement(figures=_figures(drains), details=details)
