"""Run state versions and usage records."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from uuid import UUID

from tidebase_async import errors
from tidebase_async.store.base import StoreBase, read_retrying
from tidebase_async.store.rows import (
    StateVersionRow,
    UsageGroupRow,
    UsageTotalsRow,
    row_to,
)
from tidebase_async.store.sql import Q
from tidebase_async.store.translate import _translate


class StateMixin(StoreBase):
    """A run's state (versions, labels) and its usage."""

    async def set_state(
        self,
        *,
        run_id: UUID,
        worker_id: str,
        attempt: int,
        state: bytes,
        event_data: bytes,
        step: str | None = None,
    ) -> int:
        """Replace the state; return its new version."""
        with _translate("state update"):
            row = await self._pool.fetchrow(
                Q["set_state"], run_id, worker_id, attempt, state, event_data, step
            )
        if row is None:
            raise errors.LeaseLost(f"run {run_id} is no longer leased to this worker")
        version: int = row["state_version"]
        return version

    async def label_state(
        self, *, run_id: UUID, worker_id: str, attempt: int, label: str
    ) -> int | None:
        """Label the latest state version; None when the run has none (or the fence
        did not hold)."""
        with _translate("label state"):
            version: int | None = await self._pool.fetchval(
                Q["label_state"], run_id, worker_id, attempt, label
            )
        return version

    @read_retrying
    async def state_history(self, run_id: UUID) -> list[StateVersionRow]:
        with _translate("state history"):
            rows = await self._pool.fetch(Q["state_history"], run_id)
        return [row_to(StateVersionRow, row) for row in rows]

    @read_retrying
    async def state_at(self, run_id: UUID, version: int) -> bytes | None:
        """The state (JSON) of version ``version`` of the run; None when it has no
        such version."""
        with _translate("state version"):
            state: bytes | None = await self._pool.fetchval(Q["state_at"], run_id, version)
        return state

    async def record_usage(
        self,
        *,
        run_id: UUID,
        worker_id: str,
        attempt: int,
        position: int,
        seq: int,
        step: str | None,
        kind: str,
        provider: str | None,
        model: str | None,
        input_tokens: int,
        output_tokens: int,
        cost_usd: Decimal,
        metadata: bytes | None,
    ) -> bool:
        """Record usage once; False when (position, seq) was recorded before."""
        with _translate("record usage"):
            row = await self._pool.fetchrow(
                Q["record_usage"],
                run_id,
                worker_id,
                attempt,
                position,
                seq,
                step,
                kind,
                provider,
                model,
                input_tokens,
                output_tokens,
                cost_usd,
                metadata,
            )
        if not row["fenced"]:
            raise errors.LeaseLost(f"run {run_id} is no longer leased to this worker")
        return bool(row["recorded"])

    @read_retrying
    async def run_usage(self, run_id: UUID) -> UsageTotalsRow:
        with _translate("run usage"):
            row = await self._pool.fetchrow(Q["run_usage"], run_id)
        return row_to(UsageTotalsRow, row)

    @read_retrying
    async def usage_summary(
        self,
        *,
        workflow: str | None,
        since: datetime | None,
        until: datetime | None,
        folded: int,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[UsageGroupRow]:
        with _translate("usage summary"):
            rows = await self._pool.fetch(
                Q["usage_summary"], workflow, since, until, folded, limit, offset
            )
        return [row_to(UsageGroupRow, row) for row in rows]
