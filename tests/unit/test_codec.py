"""codec: encoding, decoding, typed decoders and their errors."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from tidebase_async import PayloadTooLarge, SerializationError
from tidebase_async._util import codec


class Point(msgspec.Struct, frozen=True):
    x: int
    y: int


class Opaque:
    """Something msgspec cannot encode."""


def returns_point() -> Point:
    return Point(x=1, y=2)


async def returns_point_async() -> Point:
    return Point(x=1, y=2)


def takes_point(run: object, input: Point) -> None:
    return None


def unresolvable() -> NoSuchType:  # type: ignore[name-defined]  # noqa: F821
    return None


def test_values_round_trip() -> None:
    when = datetime(2030, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)
    uid = uuid.uuid4()
    value = {"n": 1, "f": 1.5, "s": "x", "l": [1, None, True], "d": {"k": "v"}}
    assert codec.decode(codec.encode(value, where="t"), where="t") == value
    assert codec.decode(codec.encode(when, where="t"), tp=datetime, where="t") == when
    assert codec.decode(codec.encode(uid, where="t"), tp=uuid.UUID, where="t") == uid
    assert codec.decode(codec.encode(Point(x=1, y=2), where="t"), tp=Point, where="t") == Point(
        x=1, y=2
    )


def test_sets_encode_as_arrays() -> None:
    assert codec.encode({"s": {1}}, where="t") == b'{"s":[1]}'


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        (object(), "object"),
        (Opaque(), "Opaque"),
        ({"a": [1, {"b": Opaque()}]}, "Opaque"),
        ([1, 2, (3, object())], "object"),
        ({"f": lambda: None}, "function"),
    ],
)
def test_unencodable_values_raise_serialization_error_naming_where_and_type(
    value: Any, type_name: str
) -> None:
    with pytest.raises(SerializationError) as raised:
        codec.encode(value, where="step 'fetch'")
    assert raised.value.where == "step 'fetch'"
    assert raised.value.type_name == type_name
    assert "step 'fetch'" in str(raised.value)
    assert type_name in str(raised.value)
    assert isinstance(raised.value.__cause__, TypeError)


def test_too_large_a_value_raises_payload_too_large() -> None:
    with pytest.raises(PayloadTooLarge, match="state") as raised:
        codec.encode("x" * 100, where="state", max_size=50)
    assert isinstance(raised.value, SerializationError)
    assert codec.encode("x" * 10, where="state", max_size=50) == b'"' + b"x" * 10 + b'"'


def test_invalid_json_raises_serialization_error_naming_where() -> None:
    with pytest.raises(SerializationError, match="stored value") as raised:
        codec.decode(b"{not json", where="stored value")
    assert raised.value.where == "stored value"


def test_data_that_does_not_match_the_type_raises_serialization_error() -> None:
    with pytest.raises(SerializationError, match=r"input .*Point"):
        codec.decode(b'{"x": 1, "y": "two"}', tp=Point, where="input")
    with pytest.raises(SerializationError, match="input"):
        codec.decode(b'{"x": 1}', tp=Point, where="input")
    with pytest.raises(SerializationError):
        codec.decode(b'"not a date"', tp=datetime, where="output")


def test_decoders_are_built_once_per_type() -> None:
    assert codec.decoder_for(Point) is codec.decoder_for(Point)
    assert codec.decoder_for(Any) is codec.decoder_for(Any)
    assert codec.decoder_for(list[int]) is codec.decoder_for(list[int])


def test_return_and_parameter_types_come_from_annotations() -> None:
    assert codec.return_type(returns_point) is Point
    assert codec.return_type(returns_point_async) is Point
    assert codec.return_type(lambda: None) is Any
    assert codec.param_type(takes_point, 1) is Point
    assert codec.param_type(takes_point, 5) is Any
    assert codec.param_type(lambda run, input: None, 1) is Any


def test_unresolvable_annotations_fall_back_to_untyped() -> None:
    assert codec.return_type(unresolvable) is Any
