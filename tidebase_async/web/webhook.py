"""The inbound webhook (``tide.webhook()``): signed ``run.resume`` requests.

Payload: ``{"type": "run.resume", "run_id": ..., "workflow": ..., "reason": ...,
"attempt": n}``, signed as ``signing`` describes. The run is handed to a worker (its
queue is woken; the reconciler has requeued it) or, with ``execute=True``, executed in
the request, resuming from its checkpoints. Missing, bad or stale signature: 401 (also
when no secret is configured: unsigned requests are never accepted). Unknown type: 400.
Unknown workflow or run: 404.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from uuid import UUID

import msgspec

from tidebase_async import errors
from tidebase_async._util.signing import verify
from tidebase_async.web.core import (
    SMALL_BODY,
    HttpError,
    HttpRequest,
    HttpResponse,
    error_for,
    json_response,
)

if TYPE_CHECKING:
    from tidebase_async.client.tidebase import Tidebase


class RunResume(msgspec.Struct, kw_only=True):
    type: str
    run_id: UUID
    workflow: str
    reason: str | None = None
    attempt: int | None = None


class WebhookHandler:
    """Handles one webhook request; never raises (errors become JSON responses)."""

    def __init__(self, tide: Tidebase, *, execute: bool) -> None:
        self._tide = tide
        self._execute = execute

    async def handle(self, request: HttpRequest) -> HttpResponse:
        try:
            return await self._handle(request)
        except Exception as exc:
            return error_for(exc)

    def admit(self, request: HttpRequest) -> int:
        """A POST with a signature header, while a secret is configured: its body (a
        small JSON envelope) may be read. Everything else is refused unread."""
        if request.method != "POST":
            raise HttpError(405, "method_not_allowed", "the webhook takes POST")
        if not self._tide.webhook_secret:
            raise HttpError(
                401,
                "unauthorized",
                "no webhook secret is configured (Tidebase(webhook_secret=...) or "
                "TIDEBASE_WEBHOOK_SECRET): refusing unsigned requests",
            )
        if not request.headers.get("tidebase-signature"):
            raise HttpError(401, "unauthorized", "missing Tidebase-Signature header")
        return SMALL_BODY

    async def _handle(self, request: HttpRequest) -> HttpResponse:
        self.admit(request)
        secret = self._tide.webhook_secret
        assert secret is not None
        verify(request.headers.get("tidebase-signature"), request.body, secret)
        try:
            envelope: Any = msgspec.json.decode(request.body)
        except msgspec.DecodeError as exc:
            raise HttpError(400, "bad_request", f"the body is not valid JSON: {exc}") from None
        if not isinstance(envelope, dict) or not isinstance(envelope.get("type"), str):
            raise HttpError(400, "bad_request", "the body must be a JSON object with a 'type'")
        if envelope["type"] != "run.resume":
            raise HttpError(400, "unknown_type", f"unknown webhook type {envelope['type']!r:.60}")
        try:
            resume = msgspec.json.decode(request.body, type=RunResume)
        except msgspec.ValidationError as exc:
            raise HttpError(400, "bad_request", f"invalid run.resume: {exc}") from None
        wf = self._tide.workflows.get(resume.workflow)
        if wf is None:
            raise HttpError(
                404, "unknown_workflow", f"workflow {resume.workflow!r:.80} is not registered here"
            )
        row = await self._tide.runs.get(resume.run_id)  # RunNotFound
        if row.workflow != resume.workflow:
            raise HttpError(400, "bad_request", f"run {resume.run_id} is a run of {row.workflow!r}")
        if self._execute:
            try:
                output = await self._tide.run(resume.workflow, run_id=resume.run_id)
            except (errors.RunFailed, errors.RunCancelled) as exc:
                status = "failed" if isinstance(exc, errors.RunFailed) else "cancelled"
                return json_response(200, {"id": resume.run_id, "status": status})
            return json_response(
                200, {"id": resume.run_id, "status": "completed", "output": output}
            )
        if row.status == "queued":
            self._tide.notifier.queues_changed(row.queue)
        return json_response(202, {"id": resume.run_id, "status": row.status})
