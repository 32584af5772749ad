"""The testing kit (``tidebase_async.testing``) as a user runs it: a small application
project is written into a temporary directory (workflows on a module-level Tidebase, a
``conftest.py`` loading the plugin, tests using ``tide_env``) and pytest runs it in a
subprocess, under pytest-asyncio's auto and strict modes and under anyio's plugin, with
``-W error`` (an unclosed pool or a task destroyed while pending fails the session).

Outcomes are read by test name from a JUnit XML report; the user project's tests hold
the assertions about the kit's behaviour (time order, retries, deadlines, event waits,
gates, debounce, idleness, replay checks, bad input).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from tidebase_async.testing.databases import DSN_VARIABLE

# -- the user project --------------------------------------------------------------------

APP = """\
# The application under test: workflows declared on its module-level Tidebase.

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from tidebase_async import Retry, Run, Tidebase, WaitTimeout

#: Where the application runs in production; the tests never open it there.
PROD_DSN = "postgresql://app@db.invalid/prod"
tide = Tidebase(PROD_DSN)

#: What workflows saw, in the order they saw it (each test resets them).
woke: list[tuple[str, datetime]] = []
ticks: list[datetime] = []
attempts: list[int] = []


@tide.workflow("remind")
async def remind(run: Run, days: int) -> str:
    started = await run.now()
    await run.sleep("wait", timedelta(days=days))
    return f"{(await run.now() - started).days} days"


@tide.workflow("approve")
async def approve(run: Run, hours: int) -> str:
    decision = await run.gate("ok", prompt="Ship it?", timeout=timedelta(hours=hours))
    return decision.decision


@tide.workflow("nap")
async def nap(run: Run, hours: int) -> str:
    await run.sleep("nap", timedelta(hours=hours))
    woke.append((f"{hours}h", await run.now()))
    return f"{hours}h"


@tide.workflow("tick")
async def tick(run: Run, _: Any) -> str:
    now = await run.now()
    ticks.append(now)
    return now.isoformat()


@tide.workflow("flaky", max_attempts=3, retry=Retry(backoff=3600, max_backoff=7200, jitter=False))
async def flaky(run: Run, _: Any) -> int:
    attempts.append(run.attempt)
    if run.attempt == 1:
        raise RuntimeError("the first attempt fails")
    return run.attempt


@tide.workflow("checkout")
async def checkout(run: Run, order: str) -> str:
    try:
        payment = await run.wait_for_event("payment", key=order, timeout=timedelta(hours=1))
    except WaitTimeout:
        return "unpaid"
    return f"paid {payment['amount']}"


@tide.workflow("reindex")
async def reindex(run: Run, doc: dict[str, str]) -> str:
    return doc["version"]


def write(text: str) -> str:
    return text.upper()


@tide.workflow("publish")
async def publish(run: Run, text: str) -> str:
    draft = await run.step("write", write, text)
    decision = await run.gate("approve", prompt=f"Publish {draft}?")
    if not decision.approved:
        return "rejected"
    await run.sleep("embargo", timedelta(hours=1))
    return f"published {draft}"
"""


CONFTEST = """\
from __future__ import annotations

import pytest

import app

pytest_plugins = ["tidebase_async.testing"]


@pytest.fixture(autouse=True)
def fresh_records() -> None:
    app.woke.clear()
    app.ticks.clear()
    app.attempts.clear()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
"""


HEADLINE_TESTS = """\
# A month of an application's life in one test: a 30-day sleep, a gate that times
# out after 48 h, a daily cron schedule.

from __future__ import annotations

from datetime import datetime, time, timedelta

import app


def nine_oclock_after(moment: datetime) -> datetime:
    nine = datetime.combine(moment.date(), time(9), tzinfo=moment.tzinfo)
    return nine if nine > moment else nine + timedelta(days=1)


