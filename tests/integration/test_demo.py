"""``python -m examples.report.demo`` end to end: a run survives a SIGKILLed worker."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(30)
async def test_report_demo_survives_a_killed_worker(dsn: str) -> None:
    env = dict(os.environ, TIDEBASE_DATABASE_URL=dsn, PYTHONUNBUFFERED="1")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "examples.report.demo",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(25):
            raw, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    out = raw.decode()

    assert proc.returncode == 0, out
    assert "deduplicated=False" in out
    assert "deduplicated=True" in out
    assert "simulating a crash: SIGKILL to myself" in out
    assert "lease expired, requeued" in out
    assert re.search(r"^\s+plan\s+1\s+\d+\s+replayed from checkpoint$", out, re.M), out
    assert re.search(r"^\s+fetch-sources\s+1\s+\d+\s+replayed from checkpoint$", out, re.M), out
    assert re.search(r"^\s+write-report\s+2\s+\d+ \(killed\), \d+\s+executed$", out, re.M), out
    assert "attempts: 2 " in out
    assert re.search(r"^\s+\d+\s+run\.requeued\s", out, re.M), out
    assert re.search(r"^\s+\d+\s+run\.completed$", out, re.M), out
    assert "A short report on durable workflows" in out
    assert "\nOK in " in out
