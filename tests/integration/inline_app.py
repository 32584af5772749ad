"""A process that executes one run inline (``tide.run``) with a recovery webhook.

    python -m tests.integration.inline_app --dsn DSN --run-id ID --url URL [--lease S]

Registers ``worker_app``'s workflows in ``hang`` mode (``durable``: steps ``s1``, ``s2``
and ``s3``, each logged to ``step_log``; ``s3`` hangs), prints ``READY`` and runs
``tide.run("durable", run_id=ID, recovery_webhook=URL, lease=S)``. The tests SIGKILL it
during ``s3``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import asyncpg

from tests.integration.web_support import SECRET
from tests.integration.worker_app import StepLog, register
from tidebase_async import Tidebase


async def main_async(args: argparse.Namespace) -> int:
    pool = await asyncpg.create_pool(args.dsn, min_size=1, max_size=2)
    try:
        tide = Tidebase(args.dsn, webhook_secret=SECRET, pool_size=3)
        register(tide, StepLog(pool), "hang")
        async with tide:
            print("READY", flush=True)
            await tide.run(
                "durable", run_id=args.run_id, recovery_webhook=args.url, lease=args.lease
            )
    finally:
        await pool.close()
    print("DONE", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.integration.inline_app")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--lease", type=float, default=1.0)
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
