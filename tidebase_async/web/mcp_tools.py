"""The tools of the MCP server (``web.mcp``), over the client's API and free of the SDK:
their arguments and results as msgspec Structs (whose JSON schemas the tools publish),
what each does, and the one text a failure comes back as.

Arguments are converted strictly (no type coercion, unknown fields refused); results
are ``msgspec.to_builtins`` of the client's read models (RunInfo, GateInfo, Event,
Page) or of the small Structs here, so they match their published schemas.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple
from uuid import UUID

import msgspec

from tidebase_async import errors
from tidebase_async.models import (
    Event,
    GateInfo,
    GateStatus,
    KeyedEvent,
    Page,
    RunInfo,
    RunStatus,
)

if TYPE_CHECKING:
    from tidebase_async.client.tidebase import Tidebase

logger = logging.getLogger(__name__)

RUN_URI = "tidebase://runs/{id}"
_RUN_URI_PREFIX = "tidebase://runs/"
#: Who decided, when an MCP client does not say (``actor`` of gates and cancels).
DEFAULT_ACTOR = "mcp"

RunId = Annotated[UUID, msgspec.Meta(description="A run id (UUID).")]
Limit = Annotated[int, msgspec.Meta(ge=1, le=1000, description="At most this many items.")]
Seconds = Annotated[float, msgspec.Meta(ge=0, description="Seconds before it may start.")]


class _Args(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Arguments of a tool: unknown fields are refused."""


class ListRunsArgs(_Args):
    """Filters; pass ``next_cursor`` back as ``cursor`` for the next page."""

    status: RunStatus | None = None
    workflow: str | None = None
    queue: str | None = None
    dedupe_key: str | None = None
    limit: Limit = 50
    cursor: str | None = None


class RunArgs(_Args):
    """The run to act on."""

    run_id: RunId


class EnqueueArgs(_Args):
    """A new run of a registered workflow (times are RFC 3339 with a time zone)."""

    workflow: Annotated[str, msgspec.Meta(description="A workflow registered in this app.")]
    input: Any = None
    dedupe_key: str | None = None
    queue: str | None = None
    priority: int = 0
    delay: Seconds | None = None
    run_at: datetime | None = None
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=10_000)] | None = None
    deadline: datetime | None = None
    metadata: dict[str, Any] | None = None
    version: Annotated[
        str | None,
        msgspec.Meta(
            description="The workflow version the run records and runs with (default: "
            "the newest registered in this app)."
        ),
    ] = None


class CancelRunArgs(_Args):
    """``reason`` is stored with the run; ``actor`` says who cancelled it."""

    run_id: RunId
    reason: str | None = None
    actor: str = DEFAULT_ACTOR


class ListGatesArgs(_Args):
    """Filters; ``status`` ``all`` lists every gate; pass ``next_cursor`` back as
    ``cursor`` for the next page."""

    status: GateStatus | Literal["all"] = "pending"
    run_id: RunId | None = None
    limit: Limit = 50
    cursor: str | None = None


class ResolveGateArgs(_Args):
    """``payload`` is handed to the workflow with the decision."""

    run_id: RunId
    name: Annotated[str, msgspec.Meta(description="The gate's name.")]
    decision: Literal["approve", "reject"]
    actor: str = DEFAULT_ACTOR
    payload: Any = None


class SendEventArgs(_Args):
    """An event by key for the runs that wait for it (``run.wait_for_event``)."""

    name: Annotated[str, msgspec.Meta(description="The event's name.")]
    key: Annotated[str, msgspec.Meta(min_length=1, max_length=200, description="The event's key.")]
    payload: Any = None


class RunEventsArgs(_Args):
    """Events with ``seq > after``, in order."""

    run_id: RunId
    after: Annotated[int, msgspec.Meta(ge=0)] = 0
    limit: Limit = 100


class Enqueued(msgspec.Struct, kw_only=True):
    """The run created or, ``deduplicated``, the active run with the same dedupe key."""

    id: UUID
    workflow: str
    deduplicated: bool


class RunStatusResult(msgspec.Struct, kw_only=True):
    """The run's status after the action."""

    id: UUID
    status: RunStatus


class GatePage(msgspec.Struct, kw_only=True):
    """A page of gates; ``next_cursor`` continues it (None: the last page)."""

    items: list[GateInfo]
    next_cursor: str | None = None


