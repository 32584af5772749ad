"""A subscriber to a run's live output in a process of its own (tests of run.emit).

``python -m tests.integration.stream_subscriber DSN RUN_ID``: prints ``READY`` once it
listens, then each chunk as a JSON line, then ``END``.
"""

from __future__ import annotations

import sys

import anyio
import msgspec

from tidebase_async import Tidebase


async def main(dsn: str, run_id: str) -> None:
    async with Tidebase(dsn) as tide, anyio.create_task_group() as tg:

        async def read() -> None:
            async for chunk in tide.runs.stream(run_id):
                print(msgspec.json.encode(chunk).decode(), flush=True)
            print("END", flush=True)

        tg.start_soon(read)
        await anyio.sleep(0.5)  # the subscription is in place by then
        print("READY", flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2])
