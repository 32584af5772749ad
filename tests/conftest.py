"""Test fixtures: a real Postgres, one fresh database per test from a migrated template.

Server choice: ``TIDEBASE_TEST_DSN`` when set, else the Postgres on 127.0.0.1:5432 when
it answers, else an embedded Postgres started for this test session.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from tidebase_async import Tidebase
from tidebase_async.testing.databases import (
    create_copy,
    create_template,
    database_of,
    drop_database,
    session_server,
)

# The testing kit's fixtures (tide_env), for the examples' tests in tests/examples_kit,
# loaded the way the README tells users to.
pytest_plugins = ["tidebase_async.testing"]

LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """DSN of the server's maintenance database (``postgres``)."""
    with session_server(fallback_dsn=LOCAL_DSN) as dsn:
        yield dsn


@pytest.fixture(scope="session")
async def template_db(server_dsn: str) -> AsyncIterator[str]:
    """A database migrated once; every test copies it."""
    name = await create_template(server_dsn)
    try:
        yield name
    finally:
        await drop_database(server_dsn, name)


@pytest.fixture
async def dsn(server_dsn: str, template_db: str) -> AsyncIterator[str]:
    """A fresh, migrated database for this test only."""
    test_dsn = await create_copy(server_dsn, template_db)
    try:
        yield test_dsn
    finally:
        await drop_database(server_dsn, database_of(test_dsn))


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
