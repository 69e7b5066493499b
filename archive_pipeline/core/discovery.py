"""Which periods (hours, days, months) of a table exist in PostgreSQL, read from the catalog or probed.

- declarative: the bounds of the parent's children (``pg_get_expr(relpartbound)``, interpreted by
  the server in the table's time zone, never guessed from names; a ``date`` or ``timestamp`` key's as the
  wall-clock labels they are, which a zone's skipped times keep apart, as is a key converting a ``timestamptz``
  by the table's own zone, whose rows are the instants so labelled): each child yields every period it
  holds rows of, whether it covers whole periods, lies inside one (days of a monthly table) or straddles
  a boundary (noon to noon). The archive reads a period's rows from the parent by the day column, so a
  period split between children is still archived whole; only retention's ``drop`` and ``detach`` need
  a child that is the period exactly (they refuse others, naming them);
- naming: the tables of the schema whose name matches the pattern (read as the period's local start);
- column: one ``EXISTS`` probe per candidate period (an index or partition prunes each).

Every function takes and returns :class:`~archive_pipeline.core.periods.Period` values (dates are
accepted as the table's days, for callers that still hold them).
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as dt
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

import psycopg
from psycopg import sql

from archive_pipeline.core.config import TableSpec, longest_name
from archive_pipeline.core.errors import SETTING_MISFITS, TABLE_MISSING, SourceError, sql_name
from archive_pipeline.core.periods import (MICROSECOND, Period, period_containing, periods_of_labels,
                                           periods_overlapping)
from archive_pipeline.core.session_settings import apply_settings
from archive_pipeline.core.source import (SNAPSHOT_SETTINGS, SourceTable, classified, day_filter,
                                          describe_relation, describe_table, lookalike_hint, pending_detach_error,
                                          relation_name, stored_name_problem, unquoted_hint)

# pg_get_expr(bound, 0): a bound holds constants only, and given the child's oid PostgreSQL (15 here) locks
# the child to print it, so one partition under a migration's or VACUUM FULL's lock stopped every day's discovery.
# Both sides of a FROM (...) TO (...) bound are read in the same query (a DEFAULT, LIST or HASH bound has none:
# ``ranged`` is false), by position rather than a regular expression (a third of the time for 1,095 children).
# MINVALUE / MAXVALUE and the infinities (a catch-all child FROM ('-infinity') or TO ('infinity')) are
# unbounded sides (NULL): Python's datetime cannot hold an infinity, so reading one failed every day. So is a
# bound the period maths cannot hold (Python's years are 1..9999, and a zone moves a day either way): a
# "forever" child TO ('10000-01-01') failed every day and every discovery with a DataError.
_SIDE_VALUE = ("CASE WHEN {t} IN ('MINVALUE', 'MAXVALUE') THEN NULL "
               # a year of five digits or more (a date key's 5874897-12-31, a timestamp's 294276 in a zone west of
               # UTC) is past what timestamptz holds: unbounded, as the kept side below would make it anyway
               "WHEN pg_catalog.btrim({t}, '''') OPERATOR(pg_catalog.~) '^[0-9]{{5,}}' THEN NULL "
               "ELSE pg_catalog.btrim({t}, '''')::timestamptz END")
_SIDE_KEPT = "CASE WHEN {v} >= '0001-01-03 00:00+00' AND {v} < '9999-12-30 00:00+00' THEN {v} END"
# A kept side as the label it is (a wall-clock key's: the server reads a label its zone skipped as an instant after
# the gap, so a partition of skipped labels is no instants at all; see ChildRange.labels)
_SIDE_LABEL = "CASE WHEN ({kept}) IS NOT NULL THEN pg_catalog.btrim({t}, '''')::timestamp END"
_CHILDREN_QUERY = """
SELECT relname, bound, nspname, {lo}, {hi}, ranged, {lo_label}, {hi_label}
FROM (SELECT relname, bound, nspname, ranged, lo_text, hi_text, {lo_value} AS lo, {hi_value} AS hi
      FROM (SELECT relname, bound, nspname, ranged,
                   CASE WHEN ranged THEN pg_catalog.substr(pg_catalog.split_part(bound, ') TO (', 1), 18) END
                       AS lo_text,
                   CASE WHEN ranged THEN pg_catalog.rtrim(pg_catalog.split_part(bound, ') TO (', 2), ')') END AS hi_text
            FROM (SELECT c.relname, pg_catalog.pg_get_expr(c.relpartbound, 0) AS bound, cn.nspname
                  FROM pg_catalog.pg_inherits i
                  JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
                  JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace
                  JOIN pg_catalog.pg_class p ON p.oid = i.inhparent
                  JOIN pg_catalog.pg_namespace n ON n.oid = p.relnamespace
                  WHERE n.nspname = %s AND p.relname = %s AND p.relkind = 'p'
                  OFFSET 0) AS children  -- OFFSET 0 (here and below): each bound printed and cut once, not per use
            CROSS JOIN LATERAL (SELECT bound LIKE 'FOR VALUES FROM (%%) TO (%%)') AS r(ranged)
            OFFSET 0) AS sides
      OFFSET 0) AS bounds
