"""The tables to archive, declared in one YAML file and validated before anything runs.

Connection settings never live here (they come from the environment through Dagster's
``EnvVar``), so the file can be reviewed and committed like code.
"""

from __future__ import annotations

import datetime as dt
import difflib
import functools
import hashlib
import os
import re
import reprlib
import string
import unicodedata
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo,
                      field_validator, model_validator)

from archive_pipeline.core.errors import redact
from archive_pipeline.core.keys import extension_twins, key_collisions, template_fields
from archive_pipeline.core.periods import (Period, PeriodError, as_period, has_dst, offset_changes, period_starting_on,
                                           zone)

CONFIG_ENV_VAR = "ARCHIVE_PIPELINE_CONFIG"
DEFAULT_CONFIG_PATH = "archive_tables.yaml"

Format = Literal["jsonl", "csv", "parquet"]
Compression = Literal["zstd", "gzip", "lz4", "snappy", "none"]

KEY_FIELDS = frozenset({"prefix", "schema", "table", "year", "month", "day", "date", "hour", "period", "ext",
                        "format"})
DEFAULT_KEY_TEMPLATE = "{prefix}/{schema}.{table}/{year}/{month}/{date}.{ext}"
# The default key template of each granularity (daily: unchanged, so existing archives are found).
DEFAULT_KEY_TEMPLATES = {"daily": DEFAULT_KEY_TEMPLATE,
                         "hourly": "{prefix}/{schema}.{table}/{year}/{month}/{date}/{period}.{ext}",
                         "monthly": "{prefix}/{schema}.{table}/{year}/{period}.{ext}"}
# Field sets of which a key template must hold one, per granularity, so no two periods share a key.
UNIQUE_KEY_FIELDS = {
    "daily": ({"date"}, {"year", "month", "day"}, {"period"}),
    "hourly": ({"date", "hour"}, {"year", "month", "day", "hour"}, {"period"}),
    "monthly": ({"date"}, {"year", "month"}, {"period"}),
}
# strftime codes a naming-mode pattern needs per granularity.
PATTERN_CODES = {"hourly": ("%Y", "%m", "%d", "%H"), "daily": ("%Y", "%m", "%d"), "monthly": ("%Y", "%m")}
MAX_IDENTIFIER_BYTES = 63
MAX_PARALLEL_STREAMS = 16  # sessions one day may open on the source database
MAX_PG_TIMEOUT_MS = 2_147_483_647  # PostgreSQL refuses larger statement/lock/idle timeouts when a session sets them
EARLIEST_START = dt.date(1900, 1, 1)  # before it, zones ran on local mean time (offsets of odd minutes and seconds)
MAX_YEARS_AHEAD = 10  # a start_date further ahead is a typo; the calendar's end (9999) overflows the period maths
MAX_KEEP_DAYS = 36_500  # a hundred years: "keep forever" in practice; more overflows the calendar
MAX_RETRY_DELAY_SECONDS = 86_400.0  # a day before the first retry
MAX_RETRY_WAIT_SECONDS = 7 * 86_400.0  # the longest wait (the last retry's, after doubling) a run may sit in
MAX_SENSOR_INTERVAL_SECONDS = 7 * 86_400  # a sensor that ticks less often than weekly is a typo
MAX_ALIAS_NODES = 100_000  # values YAML aliases may add to a file's own: a thousand tables merging shared settings
MAX_QUOTED = 120  # characters of a value a message quotes


def _bounded_repr() -> reprlib.Repr:
    """A repr that stops two levels and four items down: it never walks what it would not show."""
    brief = reprlib.Repr()
    brief.maxstring = brief.maxother = MAX_QUOTED  # (a 63-byte name, or a schema.table of two, is shown whole)
    brief.maxlevel = 2
    brief.maxlist = brief.maxtuple = brief.maxdict = brief.maxset = brief.maxfrozenset = 4
    return brief


_BOUNDED_REPR = _bounded_repr()


def _brief_repr(value: object) -> str:
    """``value``'s repr, shortened to a line: a message may quote any value of the file, and a list of YAML aliases
    expanding a billion-fold (or a name of a megabyte) took gigabytes to quote (a MemoryError, not the error).
    Redacted before it is cut: a DSN pasted as a table's name was quoted with its password in the load's error (a
    text is redacted whole first: cut at a long host name, its password no longer ended at an ``@`` to find)."""
    text = redact(_BOUNDED_REPR.repr(redact(value) if isinstance(value, str) else value))
    return text if len(text) <= MAX_QUOTED else text[:MAX_QUOTED - 3] + "..."


def _not_boolean(value: object) -> object:
    """YAML reads yes/no/on/off/true/false as booleans, and pydantic would take them as 1 and 0
    (``keep_days: yes`` removed every day older than yesterday): a number setting refuses them."""
    if isinstance(value, bool):
        raise ValueError(f"must be a number, not the boolean {value!r} (YAML reads yes/no/on/off/true/false as "
                         "booleans; write the number)")
    return value


def _day_text(value: object) -> object:
    """A day is written YYYY-MM-DD: pydantic reads a number (or a string of digits) as Unix seconds, so
    ``start_date: 0`` started the table at 1970-01-01 and ``start_date: 20240101`` was refused as "should
    have zero time"."""
    if isinstance(value, bool | int | float) or (isinstance(value, str) and value.strip().lstrip("+-").isdecimal()):
        raise ValueError(f"must be a day written as YYYY-MM-DD, e.g. 2024-01-01 (got the number {value!r})")
    return value


Count = Annotated[int, BeforeValidator(_not_boolean)]  # an integer setting; booleans refused
Number = Annotated[float, BeforeValidator(_not_boolean)]  # a numeric setting; booleans refused

# Levels each codec accepts, per format family: the text formats compress with zstandard / gzip
# (lz4 frames have no level here), Parquet hands the level to Arrow's codec. None: no level at all.
TEXT_LEVELS: dict[str, tuple[int, int] | None] = {"zstd": (-7, 22), "gzip": (0, 9), "lz4": None, "none": None}
PARQUET_LEVELS: dict[str, tuple[int, int] | None] = {"zstd": (-7, 22), "gzip": (1, 9), "lz4": (1, 12),
                                                     "snappy": None, "none": None}


def level_range(fmt: str, compression: str) -> tuple[int, int] | None:
    """The compression levels ``compression`` accepts in ``fmt`` (None: the codec takes no level)."""
    return (PARQUET_LEVELS if fmt == "parquet" else TEXT_LEVELS).get(compression)


