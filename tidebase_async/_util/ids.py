"""Identifiers: time-ordered UUIDs (version 7) for runs."""

from __future__ import annotations

import os
import time
from uuid import UUID, SafeUUID

_last_ms = 0
_counter = 0
# Random bits are read from the OS in blocks (one syscall per 512 ids, not per id).
_RANDOM_BLOCK = 8 * 512
_random = b""
_offset = 0
_MASK_62 = (1 << 62) - 1
_MASK_48 = (1 << 48) - 1
_VERSION_VARIANT = 0x7 << 76 | 0x2 << 62
_UNKNOWN_SAFETY = SafeUUID.unknown


def _forget_random() -> None:
    # A forked child must not reuse the parent's unread block: both would make the
    # same ids in the same millisecond.
    global _random, _offset
    _random, _offset = b"", 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_random)


def _stamps(count: int) -> list[tuple[int, int]]:
    """The next ``count`` (millisecond, counter) pairs, in increasing order."""
    global _last_ms, _counter
    ms = time.time_ns() // 1_000_000
    if ms > _last_ms:
        _last_ms, _counter = ms, -1
    out: list[tuple[int, int]] = []
    for _ in range(count):
        _counter += 1
        if _counter > 0xFFF:  # 4096 ids in one millisecond: borrow the next one
            _last_ms += 1
            _counter = 0
        out.append((_last_ms, _counter))
    return out


def uuid7_many(count: int) -> list[UUID]:
    """``count`` ids as ``uuid7`` makes them, in increasing order, for a batch (one
    clock read and one read of random bytes for all)."""
    rand = os.urandom(8 * count)
    ids: list[UUID] = []
    for i, (ms, counter) in enumerate(_stamps(count)):
        bits = int.from_bytes(rand[8 * i : 8 * i + 8], "big") & _MASK_62
        ids.append(_uuid((ms & _MASK_48) << 80 | counter << 64 | _VERSION_VARIANT | bits))
    return ids


def _uuid(value: int) -> UUID:
    # What UUID(int=value) does, without its range and argument checks (value is a
    # version-7 layout by construction): a measurable part of enqueue_many's cost.
    uuid = object.__new__(UUID)
    object.__setattr__(uuid, "int", value)
    object.__setattr__(uuid, "is_safe", _UNKNOWN_SAFETY)
    return uuid


def uuid7() -> UUID:
    """A time-ordered UUID (RFC 9562 version 7): new runs land at the right edge of
    the primary key index instead of at random pages.

    Monotonic within the process (RFC 9562 method 1): the 12 bits after the millisecond
    count up within a millisecond, so runs created together (an ``enqueue_many``
    batch, whose runs share one ``run_at``) are claimed in the order they were given.
    The other 62 bits come from ``os.urandom``.
    """
    global _random, _offset
    ((ms, counter),) = _stamps(1)
    if _offset >= len(_random):
        _random, _offset = os.urandom(_RANDOM_BLOCK), 0
    bits = int.from_bytes(_random[_offset : _offset + 8], "big") & _MASK_62
    _offset += 8
    return _uuid((ms & _MASK_48) << 80 | counter << 64 | _VERSION_VARIANT | bits)
