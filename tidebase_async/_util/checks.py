"""Checks of what callers and workflow code pass in: names, free text, history names,
durations, webhook channels. Pure: each returns the value or raises
``ConfigurationError`` naming the problem."""

from __future__ import annotations

import uuid
from datetime import timedelta

from tidebase_async import errors
from tidebase_async._util.urls import check_http_url

MAX_NAME_LENGTH = 200


def check_name(kind: str, name: object) -> str:
    """Validate a workflow, queue, step or gate name.

    Raises:
        ConfigurationError: not a string, empty, longer than 200 characters, or
            containing control characters or lone surrogates; the message names the
            kind and the value.
    """
    if isinstance(name, str) and (kind, name) in _VALID_NAMES:
        return name
    valid = _check_name(kind, name)
    if len(_VALID_NAMES) < 10_000:  # step names repeat; remember the good ones
        _VALID_NAMES.add((kind, valid))
    return valid


_VALID_NAMES: set[tuple[str, str]] = set()


def check_text(what: str, value: object, *, max_length: int = 1000) -> None:
    """Free text stored as given (a reason, an actor, a label): None, or a str of at
    most ``max_length`` characters that Postgres text can hold (no NUL, no lone
    surrogate).

    Raises:
        ConfigurationError: names ``what`` and the value.
    """
    if value is None:
        return
    if (
        not isinstance(value, str)
        or len(value) > max_length
        or "\x00" in value
        or not is_utf8(value)
    ):
        raise errors.ConfigurationError(
            f"{what} must be a str of at most {max_length} characters without NUL "
            f"characters or lone surrogates, got {value!r:.60}"
        )


def _check_name(kind: str, name: object) -> str:
    if not isinstance(name, str):
        raise errors.ConfigurationError(f"{kind} name must be a str, got {type(name).__name__}")
    if not name or not name.strip():
        raise errors.ConfigurationError(f"{kind} name must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise errors.ConfigurationError(
            f"{kind} name is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}: "
            f"{name[:40]!r}..."
        )
    if any(ord(ch) < 32 or ch == "\x7f" for ch in name):
        raise errors.ConfigurationError(f"{kind} name {name!r} contains control characters")
    if not is_utf8(name):
        raise errors.ConfigurationError(
            f"{kind} name {name!r} contains a lone surrogate, which is not valid UTF-8"
        )
    return name


def is_utf8(text: str) -> bool:
    """Whether ``text`` can be stored as Postgres text (no lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_history_name(kind: str, name: object) -> str:
    """A step, sleep, gate, child or fanout name: ``#`` and a leading ``~`` are
    reserved (ordinals and built-in steps), so a user's name can never equal the name
    an ordinal gives another entry ("ok#2")."""
    check_name(kind, name)
    assert isinstance(name, str)
    if "#" in name or name.startswith("~"):
        raise errors.ConfigurationError(
            f"{kind} name {name!r} may not contain '#' or start with '~' "
            "(reserved for ordinals and built-in steps)"
        )
    if kind == "gate" and "/" in name:
        # A gate name is a segment of its resolve URL; servers decode %2F before
        # routing, so a '/' in it could never be addressed there.
        raise errors.ConfigurationError(f"gate name {name!r} may not contain '/'")
    return name


#: The longest key of an event (``run.wait_for_event``, ``tide.events.send``).
MAX_EVENT_KEY_LENGTH = 200


def check_event_key(key: object, *, event: str) -> str:
    """The key of event ``event``: a non-empty str of at most 200 characters that
    Postgres text can hold (no NUL, no lone surrogate); an int or a UUID stands for
    its str form (``42`` and ``"42"`` are one key).

    Raises:
        ConfigurationError: names the event, the problem and the key.
    """
    if (isinstance(key, int) and not isinstance(key, bool)) or isinstance(key, uuid.UUID):
        key = str(key)
    if not isinstance(key, str):
        raise errors.ConfigurationError(
            f"event {event!r}: key must be a str (or an int or UUID), got {type(key).__name__}"
        )
    if not key:
        raise errors.ConfigurationError(f"event {event!r}: key must not be empty")
    if len(key) > MAX_EVENT_KEY_LENGTH:
        raise errors.ConfigurationError(
            f"event {event!r}: key is {len(key)} characters long; the limit is "
            f"{MAX_EVENT_KEY_LENGTH}: {key[:40]!r}..."
        )
    if "\x00" in key or not is_utf8(key):
        raise errors.ConfigurationError(
            f"event {event!r}: key {key[:60]!r} contains a NUL character or a lone surrogate"
        )
    return key


def check_channels(channels: object, *, where: str) -> list[str]:
    """Webhook channels: a list of http(s) URLs with a host and a valid port.

    Raises:
        ConfigurationError: names ``where`` and the first bad URL (redacted).
    """
    if isinstance(channels, str) or not isinstance(channels, list | tuple):
        raise errors.ConfigurationError(f"{where}: channels must be a list of URLs")
    return [check_http_url(url, where=where) for url in channels]


def as_seconds(value: float | timedelta | None, *, what: str) -> float | None:
    """Accept float seconds or a timedelta; reject negatives and other types."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise errors.ConfigurationError(
            f"{what} must be seconds (float) or a timedelta, got {type(value).__name__}"
        )
    if seconds != seconds or seconds < 0:
        raise errors.ConfigurationError(f"{what} must be >= 0, got {value!r}")
    return seconds
