"""Bad input against a real database (property-based, issue 4 items 3 and 5).

Every bad input (enqueue values, names, payload sizes, state patches) must raise a
``TidebaseError`` subclass whose message names the problem, and the database afterwards
must hold exactly what it held before plus what was valid: each property compares a
snapshot of ``tidebase.runs``, ``steps`` and ``events`` (every row's text) before and
after. Good values read back exactly as JSON and jsonb store them (see
``tests.bad_inputs.stored_form``). Names that try SQL injection are stored and matched
literally. DSN passwords never reach error messages or logs.

The examples of one property share one database (function-scoped fixtures, reused
across examples): the before/after snapshots make that safe.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.bad_inputs import (
    SQL_FRAGMENTS,
    assert_same,
    bad_values,
    good_values,
    json_values,
    name_candidates,
    storable_text,
    stored_form,
    valid_dedupe_key,
    valid_name,
)
from tidebase_async import (
    ConfigurationError,
    DatabaseUnreachable,
    PayloadTooLarge,
    Retry,
    Run,
    RunFailed,
    RunSpec,
    SerializationError,
    Tidebase,
    TidebaseError,
)
from tidebase_async._util.ids import uuid7
from tidebase_async.models import Page
from tidebase_async.store import Store

PROPERTY = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
#: Properties that execute a run per example.
RUN_PROPERTY = settings(PROPERTY, max_examples=50)

LIMIT = 1024  # max_payload_bytes of the ``small`` Tidebase: cheap to exceed


Snapshot = dict[str, Counter[str]]


async def snapshot(db: asyncpg.Connection, *, excluding: Sequence[UUID] = ()) -> Snapshot:
    """Every row of runs, steps and events as text, except those of ``excluding`` runs."""
    out: Snapshot = {}
    for table, key in (("runs", "id"), ("steps", "run_id"), ("events", "run_id")):
        rows = await db.fetch(
            f"SELECT t::text FROM tidebase.{table} t WHERE NOT (t.{key} = ANY($1::uuid[]))",
            list(excluding),
        )
        out[table] = Counter(r[0] for r in rows)
    return out


async def rows_of(db: asyncpg.Connection, run_id: UUID) -> tuple[int, int, int]:
    row = await db.fetchrow(
        "SELECT (SELECT count(*) FROM tidebase.runs WHERE id = $1),"
        " (SELECT count(*) FROM tidebase.steps WHERE run_id = $1),"
        " (SELECT count(*) FROM tidebase.events WHERE run_id = $1)",
        run_id,
    )
    return int(row[0]), int(row[1]), int(row[2])


async def assert_only_added(db: asyncpg.Connection, before: Snapshot, run_id: UUID) -> None:
    """Nothing changed but the rows of the new run ``run_id``."""
    assert await snapshot(db, excluding=[run_id]) == before


# -- enqueue: values ---------------------------------------------------------------------


@PROPERTY
@given(
    value=good_values,
    metadata=st.none() | st.dictionaries(storable_text, json_values, max_size=3),
)
async def test_good_inputs_read_back_as_stored_and_add_one_run(
    tide: Tidebase, db: asyncpg.Connection, value: Any, metadata: dict[str, Any] | None
) -> None:
    before = await snapshot(db)
    handle = await tide.enqueue("echo", input=value, metadata=metadata)

    info = await tide.runs.get(handle.id)
    assert_same(info.input, stored_form(value))
    assert_same(info.metadata, None if metadata is None else stored_form(metadata))
    await assert_only_added(db, before, handle.id)
    # The run alone: its run.created event is derived from the run row, not stored.
    assert await rows_of(db, handle.id) == (1, 0, 0)


@PROPERTY
@given(
    bad=bad_values(),
    where=st.sampled_from(["input", "metadata"]),
    how=st.sampled_from(["enqueue", "enqueue_many", "run"]),
    good=st.lists(json_values, max_size=3),
)
async def test_bad_inputs_raise_a_serialization_error_and_write_nothing(
    tide: Tidebase,
    db: asyncpg.Connection,
    bad: tuple[str, Any, str],
    where: str,
    how: str,
    good: list[Any],
) -> None:
    kind, value, message = bad
    if "echo" not in tide.workflows:

        @tide.workflow("echo")
        async def echo(run: Run, input: Any) -> Any:
            return input

    options: dict[str, Any] = (
        {"input": value} if where == "input" else {"input": 1, "metadata": {"m": value}}
    )
    before = await snapshot(db)
    with pytest.raises(SerializationError) as raised:
        if how == "enqueue":
            await tide.enqueue("echo", **options)
        elif how == "run":
            await tide.run("echo", **options)
        else:
            # All or nothing: the good specs around the bad one are not written either.
            specs = [RunSpec(workflow="echo", input=g) for g in good]
            specs.insert(len(good) // 2, RunSpec(workflow="echo", **options))
            await tide.enqueue_many(specs)
    error = raised.value
    assert not isinstance(error, PayloadTooLarge)
    assert error.where == where
    assert str(error).startswith(f"{where} "), str(error)
    assert message in str(error), (kind, str(error))
    assert await snapshot(db) == before


async def test_a_nul_character_is_a_serialization_error_not_a_store_error(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    """Postgres jsonb cannot hold \\u0000: refused before anything is sent."""
    for value in ("a\x00b", {"k\x00": 1}, ["\x00"], {"nested": {"deep": ["x", "\x00"]}}):
        with pytest.raises(SerializationError, match=r"input holds a string with a NUL"):
            await tide.enqueue("echo", input=value)
        with pytest.raises(SerializationError, match=r"metadata holds a string with a NUL"):
            await tide.enqueue("echo", input=1, metadata={"m": value})
    # The text "\u0000" (a backslash, then u0000) is fine.
    handle = await tide.enqueue("echo", input="\\u0000")
    assert (await tide.runs.get(handle.id)).input == "\\u0000"
    assert await db.fetchval("SELECT count(*) FROM tidebase.runs") == 1


async def test_nan_and_infinity_are_refused_rather_than_stored_as_null(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    """msgspec encodes NaN and infinities as null: storing that would change the data
    without a word (and fail typed float decoding later), so they are refused."""
    for value in (float("nan"), {"t": float("inf")}, [1.0, float("-inf")]):
        with pytest.raises(SerializationError, match="NaN or infinite") as raised:
            await tide.enqueue("echo", input=value)
        assert raised.value.type_name == "float"
    assert await db.fetchval("SELECT count(*) FROM tidebase.runs") == 0


async def test_large_integral_floats_read_back_as_ints_unless_typed(tide: Tidebase) -> None:
    """jsonb keeps numbers as numeric: 1e16 (written with an exponent) prints as the
    integer it equals. Untyped readers get that int; a declared float type gets the
    float back exactly (documented; a float with a fraction is unaffected)."""

    @tide.workflow("floats")
    async def floats(run: Run, input: list[float]) -> list[float]:
        return input

    values = [1e16, 1.5e17, 1e300, 1.7976931348623157e308, 0.1, -0.0, 5e-324, 123.0]
    handle = await tide.enqueue("floats", input=values)
    stored = (await tide.runs.get(handle.id)).input
    assert stored == [10**16, 15 * 10**16, 10**300, 17976931348623157 * 10**292, *values[4:]]
    assert [type(v) for v in stored] == [int] * 4 + [float] * 4
    # The workflow's declared type restores the floats exactly.
    assert await tide.run("floats", run_id=handle.id) == values
    assert [type(v) for v in await tide.run("floats", run_id=handle.id)] == [float] * 8


# -- names ------------------------------------------------------------------------------


async def list_by(tide: Tidebase, kind: str, name: str) -> Page:
    if kind == "workflow":
        return await tide.runs.list(workflow=name, limit=1000)
    return await tide.runs.list(queue=name, limit=1000)


def _name_error(kind: str) -> str:
    return "dedupe_key must" if kind == "dedupe_key" else f"{kind} name "


@PROPERTY
@given(name=name_candidates, kind=st.sampled_from(["workflow", "queue", "dedupe_key"]))
async def test_names_are_refused_with_a_clear_error_or_stored_and_matched_literally(
    tide: Tidebase, db: asyncpg.Connection, name: str, kind: str
) -> None:
    valid = valid_dedupe_key(name) if kind == "dedupe_key" else valid_name(name)
    options: dict[str, Any] = {kind: name} if kind != "workflow" else {}
    workflow = name if kind == "workflow" else "named"
    before = await snapshot(db)

    if not valid:
        with pytest.raises(ConfigurationError) as raised:
            await tide.enqueue(workflow, input=1, **options)
        assert _name_error(kind) in str(raised.value), str(raised.value)
        with pytest.raises(ConfigurationError):
            await tide.enqueue_many([RunSpec(workflow=workflow, input=1, **options)])
        if kind != "dedupe_key":
            with pytest.raises(ConfigurationError, match=f"{kind} name "):
                await list_by(tide, kind, name)
        assert await snapshot(db) == before
        return

    handle = await tide.enqueue(workflow, input=1, **options)
    info = await tide.runs.get(handle.id)
    assert getattr(info, kind) == name
    if handle.deduplicated:  # the key was drawn before: the active run is returned
        assert await snapshot(db) == before
    else:
        await assert_only_added(db, before, handle.id)
    if kind != "dedupe_key":
        listed = await list_by(tide, kind, name)
        everything = await db.fetch(f"SELECT id, {kind} FROM tidebase.runs")
        assert {s.id for s in listed.items} == {r["id"] for r in everything if r[kind] == name}
    else:
        again = await tide.enqueue("named", input=2, dedupe_key=name)
        assert (again.id, again.deduplicated) == (handle.id, True)


async def test_sql_in_names_is_stored_and_matched_literally(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    """Every SQL value is a bound parameter: injection attempts are just names, and LIKE
    wildcards match only themselves."""
    names = [n for n in SQL_FRAGMENTS if valid_name(n)] + ["x", "x'", "X", "a%", "ab", "a_", "a\\"]
    assert "'; DROP TABLE tidebase.runs; --" in names
    ids: dict[str, UUID] = {}
    for name in names:
        handle = await tide.enqueue(name, queue=name, dedupe_key=name, metadata={name: name})
        ids[name] = handle.id
    assert len(set(ids.values())) == len(names)
    assert await db.fetchval("SELECT count(*) FROM tidebase.runs") == len(names)

    for name in names:
        by_workflow = await tide.runs.list(workflow=name)
        by_queue = await tide.runs.list(queue=name, status="queued")
        assert [s.id for s in by_workflow.items] == [ids[name]], name
        assert [s.id for s in by_queue.items] == [ids[name]], name
        info = await tide.runs.get(ids[name])
        assert (info.workflow, info.queue, info.dedupe_key) == (name, name, name)
        assert info.metadata == {name: name}
        # The same key dedupes; one character off does not.
        again = await tide.enqueue(name, queue=name, dedupe_key=name)
        assert (again.id, again.deduplicated) == (ids[name], True)

    assert (await tide.runs.list(workflow="x' OR '1'='1")).items[0].workflow == "x' OR '1'='1"
    assert (await tide.runs.list(workflow="nothing' OR '1'='1")).items == []
    assert (await tide.runs.list(workflow="%")).items[0].id == ids["%"]
    assert (await tide.runs.list(workflow="a_")).items[0].id == ids["a_"]
    other = await tide.enqueue("x", queue="x", dedupe_key="x' OR '1'='2")
    assert not other.deduplicated

    # Free text (cancel reasons) is bound too; text Postgres cannot hold is refused.
    reason = "'); DELETE FROM tidebase.events; --"
    await tide.runs.cancel(ids["x"], reason=reason, actor="'; --")
    assert (await tide.runs.get(ids["x"])).cancel_reason == reason
    for bad in ("a\x00b", "\ud800"):
        with pytest.raises(ConfigurationError, match="cancel reason must be a str"):
            await tide.runs.cancel(ids["X"], reason=bad)
        with pytest.raises(ConfigurationError, match="cancel actor must be a str"):
            await tide.runs.cancel(ids["X"], actor=bad)
    assert (await tide.runs.get(ids["X"])).status == "queued"

    tables = await db.fetchval(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'tidebase'"
        " AND tablename IN ('runs', 'steps', 'events')"
    )
    assert tables == 3
    assert await db.fetchval("SELECT count(*) FROM tidebase.runs") == len(names) + 1


@dataclass
class Plans:
    """What the test workflows do in one example (not passed as input: it may hold
    values that cannot be encoded)."""

    by_run: dict[UUID, Any] = field(default_factory=dict)


STEP_NAMES = Plans()


@RUN_PROPERTY
@given(name=name_candidates)
async def test_step_names_are_refused_with_a_clear_error_or_recorded_literally(
    tide: Tidebase, db: asyncpg.Connection, name: str
) -> None:
    if "stepper" not in tide.workflows:

        @tide.workflow("stepper")
        async def stepper(run: Run) -> Any:
            try:
                return await run.step(STEP_NAMES.by_run[run.id], lambda: "done")
            except ConfigurationError as exc:
                return {"error": str(exc)}

    valid = valid_name(name) and "#" not in name and not name.startswith("~")
    run_id = uuid7()
    STEP_NAMES.by_run[run_id] = name
    before = await snapshot(db)
    output = await tide.run("stepper", run_id=run_id)

    info = await tide.runs.get(run_id)
    if valid:
        assert output == "done"
        assert [(s.name, s.status, s.output) for s in info.steps] == [(name, "completed", "done")]
    else:
        assert isinstance(output, dict), output
        assert output["error"].startswith("step name "), output
        assert info.steps == []
    await assert_only_added(db, before, run_id)


# -- step outputs -----------------------------------------------------------------------

STEP_VALUES = Plans()
_nul_text = st.tuples(storable_text, storable_text).map(lambda t: t[0] + "\x00" + t[1])


class StepBoom(Exception):
    pass


@RUN_PROPERTY
@given(
    value=st.one_of(
        good_values.map(lambda v: ("good", v, "")),
        _nul_text.map(lambda v: ("good", v, "")),  # checkpoints are bytes, not jsonb
        bad_values().filter(lambda b: b[0] != "nul"),
        _nul_text.map(lambda v: ("raises", StepBoom(f"bad byte {v} here"), "")),
        _nul_text.map(lambda v: ("output", v, "output holds a string with a NUL")),
    )
)
async def test_step_outputs_checkpoint_exactly_or_fail_the_run_saying_why(
    tide: Tidebase, db: asyncpg.Connection, value: tuple[str, Any, str]
) -> None:
    kind, payload, message = value
    if "producer" not in tide.workflows:

        @tide.workflow("producer", max_attempts=2, retry=Retry(backoff=0.01, max_backoff=0.01))
        async def producer(run: Run) -> Any:
            how, what = STEP_VALUES.by_run[run.id]

            def produce() -> Any:
                if how == "raises":
                    raise what
                return what

            result = await run.step("produce", produce)
            return result if how == "output" else "done"

    run_id = uuid7()
    STEP_VALUES.by_run[run_id] = (kind, payload)
    before = await snapshot(db)
    if kind == "good":
        assert await tide.run("producer", run_id=run_id) == "done"
        info = await tide.runs.get(run_id)
        # Checkpoints are JSON bytes: only JSON's own changes (no jsonb number rewrite).
        assert [(s.name, s.status) for s in info.steps] == [("produce", "completed")]
        assert_same(info.steps[0].output, msgspec.json.decode(msgspec.json.encode(payload)))
    else:
        with pytest.raises(RunFailed) as raised:
            await tide.run("producer", run_id=run_id)
        error = raised.value.error
        info = await tide.runs.get(run_id)
        assert info.status == "failed"
        if kind == "raises":
            # A NUL in the message is spelled out, never makes the failure unrecordable.
            assert (error["type"], info.attempt) == ("StepBoom", 2)  # retried: not permanent
            assert error["message"] == str(payload).replace("\x00", "\\x00")
            assert [(s.name, s.status) for s in info.steps] == [("produce", "failed")]
            assert info.steps[0].error is not None
            assert info.steps[0].error["message"] == error["message"]
        elif kind == "output":
            assert (error["type"], info.attempt) == ("SerializationError", 1)
            assert error["message"].startswith(message), error
            assert [(s.name, s.status) for s in info.steps] == [("produce", "completed")]
        else:
            assert (error["type"], info.attempt) == ("SerializationError", 1)
            assert error["message"].startswith("step 'produce' "), error
            assert message in error["message"], (kind, error)
            assert [(s.name, s.status, s.output) for s in info.steps] == [
                ("produce", "failed", None)
            ]
    await assert_only_added(db, before, run_id)


# -- payload sizes ----------------------------------------------------------------------


@dataclass
class Sizes:
    step: int
    state: int
    output: int


SIZED = Plans()


@pytest.fixture
async def small(dsn: str) -> AsyncIterator[Tidebase]:
    """A Tidebase whose payload limit is 1 KiB, with the workflows of these tests."""
    tide = Tidebase(dsn, max_payload_bytes=LIMIT)

    @tide.workflow("sized")
    async def sized(run: Run) -> str:
        sizes: Sizes = SIZED.by_run[run.id]
        await run.step("big", lambda: "x" * sizes.step)
        await run.state.set("s" * sizes.state)
        return "o" * sizes.output

    @tide.workflow("patcher")
    async def patcher(run: Run) -> list[Any]:
        outcomes: list[Any] = []
        for patch in PATCHES.by_run[run.id]:
            try:
                await run.state.patch(patch)
                outcomes.append("ok")
            except TidebaseError as exc:
                outcomes.append([type(exc).__name__, str(exc)])
        return outcomes

    async with tide as t:
        yield t


_sizes = st.integers(min_value=LIMIT - 40, max_value=LIMIT + 40)


@RUN_PROPERTY
@given(sizes=st.builds(Sizes, step=_sizes, state=_sizes, output=_sizes))
async def test_a_payload_over_the_limit_fails_the_run_naming_what_was_too_large(
    small: Tidebase, db: asyncpg.Connection, sizes: Sizes
) -> None:
    """Each encoded JSON string is its length plus two quotes; the first value over
    the limit fails the run (for good: another attempt cannot shrink it) with a
    PayloadTooLarge naming it, and nothing of it is stored."""
    run_id = uuid7()
    SIZED.by_run[run_id] = sizes
    before = await snapshot(db)
    too_large = next(
        (
            (where, size + 2)
            for where, size in (
                ("step 'big'", sizes.step),
                ("state", sizes.state),
                ("output", sizes.output),
            )
            if size + 2 > LIMIT
        ),
        None,
    )

    if too_large is None:
        assert await small.run("sized", run_id=run_id) == "o" * sizes.output
    else:
        with pytest.raises(RunFailed) as raised:
            await small.run("sized", run_id=run_id)
        where, encoded = too_large
        assert raised.value.error["type"] == "PayloadTooLarge"
        assert raised.value.error["message"] == (
            f"{where} is {encoded} bytes encoded, over the limit of {LIMIT} bytes "
            "(Tidebase(max_payload_bytes=...))"
        )

    info = await small.runs.get(run_id)
    steps = [(s.name, s.status, s.output) for s in info.steps]
    step_fits = sizes.step + 2 <= LIMIT
    if step_fits:
        assert steps == [("big", "completed", "x" * sizes.step)]
    else:
        assert steps == [("big", "failed", None)]
    state_fits = step_fits and sizes.state + 2 <= LIMIT
    assert info.state == ("s" * sizes.state if state_fits else {})
    assert info.status == ("completed" if too_large is None else "failed")
    assert info.attempt == 1  # permanent: not retried
    assert info.output == ("o" * sizes.output if too_large is None else None)
    largest = await db.fetchval(
        "SELECT max(greatest(octet_length(r.input::text), octet_length(r.state::text),"
        " octet_length(r.output::text), octet_length(s.output)))"
        " FROM tidebase.runs r LEFT JOIN tidebase.steps s ON s.run_id = r.id WHERE r.id = $1",
        run_id,
    )
    assert largest <= LIMIT
    await assert_only_added(db, before, run_id)


@PROPERTY
@given(size=st.integers(min_value=LIMIT - 20, max_value=LIMIT + 20))
async def test_an_input_over_the_limit_is_refused_at_enqueue_naming_the_input(
    small: Tidebase, db: asyncpg.Connection, size: int
) -> None:
    before = await snapshot(db)
    if size + 2 > LIMIT:
        with pytest.raises(PayloadTooLarge, match=rf"^input is {size + 2} bytes encoded"):
            await small.enqueue("sized", input="i" * size)
        assert await snapshot(db) == before
    else:
        handle = await small.enqueue("sized", input="i" * size)
        assert (await small.runs.get(handle.id)).input == "i" * size
        await assert_only_added(db, before, handle.id)


# -- state patches ----------------------------------------------------------------------

PATCHES = Plans()


@dataclass
class PatchCase:
    patch: Any
    expect: str  # "ok" (unless the state grows past the limit), or the error's type
    message: str = ""


_good_patches = st.dictionaries(storable_text, st.one_of(st.none(), json_values), max_size=3).map(
    lambda p: PatchCase(p, "ok")
)
_non_mappings = st.one_of(
    st.lists(json_values, max_size=2), st.integers(), storable_text, st.none(), st.just(())
).map(lambda p: PatchCase(p, "ConfigurationError", "state.patch takes a mapping"))
_unencodable_patches = st.builds(
    lambda key, bad: PatchCase({key: bad[1]}, "SerializationError", bad[2]),
    storable_text,
    bad_values(),
)
_huge_patches = st.integers(min_value=LIMIT, max_value=4 * LIMIT).map(
    lambda n: PatchCase({"huge": "h" * n}, "PayloadTooLarge", "state is ")
)
patch_cases = st.one_of(_good_patches, _non_mappings, _unencodable_patches, _huge_patches)


def merge(target: Any, patch: Any) -> Any:
    """RFC 7396, written out independently of the library's."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


