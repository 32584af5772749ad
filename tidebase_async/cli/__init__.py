"""The ``tidebase`` command: run workers, serve the HTTP API and dashboard, inspect and
control runs, gates, schedules and queues."""

from __future__ import annotations

from tidebase_async.cli.main import main

__all__ = ["main"]
