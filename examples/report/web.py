"""What the web examples' routes do, independent of the framework.

``examples.aiohttp_app`` and ``examples.starlette_app`` are thin adapters over this:
they read the request body, call ``Reports``, and encode the returned Struct (or the
``ApiError``) as JSON. ``serving`` is the app's lifespan: it opens the Tidebase and,
optionally, runs a worker in the same process.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any, TypeVar
from uuid import UUID

import anyio
import msgspec

from examples.report.approval import GATE, QUEUE, WORKFLOW, ReportInput
from tidebase_async import (
    GateAlreadyResolved,
    GateInfo,
    GateNotFound,
    NotFoundError,
    RunInfo,
    Tidebase,
    Worker,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

Topic = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Actor = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class ApiError(Exception):
    """An error response: ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def body(self) -> bytes:
        return msgspec.json.encode({"error": self.message})


# -- request bodies ----------------------------------------------------------------------


class CreateReport(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    topic: Topic


class Decide(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    approved: bool
    actor: Actor
    comment: str | None = None


# -- responses ---------------------------------------------------------------------------


class Created(msgspec.Struct, kw_only=True):
    id: UUID
    deduplicated: bool
    dedupe_key: str


class ReportView(msgspec.Struct, kw_only=True):
    id: UUID
    topic: str | None
    status: str
    #: ``{"stage": ..., "percent": ...}`` from the run's state; None until it started.
    progress: Any
    pending_gates: list[GateInfo]
    output: Any = None
    error: dict[str, Any] | None = None


class Decided(msgspec.Struct, kw_only=True):
    id: UUID
    gate: str
    decision: str | None
    actor: str | None


def dedupe_key(topic: str) -> str:
    """One active report per topic: case and whitespace do not make a new one."""
    return "report:" + " ".join(topic.casefold().split())


def _decode(body: bytes, type: type[T]) -> T:
    try:
        return msgspec.json.decode(body, type=type)
    except msgspec.ValidationError as exc:
        raise ApiError(400, f"invalid body: {exc}") from None
    except msgspec.DecodeError:
        raise ApiError(400, "the body must be a JSON object") from None


class Reports:
    """The three report routes, as methods; raise ``ApiError`` for error responses."""

    def __init__(self, tide: Tidebase) -> None:
        self.tide = tide

    async def create(self, body: bytes) -> Created:
        """``POST /api/reports`` ``{"topic": ...}``: enqueue, or return the active run
        for the same topic (a double-submitted form makes one report)."""
        topic = _decode(body, CreateReport).topic.strip()
        if not topic:
            raise ApiError(400, "invalid body: the topic is blank")
        key = dedupe_key(topic)
        handle = await self.tide.enqueue(
            WORKFLOW, input=ReportInput(topic=topic), dedupe_key=key, queue=QUEUE
        )
        return Created(id=handle.id, deduplicated=handle.deduplicated, dedupe_key=key)

    async def get(self, run_id: str) -> ReportView:
        """``GET /api/reports/{id}``: status, progress, pending gates, output or error."""
        info = await self._info(run_id)
        state = info.state if isinstance(info.state, dict) else {}
        topic = info.input.get("topic") if isinstance(info.input, dict) else None
        return ReportView(
            id=info.id,
            topic=topic,
            status=info.status,
            progress=state.get("progress"),
            pending_gates=[g for g in info.gates if g.status == "pending"],
            output=info.output,
            error=info.error,
        )

    async def decide(self, run_id: str, body: bytes) -> Decided:
        """``POST /api/reports/{id}/approve`` ``{"approved": bool, "actor": str,
        "comment": str?}``: resolve the approval gate, exactly once."""
        decision = _decode(body, Decide)
        info = await self._info(run_id)
        payload = None if decision.comment is None else {"comment": decision.comment}
        try:
            gate = await self.tide.gates.resolve(
                info.id, GATE, approved=decision.approved, actor=decision.actor, payload=payload
            )
        except GateNotFound:
            raise ApiError(
                409, f"the report is not waiting for approval yet (it is {info.status})"
            ) from None
        except GateAlreadyResolved as exc:
            raise ApiError(409, f"the approval was already decided: {exc.status}") from None
        return Decided(id=info.id, gate=gate.name, decision=gate.decision, actor=gate.actor)

    async def _info(self, run_id: str) -> RunInfo:
        try:
            rid = UUID(run_id)
        except ValueError:
            raise ApiError(404, "no such report") from None
        try:
            info = await self.tide.runs.get(rid)
        except NotFoundError:
            raise ApiError(404, "no such report") from None
        if info.workflow != WORKFLOW:  # a run of another workflow is not a report
            raise ApiError(404, "no such report")
        return info


@contextlib.asynccontextmanager
async def serving(tide: Tidebase, *, worker: bool, concurrency: int = 8) -> AsyncIterator[None]:
    """The app's lifespan: open ``tide`` (pool, LISTEN connection, migrations) and, with
    ``worker``, execute runs in this process too. On the way out the worker drains:
    steps in flight finish (runs waiting at a gate hold no worker and simply wait)."""
    async with tide, anyio.create_task_group() as tg:
        workers: list[Worker] = []
        if worker:
            started = anyio.Event()
            tg.start_soon(
                functools.partial(
                    tide.work,
                    concurrency=concurrency,
                    handle_signals=False,  # the web server owns SIGINT/SIGTERM
                    shutdown_grace=5.0,
                    started=started,
                    worker_ready=workers.append,
                )
            )
            await started.wait()
            logger.info("a worker runs in this process (queues: %s)", QUEUE)
        try:
            yield
        finally:
            for w in workers:
                w.stop()
