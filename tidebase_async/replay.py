"""The ``Run`` object a workflow receives: checkpointed steps, state, determinism.

Replay model: the workflow function runs from the top on every claim. ``run.step``
looks up the next position in the history loaded at claim time; a completed step
returns its stored value without calling its function, the first step not in the
history executes and is checkpointed in one fenced statement. A completed step is never
executed again; a step whose worker died while it ran is executed again
(at-least-once), so external side effects need idempotency keys (``run.id`` plus the
step name make a good one).
"""

from __future__ import annotations

import functools
import inspect
import logging
import random as _random
import time
import traceback
import uuid as _uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast
from uuid import UUID

import anyio
import msgspec

from tidebase_async import codec, errors
from tidebase_async.models import Retry
from tidebase_async.store import Checkpoint, ClaimedRun, StepRecord, Store
from tidebase_async.workflows import backoff_delay, check_name
from tidebase_async.writes import RunWrites

logger = logging.getLogger(__name__)

T = TypeVar("T")

_NO_RETRY = Retry(attempts=1)
#: How long a fenced write keeps retrying across a lost connection.
WRITE_RETRY_S = 300.0


def error_info(exc: BaseException) -> dict[str, Any]:
    """What is recorded about an exception: type, message, traceback.

    NUL characters are spelled out (Postgres jsonb cannot store them): an exception
    message holding one must not make the failure itself unrecordable.
    """
    try:
        message = str(exc)
    except Exception as broken:  # a user exception whose __str__ itself fails
        message = f"<str() of the exception failed: {type(broken).__qualname__}>"
    try:
        trace = "".join(traceback.format_exception(exc))
    except Exception:
        trace = ""
    return {
        "type": type(exc).__qualname__,
        "message": _printable(message),
        "traceback": _printable(trace),
    }


