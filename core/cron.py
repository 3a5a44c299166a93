"""Cron expressions: parsing, and the next and previous fire times in a time zone.

Five fields (minute hour day-of-month month day-of-week) with Vixie-cron semantics, or six
with a leading seconds field. Fire times are wall-clock times in the schedule's time zone: a
local time that does not exist (a DST gap) is skipped, and one that occurs twice (a DST
overlap) fires once, at its first occurrence.
"""

from __future__ import annotations

import calendar
import functools
import zoneinfo
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

__all__ = ["CronSpec", "next_fire", "parse_cron", "parse_timezone", "prev_fire"]

_MONTH_NAMES = {
    "JAN": 1, "FEB": 2, "MAR": 3, "APR": 4, "MAY": 5, "JUN": 6,
    "JUL": 7, "AUG": 8, "SEP": 9, "OCT": 10, "NOV": 11, "DEC": 12,
}  # fmt: skip
_DAY_NAMES = {"SUN": 0, "MON": 1, "TUE": 2, "WED": 3, "THU": 4, "FRI": 5, "SAT": 6}
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# The Gregorian calendar repeats every 400 years: no match within that span means never.
_HORIZON_YEARS = 401
_SECOND = timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int] | None = None


_SECONDS = _Field("second", 0, 59)
_MINUTES = _Field("minute", 0, 59)
_HOURS = _Field("hour", 0, 23)
_DOM = _Field("day-of-month", 1, 31)
_MONTH = _Field("month", 1, 12, _MONTH_NAMES)
# 0 and 7 are both Sunday; 7 is folded into 0 after parsing.
_DOW = _Field("day-of-week", 0, 7, _DAY_NAMES)


@dataclass(frozen=True, slots=True)
class CronSpec:
    """A parsed expression: the sorted values each field allows."""

    expr: str
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: tuple[int, ...]
    months: tuple[int, ...]
    weekdays: tuple[int, ...]  # 0 = Sunday
    # Vixie cron: a day field whose text starts with `*` does not restrict the day, so the
    # other one alone decides; when neither does, a day matches if either field matches.
    dom_star: bool
    dow_star: bool

    def day_matches(self, year: int, month: int, day: int) -> bool:
        dom = day in self.days
        dow = (calendar.weekday(year, month, day) + 1) % 7 in self.weekdays
        if self.dom_star or self.dow_star:
            return dom and dow
        return dom or dow


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()  # not "²" or "٣", which str.isdigit accepts


def _value(text: str, field: _Field) -> int:
    if _is_number(text):
        n = int(text)
    elif field.names is not None and text.upper() in field.names:
        return field.names[text.upper()]
    elif field.names is not None and text.isalpha():
        raise ValueError(f"{field.name}: unknown name {text!r} (use {'/'.join(field.names)})")
    else:
        raise ValueError(f"{field.name}: {text!r} is not a number")
    if not field.low <= n <= field.high:
        raise ValueError(f"{field.name}: {n} is out of range {field.low}-{field.high}")
    return n


def _field(text: str, field: _Field) -> set[int]:
    if text == "":
        raise ValueError(f"{field.name}: empty field")
    values: set[int] = set()
    for item in text.split(","):
        if item == "":
            raise ValueError(f"{field.name}: empty item in list {text!r}")
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not _is_number(step_text) or int(step_text) == 0:
                raise ValueError(f"{field.name}: step must be a positive integer, got {step_text!r} in {item!r}")
            step = int(step_text)
        if base == "*":
            low, high = field.low, field.high
        elif "-" in base:
            start, _, end = base.partition("-")
            if start == "" or end == "":
                raise ValueError(f"{field.name}: incomplete range {base!r}")
            low, high = _value(start, field), _value(end, field)
            if field is _DOW and high == 0 and end.upper() == "SUN":
                high = 7  # FRI-SUN: Sunday as the end of a week
            if low > high:
                raise ValueError(f"{field.name}: range {base!r} starts after it ends")
        else:
            low = _value(base, field)
            # a-b/n is standard; a/n (start at a, to the end) is a common extension.
            high = field.high if slash else low
        values.update(range(low, high + 1, step))
    return values


