"""The short chaos run of the test suite: worker processes SIGKILLed and replaced, and
every connection cut at once, mid-load (``harness`` says what is checked; ``make chaos``
runs the long version with server restarts)."""

from __future__ import annotations

from pathlib import Path

from tests.chaos import harness
from tests.integration import procs
from tidebase_async.store import Store, _is_closed

LOCK_KEY = 4_242_000_001


async def test_runs_survive_workers_killed_mid_load(dsn: str, tmp_path: Path) -> None:
    report = await harness.kill_chaos(dsn, tmp_path, kills=4)
    print("\n" + report.summary())
    assert report.kills == 4


async def test_runs_survive_every_connection_cut_at_once_without_duplicates(
    dsn: str, tmp_path: Path
) -> None:
    report = await harness.cut_chaos(dsn, tmp_path, runs=200, cuts=2)
    print("\n" + report.summary())
    assert report.cuts == 2
    assert report.verdict.duplicates == 0


# -- regressions found by the chaos runs -----------------------------------------------


async def test_advisory_lock_exits_cleanly_after_its_session_was_terminated(dsn: str) -> None:
    """The maintenance loop's lock session cut under it: leaving the lock used to call
    ``is_closed()`` on asyncpg's detached pool proxy, which raises, so every cut was
    logged as "cannot call Connection.is_closed()" instead of what happened."""
    store = await Store.connect(dsn)
    try:
        async with store.try_advisory_lock(LOCK_KEY) as lock:
            assert lock.held
            pid = lock._conn.get_server_pid()
            async with store.connection() as other:
                # Exactly the lock's session (other tests' sessions on this server may
                # hold advisory locks too).
                assert await other.fetchval(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND granted AND pid = $1",
                    pid,
                )

            async def noticed() -> bool:
                return _is_closed(lock._conn)

            await procs.eventually(noticed, timeout=5, what="asyncpg to notice the cut")
        async with store.try_advisory_lock(LOCK_KEY) as again:
            assert again.held
    finally:
        await store.close()
