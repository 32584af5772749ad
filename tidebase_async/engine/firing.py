"""Schedule firing: the reconciler's step that turns due schedule ticks into runs,
exactly once per tick, following each schedule's catchup and overlap policy.

Exactly once: a tick's run carries the schedule's name and the tick's fire time, a
unique key of ``runs``; inserting the runs of due ticks and advancing the schedule
happen in one transaction (``Store.fire_schedule``). Whatever the number of workers,
and if a process dies between the two, each tick produces one run.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from datetime import datetime
from uuid import UUID

import msgspec

from tidebase_async import errors
from tidebase_async._util.ids import uuid7
from tidebase_async._util.timing import Timing, latest_fire, latest_fire_times, next_fire
from tidebase_async.engine.workflows import DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE, Workflow
from tidebase_async.store import DueSchedule, ScheduledRun, ScheduleRow, Store

logger = logging.getLogger(__name__)

#: With catchup "skip", a due tick older than this counts as missed.
SKIP_GRACE_S = 60.0


async def fire_due(
    store: Store, workflows: Mapping[str, Workflow], *, limit: int = 100
) -> list[tuple[UUID, str]]:
    """Enqueue the runs of every due tick (the reconciler calls this). Returns the
    (id, queue) of the runs created."""
    created: list[tuple[UUID, str]] = []
    for name in await store.due_schedules(limit=limit):
        try:
            fired = await store.fire_schedule(name, functools.partial(_plan, workflows))
        except errors.StoreError:
            raise
        except Exception:
            # One schedule that cannot be planned (a bug, odd stored data) must not
            # keep the others from firing; its transaction rolled back, it stays due.
            logger.exception("schedule %r could not fire; skipping it this tick", name)
            continue
        if fired:
            created.extend(fired)
    return created


def _plan(
    workflows: Mapping[str, Workflow], row: DueSchedule, active: bool
) -> tuple[list[ScheduledRun], datetime]:
    """The runs of the due ticks of ``row`` (a locked, due schedule) and its next fire
    time, per its catchup and overlap policies."""
    timing = timing_of(row)
    now = row.now
    anchor = row.anchor_at
    following = next_fire(timing, now, anchor=anchor)
    if row.overlap == "skip" and active:
        return [], following
    due_from = row.next_fire_at
    catchup = row.catchup
    if catchup == "all":
        ticks = latest_fire_times(
            timing, due_from, now, anchor=anchor, limit=row.catchup_limit
        ) or [due_from]
        if row.overlap == "skip" and len(ticks) > 1:
            # Several runs at once would overlap each other: the latest only.
            ticks = ticks[-1:]
        elif row.overlap == "queue" and len(ticks) > 1:
            # One at a time: the oldest now; the schedule stays due at the next
            # missed tick, which fires once this run has finished.
            return [_run_of(workflows, row, ticks[0])], ticks[1]
    else:
        latest = latest_fire(timing, now, anchor=anchor) or due_from
        latest = max(latest, due_from)
        ticks = [latest]
        if catchup == "skip" and (now - latest).total_seconds() > SKIP_GRACE_S:
            ticks = []
    if row.overlap == "queue" and active:
        # Not due to fire yet after all (the previous run is still active): keep
        # the schedule due; it fires once that run has finished.
        return [], due_from
    return [_run_of(workflows, row, tick) for tick in ticks], following


def _run_of(workflows: Mapping[str, Workflow], row: ScheduleRow, tick: datetime) -> ScheduledRun:
    wf = workflows.get(row.workflow)
    queue = row.queue or (wf.queue if wf else DEFAULT_QUEUE)
    metadata = msgspec.json.encode({"schedule": row.name, "fire_time": tick.isoformat()})
    return ScheduledRun(
        id=uuid7(),
        workflow=row.workflow,
        queue=queue,
        input=msgspec.Raw(row.input if row.input is not None else b"null"),
        priority=row.priority,
        dedupe_key=None,
        metadata=msgspec.Raw(metadata),
        parent_id=None,
        max_attempts=wf.max_attempts if wf else DEFAULT_MAX_ATTEMPTS,
        run_at=None,
        delay_s=0.0,
        deadline_at=None,
        schedule=row.name,
        fire_time=tick,
        # The newest version registered in the firing process, as enqueue records it
        # (None when this process does not register the workflow: any worker).
        version=wf.version if wf else None,
    )


def timing_of(row: ScheduleRow) -> Timing:
    return Timing(cron=row.cron, every_s=row.every_s, timezone=row.timezone)
