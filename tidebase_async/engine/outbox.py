"""Sends the outbox: signed webhook deliveries recorded by the transactions that caused
them (gate created or decided, run finished, inline run to recover).

The elected reconciler takes a batch of due deliveries in a short transaction (their
next attempt moves past the send timeout, their attempt is counted), commits, and only
then sends them over HTTP, with a timeout and no lock held; each outcome is recorded
afterwards. A process that dies mid-send leaves the delivery to be retried when its
lease runs out, so receivers must expect the same ``Tidebase-Delivery`` id twice.
Failures are retried with exponential backoff and jitter up to the delivery's
``max_attempts``; a recovery delivery that is spent fails its run (``RecoveryFailed``).
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any
from uuid import UUID

import anyio
import msgspec

from tidebase_async import errors
from tidebase_async._util.signals import Signal
from tidebase_async._util.signing import DELIVERY_HEADER, SIGNATURE_HEADER, sign
from tidebase_async._util.urls import redact_url
from tidebase_async.store import DueDelivery, Store

if TYPE_CHECKING:
    import aiohttp

logger = logging.getLogger(__name__)

_MAX_BACKOFF_S = 300.0
#: At most this much of a receiver's answer is read.
_MAX_RESPONSE_BYTES = 64 * 1024


def backoff_s(attempts: int) -> float:
    """Seconds before the next try after ``attempts`` failed ones: 1, 2, 4, ... capped
    at 5 minutes, drawn from [d/2, d]."""
    delay = min(_MAX_BACKOFF_S, 2.0 ** min(max(attempts - 1, 0), 20))
    return random.uniform(delay / 2, delay)


class Deliverer:
    """Delivers due outbox rows while ``run()`` runs (on the elected reconciler).

    Deliveries are sent concurrently (``concurrency`` at a time), each as its own task:
    a slow receiver holds up only its own delivery, never the reconciler's other work.
    """

    def __init__(
        self,
        store: Store,
        *,
        secret: str | None,
        timeout_s: float = 10.0,
        resume_timeout_s: float = 300.0,
        concurrency: int = 8,
    ) -> None:
        self._store = store
        self._secret = secret
        self._timeout_s = timeout_s
        # A receiver of run.resume may execute the run before it answers
        # (tide.webhook(execute=True)).
        self._resume_timeout_s = resume_timeout_s
        self._concurrency = concurrency
        self._active = 0
        self._slot_free = Signal()
        self._session: aiohttp.ClientSession | None = None
        self.delivered = 0
        self.failed_attempts = 0

    async def run(self, *, poll_s: float = 1.0) -> None:
        """Take and send due deliveries until cancelled.

        Raises:
            StoreError: the database failed (the caller retries).
        """
        try:
            async with anyio.create_task_group() as tg:
                while True:
                    free = self._concurrency - self._active
                    if free > 0:
                        rows = await self._store.take_deliveries(
                            limit=free,
                            lease_s=self._timeout_s * 3,
                            resume_lease_s=self._resume_timeout_s * 2,
                        )
                        for row in rows:
                            self._active += 1
                            tg.start_soon(self._deliver, row)
                        if len(rows) == free:
                            continue
                    wait_s = poll_s
                    if free > 0:
                        due = await self._store.next_delivery_in()
                        if due is not None:
                            wait_s = min(wait_s, max(due, 0.0) + 0.001)
                    self._slot_free.clear()
                    await self._slot_free.wait_for(wait_s)
        finally:
            await self.close()

    async def close(self) -> None:
        if self._session is not None:
            with anyio.CancelScope(shield=True):
                await self._session.close()
            self._session = None

    async def _deliver(self, row: DueDelivery) -> None:
        try:
            await self._deliver_one(row)
        except Exception:
            # A bug, or a delivery the code cannot handle: it must not stop the
            # delivery loop or the reconciler around it. Its lease runs out and it is
            # tried again with the others.
            logger.exception("delivery %s failed unexpectedly", row.id)
        finally:
            self._active -= 1
            self._slot_free.set()

    async def _deliver_one(self, row: DueDelivery) -> None:
        delivered, status, error = await self._send(row)
        where = redact_url(row.url)
        if not delivered:
            self.failed_attempts += 1
            logger.warning(
                "delivery %s (%s to %s) attempt %d failed: %s",
                row.id,
                row.event,
                where,
                row.attempts,
                error,
            )
        else:
            self.delivered += 1
        try:
            done = await self._store.delivery_done(
                row.id,
                delivered=delivered,
                http_status=status,
                error=error,
                retry_in_s=backoff_s(row.attempts),
                attempt=row.attempts,
            )
        except errors.StoreError as exc:
            # Its lease runs out and it is sent again: receivers dedupe on the id.
            logger.warning("outcome of delivery %s not recorded: %s", row.id, exc)
            return
        if done is not None and done.status == "failed" and done.event == "run.resume":
            await self._give_up_recovery(done.run_id, row)

    async def _send(self, row: DueDelivery) -> tuple[bool, int | None, str | None]:
        if not self._secret:
            return False, None, "no webhook secret is configured: deliveries cannot be signed"
        import aiohttp

        if self._session is None:
            # Imported and opened on first use: a worker with nothing to deliver never
            # pays for it.
            self._session = aiohttp.ClientSession(headers={"User-Agent": "tidebase-async"})
        body = row.payload
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self._secret, body),
            DELIVERY_HEADER: str(row.id),
        }
        timeout = self._resume_timeout_s if row.event == "run.resume" else self._timeout_s
        try:
            async with self._session.post(
                row.url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                # The status is the answer; a body is drained only up to a bound (a
                # receiver answering gigabytes must not fill this worker's memory).
                await resp.content.read(_MAX_RESPONSE_BYTES)
                if 200 <= resp.status < 300:
                    return True, resp.status, None
                return False, resp.status, f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            # Error texts may quote the URL, which may carry a secret (hook tokens).
            text = f"{type(exc).__name__}: {exc}".replace(row.url, redact_url(row.url))
            return False, None, text[:500]

    async def _give_up_recovery(self, run_id: UUID | None, row: DueDelivery) -> None:
        if run_id is None:
            return
        info: dict[str, Any] = {
            "type": "RecoveryFailed",
            "message": (
                f"the recovery webhook {redact_url(row.url)} could not be delivered "
                f"after {row.attempts} attempts; nothing resumed the run"
            ),
            "traceback": None,
        }
        try:
            if await self._store.fail_unrecovered(run_id, msgspec.json.encode(info)):
                logger.error("run %s failed: %s", run_id, info["message"])
        except errors.StoreError as exc:
            logger.warning("run %s: could not record its failed recovery: %s", run_id, exc)
