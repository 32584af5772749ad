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
from tidebase_async.engine.emit import part_decoder
from tidebase_async.models import TERMINAL_STATUSES
from tidebase_async.store.channels import EVENTS_CHANNEL, STREAM_CHANNEL, WAKE_CHANNEL

if TYPE_CHECKING:
    from tidebase_async.client.tidebase import Tidebase

# After the run ended: how long without new parts before the stream ends.
_QUIET_S = 0.3


class RunChanges:
    """Ids of runs that changed since ``take()`` was last called, and a signal set when
    there are some, or when a queue got new runs that no event names yet."""

    def __init__(self) -> None:
        self.signal = Signal()
        self._ids: set[str] = set()

    def add(self, ids: str) -> None:
        self._ids.update(p for p in ids.split(",") if p)
        self.signal.set()

    def take(self) -> list[str]:
        """The changed ids, sorted, and clears them (and the signal)."""
        self.signal.clear()
        ids = sorted(self._ids)
        self._ids.clear()
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
    listener = tide.listener
    if listener is None:
        raise errors.ConfigurationError("Tidebase is not open")
    if await tide.store.run_status(run_id) is None:
        raise errors.RunNotFound(f"no run with id {run_id}")
    key = str(run_id)
    ready: list[bytes] = []
    partial: dict[tuple[int, int], list[str | None]] = {}
    arrived = Signal()

    def on_part(payload: str) -> None:
        try:
            part = part_decoder.decode(payload)
        except msgspec.DecodeError:
            return
        if part.r != key or part.s != stream or not 0 <= part.i < part.k <= 10_000:
            return
        pieces = partial.setdefault((part.a, part.n), [None] * part.k)
        if len(pieces) != part.k:
            return
        pieces[part.i] = part.d
        if all(p is not None for p in pieces):
            del partial[(part.a, part.n)]
            ready.append(base64.b64decode("".join(p for p in pieces if p is not None)))
            arrived.set()

    remove = listener.subscribe(STREAM_CHANNEL, on_part)
    try:
        with tide.runs.watch(run_id) as changed:
            while True:
                while ready:
                    yield codec.decode(ready.pop(0), where=f"stream {stream!r}")
                arrived.clear()
                changed.clear()
                if await tide.store.run_status(run_id) in TERMINAL_STATUSES:
                    # Output is published after the writes it accompanies commit, so
                    # its last parts may still be on their way: take what arrives until
                    # a quiet moment, then end.
                    while await arrived.wait_for(_QUIET_S):
                        arrived.clear()
                        while ready:
                            yield codec.decode(ready.pop(0), where=f"stream {stream!r}")
                    return
                if ready:
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