ORDER BY relname
""".format(lo=_SIDE_KEPT.format(v="lo"), hi=_SIDE_KEPT.format(v="hi"),
           lo_value=_SIDE_VALUE.format(t="lo_text"), hi_value=_SIDE_VALUE.format(t="hi_text"),
           lo_label=_SIDE_LABEL.format(kept=_SIDE_KEPT.format(v="lo"), t="lo_text"),
           hi_label=_SIDE_LABEL.format(kept=_SIDE_KEPT.format(v="hi"), t="hi_text"))

# PostgreSQL's own operators and functions (a user's >= on the path must not decide which days exist)
SEARCH_PATH = SNAPSHOT_SETTINGS["search_path"]


@dataclass(frozen=True)
class ChildRange:
    name: str
    start: dt.datetime | None  # None: MINVALUE; else aware, in UTC
    end: dt.datetime | None  # None: MAXVALUE
    # The child's own schema: a partition may live in another schema than its parent (CREATE TABLE
    # old.events_20240310 PARTITION OF public.events ...); "" for the parent's.
    schema: str = ""
    # The bound as the server prints it (``FOR VALUES FROM (...) TO (...)``), for a restore to re-create
    # the child after it was dropped.
    bound: str = ""
    # The key is wall-clock time (``timestamp`` or ``date``): the bounds are labels in the table's zone, which
    # the server read as instants; where a label is ambiguous (a fall-back night) the instant is one of two.
    wall_clock: bool = False
    # The key is an expression of the day column (((at AT TIME ZONE 'UTC')::date)): its bounds are in a zone of
    # its own, which need not be the table's (see catalog_days).
    expression: bool = False
    # The rows' values are instants (a timestamptz day column) labelled by the key's conversion to the table's wall
    # clock: each instant has one label, so a fall-back night's first repeated hour has its own labels too, and no
    # row has a label a spring-forward night skips.
    labelled_instants: bool = False
    # A wall-clock child's bounds as the labels the catalog prints (naive; None for other children, and for one
    # unbounded on both sides; a side unbounded is None in it). Its rows are labels (or instants labelled), so the periods it holds are the ones whose
    # labels its labels overlap (Period.label_bounds: the wall-clock bounds the archive reads, or the labels of the
    # period's instants), not the ones its instants overlap: the server reads a label the zone skipped as an instant
    # after the gap, so a partition of Pacific/Apia's 2011-12-30 or of Berlin's 02:00-03:00 on 2024-03-31 was no
    # instants at all (both ends one instant) and held no period, while its rows are the period before the gap's;
    # one of Africa/Cairo's 2024-04-26, whose midnight the clocks skip, started at 01:00, and one of America/Havana's
    # 2024-11-03 at the second of its two midnights. Keyed by instants labelled ((at AT TIME ZONE 'Antarctica/Troll')
    # of a Troll table), a partition of labels the zone skipped (01:00-02:00 there on 2024-03-31) holds no period,
    # where read as instants it was the 03:00 hour's.
    labels: tuple[dt.datetime | None, dt.datetime | None] | None = None

    def relation(self, spec: TableSpec) -> tuple[str, str]:
        """(schema, name) of the child, kept apart: its schema's name may hold a dot."""
        return self.schema or spec.schema_name, self.name

    def qualified(self, spec: TableSpec) -> str:
        """The child's name for messages (see :func:`~archive_pipeline.core.source.relation_name`)."""
        return relation_name(*self.relation(spec))

    @property
    def open_ended(self) -> bool:
        """Unbounded on a side (MINVALUE, MAXVALUE, an infinity, a bound past the calendar): a catch-all for the
        rows before or after the table's other children, not any period's own partition."""
        return self.start is None or self.end is None

    @property
    def catch_all(self) -> bool:
        """Unbounded on both sides (MINVALUE to MAXVALUE, '-infinity' to 'infinity': a table just made partitioned,
        its rows attached as one child to be split later): it holds no period of its own, only rows of any, as a
        DEFAULT partition does."""
        return self._compared() is None

    def periods(self, spec: TableSpec) -> list[Period]:
        """The table's periods this child holds rows of: the ones it tiles, or the one it lies within (one open on a
        side: those of the table's, from its start_date up to now, on that side)."""
        ends = self._ends(spec.granularity, spec.timezone, _table_span(spec))
        if ends is None:
            return []
        return periods_overlapping(spec.granularity, spec.timezone, ends[0].utc_start, ends[1].utc_end)

    def _ends(self, granularity: str, timezone: str, within: tuple[Period, Period] | None = None
              ) -> tuple[Period, Period] | None:
        """The first and the last period the child holds rows of (it need not list those in between:
        a child up to 2100 or 9999 holds a million days), or None where it holds none (a catch-all unbounded on both
        sides, as a DEFAULT partition; keyed by instants labelled, one of labels the zone skipped). A side unbounded
        (MINVALUE, MAXVALUE, an infinity, a bound past the calendar: a "future" child FROM ('2024-03-11') TO
        (MAXVALUE)) holds the periods on that side as far as ``within`` (the first and the last period asked
        about) reaches; without ``within``, none are listed."""
        if self._compared() is None:
            return None
        if self.labels is not None:
            lo, hi = self.labels
            if None in self.labels and within is None:
                return None
            lo = within[0].label_bounds(self.labelled_instants)[0] if lo is None else lo
            hi = within[1].label_bounds(self.labelled_instants)[1] if hi is None else hi
            return periods_of_labels(granularity, timezone, lo, hi, self.labelled_instants) if lo < hi else None
        if (self.start is None or self.end is None) and within is None:
            return None
        start = within[0].utc_start if self.start is None else self.start
        end = within[1].utc_end if self.end is None else self.end
        if end <= start:
            return None
        return (period_containing(granularity, timezone, start),
                period_containing(granularity, timezone, end - MICROSECOND))

    def _compared(self) -> tuple[dt.datetime, dt.datetime] | None:
        """What is compared with a period's bounds (:func:`_compared_bounds`): a wall-clock child's labels, another's
        instants, a side unbounded as the calendar's end (a child open towards the future holds every period from
        its lower bound on, probed for rows as any other); None for a catch-all unbounded on both sides, which holds
        no period (as a DEFAULT partition: its days are probed through the parent where that is asked for)."""
        if self.labels is not None:
            lo, hi = self.labels
            return (dt.datetime.min if lo is None else lo), (dt.datetime.max if hi is None else hi)
        if self.start is None and self.end is None:
            return None
        return (_EARLIEST if self.start is None else self.start), (_LATEST if self.end is None else self.end)

    def holds(self, period: Period) -> bool:
        """True when the child holds rows of ``period`` (an aligned child overlaps only periods it holds)."""
        ours = self._compared()
        first, last = _compared_bounds(period, self.labels is not None, self.labelled_instants)
        return ours is not None and ours[0] < last and ours[1] > first

    def period_count(self, spec: TableSpec) -> int:
        """How many periods the child holds rows of, counted without listing them (see :meth:`periods`)."""
        ends = self._ends(spec.granularity, spec.timezone, _table_span(spec))
        if ends is None:
            return 0
        first, last = ends
        if spec.granularity == "hourly":  # hours are one hour of real time each
            return (last.utc_start - first.utc_start) // dt.timedelta(hours=1) + 1
        a, b = first.start.date(), last.start.date()
        return (b.year - a.year) * 12 + b.month - a.month + 1 if spec.granularity == "monthly" else (b - a).days + 1

    def overlaps(self, period: Period) -> bool:
        """True when the child may hold rows of ``period``: its range overlaps the period's as instants, or for a
        wall-clock child (a ``date`` or ``timestamp`` key, whose rows are labels) as labels (see ``labels``). A key
        converting instants to the table's wall clock (``labelled_instants``) is compared by the labels of the
        period's instants (a fall-back night's are one of two)."""
        if self.labels is not None:
            return self.holds(period)
        return ((self.start is None or self.start < period.utc_end)
                and (self.end is None or self.end > period.utc_start))

    def is_period(self, period: Period) -> bool:
        """True when the child holds exactly ``period`` (it can be detached or dropped as the period). A
        wall-clock child is compared by its labels (see ``labels``), not the instants the server reads them as:
        the hour before a fall-back night's repeated hour, ``FROM ('01:00') TO ('02:00')``, ends at the second
        02:00 as an instant, yet holds exactly the rows the period reads (its wall-clock bounds; see
        ``Period.wall_bounds``), while Antarctica/Troll's ``FROM ('01:00') TO ('02:00')`` on 2024-03-31, read as the
        instants of the 03:00 hour, holds none of its rows. Its labels cover the period's and reach no period of
        other labels: of instants labelled, it may cover labels no instant has (Cairo's 2024-04-26 from its skipped
        midnight); a fall-back night's two hours share their labels, and the removal's count of the partition's
        rows outside the period refuses to take the other's."""
        if self.labels is None:
            return self.start is not None and self.start == period.utc_start and self.end == period.utc_end
        if None in self.labels:  # (open on a side: more than any one period)
            return False
        bounds = period.label_bounds(self.labelled_instants)
        ends = self._ends(period.granularity, period.timezone)
        return self.labels[0] <= bounds[0] and self.labels[1] >= bounds[1] and ends is not None \
            and all(end.label_bounds(self.labelled_instants) == bounds for end in ends)


# an unbounded side of a child's instants, as compared with periods' (see ChildRange._compared)
_EARLIEST, _LATEST = dt.datetime.min.replace(tzinfo=dt.UTC), dt.datetime.max.replace(tzinfo=dt.UTC)


def _table_span(spec: TableSpec) -> tuple[Period, Period]:
    """The table's periods from its first (start_date) to the one now: how far a child open on a side reaches when
    its periods are listed (its rows past now, if any, are found by probing the periods asked about)."""
    return spec.first_period, spec.period(dt.datetime.now(dt.UTC))


def _compared_bounds(period: Period, labels: bool, instants: bool) -> tuple[dt.datetime, dt.datetime]:
    """``period``'s bounds as a child's are compared with them: its labels where the child's are labels
    (:attr:`ChildRange.labels`; the labels of its instants where the rows are instants labelled), else its
    instants."""
    return period.label_bounds(instants) if labels else (period.utc_start, period.utc_end)


@contextlib.contextmanager
def pinned_settings(conn: psycopg.Connection, **settings: str) -> Iterator[None]:
    """Run the block with these session settings (``TimeZone``, ``DateStyle``), then give the caller's
    session back the values it had: discovery runs on the sensor's, the CLI's and the archive's own
    connection, whose TimeZone (a role default, the caller's SET) must not change behind their back,
    and in whose DateStyle (``ALTER ROLE ... SET DateStyle = 'SQL, DMY'``) psycopg cannot read bounds.
    Inside a transaction the settings are transaction-local; an aborted transaction's rollback undoes
    them, so nothing is restored then, nor on a session that is gone (the error that ended it, a
    terminated backend say, is the one raised, not "the connection is closed")."""
    names = list(settings)
    local = conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    def apply(values: list[str]) -> None:
        apply_settings(conn.execute, dict(zip(names, values, strict=True)), local)

    before = conn.execute(sql.SQL("SELECT {}").format(sql.SQL(", ").join(
        sql.SQL("pg_catalog.current_setting({})").format(sql.Literal(n)) for n in names))).fetchone()
    apply(list(settings.values()))
    try:
        yield
    finally:
        if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.INERROR:
            apply(list(before))


