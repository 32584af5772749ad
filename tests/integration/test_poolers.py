"""Through a transaction-mode pooler: the real PgBouncer of tests/deploy_support.py
(``pgbouncer``, ``pooled_dsn``), never a mock.

Detection (the pid of the login is PgBouncer's, not the backend's), migrations of a fresh
database by two clients at once, enqueues from many tasks (asyncpg's statement cache
broke those), workers woken by NOTIFY on a direct ``listen_dsn`` or polling without one
(saying so once), gates, schedules fired by a reconciler elected by a lease row (one
leader at a time, handed over on stop and after a crashed leader's lease expired),
``runs.wait``/``runs.events``, the HTTP API, and the clear errors of bad setups.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import asyncpg
import pytest

from tests.deploy_support import (
    PgBouncer,
    database_of,
    pgbouncer,
    pooled_dsn,
    running_pgbouncer,
    upstream_of,
    with_database,
)
from tests.integration import procs
from tests.integration.core_support import eventually, working
from tests.integration.web_support import serve
from tidebase_async import ConfigurationError, Run, RunSpec, Tidebase, Worker
from tidebase_async.store import Store, probe_pooler
from tidebase_async.store.sql import migrations

__all__ = ["pgbouncer", "pooled_dsn"]  # fixtures, used by name

CLIENT_LOGGER = "tidebase_async.client.tidebase"
#: Advisory locks held in the current database (pg_locks shows every database's).
ADVISORY_LOCKS_HERE = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


def _polling_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == CLIENT_LOGGER and r.levelno == logging.WARNING and "listen_dsn" in r.message
    ]


async def _lease(db: asyncpg.Connection) -> str | None:
    holder: str | None = await db.fetchval(
        "SELECT holder FROM tidebase.leases WHERE name = 'maintenance'"
    )
    return holder


async def _lease_is(db: asyncpg.Connection, holder: str) -> bool:
    return await _lease(db) == holder


@pytest.fixture
async def fresh_db(server_dsn: str) -> AsyncIterator[str]:
    """An empty database (never migrated); its name."""
    name = f"t_fresh_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


# -- detection ----------------------------------------------------------------------------


async def test_pgbouncer_is_detected_and_a_direct_server_is_not(pooled_dsn: str, dsn: str) -> None:
    assert await probe_pooler(pooled_dsn) is True
    assert await probe_pooler(dsn) is False
    async with Tidebase(pooled_dsn) as pooled, Tidebase(dsn) as direct:
        assert pooled.store.pooled and pooled.listener is None
        assert not direct.store.pooled and direct.listener is not None


async def test_a_direct_server_on_a_unix_socket_is_not_detected_as_pooled(dsn: str) -> None:
    port = urlsplit(dsn).port or 5432
    socket_dir = "/var/run/postgresql"
    if not await anyio.Path(f"{socket_dir}/.s.PGSQL.{port}").exists():
        pytest.skip(f"the test server has no unix socket in {socket_dir}")
    user = upstream_of(dsn).user
    socket_dsn = f"postgresql://{user}@/{database_of(dsn)}?host={socket_dir}&port={port}"
    assert await probe_pooler(socket_dsn) is False


async def test_tidebase_pooled_env_forces_pooled_mode_on_a_direct_server(
    dsn: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TIDEBASE_POOLED", "1")
    async with Tidebase(dsn) as tide:
        assert tide.store.pooled and tide.listener is None
    assert len(_polling_warnings(caplog)) == 1
    monkeypatch.setenv("TIDEBASE_POOLED", "maybe")
    with pytest.raises(ConfigurationError, match="TIDEBASE_POOLED"):
        Tidebase(dsn)


async def test_tidebase_listen_url_env_gives_a_pooled_client_its_listener(
    pooled_dsn: str, dsn: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TIDEBASE_LISTEN_URL", dsn)
    async with Tidebase(pooled_dsn) as tide:
        assert tide.store.pooled
        assert tide.listener is not None
        await eventually(lambda: tide.listener is not None and tide.listener.connected)
    assert _polling_warnings(caplog) == []


# -- migrations and enqueues ----------------------------------------------------------------


async def test_two_clients_migrate_a_fresh_database_through_pgbouncer_at_once(
    pgbouncer: PgBouncer, fresh_db: str, dsn: str, server_dsn: str
) -> None:
    through = pgbouncer.dsn(fresh_db, user=upstream_of(dsn).user)
    a, b = Tidebase(through, pool_size=4), Tidebase(through, pool_size=4)
    await asyncio.gather(a.open(), b.open())
    try:
        assert a.store.pooled and b.store.pooled
        assert await a.migrate() == await b.migrate() == len(migrations())
        handles = await asyncio.gather(a.enqueue("x"), b.enqueue("x"))
        assert len({h.id for h in handles}) == 2
    finally:
        await asyncio.gather(a.close(), b.close())
    direct = await asyncpg.connect(with_database(server_dsn, fresh_db))
    try:
        versions = await direct.fetch(
            "SELECT version FROM tidebase.schema_migrations ORDER BY version"
        )
        assert [v["version"] for v in versions] == list(range(1, len(migrations()) + 1))
        # No session advisory lock (nor any other) was left on a pooled backend.
        assert await direct.fetchval(ADVISORY_LOCKS_HERE) == 0
    finally:
        await direct.close()


async def test_enqueue_and_enqueue_many_from_many_tasks_through_pgbouncer(
    pooled_dsn: str, db: asyncpg.Connection
) -> None:
    async with Tidebase(pooled_dsn, pool_size=8) as tide:
        one = await tide.enqueue("x", input={"n": 0}, dedupe_key="only")
        again = await tide.enqueue("x", input={"n": 1}, dedupe_key="only")
        assert (again.id, again.deduplicated) == (one.id, True)

        async def batch(task: int) -> list[Any]:
            handles: list[Any] = []
            for round_ in range(5):
                handles += await tide.enqueue_many(
                    [
                        RunSpec(workflow="x", input={"t": task, "r": round_, "i": i})
                        for i in range(20)
                    ]
                    + [RunSpec(workflow="x", input=None, dedupe_key=f"shared-{round_}")]
                )
            return handles

        results = await asyncio.gather(*(batch(t) for t in range(8)))
    fresh = {h.id for handles in results for h in handles if not h.deduplicated}
    assert len(fresh) == 8 * 5 * 20 + 5  # every batch's runs, and one run per shared key
    assert await db.fetchval("SELECT count(*) FROM tidebase.runs") == 8 * 5 * 20 + 5 + 1


# -- workers, waits, events ---------------------------------------------------------------


async def test_a_worker_through_pgbouncer_is_woken_by_notify_on_listen_dsn(
    pooled_dsn: str, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with Tidebase(pooled_dsn, listen_dsn=dsn) as tide:
        assert tide.store.pooled and tide.listener is not None

        @tide.workflow("hello")
        async def hello(run: Run, name: str) -> str:
            greeting = await run.step("greet", lambda: f"hello {name}")
            return str(greeting)

        async with working(tide, poll_interval=30.0):
            await eventually(lambda: tide.listener is not None and tide.listener.connected)
            began = time.monotonic()
            handle = await tide.enqueue("hello", input="pool")
            # Far sooner than the 30 s poll: NOTIFY (sent through the pooler) woke it.
            assert await tide.runs.wait(handle.id, timeout=5, poll=30) == "hello pool"
            assert time.monotonic() - began < 3
            types = [e.type async for e in tide.runs.events(handle.id, poll=30)]
    assert types[0] == "run.created" and types[-1] == "run.completed", types
    assert _polling_warnings(caplog) == []


async def test_a_worker_through_pgbouncer_without_listen_dsn_polls_and_warns_once(
    pooled_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with Tidebase(pooled_dsn) as tide:
        assert tide.listener is None

        @tide.workflow("hello")
        async def hello(run: Run, name: str) -> str:
            await run.sleep("nap", 0.2)
            return f"hello {name}"

        async with working(tide, poll_interval=0.2, maintenance_interval=0.05):
            handles = [await tide.enqueue("hello", input=str(i)) for i in range(3)]
            for i, h in enumerate(handles):
                assert await tide.runs.wait(h.id, timeout=10, poll=0.1) == f"hello {i}"
            types = [e.type async for e in tide.runs.events(handles[0].id, poll=0.1)]
            assert types[-1] == "run.completed"
            with pytest.raises(ConfigurationError, match="listen_dsn"):
                async for _ in tide.runs.stream(handles[0].id):
                    pass
    warnings = _polling_warnings(caplog)
    assert len(warnings) == 1, [w.message for w in warnings]
    assert "poll_interval" in warnings[0].message
    assert "TIDEBASE_LISTEN_URL" in warnings[0].message


async def test_a_gate_is_resolved_through_pgbouncer(pooled_dsn: str) -> None:
    async with Tidebase(pooled_dsn) as tide:

        @tide.workflow("ask")
        async def ask(run: Run, n: int) -> str:
            decision = await run.gate("ok", prompt="go?")
            return f"{n}:{decision.decision}:{decision.actor}"

        async with working(tide, poll_interval=0.2):
            handle = await tide.enqueue("ask", input=7)

            async def waiting() -> bool:
                return await tide.runs.status(handle.id) == "waiting"

            await eventually(waiting, what="the run to wait at its gate")
            assert [g.name for g in await tide.gates.list()] == ["ok"]
            info = await tide.gates.resolve(handle.id, "ok", approved=True, actor="alice")
            assert info.status == "approved"
            assert await tide.runs.wait(handle.id, timeout=10, poll=0.1) == "7:approved:alice"


async def test_the_http_api_works_through_pgbouncer(pooled_dsn: str, dsn: str) -> None:
    async with Tidebase(pooled_dsn, listen_dsn=dsn) as tide:

        @tide.workflow("ask")
        async def ask(run: Run, n: int) -> str:
            decision = await run.gate("ok")
            return f"{n}:{decision.decision}"

        async with working(tide, poll_interval=0.5), serve(tide, "aiohttp") as client:
            r = await client.post("/tidebase/runs", json={"workflow": "ask", "input": 3})
            assert r.status_code == 201, r.text
            rid = r.json()["id"]

            async def waiting() -> bool:
                got = await client.get(f"/tidebase/runs/{rid}")
                return bool(got.json()["status"] == "waiting")

            await eventually(waiting, what="the run to wait at its gate")
            r = await client.post(f"/tidebase/runs/{rid}/gates/ok/resolve", json={"approved": True})
            assert r.status_code == 200, r.text
            events = await client.get(f"/tidebase/runs/{rid}/events", timeout=10)
            assert events.status_code == 200
            assert "run.completed" in events.text
            info = (await client.get(f"/tidebase/runs/{rid}")).json()
            assert (info["status"], info["output"]) == ("completed", "3:approved")
            assert (await client.get("/tidebase/health")).status_code == 200


async def test_live_output_through_pgbouncer_without_listen_dsn_is_503_with_the_fix(
    pooled_dsn: str,
) -> None:
    async with Tidebase(pooled_dsn) as tide, serve(tide, "starlette") as client:
        handle = await tide.enqueue("x")
        r = await client.get(f"/tidebase/runs/{handle.id}/stream")
        assert r.status_code == 503, r.text
        assert "listen_dsn" in r.json()["error"]["message"]
        # Reads need no LISTEN.
        assert (await client.get(f"/tidebase/runs/{handle.id}")).json()["status"] == "queued"


async def test_the_live_run_list_through_pgbouncer_without_listen_dsn_refreshes_by_polling(
    pooled_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tidebase_async.web.api._REFRESH_WITHOUT_LISTEN_S", 1.0)
    async with Tidebase(pooled_dsn) as tide, serve(tide, "uvicorn") as client:
        began = time.monotonic()
        text = ""
        async with client.stream("GET", "/tidebase/events") as r:
            assert r.status_code == 200
            async for piece in r.aiter_text():
                text += piece
                if "event: runs" in text:
                    break
        assert "event: runs\ndata: []" in text
        assert time.monotonic() - began < 5


# -- leader election by lease ---------------------------------------------------------------


async def test_lease_is_held_by_one_holder_renewed_released_and_taken_once_expired(
    pooled_dsn: str,
) -> None:
    store = await Store.connect(pooled_dsn, max_size=2)
    try:
        assert store.pooled
        assert await store.take_lease("t", holder="a", expiry_s=0.3)
        assert not await store.take_lease("t", holder="b", expiry_s=0.3)
        assert await store.take_lease("t", holder="a", expiry_s=0.3)  # renewed
        await anyio.sleep(0.4)
        assert await store.take_lease("t", holder="b", expiry_s=30)  # a's expired
        assert not await store.take_lease("t", holder="a", expiry_s=30)
        await store.release_lease("t", holder="a")  # not a's: nothing happens
        assert not await store.take_lease("t", holder="a", expiry_s=30)
        await store.release_lease("t", holder="b")
        assert await store.take_lease("t", holder="a", expiry_s=30)
    finally:
        await store.close()


async def test_schedules_fire_through_pgbouncer_under_a_lease_elected_reconciler(
    pooled_dsn: str, db: asyncpg.Connection
) -> None:
    async with Tidebase(pooled_dsn) as tide:

        @tide.workflow("tick")
        async def tick(run: Run) -> str:
            return "tock"

        await tide.schedules.set("every-second", workflow="tick", every=1)
        async with working(tide, poll_interval=0.2, maintenance_interval=0.05) as worker:
            await eventually(
                lambda: db.fetchval(
                    "SELECT count(*) >= 2 FROM tidebase.runs "
                    "WHERE workflow = 'tick' AND status = 'completed'"
                ),
                timeout=8,
                what="two scheduled runs to complete",
            )
            assert await _lease(db) == worker.id
            assert worker.stats.scheduled >= 2
        # Released when the worker stopped.
        assert await _lease(db) is None
    assert await db.fetchval(ADVISORY_LOCKS_HERE) == 0


async def test_two_workers_through_pgbouncer_have_one_leader_and_hand_over_on_stop(
    pooled_dsn: str, db: asyncpg.Connection
) -> None:
    a, b = Tidebase(pooled_dsn, pool_size=4), Tidebase(pooled_dsn, pool_size=4)
    async with a, b:
        workers: dict[str, Worker] = {}
        scopes: dict[str, anyio.CancelScope] = {}

        async def work(name: str, tide: Tidebase) -> None:
            with anyio.CancelScope() as scope:
                scopes[name] = scope
                await tide.work(
                    handle_signals=False,
                    poll_interval=0.2,
                    maintenance_interval=0.05,
                    worker_ready=lambda w: workers.__setitem__(name, w),
                )

        async with anyio.create_task_group() as tg:
            tg.start_soon(work, "a", a)
            tg.start_soon(work, "b", b)
            await eventually(lambda: len(workers) == 2 and _lease(db), what="a leader")
            holder = await _lease(db)
            leader = next(n for n, w in workers.items() if w.id == holder)
            other = "b" if leader == "a" else "a"
            ticks = workers[leader].stats.maintenance_ticks
            await anyio.sleep(0.5)
            assert workers[leader].stats.maintenance_ticks > ticks
            assert workers[other].stats.maintenance_ticks == 0
            assert await _lease(db) == holder

            scopes[leader].cancel()  # a graceful stop releases the lease
            began = time.monotonic()
            await eventually(
                lambda: _lease_is(db, workers[other].id),
                timeout=5,
                what="the other worker to take over",
            )
            await eventually(
                lambda: workers[other].stats.maintenance_ticks > 0, what="the new leader to tick"
            )
            # Released, not expired: no waiting for the 2 s expiry.
            assert time.monotonic() - began < 1.5
            tg.cancel_scope.cancel()


async def test_a_crashed_leaders_lease_is_taken_over_once_it_expired(
    pooled_dsn: str, db: asyncpg.Connection
) -> None:
    # What a leader that crashed (or froze) leaves behind: its lease, until it expires.
    await db.execute(
        "INSERT INTO tidebase.leases (name, holder, acquired_at, expires_at) "
        "VALUES ('maintenance', 'crashed-worker', now(), now() + interval '1.5 s')"
    )
    async with (
        Tidebase(pooled_dsn) as tide,
        working(tide, poll_interval=0.2, maintenance_interval=0.05) as worker,
    ):
        await anyio.sleep(0.7)
        assert await _lease(db) == "crashed-worker"
        assert worker.stats.maintenance_ticks == 0
        await eventually(
            lambda: _lease_is(db, worker.id),
            timeout=5,
            what="the lease to be taken over",
        )
        await eventually(lambda: worker.stats.maintenance_ticks > 0, what="the new leader")


async def test_a_killed_leader_process_hands_over_once_its_lease_expired(
    pooled_dsn: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    async with procs.Workers(pooled_dsn, tmp_path) as workers:
        first, second = await asyncio.gather(
            workers.start(maintenance_interval=0.2), workers.start(maintenance_interval=0.2)
        )
        await eventually(lambda: _lease(db), timeout=10, what="a leader")
        holder = await _lease(db)
        assert holder is not None
        # Worker ids are host:pid:random.
        by_pid = {str(p.pid): p for p in (first, second)}
        leader = by_pid[holder.split(":")[-2]]
        survivor = second if leader is first else first
        leader.kill()  # SIGKILL: no release
        expired_at = await db.fetchval(
            "SELECT expires_at FROM tidebase.leases WHERE name = 'maintenance'"
        )

        async def survivor_leads() -> bool:
            now = await _lease(db)
            return now is not None and now.split(":")[-2] == str(survivor.pid)

        await eventually(survivor_leads, timeout=10, what="the survivor to take over")
        taken_at = await db.fetchval(
            "SELECT acquired_at FROM tidebase.leases WHERE name = 'maintenance'"
        )
        assert taken_at >= expired_at  # not before the dead leader's lease ran out
        assert survivor.returncode is None, survivor.describe()


# -- bad setups ---------------------------------------------------------------------------------


async def test_listen_dsn_through_the_pooler_or_to_another_database_is_refused_at_open(
    pooled_dsn: str, server_dsn: str
) -> None:
    began = time.monotonic()
    tide = Tidebase(pooled_dsn, listen_dsn=pooled_dsn)
    with pytest.raises(ConfigurationError, match=r"listen_dsn .* transaction-mode pooler too"):
        await tide.open()
    assert time.monotonic() - began < 5
    await tide.close()  # nothing was left open
    with pytest.raises(ConfigurationError, match="not open"):
        _ = tide.store
    # The direct server, but its maintenance database: it would never hear a thing.
    with pytest.raises(ConfigurationError, match="another database"):
        await Tidebase(pooled_dsn, listen_dsn=server_dsn).open()


async def test_listen_dsn_on_a_session_mode_pgbouncer_wakes_a_worker(
    pooled_dsn: str, dsn: str, server_dsn: str
) -> None:
    """Where the database is not reachable directly (Supabase over IPv4, say), a session
    mode pooler holds the LISTEN: accepted, and its notifications arrive."""
    up = upstream_of(server_dsn)
    async with running_pgbouncer(
        upstream_host=up.host,
        upstream_port=up.port,
        users={up.user: up.password},
        pool_mode="session",
        default_pool_size=2,
    ) as session_mode:
        listen = session_mode.dsn(database_of(dsn), user=up.user)
        assert await probe_pooler(listen) is True
        async with Tidebase(pooled_dsn, listen_dsn=listen) as tide:

            @tide.workflow("hello")
            async def hello(run: Run, name: str) -> str:
                return f"hello {name}"

            async with working(tide, poll_interval=30.0):
                await eventually(lambda: tide.listener is not None and tide.listener.connected)
                began = time.monotonic()
                handle = await tide.enqueue("hello", input="session")
                assert await tide.runs.wait(handle.id, timeout=5, poll=30) == "hello session"
                assert time.monotonic() - began < 3


async def test_a_refused_startup_parameter_is_a_clear_configuration_error(
    pooled_dsn: str,
) -> None:
    began = time.monotonic()
    with pytest.raises(ConfigurationError) as refused:
        await Tidebase(pooled_dsn, pooled=False, connect_timeout=5).open()
    message = str(refused.value)
    assert "startup parameter 'jit'" in message and "pooled=True" in message, message
    assert "Is the server running" not in message
    # A DSN parameter the pooler does not track, with detection: named too.
    with pytest.raises(ConfigurationError, match=r"'search_path'.*ignore_startup_parameters"):
        await Tidebase(pooled_dsn + "?search_path=public", connect_timeout=5).open()
    assert time.monotonic() - began < 2  # no retrying until connect_timeout


async def test_an_undetected_pooler_is_named_when_a_cached_statement_goes_missing(
    server_dsn: str, dsn: str
) -> None:
    up = upstream_of(server_dsn)
    async with running_pgbouncer(
        upstream_host=up.host,
        upstream_port=up.port,
        users={up.user: up.password},
        default_pool_size=2,
        # So that pooled=False gets past the login to the statement cache.
        settings={"ignore_startup_parameters": "jit"},
    ) as bouncer:
        through = bouncer.dsn(database_of(dsn), user=up.user)
        store = await Store.connect(through, pooled=False, min_size=1, max_size=1)
        holder = await asyncpg.connect(through, statement_cache_size=0)
        try:
            await store.db_now()  # prepared (named, cached) on the one server connection
            async with holder.transaction():
                # The holder takes that server connection: the store's next statement runs
                # on the other one, where its cached statement does not exist.
                await holder.fetchval("SELECT 1")
                with pytest.raises(ConfigurationError, match="TIDEBASE_POOLED=1") as missing:
                    await store.db_now()
        finally:
            await holder.close()
            await store.close()
    assert isinstance(missing.value.__cause__, asyncpg.exceptions.InvalidSQLStatementNameError)