async def test_a_month_passes_in_a_test(tide_env):
    tide = await tide_env.client(app.tide)
    start = await tide_env.now()
    reminder = await tide.enqueue("remind", input=30)
    approval = await tide.enqueue("approve", input=48)
    await tide.schedules.set("daily", workflow="tick", cron="0 9 * * *")
    await tide_env.run_until_idle()
    assert (await tide.runs.get(reminder.id)).status == "waiting"
    assert (await tide.runs.get(approval.id)).status == "waiting"

    await tide_env.advance(timedelta(days=3))
    gated = await tide.runs.get(approval.id)
    assert (gated.status, gated.output) == ("completed", "expired"), gated
    expired_at = gated.gates[0].resolved_at
    assert timedelta(hours=48) <= expired_at - start < timedelta(hours=48, minutes=1), expired_at
    first = nine_oclock_after(start)
    due = [first + timedelta(days=d) for d in range(3)]
    assert len(app.ticks) == 3, app.ticks
    for seen, tick in zip(app.ticks, due):
        assert tick <= seen < tick + timedelta(minutes=1), (app.ticks, due)
    assert (await tide.runs.get(reminder.id)).status == "waiting"

    await tide.schedules.delete("daily")
    await tide_env.advance(timedelta(days=27))
    reminded = await tide.runs.get(reminder.id)
    assert (reminded.status, reminded.output) == ("completed", "30 days"), reminded
    assert len(app.ticks) == 3
    assert await tide_env.now() - start >= timedelta(days=30)
"""


KIT_TESTS = """\
# The testing kit's behaviour, as an application's tests use it.

from __future__ import annotations

from datetime import timedelta

import pytest

import app
from tidebase_async import ConfigurationError, Debounce, Run, Tidebase
from tidebase_async.testing import IdleTimeout, ReplayIncompatible, StepView

pytestmark = []  # MODE


async def status(tide, handle):
    return (await tide.runs.get(handle.id)).status


async def test_timers_fire_in_time_order_within_one_advance(tide_env):
    tide = await tide_env.client(app.tide)
    start = await tide_env.now()
    handles = [await tide.enqueue("nap", input=h) for h in (3, 1, 2)]
    await tide_env.run_until_idle()
    assert app.woke == []
    await tide_env.advance(timedelta(hours=4))
    assert [name for name, _ in app.woke] == ["1h", "2h", "3h"], app.woke
    for hours, (_, at) in zip((1, 2, 3), app.woke):
        due = start + timedelta(hours=hours)
        assert due <= at < due + timedelta(minutes=1), (due, at)
    for handle in handles:
        assert await status(tide, handle) == "completed"


async def test_retry_backoff_fires_when_the_clock_reaches_it(tide_env):
    tide = await tide_env.client(app.tide)
    handle = await tide.enqueue("flaky", input=None)
    await tide_env.run_until_idle()
    assert app.attempts == [1]
    assert await status(tide, handle) == "queued"
    await tide_env.advance(timedelta(minutes=30))
    assert app.attempts == [1]
    await tide_env.advance(timedelta(minutes=31))
    info = await tide.runs.get(handle.id)
    assert (info.status, info.output, app.attempts) == ("completed", 2, [1, 2]), info


async def test_deadline_cancels_a_run_when_the_clock_passes_it(tide_env):
    tide = await tide_env.client(app.tide)
    deadline = await tide_env.now() + timedelta(hours=1)
    doomed = await tide.enqueue("approve", input=100, deadline=deadline)
    await tide_env.run_until_idle()
    assert await status(tide, doomed) == "waiting"
    await tide_env.advance(timedelta(minutes=59))
    assert await status(tide, doomed) == "waiting"
    await tide_env.advance(timedelta(minutes=2))
    info = await tide.runs.get(doomed.id)
    assert (info.status, info.cancel_reason) == ("cancelled", "deadline"), info


async def test_event_wait_times_out_unless_the_event_comes_first(tide_env):
    tide = await tide_env.client(app.tide)
    unpaid = await tide.enqueue("checkout", input="order-1")
    paid = await tide.enqueue("checkout", input="order-2")
    await tide_env.run_until_idle()
    sent = await tide_env.send_event("payment", key="order-2", payload={"amount": 42})
    assert [str(r) for r in sent.received_by] == [str(paid.id)]
    await tide_env.run_until_idle()
    assert (await tide.runs.get(paid.id)).output == "paid 42"
    assert await status(tide, unpaid) == "waiting"
    await tide_env.advance(timedelta(hours=2))
    info = await tide.runs.get(unpaid.id)
    assert (info.status, info.output) == ("completed", "unpaid"), info


async def test_a_gate_resolved_by_resolve_gate(tide_env):
    tide = await tide_env.client(app.tide)
    yes = await tide.enqueue("approve", input=48)
    no = await tide.enqueue("approve", input=48)
    await tide_env.run_until_idle()
    gate = await tide_env.resolve_gate(yes.id, "ok")
    assert (gate.status, gate.actor) == ("approved", "test")
    await tide_env.resolve_gate(no.id, "ok", approved=False, actor="alice")
    await tide_env.run_until_idle()
    assert (await tide.runs.get(yes.id)).output == "approved"
    assert (await tide.runs.get(no.id)).output == "rejected"


