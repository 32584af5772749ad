-- tidebase-async schema, version 5: the usage ledger and the state history.

-- Versions of a run's state, gap-free: state_version is bumped on the run row by the
-- statement that appends the next one (as event_seq is for events).
ALTER TABLE tidebase.runs ADD COLUMN state_version integer NOT NULL DEFAULT 0;

CREATE TABLE tidebase.state_versions (
  run_id  uuid NOT NULL REFERENCES tidebase.runs (id) ON DELETE CASCADE,
  version integer NOT NULL,
  state   jsonb NOT NULL,
  -- The history entry the workflow had reached when it wrote this (its name, with the
  -- ordinal): the step running or the last one before; NULL before the first.
  step    text,
  label   text,
  at      timestamptz NOT NULL,
  PRIMARY KEY (run_id, version)
);

-- Usage (tokens, money) of runs. A record is keyed by the history entry it belongs to
-- and its order within that entry, so a replay that records it again adds nothing.
CREATE TABLE tidebase.usage (
  run_id        uuid NOT NULL REFERENCES tidebase.runs (id) ON DELETE CASCADE,
  position      integer NOT NULL,
  seq           integer NOT NULL,
  step          text,
  workflow      text NOT NULL,
  kind          text NOT NULL,
  provider      text,
  model         text,
  input_tokens  bigint NOT NULL DEFAULT 0 CHECK (input_tokens >= 0),
  output_tokens bigint NOT NULL DEFAULT 0 CHECK (output_tokens >= 0),
  cost_usd      numeric NOT NULL DEFAULT 0 CHECK (cost_usd >= 0),
  metadata      jsonb,
  recorded_at   timestamptz NOT NULL,
  PRIMARY KEY (run_id, position, seq)
);
CREATE INDEX usage_recorded ON tidebase.usage (recorded_at);
