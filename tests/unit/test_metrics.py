"""The in-process metrics registry (``engine.metrics``) and its Prometheus text: families
with HELP and TYPE, escaped label values, cumulative histogram buckets, gauges replaced
as a whole, and sample values spelled as Prometheus spells them."""

from __future__ import annotations

import math

from tests.prometheus_support import parse
from tidebase_async.engine.metrics import (
    Counter,
    Histogram,
    Metrics,
    escape_label,
    format_value,
)


def test_every_family_has_help_and_type_even_before_any_sample() -> None:
    exposition = parse(Metrics().render())
    assert exposition.types == {
        "tidebase_runs_enqueued_total": "counter",
        "tidebase_runs_started_total": "counter",
        "tidebase_runs_completed_total": "counter",
        "tidebase_runs_failed_total": "counter",
        "tidebase_runs_retried_total": "counter",
        "tidebase_step_duration_seconds": "histogram",
        "tidebase_run_duration_seconds": "histogram",
        "tidebase_claim_lag_seconds": "histogram",
        "tidebase_queue_depth": "gauge",
        "tidebase_queue_oldest_age_seconds": "gauge",
    }
    assert set(exposition.helps) == set(exposition.types)
    assert exposition.samples == {}


def test_counters_count_per_label_values() -> None:
    metrics = Metrics()
    for _ in range(3):
        metrics.enqueued.inc(("report", "default"))
    metrics.enqueued.inc(("report", "bulk"))
    metrics.failed.inc(("report", "default"), 2)
    exposition = parse(metrics.render())
    assert exposition.value("tidebase_runs_enqueued_total", workflow="report", queue="default") == 3
    assert exposition.value("tidebase_runs_enqueued_total", workflow="report", queue="bulk") == 1
    assert exposition.value("tidebase_runs_failed_total", workflow="report", queue="default") == 2
    assert exposition.get("tidebase_runs_completed_total", workflow="report", queue="bulk") is None
    text = metrics.render()
    assert 'tidebase_runs_enqueued_total{workflow="report",queue="default"} 3\n' in text


def test_label_values_are_escaped_and_read_back_unchanged() -> None:
    nasty = 'a "quoted" back\\slash\nnew line, {braces}=, and ünïcode'
    assert escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    counter = Counter("x_total", "Help with a back\\slash\nand a newline.", ("workflow",))
    counter.inc((nasty,))
    metrics = Metrics()
    metrics.completed.inc((nasty, "q"))
    exposition = parse(metrics.render())
    assert exposition.value("tidebase_runs_completed_total", workflow=nasty, queue="q") == 1
    lines = list(counter.samples())
    assert lines == [
        'x_total{workflow="a \\"quoted\\" back\\\\slash\\nnew line, {braces}=, and ünïcode"} 1'
    ]
    assert "\n" not in lines[0]


def test_histogram_buckets_are_cumulative_with_sum_and_count() -> None:
    hist = Histogram("h_seconds", "A histogram.", ("workflow",), buckets=(0.1, 1.0, 10.0))
    for value in (0.05, 0.1, 0.5, 1.0, 2.0, 50.0):
        hist.observe(("w",), value)
    metrics = Metrics()
    metrics.step_seconds.observe(("w", "fetch"), 0.2)
    metrics.step_seconds.observe(("w", "fetch"), 3.0)
    text = "\n".join(
        ["# HELP h_seconds A histogram.", "# TYPE h_seconds histogram", *hist.samples()]
    )
    exposition = parse(text + "\n")
    buckets = {dict(labels)["le"]: v for labels, v in exposition.series("h_seconds_bucket").items()}
    # A value equal to a bound is in that bound's bucket (le: less or equal).
    assert buckets == {"0.1": 2, "1.0": 4, "10.0": 5, "+Inf": 6}
    assert exposition.value("h_seconds_count", workflow="w") == 6
    assert exposition.value("h_seconds_sum", workflow="w") == 53.65
    assert hist.count(("w",)) == 6
    steps = parse(metrics.render())
    assert steps.value("tidebase_step_duration_seconds_count", workflow="w", step="fetch") == 2
    assert (
        steps.value("tidebase_step_duration_seconds_bucket", workflow="w", step="fetch", le="+Inf")
        == 2
    )
    assert (
        steps.value("tidebase_step_duration_seconds_bucket", workflow="w", step="fetch", le="0.25")
        == 1
    )


def test_queue_gauges_are_replaced_as_a_whole() -> None:
    metrics = Metrics()
    metrics.set_queues([("default", 3, 12.5), ("bulk", 0, 0.0)])
    exposition = parse(metrics.render())
    assert exposition.value("tidebase_queue_depth", queue="default") == 3
    assert exposition.value("tidebase_queue_oldest_age_seconds", queue="default") == 12.5
    assert exposition.value("tidebase_queue_depth", queue="bulk") == 0
    metrics.set_queues([("bulk", 1, -0.01)])  # a clock skew never shows a negative age
    exposition = parse(metrics.render())
    assert exposition.get("tidebase_queue_depth", queue="default") is None
    assert exposition.value("tidebase_queue_oldest_age_seconds", queue="bulk") == 0


def test_values_are_spelled_as_prometheus_spells_them() -> None:
    assert format_value(3.0) == "3"
    assert format_value(0.25) == "0.25"
    assert format_value(math.inf) == "+Inf"
    assert format_value(-math.inf) == "-Inf"
    assert format_value(math.nan) == "NaN"
    assert format_value(1e20) == "1e+20"
