"""Webhook signatures (``Tidebase-Signature``): what is accepted and what never is."""

from __future__ import annotations

import hashlib
import hmac
import time

import pytest

from tidebase_async import ConfigurationError, SignatureError
from tidebase_async.web import sign, verify

BODY = b'{"type":"run.resume"}'


def _forged_with(secret: str, t: int) -> str:
    digest = hmac.new(secret.encode(), f"{t}.".encode() + BODY, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


@pytest.mark.parametrize("secrets", ["", [""], ["", ""], []])
def test_an_empty_secret_never_verifies_a_signature(secrets: str | list[str]) -> None:
    """Regression: ``verify(header, body, "")`` accepted a signature made with an empty
    key, which anyone can compute."""
    header = _forged_with("", int(time.time()))
    with pytest.raises(SignatureError, match="no webhook secret"):
        verify(header, BODY, secrets)


def test_empty_secrets_beside_a_real_one_are_ignored() -> None:
    t = int(time.time())
    assert verify(sign("real", BODY, timestamp=t), BODY, ["", "real"]) == t
    with pytest.raises(SignatureError, match="does not match"):
        verify(_forged_with("", t), BODY, ["", "real"])


@pytest.mark.parametrize("secrets", ["", [""], ["a", ""], []])
def test_signing_refuses_an_empty_secret(secrets: str | list[str]) -> None:
    with pytest.raises(ConfigurationError, match="non-empty secret"):
        sign(secrets, BODY)


def test_a_signature_verifies_and_a_changed_body_does_not() -> None:
    header = sign("s3cret", BODY)
    verify(header, BODY, "s3cret")
    with pytest.raises(SignatureError):
        verify(header, BODY + b" ", "s3cret")
