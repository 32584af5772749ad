"""The client's side of telemetry: inserting runs inside a ``tidebase.enqueue`` span
(storing its W3C trace context with them) and counting the ones created, and rendering
the Prometheus text of ``GET /metrics`` with the queue gauges read at that moment. The
spans, instruments and registry themselves are the engine's (``engine.telemetry``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import msgspec

from tidebase_async import errors
from tidebase_async.engine.telemetry import Telemetry
from tidebase_async.store import EnqueueRow, NewRun, Store

logger = logging.getLogger(__name__)


async def insert_runs(
    store: Store, telemetry: Telemetry, runs: Sequence[NewRun]
) -> list[EnqueueRow]:
    """``store.enqueue_many(runs)``, in one ``tidebase.enqueue`` span when tracing (the
    runs carry its context), and the runs created counted by workflow and queue."""
    if telemetry.tracer is None:
        rows = await store.enqueue_many(runs)
    else:
        rows = await _insert_traced(store, telemetry, runs)
    if all(row.inserted for row in rows):
        telemetry.count_enqueued((r.workflow, r.queue) for r in runs)
    else:
        created = {row.id for row in rows if row.inserted}
        telemetry.count_enqueued((r.workflow, r.queue) for r in runs if r.id in created)
    return rows


async def _insert_traced(
    store: Store, telemetry: Telemetry, runs: Sequence[NewRun]
) -> list[EnqueueRow]:
    workflows = {r.workflow for r in runs}
    queues = {r.queue for r in runs}
    attributes: dict[str, Any] = {"tidebase.runs": len(runs)}
    if len(workflows) == 1:
        attributes["tidebase.workflow"] = next(iter(workflows))
    if len(queues) == 1:
        attributes["tidebase.queue"] = next(iter(queues))
    with telemetry.enqueue_span(attributes) as (span, carrier):
        rows = await store.enqueue_many(
            [msgspec.structs.replace(r, trace_context=carrier) for r in runs]
        )
        if len(rows) == 1:
            # The existing run's id when the enqueue was deduplicated.
            span.set_attribute("tidebase.run_id", str(rows[0].id))
            span.set_attribute("tidebase.deduplicated", not rows[0].inserted)
        return rows


async def metrics_text(telemetry: Telemetry) -> str:
    """The registry in the Prometheus text format, queue gauges read now; without them
    (logged) when the database does not answer or the client is closed."""
    try:
        await telemetry.collect_queues()
    except errors.TidebaseError as exc:
        logger.warning("metrics: queue gauges left out: %s", exc)
        telemetry.metrics.set_queues([])
    return telemetry.metrics.render()
