"""Live output reassembly (``client.streams``) stays within bounds whatever arrives:
notifications can be sent by any connected role, so forged or endless parts must not
grow a subscriber."""

from __future__ import annotations

import base64
import uuid

import msgspec
import pytest

from tidebase_async import StreamOverflow
from tidebase_async.client.streams import MAX_UNREAD_BYTES, _Reassembly
from tidebase_async.engine.emit import PART_CHARS, Part, parts_of

RUN = uuid.uuid4()


def _parts(chunk: bytes, *, attempt: int = 1, number: int = 1) -> list[Part]:
    return [msgspec.json.decode(p, type=Part) for p in parts_of(RUN, "out", attempt, number, chunk)]


def test_a_chunk_split_into_parts_comes_back_whole() -> None:
    chunk = bytes(range(256)) * 100  # several parts
    r = _Reassembly(max_payload=1024 * 1024)
    parts = _parts(chunk)
    assert len(parts) > 1
    assert [r.add(p) for p in parts] == [False] * (len(parts) - 1) + [True]
    assert r.take() == [chunk]
    assert r.take() == []


def test_a_part_count_beyond_what_the_payload_limit_needs_is_ignored() -> None:
    """Regression: k up to 10,000 was accepted and preallocated per partial chunk."""
    r = _Reassembly(max_payload=64 * 1024)
    assert r.max_parts == -(-4 * -(-64 * 1024 // 3) // PART_CHARS)
    assert not r.add(Part(str(RUN), "out", 1, 1, 0, r.max_parts + 1, "eA=="))
    assert r._pieces == []


def test_unfinished_forged_chunks_do_not_accumulate() -> None:
    """Regression: 3,000 forged notifications of ~110 bytes, each starting a chunk that
    never finished, grew a subscriber by 229 MB. One chunk is in progress at a time."""
    r = _Reassembly(max_payload=16 * 1024 * 1024)
    for n in range(3000):
        assert not r.add(Part(str(RUN), "out", 1, n, 0, r.max_parts, "eA=="))
    assert len(r._pieces) == r.max_parts  # the latest one only
    # A real chunk after the forgeries still arrives.
    for part in _parts(b'"ok"', number=5000):
        r.add(part)
    assert r.take() == [b'"ok"']


def test_an_oversized_piece_is_ignored() -> None:
    r = _Reassembly(max_payload=1024)
    assert not r.add(Part(str(RUN), "out", 1, 1, 0, 1, "A" * (PART_CHARS + 4)))
    assert r.take() == []


def test_a_subscriber_that_does_not_read_ends_with_stream_overflow() -> None:
    r = _Reassembly(max_payload=1024 * 1024)
    chunk = b'"' + b"x" * (1024 * 1024 - 2) + b'"'
    for n in range(MAX_UNREAD_BYTES // len(chunk) + 2):
        for part in _parts(chunk, number=n):
            r.add(part)
    with pytest.raises(StreamOverflow, match="behind"):
        r.take()


def test_parts_decode_as_published() -> None:
    (part,) = _parts(b"[1]")
    assert base64.b64decode(part.d) == b"[1]"
