"""Durable workflows side by side: tidebase-async and DBOS Transact (``dbos==3.4.0``)
on the same Postgres, each measurement in a fresh database of its own.

Every system runs workflows of N no-op async steps (each step a durable checkpoint):

- enqueue one at a time: ``one_at_a_time`` sequential enqueues of the 3-step
  workflow, no worker running;
- drain: ``runs`` queued workflows of 3 and of 10 steps, one in-process worker at
  concurrency C, timed from the first step started (tidebase: the worker's first
  claim) to the last workflow durably completed; afterwards the tables must show
  every workflow completed and every step recorded. Figures: workflows/s, steps/s;
- idle wake-up: sequential samples, latency = enqueue call to first step start, with
  a seeded random pause of ``idle_s``..``gap_max_s`` before each sample, so that a
  polling system is met at every phase of its poll, never only its best or worst.

tidebase runs as ``benchmarks/steps.py`` and ``benchmarks/wakeup.py`` measure it
(their functions): ``tide.work(concurrency=C)`` in this process, woken by NOTIFY.
DBOS runs in a child process per measurement (a process-wide singleton), with its
default 1 s queue polling and, labelled apart, a 10 ms fast-polling variant; see
``benchmarks/peers/dbos_peer.py`` for its settings. A figure a system fails to
measure prints "n/a" with the reason; the run goes on. Figures are interleaved (each
figure for every system in turn) so that background noise spreads over all of them.
"""

from __future__ import annotations

import functools
from typing import Any, Protocol

import msgspec

from benchmarks import compare, throughput
from benchmarks import steps as steps_bench
from benchmarks.common import Context, Measurement, per_second
from benchmarks.environment import Mode
from benchmarks.peers import dbos_peer
from benchmarks.peers.base import DrainResult, EnqueueResult, WakeParams, WakeResult
from benchmarks.peers.ours import Ours
from benchmarks.report import percentile
from tidebase_async import Tidebase

NAME = "durable"
OURS = "tidebase"
ENQUEUE_STEPS = 3
# The slowest poll among the systems: it bounds a drain at C workflows per poll.
SLOWEST_POLL_S = dbos_peer.DEFAULT_POLL_S
PERCENTILES = (50, 95, 99, 99.9, 100)


class Params(msgspec.Struct, frozen=True, kw_only=True):
    one_at_a_time: int
    runs: int
    steps: tuple[int, ...]
    concurrencies: tuple[int, ...]
    wake: WakeParams


PARAMS: dict[Mode, Params] = {
    "quick": Params(
        one_at_a_time=200,
        runs=200,
        steps=(3, 10),
        concurrencies=(16,),
        wake=WakeParams(samples=20, warmup=3, gap_max_s=1.0),
    ),
    # A DBOS drain at its default 1 s poll runs about 15 workflows/s at concurrency
    # 16: 1,000 workflows keep each of its drains near a minute. 300 wake-ups per
    # system (the 1,000-sample tail of ours alone is benchmarks/wakeup.py's).
    "full": Params(
        one_at_a_time=2_000,
        runs=1_000,
        steps=(3, 10),
        concurrencies=(16, 128),
        wake=WakeParams(samples=300, warmup=10, gap_max_s=1.0),
    ),
}


class DurableSystem(Protocol):
    key: str
    label: str

    async def enqueue_one_at_a_time(self, dsn: str, count: int, steps: int) -> EnqueueResult: ...

    async def drain(
        self, dsn: str, count: int, steps: int, concurrency: int, timeout_s: float
    ) -> DrainResult: ...

    async def wakeup(self, dsn: str, params: WakeParams) -> WakeResult: ...


