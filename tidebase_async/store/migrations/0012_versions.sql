-- tidebase-async schema, version 12: workflow versions.
-- runs.version: the version of its workflow a run started with (NULL for a workflow
-- registered without one). A worker claims a versioned run only when it registers
-- that (workflow, version); unversioned runs are claimed as before. Nullable, no
-- default: adding it rewrites nothing.
ALTER TABLE tidebase.runs ADD COLUMN version text;
-- What `queues list` and /metrics count: queued runs per (workflow, version). Partial
-- over versioned queued runs only, so unversioned runs (and their claims) pay nothing.
CREATE INDEX runs_queued_versions ON tidebase.runs (queue, workflow, version)
  WHERE status = 'queued' AND version IS NOT NULL;
-- The (workflow, version) keys ("workflow\x1fversion") each live worker registers,
-- renewed while it works and removed when it stops: a queued run whose key no live
-- worker has is shown as such. Presence only: claims never read it.
CREATE TABLE tidebase.worker_versions (
  key       text NOT NULL,
  worker_id text NOT NULL,
  seen_at   timestamptz NOT NULL,
  PRIMARY KEY (key, worker_id)
);
