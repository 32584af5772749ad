"""The ``tidebase`` command against the test database.

One-shot commands run in-process (``main([...])`` in a worker thread, so that a test
can run a worker on its own loop meanwhile; capsys sees the output). ``dev``,
``serve`` and ``worker`` run as subprocesses, driven over HTTP and stopped by signals.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import asyncpg
import httpx
import pytest

from tests.integration.core_support import working
from tests.integration.procs import eventually
from tidebase_async import Tidebase
from tidebase_async.cli import demo_app
from tidebase_async.cli.main import main
from tidebase_async.store.sql import migrations
from tidebase_async.testing.databases import with_database

Capture = pytest.CaptureFixture[str]
FAST = json.dumps({"topic": "cli", "step_delay": 0})


async def cli(*argv: str) -> int:
    """Run ``tidebase argv`` in-process, in a thread with its own event loop."""
    return await anyio.to_thread.run_sync(main, list(argv))


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("tidebase:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
async def empty_dsn(server_dsn: str) -> AsyncIterator[str]:
    """A database with nothing in it (not migrated)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield with_database(server_dsn, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@contextlib.asynccontextmanager
async def demo_worker(tide: Tidebase) -> AsyncIterator[Tidebase]:
    """A worker for the demo workflow on the test database, while inside."""
    demo_app.register(tide)
    async with working(tide, poll_interval=0.2):
        yield tide


async def gate_pending(tide: Tidebase, run_id: str) -> None:
    async def probe() -> bool:
        info = await tide.runs.get(run_id)
        return any(g.status == "pending" for g in info.gates)

    await eventually(probe, timeout=10, what=f"run {run_id} at its gate")


# -- one-shot commands in-process -------------------------------------------------------------


async def test_help_lists_commands_and_exit_codes(capsys: Capture) -> None:
    assert await cli("--help") == 0
    out = capsys.readouterr().out
    for command in ("dev", "migrate", "worker", "serve", "runs", "gates", "enqueue", "queues"):
        assert command in out
    assert "exit codes" in out and "3 not found" in out and "130 interrupted" in out
    assert await cli("runs", "list", "--status", "bogus") == 2
    assert await cli() == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["serve", "dev"])
async def test_help_warns_that_secrets_on_the_command_line_show_in_ps(
    command: str, capsys: Capture
) -> None:
    """Regression: --api-key / --webhook-secret did not say that arguments are visible
    to every user of the machine (``ps``), nor point at the environment variables."""
    assert await cli(command, "--help") == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "prefer $TIDEBASE_WEBHOOK_SECRET (arguments show in `ps`)" in out
    if command == "serve":
        assert "prefer $TIDEBASE_API_KEY (arguments show in `ps`)" in out


