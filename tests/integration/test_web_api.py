"""The HTTP API (``tide.http_app()`` on a real aiohttp server, ``tide.asgi_app()`` mounted
in Starlette): authentication, every 400/401/404/405/409 path, gate resolution by token
and by resolve URL, the routes used end to end (enqueue, read, resolve, events, queues,
schedules), and the OpenAPI document against the routes actually served."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import asyncpg
import httpx
import pytest
from aiohttp import web

from tests.integration.core_support import eventually, status_of, working
from tests.integration.web_support import (
    API_KEY,
    JSON_HEADERS,
    KINDS,
    SECRET,
    bearer,
    error_of,
    serve,
    serve_aiohttp,
    snapshot,
)
from tidebase_async import Run, Tidebase


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    """Each test that takes ``kind`` runs once per way of serving the app."""
    served: str = request.param
    return served


#: Every route of the API (API.md), with the methods it takes.
ROUTES = {
    "/health": {"get"},
    "/ready": {"get"},
    "/metrics": {"get"},
    "/openapi.json": {"get"},
    "/runs": {"get", "post"},
    "/runs/{run_id}": {"get"},
    "/runs/{run_id}/cancel": {"post"},
    "/runs/{run_id}/retry": {"post"},
    "/runs/{run_id}/events": {"get"},
    "/runs/{run_id}/event-log": {"get"},
    "/gates": {"get"},
    "/runs/{run_id}/gates/{name}/resolve": {"post"},
    "/queues": {"get"},
    "/queues/{name}": {"post"},
    "/queues/{name}/keys": {"get"},
    "/schedules": {"get"},
    "/schedules/{name}/pause": {"post"},
    "/schedules/{name}/resume": {"post"},
    "/": {"get"},
    "/assets/{name}": {"get"},
    "/events": {"get", "post"},
    "/keyed-events": {"get"},
    "/event-waits": {"get"},
    "/runs/{run_id}/stream": {"get"},
    "/runs/{run_id}/state": {"get"},
    "/runs/{run_id}/fork": {"post"},
    "/runs/{run_id}/reset": {"post"},
    "/usage": {"get"},
    "/overview": {"get"},
    "/workflows/{name}": {"get"},
}
METHODS = ("get", "post", "put", "patch", "delete")
# No key needed: health and readiness, and the dashboard's page and assets (they hold no
# data; the page asks for the key).
PUBLIC = {"/health", "/ready", "/", "/assets/{name}"}
#: A gate name that is legal (check_name) and holds a percent sign followed by hex.
PERCENT_GATE = "50%41 off"


def register(tide: Tidebase) -> None:
    @tide.workflow("done")
    async def done(run: Run, n: Any) -> Any:
        return n

    @tide.workflow("boom", max_attempts=1)
    async def boom(run: Run, n: Any) -> Any:
        raise ValueError("boom")

    @tide.workflow("ask")
    async def ask(run: Run, n: Any) -> str:
        decision = await run.gate("ok", prompt="go?")
        return str(decision.decision)

    @tide.workflow("ask-percent")
    async def ask_percent(run: Run, n: Any) -> str:
        decision = await run.gate(PERCENT_GATE)
        return str(decision.decision)


@pytest.fixture
async def keyed(dsn: str) -> AsyncIterator[Tidebase]:
    """A Tidebase with an API key, a webhook secret and a public URL (gates get resolve
    URLs), its test workflows registered."""
    tide = Tidebase(
        dsn, api_key=API_KEY, webhook_secret=SECRET, public_url="https://app.example/tidebase"
    )
    async with tide:
        register(tide)
        yield tide


@pytest.fixture
async def client(keyed: Tidebase, kind: str) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(keyed, kind) as c:
        yield c


async def waiting_run(tide: Tidebase, db: asyncpg.Connection, workflow: str = "ask") -> uuid.UUID:
    """A run of ``workflow`` (``ask``: at its gate ``ok``) that waits at its gate."""
    handle = await tide.enqueue(workflow, input=1)
    async with working(tide):
        await eventually(lambda: _is(db, handle.id, "waiting"), what="the run to wait at its gate")
    return handle.id


async def _is(db: asyncpg.Connection, run_id: uuid.UUID, status: str) -> bool:
    return await status_of(db, run_id) == status


def concrete(path: str, run_id: uuid.UUID, name: str = "ok") -> str:
    return "/tidebase" + path.replace("{run_id}", str(run_id)).replace("{name}", name)


# -- authentication ---------------------------------------------------------------------


async def test_every_route_but_health_needs_the_api_key(
    kind: str, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    rid = uuid.uuid4()
    before = await snapshot(db)
    wrong_headers: list[dict[str, Any]] = [
        {},
        bearer("not-the-key"),
        bearer(API_KEY[:-1]),
        bearer(API_KEY + "x"),
        {"Authorization": API_KEY},
        {"Authorization": f"Basic {API_KEY}"},
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer é{API_KEY}".encode()},
    ]
    for path, methods in ROUTES.items():
        if path in PUBLIC:
            continue
        for method in methods:
            body: Any = {"approved": True} if path.endswith("/resolve") else None
            if path == "/runs" and method == "post":
                body = {"workflow": "done", "input": 1}
            for headers in wrong_headers:
                resp = await client.request(method, concrete(path, rid), headers=headers, json=body)
                assert resp.status_code == 401, (method, path, headers, resp.text)
                assert error_of(resp)["code"] == "unauthorized"
                assert resp.headers["www-authenticate"] == "Bearer"
                assert API_KEY not in resp.text
    assert await snapshot(db) == before, "a refused request wrote to the database"
    # With the key the same requests get past authentication.
    resp = await client.get("/tidebase/runs", headers=bearer())
    assert resp.status_code == 200, resp.text
    resp = await client.get(f"/tidebase/runs/{rid}", headers=bearer())
    assert resp.status_code == 404
    resp = await client.get("/tidebase/runs", headers={"authorization": f"bearer  {API_KEY}"})
    assert resp.status_code == 200, "scheme is case-insensitive, the key may be padded"


async def test_the_dashboard_cannot_be_framed(kind: str, client: httpx.AsyncClient) -> None:
    """Regression: the dashboard's CSP had no frame-ancestors, so any site could frame
    it and trick a logged-in operator into clicking its buttons."""
    for path in ("/tidebase/", "/tidebase/assets/app.js"):
        resp = await client.get(path)
        assert resp.status_code == 200, (path, resp.text)
        assert resp.headers["x-frame-options"] == "DENY"
        csp = resp.headers["content-security-policy"]
        for directive in ("frame-ancestors 'none'", "object-src 'none'", "base-uri 'none'"):
            assert directive in csp, (path, csp)


async def test_health_needs_no_key(kind: str, client: httpx.AsyncClient) -> None:
    resp = await client.get("/tidebase/health")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"ok": True}
    resp = await client.get("/tidebase/health", headers=bearer("wrong"))
    assert resp.status_code == 200


async def test_an_unknown_route_is_401_without_the_key_or_404(
    kind: str, client: httpx.AsyncClient
) -> None:
    # Unknown paths say nothing about the API to an anonymous caller beyond 404.
    for path in ("/tidebase/nope", "/tidebase/runs/x/y/z", "/tidebase/gates/x", "/tidebase/assets"):
        resp = await client.get(path, headers=bearer())
        assert resp.status_code == 404, (path, resp.text)
        assert error_of(resp)["code"] == "not_found"


# -- gate resolution by token -------------------------------------------------------------


async def test_gate_resolved_by_token_once_without_the_api_key(
    kind: str, keyed: Tidebase, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    rid = await waiting_run(keyed, db)
    token = await keyed.gates.token(rid, "ok")
    url = f"/tidebase/runs/{rid}/gates/ok/resolve"

    # Neither a missing nor a wrong token is enough without the key; nothing changes.
    before = await snapshot(db)
    resp = await client.post(url, json={"approved": True})
    assert resp.status_code == 401, resp.text
    for bad in ("wrong", token[:-1], token + "x", "", "é" * 10, "x" * 5000):
        resp = await client.post(url, json={"approved": True, "token": bad})
        assert resp.status_code in (400, 401), (bad[:20], resp.text)
        assert token not in resp.text
    assert await snapshot(db) == before

    resp = await client.post(url, json={"approved": False, "actor": "rev", "token": token})
    assert resp.status_code == 200, resp.text
    gate = resp.json()
    assert (gate["status"], gate["actor"], gate["decision"]) == ("rejected", "rev", "rejected")
    assert "token" not in gate and token not in resp.text

    # The token is spent: a second use is refused and the first decision stands.
    after = await snapshot(db)
    resp = await client.post(url, json={"approved": True, "actor": "mallory", "token": token})
    assert resp.status_code in (401, 409), resp.text
    assert error_of(resp)["code"] in ("unauthorized", "conflict")
    assert await snapshot(db) == after
    assert (await keyed.gates.get(rid, "ok")).decision == "rejected"


async def test_second_gate_resolution_is_409(
    kind: str, keyed: Tidebase, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    rid = await waiting_run(keyed, db)
    url = f"/tidebase/runs/{rid}/gates/ok/resolve"
    resp = await client.post(url, json={"approved": True, "actor": "a"}, headers=bearer())
    assert resp.status_code == 200, resp.text
    after = await snapshot(db)
    resp = await client.post(url, json={"approved": False, "actor": "b"}, headers=bearer())
    assert resp.status_code == 409, resp.text
    assert error_of(resp)["code"] == "conflict"
    assert await snapshot(db) == after
    gate = (await client.get(f"/tidebase/runs/{rid}", headers=bearer())).json()["gates"][0]
    assert (gate["decision"], gate["actor"]) == ("approved", "a")


async def test_resolve_url_of_a_gate_with_a_percent_in_its_name_works(
    kind: str, keyed: Tidebase, db: asyncpg.Connection
) -> None:
    """Regression: path parameters were percent-decoded twice, so the resolve URL of a
    gate whose name holds "%41" named another gate."""
    rid = await waiting_run(keyed, db, "ask-percent")
    gate = (await keyed.runs.get(rid)).gates[0]
    assert gate.name == PERCENT_GATE and gate.resolve_url is not None
    path = "/tidebase" + gate.resolve_url.split("/tidebase", 1)[1]
    async with serve(keyed, kind) as client:
        resp = await client.post(path, json={"approved": True, "actor": "a"}, headers=bearer())
        assert resp.status_code == 200, resp.text
        assert resp.json()["name"] == PERCENT_GATE


async def test_resolve_with_a_bogus_token_reveals_nothing_without_the_key(
    kind: str, keyed: Tidebase, db: asyncpg.Connection
) -> None:
    """Regression: without the API key, a resolve with a bogus token answered
    differently for an unknown run, an unknown gate and a decided gate (naming the decision
    and its actor): an oracle."""
    rid = await waiting_run(keyed, db)
    await keyed.gates.resolve(rid, "ok", approved=False, actor="alice")
    before = await snapshot(db)
    async with serve(keyed, kind) as client:
        answers = {}
        for label, path in {
            "unknown run": f"/tidebase/runs/{uuid.uuid4()}/gates/ok/resolve",
            "unknown gate": f"/tidebase/runs/{rid}/gates/nope/resolve",
            "decided gate": f"/tidebase/runs/{rid}/gates/ok/resolve",
        }.items():
            resp = await client.post(path, json={"approved": True, "token": "bogus"})
            answers[label] = (resp.status_code, error_of(resp)["message"])
        assert await snapshot(db) == before
        # Every probe gets the same 401: nothing distinguishes them.
        assert {status for status, _ in answers.values()} == {401}, answers
        assert "rejected" not in str(answers) and "alice" not in str(answers)


# -- 400 ------------------------------------------------------------------------------------


async def test_bad_run_ids_are_400(
    kind: str, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    before = await snapshot(db)
    for bad in ("not-a-uuid", "123", "%C3%A9", "00000000-0000-0000-0000-00000000000g", "%00"):
        for method, suffix, body in (
            ("GET", "", None),
            ("POST", "/cancel", None),
            ("POST", "/retry", None),
            ("GET", "/events", None),
            ("POST", "/gates/ok/resolve", {"approved": True}),
        ):
            resp = await client.request(
                method, f"/tidebase/runs/{bad}{suffix}", json=body, headers=bearer()
            )
            assert resp.status_code == 400, (method, bad, suffix, resp.text)
            assert error_of(resp)["code"] == "bad_request"
    resp = await client.get("/tidebase/gates", params={"run_id": "nope"}, headers=bearer())
    assert resp.status_code == 400, resp.text
    assert await snapshot(db) == before


async def test_invalid_json_and_unknown_fields_are_400(
    kind: str, keyed: Tidebase, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    rid = await waiting_run(keyed, db)
    before = await snapshot(db)
    resolve = f"/tidebase/runs/{rid}/gates/ok/resolve"
    cases: list[tuple[str, str, bytes]] = [
        ("POST", "/tidebase/runs", b"{"),
        ("POST", "/tidebase/runs", b""),
        ("POST", "/tidebase/runs", b"null"),
        ("POST", "/tidebase/runs", b"[]"),
        ("POST", "/tidebase/runs", b'{"workflow": "done"} trailing'),
        ("POST", "/tidebase/runs", b'{"workflow": "done", "nope": 1}'),
        ("POST", "/tidebase/runs", b'{"workflow": 5}'),
        ("POST", "/tidebase/runs", b'{"input": 1}'),
        ("POST", "/tidebase/runs", b'{"workflow": "done", "priority": "high"}'),
        ("POST", "/tidebase/runs", b'{"workflow": "done", "delay": -1}'),
        ("POST", "/tidebase/runs", b'{"workflow": "done", "max_attempts": 0}'),
        ("POST", "/tidebase/runs", b'{"workflow": "done", "run_at": "yesterday"}'),
        ("POST", "/tidebase/runs", b'{"workflow": "done", "run_at": "2030-01-01T00:00:00"}'),
        ("POST", "/tidebase/runs", b'{"workflow": "done", "metadata": [1]}'),
        ("POST", "/tidebase/runs", b'{"workflow": "done", "queue": "bad queue\\u0000"}'),
        ("POST", "/tidebase/runs", b"\xff\xfe"),
        ("POST", resolve, b"{"),
        ("POST", resolve, b""),
        ("POST", resolve, b"{}"),
        ("POST", resolve, b'{"approved": "yes"}'),
        ("POST", resolve, b'{"approved": true, "extra": 1}'),
        ("POST", resolve, b'{"approved": true, "actor": 5}'),
        ("POST", f"/tidebase/runs/{rid}/cancel", b"{"),
        ("POST", f"/tidebase/runs/{rid}/cancel", b'{"reasn": "typo"}'),
        ("POST", f"/tidebase/runs/{rid}/cancel", b'{"reason": 1}'),
        ("POST", f"/tidebase/runs/{rid}/cancel", b"[1]"),
        ("GET", "/tidebase/runs?limit=abc", b""),
        ("GET", "/tidebase/runs?limit=0", b""),
        ("GET", "/tidebase/runs?limit=1000000000000", b""),
        ("GET", "/tidebase/runs?status=bogus", b""),
        ("GET", "/tidebase/runs?cursor=%%%", b""),
        ("GET", "/tidebase/gates?status=bogus", b""),
        ("GET", "/tidebase/gates?limit=-1", b""),
        ("GET", "/tidebase/gates?cursor=nope", b""),
        ("GET", f"/tidebase/runs/{rid}/events?after=abc", b""),
        ("GET", f"/tidebase/runs/{rid}/events?after=-1", b""),
    ]
    for method, url, body in cases:
        resp = await client.request(
            method, url, content=body, headers={**bearer(), "Content-Type": "application/json"}
        )
        assert resp.status_code == 400, (method, url, body, resp.text)
        assert error_of(resp)["code"] == "bad_request"
    resp = await client.get(
        f"/tidebase/runs/{rid}/events", headers={**bearer(), "Last-Event-ID": "x1"}
    )
    assert resp.status_code == 400, resp.text
    assert await snapshot(db) == before


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize("route", ["/tidebase/runs", "/tidebase/gates"])
async def test_limit_with_two_minus_signs_is_400(kind: str, route: str, keyed: Tidebase) -> None:
    """Regression: a limit of "--5" got past the parameter check and the route answered
    500."""
    async with serve(keyed, kind) as client:
        resp = await client.get(route, params={"limit": "--5"}, headers=bearer())
        assert resp.status_code == 400, resp.text
        assert error_of(resp)["code"] == "bad_request"


@pytest.mark.parametrize("where", ["query", "header"])
async def test_events_after_beyond_int4_is_400(kind: str, where: str, keyed: Tidebase) -> None:
    """Regression: an ``after`` (or ``Last-Event-ID``) beyond int4 broke the event stream
    mid-response instead of being refused with 400."""
    handle = await keyed.enqueue("done", input=1)
    url = f"/tidebase/runs/{handle.id}/events"
    headers = bearer()
    params: dict[str, str] = {}
    if where == "query":
        params["after"] = "9999999999"
    else:
        headers["Last-Event-ID"] = "9999999999"
    async with serve(keyed, kind) as client:
        try:
            resp = await asyncio.wait_for(client.get(url, params=params, headers=headers), 10)
        except (httpx.HTTPError, Exception) as exc:  # the stream dies mid-response
            pytest.fail(f"the request broke instead of answering 400: {exc!r}")
        assert resp.status_code == 400, resp.text


@pytest.mark.parametrize("route", ["/tidebase/runs", "/tidebase/gates"])
async def test_cursor_with_an_unbindable_time_is_400(
    kind: str, route: str, keyed: Tidebase
) -> None:
    """Regression: a cursor whose time Postgres cannot bind (year 1 at +14:00) was
    answered 503 "database unavailable" instead of 400."""
    at = "0001-01-01T00:00:00+14:00"
    cursor = _cursor(f"{at}|{uuid.uuid4()}" + ("|ok" if route.endswith("gates") else ""))
    async with serve(keyed, kind) as client:
        resp = await client.get(route, params={"cursor": cursor}, headers=bearer())
        assert resp.status_code == 400, resp.text


# -- 404 ------------------------------------------------------------------------------------


async def test_unknown_runs_gates_and_workflows_are_404(
    kind: str, keyed: Tidebase, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    rid = await waiting_run(keyed, db)
    missing = uuid.uuid4()
    before = await snapshot(db)
    for method, url, body in (
        ("GET", f"/tidebase/runs/{missing}", None),
        ("POST", f"/tidebase/runs/{missing}/cancel", None),
        ("POST", f"/tidebase/runs/{missing}/retry", None),
        ("GET", f"/tidebase/runs/{missing}/events", None),
        ("POST", f"/tidebase/runs/{missing}/gates/ok/resolve", {"approved": True}),
        ("POST", f"/tidebase/runs/{rid}/gates/nope/resolve", {"approved": True}),
        ("POST", f"/tidebase/runs/{rid}/gates/ok%232/resolve", {"approved": True}),
    ):
        resp = await client.request(method, url, json=body, headers=bearer())
        assert resp.status_code == 404, (method, url, resp.text)
        assert error_of(resp)["code"] == "not_found"
    assert await snapshot(db) == before


async def test_unknown_paths_are_404(kind: str, client: httpx.AsyncClient) -> None:
    for method, path in (
        ("GET", "/tidebase/nope"),
        ("POST", "/tidebase/nope"),
        ("GET", "/tidebase/runs/x/steps"),
        ("GET", "/tidebase/runs/x/gates"),
        ("GET", "/tidebase/runs/x/gates/ok"),
        ("GET", "/tidebase/gates/x"),
        ("GET", "/tidebase/healthz"),
        ("GET", "/tidebase/openapi.yaml"),
        ("GET", "/tidebase/%E2%80%AE"),
    ):
        resp = await client.request(method, path, headers=bearer())
        assert resp.status_code == 404, (method, path, resp.text)
        assert error_of(resp)["code"] == "not_found"


# -- 405 ------------------------------------------------------------------------------------


async def test_wrong_methods_are_405(
    kind: str, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    rid = uuid.uuid4()
    before = await snapshot(db)
    for path, methods in ROUTES.items():
        for method in METHODS:
            if method in methods:
                continue
            resp = await client.request(method, concrete(path, rid), headers=bearer())
            assert resp.status_code == 405, (method, path, resp.text)
            error = error_of(resp)
            assert error["code"] == "method_not_allowed"
            for allowed in methods:
                assert allowed.upper() in error["message"], error
    assert await snapshot(db) == before


# -- 409 ------------------------------------------------------------------------------------


async def test_cancel_of_a_finished_run_is_409(
    kind: str, keyed: Tidebase, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    done = await keyed.enqueue("done", input=1)
    boom = await keyed.enqueue("boom", input=1)
    async with working(keyed):
        assert await keyed.runs.wait(done.id, timeout=10) == 1
        await eventually(lambda: _is(db, boom.id, "failed"), what="boom to fail")
    before = await snapshot(db)
    for rid in (done.id, boom.id):
        resp = await client.post(
            f"/tidebase/runs/{rid}/cancel", json={"reason": "late"}, headers=bearer()
        )
        assert resp.status_code == 409, resp.text
        assert error_of(resp)["code"] == "conflict"
    assert await snapshot(db) == before
    assert await status_of(db, done.id) == "completed"


async def test_retry_of_a_run_that_did_not_fail_is_409(
    kind: str, keyed: Tidebase, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    done = await keyed.enqueue("done", input=1)
    async with working(keyed):
        await keyed.runs.wait(done.id, timeout=10)
    queued = await keyed.enqueue("done", input=2)
    cancelled = await keyed.enqueue("done", input=3)
    await keyed.runs.cancel(cancelled.id)
    before = await snapshot(db)
    for rid in (done.id, queued.id, cancelled.id):
        resp = await client.post(f"/tidebase/runs/{rid}/retry", headers=bearer())
        assert resp.status_code == 409, resp.text
        assert error_of(resp)["code"] == "conflict"
    assert await snapshot(db) == before


async def test_cancel_and_retry_succeed_where_allowed(
    kind: str, keyed: Tidebase, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """The 409s above are real conflicts: the same routes work on runs that allow them."""
    boom = await keyed.enqueue("boom", input=1)
    async with working(keyed):
        await eventually(lambda: _is(db, boom.id, "failed"), what="boom to fail")
    resp = await client.post(f"/tidebase/runs/{boom.id}/retry", headers=bearer())
    assert (resp.status_code, resp.json()) == (200, {"id": str(boom.id), "status": "queued"})
    queued = await keyed.enqueue("done", input=1)
    resp = await client.post(
        f"/tidebase/runs/{queued.id}/cancel", json={"reason": "no"}, headers=bearer()
    )
    assert resp.status_code == 200, resp.text
    assert await status_of(db, queued.id) == "cancelled"


# -- enqueue and read -------------------------------------------------------------------


async def test_enqueue_dedupes_and_reads_back(
    kind: str, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    body = {"workflow": "done", "input": {"x": "é🙂"}, "dedupe_key": "k1", "metadata": {"a": 1}}
    first = await client.post("/tidebase/runs", json=body, headers=bearer())
    assert first.status_code == 201, first.text
    again = await client.post("/tidebase/runs", json=body, headers=bearer())
    assert again.status_code == 200, again.text
    assert again.json() == {"id": first.json()["id"], "deduplicated": True}
    info = (await client.get(f"/tidebase/runs/{first.json()['id']}", headers=bearer())).json()
    assert (info["workflow"], info["input"], info["status"]) == ("done", {"x": "é🙂"}, "queued")
    page = (await client.get("/tidebase/runs?workflow=done", headers=bearer())).json()
    assert [item["id"] for item in page["items"]] == [first.json()["id"]]
    assert await db.fetchval("SELECT count(*) FROM tidebase.runs") == 1


async def test_http_api_enqueue_get_resolve_and_events(tide: Tidebase) -> None:
    @tide.workflow("ask")
    async def ask(run: Run, n: int) -> str:
        d = await run.gate("ok")
        return f"{n}:{d.decision}"

    app = web.Application()
    app.add_subapp("/tidebase/", tide.http_app())
    runner, base = await serve_aiohttp(app)
    try:
        async with aiohttp.ClientSession() as http, working(tide):
            r = await http.post(f"{base}/tidebase/runs", json={"workflow": "ask", "input": 3})
            assert r.status == 201, await r.text()
            rid = (await r.json())["id"]
            r = await http.post(f"{base}/tidebase/runs", json={"workflow": "ask", "nope": 1})
            assert r.status == 400
            assert (await r.json())["error"]["code"] == "bad_request"
            for _ in range(200):
                info = await (await http.get(f"{base}/tidebase/runs/{rid}")).json()
                if info["status"] == "waiting":
                    break
                await anyio.sleep(0.05)
            gates = await (await http.get(f"{base}/tidebase/gates")).json()
            assert [g["name"] for g in gates["items"]] == ["ok"]
            r = await http.post(
                f"{base}/tidebase/runs/{rid}/gates/ok/resolve", json={"approved": True}
            )
            assert r.status == 200, await r.text()
            r = await http.post(
                f"{base}/tidebase/runs/{rid}/gates/ok/resolve", json={"approved": True}
            )
            assert r.status == 409
            assert await tide.runs.wait(rid, timeout=10) == "3:approved"
            r = await http.get(f"{base}/tidebase/runs/{rid}/events")
            text = await r.text()
            assert r.headers["Content-Type"] == "text/event-stream"
            assert "event: run.completed" in text
            r = await http.get(f"{base}/tidebase/runs/{rid}/events", headers={"Last-Event-ID": "3"})
            ids = [
                int(line[4:]) for line in (await r.text()).splitlines() if line.startswith("id: ")
            ]
            assert ids[0] == 4 and ids == list(range(4, 4 + len(ids)))
            assert (await http.get(f"{base}/tidebase/openapi.json")).status == 200
            assert (await http.get(f"{base}/tidebase/runs/not-a-uuid")).status == 400
            assert (await http.delete(f"{base}/tidebase/runs")).status == 405
    finally:
        await runner.cleanup()


async def test_queue_schedule_and_search_routes(tide: Tidebase) -> None:
    @tide.workflow("noop", queue="jobs")
    async def noop(run: Run) -> None:
        return None

    transport = httpx.ASGITransport(app=tide.asgi_app())
    async with httpx.AsyncClient(
        transport=transport, base_url="http://127.0.0.1", headers=JSON_HEADERS
    ) as http:
        r = await http.post("/queues/jobs", json={"concurrency": 2, "paused": True})
        assert r.status_code == 200, r.text
        assert (r.json()["concurrency"], r.json()["paused"]) == (2, True)
        r = await http.post("/queues/jobs", json={"concurrency": None})
        assert (r.json()["concurrency"], r.json()["paused"]) == (None, True)
        assert (await http.post("/queues/jobs", json={"concurrency": 0})).status_code == 400
        assert (await http.post("/queues/jobs", json={"nope": 1})).status_code == 400
        h = await tide.enqueue("noop", dedupe_key="find-me")
        await tide.enqueue("noop")
        items = (await http.get("/queues")).json()["items"]
        assert [(q["name"], q["counts"]) for q in items] == [("jobs", {"queued": 2})]
        page = (await http.get("/runs", params={"dedupe_key": "find-me"})).json()
        assert [r["id"] for r in page["items"]] == [str(h.id)]
        await tide.schedules.set("s", every=60, workflow="noop")
        assert [s["name"] for s in (await http.get("/schedules")).json()["items"]] == ["s"]
        r = await http.post("/schedules/s/pause")
        assert (r.status_code, r.json()["enabled"]) == (200, False)
        r = await http.post("/schedules/s/resume")
        assert (r.status_code, r.json()["enabled"]) == (200, True)
        assert (await http.post("/schedules/nope/pause")).status_code == 404


# -- OpenAPI --------------------------------------------------------------------------------


async def test_openapi_lists_exactly_the_routes_served(
    kind: str, client: httpx.AsyncClient
) -> None:
    resp = await client.get("/tidebase/openapi.json", headers=bearer())
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert doc["openapi"].startswith("3.")
    documented = {path: {m for m in ops if m in METHODS} for path, ops in doc["paths"].items()}
    assert documented == ROUTES
    # Every documented operation is served, every other method of those paths is 405.
    rid = uuid.uuid4()
    for path, methods in documented.items():
        for method in METHODS:
            if method == "get" and path in ("/events", "/runs/{run_id}/stream"):
                continue  # a live stream that never ends (tested on its own)
            resp = await client.request(method, concrete(path, rid), headers=bearer())
            if method in methods:
                assert resp.status_code not in (404, 405) or (
                    resp.status_code == 404
                    and error_of(resp)["code"] == "not_found"
                    and "no route" not in error_of(resp)["message"]
                ), (method, path, resp.text)
            else:
                assert resp.status_code == 405, (method, path, resp.text)
    # Documented responses name the statuses the routes really answer with.
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if method not in METHODS or path in PUBLIC:
                continue
            assert "401" in op["responses"], (method, path)
    for ref in ("EnqueueRequest", "ResolveRequest", "Error", "RunInfo", "GateInfo"):
        assert ref in doc["components"]["schemas"], ref


# -- requests from elsewhere ------------------------------------------------------------

HOSTILE_HOSTS = ["evil.example", "evil.example:8800", "10.0.0.5", "[2001:db8::1]:80", ""]
HOSTILE_ORIGINS = ["https://evil.example", "http://localhost.evil.example", "null"]


@pytest.fixture
async def open_api(dsn: str) -> AsyncIterator[Tidebase]:
    """No API key: what `tidebase dev` serves on 127.0.0.1."""
    async with Tidebase(dsn) as tide:
        register(tide)
        yield tide


async def test_without_a_key_only_loopback_hosts_and_origins_are_served(
    kind: str, open_api: Tidebase, db: asyncpg.Connection
) -> None:
    """Regression: with no API key every route answered any Host and any Origin, so a
    web page could drive `tidebase dev` on 127.0.0.1 (enqueue, pause, resolve gates) and
    DNS rebinding could read it."""
    before = await snapshot(db)
    async with serve(open_api, kind) as client:
        for host in HOSTILE_HOSTS:
            for method, path in (("GET", "/tidebase/runs"), ("POST", "/tidebase/runs")):
                resp = await client.request(
                    method, path, headers={"Host": host}, json={"workflow": "done", "input": 1}
                )
                assert resp.status_code == 403, (host, method, resp.text)
                assert error_of(resp)["code"] == "forbidden_host"
        for origin in HOSTILE_ORIGINS:
            resp = await client.post(
                "/tidebase/runs", headers={"Origin": origin}, json={"workflow": "done"}
            )
            assert resp.status_code == 403, (origin, resp.text)
            assert error_of(resp)["code"] == "forbidden_origin"
        assert await snapshot(db) == before
        for host in ("localhost:8800", "127.0.0.1", "[::1]:8800"):
            resp = await client.get("/tidebase/runs", headers={"Host": host})
            assert resp.status_code == 200, (host, resp.text)
        resp = await client.post(
            "/tidebase/runs",
            headers={"Origin": "http://127.0.0.1:8800"},
            json={"workflow": "done", "input": 1},
        )
        assert resp.status_code == 201, resp.text


async def test_allowed_hosts_and_an_api_key_lift_the_host_check(dsn: str) -> None:
    async with Tidebase(dsn, allowed_hosts=["app.example"]) as tide:
        register(tide)
        async with serve(tide, "starlette") as client:
            ok = await client.get("/tidebase/runs", headers={"Host": "app.example"})
            assert ok.status_code == 200, ok.text
            other = await client.get("/tidebase/runs", headers={"Host": "evil.example"})
            assert other.status_code == 403
    async with Tidebase(dsn, api_key=API_KEY) as tide, serve(tide, "starlette") as client:
        resp = await client.get("/tidebase/runs", headers={"Host": "app.example", **bearer()})
        assert resp.status_code == 200, resp.text


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
async def test_a_post_that_is_not_json_is_415_and_changes_nothing(
    kind: str, content_type: str | None, open_api: Tidebase, db: asyncpg.Connection
) -> None:
    """Regression: a cross-site HTML form (which cannot send application/json without a
    CORS preflight) could enqueue and resolve gates."""
    rid = await waiting_run(open_api, db)
    before = await snapshot(db)
    async with serve(open_api, kind) as client:
        for path in ("/tidebase/runs", f"/tidebase/runs/{rid}/cancel", "/tidebase/queues/default"):
            headers = {"Content-Type": content_type} if content_type else {}
            if content_type is None:
                client.headers.pop("Content-Type", None)
            resp = await client.post(path, content=b'{"workflow": "done"}', headers=headers)
            assert resp.status_code == 415, (path, resp.text)
            assert error_of(resp)["code"] == "unsupported_media_type"
    assert await snapshot(db) == before


async def test_an_unauthenticated_request_is_refused_before_its_body_arrives(
    keyed: Tidebase,
) -> None:
    """Regression: every route read its body (up to ~16 MiB) before checking the key. A
    request that announces a large body but sends none is answered 401 at once."""
    app = web.Application()
    app.add_subapp("/tidebase/", keyed.http_app())
    app.router.add_post("/hook", keyed.webhook())
    runner, base = await serve_aiohttp(app)
    try:
        host, port = base.removeprefix("http://").split(":")
        for path, extra in (("/tidebase/runs", ""), ("/hook", "")):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(
                f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: 10000000\r\n{extra}\r\n".encode()
            )
            await writer.drain()
            with anyio.fail_after(5):  # the body never comes: only an early answer ends this
                status = await reader.readline()
            assert b" 401 " in status, (path, status)
            writer.close()
    finally:
        await runner.cleanup()


async def test_a_get_with_a_body_is_413(kind: str, client: httpx.AsyncClient) -> None:
    resp = await client.request("GET", "/tidebase/runs", headers=bearer(), content=b"{}")
    assert resp.status_code == 413, resp.text