class EventPage(msgspec.Struct, kw_only=True):
    """``next_after``: a full page's last seq, to pass as ``after`` for the next page
    (None: the page is not full, no more events yet)."""

    run_id: UUID
    status: RunStatus
    items: list[Event]
    next_after: int | None = None


#: tool name: (its arguments, its result, read-only); the method of that name runs it
#: and its docstring describes it.
TOOLS: dict[str, tuple[type[_Args], type[msgspec.Struct], bool]] = {
    "list_runs": (ListRunsArgs, Page, True),
    "get_run": (RunArgs, RunInfo, True),
    "enqueue": (EnqueueArgs, Enqueued, False),
    "cancel_run": (CancelRunArgs, RunStatusResult, False),
    "retry_run": (RunArgs, RunStatusResult, False),
    "list_gates": (ListGatesArgs, GatePage, True),
    "resolve_gate": (ResolveGateArgs, GateInfo, False),
    "run_events": (RunEventsArgs, EventPage, True),
    "send_event": (SendEventArgs, KeyedEvent, False),
}


class ToolSpec(NamedTuple):
    """A tool as listed: its name, description and schemas."""

    name: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    read_only: bool


class ToolFailed(Exception):
    """A tool call that failed; the message says why (safe to show the caller)."""


class Tools:
    """The tools over ``tide``'s client API (``tide.runs``, ``tide.gates``,
    ``tide.enqueue``)."""

    def __init__(self, tide: Tidebase) -> None:
        self._tide = tide

    def specs(self) -> list[ToolSpec]:
        """Every tool with its schemas; ``enqueue``'s names the workflows registered
        now (an ``enum``)."""
        specs = []
        for name, (args, result, read_only) in TOOLS.items():
            schema = json_schema(args)
            description = inspect.getdoc(getattr(self, name)) or name
            if name == "enqueue":
                names = sorted(self._tide.workflows)
                if names:
                    schema["properties"]["workflow"]["enum"] = names
                    description += f" Registered workflows: {', '.join(names)}."
            specs.append(ToolSpec(name, description, schema, json_schema(result), read_only))
        return specs

    async def call(self, name: str, arguments: dict[str, Any] | None) -> dict[str, Any]:
        """Run tool ``name``; its result as JSON-ready builtins.

        Raises:
            ToolFailed: no such tool, invalid arguments, or the tool failed; the
                message names the tool and the problem.
        """
        if name not in TOOLS:
            raise ToolFailed(f"unknown tool {name!r}; the tools: {', '.join(TOOLS)}")
        try:
            args = msgspec.convert(arguments or {}, type=TOOLS[name][0])
        except msgspec.ValidationError as exc:
            raise ToolFailed(f"invalid arguments for {name}: {exc}") from None
        run: Callable[[Any], Awaitable[msgspec.Struct]] = getattr(self, name)
        try:
            result = await run(args)
        except Exception as exc:
            raise ToolFailed(f"{name} failed: {describe_error(exc)}") from None
        data: dict[str, Any] = msgspec.to_builtins(result)
        return data

    async def read_run(self, uri: str) -> str:
        """The run named by ``tidebase://runs/{id}``, as JSON.

        Raises:
            ToolFailed: not a run URI, or no such run.
        """
        try:
            if not uri.startswith(_RUN_URI_PREFIX):
                raise errors.NotFoundError(f"no resource {uri!r:.100}; runs are {RUN_URI}")
            info = await self._tide.runs.get(uri.removeprefix(_RUN_URI_PREFIX))
        except Exception as exc:
            raise ToolFailed(describe_error(exc)) from None
        return msgspec.json.encode(info).decode()

    # -- the tools (their docstrings are their descriptions) ---------------------------

    async def list_runs(self, a: ListRunsArgs) -> Page:
        """Runs, newest first, a page at a time, filtered by status, workflow, queue or
        dedupe key."""
        return await self._tide.runs.list(
            status=a.status,
            workflow=a.workflow,
            queue=a.queue,
            dedupe_key=a.dedupe_key,
            limit=a.limit,
            cursor=a.cursor,
        )

    async def get_run(self, a: RunArgs) -> RunInfo:
        """A run: status, input, output, error, state, steps, gates, children, times."""
        return await self._tide.runs.get(a.run_id)

    async def enqueue(self, a: EnqueueArgs) -> Enqueued:
        """Create a queued run of a workflow registered in this app; durable once this
        returns. With a dedupe key, an active run with that key is returned instead
        (deduplicated). ``version`` picks one of the workflow's registered versions
        (another is refused, naming them)."""
        # An app that registers workflows names them all: another name is a mistake. An
        # app that registers none (a web process enqueueing for separate workers) is
        # trusted, as the HTTP API is; such a run of an unknown workflow fails when claimed.
        if self._tide.workflows and a.workflow not in self._tide.workflows:
            known = ", ".join(sorted(self._tide.workflows)) or "none"
            raise errors.WorkflowNotFound(
                f"no workflow {a.workflow!r:.100} is registered in this app (registered: {known})"
            )
        handle = await self._tide.enqueue(
            a.workflow,
            input=a.input,
            dedupe_key=a.dedupe_key,
            queue=a.queue,
            priority=a.priority,
            delay=a.delay,
            run_at=a.run_at,
            max_attempts=a.max_attempts,
            deadline=a.deadline,
            metadata=a.metadata,
            version=a.version,
        )
        return Enqueued(id=handle.id, workflow=a.workflow, deduplicated=handle.deduplicated)

    async def cancel_run(self, a: CancelRunArgs) -> RunStatusResult:
        """Cancel a run and its active children, whatever it is doing; its pending gates
        close. Idempotent for a cancelled run; a completed or failed one stays as it is."""
        await self._tide.runs.cancel(a.run_id, reason=a.reason, actor=a.actor)
        return RunStatusResult(id=a.run_id, status=await self._tide.runs.status(a.run_id))

    async def retry_run(self, a: RunArgs) -> RunStatusResult:
        """Requeue a failed run with a fresh budget of attempts; it resumes after its last
        completed step (completed steps do not run again)."""
        await self._tide.runs.retry(a.run_id)
        return RunStatusResult(id=a.run_id, status=await self._tide.runs.status(a.run_id))

    async def list_gates(self, a: ListGatesArgs) -> GatePage:
        """Approval gates in creation order: pending ones by default, where runs wait
        for a human decision (resolve_gate)."""
        gates = await self._tide.gates.list(
            status=None if a.status == "all" else a.status,
            run_id=a.run_id,
            limit=a.limit,
            cursor=a.cursor,
        )
        cursor = self._tide.gates.cursor_of(gates[-1]) if len(gates) == a.limit else None
        return GatePage(items=gates, next_cursor=cursor)

    async def resolve_gate(self, a: ResolveGateArgs) -> GateInfo:
        """Approve or reject a run's pending gate; the run resumes. Exactly once: the
        first decision stands, later ones fail with GateAlreadyResolved."""
        return await self._tide.gates.resolve(
            a.run_id, a.name, approved=a.decision == "approve", actor=a.actor, payload=a.payload
        )

    async def run_events(self, a: RunEventsArgs) -> EventPage:
        """A page of a run's event log (run.created, step.completed, gate.created, ...),
        in order, with the run's status now."""
        events = await self._tide.runs.event_page(a.run_id, after=a.after, limit=a.limit)
        status = await self._tide.runs.status(a.run_id)
        after = events[-1].seq if len(events) == a.limit else None
        return EventPage(run_id=a.run_id, status=status, items=events, next_after=after)

    async def send_event(self, a: SendEventArgs) -> KeyedEvent:
        """Send an event by key: every run waiting for this name and key now receives
        it (each once) and resumes (status delivered); when none waits it is stored and
        the next run to wait for it receives it (status stored)."""
        return await self._tide.events.send(a.name, key=a.key, payload=a.payload)


def describe_error(exc: Exception) -> str:
    """What a failure says: our errors by name and message (they hold no secrets), a
    database failure as such (logged), anything else as an internal error (logged)."""
    if isinstance(exc, errors.StoreError):
        logger.warning("an MCP tool failed on the database: %s", exc)
        return "the database is unavailable; retry later"
    if isinstance(exc, errors.TidebaseError):
        return f"{type(exc).__name__}: {exc}"
    logger.exception("an MCP tool failed unexpectedly", exc_info=exc)
    return "internal error (logged by the server)"


def json_schema(tp: type[msgspec.Struct]) -> dict[str, Any]:
    """The JSON schema of a Struct with the Struct at its root (``type: object``) and
    the types it refers to under ``$defs``."""
    (ref,), components = msgspec.json.schema_components([tp], ref_template="#/$defs/{name}")
    name = ref["$ref"].rpartition("/")[2]
    root = dict(components.pop(name))
    if components:
        root["$defs"] = components
    return root
