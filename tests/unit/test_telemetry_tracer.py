"""Tracing costs nothing until a provider can record: with only the OpenTelemetry API
installed and no provider set, the tracer is None (no non-recording spans are made per
run and step); a provider set later is picked up; one passed in is used at once."""

from __future__ import annotations

import subprocess
import sys

from opentelemetry.sdk.trace import TracerProvider

from tidebase_async.engine.telemetry import Telemetry

# In a fresh interpreter: the global provider can be set once per process.
_SCRIPT = """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from tidebase_async.engine.telemetry import Telemetry

telemetry = Telemetry()
print(telemetry.tracer is None)
trace.set_tracer_provider(trace.NoOpTracerProvider())
print(telemetry.tracer is None)
"""

_SCRIPT_LATER = """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from tidebase_async.engine.telemetry import Telemetry

telemetry = Telemetry()
print(telemetry.tracer is None)
trace.set_tracer_provider(TracerProvider())
tracer = telemetry.tracer
print(tracer is not None and tracer.start_span("x").is_recording())
"""


def _run(script: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.split()


def test_no_tracer_while_only_the_api_is_there_or_a_no_op_provider_is_set() -> None:
    assert _run(_SCRIPT) == ["True", "True"]


def test_a_global_provider_set_later_is_picked_up() -> None:
    assert _run(_SCRIPT_LATER) == ["True", "True"]


def test_a_provider_passed_in_records_at_once() -> None:
    telemetry = Telemetry(tracer_provider=TracerProvider())
    tracer = telemetry.tracer
    assert tracer is not None
    assert tracer.start_span("x").is_recording()


def test_disabled_telemetry_has_no_tracer() -> None:
    assert Telemetry.disabled().tracer is None
