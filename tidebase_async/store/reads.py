"""Reads of runs, steps, children and events (runs API, dashboard)."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from tidebase_async.store.base import StoreBase, read_retrying
from tidebase_async.store.rows import (
    ChildRow,
    EventRow,
    RunListRow,
    RunRow,
    RunStatusRow,
    StepRow,
    row_to,
)
from tidebase_async.store.sql import Q
from tidebase_async.store.translate import _translate


class ReadsMixin(StoreBase):
    """Read-only queries of runs and their history."""

    @read_retrying
    async def get_run(self, run_id: UUID) -> RunRow | None:
        with _translate("get run"):
            row = await self._pool.fetchrow(Q["get_run"], run_id)
        return None if row is None else row_to(RunRow, row)

    @read_retrying
    async def get_run_status(self, run_id: UUID) -> RunStatusRow | None:
        with _translate("get run status"):
            row = await self._pool.fetchrow(Q["get_run_status"], run_id)
        return None if row is None else row_to(RunStatusRow, row)

    @read_retrying
    async def get_steps(self, run_id: UUID) -> list[StepRow]:
        with _translate("get steps"):
            rows = await self._pool.fetch(Q["get_steps"], run_id)
        return [row_to(StepRow, row) for row in rows]

    @read_retrying
    async def get_children(self, run_id: UUID) -> list[ChildRow]:
        with _translate("get children"):
            rows = await self._pool.fetch(Q["get_children"], run_id)
        return [row_to(ChildRow, row) for row in rows]

    @read_retrying
    async def list_runs(
        self,
        *,
        status: str | None,
        workflow: str | None,
        queue: str | None,
        before: tuple[datetime, UUID] | None,
        limit: int,
        dedupe_key: str | None = None,
    ) -> list[RunListRow]:
        with _translate("list runs"):
            rows = await self._pool.fetch(
                Q["list_runs"],
                status,
                workflow,
                queue,
                before[0] if before else None,
                before[1] if before else None,
                limit,
                dedupe_key,
            )
        return [row_to(RunListRow, row) for row in rows]

    @read_retrying
    async def list_events(self, run_id: UUID, *, after: int, limit: int) -> list[EventRow]:
        with _translate("list events"):
            rows = await self._pool.fetch(Q["list_events"], run_id, after, limit)
        return [row_to(EventRow, row) for row in rows]

    @read_retrying
    async def run_status(self, run_id: UUID) -> str | None:
        with _translate("run status"):
            status: str | None = await self._pool.fetchval(Q["run_exists"], run_id)
        return status
