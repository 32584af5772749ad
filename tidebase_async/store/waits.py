"""Waiting runs: suspend, timers, wake-ups, events."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from tidebase_async import errors
from tidebase_async.store.base import StoreBase, read_retrying
from tidebase_async.store.sql import Q
from tidebase_async.store.translate import _translate


class WaitsMixin(StoreBase):
    """Suspend runs, wake them when due; append events."""

    async def suspend_run(
        self,
        *,
        run_id: UUID,
        worker_id: str,
        attempt: int,
        wake_seq: int,
        wake_at: datetime | None,
        event_data: bytes,
    ) -> bool:
        """Park the run as waiting; False when the claim or ``wake_seq`` moved on."""
        with _translate("suspending run"):
            count = await self._pool.fetchval(
                Q["suspend_run"], run_id, worker_id, attempt, wake_seq, wake_at, event_data
            )
        return bool(count)

    async def wake_due(self, *, limit: int) -> list[tuple[UUID, str]]:
        with _translate("wake due runs"):
            rows = await self._pool.fetch(Q["wake_due"], limit)
        return [(row[0], row[1]) for row in rows]

    async def next_wake_in(self) -> float | None:
        """Seconds until the earliest timer of a waiting run (<= 0: due)."""
        with _translate("next wake"):
            value = await self._pool.fetchval(Q["next_wake"])
        return None if value is None else float(value)

    async def append_event(
        self, *, run_id: UUID, worker_id: str, attempt: int, type: str, data: bytes | None
    ) -> None:
        with _translate("append event"):
            seq = await self._pool.fetchval(
                Q["append_event"], run_id, worker_id, attempt, type, data
            )
        if seq is None:
            raise errors.LeaseLost(f"run {run_id} is no longer leased to this worker")

    async def wake_if_due(self, run_id: UUID) -> bool:
        with _translate("wake run"):
            return await self._pool.fetchval(Q["wake_if_due"], run_id) is not None

    @read_retrying
    async def waiting_state(self, run_id: UUID) -> tuple[str | None, float | None]:
        """(status, seconds until its timer) of a run."""
        with _translate("run status"):
            row = await self._pool.fetchrow(Q["waiting_state"], run_id)
        return (None, None) if row is None else (row["status"], row["wake_in"])
