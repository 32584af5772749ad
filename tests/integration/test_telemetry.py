"""Telemetry (API.md "Observability"): OpenTelemetry spans ``tidebase.enqueue`` ->
``tidebase.run`` -> ``tidebase.step`` in one trace, also across processes through the
trace context stored with the run, and for child runs; failures recorded on the spans;
``GET /metrics`` in the Prometheus text format with exact counts after known runs;
``GET /ready`` during a drain; ``GET /health`` when the database is gone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import msgspec
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from tests.integration.core_support import eventually, working
from tests.integration.procs import REPO_ROOT, WorkerProcess
from tests.integration.web_support import API_KEY, bearer, serve
from tests.prometheus_support import parse
from tidebase_async import GateInfo, Run, RunFailed, RunSpec, Tidebase
from tidebase_async.web import api


class Traced(msgspec.Struct, kw_only=True):
    tide: Tidebase
    provider: TracerProvider
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if name is None or s.name == name]


@pytest.fixture
async def traced(dsn: str) -> AsyncIterator[Traced]:
    """An open Tidebase with SDK providers of its own (not the global ones): spans to
    memory, metrics to an in-memory reader; and an API key (``/metrics`` needs it)."""
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    tide = Tidebase(dsn, api_key=API_KEY, tracer_provider=provider, meter_provider=meters)
    async with tide:
        yield Traced(tide=tide, provider=provider, exporter=exporter, reader=reader)
    provider.shutdown()
    meters.shutdown()


def _ids(span: ReadableSpan) -> tuple[int, int, int | None]:
    """(trace id, span id, parent span id)."""
    ctx = span.get_span_context()
    assert ctx is not None
    return ctx.trace_id, ctx.span_id, None if span.parent is None else span.parent.span_id


def _traceparent(span: ReadableSpan) -> str:
    """The W3C traceparent naming ``span`` as the parent."""
    ctx = span.get_span_context()
    assert ctx is not None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def register_pair(tide: Tidebase) -> None:
    @tide.workflow("pair")
    async def pair(run: Run, n: int) -> int:
        async def one() -> int:
            return n + 1

        async def two(x: int) -> int:
            return x * 10

        await run.now()  # a built-in: no span of its own
        return int(await run.step("two", two, await run.step("one", one)))


# -- spans ----------------------------------------------------------------------------------


async def test_enqueue_run_and_step_spans_form_one_trace(traced: Traced) -> None:
    tide = traced.tide
    register_pair(tide)
    tracer = traced.provider.get_tracer("test")
    with tracer.start_as_current_span("request") as request:
        handle = await tide.enqueue("pair", input=4, queue="q1")
    async with working(tide, queues=["q1"]):
        assert await tide.runs.wait(handle.id, timeout=10) == 50

    (enqueue,) = traced.spans("tidebase.enqueue")
    (run,) = traced.spans("tidebase.run")
    steps = traced.spans("tidebase.step")
    trace_id = request.get_span_context().trace_id
    assert _ids(enqueue)[0] == _ids(run)[0] == trace_id
    assert _ids(enqueue)[2] == request.get_span_context().span_id
    assert _ids(run)[2] == _ids(enqueue)[1]
    assert [_attrs(s)["tidebase.step"] for s in steps] == ["one", "two"]
    for step in steps:
        assert _ids(step)[0] == trace_id and _ids(step)[2] == _ids(run)[1]
        assert _attrs(step) == {
            "tidebase.run_id": str(handle.id),
            "tidebase.workflow": "pair",
            "tidebase.step": _attrs(step)["tidebase.step"],
            "tidebase.attempt": 1,
        }
    assert _attrs(enqueue) == {
        "tidebase.runs": 1,
        "tidebase.workflow": "pair",
        "tidebase.queue": "q1",
        "tidebase.run_id": str(handle.id),
        "tidebase.deduplicated": False,
    }
    assert _attrs(run) == {
        "tidebase.run_id": str(handle.id),
        "tidebase.workflow": "pair",
        "tidebase.queue": "q1",
        "tidebase.attempt": 1,
        "tidebase.outcome": "completed",
        "tidebase.executed_steps": 3,  # ~now counts as an executed entry
        "tidebase.replayed_steps": 0,
    }
    assert run.status.status_code is StatusCode.UNSET


async def test_replayed_steps_get_no_span_and_the_resumed_claim_a_new_run_span(
    traced: Traced,
) -> None:
    tide = traced.tide

    @tide.workflow("approve")
    async def approve(run: Run, n: int) -> int:
        async def before() -> int:
            return n

        async def after(x: int) -> int:
            return x + 1

        x = await run.step("before", before)
        decision = await run.gate("ok")
        assert decision.approved
        return int(await run.step("after", after, x))

    handle = await tide.enqueue("approve", input=1)
    async with working(tide):
        await eventually(lambda: _gate_pending(tide, handle.id), what="the gate to be pending")
        await tide.gates.resolve(handle.id, "ok", approved=True, actor="t")
        assert await tide.runs.wait(handle.id, timeout=10) == 2

    runs = traced.spans("tidebase.run")
    assert [(_attrs(r)["tidebase.attempt"], _attrs(r)["tidebase.outcome"]) for r in runs] == [
        (1, "suspended"),
        (2, "completed"),
    ]
    assert _attrs(runs[1])["tidebase.replayed_steps"] >= 1  # "before", from its checkpoint
    steps = traced.spans("tidebase.step")
    assert [(_attrs(s)["tidebase.step"], _attrs(s)["tidebase.attempt"]) for s in steps] == [
        ("before", 1),
        ("after", 2),
    ]
    # Both claims' spans hang off the one enqueue span: one trace for the whole run.
    (enqueue,) = traced.spans("tidebase.enqueue")
    assert {_ids(r)[2] for r in runs} == {_ids(enqueue)[1]}
    assert _ids(steps[1])[2] == _ids(runs[1])[1]


async def _gate_pending(tide: Tidebase, run_id: Any) -> bool:
    """The gate is open and the run parked (resolved earlier, the claim that opened it
    would replay at once: outcome ``woken``, not ``suspended``)."""
    gates: list[GateInfo] = await tide.gates.list(status="pending", run_id=run_id)
    return bool(gates) and (await tide.runs.get(run_id)).status == "waiting"


async def test_a_failed_step_records_its_exception_on_the_step_and_run_spans(
    traced: Traced,
) -> None:
    tide = traced.tide

    @tide.workflow("kaput", max_attempts=1)
    async def kaput(run: Run, n: int) -> None:
        def explode() -> None:
            raise ValueError("the disk is full")

        await run.step("explode", explode)

    handle = await tide.enqueue("kaput", input=0)
    async with working(tide):
        with pytest.raises(RunFailed):
            await tide.runs.wait(handle.id, timeout=10)

    (step,) = traced.spans("tidebase.step")
    (run,) = traced.spans("tidebase.run")
    for span in (step, run):
        assert span.status.status_code is StatusCode.ERROR
        (event,) = [e for e in span.events if e.name == "exception"]
        attrs = dict(event.attributes or {})
        assert attrs["exception.type"] == "ValueError"
        assert attrs["exception.message"] == "the disk is full"
    assert "the disk is full" in (run.status.description or "")
    assert _attrs(run)["tidebase.outcome"] == "failed"


async def test_a_child_runs_span_is_a_child_of_its_parents_run_span(traced: Traced) -> None:
    tide = traced.tide

    @tide.workflow("leaf")
    async def leaf(run: Run, n: int) -> int:
        async def square() -> int:
            return n * n

        return int(await run.step("square", square))

    @tide.workflow("tree")
    async def tree(run: Run, n: int) -> int:
        return int(await run.child("leaf", input=n, name="sq"))

    with traced.provider.get_tracer("test").start_as_current_span("request") as request:
        handle = await tide.enqueue("tree", input=3)
    async with working(tide):
        assert await tide.runs.wait(handle.id, timeout=10) == 9

    runs = traced.spans("tidebase.run")
    by_workflow: dict[str, list[ReadableSpan]] = {}
    for span in runs:
        by_workflow.setdefault(_attrs(span)["tidebase.workflow"], []).append(span)
    (first_parent_claim,) = [s for s in by_workflow["tree"] if _attrs(s)["tidebase.attempt"] == 1]
    (leaf_run,) = by_workflow["leaf"]
    assert _ids(leaf_run)[2] == _ids(first_parent_claim)[1]
    trace_id = request.get_span_context().trace_id
    assert {_ids(s)[0] for s in traced.spans()} == {trace_id}


async def test_enqueue_many_is_one_span_whose_context_every_run_stores(
    traced: Traced, db: asyncpg.Connection
) -> None:
    tide = traced.tide
    handles = await tide.enqueue_many(
        [RunSpec(workflow="a", input=1), RunSpec(workflow="b", input=2), ("a", 3)]
    )
    (span,) = traced.spans("tidebase.enqueue")
    assert _attrs(span) == {"tidebase.runs": 3, "tidebase.queue": "default"}
    rows = await db.fetch(
        "SELECT trace_context->>'traceparent' AS tp FROM tidebase.runs WHERE id = ANY($1)",
        [h.id for h in handles],
    )
    assert [r["tp"] for r in rows] == [_traceparent(span)] * 3


async def test_an_inline_run_stores_its_callers_trace(
    traced: Traced, db: asyncpg.Connection
) -> None:
    """An inline run (``tide.run``) stores the trace context current when it was
    called, so a worker that resumes it after a crash continues the caller's trace; in
    process its run span is a child of the caller's span."""
    tide = traced.tide
    register_pair(tide)
    tracer = traced.provider.get_tracer("test")
    with tracer.start_as_current_span("request") as request:
        assert await tide.run("pair", input=1, run_id=RUN_ID) == 20
    stored = await db.fetchval(
        "SELECT trace_context->>'traceparent' FROM tidebase.runs WHERE id = $1", RUN_ID
    )
    (request_span,) = traced.spans("request")
    assert stored == _traceparent(request_span)
    (run_span,) = traced.spans("tidebase.run")
    assert _ids(run_span)[0] == request.get_span_context().trace_id
    assert _ids(run_span)[2] == request.get_span_context().span_id


