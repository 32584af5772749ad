"""The research agent example (``examples/agent``) end to end, with the scripted model.

The app runs on uvicorn on 127.0.0.1 (SSE needs a real server) without a worker of its
own; workers are ``tests.integration.agent_worker`` processes. The first one hangs in
the agent's first tool call (``search``) and is SIGKILLed there; a second one finishes
the run: the first model request is not sent again, the run waits at the approval
gate, the test approves through the HTTP API, and the answer, the usage ledger and the
live output (read as server-sent events, as the page does) come out as they should.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import UUID

import anyio
import asyncpg
import httpx
from starlette.applications import Starlette

from examples.agent.app import create_app
from examples.agent.research import GATE
from examples.agent.scripted import MODEL_NAME, REPORT_TO, scripted_model
from examples.agent.sources import deliver_report
from tests.integration.procs import REPO_ROOT, WorkerProcess, eventually
from tests.integration.web_support import uvicorn_url

QUESTION = "How do durable agents survive crashes?"
MODEL_STEP = "research__model.request_stream"
SEARCH_STEP = "research__function_toolset__<agent>.call_tool:search"
#: The worker's lease: after the kill the run is taken over this long after its last
#: heartbeat.
LEASE_S = 2.0


@contextlib.asynccontextmanager
async def serve(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """``app`` on uvicorn on a free loopback port (its lifespan opens the Tidebase)."""
    async with (
        uvicorn_url(app, lifespan="on") as base,
        httpx.AsyncClient(base_url=base, trust_env=False, timeout=20) as http,
    ):
        yield http


class AgentWorkers:
    """``agent_worker`` processes; all killed and reaped on exit."""

    def __init__(self, dsn: str, log: Path, out_dir: Path) -> None:
        self.dsn = dsn
        self.log = log
        self.out_dir = out_dir
        self.procs: list[WorkerProcess] = []

    async def start(self, name: str, *, hang_in_search: bool = False) -> WorkerProcess:
        """Start a worker and wait for its READY line."""
        proc = self._spawn(name, hang_in_search=hang_in_search)
        await proc.wait_ready(timeout=20)
        return proc

    def _spawn(self, name: str, *, hang_in_search: bool) -> WorkerProcess:
        out = self.out_dir / f"agent-worker-{name}.out"
        err = self.out_dir / f"agent-worker-{name}.err"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        for key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "AGENT_MODEL"):
            env.pop(key, None)  # the scripted model, whatever this machine has set
        cmd = [sys.executable, "-m", "tests.integration.agent_worker", "--dsn", self.dsn]
        cmd += ["--log", str(self.log), "--lease", str(LEASE_S)]
        if hang_in_search:
            cmd.append("--hang-in-search")
        with out.open("wb") as out_f, err.open("wb") as err_f:
            popen = subprocess.Popen(
                cmd, cwd=REPO_ROOT, env=env, stdout=out_f, stderr=err_f, stdin=subprocess.DEVNULL
            )
        proc = WorkerProcess(popen, name, out, err)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()


class AgentStream:
    """The run's live output on stream ``agent``, read from the SSE route as the page's
    EventSource reads it: every ``chunk`` event's data, until the ``end`` event."""

    def __init__(self) -> None:
        self.connected = anyio.Event()
        self.chunks: list[Any] = []
        self.ended = False

    async def read(self, http: httpx.AsyncClient, run_id: str) -> None:
        path = f"/tidebase/runs/{run_id}/stream"
        async with http.stream("GET", path, params={"stream": "agent"}, timeout=None) as resp:
            assert resp.status_code == 200, await resp.aread()
            assert resp.headers["content-type"].startswith("text/event-stream")
            event = ""
            async for line in resp.aiter_lines():
                if line.startswith(":"):
                    self.connected.set()
                elif line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: ") and event == "chunk":
                    self.chunks.append(json.loads(line.removeprefix("data: ")))
                elif event == "end":
                    self.ended = True
                    return

    def kinds(self) -> Counter[str]:
        return Counter(c.get("event_kind") for c in self.chunks)

    def text(self) -> str:
        """The text the model streamed: text parts as they started, then their deltas."""
        pieces: list[str] = []
        for c in self.chunks:
            if c.get("event_kind") == "part_start" and c["part"]["part_kind"] == "text":
                pieces.append(c["part"]["content"])
            elif c.get("event_kind") == "part_delta" and c["delta"]["part_delta_kind"] == "text":
                pieces.append(c["delta"]["content_delta"])
        return "".join(pieces)

    def tool_calls(self) -> list[str]:
        return [
            c["part"]["tool_name"]
            for c in self.chunks
            if c.get("event_kind") == "function_tool_call"
        ]


