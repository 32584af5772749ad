"""The ``tidebase`` command: try it, run workers and the dashboard, inspect and act on runs.

Commands::

    tidebase dev [module:tide]      embedded Postgres + worker + HTTP API and dashboard
    tidebase migrate                apply schema migrations (with progress)
    tidebase worker module:tide     execute runs (--queue, --concurrency, --lease, ...)
    tidebase serve module:tide      the HTTP API and dashboard only (no worker)
    tidebase mcp module:tide        an MCP server over stdio (extra tidebase-async[mcp])
    tidebase runs list|show|cancel|retry|wait
    tidebase gates list|resolve
    tidebase events send|list        events by key for runs in run.wait_for_event
    tidebase enqueue WORKFLOW --input JSON
    tidebase schedules list|pause|resume
    tidebase queues list|pause|resume
    tidebase replay-check module:tide   replay stored histories against this code (CI)
    tidebase pg                     run the embedded Postgres and print its DSN

Options fall back to environment variables: ``--dsn`` to ``TIDEBASE_DATABASE_URL``
(neither: the embedded Postgres in ``./.tidebase``), ``--api-key`` to
``TIDEBASE_API_KEY``, ``--webhook-secret`` to ``TIDEBASE_WEBHOOK_SECRET``,
``--public-url`` to ``TIDEBASE_PUBLIC_URL``, ``--host``/``--port`` to
``TIDEBASE_HOST``/``TIDEBASE_PORT``, ``--queue`` to ``TIDEBASE_QUEUES`` (comma
separated), ``--concurrency`` to ``TIDEBASE_CONCURRENCY``.

Listings print aligned tables with human times; ``--json`` prints JSON for scripts
(every listing and ``show`` command, and the commands that change something). Errors
are one line on stderr; ``--debug`` adds the traceback.

Exit codes:

    0    success; also a service (dev, serve, worker) stopped cleanly by its first
         SIGINT (Ctrl-C) or SIGTERM
    1    error reported by tidebase-async or the database (including a failed or
         cancelled run for ``runs wait``), or an app that fails to import
    2    usage error: bad arguments, bad JSON, a module:tide that does not exist or is
         not a Tidebase, an ``enqueue --version`` the workflow does not register
    3    not found: no such run, gate or workflow
    4    conflict: the run or gate is not in a state that allows it (e.g. a gate
         already resolved, retrying a run that did not fail)
    130  interrupted: Ctrl-C during a command, a second signal during a service's
         shutdown, or a signal while it was still starting
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import anyio
import msgspec

from tidebase_async import errors
from tidebase_async._util.dsn import describe_dsn
from tidebase_async.cli import render as render
from tidebase_async.cli import services as services
from tidebase_async.client.gates import GATE_STATUSES
from tidebase_async.client.tidebase import Tidebase
from tidebase_async.models import RUN_STATUSES, TERMINAL_STATUSES, MigrationStep

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4
EXIT_INTERRUPTED = 130

_EPILOG = """\
environment: TIDEBASE_DATABASE_URL (--dsn), TIDEBASE_API_KEY (--api-key),
  TIDEBASE_WEBHOOK_SECRET (--webhook-secret), TIDEBASE_PUBLIC_URL (--public-url),
  TIDEBASE_HOST/TIDEBASE_PORT (--host/--port), TIDEBASE_QUEUES (--queue, comma
  separated), TIDEBASE_CONCURRENCY (--concurrency). No DSN at all: the embedded
  Postgres in ./.tidebase.

exit codes: 0 ok (a service stopped by its first Ctrl-C/SIGTERM too), 1 error from
  tidebase-async or the database, 2 usage error (bad arguments or module:tide),
  3 not found, 4 conflict (e.g. gate already resolved), 130 interrupted.
"""


class UsageError(Exception):
    """A bad argument found after parsing (exit 2)."""


class AppImportError(Exception):
    """The app module raised while being imported (exit 1)."""


# -- the app -------------------------------------------------------------------------------


def load_app(spec: str) -> Tidebase:
    """Import ``module:attribute`` and return the Tidebase it names. The current
    directory is searched first, as ``python -m`` would.

    Raises:
        UsageError: malformed spec, no such module or attribute, not a Tidebase.
        AppImportError: importing the module raised.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"expected module:attribute (e.g. myapp.workers:tide), got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise UsageError(
                f"no module named {missing!r} (for {spec!r}; searched the current "
                "directory and sys.path)"
            ) from exc
        raise AppImportError(f"importing {module_name!r} failed: {_describe(exc)}") from exc
    except Exception as exc:
        raise AppImportError(f"importing {module_name!r} failed: {_describe(exc)}") from exc
    if not hasattr(module, attr):
        raise UsageError(f"module {module_name!r} has no attribute {attr!r}")
    tide = getattr(module, attr)
    if not isinstance(tide, Tidebase):
        raise UsageError(f"{spec!r} is a {type(tide).__name__}, not a Tidebase")
    return tide


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# -- option helpers ------------------------------------------------------------------------


