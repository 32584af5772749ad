"""Retention: the maintenance loop deletes finished runs past ``retention`` with their
steps and events, in bounded batches, and leaves everything else alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from tests.integration.core_support import FAST, event_types, eventually, working
from tidebase_async import Run, RunFailed, Tidebase, Worker


def _register(tide: Tidebase) -> None:
    @tide.workflow("two-steps", retry=FAST, max_attempts=1)
    async def two_steps(run: Run, input: str) -> str:
        await run.step("a", lambda: "a")
        if input == "fail":
            raise RuntimeError("boom")
        return str(await run.step("b", lambda: input))


async def _count(db: asyncpg.Connection, table: str) -> int:
    return int(await db.fetchval(f"SELECT count(*) FROM tidebase.{table}"))


async def test_finished_runs_past_retention_are_pruned_with_their_steps_and_events(
    dsn: str, db: asyncpg.Connection
) -> None:
    async with Tidebase(dsn, retention=0.3) as tide:
        _register(tide)
        done = await tide.enqueue("two-steps", input="ok")
        failed = await tide.enqueue("two-steps", input="fail")
        cancelled = await tide.enqueue("two-steps", input="x", delay=3600)
        await tide.runs.cancel(cancelled.id)
        waiting = await tide.enqueue("two-steps", input="later", delay=3600)
        async with working(tide, maintenance_interval=0.05):
            assert await tide.runs.wait(done.id, timeout=10) == "ok"
            with pytest.raises(RunFailed):
                await tide.runs.wait(failed.id, timeout=10)

            async def gone() -> bool:
                ids = {r["id"] for r in await db.fetch("SELECT id FROM tidebase.runs")}
                return ids == {waiting.id}

            await eventually(gone, what="finished runs to be pruned")
    # Steps and events went with their runs; the queued run and its history stay.
    assert (
        await db.fetchval("SELECT count(*) FROM tidebase.steps WHERE run_id <> $1", waiting.id) == 0
    )
    assert (
        await db.fetchval("SELECT count(*) FROM tidebase.events WHERE run_id <> $1", waiting.id)
        == 0
    )
    assert await event_types(db, waiting.id) == ["run.created"]


async def _ticks(worker: Worker, count: int) -> None:
    """Wait until the maintenance loop has run ``count`` more ticks."""
    start = worker.stats.maintenance_ticks
    await eventually(lambda: worker.stats.maintenance_ticks >= start + count, what=f"{count} ticks")


@pytest.mark.parametrize("retention", [3600.0, None], ids=["younger-than-retention", "none"])
async def test_runs_are_kept_until_older_than_retention_or_forever_without_one(
    dsn: str, db: asyncpg.Connection, retention: float | None
) -> None:
    async with Tidebase(dsn, retention=retention) as tide:
        _register(tide)
        done = await tide.enqueue("two-steps", input="ok")
        async with working(tide, maintenance_interval=0.05) as worker:
            await tide.runs.wait(done.id, timeout=10)
            await _ticks(worker, 5)
            assert worker.stats.pruned == 0
        assert await _count(db, "runs") == 1
        assert await _count(db, "steps") == 2


async def test_pruning_goes_in_bounded_batches_oldest_first(
    dsn: str, db: asyncpg.Connection
) -> None:
    tide = Tidebase(dsn, retention=0.0)
    async with tide:
        _register(tide)
        # 1,200 finished runs written directly: more than two batches of 500.
        await db.execute(
            "INSERT INTO tidebase.runs (id, workflow, queue, status, max_attempts, run_at,"
            " created_at, updated_at, finished_at)"
            " SELECT gen_random_uuid(), 'two-steps', 'default', 'completed', 1, now(),"
            "  now() - make_interval(secs => 1000 - g), now(),"
            "  now() - make_interval(secs => 1000 - g)"
            " FROM generate_series(1, 1200) g"
        )
        newest = await db.fetchval("SELECT id FROM tidebase.runs ORDER BY created_at DESC LIMIT 1")
        pruned = await tide.store.prune_finished(older_than_s=0, limit=500)
        assert pruned == 500
        remaining = await db.fetchval("SELECT min(created_at) FROM tidebase.runs")
        oldest_left_rank = await db.fetchval(
            "SELECT count(*) FROM tidebase.runs WHERE created_at < $1", remaining
        )
        assert oldest_left_rank == 0  # the 500 oldest went first
        assert await _count(db, "runs") == 700
        assert await db.fetchval("SELECT count(*) FROM tidebase.runs WHERE id = $1", newest) == 1


async def test_store_can_vacuum_the_churning_tables_itself(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    # Used by the reconciler when the server runs without autovacuum (as this test
    # server does); VACUUM must run outside a transaction block.
    assert await tide.store.autovacuum_enabled() == (await db.fetchval("SHOW autovacuum") == "on")
    await tide.store.vacuum()
    vacuumed = await db.fetchval(
        "SELECT count(*) FROM pg_stat_user_tables WHERE schemaname = 'tidebase'"
        " AND relname IN ('runs', 'steps', 'events') AND last_vacuum IS NOT NULL"
    )
    assert vacuumed == 3


async def test_pruning_clears_references_to_the_pruned_runs_and_their_rows(
    dsn: str, db: asyncpg.Connection
) -> None:
    """Retention does what foreign keys did (migration 0016 dropped them from the hot
    tables): a pruned run's steps and events go with it, its children and forks stay
    without the reference, and a child pruned with its parent is simply deleted."""
    tide = Tidebase(dsn, retention=0.0)
    async with tide:
        old = "now() - interval '1 hour'"
        insert = (
            "INSERT INTO tidebase.runs (id, workflow, queue, status, max_attempts, run_at,"
            " created_at, updated_at, finished_at, parent_id, forked_from)"
            f" VALUES ($1, 'wf', 'default', $2, 1, now(), {old}, now(), $3::timestamptz, $4, $5)"
            " RETURNING id"
        )
        parent = await db.fetchval("SELECT gen_random_uuid()")
        await db.execute(
            insert, parent, "completed", datetime.now(UTC) - timedelta(hours=1), None, None
        )
        ids = [await db.fetchval("SELECT gen_random_uuid()") for _ in range(3)]
        child, fork, done_child = ids
        await db.execute(insert, child, "queued", None, parent, None)
        await db.execute(insert, fork, "queued", None, None, parent)
        await db.execute(
            insert, done_child, "completed", datetime.now(UTC) - timedelta(hours=1), parent, None
        )
        for run_id in (parent, done_child, child):
            await db.execute(
                "INSERT INTO tidebase.steps (run_id, position, name, status, attempts,"
                " run_attempt, started_at, finished_at) VALUES ($1, 0, 's', 'completed', 1, 1,"
                " now(), now())",
                run_id,
            )
            await db.execute(
                "INSERT INTO tidebase.events (run_id, seq, type, at) VALUES ($1, 2, 'x', now())",
                run_id,
            )
        assert await tide.store.prune_finished(older_than_s=0, limit=100) == 2
    left = {r["id"]: r for r in await db.fetch("SELECT * FROM tidebase.runs")}
    assert set(left) == {child, fork}
    assert left[child]["parent_id"] is None
    assert left[fork]["forked_from"] is None
    for table in ("steps", "events"):
        owners = {r[0] for r in await db.fetch(f"SELECT run_id FROM tidebase.{table}")}
        assert owners == {child}, table


async def test_a_run_being_forked_is_not_pruned_meanwhile(dsn: str, db: asyncpg.Connection) -> None:
    """fork_run locks its source (FOR KEY SHARE): retention skips it until the fork
    committed, so a fork never refers to a run deleted under it."""
    tide = Tidebase(dsn, retention=0.0)
    async with tide:
        source = await db.fetchval(
            "INSERT INTO tidebase.runs (id, workflow, queue, status, max_attempts, run_at,"
            " created_at, updated_at, finished_at) VALUES (gen_random_uuid(), 'wf', 'default',"
            " 'completed', 1, now(), now() - interval '1 hour', now(), now() - interval '1 hour')"
            " RETURNING id"
        )
        async with db.transaction():
            await db.execute("SELECT 1 FROM tidebase.runs WHERE id = $1 FOR KEY SHARE", source)
            assert await tide.store.prune_finished(older_than_s=0, limit=100) == 0
        assert await tide.store.prune_finished(older_than_s=0, limit=100) == 1
