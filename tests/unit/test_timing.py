"""The fire-time maths of schedules (``tidebase_async.timing``): cron with 5 and 6 fields,
intervals, daylight-saving transitions in non-UTC zones, and validation."""

from __future__ import annotations

import itertools
import time
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidebase_async import InvalidSchedule
from tidebase_async._util.timing import Timing, fire_times, latest_fire, next_fire, parse_timing

NY = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
#: Long before any of the instants below: anchors of cron schedules do not move ticks.
EPOCH = datetime(2020, 1, 1, tzinfo=UTC)


def cron(expr: str, timezone: str = "UTC") -> Timing:
    return parse_timing(cron=expr, every=None, timezone=timezone)


def every(seconds: float | timedelta) -> Timing:
    return parse_timing(cron=None, every=seconds, timezone="UTC")


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def local(
    zone: ZoneInfo,
    year: int,
    month: int,
    day: int,
    hour: int = 0,
    minute: int = 0,
    *,
    fold: int = 0,
) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=zone, fold=fold)


def day_fires(timing: Timing, zone: ZoneInfo, day: date) -> list[datetime]:
    """The fire times whose local date (in ``zone``) is ``day``."""
    start = local(zone, day.year, day.month, day.day).astimezone(UTC) - timedelta(days=1)
    ticks = fire_times(timing, start, start + timedelta(days=3), anchor=EPOCH, limit=10_000)
    return [t for t in ticks if t.astimezone(zone).date() == day]


# -- cron, 5 and 6 fields ---------------------------------------------------------------


def test_five_field_cron_fires_on_the_minute_in_utc() -> None:
    t = cron("*/15 * * * *")
    assert next_fire(t, utc(2024, 5, 1, 12, 7, 30), anchor=EPOCH) == utc(2024, 5, 1, 12, 15)
    # Strictly after: a fire time is not its own next one.
    assert next_fire(t, utc(2024, 5, 1, 12, 15), anchor=EPOCH) == utc(2024, 5, 1, 12, 30)
    assert next_fire(t, utc(2024, 5, 1, 23, 50), anchor=EPOCH) == utc(2024, 5, 2, 0, 0)


def test_six_field_cron_has_seconds_first() -> None:
    t = cron("*/5 * * * * *")
    assert next_fire(t, utc(2024, 5, 1, 12, 0, 3), anchor=EPOCH) == utc(2024, 5, 1, 12, 0, 5)
    assert fire_times(
        t, utc(2024, 5, 1, 12, 0, 0), utc(2024, 5, 1, 12, 0, 20), anchor=EPOCH, limit=100
    ) == [utc(2024, 5, 1, 12, 0, s) for s in (5, 10, 15, 20)]
    # "30 0 * * * *" is second 30 of minute 0 of every hour, not minute 30 of hour 0.
    hourly = cron("30 0 * * * *")
    assert next_fire(hourly, utc(2024, 5, 1, 12, 1), anchor=EPOCH) == utc(2024, 5, 1, 13, 0, 30)


def test_cron_whitespace_is_normalised() -> None:
    t = cron("  0   3 *\t* *  ")
    assert t.cron == "0 3 * * *"
    assert next_fire(t, utc(2024, 5, 1, 4), anchor=EPOCH) == utc(2024, 5, 2, 3)


def test_cron_matches_wall_clock_time_in_its_zone() -> None:
    # 09:00 in Berlin is 07:00 UTC in summer and 08:00 UTC in winter.
    t = cron("0 9 * * *", "Europe/Berlin")
    assert next_fire(t, utc(2024, 7, 1), anchor=EPOCH) == utc(2024, 7, 1, 7)
    assert next_fire(t, utc(2024, 1, 10), anchor=EPOCH) == utc(2024, 1, 10, 8)
    # Returned in UTC whatever the zone.
    assert next_fire(t, utc(2024, 7, 1), anchor=EPOCH).tzinfo == UTC