def _ascii_name(text: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_")


def dagster_name(text: str) -> str:
    """A PostgreSQL identifier as a Dagster name: lower-case letters, digits and underscores (Dagster allows no
    others in an asset key, a job or an op name). An ASCII name keeps the name it always had (``Nasty Events``:
    ``nasty_events``), the asset key of every existing deployment. Other letters are spelled as their nearest
    ASCII (Unicode NFKD without its marks: ``é`` as ``e``; a script without one, 日本, as nothing) and the
    name's own 8 hex digits of SHA-256 follow, so ``événements``, ``evenements``, ``日本`` and ``中国``, which
    spelled so are one name or none, stay apart: ``evenements_<hash>``, ``<hash>``."""
    if text.isascii():
        return _ascii_name(text) or "_"
    spelled, digest = _ascii_name(ascii_spelling(text)), name_digest(text)
    return f"{spelled}_{digest}" if spelled else digest


def ascii_spelling(text: str) -> str:
    """``text``'s letters as their nearest ASCII (Unicode NFKD without its marks), others left out."""
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


def name_digest(text: str) -> str:
    """8 hex digits of ``text``'s SHA-256: what keeps apart names that one spelling would merge."""
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _identifier(name: str) -> str:
    """A name PostgreSQL can hold: not empty, no NUL byte (the server refuses one in any text, so the
    load's table check failed with a bare DataError), at most 63 bytes (longer ones are truncated when
    created, so the configured name never matches). Bytes in the database's encoding, which only a connection
    knows ('Ü' is one in LATIN1, two in UTF-8): here a name of more than 63 characters, too long in any;
    :func:`~archive_pipeline.core.source.describe_relation` names the bytes of one not found."""
    if not name:
        raise ValueError("is empty; write the name as the catalog spells it")
    if "\x00" in name:
        raise ValueError(f"{_brief_repr(name)} contains a NUL character, which no PostgreSQL name can hold")
    if len(name) > MAX_IDENTIFIER_BYTES:
        raise ValueError(f"identifier {_brief_repr(name)} is {len(name)} characters long, longer than PostgreSQL's "
                         "63 bytes in any encoding")
    return name


class ConfigError(ValueError):
    """The archive configuration is wrong; the message names the table and the setting."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@functools.lru_cache(maxsize=1024)  # (a few ms: asked again by every sensor tick's discovery of the table)
def longest_name(pattern: str, timezone: str) -> str:
    """The longest table name ``pattern`` gives on any day, in characters: on every day of a leap year, so every
    month's name meets every weekday's (%B %A: a Wednesday in September), in the table's zone (%z +0100, %Z CEST)."""
    here = zone(timezone)
    moments = [dt.datetime(2024, 1, 1, 23, tzinfo=here) + dt.timedelta(days=n) for n in range(366)]
    return max((moment.strftime(pattern) for moment in moments), key=len)


def too_long(pattern: str, timezone: str) -> None:
    """Refuse a naming pattern whose names pass 63 characters on some day, too long for PostgreSQL in any encoding
    (it would cut them, and days of one month or week would share a table name). Bytes depend on the database's
    encoding ('é' is one in LATIN1, two in UTF-8), which only a connection knows: discovery checks them there, as
    for configured names (see :func:`_identifier`)."""
    longest = longest_name(pattern, timezone)
    if len(longest) > MAX_IDENTIFIER_BYTES:
        raise ValueError(f"pattern {pattern!r} makes names of {len(longest)} characters ({longest!r}), longer than "
                         "PostgreSQL's 63 bytes in any encoding: PostgreSQL would cut them, and periods of one month "
                         "or week would share one table name")


class Partitioning(_Strict):
    """How the days of a table exist in PostgreSQL (see the README, "Three ways a day exists").

    - ``column``: a plain table; a period is the rows with ``day_column`` in it (in the table's zone).
    - ``declarative``: a declaratively partitioned parent; days are read from its children's bounds
      in the catalog (a child covering a week or month archives as its days).
    - ``naming``: one table per day named by ``pattern`` (strftime, e.g. ``events_%Y%m%d``) in the
      same schema, legacy inheritance style; the whole child table is the day.
    """

    mode: Literal["column", "declarative", "naming"] = "column"
    pattern: str | None = Field(default=None, description="naming mode: child table name, strftime style")

    @model_validator(mode="after")
    def _pattern(self) -> Partitioning:
        if self.mode == "naming":
            if not self.pattern:
                raise ValueError("mode 'naming' needs a pattern such as 'events_%Y%m%d'")
            if not all(code in self.pattern for code in ("%Y", "%m")):
                raise ValueError(f"pattern {self.pattern!r} must contain %Y and %m (and %d for days, %H for hours)")
            too_long(self.pattern, "UTC")  # (again in the table's zone, which a %z or %Z prints: see TableSpec)
        elif self.pattern:
            raise ValueError("pattern is only for mode 'naming'")
        return self


class Retention(_Strict):
    """Opt-in removal of old days from the source, only after their archive is proven (see lifecycle.py).

    ``detach``/``drop``: the day's own partition (declarative mode: a child covering exactly that
    day) or day table (naming mode); ``delete``: the day's rows, in batches (any mode).
    """

    keep_days: Count = Field(ge=1, le=MAX_KEEP_DAYS, description="days (before today) kept in the source; older "
                             "ones may be removed (at most 36500, a hundred years)")
    action: Literal["detach", "drop", "delete"]
    batch_rows: Count = Field(default=50_000, ge=100, le=10_000_000, description="delete: rows per DELETE statement")
    allow_delete_triggers: bool = Field(default=False, description="delete: remove days of a table with DELETE "
                                        "triggers or rules anyway (they may write or delete rows of other tables, "
                                        "which no archive holds); without it such a table's days are refused")


class TableSpec(_Strict):
    """One table to archive, one partition per hour, day or month of its time zone (default: UTC days)."""

    name: str = Field(description="schema-qualified table name, e.g. public.events")
    day_column: str | None = Field(default=None, description="date/timestamp/timestamptz column that defines "
                                   "the period (required unless partitioning.mode is naming)")
    start_date: Annotated[dt.date, BeforeValidator(_day_text)] = Field(
        description="first day to archive (monthly: the first day of a month)")
    granularity: Literal["hourly", "daily", "monthly"] = Field(
        default="daily", description="one partition per hour, day or month of the table's time zone")
    timezone: str = Field(default="UTC", description="IANA zone whose midnights (and hours, months) bound the "
                          "periods, e.g. Europe/Berlin; a day with a DST change is 23 or 25 hours")
    partitioning: Partitioning = Partitioning()
    overwrite: bool = Field(default=False, description="archive again even when a matching archive exists")
    pool: str = Field(default="archive_source", pattern=r"^[A-Za-z0-9_.-]+$",
                      description="Dagster concurrency pool bounding extractions from this table's database")
    format: Format = "jsonl"
    compression: Compression = "zstd"
    compression_level: Annotated[int | None, BeforeValidator(_not_boolean)] = Field(
        default=None, description="zstd -7..22, gzip 0..9 (Parquet 1..9), Parquet lz4 1..12; lz4 text, snappy and "
        "none take none")
    chunk_size: Count = Field(default=10_000, ge=100, le=1_000_000)
    parallel_streams: int | Literal["auto"] = Field(
        default=1, description=(
            "connections that read one day together, each a disjoint range of it, inside one exported snapshot "
            "(1: a single COPY; auto: chosen per day from the planner's row estimate and the archiver's cores, "
            "see parallel.auto_streams). Each is one more session on the source database, and in Dagster each "
            "stream beyond the first claims one more slot of the table's pool (a busy pool: fewer streams)"))
    key_template: str = Field(default=DEFAULT_KEY_TEMPLATE, description="default per granularity, see "
                              "DEFAULT_KEY_TEMPLATES")
    deep_check: bool = Field(default=False, description="after archiving, download the archive, load it back into "
                             "PostgreSQL and compare its content fingerprint with the source's; a difference fails "
                             "the run (a blocking check), so nothing downstream reads an unproven archive")
    retention: Retention | None = Field(default=None, description="remove proven days from the source (opt-in)")
    strict: bool = Field(default=False, description="refuse any column whose encoding in the chosen format is "
                         "lossy or ambiguous (see the manifest's per-column 'exact'), instead of recording it")

    @field_validator("name")
    @classmethod
    def _qualified(cls, value: str) -> str:
        schema, _, table = value.partition(".")
        if not schema or not table:
            raise ValueError("must be schema-qualified as 'schema.table' (e.g. public.events)")
        for part in (schema, table):
            _identifier(part)
        return value

    @field_validator("day_column")
    @classmethod
    def _column_name(cls, value: str | None) -> str | None:
        return value if value is None else _identifier(value)

    @field_validator("parallel_streams", mode="before")
    @classmethod
    def _streams(cls, value: object) -> int | str:
        if value == "auto":
            return value
        if isinstance(value, str) and value.strip().isdecimal():  # "4" from a quoted YAML value
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PARALLEL_STREAMS:
            raise ValueError(f"must be a whole number from 1 to {MAX_PARALLEL_STREAMS}, or auto "
                             f"(got {_brief_repr(value)})")
        return value

    @field_validator("key_template")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            parsed = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(value)
                      if name is not None]
        except ValueError as exc:
            raise ValueError(f"is not a valid template: {exc}") from None
        dressed = [f"{{{name}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}"
                   for name, spec, conversion in parsed if spec or conversion]
        if dressed:  # {date:%Y%m%d} reads as strftime but is a str's format spec: refused later, or a crash
            raise ValueError(f"writes {dressed[0]}: fields take no format spec or conversion; write each field "
                             f"bare, e.g. {{date}} or {{year}}{{month}}{{day}} (see key_template in the README)")
        if "\x00" in value or any(0xD800 <= ord(c) <= 0xDFFF for c in value):
            raise ValueError("holds a NUL or a lone surrogate (a YAML escape such as \\0 or \\udc80): S3 keys are "
                             "UTF-8 text without NUL; remove it")
        fields = {name for name, _, _ in parsed}
        unknown = fields - KEY_FIELDS
        if unknown:
            near = [f"{{{name}}}: did you mean {{{close[0]}}}?" for name in sorted(unknown)
                    if (close := difflib.get_close_matches(name, sorted(KEY_FIELDS), n=1, cutoff=0.6))]
            raise ValueError(f"uses unknown field(s) {sorted(unknown)}{' (' + '; '.join(near) + ')' if near else ''}; "
                             f"allowed: {sorted(KEY_FIELDS)}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _default_template(cls, data: object) -> object:
        """An hourly or monthly table without its own key template gets its granularity's default. (Any other
        granularity is left to the field's check: a list, unhashable, crashed the load with a TypeError.)"""
        granularity = data.get("granularity") if isinstance(data, dict) else None
        if isinstance(granularity, str) and "key_template" not in data and granularity in DEFAULT_KEY_TEMPLATES:
            data = {**data, "key_template": DEFAULT_KEY_TEMPLATES[granularity]}
        return data

    @field_validator("start_date")
    @classmethod
    def _start_in_range(cls, value: dt.date) -> dt.date:
        """A start the period maths and Dagster can handle: 9999-12-31 passed and then crashed the load with
        a bare OverflowError, 0001-01-01 in an eastern zone too."""
        today = dt.datetime.now(dt.UTC).date()
        leap_day = (today.month, today.day) == (2, 29)
        latest = dt.date(today.year + MAX_YEARS_AHEAD, today.month, 28 if leap_day else today.day)
        if not EARLIEST_START <= value <= latest:
            raise ValueError(f"{value} is out of range: write a day from {EARLIEST_START} to {latest} "
                             f"(at most {MAX_YEARS_AHEAD} years ahead), the first period to archive")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        """An IANA zone that means the same on every host. ``localtime`` (and ``posixrules``) are files of
        Debian's zoneinfo, linked to each host's own setting: the code server, the run containers and the
        database server (which reads declarative bounds in it) could each take another zone."""
        if value.lower() in ("localtime", "posixrules"):
            raise ValueError(f"{value!r} is whatever zone each host is set to (the code location's, the runs', the "
                             "database server's); name the zone itself, e.g. 'Europe/Berlin', or 'UTC'")
        if value.lower().startswith("right/"):  # the system's zoneinfo has them; PostgreSQL refuses them as TimeZone
            raise ValueError(f"{value!r} counts leap seconds, which PostgreSQL refuses as a time zone (and Dagster's "
                             f"partitions ignore): name the zone itself, e.g. {value[len('right/'):]!r}")
        try:
            zone(value)
        except PeriodError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _fits_granularity(self) -> TableSpec:
        """The template, the naming pattern and the start fit the granularity, checked before anything runs."""
        fields = template_fields(self.key_template)
        needed = UNIQUE_KEY_FIELDS[self.granularity]
        if not any(group <= fields for group in needed):
            options = " or ".join("{" + "}, {".join(sorted(g)) + "}" for g in needed)
            raise ValueError(f"key_template: a {self.granularity} table's template must contain {options}, so "
                             f"its {self.granularity} periods do not overwrite each other")
        if self.granularity == "monthly" and self.start_date.day != 1:
            raise ValueError(f"start_date: a monthly table starts on the first day of a month "
                             f"(got {self.start_date}; write {self.start_date:%Y-%m}-01)")
        if self.partitioning.mode == "naming":
            missing = [c for c in PATTERN_CODES[self.granularity] if c not in self.partitioning.pattern]
            if missing:
                codes = PATTERN_CODES[self.granularity]
                raise ValueError(f"partitioning: pattern {self.partitioning.pattern!r} must contain "
                                 f"{', '.join(codes[:-1])} and {codes[-1]} (a {self.granularity} table; missing "
                                 f"{', '.join(missing)})")
            self._pattern_reads_back()
            too_long(self.partitioning.pattern, self.timezone)
            period = self.first_period
            names = {(period.start + moment).strftime(self.partitioning.pattern)
                     for moment in (dt.timedelta(0), period.end - period.start - dt.timedelta(microseconds=1))}
            if len(names) > 1:  # a code finer than the period (%d of a monthly table): its other tables unread
                raise ValueError(f"partitioning: pattern {self.partitioning.pattern!r} names more than one table per "
                                 f"{self.granularity} period ({' and '.join(sorted(names))} in {period}): a "
                                 f"{self.granularity} table's pattern may hold only "
                                 f"{', '.join(PATTERN_CODES[self.granularity])} (one table per period)")
            first, last = self.zone_years
            if self.granularity == "hourly" and has_dst(self.timezone, first, last):
                raise ValueError(f"granularity: hourly tables in naming mode need a zone without daylight saving "
                                 f"time in the table's years ({self.timezone} changes its UTC offset between "
                                 f"{first} and {last}, so an hour repeats, and one table name cannot hold both); "
                                 "use UTC")
        if self.granularity == "hourly":
            first, last = self.zone_years
            odd = sorted({abs(c) for c in offset_changes(self.timezone, first, last) if c % dt.timedelta(hours=1)})
            if odd:
                raise ValueError(f"granularity: hourly tables need a zone whose clocks move by whole hours; "
                                 f"{self.timezone} moves them by {_amount(odd[0])} between "
                                 f"{first} and {last}, so its hours after the change would not start on the hour "
                                 "(Dagster then names them 02:30, 03:30, ... and they overlap ours); use UTC or "
                                 "granularity daily")
        return self

    def _pattern_reads_back(self) -> None:
        """Naming mode finds a period's table by reading its name back with the pattern: a pattern whose
        names do not read back (an unknown code such as %Q, glibc's %-d) found no table ever, and the
        sensor said "0 of them with data" for every day."""
        pattern = self.partitioning.pattern
        for moment in (dt.datetime(2024, 1, 2, 3), dt.datetime(2024, 12, 31, 23)):
            period = self.period(moment)
            name = period.start.strftime(pattern)
            try:
                back = self.period(dt.datetime.strptime(name, pattern))
            except (ValueError, re.error) as exc:  # re.error: a code given twice (%d ... %d)
                back, why = None, str(exc)
            else:
                why = f"it reads back as {back.start.strftime(pattern)!r}"
            if back != period:
                raise ValueError(f"partitioning: pattern {pattern!r} names the table of {period} {name!r}, which "
                                 f"cannot be read back ({why}); use %Y, %m, %d, %H and plain text (%% for a table "
                                 "name's '%')")

    @property
    def zone_years(self) -> tuple[int, int]:
        """The years the table's periods can fall in: from its start to next year (checks of the zone)."""
        return self.start_date.year, max(self.start_date.year, dt.datetime.now(dt.UTC).year + 1)

    @model_validator(mode="after")
    def _day_column_needed(self) -> TableSpec:
        if self.day_column is None and self.partitioning.mode != "naming":
            raise ValueError(f"day_column is required for partitioning mode {self.partitioning.mode!r}")
        if self.retention and self.retention.action in ("detach", "drop") and self.partitioning.mode == "column":
            raise ValueError(f"retention action {self.retention.action!r} removes a day's own partition; a table in "
                             "partitioning mode 'column' has none: use action 'delete'")
        return self

    @model_validator(mode="after")
    def _level_fits_codec(self) -> TableSpec:
        """A level the codec would reject, or silently ignore, is refused here rather than mid-run."""
        if self.compression_level is None:
            return self
        allowed = level_range(self.format, self.compression)
        where = f"{self.compression}" + (" in parquet" if self.format == "parquet" else "")
        if allowed is None:
            raise ValueError(f"compression_level: {where} takes no level; remove compression_level")
        low, high = allowed
        if not low <= self.compression_level <= high:
            raise ValueError(f"compression_level: {self.compression_level} is out of range for {where} "
                             f"({low}..{high})")
        return self

    def period(self, value: Period | dt.date | str) -> Period:
        """The table's period a partition key (or a date, or a period) names: the one conversion."""
        return as_period(self.granularity, self.timezone, value)

    @property
    def first_period(self) -> Period:
        """The table's first partition: the hour, day or month that starts at local ``start_date`` (an hourly
        table's first real hour of that day, as Dagster starts it, where the clocks skip midnight)."""
        return period_starting_on(self.granularity, self.timezone, self.start_date)

    def child_table(self, day: Period | dt.date | str) -> str | None:
        """Naming mode: the table that holds the period (named by its local start)."""
        if self.partitioning.mode != "naming":
            return None
        return self.period(day).start.strftime(self.partitioning.pattern)

    def day_relation(self, day: Period | dt.date | str) -> str:
        """The relation that holds the period as ``schema.name`` text (not quoted): naming mode's own day table,
        else the configured table. What a message names for the day and a restore resolves (one spelling)."""
        child = self.child_table(day)
        return f"{self.schema_name}.{child}" if child is not None else self.name

    @field_validator("compression")
    @classmethod
    def _codec_fits_format(cls, value: str, info: ValidationInfo) -> str:
        if value == "snappy" and info.data.get("format", "jsonl") != "parquet":
            raise ValueError("'snappy' is only for parquet; use zstd, gzip, lz4 or none")
        return value

    @property
    def schema_name(self) -> str:
        return self.name.partition(".")[0]

    @property
    def table_name(self) -> str:
        return self.name.partition(".")[2]

    @property
    def asset_path(self) -> tuple[str, str]:
        """(schema, table) as Dagster names, for the asset key and the job name."""
        return dagster_name(self.schema_name), dagster_name(self.table_name)

    @property
    def key_prefix(self) -> tuple[str, ...]:
        """The configuration's ``asset_key_prefix``, put before every asset key of this table (set by
        :class:`ArchiveConfig`, which owns the setting: a table alone has none)."""
        return self._key_prefix

    _key_prefix: tuple[str, ...] = PrivateAttr(default=())

    @property
    def sibling_patterns(self) -> tuple[str, ...]:
        """The naming patterns of the configuration's other naming-mode tables of this schema (set by
        :class:`ArchiveConfig`): their day tables are theirs, never a misspelling of this table's pattern."""
        return self._sibling_patterns

    _sibling_patterns: tuple[str, ...] = PrivateAttr(default=())

    @property
    def sibling_tables(self) -> tuple[str, ...]:
        """The configuration's other tables of this schema, as ``schema.table`` (set by :class:`ArchiveConfig`):
        their partitions are theirs, never a misspelling of this table's naming pattern."""
        return self._sibling_tables

    _sibling_tables: tuple[str, ...] = PrivateAttr(default=())


class RetrySettings(_Strict):
    max_retries: Count = Field(default=3, ge=0, le=20)
    delay_seconds: Number = Field(default=30, ge=0, le=MAX_RETRY_DELAY_SECONDS, allow_inf_nan=False,
                                  description="seconds before the first retry (at most a day)")
    backoff: Literal["exponential", "linear"] = "exponential"

    @model_validator(mode="after")
    def _longest_wait(self) -> RetrySettings:
        """The last retry waits delay x 2^(retries-1) (exponential) or delay x retries: 30 s doubled 19
        times is half a year, a run nobody would wait for; refused with the numbers that lead to it."""
        factor = 2 ** (self.max_retries - 1) if self.backoff == "exponential" else self.max_retries
        longest = self.delay_seconds * factor if self.max_retries else 0
        if longest > MAX_RETRY_WAIT_SECONDS:
            raise ValueError(f"the last of {self.max_retries} retries would wait {longest / 86_400:,.1f} days "
                             f"(delay_seconds {self.delay_seconds:g}, backoff {self.backoff}); at most "
                             f"{MAX_RETRY_WAIT_SECONDS / 86_400:g} days: lower max_retries or delay_seconds, or use "
                             "backoff linear")
        return self


class ScheduleSettings(_Strict):
    hour: Count = Field(default=1, ge=0, le=23, description="UTC hour at which the day that just ended is archived")
    minute: Count = Field(default=0, ge=0, le=59)
    freshness_hours: Count = Field(default=3, ge=1, le=23, description="the day that just ended is expected to be "
                                 "archived this many hours after hour:minute (past midnight: the next day); later, the "
                                 "asset shows as overdue")
    running: bool = Field(default=False, description="start the schedule as soon as the daemon loads it")


class SensorSettings(_Strict):
    interval_seconds: Count = Field(default=300, ge=30, le=MAX_SENSOR_INTERVAL_SECONDS, description="seconds "
                                    "between ticks (at most a week; beyond 2147483647 the UI's GraphQL API failed "
                                    "on every query that lists the sensor)")
    lookback_days: Count = Field(default=7, ge=1, le=366, description="column mode: how many recent days each tick "
                                "probes for rows (declarative and naming tables: every day, from the catalog)")
    max_runs_per_tick: Count = Field(default=50, ge=1)
    running: bool = Field(default=False, description="start the sensor as soon as the daemon loads it")


class BackfillSettings(_Strict):
    """How a backfill of many days is cut into runs: one process start per run, not per day."""

    max_days_per_run: Count = Field(default=50, ge=1, le=1000, description="days of one table archived by one "
                                  "backfill run (1: one run per day, the tags and concurrency of single-day runs)")


class SourceSettings(_Strict):
    """Limits set on every extraction session, so an archive never holds locks or the server too long."""

    statement_timeout_ms: Count = Field(default=0, ge=0, description="per statement (one COPY is one); 0 = none")
    lock_timeout_ms: Count = Field(default=30_000, ge=0, description="waiting for a lock; 0 = forever")
    idle_in_transaction_timeout_ms: Count = Field(default=600_000, ge=0)

    @field_validator("statement_timeout_ms", "lock_timeout_ms", "idle_in_transaction_timeout_ms")
    @classmethod
    def _fits_postgresql(cls, value: int) -> int:
        """PostgreSQL refuses a larger timeout when the session sets it: every run would fail at its start."""
        if value > MAX_PG_TIMEOUT_MS:
            raise ValueError(f"{value} ms is more than PostgreSQL's largest timeout, {MAX_PG_TIMEOUT_MS} ms (about "
                             "24.8 days); write a smaller one, or 0 for none")
        return value


def _key_parts(value: object) -> object:
    """``asset_key_prefix`` as Dagster name parts: ``a/b`` or ``[a, b]``. Each part becomes part of op names
    too (``a__archive__public__events``), so it keeps to the letters, digits and ``_`` Dagster allows there."""
    parts = value.split("/") if isinstance(value, str) else value
    if not isinstance(parts, list | tuple):
        return parts  # pydantic names the type it expected
    for part in parts:
        if not isinstance(part, str) or not re.fullmatch(r"[A-Za-z0-9_]+", part):
            raise ValueError(f"{_brief_repr(part)} cannot be part of a Dagster asset key: use letters, digits and '_' "
                             "(e.g. asset_key_prefix: [warehouse_eu])")
    return tuple(parts)


class ArchiveConfig(_Strict):
    """The whole configuration. ``origin`` says where it came from (a file, a component's attributes),
    for messages about it."""

    source: SourceSettings = SourceSettings()
    retry: RetrySettings = RetrySettings()
    schedule: ScheduleSettings = ScheduleSettings()
    sensor: SensorSettings = SensorSettings()
    backfill: BackfillSettings = BackfillSettings()
    asset_key_prefix: Annotated[tuple[str, ...], BeforeValidator(_key_parts)] = Field(
        default=(), description="put before every asset key (a list, or one string split at '/'): two code "
        "locations archiving tables of the same name from two databases into one Dagster deployment")
    tables: list[TableSpec] = Field(min_length=1)
    _origin: str = PrivateAttr(default="")

    @model_validator(mode="after")
    def _prefix_tables(self) -> ArchiveConfig:
        for spec in self.tables:
            spec._key_prefix = self.asset_key_prefix
            spec._sibling_patterns = tuple(
                other.partitioning.pattern for other in self.tables if other is not spec
                and other.partitioning.mode == "naming" and other.schema_name == spec.schema_name
                and other.partitioning.pattern)
            spec._sibling_tables = tuple(other.name for other in self.tables
                                         if other is not spec and other.schema_name == spec.schema_name)
        return self

    @property
    def origin(self) -> str:
        return self._origin or str(config_path())

    @model_validator(mode="after")
    def _unique(self) -> ArchiveConfig:
        seen: dict[tuple[str, str], str] = {}
        labels: dict[str, str] = {}
        ops: dict[str, str] = {}
        listed: dict[str, int] = {}
        for position, spec in enumerate(self.tables, start=1):
            if spec.name in listed:
                raise ValueError(f"table {spec.name!r} is listed twice (entries {listed[spec.name]} and {position} of "
                                 "tables): keep one entry per table")
            listed[spec.name] = position
            if spec.asset_path in seen:
                raise ValueError(f"tables {seen[spec.asset_path]!r} and {spec.name!r} map to the same asset name "
                                 f"{'/'.join(spec.asset_path)!r} (Dagster names keep lower-case letters, digits and "
                                 "'_'); rename one of them in the database, or archive it from a second code "
                                 "location with its own asset_key_prefix")
            seen[spec.asset_path] = spec.name
            # Jobs, schedules and ops are named from schema and table joined by "_": a_b.c and a.b_c would
            # share the job Archive_a_b_c and show as one in the UI.
            label = "_".join(spec.asset_path)
            if label in labels:
                raise ValueError(f"tables {labels[label]!r} and {spec.name!r} would share the job name "
                                 f"'Archive_{label}'; rename one of them in the database or archive it from a "
                                 "second code location")
            labels[label] = spec.name
            # Ops (and their checks' ops) are named from schema and table joined by "__": a__b.c and a.b__c
            # would share the op archive__a__b__c, which Dagster's asset job cannot hold twice.
            op = "__".join(spec.asset_path)
            if op in ops:
                raise ValueError(f"tables {ops[op]!r} and {spec.name!r} would share the op name 'archive__{op}'; "
                                 "rename one of them in the database or archive it from a second code location")
            ops[op] = spec.name
        rows = [(s.name, s.key_template, s.schema_name, s.table_name, s.format, s.compression, s.granularity,
                 s.timezone) for s in self.tables]
        collisions = key_collisions(rows) or extension_twins(rows)
        if collisions:
            raise ValueError("; ".join(collisions))
        return self


def _model_at(loc: list) -> type[BaseModel] | None:
    """The settings model that holds the last element of ``loc`` (for suggesting a known name)."""
    model: type[BaseModel] | None = ArchiveConfig
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        args = getattr(annotation, "__args__", ()) or (annotation,)
        model = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return model


# What a setting's name looks like: another file's line read as a key (a password file's "user:hash:...:") is
# not quoted into the error, which ends up in logs.
_SETTING_LIKE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,47}")


