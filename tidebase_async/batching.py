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

logger = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


class Combiner(Generic[In, Out]):
    """Combines concurrent ``submit`` calls into batched ``write`` calls.

    ``write(items)`` must return one result per item, in order. ``key(item)``, when
    given, keeps two items with the same key out of one batch (a multi-row UPDATE
    touches each row once, so two checkpoints of one run must not share a statement).
    If ``write`` raises, every item of that batch gets the exception.
    """

    def __init__(
        self,
        write: Callable[[list[In]], Awaitable[list[Out]]],
        *,
        max_batch: int = 500,
        key: Callable[[In], Hashable] | None = None,
    ) -> None:
        self._write = write
        self._max_batch = max_batch
        self._key = key
        self._pending: list[tuple[In, asyncio.Future[Out]]] = []
        self._busy = False
        self._idle = anyio.Event()
        self.batches = 0
        self.items = 0

    async def submit(self, item: In) -> Out:
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        entry = (item, future)
        self._pending.append(entry)
        try:
            while not future.done():
                if self._busy:
                    await self._idle.wait()
                    continue
                await self._lead()
        except BaseException:
            # Cancelled while queued: withdraw the item if no batch has taken it yet.
            if entry in self._pending:
                self._pending.remove(entry)
            elif future.done() and not future.cancelled():
                future.exception()  # retrieved: its writer already reported it
            raise
        return future.result()

    async def _lead(self) -> None:
        self._busy = True
        self._idle = anyio.Event()
        try:
            batch = self._take()
            if not batch:
                return
            items = [item for item, _ in batch]
            # Shielded: the batch belongs to every caller in it, not just to the one
            # writing it; cancelling the writer must not abort the others' write.
            with anyio.CancelScope(shield=True):
                try:
                    results = await self._write(items)
                except BaseException as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if isinstance(exc, Exception):
                        return
                    raise
            if len(results) != len(batch):
                raise RuntimeError("batched write returned the wrong number of results")
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
            self.batches += 1
            self.items += len(batch)
        finally:
            self._busy = False
            self._idle.set()

    def _take(self) -> list[tuple[In, asyncio.Future[Out]]]:
        if self._key is None:
            head = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            return head
        batch: list[tuple[In, asyncio.Future[Out]]] = []
        rest: list[tuple[In, asyncio.Future[Out]]] = []
        seen: set[Hashable] = set()
        for entry in self._pending:
            k = self._key(entry[0])
            if k in seen or len(batch) >= self._max_batch:
                rest.append(entry)
            else:
                seen.add(k)
                batch.append(entry)
        self._pending = rest
        return batch
