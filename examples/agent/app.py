"""The Starlette app: a page to ask the research agent, two routes, the Tidebase HTTP
API and dashboard.

    GET  /                      the page (static/index.html, static/agent.js)
    POST /research              {"question": ...} -> 201 {"id", "deduplicated"}; 200 with
                                the active run's id when the question is being researched
    GET  /research/{id}         status, the pending approval (if any), answer or error
    *    /tidebase/...          tide.asgi_app(): the dashboard (usage, steps, gates), runs,
                                gate resolution, live output as server-sent events

The page reads the agent's live output from ``/tidebase/runs/{id}/stream?stream=agent``
and resolves the approval with ``POST /tidebase/runs/{id}/gates/approve:send_report/resolve``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any
from uuid import UUID

import anyio
import msgspec
from pydantic_ai.models import Model
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from examples.agent.research import (
    QUEUE,
    WORKFLOW,
    Backends,
    ResearchInput,
    choose_model,
    create_agent,
    describe,
    register,
)
from tidebase_async import GateInfo, NotFoundError, Tidebase, Worker

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"

#: The page runs no inline script or style and talks only to this origin.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; object-src 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

Question = Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]


class Ask(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    question: Question


class Created(msgspec.Struct, kw_only=True):
    id: UUID
    deduplicated: bool


class ResearchView(msgspec.Struct, kw_only=True):
    id: UUID
    question: str | None
    status: str
    #: The approval the run waits for (``name``, ``prompt``, ``data.args``), else None.
    pending_gate: GateInfo | None
    answer: str | None = None
    error: dict[str, Any] | None = None


def _json(value: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(value), status, media_type="application/json")


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


def dedupe_key(question: str) -> str:
    """One active run per question: case and spacing do not make a new one."""
    normal = " ".join(question.casefold().split())
    return "research:" + hashlib.sha256(normal.encode()).hexdigest()[:32]


def _tide(request: Request) -> Tidebase:
    tide: Tidebase = request.app.state.tide
    return tide


async def page(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)


async def ask(request: Request) -> Response:
    """Enqueue a research run for the question (or return the active one for it)."""
    try:
        question = msgspec.json.decode(await request.body(), type=Ask).question.strip()
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return _error(400, f'the body must be {{"question": "..."}}: {exc}')
    if not question:
        return _error(400, "the question is blank")
    handle = await _tide(request).enqueue(
        WORKFLOW,
        input=ResearchInput(question=question),
        queue=QUEUE,
        dedupe_key=dedupe_key(question),
    )
    created = Created(id=handle.id, deduplicated=handle.deduplicated)
    return _json(created, 200 if handle.deduplicated else 201)


async def view(request: Request) -> Response:
    """The run as the page shows it."""
    try:
        info = await _tide(request).runs.get(UUID(request.path_params["id"]))
    except (ValueError, NotFoundError):
        return _error(404, "no such research run")
    if info.workflow != WORKFLOW:
        return _error(404, "no such research run")
    output = info.output if isinstance(info.output, dict) else {}
    question = info.input.get("question") if isinstance(info.input, dict) else None
    pending = [g for g in info.gates if g.status == "pending"]
    return _json(
        ResearchView(
            id=info.id,
            question=question,
            status=info.status,
            pending_gate=pending[0] if pending else None,
            answer=output.get("answer"),
            error=info.error,
        )
    )


@contextlib.asynccontextmanager
async def serving(tide: Tidebase, *, worker: bool) -> AsyncIterator[None]:
    """Open ``tide`` and, with ``worker``, execute runs in this process too (the worker
    drains on the way out; runs waiting for approval hold no worker)."""
    async with tide, anyio.create_task_group() as tg:
        workers: list[Worker] = []
        if worker:
            started = anyio.Event()
            tg.start_soon(
                functools.partial(
                    tide.work,
                    concurrency=8,
                    handle_signals=False,  # the web server owns SIGINT/SIGTERM
                    started=started,
                    worker_ready=workers.append,
                )
            )
            await started.wait()
            logger.info("a worker runs in this process (queue %s)", QUEUE)
        try:
            yield
        finally:
            for w in workers:
                w.stop()


def create_app(
    dsn: str | None = None,
    *,
    worker: bool = True,
    model: Model | None = None,
    backends: Backends | None = None,
    api_key: str | None = None,
) -> Starlette:
    """The app. ``dsn``: else ``TIDEBASE_DATABASE_URL``, else the embedded Postgres in
    ``./.tidebase``. ``worker``: also execute runs here (else run
    ``python -m examples.agent.worker``). ``model``: else ``choose_model()``;
    ``backends``: what the tools call, else ``backends_from_env()``. ``api_key``: else
    ``TIDEBASE_API_KEY``. ``app.state.tide`` is the Tidebase.

    Raises:
        ModelUnavailable: the chosen model's provider package is not installed.
    """
    tide = Tidebase(dsn, api_key=api_key)
    chosen = model or choose_model()
    register(tide, create_agent(chosen), backends=backends)
    logger.info("research agent on model %s", describe(chosen))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with serving(tide, worker=worker):
            yield

    app = Starlette(
        routes=[
            Route("/", page, methods=["GET"]),
            Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
            Route("/research", ask, methods=["POST"]),
            Route("/research/{id}", view, methods=["GET"]),
            Mount("/tidebase", app=tide.asgi_app()),
        ],
        lifespan=lifespan,
    )
    app.state.tide = tide
    return app
