"""Dashboard overview at scale: seed runs spread over 7 days (mixed statuses, workflows
and queues, with usage records), time the reconciler's rollup catching up, then time
``GET /overview`` (each range) and ``GET /workflows/{name}`` through the real HTTP app
(aiohttp on 127.0.0.1), and check with EXPLAIN that no page-load statement scans
``runs`` sequentially.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import httpx
import msgspec
from aiohttp import web

from benchmarks.common import BenchmarkError, Context, Measurement, fresh_tidebase
from benchmarks.environment import Mode
from benchmarks.report import Figure, Target, percentile
from tidebase_async import Tidebase
from tidebase_async.store.sql import Q

NAME = "overview"
#: The issue's goal: the overview loads in under 300 ms with 1,000,000 runs.
LOAD_TARGET = Target("<=", 300.0)
RANGES = ("1h", "6h", "24h", "7d")
LOADS = 20
ROLLUP_LAG_S = 60.0
ROLLUP_RUNS = 20_000


class Params(msgspec.Struct, frozen=True, kw_only=True):
    runs: int
    usage_every: int = 5
    loads: int = LOADS


PARAMS: dict[Mode, Params] = {
    "quick": Params(runs=100_000),
    "full": Params(runs=1_000_000),
}

# Statuses by i % 100: 85 completed, 8 failed, 3 cancelled, 2 queued, 2 waiting.
_SEED = """
INSERT INTO tidebase.runs
  (id, workflow, queue, status, version, max_attempts, run_at, created_at, started_at,
   finished_at, updated_at, error)
SELECT gen_random_uuid(), 'wf-' || (i % 12), 'q-' || (i % 4), s.status,
       CASE WHEN i % 3 = 0 THEN 'v2' END, 3, c.at, c.at,
       CASE WHEN s.status IN ('completed', 'failed')
            THEN c.at + make_interval(secs => (i % 7) * 0.05) END,
       CASE WHEN s.status IN ('completed', 'failed', 'cancelled')
            THEN c.at + make_interval(secs => (i % 7) * 0.05 + (i % 50) * 0.2) END,
       c.at,
       CASE WHEN s.status = 'failed'
            THEN jsonb_build_object('type', 'ValueError', 'message', 'failed ' || i) END
FROM generate_series(1, $1::int) AS i,
LATERAL (SELECT now() - make_interval(secs => 7 * 86400.0 * ($1 - i) / $1) AS at) AS c,
LATERAL (SELECT CASE WHEN i % 100 < 85 THEN 'completed' WHEN i % 100 < 93 THEN 'failed'
                     WHEN i % 100 < 96 THEN 'cancelled' WHEN i % 100 < 98 THEN 'queued'
                     ELSE 'waiting' END AS status) AS s
"""
_SEED_USAGE = """
INSERT INTO tidebase.usage
  (run_id, position, seq, workflow, kind, provider, model, input_tokens, output_tokens,
   cost_usd, recorded_at)
SELECT id, 0, 0, workflow, 'llm', 'openai', CASE WHEN n % 2 = 0 THEN 'gpt-a' ELSE 'gpt-b' END,
       1000 + n % 500, 200 + n % 100, 0.001 * (n % 7), COALESCE(finished_at, created_at)
FROM (SELECT id, workflow, created_at, finished_at, row_number() OVER () AS n
      FROM tidebase.runs) AS r
