"""Outbound deliveries (the outbox) and the recovery of inline runs.

Receivers are real aiohttp servers on 127.0.0.1. The recovery tests run the inline run
in a separate process (``inline_app``) and SIGKILL it during step ``s3``; this process
serves ``tide.webhook(execute=True)`` and runs a worker that does not serve the
workflow's queue, so only its reconciler (and the webhook) can bring the run back.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import asyncpg
import msgspec
import pytest
from aiohttp import web

from tests.integration.core_support import eventually, working
from tests.integration.procs import REPO_ROOT, create_step_log, step_log, wait_status
from tests.integration.web_support import (
    API_KEY,
    KINDS,
    SECRET,
    aiohttp_server,
    bearer,
    serve,
    serve_aiohttp,
    snapshot,
)
from tests.integration.worker_app import StepLog
from tests.integration.worker_app import register as register_durable
from tidebase_async import ConfigurationError, GateTokenInvalid, Run, RunFailed, Tidebase
from tidebase_async._util.urls import redact_url
from tidebase_async.engine import outbox as outbox
from tidebase_async.web import DELIVERY_HEADER, SIGNATURE_HEADER, verify

PUBLIC = "https://app.example/tidebase"


class Receiver:
    """Records every delivery (headers and body, signature checked) and answers with
    500 to the first ``fail_first`` attempts of each delivery id."""

    def __init__(self, *, fail_first: int = 0, always: int | None = None) -> None:
        self.fail_first = fail_first
        self.always = always
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.bad_signatures = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            verify(request.headers.get(SIGNATURE_HEADER), body, SECRET)
        except Exception:
            self.bad_signatures += 1
            return web.Response(status=401)
        delivery = request.headers[DELIVERY_HEADER]
        self.requests.append((delivery, json.loads(body)))
        if self.always is not None:
            return web.Response(status=self.always)
        if sum(1 for d, _ in self.requests if d == delivery) <= self.fail_first:
            return web.Response(status=500)
        return web.Response(status=204)

    def delivered(self, event: str) -> list[dict[str, Any]]:
        return [p for _, p in self.requests if p["type"] == event]


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outbox, "backoff_s", lambda attempts: 0.2)


# -- deliveries -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_deliveries_are_retried_with_one_id_and_secrets_never_leak(
    kind: str,
    dsn: str,
    db: asyncpg.Connection,
    fast_backoff: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    receiver = Receiver(fail_first=2)
    async with (
        aiohttp_server([("POST", "/in", receiver.handle)]) as rbase,
        Tidebase(dsn, webhook_secret=SECRET, api_key=API_KEY, public_url=PUBLIC) as tide,
    ):
        url = f"{rbase}/in"

        @tide.workflow("gated")
        async def gated(run: Any, n: int) -> str:
            decision = await run.gate("ok", prompt="ship?", channels=[url])
            return str(decision.decision)

        handle = await tide.enqueue("gated", input=1, webhooks=[url])
        async with serve(tide, kind) as api, working(tide, maintenance_interval=0.05):
            # A failed attempt is visible in runs.get while the delivery is retried.
            async def failed_once() -> bool:
                info = await tide.runs.get(handle.id)
                return any(
                    d.status == "pending" and d.last_status == 500 and d.attempts >= 1
                    for d in info.deliveries
                )

            await eventually(failed_once, what="a failed attempt to show in runs.get")
            await eventually(
                lambda: receiver.delivered("gate.created")[2:],
                what="gate.created to be delivered on its third attempt",
            )
            created = receiver.delivered("gate.created")[-1]
            token = created["resolve_token"]
            assert created["run_id"] == str(handle.id)
            resolve_url = f"{PUBLIC}/runs/{handle.id}/gates/ok/resolve"
            assert created["resolve_url"] == resolve_url
            # The outside reviewer resolves with the token alone, once.
            path = "/tidebase" + resolve_url.removeprefix(PUBLIC)
            resp = await api.post(path, json={"approved": True, "actor": "rev", "token": token})
            assert resp.status_code == 200, resp.text
            resp = await api.post(path, json={"approved": False, "token": token})
            assert resp.status_code in (401, 409), resp.text
            assert await tide.runs.wait(handle.id, timeout=10) == "approved"
            await eventually(
                lambda: (
                    receiver.delivered("gate.resolved")[2:]
                    and receiver.delivered("run.completed")[2:]
                ),
                what="gate.resolved and run.completed to be delivered",
            )
            responses = [
                (await api.get(f"/tidebase/runs/{handle.id}", headers=bearer())).text,
                (await api.get("/tidebase/gates?status=all", headers=bearer())).text,
                (await api.get("/tidebase/runs", headers=bearer())).text,
                (await api.get(f"/tidebase/runs/{handle.id}/events", headers=bearer())).text,
            ]
        info = await tide.runs.get(handle.id)

    # Three attempts per delivery, all under one Tidebase-Delivery id, all signed.
    assert receiver.bad_signatures == 0
    ids: dict[str, list[str]] = {}
    for delivery, payload in receiver.requests:
        ids.setdefault(payload["type"], []).append(delivery)
    assert sorted(ids) == ["gate.created", "gate.resolved", "run.completed"]
    for event, seen in ids.items():
        assert len(seen) == 3 and len(set(seen)) == 1, (event, seen)
        uuid.UUID(seen[0])
    # Outcomes in runs.get: delivered on the third attempt, with the last HTTP status.
    by_event = {d.event: d for d in info.deliveries}
    assert sorted(by_event) == sorted(ids)
    for event, d in by_event.items():
        assert str(d.id) == ids[event][0]
        # URLs are shown without path or query (hook URLs often hold a secret).
        assert (d.status, d.attempts, d.last_status, d.url) == (
            "delivered",
            3,
            204,
            redact_url(url),
        )
        assert d.delivered_at is not None
    # The token left the stored payload once delivered; secrets are nowhere.
    payloads = await db.fetch("SELECT event, payload::text FROM tidebase.outbox")
    assert {r["event"] for r in payloads} == set(ids)
    everything = " ".join(r["payload"] for r in payloads)
    events = await db.fetchval("SELECT string_agg(data::text, ' ') FROM tidebase.events")
    dump = json.dumps(await snapshot(db)) + str(await db.fetch("SELECT * FROM tidebase.gates"))
    for secret in (token, SECRET, API_KEY):
        assert secret not in everything
        assert secret not in (events or "")
        assert secret not in dump
        assert secret not in caplog.text
        for record in caplog.records:
            assert secret not in repr(record.__dict__)
        for text in responses:
            assert secret not in text


async def test_deliveries_retry_and_gate_tokens(dsn: str) -> None:
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
    runner, base = await serve_aiohttp(app)
    try:
        async with Tidebase(dsn, webhook_secret="s3cret", public_url="http://x") as tide:

            @tide.workflow("gated")
            async def gated(run: Run) -> str:
                d = await run.gate("ok", channels=[f"{base}/hook"])
                return d.decision

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
                [msgspec.structs.asdict(r) for r in stored], default=str
            )
    finally:
        await runner.cleanup()


async def test_run_channels_get_failed_and_cancelled(
    dsn: str, db: asyncpg.Connection, fast_backoff: None
) -> None:
    receiver = Receiver()
    async with (
        aiohttp_server([("POST", "/in", receiver.handle)]) as rbase,
        Tidebase(dsn, webhook_secret=SECRET) as tide,
    ):
        url = f"{rbase}/in"

        @tide.workflow("boom", max_attempts=1)
        async def boom(run: Any, n: int) -> int:
            raise ValueError("no")

        failed = await tide.enqueue("boom", input=1, webhooks=[url])
        cancelled = await tide.enqueue("boom", input=2, webhooks=[url], delay=3600)
        await tide.runs.cancel(cancelled.id, reason="not needed")
        async with working(tide, maintenance_interval=0.05):
            await eventually(lambda: len(receiver.requests) >= 2, what="two run-channel deliveries")
    got = {p["type"]: p for _, p in receiver.requests}
    assert got["run.failed"]["run_id"] == str(failed.id)
    assert got["run.failed"]["error"]["type"] == "ValueError"
    assert got["run.cancelled"]["run_id"] == str(cancelled.id)
    assert got["run.cancelled"]["reason"] == "not needed"


# -- recovery of inline runs ------------------------------------------------------------


def spawn_inline(dsn: str, run_id: uuid.UUID, url: str, log_dir: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    with (log_dir / "inline.out").open("wb") as out, (log_dir / "inline.err").open("wb") as err:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.integration.inline_app",
                "--dsn",
                dsn,
                "--run-id",
                str(run_id),
                "--url",
                url,
                "--lease",
                "1.0",
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )


@pytest.fixture
async def durable(dsn: str, db: asyncpg.Connection) -> AsyncIterator[Tidebase]:
    """This process's Tidebase with ``worker_app``'s workflows (steps logged)."""
    await create_step_log(db)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        async with Tidebase(dsn, webhook_secret=SECRET) as tide:
            register_durable(tide, StepLog(pool), "normal")
            yield tide
    finally:
        await pool.close()


async def kill_during_s3(
    dsn: str, db: asyncpg.Connection, run_id: uuid.UUID, url: str, tmp_path: Path
) -> int:
    """Start the inline run in another process, SIGKILL it during ``s3``; its pid."""
    proc = spawn_inline(dsn, run_id, url, tmp_path)
    try:

        async def in_s3() -> bool:
            if proc.poll() is not None:
                raise AssertionError((tmp_path / "inline.err").read_text())
            return ("s3", proc.pid) in await step_log(db, run_id)

        await eventually(in_s3, timeout=20, what="the inline run to reach s3")
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert await db.fetchval("SELECT inline FROM tidebase.runs WHERE id = $1", run_id)
    return proc.pid


async def test_killed_inline_run_is_recovered_through_the_webhook(
    dsn: str, db: asyncpg.Connection, durable: Tidebase, tmp_path: Path
) -> None:
    taps: list[tuple[dict[str, str], bytes, int]] = []
    endpoint = durable.webhook(execute=True)

    async def tap(request: web.Request) -> web.Response:
        """Records what the reconciler sent, then forwards it to the real webhook."""
        body = await request.read()
        async with (
            aiohttp.ClientSession() as http,
            http.post(request.url.with_path("/real"), data=body, headers=request.headers) as r,
        ):
            answer = await r.read()
        taps.append((dict(request.headers), body, r.status))
        return web.Response(status=r.status, body=answer, content_type="application/json")

    run_id = uuid.uuid4()
    async with aiohttp_server([("POST", "/hook", tap), ("POST", "/real", endpoint)]) as base:
        dead = await kill_during_s3(dsn, db, run_id, f"{base}/hook", tmp_path)
        assert await db.fetchval("SELECT count(*) FROM tidebase.outbox") == 0
        async with working(durable, queues=["elsewhere"], lease=5.0, maintenance_interval=0.2):
            output = await durable.runs.wait(run_id, timeout=20)

            # The run completes inside the webhook's request; the delivery's outcome is
            # recorded once that request has answered.
            async def settled() -> bool:
                deliveries = (await durable.runs.get(run_id)).deliveries
                return bool(deliveries) and deliveries[0].status != "pending"

            await eventually(settled, timeout=10, what="the delivery's outcome")
        info = await durable.runs.get(run_id)

    assert output["pid"] == os.getpid()
    assert output["s1"] == f"s1@{dead}" and output["s2"] == f"s2@{dead}"
    assert output["s3"] == f"s3@{os.getpid()}"
    log = await step_log(db, run_id)
    assert [s for s, _ in log if s == "s1"] == ["s1"] and [s for s, _ in log if s == "s2"] == ["s2"]
    assert log[:3] == [("s1", dead), ("s2", dead), ("s3", dead)]
    assert [pid for s, pid in log if s == "s3"] == [dead, os.getpid()]
    # One signed run.resume, answered 200 by the webhook, under its delivery id.
    assert len(taps) == 1, taps
    headers, body, status = taps[0]
    assert status == 200
    verify(headers[SIGNATURE_HEADER], body, SECRET)
    payload = json.loads(body)
    assert payload == {
        "type": "run.resume",
        "run_id": str(run_id),
        "workflow": "durable",
        "reason": "lease_expired",
        "attempt": payload["attempt"],
    }
    (delivery,) = info.deliveries
    assert (delivery.event, delivery.status, delivery.attempts, delivery.last_status) == (
        "run.resume",
        "delivered",
        1,
        200,
    )
    assert str(delivery.id) == headers[DELIVERY_HEADER]
    assert info.status == "completed"


async def test_spent_recovery_deliveries_fail_the_run(
    dsn: str,
    db: asyncpg.Connection,
    durable: Tidebase,
    tmp_path: Path,
    fast_backoff: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = durable.store
    monkeypatch.setattr(
        store, "requeue_expired", functools.partial(store.requeue_expired, recovery_attempts=3)
    )
    receiver = Receiver(always=500)
    run_id = uuid.uuid4()
    async with aiohttp_server([("POST", "/hook", receiver.handle)]) as base:
        dead = await kill_during_s3(dsn, db, run_id, f"{base}/hook", tmp_path)
        async with working(durable, queues=["elsewhere"], lease=5.0, maintenance_interval=0.05):
            await wait_status(db, run_id, "failed", timeout=20)
            with pytest.raises(RunFailed) as caught:
                await durable.runs.wait(run_id, timeout=5)
        info = await durable.runs.get(run_id)

    assert info.error is not None and info.error["type"] == "RecoveryFailed"
    assert redact_url(f"{base}/hook") in info.error["message"]
    assert "/hook" not in info.error["message"]
    assert "RecoveryFailed" in str(caught.value) or caught.value.error["type"] == "RecoveryFailed"
    (delivery,) = info.deliveries
    assert (delivery.event, delivery.status, delivery.attempts, delivery.last_status) == (
        "run.resume",
        "failed",
        3,
        500,
    )
    assert [d for d, _ in receiver.requests] == [str(delivery.id)] * 3
    # Nothing resumed the run: s3 ran only in the killed process.
    assert await step_log(db, run_id) == [("s1", dead), ("s2", dead), ("s3", dead)]


async def test_recovery_webhook_needs_a_secret(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIDEBASE_WEBHOOK_SECRET", raising=False)
    from tidebase_async import ConfigurationError

    async with Tidebase(dsn) as tide:

        @tide.workflow("w")
        async def w(run: Any, n: Any) -> int:
            return 1

        with pytest.raises(ConfigurationError):
            await tide.run("w", recovery_webhook="http://127.0.0.1:9/hook")
        with pytest.raises(ConfigurationError):
            await tide.enqueue("w", webhooks=["http://127.0.0.1:9/hook"])


# -- hostile URLs and receivers ----------------------------------------------------------

BAD_WEBHOOK_URLS = [
    "http://127.0.0.1:99999/cb",  # port out of range
    "http://[::1/x",  # unbalanced IPv6 bracket
    "http://h:%31/x",  # a port that is not a number
    "http://:80/x",  # no host
    "ftp://example.com/x",  # not http(s)
    "http://exa mple.com/x",  # whitespace
    "http://example.com/\x7f",  # a control character
    "http://example.com:0/x",  # port 0
    "https://example.com/" + "a" * 2100,  # too long
]


@pytest.mark.parametrize("url", BAD_WEBHOOK_URLS)
async def test_a_malformed_webhook_url_is_refused_at_enqueue_and_nothing_is_written(
    url: str, dsn: str, db: asyncpg.Connection
) -> None:
    """Regression: such URLs were accepted, and redacting them for the log then raised
    in the reconciler every tick, stopping requeues, timers and schedules."""
    async with Tidebase(dsn, webhook_secret=SECRET) as tide:
        with pytest.raises(ConfigurationError, match="webhooks") as info:
            await tide.enqueue("noop", webhooks=[url])
        assert url not in str(info.value) or len(url) < 30  # the message shows it redacted
    assert await db.fetchval("SELECT count(*) FROM tidebase.runs") == 0


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:99999/cb", "http://[::1/x", "http://h:%31/x", "not a url"]
)
def test_redacting_any_url_never_raises(url: str) -> None:
    assert redact_url(url) == "<url>"


async def test_a_stored_unusable_delivery_url_does_not_stop_the_reconciler(
    dsn: str, db: asyncpg.Connection, fast_backoff: None
) -> None:
    """A delivery whose URL cannot be sent to (stored by an older release) fails its
    attempts like any other; the reconciler keeps ticking, and the run stays readable
    through the API and over HTTP."""
    bad = "http://127.0.0.1:99999/cb"
    async with Tidebase(dsn, webhook_secret=SECRET, api_key=API_KEY) as tide:

        @tide.workflow("done")
        async def done(run: Run) -> int:
            return 1

        handle = await tide.enqueue("done", webhooks=["http://127.0.0.1:9/ok"])
        # What an older release let through, written past today's checks.
        await db.execute(
            "UPDATE tidebase.runs SET channels = $2::jsonb WHERE id = $1",
            handle.id,
            json.dumps([bad]),
        )
        async with working(tide, maintenance_interval=0.1) as worker:
            assert await tide.runs.wait(handle.id, timeout=10) == 1
            await eventually(
                lambda: _attempts(db, handle.id),
                timeout=10,
                what="the bad delivery to be attempted twice",
            )
            ticks = worker.stats.maintenance_ticks
            await anyio.sleep(0.5)
            assert worker.stats.maintenance_ticks > ticks
        info = await tide.runs.get(handle.id)
        assert [d.url for d in info.deliveries] == ["<url>"]
        async with serve(tide, "aiohttp") as client:
            resp = await client.get(f"/tidebase/runs/{handle.id}", headers=bearer())
            assert resp.status_code == 200


async def _attempts(db: asyncpg.Connection, run_id: uuid.UUID) -> bool:
    n = await db.fetchval("SELECT max(attempts) FROM tidebase.outbox WHERE run_id = $1", run_id)
    return bool(n is not None and n >= 2)


async def test_a_receiver_answering_an_endless_body_is_not_read_to_the_end(
    dsn: str, db: asyncpg.Connection
) -> None:
    """Regression: the whole answer was read into memory (300 MB took a worker to
    663 MB); now at most 64 KiB is read and the status decides."""
    sent = 0

    async def endless(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        await request.read()
        resp = web.StreamResponse(status=200)
        await resp.prepare(request)
        chunk = b"x" * 65536
        with contextlib.suppress(ConnectionError):
            for _ in range(10_000):  # 640 MB if anyone read it all
                await resp.write(chunk)
                sent += len(chunk)
        return resp

    async with (
        aiohttp_server([("POST", "/in", endless)]) as rbase,
        Tidebase(dsn, webhook_secret=SECRET) as tide,
    ):

        @tide.workflow("done")
        async def done(run: Run) -> int:
            return 1

        handle = await tide.enqueue("done", webhooks=[f"{rbase}/in"])
        async with working(tide, maintenance_interval=0.1):
            assert await tide.runs.wait(handle.id, timeout=10) == 1
            await eventually(
                lambda: _delivered(db, handle.id), timeout=8, what="the delivery to be recorded"
            )
    assert sent < 64 * 1024 * 1024


async def _delivered(db: asyncpg.Connection, run_id: uuid.UUID) -> bool:
    status = await db.fetchval("SELECT status FROM tidebase.outbox WHERE run_id = $1", run_id)
    return bool(status == "delivered")
