"""``run.patched`` and ``run.deprecate_patch``: changing a workflow's code while runs
of it are in flight.

A patch point is a history entry of kind ``patch``. A run that reaches the point with
the new code for the first time records it, and every replay of that run meets the
entry there and answers True again. A run whose history has something else at that
position passed the point before the patch existed: it answers False and consumes
nothing, so its recorded history goes on matching the old code path.
"""

from __future__ import annotations

import sys

from tidebase_async import errors
from tidebase_async._util.checks import check_history_name
from tidebase_async.engine.execution import Execution
from tidebase_async.engine.history import RunHistory


class RunPatches(RunHistory):
    """The patch points of ``Run`` (a mixin ``Run`` inherits)."""

    def __init__(self, ex: Execution) -> None:
        super().__init__(ex)
        # Per patch name: the answer given, and where in the code it was asked.
        self._patches: dict[str, bool] = {}
        self._patch_places: dict[str, tuple[str, int]] = {}

    async def patched(self, name: str) -> bool:
        """True when this run takes the new code at patch point ``name``.

        The first time a run reaches the point beyond its recorded history (a new run,
        or an old one that had not got this far), a ``patch`` entry is recorded here and
        the answer is True; replays of it meet the entry and answer True again. On
        replay of a run whose history has something else at this position (it passed
        the point with the old code), the answer is False and nothing is consumed: the
        old path's entries follow. Asked again from the same place (a loop), the first
        answer is returned and nothing more is recorded.

        Raises:
            ConfigurationError: a bad name, or ``name`` used at another place of the
                workflow's code (each patch point needs a name of its own).
            LeaseLost: another worker owns the run now.
        """
        check_history_name("patch", name)
        known = self._patch_answer(name, _caller())
        if known is not None:
            return known
        ex = self._ex
        ex.check_active()
        position = self._position
        record = ex.history.get(position)
        if position < ex.history_end:
            if record is None or record.kind != "patch" or record.name != name:
                # The run passed this point before the patch existed.
                return self._remember_patch(name, False)
            self._reserve("patch", name)
            ex.replayed_steps += 1
            return self._remember_patch(name, True)
        position, full_name, _ = self._reserve("patch", name)
        await self._checkpoint(
            position,
            full_name,
            "completed",
            1,
            ex.now(),
            output=b"true",
            kind="patch",
            event_type="patch.applied",
            event={"name": full_name, "position": position + 1},
        )
        return self._remember_patch(name, True)

    async def deprecate_patch(self, name: str) -> None:
        """Retire patch point ``name`` once no run that passed it without the patch
        remains (the old branch is gone from the code; ``patched`` with it).

        On replay, a ``patch`` entry of ``name`` recorded here is consumed, so runs
        that recorded the patch still replay; anything else is left for the next call.
        A new execution records nothing.

        Raises:
            ConfigurationError: a bad name, or ``name`` used at another place.
            LeaseLost: another worker owns the run now.
        """
        check_history_name("patch", name)
        if self._patch_answer(name, _caller()) is not None:
            return
        ex = self._ex
        ex.check_active()
        record = ex.history.get(self._position)
        if record is not None and record.kind == "patch" and record.name == name:
            self._reserve("patch", name)
            ex.replayed_steps += 1
        self._remember_patch(name, True)

    def _patch_answer(self, name: str, place: tuple[str, int]) -> bool | None:
        """The answer ``name`` gave before at ``place`` (None: first time asked).

        Raises:
            ConfigurationError: ``name`` was asked at another place.
        """
        seen = self._patches.get(name)
        if seen is None:
            self._patch_places[name] = place
            return None
        first = self._patch_places[name]
        if first != place:
            raise errors.ConfigurationError(
                f"run {self._ex.run_id}: patch {name!r} is used at two places "
                f"({first[0]}:{first[1]} and {place[0]}:{place[1]}); give each patch "
                "point a name of its own"
            )
        return seen

    def _remember_patch(self, name: str, answer: bool) -> bool:
        self._patches[name] = answer
        return answer


def _caller() -> tuple[str, int]:
    """(file, line) of the workflow code that called ``patched``/``deprecate_patch``:
    the frame two up (this helper, then the method's coroutine)."""
    frame = sys._getframe(2)
    return frame.f_code.co_filename, frame.f_lineno