def test_latest_fire_is_the_last_tick_at_or_before_and_after_the_anchor() -> None:
    t = cron("0 * * * *")
    assert latest_fire(t, utc(2024, 5, 1, 12, 59), anchor=EPOCH) == utc(2024, 5, 1, 12)
    assert latest_fire(t, utc(2024, 5, 1, 12), anchor=EPOCH) == utc(2024, 5, 1, 12)
    # Nothing after the anchor yet.
    assert latest_fire(t, utc(2024, 5, 1, 12, 30), anchor=utc(2024, 5, 1, 12)) is None
    assert latest_fire(t, utc(2024, 5, 1, 13, 30), anchor=utc(2024, 5, 1, 12)) == utc(
        2024, 5, 1, 13
    )


def test_fire_times_are_the_ticks_of_a_half_open_window_up_to_the_limit() -> None:
    t = cron("0 * * * *")
    start, end = utc(2024, 5, 1, 0), utc(2024, 5, 1, 5)
    assert fire_times(t, start, end, anchor=EPOCH, limit=100) == [
        utc(2024, 5, 1, h) for h in range(1, 6)
    ]
    assert fire_times(t, start, end, anchor=EPOCH, limit=2) == [
        utc(2024, 5, 1, 1),
        utc(2024, 5, 1, 2),
    ]
    assert fire_times(t, start, start + timedelta(minutes=59), anchor=EPOCH, limit=100) == []


# -- every ------------------------------------------------------------------------------


def test_every_fires_at_anchor_plus_multiples_of_the_interval() -> None:
    anchor = utc(2024, 5, 1, 12, 0, 0)
    t = every(10)
    assert t.every_s == 10.0
    assert next_fire(t, anchor, anchor=anchor) == anchor + timedelta(seconds=10)
    assert next_fire(t, anchor + timedelta(seconds=25), anchor=anchor) == anchor + timedelta(
        seconds=30
    )
    assert next_fire(t, anchor + timedelta(seconds=30), anchor=anchor) == anchor + timedelta(
        seconds=40
    )
    assert latest_fire(t, anchor + timedelta(seconds=25), anchor=anchor) == anchor + timedelta(
        seconds=20
    )
    assert latest_fire(t, anchor + timedelta(seconds=9), anchor=anchor) is None
    assert fire_times(t, anchor, anchor + timedelta(seconds=35), anchor=anchor, limit=10) == [
        anchor + timedelta(seconds=s) for s in (10, 20, 30)
    ]


def test_every_accepts_a_timedelta_and_ignores_the_time_zone() -> None:
    assert every(timedelta(minutes=2)).every_s == 120.0
    anchor = local(NY, 2024, 3, 10, 1, 30).astimezone(UTC)  # 30 min before spring forward
    t = parse_timing(cron=None, every=timedelta(hours=1), timezone="America/New_York")
    # One hour of elapsed time, not of wall-clock time: 03:30 EDT, not 02:30.
    assert next_fire(t, anchor, anchor=anchor) == anchor + timedelta(hours=1)


def test_every_with_a_fractional_interval_is_exact_enough() -> None:
    anchor = utc(2024, 5, 1)
    t = every(0.1)
    ticks = fire_times(t, anchor, anchor + timedelta(seconds=1), anchor=anchor, limit=100)
    assert len(ticks) == 10
    assert all(b > a for a, b in itertools.pairwise(ticks))


# -- daylight-saving time ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "day", "hour", "expected_utc"),
    [
        # New York springs forward on 2024-03-10 at 02:00 EST -> 03:00 EDT.
        (NY, date(2024, 3, 10), 2, utc(2024, 3, 10, 7, 30)),
        # Berlin springs forward on 2024-03-31 at 02:00 CET -> 03:00 CEST.
        (BERLIN, date(2024, 3, 31), 2, utc(2024, 3, 31, 1, 30)),
    ],
)
def test_a_0230_job_runs_once_at_0330_summer_time_on_the_spring_forward_day(
    zone: ZoneInfo, day: date, hour: int, expected_utc: datetime
) -> None:
    t = cron(f"30 {hour} * * *", str(zone))
    fires = day_fires(t, zone, day)
    assert fires == [expected_utc]
    wall = fires[0].astimezone(zone)
    assert (wall.hour, wall.minute) == (3, 30)
    assert wall.dst() == timedelta(hours=1)  # summer time
    # The days around it run at 02:30 as usual.
    before = day_fires(t, zone, day - timedelta(days=1))
    after = day_fires(t, zone, day + timedelta(days=1))
    assert [(f.astimezone(zone).hour, f.astimezone(zone).minute) for f in before + after] == [
        (2, 30),
        (2, 30),
    ]


