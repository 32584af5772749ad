"""The only code that imports asyncpg or holds SQL: one typed method per statement.

asyncpg errors stop here: callers see ``errors.StoreError`` and its subclasses.
jsonb values cross this boundary as msgspec-encoded JSON bytes (binary jsonb codec),
so nothing is decoded twice.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit
from uuid import UUID

import anyio
import asyncpg
import msgspec

from tidebase_async import errors
from tidebase_async.store.sql import Q, migrations

logger = logging.getLogger(__name__)

# Advisory lock key for migrations: hashtext('tidebase.migrate') computed once, fixed.
_MIGRATION_LOCK = 7_321_094_451_006_132_811

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.InterfaceError,
    # e.g. "cannot switch to state 15; another operation (2) is in progress": the
    # server ended the session (terminated, idle timeout) and asyncpg is mid-way
    # through noticing; the connection is unusable.
    asyncpg.exceptions.InternalClientError,
    ConnectionError,
    OSError,
)


_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
)


class ClaimedRun(msgspec.Struct, frozen=True, kw_only=True):
    id: UUID
    workflow: str
    queue: str
    input: bytes | None
    state: bytes
    attempt: int
    released: int
    max_attempts: int
    deadline_at: datetime | None
    step_count: int
    created_at: datetime
    db_now: datetime
    # Read with the claim; a suspension is refused once it changed (see suspend_run).
    wake_seq: int = 0


class StepRecord(msgspec.Struct, frozen=True, kw_only=True):
    position: int
    name: str
    status: str
    run_attempt: int
    output: bytes | None
    error: bytes | None
    replay_failure: bool = True
    kind: str = "step"
    # The state as of this entry, when the entry's own code wrote it.
    state_after: bytes | None = None


class Checkpoint(msgspec.Struct, frozen=True, kw_only=True):
    """A step outcome to record for the claim (run_id, attempt)."""

    run_id: UUID
    attempt: int
    position: int
    name: str
    status: str
    attempts: int
    output: bytes | None
    error: bytes | None
    started_at: datetime
    event_data: bytes
    kind: str = "step"
    event_type: str = ""
    wrote_state: bool = False


class QueueControl(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    concurrency: int | None = None
    rate_per_minute: float | None = None
    paused: bool = False

    @property
    def controlled(self) -> bool:
        return self.paused or self.concurrency is not None or self.rate_per_minute is not None


class ControlledClaim(msgspec.Struct, frozen=True, kw_only=True):
    """What a claim from a controlled queue got; ``held`` when its controls (pause,
    cap, rate) allowed fewer runs than asked, and when to try again if its rate held
    it back (``retry_in_s``)."""

    runs: list[ClaimedRun]
    held: bool = False
    retry_in_s: float | None = None


class GateResolution(msgspec.Struct, frozen=True, kw_only=True):
    """What ``Store.resolve_gate`` found: ``resolved``, ``expired`` (found past its
    time, and closed as expired), ``closed`` (decided before: ``status``),
    ``run_finished`` (its run ended: ``status``), ``bad_token``, ``no_run``, ``no_gate``.
    ``queue`` is set when the run was waiting and went back to it."""

    outcome: str
    status: str | None = None
    queue: str | None = None


class Completion(msgspec.Struct, frozen=True, kw_only=True):
    """A run's output to record for the claim (run_id, attempt)."""

    run_id: UUID
    attempt: int
    output: bytes


class EnqueueRow(msgspec.Struct, frozen=True, kw_only=True):
    id: UUID
    inserted: bool
    queue: str
    dedupe_key: str | None
    due: bool


class NewRun(msgspec.Struct, frozen=True, kw_only=True):
    """A run to insert; ``input`` and ``metadata`` are encoded JSON. A batch of these is
    sent as one JSON document (see ``enqueue_runs``), field names as its columns."""

    id: UUID
    workflow: str
    queue: str
    input: msgspec.Raw
    priority: int
    dedupe_key: str | None
    metadata: msgspec.Raw | None
    parent_id: UUID | None
    max_attempts: int
    run_at: datetime | None
    delay_s: float
    deadline_at: datetime | None
    channels: list[str] | None = None


class ScheduledRun(NewRun, frozen=True, kw_only=True):
    """The run of one schedule tick."""

    schedule: str
    fire_time: datetime


_batch_encoder = msgspec.json.Encoder()


def describe_dsn(dsn: str) -> str:
    """'host H port P database D' for error messages (never the password)."""
    try:
        parts = urlsplit(dsn)
        query = parse_qs(parts.query)
        host = parts.hostname or (query.get("host") or ["localhost"])[0]
        port = parts.port or int((query.get("port") or ["5432"])[0])
        database = parts.path.lstrip("/") or (query.get("dbname") or [""])[0] or "(default)"
    except ValueError:
        return "an unparsable DSN"
    return f"host {host} port {port} database {database}"


def _jsonb_encode(value: bytes) -> bytes:
    return b"\x01" + value


def _jsonb_decode(value: bytes) -> bytes:
    return value[1:]


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=_jsonb_encode,
        decoder=_jsonb_decode,
        format="binary",
    )


