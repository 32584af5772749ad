"""Telemetry costs nothing when OpenTelemetry is absent: importing the package never
imports OpenTelemetry (it is imported once, lazily, by the first client), and with it
absent (or ``OTEL_SDK_DISABLED=true``) a client has no tracer, so every tracing hook is
skipped, while the in-process metrics still count. Each check runs in a fresh
interpreter, where ``sys.modules`` says what was imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# Makes ``import opentelemetry`` fail, as when it is not installed.
_BLOCK_OTEL = """
import sys
sys.modules["opentelemetry"] = None
"""


def _run(code: str, **env: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_importing_the_package_does_not_import_opentelemetry() -> None:
    result = _run(
        """
        import json, sys
        import tidebase_async
        from tidebase_async import Tidebase, Run
        import tidebase_async.engine.telemetry, tidebase_async.client.telemetry
        import tidebase_async.web.api
        loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
        print(json.dumps({"loaded": loaded}))
        """
    )
    assert result == {"loaded": []}


def test_without_opentelemetry_a_client_has_no_tracer_and_still_counts() -> None:
    result = _run(
        _BLOCK_OTEL
        + """
import json
from tidebase_async import Tidebase
from tidebase_async.engine.context import EngineContext
from tidebase_async.engine.telemetry import Telemetry

tide = Tidebase("postgresql://nobody@127.0.0.1:1/none")
tide.telemetry.count_enqueued([("w", "q")])
print(json.dumps({
    "tracer": tide.telemetry.tracer is None,
    "default": Telemetry.disabled().tracer is None,
    "child": tide.telemetry.child_context(b'{"traceparent": "x"}') is not None,
    "counted": "tidebase_runs_enqueued_total{workflow=\\"w\\",queue=\\"q\\"} 1"
        in tide.telemetry.metrics.render(),
    "loaded": sorted(m for m in sys.modules if m.startswith("opentelemetry") and sys.modules[m]),
}))
"""
    )
    assert result == {
        "tracer": True,
        "default": True,
        # A child run still carries the parent's stored context, for tracing workers.
        "child": True,
        "counted": True,
        "loaded": [],
    }


def test_otel_sdk_disabled_turns_tracing_off() -> None:
    result = _run(
        """
        import json, sys
        from tidebase_async import Tidebase
        tide = Tidebase("postgresql://nobody@127.0.0.1:1/none")
        print(json.dumps({"tracer": tide.telemetry.tracer is None}))
        """,
        OTEL_SDK_DISABLED="true",
    )
    assert result == {"tracer": True}


def test_with_opentelemetry_installed_a_client_traces_with_the_global_provider() -> None:
    """Once a global provider is set (before or after the client is made); with the
    API alone nothing would record, and no span is made."""
    result = _run(
        """
        import json, sys
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from tidebase_async import Tidebase
        tide = Tidebase("postgresql://nobody@127.0.0.1:1/none")
        before = tide.telemetry.tracer is not None
        trace.set_tracer_provider(TracerProvider())
        print(json.dumps({"before": before, "tracer": tide.telemetry.tracer is not None}))
        """
    )
    assert result == {"before": False, "tracer": True}
