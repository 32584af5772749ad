"""Checks of the arguments workflow code and callers pass: history names, durations,
webhook channels."""

from __future__ import annotations

from datetime import timedelta

from tidebase_async import errors
from tidebase_async.workflows import check_name, is_utf8


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


def check_channels(channels: object, *, where: str) -> list[str]:
    """Webhook channels: a list of http(s) URLs."""
    if isinstance(channels, str) or not isinstance(channels, list | tuple):
        raise errors.ConfigurationError(f"{where}: channels must be a list of URLs")
    for url in channels:
        if (
            not isinstance(url, str)
            or not url.startswith(("http://", "https://"))
            or len(url) > 2048
            or not is_utf8(url)
            or any(ch.isspace() or ord(ch) < 32 for ch in url)
        ):
            raise errors.ConfigurationError(f"{where}: channel {url!r:.80} is not an http(s) URL")
    return list(channels)


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
