"""Chaos scenarios against worker processes, and the checks that every one must pass.

Worker processes are ``tests.integration.worker_app`` (via ``procs.Workers``); they run
workflow ``chaos``, whose steps record every execution in ``chaos_log`` (run, step, claim
attempt, pid, the process's clock at step start, the server's clock at the insert).

Scenarios (each on a database of its own, already migrated):

- ``kill_chaos``: a random worker is SIGKILLed every 1-2 s and replaced, while a feeder
  keeps a backlog of runs queued.
- ``cut_chaos``: every connection to the database (the workers' pools, listeners,
  maintenance sessions and step loggers) is terminated at once, several times mid-load.
  Nobody died, so no step may execute twice.
- ``restart_chaos``: the Postgres server itself is restarted mid-load.

``verify`` then checks what the library promises, from the database alone:

1. every run completed, exactly once (one ``run.completed`` event, status completed),
   its output being the pids its step checkpoints recorded;
2. every duplicate step execution is explained by a killed process: for each
   (run, step) executed more than once, every execution but the last was by a pid that
   was SIGKILLed, and started before that kill (in ``restart_chaos`` a duplicate may also
   come from a claim that ended by lease expiry or release: that is reported apart);
3. no completed step was executed again after its checkpoint: no execution under a
   later claim than the checkpoint's, none logged after the checkpoint was written, and
   the last execution is the one that wrote the checkpoint.

Clocks: ``at`` comes from the worker processes and kill times from this process (same
host, one clock); checkpoint times and ``logged_at`` both come from the server.
"""

from __future__ import annotations

import json
import random
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import anyio
import asyncpg

from tests.integration import procs
from tidebase_async import RunSpec, Tidebase

WORKFLOW = "chaos"
# Crashes spend attempts; a run unlucky enough to meet several kills must not fail.
MAX_ATTEMPTS = 50
DRAIN_TIMEOUT_S = 60.0

Out = Callable[[str], None]

# Replay's Execution.write logs this for each fenced write it retries after a lost
# connection ("run <id>: checkpoint of step 's2' failed (...); retrying in 0.05s").
_WRITE_RETRY = re.compile(r"run \S+: .+ failed \(.*\); retrying in ")


@dataclass(frozen=True)
class Settings:
    """How the worker processes run."""

    workers: int = 3
    concurrency: int = 8
    lease: float = 2.0
    maintenance_interval: float = 0.2
    poll_interval: float = 1.0
    shutdown_grace: float = 5.0


@dataclass
class Verdict:
    """What ``verify`` found (it raises on any violation)."""

    runs: int = 0
    steps: int = 0
    executions: int = 0
    duplicates: int = 0
    duplicates_killed: int = 0
    duplicates_lease: int = 0
    requeued: int = 0
    released: int = 0
    max_attempt: int = 0


@dataclass
class Report:
    scenario: str
    settings: Settings
    seed: int
    verdict: Verdict = field(default_factory=Verdict)
    kills: int = 0
    cuts: int = 0
    backends_cut: int = 0
    restarts: int = 0
    restart_s: list[float] = field(default_factory=list)
    resume_s: list[float] = field(default_factory=list)
    writes_retried: int = 0
    drain_s: float = 0.0
    total_s: float = 0.0

    def summary(self) -> str:
        v, s = self.verdict, self.settings
        lines = [
            f"chaos/{self.scenario}: {s.workers} worker processes x concurrency "
            f"{s.concurrency}, lease {s.lease:g}s, maintenance {s.maintenance_interval:g}s, "
            f"seed {self.seed}",
            f"  runs completed exactly once: {v.runs}/{v.runs} ({v.steps} steps, "
            f"{v.executions} step executions, highest claim attempt {v.max_attempt})",
        ]
        if self.kills:
            lines.append(f"  SIGKILLs survived: {self.kills}")
        if self.cuts:
            lines.append(
                f"  connection cuts: {self.cuts} ({self.backends_cut} backends terminated)"
            )
        if self.restarts:
            lines.append(
                f"  server restarts: {self.restarts} (restart took "
                f"{_seconds(self.restart_s)}; runs completing again "
                f"{_seconds(self.resume_s)} after the restart began)"
            )
        lines += [
            f"  leases expired and requeued: {v.requeued}; claims released: {v.released}; "
            f"fenced writes retried after a lost connection: {self.writes_retried}",
            f"  duplicate step executions: {v.duplicates} (by killed processes: "
            f"{v.duplicates_killed}; after a lease lost to the outage: {v.duplicates_lease})",
            f"  drain: {self.drain_s:.1f}s after the last disruption; total {self.total_s:.1f}s",
        ]
        return "\n".join(lines)