def child_ranges(conn: psycopg.Connection, spec: TableSpec) -> list[ChildRange]:
    """The range each child partition covers, as the server interprets its bounds in the table's zone
    (a ``timestamp`` or ``date`` bound is wall-clock time there; a ``timestamptz`` bound has its offset).
    The bounds are printed and read back in DateStyle ISO, whatever the session's style."""
    with pinned_settings(conn, TimeZone=spec.timezone, DateStyle="ISO, YMD", search_path=SEARCH_PATH):
        return _child_ranges(conn, spec)


def _child_ranges(conn: psycopg.Connection, spec: TableSpec) -> list[ChildRange]:
    schema, _, name = spec.name.partition(".")
    key_type, expression = _require_day_range_key(conn, spec)  # first: another key's bounds are not timestamps
    # An expression key of a date or timestamp column giving a date or timestamp ((at::date), date_trunc('hour', at))
    # keeps the column's wall-clock labels; one of a timestamptz column is in the zone it converts by
    # (or in the table's own zone: (at AT TIME ZONE 'Europe/London') of a London table is its wall clock)
    zoned = bool(expression) and _zoned_day_column(conn, spec)
    wall_clock = key_type in _TIME_KEYS and key_type != "timestamp with time zone" and (
        not zoned or _converts_by_table_zone(conn, spec))
    rows = conn.execute(_CHILDREN_QUERY, (schema, name)).fetchall()
    if not rows and conn.execute("SELECT pg_catalog.to_regclass(%s) IS NULL",
                                 (sql.Identifier(schema, name).as_string(conn),)).fetchone()[0]:
        raise SourceError(f"table {spec.name!r} does not exist{unquoted_hint(schema, name)}", table=spec.name,
                          retryable=False,
                          cause=TABLE_MISSING,
                          remedy="check the table's name in the YAML configuration (schema.table, as the catalog "
                                 "spells it), the database in ARCHIVE_PG_DSN, and whether it was renamed or dropped")
    return [ChildRange(child, _utc(start), _utc(end), child_schema, bound, wall_clock, expression,
                       labelled_instants=wall_clock and zoned,
                       labels=(lo, hi) if wall_clock and (lo is not None or hi is not None) else None)
            for child, bound, child_schema, start, end, ranged, lo, hi in rows if ranged]  # DEFAULT, LIST, HASH: none


_EXPRESSION_SLACK = dt.timedelta(hours=26)  # more than any zone's offset from any other (UTC-12 .. UTC+14)


def _zoned_day_column(conn: psycopg.Connection, spec: TableSpec) -> bool:
    """Whether the table's day column is a timestamptz (through domains at any depth)."""
    schema, _, name = spec.name.partition(".")
    return bool(conn.execute(
        "WITH RECURSIVE t(oid) AS (SELECT a.atttypid FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c "
        "ON c.oid = a.attrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s "
        "AND c.relname = %s AND a.attname = %s AND NOT a.attisdropped UNION ALL SELECT y.typbasetype FROM t "
        "JOIN pg_catalog.pg_type y ON y.oid = t.oid WHERE y.typtype = 'd') "
        "SELECT EXISTS (SELECT FROM t WHERE t.oid = 'pg_catalog.timestamptz'::pg_catalog.regtype)",
        (schema, name, spec.day_column)).fetchone()[0])


def _converts_by_table_zone(conn: psycopg.Connection, spec: TableSpec) -> bool:
    """Whether the partition key's expression converts the day column by the table's own zone, and by no other
    (``AT TIME ZONE 'Europe/London'`` for a Europe/London table): its bounds are then wall-clock labels there."""
    schema, _, name = spec.name.partition(".")
    found = conn.execute("SELECT pg_catalog.pg_get_expr(pt.partexprs, pt.partrelid) FROM pg_catalog.pg_partitioned_table "
                         "pt WHERE pt.partrelid = pg_catalog.to_regclass(%s)",
                         (sql.Identifier(schema, name).as_string(conn),)).fetchone()
    text = (found[0] or "") if found else ""
    zones = {z.replace("''", "'") for z in re.findall(r"AT TIME ZONE '((?:[^']|'')*)'", text)
             + re.findall(r"timezone\('((?:[^']|'')*)'(?:::text)?,", text)}  # (as PostgreSQL prints timezone(z, at))
    return bool(zones) and all(_same_zone(conn, zone, spec.timezone) for zone in zones)


def _same_zone(conn: psycopg.Connection, one: str, other: str) -> bool:
    """Whether two zone names are one zone (spelled in another case, or a link: 'GB' is 'Europe/London'): the
    server takes names in any case, and its zone files of one zone are the same bytes."""
    if one.lower() == other.lower():
        return True
    named = [conn.execute("SELECT name FROM pg_catalog.pg_timezone_names "
                          "WHERE pg_catalog.lower(name) = pg_catalog.lower(%s) LIMIT 1",
                          (zone,)).fetchone() for zone in (one, other)]
    if not all(named):
        return False
    first, second = (_zone_bytes(row[0]) for row in named)
    return first is not None and first == second


def _zone_bytes(name: str) -> bytes | None:
    """The zone's compiled file (the system's, else the tzdata package's); None where neither has it."""
    import importlib.resources
    import os
    import zoneinfo

    for base in zoneinfo.TZPATH:
        path = os.path.join(base, name)
        if os.path.isfile(path):
            with open(path, "rb") as compiled:
                return compiled.read()
    try:
        return importlib.resources.files("tzdata.zoneinfo").joinpath(*name.split("/")).read_bytes()
    except Exception:  # noqa: BLE001 - not known: told apart
        return None


def _utc(moment: dt.datetime | None) -> dt.datetime | None:
    return moment.astimezone(dt.UTC) if moment is not None else None


# The parent's partitioning: strategy, number of key columns, the first one's name (NULL for an expression),
# every key column's name. From the catalog only: pg_get_partkeydef() locks the table (a migration's lock
# on the parent would hold up discovery).
_PARTITION_KEY_QUERY = """
SELECT p.relkind, pt.partstrat, pt.partnatts, a.attname,
       ARRAY(SELECT coalesce(k.attname::text, '(expression)')
             FROM pg_catalog.unnest(pt.partattrs::int2[]) WITH ORDINALITY AS u(attnum, i)
             LEFT JOIN pg_catalog.pg_attribute k ON k.attrelid = p.oid AND k.attnum = u.attnum AND u.attnum > 0
             ORDER BY u.i),
       (SELECT pg_catalog.format_type(o.opcintype, NULL) FROM pg_catalog.pg_opclass o WHERE o.oid = pt.partclass[0]),
       -- the columns the key uses, its expression's too: PostgreSQL makes each internally dependent on the
       -- table (StorePartitionKey), a pg_depend row from the column to the table itself
       ARRAY(SELECT DISTINCT c.attname::text FROM pg_catalog.pg_depend d
             JOIN pg_catalog.pg_attribute c ON c.attrelid = p.oid AND c.attnum = d.objsubid
             WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = p.oid AND d.objsubid > 0
               AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid = p.oid
               AND d.refobjsubid = 0 AND d.deptype = 'i')
FROM pg_catalog.pg_class p JOIN pg_catalog.pg_namespace n ON n.oid = p.relnamespace
LEFT JOIN pg_catalog.pg_partitioned_table pt ON pt.partrelid = p.oid
LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = p.oid AND a.attnum = pt.partattrs[0] AND a.attnum > 0
WHERE n.nspname = %s AND p.relname = %s
"""
_STRATEGIES = {"r": "RANGE", "l": "LIST", "h": "HASH"}
_TIME_KEYS = ("date", "timestamp without time zone", "timestamp with time zone")


