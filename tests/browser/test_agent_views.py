"""The dashboard's views for agent runs, in a real headless Chromium: usage totals and
the usage page, the state history with a diff between versions, the live output pane,
and forking a run from a step. See conftest.py for the browser."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from playwright.async_api import expect

from tests.browser.conftest import Dashboard
from tests.integration.core_support import working
from tidebase_async import Run, Tidebase

TOKENS = [f"tok{i:02d} " for i in range(20)]


def register(tide: Tidebase, executed: list[str] | None = None) -> None:
    """The workflows the tests run; ``executed`` hears every step that executes."""
    calls = executed if executed is not None else []

    @tide.workflow("ledger")
    async def ledger(run: Run, input: Any) -> str:
        async def think() -> str:
            await run.usage.record(
                provider="acme", model="m1", input_tokens=120, output_tokens=30, cost_usd=0.01
            )
            return "plan"

        async def refine() -> str:
            await run.usage.record(
                provider="acme", model="m1", input_tokens=80, output_tokens=20, cost_usd=0.0025
            )
            return "better plan"

        await run.step("think", think)
        await run.state.set({"plan": "draft", "meta": {"tries": 1, "tags": ["a"]}, "old": True})
        await run.step("refine", refine)
        await run.state.patch({"plan": "final", "meta": {"tries": 2, "model": "m1"}, "old": None})
        await run.state.save("final")
        await run.state.patch({"done": True})
        return "ok"

    @tide.workflow("typist")
    async def typist(run: Run, input: Any) -> int:
        await run.gate("go")

        async def write() -> int:
            for token in TOKENS:
                await run.emit(token)
            await run.emit({"tokens": len(TOKENS)})
            return len(TOKENS)

        written: int = await run.step("write", write)
        return written

    def step(name: str) -> Any:
        def body() -> str:
            calls.append(name)
            return name

        return body

    @tide.workflow("pipeline")
    async def pipeline(run: Run, input: Any) -> list[str]:
        return [await run.step(name, step(name)) for name in ("fetch", "summarize", "publish")]


async def test_usage_totals_and_a_diff_between_state_versions(
    tide: Tidebase, dashboard: Dashboard
) -> None:
    register(tide)
    page = dashboard.page
    async with working(tide):
        handle = await tide.enqueue("ledger")
        await tide.runs.wait(handle.id, timeout=10)
        await dashboard.open(f"/runs/{handle.id}")
        await expect(page.locator("#app h1 .badge")).to_have_text("completed")

        usage = page.locator("#run-usage")
        await expect(usage.locator('[data-usage="Input tokens"]')).to_have_text("200")
        await expect(usage.locator('[data-usage="Output tokens"]')).to_have_text("50")
        await expect(usage.locator('[data-usage="Cost"]')).to_have_text("$0.0125")
        await expect(usage.locator('[data-usage="Records"]')).to_have_text("2")

        history = page.locator("#run-history")
        await expect(history.locator("tbody tr")).to_have_count(3)
        await expect(history.locator('tr[data-version="2"]')).to_contain_text("final")
        # By default: the latest version against the one before it.
        diff = page.locator("#state-diff")
        await expect(diff.locator("h3")).to_have_text("Changes from version 2 to version 3")
        await expect(diff.locator("li")).to_have_count(1)
        await expect(diff.locator('li[data-path="done"]')).to_have_attribute("data-kind", "added")

        # Two versions chosen: changed, added and removed keys, nested paths.
        await page.get_by_label("From version", exact=True).select_option("1")
        await page.get_by_label("To version", exact=True).select_option("2")
        await expect(diff.locator("h3")).to_have_text("Changes from version 1 to version 2")
        plan = diff.locator('li[data-path="plan"]')
        await expect(plan).to_have_attribute("data-kind", "changed")
        await expect(plan.locator(".diff-old")).to_have_text('"draft"')
        await expect(plan.locator(".diff-new")).to_have_text('"final"')
        tries = diff.locator('li[data-path="meta.tries"]')
        await expect(tries).to_contain_text("meta.tries: 1 → 2")
        await expect(diff.locator('li[data-path="meta.model"]')).to_have_attribute(
            "data-kind", "added"
        )
        await expect(diff.locator('li[data-path="old"]')).to_contain_text("removed old: was true")
        await expect(diff.locator('li[data-path="meta.tags"]')).to_have_count(0)  # unchanged
        await expect(diff.locator("li")).to_have_count(4)

        # A version and its predecessor with the row's button; version 1 against nothing.
        await history.get_by_role("button", name="Diff with previous (version 1)").click()
        await expect(diff.locator("h3")).to_have_text("Changes from version 0 to version 1")
        await expect(diff.locator("li[data-kind='added']")).to_have_count(3)

        # The usage page sums it by workflow and model.
        await page.get_by_role("link", name="Usage", exact=True).click()
        row = page.locator('#usage-table tr[data-group="ledger/m1"]')
        await expect(row).to_contain_text("200")
        await expect(row).to_contain_text("$0.0125")


async def test_live_output_pane_shows_the_chunks_in_order(
    tide: Tidebase, dashboard: Dashboard
) -> None:
    register(tide)
    page = dashboard.page
    async with working(tide):
        handle = await tide.enqueue("typist")
        await dashboard.open(f"/runs/{handle.id}")
        await expect(page.locator("#app h1 .badge")).to_have_text("waiting")
        state = page.locator("#output-state")
        await expect(state).to_have_text("Following the output live.")
        await expect(page.locator("#output-text")).to_have_text("")
        await dashboard.mark()
        # The server subscribes just after answering: give it a moment.
        await asyncio.sleep(0.3)

        await tide.gates.resolve(handle.id, "go", approved=True)
        output = page.locator("#output-text")
        await expect(output).to_have_attribute("data-chunks", str(len(TOKENS) + 1))
        await expect(output).to_have_text("".join(TOKENS) + '\n{"tokens":20}\n')
        await expect(state).to_contain_text("ended")
        await expect(output).to_have_attribute("data-ended", "true")
        await expect(page.locator("#app h1 .badge")).to_have_text("completed")
        await dashboard.assert_not_reloaded()


async def test_fork_from_a_step_creates_a_run_that_completes(
    tide: Tidebase, dashboard: Dashboard
) -> None:
    executed: list[str] = []
    register(tide, executed)
    page = dashboard.page
    async with working(tide):
        original = await tide.enqueue("pipeline")
        await tide.runs.wait(original.id, timeout=10)
        await dashboard.open(f"/runs/{original.id}")
        await expect(page.locator("#app h1 .badge")).to_have_text("completed")
        await expect(page.locator("#forked-from")).to_have_count(0)
        await dashboard.mark()

        row = page.locator('tr[data-step="summarize"]')
        await row.get_by_role("button", name="Fork from here").click()
        await row.get_by_role("button", name="Fork run").click()
        await expect(page).not_to_have_url(re.compile(str(original.id)))
        await expect(page.locator("#app h1 .badge")).to_have_text("completed")
        link = page.locator("#forked-from")
        await expect(link).to_have_text(str(original.id))
        await expect(page.locator("dl.summary")).to_contain_text("Forked from")
        await dashboard.assert_not_reloaded()

        new_id = page.url.rsplit("/", 1)[1]
        info = await tide.runs.get(new_id)
        assert info.status == "completed"
        assert info.forked_from == original.id
        assert info.output == ["fetch", "summarize", "publish"]
        # "fetch" was copied from the original, the rest executed again.
        assert executed == ["fetch", "summarize", "publish", "summarize", "publish"]

        await link.click()
        await expect(page).to_have_url(re.compile(f"{original.id}$"))
        await expect(page.locator("#forked-from")).to_have_count(0)
