"""Inserting runs, and notifications."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import asyncpg

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
        if len(runs) == 1:
            rows = await self._fetch_retrying_deadlocks(
                "enqueue_many", Q["enqueue_run"], *_run_args(runs[0])
            )
            return [_enqueued_row(r) for r in rows]
        # One JSON document instead of sixteen parameter arrays: msgspec encodes the
        # batch (inputs embedded as they are) far faster than asyncpg encodes arrays.
        batch = _batch_encoder.encode(runs)
        if any(run.dedupe_key is not None for run in runs):
            rows = await self._fetch_retrying_deadlocks("enqueue_many", Q["enqueue_runs"], batch)
            return [_enqueued_row(r) for r in rows]
        (row,) = await self._fetch_retrying_deadlocks(
            "enqueue_many", Q["enqueue_runs_plain"], batch
        )
        if row[0] != len(runs):
            raise errors.StoreError(f"enqueue_many: {row[0]} of {len(runs)} runs were inserted")
        return [EnqueueRow(id=r.id, inserted=True, queue=r.queue, dedupe_key=None) for r in runs]

    async def _enqueued(self, runs: Sequence[NewRun]) -> list[EnqueueRow]:
        with _translate("enqueue_many"):
            rows = await self._pool.fetch(Q["enqueued_runs"], [run.id for run in runs])
        return [EnqueueRow(id=r[0], inserted=True, queue=r[1], dedupe_key=r[2]) for r in rows]

    async def notify(self, messages: Sequence[tuple[str, str]]) -> None:
        """Send (channel, payload) notifications in one statement, outside any data
        transaction."""
        if not messages:
            return
        with _translate("notify"):
            await self._pool.execute(
                Q["notify"], [c for c, _ in messages], [p for _, p in messages]
            )


def _enqueued_row(r: asyncpg.Record) -> EnqueueRow:
    return EnqueueRow(id=r[0], inserted=r[1], queue=r[2], dedupe_key=r[3])


def _run_args(run: NewRun) -> tuple[object, ...]:
    """The parameters of ``enqueue_run``: jsonb values as encoded bytes."""
    return (
        run.id,
        run.workflow,
        run.queue,
        bytes(run.input),
        run.priority,
        run.dedupe_key,
        None if run.metadata is None else bytes(run.metadata),
        run.parent_id,
        run.max_attempts,
        run.run_at,
        run.delay_s,
        run.deadline_at,
        None if run.channels is None else _batch_encoder.encode(run.channels),
        None if run.trace_context is None else bytes(run.trace_context),
        run.version,
        run.concurrency_key,
    )
