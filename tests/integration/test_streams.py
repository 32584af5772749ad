"""Live output streams (issue 9, item 4): run.emit and tide.runs.stream."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import anyio
import msgspec
import pytest

from tests.integration.core_support import eventually, working
from tests.integration.procs import REPO_ROOT
from tidebase_async import Run, Tidebase
from tidebase_async.store.channels import STREAM_CHANNEL

BIG = "x" * 50_000 + "é🙂" * 2_000  # far over the 8000 bytes one notification takes


def register(tide: Tidebase) -> None:
    @tide.workflow("talker")
    async def talker(run: Run) -> str:
        await run.gate("go")
        for i in range(50):
            await run.emit({"token": i})
        await run.emit(BIG)
        await run.emit("other", stream="debug")
        return "said"


def _spawn_subscriber(dsn: str, run_id: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.stream_subscriber", dsn, run_id],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


async def _waiting(tide: Tidebase, run_id: Any) -> bool:
    return (await tide.runs.get(run_id)).status == "waiting"


async def test_two_subscribers_in_two_processes_get_the_same_chunks_in_order(
    tide: Tidebase, dsn: str
) -> None:
    register(tide)
    expected = [{"token": i} for i in range(50)] + [BIG]
    async with working(tide):
        h = await tide.enqueue("talker")
        await eventually(lambda: _waiting(tide, h.id), what="the run to wait")
        proc = _spawn_subscriber(dsn, str(h.id))
        try:
            assert proc.stdout is not None
            with anyio.fail_after(20):
                line = await anyio.to_thread.run_sync(proc.stdout.readline)
            assert line.strip() == "READY"
            here: list[Any] = []

            async def listen() -> None:
                async for chunk in tide.runs.stream(h.id):
                    here.append(chunk)

            async with anyio.create_task_group() as tg:
                tg.start_soon(listen)
                await anyio.sleep(0.3)
                await tide.gates.resolve(h.id, "go", approved=True)
                assert await tide.runs.wait(h.id, timeout=10) == "said"
            out, _ = await anyio.to_thread.run_sync(lambda: proc.communicate(timeout=20))
        finally:
            proc.kill()
            proc.wait()
    there = [msgspec.json.decode(line) for line in out.splitlines() if line != "END"]
    assert out.splitlines()[-1] == "END"
    assert here == expected
    assert there == expected


async def test_emit_is_cheap_and_not_checkpointed(tide: Tidebase, db: Any) -> None:
    @tide.workflow("quiet")
    async def quiet(run: Run) -> None:
        for i in range(1000):
            await run.emit(i)

    async with working(tide):
        h = await tide.enqueue("quiet")
        await tide.runs.wait(h.id, timeout=10)
    assert await db.fetchval("SELECT count(*) FROM tidebase.steps") == 0
    assert [e.type async for e in tide.runs.events(h.id)] == [
        "run.created",
        "run.claimed",
        "run.completed",
    ]


async def test_a_replay_does_not_emit_again(tide: Tidebase) -> None:
    from tests.integration.core_support import FAST

    fail = [True]
    seen: list[Any] = []

    @tide.workflow("again", max_attempts=2, retry=FAST)
    async def again(run: Run) -> None:
        await run.gate("go")
        await run.emit("before")
        await run.step("one", lambda: None)

        def two() -> None:
            if fail[0]:
                fail[0] = False
                raise RuntimeError("flaky")

        await run.step("two", two)
        await run.emit("after")

    async with working(tide):
        h = await tide.enqueue("again")
        await eventually(lambda: _waiting(tide, h.id), what="the run to wait")
        async with anyio.create_task_group() as tg:

            async def listen() -> None:
                async for chunk in tide.runs.stream(h.id):
                    seen.append(chunk)

            tg.start_soon(listen)
            await anyio.sleep(0.3)
            await tide.gates.resolve(h.id, "go", approved=True)
    assert seen == ["before", "after"]


async def test_stream_of_an_unknown_run(tide: Tidebase) -> None:
    from tidebase_async import RunNotFound

    with pytest.raises(RunNotFound):
        async for _ in tide.runs.stream("01a20000-0000-7000-8000-000000000000"):
            pass
    assert STREAM_CHANNEL == "tidebase_stream"


async def test_the_sse_route_streams_the_output(tide: Tidebase) -> None:
    import aiohttp
    from aiohttp import web

    register(tide)
    app = web.Application()
    app.add_subapp("/tidebase/", tide.http_app())
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with working(tide), aiohttp.ClientSession() as http:
            h = await tide.enqueue("talker")
            await eventually(lambda: _waiting(tide, h.id), what="the run to wait")
            url = f"http://127.0.0.1:{port}/tidebase/runs/{h.id}/stream"
            async with http.get(url) as resp:
                assert resp.headers["Content-Type"] == "text/event-stream"
                first = await resp.content.readline()
                assert first.startswith(b": connected")
                await tide.gates.resolve(h.id, "go", approved=True)
                text = (await resp.read()).decode()
    finally:
        await runner.cleanup()
    data = [
        msgspec.json.decode(line[6:])
        for line in text.splitlines()
        if line.startswith("data: ") and line != "data: null"
    ]
    assert data == [{"token": i} for i in range(50)] + [BIG]
    assert "event: end" in text
