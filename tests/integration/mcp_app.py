"""The app of the MCP server tests: ``tidebase mcp tests.integration.mcp_app:tide``.

Workflows (the test process registers the same ones on its own Tidebase to work them):

- ``mcp.approval``: waits at gate ``approve`` and returns the decision and its payload;
- ``mcp.echo``: returns its input (a ``EchoInput``);
- ``mcp.flaky``: its step fails on its first execution in a process and succeeds after
  (one attempt: the run fails, and a retry completes it).
"""

from __future__ import annotations

from typing import Any

import msgspec

from tidebase_async import Run, Tidebase

#: Step executions of ``mcp.flaky`` in this process, by run id.
FLAKY_CALLS: dict[str, int] = {}


class EchoInput(msgspec.Struct, forbid_unknown_fields=True):
    text: str


def register(tide: Tidebase) -> Tidebase:
    @tide.workflow("mcp.approval")
    async def approval(run: Run, input: Any) -> dict[str, Any]:
        decision = await run.gate("approve", prompt="Ship it?", data={"input": input})
        return {"approved": decision.approved, "actor": decision.actor, "payload": decision.payload}

    @tide.workflow("mcp.echo")
    async def echo(run: Run, input: EchoInput) -> dict[str, str]:
        return {"echo": input.text}

    @tide.workflow("mcp.flaky", max_attempts=1)
    async def flaky(run: Run, input: Any) -> str:
        def once() -> str:
            key = str(run.id)
            FLAKY_CALLS[key] = FLAKY_CALLS.get(key, 0) + 1
            if FLAKY_CALLS[key] == 1:
                raise RuntimeError("flaky: first call fails")
            return "recovered"

        return str(await run.step("call", once))

    return tide


tide = register(Tidebase())
