"""Framework-neutral HTTP: a request and a response as data, errors as JSON.

The aiohttp and ASGI adapters serve a ``Handler`` in two steps: ``admit`` sees the
request without its body (method, path, query, headers) and either refuses it (an
``HttpError``: unknown route, no credentials, a forbidden Host, a wrong Content-Type)
or says how many body bytes it may carry; only then is the body read, within that
limit, and ``handle`` called. All behaviour lives here and in ``api``/``webhook``,
tested once for both frameworks.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

import msgspec

from tidebase_async import errors

logger = logging.getLogger(__name__)

JSON = "application/json"


class HttpRequest(msgspec.Struct, frozen=True, kw_only=True):
    method: str
    #: Path below the mount point, starting with "/".
    path: str
    #: Query parameters (the first value of each).
    query: dict[str, str] = msgspec.field(default_factory=dict)
    #: Header names lower-cased.
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    body: bytes = b""


class Handler(Protocol):
    """What an ``Endpoint`` serves."""

    def admit(self, request: HttpRequest) -> int:
        """The most body bytes ``request`` (given without its body) may carry.

        Raises:
            HttpError: the request is refused before its body is read.
        """
        ...

    async def handle(self, request: HttpRequest) -> HttpResponse:
        """The response to ``request``, body included; never raises."""
        ...


#: A small JSON body: a gate decision, a queue's settings, a webhook.
SMALL_BODY = 64 * 1024
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def require_json(request: HttpRequest) -> None:
    """POST bodies are JSON and say so: a browser cannot send ``application/json``
    cross-site without a CORS preflight, which nothing here answers.

    Raises:
        HttpError: 415.
    """
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != JSON:
        raise HttpError(
            415, "unsupported_media_type", f"send the body as {JSON} (Content-Type: {JSON})"
        )


def host_of(value: str) -> str:
    """The host of a Host header value or an Origin's authority, without the port."""
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rpartition(":")[0] if value.count(":") == 1 else value


def is_loopback_host(host: str) -> bool:
    return host.lower() in _LOOPBACK


class HttpResponse(msgspec.Struct, kw_only=True):
    status: int
    headers: list[tuple[str, str]] = msgspec.field(default_factory=list)
    body: bytes = b""
    #: Set for streamed responses (server-sent events); ``body`` is then ignored.
    stream: AsyncIterator[bytes] | None = None


class HttpError(Exception):
    """An error response: ``{"error": {"code": ..., "message": ...}}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


_encoder = msgspec.json.Encoder()


def json_response(
    status: int, value: Any, *, headers: list[tuple[str, str]] | None = None
) -> HttpResponse:
    return HttpResponse(
        status=status,
        headers=[("Content-Type", JSON), ("Cache-Control", "no-store"), *(headers or [])],
        body=_encoder.encode(value),
    )


def error_response(status: int, code: str, message: str) -> HttpResponse:
    extra = [("WWW-Authenticate", "Bearer")] if status == 401 else []
    return json_response(status, {"error": {"code": code, "message": message}}, headers=extra)


def error_for(exc: BaseException) -> HttpResponse:
    """The response for an exception raised while handling a request. Messages of our
    own errors are safe to show (they never hold secrets); anything else is a 500 with
    a generic message, logged here."""
    if isinstance(exc, HttpError):
        return error_response(exc.status, exc.code, exc.message)
    if isinstance(exc, errors.PayloadTooLarge):
        return error_response(413, "payload_too_large", str(exc))
    if isinstance(exc, errors.SignatureError):
        return error_response(401, "unauthorized", str(exc))
    if isinstance(exc, errors.NotFoundError):
        return error_response(404, "not_found", str(exc))
    if isinstance(exc, errors.ConflictError):
        return error_response(409, "conflict", str(exc))
    if isinstance(
        exc, errors.ConfigurationError | errors.SerializationError | errors.InvalidSchedule
    ):
        return error_response(400, "bad_request", str(exc))
    if isinstance(exc, errors.StoreError):
        logger.warning("request failed on the database: %s", exc)
        return error_response(503, "unavailable", "the database is unavailable; retry later")
    logger.exception("unexpected error handling a request", exc_info=exc)
    return error_response(500, "internal", "internal error")


def decode_json_body(request: HttpRequest, *, required: bool = True) -> Any:
    """The request's JSON body.

    Raises:
        HttpError: 400 when it is missing (and required) or is not valid JSON.
    """
    if not request.body.strip():
        if required:
            raise HttpError(400, "bad_request", "a JSON body is required")
        return None
    try:
        return msgspec.json.decode(request.body)
    except msgspec.DecodeError as exc:
        raise HttpError(400, "bad_request", f"the body is not valid JSON: {exc}") from None
