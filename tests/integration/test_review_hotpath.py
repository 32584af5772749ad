"""Review of the hot-path change: a finishing run's slot goes to the next claim while
its outcome write is in flight, and claims commit without waiting for their WAL flush."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import asyncpg
import pytest

from tests.conftest import opened
from tests.integration.core_support import eventually, working
from tests.integration.server_support import crash
from tidebase_async import Run, Tidebase
from tidebase_async.store import ClaimedRun


async def test_a_run_reclaimed_while_its_old_claim_finishes_keeps_its_slot_and_lease(
    tide: Tidebase, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attempt 1 of a run finishes, but its completion write is slow; meanwhile its
    lease expired and the reconciler requeued it. The finishing run's slot is free, so
    the worker claims the run again (attempt 2) while attempt 1's write is in flight.
    Attempt 1's write is then refused (lost), and its cleanup, keyed by run id only,
    must not drop attempt 2's bookkeeping: attempt 2 still executes here, so it must
    stay in flight (slot taken, heartbeated), and at concurrency 1 no other run's code
    may start beside it."""
    write_may_finish = anyio.Event()
    first_write_started = anyio.Event()
    second_may_finish = anyio.Event()
    calls = 0
    active = 0
    peak = 0
    other_started = anyio.Event()
    original = tide.store.complete_runs

    async def slow_first_complete(**kwargs: Any) -> Any:
        if not first_write_started.is_set():
            first_write_started.set()
            await write_may_finish.wait()
        return await original(**kwargs)

    monkeypatch.setattr(tide.store, "complete_runs", slow_first_complete)

    @tide.workflow("reclaimed")
    async def reclaimed(run: Run) -> int:
        nonlocal calls, active, peak
        calls += 1
        mine = calls
        active += 1
        peak = max(peak, active)
        try:
            if mine > 1:
                await second_may_finish.wait()
            return mine
        finally:
            active -= 1

    @tide.workflow("other")
    async def other(run: Run) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        other_started.set()
        active -= 1

    handle = await tide.enqueue("reclaimed")
    async with working(tide, concurrency=1, poll_interval=0.1) as worker:
        with anyio.fail_after(10):
            await first_write_started.wait()
        # Attempt 1's code is done; its completion is in flight. Its lease runs out
        # (as after heartbeats that failed for a while) and the reconciler requeues it.
        await db.execute(
            "UPDATE tidebase.runs SET lease_expires_at = now() - interval '1 second' WHERE id = $1",
            handle.id,
        )
        await tide.store.requeue_expired(limit=10)
        # Give the worker a chance to claim the run again (it can only when the
        # finishing run's slot counts as free).
        with anyio.move_on_after(2):
            await eventually(lambda: calls == 2, timeout=2)
        write_may_finish.set()
        # Attempt 1's completion is refused by the fence: that execution is lost.
        await eventually(lambda: worker.stats.lost == 1, what="attempt 1 lost")
        await eventually(lambda: calls == 2, what="attempt 2 started")
        # Attempt 2 is executing its code here right now.
        assert active == 1
        assert worker.inflight == 1, "attempt 2 is executing but no longer counted in flight"
        assert handle.id in worker._executions, "attempt 2 would no longer be heartbeated"
        await tide.enqueue("other")
        with anyio.move_on_after(1):
            await other_started.wait()
        assert not other_started.is_set(), "a second run started beside attempt 2 at concurrency 1"
        second_may_finish.set()
        assert await tide.runs.wait(handle.id, timeout=10) == 2
        with anyio.fail_after(10):
            await other_started.wait()
    assert peak == 1


async def test_a_claim_that_comes_back_with_the_same_fence_starts_no_second_execution(
    tide: Tidebase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a server crash that undoes a claim (claims commit without waiting for their
    WAL flush) looks like to the worker that made it: its next claim returns the same
    (run, attempt), the fence of the execution still in progress there. That execution
    goes on under the re-established lease; no second one may start beside it, or two
    executions would write under one fence."""
    step_may_finish = anyio.Event()
    entered = 0
    first_claim: list[ClaimedRun] = []
    handed_again = 0
    original = tide.store.claim

    async def claim(**kwargs: Any) -> list[ClaimedRun]:
        nonlocal handed_again
        got = await original(**kwargs)
        if got and not first_claim:
            first_claim.extend(got)
        elif not got and first_claim and not step_may_finish.is_set():
            handed_again += 1
            return list(first_claim)
        return got

    monkeypatch.setattr(tide.store, "claim", claim)

    async def slow_step() -> str:
        await step_may_finish.wait()
        return "done"

    @tide.workflow("fenced-once")
    async def fenced_once(run: Run) -> str:
        nonlocal entered
        entered += 1
        return str(await run.step("slow", slow_step))

    handle = await tide.enqueue("fenced-once")
    async with working(tide, concurrency=2, poll_interval=0.05):
        await eventually(lambda: entered == 1 and handed_again >= 3)
        assert entered == 1
        step_may_finish.set()
        assert await tide.runs.wait(handle.id, timeout=10) == "done"
    assert entered == 1


async def test_a_server_crash_that_undoes_a_claim_never_runs_the_run_twice_at_once(
    tmp_path: Path,
) -> None:
    """A worker claims a run (the claim's WAL not yet flushed: wal_writer_delay is
    stretched so that the crash surely loses it), the server crashes while the run's
    first step executes, and comes back. However the worker learns of it (its heartbeat
    finds the lease gone, or its next claim returns the same fence), the run's code
    never executes twice at once, and the run completes."""
    from tidebase_async.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(tmp_path / "pg")
    await anyio.to_thread.run_sync(server.start)
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

        async with opened(tide):
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
