"""The store's connection pool (``tidebase_async.store.pool``) against a real Postgres:
reuse, the size limit with FIFO waiters, connections discarded after a cancellation, a
server-side termination or an open transaction, waiters cancelled without leaking,
close() with a connection in use, and idle expiry."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg
import pytest

from tests.integration.core_support import eventually, with_database
from tidebase_async import errors
from tidebase_async.store import pool as pool_module
from tidebase_async.store.connection import connect_kwargs
from tidebase_async.store.pool import Pool
from tidebase_async.store.translate import _translate

PID = "SELECT pg_backend_pid()"


@contextlib.asynccontextmanager
async def opened(dsn: str, **kwargs: Any) -> AsyncIterator[Pool]:
    kwargs.setdefault("min_size", 1)
    kwargs.setdefault("max_size", 4)
    pool = await Pool.open(dsn, timeout=10, **kwargs, **connect_kwargs(pooled=False))
    try:
        yield pool
    finally:
        pool.terminate()


async def backend_alive(db: asyncpg.Connection, pid: int) -> bool:
    return bool(await db.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid))


async def backends_gone(db: asyncpg.Connection, *pids: int) -> None:
    async def gone() -> bool:
        return not any([await backend_alive(db, pid) for pid in pids])

    await eventually(gone, timeout=5, what=f"backends {pids} to end")


async def test_a_connection_is_reused_and_init_runs_on_it(dsn: str) -> None:
    async with opened(dsn) as pool:
        assert (pool.get_size(), pool.get_idle_size()) == (1, 1)
        first = await pool.fetchval(PID)
        assert await pool.fetchval(PID) == first
        async with pool.acquire() as a:
            assert await a.fetchval(PID) == first
        async with pool.acquire() as b:
            assert b is a
        # init: the binary jsonb codec hands bytes through.
        assert await pool.fetchval("""SELECT '{"a": 1}'::jsonb""") == b'{"a": 1}'
        assert await pool.fetchval("SELECT 1, 2", column=1) == 2
        assert dict(await pool.fetchrow("SELECT 3 AS x")) == {"x": 3}
        assert [dict(r) for r in await pool.fetch("SELECT 4 AS x")] == [{"x": 4}]
        assert await pool.execute("SELECT 5") == "SELECT 1"
        assert pool.get_size() == 1


async def test_concurrent_callers_never_open_more_than_max_size(
    dsn: str, db: asyncpg.Connection
) -> None:
    """Connections being opened count toward the size: 8 callers on an empty pool of 2
    open 2 connections, not 8."""
    async with opened(dsn, min_size=0, max_size=2) as pool:
        pids: list[int] = []
        peak = 0

        async def call() -> None:
            nonlocal peak
            peak = max(peak, pool.get_size())
            pids.append(await pool.fetchval("SELECT pg_backend_pid() FROM pg_sleep(0.05)"))
            peak = max(peak, pool.get_size())

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(call)
        assert len(pids) == 8
        assert len(set(pids)) == 2
        assert peak == 2
        database = await db.fetchval("SELECT current_database()")
        count = await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
        assert count == 2


async def test_waiters_are_served_in_fifo_order_within_max_size(dsn: str) -> None:
    async with opened(dsn, max_size=2) as pool:
        order: list[int] = []
        used: set[int] = set()
        busy = 0
        peak = 0

        async def waiter(i: int, *, task_status: anyio.abc.TaskStatus[None]) -> None:
            nonlocal busy, peak
            # Queued synchronously in acquire(), before start() returns to the caller.
            task_status.started()
            async with pool.acquire() as conn:
                order.append(i)
                used.add(id(conn))
                busy += 1
                peak = max(peak, busy, pool.get_size())
                await conn.execute("SELECT pg_sleep(0.01)")
                busy -= 1

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg, pool.acquire(), pool.acquire():
                for i in range(6):
                    await tg.start(waiter, i)
                await anyio.sleep(0.05)
                assert order == []
                assert pool.get_size() == 2  # nobody opened a third
                # Leaving the blocks handed both connections to waiters 0 and 1.
        assert order == [0, 1, 2, 3, 4, 5]
        assert len(used) == 2
        assert peak == 2
        assert pool.get_size() == 2


async def test_fifo_hand_over_on_release(dsn: str) -> None:
    """A released connection goes to the oldest waiter, not to a newer one nor idle."""
    async with opened(dsn, max_size=1) as pool:
        got: list[tuple[int, object]] = []

        async def waiter(i: int, *, task_status: anyio.abc.TaskStatus[None]) -> None:
            task_status.started()
            async with pool.acquire() as conn:
                got.append((i, conn))
                await anyio.sleep(0.01)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg, pool.acquire() as held:
                for i in range(3):
                    await tg.start(waiter, i)
                assert pool.get_idle_size() == 0
        assert [i for i, _ in got] == [0, 1, 2]
        assert all(conn is held for _, conn in got)
        assert (pool.get_size(), pool.get_idle_size()) == (1, 1)


@pytest.mark.parametrize("how", ["cancelled", "timeout"])
async def test_an_interrupted_statements_connection_is_not_reused(
    dsn: str, db: asyncpg.Connection, how: str
) -> None:
    """Its statement is cancelled on the server (a CancelRequest, not a dangling
    backend sleeping on for 30 s), then the connection is terminated."""
    async with opened(dsn) as pool:
        before = await pool.fetchval(PID)
        if how == "cancelled":
            with anyio.move_on_after(0.3) as scope:
                await pool.fetch("SELECT pg_sleep(30)")
            assert scope.cancelled_caught
        else:
            with pytest.raises(TimeoutError):
                await pool.fetch("SELECT pg_sleep(30)", timeout=0.3)
        after = await pool.fetchval(PID)
        assert after != before
        await backends_gone(db, before)
        await eventually(lambda: pool.get_size() == 1, timeout=5, what="the slot to free")
        assert await pool.fetchval(PID) == after


async def test_a_connection_interrupted_in_an_acquire_block_is_not_reused(dsn: str) -> None:
    async with opened(dsn) as pool:
        with anyio.move_on_after(0.2):
            async with pool.acquire() as first:
                await first.execute("SELECT pg_sleep(30)")
        async with pool.acquire() as second:
            assert second is not first
        # Terminated once its cancel request went through.
        await eventually(first.is_closed, timeout=5, what="the connection to be terminated")


async def test_a_connection_the_server_ended_while_idle_is_dropped(
    dsn: str, db: asyncpg.Connection
) -> None:
    async with opened(dsn) as pool:
        async with pool.acquire() as conn:
            pid = await conn.fetchval(PID)
        assert await db.fetchval("SELECT pg_terminate_backend($1)", pid)
        # Once the client saw the socket close (the backend leaves pg_stat_activity
        # slightly before; a statement sent in between fails, as with asyncpg's pool).
        await eventually(conn.is_closed, timeout=5, what="the client to see the close")
        assert (pool.get_size(), pool.get_idle_size()) == (1, 1)  # not looked at yet
        # The next call works, on a new connection; the dead one left the count.
        async with pool.acquire() as other:
            assert other is not conn
            assert await other.fetchval(PID) != pid
        assert pool.get_size() == 1


async def test_a_connection_the_server_ended_mid_statement_is_dropped(
    dsn: str, db: asyncpg.Connection
) -> None:
    """The server ends the session (asyncpg reports the lost connection, or the FATAL
    57P01 it got first): the connection is dropped, its slot freed."""
    async with opened(dsn) as pool:
        pid = await pool.fetchval(PID)

        async def kill() -> None:
            await eventually(
                lambda: db.fetchval(
                    "SELECT state = 'active' FROM pg_stat_activity WHERE pid = $1", pid
                ),
                what="the statement to start",
            )
            await db.execute("SELECT pg_terminate_backend($1)", pid)

        async with anyio.create_task_group() as tg:
            tg.start_soon(kill)
            with pytest.raises((asyncpg.AdminShutdownError, asyncpg.ConnectionDoesNotExistError)):
                await pool.fetch("SELECT pg_sleep(30)")
        assert (pool.get_size(), pool.get_idle_size()) == (0, 0)
        assert await pool.fetchval(PID) != pid


@pytest.mark.parametrize("failed", [False, True])
async def test_a_connection_given_back_inside_a_transaction_is_terminated(
    dsn: str, db: asyncpg.Connection, failed: bool
) -> None:
    """Open (or aborted by an error the server reported) transactions are never handed
    to the next caller."""
    async with opened(dsn) as pool:
        with contextlib.suppress(asyncpg.DivisionByZeroError):
            async with pool.acquire() as conn:
                await conn.execute("BEGIN")
                await conn.execute("CREATE TABLE leaked (x int)")
                pid = await conn.fetchval(PID)
                if failed:
                    await conn.execute("SELECT 1/0")
        assert conn.is_closed()
        assert pool.get_size() == 0
        await backends_gone(db, pid)
        async with pool.acquire() as other:
            assert other is not conn
            assert not other.is_in_transaction()
            assert await other.fetchval("SELECT to_regclass('leaked')") is None


async def test_a_postgres_error_keeps_the_connection(dsn: str) -> None:
    async with opened(dsn) as pool:
        pid = await pool.fetchval(PID)
        with pytest.raises(asyncpg.DivisionByZeroError):
            await pool.fetchval("SELECT 1/0")
        assert await pool.fetchval(PID) == pid
        with pytest.raises(asyncpg.UndefinedTableError):
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT * FROM no_such_table")
        async with pool.acquire() as again:
            assert again is conn
        assert pool.get_size() == 1


async def test_an_application_error_in_a_block_keeps_the_connection_unless_it_was_caused_by_an_interruption(  # noqa: E501
    dsn: str,
) -> None:
    async with opened(dsn) as pool:
        with pytest.raises(errors.LeaseLost):
            async with pool.acquire() as conn:
                await conn.execute("SELECT 1")
                raise errors.LeaseLost("lost")
        async with pool.acquire() as again:
            assert again is conn
        # A ConnectionLost translated from a statement's timeout: state unknown.
        with pytest.raises(errors.ConnectionLost):
            async with pool.acquire() as conn:
                with _translate("slow"):
                    await conn.execute("SELECT pg_sleep(30)", timeout=0.2)
        async with pool.acquire() as again:
            assert again is not conn


async def test_a_waiter_cancelled_while_waiting_takes_nothing(dsn: str) -> None:
    async with opened(dsn, max_size=1) as pool:
        async with pool.acquire() as held:
            with anyio.move_on_after(0.1) as scope:
                await pool.fetchval(PID)
            assert scope.cancelled_caught
        assert (pool.get_size(), pool.get_idle_size()) == (1, 1)
        with anyio.fail_after(5):
            async with pool.acquire() as again:
                assert again is held


@pytest.mark.parametrize("cancel", ["after_hand_over", "before_hand_over"])
async def test_a_waiter_cancelled_around_the_hand_over_passes_the_connection_on(
    dsn: str, cancel: str
) -> None:
    """The races of a native cancel: the connection is set on the first waiter's future
    and the waiter is cancelled before it runs again (it must pass the connection on);
    or the waiter is cancelled and the connection given back before it runs again (the
    hand-over must skip it). Either way the next waiter gets the connection."""
    async with opened(dsn, max_size=1) as pool:
        got: list[object] = []

        async def wait() -> None:
            async with pool.acquire() as conn:
                got.append(conn)

        first: asyncio.Task[None] | None = None
        async with pool.acquire() as held:
            first = asyncio.create_task(wait())
            second = asyncio.create_task(wait())
            await asyncio.sleep(0.05)  # both queued, first in front
            assert not first.done() and not second.done()
            if cancel == "before_hand_over":
                first.cancel()
        if cancel == "after_hand_over":
            first.cancel()
        with anyio.fail_after(5):
            with pytest.raises(asyncio.CancelledError):
                await first
            await second
        assert got == [held]
        assert (pool.get_size(), pool.get_idle_size()) == (1, 1)


async def test_a_slot_freed_while_callers_wait_goes_to_the_oldest_one(dsn: str) -> None:
    """A discarded connection's slot is handed on: the waiter opens a new connection."""
    async with opened(dsn, max_size=1) as pool:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                pids: list[int] = []

                async def call() -> None:
                    pids.append(await pool.fetchval(PID))

                with anyio.move_on_after(0.3):
                    async with pool.acquire() as held:
                        tg.start_soon(call)
                        await held.execute("SELECT pg_sleep(30)")
        assert held.is_closed()
        assert len(pids) == 1
        assert pool.get_size() == 1