class Tide:
    """tidebase-async through ``benchmarks/steps.py``, ``throughput.py``, ``wakeup.py``."""

    key = OURS
    label = "tidebase"

    async def enqueue_one_at_a_time(self, dsn: str, count: int, steps: int) -> EnqueueResult:
        workflow = steps_bench.workflow_name(steps)
        tide = Tidebase(dsn)
        steps_bench.register_steps(tide, steps)
        async with tide:
            seconds = await throughput.enqueue_one_at_a_time(tide, count, workflow=workflow)
        return EnqueueResult(jobs=count, seconds=seconds, settings={"call": "tide.enqueue"})

    async def drain(
        self, dsn: str, count: int, steps: int, concurrency: int, timeout_s: float
    ) -> DrainResult:
        tide = Tidebase(dsn)
        steps_bench.register_steps(tide, steps)
        async with tide:
            done = await steps_bench.drain_steps(tide, count, concurrency, steps=steps)
        return DrainResult(
            jobs=count,
            concurrency=concurrency,
            enqueue_s=done.enqueue_s,
            startup_s=done.timing.startup_s,
            drain_s=done.timing.drain_s,
            settings={
                "enqueue": f"tide.enqueue_many, calls of {steps_bench.BATCH:,}",
                "worker": f"tide.work(concurrency={concurrency}), in process",
                "timed": "first claim to last completion, in the worker's counters",
                "worker_stats": done.timing.stats,
            },
        )

    async def wakeup(self, dsn: str, params: WakeParams) -> WakeResult:
        return await Ours().wakeup(dsn, params)


def systems() -> list[DurableSystem]:
    return [Tide(), *dbos_peer.peers()]


Outcome = Any  # a result struct, or compare.Failed


class Results(msgspec.Struct, kw_only=True):
    one: dict[str, EnqueueResult | compare.Failed]
    # "<steps>x<concurrency>" -> system -> drain
    drains: dict[str, dict[str, DrainResult | compare.Failed]]
    wake: dict[str, WakeResult | compare.Failed]


def _drain_key(n: int, c: int) -> str:
    return f"{n}x{c}"


def drain_timeout(runs: int, concurrency: int) -> float:
    """Long enough for a worker that claims ``concurrency`` workflows per slowest poll,
    and for one that manages only 10 workflows/s (DBOS's at C=128 on a busy machine)."""
    return 120.0 + max(2 * runs * SLOWEST_POLL_S / concurrency, runs / 10)


async def run(ctx: Context, params: Params) -> Results:
    peers = systems()
    one_timeout = max(120.0, params.one_at_a_time / 20)
    wake_timeout = 120.0 + (params.wake.samples + params.wake.warmup) * (
        SLOWEST_POLL_S + 0.5 + max(params.wake.idle_s, params.wake.gap_max_s)
    )

    one: dict[str, EnqueueResult | compare.Failed] = {}
    for s in peers:
        one[s.key] = await compare.attempt(
            ctx,
            f"{s.key}: enqueue one at a time",
            functools.partial(
                s.enqueue_one_at_a_time, count=params.one_at_a_time, steps=ENQUEUE_STEPS
            ),
            one_timeout,
        )

    drains: dict[str, dict[str, DrainResult | compare.Failed]] = {}
    for n in params.steps:
        for c in params.concurrencies:
            key = _drain_key(n, c)
            timeout_s = drain_timeout(params.runs, c)
            drains[key] = {}
            for s in peers:
                drains[key][s.key] = await compare.attempt(
                    ctx,
                    f"{s.key}: drain {n}-step workflows c={c}",
                    functools.partial(
                        s.drain, count=params.runs, steps=n, concurrency=c, timeout_s=timeout_s
                    ),
                    timeout_s,
                )

    wake: dict[str, WakeResult | compare.Failed] = {}
    for s in peers:
        wake[s.key] = await compare.attempt(
            ctx, f"{s.key}: wake-up", functools.partial(s.wakeup, params=params.wake), wake_timeout
        )
    return Results(one=one, drains=drains, wake=wake)


def _row(
    *, figure: str, unit: str, higher_is_better: bool, cells: dict[str, compare.Cell]
) -> compare.Row:
    """A row whose ratio is ours / the best DBOS variant."""
    return compare.Row(
        figure=figure, unit=unit, higher_is_better=higher_is_better, cells=cells, peers=None
    )


def _cell(outcome: Outcome, value: Any) -> compare.Cell:
    if isinstance(outcome, compare.Failed):
        return compare.Cell(reason=outcome.reason)
    return compare.Cell(value=float(value(outcome)))


