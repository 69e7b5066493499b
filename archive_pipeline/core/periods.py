"""Periods: the hour, day or month of a table that one partition archives, in the table's time zone.

A partition key (Dagster's naming: ``2024-03-10-14:00``, ``2024-03-10``, ``2024-03-01``) is turned
into a :class:`Period` once, by :func:`parse_period`, and the period is handed down: it carries the
granularity, the bounds as aware datetimes in the zone, the partition key and the key-template
fields, so nothing below re-derives them. ``Period.isoformat()`` and ``str()`` give the partition
key, which for a daily UTC table is the ISO date the code has always used: manifests, object keys,
locks and messages of existing daily tables stay what they were.

Time zones, read once here and documented in the README ("Periods and time zones"):

- Bounds are the zone's wall-clock boundaries as instants: a day in Europe/Berlin on 2024-03-31 is
  [00:00+01, 00:00+02) = 23 hours, on 2024-10-27 [00:00+02, 00:00+01) = 25 hours. Arithmetic goes
  through UTC: Python compares and subtracts two datetimes of the same zone by wall clock, ignoring
  ``fold``, which would make the repeated hour equal to the first.
- The repeated hour of a fall-back night is two hourly partitions, named as Dagster names them:
  ``2024-10-27-02:00`` (the first, +02:00) and ``2024-10-27-02:00+0100`` (the second). The skipped
  hour of a spring-forward night does not exist (``2024-03-31-02:00`` in Berlin is refused).
- A local midnight that does not exist (a zone that springs forward at 00:00) starts the day at the
  first instant after the gap, so consecutive periods always tile time without gap or overlap.
"""

from __future__ import annotations

import datetime as dt
import difflib
import functools
import re
import zoneinfo
from dataclasses import dataclass
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

Granularity = Literal["hourly", "daily", "monthly"]
GRANULARITIES: tuple[str, ...] = ("hourly", "daily", "monthly")

# Dagster's partition key formats (HourlyPartitionsDefinition / Daily / Monthly).
DAGSTER_FORMATS = {"hourly": "%Y-%m-%d-%H:%M", "daily": "%Y-%m-%d", "monthly": "%Y-%m-%d"}

_HOUR_KEY = re.compile(r"^(\d{4}-\d{2}-\d{2})-(\d{2}):00([+-]\d{4})?$")
_DAY_KEY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_MONTH_KEY = re.compile(r"^(\d{4})-(\d{2})$")


class PeriodError(ValueError):
    """A partition key or time zone that names no period of the table; the message says which and why."""


MICROSECOND = dt.timedelta(microseconds=1)  # instants' and labels' resolution: an end's last value is end - this
UNIT = {"hourly": "hour", "daily": "day", "monthly": "month"}  # a period of each granularity, in words


@functools.lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name`` (``UTC``, ``Europe/Berlin``), or a :class:`PeriodError` saying so."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError):  # (OSError: a tzdata folder, a name too long)
        shown = name if len(str(name)) <= 80 else f"{str(name)[:60]}… ({len(str(name))} characters)"
        close = difflib.get_close_matches(str(name).replace(" ", "_"), _zone_names(), n=1, cutoff=0.8) \
            if isinstance(name, str) and len(name) <= 80 else []
        hint = f"; did you mean {close[0]!r}?" if close else "; use an IANA name such as 'UTC' or 'Europe/Berlin'"
        raise PeriodError(f"unknown time zone {shown!r}{hint}") from None


@functools.lru_cache(maxsize=1)
def _zone_names() -> list[str]:
    """Every IANA zone name this machine knows (for a misspelled one's nearest)."""
    return sorted(zoneinfo.available_timezones())


@functools.lru_cache(maxsize=256)
def offset_changes(name: str, first_year: int, last_year: int) -> frozenset[dt.timedelta]:
    """By how much the zone's UTC offset changes (later minus earlier) between the years ``first_year``
    and ``last_year``, both included: empty for a zone without DST or other changes in those years.
    Sampled once a day (no zone changes its offset back within a day), so a zone that dropped DST
    (America/Mexico_City in 2022) or a short suspension (Morocco's Ramadan) is seen."""
    tz = zone(name)
    first, last = max(first_year, 1), min(last_year, dt.MAXYEAR - 1)  # noon UTC stays inside the calendar
    moment = dt.datetime(first, 1, 1, 12, tzinfo=dt.UTC)
    end = dt.datetime(last, 12, 31, 12, tzinfo=dt.UTC)
    changes, before = set(), moment.astimezone(tz).utcoffset()
    while moment < end:
        moment += dt.timedelta(days=1)
        offset = moment.astimezone(tz).utcoffset()
        if offset != before:
            changes.add(offset - before)
            before = offset
    return frozenset(changes)


