"""Events by key (``run.wait_for_event``, ``tide.events.send``) on a real Postgres:
stored then received, woken, broadcast to every waiter, a stored event consumed by one
waiter only, timeouts with no delivery after them, replay from the checkpoint,
exactly-once under concurrent senders and waiters, a worker process killed while a run
waits, the HTTP route, the MCP tool, the CLI, and bad input. (The run event log is
``test_events.py``.)"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any
from uuid import UUID

import anyio
import asyncpg
import pytest

from tests.integration import procs
from tests.integration.control_support import events, history, snapshot, wait_status
from tests.integration.core_support import eventually, working
from tidebase_async import (
    ConfigurationError,
    KeyedEvent,
    PayloadTooLarge,
    Run,
    SerializationError,
    Tidebase,
    WaitTimeout,
)
from tidebase_async.cli.main import main


def register(tide: Tidebase) -> None:
    """``waiter``: waits for event ``input["name"]`` (default ``payment``) with key
    ``input["key"]`` and returns what it received, or ``"timeout"``."""

    @tide.workflow("waiter")
    async def waiter(run: Run, input: dict[str, Any]) -> Any:
        try:
            payload = await run.wait_for_event(
                input.get("name", "payment"), key=input["key"], timeout=input.get("timeout")
            )
        except WaitTimeout as exc:
            return {"timeout": str(exc)}
        return {"got": payload}


async def keyed_events(db: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await db.fetch("SELECT * FROM tidebase.keyed_events ORDER BY sent_at, id")
    out = []
    for row in rows:
        item = dict(row)
        item["payload"] = json.loads(item["payload"])
        out.append(item)
    return out


async def waits_of(db: asyncpg.Connection, run_id: UUID) -> list[tuple[str, str]]:
    rows = await db.fetch(
        "SELECT name, status FROM tidebase.event_waits WHERE run_id = $1 ORDER BY name", run_id
    )
    return [(r["name"], r["status"]) for r in rows]


async def open_waits(db: asyncpg.Connection, n: int) -> None:
    async def probe() -> bool:
        count = await db.fetchval(
            "SELECT count(*) FROM tidebase.event_waits w JOIN tidebase.runs r ON r.id = w.run_id"
            " WHERE w.status = 'waiting' AND r.status = 'waiting'"
        )
        return int(count) >= n

    await eventually(probe, timeout=10, what=f"{n} runs waiting for events")


# -- the semantics -------------------------------------------------------------------------


async def test_an_event_sent_before_anyone_waits_is_stored_then_received(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    register(tide)
    sent = await tide.events.send("payment", key="order-1", payload={"amount": 42})
    assert isinstance(sent, KeyedEvent)
    assert (sent.status, sent.received_by, sent.payload) == ("stored", [], {"amount": 42})
    assert [e.id for e in await tide.events.list()] == [sent.id]
    async with working(tide):
        h = await tide.enqueue("waiter", input={"key": "order-1"})
        assert await tide.runs.wait(h.id, timeout=10) == {"got": {"amount": 42}}
    (stored,) = await keyed_events(db)
    assert (stored["status"], stored["received_by"]) == ("consumed", [h.id])
    assert await tide.events.list() == []
    assert await history(db, h.id) == [("event", "payment", "completed")]
    types = [t for t, _ in await events(db, h.id)]
    # Received at once: the run never waited.
    assert "event.received" in types and "run.waiting" not in types


async def test_a_waiting_run_is_woken_by_the_event(tide: Tidebase, db: asyncpg.Connection) -> None:
    register(tide)
    async with working(tide, concurrency=1) as worker:
        h = await tide.enqueue("waiter", input={"key": 7})
        await wait_status(db, h.id, "waiting")
        row = await db.fetchrow("SELECT lease_owner FROM tidebase.runs WHERE id = $1", h.id)
        assert row["lease_owner"] is None  # no slot held
        (wait,) = await tide.events.waits()
        assert (wait.run_id, wait.wait, wait.name, wait.key) == (h.id, "payment", "payment", "7")
        sent = await tide.events.send("payment", key=7, payload=["paid"])  # int key: "7"
        assert (sent.status, sent.received_by) == ("delivered", [h.id])
        assert await tide.runs.wait(h.id, timeout=10) == {"got": ["paid"]}
        assert worker.stats.suspended == 1
    assert await waits_of(db, h.id) == [("payment", "received")]
    assert await tide.events.waits() == []
    assert await tide.events.list() == []  # delivered, not stored
    types = [t for t, _ in await events(db, h.id)]
    assert types.count("event.waiting") == 1 and types.count("event.received") == 1


async def test_every_run_waiting_for_a_key_receives_one_event_once(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    register(tide)
    async with working(tide, concurrency=2):
        runs = [(await tide.enqueue("waiter", input={"key": "k"})).id for _ in range(3)]
        other = (await tide.enqueue("waiter", input={"key": "other"})).id
        await open_waits(db, 4)
        sent = await tide.events.send("payment", key="k", payload=1)
        assert sent.status == "delivered" and sorted(sent.received_by) == sorted(runs)
        for rid in runs:
            assert await tide.runs.wait(rid, timeout=10) == {"got": 1}
        # The other key's run still waits; a second event of "k" is stored (nobody waits).
        assert await tide.runs.status(other) == "waiting"
        again = await tide.events.send("payment", key="k", payload=2)
        assert again.status == "stored"
        for rid in runs:
            assert await waits_of(db, rid) == [("payment", "received")]
            assert await history(db, rid) == [("event", "payment", "completed")]
        await tide.events.send("payment", key="other", payload=3)
        assert await tide.runs.wait(other, timeout=10) == {"got": 3}
    assert [e.payload for e in await tide.events.list()] == [2]


async def test_a_stored_event_is_consumed_by_exactly_one_of_two_later_waiters(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    register(tide)
    first = await tide.events.send("payment", key="k", payload="one")
    async with working(tide, concurrency=2):
        a = await tide.enqueue("waiter", input={"key": "k"})
        b = await tide.enqueue("waiter", input={"key": "k"})
        await open_waits(db, 1)
        outputs = {}
        for h in (a, b):
            status = await wait_status(db, h.id, "completed", "waiting")
            if status == "completed":
                outputs[h.id] = await tide.runs.wait(h.id, timeout=10)
        assert list(outputs.values()) == [{"got": "one"}]
        (late,) = [h.id for h in (a, b) if h.id not in outputs]
        second = await tide.events.send("payment", key="k", payload="two")
        assert (second.status, second.received_by) == ("delivered", [late])
        assert await tide.runs.wait(late, timeout=10) == {"got": "two"}
    rows = {r["id"]: r for r in await keyed_events(db)}
    assert rows[first.id]["status"] == "consumed"
    assert rows[first.id]["received_by"] == list(outputs)


async def test_stored_events_of_a_key_are_received_oldest_first(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    @tide.workflow("twice")
    async def twice(run: Run) -> list[Any]:
        return [await run.wait_for_event("tick", key="k") for _ in range(3)]

    for n in range(3):
        await tide.events.send("tick", key="k", payload=n)
    async with working(tide):
        h = await tide.enqueue("twice")
        assert await tide.runs.wait(h.id, timeout=10) == [0, 1, 2]
    assert await history(db, h.id) == [
        ("event", "tick", "completed"),
        ("event", "tick#2", "completed"),
        ("event", "tick#3", "completed"),
    ]


async def test_an_inline_run_waits_in_place_for_its_event(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    register(tide)
    result: list[Any] = []

    async def inline() -> None:
        result.append(await tide.run("waiter", input={"key": "inline", "timeout": 30}))

    async with anyio.create_task_group() as tg:
        tg.start_soon(inline)
        await open_waits(db, 1)
        sent = await tide.events.send("payment", key="inline", payload="here")
        assert sent.status == "delivered"
    assert result == [{"got": "here"}]


# -- timeouts ------------------------------------------------------------------------------


async def test_a_timeout_raises_wait_timeout_and_a_later_event_stays_stored(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    register(tide)
    async with working(tide, maintenance_interval=0.05):
        h = await tide.enqueue("waiter", input={"key": "k", "timeout": 0.3})
        out = await tide.runs.wait(h.id, timeout=10)
        assert "no event 'payment' with key 'k'" in out["timeout"]
        late = await tide.events.send("payment", key="k", payload="late")
        assert (late.status, late.received_by) == ("stored", [])
        await anyio.sleep(0.3)
    assert await waits_of(db, h.id) == [("payment", "timed_out")]
    assert await history(db, h.id) == [("event", "payment", "failed")]
    assert [e.id for e in await tide.events.list()] == [late.id]
    assert "event.timed_out" in [t for t, _ in await events(db, h.id)]


async def test_an_event_sent_after_the_timeout_but_before_the_run_woke_is_not_received(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    """No phantom delivery: the send finds the wait past its expiry (no worker has
    woken the run yet) and stores the event; the run then times out, and the event
    goes to the next waiter."""
    register(tide)
    async with working(tide):
        h = await tide.enqueue("waiter", input={"key": "k", "timeout": 0.3})
        await wait_status(db, h.id, "waiting")
    # No worker now: nothing wakes the run when its time runs out.
    expires = await db.fetchval("SELECT expires_at FROM tidebase.event_waits")
    while not await db.fetchval("SELECT tidebase.now() > $1", expires):
        await anyio.sleep(0.05)
    late = await tide.events.send("payment", key="k", payload="late")
    assert late.status == "stored"
    assert await tide.runs.status(h.id) == "waiting"
    async with working(tide, maintenance_interval=0.05):
        assert "timeout" in await tide.runs.wait(h.id, timeout=10)
        nxt = await tide.enqueue("waiter", input={"key": "k"})
        assert await tide.runs.wait(nxt.id, timeout=10) == {"got": "late"}
    (row,) = await keyed_events(db)
    assert (row["status"], row["received_by"]) == ("consumed", [nxt.id])


async def test_a_zero_timeout_takes_a_stored_event_or_times_out_at_once(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    register(tide)
    async with working(tide):
        h = await tide.enqueue("waiter", input={"key": "k", "timeout": 0})
        assert "timeout" in await tide.runs.wait(h.id, timeout=10)
        await tide.events.send("payment", key="k", payload=5)
        h2 = await tide.enqueue("waiter", input={"key": "k", "timeout": 0})
        assert await tide.runs.wait(h2.id, timeout=10) == {"got": 5}


# -- replay ---------------------------------------------------------------------------------


async def test_replay_returns_the_checkpointed_payload_without_waiting_again(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    seen: list[Any] = []

    @tide.workflow("event-then-gate")
    async def event_then_gate(run: Run) -> Any:
        payload = await run.wait_for_event("payment", key="order-9", timeout=60)
        seen.append(payload)
        decision = await run.gate("ship")
        return {"payload": payload, "approved": decision.approved}

    async with working(tide):
        h = await tide.enqueue("event-then-gate")
        await wait_status(db, h.id, "waiting")
        await tide.events.send("payment", key="order-9", payload={"paid": True})
        await eventually(lambda: tide.gates.list(), what="the gate")
        await wait_status(db, h.id, "waiting")
        # Whatever the event tables say now, the replay reads the checkpoint.
        await db.execute("DELETE FROM tidebase.keyed_events")
        await db.execute("UPDATE tidebase.event_waits SET payload = '\"tampered\"'")
        await tide.gates.resolve(h.id, "ship", approved=True)
        assert await tide.runs.wait(h.id, timeout=10) == {
            "payload": {"paid": True},
            "approved": True,
        }
    assert seen == [{"paid": True}, {"paid": True}]
    assert await history(db, h.id) == [
        ("event", "payment", "completed"),
        ("gate", "ship", "completed"),
    ]
    types = [t for t, _ in await events(db, h.id)]
    assert types.count("event.waiting") == 1 and types.count("event.passed") == 1
    info = await tide.runs.get(h.id)
    assert (info.steps[0].kind, info.steps[0].output) == ("event", {"paid": True})


async def test_a_recorded_timeout_is_raised_again_on_replay(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    @tide.workflow("timeout-then-gate")
    async def timeout_then_gate(run: Run) -> str:
        try:
            await run.wait_for_event("payment", key="k", timeout=0.2)
            got = "event"
        except WaitTimeout:
            got = "timeout"
        await run.gate("after")
        return got

    async with working(tide, maintenance_interval=0.05):
        h = await tide.enqueue("timeout-then-gate")
        await eventually(lambda: tide.gates.list(), what="the gate")
        await wait_status(db, h.id, "waiting")
        # Sent now, it must not change what the replay sees.
        assert (await tide.events.send("payment", key="k")).status == "stored"
        await tide.gates.resolve(h.id, "after", approved=True)
        assert await tide.runs.wait(h.id, timeout=10) == "timeout"
    assert len(await tide.events.list()) == 1


async def test_a_reset_to_before_a_timed_out_wait_waits_anew(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    @tide.workflow("must-pay")
    async def must_pay(run: Run) -> Any:
        return await run.wait_for_event("payment", key="k", timeout=0.2)

    async with working(tide, maintenance_interval=0.05):
        h = await tide.enqueue("must-pay", max_attempts=1)
        await wait_status(db, h.id, "failed")
        assert (await tide.runs.get(h.id)).error["type"] == "WaitTimeout"  # type: ignore[index]
        await tide.events.send("payment", key="k", payload="now")
        await tide.runs.reset(h.id, to_step="payment")
        assert await tide.runs.wait(h.id, timeout=10) == "now"


# -- concurrency ---------------------------------------------------------------------------


async def test_concurrent_senders_and_waiters_deliver_every_event_as_specified(
    tide: Tidebase, dsn: str, db: asyncpg.Connection
) -> None:
    """20 waiters and 20 senders on 4 keys at once, on two workers: every run
    receives exactly one event of its key; each event is delivered to the runs that
    waited when it was sent, or consumed by exactly one later waiter, or still stored;
    never stored while a run of its key waits; nothing lost or received twice."""
    register(tide)
    keys = [f"k{i}" for i in range(4)]
    second = Tidebase(dsn)
    register(second)
    async with second, working(tide, concurrency=8), working(second, concurrency=8):
        run_ids: list[UUID] = []

        rng = random.Random(18)
        delays = [rng.uniform(0, 0.5) for _ in range(40)]

        async def start(i: int) -> None:
            await anyio.sleep(delays[i])
            run_ids.append((await tide.enqueue("waiter", input={"key": keys[i % 4]})).id)

        async def send(i: int) -> None:
            await anyio.sleep(delays[20 + i])
            await tide.events.send("payment", key=keys[i % 4], payload={"n": i})

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(start, i)
                tg.start_soon(send, i)
        # Settle: every run received its event or waits (parked) for one.
        await eventually(
            lambda: db.fetchval(
                "SELECT count(*) = 20 FROM tidebase.runs WHERE status IN ('completed', 'waiting')"
                " AND (status = 'completed' OR EXISTS (SELECT 1 FROM tidebase.event_waits w"
                " WHERE w.run_id = runs.id AND w.status = 'waiting'))"
            ),
            what="every run received or waits",
        )
        # Never stored while a run of the key waits.
        assert not await db.fetchval(
            "SELECT count(*) FROM tidebase.keyed_events e JOIN tidebase.event_waits w"
            " ON w.event_name = e.name AND w.event_key = e.key"
            " WHERE e.status = 'stored' AND w.status = 'waiting'"
        )
        top_ups = 0
        for key in keys:
            if await tide.events.waits(key=key):
                await tide.events.send("payment", key=key, payload={"n": 100 + top_ups})
                top_ups += 1
        outputs = {rid: await tide.runs.wait(rid, timeout=15) for rid in run_ids}
    sent = {e["payload"]["n"]: e for e in await keyed_events(db)}
    assert len(sent) == 20 + top_ups
    received: Counter[UUID] = Counter()
    for rid, out in outputs.items():
        event = sent[out["got"]["n"]]
        assert rid in event["received_by"], (rid, event)
        received[rid] += 1
        assert (await tide.runs.get(rid)).input["key"] == event["key"]
    assert set(received.values()) == {1}
    for event in sent.values():
        got = [rid for rid, out in outputs.items() if out["got"]["n"] == event["payload"]["n"]]
        assert sorted(got) == sorted(event["received_by"]), event
        if event["status"] == "consumed":
            assert len(got) == 1
        elif event["status"] == "stored":
            assert got == []
        else:
            assert event["status"] == "delivered" and got
    for rid in run_ids:
        assert await waits_of(db, rid) == [("payment", "received")]
        assert await history(db, rid) == [("event", "payment", "completed")]


# -- a worker process killed while a run waits ---------------------------------------------


async def test_an_event_reaches_a_run_whose_worker_was_killed_while_it_waited(
    tide: Tidebase, db: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    await procs.create_step_log(db)
    async with procs.Workers(dsn, tmp_path) as workers:
        first = await workers.start(name="first", concurrency=2)
        handle = await tide.enqueue("event_waiter", input={"key": "order-5"})
        await procs.wait_status(db, handle.id, "waiting", timeout=15)
        first.kill()  # SIGKILL
        # No worker alive: the event is delivered to the waiting run all the same.
        sent = await tide.events.send("payment", key="order-5", payload={"ok": 1})
        assert (sent.status, sent.received_by) == ("delivered", [handle.id])
        assert await procs.run_status(db, handle.id) == "queued"
        second = await workers.start(name="second", concurrency=2)
        await procs.wait_status(db, handle.id, "completed", timeout=15)
    assert await procs.run_output(db, handle.id) == {"payload": {"ok": 1}, "pid": second.pid}
    assert await procs.step_log(db, handle.id) == [("before", first.pid), ("after", second.pid)]


async def test_waits_and_sends_stay_exactly_once_while_worker_processes_are_killed(
    tide: Tidebase, db: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    await procs.create_step_log(db)
    keys = ["a", "b", "c"]
    async with procs.Workers(dsn, tmp_path) as workers:
        doomed = await workers.start(name="doomed", concurrency=4, lease=1.0)
        await workers.start(name="steady", concurrency=4, lease=1.0)
        run_ids: list[UUID] = []
        rng = random.Random(7)
        delays = [rng.uniform(0, 0.6) for _ in range(24)]

        async def start(i: int) -> None:
            await anyio.sleep(delays[i])
            handle = await tide.enqueue("event_waiter", input={"key": keys[i % 3]})
            run_ids.append(handle.id)

        async def send(i: int) -> None:
            await anyio.sleep(delays[12 + i])
            await tide.events.send("payment", key=keys[i % 3], payload={"n": i})

        async def kill() -> None:
            await anyio.sleep(0.3)
            doomed.kill()
            await workers.start(name="fresh", concurrency=4, lease=1.0)

        async with anyio.create_task_group() as tg:
            tg.start_soon(kill)
            for i in range(12):
                tg.start_soon(start, i)
                tg.start_soon(send, i)
        n = 100
        while True:
            done = await db.fetchval(
                "SELECT count(*) FROM tidebase.runs WHERE id = ANY($1) AND status = 'completed'",
                run_ids,
            )
            if done == len(run_ids):
                break
            for key in keys:
                if await tide.events.waits(key=key):
                    await tide.events.send("payment", key=key, payload={"n": n})
                    n += 1
            await anyio.sleep(0.2)
            assert n < 200, "runs never completed"
    sent = {e["payload"]["n"]: e for e in await keyed_events(db)}
    got: dict[int, list[UUID]] = {}
    for rid in run_ids:
        out = await procs.run_output(db, rid)
        got.setdefault(out["payload"]["n"], []).append(rid)
        assert await waits_of(db, rid) == [("payment", "received")]
    for number, event in sent.items():
        assert sorted(got.get(number, [])) == sorted(event["received_by"]), event
        assert event["status"] != "consumed" or len(event["received_by"]) == 1


# -- HTTP, MCP, CLI -------------------------------------------------------------------------


API_KEY = "events-key-9c1f"


async def test_post_events_sends_an_event_behind_the_api_key(
    dsn: str, db: asyncpg.Connection
) -> None:
    from tests.integration.web_support import bearer, error_of, serve
    from tests.integration.web_support import snapshot as table_snapshot

    async with Tidebase(dsn, api_key=API_KEY, max_payload_bytes=1000) as tide:
        register(tide)
        async with serve(tide, "starlette") as client, working(tide):
            h = await tide.enqueue("waiter", input={"key": "order-1"})
            await wait_status(db, h.id, "waiting")
            body = {"name": "payment", "key": "order-1", "payload": {"amount": 3}}
            resp = await client.post("/tidebase/events", json=body)
            assert resp.status_code == 401, resp.text
            resp = await client.post("/tidebase/events", json=body, headers=bearer(API_KEY))
            assert resp.status_code == 200, resp.text
            event = resp.json()
            assert (event["status"], event["received_by"]) == ("delivered", [str(h.id)])
            assert await tide.runs.wait(h.id, timeout=10) == {"got": {"amount": 3}}
            resp = await client.post(
                "/tidebase/events", json={"name": "payment", "key": 9}, headers=bearer(API_KEY)
            )
            assert resp.status_code == 200 and resp.json()["status"] == "stored"
            before = await table_snapshot(db)
            bad: list[tuple[Any, int]] = [
                ({"name": "payment"}, 400),
                ({"name": "payment", "key": "x" * 201}, 400),
                ({"name": "pay#1", "key": "k"}, 400),
                ({"name": "", "key": "k"}, 400),
                ({"name": "payment", "key": ""}, 400),
                ({"name": "payment", "key": "k", "extra": 1}, 400),
                ({"name": "payment", "key": "k", "retention": 0}, 400),
                ({"name": "payment", "key": "k", "payload": "x" * 1200}, 413),
            ]
            for payload, status in bad:
                resp = await client.post("/tidebase/events", json=payload, headers=bearer(API_KEY))
                assert resp.status_code == status, (payload, resp.text)
                assert error_of(resp)["code"] in ("bad_request", "payload_too_large")
            resp = await client.post("/tidebase/events", content=b"{nope", headers=bearer(API_KEY))
            assert resp.status_code == 400
            assert await table_snapshot(db) == before


async def test_mcp_send_event_tool(tide: Tidebase, dsn: str, db: asyncpg.Connection) -> None:
    from tests.integration.test_mcp import call, call_error, http_server, http_session

    register(tide)
    async with working(tide), http_server(dsn, api_key=None) as url:
        h = await tide.enqueue("waiter", input={"key": "order-2"})
        await wait_status(db, h.id, "waiting")
        async with http_session(url, key=None) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            schema = tools["send_event"].input_schema
            assert set(schema["required"]) == {"name", "key"}
            out = await call(
                client, "send_event", {"name": "payment", "key": "order-2", "payload": [1]}
            )
            assert (out["status"], out["received_by"]) == ("delivered", [str(h.id)])
            assert await tide.runs.wait(h.id, timeout=10) == {"got": [1]}
            stored = await call(client, "send_event", {"name": "payment", "key": "nobody"})
            assert stored["status"] == "stored"
            text = await call_error(client, "send_event", {"name": "payment", "key": "k" * 201})
            assert "send_event" in text and "key" in text
            text = await call_error(client, "send_event", {"name": "a#b", "key": "k"})
            assert "ConfigurationError" in text


async def test_cli_events_send_and_list(
    tide: Tidebase, dsn: str, db: asyncpg.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    register(tide)
    async with working(tide):
        h = await tide.enqueue("waiter", input={"key": "order-3"})
        await wait_status(db, h.id, "waiting")
        rc = await anyio.to_thread.run_sync(main, ["events", "list", "--dsn", dsn, "--json"])
        assert rc == 0
        listed = json.loads(capsys.readouterr().out)
        assert listed["events"] == [] and [w["run_id"] for w in listed["waits"]] == [str(h.id)]
        argv = ["events", "send", "payment", "--key", "order-3", "--payload", '{"a": 1}']
        rc = await anyio.to_thread.run_sync(main, [*argv, "--dsn", dsn])
        assert rc == 0
        assert "delivered event 'payment' to 1 run(s)" in capsys.readouterr().out
        assert await tide.runs.wait(h.id, timeout=10) == {"got": {"a": 1}}
        rc = await anyio.to_thread.run_sync(
            main, ["events", "send", "payment", "--key", "later", "--dsn", dsn]
        )
        assert rc == 0 and "stored event 'payment'" in capsys.readouterr().out
        rc = await anyio.to_thread.run_sync(main, ["events", "list", "--dsn", dsn])
        out = capsys.readouterr().out
        assert rc == 0 and "later" in out and "no runs wait for events" in out
        rc = await anyio.to_thread.run_sync(
            main, ["events", "send", "payment", "--key", "k", "--payload", "{bad", "--dsn", dsn]
        )
        assert rc == 2
        rc = await anyio.to_thread.run_sync(
            main, ["events", "send", "payment", "--key", "x" * 300, "--dsn", dsn]
        )
        err = capsys.readouterr().err
        assert rc == 1 and "key is 300 characters long" in err


# -- bad input -------------------------------------------------------------------------------


async def test_bad_sends_name_the_problem_and_write_nothing(
    dsn: str, db: asyncpg.Connection
) -> None:
    async with Tidebase(dsn, max_payload_bytes=100) as tide:
        before = await snapshot(db)
        stored_before = await db.fetchval("SELECT count(*) FROM tidebase.keyed_events")
        cases: list[tuple[dict[str, Any], type[Exception], str]] = [
            ({"name": "", "key": "k"}, ConfigurationError, "must not be empty"),
            ({"name": "a" * 201, "key": "k"}, ConfigurationError, "the limit is 200"),
            ({"name": "p#2", "key": "k"}, ConfigurationError, "may not contain '#'"),
            ({"name": "~p", "key": "k"}, ConfigurationError, "start with '~'"),
            ({"name": "p", "key": ""}, ConfigurationError, "key must not be empty"),
            ({"name": "p", "key": "x" * 201}, ConfigurationError, "key is 201 characters"),
            ({"name": "p", "key": "a\x00b"}, ConfigurationError, "NUL"),
            ({"name": "p", "key": 1.5}, ConfigurationError, "key must be a str"),
            ({"name": "p", "key": None}, ConfigurationError, "key must be a str"),
            ({"name": "p", "key": True}, ConfigurationError, "key must be a str"),
            ({"name": "p", "key": "k", "retention": 0}, ConfigurationError, "retention"),
            ({"name": "p", "key": "k", "retention": -1}, ConfigurationError, "retention"),
            ({"name": "p", "key": "k", "payload": "x" * 200}, PayloadTooLarge, "payload"),
            ({"name": "p", "key": "k", "payload": object()}, SerializationError, "payload"),
            ({"name": "p", "key": "k", "payload": float("nan")}, SerializationError, "payload"),
            ({"name": "p", "key": "k", "payload": "a\x00"}, SerializationError, "payload"),
        ]
        for kwargs, exc_type, text in cases:
            name = kwargs.pop("name")
            with pytest.raises(exc_type) as info:
                await tide.events.send(name, **kwargs)
            assert text in str(info.value), (kwargs, str(info.value))
        assert await snapshot(db) == before
        assert await db.fetchval("SELECT count(*) FROM tidebase.keyed_events") == stored_before


async def test_bad_waits_fail_the_run_with_a_clear_error(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    @tide.workflow("bad-wait")
    async def bad_wait(run: Run, input: dict[str, Any]) -> Any:
        return await run.wait_for_event(input["name"], key=input["key"], timeout=input["t"])

    cases = [
        ({"name": "p", "key": "x" * 201, "t": None}, "key is 201 characters"),
        ({"name": "p#1", "key": "k", "t": None}, "may not contain '#'"),
        ({"name": "p", "key": "k", "t": -1}, "timeout must be >= 0"),
        ({"name": "p", "key": ["k"], "t": None}, "key must be a str"),
    ]
    async with working(tide):
        for input, text in cases:
            h = await tide.enqueue("bad-wait", input=input, max_attempts=1)
            await wait_status(db, h.id, "failed")
            error = (await tide.runs.get(h.id)).error
            assert error is not None and error["type"] == "ConfigurationError"
            assert text in error["message"], error
    assert await db.fetchval("SELECT count(*) FROM tidebase.event_waits") == 0


async def test_a_changed_key_at_a_recorded_wait_is_non_determinism(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    keys = ["first"]

    @tide.workflow("shifty")
    async def shifty(run: Run) -> Any:
        return await run.wait_for_event("payment", key=keys[0])

    async with working(tide):
        h = await tide.enqueue("shifty", max_attempts=1)
        await wait_status(db, h.id, "waiting")
        keys[0] = "second"
        await db.execute("UPDATE tidebase.runs SET status = 'queued' WHERE id = $1", h.id)
        await wait_status(db, h.id, "failed")
    error = (await tide.runs.get(h.id)).error
    assert error is not None and error["type"] == "NonDeterminismError"
    assert "key 'first'" in error["message"] and "key 'second'" in error["message"]


async def test_events_past_their_retention_are_pruned_and_not_received(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    register(tide)
    await tide.events.send("payment", key="k", payload="old", retention=0.2)
    await anyio.sleep(0.3)
    assert await tide.events.list() == []
    async with working(tide, maintenance_interval=0.05):
        await eventually(
            lambda: db.fetchval("SELECT count(*) = 0 FROM tidebase.keyed_events"),
            what="the pruning",
        )
        h = await tide.enqueue("waiter", input={"key": "k", "timeout": 0})
        assert "timeout" in await tide.runs.wait(h.id, timeout=10)


async def test_an_event_sent_while_its_run_was_failed_is_received_after_a_retry(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    """A run that failed while a wait of it was open (a parallel branch raised, say) is
    not sent to: the event is stored, and the retried run's open wait takes it."""
    register(tide)
    async with working(tide):
        h = await tide.enqueue("waiter", input={"key": "k"})
        await wait_status(db, h.id, "waiting")
    await db.execute(
        "UPDATE tidebase.runs SET status = 'failed', finished_at = now() WHERE id = $1", h.id
    )
    assert await tide.events.waits() == []
    sent = await tide.events.send("payment", key="k", payload="while failed")
    assert sent.status == "stored"
    async with working(tide):
        await tide.runs.retry(h.id)
        assert await tide.runs.wait(h.id, timeout=10) == {"got": "while failed"}
    assert [e.status for e in await tide.events.list(status=None)] == ["consumed"]
