"""Reads of runs, steps, children and events (runs API, dashboard)."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import asyncpg

from tidebase_async.store.base import StoreBase
from tidebase_async.store.sql import Q
from tidebase_async.store.translate import _translate


class ReadsMixin(StoreBase):
    """Read-only queries of runs and their history."""

    async def get_run(self, run_id: UUID) -> asyncpg.Record | None:
        with _translate("get run"):
            row: asyncpg.Record | None = await self._pool.fetchrow(Q["get_run"], run_id)
        return row

    async def get_run_status(self, run_id: UUID) -> asyncpg.Record | None:
        with _translate("get run status"):
            row: asyncpg.Record | None = await self._pool.fetchrow(Q["get_run_status"], run_id)
        return row

    async def get_steps(self, run_id: UUID) -> list[asyncpg.Record]:
        with _translate("get steps"):
            return list(await self._pool.fetch(Q["get_steps"], run_id))

    async def get_children(self, run_id: UUID) -> list[asyncpg.Record]:
        with _translate("get children"):
            return list(await self._pool.fetch(Q["get_children"], run_id))

    async def list_runs(
        self,
        *,
        status: str | None,
        workflow: str | None,
        queue: str | None,
        before: tuple[datetime, UUID] | None,
        limit: int,
        dedupe_key: str | None = None,
    ) -> list[asyncpg.Record]:
        with _translate("list runs"):
            return list(
                await self._pool.fetch(
                    Q["list_runs"],
                    status,
                    workflow,
                    queue,
                    before[0] if before else None,
                    before[1] if before else None,
                    limit,
                    dedupe_key,
                )
            )

    async def list_events(self, run_id: UUID, *, after: int, limit: int) -> list[asyncpg.Record]:
        with _translate("list events"):
            return list(await self._pool.fetch(Q["list_events"], run_id, after, limit))

    async def run_status(self, run_id: UUID) -> str | None:
        with _translate("run status"):
            status: str | None = await self._pool.fetchval(Q["run_exists"], run_id)
        return status
