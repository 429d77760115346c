"""Durations, time zones and the one threshold rule every rule kind shares.

Strings are parsed here once, at the edge; the core only sees `Duration`, `AsOf` and aware datetimes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from functools import lru_cache
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dateutil.relativedelta import relativedelta

__all__ = [
    "MAX_DURATION_YEARS",
    "AsOf",
    "DateRangeError",
    "Duration",
    "DurationError",
    "DurationTooLongError",
    "add_durations",
    "as_aware",
    "day_start",
    "get_tz",
    "in_years",
    "parse_as_of",
    "parse_duration",
    "parse_instant",
    "to_utc_text",
]

_SHORT = re.compile(r"^\s*(\d+)\s*(h|d|w|mo|y)\s*$")
_ISO = re.compile(
    r"^P(?!$)(?:(?P<y>\d+)Y)?(?:(?P<mo>\d+)M)?(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?"
    r"(?:T(?=\d)(?:(?P<h>\d+)H)?)?$"
)


class DurationError(ValueError):
    """A duration string that is neither `45d`-style nor ISO 8601, or one too long to use."""


class DurationTooLongError(DurationError):
    """A well-formed duration longer than MAX_DURATION_YEARS: no date offset can use it."""


@dataclass(frozen=True, order=True)
class Duration:
    """A calendar-aware length of time.

    Months and years are calendar units (Jan 31 + 1mo = Feb 28); days and weeks are calendar days in
    the rule set's time zone; hours compare instants. A parsed duration is all-calendar or all-hours; a
    sum of both (a client's `forgotten_after: 36h` plus a release's `grace: 3d`) moves the event by the
    hours first, then counts calendar days from the local date it lands on.
    """

    months: int = 0
    days: int = 0
    hours: int = 0
    text: str = ""
    #: (months, days) applied one after another, for a threshold extended by another whose months come
    #: after the first's days (`30d` then a `1mo` grace): one relativedelta adds all months first. Empty
    #: when months-first is the same thing (the months, if any, are all in the first part).
    steps: tuple[tuple[int, int], ...] = ()

    @property
    def is_hours(self) -> bool:
        """Only hours: compared as instants."""
        return self.hours != 0 and not self.months and not self.days

    def add_to_date(self, d: date) -> date:
        if not self.months:  # days alone: plain date arithmetic, without relativedelta's cost
            return d + timedelta(days=self.days)
        if self.steps:
            for months, days in self.steps:
                d = d + relativedelta(months=months, days=days)
            return d
        return d + relativedelta(months=self.months, days=self.days)

    def cutoff(self, as_of_date: date) -> date:
        """Latest event date whose `date + self <= as_of_date` (the "after" threshold).

        `date + months` is monotone but not invertible (month-end clamping), so the exact cutoff is
        found by stepping from an estimate; it is then one comparison per client.
        """
        if not self.months:  # days alone are invertible
            return as_of_date - timedelta(days=self.days)
        c = as_of_date - relativedelta(months=self.months, days=self.days)
        while self.add_to_date(c) > as_of_date:
            c -= timedelta(days=1)
        while self.add_to_date(c + timedelta(days=1)) <= as_of_date:
            c += timedelta(days=1)
        return c

    def approx_days(self) -> float:
        return self.months * 30.436875 + self.days + self.hours / 24

    def __str__(self) -> str:
        return self.text or f"P{self.months}M{self.days}DT{self.hours}H"


#: The longest duration a rule or a client attribute may give. Far beyond any retention threshold, and
#: it keeps as_of (AS_OF_YEARS) minus a few of them summed (after + grace) inside datetime's years.
MAX_DURATION_YEARS = 100
_MAX_DAYS = MAX_DURATION_YEARS * 36525 // 100  # 100 years of 365.25 days: 100y, 1200mo, 36525d, 876600h


def _too_long(value: object) -> DurationTooLongError:
    return DurationTooLongError(f"duration {value!r} is too long: at most {MAX_DURATION_YEARS} years ({_MAX_DAYS}d)")


def _count(digits: str, value: object) -> int:
    """A duration's number; thousands of digits are refused before `int()` (which limits them)."""
    if len(digits.lstrip("0")) > 9:
        raise _too_long(value)
    return int(digits)


