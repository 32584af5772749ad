"""One claim of one run: the ``Execution`` that steps and waits work through (the
claim, its history, its flags: lost, finishing, cancelled, suspended), its fenced
writes retried across lost connections, and the ``Suspend`` signal that parks the run
while it waits."""

from __future__ import annotations

import contextvars
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

import anyio

from tidebase_async import errors
from tidebase_async.engine.context import EngineContext
from tidebase_async.engine.workflows import Workflow
from tidebase_async.engine.writes import RunWrites
from tidebase_async.store import ClaimedRun, StepRecord, Store

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The history entry (position, full name) whose function is executing in this context:
#: usage recorded inside a step belongs to that step.
_ENTRY: contextvars.ContextVar[tuple[int, str] | None] = contextvars.ContextVar(
    "tidebase_entry", default=None
)
#: The last history entry this branch of the workflow reached (asyncio tasks copy the
#: context: branches of a gather each keep their own). Interleaving of branches differs
#: between a first execution and a replay; what one branch reached does not.
_BRANCH: contextvars.ContextVar[tuple[int, str] | None] = contextvars.ContextVar(
    "tidebase_branch", default=None
)

#: How long a fenced write keeps retrying across a lost connection.
WRITE_RETRY_S = 300.0


class Suspend(BaseException):
    """Unwinds workflow code at a wait that is not over, so the run can be parked as
    ``waiting`` (no lease, no worker slot) and replayed when the wait ends.

    A ``BaseException``: a user's ``except Exception`` cannot swallow it. Once raised
    in an execution, every later durable call of that execution raises it again, so
    concurrent branches stop at their next step instead of running on.
    """

    def __init__(self, reason: str, *, wake_at: datetime | None, data: dict[str, Any]) -> None:
        super().__init__(f"run waits ({reason})")
        self.reason = reason
        self.wake_at = wake_at
        self.data = data