def _seconds(values: Sequence[float]) -> str:
    return ", ".join(f"{x:.1f}s" for x in values) or "-"


# -- database access that survives cuts and restarts ---------------------------------


class Db:
    """One plain connection for the harness, reopened after a cut or restart."""

    def __init__(self, dsn: str, *, retry_s: float = 60.0) -> None:
        self.dsn = dsn
        self._retry_s = retry_s
        self._conn: asyncpg.Connection | None = None

    async def _call(self, method: str, sql: str, *args: Any) -> Any:
        deadline = time.monotonic() + self._retry_s
        delay = 0.05
        while True:
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await asyncpg.connect(self.dsn, timeout=5)
                return await getattr(self._conn, method)(sql, *args)
            except procs.CONNECTION_ERRORS:
                await self.close()
                if time.monotonic() + delay > deadline:
                    raise
                await anyio.sleep(delay)
                delay = min(delay * 2, 0.5)

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self._call("fetch", sql, *args)
        return rows

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._call("fetchval", sql, *args)

    async def execute(self, sql: str, *args: Any) -> None:
        await self._call("execute", sql, *args)

    async def backend_pid(self) -> int:
        return int(await self.fetchval("SELECT pg_backend_pid()"))

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()


async def completed(db: Db, ids: Sequence[UUID]) -> int:
    n: int = await db.fetchval(
        "SELECT count(*) FROM tidebase.runs WHERE id = ANY($1) AND status = 'completed'",
        list(ids),
    )
    return n


async def wait_completed(db: Db, ids: Sequence[UUID], n: int, *, timeout: float) -> None:
    async def enough() -> bool:
        return await completed(db, ids) >= n

    await procs.eventually(enough, timeout=timeout, what=f"{n} runs to complete", interval=0.05)


# -- load ------------------------------------------------------------------------------


def specs(rng: random.Random, n: int) -> list[RunSpec]:
    """Runs of 3 to 5 steps, each step sleeping 30 to 150 ms."""
    return [
        RunSpec(
            workflow=WORKFLOW,
            input={"steps": rng.randint(3, 5), "nap": round(rng.uniform(0.03, 0.15), 3)},
            max_attempts=MAX_ATTEMPTS,
        )
        for _ in range(n)
    ]


async def enqueue(dsn: str, rng: random.Random, n: int) -> list[UUID]:
    """Enqueue ``n`` runs through a client that is closed again afterwards."""
    async with Tidebase(dsn, pool_size=2) as client:
        return [h.id for h in await client.enqueue_many(specs(rng, n))]


async def start_workers(
    workers: procs.Workers, settings: Settings, n: int, *, ready: bool = True
) -> list[procs.WorkerProcess]:
    started = [
        await workers.start(
            "normal",
            concurrency=settings.concurrency,
            lease=settings.lease,
            poll_interval=settings.poll_interval,
            maintenance_interval=settings.maintenance_interval,
            shutdown_grace=settings.shutdown_grace,
            ready=False,
        )
        for _ in range(n)
    ]
    if ready:
        for proc in started:
            await proc.wait_ready()
    return started


async def stop_workers(workers: procs.Workers, killed: Collection[int] = ()) -> None:
    """SIGTERM every live worker; each must drain and exit 0: none but the ``killed``
    died meanwhile."""
    for proc in workers.alive():
        proc.send(signal.SIGTERM)
    for proc in workers.procs:
        rc = await proc.wait_exit(20)
        if proc.pid not in killed:
            assert rc == 0, f"worker exited with {rc}: {proc.describe()}"


def writes_retried(workers: procs.Workers) -> int:
    return sum(len(_WRITE_RETRY.findall(proc.stderr())) for proc in workers.procs)


