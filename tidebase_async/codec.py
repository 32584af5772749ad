"""msgspec encoding and decoding of inputs, checkpoints, state and outputs.

Encoders and decoders are built once and cached per type: the replay hot path decodes
thousands of checkpoints and must not rebuild a decoder for each.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any

import msgspec

from tidebase_async import errors

_encoder = msgspec.json.Encoder()
_untyped = msgspec.json.Decoder()

#: Largest encoded value accepted (input, checkpoint, state, output), in bytes.
DEFAULT_MAX_PAYLOAD = 16 * 1024 * 1024


def encode(value: Any, *, where: str, max_size: int = DEFAULT_MAX_PAYLOAD) -> bytes:
    """Encode ``value`` as JSON.

    Raises:
        SerializationError: msgspec cannot encode it; the message names ``where`` and
            the offending type.
        PayloadTooLarge: the encoding exceeds ``max_size`` bytes.
    """
    try:
        data = _encoder.encode(value)
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
    return data


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
        except (TypeError, ValueError, OverflowError):
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
        return decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise errors.SerializationError(
            f"{where} does not decode as {_type_name(tp)}: {exc}", where=where
        ) from exc


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