def has_dst(name: str, first_year: int = 2024, last_year: int | None = None) -> bool:
    """True when the zone's UTC offset changes between ``first_year`` and ``last_year`` (default: the
    same year): it repeats and skips wall-clock times then."""
    return bool(offset_changes(name, first_year, first_year if last_year is None else last_year))


def _year(moment: dt.datetime | dt.date) -> str:
    """The year as four digits (strftime's ``%Y`` does not pad years before 1000 on glibc)."""
    return f"{moment.year:04d}"


def _instant(naive: dt.datetime, tz: ZoneInfo, fold: int = 0) -> dt.datetime:
    """``naive`` as a wall-clock time in ``tz``, normalised through UTC: a time in a spring-forward gap
    becomes the first real instant after it, and ``fold`` picks the occurrence of a repeated time."""
    return naive.replace(tzinfo=tz, fold=fold).astimezone(dt.UTC).astimezone(tz)


def _second_of_repeated(moment: dt.datetime) -> bool:
    """Dagster's rule: the second occurrence of a repeated wall-clock time gets its offset in the key."""
    if moment.fold == 0:
        return False
    return moment.replace(fold=0).utcoffset() > moment.utcoffset()


@functools.total_ordering
@dataclass(frozen=True, eq=False)
class Period:
    """One partition of a table: ``[start, end)`` in the table's zone, its Dagster key and granularity."""

    granularity: str
    start: dt.datetime  # aware, in the table's zone
    end: dt.datetime  # aware, in the table's zone; the next period's start
    key: str  # the Dagster partition key

    @property
    def utc_start(self) -> dt.datetime:
        return self.start.astimezone(dt.UTC)

    @property
    def utc_end(self) -> dt.datetime:
        return self.end.astimezone(dt.UTC)

    @property
    def timezone(self) -> str:
        return str(self.start.tzinfo)

    @property
    def day(self) -> dt.date:
        """The local date the period starts on."""
        return self.start.date()

    @property
    def wall_bounds(self) -> tuple[dt.datetime, dt.datetime]:
        """The bounds as wall-clock times (for ``timestamp without time zone`` columns). In the
        repeated hour of a fall-back night the first occurrence is the empty range [02:00, 02:00):
        wall-clock values cannot say which occurrence they belong to, so all go to the second.
        A day or month is bounded by its local midnights as labels, not by the instants: where the
        clocks jump from 00:00 to 01:00 (Africa/Cairo) the day starts at the first real instant,
        01:00, but a wall-clock value of 00:00 or 00:30 is written on that day, so it is the day's."""
        if self.granularity == "hourly":
            start = self.start.replace(tzinfo=None, fold=0)
            if self.start.fold == 0 and self.start.replace(fold=1).utcoffset() != self.start.utcoffset():
                # a first occurrence: its wall-clock times come again, and go to the second (a fall-back of two
                # hours, Antarctica/Troll, repeats two: the first 01:00 was [01:00, 02:00) as the second is)
                return start, start
            return start, self.end.replace(tzinfo=None, fold=0)
        return dt.datetime.combine(self.start.date(), dt.time()), dt.datetime.combine(self.end.date(), dt.time())

    @property
    def label_span(self) -> tuple[dt.datetime, dt.datetime]:
        """The wall-clock labels of the period's instants (its first and its last label, the end open), for a key
        converting instants to the zone's wall clock: each instant has one label, so a fall-back night's first
        01:00 hour is labelled 01:00 to 02:00 as its second is, and no period has the labels a spring-forward
        night skips (no instant is labelled 02:30 in Berlin on 2024-03-31)."""
        last = (self.utc_end - MICROSECOND).astimezone(self.start.tzinfo)
        return self.start.replace(tzinfo=None, fold=0), last.replace(tzinfo=None, fold=0) + MICROSECOND

    def label_bounds(self, instants: bool = False) -> tuple[dt.datetime, dt.datetime]:
        """The labels a wall-clock partition key's bounds are compared with: the wall-clock bounds where the rows
        are labels (:attr:`wall_bounds`), the labels of the period's instants where they are instants labelled
        (:attr:`label_span`)."""
        return self.label_span if instants else self.wall_bounds

    def isoformat(self) -> str:
        """The partition key: what the code always printed for a day (``2024-03-10``)."""
        return self.key

    def __str__(self) -> str:
        return self.key

    def __repr__(self) -> str:
        return f"Period({self.granularity}, {self.key!r}, {self.start.isoformat()} .. {self.end.isoformat()})"

    def _sort_key(self) -> tuple:
        return self.utc_start, self.utc_end, self.granularity

    @property
    def utc_day(self) -> dt.date | None:
        """The date, when this is exactly one UTC day (what a ``datetime.date`` meant before periods)."""
        if self.granularity != "daily" or self.start.utcoffset() or self.end.utcoffset() or self.start.time() != dt.time():
            return None
        return self.start.date()

    def __eq__(self, other: object) -> bool:
        """A UTC day equals its date, so the code and callers that still hold dates keep working."""
        if isinstance(other, Period):
            return self._sort_key() == other._sort_key()
        if isinstance(other, dt.date) and not isinstance(other, dt.datetime):
            return self.utc_day == other
        return NotImplemented

    def __lt__(self, other: Period | dt.date) -> bool:
        if isinstance(other, dt.date) and not isinstance(other, dt.datetime):
            return self.utc_start < dt.datetime.combine(other, dt.time(), dt.UTC)
        return self._sort_key() < other._sort_key()

    def __hash__(self) -> int:
        day = self.utc_day
        return hash(day) if day is not None else hash(self._sort_key())

    def toordinal(self) -> int:
        """A number unique among the table's periods (the advisory lock's second key): the day's
        ordinal for days and months (as ``date.toordinal`` was), hours since 1970 for hours."""
        if self.granularity == "hourly":
            return int(self.utc_start.timestamp()) // 3600
        return self.start.date().toordinal()

    def fields(self) -> dict[str, str]:
        """Key-template fields (see the README's table): local year, month, day, date, hour and period."""
        hour = f"{self.start:%H}" + (f"{self.start:%z}" if _second_of_repeated(self.start) else "")
        label = {"hourly": f"{self.start.date().isoformat()}T{hour}", "daily": self.start.date().isoformat(),
                 "monthly": f"{_year(self.start)}-{self.start:%m}"}[self.granularity]
        return {"year": _year(self.start), "month": f"{self.start:%m}", "day": f"{self.start:%d}",
                "date": self.start.date().isoformat(), "hour": hour, "period": label}

    def manifest_fields(self) -> dict:
        """What the manifest records about the period (additive to its ``day``, the partition key)."""
        return {"granularity": self.granularity, "timezone": self.timezone,
                "period": {"start": self.start.isoformat(), "end": self.end.isoformat()}}

    def next(self) -> Period:
        return period_containing(self.granularity, self.timezone, self.end)


