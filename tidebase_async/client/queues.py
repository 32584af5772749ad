"""``tide.queues``: pause a queue, cap its concurrency across all workers, limit its rate.

The controls live in the database and are enforced there: a worker claims from a
controlled queue inside a transaction that holds the queue's row lock, counts the
queue's running runs with a fresh snapshot and refills its token bucket, so the cap
holds exactly whatever the number of workers. Uncontrolled queues take the fast path;
the claim statement itself skips queues that are controlled in its snapshot.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final

from tidebase_async import errors
from tidebase_async._util.checks import check_name
from tidebase_async.engine.metrics import escape_label
from tidebase_async.engine.worker import VERSIONS_LIVE_S
from tidebase_async.models import QUEUE_KEY_COUNT_MAX, QueueInfo, QueueKeys, QueueVersion
from tidebase_async.store import QueueControl

if TYPE_CHECKING:
    from tidebase_async.client.tidebase import Tidebase


#: Queued runs per version, by queue (``Queues.versions``).
QueueVersions = dict[str, list[QueueVersion]]


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


#: "Leave this control as it is" (``None`` clears a control).
UNSET: Final = _Unset()


class Queues:
    """``tide.queues``."""

    def __init__(self, tide: Tidebase) -> None:
        self._tide = tide

    async def configure(
        self,
        name: str,
        *,
        concurrency: int | _Unset | None = UNSET,
        rate_per_minute: float | _Unset | None = UNSET,
        paused: bool | _Unset = UNSET,
        per_key_concurrency: int | _Unset | None = UNSET,
        per_key_rate_per_minute: float | _Unset | None = UNSET,
    ) -> QueueInfo:
        """Set the controls given (``None`` clears one; omitted ones stay as they are).

        - ``concurrency``: at most this many of the queue's runs are running at once,
          across all workers (waiting runs do not count).
        - ``rate_per_minute``: claims from the queue are limited to this rate on average,
          in bursts of at most one second's worth (at least one run).
        - ``paused``: no run of the queue is claimed; runs already running go on.
        - ``per_key_concurrency``: at most this many running runs per concurrency key
          (``enqueue(..., concurrency_key=)``), across all workers.
        - ``per_key_rate_per_minute``: at most this many claims per key per minute on
          average, in bursts of at most one second's worth (at least one run).

        With either per-key control, keys take turns (round robin, each key's runs in
        priority then FIFO order), so one busy key cannot starve the others; runs
        without a key are not limited per key and take turns as one more group.

        Workers hear of a change through NOTIFY (and poll as the floor).

        Raises:
            ConfigurationError: a bad name or value; nothing is stored.
        """
        check_name("queue", name)
        _check_count("concurrency", concurrency)
        _check_rate("rate_per_minute", rate_per_minute)
        _check_count("per_key_concurrency", per_key_concurrency)
        _check_rate("per_key_rate_per_minute", per_key_rate_per_minute)
        if not isinstance(paused, _Unset) and not isinstance(paused, bool):
            raise errors.ConfigurationError(f"paused must be True or False, got {paused!r}")
        control = await self._tide.store.configure_queue(
            name=name,
            concurrency=None if isinstance(concurrency, _Unset) else concurrency,
            rate_per_minute=(
                None
                if isinstance(rate_per_minute, _Unset) or rate_per_minute is None
                else float(rate_per_minute)
            ),
            paused=None if isinstance(paused, _Unset) else paused,
            set_concurrency=not isinstance(concurrency, _Unset),
            set_rate=not isinstance(rate_per_minute, _Unset),
            set_paused=not isinstance(paused, _Unset),
            per_key_concurrency=(
                None if isinstance(per_key_concurrency, _Unset) else per_key_concurrency
            ),
            per_key_rate_per_minute=(
                None
                if isinstance(per_key_rate_per_minute, _Unset) or per_key_rate_per_minute is None
                else float(per_key_rate_per_minute)
            ),
            set_per_key_concurrency=not isinstance(per_key_concurrency, _Unset),
            set_per_key_rate=not isinstance(per_key_rate_per_minute, _Unset),
        )
        counts = (await self._tide.store.queue_counts()).get(name, {})
        return _info(control, counts)

    async def list(self) -> list[QueueInfo]:
        """Every queue that has runs or controls, with its runs counted by status, and
        its queued runs of versioned workflows per version (``versions``; a version
        with ``workers == 0`` has no live worker that can take its runs)."""
        store = self._tide.store
        controls = {c.name: c for c in await store.queue_controls()}
        counts = await store.queue_counts()
        versions = await self.versions()
        names = sorted(set(controls) | set(counts))
        return [
            _info(
                controls.get(name) or QueueControl(name=name),
                counts.get(name, {}),
                versions.get(name, []),
            )
            for name in names
        ]

    async def versions(self) -> QueueVersions:
        """Queued runs of versioned workflows per queue and version, with how many
        live workers (seen in the last minute) registered each version."""
        rows = await self._tide.store.version_counts(live_s=VERSIONS_LIVE_S)
        found: QueueVersions = {}
        for r in rows:
            found.setdefault(r.queue, []).append(
                QueueVersion(
                    workflow=r.workflow,
                    version=r.version,
                    queued=r.queued,
                    oldest_s=round(r.oldest_s, 3),
                    workers=r.workers,
                )
            )
        return found

    async def versions_metrics_text(self) -> str:
        """The per-version gauges of ``/metrics`` (Prometheus text): queued runs and
        live workers per (queue, workflow, version)."""
        lines = [
            "# HELP tidebase_version_queued_runs Queued runs per workflow version.",
            "# TYPE tidebase_version_queued_runs gauge",
        ]
        workers = [
            "# HELP tidebase_version_live_workers Live workers that have the version "
            "(0: its queued runs wait for one).",
            "# TYPE tidebase_version_live_workers gauge",
        ]
        for queue, items in sorted((await self.versions()).items()):
            for v in items:
                labels = (
                    f'queue="{escape_label(queue)}",workflow="{escape_label(v.workflow)}",'
                    f'version="{escape_label(v.version)}"'
                )
                lines.append(f"tidebase_version_queued_runs{{{labels}}} {v.queued}")
                workers.append(f"tidebase_version_live_workers{{{labels}}} {v.workers}")
        return "\n".join(lines + workers) + "\n"

    async def get(self, name: str) -> QueueInfo:
        """One queue (a queue nobody configured has no controls and maybe no runs)."""
        check_name("queue", name)
        store = self._tide.store
        found = await store.queue_controls([name])
        counts = (await store.queue_counts()).get(name, {})
        versions = (await self.versions()).get(name, [])
        return _info(found[0] if found else QueueControl(name=name), counts, versions)

    async def keys(self, name: str, *, limit: int = 20) -> QueueKeys:
        """The queue's flow control by key right now: its per-key controls, its
        ``limit`` busiest concurrency keys (running plus queued runs, most first; the
        queued ones counted up to ``QUEUE_KEY_COUNT_MAX``), and up to ``limit`` pending
        debounce runs and active singleton runs. Bounded reads: at most
        ``_MAX_KEYS`` queued and as many running keys are visited (``complete`` says
        whether that was all of them).

        Raises:
            ConfigurationError: a bad name or limit.
        """
        check_name("queue", name)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100:
            raise errors.ConfigurationError(f"limit must be 1..100, got {limit!r}")
        store = self._tide.store
        found = await store.queue_controls([name])
        control = found[0] if found else QueueControl(name=name)
        keys, complete, debounces, singletons = await store.queue_keys(
            name, limit=limit, max_keys=_MAX_KEYS, max_count=QUEUE_KEY_COUNT_MAX
        )
        return QueueKeys(
            name=name,
            per_key_concurrency=control.per_key_concurrency,
            per_key_rate_per_minute=control.per_key_rate_per_minute,
            keys=keys,
            complete=complete,
            debounces=debounces,
            singletons=singletons,
        )


#: Keys ``Queues.keys`` visits at most (of queued runs, and as many of running ones).
_MAX_KEYS = 500


def _info(
    control: QueueControl, counts: dict[str, int], versions: list[QueueVersion] | None = None
) -> QueueInfo:
    return QueueInfo(
        name=control.name,
        concurrency=control.concurrency,
        rate_per_minute=control.rate_per_minute,
        paused=control.paused,
        per_key_concurrency=control.per_key_concurrency,
        per_key_rate_per_minute=control.per_key_rate_per_minute,
        counts=dict(counts),
        versions=list(versions or []),
    )


def _check_count(what: str, value: object) -> None:
    if isinstance(value, _Unset) or value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000:
        raise errors.ConfigurationError(
            f"{what} must be an int in 1..1000000 or None, got {value!r}"
        )


def _check_rate(what: str, value: object) -> None:
    if isinstance(value, _Unset) or value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value <= 1e9
    ):
        raise errors.ConfigurationError(f"{what} must be a number > 0 or None, got {value!r}")