def _opt(args: argparse.Namespace, name: str, env: str | None = None) -> Any:
    value = getattr(args, name, None)
    if value is None and env is not None:
        value = os.environ.get(env) or None
    return value


def _json_arg(text: str | None, what: str) -> Any:
    if text is None:
        return None
    try:
        return msgspec.json.decode(text.encode("utf-8", "surrogatepass"))
    except (msgspec.DecodeError, UnicodeError) as exc:
        raise UsageError(f"{what} is not valid JSON: {exc}") from exc


def _int_env(args: argparse.Namespace, name: str, env: str, default: int) -> int:
    value = getattr(args, name, None)
    if value is not None:
        return int(value)
    raw = os.environ.get(env)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise UsageError(f"{env}={raw!r} is not an integer") from exc


def _wants_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


async def _announce(tide: Tidebase, run_id: str) -> None:
    """Wake workers and dashboards for a run this process changed, before it exits.

    The library's background notifier may still be sending the same hints when the
    Tidebase closes, and closing cancels that send (the hints are then lost and workers
    find the run only at their next poll). Re-announcing and flushing from this task,
    without yielding in between, sends them on a send that nothing cancels.
    """
    info = await tide.runs.get(run_id)
    tide.notifier.runs_changed(info.id)
    tide.notifier.queues_changed(info.queue)
    await tide.notifier.flush()


def _tidebase(args: argparse.Namespace) -> Tidebase:
    """A Tidebase for the one-shot commands."""
    dsn = _opt(args, "dsn", "TIDEBASE_DATABASE_URL")
    if dsn is None:
        where = getattr(args, "data_dir", None) or "./.tidebase"
        print(
            f"tidebase: no --dsn or TIDEBASE_DATABASE_URL: using the embedded Postgres in {where}",
            file=sys.stderr,
        )
    return Tidebase(
        dsn,
        embedded_dir=getattr(args, "data_dir", None),
        retention=None,
        connect_timeout=getattr(args, "connect_timeout", None) or 10.0,
    )


# -- migrate -------------------------------------------------------------------------------


class _MigrationProgress:
    """Prints a line per migration applied, first saying what is being migrated."""

    def __init__(self, dsn: str | None) -> None:
        self.dsn = dsn
        self.applied: list[str] = []

    def __call__(self, step: MigrationStep) -> None:
        if not self.applied and self.dsn is not None:
            print(f"migrating {describe_dsn(self.dsn)} to version {step.latest}", file=sys.stderr)
        self.applied.append(step.name)
        took = render.duration(step.seconds)
        print(
            f"  [{step.version}/{step.latest}] {step.name}  ({took})", file=sys.stderr, flush=True
        )


async def _migrate(args: argparse.Namespace) -> int:
    tide = _tidebase(args)
    progress = _MigrationProgress(tide.dsn)
    version = await tide.migrate(progress=progress)
    if _wants_json(args):
        render.print_json({"version": version, "applied": progress.applied})
    elif progress.applied:
        n = len(progress.applied)
        print(f"schema at version {version} ({n} migration{'s' if n != 1 else ''} applied)")
    else:
        print(f"schema at version {version} (up to date)")
    return EXIT_OK


# -- runs ----------------------------------------------------------------------------------


async def _runs(args: argparse.Namespace) -> int:
    async with _tidebase(args) as tide:
        action = args.action
        if action == "list":
            page = await tide.runs.list(
                status=args.status,
                workflow=args.workflow,
                queue=args.queue,
                dedupe_key=args.dedupe_key,
                limit=args.limit,
                cursor=args.cursor,
            )
            if _wants_json(args):
                render.print_json(page)
            elif not page.items:
                print("no runs")
            else:
                print(render.runs_table(page.items))
                if page.next_cursor:
                    print(f"more: --cursor {page.next_cursor}", file=sys.stderr)
        elif action == "show":
            run = await tide.runs.get(args.run_id)
            if _wants_json(args):
                render.print_json(run)
            else:
                print(render.run_detail(run))
        elif action == "cancel":
            await tide.runs.cancel(args.run_id, reason=args.reason, actor=args.actor)
            await _announce(tide, args.run_id)
            _report(args, {"id": args.run_id, "status": "cancelled"}, f"cancelled {args.run_id}")
        elif action == "retry":
            await tide.runs.retry(args.run_id)
            await _announce(tide, args.run_id)
            _report(args, {"id": args.run_id, "status": "queued"}, f"requeued {args.run_id}")
        elif action == "wait":
            return await _runs_wait(tide, args)
    return EXIT_OK


