"""``TideEnv``: one test's database, the clients opened on it, an in-process worker run
until nothing is left to do, and a virtual clock.

The worker is the library's own (``Tidebase.work``) and the statements are the
library's own; only ``tidebase.now()`` differs, reading the virtual clock of the
test's database (``Store.install_virtual_clock``). Advancing the clock is therefore
seen by every statement on every connection at once, and everything that is due by the
clock (durable sleeps, gate and event-wait timeouts, delayed runs, retry backoffs,
deadlines, schedule ticks, delivery retries) fires through the same code paths as in
production, in time order.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import anyio
import msgspec

from tidebase_async import errors
from tidebase_async._util.checks import as_seconds
from tidebase_async.client.tidebase import Tidebase
from tidebase_async.engine.replaycheck import RunCheck
from tidebase_async.engine.worker import Worker
from tidebase_async.models import GateInfo, KeyedEvent, StepInfo
from tidebase_async.store import Store, UnsettledRow

#: How often the settling loop reads what is left, and how many quiet reads in a row
#: mean "idle": a transition is one transaction, so two reads 10 ms apart with nothing
#: running, due or in flight see a database nothing will change by itself.
_SETTLE_POLL_S = 0.01
_QUIET_READS = 2


class IdleTimeout(errors.TidebaseError):
    """``run_until_idle`` or ``advance`` ran out of time with work left: ``unsettled``
    lists what could still move (runs running or due, due schedule ticks, due
    deliveries), oldest first."""

    def __init__(self, message: str, unsettled: list[UnsettledRow]) -> None:
        super().__init__(message)
        self.unsettled = unsettled


class ReplayIncompatible(AssertionError):
    """``assert_replay_compatible`` found runs the current code would fail with
    ``NonDeterminismError``; ``runs`` holds the check of each."""

    def __init__(self, message: str, runs: list[RunCheck]) -> None:
        super().__init__(message)
        self.runs = runs


class StepView(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of a run's history as a test reads it."""

    name: str
    kind: str
    status: str
    output: Any = None


