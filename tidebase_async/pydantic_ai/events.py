"""The agent's stream events as live output of the run (``run.emit``, stream
``"agent"``): text and tool-call deltas as the model streams them, tool calls and
their results as the agent makes them.

Live output is not checkpointed: replayed code does not emit again. Events the agent
made after its last checkpoint and before a wait (the tool call that asks for
approval) are made again when the run resumes from that wait, as any code after the
last checkpoint runs again; a reader that must not show them twice can key them by
``tool_call_id``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, get_args

from pydantic import TypeAdapter
from pydantic_ai.messages import AgentStreamEvent, ModelResponseStreamEvent
from pydantic_core import PydanticSerializationError

from tidebase_async import errors
from tidebase_async.engine.run import Run

logger = logging.getLogger(__name__)

_EVENTS: TypeAdapter[Any] = TypeAdapter(AgentStreamEvent)

#: The events a model's stream makes (parts starting, deltas, parts ending, the final
#: result); the others are the agent's own (tool calls and results, ...).
MODEL_EVENTS: tuple[type[Any], ...] = get_args(get_args(ModelResponseStreamEvent)[0])


def event_chunk(event: AgentStreamEvent) -> Any:
    """An event as a JSON value (its ``event_kind`` says which event it is)."""
    return _EVENTS.dump_python(event, mode="json", warnings=False)


async def emit_event(run: Run, stream: str, event: AgentStreamEvent) -> None:
    """Publish ``event`` on the run's live ``stream``. An event too large for a chunk,
    or not JSON, is replaced by a note naming its kind: live output never fails the run."""
    kind = getattr(event, "event_kind", None)
    try:
        await run.emit(event_chunk(event), stream=stream)
    except errors.PayloadTooLarge as exc:
        logger.warning("agent event not streamed: %s", exc, extra={"run_id": str(run.id)})
        await run.emit({"event_kind": kind, "omitted": "too large to stream"}, stream=stream)
    except (errors.SerializationError, PydanticSerializationError, ValueError, TypeError) as exc:
        # An event holding a value JSON cannot carry (a custom event's payload, say).
        logger.warning("agent event not streamed: %s", exc, extra={"run_id": str(run.id)})
        await run.emit({"event_kind": kind, "omitted": "not JSON"}, stream=stream)


async def emitting(
    run: Run, stream: str, events: AsyncIterable[AgentStreamEvent]
) -> AsyncIterator[AgentStreamEvent]:
    """Pass ``events`` through, publishing each model stream event first (the agent's
    own events are published where they are dispatched)."""
    async for event in events:
        if isinstance(event, MODEL_EVENTS):
            await emit_event(run, stream, event)
        yield event
