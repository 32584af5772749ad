"""The reconciler: every worker runs one, a leadership (``Store.leadership``: a session
advisory lock, or a lease row through a pooler) makes one of them active at a time. Its
ticks requeue runs whose lease expired, wake waiting runs whose timer is due (durable
sleeps, gate expiries, timeouts of waits for events), cancel runs past their deadline,
fire due schedule ticks, deliver the outbox, prune finished runs and events by key
past their retention, and roll up the dashboard's statistics (runs and usage per
minute and hour, ``Store.roll_up_stats``).

Correctness never depends on the election: every tick's statements are safe to run
twice (each takes its rows with ``FOR UPDATE SKIP LOCKED`` or a unique key).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio

from tidebase_async import errors
from tidebase_async.engine.context import EngineContext
from tidebase_async.engine.firing import fire_due
from tidebase_async.engine.leases import new_owner_id
from tidebase_async.store import Leadership

if TYPE_CHECKING:
    from tidebase_async.engine.outbox import Deliverer
    from tidebase_async.engine.worker import WorkerStats

logger = logging.getLogger(__name__)

# The leadership that elects the one active reconciler among all workers.
MAINTENANCE = "maintenance"
_SWEEP_LIMIT = 500
_PRUNE_BATCHES = 4
# Dashboard rollups: whole minutes are rolled up this long after they ended (a run's
# finished_at is its transaction's start; the transaction commits a little later), each
# chunk reading about _ROLLUP_RUNS runs, a bounded number of chunks per tick (a big
# existing table is backfilled over several ticks).
_ROLLUP_LAG_S = 60.0
_ROLLUP_RUNS = 20_000
_ROLLUP_CHUNKS = 4
# Caught up, the next rollup is due at the next whole minute at the earliest.
_ROLLUP_IDLE_S = 15.0
# Only when the server runs without autovacuum (see Reconciler._lead).
_VACUUM_EVERY_S = 10.0


class Reconciler:
    """One worker's candidate reconciler; ``run()`` until cancelled.

    ``on_work`` is called with the queues that got runnable runs from a tick (requeued,
    woken, scheduled), so the worker that owns this reconciler claims them at once
    instead of waiting for NOTIFY. Counters go to the worker's ``stats``.
    """

    def __init__(
        self,
        context: EngineContext,
        *,
        stats: WorkerStats,
        on_work: Callable[[set[str]], None],
        interval_s: float,
        retention_s: float | None,
        deliverer: Deliverer | None,
        holder: str | None = None,
    ) -> None:
        self._store = context.store
        # Who leads, as the lease row names it (through a pooler): the worker's id.
        self._holder = holder or new_owner_id()
        self._notifier = context.notifier
        self._workflows = context.workflows
        self.stats = stats
        self._on_work = on_work
        self._lease_s = context.lease_s
        self._maintenance_s = interval_s
        self._retention_s = retention_s
        self._deliverer = deliverer
        self._self_vacuum = False
        self._after_outage = False
        self._pruned_since_vacuum = False
        self._last_vacuum = 0.0
        self._rollup_idle_until = 0.0

    async def run(self) -> None:
        """The reconciler. Every worker runs it; a leadership makes one of them active
        at a time. A crashed holder's advisory lock goes with its session, its lease row
        expires; a frozen holder's session is ended by the server's idle timeout, its
        lease expires too (see ``_maintain``)."""
        while True:
            try:
                await self._maintain()
            except* errors.StoreError as group:
                first: BaseException = group
                while isinstance(first, BaseExceptionGroup):
                    first = first.exceptions[0]
                logger.warning("maintenance failed (%s); retrying", first)
                self._after_outage = True
                await anyio.sleep(self._maintenance_s)
            except* Exception as group:
                # A bug (ours, or in a schedule's data): it must not take the worker and
                # its runs down. Logged with its traceback; the next tick tries again.
                logger.error("maintenance failed unexpectedly; retrying", exc_info=group)
                await anyio.sleep(self._maintenance_s)

    async def _maintain(self) -> None:
        # A frozen worker (SIGSTOP, VM pause) keeps its sockets open: without an expiry
        # it would lead forever, and no expired lease would ever be requeued.
        expiry_s = max(2.0, 5 * self._maintenance_s)
        async with self._store.leadership(
            MAINTENANCE, holder=self._holder, expiry_s=expiry_s
        ) as lead:
            if lead.held:
                await self._lead(lead)
                return
        # Not elected: give the connection back while waiting for the next try.
        await anyio.sleep(self._maintenance_s * 5)

    async def _lead(self, lock: Leadership) -> None:
        if self._retention_s is not None and not await self._store.autovacuum_enabled():
            # Deleted runs only free their space once vacuumed; without autovacuum the
            # tables would grow with every run ever executed.
            logger.warning(
                "autovacuum is off on this server; the reconciler will VACUUM the "
                "tidebase tables itself every %.0fs while it prunes runs",
                _VACUUM_EVERY_S,
            )
            self._self_vacuum = True
        async with anyio.create_task_group() as tg:
            tg.start_soon(lock.keep_alive)
            if self._deliverer is not None:
                # Beside the ticks, not in them: a slow receiver must not hold up the
                # requeueing of expired leases.
                tg.start_soon(self._deliverer.run)
            if self._after_outage:
                # The database was unreachable: every lease may have run out meanwhile,
                # though their workers live and are retrying their writes. Give their
                # heartbeats one lease to renew them before requeueing what expired.
                await anyio.sleep(self._lease_s)
                self._after_outage = False
            while True:
                await self._maintenance_tick()
                await anyio.sleep(await self._until_next_tick())

    async def _until_next_tick(self) -> float:
        """The maintenance interval, or less when a waiting run's timer is due sooner:
        durable sleeps and gate expiries fire on time, not on the next tick."""
        wait_s = self._maintenance_s
        for upcoming in (
            await self._store.next_wake_in(),
            await self._store.next_tick_in(),
        ):
            if upcoming is not None:
                wait_s = min(wait_s, max(upcoming, 0.0) + 0.001)
        return wait_s

    async def _maintenance_tick(self) -> None:
        await self._requeue_expired()
        await self._wake_due()
        await self._cancel_overdue()
        await self._fire_due_schedules()
        await self._prune()
        await self._prune_events()
        # Per-key rate buckets that have refilled (a missing row is a full bucket).
        await self._store.prune_key_buckets(limit=_SWEEP_LIMIT)
        await self._roll_up_stats()
        self.stats.maintenance_ticks += 1
        if self._self_vacuum and self._pruned_since_vacuum:
            now = anyio.current_time()
            if now - self._last_vacuum >= _VACUUM_EVERY_S:
                await self._store.vacuum()
                self._last_vacuum = now
                self._pruned_since_vacuum = False

    async def _prune(self) -> None:
        """Retention: a bounded number of batches per tick, so a backlog of old runs
        cannot starve the requeueing of expired leases (which runs first each tick)."""
        if self._retention_s is None:
            return
        for _ in range(_PRUNE_BATCHES):
            pruned = await self._store.prune_finished(
                older_than_s=self._retention_s, limit=_SWEEP_LIMIT
            )
            self.stats.pruned += pruned
            self._pruned_since_vacuum |= pruned > 0
            if pruned < _SWEEP_LIMIT:
                return

    async def _roll_up_stats(self) -> None:
        """The dashboard's rollups: after the tick's real work, a bounded number of
        chunks, so a backfill cannot hold up the requeueing of expired leases. Once
        caught up, nothing is due before the next whole minute: the next try waits
        _ROLLUP_IDLE_S instead of costing a transaction every tick."""
        if anyio.current_time() < self._rollup_idle_until:
            return
        for _ in range(_ROLLUP_CHUNKS):
            step = await self._store.roll_up_stats(lag_s=_ROLLUP_LAG_S, max_runs=_ROLLUP_RUNS)
            if step is None or not step.behind:
                self._rollup_idle_until = anyio.current_time() + _ROLLUP_IDLE_S
                return

    async def _prune_events(self) -> None:
        """Events by key past their retention (stored ones nobody took, and the record
        of delivered ones), a bounded number per tick; whatever ``retention`` says of
        runs."""
        for _ in range(_PRUNE_BATCHES):
            if await self._store.prune_keyed_events(limit=_SWEEP_LIMIT) < _SWEEP_LIMIT:
                return

    async def _fire_due_schedules(self) -> None:
        created = await fire_due(self._store, self._workflows)
        if created:
            self.stats.scheduled += len(created)
            self._notifier.queues_changed(*{q for _, q in created})
            self._notifier.runs_changed(*(r for r, _ in created))
            self._on_work({q for _, q in created})

    async def _wake_due(self) -> None:
        """Waiting runs whose timer is due (sleep over, gate expired) go back to their
        queue."""
        while True:
            woken = await self._store.wake_due(limit=_SWEEP_LIMIT)
            if woken:
                self.stats.timers_fired += len(woken)
                self._notifier.queues_changed(*{q for _, q in woken})
                self._notifier.runs_changed(*(r for r, _ in woken))
                self._on_work({q for _, q in woken})
            if len(woken) < _SWEEP_LIMIT:
                return

    async def _cancel_overdue(self) -> None:
        """Runs past their deadline are cancelled (reason ``deadline``) whatever their
        status; a worker executing one is told to stop."""
        overdue = await self._store.overdue_runs(limit=_SWEEP_LIMIT)
        if not overdue:
            return
        cancelled = await self._store.cancel_runs(run_ids=overdue, reason="deadline", actor=None)
        self.stats.deadlines_fired += len(cancelled)
        for run_id, _queue, before in cancelled:
            logger.warning(
                "run %s: deadline passed while %s; cancelled",
                run_id,
                before,
                extra={"run_id": str(run_id)},
            )
        self._notifier.runs_changed(*(r for r, _, _ in cancelled))

    async def _requeue_expired(self) -> None:
        while True:
            swept = await self._store.requeue_expired(limit=_SWEEP_LIMIT)
            if swept:
                self.stats.requeued_expired += len(swept)
                for run_id, _queue, status in swept:
                    logger.warning(
                        "run %s: lease expired, %s",
                        run_id,
                        "requeued" if status == "queued" else "failed (no attempts left)",
                        extra={"run_id": str(run_id)},
                    )
                self._notifier.queues_changed(*{q for _, q, s in swept if s == "queued"})
                self._notifier.runs_changed(*(r for r, _, _ in swept))
                self._on_work({q for _, q, s in swept if s == "queued"})
            if len(swept) < _SWEEP_LIMIT:
                return
