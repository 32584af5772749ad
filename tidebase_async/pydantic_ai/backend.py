"""The durable operation backend: each Pydantic AI operation (a model request, a tool
call, an MCP discovery) is one ``run.step`` of the run whose workflow code calls it.

Pydantic AI's ``CallableOperationBackend`` owns naming, parameter handling and result
encoding; this module only runs the encoded body as a checkpointed step, with the
retry policy of the operation's role, and records the token usage of model responses
inside that step (exactly once: a usage record is keyed by its step).
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypedDict, cast

import anyio
from pydantic import TypeAdapter
from pydantic_ai.durable_exec import (
    CallableOperationBackend,
    DurableOperationId,
    JournalOperationNamer,
    ModelCompactMessagesId,
    ModelRequestId,
    RoleBasedOperationConfig,
)
from pydantic_ai.exceptions import UnexpectedModelBehavior, UserError
from pydantic_ai.messages import ModelResponse
from pydantic_core import PydanticSerializationError

from tidebase_async import errors
from tidebase_async._util.checks import as_seconds
from tidebase_async.engine.run import Run
from tidebase_async.engine.workflows import backoff_delay
from tidebase_async.models import Retry

if TYPE_CHECKING:
    from pydantic_ai.exceptions import ModelHTTPError

logger = logging.getLogger(__name__)

#: Failures a retry cannot fix: a misconfigured agent, a model answer the agent cannot
#: use, a value that cannot be encoded, a run that is not ours any more.
NON_RETRYABLE: tuple[type[BaseException], ...] = (
    UserError,
    UnexpectedModelBehavior,
    PydanticSerializationError,
    errors.TidebaseError,
)


def _client_error(exc: BaseException) -> bool:
    """A 4xx answer of the provider other than 408/409/429: the request itself is wrong."""
    from pydantic_ai.exceptions import ModelHTTPError

    if not isinstance(exc, ModelHTTPError):
        return False
    status = _status(exc)
    return 400 <= status < 500 and status not in (408, 409, 429)


def _status(exc: ModelHTTPError) -> int:
    return int(exc.status_code)


def retryable(exc: BaseException) -> bool:
    """Whether an operation that raised ``exc`` is worth another attempt: not when a
    retry cannot fix it, nor when a model stream failed after it had produced output
    (its events are out already: Pydantic AI treats that as a stream that started)."""
    from pydantic_ai.durable_exec._utils import streamed_before_failing

    if streamed_before_failing(exc) is not None:
        return False
    return not isinstance(exc, NON_RETRYABLE) and not _client_error(exc)


class StepConfig(TypedDict, total=False):
    """How the steps of one operation role run (also per tool, in its metadata:
    ``@agent.tool(metadata={"tidebase": StepConfig(retry=Retry(attempts=5))})``, or
    ``{"tidebase": False}`` to call a tool in workflow code, outside any step).

    ``retry`` is the step's retry policy (attempts include the first; failures a retry
    cannot fix, see ``retryable``, are not retried); ``timeout`` bounds each attempt.
    """

    retry: Retry
    timeout: float | timedelta


#: Model requests: three attempts with backoff (rate limits and overloaded providers
#: are the common transient failures). Tools: once, a tool's side effects are the
#: user's to make safe to repeat.
DEFAULT_MODEL_STEP = StepConfig(retry=Retry(attempts=3, backoff=2.0, max_backoff=60.0))
DEFAULT_TOOL_STEP = StepConfig(retry=Retry(attempts=1))


def check_step_config(role: str, config: object) -> StepConfig:
    """``config`` checked: a dict with only ``retry`` (a Retry with attempts >= 1) and
    ``timeout`` (positive seconds or a timedelta).

    Raises:
        ConfigurationError: names the role and what is wrong.
    """
    if not isinstance(config, dict):
        raise errors.ConfigurationError(f"{role} step config must be a StepConfig dict")
    unknown = set(config) - {"retry", "timeout"}
    if unknown:
        raise errors.ConfigurationError(
            f"{role} step config has unknown keys {sorted(unknown)} (known: retry, timeout)"
        )
    retry = config.get("retry")
    if retry is not None and (not isinstance(retry, Retry) or retry.attempts < 1):
        raise errors.ConfigurationError(f"{role} step retry must be a Retry with attempts >= 1")
    timeout = config.get("timeout")
    if timeout is not None:
        as_seconds(timeout, what=f"{role} step timeout")
    return cast(StepConfig, config)


_ONCE = Retry(attempts=1)

#: The model response(s) of the model request unit executing in this context.
_RESPONSES: contextvars.ContextVar[list[ModelResponse] | None] = contextvars.ContextVar(
    "tidebase_pydantic_ai_responses", default=None
)


#: The capability whose operation's step function executes in this context.
_UNIT_OWNER: contextvars.ContextVar[object | None] = contextvars.ContextVar(
    "tidebase_pydantic_ai_unit_owner", default=None
)


def unit_owner() -> object | None:
    """The capability whose operation executes in this context (an agent called from
    another agent's tool sees the outer agent's capability here, not its own)."""
    return _UNIT_OWNER.get()


def capture_response(response: ModelResponse) -> None:
    """Called inside a model request unit with the response it will return."""
    responses = _RESPONSES.get()
    if responses is not None:
        responses.append(response)


class TidebaseOperationBackend(CallableOperationBackend[StepConfig]):
    """Runs each operation as ``run.step(name, ...)`` of the current run."""

    def __init__(
        self,
        *,
        agent_name: str,
        default_model_id: str | None,
        config: RoleBasedOperationConfig[StepConfig],
        current: Callable[[], Run],
        owner: object,
    ) -> None:
        super().__init__(
            namer=JournalOperationNamer(agent_name, default_model_id=default_model_id or "default"),
            config=config,
        )
        self._current = current
        self._owner = owner

    async def execute(
        self,
        *,
        operation_id: DurableOperationId,
        name: str,
        body: Callable[[], Awaitable[object]],
        cache_key: tuple[object, ...],
        config: StepConfig,
    ) -> object:
        """Execute ``body`` as the step ``name`` of the current run (replayed from its
        checkpoint when the run recorded it before)."""
        run = self._current()
        usage = _usage_kind(operation_id)
        owner = self._owner

        # Unannotated: the step decodes its checkpoint as plain JSON without resolving
        # a return type for a function object that is new on every call.
        async def unit():  # type: ignore[no-untyped-def]
            token = _UNIT_OWNER.set(owner)
            try:
                return await _attempts(run, name, body, config, usage=usage)
            finally:
                _UNIT_OWNER.reset(token)

        # The policy lives in the unit (it knows which failures are worth a retry); the
        # step itself makes one attempt and checkpoints the outcome.
        return await run.step(name, unit, timeout=None)


_RESPONSE: TypeAdapter[ModelResponse] = TypeAdapter(ModelResponse)


def _usage_kind(operation_id: DurableOperationId) -> str | None:
    """Which operations make model responses whose usage goes to the ledger."""
    if isinstance(operation_id, ModelRequestId):
        return "request"
    if isinstance(operation_id, ModelCompactMessagesId):
        return "compact"
    return None


async def _attempts(
    run: Run,
    name: str,
    body: Callable[[], Awaitable[object]],
    config: StepConfig,
    *,
    usage: str | None,
) -> object:
    policy = config.get("retry") or _ONCE
    timeout = config.get("timeout")
    attempt = 0
    while True:
        attempt += 1
        responses: list[ModelResponse] = []
        token = _RESPONSES.set(responses)
        try:
            with anyio.fail_after(as_seconds(timeout, what=f"step {name!r} timeout")):
                payload = await body()
        except Exception as exc:
            if attempt >= policy.attempts or not retryable(exc):
                raise
            delay = backoff_delay(policy, attempt)
            logger.info(
                "step %r failed (attempt %d of %d), retrying in %.2fs: %r",
                name,
                attempt,
                policy.attempts,
                delay,
                exc,
                extra={"run_id": str(run.id)},
            )
            await anyio.sleep(delay)
            continue
        finally:
            _RESPONSES.reset(token)
        if usage == "compact" and not responses:
            # Compaction returns its response without the stamping hook.
            responses.append(_RESPONSE.validate_python(payload))
        if usage is not None:
            for response in responses:
                await record_response_usage(run, response)
        return payload


async def record_response_usage(run: Run, response: ModelResponse) -> None:
    """Record the tokens (and the cost, where Pydantic AI's price data knows the
    model) of one model response in the run's usage ledger, inside the step that
    requested it: a record is keyed by that step, so a re-execution adds nothing."""
    usage = response.usage
    metadata: dict[str, Any] = {}
    if usage.cache_read_tokens:
        metadata["cache_read_tokens"] = usage.cache_read_tokens
    if usage.cache_write_tokens:
        metadata["cache_write_tokens"] = usage.cache_write_tokens
    cost = _cost(response)
    if cost is None:
        metadata["cost_known"] = False
    try:
        await run.usage.record(
            kind="llm",
            provider=_label(response.provider_name),
            model=_label(response.model_name),
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cost_usd=cost or 0,
            metadata=metadata or None,
        )
    except errors.ConfigurationError as exc:
        # The tokens are spent and the response is good: a record the ledger refuses
        # (a provider's odd token count, say) must not fail the step.
        logger.warning("usage of %r not recorded: %s", response.model_name, exc)


def _label(value: str | None) -> str | None:
    return None if value is None else value[:200]


def _cost(response: ModelResponse) -> Any:
    """The response's price in USD from genai-prices, None when it is unknown (an
    unlisted model, a test model, a response without usage)."""
    if not response.model_name:
        return None
    try:
        return response.cost().total_price
    except Exception:  # genai-prices raises LookupError/ValueError/AssertionError
        return None
