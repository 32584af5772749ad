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
-- The workers' wake-up is sent in the same transaction, once per queue: it arrives the
-- moment the runs are visible. (This is the one write that notifies in-transaction: a
-- notifying commit holds a cluster-wide lock while it flushes WAL, which enqueue can
-- afford, one statement per call, but a worker's per-run writes could not.)
WITH ins AS (
  /* include _insert_runs */
  ON CONFLICT (queue, dedupe_key)
    WHERE dedupe_key IS NOT NULL AND status IN ('queued', 'running', 'waiting')
    DO UPDATE SET dedupe_key = EXCLUDED.dedupe_key
  RETURNING r.id, (r.xmax = 0) AS inserted, r.queue, r.dedupe_key
), wake AS (
  SELECT count(pg_notify('tidebase_wake', q.queue)) AS sent
  FROM (SELECT DISTINCT queue FROM ins WHERE inserted) AS q
)
SELECT id, inserted, queue, dedupe_key FROM ins, wake;

-- name: enqueue_runs_plain
-- enqueue_runs for a batch without dedupe keys: nothing can conflict (run ids are new
-- UUIDs; runs_dedupe holds only rows with a key), so the insert skips the speculative
-- insertion an arbiter index costs (an index probe and a WAL record per row), and
-- every run is inserted as given: only the count comes back, not a row per run.
WITH ins AS (
  /* include _insert_runs */
  RETURNING r.queue
)
SELECT (SELECT count(*) FROM ins) AS inserted,
       (SELECT count(pg_notify('tidebase_wake', q.queue))
        FROM (SELECT DISTINCT queue FROM ins) AS q) AS woken;

-- name: enqueue_run
-- enqueue_runs for a single run, its fields as parameters instead of a JSON document
-- (no document to parse and unpack: a tenth of the statement's time), and the
-- workers' wake-up sent from the one returned row. $1..$16: id, workflow, queue,
-- input, priority, dedupe_key, metadata, parent_id, max_attempts, run_at, delay_s,
-- deadline_at, channels, trace_context, version, concurrency_key.
WITH ins AS (
  INSERT INTO tidebase.runs AS r
    (id, workflow, queue, status, input, priority, dedupe_key, metadata, parent_id,
     max_attempts, run_at, deadline_at, channels, created_at, updated_at, event_seq,
     trace_context, version, concurrency_key)
  VALUES ($1::uuid, $2::text, $3::text, 'queued', $4::jsonb, $5::int4, $6::text,
          $7::jsonb, $8::uuid, $9::int4,
          COALESCE($10::timestamptz, tidebase.now()) + make_interval(secs => $11::float8),
          $12::timestamptz, $13::jsonb, tidebase.now(), tidebase.now(), 1, $14::jsonb,
          $15::text, $16::text)
  ON CONFLICT (queue, dedupe_key)
    WHERE dedupe_key IS NOT NULL AND status IN ('queued', 'running', 'waiting')
    DO UPDATE SET dedupe_key = EXCLUDED.dedupe_key
  RETURNING r.id, (r.xmax = 0) AS inserted, r.queue, r.dedupe_key
)
SELECT id, inserted, queue, dedupe_key,
       CASE WHEN inserted THEN pg_notify('tidebase_wake', queue) END AS woken
FROM ins;

-- name: _insert_runs
-- The INSERT of enqueue_runs and enqueue_runs_plain (each adds its RETURNING). A JSON
-- key the client left out (NewRun omits its None fields) reads as NULL.
-- Event seq 1 (run.created) is not written: list_events derives it from the run row.
INSERT INTO tidebase.runs AS r
  (id, workflow, queue, status, input, priority, dedupe_key, metadata, parent_id,
   max_attempts, run_at, deadline_at, channels, created_at, updated_at, event_seq,
   trace_context, version, concurrency_key)
SELECT u.id, u.workflow, u.queue, 'queued', u.input, u.priority, u.dedupe_key,
       u.metadata, u.parent_id, u.max_attempts,
       COALESCE(u.run_at, tidebase.now()) + make_interval(secs => u.delay_s),
       u.deadline_at, u.channels, tidebase.now(), tidebase.now(), 1, u.trace_context,
       u.version, u.concurrency_key
FROM jsonb_to_recordset($1::jsonb)
     AS u(id uuid, workflow text, queue text, input jsonb, priority int4,
          dedupe_key text, metadata jsonb, parent_id uuid, max_attempts int4,
          run_at timestamptz, delay_s float8, deadline_at timestamptz, channels jsonb,
          trace_context jsonb, version text, concurrency_key text)

-- name: enqueued_runs
-- The runs among ids $1 that exist: after a connection loss left an enqueue's commit
-- unknown, these are the ones it inserted (run ids are made by the client).
SELECT id, queue, dedupe_key FROM tidebase.runs WHERE id = ANY($1::uuid[]);

-- name: _flow_insert
-- The INSERT of enqueue_debounced and enqueue_singleton: the run $1 (a JSON array of
-- one NewRun), its run_at the end of its debounce window (capped at max_wait) when it
-- has one, else as enqueue_runs computes it.
INSERT INTO tidebase.runs AS r
  (id, workflow, queue, status, input, priority, metadata, parent_id, max_attempts,
   run_at, deadline_at, channels, created_at, updated_at, event_seq, trace_context,
   version, debounce_key, debounce_deadline, singleton_key, concurrency_key)
SELECT u.id, u.workflow, u.queue, 'queued', u.input, u.priority, u.metadata, u.parent_id,
       u.max_attempts,
       CASE WHEN u.debounce_key IS NULL
            THEN COALESCE(u.run_at, tidebase.now()) + make_interval(secs => u.delay_s)
            ELSE LEAST(tidebase.now() + make_interval(secs => u.debounce_window_s),
                       tidebase.now() + make_interval(secs => u.debounce_max_wait_s)) END,
       u.deadline_at, u.channels, tidebase.now(), tidebase.now(), 1, u.trace_context,
       u.version, u.debounce_key,
       tidebase.now() + make_interval(secs => u.debounce_max_wait_s), u.singleton_key,
       u.concurrency_key
FROM jsonb_to_recordset($1::jsonb)
     AS u(id uuid, workflow text, queue text, input jsonb, priority int4, metadata jsonb,
          parent_id uuid, max_attempts int4, run_at timestamptz, delay_s float8,
          deadline_at timestamptz, channels jsonb, trace_context jsonb, version text,
          debounce_key text, debounce_window_s float8, debounce_max_wait_s float8,
          singleton_key text, concurrency_key text)

-- name: _flow_tail
-- Shared tail of enqueue_debounced and enqueue_singleton: wake the queue's workers in
-- the same transaction for a new run, or an upserted one that is due (capped at its
-- max_wait). An upsert that pushes run_at later needs no wake-up: an idle worker
-- sleeping until the old run_at finds nothing due then and sleeps until the new one
-- (a shorter window than before moves it earlier: found at the next poll at worst).
RETURNING r.id, (r.xmax = 0) AS inserted, r.queue, r.dedupe_key,
          r.run_at <= tidebase.now() AS due
), wake AS (
  SELECT count(pg_notify('tidebase_wake', q.queue)) AS sent
  FROM (SELECT DISTINCT queue FROM ins WHERE inserted OR due) AS q
)
SELECT id, inserted, queue, dedupe_key, due FROM ins, wake;

-- name: enqueue_debounced
-- The pending run of a debounce key ($1: one NewRun with debounce_key): inserted, or,
-- when the key's workflow has one (queued, never claimed: runs_debounce), that run
-- upserted in the same statement: its input replaced and its run_at pushed to the end
-- of the new window, never past its debounce_deadline (first enqueue + max_wait). A
-- claim that races the upsert either committed first (the run left the index: this
-- inserts a new pending run) or finds run_at moved past now and leaves the run queued
-- (its FOR UPDATE re-checks the updated row). (xmax = 0) tells an insert from an upsert.
WITH ins AS (
  /* include _flow_insert */
  ON CONFLICT (workflow, debounce_key)
    WHERE debounce_key IS NOT NULL AND status = 'queued' AND attempt = 0
    DO UPDATE SET input = EXCLUDED.input,
                  run_at = LEAST(EXCLUDED.run_at, r.debounce_deadline),
                  updated_at = tidebase.now()
  /* include _flow_tail */

-- name: enqueue_singleton
-- A run with a singleton key ($1: one NewRun with singleton_key), unless its workflow
-- has an active run of that key (runs_singleton): then that run is returned, locked
-- by the same statement as with dedupe keys (see enqueue_runs).
WITH ins AS (
  /* include _flow_insert */
  ON CONFLICT (workflow, singleton_key)
    WHERE singleton_key IS NOT NULL AND status IN ('queued', 'running', 'waiting')
    DO UPDATE SET singleton_key = EXCLUDED.singleton_key
  /* include _flow_tail */

-- name: current_xact
-- The id of the current transaction (assigning one; txid_current's 64-bit form): what
-- xact_status asks about when the connection is lost at COMMIT (_transaction_retrying).
SELECT txid_current();
-- name: xact_status
-- 'committed', 'aborted' or 'in progress' for transaction $1 (an id from current_xact);
-- NULL when it is too old to tell. An id this server has not reached yet (a promoted
-- standby that never received it) raises invalid_parameter_value.
SELECT txid_status($1);
-- name: lock_singleton
-- Serialises singleton replacements of one (workflow $1, key $2) for the rest of the
-- transaction (the two-int4 form, a class of its own: 1936289396 is "sing"). A
-- statement of its own, so the next statements' snapshots see what the previous
-- holder committed.
SELECT pg_advisory_xact_lock(1936289396, hashtext($1::text || E'\n' || $2::text));

-- name: active_singleton
SELECT id FROM tidebase.runs
WHERE workflow = $1 AND singleton_key = $2 AND status IN ('queued', 'running', 'waiting');

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
-- A claim commits without waiting for its WAL flush (synchronous_commit off for this
-- transaction; saves a disk flush on every wake-up). Safe because nothing durable
-- depends on a claim until the claimer writes: its first write (checkpoint,
-- completion, ...) commits synchronously, and flushing that WAL flushes the claim's
-- earlier WAL with it. A server crash can undo only claims nobody has acknowledged a
-- write under; their runs are queued again after recovery. Another worker's claim
-- then fences the old claimer out (lease_owner, attempt, status = 'running') like a
-- zombie. The same worker's claim comes back with the same (lease_owner, attempt):
-- the worker then lets the execution it still has go on and starts no second one
-- (Worker._not_held).
claimed AS (
  UPDATE tidebase.runs r
  SET status = 'running', lease_owner = $1, attempt = r.attempt + 1,
      lease_expires_at = tidebase.now() + make_interval(secs => $3::float8),
      started_at = COALESCE(r.started_at, tidebase.now()), updated_at = tidebase.now(),
      event_seq = r.event_seq + 1
  FROM picked WHERE r.id = picked.id
  RETURNING r.id, r.workflow, r.queue, r.input, r.state, r.attempt, r.released,
            r.max_attempts, r.deadline_at, r.step_count, r.event_seq, r.created_at,
            r.wake_seq, r.run_at, r.trace_context, r.version, r.concurrency_key
), ev AS (
  INSERT INTO tidebase.events (run_id, seq, type, at, data)
  SELECT id, event_seq, 'run.claimed', tidebase.now(),
         jsonb_build_object('worker', $1::text, 'attempt', attempt)
  FROM claimed
)
SELECT claimed.*, tidebase.now() AS db_now FROM claimed
WHERE set_config('synchronous_commit', 'off', true) IS NOT NULL;

-- name: claim_runs_one
-- Lease up to $4 due runs of queue $2 to worker $1 for $3 seconds: higher priority
-- first, FIFO within a priority. Not from a controlled queue (paused, capped or rate
-- limited: see claim_controlled), as the queues table says in this statement's snapshot.
-- Versioned runs only when their "workflow\x1fversion" is among the worker's $5 (see
-- _claimable_version).
WITH picked AS (
  SELECT id FROM tidebase.runs
  WHERE status = 'queued' AND queue = $2 AND run_at <= tidebase.now()
    AND /* include _claimable_version $5 */
    AND NOT EXISTS (SELECT 1 FROM tidebase.queues q WHERE q.name = $2 AND /* include _controlled */)
  ORDER BY priority DESC, run_at, id
  LIMIT $4
  FOR UPDATE SKIP LOCKED
), /* include _lease_picked */

-- name: claim_runs_many
-- As claim_runs_one, over several queues ($2 is an array), fairly: each queue's runs
-- are ranked in claim order (priority, then FIFO), and the batch takes them round
-- robin across the queues, so a queue with a backlog cannot starve the others. A queue
-- gives at most its share ($5); a worker whose claim came back short claims again.
-- Versioned runs only when their key is among the worker's $6 (_claimable_version).
WITH open_queues AS (
  SELECT u.name, u.ord FROM unnest($2::text[]) WITH ORDINALITY AS u(name, ord)
  WHERE NOT EXISTS (SELECT 1 FROM tidebase.queues q
                    WHERE q.name = u.name AND /* include _controlled */)
), candidates AS (
  SELECT c.id, c.rank, oq.ord
  FROM open_queues AS oq,
       LATERAL (
         SELECT l.id,
                row_number() OVER (ORDER BY l.priority DESC, l.run_at, l.id) AS rank
         FROM (SELECT id, priority, run_at FROM tidebase.runs
               WHERE status = 'queued' AND queue = oq.name AND run_at <= tidebase.now()
                 AND /* include _claimable_version $6 */
               ORDER BY priority DESC, run_at, id
               -- A fair share per queue ($5 = ceil($4 / queues)): rows locked here but
               -- not leased would be skipped by other claimers until this commits.
               LIMIT $5
               FOR UPDATE SKIP LOCKED) AS l
       ) AS c
), picked AS (
  -- Round robin: every queue's first, then every queue's second, ..., queues in the
  -- order given (the worker rotates it from claim to claim, so a one-run claim takes
  -- turns too).
  SELECT id FROM candidates ORDER BY rank, ord LIMIT $4
), /* include _lease_picked */

-- name: _controlled
(q.paused OR q.concurrency IS NOT NULL OR q.rate_per_minute IS NOT NULL
 OR q.per_key_concurrency IS NOT NULL OR q.per_key_rate_per_minute IS NOT NULL)

-- name: _claimable_version
-- A run a worker may claim: unversioned (any worker, as before versions existed), or
-- of a (workflow, version) the worker registers; its keys "workflow\x1fversion" are
-- the parameter named where it is included ($ARG). A filter on the heap row the claim
-- reads (and locks) anyway, so it costs the claim one comparison per row. A run of a version no live worker has stays
-- queued, and a claim skips it where it stands in the queue.
(version IS NULL OR (workflow || E'\x1f' || version) = ANY($ARG::text[]))

-- name: claim_controlled
-- The claim of a controlled queue, inside the transaction of Store.claim_controlled
-- that holds the queue's row lock and computed the allowance $4; versions as $5.
WITH picked AS (
  SELECT id FROM tidebase.runs
  WHERE status = 'queued' AND queue = $2 AND run_at <= tidebase.now()
    AND /* include _claimable_version $5 */
  ORDER BY priority DESC, run_at, id
  LIMIT $4
  FOR UPDATE SKIP LOCKED
), /* include _lease_picked */

-- name: lock_queue
-- The queue's controls, its row locked for the rest of the transaction: claimers of a
-- controlled queue take turns, and each counts the running runs afresh (a statement
-- of its own, so it sees every claim committed before the lock was granted).
SELECT concurrency, rate_per_minute, paused, tokens, refilled_at, tidebase.now() AS now,
       per_key_concurrency, per_key_rate_per_minute, key_cursor
FROM tidebase.queues WHERE name = $1 FOR UPDATE;

-- name: count_running
SELECT count(*) FROM tidebase.runs WHERE status = 'running' AND queue = $1;

-- name: spend_tokens
UPDATE tidebase.queues SET tokens = $2, refilled_at = $3 WHERE name = $1;

-- name: queued_keys
-- Up to $5 distinct keys of queue $1's queued runs after key $2, up to key $3 (NULL:
-- to the end), in key order, with each key's running runs (runs_running_keys) and its
-- rate bucket (NULL: none, a full bucket), leaving out keys with $4 (the per-key cap;
-- NULL: none) or more running. Keys come from a loose index scan of runs_queued_keys,
-- one probe per key however many runs each has; the recursion stops as soon as the
-- outer LIMIT is met. Run under the queue's row lock, in a statement of its own: the
-- counts see every claim committed before the lock was granted, so the caps are exact.
WITH RECURSIVE keys AS (
  (SELECT concurrency_key AS k FROM tidebase.runs
   WHERE status = 'queued' AND queue = $1 AND concurrency_key IS NOT NULL
     AND concurrency_key > $2
   ORDER BY concurrency_key LIMIT 1)
  UNION ALL
  SELECT (SELECT r.concurrency_key FROM tidebase.runs r
          WHERE r.status = 'queued' AND r.queue = $1 AND r.concurrency_key IS NOT NULL
            AND r.concurrency_key > keys.k
          ORDER BY r.concurrency_key LIMIT 1)
  FROM keys WHERE keys.k IS NOT NULL AND ($3::text IS NULL OR keys.k < $3)
)
-- Scalar subqueries, not joins: a join could be planned as a hash join that reads
-- every key before the LIMIT.
SELECT c.key, c.running,
       (SELECT b.tokens FROM tidebase.key_buckets b
        WHERE b.queue = $1 AND b.concurrency_key = c.key) AS tokens,
       (SELECT b.refilled_at FROM tidebase.key_buckets b
        WHERE b.queue = $1 AND b.concurrency_key = c.key) AS refilled_at
FROM (SELECT keys.k AS key,
             (SELECT count(*) FROM tidebase.runs r
              WHERE r.status = 'running' AND r.queue = $1 AND r.concurrency_key = keys.k)
               AS running
      FROM keys WHERE keys.k IS NOT NULL AND ($3::text IS NULL OR keys.k <= $3)) AS c
WHERE $4::int4 IS NULL OR c.running < $4
LIMIT $5;

-- name: queue_key_loads
-- The busiest concurrency keys of queue $1 (the dashboard's queue page): up to $4 keys
-- by running plus queued runs, most first. Bounded: the keys come from loose index
-- scans (one probe per key) of runs_queued_keys and runs_running_keys, at most $2 of
-- each; a key's running runs are read from runs_running_keys, its queued ones counted
-- up to $3 index entries. seen: the keys visited ($2 or more: maybe not all of them).
WITH RECURSIVE queued AS (
  (SELECT concurrency_key AS k FROM tidebase.runs
   WHERE status = 'queued' AND queue = $1 AND concurrency_key IS NOT NULL
   ORDER BY concurrency_key LIMIT 1)
  UNION ALL
  SELECT (SELECT r.concurrency_key FROM tidebase.runs r
          WHERE r.status = 'queued' AND r.queue = $1 AND r.concurrency_key IS NOT NULL
            AND r.concurrency_key > q.k
          ORDER BY r.concurrency_key LIMIT 1)
  FROM queued q WHERE q.k IS NOT NULL
), running AS (
  (SELECT concurrency_key AS k FROM tidebase.runs
   WHERE status = 'running' AND queue = $1 AND concurrency_key IS NOT NULL
   ORDER BY concurrency_key LIMIT 1)
  UNION ALL
  SELECT (SELECT r.concurrency_key FROM tidebase.runs r
          WHERE r.status = 'running' AND r.queue = $1 AND r.concurrency_key IS NOT NULL
            AND r.concurrency_key > q.k
          ORDER BY r.concurrency_key LIMIT 1)
  FROM running q WHERE q.k IS NOT NULL
), keys AS (
  (SELECT k FROM queued WHERE k IS NOT NULL LIMIT $2)
  UNION
  (SELECT k FROM running WHERE k IS NOT NULL LIMIT $2)
), loads AS MATERIALIZED (  -- each key counted once, not again for the rows returned
  SELECT keys.k AS key,
         (SELECT count(*) FROM tidebase.runs r
          WHERE r.status = 'running' AND r.queue = $1 AND r.concurrency_key = keys.k)
           AS running,
         (SELECT count(*) FROM (SELECT 1 FROM tidebase.runs r
                                WHERE r.status = 'queued' AND r.queue = $1
                                  AND r.concurrency_key = keys.k LIMIT $3) AS d)
           AS queued
  FROM keys
)
SELECT key, running, queued, count(*) OVER () AS seen
FROM loads
ORDER BY running + queued DESC, key
LIMIT $4;

-- name: queue_debounces
-- Up to $2 pending debounce runs of queue $1 (queued, never claimed: runs_debounce's
-- predicate, so that partial index holds every candidate), the soonest to start first.
SELECT id, workflow, debounce_key, run_at, debounce_deadline FROM tidebase.runs
WHERE debounce_key IS NOT NULL AND status = 'queued' AND attempt = 0 AND queue = $1
ORDER BY run_at, id
LIMIT $2;

-- name: queue_singletons
-- Up to $2 active singleton runs of queue $1 (runs_singleton's predicate: that partial
-- index holds every candidate), by workflow and key.
SELECT id, workflow, singleton_key, status FROM tidebase.runs
WHERE singleton_key IS NOT NULL AND status IN ('queued', 'running', 'waiting') AND queue = $1
ORDER BY workflow, singleton_key
LIMIT $2;

-- name: keys_held
-- Whether a key of queue $1 at its cap ($2 running runs) has a due queued run: a
-- keyed claim that came back short was then held back by the caps, not by a lack of
-- runs. O(running keyed runs), asked only after a short claim. next_s: seconds until
-- the queue's next delayed run is due (the worker then skips the queue's due times, so
-- this is when it tries again).
SELECT (SELECT EXTRACT(epoch FROM min(run_at) - tidebase.now())::float8
        FROM tidebase.runs
        WHERE status = 'queued' AND queue = $1 AND run_at > tidebase.now()
          AND run_at > '-infinity') AS next_s,
       EXISTS (
  SELECT 1
  FROM (SELECT concurrency_key AS k FROM tidebase.runs
        WHERE status = 'running' AND queue = $1 AND concurrency_key IS NOT NULL
        GROUP BY concurrency_key HAVING count(*) >= $2) AS f
  WHERE EXISTS (SELECT 1 FROM tidebase.runs r
                WHERE r.status = 'queued' AND r.queue = $1 AND r.concurrency_key = f.k
                  AND r.run_at <= tidebase.now())
) AS held;

-- name: spend_key_tokens
INSERT INTO tidebase.key_buckets AS b (queue, concurrency_key, tokens, refilled_at)
SELECT $1, u.key, u.tokens, u.at
FROM unnest($2::text[], $3::float8[], $4::timestamptz[]) AS u(key, tokens, at)
ON CONFLICT (queue, concurrency_key)
  DO UPDATE SET tokens = EXCLUDED.tokens, refilled_at = EXCLUDED.refilled_at;

-- name: claim_keyed
-- The claim of a queue with per-key caps, inside Store.claim_controlled's transaction
-- (queue row locked; running runs per key counted after the lock). $6/$7: the keys
-- this claim visits, in round-robin order, and how many runs each may start (its cap
-- minus its running runs, its tokens); $8: how many runs without a key it may take,
-- found among the queue's next $9 runs in claim order (runs without a key form one
-- more group, not capped per key). Each key's runs are ranked in claim order
-- (priority, then FIFO); the claim takes every key's first, then every key's second,
-- ... (keys in the order given), up to $4 in all: one hot key cannot starve the rest.
-- Versions as $5 (_claimable_version); $10: the last key visited (NULL: none).
WITH candidates AS (
  SELECT c.id, c.rank, k.ord
  FROM unnest($6::text[], $7::int4[]) WITH ORDINALITY AS k(key, allow, ord),
       LATERAL (
         SELECT l.id, row_number() OVER (ORDER BY l.priority DESC, l.run_at, l.id) AS rank
         FROM (SELECT id, priority, run_at FROM tidebase.runs
               WHERE status = 'queued' AND queue = $2 AND concurrency_key = k.key
                 AND run_at <= tidebase.now() AND /* include _claimable_version $5 */
               ORDER BY priority DESC, run_at, id
               LIMIT k.allow
               FOR UPDATE SKIP LOCKED) AS l
       ) AS c
  UNION ALL
  SELECT l.id, row_number() OVER (ORDER BY l.priority DESC, l.run_at, l.id), 0
  FROM (SELECT h.id, h.priority, h.run_at
        FROM (SELECT id, priority, run_at, concurrency_key FROM tidebase.runs
              WHERE status = 'queued' AND queue = $2 AND run_at <= tidebase.now()
              ORDER BY priority DESC, run_at, id
              LIMIT $9) AS h
        WHERE h.concurrency_key IS NULL
        ORDER BY h.priority DESC, h.run_at, h.id
        LIMIT $8) AS l0,
       LATERAL (SELECT id, priority, run_at FROM tidebase.runs r
                WHERE r.id = l0.id AND r.status = 'queued' AND /* include _claimable_version $5 */
                FOR UPDATE SKIP LOCKED) AS l
), picked AS (
  SELECT id, ord FROM candidates ORDER BY rank, ord LIMIT $4
), cursor AS (
  -- The round robin's place: after the last key served when the claim filled up
  -- before every visited key had a run, else after the last key visited ($10).
  UPDATE tidebase.queues
  SET key_cursor = (SELECT CASE WHEN count(*) >= $4 AND max(ord) > 0
                                THEN ($6::text[])[max(ord)] ELSE $10::text END
                    FROM picked)
  WHERE name = $2 AND $10::text IS NOT NULL
), /* include _lease_picked */

-- name: prune_key_buckets
-- Per-key buckets that have refilled (a missing row is a full bucket), or whose queue
-- has no per-key rate any more: up to $1 of them.
DELETE FROM tidebase.key_buckets b
WHERE (b.queue, b.concurrency_key) IN (
  SELECT kb.queue, kb.concurrency_key FROM tidebase.key_buckets kb
  LEFT JOIN tidebase.queues q ON q.name = kb.queue
  WHERE q.per_key_rate_per_minute IS NULL
     OR kb.refilled_at + make_interval(secs => (greatest(1.0, q.per_key_rate_per_minute / 60.0)
          - kb.tokens) * 60.0 / q.per_key_rate_per_minute) <= tidebase.now()
  LIMIT $1
);

-- name: configure_queue
-- Set the controls flagged in $2..$4, $8, $9 (a NULL value clears one); tell the workers.
WITH q AS (
  INSERT INTO tidebase.queues AS q (name, concurrency, rate_per_minute, paused, tokens,
                                    refilled_at, updated_at, per_key_concurrency,
                                    per_key_rate_per_minute)
  VALUES ($1, $5, $6, COALESCE($7, false), 0, NULL, tidebase.now(), $10, $11)
  ON CONFLICT (name) DO UPDATE SET
    concurrency = CASE WHEN $2 THEN EXCLUDED.concurrency ELSE q.concurrency END,
    rate_per_minute = CASE WHEN $3 THEN EXCLUDED.rate_per_minute ELSE q.rate_per_minute END,
    paused = CASE WHEN $4 THEN EXCLUDED.paused ELSE q.paused END,
    per_key_concurrency = CASE WHEN $8 THEN $10::int4 ELSE q.per_key_concurrency END,
    per_key_rate_per_minute = CASE WHEN $9 THEN $11::float8
                                   ELSE q.per_key_rate_per_minute END,
    updated_at = tidebase.now()
  RETURNING name, concurrency, rate_per_minute, paused, per_key_concurrency,
            per_key_rate_per_minute
)
SELECT q.*, pg_notify('tidebase_queues', q.name) IS NULL AS sent FROM q;

-- name: queue_controls
SELECT name, concurrency, rate_per_minute, paused, per_key_concurrency,
       per_key_rate_per_minute
FROM tidebase.queues WHERE name = ANY($1::text[]);

-- name: all_queue_controls
SELECT name, concurrency, rate_per_minute, paused, per_key_concurrency,
       per_key_rate_per_minute
FROM tidebase.queues ORDER BY name;

-- name: queue_counts
SELECT queue, status, count(*) AS n FROM tidebase.runs GROUP BY queue, status;

-- name: queue_depths
-- The metrics' queue gauges: for up to $1 queues that have queued runs, how many are
-- due (counted up to $2) and how long the oldest due one has waited. Bounded: the
-- queues are found by a loose index scan (one probe of runs_claimable per queue, not a
-- scan of the backlog) and each count reads at most $2 index entries.
WITH RECURSIVE queues AS (
  (SELECT queue FROM tidebase.runs WHERE status = 'queued' ORDER BY queue LIMIT 1)
  UNION ALL
  SELECT (SELECT r.queue FROM tidebase.runs r
          WHERE r.status = 'queued' AND r.queue > q.queue ORDER BY r.queue LIMIT 1)
  FROM queues q WHERE q.queue IS NOT NULL
)
SELECT q.queue,
       (SELECT count(*) FROM (SELECT 1 FROM tidebase.runs r
                              WHERE r.status = 'queued' AND r.queue = q.queue
                                AND r.run_at <= tidebase.now() LIMIT $2) AS d) AS depth,
       COALESCE(EXTRACT(epoch FROM tidebase.now() - (
         SELECT min(r.run_at) FROM tidebase.runs r
         WHERE r.status = 'queued' AND r.queue = q.queue AND r.run_at <= tidebase.now()
       )), 0)::float8 AS oldest_s
FROM queues q WHERE q.queue IS NOT NULL
LIMIT $1;

-- name: start_inline_run
-- Create a run that this process executes in place, already leased to $2.
-- No row when a run with id $1 exists already (a concurrent tide.run with the same
-- run_id won): the caller then waits for that run instead. Its events: seq 1
-- (run.created) is derived by list_events, seq 2 (run.claimed) is stored here.
WITH ins AS (
  INSERT INTO tidebase.runs
    (id, workflow, queue, status, input, priority, metadata, max_attempts, run_at,
     lease_owner, lease_expires_at, attempt, inline, created_at, started_at, updated_at,
     event_seq, channels, recovery_webhook, trace_context, version)
  VALUES ($1, $3, $4, 'running', $5, 0, $6, $7, tidebase.now(), $2,
          tidebase.now() + make_interval(secs => $8::float8), 1, true,
          tidebase.now(), tidebase.now(), tidebase.now(), 2, $9, $10, $11::jsonb, $12)
  ON CONFLICT (id) DO NOTHING
  RETURNING id, workflow, queue, input, state, attempt, released, max_attempts,
            deadline_at, step_count, event_seq, created_at, wake_seq, run_at, trace_context,
            version
), ev AS (
  INSERT INTO tidebase.events (run_id, seq, type, at, data)
  SELECT id, 2, 'run.claimed', tidebase.now(),
         jsonb_build_object('worker', $2::text, 'attempt', 1, 'inline', true)
  FROM ins
)
SELECT ins.*, tidebase.now() AS db_now FROM ins;

-- name: claim_run_by_id
-- Lease one specific queued run (inline resume of an existing run), unless it is of a
-- version not among $4 (then a worker that has the version executes it).
WITH picked AS (
  SELECT id FROM tidebase.runs WHERE id = $2 AND status = 'queued'
    AND /* include _claimable_version $4 */
  FOR UPDATE SKIP LOCKED
), /* include _lease_picked */

-- name: load_steps
-- The whole history of the claimed runs, in one query.
SELECT s.run_id, s.position, s.name, s.status, s.run_attempt, s.output, s.error,
       s.replay_failure, s.kind, v.state AS state_after
FROM tidebase.steps s
LEFT JOIN tidebase.state_versions v
  ON s.wrote_state AND v.run_id = s.run_id AND v.version = s.state_version
WHERE s.run_id = ANY($1::uuid[])
ORDER BY s.run_id, s.position;

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
                       $11::jsonb[], $12::text[], $13::text[], $14::bool[])
    AS c(run_id, attempt, position, name, status, attempts, output, error, started_at,
         event_data, kind, event_type, wrote_state)
), locked AS (
  -- Lock the fenced rows in id order, through the primary key: every multi-row writer
  -- of runs locks in that order, so two batches cannot deadlock. By id = ANY, as in
  -- complete_runs (a generic plan of a join with c may hash all of runs); the
  -- attempt is fenced by the UPDATE.
  SELECT r.id FROM tidebase.runs r
  WHERE r.id = ANY($2::uuid[]) AND r.lease_owner = $1 AND r.status = 'running'
  ORDER BY r.id
  FOR NO KEY UPDATE OF r
), r AS (
  UPDATE tidebase.runs r
  SET event_seq = r.event_seq + 1, step_count = GREATEST(r.step_count, c.position + 1),
      updated_at = tidebase.now()
  FROM c, locked
  WHERE r.id = c.run_id AND r.id = locked.id AND r.lease_owner = $1
    AND r.attempt = c.attempt AND r.status = 'running'
  RETURNING r.id, r.event_seq, r.state_version
), s AS (
  INSERT INTO tidebase.steps AS st
    (run_id, position, name, status, attempts, run_attempt, output, error,
     started_at, finished_at, kind, state_version, wrote_state)
  SELECT c.run_id, c.position, c.name, c.status, c.attempts, c.attempt, c.output, c.error,
         c.started_at, tidebase.now(), c.kind, r.state_version, c.wrote_state
  FROM r JOIN c ON c.run_id = r.id
  ON CONFLICT (run_id, position) DO UPDATE
    SET name = EXCLUDED.name, status = EXCLUDED.status, attempts = EXCLUDED.attempts,
        kind = EXCLUDED.kind, state_version = EXCLUDED.state_version,
        wrote_state = EXCLUDED.wrote_state,
        run_attempt = EXCLUDED.run_attempt, output = EXCLUDED.output,
        error = EXCLUDED.error, started_at = EXCLUDED.started_at,
        finished_at = EXCLUDED.finished_at, replay_failure = true
    WHERE st.status <> 'completed'
), e AS (
  INSERT INTO tidebase.events (run_id, seq, type, at, data)
  SELECT r.id, r.event_seq, c.event_type, tidebase.now(), c.event_data
  FROM r JOIN c ON c.run_id = r.id
)
SELECT id FROM r;

