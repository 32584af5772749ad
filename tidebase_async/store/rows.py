"""The typed read models that ``Store`` returns for reads outside a worker's hot path
(runs and their history, gates, schedules, outbox deliveries, state versions, usage),
and ``row_to``, which builds one from an asyncpg row. Field names are the
statements' column names; jsonb and bytea columns are the bytes the store's binary
codec hands over (msgspec-encoded JSON for jsonb), decoded by whoever reads them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, TypeVar
from uuid import UUID

import asyncpg
import msgspec

from tidebase_async import models

DeliveryStatus = Literal["pending", "delivered", "failed"]


class RunRow(msgspec.Struct, frozen=True, kw_only=True):
    """A run as ``Store.get_run`` reads it."""

    id: UUID
    workflow: str
    queue: str
    status: models.RunStatus
    input: bytes | None
    output: bytes | None
    error: bytes | None
    state: bytes
    attempt: int
    max_attempts: int
    priority: int
    dedupe_key: str | None
    metadata: bytes | None
    parent_id: UUID | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    deadline_at: datetime | None
    run_at: datetime
    cancel_reason: str | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    inline: bool
    wake_at: datetime | None
    cancel_actor: str | None
    forked_from: UUID | None
    forked_at: str | None
    #: The workflow version the run started with (None: unversioned).
    version: str | None = None
    concurrency_key: str | None = None
    debounce_key: str | None = None
    singleton_key: str | None = None


class RunStatusRow(msgspec.Struct, frozen=True, kw_only=True):
    """What waiting for a run needs (``Store.get_run_status``)."""

    status: models.RunStatus
    output: bytes | None
    error: bytes | None
    cancel_reason: str | None
    workflow: str


class RunListRow(msgspec.Struct, frozen=True, kw_only=True):
    """One run of a listing (``Store.list_runs``)."""

    id: UUID
    workflow: str
    queue: str
    status: models.RunStatus
    attempt: int
    priority: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    version: str | None = None
    concurrency_key: str | None = None


class ChildRow(msgspec.Struct, frozen=True, kw_only=True):
    """A child of a run (``Store.get_children``)."""

    id: UUID
    workflow: str
    status: models.RunStatus
    created_at: datetime
    finished_at: datetime | None


class ChildStatusRow(msgspec.Struct, frozen=True, kw_only=True):
    """Where a child run stands, for its waiting parent (``Store.start_children``)."""

    id: UUID
    workflow: str
    status: models.RunStatus
    output: bytes | None
    error: bytes | None
    cancel_reason: str | None


class StepRow(msgspec.Struct, frozen=True, kw_only=True):
    """One history entry of a run, as the runs API shows it (``Store.get_steps``)."""

    name: str
    status: models.StepStatus
    attempts: int
    output: bytes | None
    error: bytes | None
    started_at: datetime
    finished_at: datetime
    kind: models.StepKind
    #: The usage recorded inside this entry, summed.
    usage_records: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


class EventRow(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of a run's event log (``Store.list_events``)."""

    seq: int
    type: str
    at: datetime
    data: bytes | None


class StateVersionRow(msgspec.Struct, frozen=True, kw_only=True):
    """One version of a run's state (``Store.state_history``)."""

    version: int
    state: bytes
    step: str | None
    label: str | None
    at: datetime


class UsageTotalsRow(msgspec.Struct, frozen=True, kw_only=True):
    """A run's usage, summed (``Store.run_usage``)."""

    records: int
    input_tokens: int
    output_tokens: int
    cost_usd: float


class UsageGroupRow(msgspec.Struct, frozen=True, kw_only=True):
    """The usage of one group of ``Store.usage_summary``; a dimension folded away (or
    not recorded) is None."""

    workflow: str | None
    model: str | None
    provider: str | None
    kind: str | None
    records: int
    runs: int
    input_tokens: int
    output_tokens: int
    cost_usd: float


class GateRow(msgspec.Struct, frozen=True, kw_only=True):
    """A gate (never its token hash): ``Store.list_gates``, ``Store.get_run_gates``."""

    run_id: UUID
    name: str
    status: models.GateStatus
    prompt: str | None
    data: bytes | None
    decision: str | None
    actor: str | None
    payload: bytes | None
    created_at: datetime
    resolved_at: datetime | None
    expires_at: datetime | None


class GateDetail(GateRow, frozen=True, kw_only=True):
    """One gate with its webhook ``channels`` (a JSON array of URLs) and whether it is
    ``due`` (past its expiry on the database clock; False without one):
    ``Store.get_gate``, ``Store.open_gate``."""

    channels: bytes | None
    due: bool


class ScheduleRow(msgspec.Struct, frozen=True, kw_only=True):
    """A schedule as stored (``Store.get_schedule`` and the other schedule writes)."""

    name: str
    workflow: str
    input: bytes | None
    queue: str | None
    priority: int
    cron: str | None
    every_s: float | None
    timezone: str
    enabled: bool
    catchup: models.CatchupPolicy
    catchup_limit: int
    overlap: models.OverlapPolicy
    anchor_at: datetime
    next_fire_at: datetime
    last_fire_at: datetime | None
    last_run_id: UUID | None
    source: Literal["api", "code"]
    created_at: datetime
    updated_at: datetime


class DueSchedule(ScheduleRow, frozen=True, kw_only=True):
    """A due schedule, locked by the transaction that fires it, with the database
    clock (``now``) of that transaction: what ``Store.fire_schedule`` plans from."""

    now: datetime


class DueDelivery(msgspec.Struct, frozen=True, kw_only=True):
    """An outbox delivery taken to be sent (``Store.take_deliveries``); ``attempts``
    counts this attempt; ``run_id`` is the run it belongs to, if any."""

    id: UUID
    run_id: UUID | None
    url: str
    event: str
    payload: bytes
    attempts: int
    max_attempts: int


class DeliveryOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """A delivery after its attempt was recorded (``Store.delivery_done``): ``status``
    is ``delivered``, ``pending`` (retried later) or ``failed`` (attempts spent)."""

    status: DeliveryStatus
    event: str
    run_id: UUID | None


class DeliveryRow(msgspec.Struct, frozen=True, kw_only=True):
    """A delivery of a run as the runs API shows it, without its payload (which may
    hold a gate's resolve token): ``Store.get_deliveries``."""

    id: UUID
    url: str
    event: str
    status: DeliveryStatus
    attempts: int
    last_status: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


R = TypeVar("R", bound=msgspec.Struct)


def row_to(model: type[R], row: asyncpg.Record) -> R:
    """``model`` from the columns of ``row`` named as its fields (the statement selects
    every field by name, with the SQL types the field types say)."""
    return model(**{name: row[name] for name in model.__struct_fields__})
