"""Schedules and their firing; runs past their deadline."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from tidebase_async.store.base import StoreBase, read_retrying
from tidebase_async.store.records import ScheduledRun, _batch_encoder
from tidebase_async.store.rows import (
    DueSchedule,
    ScheduleRow,
    row_to,
)
from tidebase_async.store.sql import Q
from tidebase_async.store.translate import _translate


class SchedulesMixin(StoreBase):
    """Schedule CRUD, due ticks and firing; overdue runs."""

    @read_retrying
    async def db_now(self) -> datetime:
        with _translate("read the database clock"):
            now: datetime = await self._pool.fetchval(Q["db_now"])
        return now

    async def upsert_schedule(self, **fields: Any) -> ScheduleRow:
        with _translate("set schedule"):
            row = await self._pool.fetchrow(
                Q["upsert_schedule"],
                fields["name"],
                fields["workflow"],
                fields["input"],
                fields["queue"],
                fields["priority"],
                fields["cron"],
                fields["every_s"],
                fields["timezone"],
                fields["enabled"],
                fields["catchup"],
                fields["catchup_limit"],
                fields["overlap"],
                fields["anchor_at"],
                fields["next_fire_at"],
                fields["source"],
                fields.get("keep_enabled", False),
            )
        return row_to(ScheduleRow, row)

    @read_retrying
    async def get_schedule(self, name: str) -> ScheduleRow | None:
        with _translate("get schedule"):
            row = await self._pool.fetchrow(Q["get_schedule"], name)
        return None if row is None else row_to(ScheduleRow, row)

    @read_retrying
    async def list_schedules(self) -> list[ScheduleRow]:
        with _translate("list schedules"):
            rows = await self._pool.fetch(Q["list_schedules"])
        return [row_to(ScheduleRow, row) for row in rows]

    async def delete_schedule(self, name: str) -> bool:
        with _translate("delete schedule"):
            return await self._pool.fetchval(Q["delete_schedule"], name) is not None

    async def delete_code_schedules(
        self, *, workflows: Sequence[str], keep: Sequence[str]
    ) -> list[str]:
        with _translate("sync code schedules"):
            rows = await self._pool.fetch(Q["delete_code_schedules"], list(workflows), list(keep))
        return [r[0] for r in rows]

    async def pause_schedule(self, name: str) -> ScheduleRow | None:
        with _translate("pause schedule"):
            row = await self._pool.fetchrow(Q["pause_schedule"], name)
        return None if row is None else row_to(ScheduleRow, row)

    async def resume_schedule(
        self, name: str, *, next_fire_at: datetime, anchor_at: datetime
    ) -> ScheduleRow | None:
        with _translate("resume schedule"):
            row = await self._pool.fetchrow(Q["resume_schedule"], name, next_fire_at, anchor_at)
        return None if row is None else row_to(ScheduleRow, row)

    async def next_tick_in(self) -> float | None:
        """Seconds until the next tick of an enabled schedule (<= 0: due)."""
        with _translate("next schedule tick"):
            value = await self._pool.fetchval(Q["next_tick"])
        return None if value is None else float(value)

    async def due_schedules(self, *, limit: int) -> list[str]:
        with _translate("find due schedules"):
            return [r[0] for r in await self._pool.fetch(Q["due_schedules"], limit)]

    async def fire_schedule(
        self,
        name: str,
        plan: Callable[[DueSchedule, bool], tuple[list[ScheduledRun], datetime]],
    ) -> list[tuple[UUID, str]] | None:
        """Fire schedule ``name`` if it is still due, in one transaction: ``plan(due,
        has_active_run)`` returns the runs of the ticks to enqueue and the next fire
        time; the runs are inserted (a tick already enqueued is skipped by its unique
        key) and the schedule advanced together, or neither. Returns the (id, queue)
        of the runs created; None when the schedule was not due (or locked)."""
        with _translate(f"fire schedule {name!r}"):
            async with self._pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(Q["lock_due_schedule"], name)
                if row is None:
                    return None
                active = bool(await conn.fetchval(Q["schedule_active"], name))
                runs, next_fire_at = plan(row_to(DueSchedule, row), active)
                created: list[asyncpg.Record] = []
                if runs:
                    created = await conn.fetch(
                        Q["insert_scheduled_runs"], _batch_encoder.encode(runs)
                    )
                last = created[-1] if created else None
                await conn.execute(
                    Q["advance_schedule"],
                    name,
                    next_fire_at,
                    None if last is None else last["fire_time"],
                    None if last is None else last["id"],
                )
        return [(r["id"], r["queue"]) for r in created]

    async def overdue_runs(self, *, limit: int) -> list[UUID]:
        with _translate("find runs past their deadline"):
            return [row[0] for row in await self._pool.fetch(Q["overdue_runs"], limit)]
