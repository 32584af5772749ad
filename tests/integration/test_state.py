"""run.state: merge patches, set, get, visibility while running, events, replay."""

from __future__ import annotations

import json
from typing import Any

import anyio
import asyncpg

from tests.integration.core_support import FAST, eventually, working
from tidebase_async import ConfigurationError, Run, SerializationError, Tidebase


async def noop() -> None:
    return None


async def test_patch_merges_set_replaces_and_get_returns_the_current_state(
    tide: Tidebase,
) -> None:
    @tide.workflow("stateful")
    async def stateful(run: Run) -> list[Any]:
        seen = [await run.state.get()]
        await run.state.patch({"a": 1, "nested": {"x": 1, "y": 2}, "keep": [1, 2]})
        await run.state.patch({"nested": {"y": None, "z": 3}, "b": 2, "keep": [3]})
        seen.append(await run.state.get())
        await run.state.set({"only": True})
        seen.append(await run.state.get())
        await run.state.patch({"only": None, "c": {"d": "e"}})
        seen.append(await run.state.get())
        return seen

    handle = await tide.enqueue("stateful")
    async with working(tide):
        seen = await tide.runs.wait(handle.id, timeout=10)

    assert seen == [
        {},
        {"a": 1, "nested": {"x": 1, "z": 3}, "b": 2, "keep": [3]},
        {"only": True},
        {"c": {"d": "e"}},
    ]
    assert (await tide.runs.get(handle.id)).state == {"c": {"d": "e"}}


async def test_get_returns_a_copy(tide: Tidebase) -> None:
    @tide.workflow("copy")
    async def copy(run: Run) -> Any:
        await run.state.set({"items": [1]})
        got = await run.state.get()
        got["items"].append(2)
        return await run.state.get()

    handle = await tide.enqueue("copy")
    async with working(tide):
        assert await tide.runs.wait(handle.id, timeout=10) == {"items": [1]}


async def test_state_is_visible_while_the_run_is_paused_and_recorded_as_events(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    release = anyio.Event()

    async def wait_for_release() -> None:
        await release.wait()

    @tide.workflow("progress")
    async def progress(run: Run) -> str:
        await run.state.patch({"progress": 0.5, "phase": "fetching"})
        await run.step("wait", wait_for_release)
        await run.state.patch({"progress": 1.0, "phase": None})
        return "done"

    handle = await tide.enqueue("progress")
    async with working(tide):

        async def paused_with_state() -> bool:
            info = await tide.runs.get(handle.id)
            return info.status == "running" and info.state == {
                "progress": 0.5,
                "phase": "fetching",
            }

        await eventually(paused_with_state, what="the mid-run state to be visible")
        assert (await tide.runs.get(handle.id)).steps == []
        release.set()
        assert await tide.runs.wait(handle.id, timeout=10) == "done"

    assert (await tide.runs.get(handle.id)).state == {"progress": 1.0}
    rows = await db.fetch(
        "SELECT data FROM tidebase.events WHERE run_id = $1 AND type = 'state.updated'"
        " ORDER BY seq",
        handle.id,
    )
    assert [json.loads(r["data"]) for r in rows] == [
        {"progress": 0.5, "phase": "fetching"},
        {"progress": 1.0},
    ]


async def test_state_read_between_steps_is_the_same_on_replay(tide: Tidebase) -> None:
    """A read-modify-write of the state between steps must see, on replay, what it saw
    the first time (code between steps re-runs and must be deterministic)."""
    reads: list[tuple[int, int]] = []

    @tide.workflow("counter", max_attempts=2, retry=FAST)
    async def counter(run: Run) -> int:
        for _ in range(3):
            current = (await run.state.get()).get("count", 0)
            reads.append((run.attempt, current))
            await run.state.set({"count": current + 1})
            await run.step("tick", noop)
        if run.attempt == 1:
            raise RuntimeError("replay the ticks")
        return int((await run.state.get())["count"])

    handle = await tide.enqueue("counter")
    async with working(tide):
        output = await tide.runs.wait(handle.id, timeout=10)

    assert reads == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    assert output == 3
    assert (await tide.runs.get(handle.id)).state == {"count": 3}


async def test_a_patch_inside_a_step_survives_a_replay(tide: Tidebase) -> None:
    """Regression: a state patch made inside a step was lost when a later step failed
    and the next attempt replayed that step from its checkpoint."""
    fail = [True]

    @tide.workflow("patch-in-step", max_attempts=2, retry=FAST)
    async def patch_in_step(run: Run) -> None:
        async def one() -> None:
            await run.state.patch({"one": 1})

        await run.step("one", one)

        async def two() -> None:
            if fail[0]:
                fail[0] = False
                raise RuntimeError("flaky")
            await run.state.patch({"two": 2})

        await run.step("two", two)

    async with working(tide):
        h = await tide.enqueue("patch-in-step")
        await tide.runs.wait(h.id, timeout=10)
    # Without the failure the state would be {"one": 1, "two": 2}.
    assert (await tide.runs.get(h.id)).state == {"one": 1, "two": 2}


class Opaque:
    """Something msgspec cannot encode."""


async def test_bad_state_writes_raise_and_leave_the_state_unchanged(tide: Tidebase) -> None:
    @tide.workflow("bad-state")
    async def bad_state(run: Run) -> dict[str, str]:
        await run.state.set({"ok": 1})
        raised: dict[str, str] = {}
        try:
            await run.state.set({"x": Opaque()})
        except SerializationError as exc:
            raised["set"] = str(exc)
        try:
            await run.state.patch([1, 2])  # type: ignore[arg-type]
        except ConfigurationError as exc:
            raised["patch"] = str(exc)
        raised["after"] = json.dumps(await run.state.get())
        return raised

    handle = await tide.enqueue("bad-state")
    async with working(tide):
        raised = await tide.runs.wait(handle.id, timeout=10)

    assert "state" in raised["set"] and "Opaque" in raised["set"]
    assert "mapping" in raised["patch"]
    assert raised["after"] == '{"ok": 1}'
    assert (await tide.runs.get(handle.id)).state == {"ok": 1}
