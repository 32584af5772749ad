"""Pure rules of the durable core: merge patches, ids, names, durations, error records,
workflow registration."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from typing import Any

import pytest

from tidebase_async import ConfigurationError, Run, Tidebase
from tidebase_async._util.checks import MAX_NAME_LENGTH, as_seconds, check_name
from tidebase_async._util.failures import error_info
from tidebase_async._util.ids import uuid7
from tidebase_async.engine.state import merge_patch

# RFC 7396, appendix A.
RFC_7396_CASES: list[tuple[Any, Any, Any]] = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "expected"), RFC_7396_CASES)
def test_merge_patch_follows_rfc_7396(target: Any, patch: Any, expected: Any) -> None:
    assert merge_patch(target, patch) == expected


def test_merge_patch_does_not_mutate_its_arguments() -> None:
    target = {"a": {"b": 1}, "c": 2}
    patch = {"a": {"b": None, "d": 3}}
    merge_patch(target, patch)
    assert target == {"a": {"b": 1}, "c": 2}
    assert patch == {"a": {"b": None, "d": 3}}


def test_uuid7_is_version_7_with_the_rfc_variant() -> None:
    for _ in range(100):
        value = uuid7()
        assert value.version == 7
        assert value.variant == uuid.RFC_4122


def test_uuid7_carries_the_current_time_in_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    value = uuid7()
    after = time.time_ns() // 1_000_000
    assert before <= value.int >> 80 <= after


def test_uuid7s_made_in_later_milliseconds_sort_later() -> None:
    ids = []
    for _ in range(5):
        ids.append(uuid7())
        time.sleep(0.002)
    assert ids == sorted(ids)
    assert [u.bytes for u in ids] == sorted(u.bytes for u in ids)
    assert len(set(uuid7() for _ in range(1000))) == 1000


@pytest.mark.parametrize(
    "name", ["a", "generate-report", "with space", "ünïcode", "x" * MAX_NAME_LENGTH]
)
def test_valid_names_pass(name: str) -> None:
    assert check_name("step", name) == name


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (None, "step name must be a str, got NoneType"),
        (3, "step name must be a str, got int"),
        ("", "step name must not be empty"),
        ("   ", "step name must not be empty"),
        ("x" * (MAX_NAME_LENGTH + 1), "step name is 201 characters long; the limit is 200"),
        ("new\nline", "contains control characters"),
        ("nul\x00", "contains control characters"),
        ("del\x7f", "contains control characters"),
    ],
)
def test_invalid_names_raise_configuration_error(name: object, message: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        check_name("step", name)
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), (0, 0.0), (1.5, 1.5), (3, 3.0), (timedelta(minutes=2), 120.0)],
)
def test_durations_accept_seconds_and_timedeltas(value: Any, expected: float | None) -> None:
    assert as_seconds(value, what="delay") == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, "delay must be >= 0"),
        (timedelta(seconds=-1), "delay must be >= 0"),
        (float("nan"), "delay must be >= 0"),
        (True, "delay must be seconds"),
        ("5", "delay must be seconds"),
    ],
)
def test_bad_durations_raise_configuration_error(value: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        as_seconds(value, what="delay")


def test_error_info_records_type_message_and_traceback() -> None:
    def fail() -> None:
        raise ValueError("bad value")

    try:
        fail()
    except ValueError as exc:
        info = error_info(exc)
    assert info["type"] == "ValueError"
    assert info["message"] == "bad value"
    assert "in fail" in info["traceback"]
    assert info["traceback"].rstrip().endswith("ValueError: bad value")


def _tide() -> Tidebase:
    return Tidebase("postgresql://nobody@127.0.0.1:1/none")


def test_registering_a_sync_function_is_refused() -> None:
    def sync(run: Run) -> None:
        return None

    with pytest.raises(ConfigurationError, match="async function"):
        _tide().workflow("sync")(sync)  # type: ignore[type-var]


def test_a_workflow_takes_run_and_at_most_an_input() -> None:
    async def three(run: Run, a: int, b: int) -> None:
        return None

    async def none() -> None:
        return None

    with pytest.raises(ConfigurationError, match=r"\(run\) or \(run, input\)"):
        _tide().workflow("three")(three)
    with pytest.raises(ConfigurationError, match=r"\(run\) or \(run, input\)"):
        _tide().workflow("none")(none)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("", {}, "workflow name must not be empty"),
        ("w", {"queue": ""}, "queue name must not be empty"),
        ("w", {"max_attempts": 0}, "max_attempts must be an int >= 1"),
    ],
)
def test_bad_workflow_options_are_refused(name: str, options: dict[str, Any], message: str) -> None:
    async def fn(run: Run) -> None:
        return None

    with pytest.raises(ConfigurationError, match=message):
        _tide().workflow(name, **options)(fn)


def test_a_workflow_name_cannot_be_registered_twice() -> None:
    tide = _tide()

    async def first(run: Run) -> None:
        return None

    async def second(run: Run) -> None:
        return None

    tide.workflow("w")(first)
    tide.workflow("w")(first)  # the same function again is harmless
    with pytest.raises(ConfigurationError, match="registered twice"):
        tide.workflow("w")(second)


#: An annotation msgspec refuses to build a decoder for (two array-like types in a union).
Undecodable = list[int] | tuple[int, ...]


def test_a_workflow_whose_input_type_msgspec_cannot_decode_is_refused_at_registration() -> None:
    """Regression: an input annotation msgspec cannot build a decoder for was accepted
    at registration, so the workflow only broke once a run decoded its input."""
    tide = _tide()

    async def bad_input(run: Run, input: Undecodable) -> None:
        return None

    with pytest.raises(ConfigurationError) as refused:
        tide.workflow("bad-input")(bad_input)
    assert "'bad-input'" in str(refused.value)
    assert "input" in str(refused.value)
    assert "bad-input" not in tide.workflows


def test_a_workflow_whose_return_type_msgspec_cannot_decode_is_refused_at_registration() -> None:
    """Regression: a return annotation msgspec cannot build a decoder for was accepted
    at registration, so the workflow only broke once a run's output was decoded."""
    tide = _tide()

    async def bad_output(run: Run) -> Undecodable:
        return [1]

    with pytest.raises(ConfigurationError) as refused:
        tide.workflow("bad-output")(bad_output)
    assert "'bad-output'" in str(refused.value)
    assert "return" in str(refused.value)
    assert "bad-output" not in tide.workflows