def _unknown(loc: list) -> str:
    model = _model_at(loc)
    known = sorted(model.model_fields) if model else []
    close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else (f"; known settings: {', '.join(known)}" if known else "")
    return f"unknown setting{hint}"


def _nearest_setting(loc: list) -> str | None:
    """The known setting a key that is no setting's name was meant to be, where it is plainly one written with
    a space, an accent, another case or white space around it (``day column``, ``dáy_column``); else None."""
    model = _model_at(loc)
    key = str(loc[-1])
    if model is None or len(key) > 64:
        return None
    plain = "".join(c for c in unicodedata.normalize("NFKD", key) if not unicodedata.combining(c))
    plain = re.sub(r"[\s-]+", "_", plain.strip()).lower()
    close = difflib.get_close_matches(plain, sorted(model.model_fields), n=1, cutoff=0.8)
    return close[0] if close else None


def _describe(error: ValidationError, raw: dict) -> str:
    lines = []
    for item in error.errors():
        loc = list(item["loc"])
        where = ".".join(str(p) for p in loc) or "(top level)"
        if len(loc) >= 2 and loc[0] == "tables" and isinstance(loc[1], int):
            tables = raw.get("tables") or []
            entry = tables[loc[1]] if loc[1] < len(tables) and isinstance(tables[loc[1]], dict) else {}
            setting = ".".join(str(p) for p in loc[2:])
            message = item["msg"].removeprefix("Value error, ")
            if not setting and ": " in message and message.split(": ", 1)[0] in TableSpec.model_fields:
                setting, message = message.split(": ", 1)  # a whole-table rule about one setting
            label = _brief_repr(entry.get("name", f"#{loc[1] + 1}"))
            where = f"table {label}" + (f", setting {setting!r}" if setting else "")
        else:
            message = item["msg"].removeprefix("Value error, ")
            if loc:
                where = f"setting {where!r}"
        if item["type"] == "extra_forbidden":
            message = _unknown(loc)
            near = _nearest_setting(loc)
            if near is not None and not _SETTING_LIKE.fullmatch(str(loc[-1])):  # a typo: a space, an accent
                message = f"unknown setting {str(loc[-1])!r}; did you mean {near!r}?"
            elif not _SETTING_LIKE.fullmatch(str(loc[-1])):  # a file that is not a table list: never quote its lines
                shown = ".".join(str(p) for p in loc[:-1])
                where = (where.rsplit(", setting ", 1)[0] + f", a setting of {len(str(loc[-1]))} characters"
                         if where.startswith("table ") else
                         f"a setting of {len(str(loc[-1]))} characters" + (f" in {shown!r}" if shown else ""))
                message = "unknown setting (not shown: is this the YAML file of the tables?)"
        elif item["type"].startswith("date_"):
            message = f"{message} (got {_brief_repr(item.get('input'))}; write a real day as YYYY-MM-DD)"
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


