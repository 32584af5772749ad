"""Side by side in one run: tidebase-async direct to Postgres, and through PgBouncer in
transaction mode with and without a direct ``listen_dsn``.

The three setups, each measurement on a fresh database of its own (created on the
server directly; the pooled setups reach it through PgBouncer's wildcard entry):

- direct: ``Tidebase(dsn)``;
- PgBouncer + listen_dsn: ``Tidebase(pooler_dsn, pooled=True, listen_dsn=dsn)``: the
  pool goes through PgBouncer, one direct connection holds the LISTEN;
- PgBouncer, no listen_dsn: ``Tidebase(pooler_dsn, pooled=True)``: no LISTEN at all, a
  worker finds new runs only by polling, every ``poll_interval``.

Figures, measured with the functions of ``benchmarks/throughput.py`` and
``benchmarks/wakeup.py`` (not copies), at compare's sizes:

- enqueue in batches: each drain's runs, ``enqueue_many`` in calls of 1,000, before it;
- drain: N queued no-op runs, ``tide.work(concurrency=C)`` in this process, timed from
  its first claim to its last completion, then every run checked completed in the
  table (quick: N=3,000, C=16; full: N=20,000, C=16 and 128). The worker polls at
  ``benchmarks.common.running_worker``'s 5 s, the library's default too;
- idle wake-up: sequential samples, enqueue to the run's first step start, worker
  concurrency 16 (quick: 50 samples, fixed 20 ms gaps; full: 300 samples, random gaps
  of 0.02..1 s, seeded as compare's). With a LISTEN the worker polls every 30 s, so only
  NOTIFY wakes it. Without one the library's default ``poll_interval`` (5 s, read from
  ``Tidebase.work``) decides: expect latencies near it, so that column takes fewer
  samples (quick 6, full 20; labelled in the row). The worker waits a full interval
  after each claim, the previous sample's included, so a sample waits about the
  interval less its gap: near the worst case, not a random arrival's average.

Settings: Tidebase's default ``pool_size`` (20 asyncpg connections); PgBouncer started
here with the test suite's helper (``tests/deploy_support.py``, Debian's pgbouncer):
``pool_mode = transaction``, ``default_pool_size = 10`` (server connections per
database and user), ``max_client_conn = 400``. Under ``--through-pgbouncer`` the run's
PgBouncer (the same helper, the same settings) is used instead of a second one.
Figures are interleaved (each figure for every setup in turn); one that fails prints
"n/a" with the reason in a footnote and the run goes on.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import inspect
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import anyio
import msgspec

from benchmarks import throughput, wakeup
from benchmarks.common import (
    Context,
    Measurement,
    per_second,
    pgbouncer,
    running_worker,
    with_database,
)
from benchmarks.compare import OURS, Cell, Failed, Row, _cell, attempt, figures_of, render_table
from benchmarks.environment import Mode
from benchmarks.peers.base import gaps
from benchmarks.report import percentile
from tidebase_async import Tidebase

NAME = "pooler"

DIRECT = "direct"
# compare.Row.ratio divides the OURS cell by the best of the row's peers: the pooled
# column with a listen_dsn takes that key, and the direct one is the only peer.
LISTEN = OURS
POLL = "pgbouncer-poll"


def _default_s(fn: Callable[..., Any], name: str) -> float:
    """The default of ``fn``'s argument ``name``, in seconds."""
    value = inspect.signature(fn).parameters[name].default
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


#: What decides the wake-up without a LISTEN: the library's default poll interval.
POLL_INTERVAL_S = _default_s(Tidebase.work, "poll_interval")
#: The poll interval of throughput.drain's worker (benchmarks.common.running_worker's).
DRAIN_POLL_INTERVAL_S = _default_s(running_worker, "poll_interval")
POOL_SIZE = int(inspect.signature(Tidebase).parameters["pool_size"].default)


