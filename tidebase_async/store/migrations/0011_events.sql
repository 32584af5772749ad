-- tidebase-async schema, version 11: events by key (run.wait_for_event, tide.events.send).
--
-- keyed_events holds every event sent, until its retention ends (expires_at; the
-- reconciler deletes it then). status: 'stored' (nobody waited for its (name, key) when
-- it was sent: the next run that starts waiting for them takes it), 'delivered' (runs
-- waited: each of them received it at once), 'consumed' (a stored event a later waiter
-- took). received_by lists the runs that received it. Delivered and consumed events are
-- kept so that a send retried with the same id (after a lost connection) is recognised
-- instead of applied twice.
--
-- event_waits holds one row per wait of a run (its history entry, with ordinal):
-- 'waiting' until an event arrives ('received', with its payload) or its time runs out
-- ('timed_out'). A due wait is never delivered to: a sender skips it, and the run closes
-- it as timed out. Nor is the wait of a run that is not active (failed): a send then
-- stores the event, and the wait takes it if the run is retried.
--
-- Exactly once. Every transaction that changes the waits or the stored events of one
-- (name, key) first takes a transaction advisory lock on the pair (queries.sql,
-- lock_event_key), then the rows of the runs involved, in id order. A waiter that looks
-- for a stored event and registers its wait, and a sender that delivers to the waits it
-- finds or else stores the event, are so serialised: whichever comes second sees what
-- the first committed, so an event is never stored while a run waits for it, and never
-- taken by two waiters. A wait changes state only under that lock, and a run row's
-- wake_seq bump (see 0002) makes a worker that was about to park the run replay instead.

CREATE TABLE tidebase.keyed_events (
  id          uuid PRIMARY KEY,
  name        text NOT NULL,
  key         text NOT NULL,
  payload     jsonb NOT NULL,
  status      text NOT NULL CHECK (status IN ('stored', 'delivered', 'consumed')),
  received_by uuid[] NOT NULL DEFAULT '{}',
  sent_at     timestamptz NOT NULL,
  consumed_at timestamptz,
  expires_at  timestamptz NOT NULL
);
-- The next stored event of a (name, key): oldest first.
CREATE INDEX keyed_events_stored ON tidebase.keyed_events (name, key, sent_at, id)
  WHERE status = 'stored';
-- Retention.
CREATE INDEX keyed_events_expiry ON tidebase.keyed_events (expires_at);

CREATE TABLE tidebase.event_waits (
  run_id     uuid NOT NULL REFERENCES tidebase.runs (id) ON DELETE CASCADE,
  -- The history entry that waits, with its ordinal ("payment#2"), and its position.
  name       text NOT NULL,
  position   integer NOT NULL,
  event_name text NOT NULL,
  event_key  text NOT NULL,
  status     text NOT NULL CHECK (status IN ('waiting', 'received', 'timed_out')),
  event_id   uuid,
  payload    jsonb,
  created_at timestamptz NOT NULL,
  expires_at timestamptz,
  closed_at  timestamptz,
  PRIMARY KEY (run_id, name),
  CHECK ((status = 'waiting') = (closed_at IS NULL))
);
-- The waits a send reaches.
CREATE INDEX event_waits_waiting ON tidebase.event_waits (event_name, event_key, run_id)
  WHERE status = 'waiting';
