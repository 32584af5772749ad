"""Processes and the postmaster: pids, zombies, pid reuse, ``postmaster.pid``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Postmaster:
    """What ``pgdata/postmaster.pid`` says about a server."""

    pid: int
    start_time: int
    port: int
    socket_dir: str
    status: str


# -- processes and the postmaster ----------------------------------------------------


def proc_stat(pid: int) -> tuple[str | None, int | None]:
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


def pid_exists(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def pid_alive(pid: int, started: int | None = None) -> bool:
    """True if ``pid`` runs and is not a zombie (nor, given ``started``, a reused pid)."""
    if not pid_exists(pid):
        return False
    state, ticks = proc_stat(pid)
    if state in ("Z", "X"):
        return False
    return started is None or ticks is None or ticks == started


def is_postmaster_of(pm: Postmaster, pgdata: Path) -> bool:
    """True if the pid in postmaster.pid is alive and is a postmaster of ``pgdata``."""
    return runs_in(abs(pm.pid), pgdata)  # negative pid: a single-user backend


def runs_in(pid: int, pgdata: Path) -> bool:
    """True if ``pid`` is alive and works in ``pgdata`` (a postmaster chdirs there).

    A stale pid (reused by another process, or a zombie left unreaped by an init that
    does not reap) fails this check. When it cannot be told, assume it does.
    """
    if not pid_alive(pid):
        return False
    try:
        cwd = os.stat(f"/proc/{pid}/cwd")
        here = pgdata.stat()
    except PermissionError:
        return True
    except FileNotFoundError:
        return pid_alive(pid)  # no /proc (macOS), or it just exited
    return (cwd.st_dev, cwd.st_ino) == (here.st_dev, here.st_ino)


def read_postmaster(pgdata: Path) -> Postmaster | None:
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None
    try:
        return Postmaster(
            pid=int(lines[0]),
            start_time=int(lines[2]),
            port=int(lines[3]),
            socket_dir=lines[4].strip() if len(lines) > 4 else "",
            status=lines[7].strip() if len(lines) > 7 else "",
        )
    except (IndexError, ValueError):
        return None  # being written