def _require_day_range_key(conn: psycopg.Connection, spec: TableSpec) -> tuple[str | None, bool]:
    """Refuse a table whose children's bounds cannot say which periods hold rows: one not partitioned by
    RANGE, or by RANGE of several columns, or of another column than ``day_column``. Its days were
    never discovered (LIST children have no range; a bound of two columns did not parse) while a day
    archived by hand read the day column's rows, so the sensor and the archives disagreed. Returns the
    key's type (None where there is no such table) and whether the key is an expression of the column."""
    schema, _, name = spec.name.partition(".")
    found = conn.execute(_PARTITION_KEY_QUERY, (schema, name)).fetchone()
    if found is None:
        return None, False
    relkind, strategy, columns, first, key, key_type, expression_uses = found
    if relkind == "p" and strategy == "r" and columns == 1 and first == spec.day_column:
        if key_type in _TIME_KEYS:
            return key_type, False
        # (a yyyymmdd integer's bounds read as unbounded sides, so no day was ever found, silently; a text's
        # failed as rows that cannot be converted)
        raise SourceError(f"day_column {spec.day_column!r} of {spec.name!r} is {key_type}; it must be date, "
                          "timestamp or timestamptz", table=spec.name, retryable=False, cause=SETTING_MISFITS,
                          remedy="set the table's day_column in the YAML configuration to a date, timestamp or "
                                 "timestamptz column (its RANGE partition key)")
    # An expression key, e.g. (at::date), is read by its bounds as before, when it is a time of the day column
    # alone: one of another column's (loaded_at::date) named other days than the rows', one of a number
    # (extract(year ...)) failed every tick reading its bounds as timestamps, with a remedy about rows.
    expression = relkind == "p" and strategy == "r" and columns == 1 and first is None
    if expression and expression_uses == [spec.day_column] and key_type in _TIME_KEYS:
        return key_type, True
    what = (f"partitioned by {_STRATEGIES.get(strategy, strategy)} ({', '.join(key)})" if relkind == "p"
            else "not a partitioned table")
    if expression:
        what = (f"partitioned by RANGE of an expression of {', '.join(expression_uses) or 'no column'} giving "
                f"{key_type}")
    raise SourceError(
        f"partitioning mode 'declarative' reads the days of {spec.name!r} from its partitions' RANGE bounds on its "
        f"day_column {spec.day_column!r}, but it is {what}: those bounds cannot say which days hold rows",
        table=spec.name, retryable=False, cause="the table is not range-partitioned by its day column",
        remedy="use partitioning mode 'column' for this table, or set day_column to the RANGE partition key")


def declarative_days(conn: psycopg.Connection, spec: TableSpec) -> list[Period]:
    """The periods the parent's children hold, from the catalog."""
    children = child_ranges(conn, spec)
    return sorted({period for child in children for period in child.periods(spec)})


# The relations a day's table may be: those source_table archives (a table, partitioned or foreign, a view or a
# materialized view), so a day archived by hand is a day discovery finds (removal refuses views, naming them).
_DAY_RELKINDS = "('r', 'p', 'f', 'v', 'm')"


def naming_days(conn: psycopg.Connection, spec: TableSpec) -> list[Period]:
    """The periods whose tables exist, read from their names (the local start of the period). A pattern that
    finds none while the catalog has its tables spelled otherwise, or in another schema, is refused, naming them:
    the sensor would say "0 of them with data" for ever."""
    _refuse_unstorable(conn, spec)
    # Only the names that start as the pattern's do (its text before the first code): a schema that also
    # holds a declarative table's children has a hundred thousand other names to try the pattern on.
    prefix = spec.partitioning.pattern.split("%", 1)[0]
    names = [r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE n.nspname = %s AND c.relkind IN {_DAY_RELKINDS} AND pg_catalog.starts_with(c.relname::text, %s)",
        (spec.schema_name, prefix))]
    found = [period for name, period in _named_periods(spec, names)]
    if not found:
        _refuse_other_schema(conn, spec)
        _refuse_other_case(conn, spec, prefix)
        _refuse_schema_in_pattern(conn, spec)
    return sorted(found)


def _refuse_other_schema(conn: psycopg.Connection, spec: TableSpec) -> None:
    """Refuse a table whose schema is not there while one spelled as it is but for case or Unicode normal form is
    (``name: Sales.events`` against the schema sales, created unquoted): no day table would ever be found."""
    if conn.execute("SELECT EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = %s)",
                    (spec.schema_name,)).fetchone()[0]:
        return
    wanted = _fold(spec.schema_name)
    prefix = spec.partitioning.pattern.split("%", 1)[0]
    # (the one holding tables the pattern starts as first: an empty lookalike is no remedy)
    others = [name for name, _ in sorted(conn.execute(
        "SELECT n.nspname::text, NOT EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.relnamespace = n.oid AND "
        "pg_catalog.starts_with(c.relname::text, %s)) FROM pg_catalog.pg_namespace n", (prefix,)).fetchall(),
        key=lambda row: (row[1], row[0])) if _fold(name) == wanted]
    if others:
        raise SourceError(
            f"{spec.name}: schema {spec.schema_name!r} does not exist; the catalog spells it {others[0]!r}, otherwise "
            "in case or Unicode normal form (PostgreSQL folds only the ASCII letters of an unquoted name)",
            table=spec.name, retryable=False, cause=SETTING_MISFITS,
            remedy=f"set the table's name in the YAML configuration to {others[0]}.{spec.table_name}, as the "
                   "catalog spells its schema")


def _refuse_unstorable(conn: psycopg.Connection, spec: TableSpec) -> None:
    """Refuse a pattern whose names this database cannot hold: longer than its 63 bytes in the database's encoding
    (the load counts characters: 'é' is one byte in LATIN1, two in UTF-8), or with a character it lacks. Such a
    table was cut when created, or never could be: every day would be "no table" for ever."""
    longest = longest_name(spec.partitioning.pattern, spec.timezone)
    problem = stored_name_problem(conn, longest)
    if problem:
        raise SourceError(f"partitioning pattern {spec.partitioning.pattern!r} of {spec.name} names day tables this "
                          f"database cannot hold: {problem}", table=spec.name, retryable=False, cause=SETTING_MISFITS,
                          remedy="set the table's partitioning pattern in the YAML configuration to the names the "
                                 "catalog has (at most 63 bytes each in the database's encoding)")


