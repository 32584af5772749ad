-- tidebase-async schema, version 14: debounce and singleton keys.
-- runs.debounce_key: the run is the pending run of a debounce key of its workflow
-- until a worker claims it; debounce_deadline is its first enqueue plus max_wait (NULL:
-- no cap), which its run_at never passes however often it is pushed.
-- runs.singleton_key: at most one active run per (workflow, key).
-- Nullable, no default: adding them rewrites nothing.
ALTER TABLE tidebase.runs
  ADD COLUMN debounce_key text,
  ADD COLUMN debounce_deadline timestamptz,
  ADD COLUMN singleton_key text;
-- The pending run of a debounce key: queued and never claimed (attempt = 0; a claim
-- bumps attempt, and a run requeued after a claim keeps it). An enqueue upserts it
-- under this index (enqueue_debounced); once claimed, the next enqueue makes a new one.
CREATE UNIQUE INDEX runs_debounce ON tidebase.runs (workflow, debounce_key)
  WHERE debounce_key IS NOT NULL AND status = 'queued' AND attempt = 0;
-- A singleton key's active run (enqueue_singleton, replace_singleton).
CREATE UNIQUE INDEX runs_singleton ON tidebase.runs (workflow, singleton_key)
  WHERE singleton_key IS NOT NULL AND status IN ('queued', 'running', 'waiting');
