"""Bad input, pure parts (property-based): codec refuses what it cannot store as it is,
with a SerializationError that says why, and never refuses what it can; names follow
one rule; recorded errors are always storable."""

from __future__ import annotations

import math
import sys
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.bad_inputs import (
    Reading,
    Sample,
    bad_values,
    good_values,
    name_candidates,
    nest,
    storable_text,
    utf8,
    valid_name,
)
from tidebase_async import ConfigurationError, PayloadTooLarge, SerializationError, Tidebase
from tidebase_async._util import codec
from tidebase_async._util.checks import check_name
from tidebase_async._util.failures import error_info

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(value=good_values)
def test_good_values_encode_exactly_as_msgspec_does(value: Any) -> None:
    # No false alarms: None next to text that merely spells "\u0000", big ints, deep
    # nesting, tuples, sets and bytes all pass unchanged.
    assert codec.encode(value, where="input") == msgspec.json.encode(value)


@FAST
@given(bad=bad_values(), where=st.sampled_from(["input", "metadata", "state", "step 'fetch'"]))
def test_every_bad_value_raises_a_serialization_error_saying_why(
    bad: tuple[str, Any, str], where: str
) -> None:
    kind, value, message = bad
    with pytest.raises(SerializationError) as raised:
        codec.encode(value, where=where)
    error = raised.value
    assert not isinstance(error, PayloadTooLarge)
    assert str(error).startswith(where + " "), str(error)
    assert message in str(error), (kind, str(error))
    assert error.where == where
    if kind == "type":
        assert error.type_name == message


@FAST
@given(text=st.text(st.sampled_from(["\\", "u", "0", "\x00", "a", '"']), max_size=16))
@example(text="\\u0000")
@example(text="\\\x00")
@example(text="\\\\\x00")
def test_nul_is_refused_exactly_when_there_is_one(text: str) -> None:
    """The scan for ``\\u0000`` in the encoded bytes must not mistake an escaped
    backslash followed by the text ``u0000`` for a NUL, nor miss a real one."""
    for value in (text, {text: 1}, [1, {"k": [text]}]):
        if "\x00" in text:
            with pytest.raises(SerializationError, match="NUL character"):
                codec.encode(value, where="input")
        else:
            assert codec.decode(codec.encode(value, where="input"), where="input") == value
        # Step checkpoints are stored as bytes, where a NUL is fine.
        data = codec.encode(value, where="step 'x'", jsonb=False)
        assert codec.decode(data, where="step 'x'") == value


_maybe_finite = st.one_of(
    st.floats(), st.none(), st.integers(min_value=-5, max_value=5), storable_text
)
_float_trees = st.recursive(
    _maybe_finite,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(storable_text, inner, max_size=3),
        st.builds(Reading, sensor=st.just("s"), value=st.floats()),
        st.builds(Sample, value=st.floats()),
    ),
    max_leaves=12,
)


def _non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_non_finite(v) for v in value)
    if isinstance(value, Reading | Sample):
        return _non_finite(value.value)
    return False


@FAST
@given(value=_float_trees)
def test_nan_and_infinity_are_refused_exactly_when_present(value: Any) -> None:
    """msgspec writes NaN and infinities as null: a silent change of the data, so the
    codec refuses them (in plain values, dataclasses and Structs alike)."""
    if _non_finite(value):
        with pytest.raises(SerializationError, match="NaN or infinite") as raised:
            codec.encode(value, where="step 'measure'")
        assert raised.value.type_name == "float"
        assert "step 'measure'" in str(raised.value)
    else:
        assert codec.encode(value, where="step 'measure'") == msgspec.json.encode(value)


def test_float_dict_keys_are_text_not_nan() -> None:
    # msgspec writes a float key as its text ("nan"), which loses nothing silently.
    assert codec.encode({math.nan: 1}, where="input") == b'{"nan":1}'


@FAST
@given(size=st.integers(min_value=0, max_value=300), limit=st.integers(min_value=1, max_value=300))
def test_payload_limit_is_exact_and_named(size: int, limit: int) -> None:
    value = "x" * size
    encoded_size = size + 2  # the quotes
    if encoded_size > limit:
        with pytest.raises(PayloadTooLarge) as raised:
            codec.encode(value, where="step 'big'", max_size=limit)
        assert str(raised.value).startswith(f"step 'big' is {encoded_size} bytes encoded")
        assert f"over the limit of {limit} bytes" in str(raised.value)
        assert raised.value.where == "step 'big'"
    else:
        assert codec.encode(value, where="step 'big'", max_size=limit) == f'"{value}"'.encode()


def _at_depth(frames: int, fn: Any) -> Any:
    if frames <= 0:
        return fn()
    return _at_depth(frames - 1, fn)


def _deepest_encodable() -> int:
    """The deepest nesting codec.encode accepts from here (its limit depends on the
    caller's stack depth)."""
    low, high = 1, sys.getrecursionlimit() + 10
    while low < high:
        mid = (low + high + 1) // 2
        try:
            codec.encode(nest(mid), where="input")
        except SerializationError:
            high = mid - 1
        else:
            low = mid
    return low


@pytest.mark.parametrize("frames", [0, 50, 300, 700, 900])
def test_whatever_encodes_decodes_at_any_stack_depth(frames: int) -> None:
    """msgspec's nesting limit is Python's recursion limit minus the stack depth: a value
    accepted by a shallow caller (enqueue) must still decode in a deep one (a worker).
    (Not under Hypothesis, which lifts the recursion limit while a test runs.)"""
    assert sys.getrecursionlimit() == 1000
    depth = _deepest_encodable()
    data = codec.encode(nest(depth), where="input")
    assert _at_depth(frames, lambda: codec.decode(data, where="input")) == nest(depth)
    assert _at_depth(frames, lambda: codec.decode(data, tp=list[Any], where="input")) == nest(depth)


def test_nesting_no_stack_can_decode_is_a_serialization_error() -> None:
    data = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(SerializationError, match="input does not decode"):
        codec.decode(data, where="input")


@FAST
@given(name=name_candidates, kind=st.sampled_from(["workflow", "queue", "step"]))
def test_names_follow_one_rule(name: str, kind: str) -> None:
    if valid_name(name):
        assert check_name(kind, name) == name
    else:
        with pytest.raises(ConfigurationError) as raised:
            check_name(kind, name)
        assert str(raised.value).startswith(f"{kind} name "), str(raised.value)


@pytest.mark.parametrize("bad", [None, 1, b"wf", ["wf"]])
def test_names_must_be_text(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="workflow name must be a str"):
        check_name("workflow", bad)


@FAST
@given(text=st.text(st.one_of(st.characters(), st.characters(categories=["Cs"])), max_size=20))
@example(text="bad byte \x00 in \ud800 here")
def test_recorded_errors_are_always_storable(text: str) -> None:
    """A step that raises with a NUL (or a lone surrogate) in its message must not make
    its failure unrecordable: the error is spelled out, never refused."""
    info = error_info(ValueError(text))
    data = codec.encode(info, where="error")
    decoded = codec.decode(data, where="error")
    assert decoded["type"] == "ValueError"
    assert "\x00" not in decoded["message"]
    if "\x00" not in text and utf8(text):
        assert decoded["message"] == text
    else:
        assert (
            decoded["message"]
            == text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode()
        )


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "16MiB", None])
def test_a_bad_payload_limit_is_a_configuration_error(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="max_payload_bytes must be an int >= 1"):
        Tidebase("postgresql://localhost/x", max_payload_bytes=bad)
