"""Review of workflow control (issue 5): defects found in gates, sleeps, children,
cancellation and deadlines, each pinned by a test that fails today.

Every test is ``xfail(strict=True)``: it passes (and the marker must go) once the defect
is fixed.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import anyio
import asyncpg
import msgspec
import pytest

from tests.integration.core_support import eventually, status_of, working
from tidebase_async import ConfigurationError, Run, Tidebase
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


@pytest.mark.xfail(
    strict=True,
    reason="BUG: gate names may contain '#', so a user gate 'ok#2' and the second "
    "gate 'ok' (ordinal name 'ok#2') are the same gates row: the third gate passes "
    "with the second gate's decision, without anyone deciding it",
)
async def test_gate_name_with_hash_collides_with_ordinal(tide: Tidebase) -> None:
    @tide.workflow("three-gates")
    async def three_gates(run: Run) -> list[str | None]:
        first = await run.gate("ok")
        second = await run.gate("ok#2")
        third = await run.gate("ok")  # a new gate: nobody decided it yet
        return [first.actor, second.actor, third.actor]

    async with working(tide, concurrency=1, maintenance_interval=0.2):
        h = await tide.enqueue("three-gates")

        async def pending(name: str) -> bool:
            return [g.name for g in await tide.gates.list(run_id=h.id)] == [name]

        await eventually(lambda: pending("ok"), what="gate 'ok' pending")
        await tide.gates.resolve(h.id, "ok", approved=True, actor="alice")
        await eventually(lambda: pending("ok#2"), what="gate 'ok#2' pending")
        await tide.gates.resolve(h.id, "ok#2", approved=True, actor="bob")

        async def settled() -> bool:
            status = await tide.store.run_status(h.id)
            return status == "completed" or (
                status == "waiting" and bool(await tide.gates.list(run_id=h.id))
            )

        await eventually(settled, what="the run waits again or completes")
        # Expected: the third gate is pending and the run waits for it.
        assert await tide.store.run_status(h.id) == "waiting", (
            f"the third gate was never decided, yet the run returned "
            f"{await tide.runs.wait(h.id, timeout=1)!r}"
        )


@pytest.mark.xfail(
    strict=True,
    reason="BUG: child ids derive from (parent, full name, index) without the kind, so "
    "run.child('leaf') and run.fanout('leaf', ...) share the first child: the fanout's "
    "first output is the earlier child's output and its own child is never created",
)
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


@pytest.mark.xfail(
    strict=True,
    reason="BUG: expire_gate locks the gate row and then the run row (its UPDATE of "
    "runs), resolve_gate locks the run row and then the gate row: when a gate is "
    "resolved as the worker replays to it after its timeout, Postgres detects a "
    "deadlock and fails one side with a StoreError that nobody retries",
)
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


@pytest.mark.xfail(
    strict=True,
    reason="BUG: cancel_runs collects the run tree with its statement snapshot, then "
    "waits for the parent's row lock held by start_children; the children that "
    "transaction commits are not in the tree, so the parent is cancelled and its new "
    "children stay queued (and run, or wait on gates, forever orphaned)",
)
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


@pytest.mark.xfail(
    strict=True,
    reason="BUG: tide.run() parks a sleeping run as 'waiting' and then only polls its "
    "status; only a worker's maintenance loop runs wake_due, so without a worker the "
    "inline call waits forever for a 0.3 s sleep (same for a gate timeout)",
)
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


@pytest.mark.xfail(
    strict=True,
    reason="BUG: run.sleep checks only for NaN and negatives: an infinite or huge "
    "duration raises OverflowError from datetime arithmetic (a generic exception, "
    "retried as a transient failure) instead of a clear ConfigurationError",
)
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


@pytest.mark.xfail(
    strict=True,
    reason="BUG: run.fanout calls list(children) unguarded: a non-iterable (None, an "
    "int) raises TypeError instead of a clear ConfigurationError",
)
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