@pytest.mark.parametrize(
    ("zone", "day", "hour"),
    [
        # New York falls back on 2024-11-03 at 02:00 EDT -> 01:00 EST: 01:30 happens twice.
        (NY, date(2024, 11, 3), 1),
        # Berlin falls back on 2024-10-27 at 03:00 CEST -> 02:00 CET: 02:30 happens twice.
        (BERLIN, date(2024, 10, 27), 2),
    ],
)
def test_a_job_in_the_repeated_hour_runs_once_at_its_first_occurrence_on_the_fall_back_day(
    zone: ZoneInfo, day: date, hour: int
) -> None:
    t = cron(f"30 {hour} * * *", str(zone))
    fires = day_fires(t, zone, day)
    first = local(zone, day.year, day.month, day.day, hour, 30, fold=0).astimezone(UTC)
    second = local(zone, day.year, day.month, day.day, hour, 30, fold=1).astimezone(UTC)
    assert second - first == timedelta(hours=1)  # the wall time really is ambiguous
    assert fires == [first]
    assert fires[0].astimezone(zone).dst() == timedelta(hours=1)  # still summer time
    # Asked from between the two occurrences, the next tick is the next day's.
    between = first + timedelta(minutes=30)
    tomorrow = day + timedelta(days=1)
    assert next_fire(t, between, anchor=EPOCH) == local(
        zone, tomorrow.year, tomorrow.month, tomorrow.day, hour, 30
    ).astimezone(UTC)
    assert latest_fire(t, second, anchor=EPOCH) == first


def test_latest_fire_on_the_spring_forward_day_is_the_shifted_tick() -> None:
    t = cron("30 2 * * *", "America/New_York")
    shifted = utc(2024, 3, 10, 7, 30)  # 03:30 EDT
    assert latest_fire(t, shifted, anchor=EPOCH) == shifted
    assert latest_fire(t, shifted + timedelta(minutes=1), anchor=EPOCH) == shifted
    assert latest_fire(t, shifted - timedelta(minutes=1), anchor=EPOCH) == utc(2024, 3, 9, 7, 30)


TRANSITIONS = [
    ("America/New_York", utc(2024, 3, 10, 4)),  # spring forward 07:00 UTC
    ("America/New_York", utc(2024, 11, 3, 3)),  # fall back 06:00 UTC
    ("Europe/Berlin", utc(2024, 3, 30, 23)),  # spring forward 01:00 UTC
    ("Europe/Berlin", utc(2024, 10, 26, 23)),  # fall back 01:00 UTC
]


@pytest.mark.parametrize(("zone", "start"), TRANSITIONS)
def test_every_30_minutes_across_a_transition_is_strictly_increasing(
    zone: str, start: datetime
) -> None:
    t = cron("*/30 * * * *", zone)
    ticks = fire_times(t, start, start + timedelta(hours=6), anchor=EPOCH, limit=1000)
    assert len(ticks) == len(set(ticks)), "two ticks at the same instant"
    assert all(b > a for a, b in itertools.pairwise(ticks))
    # Every tick is a half hour of its own zone's wall clock.
    assert all(tick.astimezone(ZoneInfo(zone)).minute in (0, 30) for tick in ticks)
    # No more than the 12 half hours of six hours of elapsed time, and at least the
    # elapsed time minus the one hour a transition can remove from the wall clock.
    assert 10 <= len(ticks) <= 12
    # Walking tick by tick gives the same ticks as next_fire from any instant between.
    for a, b in itertools.pairwise(ticks):
        assert next_fire(t, a + (b - a) / 2, anchor=EPOCH) == b
        assert latest_fire(t, b - timedelta(seconds=1), anchor=EPOCH) == a


