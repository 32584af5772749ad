"""``TidebaseDurability``: the Pydantic AI capability that makes an agent durable when
it runs inside a tidebase workflow.

Built on Pydantic AI's public durable-execution surface (``pydantic_ai.durable_exec``):
Pydantic AI assembles the durable model, toolsets and event delivery; this capability
says where the durable container is (workflow code of a run), runs each operation as
a step of that run (``backend``), streams the agent's events as live output
(``events``) and turns approval-required tool calls into gates (``approvals``).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, cast
from weakref import WeakKeyDictionary

from pydantic_ai.agent import Agent, AgentRunResult, EventStreamHandler
from pydantic_ai.capabilities.abstract import WrapRunHandler
from pydantic_ai.durable_exec import (
    JSON_CODEC,
    BaseDurabilityCapability,
    DurabilityEngineSpec,
    DurableOperationId,
    RoleBasedOperationConfig,
    ToolsetCallToolId,
    ToolsetKind,
    ToolsetValidateToolArgumentsId,
    conversation_id_from_run_id,
)
from pydantic_ai.messages import AgentStreamEvent, ModelMessage, ModelResponse
from pydantic_ai.models import Model
from pydantic_ai.tools import AgentDepsT, DeferredToolRequests, DeferredToolResults, RunContext
from pydantic_ai.toolsets import ToolsetTool

from tidebase_async import errors
from tidebase_async._util.checks import check_name
from tidebase_async.engine.run import Run, current_run, executing_step
from tidebase_async.pydantic_ai.approvals import ask_approvals
from tidebase_async.pydantic_ai.backend import (
    DEFAULT_MODEL_STEP,
    DEFAULT_TOOL_STEP,
    StepConfig,
    TidebaseOperationBackend,
    capture_response,
    check_step_config,
    unit_owner,
)
from tidebase_async.pydantic_ai.events import emit_event, emitting

#: Agent runs started by each execution of a run's workflow code, for replay-stable
#: default run ids (a replay starts the same runs in the same order).
_AGENT_RUNS: WeakKeyDictionary[Run, int] = WeakKeyDictionary()
#: Runs whose workflow code is inside a durable agent run now.
_ACTIVE: WeakKeyDictionary[Run, str] = WeakKeyDictionary()


def _serialization_failure(exc: Exception) -> BaseException:
    return errors.SerializationError(
        f"an agent operation's result cannot be stored as JSON: {exc}",
        where="agent operation",
        type_name=type(exc).__name__,
    )


@dataclass(init=False, kw_only=True)
class TidebaseDurability(BaseDurabilityCapability[AgentDepsT]):
    """Makes an agent durable inside tidebase workflows.

    ``Agent(model, name="research", capabilities=[TidebaseDurability()])``; then
    ``await agent.run(...)`` inside a workflow function. There:

    - every model request and every tool call (function tools, MCP toolsets) is one
      checkpointed step of the run, named by Pydantic AI's journal naming
      (``research__model.request``, ``research__function_toolset__<id>.call_tool:<tool>``):
      after a crash completed requests and calls are replayed from their checkpoints
      and never sent again;
    - the token usage (and cost, where genai-prices knows the model) of each model
      response is recorded in ``run.usage``, exactly once;
    - the agent's events are live output on stream ``stream`` (``tide.runs.stream``);
    - tools that need approval become gates ``approve:<tool>`` (see ``approvals``).

    Outside a workflow the agent runs exactly as it would without the capability.
    Model requests are retried per ``model_step`` (3 attempts by default, not for
    failures a retry cannot fix), tool calls per ``tool_step`` (once) or their
    ``{"tidebase": StepConfig(...)}`` metadata; MCP calls per ``mcp_step``.
    A step whose process dies while it runs executes again: tools with side effects
    should use an idempotency key (``tidebase_async.current_run().id`` and the tool
    call id make one).
    """

    engine_spec = DurabilityEngineSpec(
        engine_name="tidebase",
        durable_unit_noun="step",
        durable_unit_plural="steps",
        durable_container_noun="workflow",
        codec=JSON_CODEC,
        serialization_failure=_serialization_failure,
        # Toolsets given to agent.run(toolsets=...) were not registered with the
        # capability: their calls would not be steps.
        unsupported_runtime_toolset_kinds=frozenset({"function", "mcp", "dynamic"}),
        wrapped_toolset_kinds=frozenset({"function", "mcp", "dynamic"}),
        # Steps run in the workflow's own process: an MCP toolset keeps one session
        # per agent run, entered by the first step that needs it.
        toolset_lifecycles={
            "function": "enter-always",
            "mcp": "enter-in-durable-unit",
            "dynamic": "enter-never",
        },
        tool_call_result_upgrade_lenient=False,
        journal_discovery=True,
        sequential_tools_in_durable_context=False,
        tool_config_key="tidebase",
    )

    def __init__(
        self,
        *,
        name: str | None = None,
        models: Mapping[str, Model] | None = None,
        event_stream_handler: EventStreamHandler[AgentDepsT] | None = None,
        stream: str | None = "agent",
        model_step: StepConfig | None = None,
        tool_step: StepConfig | None = None,
        mcp_step: StepConfig | None = None,
        approval_timeout: float | timedelta | None = None,
        approval_channels: list[str] | None = None,
    ) -> None:
        """Create the capability; the agent's model, name and toolsets are found when
        it is attached to an agent.

        Args:
            name: the agent's name in step names (default: the agent's ``name``).
            models: extra models by id, for ``agent.run(model=...)`` inside workflows.
            event_stream_handler: also called with the agent's events as they happen
                (the model's inside its request step, the others in workflow code), not
                for the parts of a run that replay.
            stream: the live output stream the events go to; None for none (then
                model requests stream only when ``event_stream_handler`` is given:
                with live output every model request is a streamed one).
            model_step, tool_step, mcp_step: step config of each operation role.
            approval_timeout: an approval gate not decided by then counts as denied.
            approval_channels: webhook URLs told about each approval gate.

        Raises:
            ConfigurationError: a bad stream name or step config.
        """
        super().__init__(models=models, event_stream_handler=event_stream_handler, name=name)
        if stream is not None:
            check_name("stream", stream)
        self._stream = stream
        self._model_step = check_step_config("model", model_step or DEFAULT_MODEL_STEP)
        self._tool_step = check_step_config("tool", tool_step or DEFAULT_TOOL_STEP)
        self._mcp_step = check_step_config("mcp", mcp_step or DEFAULT_TOOL_STEP)
        self._approval_timeout = approval_timeout
        self._approval_channels = approval_channels

    # -- where the durable container is ---------------------------------------------

    @property
    def in_durable_context(self) -> bool:
        """Workflow code of a run: not outside runs, not inside a step's function
        (an agent run inside a step is part of that step)."""
        return current_run() is not None and executing_step() is None

    def _run(self) -> Run:
        run = current_run()
        if run is None:
            raise errors.ConfigurationError(
                "a durable agent operation ran outside a tidebase workflow"
            )
        return run

    def get_default_run_id(self) -> str | None:
        if not self.in_durable_context:
            return None
        run = self._run()
        index = _AGENT_RUNS.get(run, 0)
        _AGENT_RUNS[run] = index + 1
        return f"{run.id}:{self.name}:{index}"

    def get_default_conversation_id(self, run_id: str) -> str | None:
        return conversation_id_from_run_id(run_id) if self.in_durable_context else None

    async def get_run_start_time(self, run_id: str) -> datetime | None:
        # Checkpointed: a resumed run counts the agent's timeout= from its first start.
        return await self._run().now() if self.in_durable_context else None

    # -- operations as steps -------------------------------------------------------

    def get_durable_operation_backend(self) -> TidebaseOperationBackend:
        def tool_config(
            operation_id: DurableOperationId, tool: object | None, tool_name: str
        ) -> StepConfig | Literal[False]:
            if isinstance(operation_id, ToolsetCallToolId | ToolsetValidateToolArgumentsId):
                base = self._toolset_base_config(operation_id.toolset_kind)
            else:  # the union of operations grows in Pydantic AI's minor releases
                base = self._tool_step
            resolve = self._build_resolve_tool_config(base)
            config = resolve(cast(ToolsetTool[Any] | None, tool), tool_name)
            if config is False:
                return False
            return check_step_config(f"tool {tool_name!r}", dict(config))

        return TidebaseOperationBackend(
            agent_name=self.name,
            default_model_id=self.default_model_id,
            config=RoleBasedOperationConfig(
                model=self._model_step,
                event=DEFAULT_TOOL_STEP,
                capability=DEFAULT_TOOL_STEP,
                tool=self._tool_step,
                resolve_tool=tool_config,
            ),
            current=self._run,
            owner=self,
        )

    def _toolset_base_config(self, kind: ToolsetKind) -> Any:
        return self._mcp_step if kind == "mcp" else self._tool_step

    def _stamp_response(self, response: ModelResponse, messages: list[ModelMessage]) -> None:
        # Inside the model request step: its usage is recorded there, once.
        capture_response(response)

    # -- events as live output -----------------------------------------------------

    def _effective_event_stream_handler(self) -> EventStreamHandler[AgentDepsT] | None:
        # In workflow code with live output, the base dispatches the agent's own events
        # to _dispatch_event_stream_event (below): say there is a handler. Elsewhere
        # (outside runs, an agent called from inside a step) only the user's counts.
        if self._stream is not None and self.in_durable_context:
            return self._stream_events
        return self._event_stream_handler

    def _model_stream_event_handler(self) -> EventStreamHandler[AgentDepsT] | None:
        # Inside this capability's own model request step: publish the stream.
        if self._stream is not None and unit_owner() is self:
            return self._stream_events
        return self._event_stream_handler

    async def _stream_events(
        self, ctx: RunContext[AgentDepsT], events: AsyncIterable[AgentStreamEvent]
    ) -> None:
        """Inside a model request step: publish the model's stream events as they
        arrive (and pass them to the user's handler)."""
        assert self._stream is not None
        stream = emitting(self._run(), self._stream, events)
        if self._event_stream_handler is not None:
            await self._event_stream_handler(ctx, stream)
            return
        async for _ in stream:
            pass

    async def _dispatch_event_stream_event(
        self, ctx: RunContext[AgentDepsT], event: AgentStreamEvent
    ) -> None:
        # The agent's own events (tool calls and results, events a tool emitted), in
        # workflow code: published live, and given to the user's handler, unless the
        # run is replaying. Not as steps of their own: an event a tool emits inside its
        # step is not emitted again on replay, and a step for it would shift the
        # history.
        run = self._run()
        if self._stream is not None:
            await emit_event(run, self._stream, event)
        if self._event_stream_handler is not None and not run.replaying:
            await self._event_stream_handler(ctx, _one(event))

    # -- one agent at a time -------------------------------------------------------

    async def wrap_run(
        self, ctx: RunContext[AgentDepsT], *, handler: WrapRunHandler
    ) -> AgentRunResult[Any]:
        if not self.in_durable_context:
            return await super().wrap_run(ctx, handler=handler)
        run = self._run()
        other = _ACTIVE.get(run)
        if other is not None:
            # Their steps would share the run's positional history in an order set by
            # model latencies, which a replay (all answers at once) does not repeat.
            raise errors.ConfigurationError(
                f"run {run.id}: agent {self.name!r} started while agent {other!r} runs in "
                "the same workflow; durable agents of one run run one at a time: start "
                "concurrent agents as child runs (run.child, run.fanout)"
            )
        _ACTIVE[run] = self.name
        sleep_name = f"{self.name}.sleep"

        async def durable_sleep(seconds: float) -> None:
            # The agent's waits (between polls of a background model response, say)
            # are durable sleeps of the run: a long one parks the run without a slot,
            # and a replay does not wait again.
            await run.sleep(sleep_name, max(0.0, seconds))

        try:
            with Agent.using_sleep(durable_sleep):
                return await super().wrap_run(ctx, handler=handler)
        finally:
            _ACTIVE.pop(run, None)

    # -- approvals as gates --------------------------------------------------------

    async def handle_deferred_tool_calls(
        self, ctx: RunContext[AgentDepsT], *, requests: DeferredToolRequests
    ) -> DeferredToolResults | None:
        if not self.in_durable_context:
            return None
        return await ask_approvals(
            self._run(),
            self.name,
            requests,
            timeout=self._approval_timeout,
            channels=self._approval_channels,
        )


async def _one(event: AgentStreamEvent) -> AsyncIterator[AgentStreamEvent]:
    yield event
