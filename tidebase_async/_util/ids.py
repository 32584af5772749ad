"""Identifiers: time-ordered UUIDs (version 7) for runs."""

from __future__ import annotations

import os
import time
from uuid import UUID

_last_ms = 0
_counter = 0


def uuid7() -> UUID:
    """A time-ordered UUID (RFC 9562 version 7): new runs land at the right edge of
    the primary key index instead of at random pages.

    Monotonic within the process (RFC 9562 method 1): the 12 bits after the millisecond
    count up within a millisecond, so runs created together (an ``enqueue_many``
    batch, whose runs share one ``run_at``) are claimed in the order they were given.
    """
    global _last_ms, _counter
    ms = time.time_ns() // 1_000_000
    if ms <= _last_ms:
        _counter += 1
        if _counter > 0xFFF:  # 4096 ids in one millisecond: borrow the next one
            _last_ms += 1
            _counter = 0
        ms = _last_ms
    else:
        _last_ms = ms
        _counter = 0
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | _counter << 64 | 0x2 << 62 | rand
    return UUID(int=value)
