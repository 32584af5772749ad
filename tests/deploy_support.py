"""Deployment test infrastructure: PgBouncer in front of the test server, and a primary
with a synchronous streaming standby that can be crashed and promoted.

- :func:`start_pgbouncer` / :class:`PgBouncer`: a PgBouncer of the machine (Debian's,
  installed by ``scripts/ensure-pgbouncer``) in a temporary directory, transaction mode
  by default, ``auth_type = trust``, a wildcard ``[databases]`` entry (so every
  per-test database is reachable), listening on 127.0.0.1 at a free port.
  ``ignore_startup_parameters`` is deliberately not set: clients that send a startup
  parameter PgBouncer does not know (``jit``, ``search_path``, ``options``, ...) are
  refused, as in a real deployment.
- :class:`ReplicaPair`: ``initdb`` + ``pg_basebackup -R`` from the machine's Postgres
  binaries; the standby is synchronous (``synchronous_standby_names``), so a commit
  acknowledged by the primary is on the standby when the primary crashes.
- Fixtures for a conftest (or test module) to import: ``pgbouncer`` (session),
  ``pooled_dsn`` (the per-test database of the ``dsn`` fixture, through that PgBouncer)
  and ``replica_pair`` (one per test: a failover consumes it)::

      from tests.deploy_support import pgbouncer, pooled_dsn, replica_pair

      __all__ = ["pgbouncer", "pooled_dsn", "replica_pair"]  # fixtures, used by name

  Failover through PgBouncer: ``running_pgbouncer(upstream_host="127.0.0.1",
  upstream_port=pair.primary_port)``, then after ``pair.crash_primary()`` and
  ``pair.promote_standby()``, ``bouncer.retarget(upstream_port=pair.standby_port)``.

PgBouncer and Postgres refuse to run as root: when the tests run as root, every
process and file of theirs belongs to the ``postgres`` OS user (``TIDEBASE_SERVICE_USER``
to pick another). Their directories go to /dev/shm when it has room
(``TIDEBASE_DEPLOY_TMPDIR`` to choose); set ``TIDEBASE_KEEP_DEPLOY_DIRS=1`` to keep them
(configuration, data and logs) after the tests.
"""

from __future__ import annotations

import abc
import asyncio
import atexit
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest

REPO = Path(__file__).resolve().parent.parent
ENSURE_PGBOUNCER = REPO / "scripts" / "ensure-pgbouncer"
KEEP_DIRS_ENV = "TIDEBASE_KEEP_DEPLOY_DIRS"
SERVICE_USER_ENV = "TIDEBASE_SERVICE_USER"
TMPDIR_ENV = "TIDEBASE_DEPLOY_TMPDIR"

# What PgBouncer answers a client whose startup packet carries a parameter it does not
# track (and ``ignore_startup_parameters`` does not list): SQLSTATE 08P01, which asyncpg
# raises as ProtocolViolationError. The parameter's name follows the colon.
UNSUPPORTED_STARTUP_PARAMETER = "unsupported startup parameter"


class DeployInfraError(RuntimeError):
    """A helper could not set up or tear down its processes; the message says why and
    carries the tail of the relevant log."""


# ---------------------------------------------------------------------------------------
# Processes as the service user


@dataclass(frozen=True)
class _ServiceUser:
    name: str
    uid: int
    gid: int


def _service_user() -> _ServiceUser | None:
    """Who owns and runs the servers: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get(SERVICE_USER_ENV, "postgres")
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise DeployInfraError(
            f"running as root, and there is no {name!r} OS user to run PgBouncer/Postgres "
            f"as (they refuse root); create it or set {SERVICE_USER_ENV}"
        ) from None
    return _ServiceUser(name, entry.pw_uid, entry.pw_gid)


def _as_service_user() -> dict[str, Any]:
    """subprocess keyword arguments that drop to the service user (when root)."""
    user = _service_user()
    if user is None:
        return {}
    return {"user": user.uid, "group": user.gid, "extra_groups": []}


def _child_env() -> dict[str, str]:
    """Our environment without libpq's PG* variables (they would redirect the tools)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C.UTF-8"
    user = _service_user()
    if user is not None:  # not root's home (libpq would look for /root/.pgpass)
        env["HOME"] = pwd.getpwuid(user.uid).pw_dir
    return env


