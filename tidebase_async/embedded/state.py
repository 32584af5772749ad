"""The state of an :class:`EmbeddedPostgres` that its parts share."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from tidebase_async.embedded.permissions import User


@dataclass(frozen=True)
class Handle:
    pid: int
    started: int | None  # process start time in clock ticks (Linux), guards against pid reuse
    handle: str


class State:
    """Attributes of an :class:`EmbeddedPostgres`, set in its ``__init__``."""

    _data_dir: Path
    _pgdata: Path
    _log_path: Path
    _handles_path: Path
    _lock_path: Path
    _startup_timeout_s: float
    _mutex: threading.Lock
    _handle: Handle | None
    _dsn: str | None
    _user: User | None
    _bin_dir: Path | None
