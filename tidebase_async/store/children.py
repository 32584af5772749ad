"""Child runs."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from tidebase_async import errors
from tidebase_async.store.base import StoreBase
from tidebase_async.store.records import NewRun, _batch_encoder
from tidebase_async.store.rows import ChildStatusRow, row_to
from tidebase_async.store.sql import Q
from tidebase_async.store.translate import _translate


class ChildrenMixin(StoreBase):
    """Start the children of a run, once."""

    async def start_children(
        self,
        *,
        run_id: UUID,
        worker_id: str,
        attempt: int,
        children: Sequence[NewRun],
        event_data: bytes,
    ) -> tuple[list[ChildStatusRow], list[str]]:
        """Create the children of the claim's run once (idempotent by id) and return
        their current status rows (in ``children`` order) and the queues of the ones
        created now. The parent's row stays locked while this runs, so a child that
        finishes meanwhile wakes the parent only after this commits."""
        ids = [c.id for c in children]
        with _translate("start child runs"):
            async with self._pool.acquire() as conn, conn.transaction():
                if await conn.fetchval(Q["lock_claim"], run_id, worker_id, attempt) is None:
                    raise errors.LeaseLost(f"run {run_id} is no longer leased to this worker")
                created = await conn.fetch(Q["insert_children"], _batch_encoder.encode(children))
                if created:
                    await conn.fetchval(
                        Q["append_event"],
                        run_id,
                        worker_id,
                        attempt,
                        "child.started",
                        event_data,
                    )
                rows = {r["id"]: r for r in await conn.fetch(Q["children_status"], ids)}
        return [row_to(ChildStatusRow, rows[i]) for i in ids], [r["queue"] for r in created]
