"""The Starlette example (``examples.starlette_app``), tested with the testing kit.

``create_app`` makes the app's Tidebase (``app.state.tide``) and registers
``generate-report`` on it; the kit opens that very object on the test's database, so
the routes talk to it and the kit's worker runs its workflow. The app is called through
``httpx.ASGITransport``, which sends no lifespan events: the app's lifespan (which
would open the Tidebase itself) stays out of the way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from examples.report import approval
from examples.starlette_app.app import create_app
from tidebase_async.testing import TideEnv

PUBLIC_URL = "https://reports.example.com/tidebase"


@pytest.fixture
async def app(tide_env: TideEnv) -> Starlette:
    app = create_app(worker=False, public_url=PUBLIC_URL, step_delay=0)
    await tide_env.client(app.state.tide)
    return app


@pytest.fixture
async def http(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield client


async def call(
    http: httpx.AsyncClient, method: str, path: str, body: Any = None, *, status: int = 200
) -> Any:
    """The JSON answer of a request that must answer ``status``."""
    resp = await http.request(method, path, json=body)
    assert resp.status_code == status, resp.text
    return resp.json()


async def create(http: httpx.AsyncClient, topic: str) -> str:
    created = await call(http, "POST", "/api/reports", {"topic": topic}, status=201)
    run_id: str = created["id"]
    return run_id


async def test_report_approved_in_the_tidebase_api_is_sent(
    tide_env: TideEnv, http: httpx.AsyncClient
) -> None:
    run_id = await create(http, "Durable workflows")
    await tide_env.run_until_idle()

    view = await call(http, "GET", f"/api/reports/{run_id}")
    assert view["status"] == "waiting"
    assert view["progress"] == {"stage": "awaiting approval", "percent": 75}
    [gate] = view["pending_gates"]
    # The link a notification would carry: the mounted API's resolve route.
    assert gate["resolve_url"] == f"{PUBLIC_URL}/runs/{run_id}/gates/{approval.GATE}/resolve"

    # Resolved in the mounted API (as the dashboard does), the app's own route is late.
    path = f"/tidebase/runs/{run_id}/gates/{approval.GATE}/resolve"
    resolved = await call(http, "POST", path, {"approved": True, "actor": "carol"})
    assert resolved["status"] == "approved"
    late = await call(
        http,
        "POST",
        f"/api/reports/{run_id}/approve",
        {"approved": False, "actor": "dave"},
        status=409,
    )
    assert late == {"error": "the approval was already decided: approved"}

    await tide_env.run_until_idle()
    view = await call(http, "GET", f"/api/reports/{run_id}")
    assert view["status"] == "completed", view
    assert view["output"]["sent"] is True and view["output"]["decided_by"] == "carol"
    assert view["progress"] == {"stage": "sent", "percent": 100}
    assert (await tide_env.step_names(run_id))[-2:] == [approval.GATE, "send"]
    await tide_env.assert_replay_compatible(run_id)


async def test_reports_wait_and_are_decided_independently(
    tide_env: TideEnv, http: httpx.AsyncClient
) -> None:
    topics = ["queues", "leases", "gates"]
    ids = [await create(http, topic) for topic in topics]
    await tide_env.run_until_idle()
    for run_id in ids:
        assert (await call(http, "GET", f"/api/reports/{run_id}"))["status"] == "waiting"

    approve, reject, undecided = ids
    await call(http, "POST", f"/api/reports/{approve}/approve", {"approved": True, "actor": "erin"})
    await call(
        http, "POST", f"/api/reports/{reject}/approve", {"approved": False, "actor": "frank"}
    )
    await tide_env.run_until_idle()

    views = {run_id: await call(http, "GET", f"/api/reports/{run_id}") for run_id in ids}
    assert views[approve]["status"] == "completed"
    assert views[approve]["output"]["sent"] is True
    assert views[reject]["status"] == "completed"
    assert views[reject]["output"]["sent"] is False
    assert views[reject]["progress"] == {"stage": "rejected", "percent": 100}
    assert views[undecided]["status"] == "waiting"
    assert views[undecided]["output"] is None
    assert views[undecided]["topic"] == "gates"
    # Each report was written about its own topic.
    assert views[approve]["output"]["title"] == "A short report on queues"
    assert views[reject]["output"]["title"] == "A short report on leases"


async def test_route_rejects_unknown_and_malformed_requests(http: httpx.AsyncClient) -> None:
    await call(http, "GET", "/api/reports/not-a-uuid", status=404)
    answer = await call(http, "POST", "/api/reports", {"topic": "x", "extra": 1}, status=400)
    assert answer["error"].startswith("invalid body")
    run_id = await create(http, "malformed")
    bad = {"approved": "yes", "actor": "a"}
    await call(http, "POST", f"/api/reports/{run_id}/approve", bad, status=400)
    # Still queued: nothing was decided, nothing ran (no worker in this test).
    assert (await call(http, "GET", f"/api/reports/{run_id}"))["status"] == "queued"
