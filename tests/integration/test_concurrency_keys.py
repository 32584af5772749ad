"""Per-key concurrency and rate (``enqueue(concurrency_key=)``, ``queues.configure(
per_key_concurrency=, per_key_rate_per_minute=)``) on a real Postgres.

Caps are checked across worker processes (intervals on the database clock, per key),
fairness with a hot key enqueued first, the per-key token bucket against its documented
bound, runs without a key, and bad input leaving every row as it was.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from tests.integration import procs
from tests.integration.core_support import eventually, working
from tests.integration.test_cli import cli
from tests.integration.test_queues import count_status, max_overlap
from tidebase_async import ConfigurationError, Run, RunSpec, Tidebase


async def snapshot(db: asyncpg.Connection) -> list[tuple[Any, ...]]:
    runs = await db.fetch("SELECT id, concurrency_key, status FROM tidebase.runs ORDER BY id")
    queues = await db.fetch(
        "SELECT name, concurrency, rate_per_minute, paused, per_key_concurrency,"
        " per_key_rate_per_minute FROM tidebase.queues ORDER BY name"
    )
    return [tuple(r) for r in runs] + [tuple(r) for r in queues]


# -- caps ------------------------------------------------------------------------------


async def test_per_key_cap_holds_across_three_worker_processes(
    tide: Tidebase, db: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    """3 processes x 8 slots, 4 keys capped at 2 each (plus 6 runs without a key, not
    capped): per key, never more than 2 of its runs' [step logged, finished_at]
    intervals overlap, while keys run beside each other (up to 8 keyed runs at once)."""
    await procs.create_step_log(db)
    await tide.queues.configure("default", per_key_concurrency=2)
    keys = ["k0", "k1", "k2", "k3"]
    specs = [
        RunSpec(workflow="nap", input=0.15, concurrency_key=keys[i % 4]) for i in range(48)
    ] + [RunSpec(workflow="nap", input=0.3) for _ in range(6)]
    async with procs.Workers(dsn, tmp_path) as workers:
        for i in range(3):
            await workers.start(name=f"w{i}", concurrency=8, poll_interval=30)
        await tide.enqueue_many(specs)

        async def all_completed() -> bool:
            return await count_status(db, "default", "completed") == len(specs)

        await procs.eventually(all_completed, timeout=30, what="every run to complete")
    rows = await db.fetch(
        "SELECT r.concurrency_key AS key, l.at AS began, r.finished_at, l.pid"
        " FROM tidebase.runs r JOIN step_log l ON l.run_id = r.id AND l.step = 'nap'"
    )
    assert len(rows) == len(specs), "every run executed its step exactly once"
    per_key: dict[str | None, list[tuple[datetime, datetime]]] = defaultdict(list)
    for r in rows:
        per_key[r["key"]].append((r["began"], r["finished_at"]))
    for key in keys:
        assert max_overlap(per_key[key]) == 2, f"key {key}: cap 2 exceeded or never reached"
    keyed = [iv for k, ivs in per_key.items() if k is not None for iv in ivs]
    assert max_overlap(keyed) > 2, "keys never ran beside each other"
    # Runs without a key are not capped per key: all six overlapped at some point.
    assert max_overlap(per_key[None]) > 2
    assert len({r["pid"] for r in rows}) >= 2, "only one process ever claimed"
    assert await count_status(db, "default", "running") == 0


async def test_per_key_cap_is_exact_with_several_clients_racing_in_one_process(
    dsn: str, db: asyncpg.Connection
) -> None:
    """Four clients polling every 20 ms race for 60 runs over 3 keys capped at 1."""
    inside: dict[str, int] = defaultdict(int)
    peak: dict[str, int] = defaultdict(int)

    def register(t: Tidebase) -> None:
        @t.workflow("keyed", queue="keyed")
        async def keyed(run: Run, input: list[Any]) -> None:
            key, n = input
            inside[key] += 1
            peak[key] = max(peak[key], inside[key])
            try:
                await anyio.sleep(0.003 * (n % 4))
            finally:
                inside[key] -= 1

    async with working_clients(dsn, register, 4) as clients:
        await clients[0].queues.configure("keyed", per_key_concurrency=1)
        await clients[1].enqueue_many(
            [
                RunSpec(workflow="keyed", input=[f"k{n % 3}", n], concurrency_key=f"k{n % 3}")
                for n in range(60)
            ]
        )

        async def all_completed() -> bool:
            return await count_status(db, "keyed", "completed") == 60

        await eventually(all_completed, timeout=20, what="all runs completed")
    assert dict(peak) == {"k0": 1, "k1": 1, "k2": 1}


@contextlib.asynccontextmanager
async def working_clients(
    dsn: str, register: Callable[[Tidebase], None], n: int
) -> AsyncIterator[list[Tidebase]]:
    """``n`` clients (pools of their own), each with ``register`` applied and a worker
    of 8 slots polling every 20 ms."""
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(Tidebase(dsn)) for _ in range(n)]
        for t in clients:
            register(t)
        for t in clients:
            await stack.enter_async_context(working(t, concurrency=8, poll_interval=0.02))
        yield clients


# -- fairness --------------------------------------------------------------------------


async def test_a_hot_key_enqueued_first_does_not_starve_a_later_key(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    """1,000 runs of key A, then 10 of key B, per_key_concurrency 2, one worker at 8
    slots: B's runs all start while A has most of its runs still queued."""
    order: list[str] = []

    @tide.workflow("fair", queue="fair")
    async def fair(run: Run, key: str) -> None:
        order.append(key)
        await anyio.sleep(0.01)

    await tide.queues.configure("fair", per_key_concurrency=2)
    await tide.enqueue_many(
        [RunSpec(workflow="fair", input="A", concurrency_key="A") for _ in range(1000)]
    )
    await tide.enqueue_many(
        [RunSpec(workflow="fair", input="B", concurrency_key="B") for _ in range(10)]
    )
    async with working(tide, concurrency=8, poll_interval=0.5):
        await eventually(lambda: order.count("B") == 10, timeout=20, what="B's 10 runs started")
    first_b_done = order.index("B")
    last_b = len(order) - 1 - order[::-1].index("B")
    # Round robin: B's runs go 2 at a time beside A's 2, so all of them start within
    # about 2 x 10 claims, long before A's 1,000 drain.
    assert first_b_done <= 4, order[:10]
    assert last_b <= 30, f"B's last run started as number {last_b}"