async def test_debounce_window_passes_with_the_clock(tide_env):
    tide = await tide_env.client(app.tide)
    debounce = Debounce(key="doc-1", window=timedelta(minutes=5))
    handles = [
        await tide.enqueue("reindex", input={"version": v}, debounce=debounce)
        for v in ("v1", "v2", "v3")
    ]
    assert len({h.id for h in handles}) == 1
    await tide_env.run_until_idle()
    assert await status(tide, handles[0]) == "queued"
    await tide_env.advance(timedelta(minutes=4))
    assert await status(tide, handles[0]) == "queued"
    await tide_env.advance(timedelta(minutes=2))
    info = await tide.runs.get(handles[0].id)
    assert (info.status, info.output) == ("completed", "v3"), info


async def test_run_until_idle_leaves_waiting_runs_waiting(tide_env):
    tide = await tide_env.client(app.tide)
    waiting = await tide.enqueue("approve", input=1)
    done = await tide.enqueue("reindex", input={"version": "v1"})
    before = await tide_env.now()
    await tide_env.run_until_idle(timeout=timedelta(seconds=10))
    assert await status(tide, waiting) == "waiting"
    assert await status(tide, done) == "completed"
    assert await tide_env.now() - before < timedelta(minutes=1)


async def test_run_until_idle_names_a_run_nobody_can_execute(tide_env):
    tide = await tide_env.client(app.tide)
    orphan = await tide.enqueue("not-registered", input=None, version="2")
    with pytest.raises(IdleTimeout) as caught:
        await tide_env.run_until_idle(timeout=0.5)
    assert str(orphan.id) in str(caught.value)
    assert [(u.kind, u.id, u.workflow) for u in caught.value.unsettled] == [
        ("run", str(orphan.id), "not-registered")
    ]
    assert await status(tide, orphan) == "queued"


async def test_a_run_of_an_unregistered_workflow_fails_once_its_retries_are_due(tide_env):
    tide = await tide_env.client(app.tide)
    typo = await tide.enqueue("remnid", input=1)
    await tide_env.run_until_idle()
    await tide_env.advance(timedelta(minutes=5))
    info = await tide.runs.get(typo.id)
    outcome = (info.status, info.error["type"], info.attempt)
    assert outcome == ("failed", "WorkflowNotFound", 3), info


seen_dsns = []


async def test_module_tidebase_opens_on_this_tests_database(tide_env):
    assert app.tide.dsn == app.PROD_DSN
    tide = await tide_env.client(app.tide)
    assert tide is app.tide and tide.dsn == tide_env.dsn
    assert await tide_env.client(app.tide) is tide
    seen_dsns.append(tide_env.dsn)
    await tide.enqueue("reindex", input={"version": "first"})
    await tide_env.run_until_idle()


async def test_module_tidebase_opens_again_in_the_next_test(tide_env):
    assert app.tide.dsn == app.PROD_DSN, "the previous test's database was not given back"
    tide = await tide_env.client(app.tide)
    assert tide.dsn == tide_env.dsn and tide_env.dsn not in seen_dsns, seen_dsns
    assert len(seen_dsns) == 1
    assert (await tide.runs.list()).items == []
    handle = await tide.enqueue("reindex", input={"version": "second"})
    await tide_env.run_until_idle()
    assert (await tide.runs.get(handle.id)).output == "second"


async def test_steps_and_step_names(tide_env):
    tide = await tide_env.client(app.tide)
    handle = await tide.enqueue("publish", input="draft")
    await tide_env.run_until_idle()
    assert await tide_env.steps(handle.id) == [
        StepView(name="write", kind="step", status="completed", output="DRAFT")
    ]
    await tide_env.resolve_gate(handle.id, "approve")
    await tide_env.run_until_idle()
    assert await tide_env.step_names(handle.id) == ["write", "approve", "embargo"]
    kinds = [(s.kind, s.status) for s in await tide_env.steps(handle.id)]
    assert kinds == [("step", "completed"), ("gate", "completed"), ("sleep", "completed")]
    await tide_env.advance(timedelta(hours=1))
    info = await tide.runs.get(handle.id)
    assert (info.status, info.output) == ("completed", "published DRAFT"), info