def rows(params: Params, results: Results, keys: list[str]) -> list[compare.Row]:
    out = [
        _row(
            figure=f"enqueue one at a time, {ENQUEUE_STEPS}-step workflow "
            f"(N={params.one_at_a_time:,})",
            unit="workflows/s",
            higher_is_better=True,
            cells={k: _cell(results.one[k], lambda r: per_second(r.jobs, r.seconds)) for k in keys},
        )
    ]
    for n in params.steps:
        for c in params.concurrencies:
            drains = results.drains[_drain_key(n, c)]
            what = f"drain {n}-step workflows, concurrency {c} (N={params.runs:,})"
            out.append(
                _row(
                    figure=what,
                    unit="workflows/s",
                    higher_is_better=True,
                    cells={
                        k: _cell(drains[k], lambda r: per_second(r.jobs, r.drain_s)) for k in keys
                    },
                )
            )
            out.append(
                _row(
                    figure="  the same, steps",
                    unit="steps/s",
                    higher_is_better=True,
                    cells={
                        k: _cell(drains[k], lambda r, n=n: per_second(r.jobs * n, r.drain_s))
                        for k in keys
                    },
                )
            )
    w = params.wake
    n_wake = f"(n={w.samples}, gaps {w.idle_s:g}..{w.gap_max_s:g} s)"
    for q in PERCENTILES:
        which = "max" if q == 100 else f"p{q:g}"
        out.append(
            _row(
                figure=f"idle wake-up, enqueue to first step, {which} {n_wake}",
                unit="ms",
                higher_is_better=False,
                cells={
                    k: _cell(results.wake[k], lambda r, q=q: percentile(r.latencies_ms, q))
                    for k in keys
                },
            )
        )
    return out


def _settings_notes(params: Params) -> list[str]:
    cs = ", ".join(str(c) for c in params.concurrencies)
    return [
        f"concurrency C = {cs}; each figure on a fresh database; tidebase in this process, "
        "DBOS in a child process per figure (a process-wide singleton).",
        "tidebase: no-op async run.step()s, tide.enqueue_many then tide.work(concurrency=C) "
        "(benchmarks/steps.py); wake-up: tide.work(concurrency=16, poll_interval=30s), "
        "woken by NOTIFY.",
        f"DBOS {_dbos_version()}: async @DBOS.workflow / @DBOS.step no-ops; "
        "DBOSConfig defaults (sys_db_pool_size 20, use_listen_notify, durable commits), "
        "log_level WARNING; DBOS.enqueue_workflow_async one at a time; "
        "DBOS.register_queue_async(worker_concurrency=C, polling_interval_sec=P), "
        "registered after the enqueues; wake-up C=16.",
        f"DBOS queues poll (no NOTIFY path): 'DBOS (1 s poll, default)' is P = "
        f"{dbos_peer.DEFAULT_POLL_S:g} s (its default), 'DBOS (10 ms poll)' is P = "
        f"{dbos_peer.FAST_POLL_S * 1000:g} ms (fast polling). A drain claims at most C - "
        "running per poll.",
        "drains timed from the first step start (tidebase: first claim) to the last "
        "workflow durably completed; every workflow and step checked in the tables.",
        "ratio = tidebase / best DBOS variant: for workflows/s above 1 is better for us, "
        "for ms below 1 is.",
    ]


def _dbos_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dbos_peer.PACKAGE)
    except PackageNotFoundError:
        return "(not installed)"


def render(table_rows: list[compare.Row], labels: dict[str, str], params: Params) -> str:
    return compare.render_table(
        table_rows, labels, _settings_notes(params), "ratio (ours / best DBOS)"
    )


async def measure(ctx: Context) -> Measurement:
    params = PARAMS[ctx.mode]
    labels = {s.key: s.label for s in systems()}
    results = await run(ctx, params)
    table_rows = rows(params, results, list(labels))
    details: dict[str, Any] = {
        "params": msgspec.to_builtins(params),
        "systems": labels,
        "rows": [msgspec.to_builtins(r) | {"ratio": r.ratio()} for r in table_rows],
        "results": msgspec.to_builtins(results),
    }
    return Measurement(
        figures=compare.figures_of(table_rows, labels),
        details=details,
        table=render(table_rows, labels, params),
    )
