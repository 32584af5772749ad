"""The replay check (``tidebase replay-check``, ``tide.replay_check``): stored histories
replayed against other code without executing or writing anything. A renamed step is
found with its position and both names (exit 1); compatible and patched code pass
(exit 0); an error in the workflow's own code is "could not check", not incompatible;
``--json``, ``--workflow``, ``--since``, ``--limit`` and bad options. The code variants
are in ``tests.integration.replay_app``."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any
from uuid import UUID

import anyio
import anyio.to_thread
import asyncpg
import pytest

from tests.integration import replay_app
from tests.integration.core_support import eventually, status_of, working
from tidebase_async import ConfigurationError, Run, Tidebase
from tidebase_async.cli.main import main

Capture = pytest.CaptureFixture[str]
APP = "tests.integration.replay_app"


async def cli(*argv: str) -> int:
    """``tidebase argv`` in-process, in a thread with its own event loop."""
    return await anyio.to_thread.run_sync(main, list(argv))


async def seed(
    dsn: str, db: asyncpg.Connection, code: Callable[[Tidebase], None]
) -> dict[str, Any]:
    """With ``code``: 3 runs of ``report`` waiting at their gate (history fetch, parse),
    one completed (fetch, parse, gate, store), one completed run of ``other``."""
    tide = Tidebase(dsn)
    code(tide)
    async with tide:
        waiting = [(await tide.enqueue("report")).id for _ in range(3)]
        done = (await tide.enqueue("report")).id
        other = (await tide.enqueue("other")).id
        async with working(tide):
            for rid in [*waiting, done]:
                await eventually(functools.partial(_is, db, rid, "waiting"), what="runs to wait")
            await tide.gates.resolve(done, "approve", approved=True)
            await tide.runs.wait(done, timeout=10)
            await tide.runs.wait(other, timeout=10)
    return {"waiting": waiting, "done": done, "other": other}


async def _is(db: asyncpg.Connection, run_id: UUID, status: str) -> bool:
    return await status_of(db, run_id) == status


async def snapshot(db: asyncpg.Connection) -> tuple[Any, ...]:
    """Everything a write would change."""
    row = await db.fetchrow(
        "SELECT (SELECT count(*) FROM tidebase.runs), "
        "(SELECT max(updated_at) FROM tidebase.runs), "
        "(SELECT sum(event_seq) FROM tidebase.runs), (SELECT sum(attempt) FROM tidebase.runs), "
        "(SELECT count(*) FROM tidebase.steps), (SELECT count(*) FROM tidebase.events), "
        "(SELECT count(*) FROM tidebase.gates), (SELECT count(*) FROM tidebase.state_versions)"
    )
    return tuple(row)


async def test_a_renamed_step_is_found_with_its_position_and_names(
    dsn: str, db: asyncpg.Connection, capsys: Capture
) -> None:
    runs = await seed(dsn, db, replay_app.original_code)
    before = await snapshot(db)
    capsys.readouterr()
    assert await cli("replay-check", f"{APP}:renamed", "--dsn", dsn) == 1
    out = capsys.readouterr().out
    assert await snapshot(db) == before  # nothing written
    for rid in [*runs["waiting"], runs["done"]]:
        line = next(ln for ln in out.splitlines() if ln.startswith(str(rid)))
        cells = line.split()
        assert cells[:3] == [str(rid), "report", "-"]
        assert cells[4:] == ["#2", "step", "parse", "step", "parse-v2"]
    assert "5 runs checked (other, report): 1 compatible, 4 incompatible" in out


async def test_compatible_code_passes_with_exit_0(
    dsn: str, db: asyncpg.Connection, capsys: Capture
) -> None:
    await seed(dsn, db, replay_app.original_code)
    capsys.readouterr()
    assert await cli("replay-check", f"{APP}:original", "--dsn", dsn) == 0
    out = capsys.readouterr().out
    assert "5 runs checked (other, report): 5 compatible, 0 incompatible" in out
    assert "NonDeterminismError" not in out


async def test_patched_code_passes_old_runs_and_runs_recorded_with_the_patch(
    dsn: str, db: asyncpg.Connection, capsys: Capture
) -> None:
    await seed(dsn, db, replay_app.original_code)
    await seed(dsn, db, replay_app.patched_code)  # these record patch v2
    capsys.readouterr()
    assert await cli("replay-check", f"{APP}:patched", "--dsn", dsn, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["ok"], report["checked"], report["compatible"]) == (True, 10, 10)
    # The original code cannot replay the runs that recorded the patch.
    assert await cli("replay-check", f"{APP}:original", "--dsn", dsn, "--json") == 1
    report = json.loads(capsys.readouterr().out)
    mismatches = {
        (m["position"], m["recorded_kind"], m["recorded_name"], m["kind"], m["name"])
        for m in (c["mismatch"] for c in report["incompatible"])
    }
    assert mismatches == {(2, "patch", "v2", "step", "parse")}
    assert len(report["incompatible"]) == 4


async def test_json_workflow_since_and_limit_select_the_runs_checked(
    dsn: str, db: asyncpg.Connection, capsys: Capture
) -> None:
    runs = await seed(dsn, db, replay_app.original_code)
    capsys.readouterr()
    argv = ["replay-check", f"{APP}:renamed", "--dsn", dsn, "--json"]
    assert await cli(*argv, "--workflow", "other") == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["workflows"], report["checked"]) == (["other"], 1)
    # Finished runs only within --since: "none" leaves the completed ones out.
    assert await cli(*argv, "--since", "none") == 1
    report = json.loads(capsys.readouterr().out)
    assert report["checked"] == 3
    assert {c["run_id"] for c in report["incompatible"]} == {str(r) for r in runs["waiting"]}
    first = report["incompatible"][0]
    assert first["mismatch"] == {
        "position": 2,
        "recorded_kind": "step",
        "recorded_name": "parse",
        "kind": "step",
        "name": "parse-v2",
    }
    assert (first["workflow"], first["version"], first["status"]) == ("report", None, "waiting")
    assert await cli(*argv, "--since", "12h", "--limit", "2") == 1
    assert json.loads(capsys.readouterr().out)["checked"] == 2


async def test_an_error_in_the_workflows_own_code_is_not_an_incompatibility(
    dsn: str, db: asyncpg.Connection, capsys: Capture
) -> None:
    await seed(dsn, db, replay_app.original_code)
    capsys.readouterr()
    assert await cli("replay-check", f"{APP}:failing", "--dsn", dsn, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["unchecked"]) == 4
    assert report["unchecked"][0]["detail"] == (
        "could not check: RuntimeError: boom in the workflow's own code"
    )
    assert await cli("replay-check", f"{APP}:failing", "--dsn", dsn) == 0
    assert "runs that could not be checked:" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "7x"], "--since '7x'"),
        (["--since=-1d"], "--since '-1d'"),
        (["--limit", "0"], "--limit must be >= 1"),
        (["--workflow", "nope"], "--workflow 'nope' is not registered"),
    ],
)
async def test_bad_options_are_usage_errors_and_nothing_is_read_or_written(
    dsn: str, db: asyncpg.Connection, capsys: Capture, args: list[str], message: str
) -> None:
    before = await snapshot(db)
    assert await cli("replay-check", f"{APP}:original", "--dsn", dsn, *args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert await snapshot(db) == before


async def test_the_client_method_skips_versions_not_registered_and_checks_no_steps_run(
    dsn: str, db: asyncpg.Connection
) -> None:
    """Runs of a version the checked code does not register are skipped (their own
    workers execute them); the check never executes a step function."""
    executed: list[str] = []

    def step(name: str) -> str:
        executed.append(name)
        return name

    def code(tide: Tidebase, version: str | None) -> None:
        @tide.workflow("v", version=version)
        async def v(run: Run) -> str:
            await run.step("one", step, "one")
            await run.gate("g")
            return str(await run.step("two", step, "two"))

    old, new = Tidebase(dsn), Tidebase(dsn)
    code(old, "1")
    code(new, "2")
    async with old, new:
        first = await old.enqueue("v")
        second = await new.enqueue("v")
        async with working(old), working(new):
            for rid in (first.id, second.id):
                await eventually(functools.partial(_is, db, rid, "waiting"), what="runs to wait")
        executed.clear()
        report = await new.replay_check()
        assert (report.checked, report.compatible, report.skipped, report.ok) == (1, 1, 1, True)
        assert executed == []
        with pytest.raises(ConfigurationError, match="'nope' is not registered"):
            await new.replay_check(workflows=["nope"])
        with pytest.raises(ConfigurationError, match="since"):
            await new.replay_check(since=-1)
