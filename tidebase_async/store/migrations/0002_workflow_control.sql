-- tidebase-async schema, version 2: gates, durable sleeps, child runs, cancellation of
-- running runs, deadlines.
--
-- Waiting. A run that waits (gate, sleep, child) is 'waiting': no lease, no worker slot.
-- Whatever may end a wait (a gate resolved or expired, a child finished, a timer) bumps
-- runs.wake_seq and, when the run is waiting, moves it back to 'queued' in the same
-- UPDATE of the run row. A worker suspends a run only if wake_seq still has the value
-- it read when it claimed the run (see suspend_run): a wake-up that commits between the
-- worker's look at what it waits for and its suspension therefore makes the suspension
-- fail (and the run is handed back to replay), instead of being lost.

ALTER TABLE tidebase.runs
  -- When a waiting run wakes by itself (end of a sleep, expiry of a gate).
  ADD COLUMN wake_at timestamptz,
  ADD COLUMN wake_seq integer NOT NULL DEFAULT 0,
  ADD COLUMN cancel_actor text;

-- The reconciler's timer sweep: waiting runs whose time has come, oldest first.
CREATE INDEX runs_wake ON tidebase.runs (wake_at)
  WHERE status = 'waiting' AND wake_at IS NOT NULL;
-- The reconciler's deadline sweep.
CREATE INDEX runs_deadline ON tidebase.runs (deadline_at)
  WHERE deadline_at IS NOT NULL AND status IN ('queued', 'running', 'waiting');

-- What a history entry is: a step, or a durable sleep, gate or child wait. A replay
-- compares kind and name, so code that turned a step into a gate is caught.
ALTER TABLE tidebase.steps
  ADD COLUMN kind text NOT NULL DEFAULT 'step'
  CHECK (kind IN ('step', 'sleep', 'gate', 'child', 'fanout'));

CREATE TABLE tidebase.gates (
  run_id      uuid NOT NULL REFERENCES tidebase.runs (id) ON DELETE CASCADE,
  -- With the automatic ordinal ("approve#2").
  name        text NOT NULL,
  status      text NOT NULL
              CHECK (status IN ('pending', 'approved', 'rejected', 'expired', 'cancelled')),
  prompt      text,
  data        jsonb,
  channels    jsonb,
  decision    text,
  actor       text,
  payload     jsonb,
  -- sha256 of the single-use resolve token; NULL when none is outstanding.
  token_hash  bytea,
  created_at  timestamptz NOT NULL,
  resolved_at timestamptz,
  expires_at  timestamptz,
  PRIMARY KEY (run_id, name),
  CHECK ((status = 'pending') = (resolved_at IS NULL))
);
CREATE INDEX gates_pending ON tidebase.gates (created_at) WHERE status = 'pending';

-- A child reaching a terminal status wakes its parent, in the child's transaction,
-- whichever statement finished it (completion, failure, cancellation, the reconciler).
-- The parent row is locked first, then re-read with a fresh snapshot (each statement of
-- a PL/pgSQL function takes one), so a parent suspending concurrently is either seen
-- as waiting (and woken) or sees the bumped wake_seq and does not suspend.
CREATE FUNCTION tidebase.wake_parent() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  before_status text;
  woken record;
BEGIN
  SELECT status INTO before_status FROM tidebase.runs
  WHERE id = NEW.parent_id FOR NO KEY UPDATE;
  IF before_status IS NULL OR before_status NOT IN ('queued', 'running', 'waiting') THEN
    RETURN NULL;
  END IF;
  UPDATE tidebase.runs
  SET wake_seq = wake_seq + 1,
      status = CASE WHEN status = 'waiting' THEN 'queued' ELSE status END,
      run_at = CASE WHEN status = 'waiting' THEN tidebase.now() ELSE run_at END,
      wake_at = CASE WHEN status = 'waiting' THEN NULL ELSE wake_at END,
      updated_at = tidebase.now(), event_seq = event_seq + 1
  WHERE id = NEW.parent_id
  RETURNING id, queue, event_seq INTO woken;
  INSERT INTO tidebase.events (run_id, seq, type, at, data)
  VALUES (woken.id, woken.event_seq,
          CASE WHEN before_status = 'waiting' THEN 'run.resumed' ELSE 'child.finished' END,
          tidebase.now(),
          jsonb_build_object('reason', 'child', 'child', NEW.id, 'status', NEW.status));
  IF before_status = 'waiting' THEN
    PERFORM pg_notify('tidebase_wake', woken.queue);
    PERFORM pg_notify('tidebase_events', woken.id::text);
  END IF;
  RETURN NULL;
END
$$;

CREATE TRIGGER runs_child_finished
  AFTER UPDATE OF status ON tidebase.runs
  FOR EACH ROW
  WHEN (NEW.parent_id IS NOT NULL
        AND NEW.status IN ('completed', 'failed', 'cancelled')
        AND OLD.status IS DISTINCT FROM NEW.status)
  EXECUTE FUNCTION tidebase.wake_parent();
