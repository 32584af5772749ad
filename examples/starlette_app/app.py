"""The Starlette app: report routes, the recovery webhook and the Tidebase HTTP API.

Plain Starlette ``Route``/``Mount``, so the same lines work in FastAPI
(``app.router.routes.append(...)``, or ``app.mount("/tidebase", tide.asgi_app())`` and
``app.add_route("/api/tidebase", tide.webhook(), methods=["POST"])``).

    POST /api/reports                 {"topic": ...}  -> 201 (or 200 if deduplicated)
    GET  /api/reports/{id}            status, progress, pending gates, output/error
    POST /api/reports/{id}/approve    {"approved": bool, "actor": ..., "comment": ...}
    POST /api/tidebase                tide.webhook(): signed run.resume deliveries
    *    /tidebase/...                tide.asgi_app(): runs, gates, events, OpenAPI
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from examples.report.approval import register
from examples.report.web import ApiError, Reports, serving
from tidebase_async import Tidebase


def _json(value: msgspec.Struct, status: int = 200) -> Response:
    return Response(msgspec.json.encode(value), status, media_type="application/json")


def _reports(request: Request) -> Reports:
    reports: Reports = request.app.state.reports
    return reports


async def create_report(request: Request) -> Response:
    created = await _reports(request).create(await request.body())
    return _json(created, 200 if created.deduplicated else 201)


async def get_report(request: Request) -> Response:
    return _json(await _reports(request).get(request.path_params["id"]))


async def approve_report(request: Request) -> Response:
    return _json(await _reports(request).decide(request.path_params["id"], await request.body()))


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return Response(exc.body(), exc.status, media_type="application/json")


def create_app(
    dsn: str | None = None,
    *,
    worker: bool = True,
    webhook_secret: str | None = None,
    api_key: str | None = None,
    public_url: str | None = None,
    step_delay: float = 1.0,
) -> Starlette:
    """The app. ``dsn``: else ``TIDEBASE_DATABASE_URL``, else the embedded Postgres in
    ``./.tidebase``. ``worker``: also execute runs in this process (else run
    ``python -m examples.starlette_app.worker`` next to it). The secret, key and public
    URL fall back to ``TIDEBASE_WEBHOOK_SECRET``, ``TIDEBASE_API_KEY``,
    ``TIDEBASE_PUBLIC_URL``. ``app.state.tide`` is the Tidebase."""
    tide = Tidebase(dsn, webhook_secret=webhook_secret, api_key=api_key, public_url=public_url)
    register(tide, step_delay=step_delay)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with serving(tide, worker=worker):
            yield

    app = Starlette(
        routes=[
            Route("/api/reports", create_report, methods=["POST"]),
            Route("/api/reports/{id}", get_report, methods=["GET"]),
            Route("/api/reports/{id}/approve", approve_report, methods=["POST"]),
            # A verified run.resume is handed to the workers (the default); with
            # tide.webhook(execute=True) the request itself would execute the run's rest.
            Route("/api/tidebase", tide.webhook(), methods=["POST"]),
            Mount("/tidebase", app=tide.asgi_app()),
        ],
        exception_handlers={ApiError: api_error},
        lifespan=lifespan,
    )
    app.state.tide = tide
    app.state.reports = Reports(tide)
    return app
