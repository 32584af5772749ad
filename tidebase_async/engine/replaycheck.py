"""The replay check (``tidebase replay-check``): stored histories replayed against the
code of this process without executing anything, to find the runs a deploy of it would
break with ``NonDeterminismError``.

Each run's workflow function is called with a ``Run`` in check mode. Its durable calls
(steps, sleeps, gates, children, patches, and any other wait) take their positions in
the history as in a real replay and return the recorded outcomes; the first one that
would go beyond the history (execute a step, open a gate, record anything) stops that
replay as "compatible so far". Nothing reaches the database: the execution's store and
write paths stop the replay instead (state writes apply in memory, as on any replay).
Code between steps does run, as it does on every real replay.

Runs are read in pages (keyset on the run id; a page's histories in one query), and
replayed one after another.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal, NoReturn
from uuid import UUID

import anyio
import msgspec

from tidebase_async import errors
from tidebase_async._util import codec
from tidebase_async.engine.context import EngineContext
from tidebase_async.engine.execution import Execution, Suspend
from tidebase_async.engine.run import _CURRENT, Run
from tidebase_async.engine.telemetry import Telemetry
from tidebase_async.engine.workflows import Workflow, WorkflowVersions
from tidebase_async.engine.writes import RunWrites
from tidebase_async.store import CheckedRun, StepRecord, Store

PAGE_SIZE = 500
#: How long the replay of one run may take (its code between steps runs).
RUN_TIMEOUT_S = 10.0

Outcome = Literal["compatible", "incompatible", "unchecked"]


class Mismatch(msgspec.Struct, frozen=True, kw_only=True):
    """Where a replay left the recorded history: entry ``position`` (1-based) was
    ``recorded_kind`` ``recorded_name`` and the code now reaches ``kind`` ``name``."""

    position: int
    recorded_kind: str
    recorded_name: str
    kind: str
    name: str


class RunCheck(msgspec.Struct, frozen=True, kw_only=True):
    """The replay check of one run. ``replayed``: history entries matched before it
    stopped; ``entries``: how many it has."""

    run_id: UUID
    workflow: str
    version: str | None
    status: str
    outcome: Outcome
    replayed: int
    entries: int
    detail: str | None = None
    mismatch: Mismatch | None = None


class ReplayCheckReport(msgspec.Struct, kw_only=True):
    """What ``replay_check`` found. ``ok`` is False when any run would raise
    ``NonDeterminismError`` (``incompatible``). ``unchecked``: runs whose replay
    failed otherwise (an error in the workflow's own code, a timeout): not known to be
    incompatible. ``skipped``: runs of a version this code does not register (their
    workers run other code)."""

    checked: int = 0
    compatible: int = 0
    incompatible: list[RunCheck] = msgspec.field(default_factory=list)
    unchecked: list[RunCheck] = msgspec.field(default_factory=list)
    skipped: int = 0
    workflows: list[str] = msgspec.field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.incompatible


class _StopCheck(BaseException):
    """Ends a replay at the first thing beyond the history (or any database access):
    a ``BaseException``, so the workflow's ``except Exception`` cannot swallow it."""


class _NoDatabase:
    """The check execution's store: any use of it stops the replay there."""

    def __getattr__(self, name: str) -> NoReturn:
        raise _StopCheck(f"the database ({name})")


class _Quiet:
    """The check execution's notifier: nobody is told anything."""

    def runs_changed(self, *run_ids: UUID) -> None:
        pass

    def queues_changed(self, *queues: str) -> None:
        pass

    def publish(self, parts: list[str]) -> bool:
        return True


class _CheckExecution(Execution):
    """An execution whose every write (and database access) stops the replay."""

    stopped: _StopCheck | None = None

    def stop(self, what: str) -> _StopCheck:
        """Record that the replay reached ``what`` beyond its history; the signal."""
        if self.stopped is None:
            self.stopped = _StopCheck(what)
        return self.stopped

    def check_active(self) -> None:
        """Concurrent branches stop at their next durable call once one stopped."""
        if self.stopped is not None:
            raise self.stopped
        super().check_active()

    async def write(
        self,
        what: str,
        write: Callable[[], Awaitable[None]],
        *,
        landed: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        """No write happens in a check: the replay went past its history."""
        raise self.stop(what)

    async def write_value(self, what: str, write: Callable[[], Awaitable[Any]]) -> Any:
        """As ``write``."""
        raise self.stop(what)


class _CheckRun(Run):
    """A ``Run`` that stops where a real one would execute or record something, and
    remembers where its history and its code disagreed."""

    def __init__(self, ex: _CheckExecution, *, workflow: str, input: Any) -> None:
        super().__init__(ex, workflow=workflow, input=input)
        self._check = ex
        self.mismatch: Mismatch | None = None
        self.matched = 0

    def _reserve(self, kind: str, name: str) -> tuple[int, str, StepRecord | None]:
        """The real ``_reserve`` (which raises ``NonDeterminismError`` on a mismatch,
        remembered here); stops at a position the history does not hold."""
        ex = self._check
        position = self._position
        try:
            reserved, full_name, record = super()._reserve(kind, name)
        except errors.NonDeterminismError:
            recorded = ex.history.get(position)
            if self.mismatch is None and recorded is not None:
                self.mismatch = Mismatch(
                    position=position + 1,
                    recorded_kind=recorded.kind,
                    recorded_name=recorded.name,
                    kind=kind,
                    name=self._last_entry or name,
                )
            raise
        if record is None:
            raise ex.stop(f"{kind} {full_name!r}")
        self.matched = max(self.matched, reserved + 1)
        return reserved, full_name, record

    async def _execute_step(self, position: int, name: str, full_name: str, *args: Any) -> Any:
        """A recorded step whose outcome says to execute it again: a real replay
        would execute it here, so the check stops."""
        raise self._check.stop(f"step {full_name!r}")


def _check_context(versions: WorkflowVersions, workflows: Mapping[str, Workflow]) -> EngineContext:
    """A context whose store and notifier cannot reach anything."""
    return EngineContext(
        store=_NoDatabase(),  # type: ignore[arg-type]
        notifier=_Quiet(),  # type: ignore[arg-type]
        listener=None,
        workflows=workflows,
        max_payload=codec.DEFAULT_MAX_PAYLOAD,
        public_url=None,
        lease_s=30.0,
        telemetry=Telemetry.disabled(),
        versions=versions,
    )


async def check_run(
    context: EngineContext, wf: Workflow, item: CheckedRun, *, timeout_s: float = RUN_TIMEOUT_S
) -> RunCheck:
    """Replay one run's history against ``wf`` without executing or writing anything."""
    ex = _CheckExecution(
        context,
        writes=RunWrites(context.store, "replay-check"),
        claimed=item.run,
        history=item.history,
    )
    entries = len(item.history)

    def result(outcome: Outcome, detail: str | None, run: _CheckRun | None) -> RunCheck:
        return RunCheck(
            run_id=item.run.id,
            workflow=item.run.workflow,
            version=item.run.version,
            status=item.status,
            outcome=outcome,
            replayed=0 if run is None else run.matched,
            entries=entries,
            detail=detail,
            mismatch=None if run is None else run.mismatch,
        )

    try:
        value = codec.decode(item.run.input or b"null", tp=wf.input_type, where="input")
    except errors.SerializationError as exc:
        return result("unchecked", f"could not check: {exc}", None)
    run = _CheckRun(ex, workflow=wf.name, input=value)
    failure: BaseException | None = None
    token = _CURRENT.set(run)
    try:
        with anyio.fail_after(timeout_s):
            await (wf.fn(run, value) if wf.takes_input else wf.fn(run))
    except (_StopCheck, Suspend):
        pass
    except TimeoutError:
        failure = TimeoutError(f"the replay took longer than {timeout_s:g}s")
    except Exception as exc:
        failure = exc
    finally:
        _CURRENT.reset(token)
    if run.mismatch is not None:
        m = run.mismatch
        return result(
            "incompatible",
            f"entry #{m.position} was {m.recorded_kind} {m.recorded_name!r}, "
            f"the code now reaches {m.kind} {m.name!r}",
            run,
        )
    if failure is None or (item.status == "failed" and run.matched >= entries):
        # A failed run whose code fails again after its whole history: as recorded.
        return result("compatible", _stopped_at(ex, run, entries), run)
    return result("unchecked", f"could not check: {type(failure).__name__}: {failure}", run)


def _stopped_at(ex: _CheckExecution, run: _CheckRun, entries: int) -> str | None:
    if ex.stopped is not None:
        return f"compatible so far; stopped at {ex.stopped} beyond the history"
    if run.matched < entries:
        return f"the code ended after {run.matched} of {entries} recorded entries"
    return None


async def replay_check(
    store: Store,
    *,
    workflows: Mapping[str, Workflow],
    versions: WorkflowVersions,
    only: Sequence[str] | None = None,
    since: timedelta | None = timedelta(days=7),
    limit: int | None = None,
    page_size: int = PAGE_SIZE,
    on_run: Callable[[RunCheck], None] | None = None,
) -> ReplayCheckReport:
    """Replay the stored histories of the runs of ``only`` (default: every workflow
    registered here) that are queued (with a history), running or waiting, or that
    finished within ``since`` (None: no finished runs), at most ``limit`` of them,
    against the registered code. Reads only; writes nothing.

    Raises:
        ConfigurationError: a workflow of ``only`` is not registered here.
    """
    names = sorted(workflows) if only is None else list(dict.fromkeys(only))
    missing = [n for n in names if n not in workflows]
    if missing:
        raise errors.ConfigurationError(
            f"workflow {missing[0]!r} is not registered here "
            f"(registered: {', '.join(sorted(workflows)) or 'none'})"
        )
    report = ReplayCheckReport(workflows=names)
    began = time.perf_counter()
    context = _check_context(versions, workflows)
    finished_since: datetime | None = None
    if since is not None:
        finished_since = await store.db_now() - since
    after: UUID | None = None
    while names and (limit is None or report.checked + report.skipped < limit):
        size = (
            page_size if limit is None else min(page_size, limit - report.checked - report.skipped)
        )
        page = await store.replay_check_page(
            workflows=names, finished_since=finished_since, after=after, limit=size
        )
        for item in page:
            await _check_one(context, versions, item, report, on_run)
        if len(page) < size:
            break
        after = page[-1].run.id
    report.seconds = time.perf_counter() - began
    return report


async def _check_one(
    context: EngineContext,
    versions: WorkflowVersions,
    item: CheckedRun,
    report: ReplayCheckReport,
    on_run: Callable[[RunCheck], None] | None,
) -> None:
    wf = versions.get(item.run.workflow, item.run.version)
    if wf is None and item.run.version is None:
        wf = context.workflows.get(item.run.workflow)
    if wf is None:
        report.skipped += 1
        return
    checked = await check_run(context, wf, item)
    report.checked += 1
    if checked.outcome == "compatible":
        report.compatible += 1
    elif checked.outcome == "incompatible":
        report.incompatible.append(checked)
    else:
        report.unchecked.append(checked)
    if on_run is not None:
        on_run(checked)
