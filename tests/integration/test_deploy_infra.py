"""The deployment test helpers (tests/deploy_support.py) work, and what they show.

PgBouncer in transaction mode: a connection without asyncpg's statement cache works;
a ``jit`` startup parameter is refused; a cached prepared statement does not survive to
the next transaction; session state (settings, advisory locks, LISTEN) belongs to
whichever server connection a transaction ran on, not to the client.
ReplicaPair: a commit acknowledged by the primary survives its crash on the promoted
standby, and a multi-host DSN with ``target_session_attrs=read-write`` follows the
promotion. PgBouncer pointed at the promoted standby serves a query that waited
through the failover.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.deploy_support import (
    UNSUPPORTED_STARTUP_PARAMETER,
    PgBouncer,
    ReplicaPair,
    database_of,
    pgbouncer,
    pooled_dsn,
    replica_pair,
    running_pgbouncer,
    upstream_of,
)

__all__ = ["pgbouncer", "pooled_dsn", "replica_pair"]  # fixtures, used by name


@contextlib.asynccontextmanager
async def private_pgbouncer(server_dsn: str, *, pool_size: int) -> AsyncIterator[PgBouncer]:
    """A PgBouncer of this test's own with ``pool_size`` server connections per
    database: with 1 or 2, which backend a transaction gets is deterministic."""
    up = upstream_of(server_dsn)
    async with running_pgbouncer(
        upstream_host=up.host,
        upstream_port=up.port,
        users={up.user: up.password},
        default_pool_size=pool_size,
    ) as bouncer:
        yield bouncer


async def connect(dsn: str, **kwargs: object) -> asyncpg.Connection:
    kwargs.setdefault("statement_cache_size", 0)
    return await asyncpg.connect(dsn, **kwargs)


# -- PgBouncer, transaction mode ---------------------------------------------------------


async def test_uncached_connection_runs_queries_in_a_fresh_database_through_pgbouncer(
    pgbouncer: PgBouncer, pooled_dsn: str, dsn: str
) -> None:
    assert pgbouncer.pool_mode == "transaction"
    assert "pool_mode = transaction" in pgbouncer.ini_path.read_text()
    conn = await connect(pooled_dsn)
    other = await connect(pooled_dsn)
    try:
        assert await conn.fetchval("SELECT current_database()") == database_of(dsn)
        assert await conn.fetchval("SELECT count(*) FROM tidebase.schema_migrations") >= 1
        assert await conn.fetchval("SELECT $1::int + $2::int", 40, 2) == 42
        await conn.execute("CREATE TABLE deploy_probe (id int PRIMARY KEY, note text)")
        await conn.executemany(
            "INSERT INTO deploy_probe VALUES ($1, $2)", [(i, f"n{i}") for i in range(20)]
        )
        async with conn.transaction():
            await conn.execute("UPDATE deploy_probe SET note = 'x' WHERE id < 10")
        assert await conn.fetchval("SELECT count(*) FROM deploy_probe WHERE note = 'x'") == 10

        # Transaction pooling: with the backend of our last transaction taken by another
        # client, our next transaction runs on another backend, and still works.
        mine = await conn.fetchval("SELECT pg_backend_pid()")
        async with other.transaction():
            assert await other.fetchval("SELECT pg_backend_pid()") == mine
            assert await conn.fetchval("SELECT pg_backend_pid()") != mine
            assert await conn.fetchval("SELECT count(*) FROM deploy_probe") == 20
        # The pid asyncpg got at login is PgBouncer's, not a server's.
        assert conn.get_server_pid() != mine
    finally:
        await other.close()
        await conn.close()

    # Many clients at once, each query in its own transaction.
    pool = await asyncpg.create_pool(pooled_dsn, min_size=4, max_size=8, statement_cache_size=0)
    try:
        results = await asyncio.gather(
            *(pool.fetchval("SELECT $1::int * 2", i) for i in range(200))
        )
    finally:
        await pool.close()
    assert results == [i * 2 for i in range(200)]


async def test_a_jit_startup_parameter_is_refused_by_pgbouncer(pgbouncer: PgBouncer) -> None:
    with pytest.raises(asyncpg.exceptions.ProtocolViolationError) as refused:
        await connect(pgbouncer.dsn(), server_settings={"application_name": "t", "jit": "off"})
    assert str(refused.value) == f"{UNSUPPORTED_STARTUP_PARAMETER}: jit"
    assert refused.value.sqlstate == "08P01"
    assert "unsupported startup parameter: jit" in pgbouncer.log_text()

    for name, value in (("search_path", "public"), ("options", "-c jit=off")):
        with pytest.raises(asyncpg.exceptions.ProtocolViolationError, match=f": {name}$"):
            await connect(pgbouncer.dsn(), server_settings={name: value})

    # application_name is one of the parameters PgBouncer tracks per client.
    conn = await connect(pgbouncer.dsn(), server_settings={"application_name": "tidebase"})
    try:
        assert await conn.fetchval("SHOW application_name") == "tidebase"
    finally:
        await conn.close()


async def test_a_cached_prepared_statement_fails_in_the_next_transaction(
    server_dsn: str, dsn: str
) -> None:
    query = "SELECT $1::int * 2, pg_backend_pid()"
    async with private_pgbouncer(server_dsn, pool_size=2) as bouncer:
        db = database_of(dsn)
        cached = await asyncpg.connect(bouncer.dsn(db))  # asyncpg's default statement cache
        uncached = await connect(bouncer.dsn(db))
        holder = await connect(bouncer.dsn(db))
        try:
            doubled, backend = await cached.fetchrow(query, 21)
            assert doubled == 42
            # The only idle server connection is the one the statement was prepared on;
            # the holder takes it, so the next query goes to the second one.
            async with holder.transaction():
                assert await holder.fetchval("SELECT pg_backend_pid()") == backend
                with pytest.raises(asyncpg.exceptions.InvalidSQLStatementNameError) as missing:
                    await cached.fetchrow(query, 21)
                # The same query without the cache (unnamed statements) is fine there.
                again, elsewhere = await uncached.fetchrow(query, 21)
                assert (again, elsewhere != backend) == (42, True)
        finally:
            for conn in (holder, uncached, cached):
                await conn.close()
    assert missing.value.sqlstate == "26000"
    first_line = str(missing.value).splitlines()[0]
    assert re.fullmatch(
        r'prepared statement "__asyncpg_stmt_[0-9a-f]+__" does not exist', first_line
    )
    assert 'pgbouncer with pool_mode set to "transaction"' in (missing.value.hint or "")

    # The other way round: a statement name left on a pooled backend by one client clashes
    # with the same name prepared by the next (asyncpg numbers its statements per process,
    # so two processes behind one PgBouncer collide this way).
    async with private_pgbouncer(server_dsn, pool_size=1) as bouncer:
        first = await asyncpg.connect(bouncer.dsn(db))
        # Executed once: asyncpg's Parse ends with a Flush, not a Sync, so until then
        # the server connection stays linked to this client (and is closed with it).
        assert await (await first.prepare("SELECT 1", name="tidebase_probe")).fetchval() == 1
        await first.close()
        second = await asyncpg.connect(bouncer.dsn(db))
        try:
            with pytest.raises(asyncpg.exceptions.DuplicatePreparedStatementError) as clash:
                await second.prepare("SELECT 2", name="tidebase_probe")
        finally:
            await second.close()
    assert clash.value.sqlstate == "42P05"
    assert str(clash.value).splitlines()[0] == 'prepared statement "tidebase_probe" already exists'


async def test_session_state_belongs_to_the_server_connection_not_the_client(
    server_dsn: str, dsn: str
) -> None:
    direct = await asyncpg.connect(dsn)
    async with private_pgbouncer(server_dsn, pool_size=1) as bouncer:
        pooled = bouncer.dsn(database_of(dsn))
        a = await connect(pooled)
        assert await a.fetchval("SELECT pg_try_advisory_lock(4242)") is True
        await a.execute("SELECT set_config('idle_session_timeout', '1h', false)")
        await a.close()
        # Client A is gone; its lock and its setting live on in the server connection,
        # which client B now gets: B "takes" the same lock (re-entrant in one session).
        b = await connect(pooled)
        try:
            assert await b.fetchval("SHOW idle_session_timeout") == "1h"
            assert await b.fetchval("SELECT pg_try_advisory_lock(4242)") is True
            holders = await direct.fetchval(
                "SELECT count(DISTINCT pid) FROM pg_locks WHERE locktype = 'advisory' "
                "AND objid = 4242 AND database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            assert holders == 1
        finally:
            await b.execute("SELECT pg_advisory_unlock_all(); RESET ALL")
            await b.close()

        # LISTEN registers on the server connection of one transaction; a notification
        # reaching it while no client is linked makes PgBouncer drop that connection.
        got: list[str] = []
        listener = await connect(pooled)
        try:
            await listener.add_listener("tidebase_probe", lambda *args: got.append(args[3]))
            await direct.execute("NOTIFY tidebase_probe, 'hello'")
            await asyncio.sleep(0.5)
            assert await listener.fetchval("SELECT 1") == 1
            await asyncio.sleep(0.2)
            assert got == []
        finally:
            await listener.close()
        assert "got packet 'A' from server when not linked" in bouncer.log_text()
    await direct.close()


async def test_pgbouncer_is_stopped_when_the_body_fails(server_dsn: str) -> None:
    up = upstream_of(server_dsn)
    with pytest.raises(RuntimeError, match="boom"):
        async with running_pgbouncer(
            upstream_host=up.host, upstream_port=up.port, users={up.user: up.password}
        ) as bouncer:
            directory = bouncer.dir
            assert bouncer.running()
            conn = await connect(bouncer.dsn())
            assert await conn.fetchval("SELECT 1") == 1
            await conn.close()
            raise RuntimeError("boom")
    assert not bouncer.running()
    assert "login attempt: db=postgres" in bouncer.log_text()  # kept after stop()
    assert directory is not None
    assert not directory.exists()
    with pytest.raises(OSError):
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", bouncer.port), 2)
    bouncer.stop()  # idempotent


# -- ReplicaPair -----------------------------------------------------------------------------


async def test_a_row_committed_on_the_primary_is_on_the_promoted_standby(
    replica_pair: ReplicaPair,
) -> None:
    pair = replica_pair
    assert pair.replication_state() == "streaming,sync"
    primary = await asyncpg.connect(pair.primary_dsn())
    try:
        await primary.execute("CREATE TABLE acked (id int PRIMARY KEY, note text)")
        await primary.execute("INSERT INTO acked VALUES (1, 'acknowledged')")
    finally:
        await primary.close()

    await pair.crash_primary_async()
    await pair.promote_standby_async()

    promoted = await asyncpg.connect(pair.standby_dsn())
    try:
        assert await promoted.fetchval("SELECT pg_is_in_recovery()") is False
        assert await promoted.fetchval("SELECT note FROM acked WHERE id = 1") == "acknowledged"
        await promoted.execute("INSERT INTO acked VALUES (2, 'after failover')")
    finally:
        await promoted.close()


async def test_a_multi_host_dsn_lands_on_the_new_primary_after_promotion(
    replica_pair: ReplicaPair,
) -> None:
    pair = replica_pair
    dsn = pair.multi_host_dsn()
    assert dsn == (
        f"postgresql://postgres@127.0.0.1:{pair.primary_port},127.0.0.1:{pair.standby_port}"
        "/postgres?target_session_attrs=read-write"
    )
    before = await asyncpg.connect(dsn)
    try:
        assert int(await before.fetchval("SHOW port")) == pair.primary_port
        await before.execute("CREATE TABLE marks (n int)")
    finally:
        await before.close()

    await pair.crash_primary_async()
    # Primary down, standby still read-only: no host qualifies. asyncpg raises the last
    # connection error it met (the dead primary's refusal), not "no host matches".
    with pytest.raises((OSError, asyncpg.exceptions.TargetServerAttributeNotMatched)):
        await asyncpg.connect(dsn, timeout=5)

    await pair.promote_standby_async()
    after = await asyncpg.connect(dsn)
    try:
        assert int(await after.fetchval("SHOW port")) == pair.standby_port
        assert await after.fetchval("SELECT pg_is_in_recovery()") is False
        await after.execute("INSERT INTO marks VALUES (1)")
    finally:
        await after.close()


async def test_pgbouncer_retargeted_to_the_promoted_standby_serves_a_waiting_query(
    replica_pair: ReplicaPair,
) -> None:
    pair = replica_pair
    async with running_pgbouncer(upstream_host="127.0.0.1", upstream_port=pair.primary_port) as pb:
        conn = await connect(pb.dsn())
        try:
            await conn.execute("CREATE TABLE t (x int)")
            await pair.crash_primary_async()
            # The query waits in PgBouncer for a server (query_wait_timeout is 10 s)...
            waiting = asyncio.ensure_future(
                conn.fetchval("INSERT INTO t VALUES (5) RETURNING current_setting('port')")
            )
            await asyncio.sleep(0.5)
            assert not waiting.done()
            # ...and runs on the new primary once PgBouncer points there.
            await pair.promote_standby_async()
            pb.retarget(upstream_port=pair.standby_port)
            assert int(await asyncio.wait_for(waiting, 8)) == pair.standby_port
            assert await conn.fetchval("SELECT count(*) FROM t") == 1
        finally:
            await conn.close()
