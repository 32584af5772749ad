"""Figures, targets, the printed table and the JSON record of one benchmark."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec

from benchmarks.environment import Environment

OUT_DIR = Path(__file__).resolve().parent / "out"


class Target(msgspec.Struct, frozen=True):
    """A goal of the performance issue: ``value <op> bound``. Informational only."""

    op: Literal[">=", "<="]
    bound: float

    def met(self, value: float) -> bool:
        return value >= self.bound if self.op == ">=" else value <= self.bound


class Figure(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    value: float
    unit: str
    target: Target | None = None


class Report(msgspec.Struct, kw_only=True):
    benchmark: str
    date: str
    elapsed_s: float
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    environment: Environment
    figures: list[Figure]
    details: dict[str, Any]
    # Printed instead of the figure rows when set (benchmarks/compare.py).
    table: str | None = None


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: a value that was measured, never an interpolation."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"


def _target(figure: Figure) -> tuple[str, str]:
    if figure.target is None:
        return "", ""
    text = f"{figure.target.op} {_number(figure.target.bound)}"
    return text, "met" if figure.target.met(figure.value) else "not met"


def _header(report: Report) -> list[str]:
    env = report.environment
    pg = env.postgres
    load = " ".join(f"{x:.2f}" for x in report.load_before)
    embedded = f" (embedded: {pg.fallback_reason})" if pg.embedded else ""
    return [
        f"== {report.benchmark} ({env.mode}) {report.date}",
        f"command:  {env.command}",
        f"machine:  {env.machine.nproc} CPUs, {env.machine.cpu_model}, load avg {load}",
        f"postgres: {pg.version} at {pg.server}{embedded}; "
        f"fsync={pg.fsync} synchronous_commit={pg.synchronous_commit} "
        f"shared_buffers={pg.shared_buffers} max_connections={pg.max_connections}",
        f"python:   {env.python}; tidebase-async {env.library_revision or 'unknown revision'}",
    ]


def render(report: Report) -> str:
    """The report as a text table: figure, value, unit, target, met."""
    if report.table is not None:
        return "\n".join([*_header(report), report.table, f"({report.elapsed_s:.1f}s)"])
    rows = [("figure", "value", "unit", "target", "")]
    for fig in report.figures:
        rows.append((fig.name, _number(fig.value), fig.unit, *_target(fig)))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = _header(report)
    for n, row in enumerate(rows):
        cells = [
            row[0].ljust(widths[0]),
            row[1].rjust(widths[1]),
            row[2].ljust(widths[2]),
            row[3].ljust(widths[3]),
            row[4],
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths[:4]))
    lines.append(f"({report.elapsed_s:.1f}s; targets are goals of the performance issue)")
    return "\n".join(lines)


def write_json(report: Report, out_dir: Path = OUT_DIR) -> Path:
    """Write ``<out_dir>/<benchmark>-<timestamp>.json`` and return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = report.date.replace("-", "").replace(":", "")
    path = out_dir / f"{report.benchmark}-{stamp}.json"
    path.write_bytes(msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n")
    return path