@RUN_PROPERTY
@given(cases=st.lists(patch_cases, min_size=1, max_size=6))
async def test_bad_state_patches_raise_and_leave_the_state_as_the_good_ones_made_it(
    small: Tidebase, db: asyncpg.Connection, cases: list[PatchCase]
) -> None:
    run_id = uuid7()
    PATCHES.by_run[run_id] = [c.patch for c in cases]
    before = await snapshot(db)
    outcomes = await small.run("patcher", run_id=run_id)

    state: Any = {}
    applied = 0
    assert len(outcomes) == len(cases)
    for case, outcome in zip(cases, outcomes, strict=True):
        if case.expect == "ok":
            merged = msgspec.json.decode(msgspec.json.encode(merge(state, case.patch)))
            if len(msgspec.json.encode(merged)) > LIMIT:  # good, but the state outgrew it
                assert outcome[0] == "PayloadTooLarge", (case, outcome)
                assert outcome[1].startswith("state is "), outcome
                continue
            assert outcome == "ok", (case, outcome)
            state = merged
            applied += 1
        else:
            assert outcome != "ok", case
            kind, message = outcome
            assert kind == case.expect or (
                # A bad value in a patch that also outgrows the limit: either is right.
                case.expect == "SerializationError" and kind == "PayloadTooLarge"
            ), (case, outcome)
            if kind == case.expect:
                assert case.message in message, (case, message)
            if kind != "ConfigurationError":
                assert message.startswith("state "), message

    info = await small.runs.get(run_id)
    assert_same(info.state, stored_form(state))
    updates = await db.fetchval(
        "SELECT count(*) FROM tidebase.events WHERE run_id = $1 AND type = 'state.updated'",
        run_id,
    )
    assert updates == applied
    await assert_only_added(db, before, run_id)


