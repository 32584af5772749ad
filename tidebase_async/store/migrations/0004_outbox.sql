-- tidebase-async schema, version 4: outbound webhook deliveries (the outbox), run
-- channels, recovery webhooks of inline runs.

ALTER TABLE tidebase.runs
  -- URLs told when the run ends (run.completed, run.failed, run.cancelled).
  ADD COLUMN channels jsonb,
  -- Inline runs (tide.run): where to POST a signed run.resume when their process died.
  ADD COLUMN recovery_webhook text;

-- A delivery is recorded in the transaction that caused it and sent after commit by
-- the reconciler, never while a lock is held: a batch is taken by moving its
-- next_attempt_at past the send timeout (a lease), sent, and its outcome recorded.
CREATE TABLE tidebase.outbox (
  -- The Tidebase-Delivery header: receivers dedupe on it.
  id              uuid PRIMARY KEY,
  run_id          uuid REFERENCES tidebase.runs (id) ON DELETE CASCADE,
  url             text NOT NULL,
  event           text NOT NULL,
  -- The body sent. A gate.created delivery holds the gate's one-time resolve token
  -- until it is delivered or given up; then the token is removed from it.
  payload         jsonb NOT NULL,
  status          text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'delivered', 'failed')),
  attempts        integer NOT NULL DEFAULT 0,
  max_attempts    integer NOT NULL DEFAULT 8,
  next_attempt_at timestamptz NOT NULL,
  last_status     integer,
  last_error      text,
  created_at      timestamptz NOT NULL,
  delivered_at    timestamptz
);
CREATE INDEX outbox_due ON tidebase.outbox (next_attempt_at) WHERE status = 'pending';
CREATE INDEX outbox_run ON tidebase.outbox (run_id, created_at);

-- A run with channels that reaches a terminal status tells them, in the transaction
-- that finished it, whichever statement that was.
CREATE FUNCTION tidebase.run_finished_deliveries() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO tidebase.outbox (id, run_id, url, event, payload, next_attempt_at, created_at)
  SELECT gen_random_uuid(), NEW.id, c.url, 'run.' || NEW.status,
         jsonb_build_object('type', 'run.' || NEW.status, 'run_id', NEW.id,
                            'workflow', NEW.workflow, 'status', NEW.status,
                            'output', NEW.output, 'error', NEW.error,
                            'reason', NEW.cancel_reason),
         tidebase.now(), tidebase.now()
  FROM jsonb_array_elements_text(NEW.channels) AS c(url);
  RETURN NULL;
END
$$;

CREATE TRIGGER runs_finished_deliveries
  AFTER UPDATE OF status ON tidebase.runs
  FOR EACH ROW
  WHEN (NEW.channels IS NOT NULL
        AND NEW.status IN ('completed', 'failed', 'cancelled')
        AND OLD.status IS DISTINCT FROM NEW.status)
  EXECUTE FUNCTION tidebase.run_finished_deliveries();