class _PlainSafeLoader(yaml.SafeLoader):
    """YAML without its own date parsing: ``2024-13-01`` reaches validation as text, so the error names
    the table and the setting instead of escaping as a bare ``month must be in 1..12``."""


_PlainSafeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _misread_number(node: yaml.Node) -> str | None:
    """Why a plain YAML number would not mean what it shows: YAML 1.1 (PyYAML, and Dagster's loader) reads
    ``060`` as the octal 48 and ``1:30`` as the base-60 90, so ``keep_days: 060`` removed days after 48 days."""
    if not isinstance(node, yaml.ScalarNode) or node.style is not None or node.tag not in (
            "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):
        return None
    text = node.value.replace("_", "")
    if ":" in text:
        value = yaml.load(node.value, Loader=yaml.SafeLoader)  # noqa: S506 - the plain SafeLoader
        return (f"{node.value} reads as the base-60 number {value:g} in YAML 1.1; write the number you mean, or "
                f"quote it ('{node.value}') for text")
    digits = text.lstrip("+-")
    if len(digits) > 1 and digits.startswith("0") and digits.isdecimal() and int(digits, 8) != int(digits):
        return (f"{node.value} reads as the octal number {int(digits, 8)} in YAML 1.1; write it without the "
                f"leading zero ({int(digits)}), or quote it ('{node.value}') for text")
    return None


# Settings that are text (names, a column, a zone): a plain YAML 1.1 scalar there may read as a boolean or a number
_TEXT_SETTINGS = frozenset({"name", "day_column", "timezone", "pool", "key_template", "format", "compression",
                            "granularity", "asset_key_prefix", "partitioning.mode", "partitioning.pattern",
                            "retention.action"})


_NOT_TEXT_TAGS = ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
                  "tag:yaml.org,2002:null")


