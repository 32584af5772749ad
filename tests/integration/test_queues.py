"""Queue controls (``tide.queues``) on a real Postgres.

Concurrency caps are checked across worker processes and across several clients in one
process, rate limits against the token bucket's documented bound, pause/resume against
NOTIFY latency (workers poll every 30 s), and bad input through ``tidebase.queues``
staying as it was. Priorities and fairness between queues are in test_claiming.py.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from tests.integration import procs
from tests.integration.core_support import eventually, working
from tidebase_async import ConfigurationError, Run, RunSpec, Tidebase
from tidebase_async.models import QueueInfo

# -- helpers ---------------------------------------------------------------------------


async def queue_rows(db: asyncpg.Connection) -> list[tuple[Any, ...]]:
    """Every stored control, as it is in the table."""
    rows = await db.fetch(
        "SELECT name, concurrency, rate_per_minute, paused, tokens, refilled_at"
        " FROM tidebase.queues ORDER BY name"
    )
    return [tuple(r) for r in rows]


async def count_status(db: asyncpg.Connection, queue: str, status: str) -> int:
    n: int = await db.fetchval(
        "SELECT count(*) FROM tidebase.runs WHERE queue = $1 AND status = $2", queue, status
    )
    return n


class RunningSampler:
    """Samples ``count(*)`` of a queue's running runs every few ms on its own connection."""

    def __init__(self) -> None:
        self.peak = 0
        self.samples = 0

    async def sample(self, dsn: str, queue: str) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            while True:
                n = await conn.fetchval(
                    "SELECT count(*) FROM tidebase.runs WHERE queue = $1 AND status = 'running'",
                    queue,
                )
                self.peak = max(self.peak, int(n))
                self.samples += 1
                await anyio.sleep(0.005)
        finally:
            with anyio.CancelScope(shield=True):
                await conn.close()


@contextlib.asynccontextmanager
async def sampling(dsn: str, queue: str) -> AsyncIterator[RunningSampler]:
    sampler = RunningSampler()
    async with anyio.create_task_group() as tg:
        tg.start_soon(sampler.sample, dsn, queue)
        yield sampler
        tg.cancel_scope.cancel()


