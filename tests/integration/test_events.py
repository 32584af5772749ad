"""The per-run event log and tide.runs.events()."""

from __future__ import annotations

import uuid
from datetime import timedelta

import anyio
import asyncpg
import pytest

from tests.integration.core_support import eventually, working
from tidebase_async import Event, Run, RunNotFound, Tidebase

MULTI_STEP_TYPES = [
    "run.created",
    "run.claimed",
    "step.completed",
    "step.completed",
    "state.updated",
    "step.completed",
    "run.completed",
]


def register_multi_step(tide: Tidebase) -> None:
    @tide.workflow("multi")
    async def multi(run: Run) -> str:
        await run.step("a", lambda: 1)
        await run.step("b", lambda: 2)
        await run.state.patch({"half": True})
        await run.step("c", lambda: 3)
        return "done"


async def test_a_multi_step_run_records_gap_free_events_in_order(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    register_multi_step(tide)
    handle = await tide.enqueue("multi")
    async with working(tide):
        await tide.runs.wait(handle.id, timeout=10)

    events = [e async for e in tide.runs.events(handle.id)]

    assert [e.seq for e in events] == list(range(1, len(MULTI_STEP_TYPES) + 1))
    assert [e.type for e in events] == MULTI_STEP_TYPES
    assert [e.data["name"] for e in events if e.type == "step.completed"] == ["a", "b", "c"]
    assert [e.data["position"] for e in events if e.type == "step.completed"] == [1, 2, 3]
    assert events[1].data["attempt"] == 1
    assert events[4].data == {"half": True}
    assert all(isinstance(e, Event) for e in events)
    assert [e.at for e in events] == sorted(e.at for e in events)
    # Every event but run.created is stored; that one is derived from the run row.
    rows = await db.fetch(
        "SELECT seq, type, at FROM tidebase.events WHERE run_id = $1 ORDER BY seq", handle.id
    )
    assert [(r["seq"], r["type"], r["at"]) for r in rows] == [
        (e.seq, e.type, e.at) for e in events[1:]
    ]
    assert events[0].at == await db.fetchval(
        "SELECT created_at FROM tidebase.runs WHERE id = $1", handle.id
    )
    assert events[0].data is None


@pytest.mark.parametrize("stored", [False, True], ids=["derived", "stored-by-older-release"])
async def test_run_created_is_listed_once_whether_derived_or_stored(
    tide: Tidebase, db: asyncpg.Connection, stored: bool
) -> None:
    register_multi_step(tide)
    handle = await tide.enqueue("multi")
    created_at = await db.fetchval("SELECT created_at FROM tidebase.runs WHERE id = $1", handle.id)
    expected_at = created_at
    if stored:
        # Releases before the derived run.created stored it as the row at seq 1; a run
        # enqueued by one of them keeps it, and that row is listed instead.
        expected_at = created_at - timedelta(milliseconds=1)
        await db.execute(
            "INSERT INTO tidebase.events (run_id, seq, type, at, data)"
            " VALUES ($1, 1, 'run.created', $2, NULL)",
            handle.id,
            expected_at,
        )
    async with working(tide):
        await tide.runs.wait(handle.id, timeout=10)

    events = [e async for e in tide.runs.events(handle.id)]
    assert [e.seq for e in events] == list(range(1, len(MULTI_STEP_TYPES) + 1))
    assert [e.type for e in events] == MULTI_STEP_TYPES
    assert (events[0].at, events[0].data) == (expected_at, None)
    # Paged reads never repeat or skip seq 1, whatever the page size.
    for limit in (1, 2, 3, 500):
        seqs: list[int] = []
        while page := await tide.store.list_events(
            handle.id, after=seqs[-1] if seqs else 0, limit=limit
        ):
            assert len(page) <= limit
            seqs += [r.seq for r in page]
        assert seqs == [e.seq for e in events], limit


async def test_an_inline_run_lists_run_created_then_run_claimed(tide: Tidebase) -> None:
    @tide.workflow("inline")
    async def inline(run: Run) -> int:
        return 1

    assert await tide.run("inline") == 1
    run_id = (await tide.runs.list(workflow="inline")).items[0].id
    events = [e async for e in tide.runs.events(run_id)]
    assert [(e.seq, e.type) for e in events] == [
        (1, "run.created"),
        (2, "run.claimed"),
        (3, "run.completed"),
    ]
    assert events[1].data == {"worker": events[1].data["worker"], "attempt": 1, "inline": True}
    assert events[0].at == events[1].at


async def test_events_streams_history_then_live_until_the_run_ends(tide: Tidebase) -> None:
    release = anyio.Event()

    async def wait_for_release() -> str:
        await release.wait()
        return "released"

    @tide.workflow("streamed")
    async def streamed(run: Run) -> str:
        await run.step("first", lambda: "quick")
        return str(await run.step("blocked", wait_for_release))

    handle = await tide.enqueue("streamed")
    seen: list[Event] = []
    finished = anyio.Event()

    async def collect() -> None:
        async for event in tide.runs.events(handle.id, poll=0.2):
            seen.append(event)
        finished.set()

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(collect)
            await eventually(lambda: len(seen) >= 1, what="the history to be streamed")
            assert [e.type for e in seen] == ["run.created"]

            async with working(tide):
                await eventually(
                    lambda: any(e.type == "step.completed" for e in seen),
                    what="the first step to be streamed live",
                )
                assert not finished.is_set()
                assert seen[-1].data["name"] == "first"
                release.set()
                await finished.wait()

    assert [e.type for e in seen] == [
        "run.created",
        "run.claimed",
        "step.completed",
        "step.completed",
        "run.completed",
    ]
    assert [e.seq for e in seen] == [1, 2, 3, 4, 5]


async def test_events_after_skips_what_the_reader_has_seen(tide: Tidebase) -> None:
    register_multi_step(tide)
    handle = await tide.enqueue("multi")
    async with working(tide):
        await tide.runs.wait(handle.id, timeout=10)

    rest = [e async for e in tide.runs.events(handle.id, after=3)]
    assert [e.seq for e in rest] == [4, 5, 6, 7]
    assert [e.type for e in rest] == MULTI_STEP_TYPES[3:]
    with anyio.fail_after(5):
        assert [e async for e in tide.runs.events(handle.id, after=7)] == []


async def test_events_of_a_cancelled_run_end_after_run_cancelled(tide: Tidebase) -> None:
    handle = await tide.enqueue("never-runs")
    await tide.runs.cancel(handle.id, reason="stop")
    with anyio.fail_after(5):
        events = [e async for e in tide.runs.events(handle.id)]
    assert [e.type for e in events] == ["run.created", "run.cancelled"]
    assert events[1].data == {"reason": "stop", "actor": None, "was": "queued"}


async def test_events_of_an_unknown_run_raise_run_not_found(tide: Tidebase) -> None:
    with pytest.raises(RunNotFound):
        async for _ in tide.runs.events(uuid.uuid4()):
            pass