def _tmp_root() -> str | None:
    """Where the servers' directories go: ``$TIDEBASE_DEPLOY_TMPDIR``, else /dev/shm when
    it has room (a tmpfs: initdb, base backups and fsyncs take a fraction of the time
    they take on a busy disk, and a ``-m immediate`` crash loses the same: only what the
    processes held), else the default temporary directory."""
    explicit = os.environ.get(TMPDIR_ENV)
    if explicit:
        return explicit
    with contextlib.suppress(OSError):
        shm = os.statvfs("/dev/shm")
        if os.access("/dev/shm", os.W_OK | os.X_OK) and shm.f_bavail * shm.f_frsize > 2**30:
            return "/dev/shm"
    return None


def _make_dir(prefix: str) -> Path:
    """A fresh temporary directory owned by the service user (mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=_tmp_root()))
    user = _service_user()
    if user is not None:
        os.chown(path, user.uid, user.gid)
    return path


def _remove_dir(path: Path) -> None:
    if os.environ.get(KEEP_DIRS_ENV):
        return
    shutil.rmtree(path, ignore_errors=True)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def _run(
    cmd: Sequence[str], *, cwd: Path, timeout: float = 60.0, what: str
) -> subprocess.CompletedProcess[str]:
    """Run a tool as the service user; DeployInfraError with its output on failure."""
    try:
        done = subprocess.run(
            list(cmd),
            cwd=cwd,
            env=_child_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **_as_service_user(),
        )
    except subprocess.TimeoutExpired as exc:
        raise DeployInfraError(f"{what}: timed out after {timeout:g}s: {cmd}") from exc
    if done.returncode != 0:
        raise DeployInfraError(
            f"{what}: exit {done.returncode}: {' '.join(cmd)}\n{done.stdout}{done.stderr}"
        )
    return done


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _quote_conf(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


# ---------------------------------------------------------------------------------------
# PgBouncer


def pgbouncer_binary() -> str:
    """The PgBouncer executable: ``$TIDEBASE_PGBOUNCER``, else on PATH, else Debian's."""
    explicit = os.environ.get("TIDEBASE_PGBOUNCER")
    if explicit:
        return explicit
    found = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None
    )
    if found is None:
        raise DeployInfraError("pgbouncer is not installed (run scripts/ensure-pgbouncer)")
    return found


def ensure_pgbouncer() -> str:
    """Run ``scripts/ensure-pgbouncer`` (installs Debian's package when missing) and
    return the executable."""
    done = subprocess.run(
        [str(ENSURE_PGBOUNCER)], capture_output=True, text=True, timeout=600, check=False
    )
    if done.returncode != 0:
        raise DeployInfraError(
            f"scripts/ensure-pgbouncer failed (exit {done.returncode}):\n{done.stdout}{done.stderr}"
        )
    return pgbouncer_binary()


