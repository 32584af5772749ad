"""Claim latency with a small and a big queue: does a claim cost O(1) in the queue size?

For each size, in a fresh database: insert that many due queued runs with one
``INSERT ... SELECT generate_series`` (the rows ``enqueue_runs`` writes, ids time
ordered like uuid7; event_seq 1, the derived ``run.created``), then
time ``Store.claim(limit=16)`` called back to back on the library's own pool (the
prepared statement and plan cache a worker has). The first claims are discarded
(statement preparation). Each claim takes 16 runs off the queue, as a worker's would;
the runs they take are inserted on top, so the queue never holds fewer than the size.
A claim's latency is mostly its commit (a WAL flush); the server-side time of the
statement alone comes from repeated ``EXPLAIN ANALYZE`` (rolled back) and is printed
beside it.

Both sizes are measured side by side (two databases; their claims alternate in rounds
of 10), so that other load on the machine falls on both alike. Two states of the
table statistics, each in its own pair of databases:

- ``analysed``: ``ANALYZE tidebase.runs`` after the insert;
- ``not analysed``: measured straight after the insert, as a worker sees a queue that
  just grew, before autovacuum analyses it.

Autovacuum is switched off for ``tidebase.runs`` in both, so that neither state
changes while it is measured. An ``EXPLAIN ANALYZE`` of the claim statement (rolled
back) and the generic plan are kept in the JSON, with a summary of the access path.

Quick mode compares 10k with 100k queued runs, full mode 10k with 1M (the target).
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from typing import Any, Literal

import msgspec

from benchmarks.common import (
    BenchmarkError,
    Context,
    Measurement,
    connect,
    fresh_tidebase,
)
from benchmarks.environment import Mode
from benchmarks.report import Figure, Target, percentile
from tidebase_async import Run, Tidebase
from tidebase_async.store.sql import Q

NAME = "scale"
WORKFLOW = "scale-noop"
QUEUE = "default"
CLAIM_LIMIT = 16
LEASE_S = 3600.0
WORKER_ID = "bench-scale"
# Claims per turn when the two sizes alternate.
ROUND = 10

RATIO_TARGET = Target("<=", 1.3)

Stats = Literal["analysed", "not analysed"]
STATES: tuple[Stats, ...] = ("analysed", "not analysed")


class Params(msgspec.Struct, frozen=True, kw_only=True):
    sizes: tuple[int, int]
    claims: int = 200
    warmup: int = 5
    # A state whose claims are slow stops after this long (with at least min_claims).
    budget_s: float
    min_claims: int = 20
    # EXPLAIN ANALYZE of the claim statement, rolled back: its server-side time
    # without the commit (whose flush dominates the latency of a claim).
    explains: int = 20


PARAMS: dict[Mode, Params] = {
    "quick": Params(sizes=(10_000, 100_000), budget_s=20.0),
    "full": Params(sizes=(10_000, 1_000_000), budget_s=120.0),
}

# $1 count. Due an hour ago, one microsecond apart; ids are uuid7-shaped (48-bit
# milliseconds, version 7, variant 8) and unique through the row number.
INSERT_QUEUED = f"""
WITH b AS (
  SELECT tidebase.now() - interval '1 hour' AS t,
         (extract(epoch FROM tidebase.now() - interval '1 hour') * 1000)::bigint AS ms
)
INSERT INTO tidebase.runs
  (id, workflow, queue, status, input, priority, max_attempts, run_at, created_at,
   updated_at, event_seq)
SELECT (lpad(to_hex(b.ms + g.i / 1000), 12, '0') || '7' || lpad(to_hex(g.i % 4096), 3, '0')
        || '8' || lpad(to_hex(g.i), 15, '0'))::uuid,
       '{WORKFLOW}', '{QUEUE}', 'queued', 'null'::jsonb, 0, 3,
       b.t + g.i * interval '1 microsecond', b.t + g.i * interval '1 microsecond',
       b.t + g.i * interval '1 microsecond', 1
FROM b, generate_series(1, $1) AS g(i)
"""

TABLE_STATS = """
SELECT c.reltuples::float8 AS reltuples, c.relpages, s.n_live_tup, s.n_dead_tup,
       s.last_analyze IS NOT NULL AS analysed,
       s.last_autoanalyze IS NOT NULL AS autoanalysed,
       s.last_autovacuum IS NOT NULL AS autovacuumed
FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE c.oid = 'tidebase.runs'::regclass
"""


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    access: str
    sort: bool
    # "Execution Time" of each EXPLAIN ANALYZE; ``text`` is the first one.
    execution_ms: list[float]
    text: str
    generic_access: str
    generic_sort: bool
    generic_text: str


class Series(msgspec.Struct, frozen=True, kw_only=True):
    size: int
    stats: Stats
    inserted: int
    insert_s: float
    analyze_s: float | None
    plan: Plan
    latencies_ms: list[float]
    claimed_per_call: list[int]
    table_after: dict[str, Any]

    @property
    def p50(self) -> float:
        return percentile(self.latencies_ms, 50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies_ms, 99)

    @property
    def server_p50(self) -> float:
        return percentile(self.plan.execution_ms, 50) if self.plan.execution_ms else math.nan


def register(tide: Tidebase) -> None:
    @tide.workflow(WORKFLOW, queue=QUEUE)
    async def noop(run: Run, input: Any) -> None:
        return None


_ACCESS = re.compile(r"(Seq Scan|Index Only Scan|Index Scan|Bitmap Heap Scan)(?: using (\w+))?")


def summarise(plan: str) -> tuple[str, bool]:
    """Access path of the claim's ``picked`` CTE and whether it sorts."""
    lines = plan.splitlines()
    start = next((i for i, line in enumerate(lines) if "CTE picked" in line), 0)
    end = next(
        (i for i, line in enumerate(lines) if i > start and "CTE claimed" in line), len(lines)
    )
    picked = lines[start:end]
    access = "?"
    for line in picked:
        m = _ACCESS.search(line)
        # The queue-controls check (an InitPlan on queues) comes first: the access
        # path to report is the one into runs.
        if m and " on runs" in line:
            access = f"{m.group(1)} {m.group(2)}" if m.group(2) else m.group(1)
            break
    return access, any(re.search(r"\bSort\b", line) for line in picked)


async def claim_args(conn: Any) -> list[Any]:
    """Arguments for ``claim_runs_one`` in its parameter order, told apart by type
    (worker then queue as text, the limit an integer, the lease a float): the order
    is the library's to change."""
    stmt = await conn.prepare(Q["claim_runs_one"])
    texts = [WORKER_ID, QUEUE]
    args: list[Any] = []
    for param in stmt.get_parameters():
        if param.name == "text" and texts:
            args.append(texts.pop(0))
        elif param.name in ("int2", "int4", "int8"):
            args.append(CLAIM_LIMIT)
        elif param.name in ("float4", "float8", "numeric"):
            args.append(LEASE_S)
        elif param.name in ("_text", "text[]"):
            args.append([])  # the worker's workflow versions: none
        else:
            raise BenchmarkError(
                f"claim_runs_one takes a {param.name} parameter now; update benchmarks/scale.py"
            )
    return args


def _literal(value: Any) -> str:
    if isinstance(value, list):
        return "'{}'::text[]" if not value else "ARRAY[" + ", ".join(map(_literal, value)) + "]"
    return f"'{value}'" if isinstance(value, str) else repr(value)


async def explain(dsn: str, repeats: int) -> Plan:
    """EXPLAIN ANALYZE of the claim, ``repeats`` times (each rolled back), and the
    generic plan (EXPLAIN EXECUTE of the statement prepared with plan_cache_mode =
    force_generic_plan)."""
    texts: list[str] = []
    async with connect(dsn) as conn:
        args = await claim_args(conn)
        for _ in range(max(1, repeats)):
            tr = conn.transaction()
            await tr.start()
            try:
                rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + Q["claim_runs_one"], *args)
            finally:
                await tr.rollback()
            texts.append("\n".join(str(r[0]) for r in rows))
        text = texts[0]
        # The plan a prepared statement switches to after five executions when it
        # costs no more than the custom ones (plan_cache_mode = auto).
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute("PREPARE bench_claim AS " + Q["claim_runs_one"])
        literals = ", ".join(_literal(a) for a in args)
        rows = await conn.fetch(f"EXPLAIN EXECUTE bench_claim ({literals})")
        generic = "\n".join(str(r[0]) for r in rows)
    access, sort = summarise(text)
    generic_access, generic_sort = summarise(generic)
    times = [re.search(r"Execution Time: ([\d.]+) ms", t) for t in texts]
    return Plan(
        access=access,
        sort=sort,
        execution_ms=[float(m.group(1)) for m in times if m],
        text=text,
        generic_access=generic_access,
        generic_sort=generic_sort,
        generic_text=generic,
    )


async def claim_once(tide: Tidebase) -> tuple[float, int]:
    """Milliseconds for one ``Store.claim`` call, and how many runs it returned."""
    t0 = time.perf_counter()
    got = await tide.store.claim(
        worker_id=WORKER_ID, queues=[QUEUE], limit=CLAIM_LIMIT, lease_s=LEASE_S
    )
    return (time.perf_counter() - t0) * 1000, len(got)


class Prepared(msgspec.Struct, kw_only=True):
    size: int
    inserted: int
    insert_s: float
    analyze_s: float | None


async def prepare(tide: Tidebase, params: Params, size: int, stats: Stats) -> Prepared:
    """Fill the queue (and ANALYZE it when asked), autovacuum off for the table."""
    assert tide.dsn is not None
    async with connect(tide.dsn) as conn:
        await conn.execute("ALTER TABLE tidebase.runs SET (autovacuum_enabled = off)")
        # The claims take runs off the queue: insert those on top, so that it holds
        # at least ``size`` runs until the last claim.
        inserted = size + (params.warmup + params.claims) * CLAIM_LIMIT
        t0 = time.perf_counter()
        await conn.execute(INSERT_QUEUED, inserted)
        insert_s = time.perf_counter() - t0
        analyze_s = None
        if stats == "analysed":
            t0 = time.perf_counter()
            await conn.execute("ANALYZE tidebase.runs")
            analyze_s = time.perf_counter() - t0
    return Prepared(size=size, inserted=inserted, insert_s=insert_s, analyze_s=analyze_s)


