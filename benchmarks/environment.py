"""What a figure was measured on: machine, Postgres and its settings, Python, command."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlsplit

import msgspec

Mode = Literal["quick", "full"]

REPO = Path(__file__).resolve().parent.parent
PG_SETTINGS = ("fsync", "synchronous_commit", "shared_buffers", "max_connections")


class Machine(msgspec.Struct, frozen=True, kw_only=True):
    nproc: int
    cpu_model: str
    memory_gib: float | None


class PostgresInfo(msgspec.Struct, frozen=True, kw_only=True):
    server: str
    embedded: bool
    # Why the embedded server was used instead of the one asked for.
    fallback_reason: str | None
    version: str
    fsync: str
    synchronous_commit: str
    shared_buffers: str
    max_connections: str


class Environment(msgspec.Struct, frozen=True, kw_only=True):
    mode: Mode
    command: str
    python: str
    machine: Machine
    postgres: PostgresInfo
    library_revision: str | None


def command_line() -> str:
    """The command as typed, with the interpreter in use."""
    return shlex.join([sys.executable, "-m", "benchmarks", *sys.argv[1:]])


def _proc_field(path: str, key: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                name, _, value = line.partition(":")
                if name.strip() == key:
                    return value.strip()
    except OSError:
        return None
    return None


def machine() -> Machine:
    mem_kb = _proc_field("/proc/meminfo", "MemTotal")
    return Machine(
        nproc=len(os.sched_getaffinity(0)),
        cpu_model=_proc_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        memory_gib=round(int(mem_kb.split()[0]) / 2**20, 1) if mem_kb else None,
    )


def library_revision() -> str | None:
    """``<commit>`` of the checkout, ``+dirty`` when tidebase_async/ has local changes."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "tidebase_async"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{commit}+dirty" if dirty else commit


def describe_server(dsn: str) -> str:
    """host:port of a DSN (or its socket directory); never the password."""
    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    host = parts.hostname or (query.get("host") or ["localhost"])[0]
    port = parts.port or (query.get("port") or ["5432"])[0]
    return f"{host}:{port}"


def python_version() -> str:
    return f"{platform.python_implementation()} {platform.python_version()}"


def postgres_info(
    server: str, embedded: bool, fallback_reason: str | None, settings: dict[str, str]
) -> PostgresInfo:
    return PostgresInfo(
        server=server,
        embedded=embedded,
        fallback_reason=fallback_reason,
        version=settings["server_version"],
        fsync=settings["fsync"],
        synchronous_commit=settings["synchronous_commit"],
        shared_buffers=settings["shared_buffers"],
        max_connections=settings["max_connections"],
    )