def _not_text(node: yaml.Node, seen: set[int] | None = None) -> str | None:
    """Why a text setting (or an item of a list of them) is not the text it shows: YAML 1.1 reads a plain ``no``,
    ``off`` or ``on`` as a boolean and ``2024.10`` as the number 2024.1, so the error named another value. A list
    is walked once per node (``seen``): its aliases are references to one node, which nested lists of them repeat
    a billion-fold."""
    if isinstance(node, yaml.SequenceNode):
        seen = set() if seen is None else seen
        if id(node) in seen:
            return None
        seen.add(id(node))
        return next((why for item in node.value if (why := _not_text(item, seen))), None)
    if isinstance(node, yaml.MappingNode) and node.flow_style:  # key_template: {period} is the mapping {period: null}
        text = _written(node)
        return f"{text} reads as a YAML mapping (a plain value cannot start with '{{'), not as text: quote it ({_quoted(text)})"
    if not isinstance(node, yaml.ScalarNode) or node.style is not None or node.tag not in (
            "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):
        return None
    value = yaml.load(node.value, Loader=yaml.SafeLoader)  # noqa: S506 - the plain SafeLoader
    kind = "the boolean" if isinstance(value, bool) else "the number"
    return f"{node.value} reads as {kind} {value!r} in YAML 1.1, not as text: quote it ('{node.value}')"


def _written(node: yaml.Node) -> str:
    """``node`` as the file spells it (where the reader kept the file's text), for a message that quotes it."""
    buffer = getattr(node.start_mark, "buffer", None)
    if not buffer:
        return "{...}"
    return buffer[node.start_mark.pointer:node.end_mark.pointer]


def _quoted(text: str) -> str:
    """``text`` as a single-quoted YAML scalar (a quote inside doubled), which reads back as ``text`` exactly."""
    return "'" + text.replace("'", "''") + "'"


# A text setting whose plain value starts with '{' (a key template written without the README's quotes): YAML reads
# a flow mapping there, which fails the parse or reads as a mapping.
_BRACED_LINE = re.compile(r"^(?P<lead>[ \t]*(?:-[ \t]+)?(?P<key>[A-Za-z_]+):[ \t]+)(?P<value>\{.*?)"
                          r"(?P<comment>[ \t]+#.*)?[ \t]*$")  # (a '#' after a blank starts a comment: not the value)


def _braced_text_settings(data: bytes) -> list[str]:
    """Why a file that is no valid YAML fails, where the cause is a text setting written unquoted with a '{' first
    (PyYAML's own message names neither the table nor the setting): each such setting of each table, found by
    quoting those values and reading the file again. [] where that does not explain the failure."""
    try:
        lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        return []
    settings = {name.rpartition(".")[2] for name in _TEXT_SETTINGS}
    braced: dict[int, tuple[str, str]] = {}
    for number, line in enumerate(lines):
        match = _BRACED_LINE.match(line.rstrip("\r"))
        if match and match["key"] in settings:
            braced[number] = (match["key"], match["value"])
            lines[number] = match["lead"] + _quoted(match["value"]) + (match["comment"] or "")
    if not braced:
        return []
    try:
        repaired = yaml.compose("\n".join(lines), Loader=_PlainSafeLoader)  # noqa: S506 - a SafeLoader subclass
    except (yaml.YAMLError, ValueError, RecursionError):
        return []
    owners = _tables_by_line(repaired)
    return [f"{'table ' + _brief_repr(owners[n]) + ', ' if n in owners else ''}setting {key!r} (line {n + 1}): "
            f"{value} reads as the start of a YAML mapping (a plain value cannot start with '{{'), not as text: "
            f"quote it ({_quoted(value)})" for n, (key, value) in braced.items()]


def _tables_by_line(node: yaml.Node | None) -> dict[int, str]:
    """The name of the table each line of a table's entry belongs to (0-based lines), in a configuration's node."""
    owners: dict[int, str] = {}
    tables = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == "tables"), None) \
        if isinstance(node, yaml.MappingNode) else None
    for entry in tables.value if isinstance(tables, yaml.SequenceNode) else []:
        if isinstance(entry, yaml.MappingNode):
            name = next((v.value for k, v in entry.value if isinstance(k, yaml.ScalarNode) and k.value == "name"
                         and isinstance(v, yaml.ScalarNode)), "(unnamed)")
            owners.update(dict.fromkeys(range(entry.start_mark.line, entry.end_mark.line + 1), name))
    return owners


