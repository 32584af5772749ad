"""Benchmarks of tidebase-async against a real Postgres.

Run ``python -m benchmarks`` (quick, under three minutes) or ``python -m benchmarks
--full``. Each benchmark works in a fresh database of its own, prints a table of
figures next to the targets of the performance issue (goals, never a failure) and
writes a JSON record to ``benchmarks/out/``. See ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations
