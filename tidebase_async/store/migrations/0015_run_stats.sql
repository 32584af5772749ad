-- tidebase-async schema, version 15: rollups of runs and usage for the dashboard's
-- overview (tide.stats).
--
-- The elected reconciler maintains them, never the run's own statements: claims and
-- completions write nothing more. It recomputes whole minutes from runs (replacing
-- their rows, so a recompute is idempotent) up to a safety lag behind now: a run's
-- finished_at (and created_at) is the start of the transaction that wrote it, which
-- commits a little later. stats_progress.rolled_to is the first minute not rolled up
-- yet; readers take the minutes from there on live from runs (a few minutes, through
-- the indexes below). An hour's row is the sum of its 60 minute rows, written once the
-- minutes are all rolled up; long ranges read hour rows.
--
-- A run counts as created in the minute of its created_at, and as completed, failed or
-- cancelled in the minute of its finished_at, where its duration (finished_at -
-- started_at; completed and failed runs) and queue wait (started_at - when it became
-- due: its run_at, or created_at for a run retried since) go into log-scale histograms
-- (tidebase.stats_bucket: 60 buckets of milliseconds, two per doubling).

CREATE TABLE tidebase.run_stats (
  -- 60 (a minute's row) or 3600 (an hour's).
  span_s    integer NOT NULL CHECK (span_s IN (60, 3600)),
  at        timestamptz NOT NULL,
  workflow  text NOT NULL,
  version   text,
  created   integer NOT NULL DEFAULT 0,
  completed integer NOT NULL DEFAULT 0,
  failed    integer NOT NULL DEFAULT 0,
  cancelled integer NOT NULL DEFAULT 0,
  duration  integer[] NOT NULL,
  wait      integer[] NOT NULL
);
CREATE INDEX run_stats_at ON tidebase.run_stats (span_s, at);
CREATE INDEX run_stats_workflow ON tidebase.run_stats (workflow, span_s, at);

-- Tokens and cost per model, by the minute and the hour of recorded_at, maintained with
-- the run rollup (same watermark).
CREATE TABLE tidebase.usage_stats (
  span_s        integer NOT NULL CHECK (span_s IN (60, 3600)),
  at            timestamptz NOT NULL,
  model         text,
  records       integer NOT NULL,
  input_tokens  bigint NOT NULL,
  output_tokens bigint NOT NULL,
  cost_usd      numeric NOT NULL
);
CREATE INDEX usage_stats_at ON tidebase.usage_stats (span_s, at);

CREATE TABLE tidebase.stats_progress (
  name      text PRIMARY KEY,
  -- The first minute not rolled up; NULL: nothing rolled up yet.
  rolled_to timestamptz
);
INSERT INTO tidebase.stats_progress (name, rolled_to) VALUES ('runs', NULL);

-- Finished runs by finish time: the rollup's and the live tail's range scans. Partial:
-- only the statement that finishes a run adds an entry, and that UPDATE changes status
-- (an indexed column), so it is never HOT and already writes every index: this adds one
-- btree insertion per finished run, at the right edge (finished_at grows).
CREATE INDEX runs_finished ON tidebase.runs (finished_at) WHERE finished_at IS NOT NULL;
-- The latest failures of a workflow (overview, workflow page): failed runs are few.
CREATE INDEX runs_failed ON tidebase.runs (workflow, finished_at DESC) WHERE status = 'failed';

-- The histogram bucket of a duration in milliseconds: 0 below 1 ms, then two buckets
-- per doubling (bucket k >= 1 holds [2^((k-1)/2), 2^(k/2)) ms), the last one open.
CREATE FUNCTION tidebase.stats_bucket(ms float8) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE WHEN ms IS NULL THEN NULL
              WHEN ms < 1 THEN 0
              ELSE LEAST(59, 1 + floor(2 * ln(ms) / ln(2))::integer) END
$$;

CREATE FUNCTION tidebase.stats_hist_add(h integer[], bucket integer) RETURNS integer[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
  IF bucket IS NOT NULL THEN
    h[bucket + 1] := h[bucket + 1] + 1;
  END IF;
  RETURN h;
END
$$;

CREATE FUNCTION tidebase.stats_hist_merge(h integer[], x integer[]) RETURNS integer[]
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
BEGIN
  FOR i IN 1 .. 60 LOOP
    h[i] := h[i] + x[i];
  END LOOP;
  RETURN h;
END
$$;

-- A histogram of buckets (NULLs skipped), and the sum of histograms.
CREATE AGGREGATE tidebase.stats_histogram(integer) (
  SFUNC = tidebase.stats_hist_add,
  STYPE = integer[],
  INITCOND = '{0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0}'
);
CREATE AGGREGATE tidebase.stats_histogram_sum(integer[]) (
  SFUNC = tidebase.stats_hist_merge,
  STYPE = integer[],
  INITCOND = '{0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0}'
);
