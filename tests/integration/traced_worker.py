"""A worker process whose spans go to a file, for the cross-process tracing test.

    python -m tests.integration.traced_worker --dsn DSN --spans FILE

Sets up an OpenTelemetry SDK tracer provider of its own (not the global one) whose
exporter appends each finished span to ``FILE`` as a JSON line (name, trace and span
ids in hex, the parent span id, attributes, status), registers workflow ``traced``
(steps ``one`` and ``two``), prints ``READY`` once working and works until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import anyio
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from tidebase_async import Run, Tidebase


class JsonLinesExporter(SpanExporter):
    """Appends each span as one JSON line (written at once: SimpleSpanProcessor)."""

    def __init__(self, path: str) -> None:
        self._path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(self._path, "a", encoding="utf-8") as out:
            for span in spans:
                out.write(json.dumps(span_record(span)) + "\n")
        return SpanExportResult.SUCCESS


def span_record(span: ReadableSpan) -> dict[str, Any]:
    ctx = span.get_span_context()
    assert ctx is not None
    return {
        "name": span.name,
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_id": None if span.parent is None else f"{span.parent.span_id:016x}",
        "remote_parent": span.parent is not None and span.parent.is_remote,
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
        "pid": os.getpid(),
    }


def register(tide: Tidebase) -> None:
    @tide.workflow("traced")
    async def traced(run: Run, n: int) -> int:
        async def one() -> int:
            return n + 1

        async def two(x: int) -> int:
            return x * 10

        return int(await run.step("two", two, await run.step("one", one)))


async def serve(args: argparse.Namespace) -> int:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(args.spans)))
    tide = Tidebase(args.dsn, pool_size=4, tracer_provider=provider)
    register(tide)
    started = anyio.Event()
    async with anyio.create_task_group() as tg:

        async def announce() -> None:
            await started.wait()
            print("READY", os.getpid(), flush=True)

        tg.start_soon(announce)
        await tide.work(poll_interval=0.5, maintenance_interval=0.2, started=started)
        tg.cancel_scope.cancel()
    provider.shutdown()
    print("STOPPED", os.getpid(), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.integration.traced_worker")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--spans", required=True)
    return asyncio.run(serve(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
