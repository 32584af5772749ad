"""The worker behind ``tide.work()``: claims runs of its queues up to its free
capacity (honouring queue controls), executes each in its own task, keeps their leases
(``leases``), runs the reconciler, and drains on stop or SIGTERM.

Concurrency model: one task group for services (leases, reconciler, signals) and one
for runs. Each run executes in its own task inside its own cancel scope, which the
leases cancel when the lease is lost or the run cancelled, and shutdown cancels after
the grace period.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING
from uuid import UUID

import anyio
import anyio.abc
import msgspec

from tidebase_async import errors
from tidebase_async._util.failures import error_info
from tidebase_async._util.signals import Signal
from tidebase_async.engine.context import EngineContext
from tidebase_async.engine.executor import ExecutionResult, execute
from tidebase_async.engine.leases import Leases, new_owner_id
from tidebase_async.engine.reconciler import Reconciler
from tidebase_async.engine.writes import RunWrites
from tidebase_async.store import ClaimedRun, QueueControl
from tidebase_async.store.channels import QUEUES_CHANNEL, WAKE_CHANNEL

if TYPE_CHECKING:
    from tidebase_async.engine.outbox import Deliverer
    from tidebase_async.store import StepRecord

logger = logging.getLogger(__name__)

#: How often a worker renews the record of the workflow versions it has (a worker
#: not seen for ``VERSIONS_LIVE_S`` counts as gone in ``queues list``).
VERSIONS_RENEW_S = 15.0
VERSIONS_LIVE_S = 60.0


class WorkerStats:
    """Counters a worker keeps; read them for monitoring or tests."""

    def __init__(self) -> None:
        self.claimed = 0
        self.completed = 0
        self.failed = 0
        self.retried = 0
        self.lost = 0
        self.released = 0
        self.requeued_expired = 0
        self.pruned = 0
        self.maintenance_ticks = 0
        self.suspended = 0
        self.cancelled = 0
        self.woken = 0
        self.timers_fired = 0
        self.deadlines_fired = 0
        self.scheduled = 0


class Worker:
    """Executes queued runs of the registered workflows until stopped.

    Guarantees: a run executes in at most one worker at a time while leases hold;
    every write it makes is fenced, so after a takeover the previous owner's writes
    are refused (``LeaseLost``). Stopping (SIGTERM, ``stop()``) stops claiming, lets
    in-flight runs finish for ``shutdown_grace`` seconds, then cancels and releases
    the rest at once for other workers. Cancellation of ``run()`` releases in-flight
    runs at once.
    """

    def __init__(
        self,
        context: EngineContext,
        *,
        queues: Sequence[str],
        concurrency: int,
        poll_interval_s: float,
        shutdown_grace_s: float,
        maintenance_interval_s: float,
        handle_signals: bool,
        retention_s: float | None = None,
        deliverer: Deliverer | None = None,
    ) -> None:
        if concurrency < 1:
            raise errors.ConfigurationError(f"concurrency must be >= 1, got {concurrency}")
        if context.lease_s <= 0 or poll_interval_s <= 0:
            raise errors.ConfigurationError("lease and poll_interval must be > 0")
        if not queues:
            raise errors.ConfigurationError("a worker needs at least one queue")
        self.id = new_owner_id()
        self._context = context
        self._writes = RunWrites(context.store, self.id)
        self._leases = Leases(context, self.id)
        self.stats = WorkerStats()
        self._store = context.store
        self._listener = context.listener
        self._notifier = context.notifier
        self._queues = list(dict.fromkeys(queues))
        self._concurrency = concurrency
        self._claim_batch = max(1, concurrency // 4)
        self._lease_s = context.lease_s
        self._poll_s = poll_interval_s
        self._grace_s = shutdown_grace_s
        self._handle_signals = handle_signals
        self._wake = Signal()
        self._capacity = Signal()
        self._stop = anyio.Event()
        # The claims this worker holds (the leases' own dict, read here on every
        # claim): keyed by claim (run id, attempt), since this worker may claim a run
        # again while an earlier claim of it still writes its outcome (see _claim_loop).
        self._inflight = self._leases.held
        # Run id -> its execution here (the leases' own dict; ``execute`` fills it).
        self._executions = self._leases.executions
        # Claims among _inflight whose code is done and whose outcome is being written:
        # their slots count as free (see _free), so the next claim's round trip
        # overlaps their writes'. At most `concurrency` runs execute user code at once.
        self._finishing: set[tuple[UUID, int]] = set()
        self._scope_type: type[anyio.CancelScope] | None = None
        self._idle = Signal()
        self._idle.set()
        self._deliverer = deliverer
        self._reconciler = Reconciler(
            context,
            stats=self.stats,
            on_work=self._on_work,
            interval_s=maintenance_interval_s,
            retention_s=retention_s,
            deliverer=deliverer,
            holder=self.id,
        )
        # Controls of this worker's controlled queues (paused, capped, rate limited);
        # refreshed on NOTIFY and every poll interval. The database enforces them
        # whatever this cache says; it only picks the claim path.
        self._controls: dict[str, QueueControl] = {}
        self._controls_stale = True
        self._controls_read_at = 0.0
        self._rotation = 0
        self._fast_turn = 0

    def stop(self) -> None:
        """Begin a graceful drain (what SIGTERM does)."""
        self._stop.set()
        # Wake the claim loop wherever it waits.
        self._wake.set()
        self._capacity.set()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def draining(self) -> bool:
        """True once ``stop()`` or SIGTERM began the drain: this worker claims no more."""
        return self._stop.is_set()

    def _free(self) -> int:
        return self._concurrency - len(self._inflight) + len(self._finishing)

    def _on_finishing(self, run_id: UUID, attempt: int) -> None:
        if (run_id, attempt) in self._inflight:
            self._finishing.add((run_id, attempt))
            self._capacity.set()

    async def run(self, *, started: anyio.Event | None = None) -> None:
        """Work until ``stop()``/SIGTERM (then drain and return) or cancellation."""
        unsubscribe: list[Callable[[], None]] = self._leases.subscribe()
        if self._listener is not None:
            unsubscribe.append(self._listener.subscribe(WAKE_CHANNEL, self._on_wake))
            unsubscribe.append(self._listener.subscribe(QUEUES_CHANNEL, self._on_queue_config))
            unsubscribe.append(self._listener.on_connect(self._wake.set))
        logger.info(
            "worker %s started: queues=%s concurrency=%d lease=%.1fs",
            self.id,
            self._queues,
            self._concurrency,
            self._lease_s,
        )
        try:
            # Runs outlive services: the heartbeat must keep their leases during the drain.
            # Runs go in an asyncio.TaskGroup: spawning a task there costs a fifth of
            # what an anyio task group charges, and a worker spawns one per run. Each
            # run still gets an anyio CancelScope for lease loss and shutdown.
            async with asyncio.TaskGroup() as runs_tg, anyio.create_task_group() as services:
                services.start_soon(self._leases.maintain)
                services.start_soon(self._reconciler.run)
                services.start_soon(self._announce_versions)
                if self._handle_signals:
                    services.start_soon(self._signal_loop)
                if started is not None:
                    started.set()
                await self._claim_loop(runs_tg)
                await self._drain()
                services.cancel_scope.cancel()
        finally:
            for remove in unsubscribe:
                remove()
            if self._deliverer is not None:
                await self._deliverer.close()
            logger.info("worker %s stopped", self.id)

    # -- claiming ---------------------------------------------------------------------

    def _on_wake(self, payload: str) -> None:
        if payload in self._queues:
            self._wake.set()

    def _on_work(self, queues: set[str]) -> None:
        """The reconciler made runs of ``queues`` runnable."""
        if any(q in self._queues for q in queues):
            self._wake.set()

    def _on_queue_config(self, payload: str) -> None:
        if payload in self._queues:
            self._controls_stale = True
            self._wake.set()

    async def _refresh_controls(self) -> None:
        controls = await self._store.queue_controls(self._queues)
        self._controls = {c.name: c for c in controls if c.controlled}
        self._controls_stale = False
        self._controls_read_at = anyio.current_time()

    async def _claim(self, free: int) -> tuple[list[ClaimedRun], float | None, list[str]]:
        """Claim up to ``free`` runs across this worker's queues: uncontrolled ones in
        one round-robin statement, controlled ones each in its own transaction. The
        groups (each controlled queue; the uncontrolled ones together) take turns being
        first from claim to claim; a first pass gives each a share, a second hands what
        is left to groups that filled theirs. Returns the runs, when a rate limit wants
        another try (seconds), and the queues whose controls held them back (they wake
        the worker by NOTIFY or that retry time, not by the due time of their runs)."""
        if self._controls_stale or anyio.current_time() - self._controls_read_at > self._poll_s:
            await self._refresh_controls()
        self._rotation += 1
        fast = [q for q in self._queues if q not in self._controls]
        if len(fast) > 1:
            # A turn of its own (advanced when this group claims): tied to the groups'
            # turn, the two rotations could move in lockstep and always favour one queue.
            turn = self._fast_turn % len(fast)
            fast = fast[turn:] + fast[:turn]
        held = [q for q, c in self._controls.items() if c.paused]
        groups: list[str | None] = [q for q, c in self._controls.items() if not c.paused]
        if fast:
            groups.append(None)  # None stands for the uncontrolled queues
        if not groups:
            return [], None, held
        turn = self._rotation % len(groups)
        groups = groups[turn:] + groups[:turn]
        share = max(1, free // len(groups))
        claimed: list[ClaimedRun] = []
        retry_in: float | None = None

        async def claim(group: str | None, limit: int) -> bool:
            """Claim up to ``limit`` from ``group``; True when it may have more."""
            nonlocal retry_in
            if group is None:
                got = await self._store.claim(
                    worker_id=self.id,
                    queues=fast,
                    limit=limit,
                    lease_s=self._lease_s,
                    versions=self._context.versions.keys,
                )
                claimed.extend(got)
                if got:
                    self._fast_turn += 1
                return len(got) == limit
            result = await self._store.claim_controlled(
                worker_id=self.id,
                queue=group,
                limit=limit,
                lease_s=self._lease_s,
                versions=self._context.versions.keys,
            )
            claimed.extend(result.runs)
            if result.retry_in_s is not None:
                retry_in = (
                    result.retry_in_s if retry_in is None else min(retry_in, result.retry_in_s)
                )
            if result.held:
                held.append(group)
            return len(result.runs) == limit and not result.held

        more: list[str | None] = []
        for group in groups:
            limit = min(share, free - len(claimed))
            if limit > 0 and await claim(group, limit):
                more.append(group)
        for group in more:
            limit = free - len(claimed)
            if limit <= 0:
                break
            await claim(group, limit)
        return claimed, retry_in, held

    async def _claim_loop(self, runs_tg: asyncio.TaskGroup) -> None:
        delay = 0.05
        while not self._stop.is_set():
            free = self._free()
            if free <= 0:
                self._capacity.clear()
                await self._wait_or_stop(self._capacity, None)
                continue
            if self._inflight and free < self._claim_batch:
                # Busy: let a few more slots free up so one claim fills several, rather
                # than one claim statement per finished run. Bounded, so a slow run
                # never holds back the others' successors for long.
                self._capacity.clear()
                await self._wait_or_stop(self._capacity, 0.002)
                free = self._free()
                if free <= 0:
                    continue
            # Clear before claiming: a notification that arrives during the claim
            # must cause another claim, not be lost.
            self._wake.clear()
            try:
                got, retry_in, held = await self._claim(free)
                claimed = self._not_held(got)
                history = await self._load_history(claimed)
            except errors.StoreError as exc:
                logger.warning("claim failed (%s); retrying in %.2fs", exc, delay)
                await self._wait_or_stop(self._wake, delay)
                delay = min(delay * 2, self._poll_s)
                continue
            delay = 0.05
            for run in claimed:
                self._start(runs_tg, run, history.get(run.id, []))
            if claimed:
                self.stats.claimed += len(claimed)
                self._notifier.runs_changed(*(c.id for c in claimed))
                # Let the new runs reach their first await before this loop spends
                # time on its own next statement.
                await asyncio.sleep(0)
            if got and (len(got) == free or len(self._queues) > 1):
                # There may be more (a claim over several queues takes at most each
                # queue's share); the free-capacity check throttles.
                continue
            wait_s = self._poll_s if retry_in is None else min(self._poll_s, retry_in)
            # Queues held back by their controls have due runs they may not take: their
            # due time is no reason to wake (they wake us by NOTIFY or retry_in).
            open_queues = [q for q in self._queues if q not in held]
            try:
                due_in = (
                    await self._store.next_due_in(open_queues, self._context.versions.keys)
                    if open_queues
                    else None
                )
            except errors.StoreError:
                due_in = None
            if due_in is not None:
                wait_s = min(wait_s, max(due_in, 0.001))
            await self._wait_or_stop(self._wake, wait_s)

    def _not_held(self, claimed: list[ClaimedRun]) -> list[ClaimedRun]:
        """The claims among ``claimed`` that this worker is not executing already.

        A claim commits without waiting for its WAL flush (see ``_lease_picked`` in
        queries.sql). A server crash can undo it, and this worker's next claim of the
        run then comes back with the same (run, attempt), the same fence as the
        execution still in progress here. That execution goes on under the lease
        re-established for it: none of its writes since its claim was acknowledged
        (an acknowledged write would have flushed the claim with it). Starting a
        second one beside it would let both write under one fence."""
        fresh: list[ClaimedRun] = []
        for run in claimed:
            if (run.id, run.attempt) in self._inflight:
                logger.warning(
                    "run %s: claimed again as attempt %d, which runs here already (the "
                    "database lost the claim in a crash); the execution in progress goes on",
                    run.id,
                    run.attempt,
                    extra={"run_id": str(run.id)},
                )
                continue
            fresh.append(run)
        return fresh

    async def _load_history(self, claimed: list[ClaimedRun]) -> dict[UUID, list[StepRecord]]:
        """Checkpoints of the resumed runs among ``claimed``. If that fails (or we are
        cancelled meanwhile), the claims are handed back at once rather than left to
        expire with nobody executing them."""
        resumed = [c.id for c in claimed if c.step_count > 0]
        if not resumed:
            return {}
        try:
            return await self._store.load_steps(resumed)
        except BaseException:
            await self._release([(c.id, c.attempt) for c in claimed])
            raise

    async def _release(self, claims: list[tuple[UUID, int]]) -> None:
        self.stats.released += len(await self._leases.release(claims))

    async def _wait_or_stop(self, signal_: Signal, timeout_s: float | None) -> None:
        """Wait for ``signal_`` (or ``timeout_s``); ``stop()`` sets every signal the
        claim loop waits on, so a stop always ends the wait."""
        if self._stop.is_set():
            return
        if timeout_s is None:
            await signal_.wait()
        else:
            await signal_.wait_for(timeout_s)

    def _start(self, tg: asyncio.TaskGroup, run: ClaimedRun, history: list[StepRecord]) -> None:
        if self._scope_type is None:
            # The event loop's own CancelScope class: constructing it directly skips
            # anyio's per-call backend lookup (a twentieth of a no-op run's cost).
            self._scope_type = type(anyio.CancelScope())
        scope = self._scope_type()
        self._inflight[(run.id, run.attempt)] = scope
        self._idle.clear()
        tg.create_task(self._execute(run, history, scope))

    async def _execute(
        self, run: ClaimedRun, history: list[StepRecord], scope: anyio.CancelScope
    ) -> None:
        result: ExecutionResult | None = None
        try:
            result = await execute(
                self._context,
                writes=self._writes,
                claimed=run,
                history=history,
                cancel_scope=scope,
                executions=self._executions,
                on_finishing=self._on_finishing,
            )
        except errors.StoreError as exc:
            # The outcome could not be written (connection lost): try to hand the run
            # back; failing that, its lease expires and the reconciler requeues it.
            logger.error("run %s: could not record its outcome: %s", run.id, exc)
        except Exception as exc:
            # A bug (ours or a pathological user object): never let one run take the
            # task group, and every other run with it, down. Spend the attempt, so a
            # run that always does this ends failed instead of looping.
            logger.exception("run %s: unexpected error in the worker", run.id)
            result = await self._fail_unexpectedly(run, exc)
        finally:
            if result is None or result.outcome in ("released", "woken"):
                await self._release([(run.id, run.attempt)])
                if result is not None and result.outcome == "woken":
                    self.stats.woken += 1
            else:
                self._count(result)
            self._inflight.pop((run.id, run.attempt), None)
            self._finishing.discard((run.id, run.attempt))
            self._capacity.set()
            if run.queue in self._controls:
                # A slot of a capped queue may have freed: wake its other claimers, and
                # this worker's claim loop at once (a claim made while this run was
                # finishing still counted it against the cap).
                self._notifier.queues_changed(run.queue)
                self._wake.set()
            if not self._inflight:
                self._idle.set()
            if result is not None and result.outcome in ("retrying", "woken"):
                self._wake.set()

    async def _fail_unexpectedly(self, run: ClaimedRun, exc: Exception) -> ExecutionResult:
        info = error_info(exc)
        spent = run.attempt - run.released
        retry_in = 1.0 if spent < run.max_attempts else None
        with anyio.move_on_after(5, shield=True):
            try:
                await self._store.fail_run(
                    run_id=run.id,
                    worker_id=self.id,
                    attempt=run.attempt,
                    error=msgspec.json.encode(info),
                    retry_in_s=retry_in,
                    event_data=msgspec.json.encode(
                        {"type": info["type"], "message": info["message"]}
                    ),
                )
                self._notifier.runs_changed(run.id)
            except errors.TidebaseError as store_exc:
                logger.warning("run %s: failure not recorded (%s)", run.id, store_exc)
        return ExecutionResult(outcome="retrying" if retry_in is not None else "failed")

    def _count(self, result: ExecutionResult | None) -> None:
        if result is None:
            return
        if result.outcome == "completed":
            self.stats.completed += 1
        elif result.outcome == "failed":
            self.stats.failed += 1
        elif result.outcome == "retrying":
            self.stats.retried += 1
        elif result.outcome == "lost":
            self.stats.lost += 1
        elif result.outcome == "suspended":
            self.stats.suspended += 1
        elif result.outcome == "cancelled":
            self.stats.cancelled += 1

    # -- versions -----------------------------------------------------------------------

    async def _announce_versions(self) -> None:
        """While working, keep a record of the (workflow, version) keys this worker
        claims (``queues list`` shows queued runs of versions no live worker has); it
        is removed when the worker stops. Nothing is written without versioned
        workflows. Claims never read the record: a failure here only costs that view."""
        announced = False
        try:
            while True:
                keys = self._context.versions.keys
                if keys:
                    try:
                        await self._store.announce_versions(worker_id=self.id, keys=keys)
                        announced = True
                    except errors.StoreError as exc:
                        logger.warning("worker %s: versions not announced: %s", self.id, exc)
                await anyio.sleep(VERSIONS_RENEW_S)
        finally:
            if announced:
                with anyio.move_on_after(5, shield=True):
                    try:
                        await self._store.withdraw_versions(worker_id=self.id)
                    except errors.StoreError as exc:
                        logger.info("worker %s: versions not withdrawn: %s", self.id, exc)

    # -- shutdown ---------------------------------------------------------------------

    async def _drain(self) -> None:
        if self._inflight:
            logger.info(
                "worker %s draining %d runs (grace %.1fs)",
                self.id,
                len(self._inflight),
                self._grace_s,
            )
            with anyio.move_on_after(self._grace_s):
                await self._idle.wait()
        for scope in list(self._inflight.values()):
            scope.cancel()

    async def _signal_loop(self) -> None:
        try:
            with anyio.open_signal_receiver(signal.SIGTERM) as signals:
                async for _ in signals:
                    logger.info("worker %s: SIGTERM, draining", self.id)
                    self.stop()
                    return
        except (ValueError, NotImplementedError, RuntimeError):
            # Not the main thread, or no signal support here: stop() still works.
            return
