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

import contextvars
import decimal
import functools
import inspect
import logging
import random as _random
import time
import traceback
import uuid as _uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast
from uuid import UUID

import anyio
import msgspec

from tidebase_async import codec, errors
from tidebase_async.gate_tokens import hash_token, new_token, resolve_url
from tidebase_async.models import TERMINAL_STATUSES, GateDecision, Retry
from tidebase_async.store import Checkpoint, ClaimedRun, NewRun, StepRecord, Store
from tidebase_async.streams import parts_of
from tidebase_async.workflows import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_QUEUE,
    Workflow,
    backoff_delay,
    check_name,
    is_utf8,
)
from tidebase_async.writes import RunWrites

logger = logging.getLogger(__name__)

T = TypeVar("T")

_NO_RETRY = Retry(attempts=1)
#: The history entry (position, full name) whose function is executing in this context:
#: usage recorded inside a step belongs to that step.
_ENTRY: contextvars.ContextVar[tuple[int, str] | None] = contextvars.ContextVar(
    "tidebase_entry", default=None
)
#: The last history entry this branch of the workflow reached (asyncio tasks copy the
#: context: branches of a gather each keep their own). Interleaving of branches differs
#: between a first execution and a replay; what one branch reached does not.
_BRANCH: contextvars.ContextVar[tuple[int, str] | None] = contextvars.ContextVar(
    "tidebase_branch", default=None
)
#: Larger costs are refused: sums of them must stay readable as floats.
_MAX_COST_USD = 1e12
#: A sleep this short waits in place: parking and waking the run costs more.
_SLEEP_IN_PLACE_S = 0.05
#: Sleeps and gate timeouts beyond this are refused (a datetime ends at year 9999).
_MAX_WAIT_S = 100 * 366 * 24 * 3600.0
_CHILD_NAMESPACE = _uuid.UUID("0b7c6f0e-5d1a-4c39-9a57-2f1c3e8d9b41")

#: How long a fenced write keeps retrying across a lost connection.
WRITE_RETRY_S = 300.0


def check_history_name(kind: str, name: object) -> str:
    """A step, sleep, gate, child or fanout name: ``#`` and a leading ``~`` are
    reserved (ordinals and built-in steps), so a user's name can never equal the name
    an ordinal gives another entry ("ok#2")."""
    check_name(kind, name)
    assert isinstance(name, str)
    if "#" in name or name.startswith("~"):
        raise errors.ConfigurationError(
            f"{kind} name {name!r} may not contain '#' or start with '~' "
            "(reserved for ordinals and built-in steps)"
        )
    if kind == "gate" and "/" in name:
        # A gate name is a segment of its resolve URL; servers decode %2F before
        # routing, so a '/' in it could never be addressed there.
        raise errors.ConfigurationError(f"gate name {name!r} may not contain '/'")
    return name


def _child_id(parent: UUID, kind: str, full_name: str, index: int) -> UUID:
    """Children are created once: their ids derive from the parent, the kind and the
    name of the entry that starts them, and their index in it."""
    return _uuid.uuid5(_CHILD_NAMESPACE, f"{parent}/{kind}/{full_name}/{index}")


def _child_failed(info: Any) -> errors.ChildFailed:
    """Rebuild the ChildFailed a replayed child failure raised the first time."""
    info = info if isinstance(info, dict) else {}
    child_error = info.get("child_error")
    return errors.ChildFailed(
        child_id=info.get("child_id"),
        workflow=str(info.get("workflow", "")),
        status=str(info.get("status", "failed")),
        error=child_error if isinstance(child_error, dict) else None,
    )


def check_channels(channels: object, *, where: str) -> list[str]:
    """Webhook channels: a list of http(s) URLs."""
    if isinstance(channels, str) or not isinstance(channels, list | tuple):
        raise errors.ConfigurationError(f"{where}: channels must be a list of URLs")
    for url in channels:
        if (
            not isinstance(url, str)
            or not url.startswith(("http://", "https://"))
            or len(url) > 2048
            or not is_utf8(url)
            or any(ch.isspace() or ord(ch) < 32 for ch in url)
        ):
            raise errors.ConfigurationError(f"{where}: channel {url!r:.80} is not an http(s) URL")
    return list(channels)


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


