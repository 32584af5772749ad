"""A testing kit for workflows built on tidebase-async: a pytest plugin.

In a ``conftest.py``::

    pytest_plugins = ["tidebase_async.testing"]

and in a test (pytest-asyncio in auto or strict mode, or anyio's pytest plugin)::

    async def test_reminder(tide_env):
        tide = await tide_env.client(app.tide)       # opened on this test's database
        handle = await tide.enqueue("remind", input={"in_days": 30})
        await tide_env.run_until_idle()              # a worker runs until nothing is due
        await tide_env.advance(timedelta(days=30))   # the sleep is over: the run finishes
        assert (await tide.runs.get(handle.id)).status == "completed"

Each test gets a fresh database copied from a template migrated once per session, on
the server ``TIDEBASE_TEST_DSN`` names, else an embedded Postgres started once per
session. The clock in that database is virtual: ``advance`` moves it, and everything
due by then fires, in order, through the real engine and the real statements.

PYTEST_DONT_REWRITE: a conftest may import from this package before pytest loads it as
a plugin; it has no assertions of the user's to rewrite, and this marker keeps pytest
from warning that it could not.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tidebase_async.testing.databases import (
    create_copy,
    create_template,
    database_of,
    drop_database,
    run_in_thread,
    session_server,
)
from tidebase_async.testing.env import IdleTimeout, ReplayIncompatible, StepView, TideEnv

try:  # pytest-asyncio is optional: anyio's plugin serves as well.
    import pytest_asyncio
except ImportError:  # pragma: no cover - depends on what the user installed
    pytest_asyncio = None  # type: ignore[assignment]

__all__ = ["IdleTimeout", "ReplayIncompatible", "StepView", "TideEnv"]


@pytest.fixture(scope="session")
def tidebase_server_dsn() -> Iterator[str]:
    """The server of this test session: ``TIDEBASE_TEST_DSN``, else an embedded Postgres
    started now and stopped when the session ends. Override it to choose another."""
    with session_server() as dsn:
        yield dsn


@pytest.fixture(scope="session")
def tidebase_template(tidebase_server_dsn: str) -> Iterator[str]:
    """A database migrated once per session, with the virtual clock; tests copy it."""
    name = run_in_thread(
        lambda: create_template(tidebase_server_dsn, prefix="tide_env_tpl", virtual_clock=True)
    )
    try:
        yield name
    finally:
        run_in_thread(lambda: drop_database(tidebase_server_dsn, name))


async def _tide_env(tidebase_server_dsn: str, tidebase_template: str) -> AsyncIterator[TideEnv]:
    dsn = await create_copy(tidebase_server_dsn, tidebase_template, prefix="tide_env")
    env = TideEnv(dsn)
    try:
        yield env
    finally:
        try:
            await env.aclose()
        finally:
            await drop_database(tidebase_server_dsn, database_of(dsn))


# The environment must be set up on the loop that runs the test, and which plugin owns
# that loop depends on the test: pytest-asyncio (auto mode, or a test marked asyncio)
# or anyio's plugin (a test marked anyio). Each plugin runs the async fixtures it
# recognises; ``tide_env`` hands the request to the one that runs this test.
_tide_env_anyio = pytest.fixture(name="_tide_env_anyio")(_tide_env)
if pytest_asyncio is not None:
    _tide_env_asyncio = pytest_asyncio.fixture(name="_tide_env_asyncio")(_tide_env)


@pytest.fixture
def tide_env(request: pytest.FixtureRequest) -> TideEnv:
    """A fresh database for this test with a virtual clock (see ``TideEnv``)."""
    runner = type(request.node).__module__
    if pytest_asyncio is not None and runner.startswith("pytest_asyncio"):
        env = request.getfixturevalue("_tide_env_asyncio")
    else:
        env = request.getfixturevalue("_tide_env_anyio")
    assert isinstance(env, TideEnv)
    return env
