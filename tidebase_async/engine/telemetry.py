"""Telemetry of one Tidebase client: the always-on in-process ``Metrics`` registry and,
when OpenTelemetry is installed, its spans and instruments. Owns the lazy import of
OpenTelemetry (once per process, never at module import), the spans ``tidebase.enqueue``,
``tidebase.run`` (one per claim) and ``tidebase.step`` (one per executed step; replayed
steps get none, the run span counts them), the W3C trace context stored with a run so
its spans join the trace that enqueued it, and the OpenTelemetry mirror of the metrics.

Without OpenTelemetry (or with ``OTEL_SDK_DISABLED=true``) ``tracer`` is None and every
tracing hook is skipped by one attribute check at its call site.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from tidebase_async.engine.metrics import Metrics

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions
    from opentelemetry.trace import Span, Tracer

    from tidebase_async.engine.execution import Execution
    from tidebase_async.engine.executor import ExecutionResult
    from tidebase_async.store import ClaimedRun

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: None: not tried yet; False: not installed (or disabled); else the modules.
_otel: SimpleNamespace | bool | None = None
_otel_lock = threading.Lock()

#: How long an OpenTelemetry gauge callback (on the exporter's thread) waits for the
#: queue query on the client's event loop before it reports the last values read.
GAUGE_QUERY_S = 5.0


def load_otel() -> SimpleNamespace | None:
    """The OpenTelemetry API modules, imported on first use; None when OpenTelemetry is
    not installed or ``OTEL_SDK_DISABLED`` is true."""
    global _otel
    if _otel is None:
        with _otel_lock:
            if _otel is None:
                _otel = _import_otel()
    return _otel if isinstance(_otel, SimpleNamespace) else None


def _import_otel() -> SimpleNamespace | bool:
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    try:
        from opentelemetry import context, metrics, trace
        from opentelemetry.trace.propagation.tracecontext import (
            TraceContextTextMapPropagator,
        )
    except ImportError:
        return False
    return SimpleNamespace(
        context=context,
        metrics=metrics,
        trace=trace,
        propagator=TraceContextTextMapPropagator(),
    )


# Stands for the OpenTelemetry API's global provider where it cannot be read.
_NOT_READABLE = object()


class Telemetry:
    """Spans and metrics of one client. ``tracer`` is None when tracing is off: callers
    check it before calling a ``*_span``/``traced_*`` method."""

    def __init__(
        self,
        *,
        tracer_provider: Any = None,
        meter_provider: Any = None,
        enabled: bool = True,
    ) -> None:
        self.metrics = Metrics()
        self._tracer: Tracer | None = None
        # True once spans can record: a tracer_provider was passed, or the global one
        # is a real provider (set_tracer_provider happens at most once per process).
        self._live = False
        # The API's global provider as it was when no span would record (see tracer).
        self._silent_global: object = _NOT_READABLE
        self._otel: SimpleNamespace | None = load_otel() if enabled else None
        self._instruments: _Instruments | None = None
        self._queue_source: Callable[[], Awaitable[list[tuple[str, int, float]]]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        otel = self._otel
        if otel is None:
            return
        provider = tracer_provider or otel.trace.get_tracer_provider()
        self._tracer = provider.get_tracer("tidebase_async")
        self._live = tracer_provider is not None
        meters = meter_provider or otel.metrics.get_meter_provider()
        self._instruments = _Instruments(meters.get_meter("tidebase_async"), self._observe_queues)

    @property
    def tracer(self) -> Tracer | None:
        """The tracer, or None while no span would record: OpenTelemetry missing or
        disabled, or only its API installed with no provider set (the global proxy
        hands out non-recording spans; making them costs a worker a tenth of its time
        per no-op run). A provider set later is picked up at the next run.

        Asking the API for the global provider on every run is itself a twentieth of a
        no-op run's cost (it reads the environment each time): while the API's global
        is the one it was when found silent, the answer stands. (Where that global is
        not there to read, every run asks.)"""
        if self._live or self._tracer is None:
            return self._tracer
        otel = self._otel
        assert otel is not None
        seen = getattr(otel.trace, "_TRACER_PROVIDER", _NOT_READABLE)
        if seen is not _NOT_READABLE and seen is self._silent_global:
            return None
        provider = otel.trace.get_tracer_provider()
        if isinstance(provider, (otel.trace.ProxyTracerProvider, otel.trace.NoOpTracerProvider)):
            # Read again: asking may have set it (OTEL_PYTHON_TRACER_PROVIDER).
            self._silent_global = getattr(otel.trace, "_TRACER_PROVIDER", _NOT_READABLE)
            return None
        self._live = True
        return self._tracer

    @classmethod
    def disabled(cls) -> Telemetry:
        """Metrics only, no OpenTelemetry (engine contexts built without a client)."""
        return cls(enabled=False)

    # -- metrics ----------------------------------------------------------------------

    def count_enqueued(self, runs: Iterable[tuple[str, str]]) -> None:
        """Count runs created, as (workflow, queue) pairs."""
        counter = self.metrics.enqueued
        instruments = self._instruments
        for key, n in collections.Counter(runs).items():
            counter.inc(key, n)
            if instruments is not None:
                instruments.enqueued.add(n, {"workflow": key[0], "queue": key[1]})

    def run_started(self, claimed: ClaimedRun) -> float:
        """Count a claim and its lag; returns the start for ``run_finished``."""
        key = (claimed.workflow, claimed.queue)
        lag = 0.0 if claimed.due_at is None else (claimed.db_now - claimed.due_at).total_seconds()
        lag = max(lag, 0.0)
        self.metrics.started.inc(key)
        self.metrics.claim_lag.observe(key, lag)
        if self._instruments is not None:
            attrs = {"workflow": key[0], "queue": key[1]}
            self._instruments.started.add(1, attrs)
            self._instruments.claim_lag.record(lag, attrs)
        return time.perf_counter()

    def run_finished(self, claimed: ClaimedRun, outcome: str, started: float) -> None:
        """Count the claim's outcome and its duration."""
        key = (claimed.workflow, claimed.queue)
        seconds = time.perf_counter() - started
        m = self.metrics
        m.run_seconds.observe(key, seconds)
        counter = {"completed": m.completed, "failed": m.failed, "retrying": m.retried}.get(outcome)
        if counter is not None:
            counter.inc(key)
        instruments = self._instruments
        if instruments is not None:
            attrs = {"workflow": key[0], "queue": key[1]}
            instruments.run_seconds.record(seconds, attrs)
            total = instruments.outcomes.get(outcome)
            if total is not None:
                total.add(1, attrs)

    def step_done(self, workflow: str, step: str, seconds: float) -> None:
        self.metrics.step_seconds.observe((workflow, step), seconds)
        if self._instruments is not None:
            self._instruments.step_seconds.record(seconds, {"workflow": workflow, "step": step})

    def bind_queues(self, source: Callable[[], Awaitable[list[tuple[str, int, float]]]]) -> None:
        """Where the queue gauges come from (the client's store; it raises while the
        client is closed)."""
        self._queue_source = source

    def use_loop(self) -> None:
        """Remember the running loop: an OpenTelemetry reader's thread runs the queue
        query there (called when workers, inline runs or a scrape start)."""
        self._loop = asyncio.get_running_loop()

    async def collect_queues(self) -> None:
        """Read the queue gauges from the database now (one bounded query).

        Raises:
            StoreError: the database did not answer (the gauges keep their values).
        """
        source = self._queue_source
        if source is None:
            self.metrics.set_queues([])
            return
        self.metrics.set_queues(await source())

    def _observe_queues(self, refresh: bool) -> list[tuple[str, float, float]]:
        """The queue gauges for an OpenTelemetry collection: with ``refresh``, queried
        on the client's loop when called from another thread (a periodic reader); else,
        or on the loop's own thread, the last values read."""
        loop = self._loop
        if (
            refresh
            and loop is not None
            and not loop.is_closed()
            and self._queue_source is not None
            and not _on_loop(loop)
        ):
            try:
                future = asyncio.run_coroutine_threadsafe(self.collect_queues(), loop)
            except RuntimeError as exc:  # the loop closed meanwhile
                logger.warning("queue gauges not refreshed: %s", exc)
            else:
                try:
                    future.result(timeout=GAUGE_QUERY_S)
                except Exception as exc:
                    future.cancel()
                    logger.warning("queue gauges not refreshed: %s", exc or "timed out")
        depth = self.metrics.queue_depth.values
        oldest = self.metrics.queue_oldest.values
        return [(key[0], depth[key], oldest.get(key, 0.0)) for key in sorted(depth)]

    # -- spans ------------------------------------------------------------------------

    @contextlib.contextmanager
    def enqueue_span(self, attributes: dict[str, Any]) -> Iterator[tuple[Span, msgspec.Raw | None]]:
        """A ``tidebase.enqueue`` span (a child of the current span) and the W3C trace
        context to store with the runs, so their ``tidebase.run`` spans are its children.
        Only while ``tracer`` is set."""
        otel = self._otel
        tracer = self.tracer
        assert otel is not None and tracer is not None
        span = tracer.start_span(
            "tidebase.enqueue", kind=otel.trace.SpanKind.PRODUCER, attributes=attributes
        )
        with otel.trace.use_span(span, end_on_exit=True):
            yield span, self._carrier(otel.trace.set_span_in_context(span))

    def child_context(self, stored: bytes | None) -> msgspec.Raw | None:
        """The trace context a child run of the current execution is created with: the
        current span's (the parent run's) when tracing, else the parent's own stored
        one, carried through."""
        otel = self._otel
        if otel is None or self.tracer is None:
            return None if stored is None else msgspec.Raw(stored)
        return self._carrier(otel.context.get_current())

    def _carrier(self, ctx: Any) -> msgspec.Raw | None:
        assert self._otel is not None
        carrier: dict[str, str] = {}
        self._otel.propagator.inject(carrier, context=ctx)
        return msgspec.Raw(msgspec.json.encode(carrier)) if carrier else None

    async def traced_run(
        self, ex: Execution, execute: Callable[[], Awaitable[ExecutionResult]]
    ) -> ExecutionResult:
        """``execute`` (one claim) inside a ``tidebase.run`` span whose parent is the
        trace context stored at enqueue (else the current span, for inline runs)."""
        otel = self._otel
        assert otel is not None and self.tracer is not None
        claimed = ex.claimed
        parent = None
        if claimed.trace_context is not None:
            try:
                carrier = msgspec.json.decode(claimed.trace_context, type=dict[str, str])
                parent = otel.propagator.extract(carrier)
            except msgspec.DecodeError:
                parent = None
        span = self.tracer.start_span(
            "tidebase.run",
            context=parent,
            kind=otel.trace.SpanKind.CONSUMER,
            attributes={
                "tidebase.run_id": str(claimed.id),
                "tidebase.workflow": claimed.workflow,
                "tidebase.queue": claimed.queue,
                "tidebase.attempt": claimed.attempt,
            },
        )
        with otel.trace.use_span(span, end_on_exit=True):
            result = await execute()
            span.set_attribute("tidebase.outcome", result.outcome)
            span.set_attribute("tidebase.executed_steps", result.executed_steps)
            span.set_attribute("tidebase.replayed_steps", result.replayed_steps)
            if result.outcome in ("failed", "retrying"):
                if result.exception is not None:
                    span.record_exception(result.exception)
                message = (result.error or {}).get("message", result.outcome)
                span.set_status(otel.trace.Status(otel.trace.StatusCode.ERROR, str(message)))
            return result

    async def traced_step(
        self, ex: Execution, full_name: str, call: Callable[[], Awaitable[T]]
    ) -> T:
        """``call`` (one step's execution) inside a ``tidebase.step`` span, a child of
        the run span; an exception the step raises is recorded on it."""
        otel = self._otel
        tracer = self.tracer
        assert otel is not None and tracer is not None
        span = tracer.start_span(
            "tidebase.step",
            attributes={
                "tidebase.run_id": str(ex.run_id),
                "tidebase.workflow": ex.claimed.workflow,
                "tidebase.step": full_name,
                "tidebase.attempt": ex.attempt,
            },
        )
        with otel.trace.use_span(span, end_on_exit=True):
            return await call()


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


