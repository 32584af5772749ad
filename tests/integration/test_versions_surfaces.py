"""Choosing a workflow version outside the Python client: ``POST /runs``, the MCP
``enqueue`` tool and ``tidebase enqueue --version`` take one, with the client's rule
(the newest registered by default; an unknown one refused naming the registered ones,
nothing written; any when the process does not register the workflow). And the runs of
schedule ticks record the newest version registered in the process that fires them."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import asyncpg
import pytest

from tests.integration.core_support import count_rows
from tests.integration.schedule_support import runs_of, shift_back
from tests.integration.web_support import KINDS, error_of, serve
from tidebase_async import Run, Tidebase
from tidebase_async.cli.main import main
from tidebase_async.web.mcp_tools import ToolFailed, Tools

Capture = pytest.CaptureFixture[str]

APP = """
from tidebase_async import Run, Tidebase

tide = Tidebase()


@tide.workflow("greet", version="1")
async def greet_v1(run: Run, input: object) -> str:
    return "v1"


@tide.workflow("greet", version="2")
async def greet_v2(run: Run, input: object) -> str:
    return "v2"
"""


def register_two(tide: Tidebase) -> None:
    @tide.workflow("greet", version="1")
    async def greet_v1(run: Run, input: Any) -> str:
        return "v1"

    @tide.workflow("greet", version="2")
    async def greet_v2(run: Run, input: Any) -> str:
        return "v2"


async def version_of(db: asyncpg.Connection, run_id: Any) -> str | None:
    value: str | None = await db.fetchval(
        "SELECT version FROM tidebase.runs WHERE id = $1", uuid.UUID(str(run_id))
    )
    return value


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    served: str = request.param
    return served


@pytest.fixture
async def bare(dsn: str) -> AsyncIterator[Tidebase]:
    """A second Tidebase on the test database that registers no workflow (a web
    process enqueueing for separate workers)."""
    async with Tidebase(dsn) as tide:
        yield tide


# -- POST /runs -----------------------------------------------------------------------


async def test_post_runs_takes_a_version_and_refuses_an_unknown_one(
    kind: str, tide: Tidebase, db: asyncpg.Connection
) -> None:
    register_two(tide)
    async with serve(tide, kind) as client:
        newest = await client.post("/tidebase/runs", json={"workflow": "greet"})
        older = await client.post("/tidebase/runs", json={"workflow": "greet", "version": "1"})
        assert (newest.status_code, older.status_code) == (201, 201), older.text
        assert await version_of(db, newest.json()["id"]) == "2"
        assert await version_of(db, older.json()["id"]) == "1"
        before = await count_rows(db)
        for body, needle in (
            ({"workflow": "greet", "version": "3"}, "no version '3'"),
            ({"workflow": "greet", "version": ""}, "version"),
            ({"workflow": "greet", "version": "a\x1fb"}, "version name"),
            ({"workflow": "greet", "version": 2}, "version"),
            ({"workflow": "greet", "version": ["1"]}, "version"),
        ):
            resp = await client.post("/tidebase/runs", json=body)
            assert resp.status_code == 400, (body, resp.text)
            error = error_of(resp)
            assert error["code"] == "bad_request" and needle in error["message"], error
        unknown = error_of(
            await client.post("/tidebase/runs", json={"workflow": "greet", "version": "3"})
        )
        assert "'1', '2'" in unknown["message"]
        assert await count_rows(db) == before


async def test_post_runs_of_a_process_registering_no_workflows_accepts_any_version(
    bare: Tidebase, db: asyncpg.Connection
) -> None:
    async with serve(bare, "starlette") as client:
        pinned = await client.post("/tidebase/runs", json={"workflow": "greet", "version": "7"})
        plain = await client.post("/tidebase/runs", json={"workflow": "greet"})
        assert (pinned.status_code, plain.status_code) == (201, 201), pinned.text
    assert await version_of(db, pinned.json()["id"]) == "7"
    assert await version_of(db, plain.json()["id"]) is None


async def test_openapi_describes_the_version_of_post_runs(tide: Tidebase) -> None:
    async with serve(tide, "starlette") as client:
        spec = (await client.get("/tidebase/openapi.json")).json()
    version = spec["components"]["schemas"]["EnqueueRequest"]["properties"]["version"]
    assert version["type"] == ["string", "null"] and "newest" in version["description"]


# -- the MCP enqueue tool --------------------------------------------------------------


async def test_the_mcp_enqueue_tool_takes_a_version_and_refuses_an_unknown_one(
    tide: Tidebase, db: asyncpg.Connection
) -> None:
    register_two(tide)
    tools = Tools(tide)
    (spec,) = [s for s in tools.specs() if s.name == "enqueue"]
    assert "version" in spec.input_schema["properties"]
    newest = await tools.call("enqueue", {"workflow": "greet"})
    older = await tools.call("enqueue", {"workflow": "greet", "version": "1"})
    assert await version_of(db, newest["id"]) == "2"
    assert await version_of(db, older["id"]) == "1"
    before = await count_rows(db)
    with pytest.raises(ToolFailed, match=r"ConfigurationError: .*no version '3'.*'1', '2'"):
        await tools.call("enqueue", {"workflow": "greet", "version": "3"})
    with pytest.raises(ToolFailed, match=r"invalid arguments for enqueue.*version"):
        await tools.call("enqueue", {"workflow": "greet", "version": 3})
    assert await count_rows(db) == before


async def test_the_mcp_enqueue_tool_of_an_app_registering_no_workflows_accepts_any_version(
    bare: Tidebase, db: asyncpg.Connection
) -> None:
    queued = await Tools(bare).call("enqueue", {"workflow": "greet", "version": "7"})
    assert await version_of(db, queued["id"]) == "7"


# -- tidebase enqueue --version ----------------------------------------------------------


async def cli(*argv: str) -> int:
    return await anyio.to_thread.run_sync(main, list(argv))


@pytest.fixture
def app_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module:tide registering versions 1 and 2 of ``greet``, importable from cwd."""
    name = f"versions_app_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(APP)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    monkeypatch.chdir(tmp_path)
    return f"{name}:tide"


