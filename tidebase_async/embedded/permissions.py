"""The unprivileged server user when running as root; chown and traverse bits."""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tidebase_async import errors
from tidebase_async.embedded.constants import DSN_HINT, logger

_FALLBACK_USER = "tidebase"


@dataclass(frozen=True)
class User:
    """The OS user that owns and runs the cluster when we are root."""

    name: str
    uid: int
    gid: int


# -- users and permissions -----------------------------------------------------------


def server_user(pgdata: Path) -> User | None:
    """The unprivileged user to run Postgres as, or None when we are not root."""
    if os.geteuid() != 0:
        return None
    with contextlib.suppress(OSError):  # missing, or unusable (reported when creating it)
        uid = pgdata.stat().st_uid
        if uid != 0:
            try:
                entry = pwd.getpwuid(uid)
            except KeyError:
                return User(name=str(uid), uid=uid, gid=pgdata.stat().st_gid)
            return User(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid)
    for name in ("postgres", _FALLBACK_USER):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return User(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid)
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
            f"{_FALLBACK_USER!r} or 'postgres', run as a normal user, {DSN_HINT}."
        ) from None
    return User(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid)


def chown(path: Path, user: User) -> None:
    st = path.lstat()
    if (st.st_uid, st.st_gid) != (user.uid, user.gid):
        os.lchown(path, user.uid, user.gid)


def _permission_shift(st: os.stat_result, user: User) -> int:
    # POSIX checks exactly one class: owner, else group, else other. The server runs
    # with its primary group only (extra_groups=[]).
    if st.st_uid == user.uid:
        return 6
    if st.st_gid == user.gid:
        return 3
    return 0


def grant(path: Path, user: User, want: int, st: os.stat_result | None = None) -> None:
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


#: Set to 1 to let the embedded launcher (running as root) add search permission to
#: directories above its own that the server user cannot enter.
CHMOD_ENV = "TIDEBASE_EMBEDDED_CHMOD"


def ensure_traversable(path: Path, user: User, *, owned: Path) -> None:
    """Let ``user`` enter ``path``: search (x) is added where missing on ``owned`` and
    the directories inside it, which the launcher made. A directory above ``owned``
    (a home directory, say) is changed only when ``TIDEBASE_EMBEDDED_CHMOD=1`` allows it.

    Raises:
        EmbeddedPostgresError: such a directory lacks it and changing it is not allowed;
            names the directory, the user and the ways out.
    """
    owned = owned.resolve()
    for directory in [path, *path.parents]:
        inside = directory.resolve() == owned or owned in directory.resolve().parents
        if inside or _may_enter(directory, user):
            grant(directory, user, 1)
            continue
        if os.environ.get(CHMOD_ENV) == "1":
            grant(directory, user, 1)
            continue
        mode = stat.S_IMODE(directory.stat().st_mode)
        raise errors.EmbeddedPostgresError(
            f"the embedded Postgres runs as user {user.name!r}, which cannot enter "
            f"{directory} (mode {mode:o}), above {owned}. Choose a data directory it can "
            f"reach (Tidebase(embedded_dir=...)), set {CHMOD_ENV}=1 to let tidebase add "
            f"search permission to {directory}, {DSN_HINT}."
        )


def _may_enter(directory: Path, user: User) -> bool:
    st = directory.stat()
    return bool((st.st_mode >> _permission_shift(st, user)) & 1)