-- name: step_outcome
SELECT status, run_attempt FROM tidebase.steps WHERE run_id = $1 AND position = $2;

-- name: set_state
-- Replace the state of the claim's run ($4), appending version state_version + 1 (the
-- entry reached: $6) and a state.updated event ($5).
WITH r AS (
  UPDATE tidebase.runs
  SET state = $4, event_seq = event_seq + 1, state_version = state_version + 1,
      updated_at = tidebase.now()
  WHERE id = $1 AND lease_owner = $2 AND attempt = $3 AND status = 'running'
  RETURNING id, event_seq, state_version
), v AS (
  INSERT INTO tidebase.state_versions (run_id, version, state, step, at)
  SELECT id, state_version, $4, $6, tidebase.now() FROM r
), e AS (
  INSERT INTO tidebase.events (run_id, seq, type, at, data)
  SELECT id, event_seq, 'state.updated', tidebase.now(), $5 FROM r
)
SELECT event_seq, state_version FROM r;

-- name: label_state
-- Label the latest state version of the claim's run; no row when it has none.
UPDATE tidebase.state_versions v SET label = $4
FROM tidebase.runs r
WHERE r.id = $1 AND r.lease_owner = $2 AND r.attempt = $3 AND r.status = 'running'
  AND v.run_id = r.id AND v.version = r.state_version
