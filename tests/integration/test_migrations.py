"""Schema migrations and connecting: idempotence, concurrency, version and DSN errors."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import anyio
import asyncpg
import pytest

from tests.integration.core_support import with_database
from tidebase_async import ConfigurationError, DatabaseUnreachable, SchemaVersionError, Tidebase
from tidebase_async.store import Store
from tidebase_async.store.sql import migrations

LATEST = migrations()[-1][0]


@pytest.fixture
async def empty_dsn(server_dsn: str) -> AsyncIterator[str]:
    """A brand-new database without the tidebase schema."""
    name = f"t_empty_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield with_database(server_dsn, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _schema_snapshot(db: asyncpg.Connection) -> list[tuple[object, ...]]:
    rows = await db.fetch(
        "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'tidebase' ORDER BY 1"
    )
    migrations_rows = await db.fetch(
        "SELECT version, name, applied_at FROM tidebase.schema_migrations ORDER BY version"
    )
    return [tuple(r) for r in rows] + [tuple(r) for r in migrations_rows]


async def test_migrate_is_idempotent(tide: Tidebase, db: asyncpg.Connection) -> None:
    before = await _schema_snapshot(db)
    assert await tide.migrate() == LATEST
    assert await tide.migrate() == LATEST
    assert await _schema_snapshot(db) == before
    versions = await db.fetch("SELECT version FROM tidebase.schema_migrations ORDER BY version")
    assert [r["version"] for r in versions] == list(range(1, LATEST + 1))


async def test_concurrent_migrations_of_an_empty_database_apply_each_version_once(
    empty_dsn: str,
) -> None:
    results: list[int] = []

    async def connect_and_migrate() -> None:
        store = await Store.connect(empty_dsn, min_size=1, max_size=2)
        try:
            results.append(await store.migrate())
        finally:
            await store.close()

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(connect_and_migrate)

    assert results == [LATEST] * 8
    conn = await asyncpg.connect(empty_dsn)
    try:
        rows = await conn.fetch(
            "SELECT version, count(*) AS n FROM tidebase.schema_migrations"
            " GROUP BY version ORDER BY version"
        )
        assert [(r["version"], r["n"]) for r in rows] == [(v, 1) for v in range(1, LATEST + 1)]
        assert await conn.fetchval("SELECT to_regclass('tidebase.runs')") is not None
    finally:
        await conn.close()


async def test_a_tidebase_opened_on_an_empty_database_migrates_it(empty_dsn: str) -> None:
    async with Tidebase(empty_dsn) as tide:
        handle = await tide.enqueue("anything")
        assert (await tide.runs.get(handle.id)).status == "queued"


async def test_a_database_migrated_by_a_newer_release_is_refused_untouched(
    dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute(
        "INSERT INTO tidebase.schema_migrations (version, name) VALUES (999, 'from_the_future')"
    )
    await db.execute(
        "INSERT INTO tidebase.runs (id, workflow, queue, status, max_attempts, run_at,"
        " created_at, updated_at) VALUES ($1, 'w', 'default', 'queued', 1, now(), now(), now())",
        uuid.uuid4(),
    )
    before = await _schema_snapshot(db)
    runs_before = await db.fetch("SELECT * FROM tidebase.runs")

    with pytest.raises(SchemaVersionError, match="999"):
        async with Tidebase(dsn):
            pass
    store = await Store.connect(dsn, max_size=2)
    try:
        with pytest.raises(SchemaVersionError, match="newer"):
            await store.migrate()
    finally:
        await store.close()

    assert await _schema_snapshot(db) == before
    assert await db.fetch("SELECT * FROM tidebase.runs") == runs_before


async def test_an_unreachable_server_raises_database_unreachable_quickly() -> None:
    t0 = time.monotonic()
    with pytest.raises(DatabaseUnreachable) as raised:
        async with Tidebase("postgresql://postgres@127.0.0.1:1/x", connect_timeout=0.5):
            pass
    assert time.monotonic() - t0 < 5
    message = str(raised.value)
    assert "127.0.0.1" in message
    assert "port 1" in message
    assert "database x" in message
    assert raised.value.__cause__ is not None


async def test_a_missing_database_raises_configuration_error_naming_it(server_dsn: str) -> None:
    name = f"tidebase_missing_{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    with pytest.raises(ConfigurationError, match=name):
        async with Tidebase(with_database(server_dsn, name), connect_timeout=5):
            pass
    assert time.monotonic() - t0 < 4  # not retried like an unreachable server
