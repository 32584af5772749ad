"""The data directory, its ``fcntl`` lock and ``handles.json``."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

from tidebase_async import errors
from tidebase_async.embedded.constants import DSN_HINT, logger
from tidebase_async.embedded.permissions import chown, ensure_traversable
from tidebase_async.embedded.processes import pid_alive, proc_stat
from tidebase_async.embedded.state import Handle, State

_SHELL_UNSAFE = set('"$`\\\n')  # pg_ctl pastes paths into a double-quoted /bin/sh command


class DataDir(State):
    """The data directory, lock and handles of an :class:`EmbeddedPostgres`."""

    # -- data directory, lock, handles ---------------------------------------------

    def _holds_handle(self) -> bool:
        # A forked child inherits the object but not the parent's handle.
        return self._handle is not None and self._handle.pid == os.getpid()

    def _check_path(self) -> None:
        if _SHELL_UNSAFE & set(str(self._data_dir)):
            raise errors.EmbeddedPostgresError(
                f"the embedded Postgres data directory {self._data_dir} contains a character "
                'that pg_ctl cannot quote (one of " $ ` \\ or a newline); choose another '
                f"data_dir, {DSN_HINT}"
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
                chown(self._data_dir, self._user)
            ensure_traversable(self._data_dir, self._user, owned=self._data_dir)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.close(fd)
        if self._user is not None:
            chown(self._lock_path, self._user)

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
                            f"{self._log_path} and that process, {DSN_HINT}"
                        ) from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.05)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _read_handles(self) -> list[Handle]:
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
                    Handle(
                        pid=item["pid"],
                        started=started if isinstance(started, int) else None,
                        handle=str(item.get("handle", "")),
                    )
                )
        return handles

    def _write_handles(self, handles: list[Handle]) -> None:
        tmp = self._handles_path.with_name(f"handles.json.{os.getpid()}.tmp")
        rows = [{"pid": h.pid, "started": h.started, "handle": h.handle} for h in handles]
        tmp.write_text(json.dumps(rows) + "\n")
        if self._user is not None:
            chown(tmp, self._user)
        # No fsync: after a machine crash every listed process is dead anyway.
        os.replace(tmp, self._handles_path)

    def _register_handle(self) -> None:
        live = [h for h in self._read_handles() if pid_alive(h.pid, h.started)]
        pid = os.getpid()
        mine = Handle(pid=pid, started=proc_stat(pid)[1], handle=uuid.uuid4().hex)
        self._write_handles([*live, mine])
        self._handle = mine
