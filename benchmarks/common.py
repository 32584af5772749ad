"""What every benchmark shares: the server, a fresh database each, a Tidebase opened on
it, a worker running beside the measuring code, and polling with a deadline."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg
import msgspec

from benchmarks.environment import PG_SETTINGS, Mode
from benchmarks.report import Figure
from tidebase_async import Tidebase, Worker

logger = logging.getLogger(__name__)

DSN_ENV = "TIDEBASE_BENCH_DSN"
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"

# Fine enough that the quantisation of a drain's end time stays under 0.1% of it.
POLL_S = 0.002


class BenchmarkError(Exception):
    """A benchmark could not measure what it set out to (not a missed target)."""


class Server(msgspec.Struct, frozen=True, kw_only=True):
    dsn: str
    embedded: bool
    fallback_reason: str | None = None


class Context(msgspec.Struct, frozen=True, kw_only=True):
    mode: Mode
    admin_dsn: str
    #: A PgBouncer (transaction mode) in front of the server: the benchmarks' Tidebase
    #: goes through it (``pooled=True``), with a direct ``listen_dsn`` for LISTEN.
    pooler_dsn: str | None = None


class Measurement(msgspec.Struct, kw_only=True):
    """What a benchmark returns: the printed figures and everything else for JSON."""

    figures: list[Figure]
    details: dict[str, Any]
    # A table printed instead of the figure/value rows (benchmarks/compare.py).
    table: str | None = None


class CpuClock:
    """CPU time since it was made: this process's, and the rest of the machine's (from
    ``/proc/stat``; on a quiet machine that is the Postgres server's). What a drain
    costs per job on each side of the wire; NaN where ``/proc/stat`` is missing."""

    def __init__(self) -> None:
        self._process = time.process_time()
        self._machine = _machine_busy_s()

    def read(self) -> tuple[float, float]:
        """(this process, the rest of the machine), CPU seconds so far."""
        process = time.process_time() - self._process
        return process, max(0.0, _machine_busy_s() - self._machine - process)


def _machine_busy_s() -> float:
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return float("nan")
    # user nice system idle iowait irq softirq steal: all but idle and iowait.
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def resolve_dsn(arg: str | None) -> str:
    return arg or os.environ.get(DSN_ENV) or DEFAULT_DSN


def per_second(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def with_database(dsn: str, database: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path="/" + database))


@contextlib.asynccontextmanager
async def connect(dsn: str) -> AsyncIterator[Any]:
    """One plain asyncpg connection (admin work and checks, never measured)."""
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        yield conn
    finally:
        with anyio.CancelScope(shield=True):
            await conn.close()


async def _unreachable(dsn: str) -> str | None:
    """None when the server answers, else why not."""
    try:
        async with connect(dsn) as conn:
            await conn.fetchval("SELECT 1")
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@contextlib.asynccontextmanager
async def server(dsn: str) -> AsyncIterator[Server]:
    """The server at ``dsn``; when it does not answer, an embedded Postgres instead
    (if this version of the library has one)."""
    why = await _unreachable(dsn)
    if why is None:
        yield Server(dsn=dsn, embedded=False)
        return
    try:
        from tidebase_async.embedded import start_embedded
    except ImportError as exc:
        raise BenchmarkError(f"Postgres at {dsn} does not answer ({why})") from exc
    logger.warning("Postgres at %s does not answer (%s); using the embedded one", dsn, why)
    pg = await start_embedded()
    try:
        yield Server(dsn=pg.dsn, embedded=True, fallback_reason=f"{dsn} did not answer: {why}")
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(pg.stop)


async def server_settings(dsn: str) -> dict[str, str]:
    """server_version and the settings a figure depends on (SHOW)."""
    async with connect(dsn) as conn:
        return {name: str(await conn.fetchval(f"SHOW {name}")) for name in PG_SETTINGS} | {
            "server_version": str(await conn.fetchval("SHOW server_version"))
        }


@contextlib.asynccontextmanager
async def pgbouncer(dsn: str) -> AsyncIterator[str]:
    """A PgBouncer in front of ``dsn``'s server; yields a DSN through it (database to
    be replaced). Started with the test suite's helper (Debian's pgbouncer, installed
    by scripts/ensure-pgbouncer): transaction mode, its default pool sizes."""
    from tests.deploy_support import ensure_pgbouncer, running_pgbouncer, upstream_of

    ensure_pgbouncer()
    up = upstream_of(dsn)
    async with running_pgbouncer(
        upstream_host=up.host, upstream_port=up.port, users={up.user: up.password}
    ) as bouncer:
        print(f"through PgBouncer on 127.0.0.1:{bouncer.port} (transaction mode)", flush=True)
        yield bouncer.dsn()


@contextlib.asynccontextmanager
async def fresh_database(admin_dsn: str) -> AsyncIterator[str]:
    """A new empty database for one measurement; dropped afterwards. Yields its DSN."""
    # CREATE DATABASE takes no parameters; the name is ours, hex only.
    name = f"bench_{secrets.token_hex(6)}"
    async with connect(admin_dsn) as conn:
        await conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(admin_dsn, name)
    finally:
        with anyio.CancelScope(shield=True):
            async with connect(admin_dsn) as conn:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.asynccontextmanager
async def fresh_tidebase(
    ctx: Context, register: Callable[[Tidebase], None]
) -> AsyncIterator[Tidebase]:
    """An open (migrated) Tidebase on a fresh database, with workflows registered."""
    async with fresh_database(ctx.admin_dsn) as dsn:
        if ctx.pooler_dsn is None:
            tide = Tidebase(dsn)
        else:
            database = urlsplit(dsn).path.lstrip("/")
            tide = Tidebase(with_database(ctx.pooler_dsn, database), pooled=True, listen_dsn=dsn)
        register(tide)
        async with tide:
            yield tide


@contextlib.asynccontextmanager
async def running_worker(
    tide: Tidebase, *, concurrency: int, poll_interval: float = 5.0
) -> AsyncIterator[Worker]:
    """``tide.work()`` in a task beside the caller, yielded once it is claiming.
    Leaving stops it gracefully and waits for it to return."""
    workers: list[Worker] = []
    started = anyio.Event()
    work = functools.partial(
        tide.work,
        concurrency=concurrency,
        poll_interval=poll_interval,
        shutdown_grace=5.0,
        handle_signals=False,
        started=started,
        worker_ready=workers.append,
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(work)
        with anyio.fail_after(10):
            await started.wait()
        try:
            yield workers[0]
        finally:
            workers[0].stop()


async def wait_until(predicate: Callable[[], bool], *, timeout_s: float, what: str) -> float:
    """Poll an in-process ``predicate`` every 2 ms; return ``perf_counter()`` at the
    first poll that saw it true.

    Raises:
        BenchmarkError: still false after ``timeout_s``.
    """
    deadline = time.perf_counter() + timeout_s
    while not predicate():
        if time.perf_counter() > deadline:
            raise BenchmarkError(f"timed out after {timeout_s:g}s waiting for {what}")
        await anyio.sleep(POLL_S)
    return time.perf_counter()


async def count_runs(tide: Tidebase) -> dict[str, int]:
    """Runs per status, straight from the table."""
    assert tide.dsn is not None
    async with connect(tide.dsn) as conn:
        rows = await conn.fetch("SELECT status, count(*) FROM tidebase.runs GROUP BY status")
    return {str(row[0]): int(row[1]) for row in rows}