async def test_a_failed_open_raises_to_its_caller_and_frees_the_slot(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with opened(dsn, min_size=0, max_size=1) as pool:
        connect = pool._connect

        async def refused() -> asyncpg.Connection:
            raise ConnectionRefusedError("no")

        monkeypatch.setattr(pool, "_connect", refused)
        with pytest.raises(ConnectionRefusedError):
            await pool.fetchval(PID)
        assert pool.get_size() == 0
        monkeypatch.setattr(pool, "_connect", connect)
        assert await pool.fetchval("SELECT 1") == 1


async def test_open_raises_the_drivers_error_as_it_is(dsn: str) -> None:
    """``Store.connect`` sorts these (authentication, unknown database, unreachable)."""
    with pytest.raises(asyncpg.InvalidCatalogNameError):
        await Pool.open(with_database(dsn, "no_such_database_here"), min_size=1)
    with pytest.raises(OSError):
        await Pool.open("postgresql://postgres@127.0.0.1:1/x", min_size=2, timeout=2)


async def test_close_waits_for_a_connection_in_use_and_refuses_new_work(
    dsn: str, db: asyncpg.Connection
) -> None:
    async with opened(dsn, min_size=2, max_size=2) as pool:
        released = anyio.Event()
        closed = anyio.Event()
        waiter_error: list[BaseException] = []

        async def wait() -> None:
            try:
                await pool.fetchval(PID)
            except asyncpg.InterfaceError as exc:
                waiter_error.append(exc)

        async def close() -> None:
            await pool.close()
            assert released.is_set()
            closed.set()

        async with anyio.create_task_group() as tg:
            async with pool.acquire() as conn:
                held_pid = await conn.fetchval(PID)
                async with pool.acquire() as other:
                    other_pid = await other.fetchval(PID)
                    tg.start_soon(wait)
                    await anyio.sleep(0.05)  # queued: both connections are in use
                    tg.start_soon(close)
                    await eventually(lambda: waiter_error, what="the waiter's error")
                    assert "pool is closing" in str(waiter_error[0])
                    with pytest.raises(asyncpg.InterfaceError, match="closing"):
                        await pool.fetchval("SELECT 1")
                    with pytest.raises(errors.ConnectionLost), _translate("closing"):
                        await pool.fetchval("SELECT 1")
                # Given back while closing: closed at once, while the other stays usable.
                await backends_gone(db, other_pid)
                assert await conn.fetchval("SELECT 1") == 1
                await anyio.sleep(0.1)
                assert not closed.is_set()
                released.set()
            with anyio.fail_after(5):
                await closed.wait()
        await backends_gone(db, held_pid)
        assert pool.get_size() == 0
        with pytest.raises(asyncpg.InterfaceError, match="closed"):
            await pool.fetchval("SELECT 1")
        await pool.close()  # idempotent
        pool.terminate()


async def test_close_terminates_a_connection_kept_too_long(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool_module, "CLOSE_WAIT_S", 0.3)
    async with opened(dsn) as pool:
        async with pool.acquire() as conn:
            with anyio.fail_after(5):
                await pool.close()
            assert conn.is_closed()
        assert pool.get_size() == 0


async def test_terminate_ends_everything_at_once(dsn: str, db: asyncpg.Connection) -> None:
    async with opened(dsn, min_size=2, max_size=2) as pool:
        async with pool.acquire() as conn:
            pid = await conn.fetchval(PID)
            pool.terminate()
            assert conn.is_closed()
        assert pool.get_size() == 0
        await backends_gone(db, pid)
        await pool.close()  # after terminate: nothing to do


async def test_idle_connections_expire(dsn: str, db: asyncpg.Connection) -> None:
    async with opened(dsn, min_size=2, max_size=2, max_inactive_lifetime=0.2) as pool:
        async with pool.acquire() as a, pool.acquire() as b:
            old = {await a.fetchval(PID), await b.fetchval(PID)}
        await anyio.sleep(0.3)
        new = await pool.fetchval(PID)
        assert new not in old
        assert (pool.get_size(), pool.get_idle_size()) == (1, 1)
        await backends_gone(db, *old)
        # Within the lifetime, it stays.
        assert await pool.fetchval(PID) == new
