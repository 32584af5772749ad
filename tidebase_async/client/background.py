"""The tasks an open client owns (the LISTEN connection and the notifier), held in one
task of their own, so that the client can be opened in one task and closed in another
(pytest fixtures, aiohttp ``cleanup_ctx``, Starlette lifespans, gunicorn workers).

They are still structured: the task holds a task group, ``open()`` waits until they
started (and raises what starting raised), and ``close()`` stops them, waits for them
to finish (the notifier sends what it still holds) and re-raises a failure they had.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import anyio.abc

logger = logging.getLogger(__name__)

#: How long stopping may take: the notifier's last flush is bounded at 2 s.
STOP_TIMEOUT_S = 10.0

Starter = Callable[..., Coroutine[Any, Any, None]]


class Background:
    """One owner task for the client's services; ``start`` and ``stop`` may be called
    from different tasks of the same event loop."""

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self._stopping: anyio.Event | None = None

    async def start(self, *, started: list[Starter], running: list[Starter]) -> None:
        """Start each of ``started`` with ``task_group.start`` (it signals when it is
        ready) and each of ``running`` with ``start_soon``; return once all of
        ``started`` are ready.

        Raises:
            Whatever starting raised; nothing is left running then.
        """
        if self._task is not None:
            raise RuntimeError("the client's background tasks are running already")
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        self._stopping = anyio.Event()
        self._task = loop.create_task(self._hold(ready, started, running), name="tidebase")
        try:
            await asyncio.shield(ready)
        except BaseException:
            # Starting failed, or the opener was cancelled meanwhile.
            await self.stop(reraise=False)
            raise

    async def stop(self, *, reraise: bool = True) -> None:
        """Stop the tasks and wait for them (shielded, bounded); idempotent.

        Raises:
            What a task failed with while running (with ``reraise``).
        """
        task, self._task = self._task, None
        if task is None:
            return
        assert self._stopping is not None
        self._stopping.set()
        with anyio.CancelScope(shield=True), anyio.move_on_after(STOP_TIMEOUT_S) as scope:
            await asyncio.wait([task])
        if scope.cancelled_caught:
            logger.warning("the client's background tasks did not stop in time; cancelling")
            task.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.wait([task])
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and reraise:
            raise exc

    async def _hold(
        self, ready: asyncio.Future[None], started: list[Starter], running: list[Starter]
    ) -> None:
        assert self._stopping is not None
        try:
            async with anyio.create_task_group() as tg:
                for start in started:
                    await tg.start(start)
                for run in running:
                    tg.start_soon(run)
                ready.set_result(None)
                await self._stopping.wait()
                tg.cancel_scope.cancel()
        except BaseException as exc:
            if not ready.done():
                # Starting failed: the opener gets the error itself, not a group of one.
                while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
                    exc = exc.exceptions[0]
                if isinstance(exc, asyncio.CancelledError):
                    ready.cancel()
                else:
                    ready.set_exception(exc)
                return
            if not isinstance(exc, asyncio.CancelledError):
                logger.error("the client's background tasks failed", exc_info=exc)
            raise