def _within_limit(d: Duration, value: object) -> Duration:
    # each part first: a 10**400-day int would overflow approx_days' float; then their sum (P100Y9D)
    parts = d.days > _MAX_DAYS or d.months > 12 * MAX_DURATION_YEARS or d.hours > 24 * _MAX_DAYS
    if parts or d.approx_days() > _MAX_DAYS:
        raise _too_long(value)
    return d


def parse_duration(value: str | int) -> Duration:
    """Parse `45d`, `6w`, `2mo`, `1y`, `36h` or ISO 8601 (`P60D`, `P1Y2M`, `PT36H`).

    A bare integer means days, as analysts write `after: 60`. At most MAX_DURATION_YEARS long: a
    longer one cannot be an offset from a date.
    """
    if isinstance(value, bool):
        raise DurationError(f"invalid duration {value!r}")
    if not isinstance(value, int | str):  # checked before the cache, which cannot hash `after: [60d]`
        raise DurationError(f"invalid duration {value!r}: expected a string like 60d")
    return _parse_duration(value)


@lru_cache(maxsize=1024)
def _parse_duration(value: str | int) -> Duration:
    if isinstance(value, int):
        if value < 0:
            raise DurationError(f"duration must not be negative: {value}")
        return _within_limit(Duration(days=value, text=f"{value}d"), value)
    s = value.strip()
    m = _SHORT.match(s)
    if m:
        n, unit = _count(m.group(1), value), m.group(2)
        match unit:
            case "h":
                d = Duration(hours=n, text=s)
            case "d":
                d = Duration(days=n, text=s)
            case "w":
                d = Duration(days=7 * n, text=s)
            case "mo":
                d = Duration(months=n, text=s)
            case _:
                d = Duration(months=12 * n, text=s)
        return _within_limit(d, value)
    m = _ISO.match(s.upper())
    if m:
        g = {k: _count(v, value) if v else 0 for k, v in m.groupdict().items()}
        if g["h"] and (g["y"] or g["mo"] or g["w"] or g["d"]):
            raise DurationError(f"invalid duration {value!r}: mix of hours and calendar units")
        d = Duration(months=12 * g["y"] + g["mo"], days=7 * g["w"] + g["d"], hours=g["h"], text=s)
        return _within_limit(d, value)
    raise DurationError(
        f"invalid duration {value!r}: use a number with a unit (45d, 6w, 2mo, 1y, 36h) or ISO 8601 (P60D)"
    )


#: names the tz database holds that are not a place: `localtime` is whatever zone the machine running the
#: plan is set to, so one rule file gave different days (and action keys) on a laptop and on the server
_NOT_ZONES = frozenset({"localtime", "posixrules", "factory"})


@lru_cache(maxsize=64)
def get_tz(name: str) -> tzinfo:
    if name.upper() == "UTC":
        return UTC
    if name.strip().lower() in _NOT_ZONES:
        raise ValueError(f"time zone {name!r} depends on the machine: name the zone, e.g. Europe/Moscow")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}: use an IANA name such as Europe/Moscow") from exc


def zone_name(tz: tzinfo) -> str:
    """How a store records the zone its naive times were read in: the IANA key, or the zone's own text."""
    return getattr(tz, "key", None) or str(tz)


#: after every fact: what exists "whenever created" (every client and invoice a look at the ledger may name)
END_OF_TIME = datetime.max.replace(tzinfo=UTC)


_FIXED = re.compile(r"^UTC([+-])(\d{2}):(\d{2})$")


def zone_from_name(name: str) -> tzinfo:
    """The zone `zone_name` wrote: an IANA name, or a fixed offset (`UTC+03:00`, a host's own tzinfo)."""
    if m := _FIXED.match(name):
        sign = 1 if m.group(1) == "+" else -1
        return timezone(sign * timedelta(hours=int(m.group(2)), minutes=int(m.group(3))))
    return get_tz(name)


