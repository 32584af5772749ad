"""Webhook signatures: ``Tidebase-Signature: t=<unix>,v1=<hex hmac_sha256(secret, "<t>." + body)>``.

Several ``v1=`` values may be present (a sender signing with an old and a new secret
while it rotates them); the receiver accepts the request when any of them matches any
of its secrets. Comparisons are constant-time; a timestamp more than ``TOLERANCE_S``
away from the receiver's clock is refused (replays of old deliveries).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence

from tidebase_async import errors

SIGNATURE_HEADER = "Tidebase-Signature"
DELIVERY_HEADER = "Tidebase-Delivery"
TOLERANCE_S = 300
_MAX_HEADER = 4096


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    message = str(timestamp).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def sign(secrets: str | Sequence[str], body: bytes, *, timestamp: int | None = None) -> str:
    """The ``Tidebase-Signature`` header value for ``body`` (one ``v1`` per secret)."""
    keys = [secrets] if isinstance(secrets, str) else list(secrets)
    if not keys or not all(keys):
        raise errors.ConfigurationError("signing needs at least one non-empty secret")
    t = int(time.time()) if timestamp is None else int(timestamp)
    return ",".join([f"t={t}", *(f"v1={_digest(k, t, body)}" for k in keys)])


def verify(
    header: str | None,
    body: bytes,
    secrets: str | Sequence[str],
    *,
    now: float | None = None,
    tolerance_s: float = TOLERANCE_S,
) -> int:
    """Check a signature header; return its timestamp.

    Raises:
        SignatureError: missing, malformed, stale (or from the future) beyond the
            tolerance, or no ``v1`` matches a secret. The message says which, never
            the expected value.
    """
    # An empty secret is no secret: anyone can compute its HMAC. Never accepted.
    keys = [k for k in ([secrets] if isinstance(secrets, str) else secrets) if k]
    if not keys:
        raise errors.SignatureError("no webhook secret is configured: refusing the request")
    if not header:
        raise errors.SignatureError(f"missing {SIGNATURE_HEADER} header")
    if len(header) > _MAX_HEADER:
        raise errors.SignatureError(f"{SIGNATURE_HEADER} header is too long")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise errors.SignatureError(f"malformed {SIGNATURE_HEADER} header")
        if key == "t":
            if (
                timestamp is not None
                or not value.isascii()
                or not value.isdigit()
                or len(value) > 12
            ):
                raise errors.SignatureError(f"malformed timestamp in {SIGNATURE_HEADER}")
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        raise errors.SignatureError(f"{SIGNATURE_HEADER} needs t= and at least one v1=")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise errors.SignatureError(
            f"signature timestamp is {abs(current - timestamp):.0f}s away from now "
            f"(tolerance {tolerance_s:.0f}s)"
        )
    matched = False
    for key in keys:
        expected = _digest(key, timestamp, body)
        for candidate in candidates:
            # Every pair is compared, matched or not: the time taken does not say which.
            matched |= hmac.compare_digest(
                expected.encode("ascii"), candidate.encode("utf-8", "replace")
            )
    if not matched:
        raise errors.SignatureError("signature does not match")
    return timestamp
