"""``tide.runs``: read, wait for, stream, cancel and retry runs."""

from __future__ import annotations

import base64
import builtins
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

import anyio

from tidebase_async import errors
from tidebase_async._util import codec
from tidebase_async._util.checks import as_seconds, check_name, check_text, is_utf8
from tidebase_async._util.ids import uuid7
from tidebase_async._util.signals import Signal
from tidebase_async._util.urls import redact_url
from tidebase_async.client.streams import subscribe
from tidebase_async.models import (
    RUN_STATUSES,
    TERMINAL_STATUSES,
    DeliveryInfo,
    Event,
    Page,
    RunInfo,
    RunStatus,
    RunSummary,
    StateVersion,
    StepInfo,
    UsageTotals,
)
from tidebase_async.store import RunRow
from tidebase_async.store.listener import watch_run

if TYPE_CHECKING:
    from tidebase_async.client.tidebase import Tidebase
    from tidebase_async.store import DeliveryRow, EventRow, StepRow

_TERMINAL_EVENTS = frozenset({"run.completed", "run.failed", "run.cancelled"})
_EVENT_PAGE = 500
# The default budget of a retried run whose workflow is not registered here.
DEFAULT_RETRY_BUDGET = 3
#: "No new input" for ``fork`` (None is an input).
UNSET_INPUT: Any = object()


def as_uuid(run_id: UUID | str) -> UUID:
    if isinstance(run_id, UUID):
        return run_id
    try:
        return UUID(str(run_id))
    except ValueError as exc:
        raise errors.RunNotFound(f"{run_id!r} is not a run id (a UUID)") from exc