@contextlib.contextmanager
def _translate(what: str) -> Any:
    """Turn driver errors into the library's; keep the original on __cause__."""
    try:
        yield
    except errors.TidebaseError:
        raise
    except _CONNECTION_ERRORS as exc:
        raise errors.ConnectionLost(f"{what}: database connection lost: {exc}") from exc
    except asyncpg.exceptions.DataError as exc:
        if type(exc) is not asyncpg.exceptions.DataError:
            raise errors.StoreError(f"{what}: {type(exc).__name__}: {exc}") from exc
        # asyncpg could not encode an argument (a date out of Postgres' range, say): bad
        # input, not a database failure, and another try would fail the same way.
        raise errors.ConfigurationError(f"{what}: a value the database refuses: {exc}") from exc
    except asyncpg.PostgresError as exc:
        raise errors.StoreError(f"{what}: {type(exc).__name__}: {exc}") from exc


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset: nothing. asyncpg's default runs RESET ALL, UNLISTEN and friends
    after every pooled statement, doubling round trips; our pooled sessions never keep
    state (the two that take advisory locks clean up through ``_clean_session``, and
    open transactions are still rolled back by the pool)."""


async def _lock_or_close(conn: asyncpg.Connection, sql: str, key: int) -> Any:
    """Take an advisory lock. If we are interrupted before knowing the answer, the
    server may have granted it: close the connection rather than return a pooled
    session that silently holds the lock (the pool does not reset sessions)."""
    try:
        return await conn.fetchval(sql, key)
    except BaseException:
        if not _is_closed(conn):
            conn.terminate()
        raise


async def _clean_session(conn: asyncpg.Connection) -> None:
    """Drop advisory locks and session settings before a connection goes back to the
    pool; a connection that cannot be cleaned is closed instead of reused."""
    with anyio.CancelScope(shield=True):
        try:
            await conn.execute("SELECT pg_advisory_unlock_all(); RESET ALL")
        except BaseException as exc:
            # Includes a native task.cancel(), which anyio's shield does not stop.
            if not _is_closed(conn):
                conn.terminate()
            if not isinstance(exc, Exception):
                raise


def _is_closed(conn: asyncpg.Connection) -> bool:
    """Whether a pooled connection is gone. asyncpg detaches the pool's proxy from a
    connection that closed (terminated, server restart), after which every call on the
    proxy, ``is_closed()`` included, raises InterfaceError."""
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        return True


def connect_kwargs() -> dict[str, Any]:
    return {
        "init": _init_connection,
        "reset": _keep_session,
        # Plans of the CTE statements are tiny; JIT compilation would only add latency.
        "server_settings": {"application_name": "tidebase", "jit": "off"},
    }


async def open_connection(dsn: str, *, timeout: float = 10.0) -> asyncpg.Connection:
    """One dedicated connection (the LISTEN connection), with the library's codecs."""
    conn = await asyncpg.connect(
        dsn, timeout=timeout, server_settings={"application_name": "tidebase-listener"}
    )
    await _init_connection(conn)
    return conn


