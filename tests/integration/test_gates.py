"""Approval gates on a real Postgres: suspension without a worker slot, exactly-once
resolution, replay after the gate, expiry, tokens, names, bad input, inline runs."""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from typing import Any

import anyio
import asyncpg
import pytest

from tests.integration.control_support import (
    claim_one,
    events,
    gate_names,
    gate_row,
    history,
    lock_waiters,
    snapshot,
    subsequence,
    wait_status,
)
from tests.integration.core_support import FAST, run_row, working
from tidebase_async import (
    ConfigurationError,
    GateAlreadyResolved,
    GateDecision,
    GateInfo,
    GateNotFound,
    GateTokenInvalid,
    Run,
    RunFailed,
    RunNotFound,
    Tidebase,
)


def _decision(d: GateDecision) -> dict[str, Any]:
    return {
        "decision": d.decision,
        "approved": d.approved,
        "expired": d.expired,
        "actor": d.actor,
        "payload": d.payload,
    }


async def test_gate_suspends_and_resumes(tide: Tidebase, db: asyncpg.Connection) -> None:
    executed: list[str] = []

    @tide.workflow("approve-me")
    async def approve_me(run: Run) -> str:
        await run.step("before", lambda: executed.append("before"))
        d = await run.gate("ok", prompt="go?", data={"x": 1})
        assert isinstance(d, GateDecision)
        await run.step("after", lambda: executed.append("after"))
        return f"{d.decision}:{d.actor}"

    async with working(tide, concurrency=1) as worker:
        h = await tide.enqueue("approve-me")
        await wait_status(db, h.id, "waiting")
        gates = await tide.gates.list()
        assert [g.name for g in gates] == ["ok"]
        info = await tide.gates.resolve(h.id, "ok", approved=True, actor="alice")
        assert info.status == "approved"
        assert await tide.runs.wait(h.id, timeout=10) == "approved:alice"
        assert executed == ["before", "after"]
        assert worker.stats.suspended == 1


