"""``tide.gates``: resolve, read and hand out approval gates.

A gate is decided exactly once: resolution is one conditional UPDATE on the pending
gate inside a transaction that holds its run's row lock, so of any number of
concurrent resolves the first wins and the others get ``GateAlreadyResolved``. The
decision, actor, payload and time are stored and the run, if it waits, goes back to
its queue in the same transaction.

Resolve tokens let someone without database access (a reviewer following a link)
decide one gate once: ``token()`` issues one, only its SHA-256 is stored, and it is
consumed by the decision (or replaced by the next ``token()``).
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from tidebase_async import errors
from tidebase_async._util import codec
from tidebase_async._util.checks import check_name, check_text
from tidebase_async._util.tokens import hash_token, new_token, resolve_url
from tidebase_async.client.runs import as_uuid, cursor_time, stored_json
from tidebase_async.models import GateInfo

if TYPE_CHECKING:
    from tidebase_async.client.tidebase import Tidebase
    from tidebase_async.store import GateResolution, GateRow

GATE_STATUSES = ("pending", "approved", "rejected", "expired", "cancelled")
_MAX_TOKEN_LENGTH = 200


class Gates:
    """``tide.gates``."""

    def __init__(self, tide: Tidebase) -> None:
        self._tide = tide

    async def resolve(
        self,
        run_id: UUID | str,
        name: str,
        *,
        approved: bool,
        actor: str | None = None,
        payload: Any = None,
        token: str | None = None,
    ) -> GateInfo:
        """Approve or reject the pending gate ``name`` of run ``run_id``, exactly once,
        and resume the run. With ``token``, the gate's resolve token must match (it is
        single-use); without one the caller is trusted (it holds database access).

        Returns the gate as decided.

        Raises:
            RunNotFound, GateNotFound: no such run, or no such gate of it.
            GateAlreadyResolved: the gate was decided, expired or closed with its run
                before (``.status`` says which); the first decision stands.
            GateTokenInvalid: ``token`` is wrong, used or was never issued.
            ConfigurationError, SerializationError: bad arguments; nothing is stored.
        """
        rid = as_uuid(run_id)
        check_name("gate", name)
        if not isinstance(approved, bool):
            raise errors.ConfigurationError(
                f"approved must be True or False, got {type(approved).__name__}"
            )
        check_text("actor", actor)
        if token is not None and (not isinstance(token, str) or len(token) > _MAX_TOKEN_LENGTH):
            raise errors.GateTokenInvalid(f"gate {name!r} of run {rid}: malformed token")
        store = self._tide.store
        data = (
            None
            if payload is None
            else codec.encode(payload, where="gate payload", max_size=self._tide.max_payload_bytes)
        )
        decision = "approved" if approved else "rejected"
        result = await store.resolve_gate(
            run_id=rid,
            name=name,
            status=decision,
            actor=actor,
            payload=data,
            token_hash=None if token is None else hash_token(token),
            check_token=token is not None,
        )
        refusal = _refusal(result, rid, name)
        # A gate found expired, or orphaned by its finished run, was closed: that
        # changed its run too.
        if refusal is None or result.outcome in ("run_finished", "expired"):
            self._tide.notifier.runs_changed(rid)
            if result.queue is not None:
                self._tide.notifier.queues_changed(result.queue)
        if refusal is not None:
            raise refusal
        return await self.get(rid, name)

    async def get(self, run_id: UUID | str, name: str) -> GateInfo:
        """The gate ``name`` of run ``run_id`` (never its token).

        Raises:
            GateNotFound: the run has no such gate (or does not exist).
        """
        rid = as_uuid(run_id)
        check_name("gate", name)
        row = await self._tide.store.get_gate(rid, name)
        if row is None:
            raise errors.GateNotFound(f"run {rid} has no gate {name!r}")
        return self.info(row)

    async def list(
        self,
        *,
        status: str | None = "pending",
        run_id: UUID | str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> list[GateInfo]:
        """Gates in creation order, ``pending`` ones by default (``status=None``: all).
        Pass the ``cursor_of`` the last item as ``cursor`` for the next page.

        Raises:
            ConfigurationError: unknown status, bad limit or cursor.
        """
        if status is not None and status not in GATE_STATUSES:
            raise errors.ConfigurationError(
                f"unknown gate status {status!r}; one of {', '.join(GATE_STATUSES)}"
            )
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise errors.ConfigurationError(f"limit must be an int in 1..1000, got {limit!r}")
        rows = await self._tide.store.list_gates(
            status=status,
            run_id=None if run_id is None else as_uuid(run_id),
            after=None if cursor is None else _parse_cursor(cursor),
            limit=limit,
        )
        return [self.info(row) for row in rows]

    @staticmethod
    def cursor_of(gate: GateInfo) -> str:
        """The cursor that continues a listing after ``gate``."""
        raw = f"{gate.created_at.isoformat() if gate.created_at else ''}|{gate.run_id}|{gate.name}"
        return base64.urlsafe_b64encode(raw.encode("utf-8")).decode("ascii")

    async def token(self, run_id: UUID | str, name: str) -> str:
        """Issue a single-use resolve token for a pending gate, for someone without
        database access (the HTTP route accepts it instead of the API key). Only its
        hash is stored; issuing another replaces it; the decision consumes it.

        Raises:
            GateNotFound: no such gate.
            GateAlreadyResolved: the gate is not pending.
        """
        rid = as_uuid(run_id)
        check_name("gate", name)
        token = new_token()
        if await self._tide.store.set_gate_token(
            run_id=rid, name=name, token_hash=hash_token(token)
        ):
            return token
        gate = await self.get(rid, name)  # raises GateNotFound
        raise errors.GateAlreadyResolved(
            f"gate {name!r} of run {rid} is already {gate.status}", status=gate.status
        )

    def info(self, row: GateRow) -> GateInfo:
        return GateInfo(
            run_id=row.run_id,
            name=row.name,
            status=row.status,
            prompt=row.prompt,
            data=stored_json(row.data),
            decision=row.decision,
            actor=row.actor,
            payload=stored_json(row.payload),
            resolve_url=self.resolve_url(row.run_id, row.name),
            created_at=row.created_at,
            resolved_at=row.resolved_at,
            expires_at=row.expires_at,
        )

    def resolve_url(self, run_id: UUID, name: str) -> str | None:
        """Where an outside reviewer resolves the gate (the HTTP API's route under
        ``Tidebase(public_url=...)``); None without a public URL."""
        return resolve_url(self._tide.public_url, run_id, name)


def _refusal(result: GateResolution, rid: UUID, name: str) -> errors.TidebaseError | None:
    """Why ``resolve`` decided nothing, as the error to raise; None when it decided."""
    what = f"gate {name!r} of run {rid}"
    if result.outcome == "no_run":
        return errors.RunNotFound(f"no run with id {rid}")
    if result.outcome == "no_gate":
        return errors.GateNotFound(
            f"run {rid} has no gate {name!r} (a gate exists once its run reached it; "
            "names reached again carry ordinals: 'approve#2')"
        )
    if result.outcome == "bad_token":
        return errors.GateTokenInvalid(
            f"{what}: the token does not match (wrong, already used, or never issued)"
        )
    if result.outcome == "closed":
        return errors.GateAlreadyResolved(
            f"{what} is already {result.status}; the first decision stands",
            status=result.status,
        )
    if result.outcome in ("run_finished", "expired"):
        reason = (
            f"its run is {result.status}; the gate was closed"
            if result.outcome == "run_finished"
            else "it expired before this decision"
        )
        return errors.GateAlreadyResolved(
            f"{what} cannot be resolved: {reason}",
            status="cancelled" if result.outcome == "run_finished" else "expired",
        )
    return None


def _parse_cursor(cursor: str) -> tuple[datetime, UUID, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor.encode("ascii")).decode("utf-8")
        at, run_id, name = raw.split("|", 2)
        return cursor_time(at), UUID(run_id), name
    except (ValueError, UnicodeError, AttributeError, OverflowError) as exc:
        raise errors.ConfigurationError(f"invalid gate cursor {cursor!r:.60}") from exc