class Execution:
    """Everything one claim of one run needs; shared by the worker and inline runs.

    Mutable, owned by the task executing the run.
    """

    def __init__(
        self,
        context: EngineContext,
        *,
        writes: RunWrites,
        claimed: ClaimedRun,
        history: list[StepRecord],
        on_finishing: Callable[[UUID, int], None] | None = None,
    ) -> None:
        # The context's parts as plain attributes: steps and waits read them on every
        # call, so they cost one attribute load, not two.
        self.store: Store = context.store
        notifier = context.notifier
        self.on_event: Callable[[UUID], None] = notifier.runs_changed
        self.on_queue: Callable[[str], None] = notifier.queues_changed
        self.publish: Callable[[list[str]], bool] = notifier.publish
        self.workflows: Mapping[str, Workflow] = context.workflows
        self.versions = context.versions
        self.max_payload = context.max_payload
        self.public_url = context.public_url
        self.lease_s = context.lease_s
        self.telemetry = context.telemetry
        # None when tracing is off: the one check a step makes for it.
        self.tracer = context.telemetry.tracer
        self._on_finishing = on_finishing
        self.writes = writes
        self.worker_id = writes.worker_id
        self.claimed = claimed
        # By position. Positions can have holes: a step whose checkpoint write failed
        # and whose error the workflow swallowed; replay executes such a step again.
        self.history: dict[int, StepRecord] = {r.position: r for r in history}
        self.history_end = max(self.history, default=-1) + 1
        # Set when a write was refused by the fence or the heartbeat lost the lease:
        # from then on the outcome of this execution is discarded.
        self.lost = False
        # Set once the final outcome is being written, so a late heartbeat that no
        # longer sees the run does not cancel a run that just finished.
        self.finishing = False
        # Set when one of our own writes gave up on a lost connection: the run is then
        # handed back instead of failing (a StoreError raised by the user's code is an
        # ordinary failure).
        self.write_failed = False
        # Set when the workflow reached a wait that is not over (gate, sleep, child):
        # the run is parked as waiting instead of finishing.
        self.suspension: Suspend | None = None
        # Set by the owner when the run was cancelled while executing.
        self.cancelled = False
        self._mono0 = time.monotonic()
        self.state_bytes = claimed.state
        self.executed_steps = 0
        self.replayed_steps = 0

    def now(self) -> datetime:
        """The database clock as of the claim, advanced by local monotonic time."""
        return self.claimed.db_now + timedelta(seconds=time.monotonic() - self._mono0)

    @property
    def run_id(self) -> UUID:
        return self.claimed.id

    @property
    def attempt(self) -> int:
        return self.claimed.attempt

    def begin_finishing(self) -> None:
        """The workflow's code is done; only the outcome's write remains. The owner
        may hand this run's slot to a new claim now (``on_finishing``): a write's
        round trip is not user code, and overlapping it with the next claim is what
        keeps a worker busy at low concurrency."""
        if not self.finishing:
            self.finishing = True
            if self._on_finishing is not None:
                self._on_finishing(self.claimed.id, self.claimed.attempt)

    def lease_lost(self, exc: errors.LeaseLost) -> errors.LeaseLost:
        self.lost = True
        return exc

    def suspend(self, reason: str, *, wake_at: datetime | None, data: dict[str, Any]) -> Suspend:
        """Record that the run waits (the earliest timer wins when several concurrent
        waits are pending) and return the signal to raise."""
        if self.suspension is None:
            self.suspension = Suspend(reason, wake_at=wake_at, data=data)
        elif wake_at is not None and (
            self.suspension.wake_at is None or wake_at < self.suspension.wake_at
        ):
            self.suspension.wake_at = wake_at
        return self.suspension

    def check_active(self) -> None:
        """Raise if this execution must not make progress any more."""
        if self.lost:
            raise errors.LeaseLost(f"run {self.run_id} is no longer leased to this worker")
        if self.suspension is not None:
            raise self.suspension

    def fenced(
        self, fn: Callable[..., Awaitable[T]], /, **kwargs: Any
    ) -> Callable[[], Awaitable[T]]:
        """``fn`` bound to this claim (``run_id``, ``worker_id``, ``attempt``): the
        arguments of every fenced write of the store."""
        return functools.partial(
            fn, run_id=self.run_id, worker_id=self.worker_id, attempt=self.attempt, **kwargs
        )

    async def write_value(self, what: str, write: Callable[[], Awaitable[T]]) -> T:
        """``write`` (see there) of an idempotent operation, returning its result."""
        box: list[T] = []

        async def run() -> None:
            box.clear()
            box.append(await write())

        await self.write(what, run)
        return box[0]

    async def write(
        self,
        what: str,
        write: Callable[[], Awaitable[None]],
        *,
        landed: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        """Perform a fenced write, retrying it while the connection is lost.

        A write that failed only because the connection broke is retried with backoff
        until the database answers (up to ``WRITE_RETRY_S``, or most of the lease if
        that is longer): a late write is safe, the fence refuses it if another worker
        took the run over meanwhile, and after an outage the reconciler waits a lease
        before requeueing (see the worker), so a database restart does not turn a
        finished step into a second execution. When the first try may have committed
        before the connection broke, ``landed`` tells whether it did.

        Raises:
            LeaseLost: the fence refused the write (marks the execution lost).
            ConnectionLost: the database stayed unreachable all that time.
        """
        deadline = time.monotonic() + max(self.lease_s * 0.8, WRITE_RETRY_S)
        delay = 0.05
        broken = False
        while True:
            try:
                if broken and landed is not None and await landed():
                    return
                await write()
                return
            except errors.LeaseLost as exc:
                raise self.lease_lost(exc) from None
            except errors.ConnectionLost as exc:
                if time.monotonic() + delay > deadline:
                    self.write_failed = True
                    raise
                broken = True
                logger.warning(
                    "run %s: %s failed (%s); retrying in %.2fs",
                    self.run_id,
                    what,
                    exc,
                    delay,
                    extra={"run_id": str(self.run_id)},
                )
                await anyio.sleep(delay)
                delay = min(delay * 2, 1.0)
