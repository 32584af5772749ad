"""The aiohttp example (``examples.aiohttp_app``), tested with the testing kit.

Deployed, the app enqueues and reads (``create_app(worker=False)``) and worker
processes execute the runs. The test does the same on the test's database: the app,
served by aiohttp's ``TestServer``, opens its own Tidebase there in its lifespan
(``create_app(tide_env.dsn)``), and the kit's worker runs the ``generate-report``
workflow the way ``examples.aiohttp_app.worker`` registers it (without the fake
one-second step delays).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from examples.aiohttp_app.app import create_app
from examples.report import approval
from tidebase_async import Tidebase
from tidebase_async.testing import TideEnv
from tidebase_async.web import sign

SECRET = "aiohttp-example-secret"

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def worker(tide_env: TideEnv) -> Tidebase:
    """What ``examples.aiohttp_app.worker`` runs, on the test's database."""
    tide = Tidebase()
    approval.register(tide, step_delay=0)
    return await tide_env.client(tide)


@contextlib.asynccontextmanager
async def serve(tide_env: TideEnv) -> AsyncIterator[Client]:
    """The app on the test's database, without a worker of its own. (Entered in the
    test itself: the app's lifespan holds a task group, which pytest-asyncio's fixture
    teardown, in another task than the setup, could not exit.)"""
    app = create_app(tide_env.dsn, worker=False, webhook_secret=SECRET, step_delay=0)
    async with TestClient(TestServer(app)) as client:
        yield client


async def call(http: Client, method: str, path: str, body: Any = None, *, status: int = 200) -> Any:
    """The JSON answer of a request that must answer ``status``."""
    resp = await http.request(method, path, json=body)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def create(http: Client, topic: str) -> str:
    created = await call(http, "POST", "/api/reports", {"topic": topic}, status=201)
    assert created["deduplicated"] is False
    run_id: str = created["id"]
    return run_id


async def test_report_is_approved_through_the_route_and_sent(
    tide_env: TideEnv, worker: Tidebase
) -> None:
    async with serve(tide_env) as http:
        run_id = await create(http, "Durable workflows")
        # A double-submitted form (case and spacing aside) is the same report.
        again = await call(http, "POST", "/api/reports", {"topic": " durable  WORKFLOWS "})
        assert again == {
            "id": run_id,
            "deduplicated": True,
            "dedupe_key": "report:durable workflows",
        }
        view = await call(http, "GET", f"/api/reports/{run_id}")
        assert (view["status"], view["progress"], view["pending_gates"]) == ("queued", None, [])
        # Not at its gate yet: nothing to approve.
        decide = {"approved": True, "actor": "alice", "comment": "ship it"}
        early = await call(http, "POST", f"/api/reports/{run_id}/approve", decide, status=409)
        assert early == {"error": "the report is not waiting for approval yet (it is queued)"}

        await tide_env.run_until_idle()
        view = await call(http, "GET", f"/api/reports/{run_id}")
        assert view["status"] == "waiting"
        assert view["progress"] == {"stage": "awaiting approval", "percent": 75}
        [gate] = view["pending_gates"]
        assert gate["name"] == approval.GATE
        assert gate["data"]["title"] == "A short report on Durable workflows"

        decided = await call(http, "POST", f"/api/reports/{run_id}/approve", decide)
        assert decided == {
            "id": run_id,
            "gate": approval.GATE,
            "decision": "approved",
            "actor": "alice",
        }
        twice = {"approved": False, "actor": "mallory"}
        late = await call(http, "POST", f"/api/reports/{run_id}/approve", twice, status=409)
        assert late == {"error": "the approval was already decided: approved"}

        await tide_env.run_until_idle()
        view = await call(http, "GET", f"/api/reports/{run_id}")
        assert view["status"] == "completed", view
        assert view["progress"] == {"stage": "sent", "percent": 100}
        assert view["output"]["sent"] is True and view["output"]["decided_by"] == "alice"
        assert view["output"]["receipt"]["to"] == "readers@example.org"
        assert await tide_env.step_names(run_id) == [
            "plan",
            "fetch-sources",
            "write-draft",
            approval.GATE,
            "send",
        ]
        # The mounted HTTP API shows the reviewer's comment.
        info = await call(http, "GET", f"/tidebase/runs/{run_id}")
        assert info["gates"][0]["payload"] == {"comment": "ship it"}
        await tide_env.assert_replay_compatible(run_id)

        # Finished, the topic is free: the same form makes a new report.
        assert await create(http, "Durable workflows") != run_id


async def test_rejected_report_is_not_sent(tide_env: TideEnv, worker: Tidebase) -> None:
    async with serve(tide_env) as http:
        run_id = await create(http, "cron jobs")
        await tide_env.run_until_idle()
        decide = {"approved": False, "actor": "bob", "comment": "too thin"}
        decided = await call(http, "POST", f"/api/reports/{run_id}/approve", decide)
        assert decided["decision"] == "rejected"
        await tide_env.run_until_idle()

        view = await call(http, "GET", f"/api/reports/{run_id}")
        assert view["status"] == "completed", view
        assert view["progress"] == {"stage": "rejected", "percent": 100}
        assert view["output"]["sent"] is False and view["output"]["receipt"] is None
        assert "send" not in await tide_env.step_names(run_id)


async def test_webhook_wakes_workers_but_never_passes_the_gate(
    tide_env: TideEnv, worker: Tidebase
) -> None:
    async with serve(tide_env) as http:
        run_id = await create(http, "webhooks")
        body = json.dumps({"type": "run.resume", "run_id": run_id, "workflow": approval.WORKFLOW})

        async def resume(*, signed: bool) -> Any:
            headers = {"Content-Type": "application/json"}
            if signed:
                headers["Tidebase-Signature"] = sign(SECRET, body.encode())
            resp = await http.post("/api/tidebase", data=body, headers=headers)
            return resp.status, await resp.json()

        status, answer = await resume(signed=False)
        assert status == 401, answer
        assert await resume(signed=True) == (202, {"id": run_id, "status": "queued"})
        await tide_env.run_until_idle()

        # At the gate a resume changes nothing: only a decision moves the run on.
        assert await resume(signed=True) == (202, {"id": run_id, "status": "waiting"})
        await tide_env.run_until_idle()
        view = await call(http, "GET", f"/api/reports/{run_id}")
        assert view["status"] == "waiting" and len(view["pending_gates"]) == 1


async def test_bad_requests_are_refused(tide_env: TideEnv) -> None:
    async with serve(tide_env) as http:
        for topic in ("", "   ", "x" * 201):
            answer = await call(http, "POST", "/api/reports", {"topic": topic}, status=400)
            assert answer["error"].startswith("invalid body")
        await call(http, "GET", "/api/reports/not-a-uuid", status=404)
        missing = "0190d3a4-0000-7000-8000-000000000000"
        await call(http, "GET", f"/api/reports/{missing}", status=404)
        run_id = await create(http, "gates")
        await call(http, "POST", f"/api/reports/{run_id}/approve", {"approved": True}, status=400)