async def test_cli_enqueue_takes_a_version_and_refuses_an_unknown_one(
    dsn: str, db: asyncpg.Connection, app_module: str, capsys: Capture
) -> None:
    base = ["enqueue", "greet", "--dsn", dsn, "--app", app_module, "--json"]
    assert await cli(*base) == 0
    newest = json.loads(capsys.readouterr().out)
    assert await cli(*base, "--version", "1") == 0
    older = json.loads(capsys.readouterr().out)
    assert await version_of(db, newest["id"]) == "2"
    assert await version_of(db, older["id"]) == "1"
    before = await count_rows(db)
    assert await cli(*base, "--version", "3") == 2
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("tidebase:")]
    assert "usage error" in line and "no version '3'" in line and "'1', '2'" in line, err
    assert "Traceback" not in err
    assert await count_rows(db) == before


async def test_cli_enqueue_of_a_workflow_not_registered_here_accepts_any_version(
    dsn: str, db: asyncpg.Connection, capsys: Capture
) -> None:
    assert await cli("enqueue", "elsewhere", "--dsn", dsn, "--version", "7") == 0
    run_id = capsys.readouterr().out.strip()
    assert await version_of(db, run_id) == "7"
    # The demo workflow the command registers itself is unversioned: no version to pick.
    assert await cli("enqueue", "demo.report", "--dsn", dsn, "--version", "2") == 2
    assert "only an unversioned one" in capsys.readouterr().err


# -- schedule ticks --------------------------------------------------------------------


async def test_schedule_ticks_record_the_newest_version_registered_where_they_fire(
    tide: Tidebase, bare: Tidebase, db: asyncpg.Connection
) -> None:
    register_two(tide)
    await tide.schedules.set("hourly", every=3600, workflow="greet")
    await shift_back(db, "hourly", 3600.5)
    fired = await tide.schedules.fire_due()
    assert len(fired) == 1
    (run,) = await runs_of(db, "hourly")
    assert await version_of(db, run["id"]) == "2"
    assert (await tide.runs.get(run["id"])).version == "2"

    # A process that does not register the workflow fires unversioned runs (any
    # worker that has the workflow claims them), as its enqueue would.
    await bare.schedules.set("elsewhere", every=3600, workflow="greet")
    await shift_back(db, "elsewhere", 3600.5)
    assert len(await bare.schedules.fire_due()) == 1
    (other,) = await runs_of(db, "elsewhere")
    assert await version_of(db, other["id"]) is None
