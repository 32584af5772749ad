"""Opening and closing a client: ``open()``/``close()`` beside ``async with``, from any
task (pytest fixtures, aiohttp ``cleanup_ctx``, Starlette lifespans), idempotent close
that drains what the client owns."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tidebase_async import ConfigurationError, Run, StoreError, Tidebase


@pytest.fixture
async def fixture_opened(dsn: str) -> AsyncIterator[Tidebase]:
    """What users write: open in setup, close in teardown (pytest-asyncio may run the
    two in different tasks)."""
    tide = Tidebase(dsn)
    await tide.open()
    yield tide
    await tide.close()


async def test_a_client_opened_in_a_fixture_works_and_closes(fixture_opened: Tidebase) -> None:
    @fixture_opened.workflow("twice")
    async def twice(run: Run, n: int) -> int:
        doubled: int = await run.step("double", lambda: n * 2)
        return doubled

    handle = await fixture_opened.enqueue("twice", input=21)
    worker = asyncio.create_task(fixture_opened.work(handle_signals=False))
    try:
        assert await fixture_opened.runs.wait(handle.id, timeout=10) == 42
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)


async def test_open_in_one_task_and_close_in_another(dsn: str) -> None:
    tide = Tidebase(dsn)
    await asyncio.create_task(tide.open())
    handle = await tide.enqueue("later", input=1)
    # The LISTEN connection belongs to the client, not to the task that opened it.
    assert tide.listener is not None and tide.listener.connected
    await asyncio.create_task(tide.close())
    assert tide.listener is None
    with pytest.raises(ConfigurationError, match="not open"):
        await tide.runs.get(handle.id)
    # Reopened elsewhere, the run is still there.
    async with Tidebase(dsn) as again:
        assert (await again.runs.get(handle.id)).status == "queued"


async def test_close_is_idempotent_and_concurrent_closes_wait_for_each_other(dsn: str) -> None:
    tide = Tidebase(dsn)
    await tide.open()
    await asyncio.gather(tide.close(), asyncio.create_task(tide.close()))
    await tide.close()
    # Closing never opened is a no-op too.
    await Tidebase(dsn).close()


async def test_close_sends_the_notifications_the_client_still_holds(dsn: str) -> None:
    """A 'run changed' hint queued right before close() still goes out."""
    listener = await asyncpg.connect(dsn)
    heard: list[str] = []
    await listener.add_listener("tidebase_events", lambda *args: heard.append(args[3]))
    try:
        tide = Tidebase(dsn)
        await tide.open()
        handle = await tide.enqueue("hint", input=None)
        tide.notifier.runs_changed(handle.id)
        await asyncio.create_task(tide.close())
        for _ in range(100):
            if any(str(handle.id) in payload for payload in heard):
                break
            await asyncio.sleep(0.02)
        assert any(str(handle.id) in payload for payload in heard)
    finally:
        await listener.close()


async def test_open_twice_is_refused_and_the_client_stays_usable(dsn: str) -> None:
    tide = Tidebase(dsn)
    await tide.open()
    try:
        with pytest.raises(ConfigurationError, match="already open"):
            await tide.open()
        await tide.enqueue("still", input=None)
    finally:
        await tide.close()


async def test_a_failed_open_leaves_nothing_open_and_can_be_retried(dsn: str) -> None:
    bad = Tidebase("postgresql://postgres@127.0.0.1:1/nowhere", connect_timeout=0.5)
    with pytest.raises(StoreError):
        await bad.open()
    with pytest.raises(ConfigurationError, match="not open"):
        _ = bad.store
    await bad.close()  # nothing to close: no error


async def test_an_error_in_async_with_propagates_as_itself(dsn: str) -> None:
    with pytest.raises(KeyError) as info:
        async with Tidebase(dsn):
            raise KeyError("mine")
    assert info.type is KeyError  # not wrapped in an exception group


async def test_reopening_after_close_works(dsn: str) -> None:
    tide = Tidebase(dsn)
    for _ in range(2):
        await tide.open()
        await tide.enqueue("again", input=None)
        await tide.close()
    async with Tidebase(dsn) as check:
        page = await check.runs.list(workflow="again")
        assert len(page.items) == 2
