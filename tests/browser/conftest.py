"""Fixtures of the browser tests: a real headless Chromium (Debian's ``chromium``,
driven by Playwright through ``executable_path``; Playwright's own browser downloads are
never used) looking at ``tide.http_app()`` served by aiohttp on 127.0.0.1.

Without ``/usr/bin/chromium`` (or ``TIDEBASE_CHROMIUM``) the tests are skipped and say
why; ``.ci/run`` installs it. A failing test leaves a screenshot and the page's console
in ``tests/browser/artifacts/`` and prints their paths.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from playwright.async_api import Browser, ConsoleMessage, Error, Page, async_playwright, expect

from tidebase_async import Tidebase

CHROMIUM = os.environ.get("TIDEBASE_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
#: How long an expectation waits for the page (live updates arrive well within it).
EXPECT_TIMEOUT_MS = 8_000

_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    """One headless Chromium for the whole session (each test gets its own context)."""
    if not os.access(CHROMIUM, os.X_OK):
        # make test installs it (scripts/ensure-chromium): a missing browser is a
        # failure to see, not a reason to pass without testing the dashboard.
        pytest.fail(f"no Chromium at {CHROMIUM}: run scripts/ensure-chromium (make test does)")
    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    async with async_playwright() as pw:
        instance = await pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            # No sandbox as root; no calls home (this machine's network is closed).
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            yield instance
        finally:
            await instance.close()


@dataclass
class Dashboard:
    """A browser tab on the dashboard of a served ``tide``."""

    page: Page
    #: The dashboard's URL: the HTTP API is mounted at /tidebase/.
    url: str
    page_errors: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    async def open(self, route: str = "") -> None:
        """Load the page at ``#<route>`` (``/runs``, ``/runs/<id>``, ...)."""
        await self.page.goto(self.url + (f"#{route}" if route else ""))

    async def go(self, route: str) -> None:
        """Follow ``#<route>`` inside the loaded page (no reload)."""
        await self.page.evaluate("(h) => { location.hash = h; }", route)

    async def mark(self) -> None:
        """Tag the loaded document; ``assert_not_reloaded`` checks the tag is still there."""
        await self.page.evaluate("() => { window.__tidebaseTestMark = 1; }")

    async def assert_not_reloaded(self) -> None:
        assert await self.page.evaluate("() => window.__tidebaseTestMark === 1"), (
            "the page was reloaded"
        )


async def serve(tide: Tidebase) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.add_subapp("/tidebase/", tide.http_app())
    # Open event streams end when the browser goes; do not wait a minute for stragglers.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return runner, f"http://127.0.0.1:{port}/tidebase/"


@pytest.fixture
async def dashboard(
    tide: Tidebase, browser: Browser, request: pytest.FixtureRequest
) -> AsyncIterator[Dashboard]:
    runner, url = await serve(tide)
    # A fixed locale: numbers and amounts are shown with the reader's separators.
    context = await browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
    page = await context.new_page()
    board = Dashboard(page=page, url=url)
    page.on("pageerror", lambda exc: board.page_errors.append(str(exc)))
    page.on("console", lambda msg: _log(board, msg))
    try:
        yield board
        reports = request.node.stash.get(_REPORTS, {})
        if any(r.failed for r in reports.values()):
            await save_failure_artifacts(request.node.name, board)
        else:
            assert not board.page_errors, f"uncaught errors in the page: {board.page_errors}"
    finally:
        await context.close()
        await runner.cleanup()


def _log(board: Dashboard, msg: ConsoleMessage) -> None:
    board.console.append(f"[{msg.type}] {msg.text}")


async def save_failure_artifacts(name: str, board: Dashboard) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    shot = ARTIFACTS / f"{stem}.png"
    log = ARTIFACTS / f"{stem}.console.txt"
    try:
        await board.page.screenshot(path=str(shot), full_page=True)
        print(f"\nscreenshot of the failed test: {shot}")
    except Error as exc:
        print(f"\nno screenshot ({exc})")
    lines = [*board.console, *(f"[pageerror] {e}" for e in board.page_errors)]
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"page console of the failed test: {log}")