# -- scenarios -------------------------------------------------------------------------


async def kill_chaos(
    dsn: str,
    log_dir: Path,
    *,
    kills: int,
    settings: Settings = Settings(),
    initial_runs: int = 100,
    backlog: int = 40,
    seed: int | None = None,
    out: Out = print,
) -> Report:
    """SIGKILL a random worker every 1-2 s (``kills`` times) and start a new one."""
    seed = random.randrange(1 << 30) if seed is None else seed
    rng = random.Random(seed)
    report = Report("kills", settings, seed)
    db = Db(dsn)
    try:
        await db.execute(procs.CHAOS_LOG_DDL)
        t0 = time.monotonic()
        ids = await enqueue(dsn, rng, initial_runs)
        killed: dict[int, datetime] = {}
        async with procs.Workers(dsn, log_dir) as workers:
            await start_workers(workers, settings, settings.workers)
            done_feeding = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(_feed, dsn, ids, rng, backlog, done_feeding)
                for k in range(kills):
                    await anyio.sleep(rng.uniform(1.0, 2.0))
                    alive = workers.alive()
                    victim = rng.choice([p for p in alive if "READY" in p.stdout()] or alive)
                    victim.kill()  # SIGKILL and reap: nothing of it runs after this line
                    killed[victim.pid] = datetime.now(UTC)
                    report.kills += 1
                    out(
                        f"  kill {k + 1}/{kills}: pid {victim.pid} "
                        f"({await completed(db, ids)}/{len(ids)} runs completed)"
                    )
                    await start_workers(workers, settings, 1, ready=False)
                done_feeding.set()
            last = time.monotonic()
            await wait_completed(db, ids, len(ids), timeout=DRAIN_TIMEOUT_S)
            report.drain_s = time.monotonic() - last
            report.total_s = time.monotonic() - t0
            await stop_workers(workers, killed)
            report.writes_retried = writes_retried(workers)
        report.verdict = await verify(db, ids, killed=killed, lease_losses_allowed=False)
        assert report.verdict.requeued > 0, "no kill hit a run in flight: the test proves nothing"
        assert report.verdict.duplicates_killed > 0 or kills < 3, (
            "no kill hit a step in flight: the test proves nothing"
        )
    finally:
        await db.close()
    return report


async def _feed(
    dsn: str,
    ids: list[UUID],
    rng: random.Random,
    backlog: int,
    done: anyio.Event,
) -> None:
    """Keep about ``backlog`` runs queued until ``done``."""
    db = Db(dsn)  # its own: one asyncpg connection runs one query at a time
    try:
        async with Tidebase(dsn, pool_size=2) as client:
            while not done.is_set():
                queued: int = await db.fetchval(
                    "SELECT count(*) FROM tidebase.runs WHERE status = 'queued'"
                )
                if queued < backlog:
                    handles = await client.enqueue_many(specs(rng, backlog - queued))
                    ids.extend(h.id for h in handles)
                with anyio.move_on_after(0.25):
                    await done.wait()
    finally:
        await db.close()