def _report(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    if _wants_json(args):
        render.print_json(data)
    else:
        print(text)


async def _runs_wait(tide: Tidebase, args: argparse.Namespace) -> int:
    """Wait for a run to end, showing its status and progress as they change."""
    run = await tide.runs.get(args.run_id)  # RunNotFound before anything else
    show = not _wants_json(args)

    async def watch() -> None:
        last = ""
        while True:
            info = await tide.runs.get(run.id)
            progress = ""
            if isinstance(info.state, dict) and "progress" in info.state:
                progress = "  " + render.compact(info.state["progress"], 80)
            line = f"  {info.status}{progress}"
            if line != last and info.status not in TERMINAL_STATUSES:
                print(line, file=sys.stderr, flush=True)
                last = line
            await anyio.sleep(0.5)

    async with anyio.create_task_group() as tg:
        if show:
            print(f"waiting for run {run.id} ({run.workflow})", file=sys.stderr, flush=True)
            tg.start_soon(watch)
        try:
            output = await tide.runs.wait(run.id, timeout=args.timeout)
        finally:
            tg.cancel_scope.cancel()
    if _wants_json(args):
        render.print_json({"id": run.id, "status": "completed", "output": output})
    else:
        print(f"completed; output: {render.compact(output, 2000)}")
    return EXIT_OK


# -- gates ---------------------------------------------------------------------------------


async def _gates(args: argparse.Namespace) -> int:
    async with _tidebase(args) as tide:
        if args.action == "list":
            status = None if args.status == "all" else args.status
            gates = await tide.gates.list(status=status, run_id=args.run, limit=args.limit)
            if _wants_json(args):
                render.print_json(gates)
            elif not gates:
                print("no gates" if status is None else f"no {status} gates")
            else:
                print(render.gates_table(gates))
        else:
            gate = await tide.gates.resolve(
                args.run_id,
                args.name,
                approved=args.approve,
                actor=args.actor,
                payload=_json_arg(args.payload, "--payload"),
            )
            await _announce(tide, args.run_id)
            if _wants_json(args):
                render.print_json(gate)
            else:
                print(f"{gate.status} gate {gate.name!r} of run {gate.run_id}")
    return EXIT_OK


# -- events by key -------------------------------------------------------------------------


async def _events(args: argparse.Namespace) -> int:
    async with _tidebase(args) as tide:
        if args.action == "send":
            payload = _json_arg(args.payload, "--payload")
            if args.retention is None:
                event = await tide.events.send(args.name, key=args.key, payload=payload)
            else:
                event = await tide.events.send(
                    args.name, key=args.key, payload=payload, retention=args.retention
                )
            # Wake the workers of the runs it resumed before this process exits.
            await tide.notifier.flush()
            if _wants_json(args):
                render.print_json(event)
            elif event.status == "delivered":
                runs = ", ".join(str(r) for r in event.received_by)
                print(f"delivered event {event.name!r} to {len(event.received_by)} run(s): {runs}")
            else:
                print(
                    f"stored event {event.name!r} (nobody waits for it yet) until "
                    f"{render.when(event.expires_at)}"
                )
            return EXIT_OK
        return await _events_list(tide, args)


async def _events_list(tide: Tidebase, args: argparse.Namespace) -> int:
    """Events within their retention (stored ones by default) and the open waits."""
    status = None if args.status == "all" else args.status
    events = await tide.events.list(status=status, name=args.name, key=args.key, limit=args.limit)
    waits = await tide.events.waits(name=args.name, key=args.key, limit=args.limit)
    if _wants_json(args):
        render.print_json({"events": events, "waits": waits})
        return EXIT_OK
    if events:
        headers = ["EVENT", "NAME", "KEY", "STATUS", "SENT", "EXPIRES", "PAYLOAD"]
        rows = [
            [
                str(e.id),
                e.name,
                e.key,
                e.status,
                render.ago(e.sent_at),
                render.ago(e.expires_at),
                render.compact(e.payload, 60),
            ]
            for e in events
        ]
        print(render.table(headers, rows))
    else:
        print("no events" if status is None else f"no {status} events")
    if waits:
        headers = ["RUN", "WAIT", "NAME", "KEY", "SINCE", "EXPIRES"]
        rows = [
            [
                str(w.run_id),
                w.wait,
                w.name,
                w.key,
                render.ago(w.created_at),
                "-" if w.expires_at is None else render.ago(w.expires_at),
            ]
            for w in waits
        ]
        print(render.table(headers, rows))
    else:
        print("no runs wait for events")
    return EXIT_OK


# -- enqueue, schedules, queues ------------------------------------------------------------


async def _enqueue(args: argparse.Namespace) -> int:
    from tidebase_async.cli import demo_app

    data = _json_arg(args.input, "--input")
    if args.app is not None:
        # The app's registration gives the workflow's queue, attempts and input type.
        tide = load_app(args.app)
        services.use_dsn(tide, _opt(args, "dsn"))
    else:
        tide = _tidebase(args)
        demo_app.register(tide)  # so that `tidebase enqueue demo.report` finds its queue
    wf = tide.workflows.get(args.workflow)
    queue = args.queue or (wf.queue if wf is not None else "default")
    if args.version is not None:
        # Checked before connecting, as the client does at enqueue: a version the app
        # does not register is a usage error (exit 2) naming the ones it does.
        known = [v for v in tide.workflow_versions(args.workflow) if v is not None]
        if wf is not None and args.version not in known:
            raise UsageError(
                f"workflow {args.workflow!r} has no version {args.version!r} registered "
                f"(registered: {', '.join(repr(v) for v in known) or 'only an unversioned one'})"
            )
    async with tide:
        handle = await tide.enqueue(
            args.workflow,
            input=data,
            dedupe_key=args.dedupe_key,
            queue=args.queue,
            priority=args.priority,
            delay=args.delay,
            max_attempts=args.max_attempts,
            version=args.version,
        )
    if _wants_json(args):
        render.print_json(handle)
        return EXIT_OK
    if wf is None and args.queue is None:
        print(
            f"tidebase: note: {args.workflow!r} is not registered here (--app module:tide): "
            "the run went to queue 'default'",
            file=sys.stderr,
        )
    else:
        print(f"enqueued a run of {args.workflow} on queue {queue!r}", file=sys.stderr)
    if handle.deduplicated:
        print(f"{handle.id}  (deduplicated: an active run with this dedupe key exists)")
    else:
        print(handle.id)
    return EXIT_OK


async def _schedules(args: argparse.Namespace) -> int:
    async with _tidebase(args) as tide:
        if args.action == "list":
            items = await tide.schedules.list()
            if _wants_json(args):
                render.print_json(items)
            else:
                print(render.schedules_table(items) if items else "no schedules")
            return EXIT_OK
        if args.action == "pause":
            info = await tide.schedules.pause(args.name)
        else:
            info = await tide.schedules.resume(args.name)
        verb = "paused" if args.action == "pause" else "resumed"
        _report_struct(args, info, f"{verb} schedule {info.name!r}")
    return EXIT_OK


async def _queues(args: argparse.Namespace) -> int:
    async with _tidebase(args) as tide:
        if args.action == "list":
            items = await tide.queues.list()
            if _wants_json(args):
                render.print_json(items)
            else:
                print(render.queues_table(items) if items else "no queues")
                versions = render.queue_versions_table(items)
                if versions:
                    print("\nqueued runs by workflow version:\n" + versions)
            return EXIT_OK
        info = await tide.queues.configure(args.name, paused=args.action == "pause")
        verb = "paused" if info.paused else "resumed"
        _report_struct(args, info, f"{verb} queue {info.name!r}")
    return EXIT_OK


# -- replay-check --------------------------------------------------------------------------

_SINCE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str) -> float | None:
    """``--since``: ``7d``, ``12h``, ``30m``, ``90s``, ``2w`` or plain seconds; ``none``
    for no finished runs.

    Raises:
        UsageError: anything else (names the value).
    """
    raw = text.strip().lower()
    if raw == "none":
        return None
    unit = _SINCE_UNITS.get(raw[-1:]) if raw else None
    number = raw[:-1] if unit is not None else raw
    try:
        value = float(number) * (unit or 1)
    except ValueError:
        value = float("nan")
    if not value >= 0 or value > 36_500 * 86_400:
        raise UsageError(
            f"--since {text!r}: expected a duration such as 7d, 12h, 30m, 90s, 2w "
            "(at most 100 years), or none"
        )
    return value


