"""Flow control by key: ``Debounce`` (one run with the latest input after a quiet
window, or at max_wait) and ``Singleton`` (one active run per workflow and key, skip or
replace), all in the database; with an in-process worker and with worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from tests.integration import procs
from tests.integration.core_support import (
    count_rows,
    event_types,
    eventually,
    run_row,
    status_of,
    working,
)
from tidebase_async import (
    ConfigurationError,
    ConflictError,
    Debounce,
    Run,
    RunCancelled,
    RunSpec,
    Singleton,
    Tidebase,
)


def _register_echo(tide: Tidebase, started: list[Any] | None = None) -> None:
    @tide.workflow("echo")
    async def echo(run: Run, input: Any) -> Any:
        if started is not None:
            started.append(input)
        return input


async def _runs(db: asyncpg.Connection, workflow: str) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT id, status, input::text AS input, output::text AS output, created_at,"
        " started_at, run_at, cancel_reason FROM tidebase.runs WHERE workflow = $1"
        " ORDER BY created_at, id",
        workflow,
    )
    return [
        {
            **dict(r),
            "input": json.loads(r["input"]),
            "output": None if r["output"] is None else json.loads(r["output"]),
        }
        for r in rows
    ]


async def _db_now(db: asyncpg.Connection) -> Any:
    return await db.fetchval("SELECT tidebase.now()")


# -- debounce --------------------------------------------------------------------------


async def test_debounce_collapses_enqueues_into_one_run_with_the_last_input(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    _register_echo(tide)
    window = 0.6
    async with working(tide, poll_interval=0.05):
        handles = []
        for i in range(5):
            last_at = await _db_now(db)
            handles.append(
                await tide.enqueue("echo", input=i, debounce=Debounce(key="doc-1", window=window))
            )
            await anyio.sleep(0.1)
        assert len({h.id for h in handles}) == 1
        assert [h.deduplicated for h in handles] == [False, True, True, True, True]
        # Not claimed before the window after the last enqueue has passed.
        assert await status_of(db, handles[0].id) == "queued"
        assert await tide.runs.wait(handles[0].id, timeout=10) == 4
    (row,) = await _runs(db, "echo")
    assert (row["id"], row["status"], row["input"], row["output"]) == (
        handles[0].id,
        "completed",
        4,
        4,
    )
    assert row["started_at"] >= last_at + timedelta(seconds=window)


async def test_debounce_max_wait_starts_the_run_under_continuous_enqueues(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    _register_echo(tide)
    async with working(tide, poll_interval=0.05):
        first_at = await _db_now(db)
        first = await tide.enqueue(
            "echo", input=0, debounce=Debounce(key="k", window=0.5, max_wait=1.2)
        )
        i = 0
        # Enqueue every 0.1 s (well inside the window) until the first run started.
        while await status_of(db, first.id) == "queued":
            i += 1
            await tide.enqueue(
                "echo", input=i, debounce=Debounce(key="k", window=0.5, max_wait=1.2)
            )
            await anyio.sleep(0.1)
            assert i < 40, "max_wait did not start the run"
        await tide.runs.wait(first.id, timeout=10)
        later = await tide.enqueue("echo", input="after", debounce=Debounce(key="k", window=0.05))
        assert later.id != first.id and not later.deduplicated
        await tide.runs.wait(later.id, timeout=10)
    row = await run_row(db, first.id)
    # Started at the cap (first enqueue + 1.2 s), give or take a poll, not before.
    started = (row["started_at"] - first_at).total_seconds()
    assert 1.2 <= started < 2.2, started
    assert row["output"] == row["input"] and isinstance(row["input"], int)


async def test_debounce_enqueue_after_the_run_started_makes_a_new_run(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    release = asyncio.Event()

    @tide.workflow("slow")
    async def slow(run: Run, input: Any) -> Any:
        await release.wait()
        return input

    async with working(tide, poll_interval=0.05):
        one = await tide.enqueue("slow", input="a", debounce=Debounce(key="x", window=0.1))
        await eventually(lambda: _running(db, one.id), what="the first run to start")
        two = await tide.enqueue("slow", input="b", debounce=Debounce(key="x", window=0.1))
        three = await tide.enqueue("slow", input="c", debounce=Debounce(key="x", window=0.1))
        assert two.id != one.id and not two.deduplicated
        assert three.id == two.id and three.deduplicated
        release.set()
        assert await tide.runs.wait(one.id, timeout=10) == "a"
        assert await tide.runs.wait(two.id, timeout=10) == "c"
    assert [r["output"] for r in await _runs(db, "slow")] == ["a", "c"]


async def _running(db: asyncpg.Connection, run_id: Any) -> bool:
    return await status_of(db, run_id) == "running"


async def test_concurrent_debounced_enqueues_make_exactly_one_run(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    started: list[Any] = []
    _register_echo(tide, started)
    async with working(tide, poll_interval=0.05):
        handles = await asyncio.gather(
            *(
                tide.enqueue("echo", input=i, debounce=Debounce(key="hot", window=0.5))
                for i in range(20)
            )
        )
        assert len({h.id for h in handles}) == 1
        assert sum(not h.deduplicated for h in handles) == 1
        out = await tide.runs.wait(handles[0].id, timeout=10)
        assert out in range(20)
        await anyio.sleep(0.3)
    runs = await _runs(db, "echo")
    assert [(r["status"], r["output"]) for r in runs] == [("completed", out)]
    assert started == [out]


async def test_debounce_keys_are_per_workflow_and_key(tide: Tidebase) -> None:
    a = await tide.enqueue("w1", input=1, debounce=Debounce(key="k", window=60))
    b = await tide.enqueue("w2", input=1, debounce=Debounce(key="k", window=60))
    c = await tide.enqueue("w1", input=1, debounce=Debounce(key="other", window=60))
    d = await tide.enqueue("w1", input=2, debounce=Debounce(key="k", window=60))
    assert len({a.id, b.id, c.id}) == 3
    assert d.id == a.id and d.deduplicated
    info = await tide.runs.get(a.id)
    assert info.input == 2 and info.status == "queued"


# -- singleton ------------------------------------------------------------------------


async def test_singleton_skip_returns_the_active_run(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    release = asyncio.Event()

    @tide.workflow("sync")
    async def sync(run: Run, input: Any) -> Any:
        await release.wait()
        return input

    async with working(tide, poll_interval=0.05):
        one = await tide.enqueue("sync", input=1, singleton=Singleton(key="acct"))
        await eventually(lambda: _running(db, one.id))
        two = await tide.enqueue("sync", input=2, singleton=Singleton(key="acct", mode="skip"))
        other = await tide.enqueue("sync", input=3, singleton=Singleton(key="acct-2"))
        assert (two.id, two.deduplicated) == (one.id, True)
        assert other.id != one.id and not other.deduplicated
        release.set()
        assert await tide.runs.wait(one.id, timeout=10) == 1
        # Finished: the key is free again.
        three = await tide.enqueue("sync", input=4, singleton=Singleton(key="acct"))
        assert three.id != one.id and not three.deduplicated
        assert await tide.runs.wait(three.id, timeout=10) == 4
    assert sorted(r["output"] for r in await _runs(db, "sync")) == [1, 3, 4]


async def test_singleton_replace_cancels_the_running_run_and_runs_the_new_one(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    log: list[str] = []

    @tide.workflow("sync")
    async def sync(run: Run, input: str) -> str:
        async def work() -> str:
            log.append(f"start {input}")
            try:
                if input == "old":
                    await anyio.sleep(60)
            except asyncio.CancelledError:
                log.append(f"cancelled {input}")
                raise
            return input

        out: str = await run.step("work", work)
        return out

    async with working(tide, poll_interval=0.05, lease=30.0) as worker:
        old = await tide.enqueue("sync", input="old", singleton=Singleton(key="a"))
        await eventually(lambda: log == ["start old"], what="the old run to start")
        new = await tide.enqueue("sync", input="new", singleton=Singleton(key="a", mode="replace"))
        assert new.id != old.id and not new.deduplicated
        assert await tide.runs.wait(new.id, timeout=10) == "new"
        with pytest.raises(RunCancelled) as exc:
            await tide.runs.wait(old.id, timeout=5)
        assert str(new.id) in (exc.value.reason or "")
        await eventually(lambda: worker.stats.cancelled == 1, what="the worker to stop it")
    # The new run may start before the old one's worker heard of the cancellation.
    assert log[0] == "start old" and sorted(log[1:]) == ["cancelled old", "start new"]
    assert (await run_row(db, old.id))["status"] == "cancelled"


async def test_singleton_replace_of_a_queued_run(tide: Tidebase, db: asyncpg.Connection) -> None:
    old = await tide.enqueue("later", input=1, singleton=Singleton(key="a"))
    new = await tide.enqueue("later", input=2, singleton=Singleton(key="a", mode="replace"))
    assert new.id != old.id
    assert [(r["id"], r["status"]) for r in await _runs(db, "later")] == [
        (old.id, "cancelled"),
        (new.id, "queued"),
    ]


async def test_concurrent_singleton_replaces_leave_exactly_one_active_run(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    _register_echo(tide)
    await tide.enqueue("hold", input=0, singleton=Singleton(key="k"))
    specs = [Singleton(key="k", mode="replace")] * 12 + [Singleton(key="k", mode="skip")] * 4
    handles = await asyncio.gather(
        *(tide.enqueue("hold", input=i, singleton=s) for i, s in enumerate(specs))
    )
    active = await db.fetch(
        "SELECT id FROM tidebase.runs WHERE workflow = 'hold'"
        " AND status IN ('queued', 'running', 'waiting')"
    )
    assert len(active) == 1
    counts = dict(await db.fetch("SELECT status, count(*) FROM tidebase.runs GROUP BY status"))
    # Every replace inserted a run; all but the survivor were cancelled.
    assert counts["queued"] == 1
    assert counts["cancelled"] == sum(not h.deduplicated for h in handles)
    assert active[0]["id"] in {h.id for h in handles}


# -- lost connections -----------------------------------------------------------------


@contextlib.contextmanager
def lose_next_commit(
    monkeypatch: pytest.MonkeyPatch,
    *,
    landed: bool,
    then: Callable[[], Awaitable[None]] | None = None,
) -> Iterator[list[bool]]:
    """Cut the connection of the next COMMIT that this task sends: after the server
    committed (``landed``: the outcome never reaches the client), or instead of sending
    it (the server rolls the transaction back). ``then`` runs after the cut, before the
    caller can retry. Yields a list that holds True once the cut happened."""
    transaction_cls: Any = asyncpg.transaction.Transaction
    real = transaction_cls._Transaction__commit
    task = asyncio.current_task()
    cut: list[bool] = []

    async def commit(self: Any) -> None:
        if cut or asyncio.current_task() is not task:
            await real(self)
            return
        cut.append(True)
        if landed:
            await real(self)
        self._connection.terminate()
        if then is not None:
            await then()
        raise asyncpg.exceptions.ConnectionDoesNotExistError("injected: connection lost at COMMIT")

    monkeypatch.setattr(transaction_cls, "_Transaction__commit", commit)
    try:
        yield cut
    finally:
        monkeypatch.undo()


@pytest.mark.parametrize("landed", [True, False])
async def test_a_debounced_enqueue_whose_connection_is_lost_at_commit_makes_one_run(
    tide: Tidebase, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch, landed: bool
) -> None:
    with lose_next_commit(monkeypatch, landed=landed) as cut:
        first = await tide.enqueue("w", input=1, debounce=Debounce(key="k", window=60))
    assert cut == [True]
    with lose_next_commit(monkeypatch, landed=landed) as cut:
        second = await tide.enqueue("w", input=2, debounce=Debounce(key="k", window=60))
    assert cut == [True]
    assert (first.deduplicated, second.deduplicated) == (False, True)
    assert second.id == first.id
    runs = await _runs(db, "w")
    assert [(r["id"], r["status"], r["input"]) for r in runs] == [(first.id, "queued", 2)]


async def test_a_debounced_enqueue_lost_at_commit_returns_its_run_though_it_was_claimed_since(
    tide: Tidebase, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the retry after a connection lost at COMMIT upserted again, and when
    the pending run its commit had upserted was claimed meanwhile, it made a second
    run with the same input (the id lookup only found runs the enqueue inserted)."""
    first = await tide.enqueue("w", input=1, debounce=Debounce(key="k", window=60))

    async def claimed() -> None:  # what a worker's claim does to the pending run
        await db.execute(
            "UPDATE tidebase.runs SET status = 'running', attempt = 1, lease_owner = 'w-1',"
            " lease_expires_at = tidebase.now() + interval '30 seconds' WHERE id = $1",
            first.id,
        )

    with lose_next_commit(monkeypatch, landed=True, then=claimed) as cut:
        second = await tide.enqueue("w", input=2, debounce=Debounce(key="k", window=60))
    assert cut == [True]
    assert second.id == first.id and second.deduplicated
    runs = await _runs(db, "w")
    assert [(r["id"], r["status"], r["input"]) for r in runs] == [(first.id, "running", 2)]


