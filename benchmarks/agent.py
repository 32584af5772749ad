"""Durable Pydantic AI agents: the cost of a checkpointed model request and tool call.

Each run is one agent run with a no-op scripted model (Pydantic AI's
``FunctionModel``; streamed when live output is on, as it is by default) that calls a
no-op tool ``TOOL_CALLS`` times, one per turn, then answers: ``TOOL_CALLS + 1`` model
requests and ``TOOL_CALLS`` tool calls, each a step of the run, plus the token usage of
every response in the ledger.

Figures: runs/s and operations (steps)/s draining N runs at concurrency 16, with live
output on (the default) and off (``stream=None``); and the latency of one run at a
time, durable against the same agent outside any workflow, whose difference divided
by the operations is the overhead per operation that durability adds.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from benchmarks.common import BenchmarkError, Context, Measurement, count_runs, fresh_tidebase
from benchmarks.environment import Mode
from benchmarks.report import Figure
from benchmarks.throughput import drain
from tidebase_async import Run, Tidebase

NAME = "agent"
TOOL_CALLS = 4
OPERATIONS = 2 * TOOL_CALLS + 1
SERIAL_RUNS = 50


class Params(msgspec.Struct, frozen=True, kw_only=True):
    runs: int
    concurrency: int


PARAMS: dict[Mode, Params] = {
    "quick": Params(runs=200, concurrency=16),
    "full": Params(runs=1_000, concurrency=16),
}


def _agent(name: str, *, stream: str | None) -> Any:
    from pydantic_ai import Agent
    from pydantic_ai.messages import (
        ModelMessage,
        ModelRequest,
        ModelResponse,
        TextPart,
        ToolCallPart,
        ToolReturnPart,
    )
    from pydantic_ai.models.function import AgentInfo, DeltaToolCall, FunctionModel

    from tidebase_async.pydantic_ai import TidebaseDurability

    def returns(messages: list[ModelMessage]) -> int:
        return sum(
            isinstance(part, ToolReturnPart)
            for message in messages
            if isinstance(message, ModelRequest)
            for part in message.parts
        )

    async def script(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[Any]:
        done = returns(messages)
        if done < TOOL_CALLS:
            yield {0: DeltaToolCall(name="noop", json_args="{}", tool_call_id=f"c{done}")}
        else:
            yield "done"

    def plain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        done = returns(messages)
        if done < TOOL_CALLS:
            return ModelResponse(parts=[ToolCallPart("noop", "{}", tool_call_id=f"c{done}")])
        return ModelResponse(parts=[TextPart("done")])

    agent = Agent(
        FunctionModel(plain, stream_function=script, model_name="noop"),
        name=name,
        capabilities=[TidebaseDurability(stream=stream)],
    )

    @agent.tool_plain
    async def noop() -> str:
        return "ok"

    return agent


def _register(tide: Tidebase) -> None:
    for workflow, stream in (("agent-live", "agent"), ("agent-quiet", None)):
        tide.workflow(workflow)(_workflow(_agent(workflow.replace("-", "_"), stream=stream)))


def _workflow(agent: Any) -> Any:
    async def body(run: Run, input: Any) -> str:
        return str((await agent.run("go")).output)

    return body


async def _drain(ctx: Context, workflow: str, params: Params) -> float:
    async with fresh_tidebase(ctx, _register) as tide:
        await tide.enqueue_many([(workflow, None)] * params.runs)
        timing = await drain(tide, params.runs, params.concurrency)
        counts = await count_runs(tide)
    if counts != {"completed": params.runs}:
        raise BenchmarkError(f"{workflow}: expected {params.runs} completed runs, got {counts}")
    return timing.drain_s


async def _serial(ctx: Context) -> tuple[float, float]:
    """Mean seconds per run, one at a time: durable (a worker, concurrency 1) and the
    same agent called directly outside any workflow."""
    async with fresh_tidebase(ctx, _register) as tide:
        await tide.enqueue_many([("agent-live", None)] * SERIAL_RUNS)
        durable_s = (await drain(tide, SERIAL_RUNS, 1)).drain_s / SERIAL_RUNS
    agent = _agent("agent_plain", stream="agent")
    await agent.run("go")  # warm-up
    t0 = time.perf_counter()
    for _ in range(SERIAL_RUNS):
        await agent.run("go")
    return durable_s, (time.perf_counter() - t0) / SERIAL_RUNS


async def measure(ctx: Context) -> Measurement:
    params = PARAMS[ctx.mode]
    live_s = await _drain(ctx, "agent-live", params)
    quiet_s = await _drain(ctx, "agent-quiet", params)
    durable_s, plain_s = await _serial(ctx)
    ops = params.runs * OPERATIONS
    label = f"concurrency {params.concurrency} (N={params.runs:,})"
    figures = [
        Figure(name=f"agent runs, live output, {label}", value=params.runs / live_s, unit="runs/s"),
        Figure(name="  model requests + tool calls", value=ops / live_s, unit="steps/s"),
        Figure(
            name=f"agent runs, no live output, {label}", value=params.runs / quiet_s, unit="runs/s"
        ),
        Figure(name="  model requests + tool calls", value=ops / quiet_s, unit="steps/s"),
        Figure(name="one run at a time: durable", value=durable_s * 1000, unit="ms/run"),
        Figure(name="one run at a time: outside a workflow", value=plain_s * 1000, unit="ms/run"),
        Figure(
            name="  overhead per model request or tool call",
            value=(durable_s - plain_s) / OPERATIONS * 1000,
            unit="ms",
        ),
    ]
    details = {
        "params": msgspec.to_builtins(params),
        "operations_per_run": OPERATIONS,
        "drain_s": {"live": live_s, "quiet": quiet_s},
        "serial_runs": SERIAL_RUNS,
        "serial_s_per_run": {"durable": durable_s, "plain": plain_s},
    }
    return Measurement(figures=figures, details=details)
