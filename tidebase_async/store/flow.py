"""Flow control by key: debounced runs and singleton runs (schema 14)."""

from __future__ import annotations

from uuid import UUID

import anyio
import asyncpg

from tidebase_async import errors
from tidebase_async.store.base import StoreBase, logger
from tidebase_async.store.records import EnqueueRow, NewRun, _batch_encoder
from tidebase_async.store.sql import Q
from tidebase_async.store.translate import _TRANSIENT_ERRORS, _translate


def _row(r: asyncpg.Record) -> EnqueueRow:
    return EnqueueRow(id=r[0], inserted=r[1], queue=r[2], dedupe_key=r[3], due=r[4])


class FlowMixin(StoreBase):
    """Enqueue debounced and singleton runs."""

    async def enqueue_debounced(self, run: NewRun) -> EnqueueRow:
        """Insert the pending run of ``run.debounce_key``, or upsert the one that is
        pending (input replaced, run_at pushed, capped at its deadline) in one
        statement."""
        return await self._enqueue_keyed("enqueue_debounced", run)

    async def enqueue_singleton(self, run: NewRun) -> EnqueueRow:
        """Insert ``run`` unless its workflow has an active run of ``run.singleton_key``;
        then return that one (``inserted`` False)."""
        return await self._enqueue_keyed("enqueue_singleton", run)

    async def _enqueue_keyed(self, statement: str, run: NewRun) -> EnqueueRow:
        # A lost connection is ridden out as enqueue_many does: if the lost attempt
        # committed an insert, its run (the id is made by the client) is found and
        # returned; an upsert it committed is applied again, which changes nothing but
        # run_at (pushed to the end of a window that starts now).
        deadline = anyio.current_time() + self.reconnect_s
        delay = 0.05
        lost = False
        batch = _batch_encoder.encode([run])
        while True:
            try:
                if lost:
                    with _translate(statement):
                        found = await self._pool.fetch(Q["enqueued_runs"], [run.id])
                    if found:
                        r = found[0]
                        return EnqueueRow(
                            id=r[0], inserted=True, queue=r[1], dedupe_key=r[2], due=r[3]
                        )
                rows = await self._fetch_retrying_deadlocks(statement, Q[statement], batch)
                return _row(rows[0])
            except errors.ConnectionLost as exc:
                if anyio.current_time() + delay > deadline:
                    raise
                logger.info("%s: %s; retrying in %.2fs", statement, exc, delay)
                lost = True
                await anyio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def replace_singleton(
        self, run: NewRun, *, reason: str
    ) -> tuple[EnqueueRow, list[tuple[UUID, str, str]]]:
        """Cancel the active run of ``run``'s singleton key (as ``cancel_runs`` does,
        with its active descendants) and insert ``run``, in one transaction under a
        transaction advisory lock on (workflow, key): concurrent replacements of a key
        take turns, each cancelling its predecessor's run, so exactly one run is left
        active. Returns the new run's row and (id, queue, status before) of every run
        cancelled. A concurrent ``skip`` enqueue that got in between is cancelled too.
        """
        assert run.singleton_key is not None
        batch = _batch_encoder.encode([run])
        delay = 0.005
        for attempt in range(1, 6):
            try:
                with _translate("replace_singleton"):
                    async with self._pool.acquire() as conn, conn.transaction():
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
                                    r[0]
                                    for r in await conn.fetch(
                                        Q["active_children"], [r[0] for r in rows]
                                    )
                                ]
                                why = "parent cancelled"
                            row = _row((await conn.fetch(Q["enqueue_singleton"], batch))[0])
                            if row.inserted:
                                return row, cancelled
                            # A skip enqueue committed a run of the key after our
                            # snapshot: cancel that one too, and insert again.
                        raise errors.StoreError(
                            "replace_singleton: the key's active run kept being replaced"
                        )
            except errors.StoreError as exc:
                if not isinstance(exc.__cause__, _TRANSIENT_ERRORS) or attempt == 5:
                    raise
                logger.info("replace_singleton: %s; retrying", exc.__cause__)
                await anyio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")
