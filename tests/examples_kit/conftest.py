"""The examples' tests, written with the testing kit (``tidebase_async.testing``) as an
application's own tests would be. The kit's plugin is loaded by tests/conftest.py
(pytest takes ``pytest_plugins`` only from the top conftest); here its server is this
session's: the same Postgres the other tests use, not a second, embedded one."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tidebase_server_dsn(server_dsn: str) -> str:
    """The kit's server: the project's (``TIDEBASE_TEST_DSN``, else 127.0.0.1:5432)."""
    return server_dsn