async def _replay_check(args: argparse.Namespace) -> int:
    since = parse_since(args.since)
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {args.limit}")
    tide = load_app(args.app)
    for name in args.workflow or []:
        if name not in tide.workflows:
            raise UsageError(
                f"--workflow {name!r} is not registered in {args.app} "
                f"(registered: {', '.join(sorted(tide.workflows)) or 'none'})"
            )
    services.use_dsn(tide, _opt(args, "dsn"))
    async with tide:
        report = await tide.replay_check(workflows=args.workflow, since=since, limit=args.limit)
    if _wants_json(args):
        render.print_json(
            {
                "ok": report.ok,
                "checked": report.checked,
                "compatible": report.compatible,
                "incompatible": report.incompatible,
                "unchecked": report.unchecked,
                "skipped": report.skipped,
                "workflows": report.workflows,
                "seconds": round(report.seconds, 3),
            }
        )
    else:
        print(render.replay_check_text(report))
    return EXIT_OK if report.ok else EXIT_ERROR


def _report_struct(args: argparse.Namespace, value: Any, text: str) -> None:
    if _wants_json(args):
        render.print_json(value)
    else:
        print(text)


# -- services ------------------------------------------------------------------------------


def _host_port(args: argparse.Namespace) -> tuple[str, int | None]:
    host = _opt(args, "host", "TIDEBASE_HOST") or "127.0.0.1"
    port = getattr(args, "port", None)
    if port is None and os.environ.get("TIDEBASE_PORT"):
        port = _int_env(args, "port", "TIDEBASE_PORT", services.DEFAULT_PORT)
    return host, port