def _misleading_settings(node: yaml.Node, path: tuple[str, ...] = (), table: str | None = None,
                         seen: set[int] | None = None) -> list[str]:
    """What a YAML reader would take otherwise than a person reads it, each as "table 'x', setting 'y':
    why; to fix": a setting given twice in one mapping (a merge conflict, a copy-paste: PyYAML keeps the
    last value silently, so a table would archive from a start nobody reviewed; keys merged in with
    ``<<`` may be overridden, as YAML means them to be), and a number YAML 1.1 reads as octal or base 60."""
    seen = set() if seen is None else seen
    if id(node) in seen:  # an alias of a node already walked
        return []
    seen.add(id(node))
    found: list[str] = []
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            found += _misleading_settings(item, path, table, seen)
    elif isinstance(node, yaml.MappingNode):
        if path == ("tables",):  # a table's entry: settings are named relative to it
            table = next((v.value for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == "name"
                          and isinstance(v, yaml.ScalarNode)), "(unnamed)")
            path = ()
        lines: dict[str, int] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            if key.style is None and key.tag in _NOT_TEXT_TAGS:  # on:, yes:, 1:, null: read as no text
                where = f"table {_brief_repr(table)}" if table else "the configuration"
                why = _not_text(key) or f"{key.value} reads as null in YAML 1.1, not as text: quote it ('{key.value}')"
                found.append(f"{where}, line {key.start_mark.line + 1}: the setting {why}, or remove it if it is no "
                             "setting")
                continue
            setting = ".".join((*path, key.value))
            where = f"table {_brief_repr(table)}, setting {setting!r}" if table else f"setting {setting!r}"
            line = key.start_mark.line + 1
            if key.value in lines:
                found.append(f"{where} is given twice (lines {lines[key.value]} and {line}); YAML would keep the "
                             "last value silently: keep the one you mean and remove the other")
            lines.setdefault(key.value, line)
            misread = _misread_number(value) or (_not_text(value) if setting in _TEXT_SETTINGS else None)
            if misread:
                found.append(f"{where} (line {value.start_mark.line + 1}): {misread}")
            found += _misleading_settings(value, (*path, key.value), table, seen)
    return found


