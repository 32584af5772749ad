-- tidebase-async schema, version 16: less work for the server per run and per step.
--
-- 1. Room on every page of runs for updated versions. A checkpoint updates its run's
--    row (event_seq, step_count, updated_at) and no indexed column, so the new version
--    can be a heap-only tuple (HOT: no index entries, the old one pruned from the page)
--    when its page has room. Pages filled to 100% (the default) rarely do: in a drain of
--    10-step runs at concurrency 128 a third of the updates were HOT; with pages filled
--    to 80% on insert, three quarters. Claims and completions change indexed columns
--    (status, leases), so they are never HOT. Applies to pages written from now on.
ALTER TABLE tidebase.runs SET (fillfactor = 80);

-- 2. No foreign keys on the rows every run writes most: each event and checkpoint
--    inserted made the server check its run (a trigger and a key-share lookup per row),
--    about a quarter of the server's time per 10-step run; and every run inserted
--    queued a trigger per self-reference (parent, fork source), a tenth of a batch
--    enqueue's time, even when both are NULL. What the keys guaranteed holds by
--    construction instead:
--    - events and steps rows are only inserted by the statement that inserts their run
--      or updates it (and so holds its row lock until commit): the run exists, and
--      retention (the only statement that deletes runs, prune_finished: finished runs,
--      FOR UPDATE SKIP LOCKED) cannot remove it meanwhile;
--    - a child is inserted by its parent's execution (the parent is running, so it is
--      not pruned); a fork locks its source (FOR KEY SHARE, fork_run), which retention
--      then skips;
--    - retention deletes the pruned runs' events and steps and clears their children's
--      parent_id and their forks' forked_from itself, in the same statement (what
--      ON DELETE CASCADE and SET NULL did).
--    A run deleted by hand leaves its events and checkpoints behind: delete them with
--    it (by run_id).
ALTER TABLE tidebase.events DROP CONSTRAINT events_run_id_fkey;
ALTER TABLE tidebase.steps DROP CONSTRAINT steps_run_id_fkey;
ALTER TABLE tidebase.runs DROP CONSTRAINT runs_parent_id_fkey;
ALTER TABLE tidebase.runs DROP CONSTRAINT runs_forked_from_fkey;
