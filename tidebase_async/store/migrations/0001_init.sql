-- tidebase-async schema, version 1: runs, checkpoints, events.
-- Migrations are numbered and append-only; never edit one that has shipped.

CREATE SCHEMA IF NOT EXISTS tidebase;

-- The database clock, overridable per session or transaction for tests:
--   SET tidebase.fake_now = '2030-01-01T00:00:00Z'
CREATE OR REPLACE FUNCTION tidebase.now() RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
  SELECT COALESCE(NULLIF(current_setting('tidebase.fake_now', true), '')::timestamptz,
                  pg_catalog.now())
$$;

CREATE TABLE tidebase.runs (
  id               uuid PRIMARY KEY,
  workflow         text NOT NULL,
  queue            text NOT NULL,
  status           text NOT NULL
                   CHECK (status IN ('queued', 'running', 'waiting',
                                     'completed', 'failed', 'cancelled')),
  input            jsonb,
  output           jsonb,
  error            jsonb,
  state            jsonb NOT NULL DEFAULT '{}'::jsonb,
  priority         integer NOT NULL DEFAULT 0,
  dedupe_key       text,
  metadata         jsonb,
  parent_id        uuid REFERENCES tidebase.runs (id) ON DELETE SET NULL,
  -- Claims so far; with lease_owner it is the fence token, so it only ever grows.
  attempt          integer NOT NULL DEFAULT 0,
  -- Claims handed back unspent (graceful shutdown): attempts used = attempt - released.
  released         integer NOT NULL DEFAULT 0,
  max_attempts     integer NOT NULL CHECK (max_attempts >= 1),
  -- When a queued run becomes claimable (delay, run_at, retry backoff).
  run_at           timestamptz NOT NULL,
  deadline_at      timestamptz,
  lease_owner      text,
  lease_expires_at timestamptz,
  -- Number of events appended; events.seq is gap-free because only a statement that
  -- holds this row's lock (an UPDATE of it) may append the next one.
  event_seq        integer NOT NULL DEFAULT 0,
  step_count       integer NOT NULL DEFAULT 0,
  inline           boolean NOT NULL DEFAULT false,
  cancel_reason    text,
  created_at       timestamptz NOT NULL,
  started_at       timestamptz,
  finished_at      timestamptz,
  updated_at       timestamptz NOT NULL,
  CHECK ((status = 'running') = (lease_owner IS NOT NULL))
);

-- Claim path: only queued rows are in this index, in claim order.
CREATE INDEX runs_claimable ON tidebase.runs (queue, priority DESC, run_at, id)
  WHERE status = 'queued';
-- Idle workers sleep until the next delayed run of their queues is due. The extra
-- predicate (always true) keeps this index out of the claim's reach: a claim's WHERE
-- clause does not imply it, so the planner cannot pick it (with a sort on top) over
-- runs_claimable when the table has no statistics yet, which made claims O(queue).
CREATE INDEX runs_queued_run_at ON tidebase.runs (queue, run_at)
  WHERE status = 'queued' AND run_at > '-infinity';
-- Reconciler: expired leases, oldest first.
CREATE INDEX runs_leased ON tidebase.runs (lease_expires_at) WHERE status = 'running';
-- Dedupe: at most one active run per (queue, dedupe_key).
CREATE UNIQUE INDEX runs_dedupe ON tidebase.runs (queue, dedupe_key)
  WHERE dedupe_key IS NOT NULL AND status IN ('queued', 'running', 'waiting');
-- runs is updated several times per run: vacuum and analyze it early, so dead index
-- entries of finished runs do not pile up in front of the claim's index scan and the
-- planner knows the queue's size.
ALTER TABLE tidebase.runs SET (
  autovacuum_vacuum_scale_factor = 0.02,
  autovacuum_analyze_scale_factor = 0.02,
  autovacuum_vacuum_insert_scale_factor = 0.02
);

CREATE INDEX runs_created ON tidebase.runs (created_at DESC, id DESC);
CREATE INDEX runs_status_created ON tidebase.runs (status, created_at DESC, id DESC);
CREATE INDEX runs_parent ON tidebase.runs (parent_id) WHERE parent_id IS NOT NULL;

-- Step checkpoints. `position` is the order in which the workflow reached its steps;
-- `name` carries the automatic ordinal ("fetch#2").
CREATE TABLE tidebase.steps (
  run_id      uuid NOT NULL REFERENCES tidebase.runs (id) ON DELETE CASCADE,
  position    integer NOT NULL,
  name        text NOT NULL,
  status      text NOT NULL CHECK (status IN ('completed', 'failed')),
  attempts    integer NOT NULL,
  run_attempt integer NOT NULL,
  output      bytea,
  error       jsonb,
  -- A failed step is replayed as a failure only when the workflow went past it; a run
  -- that failed afterwards clears this, so its next attempt executes the step again.
  replay_failure boolean NOT NULL DEFAULT true,
  started_at  timestamptz NOT NULL,
  finished_at timestamptz NOT NULL,
  PRIMARY KEY (run_id, position)
);

CREATE TABLE tidebase.events (
  run_id uuid NOT NULL REFERENCES tidebase.runs (id) ON DELETE CASCADE,
  seq    integer NOT NULL,
  type   text NOT NULL,
  at     timestamptz NOT NULL,
  data   jsonb,
  PRIMARY KEY (run_id, seq)
);
