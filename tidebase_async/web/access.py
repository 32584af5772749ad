"""Who may call the HTTP surfaces of a Tidebase (the HTTP API and the MCP server).

With an API key (``Tidebase(api_key=...)`` or ``TIDEBASE_API_KEY``) a caller needs
``Authorization: Bearer <key>``, compared in constant time. Without one, only requests
addressed to a loopback host (or one of ``allowed_hosts``) and, when a browser says
where a request comes from (Origin), only from such a host are served: another site
cannot drive the API, and DNS rebinding cannot read it.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from tidebase_async.web.core import HttpError, HttpRequest, host_of, is_loopback_host

if TYPE_CHECKING:
    from tidebase_async.client.tidebase import Tidebase


def check_origin(tide: Tidebase, request: HttpRequest) -> None:
    """Without an API key, refuse a request addressed to (or sent from) a host that is
    neither loopback nor one of ``tide.allowed_hosts``; with a key, allow any.

    Raises:
        HttpError: 403 ``forbidden_host`` or ``forbidden_origin``.
    """
    allowed = tide.allowed_hosts
    if tide.api_key or "*" in allowed:
        return
    host = host_of(request.headers.get("host", ""))
    if not (is_loopback_host(host) or host.lower() in allowed):
        raise HttpError(
            403,
            "forbidden_host",
            f"no API key is set, so only loopback hosts are served, not {host!r:.80}: "
            "set an API key (TIDEBASE_API_KEY), or name the host in allowed_hosts "
            "(TIDEBASE_ALLOWED_HOSTS) when something in front authenticates requests",
        )
    origin = request.headers.get("origin")
    if origin is not None:
        authority = origin.partition("://")[2].partition("/")[0]
        origin_host = host_of(authority)
        if not (is_loopback_host(origin_host) or origin_host.lower() in allowed):
            raise HttpError(403, "forbidden_origin", f"requests from {origin!r:.80} are not served")


def authorize(tide: Tidebase, request: HttpRequest) -> None:
    """With an API key, require ``Authorization: Bearer <key>`` (constant-time compare);
    without one, allow (``check_origin`` guards that case).

    Raises:
        HttpError: 401 ``unauthorized``.
    """
    key = tide.api_key
    if not key:
        return
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    # Header values arrive as text decoded from UTF-8 bytes (surrogateescape keeps
    # bytes that are not UTF-8): encoding them back gives the bytes that were sent.
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode("utf-8", "surrogateescape"), key.encode("utf-8")
    ):
        raise HttpError(
            401, "unauthorized", "a valid 'Authorization: Bearer <api key>' is required"
        )
