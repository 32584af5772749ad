"""Queue controls: pause, concurrency cap, rate limit."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from tidebase_async.store.base import StoreBase, read_retrying
from tidebase_async.store.records import ControlledClaim, QueueControl, _claimed
from tidebase_async.store.sql import Q
from tidebase_async.store.translate import _translate


class QueuesMixin(StoreBase):
    """Controlled claims and queue controls."""

    async def claim_controlled(
        self,
        *,
        worker_id: str,
        queue: str,
        limit: int,
        lease_s: float,
        versions: Sequence[str] = (),
    ) -> ControlledClaim:
        """Claim from a paused, capped or rate-limited queue, exactly within its
        controls: the queue's row stays locked while this counts its running runs (a
        fresh snapshot, after the lock), refills its token bucket and claims.
        ``versions``: as for ``claim``."""
        keys = list(versions)
        with _translate("claim (controlled queue)"):
            async with self._pool.acquire() as conn, conn.transaction():
                ctl = await conn.fetchrow(Q["lock_queue"], queue)
                if ctl is None:  # the controls were deleted meanwhile: nothing limits it
                    rows = await conn.fetch(
                        Q["claim_controlled"], worker_id, queue, lease_s, limit, keys
                    )
                    return ControlledClaim(runs=[_claimed(r) for r in rows])
                if ctl["paused"]:
                    return ControlledClaim(runs=[], held=True)
                allowed = limit
                if ctl["concurrency"] is not None:
                    running = await conn.fetchval(Q["count_running"], queue)
                    allowed = min(allowed, ctl["concurrency"] - running)
                rate = ctl["rate_per_minute"]
                tokens = 0.0
                if rate is not None:
                    capacity = max(1.0, rate / 60.0)
                    tokens = ctl["tokens"]
                    refilled_at = ctl["now"]
                    if ctl["refilled_at"] is None:
                        tokens = capacity
                    else:
                        # now() is when this transaction began, maybe before an
                        # earlier claimer (who refilled later) released the lock: the
                        # refill time never goes back, so no interval counts twice.
                        refilled_at = max(ctl["refilled_at"], ctl["now"])
                        elapsed = (refilled_at - ctl["refilled_at"]).total_seconds()
                        tokens = min(capacity, tokens + elapsed * rate / 60.0)
                    allowed = min(allowed, int(tokens + 1e-9))
                rows = []
                if allowed > 0:
                    rows = await conn.fetch(
                        Q["claim_controlled"], worker_id, queue, lease_s, allowed, keys
                    )
                retry_in = None
                if rate is not None:
                    tokens -= len(rows)
                    await conn.execute(Q["spend_tokens"], queue, tokens, refilled_at)
                    if tokens < 1.0:
                        retry_in = (1.0 - tokens) * 60.0 / rate
        # Held back only when the controls, not a lack of due runs, cut the claim.
        held = allowed < limit and len(rows) == max(allowed, 0)
        return ControlledClaim(runs=[_claimed(r) for r in rows], held=held, retry_in_s=retry_in)

    async def configure_queue(
        self,
        *,
        name: str,
        concurrency: int | None,
        rate_per_minute: float | None,
        paused: bool | None,
        set_concurrency: bool,
        set_rate: bool,
        set_paused: bool,
    ) -> QueueControl:
        with _translate("configure queue"):
            row = await self._pool.fetchrow(
                Q["configure_queue"],
                name,
                set_concurrency,
                set_rate,
                set_paused,
                concurrency,
                rate_per_minute,
                paused,
            )
        return _queue_control(row)

    @read_retrying
    async def queue_controls(self, names: Sequence[str] | None = None) -> list[QueueControl]:
        with _translate("read queue controls"):
            if names is None:
                rows = await self._pool.fetch(Q["all_queue_controls"])
            else:
                rows = await self._pool.fetch(Q["queue_controls"], list(names))
        return [_queue_control(r) for r in rows]

    @read_retrying
    async def queue_counts(self) -> dict[str, dict[str, int]]:
        with _translate("count runs by queue"):
            rows = await self._pool.fetch(Q["queue_counts"])
        counts: dict[str, dict[str, int]] = {}
        for row in rows:
            counts.setdefault(row["queue"], {})[row["status"]] = row["n"]
        return counts

    async def queue_depths(
        self, *, max_queues: int = 1000, max_count: int = 1_000_000
    ) -> list[tuple[str, int, float]]:
        """(queue, due queued runs, seconds the oldest of them has been due) of up to
        ``max_queues`` queues with queued runs, in one bounded statement (the metrics'
        queue gauges): each count stops at ``max_count``. Not retried: a scrape
        fails fast."""
        with _translate("queue depths"):
            rows = await self._pool.fetch(Q["queue_depths"], max_queues, max_count)
        return [(r["queue"], r["depth"], r["oldest_s"]) for r in rows]


def _queue_control(row: asyncpg.Record) -> QueueControl:
    return QueueControl(
        name=row["name"],
        concurrency=row["concurrency"],
        rate_per_minute=row["rate_per_minute"],
        paused=row["paused"],
    )
