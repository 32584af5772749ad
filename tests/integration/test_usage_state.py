"""The usage ledger and the state history (issue 9, items 1 and 2)."""

from __future__ import annotations

import asyncio
import decimal
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.lowlevel
import asyncpg
import pytest

from tests.integration.core_support import FAST, eventually, working
from tidebase_async import ConfigurationError, NotFoundError, Run, RunFailed, Tidebase


async def test_usage_is_recorded_once_across_a_failure_and_replay(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    calls: list[str] = []
    fail = [True]

    @tide.workflow("agent", max_attempts=3, retry=FAST)
    async def agent(run: Run) -> str:
        async def think() -> str:
            calls.append("think")
            await run.usage.record(
                provider="acme", model="m1", input_tokens=100, output_tokens=20, cost_usd=0.01
            )
            return "thought"

        await run.step("think", think)
        # Between steps: re-runs on every attempt, recorded once.
        await run.usage.record(kind="tool", provider="search", cost_usd=0.002)

        async def answer() -> str:
            calls.append("answer")
            await run.usage.record(provider="acme", model="m2", input_tokens=5, output_tokens=50)
            if fail[0]:
                fail[0] = False
                raise RuntimeError("flaky")
            return "done"

        result: str = await run.step("answer", answer)
        return result

    async with working(tide):
        h = await tide.enqueue("agent")
        assert await tide.runs.wait(h.id, timeout=20) == "done"
    assert calls == ["think", "answer", "answer"]
    info = await tide.runs.get(h.id)
    # think once; the tool call once though its code ran twice; answer once though it
    # executed twice (a re-execution records under the same keys).
    assert (info.usage.records, info.usage.input_tokens, info.usage.output_tokens) == (3, 105, 70)
    assert info.usage.cost_usd == pytest.approx(0.012)
    steps = await db.fetch(
        "SELECT step, kind, model FROM tidebase.usage WHERE run_id = $1 ORDER BY recorded_at",
        h.id,
    )
    assert [(r["step"], r["kind"], r["model"]) for r in steps] == [
        ("think", "llm", "m1"),
        (None, "tool", None),
        ("answer", "llm", "m2"),
    ]


async def test_usage_summary_groups_in_sql(tide: Tidebase) -> None:
    @tide.workflow("a")
    async def a(run: Run, model: str) -> None:
        await run.usage.record(model=model, input_tokens=10, cost_usd=1)

    @tide.workflow("b")
    async def b(run: Run) -> None:
        await run.usage.record(model="m1", output_tokens=7, cost_usd=2)

    async with working(tide):
        ids = [
            (await tide.enqueue("a", input="m1")).id,
            (await tide.enqueue("a", input="m1")).id,
            (await tide.enqueue("a", input="m2")).id,
            (await tide.enqueue("b")).id,
        ]
        for rid in ids:
            await tide.runs.wait(rid, timeout=10)
    by_both = await tide.usage.summary()
    assert [(s.group, s.records, s.runs, s.input_tokens, s.output_tokens, s.cost_usd)
            for s in by_both] == [
        ({"workflow": "a", "model": "m1"}, 2, 2, 20, 0, 2.0),
        ({"workflow": "a", "model": "m2"}, 1, 1, 10, 0, 1.0),
        ({"workflow": "b", "model": "m1"}, 1, 1, 0, 7, 2.0),
    ]  # fmt: skip
    by_model = await tide.usage.summary(group_by=["model"])
    assert [(s.group, s.runs, s.cost_usd) for s in by_model] == [
        ({"model": "m1"}, 3, 4.0),
        ({"model": "m2"}, 1, 1.0),
    ]
    (total,) = await tide.usage.summary(group_by=())
    assert (total.group, total.records, total.cost_usd) == ({}, 4, 5.0)
    assert [s.group for s in await tide.usage.summary(workflow="b")] == [
        {"workflow": "b", "model": "m1"}
    ]
    future = datetime.now(UTC) + timedelta(hours=1)
    assert await tide.usage.summary(since=future) == []
    with pytest.raises(ConfigurationError, match="cannot group usage by"):
        await tide.usage.summary(group_by=["color"])


@pytest.mark.parametrize(
    "bad",
    [
        {"input_tokens": -1},
        {"output_tokens": 1.5},
        {"input_tokens": True},
        {"cost_usd": -0.01},
        {"cost_usd": float("nan")},
        {"cost_usd": float("inf")},
        {"cost_usd": "1"},
        {"model": ""},
        {"kind": None},
        {"metadata": [1]},
    ],
)
async def test_bad_usage_is_a_clear_error_and_records_nothing(
    tide: Tidebase, db: asyncpg.Connection, bad: dict[str, Any]
) -> None:
    @tide.workflow("bad-usage", max_attempts=1)
    async def bad_usage(run: Run) -> None:
        await run.usage.record(**bad)

    async with working(tide):
        h = await tide.enqueue("bad-usage")
        with pytest.raises(RunFailed) as failed:
            await tide.runs.wait(h.id, timeout=10)
    assert failed.value.error["type"] == "ConfigurationError"
    assert "usage" in failed.value.error["message"]
    assert await db.fetchval("SELECT count(*) FROM tidebase.usage") == 0


async def test_a_huge_decimal_cost_is_refused_not_poisoning_reads(tide: Tidebase) -> None:
    """Regression: a cost too large for the ledger's numeric column (Decimal("1e400"))
    was stored and then broke every read of the run and of the usage summary; it must be
    refused up front or stay readable."""

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
    """Regression: an int cost too large for the ledger (10**5000) failed the run with a
    low-level error instead of a ConfigurationError."""

    @tide.workflow("huge-int-cost", max_attempts=1)
    async def huge_int_cost(run: Run) -> None:
        await run.usage.record(model="m", cost_usd=10**5000)

    async with working(tide):
        h = await tide.enqueue("huge-int-cost")
        with pytest.raises(RunFailed) as failed:
            await tide.runs.wait(h.id, timeout=10)
    assert failed.value.error["type"] == "ConfigurationError"


async def test_usage_between_steps_in_gather_does_not_swallow_a_later_steps_usage(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    """Regression: usage recorded between steps inside a gather, in an attempt that
    failed and was retried, made a later step's usage count as already recorded and be
    dropped."""
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


async def test_state_history_is_gap_free_under_concurrent_patches(tide: Tidebase) -> None:
    @tide.workflow("patcher")
    async def patcher(run: Run) -> None:
        await run.step("start", lambda: None)

        async def patch(i: int) -> None:
            await run.state.patch({f"k{i}": i})

        await asyncio.gather(*(patch(i) for i in range(20)))
        await run.state.save("all-set")
        await run.step("after", lambda: None)
        await run.state.patch({"k0": None, "nested": {"a": 1}})

    async with working(tide):
        h = await tide.enqueue("patcher")
        await tide.runs.wait(h.id, timeout=10)
    history = await tide.runs.state_history(h.id)
    assert [v.version for v in history] == list(range(1, 22))
    assert history[19].label == "all-set" and history[19].step == "start"
    assert history[19].state == {f"k{i}": i for i in range(20)}
    assert history[20].step == "after"
    assert "k0" not in history[20].state and history[20].state["nested"] == {"a": 1}
    assert await tide.runs.state_at(h.id, 20) == history[19].state
    assert (await tide.runs.get(h.id)).state == history[20].state
    with pytest.raises(NotFoundError):
        await tide.runs.state_at(h.id, 99)


async def test_state_versions_are_not_repeated_by_a_replay(tide: Tidebase) -> None:
    fail = [True]

    @tide.workflow("progress", max_attempts=2, retry=FAST)
    async def progress(run: Run) -> None:
        await run.state.set({"stage": 1})
        await run.step("one", lambda: None)
        await run.state.patch({"stage": 2})

        def two() -> None:
            if fail[0]:
                fail[0] = False
                raise RuntimeError("flaky")

        await run.step("two", two)
        await run.state.patch({"stage": 3})

    async with working(tide):
        h = await tide.enqueue("progress")
        await tide.runs.wait(h.id, timeout=10)
    history = await tide.runs.state_history(h.id)
    # The second attempt replays through step two's recorded failure: the writes before
    # it (stages 1 and 2) apply in memory only, so no version repeats.
    assert [v.state["stage"] for v in history] == [1, 2, 3]
    assert [v.step for v in history] == [None, "one", "two"]


async def test_state_history_of_unknown_run(tide: Tidebase) -> None:
    from tidebase_async import RunNotFound

    with pytest.raises(RunNotFound):
        await tide.runs.state_history("01a20000-0000-7000-8000-000000000000")
    await eventually(lambda: True)
    await anyio.lowlevel.checkpoint()


async def test_state_usage_fork_and_reset_over_http(tide: Tidebase) -> None:
    import httpx

    @tide.workflow("two-steps")
    async def two_steps(run: Run, tag: str) -> str:
        await run.step("a", lambda: None)
        await run.state.set({"at": "a"})
        await run.usage.record(model="m", input_tokens=3, cost_usd=0.5)
        await run.step("b", lambda: None)
        await run.state.set({"at": "b"})
        return tag

    transport = httpx.ASGITransport(app=tide.asgi_app())
    async with (
        working(tide),
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c,
    ):
        h = await tide.enqueue("two-steps", input="x")
        await tide.runs.wait(h.id, timeout=10)
        versions = (await c.get(f"/runs/{h.id}/state")).json()["items"]
        assert [(v["version"], v["state"], v["step"]) for v in versions] == [
            (1, {"at": "a"}, "a"),
            (2, {"at": "b"}, "b"),
        ]
        usage = (await c.get("/usage", params={"group_by": "model"})).json()["items"]
        assert [(u["group"], u["input_tokens"], u["cost_usd"]) for u in usage] == [
            ({"model": "m"}, 3, 0.5)
        ]
        assert (await c.get("/usage", params={"since": "yesterday"})).status_code == 400
        r = await c.post(f"/runs/{h.id}/fork", json={"from_step": "b", "input": "y"})
        assert r.status_code == 201, r.text
        fork_id = r.json()["id"]
        assert await tide.runs.wait(fork_id, timeout=10) == "y"
        assert (await c.post(f"/runs/{h.id}/fork", json={"from_step": "zz"})).status_code == 404
        r = await c.post(f"/runs/{h.id}/reset", json={"to_step": "a"})
        assert r.status_code == 409, r.text


async def test_each_history_entry_carries_the_usage_recorded_inside_it(tide: Tidebase) -> None:
    """``runs.get`` sums the usage of each step on its entry (the run page's waterfall
    labels model requests with their tokens); usage between steps belongs to none."""

    @tide.workflow("two-calls")
    async def two_calls(run: Run) -> None:
        async def ask() -> None:
            await run.usage.record(model="m", input_tokens=100, output_tokens=7, cost_usd=0.25)
            await run.usage.record(model="m", input_tokens=20, output_tokens=3)

        await run.step("ask", ask)
        await run.usage.record(kind="tool", input_tokens=9)
        await run.step("plain", lambda: None)

    async with working(tide):
        h = await tide.enqueue("two-calls")
        await tide.runs.wait(h.id, timeout=10)
    steps = {s.name: s.usage for s in (await tide.runs.get(h.id)).steps}
    ask = steps["ask"]
    assert ask is not None
    assert (ask.records, ask.input_tokens, ask.output_tokens) == (2, 120, 10)
    assert ask.cost_usd == pytest.approx(0.25)
    assert steps["plain"] is None


async def test_event_log_over_http_pages_the_events_with_their_times(tide: Tidebase) -> None:
    import httpx

    @tide.workflow("three-steps")
    async def three_steps(run: Run) -> None:
        for name in ("a", "b", "c"):
            await run.step(name, lambda: None)

    transport = httpx.ASGITransport(app=tide.asgi_app())
    async with (
        working(tide),
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c,
    ):
        h = await tide.enqueue("three-steps")
        await tide.runs.wait(h.id, timeout=10)
        everything = await tide.runs.event_page(h.id, limit=1000)
        first = (await c.get(f"/runs/{h.id}/event-log", params={"limit": 2})).json()
        assert [e["seq"] for e in first["items"]] == [1, 2]
        assert first["items"][0]["type"] == "run.created"
        assert datetime.fromisoformat(first["items"][1]["at"]) == everything[1].at
        assert first["next_after"] == 2
        rest = (await c.get(f"/runs/{h.id}/event-log", params={"after": 2})).json()
        assert [e["seq"] for e in rest["items"]] == [e.seq for e in everything[2:]]
        assert rest["items"][-1]["type"] == "run.completed"
        assert rest["next_after"] is None
        bad = await c.get(f"/runs/{h.id}/event-log", params={"limit": 0})
        assert bad.status_code == 400
        missing = await c.get("/runs/00000000-0000-0000-0000-000000000000/event-log")
        assert missing.status_code == 404