def _printable(text: str) -> str:
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    # Lone surrogates cannot be encoded as UTF-8 at all.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def as_seconds(value: float | timedelta | None, *, what: str) -> float | None:
    """Accept float seconds or a timedelta; reject negatives and other types."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise errors.ConfigurationError(
            f"{what} must be seconds (float) or a timedelta, got {type(value).__name__}"
        )
    if seconds != seconds or seconds < 0:
        raise errors.ConfigurationError(f"{what} must be >= 0, got {value!r}")
    return seconds


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch: objects merge recursively, ``None`` deletes a key,
    anything else replaces."""
    if not isinstance(patch, Mapping):
        return patch
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class Execution:
    """Everything one claim of one run needs; shared by the worker and inline runs.

    Mutable, owned by the task executing the run.
    """

    def __init__(
        self,
        *,
        store: Store,
        writes: RunWrites,
        claimed: ClaimedRun,
        history: list[StepRecord],
        on_event: Callable[[UUID], None],
        max_payload: int,
        lease_s: float = 30.0,
    ) -> None:
        self.store = store
        self.writes = writes
        self.worker_id = writes.worker_id
        self.claimed = claimed
        # By position. Positions can have holes: a step whose checkpoint write failed
        # and whose error the workflow swallowed; replay executes such a step again.
        self.history: dict[int, StepRecord] = {r.position: r for r in history}
        self.history_end = max(self.history, default=-1) + 1
        self.on_event = on_event
        self.max_payload = max_payload
        self.lease_s = lease_s
        # Set when a write was refused by the fence or the heartbeat lost the lease:
        # from then on the outcome of this execution is discarded.
        self.lost = False
        # Set once the final outcome is being written, so a late heartbeat that no
        # longer sees the run does not cancel a run that just finished.
        self.finishing = False
        # Set when one of our own writes gave up on a lost connection: the run is then
        # handed back instead of failing (a StoreError raised by the user's code is an
        # ordinary failure).
        self.write_failed = False
        self._mono0 = time.monotonic()
        self.state_bytes = claimed.state
        self.executed_steps = 0
        self.replayed_steps = 0

    def now(self) -> datetime:
        """The database clock as of the claim, advanced by local monotonic time."""
        return self.claimed.db_now + timedelta(seconds=time.monotonic() - self._mono0)

    @property
    def run_id(self) -> UUID:
        return self.claimed.id

    @property
    def attempt(self) -> int:
        return self.claimed.attempt

    def lease_lost(self, exc: errors.LeaseLost) -> errors.LeaseLost:
        self.lost = True
        return exc

    async def write(
        self,
        what: str,
        write: Callable[[], Awaitable[None]],
        *,
        landed: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        """Perform a fenced write, retrying it while the connection is lost.

        A write that failed only because the connection broke is retried with backoff
        until the database answers (up to ``WRITE_RETRY_S``, or most of the lease if
        that is longer): a late write is safe, the fence refuses it if another worker
        took the run over meanwhile, and after an outage the reconciler waits a lease
        before requeueing (see the worker), so a database restart does not turn a
        finished step into a second execution. When the first try may have committed
        before the connection broke, ``landed`` tells whether it did.

        Raises:
            LeaseLost: the fence refused the write (marks the execution lost).
            ConnectionLost: the database stayed unreachable all that time.
        """
        deadline = time.monotonic() + max(self.lease_s * 0.8, WRITE_RETRY_S)
        delay = 0.05
        broken = False
        while True:
            try:
                if broken and landed is not None and await landed():
                    return
                await write()
                return
            except errors.LeaseLost as exc:
                raise self.lease_lost(exc) from None
            except errors.ConnectionLost as exc:
                if time.monotonic() + delay > deadline:
                    self.write_failed = True
                    raise
                broken = True
                logger.warning(
                    "run %s: %s failed (%s); retrying in %.2fs",
                    self.run_id,
                    what,
                    exc,
                    delay,
                    extra={"run_id": str(self.run_id)},
                )
                await anyio.sleep(delay)
                delay = min(delay * 2, 1.0)


class RunState:
    """The run's live state: a JSON document readers see through ``runs.get``.

    Only the worker holding the lease writes it (every write is fenced). While the
    workflow replays code before its last checkpoint, writes apply in memory only: the
    database already holds their effect, and rewriting it would make progress go
    backwards for readers.
    """

    def __init__(self, run: Run) -> None:
        self._run = run
        # Start from the run's initial state (the column default), not from what the
        # database holds now: the workflow re-runs from the top and re-applies its
        # writes, so a read between steps must see on replay what it saw the first
        # time. Deterministic code arrives at the stored state by the end of replay.
        self._value: Any = {}

    async def get(self) -> Any:
        """The current state (a copy; mutate it through ``set``/``patch``)."""
        return codec.decode(codec.encode(self._value, where="state"), where="state")

    async def set(self, value: Any) -> None:
        """Replace the state.

        Raises:
            SerializationError: ``value`` is not encodable.
            LeaseLost: the run is no longer leased to this worker.
        """
        ex = self._run._ex
        data = codec.encode(value, where="state", max_size=ex.max_payload)
        self._value = codec.decode(data, where="state")
        if self._run._replaying():
            return
        await ex.write(
            "state update",
            functools.partial(
                ex.store.set_state,
                run_id=ex.run_id,
                worker_id=ex.worker_id,
                attempt=ex.attempt,
                state=data,
                event_data=data if len(data) <= 4096 else b'{"truncated":true}',
            ),
        )
        ex.state_bytes = data
        ex.on_event(ex.run_id)

    async def patch(self, patch: Mapping[str, Any]) -> None:
        """Apply an RFC 7396 merge patch (nested dicts merge, ``None`` deletes a key).

        Raises:
            ConfigurationError: ``patch`` is not a mapping.
            SerializationError, LeaseLost: as ``set``.
        """
        if not isinstance(patch, Mapping):
            raise errors.ConfigurationError(
                f"state.patch takes a mapping, got {type(patch).__name__}; use state.set"
            )
        await self.set(merge_patch(self._value, patch))


class Run:
    """Handle a workflow function receives: checkpointed steps, state, helpers.

    Code between steps re-runs on every resume and must be deterministic: use
    ``run.now()``, ``run.uuid()`` and ``run.random()`` instead of the clock, uuid4 and
    random, which would differ between executions.
    """

    def __init__(self, ex: Execution, *, workflow: str, input: Any) -> None:
        self._ex = ex
        self._position = 0
        self._ordinals: dict[str, int] = {}
        self.id: UUID = ex.claimed.id
        self.attempt: int = ex.claimed.attempt
        self.workflow: str = workflow
        self.queue: str = ex.claimed.queue
        self.input: Any = input
        self.state = RunState(self)

    def _replaying(self) -> bool:
        return self._position < self._ex.history_end

    def _next_name(self, name: str) -> str:
        count = self._ordinals.get(name, 0) + 1
        self._ordinals[name] = count
        return name if count == 1 else f"{name}#{count}"

    async def step(
        self,
        name: str,
        fn: Callable[..., Any],
        /,
        *args: Any,
        retry: Retry | None = None,
        timeout: float | timedelta | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` once and checkpoint its result.

        ``fn`` may be sync (it runs in a worker thread) or async. On replay a completed
        step returns its stored value without calling ``fn``; the value is decoded into
        ``fn``'s declared return type when it has one (a ``msgspec.Struct``, say), and the
        first execution returns that same decoded value, so both paths see one shape.
        A name used again gets an ordinal: ``fetch``, ``fetch#2``, ...

        Guarantees: a completed step never runs again; a step runs more than once only
        when the process running it died first, or per ``retry``.

        Raises:
            NonDeterminismError: the history has another step at this position.
            SerializationError: the result cannot be encoded (names step and type).
            StepTimeout: the step ran past ``timeout`` on its last attempt.
            LeaseLost: another worker owns the run now.
            Exception: whatever ``fn`` raised on its last attempt.
            StepFailed: on replay, for a recorded failure the workflow caught and went
                past (the original exception object cannot be stored).
        """
        check_name("step", name)
        if "#" in name or name.startswith("~"):
            raise errors.ConfigurationError(
                f"step name {name!r} may not contain '#' or start with '~' "
                "(reserved for ordinals and built-in steps)"
            )
        return await self._step(name, fn, args, kwargs, retry=retry, timeout=timeout)

    async def _step(
        self,
        name: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        retry: Retry | None,
        timeout: float | timedelta | None,
        tp: Any = None,
    ) -> Any:
        ex = self._ex
        if ex.lost:
            raise errors.LeaseLost(f"run {ex.run_id} is no longer leased to this worker")
        full_name = self._next_name(name)
        position = self._position
        self._position += 1
        where = f"step {full_name!r}"
        if tp is None:
            tp = codec.return_type(fn)
        record = ex.history.get(position)
        if record is not None:
            if record.name != full_name:
                raise errors.NonDeterminismError(
                    f"run {ex.run_id}: step #{position + 1} is {full_name!r} now but was "
                    f"{record.name!r} when it was recorded; the workflow code changed or "
                    "depends on something other than its input and step results"
                )
            if record.status == "completed":
                ex.replayed_steps += 1
                return codec.decode(record.output or b"null", tp=tp, where=where)
            if record.replay_failure and position + 1 < ex.history_end:
                # The workflow caught this failure and went on to later steps: replay
                # the failure, or the path after it could change under the history.
                ex.replayed_steps += 1
                recorded = codec.decode(record.error or b"{}", where=where)
                raise errors.StepFailed(full_name, recorded if isinstance(recorded, dict) else {})
            # A failure that ended an earlier attempt: execute the step again.
        policy = retry or _NO_RETRY
        if not isinstance(policy, Retry) or policy.attempts < 1:
            raise errors.ConfigurationError(f"{where}: retry must be a Retry with attempts >= 1")
        timeout_s = as_seconds(timeout, what=f"{where} timeout")
        started_at = ex.now()
        attempt = 0
        while True:
            attempt += 1
            try:
                value = await _call(fn, args, kwargs, timeout_s, where)
                break
            except Exception as exc:
                if isinstance(exc, errors.LeaseLost):
                    raise
                if attempt >= policy.attempts:
                    await self._record_failure(position, full_name, attempt, started_at, exc)
                    raise
                delay = backoff_delay(policy, attempt)
                logger.info(
                    "%s failed (attempt %d of %d), retrying in %.2fs: %r",
                    where,
                    attempt,
                    policy.attempts,
                    delay,
                    exc,
                    extra={"run_id": str(ex.run_id)},
                )
                await anyio.sleep(delay)
        try:
            # Checkpoints are stored as bytes (not jsonb): NUL characters are fine.
            data = codec.encode(value, where=where, max_size=ex.max_payload, jsonb=False)
        except errors.SerializationError as exc:
            await self._record_failure(position, full_name, attempt, started_at, exc)
            raise
        await self._checkpoint(
            position,
            full_name,
            "completed",
            attempt,
            started_at,
            output=data,
            event={"name": full_name, "position": position + 1},
        )
        ex.executed_steps += 1
        return codec.decode(data, tp=tp, where=where)

    async def _record_failure(
        self, position: int, name: str, attempts: int, started_at: datetime, exc: Exception
    ) -> None:
        info = error_info(exc)
        await self._checkpoint(
            position,
            name,
            "failed",
            attempts,
            started_at,
            error=msgspec.json.encode(info),
            event={"name": name, "error": {"type": info["type"], "message": info["message"]}},
        )

    async def _checkpoint(
        self,
        position: int,
        name: str,
        status: str,
        attempts: int,
        started_at: datetime,
        *,
        event: dict[str, Any],
        output: bytes | None = None,
        error: bytes | None = None,
    ) -> None:
        """Record a step outcome: fenced, group-committed, retried across a lost
        connection (without writing it twice)."""
        ex = self._ex
        item = Checkpoint(
            run_id=ex.run_id,
            attempt=ex.attempt,
            position=position,
            name=name,
            status=status,
            attempts=attempts,
            output=output,
            error=error,
            started_at=started_at,
            event_data=msgspec.json.encode(event),
        )
        await ex.write(
            f"checkpoint of step {name!r}",
            functools.partial(ex.writes.checkpoint, item),
            landed=functools.partial(self._checkpoint_landed, position, status),
        )
        ex.on_event(ex.run_id)

    async def _checkpoint_landed(self, position: int, status: str) -> bool:
        ex = self._ex
        recorded = await ex.store.step_outcome(run_id=ex.run_id, position=position)
        return recorded == (status, ex.attempt)

    async def now(self) -> datetime:
        """The current time (database clock), checkpointed: replays return the same."""
        return cast(datetime, await self._builtin("~now", self._ex.now, datetime))

    async def uuid(self) -> UUID:
        """A random UUID, checkpointed: replays return the same."""
        return cast(UUID, await self._builtin("~uuid", _uuid.uuid4, UUID))

    async def random(self) -> float:
        """A float in [0, 1), checkpointed: replays return the same."""
        return cast(float, await self._builtin("~random", _random.random, float))

    async def _builtin(self, name: str, make: Callable[[], Any], tp: Any) -> Any:
        async def produce() -> Any:  # a coroutine function: no thread hop for a clock read
            return make()

        return await self._step(name, produce, (), {}, retry=None, timeout=None, tp=tp)


async def _call(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout_s: float | None,
    where: str,
) -> Any:
    """Call a step function: coroutine functions on the loop, others in a thread.

    A timeout cancels the step. A sync function cannot be interrupted: its thread is
    abandoned and finishes in the background, its result ignored.
    """
    with anyio.move_on_after(timeout_s) as scope:
        if inspect.iscoroutinefunction(inspect.unwrap(fn)):
            return await fn(*args, **kwargs)
        result = await anyio.to_thread.run_sync(
            functools.partial(fn, *args, **kwargs), abandon_on_cancel=True
        )
        if inspect.isawaitable(result):
            return await result
        return result
    # Only our own deadline lands here; a TimeoutError the step raised itself
    # propagates unchanged.
    assert scope.cancelled_caught
    raise errors.StepTimeout(f"{where} timed out after {timeout_s:g}s")