class Suspend(BaseException):
    """Unwinds workflow code at a wait that is not over, so the run can be parked as
    ``waiting`` (no lease, no worker slot) and replayed when the wait ends.

    A ``BaseException``: a user's ``except Exception`` cannot swallow it. Once raised
    in an execution, every later durable call of that execution raises it again, so
    concurrent branches stop at their next step instead of running on.
    """

    def __init__(self, reason: str, *, wake_at: datetime | None, data: dict[str, Any]) -> None:
        super().__init__(f"run waits ({reason})")
        self.reason = reason
        self.wake_at = wake_at
        self.data = data


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
        workflows: Mapping[str, Workflow] | None = None,
        on_queue: Callable[[str], None] | None = None,
        public_url: str | None = None,
        publish: Callable[[list[str]], bool] | None = None,
    ) -> None:
        self.store = store
        self.publish = publish
        self.public_url = public_url
        self.workflows: Mapping[str, Workflow] = workflows or {}
        self.on_queue = on_queue
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
        # Set when the workflow reached a wait that is not over (gate, sleep, child):
        # the run is parked as waiting instead of finishing.
        self.suspension: Suspend | None = None
        # Set by the owner when the run was cancelled while executing.
        self.cancelled = False
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

    def suspend(self, reason: str, *, wake_at: datetime | None, data: dict[str, Any]) -> Suspend:
        """Record that the run waits (the earliest timer wins when several concurrent
        waits are pending) and return the signal to raise."""
        if self.suspension is None:
            self.suspension = Suspend(reason, wake_at=wake_at, data=data)
        elif wake_at is not None and (
            self.suspension.wake_at is None or wake_at < self.suspension.wake_at
        ):
            self.suspension.wake_at = wake_at
        return self.suspension

    def check_active(self) -> None:
        """Raise if this execution must not make progress any more."""
        if self.lost:
            raise errors.LeaseLost(f"run {self.run_id} is no longer leased to this worker")
        if self.suspension is not None:
            raise self.suspension

    def fenced(
        self, fn: Callable[..., Awaitable[T]], /, **kwargs: Any
    ) -> Callable[[], Awaitable[T]]:
        """``fn`` bound to this claim (``run_id``, ``worker_id``, ``attempt``): the
        arguments of every fenced write of the store."""
        return functools.partial(
            fn, run_id=self.run_id, worker_id=self.worker_id, attempt=self.attempt, **kwargs
        )

    async def write_value(self, what: str, write: Callable[[], Awaitable[T]]) -> T:
        """``write`` (see there) of an idempotent operation, returning its result."""
        box: list[T] = []

        async def run() -> None:
            box.clear()
            box.append(await write())

        await self.write(what, run)
        return box[0]

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
        # Concurrent writes of one run (branches of a gather) go out one at a time, in
        # the order they were made: each carries the whole document, so two in flight
        # could land in the other order and the state (and its history) go backwards.
        self._lock = anyio.Lock()

    def restore(self, data: bytes) -> None:
        """Take the state a replayed step wrote when it executed."""
        self._value = codec.decode(data, where="state")

    async def get(self) -> Any:
        """The current state (a copy; mutate it through ``set``/``patch``)."""
        return codec.decode(codec.encode(self._value, where="state"), where="state")

    async def set(self, value: Any) -> None:
        """Replace the state.

        Raises:
            SerializationError: ``value`` is not encodable.
            LeaseLost: the run is no longer leased to this worker.
        """
        async with self._lock:
            await self._set(value)

    async def _set(self, value: Any) -> None:
        ex = self._run._ex
        ex.check_active()
        data = codec.encode(value, where="state", max_size=ex.max_payload)
        self._value = codec.decode(data, where="state")
        entry = _ENTRY.get()
        if entry is not None:
            # Written by a step's own code: its checkpoint says so, and a replay (which
            # does not execute the step) takes the state as of that checkpoint.
            self._run._wrote_state.add(entry[0])
        elif self._run._replaying():
            return
        await ex.write_value(
            "state update",
            ex.fenced(
                ex.store.set_state,
                state=data,
                event_data=data if len(data) <= 4096 else b'{"truncated":true}',
                step=self._run._entry_name(),
            ),
        )
        ex.state_bytes = data
        ex.on_event(ex.run_id)

    async def save(self, label: str) -> None:
        """Label the current state version (``runs.state_history`` shows labels); the
        current state is recorded as a version first if none exists yet.

        Raises:
            ConfigurationError: ``label`` is not a short str.
            LeaseLost: the run is no longer leased to this worker.
        """
        if (
            not isinstance(label, str)
            or not label
            or len(label) > 200
            or "\x00" in label
            or not is_utf8(label)
        ):
            raise errors.ConfigurationError(f"state label must be a short str, got {label!r:.60}")
        ex = self._run._ex
        ex.check_active()
        if self._run._replaying():
            return
        async with self._lock:
            labelled = await ex.write_value(
                "labelling the state", ex.fenced(ex.store.label_state, label=label)
            )
            if labelled is None:
                await self._set(self._value)
                await ex.write_value(
                    "labelling the state", ex.fenced(ex.store.label_state, label=label)
                )

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
        async with self._lock:
            await self._set(merge_patch(self._value, patch))


