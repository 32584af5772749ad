"""``tide.usage``: usage (tokens, money) of runs, aggregated in SQL."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING

from tidebase_async import errors
from tidebase_async._util.checks import check_name
from tidebase_async.models import UsageSummary

if TYPE_CHECKING:
    from tidebase_async.client.tidebase import Tidebase

#: The dimensions a summary can group by, in the order of the statement's GROUPING().
DIMENSIONS = ("workflow", "model", "provider", "kind")


class Usage:
    """``tide.usage``."""

    def __init__(self, tide: Tidebase) -> None:
        self._tide = tide

    async def summary(
        self,
        *,
        workflow: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        group_by: Iterable[str] = ("workflow", "model"),
        limit: int | None = None,
        offset: int = 0,
    ) -> list[UsageSummary]:
        """Usage recorded in ``[since, until)`` (of ``workflow``, if given), summed per
        group of ``group_by`` (any of ``workflow``, ``model``, ``provider``, ``kind``;
        empty: one total), in a stable order; ``limit`` groups from ``offset`` on.

        Raises:
            ConfigurationError: an unknown dimension, a naive datetime, a bad workflow.
        """
        dims = list(group_by) if not isinstance(group_by, str) else [group_by]
        unknown = [d for d in dims if d not in DIMENSIONS]
        if unknown:
            raise errors.ConfigurationError(
                f"cannot group usage by {unknown}; choose from {', '.join(DIMENSIONS)}"
            )
        for what, when in (("since", since), ("until", until)):
            if when is not None and (not isinstance(when, datetime) or when.utcoffset() is None):
                raise errors.ConfigurationError(f"{what} must be a timezone-aware datetime")
        if workflow is not None:
            check_name("workflow", workflow)
        # GROUPING() bits, most significant first: 1 folds the dimension away.
        folded = sum(1 << (3 - i) for i, d in enumerate(DIMENSIONS) if d not in dims)
        if limit is not None and (isinstance(limit, bool) or not 1 <= limit <= 100_000):
            raise errors.ConfigurationError(f"limit must be 1..100000, got {limit!r}")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise errors.ConfigurationError(f"offset must be an int >= 0, got {offset!r}")
        rows = await self._tide.store.usage_summary(
            workflow=workflow, since=since, until=until, folded=folded, limit=limit, offset=offset
        )
        return [
            UsageSummary(
                group={d: getattr(row, d) for d in DIMENSIONS if d in dims},
                records=row.records,
                runs=row.runs,
                input_tokens=row.input_tokens,
                output_tokens=row.output_tokens,
                cost_usd=row.cost_usd,
            )
            for row in rows
        ]
