"""Replay cost: how soon a run with K completed steps reaches step K+1 after a crash.

The probe workflow loops K no-op steps (``noop``, ``noop#2``, ...) then a step ``next``
that returns ``perf_counter()`` as it starts. One sample:

1. ``enqueue`` a probe run with input K, delayed by an hour so that nobody claims it.
2. Write the history of a first attempt that crashed after K steps, straight in SQL,
   in the format ``checkpoint_step`` writes (``Run.step`` then replays it): the run is
   ``running`` under a dead worker's lease (attempt 1, step_count K), with K completed
   checkpoints (output ``null``) and their ``step.completed`` events.
3. With the worker idle (it polls every 30 s, so only NOTIFY wakes it): take ``t0``,
   expire that lease, requeue the run with the reconciler's own call
   (``Store.requeue_expired``) and notify the queue through the library's notifier,
   as the reconciler does after a crash.
4. The run's output is the start of step K+1. The worker's ``Store.claim`` and
   ``Store.load_steps`` are wrapped to time-stamp them, and the workflow function
   time-stamps its entry, which splits the total into wake-up (requeue committed to
   claim sent), claim statement, history load, and replay (history loaded to step K+1).

The target applies to claim -> step K+1 (claim statement, history load, replay): the
crash-to-requeue delay is the lease, and the wake-up is what ``wakeup`` measures; the
end-to-end figure is printed beside it. The history rows are written in one
transaction, so they sit together on the heap: the best case for the history load.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import anyio
import msgspec

from benchmarks.common import (
    BenchmarkError,
    Context,
    Measurement,
    connect,
    fresh_tidebase,
    running_worker,
)
from benchmarks.environment import Mode
from benchmarks.report import Figure, Target, percentile
from tidebase_async import Run, Tidebase
from tidebase_async.store import Store

NAME = "replay"
WORKFLOW = "replay-probe"
POLL_INTERVAL_S = 30.0
WORKER_CONCURRENCY = 16
CRASHED_WORKER = "bench-crashed-worker"
SAMPLE_TIMEOUT_S = 60.0
WARMUP_STEPS = 10

TARGETS: dict[int, Target] = {1_000: Target("<=", 20.0), 10_000: Target("<=", 150.0)}


class Params(msgspec.Struct, frozen=True, kw_only=True):
    sizes: tuple[int, ...]
    samples: int
    # Discarded runs with a short history first: they prepare the statements of the
    # claim and history load on the worker's pool connections.
    warmup: int = 3
    # Pause before each sample so the worker is back in its idle wait.
    idle_s: float = 0.05


PARAMS: dict[Mode, Params] = {
    "quick": Params(sizes=(1_000, 10_000), samples=10),
    "full": Params(sizes=(1_000, 10_000), samples=30),
}


class Sample(msgspec.Struct, frozen=True, kw_only=True):
    """Milliseconds. requeue + wakeup + claim + load + start + replay make up
    ``requeue_to_step_ms`` but for the gap between the claim and the history load."""

    steps: int
    setup_ms: float
    requeue_ms: float
    wakeup_ms: float
    claim_ms: float
    load_ms: float
    # History loaded to workflow function entered: scheduling the run's task.
    start_ms: float
    # Workflow function entered to step K+1 started: K replayed steps.
    replay_ms: float
    claim_to_step_ms: float
    requeue_to_step_ms: float


class Probe:
    """Time stamps: workflow entries (by run) and the worker's claims and history loads
    (the runs they returned, start, end)."""

    def __init__(self) -> None:
        self.entered: dict[UUID, float] = {}
        self.claims: dict[UUID, tuple[float, float]] = {}
        self.loads: dict[UUID, tuple[float, float]] = {}


@contextlib.contextmanager
def instrumented(store: Store, probe: Probe) -> Iterator[None]:
    """Wrap ``store.claim`` and ``store.load_steps`` on this instance to time-stamp
    them (the worker calls them through the same object)."""
    claim = store.claim
    load_steps = store.load_steps

    async def timed_claim(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        claimed = await claim(*args, **kwargs)
        t1 = time.perf_counter()
        for run in claimed:
            probe.claims[run.id] = (t0, t1)
        return claimed

    async def timed_load_steps(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        history = await load_steps(*args, **kwargs)
        t1 = time.perf_counter()
        for run_id in history:
            probe.loads[run_id] = (t0, t1)
        return history

    store.claim = timed_claim  # type: ignore[method-assign]
    store.load_steps = timed_load_steps  # type: ignore[method-assign]
    try:
        yield
    finally:
        del store.claim
        del store.load_steps


async def _noop() -> None:
    return None


async def _stamp() -> float:
    return time.perf_counter()


def register(probe: Probe) -> Any:
    def reg(tide: Tidebase) -> None:
        @tide.workflow(WORKFLOW)
        async def replay_probe(run: Run, input: int) -> float:
            probe.entered[run.id] = time.perf_counter()
            for _ in range(input):
                await run.step("noop", _noop)
            return float(await run.step("next", _stamp))

    return reg


# $1 run id, $2 K. The first attempt's claim and K checkpoints, as the library writes
# them (checkpoint_step: name with ordinal, status completed, attempts 1, run_attempt 1,
# output JSON null, one step.completed event each); the lease stays valid for an hour
# so the reconciler leaves the run alone until the sample starts.
CRASHED_HISTORY = """
WITH r AS (
  UPDATE tidebase.runs
  SET status = 'running', lease_owner = '{worker}', attempt = 1,
      lease_expires_at = tidebase.now() + interval '1 hour', run_at = tidebase.now(),
      started_at = tidebase.now(), updated_at = tidebase.now(),
      step_count = $2, event_seq = $2 + 2
  WHERE id = $1 AND status = 'queued' AND attempt = 0 AND event_seq = 1
  RETURNING id
), claimed AS (
  INSERT INTO tidebase.events (run_id, seq, type, at, data)
  SELECT id, 2, 'run.claimed', tidebase.now(),
         jsonb_build_object('worker', '{worker}', 'attempt', 1)
  FROM r
), s AS (
  INSERT INTO tidebase.steps
    (run_id, position, name, status, attempts, run_attempt, output, error,
     started_at, finished_at)
  SELECT r.id, g.i, CASE WHEN g.i = 0 THEN 'noop' ELSE 'noop#' || (g.i + 1) END,
         'completed', 1, 1, convert_to('null', 'UTF8'), NULL, tidebase.now(), tidebase.now()
  FROM r, generate_series(0, $2 - 1) AS g(i)
), e AS (
  INSERT INTO tidebase.events (run_id, seq, type, at, data)
  SELECT r.id, g.i + 3, 'step.completed', tidebase.now(),
         jsonb_build_object('name', CASE WHEN g.i = 0 THEN 'noop'
                                         ELSE 'noop#' || (g.i + 1) END,
                            'position', g.i + 1)
  FROM r, generate_series(0, $2 - 1) AS g(i)
)
SELECT count(*) FROM r
""".replace("{worker}", CRASHED_WORKER)

EXPIRE_LEASE = """
UPDATE tidebase.runs SET lease_expires_at = tidebase.now() - interval '1 millisecond'
WHERE id = $1 AND lease_owner = $2
"""


async def crashed_run(tide: Tidebase, conn: Any, steps: int) -> UUID:
    """A run whose first attempt completed ``steps`` steps, then its worker died."""
    handle = await tide.enqueue(WORKFLOW, input=steps, delay=3600)
    written = await conn.fetchval(CRASHED_HISTORY, handle.id, steps)
    if written != 1:
        raise BenchmarkError(f"could not write the crashed history of run {handle.id}")
    return handle.id


async def requeue(tide: Tidebase, conn: Any, run_id: UUID) -> None:
    """Expire the dead worker's lease, then requeue the run with the reconciler's own
    call and notify its queue, as the reconciler does."""
    await conn.execute(EXPIRE_LEASE, run_id, CRASHED_WORKER)
    swept = await tide.store.requeue_expired(limit=500)
    queues = {queue for rid, queue, status in swept if rid == run_id and status == "queued"}
    if queues:
        tide.notifier.queues_changed(*queues)
        return
    # The worker's reconciler got there first (it sweeps every second): it notified.
    status = await conn.fetchval("SELECT status FROM tidebase.runs WHERE id = $1", run_id)
    if status not in ("queued", "running", "completed"):
        raise BenchmarkError(f"run {run_id} was not requeued: {status}")


async def sample(tide: Tidebase, conn: Any, probe: Probe, steps: int, params: Params) -> Sample:
    """One crash and resume. The crashed history and the lease expiry are written
    through ``conn``, the benchmark's own connection; the requeue goes through the
    library's Store, as the reconciler's does."""
    s0 = time.perf_counter()
    run_id = await crashed_run(tide, conn, steps)
    setup_ms = (time.perf_counter() - s0) * 1000
    await anyio.sleep(params.idle_s)
    t0 = time.perf_counter()
    await requeue(tide, conn, run_id)
    t1 = time.perf_counter()
    step_at = float(await tide.runs.wait(run_id, timeout=SAMPLE_TIMEOUT_S))
    if run_id not in probe.claims:
        raise BenchmarkError(
            "the worker's claim was not seen: it no longer claims through Store.claim; "
            "update benchmarks/replay.py"
        )
    if run_id not in probe.loads:
        raise BenchmarkError(
            "the worker's history load was not seen: it no longer loads checkpoints "
            "through Store.load_steps; update benchmarks/replay.py"
        )
    claim0, claim1 = probe.claims[run_id]
    load0, load1 = probe.loads[run_id]
    entered = probe.entered[run_id]

    def ms(a: float, b: float) -> float:
        return (b - a) * 1000

    return Sample(
        steps=steps,
        setup_ms=setup_ms,
        requeue_ms=ms(t0, t1),
        wakeup_ms=ms(t1, claim0),
        claim_ms=ms(claim0, claim1),
        load_ms=ms(load0, load1),
        start_ms=ms(load1, entered),
        replay_ms=ms(entered, step_at),
        claim_to_step_ms=ms(claim0, step_at),
        requeue_to_step_ms=ms(t0, step_at),
    )


async def collect(ctx: Context, params: Params) -> list[Sample]:
    probe = Probe()
    samples: list[Sample] = []
    async with fresh_tidebase(ctx, register(probe)) as tide:
        assert tide.dsn is not None
        async with connect(tide.dsn) as conn:
            with instrumented(tide.store, probe):
                async with running_worker(
                    tide, concurrency=WORKER_CONCURRENCY, poll_interval=POLL_INTERVAL_S
                ):
                    for _ in range(params.warmup):
                        await sample(tide, conn, probe, WARMUP_STEPS, params)
                    for steps in params.sizes:
                        for _ in range(params.samples):
                            samples.append(await sample(tide, conn, probe, steps, params))
    return samples


def _figures(params: Params, samples: list[Sample]) -> list[Figure]:
    figures: list[Figure] = []
    for steps in params.sizes:
        mine = [s for s in samples if s.steps == steps]
        n = f"(n={len(mine)})"

        def p50(field: str, of: list[Sample] = mine) -> float:
            values = [getattr(s, field) for s in of]
            return percentile(values, 50) if values else math.nan

        figures += [
            Figure(
                name=f"K={steps:,}: claim -> step K+1, p50 {n}",
                value=p50("claim_to_step_ms"),
                unit="ms",
                target=TARGETS.get(steps),
            ),
            Figure(
                name=f"K={steps:,}: claim -> step K+1, max",
                value=max(s.claim_to_step_ms for s in mine),
                unit="ms",
            ),
            Figure(name="  claim statement, p50", value=p50("claim_ms"), unit="ms"),
            Figure(name=f"  history load ({steps:,} rows), p50", value=p50("load_ms"), unit="ms"),
            Figure(name="  run task started, p50", value=p50("start_ms"), unit="ms"),
            Figure(name=f"  replay of {steps:,} steps, p50", value=p50("replay_ms"), unit="ms"),
            Figure(
                name=f"K={steps:,}: requeue -> step K+1 (with NOTIFY wake-up), p50",
                value=p50("requeue_to_step_ms"),
                unit="ms",
            ),
            Figure(
                name="  wake-up (requeued -> claim sent), p50", value=p50("wakeup_ms"), unit="ms"
            ),
        ]
    return figures


async def measure(ctx: Context) -> Measurement:
    params = PARAMS[ctx.mode]
    samples = await collect(ctx, params)
    details: dict[str, Any] = {
        "params": msgspec.to_builtins(params),
        "poll_interval_s": POLL_INTERVAL_S,
        "worker_concurrency": WORKER_CONCURRENCY,
        "history": "written in SQL as checkpoint_step writes it; contiguous on the heap",
        "samples": msgspec.to_builtins(samples),
    }
    return Measurement(figures=_figures(params, samples), details=details)