class Setup(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    label: str
    pooled: bool
    listen_dsn: bool

    def tidebase(self, dsn: str, pooler_dsn: str) -> Tidebase:
        """A Tidebase on the database of ``dsn`` (direct), as this setup reaches it."""
        if not self.pooled:
            return Tidebase(dsn)
        through = with_database(pooler_dsn, urlsplit(dsn).path.lstrip("/"))
        if self.listen_dsn:
            return Tidebase(through, pooled=True, listen_dsn=dsn)
        return Tidebase(through, pooled=True)


SETUPS = (
    Setup(key=DIRECT, label="direct", pooled=False, listen_dsn=False),
    Setup(key=LISTEN, label="PgBouncer + listen_dsn", pooled=True, listen_dsn=True),
    Setup(key=POLL, label="PgBouncer, no listen_dsn", pooled=True, listen_dsn=False),
)


class Params(msgspec.Struct, frozen=True, kw_only=True):
    runs: int
    concurrencies: tuple[int, ...]
    wake: wakeup.Params
    # Without a LISTEN each sample waits for the worker's next poll: fewer of them.
    poll_wake: wakeup.Params
    # The worker's poll interval for those (smaller only in the smoke test).
    poll_interval_s: float = POLL_INTERVAL_S
    batch: int = 1_000


PARAMS: dict[Mode, Params] = {
    "quick": Params(
        runs=3_000,
        concurrencies=(16,),
        wake=wakeup.Params(samples=50, warmup=5),
        poll_wake=wakeup.Params(samples=6, warmup=1),
    ),
    "full": Params(
        runs=20_000,
        concurrencies=(16, 128),
        # compare's: random pauses of 0.02..1 s before each sample, seed 20.
        wake=wakeup.Params(samples=300, warmup=10, gap_max_s=1.0),
        poll_wake=wakeup.Params(samples=20, warmup=1, gap_max_s=1.0),
    ),
}


async def enqueue_and_drain(
    setup: Setup, pooler_dsn: str, dsn: str, *, runs: int, batch: int, concurrency: int
) -> throughput.Drain:
    tide = setup.tidebase(dsn, pooler_dsn)
    throughput.register(tide)
    async with tide:
        return await throughput.enqueue_and_drain_on(tide, runs, batch, concurrency)


async def collect_polling(
    tide: Tidebase, params: wakeup.Params, poll_interval_s: float
) -> list[wakeup.Sample]:
    """``wakeup.collect`` for a Tidebase without a LISTEN connection (which that one
    refuses): the same samples, the worker polling every ``poll_interval_s``."""
    clock = wakeup.NotifyClock()  # nothing notifies it: notified_ms stays NaN
    gc_clock = wakeup.GcClock()
    gc.callbacks.append(gc_clock)
    samples: list[wakeup.Sample] = []
    pauses = gaps(params.idle_s, params.gap_max_s, params.seed)
    try:
        async with running_worker(
            tide, concurrency=wakeup.WORKER_CONCURRENCY, poll_interval=poll_interval_s
        ):
            for _ in range(params.warmup + params.samples):
                await anyio.sleep(next(pauses))
                samples.append(await wakeup.sample(tide, clock, gc_clock))
    finally:
        gc.callbacks.remove(gc_clock)
    return samples[params.warmup :]


async def wake_samples(
    setup: Setup, pooler_dsn: str, dsn: str, *, params: wakeup.Params, poll_interval_s: float
) -> list[wakeup.Sample]:
    tide = setup.tidebase(dsn, pooler_dsn)
    wakeup.register(tide)
    async with tide:
        if tide.listener is not None:
            return await wakeup.collect(tide, params)
        return await collect_polling(tide, params, poll_interval_s)


class Results(msgspec.Struct, kw_only=True):
    drains: dict[int, dict[str, throughput.Drain | Failed]]
    wake: dict[str, list[wakeup.Sample] | Failed]


def _wake_params(params: Params, setup: Setup) -> wakeup.Params:
    return params.wake if setup.key != POLL else params.poll_wake


async def run(ctx: Context, params: Params, pooler_dsn: str) -> Results:
    drain_timeout = max(120.0, params.runs / 25)
    drains: dict[int, dict[str, throughput.Drain | Failed]] = {}
    for c in params.concurrencies:
        drains[c] = {}
        for s in SETUPS:
            drains[c][s.key] = await attempt(
                ctx,
                f"pooler, {s.label}: drain c={c}",
                functools.partial(
                    enqueue_and_drain,
                    s,
                    pooler_dsn,
                    runs=params.runs,
                    batch=params.batch,
                    concurrency=c,
                ),
                drain_timeout,
            )
    wake: dict[str, list[wakeup.Sample] | Failed] = {}
    for s in SETUPS:
        wp = _wake_params(params, s)
        per_sample_s = max(wp.idle_s, wp.gap_max_s) + (
            0.5 if s.key != POLL else params.poll_interval_s + 1.5
        )
        wake[s.key] = await attempt(
            ctx,
            f"pooler, {s.label}: wake-up",
            functools.partial(
                wake_samples, s, pooler_dsn, params=wp, poll_interval_s=params.poll_interval_s
            ),
            60.0 + (wp.samples + wp.warmup) * per_sample_s,
        )
    return Results(drains=drains, wake=wake)


def _batch_cell(drains: list[throughput.Drain | Failed]) -> Cell:
    done = [d for d in drains if isinstance(d, throughput.Drain)]
    if not done:
        failed = [d for d in drains if isinstance(d, Failed)]
        return Cell(reason=failed[0].reason if failed else "not measured")
    return Cell(value=per_second(sum(d.runs for d in done), sum(d.enqueue_s for d in done)))


def _latency_percentile(q: float) -> Callable[[list[wakeup.Sample]], float]:
    return lambda samples: percentile([s.latency_ms for s in samples], q)


def _gaps(p: wakeup.Params) -> str:
    if p.gap_max_s <= p.idle_s:
        return f"fixed {p.idle_s * 1000:g} ms"
    return f"uniform {p.idle_s:g}..{p.gap_max_s:g} s, seed {p.seed}"


def rows(params: Params, results: Results) -> list[Row]:
    keys = [s.key for s in SETUPS]
    peers = (DIRECT,)
    rounds = f", {len(params.concurrencies)} rounds" if len(params.concurrencies) > 1 else ""
    out = [
        Row(
            figure=f"enqueue_many, calls of {params.batch:,} (N={params.runs:,}{rounds})",
            unit="runs/s",
            higher_is_better=True,
            cells={
                k: _batch_cell([results.drains[c][k] for c in params.concurrencies]) for k in keys
            },
            peers=peers,
        )
    ]
    for c in params.concurrencies:
        out.append(
            Row(
                figure=f"drain no-op runs, concurrency {c} (N={params.runs:,})",
                unit="runs/s",
                higher_is_better=True,
                cells={k: _cell(results.drains[c][k], lambda d: d.rate) for k in keys},
                peers=peers,
            )
        )
    gapped = ", random gaps" if params.wake.gap_max_s > params.wake.idle_s else ""
    n = f"(n={params.wake.samples}{gapped}; no listen_dsn: n={params.poll_wake.samples})"
    for q in (50, 99, 100):
        which = "max" if q == 100 else f"p{q:g}"
        out.append(
            Row(
                figure=f"idle wake-up, enqueue to first step, {which} {n}",
                unit="ms",
                higher_is_better=False,
                cells={k: _cell(results.wake[k], _latency_percentile(q)) for k in keys},
                peers=peers,
            )
        )
    return out


def _pgbouncer_settings() -> dict[str, Any]:
    """What the helper configures (its defaults, which common.pgbouncer keeps)."""
    from tests.deploy_support import running_pgbouncer

    sig = inspect.signature(running_pgbouncer).parameters
    return {
        "pool_mode": sig["pool_mode"].default,
        "default_pool_size": sig["default_pool_size"].default,
        "max_client_conn": sig["max_client_conn"].default,
    }


def _notes(params: Params, bouncer: dict[str, Any], own: bool) -> list[str]:
    cs = ", ".join(str(c) for c in params.concurrencies)
    started = "started by this benchmark" if own else "the run's --through-pgbouncer one"
    poll = f"poll_interval={params.poll_interval_s:g}s" + (
        " (the library's default)" if params.poll_interval_s == POLL_INTERVAL_S else ""
    )
    return [
        f"concurrency C = {cs}; each figure on a fresh database; all setups in this process.",
        f"PgBouncer ({started}): pool_mode={bouncer['pool_mode']}, default_pool_size="
        f"{bouncer['default_pool_size']}, max_client_conn={bouncer['max_client_conn']} "
        "(tests/deploy_support.py); Tidebase pool_size "
        f"{POOL_SIZE} (its default) in every setup.",
        "PgBouncer + listen_dsn: Tidebase(pooler_dsn, pooled=True, listen_dsn=direct); "
        "no listen_dsn: Tidebase(pooler_dsn, pooled=True), no LISTEN.",
        f"drain: tide.work(concurrency=C, poll_interval={DRAIN_POLL_INTERVAL_S:g}s), first "
        "claim to last completion (benchmarks/throughput.py); every run checked completed.",
        f"wake-up: worker concurrency {wakeup.WORKER_CONCURRENCY}; with a LISTEN "
        f"poll_interval={wakeup.POLL_INTERVAL_S:g}s (only NOTIFY wakes it), gaps "
        f"{_gaps(params.wake)}.",
        f"no listen_dsn: {poll} decides the wake-up; the worker waits that long after "
        "each claim, so a sample waits it less its gap and the previous sample's tail: "
        f"near the worst case, not a random arrival's average; n={params.poll_wake.samples}, "
        f"gaps {_gaps(params.poll_wake)}.",
        "ratio = PgBouncer + listen_dsn / direct: for runs/s above 1 is better through "
        "PgBouncer, for ms below 1 is.",
    ]


async def measure(ctx: Context, params: Params | None = None) -> Measurement:
    params = params or PARAMS[ctx.mode]
    labels = {s.key: s.label for s in SETUPS}
    async with contextlib.AsyncExitStack() as stack:
        pooler_dsn = ctx.pooler_dsn
        if pooler_dsn is None:
            pooler_dsn = await stack.enter_async_context(pgbouncer(ctx.admin_dsn))
        results = await run(ctx, params, pooler_dsn)
    bouncer = _pgbouncer_settings()
    table_rows = rows(params, results)
    details: dict[str, Any] = {
        "params": msgspec.to_builtins(params),
        "setups": labels,
        "pgbouncer": bouncer | {"started_here": ctx.pooler_dsn is None},
        "tidebase_pool_size": POOL_SIZE,
        "drain_poll_interval_s": DRAIN_POLL_INTERVAL_S,
        "wake_poll_interval_s": {
            DIRECT: wakeup.POLL_INTERVAL_S,
            LISTEN: wakeup.POLL_INTERVAL_S,
            POLL: params.poll_interval_s,
        },
        "sample_fields": ["latency_ms", "enqueue_ms", "notified_ms", "gc_ms", "checkpoint"],
        "rows": [msgspec.to_builtins(r) | {"ratio": r.ratio()} for r in table_rows],
        "results": msgspec.to_builtins(results),
    }
    return Measurement(
        figures=figures_of(table_rows, labels),
        details=details,
        table=render_table(
            table_rows,
            labels,
            _notes(params, bouncer, ctx.pooler_dsn is None),
            "ratio (PgBouncer + listen_dsn / direct)",
        ),
    )