RUN_ID = uuid.UUID("0193a5c4-0000-7000-8000-000000000001")


# -- across processes -----------------------------------------------------------------------


@pytest.fixture
def traced_worker(dsn: str, tmp_path: Path) -> Iterator[tuple[WorkerProcess, Path]]:
    """A ``traced_worker`` process on the test's database; its spans go to a file."""
    spans = tmp_path / "spans.jsonl"
    out, err = tmp_path / "worker.out", tmp_path / "worker.err"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    with out.open("wb") as out_f, err.open("wb") as err_f:
        popen = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.integration.traced_worker",
                "--dsn",
                dsn,
                "--spans",
                str(spans),
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=out_f,
            stderr=err_f,
            stdin=subprocess.DEVNULL,
        )
    proc = WorkerProcess(popen, "traced", out, err)
    try:
        yield proc, spans
    finally:
        proc.kill()


async def test_one_trace_runs_from_a_request_through_enqueue_to_a_worker_process(
    traced: Traced, db: asyncpg.Connection, traced_worker: tuple[WorkerProcess, Path]
) -> None:
    proc, spans_file = traced_worker
    tide = traced.tide
    with traced.provider.get_tracer("test").start_as_current_span("request") as request:
        handle = await tide.enqueue("traced", input=4)
    await proc.wait_ready()
    assert await tide.runs.wait(handle.id, timeout=20) == 50
    proc.send(signal.SIGTERM)
    assert await proc.wait_exit(15) == 0, proc.describe()

    trace_id = request.get_span_context().trace_id
    (enqueue,) = traced.spans("tidebase.enqueue")
    enqueue_id = _ids(enqueue)[1]
    stored = await db.fetchval(
        "SELECT trace_context->>'traceparent' FROM tidebase.runs WHERE id = $1", handle.id
    )
    assert stored == _traceparent(enqueue)

    records = [json.loads(line) for line in spans_file.read_text().splitlines()]
    assert {r["pid"] for r in records} == {proc.pid}
    (run,) = [r for r in records if r["name"] == "tidebase.run"]
    steps = [r for r in records if r["name"] == "tidebase.step"]
    assert run["trace_id"] == f"{trace_id:032x}"
    assert run["parent_id"] == f"{enqueue_id:016x}" and run["remote_parent"]
    assert run["attributes"]["tidebase.run_id"] == str(handle.id)
    assert [s["attributes"]["tidebase.step"] for s in steps] == ["one", "two"]
    for step in steps:
        assert step["trace_id"] == f"{trace_id:032x}"
        assert step["parent_id"] == run["span_id"]


