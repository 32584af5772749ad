"""Which runs a worker claims, and in what order: priorities (FIFO within one), fairness
between queues (a backlog on one queue starves no other, controlled or not), and batch
claims that lock only the runs they lease."""

from __future__ import annotations

import anyio
import asyncpg
import pytest

from tests.integration.core_support import eventually, working
from tidebase_async import Run, RunSpec, Tidebase
from tidebase_async.store.sql import Q

# -- priorities and fairness -----------------------------------------------------------


@pytest.mark.parametrize("controlled", [False, True], ids=["uncontrolled", "capped"])
async def test_higher_priority_first_and_fifo_within_a_priority(
    tide: Tidebase, controlled: bool
) -> None:
    order: list[int] = []

    @tide.workflow("p", queue="prio")
    async def p(run: Run, n: int) -> None:
        order.append(n)

    if controlled:
        await tide.queues.configure("prio", concurrency=1)
    plan = [(1, 0), (2, 5), (3, -3), (4, 0), (5, 5), (6, 10), (7, 0), (8, -3), (9, 10), (10, 5)]
    for n, prio in plan:
        await tide.enqueue("p", input=n, priority=prio)
    async with working(tide, concurrency=1):
        await eventually(lambda: len(order) == len(plan), what="every run")
    expected = [n for n, _ in sorted(plan, key=lambda np: -np[1])]  # stable: FIFO ties
    assert expected == [6, 9, 2, 5, 10, 1, 4, 7, 3, 8]
    assert order == expected


async def test_batch_enqueued_runs_of_one_priority_run_in_batch_order(tide: Tidebase) -> None:
    order: list[int] = []

    @tide.workflow("p")
    async def p(run: Run, n: int) -> None:
        order.append(n)

    await tide.enqueue_many([RunSpec(workflow="p", input=n, priority=n % 2) for n in range(40)])
    async with working(tide, concurrency=1):
        await eventually(lambda: len(order) == 40, what="every run")
    assert order == list(range(1, 40, 2)) + list(range(0, 40, 2))


async def test_priority_order(tide: Tidebase) -> None:
    order: list[int] = []

    @tide.workflow("p")
    async def p(run: Run, n: int) -> None:
        order.append(n)

    for n, prio in [(1, 0), (2, 5), (3, 0), (4, 5), (5, 10)]:
        await tide.enqueue("p", input=n, priority=prio)
    async with working(tide, concurrency=1):
        await eventually(lambda: len(order) == 5, what="all ran")
    assert order == [5, 2, 4, 1, 3]


async def _fair_order(tide: Tidebase, *, concurrency: int) -> list[str]:
    """Queue A has 200 old runs, then queue B gets 5; return the start order until B's
    five have started."""
    order: list[str] = []

    @tide.workflow("on_a", queue="backlog")
    async def on_a(run: Run) -> None:
        order.append("a")

    @tide.workflow("on_b", queue="fresh")
    async def on_b(run: Run) -> None:
        order.append("b")

    await tide.enqueue_many([("on_a", None)] * 200)
    await anyio.sleep(0.01)
    await tide.enqueue_many([("on_b", None)] * 5)
    async with working(tide, concurrency=concurrency, queues=["backlog", "fresh"]):
        await eventually(lambda: order.count("b") == 5, timeout=20, what="B's runs")
    return order


@pytest.mark.parametrize(
    "concurrency",
    [1, 8],
)
async def test_a_backlog_on_one_queue_does_not_starve_another(
    tide: Tidebase, concurrency: int
) -> None:
    order = await _fair_order(tide, concurrency=concurrency)
    positions = [i for i, q in enumerate(order) if q == "b"]
    assert positions[-1] < 20, f"B's runs started at positions {positions}"


@pytest.mark.parametrize(
    ("controlled", "concurrency"),
    [
        ("backlog", 1),
        ("backlog", 4),
        ("fresh", 1),
        ("fresh", 4),
    ],
)
async def test_a_capped_queue_and_an_uncontrolled_one_share_a_worker(
    tide: Tidebase, controlled: str, concurrency: int
) -> None:
    """One of the two queues is controlled (a generous cap that never binds): claims
    alternate between the controlled queue and the uncontrolled one."""
    await tide.queues.configure(controlled, concurrency=1000)
    order = await _fair_order(tide, concurrency=concurrency)
    positions = [i for i, q in enumerate(order) if q == "b"]
    assert positions[-1] < 20, f"B's runs started at positions {positions}"


async def test_one_run_claims_do_not_starve_an_uncontrolled_queue(tide: Tidebase) -> None:
    """Regression: one rotation counter served two rotations (over controlled and over
    uncontrolled queues), so one-run claims could starve an uncontrolled queue."""
    order: list[str] = []

    for queue in ("a", "b", "c"):

        @tide.workflow(f"in-{queue}", queue=queue)
        async def record(run: Run, q: str = queue) -> None:
            order.append(q)
            await anyio.sleep(0.01)

    await tide.queues.configure("c", concurrency=100)  # controlled, never binding
    await tide.enqueue("in-a", input="a")  # first of all
    await tide.enqueue_many([("in-b", "b")] * 8 + [("in-c", "c")] * 8)
    async with working(tide, queues=["a", "b", "c"], concurrency=1):
        await eventually(lambda: len(order) == 17, timeout=20, what="all ran")
    assert order.index("a") < 4, f"queue a ran at position {order.index('a')}: {order}"


# -- batch claims ----------------------------------------------------------------------


async def test_claim_many_does_not_lock_runs_it_does_not_lease(tide: Tidebase, dsn: str) -> None:
    """Regression: claim_runs_many locked up to its limit of runs in every queue but leased
    only its limit in all, so a concurrent claimer found free runs locked and got fewer."""
    for queue in ("a", "b"):
        for _ in range(2):
            await tide.enqueue("w", queue=queue)
    holder = await asyncpg.connect(dsn)
    try:
        async with holder.transaction():
            # The statement of a claimer, its row locks held as they are while it runs.
            first = await holder.fetch(Q["claim_runs_many"], "w1", ["a", "b"], 30.0, 2, 1, [])
            assert len(first) == 2
            second = await tide.store.claim(
                worker_id="w2", queues=["a", "b"], limit=2, lease_s=30.0
            )
            assert len(second) == 2, (
                f"2 runs are free to claim; the second claimer got {len(second)}"
            )
    finally:
        await holder.close()
