"""The ``Tidebase`` facade: open the pool and the LISTEN connection (migrating), register
workflows, enqueue, run inline, hand out the web endpoints, and start workers; inline
runs and workers get the engine's context from here."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

import anyio
import anyio.abc
import msgspec

from tidebase_async import errors
from tidebase_async._util import codec
from tidebase_async._util.checks import as_seconds, check_channels, check_name, is_utf8
from tidebase_async._util.ids import uuid7, uuid7_many
from tidebase_async.client import flow as client_flow
from tidebase_async.client import telemetry as client_telemetry
from tidebase_async.client.background import Background
from tidebase_async.client.events import Events
from tidebase_async.client.gates import Gates
from tidebase_async.client.queues import Queues
from tidebase_async.client.runs import Runs, as_uuid
from tidebase_async.client.schedules import Schedules, schedule_of
from tidebase_async.client.stats import Stats
from tidebase_async.client.usage import Usage
from tidebase_async.engine.context import EngineContext
from tidebase_async.engine.inline import run_inline
from tidebase_async.engine.outbox import Deliverer
from tidebase_async.engine.replaycheck import ReplayCheckReport, RunCheck, replay_check
from tidebase_async.engine.telemetry import Telemetry
from tidebase_async.engine.worker import Worker
from tidebase_async.engine.workflows import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_QUEUE,
    Workflow,
    WorkflowFn,
    WorkflowVersions,
    make_workflow,
)
from tidebase_async.models import (
    Debounce,
    MigrationStep,
    Retry,
    RunHandle,
    RunSpec,
    Schedule,
    Singleton,
)
from tidebase_async.store import NewRun, Store, describe_dsn
from tidebase_async.store.channels import (
    CANCEL_CHANNEL,
    EVENTS_CHANNEL,
    QUEUES_CHANNEL,
    STREAM_CHANNEL,
    WAKE_CHANNEL,
)
from tidebase_async.store.listener import Listener
from tidebase_async.store.notifier import Notifier

if TYPE_CHECKING:
    from aiohttp import web

    from tidebase_async.embedded import EmbeddedPostgres
    from tidebase_async.web.adapters import Endpoint
    from tidebase_async.web.mcp import McpApp

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=WorkflowFn)

DEFAULT_RETENTION = timedelta(days=7)
_INT32 = 2**31 - 1


def _aware(value: datetime | None, what: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise errors.ConfigurationError(f"{what} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise errors.ConfigurationError(f"{what} must be timezone-aware (e.g. UTC), got {value}")
    return value


def _pooled_option(pooled: bool | None) -> bool | None:
    """``pooled``, else ``TIDEBASE_POOLED`` (1/0, true/false, yes/no, on/off), else None
    (detect)."""
    if pooled is not None:
        if not isinstance(pooled, bool):
            raise errors.ConfigurationError(f"pooled must be a bool or None, got {pooled!r}")
        return pooled
    value = os.environ.get("TIDEBASE_POOLED", "").strip().lower()
    if not value:
        return None
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise errors.ConfigurationError(f"TIDEBASE_POOLED must be 1 or 0, got {value!r}")


def _allowed_hosts(hosts: Iterable[str] | None) -> frozenset[str]:
    if hosts is None:
        hosts = (os.environ.get("TIDEBASE_ALLOWED_HOSTS") or "").split(",")
    elif isinstance(hosts, str):
        raise errors.ConfigurationError("allowed_hosts must be a list of host names")
    return frozenset(h.strip().lower() for h in hosts if h.strip())


def _int_at_least(what: str, value: object, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise errors.ConfigurationError(f"{what} must be an int >= {least}, got {value!r}")
    return value


class Tidebase:
    """Durable workflows in your Postgres.

    ``dsn`` resolution: the argument, else ``TIDEBASE_DATABASE_URL``, else an embedded
    Postgres started in ``./.tidebase/`` (development and tests; production passes a
    DSN). ``async with tide:`` opens the pool and the LISTEN connection and migrates.

    ``retention`` (default 7 days; ``None`` keeps everything): finished runs older than
    this are deleted by the workers' maintenance loop, in bounded batches, oldest first,
    with their steps and events.

    ``public_url`` (or ``TIDEBASE_PUBLIC_URL``): where the HTTP API is mounted, for the
    ``resolve_url`` of gates.

    ``pooled`` (or ``TIDEBASE_POOLED=1``; detected when None): ``dsn`` goes through a
    transaction-mode pooler (PgBouncer, Supavisor). Then no startup parameter but
    ``application_name`` is sent, no prepared statement is reused across transactions,
    and the workers elect their maintenance leader by a lease row. ``listen_dsn`` (or
    ``TIDEBASE_LISTEN_URL``): a direct session connection for LISTEN; through a pooler
    without it there is no LISTEN, wake-ups poll, and a warning says so once.

    ``reconnect_timeout`` (default 30 s): how long reads (``runs.get``, ``runs.wait``,
    lists) and ``enqueue`` ride out a lost connection (a failover to a promoted
    standby, a restart) before raising ``ConnectionLost``. With a multi-host DSN and
    ``target_session_attrs=read-write`` new connections land on the new primary. A
    retried enqueue never creates a run twice (run ids are made here and looked up).
    Workers' fenced writes retry on their own (up to 5 minutes).

    ``api_key`` (or ``TIDEBASE_API_KEY``): the bearer key of the HTTP API. Without one,
    the API answers only requests addressed to a loopback host (and from a loopback
    Origin), or to one of ``allowed_hosts`` (or ``TIDEBASE_ALLOWED_HOSTS``, comma
    separated; ``*`` for any), for apps that authenticate in front of it.

    ``webhook_secret`` (or ``TIDEBASE_WEBHOOK_SECRET``) checks the signature of inbound
    ``run.resume`` requests (``tide.webhook()``); ``signing_secret`` (or
    ``TIDEBASE_SIGNING_SECRET``) signs outbound deliveries, and falls back to
    ``webhook_secret`` when unset (``outbound_secret``).

    ``tracer_provider`` / ``meter_provider``: the OpenTelemetry providers for the
    ``tidebase.*`` spans and metrics (default: the global ones, when OpenTelemetry is
    installed; without it, tracing costs nothing). ``metrics_text()`` (``GET
    /metrics``) serves the same metrics in the Prometheus text format either way.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        webhook_secret: str | None = None,
        signing_secret: str | None = None,
        api_key: str | None = None,
        allowed_hosts: Iterable[str] | None = None,
        max_event_streams: int = 200,
        pool_size: int = 20,
        connect_timeout: float = 10.0,
        reconnect_timeout: float | timedelta = 30.0,
        max_payload_bytes: int = codec.DEFAULT_MAX_PAYLOAD,
        embedded_dir: str | os.PathLike[str] | None = None,
        retention: float | timedelta | None = DEFAULT_RETENTION,
        public_url: str | None = None,
        pooled: bool | None = None,
        listen_dsn: str | None = None,
        tracer_provider: Any = None,
        meter_provider: Any = None,
    ) -> None:
        self._dsn = dsn or os.environ.get("TIDEBASE_DATABASE_URL") or None
        self._pooled = _pooled_option(pooled)
        self._listen_dsn = listen_dsn or os.environ.get("TIDEBASE_LISTEN_URL") or None
        self.webhook_secret = webhook_secret or os.environ.get("TIDEBASE_WEBHOOK_SECRET")
        # Signs outbound deliveries; falls back to webhook_secret (see outbound_secret).
        self.signing_secret = signing_secret or os.environ.get("TIDEBASE_SIGNING_SECRET")
        self.api_key = api_key or os.environ.get("TIDEBASE_API_KEY")
        # Without an API key the HTTP API serves loopback hosts only, and these.
        self.allowed_hosts = _allowed_hosts(allowed_hosts)
        #: Server-sent event streams (``/events``, ``/runs/{id}/events`` and
        #: ``/runs/{id}/stream``) this process serves at once at most; more get 503.
        self.max_event_streams = _int_at_least("max_event_streams", max_event_streams, 1)
        #: Those open now.
        self.open_event_streams = 0
        self._pool_size = _int_at_least("pool_size", pool_size, 2)
        self._connect_timeout = connect_timeout
        # How long reads and enqueues ride out a lost connection (a failover).
        self._reconnect_s = as_seconds(reconnect_timeout, what="reconnect_timeout") or 0.0
        self.max_payload_bytes = _int_at_least("max_payload_bytes", max_payload_bytes, 1)
        self._embedded_dir = embedded_dir
        # Finished runs older than this are deleted by the workers' maintenance loop,
        # with their steps and events; None keeps everything.
        self.retention_s = as_seconds(retention, what="retention")
        self._embedded: EmbeddedPostgres | None = None
        self._workflows: dict[str, Workflow] = {}
        # Every registered version of every workflow; _workflows holds the newest.
        self._versions = WorkflowVersions()
        self._store: Store | None = None
        self._listener: Listener | None = None
        self._notifier: Notifier | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        # open() and close() may come from different tasks, even at once.
        self._lifecycle = asyncio.Lock()
        self._migration_progress: Callable[[MigrationStep], None] | None = None
        # Where this app serves the HTTP API (``http_app``/``asgi_app``), for the
        # ``resolve_url`` of gates; falls back to TIDEBASE_PUBLIC_URL.
        self.public_url = public_url or os.environ.get("TIDEBASE_PUBLIC_URL") or None
        if self.public_url is not None and not self.public_url.startswith(("http://", "https://")):
            raise errors.ConfigurationError(
                f"public_url must be an http(s) URL, got {self.public_url!r:.80}"
            )
        self.runs = Runs(self)
        self.gates = Gates(self)
        self.events = Events(self)
        self.schedules = Schedules(self)
        self.queues = Queues(self)
        self.usage = Usage(self)
        self.stats = Stats(self)
        self.telemetry = Telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)
        self.telemetry.bind_queues(self._queue_depths)
        # The workers of this client now working (``ready`` is false while one drains).
        self._workers: set[Worker] = set()

    # -- lifecycle --------------------------------------------------------------------

    @property
    def outbound_secret(self) -> str | None:
        """The secret that signs outbound deliveries: ``signing_secret``, else
        ``webhook_secret``. ``webhook_secret`` alone checks inbound ``run.resume``
        requests: with one secret both ways every receiver of a delivery could forge a
        ``run.resume``, so production sets both (README, Security)."""
        return self.signing_secret or self.webhook_secret

    @property
    def dsn(self) -> str | None:
        """The DSN in use (the embedded server's once started)."""
        return self._dsn

    async def open(self) -> Tidebase:
        """Connect (starting the embedded Postgres when there is no DSN), migrate, and
        start the LISTEN connection and the notifier; returns this Tidebase.

        The background tasks belong to this client, not to the calling task: ``close()``
        may be called from another task (``async with tide:`` does the same as
        ``open()`` and ``close()``).

        Raises:
            ConfigurationError: already open, a bad DSN, a startup parameter a pooler
                refused, or a ``listen_dsn`` that does not hear the DSN's notifications.
            DatabaseUnreachable, SchemaVersionError: nothing is left open then.
        """
        async with self._lifecycle:
            if self._stack is not None:
                raise errors.ConfigurationError("this Tidebase is already open")
            stack = contextlib.AsyncExitStack()
            try:
                await self._open_store(stack)
                background = Background()
                stack.push_async_callback(background.stop)
                assert self._notifier is not None
                await background.start(
                    started=[] if self._listener is None else [self._listener.run],
                    running=[self._notifier.run],
                )
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await stack.aclose()
                self._store = self._listener = self._notifier = None
                raise
            self._stack = stack
        return self

    @contextlib.asynccontextmanager
    async def opened_on(
        self, dsn: str, *, listen_dsn: str | None = None
    ) -> AsyncIterator[Tidebase]:
        """Open this Tidebase on ``dsn`` instead of its own database; on exit close it
        and give it back its own database. For test harnesses (the testing kit opens an
        application's module-level Tidebase on each test's fresh database, so the
        application's code that uses that object talks to the test's database).

        The exit may run in another task than the entry.

        Raises:
            ConfigurationError: this Tidebase is open already; and as ``open()``.
        """
        if self._stack is not None:
            raise errors.ConfigurationError(
                "this Tidebase is already open; opened_on() needs a closed one"
            )
        own = self._dsn, self._listen_dsn
        self._dsn, self._listen_dsn = dsn, listen_dsn
        try:
            await self.open()
            try:
                yield self
            finally:
                await self.close()
        finally:
            self._dsn, self._listen_dsn = own

    async def _open_store(self, stack: contextlib.AsyncExitStack) -> None:
        if self._dsn is None:
            from tidebase_async.embedded import start_embedded

            self._embedded = await start_embedded(self._embedded_dir)
            stack.callback(self._stop_embedded)
            self._dsn = self._embedded.dsn
        store = await Store.connect(
            self._dsn,
            max_size=self._pool_size,
            connect_timeout=self._connect_timeout,
            pooled=self._pooled,
        )
        store.reconnect_s = self._reconnect_s
        stack.push_async_callback(store.close)
        await store.migrate(progress=self._migration_progress)
        self._store = store
        self._notifier = Notifier(store)
        self._listener = await self._new_listener(store)

    async def _new_listener(self, store: Store) -> Listener | None:
        """The LISTEN connection's listener: on ``listen_dsn`` when given, else on the
        DSN unless that goes through a transaction-mode pooler (which cannot hold a
        LISTEN); then None, and everything waits by polling.

        Raises:
            ConfigurationError: ``listen_dsn`` does not hear the DSN's notifications
                (a transaction-mode pooler too, or another database).
        """
        channels = [WAKE_CHANNEL, EVENTS_CHANNEL, CANCEL_CHANNEL, QUEUES_CHANNEL, STREAM_CHANNEL]
        if self._listen_dsn is None:
            if not store.pooled:
                return Listener(store.dsn, channels)
            logger.warning(
                "the database is reached through a transaction-mode pooler (PgBouncer, "
                "Supavisor), which cannot hold a LISTEN: without listen_dsn, workers pick up "
                "new runs every poll_interval and runs.wait/events poll each second. Pass "
                "Tidebase(listen_dsn=...) or set TIDEBASE_LISTEN_URL to a direct (session) "
                "connection for instant wake-ups"
            )
            return None
        try:
            hears = await store.hears_notifications(self._listen_dsn)
        except errors.StoreError as exc:
            # Like the DSN's own listener: it keeps trying, polling covers the gap.
            logger.warning("listen_dsn: %s; the listener keeps trying", exc)
            hears = True
        if not hears:
            raise errors.ConfigurationError(
                f"listen_dsn ({describe_dsn(self._listen_dsn)}) does not hear notifications "
                "sent through the DSN: it goes through a transaction-mode pooler too (LISTEN "
                "needs a session of its own), or reaches another database. Point it at the "
                "database directly, or at a session-mode pooler port"
            )
        return Listener(self._listen_dsn, channels)

    async def close(self) -> None:
        """Stop the background tasks (the notifier sends what it still holds), close
        the pool and stop the embedded Postgres this client started. Idempotent; may
        run in another task than ``open()``; a second concurrent call waits for the
        first.
        """
        async with self._lifecycle:
            stack, self._stack = self._stack, None
            try:
                if stack is not None:
                    with anyio.CancelScope(shield=True):
                        await stack.aclose()
            finally:
                self._store = self._listener = self._notifier = None

    async def __aenter__(self) -> Tidebase:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _stop_embedded(self) -> None:
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None
            self._dsn = None

    @property
    def store(self) -> Store:
        if self._store is None:
            raise errors.ConfigurationError(
                "Tidebase is not open: use `async with tide:` (or `await tide.work()`, "
                "which opens it) before calling it"
            )
        return self._store

    @property
    def notifier(self) -> Notifier:
        assert self._notifier is not None
        return self._notifier

    @property
    def listener(self) -> Listener | None:
        return self._listener

    async def ping(self) -> None:
        """Return once the database answered a trivial query.

        Raises:
            StoreError: the database did not answer (ConnectionLost, DatabaseUnreachable).
        """
        await self.store.db_now()

    @property
    def is_open(self) -> bool:
        """True between ``open()`` and ``close()``."""
        return self._store is not None

    @property
    def ready(self) -> bool:
        """True while this client is open and no worker of it is draining (after
        ``stop()`` or SIGTERM): what ``GET /ready`` reports to a load balancer."""
        return self._store is not None and not any(w.draining for w in self._workers)

    async def metrics_text(self) -> str:
        """This client's metrics in the Prometheus text format (``GET /metrics``):
        counters and histograms of its enqueues and of its workers' and inline runs'
        executions, and the queue gauges read from the database now (one bounded
        query; left out when it does not answer)."""
        self.telemetry.use_loop()
        text = await client_telemetry.metrics_text(self.telemetry)
        try:
            text += await self.queues.versions_metrics_text()
        except errors.TidebaseError as exc:
            logger.warning("metrics: version gauges left out: %s", exc)
        return text

    async def _queue_depths(self) -> list[tuple[str, int, float]]:
        return await self.store.queue_depths()

    async def migrate(self, *, progress: Callable[[MigrationStep], None] | None = None) -> int:
        """Apply pending schema migrations; idempotent and safe under concurrency.
        ``progress`` is called after each migration applied (none when up to date).

        Raises:
            SchemaVersionError: the database was migrated by a newer tidebase-async.
        """
        if self._store is not None:
            return await self._store.migrate(progress=progress)
        self._migration_progress = progress
        try:
            async with self:
                return await self.store.migrate()
        finally:
            self._migration_progress = None

    # -- workflows --------------------------------------------------------------------

    def workflow(
        self,
        name: str,
        *,
        queue: str = DEFAULT_QUEUE,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        retry: Retry | None = None,
        schedule: str | float | timedelta | Schedule | None = None,
        version: str | None = None,
    ) -> Callable[[F], F]:
        """Register an async function ``fn(run, input)`` as workflow ``name``.

        ``version`` (a short string, ``"2"``): several versions of one workflow may be
        registered side by side. Each run records the version it starts with (the one
        registered last, unless ``enqueue(..., version=)`` picks another), and a worker
        claims only runs of versions it has registered; runs of a version no live
        worker has stay queued (``tide.queues.list()`` shows them). ``tide.workflows``
        maps each name to its newest version, ``workflow_versions(name)`` has them all.

        ``max_attempts`` bounds how often a run is attempted (failures and crashed
        workers both count); ``retry`` sets the backoff between attempts. ``schedule``
        (a cron string, an interval, or a ``Schedule``) declares a schedule named after
        the workflow, which workers create or update when they start (see
        ``tide.schedules``).

        Raises:
            ConfigurationError: bad name, not an async function, or a name registered twice.
            InvalidSchedule: a bad ``schedule``.
        """
        spec = schedule_of(schedule, workflow=name)

        def register(fn: F) -> F:
            wf = make_workflow(
                name,
                fn,
                queue=queue,
                max_attempts=max_attempts,
                retry=retry,
                schedule=spec,
                version=version,
            )
            same = self._versions.by_name.get(name, {}).get(version)
            if same is not None and same.fn is not fn:
                what = f"workflow {name!r}" + ("" if version is None else f" version {version!r}")
                raise errors.ConfigurationError(f"{what} is registered twice")
            self._versions.add(wf)
            self._workflows[name] = wf
            return fn

        return register

    @property
    def workflows(self) -> dict[str, Workflow]:
        """Each registered workflow by name, in its newest version."""
        return dict(self._workflows)

    def workflow_versions(self, name: str) -> dict[str | None, Workflow]:
        """Every registered version of workflow ``name``, oldest first (None: the
        unversioned registration); empty when it is not registered here."""
        return dict(self._versions.by_name.get(name, {}))

    def _run_version(
        self, workflow: str, version: str | None
    ) -> tuple[Workflow | None, str | None]:
        """The registered workflow a new run of ``workflow`` uses here, and the
        version it records: ``version`` when given (any, when this process does not
        register the workflow), else the newest registered.

        Raises:
            ConfigurationError: ``version`` is not a registered version of a workflow
                registered here (the message lists those).
        """
        wf = self._workflows.get(workflow)
        if version is None:
            return wf, wf.version if wf is not None else None
        check_name("version", version)
        if wf is None:
            return None, version
        chosen = self._versions.get(workflow, version)
        if chosen is None:
            known = ", ".join(repr(v) for v in self._versions.known(workflow) if v is not None)
            raise errors.ConfigurationError(
                f"workflow {workflow!r} has no version {version!r} registered here "
                f"(registered: {known or 'only an unversioned one'})"
            )
        return chosen, version

    async def replay_check(
        self,
        *,
        workflows: Iterable[str] | None = None,
        since: float | timedelta | None = timedelta(days=7),
        limit: int | None = None,
        on_run: Callable[[RunCheck], None] | None = None,
    ) -> ReplayCheckReport:
        """Replay the stored histories of runs against the code registered here,
        executing nothing and writing nothing, and report every run this code would
        fail with ``NonDeterminismError`` (``report.ok`` is False then): the check to
        run in CI before a deploy (``tidebase replay-check``).

        Runs checked: of ``workflows`` (default: every one registered here) that are
        queued with a history, running, or waiting, and those that finished within
        ``since`` (None: none), at most ``limit``, in pages of 500; runs of a version
        not registered here are skipped (their own workers execute them).

        Raises:
            ConfigurationError: an unregistered workflow, a bad ``since`` or ``limit``.
        """
        since_s = as_seconds(since, what="since")
        if since_s is not None and since_s > 36_500 * 86_400:
            raise errors.ConfigurationError(f"since must be at most 100 years, got {since!r}")
        if limit is not None:
            _int_at_least("limit", limit, 1)
        only = None
        if workflows is not None:
            only = [workflows] if isinstance(workflows, str) else list(workflows)
            for name in only:
                check_name("workflow", name)
        return await replay_check(
            self.store,
            workflows=self._workflows,
            versions=self._versions,
            only=only,
            since=None if since_s is None else timedelta(seconds=since_s),
            limit=limit,
            on_run=on_run,
        )

    # -- enqueue ----------------------------------------------------------------------

    def _new_run(self, spec: RunSpec, run_id: UUID | None = None) -> NewRun:
        check_name("workflow", spec.workflow)
        client_flow.check_flow(spec)
        wf, version = self._run_version(spec.workflow, spec.version)
        queue = spec.queue if spec.queue is not None else (wf.queue if wf else DEFAULT_QUEUE)
        check_name("queue", queue)
        if spec.dedupe_key is not None:
            if not isinstance(spec.dedupe_key, str) or not spec.dedupe_key:
                raise errors.ConfigurationError("dedupe_key must be a non-empty str")
            if (
                len(spec.dedupe_key) > 1000
                or "\x00" in spec.dedupe_key
                or not is_utf8(spec.dedupe_key)
            ):
                raise errors.ConfigurationError(
                    "dedupe_key must be at most 1000 characters without NUL characters "
                    f"or lone surrogates, got {spec.dedupe_key[:40]!r}"
                    + ("..." if len(spec.dedupe_key) > 40 else "")
                )
        _check_concurrency_key(spec.concurrency_key)
        if isinstance(spec.priority, bool) or not isinstance(spec.priority, int):
            raise errors.ConfigurationError(f"priority must be an int, got {spec.priority!r}")
        if not -_INT32 <= spec.priority <= _INT32:
            raise errors.ConfigurationError(f"priority {spec.priority} is out of range")
        max_attempts = spec.max_attempts
        if max_attempts is None:
            max_attempts = wf.max_attempts if wf else DEFAULT_MAX_ATTEMPTS
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int):
            raise errors.ConfigurationError(f"max_attempts must be an int, got {max_attempts!r}")
        if not 1 <= max_attempts <= 10_000:
            raise errors.ConfigurationError(f"max_attempts must be 1..10000, got {max_attempts}")
        delay_s = as_seconds(spec.delay, what="delay") or 0.0
        run_at = _aware(spec.run_at, "run_at")
        deadline = _aware(spec.deadline, "deadline")
        if run_at is not None or delay_s:
            try:
                # Postgres stores times far past year 9999 (or fails on infinity), but
                # such a run could never be read back into a Python datetime.
                (run_at or datetime.now(UTC)) + timedelta(seconds=delay_s)
            except OverflowError as exc:
                raise errors.ConfigurationError(
                    f"delay {spec.delay!r} puts the run past the year 9999"
                ) from exc
        data = codec.encode(spec.input, where="input", max_size=self.max_payload_bytes)
        # Decode what was encoded: a registered workflow's input type is checked here,
        # so a bad input fails the caller, not a run later; and a msgspec.Raw (which
        # msgspec copies verbatim) must hold exactly one JSON value, since the batch is
        # sent to Postgres as one JSON document.
        codec.decode(
            data,
            tp=wf.input_type if wf is not None else Any,
            where=f"input of workflow {spec.workflow!r}",
        )
        metadata = None
        if spec.metadata is not None:
            if not isinstance(spec.metadata, dict):
                raise errors.ConfigurationError("metadata must be a dict")
            metadata = codec.encode(spec.metadata, where="metadata", max_size=1024 * 1024)
            codec.decode(metadata, where="metadata")
        return NewRun(
            id=uuid7() if run_id is None else run_id,
            workflow=spec.workflow,
            queue=queue,
            input=msgspec.Raw(data),
            priority=spec.priority,
            dedupe_key=spec.dedupe_key,
            metadata=None if metadata is None else msgspec.Raw(metadata),
            parent_id=None,
            max_attempts=max_attempts,
            run_at=run_at,
            delay_s=delay_s,
            deadline_at=deadline,
            channels=self._channels(spec.webhooks),
            version=version,
            concurrency_key=spec.concurrency_key,
        )

    def _channels(self, webhooks: list[str] | None) -> list[str] | None:
        if webhooks is None:
            return None
        urls = check_channels(webhooks, where="webhooks")
        if not self.outbound_secret:
            raise errors.ConfigurationError(
                "webhooks need a secret to sign their deliveries: "
                "Tidebase(signing_secret=...) or TIDEBASE_SIGNING_SECRET"
            )
        return urls

    async def enqueue(
        self,
        workflow: str,
        *,
        input: Any = None,
        dedupe_key: str | None = None,
        queue: str | None = None,
        priority: int = 0,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        max_attempts: int | None = None,
        deadline: datetime | None = None,
        metadata: dict[str, Any] | None = None,
        webhooks: list[str] | None = None,
        version: str | None = None,
        concurrency_key: str | None = None,
        debounce: Debounce | None = None,
        singleton: Singleton | None = None,
    ) -> RunHandle:
        """Create a queued run and return at once.

        ``debounce``/``singleton``: flow control by key (``Debounce``, ``Singleton``):
        the enqueue returns the key's pending (debounce) or active (singleton
        ``skip``) run with ``deduplicated=True``, or replaces it (``replace``).

        ``concurrency_key`` (a tenant, an account; at most 200 characters): when the
        queue has per-key caps (``queues.configure(per_key_concurrency=...,
        per_key_rate_per_minute=...)``), the run counts against its key's; keys are
        served round robin. Ignored by queues without per-key caps.

        ``version``: the workflow version the run records and is executed with
        (default: the newest registered here; unversioned when the workflow is not
        registered here). Only workers that registered that version claim it.

        ``webhooks``: URLs that receive a signed ``run.completed``, ``run.failed`` or
        ``run.cancelled`` delivery when the run ends (see the outbox in the README).

        With ``dedupe_key``, at most one active (queued, running, waiting) run per
        (queue, key) exists: a duplicate returns the existing run with
        ``deduplicated=True``. The workflow need not be registered in this process;
        a run of a workflow no worker knows fails with ``WorkflowNotFound`` when claimed.
        Durable once this returns.

        Raises:
            SerializationError: ``input`` or ``metadata`` cannot be stored as it is
                (nothing is written): msgspec cannot encode it, it is nested too
                deeply, holds NaN or an infinity (JSON would turn them into null) or a
                NUL character (Postgres jsonb cannot hold one). PayloadTooLarge (a
                subclass) when it is over ``max_payload_bytes`` encoded.
            ConfigurationError: a bad option; the message names it.
            StoreError: the database failed.
        """
        spec = RunSpec(
            workflow=workflow,
            input=input,
            dedupe_key=dedupe_key,
            queue=queue,
            priority=priority,
            delay=as_seconds(delay, what="delay"),
            run_at=run_at,
            max_attempts=max_attempts,
            deadline=deadline,
            metadata=metadata,
            webhooks=webhooks,
            version=version,
            concurrency_key=concurrency_key,
            debounce=debounce,
            singleton=singleton,
        )
        new = self._new_run(spec)
        if debounce is not None or singleton is not None:
            return await client_flow.enqueue_keyed(self, spec, new)
        (row,) = await client_telemetry.insert_runs(self.store, self.telemetry, [new])
        # The workers' wake-up went out with the insert's commit (see enqueue_runs).
        return RunHandle(id=row.id, deduplicated=not row.inserted)

    async def enqueue_many(self, specs: Iterable[RunSpec | tuple[str, Any]]) -> list[RunHandle]:
        """Create many runs in one round trip; handles come back in input order.

        Dedupe keys apply as in ``enqueue``, also within the batch (the first wins).
        All or nothing: a bad spec raises before anything is written.
        """
        items: list[RunSpec] = []
        for i, spec in enumerate(specs):
            if isinstance(spec, tuple):
                if len(spec) != 2:
                    raise errors.ConfigurationError(
                        f"enqueue_many item {i}: a tuple must be (workflow, input)"
                    )
                spec = RunSpec(workflow=spec[0], input=spec[1])
            elif not isinstance(spec, RunSpec):
                raise errors.ConfigurationError(
                    f"enqueue_many item {i}: expected RunSpec or (workflow, input), "
                    f"got {type(spec).__name__}"
                )
            items.append(spec)
        if not items:
            return []
        for i, spec in enumerate(items):
            if spec.debounce is not None or spec.singleton is not None:
                raise errors.ConfigurationError(
                    f"enqueue_many item {i}: debounce and singleton are for enqueue only "
                    "(one key's runs must be upserted one at a time)"
                )
        runs = [self._new_run(s, i) for s, i in zip(items, uuid7_many(len(items)), strict=True)]
        unique: list[NewRun] = []
        first_of: dict[tuple[str, str], int] = {}
        slot: list[int] = []
        for run in runs:
            if run.dedupe_key is not None:
                key = (run.queue, run.dedupe_key)
                if key in first_of:
                    slot.append(-1 - first_of[key])
                    continue
                first_of[key] = len(unique)
            slot.append(len(unique))
            unique.append(run)
        # Insert in (queue, dedupe_key) order: two concurrent batches that share keys
        # then wait on each other's uncommitted rows in the same order, never in a cycle
        # (a deadlock, which Postgres breaks by failing one of them).
        rows = await client_telemetry.insert_runs(
            self.store,
            self.telemetry,
            sorted(unique, key=lambda r: (r.dedupe_key is None, r.queue, r.dedupe_key or "")),
        )
        by_id = {r.id: r for r in rows if r.inserted}
        by_key = {(r.queue, r.dedupe_key): r for r in rows if not r.inserted}
        resolved: list[RunHandle] = []
        for run in unique:
            hit = by_id.get(run.id)
            if hit is not None:
                resolved.append(RunHandle(id=hit.id, deduplicated=False))
            else:
                existing = by_key[(run.queue, run.dedupe_key or "")]
                resolved.append(RunHandle(id=existing.id, deduplicated=True))
        handles = [
            resolved[s] if s >= 0 else RunHandle(id=resolved[-1 - s].id, deduplicated=True)
            for s in slot
        ]
        return handles

    # -- inline runs ------------------------------------------------------------------

    async def run(
        self,
        workflow: str,
        *,
        input: Any = None,
        run_id: UUID | str | None = None,
        metadata: dict[str, Any] | None = None,
        lease: float = 30.0,
        recovery_webhook: str | None = None,
        webhooks: list[str] | None = None,
    ) -> Any:
        """Execute a run of ``workflow`` here, now, without a queue, and return its output.

        The run is durable like any other: it holds a lease that this process
        heartbeats, and if the process dies the lease expires and a worker of the
        workflow's queue resumes it from its checkpoints. With ``recovery_webhook``, the
        reconciler also POSTs a signed ``run.resume`` there (the URL where this app
        mounts ``tide.webhook()``), so the app resumes the run even with no worker:
        deliveries are retried with backoff and, when they are spent, the run fails
        with ``RecoveryFailed``. With ``run_id`` of an existing run, resumes it (or
        returns its output when it already completed).

        Raises:
            WorkflowNotFound: ``workflow`` is not registered in this process.
            RunFailed: the workflow failed for good; carries the recorded error.
            RunCancelled: the run was cancelled.
        """
        if workflow not in self._workflows:
            raise errors.WorkflowNotFound(
                f"workflow {workflow!r} is not registered in this process; inline runs "
                "execute here, so register it with @tide.workflow first"
            )
        context = self._engine_context(lease)
        rid = as_uuid(run_id) if run_id is not None else uuid7()
        spec = RunSpec(workflow=workflow, input=input, metadata=metadata, webhooks=webhooks)
        await run_inline(
            context,
            run_id=rid,
            new_run=functools.partial(self._new_inline_run, spec, recovery_webhook),
            recovery_webhook=recovery_webhook,
        )
        # Finished here, or another worker owns the run now.
        return await self.runs.wait(rid)

    def _new_inline_run(self, spec: RunSpec, recovery_webhook: str | None) -> NewRun:
        """The run ``tide.run`` creates when ``run_id`` does not exist yet, checked."""
        if recovery_webhook is not None:
            check_channels([recovery_webhook], where="recovery_webhook")
            if not self.outbound_secret:
                raise errors.ConfigurationError(
                    "recovery_webhook needs a secret to sign its deliveries: "
                    "Tidebase(signing_secret=...) or TIDEBASE_SIGNING_SECRET"
                )
        # The caller's trace goes with the run: a worker that resumes it after a crash
        # continues that trace.
        return msgspec.structs.replace(
            self._new_run(spec), trace_context=self.telemetry.child_context(None)
        )

    def _engine_context(self, lease: float | timedelta) -> EngineContext:
        """What the executions of a worker or of an inline run share, with leases of
        ``lease``. Built when either starts, so settings changed on this object before
        then (``public_url``, say) apply to it.

        Raises:
            ConfigurationError: this Tidebase is not open, or a bad ``lease``.
        """
        store = self.store
        self.telemetry.use_loop()
        return EngineContext(
            store=store,
            notifier=self.notifier,
            listener=self._listener,
            workflows=self._workflows,
            max_payload=self.max_payload_bytes,
            public_url=self.public_url,
            lease_s=as_seconds(lease, what="lease") or 30.0,
            telemetry=self.telemetry,
            versions=self._versions,
        )

    # -- web --------------------------------------------------------------------------

    def webhook(self, *, execute: bool = False) -> Endpoint:
        """The inbound webhook endpoint: an aiohttp handler and an ASGI app at once
        (``app.router.add_post("/tidebase", tide.webhook())``,
        ``Route("/tidebase", tide.webhook(), methods=["POST"])``). See ``web.webhook``."""
        from tidebase_async.web.adapters import Endpoint
        from tidebase_async.web.webhook import WebhookHandler

        return Endpoint(WebhookHandler(self, execute=execute), mounted=False)

    def asgi_app(self) -> Endpoint:
        """The HTTP API as an ASGI app (``Mount("/tidebase", app=tide.asgi_app())``).
        See ``web.api`` for the routes."""
        from tidebase_async.web.adapters import Endpoint
        from tidebase_async.web.api import Api

        return Endpoint(Api(self), mounted=True)

    def mcp_app(self) -> McpApp:
        """An MCP server over the streamable HTTP transport, as an ASGI app
        (``Mount("/mcp", app=tide.mcp_app())``), behind the HTTP API's key (without
        one, loopback only). Tools: list_runs, get_run, enqueue, cancel_run, retry_run,
        list_gates, resolve_gate, run_events. Stateless: it needs no lifespan of its
        own, but this Tidebase must be open while it serves. See ``web.mcp``.

        Raises:
            ConfigurationError: the ``mcp`` SDK is not installed
                (``pip install 'tidebase-async[mcp]'``).
        """
        from tidebase_async.web.mcp import McpApp

        return McpApp(self)

    def http_app(self) -> web.Application:
        """The HTTP API as an aiohttp sub-application
        (``app.add_subapp("/tidebase/", tide.http_app())``)."""
        from tidebase_async.web.adapters import aiohttp_app

        return aiohttp_app(self.asgi_app())

    # -- workers ----------------------------------------------------------------------

    async def work(
        self,
        queues: Iterable[str] | None = None,
        *,
        concurrency: int = 16,
        lease: float | timedelta = 30.0,
        poll_interval: float | timedelta = 5.0,
        shutdown_grace: float | timedelta = 10.0,
        maintenance_interval: float | timedelta = 1.0,
        handle_signals: bool = True,
        started: anyio.Event | None = None,
        worker_ready: Callable[[Worker], None] | None = None,
    ) -> None:
        """Execute queued runs until cancelled or SIGTERM (which drains gracefully).

        ``queues`` defaults to the queues of the registered workflows (or ``default``).
        ``concurrency`` bounds how many runs' workflow code executes at once; a run
        whose code is done hands its slot to the next claim while its outcome is
        being written, so briefly up to twice as many runs may hold leases here.
        Opens this Tidebase if it is not open yet.
        """
        if self._store is None:
            async with self:
                await self.work(
                    queues,
                    concurrency=concurrency,
                    lease=lease,
                    poll_interval=poll_interval,
                    shutdown_grace=shutdown_grace,
                    maintenance_interval=maintenance_interval,
                    handle_signals=handle_signals,
                    started=started,
                    worker_ready=worker_ready,
                )
            return
        if queues is None:
            # Every version's queue: older versions' runs wait in theirs.
            names = sorted(
                {wf.queue for vs in self._versions.by_name.values() for wf in vs.values()}
            ) or [DEFAULT_QUEUE]
        elif isinstance(queues, str):
            names = [queues]
        else:
            names = list(queues)
        for q in names:
            check_name("queue", q)
        worker = Worker(
            self._engine_context(lease),
            queues=names,
            concurrency=concurrency,
            poll_interval_s=as_seconds(poll_interval, what="poll_interval") or 5.0,
            shutdown_grace_s=as_seconds(shutdown_grace, what="shutdown_grace") or 0.0,
            maintenance_interval_s=as_seconds(maintenance_interval, what="maintenance_interval")
            or 1.0,
            handle_signals=handle_signals,
            retention_s=self.retention_s,
            deliverer=Deliverer(self.store, secret=self.outbound_secret),
        )
        # Schedules declared in code exist (and match the code) before anything fires.
        await self.schedules.sync_code(self._workflows)
        if worker_ready is not None:
            worker_ready(worker)
        self._workers.add(worker)
        try:
            await worker.run(started=started)
        finally:
            self._workers.discard(worker)


#: The longest concurrency key (characters).
MAX_CONCURRENCY_KEY = 200


def _check_concurrency_key(key: object) -> None:
    """A concurrency key is a str of 1..200 characters without control characters (a
    key is shown in listings and logs) or lone surrogates."""
    if key is None:
        return
    if not isinstance(key, str):
        raise errors.ConfigurationError(
            f"concurrency_key must be a str or None, got {type(key).__name__}"
        )
    shown = repr(key[:40]) + ("..." if len(key) > 40 else "")
    if not 1 <= len(key) <= MAX_CONCURRENCY_KEY:
        raise errors.ConfigurationError(
            f"concurrency_key must be 1..{MAX_CONCURRENCY_KEY} characters, got {len(key)}: {shown}"
        )
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in key) or not is_utf8(key):
        raise errors.ConfigurationError(
            f"concurrency_key must not hold control characters or lone surrogates: {shown}"
        )
