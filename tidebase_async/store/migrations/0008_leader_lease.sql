-- tidebase-async schema, version 8: leader leases.

-- Leader election that survives a transaction-mode pooler (PgBouncer, Supavisor), where
-- a session advisory lock would belong to whichever server connection a transaction
-- ran on. A holder takes or renews a lease in one statement (see take_lease in
-- queries.sql) and releases it when it stops; a crashed or frozen holder's lease is
-- taken over once expires_at has passed.
CREATE TABLE tidebase.leases (
  name        text PRIMARY KEY,
  holder      text NOT NULL,
  acquired_at timestamptz NOT NULL,
  expires_at  timestamptz NOT NULL
);
