"""What every compared system implements, and the timing helpers they share.

A system gets the DSN of a fresh, empty database for each measurement and installs
its own schema there. Throughput figures come back as counts and seconds; wake-up
figures as latencies. When a system cannot measure a figure it raises
``Unavailable`` (or anything else): the comparison prints "n/a" with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from typing import Any, Protocol

import anyio
import msgspec

from benchmarks.common import POLL_S

logger = logging.getLogger(__name__)

Settings = dict[str, Any]

# After the first job of a wake-up measurement, before the samples.
SETTLE_S = 0.5


class Unavailable(Exception):
    """This system cannot measure this figure; the message says why."""


class EnqueueResult(msgspec.Struct, frozen=True, kw_only=True):
    jobs: int
    seconds: float
    settings: Settings


class DrainResult(msgspec.Struct, frozen=True, kw_only=True):
    """``count`` jobs enqueued in batches with no worker running, then drained.

    ``drain_s`` runs from the first job claimed or started to the last one durably
    completed; ``startup_s`` from starting the worker to that first job.
    """

    jobs: int
    concurrency: int
    enqueue_s: float
    startup_s: float
    drain_s: float
    settings: Settings
    # First job started to last job started, where the system's handler saw it
    # (diagnostic: the rest of drain_s is the completion write).
    handlers_s: float | None = None
    # CPU seconds from starting the worker to the last job done (common.CpuClock):
    # the benchmark process's (the worker's) and the rest of the machine's (Postgres).
    cpu_client_s: float | None = None
    cpu_server_s: float | None = None


class WakeParams(msgspec.Struct, frozen=True, kw_only=True):
    samples: int
    # Discarded: the first samples prepare statements and warm pools.
    warmup: int
    # Pause before each sample so the worker is back in its idle wait.
    idle_s: float = 0.02
    # With gap_max_s > 0 the pause before each sample is uniform in [idle_s, gap_max_s]
    # (seeded): a polling system is then caught at every phase of its poll, and a
    # system's periodic work (heartbeats, maintenance, checkpoints) meets samples.
    gap_max_s: float = 0.0
    seed: int = 20
    # How rarely an idle worker polls, so that only its NOTIFY path can wake it.
    poll_interval_s: float = 30.0
    # Worker concurrency while idling (as in benchmarks/wakeup.py).
    concurrency: int = 16
    sample_timeout_s: float = 10.0


class WakeResult(msgspec.Struct, frozen=True, kw_only=True):
    latencies_ms: list[float]
    settings: Settings


class System(Protocol):
    key: str
    label: str

    async def enqueue_one_at_a_time(self, dsn: str, count: int) -> EnqueueResult: ...

    async def enqueue_and_drain(
        self, dsn: str, count: int, batch: int, concurrency: int
    ) -> DrainResult: ...

    async def wakeup(self, dsn: str, params: WakeParams) -> WakeResult: ...


def require(package: str) -> None:
    """Raise ``Unavailable`` when ``package`` is not installed."""
    if importlib.util.find_spec(package) is None:
        raise Unavailable(f"{package} is not installed (pip install -e '.[bench]')")


class Probe:
    """Called by a system's job handler as a job starts: counts jobs, keeps the
    ``perf_counter()`` of the first and the latest, and wakes one waiter."""

    def __init__(self) -> None:
        self.count = 0
        self.first: float | None = None
        self.last: float | None = None
        self._waiter: anyio.Event | None = None

    def hit(self) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        self.last = now
        self.count += 1
        if self._waiter is not None:
            self._waiter.set()

    def arm(self) -> anyio.Event:
        """A new event, set by the next ``hit()``."""
        self._waiter = anyio.Event()
        return self._waiter


def _check_alive(tasks: Sequence[asyncio.Task[None]]) -> None:
    for task in tasks:
        if task.done():
            exc = None if task.cancelled() else task.exception()
            why = f"{type(exc).__name__}: {exc}" if exc else "it returned"
            raise Unavailable(f"the worker stopped during the measurement ({why})")


async def wait_for_jobs(
    probe: Probe, count: int, workers: Sequence[asyncio.Task[None]], *, timeout_s: float
) -> None:
    """Poll the in-process counter every 2 ms until ``count`` jobs started."""
    deadline = time.perf_counter() + timeout_s
    while probe.count < count:
        _check_alive(workers)
        if time.perf_counter() > deadline:
            raise Unavailable(f"{probe.count} of {count} jobs started after {timeout_s:g}s")
        await anyio.sleep(POLL_S)


async def wait_for_zero(conn: Any, query: str, *, timeout_s: float, what: str) -> float:
    """Run ``query`` (a count) every 2 ms until it returns 0; return ``perf_counter()``
    right after the query that returned 0."""
    deadline = time.perf_counter() + timeout_s
    while (left := int(await conn.fetchval(query))) != 0:
        if time.perf_counter() > deadline:
            raise Unavailable(f"{left} {what} still left after {timeout_s:g}s")
        await anyio.sleep(POLL_S)
    return time.perf_counter()


@contextlib.asynccontextmanager
async def background(
    coro: Coroutine[Any, Any, None],
    stop: Callable[[asyncio.Task[None]], object],
    *,
    grace_s: float = 10.0,
) -> AsyncIterator[asyncio.Task[None]]:
    """Run a peer's worker coroutine as an asyncio task beside the caller; on leaving,
    ask it to stop with ``stop(task)``, wait up to ``grace_s``, then cancel it."""
    task = asyncio.create_task(coro)
    try:
        yield task
    finally:
        with anyio.CancelScope(shield=True):
            stop(task)
            done, _ = await asyncio.wait({task}, timeout=grace_s)
            if not done:
                logger.warning("a worker did not stop within %gs; cancelling it", grace_s)
                task.cancel()
                await asyncio.wait({task}, timeout=grace_s)
        if task.done() and not task.cancelled() and (exc := task.exception()) is not None:
            logger.warning("a worker ended with %s: %s", type(exc).__name__, exc)


def gaps(idle_s: float, gap_max_s: float, seed: int) -> Iterator[float]:
    """The pauses before wake-up samples: ``idle_s`` each, or uniform in
    ``[idle_s, gap_max_s]`` from a generator seeded with ``seed`` when ``gap_max_s``
    is larger (the same sequence for every system)."""
    rng = random.Random(seed)
    while True:
        yield idle_s if gap_max_s <= idle_s else rng.uniform(idle_s, gap_max_s)


async def wake_samples(
    probe: Probe,
    enqueue: Callable[[], Awaitable[object]],
    params: WakeParams,
    workers: Sequence[asyncio.Task[None]] = (),
) -> list[float]:
    """Sequential idle wake-up samples: pause, take ``t0``, enqueue one job, wait for
    the handler to start it; latency = handler start - ``t0``, in ms.

    First one job that the worker's start-up fetch may pick up (up to the poll
    interval), and a pause of ``SETTLE_S``, so that its LISTEN is in place."""
    ready = probe.arm()
    await enqueue()
    with anyio.move_on_after(max(params.poll_interval_s, params.sample_timeout_s) + 5):
        await ready.wait()
    if not ready.is_set():
        raise Unavailable("the worker did not start a first job")
    await anyio.sleep(SETTLE_S)
    latencies: list[float] = []
    pauses = gaps(params.idle_s, params.gap_max_s, params.seed)
    for n in range(params.warmup + params.samples):
        await anyio.sleep(next(pauses))
        _check_alive(workers)
        started = probe.arm()
        t0 = time.perf_counter()
        await enqueue()
        with anyio.move_on_after(params.sample_timeout_s):
            await started.wait()
        if not started.is_set() or probe.last is None:
            raise Unavailable(f"sample {n}: no job started within {params.sample_timeout_s:g}s")
        latencies.append((probe.last - t0) * 1000)
    return latencies[params.warmup :]
