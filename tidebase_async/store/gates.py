"""Gates: open, expire, resolve, tokens, reads."""

from __future__ import annotations

import hmac
from datetime import datetime
from uuid import UUID

import msgspec

from tidebase_async import errors
from tidebase_async.store.base import StoreBase, read_retrying
from tidebase_async.store.records import GateResolution
from tidebase_async.store.rows import GateDetail, GateRow, row_to
from tidebase_async.store.sql import Q
from tidebase_async.store.translate import _translate


class GatesMixin(StoreBase):
    """Gates of waiting runs, decided exactly once."""

    async def open_gate(
        self,
        *,
        run_id: UUID,
        worker_id: str,
        attempt: int,
        name: str,
        prompt: str | None,
        data: bytes | None,
        channels: bytes | None,
        timeout_s: float | None,
        token_hash: bytes | None = None,
        delivery: bytes | None = None,
    ) -> GateDetail:
        """Create the gate once (fenced) and return it as stored now. A new gate with
        channels gets ``token_hash`` and one ``delivery`` (JSON payload) per channel."""
        with _translate("open gate"):
            async with self._pool.acquire() as conn:
                row = await conn.fetchrow(
                    Q["open_gate"],
                    run_id,
                    worker_id,
                    attempt,
                    name,
                    prompt,
                    data,
                    channels,
                    timeout_s,
                    token_hash,
                    delivery,
                )
                if not row["fenced"]:
                    raise errors.LeaseLost(f"run {run_id} is no longer leased to this worker")
                gate = await conn.fetchrow(Q["get_gate"], run_id, name)
        return row_to(GateDetail, gate)

    async def expire_gate(self, *, run_id: UUID, worker_id: str, attempt: int, name: str) -> bool:
        """Expire the claim's run's due gate (unless a resolution won); run row first,
        then gate, as resolutions lock them."""
        with _translate("expire gate"):
            async with self._pool.acquire() as conn, conn.transaction():
                if await conn.fetchval(Q["lock_claim"], run_id, worker_id, attempt) is None:
                    raise errors.LeaseLost(f"run {run_id} is no longer leased to this worker")
                count = await conn.fetchval(Q["expire_gate"], run_id, name)
        return bool(count)

    @read_retrying
    async def get_gate(self, run_id: UUID, name: str) -> GateDetail | None:
        with _translate("get gate"):
            row = await self._pool.fetchrow(Q["get_gate"], run_id, name)
        return None if row is None else row_to(GateDetail, row)

    async def resolve_gate(
        self,
        *,
        run_id: UUID,
        name: str,
        status: str,
        actor: str | None,
        payload: bytes | None,
        token_hash: bytes | None,
        check_token: bool,
    ) -> GateResolution:
        """Decide a pending gate exactly once and wake its run, in one transaction that
        holds the run's row lock throughout (so the run cannot suspend or finish in
        between). Nothing changes unless the outcome is ``resolved`` (or the gate is
        found expired or orphaned, which this closes).

        ``check_token``: the caller presented a token; ``token_hash`` must match the
        stored hash (compared in constant time).
        """
        with _translate("resolve gate"):
            async with self._pool.acquire() as conn, conn.transaction():
                run = await conn.fetchrow(Q["lock_run"], run_id)
                # With a token (an outsider's request) the gate is looked up even when
                # the run does not exist: the same statements whatever is found, so the
                # time taken does not tell which runs exist.
                gate = (
                    await conn.fetchrow(Q["lock_gate"], run_id, name)
                    if run is not None or check_token
                    else None
                )
                if run is None:
                    return GateResolution(outcome="no_run")
                if gate is None:
                    return GateResolution(outcome="no_gate")
                if gate["status"] != "pending":
                    return GateResolution(outcome="closed", status=gate["status"])
                if check_token:
                    stored = gate["token_hash"]
                    if (
                        stored is None
                        or token_hash is None
                        or not hmac.compare_digest(bytes(stored), token_hash)
                    ):
                        return GateResolution(outcome="bad_token")
                if run["status"] not in ("queued", "running", "waiting"):
                    # An orphan: its run ended without deciding it.
                    await conn.fetchrow(
                        Q["close_gate"], run_id, name, "cancelled", "cancelled", None, None
                    )
                    return GateResolution(outcome="run_finished", status=run["status"])
                decided = "expired" if gate["due"] else status
                await conn.fetchrow(
                    Q["close_gate"],
                    run_id,
                    name,
                    decided,
                    decided,
                    None if decided == "expired" else actor,
                    None if decided == "expired" else payload,
                )
                event: dict[str, str | None] = {"name": name, "decision": decided}
                if decided != "expired":
                    event["actor"] = actor
                woke = await conn.fetchrow(
                    Q["wake_run"],
                    run_id,
                    "gate.expired" if decided == "expired" else "gate.resolved",
                    msgspec.json.encode(event),
                )
                if gate["channels"] is not None:
                    await conn.execute(
                        Q["gate_deliveries"],
                        run_id,
                        True,
                        "gate.expired" if decided == "expired" else "gate.resolved",
                        gate["channels"],
                        msgspec.json.encode(
                            {
                                "type": "gate.expired" if decided == "expired" else "gate.resolved",
                                "run_id": str(run_id),
                                **event,
                            }
                        ),
                    )
        woken = woke is not None and woke["before_status"] == "waiting"
        return GateResolution(
            outcome="expired" if decided == "expired" else "resolved",
            status=decided,
            queue=run["queue"] if woken else None,
        )

    async def set_gate_token(self, *, run_id: UUID, name: str, token_hash: bytes) -> bool:
        with _translate("issue gate token"):
            return bool(await self._pool.fetchval(Q["set_gate_token"], run_id, name, token_hash))

    @read_retrying
    async def list_gates(
        self,
        *,
        status: str | None,
        run_id: UUID | None,
        after: tuple[datetime, UUID, str] | None,
        limit: int,
    ) -> list[GateRow]:
        with _translate("list gates"):
            rows = await self._pool.fetch(
                Q["list_gates"],
                status,
                run_id,
                after[0] if after else None,
                after[1] if after else None,
                after[2] if after else None,
                limit,
            )
        return [row_to(GateRow, row) for row in rows]

    @read_retrying
    async def get_run_gates(self, run_id: UUID) -> list[GateRow]:
        with _translate("get gates"):
            rows = await self._pool.fetch(Q["get_run_gates"], run_id)
        return [row_to(GateRow, row) for row in rows]