def _key(granularity: str, start: dt.datetime) -> str:
    if granularity == "hourly":
        return f"{start.date().isoformat()}-{start:%H:%M}" + (f"{start:%z}" if _second_of_repeated(start) else "")
    return start.date().isoformat() if granularity == "daily" else f"{_year(start)}-{start:%m}-01"


def not_over(period: Period, now: dt.datetime) -> str | None:
    """Why ``period`` is not over yet by the database's clock (``now``, its ``now()``, which stamps the rows), or
    None: the archive refuses such a period (its rows are still being written) and the dry run says so alike."""
    if now >= period.utc_end:
        return None
    return (f"the {UNIT[period.granularity]} is not over yet by the database's clock (it ends at "
            f"{period.utc_end:%Y-%m-%d %H:%M} UTC; the database's now() is {now.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S} "
            "UTC) and its rows are still being written")


def period_containing(granularity: str, timezone: str, moment: dt.datetime) -> Period:
    """The period of ``granularity`` in ``timezone`` that holds the instant ``moment`` (aware)."""
    tz = zone(timezone)
    local = moment.astimezone(tz)
    if granularity == "hourly":
        start_utc = moment.astimezone(dt.UTC)
        offset_minutes = local.minute * 60 + local.second
        start = (start_utc - dt.timedelta(seconds=offset_minutes, microseconds=local.microsecond)).astimezone(tz)
        end = (start.astimezone(dt.UTC) + dt.timedelta(hours=1)).astimezone(tz)
        return Period(granularity, start, end, _key(granularity, start))
    if granularity == "daily":
        first, after = local.date(), local.date() + dt.timedelta(days=1)
    elif granularity == "monthly":
        first = local.date().replace(day=1)
        after = (first + dt.timedelta(days=32)).replace(day=1)
    else:
        raise PeriodError(f"unknown granularity {granularity!r}; use one of {', '.join(GRANULARITIES)}")
    start = _instant(dt.datetime.combine(first, dt.time()), tz)
    if start > moment:  # a midnight in a gap starts the day after it; moment lies in the previous day
        return period_containing(granularity, timezone, start - MICROSECOND)
    return Period(granularity, start, _instant(dt.datetime.combine(after, dt.time()), tz), _key(granularity, start))


