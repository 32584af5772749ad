"""The database clock as tests see it: a virtual clock for the testing kit, and the
reads the kit needs to tell when nothing is left to do.

Every statement of the library reads time through ``tidebase.now()``; installing the
virtual clock (in a test's own database, never in production) makes that function add
an offset kept in one row, which ``advance_clock_to`` moves forward. Nothing else
changes: the same statements, the same engine.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from tidebase_async.store.base import StoreBase
from tidebase_async.store.sql import Q
from tidebase_async.store.translate import _translate


class UnsettledRow(msgspec.Struct, frozen=True, kw_only=True):
    """Something a worker can still move now: a ``run``, a due ``schedule`` tick or a
    due outbound ``delivery``; ``id`` is the run's id, the schedule's name or the
    delivery's id."""

    kind: str
    id: str
    workflow: str
    status: str


class ClockMixin(StoreBase):
    """The virtual clock of the testing kit and its idleness reads."""

    async def install_virtual_clock(self) -> None:
        """Make ``tidebase.now()`` the server's clock plus a stored offset (0 now). For
        a test's own database only: the function then reads a table on every call."""
        with _translate("install the virtual clock"):
            await self._pool.execute(Q["install_virtual_clock"])

    async def virtual_clock_installed(self) -> bool:
        with _translate("read whether the virtual clock is installed"):
            return bool(await self._pool.fetchval(Q["virtual_clock_installed"]))

    async def advance_clock_to(self, at: datetime) -> datetime:
        """Move the virtual clock forward to ``at`` (never back); the time it reads."""
        with _translate("advance the virtual clock"):
            now = await self._pool.fetchval(Q["advance_virtual_clock_to"], at)
        assert isinstance(now, datetime)
        return now

    async def next_timer(self) -> datetime | None:
        """The earliest moment after now at which something becomes due by the clock
        alone (a timer, a delayed run, a deadline, a schedule tick, a delivery)."""
        with _translate("read the next timer"):
            at = await self._pool.fetchval(Q["next_timer"])
        assert at is None or isinstance(at, datetime)
        return at

    async def unsettled_work(self, *, limit: int) -> list[UnsettledRow]:
        """What a worker can still move without a decision or a clock change."""
        with _translate("read the unsettled work"):
            rows = await self._pool.fetch(Q["unsettled_work"], limit)
        return [
            UnsettledRow(kind=r["kind"], id=r["id"], workflow=r["workflow"], status=r["status"])
            for r in rows
        ]
