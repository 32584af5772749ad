"""Several worker processes share one database; SIGTERM drains or releases runs."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import asyncpg

from tests.integration import procs
from tidebase_async import RunSpec, Tidebase


async def test_two_worker_processes_execute_every_step_of_300_runs_exactly_once(
    tide: Tidebase, db: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    await procs.create_step_log(db)
    async with procs.Workers(dsn, tmp_path) as workers:
        first = await workers.start(name="first", concurrency=8)
        second = await workers.start(name="second", concurrency=8)
        handles = await tide.enqueue_many([RunSpec(workflow="pair", input=0.005)] * 300)
        ids = [h.id for h in handles]
        assert len(set(ids)) == 300

        async def all_completed() -> bool:
            done = await db.fetchval(
                "SELECT count(*) FROM tidebase.runs WHERE id = ANY($1) AND status = 'completed'",
                ids,
            )
            return bool(done == 300)

        await procs.eventually(all_completed, timeout=30, what="300 runs to complete")
        stats = await db.fetch("SELECT status, count(*) FROM tidebase.runs GROUP BY status")
        assert [tuple(s) for s in stats] == [("completed", 300)]

    per_step = await db.fetch(
        "SELECT run_id, step, count(*) AS n FROM step_log GROUP BY run_id, step"
    )
    assert len(per_step) == 600
    assert {(r["run_id"], r["step"]) for r in per_step} == {
        (rid, step) for rid in ids for step in ("a", "b")
    }
    assert [tuple(r) for r in per_step if r["n"] != 1] == []
    pids = {
        r["pid"]: r["n"]
        for r in await db.fetch("SELECT pid, count(*) AS n FROM step_log GROUP BY pid")
    }
    assert set(pids) == {first.pid, second.pid}, pids
    # Nothing was lost or retried: every run ran once, on one attempt.
    attempts = await db.fetchval("SELECT max(attempt) FROM tidebase.runs WHERE id = ANY($1)", ids)
    assert attempts == 1
    print(f"\nsteps per worker process: {pids}")


async def test_sigterm_drains_the_run_in_flight_and_exits_zero(
    tide: Tidebase, db: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    await procs.create_step_log(db)
    async with procs.Workers(dsn, tmp_path) as workers:
        worker = await workers.start(name="draining", shutdown_grace=5.0, lease=5.0)
        handle = await tide.enqueue("nap", input=0.5)

        async def napping() -> bool:
            return bool(await procs.step_log(db, handle.id))

        await procs.eventually(napping, timeout=10, what="the 0.5 s step to start")
        worker.send(signal.SIGTERM)
        assert await worker.wait_exit(5) == 0, worker.describe()
        # It drained: the step it was in finished and the run completed before the exit.
        assert await procs.run_status(db, handle.id) == "completed"
        assert await procs.run_output(db, handle.id) == {"pid": worker.pid, "nap": worker.pid}
    kinds = [kind for kind, _ in await procs.event_types(db, handle.id)]
    assert "run.released" not in kinds
    assert kinds[-1] == "run.completed"
    assert await procs.step_log(db, handle.id) == [("nap", worker.pid)]


async def test_sigterm_past_the_grace_period_releases_the_run_to_another_worker(
    tide: Tidebase, db: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    await procs.create_step_log(db)
    async with procs.Workers(dsn, tmp_path) as workers:
        # Mode "hang": the step takes 30 s, far past the 0.2 s grace.
        quitter = await workers.start("hang", name="quitter", shutdown_grace=0.2, lease=30.0)
        handle = await tide.enqueue("nap", input=0.0)
        rid = handle.id

        async def napping() -> bool:
            return bool(await procs.step_log(db, rid))

        await procs.eventually(napping, timeout=10, what="the 30 s step to start")
        signalled = time.monotonic()
        quitter.send(signal.SIGTERM)
        assert await quitter.wait_exit(5) == 0, quitter.describe()
        took = time.monotonic() - signalled
        assert took < 3.0, f"exit took {took:.2f}s with shutdown_grace 0.2"

        # Released at once (a 30 s lease did not have to expire), without spending an attempt.
        run = await db.fetchrow(
            "SELECT status, attempt, released, lease_owner FROM tidebase.runs WHERE id = $1", rid
        )
        assert tuple(run) == ("queued", 1, 1, None)
        events = await procs.event_types(db, rid)
        assert events[-1][0] == "run.released", events

        heir = await workers.start("normal", name="heir")
        await procs.wait_status(db, rid, "completed", timeout=10)

    assert await procs.run_output(db, rid) == {"pid": heir.pid, "nap": heir.pid}
    assert await procs.step_log(db, rid) == [("nap", quitter.pid), ("nap", heir.pid)]
    kinds = [kind for kind, _ in await procs.event_types(db, rid)]
    assert kinds.count("run.claimed") == 2
    assert "run.requeued" not in kinds
