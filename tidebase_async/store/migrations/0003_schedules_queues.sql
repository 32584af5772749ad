-- tidebase-async schema, version 3: schedules, queue controls.

CREATE TABLE tidebase.schedules (
  name          text PRIMARY KEY,
  workflow      text NOT NULL,
  input         jsonb,
  queue         text,
  priority      integer NOT NULL DEFAULT 0,
  cron          text,
  every_s       float8 CHECK (every_s > 0),
  timezone      text NOT NULL DEFAULT 'UTC',
  enabled       boolean NOT NULL DEFAULT true,
  catchup       text NOT NULL DEFAULT 'latest' CHECK (catchup IN ('latest', 'all', 'skip')),
  -- With catchup 'all': at most this many missed ticks are enqueued (the latest ones).
  catchup_limit integer NOT NULL DEFAULT 100 CHECK (catchup_limit >= 1),
  overlap       text NOT NULL DEFAULT 'allow' CHECK (overlap IN ('allow', 'skip', 'queue')),
  -- Interval schedules fire at anchor_at + k * every_s.
  anchor_at     timestamptz NOT NULL,
  next_fire_at  timestamptz NOT NULL,
  last_fire_at  timestamptz,
  last_run_id   uuid,
  -- 'code': registered with @tide.workflow(schedule=...) and kept in sync by workers.
  source        text NOT NULL DEFAULT 'api' CHECK (source IN ('api', 'code')),
  created_at    timestamptz NOT NULL,
  updated_at    timestamptz NOT NULL,
  CHECK ((cron IS NULL) <> (every_s IS NULL))
);
CREATE INDEX schedules_due ON tidebase.schedules (next_fire_at) WHERE enabled;

-- Exactly one run per tick: the schedule's name and the tick's fire time are a unique
-- key of runs, so a tick enqueued twice (two tickers, a retried transaction) stays one.
ALTER TABLE tidebase.runs
  ADD COLUMN schedule  text,
  ADD COLUMN fire_time timestamptz;
CREATE UNIQUE INDEX runs_schedule_tick ON tidebase.runs (schedule, fire_time)
  WHERE schedule IS NOT NULL;
-- Overlap policies ask whether a schedule has an active run.
CREATE INDEX runs_schedule_active ON tidebase.runs (schedule)
  WHERE schedule IS NOT NULL AND status IN ('queued', 'running', 'waiting');

-- Queue controls. A queue without a row (or with every control NULL/false) is
-- uncontrolled and claimed on the fast path.
CREATE TABLE tidebase.queues (
  name            text PRIMARY KEY,
  -- Global cap on the queue's running runs, across all workers.
  concurrency     integer CHECK (concurrency >= 1),
  -- Token bucket kept here: at most rate_per_minute claims per minute on average,
  -- bursts up to one second's worth (at least one).
  rate_per_minute float8 CHECK (rate_per_minute > 0),
  tokens          float8 NOT NULL DEFAULT 0,
  refilled_at     timestamptz,
  paused          boolean NOT NULL DEFAULT false,
  updated_at      timestamptz NOT NULL
);
-- Concurrency caps count a queue's running runs through runs_leased (running runs
-- only, as many as all workers' slots): no index of its own on the hot path.
