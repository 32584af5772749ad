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
import asyncpg
import msgspec

from tidebase_async import errors
from tidebase_async.store import Store
from tidebase_async.web.signing import DELIVERY_HEADER, SIGNATURE_HEADER, sign

if TYPE_CHECKING:
    import aiohttp

logger = logging.getLogger(__name__)

_BATCH = 50
_MAX_BACKOFF_S = 300.0


def backoff_s(attempts: int) -> float:
    """Seconds before the next try after ``attempts`` failed ones: 1, 2, 4, ... capped
    at 5 minutes, drawn from [d/2, d]."""
    delay = min(_MAX_BACKOFF_S, 2.0 ** min(max(attempts - 1, 0), 20))
    return random.uniform(delay / 2, delay)


class Deliverer:
    """Delivers due outbox rows. Owned by a worker; ``close()`` when done."""

    def __init__(
        self,
        store: Store,
        *,
        secret: str | None,
        timeout_s: float = 10.0,
        concurrency: int = 8,
    ) -> None:
        self._store = store
        self._secret = secret
        self._timeout_s = timeout_s
        self._limiter = anyio.CapacityLimiter(concurrency)
        self._session: aiohttp.ClientSession | None = None
        self.delivered = 0
        self.failed_attempts = 0

    async def close(self) -> None:
        if self._session is not None:
            with anyio.CancelScope(shield=True):
                await self._session.close()
            self._session = None

    async def deliver_due(self) -> int:
        """Send one batch of due deliveries; return how many were taken."""
        rows = await self._store.take_deliveries(limit=_BATCH, lease_s=self._timeout_s * 3)
        if not rows:
            return 0
        if self._session is None:
            # Imported on first use: a worker with nothing to deliver never pays for it.
            import aiohttp

            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout_s),
                headers={"User-Agent": "tidebase-async"},
            )
        async with anyio.create_task_group() as tg:
            for row in rows:
                tg.start_soon(self._deliver, row)
        return len(rows)

    async def _deliver(self, row: asyncpg.Record) -> None:
        async with self._limiter:
            delivered, status, error = await self._send(row)
        if not delivered:
            self.failed_attempts += 1
            logger.warning(
                "delivery %s (%s to %s) attempt %d failed: %s",
                row["id"],
                row["event"],
                row["url"],
                row["attempts"],
                error,
            )
        else:
            self.delivered += 1
        try:
            done = await self._store.delivery_done(
                row["id"],
                delivered=delivered,
                http_status=status,
                error=error,
                retry_in_s=backoff_s(row["attempts"]),
            )
        except errors.StoreError as exc:
            # Its lease runs out and it is sent again: receivers dedupe on the id.
            logger.warning("outcome of delivery %s not recorded: %s", row["id"], exc)
            return
        if done is not None and done["status"] == "failed" and done["event"] == "run.resume":
            await self._give_up_recovery(done["run_id"], row)

    async def _send(self, row: asyncpg.Record) -> tuple[bool, int | None, str | None]:
        if not self._secret:
            return False, None, "no webhook secret is configured: deliveries cannot be signed"
        body = bytes(row["payload"])
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self._secret, body),
            DELIVERY_HEADER: str(row["id"]),
        }
        import aiohttp

        assert self._session is not None
        try:
            async with self._session.post(
                row["url"], data=body, headers=headers, allow_redirects=False
            ) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    return True, resp.status, None
                return False, resp.status, f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            return False, None, f"{type(exc).__name__}: {exc}"[:500]

    async def _give_up_recovery(self, run_id: UUID | None, row: asyncpg.Record) -> None:
        if run_id is None:
            return
        info: dict[str, Any] = {
            "type": "RecoveryFailed",
            "message": (
                f"the recovery webhook {row['url']} could not be delivered after "
                f"{row['attempts']} attempts; nothing resumed the run"
            ),
            "traceback": None,
        }
        try:
            if await self._store.fail_unrecovered(run_id, msgspec.json.encode(info)):
                logger.error("run %s failed: %s", run_id, info["message"])
        except errors.StoreError as exc:
            logger.warning("run %s: could not record its failed recovery: %s", run_id, exc)
