"""What the HTTP API costs and bounds under many or hostile clients: idle live
streams are fed by LISTEN rather than polling the database, live streams per process
are capped, the usage summary is paged, and the gate-token path sends the same
statements whatever it finds (so its timing says nothing about what exists)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel
import asyncpg
import httpx
import pytest

from tests.integration.web_support import API_KEY, bearer, error_of, serve
from tidebase_async import Run, Tidebase
from tidebase_async.client.streams import MAX_CHANGED_IDS, RunChanges

IDLE_FOLLOWERS = 50


async def _transactions(db: asyncpg.Connection) -> int:
    await db.execute("SELECT pg_stat_clear_snapshot()")
    value = await db.fetchval(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database "
        "WHERE datname = current_database()"
    )
    return int(value)


async def _follow(client: httpx.AsyncClient, path: str, opened: anyio.Event) -> None:
    async with client.stream("GET", path, headers=bearer()) as resp:
        assert resp.status_code == 200
        opened.set()
        async for _ in resp.aiter_bytes():
            pass


async def test_idle_event_streams_are_fed_by_listen_not_by_polling(
    dsn: str, db: asyncpg.Connection
) -> None:
    """Regression: each idle ``/runs/{id}/events`` connection cost two queries a second
    (100 connections: about 200 statements a second on an idle system)."""
    async with Tidebase(dsn, api_key=API_KEY) as tide:
        handle = await tide.enqueue("never", input=None)  # queued, no worker: idle
        async with serve(tide, "aiohttp") as client, anyio.create_task_group() as tg:
            opened = [anyio.Event() for _ in range(IDLE_FOLLOWERS)]
            for event in opened:
                tg.start_soon(_follow, client, f"/tidebase/runs/{handle.id}/events", event)
            for event in opened:
                await event.wait()
            await anyio.sleep(1.5)  # past the first reads
            before = await _transactions(db)
            await anyio.sleep(4.0)
            per_second = (await _transactions(db) - before) / 4.0
            tg.cancel_scope.cancel()
    print(f"{IDLE_FOLLOWERS} idle event streams: {per_second:.1f} transactions/s")
    assert per_second < IDLE_FOLLOWERS / 5, per_second


async def test_live_streams_per_process_are_capped(dsn: str) -> None:
    """Each SSE connection holds a task and a LISTEN subscription: past the cap a new
    one is refused with 503 (and accepted again once one closes)."""
    async with Tidebase(dsn, api_key=API_KEY, max_event_streams=3) as tide:
        handle = await tide.enqueue("never", input=None)
        path = f"/tidebase/runs/{handle.id}/events"
        async with serve(tide, "aiohttp") as client, anyio.create_task_group() as tg:
            opened = [anyio.Event() for _ in range(3)]
            for event in opened:
                tg.start_soon(_follow, client, path, event)
            for event in opened:
                await event.wait()
            refused = await client.get(path, headers=bearer())
            assert refused.status_code == 503, refused.text
            assert error_of(refused)["code"] == "too_many_streams"
            also = await client.get("/tidebase/events", headers=bearer())
            assert also.status_code == 503
            tg.cancel_scope.cancel()
        async with serve(tide, "aiohttp") as client:
            with anyio.fail_after(10):
                while True:  # the server notices the closed streams
                    async with client.stream("GET", path, headers=bearer()) as resp:
                        if resp.status_code == 200:
                            break
                    await anyio.sleep(0.1)


def test_the_changed_runs_feed_of_a_slow_reader_stays_bounded() -> None:
    """Regression: ids of changed runs piled up without bound for a reader that did not
    keep up; past the cap the reader is told to refresh everything (an empty list)."""
    changes = RunChanges()
    for i in range(MAX_CHANGED_IDS + 500):
        changes.add(str(uuid.UUID(int=i)))
    assert len(changes._ids) <= MAX_CHANGED_IDS
    assert changes.take() == []  # overflowed: refresh all
    changes.add("a,b")
    assert changes.take() == ["a", "b"]


@pytest.fixture
async def usage_tide(dsn: str) -> AsyncIterator[Tidebase]:
    async with Tidebase(dsn, api_key=API_KEY) as tide:

        @tide.workflow("spend")
        async def spend(run: Run, n: int) -> None:
            for i in range(n):
                await run.usage.record(model=f"model-{i}", input_tokens=i + 1, output_tokens=1)

        yield tide


async def test_the_usage_summary_is_paged(usage_tide: Tidebase) -> None:
    """Regression: ``/usage`` returned every group at once, however many."""
    from tests.integration.core_support import working

    handle = await usage_tide.enqueue("spend", input=7)
    async with working(usage_tide):
        await usage_tide.runs.wait(handle.id, timeout=10)
    seen: list[str] = []
    async with serve(usage_tide, "starlette") as client:
        cursor = None
        for _ in range(10):
            params = {"group_by": "model", "limit": "3", **({"cursor": cursor} if cursor else {})}
            resp = await client.get("/tidebase/usage", params=params, headers=bearer())
            assert resp.status_code == 200, resp.text
            body = resp.json()
            assert len(body["items"]) <= 3
            seen += [item["group"]["model"] for item in body["items"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == sorted(f"model-{i}" for i in range(7))
        assert len(seen) == 7
        for bad in ("0", "-1", "100001", "x"):
            resp = await client.get("/tidebase/usage", params={"limit": bad}, headers=bearer())
            assert resp.status_code == 400, (bad, resp.text)


async def test_the_gate_token_path_sends_the_same_statements_whatever_it_finds(
    dsn: str, db: asyncpg.Connection
) -> None:
    """A resolve with a token answers the same for an unknown run, an unknown gate and a
    wrong token; it also does the same database work (statements sent), so timing does
    not tell an outsider which runs or gates exist."""
    from tests.integration.core_support import eventually, working

    async with Tidebase(dsn, pool_size=2) as tide:

        @tide.workflow("ask")
        async def ask(run: Run) -> bool:
            return (await run.gate("ok", channels=["https://example.com/hook"])).approved

        handle = await tide.enqueue("ask")
        async with working(tide):
            await eventually(lambda: _waiting(db, handle.id), timeout=10, what="the run to wait")
        statements: list[str] = []
        store = tide.store
        # Both pooled connections log what they send from now on.
        async with store.connection() as a, store.connection() as b:
            for conn in (a, b):
                conn.add_query_logger(lambda record: statements.append(record.query))
        cases = {
            "unknown run": (uuid.uuid4(), "ok"),
            "unknown gate": (handle.id, "nope"),
            "wrong token": (handle.id, "ok"),
        }
        counts: dict[str, int] = {}
        for what, (run_id, name) in cases.items():
            statements.clear()
            with pytest.raises(Exception):  # noqa: B017 - all refused, each its own way
                await tide.gates.resolve(run_id, name, approved=True, token="bogus-token")
            # asyncpg hands records to a query logger with loop.call_soon, and giving a
            # connection back to the pool does not yield: let the last one arrive.
            await anyio.lowlevel.checkpoint()
            counts[what] = len(statements)
        assert len(set(counts.values())) == 1, counts


async def _waiting(db: asyncpg.Connection, run_id: uuid.UUID) -> bool:
    status = await db.fetchval("SELECT status FROM tidebase.runs WHERE id = $1", run_id)
    return bool(status == "waiting")
