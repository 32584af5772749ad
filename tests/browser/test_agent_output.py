"""The live output pane following an agent's stream events (stream ``"agent"``, as
tidebase_async.pydantic_ai publishes them) beside the run's own output (stream
``"output"``), in a real headless Chromium. See conftest.py for the browser."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anyio
from playwright.async_api import expect
from pydantic import TypeAdapter
from pydantic_ai.messages import (
    AgentStreamEvent,
    FinalResultEvent,
    FunctionToolCallEvent,
    FunctionToolResultEvent,
    PartDeltaEvent,
    PartEndEvent,
    PartStartEvent,
    TextPart,
    TextPartDelta,
    ThinkingPart,
    ThinkingPartDelta,
    ToolCallPart,
    ToolCallPartDelta,
    ToolReturnPart,
)

from tests.browser.conftest import Dashboard
from tests.integration.core_support import working
from tidebase_async import Run, Tidebase

#: The events dumped as tidebase_async.pydantic_ai.events does (its chunks).
ADAPTER: TypeAdapter[Any] = TypeAdapter(AgentStreamEvent)
#: A tool result longer than the pane shows.
LONG = {"facts": "x" * 300}


def script() -> list[AgentStreamEvent]:
    """An agent's run: text, a tool call and its result, a second call with arguments
    as JSON text and a long result, a retried call, then more text."""
    return [
        PartStartEvent(index=0, part=ThinkingPart(content="hmm")),  # not shown
        PartDeltaEvent(index=0, delta=ThinkingPartDelta(content_delta=", tides")),  # not shown
        PartStartEvent(index=1, part=TextPart(content="Tides are ")),
        PartDeltaEvent(index=1, delta=TextPartDelta(content_delta="caused by ")),
        PartDeltaEvent(index=1, delta=TextPartDelta(content_delta="the moon.")),
        PartEndEvent(index=1, part=TextPart(content="Tides are caused by the moon.")),
        # The call as the model streams it: not shown, the function_tool_call event is.
        PartStartEvent(index=2, part=ToolCallPart("lookup", args='{"q":', tool_call_id="c1")),
        PartDeltaEvent(index=2, delta=ToolCallPartDelta(args_delta='"tides"}', tool_call_id="c1")),
        PartEndEvent(index=2, part=ToolCallPart("lookup", args='{"q":"tides"}', tool_call_id="c1")),
        FunctionToolCallEvent(part=ToolCallPart("lookup", args={"q": "tides"}, tool_call_id="c1")),
        FunctionToolResultEvent(
            part=ToolReturnPart(tool_name="lookup", content="facts about tides", tool_call_id="c1")
        ),
        FunctionToolCallEvent(
            part=ToolCallPart("lookup", args='{"q": "moon", "depth": 2}', tool_call_id="c2")
        ),
        FunctionToolResultEvent(
            part=ToolReturnPart(tool_name="lookup", content=LONG, tool_call_id="c2")
        ),
        FunctionToolCallEvent(part=ToolCallPart("lookup", args={}, tool_call_id="c3")),
        FunctionToolResultEvent(
            part=ToolReturnPart(
                tool_name="lookup", content="say what", tool_call_id="c3", outcome="retried"
            )
        ),
        PartStartEvent(index=0, part=TextPart(content="")),
        PartDeltaEvent(index=0, delta=TextPartDelta(content_delta="Here are the facts.")),
        FinalResultEvent(tool_name=None, tool_call_id=None),  # not shown
    ]


def register(tide: Tidebase, start: anyio.Event, agent_turn: anyio.Event) -> None:
    @tide.workflow("researcher")
    async def researcher(run: Run, input: Any) -> str:
        await start.wait()
        await run.emit("preparing\n")
        await run.emit({"phase": "agent"})
        await agent_turn.wait()
        for event in script():
            await run.emit(ADAPTER.dump_python(event, mode="json"), stream="agent")
        # What events.emit_event publishes for an event too large for a chunk.
        omitted = {"event_kind": "part_delta", "omitted": "too large to stream"}
        await run.emit(omitted, stream="agent")
        return "done"


async def test_output_pane_renders_agent_events_beside_the_output(
    tide: Tidebase, dashboard: Dashboard
) -> None:
    start, agent_turn = anyio.Event(), anyio.Event()
    register(tide, start, agent_turn)
    page = dashboard.page
    async with working(tide):
        handle = await tide.enqueue("researcher")
        await dashboard.open(f"/runs/{handle.id}")
        await expect(page.locator("#app h1 .badge")).to_have_text("running")
        state = page.locator("#output-state")
        await expect(state).to_have_text("Following the output live.")
        output = page.locator("#output-text")
        await expect(output).to_have_text("")
        await dashboard.mark()
        # The server subscribes just after answering: give it a moment.
        await asyncio.sleep(0.3)

        # The run's own output, as before.
        start.set()
        before = 'preparing\n{"phase":"agent"}\n'
        await expect(output).to_have_attribute("data-chunks", "2")
        assert await output.text_content() == before

        # Then the agent's events, on the other stream.
        agent_turn.set()
        await expect(output).to_have_attribute("data-chunks", str(2 + len(script()) + 1))
        long = json.dumps(LONG, separators=(",", ":"))
        assert await output.text_content() == (
            before
            + "Tides are caused by the moon.\n"
            + '→ lookup({"q":"tides"})\n'
            + "← lookup: facts about tides\n"
            + '→ lookup({"q":"moon","depth":2})\n'
            + f"← lookup: {long[:199]}…\n"
            + "→ lookup({})\n"
            + "← lookup (retried): say what\n"
            + "Here are the facts.\n"
            + "(part_delta event not shown: too large to stream)\n"
        )

        await expect(state).to_contain_text("ended")
        await expect(output).to_have_attribute("data-ended", "true")
        await expect(page.locator("#app h1 .badge")).to_have_text("completed")
        await dashboard.assert_not_reloaded()
