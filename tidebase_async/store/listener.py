"""The dedicated LISTEN connection: dispatches notifications, reconnects by itself.

Pool connections cannot LISTEN (asyncpg resets them with UNLISTEN on release, and
pgbouncer in transaction mode cannot hold a LISTEN), so the listener owns one
connection. It pings it, and on any failure reconnects with backoff; every
(re)connection calls the ``on_connect`` callbacks so that waiters re-check what they
may have missed while no connection was listening.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any
from uuid import UUID

import anyio
import asyncpg

from tidebase_async._util.signals import Signal
from tidebase_async.store import open_connection
from tidebase_async.store.channels import EVENTS_CHANNEL

logger = logging.getLogger(__name__)

Callback = Callable[[str], None]


class Listener:
    """Owns one LISTEN connection for a fixed set of channels."""

    def __init__(self, dsn: str, channels: list[str], *, ping_interval: float = 5.0) -> None:
        self._dsn = dsn
        self._channels = channels
        self._ping_interval = ping_interval
        self._subscribers: dict[str, list[Callback]] = {ch: [] for ch in channels}
        self._on_connect: list[Callable[[], None]] = []
        self.connected = False
        self.connections = 0
        self._conn: asyncpg.Connection | None = None

    def subscribe(self, channel: str, callback: Callback) -> Callable[[], None]:
        """Call ``callback(payload)`` for each notification; returns an unsubscribe."""
        self._subscribers[channel].append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers[channel].remove(callback)

        return unsubscribe

    def on_connect(self, callback: Callable[[], None]) -> Callable[[], None]:
        self._on_connect.append(callback)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._on_connect.remove(callback)

        return remove

    def _dispatch(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        for callback in list(self._subscribers.get(channel, ())):
            try:
                callback(payload)
            except Exception:
                logger.exception("notification callback failed")

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen until cancelled. Signals ``task_status`` after the first attempt
        (connected or not: the caller must not hang because the listener cannot
        connect yet; polling covers the gap)."""
        started = False
        delay = 0.1
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await open_connection(self._dsn, timeout=5.0)
                lost = anyio.Event()
                conn.add_termination_listener(_setter(lost))
                for channel in self._channels:
                    await conn.add_listener(channel, self._dispatch)
                self._conn = conn
                self.connected = True
                self.connections += 1
                delay = 0.1
                if self.connections > 1:
                    logger.info("listener reconnected")
                for callback in list(self._on_connect):
                    callback()
                if not started:
                    started = True
                    task_status.started()
                while not lost.is_set():
                    with anyio.move_on_after(self._ping_interval):
                        await lost.wait()
                    if lost.is_set():
                        break
                    with anyio.fail_after(self._ping_interval):
                        await conn.fetchval("SELECT 1")
            except Exception as exc:
                # Whatever broke (network, server, driver state), the listener must not
                # die: its task group spans the body of `async with tide`.
                logger.warning("listener connection lost (%s); reconnecting in %.1fs", exc, delay)
            finally:
                self.connected = False
                self._conn = None
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            if not started:
                started = True
                task_status.started()
            # Waiters re-check on reconnect; meanwhile wake them so they poll.
            for callback in list(self._on_connect):
                callback()
            await anyio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def backend_pid(self) -> int | None:
        """The server pid of the LISTEN connection, while connected."""
        return None if self._conn is None else int(self._conn.get_server_pid())


def _setter(event: anyio.Event) -> Callable[[Any], None]:
    def set_event(_conn: Any) -> None:
        event.set()

    return set_event


@contextlib.contextmanager
def watch_run(listener: Listener | None, run_id: UUID) -> Iterator[Signal]:
    """A signal set whenever a notification names ``run_id`` (or the listener
    reconnects, since notifications may have been missed meanwhile)."""
    changed = Signal()
    if listener is None:
        yield changed
        return
    key = str(run_id)

    def on_events(payload: str) -> None:
        if key in payload.split(","):
            changed.set()

    removers = [listener.subscribe(EVENTS_CHANNEL, on_events), listener.on_connect(changed.set)]
    try:
        yield changed
    finally:
        for remove in removers:
            remove()
