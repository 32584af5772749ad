"""Helpers for tests that run workers as separate processes (``worker_app``).

``Workers`` starts worker processes, waits for their ``READY`` line and, on exit, kills
and reaps every one still alive (also a stopped one), so no test leaks a process.
Output goes to files, never pipes: a chatty worker cannot block on a full pipe.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from uuid import UUID

import anyio
import asyncpg

from tidebase_async.store.sql import Q

REPO_ROOT = Path(__file__).resolve().parents[2]

T = TypeVar("T")

#: What a plain asyncpg client sees while connections are cut or the server restarts.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
)

STEP_LOG_DDL = """
CREATE TABLE step_log (
  run_id uuid NOT NULL,
  step   text NOT NULL,
  pid    int  NOT NULL,
  at     timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""


# The chaos tests' execution log (workflow ``chaos`` of ``worker_app``): one row per
# execution of a step, with the claim's attempt; ``at`` is the executing process's clock
# when the step started, ``logged_at`` the server's when the row was written.
CHAOS_LOG_DDL = """
CREATE TABLE chaos_log (
  exec_id   uuid PRIMARY KEY,
  run_id    uuid NOT NULL,
  step      text NOT NULL,
  attempt   int  NOT NULL,
  pid       int  NOT NULL,
  at        timestamptz NOT NULL,
  logged_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""


async def create_step_log(db: asyncpg.Connection) -> None:
    await db.execute(STEP_LOG_DDL)


async def eventually(
    probe: Callable[[], Awaitable[T]],
    *,
    timeout: float,
    what: str,
    interval: float = 0.02,
) -> T:
    """Poll ``probe`` until it returns something truthy and return that.

    Raises:
        AssertionError: ``timeout`` seconds passed first; names ``what`` and the last value.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what} (last: {value!r})"
            )
        await anyio.sleep(interval)


async def run_status(db: asyncpg.Connection, run_id: UUID) -> str | None:
    status: str | None = await db.fetchval("SELECT status FROM tidebase.runs WHERE id = $1", run_id)
    return status


async def wait_status(db: asyncpg.Connection, run_id: UUID, status: str, *, timeout: float) -> None:
    last: list[str | None] = [None]

    async def probe() -> bool:
        last[0] = await run_status(db, run_id)
        return last[0] == status

    try:
        await eventually(probe, timeout=timeout, what=f"run {run_id} to be {status}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; it is {last[0]}") from None


async def run_output(db: asyncpg.Connection, run_id: UUID) -> Any:
    raw = await db.fetchval("SELECT output::text FROM tidebase.runs WHERE id = $1", run_id)
    return None if raw is None else json.loads(raw)


async def event_types(db: asyncpg.Connection, run_id: UUID) -> list[tuple[str, Any]]:
    """(type, data) of the run's events as readers see them (list_events)."""
    rows = await db.fetch(Q["list_events"], run_id, 0, 100_000)
    return [(r["type"], None if r["data"] is None else json.loads(r["data"])) for r in rows]


async def step_log(db: asyncpg.Connection, run_id: UUID) -> list[tuple[str, int]]:
    """(step, pid) of every execution of a step of ``run_id``, in execution order."""
    rows = await db.fetch("SELECT step, pid FROM step_log WHERE run_id = $1 ORDER BY at", run_id)
    return [(r["step"], r["pid"]) for r in rows]


def process_state(pid: int) -> str:
    """The state letter from /proc (``T`` = stopped, ``Z`` = zombie); '' if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # The command name is in parentheses and may contain spaces: split after it.
    return stat.rpartition(")")[2].split()[0]


class WorkerProcess:
    """One ``python -m tests.integration.worker_app`` process."""

    def __init__(self, popen: subprocess.Popen[bytes], name: str, out: Path, err: Path) -> None:
        self.popen = popen
        self.name = name
        self.out_path = out
        self.err_path = err

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def describe(self) -> str:
        tail = "\n".join(self.stderr().splitlines()[-40:])
        return f"worker {self.name} (pid {self.pid}, rc {self.returncode}); stderr tail:\n{tail}"

    def send(self, sig: signal.Signals) -> None:
        os.kill(self.pid, sig)

    async def wait_ready(self, timeout: float = 15.0) -> None:
        async def probe() -> bool:
            if "READY" in self.stdout():
                return True
            if self.returncode is not None:
                raise AssertionError(f"exited before READY: {self.describe()}")
            return False

        await eventually(probe, timeout=timeout, what=f"READY from worker {self.name}")

    async def wait_exit(self, timeout: float) -> int:
        """Wait for the process to exit by itself; return its exit code."""
        deadline = time.monotonic() + timeout
        while (rc := self.returncode) is None:
            if time.monotonic() >= deadline:
                raise AssertionError(f"still running after {timeout:g}s: {self.describe()}")
            await anyio.sleep(0.02)
        return rc

    def kill(self) -> None:
        """SIGKILL (works on stopped processes too) and reap."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()
        self.popen.wait(timeout=10)


class Workers:
    """Starts worker processes on ``dsn``; kills and reaps them all on exit."""

    def __init__(self, dsn: str, log_dir: Path) -> None:
        self.dsn = dsn
        self.log_dir = log_dir
        self.procs: list[WorkerProcess] = []

    async def __aenter__(self) -> Workers:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()

    def alive(self) -> list[WorkerProcess]:
        """The processes still running (stopped ones included)."""
        return [proc for proc in self.procs if proc.returncode is None]

    def _spawn(self, name: str, args: list[str]) -> WorkerProcess:
        out = self.log_dir / f"worker-{name}.out"
        err = self.log_dir / f"worker-{name}.err"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [sys.executable, "-m", "tests.integration.worker_app", "--dsn", self.dsn, *args]
        with out.open("wb") as out_f, err.open("wb") as err_f:
            popen = subprocess.Popen(
                cmd, cwd=REPO_ROOT, env=env, stdout=out_f, stderr=err_f, stdin=subprocess.DEVNULL
            )
        proc = WorkerProcess(popen, name, out, err)
        self.procs.append(proc)
        return proc

    async def start(
        self,
        mode: str = "normal",
        *,
        name: str | None = None,
        concurrency: int = 4,
        lease: float = 5.0,
        poll_interval: float = 1.0,
        maintenance_interval: float = 0.2,
        shutdown_grace: float = 5.0,
        ready: bool = True,
        code: str | None = None,
    ) -> WorkerProcess:
        """Start a worker process and (by default) wait for its READY line.
        ``code``: also register that variant of the deploy workflows (worker_app)."""
        proc = self._spawn(
            name or f"{len(self.procs) + 1}-{mode}",
            [
                "--mode",
                mode,
                "--concurrency",
                str(concurrency),
                "--lease",
                str(lease),
                "--poll-interval",
                str(poll_interval),
                "--maintenance-interval",
                str(maintenance_interval),
                "--shutdown-grace",
                str(shutdown_grace),
                *(["--code", code] if code is not None else []),
            ],
        )
        if ready:
            await proc.wait_ready()
        return proc
