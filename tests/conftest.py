"""Test fixtures: a real Postgres, one fresh database per test from a migrated template.

Server choice: ``TIDEBASE_TEST_DSN`` when set, else the Postgres on 127.0.0.1:5432 when
it answers, else an embedded Postgres started for this test session.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from tidebase_async import Tidebase
from tidebase_async.store import Store

LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


async def _answers(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=2)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """DSN of the server's maintenance database (``postgres``)."""
    explicit = os.environ.get("TIDEBASE_TEST_DSN")
    if explicit:
        yield explicit
        return
    if asyncio.run(_answers(LOCAL_DSN)):
        yield LOCAL_DSN
        return
    from tidebase_async.embedded import EmbeddedPostgres

    with tempfile.TemporaryDirectory(prefix="tidebase-test-") as tmp:
        # Running as root, the server runs as another user, who must enter this 0700
        # directory; the launcher changes nothing above its own data directory.
        os.chmod(tmp, 0o711)
        server = EmbeddedPostgres(os.path.join(tmp, "pg"))
        server.start()
        try:
            yield server.dsn
        finally:
            server.stop()


@pytest.fixture(scope="session")
async def template_db(server_dsn: str) -> AsyncIterator[str]:
    """A database migrated once; every test copies it."""
    name = f"tidebase_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        store = await Store.connect(_with_database(server_dsn, name))
        try:
            await store.migrate()
        finally:
            await store.close()
        yield name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def dsn(server_dsn: str, template_db: str) -> AsyncIterator[str]:
    """A fresh, migrated database for this test only."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}" STRATEGY FILE_COPY')
        yield _with_database(server_dsn, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def tide(dsn: str) -> AsyncIterator[Tidebase]:
    """An open Tidebase on the test's database (register workflows, then use it).

    The plain pattern users write: pytest-asyncio may run this setup and teardown in
    different tasks, which the client supports."""
    tide = Tidebase(dsn)
    await tide.open()
    try:
        yield tide
    finally:
        await tide.close()


@pytest.fixture
async def db(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to the test's database, for assertions in SQL."""
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()
