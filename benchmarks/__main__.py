"""``python -m benchmarks [--full] [--dsn DSN] [--only NAME ...]``."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

import anyio

from benchmarks import (
    agent,
    common,
    compare,
    durable,
    environment,
    keys,
    memory,
    overview,
    pooler,
    replay,
    report,
    scale,
    scaleout,
    soak,
    steps,
    testkit,
    throughput,
    wakeup,
)
from benchmarks.environment import Environment, Machine, Mode

Benchmark = Callable[[common.Context], Awaitable[common.Measurement]]

BENCHMARKS: dict[str, Benchmark] = {
    throughput.NAME: throughput.measure,
    wakeup.NAME: wakeup.measure,
    steps.NAME: steps.measure,
    replay.NAME: replay.measure,
    scale.NAME: scale.measure,
    scaleout.NAME: scaleout.measure,
    soak.NAME: soak.measure,
    memory.NAME: memory.measure,
    compare.NAME: compare.measure,
    durable.NAME: durable.measure,
    agent.NAME: agent.measure,
    keys.NAME: keys.measure,
    testkit.NAME: testkit.measure,
    overview.NAME: overview.measure,
    pooler.NAME: pooler.measure,
}

# Too slow for the quick run (DBOS's default 1 s queue polling bounds its drains and
# wake-ups); in --full, or quick sizes with --only.
# The overview seeds 1,000,000 runs in --full (100,000 in quick sizes with --only).
# The pooler's no-listen_dsn wake-ups wait for the worker's 5 s poll, each of them.
FULL_ONLY = frozenset({durable.NAME, overview.NAME, pooler.NAME})


class Host:
    """What is known before the event loop starts (blocking reads stay out of it)."""

    def __init__(self, mode: Mode) -> None:
        self.mode: Mode = mode
        self.command = environment.command_line()
        self.machine: Machine = environment.machine()
        self.revision = environment.library_revision()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="Benchmarks of tidebase-async."
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="larger counts, and the benchmarks too slow for quick (default: quick, under 3 "
        f"minutes, without {', '.join(sorted(FULL_ONLY))} unless named by --only)",
    )
    parser.add_argument(
        "--dsn",
        help=f"server to create the benchmark databases on (default: ${common.DSN_ENV}, "
        f"else {common.DEFAULT_DSN}; the embedded Postgres when it does not answer)",
    )
    parser.add_argument(
        "--only", action="append", choices=sorted(BENCHMARKS), help="run only this benchmark"
    )
    parser.add_argument(
        "--through-pgbouncer",
        action="store_true",
        help="start Debian's PgBouncer (transaction mode, as user postgres) in front of the "
        "server and run the benchmarks' Tidebase through it (pooled=True, a direct "
        "listen_dsn); figures are comparable with a run without it",
    )
    return parser.parse_args(argv)


def load_average() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return round(one, 2), round(five, 2), round(fifteen, 2)


async def run_one(name: str, ctx: common.Context, env: Environment) -> report.Report:
    date = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    load_before = load_average()
    t0 = time.perf_counter()
    result = await BENCHMARKS[name](ctx)
    return report.Report(
        benchmark=name,
        date=date,
        elapsed_s=round(time.perf_counter() - t0, 3),
        load_before=load_before,
        load_after=load_average(),
        environment=env,
        figures=result.figures,
        details=result.details,
        table=result.table,
    )


async def run_all(names: list[str], dsn: str, host: Host, through: bool = False) -> None:
    async with common.server(dsn) as srv:
        settings = await common.server_settings(srv.dsn)
        env = Environment(
            mode=host.mode,
            command=host.command,
            python=environment.python_version(),
            machine=host.machine,
            postgres=environment.postgres_info(
                environment.describe_server(srv.dsn), srv.embedded, srv.fallback_reason, settings
            ),
            library_revision=host.revision,
        )
        async with contextlib.AsyncExitStack() as stack:
            bouncer = (
                await stack.enter_async_context(common.pgbouncer(srv.dsn)) if through else None
            )
            ctx = common.Context(mode=host.mode, admin_dsn=srv.dsn, pooler_dsn=bouncer)
            for name in names:
                rep = await run_one(name, ctx, env)
                if bouncer is not None:
                    rep.details["through"] = "PgBouncer, transaction mode"
                print(report.render(rep))
                print(f"wrote {report.write_json(rep)}\n", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    host = Host("full" if args.full else "quick")
    default = [n for n in BENCHMARKS if args.full or n not in FULL_ONLY]
    names = list(dict.fromkeys(args.only or default))
    status = 0
    try:
        anyio.run(run_all, names, common.resolve_dsn(args.dsn), host, args.through_pgbouncer)
    except* common.BenchmarkError as group:
        # A task group around the failing code may have wrapped the error.
        for exc in group.exceptions:
            print(f"benchmark failed: {exc}", file=sys.stderr)
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