def _worker_options(args: argparse.Namespace) -> services.WorkerOptions:
    queues = args.queue
    if not queues and os.environ.get("TIDEBASE_QUEUES"):
        queues = [q.strip() for q in os.environ["TIDEBASE_QUEUES"].split(",") if q.strip()]
    return services.WorkerOptions(
        queues=queues or None,
        concurrency=_int_env(args, "concurrency", "TIDEBASE_CONCURRENCY", 16),
        lease=args.lease,
        poll_interval=args.poll_interval,
        shutdown_grace=args.shutdown_grace,
    )


def _configure_app(tide: Tidebase, args: argparse.Namespace) -> None:
    services.use_dsn(tide, _opt(args, "dsn"))
    services.apply_web_options(
        tide,
        api_key=_opt(args, "api_key"),
        public_url=_opt(args, "public_url"),
    )
    secret = _opt(args, "webhook_secret")
    if secret:
        tide.webhook_secret = secret


def _describe_workflows(tide: Tidebase) -> str:
    names = sorted(tide.workflows)
    return ", ".join(names) if names else "none registered"


async def _worker(args: argparse.Namespace) -> int:
    tide = load_app(args.app)
    _configure_app(tide, args)
    options = _worker_options(args)
    stopper = services.Stopper()
    with stopper.installed():
        await services.serve_until_stopped(
            tide,
            stopper,
            host=None,
            port=None,
            worker=options,
            banner=[
                f"worker for {args.app} (workflows: {_describe_workflows(tide)}; queues: "
                f"{', '.join(options.queues) if options.queues else 'those of its workflows'}; "
                f"concurrency {options.concurrency})"
            ],
        )
    return EXIT_OK


async def _serve(args: argparse.Namespace) -> int:
    tide = load_app(args.app)
    _configure_app(tide, args)
    host, port = _host_port(args)
    _check_exposure(tide, host, insecure=bool(getattr(args, "insecure_no_auth", False)))
    stopper = services.Stopper()
    with stopper.installed():
        await services.serve_until_stopped(
            tide,
            stopper,
            host=host,
            port=port,
            worker=None,
            banner=[f"serving the HTTP API and dashboard of {args.app} (no worker)"],
        )
    return EXIT_OK


async def _mcp(args: argparse.Namespace) -> int:
    """Serve MCP over stdin/stdout until the client closes stdin (no worker)."""
    tide = load_app(args.app)
    services.use_dsn(tide, _opt(args, "dsn"))
    # Lazily: the mcp SDK is an extra (ConfigurationError naming it when missing).
    from tidebase_async.web.mcp import serve_stdio

    await serve_stdio(tide)
    return EXIT_OK


async def _dev(args: argparse.Namespace) -> int:
    from tidebase_async.cli import demo_app

    if args.app is not None and args.enqueue:
        raise UsageError(
            "--enqueue creates runs of the demo workflow; with an app, use `tidebase enqueue`"
        )
    if args.app is not None:
        tide = load_app(args.app)
        label = args.app
    else:
        tide = demo_app.create_app(retention=None)
        label = f"the demo app ({demo_app.WORKFLOW}: steps, progress and an approval gate)"
    _configure_app(tide, args)
    host, port = _host_port(args)
    _check_exposure(tide, host, insecure=bool(getattr(args, "insecure_no_auth", False)))
    options = _worker_options(args)
    stopper = services.Stopper()
    hooks: list[Callable[[Tidebase], Awaitable[None]]] = []
    if args.enqueue:

        async def enqueue(t: Tidebase) -> None:
            ids = await demo_app.enqueue_demo_runs(t, args.enqueue, step_delay=args.step_delay)
            services.say(f"enqueued {len(ids)} demo run{'s' if len(ids) != 1 else ''}")

        hooks.append(enqueue)
    with stopper.installed():
        server = None
        dsn = _opt(args, "dsn", "TIDEBASE_DATABASE_URL") or tide.dsn
        try:
            if dsn is None:
                server = await services.start_embedded_for_dev(getattr(args, "data_dir", None))
                dsn = server.dsn
            else:
                services.say(f"database: {describe_dsn(dsn)}")
            services.use_dsn(tide, dsn)
            await services.serve_until_stopped(
                tide,
                stopper,
                host=host,
                port=port,
                worker=options,
                banner=[f"worker for {label}"],
                after_start=hooks,
            )
        finally:
            if server is not None:
                services.say("stopping the embedded Postgres")
                await services.stop_embedded(server)
    return EXIT_OK


