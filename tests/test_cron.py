"""core.cron: every syntax form, Vixie day rules, leap days, DST gaps and overlaps, errors."""

from __future__ import annotations

import random
import re
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from core.cron import CronSpec, next_fire, parse_cron, parse_timezone, prev_fire

pytestmark = pytest.mark.timeout(60)

UTC_TZ = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


def fires(expr: str, start: datetime, n: int, tz: ZoneInfo = UTC_TZ) -> list[datetime]:
    spec = parse_cron(expr)
    out: list[datetime] = []
    t = start
    for _ in range(n):
        t = next_fire(spec, t, tz)
        out.append(t)
    return out


def local(times: list[datetime], tz: ZoneInfo) -> list[str]:
    return [t.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S%z") for t in times]


# --- parsing -----------------------------------------------------------------------------------


def test_star_lists_ranges_and_steps() -> None:
    s = parse_cron("*/15 0-23/6 1,15,31 * *")
    assert s.seconds == (0,)
    assert s.minutes == (0, 15, 30, 45)
    assert s.hours == (0, 6, 12, 18)
    assert s.days == (1, 15, 31)
    assert s.months == tuple(range(1, 13))
    assert s.weekdays == tuple(range(7))
    s = parse_cron("5-10,20,40-59/10 * * * *")
    assert s.minutes == (5, 6, 7, 8, 9, 10, 20, 40, 50)
    # a/n runs from a to the end of the field
    assert parse_cron("7/20 * * * *").minutes == (7, 27, 47)
    assert parse_cron("* * * * *").minutes == tuple(range(60))


def test_month_and_weekday_names_any_case() -> None:
    s = parse_cron("0 0 * jan,JUL-sep Mon-Fri")
    assert s.months == (1, 7, 8, 9)
    assert s.weekdays == (1, 2, 3, 4, 5)
    assert parse_cron("0 0 * * SUN,sat").weekdays == (0, 6)
    assert parse_cron("0 0 * FEB-DEC/2 *").months == (2, 4, 6, 8, 10, 12)
    assert parse_cron("0 0 * * MON-SUN/2").weekdays == (0, 1, 3, 5)


def test_seven_is_sunday() -> None:
    assert parse_cron("0 0 * * 7").weekdays == (0,)
    assert parse_cron("0 0 * * 0").weekdays == (0,)
    assert parse_cron("0 0 * * 5-7").weekdays == (0, 5, 6)
    assert parse_cron("0 0 * * FRI-SUN").weekdays == (0, 5, 6)
    # 2024-06-09 was a Sunday
    assert fires("0 12 * * 7", utc(2024, 6, 3), 2) == [utc(2024, 6, 9, 12), utc(2024, 6, 16, 12)]


def test_six_fields_have_seconds_first() -> None:
    s = parse_cron("*/20 30 * * * *")
    assert s.seconds == (0, 20, 40)
    assert s.minutes == (30,)
    assert fires("*/20 30 * * * *", utc(2024, 1, 1, 0, 30, 15), 3) == [
        utc(2024, 1, 1, 0, 30, 20),
        utc(2024, 1, 1, 0, 30, 40),
        utc(2024, 1, 1, 1, 30, 0),
    ]
    assert fires("* * * * * *", utc(2024, 1, 1, 23, 59, 58), 3) == [
        utc(2024, 1, 1, 23, 59, 59),
        utc(2024, 1, 2),
        utc(2024, 1, 2, 0, 0, 1),
    ]


def test_macros() -> None:
    assert parse_cron("@hourly").minutes == (0,)
    assert {**_fields(parse_cron("@daily")), "expr": ""} == {**_fields(parse_cron("0 0 * * *")), "expr": ""}
    assert fires("@weekly", utc(2024, 6, 5), 1) == [utc(2024, 6, 9)]
    assert fires("@monthly", utc(2024, 6, 5), 1) == [utc(2024, 7, 1)]
    assert fires("@yearly", utc(2024, 6, 5), 1) == fires("@annually", utc(2024, 6, 5), 1) == [utc(2025, 1, 1)]


def _fields(s: CronSpec) -> dict[str, object]:
    return {f: getattr(s, f) for f in s.__slots__}


def test_whitespace_is_free() -> None:
    assert _fields(parse_cron("  0\t12  * *   MON ")) == {
        **_fields(parse_cron("0 12 * * MON")),
        "expr": "0\t12  * *   MON",
    }


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("", "expected 5 fields (minute hour day-of-month month day-of-week), or 6 with seconds first, got 0"),
        ("* * * *", "got 4"),
        ("* * * * * * *", "got 7"),
        ("60 * * * *", "minute: 60 is out of range 0-59"),
        ("* 24 * * *", "hour: 24 is out of range 0-23"),
        ("* * 0 * *", "day-of-month: 0 is out of range 1-31"),
        ("* * 32 * *", "day-of-month: 32 is out of range 1-31"),
        ("* * * 13 *", "month: 13 is out of range 1-12"),
        ("* * * 0 *", "month: 0 is out of range 1-12"),
        ("* * * * 8", "day-of-week: 8 is out of range 0-7"),
        ("60 * * * * *", "second: 60 is out of range 0-59"),
        ("x * * * *", "minute: 'x' is not a number"),
        ("MON * * * *", "minute: 'MON' is not a number"),
        ("* * * FOO *", "month: unknown name 'FOO' (use JAN/FEB/MAR/APR/MAY/JUN/JUL/AUG/SEP/OCT/NOV/DEC)"),
        ("* * * * FUNDAY", "day-of-week: unknown name 'FUNDAY' (use SUN/MON/TUE/WED/THU/FRI/SAT)"),
        ("* * * JAN *x", "day-of-week: '*x' is not a number"),
        ("*/0 * * * *", "minute: step must be a positive integer, got '0' in '*/0'"),
        ("*/ * * * *", "minute: step must be a positive integer, got '' in '*/'"),
        ("*/x * * * *", "minute: step must be a positive integer, got 'x' in '*/x'"),
        ("*/-1 * * * *", "minute: step must be a positive integer, got '-1' in '*/-1'"),
        ("10-5 * * * *", "minute: range '10-5' starts after it ends"),
        ("* * * * SAT-MON", "day-of-week: range 'SAT-MON' starts after it ends"),
        ("5- * * * *", "minute: incomplete range '5-'"),
        ("-5 * * * *", "minute: incomplete range '-5'"),
        ("1,,2 * * * *", "minute: empty item in list '1,,2'"),
        ("1, * * * *", "minute: empty item in list '1,'"),
        ("1.5 * * * *", "minute: '1.5' is not a number"),
        ("\u00b2 * * * *", "minute: '\u00b2' is not a number"),
        ("*/\u00b2 * * * *", "minute: step must be a positive integer, got '\u00b2'"),
        ("0 0 30 2 *", "never fires: none of its months has any of its days of the month"),
        ("0 0 31 4,6,9,11 *", "never fires"),
        (
            "@fortnightly",
            "unknown macro '@fortnightly' (use @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly)",
        ),
    ],
)
def test_invalid_expressions_say_what_is_wrong(expr: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_cron(expr)


def test_time_zones() -> None:
    assert parse_timezone("Europe/Berlin") == BERLIN
    assert parse_timezone("UTC") == UTC_TZ
    for bad in ("Mars/Olympus_Mons", "", "europe/berlin ", "/etc/passwd", "../../etc/passwd", "localtime", "+02:00"):
        with pytest.raises(ValueError, match="unknown time zone"):
            parse_timezone(bad)


def test_naive_times_are_refused() -> None:
    spec = parse_cron("* * * * *")
    with pytest.raises(ValueError, match="timezone-aware"):
        next_fire(spec, datetime(2024, 1, 1), UTC_TZ)
    with pytest.raises(ValueError, match="timezone-aware"):
        prev_fire(spec, datetime(2024, 1, 1), UTC_TZ)


# --- next and previous fire times --------------------------------------------------------------


def test_next_fire_is_strictly_after() -> None:
    spec = parse_cron("*/5 * * * *")
    assert next_fire(spec, utc(2024, 1, 1, 10, 5), UTC_TZ) == utc(2024, 1, 1, 10, 10)
    assert next_fire(spec, utc(2024, 1, 1, 10, 4, 59, 999_999), UTC_TZ) == utc(2024, 1, 1, 10, 5)
    assert next_fire(spec, utc(2024, 1, 1, 10, 5, 0, 1), UTC_TZ) == utc(2024, 1, 1, 10, 10)
    assert next_fire(spec, utc(2024, 12, 31, 23, 58), UTC_TZ) == utc(2025, 1, 1)


def test_prev_fire_is_at_or_before() -> None:
    spec = parse_cron("*/5 * * * *")
    assert prev_fire(spec, utc(2024, 1, 1, 10, 5), UTC_TZ) == utc(2024, 1, 1, 10, 5)
    assert prev_fire(spec, utc(2024, 1, 1, 10, 4, 59, 999_999), UTC_TZ) == utc(2024, 1, 1, 10, 0)
    assert prev_fire(spec, utc(2025, 1, 1, 0, 4), UTC_TZ) == utc(2025, 1, 1)
    assert prev_fire(parse_cron("0 0 1 1 *"), utc(2025, 6, 1), UTC_TZ) == utc(2025, 1, 1)
    assert prev_fire(parse_cron("30 9 * * MON"), utc(2024, 6, 12), UTC_TZ) == utc(2024, 6, 10, 9, 30)


def test_results_are_utc_even_for_other_inputs() -> None:
    after = datetime(2024, 7, 1, 12, 0, tzinfo=BERLIN)
    got = next_fire(parse_cron("0 13 * * *"), after, BERLIN)
    assert got.tzinfo is UTC
    assert got == utc(2024, 7, 1, 11)


def test_day_of_month_or_day_of_week_when_both_are_restricted() -> None:
    # The 13th of each month, and every Friday: June 2024 has Fridays 7, 14, 21, 28.
    got = [t.day for t in fires("0 0 13 * FRI", utc(2024, 6, 1), 6)]
    assert got == [7, 13, 14, 21, 28, 5]
    # Only one restricted: that one alone decides.
    assert [t.day for t in fires("0 0 13 * *", utc(2024, 6, 1), 2)] == [13, 13]
    assert [t.day for t in fires("0 0 * * FRI", utc(2024, 6, 1), 2)] == [7, 14]
    # Vixie: a field written with a leading * counts as unrestricted even with a step, so the
    # days must match both: odd days of the month that are Mondays.
    assert [t.date().isoformat() for t in fires("0 0 */2 * MON", utc(2024, 6, 1), 3)] == [
        "2024-06-03",
        "2024-06-17",
        "2024-07-01",
    ]


def test_leap_day() -> None:
    assert fires("0 0 29 2 *", utc(2024, 3, 1), 2) == [utc(2028, 2, 29), utc(2032, 2, 29)]
    # 2100 is not a leap year.
    assert fires("0 0 29 2 *", utc(2097, 1, 1), 1) == [utc(2104, 2, 29)]
    assert prev_fire(parse_cron("0 0 29 2 *"), utc(2103, 1, 1), UTC_TZ) == utc(2096, 2, 29)
    # Last day of February, either way.
    assert [t.day for t in fires("0 0 28,29 2 *", utc(2023, 1, 1), 3)] == [28, 28, 29]
    # Feb 29 OR a Monday in February.
    assert fires("0 0 29 2 MON", utc(2025, 2, 20), 2) == [utc(2025, 2, 24), utc(2026, 2, 2)]


def test_months_without_the_day_are_skipped() -> None:
    assert [t.month for t in fires("0 0 31 * *", utc(2024, 1, 1), 7)] == [1, 3, 5, 7, 8, 10, 12]


def test_searches_skip_whole_months_and_years() -> None:
    t0 = time.perf_counter()
    for _ in range(100):
        assert next_fire(parse_cron("0 0 29 2 *"), utc(2097, 3, 1), UTC_TZ) == utc(2104, 2, 29)
        assert prev_fire(parse_cron("0 0 29 2 *"), utc(2104, 2, 28), UTC_TZ) == utc(2096, 2, 29)
        assert next_fire(parse_cron("59 59 23 31 12 *"), utc(2024, 1, 1), UTC_TZ) == utc(2024, 12, 31, 23, 59, 59)
        assert prev_fire(parse_cron("0 0 0 1 1 *"), utc(2024, 12, 31, 23, 59, 59), UTC_TZ) == utc(2024, 1, 1)
    # 400 searches, each across years; minute by minute this would take minutes.
    assert time.perf_counter() - t0 < 2.0


# --- daylight saving time --------------------------------------------------------------------


def test_berlin_spring_gap_is_skipped() -> None:
    # 2024-03-31: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day.
    got = fires("30 2 * * *", utc(2024, 3, 29, 12), 3, BERLIN)
    assert local(got, BERLIN) == [
        "2024-03-30 02:30:00+0100",
        "2024-04-01 02:30:00+0200",
        "2024-04-02 02:30:00+0200",
    ]
    got = fires("*/30 * * * *", utc(2024, 3, 31, 0, 15), 3, BERLIN)
    assert local(got, BERLIN) == [
        "2024-03-31 01:30:00+0100",
        "2024-03-31 03:00:00+0200",
        "2024-03-31 03:30:00+0200",
    ]


def test_berlin_autumn_overlap_fires_once_at_the_first_occurrence() -> None:
    # 2024-10-27: 03:00 CEST goes back to 02:00 CET; 02:00-02:59 happen twice.
    got = fires("30 2 * * *", utc(2024, 10, 26, 12), 2, BERLIN)
    assert got == [utc(2024, 10, 27, 0, 30), utc(2024, 10, 28, 1, 30)]
    got = fires("0,30 * * * *", utc(2024, 10, 26, 23, 45), 5, BERLIN)
    assert local(got, BERLIN) == [
        "2024-10-27 02:00:00+0200",
        "2024-10-27 02:30:00+0200",
        "2024-10-27 03:00:00+0100",
        "2024-10-27 03:30:00+0100",
        "2024-10-27 04:00:00+0100",
    ]
    # Asked during the second pass, the next fire is after the repeated hour.
    assert next_fire(parse_cron("45 2 * * *"), utc(2024, 10, 27, 1, 10), BERLIN) == utc(2024, 10, 28, 1, 45)
    # And the latest fire at or before it is the first pass of 02:45 (00:45 UTC), not 01:45 UTC.
    assert prev_fire(parse_cron("45 2 * * *"), utc(2024, 10, 27, 1, 50), BERLIN) == utc(2024, 10, 27, 0, 45)
    assert prev_fire(parse_cron("45 2 * * *"), utc(2024, 10, 27, 0, 50), BERLIN) == utc(2024, 10, 27, 0, 45)
    assert prev_fire(parse_cron("45 2 * * *"), utc(2024, 10, 27, 0, 40), BERLIN) == utc(2024, 10, 26, 0, 45)


def test_new_york_gap_and_overlap() -> None:
    # 2024-03-10: 02:00 EST jumps to 03:00 EDT.
    got = fires("30 2 * * *", utc(2024, 3, 9, 12), 2, NEW_YORK)
    assert local(got, NEW_YORK) == ["2024-03-11 02:30:00-0400", "2024-03-12 02:30:00-0400"]
    # 2024-11-03: 02:00 EDT goes back to 01:00 EST; 01:xx happens twice.
    got = fires("0 * * * *", utc(2024, 11, 3, 3, 30), 4, NEW_YORK)
    assert got == [utc(2024, 11, 3, 4), utc(2024, 11, 3, 5), utc(2024, 11, 3, 7), utc(2024, 11, 3, 8)]
    assert local(got, NEW_YORK) == [
        "2024-11-03 00:00:00-0400",
        "2024-11-03 01:00:00-0400",
        "2024-11-03 02:00:00-0500",
        "2024-11-03 03:00:00-0500",
    ]
    got = fires("30 1 * * *", utc(2024, 11, 2, 12), 2, NEW_YORK)
    assert got == [utc(2024, 11, 3, 5, 30), utc(2024, 11, 4, 6, 30)]


def _oracle(spec: CronSpec, tz: ZoneInfo, start: datetime, minutes: int) -> list[datetime]:
    """Fire times found the slow way: every UTC minute whose local time matches, first pass only."""
    out = []
    for i in range(minutes):
        u = start + timedelta(minutes=i)
        w = u.astimezone(tz)
        if (
            w.fold == 0
            and w.minute in spec.minutes
            and w.hour in spec.hours
            and w.month in spec.months
            and spec.day_matches(w.year, w.month, w.day)
        ):
            out.append(u)
    return out


@pytest.mark.parametrize(
    ("tz", "start"),
    [
        (BERLIN, utc(2024, 3, 30)),
        (BERLIN, utc(2024, 10, 26)),
        (NEW_YORK, utc(2024, 3, 9)),
        (NEW_YORK, utc(2024, 11, 2)),
        (ZoneInfo("Australia/Lord_Howe"), utc(2024, 4, 6)),  # a 30-minute shift
        (ZoneInfo("Pacific/Apia"), utc(2011, 12, 29)),  # a whole day skipped
    ],
)
@pytest.mark.parametrize(
    "expr", ["* * * * *", "*/7 * * * *", "15,45 1-3 * * *", "0 */2 * * *", "30 2 * * *", "0 0 * * *"]
)
def test_next_and_prev_agree_with_a_minute_by_minute_oracle(tz: ZoneInfo, start: datetime, expr: str) -> None:
    spec = parse_cron(expr)
    minutes = 3 * 24 * 60
    expected = _oracle(spec, tz, start, minutes)
    got = []
    t = start - timedelta(microseconds=1)
    end = start + timedelta(minutes=minutes)
    while (t := next_fire(spec, t, tz)) < end:
        got.append(t)
    assert got == expected
    rng = random.Random(expr)
    for _ in range(200):
        at = start + timedelta(seconds=rng.randrange(60, minutes * 60))
        before = [e for e in expected if e <= at]
        if before:
            assert prev_fire(spec, at, tz) == before[-1], at
