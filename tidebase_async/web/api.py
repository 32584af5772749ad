"""The HTTP API behind ``tide.http_app()`` and ``tide.asgi_app()`` (framework-neutral).

Routes (relative to where the app is mounted; JSON in and out):

    GET  /health                              no auth; 503 when the database does not answer
    GET  /ready                               no auth; 503 while closed or a worker drains
    GET  /metrics                             Prometheus text format
    GET  /openapi.json
    GET  /runs?status=&workflow=&queue=&dedupe_key=&limit=&cursor=
    POST /runs                                enqueue; 201 {"id", "deduplicated"}
    GET  /runs/{id}
    POST /runs/{id}/cancel                    {"reason", "actor"} (optional)
    POST /runs/{id}/retry
    GET  /runs/{id}/events                    server-sent events; Last-Event-ID resumes
    GET  /runs/{id}/event-log?after=&limit=   a page of the stored events, with their times
    GET  /runs/{id}/stream?stream=output      live output (run.emit) as server-sent events
    GET  /runs/{id}/state                     the state's versions
    POST /runs/{id}/fork                      {"from_step", "input"}: 201 {"id"}
    POST /runs/{id}/reset                     {"to_step"} (a failed run)
    GET  /usage?workflow=&since=&until=&group_by=workflow,model
    GET  /gates?status=&run_id=&limit=&cursor=
    POST /runs/{id}/gates/{name}/resolve      {"approved", "actor", "payload", "token"}
    POST /events                              {"name", "key", "payload", "retention"}: send an
                                              event by key (tide.events.send)
    GET  /keyed-events?status=&name=&key=&limit=&cursor=
                                              events sent by key, in the order sent
                                              (status stored by default; all: every one)
    GET  /event-waits?name=&key=&limit=       open waits of active runs for events by key
    GET  /queues                              controls and counts by status
    POST /queues/{name}                       {"concurrency", "rate_per_minute", "paused",
                                              "per_key_concurrency", "per_key_rate_per_minute"}
    GET  /queues/{name}/keys?limit=           per-key controls, busiest concurrency keys,
                                              pending debounce and active singleton runs
    GET  /schedules
    POST /schedules/{name}/pause | /resume
    GET  /overview?range=1h|6h|24h|7d         dashboard overview (tide.stats.overview): runs
                                              per bucket and workflow, queues, failing
                                              workflows, usage per day and model
    GET  /workflows/{name}?range=             one workflow (tide.stats.workflow); 404 when
                                              it has no runs

With an API key configured (``Tidebase(api_key=...)`` or ``TIDEBASE_API_KEY``) every route
but ``/health`` and ``/ready`` needs ``Authorization: Bearer <key>`` (compared in constant
time); a gate resolution that carries a token needs no key: the token is the credential. Errors are
``{"error": {"code", "message"}}`` with 400, 401, 404, 405, 409, 413 or 503.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from importlib import resources
from typing import TYPE_CHECKING, Any
from uuid import UUID

import anyio
import msgspec

from tidebase_async import errors
from tidebase_async._util.checks import check_name
from tidebase_async.client.queues import UNSET
from tidebase_async.client.runs import as_uuid
from tidebase_async.client.streams import changed_runs
from tidebase_async.models import Debounce, Singleton
from tidebase_async.web.access import authorize, check_origin
from tidebase_async.web.core import (
    SMALL_BODY,
    HttpError,
    HttpRequest,
    HttpResponse,
    decode_json_body,
    error_for,
    error_response,
    json_response,
    require_json,
)
from tidebase_async.web.openapi import openapi_document

if TYPE_CHECKING:
    from tidebase_async.client.tidebase import Tidebase

logger = logging.getLogger(__name__)

_KEEPALIVE_S = 15.0
#: How often ``/events`` asks for a refresh when there is no LISTEN connection.
_REFRESH_WITHOUT_LISTEN_S = 5.0
#: How long ``GET /health`` waits for the database.
HEALTH_TIMEOUT_S = 5.0
_INT4_MAX = 2**31 - 1
_INTEGER = re.compile(r"-?[0-9]{1,9}")
#: What ``POST /queues/{name}`` sets (``tide.queues.configure``'s options).
_QUEUE_CONTROLS = (
    "concurrency",
    "rate_per_minute",
    "paused",
    "per_key_concurrency",
    "per_key_rate_per_minute",
)


class EnqueueBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    workflow: str
    input: Any = None
    queue: str | None = None
    dedupe_key: str | None = None
    priority: int = 0
    delay: float | None = None
    run_at: datetime | None = None
    max_attempts: int | None = None
    deadline: datetime | None = None
    metadata: dict[str, Any] | None = None
    debounce: DebounceBody | None = None
    singleton: SingletonBody | None = None
    #: The workflow version the run records (default: the newest registered here).
    version: str | None = None


class DebounceBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``debounce`` of ``POST /runs``: ``Debounce`` with durations in seconds."""

    key: str
    window_s: float
    max_wait_s: float | None = None


class SingletonBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``singleton`` of ``POST /runs``: ``Singleton`` (mode ``skip`` or ``replace``)."""

    key: str
    mode: str = "skip"


class CancelBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    reason: str | None = None
    actor: str | None = None


class ForkBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    from_step: str | int
    input: Any = None


class ResetBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    to_step: str | int


class SendEventBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    key: str | int
    payload: Any = None
    retention: float | None = None


class ResolveBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    approved: bool
    actor: str | None = None
    payload: Any = None
    token: str | None = None


Handler = Callable[[HttpRequest, list[str]], Awaitable[HttpResponse]]


class Api:
    """Dispatches an ``HttpRequest`` to its route; never raises (errors become JSON)."""

    def __init__(self, tide: Tidebase) -> None:
        self._tide = tide
        self._routes: list[tuple[str, re.Pattern[str], Handler, bool]] = [
            # (method, path, handler, needs the API key)
            ("GET", re.compile(r"/health"), self._health, False),
            ("GET", re.compile(r"/ready"), self._ready, False),
            ("GET", re.compile(r"/metrics"), self._metrics, True),
            # The dashboard's page and assets carry no data: the page asks for the key.
            ("GET", re.compile(r"/"), self._dashboard, False),
            ("GET", re.compile(r"/assets/([A-Za-z0-9_.-]+)"), self._asset, False),
            ("GET", re.compile(r"/events"), self._all_events, True),
            ("POST", re.compile(r"/events"), self._send_event, True),
            ("GET", re.compile(r"/keyed-events"), self._list_keyed_events, True),
            ("GET", re.compile(r"/event-waits"), self._list_event_waits, True),
            ("GET", re.compile(r"/openapi\.json"), self._openapi, True),
            ("GET", re.compile(r"/runs"), self._list_runs, True),
            ("POST", re.compile(r"/runs"), self._enqueue, True),
            ("GET", re.compile(r"/runs/([^/]+)"), self._get_run, True),
            ("POST", re.compile(r"/runs/([^/]+)/cancel"), self._cancel, True),
            ("POST", re.compile(r"/runs/([^/]+)/retry"), self._retry, True),
            ("GET", re.compile(r"/runs/([^/]+)/events"), self._events, True),
            ("GET", re.compile(r"/runs/([^/]+)/event-log"), self._event_log, True),
            ("GET", re.compile(r"/runs/([^/]+)/stream"), self._output, True),
            ("GET", re.compile(r"/runs/([^/]+)/state"), self._state_history, True),
            ("POST", re.compile(r"/runs/([^/]+)/fork"), self._fork, True),
            ("POST", re.compile(r"/runs/([^/]+)/reset"), self._reset, True),
            ("GET", re.compile(r"/usage"), self._usage, True),
            ("GET", re.compile(r"/gates"), self._list_gates, True),
            ("GET", re.compile(r"/queues"), self._list_queues, True),
            ("POST", re.compile(r"/queues/([^/]+)"), self._configure_queue, True),
            ("GET", re.compile(r"/queues/([^/]+)/keys"), self._queue_keys, True),
            ("GET", re.compile(r"/schedules"), self._list_schedules, True),
            ("GET", re.compile(r"/overview"), self._overview, True),
            ("GET", re.compile(r"/workflows/([^/]+)"), self._workflow_stats, True),
            ("POST", re.compile(r"/schedules/([^/]+)/pause"), self._pause_schedule, True),
            ("POST", re.compile(r"/schedules/([^/]+)/resume"), self._resume_schedule, True),
            # The key is checked inside: a token stands in for it.
            ("POST", re.compile(r"/runs/([^/]+)/gates/([^/]+)/resolve"), self._resolve, False),
        ]

    def admit(self, request: HttpRequest) -> int:
        """Checks made before a body is read: the route and its method, where the
        request comes from (without an API key only loopback Hosts and Origins, or the
        ``allowed_hosts``: DNS rebinding and cross-site requests), the key, and a JSON
        Content-Type on POST. Returns how large the body may be: nothing for GET, the
        payload limit for an enqueue, 64 KiB for the rest.

        Raises:
            HttpError: 404, 405, 403, 401 or 415.
        """
        method, path, _handler, _groups, needs_key = self._route(request)
        check_origin(self._tide, request)
        if needs_key:
            authorize(self._tide, request)
        if method == "GET":
            return 0
        require_json(request)
        large = path in ("/runs", "/events")  # an input or an event's payload
        return self._tide.max_payload_bytes + SMALL_BODY if large else SMALL_BODY

    async def handle(self, request: HttpRequest) -> HttpResponse:
        try:
            self.admit(request)
            _method, _path, handler, groups, _key = self._route(request)
            # The adapters hand over the path decoded once (as the frameworks route on
            # it): never decode it again.
            return await handler(request, groups)
        except Exception as exc:
            return error_for(exc)

    def _slotted(self, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """``stream`` holding one of the client's ``max_event_streams`` slots until it is
        closed (the adapters always close it).

        Raises:
            HttpError: 503 when every slot is taken.
        """
        tide = self._tide
        if tide.open_event_streams >= tide.max_event_streams:
            raise HttpError(
                503,
                "too_many_streams",
                f"this process serves {tide.max_event_streams} live streams at most "
                "(Tidebase(max_event_streams=...)); retry later",
            )
        tide.open_event_streams += 1
        return _SlotHeld(stream, tide)

    def _route(self, request: HttpRequest) -> tuple[str, str, Handler, list[str], bool]:
        path = request.path.rstrip("/") or "/"
        allowed: list[str] = []
        for method, pattern, handler, needs_key in self._routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            if method != request.method:
                allowed.append(method)
                continue
            return method, path, handler, list(match.groups()), needs_key
        if allowed:
            raise HttpError(405, "method_not_allowed", f"use {', '.join(allowed)} on {path}")
        raise HttpError(404, "not_found", f"no route {request.method} {path}")

    # -- routes -----------------------------------------------------------------------

    async def _health(self, request: HttpRequest, params: list[str]) -> HttpResponse:
        """200 when the database answers; 503 (JSON error) when it does not, or the
        client is closed."""
        try:
            # Bounded: reads ride out a lost connection for reconnect_timeout, longer
            # than a prober waits for an answer.
            with anyio.fail_after(HEALTH_TIMEOUT_S):
                await self._tide.ping()
        except (errors.TidebaseError, TimeoutError) as exc:
            logger.warning("health check failed: %s", exc or "no answer")
            return error_response(503, "unavailable", "the database does not answer")
        return json_response(200, {"ok": True})

    async def _ready(self, request: HttpRequest, params: list[str]) -> HttpResponse:
        """200 while the client is open and none of its workers drains; 503 once a
        drain began (``stop()``/SIGTERM) or the client closed: take this process out
        of the load balancer."""
        if not self._tide.ready:
            return error_response(503, "not_ready", "closed, or draining its workers")
        return json_response(200, {"ready": True})

    async def _metrics(self, request: HttpRequest, params: list[str]) -> HttpResponse:
        return HttpResponse(
            status=200,
            headers=[
                ("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),
                ("Cache-Control", "no-store"),
            ],
            body=(await self._tide.metrics_text()).encode(),
        )

    async def _dashboard(self, request: HttpRequest, params: list[str]) -> HttpResponse:
        return _static("index.html")

    async def _asset(self, request: HttpRequest, params: list[str]) -> HttpResponse:
        return _static(params[0])

    async def _all_events(self, request: HttpRequest, params: list[str]) -> HttpResponse:
        """Server-sent ``runs`` events, each a JSON list of ids of runs that changed
        (from LISTEN; not stored, so not resumable), and an empty list when a queue got
        new runs: what a live list refreshes on."""
        return HttpResponse(
            status=200,
            headers=[
                ("Content-Type", "text/event-stream"),
                ("Cache-Control", "no-store"),
                ("X-Accel-Buffering", "no"),
            ],
            stream=self._slotted(self._changes_stream()),
        )

    async def _changes_stream(self) -> AsyncIterator[bytes]:
        # Without LISTEN (a pooler without listen_dsn) no change arrives: ask the live
        # list to refresh every few seconds instead (an empty list means "reload").
        refresh_s = _REFRESH_WITHOUT_LISTEN_S if self._tide.listener is None else None
        with changed_runs(self._tide) as changes:
            yield b": connected\n\n"
            idle = 0.0
            while True:
                if await changes.signal.wait_for(1.0):
                    ids = changes.take()
                    yield b"event: runs\ndata: " + msgspec.json.encode(ids) + b"\n\n"
                    idle = 0.0
                    continue
                idle += 1.0
                if refresh_s is not None and idle >= refresh_s:
                    idle = 0.0
                    yield b"event: runs\ndata: []\n\n"
                    continue
                if idle >= _KEEPALIVE_S:
                    idle = 0.0
                    yield b": keepalive\n\n"

    async def _openapi(self, request: HttpRequest, params: list[str]) -> HttpResponse:
        return json_response(200, openapi_document())

    async def _list_runs(self, request: HttpRequest, params: list[str]) -> HttpResponse:
        q = request.query
        page = await self._tide.runs.list(
            status=q.get("status") or None,
            workflow=q.get("workflow") or None,
            queue=q.get("queue") or None,
            limit=_int_param(q, "limit", 50),
            cursor=q.get("cursor") or None,
            dedupe_key=q.get("dedupe_key") or None,
        )
        return json_response(200, page)

    async def _enqueue(self, request: HttpRequest, params: list[str]) -> HttpResponse:
        body = _decode(request, EnqueueBody)
        handle = await self._tide.enqueue(
            body.workflow,
            input=body.input,
            queue=body.queue,
            dedupe_key=body.dedupe_key,
            priority=body.priority,
            delay=body.delay,
            run_at=body.run_at,
            max_attempts=body.max_attempts,
            deadline=body.deadline,
            metadata=body.metadata,
            debounce=None
            if body.debounce is None
            else Debounce(
                key=body.debounce.key,
                window=body.debounce.window_s,
                max_wait=body.debounce.max_wait_s,
            ),
            singleton=None
            if body.singleton is None
            else Singleton(key=body.singleton.key, mode=body.singleton.mode),
            version=body.version,
        )
        status = 200 if handle.deduplicated else 201
        return json_response(status, {"id": handle.id, "deduplicated": handle.deduplicated})

    async def _send_event(self, request: HttpRequest, params: list[str]) -> HttpResponse:
        """Send an event by key (``tide.events.send``): 200 with the event as recorded,
        ``delivered`` to the runs waiting for it or ``stored`` for the next one."""
        body = _decode(request, SendEventBody)
        if body.retention is None:
            event = await self._tide.events.send(body.name, key=body.key, payload=body.payload)
        else:
            event = await self._tide.events.send(
                body.name, key=body.key, payload=body.payload, retention=body.retention
            )
        return json_response(200, event)

    async def _list_keyed_events(self, request: HttpRequest, params: list[str]) -> HttpResponse:
        """Events sent by key within their retention, in the order sent (``GET /events``
        is the live stream of changed runs): ``stored`` ones by default, ``status=all``
        for every one; paged with ``next_cursor``."""
        q = request.query
        status: str | None = q.get("status", "stored")
        if status in ("", "all"):
            status = None
        limit = _int_param(q, "limit", 50)
        # One more than asked tells whether a next page exists (at the 1000 cap, a full
        # page says there may be one).
        fetch = limit + 1 if 1 <= limit < 1000 else limit
        events = await self._tide.events.list(
            status=status,
            name=q.get("name") or None,
            key=q.get("key") or None,
            limit=fetch,
            cursor=q.get("cursor") or None,
        )
        more = len(events) > limit or len(events) == fetch == limit
        items = events[:limit]
        next_cursor = self._tide.events.cursor_of(items[-1]) if more and items else None
        return json_response(200, {"items": items, "next_cursor": next_cursor})

    async def _list_event_waits(self, request: HttpRequest, params: list[str]) -> HttpResponse:
        """The open waits of active runs for events by key, oldest first."""
        q = request.query
        waits = await self._tide.events.waits(
            name=q.get("name") or None,
            key=q.get("key") or None,
            limit=_int_param(q, "limit", 50),
        )
        return json_response(200, {"items": waits})

    async def _get_run(self, request: HttpRequest, params: list[str]) -> HttpResponse:
        return json_response(200, await self._tide.runs.get(_run_id(params[0])))

    async def _cancel(self, request: HttpRequest, params: list[str]) -> HttpResponse:
        rid = _run_id(params[0])
        body = _decode(request, CancelBody, required=False) or CancelBody()
        await self._tide.runs.cancel(rid, reason=body.reason, actor=body.actor)
        return json_response(200, {"id": rid, "status": "cancelled"})

    async def _retry(self, request: HttpRequest, params: list[str]) -> HttpResponse:
        rid = _run_id(params[0])
        await self._tide.runs.retry(rid)
        return json_response(200, {"id": rid, "status": "queued"})

    async def _list_gates(self, request: HttpRequest, params: list[str]) -> HttpResponse:
        q = request.query
        status: str | None = q.get("status", "pending")
        if status in ("", "all"):
            status = None
        run_id = q.get("run_id")
        gates = await self._tide.gates.list(
            status=status,
            run_id=_run_id(run_id) if run_id else None,
            limit=_int_param(q, "limit", 50),
            cursor=q.get("cursor") or None,
        )
        next_cursor = self._tide.gates.cursor_of(gates[-1]) if gates else None
        return json_response(200, {"items": gates, "next_cursor": next_cursor})

    async def _list_queues(self, request: HttpRequest, params: list[str]) -> HttpResponse:
        return json_response(200, {"items": await self._tide.queues.list()})

    async def _configure_queue(self, request: HttpRequest, params: list[str]) -> HttpResponse:
        body = decode_json_body(request)
        if not isinstance(body, dict) or set(body) - set(_QUEUE_CONTROLS):
            raise HttpError(
                400,
                "bad_request",
                f"the body is an object with any of {', '.join(_QUEUE_CONTROLS)} "
                "(null clears one; an omitted one stays as it is)",
            )
        # configure checks every value before it writes anything (400 when one is bad).
        info = await self._tide.queues.configure(
            params[0],
            concurrency=body.get("concurrency", UNSET),
            rate_per_minute=body.get("rate_per_minute", UNSET),
            paused=body.get("paused", UNSET),
            per_key_concurrency=body.get("per_key_concurrency", UNSET),
            per_key_rate_per_minute=body.get("per_key_rate_per_minute", UNSET),
        )
        return json_response(200, info)

    async def _queue_keys(self, request: HttpRequest, params: list[str]) -> HttpResponse:
        limit = _int_param(request.query, "limit", 20)
        return json_response(200, await self._tide.queues.keys(params[0], limit=limit))

    async def _list_schedules(self, request: HttpRequest, params: list[str]) -> HttpResponse:
        return json_response(200, {"items": await self._tide.schedules.list()})

    async def _overview(self, request: HttpRequest, params: list[str]) -> HttpResponse:
        stats_range = request.query.get("range") or "1h"
        return json_response(200, await self._tide.stats.overview(range=stats_range))

    async def _workflow_stats(self, request: HttpRequest, params: list[str]) -> HttpResponse:
        stats_range = request.query.get("range") or "1h"
        return json_response(200, await self._tide.stats.workflow(params[0], range=stats_range))

    async def _pause_schedule(self, request: HttpRequest, params: list[str]) -> HttpResponse:
        return json_response(200, await self._tide.schedules.pause(params[0]))

    async def _resume_schedule(self, request: HttpRequest, params: list[str]) -> HttpResponse:
        return json_response(200, await self._tide.schedules.resume(params[0]))

    async def _resolve(self, request: HttpRequest, params: list[str]) -> HttpResponse:
        body = _decode(request, ResolveBody)
        trusted = True
        if body.token is None:
            authorize(self._tide, request)
        elif self._tide.api_key:
            try:
                authorize(self._tide, request)
            except HttpError:
                trusted = False
        try:
            gate = await self._tide.gates.resolve(
                _run_id(params[0]),
                params[1],
                approved=body.approved,
                actor=body.actor,
                payload=body.payload,
                token=body.token,
            )
        except (HttpError, errors.NotFoundError, errors.ConflictError, errors.SignatureError):
            if trusted:
                raise
            # Only the token vouches for this caller: whatever is wrong (no such run or
            # gate, decided already, wrong token), the answer is the same, so that it
            # tells nothing about runs and gates to someone without the key.
            raise HttpError(
                401, "unauthorized", "the token does not resolve a pending gate here"
            ) from None
        return json_response(200, gate)

    async def _events(self, request: HttpRequest, params: list[str]) -> HttpResponse:
        rid = _run_id(params[0])
        after_text = request.headers.get("last-event-id") or request.query.get("after") or "0"
        if (
            not after_text.isascii()
            or not after_text.isdigit()
            or len(after_text) > 10
            or int(after_text) > _INT4_MAX
        ):
            raise HttpError(
                400,
                "bad_request",
                f"Last-Event-ID/after must be an event seq, got {after_text!r:.40}",
            )
        after = int(after_text)
        await self._tide.runs.status(rid)  # RunNotFound before the stream starts
        return HttpResponse(
            status=200,
            headers=[
                ("Content-Type", "text/event-stream"),
                ("Cache-Control", "no-store"),
                ("X-Accel-Buffering", "no"),
            ],
            stream=self._slotted(self._event_stream(rid, after)),
        )

    async def _event_log(self, request: HttpRequest, params: list[str]) -> HttpResponse:
        """A page of the run's stored events with their times (the SSE of ``/events``
        carries none): ``next_after`` is the seq to pass as ``after`` for the next
        page, null when this one is the last."""
        q = request.query
        limit = _int_param(q, "limit", 100)
        events = await self._tide.runs.event_page(
            _run_id(params[0]), after=_int_param(q, "after", 0), limit=limit
        )
        after = events[-1].seq if events and len(events) == limit else None
        return json_response(200, {"items": events, "next_after": after})

    async def _state_history(self, request: HttpRequest, params: list[str]) -> HttpResponse:
        history = await self._tide.runs.state_history(_run_id(params[0]))
        return json_response(200, {"items": history})

    async def _fork(self, request: HttpRequest, params: list[str]) -> HttpResponse:
        body = _decode(request, ForkBody)
        rid = _run_id(params[0])
        if "input" in msgspec.json.decode(request.body):
            new_id = await self._tide.runs.fork(rid, from_step=body.from_step, input=body.input)
        else:
            new_id = await self._tide.runs.fork(rid, from_step=body.from_step)
        return json_response(201, {"id": new_id, "forked_from": rid})

    async def _reset(self, request: HttpRequest, params: list[str]) -> HttpResponse:
        body = _decode(request, ResetBody)
        rid = _run_id(params[0])
        await self._tide.runs.reset(rid, to_step=body.to_step)
        return json_response(200, {"id": rid, "status": "queued"})

    async def _usage(self, request: HttpRequest, params: list[str]) -> HttpResponse:
        q = request.query
        group_by = [d for d in q.get("group_by", "workflow,model").split(",") if d]
        limit = _int_param(q, "limit", 1000)
        if not 1 <= limit <= 10_000:
            raise HttpError(400, "bad_request", f"limit must be 1..10000, got {limit}")
        cursor = q.get("cursor") or "0"
        if _INTEGER.fullmatch(cursor) is None or not 0 <= int(cursor) <= 2**31:
            raise HttpError(400, "bad_request", f"invalid cursor {cursor!r:.40}")
        rows = await self._tide.usage.summary(
            workflow=q.get("workflow") or None,
            since=_time_param(q, "since"),
            until=_time_param(q, "until"),
            group_by=group_by,
            limit=limit + 1,
            offset=int(cursor),
        )
        more = len(rows) > limit
        next_cursor = str(int(cursor) + limit) if more else None
        return json_response(200, {"items": rows[:limit], "next_cursor": next_cursor})

    async def _output(self, request: HttpRequest, params: list[str]) -> HttpResponse:
        """A run's live output (``run.emit``) as server-sent ``chunk`` events, from now
        until shortly after the run ends."""
        rid = _run_id(params[0])
        stream = request.query.get("stream") or "output"
        check_name("stream", stream)
        await self._tide.runs.status(rid)  # RunNotFound before the stream starts
        if self._tide.listener is None:
            # Through a transaction-mode pooler without listen_dsn: output is not stored.
            raise HttpError(
                503,
                "unavailable",
                "live output needs a LISTEN connection: configure listen_dsn "
                "(TIDEBASE_LISTEN_URL), a direct connection beside the pooler",
            )

        async def chunks() -> AsyncIterator[bytes]:
            yield b": connected\n\n"
            try:
                async for chunk in self._tide.runs.stream(rid, stream=stream):
                    yield b"event: chunk\ndata: " + msgspec.json.encode(chunk) + b"\n\n"
            except errors.StreamOverflow as exc:
                # A reader too slow for the output: told so, and the stream ends.
                yield b"event: error\ndata: " + msgspec.json.encode(str(exc)) + b"\n\n"
                return
            yield b"event: end\ndata: null\n\n"

        return HttpResponse(
            status=200,
            headers=[
                ("Content-Type", "text/event-stream"),
                ("Cache-Control", "no-store"),
                ("X-Accel-Buffering", "no"),
            ],
            stream=self._slotted(chunks()),
        )

    async def _event_stream(self, run_id: UUID, after: int) -> AsyncIterator[bytes]:
        """``runs.events`` as SSE: each event with its seq as the SSE id; a comment
        every 15 s keeps proxies from closing an idle stream."""
        # Many idle followers must not poll the database each second: with LISTEN the
        # floor is the keepalive interval (a deleted or pruned run, which nothing
        # announces, ends its stream that late); without it, each second.
        poll = 1.0 if self._tide.listener is None else _KEEPALIVE_S
        rows = self._tide.runs.event_rows(run_id, after=after, poll=poll, idle_s=_KEEPALIVE_S)
        async for r in rows:
            if r is None:
                yield b": keepalive\n\n"
                continue
            data = b"null" if r.data is None else r.data
            yield f"id: {r.seq}\nevent: {r.type}\ndata: ".encode() + _one_line(data) + b"\n\n"


class _SlotHeld:
    """An SSE stream that gives its slot back when closed, started or not (closing an
    async generator that never started does not run its ``finally``)."""

    def __init__(self, inner: AsyncIterator[bytes], tide: Tidebase) -> None:
        self._inner = inner
        self._tide: Tidebase | None = tide

    def __aiter__(self) -> _SlotHeld:
        return self

    async def __anext__(self) -> bytes:
        return await self._inner.__anext__()

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()  # type: ignore[attr-defined]
        finally:
            if self._tide is not None:
                self._tide.open_event_streams -= 1
                self._tide = None


_STATIC = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}


def _static(name: str) -> HttpResponse:
    """A file of the dashboard, shipped inside the package (no build step)."""
    suffix = name[name.rfind(".") :] if "." in name else ""
    folder = resources.files("tidebase_async.web").joinpath("static")
    entry = folder.joinpath(name)
    if suffix not in _STATIC or not entry.is_file():
        raise HttpError(404, "not_found", f"no asset {name!r}")
    return HttpResponse(
        status=200,
        headers=[
            ("Content-Type", _STATIC[suffix]),
            ("Cache-Control", "no-cache"),
            ("X-Content-Type-Options", "nosniff"),
            # Nobody may frame the dashboard (clickjacking its buttons).
            ("X-Frame-Options", "DENY"),
            (
                "Content-Security-Policy",
                "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
                "frame-ancestors 'none'; object-src 'none'; base-uri 'none'",
            ),
        ],
        body=entry.read_bytes(),
    )


def _one_line(data: bytes) -> bytes:
    """Event data on one SSE line: compact JSON has no raw newlines, but be sure."""
    return data.replace(b"\r", b"").replace(b"\n", b" ")


def _decode(request: HttpRequest, tp: Any, *, required: bool = True) -> Any:
    decode_json_body(request, required=required)  # 400 for missing or malformed JSON
    if not request.body.strip():
        return None
    try:
        return msgspec.json.decode(request.body, type=tp)
    except msgspec.ValidationError as exc:
        raise HttpError(400, "bad_request", f"invalid body: {exc}") from None


def _run_id(text: str) -> UUID:
    try:
        return as_uuid(text)
    except errors.TidebaseError as exc:
        raise HttpError(400, "bad_request", str(exc)) from None


def _time_param(query: dict[str, str], name: str) -> datetime | None:
    text = query.get(name)
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise HttpError(400, "bad_request", f"{name} must be an ISO 8601 time") from None
    if value.utcoffset() is None:
        raise HttpError(400, "bad_request", f"{name} must carry a time zone (e.g. Z)")
    return value


def _int_param(query: dict[str, str], name: str, default: int) -> int:
    text = query.get(name)
    if text is None or text == "":
        return default
    if _INTEGER.fullmatch(text) is None:
        raise HttpError(400, "bad_request", f"{name} must be an integer, got {text!r:.40}")
    return int(text)
