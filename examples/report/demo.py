"""Demo: a ``generate-report`` run survives a worker that is killed mid-step.

``python -m examples.report.demo`` (or ``make demo``):

1. enqueues a run with a dedupe key, twice: the second enqueue is deduplicated;
2. starts worker 1 as a subprocess; it executes ``plan`` and ``fetch-sources``, then
   kills itself with SIGKILL inside ``write-report``, leaving its lease dangling;
3. starts worker 2, which requeues the run once the lease has expired, replays ``plan``
   and ``fetch-sources`` from their checkpoints and executes only ``write-report``;
4. prints the report, which process executed which step, the attempts and the
   run's event log, and exits non-zero if anything did not happen as described.

The database is ``TIDEBASE_DATABASE_URL`` if set, else the embedded Postgres in
``./.tidebase`` (created on first use). Each demo uses its own queue, so runs left over
by an interrupted demo never reach this demo's workers.

``python -m examples.report.demo --worker --queue Q [--crash-in STEP]`` is the worker
subprocess.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import anyio

from examples.report import workflow
from examples.report.workflow import STEPS, WORKFLOW, Report, ReportInput, tide
from tidebase_async import Event, RunInfo, TidebaseError

TOPIC = "durable workflows"
LEASE_S = 2.0  # short, so that recovery after the crash takes seconds (default 30 s)
MAINTENANCE_S = 0.2  # how often a worker looks for expired leases (default 1 s)
TIMEOUT_S = 25.0  # for each phase; the whole demo takes ~6 s on a warm machine

_ROOT = Path(__file__).resolve().parents[2]
_EXECUTING = re.compile(r"\[pid (\d+)\] executing step '([^']+)'")


# -- the worker subprocess -------------------------------------------------------------


async def run_worker(*, queue: str, crash_in: str | None, parent_pid: int) -> None:
    """Work on ``queue`` until SIGTERM, or until the demo process goes away."""
    logging.basicConfig(
        level=logging.WARNING, format="[pid %(process)d] %(message)s", stream=sys.stdout
    )
    workflow.crash_in = crash_in
    started = anyio.Event()
    async with anyio.create_task_group() as tg:

        async def work() -> None:
            await tide.work(
                queues=[queue],
                concurrency=4,
                lease=LEASE_S,
                poll_interval=1.0,
                maintenance_interval=MAINTENANCE_S,
                shutdown_grace=2.0,
                started=started,
            )
            tg.cancel_scope.cancel()

        async def orphan_guard() -> None:
            # Workers run in their own session (Ctrl-C goes to the demo only, which
            # then kills them); should the demo itself be killed, do not linger.
            while os.getppid() == parent_pid:
                await anyio.sleep(0.5)
            print(f"[pid {os.getpid()}] the demo process is gone; exiting", flush=True)
            tg.cancel_scope.cancel()

        tg.start_soon(work)
        tg.start_soon(orphan_guard)
        await started.wait()
        print(f"[pid {os.getpid()}] worker ready (lease {LEASE_S:g} s)", flush=True)


# -- the demo ----------------------------------------------------------------------------


@dataclass
class Worker:
    """A worker subprocess whose output is forwarded, prefixed with its name."""

    name: str
    proc: asyncio.subprocess.Process
    executed: list[str] = field(default_factory=list)  # step names, in order
    forwarder: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def forward(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            print(f"   {self.name} | {line}", flush=True)
            match = _EXECUTING.search(line)
            if match and int(match.group(1)) == self.pid:
                self.executed.append(match.group(2))

    async def wait_exit(self, timeout_s: float) -> int:
        """The exit code (negative: killed by that signal), output forwarded fully."""
        async with asyncio.timeout(timeout_s):
            code = await self.proc.wait()
            if self.forwarder is not None:
                await self.forwarder
        return code

    async def stop(self) -> None:
        """SIGTERM (a graceful drain), SIGKILL if it is still alive after 5 s."""
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await self.wait_exit(5.0)
            except TimeoutError:
                self.proc.kill()
        with contextlib.suppress(TimeoutError):
            await self.wait_exit(5.0)


async def start_worker(name: str, dsn: str, queue: str, *extra: str) -> Worker:
    env = dict(os.environ)
    env["TIDEBASE_DATABASE_URL"] = dsn  # the server this demo started (or was given)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "examples.report.demo",
        "--worker",
        "--queue",
        queue,
        "--parent-pid",
        str(os.getpid()),
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    worker = Worker(name=name, proc=proc)
    worker.forwarder = asyncio.create_task(worker.forward())
    return worker


def _pid_of(worker_id: Any) -> str:
    """Worker ids are ``host:pid:random``."""
    parts = str(worker_id).rsplit(":", 2)
    return parts[1] if len(parts) == 3 else str(worker_id)


def _describe(event: Event) -> str:
    data = event.data if isinstance(event.data, dict) else {}
    if event.type == "run.claimed":
        return f"attempt {data.get('attempt')}, worker pid {_pid_of(data.get('worker'))}"
    if event.type == "run.requeued":
        return f"lease of worker pid {_pid_of(data.get('worker'))} expired"
    if event.type == "step.completed":
        return str(data.get("name", ""))
    if event.type == "state.updated":
        return f"stage={data.get('stage')!r} progress={data.get('progress')}"
    return ""


async def wait_for_result(run_id: UUID, worker: Worker, timeout_s: float) -> Any:
    """The run's output; raises if ``worker`` exits first or the run fails."""
    waiting = asyncio.create_task(tide.runs.wait(run_id, timeout=timeout_s))
    exited = asyncio.create_task(worker.proc.wait())
    try:
        await asyncio.wait({waiting, exited}, return_when=asyncio.FIRST_COMPLETED)
        if not waiting.done():
            raise RuntimeError(
                f"{worker.name} exited with code {exited.result()} before the run finished"
            )
        return waiting.result()
    finally:
        for task in (waiting, exited):
            task.cancel()
        await asyncio.gather(waiting, exited, return_exceptions=True)


