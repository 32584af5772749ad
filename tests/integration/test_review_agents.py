"""Regression tests for defects a review of the agent features (issue 9 items 1-4:
usage ledger, state history, fork and reset) found; each failed before its fix."""

from __future__ import annotations

import asyncio
import decimal

import asyncpg
import pytest

from tests.integration.core_support import FAST, working
from tidebase_async import Run, RunFailed, Tidebase


async def test_a_huge_decimal_cost_is_refused_not_poisoning_reads(tide: Tidebase) -> None:
    @tide.workflow("huge-cost", max_attempts=1)
    async def huge_cost(run: Run) -> None:
        await run.usage.record(model="m", cost_usd=decimal.Decimal("1e400"))

    async with working(tide):
        h = await tide.enqueue("huge-cost")
        try:
            await tide.runs.wait(h.id, timeout=10)
        except RunFailed as failed:
            assert failed.error["type"] == "ConfigurationError"
    # Either refused up front, or readable afterwards: never a broken runs.get.
    await tide.runs.get(h.id)
    await tide.usage.summary()


async def test_a_huge_int_cost_is_a_configuration_error(tide: Tidebase) -> None:
    @tide.workflow("huge-int-cost", max_attempts=1)
    async def huge_int_cost(run: Run) -> None:
        await run.usage.record(model="m", cost_usd=10**5000)

    async with working(tide):
        h = await tide.enqueue("huge-int-cost")
        with pytest.raises(RunFailed) as failed:
            await tide.runs.wait(h.id, timeout=10)
    assert failed.value.error["type"] == "ConfigurationError"


async def test_a_patch_inside_a_step_survives_a_replay(tide: Tidebase) -> None:
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


async def test_a_fork_of_a_fork_starts_from_the_state_at_the_fork_point(
    tide: Tidebase,
) -> None:
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


async def test_usage_between_steps_in_gather_does_not_swallow_a_later_steps_usage(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    fail = [True]

    @tide.workflow("gathered", max_attempts=2, retry=FAST)
    async def gathered(run: Run) -> None:
        async def slow_a() -> None:
            await asyncio.sleep(0.2)

        async def branch_a() -> None:
            await run.step("a", slow_a)
            await run.usage.record(model="A", input_tokens=1)

        async def slow_b2() -> None:
            await asyncio.sleep(0.5)
            if fail[0]:
                fail[0] = False
                raise RuntimeError("flaky")

        async def branch_b() -> None:
            await run.step("b1", lambda: None)
            await run.step("b2", slow_b2)

        await asyncio.gather(branch_a(), branch_b())

        async def c() -> None:
            await run.usage.record(model="C", input_tokens=10)

        await run.step("c", c)

    async with working(tide):
        h = await tide.enqueue("gathered")
        await tide.runs.wait(h.id, timeout=20)
    models = await db.fetch(
        "SELECT model, step FROM tidebase.usage WHERE run_id = $1 ORDER BY model", h.id
    )
    assert [r["model"] for r in models] == ["A", "C"]
    assert (await tide.runs.get(h.id)).usage.input_tokens == 11
