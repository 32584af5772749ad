"""aiohttp and ASGI adapters for the framework-neutral handlers.

An ``Endpoint`` is at once an aiohttp handler (``handler(request)``) and an ASGI
application (``app(scope, receive, send)``), so ``tide.webhook()`` mounts unchanged in
aiohttp, Starlette and FastAPI. aiohttp is a dependency; nothing here imports a
framework that is not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

import anyio
import msgspec
from aiohttp import web

from tidebase_async.web.core import (
    Handler,
    HttpRequest,
    HttpResponse,
    error_for,
    error_response,
)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class BodyTooLarge(Exception):
    """The request body is over the endpoint's limit (answered with 413)."""


class Endpoint:
    """``handler`` behind aiohttp and ASGI: a request's body is read only once
    ``handler.admit`` accepted the request without it, and only up to the size it
    allows. ``mounted``: the request path below the mount point is the route (a
    sub-application); else the whole path is ignored (a single route such as the
    webhook)."""

    def __init__(self, handler: Handler, *, mounted: bool) -> None:
        self._handler = handler
        self._mounted = mounted
        # aiohttp accepts coroutine functions as handlers without a deprecation
        # warning; an instance with an async __call__ is one in all but name (the
        # marker asyncio.iscoroutinefunction looks for before Python 3.14).
        self._is_coroutine = getattr(asyncio.coroutines, "_is_coroutine", None)

    async def __call__(self, *args: Any) -> Any:
        if len(args) == 3:
            return await self.asgi(args[0], args[1], args[2])
        if len(args) == 1 and isinstance(args[0], web.BaseRequest):
            return await self.aiohttp(args[0])
        raise TypeError("call with an aiohttp request, or as an ASGI app (scope, receive, send)")

    # -- aiohttp ----------------------------------------------------------------------

    async def aiohttp(self, request: web.BaseRequest) -> web.StreamResponse:
        path = "/"
        if self._mounted:
            tail = request.match_info.get("tail", "") if isinstance(request, web.Request) else ""
            path = "/" + tail
        head = HttpRequest(
            method=request.method,
            path=path,
            query={k: v for k, v in reversed(list(request.query.items()))},
            headers={k.lower(): v for k, v in request.headers.items()},
        )
        try:
            limit = self._handler.admit(head)
        except Exception as exc:
            return _aiohttp_response(error_for(exc))
        if request.content_length is not None and request.content_length > limit:
            return _aiohttp_response(_too_large(limit))
        # StreamReader.read(n) returns what has arrived, up to n: read to the end.
        buffer = bytearray()
        while chunk := await request.content.read(65536):
            buffer += chunk
            if len(buffer) > limit:
                return _aiohttp_response(_too_large(limit))
        req = msgspec.structs.replace(head, body=bytes(buffer))
        resp = await self._handler.handle(req)
        if resp.stream is None:
            return _aiohttp_response(resp)
        stream = web.StreamResponse(status=resp.status, headers=resp.headers)
        await stream.prepare(request)
        try:
            async for chunk in resp.stream:
                await stream.write(chunk)
        except ConnectionError:
            # The client went away (aiohttp raises ConnectionResetError or a bare
            # ConnectionError("Connection lost")): nothing left to send it.
            return stream
        finally:
            with anyio.CancelScope(shield=True):
                await resp.stream.aclose()  # type: ignore[attr-defined]
        with contextlib.suppress(ConnectionError):
            await stream.write_eof()
        return stream

    # -- ASGI -------------------------------------------------------------------------

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        head = request_head(scope, mounted=self._mounted)
        try:
            limit = self._handler.admit(head)
        except Exception as exc:
            await send_response(send, error_for(exc), receive)
            return
        try:
            body = await _read_body(receive, limit)
        except BodyTooLarge:
            await send_response(send, _too_large(limit), receive)
            return
        if body is None:
            return  # the client went away mid-request: act on nothing it did not finish
        req = msgspec.structs.replace(head, body=body)
        await send_response(send, await self._handler.handle(req), receive)


async def serve_lifespan(receive: Receive, send: Send) -> None:
    """Answer an ASGI lifespan: nothing to start or stop (the app's own lifespan opens
    the Tidebase)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def request_head(scope: Scope, *, mounted: bool) -> HttpRequest:
    """An ASGI HTTP request without its body. ``mounted``: the path below the mount
    point (``root_path`` removed) is kept, else the path is ``/``."""
    path = "/"
    if mounted:
        path = scope.get("path", "/")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        path = path or "/"
    raw_query = scope.get("query_string", b"").decode("latin-1")
    headers = {
        k.decode("latin-1").lower(): v.decode("utf-8", "surrogateescape")
        for k, v in scope.get("headers", [])
    }
    return HttpRequest(
        method=scope.get("method", "GET"),
        path=path,
        query={k: v for k, v in reversed(parse_qsl(raw_query, keep_blank_values=True))},
        headers=headers,
    )


def _too_large(limit: int) -> HttpResponse:
    return error_response(413, "payload_too_large", f"the body is larger than {limit} bytes")


def _aiohttp_response(resp: HttpResponse) -> web.Response:
    return web.Response(status=resp.status, headers=resp.headers, body=resp.body)


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body; None when the client disconnected before sending all of it."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_response(send: Send, resp: HttpResponse, receive: Receive) -> None:
    """Send ``resp`` (streamed ones until they end or the client disconnects)."""
    await send(
        {
            "type": "http.response.start",
            "status": resp.status,
            "headers": [
                (k.lower().encode("latin-1"), v.encode("utf-8", "surrogateescape"))
                for k, v in resp.headers
            ],
        }
    )
    if resp.stream is None:
        await send({"type": "http.response.body", "body": resp.body})
        return
    stream = resp.stream
    try:
        async with anyio.create_task_group() as tg:

            async def until_disconnect() -> None:
                # Servers may drop sends after a disconnect without a word: the stream
                # must end when the client goes, not live on polling for nobody.
                message = await receive()
                while message["type"] != "http.disconnect":
                    message = await receive()
                tg.cancel_scope.cancel()

            tg.start_soon(until_disconnect)
            async for chunk in stream:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            with contextlib.suppress(OSError):
                await send({"type": "http.response.body", "body": b""})
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await stream.aclose()  # type: ignore[attr-defined]


def aiohttp_app(endpoint: Endpoint) -> web.Application:
    """An aiohttp sub-application routing every path to ``endpoint``."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", endpoint)
    return app