def print_table(info: RunInfo, worker1: Worker, worker2: Worker) -> None:
    completed = {s.name for s in info.steps if s.status == "completed"}
    rows = [("step", "times executed", "executed by pid", f"{worker2.name} (pid {worker2.pid})")]
    for step in STEPS:
        pids = []
        for worker in (worker1, worker2):
            for name in worker.executed:
                if name == step:
                    killed = (
                        worker.proc.returncode == -signal.SIGKILL and name == worker.executed[-1]
                    )
                    pids.append(f"{worker.pid}{' (killed)' if killed else ''}")
        if step in worker2.executed:
            second = "executed"
        elif step in completed:
            second = "replayed from checkpoint"
        else:
            second = "-"
        rows.append((step, str(len(pids)), ", ".join(pids) or "-", second))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for n, row in enumerate(rows):
        cells = (cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        print(("   " + "  ".join(cells)).rstrip())
        if n == 0:
            print("   " + "  ".join("-" * w for w in widths))


async def run_demo() -> int:
    t0 = time.monotonic()
    print("tidebase demo: a durable workflow run survives a killed worker\n")
    if os.environ.get("TIDEBASE_DATABASE_URL"):
        print("Database: the server in $TIDEBASE_DATABASE_URL")
    else:
        data_dir = Path.cwd() / ".tidebase"
        if (data_dir / "pgdata").exists():
            print(f"Database: starting the embedded Postgres in {data_dir} ...")
        else:
            print(
                f"Database: first run, creating an embedded Postgres in {data_dir}\n"
                "          (initdb; this takes a few seconds, once) ..."
            )
    problems: list[str] = []
    workers: list[Worker] = []
    async with tide:
        assert tide.dsn is not None
        print(f"          ready in {time.monotonic() - t0:.1f} s\n")
        try:
            await _demo(tide.dsn, workers, problems)
        finally:
            for worker in workers:  # kill first: this must happen even when cancelled
                if worker.proc.returncode is None:
                    worker.proc.kill()
            for worker in workers:
                with contextlib.suppress(Exception):
                    await worker.wait_exit(5.0)
    elapsed = time.monotonic() - t0
    if problems:
        print(f"\nFAILED after {elapsed:.1f} s:")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    print(
        f"\nOK in {elapsed:.1f} s: 'plan' and 'fetch-sources' executed once, in worker 1; "
        "after the crash\nonly 'write-report' ran again. Completed steps never re-execute."
    )
    return 0


async def _demo(dsn: str, workers: list[Worker], problems: list[str]) -> None:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    queue = f"report-demo-{stamp}-{os.getpid()}"
    key = f"report-{'-'.join(TOPIC.split())}-{stamp}"
    payload = ReportInput(topic=TOPIC)

    print(f"1. Enqueue a {WORKFLOW!r} run for topic {TOPIC!r}")
    print(f"   with dedupe_key {key!r}")
    first = await tide.enqueue(WORKFLOW, input=payload, dedupe_key=key, queue=queue)
    print(f"   -> run {first.id}  deduplicated={first.deduplicated}")
    again = await tide.enqueue(WORKFLOW, input=payload, dedupe_key=key, queue=queue)
    print("   the same enqueue again (think: a double-submitted form)")
    print(f"   -> run {again.id}  deduplicated={again.deduplicated}")
    if first.deduplicated or not again.deduplicated or again.id != first.id:
        problems.append("the second enqueue with the same dedupe key was not deduplicated")
    run_id = first.id

    print("\n2. Start worker 1; it will crash inside 'write-report' (SIGKILL, like a power cut)")
    worker1 = await start_worker("worker 1", dsn, queue, "--crash-in", "write-report")
    workers.append(worker1)
    try:
        code = await worker1.wait_exit(TIMEOUT_S)
    except TimeoutError:
        problems.append(f"worker 1 did not crash within {TIMEOUT_S:g} s")
        return
    crashed_at = time.monotonic()
    if code != -signal.SIGKILL:
        problems.append(f"worker 1 exited with code {code}, expected death by SIGKILL")
        return
    info = await tide.runs.get(run_id)
    print(f"   worker 1 was killed. In the database the run is still {info.status!r}, with")
    print(f"   state {info.state}, leased to a dead worker")
    print(f"   that will never renew its {LEASE_S:g} s lease.")

    print(
        "\n3. Start worker 2. Once the lease has expired it requeues the run, replays 'plan'\n"
        "   and 'fetch-sources' from their checkpoints and executes only 'write-report'."
    )
    worker2 = await start_worker("worker 2", dsn, queue)
    workers.append(worker2)
    try:
        report = await wait_for_result(run_id, worker2, TIMEOUT_S)
    except (TidebaseError, TimeoutError, RuntimeError) as exc:
        problems.append(f"the run did not complete: {type(exc).__name__}: {exc}")
        return
    recovered_s = time.monotonic() - crashed_at
    await worker2.stop()

    info = await tide.runs.get(run_id)
    events = [event async for event in tide.runs.events(run_id)]
    print(f"\n4. Completed {recovered_s:.1f} s after the crash. The report:\n")
    if isinstance(report, Report):
        print("\n".join("   " + line for line in report.text.splitlines()))
    print()
    print_table(info, worker1, worker2)
    print(f"\n   attempts: {info.attempt} (max_attempts {info.max_attempts})")
    claims = [e for e in events if e.type == "run.claimed"]
    for n, event in enumerate(claims, 1):
        outcome = info.status if n == len(claims) else "worker killed, lease expired"
        print(f"     {_describe(event)}: {outcome}")
    print("\n   event log (tide.runs.events):")
    for event in events:
        print(f"   {event.seq:>4}  {event.type:<15} {_describe(event)}".rstrip())

    expected = {
        "plan": [worker1.pid],
        "fetch-sources": [worker1.pid],
        "write-report": [worker1.pid, worker2.pid],
    }
    for step, pids in expected.items():
        actual = [w.pid for w in (worker1, worker2) for name in w.executed if name == step]
        if actual != pids:
            problems.append(f"step {step!r} executed in pids {actual}, expected {pids}")
    if info.status != "completed":
        problems.append(f"the run is {info.status!r}, expected 'completed'")
    if info.attempt != 2:
        problems.append(f"the run took {info.attempt} attempts, expected 2")
    if not isinstance(report, Report) or report.topic != TOPIC:
        problems.append(f"unexpected output: {report!r}")
    if not any(e.type == "run.requeued" for e in events):
        problems.append("no 'run.requeued' event: the expired lease was not reclaimed")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.report.demo", description=__doc__)
    parser.add_argument("--worker", action="store_true", help="run as a worker subprocess")
    parser.add_argument("--queue", default="default", help="the queue a worker serves")
    parser.add_argument("--crash-in", choices=STEPS, help="SIGKILL the worker in this step")
    parser.add_argument("--parent-pid", type=int, default=os.getppid(), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        asyncio.run(
            run_worker(queue=args.queue, crash_in=args.crash_in, parent_pid=args.parent_pid)
        )
        return 0
    try:
        return asyncio.run(run_demo())
    except KeyboardInterrupt:
        print("\ninterrupted; the worker processes were stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main())