RETURNING v.version;

-- name: state_history
SELECT version, state, step, label, at FROM tidebase.state_versions
WHERE run_id = $1 ORDER BY version;

-- name: state_at
SELECT state FROM tidebase.state_versions WHERE run_id = $1 AND version = $2;

-- name: record_usage
-- A usage record of the claim's run, once: a replay recording it again (same entry
-- $4, same order $5) adds nothing.
WITH fence AS (
  SELECT workflow FROM tidebase.runs
  WHERE id = $1 AND lease_owner = $2 AND attempt = $3 AND status = 'running'
), ins AS (
  INSERT INTO tidebase.usage
    (run_id, position, seq, step, workflow, kind, provider, model, input_tokens,
     output_tokens, cost_usd, metadata, recorded_at)
  SELECT $1, $4, $5, $6, fence.workflow, $7, $8, $9, $10, $11, $12, $13, tidebase.now()
  FROM fence
  ON CONFLICT (run_id, position, seq) DO NOTHING
  RETURNING 1
)
SELECT (SELECT count(*) FROM fence) AS fenced, (SELECT count(*) FROM ins) AS recorded;

-- name: run_usage
SELECT count(*) AS records, COALESCE(sum(input_tokens), 0)::bigint AS input_tokens,
       COALESCE(sum(output_tokens), 0)::bigint AS output_tokens,
       COALESCE(sum(cost_usd), 0)::float8 AS cost_usd
FROM tidebase.usage WHERE run_id = $1;

-- name: usage_summary
-- Usage recorded in [$2, $3) (NULL: open), of workflow $1 (NULL: all), grouped by the
-- dimensions the bitmask $4 leaves at 0 (GROUPING order: workflow, model, provider,
-- kind; a 1 bit folds that dimension away).
SELECT workflow, model, provider, kind, count(*) AS records,
       count(DISTINCT run_id) AS runs, sum(input_tokens)::bigint AS input_tokens,
       sum(output_tokens)::bigint AS output_tokens, sum(cost_usd)::float8 AS cost_usd
FROM tidebase.usage
WHERE ($1::text IS NULL OR workflow = $1)
  AND ($2::timestamptz IS NULL OR recorded_at >= $2)
  AND ($3::timestamptz IS NULL OR recorded_at < $3)
GROUP BY CUBE (workflow, model, provider, kind)
HAVING GROUPING(workflow, model, provider, kind) = $4
ORDER BY workflow NULLS FIRST, model NULLS FIRST, provider NULLS FIRST, kind NULLS FIRST
LIMIT $5 OFFSET $6;

-- name: complete_runs
-- Complete several runs in one statement, each fenced on its own claim. Returns the
-- run ids whose fence held.
WITH c AS (
  SELECT * FROM unnest($2::uuid[], $3::int4[], $4::jsonb[]) AS c(id, attempt, output)
), locked AS (
  -- In id order, as in checkpoint_steps. By id = ANY (a primary-key probe per id in
  -- any plan): as a join with c, a generic plan (the plan cache's choice after five
  -- executions) could hash all of runs, about 10x slower at concurrency 128 and
  -- bimodal from one process to the next. The attempt is fenced by the UPDATE.
  SELECT r.id FROM tidebase.runs r
  WHERE r.id = ANY($2::uuid[]) AND r.lease_owner = $1 AND r.status = 'running'
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
  RETURNING r.id, r.queue, r.status, r.attempt, r.event_seq, expired.old_owner,
            r.workflow, r.recovery_webhook
), rec AS (
  -- An inline run with a recovery webhook: ask its app to resume it ($2: attempts).
  INSERT INTO tidebase.outbox
    (id, run_id, url, event, payload, max_attempts, next_attempt_at, created_at)
  SELECT gen_random_uuid(), id, recovery_webhook, 'run.resume',
         jsonb_build_object('type', 'run.resume', 'run_id', id, 'workflow', workflow,
                            'reason', 'lease_expired', 'attempt', attempt),
         $2, tidebase.now(), tidebase.now()
  FROM r WHERE status = 'queued' AND recovery_webhook IS NOT NULL
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
-- with their steps and events, their other rows (ON DELETE CASCADE); their children and
-- forks keep their rows, without the reference. The steps, events and references are
-- handled here: those have no foreign key (migration 0016). A child or fork pruned in
-- the same batch is only deleted (one statement may not update and delete a row).
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
), doomed_steps AS (
  DELETE FROM tidebase.steps s USING doomed WHERE s.run_id = doomed.id
), doomed_events AS (
  DELETE FROM tidebase.events e USING doomed WHERE e.run_id = doomed.id
), orphans AS (
  UPDATE tidebase.runs c SET parent_id = NULL
  FROM doomed
  WHERE c.parent_id = doomed.id AND c.id NOT IN (SELECT id FROM doomed)
), unforked AS (
  UPDATE tidebase.runs f SET forked_from = NULL
  FROM doomed
  WHERE f.forked_from = doomed.id AND f.id NOT IN (SELECT id FROM doomed)
)
DELETE FROM tidebase.runs r USING doomed WHERE r.id = doomed.id;

