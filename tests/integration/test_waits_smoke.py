"""Smoke tests of gates, sleeps, children and cancellation (the full suite lives in
test_workflow_control.py)."""

from __future__ import annotations

from datetime import timedelta

import anyio
import pytest

from tests.integration.core_support import eventually, working
from tidebase_async import ChildFailed, GateDecision, Run, RunCancelled, Tidebase


async def test_gate_suspends_and_resumes(tide: Tidebase) -> None:
    executed: list[str] = []

    @tide.workflow("approve-me")
    async def approve_me(run: Run) -> str:
        await run.step("before", lambda: executed.append("before"))
        d = await run.gate("ok", prompt="go?", data={"x": 1})
        assert isinstance(d, GateDecision)
        await run.step("after", lambda: executed.append("after"))
        return f"{d.decision}:{d.actor}"

    async with working(tide, concurrency=1) as worker:
        h = await tide.enqueue("approve-me")
        await eventually(lambda: _status(tide, h.id, "waiting"), what="waiting")
        gates = await tide.gates.list()
        assert [g.name for g in gates] == ["ok"]
        info = await tide.gates.resolve(h.id, "ok", approved=True, actor="alice")
        assert info.status == "approved"
        assert await tide.runs.wait(h.id, timeout=10) == "approved:alice"
        assert executed == ["before", "after"]
        assert worker.stats.suspended == 1


async def test_sleep_and_children(tide: Tidebase) -> None:
    @tide.workflow("leaf")
    async def leaf(run: Run, n: int) -> int:
        if n < 0:
            raise ValueError("negative")
        return n * 2

    @tide.workflow("parent")
    async def parent(run: Run) -> list[int]:
        await run.sleep("nap", 0.3)
        one = await run.child("leaf", input=5)
        many = await run.fanout("many", [("leaf", i) for i in range(4)])
        return [one, *many]

    @tide.workflow("bad-parent")
    async def bad_parent(run: Run) -> str:
        try:
            await run.child("leaf", input=-1)
        except ChildFailed as exc:
            return f"caught {exc.error.get('type')}"
        return "no"

    async with working(tide, concurrency=4, maintenance_interval=0.2):
        h = await tide.enqueue("parent")
        assert await tide.runs.wait(h.id, timeout=20) == [10, 0, 2, 4, 6]
        info = await tide.runs.get(h.id)
        assert len(info.children) == 5
        assert [s.kind for s in info.steps] == ["sleep", "child", "fanout"]
        b = await tide.enqueue("bad-parent")
        assert await tide.runs.wait(b.id, timeout=20) == "caught ValueError"


async def test_cancel_running(tide: Tidebase) -> None:
    @tide.workflow("long")
    async def long(run: Run) -> None:
        await run.step("forever", anyio.sleep, 60)

    async with working(tide, concurrency=2) as worker:
        h = await tide.enqueue("long")
        await eventually(lambda: _status(tide, h.id, "running"), what="running")
        await anyio.sleep(0.2)
        t0 = anyio.current_time()
        await tide.runs.cancel(h.id, reason="stop", actor="me")
        with pytest.raises(RunCancelled):
            await tide.runs.wait(h.id, timeout=5)
        await eventually(lambda: worker.stats.cancelled == 1, timeout=2, what="worker stopped it")
        assert anyio.current_time() - t0 < 1.0


async def test_deadline(tide: Tidebase) -> None:
    from datetime import UTC, datetime

    @tide.workflow("slow")
    async def slow(run: Run) -> None:
        await run.step("wait", anyio.sleep, 30)

    async with working(tide, concurrency=2, maintenance_interval=0.2):
        h = await tide.enqueue("slow", deadline=datetime.now(UTC) + timedelta(seconds=0.5))
        with pytest.raises(RunCancelled) as exc:
            await tide.runs.wait(h.id, timeout=5)
        assert exc.value.reason == "deadline"


async def _status(tide: Tidebase, run_id: object, status: str) -> bool:
    return (await tide.runs.get(run_id)).status == status  # type: ignore[arg-type]
