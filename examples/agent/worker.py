"""``python -m examples.agent.worker``: a worker for the research agent's runs.

Or ``tidebase worker examples.agent.worker:tide``. Same database settings as the app
(``TIDEBASE_DATABASE_URL``, else the embedded Postgres in ``./.tidebase``, which the app
and its workers share) and the same model choice (``OPENAI_API_KEY``,
``ANTHROPIC_API_KEY``, ``AGENT_MODEL``, else the scripted model). SIGTERM or Ctrl-C
drains: steps in flight finish.
"""

from __future__ import annotations

import asyncio
import logging

from examples.agent.research import (
    ModelUnavailable,
    choose_model,
    create_agent,
    describe,
    register,
)
from tidebase_async import Tidebase

try:
    MODEL = choose_model()
except ModelUnavailable as exc:
    raise SystemExit(str(exc)) from None

tide = Tidebase()
register(tide, create_agent(MODEL))

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("examples.agent").info("research agent on model %s", describe(MODEL))
    asyncio.run(tide.work(concurrency=8))
