"""The coalescing notifier: 'run changed', 'queue has work' and live-output
notifications sent after their writes commit, as few ``pg_notify`` calls as possible."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

import anyio

from tidebase_async._util.signals import Signal
from tidebase_async.store.channels import EVENTS_CHANNEL, STREAM_CHANNEL, WAKE_CHANNEL

if TYPE_CHECKING:
    from tidebase_async.store import Store

logger = logging.getLogger(__name__)

# Output waiting to be published beyond this is dropped (a publisher that cannot keep
# up must not grow without bound; emitting never blocks a workflow).
_MAX_STREAM_BACKLOG = 16 * 1024 * 1024

# pg_notify payloads must stay under 8000 bytes; a UUID and a comma take 37.
_IDS_PER_NOTIFICATION = 200
# How long 'run changed' notifications may wait to share one statement.
_COALESCE_S = 0.002


def pack_ids(ids: Iterable[str]) -> list[str]:
    """Comma-joined groups of ids, each small enough for one notification."""
    batch = sorted(set(ids))
    return [
        ",".join(batch[i : i + _IDS_PER_NOTIFICATION])
        for i in range(0, len(batch), _IDS_PER_NOTIFICATION)
    ]


class Notifier:
    """Coalesces 'run X has new events' and 'queue Q has work' notifications.

    Writers call ``runs_changed``/``queues_changed`` after their transaction committed;
    one sender task turns everything pending into as few ``pg_notify`` calls as
    possible. Notifications are hints: a failure to send one is logged and costs only
    latency (readers and workers also poll).
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._runs: set[str] = set()
        self._queues: set[str] = set()
        self._pending = Signal()
        self._urgent = Signal()
        self._stream: list[str] = []
        self._stream_bytes = 0
        self.stream_dropped = 0

    def publish(self, payloads: list[str]) -> bool:
        """Queue stream notifications, sent in this order; False (and nothing queued)
        when the backlog is full."""
        size = sum(len(p) for p in payloads)
        if self._stream_bytes + size > _MAX_STREAM_BACKLOG:
            if not self.stream_dropped:
                logger.warning("live output is produced faster than it can be published; dropping")
            self.stream_dropped += 1
            return False
        self._stream.extend(payloads)
        self._stream_bytes += size
        self._pending.set()
        self._urgent.set()
        return True

    def runs_changed(self, *run_ids: object) -> None:
        self._runs.update(str(r) for r in run_ids)
        self._pending.set()

    def queues_changed(self, *queues: str) -> None:
        self._queues.update(queues)
        self._pending.set()
        self._urgent.set()

    async def flush(self) -> None:
        runs, self._runs = self._runs, set()
        queues, self._queues = self._queues, set()
        self._pending.clear()
        self._urgent.clear()
        stream, self._stream = self._stream, []
        self._stream_bytes = 0
        messages = [(WAKE_CHANNEL, q) for q in sorted(queues)]
        messages += [(STREAM_CHANNEL, p) for p in stream]
        messages += [(EVENTS_CHANNEL, ids) for ids in pack_ids(runs)]
        try:
            # Taken from the pending sets already: a cancellation (the Tidebase closing
            # right after a resolve or cancel) must not drop them half-way. Bounded.
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await self._store.notify(messages)
        except Exception as exc:  # a hint only; never let the sender task die
            logger.debug("notification not sent (%s); pollers will catch up", exc)

    async def run(self) -> None:
        """Send pending notifications until cancelled; flush what is left on the way out."""
        try:
            while True:
                await self._pending.wait()
                if not self._queues and not self._stream:
                    # Only 'run X changed' hints: give them a moment to pile up (many
                    # runs finish together under load). Wake-ups for workers are not
                    # delayed: they are what enqueue-to-start latency is made of.
                    await self._urgent.wait_for(_COALESCE_S)
                await self.flush()
        finally:
            with anyio.move_on_after(2, shield=True):
                await self.flush()