def log_lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


async def completed_steps(db: asyncpg.Connection, run_id: str) -> list[str]:
    rows = await db.fetch(
        "SELECT name FROM tidebase.steps WHERE run_id = $1 AND status = 'completed' "
        "ORDER BY position",
        UUID(run_id),
    )
    return [r["name"] for r in rows]


async def view(http: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    r = await http.get(f"/research/{run_id}")
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


async def test_agent_resumes_after_its_worker_is_killed(
    dsn: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    log = tmp_path / "agent.log"
    workers = AgentWorkers(dsn, log, tmp_path)
    app = create_app(dsn, worker=False, model=scripted_model())
    stream = AgentStream()
    try:
        async with serve(app) as http, anyio.create_task_group() as tg:
            r = await http.post("/research", json={"question": QUESTION})
            assert r.status_code == 201, r.text
            run_id = r.json()["id"]
            # A double submit (case and spacing aside) is the same run.
            r = await http.post(
                "/research", json={"question": "  how do DURABLE agents survive crashes? "}
            )
            assert r.status_code == 200 and r.json() == {"id": run_id, "deduplicated": True}

            # Subscribe before any worker runs, as the page does right after its POST.
            tg.start_soon(stream.read, http, run_id)
            with anyio.fail_after(5):
                await stream.connected.wait()

            # Worker 1 answers the first model request, then hangs in `search`.
            first = await workers.start("1", hang_in_search=True)

            async def hanging_in_search() -> bool:
                steps = await completed_steps(db, run_id)
                return steps == [MODEL_STEP] and "search" in log_lines(log)

            await eventually(hanging_in_search, timeout=15, what="worker 1 to hang in search")
            assert log_lines(log) == ["request 1", "search"]
            first.kill()  # SIGKILL: no drain, no goodbye; its lease just expires
            assert first.returncode == -9

            # Worker 2 takes the run over once the lease expired and goes on from the
            # checkpoint: it runs `search` again (it never completed), not request 1.
            await workers.start("2")

            async def at_gate() -> dict[str, Any] | None:
                v = await view(http, run_id)
                return v if v["status"] == "waiting" and v["pending_gate"] else None

            waiting = await eventually(at_gate, timeout=20, what="the approval gate")
            assert waiting is not None
            gate = waiting["pending_gate"]
            assert gate["name"] == GATE == "approve:send_report"
            assert gate["data"]["tool"] == "send_report"
            assert gate["data"]["tool_call_id"] == "call-3"
            assert gate["data"]["args"]["to"] == REPORT_TO
            assert gate["data"]["args"]["subject"] == f"Research: {QUESTION}"
            assert log_lines(log) == ["request 1", "search", "search", "request 2", "request 3"]

            # Approve through the HTTP API, as the page's button does.
            r = await http.post(
                f"/tidebase/runs/{run_id}/gates/{GATE}/resolve",
                json={"approved": True, "actor": "reviewer"},
            )
            assert r.status_code == 200, r.text
            assert r.json()["status"] == "approved"

            async def finished() -> dict[str, Any] | None:
                v = await view(http, run_id)
                return v if v["status"] in ("completed", "failed", "cancelled") else None

            done = await eventually(finished, timeout=15, what="the run to finish")
            assert done is not None
            with anyio.fail_after(10):
                while not stream.ended:
                    await anyio.sleep(0.02)

            # -- the answer ------------------------------------------------------------
            assert done["status"] == "completed", done
            answer = done["answer"]
            receipt = deliver_report(
                to=REPORT_TO, subject="", body="", idempotency_key=f"{run_id}:call-3"
            )
            assert answer.startswith(f"Research notes on {QUESTION!r}:\n- "), answer
            assert "In depth: Durable execution records the result of every step" in answer
            assert answer.endswith(f"The report went to {REPORT_TO} ({receipt.message_id}).")

            # -- no model request twice: each answered once, across both workers -------
            lines = log_lines(log)
            requests = Counter(line for line in lines if line.startswith("request"))
            assert requests == {f"request {n}": 1 for n in (1, 2, 3, 4)}, lines
            assert lines.count("search") == 2  # the killed execution and the one that completed

            info = (await http.get(f"/tidebase/runs/{run_id}")).json()
            assert [s["name"] for s in info["steps"]] == [
                MODEL_STEP,
                SEARCH_STEP,
                f"{MODEL_STEP}#2",
                "research__function_toolset__<agent>.call_tool:fetch_page",
                f"{MODEL_STEP}#3",
                GATE,
                "research__function_toolset__<agent>.call_tool:send_report",
                f"{MODEL_STEP}#4",
            ]
            # The first model request was checkpointed by the killed worker's claim, the
            # search by the claim that took the run over.
            attempts = dict(
                await db.fetch(
                    "SELECT name, run_attempt FROM tidebase.steps WHERE run_id = $1",
                    UUID(run_id),
                )
            )
            assert attempts[MODEL_STEP] == 1 and attempts[SEARCH_STEP] == 2, attempts
            assert info["gates"][0]["actor"] == "reviewer"

            # -- usage: one record per model request, none for the replayed one --------
            rows = await db.fetch(
                "SELECT step, model, input_tokens, output_tokens FROM tidebase.usage "
                "WHERE run_id = $1 ORDER BY position",
                UUID(run_id),
            )
            assert [r["step"] for r in rows] == [
                MODEL_STEP,
                f"{MODEL_STEP}#2",
                f"{MODEL_STEP}#3",
                f"{MODEL_STEP}#4",
            ]
            assert {r["model"] for r in rows} == {MODEL_NAME}
            assert all(r["input_tokens"] > 0 and r["output_tokens"] > 0 for r in rows)
            r = await http.get("/tidebase/usage", params={"workflow": "research"})
            assert r.status_code == 200, r.text
            [total] = r.json()["items"]
            assert total["group"] == {"workflow": "research", "model": MODEL_NAME}
            assert total["records"] == 4
            assert total["output_tokens"] == sum(r["output_tokens"] for r in rows)

            # -- live output: the agent's events reached the SSE subscriber ------------
            kinds = stream.kinds()
            assert kinds["part_delta"] > 5 and kinds["function_tool_result"] >= 3, kinds
            assert kinds["deferred_tool_requests"] >= 1, kinds
            assert {"search", "fetch_page", "send_report"} <= set(stream.tool_calls())
            # The final answer streamed as text deltas, whole and in order.
            assert stream.text() == answer
    finally:
        workers.close()


async def test_page_and_bad_requests(dsn: str) -> None:
    app = create_app(dsn, worker=False, model=scripted_model())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            r = await http.get("/")
            assert r.status_code == 200
            csp = r.headers["content-security-policy"]
            assert "default-src 'self'" in csp and "unsafe-inline" not in csp
            assert '<script type="module" src="static/agent.js">' in r.text
            r = await http.get("/static/agent.js")
            assert r.status_code == 200 and "EventSource" in r.text
            assert (await http.get("/tidebase/")).status_code == 200  # the dashboard

            for body in (b"", b"[]", b"{}", b'{"question": "   "}', b'{"question": 1}'):
                r = await http.post("/research", content=body)
                assert r.status_code == 400, (body, r.text)
                assert "error" in r.json()
            r = await http.post("/research", json={"question": "x", "extra": 1})
            assert r.status_code == 400, r.text
            assert (await http.get("/research/not-a-uuid")).status_code == 404
            missing = "0190d3a4-0000-7000-8000-000000000000"
            assert (await http.get(f"/research/{missing}")).status_code == 404

            r = await http.post("/research", json={"question": "What is SKIP LOCKED?"})
            assert r.status_code == 201, r.text
            v = (await http.get(f"/research/{r.json()['id']}")).json()
            assert v["status"] == "queued" and v["question"] == "What is SKIP LOCKED?"
            assert v["pending_gate"] is None and v["answer"] is None
