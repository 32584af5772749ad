"""Cancellation and deadlines on a real Postgres: a running step is interrupted within a
second, a waiting run's gates close, children go with their parent, deadlines fire
whatever the run is doing."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import asyncpg
import msgspec
import pytest

from tests.integration.control_support import claim_one, events, gate_row, lock_waiters, wait_status
from tests.integration.core_support import eventually, run_row, status_of, working
from tidebase_async import (
    ConflictError,
    GateAlreadyResolved,
    Run,
    RunCancelled,
    RunNotFound,
    Tidebase,
)
from tidebase_async.store import NewRun


def _long_step(log: list[str]) -> Any:
    async def forever() -> None:
        log.append("started")
        try:
            await anyio.sleep(60)
        except asyncio.CancelledError:
            log.append("cancelled")
            raise
        log.append("finished")

    return forever


async def test_cancelling_a_run_inside_a_long_step_stops_it_within_a_second(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    log: list[str] = []

    @tide.workflow("long")
    async def long(run: Run) -> str:
        await run.step("forever", _long_step(log))
        return "unreachable"

    # A long lease: only the NOTIFY can stop it this fast, not a heartbeat.
    async with working(tide, concurrency=2, lease=30.0) as worker:
        handle = await tide.enqueue("long")
        await eventually(lambda: log == ["started"], what="the step to start")
        t0 = time.monotonic()
        await tide.runs.cancel(handle.id, reason="stop it", actor="ops")
        await eventually(lambda: worker.stats.cancelled == 1, timeout=5, what="the worker to stop")
        elapsed = time.monotonic() - t0
        assert log == ["started", "cancelled"]
        assert elapsed < 1.0, f"took {elapsed:.2f}s"
        assert worker.inflight == 0
        with pytest.raises(RunCancelled) as exc:
            await tide.runs.wait(handle.id, timeout=5)
        assert exc.value.reason == "stop it"
    row = await run_row(db, handle.id)
    assert (row["status"], row["cancel_reason"], row["cancel_actor"]) == (
        "cancelled",
        "stop it",
        "ops",
    )
    assert row["lease_owner"] is None and row["finished_at"] is not None
    assert worker.stats.completed == worker.stats.failed == 0
    evs = await events(db, handle.id)
    assert [t for t, _ in evs] == ["run.created", "run.claimed", "run.cancelled"]
    assert evs[-1][1] == {"reason": "stop it", "actor": "ops", "was": "running"}
    # The interrupted step left no checkpoint.
    assert (
        await db.fetchval("SELECT count(*) FROM tidebase.steps WHERE run_id = $1", handle.id) == 0
    )


async def test_a_forged_cancel_notification_does_not_stop_a_running_run(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    """Regression: the worker cancelled a run on any ``tidebase_cancel`` notification,
    which every role that can connect may send; the step was interrupted and an attempt
    spent. Now the database is asked first."""
    release = anyio.Event()
    log: list[str] = []

    @tide.workflow("steady")
    async def steady(run: Run) -> int:
        async def hold() -> int:
            log.append("started")
            await release.wait()
            return run.attempt

        return int(await run.step("hold", hold))

    async with working(tide, concurrency=2, lease=30.0) as worker:
        handle = await tide.enqueue("steady")
        await eventually(lambda: log == ["started"], what="the step to start")
        await db.execute("SELECT pg_notify('tidebase_cancel', $1)", str(handle.id))
        await anyio.sleep(0.5)  # what a trusted notification needed to stop it
        assert worker.stats.cancelled == 0
        release.set()
        assert await tide.runs.wait(handle.id, timeout=10) == 1
    assert log == ["started"]


async def test_cancel_running(tide: Tidebase, db: asyncpg.Connection) -> None:
    @tide.workflow("long")
    async def long(run: Run) -> None:
        await run.step("forever", anyio.sleep, 60)

    async with working(tide, concurrency=2) as worker:
        h = await tide.enqueue("long")
        await wait_status(db, h.id, "running")
        await anyio.sleep(0.2)
        t0 = anyio.current_time()
        await tide.runs.cancel(h.id, reason="stop", actor="me")
        with pytest.raises(RunCancelled):
            await tide.runs.wait(h.id, timeout=5)
        await eventually(lambda: worker.stats.cancelled == 1, timeout=2, what="worker stopped it")
        assert anyio.current_time() - t0 < 1.0


async def test_the_heartbeat_stops_a_cancelled_run_when_the_notification_is_lost(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    log: list[str] = []

    @tide.workflow("long")
    async def long(run: Run) -> None:
        await run.step("forever", _long_step(log))

    async with working(tide, concurrency=1, lease=0.9) as worker:
        handle = await tide.enqueue("long")
        await eventually(lambda: log == ["started"], what="the step to start")
        # What cancel_runs does, minus the NOTIFY.
        await db.execute(
            "UPDATE tidebase.runs SET status = 'cancelled', cancel_reason = 'silent',"
            " lease_owner = NULL, lease_expires_at = NULL, finished_at = tidebase.now()"
            " WHERE id = $1",
            handle.id,
        )
        await eventually(lambda: log == ["started", "cancelled"], timeout=5, what="the step stop")
        await eventually(lambda: worker.inflight == 0, timeout=5, what="the slot to free")
    assert worker.stats.completed == 0
    assert (await run_row(db, handle.id))["status"] == "cancelled"


async def test_cancelling_a_waiting_run_closes_its_gate(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    @tide.workflow("gated")
    async def gated(run: Run) -> str:
        await run.gate("approve")
        return "passed"

    async with working(tide, concurrency=1) as worker:
        handle = await tide.enqueue("gated")
        await wait_status(db, handle.id, "waiting")
        token = await tide.gates.token(handle.id, "approve")
        await tide.runs.cancel(handle.id, reason="withdrawn", actor="alice")
        with pytest.raises(RunCancelled) as exc:
            await tide.runs.wait(handle.id, timeout=5)
        assert exc.value.reason == "withdrawn"

        gate = await gate_row(db, handle.id, "approve")
        assert gate is not None
        assert (gate["status"], gate["decision"], gate["token_hash"]) == (
            "cancelled",
            "cancelled",
            None,
        )
        assert gate["resolved_at"] is not None
        assert await tide.gates.list(status="pending") == []
        for tok in (None, token):
            with pytest.raises(GateAlreadyResolved) as closed:
                await tide.gates.resolve(handle.id, "approve", approved=True, token=tok)
            assert closed.value.status == "cancelled"

        # Idempotent: a second cancel changes nothing.
        n_events = len(await events(db, handle.id))
        await tide.runs.cancel(handle.id, reason="again")
        assert len(await events(db, handle.id)) == n_events
        assert (await run_row(db, handle.id))["cancel_reason"] == "withdrawn"
        await anyio.sleep(0.3)
        assert (await run_row(db, handle.id))["status"] == "cancelled"
    assert worker.stats.suspended == 1
    assert worker.stats.completed == 0
    evs = await events(db, handle.id)
    assert [t for t, _ in evs][-2:] == ["run.waiting", "run.cancelled"]
    assert evs[-1][1] == {"reason": "withdrawn", "actor": "alice", "was": "waiting"}


async def test_cancel_refuses_finished_runs_and_unknown_ids(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    @tide.workflow("quick")
    async def quick(run: Run) -> int:
        return 1

    async with working(tide, concurrency=1):
        handle = await tide.enqueue("quick")
        assert await tide.runs.wait(handle.id, timeout=10) == 1
    with pytest.raises(ConflictError):
        await tide.runs.cancel(handle.id)
    assert (await run_row(db, handle.id))["status"] == "completed"
    with pytest.raises(RunNotFound):
        await tide.runs.cancel("00000000-0000-4000-8000-000000000000")


async def test_cancelling_a_parent_cancels_its_waiting_and_queued_children(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    @tide.workflow("gated-child")
    async def gated_child(run: Run) -> str:
        await run.gate("child-approve")
        return "approved"

    @tide.workflow("stuck-child", queue="nobody")  # no worker serves this queue
    async def stuck_child(run: Run) -> str:
        return "never"

    @tide.workflow("quick-child")
    async def quick_child(run: Run) -> str:
        return "quick"

    @tide.workflow("parent")
    async def parent(run: Run) -> list[str]:
        return list(
            await run.fanout(
                "kids", [("gated-child", None), ("stuck-child", None), ("quick-child", None)]
            )
        )

    async with working(tide, queues=["default"], concurrency=4):
        handle = await tide.enqueue("parent")
        await wait_status(db, handle.id, "waiting")

        async def kids() -> dict[str, str]:
            rows = await db.fetch(
                "SELECT workflow, status FROM tidebase.runs WHERE parent_id = $1", handle.id
            )
            return {r["workflow"]: r["status"] for r in rows}

        want = {"gated-child": "waiting", "stuck-child": "queued", "quick-child": "completed"}
        await eventually(lambda: _eq(kids(), want), what=f"children {want}")
        await wait_status(db, handle.id, "waiting")
        gated_id = await db.fetchval(
            "SELECT id FROM tidebase.runs WHERE parent_id = $1 AND workflow = 'gated-child'",
            handle.id,
        )
        await tide.runs.cancel(handle.id, reason="abort", actor="ops")
        with pytest.raises(RunCancelled):
            await tide.runs.wait(handle.id, timeout=5)
        assert await kids() == {
            "gated-child": "cancelled",
            "stuck-child": "cancelled",
            "quick-child": "completed",  # terminal: left alone
        }
    reasons = await db.fetch(
        "SELECT workflow, cancel_reason, cancel_actor FROM tidebase.runs"
        " WHERE parent_id = $1 AND status = 'cancelled' ORDER BY workflow",
        handle.id,
    )
    assert [tuple(r) for r in reasons] == [
        ("gated-child", "parent cancelled", "ops"),
        ("stuck-child", "parent cancelled", "ops"),
    ]
    gate = await gate_row(db, gated_id, "child-approve")
    assert gate is not None and gate["status"] == "cancelled"
    assert (await run_row(db, handle.id))["cancel_reason"] == "abort"


async def test_a_cancel_racing_the_creation_of_children_cancels_them_too(
    tide: Tidebase, db: asyncpg.Connection, dsn: str
) -> None:
    """Regression: a cancel that waited for the parent's row while start_children was
    inserting children cancelled the parent but left the new children running."""
    parent = await claim_one(tide, "parent")
    child_id = uuid.uuid4()
    # Stall start_children after it locked the parent (lock_claim) and before its
    # insert lands: another session holds an uncommitted row with the child's id, so
    # insert_children's ON CONFLICT waits for that session.
    blocker = await asyncpg.connect(dsn)
    try:
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute(
            "INSERT INTO tidebase.runs"
            " (id, workflow, queue, status, max_attempts, run_at, created_at, updated_at)"
            " VALUES ($1, 'leaf', 'default', 'queued', 3, now(), now(), now())",
            child_id,
        )
        start = asyncio.create_task(
            tide.store.start_children(
                run_id=parent.id,
                worker_id="w-direct",
                attempt=parent.attempt,
                children=[
                    NewRun(
                        id=child_id,
                        workflow="leaf",
                        queue="default",
                        input=msgspec.Raw(b"null"),
                        priority=0,
                        dedupe_key=None,
                        metadata=None,
                        parent_id=parent.id,
                        max_attempts=3,
                        run_at=None,
                        delay_s=0.0,
                        deadline_at=None,
                    )
                ],
                event_data=b"{}",
            )
        )
        await lock_waiters(db, 1)  # start_children holds the parent, waits on the id
        cancel = asyncio.create_task(tide.runs.cancel(parent.id, reason="stop"))
        await lock_waiters(db, 2)  # the cancel waits for the parent's row
        await tx.rollback()  # the child's id is free: start_children inserts and commits
        await start
        await cancel
    finally:
        await blocker.close()
    assert await status_of(db, parent.id) == "cancelled"
    # "children are cancelled too"
    assert await status_of(db, child_id) == "cancelled"


async def _eq(got: Any, want: Any) -> bool:
    return bool(await got == want)


async def test_deadline(tide: Tidebase) -> None:
    @tide.workflow("slow")
    async def slow(run: Run) -> None:
        await run.step("wait", anyio.sleep, 30)

    async with working(tide, concurrency=2, maintenance_interval=0.2):
        h = await tide.enqueue("slow", deadline=datetime.now(UTC) + timedelta(seconds=0.5))
        with pytest.raises(RunCancelled) as exc:
            await tide.runs.wait(h.id, timeout=5)
        assert exc.value.reason == "deadline"


async def test_deadline_cancels_a_queued_run(tide: Tidebase, db: asyncpg.Connection) -> None:
    @tide.workflow("later")
    async def later(run: Run) -> str:
        return "ran"

    async with working(tide, concurrency=1, maintenance_interval=0.2) as worker:
        handle = await tide.enqueue(
            "later", delay=30, deadline=datetime.now(UTC) + timedelta(seconds=0.4)
        )
        with pytest.raises(RunCancelled) as exc:
            await tide.runs.wait(handle.id, timeout=10)
    assert exc.value.reason == "deadline"
    assert worker.stats.deadlines_fired == 1
    evs = await events(db, handle.id)
    assert [t for t, _ in evs] == ["run.created", "run.cancelled"]
    assert evs[-1][1]["was"] == "queued"
    assert evs[-1][1]["reason"] == "deadline"


async def test_deadline_cancels_a_running_run(tide: Tidebase, db: asyncpg.Connection) -> None:
    log: list[str] = []

    @tide.workflow("long")
    async def long(run: Run) -> None:
        await run.step("forever", _long_step(log))

    async with working(tide, concurrency=1, maintenance_interval=0.2) as worker:
        handle = await tide.enqueue("long", deadline=datetime.now(UTC) + timedelta(seconds=0.6))
        await eventually(lambda: log == ["started"], what="the step to start")
        with pytest.raises(RunCancelled) as exc:
            await tide.runs.wait(handle.id, timeout=10)
        await eventually(lambda: worker.inflight == 0, timeout=5, what="the slot to free")
    assert exc.value.reason == "deadline"
    assert log == ["started", "cancelled"]
    assert worker.stats.cancelled == 1
    evs = await events(db, handle.id)
    assert [t for t, _ in evs] == ["run.created", "run.claimed", "run.cancelled"]
    assert evs[-1][1]["was"] == "running"


async def test_deadline_cancels_a_waiting_run_and_closes_its_gate(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    @tide.workflow("gated")
    async def gated(run: Run) -> str:
        await run.gate("approve")
        return "passed"

    async with working(tide, concurrency=1, maintenance_interval=0.2) as worker:
        handle = await tide.enqueue("gated", deadline=datetime.now(UTC) + timedelta(seconds=0.8))
        await wait_status(db, handle.id, "waiting", "cancelled")
        with pytest.raises(RunCancelled) as exc:
            await tide.runs.wait(handle.id, timeout=10)
    assert exc.value.reason == "deadline"
    assert worker.stats.suspended == 1
    assert worker.stats.deadlines_fired == 1
    gate = await gate_row(db, handle.id, "approve")
    assert gate is not None and gate["status"] == "cancelled"
    evs = await events(db, handle.id)
    assert [t for t, _ in evs][-2:] == ["run.waiting", "run.cancelled"]
    assert evs[-1][1]["was"] == "waiting"
