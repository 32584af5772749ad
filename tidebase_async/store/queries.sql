-- Every SQL statement of tidebase-async, named. Parsed once by store/sql.py.
-- Conventions: all times come from tidebase.now(); every write a worker makes for a run
-- is fenced on (id, lease_owner, attempt) AND status = 'running', so a worker whose lease
-- was taken over (a zombie) changes nothing. Appending an event always goes through an
-- UPDATE of the run row that bumps runs.event_seq, which serialises appenders on the row
-- lock and keeps events.seq gap-free. Seq 1 (run.created) is the one event not stored:
-- every run is created with event_seq >= 1 and list_events derives seq 1 from the run
-- row (its created_at), which saves enqueue an insert per run.

-- name: schema_version
SELECT max(version) FROM tidebase.schema_migrations;

-- name: enqueue_runs
-- Runs ($1: a JSON array of NewRun objects) in one statement; on a dedupe conflict
-- with an active run, that run is returned instead. ON CONFLICT DO UPDATE (not DO
-- NOTHING) locks and returns the existing row in the same statement, so there is no
-- window in which the duplicate finishes and a re-select finds nothing; (xmax = 0)
-- tells a fresh insert from the conflict path.
-- The caller removes duplicate dedupe keys within the batch first (DO UPDATE may not
-- touch one row twice in a statement).
-- Event seq 1 (run.created) is not written: list_events derives it from the run row.
-- The workers' wake-up is sent in the same transaction, once per queue: it arrives the
-- moment the runs are visible. (This is the one write that notifies in-transaction: a
-- notifying commit holds a cluster-wide lock while it flushes WAL, which enqueue can
-- afford, one statement per call, but a worker's per-run writes could not.)
WITH ins AS (
  INSERT INTO tidebase.runs AS r
    (id, workflow, queue, status, input, priority, dedupe_key, metadata, parent_id,
     max_attempts, run_at, deadline_at, created_at, updated_at, event_seq)
  SELECT u.id, u.workflow, u.queue, 'queued', u.input, u.priority, u.dedupe_key,
         u.metadata, u.parent_id, u.max_attempts,
         COALESCE(u.run_at, tidebase.now()) + make_interval(secs => u.delay_s),
         u.deadline_at, tidebase.now(), tidebase.now(), 1
  FROM jsonb_to_recordset($1::jsonb)
       AS u(id uuid, workflow text, queue text, input jsonb, priority int4,
            dedupe_key text, metadata jsonb, parent_id uuid, max_attempts int4,
            run_at timestamptz, delay_s float8, deadline_at timestamptz)
  ON CONFLICT (queue, dedupe_key)
    WHERE dedupe_key IS NOT NULL AND status IN ('queued', 'running', 'waiting')
    DO UPDATE SET dedupe_key = EXCLUDED.dedupe_key
  RETURNING r.id, (r.xmax = 0) AS inserted, r.queue, r.dedupe_key,
            r.run_at <= tidebase.now() AS due
), wake AS (
  SELECT count(pg_notify('tidebase_wake', q.queue)) AS sent
  FROM (SELECT DISTINCT queue FROM ins WHERE inserted) AS q
)
SELECT id, inserted, queue, dedupe_key, due FROM ins, wake;

-- name: notify
-- Hints from the workers' writes are sent after those transactions committed, in a
-- transaction of their own with synchronous_commit off: a notifying commit holds a
-- cluster-wide lock while it flushes WAL, so notifying inside every write would
-- serialise all commits. A lost notification costs latency only; workers poll as the
-- floor.
SELECT set_config('synchronous_commit', 'off', true), pg_notify(c, p)
FROM unnest($1::text[], $2::text[]) AS m(c, p);

-- name: _lease_picked
-- Shared tail of the claim statements: lease the rows of CTE "picked" to worker $1
-- for $3 seconds, append their run.claimed events, return them with the db clock.
claimed AS (
  UPDATE tidebase.runs r
  SET status = 'running', lease_owner = $1, attempt = r.attempt + 1,
      lease_expires_at = tidebase.now() + make_interval(secs => $3::float8),
      started_at = COALESCE(r.started_at, tidebase.now()), updated_at = tidebase.now(),
      event_seq = r.event_seq + 1
  FROM picked WHERE r.id = picked.id
  RETURNING r.id, r.workflow, r.queue, r.input, r.state, r.attempt, r.released,
            r.max_attempts, r.deadline_at, r.step_count, r.event_seq, r.created_at
), ev AS (
  INSERT INTO tidebase.events (run_id, seq, type, at, data)
  SELECT id, event_seq, 'run.claimed', tidebase.now(),
         jsonb_build_object('worker', $1::text, 'attempt', attempt)
  FROM claimed
)
SELECT claimed.*, tidebase.now() AS db_now FROM claimed;

-- name: claim_runs_one
-- Lease up to $4 due runs of queue $2 to worker $1 for $3 seconds.
WITH picked AS (
  SELECT id FROM tidebase.runs
  WHERE status = 'queued' AND queue = $2 AND run_at <= tidebase.now()
  ORDER BY priority DESC, run_at, id
  LIMIT $4
  FOR UPDATE SKIP LOCKED
), /* include _lease_picked */

-- name: claim_runs_many
-- As claim_runs_one, over several queues ($2 is an array).
WITH picked AS (
  SELECT id FROM tidebase.runs
  WHERE status = 'queued' AND queue = ANY($2::text[]) AND run_at <= tidebase.now()
  ORDER BY priority DESC, run_at, id
  LIMIT $4
  FOR UPDATE SKIP LOCKED
), /* include _lease_picked */

-- name: start_inline_run
-- Create a run that this process executes in place, already leased to $2.
-- No row when a run with id $1 exists already (a concurrent tide.run with the same
-- run_id won): the caller then waits for that run instead. Its events: seq 1
-- (run.created) is derived by list_events, seq 2 (run.claimed) is stored here.
WITH ins AS (
  INSERT INTO tidebase.runs
    (id, workflow, queue, status, input, priority, metadata, max_attempts, run_at,
     lease_owner, lease_expires_at, attempt, inline, created_at, started_at, updated_at,
     event_seq)
  VALUES ($1, $3, $4, 'running', $5, 0, $6, $7, tidebase.now(), $2,
          tidebase.now() + make_interval(secs => $8::float8), 1, true,
          tidebase.now(), tidebase.now(), tidebase.now(), 2)
  ON CONFLICT (id) DO NOTHING
  RETURNING id, workflow, queue, input, state, attempt, released, max_attempts,
            deadline_at, step_count, event_seq, created_at
), ev AS (
  INSERT INTO tidebase.events (run_id, seq, type, at, data)
  SELECT id, 2, 'run.claimed', tidebase.now(),
         jsonb_build_object('worker', $2::text, 'attempt', 1, 'inline', true)
  FROM ins
)
SELECT ins.*, tidebase.now() AS db_now FROM ins;

-- name: claim_run_by_id
-- Lease one specific queued run (inline resume of an existing run).
WITH picked AS (
  SELECT id FROM tidebase.runs WHERE id = $2 AND status = 'queued' FOR UPDATE SKIP LOCKED
), /* include _lease_picked */

-- name: load_steps
-- The whole history of the claimed runs, in one query.
SELECT run_id, position, name, status, run_attempt, output, error, replay_failure
FROM tidebase.steps WHERE run_id = ANY($1::uuid[])
ORDER BY run_id, position;

-- name: heartbeat
-- Extend every lease worker $1 still holds among $2; the (id, attempt) pairs not
-- returned are lost.
WITH locked AS (
  SELECT id FROM tidebase.runs
  WHERE id = ANY($2::uuid[]) AND lease_owner = $1 AND status = 'running'
  ORDER BY id
  FOR NO KEY UPDATE
)
UPDATE tidebase.runs r
SET lease_expires_at = tidebase.now() + make_interval(secs => $3::float8)
FROM locked
WHERE r.id = locked.id AND r.lease_owner = $1 AND r.status = 'running'
RETURNING r.id, r.attempt;

-- name: checkpoint_steps
-- Record step outcomes of several runs (at most one per run) in one statement; each
-- row fenced on its own claim. Returns the run ids whose fence held.
WITH c AS (
  SELECT * FROM unnest($2::uuid[], $3::int4[], $4::int4[], $5::text[], $6::text[],
                       $7::int4[], $8::bytea[], $9::jsonb[], $10::timestamptz[],
                       $11::jsonb[])
    AS c(run_id, attempt, position, name, status, attempts, output, error, started_at,
         event_data)
), locked AS (
  -- Lock the fenced rows in id order, through the primary key: every multi-row writer
  -- of runs locks in that order, so two batches cannot deadlock.
  SELECT r.id FROM tidebase.runs r JOIN c ON r.id = c.run_id
  WHERE r.lease_owner = $1 AND r.attempt = c.attempt AND r.status = 'running'
  ORDER BY r.id
  FOR NO KEY UPDATE OF r
), r AS (
  UPDATE tidebase.runs r
  SET event_seq = r.event_seq + 1, step_count = GREATEST(r.step_count, c.position + 1),
      updated_at = tidebase.now()
  FROM c, locked
  WHERE r.id = c.run_id AND r.id = locked.id AND r.lease_owner = $1
    AND r.attempt = c.attempt AND r.status = 'running'
  RETURNING r.id, r.event_seq
), s AS (
  INSERT INTO tidebase.steps AS st
    (run_id, position, name, status, attempts, run_attempt, output, error,
     started_at, finished_at)
  SELECT c.run_id, c.position, c.name, c.status, c.attempts, c.attempt, c.output, c.error,
         c.started_at, tidebase.now()
  FROM r JOIN c ON c.run_id = r.id
  ON CONFLICT (run_id, position) DO UPDATE
    SET name = EXCLUDED.name, status = EXCLUDED.status, attempts = EXCLUDED.attempts,
        run_attempt = EXCLUDED.run_attempt, output = EXCLUDED.output,
        error = EXCLUDED.error, started_at = EXCLUDED.started_at,
        finished_at = EXCLUDED.finished_at, replay_failure = true
    WHERE st.status <> 'completed'
), e AS (
  INSERT INTO tidebase.events (run_id, seq, type, at, data)
  SELECT r.id, r.event_seq,
         CASE WHEN c.status = 'completed' THEN 'step.completed' ELSE 'step.failed' END,
         tidebase.now(), c.event_data
  FROM r JOIN c ON c.run_id = r.id
)
SELECT id FROM r;

-- name: step_outcome
SELECT status, run_attempt FROM tidebase.steps WHERE run_id = $1 AND position = $2;

-- name: set_state
WITH r AS (
  UPDATE tidebase.runs
  SET state = $4, event_seq = event_seq + 1, updated_at = tidebase.now()
  WHERE id = $1 AND lease_owner = $2 AND attempt = $3 AND status = 'running'
  RETURNING id, event_seq
), e AS (
  INSERT INTO tidebase.events (run_id, seq, type, at, data)
  SELECT id, event_seq, 'state.updated', tidebase.now(), $5 FROM r
)
SELECT event_seq FROM r;

-- name: complete_runs
-- Complete several runs in one statement, each fenced on its own claim. Returns the
-- run ids whose fence held.
WITH c AS (
  SELECT * FROM unnest($2::uuid[], $3::int4[], $4::jsonb[]) AS c(id, attempt, output)
), locked AS (
  -- In id order, as in checkpoint_steps.
  SELECT r.id FROM tidebase.runs r JOIN c ON r.id = c.id
  WHERE r.lease_owner = $1 AND r.attempt = c.attempt AND r.status = 'running'
  ORDER BY r.id
  FOR NO KEY UPDATE OF r
), r AS (
  UPDATE tidebase.runs r
  SET status = 'completed', output = c.output, error = NULL, lease_owner = NULL,
      lease_expires_at = NULL, finished_at = tidebase.now(), updated_at = tidebase.now(),
      event_seq = r.event_seq + 1
  FROM c, locked
  WHERE r.id = c.id AND r.id = locked.id AND r.lease_owner = $1
    AND r.attempt = c.attempt AND r.status = 'running'
  RETURNING r.id, r.event_seq
), e AS (
  INSERT INTO tidebase.events (run_id, seq, type, at, data)
  SELECT id, event_seq, 'run.completed', tidebase.now(), NULL FROM r
)
SELECT id FROM r;

-- name: fail_run
-- The workflow raised. $5 NULL: fail for good; else requeue after $5 seconds.
WITH r AS (
  UPDATE tidebase.runs
  SET status = CASE WHEN $5::float8 IS NULL THEN 'failed' ELSE 'queued' END,
      error = $4,
      run_at = CASE WHEN $5::float8 IS NULL THEN run_at
                    ELSE tidebase.now() + make_interval(secs => $5::float8) END,
      finished_at = CASE WHEN $5::float8 IS NULL THEN tidebase.now() END,
      lease_owner = NULL, lease_expires_at = NULL, updated_at = tidebase.now(),
      event_seq = event_seq + 1
  WHERE id = $1 AND lease_owner = $2 AND attempt = $3 AND status = 'running'
  RETURNING id, event_seq, status, queue
), s AS (
  -- The failure propagated out of the workflow: no step failure of this run was
  -- "handled", so the next attempt executes those steps again instead of replaying them.
  UPDATE tidebase.steps SET replay_failure = false
  WHERE run_id = (SELECT id FROM r) AND status = 'failed'
), e AS (
  INSERT INTO tidebase.events (run_id, seq, type, at, data)
  SELECT id, event_seq, CASE WHEN status = 'failed' THEN 'run.failed' ELSE 'run.retrying' END,
         tidebase.now(), $6 FROM r
)
SELECT event_seq, status, queue FROM r;

-- name: release_runs
-- Graceful shutdown: hand claims ($2 ids, $3 their attempts) back at once without
-- spending an attempt. Fenced like every other write; attempt stays monotonic.
WITH r AS (
  UPDATE tidebase.runs r
  SET status = 'queued', released = r.released + 1, lease_owner = NULL,
      lease_expires_at = NULL, run_at = tidebase.now(), updated_at = tidebase.now(),
      event_seq = r.event_seq + 1
  FROM unnest($2::uuid[], $3::int4[]) AS c(id, attempt)
  WHERE r.id = c.id AND r.attempt = c.attempt AND r.lease_owner = $1
    AND r.status = 'running'
  RETURNING r.id, r.event_seq, r.queue
), e AS (
  INSERT INTO tidebase.events (run_id, seq, type, at, data)
  SELECT id, event_seq, 'run.released', tidebase.now(),
         jsonb_build_object('worker', $1::text) FROM r
)
SELECT id, queue FROM r;

-- name: requeue_expired
-- Reconciler: runs whose lease expired (their worker died or froze) go back to the
-- queue, or fail when their attempts are spent. Bounded and oldest first.
WITH expired AS (
  SELECT id, lease_owner AS old_owner FROM tidebase.runs
  WHERE status = 'running' AND lease_expires_at < tidebase.now()
  ORDER BY lease_expires_at
  LIMIT $1
  FOR UPDATE SKIP LOCKED
), r AS (
  UPDATE tidebase.runs r
  SET status = CASE WHEN r.attempt - r.released >= r.max_attempts THEN 'failed' ELSE 'queued' END,
      error = CASE WHEN r.attempt - r.released >= r.max_attempts THEN
                jsonb_build_object(
                  'type', 'LeaseExpired',
                  'message', format('the lease of worker %s expired on attempt %s of %s '
                                    '(the worker process died or stalled); '
                                    'no attempts left', expired.old_owner,
                                    r.attempt - r.released,
                                    r.max_attempts),
                  'traceback', NULL)
              ELSE r.error END,
      finished_at = CASE WHEN r.attempt - r.released >= r.max_attempts THEN tidebase.now() END,
      lease_owner = NULL, lease_expires_at = NULL, run_at = tidebase.now(),
      updated_at = tidebase.now(), event_seq = r.event_seq + 1
  FROM expired WHERE r.id = expired.id
  RETURNING r.id, r.queue, r.status, r.attempt, r.event_seq, expired.old_owner
), e AS (
  INSERT INTO tidebase.events (run_id, seq, type, at, data)
  SELECT id, event_seq, CASE WHEN status = 'failed' THEN 'run.failed' ELSE 'run.requeued' END,
         tidebase.now(),
         jsonb_build_object('reason', 'lease_expired', 'worker', old_owner,
                            'attempt', attempt)
  FROM r
)
SELECT id, queue, status FROM r;

-- name: prune_finished
-- Retention: delete up to $2 runs that finished more than $1 seconds ago, oldest first,
-- with their steps and events (ON DELETE CASCADE); children keep their rows (SET NULL).
-- created_at <= finished_at, so the created_at bound lets the (status, created_at)
-- index find candidates without scanning every finished run.
WITH doomed AS (
  SELECT id FROM tidebase.runs
  WHERE status IN ('completed', 'failed', 'cancelled')
    AND created_at < tidebase.now() - make_interval(secs => $1::float8)
    AND finished_at < tidebase.now() - make_interval(secs => $1::float8)
  ORDER BY created_at
  LIMIT $2
  FOR UPDATE SKIP LOCKED
)
DELETE FROM tidebase.runs r USING doomed WHERE r.id = doomed.id;

-- name: cancel_run
-- Cancel a run that is not executing (queued or waiting).
WITH r AS (
  UPDATE tidebase.runs
  SET status = 'cancelled', cancel_reason = $2, finished_at = tidebase.now(),
      updated_at = tidebase.now(), event_seq = event_seq + 1
  WHERE id = $1 AND status IN ('queued', 'waiting')
  RETURNING id, event_seq
), e AS (
  INSERT INTO tidebase.events (run_id, seq, type, at, data)
  SELECT id, event_seq, 'run.cancelled', tidebase.now(),
         jsonb_build_object('reason', $2::text, 'actor', $3::text) FROM r
)
SELECT count(*) FROM r;

-- name: retry_run
-- failed -> queued with a fresh budget of attempts; checkpoints are kept, so the run
-- resumes after its last completed step. attempt stays monotonic (it is a fence token).
WITH r AS (
  UPDATE tidebase.runs
  SET status = 'queued', max_attempts = attempt - released + $2, run_at = tidebase.now(),
      finished_at = NULL, updated_at = tidebase.now(), event_seq = event_seq + 1
  WHERE id = $1 AND status = 'failed'
  RETURNING id, event_seq, queue
), e AS (
  INSERT INTO tidebase.events (run_id, seq, type, at, data)
  SELECT id, event_seq, 'run.retried', tidebase.now(), NULL FROM r
)
SELECT queue FROM r;

-- name: get_run
SELECT id, workflow, queue, status, input, output, error, state, attempt, max_attempts,
       priority, dedupe_key, metadata, parent_id, created_at, started_at, finished_at,
       deadline_at, run_at, cancel_reason, lease_owner, lease_expires_at, inline
FROM tidebase.runs WHERE id = $1;

-- name: get_run_status
SELECT status, output, error, cancel_reason, workflow FROM tidebase.runs WHERE id = $1;

-- name: seconds_until_due
SELECT EXTRACT(EPOCH FROM run_at - tidebase.now())::float8 FROM tidebase.runs WHERE id = $1;

-- name: get_steps
SELECT name, status, attempts, output, error, started_at, finished_at
FROM tidebase.steps WHERE run_id = $1 ORDER BY position;

-- name: get_children
SELECT id, workflow, status, created_at, finished_at
FROM tidebase.runs WHERE parent_id = $1 ORDER BY created_at, id;

-- name: list_runs
-- Keyset pagination, newest first. NULL filters match everything.
SELECT id, workflow, queue, status, attempt, priority, created_at, started_at, finished_at
FROM tidebase.runs
WHERE ($1::text IS NULL OR status = $1)
  AND ($2::text IS NULL OR workflow = $2)
  AND ($3::text IS NULL OR queue = $3)
  AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5::uuid))
ORDER BY created_at DESC, id DESC
LIMIT $6;

-- name: list_events
-- Up to $3 events of run $1 with seq > $2, in order. Seq 1 (run.created, at the run's
-- created_at, no data) is derived from the run row; runs enqueued by releases that
-- stored it have that row, which is then returned instead, never both.
(SELECT 1 AS seq, 'run.created' AS type, r.created_at AS at, NULL::jsonb AS data
 FROM tidebase.runs r
 WHERE r.id = $1 AND $2::int4 < 1 AND r.event_seq >= 1
   AND NOT EXISTS (SELECT FROM tidebase.events e WHERE e.run_id = $1 AND e.seq = 1))
UNION ALL
(SELECT seq, type, at, data FROM tidebase.events
 WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3)
ORDER BY seq LIMIT $3;

-- name: next_due
-- When the earliest queued run of these queues becomes claimable.
SELECT min(n.run_at) - tidebase.now()
FROM unnest($1::text[]) AS q(queue),
     LATERAL (SELECT run_at FROM tidebase.runs
              WHERE status = 'queued' AND queue = q.queue AND run_at > '-infinity'
              ORDER BY run_at LIMIT 1) AS n;

-- name: run_exists
SELECT status FROM tidebase.runs WHERE id = $1;
