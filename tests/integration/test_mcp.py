"""The MCP server, driven by the ``mcp`` SDK's own client: over stdio (``tidebase mcp
tests.integration.mcp_app:tide`` as a subprocess) and over streamable HTTP
(``tide.mcp_app()`` mounted in a Starlette app served by uvicorn, with and without an
API key). A worker for the app's workflows runs in the test process."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.to_thread
import httpx
import httpx2
import pytest
import uvicorn
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from starlette.applications import Starlette
from starlette.routing import Mount

import tidebase_async.web
from tests.integration import mcp_app
from tests.integration.core_support import eventually, working
from tests.integration.procs import REPO_ROOT
from tidebase_async import Tidebase, errors
from tidebase_async.cli.main import main

TOOLS = {
    "list_runs",
    "get_run",
    "enqueue",
    "cancel_run",
    "retry_run",
    "list_gates",
    "resolve_gate",
    "run_events",
    "send_event",
}
API_KEY = "mcp-test-key-5e2a91"
Capture = pytest.CaptureFixture[str]


@contextlib.asynccontextmanager
async def app_worker(tide: Tidebase) -> AsyncIterator[Tidebase]:
    """``tide`` with the app's workflows, and a worker for them while inside (in the
    test's task: a task group cannot span a fixture's setup and teardown)."""
    mcp_app.register(tide)
    async with working(tide, poll_interval=0.2):
        yield tide


@contextlib.asynccontextmanager
async def stdio_session(dsn: str) -> AsyncIterator[Client]:
    """An MCP client of ``tidebase mcp`` (a subprocess the SDK starts and stops)."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "tidebase_async.cli", "mcp", "tests.integration.mcp_app:tide", "--dsn", dsn],
        cwd=REPO_ROOT,
    )
    with anyio.fail_after(30):
        async with Client(params) as client:
            yield client


@contextlib.asynccontextmanager
async def http_server(
    dsn: str, *, api_key: str | None, workflows: bool = True
) -> AsyncIterator[str]:
    """``Mount("/mcp", app=tide.mcp_app())`` in a Starlette app whose lifespan opens
    the Tidebase and knows nothing of MCP, served by uvicorn; yields the MCP URL.
    Without ``workflows`` the web process registers none (its workers do)."""
    web_tide = Tidebase(dsn, api_key=api_key)
    if workflows:
        mcp_app.register(web_tide)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with web_tide:
            yield

    app = Starlette(routes=[Mount("/mcp", app=web_tide.mcp_app())], lifespan=lifespan)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, lifespan="on", ws="none", log_level="warning"
    )
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(10):
            while not server.started:
                await anyio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}/mcp/"
        finally:
            server.should_exit = True


@contextlib.asynccontextmanager
async def http_session(url: str, *, key: str | None) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx2.AsyncClient(headers=headers, trust_env=False, timeout=20) as http:
        with anyio.fail_after(30):
            async with Client(streamable_http_client(url, http_client=http)) as client:
                yield client


