"""msgspec encoding and decoding of inputs, checkpoints, state and outputs.

Encoders and decoders are built once and cached per type: the replay hot path decodes
thousands of checkpoints and must not rebuild a decoder for each.
"""

from __future__ import annotations

import functools
import inspect
import math
import re
import threading
import typing
from collections.abc import Callable
from typing import Any

import msgspec

from tidebase_async import errors

_encoder = msgspec.json.Encoder()
_untyped = msgspec.json.Decoder()

#: Largest encoded value accepted (input, checkpoint, state, output), in bytes.
DEFAULT_MAX_PAYLOAD = 16 * 1024 * 1024


def encode(
    value: Any, *, where: str, max_size: int = DEFAULT_MAX_PAYLOAD, jsonb: bool = True
) -> bytes:
    """Encode ``value`` as JSON.

    Values that would not read back as they were are refused rather than stored
    altered: NaN and infinities (msgspec writes ``null`` for them) and, when the value
    goes to a ``jsonb`` column (``jsonb=True``: input, metadata, state, output; step
    checkpoints are stored as bytes), strings with NUL characters (jsonb cannot hold
    ``\\u0000``).

    Raises:
        SerializationError: msgspec cannot encode it (the message names ``where`` and
            the offending type), it is nested too deeply, it holds a non-finite float
            or (``jsonb``) a NUL character.
        PayloadTooLarge: the encoding exceeds ``max_size`` bytes.
    """
    if value is None:  # the most common input by far: nothing to check
        return b"null"
    try:
        data = _encoder.encode(value)
    except RecursionError as exc:
        raise errors.SerializationError(
            f"{where} is nested too deeply to encode ({exc}); flatten it",
            where=where,
            type_name=type(value).__qualname__,
        ) from exc
    except (TypeError, ValueError, OverflowError) as exc:
        type_name = _offending_type(value, exc)
        raise errors.SerializationError(
            f"{where} cannot be encoded: {exc} (offending type: {type_name}); "
            "use JSON-compatible values, msgspec Structs, dataclasses or datetimes",
            where=where,
            type_name=type_name,
        ) from exc
    if len(data) > max_size:
        raise errors.PayloadTooLarge(
            f"{where} is {len(data)} bytes encoded, over the limit of {max_size} bytes "
            "(Tidebase(max_payload_bytes=...))",
            where=where,
        )
    # Both checks scan bytes first (C speed) and look closer only on a hit.
    if b"null" in data and _may_hold_non_finite(value) and _has_non_finite(value):
        raise errors.SerializationError(
            f"{where} holds a NaN or infinite float, which JSON cannot represent (it "
            "would be stored as null); store it as a string or None yourself",
            where=where,
            type_name="float",
        )
    if jsonb and b"\\u0000" in data and _NUL_ESCAPE.search(data):
        raise errors.SerializationError(
            f"{where} holds a string with a NUL character (\\x00), which Postgres jsonb "
            "cannot store; remove it or encode the text (e.g. as bytes, stored base64)",
            where=where,
            type_name="str",
        )
    return data


#: A JSON ``\u0000`` escape: preceded by an even number of backslashes (an odd one
#: would make it the text ``\u0000`` after an escaped backslash).
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


#: A msgpack float64 (msgspec writes every float so) whose exponent bits are all set:
#: NaN or an infinity.
_MSGPACK_NON_FINITE = re.compile(rb"\xcb[\x7f\xff][\xf0-\xff]")


def _may_hold_non_finite(value: Any) -> bool:
    """A quick test (as fast as encoding) that rules out NaN and infinities: msgpack
    keeps floats as they are, so a non-finite one shows in its bytes."""
    try:
        packed = msgspec.msgpack.encode(value)
    except Exception:
        return True
    return _MSGPACK_NON_FINITE.search(packed) is not None


def _has_non_finite(value: Any) -> bool:
    """Whether a NaN or infinity hides in ``value`` (which msgspec encoded as null).
    Dict keys do not count: msgspec writes float keys as strings (``"nan"``)."""
    stack = [value]
    converted: set[int] = set()
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
        elif item is None or isinstance(item, str | int | bytes | bytearray):
            continue
        elif id(item) not in converted:
            # Structs, dataclasses and friends: look at their builtin form.
            converted.add(id(item))
            try:
                stack.append(msgspec.to_builtins(item))
            except Exception:
                continue
    return False


