"""``run.usage``: usage (tokens, money) a run records, exactly once per record."""

from __future__ import annotations

import decimal
from typing import TYPE_CHECKING, Any

from tidebase_async import errors
from tidebase_async._util import codec
from tidebase_async._util.checks import is_utf8
from tidebase_async.engine.execution import _BRANCH, _ENTRY

if TYPE_CHECKING:
    from tidebase_async.engine.run import Run

#: Larger costs are refused: sums of them must stay readable as floats.
_MAX_COST_USD = 1e12


class RunUsage:
    """``run.usage``: the run's usage ledger (tokens, money)."""

    def __init__(self, run: Run) -> None:
        self._run = run
        self._seq: dict[int, int] = {}

    async def record(
        self,
        *,
        kind: str = "llm",
        provider: str | None = None,
        model: str | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cost_usd: float | decimal.Decimal = 0,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Record usage, attributed to the step executing (inside a step function) or
        else to the next entry of the history. Exactly once: a record is keyed by its
        entry and its order within it, so a replay (which does not execute completed
        steps, and re-runs the code between them) or a re-execution after a crash adds
        nothing that was recorded before.

        Raises:
            ConfigurationError: a negative, non-integer token count, a negative or
                non-finite cost, or a bad text field; nothing is recorded.
        """
        cost = _checked_usage(
            kind=kind,
            provider=provider,
            model=model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=cost_usd,
        )
        data = None
        if metadata is not None:
            if not isinstance(metadata, dict):
                raise errors.ConfigurationError("usage metadata must be a dict")
            data = codec.encode(metadata, where="usage metadata", max_size=64 * 1024)
        run = self._run
        ex = run._ex
        ex.check_active()
        entry = _ENTRY.get()
        step: str | None = None
        if entry is not None:
            position, step = entry
        else:
            # Between steps: keyed after the last entry this branch reached, in a key
            # space of its own (negative), so that neither the interleaving of branches
            # nor a step's own records can make two records share a key.
            branch = _BRANCH.get()
            position = -2 - branch[0] if branch is not None else -1
        seq = self._seq.get(position, 0) + 1
        self._seq[position] = seq
        await ex.write_value(
            "recording usage",
            ex.fenced(
                ex.store.record_usage,
                position=position,
                seq=seq,
                step=step,
                kind=kind,
                provider=provider,
                model=model,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cost_usd=cost,
                metadata=data,
            ),
        )


def _checked_usage(
    *,
    kind: str,
    provider: str | None,
    model: str | None,
    input_tokens: int,
    output_tokens: int,
    cost_usd: float | decimal.Decimal,
) -> decimal.Decimal:
    """Check the fields of a usage record; return its cost as an exact decimal.

    Raises:
        ConfigurationError: a negative or non-integer token count, a negative or
            non-finite cost, or a bad text field.
    """
    for what, count in (("input_tokens", input_tokens), ("output_tokens", output_tokens)):
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count < 2**63:
            raise errors.ConfigurationError(
                f"usage {what} must be a non-negative int, got {count!r:.40}"
            )
    if isinstance(cost_usd, bool) or not isinstance(cost_usd, int | float | decimal.Decimal):
        raise errors.ConfigurationError(f"usage cost_usd must be a number, got {cost_usd!r:.40}")
    if isinstance(cost_usd, int) and not 0 <= cost_usd <= _MAX_COST_USD:
        raise errors.ConfigurationError(f"usage cost_usd must be in 0..{_MAX_COST_USD:g}")
    cost = (
        decimal.Decimal(str(cost_usd)) if isinstance(cost_usd, float) else decimal.Decimal(cost_usd)
    )
    if not cost.is_finite() or not 0 <= cost <= _MAX_COST_USD:
        raise errors.ConfigurationError(
            f"usage cost_usd must be finite and in 0..{_MAX_COST_USD:g}, got {cost_usd!r:.40}"
        )
    for what, text in (("kind", kind), ("provider", provider), ("model", model)):
        if text is None and what != "kind":
            continue
        if (
            not isinstance(text, str)
            or not text
            or len(text) > 200
            or "\x00" in text
            or not is_utf8(text)
        ):
            raise errors.ConfigurationError(f"usage {what} must be a short str, got {text!r:.40}")
    return cost
