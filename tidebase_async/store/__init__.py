"""The only code that imports asyncpg or holds SQL: one typed method per statement.

asyncpg errors stop here: callers see ``errors.StoreError`` and its subclasses.
jsonb values cross this boundary as msgspec-encoded JSON bytes (binary jsonb codec),
so nothing is decoded twice.

``Store`` is assembled here from one mixin per concern (``schema``, ``enqueue``,
``runs``, ``state``, ``waits``, ``gates``, ``children``, ``control``, ``queues``,
``schedules``, ``outbox``, ``locks``, ``maintenance``, ``reads``), each over
``base.StoreBase`` (the pool). ``records`` holds the Structs of the worker's claims and
writes, ``rows`` the typed read models every other read returns (no asyncpg record
leaves this package), ``translate`` the error translation, ``connection`` the
connection and session helpers.
"""

from __future__ import annotations

import time

import anyio
import asyncpg

from tidebase_async import errors
from tidebase_async._util.dsn import describe_dsn
from tidebase_async.store.base import StoreBase, logger
from tidebase_async.store.children import ChildrenMixin
from tidebase_async.store.connection import (
    _is_closed,
    connect_kwargs,
    open_connection,
)
from tidebase_async.store.control import ControlMixin
from tidebase_async.store.enqueue import EnqueueMixin
from tidebase_async.store.gates import GatesMixin
from tidebase_async.store.locks import LocksMixin, SessionLock
from tidebase_async.store.maintenance import MaintenanceMixin
from tidebase_async.store.outbox import OutboxMixin
from tidebase_async.store.queues import QueuesMixin
from tidebase_async.store.reads import ReadsMixin
from tidebase_async.store.records import (
    Checkpoint,
    ClaimedRun,
    Completion,
    ControlledClaim,
    EnqueueRow,
    GateResolution,
    NewRun,
    QueueControl,
    ScheduledRun,
    StepRecord,
)
from tidebase_async.store.rows import (
    ChildRow,
    ChildStatusRow,
    DeliveryOutcome,
    DeliveryRow,
    DueDelivery,
    DueSchedule,
    EventRow,
    GateDetail,
    GateRow,
    RunListRow,
    RunRow,
    RunStatusRow,
    ScheduleRow,
    StateVersionRow,
    StepRow,
    UsageGroupRow,
    UsageTotalsRow,
)
from tidebase_async.store.runs import RunsMixin
from tidebase_async.store.schedules import SchedulesMixin
from tidebase_async.store.schema import SchemaMixin
from tidebase_async.store.state import StateMixin
from tidebase_async.store.translate import _CONNECTION_ERRORS
from tidebase_async.store.waits import WaitsMixin

__all__ = [
    "Checkpoint",
    "ChildRow",
    "ChildStatusRow",
    "ClaimedRun",
    "Completion",
    "ControlledClaim",
    "DeliveryOutcome",
    "DeliveryRow",
    "DueDelivery",
    "DueSchedule",
    "EnqueueRow",
    "EventRow",
    "GateDetail",
    "GateResolution",
    "GateRow",
    "NewRun",
    "QueueControl",
    "RunListRow",
    "RunRow",
    "RunStatusRow",
    "ScheduleRow",
    "ScheduledRun",
    "SessionLock",
    "StateVersionRow",
    "StepRecord",
    "StepRow",
    "Store",
    "UsageGroupRow",
    "UsageTotalsRow",
    "_is_closed",
    "connect_kwargs",
    "describe_dsn",
    "open_connection",
]


class Store(
    SchemaMixin,
    EnqueueMixin,
    RunsMixin,
    StateMixin,
    MaintenanceMixin,
    LocksMixin,
    ControlMixin,
    OutboxMixin,
    QueuesMixin,
    SchedulesMixin,
    WaitsMixin,
    GatesMixin,
    ChildrenMixin,
    ReadsMixin,
    StoreBase,
):
    """Typed access to the tidebase schema over an asyncpg pool."""

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 20,
        connect_timeout: float = 10.0,
    ) -> Store:
        """Open a pool, retrying with backoff for up to ``connect_timeout`` seconds.

        Raises:
            DatabaseUnreachable: no connection within the time; names host, port and
                database and the last error.
            ConfigurationError: the DSN is malformed or authentication failed.
        """
        deadline = time.monotonic() + connect_timeout
        delay = 0.1
        while True:
            try:
                pool = await asyncpg.create_pool(
                    dsn,
                    min_size=min_size,
                    max_size=max_size,
                    timeout=max(1.0, min(10.0, connect_timeout)),
                    **connect_kwargs(),
                )
                return cls(pool, dsn)
            except (
                asyncpg.exceptions.InvalidAuthorizationSpecificationError,
                asyncpg.exceptions.InvalidPasswordError,
                asyncpg.exceptions.InvalidCatalogNameError,
            ) as exc:
                raise errors.ConfigurationError(f"cannot use {describe_dsn(dsn)}: {exc}") from exc
            except (
                ValueError,
                TypeError,
                OverflowError,  # a port past 65535
                asyncpg.exceptions.ClientConfigurationError,
            ) as exc:
                raise errors.ConfigurationError(f"invalid database DSN: {exc}") from exc
            except (*_CONNECTION_ERRORS, TimeoutError, asyncpg.PostgresError) as exc:
                if time.monotonic() + delay > deadline:
                    raise errors.DatabaseUnreachable(
                        f"cannot connect to Postgres at {describe_dsn(dsn)} after "
                        f"{connect_timeout:g}s: {type(exc).__name__}: {exc}. Is the server "
                        "running and the DSN (TIDEBASE_DATABASE_URL) right?"
                    ) from exc
                logger.info("database not reachable yet (%s); retrying in %.1fs", exc, delay)
                await anyio.sleep(delay)
                delay = min(delay * 2, 1.0)
