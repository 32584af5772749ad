"""What is recorded about an exception that failed a step, a child or a run."""

from __future__ import annotations

import traceback
from typing import Any


def error_info(exc: BaseException) -> dict[str, Any]:
    """What is recorded about an exception: type, message, traceback.

    NUL characters are spelled out (Postgres jsonb cannot store them): an exception
    message holding one must not make the failure itself unrecordable.
    """
    try:
        message = str(exc)
    except Exception as broken:  # a user exception whose __str__ itself fails
        message = f"<str() of the exception failed: {type(broken).__qualname__}>"
    try:
        trace = "".join(traceback.format_exception(exc))
    except Exception:
        trace = ""
    return {
        "type": type(exc).__qualname__,
        "message": _printable(message),
        "traceback": _printable(trace),
    }


def _printable(text: str) -> str:
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    # Lone surrogates cannot be encoded as UTF-8 at all.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
