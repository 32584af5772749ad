"""Worker memory: resident set size of a worker process at concurrency 128.

Each scenario gets a fresh database and its own worker process
(``python -m benchmarks.memory_worker``: the library and nothing else). Runs are
enqueued first; the worker starts, and once it reports the expected runs blocked in
their step (and one more second), this process reads ``/proc/<pid>/status`` five
times, 0.2 s apart: VmRSS (the figure is the largest of the five), VmHWM (the peak so
far), RssAnon. The table is then checked, and the worker stopped with SIGTERM.

Scenarios:

- idle: no runs (the baseline);
- 128 in flight: 128 runs each blocked in a step (``anyio.sleep``);
- 10,000 waiting: runs parked at a pending approval gate (status ``waiting``, no
  lease; put there in SQL, as the gate would: the worker never touches a waiting run,
  whatever parked it);
- 10,000 queued, not due: runs delayed by an hour, which the worker does not claim;
- 128 in flight + 10,000 queued behind: the worker is at capacity and claims no more.
"""

from __future__ import annotations

import json
import math
import signal
import sys
from typing import Any

import anyio
import anyio.abc
import msgspec
from anyio.streams.text import TextReceiveStream

from benchmarks.common import (
    BenchmarkError,
    Context,
    Measurement,
    count_runs,
    fresh_tidebase,
)
from benchmarks.environment import REPO, Mode
from benchmarks.memory_worker import WORKFLOW
from benchmarks.report import Figure, Target
from tidebase_async import Run, RunSpec, Tidebase

NAME = "memory"
CONCURRENCY = 128
RSS_TARGET = Target("<=", 150.0)
READY_TIMEOUT_S = 90.0
SAMPLES = 5
SAMPLE_INTERVAL_S = 0.2
ENQUEUE_BATCH = 1_000


class Params(msgspec.Struct, frozen=True, kw_only=True):
    inflight: int = CONCURRENCY
    queued: int = 10_000


PARAMS: dict[Mode, Params] = {"quick": Params(), "full": Params()}


