"""Run ids: time-ordered UUID version 7, monotonic within the process, and new random
bits in a forked child."""

from __future__ import annotations

import os
import time
from uuid import UUID

from tidebase_async._util import ids
from tidebase_async._util.ids import uuid7


def test_ids_are_version_7_uuids_that_behave_like_any_uuid() -> None:
    made = uuid7()
    parsed = UUID(str(made))
    assert made == parsed and hash(made) == hash(parsed)
    assert made.version == 7 and made.variant == "specified in RFC 4122"
    assert isinstance(made, UUID) and repr(made) == f"UUID('{made}')"
    # The first 48 bits are the Unix time in milliseconds.
    assert abs((made.int >> 80) - time.time_ns() // 1_000_000) < 5_000


def test_ids_are_unique_and_increase_across_many_in_one_millisecond() -> None:
    made = [uuid7() for _ in range(20_000)]
    assert len(set(made)) == len(made)
    assert made == sorted(made)


def test_the_random_bits_differ_between_ids() -> None:
    rand = {uuid7().int & ((1 << 62) - 1) for _ in range(2_000)}
    assert len(rand) == 2_000


def test_a_forked_child_does_not_reuse_the_parents_random_bits() -> None:
    uuid7()  # the parent holds a block of random bytes it has not used up
    assert ids._random
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report whether it inherited the unread block
        os.close(read)
        os.write(write, b"empty" if ids._random == b"" else b"inherited")
        os._exit(0)
    os.close(write)
    try:
        answer = os.read(read, 32)
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert answer == b"empty"


def test_a_batch_of_ids_continues_the_sequence_of_single_ones() -> None:
    made = [uuid7() for _ in range(3)] + ids.uuid7_many(5_000) + [uuid7() for _ in range(3)]
    assert made == sorted(made)
    assert len(set(made)) == len(made)
    assert {u.version for u in made} == {7}
