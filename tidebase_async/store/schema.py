"""Schema migrations."""

from __future__ import annotations

import time
from collections.abc import Callable

import asyncpg

from tidebase_async import errors
from tidebase_async.models import MigrationStep
from tidebase_async.store.base import StoreBase, logger
from tidebase_async.store.sql import Q, migrations
from tidebase_async.store.translate import _translate

# Advisory lock key for migrations: hashtext('tidebase.migrate') computed once, fixed.
_MIGRATION_LOCK = 7_321_094_451_006_132_811


class SchemaMixin(StoreBase):
    """Schema version and migrations."""

    async def migrate(self, *, progress: Callable[[MigrationStep], None] | None = None) -> int:
        """Apply pending migrations; return the schema version.

        Safe when many processes start at once, and through a transaction-mode pooler:
        each migration commits with its version row in one transaction that holds a
        transaction advisory lock and re-reads the version once it has it, so every
        migration is applied exactly once whoever applies it.

        Raises:
            SchemaVersionError: the database was migrated by a newer tidebase-async.
        """
        known = migrations()
        latest = known[-1][0]
        with _translate("migrating"):
            async with self._pool.acquire() as conn:
                current = await self._version(conn)
                self._check_version(current, latest)
                while current < latest:
                    began = time.perf_counter()
                    applied = await self._migrate_next(conn, known)
                    if applied is None:
                        return latest
                    version, name = applied
                    current = version
                    logger.info("applied migration %04d_%s", version, name)
                    if progress is not None:
                        progress(
                            MigrationStep(
                                version=version,
                                name=f"{version:04d}_{name}",
                                latest=latest,
                                seconds=time.perf_counter() - began,
                            )
                        )
                return current

    async def _migrate_next(
        self, conn: asyncpg.Connection, known: list[tuple[int, str, str]]
    ) -> tuple[int, str] | None:
        """Apply the migration after the current version, in one transaction under the
        migration lock; (version, name) applied, or None when another process has
        applied them all meanwhile.

        A transaction lock, not a session one: through a pooler a session lock would
        stay with whichever server connection took it. Its key is the one earlier
        releases took as a session lock, and the two kinds conflict, so processes of
        both kinds still migrate one at a time."""
        latest = known[-1][0]
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute(
                "CREATE SCHEMA IF NOT EXISTS tidebase;"
                "CREATE TABLE IF NOT EXISTS tidebase.schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            current = await self._version(conn)
            self._check_version(current, latest)
            if current >= latest:
                return None
            version, name, sql = known[current]
            await conn.execute(sql)
            await conn.execute(
                "INSERT INTO tidebase.schema_migrations (version, name) VALUES ($1, $2)",
                version,
                name,
            )
        return version, name

    @staticmethod
    async def _version(conn: asyncpg.Connection) -> int:
        exists = await conn.fetchval("SELECT to_regclass('tidebase.schema_migrations')")
        if exists is None:
            return 0
        return int(await conn.fetchval(Q["schema_version"]) or 0)

    @staticmethod
    def _check_version(current: int, latest: int) -> None:
        if current > latest:
            raise errors.SchemaVersionError(
                f"the database schema is at version {current}, but this tidebase-async "
                f"knows versions up to {latest}: it was migrated by a newer release. "
                "Upgrade tidebase-async; refusing to touch the data."
            )
