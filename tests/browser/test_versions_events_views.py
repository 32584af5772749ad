"""The dashboard's views of workflow versions and events by key, in a real headless
Chromium, on data made through the real client: a run's version, its wait for an event
("Waiting for event ... (key ...)") and then its event and patch history entries; the
queue page's queued runs per version with a version no live worker has flagged; and the
Events view (stored events, waiting runs) reached from the navigation."""

from __future__ import annotations

import re
from typing import Any

from playwright.async_api import expect

from tests.browser.conftest import Dashboard
from tests.integration.core_support import eventually, working
from tidebase_async import Run, Tidebase


def register(tide: Tidebase) -> None:
    """``waiter`` (version 3) takes patch point ``v3-greeting``, then waits for event
    ``payment`` with key ``input["key"]``; ``report`` exists in version 2 here only."""

    @tide.workflow("waiter", version="3")
    async def waiter(run: Run, input: dict[str, Any]) -> Any:
        if await run.patched("v3-greeting"):
            await run.step("greet", lambda: "hi")
        return await run.wait_for_event("payment", key=input["key"], timeout=3600)

    @tide.workflow("report", version="2")
    async def report_v2(run: Run, input: Any) -> str:
        return "v2"


async def is_waiting(tide: Tidebase, run_id: Any) -> bool:
    return (await tide.runs.status(run_id)) == "waiting"


async def test_run_page_shows_the_version_the_wait_and_then_the_event_and_patch_entries(
    tide: Tidebase, dashboard: Dashboard
) -> None:
    register(tide)
    page = dashboard.page
    async with working(tide):
        handle = await tide.enqueue("waiter", input={"key": "order-7"})
        await eventually(lambda: is_waiting(tide, handle.id), what="the run to wait")
        await dashboard.open(f"/runs/{handle.id}")
        await expect(page.locator("#app h1 .badge")).to_have_text("waiting")
        await expect(page.locator("#run-version")).to_have_text("3")
        waits = page.locator("#run-event-waits")
        await expect(waits).to_contain_text("Waiting for event payment (key order-7)")
        await expect(waits.get_by_role("heading", name="Events by key")).to_be_visible()
        patch = page.locator('tr[data-step="v3-greeting"]')
        await expect(patch).to_contain_text("patch")
        await expect(patch).to_contain_text("(new code)")
        await dashboard.mark()

        # The event arrives: the page follows live, the wait is closed and its history
        # entry is listed with its key.
        await tide.events.send("payment", key="order-7", payload={"paid": 12})
        await expect(page.locator("#app h1 .badge")).to_have_text("completed")
        await expect(waits).not_to_contain_text("Waiting for event")
        closed = waits.locator('tr[data-wait="payment"]')
        await expect(closed.locator(".badge")).to_have_text("received")
        await expect(closed).to_contain_text('{"paid":12}')
        entry = page.locator('tr[data-step="payment"]')
        await expect(entry).to_contain_text("event")
        await expect(entry).to_contain_text("(payment, key order-7)")
        await expect(entry.locator(".badge")).to_have_text("completed")
        await dashboard.assert_not_reloaded()

        # The runs list shows the version beside the workflow.
        await dashboard.go("/runs")
        row = page.locator(f'tr[data-run-id="{handle.id}"]')
        await expect(row).to_contain_text("waiter v3")


async def test_queue_page_lists_queued_runs_per_version_and_flags_one_no_worker_has(
    tide: Tidebase, dsn: str, dashboard: Dashboard
) -> None:
    register(tide)
    page = dashboard.page
    # An older deploy's client: it has report version 1, which no live worker has.
    old = Tidebase(dsn)

    @old.workflow("report", version="1")
    async def report_v1(run: Run, input: Any) -> str:
        return "v1"

    async with old, working(tide):
        await old.enqueue("report")
        # Version 2 has a live worker: its run waits only for its time.
        await tide.enqueue("report", delay=3600)
        await dashboard.open("/queues")
        stuck = page.locator('#queue-versions tr[data-workflow="report"][data-version="1"]')
        await expect(stuck).to_contain_text("no worker has this version")
        await expect(stuck).to_have_class(re.compile("version-stuck"))
        await expect(stuck.locator("td.num").first).to_have_text("1")
        served = page.locator('#queue-versions tr[data-workflow="report"][data-version="2"]')
        await expect(served).to_be_visible()
        await expect(served).not_to_contain_text("no worker")
        await expect(served.locator("td.num").last).to_have_text("1")
        table = page.get_by_role("table", name=re.compile("Queued runs per workflow version"))
        await expect(table).to_be_visible()


async def test_events_view_lists_stored_events_and_waiting_runs(
    tide: Tidebase, dashboard: Dashboard
) -> None:
    register(tide)
    page = dashboard.page
    async with working(tide):
        waiting = await tide.enqueue("waiter", input={"key": "order-8"})
        await eventually(lambda: is_waiting(tide, waiting.id), what="the run to wait")
        stored = await tide.events.send("payment", key="order-99", payload={"amount": 5})
        await dashboard.open("/runs")
        await (
            page.get_by_role("navigation", name="Sections")
            .get_by_role("link", name="Events")
            .click()
        )
        await expect(page.locator("#app h1")).to_have_text("Events")
        await expect(
            page.get_by_role("navigation", name="Sections").get_by_role("link", name="Events")
        ).to_have_attribute("aria-current", "page")
        row = page.locator(f'tr[data-event-id="{stored.id}"]')
        await expect(row).to_contain_text("payment")
        await expect(row).to_contain_text("order-99")
        await expect(row.locator(".badge")).to_have_text("stored")
        await expect(row.locator("time")).to_have_count(2)  # sent, expires
        await expect(row).to_contain_text('{"amount":5}')
        wait = page.locator(f'#event-waits tr[data-run-id="{waiting.id}"]')
        await expect(wait).to_contain_text("order-8")
        await dashboard.mark()

        # Live: the waiting run receives its event and leaves the list; that event is
        # listed as delivered to it.
        await tide.events.send("payment", key="order-8")
        await expect(wait).to_have_count(0)
        await expect(page.locator("#event-waits")).to_contain_text("No run is waiting")
        delivered = page.locator('tr[data-key="order-8"]')
        await expect(delivered.locator(".badge")).to_have_text("delivered")
        await expect(delivered.get_by_role("link", name=str(waiting.id))).to_be_visible()
        await dashboard.assert_not_reloaded()

        # Filters: by key, and by status from the select.
        await page.get_by_label("Key", exact=True).fill("order-99")
        await page.get_by_role("button", name="Apply").click()
        await expect(page.locator("#keyed-events tbody tr")).to_have_count(1)
        await page.get_by_label("Key", exact=True).fill("")
        await page.get_by_label("Status").select_option("delivered")
        await expect(page.locator("#keyed-events tbody tr")).to_have_count(1)
        await expect(page.locator('#keyed-events tr[data-key="order-8"]')).to_be_visible()
        await page.get_by_label("Key", exact=True).fill("nothing-like-this")
        await page.get_by_role("button", name="Apply").click()
        await expect(page.get_by_text("No events match these filters.")).to_be_visible()
