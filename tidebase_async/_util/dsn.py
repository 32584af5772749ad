"""DSN helpers: describing a DSN for messages without its password."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit


def describe_dsn(dsn: str) -> str:
    """'host H port P database D' for error messages (never the password)."""
    try:
        parts = urlsplit(dsn)
        query = parse_qs(parts.query)
        host = parts.hostname or (query.get("host") or ["localhost"])[0]
        port = parts.port or int((query.get("port") or ["5432"])[0])
        database = parts.path.lstrip("/") or (query.get("dbname") or [""])[0] or "(default)"
    except ValueError:
        return "an unparsable DSN"
    return f"host {host} port {port} database {database}"
