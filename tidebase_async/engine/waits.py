"""The waits of a run: sleep, gate, child, fanout.

The run parks as 'waiting' (no lease, no worker slot) until they end.
"""

from __future__ import annotations

import uuid as _uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import anyio
import msgspec

from tidebase_async import errors
from tidebase_async._util import codec
from tidebase_async._util.checks import (
    as_seconds,
    check_channels,
    check_history_name,
    check_name,
    is_utf8,
)
from tidebase_async._util.failures import error_info
from tidebase_async._util.tokens import hash_token, new_token, resolve_url
from tidebase_async.engine.history import RunHistory
from tidebase_async.engine.workflows import DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE
from tidebase_async.models import TERMINAL_STATUSES, GateDecision
from tidebase_async.store import ChildStatusRow, GateDetail, NewRun

#: A sleep this short waits in place: parking and waking the run costs more.
_SLEEP_IN_PLACE_S = 0.05
#: Sleeps and gate timeouts beyond this are refused (a datetime ends at year 9999).
_MAX_WAIT_S = 100 * 366 * 24 * 3600.0
_CHILD_NAMESPACE = _uuid.UUID("0b7c6f0e-5d1a-4c39-9a57-2f1c3e8d9b41")


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


def _check_prompt(name: str, prompt: str | None) -> None:
    if prompt is not None and (not isinstance(prompt, str) or not is_utf8(prompt)):
        raise errors.ConfigurationError(f"gate {name!r}: prompt must be a str, got {prompt!r:.60}")
    if prompt is not None and "\x00" in prompt:
        raise errors.ConfigurationError(f"gate {name!r}: prompt may not contain NUL")


class RunWaits(RunHistory):
    """The waits of ``Run`` (a mixin ``Run`` inherits): the run parks as 'waiting'
    (no lease, no worker slot) until they end.

    They record their entries through the run's history (``RunHistory``).
    """

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
        _check_prompt(name, prompt)
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
        if record is not None and record.status == "completed":
            ex.replayed_steps += 1
            decided: GateDecision = codec.decode(
                record.output or b"{}", tp=GateDecision, where=f"gate {full_name!r}"
            )
            return decided
        gate = await self._open_gate(
            full_name,
            prompt=prompt,
            data=data_bytes,
            channels=channels_bytes,
            timeout_s=timeout_s,
            invite=bool(channels),
        )
        return await self._gate_decision(position, full_name, gate)

    async def _open_gate(
        self,
        full_name: str,
        *,
        prompt: str | None,
        data: bytes | None,
        channels: bytes | None,
        timeout_s: float | None,
        invite: bool,
    ) -> GateDetail:
        """Record the gate as pending once (an earlier attempt may have) and return it
        as stored now; a pending gate found past its expiry is expired first. With
        ``invite`` (it has channels), a new gate's channels are sent a resolve token."""
        ex = self._ex
        token_hash: bytes | None = None
        delivery: bytes | None = None
        if invite:
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
                    "data": msgspec.Raw(data) if data is not None else None,
                    "resolve_url": resolve_url(ex.public_url, ex.run_id, full_name),
                    "resolve_token": token,
                }
            )
        gate = await ex.write_value(
            f"opening gate {full_name!r}",
            ex.fenced(
                ex.store.open_gate,
                name=full_name,
                prompt=prompt,
                data=data,
                channels=channels,
                timeout_s=timeout_s,
                token_hash=token_hash,
                delivery=delivery,
            ),
        )
        ex.on_event(ex.run_id)
        if gate.status == "pending" and gate.due:
            await ex.write_value(
                f"expiring gate {full_name!r}",
                ex.fenced(ex.store.expire_gate, name=full_name),
            )
            expired = await ex.store.get_gate(ex.run_id, full_name)
            assert expired is not None
            gate = expired
        return gate

    async def _gate_decision(self, position: int, full_name: str, gate: GateDetail) -> GateDecision:
        """The decision of a decided gate, checkpointed; a pending gate suspends the
        run until its decision or expiry."""
        ex = self._ex
        status = gate.status
        if status == "pending":
            raise ex.suspend("gate", wake_at=gate.expires_at, data={"gate": full_name})
        if status == "cancelled":
            # Only a cancellation of this run closes a gate so; the fence goes with it.
            raise ex.lease_lost(errors.LeaseLost(f"run {ex.run_id} was cancelled"))
        decision = GateDecision(
            decision=status,
            actor=gate.actor,
            payload=None
            if gate.payload is None
            else codec.decode(gate.payload, where="gate payload"),
            resolved_at=gate.resolved_at,
        )
        await self._checkpoint(
            position,
            full_name,
            "completed",
            1,
            gate.created_at,
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
        children = await self._start_children(full_name, where, new_runs)
        pending = [c for c in children if c.status not in TERMINAL_STATUSES]
        if pending:
            raise ex.suspend(kind, wake_at=None, data={kind: full_name, "pending": len(pending)})
        failed = next((c for c in children if c.status != "completed"), None)
        if failed is not None:
            raise await self._child_failure(kind, position, full_name, started_at, where, failed)
        outputs = [c.output if c.output is not None else b"null" for c in children]
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
            event={"name": full_name, "children": len(children)},
        )
        return self._decode_outputs(workflows, data, where, single=kind == "child")

    async def _start_children(
        self, full_name: str, where: str, new_runs: list[NewRun]
    ) -> list[ChildStatusRow]:
        """Create the children once and return where each stands, in order; the
        queues of the ones created now hear of them."""
        ex = self._ex
        children, queues = await ex.write_value(
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
        return children

    async def _child_failure(
        self,
        kind: str,
        position: int,
        full_name: str,
        started_at: datetime,
        where: str,
        child: ChildStatusRow,
    ) -> errors.ChildFailed:
        """Checkpoint the entry as failed by ``child`` (failed or cancelled) and return
        the ChildFailed to raise; a replay raises it again from the checkpoint."""
        error = None if child.error is None else codec.decode(child.error, where=where)
        if child.status == "cancelled":
            error = {"type": "RunCancelled", "message": child.cancel_reason or "cancelled"}
        exc = errors.ChildFailed(
            child_id=child.id,
            workflow=child.workflow,
            status=child.status,
            error=error if isinstance(error, dict) else None,
        )
        info = error_info(exc)
        info.update(
            child_id=str(child.id),
            workflow=child.workflow,
            status=child.status,
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
            event={"name": full_name, "child": str(child.id), "status": child.status},
        )
        return exc

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
            # The child's run span is a child of this run's (its trace carried along).
            trace_context=ex.telemetry.child_context(ex.claimed.trace_context),
            # The child's newest version registered here, as an enqueue would pick.
            version=wf.version if wf else None,
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
