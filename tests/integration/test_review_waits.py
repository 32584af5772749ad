"""Regression tests for defects a review of workflow control (issue 5) found in gates,
sleeps, children, cancellation and deadlines; each failed before its fix."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import anyio
import asyncpg
import msgspec
import pytest

from tests.integration.core_support import eventually, status_of, working
from tidebase_async import ConfigurationError, Run, RunFailed, Tidebase
from tidebase_async.store import ClaimedRun, NewRun


async def _claim(tide: Tidebase, workflow: str, worker_id: str = "w-review") -> ClaimedRun:
    """Enqueue a run of ``workflow`` and lease it to ``worker_id`` (no worker runs)."""
    handle = await tide.enqueue(workflow)
    claimed = await tide.store.claim(worker_id=worker_id, queues=["default"], limit=1, lease_s=60.0)
    assert [c.id for c in claimed] == [handle.id]
    return claimed[0]


async def _lock_waiters(db: asyncpg.Connection, n: int) -> None:
    """Wait until ``n`` other sessions are blocked on a lock."""

    async def blocked() -> bool:
        count = await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return int(count) >= n

    await eventually(blocked, timeout=5, what=f"{n} sessions waiting on a lock")


# -- 1. gates and children: a user name containing '#' collides with an ordinal --------


async def test_a_wait_name_with_a_hash_is_refused(tide: Tidebase) -> None:
    """'ok#2' is the name the ordinal rule gives the second gate 'ok': a user's own
    'ok#2' would be the same gate, decided by someone else. Such names are refused."""

    @tide.workflow("hash-gate")
    async def hash_gate(run: Run) -> str:
        await run.gate("ok#2")
        return "passed"

    async with working(tide, concurrency=1, maintenance_interval=0.2):
        h = await tide.enqueue("hash-gate")
        with pytest.raises(RunFailed) as failed:
            await tide.runs.wait(h.id, timeout=10)
    assert failed.value.error["type"] == "ConfigurationError"
    assert "may not contain '#'" in failed.value.error["message"]
    assert await tide.gates.list(run_id=h.id, status=None) == []


async def test_child_and_fanout_of_same_name_share_a_child(tide: Tidebase) -> None:
    @tide.workflow("leaf")
    async def leaf(run: Run, n: int) -> int:
        return n * 10

    @tide.workflow("tree")
    async def tree(run: Run) -> list[int]:
        one = await run.child("leaf", input=1)  # name defaults to the workflow name
        many = await run.fanout("leaf", [("leaf", 2), ("leaf", 3)])
        return [one, *many]

    async with working(tide, concurrency=4, maintenance_interval=0.2):
        h = await tide.enqueue("tree")
        result = await tide.runs.wait(h.id, timeout=20)
        info = await tide.runs.get(h.id)
    assert (result, len(info.children)) == ([10, 20, 30], 3)


# -- 2. deadlock between a gate's expiry (worker) and its resolution (client) ---------


async def test_expire_gate_and_resolve_gate_deadlock(
    tide: Tidebase, db: asyncpg.Connection, dsn: str
) -> None:
    claimed = await _claim(tide, "gated")
    store = tide.store
    # The worker reaches the gate; its timeout is over (timeout 0): it is due.
    gate = await store.open_gate(
        run_id=claimed.id,
        worker_id="w-review",
        attempt=claimed.attempt,
        name="g",
        prompt=None,
        data=None,
        channels=None,
        timeout_s=0.0,
    )
    assert gate["status"] == "pending"
    # A third session holds the run row a moment (any fenced write of the worker, a
    # heartbeat), so that the resolver and the expirer queue up behind it.
    holder = await asyncpg.connect(dsn)
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute(
            "SELECT 1 FROM tidebase.runs WHERE id = $1 FOR NO KEY UPDATE", claimed.id
        )
        resolve = asyncio.create_task(
            store.resolve_gate(
                run_id=claimed.id,
                name="g",
                status="approved",
                actor="alice",
                payload=None,
                token_hash=None,
                check_token=False,
            )
        )
        await _lock_waiters(db, 1)  # the resolver waits for the run row
        expire = asyncio.create_task(
            store.expire_gate(
                run_id=claimed.id, worker_id="w-review", attempt=claimed.attempt, name="g"
            )
        )
        await _lock_waiters(db, 2)  # the expirer holds the gate row, waits for the run
        await tx.commit()
        outcomes = await asyncio.gather(resolve, expire, return_exceptions=True)
    finally:
        await holder.close()
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    assert not failures, f"a side failed: {failures!r}"


# -- 3. a cancel racing with the creation of children leaves the children running -----


async def test_cancel_racing_start_children_orphans_children(
    tide: Tidebase, db: asyncpg.Connection, dsn: str
) -> None:
    parent = await _claim(tide, "parent")
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
                worker_id="w-review",
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
        await _lock_waiters(db, 1)  # start_children holds the parent, waits on the id
        cancel = asyncio.create_task(tide.runs.cancel(parent.id, reason="stop"))
        await _lock_waiters(db, 2)  # the cancel waits for the parent's row
        await tx.rollback()  # the child's id is free: start_children inserts and commits
        await start
        await cancel
    finally:
        await blocker.close()
    assert await status_of(db, parent.id) == "cancelled"
    # "children are cancelled too"
    assert await status_of(db, child_id) == "cancelled"


# -- 4. inline runs: nothing wakes a durable sleep or a gate timeout -------------------


async def test_inline_run_with_sleep_and_no_worker_finishes(tide: Tidebase) -> None:
    @tide.workflow("inline-nap")
    async def inline_nap(run: Run) -> str:
        await run.sleep("nap", 0.3)
        return "rested"

    run_id = uuid.uuid4()
    result: list[Any] = []
    with anyio.move_on_after(5):
        result.append(await tide.run("inline-nap", run_id=run_id))
    assert result == ["rested"], (
        f"tide.run still blocked after 5 s; the run is {await tide.store.run_status(run_id)!r}"
    )


# -- 5. bad input: a sleep too long for a datetime is an OverflowError ----------------


async def test_sleep_with_an_infinite_duration_is_a_configuration_error(
    tide: Tidebase,
) -> None:
    seen: list[str] = []

    @tide.workflow("forever-nap")
    async def forever_nap(run: Run) -> str:
        for duration in (float("inf"), 1e12):
            try:
                await run.sleep(f"nap-{duration}", duration)
            except ConfigurationError:
                seen.append("ConfigurationError")
            except Exception as exc:
                seen.append(type(exc).__name__)
        return "done"

    with anyio.fail_after(10):
        await tide.run("forever-nap")
    assert seen == ["ConfigurationError", "ConfigurationError"]


async def test_fanout_of_a_non_iterable_is_a_configuration_error(tide: Tidebase) -> None:
    seen: list[str] = []

    @tide.workflow("bad-fanout")
    async def bad_fanout(run: Run) -> str:
        try:
            await run.fanout("many", None)  # type: ignore[arg-type]
        except ConfigurationError:
            seen.append("ConfigurationError")
        except Exception as exc:
            seen.append(type(exc).__name__)
        return "done"

    with anyio.fail_after(10):
        await tide.run("bad-fanout")
    assert seen == ["ConfigurationError"]
