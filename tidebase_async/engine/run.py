"""The ``Run`` object a workflow receives: checkpointed steps, state, determinism.

Replay model: the workflow function runs from the top on every claim. ``run.step``
looks up the next position in the history loaded at claim time; a completed step
returns its stored value without calling its function, the first step not in the
history executes and is checkpointed in one fenced statement. A completed step is never
executed again; a step whose worker died while it ran is executed again
(at-least-once), so external side effects need idempotency keys (``run.id`` plus the
step name make a good one).

This module owns ``run.step``, the checkpointed built-ins (``run.now``, ``run.uuid``,
``run.random``) and ``run.emit``; the handle's other parts are ``history`` (positions
and checkpoints), ``waits`` (sleep, gate, child, fanout), ``event_waits``
(``run.wait_for_event``), ``state`` (``run.state``) and ``usage`` (``run.usage``).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import random as _random
import time
import uuid as _uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, cast
from uuid import UUID

import anyio

from tidebase_async import errors
from tidebase_async._util import codec
from tidebase_async._util.checks import as_seconds, check_history_name, check_name
from tidebase_async.engine.emit import parts_of
from tidebase_async.engine.event_waits import RunEventWaits
from tidebase_async.engine.execution import _ENTRY, Execution
from tidebase_async.engine.patches import RunPatches
from tidebase_async.engine.state import RunState
from tidebase_async.engine.usage import RunUsage
from tidebase_async.engine.waits import RunWaits
from tidebase_async.engine.workflows import backoff_delay
from tidebase_async.models import Retry

logger = logging.getLogger(__name__)

_NO_RETRY = Retry(attempts=1)

#: The run whose workflow code executes in this context (set by the executor around the
#: workflow function; asyncio tasks the workflow starts inherit it).
_CURRENT: contextvars.ContextVar[Run | None] = contextvars.ContextVar(
    "tidebase_current_run", default=None
)


def current_run() -> Run | None:
    """The ``Run`` whose workflow code is executing in this context, else None.

    Integrations use it to find the run from code the workflow calls (a Pydantic AI
    agent, a helper library) without passing ``run`` through every call. Inside a step
    function it is still the step's run.
    """
    return _CURRENT.get()


def executing_step() -> str | None:
    """The full name of the step (or built-in) whose function executes in this
    context, else None (workflow code between steps, or outside any run)."""
    entry = _ENTRY.get()
    return None if entry is None else entry[1]


class Run(RunWaits, RunEventWaits, RunPatches):
    """Handle a workflow function receives: checkpointed steps, state, helpers.

    Code between steps re-runs on every resume and must be deterministic: use
    ``run.now()``, ``run.uuid()`` and ``run.random()`` instead of the clock, uuid4 and
    random, which would differ between executions.
    """

    def __init__(self, ex: Execution, *, workflow: str, input: Any) -> None:
        super().__init__(ex)
        self.id: UUID = ex.claimed.id
        self.attempt: int = ex.claimed.attempt
        self.workflow: str = workflow
        self.queue: str = ex.claimed.queue
        self.input: Any = input
        self._emitted: dict[str, int] = {}

    # Made on first use: most runs never touch them, and every run pays for what its
    # handle builds up front.
    @functools.cached_property
    def state(self) -> RunState:
        """The run's live state (``get``, ``set``, ``patch``)."""
        return RunState(self)

    @functools.cached_property
    def usage(self) -> RunUsage:
        """The run's usage records (tokens, cost), summed by the dashboard."""
        return RunUsage(self)

    @property
    def replaying(self) -> bool:
        """True while the workflow code re-runs the part of the run its history
        recorded (a resumed run before its last checkpoint): code with effects outside
        the run that is not a step (a notification, a log line) can skip them."""
        return self._replaying()

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
        check_history_name("step", name)
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
        position, full_name, record = self._reserve("step", name)
        where = f"step {full_name!r}"
        if tp is None:
            tp = codec.return_type(fn)
        if record is not None:
            if record.status == "completed":
                ex.replayed_steps += 1
                if record.state_after is not None:
                    # The step's own code wrote the state the first time.
                    self.state.restore(record.state_after)
                return codec.decode(record.output or b"null", tp=tp, where=where)
            if record.replay_failure and self._went_past(position):
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
        # Tracing off: this one check. Built-ins (~now, ...) get no span of their own.
        if ex.tracer is None or name[0] == "~":
            return await self._execute_step(
                position, name, full_name, fn, args, kwargs, policy, timeout_s, tp
            )
        return await ex.telemetry.traced_step(
            ex,
            full_name,
            functools.partial(
                self._execute_step,
                position,
                name,
                full_name,
                fn,
                args,
                kwargs,
                policy,
                timeout_s,
                tp,
            ),
        )

    async def _execute_step(
        self,
        position: int,
        name: str,
        full_name: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        policy: Retry,
        timeout_s: float | None,
        tp: Any,
    ) -> Any:
        """Execute a step not in the history (with ``policy``'s attempts) and checkpoint
        its outcome; its duration goes to the step metrics (built-ins excepted)."""
        ex = self._ex
        where = f"step {full_name!r}"
        started_at = ex.now()
        began = time.perf_counter()
        try:
            value, attempt = await self._attempts(
                position, full_name, fn, args, kwargs, policy, timeout_s, started_at
            )
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
        finally:
            if name[0] != "~":
                ex.telemetry.step_done(self.workflow, name, time.perf_counter() - began)
        ex.executed_steps += 1
        return codec.decode(data, tp=tp, where=where)

    async def _attempts(
        self,
        position: int,
        full_name: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        policy: Retry,
        timeout_s: float | None,
        started_at: datetime,
    ) -> tuple[Any, int]:
        """Call the step's function up to ``policy.attempts`` times; its value and the
        attempt that returned it. The last attempt's failure is checkpointed and raised."""
        ex = self._ex
        where = f"step {full_name!r}"
        attempt = 0
        while True:
            attempt += 1
            token = _ENTRY.set((position, full_name))
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
            finally:
                _ENTRY.reset(token)
        return value, attempt

    async def emit(self, chunk: Any, *, stream: str = "output") -> None:
        """Publish ``chunk`` (JSON: text, a dict, ...) on the run's live ``stream`` for
        whoever listens now (``tide.runs.stream``, the SSE route), on any process.
        Not checkpointed: a subscriber sees what is emitted while it listens, in order,
        each chunk whole whatever its size. Cheap, and never waits for subscribers;
        replayed code does not emit again. Chunks that cannot be published as fast as
        they are made (megabytes queued) are dropped, with a warning.

        Raises:
            ConfigurationError: a bad stream name.
            SerializationError: ``chunk`` is not JSON-encodable or too large.
        """
        check_name("stream", stream)
        ex = self._ex
        ex.check_active()
        data = codec.encode(chunk, where=f"chunk of stream {stream!r}", max_size=ex.max_payload)
        if _ENTRY.get() is None and self._replaying():
            return
        number = self._emitted.get(stream, 0) + 1
        self._emitted[stream] = number
        ex.publish(parts_of(ex.run_id, stream, ex.attempt, number, data))

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
    if timeout_s is None:
        # No cancel scope without a timeout: entering and leaving one is a measurable
        # part of a no-op step's cost.
        return await _invoke(fn, args, kwargs)
    with anyio.move_on_after(timeout_s) as scope:
        return await _invoke(fn, args, kwargs)
    # Only our own deadline lands here; a TimeoutError the step raised itself
    # propagates unchanged.
    assert scope.cancelled_caught
    raise errors.StepTimeout(f"{where} timed out after {timeout_s:g}s")


async def _invoke(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if inspect.iscoroutinefunction(inspect.unwrap(fn)):
        return await fn(*args, **kwargs)
    result = await anyio.to_thread.run_sync(
        functools.partial(fn, *args, **kwargs), abandon_on_cancel=True
    )
    if inspect.isawaitable(result):
        return await result
    return result