class RunUsage:
    """``run.usage``: the run's usage ledger (tokens, money)."""

    def __init__(self, run: Run) -> None:
        self._run = run
        self._seq: dict[int, int] = {}

    async def record(
        self,
        *,
        kind: str = "llm",
        provider: str | None = None,
        model: str | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cost_usd: float | decimal.Decimal = 0,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Record usage, attributed to the step executing (inside a step function) or
        else to the next entry of the history. Exactly once: a record is keyed by its
        entry and its order within it, so a replay (which does not execute completed
        steps, and re-runs the code between them) or a re-execution after a crash adds
        nothing that was recorded before.

        Raises:
            ConfigurationError: a negative, non-integer token count, a negative or
                non-finite cost, or a bad text field; nothing is recorded.
        """
        for what, count in (("input_tokens", input_tokens), ("output_tokens", output_tokens)):
            if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count < 2**63:
                raise errors.ConfigurationError(
                    f"usage {what} must be a non-negative int, got {count!r:.40}"
                )
        if isinstance(cost_usd, bool) or not isinstance(cost_usd, int | float | decimal.Decimal):
            raise errors.ConfigurationError(
                f"usage cost_usd must be a number, got {cost_usd!r:.40}"
            )
        if isinstance(cost_usd, int) and not 0 <= cost_usd <= _MAX_COST_USD:
            raise errors.ConfigurationError(f"usage cost_usd must be in 0..{_MAX_COST_USD:g}")
        cost = (
            decimal.Decimal(str(cost_usd))
            if isinstance(cost_usd, float)
            else decimal.Decimal(cost_usd)
        )
        if not cost.is_finite() or not 0 <= cost <= _MAX_COST_USD:
            raise errors.ConfigurationError(
                f"usage cost_usd must be finite and in 0..{_MAX_COST_USD:g}, got {cost_usd!r:.40}"
            )
        for what, text in (("kind", kind), ("provider", provider), ("model", model)):
            if text is None and what != "kind":
                continue
            if (
                not isinstance(text, str)
                or not text
                or len(text) > 200
                or "\x00" in text
                or not is_utf8(text)
            ):
                raise errors.ConfigurationError(
                    f"usage {what} must be a short str, got {text!r:.40}"
                )
        data = None
        if metadata is not None:
            if not isinstance(metadata, dict):
                raise errors.ConfigurationError("usage metadata must be a dict")
            data = codec.encode(metadata, where="usage metadata", max_size=64 * 1024)
        run = self._run
        ex = run._ex
        ex.check_active()
        entry = _ENTRY.get()
        step: str | None = None
        if entry is not None:
            position, step = entry
        else:
            # Between steps: keyed after the last entry this branch reached, in a key
            # space of its own (negative), so that neither the interleaving of branches
            # nor a step's own records can make two records share a key.
            branch = _BRANCH.get()
            position = -2 - branch[0] if branch is not None else -1
        seq = self._seq.get(position, 0) + 1
        self._seq[position] = seq
        await ex.write_value(
            "recording usage",
            ex.fenced(
                ex.store.record_usage,
                position=position,
                seq=seq,
                step=step,
                kind=kind,
                provider=provider,
                model=model,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cost_usd=cost,
                metadata=data,
            ),
        )


class Run:
    """Handle a workflow function receives: checkpointed steps, state, helpers.

    Code between steps re-runs on every resume and must be deterministic: use
    ``run.now()``, ``run.uuid()`` and ``run.random()`` instead of the clock, uuid4 and
    random, which would differ between executions.
    """

    def __init__(self, ex: Execution, *, workflow: str, input: Any) -> None:
        self._ex = ex
        self._position = 0
        self._ordinals: dict[tuple[str, str], int] = {}
        self.id: UUID = ex.claimed.id
        self.attempt: int = ex.claimed.attempt
        self.workflow: str = workflow
        self.queue: str = ex.claimed.queue
        self.input: Any = input
        self.state = RunState(self)
        self.usage = RunUsage(self)
        self._last_entry: str | None = None
        self._emitted: dict[str, int] = {}
        self._wrote_state: set[int] = set()

    def _replaying(self) -> bool:
        return self._position < self._ex.history_end

    def _next_name(self, kind: str, name: str) -> str:
        count = self._ordinals.get((kind, name), 0) + 1
        self._ordinals[(kind, name)] = count
        return name if count == 1 else f"{name}#{count}"

    def _reserve(self, kind: str, name: str) -> tuple[int, str, StepRecord | None]:
        """Take the next history position for a ``kind`` entry named ``name`` (with
        its ordinal); return it, the full name and the recorded entry there, if any.

        Raises:
            LeaseLost, Suspend: the execution may not go on.
            NonDeterminismError: the history has something else at this position.
        """
        ex = self._ex
        ex.check_active()
        full_name = self._next_name(kind, name)
        position = self._position
        self._position += 1
        self._last_entry = full_name
        _BRANCH.set((position, full_name))
        record = ex.history.get(position)
        if record is not None and (record.name != full_name or record.kind != kind):
            raise errors.NonDeterminismError(
                f"run {ex.run_id}: entry #{position + 1} of the history is {kind} "
                f"{full_name!r} now but was {record.kind} {record.name!r} when it was "
                "recorded; the workflow code changed or depends on something other than "
                "its input and step results"
            )
        return position, full_name, record

    def _entry_name(self) -> str | None:
        """The entry executing in this context, else the last one this branch reached."""
        entry = _ENTRY.get() or _BRANCH.get()
        return entry[1] if entry is not None else None

    def _went_past(self, position: int) -> bool:
        """True when the history holds entries after ``position``."""
        return position + 1 < self._ex.history_end

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
        started_at = ex.now()
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
        self,
        position: int,
        name: str,
        attempts: int,
        started_at: datetime,
        exc: Exception,
        *,
        kind: str = "step",
        event_type: str = "",
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
            kind=kind,
            event_type=event_type,
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
        kind: str = "step",
        event_type: str = "",
    ) -> None:
        """Record a step outcome: fenced, group-committed, retried across a lost
        connection (without writing it twice)."""
        ex = self._ex
        item = Checkpoint(
            kind=kind,
            event_type=event_type,
            wrote_state=position in self._wrote_state,
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

    # -- live output --------------------------------------------------------------------

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
        if ex.publish is None:
            return
        number = self._emitted.get(stream, 0) + 1
        self._emitted[stream] = number
        ex.publish(parts_of(ex.run_id, stream, ex.attempt, number, data))

    # -- waits: the run parks as 'waiting' (no lease, no worker slot) until they end --

    async def sleep(self, name: str, duration: float | timedelta) -> None:
        """Wait ``duration`` (seconds or a timedelta) durably.

        The end time is fixed (database clock) and checkpointed when the run first
        gets here; the run then waits without a worker and the workers' maintenance
        loop wakes it when the time comes (within its ``maintenance_interval``). A
        restart of every worker in between changes nothing. Names follow the ordinal
        rule of steps (``cool-down``, ``cool-down#2``, ...).
        """
        check_history_name("sleep", name)
        seconds = as_seconds(duration, what=f"sleep {name!r} duration")
        assert seconds is not None
        if seconds > _MAX_WAIT_S:
            raise errors.ConfigurationError(
                f"sleep {name!r}: duration {duration!r} is longer than 100 years"
            )
        await self._sleep(name, lambda now: now + timedelta(seconds=seconds))

    async def sleep_until(self, name: str, when: datetime) -> None:
        """Wait until ``when`` (timezone-aware) durably; see ``sleep``."""
        check_history_name("sleep", name)
        if not isinstance(when, datetime) or when.tzinfo is None or when.utcoffset() is None:
            raise errors.ConfigurationError(
                f"sleep_until {name!r}: when must be a timezone-aware datetime, got {when!r}"
            )
        await self._sleep(name, lambda _now: when)

    async def _sleep(self, name: str, end: Callable[[datetime], datetime]) -> None:
        ex = self._ex
        position, full_name, record = self._reserve("sleep", name)
        if record is not None and record.status == "completed":
            until = codec.decode(record.output or b"null", tp=datetime, where=f"sleep {name!r}")
            ex.replayed_steps += 1
            if self._went_past(position):
                return
        else:
            until = end(ex.now())
            await self._checkpoint(
                position,
                full_name,
                "completed",
                1,
                ex.now(),
                output=codec.encode(until, where=f"sleep {full_name!r}", jsonb=False),
                kind="sleep",
                event_type="sleep.started",
                event={"name": full_name, "until": until.isoformat()},
            )
        remaining = (until - ex.now()).total_seconds()
        if remaining <= _SLEEP_IN_PLACE_S:
            # Parking and waking costs more than this: wait here.
            if remaining > 0:
                await anyio.sleep(remaining)
            return
        raise ex.suspend("sleep", wake_at=until, data={"sleep": full_name})

    async def gate(
        self,
        name: str,
        *,
        prompt: str | None = None,
        data: Any = None,
        channels: list[str] | None = None,
        timeout: float | timedelta | None = None,
    ) -> GateDecision:
        """Wait for a human decision.

        The first time the run gets here a pending gate is recorded (with ``prompt``,
        ``data`` for the reviewer, webhook ``channels``, and an expiry when ``timeout``
        is given) and the run waits without a worker. ``tide.gates.resolve`` decides it
        exactly once and the run resumes; the decision is checkpointed, so a replay
        returns it without waiting again. When ``timeout`` passes first the decision is
        ``expired`` (``decision.approved`` is False, ``decision.expired`` True).

        Raises:
            ConfigurationError: a bad name, prompt, channel or timeout.
            SerializationError: ``data`` is not JSON-encodable.
        """
        ex = self._ex
        check_history_name("gate", name)
        if prompt is not None and (not isinstance(prompt, str) or not is_utf8(prompt)):
            raise errors.ConfigurationError(
                f"gate {name!r}: prompt must be a str, got {prompt!r:.60}"
            )
        if prompt is not None and "\x00" in prompt:
            raise errors.ConfigurationError(f"gate {name!r}: prompt may not contain NUL")
        timeout_s = as_seconds(timeout, what=f"gate {name!r} timeout")
        if timeout_s is not None and timeout_s > _MAX_WAIT_S:
            raise errors.ConfigurationError(
                f"gate {name!r}: timeout {timeout!r} is longer than 100 years"
            )
        data_bytes = (
            None
            if data is None
            else codec.encode(data, where=f"data of gate {name!r}", max_size=ex.max_payload)
        )
        channels_bytes = (
            None
            if channels is None
            else msgspec.json.encode(check_channels(channels, where=f"gate {name!r}"))
        )
        position, full_name, record = self._reserve("gate", name)
        token_hash: bytes | None = None
        delivery: bytes | None = None
        if channels and (record is None or record.status != "completed"):
            # Used only if the gate is new: its reviewers get a one-time token in the
            # signed gate.created delivery; the database keeps its hash.
            token = new_token()
            token_hash = hash_token(token)
            delivery = msgspec.json.encode(
                {
                    "type": "gate.created",
                    "run_id": str(ex.run_id),
                    "name": full_name,
                    "prompt": prompt,
                    "data": msgspec.Raw(data_bytes) if data_bytes is not None else None,
                    "resolve_url": resolve_url(ex.public_url, ex.run_id, full_name),
                    "resolve_token": token,
                }
            )
        if record is not None and record.status == "completed":
            ex.replayed_steps += 1
            decided: GateDecision = codec.decode(
                record.output or b"{}", tp=GateDecision, where=f"gate {full_name!r}"
            )
            return decided
        row = await ex.write_value(
            f"opening gate {full_name!r}",
            ex.fenced(
                ex.store.open_gate,
                name=full_name,
                prompt=prompt,
                data=data_bytes,
                channels=channels_bytes,
                timeout_s=timeout_s,
                token_hash=token_hash,
                delivery=delivery,
            ),
        )
        ex.on_event(ex.run_id)
        if row["status"] == "pending" and row["due"]:
            await ex.write_value(
                f"expiring gate {full_name!r}",
                ex.fenced(
                    ex.store.expire_gate,
                    name=full_name,
                ),
            )
            row = await ex.store.get_gate(ex.run_id, full_name)
            assert row is not None
        status = row["status"]
        if status == "pending":
            raise ex.suspend("gate", wake_at=row["expires_at"], data={"gate": full_name})
        if status == "cancelled":
            # Only a cancellation of this run closes a gate so; the fence goes with it.
            raise ex.lease_lost(errors.LeaseLost(f"run {ex.run_id} was cancelled"))
        decision = GateDecision(
            decision=status,
            actor=row["actor"],
            payload=None
            if row["payload"] is None
            else codec.decode(row["payload"], where="gate payload"),
            resolved_at=row["resolved_at"],
        )
        await self._checkpoint(
            position,
            full_name,
            "completed",
            1,
            row["created_at"],
            output=msgspec.json.encode(decision),
            kind="gate",
            event_type="gate.passed",
            event={"name": full_name, "decision": status},
        )
        return decision

    async def child(
        self,
        workflow: str,
        *,
        input: Any = None,
        name: str | None = None,
        queue: str | None = None,
    ) -> Any:
        """Run ``workflow`` as a child run and return its output.

        The child is created once (its id derives from this run's id and ``name``,
        which defaults to the workflow's name and follows the ordinal rule of steps),
        goes to its queue for any worker, and this run waits without a worker until it
        finishes. The output is checkpointed: a replay returns it at once.

        Raises:
            ChildFailed: the child failed for good or was cancelled (carries its error).
        """
        outputs = await self._children("child", name or workflow, [(workflow, input)], queue)
        return outputs[0]

    async def fanout(
        self,
        name: str,
        children: Iterable[tuple[str, Any]],
        *,
        queue: str | None = None,
    ) -> list[Any]:
        """Start one child run per ``(workflow, input)`` at once and return their
        outputs in the same order, once all have finished (see ``child``).

        Raises:
            ChildFailed: for the first child, in order, that failed or was cancelled
                (after all of them finished).
        """
        try:
            specs = list(children)
        except TypeError:
            raise errors.ConfigurationError(
                f"fanout {name!r}: children must be an iterable of (workflow, input) tuples, "
                f"got {type(children).__name__}"
            ) from None
        for spec in specs:
            if not isinstance(spec, tuple) or len(spec) != 2:
                raise errors.ConfigurationError(
                    f"fanout {name!r}: each child is a (workflow, input) tuple, got {spec!r:.80}"
                )
        return await self._children("fanout", name, specs, queue)

    async def _children(
        self, kind: str, name: str, specs: list[tuple[str, Any]], queue: str | None
    ) -> list[Any]:
        ex = self._ex
        check_history_name(kind, name)
        if queue is not None:
            check_name("queue", queue)
        new_runs = [
            self._child_run(kind, name, index, workflow, input, queue)
            for index, (workflow, input) in enumerate(specs)
        ]
        position, full_name, record = self._reserve(kind, name)
        where = f"{kind} {full_name!r}"
        workflows = [w for w, _ in specs]
        if record is not None and record.status == "completed":
            ex.replayed_steps += 1
            return self._decode_outputs(
                workflows, record.output or b"null", where, single=kind == "child"
            )
        if record is not None and record.replay_failure and self._went_past(position):
            ex.replayed_steps += 1
            raise _child_failed(codec.decode(record.error or b"{}", where=where))
        # Ids depend on the full name (with its ordinal): fixed across replays.
        new_runs = [
            msgspec.structs.replace(r, id=_child_id(ex.run_id, kind, full_name, i))
            for i, r in enumerate(new_runs)
        ]
        started_at = ex.now()
        rows, queues = await ex.write_value(
            f"starting the children of {where}",
            ex.fenced(
                ex.store.start_children,
                children=new_runs,
                event_data=msgspec.json.encode(
                    {"name": full_name, "children": [str(r.id) for r in new_runs]}
                ),
            ),
        )
        if queues:
            ex.on_event(ex.run_id)
            if ex.on_queue is not None:
                for q in sorted(set(queues)):
                    ex.on_queue(q)
        pending = [r for r in rows if r["status"] not in TERMINAL_STATUSES]
        if pending:
            raise ex.suspend(kind, wake_at=None, data={kind: full_name, "pending": len(pending)})
        for row in rows:
            if row["status"] != "completed":
                error = None if row["error"] is None else codec.decode(row["error"], where=where)
                if row["status"] == "cancelled":
                    error = {"type": "RunCancelled", "message": row["cancel_reason"] or "cancelled"}
                exc = errors.ChildFailed(
                    child_id=row["id"],
                    workflow=row["workflow"],
                    status=row["status"],
                    error=error if isinstance(error, dict) else None,
                )
                info = error_info(exc)
                info.update(
                    child_id=str(row["id"]),
                    workflow=row["workflow"],
                    status=row["status"],
                    child_error=exc.error,
                )
                await self._checkpoint(
                    position,
                    full_name,
                    "failed",
                    1,
                    started_at,
                    error=msgspec.json.encode(info),
                    kind=kind,
                    event_type="child.failed",
                    event={"name": full_name, "child": str(row["id"]), "status": row["status"]},
                )
                raise exc
        outputs = [bytes(r["output"]) if r["output"] is not None else b"null" for r in rows]
        data = outputs[0] if kind == "child" else b"[" + b",".join(outputs) + b"]"
        await self._checkpoint(
            position,
            full_name,
            "completed",
            1,
            started_at,
            output=data,
            kind=kind,
            event_type="child.completed",
            event={"name": full_name, "children": len(rows)},
        )
        return self._decode_outputs(workflows, data, where, single=kind == "child")

    def _child_run(
        self, kind: str, name: str, index: int, workflow: str, input: Any, queue: str | None
    ) -> NewRun:
        ex = self._ex
        check_name("workflow", workflow)
        wf = ex.workflows.get(workflow)
        where = f"input of child {index + 1} of {kind} {name!r}"
        return NewRun(
            id=ex.run_id,  # replaced once the full name is known
            workflow=workflow,
            queue=queue or (wf.queue if wf else DEFAULT_QUEUE),
            input=msgspec.Raw(codec.encode(input, where=where, max_size=ex.max_payload)),
            priority=0,
            dedupe_key=None,
            metadata=None,
            parent_id=ex.run_id,
            max_attempts=wf.max_attempts if wf else DEFAULT_MAX_ATTEMPTS,
            run_at=None,
            delay_s=0.0,
            deadline_at=ex.claimed.deadline_at,
        )

    def _decode_outputs(
        self, workflows: list[str], data: bytes, where: str, *, single: bool
    ) -> list[Any]:
        """Children's outputs, each decoded into its workflow's return type when that
        workflow is registered here. ``single``: ``data`` is one output (``child``),
        else a JSON array of them (``fanout``)."""
        ex = self._ex
        types = [ex.workflows[w].output_type if w in ex.workflows else Any for w in workflows]
        if single:
            return [codec.decode(data, tp=types[0], where=where)]
        raw = codec.decode(data, tp=list[msgspec.Raw], where=where)
        return [codec.decode(bytes(r), tp=t, where=where) for r, t in zip(raw, types, strict=True)]

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
