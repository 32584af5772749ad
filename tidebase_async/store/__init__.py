"""The only code that imports asyncpg or holds SQL: one typed method per statement.

asyncpg errors stop here: callers see ``errors.StoreError`` and its subclasses.
jsonb values cross this boundary as msgspec-encoded JSON bytes (binary jsonb codec),
so nothing is decoded twice.

``Store`` is assembled here from one mixin per concern (``schema``, ``enqueue``,
``runs``, ``state``, ``waits``, ``gates``, ``keyed_events``, ``children``, ``control``,
``queues``, ``schedules``, ``outbox``, ``locks``, ``maintenance``, ``reads``,
``versions``, ``clock``, ``stats``), each over ``base.StoreBase`` (the pool). ``records`` holds
the Structs of the worker's claims and writes, ``rows`` the typed read models every
other read returns (no asyncpg record leaves this package), ``translate`` the error
translation, ``connection`` the connection and session helpers, ``pool`` the connection
pool.
"""

from __future__ import annotations

import time
import uuid

import anyio
import asyncpg

from tidebase_async import errors
from tidebase_async._util.dsn import describe_dsn
from tidebase_async.store.base import StoreBase, logger
from tidebase_async.store.children import ChildrenMixin
from tidebase_async.store.clock import ClockMixin, UnsettledRow
from tidebase_async.store.connection import (
    _is_closed,
    connect_kwargs,
    detect_pooler,
    open_connection,
)
from tidebase_async.store.control import ControlMixin
from tidebase_async.store.enqueue import EnqueueMixin
from tidebase_async.store.flow import FlowMixin
from tidebase_async.store.gates import GatesMixin
from tidebase_async.store.keyed_events import (
    EventSendResult,
    EventWaitRow,
    KeyedEventRow,
    KeyedEventsMixin,
)
from tidebase_async.store.locks import Leadership, LocksMixin, SessionLock
from tidebase_async.store.maintenance import MaintenanceMixin
from tidebase_async.store.outbox import OutboxMixin
from tidebase_async.store.pool import Pool
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
from tidebase_async.store.stats import StatsMixin
from tidebase_async.store.translate import _CONNECTION_ERRORS, _translate
from tidebase_async.store.versions import CheckedRun, VersionCountRow, VersionsMixin
from tidebase_async.store.waits import WaitsMixin

__all__ = [
    "CheckedRun",
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
    "EventSendResult",
    "EventWaitRow",
    "GateDetail",
    "GateResolution",
    "GateRow",
    "KeyedEventRow",
    "Leadership",
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
    "UnsettledRow",
    "UsageGroupRow",
    "UsageTotalsRow",
    "VersionCountRow",
    "_is_closed",
    "connect_kwargs",
    "describe_dsn",
    "detect_pooler",
    "open_connection",
    "probe_pooler",
]


