"""``python -m examples.aiohttp_app [--host H] [--port P] [--no-worker]``: serve the app.

By default a worker runs in the same process, so this one command is the whole demo.
With ``--no-worker`` the app only enqueues and reads; run workers separately with
``python -m examples.aiohttp_app.worker`` (as many as you like, on any machine).
"""

from __future__ import annotations

import argparse
import logging
import os

from aiohttp import web

from examples.aiohttp_app.app import create_app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.aiohttp_app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--no-worker", dest="worker", action="store_false")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    public_url = os.environ.get("TIDEBASE_PUBLIC_URL") or f"http://{args.host}:{args.port}/tidebase"
    if not os.environ.get("TIDEBASE_WEBHOOK_SECRET"):
        logging.getLogger("examples.aiohttp_app").warning(
            "TIDEBASE_WEBHOOK_SECRET is not set: /api/tidebase refuses every request"
        )
    app = create_app(worker=args.worker, public_url=public_url)
    web.run_app(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