def periods_of_labels(granularity: str, timezone: str, first: dt.datetime, end: dt.datetime,
                      instants: bool = False) -> tuple[Period, Period] | None:
    """The first and the last period whose labels (:meth:`Period.label_bounds`) overlap the wall-clock labels
    [first, end) (naive: a ``timestamp`` or ``date`` key's bounds as printed), or None where none does. Not the
    periods of the instants the server reads the labels as: it reads a label the zone skipped as an instant after
    the gap. Where the rows are labels, a skipped label is a time of the period before the gap (Berlin's 02:30 on
    2024-03-31 is the 01:00 hour's, Pacific/Apia's 2011-12-30 is 2011-12-29's); where they are instants labelled
    (``instants``), no row has it, so a range of skipped labels holds no period (Antarctica/Troll's 01:00-02:00 on
    2024-03-31 is not the 03:00 hour the server reads it as)."""
    last = end - MICROSECOND
    # walked on from an instant of the label or before it (through UTC: a time that does not exist is no moment):
    # fold=1 reads a skipped time by the offset after the gap (an instant before it) and a repeated time as its
    # second occurrence, which holds the label's rows (wall_bounds); of instants labelled, the first occurrence's
    # rows come first
    readings = [_reading(timezone, first, fold) for fold in (0, 1)]
    low = _first_ending_after(granularity, timezone, first, instants, min(readings) if instants else readings[1])
    high = _first_ending_after(granularity, timezone, last, instants, _reading(timezone, last, 1))
    if high.label_bounds(instants)[0] > last:  # a label no period has (skipped, of instants): the one before the gap
        high = period_containing(granularity, timezone, high.utc_start - MICROSECOND)
    return (low, high) if low.label_bounds(instants)[0] < end else None


def _reading(timezone: str, label: dt.datetime, fold: int) -> dt.datetime:
    """The instant (in UTC) the wall-clock ``label`` reads as in ``timezone`` with ``fold``."""
    return label.replace(tzinfo=zone(timezone), fold=fold).astimezone(dt.UTC)


def _first_ending_after(granularity: str, timezone: str, label: dt.datetime, instants: bool,
                        moment: dt.datetime) -> Period:
    """The first period from the one holding ``moment`` (an instant whose label is ``label`` or before it) whose
    labels end after ``label``: a gap longer than a period (an hour of Apia's skipped day) is walked across."""
    period = period_containing(granularity, timezone, moment)
    while period.label_bounds(instants)[1] <= label:
        period = period.next()
    return period


def period_starting_on(granularity: str, timezone: str, day: dt.date) -> Period:
    """The first period of ``granularity`` on local ``day``: its first real hour (where the clocks skip
    midnight, Africa/Cairo on 2024-04-26, that is 01:00), or the day or month starting on it."""
    if granularity == "hourly":
        return period_containing(granularity, timezone, _instant(dt.datetime.combine(day, dt.time()), zone(timezone)))
    return period_of_date(granularity, timezone, day)


def period_of_date(granularity: str, timezone: str, day: dt.date) -> Period:
    """The daily or monthly period starting at local ``day`` (a month: its first day)."""
    tz = zone(timezone)
    if granularity == "monthly" and day.day != 1:
        raise PeriodError(f"{day} is not the first day of a month, so it names no monthly partition "
                          f"(write {_year(day)}-{day:%m}-01 or {_year(day)}-{day:%m})")
    if granularity == "hourly":
        raise PeriodError(f"{day} names a day, not an hour; an hourly partition is written like {day}-00:00")
    return period_containing(granularity, timezone, _instant(dt.datetime.combine(day, dt.time()), tz))


