"""The dashboard in a real headless Chromium: live runs list, gates approved with the
button, failed runs with their failing step, clear messages for bad input, the API-key
login, and the queue and schedule controls. See conftest.py for the browser."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from playwright.async_api import expect

from tests.browser.conftest import Dashboard
from tests.integration.core_support import FAST, working
from tidebase_async import Retry, Run, RunFailed, Tidebase

API_KEY = "browser-test-key-5e0c1f9a27d4"


class Kaboom(Exception):
    pass


def register(tide: Tidebase) -> None:
    """The workflows the tests run."""

    @tide.workflow("greet")
    async def greet(run: Run, input: Any) -> dict[str, str]:
        name = await run.step("name", lambda: (input or {}).get("name", "world"))
        return {"greeting": f"hello {name}"}

    @tide.workflow("approval")
    async def approval(run: Run, input: Any) -> dict[str, bool]:
        await run.step("draft", lambda: "draft text")
        decision = await run.gate("approve-send", prompt="Send the report?", data={"to": "ops"})
        return {"sent": decision.approved}

    def explode() -> None:
        raise Kaboom("the sources are unreachable")

    @tide.workflow("boom", max_attempts=1, retry=FAST)
    async def boom(run: Run, input: Any) -> None:
        await run.step("prepare", lambda: 1)
        await run.step("explode", explode, retry=Retry(attempts=1))


async def test_enqueued_run_appears_live_without_reload(
    tide: Tidebase, dashboard: Dashboard
) -> None:
    register(tide)
    page = dashboard.page
    async with working(tide):
        await dashboard.open("/runs")
        await expect(page.get_by_text("No runs yet.")).to_be_visible()
        await expect(page.locator("#live")).to_have_text(re.compile("Live"))
        await dashboard.mark()

        handle = await tide.enqueue("greet", input={"name": "ada"}, dedupe_key="greet-ada")
        row = page.locator(f'tr[data-run-id="{handle.id}"]')
        # Well before the 5 s poll floor: the /events stream brought it.
        await expect(row).to_be_visible(timeout=4_000)
        await expect(row.locator(".badge")).to_have_text("completed")
        await dashboard.assert_not_reloaded()

        # Search: a dedupe key filters, a run id opens the run. Applying renders the
        # page anew (from the hash change, a moment later): wait for the old form to
        # go, or the next fill could land in it and be replaced.
        async def search(text: str) -> None:
            box = page.get_by_label("Search")
            old = await box.element_handle()
            await box.fill(text)
            await page.get_by_role("button", name="Apply").click()
            await old.wait_for_element_state("hidden")

        await search("greet-ada")
        await expect(row).to_be_visible()
        await search("nothing-has-this-key")
        await expect(page.get_by_text("No runs match these filters.")).to_be_visible()
        await page.get_by_label("Search").fill(str(handle.id))
        await page.get_by_role("button", name="Apply").click()
        await expect(page.locator("#app h1")).to_contain_text("greet")
        await expect(page.locator("#run-data")).to_contain_text("hello ada")
        await dashboard.assert_not_reloaded()


async def test_gate_is_approved_with_the_button_and_the_run_completes(
    tide: Tidebase, dashboard: Dashboard
) -> None:
    register(tide)
    page = dashboard.page
    async with working(tide):
        handle = await tide.enqueue("approval")
        await dashboard.open(f"/runs/{handle.id}")
        gate = page.locator('article[data-gate="approve-send"]')
        await expect(gate).to_contain_text("Send the report?")
        await expect(page.locator("#app h1 .badge")).to_have_text("waiting")
        await dashboard.mark()

        await page.get_by_label("Resolve as").fill("alice")
        await gate.get_by_role("button", name="Approve").click()
        await expect(page.locator("#app h1 .badge")).to_have_text("completed")
        await expect(page.locator("#run-data")).to_contain_text('"sent": true')
        await expect(page.locator("#run-gates")).to_contain_text("alice")
        await expect(page.locator("#run-events li[data-type='run.completed']")).to_have_count(1)
        await dashboard.assert_not_reloaded()

        info = await tide.runs.get(handle.id)
        assert info.status == "completed"
        assert [(g.status, g.actor) for g in info.gates] == [("approved", "alice")]


async def test_reject_and_cancel_buttons(tide: Tidebase, dashboard: Dashboard) -> None:
    register(tide)
    page = dashboard.page
    async with working(tide):
        rejected = await tide.enqueue("approval")
        await dashboard.open(f"/runs/{rejected.id}")
        await page.get_by_role("button", name="Reject").click()
        await expect(page.locator("#app h1 .badge")).to_have_text("completed")
        await expect(page.locator("#run-data")).to_contain_text('"sent": false')

        cancelled = await tide.enqueue("approval")
        await dashboard.go(f"/runs/{cancelled.id}")
        await expect(page.locator("#app h1 .badge")).to_have_text("waiting")
        await page.get_by_role("button", name="Cancel run…").click()
        await page.get_by_role("button", name="Yes, cancel it").click()
        await expect(page.locator("#app h1 .badge")).to_have_text("cancelled")
        assert (await tide.runs.get(cancelled.id)).status == "cancelled"


async def test_failed_run_shows_its_error_and_the_failing_step(
    tide: Tidebase, dashboard: Dashboard
) -> None:
    register(tide)
    page = dashboard.page
    async with working(tide):
        handle = await tide.enqueue("boom")
        with pytest.raises(RunFailed):
            await tide.runs.wait(handle.id, timeout=10)
        await dashboard.open(f"/runs/{handle.id}")
        await expect(page.locator("#app h1 .badge")).to_have_text("failed")
        await expect(page.locator("#run-error")).to_contain_text("the sources are unreachable")
        await expect(page.locator("#run-error")).to_contain_text("Kaboom")
        step = page.locator('tr[data-step="explode"]')
        await expect(step).to_have_class(re.compile("step-failed"))
        await expect(step.locator(".badge")).to_have_text("failed")
        await expect(page.locator("#run-steps")).to_contain_text('Step "explode" failed')
        await expect(page.locator('tr[data-step="prepare"] .badge')).to_have_text("completed")

        # Retry: it runs again (and fails again), the event log keeps following.
        await page.get_by_role("button", name="Retry run").click()
        await expect(page.locator("#run-flash")).to_contain_text("queued again")
        await expect(page.locator("#run-events li[data-type='run.failed']")).to_have_count(2)
        await expect(page.locator("#app h1 .badge")).to_have_text("failed")

        # The list shows it failed, and the status filter finds it.
        await dashboard.go("/runs?status=failed")
        await expect(page.locator(f'tr[data-run-id="{handle.id}"] .badge')).to_have_text("failed")


async def test_bad_input_shows_clear_messages(tide: Tidebase, dashboard: Dashboard) -> None:
    page = dashboard.page
    missing = uuid.uuid4()
    await dashboard.open(f"/runs/{missing}")
    await expect(page.locator("#app h1")).to_have_text("Run not found")
    await expect(page.get_by_role("alert")).to_contain_text(f"no run with id {missing}")

    await dashboard.go("/runs/not-a-run-id")
    await expect(page.locator("#app h1")).to_have_text("Not a run id")
    await expect(page.get_by_role("alert")).to_contain_text("not-a-run-id")

    await dashboard.go("/runs?status=bogus")
    await expect(page.get_by_role("alert")).to_contain_text("unknown run status 'bogus'")
    await expect(page.get_by_label("Status")).to_be_visible()  # the filters stay usable

    await dashboard.go("/runs?cursor=garbage")
    await expect(page.get_by_role("alert")).to_contain_text("invalid cursor")

    await dashboard.go("/nowhere")
    await expect(page.locator("#app h1")).to_have_text("Page not found")
    assert "Traceback" not in await page.content()


async def test_api_key_login_prompt_and_the_key_stays_out_of_the_page(
    tide: Tidebase, dashboard: Dashboard
) -> None:
    register(tide)
    tide.api_key = API_KEY
    page = dashboard.page
    async with working(tide):
        first = await tide.enqueue("greet")
        await tide.runs.wait(first.id, timeout=10)
        await dashboard.open("/runs")
        key_field = page.get_by_label("API key", exact=True)
        await expect(key_field).to_be_visible()
        await expect(page.locator("#app")).to_be_hidden()

        await key_field.fill("wrong-key")
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_role("alert")).to_contain_text("refused")

        await key_field.fill(API_KEY)
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.locator(f'tr[data-run-id="{first.id}"]')).to_be_visible()
        await expect(page.locator("#live")).to_have_text(re.compile("Live"))

        # Live updates work with the key too (the stream is read with fetch + header).
        second = await tide.enqueue("greet")
        await expect(page.locator(f'tr[data-run-id="{second.id}"]')).to_be_visible(timeout=4_000)

        assert API_KEY not in await page.content()
        assert API_KEY not in page.url
        assert await page.evaluate("() => sessionStorage.getItem('tidebase.apiKey')") == API_KEY
        assert await page.evaluate("() => JSON.stringify(localStorage)") == "{}"
        assert await page.context.cookies() == []

        # Forgetting the key brings the prompt back.
        await page.get_by_role("button", name="Forget API key").click()
        await expect(key_field).to_be_visible()
        assert await page.evaluate("() => sessionStorage.getItem('tidebase.apiKey')") is None


async def test_queue_pause_and_resume_buttons(tide: Tidebase, dashboard: Dashboard) -> None:
    register(tide)
    page = dashboard.page
    handle = await tide.enqueue("greet")  # no worker: it stays queued
    await dashboard.open("/queues")
    row = page.locator('tr[data-queue="default"]')
    await expect(row).to_contain_text("active")
    queued = page.get_by_role("link", name="1 queued runs in default")
    await expect(queued).to_be_visible()

    await page.get_by_role("button", name="Pause queue default").click()
    await expect(row.locator(".badge")).to_have_text("paused")
    assert (await tide.queues.get("default")).paused

    await page.get_by_role("button", name="Resume queue default").click()
    await expect(row.locator(".badge")).to_have_text("active")
    assert not (await tide.queues.get("default")).paused

    await queued.click()
    await expect(page.locator(f'tr[data-run-id="{handle.id}"]')).to_be_visible()


async def test_schedule_shows_next_fire_and_pauses(tide: Tidebase, dashboard: Dashboard) -> None:
    register(tide)
    await tide.schedules.set("nightly", cron="0 3 * * *", workflow="greet", timezone="Europe/Paris")
    page = dashboard.page
    await dashboard.open("/schedules")
    row = page.locator('tr[data-schedule="nightly"]')
    await expect(row).to_contain_text("0 3 * * *")
    await expect(row).to_contain_text("Europe/Paris")
    await expect(row.locator("time")).to_have_count(1)  # the next fire time

    await page.get_by_role("button", name="Pause schedule nightly").click()
    await expect(row.locator(".badge")).to_have_text("paused")
    assert not await _enabled(tide, "nightly")
    await page.get_by_role("button", name="Resume schedule nightly").click()
    await expect(row.locator(".badge")).to_have_text("active")
    assert await _enabled(tide, "nightly")


async def _enabled(tide: Tidebase, name: str) -> bool:
    return next(s for s in await tide.schedules.list() if s.name == name).enabled
