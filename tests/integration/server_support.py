"""Watching an embedded Postgres server's postmaster from tests: is it alive, which pid
its data directory records, and crashing it (immediate shutdown)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # the postmaster is not our child; an init that does not reap leaves a zombie
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def recorded_pid(data_dir: Path) -> int | None:
    """The postmaster pid in ``data_dir/pgdata/postmaster.pid``, if any."""
    try:
        return int((data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def wait_dead(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def crash(data_dir: Path, *, timeout_s: float = 20.0) -> int:
    """Immediate shutdown (SIGQUIT to the postmaster): WAL not yet flushed is lost, as
    in a server crash. Returns the pid once it is gone."""
    pid = recorded_pid(data_dir)
    assert pid is not None, f"no postmaster recorded in {data_dir}"
    os.kill(pid, signal.SIGQUIT)
    assert wait_dead(pid, timeout_s), "the postmaster did not exit"
    return pid