def parse_period(granularity: str, timezone: str, key: str) -> Period:
    """The period a partition key names, in Dagster's naming (the canonical one): hourly
    ``2024-03-10-14:00`` (``2024-10-27-02:00+0100`` for a repeated hour), daily ``2024-03-10``,
    monthly ``2024-03-01`` (``2024-03`` accepted too). Anything else is a :class:`PeriodError`."""
    text = str(key).strip()
    try:
        if granularity == "hourly":
            return _parse_hour(timezone, text)
        month = _MONTH_KEY.match(text)
        if granularity == "monthly" and month:
            return period_of_date(granularity, timezone, dt.date(int(month[1]), int(month[2]), 1))
        if _DAY_KEY.match(text):
            return period_of_date(granularity, timezone, dt.date.fromisoformat(text))
    except ValueError as exc:
        if isinstance(exc, PeriodError):
            raise
        raise PeriodError(f"{text!r} is not a valid {granularity} partition key: {exc}") from None
    example = {"hourly": "2024-03-10-14:00", "daily": "2024-03-10", "monthly": "2024-03-01 (or 2024-03)"}
    raise PeriodError(f"{text!r} is not a {granularity} partition key; write it like {example.get(granularity)}")


def _parse_hour(timezone: str, text: str) -> Period:
    match = _HOUR_KEY.match(text)
    if not match:
        raise PeriodError(f"{text!r} is not an hourly partition key; write it like 2024-03-10-14:00")
    tz = zone(timezone)
    try:
        naive = dt.datetime.fromisoformat(f"{match[1]}T{match[2]}:00")
    except ValueError as exc:
        raise PeriodError(f"{text!r} is not an hourly partition key: {exc}") from None
    candidates = [naive.replace(tzinfo=tz, fold=f) for f in (0, 1)]
    real = [c for c in candidates if c.astimezone(dt.UTC).astimezone(tz).replace(tzinfo=None) == naive]
    if not real:
        raise PeriodError(f"{text!r}: {naive:%Y-%m-%d %H:%M} does not exist in {timezone} (the clocks skip it)")
    if match[3]:
        real = [c for c in real if f"{c:%z}" == match[3]]
        if not real:
            raise PeriodError(f"{text!r}: {naive:%Y-%m-%d %H:%M} in {timezone} never has the offset {match[3]}")
    period = period_containing("hourly", timezone, real[0])
    return period


def as_period(granularity: str, timezone: str, value: Period | dt.date | str) -> Period:
    """Accept what callers hold (a period, a date as before, a partition key) as one period."""
    if isinstance(value, Period):
        if value.granularity != granularity or value.timezone != str(zone(timezone)):
            raise PeriodError(f"{value} is a {value.granularity} period in {value.timezone}, not "
                              f"{granularity} in {timezone}")
        return value
    if isinstance(value, dt.datetime):
        return period_containing(granularity, timezone, value if value.tzinfo else value.replace(tzinfo=zone(timezone)))
    if isinstance(value, dt.date):
        return period_of_date(granularity, timezone, value)
    return parse_period(granularity, timezone, value)


def manifest_period(manifest: dict) -> Period:
    """The period a manifest describes: its ``day`` (the partition key) read in its recorded granularity
    and zone; manifests written before periods existed are UTC days."""
    return parse_period(manifest.get("granularity") or "daily", manifest.get("timezone") or "UTC", manifest["day"])


def periods_overlapping(granularity: str, timezone: str, start: dt.datetime, end: dt.datetime) -> list[Period]:
    """Every period that overlaps the instants [start, end), in order."""
    out: list[Period] = []
    if end <= start:
        return out
    period = period_containing(granularity, timezone, start)
    while period.utc_start < end:
        out.append(period)
        period = period.next()
    return out


def periods_within(granularity: str, timezone: str, start: dt.datetime, end: dt.datetime) -> list[Period] | None:
    """The periods that exactly tile [start, end), or None when the range is not whole periods."""
    periods = periods_overlapping(granularity, timezone, start, end)
    if not periods or periods[0].utc_start != start or periods[-1].utc_end != end:
        return None
    return periods


def span(timezone: str, text: str) -> tuple[dt.datetime, dt.datetime]:
    """What a command-line argument names, as instants in ``timezone``: an hour (``2024-03-10-14:00``),
    a day (``2024-03-10``) or a month (``2024-03``)."""
    if _HOUR_KEY.match(text):
        p = _parse_hour(timezone, text)
    elif _MONTH_KEY.match(text):
        p = parse_period("monthly", timezone, text)
    else:
        p = parse_period("daily", timezone, text)
    return p.utc_start, p.utc_end