async def test_many_keys_all_get_a_turn(tide: Tidebase, db: asyncpg.Connection) -> None:
    """300 keys with 3 runs each (enqueued key by key) and a cap of 1 per key: the first
    300 runs started are one of each key, in key turns (round robin), not FIFO."""
    started: list[str] = []

    @tide.workflow("turns", queue="turns")
    async def turns(run: Run, key: str) -> None:
        started.append(key)

    await tide.queues.configure("turns", per_key_concurrency=1)
    keys = [f"t{i:03d}" for i in range(300)]
    await tide.enqueue_many(
        [RunSpec(workflow="turns", input=k, concurrency_key=k) for k in keys for _ in range(3)]
    )
    async with working(tide, concurrency=16, poll_interval=0.5):
        await eventually(lambda: len(started) == 900, timeout=30, what="900 runs")
    assert set(started[:250]) <= set(keys) and len(set(started[:250])) >= 240


# -- rate ------------------------------------------------------------------------------


async def test_per_key_rate_limits_each_key_and_not_the_others(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    """120 claims per minute per key (bursts of 2, 2 per second after): over ~1.5 s a key
    gets at most 2 + 2 x elapsed claims, while 5 keys together get 5 times that and runs
    without a key are not limited."""
    started: dict[str | None, list[float]] = defaultdict(list)

    @tide.workflow("rated", queue="rated")
    async def rated(run: Run, key: str | None) -> None:
        started[key].append(time.monotonic())

    await tide.queues.configure("rated", per_key_rate_per_minute=120)
    keys = [f"r{i}" for i in range(5)]
    await tide.enqueue_many(
        [RunSpec(workflow="rated", input=k, concurrency_key=k) for k in keys for _ in range(20)]
        + [RunSpec(workflow="rated", input=None) for _ in range(20)]
    )
    began = time.monotonic()
    async with working(tide, concurrency=16, poll_interval=0.05):
        await anyio.sleep(1.5)
    elapsed = time.monotonic() - began
    assert len(started[None]) == 20, "runs without a key were held back"
    for k in keys:
        n = len(started[k])
        assert 2 <= n <= 2 + 2 * elapsed + 1, f"key {k}: {n} claims in {elapsed:.2f}s"
        # The bucket's bound: at most 2 + 2 x (time since the first) by any instant.
        t0 = started[k][0]
        for i, t in enumerate(started[k]):
            assert i + 1 <= 2 + 2 * (t - t0) + 1, f"key {k}: claim {i + 1} at {t - t0:.2f}s"
    buckets = await db.fetchval("SELECT count(*) FROM tidebase.key_buckets")
    assert buckets >= 5


# -- configure / list ------------------------------------------------------------------


async def test_configure_sets_keeps_and_clears_per_key_controls(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    info = await tide.queues.configure("q", per_key_concurrency=2, per_key_rate_per_minute=60)
    assert (info.per_key_concurrency, info.per_key_rate_per_minute) == (2, 60.0)
    info = await tide.queues.configure("q", concurrency=5)  # per-key left as they are
    assert (info.concurrency, info.per_key_concurrency, info.per_key_rate_per_minute) == (
        5,
        2,
        60.0,
    )
    info = await tide.queues.configure("q", per_key_rate_per_minute=None)
    assert (info.per_key_concurrency, info.per_key_rate_per_minute) == (2, None)
    got = await tide.queues.get("q")
    assert got.per_key_concurrency == 2 and got.concurrency == 5
    listed = {q.name: q for q in await tide.queues.list()}
    assert listed["q"].per_key_concurrency == 2
    await tide.queues.configure("q", per_key_concurrency=None, concurrency=None)
    got = await tide.queues.get("q")
    assert (got.concurrency, got.per_key_concurrency, got.per_key_rate_per_minute) == (
        None,
        None,
        None,
    )


async def test_clearing_per_key_caps_lets_a_key_run_freely(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    release = anyio.Event()
    inside = 0
    peak = 0

    @tide.workflow("held", queue="cleared")
    async def held(run: Run) -> None:
        nonlocal inside, peak
        inside += 1
        peak = max(peak, inside)
        try:
            await release.wait()
        finally:
            inside -= 1

    await tide.queues.configure("cleared", per_key_concurrency=1)
    await tide.enqueue_many([RunSpec(workflow="held", concurrency_key="x")] * 4)
    async with working(tide, concurrency=8, poll_interval=30):
        await eventually(lambda: inside == 1, what="one run of key x running")
        await anyio.sleep(0.3)
        assert inside == 1
        await tide.queues.configure("cleared", per_key_concurrency=None)
        await eventually(lambda: inside == 4, what="all four running once uncapped")
        release.set()
    assert peak == 4


async def test_queues_without_per_key_controls_ignore_keys(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    release = anyio.Event()
    inside = 0

    @tide.workflow("free", queue="free")
    async def free(run: Run) -> None:
        nonlocal inside
        inside += 1
        await release.wait()

    await tide.enqueue_many([RunSpec(workflow="free", concurrency_key="same")] * 5)
    async with working(tide, concurrency=8, poll_interval=30):
        await eventually(lambda: inside == 5, what="five runs of one key at once")
        release.set()
    assert (
        await db.fetchval("SELECT count(*) FROM tidebase.runs WHERE concurrency_key = 'same'") == 5
    )


async def test_queues_list_shows_per_key_controls(
    tide: Tidebase, dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await tide.queues.configure("tenants", per_key_concurrency=2, per_key_rate_per_minute=60)
    await tide.enqueue("any", queue="tenants", concurrency_key="t1")
    assert await cli("queues", "list", "--dsn", dsn) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "PER KEY" in lines[0]
    assert "2 running, 60/min" in lines[1]
    assert await cli("queues", "list", "--dsn", dsn, "--json") == 0
    [queue] = json.loads(capsys.readouterr().out)
    assert (queue["per_key_concurrency"], queue["per_key_rate_per_minute"]) == (2, 60.0)


# -- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["k" * 201, "", "tab\there", "nl\n", "del\x7f", "nul\x00", "\ud800", 42, b"bytes", ["k"]],
)
async def test_a_bad_concurrency_key_is_refused_and_nothing_written(
    tide: Tidebase, db: asyncpg.Connection, key: Any
) -> None:
    before = await snapshot(db)
    with pytest.raises(ConfigurationError, match="concurrency_key"):
        await tide.enqueue("any", concurrency_key=key)
    with pytest.raises(ConfigurationError, match="concurrency_key"):
        await tide.enqueue_many(
            [
                RunSpec(workflow="any", concurrency_key="ok"),
                RunSpec(workflow="any", concurrency_key=key),
            ]
        )
    assert await snapshot(db) == before


async def test_a_key_of_200_characters_is_stored(tide: Tidebase, db: asyncpg.Connection) -> None:
    h = await tide.enqueue("any", concurrency_key="é" * 200)
    assert (
        await db.fetchval("SELECT concurrency_key FROM tidebase.runs WHERE id = $1", h.id)
        == "é" * 200
    )


@pytest.mark.parametrize(
    "options",
    [
        {"per_key_concurrency": 0},
        {"per_key_concurrency": -1},
        {"per_key_concurrency": 1.5},
        {"per_key_concurrency": True},
        {"per_key_concurrency": "2"},
        {"per_key_concurrency": 2_000_000},
        {"per_key_rate_per_minute": 0},
        {"per_key_rate_per_minute": -3.0},
        {"per_key_rate_per_minute": float("nan")},
        {"per_key_rate_per_minute": float("inf")},
        {"per_key_rate_per_minute": "60"},
        {"per_key_rate_per_minute": False},
        {"per_key_concurrency": 2, "per_key_rate_per_minute": 0},
    ],
)
async def test_bad_per_key_controls_are_refused_and_nothing_written(
    tide: Tidebase, db: asyncpg.Connection, options: dict[str, Any]
) -> None:
    await tide.queues.configure("bad", per_key_concurrency=3)
    before = await snapshot(db)
    name = next(iter(k for k in options if k.startswith("per_key")))
    with pytest.raises(ConfigurationError, match=name if len(options) == 1 else "per_key"):
        await tide.queues.configure("bad", **options)
    assert await snapshot(db) == before


async def test_a_delayed_keyed_run_starts_when_due_without_waiting_for_the_poll(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    """A claim held back by a key at its cap must not make the worker ignore the due
    time of another key's delayed run (it polls every 30 s here)."""
    release = anyio.Event()
    started: list[str] = []

    @tide.workflow("delayed", queue="delayed")
    async def delayed(run: Run, key: str) -> None:
        started.append(key)
        await release.wait()

    await tide.queues.configure("delayed", per_key_concurrency=1)
    await tide.enqueue_many([RunSpec(workflow="delayed", input="busy", concurrency_key="busy")] * 2)
    async with working(tide, concurrency=4, poll_interval=30):
        await eventually(lambda: started == ["busy"], what="the busy key's first run")
        began = time.monotonic()
        await tide.enqueue("delayed", input="late", concurrency_key="late", delay=0.6)
        await eventually(lambda: "late" in started, timeout=5, what="the delayed run")
        assert 0.5 <= time.monotonic() - began < 3
        release.set()


async def test_the_reconciler_prunes_refilled_key_buckets(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    await tide.queues.configure("pruned", per_key_rate_per_minute=60)
    await db.execute(
        "INSERT INTO tidebase.key_buckets VALUES"
        " ('pruned', 'old', 0, now() - interval '2 seconds'),"
        " ('pruned', 'fresh', 0, now() + interval '1 hour'),"
        " ('gone', 'any', 0, now() + interval '1 hour')"
    )
    assert await tide.store.prune_key_buckets(limit=100) == 2
    left = await db.fetch("SELECT queue, concurrency_key FROM tidebase.key_buckets")
    assert [tuple(r) for r in left] == [("pruned", "fresh")]
