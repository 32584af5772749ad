"""``run.state``: the run's live state, with labelled versions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anyio

from tidebase_async import errors
from tidebase_async._util import codec
from tidebase_async._util.checks import is_utf8
from tidebase_async.engine.execution import _ENTRY

if TYPE_CHECKING:
    from tidebase_async.engine.run import Run


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch: objects merge recursively, ``None`` deletes a key,
    anything else replaces."""
    if not isinstance(patch, Mapping):
        return patch
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class RunState:
    """The run's live state: a JSON document readers see through ``runs.get``.

    Only the worker holding the lease writes it (every write is fenced). While the
    workflow replays code before its last checkpoint, writes apply in memory only: the
    database already holds their effect, and rewriting it would make progress go
    backwards for readers.
    """

    def __init__(self, run: Run) -> None:
        self._run = run
        # Start from the run's initial state (the column default), not from what the
        # database holds now: the workflow re-runs from the top and re-applies its
        # writes, so a read between steps must see on replay what it saw the first
        # time. Deterministic code arrives at the stored state by the end of replay.
        self._value: Any = {}
        # Concurrent writes of one run (branches of a gather) go out one at a time, in
        # the order they were made: each carries the whole document, so two in flight
        # could land in the other order and the state (and its history) go backwards.
        # Made on the first write (most runs never write state; creating a lock for
        # each is a measurable part of a no-op run's cost).
        self._write_lock: anyio.Lock | None = None

    @property
    def _lock(self) -> anyio.Lock:
        if self._write_lock is None:
            self._write_lock = anyio.Lock()
        return self._write_lock

    def restore(self, data: bytes) -> None:
        """Take the state a replayed step wrote when it executed."""
        self._value = codec.decode(data, where="state")

    async def get(self) -> Any:
        """The current state (a copy; mutate it through ``set``/``patch``)."""
        return codec.decode(codec.encode(self._value, where="state"), where="state")

    async def set(self, value: Any) -> None:
        """Replace the state.

        Raises:
            SerializationError: ``value`` is not encodable.
            LeaseLost: the run is no longer leased to this worker.
        """
        async with self._lock:
            await self._set(value)

    async def _set(self, value: Any) -> None:
        ex = self._run._ex
        ex.check_active()
        data = codec.encode(value, where="state", max_size=ex.max_payload)
        self._value = codec.decode(data, where="state")
        entry = _ENTRY.get()
        if entry is not None:
            # Written by a step's own code: its checkpoint says so, and a replay (which
            # does not execute the step) takes the state as of that checkpoint.
            self._run._wrote_state.add(entry[0])
        elif self._run._replaying():
            return
        await ex.write_value(
            "state update",
            ex.fenced(
                ex.store.set_state,
                state=data,
                event_data=data if len(data) <= 4096 else b'{"truncated":true}',
                step=self._run._entry_name(),
            ),
        )
        ex.state_bytes = data
        ex.on_event(ex.run_id)

    async def save(self, label: str) -> None:
        """Label the current state version (``runs.state_history`` shows labels); the
        current state is recorded as a version first if none exists yet.

        Raises:
            ConfigurationError: ``label`` is not a short str.
            LeaseLost: the run is no longer leased to this worker.
        """
        if (
            not isinstance(label, str)
            or not label
            or len(label) > 200
            or "\x00" in label
            or not is_utf8(label)
        ):
            raise errors.ConfigurationError(f"state label must be a short str, got {label!r:.60}")
        ex = self._run._ex
        ex.check_active()
        if self._run._replaying():
            return
        async with self._lock:
            labelled = await ex.write_value(
                "labelling the state", ex.fenced(ex.store.label_state, label=label)
            )
            if labelled is None:
                await self._set(self._value)
                await ex.write_value(
                    "labelling the state", ex.fenced(ex.store.label_state, label=label)
                )

    async def patch(self, patch: Mapping[str, Any]) -> None:
        """Apply an RFC 7396 merge patch (nested dicts merge, ``None`` deletes a key).

        Raises:
            ConfigurationError: ``patch`` is not a mapping.
            SerializationError, LeaseLost: as ``set``.
        """
        if not isinstance(patch, Mapping):
            raise errors.ConfigurationError(
                f"state.patch takes a mapping, got {type(patch).__name__}; use state.set"
            )
        async with self._lock:
            await self._set(merge_patch(self._value, patch))