async def _pg(args: argparse.Namespace) -> int:
    from tidebase_async.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(getattr(args, "data_dir", None))
    await anyio.to_thread.run_sync(server.start)
    try:
        print(server.dsn, flush=True)
        print("embedded Postgres running; Ctrl-C stops it", file=sys.stderr, flush=True)
        stopper = services.Stopper()
        with stopper.installed():
            stopper.ready()
            await stopper.requested.wait()
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(server.stop)
    return EXIT_OK


# -- the parser ----------------------------------------------------------------------------


def _common(*, db: bool = True, json: bool = False) -> argparse.ArgumentParser:
    """Options accepted both before and after the command (``tidebase --json runs list``
    and ``tidebase runs list --json``): defaults are suppressed so that one position
    does not overwrite the other."""
    p = argparse.ArgumentParser(add_help=False)
    suppress = argparse.SUPPRESS
    p.add_argument("--debug", action="store_true", default=suppress, help="show tracebacks")
    p.add_argument(
        "--log-level",
        default=suppress,
        metavar="LEVEL",
        help="debug, info, warning (default: info for services, else warning)",
    )
    if db:
        p.add_argument(
            "--dsn",
            default=suppress,
            help="Postgres DSN (default: $TIDEBASE_DATABASE_URL, else the embedded one)",
        )
        p.add_argument(
            "--connect-timeout",
            type=float,
            default=suppress,
            metavar="SECONDS",
            help="how long to retry connecting to the database (10)",
        )
        p.add_argument(
            "--data-dir",
            default=suppress,
            metavar="DIR",
            help="the embedded Postgres's directory, used without a DSN (./.tidebase)",
        )
    if json:
        p.add_argument(
            "--json", action="store_true", default=suppress, help="print JSON for scripts"
        )
    return p


def _web_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="address to listen on ($TIDEBASE_HOST; default 127.0.0.1)")
    p.add_argument(
        "--port",
        type=int,
        help=f"port ($TIDEBASE_PORT; default {services.DEFAULT_PORT}, else a free one; "
        "0: a free one)",
    )
    p.add_argument(
        "--api-key",
        help="require this bearer key; prefer $TIDEBASE_API_KEY (arguments show in `ps`)",
    )
    p.add_argument("--public-url", help="where the API is reachable ($TIDEBASE_PUBLIC_URL)")
    p.add_argument(
        "--webhook-secret",
        help="webhook signing secret; prefer $TIDEBASE_WEBHOOK_SECRET (arguments show in `ps`)",
    )
    p.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="serve a non-loopback --host without an API key: anyone who can reach it can "
        "enqueue, cancel and resolve gates",
    )


def _check_exposure(tide: Tidebase, host: str, *, insecure: bool) -> None:
    """Without an API key only loopback is served, unless ``--insecure-no-auth``.

    Raises:
        UsageError: a non-loopback ``--host`` without a key or the flag.
    """
    if tide.api_key or host in ("127.0.0.1", "localhost", "::1"):
        return
    if not insecure:
        raise UsageError(
            f"refusing to serve {host} without an API key: anyone who can reach it could "
            "enqueue, cancel and resolve gates. Set TIDEBASE_API_KEY (or --api-key), or "
            "pass --insecure-no-auth to serve it open"
        )
    services.say(
        f"warning: --insecure-no-auth: serving {host} without an API key; anyone who can "
        "reach it can read, enqueue and cancel runs"
    )
    tide.allowed_hosts = frozenset({"*"})


