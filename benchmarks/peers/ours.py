"""tidebase-async in the comparison, measured exactly as ``benchmarks/throughput.py``
and ``benchmarks/wakeup.py`` measure it (their functions, not copies)."""

from __future__ import annotations

from benchmarks import throughput, wakeup
from benchmarks.peers.base import (
    DrainResult,
    EnqueueResult,
    WakeParams,
    WakeResult,
)
from tidebase_async import Tidebase


class Ours:
    key = "tidebase"
    label = "tidebase"

    async def enqueue_one_at_a_time(self, dsn: str, count: int) -> EnqueueResult:
        tide = Tidebase(dsn)
        throughput.register(tide)
        async with tide:
            seconds = await throughput.enqueue_one_at_a_time(tide, count)
        return EnqueueResult(jobs=count, seconds=seconds, settings={"call": "tide.enqueue"})

    async def enqueue_and_drain(
        self, dsn: str, count: int, batch: int, concurrency: int
    ) -> DrainResult:
        tide = Tidebase(dsn)
        throughput.register(tide)
        async with tide:
            done = await throughput.enqueue_and_drain_on(tide, count, batch, concurrency)
        timing = done.timing
        return DrainResult(
            jobs=count,
            concurrency=concurrency,
            enqueue_s=done.enqueue_s,
            startup_s=timing.startup_s,
            drain_s=timing.drain_s,
            cpu_client_s=timing.cpu_client_s,
            cpu_server_s=timing.cpu_server_s,
            settings={
                "enqueue": f"tide.enqueue_many, calls of {batch:,}",
                "worker": f"tide.work(concurrency={concurrency}), in process",
                "worker_stats": timing.stats,
            },
        )

    async def wakeup(self, dsn: str, params: WakeParams) -> WakeResult:
        tide = Tidebase(dsn)
        wakeup.register(tide)
        async with tide:
            samples = await wakeup.collect(
                tide,
                wakeup.Params(
                    samples=params.samples,
                    warmup=params.warmup,
                    idle_s=params.idle_s,
                    gap_max_s=params.gap_max_s,
                    seed=params.seed,
                ),
            )
        return WakeResult(
            latencies_ms=[s.latency_ms for s in samples],
            settings={
                "worker": f"tide.work(concurrency={wakeup.WORKER_CONCURRENCY}, "
                f"poll_interval={wakeup.POLL_INTERVAL_S:g})",
                "measured_to": "first step start",
            },
        )