# -- metrics --------------------------------------------------------------------------------


async def test_metrics_count_known_runs_exactly(traced: Traced) -> None:
    tide = traced.tide
    register_pair(tide)

    @tide.workflow("bad", max_attempts=1)
    async def bad(run: Run, n: int) -> None:
        raise RuntimeError("no")

    for n in range(3):
        await tide.enqueue("pair", input=n)
    await tide.enqueue_many([RunSpec(workflow="pair", input=n, queue="other") for n in range(2)])
    await tide.enqueue("bad", input=0)
    # A duplicate is not a new run.
    await tide.enqueue("pair", input=9, queue="other", dedupe_key="k")
    await tide.enqueue("pair", input=9, queue="other", dedupe_key="k")
    # Runs of a queue nobody works: four due for an hour, one not due yet.
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    for n in range(4):
        await tide.enqueue("idle", input=n, queue="idle", run_at=hour_ago)
    await tide.enqueue("idle", input=9, queue="idle", delay=3600)

    async with working(tide, queues=["default", "other"]):
        await eventually(lambda: _finished(tide, 7), timeout=15, what="the seven runs to finish")

    async with serve(tide, "aiohttp") as http:
        assert (await http.get("/tidebase/metrics")).status_code == 401
        resp = await http.get("/tidebase/metrics", headers=bearer())
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    m = parse(resp.text)

    def runs(metric: str, workflow: str, queue: str) -> float | None:
        return m.get(f"tidebase_runs_{metric}_total", workflow=workflow, queue=queue)

    assert runs("enqueued", "pair", "default") == 3
    assert runs("enqueued", "pair", "other") == 3
    assert runs("enqueued", "bad", "default") == 1
    assert runs("enqueued", "idle", "idle") == 5
    assert runs("started", "pair", "default") == 3
    assert runs("started", "pair", "other") == 3
    assert runs("completed", "pair", "default") == 3
    assert runs("completed", "pair", "other") == 3
    assert runs("failed", "bad", "default") == 1
    assert runs("completed", "bad", "default") is None
    assert runs("started", "idle", "idle") is None
    for step in ("one", "two"):
        count = m.value("tidebase_step_duration_seconds_count", workflow="pair", step=step)
        assert count == 6
        inf = m.value(
            "tidebase_step_duration_seconds_bucket", workflow="pair", step=step, le="+Inf"
        )
        assert inf == 6
    assert m.get("tidebase_step_duration_seconds_count", workflow="pair", step="~now") is None
    assert m.value("tidebase_run_duration_seconds_count", workflow="pair", queue="other") == 3
    assert m.value("tidebase_claim_lag_seconds_count", workflow="bad", queue="default") == 1
    assert m.value("tidebase_queue_depth", queue="idle") == 4
    assert 3590 < m.value("tidebase_queue_oldest_age_seconds", queue="idle") < 3700
    assert m.get("tidebase_queue_depth", queue="default") is None  # nothing queued there

    # The same figures through OpenTelemetry.
    data = traced.reader.get_metrics_data()
    assert data is not None
    points: dict[str, dict[tuple[tuple[str, Any], ...], Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    key = tuple(sorted(dict(point.attributes or {}).items()))
                    points.setdefault(metric.name, {})[key] = point
    completed = points["tidebase.runs.completed"]
    assert completed[(("queue", "other"), ("workflow", "pair"))].value == 3
    assert points["tidebase.runs.failed"][(("queue", "default"), ("workflow", "bad"))].value == 1
    assert points["tidebase.step.duration"][(("step", "one"), ("workflow", "pair"))].count == 6
    assert points["tidebase.queue.depth"][(("queue", "idle"),)].value == 4

    # A periodic reader collects on a thread of its own: the gauges are read from the
    # database then, on the client's loop (above, on the loop, they were the last read).
    await tide.enqueue("idle", input=5, queue="idle", run_at=hour_ago)
    data = await anyio.to_thread.run_sync(traced.reader.get_metrics_data)
    assert data is not None
    (depth,) = [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "tidebase.queue.depth"
        for point in metric.data.data_points
        if dict(point.attributes or {}) == {"queue": "idle"}
    ]
    assert isinstance(depth, NumberDataPoint) and depth.value == 5


async def _finished(tide: Tidebase, n: int) -> bool:
    page = await tide.runs.list(limit=100)
    return sum(r.status in ("completed", "failed") for r in page.items) >= n


# -- readiness and health -------------------------------------------------------------------


async def test_ready_turns_503_when_a_worker_drains_and_when_closed(dsn: str) -> None:
    tide = Tidebase(dsn)
    entered, release = anyio.Event(), anyio.Event()

    @tide.workflow("hold")
    async def hold(run: Run, n: int) -> int:
        async def wait() -> int:
            entered.set()
            await release.wait()
            return n

        return int(await run.step("wait", wait))

    await tide.open()
    try:
        async with serve(tide, "starlette") as http:
            assert (await http.get("/tidebase/ready")).status_code == 200
            handle = await tide.enqueue("hold", input=1)
            async with working(tide, shutdown_grace=30) as worker:
                with anyio.fail_after(10):
                    await entered.wait()
                assert (await http.get("/tidebase/ready")).json() == {"ready": True}
                worker.stop()
                resp = await http.get("/tidebase/ready")
                assert resp.status_code == 503
                assert resp.json()["error"]["code"] == "not_ready"
                # Still alive and connected: only new traffic should go elsewhere.
                assert (await http.get("/tidebase/health")).status_code == 200
                release.set()
                assert await tide.runs.wait(handle.id, timeout=10) == 1
            await tide.close()
            assert (await http.get("/tidebase/ready")).status_code == 503
            resp = await http.get("/tidebase/health")
            assert resp.status_code == 503
            assert resp.json()["error"]["code"] == "unavailable"
    finally:
        await tide.close()


@pytest.mark.parametrize("reconnect_timeout", [0.5, 30.0])
async def test_health_is_503_when_the_database_is_gone(
    dsn: str, server_dsn: str, reconnect_timeout: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer comes within HEALTH_TIMEOUT_S even while reads would keep retrying."""
    monkeypatch.setattr(api, "HEALTH_TIMEOUT_S", 1.0)
    tide = Tidebase(dsn, reconnect_timeout=reconnect_timeout)
    async with tide, serve(tide, "starlette") as http:
        assert (await http.get("/tidebase/health")).status_code == 200
        admin = await asyncpg.connect(server_dsn)
        try:
            name = dsn.rsplit("/", 1)[1]
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        finally:
            await admin.close()
        with anyio.fail_after(5):
            resp = await http.get("/tidebase/health")
        assert resp.status_code == 503, resp.text
        assert resp.json() == {
            "error": {"code": "unavailable", "message": "the database does not answer"}
        }


async def test_health_answers_503_in_bounded_time_when_the_database_hangs(
    tide: Tidebase, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def hang() -> None:
        await anyio.sleep(30)

    monkeypatch.setattr(api, "HEALTH_TIMEOUT_S", 0.2)
    monkeypatch.setattr(tide, "ping", hang)
    async with serve(tide, "starlette") as http:
        with anyio.fail_after(5):
            resp = await http.get("/tidebase/health")
    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "unavailable"
