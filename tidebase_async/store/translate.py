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
)


_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
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
    except asyncpg.PostgresError as exc:
        raise errors.StoreError(f"{what}: {type(exc).__name__}: {exc}") from exc
