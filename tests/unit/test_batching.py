"""The group-commit ``Combiner`` (engine/batching.py), without a database: who leads a
batch, who joins it, what every caller gets back when it succeeds, fails or is
cancelled, and the order items are written in."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

import anyio
import pytest

from tidebase_async import errors
from tidebase_async.engine.batching import Combiner


class Writes:
    """A batched write that records each batch and answers ``item * 10`` per item.

    While ``hold`` is set, a write blocks after recording its batch until ``release()``
    (``writing`` tells the test that a batch is in flight). The batches numbered in
    ``failing`` (1 is the first) raise ``failure`` instead."""

    def __init__(self, *, hold: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.writing = asyncio.Event()
        self.failing: set[int] = set()
        self.failure = errors.StoreError("the batch failed")
        self._go = asyncio.Event()
        if not hold:
            self._go.set()

    def release(self) -> None:
        self._go.set()

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.writing.set()
        number = len(self.batches)
        await self._go.wait()
        if number in self.failing:
            raise self.failure
        return [item * 10 for item in items]


async def settle() -> None:
    """Let every ready task run until it waits again."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_lone_submit_is_written_alone_and_gets_its_result() -> None:
    writes = Writes()
    combiner: Combiner[int, int] = Combiner(writes)
    assert await combiner.submit(7) == 70
    assert writes.batches == [[7]]
    assert (combiner.batches, combiner.items) == (1, 1)


async def test_callers_made_ready_together_share_one_batch() -> None:
    writes = Writes()
    combiner: Combiner[int, int] = Combiner(writes)
    results = await asyncio.gather(*(combiner.submit(i) for i in range(1, 6)))
    assert results == [10, 20, 30, 40, 50]
    assert writes.batches == [[1, 2, 3, 4, 5]]


async def test_callers_that_arrive_during_a_write_follow_in_one_batch_led_by_one_of_them() -> None:
    writes = Writes(hold=True)
    combiner: Combiner[int, int] = Combiner(writes)
    leader = asyncio.create_task(combiner.submit(1))
    await writes.writing.wait()
    followers = [asyncio.create_task(combiner.submit(i)) for i in (2, 3, 4)]
    await settle()
    # The followers wait for the batch in flight; none of them writes meanwhile.
    assert writes.batches == [[1]]
    assert not any(f.done() for f in followers)
    writes.release()
    assert await leader == 10
    assert [await f for f in followers] == [20, 30, 40]
    assert writes.batches == [[1], [2, 3, 4]]
    assert (combiner.batches, combiner.items) == (2, 4)


async def test_items_are_written_in_submission_order_and_answered_by_position() -> None:
    writes = Writes(hold=True)
    combiner: Combiner[int, int] = Combiner(writes)
    first = asyncio.create_task(combiner.submit(9))
    await writes.writing.wait()
    later = [asyncio.create_task(combiner.submit(i)) for i in (5, 1, 8, 3)]
    await settle()
    writes.release()
    await first
    # Each caller gets the result at its item's position, not just any result.
    assert [await t for t in later] == [50, 10, 80, 30]
    assert writes.batches == [[9], [5, 1, 8, 3]]


async def test_items_with_the_same_key_go_in_separate_batches_in_order() -> None:
    writes = Writes()
    keys = {1: "a", 2: "a", 3: "b", 4: "a"}

    def key(item: int) -> Hashable:
        return keys[item]

    combiner: Combiner[int, int] = Combiner(writes, key=key)
    results = await asyncio.gather(*(combiner.submit(i) for i in (1, 2, 3, 4)))
    assert results == [10, 20, 30, 40]
    # One item per key and batch; a deferred item keeps its place ahead of later ones.
    assert writes.batches == [[1, 3], [2], [4]]


async def test_a_batch_stays_within_max_batch_and_its_byte_budget() -> None:
    writes = Writes()
    by_count: Combiner[int, int] = Combiner(writes, max_batch=2)
    await asyncio.gather(*(by_count.submit(i) for i in range(1, 6)))
    assert writes.batches == [[1, 2], [3, 4], [5]]

    writes.batches.clear()
    by_size: Combiner[int, int] = Combiner(writes, size=lambda item: item, max_bytes=10)
    # 4 + 5 fit the budget; 6 does not fit beside them; 20 is over it, and goes alone.
    await asyncio.gather(*(by_size.submit(i) for i in (4, 5, 6, 20)))
    assert writes.batches == [[4, 5], [6], [20]]


