"""Connections: DSN description, the binary jsonb codec, pool setup and session hygiene."""

from __future__ import annotations

from typing import Any

import anyio
import asyncpg


def _jsonb_encode(value: bytes) -> bytes:
    return b"\x01" + value


def _jsonb_decode(value: bytes) -> bytes:
    return value[1:]


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=_jsonb_encode,
        decoder=_jsonb_decode,
        format="binary",
    )


async def _lock_or_close(conn: asyncpg.Connection, sql: str, key: int) -> Any:
    """Take an advisory lock. If we are interrupted before knowing the answer, the
    server may have granted it: close the connection rather than return a pooled
    session that silently holds the lock (the pool does not reset sessions)."""
    try:
        return await conn.fetchval(sql, key)
    except BaseException:
        if not _is_closed(conn):
            conn.terminate()
        raise


async def _clean_session(conn: asyncpg.Connection) -> None:
    """Drop advisory locks and session settings before a connection goes back to the
    pool; a connection that cannot be cleaned is closed instead of reused."""
    with anyio.CancelScope(shield=True):
        try:
            await conn.execute("SELECT pg_advisory_unlock_all(); RESET ALL")
        except BaseException as exc:
            # Includes a native task.cancel(), which anyio's shield does not stop.
            if not _is_closed(conn):
                conn.terminate()
            if not isinstance(exc, Exception):
                raise


def _is_closed(conn: asyncpg.Connection) -> bool:
    """Whether a pooled connection is gone (terminated, server restart). The pool hands
    out raw connections, whose ``is_closed()`` always answers (asyncpg's pool proxy,
    detached from a closed connection, raised InterfaceError instead)."""
    return bool(conn.is_closed())


def connect_kwargs(*, pooled: bool = False) -> dict[str, Any]:
    """Connection options for ``pool.Pool.open`` (``init`` runs on each new connection,
    the rest goes to ``asyncpg.connect``). Through a transaction-mode pooler
    (``pooled``): no startup parameter but ``application_name`` (PgBouncer refuses those
    it does not track, such as ``jit``) and no statement cache (a named prepared
    statement lives on one server connection, and the next transaction may run on
    another; unnamed ones are parsed again each time, which the pooler keeps within one
    server connection).

    No session reset between uses (the pool runs none): asyncpg's pool ran RESET ALL,
    UNLISTEN and friends after every pooled statement by default, doubling round trips;
    our pooled sessions never keep state (the advisory lock's session cleans up through
    ``_clean_session``, and the pool terminates a connection given back inside a
    transaction). Through a transaction-mode pooler a reset would run on whichever
    server connection the pooler picked, not ours."""
    if pooled:
        return {
            "init": _init_connection,
            "statement_cache_size": 0,
            "server_settings": {"application_name": "tidebase"},
        }
    return {
        "init": _init_connection,
        # Plans of the CTE statements are tiny, but their estimated costs can pass
        # jit_above_cost on big tables: JIT compilation would only add latency.
        "server_settings": {"application_name": "tidebase", "jit": "off"},
    }


async def detect_pooler(dsn: str, *, timeout: float = 10.0) -> bool:
    """Whether ``dsn`` reaches Postgres through a connection pooler.

    A pooler (PgBouncer, Supavisor) answers the login itself, with a process id of its
    own making in the cancellation key; Postgres gives its backend's. So the pid asyncpg
    got at login differs from ``pg_backend_pid()`` exactly when something stands
    between us and the server. Sends no startup parameter a pooler refuses.

    Raises:
        asyncpg and OS errors of connecting, as they are (``Store.connect`` sorts them).
    """
    conn = await asyncpg.connect(
        dsn,
        timeout=timeout,
        statement_cache_size=0,
        server_settings={"application_name": "tidebase"},
    )
    try:
        backend = await conn.fetchval("SELECT pg_backend_pid()")
        return int(conn.get_server_pid()) != int(backend)
    finally:
        await conn.close()


async def open_connection(dsn: str, *, timeout: float = 10.0) -> asyncpg.Connection:
    """One dedicated connection (the LISTEN connection), with the library's codecs."""
    conn = await asyncpg.connect(
        dsn, timeout=timeout, server_settings={"application_name": "tidebase-listener"}
    )
    await _init_connection(conn)
    return conn
