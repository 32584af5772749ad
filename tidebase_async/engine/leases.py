"""The leases of one lease owner (a worker, or one inline run): the claims it holds, the
heartbeat that renews them and stops an execution whose lease was lost, the cancel
notifications (with a once-a-second poll as their floor) that stop an execution whose
run was cancelled, and the release that hands unfinished claims back to their queues.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable, Sequence
from uuid import UUID

import anyio

from tidebase_async import errors
from tidebase_async._util.signals import Signal
from tidebase_async.engine.context import EngineContext
from tidebase_async.engine.execution import Execution
from tidebase_async.store.channels import CANCEL_CHANNEL

logger = logging.getLogger(__name__)

#: How often the held runs are checked for a cancellation whose notification was lost.
CANCEL_POLL_S = 1.0
#: How long a release may take; it is shielded, so it also runs for a cancelled owner.
RELEASE_TIMEOUT_S = 5.0

#: A claim: (run id, attempt). The attempt is the claim's fence.
Claim = tuple[UUID, int]


def new_owner_id() -> str:
    """A lease owner id unique to this process and call: host, pid and random bits."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Leases:
    """The claims one owner holds and the executions running under them.

    ``held`` maps each claim to the cancel scope of its execution, keyed by claim, not
    by run: the owner may claim a run again while an earlier claim of it still writes
    its outcome. ``executions`` maps each run to its execution (filled by ``execute``);
    the heartbeat renews exactly those. The owner adds and removes claims itself.

    Guarantees: an execution whose lease is not renewed (expired, taken over, or the
    run cancelled) is stopped within a heartbeat interval (``lease_s / 3``), and one
    whose run was cancelled within about a second (at once when the notification
    arrives); an execution whose outcome is being written (``finishing``) is never
    stopped, since its write is fenced either way.
    """

    def __init__(self, context: EngineContext, owner: str) -> None:
        self.owner = owner
        self.held: dict[Claim, anyio.CancelScope] = {}
        self.executions: dict[UUID, Execution] = {}
        self._store = context.store
        self._notifier = context.notifier
        self._listener = context.listener
        self._lease_s = context.lease_s
        self._heartbeat_now = Signal()
        self._check_cancelled_now = Signal()

    def subscribe(self) -> list[Callable[[], None]]:
        """Listen for cancellations of held runs; returns the unsubscribe callables.

        A reconnected listener may have missed notifications meanwhile: it triggers a
        heartbeat at once, which finds runs cancelled meanwhile (no longer held)."""
        if self._listener is None:
            return []
        return [
            self._listener.subscribe(CANCEL_CHANNEL, self._on_cancel),
            self._listener.on_connect(self._heartbeat_now.set),
        ]

    async def maintain(self) -> None:
        """Heartbeat the held claims and poll for cancelled runs, until cancelled."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._heartbeat_loop)
            tg.start_soon(self._cancel_poll_loop)

    async def release(self, claims: list[Claim]) -> list[str]:
        """Hand ``claims`` back to their queues at once, rather than let their leases
        expire, and wake the queues' workers. Shielded and bounded: it runs when the
        owner is being cancelled too. Returns the queues of the runs released (one
        entry per run); on a database failure nothing is released and the leases
        expire (the reconciler requeues them)."""
        with anyio.move_on_after(RELEASE_TIMEOUT_S, shield=True):
            try:
                queues = await self._store.release_runs(worker_id=self.owner, claims=claims)
            except errors.StoreError as exc:
                logger.warning(
                    "%d runs not released (%s); their leases will expire", len(claims), exc
                )
                return []
            self._notifier.queues_changed(*queues)
            self._notifier.runs_changed(*(run_id for run_id, _ in claims))
            return queues
        return []

    def stop_cancelled(self, run_ids: Sequence[UUID]) -> None:
        """Stop the executions of ``run_ids`` here: their runs were cancelled (their
        status says so already, and the fence refuses every write of theirs)."""
        for run_id in run_ids:
            ex = self.executions.get(run_id)
            scope = None if ex is None else self.held.get((run_id, ex.attempt))
            if ex is None or scope is None or ex.finishing or ex.cancelled:
                continue
            ex.cancelled = True
            logger.info("run %s: cancelled; stopping it", run_id, extra={"run_id": str(run_id)})
            scope.cancel()

    def _on_cancel(self, payload: str) -> None:
        """A cancel notification is a hint, never trusted by itself: any role that can
        connect to the database can send one. If it names a held run, the database is
        asked at once which held runs are really cancelled (``_cancel_poll_loop``)."""
        for text in payload.split(","):
            with contextlib.suppress(ValueError):
                if UUID(text) in self.executions:
                    self._check_cancelled_now.set()
                    return

    async def _cancel_poll_loop(self) -> None:
        """Once a second, and at once on a cancel notification naming a held run, one
        indexed read finds held runs that were cancelled; only those are stopped."""
        while True:
            await self._check_cancelled_now.wait_for(CANCEL_POLL_S)
            self._check_cancelled_now.clear()
            if not self.executions:
                continue
            try:
                cancelled = await self._store.cancelled_among(list(self.executions))
            except errors.StoreError as exc:
                logger.debug("cancel poll failed (%s)", exc)
                continue
            self.stop_cancelled(cancelled)

    async def _heartbeat_loop(self) -> None:
        interval = self._lease_s / 3
        retry_s = min(1.0, interval / 3)
        delay = interval
        while True:
            await self._heartbeat_now.wait_for(delay)
            self._heartbeat_now.clear()
            delay = interval
            # Snapshot executions, not ids: a run can finish and be claimed again by
            # this owner while the heartbeat is in flight, and the answer about the
            # old claim must not cancel the new one.
            snapshot = dict(self.executions)
            if not snapshot:
                continue
            try:
                renewed = await self._store.heartbeat(
                    worker_id=self.owner, run_ids=list(snapshot), lease_s=self._lease_s
                )
            except errors.StoreError as exc:
                logger.warning("heartbeat failed (%s); retrying in %.2fs", exc, retry_s)
                delay = retry_s
                continue
            for run_id, ex in snapshot.items():
                if (run_id, ex.attempt) not in renewed:
                    self._stop_lost(run_id, ex)

    def _stop_lost(self, run_id: UUID, ex: Execution) -> None:
        """Stop ``ex``, whose lease the heartbeat found gone, unless it is no longer
        the run's execution here or its outcome is being written already."""
        scope = self.held.get((run_id, ex.attempt))
        if self.executions.get(run_id) is not ex or scope is None or ex.finishing:
            return
        ex.lost = True
        logger.warning(
            "run %s: lease lost (expired, taken over or cancelled); stopping it here",
            run_id,
            extra={"run_id": str(run_id)},
        )
        scope.cancel()
