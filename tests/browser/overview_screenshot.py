"""Write docs/overview.png: the dashboard's Overview over the last 7 days, seeded with a
realistic mix (``scripts/screenshot-overview`` runs this).

Real workflows run through a worker on a scratch database (the test server's, or an
embedded Postgres), then SQL spreads them over the week with a working-day rhythm (the
rollup of the moved minutes forgotten so that it is recomputed); a few runs stay queued
on a paused queue, waiting at a gate and running while the page is shot in Chromium.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import asyncpg
from aiohttp import web
from playwright.async_api import async_playwright, expect

from tests.browser.conftest import CHROMIUM, serve
from tests.integration.core_support import working
from tidebase_async import Run, RunFailed, Tidebase
from tidebase_async.testing.databases import (
    create_copy,
    create_template,
    database_of,
    drop_database,
    session_server,
)

LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
OUT = Path(__file__).resolve().parents[2] / "docs" / "overview.png"

#: workflow -> (runs, median duration s, failure rate, failure message)
MIX: dict[str, tuple[int, float, float, str]] = {
    "ingest-orders": (260, 0.4, 0.01, "ValueError: order 8812 has no line items"),
    "send-invoice": (140, 1.8, 0.03, "SMTPServerDisconnected: Connection unexpectedly closed"),
    "sync-crm": (90, 6.5, 0.12, "HTTPStatusError: CRM API returned 503 Service Unavailable"),
    "agent-triage": (70, 14.0, 0.05, "ModelHTTPError: rate limit exceeded (429)"),
    "nightly-report": (7, 95.0, 0.0, ""),
}
MODELS = [
    ("gpt-4o", 2.5e-6, 1e-5),
    ("claude-sonnet-4", 3e-6, 1.5e-5),
    ("gpt-4o-mini", 1.5e-7, 6e-7),
]


def failure(text: str) -> Exception:
    """``"ValueError: bad"`` as an exception of a class of that name."""
    name, message = text.split(": ", 1)
    cls: type[Exception] = type(name, (Exception,), {})
    return cls(message)


def register(tide: Tidebase, release: anyio.Event) -> None:
    for name in MIX:

        @tide.workflow(name)
        async def work(run: Run, input: Any) -> Any:
            usage = input.get("usage")
            if usage:
                await run.usage.record(provider="llm", **usage)
            if input.get("fail"):
                raise failure(input["fail"])
            return {"ok": True}

    @tide.workflow("export-archive", queue="exports")
    async def export(run: Run, input: Any) -> Any:
        await release.wait()
        return None

    @tide.workflow("approve-refund")
    async def approve(run: Run, input: Any) -> Any:
        return await run.gate("approve", prompt="Refund the order?")

    @tide.workflow("send-newsletter", queue="emails")
    async def newsletter(run: Run, input: Any) -> Any:
        return None


def when(rng: random.Random, now: datetime) -> datetime:
    """A moment of the past week, more of them in working hours and lately."""
    while True:
        back = rng.random() ** 1.6 * 7 * 86400
        at = now - timedelta(seconds=back)
        hour = at.hour + at.minute / 60
        if rng.random() < 0.25 + 0.75 * max(0.0, math.sin((hour - 6) / 14 * math.pi)):
            return at


async def seed(tide: Tidebase, db: asyncpg.Connection, rng: random.Random) -> None:
    now: datetime = await db.fetchval("SELECT tidebase.now()")
    plan: list[tuple[Any, float, float, datetime]] = []
    for name, (n, median_s, fail_rate, message) in MIX.items():
        for i in range(n):
            at = now - timedelta(days=i, hours=now.hour - 2) if name == "nightly-report" else None
            at = at or when(rng, now)
            # sync-crm had a bad afternoon: its failures cluster there.
            bad = name == "sync-crm" and timedelta(hours=26) < now - at < timedelta(hours=29)
            input: dict[str, Any] = {}
            if rng.random() < (0.6 if bad else fail_rate):
                input["fail"] = message
            if name == "agent-triage":
                model, pin, pout = rng.choices(MODELS, weights=[5, 3, 8])[0]
                tin, tout = rng.randint(2_000, 30_000), rng.randint(200, 3_000)
                input["usage"] = {
                    "model": model,
                    "input_tokens": tin,
                    "output_tokens": tout,
                    "cost_usd": round(tin * pin + tout * pout, 6),
                }
            handle = await tide.enqueue(name, input=input, max_attempts=1)
            duration = median_s * math.exp(rng.gauss(0, 0.6))
            wait = 0.05 * math.exp(rng.gauss(0, 1.2))
            plan.append((handle.id, wait, duration, at))
    async with working(tide, concurrency=32, poll_interval=0.05):
        for run_id, *_ in plan:
            with contextlib.suppress(RunFailed):  # the planned failures
                await tide.runs.wait(run_id, timeout=60)
    for run_id, wait, duration, at in plan:
        started = at + timedelta(seconds=wait)
        finished = started + timedelta(seconds=duration)
        if finished > now:
            at, started, finished = (t - (finished - now) for t in (at, started, finished))
        await db.execute(
            "UPDATE tidebase.runs SET created_at = $2, run_at = $2, started_at = $3,"
            " finished_at = $4, updated_at = $4 WHERE id = $1",
            run_id,
            at,
            started,
            finished,
        )
        await db.execute(
            "UPDATE tidebase.usage SET recorded_at = $2 WHERE run_id = $1", run_id, finished
        )
    await db.execute(
        "DELETE FROM tidebase.run_stats; DELETE FROM tidebase.usage_stats;"
        " UPDATE tidebase.stats_progress SET rolled_to = NULL"
    )


async def caught_up(tide: Tidebase) -> None:
    """Roll the week up now (the page reads only the last hour live; the reconciler
    would take its time: a few chunks a tick). Small chunks: a chunk ends at the minute
    of its ``max_runs``-th run, so they skip the quiet stretches."""
    with anyio.fail_after(120):
        while True:
            step = await tide.store.roll_up_stats(lag_s=60.0, max_runs=50)
            if step is None or not step.behind:
                return


async def shoot(dsn: str, out: Path) -> None:
    rng = random.Random(21)
    tide = Tidebase(dsn)
    await tide.open()
    release = anyio.Event()
    register(tide, release)
    db = await asyncpg.connect(dsn)
    runner: web.AppRunner | None = None
    try:
        await seed(tide, db, rng)
        await tide.queues.configure("emails", paused=True)
        for i in range(14):
            await tide.enqueue("send-newsletter", input=i)
        await db.execute(
            "UPDATE tidebase.runs SET created_at = now() - interval '7 minutes',"
            " run_at = now() - interval '7 minutes' WHERE queue = 'emails'"
        )
        for i in range(3):
            await tide.enqueue("approve-refund", input=i)
        exports = [await tide.enqueue("export-archive", input=i) for i in range(4)]
        runner, url = await serve(tide)
        async with working(tide, concurrency=8, poll_interval=0.05):
            await caught_up(tide)
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(
                    executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
                )
                page = await browser.new_page(
                    viewport={"width": 1280, "height": 900}, locale="en-US", color_scheme="light"
                )
                await page.goto(url + "#/overview?range=7d")
                await expect(page.locator("#runs-chart")).to_be_visible(timeout=15_000)
                await expect(page.locator('#queues-table tr[data-queue="exports"]')).to_be_visible()
                await page.wait_for_timeout(500)
                # Down to the usage chart (its table, a row per day and model, is long).
                box = await page.locator("#usage-chart-figure").bounding_box()
                assert box is not None
                await page.screenshot(
                    path=str(out),
                    full_page=True,
                    clip={"x": 0, "y": 0, "width": 1280, "height": box["y"] + box["height"]},
                )
                await browser.close()
            release.set()
            for handle in exports:
                await tide.runs.wait(handle.id, timeout=10)
    finally:
        release.set()
        if runner is not None:
            await runner.cleanup()
        await db.close()
        await tide.close()


async def main(out: Path) -> None:
    with session_server(fallback_dsn=LOCAL_DSN) as server:
        template = await create_template(server)
        try:
            dsn = await create_copy(server, template)
            try:
                await shoot(dsn, out)
            finally:
                await drop_database(server, database_of(dsn))
        finally:
            await drop_database(server, template)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    out: Path = parser.parse_args().out
    out.parent.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(out))
    print(f"wrote {out} ({out.stat().st_size // 1024} KB)")
