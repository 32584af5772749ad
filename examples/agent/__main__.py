"""``python -m examples.agent [--host H] [--port P] [--no-worker]``: serve the research
agent's app with uvicorn.

By default a worker runs in the same process, so this one command is the whole demo.
With ``--no-worker`` the app only enqueues and reads; run workers separately with
``python -m examples.agent.worker``.
"""

from __future__ import annotations

import argparse
import logging

import uvicorn

from examples.agent.app import create_app
from examples.agent.research import ModelUnavailable


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.agent")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--no-worker", dest="worker", action="store_false")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        app = create_app(worker=args.worker)
    except ModelUnavailable as exc:
        raise SystemExit(str(exc)) from None
    print(f"Ask the agent at http://{args.host}:{args.port}/ (dashboard: /tidebase/)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
