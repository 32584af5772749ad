"""The SSE event stream (``GET /runs/{id}/events``) on real servers (aiohttp, and the
Starlette app under uvicorn): resuming with ``Last-Event-ID`` while the run is still
producing events loses nothing and repeats nothing, and the stream ends once its client
has gone."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import uuid
from collections.abc import MutableMapping
from typing import Any

import anyio
import asyncpg
import httpx
import pytest

from tests.integration.core_support import working
from tests.integration.web_support import API_KEY, serve, sse_events
from tidebase_async import Run, Tidebase
from tidebase_async.store.sql import Q

STEPS = 25


def register(tide: Tidebase) -> None:
    @tide.workflow("chatty")
    async def chatty(run: Run, n: int) -> int:
        async def tick(i: int) -> int:
            await anyio.sleep(0.03)
            return i

        total = 0
        for i in range(n):
            await run.state.patch({"i": i})
            total += await run.step("tick", tick, i)
        return total


async def read_events(
    client: httpx.AsyncClient, run_id: uuid.UUID, *, last: int | None, stop_after: int | None
) -> list[tuple[int, str, Any]]:
    """Events of one connection; disconnects after ``stop_after`` events when given."""
    headers = {} if last is None else {"Last-Event-ID": str(last)}
    text = ""
    async with client.stream("GET", f"/tidebase/runs/{run_id}/events", headers=headers) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        async for chunk in resp.aiter_text():
            text += chunk
            if stop_after is not None and len(sse_events(_complete(text))) >= stop_after:
                break
    return sse_events(_complete(text))


def _complete(text: str) -> str:
    """Only the events whose blank-line terminator arrived."""
    return text[: text.rfind("\n\n") + 2] if "\n\n" in text else ""


@pytest.mark.parametrize("kind", ["aiohttp", "uvicorn"])
async def test_sse_resumes_from_last_event_id_without_gap_or_duplicate(
    kind: str, tide: Tidebase, db: asyncpg.Connection
) -> None:
    register(tide)
    handle = await tide.enqueue("chatty", input=STEPS)
    async with serve(tide, kind) as client, working(tide):
        first = await read_events(client, handle.id, last=None, stop_after=8)
        assert len(first) >= 8
        status_at_disconnect = await tide.runs.get(handle.id)
        second = await read_events(client, handle.id, last=first[-1][0], stop_after=None)
        third = await read_events(client, handle.id, last=second[-1][0] - 3, stop_after=None)
    # The first connection really was live: the run had events still to produce.
    assert status_at_disconnect.status != "completed"
    rows = await db.fetch(Q["list_events"], handle.id, 0, 100_000)
    n = len(rows)
    assert n > 2 * STEPS
    ids = [seq for seq, _, _ in first + second]
    assert ids == list(range(1, n + 1)), "gap or duplicate across the reconnection"
    assert [(seq, typ) for seq, typ, _ in first + second] == [(r["seq"], r["type"]) for r in rows]
    assert second[-1][1] == "run.completed"
    assert [seq for seq, _, _ in third] == [n - 2, n - 1, n]


@pytest.mark.parametrize("kind", ["aiohttp", "uvicorn", "starlette"])
async def test_sse_of_a_finished_run_ends_and_honours_after(
    kind: str, tide: Tidebase, db: asyncpg.Connection
) -> None:
    register(tide)
    handle = await tide.enqueue("chatty", input=2)
    async with working(tide):
        await tide.runs.wait(handle.id, timeout=10)
    n = await db.fetchval("SELECT count(*) FROM tidebase.events WHERE run_id = $1", handle.id)
    async with serve(tide, kind) as client:
        everything = await read_events(client, handle.id, last=None, stop_after=None)
        assert [seq for seq, _, _ in everything] == list(range(1, len(everything) + 1))
        assert len(everything) >= n
        resp = await client.get(f"/tidebase/runs/{handle.id}/events?after=2")
        assert sse_events(resp.text)[0][0] == 3
        last = everything[-1][0]
        resp = await client.get(
            f"/tidebase/runs/{handle.id}/events", headers={"Last-Event-ID": str(last)}
        )
        assert resp.status_code == 200 and sse_events(resp.text) == []


async def test_asgi_event_stream_ends_when_the_client_disconnects(dsn: str) -> None:
    """Regression: the ASGI adapter's event stream kept running after its client
    disconnected (as under uvicorn, where sending to a gone client is a silent no-op)."""
    async with Tidebase(dsn, api_key=API_KEY) as keyed:
        register(keyed)
        handle = await keyed.enqueue("chatty", input=1)  # stays queued: no worker
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


async def test_an_aiohttp_client_going_away_mid_stream_logs_no_traceback(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: only ConnectionResetError was caught when an SSE client went away.
    A client that stopped reading (the server's writer paused on a full buffer) and
    then reset the connection makes aiohttp raise a bare ConnectionError("Connection
    lost"), and each such disconnect logged a traceback."""
    from aiohttp import web

    from tests.integration.web_support import serve_aiohttp

    caplog.set_level(logging.DEBUG)
    release = asyncio.Event()
    async with Tidebase(dsn, api_key=API_KEY) as keyed:

        @keyed.workflow("loud")
        async def loud(run: Run) -> None:
            await run.step("wait", release.wait)
            for _ in range(40):
                await run.emit("x" * 200_000)
                await anyio.sleep(0.01)

        handle = await keyed.enqueue("loud")
        app = web.Application()
        app.add_subapp("/tidebase/", keyed.http_app())
        runner, base = await serve_aiohttp(app)
        try:
            host, port = base.removeprefix("http://").split(":")
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
            reader, writer = await asyncio.open_connection(sock=sock)
            writer.write(
                f"GET /tidebase/runs/{handle.id}/stream HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Bearer {API_KEY}\r\n\r\n".encode()
            )
            await writer.drain()
            assert b"200" in await reader.readline()
            async with working(keyed):
                release.set()
                await anyio.sleep(1.0)  # chunks pile up unread: the server's writer pauses
                writer.transport.abort()  # a reset (SO_LINGER 0), not a goodbye
                await keyed.runs.wait(handle.id, timeout=20)
            await asyncio.sleep(0.3)
        finally:
            await runner.cleanup()
    tracebacks = [r for r in caplog.records if r.exc_info and r.levelno >= logging.ERROR]
    assert tracebacks == [], [r.getMessage() for r in tracebacks]
