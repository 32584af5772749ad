"""The aiohttp app: report routes, the recovery webhook and the Tidebase HTTP API.

POST /api/reports                 {"topic": ...}  -> 201 (or 200 if deduplicated)
GET  /api/reports/{id}            status, progress, pending gates, output/error
POST /api/reports/{id}/approve    {"approved": bool, "actor": ..., "comment": ...}
POST /api/tidebase                tide.webhook(): signed run.resume deliveries
*    /tidebase/...                tide.http_app(): runs, gates, events, OpenAPI
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec
from aiohttp import web

from examples.report.approval import register
from examples.report.web import ApiError, Reports, serving
from tidebase_async import Tidebase

TIDE = web.AppKey("tide", Tidebase)
REPORTS = web.AppKey("reports", Reports)


def _json(value: msgspec.Struct, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(value), status=status, content_type="application/json"
    )


async def create_report(request: web.Request) -> web.Response:
    created = await request.app[REPORTS].create(await request.read())
    return _json(created, 200 if created.deduplicated else 201)


async def get_report(request: web.Request) -> web.Response:
    return _json(await request.app[REPORTS].get(request.match_info["id"]))


async def approve_report(request: web.Request) -> web.Response:
    reports = request.app[REPORTS]
    return _json(await reports.decide(request.match_info["id"], await request.read()))


@web.middleware
async def api_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return web.Response(body=exc.body(), status=exc.status, content_type="application/json")


def create_app(
    dsn: str | None = None,
    *,
    worker: bool = True,
    webhook_secret: str | None = None,
    api_key: str | None = None,
    public_url: str | None = None,
    step_delay: float = 1.0,
) -> web.Application:
    """The app. ``dsn``: else ``TIDEBASE_DATABASE_URL``, else the embedded Postgres in
    ``./.tidebase``. ``worker``: also execute runs in this process (else run
    ``python -m examples.aiohttp_app.worker`` next to it). The secret, key and public URL
    fall back to ``TIDEBASE_WEBHOOK_SECRET``, ``TIDEBASE_API_KEY``, ``TIDEBASE_PUBLIC_URL``."""
    tide = Tidebase(dsn, webhook_secret=webhook_secret, api_key=api_key, public_url=public_url)
    register(tide, step_delay=step_delay)
    app = web.Application(middlewares=[api_errors])
    app[TIDE] = tide
    app[REPORTS] = Reports(tide)

    async def lifespan(app: web.Application) -> AsyncIterator[None]:
        async with serving(tide, worker=worker):
            yield

    app.cleanup_ctx.append(lifespan)
    app.router.add_post("/api/reports", create_report)
    app.router.add_get("/api/reports/{id}", get_report)
    app.router.add_post("/api/reports/{id}/approve", approve_report)
    # A verified run.resume is handed to the workers (the default); with
    # tide.webhook(execute=True) the request itself would execute the run's rest.
    app.router.add_post("/api/tidebase", tide.webhook())
    app.add_subapp("/tidebase/", tide.http_app())
    return app
