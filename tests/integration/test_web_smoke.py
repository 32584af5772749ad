"""Smoke tests of the web layer (aiohttp server on 127.0.0.1 and raw ASGI)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

from tests.integration.core_support import working
from tidebase_async import GateTokenInvalid, Run, Tidebase
from tidebase_async.web import sign


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def test_http_api_enqueue_get_resolve_and_events(tide: Tidebase) -> None:
    @tide.workflow("ask")
    async def ask(run: Run, n: int) -> str:
        d = await run.gate("ok")
        return f"{n}:{d.decision}"

    app = web.Application()
    app.add_subapp("/tidebase/", tide.http_app())
    runner, base = await _serve(app)
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


async def test_webhook_signatures(dsn: str) -> None:
    from tests.conftest import opened

    async with opened(Tidebase(dsn, webhook_secret="s3cret")) as tide:

        @tide.workflow("w")
        async def w(run: Run) -> int:
            return 1

        handle = await tide.enqueue("w")
        endpoint = tide.webhook()
        body = json.dumps(
            {"type": "run.resume", "run_id": str(handle.id), "workflow": "w"}
        ).encode()

        async def call(headers: dict[str, str], payload: bytes = body) -> tuple[int, Any]:
            sent: list[dict[str, Any]] = []

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": payload, "more_body": False}

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)

            scope = {
                "type": "http",
                "method": "POST",
                "path": "/hook",
                "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
                "query_string": b"",
            }
            await endpoint(scope, receive, send)
            return sent[0]["status"], json.loads(sent[1]["body"])

        assert (await call({}))[0] == 401
        assert (await call({"Tidebase-Signature": sign("wrong", body)}))[0] == 401
        stale = sign("s3cret", body, timestamp=1)
        assert (await call({"Tidebase-Signature": stale}))[0] == 401
        status, answer = await call({"Tidebase-Signature": sign(["old", "s3cret"], body)})
        assert (status, answer["status"]) == (202, "queued")
        tampered = body.replace(b"run.resume", b"run.resumf")
        assert (await call({"Tidebase-Signature": sign("s3cret", body)}, tampered))[0] == 401
        other = json.dumps({"type": "x"}).encode()
        assert (await call({"Tidebase-Signature": sign("s3cret", other)}, other))[0] == 400


async def test_deliveries_retry_and_gate_tokens(dsn: str) -> None:
    from tests.conftest import opened
    from tidebase_async.web import verify

    received: list[dict[str, Any]] = []
    failures = [2]

    async def receiver(request: web.Request) -> web.Response:
        body = await request.read()
        verify(request.headers.get("Tidebase-Signature"), body, "s3cret")
        if failures[0] > 0:
            failures[0] -= 1
            return web.Response(status=500)
        received.append({"id": request.headers["Tidebase-Delivery"], **json.loads(body)})
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", receiver)
    runner, base = await _serve(app)
    try:
        async with opened(Tidebase(dsn, webhook_secret="s3cret", public_url="http://x")) as tide:

            @tide.workflow("gated")
            async def gated(run: Run) -> str:
                d = await run.gate("ok", channels=[f"{base}/hook"])
                return d.decision

            from tidebase_async.engine import outbox as outbox

            original = outbox.backoff_s
            outbox.backoff_s = lambda attempts: 0.05
            try:
                h = await tide.enqueue("gated", webhooks=[f"{base}/hook"])
                async with working(tide, maintenance_interval=0.1):
                    for _ in range(200):
                        if received:
                            break
                        await anyio.sleep(0.05)
                    created = received[0]
                    assert created["type"] == "gate.created"
                    assert created["resolve_url"].startswith("http://x/runs/")
                    token = created["resolve_token"]
                    with pytest.raises(GateTokenInvalid):
                        await tide.gates.resolve(h.id, "ok", approved=True, token="nope")
                    await tide.gates.resolve(h.id, "ok", approved=True, token=token)
                    assert await tide.runs.wait(h.id, timeout=10) == "approved"
                    for _ in range(200):
                        info = await tide.runs.get(h.id)
                        if len(info.deliveries) == 3 and all(
                            d.status == "delivered" for d in info.deliveries
                        ):
                            break
                        await anyio.sleep(0.05)
                info = await tide.runs.get(h.id)
            finally:
                outbox.backoff_s = original
            assert sorted(d.event for d in info.deliveries) == [
                "gate.created",
                "gate.resolved",
                "run.completed",
            ]
            assert all(d.status == "delivered" for d in info.deliveries)
            assert max(d.attempts for d in info.deliveries) == 3
            stored = await tide.store.get_deliveries(h.id)
            assert stored and "resolve_token" not in json.dumps(
                [dict(r) for r in stored], default=str
            )
    finally:
        await runner.cleanup()


async def test_queue_schedule_and_search_routes(tide: Tidebase) -> None:
    import httpx

    @tide.workflow("noop", queue="jobs")
    async def noop(run: Run) -> None:
        return None

    transport = httpx.ASGITransport(app=tide.asgi_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
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
