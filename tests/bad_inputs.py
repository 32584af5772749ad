"""Hypothesis strategies and models shared by the bad-input tests (unit and integration).

Good values: JSON-ish data as users pass it (incl. tuples, sets, bytes, ints far beyond
int64, deep but encodable nesting, SQL fragments and odd unicode in strings). Bad values:
a good structure hiding exactly one thing that cannot be stored as it is (NaN or an
infinity, a NUL character, a lone surrogate, nesting past the encoder's limit, an object
msgspec cannot encode), tagged with what the error message must say.

``stored_form`` models what a value reads back as: JSON (tuples and sets become lists,
bytes base64 text, dict keys text) and Postgres jsonb, which keeps numbers as
``numeric``: a float written with an exponent and no fraction digits (``1e16``) reads
back as the integer it equals.
"""

from __future__ import annotations

import dataclasses
import math
from decimal import Decimal
from typing import Any

import msgspec
from hypothesis import strategies as st

#: Text that tries to break out of a SQL literal, a LIKE pattern, a JSON string or a
#: format string, plus unicode that is easy to mishandle.
SQL_FRAGMENTS = [
    "'; DROP TABLE tidebase.runs; --",
    "x' OR '1'='1",
    '"; DELETE FROM tidebase.steps; --',
    "' || pg_sleep(10) || '",
    "Robert'); DROP TABLE students;--",
    "$1",
    "$$ $$",
    "%s",
    "%",
    "_",
    "\\",
    "\\u0000",
    "\\\\u0000",
    "'",
    '"',
    "NULL",
    "null",
    "}{",
    "\u202e",
    "\u2028",
    "\ufeff",
    "\U0010ffff",
    "😀",
    "ß",
    "名前",
]

#: Text Postgres text and jsonb can hold: no NUL, no lone surrogates.
storable_text = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12),
    st.sampled_from(SQL_FRAGMENTS),
)

_floats = st.floats(allow_nan=False, allow_infinity=False)
_ints = st.one_of(
    st.integers(),
    st.integers(min_value=2**63 - 2, max_value=2**64 + 2),  # around int64 / uint64
    st.integers(min_value=-(10**300), max_value=10**300),  # far beyond any int64
)
_scalars = st.one_of(st.none(), st.booleans(), _ints, _floats, storable_text)


class Nested(list[Any]):
    """A deeply nested list that prints short: Hypothesis cannot pretty-print (or
    shrink) a thousand levels of brackets."""

    depth = 0

    def __repr__(self) -> str:
        return f"nest({self.depth})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


def nest(depth: int, leaf: Any = None) -> Any:
    """``leaf`` inside ``depth`` one-element lists."""
    value = leaf
    for _ in range(depth - 1):
        value = [value]
    if depth <= 0:
        return value
    outer = Nested([value])
    outer.depth = depth
    return outer


#: JSON values (what decoding returns).
json_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(storable_text, inner, max_size=4)
    ),
    max_leaves=16,
)

#: What users pass: JSON values plus what encodes as JSON (tuples, sets, bytes, deep but
#: encodable nesting).
good_values = st.one_of(
    json_values,
    st.recursive(
        _scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3).map(tuple),
            st.frozensets(st.one_of(st.integers(), storable_text), max_size=4),
            st.sets(st.integers(), max_size=4),
            st.binary(max_size=16),
            st.dictionaries(storable_text, inner, max_size=3),
        ),
        max_leaves=10,
    ),
    st.builds(nest, st.integers(min_value=1, max_value=200), json_values),
)


class Opaque:
    """Something msgspec cannot encode."""


@dataclasses.dataclass
class Reading:
    sensor: str
    value: float


class Sample(msgspec.Struct):
    value: float
    tags: list[str] = []


#: Kind of bad value -> a fragment the error message must contain.
MESSAGE_OF = {
    "nan": "NaN or infinite",
    "nul": "NUL character",
    "surrogate": "surrogates not allowed",
    "deep": "nested too deeply",
}

_UNENCODABLE: list[tuple[Any, str]] = [
    (object(), "object"),
    (Opaque(), "Opaque"),
    (complex(1, 2), "complex"),
    (range(3), "range"),
    (Ellipsis, "ellipsis"),
    (iter([1]), "list_iterator"),
    (print, "builtin_function_or_method"),
    (Opaque, "type"),
]


def _with_nul(parts: tuple[str, str]) -> str:
    return parts[0] + "\x00" + parts[1]


def _with_surrogate(parts: tuple[str, str, str]) -> str:
    return parts[0] + parts[1] + parts[2]


