"""asyncpg errors stop here: ``_translate`` turns them into ``errors.StoreError`` and its
subclasses, keeping the original on ``__cause__``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import asyncpg

from tidebase_async import errors

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.InterfaceError,
    # e.g. "cannot switch to state 15; another operation (2) is in progress": the
    # server ended the session (terminated, idle timeout) and asyncpg is mid-way
    # through noticing; the connection is unusable.
    asyncpg.exceptions.InternalClientError,
    ConnectionError,
    OSError,
    # asyncpg's connect and command timeouts (a host that stopped answering).
    TimeoutError,
)


_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
)


# SQLSTATE 26000 and 42P05 about asyncpg's own statements ("__asyncpg_stmt_N__"): what
# its statement cache meets behind a transaction-mode pooler.
_POOLER_STATEMENT_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.InvalidSQLStatementNameError,
    asyncpg.exceptions.DuplicatePreparedStatementError,
)


@contextlib.contextmanager
def _translate(what: str) -> Any:
    """Turn driver errors into the library's; keep the original on __cause__."""
    try:
        yield
    except errors.TidebaseError:
        raise
    except _CONNECTION_ERRORS as exc:
        raise errors.ConnectionLost(f"{what}: database connection lost: {exc}") from exc
    except asyncpg.exceptions.DataError as exc:
        if type(exc) is not asyncpg.exceptions.DataError:
            raise errors.StoreError(f"{what}: {type(exc).__name__}: {exc}") from exc
        # asyncpg could not encode an argument (a date out of Postgres' range, say): bad
        # input, not a database failure, and another try would fail the same way.
        raise errors.ConfigurationError(f"{what}: a value the database refuses: {exc}") from exc
    except _POOLER_STATEMENT_ERRORS as exc:
        # asyncpg's cached (named) prepared statements met a transaction-mode pooler
        # that was not detected: the next transaction ran on another server connection.
        raise errors.ConfigurationError(
            f"{what}: {exc}: this looks like a transaction pooler (PgBouncer, Supavisor) "
            "in front of the database: pass Tidebase(pooled=True) or set TIDEBASE_POOLED=1"
        ) from exc
    except asyncpg.PostgresError as exc:
        raise errors.StoreError(f"{what}: {type(exc).__name__}: {exc}") from exc
