"""Test databases: one server per test session, one migrated template database per
session, and a fresh copy of it per test.

Copying a template (``CREATE DATABASE ... TEMPLATE``) takes tens of milliseconds, a
fraction of migrating, and each test gets a database nobody else writes to: tests
stay independent whatever order they run in.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tidebase_async.store import Store

#: The variable that names the server tests use (a DSN of a database the user may
#: create databases from, e.g. its ``postgres`` database).
DSN_VARIABLE = "TIDEBASE_TEST_DSN"

T = TypeVar("T")


def with_database(dsn: str, database: str) -> str:
    """``dsn`` with its database replaced by ``database``."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


def run_in_thread(fn: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion on a private event loop in another thread: session
    set-up and tear-down run outside the tests' loop (whichever plugin owns it) and
    must neither use nor replace it."""

    def target() -> T:
        async def main() -> T:
            return await fn()

        return asyncio.run(main())

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tidebase-test") as pool:
        return pool.submit(target).result()


async def answers(dsn: str) -> bool:
    """True when a server accepts a connection at ``dsn`` within 2 seconds."""
    try:
        conn = await asyncpg.connect(dsn, timeout=2)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


@contextmanager
def session_server(*, fallback_dsn: str | None = None) -> Iterator[str]:
    """The DSN of the server for this session: ``TIDEBASE_TEST_DSN`` when set, else
    ``fallback_dsn`` when a server answers there, else an embedded Postgres started now
    in a temporary directory and stopped on exit."""
    explicit = os.environ.get(DSN_VARIABLE)
    if explicit:
        yield explicit
        return
    if fallback_dsn is not None and run_in_thread(lambda: answers(fallback_dsn)):
        yield fallback_dsn
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


async def create_template(
    server_dsn: str, *, prefix: str = "tidebase_tpl", virtual_clock: bool = False
) -> str:
    """Create and migrate a template database; returns its name. With
    ``virtual_clock`` its ``tidebase.now()`` reads the testing kit's virtual clock."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    store = await Store.connect(with_database(server_dsn, name), max_size=2)
    try:
        await store.migrate()
        if virtual_clock:
            await store.install_virtual_clock()
    finally:
        await store.close()
    return name


async def create_copy(server_dsn: str, template: str, *, prefix: str = "t") -> str:
    """A fresh database copied from ``template``; returns its DSN."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_dsn)
    try:
        # FILE_COPY (Postgres 15+) copies the files and checkpoints once: for a small
        # database far faster than the default WAL_LOG.
        strategy = " STRATEGY FILE_COPY" if admin.get_server_version().major >= 15 else ""
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"{strategy}')
    finally:
        await admin.close()
    return with_database(server_dsn, name)


async def drop_database(server_dsn: str, database: str) -> None:
    """Drop ``database``, ending the sessions still connected to it."""
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await admin.close()


def database_of(dsn: str) -> str:
    """The database a DSN names."""
    return urlsplit(dsn).path.lstrip("/")
