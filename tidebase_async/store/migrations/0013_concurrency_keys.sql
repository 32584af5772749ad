-- tidebase-async schema, version 13: concurrency keys (per-key caps and rates).
-- runs.concurrency_key: the key (a tenant, an account) whose per-key caps the run
-- counts against, when its queue has any. Nullable, no default: rewrites nothing.
ALTER TABLE tidebase.runs ADD COLUMN concurrency_key text;

-- Per-key controls of a queue; either one makes the queue controlled (claimed under
-- its row lock, see claim_keyed). key_cursor: the last key the round robin served.
ALTER TABLE tidebase.queues
  ADD COLUMN per_key_concurrency     integer CHECK (per_key_concurrency >= 1),
  ADD COLUMN per_key_rate_per_minute float8 CHECK (per_key_rate_per_minute > 0),
  ADD COLUMN key_cursor              text;

-- The keyed claim walks the distinct keys of a queue's queued runs (a loose index scan,
-- one probe per key) and takes each key's head runs in claim order. Partial over keyed
-- queued runs, so runs without a key (every run of an uncapped queue) pay nothing.
CREATE INDEX runs_queued_keys ON tidebase.runs (queue, concurrency_key, priority DESC, run_at, id)
  WHERE status = 'queued' AND concurrency_key IS NOT NULL;
-- Running runs per (queue, key): what the per-key cap counts, under the queue lock.
CREATE INDEX runs_running_keys ON tidebase.runs (queue, concurrency_key)
  WHERE status = 'running' AND concurrency_key IS NOT NULL;

-- Per-key token buckets (the queue bucket's rules, per key): a key without a row has
-- a full bucket. Written only under the queue's row lock; the reconciler deletes rows
-- whose bucket has refilled (prune_key_buckets).
CREATE TABLE tidebase.key_buckets (
  queue           text NOT NULL,
  concurrency_key text NOT NULL,
  tokens          float8 NOT NULL,
  refilled_at     timestamptz NOT NULL,
  PRIMARY KEY (queue, concurrency_key)
);
