"""Events by key: a run's waits for them, sends, stored events, retention.

Exactly-once rests on one rule (see ``0011_events.sql``): every transaction that
changes the waits or the stored events of one (name, key) takes that pair's
transaction advisory lock first (``lock_event_key``, a statement of its own, so the
statements after it see what the previous holder committed), then the rows of the runs
involved, in id order. A waiter's "take a stored event, else register my wait" and a
sender's "deliver to the registered waits, else store the event" are so serialised.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Literal, TypeVar
from uuid import UUID

import anyio
import asyncpg
import msgspec

from tidebase_async import errors
from tidebase_async.store.base import StoreBase, logger, read_retrying
from tidebase_async.store.rows import row_to
from tidebase_async.store.sql import Q
from tidebase_async.store.translate import _TRANSIENT_ERRORS, _translate

T = TypeVar("T")

EventWaitStatus = Literal["waiting", "received", "timed_out"]
KeyedEventStatus = Literal["stored", "delivered", "consumed"]


class EventWaitRow(msgspec.Struct, frozen=True, kw_only=True):
    """One wait of a run for an event by key (``name``: its history entry, with
    ordinal); ``due``: past its expiry on the database clock."""

    run_id: UUID
    name: str
    position: int
    event_name: str
    event_key: str
    status: EventWaitStatus
    event_id: UUID | None
    payload: bytes | None
    created_at: datetime
    expires_at: datetime | None
    closed_at: datetime | None
    due: bool


class KeyedEventRow(msgspec.Struct, frozen=True, kw_only=True):
    """A sent event as stored (``received_by``: the runs that received it)."""

    id: UUID
    name: str
    key: str
    payload: bytes
    status: KeyedEventStatus
    received_by: list[UUID]
    sent_at: datetime
    consumed_at: datetime | None
    expires_at: datetime


class EventSendResult(msgspec.Struct, frozen=True, kw_only=True):
    """What a send did: the event as recorded, the queues of the runs it moved from
    waiting back to their queue, and ``repeated`` when an event with this id had been
    recorded before (a retried send: nothing was done again)."""

    event: KeyedEventRow
    woken_queues: list[str]
    repeated: bool = False


def _wait(row: asyncpg.Record) -> EventWaitRow:
    return row_to(EventWaitRow, row)


def _event(row: asyncpg.Record) -> KeyedEventRow:
    return KeyedEventRow(
        id=row["id"],
        name=row["name"],
        key=row["key"],
        payload=row["payload"],
        status=row["status"],
        received_by=list(row["received_by"]),
        sent_at=row["sent_at"],
        consumed_at=row["consumed_at"],
        expires_at=row["expires_at"],
    )


class KeyedEventsMixin(StoreBase):
    """Waits for events by key and sends of them, each decided exactly once."""

    async def _in_key_transaction(
        self,
        what: str,
        name: str,
        key: str,
        body: Callable[[asyncpg.Connection], Awaitable[T]],
    ) -> T:
        """``body`` in a transaction that holds the (name, key) lock from its start;
        again when Postgres picked it as a deadlock victim (rolled back whole)."""
        delay = 0.005
        for attempt in range(1, 6):
            try:
                with _translate(what):
                    async with self._pool.acquire() as conn, conn.transaction():
                        await conn.execute(Q["lock_event_key"], name, key)
                        return await body(conn)
            except errors.StoreError as exc:
                if not isinstance(exc.__cause__, _TRANSIENT_ERRORS) or attempt == 5:
                    raise
                logger.info("%s: %s; retrying", what, exc.__cause__)
                await anyio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    async def open_event_wait(
        self,
        *,
        run_id: UUID,
        worker_id: str,
        attempt: int,
        name: str,
        position: int,
        event_name: str,
        key: str,
        timeout_s: float | None,
    ) -> EventWaitRow:
        """The claim's run reaches wait ``name`` (its history entry) for ``event_name``
        with ``key``: record the wait once and return it as it stands now. A new wait
        takes the oldest stored event of the key (received at once), else waits; a
        waiting one found past its expiry is closed as timed out here, in the
        transaction that excludes every send of the key, and one found open takes a
        stored event too (sent while its run was not active: failed, before a retry).
        Idempotent: a retry finds the wait as the first call left it.

        Raises:
            LeaseLost: the claim's fence did not hold.
            NonDeterminismError: the wait was recorded for another event or key.
        """

        async def body(conn: asyncpg.Connection) -> EventWaitRow:
            if await conn.fetchval(Q["lock_claim"], run_id, worker_id, attempt) is None:
                raise errors.LeaseLost(f"run {run_id} is no longer leased to this worker")
            row = await conn.fetchrow(Q["get_event_wait"], run_id, name)
            if row is None:
                row = await conn.fetchrow(
                    Q["open_event_wait"], run_id, name, position, event_name, key, timeout_s
                )
                return _wait(row)
            wait = _wait(row)
            if (wait.event_name, wait.event_key) != (event_name, key):
                raise errors.NonDeterminismError(
                    f"run {run_id}: wait {name!r} was recorded for event "
                    f"{wait.event_name!r} with key {wait.event_key!r:.80}, and waits for "
                    f"event {event_name!r} with key {key!r:.80} now; the workflow code "
                    "changed or its key depends on something other than its input and "
                    "step results"
                )
            if wait.status == "waiting" and wait.due:
                closed = await conn.fetchrow(Q["time_out_event_wait"], run_id, name)
                if closed is not None:
                    return _wait(closed)
            elif wait.status == "waiting":
                got = await conn.fetchrow(
                    Q["receive_stored_event"], run_id, name, event_name, key, wait.expires_at
                )
                if got is not None:
                    return _wait(got)
            return wait

        return await self._in_key_transaction(
            f"waiting for event {event_name!r}", event_name, key, body
        )

    async def send_keyed_event(
        self,
        *,
        event_id: UUID,
        name: str,
        key: str,
        payload: bytes,
        retention_s: float,
    ) -> EventSendResult:
        """Send event ``name`` with ``key``: every wait open for them now (not past its
        expiry, of an active run) receives it and its run wakes; when none is, the
        event is stored for the next waiter. Recorded under ``event_id`` for
        ``retention_s`` seconds: a second call with the same id does nothing again
        (``repeated``)."""

        async def body(conn: asyncpg.Connection) -> EventSendResult:
            seen = await conn.fetchrow(Q["get_keyed_event"], event_id)
            if seen is not None:
                return EventSendResult(event=_event(seen), woken_queues=[], repeated=True)
            waits = await conn.fetch(Q["event_waiters"], name, key)
            woken: list[asyncpg.Record] = []
            if waits:
                woken = await conn.fetch(
                    Q["deliver_event"],
                    [w["run_id"] for w in waits],
                    [w["name"] for w in waits],
                    event_id,
                    payload,
                    name,
                    key,
                )
            row = await conn.fetchrow(
                Q["insert_keyed_event"],
                event_id,
                name,
                key,
                payload,
                retention_s,
                [r["id"] for r in woken],
            )
            return EventSendResult(
                event=_event(row),
                woken_queues=sorted({r["queue"] for r in woken if r["before_status"] == "waiting"}),
            )

        # A lost connection is ridden out for reconnect_s (as enqueues do): safe, as a
        # send that did commit is recognised by its id and not applied again.
        deadline = anyio.current_time() + self.reconnect_s
        delay = 0.05
        while True:
            try:
                return await self._in_key_transaction(f"sending event {name!r}", name, key, body)
            except errors.ConnectionLost as exc:
                if anyio.current_time() + delay > deadline:
                    raise
                logger.info("send event: %s; retrying in %.2fs", exc, delay)
                await anyio.sleep(delay)
                delay = min(delay * 2, 1.0)

    @read_retrying
    async def list_keyed_events(
        self,
        *,
        status: str | None,
        name: str | None,
        key: str | None,
        limit: int,
        after: tuple[datetime, UUID] | None = None,
    ) -> list[KeyedEventRow]:
        """Events sent after ``after`` (sent_at, id) when given, in the order sent."""
        with _translate("list events"):
            rows = await self._pool.fetch(
                Q["list_keyed_events"],
                status,
                name,
                key,
                limit,
                after[0] if after else None,
                after[1] if after else None,
            )
        return [_event(r) for r in rows]

    @read_retrying
    async def get_run_event_waits(self, run_id: UUID) -> list[EventWaitRow]:
        """Every wait of ``run_id`` for an event by key, in the order reached."""
        with _translate("get event waits"):
            rows = await self._pool.fetch(Q["get_run_event_waits"], run_id)
        return [_wait(r) for r in rows]

    @read_retrying
    async def list_event_waits(
        self, *, name: str | None, key: str | None, limit: int
    ) -> list[EventWaitRow]:
        with _translate("list event waits"):
            rows = await self._pool.fetch(Q["list_event_waits"], name, key, limit)
        return [_wait(r) for r in rows]

    async def prune_keyed_events(self, *, limit: int) -> int:
        """Delete up to ``limit`` events past their retention; return how many."""
        with _translate("prune events"):
            status = await self._pool.execute(Q["prune_keyed_events"], limit)
        return int(status.rsplit(" ", 1)[-1])
