"""A worker's runs: claim, lease, checkpoint, finish, release, recover."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from tidebase_async import errors
from tidebase_async.store.base import StoreBase, read_retrying
from tidebase_async.store.records import Checkpoint, ClaimedRun, Completion, StepRecord, _claimed
from tidebase_async.store.sql import Q
from tidebase_async.store.translate import _translate


class RunsMixin(StoreBase):
    """Claims and their lifecycle, fenced by (worker, attempt)."""

    async def claim(
        self,
        *,
        worker_id: str,
        queues: Sequence[str],
        limit: int,
        lease_s: float,
        versions: Sequence[str] = (),
    ) -> list[ClaimedRun]:
        """Lease up to ``limit`` due runs of ``queues``: unversioned ones, and versioned
        ones whose key (``version_key``) is among ``versions``."""
        keys = versions if isinstance(versions, list) else list(versions)
        with _translate("claim"):
            if len(queues) == 1:
                rows = await self._pool.fetch(
                    Q["claim_runs_one"], worker_id, queues[0], lease_s, limit, keys
                )
            else:
                share = -(-limit // len(queues))
                rows = await self._pool.fetch(
                    Q["claim_runs_many"], worker_id, list(queues), lease_s, limit, share, keys
                )
        return [_claimed(row) for row in rows]

    async def claim_by_id(
        self, *, worker_id: str, run_id: UUID, lease_s: float, versions: Sequence[str] = ()
    ) -> ClaimedRun | None:
        """Lease queued run ``run_id``; None when it is not queued, or is of a version
        not among ``versions``."""
        with _translate("claim run"):
            row = await self._pool.fetchrow(
                Q["claim_run_by_id"], worker_id, run_id, lease_s, list(versions)
            )
        return None if row is None else _claimed(row)

    async def start_inline(
        self,
        *,
        run_id: UUID,
        worker_id: str,
        workflow: str,
        queue: str,
        input: bytes,
        metadata: bytes | None,
        max_attempts: int,
        lease_s: float,
        channels: bytes | None = None,
        recovery_webhook: str | None = None,
        trace_context: bytes | None = None,
        version: str | None = None,
    ) -> ClaimedRun | None:
        """Insert a run leased to ``worker_id``; None when ``run_id`` exists already.
        ``trace_context``: the W3C context (JSON) the run's spans continue."""
        with _translate("start inline run"):
            row = await self._pool.fetchrow(
                Q["start_inline_run"],
                run_id,
                worker_id,
                workflow,
                queue,
                input,
                metadata,
                max_attempts,
                lease_s,
                channels,
                recovery_webhook,
                trace_context,
                version,
            )
        return None if row is None else _claimed(row)

    async def load_steps(self, run_ids: Sequence[UUID]) -> dict[UUID, list[StepRecord]]:
        if not run_ids:
            return {}
        with _translate("load checkpoints"):
            rows = await self._pool.fetch(Q["load_steps"], list(run_ids))
        return histories(rows)

    async def heartbeat(
        self, *, worker_id: str, run_ids: Sequence[UUID], lease_s: float
    ) -> set[tuple[UUID, int]]:
        """Extend the leases; return the (id, attempt) claims this worker still holds."""
        with _translate("heartbeat"):
            rows = await self._pool.fetch(Q["heartbeat"], worker_id, list(run_ids), lease_s)
        return {(row[0], row[1]) for row in rows}

    async def checkpoint_steps(self, *, worker_id: str, items: Sequence[Checkpoint]) -> set[UUID]:
        """Record step outcomes (at most one per run) in one statement; return the run
        ids whose fence held. Rows are locked in id order (see queries.sql)."""
        ordered = sorted(items, key=lambda c: c.run_id)
        rows = await self._fetch_retrying_deadlocks(
            "checkpoint",
            Q["checkpoint_steps"],
            worker_id,
            [c.run_id for c in ordered],
            [c.attempt for c in ordered],
            [c.position for c in ordered],
            [c.name for c in ordered],
            [c.status for c in ordered],
            [c.attempts for c in ordered],
            [c.output for c in ordered],
            [c.error for c in ordered],
            [c.started_at for c in ordered],
            [c.event_data for c in ordered],
            [c.kind for c in ordered],
            [c.event_type or _default_event_type(c) for c in ordered],
            [c.wrote_state for c in ordered],
        )
        return {row[0] for row in rows}

    async def step_outcome(self, *, run_id: UUID, position: int) -> tuple[str, int] | None:
        """(status, run attempt) of the checkpoint at ``position``, if any."""
        with _translate("read checkpoint"):
            row = await self._pool.fetchrow(Q["step_outcome"], run_id, position)
        return None if row is None else (row["status"], row["run_attempt"])

    async def complete_runs(self, *, worker_id: str, items: Sequence[Completion]) -> set[UUID]:
        """Complete runs in one statement; return the run ids whose fence held."""
        ordered = sorted(items, key=lambda c: c.run_id)
        rows = await self._fetch_retrying_deadlocks(
            "completing runs",
            Q["complete_runs"],
            worker_id,
            [c.run_id for c in ordered],
            [c.attempt for c in ordered],
            [c.output for c in ordered],
        )
        return {row[0] for row in rows}

    async def fail_run(
        self,
        *,
        run_id: UUID,
        worker_id: str,
        attempt: int,
        error: bytes,
        retry_in_s: float | None,
        event_data: bytes,
    ) -> tuple[str, str]:
        """Fail or requeue the run; return (new status, queue)."""
        # A run's terminal status wakes its parent (trigger), locking the parent after
        # the run: a cancellation locking both in id order can meet it in a deadlock.
        rows = await self._fetch_retrying_deadlocks(
            "failing run", Q["fail_run"], run_id, worker_id, attempt, error, retry_in_s, event_data
        )
        row = rows[0] if rows else None
        if row is None:
            raise errors.LeaseLost(f"run {run_id} is no longer leased to this worker")
        return row["status"], row["queue"]

    async def release_runs(
        self, *, worker_id: str, claims: Sequence[tuple[UUID, int]]
    ) -> list[str]:
        """Hand (run id, attempt) claims back to the queue unspent; return their queues."""
        if not claims:
            return []
        with _translate("releasing runs"):
            rows = await self._pool.fetch(
                Q["release_runs"], worker_id, [c[0] for c in claims], [c[1] for c in claims]
            )
        return [row["queue"] for row in rows]

    @read_retrying
    async def seconds_until_due(self, run_id: UUID) -> float:
        """Seconds until a queued run becomes claimable (<= 0: now)."""
        with _translate("run due time"):
            value = await self._pool.fetchval(Q["seconds_until_due"], run_id)
        return 0.0 if value is None else float(value)

    async def requeue_expired(
        self, *, limit: int, recovery_attempts: int = 8
    ) -> list[tuple[UUID, str, str]]:
        rows = await self._fetch_retrying_deadlocks(
            "requeue expired leases", Q["requeue_expired"], limit, recovery_attempts
        )
        return [(row["id"], row["queue"], row["status"]) for row in rows]

    async def next_due_in(
        self, queues: Sequence[str], versions: Sequence[str] = ()
    ) -> float | None:
        """Seconds until the earliest queued run of ``queues`` that a worker with
        ``versions`` may claim is due (<= 0: now)."""
        with _translate("next due"):
            delta = await self._pool.fetchval(Q["next_due"], list(queues), list(versions))
        return None if delta is None else float(delta.total_seconds())


def histories(rows: Sequence[Any]) -> dict[UUID, list[StepRecord]]:
    """The histories of runs by run id, from rows of ``load_steps``."""
    history: dict[UUID, list[StepRecord]] = {}
    for row in rows:
        history.setdefault(row[0], []).append(
            StepRecord(
                position=row[1],
                name=row[2],
                status=row[3],
                run_attempt=row[4],
                output=row[5],
                error=row[6],
                replay_failure=row[7],
                kind=row[8],
                state_after=row[9],
            )
        )
    return history


def _default_event_type(c: Checkpoint) -> str:
    return "step.completed" if c.status == "completed" else "step.failed"
