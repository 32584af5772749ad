"""What clients subscribe to: live output (``tide.runs.stream`` reassembles the parts
that ``run.emit`` published, see ``engine.emit``, into chunks until the run ends) and
the feed of changed runs that live lists refresh on (``changed_runs``)."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any
from uuid import UUID

import anyio
import msgspec

from tidebase_async import errors
from tidebase_async._util import codec
from tidebase_async._util.signals import Signal
from tidebase_async.engine.emit import PART_CHARS, Part, part_decoder
from tidebase_async.models import TERMINAL_STATUSES
from tidebase_async.store.channels import EVENTS_CHANNEL, STREAM_CHANNEL, WAKE_CHANNEL

if TYPE_CHECKING:
    from tidebase_async.client.tidebase import Tidebase

# After the run ended: how long without new parts before the stream ends.
_QUIET_S = 0.3
#: Reassembled chunks a subscriber may hold unread, in bytes, beyond one chunk.
MAX_UNREAD_BYTES = 8 * 1024 * 1024


class _Reassembly:
    """Parts of one subscriber's stream back into chunks, within bounds whatever the
    notifications say (any connected role can send some): a chunk has at most as many
    parts as the payload limit needs, one chunk per attempt is in progress at a time
    (the parts of a chunk are published in order, before the next chunk's), and unread
    chunks past ``MAX_UNREAD_BYTES`` end the stream with ``StreamOverflow``."""

    def __init__(self, *, max_payload: int) -> None:
        self.max_parts = -(-4 * -(-max_payload // 3) // PART_CHARS)
        self.ready: list[bytes] = []
        self._ready_bytes = 0
        self._max_unread = MAX_UNREAD_BYTES + max_payload
        self._slot: tuple[int, int] | None = None
        self._pieces: list[str | None] = []
        self.overflowed = False

    def add(self, part: Part) -> bool:
        """Take one part; True when it completed a chunk."""
        if not 0 <= part.i < part.k <= self.max_parts or len(part.d) > PART_CHARS:
            return False
        slot = (part.a, part.n)
        if slot != self._slot:
            # A new chunk: what was left of an unfinished one is dropped.
            self._slot, self._pieces = slot, [None] * part.k
        if len(self._pieces) != part.k:
            return False
        self._pieces[part.i] = part.d
        if any(p is None for p in self._pieces):
            return False
        chunk = base64.b64decode("".join(p for p in self._pieces if p is not None))
        self._slot, self._pieces = None, []
        if self._ready_bytes + len(chunk) > self._max_unread:
            self.overflowed = True
            return True
        self.ready.append(chunk)
        self._ready_bytes += len(chunk)
        return True

    def take(self) -> list[bytes]:
        """The chunks completed since the last call, in order.

        Raises:
            StreamOverflow: the subscriber fell too far behind; chunks were dropped.
        """
        if self.overflowed:
            raise errors.StreamOverflow(
                f"the subscriber fell more than {self._max_unread} bytes behind the "
                "live output; later chunks were dropped (read the stream faster)"
            )
        taken, self.ready, self._ready_bytes = self.ready, [], 0
        return taken


#: Changed run ids a reader may have pending; past this it is told to refresh all.
MAX_CHANGED_IDS = 10_000


class RunChanges:
    """Ids of runs that changed since ``take()`` was last called, and a signal set when
    there are some, or when a queue got new runs that no event names yet. Bounded: a
    reader that falls more than ``MAX_CHANGED_IDS`` ids behind gets an empty list
    (refresh everything) instead."""

    def __init__(self) -> None:
        self.signal = Signal()
        self._ids: set[str] = set()
        self._overflowed = False

    def add(self, ids: str) -> None:
        if not self._overflowed:
            self._ids.update(p for p in ids.split(",") if p)
            if len(self._ids) > MAX_CHANGED_IDS:
                self._ids.clear()
                self._overflowed = True
        self.signal.set()

    def take(self) -> list[str]:
        """The changed ids, sorted, and clears them (and the signal); an empty list
        after an overflow."""
        self.signal.clear()
        ids = sorted(self._ids)
        self._ids.clear()
        self._overflowed = False
        return ids


@contextlib.contextmanager
def changed_runs(tide: Tidebase) -> Iterator[RunChanges]:
    """Follow every change of every run (from LISTEN: nothing is stored, so nothing is
    replayed) while the context is open. Without a listener nothing arrives."""
    changes = RunChanges()
    listener = tide.listener
    removers: list[Callable[[], None]] = []
    if listener is not None:
        removers.append(listener.subscribe(EVENTS_CHANNEL, changes.add))
        removers.append(listener.subscribe(WAKE_CHANNEL, lambda _queue: changes.signal.set()))
    try:
        yield changes
    finally:
        for remove in removers:
            remove()


async def subscribe(
    tide: Tidebase, run_id: UUID, *, stream: str, poll: float = 1.0
) -> AsyncIterator[Any]:
    """Chunks of ``stream`` of the run as they are emitted, until the run is terminal."""
    store = tide.store  # ConfigurationError when not open
    listener = tide.listener
    if listener is None:
        # Open, but through a transaction-mode pooler without listen_dsn.
        raise errors.ConfigurationError(
            "live output is carried by NOTIFY only (it is not stored) and needs a LISTEN "
            "connection, which a transaction-mode pooler cannot hold: pass "
            "Tidebase(listen_dsn=...) or set TIDEBASE_LISTEN_URL to a direct connection"
        )
    if await store.run_status(run_id) is None:
        raise errors.RunNotFound(f"no run with id {run_id}")
    key = str(run_id)
    chunks = _Reassembly(max_payload=tide.max_payload_bytes)
    arrived = Signal()

    def on_part(payload: str) -> None:
        try:
            part = part_decoder.decode(payload)
        except msgspec.DecodeError:
            return
        if part.r == key and part.s == stream and chunks.add(part):
            arrived.set()

    remove = listener.subscribe(STREAM_CHANNEL, on_part)
    try:
        with tide.runs.watch(run_id) as changed:
            while True:
                for chunk in chunks.take():
                    yield codec.decode(chunk, where=f"stream {stream!r}")
                arrived.clear()
                changed.clear()
                if await tide.store.run_status(run_id) in TERMINAL_STATUSES:
                    # Output is published after the writes it accompanies commit, so
                    # its last parts may still be on their way: take what arrives until
                    # a quiet moment, then end.
                    while await arrived.wait_for(_QUIET_S):
                        arrived.clear()
                        for chunk in chunks.take():
                            yield codec.decode(chunk, where=f"stream {stream!r}")
                    return
                if chunks.ready:
                    continue
                await _either(arrived, changed, poll)
    finally:
        remove()


async def _either(a: Signal, b: Signal, timeout_s: float) -> None:
    """Wait until ``a`` or ``b`` is set, or ``timeout_s``."""
    with anyio.move_on_after(timeout_s):
        async with anyio.create_task_group() as tg:

            async def wait(signal: Signal) -> None:
                await signal.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(wait, a)
            tg.start_soon(wait, b)
