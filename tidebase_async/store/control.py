"""Run control from the client: cancel, fork, reset, retry."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

import asyncpg

from tidebase_async import errors
from tidebase_async.store.base import StoreBase, read_retrying
from tidebase_async.store.sql import Q
from tidebase_async.store.translate import _translate


class ControlMixin(StoreBase):
    """Cancel runs (and descendants); fork, reset and retry runs."""

    async def cancel_runs(
        self, *, run_ids: Sequence[UUID], reason: str | None, actor: str | None
    ) -> list[tuple[UUID, str, str]]:
        """Cancel active runs and their active descendants; return (id, queue, status
        before) of every run cancelled. Workers holding one are notified in the same
        transaction.

        The statement finds descendants in its snapshot, taken before it waited for the
        row locks: a parent that was starting children meanwhile (holding its row) has
        committed them by then, unseen. Once the parent is cancelled no child can be
        started any more, so passes with fresh snapshots over the children of what was
        cancelled catch every one.
        """
        cancelled: list[tuple[UUID, str, str]] = []
        roots, why = list(run_ids), reason
        while roots:
            rows = await self._fetch_retrying_deadlocks(
                "cancel", Q["cancel_runs"], roots, why, actor
            )
            cancelled.extend((row[0], row[1], row[2]) for row in rows)
            if not rows:
                break
            with _translate("cancel"):
                roots = [
                    r[0] for r in await self._pool.fetch(Q["active_children"], [r[0] for r in rows])
                ]
            why = "parent cancelled"
        return cancelled

    async def cancelled_among(self, run_ids: Sequence[UUID]) -> list[UUID]:
        with _translate("check for cancelled runs"):
            return [row[0] for row in await self._pool.fetch(Q["cancelled_among"], list(run_ids))]

    @read_retrying
    async def step_positions(self, run_id: UUID) -> list[tuple[int, str]]:
        with _translate("read history"):
            return [(r[0], r[1]) for r in await self._pool.fetch(Q["step_positions"], run_id)]

    async def fork_run(
        self, *, source: UUID, new_id: UUID, input: bytes | None, position: int, entry: str
    ) -> str | None:
        """Create the fork; return its queue (None when the source vanished)."""
        with _translate("fork run"):
            row = await self._pool.fetchrow(Q["fork_run"], source, new_id, input, position, entry)
        return None if row is None else str(row["queue"])

    async def reset_run(
        self, *, run_id: UUID, position: int, entry: str, budget: int
    ) -> str | None:
        """Reset a failed run to ``position``; return its queue, None when not failed."""
        with _translate("reset run"):
            queue: str | None = await self._pool.fetchval(
                Q["reset_run"], run_id, position, entry, budget
            )
        return queue

    async def retry_run(self, *, run_id: UUID, budget: int) -> tuple[str | None, list[str]]:
        """Requeue a failed run and its failed children; return the run's queue (None
        when it is not failed) and the children's queues.

        Raises:
            ConflictError: an active run holds the same dedupe key.
        """
        try:
            with _translate("retry"):
                rows = await self._pool.fetch(Q["retry_run"], run_id, budget)
        except errors.StoreError as exc:
            if isinstance(exc.__cause__, asyncpg.exceptions.UniqueViolationError):
                if exc.__cause__.constraint_name == "runs_singleton":
                    raise errors.ConflictError(
                        f"run {run_id} cannot be retried: its workflow has another active "
                        "run of its singleton key; wait for or cancel that run first"
                    ) from exc
                raise errors.ConflictError(
                    f"run {run_id} cannot be retried: another active run has its dedupe key "
                    "in its queue; wait for or cancel that run first"
                ) from exc
            raise
        root = next((r["queue"] for r in rows if r["root"]), None)
        return root, [r["queue"] for r in rows if not r["root"]]