@pytest.mark.parametrize("landed", [True, False])
async def test_a_singleton_replace_whose_connection_is_lost_at_commit_cancels_once(
    tide: Tidebase, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch, landed: bool
) -> None:
    """Regression: a replace met by a lost connection raised ConnectionLost (whether or
    not its commit had landed) instead of riding it out as other writes do."""
    old = await tide.enqueue("r", input=1, singleton=Singleton(key="k"))
    with lose_next_commit(monkeypatch, landed=landed) as cut:
        new = await tide.enqueue("r", input=2, singleton=Singleton(key="k", mode="replace"))
    assert cut == [True]
    assert new.id != old.id and not new.deduplicated
    runs = await _runs(db, "r")
    assert [(r["id"], r["status"]) for r in runs] == [(old.id, "cancelled"), (new.id, "queued")]
    assert runs[0]["cancel_reason"] == f"replaced by run {new.id} (singleton)"
    assert (await event_types(db, old.id)).count("run.cancelled") == 1


async def test_a_singleton_skip_whose_connection_is_lost_at_commit_makes_one_run(
    tide: Tidebase, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    with lose_next_commit(monkeypatch, landed=True) as cut:
        first = await tide.enqueue("s", input=1, singleton=Singleton(key="k"))
    assert cut == [True]
    again = await tide.enqueue("s", input=2, singleton=Singleton(key="k"))
    assert (again.id, again.deduplicated, first.deduplicated) == (first.id, True, False)
    assert len(await _runs(db, "s")) == 1


# -- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"debounce": Debounce(key="k", window=10, max_wait=5)}, "max_wait"),
        ({"debounce": Debounce(key="k" * 201, window=1)}, "1..200 characters"),
        ({"debounce": Debounce(key="", window=1)}, "1..200 characters"),
        ({"debounce": Debounce(key="k", window=-1)}, "debounce window"),
        ({"debounce": Debounce(key="k", window="1")}, "debounce window"),  # type: ignore[arg-type]
        ({"debounce": Debounce(key=5, window=1)}, "must be a str"),  # type: ignore[arg-type]
        ({"debounce": Debounce(key="k", window=1), "delay": 3}, "delay"),
        ({"debounce": Debounce(key="k", window=1), "dedupe_key": "d"}, "dedupe_key"),
        ({"singleton": Singleton(key="k" * 201)}, "1..200 characters"),
        ({"singleton": Singleton(key="a\x00b")}, "NUL"),
        ({"singleton": Singleton(key="k", mode="evict")}, "'skip' or 'replace'"),  # type: ignore[arg-type]
        ({"singleton": Singleton(key="k"), "dedupe_key": "d"}, "dedupe_key"),
        (
            {"singleton": Singleton(key="k"), "debounce": Debounce(key="k", window=1)},
            "cannot be combined",
        ),
        ({"singleton": {"key": "k"}}, "must be a Singleton"),
    ],
)
async def test_bad_flow_options_raise_and_write_nothing(
    tide: Tidebase, db: asyncpg.Connection, options: dict[str, Any], message: str
) -> None:
    await tide.enqueue("w", input=0, singleton=Singleton(key="k"))
    before = await count_rows(db)
    with pytest.raises(ConfigurationError, match=message):
        await tide.enqueue("w", input=1, **options)
    assert await count_rows(db) == before


