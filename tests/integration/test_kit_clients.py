"""The testing kit's clients, in this project's own session (the plugin is loaded by
tests/conftest.py): a Tidebase an app opened itself, read-only clients, and a
Tidebase open elsewhere."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tidebase_async import Run, Tidebase
from tidebase_async.errors import ConfigurationError
from tidebase_async.testing import TideEnv


@pytest.fixture(scope="session")
def tidebase_server_dsn(server_dsn: str) -> Iterator[str]:
    """The kit on this session's server, not a second (embedded) one."""
    yield server_dsn


def _app() -> Tidebase:
    tide = Tidebase()

    @tide.workflow("double")
    async def double(run: Run, n: int) -> int:
        return int(await run.step("double", lambda: n * 2))

    return tide


async def test_a_tidebase_the_app_opened_on_the_test_database_is_used_and_left_open(
    tide_env: TideEnv,
) -> None:
    app = _app()
    async with app.opened_on(tide_env.dsn):
        tide = await tide_env.client(app)
        assert tide is app
        handle = await tide.enqueue("double", input=21)
        await tide_env.run_until_idle()
        assert (await tide.runs.get(handle.id)).output == 42
        await tide_env.aclose()
        # The kit did not own it: still open until its owner closes it.
        assert app.is_open
    assert not app.is_open


async def test_a_client_opened_with_work_false_runs_no_worker(tide_env: TideEnv) -> None:
    reader = await tide_env.client(_app(), work=False)
    handle = await reader.enqueue("double", input=1)
    with pytest.raises(ConfigurationError, match="work=False"):
        await tide_env.run_until_idle()
    worker = await tide_env.client(_app())
    await tide_env.run_until_idle()
    assert (await reader.runs.get(handle.id)).output == 2
    assert worker.is_open


async def test_a_tidebase_open_on_another_database_is_refused(tide_env: TideEnv, dsn: str) -> None:
    other = _app()
    async with other.opened_on(dsn):
        with pytest.raises(ConfigurationError, match="open on another database"):
            await tide_env.client(other)


async def test_opened_on_refuses_an_open_tidebase_and_restores_the_dsn(dsn: str) -> None:
    tide = Tidebase("postgresql://nobody@203.0.113.1/never")
    async with tide.opened_on(dsn):
        assert tide.dsn == dsn
        with pytest.raises(ConfigurationError, match="already open"):
            async with tide.opened_on(dsn):
                pass
    assert tide.dsn == "postgresql://nobody@203.0.113.1/never"
    assert not tide.is_open
