"""Housekeeping: pruning finished runs, vacuum."""

from __future__ import annotations

from tidebase_async.store.base import StoreBase
from tidebase_async.store.sql import Q
from tidebase_async.store.translate import _translate


class MaintenanceMixin(StoreBase):
    """Prune finished runs; vacuum where autovacuum is off."""

    async def prune_finished(self, *, older_than_s: float, limit: int) -> int:
        """Delete up to ``limit`` runs finished more than ``older_than_s`` ago, with
        their steps and events; return how many."""
        with _translate("prune finished runs"):
            status = await self._pool.execute(Q["prune_finished"], older_than_s, limit)
        return int(status.rsplit(" ", 1)[-1])

    async def autovacuum_enabled(self) -> bool:
        with _translate("read autovacuum setting"):
            return str(await self._pool.fetchval("SHOW autovacuum")) == "on"

    async def vacuum(self) -> None:
        """VACUUM (ANALYZE) the tables that churn; for servers without autovacuum."""
        with _translate("vacuum"):
            await self._pool.execute(
                "VACUUM (ANALYZE) tidebase.runs, tidebase.steps, tidebase.events"
            )
