"""Cron expressions: parsing, and the next and previous fire times in a time zone.

Five fields (minute hour day-of-month month day-of-week) with Vixie-cron semantics, or six
with a leading seconds field. Fire times are wall-clock times in the schedule's time zone: a
local time that does not exist (a DST gap) is skipped, and one that occurs twice (a DST
overlap) fires once, at its first occurrence.

Searching is cronsim's: typed, no dependencies, Vixie's day rules (croniter ORs `*/2` day fields).
"""

from __future__ import annotations

import calendar
import functools
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError

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
# Longest days of each month, February's in a leap year.
_MONTH_DAYS = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
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
    # The same expression in six numeric fields, each item kept (a leading `*` decides the day
    # rule): the form handed to cronsim, so its parser never sees names or our extensions.
    normalized: str

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


def _field(text: str, field: _Field) -> tuple[set[int], str]:
    """The values a field allows, and its items rewritten as numbers (`*`, `*/n`, `a`, `a-b/n`)."""
    if text == "":
        raise ValueError(f"{field.name}: empty field")
    values: set[int] = set()
    items: list[str] = []
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
            items.append("*" if step == 1 else f"*/{step}")
        else:
            if "-" in base:
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
            items.append(str(low) if low == high else f"{low}-{high}" + (f"/{step}" if step > 1 else ""))
        values.update(range(low, high + 1, step))
    return values, ",".join(items)


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
    parsed = [
        _field(f, field) for f, field in zip(fields, (_SECONDS, _MINUTES, _HOURS, _DOM, _MONTH, _DOW), strict=True)
    ]
    (sec, _), (minute, _), (hour, _), (dom, _), (month, _), (dow, _) = parsed
    spec = CronSpec(
        expr=text,
        seconds=tuple(sorted(sec)),
        minutes=tuple(sorted(minute)),
        hours=tuple(sorted(hour)),
        days=tuple(sorted(dom)),
        months=tuple(sorted(month)),
        weekdays=tuple(sorted({d % 7 for d in dow})),
        dom_star=fields[3].startswith("*"),
        dow_star=fields[5].startswith("*"),
        normalized=" ".join(items for _, items in parsed),
    )
    # With either day field or-ed in, every month has a matching day. When both must match, a
    # (month, day) pair recurs on every weekday over the years: it fires iff such a pair exists.
    if (spec.dom_star or spec.dow_star) and spec.days[0] > max(_MONTH_DAYS[m] for m in spec.months):
        raise ValueError("never fires: none of its months has any of its days of the month")
    try:
        CronSim(spec.normalized, datetime(2000, 1, 1))
    except CronSimError as exc:  # our grammar is a subset of cronsim's: this would be a bug
        raise ValueError(f"cannot search {spec.normalized!r}: {exc}") from None
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
# cronsim iterates naive wall-clock times, so the time zone rules stay ours (see the docstring).
# It gives up after 50 years without a match; the sparsest expression this grammar accepts
# (February 29th that is a Sunday, `0 0 29 2 */7`) has gaps of at most 40.


def _walls(spec: CronSpec, start: datetime, *, reverse: bool) -> Iterator[datetime]:
    """Matching wall-clock times from `start` on (inclusive), forward or backward."""
    # cronsim yields only times strictly past the one it is given.
    return CronSim(spec.normalized, start + _SECOND if reverse else start - _SECOND, reverse=reverse)


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
    for wall in _walls(spec, start, reverse=False):
        at = _instant(wall, tz)
        if at is not None and at > after:
            return at
    raise ValueError(f"{spec.expr!r} never fires")


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
    for wall in _walls(spec, start, reverse=True):
        when = _instant(wall, tz)
        if when is not None and when <= at:
            return when
    raise ValueError(f"{spec.expr!r} never fired")
