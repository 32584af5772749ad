"""Run the chaos scenarios and print their figures.

    python -m tests.chaos [--long] [--dsn DSN] [--seed N] [--keep-logs]

Short (default): a handful of SIGKILLs and two connection cuts, what ``make test`` runs.
``--long`` (``make chaos``): a minute of SIGKILLs, repeated connection cuts, and real
restarts of the Postgres server: ``pg_ctlcluster ... restart -m fast`` for a local
Debian cluster, else ``--restart-cmd`` (skipped without either). A restart ends every
session on the server, so it first waits for other databases' sessions to end
(``--restart-wait``) and exits 2 without restarting when they do not. Every scenario
gets a fresh database. The server is ``--dsn``, else ``TIDEBASE_TEST_DSN``, else the one
on 127.0.0.1:5432.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from tests.chaos import harness
from tidebase_async.testing.databases import create_template, drop_database, with_database

LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


@asynccontextmanager
async def fresh_database(server_dsn: str) -> AsyncIterator[str]:
    """A migrated database of its own, dropped afterwards."""
    name = await create_template(server_dsn, prefix="chaos")
    try:
        yield with_database(server_dsn, name)
    finally:
        await drop_database(server_dsn, name)


async def main(args: argparse.Namespace) -> int:
    server_dsn: str = args.dsn
    logs = Path(tempfile.mkdtemp(prefix="tidebase-chaos-"))
    reports: list[harness.Report] = []
    server = harness.local_cluster(server_dsn)
    if args.restart_cmd:
        server = harness.ServerControl(
            restart=shlex.split(args.restart_cmd), start=shlex.split(args.start_cmd or "true")
        )

    async def scenario(name: str, run: Callable[[str, Path], Awaitable[harness.Report]]) -> None:
        print(f"{name} ...", flush=True)
        log_dir = logs / name
        log_dir.mkdir()
        async with fresh_database(server_dsn) as dsn:
            report = await run(dsn, log_dir)
        print(report.summary(), flush=True)
        reports.append(report)

    def out(line: str) -> None:
        print(line, flush=True)

    ok = False
    status = 0
    try:
        if args.long:
            await scenario(
                "kills",
                lambda dsn, d: harness.kill_chaos(dsn, d, kills=40, seed=args.seed, out=out),
            )
            await scenario(
                "cuts",
                lambda dsn, d: harness.cut_chaos(dsn, d, runs=800, cuts=6, seed=args.seed, out=out),
            )
            if server is None:
                print(
                    f"server restart skipped: {server_dsn} is no local pg_ctlcluster cluster "
                    "(pass --restart-cmd)"
                )
            else:
                control = server
                try:
                    await scenario(
                        "restart",
                        lambda dsn, d: harness.restart_chaos(
                            dsn,
                            d,
                            runs=800,
                            restarts=2,
                            server=control,
                            quiet_wait_s=args.restart_wait,
                            seed=args.seed,
                            out=out,
                        ),
                    )
                except harness.ServerBusy as exc:
                    print(f"server restart NOT RUN: {exc}", flush=True)
                    status = 2
                finally:
                    await harness.ensure_server_up(control, server_dsn)
        else:
            await scenario(
                "kills",
                lambda dsn, d: harness.kill_chaos(dsn, d, kills=5, seed=args.seed, out=out),
            )
            await scenario(
                "cuts",
                lambda dsn, d: harness.cut_chaos(dsn, d, runs=200, cuts=2, seed=args.seed, out=out),
            )
        ok = True
    finally:
        print("\n== chaos summary ==")
        for report in reports:
            print(report.summary())
        if ok and not args.keep_logs:
            shutil.rmtree(logs, ignore_errors=True)
        else:
            print(f"worker logs: {logs}")
    return status


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos")
    parser.add_argument("--long", action="store_true", help="the long version (make chaos)")
    parser.add_argument(
        "--dsn",
        default=os.environ.get("TIDEBASE_TEST_DSN") or LOCAL_DSN,
        help="DSN of the server's maintenance database",
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--restart-cmd",
        help="command restarting the server (default: pg_ctlcluster for a local cluster)",
    )
    parser.add_argument(
        "--start-cmd", help="with --restart-cmd: command starting the server should it be down"
    )
    parser.add_argument(
        "--restart-wait",
        type=float,
        default=900.0,
        help="seconds to wait for other sessions on the server to end before restarting it",
    )
    parser.add_argument("--keep-logs", action="store_true")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
