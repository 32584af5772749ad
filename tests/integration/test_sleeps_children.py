"""Durable sleeps and child runs on a real Postgres, in one process and across worker
processes (``worker_app``): a sleep outlives its worker, children run anywhere, are
created once, and a failed child raises ``ChildFailed`` in its parent."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import asyncpg

from tests.integration import procs
from tests.integration.control_support import events, history, subsequence, wait_status
from tests.integration.core_support import FAST, run_row, working
from tidebase_async import ChildFailed, ConfigurationError, Run, Tidebase


async def _sleep_until(db: asyncpg.Connection, run_id: uuid.UUID, name: str) -> datetime:
    """When the recorded sleep ``name`` of the run ends (its checkpoint)."""
    raw = await db.fetchval(
        "SELECT output FROM tidebase.steps WHERE run_id = $1 AND name = $2 AND kind = 'sleep'",
        run_id,
        name,
    )
    assert raw is not None, f"no sleep {name!r} recorded"
    return datetime.fromisoformat(json.loads(bytes(raw)))


async def test_sleep_and_children(tide: Tidebase) -> None:
    @tide.workflow("leaf")
    async def leaf(run: Run, n: int) -> int:
        if n < 0:
            raise ValueError("negative")
        return n * 2

    @tide.workflow("parent")
    async def parent(run: Run) -> list[int]:
        await run.sleep("nap", 0.3)
        one = await run.child("leaf", input=5)
        many = await run.fanout("many", [("leaf", i) for i in range(4)])
        return [one, *many]

    @tide.workflow("bad-parent")
    async def bad_parent(run: Run) -> str:
        try:
            await run.child("leaf", input=-1)
        except ChildFailed as exc:
            return f"caught {exc.error.get('type')}"
        return "no"

    async with working(tide, concurrency=4, maintenance_interval=0.2):
        h = await tide.enqueue("parent")
        assert await tide.runs.wait(h.id, timeout=20) == [10, 0, 2, 4, 6]
        info = await tide.runs.get(h.id)
        assert len(info.children) == 5
        assert [s.kind for s in info.steps] == ["sleep", "child", "fanout"]
        b = await tide.enqueue("bad-parent")
        assert await tide.runs.wait(b.id, timeout=20) == "caught ValueError"


async def test_sleep_survives_the_death_of_its_worker(
    tide: Tidebase, db: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    await procs.create_step_log(db)
    async with procs.Workers(dsn, tmp_path) as workers:
        first = await workers.start(name="first", concurrency=2)
        handle = await tide.enqueue("sleeper", input=1.0)
        await wait_status(db, handle.id, "waiting")
        until = await _sleep_until(db, handle.id, "nap")
        first.kill()  # SIGKILL
        assert await procs.step_log(db, handle.id) == [("before", first.pid)]
        # No worker is alive when the sleep ends; the run stays parked meanwhile.
        while not await db.fetchval("SELECT tidebase.now() > $1", until):
            await anyio.sleep(0.05)
        assert await procs.run_status(db, handle.id) == "waiting"
        second = await workers.start(name="second", concurrency=2)
        await procs.wait_status(db, handle.id, "completed", timeout=15)

    assert await procs.run_output(db, handle.id) == {"before": first.pid, "after": second.pid}
    # Steps before the sleep ran once, on the first worker; the step after it once, later.
    assert await procs.step_log(db, handle.id) == [("before", first.pid), ("after", second.pid)]
    after_at = await db.fetchval(
        "SELECT started_at FROM tidebase.steps WHERE run_id = $1 AND name = 'after'", handle.id
    )
    assert after_at >= until
    types = [t for t, _ in await procs.event_types(db, handle.id)]
    assert subsequence(
        ["step.completed", "sleep.started", "run.waiting", "run.resumed", "run.claimed"], types
    ), types
    assert types.count("sleep.started") == 1
    assert types.count("run.waiting") == 1


async def test_parent_with_a_child_and_a_fanout_completes_in_order_on_two_worker_processes(
    tide: Tidebase, db: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    await procs.create_step_log(db)
    many = [3, 1, 4, 1, 5, 9, 2, 6]
    async with procs.Workers(dsn, tmp_path) as workers:
        first = await workers.start(name="first", concurrency=2)
        second = await workers.start(name="second", concurrency=2)
        handle = await tide.enqueue("family", input={"one": 7, "many": many, "nap": 0.3})
        await procs.wait_status(db, handle.id, "completed", timeout=30)

    out = await procs.run_output(db, handle.id)
    assert out["one"]["n"] == 7 and out["one"]["square"] == 49
    assert [(o["n"], o["square"]) for o in out["many"]] == [(n, n * n) for n in many]
    info = await tide.runs.get(handle.id)
    assert len(info.children) == 1 + len(many)
    assert {c.status for c in info.children} == {"completed"}
    assert [(s.kind, s.name) for s in info.steps] == [("child", "one"), ("fanout", "many")]
    children = await db.fetch(
        "SELECT id, parent_id FROM tidebase.runs WHERE parent_id = $1", handle.id
    )
    assert len(children) == 1 + len(many)
    # Each child executed its step exactly once, and the children ran on both processes.
    log = await db.fetch(
        "SELECT run_id, pid FROM step_log WHERE run_id = ANY($1)", [c["id"] for c in children]
    )
    assert sorted(Counter(r["run_id"] for r in log).values()) == [1] * len(children)
    assert {r["pid"] for r in log} == {first.pid, second.pid}
    assert {o["pid"] for o in [out["one"], *out["many"]]} == {first.pid, second.pid}
    types = [t for t, _ in await procs.event_types(db, handle.id)]
    assert types.count("child.started") == 2
    assert types.count("child.completed") == 2
    assert types[-1] == "run.completed"


async def test_sleep_parks_the_run_and_wakes_it_when_due(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    executed: Counter[str] = Counter()

    @tide.workflow("napper")
    async def napper(run: Run) -> str:
        await run.step("before", lambda: executed.update(["before"]))
        await run.sleep("nap", timedelta(seconds=0.5))
        await run.step("after", lambda: executed.update(["after"]))
        return "rested"

    async with working(tide, concurrency=1, maintenance_interval=0.2) as worker:
        handle = await tide.enqueue("napper")
        await wait_status(db, handle.id, "waiting")
        row = await run_row(db, handle.id)
        until = await _sleep_until(db, handle.id, "nap")
        assert row["wake_at"] == until
        assert row["lease_owner"] is None
        assert worker.inflight == 0
        assert await tide.runs.wait(handle.id, timeout=10) == "rested"
    assert executed == {"before": 1, "after": 1}
    assert worker.stats.timers_fired == 1
    types = [t for t, _ in await events(db, handle.id)]
    assert types == [
        "run.created",
        "run.claimed",
        "step.completed",
        "sleep.started",
        "run.waiting",
        "run.resumed",
        "run.claimed",
        "step.completed",
        "run.completed",
    ], types
    assert await history(db, handle.id) == [
        ("step", "before", "completed"),
        ("sleep", "nap", "completed"),
        ("step", "after", "completed"),
    ]


async def test_sleep_until_a_past_time_does_not_wait(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    @tide.workflow("past")
    async def past(run: Run) -> str:
        await run.sleep_until("then", datetime.now(UTC) - timedelta(hours=1))
        return "done"

    async with working(tide, concurrency=1) as worker:
        handle = await tide.enqueue("past")
        assert await tide.runs.wait(handle.id, timeout=10) == "done"
    assert worker.stats.suspended == 0
    assert "run.waiting" not in [t for t, _ in await events(db, handle.id)]


async def test_inline_run_with_sleep_and_no_worker_finishes(tide: Tidebase) -> None:
    """Regression: nothing woke an inline run's durable sleep when no worker ran, so
    tide.run blocked for good."""

    @tide.workflow("inline-nap")
    async def inline_nap(run: Run) -> str:
        await run.sleep("nap", 0.3)
        return "rested"

    run_id = uuid.uuid4()
    result: list[Any] = []
    with anyio.move_on_after(5):
        result.append(await tide.run("inline-nap", run_id=run_id))
    assert result == ["rested"], (
        f"tide.run still blocked after 5 s; the run is {await tide.store.run_status(run_id)!r}"
    )


async def test_sleep_with_an_infinite_duration_is_a_configuration_error(
    tide: Tidebase,
) -> None:
    """Regression: a sleep too long for a datetime (inf, 1e12 s) raised OverflowError
    instead of a ConfigurationError."""
    seen: list[str] = []

    @tide.workflow("forever-nap")
    async def forever_nap(run: Run) -> str:
        for duration in (float("inf"), 1e12):
            try:
                await run.sleep(f"nap-{duration}", duration)
            except ConfigurationError:
                seen.append("ConfigurationError")
            except Exception as exc:
                seen.append(type(exc).__name__)
        return "done"

    with anyio.fail_after(10):
        await tide.run("forever-nap")
    assert seen == ["ConfigurationError", "ConfigurationError"]


async def test_reused_sleep_and_child_names_follow_the_ordinal_rule(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    @tide.workflow("double")
    async def double(run: Run, n: int) -> int:
        return n * 2

    @tide.workflow("repeats")
    async def repeats(run: Run) -> list[Any]:
        for _ in range(2):
            await run.sleep("nap", 0.2)
        a = await run.child("double", input=1)
        b = await run.child("double", input=2)
        c = await run.child("double", input=3, name="pair")
        d = await run.child("double", input=4, name="pair")
        fan = await run.fanout("fan", [("double", 5)])
        fan2 = await run.fanout("fan", [("double", 6)])
        return [a, b, c, d, fan, fan2]

    async with working(tide, concurrency=2, maintenance_interval=0.2):
        handle = await tide.enqueue("repeats")
        assert await tide.runs.wait(handle.id, timeout=15) == [2, 4, 6, 8, [10], [12]]
    assert await history(db, handle.id) == [
        ("sleep", "nap", "completed"),
        ("sleep", "nap#2", "completed"),
        ("child", "double", "completed"),
        ("child", "double#2", "completed"),
        ("child", "pair", "completed"),
        ("child", "pair#2", "completed"),
        ("fanout", "fan", "completed"),
        ("fanout", "fan#2", "completed"),
    ]
    children = await db.fetch(
        "SELECT input::text AS input FROM tidebase.runs WHERE parent_id = $1 ORDER BY created_at",
        handle.id,
    )
    assert sorted(json.loads(c["input"]) for c in children) == [1, 2, 3, 4, 5, 6]


async def test_a_child_is_created_once_however_often_its_parent_replays(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    executed: Counter[str] = Counter()

    @tide.workflow("slowish")
    async def slowish(run: Run, n: int) -> int:
        executed[f"child-{n}"] += 1
        await run.step("nap", anyio.sleep, 0.05 * n)
        return n

    def flaky() -> None:
        executed["flaky"] += 1
        if executed["flaky"] == 1:
            raise RuntimeError("once")

    @tide.workflow("replaying-parent", max_attempts=3, retry=FAST)
    async def replaying_parent(run: Run) -> list[int]:
        # The quick children finish first and wake the parent, which replays and finds
        # the slower ones still running: every replay asks for all of them again.
        outs = await run.fanout("fan", [("slowish", n) for n in (1, 2, 3, 8)])
        await run.step("flaky", flaky)  # a failure after the fan-out: one more replay
        return list(outs)

    async with working(tide, concurrency=6) as _:
        handle = await tide.enqueue("replaying-parent")
        assert await tide.runs.wait(handle.id, timeout=15) == [1, 2, 3, 8]
    rows = await db.fetch(
        "SELECT id, workflow FROM tidebase.runs WHERE parent_id = $1 ORDER BY id", handle.id
    )
    assert len(rows) == 4
    assert executed == {"child-1": 1, "child-2": 1, "child-3": 1, "child-8": 1, "flaky": 2}
    types = [t for t, _ in await events(db, handle.id)]
    assert types.count("run.claimed") >= 3  # replayed at least twice
    assert types.count("child.started") == 1
    info = await tide.runs.get(handle.id)
    assert sorted(c.id for c in info.children) == [r["id"] for r in rows]
    for child in info.children:
        child_info = await tide.runs.get(child.id)
        assert child_info.parent_id == handle.id


async def test_a_failed_child_raises_child_failed_with_its_error_also_on_replay(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    @tide.workflow("picky", max_attempts=1)
    async def picky(run: Run, n: int) -> int:
        if n < 0:
            raise ValueError(f"negative: {n}")
        return n

    seen: list[tuple[str, str, str, str, bool]] = []

    @tide.workflow("forgiving")
    async def forgiving(run: Run) -> list[Any]:
        try:
            await run.child("picky", input=-5, name="check")
        except ChildFailed as exc:
            seen.append(
                (
                    exc.workflow,
                    exc.status,
                    str(exc.error.get("type")),
                    str(exc.error.get("message")),
                    isinstance(exc.child_id, uuid.UUID | str),
                )
            )
        # A gate after the caught failure: the run replays past it once resolved.
        await run.gate("go-on")
        return [list(s) for s in seen]

    async with working(tide, concurrency=2):
        handle = await tide.enqueue("forgiving")
        await wait_status(db, handle.id, "waiting")
        while not await tide.gates.list(run_id=handle.id):
            await anyio.sleep(0.02)
        await tide.gates.resolve(handle.id, "go-on", approved=True)
        out = await tide.runs.wait(handle.id, timeout=10)

    first = ["picky", "failed", "ValueError", "negative: -5", True]
    # The first execution saw the child's error; the replay raised the same again.
    assert out == [first, first]
    [child] = (await tide.runs.get(handle.id)).children
    assert child.status == "failed"
    assert await history(db, handle.id) == [
        ("child", "check", "failed"),
        ("gate", "go-on", "completed"),
    ]
    types = [t for t, _ in await events(db, handle.id)]
    assert subsequence(["child.started", "run.waiting", "run.resumed", "child.failed"], types)


async def test_an_uncaught_child_failure_fails_the_parent(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    @tide.workflow("broken", max_attempts=1)
    async def broken(run: Run) -> None:
        raise KeyError("missing")

    @tide.workflow("strict-parent", max_attempts=1)
    async def strict_parent(run: Run) -> None:
        await run.child("broken")

    async with working(tide, concurrency=2):
        handle = await tide.enqueue("strict-parent")
        status = await wait_status(db, handle.id, "failed", "completed")
    assert status == "failed"
    error = (await run_row(db, handle.id))["error"]
    assert error["type"] == "ChildFailed"
    assert "KeyError" in error["message"]


async def test_a_child_named_like_an_ordinal_gets_a_run_of_its_own(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    @tide.workflow("double")
    async def double(run: Run, n: int) -> int:
        return n * 2

    @tide.workflow("aliasing-parent", max_attempts=1)
    async def aliasing_parent(run: Run) -> list[int]:
        a = await run.child("double", input=1, name="c#2")
        b = await run.child("double", input=2, name="c")
        c = await run.child("double", input=3, name="c")  # automatic name 'c#2'
        return [a, b, c]

    async with working(tide, concurrency=2):
        handle = await tide.enqueue("aliasing-parent")
        status = await wait_status(db, handle.id, "completed", "failed")
    if status == "failed":
        # Refusing the name (like a step name with '#') would be fine too.
        assert (await run_row(db, handle.id))["error"]["type"] == "ConfigurationError"
        return
    assert await tide.runs.wait(handle.id) == [2, 4, 6]
    assert (
        await db.fetchval("SELECT count(*) FROM tidebase.runs WHERE parent_id = $1", handle.id) == 3
    )


async def test_a_child_and_a_fanout_of_the_same_name_do_not_share_a_run(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    @tide.workflow("double")
    async def double(run: Run, n: int) -> int:
        return n * 2

    @tide.workflow("mixed-parent", max_attempts=1)
    async def mixed_parent(run: Run) -> list[Any]:
        single = await run.child("double", input=100, name="work")
        many = await run.fanout("work", [("double", 1), ("double", 2)])
        return [single, many]

    async with working(tide, concurrency=2):
        handle = await tide.enqueue("mixed-parent")
        status = await wait_status(db, handle.id, "completed", "failed")
    assert status == "completed"
    assert await tide.runs.wait(handle.id) == [200, [2, 4]]
    assert (
        await db.fetchval("SELECT count(*) FROM tidebase.runs WHERE parent_id = $1", handle.id) == 3
    )


async def test_a_child_with_the_default_name_and_a_fanout_of_that_name_do_not_share_a_run(
    tide: Tidebase,
) -> None:
    """Regression: a child whose name defaulted to its workflow's ('leaf') and a fanout
    named 'leaf' were given the same child run."""

    @tide.workflow("leaf")
    async def leaf(run: Run, n: int) -> int:
        return n * 10

    @tide.workflow("tree")
    async def tree(run: Run) -> list[int]:
        one = await run.child("leaf", input=1)  # name defaults to the workflow name
        many = await run.fanout("leaf", [("leaf", 2), ("leaf", 3)])
        return [one, *many]

    async with working(tide, concurrency=4, maintenance_interval=0.2):
        h = await tide.enqueue("tree")
        result = await tide.runs.wait(h.id, timeout=20)
        info = await tide.runs.get(h.id)
    assert (result, len(info.children)) == ([10, 20, 30], 3)


async def test_fanout_of_a_non_iterable_is_a_configuration_error(tide: Tidebase) -> None:
    """Regression: run.fanout of something that is not iterable failed with a bare
    TypeError instead of a ConfigurationError."""
    seen: list[str] = []

    @tide.workflow("bad-fanout")
    async def bad_fanout(run: Run) -> str:
        try:
            await run.fanout("many", None)  # type: ignore[arg-type]
        except ConfigurationError:
            seen.append("ConfigurationError")
        except Exception as exc:
            seen.append(type(exc).__name__)
        return "done"

    with anyio.fail_after(10):
        await tide.run("bad-fanout")
    assert seen == ["ConfigurationError"]