def max_overlap(intervals: Sequence[tuple[datetime, datetime]]) -> int:
    """The largest number of intervals that share an instant (an interval that ends
    when another starts does not overlap it)."""
    edges = sorted(
        [(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
        key=lambda e: (e[0], e[1]),
    )
    peak = live = 0
    for _, delta in edges:
        live += delta
        peak = max(peak, live)
    return peak


class Gauge:
    """How many executions are inside the workflow body at once, in this process."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.total = 0

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        self.now += 1
        self.total += 1
        self.peak = max(self.peak, self.now)
        try:
            yield
        finally:
            self.now -= 1


# -- concurrency caps ------------------------------------------------------------------


async def test_concurrency_cap_of_two_holds_across_two_worker_processes(
    tide: Tidebase, db: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    """worker_app works the ``default`` queue; cap it at 2 with 2 x 8 slots available.

    Each run's interval [its nap step logged (after the claim committed), its
    finished_at (start of the finishing transaction, before that commit)] lies inside
    the time it really held a slot, on the database clock: more than two overlapping
    means the cap was exceeded. The workers poll every 30 s, so finishing the 16 naps of
    0.25 s in 8 waves within seconds needs the freed-slot NOTIFY to wake a claimer."""
    await procs.create_step_log(db)
    await tide.queues.configure("default", concurrency=2)
    n_runs, nap = 16, 0.25
    async with procs.Workers(dsn, tmp_path) as workers:
        first = await workers.start(name="first", concurrency=8, poll_interval=30)
        second = await workers.start(name="second", concurrency=8, poll_interval=30)
        async with sampling(dsn, "default") as sampler:
            began = time.monotonic()
            handles = await tide.enqueue_many([RunSpec(workflow="nap", input=nap)] * n_runs)
            ids = [h.id for h in handles]

            async def all_completed() -> bool:
                return await count_status(db, "default", "completed") == n_runs

            await procs.eventually(all_completed, timeout=20, what=f"{n_runs} runs to complete")
            elapsed = time.monotonic() - began
        assert workers.alive() == [first, second], [w.describe() for w in workers.procs]

    assert sampler.samples > 50, "the sampler barely ran"
    assert sampler.peak == 2, f"sampled {sampler.peak} running runs at once (cap 2)"
    rows = await db.fetch(
        "SELECT r.id, l.pid, l.at AS began, r.finished_at, r.attempt"
        " FROM tidebase.runs r JOIN step_log l ON l.run_id = r.id AND l.step = 'nap'"
        " WHERE r.id = ANY($1)",
        ids,
    )
    assert len(rows) == n_runs, "every run executed its step exactly once"
    assert all(r["attempt"] == 1 for r in rows)
    assert all(r["began"] < r["finished_at"] for r in rows)
    overlap = max_overlap([(r["began"], r["finished_at"]) for r in rows])
    assert overlap == 2, f"{overlap} runs overlapped under a cap of 2"
    # No slot leaked: nothing is left running or queued, and the counts say so.
    info = await tide.queues.get("default")
    assert info.counts == {"completed": n_runs}
    assert info.concurrency == 2
    # 8 waves of 0.25 s: a wave that waited for the 30 s poll would blow this.
    assert elapsed < 10, f"{n_runs} runs took {elapsed:.1f}s: freed slots did not wake workers"
    # Which process takes a freed slot is a race: the one that freed it claims again
    # in-process before its NOTIFY reaches the other, so under load one process may take
    # every slot. The cap held across both (above), and freed slots woke claimers in
    # time (elapsed), whichever took them.
    assert {r["pid"] for r in rows} <= {first.pid, second.pid}


async def test_concurrency_cap_is_exact_with_several_clients_racing_in_one_process(
    dsn: str, db: asyncpg.Connection
) -> None:
    """Four clients (pools of their own), each with a worker of 8 slots polling every
    20 ms, race for a queue capped at 3 with 60 short runs of varied length."""
    gauge = Gauge()
    n_runs, cap = 60, 3

    def register(t: Tidebase) -> None:
        @t.workflow("hammer", queue="hammered")
        async def hammer(run: Run, n: int) -> int:
            with gauge.inside():
                await anyio.sleep(0.005 * (n % 5))
            return n

    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(Tidebase(dsn)) for _ in range(4)]
        for t in clients:
            register(t)
        await clients[0].queues.configure("hammered", concurrency=cap)
        for t in clients:
            await stack.enter_async_context(working(t, concurrency=8, poll_interval=0.02))
        sampler = await stack.enter_async_context(sampling(dsn, "hammered"))
        await clients[1].enqueue_many([("hammer", n) for n in range(n_runs)])

        async def all_completed() -> bool:
            return await count_status(db, "hammered", "completed") == n_runs

        await eventually(all_completed, timeout=20, what="all runs completed")

    assert gauge.total == n_runs, "each run executed once"
    assert gauge.peak == cap, f"{gauge.peak} runs executed at once under a cap of {cap}"
    assert sampler.peak <= cap, f"sampled {sampler.peak} running runs under a cap of {cap}"
    assert await count_status(db, "hammered", "running") == 0


async def test_lowering_the_cap_stops_claims_until_running_runs_drop_below_it(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    release = anyio.Event()
    gauge = Gauge()

    @tide.workflow("held", queue="lower")
    async def held(run: Run) -> None:
        with gauge.inside():
            await release.wait()

    await tide.queues.configure("lower", concurrency=4)
    await tide.enqueue_many([("held", None)] * 6)
    async with working(tide, concurrency=8, poll_interval=30):
        await eventually(lambda: gauge.now == 4, what="4 runs running")
        await tide.queues.configure("lower", concurrency=1)
        # Wake the worker on purpose: it must still claim nothing while 4 > 1 run.
        await tide.enqueue("held")
        await anyio.sleep(0.4)
        assert gauge.total == 4
        release.set()
        await eventually(
            lambda: _completed(tide, "lower", 7), timeout=10, what="every run to complete"
        )
    assert gauge.peak == 4


async def _completed(tide: Tidebase, queue: str, n: int) -> bool:
    return (await tide.queues.get(queue)).counts.get("completed", 0) == n


async def test_concurrency_cap_and_pause(tide: Tidebase) -> None:
    running = 0
    peak = 0

    @tide.workflow("capped", queue="q")
    async def capped(run: Run) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.1)
        running -= 1

    await tide.queues.configure("q", concurrency=2)
    await tide.enqueue_many([("capped", None)] * 10)
    async with working(tide, concurrency=8):
        await eventually(lambda: _completed(tide, "q", 10), timeout=15, what="all completed")
    assert peak == 2
    await tide.queues.configure("q", paused=True)
    h = await tide.enqueue("capped")
    async with working(tide, concurrency=8):
        await anyio.sleep(0.5)
        assert (await tide.runs.get(h.id)).status == "queued"
        await tide.queues.configure("q", paused=False, concurrency=None)
        await tide.runs.wait(h.id, timeout=5)
    info = await tide.queues.get("q")
    assert (info.paused, info.concurrency, info.counts["completed"]) == (False, None, 11)


# -- rate limits -----------------------------------------------------------------------


async def test_rate_limit_follows_the_token_bucket_and_clearing_it_releases_the_rest(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    """120/min = 2/s with a bucket of one second's worth (2): claims in any window of
    the db clock [t0, t1] are at most 2 + 2 * (t1 - t0); the first 3 s see 6 to 8."""
    rate, capacity, n_runs = 120.0, 2.0, 20

    @tide.workflow("limited", queue="rated")
    async def limited(run: Run) -> None:
        return None

    await tide.queues.configure("rated", rate_per_minute=rate)
    await tide.enqueue_many([("limited", None)] * n_runs)

    async def started_at() -> list[datetime]:
        rows = await db.fetch(
            "SELECT started_at FROM tidebase.runs WHERE queue = 'rated'"
            " AND started_at IS NOT NULL ORDER BY started_at"
        )
        return [r[0] for r in rows]

    async with working(tide, concurrency=8, poll_interval=30):
        await eventually(started_at, what="a first claim")
        await anyio.sleep(3.3)
        starts = await started_at()
        t0 = starts[0]
        in_3s = [t for t in starts if (t - t0).total_seconds() <= 3.0]
        assert 6 <= len(in_3s) <= 8, f"{len(in_3s)} claims in the first 3 s at 2/s"
        for i in range(len(starts)):
            for j in range(i, len(starts)):
                window = (starts[j] - starts[i]).total_seconds()
                bound = capacity + rate * window / 60.0
                assert j - i + 1 <= bound + 1e-6, (
                    f"{j - i + 1} claims within {window:.3f}s; the bucket allows {bound:.2f}"
                )
        assert len(starts) < n_runs
        cleared = time.monotonic()
        info = await tide.queues.configure("rated", rate_per_minute=None)
        assert info.rate_per_minute is None
        await eventually(
            lambda: _completed(tide, "rated", n_runs), timeout=5, what="the rest to run"
        )
        # Rate-limited, the rest would need another ~(n_runs - 8) / 2 s.
        assert time.monotonic() - cleared < 2.0


async def test_rate_limit_holds_across_workers(dsn: str, db: asyncpg.Connection) -> None:
    """The bucket is in the database: six workers together get the rate of one."""
    rate, capacity = 600.0, 10.0  # 10/s, bucket of 10

    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(Tidebase(dsn)) for _ in range(6)]
        for t in clients:

            @t.workflow("limited", queue="shared_rate")
            async def limited(run: Run) -> None:
                return None

        await clients[0].queues.configure("shared_rate", rate_per_minute=rate)
        await clients[0].enqueue_many([("limited", None)] * 500)
        for t in clients:
            await stack.enter_async_context(working(t, concurrency=4, poll_interval=30))
        await anyio.sleep(3.0)
    starts = [
        r[0]
        for r in await db.fetch(
            "SELECT started_at FROM tidebase.runs WHERE started_at IS NOT NULL ORDER BY 1"
        )
    ]
    span = (starts[-1] - starts[0]).total_seconds()
    assert len(starts) >= 20, f"only {len(starts)} claims in 3 s at 10/s"
    # One token of slack: started_at is the claim transaction's start, not its lock time.
    worst = max(
        (j - i + 1) - (capacity + rate * (starts[j] - starts[i]).total_seconds() / 60.0)
        for i in range(len(starts))
        for j in range(i, len(starts))
    )
    assert worst <= 1.0, (
        f"{len(starts)} claims in {span:.2f}s at {rate:g}/min; a window exceeded the "
        f"bucket's bound by {worst:.1f} claims"
    )


# -- pause and resume ------------------------------------------------------------------


async def test_paused_queue_is_not_claimed_running_runs_finish_and_resume_is_prompt(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    release = anyio.Event()
    started: list[int] = []

    @tide.workflow("job", queue="pausable")
    async def job(run: Run, n: int) -> int:
        started.append(n)
        if n == 1:
            await release.wait()
        return n

    first = await tide.enqueue("job", input=1)
    async with working(tide, concurrency=4, poll_interval=30):
        await eventually(lambda: started == [1], what="run 1 to start")
        info = await tide.queues.configure("pausable", paused=True)
        assert info.paused
        await anyio.sleep(0.2)  # the worker hears of the pause (NOTIFY)
        second = await tide.enqueue("job", input=2)  # wakes the worker: it must not claim
        await anyio.sleep(0.5)
        assert started == [1]
        assert (await tide.runs.get(second.id)).status == "queued"
        # Running runs go on and finish while the queue is paused.
        release.set()
        assert await tide.runs.wait(first.id, timeout=5) == 1
        await anyio.sleep(0.3)
        assert (await tide.runs.get(second.id)).status == "queued"
        assert (await tide.queues.get("pausable")).counts == {"completed": 1, "queued": 1}

        resumed = time.monotonic()
        info = await tide.queues.configure("pausable", paused=False)
        assert not info.paused
        assert await tide.runs.wait(second.id, timeout=5) == 2
        # The worker polls every 30 s: only the NOTIFY can have woken it this soon.
        assert time.monotonic() - resumed < 2.0
    assert started == [1, 2]


async def test_paused_queue_is_not_claimed_even_by_a_worker_that_missed_the_pause(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    """The database enforces the pause: controls written without a NOTIFY (the worker's
    cache still says uncontrolled) still keep the fast-path claim away."""
    started: list[int] = []

    @tide.workflow("job", queue="silent")
    async def job(run: Run, n: int) -> None:
        started.append(n)

    async with working(tide, concurrency=4, poll_interval=30):
        await tide.enqueue("job", input=1)
        await eventually(lambda: started == [1], what="run 1 to run")
        await db.execute(
            "INSERT INTO tidebase.queues (name, paused, updated_at) VALUES ('silent', true, now())"
        )
        h = await tide.enqueue("job", input=2)
        await anyio.sleep(0.5)
        assert started == [1]
        assert (await tide.runs.get(h.id)).status == "queued"


async def test_worker_on_several_queues_keeps_working_the_others_while_one_is_paused(
    tide: Tidebase,
) -> None:
    ran: list[str] = []

    @tide.workflow("on_a", queue="qa")
    async def on_a(run: Run) -> None:
        ran.append("a")

    @tide.workflow("on_b", queue="qb")
    async def on_b(run: Run) -> None:
        ran.append("b")

    await tide.queues.configure("qa", paused=True)
    await tide.enqueue_many([("on_a", None)] * 3 + [("on_b", None)] * 3)
    async with working(tide, concurrency=2, poll_interval=30):
        await eventually(lambda: ran.count("b") == 3, what="queue b's runs")
        await anyio.sleep(0.3)
        assert ran == ["b"] * 3
        await tide.queues.configure("qa", paused=False)
        await eventually(lambda: len(ran) == 6, timeout=3, what="queue a's runs after resume")


# -- configure / list / get ------------------------------------------------------------


async def test_configure_sets_only_the_controls_given_and_none_clears_each(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    info = await tide.queues.configure("c", concurrency=3, rate_per_minute=90, paused=True)
    assert (info.name, info.concurrency, info.rate_per_minute, info.paused) == (
        "c",
        3,
        90.0,
        True,
    )

    async def stored() -> tuple[Any, ...]:
        row = await db.fetchrow(
            "SELECT concurrency, rate_per_minute, paused FROM tidebase.queues WHERE name = 'c'"
        )
        assert row is not None
        return tuple(row)

    # Omitted controls stay as they are.
    info = await tide.queues.configure("c")
    assert (info.concurrency, info.rate_per_minute, info.paused) == (3, 90.0, True)
    info = await tide.queues.configure("c", concurrency=5)
    assert (info.concurrency, info.rate_per_minute, info.paused) == (5, 90.0, True)
    assert await stored() == (5, 90.0, True)
    info = await tide.queues.configure("c", rate_per_minute=30.5)
    assert (info.concurrency, info.rate_per_minute, info.paused) == (5, 30.5, True)
    info = await tide.queues.configure("c", paused=False)
    assert (info.concurrency, info.rate_per_minute, info.paused) == (5, 30.5, False)
    assert await stored() == (5, 30.5, False)
    # None clears one control, leaving the others.
    info = await tide.queues.configure("c", concurrency=None)
    assert (info.concurrency, info.rate_per_minute, info.paused) == (None, 30.5, False)
    assert await stored() == (None, 30.5, False)
    await tide.queues.configure("c", concurrency=2)
    info = await tide.queues.configure("c", rate_per_minute=None)
    assert (info.concurrency, info.rate_per_minute, info.paused) == (2, None, False)
    assert await stored() == (2, None, False)
    info = await tide.queues.configure("c", concurrency=None)
    assert (info.concurrency, info.rate_per_minute, info.paused) == (None, None, False)
    assert await stored() == (None, None, False)
    # An int rate is stored as the float it is.
    info = await tide.queues.configure("c", rate_per_minute=7)
    assert info.rate_per_minute == 7.0
    assert await tide.queues.get("c") == info


async def test_cleared_controls_let_the_queue_run_freely(tide: Tidebase) -> None:
    gauge = Gauge()
    release = anyio.Event()

    @tide.workflow("free", queue="freed")
    async def free(run: Run) -> None:
        with gauge.inside():
            await release.wait()

    await tide.queues.configure("freed", concurrency=1, rate_per_minute=1.0)
    await tide.enqueue_many([("free", None)] * 5)
    async with working(tide, concurrency=8, poll_interval=30):
        await eventually(lambda: gauge.now == 1, what="one run")
        await anyio.sleep(0.3)
        assert gauge.total == 1
        await tide.queues.configure("freed", concurrency=None)
        await anyio.sleep(0.3)
        assert gauge.total == 1, "the rate (1/min, bucket 1) still holds the rest back"
        await tide.queues.configure("freed", rate_per_minute=None)
        await eventually(lambda: gauge.now == 5, timeout=2, what="all 5 running at once")
        release.set()
        await eventually(lambda: _completed(tide, "freed", 5), what="all completed")


async def test_list_and_get_show_controls_and_counts_by_status(tide: Tidebase) -> None:
    release = anyio.Event()

    @tide.workflow("w", queue="listed")
    async def w(run: Run, block: bool) -> None:
        if block:
            await release.wait()

    @tide.workflow("boom", queue="listed", max_attempts=1)
    async def boom(run: Run) -> None:
        raise ValueError("boom")

    @tide.workflow("other", queue="plain")
    async def other(run: Run) -> None:
        return None

    assert await tide.queues.list() == []
    await tide.queues.configure("controls_only", concurrency=7)
    await tide.enqueue_many([("w", False)] * 2 + [("w", True), ("boom", None)])
    await tide.enqueue("other")
    async with working(tide, concurrency=8, queues=["listed"]):
        await eventually(
            lambda: _counts(tide, "listed", {"completed": 2, "failed": 1, "running": 1}),
            what="2 completed, 1 failed, 1 running",
        )
        queued = await tide.enqueue("w", input=False, delay=3600)
        await tide.queues.configure("listed", paused=True, rate_per_minute=600)

        listed = await tide.queues.list()
        assert listed == [
            QueueInfo(name="controls_only", concurrency=7, counts={}),
            QueueInfo(
                name="listed",
                rate_per_minute=600.0,
                paused=True,
                counts={"completed": 2, "failed": 1, "running": 1, "queued": 1},
            ),
            QueueInfo(name="plain", counts={"queued": 1}),
        ]
        assert await tide.queues.get("listed") == listed[1]
        release.set()
        await eventually(
            lambda: _counts(tide, "listed", {"completed": 3, "failed": 1, "queued": 1}),
            what="the running run to complete while paused",
        )
    await tide.runs.cancel(queued.id)
    assert (await tide.queues.get("listed")).counts == {
        "completed": 3,
        "failed": 1,
        "cancelled": 1,
    }


async def _counts(tide: Tidebase, queue: str, expected: dict[str, int]) -> bool:
    return (await tide.queues.get(queue)).counts == expected


async def test_get_of_an_unknown_queue_is_empty_and_stores_nothing(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    info = await tide.queues.get("never-heard-of")
    assert info == QueueInfo(
        name="never-heard-of", concurrency=None, rate_per_minute=None, paused=False, counts={}
    )
    assert await queue_rows(db) == []
    assert await tide.queues.list() == []


# -- worker idles while a controlled queue holds it back -------------------------------


async def _commits_per_second(db: asyncpg.Connection) -> float:
    async def commits() -> int:
        await db.execute("SELECT pg_stat_clear_snapshot()")
        n: int = await db.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
        return n

    before = await commits()
    began = time.monotonic()
    await anyio.sleep(1.0)
    return (await commits() - before) / (time.monotonic() - began)


@pytest.mark.parametrize("control", ["paused", "capped"])
async def test_worker_does_not_busy_poll_a_queue_held_back_by_its_controls(
    tide: Tidebase, db: asyncpg.Connection, control: str
) -> None:
    @tide.workflow("w", queue="held")
    async def w(run: Run, s: float) -> None:
        await anyio.sleep(s)

    async with working(tide, poll_interval=30):
        await anyio.sleep(0.3)
        idle = await _commits_per_second(db)
    if control == "paused":
        await tide.queues.configure("held", paused=True)
    else:
        await tide.queues.configure("held", concurrency=1)
        await tide.enqueue("w", input=10)
    await tide.enqueue("w", input=0)
    async with working(tide, poll_interval=30):
        await anyio.sleep(0.3)
        held = await _commits_per_second(db)
    assert held < idle + 50, f"{held:.0f} commits/s with the queue {control}; idle {idle:.0f}"


# -- bad input -------------------------------------------------------------------------


BAD_CONTROLS: list[tuple[dict[str, Any], str]] = [
    ({"concurrency": 0}, "concurrency"),
    ({"concurrency": -1}, "concurrency"),
    ({"concurrency": 1.5}, "concurrency"),
    ({"concurrency": 2.0}, "concurrency"),
    ({"concurrency": True}, "concurrency"),
    ({"concurrency": False}, "concurrency"),
    ({"concurrency": "2"}, "concurrency"),
    ({"concurrency": 10**7}, "concurrency"),
    ({"rate_per_minute": 0}, "rate_per_minute"),
    ({"rate_per_minute": -1}, "rate_per_minute"),
    ({"rate_per_minute": -0.5}, "rate_per_minute"),
    ({"rate_per_minute": math.nan}, "rate_per_minute"),
    ({"rate_per_minute": math.inf}, "rate_per_minute"),
    ({"rate_per_minute": -math.inf}, "rate_per_minute"),
    ({"rate_per_minute": True}, "rate_per_minute"),
    ({"rate_per_minute": "60"}, "rate_per_minute"),
    ({"paused": "yes"}, "paused"),
    ({"paused": 1}, "paused"),
    ({"paused": None}, "paused"),
    # One bad control among good ones: the good ones are not stored either.
    ({"concurrency": 4, "rate_per_minute": 0, "paused": True}, "rate_per_minute"),
    ({"concurrency": 4, "rate_per_minute": 60, "paused": "no"}, "paused"),
]


@pytest.mark.parametrize(("controls", "names"), BAD_CONTROLS)
async def test_bad_control_raises_naming_it_and_stores_nothing(
    tide: Tidebase, db: asyncpg.Connection, controls: dict[str, Any], names: str
) -> None:
    await tide.queues.configure("kept", concurrency=2, rate_per_minute=30, paused=False)
    before = await queue_rows(db)
    for queue in ("kept", "fresh"):
        with pytest.raises(ConfigurationError, match=names) as caught:
            await tide.queues.configure(queue, **controls)
        bad = next(v for k, v in controls.items() if k == names)
        assert repr(bad) in str(caught.value)
    assert await queue_rows(db) == before


BAD_NAMES: list[tuple[object, str]] = [
    ("", "empty"),
    ("   ", "empty"),
    ("x" * 201, "201 characters"),
    ("a\x00b", "control characters"),
    ("tab\there", "control characters"),
    ("\ud800", "surrogate"),
    (5, "must be a str"),
    (None, "must be a str"),
    (b"bytes", "must be a str"),
]


@pytest.mark.parametrize(("name", "problem"), BAD_NAMES)
async def test_bad_queue_name_raises_naming_it_and_stores_nothing(
    tide: Tidebase, db: asyncpg.Connection, name: object, problem: str
) -> None:
    await tide.queues.configure("kept", concurrency=2)
    before = await queue_rows(db)
    with pytest.raises(ConfigurationError, match=f"queue name.*{problem}|{problem}.*queue"):
        await tide.queues.configure(name, concurrency=3)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="queue name"):
        await tide.queues.get(name)  # type: ignore[arg-type]
    assert await queue_rows(db) == before


async def test_configure_accepts_the_extremes(tide: Tidebase, db: asyncpg.Connection) -> None:
    info = await tide.queues.configure("edge", concurrency=1_000_000, rate_per_minute=1e-3)
    assert (info.concurrency, info.rate_per_minute) == (1_000_000, 1e-3)
    info = await tide.queues.configure("edge", concurrency=1, rate_per_minute=1e9)
    assert (info.concurrency, info.rate_per_minute) == (1, 1e9)
    odd = "名前 '; DROP TABLE tidebase.runs; --"
    info = await tide.queues.configure(odd, paused=True)
    assert (await tide.queues.get(odd)).paused
    assert [r[0] for r in await queue_rows(db)] == sorted(["edge", odd])


async def test_a_capped_queue_moves_on_when_a_run_finishes_even_without_notifications(
    tide: Tidebase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim made while the queue's running run was still writing its outcome finds
    the cap reached. When that run is done, the worker claims again at once, from its
    own bookkeeping: not only when a notification (lost here) or the next poll (30 s
    here) says so."""
    await tide.queues.configure("capped-one", concurrency=1)

    @tide.workflow("capped-one-run", queue="capped-one")
    async def capped(run: Run, input: int) -> int:
        return input

    monkeypatch.setattr(tide.notifier, "queues_changed", lambda *queues: None)
    handles = await tide.enqueue_many([("capped-one-run", i) for i in range(5)])
    async with working(tide, concurrency=2, poll_interval=30):
        for i, handle in enumerate(handles):
            assert await tide.runs.wait(handle.id, timeout=10) == i