class Store(
    SchemaMixin,
    EnqueueMixin,
    FlowMixin,
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
    KeyedEventsMixin,
    ChildrenMixin,
    ReadsMixin,
    VersionsMixin,
    ClockMixin,
    StatsMixin,
    StoreBase,
):
    """Typed access to the tidebase schema over a pool of asyncpg connections."""

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 20,
        connect_timeout: float = 10.0,
        pooled: bool | None = None,
    ) -> Store:
        """Open a pool, retrying with backoff for up to ``connect_timeout`` seconds.

        ``pooled``: whether ``dsn`` goes through a transaction-mode pooler (PgBouncer,
        Supavisor); None detects it (see ``connection.detect_pooler``). Through one, the
        pool sends no startup parameter but ``application_name``, keeps no prepared
        statement between statements and elects leaders by lease rows (``pooled`` is
        set on the store).

        Raises:
            DatabaseUnreachable: no connection within the time; names host, port and
                database and the last error.
            ConfigurationError: the DSN is malformed, authentication failed, or a
                pooler refused a startup parameter.
        """
        deadline = time.monotonic() + connect_timeout
        delay = 0.1
        while True:
            try:
                timeout = max(1.0, min(10.0, connect_timeout))
                if pooled is None:
                    pooled = await detect_pooler(dsn, timeout=timeout)
                pool = await Pool.open(
                    dsn,
                    min_size=min_size,
                    max_size=max_size,
                    timeout=timeout,
                    **connect_kwargs(pooled=pooled),
                )
                store = cls(pool, dsn)
                store.pooled = pooled
                return store
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
            except asyncpg.exceptions.ProtocolViolationError as exc:
                refused = _refused_startup_parameter(exc)
                if refused is None:
                    raise errors.StoreError(f"connecting to {describe_dsn(dsn)}: {exc}") from exc
                raise errors.ConfigurationError(
                    f"{describe_dsn(dsn)} refused the startup parameter {refused!r} "
                    f"({exc}): a connection pooler (PgBouncer, Supavisor) answers there. "
                    + (
                        "Pass Tidebase(pooled=True) or set TIDEBASE_POOLED=1 (or let it be "
                        "detected), so that tidebase sends only application_name"
                        if refused == "jit"
                        else f"Remove {refused!r} from the DSN's parameters, or list it in "
                        "the pooler's ignore_startup_parameters"
                    )
                ) from exc
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

    async def hears_notifications(self, listen_dsn: str, *, timeout_s: float = 2.0) -> bool:
        """Whether a session on ``listen_dsn`` hears a NOTIFY sent through this store's
        pool: false when ``listen_dsn`` goes through a transaction-mode pooler (its
        LISTEN stays on a server connection the pooler hands to others; PgBouncer drops
        that connection when the notification arrives) or reaches another database.
        A session-mode pooler passes, as a direct connection does. Waits up to
        ``timeout_s`` only when the answer is no.

        Raises:
            ConfigurationError: a malformed ``listen_dsn``.
            StoreError: no connection on ``listen_dsn`` (``ConnectionLost``), or the
                server refused it.
        """
        channel = f"tidebase_probe_{uuid.uuid4().hex}"
        heard = anyio.Event()
        try:
            with _translate(f"connecting to {describe_dsn(listen_dsn)}"):
                conn = await open_connection(listen_dsn, timeout=max(1.0, timeout_s * 2))
        except (ValueError, TypeError, OverflowError) as exc:
            raise errors.ConfigurationError(f"invalid listen DSN: {exc}") from exc
        try:
            with _translate("listen_dsn: LISTEN"):
                await conn.add_listener(channel, lambda *_: heard.set())
            await self.notify([(channel, "probe")])
            with anyio.move_on_after(timeout_s):
                await heard.wait()
            return heard.is_set()
        finally:
            conn.terminate()


async def probe_pooler(dsn: str, *, timeout: float = 10.0) -> bool:
    """Whether ``dsn`` goes through a connection pooler (one login, see
    ``connection.detect_pooler``).

    Raises:
        ConfigurationError: a malformed DSN.
        StoreError: no connection (``ConnectionLost``), or the server refused it.
    """
    try:
        with _translate(f"connecting to {describe_dsn(dsn)}"):
            return await detect_pooler(dsn, timeout=timeout)
    except (
        ValueError,
        TypeError,
        OverflowError,
        asyncpg.exceptions.ClientConfigurationError,
    ) as exc:
        raise errors.ConfigurationError(f"invalid DSN: {exc}") from exc


def _refused_startup_parameter(exc: asyncpg.exceptions.ProtocolViolationError) -> str | None:
    """The parameter a pooler refused at login (PgBouncer: SQLSTATE 08P01
    "unsupported startup parameter: jit"), or None for another protocol violation."""
    _, found, rest = str(exc).partition("unsupported startup parameter")
    if not found:
        return None
    words = rest.lstrip(": ").split()
    return words[0] if words else "?"
