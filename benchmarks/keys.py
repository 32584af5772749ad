"""Claims with per-key caps over 10,000 concurrency keys, beside plain claims.

Two measurements, each side by side with the same work on a queue without controls
(its own fresh database, so the two never share a table):

- **claim latency**: ``runs`` due queued runs, spread over ``keys`` keys (a few runs
  each, keys interleaved in enqueue order), on a queue with ``per_key_concurrency=2``;
  ``Store.claim_controlled(limit=16)`` called back to back with long leases (the
  claimed runs stay running, so every claim counts more running runs per key, as a
  busy worker fleet's would), versus ``Store.claim(limit=16)`` on the plain queue. The
  two alternate in rounds of 10 so machine load falls on both alike. Also with
  ``per_key_rate_per_minute`` set (a bucket row per key claimed).
- **drain**: a worker at concurrency 16 drains the same number of no-op runs from the
  keyed queue (per_key_concurrency=1) and from the plain one; runs/s from its first
  claim to its last completion.
"""

from __future__ import annotations

import contextlib
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
from benchmarks.report import Figure, percentile
from benchmarks.throughput import drain
from tidebase_async import Run, RunSpec, Tidebase

NAME = "keys"
WORKFLOW = "noop"
KEYED = "keyed"
PLAIN = "default"
CLAIM_LIMIT = 16
LEASE_S = 3600.0
WORKER_ID = "bench-keys"
ROUND = 10


class Params(msgspec.Struct, frozen=True, kw_only=True):
    keys: int
    runs: int
    claims: int
    drain_runs: int
    warmup: int = 5
    batch: int = 2_000


PARAMS: dict[Mode, Params] = {
    "quick": Params(keys=10_000, runs=30_000, claims=150, drain_runs=10_000),
    "full": Params(keys=10_000, runs=100_000, claims=400, drain_runs=20_000),
}


def register(tide: Tidebase) -> None:
    @tide.workflow(WORKFLOW)
    async def noop(run: Run, input: Any) -> None:
        return None


async def fill(tide: Tidebase, params: Params, count: int, queue: str, keyed: bool) -> None:
    """``count`` runs, the i-th of key ``k{i % keys}`` when ``keyed``."""
    for start in range(0, count, params.batch):
        await tide.enqueue_many(
            [
                RunSpec(
                    workflow=WORKFLOW,
                    queue=queue,
                    concurrency_key=f"k{i % params.keys:05d}" if keyed else None,
                )
                for i in range(start, min(count, start + params.batch))
            ]
        )
    assert tide.dsn is not None
    async with connect(tide.dsn) as conn:
        await conn.execute("ANALYZE tidebase.runs")


async def claim_latencies(
    plain: Tidebase, keyed: Tidebase, params: Params
) -> tuple[list[float], list[float], list[int]]:
    """Alternating rounds of plain and keyed claims: (plain ms, keyed ms, keyed sizes)."""

    async def plain_claim() -> tuple[float, int]:
        t0 = time.perf_counter()
        got = await plain.store.claim(
            worker_id=WORKER_ID, queues=[PLAIN], limit=CLAIM_LIMIT, lease_s=LEASE_S
        )
        return (time.perf_counter() - t0) * 1000, len(got)

    async def keyed_claim() -> tuple[float, int]:
        t0 = time.perf_counter()
        got = await keyed.store.claim_controlled(
            worker_id=WORKER_ID, queue=KEYED, limit=CLAIM_LIMIT, lease_s=LEASE_S
        )
        return (time.perf_counter() - t0) * 1000, len(got.runs)

    for _ in range(params.warmup):
        await plain_claim()
        await keyed_claim()
    p_ms: list[float] = []
    k_ms: list[float] = []
    sizes: list[int] = []
    while len(p_ms) < params.claims:
        for _ in range(ROUND):
            ms, _n = await plain_claim()
            p_ms.append(ms)
        for _ in range(ROUND):
            ms, n = await keyed_claim()
            k_ms.append(ms)
            sizes.append(n)
    return p_ms, k_ms, sizes


class Latency(msgspec.Struct, frozen=True, kw_only=True):
    label: str
    plain_ms: list[float]
    keyed_ms: list[float]
    keyed_sizes: list[int]
    running_keys_after: int


