"""The long-running commands of ``tidebase``: ``dev``, ``serve`` and ``worker``.

Stopping: the first SIGINT (Ctrl-C) or SIGTERM asks the service to stop cleanly (the
worker stops claiming and drains its runs for up to ``--shutdown-grace`` seconds, the
HTTP server closes, the database connections and an embedded Postgres this process
started are released) and the command exits 0. A second signal, or one that arrives
while the service is still starting, interrupts at once: exit 130.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from tidebase_async import errors
from tidebase_async.client.tidebase import Tidebase
from tidebase_async.engine.worker import Worker

if TYPE_CHECKING:
    from aiohttp import web

DEFAULT_PORT = 8800
#: How long the HTTP server lets open requests (event streams of a dashboard) finish.
HTTP_SHUTDOWN_S = 1.0


def say(text: str) -> None:
    """A status line of a service, on stdout at once (services are watched live)."""
    print(text, flush=True)


class Stopper:
    """SIGINT/SIGTERM handling of a service (see the module docstring)."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.signal_name = ""
        self.forced = False
        self._ready = False
        self._task: asyncio.Task[Any] | None = None
        self._installed: list[signal.Signals] = []

    @contextlib.contextmanager
    def installed(self) -> Iterator[Stopper]:
        loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
            except (ValueError, NotImplementedError, RuntimeError):
                continue  # not the main thread (tests), or no signal support
            self._installed.append(sig)
        try:
            yield self
        finally:
            for sig in self._installed:
                loop.remove_signal_handler(sig)
            self._installed.clear()

    def ready(self) -> None:
        """From now on a first signal stops cleanly instead of interrupting."""
        self._ready = True

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._ready and not self.requested.is_set():
            self.signal_name = sig.name
            self.requested.set()
            return
        self.forced = True
        if self._task is not None:
            self._task.cancel()


@dataclass
class WorkerOptions:
    queues: list[str] | None = None
    concurrency: int = 16
    lease: float = 30.0
    poll_interval: float = 5.0
    shutdown_grace: float = 10.0
    holder: list[Worker] = field(default_factory=list)


async def run_worker(tide: Tidebase, options: WorkerOptions, started: anyio.Event) -> None:
    await tide.work(
        options.queues,
        concurrency=options.concurrency,
        lease=options.lease,
        poll_interval=options.poll_interval,
        shutdown_grace=options.shutdown_grace,
        handle_signals=False,
        started=started,
        worker_ready=options.holder.append,
    )


def stop_worker(options: WorkerOptions) -> None:
    for worker in options.holder:
        busy = worker.inflight
        if busy:
            say(
                f"draining {busy} running run{'s' if busy != 1 else ''} "
                f"(up to {options.shutdown_grace:g}s; Ctrl-C again to interrupt)"
            )
        worker.stop()


async def start_http(tide: Tidebase, host: str, port: int | None) -> tuple[web.AppRunner, int]:
    """Serve ``tide.http_app()`` (the HTTP API, the dashboard at ``/``) on host:port.
    ``port`` None: 8800, or a free port when 8800 is taken.

    Raises:
        ConfigurationError: the address cannot be bound (in use, bad host, ...).
    """
    from aiohttp import web

    runner = web.AppRunner(tide.http_app(), shutdown_timeout=HTTP_SHUTDOWN_S, access_log=None)
    await runner.setup()
    try:
        candidates = [port] if port is not None else [DEFAULT_PORT, 0]
        for candidate in candidates:
            site = web.TCPSite(runner, host, candidate)
            try:
                await site.start()
            except OSError as exc:
                await site.stop()
                if candidate == DEFAULT_PORT and port is None and exc.errno == errno.EADDRINUSE:
                    continue
                reason = exc.strerror or str(exc)
                hint = " (choose another with --port, or --port 0 for a free one)"
                raise errors.ConfigurationError(
                    f"cannot listen on {host}:{candidate}: {reason}"
                    + (hint if exc.errno == errno.EADDRINUSE else "")
                ) from exc
            break
        bound = int(runner.addresses[0][1])
    except BaseException:
        await runner.cleanup()
        raise
    return runner, bound


def url_of(host: str, port: int) -> str:
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


def use_dsn(tide: Tidebase, dsn: str | None) -> None:
    """Point an app's (not yet opened) Tidebase at ``dsn``: the command line wins over
    what the app configured. There is no public setter: the DSN is fixed once open."""
    if dsn is None or dsn == tide.dsn:
        return
    if tide._store is not None:
        raise errors.ConfigurationError("the app's Tidebase is already open; cannot change its DSN")
    tide._dsn = dsn


def apply_web_options(tide: Tidebase, *, api_key: str | None, public_url: str | None) -> None:
    if api_key:
        tide.api_key = api_key
    if public_url:
        tide.public_url = public_url


async def serve_until_stopped(
    tide: Tidebase,
    stopper: Stopper,
    *,
    host: str | None,
    port: int | None,
    worker: WorkerOptions | None,
    banner: list[str],
    after_start: list[Any] | None = None,
) -> None:
    """Open ``tide``, serve HTTP (unless ``host`` is None) and work (unless ``worker`` is
    None) until a signal; then stop cleanly, in order: the worker drains, the server
    closes, the Tidebase closes."""
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(tide)
        url = None
        if host is not None:
            runner, bound = await start_http(tide, host, port)
            stack.push_async_callback(runner.cleanup)
            url = url_of(host, bound)
        async with anyio.create_task_group() as tg:
            if worker is not None:
                started = anyio.Event()
                tg.start_soon(run_worker, tide, worker, started)
                await started.wait()
            for line in banner:
                say(line)
            if url is not None:
                say(f"Dashboard: {url}")
                say(f"HTTP API:  {url}runs  (health: {url}health)")
                if tide.api_key:
                    say("The dashboard asks for the API key (TIDEBASE_API_KEY).")
            for hook in after_start or []:
                await hook(tide)
            say("Ready. Ctrl-C stops.")
            stopper.ready()
            await stopper.requested.wait()
            say(f"{stopper.signal_name or 'signal'} received: stopping")
            if worker is not None:
                stop_worker(worker)
            # tide.work() returns once the worker has drained.
        if url is not None:
            say("closing the HTTP server")
    say("stopped")


async def start_embedded_for_dev(data_dir: str | None) -> Any:
    """Start (or reuse) the embedded Postgres, saying so (the first start runs initdb)."""
    from tidebase_async.embedded import DEFAULT_DATA_DIR, start_embedded

    say(f"starting the embedded Postgres in {data_dir or DEFAULT_DATA_DIR} ...")
    server = await start_embedded(data_dir)
    say(f"embedded Postgres ready: {server.dsn}")
    return server


async def stop_embedded(server: Any) -> None:
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(server.stop)