@pytest.mark.parametrize("command", ["serve", "dev"])
async def test_a_public_bind_without_an_api_key_is_refused(
    command: str, dsn: str, capsys: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: `tidebase dev --host 0.0.0.0` served the whole API to the network
    with only a warning."""
    monkeypatch.delenv("TIDEBASE_API_KEY", raising=False)
    app = ["tidebase_async.cli.demo_app:tide"] if command == "serve" else []
    code = await cli(command, *app, "--dsn", dsn, "--host", "0.0.0.0", "--port", "0")
    assert code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "refusing to serve 0.0.0.0 without an API key" in err
    assert "--insecure-no-auth" in err


def test_insecure_no_auth_serves_any_host_and_says_so(capsys: Capture) -> None:
    from tidebase_async.cli.main import _check_exposure

    tide = Tidebase("postgresql://unused@127.0.0.1/x")
    _check_exposure(tide, "0.0.0.0", insecure=True)
    assert tide.allowed_hosts == frozenset({"*"})
    assert "without an API key" in capsys.readouterr().out
    keyed = Tidebase("postgresql://unused@127.0.0.1/x", api_key="k")
    _check_exposure(keyed, "0.0.0.0", insecure=False)  # a key: nothing to refuse
    assert keyed.allowed_hosts == frozenset()


async def test_migrate_shows_progress_then_is_idempotent(empty_dsn: str, capsys: Capture) -> None:
    latest = migrations()[-1][0]
    assert await cli("migrate", "--dsn", empty_dsn) == 0
    captured = capsys.readouterr()
    assert f"schema at version {latest} ({latest} migrations applied)" in captured.out
    assert f"[1/{latest}] 0001_init" in captured.err
    assert f"[{latest}/{latest}]" in captured.err
    assert await cli("migrate", "--dsn", empty_dsn, "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"version": latest, "applied": []}


async def test_enqueue_list_show_with_tables_and_json(dsn: str, capsys: Capture) -> None:
    assert await cli("enqueue", "demo.report", "--dsn", dsn, "--input", FAST) == 0
    run_id = capsys.readouterr().out.strip()
    uuid.UUID(run_id)
    args = ["--dsn", dsn, "--dedupe-key", "k1", "--queue", "q1", "--priority", "5", "--json"]
    assert await cli("enqueue", "demo.report", *args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["deduplicated"] is False
    assert await cli("enqueue", "demo.report", *args) == 0
    assert json.loads(capsys.readouterr().out) == {"id": first["id"], "deduplicated": True}

    assert await cli("runs", "list", "--dsn", dsn) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "ID",
        "STATUS",
        "WORKFLOW",
        "QUEUE",
        "ATTEMPT",
        "CREATED",
        "DURATION",
    ]
    assert len(lines) == 3 and any(line.startswith(run_id) for line in lines)
    assert "just now" in lines[1] or "ago" in lines[1]
    # Columns are aligned: every row puts STATUS where the header does.
    column = lines[0].index("STATUS")
    assert all(line[column - 2 : column] == "  " for line in lines)

    # Global options work before the command too.
    assert await cli("--json", "--dsn", dsn, "runs", "list", "--queue", "q1") == 0
    page = json.loads(capsys.readouterr().out)
    assert [item["id"] for item in page["items"]] == [first["id"]]
    assert page["items"][0]["priority"] == 5

    assert await cli("runs", "show", run_id, "--dsn", dsn) == 0
    out = capsys.readouterr().out
    assert "workflow  demo.report" in out and "status    queued" in out
    assert await cli("runs", "show", run_id, "--dsn", dsn, "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["id"] == run_id and shown["input"] == json.loads(FAST)


async def test_unknown_run_exits_3_with_one_line(dsn: str, capsys: Capture) -> None:
    missing = str(uuid.uuid4())
    for argv in (
        ("runs", "show", missing),
        ("runs", "show", "not-a-uuid"),
        ("runs", "cancel", missing),
        ("runs", "retry", missing),
        ("runs", "wait", missing),
        ("gates", "resolve", missing, "approve", "--approve"),
    ):
        assert await cli(*argv, "--dsn", dsn) == 3, argv
        line = one_line_error(capsys.readouterr().err)
        assert "no run" in line or "not a run id" in line


async def test_bad_app_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capture
) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    cases = {
        "no_such_module_xyz:tide": "no module named 'no_such_module_xyz'",
        "tidebase_async.cli.demo_app:nothing": "has no attribute 'nothing'",
        "tidebase_async.cli.demo_app:WORKFLOW": "is a str, not a Tidebase",
        "tidebase_async.cli.demo_app": "expected module:attribute",
    }
    for spec, message in cases.items():
        for command in ("worker", "serve", "dev"):
            assert await cli(command, spec) == 2, (command, spec)
            assert message in one_line_error(capsys.readouterr().err)

    # A module that raises on import: exit 1, one line; --debug shows the traceback.
    name = f"broken_app_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.chdir(tmp_path)
    assert await cli("worker", f"{name}:tide") == 1
    assert "RuntimeError: boom at import" in one_line_error(capsys.readouterr().err)
    assert await cli("worker", f"{name}:tide", "--debug") == 1
    assert "Traceback" in capsys.readouterr().err


async def test_gates_list_resolve_and_conflict(tide: Tidebase, dsn: str, capsys: Capture) -> None:
    async with demo_worker(tide):
        assert await cli("enqueue", "demo.report", "--dsn", dsn, "--input", FAST) == 0
        run_id = capsys.readouterr().out.strip()
        await gate_pending(tide, run_id)

        assert await cli("gates", "list", "--dsn", dsn) == 0
        out = capsys.readouterr().out
        assert out.splitlines()[0].split()[:3] == ["RUN", "GATE", "STATUS"]
        assert run_id in out and "pending" in out
        assert await cli("gates", "list", "--dsn", dsn, "--json", "--run", run_id) == 0
        [gate] = json.loads(capsys.readouterr().out)
        assert (gate["name"], gate["status"]) == ("approve", "pending")

        argv = ("gates", "resolve", run_id, "approve", "--approve", "--actor", "ann", "--dsn", dsn)
        assert await cli(*argv, "--json") == 0
        resolved = json.loads(capsys.readouterr().out)
        assert (resolved["status"], resolved["actor"]) == ("approved", "ann")
        assert await cli(*argv) == 4
        assert "already approved" in one_line_error(capsys.readouterr().err)
        assert await cli("gates", "resolve", run_id, "nope", "--reject", "--dsn", dsn) == 3
        one_line_error(capsys.readouterr().err)

        assert await cli("runs", "wait", run_id, "--dsn", dsn, "--timeout", "10", "--json") == 0
        waited = json.loads(capsys.readouterr().out)
        assert waited["status"] == "completed" and waited["output"]["published"] is True
        assert await cli("gates", "list", "--dsn", dsn, "--status", "all") == 0
        assert "approved" in capsys.readouterr().out

        # A completed run cannot be cancelled or retried: conflict.
        assert await cli("runs", "cancel", run_id, "--dsn", dsn) == 4
        assert "already completed" in one_line_error(capsys.readouterr().err)
        assert await cli("runs", "retry", run_id, "--dsn", dsn) == 4
        one_line_error(capsys.readouterr().err)


async def test_failed_run_wait_retry_and_cancel(tide: Tidebase, dsn: str, capsys: Capture) -> None:
    async with demo_worker(tide):
        failing = json.dumps({"topic": "x", "step_delay": 0, "fail": True})
        assert await cli("enqueue", "demo.report", "--dsn", dsn, "--input", failing) == 0
        run_id = capsys.readouterr().out.strip()
        assert await cli("runs", "wait", run_id, "--dsn", dsn, "--timeout", "10") == 1
        assert "could not be written" in one_line_error(capsys.readouterr().err)

        assert await cli("runs", "show", run_id, "--dsn", dsn) == 0
        out = capsys.readouterr().out
        assert "status    failed" in out and "DemoFailure" in out and "write" in out

        assert await cli("runs", "retry", run_id, "--dsn", dsn) == 0
        assert capsys.readouterr().out.strip() == f"requeued {run_id}"

        # Cancel a run the worker cannot take (its queue is paused): ok, then idempotent.
        assert await cli("queues", "pause", "held", "--dsn", dsn) == 0
        assert capsys.readouterr().out.strip() == "paused queue 'held'"
        assert await cli("enqueue", "demo.report", "--dsn", dsn, "--queue", "held") == 0
        held = capsys.readouterr().out.strip()
        argv = ("runs", "cancel", held, "--reason", "testing", "--dsn", dsn)
        assert await cli(*argv, "--json") == 0
        assert json.loads(capsys.readouterr().out) == {"id": held, "status": "cancelled"}
        assert await cli(*argv) == 0
        capsys.readouterr()
        assert await cli("runs", "wait", held, "--dsn", dsn) == 1
        assert "cancel" in one_line_error(capsys.readouterr().err)


async def test_queues_and_schedules(tide: Tidebase, dsn: str, capsys: Capture) -> None:
    await tide.schedules.set("nightly", cron="0 3 * * *", workflow="demo.report")
    await tide.enqueue("demo.report", queue="reports")
    await tide.queues.configure("reports", concurrency=2, rate_per_minute=60)

    assert await cli("queues", "list", "--dsn", dsn) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["QUEUE", "STATE", "CONCURRENCY", "RATE"]
    assert lines[1].split()[:6] == ["reports", "active", "2", "60/min", "-", "1"]
    assert await cli("queues", "pause", "reports", "--dsn", dsn, "--json") == 0
    assert json.loads(capsys.readouterr().out)["paused"] is True
    assert await cli("queues", "list", "--dsn", dsn, "--json") == 0
    [queue] = json.loads(capsys.readouterr().out)
    assert queue["paused"] is True and queue["counts"] == {"queued": 1}
    assert await cli("queues", "resume", "reports", "--dsn", dsn) == 0
    assert capsys.readouterr().out.strip() == "resumed queue 'reports'"

    assert await cli("schedules", "list", "--dsn", dsn) == 0
    out = capsys.readouterr().out
    assert "nightly" in out and "0 3 * * *" in out and "enabled" in out and "in " in out
    assert await cli("schedules", "pause", "nightly", "--dsn", dsn) == 0
    capsys.readouterr()
    assert await cli("schedules", "list", "--dsn", dsn, "--json") == 0
    [schedule] = json.loads(capsys.readouterr().out)
    assert (schedule["name"], schedule["enabled"]) == ("nightly", False)
    assert await cli("schedules", "resume", "missing", "--dsn", dsn) == 3
    one_line_error(capsys.readouterr().err)


async def test_library_errors_exit_1_without_traceback(dsn: str, capsys: Capture) -> None:
    assert await cli("runs", "list", "--dsn", dsn, "--limit", "0") == 1
    assert "limit must be" in one_line_error(capsys.readouterr().err)
    assert await cli("enqueue", "demo.report", "--dsn", dsn, "--input", "{nope") == 2
    assert "--input is not valid JSON" in one_line_error(capsys.readouterr().err)
    bad = "postgresql://postgres@127.0.0.1:1/nothing"
    assert await cli("runs", "list", "--dsn", bad, "--connect-timeout", "0.3") == 1
    assert "cannot connect to Postgres" in one_line_error(capsys.readouterr().err)
    assert await cli("runs", "list", "--dsn", bad, "--connect-timeout", "0.3", "--debug") == 1
    assert "Traceback" in capsys.readouterr().err


# -- services as subprocesses -------------------------------------------------------------


class Service:
    """``python -m tidebase_async.cli ...`` with its output in files."""

    def __init__(self, argv: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.out_path = cwd / "stdout.txt"
        self.err_path = cwd / "stderr.txt"
        base = {k: v for k, v in os.environ.items() if not k.startswith("TIDEBASE_")}
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tidebase_async.cli", *argv],
                cwd=cwd,
                env={**base, **(env or {})},
                stdout=out,
                stderr=err,
            )

    @property
    def stdout(self) -> str:
        return self.out_path.read_text()

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    async def wait_for(self, text: str, timeout: float = 20) -> str:
        async def probe() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode}: {self.stdout}{self.stderr}")
            return text in self.stdout

        await eventually(probe, timeout=timeout, what=f"{text!r} in the output", interval=0.05)
        return self.stdout

    def url(self) -> str:
        line = next(ln for ln in self.stdout.splitlines() if ln.startswith("Dashboard: "))
        return line.removeprefix("Dashboard: ").strip()

    async def stop(self, sig: signal.Signals, timeout: float = 5) -> tuple[int, float]:
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        with anyio.fail_after(timeout):
            while self.proc.poll() is None:
                await anyio.sleep(0.02)
        return self.proc.returncode, time.monotonic() - t0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def services() -> Iterator[list[Service]]:
    started: list[Service] = []
    yield started
    for service in started:
        service.kill()


async def get_json(http: httpx.AsyncClient, path: str) -> Any:
    response = await http.get(path)
    assert response.status_code == 200, response.text
    return response.json()


async def test_serve_answers_health_and_dashboard(
    dsn: str, tmp_path: Path, services: list[Service]
) -> None:
    app = "tidebase_async.cli.demo_app:tide"
    service = Service(["serve", app, "--dsn", dsn, "--port", "0"], cwd=tmp_path)
    services.append(service)
    await service.wait_for("Ready.")
    url = service.url()
    assert url.startswith("http://127.0.0.1:")
    async with httpx.AsyncClient(base_url=url, timeout=5) as http:
        assert (await http.get("health")).status_code == 200
        page = await http.get("")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "<html" in page.text.lower()
        assert (await get_json(http, "runs"))["items"] == []
    code, took = await service.stop(signal.SIGTERM)
    assert code == 0 and took < 5
    assert "stopped" in service.stdout and "Traceback" not in service.stderr


async def test_dev_serves_runs_the_demo_and_stops_on_sigint(
    dsn: str, tmp_path: Path, services: list[Service], capsys: Capture
) -> None:
    argv = ["dev", "--port", "0", "--enqueue", "1", "--step-delay", "0"]
    service = Service(argv, cwd=tmp_path, env={"TIDEBASE_DATABASE_URL": dsn})
    services.append(service)
    await service.wait_for("Ready.")
    assert "enqueued 1 demo run" in service.stdout
    url = service.url()
    async with httpx.AsyncClient(base_url=url, timeout=5) as http:
        assert "<html" in (await http.get("")).text.lower()

        async def at_gate() -> list[Any]:
            gates: list[Any] = (await get_json(http, "gates"))["items"]
            return gates

        [gate] = await eventually(at_gate, timeout=10, what="the demo run at its gate")
        run_id = gate["run_id"]
        argv = ["gates", "resolve", run_id, "approve", "--approve", "--dsn", dsn]
        assert await cli(*argv) == 0
        assert "approved" in capsys.readouterr().out

        async def completed() -> bool:
            run = await get_json(http, f"runs/{run_id}")
            return bool(run["status"] == "completed")

        await eventually(completed, timeout=10, what="the demo run completed")
        assert not (tmp_path / ".tidebase").exists()  # a DSN was given: no embedded server
    code, took = await service.stop(signal.SIGINT)
    assert code == 0, service.stderr
    assert took < 5
    assert "SIGINT received: stopping" in service.stdout and "stopped" in service.stdout
    assert "Traceback" not in service.stderr


async def test_worker_drains_on_sigterm_and_second_signal_interrupts(
    dsn: str, tmp_path: Path, services: list[Service], capsys: Capture
) -> None:
    app = "tidebase_async.cli.demo_app:tide"
    argv = ["worker", app, "--dsn", dsn, "--poll-interval", "0.2", "--shutdown-grace", "30"]
    service = Service(argv, cwd=tmp_path)
    services.append(service)
    await service.wait_for("Ready.")
    assert "workflows: demo.report" in service.stdout
    slow = json.dumps({"topic": "slow", "step_delay": 30})
    assert await cli("enqueue", "demo.report", "--dsn", dsn, "--input", slow) == 0
    run_id = capsys.readouterr().out.strip()

    async def running() -> bool:
        assert await cli("runs", "list", "--dsn", dsn, "--status", "running", "--json") == 0
        items = json.loads(capsys.readouterr().out)["items"]
        return any(item["id"] == run_id for item in items)

    await eventually(running, timeout=10, what="the slow run running")
    service.proc.send_signal(signal.SIGTERM)
    await service.wait_for("draining 1 running run")
    code, took = await service.stop(signal.SIGINT)
    assert code == 130 and took < 5, service.stderr
    assert "tidebase: interrupted" in service.stderr
    assert "Traceback" not in service.stderr
