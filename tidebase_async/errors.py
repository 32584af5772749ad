"""The exception tree of tidebase-async.

Everything the library raises on purpose subclasses :class:`TidebaseError`::

    TidebaseError
      ConfigurationError    bad DSN, missing secret, bad option, bad argument
      EmbeddedPostgresError the embedded server could not start or stop
      StoreError            database failure, original on __cause__
        DatabaseUnreachable cannot connect: names host, port and database
        ConnectionLost      the connection broke mid-operation; safe to retry
        SchemaVersionError  database migrated by a newer tidebase-async
      NotFoundError
        RunNotFound
        WorkflowNotFound
        GateNotFound
      ConflictError
        GateAlreadyResolved ``status`` says how it was closed (approved, expired, ...)
      SerializationError    names the step (or input/output) and the type msgspec refused
      InvalidSchedule
      LeaseLost             another worker owns the run now
      NonDeterminismError   replay met a different step than recorded
      SignatureError        webhook signature bad or stale
        GateTokenInvalid    a gate resolve token that is wrong, used or never issued
      ChildFailed           a child run failed or was cancelled; holds its error
      RecoveryFailed        an inline run's recovery webhook could not be delivered
      RunFailed             workflow raised; holds the recorded error
      RunCancelled
      StepTimeout           a step ran past its ``timeout``
      WaitTimeout           runs.wait gave up, or run.wait_for_event timed out (a TimeoutError)
      StreamOverflow        a live-output subscriber fell too far behind; chunks dropped
      StepFailed            replay of a step whose recorded failure the workflow handled
      PayloadTooLarge       a checkpoint, input or state exceeds the configured limit

Signals that unwind workflow code (suspension) subclass ``BaseException`` so that a
user's ``except Exception`` cannot swallow them; they live in ``execution.py``.
"""

from __future__ import annotations

from typing import Any


class TidebaseError(Exception):
    """Base class of every error tidebase-async raises on purpose."""


class ConfigurationError(TidebaseError):
    """A bad DSN, option or argument: the message names which and why."""


class EmbeddedPostgresError(TidebaseError):
    """The embedded Postgres could not be started or stopped; the message says what to do."""


class StoreError(TidebaseError):
    """A database operation failed; the driver's exception is on ``__cause__``."""


class DatabaseUnreachable(StoreError):
    """No connection could be made; the message names host, port and database."""


class ConnectionLost(StoreError):
    """The database connection broke during an operation (server restart, network,
    ``pg_terminate_backend``); whether the operation committed is unknown."""


class SchemaVersionError(StoreError):
    """The database schema was migrated by a newer tidebase-async than this one."""


class NotFoundError(TidebaseError):
    """Something looked up by id or name does not exist."""


class RunNotFound(NotFoundError):
    """No run has the given id."""


class WorkflowNotFound(NotFoundError):
    """No workflow is registered under the given name in this process."""


class GateNotFound(NotFoundError):
    """The run has no gate of that name (names carry ordinals: ``approve#2``)."""


class ConflictError(TidebaseError):
    """The operation conflicts with the current state of the database."""


class GateAlreadyResolved(ConflictError):
    """The gate is no longer pending; the first decision stands. ``status`` is how it
    was closed: ``approved``, ``rejected``, ``expired`` or ``cancelled`` (its run was
    cancelled or ended)."""

    def __init__(self, message: str, *, status: str | None = None) -> None:
        super().__init__(message)
        self.status = status


class SerializationError(TidebaseError):
    """A value could not be encoded or decoded with msgspec.

    ``where`` names the step (``step 'fetch'``), ``input``, ``output`` or ``state``;
    ``type_name`` is the type msgspec refused, when known.
    """

    def __init__(self, message: str, *, where: str = "", type_name: str = "") -> None:
        super().__init__(message)
        self.where = where
        self.type_name = type_name


class PayloadTooLarge(SerializationError):
    """An encoded value is larger than the configured maximum."""


class InvalidSchedule(TidebaseError):
    """A schedule's cron expression, interval or timezone is not valid."""


class LeaseLost(TidebaseError):
    """This worker no longer owns the run: its lease expired and another took over,
    or the run was cancelled. Every write it attempts for the run is refused."""


class NonDeterminismError(TidebaseError):
    """Replay reached a different step than the history records at that position."""


class SignatureError(TidebaseError):
    """A webhook signature is missing, malformed, wrong or outside the tolerance."""


class GateTokenInvalid(SignatureError):
    """A gate resolve token does not match: wrong, already used, or never issued."""


class ChildFailed(TidebaseError):
    """A child run ended failed or cancelled. ``child_id``, ``workflow``, ``status``
    and the child's recorded ``error`` (``type``, ``message``, ...) are attached."""

    def __init__(
        self, *, child_id: Any, workflow: str, status: str, error: dict[str, Any] | None
    ) -> None:
        self.child_id = child_id
        self.workflow = workflow
        self.status = status
        self.error: dict[str, Any] = dict(error or {})
        kind = self.error.get("type", "Error")
        message = self.error.get("message", "")
        super().__init__(f"child run {child_id} ({workflow}) {status}: {kind}: {message}")


class RecoveryFailed(TidebaseError):
    """The recovery webhook of an inline run could not be delivered (recorded as the
    run's error type when its deliveries are spent)."""


class StepTimeout(TidebaseError):
    """A step ran longer than its ``timeout`` and was cancelled."""


class StepFailed(TidebaseError):
    """Raised on replay by a step whose recorded outcome is a failure that the workflow
    caught and went past. ``error`` holds the recorded ``type``, ``message`` and
    ``traceback``; the first execution raised the original exception instead, so code
    that handles step failures should catch ``Exception`` (or both)."""

    def __init__(self, step: str, error: dict[str, Any]) -> None:
        self.step = step
        self.error = dict(error)
        self.error_type = str(self.error.get("type", "Error"))
        super().__init__(
            f"step {step!r} failed: {self.error_type}: {self.error.get('message', '')}"
        )


class StreamOverflow(TidebaseError):
    """A live-output subscriber (``tide.runs.stream``) read so slowly that more than
    its bound of unread chunks piled up; later chunks were dropped and the stream ends."""


class WaitTimeout(TidebaseError, TimeoutError):
    """``runs.wait`` reached its timeout before the run finished (the run goes on), or
    ``run.wait_for_event`` reached its timeout before an event came (nothing arrives
    at that wait later)."""


class RunFailed(TidebaseError):
    """The run ended in ``failed``; ``error`` holds the recorded error
    (``type``, ``message``, ``traceback``)."""

    def __init__(self, run_id: Any, error: dict[str, Any] | None) -> None:
        self.run_id = run_id
        self.error: dict[str, Any] = dict(error or {})
        kind = self.error.get("type", "Error")
        message = self.error.get("message", "")
        super().__init__(f"run {run_id} failed: {kind}: {message}")


class RunCancelled(TidebaseError):
    """The run ended in ``cancelled``; ``reason`` is what the canceller gave."""

    def __init__(self, run_id: Any, reason: str | None = None) -> None:
        self.run_id = run_id
        self.reason = reason
        super().__init__(f"run {run_id} was cancelled" + (f": {reason}" if reason else ""))
