"""When a schedule fires: cron expressions in an IANA time zone, or fixed intervals.

Pure functions of their arguments (no clock, no database), so the rules can be unit
tested exhaustively.

Rules for cron schedules (``croniter``; 5 fields, or 6 with seconds first):

- An expression matches wall-clock times in the schedule's time zone.
- A wall-clock time that does not exist (spring forward: 02:30 when clocks jump from
  02:00 to 03:00) fires once, shifted forward by the gap (02:30 becomes 03:30 summer
  time), and never twice at the same instant: a tick that falls on or before the
  previous one is dropped.
- A wall-clock time that occurs twice (fall back: 01:30 when clocks go from 02:00 back
  to 01:00) fires once, at its first occurrence.

Interval schedules (``every``) fire at ``anchor + k * every`` for k = 1, 2, ...; time
zones do not affect them.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from croniter import croniter

from tidebase_async import errors

# Wider than any DST shift (at most 2 h anywhere): enough to start a wall-clock search
# before the instant of interest whatever the transition around it.
_MARGIN = timedelta(hours=3)
MIN_EVERY_S = 0.001
MAX_EVERY_S = 366 * 24 * 3600.0


class Timing(msgspec.Struct, frozen=True, kw_only=True):
    """A validated schedule timing: exactly one of ``cron`` and ``every_s``."""

    cron: str | None = None
    every_s: float | None = None
    timezone: str = "UTC"

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def parse_timing(*, cron: str | None, every: float | timedelta | None, timezone: str) -> Timing:
    """Validate a schedule's timing.

    Raises:
        InvalidSchedule: both or neither of ``cron`` and ``every``; a cron expression
            croniter refuses or with other than 5 or 6 fields; ``every`` not positive or
            not a number/timedelta; an unknown time zone. The message names the problem.
    """
    if (cron is None) == (every is None):
        raise errors.InvalidSchedule("give exactly one of cron= and every=")
    zone_name = _check_zone(timezone)
    if cron is not None:
        return Timing(cron=_check_cron(cron), timezone=zone_name)
    return Timing(every_s=_check_every(every), timezone=zone_name)


def _check_zone(timezone: object) -> str:
    if not isinstance(timezone, str) or not timezone or len(timezone) > 100:
        raise errors.InvalidSchedule(f"timezone must be an IANA zone name, got {timezone!r:.60}")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise errors.InvalidSchedule(
            f"unknown time zone {timezone!r:.60} (use an IANA name such as "
            "'Europe/Berlin' or 'UTC')"
        ) from exc
    return timezone


def _check_cron(cron: object) -> str:
    if not isinstance(cron, str) or not cron.strip() or len(cron) > 200 or "\x00" in cron:
        raise errors.InvalidSchedule(f"cron must be a non-empty expression, got {cron!r:.60}")
    expr = " ".join(cron.split())
    fields = expr.split(" ")
    if not expr.startswith("@") and len(fields) not in (5, 6):
        raise errors.InvalidSchedule(
            f"cron expression {expr!r} has {len(fields)} fields; use 5 "
            "(minute hour day month weekday) or 6 (second first)"
        )
    try:
        valid = croniter.is_valid(expr, second_at_beginning=len(fields) == 6)
    except Exception:  # croniter raises assorted errors on odd input
        valid = False
    if not valid:
        raise errors.InvalidSchedule(f"invalid cron expression {expr!r}")
    return expr


def _check_every(every: object) -> float:
    if isinstance(every, timedelta):
        seconds = every.total_seconds()
    elif isinstance(every, int | float) and not isinstance(every, bool):
        seconds = float(every)
    else:
        raise errors.InvalidSchedule(
            f"every must be seconds or a timedelta, got {type(every).__name__}"
        )
    if not math.isfinite(seconds) or not MIN_EVERY_S <= seconds <= MAX_EVERY_S:
        raise errors.InvalidSchedule(
            f"every must be between {MIN_EVERY_S:g}s and one year, got {every!r}"
        )
    return seconds


def next_fire(timing: Timing, after: datetime, *, anchor: datetime) -> datetime:
    """The first fire time strictly after ``after`` (timezone-aware, returned in UTC)."""
    if timing.every_s is not None:
        k = math.floor((after - anchor).total_seconds() / timing.every_s) + 1
        fire = anchor + timedelta(seconds=k * timing.every_s)
        while fire <= after:  # float rounding
            k += 1
            fire = anchor + timedelta(seconds=k * timing.every_s)
        return fire.astimezone(UTC)
    assert timing.cron is not None
    zone = timing.zone
    shift = _shift_near(after, zone)
    while True:
        best, _wall = _next_with_shift(timing, after, zone, shift)
        # A DST change near the answer (not only near ``after``) needs the wider search.
        wider = _shift_near(best, zone)
        if wider <= shift:
            return best
        shift = wider


def _next_with_shift(
    timing: Timing, after: datetime, zone: ZoneInfo, shift: timedelta
) -> tuple[datetime, datetime]:
    """Away from a DST change wall-clock order is instant order: the first tick after
    ``after``'s wall time is the answer. Near one (``shift``: how far the offset moves),
    start that much earlier and look that far past the first candidate: a time shifted
    forward out of a gap can land after a later real time."""
    assert timing.cron is not None
    start = after.astimezone(zone).replace(tzinfo=None) - shift
    it = _walls(timing.cron, start)
    best: datetime | None = None
    best_wall: datetime | None = None
    while True:
        wall: datetime = it.get_next(datetime)
        if best is not None and best_wall is not None and wall > best_wall + shift:
            return best, best_wall
        fire = _to_utc(wall, zone)
        if fire > after and (best is None or fire < best):
            best, best_wall = fire, wall
            if not shift:
                return best, best_wall


def latest_fire(timing: Timing, at_or_before: datetime, *, anchor: datetime) -> datetime | None:
    """The last fire time at or before ``at_or_before`` and after ``anchor``; None if none."""
    if timing.every_s is not None:
        k = math.floor((at_or_before - anchor).total_seconds() / timing.every_s)
        if k < 1:
            return None
        fire = anchor + timedelta(seconds=k * timing.every_s)
        if fire > at_or_before:  # float rounding
            k -= 1
            fire = anchor + timedelta(seconds=k * timing.every_s)
        return fire.astimezone(UTC) if k >= 1 else None
    assert timing.cron is not None
    zone = timing.zone
    shift = _shift_near(at_or_before, zone)
    while True:
        best = _latest_with_shift(timing, at_or_before, anchor, zone, shift)
        wider = timedelta(0) if best is None else _shift_near(best, zone)
        if wider <= shift:
            return best
        shift = wider


def _latest_with_shift(
    timing: Timing, at_or_before: datetime, anchor: datetime, zone: ZoneInfo, shift: timedelta
) -> datetime | None:
    """As ``_next_with_shift``, backwards."""
    assert timing.cron is not None
    start = at_or_before.astimezone(zone).replace(tzinfo=None) + shift + timedelta(seconds=1)
    floor = anchor.astimezone(zone).replace(tzinfo=None) - shift
    it = _walls(timing.cron, start)
    best: datetime | None = None
    best_wall: datetime | None = None
    while True:
        wall: datetime = it.get_prev(datetime)
        if best_wall is not None and wall < best_wall - shift:
            return best
        if best is None and wall < floor:
            return None
        fire = _to_utc(wall, zone)
        if anchor < fire <= at_or_before and (best is None or fire > best):
            best, best_wall = fire, wall
            if not shift:
                return best


def fire_times(
    timing: Timing, after: datetime, until: datetime, *, anchor: datetime, limit: int
) -> list[datetime]:
    """Up to ``limit`` fire times in ``(after, until]``, oldest first."""
    found: list[datetime] = []
    current = after
    while len(found) < limit:
        fire = next_fire(timing, current, anchor=anchor)
        if fire > until:
            break
        found.append(fire)
        current = fire
    return found


def latest_fire_times(
    timing: Timing, since: datetime, until: datetime, *, anchor: datetime, limit: int
) -> list[datetime]:
    """The latest ``limit`` fire times in ``[since, until]``, oldest first: found walking
    back from ``until``, so a long outage costs ``limit`` steps, not one per tick."""
    found: list[datetime] = []
    current = until
    while len(found) < limit:
        fire = latest_fire(timing, current, anchor=anchor)
        if fire is None or fire < since:
            break
        found.append(fire)
        current = fire - timedelta(microseconds=1)
    return found[::-1]


def _shift_near(at: datetime, zone: ZoneInfo) -> timedelta:
    """How far the zone's UTC offset moves within ``_MARGIN`` of ``at`` (zero almost
    always: away from a DST change)."""
    before = (at - _MARGIN).astimezone(zone).utcoffset() or timedelta(0)
    after = (at + _MARGIN).astimezone(zone).utcoffset() or timedelta(0)
    return abs(after - before)


def _walls(cron: str, start: datetime) -> croniter:
    """Wall-clock ticks of ``cron`` from naive ``start`` (get_next/get_prev)."""
    return croniter(cron, start, ret_type=datetime, second_at_beginning=_has_seconds(cron))


def _has_seconds(cron: str) -> bool:
    return not cron.startswith("@") and len(cron.split(" ")) == 6


def _to_utc(wall: datetime, zone: ZoneInfo) -> datetime:
    """A wall-clock time in ``zone`` as a UTC instant. fold=0: an ambiguous time is its
    first occurrence; a time in a gap takes the offset from before the gap, i.e. it is
    shifted forward by the gap's length (PEP 495)."""
    return wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