async def call(client: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    """A tool's structured result (asserts it succeeded)."""
    result = await client.call_tool(tool, args)
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


async def call_error(client: Client, tool: str, args: dict[str, Any]) -> str:
    """A tool error's text (asserts it failed)."""
    result = await client.call_tool(tool, args)
    assert result.is_error, result.structured_content
    assert result.structured_content is None
    text = result.content[0].text  # type: ignore[union-attr]
    assert isinstance(text, str)
    return text


async def pending_gate(client: Client, run_id: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    async def probe() -> bool:
        page = await call(client, "list_gates", {"run_id": run_id})
        found[:] = page["items"]
        return bool(found)

    await eventually(probe, timeout=10, what=f"a pending gate of run {run_id}")
    return found[0]


# -- stdio ---------------------------------------------------------------------------


async def test_stdio_lists_every_tool_with_its_schemas(dsn: str) -> None:
    async with stdio_session(dsn) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert set(tools) == TOOLS
        for tool in tools.values():
            assert tool.input_schema["type"] == "object", tool.name
            assert tool.output_schema is not None and tool.output_schema["type"] == "object"
            assert tool.description
        assert tools["get_run"].input_schema["required"] == ["run_id"]
        assert tools["get_run"].input_schema["additionalProperties"] is False
        workflow = tools["enqueue"].input_schema["properties"]["workflow"]
        assert workflow["enum"] == ["mcp.approval", "mcp.echo", "mcp.flaky"]
        resolve = tools["resolve_gate"].input_schema
        assert set(resolve["required"]) == {"run_id", "name", "decision"}
        assert resolve["properties"]["decision"]["enum"] == ["approve", "reject"]
        assert tools["list_runs"].annotations is not None
        assert tools["list_runs"].annotations.read_only_hint is True
        assert tools["cancel_run"].annotations is not None
        assert tools["cancel_run"].annotations.destructive_hint is True
        templates = (await client.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == ["tidebase://runs/{id}"]


async def test_stdio_enqueue_get_list_and_page_events(dsn: str, tide: Tidebase) -> None:
    async with app_worker(tide) as worked, stdio_session(dsn) as client:
        made = await call(client, "enqueue", {"workflow": "mcp.echo", "input": {"text": "hi"}})
        assert made["workflow"] == "mcp.echo" and made["deduplicated"] is False
        run_id = made["id"]
        assert await worked.runs.wait(run_id, timeout=10) == {"echo": "hi"}

        run = await call(client, "get_run", {"run_id": run_id})
        assert run["id"] == run_id and run["status"] == "completed"
        assert run["input"] == {"text": "hi"} and run["output"] == {"echo": "hi"}
        assert run["error"] is None and run["gates"] == []

        page = await call(client, "list_runs", {"workflow": "mcp.echo", "status": "completed"})
        assert [r["id"] for r in page["items"]] == [run_id] and page["next_cursor"] is None
        assert (await call(client, "list_runs", {"workflow": "mcp.flaky"}))["items"] == []

        events = await call(client, "run_events", {"run_id": run_id})
        types = [e["type"] for e in events["items"]]
        assert types[0] == "run.created" and types[-1] == "run.completed"
        assert [e["seq"] for e in events["items"]] == list(range(1, len(types) + 1))
        assert events["status"] == "completed" and events["next_after"] is None
        first = await call(client, "run_events", {"run_id": run_id, "limit": 1})
        assert [e["seq"] for e in first["items"]] == [1] and first["next_after"] == 1
        rest = await call(client, "run_events", {"run_id": run_id, "after": 1, "limit": 100})
        assert [e["type"] for e in rest["items"]] == types[1:]

        deduped = {"workflow": "mcp.echo", "input": {"text": "x"}, "dedupe_key": "k1"}
        again = await call(client, "enqueue", {**deduped, "delay": 3600})
        assert (await call(client, "enqueue", deduped)) == {**again, "deduplicated": True}
        newest = await call(client, "list_runs", {"limit": 1})
        assert [r["id"] for r in newest["items"]] == [again["id"]] and newest["next_cursor"]
        older = await call(client, "list_runs", {"limit": 1, "cursor": newest["next_cursor"]})
        assert [r["id"] for r in older["items"]] == [run_id] and older["next_cursor"] is None

        resource = await client.read_resource(f"tidebase://runs/{run_id}")
        text = resource.contents[0].text  # type: ignore[union-attr]
        assert '"output":{"echo":"hi"}' in text


async def test_stdio_gate_is_listed_resolved_once_and_the_run_completes(
    dsn: str, tide: Tidebase
) -> None:
    async with app_worker(tide) as worked, stdio_session(dsn) as client:
        run_id = (await call(client, "enqueue", {"workflow": "mcp.approval", "input": 7}))["id"]
        gate = await pending_gate(client, run_id)
        assert gate["name"] == "approve" and gate["status"] == "pending"
        assert gate["prompt"] == "Ship it?" and gate["data"] == {"input": 7}
        assert (await call(client, "get_run", {"run_id": run_id}))["status"] == "waiting"

        decided = await call(
            client,
            "resolve_gate",
            {
                "run_id": run_id,
                "name": "approve",
                "decision": "approve",
                "actor": "alice",
                "payload": {"note": "ok"},
            },
        )
        assert decided["status"] == "approved" and decided["actor"] == "alice"
        output = await worked.runs.wait(run_id, timeout=10)
        assert output == {"approved": True, "actor": "alice", "payload": {"note": "ok"}}
        assert (await call(client, "list_gates", {"run_id": run_id}))["items"] == []
        every = await call(client, "list_gates", {"run_id": run_id, "status": "all"})
        assert [g["status"] for g in every["items"]] == ["approved"]

        again = {"run_id": run_id, "name": "approve", "decision": "reject"}
        text = await call_error(client, "resolve_gate", again)
        assert text.startswith("resolve_gate failed: GateAlreadyResolved:"), text
        assert (await worked.gates.get(run_id, "approve")).decision == "approved"


async def test_stdio_cancel_and_retry(dsn: str, tide: Tidebase) -> None:
    async with app_worker(tide) as worked, stdio_session(dsn) as client:
        waiting = (await call(client, "enqueue", {"workflow": "mcp.approval"}))["id"]
        await pending_gate(client, waiting)
        cancelled = await call(client, "cancel_run", {"run_id": waiting, "reason": "not needed"})
        assert cancelled == {"id": waiting, "status": "cancelled"}
        run = await call(client, "get_run", {"run_id": waiting})
        assert run["cancel_reason"] == "not needed"
        assert [g["status"] for g in run["gates"]] == ["cancelled"]
        text = await call_error(client, "retry_run", {"run_id": waiting})
        assert "ConflictError" in text and "cancelled" in text

        flaky = (await call(client, "enqueue", {"workflow": "mcp.flaky"}))["id"]
        with pytest.raises(errors.RunFailed):
            await worked.runs.wait(flaky, timeout=10)
        failed = await call(client, "get_run", {"run_id": flaky})
        assert failed["status"] == "failed" and "first call fails" in str(failed["error"])
        assert await call(client, "retry_run", {"run_id": flaky}) == {
            "id": flaky,
            "status": "queued",
        }
        assert await worked.runs.wait(flaky, timeout=10) == "recovered"
        text = await call_error(client, "cancel_run", {"run_id": flaky})
        assert "ConflictError" in text and "completed" in text


async def test_stdio_bad_input_is_a_tool_error_and_the_session_goes_on(dsn: str) -> None:
    unknown = "0190d2f4-0000-7000-8000-000000000000"
    async with stdio_session(dsn) as client:
        cases: list[tuple[str, dict[str, Any], list[str]]] = [
            ("get_run", {"run_id": unknown}, ["RunNotFound", unknown]),
            ("get_run", {"run_id": "not-a-uuid"}, ["invalid arguments", "UUID", "run_id"]),
            ("get_run", {}, ["invalid arguments", "missing required field `run_id`"]),
            ("get_run", {"run_id": unknown, "extra": 1}, ["unknown field `extra`"]),
            ("list_runs", {"limit": "5"}, ["Expected `int`, got `str`", "limit"]),
            ("list_runs", {"limit": 0}, [">= 1", "limit"]),
            ("list_runs", {"status": "bogus"}, ["invalid arguments", "status"]),
            ("list_runs", {"cursor": "???"}, ["ConfigurationError", "invalid cursor"]),
            ("enqueue", {"workflow": "nope"}, ["WorkflowNotFound", "'nope'", "mcp.echo"]),
            ("enqueue", {"input": 1}, ["missing required field `workflow`"]),
            ("enqueue", {"workflow": "mcp.echo", "input": {"x": 1}}, ["SerializationError"]),
            ("enqueue", {"workflow": "mcp.echo", "run_at": "tomorrow"}, ["run_at"]),
            ("cancel_run", {"run_id": unknown}, ["RunNotFound"]),
            ("retry_run", {"run_id": unknown}, ["RunNotFound"]),
            ("run_events", {"run_id": unknown}, ["RunNotFound"]),
            ("run_events", {"run_id": unknown, "after": -1}, ["after"]),
            (
                "resolve_gate",
                {"run_id": unknown, "name": "approve", "decision": "approve"},
                ["RunNotFound"],
            ),
            (
                "resolve_gate",
                {"run_id": unknown, "name": "approve", "decision": "maybe"},
                ["invalid arguments", "decision"],
            ),
            ("no_such_tool", {}, ["unknown tool 'no_such_tool'"]),
        ]
        for tool, args, needles in cases:
            text = await call_error(client, tool, args)
            for needle in needles:
                assert needle in text, (tool, args, text)
        with pytest.raises(MCPError, match="RunNotFound"):
            await client.read_resource(f"tidebase://runs/{unknown}")
        with pytest.raises(MCPError, match="no resource"):
            await client.read_resource("tidebase://gates/x")
        # Nothing was written, and the session still answers.
        assert (await call(client, "list_runs", {}))["items"] == []


# -- streamable HTTP -----------------------------------------------------------------


async def test_http_mounted_in_starlette_serves_tools_behind_the_api_key(
    dsn: str, tide: Tidebase
) -> None:
    async with app_worker(tide) as worked, http_server(dsn, api_key=API_KEY) as url:
        async with http_session(url, key=API_KEY) as client:
            assert {t.name for t in (await client.list_tools()).tools} == TOOLS
            run_id = (await call(client, "enqueue", {"workflow": "mcp.approval"}))["id"]
            await pending_gate(client, run_id)
            resolve = {"run_id": run_id, "name": "approve", "decision": "reject"}
            assert (await call(client, "resolve_gate", resolve))["status"] == "rejected"
            assert (await worked.runs.wait(run_id, timeout=10))["approved"] is False
            assert "GateAlreadyResolved" in await call_error(client, "resolve_gate", resolve)

            # Requests in parallel: each is served by its own session manager.
            results: list[str] = []

            async def read() -> None:
                results.append((await call(client, "get_run", {"run_id": run_id}))["status"])

            async with anyio.create_task_group() as tg:
                for _ in range(8):
                    tg.start_soon(read)
            assert results == ["completed"] * 8

        init = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
        accept = {"Accept": "application/json, text/event-stream"}
        async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
                refused = await http.post(url, json=init, headers={**accept, **headers})
                assert refused.status_code == 401, refused.text
                assert refused.json()["error"]["code"] == "unauthorized"
            stream = await http.get(url, headers={**accept, "Authorization": f"Bearer {API_KEY}"})
            assert stream.status_code == 405 and stream.headers["allow"] == "POST"
            elsewhere = await http.post(url + "x", json=init, headers=accept)
            assert elsewhere.status_code == 404
        with pytest.raises(ExceptionGroup) as keyless:
            async with http_session(url, key=None) as client:
                await client.list_tools()
        # The SDK client's error for the 401, in its task groups.
        assert keyless.value.subgroup(lambda e: isinstance(e, MCPError)) is not None
    # uvicorn stopped: nothing the MCP app started outlives its requests.


async def test_http_without_a_key_serves_loopback_only(dsn: str, tide: Tidebase) -> None:
    async with http_server(dsn, api_key=None) as url:
        async with http_session(url, key=None) as client:
            made = await call(client, "enqueue", {"workflow": "mcp.echo", "input": {"text": "a"}})
            run = await call(client, "get_run", {"run_id": made["id"]})
            assert run["status"] == "queued" and run["input"] == {"text": "a"}
        init = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
        accept = {"Accept": "application/json, text/event-stream"}
        async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
            rebound = await http.post(url, json=init, headers={**accept, "Host": "evil.example"})
            assert rebound.status_code == 403
            assert rebound.json()["error"]["code"] == "forbidden_host"
            cross = await http.post(
                url, json=init, headers={**accept, "Origin": "https://evil.example"}
            )
            assert cross.status_code == 403
            assert cross.json()["error"]["code"] == "forbidden_origin"
    assert [str(r.id) for r in (await tide.runs.list()).items] == [made["id"]]


# -- without the extra ---------------------------------------------------------------


@pytest.fixture
def without_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the ``mcp`` extra were not installed."""
    monkeypatch.setitem(sys.modules, "mcp", None)
    monkeypatch.delitem(sys.modules, "tidebase_async.web.mcp", raising=False)
    monkeypatch.delattr(tidebase_async.web, "mcp", raising=False)


@pytest.mark.usefixtures("without_sdk")
def test_mcp_app_without_the_sdk_names_the_extra() -> None:
    with pytest.raises(errors.ConfigurationError, match=r"pip install 'tidebase-async\[mcp\]'"):
        Tidebase("postgresql://unused@127.0.0.1/x").mcp_app()


@pytest.mark.usefixtures("without_sdk")
async def test_mcp_command_without_the_sdk_names_the_extra(dsn: str, capsys: Capture) -> None:
    argv = ["mcp", "tests.integration.mcp_app:tide", "--dsn", dsn]
    assert await anyio.to_thread.run_sync(main, argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("tidebase: the MCP server needs the mcp SDK"), err
    assert err.count("\n") == 1 and "pip install 'tidebase-async[mcp]'" in err


async def test_http_app_registering_no_workflows_enqueues_for_the_workers(
    dsn: str, tide: Tidebase
) -> None:
    """A web process that registers no workflow trusts the names it is given (as the
    HTTP API does): the run is queued and a worker that has the workflow runs it."""
    async with (
        http_server(dsn, api_key=None, workflows=False) as url,
        http_session(url, key=None) as client,
    ):
        listed = await client.list_tools()
        enqueue = next(t for t in listed.tools if t.name == "enqueue")
        assert "enum" not in enqueue.input_schema["properties"]["workflow"]
        queued = await call(client, "enqueue", {"workflow": "mcp.echo", "input": {"text": "hi"}})
    async with app_worker(tide):
        output = await tide.runs.wait(queued["id"], timeout=20)
    assert output == {"echo": "hi"}
