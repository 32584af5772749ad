"""``run.wait_for_event``: a run waits for an event by key (a payment, another
system's webhook) without a worker, and receives it exactly once.

The wait is recorded the first time the run gets there (``Store.open_event_wait``):
it takes the oldest stored event of the key, or waits. A send reaches the waits open
then, or is stored for the next waiter (``Store.send_keyed_event``); both hold the
key's lock, so neither misses the other. What the wait ends with (the payload, or a
timeout) is checkpointed as a history entry of kind ``event``: every replay returns
it, or raises the same ``WaitTimeout``, without waiting again.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import msgspec

from tidebase_async import errors
from tidebase_async._util import codec
from tidebase_async._util.checks import as_seconds, check_event_key, check_history_name
from tidebase_async._util.failures import error_info
from tidebase_async.engine.history import RunHistory
from tidebase_async.store import EventWaitRow

#: Timeouts beyond this are refused (a datetime ends at year 9999).
_MAX_WAIT_S = 100 * 366 * 24 * 3600.0


class RunEventWaits(RunHistory):
    """Waits for events by key (a mixin ``Run`` inherits)."""

    async def wait_for_event(
        self,
        name: str,
        *,
        key: Any,
        timeout: float | timedelta | None = None,
    ) -> Any:
        """Wait for event ``name`` with ``key`` and return its payload (JSON).

        The first time the run gets here it takes the oldest event of ``(name, key)``
        that was sent while nobody waited (stored, within its retention), and returns
        its payload at once; without one it waits, ``waiting`` and without a worker
        slot, until ``tide.events.send(name, key=key, ...)`` wakes it. Every run waiting
        for ``(name, key)`` when an event is sent receives it (each at most once); an
        event sent while none waits is received by one run only, the next to wait. The
        payload is checkpointed: a replay returns it without waiting again. Names
        follow the ordinal rule of steps (``payment``, ``payment#2``, ...).

        ``timeout`` (seconds or a timedelta; None waits for ever) starts when the run
        first gets here. Timeout and delivery are decided once, in one transaction:
        after ``WaitTimeout`` nothing arrives here later, and an event sent after it
        stays stored for the next waiter. ``timeout=0`` takes a stored event or raises
        at once. A replay raises the same ``WaitTimeout`` again (also on a retry of
        the run: ``runs.reset`` to an entry before the wait waits anew).

        ``key``: a str of at most 200 characters (an int or a UUID stands for its str
        form).

        Raises:
            WaitTimeout: no event came within ``timeout``.
            ConfigurationError: a bad name, key or timeout.
            NonDeterminismError: this wait was recorded for another event or key.
        """
        ex = self._ex
        check_history_name("event", name)
        event_key = check_event_key(key, event=name)
        timeout_s = as_seconds(timeout, what=f"event {name!r} timeout")
        if timeout_s is not None and timeout_s > _MAX_WAIT_S:
            raise errors.ConfigurationError(
                f"event {name!r}: timeout {timeout!r} is longer than 100 years"
            )
        position, full_name, record = self._reserve("event", name)
        where = f"event wait {full_name!r}"
        if record is not None and record.status == "completed":
            ex.replayed_steps += 1
            return codec.decode(record.output or b"null", where=where)
        if record is not None and record.status == "failed":
            ex.replayed_steps += 1
            raise _replayed_timeout(record.error, full_name)
        wait: EventWaitRow = await ex.write_value(
            f"waiting for event {full_name!r}",
            ex.fenced(
                ex.store.open_event_wait,
                name=full_name,
                position=position,
                event_name=name,
                key=event_key,
                timeout_s=timeout_s,
            ),
        )
        ex.on_event(ex.run_id)
        if wait.status == "waiting":
            raise ex.suspend(
                "event", wake_at=wait.expires_at, data={"event": full_name, "key": event_key}
            )
        if wait.status == "received":
            return await self._received(position, full_name, wait)
        raise await self._timed_out(position, full_name, wait)

    async def _received(self, position: int, full_name: str, wait: EventWaitRow) -> Any:
        """Checkpoint the payload the wait received and return it."""
        payload = wait.payload if wait.payload is not None else b"null"
        await self._checkpoint(
            position,
            full_name,
            "completed",
            1,
            wait.created_at,
            output=payload,
            kind="event",
            event_type="event.passed",
            event={"name": full_name, "event": wait.event_name, "id": str(wait.event_id)},
        )
        return codec.decode(payload, where=f"event wait {full_name!r}")

    async def _timed_out(
        self, position: int, full_name: str, wait: EventWaitRow
    ) -> errors.WaitTimeout:
        """Checkpoint the wait as timed out; the WaitTimeout to raise."""
        exc = errors.WaitTimeout(
            f"run {self._ex.run_id}: no event {wait.event_name!r} with key "
            f"{wait.event_key!r:.80} came for wait {full_name!r} before "
            f"{_when(wait.expires_at)}"
        )
        await self._checkpoint(
            position,
            full_name,
            "failed",
            1,
            wait.created_at,
            error=msgspec.json.encode(error_info(exc)),
            kind="event",
            event_type="event.timed_out",
            event={"name": full_name, "event": wait.event_name},
        )
        return exc


def _replayed_timeout(error: bytes | None, full_name: str) -> errors.WaitTimeout:
    """The WaitTimeout a recorded timeout raised the first time."""
    info = codec.decode(error or b"{}", where=f"event wait {full_name!r}")
    message = info.get("message") if isinstance(info, dict) else None
    return errors.WaitTimeout(message or f"wait {full_name!r} for an event timed out")


def _when(at: datetime | None) -> str:
    return "its timeout" if at is None else at.isoformat()