def same_zone(a: str, b: str) -> bool:
    """Two zone names for the same clock (`Europe/Kiev` and `Europe/Kyiv`, `UTC` and `Etc/UTC`): the same
    offset at noon on the 1st and 15th of every month from 1970 to 2050."""
    if a == b:
        return True
    try:
        za, zb = zone_from_name(a), zone_from_name(b)
    except ValueError:
        return False
    return all(
        datetime(y, m, d, 12, tzinfo=UTC).astimezone(za).utcoffset()
        == datetime(y, m, d, 12, tzinfo=UTC).astimezone(zb).utcoffset()
        for y in range(1970, 2051) for m in range(1, 13) for d in (1, 15)
    )  # fmt: skip


def as_aware(dt: datetime, tz: tzinfo) -> datetime:
    """Naive datetimes are wall-clock times in `tz`; aware ones are kept. UTC, seconds precision."""
    if dt.microsecond:
        dt = dt.replace(microsecond=0)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=tz)
    return dt if dt.tzinfo is UTC else dt.astimezone(UTC)


def parse_instant(value: str | date | datetime, tz: tzinfo) -> datetime:
    """A fact's timestamp: ISO 8601 text, a datetime, or a date (= start of that day in `tz`).

    Raises DateRangeError outside AS_OF_YEARS: near datetime's ends a zone's offset overflows (1C's empty date
    `0001-01-01` in Moscow), and plans add years to facts."""
    if isinstance(value, datetime):
        return as_aware(in_years(value), tz)
    if isinstance(value, date):
        return day_start(in_years(value), tz)
    if len(value) == 10:
        return day_start(in_years(date.fromisoformat(value)), tz)
    text = value.strip()
    cut = 10 if text[4:5] == "-" else 8  # where the date ends: 2026-03-01 or 20260301
    if len(text) > cut and text[cut] not in "Tt ":
        # Python takes any character there as the separator: `2026-03-01+03:00` (a date with its offset, as
        # SOAP and 1C write it) was read as 03:00 local, the offset and its sign lost
        raise ValueError(f"{value!r} is not ISO 8601: a date and a time are separated by T or a space "
                         f"(2026-03-01T10:00); a date with an offset is not an instant, write its time")
    return as_aware(in_years(datetime.fromisoformat(text)), tz)  # Python 3.11 reads "Z" and offsets


def date_only(v: Any) -> date | None:
    """The date a value names without a time of day (`2026-03-01`, `20260301`, a `date`): compared with an
    instant, or given as an event's time, it is then a whole day. None for an instant or anything else."""
    if isinstance(v, date):
        return None if isinstance(v, datetime) else v
    if not isinstance(v, str):
        return None
    try:
        return date.fromisoformat(v.strip())
    except ValueError:
        return None


def day_start(d: date, tz: tzinfo) -> datetime:
    return datetime.combine(d, time(0), tzinfo=tz).astimezone(UTC)


def day_end(d: date, tz: tzinfo) -> datetime:
    """The last second of a day in `tz` (instants are kept to the second): where a date that stands for its
    whole day ends."""
    return day_start(d + timedelta(days=1), tz) - timedelta(seconds=1)


def to_utc_text(dt: datetime) -> str:
    """Fixed-width UTC text (`2026-03-01T09:00:00Z`): sorts and compares like the instant it names."""
    if dt.tzinfo is not UTC:
        dt = dt.astimezone(UTC)
    return dt.isoformat(timespec="seconds")[:19] + "Z"