class TideEnv:
    """A test's own database, with clients, a worker and a virtual clock.

    Made by the ``tide_env`` fixture (``pytest_plugins = ["tidebase_async.testing"]``);
    everything it opened is closed when the test ends, in whatever task that happens.
    """

    def __init__(self, dsn: str) -> None:
        #: The test's database.
        self.dsn = dsn
        # Clients that run_until_idle and advance run a worker for, and the others.
        self._clients: list[Tidebase] = []
        self._readers: list[Tidebase] = []
        self._stack = contextlib.AsyncExitStack()

    # -- clients ----------------------------------------------------------------------

    async def client(self, tide: Tidebase | None = None, *, work: bool = True) -> Tidebase:
        """Open ``tide`` (the application's own Tidebase object, with its workflows
        registered; a new empty one when None) on this test's database and return it.
        It is closed, and given back its own database, when the test ends.

        A ``tide`` already open on this test's database (an app's lifespan opened it on
        ``tide_env.dsn``) is taken as it is and left to its owner to close.

        ``work``: whether ``run_until_idle`` and ``advance`` run a worker with this
        client's workflows (False for a client opened only to read, or to check
        changed code with ``assert_replay_compatible(tide=...)``).

        Raises:
            ConfigurationError: ``tide`` is open on another database.
        """
        tide = Tidebase() if tide is None else tide
        if tide in self._clients or tide in self._readers:
            return tide
        if not tide.is_open:
            await self._stack.enter_async_context(tide.opened_on(self.dsn))
        elif tide.dsn != self.dsn:
            raise errors.ConfigurationError(
                "this Tidebase is open on another database; close it, or open it on tide_env.dsn"
            )
        (self._clients if work else self._readers).append(tide)
        return tide

    @property
    def store(self) -> Store:
        """The store of the first client (for the clock and idleness reads)."""
        return self._first().store

    async def aclose(self) -> None:
        """Close every client this environment opened (the fixture does this)."""
        self._clients.clear()
        self._readers.clear()
        await self._stack.aclose()

    # -- running -----------------------------------------------------------------------

    async def run_until_idle(
        self,
        *,
        timeout: float | timedelta = 30.0,
        queues: Iterable[str] | None = None,
        concurrency: int = 16,
    ) -> None:
        """Run a worker for every client (their registered workflows, on ``queues``
        or the workflows' queues) until nothing is runnable: no run running, no queued
        run due (in a queue not paused), no waiting run whose timer is due, no due
        schedule tick or delivery. Waiting runs (gates, sleeps not due, events) stay
        waiting. Returns then, with the workers stopped.

        Raises:
            IdleTimeout: still not idle after ``timeout``; lists what is left (a run of
                a version no client registers stays queued: it is listed. A run of a
                workflow no client registers is claimed and fails with
                ``WorkflowNotFound``, retried with backoff as in production: queued
                until ``advance`` reaches its retries, then failed).
        """
        limit = _timeout_s(timeout)
        async with self._workers(queues, concurrency) as workers:
            await self._settle(workers, anyio.current_time() + limit, limit)

    async def advance(
        self,
        by: timedelta,
        *,
        timeout: float | timedelta = 60.0,
        queues: Iterable[str] | None = None,
        concurrency: int = 16,
    ) -> datetime:
        """Move the virtual clock forward by ``by`` as if that time had passed: every
        timer due within the span (durable sleeps, gate and event-wait timeouts,
        delayed runs, retry backoffs, deadlines, schedule ticks, delivery retries)
        fires in time order, each once the clock reaches it, with a worker running
        until idle after each; ``run.now()`` in workflows reads the virtual time.
        Returns the time the clock reads at the end.

        Raises:
            ConfigurationError: ``by`` negative.
            IdleTimeout: the work did not settle within ``timeout`` (real seconds).
        """
        if not isinstance(by, timedelta) or by < timedelta(0):
            raise errors.ConfigurationError(f"advance needs a timedelta >= 0, got {by!r}")
        limit = _timeout_s(timeout)
        deadline = anyio.current_time() + limit
        store = self.store
        target = await store.db_now() + by
        async with self._workers(queues, concurrency) as workers:
            await self._settle(workers, deadline, limit)
            while True:
                due = await store.next_timer()
                if due is None or due > target:
                    break
                await store.advance_clock_to(due)
                await self._settle(workers, deadline, limit)
            now = await store.advance_clock_to(target)
            await self._settle(workers, deadline, limit)
        return now

    async def now(self) -> datetime:
        """The time the library sees (the virtual clock)."""
        return await self.store.db_now()

    @contextlib.asynccontextmanager
    async def _workers(
        self, queues: Iterable[str] | None, concurrency: int
    ) -> AsyncIterator[list[Worker]]:
        if not self._clients:
            raise errors.ConfigurationError(
                "no client runs a worker: clients opened with work=False run none"
                if self._readers
                else "open a client first: tide = await tide_env.client(app.tide)"
            )
        names = None if queues is None else list(queues)
        workers: list[Worker] = []
        # An error of the body (IdleTimeout, say) leaves the task group as itself, not
        # wrapped in an ExceptionGroup, so callers can catch it by its type.
        failure: Exception | None = None
        async with anyio.create_task_group() as tg:
            for tide in self._clients:
                started = anyio.Event()
                tg.start_soon(_work, tide, names, concurrency, started, workers.append)
                await started.wait()
            try:
                yield workers
            except Exception as exc:
                failure = exc
            finally:
                for worker in workers:
                    worker.stop()
        if failure is not None:
            raise failure

    async def _settle(self, workers: list[Worker], deadline: float, limit: float) -> None:
        store = self.store
        quiet = 0
        while True:
            left = await store.unsettled_work(limit=20)
            if left or any(w.inflight for w in workers):
                quiet = 0
            else:
                quiet += 1
                if quiet >= _QUIET_READS:
                    return
            if anyio.current_time() >= deadline:
                listed = "; ".join(f"{w.kind} {w.id} ({w.workflow}, {w.status})" for w in left)
                raise IdleTimeout(
                    f"not idle after {limit:g}s: {listed or 'runs still executing'}", left
                )
            await anyio.sleep(_SETTLE_POLL_S)

    # -- helpers -----------------------------------------------------------------------

    async def resolve_gate(
        self,
        run_id: UUID | str,
        name: str,
        *,
        approved: bool = True,
        payload: Any = None,
        actor: str | None = "test",
    ) -> GateInfo:
        """Approve (or reject) the pending gate ``name`` of a run, as a person would."""
        return await self._first().gates.resolve(
            run_id, name, approved=approved, payload=payload, actor=actor
        )

    async def send_event(self, name: str, *, key: Any, payload: Any = None) -> KeyedEvent:
        """Send an event by key (``tide.events.send``)."""
        return await self._first().events.send(name, key=key, payload=payload)

    async def steps(self, run_id: UUID | str) -> list[StepView]:
        """The run's history in order: each step's (and wait's) name, kind, status and
        output."""
        info = await self._first().runs.get(run_id)
        return [_view(s) for s in info.steps]

    async def step_names(self, run_id: UUID | str) -> list[str]:
        """The names of the run's history entries, in order."""
        return [s.name for s in await self.steps(run_id)]

    async def assert_replay_compatible(
        self, run_id: UUID | str | None = None, *, tide: Tidebase | None = None
    ) -> None:
        """Replay stored histories (one run's, or every checkable run's) against the
        code registered on ``tide`` (the first client by default) without executing
        anything, and fail when the code would raise ``NonDeterminismError``: the
        check ``tidebase replay-check`` runs before a deploy.

        Raises:
            ReplayIncompatible (an AssertionError): naming each run, the position and
                the step names that differ.
        """
        tide = tide or self._first()
        wanted = None if run_id is None else str(run_id)
        report = await tide.replay_check(since=timedelta(days=36_500))
        bad = [c for c in report.incompatible if wanted is None or str(c.run_id) == wanted]
        if wanted is not None and not any(
            str(c.run_id) == wanted for c in [*report.incompatible, *report.unchecked]
        ):
            # Checked and compatible, or not checkable (a version not registered here).
            info = await tide.runs.get(wanted)
            if info.workflow not in tide.workflows:
                raise errors.ConfigurationError(
                    f"run {wanted} is of workflow {info.workflow!r}, not registered on "
                    "this client: nothing to replay it against"
                )
        if bad:
            lines = [_describe(c) for c in bad]
            raise ReplayIncompatible(
                f"{len(bad)} run(s) would fail with NonDeterminismError on the current "
                "code:\n  " + "\n  ".join(lines),
                bad,
            )

    def _first(self) -> Tidebase:
        clients = self._clients or self._readers
        if not clients:
            raise errors.ConfigurationError(
                "open a client first: tide = await tide_env.client(app.tide)"
            )
        return clients[0]


