-- tidebase-async schema, version 7: what a history entry did to the run's state.

ALTER TABLE tidebase.steps
  -- The run's state version when the entry was recorded: the state as of that point
  -- of the history (forks start from it).
  ADD COLUMN state_version integer,
  -- The entry's own code wrote the state (a patch inside a step): a replay, which does
  -- not execute the entry, takes the state as of that version instead.
  ADD COLUMN wrote_state boolean NOT NULL DEFAULT false;