async def test_worker_with_concurrency_one_runs_other_work_while_a_gate_is_pending(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    executed: Counter[str] = Counter()

    @tide.workflow("gated")
    async def gated(run: Run) -> dict[str, Any]:
        await run.step("before", lambda: executed.update(["before"]))
        d = await run.gate("approve", prompt="Ship it?", data={"draft": 1})
        await run.step("after", lambda: executed.update(["after"]))
        return _decision(d)

    @tide.workflow("quick")
    async def quick(run: Run, n: int) -> int:
        return int(await run.step("double", lambda: n * 2))

    async with working(tide, concurrency=1) as worker:
        gated_run = await tide.enqueue("gated")
        await wait_status(db, gated_run.id, "waiting")
        row = await run_row(db, gated_run.id)
        # Waiting holds no lease and no worker slot.
        assert row["lease_owner"] is None
        assert row["lease_expires_at"] is None
        assert worker.inflight == 0

        others = [await tide.enqueue("quick", input=n) for n in range(3)]
        assert [await tide.runs.wait(h.id, timeout=10) for h in others] == [0, 2, 4]
        # The only slot served them all; the gate is still pending, the run still waits.
        assert await run_row(db, gated_run.id) == row
        gate = await tide.gates.get(gated_run.id, "approve")
        assert gate.status == "pending"
        assert (gate.prompt, gate.data) == ("Ship it?", {"draft": 1})
        assert gate.resolved_at is None

        info = await tide.gates.resolve(
            gated_run.id, "approve", approved=True, actor="alice", payload={"note": "ok"}
        )
        assert (info.status, info.decision, info.actor, info.payload) == (
            "approved",
            "approved",
            "alice",
            {"note": "ok"},
        )
        assert info.resolved_at is not None
        out = await tide.runs.wait(gated_run.id, timeout=10)

    assert out == {
        "decision": "approved",
        "approved": True,
        "expired": False,
        "actor": "alice",
        "payload": {"note": "ok"},
    }
    assert executed == {"before": 1, "after": 1}
    assert worker.stats.suspended == 1
    types = [t for t, _ in await events(db, gated_run.id)]
    assert types == [
        "run.created",
        "run.claimed",
        "step.completed",
        "gate.created",
        "run.waiting",
        "gate.resolved",
        "run.claimed",
        "gate.passed",
        "step.completed",
        "run.completed",
    ], types
    assert await history(db, gated_run.id) == [
        ("step", "before", "completed"),
        ("gate", "approve", "completed"),
        ("step", "after", "completed"),
    ]


async def test_concurrent_approve_and_reject_have_exactly_one_winner(
    tide: Tidebase, db: asyncpg.Connection, dsn: str
) -> None:
    @tide.workflow("vote")
    async def vote(run: Run) -> list[dict[str, Any]]:
        return [_decision(await run.gate("ballot")) for _ in range(3)]

    async with working(tide, concurrency=2) as _, Tidebase(dsn) as other:
        handle = await tide.enqueue("vote")
        winners: list[GateInfo] = []
        for name in ("ballot", "ballot#2", "ballot#3"):
            await wait_status(db, handle.id, "waiting")
            assert (await tide.gates.get(handle.id, name)).status == "pending"
            results = await asyncio.gather(
                *(
                    (tide if i % 2 else other).gates.resolve(
                        handle.id, name, approved=i % 2 == 0, actor=f"r{i}", payload={"i": i}
                    )
                    for i in range(10)
                ),
                return_exceptions=True,
            )
            won = [r for r in results if isinstance(r, GateInfo)]
            lost = [r for r in results if not isinstance(r, GateInfo)]
            assert len(won) == 1, results
            assert len(lost) == 9
            winner = won[0]
            for exc in lost:
                assert isinstance(exc, GateAlreadyResolved), repr(exc)
                assert exc.status == winner.status
            i = int(str(winner.actor)[1:])
            assert winner.status == ("approved" if i % 2 == 0 else "rejected")
            assert winner.payload == {"i": i}
            stored = await gate_row(db, handle.id, name)
            assert stored is not None
            assert (stored["status"], stored["decision"], stored["actor"], stored["payload"]) == (
                winner.status,
                winner.status,
                winner.actor,
                {"i": i},
            )
            assert stored["resolved_at"] == winner.resolved_at
            winners.append(winner)
        out = await tide.runs.wait(handle.id, timeout=10)

    assert out == [
        {
            "decision": w.status,
            "approved": w.status == "approved",
            "expired": False,
            "actor": w.actor,
            "payload": w.payload,
        }
        for w in winners
    ]
    resolved = [d for t, d in await events(db, handle.id) if t == "gate.resolved"]
    names = ("ballot", "ballot#2", "ballot#3")
    assert [(d["name"], d["decision"], d["actor"]) for d in resolved] == [
        (n, w.status, w.actor) for n, w in zip(names, winners, strict=True)
    ]


async def test_replay_after_the_gate_neither_blocks_again_nor_reruns_earlier_steps(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    executed: Counter[str] = Counter()

    def flaky() -> str:
        executed["flaky"] += 1
        if executed["flaky"] == 1:
            raise RuntimeError("fails once, after the gate")
        return "done"

    @tide.workflow("review", max_attempts=3, retry=FAST)
    async def review(run: Run) -> dict[str, Any]:
        await run.step("prepare", lambda: executed.update(["prepare"]))
        d = await run.gate("approve")
        executed["past-gate"] += 1
        result = await run.step("flaky", flaky)
        return {**_decision(d), "result": result}

    async with working(tide, concurrency=2) as worker:
        handle = await tide.enqueue("review")
        await wait_status(db, handle.id, "waiting")
        await tide.gates.resolve(handle.id, "approve", approved=True, actor="bob", payload=[1, 2])
        out = await tide.runs.wait(handle.id, timeout=10)

    # The replay after the failure returned the recorded decision without waiting.
    assert out == {
        "decision": "approved",
        "approved": True,
        "expired": False,
        "actor": "bob",
        "payload": [1, 2],
        "result": "done",
    }
    assert executed == {"prepare": 1, "flaky": 2, "past-gate": 2}
    assert worker.stats.suspended == 1
    assert worker.stats.retried == 1
    types = [t for t, _ in await events(db, handle.id)]
    # One gate, one wait; the third claim replays past the gate straight to 'flaky'.
    assert types == [
        "run.created",
        "run.claimed",
        "step.completed",
        "gate.created",
        "run.waiting",
        "gate.resolved",
        "run.claimed",
        "gate.passed",
        "step.failed",
        "run.retrying",
        "run.claimed",
        "step.completed",
        "run.completed",
    ], types
    assert await gate_names(db, handle.id) == ["approve"]


async def test_gate_timeout_gives_the_workflow_an_expired_decision(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    @tide.workflow("expiring")
    async def expiring(run: Run) -> dict[str, Any]:
        return _decision(await run.gate("approve", timeout=0.4))

    async with working(tide, concurrency=1, maintenance_interval=0.2):
        handle = await tide.enqueue("expiring")
        out = await tide.runs.wait(handle.id, timeout=10)
    assert out == {
        "decision": "expired",
        "approved": False,
        "expired": True,
        "actor": None,
        "payload": None,
    }
    gate = await tide.gates.get(handle.id, "approve")
    assert (gate.status, gate.decision, gate.actor) == ("expired", "expired", None)
    assert gate.expires_at is not None and gate.resolved_at is not None
    assert gate.resolved_at >= gate.expires_at
    with pytest.raises(GateAlreadyResolved) as exc:
        await tide.gates.resolve(handle.id, "approve", approved=True, actor="late")
    assert exc.value.status == "expired"
    types = [t for t, _ in await events(db, handle.id)]
    assert subsequence(
        ["gate.created", "run.waiting", "run.resumed", "gate.expired", "gate.passed"], types
    ), types
    assert types.count("gate.resolved") == 0


async def test_a_resolve_after_the_timeout_expires_the_gate_instead_of_deciding_it(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    @tide.workflow("expiring")
    async def expiring(run: Run) -> dict[str, Any]:
        return _decision(await run.gate("approve", timeout=0.3))

    async with working(tide, concurrency=1):
        handle = await tide.enqueue("expiring")
        await wait_status(db, handle.id, "waiting")
    # No worker: nobody expires the gate but the late resolve itself.
    while not await db.fetchval(
        "SELECT expires_at <= tidebase.now() FROM tidebase.gates WHERE run_id = $1", handle.id
    ):
        await anyio.sleep(0.05)
    with pytest.raises(GateAlreadyResolved) as exc:
        await tide.gates.resolve(handle.id, "approve", approved=True, actor="late")
    assert exc.value.status == "expired"
    stored = await gate_row(db, handle.id, "approve")
    assert stored is not None
    assert (stored["status"], stored["actor"]) == ("expired", None)
    async with working(tide, concurrency=1):
        out = await tide.runs.wait(handle.id, timeout=10)
    assert out["decision"] == "expired"
    assert out["actor"] is None


async def test_a_gate_expiring_while_it_is_resolved_does_not_deadlock(
    tide: Tidebase, db: asyncpg.Connection, dsn: str
) -> None:
    """Regression: a gate's expiry (by its worker) and its resolution (by a client) took the
    gate's and the run's rows in opposite orders, and deadlocked when both queued behind
    another session holding the run row."""
    claimed = await claim_one(tide, "gated")
    store = tide.store
    # The worker reaches the gate; its timeout is over (timeout 0): it is due.
    gate = await store.open_gate(
        run_id=claimed.id,
        worker_id="w-direct",
        attempt=claimed.attempt,
        name="g",
        prompt=None,
        data=None,
        channels=None,
        timeout_s=0.0,
    )
    assert gate.status == "pending"
    # A third session holds the run row a moment (any fenced write of the worker, a
    # heartbeat), so that the resolver and the expirer queue up behind it.
    holder = await asyncpg.connect(dsn)
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute(
            "SELECT 1 FROM tidebase.runs WHERE id = $1 FOR NO KEY UPDATE", claimed.id
        )
        resolve = asyncio.create_task(
            store.resolve_gate(
                run_id=claimed.id,
                name="g",
                status="approved",
                actor="alice",
                payload=None,
                token_hash=None,
                check_token=False,
            )
        )
        await lock_waiters(db, 1)  # the resolver waits for the run row
        expire = asyncio.create_task(
            store.expire_gate(
                run_id=claimed.id, worker_id="w-direct", attempt=claimed.attempt, name="g"
            )
        )
        await lock_waiters(db, 2)  # the expirer holds the gate row, waits for the run
        await tx.commit()
        outcomes = await asyncio.gather(resolve, expire, return_exceptions=True)
    finally:
        await holder.close()
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    assert not failures, f"a side failed: {failures!r}"


async def test_resolve_token_is_single_use_and_stored_hashed(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    @tide.workflow("gated")
    async def gated(run: Run) -> dict[str, Any]:
        return _decision(await run.gate("approve"))

    async with working(tide, concurrency=1):
        handle = await tide.enqueue("gated")
        await wait_status(db, handle.id, "waiting")
        assert (await gate_row(db, handle.id, "approve") or {})["token_hash"] is None

        first = await tide.gates.token(handle.id, "approve")
        token = await tide.gates.token(handle.id, "approve")  # replaces the first
        assert isinstance(token, str) and len(token) >= 32
        assert token != first
        stored = await gate_row(db, handle.id, "approve")
        assert stored is not None
        assert bytes(stored["token_hash"]) == hashlib.sha256(token.encode()).digest()
        assert token.encode() not in bytes(stored["token_hash"])

        before = await snapshot(db)
        for bad in (first, token + "x", "", "A" * 500):
            with pytest.raises(GateTokenInvalid):
                await tide.gates.resolve(handle.id, "approve", approved=True, token=bad)
        assert await snapshot(db) == before

        info = await tide.gates.resolve(
            handle.id, "approve", approved=False, actor="reviewer", token=token
        )
        assert info.status == "rejected"
        stored = await gate_row(db, handle.id, "approve")
        assert stored is not None and stored["token_hash"] is None
        out = await tide.runs.wait(handle.id, timeout=10)
        # Used: a second resolve with it is refused and changes nothing.
        before = await snapshot(db)
        with pytest.raises(GateAlreadyResolved) as exc:
            await tide.gates.resolve(handle.id, "approve", approved=True, token=token)
        assert exc.value.status == "rejected"
        assert await snapshot(db) == before
        with pytest.raises(GateAlreadyResolved):
            await tide.gates.token(handle.id, "approve")
        with pytest.raises(GateNotFound):
            await tide.gates.token(handle.id, "nope")
    assert (out["decision"], out["actor"]) == ("rejected", "reviewer")


async def test_trusted_resolve_without_a_token_works_while_a_token_is_outstanding(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    @tide.workflow("gated")
    async def gated(run: Run) -> dict[str, Any]:
        return _decision(await run.gate("approve"))

    async with working(tide, concurrency=1):
        handle = await tide.enqueue("gated")
        await wait_status(db, handle.id, "waiting")
        token = await tide.gates.token(handle.id, "approve")
        info = await tide.gates.resolve(handle.id, "approve", approved=True, actor="admin")
        assert info.status == "approved"
        # The decision consumed the outstanding token.
        with pytest.raises(GateAlreadyResolved):
            await tide.gates.resolve(handle.id, "approve", approved=False, token=token)
        out = await tide.runs.wait(handle.id, timeout=10)
    assert (out["decision"], out["actor"]) == ("approved", "admin")


async def test_resolving_a_missing_gate_or_run_or_with_a_wrong_token_changes_nothing(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    @tide.workflow("gated")
    async def gated(run: Run) -> dict[str, Any]:
        return _decision(await run.gate("approve"))

    async with working(tide, concurrency=1):
        handle = await tide.enqueue("gated")
        await wait_status(db, handle.id, "waiting")
        await tide.gates.token(handle.id, "approve")
    # No worker from here on: nothing else writes.
    before = await snapshot(db)
    assert len(before["gates"]) == 1

    with pytest.raises(GateNotFound) as gnf:
        await tide.gates.resolve(handle.id, "approve#2", approved=True)
    assert "approve#2" in str(gnf.value) and str(handle.id) in str(gnf.value)
    with pytest.raises(GateNotFound):
        await tide.gates.resolve(handle.id, "Approve", approved=True)
    missing = "00000000-0000-4000-8000-000000000000"
    with pytest.raises(RunNotFound) as rnf:
        await tide.gates.resolve(missing, "approve", approved=True)
    assert missing in str(rnf.value)
    with pytest.raises(RunNotFound):
        await tide.gates.resolve("not-a-uuid", "approve", approved=True)
    with pytest.raises(GateTokenInvalid) as bad:
        await tide.gates.resolve(handle.id, "approve", approved=True, token="wrong")
    assert "token" in str(bad.value)
    with pytest.raises(GateNotFound):
        await tide.gates.get(handle.id, "nope")
    with pytest.raises(ConfigurationError):
        await tide.gates.resolve(handle.id, "approve", approved="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        await tide.gates.resolve(handle.id, "", approved=True)

    assert await snapshot(db) == before
    assert (await tide.gates.get(handle.id, "approve")).status == "pending"


async def test_reused_gate_names_follow_the_ordinal_rule(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    @tide.workflow("twice")
    async def twice(run: Run) -> list[str | None]:
        await run.step("approve", lambda: None)  # a step of the same name: its own ordinals
        first = await run.gate("approve")
        second = await run.gate("approve")
        return [first.actor, second.actor]

    async with working(tide, concurrency=1):
        handle = await tide.enqueue("twice")
        await wait_status(db, handle.id, "waiting")
        assert await gate_names(db, handle.id) == ["approve"]
        with pytest.raises(GateNotFound):
            await tide.gates.resolve(handle.id, "approve#2", approved=True)
        await tide.gates.resolve(handle.id, "approve", approved=True, actor="first")
        await wait_status(db, handle.id, "waiting")
        # Wait until the second gate exists (the run may wait again before it is seen).
        while len(await gate_names(db, handle.id)) < 2:
            await anyio.sleep(0.02)
        assert await gate_names(db, handle.id) == ["approve", "approve#2"]
        await tide.gates.resolve(handle.id, "approve#2", approved=True, actor="second")
        assert await tide.runs.wait(handle.id, timeout=10) == ["first", "second"]
    assert await history(db, handle.id) == [
        ("step", "approve", "completed"),
        ("gate", "approve", "completed"),
        ("gate", "approve#2", "completed"),
    ]
    assert [g.name for g in (await tide.runs.get(handle.id)).gates] == ["approve", "approve#2"]


async def test_a_gate_named_like_an_ordinal_does_not_alias_a_later_gate(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    @tide.workflow("aliased")
    async def aliased(run: Run) -> list[str | None]:
        explicit = await run.gate("approve#2")
        first = await run.gate("approve")
        second = await run.gate("approve")  # automatic name 'approve#2'
        return [explicit.actor, first.actor, second.actor]

    async with working(tide, concurrency=1):
        handle = await tide.enqueue("aliased")
        status = await wait_status(db, handle.id, "waiting", "failed")
        if status == "waiting":
            await tide.gates.resolve(handle.id, "approve#2", approved=True, actor="explicit")
            while len(await gate_names(db, handle.id)) < 2:
                await anyio.sleep(0.02)
            # The run is queued again from this commit on: the next 'waiting' is new.
            await tide.gates.resolve(handle.id, "approve", approved=True, actor="first")
            await wait_status(db, handle.id, "waiting", "completed", "failed")
    # Either the name is refused like a step name with '#' (ConfigurationError), or the
    # third gate waits for a decision of its own. Passing it with the first gate's
    # decision, which nobody gave for it, is wrong.
    info = await tide.runs.get(handle.id)
    assert info.status != "completed", (
        f"the third gate was passed without a decision: output {info.output}"
    )
    if info.status == "failed":
        assert info.error is not None
        assert info.error["type"] == "ConfigurationError"
        assert "'#'" in info.error["message"]
    else:
        assert (await tide.gates.list(run_id=handle.id))[-1].status == "pending"


async def test_a_wait_name_with_a_hash_is_refused(tide: Tidebase) -> None:
    """Regression: a gate named 'ok#2' by its workflow was the name the ordinal rule gives
    the second gate 'ok', so the two were one gate, decided by whoever resolved either.
    Names with '#' are refused."""

    @tide.workflow("hash-gate")
    async def hash_gate(run: Run) -> str:
        await run.gate("ok#2")
        return "passed"

    async with working(tide, concurrency=1, maintenance_interval=0.2):
        h = await tide.enqueue("hash-gate")
        with pytest.raises(RunFailed) as failed:
            await tide.runs.wait(h.id, timeout=10)
    assert failed.value.error["type"] == "ConfigurationError"
    assert "may not contain '#'" in failed.value.error["message"]
    assert await tide.gates.list(run_id=h.id, status=None) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timeout": -1}, "timeout must be >= 0"),
        ({"timeout": "soon"}, "timeout must be seconds"),
        ({"channels": ["ftp://example.com/hook"]}, "ftp://example.com/… is not usable: the scheme"),
        ({"channels": ["not a url"]}, "<url> is not usable"),
        ({"channels": "https://example.com/hook"}, "channels must be a list of URLs"),
        ({"prompt": 42}, "prompt must be a str"),
        ({"prompt": b"bytes"}, "prompt must be a str"),
    ],
)
async def test_bad_gate_arguments_fail_the_run_with_a_clear_configuration_error(
    tide: Tidebase, db: asyncpg.Connection, kwargs: dict[str, Any], message: str
) -> None:
    @tide.workflow("bad-gate", max_attempts=3, retry=FAST)
    async def bad_gate(run: Run) -> str:
        await run.gate("approve", **kwargs)
        return "passed"

    async with working(tide, concurrency=1) as worker:
        handle = await tide.enqueue("bad-gate")
        with pytest.raises(RunFailed) as exc:
            await tide.runs.wait(handle.id, timeout=10)
    assert exc.value.error["type"] == "ConfigurationError"
    assert message in exc.value.error["message"]
    assert "'approve'" in exc.value.error["message"]
    # Permanent: failed on the first attempt, no gate recorded.
    assert worker.stats.failed == 1
    assert worker.stats.retried == 0
    assert await gate_names(db, handle.id) == []


async def test_inline_run_waits_at_the_gate_and_returns_after_a_resolve_elsewhere(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    executed: Counter[str] = Counter()

    @tide.workflow("inline-gated")
    async def inline_gated(run: Run, x: int) -> dict[str, Any]:
        await run.step("before", lambda: executed.update(["before"]))
        d = await run.gate("approve")
        await run.step("after", lambda: executed.update(["after"]))
        return {**_decision(d), "x": x}

    result: list[Any] = []

    async def call() -> None:
        result.append(await tide.run("inline-gated", input=7))

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        while not await tide.gates.list(status="pending"):
            await anyio.sleep(0.02)
        [gate] = await tide.gates.list(status="pending")
        assert gate.name == "approve"
        await wait_status(db, gate.run_id, "waiting")
        assert result == []  # the call is still waiting
        await tide.gates.resolve(gate.run_id, "approve", approved=True, actor="carol")
        with anyio.fail_after(10):
            while not result:
                await anyio.sleep(0.02)
    assert result == [
        {
            "decision": "approved",
            "approved": True,
            "expired": False,
            "actor": "carol",
            "payload": None,
            "x": 7,
        }
    ]
    assert executed == {"before": 1, "after": 1}
    row = await run_row(db, gate.run_id)
    assert row["status"] == "completed"


async def test_gates_list_filters_by_status_and_run(tide: Tidebase, db: asyncpg.Connection) -> None:
    @tide.workflow("gated")
    async def gated(run: Run, n: int) -> str | None:
        return (await run.gate("approve", prompt=f"#{n}")).actor

    async with working(tide, concurrency=2):
        a = await tide.enqueue("gated", input=1)
        b = await tide.enqueue("gated", input=2)
        await wait_status(db, a.id, "waiting")
        await wait_status(db, b.id, "waiting")
        assert {g.run_id for g in await tide.gates.list()} == {a.id, b.id}
        await tide.gates.resolve(a.id, "approve", approved=False, actor="x")
        assert [g.run_id for g in await tide.gates.list(status="pending")] == [b.id]
        assert [g.run_id for g in await tide.gates.list(status="rejected")] == [a.id]
        assert [g.prompt for g in await tide.gates.list(status=None, run_id=b.id)] == ["#2"]
        with pytest.raises(ConfigurationError):
            await tide.gates.list(status="bogus")
        assert await tide.runs.wait(a.id, timeout=10) == "x"