-- name: cancel_runs
-- Cancel runs $1 and all their active descendants, whatever their status. Queued and
-- waiting runs stop at once. A running run loses its lease here: every write of its
-- worker is fenced on status = 'running' and is refused from now on, and the worker is
-- told through NOTIFY (ids of runs that were running) to stop executing it; its
-- heartbeat notices too, should the notification be lost. Pending gates of the
-- cancelled runs close. Terminal runs are left alone (terminal statuses are absorbing).
-- Rows are locked in id order, as every multi-row writer does.
WITH locked AS (
  SELECT r.id, r.status AS old_status FROM tidebase.runs r
  WHERE r.status IN ('queued', 'running', 'waiting')
    AND r.id IN (
      WITH RECURSIVE tree AS (
        SELECT id FROM tidebase.runs
        WHERE id = ANY($1::uuid[]) AND status IN ('queued', 'running', 'waiting')
        UNION
        SELECT c.id FROM tidebase.runs c JOIN tree ON c.parent_id = tree.id
        WHERE c.status IN ('queued', 'running', 'waiting')
      )
      SELECT id FROM tree)
  ORDER BY r.id
  FOR NO KEY UPDATE OF r
), r AS (
  UPDATE tidebase.runs r
  SET status = 'cancelled',
      cancel_reason = CASE WHEN r.id = ANY($1::uuid[]) THEN $2::text
                           ELSE 'parent cancelled' END,
      cancel_actor = $3, lease_owner = NULL, lease_expires_at = NULL, wake_at = NULL,
      finished_at = tidebase.now(), updated_at = tidebase.now(),
      event_seq = r.event_seq + 1
  FROM locked
  WHERE r.id = locked.id AND r.status IN ('queued', 'running', 'waiting')
  RETURNING r.id, r.event_seq, r.queue, r.cancel_reason, locked.old_status
), g AS (
  UPDATE tidebase.gates g
  SET status = 'cancelled', decision = 'cancelled', resolved_at = tidebase.now(),
      token_hash = NULL
  FROM r WHERE g.run_id = r.id AND g.status = 'pending'
), e AS (
  INSERT INTO tidebase.events (run_id, seq, type, at, data)
  SELECT id, event_seq, 'run.cancelled', tidebase.now(),
         jsonb_build_object('reason', cancel_reason, 'actor', $3::text,
                            'was', old_status)
  FROM r
), n AS (
  -- At most 200 ids (37 bytes each) per notification: payloads must stay under 8000.
  SELECT count(pg_notify('tidebase_cancel', b.ids)) AS sent
  FROM (SELECT string_agg(id::text, ',') AS ids
        FROM (SELECT id, row_number() OVER () AS n FROM r WHERE old_status = 'running') x
        GROUP BY (x.n - 1) / 200) AS b
)
SELECT r.id, r.queue, r.old_status FROM r, n;

-- name: cancelled_among
-- Which of these runs were cancelled (a worker's fallback for a lost notification).
SELECT id FROM tidebase.runs WHERE id = ANY($1::uuid[]) AND status = 'cancelled';

-- name: overdue_runs
-- Active runs past their deadline, oldest deadline first.
SELECT id FROM tidebase.runs
WHERE deadline_at <= tidebase.now() AND status IN ('queued', 'running', 'waiting')
ORDER BY deadline_at
LIMIT $1;

-- name: suspend_run
-- The run waits (gate, sleep, child): hand the claim back without spending an attempt
-- and park the run as 'waiting', to wake by itself at $5 (NULL: only when woken).
-- Fenced on the claim and on wake_seq as read at claim time ($4): if anything that may
-- end a wait happened since, nothing is written and the caller hands the run back to
-- replay instead (see 0002_workflow_control.sql).
WITH r AS (
  UPDATE tidebase.runs
  SET status = 'waiting', lease_owner = NULL, lease_expires_at = NULL,
      released = released + 1, wake_at = $5, updated_at = tidebase.now(),
      event_seq = event_seq + 1
  WHERE id = $1 AND lease_owner = $2 AND attempt = $3 AND status = 'running'
    AND wake_seq = $4
  RETURNING id, event_seq
), e AS (
  INSERT INTO tidebase.events (run_id, seq, type, at, data)
  SELECT id, event_seq, 'run.waiting', tidebase.now(), $6 FROM r
)
SELECT count(*) FROM r;

-- name: wake_due
-- Reconciler: waiting runs whose timer is due (sleep over, gate expired) go back to
-- their queue. Bounded and oldest first.
WITH due AS (
  SELECT id FROM tidebase.runs
  WHERE status = 'waiting' AND wake_at <= tidebase.now()
  ORDER BY wake_at
  LIMIT $1
  FOR UPDATE SKIP LOCKED
), r AS (
  UPDATE tidebase.runs r
  SET status = 'queued', run_at = tidebase.now(), wake_at = NULL,
      wake_seq = r.wake_seq + 1, updated_at = tidebase.now(), event_seq = r.event_seq + 1
  FROM due WHERE r.id = due.id AND r.status = 'waiting'
  RETURNING r.id, r.queue, r.event_seq
), e AS (
  INSERT INTO tidebase.events (run_id, seq, type, at, data)
  SELECT id, event_seq, 'run.resumed', tidebase.now(), '{"reason": "timer"}'::jsonb FROM r
)
SELECT id, queue FROM r;

-- name: next_wake
-- Seconds until the earliest timer of a waiting run is due.
SELECT EXTRACT(EPOCH FROM min(wake_at) - tidebase.now())::float8
FROM tidebase.runs WHERE status = 'waiting' AND wake_at IS NOT NULL;

-- name: _wake_set
-- The SET list that wakes run r (alias r): bump wake_seq and, if it is waiting, move it
-- back to its queue, due now (wake_run, and delivering an event to its waiters).
wake_seq = r.wake_seq + 1,
      status = CASE WHEN r.status = 'waiting' THEN 'queued' ELSE r.status END,
      run_at = CASE WHEN r.status = 'waiting' THEN tidebase.now() ELSE r.run_at END,
      wake_at = CASE WHEN r.status = 'waiting' THEN NULL ELSE r.wake_at END,
      updated_at = tidebase.now(), event_seq = r.event_seq + 1

-- name: wake_run
-- Something run $1 may wait for happened ($2 event type, $3 its data): bump wake_seq
-- and, if the run is waiting, move it back to its queue. Returns the queue and the
-- status before; no row when the run is not active.
WITH before AS (
  SELECT id, status FROM tidebase.runs WHERE id = $1 FOR NO KEY UPDATE
), r AS (
  UPDATE tidebase.runs r
  SET /* include _wake_set */
  FROM before
  WHERE r.id = before.id AND r.status IN ('queued', 'running', 'waiting')
  RETURNING r.id, r.queue, r.event_seq, before.status AS before_status
), e AS (
  INSERT INTO tidebase.events (run_id, seq, type, at, data)
  SELECT id, event_seq, $2, tidebase.now(),
         $3::jsonb || jsonb_build_object('resumed', before_status = 'waiting')
  FROM r
)
SELECT queue, before_status FROM r;

-- name: lock_claim
-- Lock the row of claim ($1, worker $2, attempt $3) for the rest of the transaction.
SELECT 1 FROM tidebase.runs
WHERE id = $1 AND lease_owner = $2 AND attempt = $3 AND status = 'running'
FOR NO KEY UPDATE;

-- name: append_event
-- Append event $4 (data $5) to the run of claim ($1, worker $2, attempt $3).
WITH r AS (
  UPDATE tidebase.runs SET event_seq = event_seq + 1, updated_at = tidebase.now()
  WHERE id = $1 AND lease_owner = $2 AND attempt = $3 AND status = 'running'
  RETURNING id, event_seq
)
INSERT INTO tidebase.events (run_id, seq, type, at, data)
SELECT id, event_seq, $4, tidebase.now(), $5 FROM r
RETURNING seq;

-- name: open_gate
-- Record gate $4 of the run of claim ($1, $2, $3) as pending, once: a gate that exists
-- already (an earlier attempt reached it) stays as it is. A new gate with channels
-- ($7, a JSON array of URLs) gets the hash of a resolve token ($9) and, per channel, a
-- gate.created delivery whose payload ($10, JSON) carries the token itself. Returns
-- whether the fence held and whether the gate is new.
WITH fence AS (
  SELECT id FROM tidebase.runs
  WHERE id = $1 AND lease_owner = $2 AND attempt = $3 AND status = 'running'
  FOR NO KEY UPDATE
), ins AS (
  INSERT INTO tidebase.gates
    (run_id, name, status, prompt, data, channels, token_hash, created_at, expires_at)
  SELECT id, $4, 'pending', $5, $6, $7, $9, tidebase.now(),
         tidebase.now() + make_interval(secs => $8::float8)
  FROM fence
  ON CONFLICT (run_id, name) DO NOTHING
  RETURNING run_id, expires_at
), r AS (
  UPDATE tidebase.runs r SET event_seq = r.event_seq + 1, updated_at = tidebase.now()
  FROM ins WHERE r.id = ins.run_id
  RETURNING r.id, r.event_seq, ins.expires_at
), e AS (
  INSERT INTO tidebase.events (run_id, seq, type, at, data)
  SELECT id, event_seq, 'gate.created', tidebase.now(),
         jsonb_build_object('name', $4::text, 'prompt', $5::text, 'expires_at', expires_at)
  FROM r
), d AS (
  INSERT INTO tidebase.outbox (id, run_id, url, event, payload, next_attempt_at, created_at)
  SELECT gen_random_uuid(), ins.run_id, c.url, 'gate.created',
         $10::jsonb || jsonb_build_object('expires_at', ins.expires_at),
         tidebase.now(), tidebase.now()
  FROM ins, jsonb_array_elements_text(COALESCE($7::jsonb, '[]'::jsonb)) AS c(url)
)
SELECT (SELECT count(*) FROM fence) AS fenced, (SELECT count(*) FROM ins) AS created;

-- name: get_gate
SELECT run_id, name, status, prompt, data, channels, decision, actor, payload, created_at,
       resolved_at, expires_at, COALESCE(expires_at <= tidebase.now(), false) AS due
FROM tidebase.gates WHERE run_id = $1 AND name = $2;

-- name: expire_gate
-- The gate's time ran out: expire it, unless a resolution won the race. Run inside the
-- transaction of Store.expire_gate, which locked the run row of the claim first (the
-- order resolutions take too: run, then gate).
WITH g AS (
  UPDATE tidebase.gates
  SET status = 'expired', decision = 'expired', resolved_at = tidebase.now(),
      token_hash = NULL
  WHERE run_id = $1 AND name = $2 AND status = 'pending' AND expires_at <= tidebase.now()
  RETURNING run_id
), r AS (
  UPDATE tidebase.runs r SET event_seq = r.event_seq + 1, updated_at = tidebase.now()
  FROM g WHERE r.id = g.run_id
  RETURNING r.id, r.event_seq
), e AS (
  INSERT INTO tidebase.events (run_id, seq, type, at, data)
  SELECT id, event_seq, 'gate.expired', tidebase.now(), jsonb_build_object('name', $2::text)
  FROM r
)
SELECT count(*) FROM g;

-- name: wake_if_due
-- An inline run (tide.run) waiting in its caller: back to queued once its timer is due.
UPDATE tidebase.runs
SET status = 'queued', run_at = tidebase.now(), wake_at = NULL, wake_seq = wake_seq + 1,
    updated_at = tidebase.now()
WHERE id = $1 AND status = 'waiting' AND wake_at <= tidebase.now()
RETURNING id;

-- name: waiting_state
SELECT status, EXTRACT(EPOCH FROM wake_at - tidebase.now())::float8 AS wake_in
FROM tidebase.runs WHERE id = $1;

-- name: active_children
SELECT id FROM tidebase.runs
WHERE parent_id = ANY($1::uuid[]) AND status IN ('queued', 'running', 'waiting');

-- name: lock_run
-- For the rest of the transaction: the run's status and queue, its row locked.
SELECT status, queue FROM tidebase.runs WHERE id = $1 FOR NO KEY UPDATE;

-- name: lock_gate
SELECT status, token_hash, channels, COALESCE(expires_at <= tidebase.now(), false) AS due
FROM tidebase.gates WHERE run_id = $1 AND name = $2 FOR UPDATE;

-- name: gate_deliveries
-- One delivery of event $3 (payload $5) per URL of $4 (a JSON array), for run $1.
INSERT INTO tidebase.outbox (id, run_id, url, event, payload, next_attempt_at, created_at)
SELECT gen_random_uuid(), $1, c.url, $3, $5::jsonb, tidebase.now(), tidebase.now()
FROM jsonb_array_elements_text($4::jsonb) AS c(url)
WHERE $2::boolean;

-- name: close_gate
-- Decide a pending gate: exactly once, as the condition on status makes every later
-- attempt find nothing. The token is single-use: it goes with the decision.
UPDATE tidebase.gates
SET status = $3, decision = $4, actor = $5, payload = $6, resolved_at = tidebase.now(),
    token_hash = NULL
WHERE run_id = $1 AND name = $2 AND status = 'pending'
RETURNING resolved_at;

-- name: set_gate_token
UPDATE tidebase.gates SET token_hash = $3
WHERE run_id = $1 AND name = $2 AND status = 'pending'
RETURNING 1;

-- name: list_gates
-- Keyset pagination in creation order. NULL filters match everything.
SELECT run_id, name, status, prompt, data, decision, actor, payload, created_at,
       resolved_at, expires_at
FROM tidebase.gates
WHERE ($1::text IS NULL OR status = $1)
  AND ($2::uuid IS NULL OR run_id = $2)
  AND ($3::timestamptz IS NULL OR (created_at, run_id, name) > ($3, $4::uuid, $5::text))
ORDER BY created_at, run_id, name
LIMIT $6;

-- name: insert_children
-- Child runs ($1: a JSON array of NewRun objects with fixed ids), each created once:
-- an id that exists already (an earlier attempt of the parent created it) is skipped.
WITH ins AS (
  INSERT INTO tidebase.runs
    (id, workflow, queue, status, input, priority, metadata, parent_id, max_attempts,
     run_at, deadline_at, created_at, updated_at, event_seq, trace_context, version)
  SELECT u.id, u.workflow, u.queue, 'queued', u.input, u.priority, u.metadata,
         u.parent_id, u.max_attempts, tidebase.now(), u.deadline_at, tidebase.now(),
         tidebase.now(), 1, u.trace_context, u.version
  FROM jsonb_to_recordset($1::jsonb)
       AS u(id uuid, workflow text, queue text, input jsonb, priority int4,
            metadata jsonb, parent_id uuid, max_attempts int4, deadline_at timestamptz,
            trace_context jsonb, version text)
  ON CONFLICT (id) DO NOTHING
  RETURNING id, queue
)
SELECT id, queue FROM ins;

-- name: children_status
SELECT id, workflow, status, output, error, cancel_reason
FROM tidebase.runs WHERE id = ANY($1::uuid[]);

-- name: retry_run
-- failed -> queued with a fresh budget of attempts; checkpoints are kept, so the run
-- resumes after its last completed step. attempt stays monotonic (it is a fence token).
WITH r AS (
  UPDATE tidebase.runs
  SET status = 'queued', max_attempts = attempt - released + $2, run_at = tidebase.now(),
      finished_at = NULL, updated_at = tidebase.now(), event_seq = event_seq + 1
  WHERE id = $1 AND status = 'failed'
  RETURNING id, event_seq, queue
), kids AS (
  -- Its failed children too: a parent that failed with ChildFailed would fail again.
  UPDATE tidebase.runs c
  SET status = 'queued', max_attempts = c.attempt - c.released + $2,
      run_at = tidebase.now(), finished_at = NULL, updated_at = tidebase.now(),
      event_seq = c.event_seq + 1
  FROM r WHERE c.parent_id = r.id AND c.status = 'failed'
  RETURNING c.id, c.event_seq, c.queue
), e AS (
  INSERT INTO tidebase.events (run_id, seq, type, at, data)
  SELECT id, event_seq, 'run.retried', tidebase.now(), NULL FROM r
  UNION ALL
  SELECT id, event_seq, 'run.retried', tidebase.now(), '{"reason": "parent retried"}'::jsonb
  FROM kids
)
SELECT queue, true AS root FROM r
UNION ALL
SELECT queue, false FROM kids;

-- name: get_run
SELECT id, workflow, queue, status, input, output, error, state, attempt, max_attempts,
       priority, dedupe_key, metadata, parent_id, created_at, started_at, finished_at,
       deadline_at, run_at, cancel_reason, lease_owner, lease_expires_at, inline, wake_at,
       cancel_actor, forked_from, forked_at, version, concurrency_key, debounce_key,
       singleton_key
FROM tidebase.runs WHERE id = $1;

-- name: get_run_status
SELECT status, output, error, cancel_reason, workflow FROM tidebase.runs WHERE id = $1;

-- name: seconds_until_due
SELECT EXTRACT(EPOCH FROM run_at - tidebase.now())::float8 FROM tidebase.runs WHERE id = $1;

-- name: get_steps
-- With the usage recorded inside each entry (keyed by its position; 0 records: none).
SELECT s.name, s.status, s.attempts, s.output, s.error, s.started_at, s.finished_at, s.kind,
       u.usage_records, u.input_tokens, u.output_tokens, u.cost_usd
FROM tidebase.steps s
CROSS JOIN LATERAL (
  SELECT count(*) AS usage_records, COALESCE(sum(input_tokens), 0)::bigint AS input_tokens,
         COALESCE(sum(output_tokens), 0)::bigint AS output_tokens,
         COALESCE(sum(cost_usd), 0)::float8 AS cost_usd
  FROM tidebase.usage WHERE run_id = s.run_id AND position = s.position
) u
WHERE s.run_id = $1 ORDER BY s.position;

-- name: get_run_gates
SELECT run_id, name, status, prompt, data, decision, actor, payload, created_at,
       resolved_at, expires_at
FROM tidebase.gates WHERE run_id = $1 ORDER BY created_at, name;

-- name: get_children
SELECT id, workflow, status, created_at, finished_at
FROM tidebase.runs WHERE parent_id = $1 ORDER BY created_at, id;

-- name: list_runs
-- Keyset pagination, newest first. NULL filters match everything.
SELECT id, workflow, queue, status, attempt, priority, created_at, started_at, finished_at,
       version, concurrency_key
FROM tidebase.runs
WHERE ($1::text IS NULL OR status = $1)
  AND ($2::text IS NULL OR workflow = $2)
  AND ($3::text IS NULL OR queue = $3)
  AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5::uuid))
  AND ($7::text IS NULL OR dedupe_key = $7)
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
-- When the earliest queued run of these queues that this worker may claim (versions
-- $2, see _claimable_version) becomes claimable.
SELECT min(n.run_at) - tidebase.now()
FROM unnest($1::text[]) AS q(queue),
     LATERAL (SELECT run_at FROM tidebase.runs
              WHERE status = 'queued' AND queue = q.queue AND run_at > '-infinity'
                AND /* include _claimable_version $2 */
              ORDER BY run_at LIMIT 1) AS n;