class _Instruments:
    """The OpenTelemetry instruments mirroring ``Metrics`` (names per its conventions)."""

    def __init__(
        self,
        meter: Any,
        queues: Callable[[bool], list[tuple[str, float, float]]],
    ) -> None:
        from opentelemetry.metrics import Observation

        self.enqueued = meter.create_counter(
            "tidebase.runs.enqueued", unit="{run}", description="Runs enqueued."
        )
        self.started = meter.create_counter(
            "tidebase.runs.started", unit="{run}", description="Claims of runs started."
        )
        self.outcomes = {
            "completed": meter.create_counter(
                "tidebase.runs.completed", unit="{run}", description="Runs completed."
            ),
            "failed": meter.create_counter(
                "tidebase.runs.failed", unit="{run}", description="Runs failed for good."
            ),
            "retrying": meter.create_counter(
                "tidebase.runs.retried", unit="{run}", description="Failed attempts retried."
            ),
        }
        self.step_seconds = meter.create_histogram(
            "tidebase.step.duration", unit="s", description="Executed step duration."
        )
        self.run_seconds = meter.create_histogram(
            "tidebase.run.duration", unit="s", description="Duration of one claim of a run."
        )
        self.claim_lag = meter.create_histogram(
            "tidebase.claim.lag", unit="s", description="Time from a run being due to its claim."
        )

        def depth(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(n, {"queue": q}) for q, n, _ in queues(True)]

        def oldest(options: CallbackOptions) -> Iterable[Observation]:
            # The values the depth callback of this collection just read (registered
            # first, so called first): no second query.
            return [Observation(age, {"queue": q}) for q, _, age in queues(False)]

        meter.create_observable_gauge(
            "tidebase.queue.depth",
            callbacks=[depth],
            unit="{run}",
            description="Queued runs that are due, per queue.",
        )
        meter.create_observable_gauge(
            "tidebase.queue.oldest_age",
            callbacks=[oldest],
            unit="s",
            description="Seconds the oldest due queued run has waited, per queue.",
        )
