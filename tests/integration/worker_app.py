"""A worker process for the multi-process tests.

    python -m tests.integration.worker_app --dsn DSN --mode MODE [--concurrency N ...]

Registers the test workflows, prints ``READY`` once ``tide.work(...)`` has started, and
works until SIGTERM (graceful drain, exit 0) or until it is killed. Every step records
its execution in the test's ``step_log`` table through a connection of its own, so the
tests can count executions per process even when the process dies mid-step.

Workflows:

- ``durable``: steps ``s1``, ``s2``, ``s3``; ``s3`` is the *blocking step*.
  Output ``{"pid": <pid that completed the run>, "s1": ..., "s2": ..., "s3": ...}``.
- ``nap``: one step ``nap`` (the blocking step) that sleeps ``input`` seconds.
- ``pair``: steps ``a`` and ``b``, each sleeping ``input`` seconds.
- ``sleeper``: step ``before``, a durable ``run.sleep("nap", input)``, step ``after``.
- ``event_waiter``: step ``before``, ``run.wait_for_event("payment", key=input["key"])``,
  step ``after``; returns the payload and the pid of ``after``.
  Output ``{"before": <pid>, "after": <pid>}``.
- ``family``: input ``{"one": n, "many": [n, ...], "nap": s}``; a child ``leaf`` named
  ``one`` with ``n``, then a fan-out ``many`` of one ``leaf`` per element. Output
  ``{"one": <leaf output>, "many": [<leaf output>, ...]}``.
- ``leaf``: input ``{"n": n, "nap": s}``; one step ``leaf`` that sleeps ``s`` seconds.
  Output ``{"n": n, "square": n * n, "pid": <pid>}``.
- ``chaos`` (the chaos tests, ``tests.chaos``): input ``{"steps": n, "nap": s}``; steps
  ``s1`` .. ``sn``, each sleeping ``s`` seconds and returning this pid. Its steps record
  themselves in ``chaos_log`` (see ``procs.CHAOS_LOG_DDL``) with the claim's attempt and
  this process's clock, retrying across lost connections and server restarts, so that
  no execution by a live process goes unrecorded.

``--code v1`` / ``--code v2`` (changing code under running runs, test_versions.py)
also registers a variant of the code of a deploy:

- ``deploy``: input: seconds to sleep. v1: steps ``a``, ``b``, a durable sleep ``nap``,
  step ``c``; v2 replaces ``b`` by ``b2`` behind ``run.patched("new-b")``. Output
  ``{"path": [<step names>], "pid": <pid>}``.
- ``versioned``: registered as version ``"1"`` (v1) or ``"2"`` (v2); one step.
  Output ``{"version": <version>, "pid": <pid>}``.

``--mode`` says what the blocking step does in this process, after logging itself:

- ``normal``: nothing more (``nap`` sleeps its input).
- ``hang``: sleeps ``HANG_S`` (30 s), i.e. until the worker cancels it.
- ``freeze``: stops the whole process with SIGSTOP (the test resumes it with SIGCONT),
  then returns. Models a process frozen mid-step (GC pause, VM migration, swap).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import anyio
import asyncpg

from tests.integration.procs import CONNECTION_ERRORS
from tidebase_async import LeaseLost, Run, Tidebase

logger = logging.getLogger("worker_app")

MODES = ("normal", "hang", "freeze")
HANG_S = 30.0
PID = os.getpid()
# How long a chaos step keeps trying to record itself while the database is unreachable.
LOG_RETRY_S = 120.0


class StepLog:
    """Writes ``step_log`` rows over a small pool of its own (not the library's)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def record(self, run_id: UUID, step: str) -> None:
        await self._pool.execute(
            "INSERT INTO step_log (run_id, step, pid) VALUES ($1, $2, $3)", run_id, step, PID
        )

    async def execution(self, run_id: UUID, step: str, attempt: int) -> None:
        """Record one execution in ``chaos_log``, stamped with this process's clock now.

        Retried (idempotently: one id per execution) while the connection is lost or the
        server restarts, and shielded: a step cancelled meanwhile (lease lost) has still
        started, and the chaos checks must count it.
        """
        exec_id = uuid.uuid4()
        at = datetime.now(UTC)
        deadline = time.monotonic() + LOG_RETRY_S
        delay = 0.05
        with anyio.CancelScope(shield=True):
            while True:
                try:
                    await self._pool.execute(
                        "INSERT INTO chaos_log (exec_id, run_id, step, attempt, pid, at) "
                        "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (exec_id) DO NOTHING",
                        exec_id,
                        run_id,
                        step,
                        attempt,
                        PID,
                        at,
                    )
                    return
                except CONNECTION_ERRORS as exc:
                    if time.monotonic() + delay > deadline:
                        raise
                    logger.info("chaos_log insert failed (%r); retrying in %.2fs", exc, delay)
                    await anyio.sleep(delay)
                    delay = min(delay * 2, 1.0)


async def blocking_step(mode: str, *, normal_s: float = 0.0) -> None:
    if mode == "hang":
        await anyio.sleep(HANG_S)
    elif mode == "freeze":
        # Stops every thread of this process until SIGCONT; the loop resumes right here.
        os.kill(PID, signal.SIGSTOP)
    elif normal_s > 0:
        await anyio.sleep(normal_s)


def register(tide: Tidebase, log: StepLog, mode: str) -> None:
    @tide.workflow("durable")
    async def durable(run: Run, input: Any) -> dict[str, Any]:
        async def s1() -> str:
            await log.record(run.id, "s1")
            return f"s1@{PID}"

        async def s2() -> str:
            await log.record(run.id, "s2")
            return f"s2@{PID}"

        async def s3() -> str:
            await log.record(run.id, "s3")
            await blocking_step(mode)
            return f"s3@{PID}"

        v1 = await run.step("s1", s1)
        v2 = await run.step("s2", s2)
        try:
            v3 = await run.step("s3", s3)
        except LeaseLost:
            # The fenced checkpoint was refused: another worker owns the run now.
            logger.warning("run %s: checkpoint of s3 refused with LeaseLost", run.id)
            raise
        return {"pid": PID, "s1": v1, "s2": v2, "s3": v3}

    @tide.workflow("nap")
    async def nap(run: Run, input: float) -> dict[str, Any]:
        async def nap_step() -> int:
            await log.record(run.id, "nap")
            await blocking_step(mode, normal_s=input)
            return PID

        return {"pid": PID, "nap": await run.step("nap", nap_step)}

    @tide.workflow("pair")
    async def pair(run: Run, input: float) -> dict[str, Any]:
        async def step(name: str) -> int:
            await log.record(run.id, name)
            if input > 0:
                await anyio.sleep(input)
            return PID

        a = await run.step("a", step, "a")
        b = await run.step("b", step, "b")
        return {"pid": PID, "a": a, "b": b}

    @tide.workflow("sleeper")
    async def sleeper(run: Run, input: float) -> dict[str, int]:
        async def logged(name: str) -> int:
            await log.record(run.id, name)
            return PID

        before = await run.step("before", logged, "before")
        await run.sleep("nap", input)
        after = await run.step("after", logged, "after")
        return {"before": before, "after": after}

    @tide.workflow("event_waiter")
    async def event_waiter(run: Run, input: dict[str, Any]) -> dict[str, Any]:
        async def logged(name: str) -> int:
            await log.record(run.id, name)
            return PID

        await run.step("before", logged, "before")
        payload = await run.wait_for_event("payment", key=input["key"])
        pid = await run.step("after", logged, "after")
        return {"payload": payload, "pid": pid}

    @tide.workflow("leaf")
    async def leaf(run: Run, input: dict[str, Any]) -> dict[str, Any]:
        async def leaf_step() -> int:
            await log.record(run.id, "leaf")
            await anyio.sleep(float(input.get("nap", 0)))
            return PID

        pid = await run.step("leaf", leaf_step)
        n = int(input["n"])
        return {"n": n, "square": n * n, "pid": pid}

    @tide.workflow("family")
    async def family(run: Run, input: dict[str, Any]) -> dict[str, Any]:
        nap = float(input.get("nap", 0))
        one = await run.child("leaf", input={"n": input["one"], "nap": nap}, name="one")
        many = await run.fanout("many", [("leaf", {"n": n, "nap": nap}) for n in input["many"]])
        return {"one": one, "many": many}

    @tide.workflow("chaos")
    async def chaos(run: Run, input: dict[str, Any]) -> list[int]:
        async def chaos_step(name: str, nap: float) -> int:
            await log.execution(run.id, name, run.attempt)
            await anyio.sleep(nap)
            return PID

        nap = float(input["nap"])
        done: list[int] = []
        for i in range(1, int(input["steps"]) + 1):
            done.append(await run.step(f"s{i}", chaos_step, f"s{i}", nap))
        return done


def register_code(tide: Tidebase, log: StepLog, code: str) -> None:
    """The workflows whose code changes between deploys (``--code``)."""

    async def logged(run: Run, name: str) -> str:
        await log.record(run.id, name)
        return name

    @tide.workflow("deploy")
    async def deploy(run: Run, input: float) -> dict[str, Any]:
        path = [await run.step("a", logged, run, "a")]
        if code == "v2" and await run.patched("new-b"):
            path.append(await run.step("b2", logged, run, "b2"))
        else:
            path.append(await run.step("b", logged, run, "b"))
        await run.sleep("nap", input)
        path.append(await run.step("c", logged, run, "c"))
        return {"path": path, "pid": PID}

    version = "1" if code == "v1" else "2"

    @tide.workflow("versioned", version=version)
    async def versioned(run: Run, input: Any) -> dict[str, Any]:
        await run.step("work", logged, run, f"work-v{version}")
        return {"version": version, "pid": PID}


async def serve(args: argparse.Namespace) -> int:
    pool = await asyncpg.create_pool(args.dsn, min_size=1, max_size=4)
    try:
        tide = Tidebase(args.dsn, pool_size=args.pool_size)
        register(tide, StepLog(pool), args.mode)
        if args.code is not None:
            register_code(tide, StepLog(pool), args.code)
        started = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def announce() -> None:
                await started.wait()
                print("READY", PID, flush=True)

            tg.start_soon(announce)
            await tide.work(
                concurrency=args.concurrency,
                lease=args.lease,
                poll_interval=args.poll_interval,
                maintenance_interval=args.maintenance_interval,
                shutdown_grace=args.shutdown_grace,
                started=started,
            )
            tg.cancel_scope.cancel()
    finally:
        await pool.close()
    print("STOPPED", PID, flush=True)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.integration.worker_app")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--mode", choices=MODES, default="normal")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--lease", type=float, default=5.0)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--maintenance-interval", type=float, default=0.2)
    parser.add_argument("--shutdown-grace", type=float, default=5.0)
    parser.add_argument("--pool-size", type=int, default=6)
    parser.add_argument("--code", choices=("v1", "v2"), default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