def _fold(text: str) -> str:
    """``text`` as a reader sees it: whatever the case of its letters (any script) and their Unicode normal form."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", text).casefold())


def _named_periods(spec: TableSpec, names: Iterable[str], fold: bool = False) -> Iterator[tuple[str, Period]]:
    """The periods ``names`` name by the table's pattern (``fold``: whatever the case or normal form of their
    letters, :func:`_fold`)."""
    pattern = spec.partitioning.pattern
    folded = re.sub(r"%.|[^%]+", lambda part: part[0] if part[0].startswith("%") else _fold(part[0]), pattern)
    for name in names:
        try:
            period = spec.period(dt.datetime.strptime(_fold(name) if fold else name, folded if fold else pattern))
        except (ValueError, OverflowError):  # not a day of the pattern, or one at the calendar's end (99991231)
            continue
        spelled = period.start.strftime(pattern)
        if (_fold(spelled) == _fold(name)) if fold else (spelled == name):  # not near-misses (unpadded days)
            yield name, period


def _respelled(pattern: str, name: str, period: Period) -> str:
    """``pattern`` with each literal part spelled as ``name`` (a table the pattern names but for case or normal
    form) spells it: the codes' text for ``period`` located in ``name``, what lies between them is the catalog's."""
    tokens = re.findall(r"%.|[^%]+", pattern)
    shape = "".join(re.escape(period.start.strftime(t)) if t.startswith("%") else "(.*?)" for t in tokens)
    matched = re.fullmatch(shape, name, re.IGNORECASE)
    if matched is None:
        return pattern
    literals = iter(matched.groups())
    return "".join(t if t.startswith("%") else next(literals).replace("%", "%%") for t in tokens)


def _folded_like(prefix: str) -> str:
    """A LIKE pattern every name starting with ``prefix`` but for case or normal form matches, once lowered as
    lower(... COLLATE "C") lowers (ASCII letters only): its other characters may be spelled any way, so any text."""
    parts = [(("\\" + ch) if ch in "\\%_" else ch.lower()) if ch.isascii() else "%"
             for ch in unicodedata.normalize("NFC", prefix)]
    return re.sub("%+", "%", "".join(parts) + "%")


def _refuse_other_case(conn: psycopg.Connection, spec: TableSpec, prefix: str) -> None:
    """Refuse a pattern that names no table of the schema while tables spelled as it does but for the case of
    their letters or their Unicode normal form are there (``Events_%Y%m%d`` against ``events_20240310``, created
    unquoted; ``événements_%Y%m%d`` against ``Événements_20240310``, whose É an unquoted name keeps; an NFD pattern
    against NFC names): every day would be "no table" for ever, and the sensor would quietly find nothing to
    archive. The names are folded here, in Python: SQL's lower() of a name lowers ASCII letters only."""
    rows = conn.execute(
        "SELECT c.relname::text, (SELECT pn.nspname || '.' || p.relname FROM pg_catalog.pg_inherits i JOIN "
        "pg_catalog.pg_class p ON p.oid = i.inhparent JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace "
        "WHERE i.inhrelid = c.oid AND c.relispartition) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
        f"ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind IN {_DAY_RELKINDS} "
        "AND pg_catalog.lower(c.relname::text COLLATE \"C\") LIKE %s ORDER BY 1 LIMIT 1000",
        (spec.schema_name, _folded_like(prefix))).fetchall()
    # (a name another configured table's pattern names exactly is that table's day table, and a partition of
    # another configured table is that table's: neither is a misspelling of this table's pattern)
    names = [n for n, parent in rows if parent not in spec.sibling_tables
             and not any(_names_exactly(other, n) for other in spec.sibling_patterns)]
    matched = list(_named_periods(spec, names, fold=True))
    if not matched:
        return
    name, period = matched[0]
    spelled = [found for found, _ in matched]
    shown = ", ".join(spelled[:3]) + (", ..." if len(spelled) > 3 else "")
    how = lookalike_hint(spec.child_table(period), [name], "day table",
                         advice="a table's name is matched exactly, byte for byte")
    raise SourceError(
        f"partitioning pattern {spec.partitioning.pattern!r} of {spec.name} names no table of schema "
        f"{spec.schema_name!r}, whose day tables the catalog spells otherwise in case or Unicode normal form: {shown} "
        f"(for {period} the pattern names {spec.child_table(period)!r}{how}; PostgreSQL folds only the ASCII letters "
        "of an unquoted name to lower case)", table=spec.name, retryable=False, cause=SETTING_MISFITS,
        remedy=_respell_remedy(spec.partitioning.pattern, name, period))


def _names_exactly(pattern: str, name: str) -> bool:
    """Whether ``pattern`` names the table ``name`` exactly (read back and spelled again, byte for byte)."""
    try:
        return dt.datetime.strptime(name, pattern).strftime(pattern) == name
    except (ValueError, OverflowError):
        return False


def _respell_remedy(pattern: str, name: str, period: Period) -> str:
    """What to set the pattern to, as the catalog spells ``name``; where the difference is in a code's own text
    (``%a`` printing 'Sun', the table named '..._sun'), which no pattern spells otherwise, to rename the tables."""
    respelled = _respelled(pattern, name, period)
    if respelled != pattern and _names_exactly(respelled, name):  # (one that would still miss is no remedy)
        return f"set the table's partitioning pattern in the YAML configuration to {respelled!r}, as the catalog " \
               "spells its tables"
    spelled = sql_name(period.start.strftime(pattern), qualified=False)
    return (f"rename the day tables as the pattern spells them (ALTER TABLE ... RENAME TO {spelled} for this one): "
            "their names differ from it in the text of a code (a weekday's or month's name), which no pattern "
            "spells otherwise")


def _refuse_schema_in_pattern(conn: psycopg.Connection, spec: TableSpec) -> None:
    """Refuse a pattern that names no table while its text before a dot is a schema's name (``days.events_%Y%m%d``):
    a pattern is a table's name only, and day tables are looked for in the configured table's schema, so the day
    tables of that schema were never found, and the sensor said "0 of them with data" for ever."""
    other, dot, rest = spec.partitioning.pattern.partition(".")
    if not dot or "%" in other or not conn.execute(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = %s)", (other,)).fetchone()[0]:
        return
    names = [r[0] for r in conn.execute(
        "SELECT c.relname::text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE n.nspname = %s AND c.relkind IN {_DAY_RELKINDS} AND pg_catalog.starts_with(c.relname::text, %s) "
        "ORDER BY 1 LIMIT 4", (other, rest.split("%", 1)[0]))]
    held = f", which holds {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}" if names else ""
    raise SourceError(
        f"partitioning pattern {spec.partitioning.pattern!r} of {spec.name} names no table of schema "
        f"{spec.schema_name!r}: a pattern is a day table's name only, and day tables are looked for in the configured "
        f"table's own schema ({spec.schema_name!r}); its {other!r} before the dot is a schema of this "
        f"database{held}", table=spec.name, retryable=False, cause=SETTING_MISFITS,
        remedy=f"configure the table as {other}.{spec.table_name} with pattern {rest!r} in the YAML configuration "
               f"(or move the day tables into schema {spec.schema_name!r})")


def periods_with_rows(conn: psycopg.Connection, table: SourceTable, periods: list[Period],
                      failed: dict[Period, psycopg.Error] | None = None) -> list[Period]:
    """Which of ``periods`` have at least one row: one index probe (or pruned partition) per period,
    with the typed bounds the archive's own query uses. With ``failed``, a period whose probe fails (its
    partition locked past lock_timeout by a VACUUM FULL or an ALTER) is recorded there and the others
    are probed on; without it, the error is raised."""
    def probe(period: Period) -> sql.Composable:
        # the day's own filter: an expression-keyed table's key bounded too, so only the day's partitions are
        # planned and locked (one locked partition a month old held back every day's probe)
        return sql.SQL("SELECT EXISTS (SELECT 1 FROM {table} WHERE {where})").format(
            table=table.identifier, where=day_filter(table, period))

    return _probed(conn, [(period, probe(period)) for period in periods], failed, table.identifier)


# How long the check that the table itself is locked waits (see _table_locked): the probe that failed already
# waited the whole lock_timeout.
_LOCKED_CHECK = "50ms"


def _probed(conn: psycopg.Connection, probes: list[tuple[Period, sql.Composable]],
            failed: dict[Period, psycopg.Error] | None, table: sql.Identifier | None = None) -> list[Period]:
    """The periods whose ``EXISTS`` probe is true (see :func:`periods_with_rows` for ``failed``).

    ``table``: the relation every probe reads (column mode, or a declarative parent). A probe that waited
    out lock_timeout on it means each of the others would wait as long (a migration holds the table: a
    sensor tick over a thousand days would wait a thousand lock_timeouts), so once the table itself is
    found locked, the remaining periods fail with that error unprobed."""
    found = []
    for start in range(0, len(probes), _PROBES_AT_ONCE):
        batch = probes[start:start + _PROBES_AT_ONCE]
        if len(batch) > 1:  # one round trip for the batch (a sensor tick over years of backlog: not one per day)
            try:
                with conn.transaction() if failed is not None else contextlib.nullcontext():
                    held = conn.execute(sql.SQL("SELECT ARRAY[{}]").format(
                        sql.SQL(", ").join(sql.SQL("({})").format(query) for _, query in batch))).fetchone()[0]
            except psycopg.Error:
                if failed is None or conn.closed or conn.broken:
                    raise
            else:
                found += [period for (period, _), has in zip(batch, held, strict=True) if has]
                continue
        for index, (period, query) in enumerate(batch):  # one by one: which of them failed, the others go on
            try:
                with conn.transaction() if failed is not None else contextlib.nullcontext():
                    has = conn.execute(query).fetchone()[0]
            except psycopg.Error as exc:
                if failed is None or conn.closed or conn.broken:
                    raise
                failed[period] = exc
                if isinstance(exc, psycopg.errors.LockNotAvailable) and table is not None and \
                        _table_locked(conn, table):
                    failed.update((later, exc) for later, _ in probes[start + index + 1:])
                    return found
                continue
            if has:
                found.append(period)
    return found


