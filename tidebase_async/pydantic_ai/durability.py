"""``TidebaseDurability``: the Pydantic AI capability that makes an agent durable when
it runs inside a tidebase workflow.

Built on Pydantic AI's public durable-execution surface (``pydantic_ai.durable_exec``):
Pydantic AI assembles the durable model, toolsets and event delivery; this capability
says where the durable container is (workflow code of a run), runs each operation as
a step of that run (``backend``), streams the agent's events as live output
(``events``) and turns approval-required tool calls into gates (``approvals``).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, cast
from weakref import WeakKeyDictionary

from pydantic_ai.agent import EventStreamHandler
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
    in_unit,
)
from tidebase_async.pydantic_ai.events import emit_event, emitting

#: Agent runs started by each execution of a run's workflow code, for replay-stable
#: default run ids (a replay starts the same runs in the same order).
_AGENT_RUNS: WeakKeyDictionary[Run, int] = WeakKeyDictionary()


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
            event_stream_handler: also called with the agent's events (tool events
                inside steps of their own, so a replay does not call it again).
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
            assert isinstance(operation_id, ToolsetCallToolId | ToolsetValidateToolArgumentsId)
            resolve = self._build_resolve_tool_config(
                self._toolset_base_config(operation_id.toolset_kind)
            )
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
        )

    def _toolset_base_config(self, kind: ToolsetKind) -> Any:
        return self._mcp_step if kind == "mcp" else self._tool_step

    def _stamp_response(self, response: ModelResponse, messages: list[ModelMessage]) -> None:
        # Inside the model request step: its usage is recorded there, once.
        capture_response(response)

    # -- events as live output -----------------------------------------------------

    def _live(self) -> bool:
        if self._stream is None:
            return False
        return self.in_durable_context or in_unit()

    def _effective_event_stream_handler(self) -> EventStreamHandler[AgentDepsT] | None:
        if not self._live():
            return self._event_stream_handler
        return self._stream_events

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
        # Workflow-side events (tool calls and results): published here, where a
        # replay does not publish again; the user's handler gets its own step.
        if self._stream is not None:
            await emit_event(self._run(), self._stream, event)
        if self._event_stream_handler is not None:
            bound = self._bound_event_operation or self._bind_event_operation(
                self.get_durable_operation_backend()
            )
            await bound(_event_params(event, ctx))

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


def _event_params(event: AgentStreamEvent, ctx: RunContext[Any]) -> Any:
    from pydantic_ai.durable_exec import EventStreamHandlerParams

    return EventStreamHandlerParams(event, run_context=ctx)