def parse_cron(expr: str) -> CronSpec:
    """Parse a 5-field cron expression, or 6 fields with seconds first; ValueError says what is wrong."""
    return _parse(expr.strip())


# The firing loop parses each due schedule's expression on every fire.
@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> CronSpec:
    fields = _MACROS.get(text.lower(), text).split()
    if text.startswith("@") and text.lower() not in _MACROS:
        raise ValueError(f"unknown macro {text!r} (use {', '.join(_MACROS)})")
    if len(fields) == 5:
        fields = ["0", *fields]
    elif len(fields) != 6:
        raise ValueError(
            "expected 5 fields (minute hour day-of-month month day-of-week), "
            f"or 6 with seconds first, got {len(fields)}"
        )
    sec, minute, hour, dom, month, dow = fields
    weekdays = {d % 7 for d in _field(dow, _DOW)}
    spec = CronSpec(
        expr=text,
        seconds=tuple(sorted(_field(sec, _SECONDS))),
        minutes=tuple(sorted(_field(minute, _MINUTES))),
        hours=tuple(sorted(_field(hour, _HOURS))),
        days=tuple(sorted(_field(dom, _DOM))),
        months=tuple(sorted(_field(month, _MONTH))),
        weekdays=tuple(sorted(weekdays)),
        dom_star=dom.startswith("*"),
        dow_star=dow.startswith("*"),
    )
    if _next_naive(spec, datetime(2000, 1, 1)) is None:
        raise ValueError("never fires: none of its months has any of its days of the month")
    return spec


@functools.cache
def _known_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def parse_timezone(name: str) -> ZoneInfo:
    """An IANA time zone by name; ValueError for anything else."""
    known = _known_zones()
    # Without a zone list (no tzdata found) fall back to whatever ZoneInfo can load;
    # "localtime", listed on some hosts, is the host's own zone, not an IANA name.
    if (known and name not in known) or name == "localtime":
        raise ValueError(f"unknown time zone {name!r}: use an IANA name such as 'UTC' or 'Europe/Berlin'")
    try:
        return ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}: use an IANA name such as 'UTC' or 'Europe/Berlin'") from None


# --- searching wall-clock times ---------------------------------------------------------------
# Both searches walk the fields from the largest unit down, jumping straight to the next (or
# previous) allowed value of each, so a whole month or day that cannot match costs one step.


def _month_start(year: int, month: int) -> datetime:
    return datetime(year, month, 1)


def _month_end(year: int, month: int) -> datetime:
    return datetime(year, month, calendar.monthrange(year, month)[1], 23, 59, 59)


def _next_naive(spec: CronSpec, t: datetime) -> datetime | None:
    """The earliest matching wall-clock time >= t, or None within the horizon."""
    limit = t.year + _HORIZON_YEARS
    while t.year <= limit:
        if t.month not in spec.months:
            i = bisect_right(spec.months, t.month)
            t = (
                _month_start(t.year, spec.months[i])
                if i < len(spec.months)
                else _month_start(t.year + 1, spec.months[0])
            )
            continue
        last = calendar.monthrange(t.year, t.month)[1]
        day = t.day
        while day <= last and not spec.day_matches(t.year, t.month, day):
            day += 1
        if day > last:
            t = _month_start(t.year + 1, 1) if t.month == 12 else _month_start(t.year, t.month + 1)
            continue
        if day != t.day:
            t = datetime(t.year, t.month, day)
        i = bisect_left(spec.hours, t.hour)
        if i == len(spec.hours):
            t = datetime(t.year, t.month, t.day) + timedelta(days=1)
            continue
        if spec.hours[i] != t.hour:
            t = t.replace(hour=spec.hours[i], minute=0, second=0)
        i = bisect_left(spec.minutes, t.minute)
        if i == len(spec.minutes):
            t = t.replace(minute=0, second=0) + timedelta(hours=1)
            continue
        if spec.minutes[i] != t.minute:
            t = t.replace(minute=spec.minutes[i], second=0)
        i = bisect_left(spec.seconds, t.second)
        if i == len(spec.seconds):
            t = t.replace(second=0) + timedelta(minutes=1)
            continue
        return t.replace(second=spec.seconds[i])
    return None