def parse_config(raw: object, source: str = "<config>") -> ArchiveConfig:
    """Validate an already-parsed configuration; errors name ``source``, the table and the setting."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with a 'tables' list")
    try:
        config = ArchiveConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid archive configuration in {source}:\n{_describe(exc, raw)}") from None
    config._origin = source
    return config


def config_path() -> Path:
    """The tables' YAML file: ``$ARCHIVE_PIPELINE_CONFIG`` (white space around it taken off, as every ARCHIVE_*
    variable's: a trailing newline from a secret or an env file named a file that is not there), else the
    default."""
    return Path((os.environ.get(CONFIG_ENV_VAR) or "").strip() or DEFAULT_CONFIG_PATH)


def load_config(path: str | os.PathLike | None = None, given_by: str | None = None) -> ArchiveConfig:
    """Read and validate the YAML file (``$ARCHIVE_PIPELINE_CONFIG``, default ./archive_tables.yaml).
    ``given_by``: what named ``path`` (the command line's ``--config``), for the message if it is not there."""
    file = Path(path) if path else config_path()
    try:
        # bytes: YAML is UTF-8 (or UTF-16 with a BOM) whatever the locale; read as text in a C or Latin-1
        # locale, a non-ASCII table name failed the load or became another name
        data = file.read_bytes()
        node = yaml.compose(data, Loader=_PlainSafeLoader)  # noqa: S506 - a SafeLoader subclass
        raw = yaml.load(data, Loader=_PlainSafeLoader)  # noqa: S506 - a SafeLoader subclass
    except FileNotFoundError:
        # a path given (the factory's load_config(path), a component's config_path): $ARCHIVE_PIPELINE_CONFIG
        # is not read, so setting it would not help
        if path and given_by:
            hint = f"{given_by} names it: point it at the YAML file of the tables"
        elif path:
            hint = "check the path given (a component's config_path is relative to its defs.yaml)"
        elif os.environ.get(CONFIG_ENV_VAR):
            hint = f"${CONFIG_ENV_VAR} names it: point it at the YAML file of the tables"
        else:
            hint = f"set ${CONFIG_ENV_VAR} to the YAML file of the tables, or run where {DEFAULT_CONFIG_PATH} is"
        shown = file if file.is_absolute() else f"{file} ({file.absolute()}: relative to the working directory)"
        # (redacted: a DSN set as the path by mistake, swapped variables, would be quoted with its password)
        raise ConfigError(redact(f"archive configuration {shown} not found ({hint})")) from None
    except OSError as exc:  # a directory, no permission: the path is there but is not a readable file
        named = (f"point {given_by} at" if path and given_by else "give the path of" if path
                 else f"set ${CONFIG_ENV_VAR} to")  # ($ARCHIVE_PIPELINE_CONFIG is not read where a path is given)
        raise ConfigError(redact(f"archive configuration {file} cannot be read ({exc.strerror}); {named} the YAML "
                                 "file of the tables, readable by the user the code location runs as")) from None
    except RecursionError:  # PyYAML composes one level a call: a value nested hundreds deep
        raise ConfigError(f"{file} is not a configuration to read: a value in it is nested too deeply (hundreds "
                          "of levels of lists or mappings: a generated file gone wrong?)") from None
    except (yaml.YAMLError, ValueError) as exc:
        if braced := _braced_text_settings(data):
            raise ConfigError(f"invalid archive configuration in {file}:\n" + "\n".join(f"  {b}" for b in braced)
                              ) from None
        raise ConfigError(_yaml_problem(exc, file)) from None
    refuse_repeated_settings(node, str(file))
    return parse_config(raw, str(file))


def _yaml_problem(exc: Exception, file: Path) -> str:
    """PyYAML's reason a file is not YAML, its marks naming the file (read as bytes, PyYAML names it "<byte
    string>") by line and column only (PyYAML quotes the line, which may hold a DSN pasted there); for a tab,
    which YAML refuses as indentation (an editor's habit), what to do: PyYAML only says it "cannot start any
    token"."""
    marks = [m for m in (getattr(exc, "context_mark", None), getattr(exc, "problem_mark", None)) if m is not None]
    at = getattr(exc, "problem_mark", None)
    tab = at if at is not None and at.buffer and at.buffer[at.pointer:at.pointer + 1] == "\t" else None
    indented = [n + 1 for n, line in enumerate(tab.buffer.split("\n")) if re.match(r"[ \t]*\t", line)] if tab else []
    for mark in marks:
        mark.name, mark.buffer = str(file), None
    said = f"{file} is not valid YAML: {exc}"
    if tab is None:
        return said
    others = [n for n in indented if n != tab.line + 1]
    also = f" (and those indenting line(s) {', '.join(map(str, others[:10]))}{' ...' if len(others) > 10 else ''})" \
        if others else ""
    return (f"{said}\nYAML does not allow tabs for indentation (nor after a key's colon): indent with spaces; replace "
            f"the tab at line {tab.line + 1}, column {tab.column + 1} of {file} with spaces{also}")


def refuse_repeated_settings(node: yaml.Node | None, source: str) -> None:
    """Fail, naming ``source``, each table, setting and line, when ``node`` (a configuration, or a
    component's attributes in its defs.yaml) gives a setting twice in one mapping, or a number that
    YAML 1.1 reads otherwise than it shows (see :func:`_misleading_settings`); first, when its aliases
    make it far larger than the file (see :func:`refuse_alias_expansion`)."""
    if node is not None:
        refuse_alias_expansion(node, source)
    found = _misleading_settings(node) if node is not None else []
    if found:
        raise ConfigError(f"invalid archive configuration in {source}:\n" + "\n".join(f"  {f}" for f in found))


def refuse_alias_expansion(node: yaml.Node, source: str) -> None:
    """Fail, naming ``source``, when YAML aliases make ``node``'s value far larger than the file that writes it.
    PyYAML composes (and loads) an alias as a reference to its anchor's node, which costs nothing, but what reads
    the loaded value (these checks, the validation, a message quoting a value) walks it expanded: ten aliases of
    ten aliases, nine levels deep ("billion laughs"), are 10**9 strings from under a kilobyte, and the load never
    ended or ran out of memory; an anchor used inside itself (``&a [*a]``) never ends at all. Counted once per node,
    so the count costs what the file's own size does."""
    sizes: dict[int, int] = {}
    expanded = _expanded_size(node, sizes, set())
    if expanded == float("inf"):
        raise ConfigError(f"invalid archive configuration in {source}: a value contains itself (an alias inside its "
                          "own anchor, such as &a [*a]), which has no end; write the value out")
    if expanded > len(sizes) + MAX_ALIAS_NODES:
        raise ConfigError(f"invalid archive configuration in {source}: its aliases expand its {len(sizes):,} values "
                          f"to {expanded:,} (more than {MAX_ALIAS_NODES:,} added: aliases of lists of aliases, a "
                          "'billion laughs'?); a table list needs aliases only for shared settings: write the values "
                          "out")


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int]) -> float:
    """How many nodes ``node`` is with every alias in it written out (infinite for one inside its own anchor);
    each node is counted once and remembered in ``sizes`` by identity, ``open_nodes`` being those being counted."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_nodes:
        return float("inf")
    open_nodes.add(id(node))
    items = node.value if isinstance(node, yaml.SequenceNode) else \
        [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else []
    size: float = 1
    for item in items:  # (a loop, not sum() of a generator: one frame a level, fewer than the composer's)
        size += _expanded_size(item, sizes, open_nodes)
    open_nodes.discard(id(node))
    sizes[id(node)] = size
    return size


def compose_yaml(text: str | bytes) -> list[yaml.Node]:
    """The documents of ``text`` as YAML nodes (with their lines), dates left as text."""
    return list(yaml.compose_all(text, Loader=_PlainSafeLoader))  # noqa: S506 - a SafeLoader subclass


def _amount(change: dt.timedelta) -> str:
    """A clock change in words: "30 minutes", "28 seconds", "19 minutes 32 seconds"."""
    minutes, seconds = divmod(int(change.total_seconds()), 60)
    parts = [f"{minutes} minute{'s' if minutes != 1 else ''}"] if minutes else []
    parts += [f"{seconds} second{'s' if seconds != 1 else ''}"] if seconds else []
    return " ".join(parts) or "less than a second"
