"""tide.runs: get, list with pagination, wait, cancel, retry."""

from __future__ import annotations

import json
import time
import uuid

import anyio
import asyncpg
import pytest

from tests.integration.core_support import event_types, eventually, run_row, working
from tidebase_async import (
    ConfigurationError,
    ConflictError,
    Run,
    RunCancelled,
    RunFailed,
    RunNotFound,
    Tidebase,
    TidebaseError,
    WaitTimeout,
)
from tidebase_async.models import RunSummary


async def test_get_returns_what_was_enqueued(tide: Tidebase) -> None:
    handle = await tide.enqueue(
        "report", input={"a": [1]}, dedupe_key="k", priority=2, metadata={"m": "n"}
    )
    info = await tide.runs.get(handle.id)
    assert info.id == handle.id
    assert (info.workflow, info.queue, info.status) == ("report", "default", "queued")
    assert info.input == {"a": [1]}
    assert (info.dedupe_key, info.priority, info.metadata) == ("k", 2, {"m": "n"})
    assert (info.output, info.error, info.state) == (None, None, {})
    assert (info.attempt, info.steps, info.children) == (0, [], [])
    assert info.created_at is not None and info.started_at is None
    assert await tide.runs.get(str(handle.id)) == info


async def test_get_of_an_unknown_run_raises_run_not_found(tide: Tidebase) -> None:
    for run_id in (uuid.uuid4(), str(uuid.uuid4()), "not-a-uuid", ""):
        with pytest.raises(RunNotFound, match=str(run_id) or "''"):
            await tide.runs.get(run_id)


async def test_unknown_run_ids_raise_run_not_found_everywhere(tide: Tidebase) -> None:
    missing = uuid.uuid4()
    with pytest.raises(RunNotFound):
        await tide.runs.wait(missing, timeout=1)
    with pytest.raises(RunNotFound):
        await tide.runs.cancel(missing)
    with pytest.raises(RunNotFound):
        await tide.runs.retry(missing)
    with pytest.raises(RunNotFound):
        await tide.runs.cancel("nope")


async def _all_pages(tide: Tidebase, *, limit: int, **filters: str) -> list[list[RunSummary]]:
    pages: list[list[RunSummary]] = []
    cursor: str | None = None
    while True:
        page = await tide.runs.list(limit=limit, cursor=cursor, **filters)
        pages.append(page.items)
        if page.next_cursor is None:
            return pages
        cursor = page.next_cursor
        assert len(pages) < 20, "pagination does not end"


async def test_list_pages_through_all_runs_newest_first(tide: Tidebase) -> None:
    ids = [(await tide.enqueue("job", input=i)).id for i in range(7)]

    pages = await _all_pages(tide, limit=3)

    assert [len(p) for p in pages] == [3, 3, 1]
    listed = [item.id for page in pages for item in page]
    assert listed == list(reversed(ids))  # newest first, no duplicates, no gaps
    assert all(item.status == "queued" and item.workflow == "job" for p in pages for item in p)
    assert (await tide.runs.list(limit=7)).next_cursor is None
    assert [i.id for i in (await tide.runs.list()).items] == list(reversed(ids))


async def test_list_pagination_is_stable_while_runs_are_added(tide: Tidebase) -> None:
    ids = [(await tide.enqueue("job", input=i)).id for i in range(7)]
    first = await tide.runs.list(limit=3)
    await tide.enqueue("job", input="newcomer")
    second = await tide.runs.list(limit=3, cursor=first.next_cursor)
    assert [i.id for i in first.items] == ids[6:3:-1]
    assert [i.id for i in second.items] == ids[3:0:-1]


async def test_list_filters_by_status_workflow_and_queue(tide: Tidebase) -> None:
    ids = [
        (
            await tide.enqueue(
                "even" if i % 2 == 0 else "odd", input=i, queue="low" if i < 4 else "high"
            )
        ).id
        for i in range(7)
    ]
    await tide.runs.cancel(ids[1])
    await tide.runs.cancel(ids[5])

    async def listed(**filters: str) -> list[uuid.UUID]:
        return [item.id for page in await _all_pages(tide, limit=2, **filters) for item in page]

    assert await listed(workflow="even") == [ids[6], ids[4], ids[2], ids[0]]
    assert await listed(queue="high") == [ids[6], ids[5], ids[4]]
    assert await listed(status="cancelled") == [ids[5], ids[1]]
    assert await listed(status="queued", queue="low") == [ids[3], ids[2], ids[0]]
    assert await listed(workflow="odd", queue="low") == [ids[3], ids[1]]
    assert await listed(status="completed") == []
    summary = (await tide.runs.list(workflow="odd", queue="high")).items
    assert [(s.id, s.queue, s.status) for s in summary] == [(ids[5], "high", "cancelled")]


