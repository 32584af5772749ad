"""Helpers of the web-layer tests: the same app served by aiohttp on 127.0.0.1 or by
Starlette (through ``httpx.ASGITransport``, or on a real port by uvicorn), a database
snapshot to prove that refused requests wrote nothing, and signing helpers.

Layout of every served app: the HTTP API under ``/tidebase`` and the inbound webhook at
``POST /hook``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

import asyncpg
import httpx
import uvicorn
from aiohttp import web
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from tidebase_async import Tidebase

#: The two ways the tests reach the API and the webhook.
KINDS = ("aiohttp", "starlette")
#: Every POST of the API is JSON (a bodiless one too); the server refuses other types.
JSON_HEADERS = {"Content-Type": "application/json"}

API_KEY = "test-api-key-4d1b7e0c93"
SECRET = "test-webhook-secret-a8f2c6"
OLD_SECRET = "test-webhook-secret-old-77e0"

#: Every table a request could write to.
TABLES = (
    "runs",
    "steps",
    "events",
    "gates",
    "outbox",
    "schedules",
    "queues",
    "keyed_events",
    "event_waits",
)

AiohttpRoute = tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]


async def serve_aiohttp(app: web.Application) -> tuple[web.AppRunner, str]:
    """Serve ``app`` on 127.0.0.1, a free port; return the runner and the base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return runner, f"http://127.0.0.1:{port}"


@contextlib.asynccontextmanager
async def aiohttp_server(
    routes: list[AiohttpRoute],
) -> AsyncIterator[str]:
    """A plain aiohttp server with ``routes`` (method, path, handler); yields its base."""
    app = web.Application()
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
    runner, base = await serve_aiohttp(app)
    try:
        yield base
    finally:
        await runner.cleanup()


def starlette_app(tide: Tidebase, *, execute: bool = False) -> Starlette:
    return Starlette(
        routes=[
            Mount("/tidebase", app=tide.asgi_app()),
            Route("/hook", tide.webhook(execute=execute), methods=["POST"]),
        ]
    )


@contextlib.asynccontextmanager
async def serve(
    tide: Tidebase, kind: str, *, execute: bool = False
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of ``tide``'s API (``/tidebase``) and webhook (``/hook``) served by
    ``kind``: ``aiohttp`` (a real server on 127.0.0.1), ``starlette`` (ASGI transport,
    in process) or ``uvicorn`` (the Starlette app on a real port: streams live)."""
    if kind == "aiohttp":
        app = web.Application()
        app.add_subapp("/tidebase/", tide.http_app())
        app.router.add_post("/hook", tide.webhook(execute=execute))
        runner, base = await serve_aiohttp(app)
        try:
            async with httpx.AsyncClient(
                base_url=base, trust_env=False, timeout=20, headers=JSON_HEADERS
            ) as client:
                yield client
        finally:
            await runner.cleanup()
    elif kind == "starlette":
        transport = httpx.ASGITransport(app=starlette_app(tide, execute=execute))
        # A loopback host: without an API key the API serves no other.
        async with httpx.AsyncClient(
            transport=transport, base_url="http://127.0.0.1", timeout=20, headers=JSON_HEADERS
        ) as client:
            yield client
    elif kind == "uvicorn":
        async with (
            uvicorn_url(starlette_app(tide, execute=execute)) as base,
            httpx.AsyncClient(
                base_url=base, trust_env=False, timeout=20, headers=JSON_HEADERS
            ) as client,
        ):
            yield client
    else:  # pragma: no cover - a typo in a parametrization
        raise ValueError(kind)


@contextlib.asynccontextmanager
async def uvicorn_url(app: Any, *, lifespan: Literal["on", "off"] = "off") -> AsyncIterator[str]:
    """``app`` served by uvicorn on a free loopback port while inside; yields its base
    URL. Leaving stops the server and waits for it."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, lifespan=lifespan, ws="none", log_level="warning"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                await task
                raise AssertionError("uvicorn stopped before it started")
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        await task


def bearer(key: str = API_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def error_of(resp: httpx.Response) -> dict[str, Any]:
    """The ``{"code", "message"}`` of a JSON error response (asserts its shape)."""
    assert resp.headers["content-type"].startswith("application/json"), resp.text
    body = resp.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str)
    error: dict[str, Any] = body["error"]
    return error


async def snapshot(db: asyncpg.Connection) -> dict[str, tuple[int, str]]:
    """(row count, digest of every row) per table of the schema."""
    out: dict[str, tuple[int, str]] = {}
    for table in TABLES:
        row = await db.fetchrow(
            f"SELECT count(*), coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)), '') "
            f"FROM tidebase.{table} x"
        )
        out[table] = (int(row[0]), str(row[1]))
    return out


def sse_events(text: str) -> list[tuple[int, str, Any]]:
    """(id, event, data) of every event of a complete server-sent-events text."""
    events: list[tuple[int, str, Any]] = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":") or ": " not in line:
                continue
            key, _, value = line.partition(": ")
            fields[key] = value
        if "id" in fields:
            events.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
    return events