async def test_replay_compatibility(tide_env):
    tide = await tide_env.client(app.tide)
    handle = await tide.enqueue("publish", input="draft")
    await tide_env.run_until_idle()
    await tide_env.assert_replay_compatible(handle.id)
    await tide_env.assert_replay_compatible()

    renamed = Tidebase()

    @renamed.workflow("publish")
    async def publish(run: Run, text: str) -> str:
        draft = await run.step("compose", app.write, text)
        await run.gate("approve")
        return draft

    await tide_env.client(renamed)
    with pytest.raises(ReplayIncompatible) as caught:
        await tide_env.assert_replay_compatible(handle.id, tide=renamed)
    assert isinstance(caught.value, AssertionError)
    message = str(caught.value)
    assert str(handle.id) in message and "'write'" in message and "'compose'" in message
    assert [str(c.run_id) for c in caught.value.runs] == [str(handle.id)]
    with pytest.raises(ReplayIncompatible):
        await tide_env.assert_replay_compatible(tide=renamed)
    await tide_env.assert_replay_compatible(handle.id, tide=app.tide)


@pytest.mark.parametrize("by", [timedelta(seconds=-1), 3600, None])
async def test_advance_refuses_what_is_not_a_duration_forward(tide_env, by):
    await tide_env.client(app.tide)
    with pytest.raises(ConfigurationError, match="advance needs a timedelta >= 0"):
        await tide_env.advance(by)


@pytest.mark.parametrize("timeout", [0, -1, timedelta(0)])
async def test_timeouts_must_be_positive(tide_env, timeout):
    await tide_env.client(app.tide)
    with pytest.raises(ConfigurationError, match="timeout must be >"):
        await tide_env.run_until_idle(timeout=timeout)
    with pytest.raises(ConfigurationError, match="timeout must be >"):
        await tide_env.advance(timedelta(hours=1), timeout=timeout)


async def test_helpers_need_a_client_first(tide_env):
    calls = [
        tide_env.now(),
        tide_env.run_until_idle(),
        tide_env.advance(timedelta(hours=1)),
        tide_env.resolve_gate("00000000-0000-0000-0000-000000000000", "ok"),
        tide_env.send_event("payment", key="k"),
        tide_env.steps("00000000-0000-0000-0000-000000000000"),
        tide_env.step_names("00000000-0000-0000-0000-000000000000"),
        tide_env.assert_replay_compatible(),
    ]
    for call in calls:
        with pytest.raises(ConfigurationError, match="open a client first"):
            await call
"""


# Strict mode and anyio run the same tests, each marked; this subset covers every kind
# of wait, idleness, the reused module-level Tidebase, replay and bad input.
MODE_SUBSET = (
    "order or backoff or deadline or event_wait or resolve_gate or debounce or nobody "
    "or module_tidebase or replay or helpers"
)

KIT_TEST_NAMES = [
    "test_timers_fire_in_time_order_within_one_advance",
    "test_retry_backoff_fires_when_the_clock_reaches_it",
    "test_deadline_cancels_a_run_when_the_clock_passes_it",
    "test_event_wait_times_out_unless_the_event_comes_first",
    "test_a_gate_resolved_by_resolve_gate",
    "test_debounce_window_passes_with_the_clock",
    "test_run_until_idle_leaves_waiting_runs_waiting",
    "test_run_until_idle_names_a_run_nobody_can_execute",
    "test_a_run_of_an_unregistered_workflow_fails_once_its_retries_are_due",
    "test_module_tidebase_opens_on_this_tests_database",
    "test_module_tidebase_opens_again_in_the_next_test",
    "test_steps_and_step_names",
    "test_replay_compatibility",
    "test_advance_refuses_what_is_not_a_duration_forward[by0]",
    "test_advance_refuses_what_is_not_a_duration_forward[3600]",
    "test_advance_refuses_what_is_not_a_duration_forward[None]",
    "test_timeouts_must_be_positive[0]",
    "test_timeouts_must_be_positive[-1]",
    "test_timeouts_must_be_positive[timeout2]",
    "test_helpers_need_a_client_first",
]
SUBSET_NAMES = [n for n in KIT_TEST_NAMES if any(word in n for word in MODE_SUBSET.split(" or "))]

ASYNCIO_INI = [
    "-o",
    "asyncio_default_fixture_loop_scope=function",
    "-o",
    "asyncio_default_test_loop_scope=function",
]

#: Signs of a resource left open or a task left running, wherever they are printed.
LEAKS = re.compile(r"Task was destroyed|[Uu]nclosed|never awaited|ResourceWarning")


@dataclass
class Session:
    returncode: int
    output: str
    outcomes: dict[str, str]
    wall_s: float


def write_project(root: Path, *, mark: str) -> None:
    """The user project, its behaviour tests marked with ``mark`` (module-level)."""
    (root / "pytest.ini").write_text("[pytest]\n")
    (root / "app.py").write_text(APP)
    (root / "conftest.py").write_text(CONFTEST)
    (root / "test_headline.py").write_text(HEADLINE_TESTS)
    (root / "test_kit.py").write_text(
        KIT_TESTS.replace("pytestmark = []  # MODE", f"pytestmark = [{mark}]")
    )


def run_user_pytest(root: Path, server_dsn: str, *args: str) -> Session:
    """Run pytest in the user project as its developer would, on ``server_dsn``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PYTEST_") and k != "TIDEBASE_DATABASE_URL"
    }
    env[DSN_VARIABLE] = server_dsn
    report = root / "report.xml"
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-W", "error"]
    command += ["-rA", f"--junitxml={report}", *args]
    started = time.perf_counter()
    done = subprocess.run(
        command, cwd=root, env=env, capture_output=True, text=True, timeout=55, check=False
    )
    wall_s = time.perf_counter() - started
    output = done.stdout + done.stderr
    outcomes = read_outcomes(report) if report.exists() else {}
    return Session(done.returncode, output, outcomes, wall_s)


def read_outcomes(report: Path) -> dict[str, str]:
    """Each test's outcome by name: passed, failed, error (setup or teardown), skipped."""
    outcomes: dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = case.get("name", "")
        tags = {child.tag for child in case}
        if "error" in tags:
            outcomes[name] = "error"
        elif "failure" in tags:
            outcomes[name] = "failed"
        elif "skipped" in tags:
            outcomes[name] = "skipped"
        else:
            outcomes[name] = "passed"
    return outcomes


def assert_all_passed(session: Session, names: list[str]) -> None:
    assert session.outcomes == dict.fromkeys(names, "passed"), session.output
    assert session.returncode == 0, session.output
    summary = session.output.strip().splitlines()[-1]
    assert re.search(rf"\b{len(names)} passed\b", summary), summary
    assert not re.search(r"failed|error|warning", summary), summary
    assert not LEAKS.search(session.output), session.output


# -- the sessions ------------------------------------------------------------------------


def test_headline_a_month_of_timers_in_one_test(tmp_path: Path, server_dsn: str) -> None:
    """A 30-day sleep, a gate timing out after 48 h and a daily schedule firing three
    times (each tick's ``run.now()`` at its tick, in order), in one user test."""
    write_project(tmp_path, mark="")
    session = run_user_pytest(
        tmp_path, server_dsn, *ASYNCIO_INI, "-o", "asyncio_mode=auto", "test_headline.py"
    )
    print(f"headline scenario: pytest session of one test took {session.wall_s:.2f}s wall")
    assert_all_passed(session, ["test_a_month_passes_in_a_test"])


def test_kit_under_pytest_asyncio_auto_mode(tmp_path: Path, server_dsn: str) -> None:
    write_project(tmp_path, mark="")
    session = run_user_pytest(
        tmp_path, server_dsn, *ASYNCIO_INI, "-o", "asyncio_mode=auto", "test_kit.py"
    )
    assert_all_passed(session, KIT_TEST_NAMES)


def test_kit_under_pytest_asyncio_strict_mode(tmp_path: Path, server_dsn: str) -> None:
    write_project(tmp_path, mark="pytest.mark.asyncio")
    session = run_user_pytest(
        tmp_path,
        server_dsn,
        *ASYNCIO_INI,
        "-o",
        "asyncio_mode=strict",
        "-k",
        MODE_SUBSET,
        "test_kit.py",
    )
    assert "mode=Mode.STRICT" in session.output, session.output
    assert_all_passed(session, SUBSET_NAMES)


def test_kit_under_anyio_plugin(tmp_path: Path, server_dsn: str) -> None:
    """anyio's plugin alone (pytest-asyncio disabled), tests marked anyio, with the
    project's ``anyio_backend`` fixture."""
    write_project(tmp_path, mark="pytest.mark.anyio")
    session = run_user_pytest(
        tmp_path, server_dsn, "-p", "no:asyncio", "-k", MODE_SUBSET, "test_kit.py"
    )
    assert "asyncio: mode" not in session.output, session.output
    assert_all_passed(session, SUBSET_NAMES)