class Scenario(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    # Runs blocked in their step, due runs queued behind them, runs not due yet, runs
    # waiting at a gate.
    held: int = 0
    behind: int = 0
    not_due: int = 0
    waiting: int = 0
    target: bool = True


class Result(msgspec.Struct, frozen=True, kw_only=True):
    scenario: Scenario
    rss_mb: float
    hwm_mb: float
    rss_anon_mb: float
    rss_samples_mb: list[float]
    ready: dict[str, Any]
    counts: dict[str, int]


def scenarios(params: Params) -> list[Scenario]:
    n, q = params.inflight, params.queued
    return [
        Scenario(name="idle worker, no runs", target=False),
        Scenario(name=f"{n} runs in flight (blocked in a step)", held=n),
        Scenario(name=f"{q:,} runs waiting at a gate", waiting=q),
        Scenario(name=f"{q:,} runs queued, not due", not_due=q),
        Scenario(name=f"{n} in flight + {q:,} queued behind", held=n, behind=q),
    ]


def register(tide: Tidebase) -> None:
    # Only so that enqueue knows the queue; the worker process runs the real one.
    @tide.workflow(WORKFLOW)
    async def memory_hold(run: Run, input: Any) -> None:
        return None


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS, VmHWM and RssAnon of ``pid`` in MB (10**6 bytes, as in the target)."""
    wanted = {"VmRSS", "VmHWM", "RssAnon"}
    values: dict[str, float] = {}
    with open(f"/proc/{pid}/status", encoding="utf-8") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in wanted:
                values[key] = int(rest.split()[0]) * 1024 / 1e6
    return values


async def enqueue(tide: Tidebase, count: int, *, delay: float | None) -> None:
    for start in range(0, count, ENQUEUE_BATCH):
        size = min(ENQUEUE_BATCH, count - start)
        await tide.enqueue_many([RunSpec(workflow=WORKFLOW, delay=delay)] * size)


async def park_at_gate(tide: Tidebase, count: int) -> None:
    """``count`` runs waiting at a pending gate, as ``run.gate`` leaves them."""
    if not count:
        return
    await enqueue(tide, count, delay=3600.0)
    async with tide.store.connection() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO tidebase.gates (run_id, name, status, created_at) "
            "SELECT id, 'approve', 'pending', now() FROM tidebase.runs WHERE status = 'queued'"
        )
        await conn.execute(
            "UPDATE tidebase.runs SET status = 'waiting', released = released + 1 "
            "WHERE status = 'queued'"
        )


async def read_line(stream: TextReceiveStream, buffer: list[str]) -> str:
    """The next line from ``stream`` (``buffer`` keeps what came after it)."""
    while True:
        text = "".join(buffer)
        if "\n" in text:
            line, _, rest = text.partition("\n")
            buffer[:] = [rest]
            return line
        try:
            buffer.append(await stream.receive())
        except anyio.EndOfStream:
            raise BenchmarkError(f"the worker process exited early (output: {text!r})") from None


async def stop(process: anyio.abc.Process) -> None:
    with anyio.CancelScope(shield=True):
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with anyio.move_on_after(15):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def run_scenario(ctx: Context, scenario: Scenario) -> Result:
    async with fresh_tidebase(ctx, register) as tide:
        assert tide.dsn is not None
        await park_at_gate(tide, scenario.waiting)  # first: it parks every queued run
        await enqueue(tide, scenario.held + scenario.behind, delay=None)
        await enqueue(tide, scenario.not_due, delay=3600.0)
        command = [
            sys.executable,
            "-m",
            "benchmarks.memory_worker",
            "--dsn",
            tide.dsn,
            "--concurrency",
            str(CONCURRENCY),
            "--hold",
            str(scenario.held),
        ]
        process = await anyio.open_process(command, cwd=REPO, stdin=None, stderr=None)
        try:
            assert process.stdout is not None
            with anyio.fail_after(READY_TIMEOUT_S):
                line = await read_line(TextReceiveStream(process.stdout), [])
            ready: dict[str, Any] = json.loads(line)
            samples: list[dict[str, float]] = []
            for i in range(SAMPLES):
                if i:
                    await anyio.sleep(SAMPLE_INTERVAL_S)
                samples.append(proc_status(process.pid))
            counts = await count_runs(tide)
        except TimeoutError:
            raise BenchmarkError(
                f"memory: the worker was not ready within {READY_TIMEOUT_S:g}s ({scenario.name})"
            ) from None
        finally:
            await stop(process)
    expected = {
        "running": scenario.held,
        "queued": scenario.behind + scenario.not_due,
        "waiting": scenario.waiting,
    }
    got = {k: counts.get(k, 0) for k in expected}
    if got != expected or ready.get("inflight") != scenario.held:
        raise BenchmarkError(
            f"memory, {scenario.name}: expected {expected} and {scenario.held} in flight, "
            f"got {counts} and {ready.get('inflight')}"
        )
    rss = [s["VmRSS"] for s in samples]
    return Result(
        scenario=scenario,
        rss_mb=max(rss),
        hwm_mb=samples[-1]["VmHWM"],
        rss_anon_mb=samples[-1].get("RssAnon", math.nan),
        rss_samples_mb=rss,
        ready=ready,
        counts=counts,
    )


def _figures(results: list[Result]) -> list[Figure]:
    idle = results[0].rss_mb
    figures: list[Figure] = []
    for r in results:
        figures.append(
            Figure(
                name=f"{r.scenario.name}: RSS",
                value=r.rss_mb,
                unit="MB",
                target=RSS_TARGET if r.scenario.target else None,
            )
        )
        if r is not results[0]:
            figures.append(Figure(name="  over the idle worker", value=r.rss_mb - idle, unit="MB"))
        figures.append(Figure(name="  peak (VmHWM)", value=r.hwm_mb, unit="MB"))
    return figures


async def measure(ctx: Context) -> Measurement:
    params = PARAMS[ctx.mode]
    results = [await run_scenario(ctx, s) for s in scenarios(params)]
    details: dict[str, Any] = {
        "params": msgspec.to_builtins(params),
        "concurrency": CONCURRENCY,
        "worker": "python -m benchmarks.memory_worker (a separate process)",
        "waiting": "runs parked at a pending gate (status waiting, set in SQL)",
        "results": msgspec.to_builtins(results),
    }
    return Measurement(figures=_figures(results), details=details)
