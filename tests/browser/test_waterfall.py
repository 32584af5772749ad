"""The run page's waterfall, in a real headless Chromium: runs made by a real worker,
then their times set by SQL (runs, steps and the event log) so that the geometry is
exact: rows in order, spans placed and sized in proportion to their times, waits drawn
as waits with what they waited for, a retried run's two attempts with the backoff
between, child runs expanding in place, an agent run's model requests with their
tokens, and the tooltip on focus. See conftest.py for the browser."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from playwright.async_api import Locator, expect

from tests.browser.conftest import Dashboard
from tests.integration import agent_app
from tests.integration.core_support import FAST, working
from tidebase_async import Retry, Run, Tidebase

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def set_times(
    db: asyncpg.Connection,
    run_id: UUID,
    *,
    finished: float,
    steps: dict[str, tuple[float, float]],
    events: dict[str, list[float]],
) -> None:
    """The run created at T0 and finished at ``finished`` s; each step's start and end;
    the n-th event of each type in ``events`` at the n-th time given."""
    await db.execute(
        "UPDATE tidebase.runs SET created_at = $2, started_at = $2, finished_at = $3 WHERE id = $1",
        run_id,
        T0,
        at(finished),
    )
    for name, (start, end) in steps.items():
        done = await db.execute(
            "UPDATE tidebase.steps SET started_at = $3, finished_at = $4"
            " WHERE run_id = $1 AND name = $2",
            run_id,
            name,
            at(start),
            at(end),
        )
        assert done == "UPDATE 1", (name, done)
    for type_, times in events.items():
        seqs = await db.fetch(
            "SELECT seq FROM tidebase.events WHERE run_id = $1 AND type = $2 ORDER BY seq",
            run_id,
            type_,
        )
        assert len(seqs) == len(times), (type_, len(seqs))
        for row, when in zip(seqs, times, strict=True):
            await db.execute(
                "UPDATE tidebase.events SET at = $3 WHERE run_id = $1 AND seq = $2",
                run_id,
                row["seq"],
                at(when),
            )


async def assert_spans_at(span: Locator, start: float, end: float) -> None:
    """``span`` starts and ends at these fractions of the waterfall's axis (within 1.5
    px), measured in one evaluation (a live redraw may replace the elements between
    two)."""
    for _ in range(20):
        connected, left, width, track = await span.evaluate(
            """(el) => {
              const axis = document.querySelector("#run-waterfall .wf-axis .wf-track");
              const a = axis.getBoundingClientRect();
              const b = el.getBoundingClientRect();
              return [el.isConnected, b.left - a.left, b.width, a.width];
            }"""
        )
        if connected:
            break
        await asyncio.sleep(0.05)
    assert track > 500
    assert left == pytest.approx(start * track, abs=1.5)
    assert width == pytest.approx((end - start) * track, abs=1.5)


def row_kinds(page_rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(r["kind"], r["name"]) for r in page_rows]


async def rows_of(board: Dashboard, selector: str = "#run-waterfall ul.wf-rows > li") -> Any:
    return await board.page.eval_on_selector_all(
        selector,
        "(els) => els.map((e) => ({kind: e.dataset.kind,"
        " name: e.querySelector(':scope > .wf-label .wf-name').textContent}))",
    )


def register(tide: Tidebase, flaky: list[bool]) -> None:
    @tide.workflow("approval")
    async def approval(run: Run, input: Any) -> str:
        await run.step("fetch", lambda: "data")
        await run.gate("approve")
        await run.step("publish", lambda: "done")
        return "ok"

    @tide.workflow("flaky", max_attempts=2, retry=FAST)
    async def flaky_wf(run: Run, input: Any) -> str:
        await run.step("prepare", lambda: 1)

        def boom() -> str:
            if flaky[0]:
                flaky[0] = False
                raise RuntimeError("upstream down")
            return "fine"

        await run.step("call", boom, retry=Retry(attempts=1))
        return "ok"

    @tide.workflow("kid")
    async def kid(run: Run, input: Any) -> str:
        await run.step("k1", lambda: 1)
        await run.step("k2", lambda: 2)
        return "kid done"

    @tide.workflow("parent")
    async def parent(run: Run, input: Any) -> str:
        await run.step("plan", lambda: 0)
        out: str = await run.child("kid")
        return out


async def test_rows_are_in_order_placed_by_their_times_with_the_wait_labelled(
    tide: Tidebase, dashboard: Dashboard, db: asyncpg.Connection
) -> None:
    register(tide, [False])
    async with working(tide):
        handle = await tide.enqueue("approval")
        await _eventually_gate(tide, handle.id)
        await tide.gates.resolve(handle.id, "approve", approved=True, actor="ann")
        await tide.runs.wait(handle.id, timeout=10)
    # Queued 1 s; fetch 1-3 s; the gate 3-7 s; publish 7-9 s; the run ends at 10 s.
    await set_times(
        db,
        handle.id,
        finished=10,
        steps={"fetch": (1, 3), "approve": (3, 7), "publish": (7, 9)},
        events={"run.claimed": [1, 7], "run.waiting": [3], "run.completed": [10]},
    )
    page = dashboard.page
    await dashboard.open(f"/runs/{handle.id}")
    wf = page.locator("#run-waterfall")
    await expect(wf.locator("li[data-entry='publish']")).to_be_visible()
    assert row_kinds(await rows_of(dashboard)) == [
        ("queue", "Queued"),
        ("attempt", "Attempt 1"),
        ("step", "fetch"),
        ("gate", "gate approve"),
        ("step", "publish"),
    ]
    await assert_spans_at(wf.locator("li[data-kind='queue'] .wf-span"), 0, 0.1)
    await assert_spans_at(wf.locator("li[data-entry='fetch'] .wf-span"), 0.1, 0.3)
    await assert_spans_at(wf.locator("li[data-entry='publish'] .wf-span"), 0.7, 0.9)
    # One attempt, held twice by a worker: before the gate and after it.
    stints = wf.locator("li[data-kind='attempt'] .wf-span")
    await expect(stints).to_have_count(2)
    await assert_spans_at(stints.nth(0), 0.1, 0.3)
    await assert_spans_at(stints.nth(1), 0.7, 1.0)

    gate = wf.locator("li[data-kind='gate']")
    await expect(gate).to_contain_text("waited 4.00 s")
    gate_span = gate.locator(".wf-span")
    await expect(gate_span).to_have_class(re.compile(r"\bwf-wait\b"))
    await expect(wf.locator("li[data-entry='fetch'] .wf-span")).not_to_have_class(
        re.compile(r"\bwf-wait\b")
    )
    await assert_spans_at(gate_span, 0.3, 0.7)
    await expect(gate_span).to_have_attribute(
        "aria-label", re.compile(r"^gate approve, gate wait, starts at \+3\.00 s, 4\.00 s")
    )
    # Focus (the keyboard's hover) shows the tooltip.
    tip = wf.locator("#wf-tip")
    await expect(tip).to_be_hidden()
    await gate_span.focus()
    await expect(tip).to_be_visible()
    await expect(tip).to_contain_text("gate approve")
    await expect(tip).to_contain_text("starts at +3.00 s")
    await expect(tip).to_contain_text("4.00 s")
    await page.keyboard.press("Tab")
    await expect(page.locator("li[data-entry='publish'] .wf-span")).to_be_focused()
    await expect(tip).to_contain_text("publish")
    # The axis: 0 to 10 s in round steps.
    ticks = await wf.locator(".wf-tick").all_text_contents()
    assert ticks == ["0", "2.00 s", "4.00 s", "6.00 s", "8.00 s", "10.0 s"]


async def _eventually_gate(tide: Tidebase, run_id: UUID) -> None:
    from tests.integration.core_support import eventually

    async def pending() -> bool:
        info = await tide.runs.get(run_id)
        return any(g.status == "pending" for g in info.gates)

    await eventually(pending, what="the gate to open")


async def test_a_retried_run_shows_two_attempts_with_the_failure_between(
    tide: Tidebase, dashboard: Dashboard, db: asyncpg.Connection
) -> None:
    register(tide, [True])
    async with working(tide):
        handle = await tide.enqueue("flaky")
        assert await tide.runs.wait(handle.id, timeout=10) == "ok"
    # Attempt 1 from 0.5 s fails at 2 s; backoff to 4 s; attempt 2 ends at 5 s.
    await set_times(
        db,
        handle.id,
        finished=5,
        steps={"prepare": (0.5, 1), "call": (4, 5)},
        events={"run.claimed": [0.5, 4], "run.retrying": [2], "run.completed": [5]},
    )
    page = dashboard.page
    await dashboard.open(f"/runs/{handle.id}")
    wf = page.locator("#run-waterfall")
    attempts = wf.locator("li[data-kind='attempt']")
    await expect(attempts).to_have_count(2)
    first, second = attempts.nth(0), attempts.nth(1)
    await expect(first).to_have_attribute("data-attempt", "1")
    await expect(first).to_contain_text("failed, retried")
    await expect(first.locator(".wf-span")).to_have_class(re.compile(r"\bwf-failed\b"))
    await expect(first.locator(".wf-span")).to_have_attribute(
        "aria-label", re.compile("upstream down")
    )
    await expect(second).to_have_attribute("data-attempt", "2")
    await expect(second.locator(".wf-failed")).to_have_count(0)
    await assert_spans_at(first.locator(".wf-span"), 0.1, 0.4)
    backoff = second.locator(".wf-backoff")
    await expect(backoff).to_have_class(re.compile(r"\bwf-wait\b"))
    await assert_spans_at(backoff, 0.4, 0.8)
    await assert_spans_at(second.locator(".wf-attempt"), 0.8, 1.0)


async def test_a_child_run_expands_in_place_on_the_same_axis(
    tide: Tidebase, dashboard: Dashboard, db: asyncpg.Connection
) -> None:
    register(tide, [False])
    async with working(tide):
        handle = await tide.enqueue("parent")
        assert await tide.runs.wait(handle.id, timeout=10) == "kid done"
    child_id = (await tide.runs.get(handle.id)).children[0].id
    await set_times(
        db,
        handle.id,
        finished=10,
        steps={"plan": (0, 2), "kid": (2, 9)},
        events={},
    )
    await set_times(db, child_id, finished=8, steps={"k1": (3, 4), "k2": (5, 8)}, events={})
    await db.execute("UPDATE tidebase.runs SET created_at = $2 WHERE id = $1", child_id, at(2))
    page = dashboard.page
    await dashboard.open(f"/runs/{handle.id}")
    wf = page.locator("#run-waterfall")
    row = wf.locator("li[data-kind='child']")
    toggle = row.get_by_role("button", name=re.compile("kid"))
    await expect(toggle).to_have_attribute("aria-expanded", "false")
    await expect(wf.locator("li[data-entry='k1']")).to_have_count(0)
    # By keyboard.
    await toggle.focus()
    await page.keyboard.press("Enter")
    await expect(toggle).to_have_attribute("aria-expanded", "true")
    nested = row.locator(f"li[data-child='{child_id}']")
    await expect(nested.locator("li[data-entry='k2']")).to_be_visible()
    assert await nested.locator("li[data-entry='k1']").get_attribute("data-depth") == "2"
    await expect(nested.locator(":scope > .wf-label a")).to_have_attribute(
        "href", f"#/runs/{child_id}"
    )
    await assert_spans_at(nested.locator("li[data-entry='k2'] .wf-span"), 0.5, 0.8)
    await assert_spans_at(nested.locator(f"#wf-{str(child_id)[:8]}-run"), 0.2, 0.8)
    await expect(toggle).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(toggle).to_have_attribute("aria-expanded", "false")
    await expect(wf.locator("li[data-entry='k1']")).to_have_count(0)


async def test_an_agent_runs_model_requests_show_their_tokens(
    tide: Tidebase, dashboard: Dashboard, db: asyncpg.Connection
) -> None:
    agent_app.register(tide)
    async with working(tide):
        handle = await tide.enqueue("research", input="tides?")
        await tide.runs.wait(handle.id, timeout=20)
    used = {
        r["step"]: (r["i"], r["o"])
        for r in await db.fetch(
            "SELECT step, sum(input_tokens)::int AS i, sum(output_tokens)::int AS o"
            " FROM tidebase.usage WHERE run_id = $1 GROUP BY step",
            handle.id,
        )
    }
    assert set(used) == {"research__model.request_stream", "research__model.request_stream#2"}
    page = dashboard.page
    await dashboard.open(f"/runs/{handle.id}")
    wf = page.locator("#run-waterfall")
    models = wf.locator("li[data-op='model request']")
    await expect(models).to_have_count(2)
    await expect(wf.locator("li[data-op='tool call']")).to_have_count(2)
    await expect(wf.locator("li[data-op='tool call']").first).to_contain_text(
        "research: tool lookup"
    )
    for i, step in enumerate(
        ["research__model.request_stream", "research__model.request_stream#2"]
    ):
        row = models.nth(i)
        tokens_in, tokens_out = used[step]
        assert tokens_in > 0
        await expect(row).to_have_attribute("data-entry", step)
        await expect(row).to_have_attribute("data-input-tokens", str(tokens_in))
        text = f"{tokens_in:,} in / {tokens_out:,} out tokens"
        await expect(row.locator(".wf-note")).to_contain_text(text)
        span = row.locator(".wf-span")
        await expect(span).to_have_attribute("aria-label", re.compile(re.escape(text)))
        await span.focus()
        await expect(wf.locator("#wf-tip")).to_contain_text(text)
    await expect(models.first).to_contain_text("research: model request")
