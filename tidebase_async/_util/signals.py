"""A resettable in-process wake-up signal."""

from __future__ import annotations

import anyio


class Signal:
    """A level-triggered wake-up that can be reset (anyio.Event cannot)."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        if self._event.is_set():
            self._event = anyio.Event()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()

    async def wait_for(self, timeout_s: float) -> bool:
        """Wait at most ``timeout_s``; True when the signal was set."""
        with anyio.move_on_after(max(0.0, timeout_s)):
            await self._event.wait()
        return self._event.is_set()
