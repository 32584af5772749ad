"""The worker process whose memory ``benchmarks.memory`` measures.

``python -m benchmarks.memory_worker --dsn DSN [--concurrency C] [--hold N]``

Runs ``tide.work()`` for workflow ``memory-hold``, whose one step blocks for an hour.
Once the worker is claiming and ``--hold`` runs are blocked in that step (then
``--settle`` seconds more), prints one JSON line to stdout: ``{"ready": true, ...}``.
SIGTERM stops it (a graceful drain: the held runs are cancelled and released).
Imports only the library, so its RSS is that of a bare worker process.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import anyio

from tidebase_async import Run, Tidebase, Worker

WORKFLOW = "memory-hold"
HOLD_S = 3600.0


class Held:
    def __init__(self) -> None:
        self.count = 0


def register(tide: Tidebase, held: Held) -> None:
    async def hold() -> None:
        held.count += 1
        await anyio.sleep(HOLD_S)

    @tide.workflow(WORKFLOW)
    async def memory_hold(run: Run, input: Any) -> None:
        await run.step("hold", hold)


async def main(args: argparse.Namespace) -> None:
    held = Held()
    tide = Tidebase(args.dsn)
    register(tide, held)
    workers: list[Worker] = []
    started = anyio.Event()
    async with tide, anyio.create_task_group() as tg:

        async def work() -> None:
            await tide.work(
                concurrency=args.concurrency,
                poll_interval=5.0,
                shutdown_grace=0.5,
                handle_signals=True,
                started=started,
                worker_ready=workers.append,
            )
            tg.cancel_scope.cancel()

        tg.start_soon(work)
        with anyio.fail_after(60):
            await started.wait()
            while held.count < args.hold:
                await anyio.sleep(0.01)
        await anyio.sleep(args.settle)
        ready = {
            "ready": True,
            "held": held.count,
            "inflight": workers[0].inflight,
            "claimed": workers[0].stats.claimed,
            "at": time.time(),
        }
        print(json.dumps(ready), flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_worker")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--hold", type=int, default=0, help="runs blocked before ready")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds before ready")
    return parser.parse_args(argv)


if __name__ == "__main__":
    anyio.run(main, parse_args(sys.argv[1:]))
