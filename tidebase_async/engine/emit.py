"""Live output, the publishing half: ``run.emit`` encodes a chunk and splits it into
notification-sized parts (the subscribing half, ``tide.runs.stream``, is
``client.streams``).

Chunks are ephemeral: published through NOTIFY (so every subscriber on any process
gets them, in order), never stored; a subscriber sees what is emitted while it
listens. A chunk is JSON; its encoding is split into parts that fit a notification
(8000 bytes) and reassembled by subscribers, so a chunk of any size (up to the payload
limit) arrives whole. Each part: ``{"r": run id, "s": stream, "a": attempt, "n": chunk
number, "i": part, "k": parts, "d": base64}``.
"""

from __future__ import annotations

import base64
from uuid import UUID

import msgspec

PART_CHARS = 6000  # base64 characters per notification, well under its 8000-byte limit


class Part(msgspec.Struct, frozen=True):
    r: str
    s: str
    a: int
    n: int
    i: int
    k: int
    d: str


part_decoder = msgspec.json.Decoder(Part)


def parts_of(run_id: UUID, stream: str, attempt: int, number: int, chunk: bytes) -> list[str]:
    """The notification payloads of one encoded chunk."""
    text = base64.b64encode(chunk).decode("ascii")
    pieces = [text[i : i + PART_CHARS] for i in range(0, len(text), PART_CHARS)] or [""]
    return [
        msgspec.json.encode(
            Part(str(run_id), stream, attempt, number, i, len(pieces), piece)
        ).decode()
        for i, piece in enumerate(pieces)
    ]
