"""``tide.schedules``: cron and interval schedules that enqueue runs, exactly once per tick.

Exactly once: a tick's run carries the schedule's name and the tick's fire time, a
unique key of ``runs``; inserting the runs of due ticks and advancing the schedule
happen in one transaction. Whatever the number of workers, and if a process dies
between the two, each tick produces one run. The elected reconciler fires schedules;
correctness does not depend on the election.

Missed ticks (all workers down, or paused queues of work) follow ``catchup``:
``latest`` (default) enqueues one run for the most recent missed tick, ``all`` enqueues
each missed tick (at most ``catchup_limit``, the latest ones), ``skip`` enqueues only a
tick less than ``SKIP_GRACE_S`` old. ``overlap``: ``allow`` (default), ``skip`` (no
new run while the schedule's previous run is active: the tick is dropped), ``queue``
(the tick waits until the previous run has finished, then fires). A schedule that was
paused does not catch up the ticks of its pause.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

from tidebase_async import errors
from tidebase_async._util import codec
from tidebase_async._util.checks import check_name
from tidebase_async._util.timing import (
    Timing,
    next_fire,
    parse_timing,
)
from tidebase_async.engine.firing import fire_due, timing_of
from tidebase_async.engine.workflows import Workflow
from tidebase_async.models import Schedule, ScheduleInfo

if TYPE_CHECKING:
    from tidebase_async.client.tidebase import Tidebase
    from tidebase_async.store import ScheduleRow

logger = logging.getLogger(__name__)

CATCHUP = ("latest", "all", "skip")
OVERLAP = ("allow", "skip", "queue")


class Schedules:
    """``tide.schedules``."""

    def __init__(self, tide: Tidebase) -> None:
        self._tide = tide

    async def set(
        self,
        name: str,
        *,
        workflow: str,
        cron: str | None = None,
        every: float | timedelta | None = None,
        input: Any = None,
        queue: str | None = None,
        priority: int = 0,
        timezone: str = "UTC",
        enabled: bool = True,
        catchup: str = "latest",
        catchup_limit: int = 100,
        overlap: str = "allow",
    ) -> ScheduleInfo:
        """Create or replace schedule ``name``: ``cron`` (5 fields, or 6 with seconds
        first, in ``timezone``) or ``every`` (seconds or a timedelta). Replacing a
        schedule with the same timing keeps its next tick. A workflow that no worker
        registered is allowed; its runs fail with ``WorkflowNotFound`` when claimed.

        Raises:
            InvalidSchedule: bad timing, time zone, policy, name or input (names the
                problem); nothing is stored.
        """
        return await self._set(
            name,
            workflow=workflow,
            cron=cron,
            every=every,
            input=input,
            queue=queue,
            priority=priority,
            timezone=timezone,
            enabled=enabled,
            catchup=catchup,
            catchup_limit=catchup_limit,
            overlap=overlap,
            source="api",
        )

    async def _set(
        self, name: str, *, source: str, keep_enabled: bool = False, **options: Any
    ) -> ScheduleInfo:
        fields = self._validate(name, **options)
        store = self._tide.store
        now = await store.db_now()
        timing: Timing = fields.pop("timing")
        row = await store.upsert_schedule(
            **fields,
            cron=timing.cron,
            every_s=timing.every_s,
            timezone=timing.timezone,
            anchor_at=now,
            next_fire_at=next_fire(timing, now, anchor=now),
            source=source,
            keep_enabled=keep_enabled,
        )
        return _info(row)

    def _validate(
        self,
        name: str,
        *,
        workflow: str,
        cron: str | None,
        every: float | timedelta | None,
        input: Any,
        queue: str | None,
        priority: int,
        timezone: str,
        enabled: bool,
        catchup: str,
        catchup_limit: int,
        overlap: str,
    ) -> dict[str, Any]:
        try:
            check_name("schedule", name)
            check_name("workflow", workflow)
            if queue is not None:
                check_name("queue", queue)
        except errors.ConfigurationError as exc:
            raise errors.InvalidSchedule(str(exc)) from exc
        timing = parse_timing(cron=cron, every=every, timezone=timezone)
        if catchup not in CATCHUP:
            raise errors.InvalidSchedule(f"catchup must be one of {CATCHUP}, got {catchup!r}")
        if overlap not in OVERLAP:
            raise errors.InvalidSchedule(f"overlap must be one of {OVERLAP}, got {overlap!r}")
        if isinstance(enabled, bool) is False:
            raise errors.InvalidSchedule(f"enabled must be True or False, got {enabled!r}")
        for what, value, low, high in (
            ("priority", priority, -(2**31) + 1, 2**31 - 1),
            ("catchup_limit", catchup_limit, 1, 100_000),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise errors.InvalidSchedule(
                    f"{what} must be an int in {low}..{high}, got {value!r}"
                )
        try:
            data = codec.encode(
                input, where="schedule input", max_size=self._tide.max_payload_bytes
            )
            wf = self._tide.workflows.get(workflow)
            codec.decode(
                data, tp=wf.input_type if wf else Any, where=f"input of workflow {workflow!r}"
            )
        except errors.SerializationError as exc:
            raise errors.InvalidSchedule(f"schedule {name!r}: {exc}") from exc
        return {
            "name": name,
            "workflow": workflow,
            "input": data,
            "queue": queue,
            "priority": priority,
            "enabled": enabled,
            "catchup": catchup,
            "catchup_limit": catchup_limit,
            "overlap": overlap,
            "timing": timing,
        }

    async def get(self, name: str) -> ScheduleInfo:
        """Raises: NotFoundError: no schedule of that name."""
        row = await self._tide.store.get_schedule(name)
        if row is None:
            raise errors.NotFoundError(f"no schedule named {name!r}")
        return _info(row)

    async def list(self) -> builtins.list[ScheduleInfo]:
        return [_info(r) for r in await self._tide.store.list_schedules()]

    async def delete(self, name: str) -> None:
        """Delete the schedule (its runs stay). Raises NotFoundError when absent."""
        if not await self._tide.store.delete_schedule(name):
            raise errors.NotFoundError(f"no schedule named {name!r}")

    async def pause(self, name: str) -> ScheduleInfo:
        """Stop firing; ``resume`` starts again from the next tick after now."""
        row = await self._tide.store.pause_schedule(name)
        if row is None:
            raise errors.NotFoundError(f"no schedule named {name!r}")
        return _info(row)

    async def resume(self, name: str) -> ScheduleInfo:
        """Fire again, from the first tick after now (the pause is not caught up)."""
        store = self._tide.store
        row = await store.get_schedule(name)
        if row is None:
            raise errors.NotFoundError(f"no schedule named {name!r}")
        now = await store.db_now()
        timing = timing_of(row)
        anchor = now if row.every_s is not None else row.anchor_at
        resumed = await store.resume_schedule(
            name, next_fire_at=next_fire(timing, now, anchor=anchor), anchor_at=anchor
        )
        if resumed is None:
            raise errors.NotFoundError(f"no schedule named {name!r}")
        return _info(resumed)

    async def sync_code(self, workflows: Mapping[str, Workflow]) -> None:
        """Upsert the schedules declared with ``@tide.workflow(schedule=...)`` (named
        after their workflow) and delete code schedules of these workflows that the
        code no longer declares. Workers call this when they start."""
        declared = {name: wf.schedule for name, wf in workflows.items() if wf.schedule}
        for name, spec in declared.items():
            assert spec is not None
            await self._set(
                name,
                workflow=name,
                cron=spec.cron,
                every=spec.every,
                input=spec.input,
                queue=None,
                priority=0,
                timezone=spec.timezone,
                enabled=True,
                catchup=spec.catchup,
                catchup_limit=100,
                overlap=spec.overlap,
                source="code",
                # A schedule someone paused stays paused when workers restart.
                keep_enabled=True,
            )
        await self._tide.store.delete_code_schedules(workflows=list(workflows), keep=list(declared))

    async def fire_due(self, *, limit: int = 100) -> builtins.list[tuple[UUID, str]]:
        """Enqueue the runs of every due tick now (the reconciler does this on each
        tick). Returns the (id, queue) of the runs created."""
        return await fire_due(self._tide.store, self._tide.workflows, limit=limit)


def schedule_of(spec: object, *, workflow: str) -> Schedule | None:
    """Normalise ``@tide.workflow(schedule=...)``: a cron string, an interval (seconds
    or timedelta) or a ``Schedule``; validated now, so a bad one fails at import.

    Raises:
        InvalidSchedule: names the workflow and the problem.
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        spec = Schedule(cron=spec)
    elif isinstance(spec, timedelta):
        spec = Schedule(every=spec.total_seconds())
    elif isinstance(spec, int | float) and not isinstance(spec, bool):
        spec = Schedule(every=float(spec))
    elif not isinstance(spec, Schedule):
        raise errors.InvalidSchedule(
            f"workflow {workflow!r}: schedule must be a cron string, an interval or a "
            f"Schedule, got {type(spec).__name__}"
        )
    try:
        parse_timing(cron=spec.cron, every=spec.every, timezone=spec.timezone)
        if spec.catchup not in CATCHUP or spec.overlap not in OVERLAP:
            raise errors.InvalidSchedule(
                f"catchup must be one of {CATCHUP} and overlap one of {OVERLAP}"
            )
        codec.encode(spec.input, where="schedule input")
    except (errors.InvalidSchedule, errors.SerializationError) as exc:
        raise errors.InvalidSchedule(f"workflow {workflow!r}: {exc}") from exc
    return spec


def _info(row: ScheduleRow) -> ScheduleInfo:
    return ScheduleInfo(
        name=row.name,
        workflow=row.workflow,
        cron=row.cron,
        every=row.every_s,
        timezone=row.timezone,
        input=None if row.input is None else codec.decode(row.input, where="schedule input"),
        queue=row.queue,
        priority=row.priority,
        enabled=row.enabled,
        catchup=row.catchup,
        catchup_limit=row.catchup_limit,
        overlap=row.overlap,
        next_fire_at=row.next_fire_at,
        last_fire_at=row.last_fire_at,
        last_run_id=row.last_run_id,
        source=row.source,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )
