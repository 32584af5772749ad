"""Webhook URLs: the check that admits one (http or https, a host, a valid port, no
whitespace or control characters) and its redacted form for logs, errors and the API
(scheme, host and port only: paths and queries of hook URLs often hold a secret)."""

from __future__ import annotations

from urllib.parse import urlsplit

from tidebase_async import errors

MAX_URL_LENGTH = 2048


def check_http_url(url: object, *, where: str) -> str:
    """``url`` if it is an http(s) URL a delivery can be sent to.

    Raises:
        ConfigurationError: names ``where``, the redacted URL and what is wrong.
    """
    if not isinstance(url, str):
        raise errors.ConfigurationError(f"{where}: a URL must be a str, got {type(url).__name__}")
    problem = _problem(url)
    if problem is not None:
        raise errors.ConfigurationError(f"{where}: {redact_url(url)} is not usable: {problem}")
    return url


def _problem(url: str) -> str | None:
    if len(url) > MAX_URL_LENGTH:
        return f"longer than {MAX_URL_LENGTH} characters"
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        return "it contains whitespace or control characters"
    try:
        url.encode("utf-8")
        parts = urlsplit(url)
        port = parts.port  # ValueError: not a number, or out of 0..65535
    except (ValueError, UnicodeEncodeError) as exc:
        return f"it does not parse ({exc})"
    if parts.scheme not in ("http", "https"):
        return "the scheme must be http or https"
    if not parts.hostname:
        return "it has no host"
    if port == 0:
        return "port 0 cannot be sent to"
    return None


def redact_url(url: str) -> str:
    """Scheme, host and port of ``url`` (``/…`` when it has more); ``<url>`` for
    anything that does not parse. Never raises."""
    try:
        parts = urlsplit(url)
        port = parts.port
        hostname = parts.hostname
    except (ValueError, TypeError, AttributeError):
        return "<url>"
    if not parts.scheme.isalpha() or not hostname:
        return "<url>"
    if ":" in hostname:
        hostname = f"[{hostname}]"  # IPv6
    host = hostname if port is None else f"{hostname}:{port}"
    tail = "/…" if (parts.path not in ("", "/") or parts.query) else ""
    return f"{parts.scheme}://{host}{tail}"
