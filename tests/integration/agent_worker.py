"""A worker process running the research agent example (``examples.agent``) with the
scripted model, for the agent example's crash test.

    python -m tests.integration.agent_worker --dsn DSN --log FILE [--hang-in-search]

Prints ``READY`` once ``tide.work(...)`` has started. Appends a line to ``FILE`` for
each model request the scripted model answers (``request N``) and each time the
``search`` tool starts (``search``), so the test can count executions across
processes, a killed one included. With ``--hang-in-search`` the search tool never
returns: the test kills this process while it hangs there, i.e. after the first
model request was checkpointed and before the first tool call completed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import anyio

from examples.agent.research import Backends, canned_search, create_agent, register
from examples.agent.scripted import scripted_model
from examples.agent.sources import Source
from tidebase_async import Tidebase

HANG_S = 3600.0


def append(path: Path, line: str) -> None:
    """One line, written through at once: it survives a SIGKILL right after."""
    with path.open("a") as f:
        f.write(line + "\n")


async def serve(args: argparse.Namespace) -> int:
    log = Path(args.log)

    async def search(query: str) -> list[Source]:
        append(log, "search")
        if args.hang_in_search:
            await anyio.sleep(HANG_S)
        return await canned_search(query)

    model = scripted_model(on_request=lambda n: append(log, f"request {n}"))
    tide = Tidebase(args.dsn)
    register(tide, create_agent(model), backends=Backends(search=search))
    started = anyio.Event()
    async with anyio.create_task_group() as tg:

        async def announce() -> None:
            await started.wait()
            print("READY", os.getpid(), flush=True)

        tg.start_soon(announce)
        await tide.work(
            concurrency=2,
            lease=args.lease,
            poll_interval=0.5,
            maintenance_interval=0.2,
            started=started,
        )
        tg.cancel_scope.cancel()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.integration.agent_worker")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--hang-in-search", action="store_true")
    return asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
