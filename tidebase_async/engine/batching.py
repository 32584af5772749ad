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


class _Entry(Generic[In, Out]):
    __slots__ = ("future", "item", "size")

    def __init__(self, item: In, future: asyncio.Future[Out], size: int) -> None:
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
        self._busy = False
        self._idle = anyio.Event()
        self.batches = 0
        self.items = 0

    async def submit(self, item: In) -> Out:
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        entry = _Entry(item, future, self._size(item) if self._size else 0)
        self._pending.append(entry)
        try:
            while not future.done():
                if self._busy:
                    await self._idle.wait()
                    continue
                await self._lead(entry)
        except BaseException:
            # Cancelled while queued: withdraw the item if no batch has taken it yet.
            for i, pending in enumerate(self._pending):
                if pending is entry:
                    del self._pending[i]
                    break
            else:
                if future.done() and not future.cancelled():
                    future.exception()  # retrieved: its writer already reported it
            raise
        return future.result()

    async def _lead(self, own: _Entry[In, Out]) -> None:
        self._busy = True
        self._idle = anyio.Event()
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
            self._busy = False
            self._idle.set()

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
