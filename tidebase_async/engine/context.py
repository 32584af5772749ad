"""What every execution of a process shares: the store, the notifier and the listener,
the registered workflows, the settings runs execute under (payload limit, public
URL, lease) and the client's telemetry. The client builds one per worker and per
inline run; the worker, its executions and their leases only read it."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from tidebase_async.engine.telemetry import Telemetry
from tidebase_async.engine.workflows import Workflow, WorkflowVersions
from tidebase_async.store import Store
from tidebase_async.store.listener import Listener
from tidebase_async.store.notifier import Notifier


class EngineContext(msgspec.Struct, frozen=True, kw_only=True):
    """The per-process things an execution needs, set once and never changed.

    ``workflows`` is the registry itself, not a copy: a workflow registered after the
    context was built is found by the next claim of its runs.
    """

    store: Store
    notifier: Notifier
    #: The LISTEN connection (cancel notifications, wake-ups); None without one.
    listener: Listener | None
    workflows: Mapping[str, Workflow]
    #: Largest encoded input, output, step value or chunk, in bytes.
    max_payload: int
    #: Where the HTTP API is mounted, for the ``resolve_url`` of gates.
    public_url: str | None
    #: How long a claim's lease lasts; heartbeats renew it every third of that.
    lease_s: float
    #: The client's metrics and, when OpenTelemetry is installed, its spans.
    telemetry: Telemetry = msgspec.field(default_factory=Telemetry.disabled)
    #: Every registered version of every workflow (``workflows`` holds the newest of
    #: each); the registry itself, like ``workflows``.
    versions: WorkflowVersions = msgspec.field(default_factory=WorkflowVersions)
