"""Group commit for the worker's hottest writes, without background tasks.

Many runs finish (or checkpoint) at the same moment. Instead of one statement and one
commit each, concurrent callers of ``Combiner.submit`` are combined: while one batch
is being written, later callers queue up, and when it is done one of them writes
everything that queued meanwhile in a single multi-row statement. A caller returns
only after the statement holding its item committed, so "acknowledged means durable"
holds per item. With no contention a batch is one item and costs what a single
statement costs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

import anyio

from tidebase_async import errors

logger = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


class _Lead:
    """Set as a waiting entry's result to make its caller lead the next batch."""


_LEAD = _Lead()


class _Entry(Generic[In, Out]):
    __slots__ = ("future", "item", "size")

    def __init__(self, item: In, future: asyncio.Future[Out | _Lead], size: int) -> None:
        self.item = item
        self.future = future
        self.size = size


class Combiner(Generic[In, Out]):
    """Combines concurrent ``submit`` calls into batched ``write`` calls.

    ``write(items)`` must return one result per item, in order. ``key(item)``, when
    given, keeps two items with the same key out of one batch (a multi-row UPDATE
    touches each row once, so two checkpoints of one run must not share a statement).
    ``size(item)`` and ``max_bytes`` keep a batch's payload under a budget (Postgres
    refuses messages over 1 GB); a single item over it still goes alone.
    If ``write`` raises, every item of that batch gets the exception; if the writing
    task is cancelled, the others get ``ConnectionLost`` (the batch may or may not have
    committed), which the fenced-write retry resolves by checking what landed.

    At most one batch is written at a time. A caller waits on its own future only: the
    leader of a batch, once it is written, hands the lead to the oldest caller still
    waiting (by resolving its future with a token), which writes everything that
    queued meanwhile. So a caller is woken once, for its result or for its turn to
    lead, however many batches go by while it waits.
    """

    def __init__(
        self,
        write: Callable[[list[In]], Awaitable[list[Out]]],
        *,
        max_batch: int = 500,
        key: Callable[[In], Hashable] | None = None,
        size: Callable[[In], int] | None = None,
        max_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self._write = write
        self._max_batch = max_batch
        self._key = key
        self._size = size
        self._max_bytes = max_bytes
        self._pending: list[_Entry[In, Out]] = []
        # The caller that leads (writes a batch, or has been handed the lead and is
        # about to): the others wait their turn. None: nobody, the next caller leads.
        self._leader: _Entry[In, Out] | None = None
        self.batches = 0
        self.items = 0

    async def submit(self, item: In) -> Out:
        future: asyncio.Future[Out | _Lead] = asyncio.get_running_loop().create_future()
        entry = _Entry(item, future, self._size(item) if self._size else 0)
        self._pending.append(entry)
        lead = self._leader is None
        if lead:
            self._leader = entry
        try:
            while True:
                if lead:
                    lead = False
                    await self._lead(entry)
                    if not entry.future.done():
                        # Ours did not fit in the batch (a key or size conflict): we
                        # lead again, now that it is first in line.
                        lead = True
                        continue
                result = await entry.future
                if isinstance(result, _Lead):
                    entry.future = asyncio.get_running_loop().create_future()
                    lead = True
                    continue
                return result
        except BaseException:
            self._withdraw(entry)
            raise

    def _withdraw(self, entry: _Entry[In, Out]) -> None:
        """A caller leaves (cancelled, or its batch failed): take its item out of the
        queue if no batch has it yet, and pass on the lead if it holds it (cancelled
        before it wrote, or after it was handed the lead)."""
        for i, pending in enumerate(self._pending):
            if pending is entry:
                del self._pending[i]
                break
        if self._leader is entry:
            self._hand_on()
        elif entry.future.done() and not entry.future.cancelled():
            entry.future.exception()  # retrieved: its writer already reported it

    def _hand_on(self) -> None:
        """The lead passes to the oldest waiting caller; with none, nobody leads."""
        self._leader = None
        for entry in self._pending:
            if not entry.future.done():
                self._leader = entry
                entry.future.set_result(_LEAD)
                return

    async def _lead(self, own: _Entry[In, Out]) -> None:
        try:
            # One turn of the event loop first: callers made ready by the same event (a
            # claim's runs all finishing at once) join this batch instead of the next.
            await asyncio.sleep(0)
            batch = self._take()
            if not batch:
                return
            # Shielded against anyio cancellation: the batch belongs to every caller in
            # it. A native task.cancel() still gets through; then the others learn that
            # the outcome is unknown rather than that they were cancelled.
            with anyio.CancelScope(shield=True):
                try:
                    results = await self._write([e.item for e in batch])
                    if len(results) != len(batch):
                        raise RuntimeError(
                            f"batched write returned {len(results)} results for {len(batch)} items"
                        )
                except BaseException as exc:
                    interrupted = errors.ConnectionLost(
                        f"the batched write was interrupted ({type(exc).__name__}); "
                        "whether it committed is unknown"
                    )
                    for e in batch:
                        if e.future.done():
                            continue
                        if isinstance(exc, Exception) or e is own:
                            e.future.set_exception(exc)
                        else:
                            e.future.set_exception(interrupted)
                    if isinstance(exc, Exception):
                        return
                    raise
            for e, result in zip(batch, results, strict=True):
                if not e.future.done():
                    e.future.set_result(result)
            self.batches += 1
            self.items += len(batch)
        finally:
            # Our item written (or failed): the lead passes on. Still queued (it did not
            # fit this batch): we lead the next one ourselves.
            if own.future.done():
                self._hand_on()

    def _take(self) -> list[_Entry[In, Out]]:
        batch: list[_Entry[In, Out]] = []
        rest: list[_Entry[In, Out]] = []
        seen: set[Hashable] = set()
        budget = self._max_bytes
        for entry in self._pending:
            k = self._key(entry.item) if self._key is not None else None
            full = len(batch) >= self._max_batch or (batch and entry.size > budget)
            if full or (k is not None and k in seen):
                rest.append(entry)
                continue
            if k is not None:
                seen.add(k)
            budget -= entry.size
            batch.append(entry)
        self._pending = rest
        return batch
