"""Queue controls: pause, concurrency cap, rate limit."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

import asyncpg

from tidebase_async.models import ActiveSingleton, PendingDebounce, QueueKey
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
                key_retry: float | None = None
                key_held = False
                if allowed > 0 and (
                    ctl["per_key_concurrency"] is not None
                    or ctl["per_key_rate_per_minute"] is not None
                ):
                    rows, key_retry, key_held = await _claim_keyed(
                        conn, ctl, worker_id, queue, lease_s, allowed, keys
                    )
                elif allowed > 0:
                    rows = await conn.fetch(
                        Q["claim_controlled"], worker_id, queue, lease_s, allowed, keys
                    )
                retry_in = None
                if rate is not None:
                    tokens -= len(rows)
                    await conn.execute(Q["spend_tokens"], queue, tokens, refilled_at)
                    if tokens < 1.0:
                        retry_in = (1.0 - tokens) * 60.0 / rate
                if key_retry is not None:
                    retry_in = key_retry if retry_in is None else min(retry_in, key_retry)
        # Held back only when the controls, not a lack of due runs, cut the claim.
        held = (allowed < limit and len(rows) == max(allowed, 0)) or key_held
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
        per_key_concurrency: int | None = None,
        per_key_rate_per_minute: float | None = None,
        set_per_key_concurrency: bool = False,
        set_per_key_rate: bool = False,
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
                set_per_key_concurrency,
                set_per_key_rate,
                per_key_concurrency,
                per_key_rate_per_minute,
            )
        return _queue_control(row)

    async def prune_key_buckets(self, *, limit: int) -> int:
        """Delete up to ``limit`` per-key rate buckets that have refilled (or whose
        queue has no per-key rate any more); return how many."""
        with _translate("prune key buckets"):
            status = await self._pool.execute(Q["prune_key_buckets"], limit)
        return int(status.rsplit(" ", 1)[-1])

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

    @read_retrying
    async def queue_keys(
        self, queue: str, *, limit: int, max_keys: int, max_count: int
    ) -> tuple[list[QueueKey], bool, list[PendingDebounce], list[ActiveSingleton]]:
        """Queue ``queue``'s busiest ``limit`` concurrency keys (visiting at most
        ``max_keys`` queued and running keys, counting at most ``max_count`` queued runs
        of each), whether every key was visited, and up to ``limit`` pending debounce
        runs and active singleton runs of the queue."""
        with _translate("read a queue's keys"):
            rows = await self._pool.fetch(Q["queue_key_loads"], queue, max_keys, max_count, limit)
            debounces = await self._pool.fetch(Q["queue_debounces"], queue, limit)
            singletons = await self._pool.fetch(Q["queue_singletons"], queue, limit)
        keys = [QueueKey(key=r["key"], running=r["running"], queued=r["queued"]) for r in rows]
        complete = not rows or rows[0]["seen"] < max_keys
        return (
            keys,
            complete,
            [
                PendingDebounce(
                    run_id=r["id"],
                    workflow=r["workflow"],
                    key=r["debounce_key"],
                    run_at=r["run_at"],
                    deadline=r["debounce_deadline"],
                )
                for r in debounces
            ],
            [
                ActiveSingleton(
                    run_id=r["id"],
                    workflow=r["workflow"],
                    key=r["singleton_key"],
                    status=r["status"],
                )
                for r in singletons
            ],
        )

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
        per_key_concurrency=row["per_key_concurrency"],
        per_key_rate_per_minute=row["per_key_rate_per_minute"],
    )


#: Keys a keyed claim visits at most, beyond its limit (keys out of tokens are skipped
#: where they stand in the rotation, and the cursor moves past them).
_KEY_LOOKAHEAD = 32
_NO_CAP = 2**31 - 1


async def _claim_keyed(
    conn: asyncpg.Connection,
    ctl: asyncpg.Record,
    worker_id: str,
    queue: str,
    lease_s: float,
    allowed: int,
    versions: list[str],
) -> tuple[list[asyncpg.Record], float | None, bool]:
    """The claim of a queue with per-key caps (its row locked by the caller): up to
    ``allowed`` runs, round robin over the keys that have queued runs, starting after
    the key the previous claim served last (``queues.key_cursor``), so every key takes
    its turn however many keys and runs there are. Each key gives at most its cap minus
    its running runs (counted now, under the lock: exact across workers) and its
    bucket's whole tokens. Returns the claimed rows, when a key's rate held runs back,
    when to try again (seconds), and whether the per-key caps held runs back."""
    cap = ctl["per_key_concurrency"]
    rate = ctl["per_key_rate_per_minute"]
    visit = allowed + _KEY_LOOKAHEAD
    cursor = ctl["key_cursor"]
    rows_k = list(await conn.fetch(Q["queued_keys"], queue, cursor or "", None, cap, visit))
    if cursor is not None and len(rows_k) < visit:
        # Wrap around: the keys up to and including the cursor, after those past it.
        rows_k += await conn.fetch(Q["queued_keys"], queue, "", cursor, cap, visit - len(rows_k))
    found = [r["key"] for r in rows_k]
    keys, allow, buckets, short, cut = _allowances(rows_k, ctl, allowed)
    window = allowed * 4 + 64
    rows = await conn.fetch(
        Q["claim_keyed"],
        worker_id,
        queue,
        lease_s,
        allowed,
        versions,
        keys,
        allow,
        allowed,
        window,
        found[-1] if found else None,
    )
    retry_in = None
    if rate is not None:
        taken: dict[str, int] = {}
        for r in rows:
            if r["concurrency_key"] is not None:
                taken[r["concurrency_key"]] = taken.get(r["concurrency_key"], 0) + 1
        if taken:
            spent = sorted(taken)  # one lock order for every claimer
            await conn.execute(
                Q["spend_key_tokens"],
                queue,
                spent,
                [buckets[k].tokens - taken[k] for k in spent],
                [buckets[k].at for k in spent],
            )
        if short is not None:
            retry_in = (1.0 - short) * 60.0 / rate
    # Held when the caps, not a lack of runs, may have cut the claim (and every key
    # had its turn): the worker then waits for a NOTIFY (a run of the queue ended, one
    # was enqueued), retry_in or its poll, not for due times it could not act on.
    held = False
    if len(rows) < allowed and len(found) < visit and (cut or cap is not None):
        # Keys at their cap were left out of found: did one of them have due runs? The
        # worker then ignores the queue's due times, so it is told when the next
        # delayed run (maybe of a key with room) is due.
        row = await conn.fetchrow(Q["keys_held"], queue, cap or _NO_CAP)
        held = cut or row["held"]
        if held and row["next_s"] is not None:
            at = max(row["next_s"], 0.001)
            retry_in = at if retry_in is None else min(retry_in, at)
    return rows, retry_in, held


class _Bucket(NamedTuple):
    tokens: float  # now, refilled
    at: datetime  # the refill time to store


def _allowances(
    rows_k: list[asyncpg.Record], ctl: asyncpg.Record, allowed: int
) -> tuple[list[str], list[int], dict[str, _Bucket], float | None, bool]:
    """For the visited keys (``queued_keys`` rows): the keys that may start runs and
    how many each (its cap minus its running runs, its bucket's whole tokens, at most
    ``allowed``), every key's refilled bucket, the most tokens of a key short of one
    (None: none), and whether a cap or bucket cut any key below ``allowed``."""
    cap = ctl["per_key_concurrency"]
    rate = ctl["per_key_rate_per_minute"]
    now = ctl["now"]
    buckets: dict[str, _Bucket] = {}
    if rate is not None:
        capacity = max(1.0, rate / 60.0)
        for r in rows_k:
            if r["refilled_at"] is None:
                buckets[r["key"]] = _Bucket(capacity, now)
            else:
                # As for the queue's bucket: now() is when this transaction began, maybe
                # before an earlier claimer refilled; the refill time never goes back.
                at = max(r["refilled_at"], now)
                elapsed = (at - r["refilled_at"]).total_seconds()
                buckets[r["key"]] = _Bucket(min(capacity, r["tokens"] + elapsed * rate / 60.0), at)
    keys: list[str] = []
    allow: list[int] = []
    short: float | None = None
    cut = False
    for r in rows_k:
        key = r["key"]
        n = allowed
        if cap is not None:
            n = min(n, cap - r["running"])
        if rate is not None:
            whole = int(buckets[key].tokens + 1e-9)
            if whole < 1:
                short = max(short or 0.0, buckets[key].tokens)
            n = min(n, whole)
        cut = cut or n < allowed
        if n > 0:
            keys.append(key)
            allow.append(n)
    return keys, allow, buckets, short, cut
