"""``python -m examples.starlette_app.worker``: a worker for the app's report runs.

Or ``tidebase worker examples.starlette_app.worker:tide``. Same database settings as the
app (``TIDEBASE_DATABASE_URL``, else the embedded Postgres in ``./.tidebase``, which
the app and its workers share). SIGTERM or Ctrl-C drains: steps in flight finish.
"""

from __future__ import annotations

import asyncio
import logging

from examples.report.approval import register
from tidebase_async import Tidebase

tide = Tidebase()
register(tide)

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    asyncio.run(tide.work(concurrency=8))
