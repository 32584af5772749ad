"""Flow control by key: debounced runs and singleton runs (schema 14)."""

from __future__ import annotations

from uuid import UUID

import asyncpg

from tidebase_async import errors
from tidebase_async.store.base import StoreBase
from tidebase_async.store.records import EnqueueRow, NewRun, _batch_encoder
from tidebase_async.store.sql import Q


def _row(r: asyncpg.Record) -> EnqueueRow:
    return EnqueueRow(id=r[0], inserted=r[1], queue=r[2], dedupe_key=r[3])


class FlowMixin(StoreBase):
    """Enqueue debounced and singleton runs."""

    async def enqueue_debounced(self, run: NewRun) -> EnqueueRow:
        """Insert the pending run of ``run.debounce_key``, or upsert the one that is
        pending (input replaced, run_at pushed, capped at its deadline) in one
        statement. A lost connection is ridden out without applying it twice (see
        ``_transaction_retrying``): the run it returns is the one its commit made or
        upserted, even when that run was claimed meanwhile."""
        return await self._enqueue_keyed("enqueue_debounced", run)

    async def enqueue_singleton(self, run: NewRun) -> EnqueueRow:
        """Insert ``run`` unless its workflow has an active run of ``run.singleton_key``;
        then return that one (``inserted`` False). Lost connections as
        ``enqueue_debounced``."""
        return await self._enqueue_keyed("enqueue_singleton", run)

    async def _enqueue_keyed(self, statement: str, run: NewRun) -> EnqueueRow:
        batch = _batch_encoder.encode([run])

        async def body(conn: asyncpg.Connection) -> EnqueueRow:
            return _row((await conn.fetch(Q[statement], batch))[0])

        return await self._transaction_retrying(statement, body)

    async def replace_singleton(
        self, run: NewRun, *, reason: str
    ) -> tuple[EnqueueRow, list[tuple[UUID, str, str]]]:
        """Cancel the active run of ``run``'s singleton key (as ``cancel_runs`` does,
        with its active descendants) and insert ``run``, in one transaction under a
        transaction advisory lock on (workflow, key): concurrent replacements of a key
        take turns, each cancelling its predecessor's run, so exactly one run is left
        active. Returns the new run's row and (id, queue, status before) of every run
        cancelled. A concurrent ``skip`` enqueue that got in between is cancelled too.
        Deadlocks and lost connections are ridden out as ``_transaction_retrying``
        does: the transaction is applied once (a retry after a rollback cancels what is
        active then), and a commit that landed before its connection was lost returns
        what it did.
        """
        assert run.singleton_key is not None
        batch = _batch_encoder.encode([run])

        async def body(conn: asyncpg.Connection) -> tuple[EnqueueRow, list[tuple[UUID, str, str]]]:
            await conn.execute(Q["lock_singleton"], run.workflow, run.singleton_key)
            cancelled: list[tuple[UUID, str, str]] = []
            for _ in range(100):
                active = [
                    r[0]
                    for r in await conn.fetch(
                        Q["active_singleton"], run.workflow, run.singleton_key
                    )
                ]
                roots, why = active, reason
                while roots:
                    rows = await conn.fetch(Q["cancel_runs"], roots, why, None)
                    cancelled.extend((r[0], r[1], r[2]) for r in rows)
                    if not rows:
                        break
                    roots = [
                        r[0] for r in await conn.fetch(Q["active_children"], [r[0] for r in rows])
                    ]
                    why = "parent cancelled"
                row = _row((await conn.fetch(Q["enqueue_singleton"], batch))[0])
                if row.inserted:
                    return row, cancelled
                # A skip enqueue committed a run of the key after our snapshot: cancel
                # that one too, and insert again.
            raise errors.StoreError("replace_singleton: the key's active run kept being replaced")

        return await self._transaction_retrying("replace_singleton", body)