# How many periods one probing statement asks about: a round trip each, not one per period; few enough that the
# partitions one statement locks stay well inside max_locks_per_transaction.
_PROBES_AT_ONCE = 50


def _table_locked(conn: psycopg.Connection, table: sql.Identifier) -> bool:
    """Whether ``table`` itself (not one of its partitions: ``ONLY``) cannot be read for a lock held on it."""
    try:
        with conn.transaction():
            conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(_LOCKED_CHECK)))
            conn.execute(sql.SQL("SELECT FROM ONLY {} LIMIT 0").format(table))
    except psycopg.errors.LockNotAvailable:
        return True
    except psycopg.Error:
        return False
    return False


def _day_tables_with_rows(conn: psycopg.Connection, spec: TableSpec, periods: list[Period],
                          failed: dict[Period, psycopg.Error] | None) -> list[Period]:
    """Naming mode: which of ``periods`` have a table holding at least one row of the period (the table is the
    day; with a day_column, its rows of the day: a day table holding only another day's stray row is not the
    day's data, as the archive and the removal read it)."""
    shapes = _day_table_shapes(conn, spec, periods)
    return _probed(conn, [(period, sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {})").format(
        sql.Identifier(spec.schema_name, spec.child_table(period)),
        day_filter(shapes[period], period) if shapes.get(period) is not None else sql.SQL("TRUE")))
        for period in periods], failed)


# Per day table, what its day filter depends on: its kind and its day column's type (NULL: no such column).
_DAY_COLUMN_TYPES = f"""
SELECT c.relname::text, c.relkind, a.atttypid
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = %s AND a.attnum > 0 AND NOT a.attisdropped
WHERE n.nspname = %s AND c.relname = ANY(%s) AND c.relkind IN {_DAY_RELKINDS}
"""


def _day_table_shapes(conn: psycopg.Connection, spec: TableSpec, periods: list[Period]
                      ) -> dict[Period, SourceTable | None]:
    """Each period's day table described with its day column (None without a day column, where the whole table
    is the day). Day tables need not share their columns (a script's older ones ``timestamp``, its newer ones
    ``timestamptz``), and bounds of another type read another day: one catalog query tells their types, and one
    table of each type (each partitioned one: its key) is described, so whether a day has data does not depend on
    which days are asked about together."""
    if spec.day_column is None or not periods:
        return {}
    names = {spec.child_table(period): period for period in periods}
    kinds: dict[tuple, list[Period]] = {}
    for name, relkind, type_oid in conn.execute(_DAY_COLUMN_TYPES, (spec.day_column, spec.schema_name, list(names))):
        kinds.setdefault((relkind, type_oid, name if relkind == "p" else None), []).append(names[name])
    shapes: dict[Period, SourceTable | None] = {}
    for same in kinds.values():
        shape = _described(conn, spec, same[0])
        if shape is None:  # (that one could not be described, a table the role may not read: each on its own)
            shapes.update((period, _described(conn, spec, period)) for period in same)
        else:
            shapes.update((period, shape) for period in same)
    return shapes


def _described(conn: psycopg.Connection, spec: TableSpec, period: Period) -> SourceTable | None:
    """The period's day table described with its day column, or None where that fails: no such column (or no
    table), which the probe then says what it finds of."""
    try:
        with conn.transaction():  # (a savepoint inside the caller's transaction: a failure leaves it usable)
            return describe_relation(conn, spec.schema_name, spec.child_table(period), spec.day_column)
    except (SourceError, psycopg.Error):
        return None


def existing_days(conn: psycopg.Connection, spec: TableSpec, candidates: list,
                  memo: ChildrenMemo | None = None, failed: dict[Period, psycopg.Error | SourceError] | None = None
                  ) -> list[Period]:
    """Which of ``candidates`` (periods, or dates meaning the table's days) exist as data in PostgreSQL.
    ``memo``: declarative children kept from an earlier call while the catalog says they are the same.
    ``failed``: where a day whose own probe failed goes (see :func:`periods_with_rows`), and a day a partition
    pending detach may hold (see :func:`catalog_days`); without it, the first such error is raised."""
    # The catalog narrows the candidates (:func:`catalog_days`); then each is probed for a row, as in column
    # mode. A partition created before its rows (a history load, a sub-partitioned month) was a day "with
    # data": requested and archived as empty, then never requested again once its rows came; and a table the
    # role may not read had every day requested, each run failing.
    mode = spec.partitioning.mode
    pending: dict[Period, psycopg.Error | SourceError] = {}
    wanted = catalog_days(conn, spec, candidates, memo, failed=pending if failed is None else failed)
    if pending:
        raise next(iter(pending.values()))
    if mode == "naming":
        with pinned_settings(conn, row_security="off", search_path=SEARCH_PATH):
            return _day_tables_with_rows(conn, spec, wanted, failed)
    if not wanted:
        return []
    return days_read_with_rows(conn, spec, wanted, failed)


def days_read_with_rows(conn: psycopg.Connection, spec: TableSpec, days: Iterable[Period],
                        failed: dict[Period, psycopg.Error] | None = None) -> list[Period]:
    """Which of ``days`` have rows read through the table itself, whichever partition holds them (a DEFAULT
    partition's late rows of a day whose own partition was dropped, say); see :func:`periods_with_rows`."""
    # row_security off: a day whose rows a policy hides from this role is an error, not a day without data
    with pinned_settings(conn, TimeZone="UTC", row_security="off", search_path=SEARCH_PATH):
        return periods_with_rows(conn, describe_table(conn, spec.name, spec.day_column), sorted(days), failed)


def catalog_days(conn: psycopg.Connection, spec: TableSpec, candidates: list,
                 memo: ChildrenMemo | None = None, *, open_ended: bool = True,
                 failed: dict[Period, psycopg.Error | SourceError] | None = None) -> list[Period]:
    """Which of ``candidates`` the catalog says may hold rows: declarative, the days some child holds (each
    candidate against the children, not every period of every child listed); naming, the days whose table
    exists; column mode, every candidate (the catalog cannot tell). ``open_ended`` False: not the days held only
    by a child unbounded on a side (a catch-all holds a day's rows, yet is no partition of the day's own).
    ``failed``: where a day a partition pending detach may hold goes, with why it cannot be told now
    (:func:`pending_detach_days`), left out of the days returned: probed through the table it would be "no data"
    while its rows are still in PostgreSQL. Without it, such a day is returned as the catalog shows it (its
    partition is there: retention's prune, whose removal refuses it naming the FINALIZE)."""
    wanted = {spec.period(c) for c in candidates}
    if failed is not None:
        pending = pending_detach_days(conn, spec, wanted)
        failed.update(pending)
        wanted -= pending.keys()
    if spec.partitioning.mode == "declarative":
        if not open_ended:
            return held_periods([c for c in candidate_ranges(conn, spec) if not c.open_ended], wanted)
        return memo.ranges(conn, spec).held(wanted) if memo is not None \
            else held_periods(candidate_ranges(conn, spec), wanted)
    if spec.partitioning.mode == "naming":
        return [d for d in naming_days(conn, spec) if d in wanted]
    return sorted(wanted)


def candidate_ranges(conn: psycopg.Connection, spec: TableSpec) -> list[ChildRange]:
    """The children's ranges as discovery asks which days may hold rows: an expression key may be in another zone
    than the table's (((at AT TIME ZONE 'UTC')::date) for a New York table), so a local day whose rows sit at a
    child's edge is held by the child widened by a day each way (every zone's offset); such candidates are probed
    for rows before they count (existing_days). Retention and restore use the children as they are."""
    return [_widened(c) if c.expression else c for c in child_ranges(conn, spec)]


def _widened(child: ChildRange) -> ChildRange:
    """``child`` widened by a day each way (:data:`_EXPRESSION_SLACK`): its instants, and its labels where it has
    them (they are what decides which periods it holds)."""
    labels = child.labels and (child.labels[0] and child.labels[0] - _EXPRESSION_SLACK,
                               child.labels[1] and child.labels[1] + _EXPRESSION_SLACK)
    return replace(child, start=child.start - _EXPRESSION_SLACK if child.start else None,
                   end=child.end + _EXPRESSION_SLACK if child.end else None, labels=labels)


