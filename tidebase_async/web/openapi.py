"""The OpenAPI 3.1 document of the HTTP API (served at ``/openapi.json``).

Schemas of the read models come from msgspec, so they match what the API returns.
"""

from __future__ import annotations

import functools
from typing import Any

import msgspec

from tidebase_async.models import (
    Event,
    EventWaitInfo,
    GateInfo,
    KeyedEvent,
    Overview,
    Page,
    QueueInfo,
    QueueKeys,
    RunInfo,
    ScheduleInfo,
    StateVersion,
    UsageSummary,
    WorkflowOverview,
)

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Bad request",
        401: "Missing or wrong API key or token",
        404: "Not found",
        405: "Method not allowed",
        409: "Conflict with the run's or gate's state",
        413: "Body too large",
        503: "Database unavailable",
    }
    return {str(c): {"description": text[c], **_json(_ERROR)} for c in codes}


def query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


_RUN_ID = {
    "name": "run_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}


@functools.cache
def openapi_document() -> dict[str, Any]:
    (run_info, page, gate_info, queue_info, schedule_info), components = (
        msgspec.json.schema_components(
            [RunInfo, Page, GateInfo, QueueInfo, ScheduleInfo],
            ref_template="#/components/schemas/{name}",
        )
    )
    components["Error"] = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    }
    components["EnqueueRequest"] = {
        "type": "object",
        "required": ["workflow"],
        "additionalProperties": False,
        "properties": {
            "workflow": {"type": "string"},
            "input": {},
            "queue": {"type": ["string", "null"]},
            "dedupe_key": {"type": ["string", "null"]},
            "priority": {"type": "integer"},
            "delay": {"type": ["number", "null"], "minimum": 0},
            "run_at": {"type": ["string", "null"], "format": "date-time"},
            "max_attempts": {"type": ["integer", "null"], "minimum": 1},
            "deadline": {"type": ["string", "null"], "format": "date-time"},
            "metadata": {"type": ["object", "null"]},
            "debounce": {
                "type": ["object", "null"],
                "required": ["key", "window_s"],
                "additionalProperties": False,
                "properties": {
                    "key": {"type": "string", "minLength": 1, "maxLength": 200},
                    "window_s": {"type": "number", "minimum": 0},
                    "max_wait_s": {"type": ["number", "null"], "minimum": 0},
                },
            },
            "singleton": {
                "type": ["object", "null"],
                "required": ["key"],
                "additionalProperties": False,
                "properties": {
                    "key": {"type": "string", "minLength": 1, "maxLength": 200},
                    "mode": {"type": "string", "enum": ["skip", "replace"]},
                },
            },
            "version": {
                "type": ["string", "null"],
                "description": "The workflow version the run records and runs with "
                "(default: the newest registered in the serving process). A version "
                "the serving process does not register for the workflow is a 400 "
                "naming the registered ones; a process that does not register the "
                "workflow accepts any.",
            },
        },
    }
    components["ResolveRequest"] = {
        "type": "object",
        "required": ["approved"],
        "additionalProperties": False,
        "properties": {
            "approved": {"type": "boolean"},
            "actor": {"type": ["string", "null"]},
            "payload": {},
            "token": {"type": ["string", "null"]},
        },
    }
    components["CancelRequest"] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "reason": {"type": ["string", "null"]},
            "actor": {"type": ["string", "null"]},
        },
    }
    gate_page = {
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": gate_info},
            "next_cursor": {"type": ["string", "null"]},
        },
    }
    id_status = {
        "type": "object",
        "properties": {"id": {"type": "string", "format": "uuid"}, "status": {"type": "string"}},
    }
    string = {"type": "string"}
    paths: dict[str, Any] = {
        "/health": {
            "get": {
                "summary": "Liveness and database reachability (no auth)",
                "security": [],
                "responses": {
                    "200": {"description": "OK", **_json({"type": "object"})},
                    **_errors(503),
                },
            }
        },
        "/ready": {
            "get": {
                "summary": "Readiness: the client is open and none of its workers drains (no auth)",
                "security": [],
                "responses": {
                    "200": {"description": "Ready", **_json({"type": "object"})},
                    "503": {"description": "Closed, or draining", **_json(_ERROR)},
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Metrics in the Prometheus text format (runs, steps, queues)",
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format 0.0.4",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(401),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {"200": {"description": "OK"}, **_errors(401)},
            }
        },
        "/runs": {
            "get": {
                "summary": "List runs, newest first",
                "parameters": [
                    query(
                        "status",
                        {
                            "type": "string",
                            "enum": [
                                "queued",
                                "running",
                                "waiting",
                                "completed",
                                "failed",
                                "cancelled",
                            ],
                        },
                    ),
                    query("workflow", string),
                    query("queue", string),
                    query("dedupe_key", string),
                    query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                    query("cursor", string),
                ],
                "responses": {"200": {"description": "A page", **_json(page)}, **_errors(400, 401)},
            },
            "post": {
                "summary": "Enqueue a run",
                "requestBody": {
                    "required": True,
                    **_json({"$ref": "#/components/schemas/EnqueueRequest"}),
                },
                "responses": {
                    "201": {"description": "Created", **_json({"type": "object"})},
                    "200": {
                        "description": "An active run had this dedupe key",
                        **_json({"type": "object"}),
                    },
                    **_errors(400, 401, 413),
                },
            },
        },
        "/runs/{run_id}": {
            "get": {
                "summary": "A run with its steps, gates and children",
                "parameters": [_RUN_ID],
                "responses": {
                    "200": {"description": "The run", **_json(run_info)},
                    **_errors(400, 401, 404),
                },
            }
        },
        "/runs/{run_id}/cancel": {
            "post": {
                "summary": "Cancel a run and its children",
                "parameters": [_RUN_ID],
                "requestBody": {
                    "required": False,
                    **_json({"$ref": "#/components/schemas/CancelRequest"}),
                },
                "responses": {
                    "200": {"description": "Cancelled", **_json(id_status)},
                    **_errors(400, 401, 404, 409),
                },
            }
        },
        "/runs/{run_id}/retry": {
            "post": {
                "summary": "Retry a failed run",
                "parameters": [_RUN_ID],
                "responses": {
                    "200": {"description": "Queued", **_json(id_status)},
                    **_errors(400, 401, 404, 409),
                },
            }
        },
        "/runs/{run_id}/events": {
            "get": {
                "summary": "The run's events as server-sent events; Last-Event-ID resumes",
                "parameters": [
                    _RUN_ID,
                    query("after", {"type": "integer", "minimum": 0}),
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "integer"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "An event stream",
                        "content": {"text/event-stream": {"schema": string}},
                    },
                    **_errors(400, 401, 404),
                },
            }
        },
        "/gates": {
            "get": {
                "summary": "List gates (pending by default; status=all for every one)",
                "parameters": [
                    query(
                        "status",
                        {
                            "type": "string",
                            "enum": [
                                "pending",
                                "approved",
                                "rejected",
                                "expired",
                                "cancelled",
                                "all",
                            ],
                        },
                    ),
                    query("run_id", {"type": "string", "format": "uuid"}),
                    query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                    query("cursor", string),
                ],
                "responses": {
                    "200": {"description": "Gates", **_json(gate_page)},
                    **_errors(400, 401),
                },
            }
        },
        "/runs/{run_id}/gates/{name}/resolve": {
            "post": {
                "summary": "Approve or reject a pending gate, once (a token replaces the API key)",
                "security": [{"bearer": []}, {}],
                "parameters": [
                    _RUN_ID,
                    {"name": "name", "in": "path", "required": True, "schema": string},
                ],
                "requestBody": {
                    "required": True,
                    **_json({"$ref": "#/components/schemas/ResolveRequest"}),
                },
                "responses": {
                    "200": {"description": "The decided gate", **_json(gate_info)},
                    **_errors(400, 401, 404, 409),
                },
            }
        },
    }
    name_param = {"name": "name", "in": "path", "required": True, "schema": string}
    paths["/queues"] = {
        "get": {
            "summary": "Queues with their controls and runs counted by status",
            "responses": {
                "200": {
                    "description": "Queues",
                    **_json(
                        {
                            "type": "object",
                            "properties": {"items": {"type": "array", "items": queue_info}},
                        }
                    ),
                },
                **_errors(401),
            },
        }
    }
    paths["/queues/{name}"] = {
        "post": {
            "summary": "Set a queue's controls (null clears one; omitted ones stay)",
            "parameters": [name_param],
            "requestBody": {
                "required": True,
                **_json(
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "concurrency": {"type": ["integer", "null"], "minimum": 1},
                            "rate_per_minute": {"type": ["number", "null"], "exclusiveMinimum": 0},
                            "paused": {"type": "boolean"},
                            "per_key_concurrency": {"type": ["integer", "null"], "minimum": 1},
                            "per_key_rate_per_minute": {
                                "type": ["number", "null"],
                                "exclusiveMinimum": 0,
                            },
                        },
                    }
                ),
            },
            "responses": {
                "200": {"description": "The queue", **_json(queue_info)},
                **_errors(400, 401),
            },
        }
    }
    (queue_keys,), keys_components = msgspec.json.schema_components(
        [QueueKeys], ref_template="#/components/schemas/{name}"
    )
    components.update(keys_components)
    paths["/queues/{name}/keys"] = {
        "get": {
            "summary": "A queue's flow control by key: its per-key controls, its busiest "
            "concurrency keys (running plus queued runs), pending debounce runs and "
            "active singleton runs",
            "parameters": [
                name_param,
                query("limit", {"type": "integer", "minimum": 1, "maximum": 100}),
            ],
            "responses": {
                "200": {"description": "The queue's keys", **_json(queue_keys)},
                **_errors(400, 401),
            },
        }
    }
    paths["/schedules"] = {
        "get": {
            "summary": "Schedules with their next fire times",
            "responses": {
                "200": {
                    "description": "Schedules",
                    **_json(
                        {
                            "type": "object",
                            "properties": {"items": {"type": "array", "items": schedule_info}},
                        }
                    ),
                },
                **_errors(401),
            },
        }
    }
    paths["/runs/{run_id}/stream"] = {
        "get": {
            "summary": "The run's live output (run.emit) as server-sent 'chunk' events",
            "parameters": [_RUN_ID, query("stream", string)],
            "responses": {
                "200": {
                    "description": "An event stream",
                    "content": {"text/event-stream": {"schema": string}},
                },
                **_errors(400, 401, 404),
            },
        }
    }
    (state_version, usage_summary), more = msgspec.json.schema_components(
        [StateVersion, UsageSummary], ref_template="#/components/schemas/{name}"
    )
    components.update(more)
    (run_event,), event_log_components = msgspec.json.schema_components(
        [Event], ref_template="#/components/schemas/{name}"
    )
    components.update(event_log_components)
    paths["/runs/{run_id}/event-log"] = {
        "get": {
            "summary": "A page of the run's stored events, with their times",
            "parameters": [
                _RUN_ID,
                query("after", {"type": "integer", "minimum": 0}),
                query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
            ],
            "responses": {
                "200": {
                    "description": "Events, oldest first; next_after pages on",
                    **_json(
                        {
                            "type": "object",
                            "properties": {
                                "items": {"type": "array", "items": run_event},
                                "next_after": {"type": ["integer", "null"]},
                            },
                        }
                    ),
                },
                **_errors(400, 401, 404),
            },
        }
    }
    paths["/runs/{run_id}/state"] = {
        "get": {
            "summary": "Every version of the run's state, oldest first",
            "parameters": [_RUN_ID],
            "responses": {
                "200": {
                    "description": "Versions",
                    **_json(
                        {
                            "type": "object",
                            "properties": {"items": {"type": "array", "items": state_version}},
                        }
                    ),
                },
                **_errors(400, 401, 404),
            },
        }
    }
    step_ref = {"oneOf": [{"type": "string"}, {"type": "integer", "minimum": 1}]}
    paths["/runs/{run_id}/fork"] = {
        "post": {
            "summary": "A new run replaying this one's history before from_step",
            "parameters": [_RUN_ID],
            "requestBody": {
                "required": True,
                **_json(
                    {
                        "type": "object",
                        "required": ["from_step"],
                        "additionalProperties": False,
                        "properties": {"from_step": step_ref, "input": {}},
                    }
                ),
            },
            "responses": {
                "201": {"description": "The fork", **_json({"type": "object"})},
                **_errors(400, 401, 404),
            },
        }
    }
    paths["/runs/{run_id}/reset"] = {
        "post": {
            "summary": "Execute a failed run again from to_step",
            "parameters": [_RUN_ID],
            "requestBody": {
                "required": True,
                **_json(
                    {
                        "type": "object",
                        "required": ["to_step"],
                        "additionalProperties": False,
                        "properties": {"to_step": step_ref},
                    }
                ),
            },
            "responses": {
                "200": {"description": "Queued", **_json(id_status)},
                **_errors(400, 401, 404, 409),
            },
        }
    }
    paths["/usage"] = {
        "get": {
            "summary": "Usage summed per group (group_by: workflow,model,provider,kind)",
            "parameters": [
                query("workflow", string),
                query("since", {"type": "string", "format": "date-time"}),
                query("until", {"type": "string", "format": "date-time"}),
                query("group_by", string),
                query("limit", {"type": "integer", "minimum": 1, "maximum": 10000}),
                query("cursor", string),
            ],
            "responses": {
                "200": {
                    "description": "Groups",
                    **_json(
                        {
                            "type": "object",
                            "properties": {
                                "items": {"type": "array", "items": usage_summary},
                                "next_cursor": {"type": ["string", "null"]},
                            },
                        }
                    ),
                },
                **_errors(400, 401),
            },
        }
    }
    paths["/"] = {
        "get": {
            "summary": "The dashboard (asks for the API key itself when one is set)",
            "security": [],
            "responses": {
                "200": {"description": "HTML", "content": {"text/html": {"schema": string}}}
            },
        }
    }
    paths["/assets/{name}"] = {
        "get": {
            "summary": "A static file of the dashboard",
            "security": [],
            "parameters": [name_param],
            "responses": {"200": {"description": "The file"}, **_errors(404)},
        }
    }
    (keyed_event, event_wait), event_components = msgspec.json.schema_components(
        [KeyedEvent, EventWaitInfo], ref_template="#/components/schemas/{name}"
    )
    components.update(event_components)
    components["SendEventRequest"] = {
        "type": "object",
        "required": ["name", "key"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string"},
            "key": {"type": ["string", "integer"], "description": "At most 200 characters"},
            "payload": {},
            "retention": {
                "type": ["number", "null"],
                "exclusiveMinimum": 0,
                "description": "Seconds a stored event is kept (default 7 days)",
            },
        },
    }
    paths["/events"] = {
        "get": {
            "summary": "Server-sent 'runs' events: ids of runs that changed (live only)",
            "responses": {
                "200": {
                    "description": "An event stream",
                    "content": {"text/event-stream": {"schema": string}},
                },
                **_errors(401),
            },
        },
        "post": {
            "summary": "Send an event by key: delivered to every run waiting for it "
            "(run.wait_for_event), else stored for the next one",
            "requestBody": {
                "required": True,
                **_json({"$ref": "#/components/schemas/SendEventRequest"}),
            },
            "responses": {
                "200": {"description": "The event as recorded", **_json(keyed_event)},
                **_errors(400, 401, 413),
            },
        },
    }
    paths["/keyed-events"] = {
        "get": {
            "summary": "Events sent by key, in the order sent (stored ones by default; "
            "status=all for every one within its retention)",
            "parameters": [
                query(
                    "status",
                    {"type": "string", "enum": ["stored", "delivered", "consumed", "all"]},
                ),
                query("name", string),
                query("key", string),
                query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                query("cursor", string),
            ],
            "responses": {
                "200": {
                    "description": "A page of events",
                    **_json(
                        {
                            "type": "object",
                            "properties": {
                                "items": {"type": "array", "items": keyed_event},
                                "next_cursor": {"type": ["string", "null"]},
                            },
                        }
                    ),
                },
                **_errors(400, 401),
            },
        }
    }
    paths["/event-waits"] = {
        "get": {
            "summary": "Open waits of active runs for events by key (run.wait_for_event), "
            "oldest first",
            "parameters": [
                query("name", string),
                query("key", string),
                query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
            ],
            "responses": {
                "200": {
                    "description": "Waits",
                    **_json(
                        {
                            "type": "object",
                            "properties": {"items": {"type": "array", "items": event_wait}},
                        }
                    ),
                },
                **_errors(400, 401),
            },
        }
    }
    (overview, workflow_overview), stats_components = msgspec.json.schema_components(
        [Overview, WorkflowOverview], ref_template="#/components/schemas/{name}"
    )
    components.update(stats_components)
    stats_range = query("range", {"type": "string", "enum": ["1h", "6h", "24h", "7d"]})
    paths["/overview"] = {
        "get": {
            "summary": "Dashboard overview: runs per minute (1h, 6h) or hour (24h, 7d) and "
            "per workflow, queues now, top failing workflows, usage per day and model",
            "parameters": [stats_range],
            "responses": {
                "200": {"description": "The overview", **_json(overview)},
                **_errors(400, 401),
            },
        }
    }
    paths["/workflows/{name}"] = {
        "get": {
            "summary": "One workflow: runs per bucket, per version, recent failures, schedules",
            "parameters": [name_param, stats_range],
            "responses": {
                "200": {"description": "The workflow", **_json(workflow_overview)},
                **_errors(400, 401, 404),
            },
        }
    }
    for action in ("pause", "resume"):
        paths[f"/schedules/{{name}}/{action}"] = {
            "post": {
                "summary": f"{action.capitalize()} a schedule",
                "parameters": [name_param],
                "responses": {
                    "200": {"description": "The schedule", **_json(schedule_info)},
                    **_errors(401, 404),
                },
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {"title": "tidebase-async", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
