"""The MCP server of a Tidebase, on the official ``mcp`` SDK (extra ``tidebase-async[mcp]``).

Two transports serve the same tools (``web.mcp_tools``):

- ``tidebase mcp module:tide``: stdio (``serve_stdio``), for an MCP client that starts
  the server as a subprocess;
- ``tide.mcp_app()``: the streamable HTTP transport as an ASGI app (``McpApp``), behind
  the API key of the HTTP API (``web.access``): ``Mount("/mcp", app=tide.mcp_app())``.

Tools, each with a JSON schema for its arguments and one for its structured result:
``list_runs``, ``get_run``, ``enqueue``, ``cancel_run``, ``retry_run``, ``list_gates``,
``resolve_gate``, ``run_events``, ``send_event``. A run also reads as the resource
``tidebase://runs/{id}`` (JSON).

Bad input (wrong types, a missing argument, a malformed run id, an unknown run,
workflow or gate, a gate decided already) comes back as a tool error (``isError``)
whose text names the problem; the session goes on. ``enqueue`` takes only workflows
registered in this process's Tidebase, so that a mistyped name is refused instead of
queued to fail later.

HTTP is served stateless, one JSON response per POST: each request gets its own SDK
session manager, whose task group lives exactly as long as the request. Nothing
outlives a request, so the app needs no lifespan of its own and works mounted in any
ASGI app (whose lifespan knows nothing of it), in any number of processes, with no
session affinity.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import msgspec

from tidebase_async import errors
from tidebase_async.web.access import authorize, check_origin
from tidebase_async.web.adapters import request_head, send_response, serve_lifespan
from tidebase_async.web.core import HttpError, error_for
from tidebase_async.web.mcp_tools import RUN_URI, ToolFailed, Tools, ToolSpec

try:
    import mcp  # noqa: F401  (first: a missing SDK fails here, not half-way below)
    import mcp_types as types
    from mcp.server.context import ServerRequestContext
    from mcp.server.lowlevel import Server
    from mcp.server.stdio import stdio_server
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
    from mcp.shared.exceptions import MCPError
except ImportError as exc:
    raise errors.ConfigurationError(
        f"the MCP server needs the mcp SDK ({exc}): pip install 'tidebase-async[mcp]'"
    ) from exc

if TYPE_CHECKING:
    from tidebase_async.client.tidebase import Tidebase

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Context = ServerRequestContext[Any]


def build_server(tide: Tidebase) -> Server[Any]:
    """The MCP server (the SDK's low-level ``Server``) of ``tide``'s tools and the
    ``tidebase://runs/{id}`` resource template. Its handlers never raise for bad
    input: a tool's failure is an ``is_error`` result, an unknown resource an
    invalid-params error."""
    tools = Tools(tide)

    async def list_tools(
        ctx: Context, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[_tool(spec) for spec in tools.specs()])

    async def call_tool(ctx: Context, params: types.CallToolRequestParams) -> types.CallToolResult:
        try:
            data = await tools.call(params.name, params.arguments)
        except ToolFailed as exc:
            text = types.TextContent(text=str(exc))
            return types.CallToolResult(content=[text], is_error=True)
        text = types.TextContent(text=msgspec.json.encode(data).decode())
        return types.CallToolResult(content=[text], structured_content=data)

    async def list_resources(
        ctx: Context, params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=[])

    async def list_templates(
        ctx: Context, params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        template = types.ResourceTemplate(
            uri_template=RUN_URI,
            name="run",
            description="A run as JSON, as get_run returns it.",
            mime_type="application/json",
        )
        return types.ListResourceTemplatesResult(resource_templates=[template])

    async def read_resource(
        ctx: Context, params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        try:
            text = await tools.read_run(params.uri)
        except ToolFailed as exc:
            raise MCPError(types.INVALID_PARAMS, str(exc)) from None
        contents = types.TextResourceContents(
            uri=params.uri, mime_type="application/json", text=text
        )
        return types.ReadResourceResult(contents=[contents])

    return Server(
        "tidebase",
        version=_version(),
        instructions="Durable workflow runs in Postgres: list and inspect runs, enqueue, "
        "cancel and retry them, and approve or reject the gates they wait at.",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_templates,
        on_read_resource=read_resource,
    )


def _tool(spec: ToolSpec) -> types.Tool:
    return types.Tool(
        name=spec.name,
        description=spec.description,
        input_schema=spec.input_schema,
        output_schema=spec.output_schema,
        annotations=types.ToolAnnotations(
            read_only_hint=spec.read_only, destructive_hint=spec.name == "cancel_run"
        ),
    )


def _version() -> str:
    try:
        return importlib.metadata.version("tidebase-async")
    except importlib.metadata.PackageNotFoundError:
        return ""


async def serve_stdio(tide: Tidebase) -> None:
    """Open ``tide`` (not open yet) and serve MCP over stdin/stdout until stdin closes,
    then close it. Stdout is the protocol's from the start: anything else printed
    meanwhile (opening the database included) goes to stderr."""
    server = build_server(tide)
    async with stdio_server() as (read_stream, write_stream), tide:
        await server.run(read_stream, write_stream, server.create_initialization_options())


class McpApp:
    """``tide.mcp_app()``: the MCP streamable HTTP transport as an ASGI app, served at
    the root of where it is mounted (``Mount("/mcp", app=tide.mcp_app())``).

    Every request passes the HTTP API's checks first (``web.access``: the API key, or
    without one loopback Host and Origin only). POST carries the JSON-RPC messages and
    gets a JSON answer; GET and DELETE get 405 (no server-sent stream, no sessions).
    Each POST is served by its own stateless session manager inside the request, so
    nothing needs starting: no lifespan, no background task. The Tidebase must be
    open (the application's lifespan opens it, as for ``asgi_app()``).
    """

    def __init__(self, tide: Tidebase) -> None:
        self._tide = tide
        self._server = build_server(tide)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        head = request_head(scope, mounted=True)
        try:
            if head.path != "/":
                raise HttpError(404, "not_found", f"no route {head.path!r:.80}: MCP is at /")
            check_origin(self._tide, head)
            authorize(self._tide, head)
            if head.method != "POST":
                raise HttpError(
                    405, "method_not_allowed", "use POST (stateless: no stream, no sessions)"
                )
        except HttpError as exc:
            response = error_for(exc)
            if exc.status == 405:
                response.headers.append(("Allow", "POST"))
            await send_response(send, response, receive)
            return
        manager = StreamableHTTPSessionManager(
            self._server, stateless=True, json_response=True, security_settings=None
        )
        async with manager.run():
            await manager.handle_request(scope, receive, send)
