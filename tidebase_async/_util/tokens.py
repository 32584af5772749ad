"""Gate resolve tokens and links: random, single-use, stored only as SHA-256."""

from __future__ import annotations

import hashlib
import secrets
from urllib.parse import quote
from uuid import UUID


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def resolve_url(base: str | None, run_id: UUID, name: str) -> str | None:
    """The HTTP API route that resolves gate ``name`` of run ``run_id`` under ``base``
    (``Tidebase(public_url=...)``); None without a base."""
    if not base:
        return None
    return f"{base.rstrip('/')}/runs/{run_id}/gates/{quote(name, safe='')}/resolve"
