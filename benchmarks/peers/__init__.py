"""The systems compared side by side by ``benchmarks/compare.py``.

Each module drives one system through the same work: ``ours`` (tidebase-async),
``pgq_peer`` (pgqueuer), ``proc_peer`` (procrastinate) and ``raw`` (a minimal asyncpg
``FOR UPDATE SKIP LOCKED`` loop, the practical limit). The module names avoid
shadowing the real packages. ``base`` holds what they share.
"""

from __future__ import annotations