class Store:
    """Typed access to the tidebase schema over an asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool, dsn: str) -> None:
        self._pool = pool
        self.dsn = dsn

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

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._pool.close()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        with _translate("acquiring a connection"):
            async with self._pool.acquire() as conn:
                yield conn

    # -- schema -----------------------------------------------------------------------

    async def migrate(self) -> int:
        """Apply pending migrations; return the schema version.

        Safe when many processes start at once: the work happens under an advisory lock
        and each migration commits with its version row.

        Raises:
            SchemaVersionError: the database was migrated by a newer tidebase-async.
        """
        known = migrations()
        latest = known[-1][0]
        with _translate("migrating"):
            async with self._pool.acquire() as conn:
                current = await self._version(conn)
                self._check_version(current, latest)
                if current == latest:
                    return current
                await _lock_or_close(conn, "SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
                try:
                    await conn.execute(
                        "CREATE SCHEMA IF NOT EXISTS tidebase;"
                        "CREATE TABLE IF NOT EXISTS tidebase.schema_migrations ("
                        " version integer PRIMARY KEY, name text NOT NULL,"
                        " applied_at timestamptz NOT NULL DEFAULT now())"
                    )
                    current = await self._version(conn)
                    self._check_version(current, latest)
                    for version, name, sql in known:
                        if version <= current:
                            continue
                        async with conn.transaction():
                            await conn.execute(sql)
                            await conn.execute(
                                "INSERT INTO tidebase.schema_migrations (version, name)"
                                " VALUES ($1, $2)",
                                version,
                                name,
                            )
                        logger.info("applied migration %04d_%s", version, name)
                    return latest
                finally:
                    await _clean_session(conn)

    @staticmethod
    async def _version(conn: asyncpg.Connection) -> int:
        exists = await conn.fetchval("SELECT to_regclass('tidebase.schema_migrations')")
        if exists is None:
            return 0
        return int(await conn.fetchval(Q["schema_version"]) or 0)

    @staticmethod
    def _check_version(current: int, latest: int) -> None:
        if current > latest:
            raise errors.SchemaVersionError(
                f"the database schema is at version {current}, but this tidebase-async "
                f"knows versions up to {latest}: it was migrated by a newer release. "
                "Upgrade tidebase-async; refusing to touch the data."
            )

    # -- enqueue ----------------------------------------------------------------------

    async def enqueue(self, run: NewRun) -> EnqueueRow:
        return (await self.enqueue_many([run]))[0]

    async def enqueue_many(self, runs: Sequence[NewRun]) -> list[EnqueueRow]:
        # One JSON document instead of twelve parameter arrays: msgspec encodes the
        # batch (inputs embedded as they are) far faster than asyncpg encodes arrays.
        batch = _batch_encoder.encode(runs)
        rows = await self._fetch_retrying_deadlocks("enqueue_many", Q["enqueue_runs"], batch)
        return [
            EnqueueRow(id=r[0], inserted=r[1], queue=r[2], dedupe_key=r[3], due=r[4]) for r in rows
        ]

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

    async def notify(self, messages: Sequence[tuple[str, str]]) -> None:
        """Send (channel, payload) notifications in one statement, outside any data
        transaction."""
        if not messages:
            return
        with _translate("notify"):
            await self._pool.execute(
                Q["notify"], [c for c, _ in messages], [p for _, p in messages]
            )

    # -- worker -----------------------------------------------------------------------

    async def claim(
        self, *, worker_id: str, queues: Sequence[str], limit: int, lease_s: float
    ) -> list[ClaimedRun]:
        with _translate("claim"):
            if len(queues) == 1:
                rows = await self._pool.fetch(
                    Q["claim_runs_one"], worker_id, queues[0], lease_s, limit
                )
            else:
                share = -(-limit // len(queues))
                rows = await self._pool.fetch(
                    Q["claim_runs_many"], worker_id, list(queues), lease_s, limit, share
                )
        return [_claimed(row) for row in rows]

    async def claim_by_id(
        self, *, worker_id: str, run_id: UUID, lease_s: float
    ) -> ClaimedRun | None:
        with _translate("claim run"):
            row = await self._pool.fetchrow(Q["claim_run_by_id"], worker_id, run_id, lease_s)
        return None if row is None else _claimed(row)

    async def start_inline(
        self,
        *,
        run_id: UUID,
        worker_id: str,
        workflow: str,
        queue: str,
        input: bytes,
        metadata: bytes | None,
        max_attempts: int,
        lease_s: float,
        channels: bytes | None = None,
        recovery_webhook: str | None = None,
    ) -> ClaimedRun | None:
        """Insert a run leased to ``worker_id``; None when ``run_id`` exists already."""
        with _translate("start inline run"):
            row = await self._pool.fetchrow(
                Q["start_inline_run"],
                run_id,
                worker_id,
                workflow,
                queue,
                input,
                metadata,
                max_attempts,
                lease_s,
                channels,
                recovery_webhook,
            )
        return None if row is None else _claimed(row)

    async def load_steps(self, run_ids: Sequence[UUID]) -> dict[UUID, list[StepRecord]]:
        if not run_ids:
            return {}
        with _translate("load checkpoints"):
            rows = await self._pool.fetch(Q["load_steps"], list(run_ids))
        history: dict[UUID, list[StepRecord]] = {}
        for row in rows:
            history.setdefault(row[0], []).append(
                StepRecord(
                    position=row[1],
                    name=row[2],
                    status=row[3],
                    run_attempt=row[4],
                    output=row[5],
                    error=row[6],
                    replay_failure=row[7],
                    kind=row[8],
                    state_after=row[9],
                )
            )
        return history

    async def heartbeat(
        self, *, worker_id: str, run_ids: Sequence[UUID], lease_s: float
    ) -> set[tuple[UUID, int]]:
        """Extend the leases; return the (id, attempt) claims this worker still holds."""
        with _translate("heartbeat"):
            rows = await self._pool.fetch(Q["heartbeat"], worker_id, list(run_ids), lease_s)
        return {(row[0], row[1]) for row in rows}

    async def checkpoint_steps(self, *, worker_id: str, items: Sequence[Checkpoint]) -> set[UUID]:
        """Record step outcomes (at most one per run) in one statement; return the run
        ids whose fence held. Rows are locked in id order (see queries.sql)."""
        ordered = sorted(items, key=lambda c: c.run_id)
        rows = await self._fetch_retrying_deadlocks(
            "checkpoint",
            Q["checkpoint_steps"],
            worker_id,
            [c.run_id for c in ordered],
            [c.attempt for c in ordered],
            [c.position for c in ordered],
            [c.name for c in ordered],
            [c.status for c in ordered],
            [c.attempts for c in ordered],
            [c.output for c in ordered],
            [c.error for c in ordered],
            [c.started_at for c in ordered],
            [c.event_data for c in ordered],
            [c.kind for c in ordered],
            [c.event_type or _default_event_type(c) for c in ordered],
            [c.wrote_state for c in ordered],
        )
        return {row[0] for row in rows}

    async def step_outcome(self, *, run_id: UUID, position: int) -> tuple[str, int] | None:
        """(status, run attempt) of the checkpoint at ``position``, if any."""
        with _translate("read checkpoint"):
            row = await self._pool.fetchrow(Q["step_outcome"], run_id, position)
        return None if row is None else (row["status"], row["run_attempt"])

    async def set_state(
        self,
        *,
        run_id: UUID,
        worker_id: str,
        attempt: int,
        state: bytes,
        event_data: bytes,
        step: str | None = None,
    ) -> int:
        """Replace the state; return its new version."""
        with _translate("state update"):
            row = await self._pool.fetchrow(
                Q["set_state"], run_id, worker_id, attempt, state, event_data, step
            )
        if row is None:
            raise errors.LeaseLost(f"run {run_id} is no longer leased to this worker")
        version: int = row["state_version"]
        return version

    async def label_state(
        self, *, run_id: UUID, worker_id: str, attempt: int, label: str
    ) -> int | None:
        """Label the latest state version; None when the run has none (or the fence
        did not hold)."""
        with _translate("label state"):
            version: int | None = await self._pool.fetchval(
                Q["label_state"], run_id, worker_id, attempt, label
            )
        return version

    async def state_history(self, run_id: UUID) -> list[asyncpg.Record]:
        with _translate("state history"):
            return list(await self._pool.fetch(Q["state_history"], run_id))

    async def state_at(self, run_id: UUID, version: int) -> asyncpg.Record | None:
        with _translate("state version"):
            row: asyncpg.Record | None = await self._pool.fetchrow(Q["state_at"], run_id, version)
        return row

    async def record_usage(
        self,
        *,
        run_id: UUID,
        worker_id: str,
        attempt: int,
        position: int,
        seq: int,
        step: str | None,
        kind: str,
        provider: str | None,
        model: str | None,
        input_tokens: int,
        output_tokens: int,
        cost_usd: Decimal,
        metadata: bytes | None,
    ) -> bool:
        """Record usage once; False when (position, seq) was recorded before."""
        with _translate("record usage"):
            row = await self._pool.fetchrow(
                Q["record_usage"],
                run_id,
                worker_id,
                attempt,
                position,
                seq,
                step,
                kind,
                provider,
                model,
                input_tokens,
                output_tokens,
                cost_usd,
                metadata,
            )
        if not row["fenced"]:
            raise errors.LeaseLost(f"run {run_id} is no longer leased to this worker")
        return bool(row["recorded"])

    async def run_usage(self, run_id: UUID) -> asyncpg.Record:
        with _translate("run usage"):
            row: asyncpg.Record = await self._pool.fetchrow(Q["run_usage"], run_id)
        return row

    async def usage_summary(
        self,
        *,
        workflow: str | None,
        since: datetime | None,
        until: datetime | None,
        folded: int,
    ) -> list[asyncpg.Record]:
        with _translate("usage summary"):
            return list(await self._pool.fetch(Q["usage_summary"], workflow, since, until, folded))

    async def complete_runs(self, *, worker_id: str, items: Sequence[Completion]) -> set[UUID]:
        """Complete runs in one statement; return the run ids whose fence held."""
        ordered = sorted(items, key=lambda c: c.run_id)
        rows = await self._fetch_retrying_deadlocks(
            "completing runs",
            Q["complete_runs"],
            worker_id,
            [c.run_id for c in ordered],
            [c.attempt for c in ordered],
            [c.output for c in ordered],
        )
        return {row[0] for row in rows}

    async def fail_run(
        self,
        *,
        run_id: UUID,
        worker_id: str,
        attempt: int,
        error: bytes,
        retry_in_s: float | None,
        event_data: bytes,
    ) -> tuple[str, str]:
        """Fail or requeue the run; return (new status, queue)."""
        # A run's terminal status wakes its parent (trigger), locking the parent after
        # the run: a cancellation locking both in id order can meet it in a deadlock.
        rows = await self._fetch_retrying_deadlocks(
            "failing run", Q["fail_run"], run_id, worker_id, attempt, error, retry_in_s, event_data
        )
        row = rows[0] if rows else None
        if row is None:
            raise errors.LeaseLost(f"run {run_id} is no longer leased to this worker")
        return row["status"], row["queue"]

    async def release_runs(
        self, *, worker_id: str, claims: Sequence[tuple[UUID, int]]
    ) -> list[str]:
        """Hand (run id, attempt) claims back to the queue unspent; return their queues."""
        if not claims:
            return []
        with _translate("releasing runs"):
            rows = await self._pool.fetch(
                Q["release_runs"], worker_id, [c[0] for c in claims], [c[1] for c in claims]
            )
        return [row["queue"] for row in rows]

    async def seconds_until_due(self, run_id: UUID) -> float:
        """Seconds until a queued run becomes claimable (<= 0: now)."""
        with _translate("run due time"):
            value = await self._pool.fetchval(Q["seconds_until_due"], run_id)
        return 0.0 if value is None else float(value)

    async def requeue_expired(
        self, *, limit: int, recovery_attempts: int = 8
    ) -> list[tuple[UUID, str, str]]:
        rows = await self._fetch_retrying_deadlocks(
            "requeue expired leases", Q["requeue_expired"], limit, recovery_attempts
        )
        return [(row["id"], row["queue"], row["status"]) for row in rows]

    async def next_due_in(self, queues: Sequence[str]) -> float | None:
        """Seconds until the earliest queued run of ``queues`` is due (<= 0: now)."""
        with _translate("next due"):
            delta = await self._pool.fetchval(Q["next_due"], list(queues))
        return None if delta is None else float(delta.total_seconds())

    async def prune_finished(self, *, older_than_s: float, limit: int) -> int:
        """Delete up to ``limit`` runs finished more than ``older_than_s`` ago, with
        their steps and events; return how many."""
        with _translate("prune finished runs"):
            status = await self._pool.execute(Q["prune_finished"], older_than_s, limit)
        return int(status.rsplit(" ", 1)[-1])

    async def autovacuum_enabled(self) -> bool:
        with _translate("read autovacuum setting"):
            return str(await self._pool.fetchval("SHOW autovacuum")) == "on"

    async def vacuum(self) -> None:
        """VACUUM (ANALYZE) the tables that churn; for servers without autovacuum."""
        with _translate("vacuum"):
            await self._pool.execute(
                "VACUUM (ANALYZE) tidebase.runs, tidebase.steps, tidebase.events"
            )

    @contextlib.asynccontextmanager
    async def try_advisory_lock(
        self, key: int, *, idle_timeout_s: float | None = None
    ) -> AsyncIterator[SessionLock]:
        """Hold a session advisory lock on a pooled connection while inside, if free
        (``lock.held``).

        A crashed holder's lock goes with its session, but a frozen one's (SIGSTOP, VM
        pause) would be held forever: its socket stays open. With ``idle_timeout_s`` the
        holding session gets ``idle_session_timeout`` (Postgres 14+), so the server ends
        it once the holder stops talking; the holder runs ``lock.keep_alive()`` alongside
        to stay elected while its process runs.
        """
        with _translate("advisory lock"):
            async with self._pool.acquire() as conn:
                got = bool(await _lock_or_close(conn, "SELECT pg_try_advisory_lock($1)", key))
                try:
                    ping_s = None
                    if got and idle_timeout_s is not None:
                        ping_s = await _limit_idle_session(conn, idle_timeout_s)
                    yield SessionLock(conn, key=key, held=got, ping_s=ping_s)
                finally:
                    if got and not _is_closed(conn):
                        await _clean_session(conn)

    # -- client -----------------------------------------------------------------------

    async def cancel_runs(
        self, *, run_ids: Sequence[UUID], reason: str | None, actor: str | None
    ) -> list[tuple[UUID, str, str]]:
        """Cancel active runs and their active descendants; return (id, queue, status
        before) of every run cancelled. Workers holding one are notified in the same
        transaction.

        The statement finds descendants in its snapshot, taken before it waited for the
        row locks: a parent that was starting children meanwhile (holding its row) has
        committed them by then, unseen. Once the parent is cancelled no child can be
        started any more, so passes with fresh snapshots over the children of what was
        cancelled catch every one.
        """
        cancelled: list[tuple[UUID, str, str]] = []
        roots, why = list(run_ids), reason
        while roots:
            rows = await self._fetch_retrying_deadlocks(
                "cancel", Q["cancel_runs"], roots, why, actor
            )
            cancelled.extend((row[0], row[1], row[2]) for row in rows)
            if not rows:
                break
            with _translate("cancel"):
                roots = [
                    r[0] for r in await self._pool.fetch(Q["active_children"], [r[0] for r in rows])
                ]
            why = "parent cancelled"
        return cancelled

    async def cancelled_among(self, run_ids: Sequence[UUID]) -> list[UUID]:
        with _translate("check for cancelled runs"):
            return [row[0] for row in await self._pool.fetch(Q["cancelled_among"], list(run_ids))]

    # -- outbox -----------------------------------------------------------------------

    async def take_deliveries(
        self, *, limit: int, lease_s: float, resume_lease_s: float
    ) -> list[asyncpg.Record]:
        with _translate("take deliveries"):
            return list(
                await self._pool.fetch(Q["take_deliveries"], limit, lease_s, resume_lease_s)
            )

    async def delivery_done(
        self,
        delivery_id: UUID,
        *,
        delivered: bool,
        http_status: int | None,
        error: str | None,
        retry_in_s: float,
        attempt: int,
    ) -> asyncpg.Record | None:
        with _translate("record delivery"):
            row: asyncpg.Record | None = await self._pool.fetchrow(
                Q["delivery_done"], delivery_id, delivered, http_status, error, retry_in_s, attempt
            )
        return row

    async def fail_unrecovered(self, run_id: UUID, error: bytes) -> bool:
        with _translate("fail unrecovered run"):
            return await self._pool.fetchval(Q["fail_unrecovered"], run_id, error) is not None

    async def next_delivery_in(self) -> float | None:
        with _translate("next delivery"):
            value = await self._pool.fetchval(Q["next_delivery"])
        return None if value is None else float(value)

    async def get_deliveries(self, run_id: UUID) -> list[asyncpg.Record]:
        with _translate("get deliveries"):
            return list(await self._pool.fetch(Q["get_deliveries"], run_id))

    # -- queue controls ---------------------------------------------------------------

    async def claim_controlled(
        self, *, worker_id: str, queue: str, limit: int, lease_s: float
    ) -> ControlledClaim:
        """Claim from a paused, capped or rate-limited queue, exactly within its
        controls: the queue's row stays locked while this counts its running runs (a
        fresh snapshot, after the lock), refills its token bucket and claims."""
        with _translate("claim (controlled queue)"):
            async with self._pool.acquire() as conn, conn.transaction():
                ctl = await conn.fetchrow(Q["lock_queue"], queue)
                if ctl is None:  # the controls were deleted meanwhile: nothing limits it
                    rows = await conn.fetch(Q["claim_controlled"], worker_id, queue, lease_s, limit)
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
                        Q["claim_controlled"], worker_id, queue, lease_s, allowed
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

    async def queue_controls(self, names: Sequence[str] | None = None) -> list[QueueControl]:
        with _translate("read queue controls"):
            if names is None:
                rows = await self._pool.fetch(Q["all_queue_controls"])
            else:
                rows = await self._pool.fetch(Q["queue_controls"], list(names))
        return [_queue_control(r) for r in rows]

    async def queue_counts(self) -> dict[str, dict[str, int]]:
        with _translate("count runs by queue"):
            rows = await self._pool.fetch(Q["queue_counts"])
        counts: dict[str, dict[str, int]] = {}
        for row in rows:
            counts.setdefault(row["queue"], {})[row["status"]] = row["n"]
        return counts

    # -- schedules --------------------------------------------------------------------

    async def db_now(self) -> datetime:
        with _translate("read the database clock"):
            now: datetime = await self._pool.fetchval(Q["db_now"])
        return now

    async def upsert_schedule(self, **fields: Any) -> asyncpg.Record:
        with _translate("set schedule"):
            row: asyncpg.Record = await self._pool.fetchrow(
                Q["upsert_schedule"],
                fields["name"],
                fields["workflow"],
                fields["input"],
                fields["queue"],
                fields["priority"],
                fields["cron"],
                fields["every_s"],
                fields["timezone"],
                fields["enabled"],
                fields["catchup"],
                fields["catchup_limit"],
                fields["overlap"],
                fields["anchor_at"],
                fields["next_fire_at"],
                fields["source"],
                fields.get("keep_enabled", False),
            )
        return row

    async def get_schedule(self, name: str) -> asyncpg.Record | None:
        with _translate("get schedule"):
            row: asyncpg.Record | None = await self._pool.fetchrow(Q["get_schedule"], name)
        return row

    async def list_schedules(self) -> list[asyncpg.Record]:
        with _translate("list schedules"):
            return list(await self._pool.fetch(Q["list_schedules"]))

    async def delete_schedule(self, name: str) -> bool:
        with _translate("delete schedule"):
            return await self._pool.fetchval(Q["delete_schedule"], name) is not None

    async def delete_code_schedules(
        self, *, workflows: Sequence[str], keep: Sequence[str]
    ) -> list[str]:
        with _translate("sync code schedules"):
            rows = await self._pool.fetch(Q["delete_code_schedules"], list(workflows), list(keep))
        return [r[0] for r in rows]

    async def pause_schedule(self, name: str) -> asyncpg.Record | None:
        with _translate("pause schedule"):
            row: asyncpg.Record | None = await self._pool.fetchrow(Q["pause_schedule"], name)
        return row

    async def resume_schedule(
        self, name: str, *, next_fire_at: datetime, anchor_at: datetime
    ) -> asyncpg.Record | None:
        with _translate("resume schedule"):
            row: asyncpg.Record | None = await self._pool.fetchrow(
                Q["resume_schedule"], name, next_fire_at, anchor_at
            )
        return row

    async def next_tick_in(self) -> float | None:
        """Seconds until the next tick of an enabled schedule (<= 0: due)."""
        with _translate("next schedule tick"):
            value = await self._pool.fetchval(Q["next_tick"])
        return None if value is None else float(value)

    async def due_schedules(self, *, limit: int) -> list[str]:
        with _translate("find due schedules"):
            return [r[0] for r in await self._pool.fetch(Q["due_schedules"], limit)]

    async def fire_schedule(
        self,
        name: str,
        plan: Callable[[asyncpg.Record, bool], tuple[list[ScheduledRun], datetime]],
    ) -> list[tuple[UUID, str]] | None:
        """Fire schedule ``name`` if it is still due, in one transaction: ``plan(row,
        has_active_run)`` returns the runs of the ticks to enqueue and the next fire
        time; the runs are inserted (a tick already enqueued is skipped by its unique
        key) and the schedule advanced together, or neither. Returns the (id, queue)
        of the runs created; None when the schedule was not due (or locked)."""
        with _translate(f"fire schedule {name!r}"):
            async with self._pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(Q["lock_due_schedule"], name)
                if row is None:
                    return None
                active = bool(await conn.fetchval(Q["schedule_active"], name))
                runs, next_fire_at = plan(row, active)
                created: list[asyncpg.Record] = []
                if runs:
                    created = list(
                        await conn.fetch(Q["insert_scheduled_runs"], _batch_encoder.encode(runs))
                    )
                last = created[-1] if created else None
                await conn.execute(
                    Q["advance_schedule"],
                    name,
                    next_fire_at,
                    None if last is None else last["fire_time"],
                    None if last is None else last["id"],
                )
        return [(r["id"], r["queue"]) for r in created]

    async def overdue_runs(self, *, limit: int) -> list[UUID]:
        with _translate("find runs past their deadline"):
            return [row[0] for row in await self._pool.fetch(Q["overdue_runs"], limit)]

    # -- waiting ----------------------------------------------------------------------

    async def suspend_run(
        self,
        *,
        run_id: UUID,
        worker_id: str,
        attempt: int,
        wake_seq: int,
        wake_at: datetime | None,
        event_data: bytes,
    ) -> bool:
        """Park the run as waiting; False when the claim or ``wake_seq`` moved on."""
        with _translate("suspending run"):
            count = await self._pool.fetchval(
                Q["suspend_run"], run_id, worker_id, attempt, wake_seq, wake_at, event_data
            )
        return bool(count)

    async def wake_due(self, *, limit: int) -> list[tuple[UUID, str]]:
        with _translate("wake due runs"):
            rows = await self._pool.fetch(Q["wake_due"], limit)
        return [(row[0], row[1]) for row in rows]

    async def next_wake_in(self) -> float | None:
        """Seconds until the earliest timer of a waiting run (<= 0: due)."""
        with _translate("next wake"):
            value = await self._pool.fetchval(Q["next_wake"])
        return None if value is None else float(value)

    async def append_event(
        self, *, run_id: UUID, worker_id: str, attempt: int, type: str, data: bytes | None
    ) -> None:
        with _translate("append event"):
            seq = await self._pool.fetchval(
                Q["append_event"], run_id, worker_id, attempt, type, data
            )
        if seq is None:
            raise errors.LeaseLost(f"run {run_id} is no longer leased to this worker")

    # -- gates ------------------------------------------------------------------------

    async def open_gate(
        self,
        *,
        run_id: UUID,
        worker_id: str,
        attempt: int,
        name: str,
        prompt: str | None,
        data: bytes | None,
        channels: bytes | None,
        timeout_s: float | None,
        token_hash: bytes | None = None,
        delivery: bytes | None = None,
    ) -> asyncpg.Record:
        """Create the gate once (fenced) and return it as stored now. A new gate with
        channels gets ``token_hash`` and one ``delivery`` (JSON payload) per channel."""
        with _translate("open gate"):
            async with self._pool.acquire() as conn:
                row = await conn.fetchrow(
                    Q["open_gate"],
                    run_id,
                    worker_id,
                    attempt,
                    name,
                    prompt,
                    data,
                    channels,
                    timeout_s,
                    token_hash,
                    delivery,
                )
                if not row["fenced"]:
                    raise errors.LeaseLost(f"run {run_id} is no longer leased to this worker")
                gate: asyncpg.Record = await conn.fetchrow(Q["get_gate"], run_id, name)
        return gate

    async def expire_gate(self, *, run_id: UUID, worker_id: str, attempt: int, name: str) -> bool:
        """Expire the claim's run's due gate (unless a resolution won); run row first,
        then gate, as resolutions lock them."""
        with _translate("expire gate"):
            async with self._pool.acquire() as conn, conn.transaction():
                if await conn.fetchval(Q["lock_claim"], run_id, worker_id, attempt) is None:
                    raise errors.LeaseLost(f"run {run_id} is no longer leased to this worker")
                count = await conn.fetchval(Q["expire_gate"], run_id, name)
        return bool(count)

    async def wake_if_due(self, run_id: UUID) -> bool:
        with _translate("wake run"):
            return await self._pool.fetchval(Q["wake_if_due"], run_id) is not None

    async def waiting_state(self, run_id: UUID) -> tuple[str | None, float | None]:
        """(status, seconds until its timer) of a run."""
        with _translate("run status"):
            row = await self._pool.fetchrow(Q["waiting_state"], run_id)
        return (None, None) if row is None else (row["status"], row["wake_in"])

    async def get_gate(self, run_id: UUID, name: str) -> asyncpg.Record | None:
        with _translate("get gate"):
            row: asyncpg.Record | None = await self._pool.fetchrow(Q["get_gate"], run_id, name)
        return row

    async def resolve_gate(
        self,
        *,
        run_id: UUID,
        name: str,
        status: str,
        actor: str | None,
        payload: bytes | None,
        token_hash: bytes | None,
        check_token: bool,
    ) -> GateResolution:
        """Decide a pending gate exactly once and wake its run, in one transaction that
        holds the run's row lock throughout (so the run cannot suspend or finish in
        between). Nothing changes unless the outcome is ``resolved`` (or the gate is
        found expired or orphaned, which this closes).

        ``check_token``: the caller presented a token; ``token_hash`` must match the
        stored hash (compared in constant time).
        """
        with _translate("resolve gate"):
            async with self._pool.acquire() as conn, conn.transaction():
                run = await conn.fetchrow(Q["lock_run"], run_id)
                if run is None:
                    return GateResolution(outcome="no_run")
                gate = await conn.fetchrow(Q["lock_gate"], run_id, name)
                if gate is None:
                    return GateResolution(outcome="no_gate")
                if gate["status"] != "pending":
                    return GateResolution(outcome="closed", status=gate["status"])
                if check_token:
                    stored = gate["token_hash"]
                    if (
                        stored is None
                        or token_hash is None
                        or not hmac.compare_digest(bytes(stored), token_hash)
                    ):
                        return GateResolution(outcome="bad_token")
                if run["status"] not in ("queued", "running", "waiting"):
                    # An orphan: its run ended without deciding it.
                    await conn.fetchrow(
                        Q["close_gate"], run_id, name, "cancelled", "cancelled", None, None
                    )
                    return GateResolution(outcome="run_finished", status=run["status"])
                decided = "expired" if gate["due"] else status
                await conn.fetchrow(
                    Q["close_gate"],
                    run_id,
                    name,
                    decided,
                    decided,
                    None if decided == "expired" else actor,
                    None if decided == "expired" else payload,
                )
                event: dict[str, str | None] = {"name": name, "decision": decided}
                if decided != "expired":
                    event["actor"] = actor
                woke = await conn.fetchrow(
                    Q["wake_run"],
                    run_id,
                    "gate.expired" if decided == "expired" else "gate.resolved",
                    msgspec.json.encode(event),
                )
                if gate["channels"] is not None:
                    await conn.execute(
                        Q["gate_deliveries"],
                        run_id,
                        True,
                        "gate.expired" if decided == "expired" else "gate.resolved",
                        gate["channels"],
                        msgspec.json.encode(
                            {
                                "type": "gate.expired" if decided == "expired" else "gate.resolved",
                                "run_id": str(run_id),
                                **event,
                            }
                        ),
                    )
        woken = woke is not None and woke["before_status"] == "waiting"
        return GateResolution(
            outcome="expired" if decided == "expired" else "resolved",
            status=decided,
            queue=run["queue"] if woken else None,
        )

    async def set_gate_token(self, *, run_id: UUID, name: str, token_hash: bytes) -> bool:
        with _translate("issue gate token"):
            return bool(await self._pool.fetchval(Q["set_gate_token"], run_id, name, token_hash))

    async def list_gates(
        self,
        *,
        status: str | None,
        run_id: UUID | None,
        after: tuple[datetime, UUID, str] | None,
        limit: int,
    ) -> list[asyncpg.Record]:
        with _translate("list gates"):
            return list(
                await self._pool.fetch(
                    Q["list_gates"],
                    status,
                    run_id,
                    after[0] if after else None,
                    after[1] if after else None,
                    after[2] if after else None,
                    limit,
                )
            )

    async def get_run_gates(self, run_id: UUID) -> list[asyncpg.Record]:
        with _translate("get gates"):
            return list(await self._pool.fetch(Q["get_run_gates"], run_id))

    # -- children ---------------------------------------------------------------------

    async def start_children(
        self,
        *,
        run_id: UUID,
        worker_id: str,
        attempt: int,
        children: Sequence[NewRun],
        event_data: bytes,
    ) -> tuple[list[asyncpg.Record], list[str]]:
        """Create the children of the claim's run once (idempotent by id) and return
        their current status rows (in ``children`` order) and the queues of the ones
        created now. The parent's row stays locked while this runs, so a child that
        finishes meanwhile wakes the parent only after this commits."""
        ids = [c.id for c in children]
        with _translate("start child runs"):
            async with self._pool.acquire() as conn, conn.transaction():
                if await conn.fetchval(Q["lock_claim"], run_id, worker_id, attempt) is None:
                    raise errors.LeaseLost(f"run {run_id} is no longer leased to this worker")
                created = await conn.fetch(Q["insert_children"], _batch_encoder.encode(children))
                if created:
                    await conn.fetchval(
                        Q["append_event"],
                        run_id,
                        worker_id,
                        attempt,
                        "child.started",
                        event_data,
                    )
                rows = {r["id"]: r for r in await conn.fetch(Q["children_status"], ids)}
        return [rows[i] for i in ids], [r["queue"] for r in created]

    async def step_positions(self, run_id: UUID) -> list[tuple[int, str]]:
        with _translate("read history"):
            return [(r[0], r[1]) for r in await self._pool.fetch(Q["step_positions"], run_id)]

    async def fork_run(
        self, *, source: UUID, new_id: UUID, input: bytes | None, position: int, entry: str
    ) -> str | None:
        """Create the fork; return its queue (None when the source vanished)."""
        with _translate("fork run"):
            row = await self._pool.fetchrow(Q["fork_run"], source, new_id, input, position, entry)
        return None if row is None else str(row["queue"])

    async def reset_run(
        self, *, run_id: UUID, position: int, entry: str, budget: int
    ) -> str | None:
        """Reset a failed run to ``position``; return its queue, None when not failed."""
        with _translate("reset run"):
            queue: str | None = await self._pool.fetchval(
                Q["reset_run"], run_id, position, entry, budget
            )
        return queue

    async def retry_run(self, *, run_id: UUID, budget: int) -> tuple[str | None, list[str]]:
        """Requeue a failed run and its failed children; return the run's queue (None
        when it is not failed) and the children's queues.

        Raises:
            ConflictError: an active run holds the same dedupe key.
        """
        try:
            with _translate("retry"):
                rows = await self._pool.fetch(Q["retry_run"], run_id, budget)
        except errors.StoreError as exc:
            if isinstance(exc.__cause__, asyncpg.exceptions.UniqueViolationError):
                raise errors.ConflictError(
                    f"run {run_id} cannot be retried: another active run has its dedupe key "
                    "in its queue; wait for or cancel that run first"
                ) from exc
            raise
        root = next((r["queue"] for r in rows if r["root"]), None)
        return root, [r["queue"] for r in rows if not r["root"]]

    async def get_run(self, run_id: UUID) -> asyncpg.Record | None:
        with _translate("get run"):
            row: asyncpg.Record | None = await self._pool.fetchrow(Q["get_run"], run_id)
        return row

    async def get_run_status(self, run_id: UUID) -> asyncpg.Record | None:
        with _translate("get run status"):
            row: asyncpg.Record | None = await self._pool.fetchrow(Q["get_run_status"], run_id)
        return row

    async def get_steps(self, run_id: UUID) -> list[asyncpg.Record]:
        with _translate("get steps"):
            return list(await self._pool.fetch(Q["get_steps"], run_id))

    async def get_children(self, run_id: UUID) -> list[asyncpg.Record]:
        with _translate("get children"):
            return list(await self._pool.fetch(Q["get_children"], run_id))

    async def list_runs(
        self,
        *,
        status: str | None,
        workflow: str | None,
        queue: str | None,
        before: tuple[datetime, UUID] | None,
        limit: int,
        dedupe_key: str | None = None,
    ) -> list[asyncpg.Record]:
        with _translate("list runs"):
            return list(
                await self._pool.fetch(
                    Q["list_runs"],
                    status,
                    workflow,
                    queue,
                    before[0] if before else None,
                    before[1] if before else None,
                    limit,
                    dedupe_key,
                )
            )

    async def list_events(self, run_id: UUID, *, after: int, limit: int) -> list[asyncpg.Record]:
        with _translate("list events"):
            return list(await self._pool.fetch(Q["list_events"], run_id, after, limit))

    async def run_status(self, run_id: UUID) -> str | None:
        with _translate("run status"):
            status: str | None = await self._pool.fetchval(Q["run_exists"], run_id)
        return status


def _queue_control(row: asyncpg.Record) -> QueueControl:
    return QueueControl(
        name=row["name"],
        concurrency=row["concurrency"],
        rate_per_minute=row["rate_per_minute"],
        paused=row["paused"],
    )


class SessionLock:
    """An attempt at a session advisory lock (``Store.try_advisory_lock``)."""

    def __init__(
        self, conn: asyncpg.Connection, *, key: int, held: bool, ping_s: float | None
    ) -> None:
        self._conn = conn
        self.key = key
        self.held = held
        self._ping_s = ping_s

    async def keep_alive(self) -> None:
        """Ping the holding session until cancelled, so that its idle timeout only ends
        it when this process stops running.

        Raises:
            ConnectionLost, StoreError: the session, and the lock with it, is gone.
        """
        if self._ping_s is None:
            await anyio.sleep_forever()
            return
        while True:
            await anyio.sleep(self._ping_s)
            with _translate(f"advisory lock {self.key}: session lost"):
                await self._conn.execute("SELECT 1")


async def _limit_idle_session(conn: asyncpg.Connection, idle_timeout_s: float) -> float | None:
    """Set ``idle_session_timeout`` on this session; return the ping interval that keeps
    it alive, or None where the server has no such setting (before Postgres 14).
    ``_clean_session`` resets it (RESET ALL) before the connection goes back."""
    try:
        await conn.execute(
            "SELECT set_config('idle_session_timeout', $1, false)",
            f"{max(1, round(idle_timeout_s * 1000))}ms",
        )
    except asyncpg.exceptions.UndefinedObjectError:
        return None
    return idle_timeout_s / 4


def _claimed(row: asyncpg.Record) -> ClaimedRun:
    return ClaimedRun(
        id=row["id"],
        workflow=row["workflow"],
        queue=row["queue"],
        input=row["input"],
        state=row["state"],
        attempt=row["attempt"],
        released=row["released"],
        max_attempts=row["max_attempts"],
        deadline_at=row["deadline_at"],
        step_count=row["step_count"],
        created_at=row["created_at"],
        db_now=row["db_now"],
        wake_seq=row["wake_seq"],
    )


def _default_event_type(c: Checkpoint) -> str:
    return "step.completed" if c.status == "completed" else "step.failed"