def partition_may_hold(conn: psycopg.Connection, spec: TableSpec, day: Period, relation: tuple[str, str]) -> bool:
    """Whether a partition of ``spec``'s table (at any depth; one pending detach, say) may hold rows of ``day`` by its
    bound (see :func:`bounding_ranges`)."""
    ranges = bounding_ranges(conn, spec, relation)
    return ranges is None or any(c.overlaps(day) for c in ranges)


def bounding_ranges(conn: psycopg.Connection, spec: TableSpec, relation: tuple[str, str]) -> list[ChildRange] | None:
    """What bounds the rows of a partition of ``spec``'s table (at any depth): its bound, read as discovery reads
    bounds (an expression key's widened by a day each way: it may be in another zone than the table's). Where its own
    bound cannot be read (a HASH or LIST sub-partition, a parent in a schema whose name holds a dot), its parent's,
    and so on up: a month's range rules out every partition under it. None where nothing bounds it (a DEFAULT
    partition of the table itself): it may hold rows of any period."""
    while True:
        # (by name in the catalog as the caller's snapshot sees it, not ::regclass, which reads the current one: a
        # partition dropped since the snapshot has no regclass, and its bound is what tells whether it mattered)
        found = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c "
            "ON c.oid = i.inhparent JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE i.inhrelid = (SELECT r.oid FROM pg_catalog.pg_class r JOIN pg_catalog.pg_namespace rn "
            "ON rn.oid = r.relnamespace WHERE rn.nspname = %s AND r.relname = %s)", relation).fetchone()
        if found is None:
            return None
        parent = tuple(found)
        ranges = _child_ranges_of(conn, spec, parent, relation)
        if ranges:
            return ranges
        relation = parent


# Every partition of the table's tree (at any depth) pending detach, with the parent it is leaving: read from
# pg_inherits, since pg_partition_tree leaves a partition pending detach out (PostgreSQL 14+).
PENDING_DETACH_UNDER = """
WITH RECURSIVE tree(oid, parent, pending) AS (
    SELECT c.oid, NULL::pg_catalog.oid, false FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s
    UNION ALL
    SELECT i.inhrelid, i.inhparent, i.inhdetachpending FROM pg_catalog.pg_inherits i JOIN tree ON i.inhparent = tree.oid)
SELECT n.nspname, c.relname, tree.parent::pg_catalog.regclass::text
FROM tree JOIN pg_catalog.pg_class c ON c.oid = tree.oid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE tree.pending
ORDER BY 1, 2
"""  # the partitions pending detach at any depth under a relation (its schema and name; none if gone), with their
# parent: read from pg_inherits, since pg_partition_tree leaves a partition pending detach out; by name, not through
# regclass, which a role without USAGE on the schema is refused (and the day's "may not SELECT" was never said)


def pending_detach_partitions(conn: psycopg.Connection, spec: TableSpec, days: Iterable[Period]
                              ) -> list[tuple[tuple[str, str], str, list[Period]]]:
    """Declarative mode: each partition of ``spec``'s table pending detach (``DETACH PARTITION ... CONCURRENTLY``
    running, or interrupted and never finished; at any depth) whose bound may hold rows of some of ``days``: its
    (schema, name), the parent it is leaving (qualified, as a statement to paste names it) and those days. The
    table no longer reads such a partition's rows, which are no table of their own yet."""
    if spec.partitioning.mode != "declarative" or conn.info.server_version < 140000:
        return []  # (no partition is ever pending before PostgreSQL 14)
    days = list(days)
    with pinned_settings(conn, search_path=SEARCH_PATH):  # (the parent as a statement to paste names it: qualified)
        pending = conn.execute(PENDING_DETACH_UNDER, (spec.schema_name, spec.table_name)).fetchall()
    found = []
    for schema, name, parent in pending:
        ranges = bounding_ranges(conn, spec, (schema, name))
        held = [day for day in days if ranges is None or any(c.overlaps(day) for c in ranges)]
        if held:
            found.append(((schema, name), parent, held))
    return found


def pending_detach_days(conn: psycopg.Connection, spec: TableSpec, days: Iterable[Period]) -> dict[Period, SourceError]:
    """Declarative mode: of ``days``, those a partition pending detach may hold rows of
    (:func:`pending_detach_partitions`), each with why whether it has rows cannot be told now: probed through the
    table the day was "no data" (or "not in the source") while its rows are still in PostgreSQL, and once FINALIZE
    ran nothing ever archived them. The error is the archiver's own (source.pending_detach_error: retryable, naming
    the partition and the FINALIZE that ends it), which refuses such a day the same way."""
    found: dict[Period, SourceError] = {}
    for relation, parent, held in pending_detach_partitions(conn, spec, days):
        error = pending_detach_error(spec.name, relation, parent)
        for day in held:
            if day not in found:
                found[day] = SourceError(f"whether {spec.name} has rows of {day} cannot be told now: {error.message}",
                                         table=spec.name, day=day.isoformat(), retryable=True, cause=error.cause,
                                         remedy=error.remedy)
    return found


def _child_ranges_of(conn: psycopg.Connection, spec: TableSpec, parent: tuple[str, str],
                     child: tuple[str, str]) -> list[ChildRange]:
    """``child``'s range among ``parent``'s RANGE partitions (``spec``'s table, or a partition of it), or [] where it
    cannot be read: a parent partitioned otherwise, a DEFAULT partition, a parent no configured name can spell."""
    if parent != (spec.schema_name, spec.table_name):
        if "." in parent[0]:
            return []
        spec = spec.model_copy(update={"name": f"{parent[0]}.{parent[1]}"})
    try:
        with conn.transaction():  # (a savepoint: a parent partitioned by another key refuses its bounds)
            return [c for c in candidate_ranges(conn, spec) if c.relation(spec) == child
                    and (c.start is not None or c.end is not None)]
    except (SourceError, psycopg.Error):
        return []


def held_periods(children: list[ChildRange], periods: Iterable[Period]) -> list[Period]:
    """The ``periods`` some child holds rows of (:meth:`ChildRange.holds`), in order."""
    return HeldRanges.of(children).held(periods)


@dataclass(frozen=True)
class HeldRanges:
    """The children's ranges (one open on a side reaching the calendar's end there; one open on both sides left
    out, see ChildRange._compared), sorted by start, to tell which periods some child holds rows of.

    A sensor tick asks this of every day since start_date of every declarative table: 1,095 days
    against 1,095 children, a million comparisons a table if each day tried each child. Children do
    not overlap (PostgreSQL refuses overlapping bounds), so sorted by start the only child that can
    hold a period is the last one starting before the period ends."""

    starts: list[dt.datetime]
    ends: list[dt.datetime]
    # The ranges are wall-clock children's labels, compared with the periods' labels (a table's children share its
    # key: all of them are labels, or none), not instants; the labels of the periods' instants where the rows are
    # instants labelled (ChildRange.labelled_instants)
    labels: bool = False
    instants: bool = False

    @classmethod
    def of(cls, children: list[ChildRange]) -> HeldRanges:
        labels = any(c.labels is not None for c in children)
        bounded = sorted(r for c in children if (c.labels is not None) == labels and (r := c._compared()) is not None)
        return cls([start for start, _ in bounded], [end for _, end in bounded], labels,
                   any(c.labelled_instants for c in children))

    def held(self, periods: Iterable[Period]) -> list[Period]:
        """The ``periods`` some child holds rows of (:meth:`ChildRange.holds`), in order."""
        held = []
        # each period's bounds worked out once (sorting periods by themselves converts them ~20 times each)
        bounds = sorted(((*_compared_bounds(p, self.labels, self.instants), p) for p in periods), key=lambda t: t[:2])
        for start, end, period in bounds:
            i = bisect.bisect_left(self.starts, end) - 1  # the last child starting before the period ends
            if i >= 0 and self.ends[i] > start:
                held.append(period)
        return held


