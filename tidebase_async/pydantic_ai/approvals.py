"""Tools that need approval become gates of the run.

When the model calls a tool registered with ``requires_approval=True`` (or a tool
raises ``ApprovalRequired``), the run opens a gate ``approve:<tool>`` with the call's
arguments for the reviewer and waits without a worker slot. Resolving the gate
(dashboard, HTTP API, token link, MCP) resumes the run: approved, the tool runs (with
the arguments in the decision's payload ``{"args": {...}}`` when the reviewer changed
them); rejected or expired, the model is told the call was denied (with the payload's
``"message"`` when given).

The gates are asked one at a time, in the order the model made the calls; a decision
is checkpointed like every gate, so a replay returns it without asking again.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic_ai.messages import ToolCallPart
from pydantic_ai.tools import DeferredToolRequests, DeferredToolResults, ToolApproved, ToolDenied

from tidebase_async.engine.run import Run
from tidebase_async.models import GateDecision

_PROMPT_ARGS = 300


def gate_name(tool_name: str) -> str:
    """The gate of a call to ``tool_name`` (``#`` and ``/`` are reserved in gate names)."""
    return "approve:" + tool_name.replace("/", "_").replace("#", "_")[:180]


def _prompt(agent: str, call: ToolCallPart) -> str:
    args = call.args_as_json_str()
    if len(args) > _PROMPT_ARGS:
        args = args[:_PROMPT_ARGS] + "..."
    return f"Agent {agent!r} asks to call {call.tool_name}({args})"


def _approval(decision: GateDecision) -> ToolApproved | ToolDenied:
    payload = decision.payload if isinstance(decision.payload, dict) else {}
    if decision.approved:
        args = payload.get("args")
        return ToolApproved(override_args=args if isinstance(args, dict) else None)
    message = payload.get("message")
    if isinstance(message, str) and message:
        return ToolDenied(message)
    if decision.expired:
        return ToolDenied("The approval request for this tool call expired.")
    who = f" by {decision.actor}" if decision.actor else ""
    return ToolDenied(f"The tool call was denied{who}.")


async def ask_approvals(
    run: Run,
    agent: str,
    requests: DeferredToolRequests,
    *,
    timeout: float | timedelta | None,
    channels: list[str] | None,
) -> DeferredToolResults | None:
    """Decide every approval in ``requests`` through a gate of ``run``; calls that
    wait for external execution are left to the caller (None when there are none)."""
    if not requests.approvals:
        return None
    approvals: dict[str, Any] = {}
    answered_by: dict[str, str] = {}
    for call in requests.approvals:
        decision = await run.gate(
            gate_name(call.tool_name),
            prompt=_prompt(agent, call),
            data={
                "agent": agent,
                "tool": call.tool_name,
                "tool_call_id": call.tool_call_id,
                "args": call.args_as_dict(),
                "metadata": requests.metadata.get(call.tool_call_id),
            },
            channels=channels,
            timeout=timeout,
        )
        approvals[call.tool_call_id] = _approval(decision)
        if decision.actor:
            answered_by[call.tool_call_id] = decision.actor
    return requests.build_results(approvals=approvals, answered_by=answered_by)
