"""Durable Pydantic AI agents (``TidebaseDurability``) on a real Postgres, with Pydantic
AI's ``FunctionModel`` (scripted, no network): steps per model request and tool call,
crash-resume in worker processes, usage once, approvals as gates, parallel tool calls
replayed in order, live output, retries, and the agent outside a workflow."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import anyio
import asyncpg
import pytest
from pydantic_ai import Agent
from pydantic_ai.exceptions import ModelHTTPError
from pydantic_ai.messages import ModelMessage
from pydantic_ai.models.function import AgentInfo, FunctionModel

from tests.integration import agent_app
from tests.integration.core_support import working
from tests.integration.procs import REPO_ROOT, eventually
from tidebase_async import ConfigurationError, Retry, Tidebase
from tidebase_async.pydantic_ai import StepConfig, TidebaseDurability

pytestmark = pytest.mark.timeout(60)

#: The history of a ``research`` run: persisted names are compatibility data (a
#: change strands runs in flight), so a change here must be deliberate.
RESEARCH_STEPS = [
    "research__model.request_stream",
    "research__function_toolset__<agent>.call_tool:lookup",
    "research__function_toolset__<agent>.call_tool:lookup#2",
    "research__model.request_stream#2",
]


@pytest.fixture
def call_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "calls.log"
    monkeypatch.setattr(agent_app, "LOG", path)
    monkeypatch.setattr(agent_app, "HOLD", None)
    yield path


async def _steps(db: asyncpg.Connection, run_id: UUID) -> list[tuple[str, str]]:
    rows = await db.fetch(
        "SELECT name, status FROM tidebase.steps WHERE run_id = $1 ORDER BY position", run_id
    )
    return [(r["name"], r["status"]) for r in rows]


async def _usage(db: asyncpg.Connection, run_id: UUID) -> list[tuple[str, str, int, int]]:
    rows = await db.fetch(
        "SELECT step, model, input_tokens, output_tokens FROM tidebase.usage"
        " WHERE run_id = $1 ORDER BY position, seq",
        run_id,
    )
    return [(r["step"], r["model"], r["input_tokens"], r["output_tokens"]) for r in rows]


async def test_model_requests_and_tool_calls_are_steps(
    tide: Tidebase, db: asyncpg.Connection, call_log: Path
) -> None:
    agent_app.register(tide)
    handle = await tide.enqueue("research", input="why tides?")
    async with working(tide):
        output = await tide.runs.wait(handle.id, timeout=20)
    assert output == "answer: facts about tides; facts about moon"
    assert [name for name, _ in await _steps(db, handle.id)] == RESEARCH_STEPS
    assert agent_app.logged() == [
        "model:0",
        "lookup:tides:start",
        "lookup:tides",
        "lookup:moon:start",
        "lookup:moon",
        "model:2",
    ]
    # One usage row per model response, in the step that made it, with the model name.
    usage = await _usage(db, handle.id)
    assert [(step, model) for step, model, _, _ in usage] == [
        (RESEARCH_STEPS[0], "scripted"),
        (RESEARCH_STEPS[3], "scripted"),
    ]
    assert all(inp > 0 and out > 0 for _, _, inp, out in usage)


def _spawn(dsn: str, log: Path, hold: Path | None, out: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, TIDEBASE_AGENT_LOG=str(log), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    args = [sys.executable, "-m", "tests.integration.agent_app", "--dsn", dsn, "--lease", "1"]
    if hold is not None:
        args += ["--hold", str(hold)]
    with out.open("wb") as f:
        return subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)


@pytest.fixture
async def procs() -> AsyncIterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


async def test_worker_killed_between_model_request_and_tool_call(
    dsn: str, tide: Tidebase, db: asyncpg.Connection, tmp_path: Path, call_log: Path, procs: Any
) -> None:
    """SIGKILL while the first tool call runs: the next worker replays the first model
    request from its checkpoint (never sent again), executes the tool calls, and the
    usage of each model request is in the ledger once."""
    agent_app.register(tide)
    hold = tmp_path / "hold"
    hold.touch()
    first = _spawn(dsn, call_log, hold, tmp_path / "first.out")
    procs.append(first)
    handle = await tide.enqueue("research", input="why tides?")

    async def in_tool() -> bool:
        return "lookup:tides:start" in agent_app.logged()

    await eventually(in_tool, timeout=20, what="the first worker inside the tool call")
    assert await _steps(db, handle.id) == [(RESEARCH_STEPS[0], "completed")]
    first.send_signal(signal.SIGKILL)
    first.wait()
    hold.unlink()
    procs.append(_spawn(dsn, call_log, None, tmp_path / "second.out"))
    output = await tide.runs.wait(handle.id, timeout=30)
    assert output == "answer: facts about tides; facts about moon"
    calls = agent_app.logged()
    assert calls.count("model:0") == 1, calls  # the first request was not sent again
    assert calls.count("model:2") == 1
    assert calls.count("lookup:tides") == 1 and calls.count("lookup:moon") == 1
    assert [name for name, _ in await _steps(db, handle.id)] == RESEARCH_STEPS
    assert [step for step, *_ in await _usage(db, handle.id)] == [
        RESEARCH_STEPS[0],
        RESEARCH_STEPS[3],
    ]


async def test_approval_tool_becomes_a_gate(
    tide: Tidebase, db: asyncpg.Connection, call_log: Path
) -> None:
    """A tool that needs approval waits on a gate without a slot; approving resumes the
    run, which replays the model request and then calls the tool once."""
    agent_app.register(tide)
    handle = await tide.enqueue("research", input="send the report")
    async with working(tide):
        await eventually(
            lambda: _status(tide, handle.id, "waiting"), timeout=20, what="the run waiting"
        )
        gate = await tide.gates.get(handle.id, "approve:send")
        assert gate.status == "pending"
        assert gate.data["tool"] == "send" and gate.data["args"] == {"to": "ops"}
        assert "send" in (gate.prompt or "")
        assert "send:ops" not in agent_app.logged()
        await tide.gates.resolve(handle.id, "approve:send", approved=True, actor="ana")
        output = await tide.runs.wait(handle.id, timeout=20)
    assert output == "answer: sent to ops"
    calls = agent_app.logged()
    assert calls.count("model:0") == 1 and calls.count("send:ops") == 1
    # The replay after the gate recorded no usage again: one row per model request.
    assert len(await _usage(db, handle.id)) == 2
    names = [name for name, _ in await _steps(db, handle.id)]
    assert names == [
        "research__model.request_stream",
        "approve:send",
        "research__function_toolset__<agent>.call_tool:send",
        "research__model.request_stream#2",
    ]


async def test_rejected_approval_tells_the_model(
    tide: Tidebase, db: asyncpg.Connection, call_log: Path
) -> None:
    agent_app.register(tide)
    handle = await tide.enqueue("research", input="send it")
    async with working(tide):
        await eventually(
            lambda: _status(tide, handle.id, "waiting"), timeout=20, what="the run waiting"
        )
        await tide.gates.resolve(
            handle.id, "approve:send", approved=False, payload={"message": "not today"}
        )
        output = await tide.runs.wait(handle.id, timeout=20)
    assert output == "answer: not today"
    assert "send:ops" not in agent_app.logged()


async def _status(tide: Tidebase, run_id: UUID, status: str) -> bool:
    return (await tide.runs.status(run_id)) == status


async def test_parallel_tool_calls_replay_in_order(
    tide: Tidebase, db: asyncpg.Connection, call_log: Path
) -> None:
    """A run that replays its history (after its gate) meets its parallel tool calls in
    the recorded order: each call is matched to its own checkpoint."""
    agent = Agent(
        FunctionModel(_no_plain, stream_function=_parallel_then_gate, model_name="scripted"),
        name="fan",
        capabilities=[TidebaseDurability()],
    )
    seen: list[str] = []

    @agent.tool_plain
    async def pick(n: int) -> str:
        seen.append(f"pick:{n}")
        await anyio.sleep(0.01 * (3 - n))  # finish in reverse order
        return f"picked {n}"

    @agent.tool_plain(requires_approval=True)
    async def confirm() -> str:
        return "confirmed"

    @tide.workflow("fan")
    async def fan(run: Any, question: str) -> str:
        return str((await agent.run(question)).output)

    handle = await tide.enqueue("fan", input="go")
    async with working(tide):
        await eventually(
            lambda: _status(tide, handle.id, "waiting"), timeout=20, what="the run waiting"
        )
        await tide.gates.resolve(handle.id, "approve:confirm", approved=True)
        output = await tide.runs.wait(handle.id, timeout=20)
    assert output == "done: picked 1, picked 2, picked 3, confirmed"
    assert sorted(seen) == ["pick:1", "pick:2", "pick:3"]  # once each, not on replay
    rows = await db.fetch(
        "SELECT name, output FROM tidebase.steps WHERE run_id = $1 AND name LIKE '%pick%'"
        " ORDER BY position",
        handle.id,
    )
    assert [r["name"].rsplit(":", 1)[1] for r in rows] == ["pick", "pick#2", "pick#3"]
    # Each checkpoint holds its own call's result, though the calls finished in reverse.
    outputs = [bytes(r["output"]).decode() for r in rows]
    assert [f"picked {n}" in out for n, out in zip((1, 2, 3), outputs, strict=True)] == [True] * 3


def _no_plain(messages: list[ModelMessage], info: AgentInfo) -> Any:
    raise AssertionError("streamed requests only")


async def _parallel_then_gate(messages: list[ModelMessage], info: AgentInfo) -> Any:
    from pydantic_ai.models.function import DeltaToolCall

    returns = agent_app._returns(messages)
    if not returns:
        for i in (1, 2, 3):
            yield {i: DeltaToolCall(name="pick", json_args=f'{{"n": {i}}}', tool_call_id=f"p{i}")}
        return
    if len(returns) == 3:
        yield {0: DeltaToolCall(name="confirm", json_args="{}", tool_call_id="k")}
        return
    yield "done: " + ", ".join(str(r.content) for r in returns)


async def test_stream_events_reach_a_subscriber(tide: Tidebase, call_log: Path) -> None:
    """The agent's events are live output on stream "agent": the model's text deltas
    and the tool calls with their results, in order."""
    agent_app.register(tide)
    hold = call_log.parent / "hold"
    hold.touch()
    agent_app.HOLD = hold
    handle = await tide.enqueue("research", input="why tides?")
    chunks: list[Any] = []

    async def subscribe() -> None:
        async for chunk in tide.runs.stream(handle.id, stream="agent"):
            chunks.append(chunk)

    async with working(tide), anyio.create_task_group() as tg:
        tg.start_soon(subscribe)
        await anyio.sleep(0.3)  # subscribed before the tool returns
        hold.unlink()
        await tide.runs.wait(handle.id, timeout=20)
    kinds = [c["event_kind"] for c in chunks]
    assert "function_tool_call" in kinds and "function_tool_result" in kinds
    results = [c["part"]["content"] for c in chunks if c["event_kind"] == "function_tool_result"]
    assert sorted(results) == ["facts about moon", "facts about tides"]
    text = "".join(
        c["delta"]["content_delta"]
        for c in chunks
        if c["event_kind"] == "part_delta" and c["delta"].get("part_delta_kind") == "text"
    ) + "".join(
        c["part"]["content"]
        for c in chunks
        if c["event_kind"] == "part_start" and c["part"].get("part_kind") == "text"
    )
    assert "answer:" in text and "facts about moon" in text


async def test_retryable_model_failure_is_retried_in_one_step(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    failures = ["overloaded", "overloaded"]
    calls: list[str] = []

    async def flaky(messages: list[ModelMessage], info: AgentInfo) -> Any:
        calls.append("model")
        if failures:
            raise ModelHTTPError(status_code=529, model_name="flaky", body=failures.pop())
        yield "fine"

    agent = Agent(
        FunctionModel(_no_plain, stream_function=flaky),
        name="flaky",
        capabilities=[
            TidebaseDurability(model_step=StepConfig(retry=Retry(attempts=3, backoff=0.01)))
        ],
    )

    @tide.workflow("flaky")
    async def run_flaky(run: Any) -> str:
        return str((await agent.run("hi")).output)

    handle = await tide.enqueue("flaky")
    async with working(tide):
        assert await tide.runs.wait(handle.id, timeout=20) == "fine"
    assert calls == ["model"] * 3
    assert await _steps(db, handle.id) == [("flaky__model.request_stream", "completed")]


async def test_client_error_is_not_retried(tide: Tidebase, db: asyncpg.Connection) -> None:
    calls: list[str] = []

    async def refuse(messages: list[ModelMessage], info: AgentInfo) -> Any:
        calls.append("model")
        raise ModelHTTPError(status_code=400, model_name="strict", body="bad request")
        yield ""  # pragma: no cover - makes this an async generator

    agent = Agent(
        FunctionModel(_no_plain, stream_function=refuse),
        name="strict",
        capabilities=[TidebaseDurability(model_step=StepConfig(retry=Retry(attempts=5)))],
    )

    @tide.workflow("strict", max_attempts=1)
    async def run_strict(run: Any) -> str:
        return str((await agent.run("hi")).output)

    handle = await tide.enqueue("strict")
    async with working(tide):
        info = await _wait_failed(tide, handle.id)
    assert calls == ["model"]
    assert "400" in str(info)
    assert await _steps(db, handle.id) == [("strict__model.request_stream", "failed")]


async def _wait_failed(tide: Tidebase, run_id: UUID) -> Any:
    from tidebase_async import RunFailed

    with pytest.raises(RunFailed) as caught:
        await tide.runs.wait(run_id, timeout=20)
    return caught.value


async def test_outside_a_workflow_the_agent_is_unchanged(call_log: Path) -> None:
    """No run, no steps: the capability passes through (and the agent does not stream
    unless asked)."""
    plain_calls: list[int] = []

    def plain(messages: list[ModelMessage], info: AgentInfo) -> Any:
        from pydantic_ai.messages import ModelResponse, TextPart

        plain_calls.append(len(messages))
        return ModelResponse(parts=[TextPart("plain answer")])

    agent = Agent(FunctionModel(plain), name="plain", capabilities=[TidebaseDurability()])
    result = await agent.run("hello")
    assert result.output == "plain answer"
    assert plain_calls == [1]
    # The tool-calling agent of the app, outside any run: tools run, nothing is stored.
    assert (await agent_app.agent.run("why?")).output == (
        "answer: facts about tides; facts about moon"
    )


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="unknown keys"):
        TidebaseDurability(model_step={"retries": 3})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="attempts >= 1"):
        TidebaseDurability(tool_step=StepConfig(retry=Retry(attempts=0)))
    with pytest.raises(ConfigurationError, match="timeout"):
        TidebaseDurability(mcp_step=StepConfig(timeout=-1))
    with pytest.raises(ConfigurationError, match="stream"):
        TidebaseDurability(stream="")


async def test_mcp_tool_calls_are_steps(
    tide: Tidebase, db: asyncpg.Connection, tmp_path: Path
) -> None:
    """An MCP toolset's discovery and tool calls are steps too: after the run waits at
    a gate and resumes, the MCP tool call is replayed from its checkpoint, not sent to
    the server again."""
    from fastmcp.client.transports import StdioTransport
    from pydantic_ai.mcp import MCPToolset
    from pydantic_ai.models.function import DeltaToolCall

    served = tmp_path / "served.log"
    served.touch()
    server = StdioTransport(
        sys.executable,
        ["-m", "tests.integration.mcp_facts_server"],
        env={**os.environ, "TIDEBASE_MCP_LOG": str(served), "PYTHONPATH": str(REPO_ROOT)},
        cwd=str(REPO_ROOT),
    )

    async def script(messages: list[ModelMessage], info: AgentInfo) -> Any:
        returns = agent_app._returns(messages)
        if not returns:
            yield {0: DeltaToolCall(name="fact", json_args='{"topic": "tides"}', tool_call_id="f")}
        elif len(returns) == 1:
            yield {0: DeltaToolCall(name="publish", json_args="{}", tool_call_id="p")}
        else:
            yield " / ".join(str(r.content) for r in returns)

    agent = Agent(
        FunctionModel(_no_plain, stream_function=script, model_name="scripted"),
        name="mcp_agent",
        toolsets=[MCPToolset(server, id="facts")],
        capabilities=[TidebaseDurability()],
    )

    @agent.tool_plain(requires_approval=True)
    async def publish() -> str:
        return "published"

    @tide.workflow("mcp-agent")
    async def mcp_agent(run: Any) -> str:
        return str((await agent.run("tides?")).output)

    handle = await tide.enqueue("mcp-agent")
    async with working(tide):
        await eventually(
            lambda: _status(tide, handle.id, "waiting"), timeout=20, what="the run waiting"
        )
        await tide.gates.resolve(handle.id, "approve:publish", approved=True)
        output = await tide.runs.wait(handle.id, timeout=20)
    assert output == "tides are pulled by the moon / published"
    assert served.read_text().split() == ["tides"]  # once, though the run replayed
    names = [name for name, _ in await _steps(db, handle.id)]
    assert names == MCP_STEPS


#: The history of the MCP agent's run (compatibility data, like RESEARCH_STEPS).
MCP_STEPS = [
    "mcp_agent__mcp_server__facts.get_tools",
    "mcp_agent__model.request_stream",
    "mcp_agent__mcp_server__facts.call_tool",
    "mcp_agent__model.request_stream#2",
    "approve:publish",
    "mcp_agent__function_toolset__<agent>.call_tool:publish",
    "mcp_agent__model.request_stream#3",
]


async def test_current_run_is_the_run_of_the_workflow_code(tide: Tidebase) -> None:
    """What the capability finds its run by: the run in workflow code and in its step
    functions (with the step's name there), nothing outside."""
    from tidebase_async import current_run
    from tidebase_async.engine.run import executing_step

    seen: dict[str, Any] = {}

    async def inside() -> str:
        run = current_run()
        assert run is not None
        return f"{run.id}|{executing_step()}"

    @tide.workflow("whoami")
    async def whoami(run: Any) -> str:
        seen["workflow"] = (current_run() is run, executing_step())
        return str(await run.step("probe", inside))

    assert current_run() is None
    handle = await tide.enqueue("whoami")
    async with working(tide):
        output = await tide.runs.wait(handle.id, timeout=20)
    assert output == f"{handle.id}|probe"
    assert seen["workflow"] == (True, None)
    assert current_run() is None
