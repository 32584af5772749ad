"""A worker process dies or freezes in the middle of a step; another one finishes the run.
The database server crashes and loses a claim while the run executes; the run still
executes once at a time and completes.

Worker processes run ``tests.integration.worker_app``; its steps record every execution
in ``step_log`` (run, step, pid) through their own connection, so executions by a
process that was killed mid-step are counted too.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio
import anyio.to_thread
import asyncpg

from tests.integration import procs
from tests.integration.core_support import working
from tests.integration.server_support import crash
from tidebase_async import Run, Tidebase


async def test_killed_worker_run_resumes_elsewhere_without_repeating_completed_steps(
    tide: Tidebase, db: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    await procs.create_step_log(db)
    async with procs.Workers(dsn, tmp_path) as workers:
        doomed = await workers.start("hang", name="doomed", lease=1.5, maintenance_interval=0.2)
        handle = await tide.enqueue("durable", input={})
        rid = handle.id

        async def inside_s3() -> bool:
            return ("s3", doomed.pid) in await procs.step_log(db, rid)

        await procs.eventually(inside_s3, timeout=10, what="step s3 to start")
        doomed.send(signal.SIGKILL)
        assert await doomed.wait_exit(5) == -signal.SIGKILL

        survivor = await workers.start("normal", name="survivor", lease=5, maintenance_interval=0.2)
        await procs.wait_status(db, rid, "completed", timeout=15)

    assert await procs.step_log(db, rid) == [
        ("s1", doomed.pid),
        ("s2", doomed.pid),
        ("s3", doomed.pid),
        ("s3", survivor.pid),
    ]
    run = await db.fetchrow("SELECT status, attempt FROM tidebase.runs WHERE id = $1", rid)
    assert (run["status"], run["attempt"]) == ("completed", 2)
    assert await procs.run_output(db, rid) == {
        "pid": survivor.pid,
        "s1": f"s1@{doomed.pid}",
        "s2": f"s2@{doomed.pid}",
        "s3": f"s3@{survivor.pid}",
    }
    checkpoints = await db.fetch(
        "SELECT name, run_attempt FROM tidebase.steps WHERE run_id = $1 ORDER BY position", rid
    )
    assert [(c["name"], c["run_attempt"]) for c in checkpoints] == [
        ("s1", 1),
        ("s2", 1),
        ("s3", 2),
    ]
    events = await procs.event_types(db, rid)
    requeued = [data for kind, data in events if kind == "run.requeued"]
    assert len(requeued) == 1, events
    assert requeued[0]["reason"] == "lease_expired"
    assert requeued[0]["attempt"] == 1
    claims = [data["attempt"] for kind, data in events if kind == "run.claimed"]
    assert claims == [1, 2]
    assert events[-1][0] == "run.completed"


async def test_frozen_worker_cannot_overwrite_the_run_another_worker_took_over(
    tide: Tidebase, db: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    await procs.create_step_log(db)
    async with procs.Workers(dsn, tmp_path) as workers:
        # In mode "freeze" step s3 logs itself, then stops its own process (SIGSTOP)
        # before it can return: a freeze in the middle of a step, lease 1 s.
        zombie = await workers.start("freeze", name="zombie", lease=1.0, maintenance_interval=0.2)
        handle = await tide.enqueue("durable", input={})
        rid = handle.id

        async def frozen() -> bool:
            return procs.process_state(zombie.pid) == "T"

        await procs.eventually(frozen, timeout=10, what="the zombie to stop itself inside s3")
        assert await procs.step_log(db, rid) == [
            ("s1", zombie.pid),
            ("s2", zombie.pid),
            ("s3", zombie.pid),
        ]

        heir = await workers.start("normal", name="heir", lease=5, maintenance_interval=0.2)
        await procs.wait_status(db, rid, "completed", timeout=15)
        expected = {
            "pid": heir.pid,
            "s1": f"s1@{zombie.pid}",
            "s2": f"s2@{zombie.pid}",
            "s3": f"s3@{heir.pid}",
        }
        assert await procs.run_output(db, rid) == expected

        async def snapshot() -> tuple[tuple[object, ...], tuple[tuple[object, ...], ...], int]:
            run = await db.fetchrow(
                "SELECT status, attempt, output::text, finished_at, lease_owner "
                "FROM tidebase.runs WHERE id = $1",
                rid,
            )
            steps = await db.fetch(
                "SELECT position, name, output, run_attempt, finished_at "
                "FROM tidebase.steps WHERE run_id = $1 ORDER BY position",
                rid,
            )
            events: int = await db.fetchval(
                "SELECT count(*) FROM tidebase.events WHERE run_id = $1", rid
            )
            return tuple(run), tuple(tuple(s) for s in steps), events

        before = await snapshot()
        zombie.send(signal.SIGCONT)
        # Its step returns at once and checkpoints; the fence refuses it (LeaseLost, which
        # worker_app logs as "checkpoint of s3 refused"). Its overdue heartbeat runs too
        # and would cancel the step should it notice first. Either way the worker logs
        # that it lost the lease, and nothing it does reaches the database.
        lost_line = f"run {rid}: lease lost"

        async def admits_loss() -> bool:
            return lost_line in zombie.stderr()

        await procs.eventually(admits_loss, timeout=5, what=f"{lost_line!r} in the zombie's log")
        await anyio.sleep(1.0)  # give a misbehaving zombie time to write anything at all
        assert await snapshot() == before
        assert await procs.run_output(db, rid) == expected
        events = await procs.event_types(db, rid)
        assert [d["reason"] for k, d in events if k == "run.requeued"] == ["lease_expired"]
        assert events[-1][0] == "run.completed"
        assert before[0][:2] == ("completed", 2)

        # The zombie is healthy otherwise: it drains and exits cleanly on SIGTERM.
        assert zombie.returncode is None
        zombie.send(signal.SIGTERM)
        assert await zombie.wait_exit(10) == 0, zombie.describe()

    assert await procs.step_log(db, rid) == [
        ("s1", zombie.pid),
        ("s2", zombie.pid),
        ("s3", zombie.pid),
        ("s3", heir.pid),
    ]
    checkpoints = await db.fetch(
        "SELECT name, output, run_attempt FROM tidebase.steps WHERE run_id = $1 ORDER BY position",
        rid,
    )
    assert [c["name"] for c in checkpoints] == ["s1", "s2", "s3"]
    assert checkpoints[2]["run_attempt"] == 2
    assert bytes(checkpoints[2]["output"]) == f'"s3@{heir.pid}"'.encode()


async def test_a_server_crash_that_undoes_a_claim_never_runs_the_run_twice_at_once(
    tmp_path: Path,
) -> None:
    """Claims commit without waiting for their WAL flush; a server crash that loses one
    must not let the run execute twice at once.

    A worker claims a run (the claim's WAL not yet flushed: wal_writer_delay is
    stretched so that the crash surely loses it), the server crashes while the run's
    first step executes, and comes back. However the worker learns of it (its heartbeat
    finds the lease gone, or its next claim returns the same fence), the run's code
    never executes twice at once, and the run completes."""
    from tidebase_async.embedded import EmbeddedPostgres

    # As root the server runs as another user, who must enter pytest's 0700 tmp_path:
    # the launcher may add search permission above its data directory.
    server = EmbeddedPostgres(tmp_path / "pg")
    os.environ["TIDEBASE_EMBEDDED_CHMOD"] = "1"
    try:
        await anyio.to_thread.run_sync(server.start)
    finally:
        del os.environ["TIDEBASE_EMBEDDED_CHMOD"]
    try:
        admin = await asyncpg.connect(server.dsn)
        try:
            await admin.execute("ALTER SYSTEM SET wal_writer_delay = '10s'")
            await admin.execute("SELECT pg_reload_conf()")
        finally:
            await admin.close()
        active = 0
        peak = 0
        entered = 0
        in_step = anyio.Event()
        may_finish = anyio.Event()

        async def step() -> str:
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            try:
                in_step.set()
                await may_finish.wait()
                return "done"
            finally:
                active -= 1

        tide = Tidebase(server.dsn)

        @tide.workflow("crash-once")
        async def crash_once(run: Run) -> str:
            nonlocal entered
            entered += 1
            return str(await run.step("wait", step))

        async with tide:
            handle = await tide.enqueue("crash-once")
            async with working(tide, concurrency=4, poll_interval=0.1, lease=5.0):
                with anyio.fail_after(10):
                    await in_step.wait()
                await anyio.to_thread.run_sync(crash, tmp_path / "pg")
                await anyio.to_thread.run_sync(server.start)
                # Time for the worker to reconnect and claim again (with the same fence
                # or after its heartbeat gave the first execution up).
                await anyio.sleep(2)
                may_finish.set()
                assert await tide.runs.wait(handle.id, timeout=30) == "done"
        assert peak == 1
        assert entered >= 1
    finally:
        await anyio.to_thread.run_sync(server.stop)
