"""Workflow versions: which (workflow, version) keys live workers register, queued
runs counted per version, and the pages of runs the replay check reads."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

import msgspec

from tidebase_async.store.base import StoreBase, read_retrying
from tidebase_async.store.records import ClaimedRun, StepRecord, _claimed
from tidebase_async.store.runs import histories
from tidebase_async.store.sql import Q
from tidebase_async.store.translate import _translate


class VersionCountRow(msgspec.Struct, frozen=True, kw_only=True):
    """Queued runs of one (queue, workflow, version), the age of the oldest due one,
    and how many live workers registered that version."""

    queue: str
    workflow: str
    version: str
    queued: int
    oldest_s: float
    workers: int


class CheckedRun(msgspec.Struct, frozen=True, kw_only=True):
    """A run the replay check replays: what a claim would hand the executor, its
    status, and its history."""

    run: ClaimedRun
    status: str
    history: list[StepRecord]


class VersionsMixin(StoreBase):
    """Worker presence per version, version counts, replay-check pages."""

    async def announce_versions(self, *, worker_id: str, keys: Sequence[str]) -> None:
        """Record that ``worker_id`` is alive with ``keys``; renewed while it works."""
        with _translate("announce versions"):
            await self._pool.execute(Q["announce_versions"], worker_id, list(keys))

    async def withdraw_versions(self, *, worker_id: str) -> None:
        with _translate("withdraw versions"):
            await self._pool.execute(Q["withdraw_versions"], worker_id)

    @read_retrying
    async def version_counts(self, *, live_s: float) -> list[VersionCountRow]:
        """Queued versioned runs per (queue, workflow, version); ``workers`` counts the
        workers with that version seen in the last ``live_s`` seconds."""
        with _translate("count queued runs by version"):
            rows = await self._pool.fetch(Q["version_counts"], live_s)
        return [
            VersionCountRow(
                queue=r["queue"],
                workflow=r["workflow"],
                version=r["version"],
                queued=r["queued"],
                oldest_s=max(0.0, float(r["oldest_s"])),
                workers=r["workers"],
            )
            for r in rows
        ]

    @read_retrying
    async def replay_check_page(
        self,
        *,
        workflows: Sequence[str],
        finished_since: datetime | None,
        after: UUID | None,
        limit: int,
    ) -> list[CheckedRun]:
        """Up to ``limit`` runs with a history, in id order after ``after``: of
        ``workflows``, active (queued, running, waiting) or finished since
        ``finished_since``; each with its whole history. Two queries (the runs, then
        all their steps at once), whatever the page's size."""
        with _translate("read runs to check"):
            rows = await self._pool.fetch(
                Q["replay_check_runs"], list(workflows), finished_since, after, limit
            )
        if not rows:
            return []
        with _translate("read histories to check"):
            steps = await self._pool.fetch(Q["load_steps"], [r["id"] for r in rows])
        history = histories(steps)
        return [
            CheckedRun(run=_claimed(r), status=r["status"], history=history.get(r["id"], []))
            for r in rows
        ]