def test_every_30_minutes_fires_at_the_first_occurrence_of_the_repeated_hour() -> None:
    t = cron("*/30 * * * *", "America/New_York")
    ticks = fire_times(t, utc(2024, 11, 3, 4), utc(2024, 11, 3, 8), anchor=EPOCH, limit=100)
    walls = [(x.astimezone(NY).strftime("%H:%M"), x.astimezone(NY).dst()) for x in ticks]
    summer, winter = timedelta(hours=1), timedelta(0)
    assert walls == [
        ("00:30", summer),
        ("01:00", summer),
        ("01:30", summer),
        ("02:00", winter),
        ("02:30", winter),
        ("03:00", winter),
    ]


def test_every_30_minutes_across_spring_forward_shifts_and_drops_the_gap() -> None:
    t = cron("*/30 * * * *", "Europe/Berlin")
    ticks = fire_times(t, utc(2024, 3, 30, 23), utc(2024, 3, 31, 3), anchor=EPOCH, limit=100)
    walls = [x.astimezone(BERLIN).strftime("%H:%M") for x in ticks]
    # 02:00 (becomes 03:00, same instant as the real 03:00: dropped) and 02:30 (becomes
    # 03:30, same instant as the real 03:30: dropped) do not fire twice.
    assert walls == ["00:30", "01:00", "01:30", "03:00", "03:30", "04:00", "04:30", "05:00"]


CRONS = [
    "*/30 * * * *",
    "*/7 * * * *",
    "0 * * * *",
    "30 2 * * *",
    "0,30 1,2,3 * * *",
    "15 2 * * 0",
    "0 */20 * * * *",
    "0 0 1 * *",
]
ZONES = ["UTC", "America/New_York", "Europe/Berlin", "Australia/Lord_Howe", "Asia/Kolkata"]


def _transitions(zone: str, year: int) -> list[datetime]:
    """The UTC hours in which ``zone``'s offset changes during ``year``."""
    tz = ZoneInfo(zone)
    found = []
    at = utc(year, 1, 1)
    while at.year == year:
        if at.astimezone(tz).utcoffset() != (at + timedelta(hours=1)).astimezone(tz).utcoffset():
            found.append(at)
        at += timedelta(hours=1)
    return found


#: (zone, an instant near one of its offset changes), the places where the maths is hard.
NEAR_TRANSITIONS = [
    (zone, at) for zone in ZONES for year in (2024, 2025) for at in _transitions(zone, year)
] + [("UTC", utc(2024, 6, 1)), ("Asia/Kolkata", utc(2024, 6, 1))]


@settings(max_examples=100, deadline=None)
@given(
    expr=st.sampled_from(CRONS),
    near=st.sampled_from(NEAR_TRANSITIONS),
    offset_s=st.integers(min_value=-8 * 3600, max_value=8 * 3600),
)
def test_cron_ticks_are_strictly_increasing_and_consistent_around_transitions(
    expr: str, near: tuple[str, datetime], offset_s: int
) -> None:
    zone, transition = near
    t = cron(expr, zone)
    start = transition + timedelta(seconds=offset_s)
    span = timedelta(hours=12)
    ticks = fire_times(t, start, start + span, anchor=EPOCH, limit=2000)
    assert all(b > a for a, b in itertools.pairwise(ticks))
    assert all(start < tick <= start + span for tick in ticks)
    nxt = next_fire(t, start, anchor=EPOCH)
    assert nxt > start
    # next_fire and latest_fire agree: nothing fires in between.
    assert latest_fire(t, nxt, anchor=EPOCH) == nxt
    before = latest_fire(t, nxt - timedelta(microseconds=1), anchor=EPOCH)
    assert before is None or before <= start
    if ticks:
        assert ticks[0] == nxt
        assert latest_fire(t, start + span, anchor=EPOCH) == ticks[-1]


def test_a_half_hour_dst_gap_does_not_skip_real_ticks_after_it() -> None:
    zone = ZoneInfo("Australia/Lord_Howe")
    t = cron("*/20 * * * *", "Australia/Lord_Howe")
    # 2024-10-06 02:00 LHST (+10:30) becomes 02:30 LHDT (+11): 15:30 UTC on Oct 5.
    ticks = fire_times(t, utc(2024, 10, 5, 14, 50), utc(2024, 10, 5, 16, 0), anchor=EPOCH, limit=50)
    walls = [x.astimezone(zone).strftime("%H:%M") for x in ticks]
    # 02:00 and 02:20 do not exist: shifted by the gap to 02:30 and 02:50; 02:40 exists.
    assert walls == ["01:40", "02:30", "02:40", "02:50", "03:00"]


