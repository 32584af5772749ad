"""The HTTP API's views of events by key and workflow versions: ``GET /keyed-events``
(filters, pages, bad input), ``GET /event-waits``, a run's ``event_waits`` and its
``event`` and ``patch`` history entries in ``GET /runs/{id}``, and the version of a run
in ``GET /runs`` and ``GET /runs/{id}``. (``POST /events`` is in test_events_by_key.py.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from tests.integration.control_support import wait_status
from tests.integration.core_support import working
from tests.integration.web_support import API_KEY, KINDS, bearer, error_of, serve, snapshot
from tidebase_async import Run, Tidebase


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    served: str = request.param
    return served


def register(tide: Tidebase) -> None:
    @tide.workflow("waiter")
    async def waiter(run: Run, input: dict[str, Any]) -> Any:
        if await run.patched("new-greeting"):
            await run.step("greet", lambda: "hi")
        return await run.wait_for_event("payment", key=input["key"], timeout=3600)

    @tide.workflow("report", version="1")
    async def report_v1(run: Run, input: Any) -> str:
        return "v1"

    @tide.workflow("report", version="2")
    async def report_v2(run: Run, input: Any) -> str:
        return "v2"


@pytest.fixture
async def keyed(dsn: str) -> AsyncIterator[Tidebase]:
    tide = Tidebase(dsn, api_key=API_KEY)
    async with tide:
        register(tide)
        yield tide


@pytest.fixture
async def client(keyed: Tidebase, kind: str) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(keyed, kind) as c:
        yield c


async def test_keyed_events_are_listed_filtered_and_paged(
    kind: str, keyed: Tidebase, client: httpx.AsyncClient
) -> None:
    sent = [
        await keyed.events.send("payment", key=f"order-{i}", payload={"n": i}) for i in range(5)
    ]
    other = await keyed.events.send("refund", key="order-1")
    resp = await client.get("/tidebase/keyed-events", headers=bearer())
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert [e["id"] for e in body["items"]] == [str(e.id) for e in [*sent, other]]
    assert body["next_cursor"] is None
    first = body["items"][0]
    assert (first["name"], first["key"], first["status"], first["payload"]) == (
        "payment",
        "order-0",
        "stored",
        {"n": 0},
    )
    assert first["sent_at"] and first["expires_at"]

    # Pages of 2, in the order sent, each listed once.
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        params = {"name": "payment", "limit": "2", **({"cursor": cursor} if cursor else {})}
        resp = await client.get("/tidebase/keyed-events", params=params, headers=bearer())
        assert resp.status_code == 200, resp.text
        page = resp.json()
        seen += [e["id"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [str(e.id) for e in sent]

    resp = await client.get(
        "/tidebase/keyed-events", params={"name": "refund", "key": "order-1"}, headers=bearer()
    )
    assert [e["id"] for e in resp.json()["items"]] == [str(other.id)]
    # Delivered and consumed ones are left out unless asked for.
    resp = await client.get(
        "/tidebase/keyed-events", params={"status": "delivered"}, headers=bearer()
    )
    assert resp.json() == {"items": [], "next_cursor": None}
    resp = await client.get("/tidebase/keyed-events", params={"status": "all"}, headers=bearer())
    assert len(resp.json()["items"]) == 6


async def test_bad_keyed_event_and_wait_queries_are_400_and_need_the_key(
    kind: str, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    before = await snapshot(db)
    for path in ("/tidebase/keyed-events", "/tidebase/event-waits"):
        resp = await client.get(path)
        assert resp.status_code == 401, resp.text
        for params in ({"limit": "0"}, {"limit": "x"}, {"limit": "5000"}, {"key": "k" * 300}):
            resp = await client.get(path, params=params, headers=bearer())
            assert resp.status_code == 400, (path, params, resp.text)
            assert error_of(resp)["code"] == "bad_request"
    for params in ({"status": "lost"}, {"cursor": "not-a-cursor"}, {"cursor": "AAAA"}):
        resp = await client.get("/tidebase/keyed-events", params=params, headers=bearer())
        assert resp.status_code == 400, (params, resp.text)
        assert error_of(resp)["code"] == "bad_request"
    assert await snapshot(db) == before


async def test_a_waiting_run_shows_its_wait_and_then_its_event_and_patch_entries(
    kind: str, keyed: Tidebase, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    async with working(keyed):
        handle = await keyed.enqueue("waiter", input={"key": "order-9"})
        await wait_status(db, handle.id, "waiting")

        resp = await client.get("/tidebase/event-waits", headers=bearer())
        assert resp.status_code == 200, resp.text
        (wait,) = resp.json()["items"]
        assert (wait["run_id"], wait["name"], wait["key"], wait["status"]) == (
            str(handle.id),
            "payment",
            "order-9",
            "waiting",
        )
        assert wait["expires_at"]
        resp = await client.get("/tidebase/event-waits", params={"key": "other"}, headers=bearer())
        assert resp.json() == {"items": []}

        run = (await client.get(f"/tidebase/runs/{handle.id}", headers=bearer())).json()
        assert run["status"] == "waiting" and run["version"] is None
        (open_wait,) = run["event_waits"]
        assert (open_wait["wait"], open_wait["name"], open_wait["key"], open_wait["status"]) == (
            "payment",
            "payment",
            "order-9",
            "waiting",
        )
        assert [(s["kind"], s["name"]) for s in run["steps"]] == [
            ("patch", "new-greeting"),
            ("step", "greet"),
        ]

        await keyed.events.send("payment", key="order-9", payload={"paid": True})
        assert await keyed.runs.wait(handle.id, timeout=10) == {"paid": True}

    run = (await client.get(f"/tidebase/runs/{handle.id}", headers=bearer())).json()
    (closed,) = run["event_waits"]
    assert (closed["status"], closed["payload"]) == ("received", {"paid": True})
    assert [(s["kind"], s["name"], s["status"]) for s in run["steps"]] == [
        ("patch", "new-greeting", "completed"),
        ("step", "greet", "completed"),
        ("event", "payment", "completed"),
    ]
    assert run["steps"][-1]["output"] == {"paid": True}
    resp = await client.get("/tidebase/keyed-events", params={"status": "all"}, headers=bearer())
    (event,) = resp.json()["items"]
    assert (event["status"], event["received_by"]) == ("delivered", [str(handle.id)])
    assert (await client.get("/tidebase/event-waits", headers=bearer())).json() == {"items": []}


async def test_runs_show_their_workflow_version(
    kind: str, keyed: Tidebase, client: httpx.AsyncClient
) -> None:
    newest = await keyed.enqueue("report")
    older = await keyed.enqueue("report", version="1")
    plain = await keyed.enqueue("waiter", input={"key": "k"})
    resp = await client.get("/tidebase/runs", headers=bearer())
    assert resp.status_code == 200, resp.text
    versions = {item["id"]: item["version"] for item in resp.json()["items"]}
    assert versions == {str(newest.id): "2", str(older.id): "1", str(plain.id): None}
    run = (await client.get(f"/tidebase/runs/{older.id}", headers=bearer())).json()
    assert (run["version"], run["event_waits"]) == ("1", [])
    resp = await client.get("/tidebase/queues", headers=bearer())
    (queue,) = resp.json()["items"]
    listed = {(v["workflow"], v["version"]): (v["queued"], v["workers"]) for v in queue["versions"]}
    assert listed == {("report", "1"): (1, 0), ("report", "2"): (1, 0)}
