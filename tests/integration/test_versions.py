"""Workflow versions side by side: registration, the version a run records at enqueue,
claims limited to the versions a worker has, runs of a version no live worker has
staying queued and listed; and deploys simulated by restarting worker processes with
changed code (tests.integration.worker_app ``--code``)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from tests.integration import procs
from tests.integration.core_support import count_rows, eventually, status_of, working
from tidebase_async import ConfigurationError, Run, RunSpec, Tidebase


def register_two(tide: Tidebase) -> None:
    @tide.workflow("greet", version="1")
    async def greet_v1(run: Run, input: Any) -> str:
        return "v1"

    @tide.workflow("greet", version="2", queue="q2")
    async def greet_v2(run: Run, input: Any) -> str:
        return "v2"


async def version_of(db: asyncpg.Connection, run_id: Any) -> str | None:
    value: str | None = await db.fetchval("SELECT version FROM tidebase.runs WHERE id = $1", run_id)
    return value


async def test_versions_register_side_by_side_and_enqueue_picks_the_newest(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    register_two(tide)
    assert tide.workflows["greet"].version == "2"
    assert list(tide.workflow_versions("greet")) == ["1", "2"]
    newest = await tide.enqueue("greet")
    older = await tide.enqueue("greet", version="1")
    assert await version_of(db, newest.id) == "2"
    assert await version_of(db, older.id) == "1"
    # Each version's own options: version 2 goes to its queue.
    queues = await db.fetch("SELECT version, queue FROM tidebase.runs ORDER BY version")
    assert [(r["version"], r["queue"]) for r in queues] == [("1", "default"), ("2", "q2")]
    (many,) = await tide.enqueue_many([RunSpec(workflow="greet", version="1")])
    assert await version_of(db, many.id) == "1"


async def test_an_unknown_version_is_refused_naming_the_known_ones_and_nothing_is_written(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    register_two(tide)
    before = await count_rows(db)
    with pytest.raises(ConfigurationError, match=r"no version '3'.*'1', '2'"):
        await tide.enqueue("greet", version="3")
    with pytest.raises(ConfigurationError, match="version name"):
        await tide.enqueue("greet", version="a\x1fb")
    with pytest.raises(ConfigurationError, match="no version '9'"):
        await tide.enqueue_many([RunSpec(workflow="greet"), RunSpec(workflow="greet", version="9")])
    assert await count_rows(db) == before


async def test_a_version_registered_twice_is_refused(tide: Tidebase) -> None:
    register_two(tide)
    with pytest.raises(ConfigurationError, match="version '1' is registered twice"):

        @tide.workflow("greet", version="1")
        async def again(run: Run) -> None: ...


async def test_a_process_that_does_not_register_the_workflow_accepts_any_version(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    handle = await tide.enqueue("elsewhere", version="7")
    assert await version_of(db, handle.id) == "7"
    plain = await tide.enqueue("elsewhere")
    assert await version_of(db, plain.id) is None


async def test_a_worker_claims_only_its_versions_and_other_runs_stay_queued_and_listed(
    dsn: str, db: asyncpg.Connection
) -> None:
    new, old = Tidebase(dsn), Tidebase(dsn)

    @new.workflow("greet", version="2")
    async def greet_v2(run: Run, input: Any) -> str:
        return "v2"

    @old.workflow("greet", version="1")
    async def greet_v1(run: Run, input: Any) -> str:
        return "v1"

    async with new, old:
        with pytest.raises(ConfigurationError):
            await new.enqueue("greet", version="1")  # registered elsewhere only: refused
        v1 = await old.enqueue("greet")
        v2 = await new.enqueue("greet")
        async with working(new, poll_interval=0.05):
            assert await new.runs.wait(v2.id, timeout=10) == "v2"
            await anyio.sleep(0.3)  # several claims and idle polls
            assert await status_of(db, v1.id) == "queued"
            attempts = await db.fetchval("SELECT attempt FROM tidebase.runs WHERE id = $1", v1.id)
            assert attempts == 0
            (queue,) = [q for q in await new.queues.list() if q.name == "default"]
            (listed,) = queue.versions
            assert (listed.workflow, listed.version, listed.queued) == ("greet", "1", 1)
            assert listed.workers == 0  # the live worker has version 2 only
            metrics = await new.metrics_text()
            assert (
                'tidebase_version_live_workers{queue="default",workflow="greet",version="1"} 0'
                in metrics
            )
            assert (
                'tidebase_version_queued_runs{queue="default",workflow="greet",version="1"} 1'
                in metrics
            )
        # A worker that has version 1 starts: it takes the run, with version 1's code.
        async with working(old):
            assert await old.runs.wait(v1.id, timeout=10) == "v1"
        assert all(not q.versions for q in await new.queues.list())


async def test_unversioned_runs_are_claimed_as_before_by_the_unversioned_or_newest_code(
    dsn: str, db: asyncpg.Connection
) -> None:
    """Runs enqueued before a workflow had versions (version NULL) are claimed by any
    worker and executed by its unversioned registration, else its newest version."""
    plain, versioned = Tidebase(dsn), Tidebase(dsn)

    @plain.workflow("greet")
    async def greet_plain(run: Run) -> str:
        return "plain"

    register_two(versioned)
    async with plain, versioned:
        handle = await plain.enqueue("greet")
        assert await version_of(db, handle.id) is None
        async with working(versioned):
            assert await versioned.runs.wait(handle.id, timeout=10) == "v2"

        @versioned.workflow("greet")
        async def greet_unversioned(run: Run) -> str:
            return "unversioned"

        assert versioned.workflows["greet"].version is None  # registered last: the newest
        other = await plain.enqueue("greet")
        async with working(versioned):
            assert await versioned.runs.wait(other.id, timeout=10) == "unversioned"


async def test_children_record_the_newest_version_registered_in_the_parents_worker(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    register_two(tide)

    @tide.workflow("parent")
    async def parent(run: Run) -> str:
        return str(await run.child("greet", queue="default"))

    handle = await tide.enqueue("parent")
    async with working(tide):
        assert await tide.runs.wait(handle.id, timeout=10) == "v2"
    child = await db.fetchval("SELECT version FROM tidebase.runs WHERE parent_id = $1", handle.id)
    assert child == "2"


async def test_two_worker_processes_each_claim_only_the_runs_of_their_version(
    tide: Tidebase, db: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    await procs.create_step_log(db)
    async with procs.Workers(dsn, tmp_path) as workers:
        one = await workers.start(name="v1", code="v1", poll_interval=0.2)
        two = await workers.start(name="v2", code="v2", poll_interval=0.2)
        # This process does not register "versioned": versions are taken as given.
        handles = [
            (version, (await tide.enqueue("versioned", version=version)).id)
            for version in ("1", "2") * 6
        ]
        stray = await tide.enqueue("versioned", version="3")
        for version, rid in handles:
            await procs.wait_status(db, rid, "completed", timeout=15)
            pid = one.pid if version == "1" else two.pid
            assert await procs.run_output(db, rid) == {"version": version, "pid": pid}

        # Version 3: no worker has it. It stays queued, unclaimed, and is listed so.
        await anyio.sleep(0.5)
        assert await status_of(db, stray.id) == "queued"
        listed = [v for q in await tide.queues.list() for v in q.versions]
        assert [(v.version, v.queued, v.workers) for v in listed] == [("3", 1, 0)]
        live = await db.fetch("SELECT key, worker_id FROM tidebase.worker_versions ORDER BY key")
        assert [r["key"] for r in live] == ["versioned\x1f1", "versioned\x1f2"]
        for proc in (one, two):
            proc.send(signal.SIGTERM)
            assert await proc.wait_exit(15) == 0
    # Stopped workers withdraw their versions.
    assert await db.fetchval("SELECT count(*) FROM tidebase.worker_versions") == 0


async def test_a_deploy_with_a_patch_resumes_old_runs_on_their_path(
    tide: Tidebase, db: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    """A run started on the v1 code, its worker stopped, a worker with the patched code
    resumes it: it keeps the old path (patched() is False for it) and no completed
    step runs again; a run started after the deploy takes the new path."""
    await procs.create_step_log(db)
    async with procs.Workers(dsn, tmp_path) as workers:
        old = await workers.start(name="old", code="v1", maintenance_interval=0.1)
        before = await tide.enqueue("deploy", input=1.5)
        await eventually(lambda: status_is(db, before.id, "waiting"), what="the v1 run to sleep")
        old.send(signal.SIGTERM)
        assert await old.wait_exit(15) == 0

        new = await workers.start(name="new", code="v2", maintenance_interval=0.1)
        after = await tide.enqueue("deploy", input=0.0)
        await procs.wait_status(db, before.id, "completed", timeout=15)
        await procs.wait_status(db, after.id, "completed", timeout=15)

    assert await procs.run_output(db, before.id) == {"path": ["a", "b", "c"], "pid": new.pid}
    assert await procs.step_log(db, before.id) == [("a", old.pid), ("b", old.pid), ("c", new.pid)]
    assert await procs.run_output(db, after.id) == {"path": ["a", "b2", "c"], "pid": new.pid}
    kinds = await db.fetch(
        "SELECT kind, name FROM tidebase.steps WHERE run_id = $1 ORDER BY position", after.id
    )
    assert [(r["kind"], r["name"]) for r in kinds] == [
        ("step", "a"),
        ("patch", "new-b"),
        ("step", "b2"),
        ("sleep", "nap"),
        ("step", "c"),
    ]


async def status_is(db: asyncpg.Connection, run_id: Any, status: str) -> bool:
    return await status_of(db, run_id) == status