def _offending_type(value: Any, exc: Exception) -> str:
    """Best effort: find the first value msgspec refuses, for the error message."""
    message = str(exc)
    if message.startswith("Encoding objects of type "):
        return message.removeprefix("Encoding objects of type ").split(" ", 1)[0]
    stack = [value]
    seen = 0
    while stack and seen < 10_000:
        seen += 1
        item = stack.pop()
        try:
            _encoder.encode(item)
        except (TypeError, ValueError, OverflowError, RecursionError):
            if isinstance(item, dict):
                stack.extend(item.keys())
                stack.extend(item.values())
            elif isinstance(item, list | tuple | set | frozenset):
                stack.extend(item)
            else:
                return type(item).__qualname__
    return type(value).__qualname__


def decoder_for(tp: Any) -> msgspec.json.Decoder[Any]:
    """A cached decoder for ``tp`` (``Any`` gives plain JSON values)."""
    if tp is Any:
        return _untyped
    try:
        return _cached_decoder(tp)
    except TypeError:  # an unhashable type annotation: build one uncached
        return msgspec.json.Decoder(tp)


@functools.lru_cache(maxsize=1024)
def _cached_decoder(tp: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(tp)


def decode(data: bytes, *, tp: Any = Any, where: str) -> Any:
    """Decode JSON ``data`` into ``tp``.

    Raises:
        SerializationError: the data does not match ``tp``; names ``where``.
    """
    try:
        decoder = decoder_for(tp)
    except TypeError as exc:
        raise errors.SerializationError(
            f"{where}: msgspec cannot decode into the declared type {_type_name(tp)}: {exc}",
            where=where,
            type_name=_type_name(tp),
        ) from exc
    try:
        try:
            return decoder.decode(data)
        except RecursionError:
            # msgspec's nesting limit is Python's recursion limit minus the current
            # stack depth: a value encoded by a shallow caller can be too deep for a
            # deep one. A fresh thread has the whole limit, more than any encoder had.
            return _decode_on_fresh_stack(decoder, data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
        raise errors.SerializationError(
            f"{where} does not decode as {_type_name(tp)}: {exc}", where=where
        ) from exc


def _decode_on_fresh_stack(decoder: msgspec.json.Decoder[Any], data: bytes) -> Any:
    outcome: list[tuple[bool, Any]] = []

    def target() -> None:
        try:
            outcome.append((True, decoder.decode(data)))
        except BaseException as exc:
            outcome.append((False, exc))

    thread = threading.Thread(target=target, name="tidebase-decode", daemon=True)
    thread.start()
    thread.join()
    ok, result = outcome[0]
    if not ok:
        raise result
    return result


def _type_name(tp: Any) -> str:
    return getattr(tp, "__qualname__", None) or repr(tp)


def return_type(fn: Callable[..., Any]) -> Any:
    """The declared return type of ``fn`` for typed checkpoint decoding, else ``Any``.

    Coroutine functions declare the awaited type, which is what is checkpointed.
    Cached per function: replay asks for every step, and resolving string annotations
    (``from __future__ import annotations``) costs more than decoding the checkpoint.
    """
    target = inspect.unwrap(fn)
    annotations = getattr(target, "__annotations__", None)
    if not annotations or "return" not in annotations:
        return Any  # lambdas, builtins, unannotated functions: nothing to resolve
    try:
        return _cached_return_type(target)
    except TypeError:  # unhashable callable object
        return _hints(target).get("return", Any)


@functools.lru_cache(maxsize=4096)
def _cached_return_type(target: Callable[..., Any]) -> Any:
    return _hints(target).get("return", Any)


def param_type(fn: Callable[..., Any], index: int) -> Any:
    """The declared type of positional parameter ``index`` of ``fn``, else ``Any``."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return Any
    if index >= len(params):
        return Any
    return _hints(fn).get(params[index].name, Any)


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    target = inspect.unwrap(fn)
    try:
        hints = typing.get_type_hints(target)
    except Exception:
        # Unresolvable forward references: fall back to untyped decoding rather than
        # refusing to run the workflow.
        return {}
    return hints