async def test_a_failing_batch_raises_in_every_waiter_of_that_batch_only() -> None:
    writes = Writes(hold=True)
    writes.failing = {2}
    combiner: Combiner[int, int] = Combiner(writes)
    leader = asyncio.create_task(combiner.submit(1))
    await writes.writing.wait()
    followers = [asyncio.create_task(combiner.submit(i)) for i in (2, 3, 4)]
    await settle()
    writes.release()
    outcomes = await asyncio.gather(leader, *followers, return_exceptions=True)
    assert writes.batches == [[1], [2, 3, 4]]
    # The first batch succeeded; the second fails for every caller in it, each with
    # the write's own exception.
    assert outcomes == [10, writes.failure, writes.failure, writes.failure]
    # The combiner is not stuck: the next caller leads a batch of its own.
    assert await combiner.submit(5) == 50
    assert writes.batches[-1] == [5]


async def test_a_write_that_answers_the_wrong_number_of_items_fails_every_caller() -> None:
    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    combiner: Combiner[int, int] = Combiner(short)
    outcomes = await asyncio.gather(
        *(combiner.submit(i) for i in (1, 2, 3)), return_exceptions=True
    )
    assert all(isinstance(o, RuntimeError) for o in outcomes)


async def test_a_cancelled_waiter_is_withdrawn_and_the_others_are_written() -> None:
    writes = Writes(hold=True)
    combiner: Combiner[int, int] = Combiner(writes)
    leader = asyncio.create_task(combiner.submit(1))
    await writes.writing.wait()
    stays = asyncio.create_task(combiner.submit(2))
    leaves = asyncio.create_task(combiner.submit(3))
    await settle()
    leaves.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaves
    writes.release()
    assert await leader == 10
    assert await stays == 20
    # The cancelled caller's item was never written.
    assert writes.batches == [[1], [2]]


async def test_cancelling_the_writing_caller_tells_the_others_the_outcome_is_unknown() -> None:
    writes = Writes(hold=True)
    combiner: Combiner[int, int] = Combiner(writes)
    writer = asyncio.create_task(combiner.submit(1))
    joined = asyncio.create_task(combiner.submit(2))
    await writes.writing.wait()
    assert writes.batches == [[1, 2]]
    writer.cancel()  # a native cancel gets through the shield
    with pytest.raises(asyncio.CancelledError):
        await writer
    # The batch may or may not have committed: the fenced-write retry checks.
    with pytest.raises(errors.ConnectionLost):
        await joined
    writes.release()
    assert await combiner.submit(3) == 30


async def test_a_writer_whose_scope_is_cancelled_still_writes_the_batch_for_everyone() -> None:
    writes = Writes(hold=True)
    combiner: Combiner[int, int] = Combiner(writes)
    writer_scope = anyio.CancelScope()
    joined: list[int] = []

    async def writer() -> None:
        with writer_scope:
            await combiner.submit(1)

    async def joiner() -> None:
        joined.append(await combiner.submit(2))

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer)
        tg.start_soon(joiner)
        await writes.writing.wait()
        assert writes.batches == [[1, 2]]
        writer_scope.cancel()
        await settle()
        # The batch belongs to every caller in it: the write is shielded, goes on...
        assert not joined
        writes.release()
    # ...and the other caller gets its result, from that one write.
    assert joined == [20]
    assert writes.batches == [[1, 2]]


async def test_a_leader_cancelled_before_it_writes_hands_the_lead_on() -> None:
    """The leader yields one loop turn before taking its batch: cancelled there, the
    callers queued behind it must still be written (none may wait forever)."""
    writes = Writes()
    combiner: Combiner[int, int] = Combiner(writes)
    leader = asyncio.create_task(combiner.submit(1))
    follower = asyncio.create_task(combiner.submit(2))
    # One turn: the leader reaches its one-turn wait, the follower queues behind it.
    await asyncio.sleep(0)
    assert writes.batches == []
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    with anyio.fail_after(2):
        assert await follower == 20
    assert writes.batches == [[2]]
    assert await combiner.submit(3) == 30


async def test_a_caller_cancelled_after_being_handed_the_lead_passes_it_on() -> None:
    writes = Writes(hold=True)
    combiner: Combiner[int, int] = Combiner(writes)
    first = asyncio.create_task(combiner.submit(1))
    await writes.writing.wait()
    second = asyncio.create_task(combiner.submit(2))
    third = asyncio.create_task(combiner.submit(3))
    await settle()
    writes.release()
    assert await first == 10
    # The first writer handed the lead to the second caller, which has not run yet:
    # cancelled now, it must pass the lead to the third.
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    with anyio.fail_after(2):
        assert await third == 30
    assert writes.batches[0] == [1]
    assert 3 in writes.batches[-1]