async def measure_state(ctx: Context, params: Params, stats: Stats) -> list[Series]:
    """Both sizes in one state, in two databases side by side. Their claims alternate
    in rounds, so that load from elsewhere on the machine falls on both alike."""
    async with contextlib.AsyncExitStack() as stack:
        tides = [
            await stack.enter_async_context(fresh_tidebase(ctx, register)) for _ in params.sizes
        ]
        prepared = [
            await prepare(tide, params, size, stats)
            for tide, size in zip(tides, params.sizes, strict=True)
        ]
        plans = []
        for tide in tides:
            assert tide.dsn is not None
            plans.append(await explain(tide.dsn, params.explains))
        for tide in tides:
            for _ in range(params.warmup):
                await claim_once(tide)
        latencies: list[list[float]] = [[] for _ in tides]
        counts: list[list[int]] = [[] for _ in tides]
        deadline = time.perf_counter() + params.budget_s
        while len(latencies[0]) < params.claims:
            if len(latencies[0]) >= params.min_claims and time.perf_counter() > deadline:
                break
            for i, tide in enumerate(tides):
                for _ in range(min(ROUND, params.claims - len(latencies[i]))):
                    ms, n = await claim_once(tide)
                    latencies[i].append(ms)
                    counts[i].append(n)
        after: list[dict[str, Any]] = []
        for tide in tides:
            assert tide.dsn is not None
            async with connect(tide.dsn) as conn:
                row = await conn.fetchrow(TABLE_STATS)
            after.append(dict(row) if row is not None else {})
    result: list[Series] = []
    for i, prep in enumerate(prepared):
        if any(c != CLAIM_LIMIT for c in counts[i]):
            raise BenchmarkError(
                f"scale {prep.size:,} {stats}: a claim returned fewer than {CLAIM_LIMIT} runs"
            )
        result.append(
            Series(
                size=prep.size,
                stats=stats,
                inserted=prep.inserted,
                insert_s=prep.insert_s,
                analyze_s=prep.analyze_s,
                plan=plans[i],
                latencies_ms=latencies[i],
                claimed_per_call=counts[i],
                table_after=after[i],
            )
        )
    return result


def _label(size: int) -> str:
    return f"{size // 1_000_000}M" if size >= 1_000_000 else f"{size // 1_000}k"


def _figures(params: Params, all_series: list[Series]) -> list[Figure]:
    small, big = params.sizes
    by = {(s.size, s.stats): s for s in all_series}
    figures: list[Figure] = []
    for stats in STATES:
        for size in (small, big):
            s = by[(size, stats)]
            plan = s.plan.access + (" + sort" if s.plan.sort else "")
            generic = s.plan.generic_access + (" + sort" if s.plan.generic_sort else "")
            if generic != plan:
                plan += f"; generic plan: {generic}"
            n = len(s.latencies_ms)
            name = f"{stats}, {_label(size)} queued: claim p50 (n={n}; {plan})"
            figures.append(Figure(name=name, value=s.p50, unit="ms"))
            figures.append(Figure(name="  p99", value=s.p99, unit="ms"))
            figures.append(
                Figure(
                    name=f"  server execution p50 (EXPLAIN ANALYZE, n={len(s.plan.execution_ms)})",
                    value=s.server_p50,
                    unit="ms",
                )
            )
        ratio_name = f"{stats}: p50 {_label(big)} / {_label(small)}"
        if big < 1_000_000:
            ratio_name += " (quick mode; the target is for 1M)"
        figures.append(
            Figure(
                name=ratio_name,
                value=by[(big, stats)].p50 / by[(small, stats)].p50,
                unit="x",
                target=RATIO_TARGET,
            )
        )
        figures.append(
            Figure(
                name=f"  p99 {_label(big)} / {_label(small)}",
                value=by[(big, stats)].p99 / by[(small, stats)].p99,
                unit="x",
            )
        )
        figures.append(
            Figure(
                name=f"  server execution p50 {_label(big)} / {_label(small)}",
                value=by[(big, stats)].server_p50 / by[(small, stats)].server_p50,
                unit="x",
            )
        )
    return figures


async def measure(ctx: Context) -> Measurement:
    params = PARAMS[ctx.mode]
    all_series = [s for stats in STATES for s in await measure_state(ctx, params, stats)]
    details: dict[str, Any] = {
        "params": msgspec.to_builtins(params),
        "claim_limit": CLAIM_LIMIT,
        "autovacuum_enabled": False,
        "series": [
            msgspec.to_builtins(s)
            | {"p50_ms": s.p50, "p99_ms": s.p99, "server_p50_ms": s.server_p50}
            for s in all_series
        ],
    }
    return Measurement(figures=_figures(params, all_series), details=details)
