-- tidebase-async schema, version 9: the W3C trace context (a JSON object of
-- traceparent/tracestate) current when a run was enqueued, so that the spans of its
-- executions, on any worker, join the trace that enqueued it. Nullable, no default:
-- adding it rewrites nothing.

ALTER TABLE tidebase.runs ADD COLUMN trace_context jsonb;
