"""Executes one claim of one run and records its outcome: the workflow replays its
history and goes on, then the run completes, fails, retries with backoff, is parked
while it waits, is cancelled at its deadline, or is handed back. Shared by the worker
and inline runs."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from typing import Any, Literal
from uuid import UUID

import anyio
import msgspec

from tidebase_async import errors
from tidebase_async._util import codec
from tidebase_async._util.failures import error_info
from tidebase_async.engine.context import EngineContext
from tidebase_async.engine.execution import Execution, Suspend
from tidebase_async.engine.run import _CURRENT, Run
from tidebase_async.engine.workflows import Workflow, backoff_delay
from tidebase_async.engine.writes import RunWrites
from tidebase_async.models import Retry
from tidebase_async.store import ClaimedRun, Completion, StepRecord

logger = logging.getLogger(__name__)

# suspended: parked as waiting. woken: the wait ended while it was being parked; the
# claim is to be handed back (released) so the run replays at once. cancelled: the run
# was cancelled while executing here (the database already says so).
Outcome = Literal[
    "completed", "failed", "retrying", "lost", "released", "suspended", "woken", "cancelled"
]

# Errors that another attempt cannot fix: fail the run at once.
_PERMANENT: tuple[type[BaseException], ...] = (
    errors.SerializationError,
    errors.NonDeterminismError,
    errors.ConfigurationError,
    # The child stays failed: another attempt of the parent would fail the same way.
    # runs.retry(parent) retries its failed children too.
    errors.ChildFailed,
)
_UNKNOWN_WORKFLOW_RETRY = Retry(backoff=1.0, max_backoff=60.0)
_PASS_THROUGH: tuple[type[BaseException], ...] = (KeyboardInterrupt, SystemExit, GeneratorExit)


def is_cancellation(exc: BaseException) -> bool:
    return isinstance(exc, anyio.get_cancelled_exc_class())


class ExecutionResult(msgspec.Struct, kw_only=True):
    outcome: Outcome
    output: bytes | None = None
    error: dict[str, Any] | None = None
    executed_steps: int = 0
    replayed_steps: int = 0
    #: What failed the attempt (outcomes failed and retrying), for the run's span.
    exception: BaseException | None = None


async def execute(
    context: EngineContext,
    *,
    writes: RunWrites,
    claimed: ClaimedRun,
    history: list[StepRecord],
    cancel_scope: anyio.CancelScope,
    executions: dict[UUID, Execution] | None = None,
    on_finishing: Callable[[UUID, int], None] | None = None,
) -> ExecutionResult:
    """Run the workflow of ``claimed`` from the top (replaying its history) and write
    the outcome: completed, failed, or requeued for a retry with backoff.

    ``cancel_scope`` is cancelled by the owner when the lease is lost (the outcome is
    then discarded) or on shutdown (the run is then released, not failed). While it
    executes, the execution is in ``executions`` (the owner's leases heartbeat it);
    ``on_finishing`` is called once its code is done (see ``begin_finishing``).
    """
    ex = Execution(
        context, writes=writes, claimed=claimed, history=history, on_finishing=on_finishing
    )
    if executions is not None:
        executions[claimed.id] = ex
    telemetry = context.telemetry
    started = telemetry.run_started(claimed)
    try:
        if ex.tracer is None:
            result = await _execute(ex, cancel_scope)
        else:
            result = await telemetry.traced_run(ex, functools.partial(_execute, ex, cancel_scope))
        telemetry.run_finished(claimed, result.outcome, started)
        return result
    finally:
        # Only our own entry: a later claim of the run (this worker may claim it again
        # while this execution still writes its outcome) has replaced it.
        if executions is not None and executions.get(claimed.id) is ex:
            del executions[claimed.id]


async def _execute(ex: Execution, cancel_scope: anyio.CancelScope) -> ExecutionResult:
    claimed = ex.claimed
    wf = workflow_of(ex)
    if wf is None:
        if claimed.version is not None:
            return _hand_back_unknown_version(ex)
        return await _fail_unknown_workflow(ex)
    if claimed.deadline_at is not None and claimed.deadline_at <= claimed.db_now:
        return await _cancel_for_deadline(ex)
    try:
        value = codec.decode(claimed.input or b"null", tp=wf.input_type, where="input")
    except errors.SerializationError as exc:
        return await _finish_failed(ex, exc, wf=None)
    run = Run(ex, workflow=wf.name, input=value)
    output: Any = None
    failure: BaseException | None = None
    deadline_scope = _deadline_scope(ex)
    current = _CURRENT.set(run)
    with cancel_scope, deadline_scope or contextlib.nullcontext():
        try:
            if wf.takes_input:
                output = await wf.fn(run, value)
            else:
                output = await wf.fn(run)
        except errors.LeaseLost:
            ex.lost = True
        except Suspend:
            pass  # ex.suspension says what the run waits for
        except Exception as exc:
            failure = exc
        except BaseException as exc:
            # Cancellation and interpreter exits pass; any other BaseException the
            # workflow raises is its failure, not the worker's (a Suspend inside a
            # group is handled through ex.suspension below).
            if isinstance(exc, _PASS_THROUGH) or is_cancellation(exc):
                raise
            failure = exc
        finally:
            _CURRENT.reset(current)
    stopped = _stopped(ex, cancel_scope)
    if stopped is not None:
        return stopped
    cancelled = cancel_scope.cancel_called or ex.lost
    if deadline_scope is not None and deadline_scope.cancelled_caught and not cancelled:
        return await _cancel_for_deadline(ex)
    if isinstance(failure, errors.StoreError) and ex.write_failed:
        return _give_back_after_write_failure(ex, failure)
    if ex.suspension is not None:
        # Whatever the workflow did after a wait that is not over (returned, raised,
        # or swallowed the signal), its outcome is not final: park the run.
        return await _suspend(ex, ex.suspension)
    if failure is not None:
        return await _finish_failed(ex, failure, wf=wf)
    try:
        data = codec.encode(output, where="output", max_size=ex.max_payload)
    except errors.SerializationError as exc:
        return await _finish_failed(ex, exc, wf=None)
    ex.begin_finishing()
    try:
        await ex.write(
            "completing the run",
            functools.partial(
                ex.writes.complete,
                Completion(run_id=claimed.id, attempt=ex.attempt, output=data),
            ),
            landed=functools.partial(_status_is, ex, {"completed"}),
        )
    except errors.LeaseLost:
        return _result(ex, "lost")
    ex.on_event(claimed.id)
    result = _result(ex, "completed")
    result.output = data
    return result


def _deadline_scope(ex: Execution) -> anyio.CancelScope | None:
    """The scope that cancels the workflow at the run's deadline, in its own scope: a
    deadline is not a shutdown (which releases) nor a lost lease (which drops the
    execution). None without a deadline: a cancel scope is a measurable part of a
    no-op run's cost in the worker."""
    deadline_at = ex.claimed.deadline_at
    if deadline_at is None:
        return None
    return anyio.move_on_after((deadline_at - ex.now()).total_seconds())


def workflow_of(ex: Execution) -> Workflow | None:
    """The registered workflow that executes the claimed run: its recorded version
    (an unversioned run: the unversioned registration, else the newest version)."""
    claimed = ex.claimed
    wf = ex.versions.get(claimed.workflow, claimed.version)
    if wf is None and claimed.version is None:
        # A context built without the version registry (it has only ``workflows``).
        wf = ex.workflows.get(claimed.workflow)
    return wf


def _hand_back_unknown_version(ex: Execution) -> ExecutionResult:
    """A versioned run whose version is not registered here (claimed by id: worker
    claims take only versions they have). Handed back unspent, for a worker that has
    it: a run of a version no live worker has stays queued, never failed."""
    claimed = ex.claimed
    logger.warning(
        "run %s: workflow %r version %r is not registered here (registered: %s); "
        "handing it back for a worker that has it",
        claimed.id,
        claimed.workflow,
        claimed.version,
        ", ".join(repr(v) for v in ex.versions.known(claimed.workflow)) or "none",
        extra={"run_id": str(claimed.id)},
    )
    return _result(ex, "released")


async def _fail_unknown_workflow(ex: Execution) -> ExecutionResult:
    """No workflow of the run's name is registered here. Retried with backoff while
    attempts remain (in a rolling deploy another worker may know the workflow), then
    failed for good: never left stuck."""
    name = ex.claimed.workflow
    known = ", ".join(sorted(ex.workflows)) or "none"
    return await _finish_failed(
        ex,
        errors.WorkflowNotFound(
            f"workflow {name!r} is not registered in worker {ex.worker_id} "
            f"(registered: {known}); register it with @tide.workflow({name!r}) "
            "in the worker process, then retry the run"
        ),
        wf=None,
        retry=_UNKNOWN_WORKFLOW_RETRY,
    )


def _stopped(ex: Execution, cancel_scope: anyio.CancelScope) -> ExecutionResult | None:
    """The result of an execution its owner stopped, whatever the workflow did: the
    run was cancelled, the lease was lost (the outcome is dropped), or shutdown
    cancelled it (the run is handed back). None when it was not stopped.

    (A deadline is checked after this: it can only have ended the workflow when its
    owner did not cancel the scope and the lease held.)"""
    if ex.cancelled:
        logger.info(
            "run %s: cancelled while executing", ex.run_id, extra={"run_id": str(ex.run_id)}
        )
        return _result(ex, "cancelled")
    if ex.lost:
        logger.warning(
            "run %s: lease lost, another worker owns it now; dropping this execution",
            ex.run_id,
            extra={"run_id": str(ex.run_id)},
        )
        return _result(ex, "lost")
    if cancel_scope.cancelled_caught:
        return _result(ex, "released")
    return None


def _give_back_after_write_failure(ex: Execution, failure: BaseException) -> ExecutionResult:
    """Our own write failed (the database stayed unreachable), not the workflow: hand
    the run back rather than spend an attempt on it."""
    logger.warning(
        "run %s: giving the run back after a database failure: %s",
        ex.run_id,
        failure,
        extra={"run_id": str(ex.run_id)},
    )
    return _result(ex, "released")


async def _finish_failed(
    ex: Execution,
    exc: BaseException,
    *,
    wf: Workflow | None,
    type_name: str | None = None,
    retry: Retry | None = None,
) -> ExecutionResult:
    """Record a failure: requeue with backoff when attempts remain and the error is not
    permanent (``wf``'s policy, or ``retry``), else fail for good."""
    info = error_info(exc)
    if type_name:
        info["type"] = type_name
    policy = wf.retry if wf is not None else retry
    spent = ex.attempt - ex.claimed.released
    retry_in: float | None = None
    if policy is not None and not isinstance(exc, _PERMANENT) and spent < ex.claimed.max_attempts:
        retry_in = backoff_delay(policy, spent)
    ex.begin_finishing()
    event = {"type": info["type"], "message": info["message"], "attempt": ex.attempt}
    if retry_in is not None:
        event["retry_in"] = round(retry_in, 3)
    outcome: list[str] = []

    async def write() -> None:
        status, _queue = await ex.store.fail_run(
            run_id=ex.run_id,
            worker_id=ex.worker_id,
            attempt=ex.attempt,
            error=msgspec.json.encode(info),
            retry_in_s=retry_in,
            event_data=msgspec.json.encode(event),
        )
        outcome.append(status)

    try:
        await ex.write(
            "recording the run's failure",
            write,
            landed=functools.partial(_status_is, ex, {"failed", "queued"}),
        )
    except errors.LeaseLost:
        return _result(ex, "lost")
    status = outcome[0] if outcome else ("queued" if retry_in is not None else "failed")
    log = logger.warning if status == "queued" else logger.error
    log(
        "run %s attempt %d %s: %s: %s",
        ex.run_id,
        ex.attempt,
        f"failed, retrying in {retry_in:.2f}s" if status == "queued" else "failed",
        info["type"],
        info["message"],
        extra={"run_id": str(ex.run_id)},
    )
    ex.on_event(ex.run_id)
    result = _result(ex, "retrying" if status == "queued" else "failed")
    result.error = info
    result.exception = exc
    return result


async def _suspend(ex: Execution, signal: Suspend) -> ExecutionResult:
    """Park the run as waiting. Refused when the claim's wake_seq moved on (a wait
    ended meanwhile): the run is then handed back, to replay at once."""
    ex.begin_finishing()
    event = {"reason": signal.reason, **signal.data}
    if signal.wake_at is not None:
        event["wake_at"] = signal.wake_at.isoformat()
    # True also when the write landed before its connection broke (see ``landed``).
    parked = [True]

    async def write() -> None:
        parked[0] = await ex.store.suspend_run(
            run_id=ex.run_id,
            worker_id=ex.worker_id,
            attempt=ex.attempt,
            wake_seq=ex.claimed.wake_seq,
            wake_at=signal.wake_at,
            event_data=msgspec.json.encode(event),
        )

    try:
        await ex.write(
            "suspending the run", write, landed=functools.partial(_status_is, ex, {"waiting"})
        )
    except errors.LeaseLost:
        return _result(ex, "lost")
    ex.on_event(ex.run_id)
    if not parked[0]:
        row = await ex.store.get_run_status(ex.run_id)
        if row is None or row.status != "running":
            return _result(ex, "lost")
        return _result(ex, "woken")
    return _result(ex, "suspended")


async def _cancel_for_deadline(ex: Execution) -> ExecutionResult:
    """The run passed its deadline: cancel it (and its children) with reason
    ``deadline``."""
    ex.begin_finishing()
    deadline = ex.claimed.deadline_at
    logger.warning(
        "run %s: deadline %s passed; cancelling it",
        ex.run_id,
        deadline.isoformat() if deadline else "?",
        extra={"run_id": str(ex.run_id)},
    )
    await ex.write_value(
        "cancelling the run at its deadline",
        functools.partial(ex.store.cancel_runs, run_ids=[ex.run_id], reason="deadline", actor=None),
    )
    ex.on_event(ex.run_id)
    return _result(ex, "cancelled")


async def _status_is(ex: Execution, statuses: set[str]) -> bool:
    """After a lost connection: did our outcome write land before it broke?"""
    row = await ex.store.get_run_status(ex.run_id)
    return row is not None and row.status in statuses


def _result(ex: Execution, outcome: Outcome) -> ExecutionResult:
    return ExecutionResult(
        outcome=outcome, executed_steps=ex.executed_steps, replayed_steps=ex.replayed_steps
    )