async def _work(
    tide: Tidebase,
    queues: list[str] | None,
    concurrency: int,
    started: anyio.Event,
    ready: Any,
) -> None:
    # Short poll and maintenance intervals: the clock jumps, and what it makes due
    # (woken runs, fired ticks) should run at once, not on a production cadence.
    await tide.work(
        queues,
        concurrency=concurrency,
        poll_interval=0.05,
        maintenance_interval=0.02,
        shutdown_grace=5.0,
        handle_signals=False,
        started=started,
        worker_ready=ready,
    )


def _timeout_s(timeout: float | timedelta) -> float:
    seconds = as_seconds(timeout, what="timeout")
    if seconds is None or seconds <= 0:
        raise errors.ConfigurationError(f"timeout must be > 0, got {timeout!r}")
    return seconds


def _view(step: StepInfo) -> StepView:
    return StepView(name=step.name, kind=step.kind, status=step.status, output=step.output)


def _describe(check: RunCheck) -> str:
    where = ""
    if check.mismatch is not None:
        m = check.mismatch
        where = (
            f" at entry {m.position}: recorded {m.recorded_kind} {m.recorded_name!r}, "
            f"the code reaches {m.kind} {m.name!r}"
        )
    return f"run {check.run_id} ({check.workflow}){where}" + (
        f" ({check.detail})" if check.detail and not where else ""
    )