WHERE n % $1 = 0
"""


def register(tide: Tidebase) -> None:
    """Nothing to register: runs are seeded in SQL."""


async def _seed(tide: Tidebase, params: Params) -> dict[str, float]:
    t0 = time.perf_counter()
    async with tide.store.connection() as conn:
        await conn.execute(_SEED, params.runs)
        t1 = time.perf_counter()
        await conn.execute(_SEED_USAGE, params.usage_every)
        await conn.execute("VACUUM (ANALYZE) tidebase.runs, tidebase.usage")
    return {"seed_runs_s": round(t1 - t0, 2), "seed_total_s": round(time.perf_counter() - t0, 2)}


async def _catch_up(tide: Tidebase) -> tuple[float, int]:
    t0 = time.perf_counter()
    chunks = 0
    while await tide.store.roll_up_stats(lag_s=ROLLUP_LAG_S, max_runs=ROLLUP_RUNS) is not None:
        chunks += 1
    return time.perf_counter() - t0, chunks


async def _time_loads(client: httpx.AsyncClient, path: str, loads: int) -> list[float]:
    await client.get(path)  # warm up (prepared statements, caches)
    times = []
    for _ in range(loads):
        t0 = time.perf_counter()
        resp = await client.get(path)
        times.append((time.perf_counter() - t0) * 1000)
        if resp.status_code != 200:
            raise BenchmarkError(f"GET {path}: {resp.status_code} {resp.text[:200]}")
    return times


async def _plans(tide: Tidebase, *, strict: bool) -> dict[str, list[str]]:
    """EXPLAIN (ANALYZE) of each page-load statement: its scans and index conditions;
    with ``strict`` (a table large enough for the planner to prefer its indexes), a
    sequential scan of runs or usage is an error."""
    now = await tide.store.db_now()
    start_7d = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=167)
    start_1h = now.replace(second=0, microsecond=0) - timedelta(minutes=59)
    statements: dict[str, tuple[str, tuple[Any, ...]]] = {
        "run_stats_range 7d": (Q["run_stats_range"], (start_7d, 3600, None)),
        "run_stats_range 1h": (Q["run_stats_range"], (start_1h, 60, None)),
        "run_stats_range 7d, one workflow": (Q["run_stats_range"], (start_7d, 3600, "wf-1")),
        "usage_by_day 7d": (Q["usage_by_day"], (start_7d, 3600)),
        "queue_overview": (Q["queue_overview"], (10_000, 200)),
        "latest_failures": (Q["latest_failures"], ([f"wf-{i}" for i in range(5)], 1)),
    }
    out: dict[str, list[str]] = {}
    async with tide.store.connection() as conn:
        for name, (sql, args) in statements.items():
            rows = await conn.fetch("EXPLAIN (ANALYZE, COSTS OFF) " + sql, *args)
            lines = [r[0] for r in rows]
            seq = [ln for ln in lines if "Seq Scan on runs" in ln or "Seq Scan on usage " in ln]
            if seq and strict:
                raise BenchmarkError(f"{name}: sequential scan: {seq}")
            out[name] = [
                ln.strip()
                for ln in lines
                if "Scan" in ln or "Execution Time" in ln or "Index Cond" in ln
            ]
    return out


async def measure(ctx: Context, params: Params | None = None) -> Measurement:
    params = params or PARAMS[ctx.mode]
    async with fresh_tidebase(ctx, register) as tide:
        seeded = await _seed(tide, params)
        catch_up_s, chunks = await _catch_up(tide)
        app = web.Application()
        app.add_subapp("/tidebase/", tide.http_app())
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        timings: dict[str, list[float]] = {}
        try:
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=60
            ) as client:
                for r in RANGES:
                    timings[f"GET /overview?range={r}"] = await _time_loads(
                        client, f"/tidebase/overview?range={r}", params.loads
                    )
                for r in ("1h", "7d"):
                    timings[f"GET /workflows/wf-1?range={r}"] = await _time_loads(
                        client, f"/tidebase/workflows/wf-1?range={r}", params.loads
                    )
        finally:
            await runner.cleanup()
        plans = await _plans(tide, strict=params.runs >= 100_000)
    figures = [
        Figure(
            name=f"rollup catch-up ({params.runs:,} runs, {chunks} chunks)",
            value=catch_up_s,
            unit="s",
        )
    ]
    rows = []
    for path, times in timings.items():
        p50, p95, top = percentile(times, 50), percentile(times, 95), max(times)
        rows.append(f"{path:<34} {p50:>8.1f} {p95:>8.1f} {top:>8.1f}")
        figures.append(
            Figure(
                name=f"{path} p95 ({params.runs:,} runs)", value=p95, unit="ms", target=LOAD_TARGET
            )
        )
    table = "\n".join([f"{'request':<34} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}", *rows])
    print(table)
    return Measurement(
        figures=figures,
        details={
            "runs": params.runs,
            **seeded,
            "catch_up_s": round(catch_up_s, 2),
            "chunks": chunks,
            "timings_ms": {k: [round(t, 2) for t in v] for k, v in timings.items()},
            "plans": plans,
        },
    )
