"""enqueue / enqueue_many: what is stored, delays, dedupe, validation."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import anyio
import asyncpg
import msgspec
import pytest

from tests.integration.core_support import count_rows, run_row, status_of, working
from tidebase_async import (
    ConfigurationError,
    Event,
    PayloadTooLarge,
    Run,
    RunFailed,
    RunHandle,
    RunSpec,
    SerializationError,
    Tidebase,
)
from tidebase_async.store import EnqueueRow, NewRun


class Order(msgspec.Struct, frozen=True):
    sku: str
    qty: int


class Opaque:
    """Something msgspec cannot encode."""


async def first_event(tide: Tidebase, run_id: UUID) -> Event:
    """The first event of a run that may still be queued (events() would wait on)."""
    with anyio.fail_after(5):
        async for event in tide.runs.events(run_id):
            return event
    raise AssertionError(f"run {run_id} has no events")


async def test_enqueue_returns_a_handle_and_stores_every_option(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    deadline = datetime.now(UTC) + timedelta(hours=1)
    handle = await tide.enqueue(
        "report",
        input={"topic": "q3", "pages": [1, 2]},
        queue="reports",
        priority=7,
        metadata={"tenant": "acme", "tags": ["x"]},
        max_attempts=4,
        deadline=deadline,
    )

    assert isinstance(handle, RunHandle)
    assert isinstance(handle.id, UUID)
    assert handle.deduplicated is False
    row = await run_row(db, handle.id)
    assert row["status"] == "queued"
    assert row["workflow"] == "report"
    assert row["queue"] == "reports"
    assert row["priority"] == 7
    assert row["metadata"] == {"tenant": "acme", "tags": ["x"]}
    assert row["max_attempts"] == 4
    assert row["deadline_at"] == deadline
    assert row["input"] == {"topic": "q3", "pages": [1, 2]}
    assert row["attempt"] == 0
    assert row["dedupe_key"] is None
    due_in = await db.fetchval(
        "SELECT extract(epoch FROM run_at - now()) FROM tidebase.runs WHERE id = $1", handle.id
    )
    assert float(due_in) <= 0.01  # due at once
    first = await first_event(tide, handle.id)
    assert (first.seq, first.type, first.data) == (1, "run.created", None)
    assert first.at == await db.fetchval(
        "SELECT created_at FROM tidebase.runs WHERE id = $1", handle.id
    )
    # run.created is derived from the run row, not stored: enqueue writes one row.
    assert await db.fetchval("SELECT count(*) FROM tidebase.events") == 0


async def test_enqueue_uses_the_registered_workflow_queue_and_max_attempts(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    @tide.workflow("mailer", queue="mail", max_attempts=5)
    async def mailer(run: Run) -> None:
        return None

    handle = await tide.enqueue("mailer")
    row = await run_row(db, handle.id)
    assert (row["queue"], row["max_attempts"]) == ("mail", 5)
    assert row["input"] is None


async def test_delay_and_run_at_put_run_at_in_the_future(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    async def due_in(run_id: UUID) -> float:
        value = await db.fetchval(
            "SELECT extract(epoch FROM run_at - now()) FROM tidebase.runs WHERE id = $1", run_id
        )
        return float(value)

    by_seconds = await tide.enqueue("later", delay=60)
    by_timedelta = await tide.enqueue("later", delay=timedelta(minutes=2))
    at = datetime.now(UTC) + timedelta(hours=1)
    by_run_at = await tide.enqueue("later", run_at=at)

    assert 58 <= await due_in(by_seconds.id) <= 60
    assert 118 <= await due_in(by_timedelta.id) <= 120
    assert (await run_row(db, by_run_at.id))["run_at"] == at


async def test_a_delayed_run_is_not_claimed_before_it_is_due(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    started: list[float] = []

    @tide.workflow("later")
    async def later(run: Run) -> str:
        started.append(time.monotonic())
        return "done"

    async with working(tide):
        enqueued = time.monotonic()
        handle = await tide.enqueue("later", delay=1.5)
        await anyio.sleep(1.0)
        assert await status_of(db, handle.id) == "queued"
        assert started == []
        assert await tide.runs.wait(handle.id, timeout=10) == "done"

    assert started[0] - enqueued >= 1.4
    waited = await db.fetchval(
        "SELECT extract(epoch FROM started_at - created_at) FROM tidebase.runs WHERE id = $1",
        handle.id,
    )
    assert float(waited) >= 1.5


async def test_concurrent_enqueues_with_one_dedupe_key_create_one_run(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    handles = await asyncio.gather(
        *(tide.enqueue("report", input=i, dedupe_key="report-x") for i in range(6))
    )

    assert len({h.id for h in handles}) == 1
    assert sorted(h.deduplicated for h in handles) == [False] + [True] * 5
    assert await db.fetchval("SELECT count(*) FROM tidebase.runs") == 1
    assert (await run_row(db, handles[0].id))["dedupe_key"] == "report-x"


async def test_dedupe_is_per_queue(tide: Tidebase, db: asyncpg.Connection) -> None:
    a = await tide.enqueue("report", dedupe_key="k", queue="one")
    b = await tide.enqueue("report", dedupe_key="k", queue="two")
    again = await tide.enqueue("report", dedupe_key="k", queue="one")

    assert a.id != b.id
    assert not a.deduplicated and not b.deduplicated
    assert again == RunHandle(id=a.id, deduplicated=True)
    assert await db.fetchval("SELECT count(*) FROM tidebase.runs") == 2


async def test_a_dedupe_key_is_free_again_once_the_run_completed(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    @tide.workflow("once")
    async def once(run: Run) -> str:
        return "ok"

    first = await tide.enqueue("once", dedupe_key="nightly")
    assert (await tide.enqueue("once", dedupe_key="nightly")).deduplicated
    async with working(tide):
        await tide.runs.wait(first.id, timeout=10)

    second = await tide.enqueue("once", dedupe_key="nightly")
    assert second.deduplicated is False
    assert second.id != first.id
    assert await status_of(db, second.id) == "queued"


async def test_enqueue_many_creates_runs_in_one_round_trip_in_order(
    tide: Tidebase, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tide.store
    batches: list[int] = []
    original = store.enqueue_many

    async def counting(runs: list[NewRun]) -> list[EnqueueRow]:
        batches.append(len(runs))
        return await original(runs)

    async def single(run: NewRun) -> EnqueueRow:
        raise AssertionError("enqueue_many must not enqueue run by run")

    monkeypatch.setattr(store, "enqueue_many", counting)
    monkeypatch.setattr(store, "enqueue", single)
    handles = await tide.enqueue_many(
        [
            ("resize", {"n": 0}),
            RunSpec(workflow="resize", input={"n": 1}, priority=3, queue="images"),
            ("resize", {"n": 2}),
            RunSpec(workflow="thumb", input={"n": 3}, metadata={"m": 1}),
        ]
    )

    assert batches == [4]
    assert len(handles) == 4
    assert len({h.id for h in handles}) == 4
    assert not any(h.deduplicated for h in handles)
    for n, handle in enumerate(handles):
        row = await run_row(db, handle.id)
        assert row["input"] == {"n": n}
        assert row["status"] == "queued"
    second = await run_row(db, handles[1].id)
    assert (second["priority"], second["queue"]) == (3, "images")
    assert (await run_row(db, handles[3].id))["metadata"] == {"m": 1}
    for handle in handles:
        assert (await first_event(tide, handle.id)).type == "run.created"
    assert await db.fetchval("SELECT count(*) FROM tidebase.events") == 0


async def test_enqueue_many_maps_duplicate_dedupe_keys_to_the_first(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    existing = await tide.enqueue("sync", input="old", dedupe_key="active")
    handles = await tide.enqueue_many(
        [
            RunSpec(workflow="sync", input="a", dedupe_key="k1"),
            ("sync", "plain"),
            RunSpec(workflow="sync", input="b", dedupe_key="k1"),
            RunSpec(workflow="sync", input="c", dedupe_key="active"),
            RunSpec(workflow="sync", input="d", dedupe_key="k1"),
        ]
    )

    assert [h.deduplicated for h in handles] == [False, False, True, True, True]
    assert handles[2].id == handles[0].id
    assert handles[4].id == handles[0].id
    assert handles[3].id == existing.id
    assert handles[1].id != handles[0].id
    assert (await run_row(db, handles[0].id))["input"] == "a"
    assert (await run_row(db, existing.id))["input"] == "old"
    assert await db.fetchval("SELECT count(*) FROM tidebase.runs") == 3


async def test_concurrent_batches_sharing_dedupe_keys_do_not_deadlock(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    # Large batches in opposite key orders: inserted as given, each would wait for the
    # other's uncommitted rows in a cycle, and Postgres would fail one of them.
    for batch in range(2):
        keys = [f"b{batch}-k{i:05d}" for i in range(3000)]
        forward, backward = await asyncio.gather(
            tide.enqueue_many([RunSpec(workflow="w", input=k, dedupe_key=k) for k in keys]),
            tide.enqueue_many(
                [RunSpec(workflow="w", input=k, dedupe_key=k) for k in reversed(keys)]
            ),
        )
        backward.reverse()
        assert [h.id for h in forward] == [h.id for h in backward]
        assert all(f.deduplicated != b.deduplicated for f, b in zip(forward, backward, strict=True))
    assert await db.fetchval("SELECT count(*) FROM tidebase.runs") == 6000
    mismatched = await db.fetchval(
        "SELECT count(*) FROM tidebase.runs WHERE input #>> '{}' <> dedupe_key"
    )
    assert mismatched == 0


async def test_enqueue_many_of_nothing_returns_an_empty_list(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    assert await tide.enqueue_many([]) == []
    assert await count_rows(db) == (0, 0, 0)


async def test_enqueue_many_writes_nothing_when_one_spec_is_bad(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    with pytest.raises(SerializationError, match="Opaque"):
        await tide.enqueue_many([("a", 1), ("a", {"x": Opaque()}), ("a", 3)])
    with pytest.raises(ConfigurationError, match="priority"):
        await tide.enqueue_many([("a", 1), RunSpec(workflow="a", priority="high")])  # type: ignore[arg-type]
    assert await count_rows(db) == (0, 0, 0)


async def test_a_raw_input_cannot_smuggle_fields_into_the_enqueue_batch(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    """Regression: a ``msgspec.Raw`` input was spliced into the enqueue batch's JSON as
    it was, so a crafted one could add fields (another queue, another run) to the batch."""
    smuggled = msgspec.Raw(b'1, "queue": "evil"}, {"workflow": "smuggled"')
    with pytest.raises(SerializationError):
        await tide.enqueue_many([("unregistered-wf", smuggled)])
    assert await db.fetchval("SELECT count(*) FROM tidebase.runs") == 0


async def test_a_run_of_an_unknown_workflow_is_queued_and_fails_when_claimed(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    @tide.workflow("known")
    async def known(run: Run) -> None:
        return None

    handle = await tide.enqueue("no-such-workflow", input={"a": 1})
    assert await status_of(db, handle.id) == "queued"

    async with working(tide):
        with pytest.raises(RunFailed) as failed:
            await tide.runs.wait(handle.id, timeout=10)

    assert failed.value.error["type"] == "WorkflowNotFound"
    assert "'no-such-workflow'" in failed.value.error["message"]
    row = await run_row(db, handle.id)
    assert row["status"] == "failed"
    # Retried with backoff while attempts remained (in a rolling deploy another worker
    # may know the workflow), then failed for good rather than left queued.
    assert row["attempt"] == row["max_attempts"] == 3


async def test_unencodable_input_raises_and_writes_nothing(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    with pytest.raises(SerializationError, match="Opaque") as raised:
        await tide.enqueue("report", input={"when": "now", "what": [1, Opaque()]})
    assert raised.value.type_name == "Opaque"
    assert raised.value.where == "input"

    with pytest.raises(SerializationError, match="object"):
        await tide.enqueue("report", input=object())
    assert await count_rows(db) == (0, 0, 0)


async def test_input_over_the_payload_limit_is_refused(dsn: str, db: asyncpg.Connection) -> None:
    async with Tidebase(dsn, max_payload_bytes=100) as small:
        with pytest.raises(PayloadTooLarge, match="input") as raised:
            await small.enqueue("report", input="x" * 200)
        assert isinstance(raised.value, SerializationError)
        await small.enqueue("report", input="x" * 50)
    assert (await count_rows(db))[0] == 1


async def test_sets_in_input_are_stored_as_arrays(tide: Tidebase, db: asyncpg.Connection) -> None:
    handle = await tide.enqueue("report", input={"ids": {3}})
    assert (await run_row(db, handle.id))["input"] == {"ids": [3]}


async def test_input_that_does_not_match_the_struct_type_is_refused(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    @tide.workflow("order")
    async def order(run: Run, input: Order) -> int:
        return input.qty

    with pytest.raises(SerializationError, match="Order"):
        await tide.enqueue("order", input={"sku": "a-1", "qty": "many"})
    with pytest.raises(SerializationError):
        await tide.enqueue("order", input={"qty": 1})
    assert await count_rows(db) == (0, 0, 0)

    ok = await tide.enqueue("order", input=Order(sku="a-1", qty=2))
    assert (await run_row(db, ok.id))["input"] == {"sku": "a-1", "qty": 2}


BAD_OPTIONS: list[tuple[str, dict[str, Any], str]] = [
    ("wf", {"run_at": datetime(2030, 1, 1)}, "run_at must be timezone-aware"),
    ("wf", {"deadline": datetime(2030, 1, 1)}, "deadline must be timezone-aware"),
    ("wf", {"run_at": "tomorrow"}, "run_at must be a datetime"),
    ("wf", {"delay": -1}, "delay must be >= 0"),
    ("wf", {"delay": "soon"}, "delay must be seconds"),
    ("wf", {"delay": float("inf")}, "delay inf puts the run past the year 9999"),
    ("wf", {"delay": 1e12}, "past the year 9999"),
    ("wf", {"run_at": datetime(9999, 12, 31, tzinfo=UTC), "delay": 2 * 86400}, "year 9999"),
    ("wf", {"priority": "high"}, "priority must be an int"),
    ("wf", {"priority": 2**40}, "priority .* out of range"),
    ("wf", {"max_attempts": 0}, "max_attempts must be 1..10000"),
    ("", {}, "workflow name must not be empty"),
    ("wf", {"queue": "q" * 1000}, "queue name is 1000 characters long"),
    ("wf", {"queue": ""}, "queue name must not be empty"),
    ("wf", {"dedupe_key": "a\x00b"}, "dedupe_key .*NUL"),
    ("wf", {"dedupe_key": ""}, "dedupe_key must be a non-empty str"),
    ("wf", {"metadata": ["x"]}, "metadata must be a dict"),
]


async def test_bad_options_raise_configuration_error_naming_the_problem(
    tide: Tidebase, db: asyncpg.Connection, subtests: pytest.Subtests
) -> None:
    for workflow, options, message in BAD_OPTIONS:
        with subtests.test(message, workflow=workflow, options=options):
            with pytest.raises(ConfigurationError, match=message):
                await tide.enqueue(workflow, input=1, **options)
            with pytest.raises(ConfigurationError, match=message):
                await tide.enqueue_many([RunSpec(workflow=workflow, input=1, **options)])
    assert await count_rows(db) == (0, 0, 0)


async def test_one_run_and_a_batch_store_the_same_row_for_the_same_options(
    dsn: str, db: asyncpg.Connection
) -> None:
    """``enqueue`` of one run sends its fields as parameters, ``enqueue_many`` as one
    JSON document that leaves out None fields: both must store the same thing, every
    option included (and None options as NULL)."""
    at = datetime.now(UTC) + timedelta(hours=2)
    options: dict[str, Any] = {
        "input": {"topic": "q3", "n": [1, 2.5, None]},
        "queue": "reports",
        "priority": -3,
        "delay": 1.5,
        "run_at": at,
        "max_attempts": 4,
        "deadline": at + timedelta(hours=1),
        "metadata": {"tenant": "acme"},
        "webhooks": ["https://hooks.example.com/x"],
        "version": "v2",
        "concurrency_key": "acme",
    }
    async with Tidebase(dsn, signing_secret="s3cret") as tide:
        one = await tide.enqueue("report", dedupe_key="one", **options)
        (many, _) = await tide.enqueue_many(
            [
                RunSpec(workflow="report", dedupe_key="many", **options),
                RunSpec(workflow="report"),
            ]
        )
        bare_one = await tide.enqueue("report")
        (bare_many,) = await tide.enqueue_many([RunSpec(workflow="report")])
    differs = {"id", "dedupe_key", "created_at", "updated_at"}

    def same(row: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in row.items() if k not in differs}

    row_one, row_many = await run_row(db, one.id), await run_row(db, many.id)
    assert same(row_one) == same(row_many)
    assert (row_one["dedupe_key"], row_many["dedupe_key"]) == ("one", "many")
    assert row_one["run_at"] == at + timedelta(seconds=1.5)
    assert row_one["channels"] is not None and row_one["version"] == "v2"
    plain_one, plain_many = await run_row(db, bare_one.id), await run_row(db, bare_many.id)
    differs.add("run_at")  # now, at each insert
    assert same(plain_one) == same(plain_many)
    assert plain_one["run_at"] == plain_one["created_at"]
    assert plain_many["run_at"] == plain_many["created_at"]
    assert plain_one["metadata"] is None and plain_one["deadline_at"] is None
    assert plain_one["input"] is None and plain_one["priority"] == 0
