"""Regression tests for defects a review of the web layer (the HTTP API, its adapters,
the gate-resolution route) found; each failed before its fix."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import uuid
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import opened
from tests.integration.core_support import eventually, status_of, working
from tests.integration.web_support import (
    API_KEY,
    KINDS,
    SECRET,
    bearer,
    error_of,
    serve,
    snapshot,
)
from tidebase_async import Run, Tidebase

#: A gate name that is legal (check_name) and holds a percent sign followed by hex.
PERCENT_GATE = "50%41 off"


def register(tide: Tidebase) -> None:
    @tide.workflow("noop")
    async def noop(run: Run, n: Any) -> Any:
        return n

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
    tide = Tidebase(
        dsn, api_key=API_KEY, webhook_secret=SECRET, public_url="https://app.example/tidebase"
    )
    async with opened(tide) as t:
        register(t)
        yield t


async def waiting_at_gate(tide: Tidebase, db: asyncpg.Connection, workflow: str) -> uuid.UUID:
    handle = await tide.enqueue(workflow, input=1)

    async def waiting() -> bool:
        return await status_of(db, handle.id) == "waiting"

    async with working(tide):
        await eventually(waiting, what="the run to wait at its gate")
    return handle.id


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


# -- 1. limit "--5": 500 ------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("route", ["/tidebase/runs", "/tidebase/gates"])
async def test_limit_with_two_minus_signs_is_400(kind: str, route: str, keyed: Tidebase) -> None:
    async with serve(keyed, kind) as client:
        resp = await client.get(route, params={"limit": "--5"}, headers=bearer())
        assert resp.status_code == 400, resp.text
        assert error_of(resp)["code"] == "bad_request"


# -- 2. after / Last-Event-ID beyond int4 breaks the stream -----------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("where", ["query", "header"])
async def test_events_after_beyond_int4_is_400(kind: str, where: str, keyed: Tidebase) -> None:
    handle = await keyed.enqueue("noop", input=1)
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


# -- 3. cursors with an out-of-range time: 503 "database unavailable" ---------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("route", ["/tidebase/runs", "/tidebase/gates"])
async def test_cursor_with_an_unbindable_time_is_400(
    kind: str, route: str, keyed: Tidebase
) -> None:
    at = "0001-01-01T00:00:00+14:00"
    cursor = _cursor(f"{at}|{uuid.uuid4()}" + ("|ok" if route.endswith("gates") else ""))
    async with serve(keyed, kind) as client:
        resp = await client.get(route, params={"cursor": cursor}, headers=bearer())
        assert resp.status_code == 400, resp.text


# -- 4. path parameters decoded twice ----------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_resolve_url_of_a_gate_with_a_percent_in_its_name_works(
    kind: str, keyed: Tidebase, db: asyncpg.Connection
) -> None:
    rid = await waiting_at_gate(keyed, db, "ask-percent")
    gate = (await keyed.runs.get(rid)).gates[0]
    assert gate.name == PERCENT_GATE and gate.resolve_url is not None
    path = "/tidebase" + gate.resolve_url.split("/tidebase", 1)[1]
    async with serve(keyed, kind) as client:
        resp = await client.post(path, json={"approved": True, "actor": "a"}, headers=bearer())
        assert resp.status_code == 200, resp.text
        assert resp.json()["name"] == PERCENT_GATE


# -- 5. a bogus token is an oracle without the API key ----------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_resolve_with_a_bogus_token_reveals_nothing_without_the_key(
    kind: str, keyed: Tidebase, db: asyncpg.Connection
) -> None:
    rid = await waiting_at_gate(keyed, db, "ask")
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


# -- 6. ASGI: the event stream outlives its client --------------------------------------


async def test_asgi_event_stream_ends_when_the_client_disconnects(keyed: Tidebase) -> None:
    handle = await keyed.enqueue("noop", input=1)  # stays queued: no worker
    app = keyed.asgi_app()
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": f"/tidebase/runs/{handle.id}/events",
        "raw_path": f"/tidebase/runs/{handle.id}/events".encode(),
        "root_path": "/tidebase",
        "query_string": b"",
        "headers": [(b"authorization", f"Bearer {API_KEY}".encode())],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    requested = False
    gone = asyncio.Event()
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        # As uvicorn does: once the client is gone, sending is a silent no-op.
        if not gone.is_set():
            sent.append(message)
            if message.get("body"):
                gone.set()  # the client read the first event and went away

    task = asyncio.create_task(app(scope, receive, send))
    try:
        await asyncio.wait_for(gone.wait(), 10)
        done, _ = await asyncio.wait({task}, timeout=5)
        assert task in done, "the SSE stream still runs 5 s after its client disconnected"
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
