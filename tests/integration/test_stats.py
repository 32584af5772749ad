"""Dashboard rollups and reads (``tide.stats``, ``GET /overview``, ``GET /workflows/{name}``):
rollup rows equal exact counts and histogram buckets of seeded runs, minute boundaries,
idempotent recomputes, backfill in chunks, late commits inside the safety lag, the
endpoints' JSON and their errors."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

import anyio
import asyncpg

from tests.integration.core_support import eventually, working
from tests.integration.web_support import API_KEY, bearer, error_of, serve
from tidebase_async import Run, Tidebase
from tidebase_async.client.stats import percentile
from tidebase_async.store.sql import Q

LAG_S = 60.0

#: Seeded rows: (workflow, version, status, created offset s, started offset s or None,
#: finished offset s or None), offsets from a whole minute two hours ago.
SEED = [
    ("alpha", None, "completed", 0.0, 0.5, 2.5),  # 2000 ms, wait 500 ms
    ("alpha", None, "completed", 10.0, 10.003, 10.013),  # 10 ms, wait 3 ms
    ("alpha", "v2", "failed", 20.0, 21.0, 59.999),  # finishes at :59.999 of minute 0
    ("alpha", "v2", "completed", 30.0, 30.0, 60.0),  # finishes at :00.000 of minute 1
    ("beta", None, "cancelled", 59.999, None, 61.0),  # created at the end of minute 0
    ("beta", None, "failed", 60.0, 62.0, 125.0),  # minute 1 -> minute 2
    ("beta", None, "queued", 121.0, None, None),
]


def bucket_of(ms: float) -> int:
    return 0 if ms < 1 else min(59, 1 + math.floor(2 * math.log(ms) / math.log(2)))


async def seed(db: asyncpg.Connection, base: datetime, rows: list[Any] = SEED) -> None:
    for i, (wf, version, status, created, started, finished) in enumerate(rows):
        at = base + timedelta(seconds=created)
        await db.execute(
            """INSERT INTO tidebase.runs (id, workflow, version, queue, status, max_attempts,
                 run_at, created_at, started_at, finished_at, updated_at, error)
               VALUES (gen_random_uuid(), $1, $2, 'default', $3, 1, $4, $4, $5, $6, $4, $7)""",
            wf,
            version,
            status,
            at,
            None if started is None else base + timedelta(seconds=started),
            None if finished is None else base + timedelta(seconds=finished),
            f'{{"type": "Boom", "message": "boom {i}"}}' if status == "failed" else None,
        )


def expected(rows: list[Any], base: datetime) -> dict[tuple[int, str, str | None], dict[str, Any]]:
    """(minute offset, workflow, version) -> the rollup row the seeded runs must give."""
    out: dict[tuple[int, str, str | None], dict[str, Any]] = {}

    def row(minute: int, wf: str, version: str | None) -> dict[str, Any]:
        return out.setdefault(
            (minute, wf, version),
            {
                "created": 0,
                "completed": 0,
                "failed": 0,
                "cancelled": 0,
                "duration": [0] * 60,
                "wait": [0] * 60,
            },
        )

    for wf, version, status, created, started, finished in rows:
        row(math.floor(created / 60), wf, version)["created"] += 1
        if finished is None:
            continue
        r = row(math.floor(finished / 60), wf, version)
        r[status] += 1
        if started is not None:
            if status != "cancelled":
                r["duration"][bucket_of((finished - started) * 1000)] += 1
            r["wait"][bucket_of((started - created) * 1000)] += 1
    return out


async def base_minute(db: asyncpg.Connection) -> datetime:
    now: datetime = await db.fetchval("SELECT date_trunc('minute', now(), 'UTC')")
    return now - timedelta(hours=2)


async def minute_rows(
    db: asyncpg.Connection, base: datetime
) -> dict[tuple[int, str, str | None], dict[str, Any]]:
    rows = await db.fetch("SELECT * FROM tidebase.run_stats WHERE span_s = 60 ORDER BY at")
    return {
        (int((r["at"] - base).total_seconds() // 60), r["workflow"], r["version"]): {
            "created": r["created"],
            "completed": r["completed"],
            "failed": r["failed"],
            "cancelled": r["cancelled"],
            "duration": list(r["duration"]),
            "wait": list(r["wait"]),
        }
        for r in rows
    }


async def roll_all(tide: Tidebase, *, max_runs: int = 20_000) -> int:
    steps = 0
    while await tide.store.roll_up_stats(lag_s=LAG_S, max_runs=max_runs) is not None:
        steps += 1
    return steps


async def test_rollup_rows_equal_exact_counts_and_buckets(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    base = await base_minute(db)
    await seed(db, base)
    await roll_all(tide)
    assert await minute_rows(db, base) == expected(SEED, base)
    # The minute boundaries: :59.999 is minute 0, :00.000 minute 1.
    rows = await minute_rows(db, base)
    assert rows[(0, "alpha", "v2")]["failed"] == 1
    assert rows[(1, "alpha", "v2")]["completed"] == 1
    assert rows[(0, "beta", None)]["created"] == 1
    # Hour rows sum the minutes of each complete hour.
    hours = await db.fetch(
        "SELECT workflow, sum(created) AS c, sum(failed) AS f FROM tidebase.run_stats "
        "WHERE span_s = 3600 GROUP BY workflow ORDER BY workflow"
    )
    assert [(h["workflow"], h["c"], h["f"]) for h in hours] == [("alpha", 4, 1), ("beta", 3, 1)]
    mark = await db.fetchval("SELECT rolled_to FROM tidebase.stats_progress")
    now = await db.fetchval("SELECT now()")
    assert now - timedelta(seconds=LAG_S + 60) <= mark <= now - timedelta(seconds=LAG_S)


async def test_recompute_is_idempotent_and_chunks_equal_one_pass(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    base = await base_minute(db)
    await seed(db, base)
    # Chunks of about one run each: the seed's minutes take several chunks.
    steps = await roll_all(tide, max_runs=1)
    assert steps >= 3
    chunked = await minute_rows(db, base)
    assert chunked == expected(SEED, base)
    # Recomputing a window replaces its rows, twice over: nothing is added.
    for _ in range(2):
        await db.execute(
            Q["roll_up_minutes"], base - timedelta(minutes=5), base + timedelta(hours=1)
        )
    assert await minute_rows(db, base) == chunked
    # From scratch in one pass (fewer runs than a chunk holds: one chunk to the
    # watermark, however many minutes it spans): the same rows.
    await db.execute("DELETE FROM tidebase.run_stats")
    await db.execute("UPDATE tidebase.stats_progress SET rolled_to = NULL")
    assert await roll_all(tide) == 1
    assert await minute_rows(db, base) == chunked


async def test_late_commit_inside_the_lag_is_counted(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    await roll_all(tide)
    mark: datetime = await db.fetchval("SELECT rolled_to FROM tidebase.stats_progress")
    # A run that finished (transaction start) 10 s after the watermark, committed now.
    late = [("late", None, "completed", 0.0, 1.0, 10.0)]
    await seed(db, mark, late)
    # Read live before the rollup reaches it ...
    overview = await tide.stats.overview(range="1h")
    assert {w.workflow: w.completed for w in overview.workflows} == {"late": 1}
    # ... and rolled up once its minute is past the lag.
    await db.execute("UPDATE tidebase.stats_progress SET rolled_to = $1", mark)
    await db.execute(
        "UPDATE tidebase.runs SET created_at = created_at - interval '3 minutes', "
        "started_at = started_at - interval '3 minutes', "
        "finished_at = finished_at - interval '3 minutes', run_at = run_at - interval '3 minutes'"
    )
    await db.execute(
        "UPDATE tidebase.stats_progress SET rolled_to = $1", mark - timedelta(minutes=3)
    )
    await roll_all(tide)
    total = await db.fetchval(
        "SELECT sum(completed) FROM tidebase.run_stats WHERE span_s = 60 AND workflow = 'late'"
    )
    assert total == 1
    overview = await tide.stats.overview(range="1h")
    assert {w.workflow: w.completed for w in overview.workflows} == {"late": 1}


async def test_overview_counts_runs_of_a_worker(tide: Tidebase, db: asyncpg.Connection) -> None:
    @tide.workflow("ok")
    async def ok(run: Run, input: Any) -> int:
        return 1

    @tide.workflow("bad", max_attempts=1)
    async def bad(run: Run, input: Any) -> None:
        raise ValueError("nope")

    for _ in range(3):
        await tide.enqueue("ok")
    failed = await tide.enqueue("bad")
    async with working(tide):
        await eventually(
            lambda: db.fetchval(
                "SELECT count(*) = 4 FROM tidebase.runs WHERE status IN ('completed', 'failed')"
            )
        )
    overview = await tide.stats.overview(range="1h")
    assert len(overview.series) == 60 and overview.bucket_s == 60
    assert sum(b.started for b in overview.series) == 4
    assert sum(b.completed for b in overview.series) == 3
    assert sum(b.failed for b in overview.series) == 1
    by_name = {w.workflow: w for w in overview.workflows}
    assert by_name["ok"].completed == 3 and by_name["ok"].duration_p50_ms is not None
    assert [f.workflow for f in overview.failing] == ["bad"]
    assert overview.failing[0].last_run_id == failed.id
    assert overview.failing[0].last_error is not None
    assert overview.failing[0].last_error.type == "ValueError"
    page = await tide.stats.workflow("bad", range="24h")
    assert page.versions[0].success_rate == 0.0 and len(page.series) == 24
    assert [f.run_id for f in page.recent_failures] == [failed.id]


def test_percentile_of_a_histogram() -> None:
    h = [0] * 60
    h[bucket_of(2000)] = 10
    p = percentile(h, 0.5)
    assert p is not None and 2**10.5 <= p < 2**11
    assert percentile([0] * 60, 0.5) is None
    # Bucket 0 is [0, 1) ms; the open last bucket reports its lower edge.
    h = [0] * 60
    h[0], h[59] = 1, 1
    assert percentile(h, 0.5) == 1.0 and percentile(h, 1.0) == 2.0**29


async def test_http_overview_and_workflow_pages(dsn: str, db: asyncpg.Connection) -> None:
    base = await base_minute(db)
    await seed(db, base)
    async with Tidebase(dsn, api_key=API_KEY) as tide, serve(tide, "aiohttp") as client:
        await roll_all(tide)
        await tide.queues.configure("paused-q", paused=True)
        resp = await client.get("/tidebase/overview", params={"range": "6h"}, headers=bearer())
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert set(body) >= {
            "now",
            "range",
            "bucket_s",
            "series",
            "workflows",
            "queues",
            "failing",
            "usage",
            "usage_total_cost_usd",
        }
        assert body["range"] == "6h" and body["bucket_s"] == 60 and len(body["series"]) == 360
        assert set(body["series"][0]) == {"at", "started", "completed", "failed", "cancelled"}
        assert sum(b["started"] for b in body["series"]) == 7
        alpha = next(w for w in body["workflows"] if w["workflow"] == "alpha")
        assert (alpha["started"], alpha["completed"], alpha["failed"]) == (4, 3, 1)
        assert {"duration_p50_ms", "duration_p95_ms", "wait_p50_ms", "wait_p95_ms"} <= set(alpha)
        assert [f["workflow"] for f in body["failing"]] == ["alpha", "beta"]
        assert body["failing"][0]["last_error"] == {"type": "Boom", "message": "boom 2"}
        queues = {q["queue"]: q for q in body["queues"]}
        assert queues["default"]["queued"] == 1 and queues["paused-q"]["paused"] is True
        assert queues["default"]["oldest_queued_age_s"] > 3600
        for r, (bucket_s, n) in {"1h": (60, 60), "24h": (3600, 24), "7d": (3600, 168)}.items():
            got = (await client.get(f"/tidebase/overview?range={r}", headers=bearer())).json()
            assert (got["bucket_s"], len(got["series"])) == (bucket_s, n)
            assert sum(b["started"] for b in got["series"]) == (0 if r == "1h" else 7)

        resp = await client.get("/tidebase/workflows/alpha?range=24h", headers=bearer())
        assert resp.status_code == 200, resp.text
        page = resp.json()
        assert page["workflow"] == "alpha" and len(page["series"]) == 24
        versions = {v["version"]: v for v in page["versions"]}
        assert versions[None]["completed"] == 2 and versions[None]["success_rate"] == 1.0
        assert versions["v2"]["success_rate"] == 0.5
        assert [f["error"]["message"] for f in page["recent_failures"]] == ["boom 2"]
        assert page["schedules"] == []

        bad = await client.get("/tidebase/overview?range=2h", headers=bearer())
        assert bad.status_code == 400 and "1h, 6h, 24h, 7d" in error_of(bad)["message"]
        missing = await client.get("/tidebase/workflows/nope", headers=bearer())
        assert missing.status_code == 404 and error_of(missing)["code"] == "not_found"
        for path in ("/tidebase/overview", "/tidebase/workflows/alpha"):
            assert (await client.get(path)).status_code == 401


async def test_a_second_roller_skips_its_turn_instead_of_waiting(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    """Two reconcilers (the election is not a guarantee): while one holds the
    watermark row, the other's rollup returns at once with nothing done."""
    base = await base_minute(db)
    await seed(db, base)
    async with db.transaction():
        await db.execute("SELECT 1 FROM tidebase.stats_progress FOR UPDATE")
        with anyio.fail_after(5):
            assert await tide.store.roll_up_stats(lag_s=LAG_S, max_runs=20_000) is None
    assert await roll_all(tide) == 1
    assert await minute_rows(db, base) == expected(SEED, base)