# What could change which periods a declarative table's children hold, read without printing a bound:
# the parent (dropped and re-created: another oid), its partition key (relkind, strategy, columns, the key
# column's name: a renamed column is refused by _require_day_range_key), and each child's pg_inherits row
# (a bound changes only by DETACH and ATTACH, which delete the row and insert another, with another xmin;
# a pending DETACH CONCURRENTLY updates it). ~1 ms for 1,095 children, against ~10 ms for their bounds.
_CHILDREN_FINGERPRINT_QUERY = """
SELECT p.oid, p.relkind, pt.partstrat, pt.partnatts, a.attname,
       (SELECT pg_catalog.md5(pg_catalog.string_agg(pg_catalog.concat(i.inhrelid, '/', i.xmin), ','
                                                    ORDER BY i.inhrelid))
        FROM pg_catalog.pg_inherits i WHERE i.inhparent OPERATOR(pg_catalog.=) p.oid)
FROM pg_catalog.pg_class p JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.relnamespace
LEFT JOIN pg_catalog.pg_partitioned_table pt ON pt.partrelid OPERATOR(pg_catalog.=) p.oid
LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) p.oid
     AND a.attnum OPERATOR(pg_catalog.=) pt.partattrs[0]
WHERE n.nspname OPERATOR(pg_catalog.=) %s AND p.relname OPERATOR(pg_catalog.=) %s
"""


class ChildrenMemo:
    """Declarative tables' children kept between sensor ticks (the code server keeps its definitions, and
    so this, loaded): each tick reads a fingerprint of the catalog (:data:`_CHILDREN_FINGERPRINT_QUERY`)
    and reads and checks the children again only when it changed. Printing and checking 1,095 children's
    bounds was ~25 ms a table a tick. Nothing is kept for a table that failed its checks: it fails again."""

    def __init__(self) -> None:
        self._kept: dict[tuple[str, str, str], tuple[tuple, HeldRanges]] = {}

    def ranges(self, conn: psycopg.Connection, spec: TableSpec) -> HeldRanges:
        """The children's ranges of ``spec``, from the catalog when it changed since they were kept."""
        schema, _, name = spec.name.partition(".")
        fingerprint = conn.execute(_CHILDREN_FINGERPRINT_QUERY, (schema, name)).fetchone()
        key = (spec.name, spec.granularity, spec.timezone)  # bounds are read in the zone, checked in periods
        kept = self._kept.get(key)
        if fingerprint is not None and kept is not None and kept[0] == fingerprint:
            return kept[1]
        ranges = HeldRanges.of(candidate_ranges(conn, spec))
        if fingerprint is not None:  # read before the children: a change in between is seen next time
            self._kept[key] = (tuple(fingerprint), ranges)
        return ranges


NO_PERIOD_TABLE = "the period's table does not exist"  # naming mode: the day is not (or no longer) in the source


def source_table(conn: psycopg.Connection, spec: TableSpec, day: Period | dt.date) -> SourceTable:
    """The relation holding the period and its columns, per the table's partitioning mode (declarative:
    the parent, whose rows of the period are read by the day column, however its children split it)."""
    day = spec.period(day)
    if spec.partitioning.mode == "naming":
        child = spec.day_relation(day)
        try:
            return describe_table(conn, child, spec.day_column, lookalikes=False)
        except SourceError as exc:
            if exc.cause != TABLE_MISSING:  # the day's table is there: what is wrong with it, and its remedy
                raise SourceError(f"the table of {day} of {spec.name}: {exc}", table=spec.name,
                                  retryable=exc.retryable, cause=exc.cause, remedy=exc.remedy) from None
            raise SourceError(f"no table for {day} of {spec.name}: {exc}{_dotted_hint(spec)}", table=spec.name,
                              retryable=False, cause=NO_PERIOD_TABLE,
                              remedy=f"nothing to archive: without its table ({child}) the {spec.granularity} period "
                                     "has no rows in PostgreSQL (the command line lists it as no-data); if it should "
                                     "have some, create or restore its table, then archive it") from None
    return describe_table(conn, spec.name, spec.day_column)


@classified("comparing")
def still_detached(conn: psycopg.Connection, spec: TableSpec, day: Period, manifest: dict) -> bool:
    """Whether a naming-mode day table that a done removal detached is still detached: it keeps its rows
    (that is what detach means) and its name, so :func:`source_table` still finds the day, but it inherits from no
    table any more, as the removal left it: its rows are no longer the source's. The one decision every command makes
    of such a day (list, compare, verify --deep, archive, prune and the retention asset, the source_unchanged check):
    removed, never an ordinary source day read by its table's name (compare called it "equal", an archive run
    skipped onto it, a proof compared the archive with a table the application no longer reads). Detaching it again
    would be refused ("inherits from no table") after a whole proof, at every run; attached again (INHERIT), its day
    is a source day again, removed again by the next removal. A database error comes out as an
    :class:`ArchiveError` naming table, day, cause and remedy (see :func:`classified`)."""
    if spec.partitioning.mode != "naming" or (manifest.get("removed") or {}).get("action") != "detach":
        return False
    child = sql.Identifier(spec.schema_name, spec.child_table(day)).as_string(conn)
    return conn.execute("SELECT pg_catalog.to_regclass(%s) IS NOT NULL AND NOT EXISTS (SELECT 1 FROM "
                        "pg_catalog.pg_inherits WHERE inhrelid = pg_catalog.to_regclass(%s))",
                        (child, child)).fetchone()[0]


def _dotted_hint(spec: TableSpec) -> str:
    """For a pattern holding a dot (``days.events_%Y%m%d``, a schema written into it): what it is read as."""
    other, dot, _ = spec.partitioning.pattern.partition(".")
    if not dot or "%" in other:
        return ""
    return (f"; a pattern is a day table's name only, looked for in the configured table's schema "
            f"({spec.schema_name!r}): its {other!r} before the dot is part of the name, not a schema")


def day_children(conn: psycopg.Connection, spec: TableSpec, day: Period | dt.date) -> list[ChildRange]:
    """Declarative mode: the child partitions whose range overlaps the period."""
    day = spec.period(day)
    return [c for c in child_ranges(conn, spec) if c.overlaps(day)]


def day_table_parents(conn: psycopg.Connection, spec: TableSpec, table: SourceTable) -> list[dict] | None:
    """Naming mode: the tables the day's own table inherits from, or is a partition of (with its bound as the
    server prints it), so a restore of a dropped day table puts it back under them (re-created alone, its
    rows were no longer read through the parent). None in the other modes."""
    if spec.partitioning.mode != "naming" or table.oid is None:
        return None
    rows = conn.execute(
        "SELECT n.nspname, p.relname, CASE WHEN c.relispartition THEN pg_catalog.pg_get_expr(c.relpartbound, c.oid) "
        "END, ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a WHERE a.attrelid = p.oid AND a.attnum > 0 "
        "AND NOT a.attisdropped ORDER BY a.attnum) FROM pg_catalog.pg_inherits i "
        "JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_catalog.pg_class p ON p.oid = i.inhparent JOIN pg_catalog.pg_namespace n ON n.oid = p.relnamespace "
        "WHERE i.inhrelid = %s ORDER BY i.inhseqno", (table.oid,)).fetchall()
    # the parent's columns then: a restore tells a column it lost since (renamed, dropped) from the day table's own
    return [{"schema": schema, "name": name, "bound": bound, "columns": columns}
            for schema, name, bound, columns in rows]


def partition_of_day(spec: TableSpec, children: list[ChildRange]) -> dict | None:
    """Declarative mode: the one child holding the period (of the period's ``children``, from
    :func:`day_children`), and its bound as the server prints it, so a restore can re-create and attach
    it after the child was dropped."""
    if spec.partitioning.mode != "declarative" or len(children) != 1:
        return None
    schema, name = children[0].relation(spec)
    # "child" as it always was, "schema.name", for readers that know nothing else; split at its first dot
    # it names another relation when the schema holds a dot, so its two parts are recorded apart too
    return {"parent": spec.name, "child": f"{schema}.{name}", "child_schema": schema, "child_name": name,
            "bound": children[0].bound or None}
