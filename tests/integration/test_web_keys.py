"""Flow control by key through the HTTP API: a run's concurrency, debounce and singleton
keys in ``GET /runs/{id}`` (and ``tide.runs.get``), the per-key controls of ``POST
/queues/{name}`` (set, kept when omitted, cleared with null; bad values refused with
nothing written), and ``GET /queues/{name}/keys``: the busiest keys with their running
and queued runs, pending debounce runs and active singleton runs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg
import httpx
import pytest

from tests.integration.core_support import eventually, working
from tests.integration.web_support import API_KEY, KINDS, bearer, error_of, serve, snapshot
from tidebase_async import Debounce, Run, Singleton, Tidebase
from tidebase_async.client import queues as client_queues


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    served: str = request.param
    return served


class Holder:
    """Runs of ``hold`` stay running until ``release`` is set."""

    def __init__(self) -> None:
        self.release = anyio.Event()


def register(tide: Tidebase, holder: Holder) -> None:
    @tide.workflow("hold", queue="tenants")
    async def hold(run: Run, input: Any) -> Any:
        await holder.release.wait()
        return input

    @tide.workflow("echo", queue="flow")
    async def echo(run: Run, input: Any) -> Any:
        return input


@pytest.fixture
def holder() -> Holder:
    return Holder()


@pytest.fixture
async def keyed(dsn: str, holder: Holder) -> AsyncIterator[Tidebase]:
    tide = Tidebase(dsn, api_key=API_KEY)
    async with tide:
        register(tide, holder)
        yield tide


@pytest.fixture
async def client(keyed: Tidebase, kind: str) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(keyed, kind) as c:
        yield c


async def count_running(db: asyncpg.Connection, queue: str) -> int:
    n = await db.fetchval(
        "SELECT count(*) FROM tidebase.runs WHERE queue = $1 AND status = 'running'", queue
    )
    return int(n)


# -- a run's keys ----------------------------------------------------------------------------


async def test_run_info_and_get_run_carry_the_runs_keys(
    kind: str, keyed: Tidebase, client: httpx.AsyncClient
) -> None:
    plain = await keyed.enqueue("echo", input=0)
    keyed_run = await keyed.enqueue("echo", input=1, concurrency_key="tenant-7")
    debounced = await keyed.enqueue("echo", input=2, debounce=Debounce(key="doc-3", window=3600))
    single = await keyed.enqueue("echo", input=3, singleton=Singleton(key="nightly"))

    expected = {
        plain.id: (None, None, None),
        keyed_run.id: ("tenant-7", None, None),
        debounced.id: (None, "doc-3", None),
        single.id: (None, None, "nightly"),
    }
    for rid, keys in expected.items():
        info = await keyed.runs.get(rid)
        assert (info.concurrency_key, info.debounce_key, info.singleton_key) == keys
        resp = await client.get(f"/tidebase/runs/{rid}", headers=bearer())
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert (body["concurrency_key"], body["debounce_key"], body["singleton_key"]) == keys

    # The runs list carries the concurrency key too.
    resp = await client.get("/tidebase/runs", params={"queue": "flow"}, headers=bearer())
    assert resp.status_code == 200, resp.text
    listed = {item["id"]: item["concurrency_key"] for item in resp.json()["items"]}
    assert listed == {str(rid): keys[0] for rid, keys in expected.items()}


# -- POST /queues/{name} per-key controls ---------------------------------------------------


async def test_post_queue_sets_keeps_and_clears_per_key_controls(
    kind: str, keyed: Tidebase, client: httpx.AsyncClient
) -> None:
    resp = await client.post(
        "/tidebase/queues/tenants",
        json={"per_key_concurrency": 3, "per_key_rate_per_minute": 30},
        headers=bearer(),
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["per_key_concurrency"], body["per_key_rate_per_minute"]) == (3, 30.0)
    assert (body["concurrency"], body["paused"]) == (None, False)

    # Omitted: kept (another control changes alone).
    resp = await client.post(
        "/tidebase/queues/tenants", json={"concurrency": 5, "paused": True}, headers=bearer()
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["concurrency"], body["paused"]) == (5, True)
    assert (body["per_key_concurrency"], body["per_key_rate_per_minute"]) == (3, 30.0)

    # null clears one, the other stays; a float rate is taken as given.
    resp = await client.post(
        "/tidebase/queues/tenants",
        json={"per_key_concurrency": None, "per_key_rate_per_minute": 0.5},
        headers=bearer(),
    )
    assert resp.status_code == 200, resp.text
    info = await keyed.queues.get("tenants")
    assert (info.per_key_concurrency, info.per_key_rate_per_minute) == (None, 0.5)
    assert (info.concurrency, info.paused) == (5, True)
    listed = {
        q["name"]: q
        for q in (await client.get("/tidebase/queues", headers=bearer())).json()["items"]
    }
    assert listed["tenants"]["per_key_rate_per_minute"] == 0.5
    assert listed["tenants"]["per_key_concurrency"] is None


BAD_PER_KEY: list[tuple[dict[str, Any], str]] = [
    ({"per_key_concurrency": 0}, "per_key_concurrency"),
    ({"per_key_concurrency": -2}, "per_key_concurrency"),
    ({"per_key_concurrency": 1.5}, "per_key_concurrency"),
    ({"per_key_concurrency": "2"}, "per_key_concurrency"),
    ({"per_key_concurrency": True}, "per_key_concurrency"),
    ({"per_key_concurrency": 10**12}, "per_key_concurrency"),
    ({"per_key_concurrency": [2]}, "per_key_concurrency"),
    ({"per_key_rate_per_minute": 0}, "per_key_rate_per_minute"),
    ({"per_key_rate_per_minute": -1.5}, "per_key_rate_per_minute"),
    ({"per_key_rate_per_minute": "60"}, "per_key_rate_per_minute"),
    ({"per_key_rate_per_minute": False}, "per_key_rate_per_minute"),
    ({"per_key_rate_per_minute": 1e10}, "per_key_rate_per_minute"),
    ({"per_key_rate_per_minute": {"n": 1}}, "per_key_rate_per_minute"),
    # One bad value spoils the whole body: the good ones are not stored either.
    ({"concurrency": 2, "per_key_concurrency": -1}, "per_key_concurrency"),
    ({"per_key_concurrency": 2, "per_key_rate_per_minute": 0}, "per_key_rate_per_minute"),
    ({"per_key_cap": 2}, "per_key_concurrency"),  # an unknown field names the known ones
]


async def test_post_queue_refuses_bad_per_key_values_and_writes_nothing(
    kind: str, keyed: Tidebase, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await keyed.queues.configure("tenants", per_key_concurrency=2, per_key_rate_per_minute=10)
    before = await snapshot(db)
    for body, named in BAD_PER_KEY:
        resp = await client.post("/tidebase/queues/tenants", json=body, headers=bearer())
        assert resp.status_code == 400, (body, resp.text)
        error = error_of(resp)
        assert error["code"] == "bad_request", body
        assert named in error["message"], (body, error)
        # A queue nobody configured is not created by a refused request either.
        resp = await client.post("/tidebase/queues/fresh", json=body, headers=bearer())
        assert resp.status_code == 400, (body, resp.text)
    assert await snapshot(db) == before
    info = await keyed.queues.get("tenants")
    assert (info.per_key_concurrency, info.per_key_rate_per_minute) == (2, 10.0)


# -- GET /queues/{name}/keys ----------------------------------------------------------------


async def test_queue_keys_lists_the_busiest_keys_with_running_and_queued_runs(
    kind: str,
    keyed: Tidebase,
    client: httpx.AsyncClient,
    db: asyncpg.Connection,
    holder: Holder,
) -> None:
    await keyed.queues.configure("tenants", per_key_concurrency=1, per_key_rate_per_minute=600)
    # Key a: 1 running + 3 queued; b: 1 + 1; c: 1 + 0; runs without a key are not keys.
    for key, n in (("a", 4), ("b", 2), ("c", 1)):
        for i in range(n):
            await keyed.enqueue("hold", input=i, concurrency_key=key)
    await keyed.enqueue("hold", input="no key")
    async with working(keyed, concurrency=8, poll_interval=0.05):
        try:
            await eventually(
                lambda: _running_is(db, 4), what="one run per key and the keyless one running"
            )
            resp = await client.get("/tidebase/queues/tenants/keys", headers=bearer())
            assert resp.status_code == 200, resp.text
            body = resp.json()
            assert body["name"] == "tenants"
            assert (body["per_key_concurrency"], body["per_key_rate_per_minute"]) == (1, 600.0)
            assert body["complete"] is True
            assert [(k["key"], k["running"], k["queued"]) for k in body["keys"]] == [
                ("a", 1, 3),
                ("b", 1, 1),
                ("c", 1, 0),
            ]
            assert body["debounces"] == [] and body["singletons"] == []

            # limit: the busiest first.
            resp = await client.get(
                "/tidebase/queues/tenants/keys", params={"limit": "2"}, headers=bearer()
            )
            assert [k["key"] for k in resp.json()["keys"]] == ["a", "b"]
            # The client API answers the same.
            info = await keyed.queues.keys("tenants", limit=1)
            assert [(k.key, k.running, k.queued) for k in info.keys] == [("a", 1, 3)]
        finally:
            holder.release.set()


async def _running_is(db: asyncpg.Connection, n: int) -> bool:
    return await count_running(db, "tenants") == n


async def test_queue_keys_of_a_queue_without_keys_is_empty(
    kind: str, keyed: Tidebase, client: httpx.AsyncClient
) -> None:
    await keyed.enqueue("echo")
    for name in ("flow", "never-used"):
        resp = await client.get(f"/tidebase/queues/{name}/keys", headers=bearer())
        assert resp.status_code == 200, resp.text
        assert resp.json() == {
            "name": name,
            "per_key_concurrency": None,
            "per_key_rate_per_minute": None,
            "keys": [],
            "complete": True,
            "debounces": [],
            "singletons": [],
        }


async def test_queue_keys_lists_pending_debounce_runs_and_active_singletons(
    kind: str, keyed: Tidebase, client: httpx.AsyncClient
) -> None:
    first = await keyed.enqueue(
        "echo", input=1, debounce=Debounce(key="doc-1", window=600, max_wait=3600)
    )
    again = await keyed.enqueue("echo", input=2, debounce=Debounce(key="doc-1", window=600))
    assert again.id == first.id  # collapsed into one pending run
    other = await keyed.enqueue("echo", debounce=Debounce(key="doc-2", window=60))
    single = await keyed.enqueue("echo", singleton=Singleton(key="nightly"))
    # Another queue's flow control is not listed.
    await keyed.enqueue("hold", debounce=Debounce(key="doc-9", window=60))
    await keyed.enqueue("hold", singleton=Singleton(key="nightly"))

    resp = await client.get("/tidebase/queues/flow/keys", headers=bearer())
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["keys"] == []
    # The soonest to start first: doc-2 (60 s) before doc-1 (600 s).
    debounces = [(d["run_id"], d["workflow"], d["key"]) for d in body["debounces"]]
    assert debounces == [(str(other.id), "echo", "doc-2"), (str(first.id), "echo", "doc-1")]
    doc1 = body["debounces"][1]
    assert doc1["run_at"] and doc1["deadline"]
    assert body["debounces"][0]["deadline"] is None
    assert body["singletons"] == [
        {"run_id": str(single.id), "workflow": "echo", "key": "nightly", "status": "queued"}
    ]

    # A cancelled singleton run is not active any more.
    await keyed.runs.cancel(single.id)
    body = (await client.get("/tidebase/queues/flow/keys", headers=bearer())).json()
    assert body["singletons"] == []


async def test_queue_keys_says_when_the_queue_has_too_many_keys_to_visit(
    kind: str, keyed: Tidebase, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bounded: with more keys than it visits, the answer says it may miss some."""
    for i in range(5):
        await keyed.enqueue("hold", input=i, concurrency_key=f"k{i}")
    monkeypatch.setattr(client_queues, "_MAX_KEYS", 3)
    body = (await client.get("/tidebase/queues/tenants/keys", headers=bearer())).json()
    assert body["complete"] is False
    assert [k["key"] for k in body["keys"]] == ["k0", "k1", "k2"]
    monkeypatch.setattr(client_queues, "_MAX_KEYS", 5)
    body = (await client.get("/tidebase/queues/tenants/keys", headers=bearer())).json()
    assert body["complete"] is False  # as many as it visits: maybe more
    monkeypatch.setattr(client_queues, "_MAX_KEYS", 6)
    body = (await client.get("/tidebase/queues/tenants/keys", headers=bearer())).json()
    assert body["complete"] is True
    assert [(k["key"], k["queued"]) for k in body["keys"]] == [(f"k{i}", 1) for i in range(5)]


@pytest.mark.parametrize("limit", ["0", "101", "-1", "abc", "1.5"])
async def test_queue_keys_refuses_a_bad_limit(
    kind: str, client: httpx.AsyncClient, limit: str
) -> None:
    resp = await client.get(
        "/tidebase/queues/tenants/keys", params={"limit": limit}, headers=bearer()
    )
    assert resp.status_code == 400, resp.text
    assert error_of(resp)["code"] == "bad_request"
    assert "limit" in error_of(resp)["message"]


async def test_queue_keys_needs_the_api_key_and_takes_only_get(
    kind: str, client: httpx.AsyncClient
) -> None:
    resp = await client.get("/tidebase/queues/tenants/keys")
    assert resp.status_code == 401, resp.text
    resp = await client.post("/tidebase/queues/tenants/keys", json={}, headers=bearer())
    assert resp.status_code == 405, resp.text
