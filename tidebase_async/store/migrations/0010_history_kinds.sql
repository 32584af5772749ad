-- tidebase-async schema, version 10: two more kinds of history entry. ``event``: a run
-- waited for an event by key (run.wait_for_event) and what it received; ``patch``: a
-- run passed a patch point (run.patched) with the new code, so every replay answers
-- the same. A replay compares kind and name, as for the other kinds.

ALTER TABLE tidebase.steps DROP CONSTRAINT steps_kind_check;
ALTER TABLE tidebase.steps ADD CONSTRAINT steps_kind_check
  CHECK (kind IN ('step', 'sleep', 'gate', 'child', 'fanout', 'event', 'patch'));