class Runs:
    """``tide.runs``: read, wait for, stream, cancel and retry runs."""

    def __init__(self, tide: Tidebase) -> None:
        self._tide = tide

    async def _row(self, rid: UUID) -> RunRow:
        row = await self._tide.store.get_run(rid)
        if row is None:
            raise errors.RunNotFound(f"no run with id {rid}")
        return row

    async def get(self, run_id: UUID | str) -> RunInfo:
        """Everything about a run: status, input, output, error, state, steps, children.

        Raises:
            RunNotFound: no run has this id.
        """
        rid = as_uuid(run_id)
        store = self._tide.store
        row = await self._row(rid)
        steps = await store.get_steps(rid)
        children = await store.get_children(rid)
        gates = await store.get_run_gates(rid)
        deliveries = await store.get_deliveries(rid)
        usage = await store.run_usage(rid)
        event_waits = await store.get_run_event_waits(rid)
        # client.events imports this module: import it here, not at the top.
        from tidebase_async.client import events as keyed_events

        return RunInfo(
            id=row.id,
            workflow=row.workflow,
            queue=row.queue,
            status=row.status,
            input=stored_json(row.input),
            output=stored_json(row.output),
            error=stored_json(row.error),
            state=stored_json(row.state),
            attempt=row.attempt,
            max_attempts=row.max_attempts,
            priority=row.priority,
            dedupe_key=row.dedupe_key,
            metadata=stored_json(row.metadata),
            parent_id=row.parent_id,
            steps=[_step_info(s) for s in steps],
            gates=[self._tide.gates.info(g) for g in gates],
            children=[
                RunSummary(
                    id=c.id,
                    workflow=c.workflow,
                    status=c.status,
                    created_at=c.created_at,
                    finished_at=c.finished_at,
                )
                for c in children
            ],
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            run_at=row.run_at,
            deadline=row.deadline_at,
            cancel_reason=row.cancel_reason,
            inline=row.inline,
            wake_at=row.wake_at,
            deliveries=[_delivery_info(d) for d in deliveries],
            forked_from=row.forked_from,
            forked_at=row.forked_at,
            version=row.version,
            event_waits=[keyed_events.wait_info(w) for w in event_waits],
            concurrency_key=row.concurrency_key,
            debounce_key=row.debounce_key,
            singleton_key=row.singleton_key,
            usage=UsageTotals(
                records=usage.records,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cost_usd=usage.cost_usd,
            ),
        )

    async def list(
        self,
        *,
        status: str | None = None,
        workflow: str | None = None,
        queue: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        dedupe_key: str | None = None,
    ) -> Page:
        """A page of runs, newest first; pass ``next_cursor`` back for the next page.

        Filters match literally (they are bound parameters).

        Raises:
            ConfigurationError: a bad limit, status or cursor, or a ``workflow`` or
                ``queue`` filter that is not a valid name.
        """
        if not 1 <= limit <= 1000:
            raise errors.ConfigurationError(f"limit must be 1..1000, got {limit}")
        if status is not None and status not in RUN_STATUSES:
            raise errors.ConfigurationError(
                f"unknown run status {status!r}; expected one of {', '.join(RUN_STATUSES)}"
            )
        before: tuple[datetime, UUID] | None = None
        if cursor:
            try:
                raw = base64.urlsafe_b64decode(cursor.encode()).decode()
                at, _, rid = raw.partition("|")
                before = (cursor_time(at), UUID(rid))
            except (ValueError, UnicodeError, OverflowError) as exc:
                raise errors.ConfigurationError(f"invalid cursor {cursor!r}") from exc
        # Names are validated on the way in; a filter that no name can equal (empty,
        # NUL, lone surrogate, ...) is a mistake worth saying so, not an empty page.
        if workflow is not None:
            check_name("workflow", workflow)
        if queue is not None:
            check_name("queue", queue)
        if dedupe_key is not None and (
            not isinstance(dedupe_key, str) or "\x00" in dedupe_key or not is_utf8(dedupe_key)
        ):
            raise errors.ConfigurationError(f"invalid dedupe_key filter {dedupe_key!r:.60}")
        rows = await self._tide.store.list_runs(
            status=status,
            workflow=workflow,
            queue=queue,
            before=before,
            limit=limit + 1,
            dedupe_key=dedupe_key,
        )
        items = [
            RunSummary(
                id=r.id,
                workflow=r.workflow,
                status=r.status,
                queue=r.queue,
                attempt=r.attempt,
                priority=r.priority,
                created_at=r.created_at,
                started_at=r.started_at,
                finished_at=r.finished_at,
                version=r.version,
                concurrency_key=r.concurrency_key,
            )
            for r in rows[:limit]
        ]
        next_cursor = None
        if len(rows) > limit and items:
            last = items[-1]
            assert last.created_at is not None
            next_cursor = base64.urlsafe_b64encode(
                f"{last.created_at.isoformat()}|{last.id}".encode()
            ).decode()
        return Page(items=items, next_cursor=next_cursor)

    def watch(self, run_id: UUID) -> contextlib.AbstractContextManager[Signal]:
        """A signal set whenever a notification names ``run_id`` (or the listener
        reconnects, since notifications may have been missed meanwhile)."""
        return watch_run(self._tide.listener, run_id)

    async def status(self, run_id: UUID | str) -> RunStatus:
        """The run's status, in one indexed read.

        Raises:
            RunNotFound: no run has this id.
        """
        rid = as_uuid(run_id)
        status = await self._tide.store.run_status(rid)
        if status is None:
            raise errors.RunNotFound(f"no run with id {rid}")
        return cast(RunStatus, status)

    async def wait(
        self, run_id: UUID | str, *, timeout: float | timedelta | None = None, poll: float = 1.0
    ) -> Any:
        """Wait until the run is terminal and return its output (decoded into the
        workflow's return type when it is registered here).

        Woken by LISTEN; polls every ``poll`` seconds as the floor.

        Raises:
            RunNotFound, RunFailed (with the recorded error), RunCancelled,
            TimeoutError: ``timeout`` passed first.
        """
        rid = as_uuid(run_id)
        timeout_s = as_seconds(timeout, what="timeout")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        store = self._tide.store
        # The timeout bounds the waiting between checks, not the checks: a run that is
        # already terminal is returned even with timeout=0, and no query is cancelled
        # mid-flight (which would cost its pooled connection).
        with self.watch(rid) as sig:
            while True:
                sig.clear()
                row = await store.get_run_status(rid)
                if row is None:
                    raise errors.RunNotFound(f"no run with id {rid}")
                status = row.status
                if status == "completed":
                    wf = self._tide.workflows.get(row.workflow)
                    tp = wf.output_type if wf else Any
                    return codec.decode(row.output or b"null", tp=tp, where="output")
                if status == "failed":
                    raise errors.RunFailed(rid, stored_json(row.error))
                if status == "cancelled":
                    raise errors.RunCancelled(rid, row.cancel_reason)
                wait_s = poll
                if deadline is not None:
                    wait_s = min(poll, deadline - time.monotonic())
                    if wait_s <= 0:
                        raise errors.WaitTimeout(
                            f"run {rid} is still {status} after {timeout_s:g}s"
                        )
                await sig.wait_for(wait_s)

    async def events(
        self, run_id: UUID | str, *, after: int = 0, poll: float = 1.0
    ) -> AsyncIterator[Event]:
        """The run's events with ``seq > after``: history first, then live as they
        happen (woken by LISTEN, reading the database every ``poll`` seconds as the
        floor), gap-free and in order. Ends after the
        run's terminal event (``run.completed``, ``run.failed``, ``run.cancelled``).

        Raises:
            RunNotFound: no run has this id.
        """
        rid = as_uuid(run_id)
        if await self._tide.store.run_status(rid) is None:
            raise errors.RunNotFound(f"no run with id {rid}")
        async for r in self.event_rows(rid, after=after, poll=poll):
            if r is not None:
                yield Event(seq=r.seq, type=r.type, at=r.at, data=stored_json(r.data))

    async def event_page(
        self, run_id: UUID | str, *, after: int = 0, limit: int = 100
    ) -> builtins.list[Event]:
        """The run's stored events with ``seq > after``, at most ``limit``, in order.
        Returns at once (``events`` waits for live ones); a full page means more may
        follow: pass the last ``seq`` back as ``after``.

        Raises:
            RunNotFound: no run has this id.
            ConfigurationError: ``after`` below 0, or ``limit`` outside 1..1000.
        """
        rid = as_uuid(run_id)
        if isinstance(after, bool) or not isinstance(after, int) or not 0 <= after < 2**31:
            raise errors.ConfigurationError(f"after must be an event seq >= 0, got {after!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise errors.ConfigurationError(f"limit must be an int in 1..1000, got {limit!r}")
        await self.status(rid)  # RunNotFound
        rows = await self._tide.store.list_events(rid, after=after, limit=limit)
        return [Event(seq=r.seq, type=r.type, at=r.at, data=stored_json(r.data)) for r in rows]

    async def event_rows(
        self, run_id: UUID, *, after: int, poll: float = 1.0, idle_s: float | None = None
    ) -> AsyncIterator[EventRow | None]:
        """The stored rows behind ``events`` (seq, type, at, data as stored JSON), the
        same sequence: history, then live, gap-free, until the run's terminal event or
        until the run is gone (pruned or deleted). With ``idle_s``, also yields None
        after every ``idle_s`` seconds without an event (the SSE route's keepalive)."""
        store = self._tide.store
        last = after
        quiet_since = anyio.current_time()
        # Watching starts before the first read: an event committed after that read
        # sets the signal, so the next read finds it.
        with self.watch(run_id) as changed:
            while True:
                changed.clear()
                rows = await store.list_events(run_id, after=last, limit=_EVENT_PAGE)
                for r in rows:
                    last = r.seq
                    yield r
                if len(rows) == _EVENT_PAGE:
                    continue
                if rows:
                    quiet_since = anyio.current_time()
                if not rows or rows[-1].type in _TERMINAL_EVENTS:
                    status = await store.run_status(run_id)
                    if status is None or status in TERMINAL_STATUSES:
                        # Finished (or gone): end once no event follows the last one
                        # read, whichever event that was.
                        if not await store.list_events(run_id, after=last, limit=1):
                            return
                        continue
                # Woken by LISTEN (a reconnect wakes it too, as notifications may have
                # been missed); ``poll`` is the floor.
                floor = poll
                if idle_s is not None:
                    floor = min(floor, max(0.0, quiet_since + idle_s - anyio.current_time()))
                if await changed.wait_for(floor):
                    continue
                if idle_s is not None and anyio.current_time() - quiet_since >= idle_s:
                    quiet_since = anyio.current_time()
                    yield None

    async def cancel(
        self, run_id: UUID | str, *, reason: str | None = None, actor: str | None = None
    ) -> None:
        """Cancel a run and its active children, whatever it is doing.

        A queued or waiting run is cancelled at once. A running run is cancelled in the
        database at once too (its worker's writes are refused from then on) and its
        worker, told through NOTIFY, cancels the workflow task, interrupting the step in
        progress (a synchronous step's thread is abandoned, not killed); should the
        notification be lost, the worker's next heartbeat finds out. Pending gates of
        the run close. ``runs.wait`` raises ``RunCancelled``. Idempotent for a run
        already cancelled.

        Raises:
            RunNotFound: no run has this id.
            ConflictError: the run already completed or failed.
            ConfigurationError: ``reason`` or ``actor`` is not storable text.
        """
        rid = as_uuid(run_id)
        check_text("cancel reason", reason)
        check_text("cancel actor", actor)
        store = self._tide.store
        cancelled = await store.cancel_runs(run_ids=[rid], reason=reason, actor=actor)
        if cancelled:
            self._tide.notifier.runs_changed(*(r for r, _, _ in cancelled))
            return
        status = await store.run_status(rid)
        if status is None:
            raise errors.RunNotFound(f"no run with id {rid}")
        if status == "cancelled":
            return
        raise errors.ConflictError(f"run {rid} is already {status}; it cannot be cancelled")

    async def fork(
        self, run_id: UUID | str, *, from_step: str | int, input: Any = UNSET_INPUT
    ) -> UUID:
        """A new run of the same workflow that replays the original's history before
        ``from_step`` and executes from that step on (with the code as it is now and,
        when given, a new ``input``). The original is not touched; the fork records
        it as ``forked_from``. ``from_step``: an entry's name as recorded (``fetch#2``)
        or its 1-based position.

        Raises:
            RunNotFound: no run has this id.
            NotFoundError: the run has no such entry.
            SerializationError: the new input cannot be stored.
        """
        rid = as_uuid(run_id)
        store = self._tide.store
        row = await self._row(rid)
        position, entry = await self._entry(rid, from_step)
        data = None
        if input is not UNSET_INPUT:
            wf = self._tide.workflows.get(row.workflow)
            data = codec.encode(input, where="input", max_size=self._tide.max_payload_bytes)
            codec.decode(data, tp=wf.input_type if wf else Any, where="input of the fork")
        new_id = uuid7()
        queue = await store.fork_run(
            source=rid, new_id=new_id, input=data, position=position, entry=entry
        )
        if queue is None:
            raise errors.RunNotFound(f"no run with id {rid}")
        self._tide.notifier.runs_changed(new_id)
        return new_id

    async def reset(self, run_id: UUID | str, *, to_step: str | int) -> None:
        """Make a failed run execute again from ``to_step`` (as ``fork`` names it),
        in place: its entries from there on are removed (its event log keeps them), and
        it gets a fresh budget of attempts.

        Raises:
            RunNotFound, NotFoundError: no such run or entry.
            ConflictError: the run is not failed.
        """
        rid = as_uuid(run_id)
        store = self._tide.store
        row = await self._row(rid)
        position, entry = await self._entry(rid, to_step)
        wf = self._tide.workflows.get(row.workflow)
        budget = wf.max_attempts if wf else DEFAULT_RETRY_BUDGET
        queue = await store.reset_run(run_id=rid, position=position, entry=entry, budget=budget)
        if queue is None:
            raise errors.ConflictError(
                f"only a failed run can be reset; run {rid} is {await store.run_status(rid)}"
            )
        self._tide.notifier.runs_changed(rid)

    async def _entry(self, run_id: UUID, step: str | int) -> tuple[int, str]:
        """(0-based position, name) of a history entry named or numbered (1-based)."""
        entries = await self._tide.store.step_positions(run_id)
        if isinstance(step, bool) or not isinstance(step, str | int):
            raise errors.ConfigurationError(f"a step is a name or a position, got {step!r:.40}")
        for position, name in entries:
            if (isinstance(step, str) and name == step) or (
                isinstance(step, int) and position == step - 1
            ):
                return position, name
        known = ", ".join(name for _, name in entries) or "none"
        raise errors.NotFoundError(f"run {run_id} has no step {step!r} (its steps: {known})")

    async def stream(
        self, run_id: UUID | str, *, stream: str = "output", poll: float = 1.0
    ) -> AsyncIterator[Any]:
        """The chunks the run emits on ``stream`` (``run.emit``) from now on, in order,
        each whole; ends shortly after the run ends. Live only: what was emitted before
        is not stored.

        Raises:
            RunNotFound: no run has this id.
        """
        check_name("stream", stream)
        async for chunk in subscribe(self._tide, as_uuid(run_id), stream=stream, poll=poll):
            yield chunk

    async def state_history(self, run_id: UUID | str) -> builtins.list[StateVersion]:
        """Every version of the run's state, oldest first (empty before the first
        write). Pruned with the run.

        Raises:
            RunNotFound: no run has this id.
        """
        rid = as_uuid(run_id)
        rows = await self._tide.store.state_history(rid)
        if not rows and await self._tide.store.run_status(rid) is None:
            raise errors.RunNotFound(f"no run with id {rid}")
        return [
            StateVersion(
                version=r.version,
                state=stored_json(r.state),
                step=r.step,
                label=r.label,
                at=r.at,
            )
            for r in rows
        ]

    async def state_at(self, run_id: UUID | str, version: int) -> Any:
        """The run's state as of ``version``.

        Raises:
            RunNotFound: no run has this id.
            NotFoundError: the run has no such version.
        """
        rid = as_uuid(run_id)
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version < 2**31:
            raise errors.ConfigurationError(f"version must be an int >= 1, got {version!r}")
        state = await self._tide.store.state_at(rid, version)
        if state is None:
            if await self._tide.store.run_status(rid) is None:
                raise errors.RunNotFound(f"no run with id {rid}")
            raise errors.NotFoundError(f"run {rid} has no state version {version}")
        return stored_json(state)

    async def retry(self, run_id: UUID | str) -> None:
        """Put a failed run back in its queue with a fresh budget of attempts; it
        resumes after its last completed step. Its failed child runs are retried with
        it (they would fail it again).

        Raises:
            RunNotFound: no run has this id.
            ConflictError: the run is not failed.
        """
        rid = as_uuid(run_id)
        store = self._tide.store
        row = await self._row(rid)
        wf = self._tide.workflows.get(row.workflow)
        budget = wf.max_attempts if wf else DEFAULT_RETRY_BUDGET
        queue, child_queues = await store.retry_run(run_id=rid, budget=budget)
        if queue is None:
            status = await store.run_status(rid)
            raise errors.ConflictError(f"only failed runs can be retried; run {rid} is {status}")
        self._tide.notifier.queues_changed(queue, *child_queues)
        self._tide.notifier.runs_changed(rid)


def cursor_time(text: str) -> datetime:
    """A cursor's timestamp: timezone-aware and within what Postgres can compare.

    Raises:
        ValueError, OverflowError: it is not one.
    """
    at = datetime.fromisoformat(text)
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("naive time")
    at.astimezone(UTC)  # OverflowError at the ends of the calendar
    if not 1 < at.year < 9999:
        raise ValueError("time out of range")
    return at


def _step_info(step: StepRow) -> StepInfo:
    return StepInfo(
        name=step.name,
        status=step.status,
        attempt=step.attempts,
        output=stored_json(step.output),
        error=stored_json(step.error),
        started_at=step.started_at,
        finished_at=step.finished_at,
        kind=step.kind,
        usage=UsageTotals(
            records=step.usage_records,
            input_tokens=step.input_tokens,
            output_tokens=step.output_tokens,
            cost_usd=step.cost_usd,
        )
        if step.usage_records
        else None,
    )


def _delivery_info(delivery: DeliveryRow) -> DeliveryInfo:
    """A delivery as the API shows it: its URL redacted (hook URLs hold secrets)."""
    return DeliveryInfo(
        id=delivery.id,
        url=redact_url(delivery.url),
        event=delivery.event,
        status=delivery.status,
        attempts=delivery.attempts,
        last_status=delivery.last_status,
        last_error=delivery.last_error,
        created_at=delivery.created_at,
        delivered_at=delivery.delivered_at,
    )


def stored_json(data: bytes | None) -> Any:
    """A jsonb value read back (None stays None)."""
    return None if data is None else codec.decode(data, where="stored value")
