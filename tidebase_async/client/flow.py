"""Flow control by key at enqueue: ``Debounce`` and ``Singleton`` (checks, and the
store call each takes). All of it lives in the database (schema 14): the pending run of
a debounce key is a queued run upserted under a unique index, a singleton key's active
run is unique under another; nothing is kept in this process."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from tidebase_async import errors
from tidebase_async._util.checks import as_seconds, is_utf8
from tidebase_async.models import Debounce, RunHandle, RunSpec, Singleton
from tidebase_async.store import NewRun

if TYPE_CHECKING:
    from tidebase_async.client.tidebase import Tidebase

#: The longest debounce or singleton key (characters).
MAX_FLOW_KEY = 200
#: The longest debounce window or max_wait: 100 years, in seconds.
_MAX_WAIT_S = 36_500 * 86_400.0


def _check_key(what: str, key: object) -> str:
    if not isinstance(key, str):
        raise errors.ConfigurationError(f"{what} key must be a str, got {type(key).__name__}")
    shown = repr(key[:40]) + ("..." if len(key) > 40 else "")
    if not 1 <= len(key) <= MAX_FLOW_KEY:
        raise errors.ConfigurationError(
            f"{what} key must be 1..{MAX_FLOW_KEY} characters, got {len(key)}: {shown}"
        )
    if "\x00" in key or not is_utf8(key):
        raise errors.ConfigurationError(
            f"{what} key must not hold NUL characters or lone surrogates: {shown}"
        )
    return key


def check_flow(spec: RunSpec) -> None:
    """Refuse a bad ``debounce``/``singleton`` of ``spec`` (before anything is written).

    Raises:
        ConfigurationError: names the problem.
    """
    debounce, singleton = spec.debounce, spec.singleton
    if debounce is None and singleton is None:
        return
    if debounce is not None and singleton is not None:
        raise errors.ConfigurationError("debounce and singleton cannot be combined")
    if spec.dedupe_key is not None:
        raise errors.ConfigurationError(
            f"dedupe_key cannot be combined with {'debounce' if debounce else 'singleton'}: "
            "the debounce or singleton key already decides which run an enqueue returns"
        )
    if debounce is not None:
        if not isinstance(debounce, Debounce):
            raise errors.ConfigurationError(
                f"debounce must be a Debounce, got {type(debounce).__name__}"
            )
        _check_key("debounce", debounce.key)
        if spec.delay is not None or spec.run_at is not None:
            raise errors.ConfigurationError(
                "delay and run_at cannot be combined with debounce: the run starts "
                "after its window (or max_wait)"
            )
        window = as_seconds(debounce.window, what="debounce window")
        max_wait = as_seconds(debounce.max_wait, what="debounce max_wait")
        if window is None:
            raise errors.ConfigurationError("debounce window must be given")
        if window > _MAX_WAIT_S or (max_wait is not None and max_wait > _MAX_WAIT_S):
            raise errors.ConfigurationError(
                "debounce window and max_wait must be at most 100 years"
            )
        if max_wait is not None and max_wait < window:
            raise errors.ConfigurationError(
                f"debounce max_wait ({max_wait:g}s) must be at least its window ({window:g}s)"
            )
    if singleton is not None:
        if not isinstance(singleton, Singleton):
            raise errors.ConfigurationError(
                f"singleton must be a Singleton, got {type(singleton).__name__}"
            )
        _check_key("singleton", singleton.key)
        if singleton.mode not in ("skip", "replace"):
            raise errors.ConfigurationError(
                f"singleton mode must be 'skip' or 'replace', got {singleton.mode!r}"
            )


async def enqueue_keyed(tide: Tidebase, spec: RunSpec, new: NewRun) -> RunHandle:
    """Enqueue ``new`` under ``spec``'s debounce or singleton key (checked by
    ``check_flow``), in a ``tidebase.enqueue`` span when tracing (the run carries its
    context). Durable once this returns."""
    telemetry = tide.telemetry
    if telemetry.tracer is None:
        return await _enqueue_keyed(tide, spec, new)
    attributes: dict[str, Any] = {
        "tidebase.runs": 1,
        "tidebase.workflow": new.workflow,
        "tidebase.queue": new.queue,
    }
    with telemetry.enqueue_span(attributes) as (span, carrier):
        handle = await _enqueue_keyed(
            tide, spec, msgspec.structs.replace(new, trace_context=carrier)
        )
        span.set_attribute("tidebase.run_id", str(handle.id))
        span.set_attribute("tidebase.deduplicated", handle.deduplicated)
        return handle


async def _enqueue_keyed(tide: Tidebase, spec: RunSpec, new: NewRun) -> RunHandle:
    # One statement (a transaction for replace).
    store = tide.store
    if spec.debounce is not None:
        run = msgspec.structs.replace(
            new,
            debounce_key=spec.debounce.key,
            debounce_window_s=as_seconds(spec.debounce.window, what="debounce window"),
            debounce_max_wait_s=as_seconds(spec.debounce.max_wait, what="debounce max_wait"),
        )
        row = await store.enqueue_debounced(run)
    else:
        assert spec.singleton is not None
        run = msgspec.structs.replace(new, singleton_key=spec.singleton.key)
        if spec.singleton.mode == "skip":
            row = await store.enqueue_singleton(run)
        else:
            row, cancelled = await store.replace_singleton(
                run, reason=f"replaced by run {run.id} (singleton)"
            )
            if cancelled:
                tide.notifier.runs_changed(*(r for r, _, _ in cancelled))
    if row.inserted:
        tide.telemetry.count_enqueued([(run.workflow, run.queue)])
    return RunHandle(id=row.id, deduplicated=not row.inserted)
