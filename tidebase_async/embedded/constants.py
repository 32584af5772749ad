"""Shared settings of the embedded Postgres: data directory, port, advice, logger."""

from __future__ import annotations

import logging

# The package's name, as when the embedded Postgres was one module.
logger = logging.getLogger("tidebase_async.embedded")

DEFAULT_DATA_DIR = ".tidebase"
PORT = 5432
"""Names the socket file ``.s.PGSQL.5432``; the server never listens on TCP."""

DSN_HINT = "or pass a DSN to use your own Postgres server"
