"""Helpers of the schedule tests: a schedule's runs and row, the database clock, and
simulated downtime (``shift_back`` moves a schedule's anchor and next tick into the past)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import anyio
import asyncpg


async def runs_of(db: asyncpg.Connection, schedule: str) -> list[dict[str, Any]]:
    """The schedule's runs, oldest tick first, jsonb columns decoded."""
    rows = await db.fetch(
        "SELECT id, workflow, queue, status, fire_time, metadata::text AS metadata,"
        " error::text AS error, created_at, started_at, finished_at"
        " FROM tidebase.runs WHERE schedule = $1 ORDER BY fire_time",
        schedule,
    )
    out = []
    for row in rows:
        item = dict(row)
        for key in ("metadata", "error"):
            item[key] = None if item[key] is None else json.loads(item[key])
        out.append(item)
    return out


async def fire_times_of(db: asyncpg.Connection, schedule: str) -> list[datetime]:
    return [r["fire_time"] for r in await runs_of(db, schedule)]


async def schedule_row(db: asyncpg.Connection, name: str) -> dict[str, Any]:
    row = await db.fetchrow("SELECT * FROM tidebase.schedules WHERE name = $1", name)
    assert row is not None, f"schedule {name!r} does not exist"
    return dict(row)


async def shift_back(db: asyncpg.Connection, name: str, seconds: float) -> dict[str, Any]:
    """Simulate ``seconds`` of downtime: move the schedule's anchor and next tick back
    (interval schedules keep their grid). Returns the schedule row afterwards."""
    await db.execute(
        "UPDATE tidebase.schedules SET anchor_at = anchor_at - make_interval(secs => $2),"
        " next_fire_at = next_fire_at - make_interval(secs => $2) WHERE name = $1",
        name,
        seconds,
    )
    return await schedule_row(db, name)


async def db_now(db: asyncpg.Connection) -> datetime:
    now: datetime = await db.fetchval("SELECT tidebase.now()")
    return now


async def count_schedules(db: asyncpg.Connection) -> int:
    n: int = await db.fetchval("SELECT count(*) FROM tidebase.schedules")
    return n


def assert_on_grid(fires: list[datetime], anchor: datetime, every_s: float) -> None:
    for fire in fires:
        k = (fire - anchor).total_seconds() / every_s
        assert abs(k - round(k)) < 1e-3, f"{fire} is not on the grid of {anchor} + k*{every_s}"


async def wait_until_mid_tick(db: asyncpg.Connection, name: str, every_s: float) -> None:
    """Sleep until the database clock is half an interval away from the schedule's ticks,
    so that an action taken now is unambiguously between two ticks."""
    anchor = (await schedule_row(db, name))["anchor_at"]
    phase = ((await db_now(db)) - anchor).total_seconds() % every_s
    await anyio.sleep((every_s / 2 - phase) % every_s)


async def runs_in_status(db: asyncpg.Connection, schedule: str, status: str, n: int) -> bool:
    """Whether at least ``n`` of the schedule's runs have ``status``."""
    runs = await runs_of(db, schedule)
    return sum(1 for r in runs if r["status"] == status) >= n


async def runs_at_least(db: asyncpg.Connection, schedule: str, n: int) -> bool:
    """Whether the schedule has at least ``n`` runs."""
    return len(await runs_of(db, schedule)) >= n
