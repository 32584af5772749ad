"""The inbound webhook (``tide.webhook()``) mounted in aiohttp (a real server) and in
Starlette (ASGI): signature checks, refusals and their statuses, and ``run.resume``
handled by enqueueing or by executing the run in the request."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from tests.integration.core_support import status_of
from tests.integration.web_support import KINDS, OLD_SECRET, SECRET, error_of, serve, snapshot
from tidebase_async import ConfigurationError, Run, Tidebase
from tidebase_async.web import sign


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    """Each test that takes ``kind`` runs once per way of serving the app."""
    served: str = request.param
    return served


def register(tide: Tidebase) -> None:
    @tide.workflow("double")
    async def double(run: Run, n: int) -> int:
        return int(await run.step("double", lambda: n * 2))

    @tide.workflow("other")
    async def other(run: Run, n: int) -> int:
        return n


@pytest.fixture
async def signed(dsn: str) -> AsyncIterator[Tidebase]:
    async with Tidebase(dsn, webhook_secret=SECRET) as tide:
        register(tide)
        yield tide


def resume(run_id: uuid.UUID | str, workflow: str = "double", **extra: Any) -> bytes:
    return json.dumps(
        {"type": "run.resume", "run_id": str(run_id), "workflow": workflow, **extra}
    ).encode()


async def post(
    client: httpx.AsyncClient, body: bytes, signature: str | bytes | None
) -> httpx.Response:
    headers: dict[str, Any] = {"Content-Type": "application/json"}
    if signature is not None:
        headers["Tidebase-Signature"] = signature
    return await client.post("/hook", content=body, headers=headers)


async def test_bad_signatures_are_401_and_change_nothing(
    kind: str, signed: Tidebase, db: asyncpg.Connection
) -> None:
    handle = await signed.enqueue("double", input=2)
    body = resume(handle.id)
    now = int(time.time())
    good = sign(SECRET, body)
    digest = good.partition(",v1=")[2]
    cases: dict[str, tuple[bytes, str | bytes | None]] = {
        "missing header": (body, None),
        "empty header": (body, ""),
        "wrong secret": (body, sign("not-the-secret", body)),
        "secret with a suffix": (body, sign(SECRET + "x", body)),
        "tampered body": (body.replace(b"double", b"other"), good),
        "body with a trailing space": (body + b" ", good),
        "stale timestamp": (body, sign(SECRET, body, timestamp=now - 301)),
        "very old timestamp": (body, sign(SECRET, body, timestamp=1)),
        # Well past the tolerance: the request is checked a moment after `now` was read.
        "timestamp from the future": (body, sign(SECRET, body, timestamp=now + 330)),
        "timestamp of another signature": (body, f"t={now - 7},v1={digest}"),
        "no timestamp": (body, f"v1={digest}"),
        "no v1": (body, f"t={now}"),
        "v0 only": (body, f"t={now},v0={digest}"),
        "garbage": (body, "garbage"),
        "two timestamps": (body, f"t={now},t={now},v1={digest}"),
        "negative timestamp": (body, f"t=-{now},v1={digest}"),
        "unicode digits": (body, f"t=١٢٣,v1={digest}".encode()),
        "exponent timestamp": (body, f"t=1e9,v1={digest}"),
        "upper-case digest": (body, f"t={good[2:12]},v1={digest.upper()}"),
        "truncated digest": (body, good[:-1]),
        "huge header": (body, good + ",v1=" + "0" * 5000),
    }
    before = await snapshot(db)
    async with serve(signed, kind) as client:
        for what, (payload, signature) in cases.items():
            resp = await post(client, payload, signature)
            assert resp.status_code == 401, (what, resp.text)
            assert error_of(resp)["code"] == "unauthorized", what
            assert SECRET not in resp.text and digest not in resp.text, what
    assert await snapshot(db) == before


async def test_valid_signatures_within_tolerance_and_rotation_are_accepted(
    kind: str, signed: Tidebase, db: asyncpg.Connection
) -> None:
    handle = await signed.enqueue("double", input=2)
    body = resume(handle.id, reason="lease_expired", attempt=1)
    now = int(time.time())
    async with serve(signed, kind) as client:
        for what, signature in {
            "current secret": sign(SECRET, body),
            "old and new secret (rotation)": sign([OLD_SECRET, SECRET], body),
            "new and old secret": sign([SECRET, OLD_SECRET], body),
            "several wrong then the right one": sign(["a", "b", "c", SECRET], body),
            "almost stale": sign(SECRET, body, timestamp=now - 280),
            "slightly ahead": sign(SECRET, body, timestamp=now + 280),
            "spaces after commas": sign([OLD_SECRET, SECRET], body).replace(",", ", "),
        }.items():
            resp = await post(client, body, signature)
            assert resp.status_code == 202, (what, resp.text)
            assert resp.json() == {"id": str(handle.id), "status": "queued"}, what
        # Rotation the other way: only old secrets sign it.
        resp = await post(client, body, sign([OLD_SECRET, "older"], body))
        assert resp.status_code == 401
    assert await status_of(db, handle.id) == "queued"


async def test_unknown_type_is_400_unknown_workflow_and_run_404(
    kind: str, signed: Tidebase, db: asyncpg.Connection
) -> None:
    handle = await signed.enqueue("double", input=2)
    before = await snapshot(db)
    cases: list[tuple[bytes, int, str]] = [
        (json.dumps({"type": "run.pause", "run_id": str(handle.id)}).encode(), 400, "unknown_type"),
        (json.dumps({"type": "gate.created"}).encode(), 400, "unknown_type"),
        (json.dumps({"type": ""}).encode(), 400, "unknown_type"),
        (b'{"type": 1}', 400, "bad_request"),
        (b"[]", 400, "bad_request"),
        (b"not json", 400, "bad_request"),
        (b"", 400, "bad_request"),
        (json.dumps({"type": "run.resume"}).encode(), 400, "bad_request"),
        (resume("not-a-uuid"), 400, "bad_request"),
        (resume(handle.id, attempt="one"), 400, "bad_request"),
        (resume(handle.id, workflow="nope"), 404, "unknown_workflow"),
        (resume(handle.id, workflow="é🙂\u202e"), 404, "unknown_workflow"),
        (resume(uuid.uuid4()), 404, "not_found"),
        (resume(handle.id, workflow="other"), 400, "bad_request"),
    ]
    async with serve(signed, kind) as client:
        for body, status, code in cases:
            resp = await post(client, body, sign(SECRET, body))
            assert resp.status_code == status, (body, resp.text)
            assert error_of(resp)["code"] == code, body
        resp = await client.get("/hook")
        assert resp.status_code == 405
    assert await snapshot(db) == before


async def test_without_a_secret_every_request_is_refused(
    kind: str, dsn: str, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TIDEBASE_WEBHOOK_SECRET", raising=False)
    async with Tidebase(dsn) as tide:
        register(tide)
        handle = await tide.enqueue("double", input=2)
        body = resume(handle.id)
        before = await snapshot(db)
        async with serve(tide, kind, execute=True) as client:
            for signature in (None, "", sign(SECRET, body), "t=1,v1=00"):
                resp = await post(client, body, signature)
                assert resp.status_code == 401, resp.text
                assert "secret" in error_of(resp)["message"]
        assert await snapshot(db) == before
        assert await status_of(db, handle.id) == "queued"


async def test_webhook_signatures(dsn: str) -> None:
    async with Tidebase(dsn, webhook_secret="s3cret") as tide:

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


async def test_execute_runs_the_workflow_in_the_request(
    kind: str, signed: Tidebase, db: asyncpg.Connection
) -> None:
    handle = await signed.enqueue("double", input=21)
    body = resume(handle.id)
    async with serve(signed, kind, execute=True) as client:
        resp = await post(client, body, sign(SECRET, body))
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"id": str(handle.id), "status": "completed", "output": 42}
        # A repeated delivery (same run) is harmless: the stored output comes back.
        resp = await post(client, body, sign(SECRET, body))
        assert resp.status_code == 200, resp.text
        assert resp.json()["output"] == 42
    assert await status_of(db, handle.id) == "completed"
    assert (
        await db.fetchval("SELECT count(*) FROM tidebase.steps WHERE run_id = $1", handle.id) == 1
    )


async def test_with_separate_secrets_a_delivery_signature_cannot_resume_a_run(
    dsn: str, db: asyncpg.Connection
) -> None:
    """Regression: one secret signed outbound deliveries and checked inbound
    ``run.resume``, so every receiver of a delivery could forge a ``run.resume`` (with
    ``execute=True`` that runs the run and returns its output). With ``signing_secret``
    beside ``webhook_secret``, a receiver's copy of the signing secret opens nothing."""
    outbound = "the-outbound-secret"
    async with Tidebase(dsn, webhook_secret=SECRET, signing_secret=outbound) as tide:
        register(tide)
        assert tide.outbound_secret == outbound
        handle = await tide.enqueue("double", input=2)
        body = resume(handle.id)
        before = await snapshot(db)
        async with serve(tide, "aiohttp", execute=True) as client:
            forged = await post(client, body, sign(outbound, body))
            assert forged.status_code == 401, forged.text
            assert await snapshot(db) == before
            genuine = await post(client, body, sign(SECRET, body))
            assert genuine.status_code == 200, genuine.text
            assert genuine.json()["output"] == 4


async def test_one_secret_still_signs_both_ways(dsn: str) -> None:
    """The single-setting configuration keeps working: webhook_secret signs deliveries
    too when no signing_secret is set."""
    async with Tidebase(dsn, webhook_secret=SECRET) as tide:
        assert tide.outbound_secret == SECRET
        await tide.enqueue("double", input=1, webhooks=["https://example.com/hook"])
    async with Tidebase(dsn) as bare:
        with pytest.raises(ConfigurationError, match="signing_secret"):
            await bare.enqueue("double", input=1, webhooks=["https://example.com/hook"])
