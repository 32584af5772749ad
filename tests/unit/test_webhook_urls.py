"""Webhook URLs of every shape: the check admits only what a delivery can be sent to,
and redacting any string for a log line never raises and never shows a path or query
(where hook URLs keep their secrets)."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidebase_async import ConfigurationError
from tidebase_async._util.checks import check_channels
from tidebase_async._util.urls import check_http_url, redact_url

pieces = st.sampled_from(
    ["http://", "https://", "ftp://", "//", "http:", "[", "]", "::1", "@", ":", "%", "%31",
     "h", "example.com", "127.0.0.1", ":99999", ":0", ":80", "/", "/path?token=s3cret", "#",
     " ", "\x00", "\x7f", "é", "\ud800", "?q=1", "user:pw@"]
)  # fmt: skip
url_like = st.lists(pieces, max_size=8).map("".join) | st.text(max_size=60)


@settings(max_examples=500, deadline=None)
@given(url=url_like)
def test_the_check_admits_only_sendable_urls_and_redaction_is_total(url: str) -> None:
    shown = redact_url(url)  # never raises
    assert "s3cret" not in shown and "token=" not in shown
    try:
        checked = check_http_url(url, where="webhooks")
    except ConfigurationError as exc:
        assert "webhooks" in str(exc)
        assert "s3cret" not in str(exc)
        return
    parts = urlsplit(checked)
    assert parts.scheme in ("http", "https")
    assert parts.hostname
    assert parts.port is None or 1 <= parts.port <= 65535
    assert shown.startswith(parts.scheme + "://")


@pytest.mark.parametrize(
    "channels", ["http://x.example/hook", {"url": "http://x.example"}, None, 42, [42], [None]]
)
def test_channels_must_be_a_list_of_urls(channels: object) -> None:
    with pytest.raises(ConfigurationError, match="gate"):
        check_channels(channels, where="gate")


def test_good_urls_pass_unchanged() -> None:
    urls = ["https://hooks.example/a?b=c", "http://127.0.0.1:8080/x", "http://[::1]:9/x"]
    assert check_channels(urls, where="webhooks") == urls
    assert redact_url("http://[::1]:9/x") == "http://[::1]:9/…"
