"""The history of a run as its workflow walks it: positions, ordinals, replay lookups,
and the checkpoints that record new entries. Steps (``run``) and waits (``waits``)
record their entries through it; ``run.state`` asks it whether the run is replaying."""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

import msgspec

from tidebase_async import errors
from tidebase_async._util.failures import error_info
from tidebase_async.engine.execution import _BRANCH, _ENTRY, Execution
from tidebase_async.store import Checkpoint, StepRecord


class RunHistory:
    """Where the workflow is in its run's history (the base of ``Run``)."""

    def __init__(self, ex: Execution) -> None:
        self._ex = ex
        self._position = 0
        self._ordinals: dict[tuple[str, str], int] = {}
        self._last_entry: str | None = None
        # Positions whose own code (a step function) wrote the state.
        self._wrote_state: set[int] = set()

    def _replaying(self) -> bool:
        return self._position < self._ex.history_end

    def _next_name(self, kind: str, name: str) -> str:
        count = self._ordinals.get((kind, name), 0) + 1
        self._ordinals[(kind, name)] = count
        return name if count == 1 else f"{name}#{count}"

    def _reserve(self, kind: str, name: str) -> tuple[int, str, StepRecord | None]:
        """Take the next history position for a ``kind`` entry named ``name`` (with
        its ordinal); return it, the full name and the recorded entry there, if any.

        Raises:
            LeaseLost, Suspend: the execution may not go on.
            NonDeterminismError: the history has something else at this position.
        """
        ex = self._ex
        ex.check_active()
        full_name = self._next_name(kind, name)
        position = self._position
        self._position += 1
        self._last_entry = full_name
        _BRANCH.set((position, full_name))
        record = ex.history.get(position)
        if record is not None and (record.name != full_name or record.kind != kind):
            raise errors.NonDeterminismError(
                f"run {ex.run_id}: entry #{position + 1} of the history is {kind} "
                f"{full_name!r} now but was {record.kind} {record.name!r} when it was "
                "recorded; the workflow code changed or depends on something other than "
                "its input and step results"
            )
        return position, full_name, record

    def _entry_name(self) -> str | None:
        """The entry executing in this context, else the last one this branch reached."""
        entry = _ENTRY.get() or _BRANCH.get()
        return entry[1] if entry is not None else None

    def _went_past(self, position: int) -> bool:
        """True when the history holds entries after ``position``."""
        return position + 1 < self._ex.history_end

    async def _record_failure(
        self,
        position: int,
        name: str,
        attempts: int,
        started_at: datetime,
        exc: Exception,
        *,
        kind: str = "step",
        event_type: str = "",
    ) -> None:
        info = error_info(exc)
        await self._checkpoint(
            position,
            name,
            "failed",
            attempts,
            started_at,
            error=msgspec.json.encode(info),
            event={"name": name, "error": {"type": info["type"], "message": info["message"]}},
            kind=kind,
            event_type=event_type,
        )

    async def _checkpoint(
        self,
        position: int,
        name: str,
        status: str,
        attempts: int,
        started_at: datetime,
        *,
        event: dict[str, Any],
        output: bytes | None = None,
        error: bytes | None = None,
        kind: str = "step",
        event_type: str = "",
    ) -> None:
        """Record a step outcome: fenced, group-committed, retried across a lost
        connection (without writing it twice)."""
        ex = self._ex
        item = Checkpoint(
            kind=kind,
            event_type=event_type,
            wrote_state=position in self._wrote_state,
            run_id=ex.run_id,
            attempt=ex.attempt,
            position=position,
            name=name,
            status=status,
            attempts=attempts,
            output=output,
            error=error,
            started_at=started_at,
            event_data=msgspec.json.encode(event),
        )
        await ex.write(
            f"checkpoint of step {name!r}",
            functools.partial(ex.writes.checkpoint, item),
            landed=functools.partial(self._checkpoint_landed, position, status),
        )
        ex.on_event(ex.run_id)

    async def _checkpoint_landed(self, position: int, status: str) -> bool:
        ex = self._ex
        recorded = await ex.store.step_outcome(run_id=ex.run_id, position=position)
        return recorded == (status, ex.attempt)
