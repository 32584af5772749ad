"""Leader election: a session advisory lock on a direct connection, a lease row through
a transaction-mode pooler (``Store.leadership`` picks)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from typing import Protocol

import anyio
import asyncpg

from tidebase_async import errors
from tidebase_async.store.base import StoreBase
from tidebase_async.store.connection import _clean_session, _is_closed, _lock_or_close
from tidebase_async.store.sql import Q
from tidebase_async.store.translate import _translate

logger = logging.getLogger(__name__)

# Advisory lock keys of the leaderships that existed before lease rows, kept so that
# processes of older and newer releases still elect one leader between them.
_ADVISORY_KEYS = {"maintenance": 7_321_094_451_006_132_812}


class Leadership(Protocol):
    """An attempt at leadership (``Store.leadership``): ``held`` says whether this
    holder leads; ``keep_alive()`` runs beside the leader's work and raises when the
    leadership is lost."""

    held: bool

    async def keep_alive(self) -> None: ...


class LocksMixin(StoreBase):
    """Leader election: a session advisory lock on a connection of the pool (direct
    connections), or a lease row (through a transaction-mode pooler)."""

    #: The pool goes through a transaction-mode pooler (set by ``Store.connect``).
    pooled: bool = False

    @contextlib.asynccontextmanager
    async def leadership(
        self, name: str, *, holder: str, expiry_s: float
    ) -> AsyncIterator[Leadership]:
        """Lead ``name`` while inside, if no one else does (``lead.held``); the leader
        runs ``lead.keep_alive()`` beside its work.

        On a direct connection this is a session advisory lock (it goes with a crashed
        holder's session at once; a frozen holder's session ends after ``expiry_s`` of
        silence). Through a transaction-mode pooler, where a session belongs to no
        client, it is a lease row in ``tidebase.leases``: renewed every quarter of
        ``expiry_s``, released on the way out, taken over once expired when its holder
        crashed or froze. Either way at most one holder leads at a time, give or take
        a frozen holder that wakes up and notices at its next renewal.

        Raises:
            StoreError: the database failed (``keep_alive`` too: leadership lost).
        """
        if not self.pooled:
            key = _ADVISORY_KEYS.get(name)
            if key is None:
                digest = hashlib.blake2b(f"tidebase.{name}".encode(), digest_size=8).digest()
                key = int.from_bytes(digest, "big", signed=True)
            async with self.try_advisory_lock(key, idle_timeout_s=expiry_s) as lock:
                yield lock
            return
        lease = LeaseLock(self, name=name, holder=holder, expiry_s=expiry_s)
        lease.held = await lease.renew()
        try:
            yield lease
        finally:
            if lease.held:
                await lease.release()

    async def take_lease(self, name: str, *, holder: str, expiry_s: float) -> bool:
        """Take or renew lease ``name`` for ``holder``; whether ``holder`` holds it now.
        One statement (safe through a pooler)."""
        with _translate(f"lease {name}"):
            row = await self._pool.fetchval(Q["take_lease"], name, holder, expiry_s)
        return row is not None

    async def release_lease(self, name: str, *, holder: str) -> None:
        """Give lease ``name`` up if ``holder`` still holds it."""
        with _translate(f"release lease {name}"):
            await self._pool.execute(Q["release_lease"], name, holder)

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


class LeaseLock:
    """An attempt at a lease row (``Store.leadership`` through a pooler)."""

    def __init__(self, store: LocksMixin, *, name: str, holder: str, expiry_s: float) -> None:
        self._store = store
        self.name = name
        self.holder = holder
        self.expiry_s = expiry_s
        self.held = False

    async def renew(self) -> bool:
        return await self._store.take_lease(self.name, holder=self.holder, expiry_s=self.expiry_s)

    async def keep_alive(self) -> None:
        """Renew the lease every quarter of its expiry until cancelled.

        Raises:
            StoreError: the lease went to another holder (this one was too slow to
                renew it), or the database failed.
        """
        while True:
            await anyio.sleep(self.expiry_s / 4)
            if not await self.renew():
                self.held = False
                raise errors.StoreError(
                    f"lease {self.name}: lost to another holder (not renewed within "
                    f"{self.expiry_s:g}s)"
                )

    async def release(self) -> None:
        """Release the lease (shielded, bounded); a failure only means the next holder
        waits for the expiry."""
        self.held = False
        with anyio.CancelScope(shield=True), anyio.move_on_after(2):
            try:
                await self._store.release_lease(self.name, holder=self.holder)
            except errors.StoreError as exc:
                logger.info("lease %s not released (%s); it expires by itself", self.name, exc)