async def test_list_rejects_a_bad_limit_or_cursor(tide: Tidebase) -> None:
    for limit, cursor, message in [
        (0, None, "limit"),
        (1001, None, "limit"),
        (10, "%%%garbage", "cursor"),
        (10, "bm90IGEgY3Vyc29y", "cursor"),  # base64 of "not a cursor"
    ]:
        with pytest.raises(ConfigurationError, match=message):
            await tide.runs.list(limit=limit, cursor=cursor)


async def test_list_rejects_an_unknown_status_and_run_info_tells_inline_runs(
    tide: Tidebase,
) -> None:
    """Regression: runs.list took an unknown status (and matched nothing) instead of
    refusing it, and RunInfo did not tell inline runs from queued ones."""

    @tide.workflow("plain")
    async def plain(run: Run) -> str:
        return "ok"

    with pytest.raises(ConfigurationError, match="bogus"):
        await tide.runs.list(status="bogus")

    assert (await tide.runs.list(status="queued")).items == []  # a known status is fine
    assert await tide.run("plain") == "ok"
    inline = (await tide.runs.list(workflow="plain")).items[0]
    queued = await tide.enqueue("plain")
    assert (await tide.runs.get(inline.id)).inline is True
    assert (await tide.runs.get(queued.id)).inline is False


async def test_wait_with_a_timeout_raises_timeout_error(tide: Tidebase) -> None:
    handle = await tide.enqueue("never-worked")
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        await tide.runs.wait(handle.id, timeout=0.3)
    assert 0.25 <= time.monotonic() - t0 < 3


async def test_wait_with_timeout_zero_returns_a_finished_run_at_once(tide: Tidebase) -> None:
    @tide.workflow("quick", max_attempts=1)
    async def quick(run: Run, input: int) -> int:
        if input < 0:
            raise ValueError("negative")
        return input

    await tide.run("quick", input=5)
    with pytest.raises(RunFailed):
        await tide.run("quick", input=-1)
    done = {s.status: s.id for s in (await tide.runs.list()).items}

    assert await tide.runs.wait(done["completed"], timeout=0) == 5
    with pytest.raises(RunFailed, match="negative"):
        await tide.runs.wait(done["failed"], timeout=0)
    queued = await tide.enqueue("quick", input=1)
    with pytest.raises(TimeoutError):
        await tide.runs.wait(queued.id, timeout=0)


async def test_wait_timeout_is_a_tidebase_error_and_a_timeout_error(tide: Tidebase) -> None:
    """Regression: runs.wait gave up with a bare TimeoutError that ``except
    TidebaseError`` does not catch; it raises WaitTimeout, which is both."""

    @tide.workflow("never-claimed")
    async def never_claimed(run: Run) -> None:
        return None

    handle = await tide.enqueue("never-claimed")  # no worker runs it
    with pytest.raises(TimeoutError) as timed_out:
        await tide.runs.wait(handle.id, timeout=0.2)
    exc: BaseException = timed_out.value
    assert isinstance(exc, TidebaseError)  # catchable with the library's other errors
    assert type(exc) is WaitTimeout
    assert "still queued" in str(exc)


async def test_cancel_a_queued_run(tide: Tidebase, db: asyncpg.Connection) -> None:
    executed: list[str] = []

    @tide.workflow("job")
    async def job(run: Run, input: str) -> str:
        executed.append(input)
        return input

    doomed = await tide.enqueue("job", input="doomed")
    await tide.runs.cancel(doomed.id, reason="not needed", actor="alice")

    row = await run_row(db, doomed.id)
    assert (row["status"], row["cancel_reason"]) == ("cancelled", "not needed")
    assert row["finished_at"] is not None
    with pytest.raises(RunCancelled) as cancelled:
        await tide.runs.wait(doomed.id, timeout=5)
    assert cancelled.value.reason == "not needed"
    assert cancelled.value.run_id == doomed.id

    await tide.runs.cancel(doomed.id)  # idempotent
    await tide.runs.cancel(doomed.id, reason="other reason")
    assert (await run_row(db, doomed.id))["cancel_reason"] == "not needed"
    types = await event_types(db, doomed.id)
    assert types == ["run.created", "run.cancelled"]
    data = await db.fetchval(
        "SELECT data FROM tidebase.events WHERE run_id = $1 AND type = 'run.cancelled'",
        doomed.id,
    )
    assert json.loads(data) == {"reason": "not needed", "actor": "alice", "was": "queued"}

    # A worker never executes a cancelled run.
    other = await tide.enqueue("job", input="other")
    async with working(tide):
        assert await tide.runs.wait(other.id, timeout=10) == "other"
    assert executed == ["other"]
    assert (await tide.runs.get(doomed.id)).status == "cancelled"

    with pytest.raises(ConflictError, match="completed"):
        await tide.runs.cancel(other.id)
    assert (await tide.runs.get(other.id)).status == "completed"


