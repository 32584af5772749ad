"""The scripted model: a Pydantic AI ``FunctionModel`` that plays a diligent researcher,
so the example runs offline, for free and the same way every time.

It looks at the conversation so far and makes the next move a real model would:
search, read the best source, send a report (a tool that needs approval), then answer.
Every request is streamed (with live output on, the durable agent streams each model
request), so it has a ``stream_function`` that yields tool-call deltas or text deltas.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel

MODEL_NAME = "scripted-researcher"
REPORT_TO = "team@example.com"

#: Called with the number of each model request (1 for the first of an agent run)
#: before the model answers it.
RequestHook = Callable[[int], None]


def request_number(messages: list[ModelMessage]) -> int:
    """Which request of the agent run ``messages`` make: answered ones plus one."""
    return 1 + sum(isinstance(m, ModelResponse) for m in messages)


def _question(messages: list[ModelMessage]) -> str:
    for message in messages:
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, UserPromptPart) and isinstance(part.content, str):
                    return part.content
    return "the question"


def _returns(messages: list[ModelMessage]) -> dict[str, ToolReturnPart]:
    """The latest result of each tool, by tool name."""
    found: dict[str, ToolReturnPart] = {}
    for message in messages:
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, ToolReturnPart):
                    found[part.tool_name] = part
    return found


def _field(value: Any, name: str) -> Any:
    """``name`` of a tool's result: the object itself when it ran in this process, a
    dict when it was read back from its checkpoint."""
    return value.get(name) if isinstance(value, dict) else getattr(value, name, None)


def _sources(part: ToolReturnPart) -> list[Any]:
    return list(part.content) if isinstance(part.content, list) else []


def _summary(question: str, returns: dict[str, ToolReturnPart]) -> str:
    lines = [f"Research notes on {question!r}:"]
    for source in _sources(returns["search"]):
        lines.append(f"- {_field(source, 'title')}: {_field(source, 'snippet')}")
    lines.append(f"In depth: {returns['fetch_page'].model_response_str()}")
    return "\n".join(lines)


def _answer(question: str, returns: dict[str, ToolReturnPart]) -> str:
    sent = returns["send_report"]
    if sent.outcome == "success":
        outcome = f"The report went to {REPORT_TO} ({_field(sent.content, 'message_id')})."
    else:
        outcome = f"The report was not sent: {sent.model_response_str()}"
    return f"{_summary(question, returns)}\n\n{outcome}"


def next_move(messages: list[ModelMessage]) -> ToolCallPart | str:
    """The model's next move: a tool call, or the final answer's text."""
    question = _question(messages)
    returns = _returns(messages)
    call_id = f"call-{request_number(messages)}"
    if "search" not in returns:
        return ToolCallPart("search", {"query": question}, call_id)
    if "fetch_page" not in returns:
        hits = _sources(returns["search"])
        url = _field(hits[0], "url") if hits else "https://example.com/"
        return ToolCallPart("fetch_page", {"url": url}, call_id)
    if "send_report" not in returns:
        args = {
            "to": REPORT_TO,
            "subject": f"Research: {question}"[:120],
            "body": _summary(question, returns),
        }
        return ToolCallPart("send_report", args, call_id)
    return _answer(question, returns)


def _pieces(text: str, words: int = 4) -> list[str]:
    """``text`` in runs of a few words, as a model streams it."""
    tokens = text.split(" ")
    return [
        " ".join(tokens[i : i + words]) + (" " if i + words < len(tokens) else "")
        for i in range(0, len(tokens), words)
    ]


def scripted_model(*, on_request: RequestHook | None = None) -> FunctionModel:
    """The scripted researcher as a model for ``Agent(...)``. ``on_request`` sees the
    number of every request the model answers (the tests count them with it)."""

    def answering(messages: list[ModelMessage]) -> ToolCallPart | str:
        if on_request is not None:
            on_request(request_number(messages))
        return next_move(messages)

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        move = answering(messages)
        part = move if isinstance(move, ToolCallPart) else TextPart(move)
        return ModelResponse(parts=[part])

    async def stream(
        messages: list[ModelMessage], info: AgentInfo
    ) -> AsyncIterator[str | DeltaToolCalls]:
        move = answering(messages)
        if isinstance(move, ToolCallPart):
            args = json.dumps(move.args_as_dict())
            yield {0: DeltaToolCall(name=move.tool_name, tool_call_id=move.tool_call_id)}
            yield {0: DeltaToolCall(json_args=args)}
            return
        for piece in _pieces(move):
            yield piece

    return FunctionModel(respond, stream_function=stream, model_name=MODEL_NAME)