-- name: run_exists
SELECT status FROM tidebase.runs WHERE id = $1;

-- name: db_now
SELECT tidebase.now();

-- name: upsert_schedule
-- Create or replace schedule $1. next_fire_at and anchor_at ($13, $14) are kept when
-- the timing (cron, every, timezone) is unchanged and the schedule stays enabled, so
-- re-registering it (every worker start does) neither skips nor repeats a tick. $16:
-- an existing schedule keeps its enabled flag (code schedules: a pause survives).
INSERT INTO tidebase.schedules AS s
  (name, workflow, input, queue, priority, cron, every_s, timezone, enabled, catchup,
   catchup_limit, overlap, anchor_at, next_fire_at, source, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
        tidebase.now(), tidebase.now())
ON CONFLICT (name) DO UPDATE SET
  workflow = EXCLUDED.workflow, input = EXCLUDED.input, queue = EXCLUDED.queue,
  priority = EXCLUDED.priority, cron = EXCLUDED.cron, every_s = EXCLUDED.every_s,
  timezone = EXCLUDED.timezone,
  enabled = CASE WHEN $16 THEN s.enabled ELSE EXCLUDED.enabled END,
  catchup = EXCLUDED.catchup,
  catchup_limit = EXCLUDED.catchup_limit, overlap = EXCLUDED.overlap,
  source = EXCLUDED.source, updated_at = tidebase.now(),
  anchor_at = CASE WHEN s.enabled AND (s.cron, s.every_s, s.timezone)
                        IS NOT DISTINCT FROM (EXCLUDED.cron, EXCLUDED.every_s, EXCLUDED.timezone)
                   THEN s.anchor_at ELSE EXCLUDED.anchor_at END,
  next_fire_at = CASE WHEN s.enabled AND (s.cron, s.every_s, s.timezone)
                           IS NOT DISTINCT FROM (EXCLUDED.cron, EXCLUDED.every_s, EXCLUDED.timezone)
                      THEN s.next_fire_at ELSE EXCLUDED.next_fire_at END
RETURNING *;

-- name: get_schedule
SELECT * FROM tidebase.schedules WHERE name = $1;

-- name: list_schedules
SELECT * FROM tidebase.schedules ORDER BY name;

-- name: delete_schedule
DELETE FROM tidebase.schedules WHERE name = $1 RETURNING name;

-- name: delete_code_schedules
-- Schedules registered from code for these workflows ($1) that the code no longer
-- declares ($2: the names it does).
DELETE FROM tidebase.schedules
WHERE source = 'code' AND workflow = ANY($1::text[]) AND NOT (name = ANY($2::text[]))
RETURNING name;

-- name: pause_schedule
UPDATE tidebase.schedules SET enabled = false, updated_at = tidebase.now()
WHERE name = $1 RETURNING *;

-- name: resume_schedule
-- Ticks missed while paused are not caught up: the next one is computed from now ($2).
UPDATE tidebase.schedules
SET enabled = true, next_fire_at = CASE WHEN enabled THEN next_fire_at ELSE $2 END,
    anchor_at = CASE WHEN enabled THEN anchor_at ELSE $3 END, updated_at = tidebase.now()
WHERE name = $1 RETURNING *;

-- name: next_tick
-- Seconds until the next tick of an enabled schedule (not counting one that waits for
-- its previous run: see due_schedules).
SELECT EXTRACT(EPOCH FROM min(s.next_fire_at) - tidebase.now())::float8
FROM tidebase.schedules s
WHERE s.enabled
  AND NOT (s.overlap = 'queue'
           AND EXISTS (SELECT 1 FROM tidebase.runs r
                       WHERE r.schedule = s.name
                         AND r.status IN ('queued', 'running', 'waiting')));

-- name: due_schedules
-- Schedules with a due tick, oldest first. One whose overlap policy is 'queue' and
-- whose previous run is still active waits, without holding up the others.
SELECT s.name FROM tidebase.schedules s
WHERE s.enabled AND s.next_fire_at <= tidebase.now()
  AND NOT (s.overlap = 'queue'
           AND EXISTS (SELECT 1 FROM tidebase.runs r
                       WHERE r.schedule = s.name
                         AND r.status IN ('queued', 'running', 'waiting')))
ORDER BY s.next_fire_at
LIMIT $1;

-- name: lock_due_schedule
-- Inside the firing transaction: the schedule, locked, if still due.
SELECT *, tidebase.now() AS now FROM tidebase.schedules
WHERE name = $1 AND enabled AND next_fire_at <= tidebase.now()
FOR UPDATE SKIP LOCKED;

-- name: schedule_active
SELECT EXISTS (SELECT 1 FROM tidebase.runs
               WHERE schedule = $1 AND status IN ('queued', 'running', 'waiting'));

-- name: insert_scheduled_runs
-- The runs of due ticks ($1: JSON array), each with the workflow version it records.
-- The (schedule, fire_time) key makes a tick that was enqueued already (by another
-- ticker) a no-op.
WITH ins AS (
  INSERT INTO tidebase.runs
    (id, workflow, queue, status, input, priority, metadata, max_attempts, run_at,
     schedule, fire_time, created_at, updated_at, event_seq, version)
  SELECT u.id, u.workflow, u.queue, 'queued', u.input, u.priority, u.metadata,
         u.max_attempts, tidebase.now(), u.schedule, u.fire_time, tidebase.now(),
         tidebase.now(), 1, u.version
  FROM jsonb_to_recordset($1::jsonb)
       AS u(id uuid, workflow text, queue text, input jsonb, priority int4,
            metadata jsonb, max_attempts int4, schedule text, fire_time timestamptz,
            version text)
  ON CONFLICT (schedule, fire_time) WHERE schedule IS NOT NULL DO NOTHING
  RETURNING id, queue, fire_time
)
SELECT id, queue, fire_time FROM ins ORDER BY fire_time;

-- name: advance_schedule
UPDATE tidebase.schedules
SET next_fire_at = $2, last_fire_at = COALESCE($3, last_fire_at),
    last_run_id = COALESCE($4, last_run_id), updated_at = tidebase.now()
WHERE name = $1;

-- name: take_deliveries
-- Take up to $1 due deliveries: their next attempt moves $2 seconds ahead ($3 for a
-- run.resume, whose receiver may execute the run before it answers): a lease longer
-- than the send's timeout. Their attempt is counted in this short transaction; they
-- are sent after it committed, with no lock held.
WITH due AS (
  SELECT id FROM tidebase.outbox
  WHERE status = 'pending' AND next_attempt_at <= tidebase.now()
  ORDER BY next_attempt_at
  LIMIT $1
  FOR UPDATE SKIP LOCKED
)
UPDATE tidebase.outbox o
SET next_attempt_at = tidebase.now() + make_interval(
      secs => CASE WHEN o.event = 'run.resume' THEN $3::float8 ELSE $2::float8 END),
    attempts = o.attempts + 1
FROM due WHERE o.id = due.id
RETURNING o.id, o.run_id, o.url, o.event, o.payload, o.attempts, o.max_attempts;

