"""Runnable examples of tidebase-async (``python -m examples.report.demo``)."""

from __future__ import annotations
