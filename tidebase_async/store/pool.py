"""The store's connection pool: raw asyncpg connections, one pooled statement at the
cost of the statement (asyncpg's own ``Pool`` adds proxies, a reset under a timeout and
a shielded task to every release)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, cast

import anyio
import asyncpg

logger = logging.getLogger(__name__)

#: How long a connection whose statement was interrupted may wait for asyncpg's
#: CancelRequest before it is terminated anyway (its slot stays taken meanwhile).
CANCEL_WAIT_S = 5.0
#: ``close()``: how long in-use connections may take to come back before the pool
#: terminates everything still open.
CLOSE_WAIT_S = 10.0
#: ``close()``: how long one idle connection's graceful close may take.
CLOSE_ONE_S = 2.0

# Exceptions after which a connection's protocol state is unknown (a query may still be
# running, a cancel request may be in flight, a reply half read): never reused. Anything
# that is not an ``Exception`` (CancelledError, KeyboardInterrupt) counts too.
_STATE_UNKNOWN: tuple[type[BaseException], ...] = (
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,  # ConnectionError and TimeoutError (asyncpg's and anyio's) included
    BaseExceptionGroup,
)

Init = Callable[[asyncpg.Connection], Awaitable[None]]


class Pool:
    """A pool of asyncpg connections, a drop-in for what the store used of
    ``asyncpg.Pool`` (``fetch``, ``fetchrow``, ``fetchval``, ``execute``,
    ``acquire()``, ``close()``, ``terminate()``). Open it with ``Pool.open``.

    Guarantees:

    - At most ``max_size`` connections exist at once, counting those being opened and
      those being discarded (waiting for a cancel request to reach the server).
      ``min_size`` connections are opened by ``open``, which raises the asyncpg or OS
      error of connecting as it is; more are opened on demand (``init`` runs on each),
      and a failure to open one is raised to the caller that needed it.
    - When all are busy, callers wait in FIFO order, without a timeout: a released
      connection (or a freed slot) goes to the oldest waiter. A waiter that is
      cancelled never takes a connection with it.
    - A connection is reused only in a known protocol state: after success, or after an
      error the server reported (``asyncpg.PostgresError``). One whose statement or
      ``acquire()`` block ended otherwise (cancelled, timed out, connection or driver
      error; in a block, an application exception is fine unless one of these caused
      it), one released inside a transaction, and one found closed are discarded. An
      interrupted statement's connection waits for asyncpg's cancel request (up to
      ``CANCEL_WAIT_S``) before it is terminated, so the server stops the statement
      rather than run it on without a client.
    - Sessions are not reset between uses: the store keeps no session state on pooled
      connections (``connection._clean_session`` cleans up the advisory lock's), and a
      reset would cost a round trip per statement; through a transaction-mode pooler it
      would run on whichever server connection the pooler picked anyway.
    - Idle connections are reused newest first (their statement caches stay warm) and
      terminated when found idle for over ``max_inactive_lifetime`` seconds (on the
      next acquire; no background task), so the pool shrinks under light load and a
      firewall or pooler that dropped an idle session costs no failed statement.
    - ``close()`` refuses new work at once (waiters and later callers get
      ``asyncpg.InterfaceError``), closes idle connections gracefully and in-use ones
      as they come back, and terminates whatever is left after ``CLOSE_WAIT_S``.
      ``terminate()`` terminates everything at once. Both are idempotent.
    - Every task the pool starts is awaited before the call that started it returns.
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        *,
        max_size: int,
        max_inactive_lifetime: float,
    ) -> None:
        self._connect = connect
        self._max_size = max_size
        self._lifetime = max_inactive_lifetime if max_inactive_lifetime > 0 else math.inf
        # Idle connections with the time each was released, oldest first.
        self._idle: deque[tuple[asyncpg.Connection, float]] = deque()
        self._in_use: set[asyncpg.Connection] = set()
        # Discarded connections waiting for their cancel request, with their deadline.
        self._discarding: dict[asyncpg.Connection, asyncio.TimerHandle] = {}
        # Each gets a connection, or None: a slot reserved for it to open one in.
        self._waiters: deque[asyncio.Future[asyncpg.Connection | None]] = deque()
        # Slots taken: idle + in use + being opened + being discarded + being closed.
        self._size = 0
        self._closing = False
        self._closed = False
        self._changed = asyncio.Event()  # while closing: a slot or an idle one came back
        self._done = asyncio.Event()

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 60.0,
        max_inactive_lifetime: float = 300.0,
        init: Init | None = None,
        **connect_kwargs: Any,
    ) -> Pool:
        """Open a pool on ``dsn`` with ``min_size`` connections open. ``timeout``
        bounds each connection's opening; ``connect_kwargs`` go to ``asyncpg.connect``.
        A ``max_inactive_lifetime`` of 0 keeps idle connections forever.

        Raises:
            ValueError: sizes out of range.
            asyncpg and OS errors of connecting, as they are.
        """
        if max_size < 1 or not 0 <= min_size <= max_size:
            raise ValueError(
                f"pool sizes: need 0 <= min_size <= max_size, 1 <= max_size "
                f"(got min_size={min_size}, max_size={max_size})"
            )

        async def connect() -> asyncpg.Connection:
            return await _connect(dsn, timeout, init, connect_kwargs)

        pool = cls(connect, max_size=max_size, max_inactive_lifetime=max_inactive_lifetime)
        try:
            await pool._fill(min_size)
        except BaseException:
            pool.terminate()
            raise
        return pool

    # -- statements ------------------------------------------------------------------

    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> list[Any]:
        return cast(
            "list[Any]", await self._run(asyncpg.Connection.fetch, query, args, timeout=timeout)
        )

    async def fetchrow(self, query: str, *args: Any, timeout: float | None = None) -> Any:
        return await self._run(asyncpg.Connection.fetchrow, query, args, timeout=timeout)

    async def fetchval(
        self, query: str, *args: Any, column: int = 0, timeout: float | None = None
    ) -> Any:
        return await self._run(
            asyncpg.Connection.fetchval, query, args, column=column, timeout=timeout
        )

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        return str(await self._run(asyncpg.Connection.execute, query, args, timeout=timeout))

    async def _run(
        self, method: Callable[..., Awaitable[Any]], query: str, args: tuple[Any, ...], **kw: Any
    ) -> Any:
        """One statement on a pooled connection. No await but the statement's when an
        idle connection is at hand."""
        conn = self._take()
        if conn is None:
            conn = await self._acquire_slow()
        try:
            result = await method(conn, query, *args, **kw)
        except asyncpg.PostgresError as exc:
            # The server answered: the protocol state is known.
            if _session_survives(exc):
                self._put(conn)
            else:
                self._discard(conn)
            raise
        except BaseException:
            self._discard(conn)
            raise
        self._put(conn)
        return result

    def acquire(self) -> _Acquired:
        """``async with pool.acquire() as conn``: a raw ``asyncpg.Connection`` for the
        block. Leave no transaction open and hand the connection to nothing that
        outlives the block."""
        return _Acquired(self)

    # -- sizes -----------------------------------------------------------------------

    def get_size(self) -> int:
        """Connections open, being opened or being discarded."""
        return self._size

    def get_idle_size(self) -> int:
        return len(self._idle)

    def get_max_size(self) -> int:
        return self._max_size

    # -- taking and giving back --------------------------------------------------------

    def _take(self) -> asyncpg.Connection | None:
        """An idle connection (now in use), or None when there is none."""
        if self._closing:
            raise self._refusal()
        idle = self._idle
        if not idle:
            return None
        # Oldest first: the newest is popped below, so an expired one would otherwise
        # stay at the bottom until a burst reached it.
        expired_before = time.monotonic() - self._lifetime
        while idle and idle[0][1] < expired_before:
            self._drop(idle.popleft()[0])
        while idle:
            conn = idle.pop()[0]
            if not conn.is_closed():  # the server ended it while idle
                self._in_use.add(conn)
                return conn
            self._drop(conn)
        return None

    async def _acquire_slow(self) -> asyncpg.Connection:
        """A new connection when there is room, else the next one given back."""
        if self._size < self._max_size:
            # Reserved before the first await: concurrent callers see it taken.
            self._size += 1
            return await self._open_in_slot()
        conn = await self._wait()
        if conn is None:  # a slot was freed for us
            conn = await self._open_in_slot()
        return conn

    async def _wait(self) -> asyncpg.Connection | None:
        fut: asyncio.Future[asyncpg.Connection | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            return await fut
        except BaseException:
            self._abandon(fut)
            raise

    def _abandon(self, fut: asyncio.Future[asyncpg.Connection | None]) -> None:
        """A waiter leaves (cancelled, or failed by close). Race: its future may have
        received a connection or a slot after the task was cancelled but before it ran
        again; pass that on rather than leak it."""
        if not fut.done():
            # Cancelling the task cancels the future it awaits, so this is rare (a
            # cancel delivered some other way); the handover skips done futures anyway.
            fut.cancel()
        if fut.cancelled() or fut.exception() is not None:
            with contextlib.suppress(ValueError):
                self._waiters.remove(fut)
            return
        conn = fut.result()
        if conn is None:
            self._free_slot()
        else:
            self._put(conn)

    async def _open_in_slot(self) -> asyncpg.Connection:
        """Open a connection in a slot the caller reserved; the slot is freed when
        opening fails (the error goes to the caller)."""
        try:
            conn = await self._connect()
        except BaseException:
            self._free_slot()
            raise
        if self._closing:  # closed while it was being opened
            conn.terminate()
            self._free_slot()
            raise self._refusal()
        self._in_use.add(conn)
        return conn

    def _put(self, conn: asyncpg.Connection) -> None:
        """Give back a connection in a known protocol state."""
        if conn.is_closed() or self._closed:
            self._discard(conn)
            return
        if conn.is_in_transaction():
            logger.warning("a pooled connection came back inside a transaction: terminated")
            self._discard(conn)
            return
        if self._hand_over(conn):
            return  # still in use, by the oldest waiter
        self._in_use.discard(conn)
        self._idle.append((conn, time.monotonic()))
        if self._closing:
            self._changed.set()

    def _hand_over(self, item: asyncpg.Connection | None) -> bool:
        """Give a connection (or a free slot: None) to the oldest waiter, if any."""
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():  # skip cancelled waiters
                fut.set_result(item)
                return True
        return False

    def _free_slot(self) -> None:
        if self._hand_over(None):
            return  # the slot passes to the waiter, which opens a connection in it
        self._size -= 1
        if self._closing:
            self._changed.set()

    def _drop(self, conn: asyncpg.Connection) -> None:
        """Terminate a connection that is not in use (expired, or closed while idle)."""
        conn.terminate()
        self._free_slot()

    def _discard(self, conn: asyncpg.Connection) -> None:
        """Take a connection out of use for good. Its slot stays taken until it is
        terminated: at once, or once asyncpg's cancel request for its interrupted
        statement is done (bounded by ``CANCEL_WAIT_S``)."""
        self._in_use.discard(conn)
        # asyncpg sends the CancelRequest of an interrupted statement from a task of its
        # own, which terminate() cancels: terminating now would leave the statement
        # running on the server (holding its locks, committing later) until it next
        # writes to the socket. The task ends once the server acknowledged the cancel.
        pending = [t for t in getattr(conn, "_cancellations", ()) if not t.done()]
        if not pending or conn.is_closed():
            self._drop(conn)
            return
        deadline = asyncio.get_running_loop().call_later(CANCEL_WAIT_S, conn.terminate)
        self._discarding[conn] = deadline

        def cancel_done(_: object) -> None:
            # Runs once per task; the first to find them all done terminates. When the
            # deadline (or terminate()) comes first, terminating cancels the tasks, and
            # this runs as they end.
            if conn in self._discarding and all(t.done() for t in pending):
                self._discarding.pop(conn).cancel()
                self._drop(conn)

        for task in pending:
            task.add_done_callback(cancel_done)

    # -- closing -----------------------------------------------------------------------

    def _refusal(self) -> asyncpg.InterfaceError:
        # The words of asyncpg's pool: the store translates them to ConnectionLost.
        return asyncpg.InterfaceError("pool is closed" if self._closed else "pool is closing")

    def _begin_closing(self) -> None:
        if self._closing:
            return
        self._closing = True
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(self._refusal())

    async def close(self) -> None:
        """Close gracefully: refuse new work, close idle connections, close in-use ones
        as they come back; after ``CLOSE_WAIT_S`` (or when cancelled) terminate what
        is left. A second call waits for the first."""
        if self._closing:
            await self._done.wait()
            return
        self._begin_closing()
        try:
            with anyio.move_on_after(CLOSE_WAIT_S):
                while True:
                    # Cleared before closing the idle ones: a connection given back
                    # meanwhile sets it again, and the wait below returns at once.
                    self._changed.clear()
                    await self._close_idle()
                    if self._size == 0:
                        break
                    await self._changed.wait()
        finally:
            self.terminate()

    async def _close_idle(self) -> None:
        idle = [conn for conn, _ in self._idle]
        self._idle.clear()
        async with anyio.create_task_group() as tg:
            for conn in idle:
                tg.start_soon(self._close_one, conn)

    async def _close_one(self, conn: asyncpg.Connection) -> None:
        try:
            await conn.close(timeout=CLOSE_ONE_S)
        except Exception as exc:  # asyncpg aborts it: gone either way
            logger.debug("closing a pooled connection: %s", exc)
        finally:
            conn.terminate()  # after close(): only its cleanup, which is idempotent
            self._free_slot()

    def terminate(self) -> None:
        """Terminate every connection at once; callers get ``InterfaceError``."""
        self._begin_closing()
        self._closed = True
        while self._idle:
            self._drop(self._idle.popleft()[0])
        # In-use ones are dropped (and their slots freed) as they come back.
        for conn in list(self._in_use):
            conn.terminate()
        for conn, deadline in list(self._discarding.items()):
            deadline.cancel()
            conn.terminate()  # cancels the cancel tasks; their callbacks drop it
        self._done.set()

    # -- opening ---------------------------------------------------------------------

    async def _fill(self, count: int) -> None:
        """Open ``count`` idle connections: the first alone, so that a bad DSN, a
        refused password or an unreachable host fails once with its own error."""
        if count < 1:
            return
        await self._open_idle()
        try:
            async with anyio.create_task_group() as tg:
                for _ in range(count - 1):
                    tg.start_soon(self._open_idle)
        except BaseExceptionGroup as group:
            raise _first_error(group) from None

    async def _open_idle(self) -> None:
        self._size += 1
        self._put(await self._open_in_slot())


class _Acquired:
    """``Pool.acquire()``: one connection for an ``async with`` block."""

    __slots__ = ("_conn", "_pool")

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> asyncpg.Connection:
        pool = self._pool
        conn = pool._take()
        if conn is None:
            conn = await pool._acquire_slow()
        self._conn = conn
        return conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if exc is None or _state_known_after(exc):
            self._pool._put(conn)
        else:
            self._pool._discard(conn)


def _state_known_after(exc: BaseException) -> bool:
    """Whether a connection whose ``acquire()`` block raised ``exc`` is in a known
    protocol state: an error the server reported, or the application's own (a lease
    lost, say), unless the chain of causes holds a cancellation or a driver error (a
    ``ConnectionLost`` translated from a timeout mid-statement)."""
    seen: BaseException | None = exc
    for _ in range(8):  # chains are short; a long one is not trusted
        if seen is None:
            return True
        if not isinstance(seen, Exception) or isinstance(seen, _STATE_UNKNOWN):
            return False
        if isinstance(seen, asyncpg.PostgresError) and not _session_survives(seen):
            return False
        seen = seen.__cause__ or seen.__context__
    return False


def _session_survives(exc: asyncpg.PostgresError) -> bool:
    """Whether the server keeps the session after reporting ``exc``: not after a FATAL
    or PANIC error (administrator shutdown, terminated backend), after which it closes
    the connection, possibly before asyncpg has noticed."""
    severity = getattr(exc, "severity_en", None) or getattr(exc, "severity", None)
    return severity not in ("FATAL", "PANIC")


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first error that is not a cancellation (the rest were cancelled by it)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_error(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]


async def _connect(
    dsn: str, timeout: float, init: Init | None, kwargs: dict[str, Any]
) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn, timeout=timeout, **kwargs)
    if init is None:
        return conn
    try:
        await init(conn)
    except BaseException:
        conn.terminate()
        raise
    return conn