@dataclass(frozen=True)
class AsOf:
    """The instant a plan is made for, with its calendar date in the rule set's time zone."""

    instant: datetime
    tz: tzinfo

    @property
    def date(self) -> date:
        return self.instant.astimezone(self.tz).date()

    def local_date(self, dt: datetime) -> date:
        return dt.astimezone(self.tz).date()

    def day_start(self, d: date) -> datetime:
        return day_start(d, self.tz)

    def window_start(self, within: Duration) -> datetime:
        """Exclusive lower bound of "within D": events after it are inside the window.

        Consistent with `after`: an event is within D exactly when it is not yet D old.
        """
        if within.is_hours:
            return self.instant - timedelta(hours=within.hours)
        return self.older_bound(within) - timedelta(seconds=1)

    def window_end(self, within: Duration) -> datetime:
        """Exclusive upper bound of the instants whose own "within D" window holds this as_of: the mirror of
        `window_start`. What a run stamped later committed counts against a plan as of now (a backfill) up to
        here, as this plan's commits would count against that run in date order."""
        if within.is_hours:
            return self.instant + timedelta(hours=within.hours)
        return self.day_start(within.add_to_date(self.date)) + timedelta(hours=within.hours)

    def older_bound(self, d: Duration) -> datetime:
        """For a calendar (or mixed) duration: events strictly before this instant are at least `d` old."""
        return self.day_start(d.cutoff(self.date) + timedelta(days=1)) - timedelta(hours=d.hours)

    def is_older(self, event: datetime, d: Duration) -> bool:
        """The threshold rule: "after D" holds when date(event) + D <= date(as_of)."""
        if d.is_hours:
            return event + timedelta(hours=d.hours) <= self.instant
        return event < self.older_bound(d)

    def isoformat(self) -> str:
        return self.instant.astimezone(self.tz).isoformat()


def parse_as_of(value: str | date | datetime, tz: tzinfo) -> AsOf:
    """A date-only as_of means the END of that day in `tz`, so facts dated that day count."""
    if isinstance(value, datetime):
        return _in_range(AsOf(parse_instant(value, tz), tz))
    if isinstance(value, date):
        d = value
    else:
        s = value.strip()
        try:  # any ISO date without a time: 2026-03-01, 20260301, 2026-W09-7
            d = date.fromisoformat(s)
        except ValueError:
            return _in_range(AsOf(parse_instant(s, tz), tz))
    # fold=1: where a zone repeats the day's last hour (Asia/Almaty on 2024-02-29), the day ends at the
    # second 23:59:59; the first left a touch at the second 23:30 in no day at all
    end = datetime.combine(in_years(d), time(23, 59, 59, fold=1), tzinfo=tz)
    return _in_range(AsOf(end.astimezone(UTC), tz))


#: Plans look back years (windows, `1y` thresholds) and forward (due dates): keep clear of datetime's ends.
#: Facts, as_of and the dates in rules all lie within these years.
AS_OF_YEARS = (1900, 2999)


class DateRangeError(ValueError):
    """A well-formed date outside AS_OF_YEARS: its message is the whole explanation."""


_D = TypeVar("_D", bound=date)


def in_years(d: _D) -> _D:
    """`d`, if its year (as written, before any zone) lies in AS_OF_YEARS: then no offset can overflow."""
    if not AS_OF_YEARS[0] <= d.year <= AS_OF_YEARS[1]:
        raise DateRangeError(f"dates must lie between the years {AS_OF_YEARS[0]} and {AS_OF_YEARS[1]}")
    return d


def _in_range(a: AsOf) -> AsOf:
    if not AS_OF_YEARS[0] <= a.instant.year <= AS_OF_YEARS[1]:
        raise DateRangeError(f"as_of must lie between the years {AS_OF_YEARS[0]} and {AS_OF_YEARS[1]}")
    return a


def add_durations(a: Duration, b: Duration) -> Duration:
    """`a` then `b`; used where one threshold extends another (forgotten `after` + release `grace`): a
    month of grace counts from the day the client became forgotten, so `30d` then `1mo` from Jan 31 ends
    on Apr 2 (Mar 2 + 1mo), not Mar 30 (Jan 31 + 1mo + 30d, months first)."""
    parts = [p for p in (*(a.steps or [(a.months, a.days)]), *(b.steps or [(b.months, b.days)])) if p != (0, 0)]
    months_first = all(m == 0 for m, _d in parts[1:])
    return Duration(months=a.months + b.months, days=a.days + b.days, hours=a.hours + b.hours, text=f"{a}+{b}",
                    steps=() if months_first else tuple(parts))  # fmt: skip