async def measure_latency(ctx: Context, params: Params, *, rate: bool) -> Latency:
    async with contextlib.AsyncExitStack() as stack:
        plain = await stack.enter_async_context(fresh_tidebase(ctx, register))
        keyed = await stack.enter_async_context(fresh_tidebase(ctx, register))
        await keyed.queues.configure(
            KEYED, per_key_concurrency=2, per_key_rate_per_minute=600 if rate else None
        )
        await fill(plain, params, params.runs, PLAIN, keyed=False)
        await fill(keyed, params, params.runs, KEYED, keyed=True)
        p_ms, k_ms, sizes = await claim_latencies(plain, keyed, params)
        assert keyed.dsn is not None
        async with connect(keyed.dsn) as conn:
            running = await conn.fetchval(
                "SELECT count(DISTINCT concurrency_key) FROM tidebase.runs WHERE status = 'running'"
            )
    if any(n != CLAIM_LIMIT for n in sizes):
        raise BenchmarkError(f"a keyed claim returned fewer than {CLAIM_LIMIT} runs: {sizes}")
    label = "per_key_concurrency=2" + (", per_key_rate_per_minute=600" if rate else "")
    return Latency(
        label=label,
        plain_ms=p_ms,
        keyed_ms=k_ms,
        keyed_sizes=sizes,
        running_keys_after=int(running),
    )


class DrainResult(msgspec.Struct, frozen=True, kw_only=True):
    keyed: bool
    runs: int
    drain_s: float
    stats: dict[str, int]

    @property
    def rate(self) -> float:
        return per_second(self.runs, self.drain_s)


async def measure_drain(ctx: Context, params: Params, *, keyed: bool) -> DrainResult:
    async with fresh_tidebase(ctx, register) as tide:
        queue = PLAIN
        if keyed:
            # The noop workflow's queue is "default": cap it per key.
            await tide.queues.configure(queue, per_key_concurrency=1)
        await fill(tide, params, params.drain_runs, queue, keyed=keyed)
        timing = await drain(tide, params.drain_runs, 16)
        counts = await count_runs(tide)
    if counts != {"completed": params.drain_runs}:
        raise BenchmarkError(f"drain keyed={keyed}: {counts}")
    return DrainResult(
        keyed=keyed, runs=params.drain_runs, drain_s=timing.drain_s, stats=timing.stats
    )


def _figures(params: Params, latencies: list[Latency], drains: list[DrainResult]) -> list[Figure]:
    figures: list[Figure] = []
    for lat in latencies:
        head = f"claim of 16, {params.runs:,} queued over {params.keys:,} keys"
        figures += [
            Figure(name=f"{head}, {lat.label}: p50", value=percentile(lat.keyed_ms, 50), unit="ms"),
            Figure(name="  p99", value=percentile(lat.keyed_ms, 99), unit="ms"),
            Figure(
                name=f"  plain claim of 16 beside it, {params.runs:,} queued: p50",
                value=percentile(lat.plain_ms, 50),
                unit="ms",
            ),
            Figure(name="  plain p99", value=percentile(lat.plain_ms, 99), unit="ms"),
            Figure(
                name=f"  keys running at the end (n={len(lat.keyed_ms)} claims)",
                value=lat.running_keys_after,
                unit="keys",
            ),
        ]
    for d in drains:
        what = (
            f"drain {d.runs:,} no-op runs over {params.keys:,} keys, per_key_concurrency=1"
            if d.keyed
            else f"drain {d.runs:,} no-op runs, plain queue"
        )
        figures.append(Figure(name=f"{what}, concurrency 16", value=d.rate, unit="runs/s"))
    return figures


async def measure(ctx: Context) -> Measurement:
    params = PARAMS[ctx.mode]
    latencies = [
        await measure_latency(ctx, params, rate=False),
        await measure_latency(ctx, params, rate=True),
    ]
    drains = [
        await measure_drain(ctx, params, keyed=False),
        await measure_drain(ctx, params, keyed=True),
    ]
    details: dict[str, Any] = {
        "params": msgspec.to_builtins(params),
        "latencies": [
            msgspec.to_builtins(lat)
            | {
                "keyed_p50_ms": percentile(lat.keyed_ms, 50),
                "plain_p50_ms": percentile(lat.plain_ms, 50),
            }
            for lat in latencies
        ],
        "drains": [msgspec.to_builtins(d) | {"runs_per_s": d.rate} for d in drains],
    }
    return Measurement(figures=_figures(params, latencies, drains), details=details)
