"""The msgspec Structs that cross the store boundary, and the row converters."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import asyncpg
import msgspec


class ClaimedRun(msgspec.Struct, frozen=True, kw_only=True):
    id: UUID
    workflow: str
    queue: str
    input: bytes | None
    state: bytes
    attempt: int
    released: int
    max_attempts: int
    deadline_at: datetime | None
    step_count: int
    created_at: datetime
    db_now: datetime
    # Read with the claim; a suspension is refused once it changed (see suspend_run).
    wake_seq: int = 0
    # When the run was due (its run_at as claimed): the claim lag is db_now - due_at.
    due_at: datetime | None = None
    # The W3C trace context (JSON) stored at enqueue; the run's spans join that trace.
    trace_context: bytes | None = None
    # The workflow version the run started with; None for an unversioned workflow.
    version: str | None = None


class StepRecord(msgspec.Struct, frozen=True, kw_only=True):
    position: int
    name: str
    status: str
    run_attempt: int
    output: bytes | None
    error: bytes | None
    replay_failure: bool = True
    kind: str = "step"
    # The state as of this entry, when the entry's own code wrote it.
    state_after: bytes | None = None


class Checkpoint(msgspec.Struct, frozen=True, kw_only=True):
    """A step outcome to record for the claim (run_id, attempt)."""

    run_id: UUID
    attempt: int
    position: int
    name: str
    status: str
    attempts: int
    output: bytes | None
    error: bytes | None
    started_at: datetime
    event_data: bytes
    kind: str = "step"
    event_type: str = ""
    wrote_state: bool = False


class QueueControl(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    concurrency: int | None = None
    rate_per_minute: float | None = None
    paused: bool = False
    per_key_concurrency: int | None = None
    per_key_rate_per_minute: float | None = None

    @property
    def controlled(self) -> bool:
        return (
            self.paused
            or self.concurrency is not None
            or self.rate_per_minute is not None
            or self.keyed
        )

    @property
    def keyed(self) -> bool:
        """Per-key caps apply: claims go round robin over concurrency keys."""
        return self.per_key_concurrency is not None or self.per_key_rate_per_minute is not None


class ControlledClaim(msgspec.Struct, frozen=True, kw_only=True):
    """What a claim from a controlled queue got; ``held`` when its controls (pause,
    cap, rate) allowed fewer runs than asked, and when to try again if its rate held
    it back (``retry_in_s``)."""

    runs: list[ClaimedRun]
    held: bool = False
    retry_in_s: float | None = None


class GateResolution(msgspec.Struct, frozen=True, kw_only=True):
    """What ``Store.resolve_gate`` found: ``resolved``, ``expired`` (found past its
    time, and closed as expired), ``closed`` (decided before: ``status``),
    ``run_finished`` (its run ended: ``status``), ``bad_token``, ``no_run``, ``no_gate``.
    ``queue`` is set when the run was waiting and went back to it."""

    outcome: str
    status: str | None = None
    queue: str | None = None


class Completion(msgspec.Struct, frozen=True, kw_only=True):
    """A run's output to record for the claim (run_id, attempt)."""

    run_id: UUID
    attempt: int
    output: bytes


class EnqueueRow(msgspec.Struct, frozen=True, kw_only=True):
    """A run an enqueue returned: the one inserted, or (``inserted`` False) the active
    run its dedupe, debounce or singleton key found."""

    id: UUID
    inserted: bool
    queue: str
    dedupe_key: str | None


class NewRun(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A run to insert; ``input`` and ``metadata`` are encoded JSON. A batch of these is
    sent as one JSON document (see ``enqueue_runs``), field names as its columns; a
    field left at its default (None) is left out, and reads as NULL there (a no-op run
    is a third of the bytes to send and for Postgres to parse)."""

    id: UUID
    workflow: str
    queue: str
    input: msgspec.Raw
    priority: int
    max_attempts: int
    delay_s: float
    dedupe_key: str | None = None
    metadata: msgspec.Raw | None = None
    parent_id: UUID | None = None
    run_at: datetime | None = None
    deadline_at: datetime | None = None
    channels: list[str] | None = None
    #: The W3C trace context current at enqueue (a JSON object), or None.
    trace_context: msgspec.Raw | None = None
    #: The workflow version the run starts with (None: unversioned, any worker).
    version: str | None = None
    #: Debounce (``enqueue_debounced``): the key, the quiet window and the cap, seconds.
    debounce_key: str | None = None
    debounce_window_s: float | None = None
    debounce_max_wait_s: float | None = None
    #: Singleton (``enqueue_singleton``): at most one active run per workflow and key.
    singleton_key: str | None = None
    #: The key its queue's per-key caps count it under (None: not limited by them).
    concurrency_key: str | None = None


class ScheduledRun(NewRun, frozen=True, kw_only=True):
    """The run of one schedule tick."""

    schedule: str
    fire_time: datetime


_batch_encoder = msgspec.json.Encoder()


def _claimed(row: asyncpg.Record) -> ClaimedRun:
    return ClaimedRun(
        id=row["id"],
        workflow=row["workflow"],
        queue=row["queue"],
        input=row["input"],
        state=row["state"],
        attempt=row["attempt"],
        released=row["released"],
        max_attempts=row["max_attempts"],
        deadline_at=row["deadline_at"],
        step_count=row["step_count"],
        created_at=row["created_at"],
        db_now=row["db_now"],
        wake_seq=row["wake_seq"],
        due_at=row["run_at"],
        trace_context=row["trace_context"],
        version=row["version"],
    )
