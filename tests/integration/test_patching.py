"""run.patched and run.deprecate_patch: a run that passed a patch point before the patch
existed keeps its old path; a run that reaches it with the new code records the patch
and replays it; the clean-up phase; bad names and a name reused at two places. A deploy
is simulated by a second Tidebase with changed code on the same database (and, with
worker processes, in test_versions.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from tests.integration.core_support import FAST, eventually, status_of, working
from tidebase_async import Run, RunFailed, Tidebase


async def history(db: asyncpg.Connection, run_id: UUID) -> list[tuple[str, str]]:
    rows = await db.fetch(
        "SELECT kind, name FROM tidebase.steps WHERE run_id = $1 ORDER BY position", run_id
    )
    return [(r["kind"], r["name"]) for r in rows]


def mark(name: str) -> str:
    return name


def old_code(tide: Tidebase) -> None:
    """Version 1 of ``order``: a, b, a gate, c."""

    @tide.workflow("order", retry=FAST)
    async def order(run: Run, input: Any) -> list[str]:
        path = [await run.step("a", mark, "a"), await run.step("b", mark, "b")]
        await run.gate("go")
        path.append(await run.step("c", mark, "c"))
        return path


def patched_code(tide: Tidebase) -> None:
    """Version 2: step b replaced by b2 behind patch point ``new-b``."""

    @tide.workflow("order", retry=FAST)
    async def order(run: Run, input: Any) -> list[str]:
        path = [await run.step("a", mark, "a")]
        if await run.patched("new-b"):
            path.append(await run.step("b2", mark, "b2"))
        else:
            path.append(await run.step("b", mark, "b"))
        await run.gate("go")
        path.append(await run.step("c", mark, "c"))
        return path


def cleaned_code(tide: Tidebase) -> None:
    """Version 3, once no run of version 1 is left: the old branch is gone."""

    @tide.workflow("order", retry=FAST)
    async def order(run: Run, input: Any) -> list[str]:
        path = [await run.step("a", mark, "a")]
        await run.deprecate_patch("new-b")
        path.append(await run.step("b2", mark, "b2"))
        await run.gate("go")
        path.append(await run.step("c", mark, "c"))
        return path


@pytest.fixture
async def deploy(dsn: str) -> AsyncIterator[dict[str, Tidebase]]:
    """One open Tidebase per code version, on the test's database."""
    tides = {"old": Tidebase(dsn), "patched": Tidebase(dsn), "cleaned": Tidebase(dsn)}
    old_code(tides["old"])
    patched_code(tides["patched"])
    cleaned_code(tides["cleaned"])
    for t in tides.values():
        await t.open()
    try:
        yield tides
    finally:
        for t in tides.values():
            await t.close()


async def until_waiting(tide: Tidebase, db: asyncpg.Connection, run_id: UUID) -> None:
    async with working(tide):
        await eventually(
            lambda: _is(db, run_id, "waiting"), what=f"run {run_id} to wait at its gate"
        )


async def finish(tide: Tidebase, run_id: UUID) -> Any:
    await tide.gates.resolve(run_id, "go", approved=True)
    async with working(tide):
        return await tide.runs.wait(run_id, timeout=10)


async def _is(db: asyncpg.Connection, run_id: UUID, status: str) -> bool:
    return await status_of(db, run_id) == status


async def test_a_run_that_passed_the_point_before_the_patch_keeps_its_old_path(
    deploy: dict[str, Tidebase], db: asyncpg.Connection
) -> None:
    old, new = deploy["old"], deploy["patched"]
    handle = await old.enqueue("order")
    await until_waiting(old, db, handle.id)
    assert await history(db, handle.id) == [("step", "a"), ("step", "b")]
    # Deployed: the new code resumes it. patched() answers False and consumes nothing.
    assert await finish(new, handle.id) == ["a", "b", "c"]
    assert await history(db, handle.id) == [
        ("step", "a"),
        ("step", "b"),
        ("gate", "go"),
        ("step", "c"),
    ]


