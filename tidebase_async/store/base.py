"""What every part of ``Store`` shares: the pool, and the retry of writes."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

import anyio
import asyncpg

from tidebase_async import errors
from tidebase_async.store.pool import Pool
from tidebase_async.store.sql import Q
from tidebase_async.store.translate import _TRANSIENT_ERRORS, _translate

# Named for the package, not this module: `tidebase migrate` listens on it by name.
logger = logging.getLogger("tidebase_async.store")


P = ParamSpec("P")
T = TypeVar("T")
S = TypeVar("S", bound="StoreBase")

#: The default of ``StoreBase.reconnect_s``.
RECONNECT_S = 30.0
#: No result of a transaction yet (None may be one).
_UNSET: Any = object()


def read_retrying(
    method: Callable[Concatenate[S, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[S, P], Coroutine[Any, Any, T]]:
    """A read that rides out a lost connection: on ``ConnectionLost`` (a failover to a
    promoted standby, a server restart, a pooler dropping its server) it is tried
    again, with backoff, until the store's ``reconnect_s`` has passed since the first
    try; then the last error is raised. Safe because the method only reads. The pool
    replaces broken connections, and a multi-host DSN with
    ``target_session_attrs=read-write`` lands the new ones on the new primary."""

    async def retrying(self: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
        deadline = anyio.current_time() + self.reconnect_s
        delay = 0.05
        while True:
            try:
                return await method(self, *args, **kwargs)
            except errors.ConnectionLost as exc:
                if anyio.current_time() + delay > deadline:
                    raise
                logger.info("%s: %s; retrying in %.2fs", method.__name__, exc, delay)
                await anyio.sleep(delay)
                delay = min(delay * 2, 1.0)

    functools.update_wrapper(retrying, method)
    return retrying


class StoreBase:
    """The pool under every ``Store`` method; each concern's mixin extends this."""

    _pool: Pool
    dsn: str
    #: How long reads (``read_retrying``) and enqueues keep trying through a lost
    #: connection before they raise ``ConnectionLost``.
    reconnect_s: float = RECONNECT_S

    def __init__(self, pool: Pool, dsn: str) -> None:
        self._pool = pool
        self.dsn = dsn

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._pool.close()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        with _translate("acquiring a connection"):
            async with self._pool.acquire() as conn:
                yield conn

    async def _fetch_retrying_deadlocks(self, what: str, sql: str, *args: Any) -> list[Any]:
        """Run a multi-row write, again when Postgres picked it as a deadlock (or
        serialization) victim: such a statement was rolled back whole, so repeating it
        is safe. Multi-row writers lock in id order, but an enqueue whose dedupe keys
        hit active runs locks those in key order and can still meet a worker's batch."""
        delay = 0.005
        for attempt in range(1, 6):
            try:
                with _translate(what):
                    return list(await self._pool.fetch(sql, *args))
            except errors.StoreError as exc:
                transient = isinstance(exc.__cause__, _TRANSIENT_ERRORS)
                if not transient or attempt == 5:
                    raise
                logger.info("%s: %s; retrying", what, exc.__cause__)
                await anyio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    async def _transaction_retrying(
        self, what: str, body: Callable[[asyncpg.Connection], Awaitable[T]]
    ) -> T:
        """Run ``body`` in a transaction and return what it returned, committed.

        Tried again when Postgres picked it as a deadlock (or serialization) victim
        (up to 5 tries), and through a lost connection for ``reconnect_s``, never
        applying it twice: the transaction reads its id first, so when the connection
        is lost at COMMIT (the outcome unknown), ``txid_status`` on a new connection
        tells whether it committed (then ``body``'s result is returned) or not (then
        it runs again). A connection lost before COMMIT was sent rolled it back.

        Raises:
            ConnectionLost: still lost after ``reconnect_s``, or a commit's outcome
                still unknown then.
            StoreError: another database failure (after the retries of a transient one).
        """
        deadline = anyio.current_time() + self.reconnect_s
        delay = 0.05
        transient = 0
        while True:
            xid: int | None = None
            result: Any = _UNSET
            try:
                with _translate(what):
                    async with self._pool.acquire() as conn:
                        async with conn.transaction():
                            xid = int(await conn.fetchval(Q["current_xact"]))
                            result = await body(conn)
                        return cast(T, result)
            except errors.ConnectionLost as exc:
                # Lost at COMMIT (the body had returned): did it land?
                lost_at_commit = result is not _UNSET and xid is not None
                if lost_at_commit and await self._committed(what, xid or 0, deadline):
                    logger.info("%s: %s; its commit had landed", what, exc)
                    return cast(T, result)
                if anyio.current_time() + delay > deadline:
                    raise
                logger.info("%s: %s; retrying in %.2fs", what, exc, delay)
                await anyio.sleep(delay)
                delay = min(delay * 2, 1.0)
            except errors.StoreError as exc:
                transient += 1
                if not isinstance(exc.__cause__, _TRANSIENT_ERRORS) or transient == 5:
                    raise
                logger.info("%s: %s; retrying", what, exc.__cause__)
                await anyio.sleep(0.005 * 2**transient)

    async def _committed(self, what: str, xid: int, deadline: float) -> bool:
        """Whether transaction ``xid``, whose COMMIT was sent on a connection that was
        then lost, committed. Asked on another connection until its backend has
        finished it (it may still be committing), until ``deadline``.

        Raises:
            ConnectionLost: not known by ``deadline``.
        """
        delay = 0.02
        while True:
            status: str | None
            try:
                with _translate(f"{what}: commit status"):
                    status = await self._pool.fetchval(Q["xact_status"], xid)
            except errors.ConnectionLost:
                status = "unknown"
            except errors.StoreError as exc:
                # A promoted standby that never received the transaction: its id is
                # "in the future" there, so it did not commit on this primary.
                if isinstance(exc.__cause__, asyncpg.InvalidParameterValueError):
                    return False
                raise
            if status in ("committed", "aborted"):
                return status == "committed"
            if status is None:
                raise errors.ConnectionLost(
                    f"{what}: the connection was lost at commit and transaction {xid} "
                    "is too old to tell whether it committed"
                )
            if anyio.current_time() + delay > deadline:
                raise errors.ConnectionLost(
                    f"{what}: the connection was lost at commit and whether transaction "
                    f"{xid} committed is still unknown ({status})"
                )
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.5)