def _worker_args(p: argparse.ArgumentParser, *, grace: float) -> None:
    p.add_argument(
        "--queue",
        action="append",
        metavar="NAME",
        help="queue to work, repeatable ($TIDEBASE_QUEUES; default: the workflows' queues)",
    )
    p.add_argument("--concurrency", type=int, help="runs at once ($TIDEBASE_CONCURRENCY; 16)")
    p.add_argument("--lease", type=float, default=30.0, help="lease seconds (30)")
    p.add_argument("--poll-interval", type=float, default=5.0, help="poll seconds (5)")
    p.add_argument(
        "--shutdown-grace",
        type=float,
        default=grace,
        help=f"seconds running runs get to finish when stopping ({grace:g})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tidebase",
        description="Durable workflows in your Postgres: try them, run workers and the "
        "dashboard, inspect and act on runs.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_common(json=True)],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, help: str, *, db: bool = True, json: bool = False
    ) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help,
            description=help,
            epilog=_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[_common(db=db, json=json)],
        )

    p = command("dev", "embedded Postgres, a worker and the dashboard, for trying things")
    p.add_argument("app", nargs="?", help="module:attribute naming a Tidebase (default: demo)")
    _web_options(p)
    _worker_args(p, grace=5.0)
    p.add_argument("--enqueue", type=int, default=0, metavar="N", help="enqueue N demo runs")
    p.add_argument("--step-delay", type=float, default=0.5, help="seconds per demo step (0.5)")
    p.set_defaults(fn=_dev, service=True)

    p = command("migrate", "apply schema migrations", json=True)
    p.set_defaults(fn=_migrate)

    p = command("worker", "execute runs of the workflows of module:tide")
    p.add_argument("app", help="module:attribute naming a Tidebase")
    _worker_args(p, grace=10.0)
    p.add_argument(
        "--webhook-secret",
        help="webhook signing secret; prefer $TIDEBASE_WEBHOOK_SECRET (arguments show in `ps`)",
    )
    p.add_argument("--public-url", help="where the API is reachable ($TIDEBASE_PUBLIC_URL)")
    p.set_defaults(fn=_worker, service=True)

    p = command("serve", "serve the HTTP API and dashboard of module:tide (no worker)")
    p.add_argument("app", help="module:attribute naming a Tidebase")
    _web_options(p)
    p.set_defaults(fn=_serve, service=True)

    p = command(
        "mcp",
        "serve an MCP server for module:tide over stdio (tools: runs, enqueue, gates, "
        "events); needs tidebase-async[mcp]",
    )
    p.add_argument("app", help="module:attribute naming a Tidebase")
    p.set_defaults(fn=_mcp)

    p = command("runs", "list, show, cancel, retry or wait for runs")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help: str) -> argparse.ArgumentParser:
        return actions.add_parser(name, help=help, description=help, parents=[_common(json=True)])

    a = action("list", "runs, newest first")
    a.add_argument("--status", choices=RUN_STATUSES)
    a.add_argument("--workflow")
    a.add_argument("--queue")
    a.add_argument("--dedupe-key")
    a.add_argument("--limit", type=int, default=50, help="at most this many (50)")
    a.add_argument("--cursor", help="continue a listing (printed after a full page)")
    a = action("show", "everything about a run: steps, gates, children")
    a.add_argument("run_id")
    a = action("cancel", "cancel a run and its active children")
    a.add_argument("run_id")
    a.add_argument("--reason")
    a.add_argument("--actor", default="cli")
    a = action("retry", "requeue a failed run with a fresh budget of attempts")
    a.add_argument("run_id")
    a = action("wait", "wait for a run to end, showing its progress; print its output")
    a.add_argument("run_id")
    a.add_argument("--timeout", type=float, help="give up after this many seconds (exit 1)")
    p.set_defaults(fn=_runs)

    p = command("gates", "list or resolve approval gates")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = action("list", "gates in creation order (pending ones by default)")
    a.add_argument("--status", choices=[*GATE_STATUSES, "all"], default="pending")
    a.add_argument("--run", metavar="RUN_ID", help="only this run's gates")
    a.add_argument("--limit", type=int, default=50)
    a = action("resolve", "approve or reject a pending gate, exactly once")
    a.add_argument("run_id")
    a.add_argument("name", help="the gate's name")
    decision = a.add_mutually_exclusive_group(required=True)
    decision.add_argument("--approve", dest="approve", action="store_true")
    decision.add_argument("--reject", dest="approve", action="store_false")
    a.add_argument("--actor", default="cli", help="who decided (cli)")
    a.add_argument("--payload", metavar="JSON", help="data handed to the workflow")
    p.set_defaults(fn=_gates)

    p = command("events", "send events by key to waiting runs, list stored events and waits")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = action("send", "send an event: to the runs waiting for NAME and --key, else stored")
    a.add_argument("name", help="the event's name")
    a.add_argument("--key", required=True, help="the event's key")
    a.add_argument("--payload", metavar="JSON", help="the payload the runs receive (JSON)")
    a.add_argument(
        "--retention", type=float, metavar="SECONDS", help="how long it stays stored (7 days)"
    )
    a = action("list", "events not received yet (stored) and the runs waiting for events")
    a.add_argument("--name", help="only events of this name")
    a.add_argument("--key", help="only events with this key")
    a.add_argument("--status", choices=["stored", "delivered", "consumed", "all"], default="stored")
    a.add_argument("--limit", type=int, default=50)
    p.set_defaults(fn=_events)

    p = command("enqueue", "create a queued run of WORKFLOW", json=True)
    p.add_argument("workflow")
    p.add_argument("--input", metavar="JSON", help="the run's input as JSON")
    p.add_argument(
        "--app",
        metavar="MODULE:TIDE",
        help="take the workflow's queue, attempts and input type from this app",
    )
    p.add_argument("--dedupe-key")
    p.add_argument("--queue", help="default: the workflow's queue, else 'default'")
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("--delay", type=float, metavar="SECONDS")
    p.add_argument("--max-attempts", type=int)
    p.add_argument(
        "--version",
        help="the workflow version the run records (default: the newest the app registers; "
        "any when the workflow is not registered here)",
    )
    p.set_defaults(fn=_enqueue)

    p = command("schedules", "list, pause or resume schedules")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    action("list", "every schedule with its next fire time")
    for verb in ("pause", "resume"):
        action(verb, f"{verb} a schedule").add_argument("name")
    p.set_defaults(fn=_schedules)

    p = command("queues", "list, pause or resume queues")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    action("list", "queues with their controls and runs counted by status")
    for verb in ("pause", "resume"):
        action(verb, f"{verb} claiming from a queue").add_argument("name")
    p.set_defaults(fn=_queues)

    p = command(
        "replay-check",
        "replay stored run histories against the code of module:tide without executing "
        "anything; exit 1 when any run would fail with NonDeterminismError (for CI)",
        json=True,
    )
    p.add_argument("app", help="module:attribute naming a Tidebase (the code to check)")
    p.add_argument(
        "--workflow",
        action="append",
        metavar="NAME",
        help="check only this workflow, repeatable (default: every registered one)",
    )
    p.add_argument(
        "--since",
        default="7d",
        help="also check runs that finished within this (7d; 12h, 30m, none)",
    )
    p.add_argument("--limit", type=int, help="check at most this many runs")
    p.set_defaults(fn=_replay_check)

    p = command("pg", "run the embedded Postgres and print its DSN", db=False)
    p.add_argument("--data-dir", default=None, metavar="DIR")
    p.set_defaults(fn=_pg, service=True)
    return parser


