"""The fenced checkpoints and completions of one lease owner (a worker or an inline
run), group-committed across its runs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar
from uuid import UUID

from tidebase_async import errors
from tidebase_async.engine.batching import Combiner
from tidebase_async.store import Checkpoint, Completion, Store

T = TypeVar("T", Checkpoint, Completion)
Outcome = bool | errors.StoreError


class RunWrites:
    """Checkpoints and completions of the runs one worker (lease owner) executes.

    Concurrent calls from many runs share statements (see ``batching``); each call
    returns once its own row committed. When a shared statement fails for a reason
    other than the connection, each item is written again on its own, so one bad item
    fails only its own run.

    Raises (from each method):
        LeaseLost: the claim's fence did not hold: another worker owns the run now.
        StoreError: the database failed this item.
    """

    def __init__(self, store: Store, worker_id: str) -> None:
        self._store = store
        self.worker_id = worker_id
        self._checkpoints: Combiner[Checkpoint, Outcome] = Combiner(
            self._write_checkpoints,
            key=lambda c: c.run_id,
            size=lambda c: len(c.output or b"") + len(c.error or b""),
        )
        self._completions: Combiner[Completion, Outcome] = Combiner(
            self._write_completions, size=lambda c: len(c.output)
        )

    async def checkpoint(self, item: Checkpoint) -> None:
        _raise_for(item.run_id, await self._checkpoints.submit(item))

    async def complete(self, item: Completion) -> None:
        _raise_for(item.run_id, await self._completions.submit(item))

    async def _write_checkpoints(self, items: list[Checkpoint]) -> list[Outcome]:
        return await _each_if_batch_fails(
            items,
            lambda batch: self._store.checkpoint_steps(worker_id=self.worker_id, items=batch),
        )

    async def _write_completions(self, items: list[Completion]) -> list[Outcome]:
        return await _each_if_batch_fails(
            items,
            lambda batch: self._store.complete_runs(worker_id=self.worker_id, items=batch),
        )


def _raise_for(run_id: UUID, outcome: Outcome) -> None:
    if isinstance(outcome, errors.StoreError):
        raise outcome
    if not outcome:
        raise errors.LeaseLost(f"run {run_id} is no longer leased to this worker")


async def _each_if_batch_fails(
    items: Sequence[T], write: Callable[[list[T]], Awaitable[set[UUID]]]
) -> list[Outcome]:
    try:
        held = await write(list(items))
        return [item.run_id in held for item in items]
    except errors.ConnectionLost:
        raise  # nothing to learn from trying each: let every caller retry
    except errors.StoreError as exc:
        if len(items) == 1:
            return [exc]
    outcomes: list[Outcome] = []
    for item in items:
        try:
            outcomes.append(item.run_id in await write([item]))
        except errors.ConnectionLost:
            raise
        except errors.StoreError as exc:
            outcomes.append(exc)
    return outcomes
