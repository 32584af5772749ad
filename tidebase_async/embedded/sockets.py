"""The unix socket: its directory, stale socket locks, readiness and the DSN."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from urllib.parse import quote

from tidebase_async.embedded.constants import PORT, logger
from tidebase_async.embedded.processes import Postmaster, pid_exists, runs_in

# sun_path is 108 bytes on Linux and 104 on macOS, including the terminating NUL.
_SOCKET_PATH_MAX = 107 if sys.platform.startswith("linux") else 103


def clear_stale_socket_lock(socket_dir: Path, pgdata: Path) -> None:
    """Remove a socket lock file whose pid exists but is not our postmaster.

    Postgres treats any existing pid in it as a live postmaster, including a zombie or
    an unrelated process that got the pid, and would refuse to start.
    """
    lock = socket_dir / f".s.PGSQL.{PORT}.lock"
    try:
        pid = int(lock.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return
    if pid_exists(pid) and not runs_in(pid, pgdata):
        logger.warning("removing stale %s (pid %d)", lock, pid)
        (socket_dir / f".s.PGSQL.{PORT}").unlink(missing_ok=True)
        lock.unlink(missing_ok=True)


def socket_dir_ok(path: Path) -> bool:
    text = str(path)
    if "," in text or text != text.strip():  # unix_socket_directories is a comma list
        return False
    return len(os.fsencode(os.path.join(text, f".s.PGSQL.{PORT}"))) <= _SOCKET_PATH_MAX


def socket_accepts(pm: Postmaster) -> bool:
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


def _dsn(pm: Postmaster) -> str:
    return f"postgresql://postgres@/postgres?host={quote(pm.socket_dir, safe='/')}&port={pm.port}"