# -- secrets (item 5) -------------------------------------------------------------------

PASSWORD = "Pa55w0rd-d0-n0t-l0g"


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://tide:{PASSWORD}@127.0.0.1:1/app",
        f"postgresql://tide@127.0.0.1:1/app?password={PASSWORD}",
        f"postgresql://tide:{PASSWORD}@127.0.0.1:99999/app",
        f"postgresql://tide:{PASSWORD}@127.0.0.1:notaport/app",
        f"postgresql://tide:{PASSWORD}@[::1/app",
        f"mysql://tide:{PASSWORD}@127.0.0.1/app",
        f"postgresql://tide:{PASSWORD}@127.0.0.1:1/app?sslmode=sometimes",
    ],
)
async def test_no_dsn_password_in_errors_or_logs(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for connect in (
        lambda: Store.connect(dsn, connect_timeout=0.3),
        lambda: Tidebase(dsn, connect_timeout=0.3).__aenter__(),
    ):
        with pytest.raises((DatabaseUnreachable, ConfigurationError)) as raised:
            await connect()
        chain: list[BaseException] = []
        exc: BaseException | None = raised.value
        while exc is not None:
            chain.append(exc)
            exc = exc.__cause__ or exc.__context__
        for link in chain:
            assert PASSWORD not in str(link), link
            assert PASSWORD not in repr(link), link
    if "127.0.0.1:1/" in dsn and "sslmode" not in dsn:
        assert isinstance(raised.value, DatabaseUnreachable)
        assert "host 127.0.0.1 port 1 database app" in str(raised.value)
    assert PASSWORD not in caplog.text
    assert all(PASSWORD not in str(r.args) for r in caplog.records)