async def test_enqueue_many_refuses_flow_control(tide: Tidebase, db: asyncpg.Connection) -> None:
    specs = [
        RunSpec(workflow="w", input=1),
        RunSpec(workflow="w", input=2, debounce=Debounce(key="k", window=1)),
    ]
    with pytest.raises(ConfigurationError, match="enqueue_many item 1: debounce and singleton"):
        await tide.enqueue_many(specs)
    assert await count_rows(db) == (0, 0, 0)


# -- worker processes -----------------------------------------------------------------


async def test_debounce_and_singleton_replace_with_worker_processes(
    tide: Tidebase, db: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    await procs.create_step_log(db)
    async with procs.Workers(dsn, tmp_path) as workers:
        await workers.start(name="first", concurrency=4, poll_interval=0.1)
        await workers.start(name="second", concurrency=4, poll_interval=0.1)
        # 20 concurrent debounced enqueues of one key: one run, executed once.
        handles = await asyncio.gather(
            *(
                tide.enqueue("nap", input=0.01 * i, debounce=Debounce(key="doc", window=0.4))
                for i in range(20)
            )
        )
        (run_id,) = {h.id for h in handles}
        await procs.wait_status(db, run_id, "completed", timeout=15)
        assert [s for s, _ in await procs.step_log(db, run_id)] == ["nap"]

        # A long run of a singleton key, replaced while a worker process executes it.
        old = await tide.enqueue("nap", input=30.0, singleton=Singleton(key="acct"))

        async def napping() -> bool:
            return bool(await procs.step_log(db, old.id))

        await procs.eventually(napping, timeout=10, what="the long run to start")
        new = await tide.enqueue("nap", input=0.0, singleton=Singleton(key="acct", mode="replace"))
        await procs.wait_status(db, new.id, "completed", timeout=15)
        assert await procs.run_status(db, old.id) == "cancelled"
        kinds = [k for k, _ in await procs.event_types(db, old.id)]
        assert kinds[-1] == "run.cancelled" and "run.completed" not in kinds
    counts = await db.fetch("SELECT workflow, status, count(*) FROM tidebase.runs GROUP BY 1, 2")
    assert sorted(tuple(r) for r in counts) == [("nap", "cancelled", 1), ("nap", "completed", 2)]


# -- HTTP API -------------------------------------------------------------------------


async def test_post_runs_takes_debounce_and_singleton(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    from tests.integration.web_support import serve

    async with serve(tide, "starlette") as client:
        debounce = {"key": "doc", "window_s": 60, "max_wait_s": 120}
        first = await client.post(
            "/tidebase/runs", json={"workflow": "w", "input": 1, "debounce": debounce}
        )
        again = await client.post(
            "/tidebase/runs", json={"workflow": "w", "input": 2, "debounce": debounce}
        )
        assert (first.status_code, again.status_code) == (201, 200), again.text
        assert again.json() == {"id": first.json()["id"], "deduplicated": True}
        one = await client.post("/tidebase/runs", json={"workflow": "s", "singleton": {"key": "a"}})
        two = await client.post(
            "/tidebase/runs", json={"workflow": "s", "singleton": {"key": "a", "mode": "replace"}}
        )
        assert (one.status_code, two.status_code) == (201, 201), two.text
        assert await status_of(db, one.json()["id"]) == "cancelled"
        before = await count_rows(db)
        for body in (
            {"workflow": "w", "debounce": {"key": "doc", "window_s": 10, "max_wait_s": 1}},
            {"workflow": "w", "debounce": {"key": "k" * 201, "window_s": 1}},
            {"workflow": "w", "debounce": {"key": "k"}},
            {"workflow": "w", "debounce": {"key": "k", "window_s": 1, "extra": 1}},
            {"workflow": "s", "singleton": {"key": "a", "mode": "evict"}},
            {"workflow": "s", "singleton": {"key": "a"}, "debounce": {"key": "a", "window_s": 1}},
        ):
            resp = await client.post("/tidebase/runs", json=body)
            assert resp.status_code == 400, (body, resp.text)
            assert resp.json()["error"]["message"]
        assert await count_rows(db) == before
    assert (await tide.runs.get(first.json()["id"])).input == 2


async def test_retrying_a_failed_singleton_run_while_another_is_active_is_a_conflict(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    failed = await tide.enqueue("w", input=1, singleton=Singleton(key="k"))
    await db.execute(
        "UPDATE tidebase.runs SET status = 'failed', finished_at = now() WHERE id = $1",
        failed.id,
    )
    await tide.enqueue("w", input=2, singleton=Singleton(key="k"))
    with pytest.raises(ConflictError, match="singleton key"):
        await tide.runs.retry(failed.id)
    assert await status_of(db, failed.id) == "failed"


async def test_keyed_enqueues_are_traced_and_their_runs_store_the_context(
    dsn: str, db: asyncpg.Connection
) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with Tidebase(dsn, tracer_provider=provider) as tide:
        a = await tide.enqueue("w", input=1, debounce=Debounce(key="k", window=60))
        b = await tide.enqueue("w", input=2, debounce=Debounce(key="k", window=60))
        c = await tide.enqueue("s", input=1, singleton=Singleton(key="k", mode="replace"))
    provider.shutdown()
    spans = [s for s in exporter.get_finished_spans() if s.name == "tidebase.enqueue"]
    assert [(s.attributes or {}).get("tidebase.deduplicated") for s in spans] == [
        False,
        True,
        False,
    ]
    assert [(s.attributes or {}).get("tidebase.run_id") for s in spans] == [
        str(a.id),
        str(b.id),
        str(c.id),
    ]
    stored = await db.fetchval("SELECT count(*) FROM tidebase.runs WHERE trace_context IS NOT NULL")
    assert stored == 2