async def test_a_new_run_records_the_patch_and_every_replay_answers_true(
    deploy: dict[str, Tidebase], db: asyncpg.Connection
) -> None:
    new = deploy["patched"]
    handle = await new.enqueue("order")
    await until_waiting(new, db, handle.id)
    assert await history(db, handle.id) == [("step", "a"), ("patch", "new-b"), ("step", "b2")]
    # The resume replays the patch entry (True again: b2 replays, nothing re-executes).
    assert await finish(new, handle.id) == ["a", "b2", "c"]
    types = [e.type async for e in new.runs.events(handle.id)]
    assert types.count("patch.applied") == 1


async def test_a_run_reaching_the_point_beyond_its_history_takes_the_new_path(
    dsn: str, db: asyncpg.Connection
) -> None:
    """A run of the old code that had not got to the patch point yet (it waits before
    it) takes the new path: it reaches the point with the new code first."""
    old, new = Tidebase(dsn), Tidebase(dsn)

    @old.workflow("early")
    async def early_old(run: Run) -> list[str]:
        await run.gate("go")
        return [await run.step("b", mark, "b")]

    @new.workflow("early")
    async def early_new(run: Run) -> list[str]:
        await run.gate("go")
        if await run.patched("p"):
            return [await run.step("b2", mark, "b2")]
        return [await run.step("b", mark, "b")]

    async with old, new:
        handle = await old.enqueue("early")
        await until_waiting(old, db, handle.id)
        await new.gates.resolve(handle.id, "go", approved=True)
        async with working(new):
            assert await new.runs.wait(handle.id, timeout=10) == ["b2"]
    assert await history(db, handle.id) == [("gate", "go"), ("patch", "p"), ("step", "b2")]


async def test_deprecate_patch_replays_patched_runs_and_records_nothing_new(
    deploy: dict[str, Tidebase], db: asyncpg.Connection
) -> None:
    patched, cleaned = deploy["patched"], deploy["cleaned"]
    recorded = await patched.enqueue("order")
    await until_waiting(patched, db, recorded.id)
    # Clean-up deployed: a run recorded with the patch still replays (its entry consumed).
    assert await finish(cleaned, recorded.id) == ["a", "b2", "c"]
    fresh = await cleaned.enqueue("order")
    await until_waiting(cleaned, db, fresh.id)
    assert await history(db, fresh.id) == [("step", "a"), ("step", "b2")]
    assert await finish(cleaned, fresh.id) == ["a", "b2", "c"]


async def test_a_patch_point_asked_again_in_a_loop_is_recorded_once(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    @tide.workflow("loop")
    async def loop(run: Run) -> list[bool]:
        answers = []
        for i in range(3):
            answers.append(await run.patched("fast-path"))
            await run.step("item", mark, str(i))
        return answers

    handle = await tide.enqueue("loop")
    async with working(tide):
        assert await tide.runs.wait(handle.id, timeout=10) == [True, True, True]
    kinds = [k for k, _ in await history(db, handle.id)]
    assert kinds == ["patch", "step", "step", "step"]


async def test_one_patch_name_at_two_places_fails_the_run_naming_the_patch(
    tide: Tidebase,
) -> None:
    @tide.workflow("twice", max_attempts=1)
    async def twice(run: Run) -> None:
        await run.patched("dup")
        await run.step("s", mark, "s")
        await run.patched("dup")

    handle = await tide.enqueue("twice")
    async with working(tide):
        with pytest.raises(RunFailed) as failed:
            await tide.runs.wait(handle.id, timeout=10)
    assert failed.value.error["type"] == "ConfigurationError"
    assert "patch 'dup' is used at two places" in failed.value.error["message"]


@pytest.mark.parametrize("name", ["", "a#2", "~x", 7, "a\x00b"])
async def test_a_bad_patch_name_fails_the_run_with_a_clear_error(tide: Tidebase, name: Any) -> None:
    @tide.workflow("bad", max_attempts=1)
    async def bad(run: Run) -> None:
        await run.patched(name)

    handle = await tide.enqueue("bad")
    async with working(tide):
        with pytest.raises(RunFailed) as failed:
            await tide.runs.wait(handle.id, timeout=10)
    assert failed.value.error["type"] == "ConfigurationError"
    assert "patch name" in failed.value.error["message"]
