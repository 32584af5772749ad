"""DBOS Transact (PyPI ``dbos``, pinned 3.4.0 in the bench extra) doing the durable
workflows comparison (``benchmarks/durable.py``), with its documented defaults.

DBOS is a process-wide singleton, so every measurement runs in a child process
(``python -m benchmarks.peers.dbos_child``, which holds the workflows and the
measuring code) on a fresh database the parent creates; the request goes in as JSON
on stdin, the result comes back as JSON on stdout. This module never imports
``dbos``.

Settings (DBOS's defaults unless said): ``DBOSConfig(name=..., system_database_url=
<the fresh database>, log_level="WARNING")``: a 20-connection system database pool
(``sys_db_pool_size``), ``use_listen_notify=True`` (notifications and events; queues
do not use it), durable commits (DBOS does not touch ``synchronous_commit``). One
queue, ``DBOS.register_queue_async(name, worker_concurrency=C,
polling_interval_sec=P)``, polled by DBOS's worker thread every P seconds: two
variants, DBOS's default P = 1 s and a fast-polling P = 10 ms (the latency a
polling-only queue gets at a cost of 100 claims a second per process while idle).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TypeVar

import anyio
import msgspec

from benchmarks.peers.base import (
    DrainResult,
    EnqueueResult,
    Unavailable,
    WakeParams,
    WakeResult,
    require,
)

PACKAGE = "dbos"
CHILD = "benchmarks.peers.dbos_child"
RESULT_PREFIX = "RESULT "
REPO = Path(__file__).resolve().parent.parent.parent
DEFAULT_POLL_S = 1.0
FAST_POLL_S = 0.01
# The child's own deadline comes this long before the parent's, so that it can still
# answer with what it saw.
CHILD_MARGIN_S = 30.0

T = TypeVar("T")


class Enqueue(msgspec.Struct, frozen=True, kw_only=True, tag="enqueue"):
    dsn: str
    count: int
    steps: int


class Drain(msgspec.Struct, frozen=True, kw_only=True, tag="drain"):
    dsn: str
    count: int
    steps: int
    concurrency: int
    poll_s: float
    timeout_s: float


class Wake(msgspec.Struct, frozen=True, kw_only=True, tag="wake"):
    dsn: str
    poll_s: float
    params: WakeParams


Request = Enqueue | Drain | Wake


def _reason(stderr: bytes, returncode: int | None) -> str:
    lines = [ln for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    last = lines[-1].strip() if lines else "no output"
    last = last if len(last) <= 200 else last[:197] + "..."
    return f"the DBOS child process exited with {returncode}: {last}"


async def run_child(request: Request, result_type: type[T]) -> T:
    """Run one phase in a fresh interpreter; its answer decoded as ``result_type``.

    Raises:
        Unavailable: the child reported an error, or died without answering.
    """
    env = os.environ | {"PYTHONPATH": str(REPO)}
    process = await anyio.open_process(
        [sys.executable, "-m", CHILD],
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout = bytearray()
    stderr = bytearray()

    async def read(stream: anyio.abc.ByteReceiveStream | None, into: bytearray) -> None:
        if stream is not None:
            async for chunk in stream:
                into.extend(chunk)

    try:
        assert process.stdin is not None
        await process.stdin.send(msgspec.json.encode(request))
        await process.stdin.aclose()
        async with anyio.create_task_group() as tg:
            tg.start_soon(read, process.stdout, stdout)
            tg.start_soon(read, process.stderr, stderr)
        await process.wait()
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.aclose()
    answers = [
        ln[len(RESULT_PREFIX) :]
        for ln in stdout.decode(errors="replace").splitlines()
        if ln.startswith(RESULT_PREFIX)
    ]
    if not answers:
        raise Unavailable(_reason(bytes(stderr), process.returncode))
    answer = msgspec.json.decode(answers[-1])
    if "error" in answer:
        raise Unavailable(str(answer["error"]))
    return msgspec.convert(answer["ok"], type=result_type)


class DbosPeer:
    """DBOS, polling its queue every ``poll_s`` seconds."""

    def __init__(self, *, poll_s: float, key: str, label: str) -> None:
        self.poll_s = poll_s
        self.key = key
        self.label = label

    async def enqueue_one_at_a_time(self, dsn: str, count: int, steps: int) -> EnqueueResult:
        require(PACKAGE)
        return await run_child(Enqueue(dsn=dsn, count=count, steps=steps), EnqueueResult)

    async def drain(
        self, dsn: str, count: int, steps: int, concurrency: int, timeout_s: float
    ) -> DrainResult:
        require(PACKAGE)
        request = Drain(
            dsn=dsn,
            count=count,
            steps=steps,
            concurrency=concurrency,
            poll_s=self.poll_s,
            timeout_s=max(10.0, timeout_s - CHILD_MARGIN_S),
        )
        return await run_child(request, DrainResult)

    async def wakeup(self, dsn: str, params: WakeParams) -> WakeResult:
        require(PACKAGE)
        return await run_child(Wake(dsn=dsn, poll_s=self.poll_s, params=params), WakeResult)


def peers() -> list[DbosPeer]:
    return [
        DbosPeer(poll_s=DEFAULT_POLL_S, key="dbos", label="DBOS (1 s poll, default)"),
        DbosPeer(poll_s=FAST_POLL_S, key="dbos-fast", label="DBOS (10 ms poll)"),
    ]
