"""Helpers of the workflow-control tests (gates, sleeps, children, cancellation)."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import asyncpg

from tests.integration.core_support import eventually, status_of
from tidebase_async import Tidebase
from tidebase_async.store import ClaimedRun
from tidebase_async.store.sql import Q


async def claim_one(tide: Tidebase, workflow: str, worker_id: str = "w-direct") -> ClaimedRun:
    """Enqueue a run of ``workflow`` and lease it to ``worker_id`` (no worker runs)."""
    handle = await tide.enqueue(workflow)
    claimed = await tide.store.claim(worker_id=worker_id, queues=["default"], limit=1, lease_s=60.0)
    assert [c.id for c in claimed] == [handle.id]
    return claimed[0]


async def lock_waiters(db: asyncpg.Connection, n: int) -> None:
    """Wait until ``n`` other sessions are blocked on a lock."""

    async def blocked() -> bool:
        count = await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return int(count) >= n

    await eventually(blocked, timeout=5, what=f"{n} sessions waiting on a lock")


async def wait_status(
    db: asyncpg.Connection, run_id: UUID, *statuses: str, timeout: float = 10.0
) -> str:
    """Poll until the run has one of ``statuses``; return the one it has."""
    seen: list[str] = []

    async def probe() -> bool:
        seen.append(await status_of(db, run_id))
        return seen[-1] in statuses

    try:
        await eventually(probe, timeout=timeout, what=f"run {run_id} to be {'/'.join(statuses)}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; it is {seen[-1] if seen else None}") from None
    return seen[-1]


async def gate_row(db: asyncpg.Connection, run_id: UUID, name: str) -> dict[str, Any] | None:
    """The stored gate, jsonb columns decoded."""
    row = await db.fetchrow(
        "SELECT * FROM tidebase.gates WHERE run_id = $1 AND name = $2", run_id, name
    )
    if row is None:
        return None
    out = dict(row)
    for key in ("data", "channels", "payload"):
        if out[key] is not None:
            out[key] = json.loads(out[key])
    return out


async def gate_names(db: asyncpg.Connection, run_id: UUID) -> list[str]:
    rows = await db.fetch(
        "SELECT name FROM tidebase.gates WHERE run_id = $1 ORDER BY created_at, name", run_id
    )
    return [r["name"] for r in rows]


async def history(db: asyncpg.Connection, run_id: UUID) -> list[tuple[str, str, str]]:
    """(kind, name, status) of every history entry of the run, by position."""
    rows = await db.fetch(
        "SELECT kind, name, status FROM tidebase.steps WHERE run_id = $1 ORDER BY position",
        run_id,
    )
    return [(r["kind"], r["name"], r["status"]) for r in rows]


async def events(db: asyncpg.Connection, run_id: UUID) -> list[tuple[str, Any]]:
    """(type, data) of the run's events as readers see them (``list_events``: seq 1,
    ``run.created``, is derived from the run row), checked gap-free from 1."""
    rows = await db.fetch(Q["list_events"], run_id, 0, 100_000)
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1)), "event seq has gaps"
    return [(r["type"], None if r["data"] is None else json.loads(r["data"])) for r in rows]


async def snapshot(db: asyncpg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of runs, steps, gates and events, in a stable order."""
    queries = {
        "runs": "SELECT * FROM tidebase.runs ORDER BY id",
        "steps": "SELECT * FROM tidebase.steps ORDER BY run_id, position",
        "gates": "SELECT * FROM tidebase.gates ORDER BY run_id, name",
        "events": "SELECT * FROM tidebase.events ORDER BY run_id, seq",
    }
    return {table: [tuple(r) for r in await db.fetch(sql)] for table, sql in queries.items()}


def subsequence(wanted: list[str], actual: list[str]) -> bool:
    """Whether ``wanted`` occurs in ``actual`` in order (not necessarily adjacent)."""
    it = iter(actual)
    return all(any(x == w for x in it) for w in wanted)