-- name: delivery_done
-- The outcome of attempt $6 of one send. $2: delivered, else retried after $5 seconds
-- while attempts remain, else failed. A token in the payload goes once it is settled.
-- An outcome that comes after the delivery was taken again (its lease ran out) is
-- ignored: the later attempt decides.
UPDATE tidebase.outbox
SET status = CASE WHEN $2 THEN 'delivered'
                  WHEN attempts >= max_attempts THEN 'failed' ELSE 'pending' END,
    last_status = $3, last_error = $4,
    next_attempt_at = CASE WHEN $2 OR attempts >= max_attempts THEN next_attempt_at
                           ELSE tidebase.now() + make_interval(secs => $5::float8) END,
    delivered_at = CASE WHEN $2 THEN tidebase.now() END,
    payload = CASE WHEN $2 OR attempts >= max_attempts THEN payload - 'resolve_token'
                   ELSE payload END
WHERE id = $1 AND status = 'pending' AND attempts = $6
RETURNING status, event, run_id;

-- name: fail_unrecovered
-- A recovery webhook that could not be delivered: the inline run it was to resume
-- fails (if nobody resumed it meanwhile) instead of waiting forever.
WITH r AS (
  UPDATE tidebase.runs
  SET status = 'failed', error = $2, finished_at = tidebase.now(),
      updated_at = tidebase.now(), event_seq = event_seq + 1
  WHERE id = $1 AND status = 'queued' AND inline
  RETURNING id, event_seq
), e AS (
  INSERT INTO tidebase.events (run_id, seq, type, at, data)
  SELECT id, event_seq, 'run.failed', tidebase.now(), $2 FROM r
)
SELECT id FROM r;

-- name: next_delivery
SELECT EXTRACT(EPOCH FROM min(next_attempt_at) - tidebase.now())::float8
FROM tidebase.outbox WHERE status = 'pending';

-- name: get_deliveries
SELECT id, url, event, status, attempts, last_status, last_error, created_at, delivered_at
FROM tidebase.outbox WHERE run_id = $1 ORDER BY created_at, id;

-- name: step_positions
SELECT position, name FROM tidebase.steps WHERE run_id = $1 ORDER BY position;

-- name: fork_run
-- A new run ($2, queued) of run $1's workflow, with input $3 (NULL: the original's),
-- whose history is the original's entries before position $4 (entry $5): it replays
-- them and executes from there on. Its state, and its state history, are the
-- original's as of entry $4 - 1 (the version recorded with that entry). The original
-- is not touched.
WITH src AS (
  -- Locked against retention, which skips locked runs (no foreign key: migration 0016).
  SELECT * FROM tidebase.runs WHERE id = $1 FOR KEY SHARE
), at AS (
  SELECT COALESCE((SELECT state_version FROM tidebase.steps
                   WHERE run_id = $1 AND position = $4 - 1), 0) AS version
), ins AS (
  INSERT INTO tidebase.runs
    (id, workflow, queue, status, input, state, state_version, priority, metadata,
     max_attempts, run_at, deadline_at, step_count, created_at, updated_at, event_seq,
     forked_from, forked_at, version)
  SELECT $2, src.workflow, src.queue, 'queued', COALESCE($3, src.input),
         COALESCE((SELECT v.state FROM tidebase.state_versions v, at
                   WHERE v.run_id = $1 AND v.version = at.version), '{}'::jsonb),
         at.version, src.priority, src.metadata, src.max_attempts, tidebase.now(), NULL, $4,
         tidebase.now(), tidebase.now(), 2, $1, $5, src.version
  FROM src, at
  RETURNING id, queue
), versions AS (
  INSERT INTO tidebase.state_versions (run_id, version, state, step, label, at)
  SELECT ins.id, v.version, v.state, v.step, v.label, v.at
  FROM ins, at, tidebase.state_versions v
  WHERE v.run_id = $1 AND v.version <= at.version
), steps AS (
  INSERT INTO tidebase.steps
    (run_id, position, name, status, attempts, run_attempt, output, error, replay_failure,
     started_at, finished_at, kind, state_version, wrote_state)
  SELECT ins.id, s.position, s.name, s.status, s.attempts, 0, s.output, s.error,
         s.replay_failure, s.started_at, s.finished_at, s.kind, s.state_version,
         s.wrote_state
  FROM ins, tidebase.steps s WHERE s.run_id = $1 AND s.position < $4
), ev AS (
  INSERT INTO tidebase.events (run_id, seq, type, at, data)
  SELECT id, 2, 'run.forked', tidebase.now(),
         jsonb_build_object('from', $1::uuid, 'at', $5::text) FROM ins
), wake AS (
  SELECT pg_notify('tidebase_wake', queue) FROM ins
)
SELECT ins.id, ins.queue FROM ins, (SELECT count(*) FROM wake) w;

-- name: reset_run
-- Run $1, failed, executes again from position $2 (entry $3): its entries from there
-- on are removed (its event log keeps them), with a fresh budget of $4 attempts.
WITH r AS (
  UPDATE tidebase.runs
  SET status = 'queued', max_attempts = attempt - released + $4, run_at = tidebase.now(),
      finished_at = NULL, error = NULL, step_count = $2, updated_at = tidebase.now(),
      event_seq = event_seq + 1
  WHERE id = $1 AND status = 'failed'
  RETURNING id, event_seq, queue
), d AS (
  DELETE FROM tidebase.steps s USING r WHERE s.run_id = r.id AND s.position >= $2
), waits AS (
  -- Its waits for events from there on too: the entries that made them execute again
  -- and wait anew (a timed-out wait would otherwise time out again at once).
  DELETE FROM tidebase.event_waits w USING r WHERE w.run_id = r.id AND w.position >= $2
), kids AS (
  -- Its failed children too (as retry_run): re-executing the entry that waits for one
  -- would otherwise find it failed and fail the same way.
  UPDATE tidebase.runs c
  SET status = 'queued', max_attempts = c.attempt - c.released + $4,
      run_at = tidebase.now(), finished_at = NULL, updated_at = tidebase.now(),
      event_seq = c.event_seq + 1
  FROM r WHERE c.parent_id = r.id AND c.status = 'failed'
  RETURNING c.id, c.event_seq, c.queue
), e AS (
  INSERT INTO tidebase.events (run_id, seq, type, at, data)
  SELECT id, event_seq, 'run.reset', tidebase.now(), jsonb_build_object('to', $3::text)
  FROM r
  UNION ALL
  SELECT id, event_seq, 'run.retried', tidebase.now(), '{"reason": "parent reset"}'::jsonb
  FROM kids
), kid_wake AS (
  SELECT pg_notify('tidebase_wake', queue) FROM kids
), wake AS (
  SELECT pg_notify('tidebase_wake', queue) FROM r
)
SELECT r.queue FROM r, (SELECT count(*) FROM wake) w, (SELECT count(*) FROM kid_wake) k;

-- name: take_lease
-- Take lease $1 for holder $2 for $3 seconds, or renew it when $2 holds it already; a
-- row comes back only when $2 holds it now. One statement, so it is safe through a
-- transaction-mode pooler; an expired lease goes to whoever asks first.
INSERT INTO tidebase.leases AS l (name, holder, acquired_at, expires_at)
VALUES ($1, $2, tidebase.now(), tidebase.now() + make_interval(secs => $3::float8))
ON CONFLICT (name) DO UPDATE
SET holder = EXCLUDED.holder,
    acquired_at = CASE WHEN l.holder = EXCLUDED.holder THEN l.acquired_at
                       ELSE EXCLUDED.acquired_at END,
    expires_at = EXCLUDED.expires_at
WHERE l.holder = EXCLUDED.holder OR l.expires_at < tidebase.now()
RETURNING l.holder;

-- name: release_lease
-- Give lease $1 up if holder $2 still holds it, so the next candidate need not wait
-- for it to expire.
DELETE FROM tidebase.leases WHERE name = $1 AND holder = $2;

-- ---- Workflow versions and the replay check (schema 12) -------------------------------

-- name: announce_versions
-- Worker $1 is alive and registers the (workflow, version) keys $2; rows of workers
-- unseen for a day (killed ones never withdraw) go in the same statement.
WITH gone AS (
  DELETE FROM tidebase.worker_versions
  WHERE seen_at < tidebase.now() - interval '1 day'
)
INSERT INTO tidebase.worker_versions (key, worker_id, seen_at)
SELECT k, $1, tidebase.now() FROM unnest($2::text[]) AS k
ON CONFLICT (key, worker_id) DO UPDATE SET seen_at = EXCLUDED.seen_at;

-- name: withdraw_versions
DELETE FROM tidebase.worker_versions WHERE worker_id = $1;

-- name: version_counts
-- Queued versioned runs per (queue, workflow, version), with the age of the oldest due
-- one and how many workers that registered the version were seen in the last $1
-- seconds (0: no live worker can take them). Reads the partial index
-- runs_queued_versions: unversioned runs are not counted here.
SELECT r.queue, r.workflow, r.version, count(*) AS queued,
       COALESCE(EXTRACT(epoch FROM tidebase.now() - min(r.run_at)
                FILTER (WHERE r.run_at <= tidebase.now())), 0)::float8 AS oldest_s,
       (SELECT count(*) FROM tidebase.worker_versions w
        WHERE w.key = r.workflow || E'\x1f' || r.version
          AND w.seen_at > tidebase.now() - make_interval(secs => $1::float8)) AS workers
FROM tidebase.runs r
WHERE r.status = 'queued' AND r.version IS NOT NULL
GROUP BY r.queue, r.workflow, r.version
ORDER BY r.queue, r.workflow, r.version;

-- name: replay_check_runs
-- A page of the runs the replay check reads: of workflows $1, running, waiting, queued
-- with a history, or finished since $2 (NULL: none finished); after id $3 (keyset,
-- NULL: from the start), at most $4. Only the ids of runs with a history (step_count
-- > 0): a run with none has nothing to compare.
SELECT id, workflow, queue, input, state, attempt, released, max_attempts, deadline_at,
       step_count, created_at, wake_seq, run_at, trace_context, version, status,
       tidebase.now() AS db_now
FROM tidebase.runs
WHERE workflow = ANY($1::text[]) AND step_count > 0
  AND ($3::uuid IS NULL OR id > $3::uuid)
  AND (status IN ('queued', 'running', 'waiting')
       OR ($2::timestamptz IS NOT NULL AND status IN ('completed', 'failed', 'cancelled')
           AND finished_at >= $2::timestamptz))
ORDER BY id
LIMIT $4;

-- ---------------------------------------------------------------------------------------
-- Events by key (run.wait_for_event, tide.events.send); see 0011_events.sql for the
-- locking that makes waits and sends exactly-once.
-- ---------------------------------------------------------------------------------------

-- name: lock_event_key
-- For the rest of the transaction: the advisory lock of event $1 with key $2 (the
-- two-int4 form, whose key space is apart from the bigint locks of migrations and
-- leadership). A statement of its own: the next statements' snapshots then see what
-- the previous holder committed.
SELECT pg_advisory_xact_lock(1952735845, hashtext($1::text || E'\n' || $2::text));

-- name: get_event_wait
SELECT run_id, name, position, event_name, event_key, status, event_id, payload,
       created_at, expires_at, closed_at,
       COALESCE(expires_at <= tidebase.now(), false) AS due
FROM tidebase.event_waits WHERE run_id = $1 AND name = $2;

-- name: open_event_wait
-- Run $1 reaches wait $2 (position $3) for event $4 with key $5, expiring after $6
-- seconds (NULL: never); under lock_event_key and the run's claim lock, and only when
-- the wait does not exist yet. The oldest stored event of the key within its retention,
-- if any, is taken (consumed by this run) and the wait is received at once; else it
-- waits.
WITH taken AS (
  UPDATE tidebase.keyed_events k
  SET status = 'consumed', received_by = ARRAY[$1::uuid], consumed_at = tidebase.now()
  WHERE k.id = (SELECT id FROM tidebase.keyed_events
                WHERE name = $4 AND key = $5 AND status = 'stored'
                  AND expires_at > tidebase.now()
                ORDER BY sent_at, id
                LIMIT 1
                FOR UPDATE SKIP LOCKED)
    AND k.status = 'stored'
  RETURNING k.id, k.payload
), ins AS (
  INSERT INTO tidebase.event_waits
    (run_id, name, position, event_name, event_key, status, event_id, payload,
     created_at, expires_at, closed_at)
  SELECT $1, $2, $3, $4, $5, CASE WHEN t.id IS NULL THEN 'waiting' ELSE 'received' END,
         t.id, t.payload, tidebase.now(),
         tidebase.now() + make_interval(secs => $6::float8),
         CASE WHEN t.id IS NULL THEN NULL ELSE tidebase.now() END
  FROM (SELECT 1) AS one LEFT JOIN taken t ON true
  RETURNING *
), r AS (
  UPDATE tidebase.runs r SET event_seq = r.event_seq + 1, updated_at = tidebase.now()
  FROM ins WHERE r.id = ins.run_id
  RETURNING r.id, r.event_seq
), e AS (
  INSERT INTO tidebase.events (run_id, seq, type, at, data)
  SELECT r.id, r.event_seq,
         CASE WHEN ins.status = 'received' THEN 'event.received' ELSE 'event.waiting' END,
         tidebase.now(),
         jsonb_build_object('name', $2::text, 'event', $4::text, 'key', $5::text,
                            'expires_at', ins.expires_at, 'id', ins.event_id,
                            'stored', ins.status = 'received')
  FROM r, ins
)
SELECT run_id, name, position, event_name, event_key, status, event_id, payload,
       created_at, expires_at, closed_at, false AS due