@settings(max_examples=300, deadline=None)
@given(
    seconds=st.floats(min_value=0.001, max_value=86_400.0),
    offset=st.floats(min_value=0.0, max_value=10_000_000.0),
)
def test_every_ticks_are_on_the_grid_and_next_and_latest_agree(
    seconds: float, offset: float
) -> None:
    anchor = utc(2024, 1, 1)
    t = every(seconds)
    after = anchor + timedelta(seconds=offset)
    nxt = next_fire(t, after, anchor=anchor)
    assert after < nxt <= after + timedelta(seconds=seconds, microseconds=2)
    latest = latest_fire(t, after, anchor=anchor)
    if latest is not None:
        assert anchor < latest <= after
        assert next_fire(t, latest, anchor=anchor) > latest


def test_fire_times_of_a_per_second_cron_are_cheap() -> None:
    # Five per-second ticks cost about what five per-minute ticks do (the search does
    # not walk hours of seconds), measured side by side so machine load cancels out.
    seconds, minutes = cron("* * * * * *"), cron("* * * * *")
    start = time.perf_counter()
    ticks = fire_times(
        seconds, utc(2024, 5, 1, 12), utc(2024, 5, 1, 12, 0, 5), anchor=EPOCH, limit=100
    )
    per_second = time.perf_counter() - start
    start = time.perf_counter()
    fire_times(minutes, utc(2024, 5, 1, 12), utc(2024, 5, 1, 12, 5), anchor=EPOCH, limit=100)
    per_minute = time.perf_counter() - start
    assert ticks == [utc(2024, 5, 1, 12, 0, s) for s in range(1, 6)]
    assert per_second < 10 * per_minute + 0.05, f"{per_second:.3f}s vs {per_minute:.3f}s"


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cron": "61 * * * *", "every": None}, "invalid cron expression '61 \\* \\* \\* \\*'"),
        ({"cron": "* * 32 * *", "every": None}, "invalid cron expression"),
        ({"cron": "not a cron at all", "every": None}, "invalid cron expression"),
        ({"cron": "* * *", "every": None}, "has 3 fields; use 5"),
        ({"cron": "* * * * * * *", "every": None}, "has 7 fields; use 5"),
        ({"cron": "", "every": None}, "cron must be a non-empty expression"),
        ({"cron": "* * * * *", "every": 5}, "exactly one of cron= and every="),
        ({"cron": None, "every": None}, "exactly one of cron= and every="),
        ({"cron": None, "every": 0}, "every must be between"),
        ({"cron": None, "every": -5}, "every must be between"),
        ({"cron": None, "every": timedelta(0)}, "every must be between"),
        ({"cron": None, "every": timedelta(seconds=-1)}, "every must be between"),
        ({"cron": None, "every": float("nan")}, "every must be between"),
        ({"cron": None, "every": True}, "every must be seconds or a timedelta"),
        ({"cron": None, "every": "5"}, "every must be seconds or a timedelta"),
    ],
)
def test_bad_timing_raises_invalid_schedule_naming_the_problem(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidSchedule, match=message):
        parse_timing(timezone="UTC", **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("zone", ["Mars/Base", "Europe/Berln", "EST+5", "../etc/passwd", ""])
def test_an_unknown_time_zone_raises_invalid_schedule(zone: str) -> None:
    with pytest.raises(InvalidSchedule, match=r"time zone|timezone") as raised:
        parse_timing(cron="0 3 * * *", every=None, timezone=zone)
    assert repr(zone) in str(raised.value)


def test_valid_timings_are_accepted() -> None:
    assert cron("0 3 * * *", "Europe/Berlin").timezone == "Europe/Berlin"
    assert cron("*/5 * * * * *").cron == "*/5 * * * * *"
    assert cron("@hourly").cron == "@hourly"
    assert next_fire(cron("@hourly"), utc(2024, 1, 1, 0, 1), anchor=EPOCH) == utc(2024, 1, 1, 1)
    assert every(0.5).every_s == 0.5