_nul_text = st.tuples(storable_text, storable_text).map(_with_nul)
_surrogate_text = st.tuples(storable_text, st.characters(categories=["Cs"]), storable_text).map(
    _with_surrogate
)

#: (kind, leaf, message fragment) of one bad leaf.
bad_leaves: st.SearchStrategy[tuple[str, Any, str]] = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf]).map(lambda v: ("nan", v, MESSAGE_OF["nan"])),
    st.sampled_from([math.nan, -math.inf]).map(
        lambda v: ("nan", Reading(sensor="t", value=v), MESSAGE_OF["nan"])
    ),
    st.sampled_from([math.inf]).map(lambda v: ("nan", Sample(value=v), MESSAGE_OF["nan"])),
    _nul_text.map(lambda v: ("nul", v, MESSAGE_OF["nul"])),
    _surrogate_text.map(lambda v: ("surrogate", v, MESSAGE_OF["surrogate"])),
    # Past any stack: Python's limit is 1000 frames (Hypothesis lifts it by 2000 while
    # a test runs).
    st.integers(min_value=5_000, max_value=20_000).map(
        lambda d: ("deep", nest(d), MESSAGE_OF["deep"])
    ),
    st.sampled_from(_UNENCODABLE).map(lambda pair: ("type", pair[0], pair[1])),
)


@st.composite
def bad_values(draw: st.DrawFn) -> tuple[str, Any, str]:
    """A good structure with exactly one bad leaf (or bad dict key) somewhere inside."""
    kind, value, message = draw(bad_leaves)
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        siblings = draw(st.lists(json_values, max_size=3))
        shape = draw(st.sampled_from(["list", "tuple", "dict", "key"]))
        if shape == "key" and isinstance(value, str):
            # The bad text as a dict key rather than a value.
            value = {value: draw(json_values), **{f"k{i}": s for i, s in enumerate(siblings)}}
        elif shape in ("dict", "key"):
            key = draw(storable_text)
            value = {**{f"k{i}": s for i, s in enumerate(siblings)}, key: value}
        else:
            at = draw(st.integers(min_value=0, max_value=len(siblings)))
            items = [*siblings[:at], value, *siblings[at:]]
            value = tuple(items) if shape == "tuple" else items
    return kind, value, message


def _jsonb_number(text: str) -> Any:
    """How Postgres jsonb gives back the number msgspec wrote as ``text``: numeric keeps
    the digits after the decimal point it was given (scale = max(0, -exponent)); with
    none it prints an integer."""
    number = Decimal(text)
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)
    return int(number) if exponent >= 0 else float(text)


_stored_decoder = msgspec.json.Decoder(float_hook=_jsonb_number)


def stored_form(value: Any) -> Any:
    """What ``value`` reads back as after a trip through JSON and jsonb."""
    return _stored_decoder.decode(msgspec.json.encode(value))


def assert_same(actual: Any, expected: Any, path: str = "$") -> None:
    """Equal, and of the same JSON types all the way down (1 is not 1.0 nor True)."""
    assert type(actual) is type(expected), f"{path}: {actual!r} is not {expected!r}"
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys(), f"{path}: keys {actual.keys()} != {expected}"
        for key in expected:
            assert_same(actual[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), f"{path}: {actual!r} != {expected!r}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same(a, e, f"{path}[{i}]")
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


#: Names users might try for a workflow, queue, step or dedupe key.
name_candidates = st.one_of(
    st.sampled_from(
        [
            "",
            " ",
            "\t",
            " \n ",
            "\u3000",
            "x" * 200,
            "x" * 201,
            "ü" * 200,
            "😀" * 201,
            "a b",
            " padded ",
            "a\x00b",
            "a\x1fb",
            "a\x7fb",
            "tab\there",
            "\ud800",
            "x\udfffy",
            "\x85",
            "step#2",
            "~now",
            *SQL_FRAGMENTS,
        ]
    ),
    st.text(max_size=30),
    st.text(min_size=190, max_size=230),
    st.tuples(st.text(max_size=8), st.characters(categories=["Cs", "Cc"]), st.text(max_size=8)).map(
        "".join
    ),
)


def valid_name(name: str) -> bool:
    """The documented rule for workflow, queue and step names."""
    return (
        bool(name.strip())
        and len(name) <= 200
        and not any(ord(ch) < 32 or ch == "\x7f" for ch in name)
        and utf8(name)
    )


def valid_dedupe_key(key: str) -> bool:
    return bool(key) and len(key) <= 1000 and "\x00" not in key and utf8(key)


def utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
