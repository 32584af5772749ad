"""Inserting runs, and notifications."""

from __future__ import annotations

from collections.abc import Sequence

import anyio

from tidebase_async import errors
from tidebase_async.store.base import StoreBase, logger
from tidebase_async.store.records import EnqueueRow, NewRun, _batch_encoder
from tidebase_async.store.sql import Q
from tidebase_async.store.translate import _translate


class EnqueueMixin(StoreBase):
    """Enqueue runs; send notifications."""

    async def enqueue(self, run: NewRun) -> EnqueueRow:
        return (await self.enqueue_many([run]))[0]

    async def enqueue_many(self, runs: Sequence[NewRun]) -> list[EnqueueRow]:
        """Insert ``runs`` (or find the active run of a dedupe key) in one statement.

        A lost connection (a failover, a restart) is ridden out for ``reconnect_s``:
        the runs the lost attempt may have committed are looked up by their ids (made
        by the client), and only the others are inserted again, so a retry never
        creates a run twice.
        """
        deadline = anyio.current_time() + self.reconnect_s
        delay = 0.05
        pending = list(runs)
        done: list[EnqueueRow] = []
        lost = False
        while True:
            try:
                if lost:
                    done += await self._enqueued(pending)
                    found = {row.id for row in done}
                    pending = [run for run in pending if run.id not in found]
                if pending:
                    done += await self._insert_runs(pending)
                return done
            except errors.ConnectionLost as exc:
                if anyio.current_time() + delay > deadline:
                    raise
                logger.info("enqueue: %s; retrying in %.2fs", exc, delay)
                lost = True
                await anyio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _insert_runs(self, runs: Sequence[NewRun]) -> list[EnqueueRow]:
        # One JSON document instead of twelve parameter arrays: msgspec encodes the
        # batch (inputs embedded as they are) far faster than asyncpg encodes arrays.
        batch = _batch_encoder.encode(runs)
        rows = await self._fetch_retrying_deadlocks("enqueue_many", Q["enqueue_runs"], batch)
        return [
            EnqueueRow(id=r[0], inserted=r[1], queue=r[2], dedupe_key=r[3], due=r[4]) for r in rows
        ]

    async def _enqueued(self, runs: Sequence[NewRun]) -> list[EnqueueRow]:
        with _translate("enqueue_many"):
            rows = await self._pool.fetch(Q["enqueued_runs"], [run.id for run in runs])
        return [
            EnqueueRow(id=r[0], inserted=True, queue=r[1], dedupe_key=r[2], due=r[3]) for r in rows
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