FROM ins;

-- name: time_out_event_wait
-- The wait's time ran out: close it as timed out (under lock_event_key and the run's
-- claim lock, so no send delivers to it meanwhile).
UPDATE tidebase.event_waits
SET status = 'timed_out', closed_at = tidebase.now()
WHERE run_id = $1 AND name = $2 AND status = 'waiting' AND expires_at <= tidebase.now()
RETURNING run_id, name, position, event_name, event_key, status, event_id, payload,
          created_at, expires_at, closed_at, true AS due;

-- name: get_keyed_event
SELECT id, name, key, payload, status, received_by, sent_at, consumed_at, expires_at
FROM tidebase.keyed_events WHERE id = $1;

-- name: event_waiters
-- The waits a send of event $1 with key $2 reaches now: open, not past their expiry (a
-- due wait timed out, whether or not its run closed it yet), of active runs; their runs'
-- rows locked in id order, as every multi-row writer locks them. Under lock_event_key.
SELECT w.run_id, w.name
FROM tidebase.event_waits w JOIN tidebase.runs r ON r.id = w.run_id
WHERE w.event_name = $1 AND w.event_key = $2 AND w.status = 'waiting'
  AND (w.expires_at IS NULL OR w.expires_at > tidebase.now())
  AND r.status IN ('queued', 'running', 'waiting')
ORDER BY w.run_id, w.name
FOR NO KEY UPDATE OF r;

-- name: receive_stored_event
-- Open wait $2 of run $1 (event $3, key $4, expiring at $5), met again as its run
-- replays, takes the oldest stored event of the key sent before the wait's expiry, if
-- there is one. Only a send made while the run was not active (failed, before a retry)
-- stores an event that an open wait could have received; under lock_event_key and the
-- run's claim lock. The bound on sent_at holds whatever the transactions' start times:
-- a send that found the wait past its expiry stored its event, and this wait must not
-- take it.
WITH taken AS (
  UPDATE tidebase.keyed_events k
  SET status = 'consumed', received_by = ARRAY[$1::uuid], consumed_at = tidebase.now()
  WHERE k.id = (SELECT id FROM tidebase.keyed_events
                WHERE name = $3 AND key = $4 AND status = 'stored'
                  AND expires_at > tidebase.now()
                  AND ($5::timestamptz IS NULL OR sent_at < $5::timestamptz)
                ORDER BY sent_at, id
                LIMIT 1
                FOR UPDATE SKIP LOCKED)
    AND k.status = 'stored'
  RETURNING k.id, k.payload
)
UPDATE tidebase.event_waits w
SET status = 'received', event_id = taken.id, payload = taken.payload,
    closed_at = tidebase.now()
FROM taken
WHERE w.run_id = $1 AND w.name = $2 AND w.status = 'waiting'
RETURNING w.run_id, w.name, w.position, w.event_name, w.event_key, w.status, w.event_id,
          w.payload, w.created_at, w.expires_at, w.closed_at, false AS due;

-- name: deliver_event
-- Event $3 (event $5, key $6, payload $4) reaches the waits ($1 run ids, $2 names) that
-- event_waiters found and locked: each receives it once (the condition on status), and
-- each of their runs is woken as wake_run does (wake_seq bumped; a waiting run back to
-- its queue). Returns each run with its queue and whether it was waiting.
WITH got AS (
  UPDATE tidebase.event_waits w
  SET status = 'received', event_id = $3, payload = $4, closed_at = tidebase.now()
  FROM unnest($1::uuid[], $2::text[]) AS t(run_id, name)
  WHERE w.run_id = t.run_id AND w.name = t.name AND w.status = 'waiting'
  RETURNING w.run_id, w.name
), per_run AS (
  SELECT run_id, jsonb_agg(name ORDER BY name) AS names FROM got GROUP BY run_id
), before AS (
  SELECT r.id, r.status FROM tidebase.runs r JOIN per_run p ON p.run_id = r.id
), r AS (
  UPDATE tidebase.runs r
  SET /* include _wake_set */
  FROM per_run p, before b
  WHERE r.id = p.run_id AND b.id = p.run_id AND r.status IN ('queued', 'running', 'waiting')
  RETURNING r.id, r.queue, r.event_seq, p.names, b.status AS before_status
), e AS (
  INSERT INTO tidebase.events (run_id, seq, type, at, data)
  SELECT id, event_seq, 'event.received', tidebase.now(),
         jsonb_build_object('event', $5::text, 'key', $6::text, 'id', $3::uuid,
                            'waits', names, 'resumed', before_status = 'waiting')
  FROM r
)
SELECT id, queue, before_status FROM r ORDER BY id;

-- name: insert_keyed_event
-- Record sent event $1 (event $2, key $3, payload $4), kept for $5 seconds: 'delivered'
-- to the runs $6 when any received it, else 'stored' for the next waiter.
INSERT INTO tidebase.keyed_events
  (id, name, key, payload, status, received_by, sent_at, expires_at)
VALUES ($1, $2, $3, $4,
        CASE WHEN cardinality($6::uuid[]) > 0 THEN 'delivered' ELSE 'stored' END,
        $6, tidebase.now(), tidebase.now() + make_interval(secs => $5::float8))
RETURNING id, name, key, payload, status, received_by, sent_at, consumed_at, expires_at;

-- name: list_keyed_events
-- Events in the order sent, newest last; NULL filters match everything. Events past
-- their retention are left out (the reconciler deletes them). Keyset pages: those
-- sent after ($5, $6) when $5 is given.
SELECT id, name, key, payload, status, received_by, sent_at, consumed_at, expires_at
FROM tidebase.keyed_events
WHERE ($1::text IS NULL OR status = $1)
  AND ($2::text IS NULL OR name = $2)
  AND ($3::text IS NULL OR key = $3)
  AND ($5::timestamptz IS NULL OR (sent_at, id) > ($5, $6::uuid))
  AND expires_at > tidebase.now()
ORDER BY sent_at, id
LIMIT $4;

-- name: list_event_waits
-- Open waits of active runs, oldest first; NULL filters match everything.
SELECT w.run_id, w.name, w.position, w.event_name, w.event_key, w.status, w.event_id,
       w.payload, w.created_at, w.expires_at, w.closed_at,
       COALESCE(w.expires_at <= tidebase.now(), false) AS due
FROM tidebase.event_waits w JOIN tidebase.runs r ON r.id = w.run_id
WHERE w.status = 'waiting' AND r.status IN ('queued', 'running', 'waiting')
  AND ($1::text IS NULL OR w.event_name = $1)
  AND ($2::text IS NULL OR w.event_key = $2)
ORDER BY w.created_at, w.run_id, w.name
LIMIT $3;

-- name: get_run_event_waits
-- Every wait of run $1 for an event by key (open, received or timed out), in the
-- order the run reached them.
SELECT run_id, name, position, event_name, event_key, status, event_id, payload,
       created_at, expires_at, closed_at,
       COALESCE(expires_at <= tidebase.now(), false) AS due
FROM tidebase.event_waits WHERE run_id = $1 ORDER BY position, name;

-- name: prune_keyed_events
-- Retention: delete up to $1 events past their expiry, oldest first.
WITH doomed AS (
  SELECT id FROM tidebase.keyed_events
  WHERE expires_at <= tidebase.now()
  ORDER BY expires_at
  LIMIT $1
  FOR UPDATE SKIP LOCKED
)
DELETE FROM tidebase.keyed_events k USING doomed WHERE k.id = doomed.id;

-- name: install_virtual_clock
-- Testing kit only (tidebase_async.testing), in a test's own database: tidebase.now()
-- becomes the server's clock plus an offset kept in one row, so every statement, on
-- every connection, sees the time the test advanced to. The production definition
-- (0001_init.sql) stays inlinable; this one reads a table, which a test can afford.
CREATE TABLE IF NOT EXISTS tidebase.virtual_clock (
  only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
  offset_s float8 NOT NULL DEFAULT 0 CHECK (offset_s >= 0)
);
INSERT INTO tidebase.virtual_clock DEFAULT VALUES ON CONFLICT DO NOTHING;
CREATE OR REPLACE FUNCTION tidebase.now() RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
  SELECT COALESCE(NULLIF(current_setting('tidebase.fake_now', true), '')::timestamptz,
                  pg_catalog.now()
                  + make_interval(secs => (SELECT offset_s FROM tidebase.virtual_clock)))
$$;

-- name: virtual_clock_installed
SELECT to_regclass('tidebase.virtual_clock') IS NOT NULL;

-- name: advance_virtual_clock_to
-- Moves the virtual clock forward to $1 (never back); returns the time it now reads.
UPDATE tidebase.virtual_clock
SET offset_s = GREATEST(offset_s, extract(epoch FROM $1::timestamptz - pg_catalog.now()))
RETURNING pg_catalog.now() + make_interval(secs => offset_s);

-- name: next_timer
-- The earliest moment after now at which something becomes due by the clock alone:
-- a waiting run's timer (sleep, gate or event-wait timeout), a delayed or backed-off
-- queued run (retries, debounce), an active run's deadline, a schedule tick, an
-- outbound delivery's next attempt. NULL: nothing is timed.
SELECT min(t) FROM (
  SELECT min(wake_at) AS t FROM tidebase.runs
  WHERE status = 'waiting' AND wake_at > tidebase.now()
  UNION ALL
  SELECT min(run_at) FROM tidebase.runs WHERE status = 'queued' AND run_at > tidebase.now()
  UNION ALL
  SELECT min(deadline_at) FROM tidebase.runs
  WHERE status IN ('queued', 'running', 'waiting') AND deadline_at > tidebase.now()
  UNION ALL
  SELECT min(next_fire_at) FROM tidebase.schedules
  WHERE enabled AND next_fire_at > tidebase.now()
  UNION ALL
  SELECT min(next_attempt_at) FROM tidebase.outbox
  WHERE status = 'pending' AND next_attempt_at > tidebase.now()
) timers;

-- name: unsettled_work
-- What a worker can still move without anyone deciding and without the clock moving:
-- running runs, due queued runs of queues not paused, waiting runs whose timer is due,
-- active runs past their deadline, due schedule ticks that may fire (not held back by
-- an active run under overlap 'queue'), due outbound deliveries. Oldest first, $1 rows.
SELECT kind, id, workflow, status FROM (
  SELECT 'run' AS kind, r.id::text AS id, r.workflow, r.status, r.created_at AS since
  FROM tidebase.runs r
  WHERE r.status = 'running'
     OR (r.status = 'queued' AND r.run_at <= tidebase.now()
         AND NOT EXISTS (SELECT 1 FROM tidebase.queues q WHERE q.name = r.queue AND q.paused))
     OR (r.status = 'waiting' AND r.wake_at <= tidebase.now())
     OR (r.status IN ('queued', 'running', 'waiting') AND r.deadline_at <= tidebase.now())
  UNION ALL
  SELECT 'schedule', s.name, s.workflow, 'due', s.next_fire_at
  FROM tidebase.schedules s
  WHERE s.enabled AND s.next_fire_at <= tidebase.now()
    AND NOT (s.overlap = 'queue' AND EXISTS (
      SELECT 1 FROM tidebase.runs a
      WHERE a.schedule = s.name AND a.status IN ('queued', 'running', 'waiting')))
  UNION ALL
  SELECT 'delivery', o.id::text, o.event, o.status, o.next_attempt_at
  FROM tidebase.outbox o
  WHERE o.status = 'pending' AND o.next_attempt_at <= tidebase.now()
) work
ORDER BY since
LIMIT $1;

-- name: _runs_by_minute
-- Dashboard rollups (0015): runs created, and runs finished, in [lo, hi) of the
-- including statement's CTE win(lo, hi), per minute, workflow and version, with the
-- log-scale histograms of the finished runs' durations and queue waits. Two range
-- scans: runs_created and runs_finished.
SELECT at, workflow, version, sum(created)::integer AS created,
       sum(completed)::integer AS completed, sum(failed)::integer AS failed,
       sum(cancelled)::integer AS cancelled,
       tidebase.stats_histogram_sum(duration) AS duration,
       tidebase.stats_histogram_sum(wait) AS wait
FROM (
  SELECT date_trunc('minute', r.created_at, 'UTC') AS at, r.workflow, r.version,
         count(*) AS created, 0 AS completed, 0 AS failed, 0 AS cancelled,
         NULL::integer[] AS duration, NULL::integer[] AS wait
  FROM tidebase.runs r
  WHERE r.created_at >= (SELECT lo FROM win) AND r.created_at < (SELECT hi FROM win)
  GROUP BY 1, 2, 3
  UNION ALL
  SELECT date_trunc('minute', r.finished_at, 'UTC'), r.workflow, r.version, 0,
         count(*) FILTER (WHERE r.status = 'completed'),
         count(*) FILTER (WHERE r.status = 'failed'),
         count(*) FILTER (WHERE r.status = 'cancelled'),
         tidebase.stats_histogram(tidebase.stats_bucket(
           EXTRACT(epoch FROM r.finished_at - r.started_at)::float8 * 1000))
           FILTER (WHERE r.status <> 'cancelled'),
         -- Due at run_at; a run retried since its first claim (run_at moved past
         -- started_at) no longer knows when it first became due: created_at then.
         tidebase.stats_histogram(tidebase.stats_bucket(
           EXTRACT(epoch FROM r.started_at - CASE WHEN r.run_at <= r.started_at
                                                  THEN GREATEST(r.created_at, r.run_at)
                                                  ELSE r.created_at END)::float8 * 1000))
  FROM tidebase.runs r
  WHERE r.finished_at >= (SELECT lo FROM win) AND r.finished_at < (SELECT hi FROM win)
    AND r.status IN ('completed', 'failed', 'cancelled')
  GROUP BY 1, 2, 3
) AS parts
GROUP BY at, workflow, version

