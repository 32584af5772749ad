"""Error messages that say what to do: disk full, permissions, the log's tail."""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
from pathlib import Path

from tidebase_async import errors
from tidebase_async.embedded.constants import DSN_HINT
from tidebase_async.embedded.state import State


class Diagnostics(State):
    """Builds the errors of an :class:`EmbeddedPostgres`."""

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
        message = f"embedded Postgres in {self._data_dir}: {what}. {advice}, {DSN_HINT}."
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
                f"{where}. Free some disk space or choose a data_dir on another disk, {DSN_HINT}."
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
                f"another data_dir (EmbeddedPostgres(data_dir=...)), {DSN_HINT}."
            )
        return errors.EmbeddedPostgresError(
            f"cannot {action} the embedded Postgres in {self._data_dir}: {exc}. Fix the cause "
            f"and retry, {DSN_HINT}."
        )


def _tail(path: Path, offset: int | None = None, max_bytes: int = 4000) -> str:
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(offset or 0, size - max_bytes)
            f.seek(start)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def log_has_fatal(path: Path, offset: int) -> bool:
    text = _tail(path, offset, max_bytes=64_000)
    return "FATAL:" in text or "PANIC:" in text
