"""The research agent example (``examples.agent``), tested with the testing kit.

``create_app`` makes the app's Tidebase (``app.state.tide``) and registers the
``research`` workflow on it with the model and tool backends it is given: here the
example's scripted model (offline, deterministic), counting the requests it answers,
and a search backend counting its calls. The kit opens that Tidebase on the test's
database; the app is called through ``httpx.ASGITransport`` (no lifespan).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from examples.agent.app import create_app
from examples.agent.research import GATE, Backends, canned_search
from examples.agent.scripted import MODEL_NAME, REPORT_TO, scripted_model
from examples.agent.sources import Source, deliver_report
from tidebase_async import Tidebase
from tidebase_async.testing import TideEnv

QUESTION = "How do durable agents survive crashes?"
MODEL = "research__model.request_stream"
TOOL = "research__function_toolset__<agent>.call_tool:"
#: The history up to the approval: every model request and tool call is a step.
UNTIL_GATE = [MODEL, TOOL + "search", f"{MODEL}#2", TOOL + "fetch_page", f"{MODEL}#3"]


@dataclass
class Agent:
    """The app, its Tidebase (opened by the kit) and what the fakes counted."""

    app: Starlette
    tide: Tidebase
    requests: list[int] = field(default_factory=list)
    searches: list[str] = field(default_factory=list)


@pytest.fixture
async def agent(tide_env: TideEnv) -> Agent:
    requests: list[int] = []
    searches: list[str] = []

    async def search(query: str) -> list[Source]:
        searches.append(query)
        return await canned_search(query)

    app = create_app(
        worker=False,
        model=scripted_model(on_request=requests.append),
        backends=Backends(search=search),
    )
    tide = await tide_env.client(app.state.tide)
    return Agent(app=app, tide=tide, requests=requests, searches=searches)


@pytest.fixture
async def http(agent: Agent) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=agent.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield client


async def view(http: httpx.AsyncClient, run_id: str) -> Any:
    resp = await http.get(f"/research/{run_id}")
    assert resp.status_code == 200, resp.text
    return resp.json()


async def ask(http: httpx.AsyncClient) -> str:
    resp = await http.post("/research", json={"question": QUESTION})
    assert resp.status_code == 201, resp.text
    run_id: str = resp.json()["id"]
    return run_id


async def test_agent_waits_for_approval_then_sends_the_report(
    tide_env: TideEnv, agent: Agent, http: httpx.AsyncClient
) -> None:
    run_id = await ask(http)
    # Asked twice (case and spacing aside): the same run.
    resp = await http.post("/research", json={"question": f"  {QUESTION.upper()} "})
    assert (resp.status_code, resp.json()) == (200, {"id": run_id, "deduplicated": True})

    await tide_env.run_until_idle()
    waiting = await view(http, run_id)
    assert waiting["status"] == "waiting" and waiting["answer"] is None
    gate = waiting["pending_gate"]
    assert gate["name"] == GATE == "approve:send_report"
    assert gate["data"]["tool"] == "send_report"
    assert gate["data"]["args"]["to"] == REPORT_TO
    assert gate["data"]["args"]["subject"] == f"Research: {QUESTION}"
    assert await tide_env.step_names(run_id) == UNTIL_GATE
    assert agent.requests == [1, 2, 3]
    assert agent.searches == [QUESTION]

    await tide_env.resolve_gate(run_id, GATE, actor="reviewer")
    await tide_env.run_until_idle()

    done = await view(http, run_id)
    assert done["status"] == "completed", done
    assert done["pending_gate"] is None
    receipt = deliver_report(to=REPORT_TO, subject="", body="", idempotency_key=f"{run_id}:call-3")
    answer = done["answer"]
    assert answer.startswith(f"Research notes on {QUESTION!r}:\n- "), answer
    assert "In depth: Durable execution records the result of every step" in answer
    assert answer.endswith(f"The report went to {REPORT_TO} ({receipt.message_id}).")
    assert await tide_env.step_names(run_id) == [
        *UNTIL_GATE,
        GATE,
        TOOL + "send_report",
        f"{MODEL}#4",
    ]
    # Resumed after the approval, the run replayed its first three model requests and
    # its tool calls from their checkpoints: none was sent or called again.
    assert agent.requests == [1, 2, 3, 4]
    assert agent.searches == [QUESTION]
    info = await agent.tide.runs.get(run_id)
    assert info.usage.records == 4
    assert info.usage.input_tokens > 0 and info.usage.output_tokens > 0
    [summary] = await agent.tide.usage.summary(group_by=["workflow", "model"])
    assert summary.group == {"workflow": "research", "model": MODEL_NAME}
    await tide_env.assert_replay_compatible(run_id)


async def test_rejected_report_is_not_sent_and_the_agent_says_so(
    tide_env: TideEnv, agent: Agent, http: httpx.AsyncClient
) -> None:
    run_id = await ask(http)
    await tide_env.run_until_idle()
    await tide_env.resolve_gate(run_id, GATE, approved=False, actor="reviewer")
    await tide_env.run_until_idle()

    done = await view(http, run_id)
    assert done["status"] == "completed", done
    assert "The report was not sent" in done["answer"]
    assert REPORT_TO + " (msg-" not in done["answer"]
    names = await tide_env.step_names(run_id)
    assert names == [*UNTIL_GATE, GATE, f"{MODEL}#4"]  # send_report never ran
    assert agent.requests == [1, 2, 3, 4]
    await tide_env.assert_replay_compatible(run_id)


async def test_questions_are_researched_separately(
    tide_env: TideEnv, agent: Agent, http: httpx.AsyncClient
) -> None:
    first = await ask(http)
    resp = await http.post("/research", json={"question": "What is SKIP LOCKED?"})
    assert resp.status_code == 201, resp.text
    second = resp.json()["id"]
    await tide_env.run_until_idle()
    assert sorted(agent.searches) == sorted([QUESTION, "What is SKIP LOCKED?"])

    await tide_env.resolve_gate(second, GATE)
    await tide_env.run_until_idle()
    assert (await view(http, first))["status"] == "waiting"
    answer = (await view(http, second))["answer"]
    assert answer.startswith("Research notes on 'What is SKIP LOCKED?':\n- SKIP LOCKED queues")
