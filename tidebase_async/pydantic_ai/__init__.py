"""Durable Pydantic AI agents (extra ``tidebase-async[pydantic-ai]``).

``Agent(model, name=..., capabilities=[TidebaseDurability()])``: inside a workflow,
each model request and tool call of the agent is a checkpointed step of the run, token
usage goes to the run's usage ledger, the agent's events are live output on stream
``"agent"``, and tools that need approval become gates. See ``durability``.
"""

from __future__ import annotations

try:
    import pydantic_ai as _pydantic_ai  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    from tidebase_async.errors import ConfigurationError

    raise ConfigurationError(
        "tidebase_async.pydantic_ai needs Pydantic AI: pip install 'tidebase-async[pydantic-ai]'"
    ) from exc

from tidebase_async.pydantic_ai.approvals import gate_name
from tidebase_async.pydantic_ai.backend import StepConfig, retryable
from tidebase_async.pydantic_ai.durability import TidebaseDurability

__all__ = ["StepConfig", "TidebaseDurability", "gate_name", "retryable"]
