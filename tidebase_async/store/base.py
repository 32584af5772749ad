"""What every part of ``Store`` shares: the pool, and the retry of multi-row writes."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg

from tidebase_async import errors
from tidebase_async.store.translate import _TRANSIENT_ERRORS, _translate

# Named for the package, not this module: `tidebase migrate` listens on it by name.
logger = logging.getLogger("tidebase_async.store")


class StoreBase:
    """The pool under every ``Store`` method; each concern's mixin extends this."""

    _pool: asyncpg.Pool
    dsn: str

    def __init__(self, pool: asyncpg.Pool, dsn: str) -> None:
        self._pool = pool
        self.dsn = dsn

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._pool.close()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        with _translate("acquiring a connection"):
            async with self._pool.acquire() as conn:
                yield conn

    async def _fetch_retrying_deadlocks(self, what: str, sql: str, *args: Any) -> list[Any]:
        """Run a multi-row write, again when Postgres picked it as a deadlock (or
        serialization) victim: such a statement was rolled back whole, so repeating it
        is safe. Multi-row writers lock in id order, but an enqueue whose dedupe keys
        hit active runs locks those in key order and can still meet a worker's batch."""
        delay = 0.005
        for attempt in range(1, 6):
            try:
                with _translate(what):
                    return list(await self._pool.fetch(sql, *args))
            except errors.StoreError as exc:
                transient = isinstance(exc.__cause__, _TRANSIENT_ERRORS)
                if not transient or attempt == 5:
                    raise
                logger.info("%s: %s; retrying", what, exc.__cause__)
                await anyio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")
