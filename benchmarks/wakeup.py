"""Idle wake-up latency: how soon an idle worker starts a run after ``enqueue``.

The worker polls only every 30 s, so only NOTIFY can wake it in time. One sample:
take ``perf_counter()``, ``enqueue`` a run whose first step returns ``perf_counter()``
as it starts, wait for the run to complete; latency = step start - time before
``enqueue``. Runs are sequential; the worker is idle before each one. The enqueuer and
the worker share one process (and clock), as in a web app that also runs a worker.
"""

from __future__ import annotations

import gc
import math
import time
from typing import Any

import anyio
import msgspec

from benchmarks.common import (
    BenchmarkError,
    Context,
    Measurement,
    fresh_tidebase,
    running_worker,
)
from benchmarks.environment import Mode
from benchmarks.peers.base import gaps
from benchmarks.report import Figure, Target, percentile
from tidebase_async import Run, Tidebase
from tidebase_async.store.channels import WAKE_CHANNEL

NAME = "wakeup"
WORKFLOW = "wakeup-probe"
POLL_INTERVAL_S = 30.0
SAMPLE_TIMEOUT_S = 10.0
WORKER_CONCURRENCY = 16

P50_TARGET = Target("<=", 2.0)
P99_TARGET = Target("<=", 10.0)


class Params(msgspec.Struct, frozen=True, kw_only=True):
    samples: int
    # Discarded: the first runs prepare statements on fresh pool connections.
    warmup: int = 10
    # Pause before each sample so the worker is back in its idle wait; with gap_max_s
    # larger, uniform in [idle_s, gap_max_s] (seeded, see peers.base.gaps): samples
    # then meet the worker's and the server's periodic work (heartbeats, maintenance
    # ticks, checkpoints) wherever it falls.
    idle_s: float = 0.02
    gap_max_s: float = 0.0
    seed: int = 20


PARAMS: dict[Mode, Params] = {
    "quick": Params(samples=200),
    "full": Params(samples=1_000, gap_max_s=1.0),
}

#: A sample slower than this is a tail sample: listed with what happened during it.
TAIL_MS = 50.0


class Sample(msgspec.Struct, frozen=True, array_like=True):
    latency_ms: float
    enqueue_ms: float
    # When this process's LISTEN connection got the wake-up (NaN if it never did).
    notified_ms: float
    # The longest garbage collection of this process during the sample, and whether
    # the server completed a checkpoint meanwhile (diagnostics of tail samples).
    gc_ms: float = 0.0
    checkpoint: bool = False


class GcClock:
    """``gc.callbacks`` hook: the longest collection pause since ``reset()``."""

    def __init__(self) -> None:
        self.longest_ms = 0.0
        self._started: float | None = None

    def reset(self) -> None:
        self.longest_ms = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self.longest_ms = max(self.longest_ms, (time.perf_counter() - self._started) * 1000)
            self._started = None


class NotifyClock:
    """Listener callback: ``perf_counter()`` of the first wake-up since ``reset()``.
    The worker's own callback runs in the same dispatch, so this is when it woke."""

    def __init__(self) -> None:
        self.at: float | None = None

    def reset(self) -> None:
        self.at = None

    def __call__(self, payload: str) -> None:
        if self.at is None:
            self.at = time.perf_counter()


async def _stamp() -> float:
    return time.perf_counter()


def register(tide: Tidebase) -> None:
    @tide.workflow(WORKFLOW)
    async def probe(run: Run, input: Any) -> float:
        return float(await run.step("stamp", _stamp))


async def _checkpoints(tide: Tidebase) -> int:
    async with tide.store.connection() as conn:
        return int(
            await conn.fetchval("SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter")
        )


async def sample(tide: Tidebase, clock: NotifyClock, gc_clock: GcClock) -> Sample:
    checkpoints = await _checkpoints(tide)
    clock.reset()
    gc_clock.reset()
    t0 = time.perf_counter()
    handle = await tide.enqueue(WORKFLOW)
    t1 = time.perf_counter()
    started = float(await tide.runs.wait(handle.id, timeout=SAMPLE_TIMEOUT_S))
    notified = math.nan if clock.at is None else clock.at
    return Sample(
        latency_ms=(started - t0) * 1000,
        enqueue_ms=(t1 - t0) * 1000,
        notified_ms=(notified - t0) * 1000,
        gc_ms=gc_clock.longest_ms,
        checkpoint=await _checkpoints(tide) != checkpoints,
    )


async def collect(tide: Tidebase, params: Params) -> list[Sample]:
    if tide.listener is None:
        raise BenchmarkError("this Tidebase has no LISTEN connection to wake a worker")
    clock = NotifyClock()
    gc_clock = GcClock()
    unsubscribe = tide.listener.subscribe(WAKE_CHANNEL, clock)
    gc.callbacks.append(gc_clock)
    samples: list[Sample] = []
    pauses = gaps(params.idle_s, params.gap_max_s, params.seed)
    try:
        async with running_worker(
            tide, concurrency=WORKER_CONCURRENCY, poll_interval=POLL_INTERVAL_S
        ):
            for _ in range(params.warmup + params.samples):
                await anyio.sleep(next(pauses))
                samples.append(await sample(tide, clock, gc_clock))
    finally:
        gc.callbacks.remove(gc_clock)
        unsubscribe()
    return samples[params.warmup :]


def _figures(params: Params, samples: list[Sample]) -> list[Figure]:
    latencies = [s.latency_ms for s in samples]
    notified = [s.notified_ms for s in samples if not math.isnan(s.notified_ms)]
    n = f"(n={params.samples})"
    return [
        Figure(
            name=f"wake-up p50 {n}", value=percentile(latencies, 50), unit="ms", target=P50_TARGET
        ),
        Figure(name=f"wake-up p90 {n}", value=percentile(latencies, 90), unit="ms"),
        Figure(
            name=f"wake-up p99 {n}", value=percentile(latencies, 99), unit="ms", target=P99_TARGET
        ),
        Figure(name=f"wake-up p99.9 {n}", value=percentile(latencies, 99.9), unit="ms"),
        Figure(name=f"wake-up max {n}", value=max(latencies), unit="ms"),
        Figure(
            name=f"  samples over {TAIL_MS:g} ms",
            value=float(sum(1 for v in latencies if v > TAIL_MS)),
            unit="",
        ),
        Figure(
            name="  enqueue() returned, p50",
            value=percentile([s.enqueue_ms for s in samples], 50),
            unit="ms",
        ),
        Figure(
            name=f"  NOTIFY reached the worker, p50 (n={len(notified)})",
            value=percentile(notified, 50) if notified else math.nan,
            unit="ms",
        ),
    ]


async def measure(ctx: Context) -> Measurement:
    params = PARAMS[ctx.mode]
    async with fresh_tidebase(ctx, register) as tide:
        samples = await collect(tide, params)
    details: dict[str, Any] = {
        "params": msgspec.to_builtins(params),
        "poll_interval_s": POLL_INTERVAL_S,
        "worker_concurrency": WORKER_CONCURRENCY,
        "samples_ms": msgspec.to_builtins(samples),
        "sample_fields": ["latency_ms", "enqueue_ms", "notified_ms", "gc_ms", "checkpoint"],
        "gaps": "fixed"
        if params.gap_max_s <= params.idle_s
        else f"uniform {params.idle_s:g}..{params.gap_max_s:g} s, seed {params.seed}",
        "tail_samples": [msgspec.to_builtins(s) for s in samples if s.latency_ms > TAIL_MS],
    }
    return Measurement(figures=_figures(params, samples), details=details)
