"""The NOTIFY channels: their names, used by the notifier and the listener and
rendered into the SQL that notifies in the writing transaction."""

from __future__ import annotations

WAKE_CHANNEL = "tidebase_wake"
EVENTS_CHANNEL = "tidebase_events"
# Ids of runs cancelled while running, sent in the cancelling transaction.
CANCEL_CHANNEL = "tidebase_cancel"
# Names of queues whose controls changed (tide.queues.configure).
QUEUES_CHANNEL = "tidebase_queues"
# Live output of runs (run.emit): parts of chunks, see ``streams``.
STREAM_CHANNEL = "tidebase_stream"
