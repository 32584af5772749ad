"""The ``Tidebase`` facade and its API objects (runs, gates, queues, schedules, usage)."""

from __future__ import annotations

from tidebase_async.client.tidebase import Tidebase

__all__ = ["Tidebase"]
