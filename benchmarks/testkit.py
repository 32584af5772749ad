"""The testing kit's headline: a month of an application's life in one test (a 30-day
durable sleep, a gate that times out after 48 h, a daily cron schedule firing 3 times),
run as a user runs it: ``pytest`` in a subprocess, in a project whose conftest loads
``tidebase_async.testing``, on the benchmark's server (``TIDEBASE_TEST_DSN``).

Figures: the whole pytest session's wall time (interpreter start, plugin, template
database, the test) and the test's own duration from pytest's ``--durations`` report,
p50 over ``sessions`` runs. The project is the one the kit's own tests run
(tests/integration/test_testing_kit.py), not a copy.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import msgspec

from benchmarks.common import BenchmarkError, Context, Measurement
from benchmarks.environment import Mode
from benchmarks.report import Figure, Target, percentile
from tests.integration.test_testing_kit import run_user_pytest, write_project

NAME = "testkit"
TEST = "test_headline.py::test_a_month_passes_in_a_test"
# The target for the whole scenario, in real time.
TARGET = Target("<=", 5.0)
_DURATION = re.compile(r"^([0-9.]+)s call\s+test_headline\.py::", re.MULTILINE)


class Params(msgspec.Struct, frozen=True, kw_only=True):
    sessions: int


PARAMS: dict[Mode, Params] = {"quick": Params(sessions=3), "full": Params(sessions=5)}


async def measure(ctx: Context) -> Measurement:
    params = PARAMS[ctx.mode]
    walls: list[float] = []
    calls: list[float] = []
    with tempfile.TemporaryDirectory(prefix="tidebase-testkit-") as tmp:
        root = Path(tmp)
        write_project(root, mark="")
        for _ in range(params.sessions):
            session = run_user_pytest(
                root,
                ctx.admin_dsn,
                "-o",
                "asyncio_mode=auto",
                "-o",
                "asyncio_default_fixture_loop_scope=function",
                "--durations=0",
                "--durations-min=0",
                TEST,
            )
            if (
                session.returncode != 0
                or session.outcomes.get("test_a_month_passes_in_a_test") != "passed"
            ):
                raise BenchmarkError(f"the headline test did not pass:\n{session.output[-3000:]}")
            walls.append(session.wall_s)
            found = _DURATION.search(session.output)
            if found:
                calls.append(float(found.group(1)))
    figures = [
        Figure(
            name=f"pytest session, wall time, p50 (n={params.sessions})",
            value=percentile(walls, 50),
            unit="s",
            target=TARGET,
        ),
        Figure(name="pytest session, wall time, max", value=max(walls), unit="s"),
    ]
    if calls:
        figures.append(
            Figure(name="the test's call phase, p50", value=percentile(calls, 50), unit="s")
        )
    return Measurement(
        figures=figures,
        details={"params": msgspec.to_builtins(params), "walls_s": walls, "calls_s": calls},
    )