async def test_cancel_of_an_executing_run_stops_it(tide: Tidebase) -> None:
    entered = anyio.Event()
    release = anyio.Event()

    async def block() -> None:
        entered.set()
        await release.wait()

    @tide.workflow("busy")
    async def busy(run: Run) -> str:
        await run.step("block", block)
        return "finished"

    handle = await tide.enqueue("busy")
    async with working(tide) as worker:
        with anyio.fail_after(10):
            await entered.wait()
        await tide.runs.cancel(handle.id, reason="enough")
        with pytest.raises(RunCancelled, match="enough"):
            await tide.runs.wait(handle.id, timeout=10)
        await eventually(lambda: worker.stats.cancelled == 1, what="the worker stopped the run")
        assert worker.inflight == 0
    await tide.runs.cancel(handle.id)  # idempotent


async def test_retry_of_a_failed_run_resumes_from_its_checkpoints(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    calls: list[str] = []
    broken = [True]

    def step(name: str) -> str:
        calls.append(name)
        if name == "deliver" and broken[0]:
            raise ConnectionError("mail server down")
        return name

    @tide.workflow("pipeline", max_attempts=1)
    async def pipeline(run: Run) -> list[str]:
        a = await run.step("extract", step, "extract")
        b = await run.step("transform", step, "transform")
        c = await run.step("deliver", step, "deliver")
        return [a, b, c]

    handle = await tide.enqueue("pipeline")
    async with working(tide):
        with pytest.raises(RunFailed, match="mail server down"):
            await tide.runs.wait(handle.id, timeout=10)
        assert calls == ["extract", "transform", "deliver"]

        broken[0] = False
        await tide.runs.retry(handle.id)
        assert await tide.runs.wait(handle.id, timeout=10) == ["extract", "transform", "deliver"]

    assert calls == ["extract", "transform", "deliver", "deliver"]
    info = await tide.runs.get(handle.id)
    assert info.status == "completed"
    assert info.attempt == 2
    assert [(s.name, s.status) for s in info.steps] == [
        ("extract", "completed"),
        ("transform", "completed"),
        ("deliver", "completed"),
    ]
    types = await event_types(db, handle.id)
    assert types.index("run.failed") < types.index("run.retried") < types.index("run.completed")

    with pytest.raises(ConflictError, match="completed"):
        await tide.runs.retry(handle.id)
    with pytest.raises(ConflictError, match="queued"):
        await tide.runs.retry((await tide.enqueue("pipeline")).id)


async def test_retry_of_a_failed_run_whose_dedupe_key_is_taken_raises_conflict(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    """Regression: retrying a failed run whose dedupe key another active run now holds
    was not refused cleanly; it must raise ConflictError naming the dedupe key and leave
    both runs as they were."""

    @tide.workflow("deduped", max_attempts=1)
    async def deduped(run: Run) -> None:
        raise RuntimeError("fails")

    first = await tide.enqueue("deduped", dedupe_key="k")
    async with working(tide):
        with pytest.raises(RunFailed):
            await tide.runs.wait(first.id, timeout=10)
    second = await tide.enqueue("deduped", dedupe_key="k")  # no worker: stays queued
    assert not second.deduplicated and second.id != first.id

    with pytest.raises(ConflictError) as conflict:
        await tide.runs.retry(first.id)
    assert "dedupe key" in str(conflict.value)
    assert (await run_row(db, first.id))["status"] == "failed"
    assert (await run_row(db, second.id))["status"] == "queued"


async def test_events_end_when_the_run_is_deleted_meanwhile(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    """A reader of a run's events is not left polling a run that no longer exists
    (pruned by retention, or deleted by hand)."""
    handle = await tide.enqueue("nobody-runs-this")
    seen: list[str] = []

    async def read() -> None:
        async for event in tide.runs.events(handle.id, poll=0.05):
            seen.append(event.type)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            await eventually(lambda: seen == ["run.created"])
            await db.execute("DELETE FROM tidebase.runs WHERE id = $1", handle.id)
    assert seen == ["run.created"]
