"""The replay check on many stored runs:
``python -m benchmarks.replaycheck [--dsn DSN] [--runs 10000] [--steps 5]``.

Seeds a fresh database by SQL with ``--runs`` completed runs of a workflow whose
histories hold ``--steps`` completed steps each, then times ``tide.replay_check()``
(pages of 500 runs, their histories in one query per page) against the same code, and
once more against code with the last step renamed (every run incompatible).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from benchmarks.common import connect, fresh_database, resolve_dsn
from tidebase_async import Run, Tidebase

SEED_SQL = """
WITH r AS (
  INSERT INTO tidebase.runs (id, workflow, queue, status, input, max_attempts, run_at,
                             created_at, updated_at, started_at, finished_at, step_count,
                             event_seq, attempt)
  SELECT gen_random_uuid(), 'five', 'default', 'completed', '{"n": 1}'::jsonb, 3, now(),
         now(), now(), now(), now(), $2, 1, 1
  FROM generate_series(1, $1)
  RETURNING id
)
INSERT INTO tidebase.steps (run_id, position, name, status, attempts, run_attempt, output,
                            started_at, finished_at)
SELECT r.id, p, 's' || (p + 1), 'completed', 1, 1, convert_to((p + 1)::text, 'UTF8'), now(),
       now()
FROM r, generate_series(0, $2 - 1) AS p
"""


def register(tide: Tidebase, steps: int, *, rename_last: bool = False) -> None:
    def value(n: int) -> int:
        return n

    @tide.workflow("five")
    async def five(run: Run, input: dict[str, Any]) -> int:
        total = 0
        for i in range(1, steps + 1):
            name = f"s{i}-renamed" if rename_last and i == steps else f"s{i}"
            total += await run.step(name, value, i)
        return total


async def measure(dsn_arg: str | None, runs: int, steps: int) -> None:
    async with fresh_database(resolve_dsn(dsn_arg)) as dsn:
        same = Tidebase(dsn)
        register(same, steps)
        renamed = Tidebase(dsn)
        register(renamed, steps, rename_last=True)
        async with same, renamed:
            began = time.perf_counter()
            async with connect(dsn) as conn:
                await conn.execute(SEED_SQL, runs, steps)
                await conn.execute("ANALYZE tidebase.runs; ANALYZE tidebase.steps")
            print(
                f"seeded {runs:,} completed runs x {steps} steps in "
                f"{time.perf_counter() - began:.2f}s"
            )
            for label, tide in (("same code", same), ("last step renamed", renamed)):
                report = await tide.replay_check()
                print(
                    f"replay-check, {label}: {report.checked:,} runs in {report.seconds:.2f}s "
                    f"({report.checked / report.seconds:,.0f} runs/s, "
                    f"{report.checked * steps / report.seconds:,.0f} entries/s); "
                    f"{report.compatible:,} compatible, {len(report.incompatible):,} "
                    f"incompatible, {len(report.unchecked)} unchecked"
                )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.replaycheck")
    parser.add_argument("--dsn")
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(measure(args.dsn, args.runs, args.steps))


if __name__ == "__main__":
    main()
