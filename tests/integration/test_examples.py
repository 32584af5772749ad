"""The web examples end to end: ``examples.aiohttp_app`` on a real aiohttp server on
127.0.0.1 and ``examples.starlette_app`` through ``httpx.ASGITransport``, each driven
through its routes: enqueue (deduplicated on a repeat), progress, the pending gate,
approve or reject, the output; plus the webhook and the mounted HTTP API."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx
import pytest
from aiohttp import web

from examples.aiohttp_app.app import TIDE
from examples.aiohttp_app.app import create_app as create_aiohttp_app
from examples.report.approval import GATE
from examples.starlette_app.app import create_app as create_starlette_app
from tests.integration.core_support import working
from tidebase_async import Tidebase
from tidebase_async.web import sign

SECRET = "example-secret"
STEP_DELAY = 0.1  # per fake step: progress stays visible for a few polls
FRAMEWORKS = ["aiohttp", "starlette"]

Serve = Callable[..., contextlib.AbstractAsyncContextManager[tuple[httpx.AsyncClient, Tidebase]]]


@contextlib.asynccontextmanager
async def serve_aiohttp(
    dsn: str, *, worker: bool
) -> AsyncIterator[tuple[httpx.AsyncClient, Tidebase]]:
    app = create_aiohttp_app(dsn, worker=worker, webhook_secret=SECRET, step_delay=STEP_DELAY)
    runner = web.AppRunner(app)
    await runner.setup()  # the app's cleanup_ctx opens its Tidebase (and worker)
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            yield http, app[TIDE]
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def serve_starlette(
    dsn: str, *, worker: bool
) -> AsyncIterator[tuple[httpx.AsyncClient, Tidebase]]:
    app = create_starlette_app(dsn, worker=worker, webhook_secret=SECRET, step_delay=STEP_DELAY)
    # httpx.ASGITransport sends no lifespan events: enter the app's lifespan here.
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            yield http, app.state.tide


SERVERS: dict[str, Serve] = {"aiohttp": serve_aiohttp, "starlette": serve_starlette}


async def poll(
    http: httpx.AsyncClient, run_id: str, until: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    """GET the report until ``until(view)``; every view seen, the last one matching."""
    seen: list[dict[str, Any]] = []
    with anyio.fail_after(10):
        while True:
            r = await http.get(f"/api/reports/{run_id}")
            assert r.status_code == 200, r.text
            seen.append(r.json())
            if until(seen[-1]):
                return seen
            await anyio.sleep(0.01)


def at_gate(view: dict[str, Any]) -> bool:
    # The gate is pending from the moment the run reaches it; "waiting" (no worker
    # holds it) follows a moment later, when the worker has parked the run.
    return bool(view["pending_gates"]) and view["status"] == "waiting"


def finished(view: dict[str, Any]) -> bool:
    return view["status"] in ("completed", "failed", "cancelled")


async def start_report(http: httpx.AsyncClient, topic: str) -> str:
    r = await http.post("/api/reports", json={"topic": topic})
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["deduplicated"] is False
    run_id: str = created["id"]
    return run_id


async def wait_for_gate(http: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    views = await poll(http, run_id, at_gate)
    view = views[-1]
    assert view["status"] == "waiting"
    assert view["progress"] == {"stage": "awaiting approval", "percent": 75}
    [gate] = view["pending_gates"]
    assert gate["name"] == GATE and gate["status"] == "pending"
    assert gate["data"]["title"] == f"A short report on {view['topic']}"
    # Progress was visible on the way (each fake step takes STEP_DELAY).
    stages = {v["progress"]["stage"] for v in views if v["progress"] is not None}
    assert stages & {"planning", "fetching sources", "writing draft"}, views
    return view


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_report_is_deduplicated_then_approved(dsn: str, framework: str) -> None:
    async with SERVERS[framework](dsn, worker=False) as (http, tide), working(tide):
        run_id = await start_report(http, "Durable workflows")

        # A double-submitted form: same topic (case and spacing aside), same run.
        r = await http.post("/api/reports", json={"topic": "  durable   WORKFLOWS "})
        assert r.status_code == 200, r.text
        assert r.json() == {
            "id": run_id,
            "deduplicated": True,
            "dedupe_key": "report:durable workflows",
        }

        # Too early: the run has not reached its gate yet.
        r = await http.post(
            f"/api/reports/{run_id}/approve", json={"approved": True, "actor": "alice"}
        )
        assert r.status_code == 409, r.text

        await wait_for_gate(http, run_id)
        r = await http.post(
            f"/api/reports/{run_id}/approve",
            json={"approved": True, "actor": "alice", "comment": "ship it"},
        )
        assert r.status_code == 200, r.text
        assert r.json() == {"id": run_id, "gate": GATE, "decision": "approved", "actor": "alice"}
        r = await http.post(
            f"/api/reports/{run_id}/approve", json={"approved": False, "actor": "mallory"}
        )
        assert r.status_code == 409, r.text
        assert "already decided: approved" in r.json()["error"]

        view = (await poll(http, run_id, finished))[-1]
        assert view["status"] == "completed", view
        assert view["progress"] == {"stage": "sent", "percent": 100}
        assert view["pending_gates"] == [] and view["error"] is None
        output = view["output"]
        assert output["sent"] is True and output["decided_by"] == "alice"
        assert output["title"] == "A short report on Durable workflows"
        assert output["receipt"]["message_id"].startswith("msg-")

        # The HTTP API mounted at /tidebase sees the same run, with the gate's decision.
        r = await http.get(f"/tidebase/runs/{run_id}")
        assert r.status_code == 200, r.text
        info = r.json()
        assert [s["name"] for s in info["steps"]] == [
            "plan",
            "fetch-sources",
            "write-draft",
            GATE,
            "send",
        ]
        assert info["gates"][0]["actor"] == "alice"
        assert info["gates"][0]["payload"] == {"comment": "ship it"}
        assert (await http.get("/tidebase/health")).json() == {"ok": True}

        # The run is no longer active, so the same topic makes a new report.
        r = await http.post("/api/reports", json={"topic": "Durable workflows"})
        assert r.status_code == 201 and r.json()["id"] != run_id, r.text

        # The webhook at /api/tidebase verifies signatures, then hands the run on.
        body = json.dumps(
            {"type": "run.resume", "run_id": run_id, "workflow": "generate-report"}
        ).encode()
        headers = {"Content-Type": "application/json"}
        r = await http.post("/api/tidebase", content=body, headers=headers)
        assert r.status_code == 401, r.text
        headers["Tidebase-Signature"] = sign(SECRET, body)
        r = await http.post("/api/tidebase", content=body, headers=headers)
        assert r.status_code == 202, r.text
        assert r.json()["status"] == "completed"


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_report_rejected_by_the_apps_own_worker(dsn: str, framework: str) -> None:
    # worker=True: the app executes runs itself, as `python -m examples.<app>` does.
    async with SERVERS[framework](dsn, worker=True) as (http, _tide):
        run_id = await start_report(http, "cron jobs")
        await wait_for_gate(http, run_id)
        r = await http.post(
            f"/api/reports/{run_id}/approve",
            json={"approved": False, "actor": "bob", "comment": "too thin"},
        )
        assert r.status_code == 200, r.text
        assert r.json()["decision"] == "rejected"

        view = (await poll(http, run_id, finished))[-1]
        assert view["status"] == "completed", view
        assert view["progress"] == {"stage": "rejected", "percent": 100}
        assert view["output"]["sent"] is False
        assert view["output"]["decided_by"] == "bob"
        assert view["output"]["receipt"] is None
        info = (await http.get(f"/tidebase/runs/{run_id}")).json()
        assert "send" not in [s["name"] for s in info["steps"]]


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_bad_requests(dsn: str, framework: str) -> None:
    async with SERVERS[framework](dsn, worker=False) as (http, tide):
        for body in (b"", b"not json", b"[]", b'{"topic": ""}', b'{"topic": "   "}'):
            r = await http.post("/api/reports", content=body)
            assert r.status_code == 400, (body, r.text)
            assert "error" in r.json()
        r = await http.post("/api/reports", json={"topic": "x" * 201})
        assert r.status_code == 400, r.text
        r = await http.post("/api/reports", json={"topic": "x", "extra": 1})
        assert r.status_code == 400, r.text

        assert (await http.get("/api/reports/not-a-uuid")).status_code == 404
        missing = "0190d3a4-0000-7000-8000-000000000000"
        assert (await http.get(f"/api/reports/{missing}")).status_code == 404
        decision = {"approved": True, "actor": "alice"}
        r = await http.post(f"/api/reports/{missing}/approve", json=decision)
        assert r.status_code == 404, r.text

        # A run of another workflow is not a report.
        other = await tide.enqueue("something-else", queue="elsewhere")
        assert (await http.get(f"/api/reports/{other.id}")).status_code == 404

        run_id = await start_report(http, "gates")
        for bad in ({"approved": True}, {"actor": "a"}, {"approved": "yes", "actor": "a"}):
            r = await http.post(f"/api/reports/{run_id}/approve", json=bad)
            assert r.status_code == 400, (bad, r.text)
        view = (await http.get(f"/api/reports/{run_id}")).json()
        assert view["status"] == "queued" and view["progress"] is None  # no worker here
