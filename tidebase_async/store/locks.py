"""Session advisory locks (leader election)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import asyncpg

from tidebase_async.store.base import StoreBase
from tidebase_async.store.connection import _clean_session, _is_closed, _lock_or_close
from tidebase_async.store.translate import _translate


class LocksMixin(StoreBase):
    """Session advisory locks on pooled connections."""

    @contextlib.asynccontextmanager
    async def try_advisory_lock(
        self, key: int, *, idle_timeout_s: float | None = None
    ) -> AsyncIterator[SessionLock]:
        """Hold a session advisory lock on a pooled connection while inside, if free
        (``lock.held``).

        A crashed holder's lock goes with its session, but a frozen one's (SIGSTOP, VM
        pause) would be held forever: its socket stays open. With ``idle_timeout_s`` the
        holding session gets ``idle_session_timeout`` (Postgres 14+), so the server ends
        it once the holder stops talking; the holder runs ``lock.keep_alive()`` alongside
        to stay elected while its process runs.
        """
        with _translate("advisory lock"):
            async with self._pool.acquire() as conn:
                got = bool(await _lock_or_close(conn, "SELECT pg_try_advisory_lock($1)", key))
                try:
                    ping_s = None
                    if got and idle_timeout_s is not None:
                        ping_s = await _limit_idle_session(conn, idle_timeout_s)
                    yield SessionLock(conn, key=key, held=got, ping_s=ping_s)
                finally:
                    if got and not _is_closed(conn):
                        await _clean_session(conn)


class SessionLock:
    """An attempt at a session advisory lock (``Store.try_advisory_lock``)."""

    def __init__(
        self, conn: asyncpg.Connection, *, key: int, held: bool, ping_s: float | None
    ) -> None:
        self._conn = conn
        self.key = key
        self.held = held
        self._ping_s = ping_s

    async def keep_alive(self) -> None:
        """Ping the holding session until cancelled, so that its idle timeout only ends
        it when this process stops running.

        Raises:
            ConnectionLost, StoreError: the session, and the lock with it, is gone.
        """
        if self._ping_s is None:
            await anyio.sleep_forever()
            return
        while True:
            await anyio.sleep(self._ping_s)
            with _translate(f"advisory lock {self.key}: session lost"):
                await self._conn.execute("SELECT 1")


async def _limit_idle_session(conn: asyncpg.Connection, idle_timeout_s: float) -> float | None:
    """Set ``idle_session_timeout`` on this session; return the ping interval that keeps
    it alive, or None where the server has no such setting (before Postgres 14).
    ``_clean_session`` resets it (RESET ALL) before the connection goes back."""
    try:
        await conn.execute(
            "SELECT set_config('idle_session_timeout', $1, false)",
            f"{max(1, round(idle_timeout_s * 1000))}ms",
        )
    except asyncpg.exceptions.UndefinedObjectError:
        return None
    return idle_timeout_s / 4
