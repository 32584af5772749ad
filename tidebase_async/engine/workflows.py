"""Workflow definitions: what ``@tide.workflow`` registers (the function, its queue,
attempts, retry policy and the input/output types it decodes), and the retry backoff."""

from __future__ import annotations

import inspect
import random
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from tidebase_async import errors
from tidebase_async._util import codec
from tidebase_async._util.checks import check_name
from tidebase_async.models import Retry, Schedule

# ``fn(run)`` or ``fn(run, input)``: both are valid (checked by make_workflow), so the
# static type must accept either arity.
WorkflowFn = Callable[..., Awaitable[Any]]

DEFAULT_QUEUE = "default"
DEFAULT_MAX_ATTEMPTS = 3


class Workflow(msgspec.Struct, frozen=True, kw_only=True):
    """A registered workflow: its function and how its runs are executed."""

    name: str
    fn: WorkflowFn
    queue: str
    max_attempts: int
    retry: Retry
    input_type: Any
    output_type: Any
    takes_input: bool
    schedule: Schedule | None = None
    #: The version (``@tide.workflow(name, version=...)``); None when unversioned.
    version: str | None = None


def version_key(name: str, version: str) -> str:
    """How claims match a run's (workflow, version): ``name\\x1fversion`` (names and
    versions hold no control characters, see ``check_name``)."""
    return f"{name}\x1f{version}"


class WorkflowVersions:
    """Every registered version of every workflow of a process, side by side.

    The newest of a workflow is the one registered last. ``keys`` are the
    (workflow, version) keys of the versioned ones, what this process's workers claim
    besides unversioned runs; kept up to date on ``add`` (claims read it each time).
    """

    def __init__(self) -> None:
        self.by_name: dict[str, dict[str | None, Workflow]] = {}
        self.keys: list[str] = []

    def add(self, wf: Workflow) -> None:
        versions = self.by_name.setdefault(wf.name, {})
        # Re-adding moves it last: it is the newest now.
        versions.pop(wf.version, None)
        versions[wf.version] = wf
        self.keys = [
            version_key(name, v) for name, vs in self.by_name.items() for v in vs if v is not None
        ]

    def get(self, name: str, version: str | None) -> Workflow | None:
        """The workflow that executes a run of ``name`` recorded with ``version``:
        that version; for an unversioned run the unversioned registration, else the
        newest version (a run enqueued before the workflow had versions)."""
        versions = self.by_name.get(name)
        if not versions:
            return None
        if version is not None:
            return versions.get(version)
        found = versions.get(None)
        return found if found is not None else next(reversed(versions.values()))

    def known(self, name: str) -> list[str | None]:
        """The versions of ``name`` registered here, oldest first."""
        return list(self.by_name.get(name, {}))


def backoff_delay(policy: Retry, attempt: int) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based): exponential, capped,
    with 'equal jitter' (uniform in [d/2, d]) when the policy asks for it."""
    # Bound the exponent: past 2**1023 int-to-float conversion raises OverflowError
    # (max_attempts goes up to 10000); a float product overflows to inf, which the cap
    # then clamps.
    exponent = min(max(0, attempt - 1), 1023)
    delay = float(min(policy.backoff * float(2**exponent), policy.max_backoff))
    if policy.jitter and delay > 0:
        delay = random.uniform(delay / 2, delay)
    return max(0.0, delay)


def make_workflow(
    name: str,
    fn: WorkflowFn,
    *,
    queue: str,
    max_attempts: int,
    retry: Retry | None,
    schedule: Schedule | None = None,
    version: str | None = None,
) -> Workflow:
    check_name("workflow", name)
    if version is not None:
        check_name("version", version)
    check_name("queue", queue)
    if not inspect.iscoroutinefunction(inspect.unwrap(fn)):
        raise errors.ConfigurationError(
            f"workflow {name!r}: {getattr(fn, '__qualname__', fn)!r} must be an async function"
        )
    if not isinstance(max_attempts, int) or max_attempts < 1:
        raise errors.ConfigurationError(
            f"workflow {name!r}: max_attempts must be an int >= 1, got {max_attempts!r}"
        )
    params = list(inspect.signature(fn).parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if not 1 <= len(positional) <= 2:
        raise errors.ConfigurationError(
            f"workflow {name!r}: the function must take (run) or (run, input)"
        )
    input_type = codec.param_type(fn, 1) if len(positional) == 2 else Any
    output_type = codec.return_type(fn)
    for what, tp in (("input", input_type), ("return", output_type)):
        try:
            codec.decoder_for(tp)
        except TypeError as exc:
            raise errors.ConfigurationError(
                f"workflow {name!r}: msgspec cannot decode its {what} type {tp!r}: {exc}"
            ) from exc
    return Workflow(
        name=name,
        fn=fn,
        queue=queue,
        max_attempts=max_attempts,
        retry=retry or Retry(attempts=max_attempts),
        input_type=input_type,
        output_type=output_type,
        takes_input=len(positional) == 2,
        schedule=schedule,
        version=version,
    )
