"""Inline runs (``tide.run``): a run executed in the calling process, at once, without
a queue. The run is created already claimed (or an existing one is claimed), executes
here under a heartbeated lease, waits in place while it waits (firing its own timers,
so no worker is needed), is claimed again here when it is queued again, and a claim
that could not finish is handed back. Whatever this process leaves, a worker of the
run's queue takes over from the checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from uuid import UUID

import anyio
import msgspec

from tidebase_async import errors
from tidebase_async.engine.context import EngineContext
from tidebase_async.engine.executor import Outcome, execute
from tidebase_async.engine.leases import Leases, new_owner_id
from tidebase_async.engine.writes import RunWrites
from tidebase_async.store import ClaimedRun, NewRun, StepRecord
from tidebase_async.store.listener import watch_run

#: Outcomes after which the run waits (a gate, a sleep, a child, a retry's backoff).
_WAITING: frozenset[Outcome] = frozenset({"retrying", "suspended", "woken"})


async def run_inline(
    context: EngineContext,
    *,
    run_id: UUID,
    new_run: Callable[[], NewRun],
    recovery_webhook: str | None = None,
) -> None:
    """Execute run ``run_id`` here until it is no longer this call's to execute: it
    finished here, or another worker owns it now. The caller then reads its outcome.

    A run that does not exist yet is created already claimed, as ``new_run()``
    describes it (which validates the arguments: it raises before anything is
    written); ``recovery_webhook`` is where the reconciler asks the app to resume it
    should this process die. An existing run is resumed when it is queued (a completed
    one is simply returned to the caller to read).

    Waiting (gate, sleep, child) holds no lease: this call waits in place and resumes
    the run here when it is queued again, unless a worker claims it first.

    Raises:
        ConnectionLost: the database stayed unreachable; the run was handed back to
            its queue (or its lease will expire) and resumes from its checkpoints.
    """
    owner = "inline:" + new_owner_id()
    leases = Leases(context, owner)
    writes = RunWrites(context.store, owner)
    claimed = await _create_claimed(context, owner, run_id, new_run, recovery_webhook)
    while True:
        if claimed is None:
            claimed = await _claim_when_queued(context, owner, run_id)
            if claimed is None:
                return
        store = context.store
        history = (await store.load_steps([run_id])).get(run_id, []) if claimed.step_count else []
        outcome = await _execute_here(context, leases, writes, claimed, history)
        if outcome in _WAITING:
            claimed = None
            continue
        if outcome == "released":
            raise errors.ConnectionLost(
                f"inline run {run_id}: the database stayed unreachable; the run was handed "
                "back to its queue (or its lease will expire) and resumes from its "
                "checkpoints"
            )
        # completed or failed here, or "lost": another worker owns it now.
        return


async def _create_claimed(
    context: EngineContext,
    owner: str,
    run_id: UUID,
    new_run: Callable[[], NewRun],
    recovery_webhook: str | None,
) -> ClaimedRun | None:
    """Create the run already claimed by ``owner``; None when it exists (created
    before, or by a concurrent call with this run id that won)."""
    store = context.store
    if await store.run_status(run_id) is not None:
        return None
    new = new_run()
    claimed = await store.start_inline(
        run_id=run_id,
        worker_id=owner,
        workflow=new.workflow,
        queue=new.queue,
        input=bytes(new.input),
        metadata=None if new.metadata is None else bytes(new.metadata),
        max_attempts=new.max_attempts,
        lease_s=context.lease_s,
        channels=None if new.channels is None else msgspec.json.encode(new.channels),
        recovery_webhook=recovery_webhook,
        trace_context=None if new.trace_context is None else bytes(new.trace_context),
        version=new.version,
    )
    if claimed is not None:
        context.notifier.runs_changed(run_id)
    return claimed


async def _claim_when_queued(context: EngineContext, owner: str, run_id: UUID) -> ClaimedRun | None:
    """Wait while the run waits, then claim it here once it is queued and due. None
    when it is not this call's to execute: it finished, or a worker claimed it first."""
    store = context.store
    if await _status_after_waiting(context, run_id) != "queued":
        return None
    due = await store.seconds_until_due(run_id)
    if due > 0:
        await anyio.sleep(due)
    return await store.claim_by_id(
        worker_id=owner, run_id=run_id, lease_s=context.lease_s, versions=context.versions.keys
    )


async def _status_after_waiting(context: EngineContext, run_id: UUID) -> str | None:
    """The run's status once it is no longer waiting (LISTEN, polling each second).
    A timer of the run (a sleep, a gate's expiry) is fired here when due, so an
    inline run needs no worker to wake it."""
    store = context.store
    with watch_run(context.listener, run_id) as changed:
        while True:
            changed.clear()
            status, wake_in = await store.waiting_state(run_id)
            if status != "waiting":
                return status
            if wake_in is not None and wake_in <= 0:
                await store.wake_if_due(run_id)
                continue
            await changed.wait_for(1.0 if wake_in is None else min(1.0, wake_in))


async def _execute_here(
    context: EngineContext,
    leases: Leases,
    writes: RunWrites,
    claimed: ClaimedRun,
    history: list[StepRecord],
) -> Outcome:
    """Execute one claim here, heartbeating it and stopping it if the run is
    cancelled. A claim that is not finished (the caller was cancelled, the database
    stayed unreachable, or a wait ended while the run was being parked) is handed back
    at once, so that it runs again without waiting for its lease to expire."""
    claim = (claimed.id, claimed.attempt)
    scope = anyio.CancelScope()
    outcome: Outcome = "released"
    unsubscribe: list[Callable[[], None]] = []
    leases.held[claim] = scope
    try:
        unsubscribe = leases.subscribe()
        async with anyio.create_task_group() as tg:
            tg.start_soon(leases.maintain)
            try:
                result = await execute(
                    context,
                    writes=writes,
                    claimed=claimed,
                    history=history,
                    cancel_scope=scope,
                    executions=leases.executions,
                )
                outcome = result.outcome
            finally:
                tg.cancel_scope.cancel()
    finally:
        for remove in unsubscribe:
            remove()
        del leases.held[claim]
        if outcome in ("released", "woken"):
            await leases.release([claim])
    return outcome