async def cut_chaos(
    dsn: str,
    log_dir: Path,
    *,
    runs: int,
    cuts: int,
    settings: Settings = Settings(),
    seed: int | None = None,
    out: Out = print,
) -> Report:
    """Terminate every connection to the database ``cuts`` times, spread over the load."""
    seed = random.randrange(1 << 30) if seed is None else seed
    rng = random.Random(seed)
    report = Report("connection-cuts", settings, seed)
    db = Db(dsn)
    try:
        await db.execute(procs.CHAOS_LOG_DDL)
        ids = await enqueue(dsn, rng, runs)
        async with procs.Workers(dsn, log_dir) as workers:
            await start_workers(workers, settings, settings.workers)
            t0 = time.monotonic()
            last = t0
            for c in range(cuts):
                await wait_completed(db, ids, runs * (c + 1) // (cuts + 2), timeout=30)
                n: int = await db.fetchval(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) "
                    "FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                last = time.monotonic()
                done = await completed(db, ids)
                report.cuts += 1
                report.backends_cut += n
                out(f"  cut {c + 1}/{cuts}: {n} backends terminated ({done}/{runs} completed)")
                # Every worker has a pool connection and its listener, at least.
                assert n >= 2 * settings.workers, f"only {n} backends to terminate"
                assert done < runs, "the cut came after the load: it proves nothing"
                # Let the workers reconnect before the next cut.
                await anyio.sleep(0.3)
            await wait_completed(db, ids, runs, timeout=DRAIN_TIMEOUT_S)
            report.drain_s = time.monotonic() - last
            report.total_s = time.monotonic() - t0
            await stop_workers(workers)
            report.writes_retried = writes_retried(workers)
        # Nobody was killed: not a single step may have executed twice.
        report.verdict = await verify(db, ids, killed={}, lease_losses_allowed=False)
    finally:
        await db.close()
    return report


@dataclass(frozen=True)
class ServerControl:
    """Commands that restart and start the Postgres server under test."""

    restart: list[str]
    start: list[str]


def local_cluster(dsn: str) -> ServerControl | None:
    """pg_ctlcluster commands for the local cluster that serves ``dsn`` (looked up by
    port in ``pg_lsclusters``), or None when ``dsn`` is not served by one."""
    parts = urlsplit(dsn)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1") or not shutil.which("pg_lsclusters"):
        return None
    port = parts.port or 5432
    listing = subprocess.run(
        ["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=False
    ).stdout
    for line in listing.splitlines():
        cols = line.split()
        if len(cols) >= 3 and cols[2] == str(port):
            ctl = ["pg_ctlcluster", "--skip-systemctl-redirect", cols[0], cols[1]]
            return ServerControl(restart=[*ctl, "restart", "-m", "fast"], start=[*ctl, "start"])
    return None


async def ensure_server_up(server: ServerControl, dsn: str, *, timeout: float = 60) -> None:
    """Start the server if it is down, and wait until it accepts connections."""
    deadline = time.monotonic() + timeout
    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except procs.CONNECTION_ERRORS:
        await anyio.run_process(server.start, check=False)
    else:
        await conn.close()
        return
    while True:
        try:
            conn = await asyncpg.connect(dsn, timeout=5)
        except procs.CONNECTION_ERRORS:
            if time.monotonic() > deadline:
                raise
            await anyio.sleep(0.2)
            continue
        await conn.close()
        return


class ServerBusy(Exception):
    """Other clients use the server: restarting it would break their work."""


async def other_sessions(db: Db) -> list[str]:
    """Databases other than ``db``'s with client sessions on the server (not ours)."""
    rows = await db.fetch(
        "SELECT datname, count(*) AS n FROM pg_stat_activity "
        "WHERE backend_type = 'client backend' AND datname <> current_database() "
        "AND pid <> pg_backend_pid() GROUP BY datname ORDER BY datname"
    )
    return [f"{r['datname']} ({r['n']})" for r in rows]


async def restart_chaos(
    dsn: str,
    log_dir: Path,
    *,
    runs: int,
    restarts: int,
    server: ServerControl,
    settings: Settings = Settings(),
    quiet_wait_s: float = 0.0,
    seed: int | None = None,
    out: Out = print,
) -> Report:
    """Restart the Postgres server ``restarts`` times mid-load (``server.restart``).

    A restart ends every session on the server, so this waits up to ``quiet_wait_s``
    for other databases' sessions to end first.

    Raises:
        ServerBusy: other sessions were still there after ``quiet_wait_s``.
    """
    seed = random.randrange(1 << 30) if seed is None else seed
    rng = random.Random(seed)
    report = Report("server-restart", settings, seed)
    db = Db(dsn)
    try:
        deadline = time.monotonic() + quiet_wait_s
        while busy := await other_sessions(db):
            if time.monotonic() >= deadline:
                raise ServerBusy(
                    "not restarting the server: other databases have sessions: " + ", ".join(busy)
                )
            out(f"  waiting for the server to be quiet: sessions on {', '.join(busy)}")
            await anyio.sleep(10)
        await db.execute(procs.CHAOS_LOG_DDL)
        ids = await enqueue(dsn, rng, runs)
        async with procs.Workers(dsn, log_dir) as workers:
            await start_workers(workers, settings, settings.workers)
            t0 = time.monotonic()
            last = t0
            for r in range(restarts):
                await wait_completed(db, ids, runs * (r + 1) // (restarts + 2), timeout=60)
                before = await completed(db, ids)
                assert before < runs, "the restart would come after the load: it proves nothing"
                if busy := await other_sessions(db):
                    raise ServerBusy(
                        "not restarting the server: other databases have sessions now: "
                        + ", ".join(busy)
                    )
                began = time.monotonic()
                result = await anyio.run_process(server.restart, check=False)
                took = time.monotonic() - began
                assert result.returncode == 0, (
                    f"{shlex.join(server.restart)} failed ({result.returncode}): "
                    f"{result.stderr.decode(errors='replace')}"
                )
                # Back up: from now on, a run completing is the workers' doing after the
                # restart (not one finishing while the server shut down).
                up = await completed(db, ids)
                await wait_completed(db, ids, min(up + 1, runs), timeout=60)
                resumed = time.monotonic() - began
                last = time.monotonic()
                report.restarts += 1
                report.restart_s.append(took)
                report.resume_s.append(resumed)
                out(
                    f"  restart {r + 1}/{restarts} at {before}/{runs} completed: server "
                    f"restarted in {took:.1f}s, runs completing again {resumed:.1f}s after "
                    "the restart began"
                )
            await wait_completed(db, ids, runs, timeout=DRAIN_TIMEOUT_S)
            report.drain_s = time.monotonic() - last
            report.total_s = time.monotonic() - t0
            await stop_workers(workers)
            report.writes_retried = writes_retried(workers)
        report.verdict = await verify(db, ids, killed={}, lease_losses_allowed=True)
    finally:
        await db.close()
        await ensure_server_up(server, dsn)
    return report


# -- the checks ------------------------------------------------------------------------


def _pid_of(worker_id: str) -> int:
    """Worker ids are ``host:pid:random``."""
    return int(worker_id.split(":")[-2])


async def verify(
    db: Db,
    ids: Sequence[UUID],
    *,
    killed: dict[int, datetime],
    lease_losses_allowed: bool,
) -> Verdict:
    """Check the promises (module docstring) for runs ``ids``; raise AssertionError
    listing every violation found."""
    verdict = Verdict(runs=len(ids))
    bad: list[str] = []
    id_list = list(ids)

    runs = {
        r["id"]: r
        for r in await db.fetch(
            "SELECT id, status, attempt, input::text AS input, output::text AS output "
            "FROM tidebase.runs WHERE id = ANY($1)",
            id_list,
        )
    }
    if len(runs) != len(ids):
        bad.append(f"{len(ids) - len(runs)} enqueued runs are missing")

    # Claims: attempt -> claiming pid, and how each claim ended.
    claimer: dict[tuple[UUID, int], int] = {}
    ended: dict[tuple[UUID, int], str] = {}
    completions: Counter[UUID] = Counter()
    current: dict[UUID, int] = {}
    for e in await db.fetch(
        "SELECT run_id, type, data::text AS data FROM tidebase.events "
        "WHERE run_id = ANY($1) ORDER BY run_id, seq",
        id_list,
    ):
        rid, kind = e["run_id"], e["type"]
        data = json.loads(e["data"]) if e["data"] else {}
        if kind == "run.claimed":
            current[rid] = int(data["attempt"])
            claimer[(rid, current[rid])] = _pid_of(data["worker"])
        elif kind in ("run.requeued", "run.released", "run.retrying", "run.failed"):
            ended[(rid, current.get(rid, 0))] = kind
            verdict.requeued += kind == "run.requeued"
            verdict.released += kind == "run.released"
            if kind in ("run.retrying", "run.failed"):
                bad.append(f"run {rid}: unexpected {kind} {data}")
        elif kind == "run.completed":
            completions[rid] += 1

    checkpoints: dict[tuple[UUID, str], asyncpg.Record] = {}
    for s in await db.fetch(
        "SELECT run_id, position, name, status, run_attempt, output, finished_at "
        "FROM tidebase.steps WHERE run_id = ANY($1) ORDER BY run_id, position",
        id_list,
    ):
        checkpoints[(s["run_id"], s["name"])] = s

    for rid, run in runs.items():
        verdict.max_attempt = max(verdict.max_attempt, run["attempt"])
        if run["status"] != "completed":
            bad.append(f"run {rid}: status {run['status']}, not completed")
            continue
        if completions[rid] != 1:
            bad.append(f"run {rid}: {completions[rid]} run.completed events")
        n = int(json.loads(run["input"])["steps"])
        verdict.steps += n
        names = [f"s{i}" for i in range(1, n + 1)]
        pids: list[int] = []
        for name in names:
            cp = checkpoints.get((rid, name))
            if cp is None or cp["status"] != "completed":
                bad.append(f"run {rid}: step {name} has no completed checkpoint")
                continue
            pid = int(json.loads(bytes(cp["output"])))
            pids.append(pid)
            if claimer.get((rid, cp["run_attempt"])) != pid:
                bad.append(
                    f"run {rid}: step {name} checkpointed by pid {pid} under claim "
                    f"{cp['run_attempt']} of pid {claimer.get((rid, cp['run_attempt']))}"
                )
        if json.loads(run["output"]) != pids:
            bad.append(f"run {rid}: output {run['output']} but checkpoints say {pids}")

    executions: dict[tuple[UUID, str], list[asyncpg.Record]] = defaultdict(list)
    for x in await db.fetch(
        "SELECT run_id, step, attempt, pid, at, logged_at FROM chaos_log "
        "WHERE run_id = ANY($1) ORDER BY run_id, step, attempt, at",
        id_list,
    ):
        executions[(x["run_id"], x["step"])].append(x)
    verdict.executions = sum(len(xs) for xs in executions.values())

    for key in checkpoints:
        if key[0] in runs and key not in executions:
            bad.append(f"run {key[0]}: step {key[1]} checkpointed but never logged")
    for (rid, step), xs in executions.items():
        where = f"run {rid} step {step}"
        for x in xs:
            if claimer.get((rid, x["attempt"])) != x["pid"]:
                bad.append(f"{where}: executed by pid {x['pid']} under claim {x['attempt']}")
        attempts = Counter(x["attempt"] for x in xs)
        for attempt, count in attempts.items():
            if count > 1:
                bad.append(f"{where}: executed {count} times under claim {attempt}")
        cp = checkpoints.get((rid, step))
        if cp is None:
            bad.append(f"{where}: executed but never checkpointed")
            continue
        # 3. Nothing ran after the checkpoint, and its writer ran last.
        last = xs[-1]
        if (last["attempt"], last["pid"]) != (cp["run_attempt"], int(json.loads(cp["output"]))):
            bad.append(
                f"{where}: last execution (claim {last['attempt']}, pid {last['pid']}) is "
                f"not the checkpoint's (claim {cp['run_attempt']})"
            )
        for x in xs:
            if x["attempt"] > cp["run_attempt"] or x["logged_at"] > cp["finished_at"]:
                bad.append(
                    f"{where}: executed again (claim {x['attempt']}, pid {x['pid']}, at "
                    f"{x['logged_at']}) after its checkpoint (claim {cp['run_attempt']}, "
                    f"{cp['finished_at']})"
                )
        # 2. Every earlier execution is explained by a killed process.
        for x in xs[:-1]:
            verdict.duplicates += 1
            kill_at = killed.get(x["pid"])
            if kill_at is not None and x["at"] < kill_at:
                verdict.duplicates_killed += 1
            elif lease_losses_allowed and ended.get((rid, x["attempt"])) in (
                "run.requeued",
                "run.released",
            ):
                verdict.duplicates_lease += 1
            else:
                bad.append(
                    f"{where}: duplicate execution by pid {x['pid']} (claim {x['attempt']}, "
                    f"at {x['at']}), "
                    + (
                        f"which was killed only at {kill_at}"
                        if kill_at is not None
                        else "which was never killed"
                    )
                    + f"; that claim ended by {ended.get((rid, x['attempt']), 'nothing')}"
                )

    if bad:
        listing = "\n  ".join(bad[:40])
        more = f"\n  ... and {len(bad) - 40} more" if len(bad) > 40 else ""
        raise AssertionError(f"{len(bad)} violations:\n  {listing}{more}")
    return verdict
