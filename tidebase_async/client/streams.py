"""Live output, the subscribing half: ``tide.runs.stream`` reassembles the parts that
``run.emit`` published (see ``engine.emit``) into chunks, until the run ends."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from uuid import UUID

import anyio
import msgspec

from tidebase_async import errors
from tidebase_async._util import codec
from tidebase_async._util.signals import Signal
from tidebase_async.engine.emit import part_decoder
from tidebase_async.models import TERMINAL_STATUSES
from tidebase_async.store.channels import STREAM_CHANNEL

if TYPE_CHECKING:
    from tidebase_async.client.tidebase import Tidebase

# After the run ended: how long without new parts before the stream ends.
_QUIET_S = 0.3


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
