"""``tide.events``: send events by key to the runs that wait for them
(``run.wait_for_event``), and see the stored events and the waiting runs.

Semantics. An event sent while runs wait for its (name, key) is delivered to every one
of them then (each receives it once) and wakes them. An event sent while none waits is
stored, for ``retention`` (7 days by default), and the next run that starts waiting for
that (name, key) receives it, alone: stored events are a queue, oldest first, each
consumed by one run. A wait past its timeout receives nothing (it raises
``WaitTimeout``), and the event stays stored for the next waiter.

Exactly once under concurrency (any number of senders, waiters and workers, killed or
not): a send and a wait for the same (name, key) each run in one transaction that holds
that pair's advisory lock first, so one of them always sees what the other committed
(see ``store/keyed_events.py``).
"""

from __future__ import annotations

import base64
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

from tidebase_async import errors
from tidebase_async._util import codec
from tidebase_async._util.checks import as_seconds, check_event_key, check_history_name
from tidebase_async._util.ids import uuid7
from tidebase_async.client.runs import cursor_time, stored_json
from tidebase_async.models import EventWaitInfo, KeyedEvent

if TYPE_CHECKING:
    from tidebase_async.client.tidebase import Tidebase
    from tidebase_async.store import EventWaitRow, KeyedEventRow

#: How long an event sent while nobody waits stays stored, by default.
DEFAULT_EVENT_RETENTION = timedelta(days=7)
KEYED_EVENT_STATUSES = ("stored", "delivered", "consumed")
_MAX_RETENTION_S = 100 * 366 * 24 * 3600.0


class Events:
    """``tide.events``."""

    def __init__(self, tide: Tidebase) -> None:
        self._tide = tide

    async def send(
        self,
        name: str,
        *,
        key: Any,
        payload: Any = None,
        retention: float | timedelta = DEFAULT_EVENT_RETENTION,
    ) -> KeyedEvent:
        """Send event ``name`` with ``key`` and ``payload`` (JSON).

        Every run waiting for ``(name, key)`` now (``run.wait_for_event``, not past its
        timeout) receives it, once, and resumes; the event's ``status`` is then
        ``delivered`` and ``received_by`` lists those runs. When none waits, the event
        is ``stored`` for ``retention`` (seconds or a timedelta; 7 days by default) and
        the next run to wait for ``(name, key)`` receives it, and no other run.
        Durable when this returns; a lost connection is ridden out without sending
        twice.

        ``key``: a str of at most 200 characters (an int or a UUID stands for its str
        form).

        Raises:
            ConfigurationError: a bad name, key or retention; nothing is stored.
            SerializationError: ``payload`` is not JSON-encodable; nothing is stored.
            PayloadTooLarge: ``payload`` encodes to more than ``max_payload_bytes``.
        """
        check_history_name("event", name)
        event_key = check_event_key(key, event=name)
        retention_s = as_seconds(retention, what=f"event {name!r} retention")
        if retention_s is None or not 0 < retention_s <= _MAX_RETENTION_S:
            raise errors.ConfigurationError(
                f"event {name!r}: retention must be more than 0 and at most 100 years, "
                f"got {retention!r}"
            )
        data = codec.encode(
            payload, where=f"payload of event {name!r}", max_size=self._tide.max_payload_bytes
        )
        result = await self._tide.store.send_keyed_event(
            event_id=uuid7(), name=name, key=event_key, payload=data, retention_s=retention_s
        )
        if result.event.received_by:
            self._tide.notifier.runs_changed(*result.event.received_by)
        if result.woken_queues:
            self._tide.notifier.queues_changed(*result.woken_queues)
        return event_info(result.event)

    async def waits(
        self, *, name: str | None = None, key: Any = None, limit: int = 50
    ) -> list[EventWaitInfo]:
        """The open waits of active runs (``run.wait_for_event``), oldest first.

        Raises:
            ConfigurationError: bad name, key or limit.
        """
        event_name, event_key = _filters(name, key)
        rows = await self._tide.store.list_event_waits(
            name=event_name, key=event_key, limit=_limit(limit)
        )
        return [wait_info(row) for row in rows]

    async def list(
        self,
        *,
        status: str | None = "stored",
        name: str | None = None,
        key: Any = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> list[KeyedEvent]:
        """Events within their retention, in the order sent: ``stored`` ones (sent
        while nobody waited, not received yet) by default; ``status=None``: all.
        Pass the ``cursor_of`` the last item as ``cursor`` for the next page.

        Raises:
            ConfigurationError: unknown status, bad name, key, limit or cursor.
        """
        if status is not None and status not in KEYED_EVENT_STATUSES:
            raise errors.ConfigurationError(
                f"unknown event status {status!r}; one of {', '.join(KEYED_EVENT_STATUSES)}"
            )
        event_name, event_key = _filters(name, key)
        rows = await self._tide.store.list_keyed_events(
            status=status,
            name=event_name,
            key=event_key,
            limit=_limit(limit),
            after=None if cursor is None else _parse_cursor(cursor),
        )
        return [event_info(row) for row in rows]

    @staticmethod
    def cursor_of(event: KeyedEvent) -> str:
        """The cursor that continues a listing after ``event``."""
        assert event.sent_at is not None
        raw = f"{event.sent_at.isoformat()}|{event.id}"
        return base64.urlsafe_b64encode(raw.encode()).decode("ascii")


def event_info(row: KeyedEventRow) -> KeyedEvent:
    return KeyedEvent(
        id=row.id,
        name=row.name,
        key=row.key,
        payload=stored_json(row.payload),
        status=row.status,
        received_by=row.received_by,
        sent_at=row.sent_at,
        consumed_at=row.consumed_at,
        expires_at=row.expires_at,
    )


def wait_info(row: EventWaitRow) -> EventWaitInfo:
    return EventWaitInfo(
        run_id=row.run_id,
        wait=row.name,
        name=row.event_name,
        key=row.event_key,
        status=row.status,
        event_id=row.event_id,
        payload=stored_json(row.payload),
        created_at=row.created_at,
        expires_at=row.expires_at,
        closed_at=row.closed_at,
    )


def _filters(name: str | None, key: Any) -> tuple[str | None, str | None]:
    if name is not None:
        check_history_name("event", name)
    if key is None:
        return name, None
    return name, check_event_key(key, event=name or "?")


def _parse_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor.encode("ascii")).decode("utf-8")
        at, event_id = raw.split("|", 1)
        return cursor_time(at), UUID(event_id)
    except (ValueError, UnicodeError, AttributeError, OverflowError) as exc:
        raise errors.ConfigurationError(f"invalid event cursor {cursor!r:.60}") from exc


def _limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise errors.ConfigurationError(f"limit must be an int in 1..1000, got {limit!r}")
    return limit
