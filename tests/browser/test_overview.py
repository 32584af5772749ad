"""The dashboard's Overview (the landing page) and Workflow pages in a real headless
Chromium, on the real ``GET /overview`` and ``GET /workflows/{name}``: runs made by a
worker, then moved to known minutes with SQL (and the rollup of the moved minutes
forgotten, so that it is recomputed from the runs), so that the bars, percentiles,
queue depth, failures and usage on the page are figures the test knows."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from playwright.async_api import Locator, Page, expect

from tests.browser.conftest import Dashboard
from tests.integration.core_support import working
from tidebase_async import Run, RunFailed, Tidebase

#: Durations (s) of the five ``report`` runs that complete in the seeded minute: p50 2 s.
DURATIONS = [1.0, 1.5, 2.0, 2.5, 3.0]
#: Their queue wait (s): p50 0.3 s.
WAIT_S = 0.3
#: The histograms behind the percentiles have two buckets per doubling.
PRECISION = math.sqrt(2)


class DiskFull(Exception):
    pass


def register(tide: Tidebase) -> None:
    @tide.workflow("report")
    async def report(run: Run, input: Any) -> Any:
        if input and input.get("model"):
            await run.usage.record(
                provider="acme",
                model=input["model"],
                input_tokens=input["in"],
                output_tokens=input["out"],
                cost_usd=input["cost"],
            )
        return {"ok": True}

    @tide.workflow("flaky")
    async def flaky(run: Run, input: Any) -> Any:
        raise DiskFull("disk full on /var/data")

    @tide.workflow("later", queue="parked")
    async def later(run: Run, input: Any) -> Any:
        return input


@dataclass
class Seed:
    """What the page must show: the seeded minute and the runs in it."""

    minute: datetime
    reports: list[UUID]
    failures: list[UUID]
    #: (UTC day, model) -> (input tokens, output tokens, cost)
    usage: dict[tuple[str, str], tuple[int, int, float]]

    @property
    def minute_ms(self) -> int:
        return int(self.minute.timestamp() * 1000)

    @property
    def bar_id(self) -> str:
        return f"runs-chart-bar-{self.minute_ms}"


async def seed(tide: Tidebase, db: asyncpg.Connection) -> Seed:
    """Five ``report`` runs completed in the minute 10 min ago (durations DURATIONS, 3 of
    them using gpt-4o), two more a day earlier using claude-3, two ``flaky`` runs failed
    5 min before that minute, three ``later`` runs queued 150 s ago on the paused queue
    ``parked``, a nightly schedule of ``report``."""
    register(tide)
    await tide.queues.configure("parked", paused=True)
    await tide.schedules.set("nightly-report", workflow="report", cron="0 3 * * *")
    models: list[tuple[str, int, int, float] | None] = [("gpt-4o", 1000, 200, 0.01)] * 3
    models += [None] * 2 + [("claude-3", 500, 100, 0.02)] * 2
    reports = [
        await tide.enqueue(
            "report", input=m and {"model": m[0], "in": m[1], "out": m[2], "cost": m[3]}
        )
        for m in models
    ]
    failures = [await tide.enqueue("flaky", max_attempts=1) for _ in range(2)]
    parked = [await tide.enqueue("later", input=n) for n in range(3)]
    async with working(tide, concurrency=8, poll_interval=0.05):
        for handle in reports:
            await tide.runs.wait(handle.id, timeout=10)
        for handle in failures:
            with pytest.raises(RunFailed):
                await tide.runs.wait(handle.id, timeout=10)

    now = await db.fetchval("SELECT tidebase.now()")
    minute = now.replace(second=0, microsecond=0) - timedelta(minutes=10)
    usage: dict[tuple[str, str], tuple[int, int, float]] = {}
    for n, (handle, model) in enumerate(zip(reports, models, strict=True)):
        # The claude-3 runs (the last two) ran a day earlier, in the same minute.
        created = minute + timedelta(seconds=1 + n % 5) - timedelta(days=n // 5)
        started = created + timedelta(seconds=WAIT_S)
        finished = started + timedelta(seconds=DURATIONS[n % 5])
        await place(db, handle.id, created, started, finished)
        if model is None:
            continue
        await db.execute(
            "UPDATE tidebase.usage SET recorded_at = $2 WHERE run_id = $1", handle.id, finished
        )
        key = (finished.astimezone(UTC).date().isoformat(), model[0])
        a, b, c = usage.get(key, (0, 0, 0.0))
        usage[key] = (a + model[1], b + model[2], c + model[3])
    for n, handle in enumerate(failures):
        created = minute - timedelta(minutes=5) + timedelta(seconds=10 * (n + 1))
        await place(db, handle.id, created, created, created + timedelta(seconds=1))
    queued_at = now - timedelta(seconds=150)
    for handle in parked:
        await db.execute(
            "UPDATE tidebase.runs SET created_at = $2, run_at = $2, updated_at = $2 WHERE id = $1",
            handle.id,
            queued_at,
        )
    await forget_rollup(db)
    return Seed(
        minute=minute,
        reports=[h.id for h in reports],
        failures=[h.id for h in failures],
        usage=usage,
    )


async def place(
    db: asyncpg.Connection, run_id: UUID, created: datetime, started: datetime, finished: datetime
) -> None:
    await db.execute(
        "UPDATE tidebase.runs SET created_at = $2, run_at = $2, started_at = $3,"
        " finished_at = $4, updated_at = $4 WHERE id = $1",
        run_id,
        created,
        started,
        finished,
    )


async def forget_rollup(db: asyncpg.Connection) -> None:
    """Runs moved into minutes the reconciler had already rolled up: drop the rollup so
    that readers and the next rollup take every minute from the runs again."""
    await db.execute(
        "DELETE FROM tidebase.run_stats; DELETE FROM tidebase.usage_stats;"
        " UPDATE tidebase.stats_progress SET rolled_to = NULL"
    )


async def number(locator: Locator, name: str) -> float:
    value = await locator.get_attribute(name)
    assert value is not None, f"no {name}"
    return float(value)


async def open_overview(dashboard: Dashboard, route: str = "") -> Page:
    await dashboard.open(route)
    page = dashboard.page
    await expect(page.locator("#app h1")).to_have_text("Overview")
    await expect(page.locator("#runs-chart")).to_be_visible()
    return page


async def test_overview_is_the_landing_page_with_the_seeded_figures(
    tide: Tidebase, db: asyncpg.Connection, dashboard: Dashboard
) -> None:
    s = await seed(tide, db)
    page = await open_overview(dashboard)
    nav = page.get_by_role("navigation", name="Sections").get_by_role("link")
    await expect(nav.first).to_have_text("Overview")
    await expect(nav.first).to_have_attribute("aria-current", "page")
    await expect(page.locator("#range")).to_have_value("1h")
    await expect(page.get_by_role("combobox", name="Time range")).to_have_value("1h")

    # The minute with the five completions: its bar is 5 / scale of the plot's height.
    chart = page.locator("#runs-chart")
    await expect(chart).to_have_attribute("role", "img")
    await expect(chart).to_have_attribute(
        "aria-label",
        re.compile(r"^Runs per minute, last hour: \d+ started, 5 completed, 2 failed, 0 cancelled"),
    )
    await expect(chart.locator("title").first).to_contain_text("5 completed, 2 failed")
    bar = page.locator(f"#{s.bar_id}")
    await expect(bar).to_have_attribute("data-completed", "5")
    await expect(bar).to_have_attribute("data-started", "5")
    await expect(bar).to_have_attribute("data-failed", "0")
    await expect(bar.locator("title").first).to_contain_text("5 completed")
    scale = await number(chart, "data-scale-max")
    plot = await number(chart, "data-plot-height")
    assert scale >= 5
    seg = bar.locator('rect.seg[data-key="completed"]')
    assert await number(seg, "height") == pytest.approx(5 / scale * plot, abs=0.01)
    await expect(seg.locator("title")).to_contain_text("5 completed")
    # The hidden table says the same.
    await expect(page.locator("#runs-chart-table")).to_contain_text("5")
    await expect(page.locator("#total-completed")).to_have_text("5")
    await expect(page.locator("#total-failed")).to_have_text("2")

    # Workflows: counts, and the p50 of duration and wait within a histogram bucket.
    report = page.locator('#workflows-table tr[data-workflow="report"]')
    await expect(report.locator('td[data-col="completed"]')).to_have_text("5")
    await expect(report.locator('td[data-col="success"]')).to_have_text("100.0%")
    p50 = await number(report.locator('td[data-col="duration_p50"]'), "data-ms")
    assert 2000 / PRECISION <= p50 <= 2000 * PRECISION, p50
    await expect(report.locator('td[data-col="duration_p50"]')).to_have_text(
        re.compile(r"^\d\.\d\d s$")
    )
    wait = await number(report.locator('td[data-col="wait_p50"]'), "data-ms")
    assert WAIT_S * 1000 / PRECISION <= wait <= WAIT_S * 1000 * PRECISION, wait
    p95 = await number(report.locator('td[data-col="duration_p95"]'), "data-ms")
    assert p50 <= p95 <= 3000 * PRECISION
    flaky = page.locator('#workflows-table tr[data-workflow="flaky"]')
    await expect(flaky.locator('td[data-col="failed"]')).to_have_text("2")
    await expect(flaky.locator('td[data-col="success"]')).to_have_text("0.0%")

    # Queue depth, with the age of the oldest queued run.
    parked = page.locator('#queues-table tr[data-queue="parked"]')
    await expect(parked.locator('td[data-col="queued"]')).to_have_text("3")
    await expect(parked.locator('td[data-col="running"]')).to_have_text("0")
    await expect(parked.locator('td[data-col="oldest"]')).to_have_text(re.compile(r"^2 min"))
    await expect(parked).to_contain_text("paused")
    await expect(parked.locator("svg.hbar")).to_have_attribute(
        "aria-label", "parked: 3 queued, 0 running, 0 waiting"
    )
    await expect(parked.get_by_role("link", name="parked")).to_have_attribute(
        "href", "#/queues/parked"
    )

    # The failing workflow, its latest error and a link to that run.
    failing = page.locator('#failing-table tr[data-workflow="flaky"]')
    await expect(failing.locator('td[data-col="failed"]')).to_have_text("2")
    await expect(failing.locator('td[data-col="error"]')).to_contain_text("disk full on /var/data")
    latest = failing.get_by_role("link", name="Latest failed run of flaky")
    await expect(latest).to_have_attribute("href", f"#/runs/{s.failures[-1]}")

    # Usage of the last hour: gpt-4o only (claude-3's is a day older).
    today = next(k for k in s.usage if k[1] == "gpt-4o")
    row = page.locator(f'#usage-day-table tr[data-day="{today[0]}"][data-model="gpt-4o"]')
    await expect(row.locator('td[data-col="input"]')).to_have_text("3,000")
    await expect(row.locator('td[data-col="output"]')).to_have_text("600")
    await expect(row.locator('td[data-col="cost"]')).to_have_text("$0.03")
    await expect(page.locator('#usage-day-table tr[data-model="claude-3"]')).to_have_count(0)
    await expect(page.locator("#usage-chart")).to_have_attribute(
        "aria-label", re.compile(r"^Cost per day by model, last hour: 3,600 tokens, \$0\.03")
    )

    await latest.click()
    await expect(page).to_have_url(re.compile(f"#/runs/{s.failures[-1]}$"))
    await expect(page.locator("#app h1")).to_contain_text("flaky")


async def test_overview_range_keyboard_and_live_update(
    tide: Tidebase, db: asyncpg.Connection, dashboard: Dashboard
) -> None:
    s = await seed(tide, db)
    page = await open_overview(dashboard, "/overview")
    await dashboard.mark()

    # The keyboard: one tab stop on the newest bar, arrows move, the value is shown.
    newest = page.locator('#runs-chart g.bar[tabindex="0"]')
    await expect(newest).to_have_count(1)
    await newest.focus()
    index = int(await number(page.locator(f"#{s.bar_id}"), "data-index"))
    last = int(await number(newest, "data-index"))
    await page.keyboard.press("End")
    for _ in range(last - index):
        await page.keyboard.press("ArrowLeft")
    focused = await page.evaluate("() => document.activeElement.id")
    assert focused == s.bar_id
    readout = page.locator("#runs-chart-readout")
    await expect(readout).to_contain_text("5 completed, 0 failed, 0 cancelled, 5 started")
    await expect(readout).to_have_attribute("aria-live", "polite")
    await expect(page.locator(f"#{s.bar_id}")).to_have_attribute("tabindex", "0")

    # Live: a run finishing while the page is open adds to the counts, without a reload.
    await expect(page.locator("#total-completed")).to_have_text("5")
    async with working(tide, concurrency=4, poll_interval=0.05):
        handle = await tide.enqueue("report")
        await tide.runs.wait(handle.id, timeout=10)
        await expect(page.locator("#total-completed")).to_have_text("6")
        await expect(
            page.locator('#workflows-table tr[data-workflow="report"] td[data-col="completed"]')
        ).to_have_text("6")
    await dashboard.assert_not_reloaded()

    # The range picker: the hash keeps it, the buckets become hours, usage spans days.
    await page.select_option("#range", "7d")
    await expect(page).to_have_url(re.compile(r"#/overview\?range=7d$"))
    overview = page.locator("#overview")
    await expect(overview).to_have_attribute("data-range", "7d")
    await expect(overview).to_have_attribute("data-bucket-s", "3600")
    await expect(page.locator("#runs-chart")).to_have_attribute(
        "aria-label", re.compile(r"^Runs per hour, last 7 days: 13 started, 8 completed, 2 failed")
    )
    hour = s.minute.replace(minute=0)
    hour_bar = page.locator(f"#runs-chart-bar-{int(hour.timestamp() * 1000)}")
    await expect(hour_bar).to_have_attribute("data-completed", re.compile(r"^[56]$"))
    for (day, model), (tin, tout, cost) in s.usage.items():
        row = page.locator(f'#usage-day-table tr[data-day="{day}"][data-model="{model}"]')
        await expect(row.locator('td[data-col="input"]')).to_have_text(f"{tin:,}")
        await expect(row.locator('td[data-col="output"]')).to_have_text(f"{tout:,}")
        await expect(row.locator('td[data-col="cost"]')).to_have_text(f"${cost:.2f}")
    usage_chart = page.locator("#usage-chart")
    await expect(usage_chart).to_have_attribute("role", "img")
    await expect(usage_chart).to_have_attribute(
        "aria-label", re.compile(r"^Cost per day by model, last 7 days: 4,800 tokens, \$0\.07")
    )
    await expect(page.locator("#usage-chart g.bar")).to_have_count(len({day for day, _ in s.usage}))
    await expect(page.locator(".legend").last).to_contain_text("claude-3")

    # Back to an hour through the URL: the picker follows the hash.
    await dashboard.go("/overview?range=6h")
    await expect(page.locator("#range")).to_have_value("6h")
    await expect(overview).to_have_attribute("data-bucket-s", "60")
    await dashboard.assert_not_reloaded()


async def test_workflow_page(tide: Tidebase, db: asyncpg.Connection, dashboard: Dashboard) -> None:
    s = await seed(tide, db)
    page = await open_overview(dashboard)
    await page.locator("#workflows-table").get_by_role("link", name="report").click()
    await expect(page).to_have_url(re.compile(r"#/workflows/report$"))
    await expect(page.locator("#app h1")).to_have_text("Workflow report")
    await expect(page.locator("#wf-success-rate")).to_have_text("100.0%")
    await expect(page.locator("#wf-completed")).to_have_text("5")
    chart = page.locator("#workflow-chart")
    await expect(chart).to_have_attribute(
        "aria-label", re.compile(r"^Runs of report per minute, last hour: 5 started, 5 completed")
    )
    bar = page.locator(f"#workflow-chart-bar-{s.minute_ms}")
    await expect(bar).to_have_attribute("data-completed", "5")
    version = page.locator('#versions-table tbody tr[data-version=""]')
    await expect(version.locator('td[data-col="completed"]')).to_have_text("5")
    await expect(version.locator('td[data-col="success"]')).to_have_text("100.0%")
    p50 = await number(version.locator('td[data-col="duration_p50"]'), "data-ms")
    assert 2000 / PRECISION <= p50 <= 2000 * PRECISION, p50
    durations = page.locator("#duration-chart")
    await expect(durations).to_have_attribute("role", "img")
    await expect(durations).to_have_attribute(
        "aria-label", re.compile(r"^Duration by version: unversioned p50 \d")
    )
    await expect(page.locator("#workflow-failures")).to_contain_text("No failures")
    schedule = page.locator('#workflow-schedules-table tr[data-schedule="nightly-report"]')
    await expect(schedule).to_contain_text("0 3 * * *")
    await expect(schedule).to_contain_text("active")

    # The failing one: its failures lead to their runs; the range is kept in the hash.
    await dashboard.go("/workflows/flaky?range=24h")
    await expect(page.locator("#app h1")).to_have_text("Workflow flaky")
    await expect(page.locator("#range")).to_have_value("24h")
    await expect(page.locator("#workflow")).to_have_attribute("data-bucket-s", "3600")
    await expect(page.locator("#wf-success-rate")).to_have_text("0.0%")
    await expect(page.locator("#wf-failed")).to_have_text("2")
    rows = page.locator("#failures-table tbody tr")
    await expect(rows).to_have_count(2)
    await expect(rows.first).to_have_attribute("data-run-id", str(s.failures[-1]))
    await expect(rows.first).to_contain_text("disk full on /var/data")
    await page.select_option("#range", "1h")
    await expect(page).to_have_url(re.compile(r"#/workflows/flaky\?range=1h$"))
    await rows.first.get_by_role("link").click()
    await expect(page).to_have_url(re.compile(f"#/runs/{s.failures[-1]}$"))


async def test_unknown_workflow_page_says_so(tide: Tidebase, dashboard: Dashboard) -> None:
    await dashboard.open("/workflows/nothing-here")
    await expect(dashboard.page.locator("#workflow-message")).to_contain_text("nothing-here")
