"""Smoke tests of schedules, queue controls and priorities (the full suite is in
test_schedules.py and test_queues.py)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from tests.integration.core_support import eventually, working
from tidebase_async import InvalidSchedule, Run, Tidebase


async def test_every_schedule_fires_once_per_tick(tide: Tidebase) -> None:
    @tide.workflow("tick")
    async def tick(run: Run, n: int) -> int:
        return n

    info = await tide.schedules.set("t", every=0.5, workflow="tick", input=7)
    assert info.every == 0.5
    async with working(tide, maintenance_interval=0.2):
        await anyio.sleep(2.2)
    page = await tide.runs.list(workflow="tick", limit=100)
    fire_times = []
    for r in page.items:
        metadata = (await tide.runs.get(r.id)).metadata
        assert metadata is not None
        fire_times.append(metadata["fire_time"])
    assert 3 <= len(fire_times) <= 5
    assert len(set(fire_times)) == len(fire_times)


async def test_bad_schedule_stores_nothing(tide: Tidebase) -> None:
    with pytest.raises(InvalidSchedule, match="cron"):
        await tide.schedules.set("x", cron="61 * * * *", workflow="w")
    with pytest.raises(InvalidSchedule, match="time zone"):
        await tide.schedules.set("x", cron="* * * * *", workflow="w", timezone="Mars/Base")
    with pytest.raises(InvalidSchedule, match="exactly one"):
        await tide.schedules.set("x", cron="* * * * *", every=5, workflow="w")
    assert await tide.schedules.list() == []


async def test_concurrency_cap_and_pause(tide: Tidebase) -> None:
    running = 0
    peak = 0

    @tide.workflow("capped", queue="q")
    async def capped(run: Run) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.1)
        running -= 1

    await tide.queues.configure("q", concurrency=2)
    await tide.enqueue_many([("capped", None)] * 10)
    async with working(tide, concurrency=8):
        await eventually(
            lambda: _counts(tide, "q", "completed", 10), timeout=15, what="all completed"
        )
    assert peak == 2
    await tide.queues.configure("q", paused=True)
    h = await tide.enqueue("capped")
    async with working(tide, concurrency=8):
        await anyio.sleep(0.5)
        assert (await tide.runs.get(h.id)).status == "queued"
        await tide.queues.configure("q", paused=False, concurrency=None)
        await tide.runs.wait(h.id, timeout=5)
    info = await tide.queues.get("q")
    assert (info.paused, info.concurrency, info.counts["completed"]) == (False, None, 11)


async def test_priority_order(tide: Tidebase) -> None:
    order: list[int] = []

    @tide.workflow("p")
    async def p(run: Run, n: int) -> None:
        order.append(n)

    for n, prio in [(1, 0), (2, 5), (3, 0), (4, 5), (5, 10)]:
        await tide.enqueue("p", input=n, priority=prio)
    async with working(tide, concurrency=1):
        await eventually(lambda: len(order) == 5, what="all ran")
    assert order == [5, 2, 4, 1, 3]


async def _counts(tide: Tidebase, queue: str, status: str, n: int) -> bool:
    return (await tide.queues.get(queue)).counts.get(status, 0) == n


async def test_a_schedule_that_cannot_fire_does_not_stop_the_others(
    tide: Tidebase, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tidebase_async.engine import firing

    @tide.workflow("tick")
    async def tick(run: Run) -> None:
        return None

    plan = firing._plan

    def broken(workflows: Any, row: Any, active: bool) -> Any:
        if row["name"] == "broken":
            raise RuntimeError("a bug in planning")
        return plan(workflows, row, active)

    monkeypatch.setattr(firing, "_plan", broken)
    await tide.schedules.set("broken", every=0.3, workflow="tick")
    await tide.schedules.set("fine", every=0.3, workflow="tick")
    async with working(tide, maintenance_interval=0.1) as worker:
        await eventually(
            lambda: _fired(tide, "fine"), timeout=10, what="the healthy schedule to fire"
        )
        ticks = worker.stats.maintenance_ticks
        await anyio.sleep(0.5)
        assert worker.stats.maintenance_ticks > ticks  # the reconciler goes on
    assert (await tide.schedules.get("broken")).last_run_id is None


async def _fired(tide: Tidebase, name: str) -> bool:
    return (await tide.schedules.get(name)).last_run_id is not None
