"""Data types of the public API: msgspec Structs and literals, data only.

Persisted shapes must keep decoding in newer versions: new fields get defaults and a
field's type never changes.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any, Literal
from uuid import UUID

import msgspec

RunStatus = Literal["queued", "running", "waiting", "completed", "failed", "cancelled"]
StepStatus = Literal["completed", "failed"]
StepKind = Literal["step", "sleep", "gate", "child", "fanout", "event", "patch"]
GateStatus = Literal["pending", "approved", "rejected", "expired", "cancelled"]

RUN_STATUSES: tuple[str, ...] = ("queued", "running", "waiting", "completed", "failed", "cancelled")
ACTIVE_STATUSES: frozenset[str] = frozenset({"queued", "running", "waiting"})
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


class Retry(msgspec.Struct, frozen=True, kw_only=True):
    """Retry policy of a step or a workflow.

    ``attempts`` counts every execution including the first. The delay before attempt
    ``n + 1`` is ``min(backoff * 2 ** (n - 1), max_backoff)`` seconds; with ``jitter`` it is
    drawn uniformly from ``[delay / 2, delay]`` so that failing runs do not retry in step.
    """

    attempts: int = 3
    backoff: float = 1.0
    max_backoff: float = 300.0
    jitter: bool = True


class MigrationStep(msgspec.Struct, frozen=True, kw_only=True):
    """One schema migration just applied (``tide.migrate(progress=...)``)."""

    version: int
    name: str
    #: The newest version this release knows: the one being migrated to.
    latest: int
    seconds: float


class RunHandle(msgspec.Struct, frozen=True, kw_only=True):
    """What ``enqueue`` returns: the run's id, and whether an active run with the same
    dedupe key already existed (then ``id`` is that run's)."""

    id: UUID
    deduplicated: bool = False


class Debounce(msgspec.Struct, frozen=True, kw_only=True):
    """``enqueue(..., debounce=Debounce(key=..., window=..., max_wait=...))``: the
    enqueues of one key (per workflow) collapse into one run, which starts with the
    latest input once ``window`` passed without another enqueue, or ``max_wait`` after
    the first one (None: no cap). Durations are seconds or a ``timedelta``; checked at
    enqueue (``max_wait`` at least ``window``; a key of at most 200 characters)."""

    key: str
    window: float | timedelta
    max_wait: float | timedelta | None = None


class Singleton(msgspec.Struct, frozen=True, kw_only=True):
    """``enqueue(..., singleton=Singleton(key=..., mode="skip"))``: at most one active
    (queued, running, waiting) run per workflow and key. ``skip`` returns the active
    run (``deduplicated=True``); ``replace`` cancels it (as ``runs.cancel`` does) and
    enqueues the new one. Checked at enqueue (a key of at most 200 characters)."""

    key: str
    mode: Literal["skip", "replace"] = "skip"


class RunSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One run for ``enqueue_many``; the fields mean what ``enqueue``'s options mean."""

    workflow: str
    input: Any = None
    dedupe_key: str | None = None
    queue: str | None = None
    priority: int = 0
    delay: float | None = None
    run_at: datetime | None = None
    max_attempts: int | None = None
    deadline: datetime | None = None
    metadata: dict[str, Any] | None = None
    webhooks: list[str] | None = None
    #: The workflow version to run (default: the newest registered in this process).
    version: str | None = None
    #: The key (a tenant, an account) its queue's per-key caps count the run under.
    concurrency_key: str | None = None
    #: Flow control by key (``enqueue`` only: ``enqueue_many`` refuses them).
    debounce: Debounce | None = None
    singleton: Singleton | None = None


class DeliveryInfo(msgspec.Struct, frozen=True, kw_only=True):
    """An outbound webhook delivery of a run (never its payload, which may hold a
    gate's resolve token)."""

    id: UUID
    url: str
    event: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int = 0
    last_status: int | None = None
    last_error: str | None = None
    created_at: datetime | None = None
    delivered_at: datetime | None = None


class UsageTotals(msgspec.Struct, frozen=True, kw_only=True):
    records: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


class UsageSummary(msgspec.Struct, frozen=True, kw_only=True):
    """One group of ``tide.usage.summary``: ``group`` maps the dimensions asked for
    (``workflow``, ``model``, ``provider``, ``kind``) to their values."""

    group: dict[str, str | None]
    records: int
    runs: int
    input_tokens: int
    output_tokens: int
    cost_usd: float


class StateVersion(msgspec.Struct, frozen=True, kw_only=True):
    """One version of a run's state: ``version`` counts from 1 without gaps; ``step``
    is the history entry the workflow had reached when it wrote it."""

    version: int
    state: Any
    step: str | None = None
    label: str | None = None
    at: datetime | None = None


class StepInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of a run's history, in the order the workflow reached it. ``kind`` is
    ``step``, or ``sleep`` (output: when it ends), ``gate`` (output: the decision),
    ``child`` or ``fanout`` (output: the children's outputs), ``event`` (output: the
    payload ``run.wait_for_event`` received), ``patch`` (a patch point the run took with
    the new code, ``run.patched``; output: true)."""

    name: str
    status: StepStatus
    attempt: int
    output: Any = None
    error: dict[str, Any] | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    kind: StepKind = "step"
    #: The usage recorded inside this entry (``run.usage.record`` in its function: a
    #: model request's tokens), summed; None when it recorded none.
    usage: UsageTotals | None = None


class GateDecision(msgspec.Struct, frozen=True, kw_only=True):
    """What ``run.gate`` returns once the gate is closed.

    ``decision`` is ``approved``, ``rejected`` or ``expired`` (the gate's ``timeout``
    passed first). ``approved`` is True only for ``approved``, so ``if not
    decision.approved`` treats an expired gate like a rejection; test ``decision.expired``
    to branch on expiry. ``actor`` and ``payload`` are what the resolver gave (None when
    expired).
    """

    decision: Literal["approved", "rejected", "expired"]
    actor: str | None = None
    payload: Any = None
    resolved_at: datetime | None = None

    @property
    def approved(self) -> bool:
        return self.decision == "approved"

    @property
    def expired(self) -> bool:
        return self.decision == "expired"


class GateInfo(msgspec.Struct, frozen=True, kw_only=True):
    run_id: UUID
    name: str
    status: GateStatus
    prompt: str | None = None
    data: Any = None
    decision: str | None = None
    actor: str | None = None
    payload: Any = None
    resolve_url: str | None = None
    created_at: datetime | None = None
    resolved_at: datetime | None = None
    expires_at: datetime | None = None


class RunSummary(msgspec.Struct, frozen=True, kw_only=True):
    id: UUID
    workflow: str
    status: RunStatus
    queue: str = "default"
    attempt: int = 0
    priority: int = 0
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    #: The workflow version the run started with (None: unversioned).
    version: str | None = None
    #: The key its queue's per-key caps count the run under (``concurrency_key``).
    concurrency_key: str | None = None


class RunInfo(msgspec.Struct, frozen=True, kw_only=True):
    id: UUID
    workflow: str
    queue: str
    status: RunStatus
    input: Any = None
    output: Any = None
    error: dict[str, Any] | None = None
    state: Any = None
    attempt: int = 0
    max_attempts: int = 1
    priority: int = 0
    dedupe_key: str | None = None
    metadata: dict[str, Any] | None = None
    parent_id: UUID | None = None
    steps: list[StepInfo] = msgspec.field(default_factory=list)
    gates: list[GateInfo] = msgspec.field(default_factory=list)
    children: list[RunSummary] = msgspec.field(default_factory=list)
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    run_at: datetime | None = None
    deadline: datetime | None = None
    cancel_reason: str | None = None
    inline: bool = False
    wake_at: datetime | None = None
    deliveries: list[DeliveryInfo] = msgspec.field(default_factory=list)
    usage: UsageTotals = msgspec.field(default_factory=UsageTotals)
    forked_from: UUID | None = None
    forked_at: str | None = None
    #: The workflow version the run started with (None: unversioned).
    version: str | None = None
    #: The run's waits for events by key (``run.wait_for_event``), in the order reached.
    event_waits: list[EventWaitInfo] = msgspec.field(default_factory=list)
    #: The key its queue's per-key caps count the run under (``enqueue(concurrency_key=)``).
    concurrency_key: str | None = None
    #: The debounce key it was enqueued with (``enqueue(debounce=Debounce(key=...))``).
    debounce_key: str | None = None
    #: The singleton key it was enqueued with (``enqueue(singleton=Singleton(key=...))``).
    singleton_key: str | None = None


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of a run's event log; ``seq`` is gap-free from 1."""

    seq: int
    type: str
    at: datetime
    data: Any = None


class Page(msgspec.Struct, frozen=True, kw_only=True):
    items: list[RunSummary]
    next_cursor: str | None = None


CatchupPolicy = Literal["latest", "all", "skip"]
OverlapPolicy = Literal["allow", "skip", "queue"]


class Schedule(msgspec.Struct, frozen=True, kw_only=True):
    """A schedule declared with its workflow: ``@tide.workflow(..., schedule=Schedule(...))``
    (a cron string or an interval is shorthand for ``Schedule(cron=...)`` /
    ``Schedule(every=...)``). It is named after the workflow; see ``Schedules.set``."""

    cron: str | None = None
    every: float | None = None
    timezone: str = "UTC"
    input: Any = None
    catchup: CatchupPolicy = "latest"
    overlap: OverlapPolicy = "allow"


class ScheduleInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    workflow: str
    cron: str | None = None
    every: float | None = None
    timezone: str = "UTC"
    input: Any = None
    queue: str | None = None
    priority: int = 0
    enabled: bool = True
    catchup: CatchupPolicy = "latest"
    catchup_limit: int = 100
    overlap: OverlapPolicy = "allow"
    next_fire_at: datetime | None = None
    last_fire_at: datetime | None = None
    last_run_id: UUID | None = None
    source: Literal["api", "code"] = "api"
    created_at: datetime | None = None
    updated_at: datetime | None = None


class QueueVersion(msgspec.Struct, frozen=True, kw_only=True):
    """Queued runs of one version of a workflow in a queue: how many, how long the
    oldest due one has waited, and how many live workers have that version (0: none
    can take them; they stay queued until one that has it starts)."""

    workflow: str
    version: str
    queued: int
    oldest_s: float = 0.0
    workers: int = 0


class QueueInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A queue's controls (None: not limited) and its runs counted by status."""

    name: str
    concurrency: int | None = None
    rate_per_minute: float | None = None
    paused: bool = False
    counts: dict[str, int] = msgspec.field(default_factory=dict)
    #: Per concurrency key: at most this many running runs (None: no cap) ...
    per_key_concurrency: int | None = None
    #: ... and at most this many claims per minute (None: no limit).
    per_key_rate_per_minute: float | None = None
    #: Queued runs of versioned workflows, per version (unversioned runs not listed).
    versions: list[QueueVersion] = msgspec.field(default_factory=list)


class QueueKey(msgspec.Struct, frozen=True, kw_only=True):
    """One concurrency key of a queue right now: its running runs and its queued ones
    (counted up to ``QUEUE_KEY_COUNT_MAX``)."""

    key: str
    running: int = 0
    queued: int = 0


class PendingDebounce(msgspec.Struct, frozen=True, kw_only=True):
    """The pending run of a debounce key (``Debounce``): it starts at ``run_at`` unless
    another enqueue of the key pushes it, never after ``deadline`` (None: no cap)."""

    run_id: UUID
    workflow: str
    key: str
    run_at: datetime | None = None
    deadline: datetime | None = None


class ActiveSingleton(msgspec.Struct, frozen=True, kw_only=True):
    """The active run of a singleton key (``Singleton``)."""

    run_id: UUID
    workflow: str
    key: str
    status: RunStatus


#: Queued runs per key are counted up to this many (``QueueKeys``).
QUEUE_KEY_COUNT_MAX = 1_000


class QueueKeys(msgspec.Struct, frozen=True, kw_only=True):
    """A queue's flow control by key (``tide.queues.keys``): its per-key controls, its
    busiest concurrency keys (running plus queued runs, most first), and the pending
    debounce runs and active singleton runs of its workflows. ``complete`` is False
    when the queue had too many keys to visit them all: the busiest may be missing."""

    name: str
    per_key_concurrency: int | None = None
    per_key_rate_per_minute: float | None = None
    keys: list[QueueKey] = msgspec.field(default_factory=list)
    complete: bool = True
    debounces: list[PendingDebounce] = msgspec.field(default_factory=list)
    singletons: list[ActiveSingleton] = msgspec.field(default_factory=list)


# -- events by key (run.wait_for_event, tide.events) -------------------------------------

KeyedEventStatus = Literal["stored", "delivered", "consumed"]
EventWaitStatus = Literal["waiting", "received", "timed_out"]


class KeyedEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event sent by key (``tide.events.send``), as recorded. ``status``:
    ``delivered`` (runs waited for it when it was sent: each in ``received_by`` got
    it), ``stored`` (nobody waited: the next run to wait for its name and key takes
    it, until ``expires_at``) or ``consumed`` (a stored event a later waiter took)."""

    id: UUID
    name: str
    key: str
    payload: Any = None
    status: KeyedEventStatus = "stored"
    received_by: list[UUID] = msgspec.field(default_factory=list)
    sent_at: datetime | None = None
    consumed_at: datetime | None = None
    expires_at: datetime | None = None


class EventWaitInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A run's wait for an event by key (``run.wait_for_event``); ``wait`` is its
    history entry's name (with ordinal)."""

    run_id: UUID
    wait: str
    name: str
    key: str
    status: EventWaitStatus = "waiting"
    event_id: UUID | None = None
    payload: Any = None
    created_at: datetime | None = None
    expires_at: datetime | None = None
    closed_at: datetime | None = None


#: The time ranges of ``tide.stats`` (and ``GET /overview``), newest bucket last.
StatsRange = Literal["1h", "6h", "24h", "7d"]
STATS_RANGES: dict[str, tuple[int, int]] = {
    # range: (bucket seconds, buckets)
    "1h": (60, 60),
    "6h": (60, 360),
    "24h": (3600, 24),
    "7d": (3600, 168),
}


class StatsBucket(msgspec.Struct, frozen=True, kw_only=True):
    """Runs created ("started", as a run counts in a workflow engine's charts) and
    finished in one bucket of a range, from ``at`` on."""

    at: datetime
    started: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0


class WorkflowStats(msgspec.Struct, frozen=True, kw_only=True):
    """A workflow's runs over a range; durations (finished_at - started_at of completed
    and failed runs) and queue waits (started_at - when the run became due) in
    milliseconds, estimated from log-scale histograms (within 19%); None: no run."""

    workflow: str
    started: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    duration_p50_ms: float | None = None
    duration_p95_ms: float | None = None
    wait_p50_ms: float | None = None
    wait_p95_ms: float | None = None


class QueueLoad(msgspec.Struct, frozen=True, kw_only=True):
    """A queue now: its queued, running and waiting runs (counts stop at 10,000:
    ``capped``), how long its oldest due queued run has waited (None: none is due)."""

    queue: str
    queued: int = 0
    running: int = 0
    waiting: int = 0
    oldest_queued_age_s: float | None = None
    paused: bool = False
    capped: bool = False


class RunErrorBrief(msgspec.Struct, frozen=True, kw_only=True):
    """The type and message of a run's recorded error (no traceback)."""

    type: str | None = None
    message: str | None = None


class FailingWorkflow(msgspec.Struct, frozen=True, kw_only=True):
    """A workflow with failures in the range, and its latest failed run."""

    workflow: str
    failed: int
    last_run_id: UUID | None = None
    last_error: RunErrorBrief | None = None
    last_failed_at: datetime | None = None


class UsageDay(msgspec.Struct, frozen=True, kw_only=True):
    """Tokens and cost recorded on one UTC day with one model (None: not recorded)."""

    day: date
    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


class Overview(msgspec.Struct, frozen=True, kw_only=True):
    """``tide.stats.overview()`` (``GET /overview``): runs per bucket over the range
    (every bucket, oldest first), per workflow, the queues now, the top failing
    workflows, usage per day and model. ``rolled_to``: the rollup's watermark (None:
    nothing rolled up; before it, minutes come from the rollup, after it, live)."""

    now: datetime
    range: StatsRange
    bucket_s: int
    series: list[StatsBucket]
    workflows: list[WorkflowStats]
    queues: list[QueueLoad]
    failing: list[FailingWorkflow]
    usage: list[UsageDay]
    usage_total_cost_usd: float = 0.0
    rolled_to: datetime | None = None


class VersionStats(msgspec.Struct, frozen=True, kw_only=True):
    """One version of a workflow over the range (None: runs without a version);
    ``success_rate``: completed / (completed + failed), None before any finished."""

    version: str | None = None
    started: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    success_rate: float | None = None
    duration_p50_ms: float | None = None
    duration_p95_ms: float | None = None


class RecentFailure(msgspec.Struct, frozen=True, kw_only=True):
    run_id: UUID
    version: str | None = None
    error: RunErrorBrief | None = None
    finished_at: datetime | None = None


class WorkflowOverview(msgspec.Struct, frozen=True, kw_only=True):
    """``tide.stats.workflow(name)`` (``GET /workflows/{name}``)."""

    workflow: str
    now: datetime
    range: StatsRange
    bucket_s: int
    series: list[StatsBucket]
    versions: list[VersionStats]
    recent_failures: list[RecentFailure]
    schedules: list[ScheduleInfo]
    success_rate: float | None = None
    duration_p50_ms: float | None = None
    duration_p95_ms: float | None = None
    wait_p50_ms: float | None = None
    wait_p95_ms: float | None = None