def _prev_naive(spec: CronSpec, t: datetime) -> datetime | None:
    """The latest matching wall-clock time <= t, or None within the horizon."""
    limit = t.year - _HORIZON_YEARS
    while t.year >= limit:
        if t.month not in spec.months:
            i = bisect_left(spec.months, t.month)
            t = _month_end(t.year, spec.months[i - 1]) if i > 0 else _month_end(t.year - 1, spec.months[-1])
            continue
        day = t.day
        while day >= 1 and not spec.day_matches(t.year, t.month, day):
            day -= 1
        if day < 1:
            t = datetime(t.year, t.month, 1) - _SECOND
            continue
        if day != t.day:
            t = datetime(t.year, t.month, day, 23, 59, 59)
        i = bisect_right(spec.hours, t.hour)
        if i == 0:
            t = datetime(t.year, t.month, t.day) - _SECOND
            continue
        if spec.hours[i - 1] != t.hour:
            t = t.replace(hour=spec.hours[i - 1], minute=59, second=59)
        i = bisect_right(spec.minutes, t.minute)
        if i == 0:
            t = t.replace(minute=0, second=0) - _SECOND
            continue
        if spec.minutes[i - 1] != t.minute:
            t = t.replace(minute=spec.minutes[i - 1], second=59)
        i = bisect_right(spec.seconds, t.second)
        if i == 0:
            t = t.replace(second=0) - _SECOND
            continue
        return t.replace(second=spec.seconds[i - 1])
    return None


def _instant(wall: datetime, tz: ZoneInfo) -> datetime | None:
    """The UTC instant of a wall-clock time (its first occurrence), or None if it does not exist."""
    utc = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if utc.astimezone(tz).replace(tzinfo=None) != wall:
        return None  # in a DST gap: the clock jumped over it
    return utc


def _aware(t: datetime, name: str) -> None:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")


def next_fire(spec: CronSpec, after: datetime, tz: ZoneInfo) -> datetime:
    """The first fire time strictly after `after`, in UTC."""
    _aware(after, "after")
    # Wall times map to instants (first occurrence) in increasing order, so the first matching
    # wall time at or after the local time of `after` whose instant is later is the answer.
    start = after.astimezone(tz).replace(tzinfo=None, microsecond=0, fold=0)
    while True:
        wall = _next_naive(spec, start)
        if wall is None:
            raise ValueError(f"{spec.expr!r} never fires")
        at = _instant(wall, tz)
        if at is not None and at > after:
            return at
        start = wall + _SECOND


def prev_fire(spec: CronSpec, at: datetime, tz: ZoneInfo) -> datetime:
    """The latest fire time at or before `at`, in UTC."""
    _aware(at, "at")
    local = at.astimezone(tz)
    start = local.replace(tzinfo=None, microsecond=0, fold=0)
    # In the second pass of a repeated hour, the later wall times of that hour already fired
    # (in the first pass) before `at`: start the search past them.
    if local.fold == 1:
        first, second = local.replace(fold=0).utcoffset(), local.utcoffset()
        if first is not None and second is not None:
            start += first - second
    while True:
        wall = _prev_naive(spec, start)
        if wall is None:
            raise ValueError(f"{spec.expr!r} never fired")
        when = _instant(wall, tz)
        if when is not None and when <= at:
            return when
        start = wall - _SECOND
