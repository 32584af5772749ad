"""Side by side in one run: tidebase-async, pgqueuer, procrastinate and a raw asyncpg
``SKIP LOCKED`` loop (the practical limit), on the same Postgres.

Every system does the same work, each measurement in a fresh database of its own:

- enqueue one at a time: N sequential enqueues of a no-op job, no worker running;
- enqueue a batch: the jobs of each drain, enqueued in calls of 1,000 before it;
- drain: N queued no-op jobs, one in-process worker at concurrency C, timed from its
  first job claimed or started to its last job durably completed;
- idle wake-up: sequential samples, the worker idle with a 30 s poll so that only
  NOTIFY can wake it; latency = enqueue call to job start (for raw: the shortest
  path, insert + NOTIFY, LISTEN callback, claim UPDATE);
- pgqueuer's own drain-benchmark layout (5 consumers, batch 10), as an extra row.

How each peer maps these and which of its settings it uses: the docstrings of
``benchmarks/peers/``. A figure a system fails to measure prints "n/a" with the
reason in a footnote; the run goes on. Figures are interleaved (each figure for every
system in turn) so that background noise spreads over all of them.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import msgspec

from benchmarks.common import Context, Measurement, fresh_database, per_second
from benchmarks.environment import Mode
from benchmarks.peers.base import DrainResult, EnqueueResult, System, WakeParams, WakeResult
from benchmarks.peers.ours import Ours
from benchmarks.peers.pgq_peer import OWN_BENCH_LAYOUT, PgQueuerPeer
from benchmarks.peers.pgq_peer import layout_for as pgq_layout
from benchmarks.peers.proc_peer import POOL_CAP, ProcrastinatePeer
from benchmarks.peers.raw import CLAIM_BATCH, MAX_TASKS, Raw
from benchmarks.report import Figure, percentile

logger = logging.getLogger(__name__)

NAME = "compare"
OURS = "tidebase"
# The ratio's denominators: raw asyncpg is the limit, not a peer.
PEERS = ("pgqueuer", "procrastinate")

T = TypeVar("T")


class Params(msgspec.Struct, frozen=True, kw_only=True):
    one_at_a_time: int
    jobs: int
    concurrencies: tuple[int, ...]
    wake: WakeParams
    batch: int = 1_000


PARAMS: dict[Mode, Params] = {
    "quick": Params(
        one_at_a_time=300,
        jobs=3_000,
        concurrencies=(16,),
        wake=WakeParams(samples=50, warmup=5),
    ),
    "full": Params(
        one_at_a_time=2_000,
        jobs=20_000,
        concurrencies=(1, 16, 128),
        # Random pauses of 0.02..1 s before each sample (the same seeded sequence for
        # every system): a polling system is caught at every phase of its poll.
        wake=WakeParams(samples=300, warmup=10, gap_max_s=1.0),
    ),
}


class Failed(msgspec.Struct, frozen=True):
    reason: str


class Cell(msgspec.Struct, frozen=True, kw_only=True):
    """A value; or n/a with the reason; or neither: not applicable."""

    value: float | None = None
    reason: str | None = None


class Row(msgspec.Struct, frozen=True, kw_only=True):
    figure: str
    unit: str
    higher_is_better: bool
    cells: dict[str, Cell]
    # The systems the ratio is taken against (None: every system but ours).
    peers: tuple[str, ...] | None = PEERS

    def ratio(self) -> float | None:
        """Ours / the best peer, when both were measured."""
        ours = self.cells.get(OURS, Cell()).value
        keys = self.peers if self.peers is not None else [k for k in self.cells if k != OURS]
        peers = [v for key in keys if (v := self.cells.get(key, Cell()).value) is not None]
        if ours is None or not peers:
            return None
        best = max(peers) if self.higher_is_better else min(peers)
        return ours / best if best > 0 else None


def systems() -> list[System]:
    return [Ours(), PgQueuerPeer(), ProcrastinatePeer(), Raw()]


def _describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def attempt(
    ctx: Context, what: str, fn: Callable[[str], Awaitable[T]], timeout_s: float
) -> T | Failed:
    """``fn(dsn)`` on a fresh database, within ``timeout_s``; any failure is returned
    (and logged), never raised, so the other systems and figures still run."""
    deadline = anyio.CancelScope()
    try:
        with anyio.fail_after(timeout_s) as deadline:
            async with fresh_database(ctx.admin_dsn) as dsn:
                return await fn(dsn)
    except Exception as exc:
        timed_out = isinstance(exc, TimeoutError) and deadline.cancelled_caught
        reason = f"did not finish within {timeout_s:g}s" if timed_out else _describe(exc)
    logger.warning("%s: %s", what, reason)
    return Failed(reason)


def _cell(result: Any, value: Callable[[Any], float]) -> Cell:
    if isinstance(result, Failed):
        return Cell(reason=result.reason)
    return Cell(value=value(result))


class Results(msgspec.Struct, kw_only=True):
    one: dict[str, EnqueueResult | Failed]
    drains: dict[int, dict[str, DrainResult | Failed]]
    own_layout: DrainResult | Failed
    wake: dict[str, WakeResult | Failed]


async def run(ctx: Context, params: Params) -> Results:
    peers = systems()
    one_timeout = max(60.0, params.one_at_a_time / 20)
    drain_timeout = max(120.0, params.jobs / 25)
    wake_timeout = 60.0 + (params.wake.samples + params.wake.warmup) * (
        0.5 + max(params.wake.idle_s, params.wake.gap_max_s)
    )

    one: dict[str, EnqueueResult | Failed] = {}
    for s in peers:
        one[s.key] = await attempt(
            ctx,
            f"{s.key}: enqueue one at a time",
            functools.partial(s.enqueue_one_at_a_time, count=params.one_at_a_time),
            one_timeout,
        )

    drains: dict[int, dict[str, DrainResult | Failed]] = {}
    for c in params.concurrencies:
        drains[c] = {}
        for s in peers:
            drains[c][s.key] = await attempt(
                ctx,
                f"{s.key}: drain c={c}",
                functools.partial(
                    s.enqueue_and_drain, count=params.jobs, batch=params.batch, concurrency=c
                ),
                drain_timeout,
            )

    pgq = PgQueuerPeer()
    own_layout = await attempt(
        ctx,
        "pgqueuer: drain, its own benchmark layout",
        functools.partial(
            pgq.drain_with,
            count=params.jobs,
            batch=params.batch,
            layout=OWN_BENCH_LAYOUT,
            concurrency=0,
        ),
        drain_timeout,
    )

    wake: dict[str, WakeResult | Failed] = {}
    for s in peers:
        wake[s.key] = await attempt(
            ctx,
            f"{s.key}: wake-up",
            functools.partial(s.wakeup, params=params.wake),
            wake_timeout,
        )
    return Results(one=one, drains=drains, own_layout=own_layout, wake=wake)


def _latency_percentile(q: float) -> Callable[[Any], float]:
    return lambda r: percentile(r.latencies_ms, q)


def _batch_cell(drains: list[DrainResult | Failed]) -> Cell:
    done = [d for d in drains if isinstance(d, DrainResult)]
    if not done:
        failed = [d for d in drains if isinstance(d, Failed)]
        return Cell(reason=failed[0].reason if failed else "not measured")
    return Cell(value=per_second(sum(d.jobs for d in done), sum(d.enqueue_s for d in done)))


def _cpu_cell(result: DrainResult | Failed, side: str) -> Cell:
    """CPU microseconds per job of a drain (common.CpuClock), or not applicable."""
    if isinstance(result, Failed):
        return Cell(reason=result.reason)
    seconds = result.cpu_client_s if side == "client" else result.cpu_server_s
    if seconds is None or math.isnan(seconds):
        return Cell()
    return Cell(value=seconds / result.jobs * 1e6)


def rows(params: Params, results: Results, keys: list[str]) -> list[Row]:
    n_drains = len(params.concurrencies)
    rounds = f", {n_drains} rounds" if n_drains > 1 else ""
    out = [
        Row(
            figure=f"enqueue one at a time (N={params.one_at_a_time:,})",
            unit="jobs/s",
            higher_is_better=True,
            cells={k: _cell(results.one[k], lambda r: per_second(r.jobs, r.seconds)) for k in keys},
        ),
        Row(
            figure=f"enqueue in batches of {params.batch:,} (N={params.jobs:,}{rounds})",
            unit="jobs/s",
            higher_is_better=True,
            cells={
                k: _batch_cell([results.drains[c][k] for c in params.concurrencies]) for k in keys
            },
        ),
    ]
    for c in params.concurrencies:
        out.append(
            Row(
                figure=f"drain no-op jobs, concurrency {c} (N={params.jobs:,})",
                unit="jobs/s",
                higher_is_better=True,
                cells={
                    k: _cell(results.drains[c][k], lambda r: per_second(r.jobs, r.drain_s))
                    for k in keys
                },
            )
        )
    for c in params.concurrencies:
        for side, label in (("client", "the worker's process"), ("server", "the rest (Postgres)")):
            out.append(
                Row(
                    figure=f"  CPU per job in that drain at concurrency {c}, {label}",
                    unit="us",
                    higher_is_better=False,
                    cells={k: _cpu_cell(results.drains[c][k], side) for k in keys},
                )
            )
    out.append(
        Row(
            figure=f"drain, pgqueuer's own bench layout (N={params.jobs:,})",
            unit="jobs/s",
            higher_is_better=True,
            cells={"pgqueuer": _cell(results.own_layout, lambda r: per_second(r.jobs, r.drain_s))},
        )
    )
    gaps = "" if params.wake.gap_max_s <= params.wake.idle_s else ", random gaps"
    n = f"(n={params.wake.samples}{gaps})"
    for q in (50, 99, 99.9, 100):
        which = "max" if q == 100 else f"p{q:g}"
        out.append(
            Row(
                figure=f"idle wake-up, enqueue to job start, {which} {n}",
                unit="ms",
                higher_is_better=False,
                cells={k: _cell(results.wake[k], _latency_percentile(q)) for k in keys},
            )
        )
    return out


def _number(value: float) -> str:
    if math.isinf(value) or math.isnan(value):
        return str(value)
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"


def _settings_notes(params: Params) -> list[str]:
    cs = ", ".join(str(c) for c in params.concurrencies)
    layouts = {c: pgq_layout(c) for c in params.concurrencies}
    pgq = "; ".join(
        f"C={c}: batch_size={lay.batch_size}, max_concurrent_tasks={lay.max_concurrent_tasks}"
        for c, lay in layouts.items()
    )
    return [
        f"concurrency C = {cs}; each figure on a fresh database; all systems in this process.",
        "tidebase: tide.work(concurrency=C); wake-up: poll_interval=30s, to first step start.",
        f"pgqueuer: one PgQueuer on its own asyncpg connection, {pgq}; durability durable, "
        "pgq autovac applied; wake-up: run() defaults (batch 10, dequeue_timeout=30s).",
        f"pgqueuer's own bench layout: {OWN_BENCH_LAYOUT.consumers} PgQueuers x batch_size "
        f"{OWN_BENCH_LAYOUT.batch_size}, no task cap (its tools/benchmark.py drain).",
        f"procrastinate: PsycopgConnector pool C+1 (cap {POOL_CAP}), psycopg[binary], "
        "run_worker_async(concurrency=C, listen_notify=True); "
        "wake-up: fetch_job_polling_interval=30s, C=16.",
        f"raw asyncpg: min(C, {MAX_TASKS}) tasks, each its own connection, claiming "
        f"min({CLAIM_BATCH}, C) per UPDATE ... FOR UPDATE SKIP LOCKED, then one UPDATE done; "
        "its wake-up: one statement inserts and notifies, the LISTEN callback claims on "
        "a third connection (the shortest path a Postgres queue can take).",
        "CPU per job: from starting the worker to the last job done, this process's "
        "CPU time (the worker; the producer is idle) and the rest of the machine's from "
        "/proc/stat (Postgres on a quiet machine), divided by the jobs; procrastinate's "
        "worker runs in this process too but is not measured ('-').",
        "ratio = tidebase / best of pgqueuer and procrastinate: for jobs/s above 1 is "
        "better for us, for ms below 1 is. '-': not applicable.",
    ]


def render(table_rows: list[Row], labels: dict[str, str], params: Params) -> str:
    return render_table(table_rows, labels, _settings_notes(params), "ratio (ours / best peer)")


def render_table(
    table_rows: list[Row], labels: dict[str, str], notes: list[str], ratio_label: str
) -> str:
    """The side-by-side table (also durable.py's): a column per system in ``labels``,
    the ratio last, then ``notes`` and one footnote per system and failure reason."""
    keys = list(labels)
    # One footnote per system and reason, however many rows it failed.
    footnotes: dict[tuple[str, str], int] = {}
    lines_cells: list[list[str]] = [["figure", *[labels[k] for k in keys], ratio_label]]
    for row in table_rows:
        cells = [f"{row.figure}, {row.unit}"]
        for key in keys:
            cell = row.cells.get(key, Cell())
            if cell.value is not None:
                cells.append(_number(cell.value))
            elif cell.reason is not None:
                mark = footnotes.setdefault((labels[key], cell.reason), len(footnotes) + 1)
                cells.append(f"n/a [{mark}]")
            else:
                cells.append("-")
        ratio = row.ratio()
        cells.append(f"{ratio:.2f}x" if ratio is not None else "")
        lines_cells.append(cells)
    widths = [max(len(r[i]) for r in lines_cells) for i in range(len(lines_cells[0]))]
    lines = []
    for n, r in enumerate(lines_cells):
        text = [
            r[0].ljust(widths[0]),
            *(v.rjust(w) for v, w in zip(r[1:], widths[1:], strict=True)),
        ]
        lines.append("  ".join(text).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.extend("  " + note for note in notes)
    lines.extend(f"  [{mark}] {label}: {why}" for (label, why), mark in footnotes.items())
    return "\n".join(lines)


def figures_of(table_rows: list[Row], labels: dict[str, str]) -> list[Figure]:
    """Every measured cell as a figure named after its row and system."""
    return [
        Figure(name=f"{row.figure.strip()} [{labels[key]}]", value=cell.value, unit=row.unit)
        for row in table_rows
        for key, cell in row.cells.items()
        if cell.value is not None
    ]


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
        figures=figures_of(table_rows, labels),
        details=details,
        table=render(table_rows, labels, params),
    )
