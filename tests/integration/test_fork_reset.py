"""Fork and reset of runs (issue 9, item 3)."""

from __future__ import annotations

import asyncpg
import pytest

from tests.integration.core_support import working
from tidebase_async import ConflictError, NotFoundError, Run, RunFailed, Tidebase


def five_steps(tide: Tidebase, executed: list[str], *, fail_at: set[str]) -> None:
    @tide.workflow("five", max_attempts=1)
    async def five(run: Run, tag: str) -> list[str]:
        out = []
        for i in range(1, 6):
            name = f"s{i}"

            def body(n: str = name) -> str:
                executed.append(n)
                if n in fail_at:
                    raise RuntimeError(f"{n} broke")
                return f"{n}:{tag}"

            out.append(await run.step(name, body))
            await run.state.patch({"done": i})
        return out


async def test_fork_from_step_3_executes_steps_3_to_5_only(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    executed: list[str] = []
    five_steps(tide, executed, fail_at=set())
    async with working(tide):
        original = await tide.enqueue("five", input="a")
        assert await tide.runs.wait(original.id, timeout=10) == [f"s{i}:a" for i in range(1, 6)]
        executed.clear()
        before = await db.fetch(
            "SELECT position, name, output FROM tidebase.steps WHERE run_id = $1 ORDER BY 1",
            original.id,
        )
        fork = await tide.runs.fork(original.id, from_step="s3", input="b")
        output = await tide.runs.wait(fork, timeout=10)
    assert executed == ["s3", "s4", "s5"]
    # Steps 1 and 2 replayed from the original's checkpoints (input "a"); 3 to 5 ran
    # with the new input.
    assert output == ["s1:a", "s2:a", "s3:b", "s4:b", "s5:b"]
    info = await tide.runs.get(fork)
    assert (info.forked_from, info.forked_at) == (original.id, "s3")
    assert info.state == {"done": 5}
    after = await db.fetch(
        "SELECT position, name, output FROM tidebase.steps WHERE run_id = $1 ORDER BY 1",
        original.id,
    )
    assert after == before  # the original's history is untouched
    assert [e.type async for e in tide.runs.events(fork)][:2] == ["run.created", "run.forked"]


async def test_fork_by_position_keeps_the_input_and_state_as_it_was(tide: Tidebase) -> None:
    executed: list[str] = []
    five_steps(tide, executed, fail_at=set())
    async with working(tide):
        original = await tide.enqueue("five", input="a")
        await tide.runs.wait(original.id, timeout=10)
        fork = await tide.runs.fork(original.id, from_step=5)
        forked = await tide.runs.get(fork)
        assert forked.state == {"done": 3}  # as the original's was when step 4 finished
        assert await tide.runs.wait(fork, timeout=10) == [f"s{i}:a" for i in range(1, 6)]


async def test_reset_of_a_failed_run_resumes_at_the_failed_step(tide: Tidebase) -> None:
    executed: list[str] = []
    fail_at = {"s3"}
    five_steps(tide, executed, fail_at=fail_at)
    async with working(tide):
        h = await tide.enqueue("five", input="a")
        with pytest.raises(RunFailed):
            await tide.runs.wait(h.id, timeout=10)
        assert executed == ["s1", "s2", "s3"]
        fail_at.clear()
        executed.clear()
        await tide.runs.reset(h.id, to_step="s3")
        assert await tide.runs.wait(h.id, timeout=10) == [f"s{i}:a" for i in range(1, 6)]
    assert executed == ["s3", "s4", "s5"]
    types = [e.type async for e in tide.runs.events(h.id)]
    assert "run.reset" in types and types.count("step.failed") == 1


async def test_a_fork_of_a_fork_starts_from_the_state_at_the_fork_point(
    tide: Tidebase,
) -> None:
    """Regression: a fork of a fork started from the wrong state instead of the state
    its parent fork had when the step before the fork point finished."""

    @tide.workflow("counted", max_attempts=1)
    async def counted(run: Run) -> int:
        for i in range(1, 5):
            await run.step(f"s{i}", lambda: None)
            await run.state.patch({"done": i})
        return 4

    async with working(tide):
        original = await tide.enqueue("counted")
        await tide.runs.wait(original.id, timeout=10)
        first = await tide.runs.fork(original.id, from_step="s4")
        assert (await tide.runs.get(first)).state == {"done": 2}  # as when s3 finished
        await tide.runs.wait(first, timeout=10)
        second = await tide.runs.fork(first, from_step="s3")
        # As the first fork's state was when its step s2 finished.
        assert (await tide.runs.get(second)).state == {"done": 1}


async def test_reset_to_a_failed_child_runs_the_child_again(tide: Tidebase) -> None:
    """Regression: resetting a parent to the step of a failed child replayed the child's
    failure instead of running the child again."""
    fail = [True]

    @tide.workflow("flaky-child", max_attempts=1)
    async def flaky_child(run: Run) -> str:
        def work() -> str:
            if fail[0]:
                raise RuntimeError("child broke")
            return "child ok"

        result: str = await run.step("work", work)
        return result

    @tide.workflow("parent", max_attempts=1)
    async def parent(run: Run) -> str:
        await run.step("before", lambda: None)
        result: str = await run.child("flaky-child")
        return result

    async with working(tide):
        h = await tide.enqueue("parent")
        with pytest.raises(RunFailed):
            await tide.runs.wait(h.id, timeout=10)
        fail[0] = False
        await tide.runs.reset(h.id, to_step=2)
        assert await tide.runs.wait(h.id, timeout=10) == "child ok"


async def test_fork_and_reset_refuse_what_they_cannot_do(tide: Tidebase) -> None:
    executed: list[str] = []
    five_steps(tide, executed, fail_at=set())
    async with working(tide):
        h = await tide.enqueue("five", input="a")
        await tide.runs.wait(h.id, timeout=10)
        with pytest.raises(NotFoundError, match="has no step 'nope'"):
            await tide.runs.fork(h.id, from_step="nope")
        with pytest.raises(NotFoundError):
            await tide.runs.fork(h.id, from_step=9)
        with pytest.raises(ConflictError, match="only a failed run"):
            await tide.runs.reset(h.id, to_step="s2")
