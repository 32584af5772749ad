-- tidebase-async schema, version 6: forks of runs.

ALTER TABLE tidebase.runs
  -- The run this one was forked from (tide.runs.fork), and the entry it forked at.
  ADD COLUMN forked_from uuid REFERENCES tidebase.runs (id) ON DELETE SET NULL,
  ADD COLUMN forked_at text;
CREATE INDEX runs_forked_from ON tidebase.runs (forked_from) WHERE forked_from IS NOT NULL;
