"""Inserting runs, and notifications."""

from __future__ import annotations

from collections.abc import Sequence

from tidebase_async.store.base import StoreBase
from tidebase_async.store.records import EnqueueRow, NewRun, _batch_encoder
from tidebase_async.store.sql import Q
from tidebase_async.store.translate import _translate


class EnqueueMixin(StoreBase):
    """Enqueue runs; send notifications."""

    async def enqueue(self, run: NewRun) -> EnqueueRow:
        return (await self.enqueue_many([run]))[0]

    async def enqueue_many(self, runs: Sequence[NewRun]) -> list[EnqueueRow]:
        # One JSON document instead of twelve parameter arrays: msgspec encodes the
        # batch (inputs embedded as they are) far faster than asyncpg encodes arrays.
        batch = _batch_encoder.encode(runs)
        rows = await self._fetch_retrying_deadlocks("enqueue_many", Q["enqueue_runs"], batch)
        return [
            EnqueueRow(id=r[0], inserted=r[1], queue=r[2], dedupe_key=r[3], due=r[4]) for r in rows
        ]

    async def notify(self, messages: Sequence[tuple[str, str]]) -> None:
        """Send (channel, payload) notifications in one statement, outside any data
        transaction."""
        if not messages:
            return
        with _translate("notify"):
            await self._pool.execute(
                Q["notify"], [c for c, _ in messages], [p for _, p in messages]
            )
