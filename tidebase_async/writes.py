"""The fenced per-run writes of one worker, group-committed across its runs."""

from __future__ import annotations

from tidebase_async import errors
from tidebase_async.batching import Combiner
from tidebase_async.store import Checkpoint, Completion, Store


class RunWrites:
    """Checkpoints and completions of the runs one worker (lease owner) executes.

    Concurrent calls from many runs share statements (see ``batching``); each call
    returns once its own row committed.

    Raises (from each method):
        LeaseLost: the claim's fence did not hold: another worker owns the run now.
        StoreError: the database failed; the whole batch failed with it.
    """

    def __init__(self, store: Store, worker_id: str) -> None:
        self._store = store
        self.worker_id = worker_id
        self._checkpoints: Combiner[Checkpoint, bool] = Combiner(
            self._write_checkpoints, key=lambda c: c.run_id
        )
        self._completions: Combiner[Completion, bool] = Combiner(self._write_completions)

    async def checkpoint(self, item: Checkpoint) -> None:
        if not await self._checkpoints.submit(item):
            raise errors.LeaseLost(f"run {item.run_id} is no longer leased to this worker")

    async def complete(self, item: Completion) -> None:
        if not await self._completions.submit(item):
            raise errors.LeaseLost(f"run {item.run_id} is no longer leased to this worker")

    async def _write_checkpoints(self, items: list[Checkpoint]) -> list[bool]:
        held = await self._store.checkpoint_steps(worker_id=self.worker_id, items=items)
        return [item.run_id in held for item in items]

    async def _write_completions(self, items: list[Completion]) -> list[bool]:
        held = await self._store.complete_runs(worker_id=self.worker_id, items=items)
        return [item.run_id in held for item in items]
