"""Workflow definitions and the per-process registry."""

from __future__ import annotations

import inspect
import os
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

import msgspec

from tidebase_async import codec, errors
from tidebase_async.models import Retry, Schedule

# ``fn(run)`` or ``fn(run, input)``: both are valid (checked by make_workflow), so the
# static type must accept either arity.
WorkflowFn = Callable[..., Awaitable[Any]]

MAX_NAME_LENGTH = 200


_last_ms = 0
_counter = 0


def uuid7() -> UUID:
    """A time-ordered UUID (RFC 9562 version 7): new runs land at the right edge of
    the primary key index instead of at random pages.

    Monotonic within the process (RFC 9562 method 1): the 12 bits after the millisecond
    count up within a millisecond, so runs created together (an ``enqueue_many``
    batch, whose runs share one ``run_at``) are claimed in the order they were given.
    """
    global _last_ms, _counter
    ms = time.time_ns() // 1_000_000
    if ms <= _last_ms:
        _counter += 1
        if _counter > 0xFFF:  # 4096 ids in one millisecond: borrow the next one
            _last_ms += 1
            _counter = 0
        ms = _last_ms
    else:
        _last_ms = ms
        _counter = 0
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | _counter << 64 | 0x2 << 62 | rand
    return UUID(int=value)


DEFAULT_QUEUE = "default"
DEFAULT_MAX_ATTEMPTS = 3


def check_name(kind: str, name: object) -> str:
    """Validate a workflow, queue, step or gate name.

    Raises:
        ConfigurationError: not a string, empty, longer than 200 characters, or
            containing control characters or lone surrogates; the message names the
            kind and the value.
    """
    if isinstance(name, str) and (kind, name) in _VALID_NAMES:
        return name
    valid = _check_name(kind, name)
    if len(_VALID_NAMES) < 10_000:  # step names repeat; remember the good ones
        _VALID_NAMES.add((kind, valid))
    return valid


_VALID_NAMES: set[tuple[str, str]] = set()


def check_text(what: str, value: object, *, max_length: int = 1000) -> None:
    """Free text stored as given (a reason, an actor, a label): None, or a str of at
    most ``max_length`` characters that Postgres text can hold (no NUL, no lone
    surrogate).

    Raises:
        ConfigurationError: names ``what`` and the value.
    """
    if value is None:
        return
    if (
        not isinstance(value, str)
        or len(value) > max_length
        or "\x00" in value
        or not is_utf8(value)
    ):
        raise errors.ConfigurationError(
            f"{what} must be a str of at most {max_length} characters without NUL "
            f"characters or lone surrogates, got {value!r:.60}"
        )


def _check_name(kind: str, name: object) -> str:
    if not isinstance(name, str):
        raise errors.ConfigurationError(f"{kind} name must be a str, got {type(name).__name__}")
    if not name or not name.strip():
        raise errors.ConfigurationError(f"{kind} name must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise errors.ConfigurationError(
            f"{kind} name is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}: "
            f"{name[:40]!r}..."
        )
    if any(ord(ch) < 32 or ch == "\x7f" for ch in name):
        raise errors.ConfigurationError(f"{kind} name {name!r} contains control characters")
    if not is_utf8(name):
        raise errors.ConfigurationError(
            f"{kind} name {name!r} contains a lone surrogate, which is not valid UTF-8"
        )
    return name


def is_utf8(text: str) -> bool:
    """Whether ``text`` can be stored as Postgres text (no lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
) -> Workflow:
    check_name("workflow", name)
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
    )