-- name: lock_stats_progress
-- The rollup's watermark, locked: a second reconciler (the election is not a
-- guarantee) skips its turn instead of waiting out this one's rollup (no row: nothing
-- to do now). The first run's time is read only before the first rollup.
SELECT p.rolled_to, tidebase.now() AS now,
       CASE WHEN p.rolled_to IS NULL THEN
         (SELECT created_at FROM tidebase.runs ORDER BY created_at, id LIMIT 1)
       END AS first_run
FROM tidebase.stats_progress p WHERE p.name = 'runs'
FOR UPDATE OF p SKIP LOCKED;

-- name: stats_chunk_end
-- Where a rollup chunk from $1 ends so that it reads about $2 runs at most: the minute
-- of the $2-th run created (or finished, or usage record) from $1 on, at least one
-- minute past $1, at most $3. LEAST skips NULLs: a probe that finds fewer than $2 rows
-- sets no bound; when none does, the chunk runs to $3.
SELECT LEAST($3::timestamptz, GREATEST($1::timestamptz + interval '1 minute', COALESCE(LEAST(
  (SELECT date_trunc('minute', created_at, 'UTC') FROM tidebase.runs
   WHERE created_at >= $1 ORDER BY created_at OFFSET $2 LIMIT 1),
  (SELECT date_trunc('minute', finished_at, 'UTC') FROM tidebase.runs
   WHERE finished_at >= $1 ORDER BY finished_at OFFSET $2 LIMIT 1),
  (SELECT date_trunc('minute', recorded_at, 'UTC') FROM tidebase.usage
   WHERE recorded_at >= $1 ORDER BY recorded_at OFFSET $2 LIMIT 1)), $3::timestamptz)));

-- name: roll_up_minutes
-- Replace the minute rows of [$1, $2) (whole minutes) with what runs and usage say now:
-- idempotent.
WITH win AS (SELECT $1::timestamptz AS lo, $2::timestamptz AS hi),
gone AS (
  DELETE FROM tidebase.run_stats WHERE span_s = 60 AND at >= $1 AND at < $2
), gone_usage AS (
  DELETE FROM tidebase.usage_stats WHERE span_s = 60 AND at >= $1 AND at < $2
), usage AS (
  INSERT INTO tidebase.usage_stats
    (span_s, at, model, records, input_tokens, output_tokens, cost_usd)
  SELECT 60, date_trunc('minute', recorded_at, 'UTC'), model, count(*),
         sum(input_tokens), sum(output_tokens), sum(cost_usd)
  FROM tidebase.usage WHERE recorded_at >= $1 AND recorded_at < $2
  GROUP BY 2, 3
)
INSERT INTO tidebase.run_stats
  (span_s, at, workflow, version, created, completed, failed, cancelled, duration, wait)
SELECT 60, m.* FROM (/* include _runs_by_minute */) AS m;

-- name: roll_up_hours
-- Replace the hour rows of [$1, $2) (whole hours, all of whose minutes are rolled up)
-- with the sums of their minute rows, and drop minute rows older than $3 and hour rows
-- 90 days older than that (the pages read 7 days at most).
WITH gone AS (
  DELETE FROM tidebase.run_stats WHERE span_s = 3600 AND at >= $1 AND at < $2
), gone_usage AS (
  DELETE FROM tidebase.usage_stats WHERE span_s = 3600 AND at >= $1 AND at < $2
), usage AS (
  INSERT INTO tidebase.usage_stats
    (span_s, at, model, records, input_tokens, output_tokens, cost_usd)
  SELECT 3600, date_trunc('hour', at, 'UTC'), model, sum(records), sum(input_tokens),
         sum(output_tokens), sum(cost_usd)
  FROM tidebase.usage_stats WHERE span_s = 60 AND at >= $1 AND at < $2
  GROUP BY 2, 3
), old AS (
  DELETE FROM tidebase.run_stats WHERE span_s = 60 AND at < $3
), old_usage AS (
  DELETE FROM tidebase.usage_stats WHERE span_s = 60 AND at < $3
), old_hours AS (
  DELETE FROM tidebase.run_stats WHERE span_s = 3600 AND at < $3 - interval '90 days'
), old_usage_hours AS (
  DELETE FROM tidebase.usage_stats WHERE span_s = 3600 AND at < $3 - interval '90 days'
)
INSERT INTO tidebase.run_stats
  (span_s, at, workflow, version, created, completed, failed, cancelled, duration, wait)
SELECT 3600, date_trunc('hour', at, 'UTC'), workflow, version, sum(created), sum(completed),
       sum(failed), sum(cancelled), tidebase.stats_histogram_sum(duration),
       tidebase.stats_histogram_sum(wait)
FROM tidebase.run_stats WHERE span_s = 60 AND at >= $1 AND at < $2
GROUP BY 2, 3, 4;

-- name: set_stats_progress
UPDATE tidebase.stats_progress SET rolled_to = $1 WHERE name = 'runs';

-- name: _stats_bounds
-- What a dashboard read takes from where, given its start $1 and bucket $2 seconds:
-- hour rows before h (hour buckets only), minute rows before w (the watermark), and
-- runs from live on, read live; at most the last hour live, so a rollup that is
-- behind (no worker runs the reconciler, or a backfill is under way) leaves a gap
-- instead of turning a page load into a scan.
SELECT w, CASE WHEN $2::integer = 3600 THEN date_trunc('hour', w, 'UTC')
               ELSE '-infinity'::timestamptz END AS h,
       GREATEST(w, $1::timestamptz,
                date_trunc('minute', tidebase.now(), 'UTC') - interval '1 hour') AS live,
       tidebase.now() AS now
FROM (SELECT COALESCE((SELECT rolled_to FROM tidebase.stats_progress WHERE name = 'runs'),
                      '-infinity') AS w) AS p

-- name: run_stats_range
-- Runs created and finished from $1 (bucket-aligned) on, by bucket of $2 seconds (60 or
-- 3600), of workflow $3 (NULL: all): per bucket (kind 'bucket'), per workflow
-- ('workflow') and per workflow and version ('version'), these with merged histograms.
WITH b AS (/* include _stats_bounds */),
win AS (SELECT live AS lo, 'infinity'::timestamptz AS hi FROM b),
pieces AS (
  SELECT s.at, s.workflow, s.version, s.created, s.completed, s.failed, s.cancelled,
         s.duration, s.wait
  FROM tidebase.run_stats s
  WHERE s.span_s = 3600 AND $2::integer = 3600 AND s.at >= $1 AND s.at < (SELECT h FROM b)
    AND ($3::text IS NULL OR s.workflow = $3)
  UNION ALL
  SELECT s.at, s.workflow, s.version, s.created, s.completed, s.failed, s.cancelled,
         s.duration, s.wait
  FROM tidebase.run_stats s
  WHERE s.span_s = 60 AND s.at >= GREATEST($1, (SELECT h FROM b))
    AND s.at < (SELECT w FROM b) AND ($3::text IS NULL OR s.workflow = $3)
  UNION ALL
  SELECT m.* FROM (/* include _runs_by_minute */) AS m
  WHERE $3::text IS NULL OR m.workflow = $3
), per_version AS (
  -- Histograms are merged once per row here; a workflow's are the sum of its versions'.
  SELECT workflow, version, sum(created) AS created, sum(completed) AS completed,
         sum(failed) AS failed, sum(cancelled) AS cancelled,
         tidebase.stats_histogram_sum(duration) AS duration,
         tidebase.stats_histogram_sum(wait) AS wait
  FROM pieces WHERE at >= $1
  GROUP BY workflow, version
)
SELECT 'bucket' AS kind,
       CASE WHEN $2::integer = 3600 THEN date_trunc('hour', at, 'UTC') ELSE at END AS bucket,
       NULL::text AS workflow, NULL::text AS version, sum(created)::bigint AS created,
       sum(completed)::bigint AS completed, sum(failed)::bigint AS failed,
       sum(cancelled)::bigint AS cancelled, NULL::integer[] AS duration,
       NULL::integer[] AS wait
FROM pieces WHERE at >= $1
GROUP BY 2
UNION ALL
SELECT 'version', NULL, workflow, version, created, completed, failed, cancelled, duration,
       wait
FROM per_version
UNION ALL
SELECT 'workflow', NULL, workflow, NULL, sum(created)::bigint, sum(completed)::bigint,
       sum(failed)::bigint, sum(cancelled)::bigint, tidebase.stats_histogram_sum(duration),
       tidebase.stats_histogram_sum(wait)
FROM per_version
GROUP BY workflow
ORDER BY 1, 2, 3, 4 NULLS FIRST;

-- name: usage_by_day
-- Tokens and cost per UTC day and model from $1 on ($2: the bucket, as in
-- run_stats_range): hour rows, minute rows, then the ledger live.
WITH b AS (/* include _stats_bounds */)
SELECT date_trunc('day', at, 'UTC')::date AS day, model,
       sum(input_tokens)::bigint AS input_tokens, sum(output_tokens)::bigint AS output_tokens,
       sum(cost_usd)::float8 AS cost_usd
FROM (
  SELECT at, model, input_tokens, output_tokens, cost_usd FROM tidebase.usage_stats
  WHERE span_s = 3600 AND $2::integer = 3600 AND at >= $1 AND at < (SELECT h FROM b)
  UNION ALL
  SELECT at, model, input_tokens, output_tokens, cost_usd FROM tidebase.usage_stats
  WHERE span_s = 60 AND at >= GREATEST($1, (SELECT h FROM b)) AND at < (SELECT w FROM b)
  UNION ALL
  SELECT recorded_at, model, input_tokens, output_tokens, cost_usd FROM tidebase.usage
  WHERE recorded_at >= (SELECT live FROM b)
) AS u
GROUP BY 1, 2
ORDER BY 1, 2 NULLS FIRST;

-- name: latest_failures
-- The newest failed run of each workflow of $1: one probe of runs_failed each.
SELECT w.workflow, f.id, f.version, f.error_type, f.error_message, f.finished_at
FROM unnest($1::text[]) AS w(workflow)
CROSS JOIN LATERAL (
  SELECT r.id, r.version, r.error->>'type' AS error_type,
         left(r.error->>'message', 2000) AS error_message, r.finished_at
  FROM tidebase.runs r
  WHERE r.status = 'failed' AND r.workflow = w.workflow
  ORDER BY r.finished_at DESC
  LIMIT $2
) AS f
ORDER BY w.workflow, f.finished_at DESC;

-- name: workflow_known
-- Whether workflow $1 had a run the rollup saw (hour rows are kept 90 days past the
-- minute rows), or has a failed one.
SELECT EXISTS (SELECT 1 FROM tidebase.run_stats WHERE workflow = $1)
    OR EXISTS (SELECT 1 FROM tidebase.runs WHERE status = 'failed' AND workflow = $1);

-- name: queue_overview
-- Per queue (those with queued runs, found by a loose index scan, with controls, or
-- with running or waiting runs): queued runs (counted up to $1), running and waiting
-- ones (up to $1 waiting runs read), how long the oldest due queued run has been due
-- (one probe of runs_queued_run_at), paused.
WITH RECURSIVE queued AS (
  (SELECT queue FROM tidebase.runs WHERE status = 'queued' ORDER BY queue LIMIT 1)
  UNION ALL
  SELECT (SELECT r.queue FROM tidebase.runs r
          WHERE r.status = 'queued' AND r.queue > q.queue ORDER BY r.queue LIMIT 1)
  FROM queued q WHERE q.queue IS NOT NULL
), active AS (
  SELECT queue, status FROM tidebase.runs WHERE status = 'running'
  UNION ALL
  (SELECT queue, status FROM tidebase.runs WHERE status = 'waiting' LIMIT $1)
), active_counts AS (
  SELECT queue, count(*) FILTER (WHERE status = 'running') AS running,
         count(*) FILTER (WHERE status = 'waiting') AS waiting
  FROM active GROUP BY queue
), names AS (
  SELECT queue FROM queued WHERE queue IS NOT NULL
  UNION SELECT name FROM tidebase.queues
  UNION SELECT queue FROM active_counts
)
SELECT n.queue,
       (SELECT count(*) FROM (SELECT 1 FROM tidebase.runs r
                              WHERE r.status = 'queued' AND r.queue = n.queue
                              LIMIT $1) AS d) AS queued,
       COALESCE(a.running, 0) AS running, COALESCE(a.waiting, 0) AS waiting,
       EXTRACT(epoch FROM tidebase.now() - (
         SELECT r.run_at FROM tidebase.runs r
         WHERE r.status = 'queued' AND r.run_at > '-infinity' AND r.queue = n.queue
         ORDER BY r.run_at LIMIT 1))::float8 AS oldest_s,
       COALESCE((SELECT q.paused FROM tidebase.queues q WHERE q.name = n.queue), false)
         AS paused
FROM names n LEFT JOIN active_counts a ON a.queue = n.queue
ORDER BY n.queue
LIMIT $2;

-- name: stats_rolled_to
SELECT rolled_to FROM tidebase.stats_progress WHERE name = 'runs';