# -- main ----------------------------------------------------------------------------------


def exit_code(exc: BaseException) -> int:
    """The exit code for an error (see the module docstring)."""
    if isinstance(exc, UsageError):
        return EXIT_USAGE
    if isinstance(exc, errors.NotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(exc, errors.ConflictError):
        return EXIT_CONFLICT
    return EXIT_ERROR


def _setup_logging(args: argparse.Namespace) -> None:
    default = "info" if getattr(args, "service", False) else "warning"
    level_name = str(getattr(args, "log_level", None) or default).upper()
    level = logging.getLevelName(level_name)
    if not isinstance(level, int):
        raise UsageError(f"unknown --log-level {level_name.lower()!r}")
    # Only the real command configures logging: embedded in a process that already
    # logs (tests, an application calling main()), leave its configuration alone.
    if not logging.root.handlers:
        logging.basicConfig(
            level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tidebase`` command; return its exit code (see the module docstring)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    debug = bool(getattr(args, "debug", False))
    fn: Callable[[argparse.Namespace], Coroutine[Any, Any, int]] = args.fn
    try:
        _setup_logging(args)
        return asyncio.run(fn(args))
    except BaseException as raised:
        # Task groups (the one inside ``async with Tidebase``) wrap what the body
        # raised in an exception group: report the error itself.
        error = _unwrap(raised)
        if isinstance(error, KeyboardInterrupt | asyncio.CancelledError):
            print("tidebase: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        if isinstance(error, SystemExit | GeneratorExit) or not isinstance(error, Exception):
            raise
        known = (errors.TidebaseError, UsageError, AppImportError, OSError)
        _print_error(error, debug=debug, unexpected=not isinstance(error, known))
        return exit_code(error)


def _unwrap(exc: BaseException) -> BaseException:
    """The one error inside (nested) exception groups; with several, the first
    tidebase error, else the first."""
    while isinstance(exc, BaseExceptionGroup):
        leaves = list(exc.exceptions)
        if len(leaves) == 1:
            exc = leaves[0]
            continue
        leaves = [_unwrap(e) for e in leaves]
        ours = [e for e in leaves if isinstance(e, errors.TidebaseError | UsageError)]
        exc = (ours or leaves)[0]
    return exc


def _print_error(exc: BaseException, *, debug: bool, unexpected: bool = False) -> None:
    if debug:
        traceback.print_exception(exc, file=sys.stderr)  # the unwrapped error, with causes
    text = " ".join(str(exc).split()) or type(exc).__name__
    if unexpected or isinstance(exc, OSError):
        text = _describe(exc)
    hint = "" if debug else " (--debug shows the traceback)" if unexpected else ""
    prefix = "usage error: " if isinstance(exc, UsageError) else ""
    print(f"tidebase: {prefix}{text}{hint}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
