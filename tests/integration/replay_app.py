"""Apps for the replay-check tests (``tidebase replay-check tests.integration.replay_app:NAME``):
one Tidebase per variant of the code of workflow ``report``, and workflow ``other``.

- ``original``: steps ``fetch``, ``parse``, gate ``approve``, step ``store``.
- ``renamed``: ``parse`` renamed ``parse-v2`` (breaks every run that passed it).
- ``patched``: ``parse-v2`` behind ``run.patched("v2")`` (old runs keep ``parse``).
- ``failing``: raises in its own code between steps when replaying (not checkable).
"""

from __future__ import annotations

from typing import Any

from tidebase_async import Run, Tidebase


def value(x: int) -> int:
    return x


def original_code(tide: Tidebase) -> None:
    @tide.workflow("report")
    async def report(run: Run, input: Any) -> int:
        a = await run.step("fetch", value, 1)
        b = await run.step("parse", value, 2)
        await run.gate("approve")
        c: int = await run.step("store", value, 3)
        return int(a + b + c)

    other_code(tide)


def renamed_code(tide: Tidebase) -> None:
    @tide.workflow("report")
    async def report(run: Run, input: Any) -> int:
        a = await run.step("fetch", value, 1)
        b = await run.step("parse-v2", value, 2)
        await run.gate("approve")
        c: int = await run.step("store", value, 3)
        return int(a + b + c)

    other_code(tide)


def patched_code(tide: Tidebase) -> None:
    @tide.workflow("report")
    async def report(run: Run, input: Any) -> int:
        a = await run.step("fetch", value, 1)
        if await run.patched("v2"):
            b = await run.step("parse-v2", value, 2)
        else:
            b = await run.step("parse", value, 2)
        await run.gate("approve")
        c: int = await run.step("store", value, 3)
        return int(a + b + c)

    other_code(tide)


def failing_code(tide: Tidebase) -> None:
    @tide.workflow("report")
    async def report(run: Run, input: Any) -> int:
        a = await run.step("fetch", value, 1)
        if run.replaying:
            raise RuntimeError("boom in the workflow's own code")
        return int(a)

    other_code(tide)


def other_code(tide: Tidebase) -> None:
    @tide.workflow("other")
    async def other(run: Run) -> int:
        only: int = await run.step("only", value, 1)
        return only


original = Tidebase()
original_code(original)
renamed = Tidebase()
renamed_code(renamed)
patched = Tidebase()
patched_code(patched)
failing = Tidebase()
failing_code(failing)
