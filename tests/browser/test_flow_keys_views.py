"""The dashboard's views of flow control by key, in a real headless Chromium, on data
made through the real client: the queues list's per-key controls; a queue's page with
its per-key controls, its busiest concurrency keys (running and queued runs, followed
live), its pending debounce run and its active singleton run; and a run's concurrency,
debounce and singleton keys on its page."""

from __future__ import annotations

from typing import Any

import anyio
from playwright.async_api import expect

from tests.browser.conftest import Dashboard
from tests.integration.core_support import eventually, working
from tidebase_async import Debounce, Run, Singleton, Tidebase


def register(tide: Tidebase, release: anyio.Event) -> None:
    """``hold`` (queue ``tenants``) runs until ``release`` is set; ``echo`` returns."""

    @tide.workflow("hold", queue="tenants")
    async def hold(run: Run, input: Any) -> Any:
        await release.wait()
        return input

    @tide.workflow("echo")
    async def echo(run: Run, input: Any) -> Any:
        return input


async def running_in(tide: Tidebase, queue: str) -> int:
    return len((await tide.runs.list(status="running", queue=queue)).items)


async def test_queue_page_shows_per_key_controls_and_the_busiest_keys_live(
    tide: Tidebase, dashboard: Dashboard
) -> None:
    release = anyio.Event()
    register(tide, release)
    page = dashboard.page
    await tide.queues.configure("tenants", per_key_concurrency=1, per_key_rate_per_minute=120)
    # Key acme: 1 running + 2 queued (its cap is 1); globex: 1 running. A singleton run
    # (no key) runs too; a debounced one waits for its window.
    for i in range(3):
        await tide.enqueue("hold", input=i, concurrency_key="acme")
    await tide.enqueue("hold", concurrency_key="globex")
    single = await tide.enqueue("hold", singleton=Singleton(key="nightly"))
    debounced = await tide.enqueue("hold", debounce=Debounce(key="doc-5", window=3600))
    async with working(tide, concurrency=8, poll_interval=0.05):
        try:
            await eventually(lambda: _running_is(tide, 3), what="acme, globex and nightly to run")
            await dashboard.open("/queues")
            row = page.locator('table.queues tr[data-queue="tenants"]')
            await expect(row.locator("td[data-per-key]")).to_have_text("max 1 running, 120 / min")
            await row.get_by_role("link", name="tenants", exact=True).click()

            await expect(page.locator("#app h1")).to_have_text("Queue tenants")
            await expect(page.locator("#per-key-concurrency")).to_have_text("1")
            await expect(page.locator("#per-key-rate")).to_have_text("120")
            keys = page.locator("#queue-keys")
            await expect(keys.get_by_role("heading", name="Busiest keys")).to_be_visible()
            acme = keys.locator('tr[data-key="acme"]')
            await expect(acme.locator('td[data-count="running"]')).to_have_text("1")
            await expect(acme.locator('td[data-count="queued"]')).to_have_text("2")
            await expect(acme).to_have_class("key-at-cap")
            globex = keys.locator('tr[data-key="globex"]')
            await expect(globex.locator('td[data-count="running"]')).to_have_text("1")
            await expect(globex.locator('td[data-count="queued"]')).to_have_text("0")
            # The busiest first.
            await expect(keys.locator("tbody tr")).to_have_count(2)
            await expect(keys.locator("tbody tr").first).to_have_attribute("data-key", "acme")

            deb = page.locator(f'#queue-debounces tr[data-run-id="{debounced.id}"]')
            await expect(deb).to_contain_text("doc-5")
            await expect(deb).to_contain_text("hold")
            sing = page.locator(f'#queue-singletons tr[data-run-id="{single.id}"]')
            await expect(sing).to_contain_text("nightly")
            await expect(sing.locator(".badge")).to_have_text("running")
            await dashboard.mark()

            # Live: three more globex runs queue behind its running one and it becomes
            # the busiest key.
            for i in range(3):
                await tide.enqueue("hold", input=i, concurrency_key="globex")
            await expect(globex.locator('td[data-count="queued"]')).to_have_text("3")
            await expect(keys.locator("tbody tr").first).to_have_attribute("data-key", "globex")
            await dashboard.assert_not_reloaded()
        finally:
            release.set()


async def _running_is(tide: Tidebase, n: int) -> bool:
    return await running_in(tide, "tenants") == n


async def test_run_page_shows_the_runs_keys(tide: Tidebase, dashboard: Dashboard) -> None:
    register(tide, anyio.Event())
    page = dashboard.page
    keyed = await tide.enqueue("echo", input=1, concurrency_key="tenant-42")
    await dashboard.open(f"/runs/{keyed.id}")
    await expect(page.locator("#run-concurrency-key")).to_have_text("tenant-42")
    await expect(page.locator("#run-debounce-key")).to_have_count(0)
    await expect(page.locator("#run-singleton-key")).to_have_count(0)

    debounced = await tide.enqueue("echo", debounce=Debounce(key="doc-1", window=600))
    await dashboard.go(f"/runs/{debounced.id}")
    await expect(page.locator("#run-debounce-key")).to_have_text("doc-1")
    await expect(page.locator("#run-concurrency-key")).to_have_count(0)

    single = await tide.enqueue("echo", singleton=Singleton(key="nightly"))
    await dashboard.go(f"/runs/{single.id}")
    await expect(page.locator("#run-singleton-key")).to_have_text("nightly")
