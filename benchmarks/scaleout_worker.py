"""A worker process for the scale-out benchmark:
``python -m benchmarks.scaleout_worker DSN CONCURRENCY``. Prints READY once claiming."""

from __future__ import annotations

import sys

import anyio

from benchmarks.throughput import register
from tidebase_async import Tidebase


async def main(dsn: str, concurrency: int) -> None:
    tide = Tidebase(dsn)
    register(tide)
    started = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: tide.work(concurrency=concurrency, poll_interval=0.5, started=started)
        )
        await started.wait()
        print("READY", flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], int(sys.argv[2]))
