"""The ``tidebase`` command: migrate, worker, pg, runs."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

import msgspec

from tidebase_async import errors
from tidebase_async.client import Tidebase


def load_app(spec: str) -> Tidebase:
    """Import ``module:attribute`` and return the Tidebase it names.

    Raises:
        ConfigurationError: malformed spec, missing module or attribute, wrong type.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise errors.ConfigurationError(f"expected module:attribute, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise errors.ConfigurationError(f"cannot import {module_name!r}: {exc}") from exc
    tide = getattr(module, attr, None)
    if not isinstance(tide, Tidebase):
        raise errors.ConfigurationError(f"{spec!r} is not a Tidebase instance")
    return tide


def _print_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(value)).decode() + "\n")


async def _migrate(args: argparse.Namespace) -> None:
    version = await Tidebase(args.dsn).migrate()
    print(f"schema at version {version}")


async def _worker(args: argparse.Namespace) -> None:
    tide = load_app(args.app)
    await tide.work(
        args.queue or None,
        concurrency=args.concurrency,
        lease=args.lease,
        poll_interval=args.poll_interval,
    )


async def _pg(args: argparse.Namespace) -> None:
    from tidebase_async.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(args.data_dir)
    server.start()
    try:
        print(server.dsn, flush=True)
        print("embedded Postgres running; Ctrl-C stops it", file=sys.stderr, flush=True)
        await asyncio.Event().wait()
    finally:
        server.stop()


async def _runs(args: argparse.Namespace) -> None:
    async with Tidebase(args.dsn) as tide:
        if args.action == "list":
            page = await tide.runs.list(
                status=args.status, workflow=args.workflow, queue=args.queue, limit=args.limit
            )
            for run in page.items:
                created = run.created_at.isoformat() if run.created_at else ""
                print(f"{run.id}  {run.status:<9}  {run.workflow}  {run.queue}  {created}")
        elif args.action == "show":
            _print_json(await tide.runs.get(args.run_id))
        elif args.action == "cancel":
            await tide.runs.cancel(args.run_id, reason=args.reason, actor="cli")
            print(f"cancelled {args.run_id}")
        elif args.action == "retry":
            await tide.runs.retry(args.run_id)
            print(f"requeued {args.run_id}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tidebase", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("migrate", help="apply schema migrations")
    p.add_argument("--dsn", default=None)
    p.set_defaults(fn=_migrate)

    p = sub.add_parser("worker", help="run a worker for module:tide")
    p.add_argument("app", help="module:attribute naming a Tidebase")
    p.add_argument("--queue", action="append", help="queue to work (repeatable)")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--lease", type=float, default=30.0)
    p.add_argument("--poll-interval", type=float, default=5.0)
    p.set_defaults(fn=_worker)

    p = sub.add_parser("pg", help="run the embedded Postgres and print its DSN")
    p.add_argument("--data-dir", default=None)
    p.set_defaults(fn=_pg)

    p = sub.add_parser("runs", help="list, show, cancel or retry runs")
    p.add_argument("--dsn", default=None)
    actions = p.add_subparsers(dest="action", required=True)
    a = actions.add_parser("list")
    a.add_argument("--status")
    a.add_argument("--workflow")
    a.add_argument("--queue")
    a.add_argument("--limit", type=int, default=50)
    for name in ("show", "cancel", "retry"):
        a = actions.add_parser(name)
        a.add_argument("run_id")
        if name == "cancel":
            a.add_argument("--reason")
    p.set_defaults(fn=_runs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        asyncio.run(args.fn(args))
    except errors.TidebaseError as exc:
        print(f"tidebase: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
