"""The webhook delivery outbox."""

from __future__ import annotations

from uuid import UUID

from tidebase_async.store.base import StoreBase, read_retrying
from tidebase_async.store.rows import (
    DeliveryOutcome,
    DeliveryRow,
    DueDelivery,
    row_to,
)
from tidebase_async.store.sql import Q
from tidebase_async.store.translate import _translate


class OutboxMixin(StoreBase):
    """Take, record and read webhook deliveries."""

    async def take_deliveries(
        self, *, limit: int, lease_s: float, resume_lease_s: float
    ) -> list[DueDelivery]:
        with _translate("take deliveries"):
            rows = await self._pool.fetch(Q["take_deliveries"], limit, lease_s, resume_lease_s)
        return [row_to(DueDelivery, row) for row in rows]

    async def delivery_done(
        self,
        delivery_id: UUID,
        *,
        delivered: bool,
        http_status: int | None,
        error: str | None,
        retry_in_s: float,
        attempt: int,
    ) -> DeliveryOutcome | None:
        """Record the outcome of attempt ``attempt``; None when the delivery was taken
        again meanwhile (its lease ran out), whose later attempt decides."""
        with _translate("record delivery"):
            row = await self._pool.fetchrow(
                Q["delivery_done"], delivery_id, delivered, http_status, error, retry_in_s, attempt
            )
        return None if row is None else row_to(DeliveryOutcome, row)

    async def fail_unrecovered(self, run_id: UUID, error: bytes) -> bool:
        with _translate("fail unrecovered run"):
            return await self._pool.fetchval(Q["fail_unrecovered"], run_id, error) is not None

    async def next_delivery_in(self) -> float | None:
        with _translate("next delivery"):
            value = await self._pool.fetchval(Q["next_delivery"])
        return None if value is None else float(value)

    @read_retrying
    async def get_deliveries(self, run_id: UUID) -> list[DeliveryRow]:
        with _translate("get deliveries"):
            rows = await self._pool.fetch(Q["get_deliveries"], run_id)
        return [row_to(DeliveryRow, row) for row in rows]