def pgbouncer_version(binary: str | None = None) -> tuple[int, int, int]:
    """(major, minor, patch) of ``pgbouncer --version`` ("PgBouncer 1.18.0")."""
    out = subprocess.run(
        [binary or pgbouncer_binary(), "--version"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    match = re.search(r"PgBouncer (\d+)\.(\d+)(?:\.(\d+))?", out)
    if match is None:
        raise DeployInfraError(f"cannot read PgBouncer's version from {out!r}")
    return int(match[1]), int(match[2]), int(match[3] or 0)


class _Service(abc.ABC):
    """A server process a test starts and stops: ``with`` and ``async with`` both run
    ``start()`` (off the event loop when async) and always ``stop()``, also when the
    start failed half-way."""

    @abc.abstractmethod
    def start(self) -> Self:
        """Start the service and wait until it serves."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop it and remove what it left on disk; idempotent."""

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        try:
            return await asyncio.to_thread(self.start)
        except BaseException:
            await asyncio.to_thread(self.stop)
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)


class PgBouncer(_Service):
    """One PgBouncer process in a temporary directory; see :func:`start_pgbouncer`.

    ``with``/``async with`` start it (unless started) and stop it on the way out,
    whatever happened inside.
    """

    def __init__(
        self,
        *,
        upstream_host: str,
        upstream_port: int = 5432,
        pool_mode: str = "transaction",
        users: Mapping[str, str] | None = None,
        default_pool_size: int = 10,
        max_client_conn: int = 400,
        settings: Mapping[str, str | int] | None = None,
        binary: str | None = None,
    ) -> None:
        """``users``: name -> password written to the auth file (trust auth needs every
        user listed; PgBouncer uses the password to log in to the server when that asks
        for one). ``settings``: extra ``[pgbouncer]`` lines, which override ours."""
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.pool_mode = pool_mode
        self.users = dict(users) if users is not None else {"postgres": ""}
        self.default_pool_size = default_pool_size
        self.max_client_conn = max_client_conn
        self.settings = dict(settings or {})
        self.binary = binary or pgbouncer_binary()
        self.version = pgbouncer_version(self.binary)
        self.port = 0
        self.dir: Path | None = None
        self.startup_seconds = 0.0
        self.last_log = ""
        self._process: subprocess.Popen[bytes] | None = None

    # -- paths and DSNs

    @property
    def log_path(self) -> Path:
        """Everything PgBouncer logged (it logs to stderr, redirected here)."""
        assert self.dir is not None, "PgBouncer not started"
        return self.dir / "pgbouncer.log"

    @property
    def ini_path(self) -> Path:
        assert self.dir is not None, "PgBouncer not started"
        return self.dir / "pgbouncer.ini"

    def log_text(self) -> str:
        """The log so far; after ``stop()``, the log as it was when it stopped."""
        if self.dir is None:
            return self.last_log
        return self.log_path.read_text(errors="replace")

    def dsn(self, dbname: str = "postgres", *, user: str | None = None) -> str:
        """A DSN for ``dbname`` through this PgBouncer."""
        name = user or next(iter(self.users))
        password = self.users.get(name, "")
        auth = quote(name, safe="") + (":" + quote(password, safe="") if password else "")
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{quote(dbname, safe='')}"

    def admin_dsn(self) -> str:
        """The admin console (``SHOW POOLS`` and friends; simple query protocol only)."""
        return self.dsn("pgbouncer")

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- lifecycle

    def _config(self) -> str:
        host = self.upstream_host
        lines = [
            "[databases]",
            # Wildcard: any database name the client asks for, on the upstream server.
            f"* = host={host} port={self.upstream_port}",
            "",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            # No unix socket: nothing to collide with a server's socket of the same port.
            "unix_socket_dir =",
            "auth_type = trust",
            f"auth_file = {self.dir}/userlist.txt",
            f"pool_mode = {self.pool_mode}",
            f"max_client_conn = {self.max_client_conn}",
            f"default_pool_size = {self.default_pool_size}",
            # Failover tests restart or replace the server: retry logins after 1 s, not
            # the default 15 s.
            "server_login_retry = 1",
            # A client whose query waits for a server connection (the server is down)
            # fails after 10 s instead of the default 120 s (longer than a test may take).
            "query_wait_timeout = 10",
            "admin_users = " + ", ".join(self.users),
            "stats_users = " + ", ".join(self.users),
            # server_reset_query and ignore_startup_parameters stay at their defaults.
        ]
        lines += [f"{key} = {value}" for key, value in self.settings.items()]
        return "\n".join(lines) + "\n"

    def _userlist(self) -> str:
        def q(value: str) -> str:
            return '"' + value.replace('"', '""') + '"'

        return "".join(f"{q(u)} {q(p)}\n" for u, p in self.users.items())

    def start(self, *, timeout: float = 15.0) -> Self:
        """Write the config, start PgBouncer in the foreground as the service user and
        wait until it accepts TCP connections. Retries on another port when the one
        picked was taken meanwhile."""
        if self.running():
            return self
        began = time.perf_counter()
        if self.dir is None:
            self.dir = _make_dir("tidebase-pgbouncer-")
        user = _service_user()
        last_error = ""
        for _attempt in range(3):
            self.port = free_port()
            for name, text in (
                ("pgbouncer.ini", self._config()),
                ("userlist.txt", self._userlist()),
            ):
                path = self.dir / name
                path.write_text(text)
                path.chmod(0o600)
                if user is not None:
                    os.chown(path, user.uid, user.gid)
            with open(self.log_path, "ab") as log:
                self._process = subprocess.Popen(
                    [self.binary, str(self.ini_path)],
                    cwd=self.dir,
                    env=_child_env(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    # Its own session: a Ctrl-C at the terminal reaches pytest, which
                    # then stops PgBouncer in teardown.
                    start_new_session=True,
                    **_as_service_user(),
                )
            self.log_path.chmod(0o644)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    break
                if _accepts(self.port):
                    self.startup_seconds = time.perf_counter() - began
                    return self
                time.sleep(0.01)
            code = self._process.poll()
            if code is None:
                self._kill()
                last_error = f"not accepting connections on port {self.port} after {timeout:g}s"
                break
            last_error = f"exited with code {code}"
            if "Address already in use" not in _tail(self.log_path):
                break
        raise DeployInfraError(
            f"PgBouncer {'.'.join(map(str, self.version))} ({self.binary}) {last_error}; "
            f"config {self.ini_path}; log:\n{_tail(self.log_path)}"
        )

    def retarget(
        self, *, upstream_host: str | None = None, upstream_port: int | None = None
    ) -> None:
        """Point the wildcard database at another server (a promoted standby, say) and
        reload (SIGHUP). PgBouncer closes the server connections it holds to the old
        address as they become idle; clients keep their PgBouncer connections."""
        if not self.running():
            raise DeployInfraError("PgBouncer is not running")
        assert self._process is not None
        if upstream_host is not None:
            self.upstream_host = upstream_host
        if upstream_port is not None:
            self.upstream_port = upstream_port
        self.ini_path.write_text(self._config())
        self._process.send_signal(signal.SIGHUP)

    def _kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(10)

    def stop(self, *, timeout: float = 10.0) -> None:
        """Immediate shutdown (SIGTERM before 1.23, SIGQUIT since: SIGTERM became a
        'wait for every client' shutdown there), SIGKILL after ``timeout``; then the
        directory goes (unless ``TIDEBASE_KEEP_DEPLOY_DIRS``). Idempotent."""
        process = self._process
        if process is not None and process.poll() is None:
            sig = signal.SIGTERM if self.version < (1, 23) else signal.SIGQUIT
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill()
        self._process = None
        if self.dir is not None:
            with contextlib.suppress(OSError):
                self.last_log = self.log_path.read_text(errors="replace")
            _remove_dir(self.dir)
            self.dir = None


def start_pgbouncer(
    *,
    upstream_host: str,
    upstream_port: int = 5432,
    pool_mode: str = "transaction",
    users: Mapping[str, str] | None = None,
    default_pool_size: int = 10,
    max_client_conn: int = 400,
    settings: Mapping[str, str | int] | None = None,
    binary: str | None = None,
) -> PgBouncer:
    """A running PgBouncer in front of ``upstream_host:upstream_port`` (a host name, an
    IP address or a unix socket directory). Call ``.stop()`` when done, or use
    :func:`running_pgbouncer` / ``with PgBouncer(...)``."""
    bouncer = PgBouncer(
        upstream_host=upstream_host,
        upstream_port=upstream_port,
        pool_mode=pool_mode,
        users=users,
        default_pool_size=default_pool_size,
        max_client_conn=max_client_conn,
        settings=settings,
        binary=binary,
    )
    try:
        return bouncer.start()
    except BaseException:
        bouncer.stop()
        raise


@contextlib.asynccontextmanager
async def running_pgbouncer(
    *,
    upstream_host: str,
    upstream_port: int = 5432,
    pool_mode: str = "transaction",
    users: Mapping[str, str] | None = None,
    default_pool_size: int = 10,
    max_client_conn: int = 400,
    settings: Mapping[str, str | int] | None = None,
) -> AsyncIterator[PgBouncer]:
    """``async with running_pgbouncer(upstream_host=..., ...) as bouncer:``; stopped on
    the way out, also when the body failed."""
    bouncer = PgBouncer(
        upstream_host=upstream_host,
        upstream_port=upstream_port,
        pool_mode=pool_mode,
        users=users,
        default_pool_size=default_pool_size,
        max_client_conn=max_client_conn,
        settings=settings,
    )
    async with bouncer:
        yield bouncer


@dataclass(frozen=True)
class Upstream:
    """Where a DSN points: host (or unix socket directory), port, user, password."""

    host: str
    port: int
    user: str
    password: str


def upstream_of(dsn: str) -> Upstream:
    """Parse a single-host ``postgresql://`` DSN (TCP, or ``?host=/socket/dir``)."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgresql", "postgres"):
        raise DeployInfraError(f"not a postgresql:// URL DSN: {dsn!r}")
    if "," in parts.netloc:
        raise DeployInfraError(f"a multi-host DSN cannot be put behind PgBouncer: {dsn!r}")
    query = parse_qs(parts.query)
    host = parts.hostname or (query.get("host") or [""])[0] or "127.0.0.1"
    port = parts.port or int((query.get("port") or ["5432"])[0])
    user = unquote(parts.username or "") or (query.get("user") or ["postgres"])[0]
    password = unquote(parts.password or "") or (query.get("password") or [""])[0]
    return Upstream(host=unquote(host), port=port, user=user, password=password)


def with_database(dsn: str, database: str) -> str:
    """``dsn`` naming ``database`` instead."""
    return urlsplit(dsn)._replace(path="/" + quote(database, safe="")).geturl()


def database_of(dsn: str) -> str:
    return unquote(urlsplit(dsn).path.lstrip("/")) or "postgres"


@pytest.fixture(scope="session")
def pgbouncer(server_dsn: str) -> Iterator[PgBouncer]:
    """One PgBouncer (transaction mode) in front of the test server for the session:
    ``pgbouncer.dsn(dbname)`` reaches any database of it. Installs PgBouncer first when
    missing (scripts/ensure-pgbouncer). Fails, never skips, when it cannot run."""
    try:
        ensure_pgbouncer()
        upstream = upstream_of(server_dsn)
        bouncer = start_pgbouncer(
            upstream_host=upstream.host,
            upstream_port=upstream.port,
            users={upstream.user: upstream.password},
        )
    except (DeployInfraError, OSError, subprocess.SubprocessError, ValueError) as exc:
        pytest.fail(f"cannot run PgBouncer in front of the test server: {exc}", pytrace=False)
    try:
        yield bouncer
    finally:
        bouncer.stop()


@pytest.fixture
def pooled_dsn(pgbouncer: PgBouncer, dsn: str) -> str:
    """The test's fresh, migrated database (the ``dsn`` fixture) through PgBouncer."""
    return pgbouncer.dsn(database_of(dsn), user=upstream_of(dsn).user)


# ---------------------------------------------------------------------------------------
# A primary and a synchronous streaming standby


def postgres_bindir() -> Path:
    """Postgres server binaries: ``$TIDEBASE_PG_BINDIR``, else the newest
    /usr/lib/postgresql/*/bin (Debian), else the directory of ``initdb`` on PATH."""
    explicit = os.environ.get("TIDEBASE_PG_BINDIR")
    if explicit:
        return Path(explicit)
    debian = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if debian:
        return debian[-1]
    initdb = shutil.which("initdb")
    if initdb is None:
        raise DeployInfraError("no Postgres server binaries (initdb) found")
    return Path(initdb).parent


STANDBY_NAME = "standby1"

# One initdb per process and set of binaries; each ReplicaPair copies it (cp -a), which
# is much cheaper than initdb on a busy machine. Removed when the process exits.
_initdb_templates: dict[Path, Path] = {}
_initdb_lock = threading.Lock()


def _initdb_template(bindir: Path, *, timeout: float) -> Path:
    """A pristine data directory made by ``initdb`` of ``bindir`` (never started)."""
    with _initdb_lock:
        cached = _initdb_templates.get(bindir)
        if cached is not None and (cached / "PG_VERSION").exists():
            return cached
        root = _make_dir("tidebase-initdb-")
        atexit.register(shutil.rmtree, root, True)
        data = root / "data"
        _run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
            cwd=root,
            timeout=timeout,
            what="initdb",
        )
        _initdb_templates[bindir] = data
        return data


class ReplicaPair(_Service):
    """A primary and one synchronous streaming standby on 127.0.0.1, in a temporary
    directory, as the service user.

    ``start()`` copies a data directory made by initdb (once per process), starts the
    primary (``wal_level = replica``,
    ``synchronous_standby_names = 'standby1'``), takes ``pg_basebackup -R`` with
    ``application_name=standby1`` in its ``primary_conninfo``, starts the standby and
    waits until ``pg_stat_replication`` shows it streaming and ``sync``. The standby's
    ``synchronous_standby_names`` is empty, so once promoted it commits without waiting
    for a standby it does not have. ``timings`` holds how long each step took.
    """

    def __init__(
        self,
        *,
        bindir: Path | None = None,
        settings: Mapping[str, str] | None = None,
        synchronous_commit: str = "on",
    ) -> None:
        """``settings``: extra postgresql.conf lines for both servers.
        ``synchronous_commit``: ``on`` (acknowledged commits are flushed on the standby),
        or ``remote_apply`` to also make them visible to reads on the standby."""
        self.bindir = bindir or postgres_bindir()
        self.settings = dict(settings or {})
        self.synchronous_commit = synchronous_commit
        self.dir: Path | None = None
        self.primary_port = 0
        self.standby_port = 0
        self.timings: dict[str, float] = {}
        self.setup_seconds = 0.0
        self.primary_crashed = False
        self.promoted = False

    # -- paths, DSNs and queries

    def _path(self, name: str) -> Path:
        assert self.dir is not None, "ReplicaPair not started"
        return self.dir / name

    @property
    def primary_data(self) -> Path:
        return self._path("primary")

    @property
    def standby_data(self) -> Path:
        return self._path("standby")

    @property
    def primary_log(self) -> Path:
        return self._path("primary.log")

    @property
    def standby_log(self) -> Path:
        return self._path("standby.log")

    def _tool(self, name: str) -> str:
        return str(self.bindir / name)

    def primary_dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.primary_port}/{quote(dbname, safe='')}"

    def standby_dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.standby_port}/{quote(dbname, safe='')}"

    def multi_host_dsn(self, dbname: str = "postgres") -> str:
        """Both servers, the writable one wins: connects to whichever is the primary."""
        return (
            f"postgresql://postgres@127.0.0.1:{self.primary_port},127.0.0.1:{self.standby_port}"
            f"/{quote(dbname, safe='')}?target_session_attrs=read-write"
        )

    def psql(self, port: int, sql: str, *, dbname: str = "postgres", timeout: float = 30) -> str:
        """Run ``sql`` through psql on ``port``; its unaligned, tuples-only output."""
        assert self.dir is not None, "ReplicaPair not started"
        done = _run(
            [
                self._tool("psql"),
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "postgres",
                "-d",
                dbname,
                "-c",
                sql,
            ],
            cwd=self.dir,
            timeout=timeout,
            what=f"psql on port {port}",
        )
        return done.stdout.strip()

    def _wait(self, what: str, check: Any, timeout: float, log: Path) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            try:
                if check():
                    return
            except DeployInfraError as exc:
                last = str(exc)
            if time.monotonic() > deadline:
                raise DeployInfraError(
                    f"{what}: not after {timeout:g}s ({last or 'condition false'}); "
                    f"{log.name}:\n{_tail(log)}"
                )
            time.sleep(0.02)

    # -- lifecycle

    def _conf_lines(self, port: int, *, standby: bool) -> str:
        assert self.dir is not None
        settings = {
            "listen_addresses": _quote_conf("127.0.0.1"),
            "port": str(port),
            "unix_socket_directories": _quote_conf(str(self.dir)),
            "shared_buffers": "16MB",
            "max_connections": "50",
            "wal_level": "replica",
            "max_wal_senders": "4",
            "max_replication_slots": "4",
            "wal_keep_size": "64MB",
            "hot_standby": "on",
            "synchronous_commit": self.synchronous_commit,
            # The primary waits for the standby; the standby, promoted, waits for nobody.
            "synchronous_standby_names": _quote_conf("" if standby else STANDBY_NAME),
            "fsync": "on",
            "logging_collector": "off",
            "log_line_prefix": _quote_conf("%m [%p] "),
        }
        settings.update(self.settings)
        header = "\n# tidebase ReplicaPair (" + ("standby" if standby else "primary") + ")\n"
        return header + "".join(f"{k} = {v}\n" for k, v in settings.items())

    def _write_hba(self, data: Path) -> None:
        (data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "local replication all trust\n"
            "host all all 127.0.0.1/32 trust\n"
            "host replication all 127.0.0.1/32 trust\n"
        )

    def _append(self, path: Path, text: str) -> None:
        with path.open("a") as f:
            f.write(text)

    def _pg_ctl(self, *args: str, timeout: float = 60.0, what: str) -> None:
        assert self.dir is not None
        _run([self._tool("pg_ctl"), *args], cwd=self.dir, timeout=timeout, what=what)

    def _timed(self, step: str, began: float) -> float:
        now = time.perf_counter()
        self.timings[step] = round(now - began, 3)
        return now

    def start(self, *, timeout: float = 60.0) -> Self:
        """Build and start both servers; see the class docstring."""
        began = t = time.perf_counter()
        self.dir = _make_dir("tidebase-replica-")
        self.primary_port = free_port()
        self.standby_port = free_port()
        while self.standby_port == self.primary_port:
            self.standby_port = free_port()
        template = _initdb_template(self.bindir, timeout=timeout)
        _run(
            ["cp", "-a", str(template), str(self.primary_data)],
            cwd=self.dir,
            timeout=timeout,
            what="copying the initdb template",
        )
        t = self._timed("initdb", t)
        self._append(
            self.primary_data / "postgresql.conf",
            self._conf_lines(self.primary_port, standby=False),
        )
        self._write_hba(self.primary_data)
        self._pg_ctl(
            "-D",
            str(self.primary_data),
            "-l",
            str(self.primary_log),
            "-w",
            "-t",
            str(int(timeout)),
            "start",
            timeout=timeout,
            what="starting the primary",
        )
        t = self._timed("start_primary", t)
        _run(
            [
                self._tool("pg_basebackup"),
                "-d",
                f"host=127.0.0.1 port={self.primary_port} user=postgres "
                f"application_name={STANDBY_NAME}",
                "-D",
                str(self.standby_data),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "-C",
                "-S",
                STANDBY_NAME,
                "--no-sync",
            ],
            cwd=self.dir,
            timeout=timeout,
            what="pg_basebackup",
        )
        auto_conf = (self.standby_data / "postgresql.auto.conf").read_text()
        if f"application_name={STANDBY_NAME}" not in auto_conf:
            raise DeployInfraError(
                f"pg_basebackup -R wrote no application_name={STANDBY_NAME} into "
                f"primary_conninfo:\n{auto_conf}"
            )
        t = self._timed("basebackup", t)
        self._append(
            self.standby_data / "postgresql.conf", self._conf_lines(self.standby_port, standby=True)
        )
        self._pg_ctl(
            "-D",
            str(self.standby_data),
            "-l",
            str(self.standby_log),
            "-w",
            "-t",
            str(int(timeout)),
            "start",
            timeout=timeout,
            what="starting the standby",
        )
        t = self._timed("start_standby", t)
        self._wait(
            "the standby streaming, synchronous",
            lambda: self.replication_state() == "streaming,sync",
            timeout,
            self.standby_log,
        )
        self._timed("sync_streaming", t)
        self.setup_seconds = round(time.perf_counter() - began, 3)
        return self

    def replication_state(self) -> str:
        """'state,sync_state' of the standby in the primary's pg_stat_replication."""
        return self.psql(
            self.primary_port,
            "SELECT state || ',' || sync_state FROM pg_stat_replication "
            f"WHERE application_name = '{STANDBY_NAME}'",
        )

    def crash_primary(self) -> None:
        """Immediate shutdown of the primary (``pg_ctl stop -m immediate``): no
        checkpoint, sessions cut, as in a crash."""
        self._pg_ctl(
            "-D",
            str(self.primary_data),
            "-m",
            "immediate",
            "-w",
            "stop",
            what="crashing the primary",
        )
        self.primary_crashed = True

    def promote_standby(self, *, timeout: float = 60.0) -> None:
        """``pg_ctl promote``, then wait until the standby accepts writes
        (``pg_is_in_recovery()`` false)."""
        self._pg_ctl(
            "-D",
            str(self.standby_data),
            "-w",
            "-t",
            str(int(timeout)),
            "promote",
            timeout=timeout,
            what="promoting the standby",
        )
        self._wait(
            "the promoted standby accepting writes",
            lambda: self.psql(self.standby_port, "SELECT pg_is_in_recovery()") == "f",
            timeout,
            self.standby_log,
        )
        self.promoted = True

    def failover(self) -> None:
        """Crash the primary and promote the standby."""
        self.crash_primary()
        self.promote_standby()

    async def crash_primary_async(self) -> None:
        """:meth:`crash_primary` off the event loop."""
        await asyncio.to_thread(self.crash_primary)

    async def promote_standby_async(self, *, timeout: float = 60.0) -> None:
        """:meth:`promote_standby` off the event loop."""
        await asyncio.to_thread(lambda: self.promote_standby(timeout=timeout))

    def stop(self) -> None:
        """Stop both servers (immediate: nothing in them is kept) and remove the
        directory (unless ``TIDEBASE_KEEP_DEPLOY_DIRS``). Idempotent."""
        if self.dir is None:
            return
        for data in (self.standby_data, self.primary_data):
            if (data / "postmaster.pid").exists():
                with contextlib.suppress(DeployInfraError):
                    self._pg_ctl(
                        "-D", str(data), "-m", "immediate", "-w", "stop", what=f"stopping {data}"
                    )
        _remove_dir(self.dir)
        self.dir = None


@pytest.fixture
def replica_pair() -> Iterator[ReplicaPair]:
    """A fresh primary + synchronous standby for this test (they are consumed by a
    failover); both are stopped and removed afterwards."""
    try:
        pair = ReplicaPair().__enter__()
    except (DeployInfraError, OSError, subprocess.SubprocessError) as exc:
        pytest.fail(f"cannot start a primary with a streaming standby: {exc}", pytrace=False)
    try:
        yield pair
    finally:
        pair.stop()
