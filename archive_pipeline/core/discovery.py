"""Which days of a table exist in PostgreSQL, read from the catalog or probed by index.

- declarative: the bounds of the parent's children (``pg_get_expr(relpartbound)``, interpreted by
  the server, never guessed from names); a child covering several whole days yields each of them,
  one whose bounds are not whole UTC days is refused with a message naming it;
- naming: the tables of the schema whose name matches the pattern;
- column: one ``EXISTS`` probe per candidate day (an index or partition prunes each).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

import psycopg
from psycopg import sql

from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import SourceError
from archive_pipeline.core.source import SourceTable, days_with_rows, describe_table

_BOUND = re.compile(r"^FOR VALUES FROM \((?P<lo>.*)\) TO \((?P<hi>.*)\)$", re.S)

_CHILDREN_QUERY = """
SELECT c.relname, pg_get_expr(c.relpartbound, c.oid)
FROM pg_catalog.pg_inherits i
JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
JOIN pg_catalog.pg_class p ON p.oid = i.inhparent
JOIN pg_catalog.pg_namespace n ON n.oid = p.relnamespace
WHERE n.nspname = %s AND p.relname = %s AND p.relkind = 'p'
ORDER BY c.relname
"""


@dataclass(frozen=True)
class ChildRange:
    name: str
    start: dt.datetime | None  # None: MINVALUE
    end: dt.datetime | None  # None: MAXVALUE

    def whole_days(self) -> list[dt.date]:
        if self.start is None or self.end is None:
            return []
        return [self.start.date() + dt.timedelta(days=i) for i in range((self.end.date() - self.start.date()).days)]

    @property
    def aligned(self) -> bool:
        return all(b is None or b.timetz().replace(tzinfo=None) == dt.time() for b in (self.start, self.end))


def child_ranges(conn: psycopg.Connection, spec: TableSpec) -> list[ChildRange]:
    """The range each child partition covers, as the server interprets its bounds (in UTC)."""
    schema, _, name = spec.name.partition(".")
    rows = conn.execute(_CHILDREN_QUERY, (schema, name)).fetchall()
    if not rows and conn.execute("SELECT to_regclass(%s) IS NULL", (sql.Identifier(schema, name).as_string(conn),)
                                 ).fetchone()[0]:
        raise SourceError(f"table {spec.name!r} does not exist", table=spec.name, retryable=False)
    parsed = []
    for child, bound in rows:
        match = _BOUND.match(bound or "")
        if match is None:  # DEFAULT or LIST/HASH bounds: no day range to read
            continue
        parsed.append((child, match["lo"], match["hi"]))
    literals = [side for _, lo, hi in parsed for side in (lo, hi)]
    conn.execute("SET TimeZone = 'UTC'")
    values = [r[0] for r in conn.execute(
        "SELECT CASE WHEN b IN ('MINVALUE', 'MAXVALUE') THEN NULL ELSE trim(both '''' from b)::timestamptz END "
        "FROM unnest(%s::text[]) WITH ORDINALITY AS u(b, i) ORDER BY i", (literals,))]
    return [ChildRange(child, values[2 * i], values[2 * i + 1]) for i, (child, _, _) in enumerate(parsed)]


def require_whole_days(spec: TableSpec, children: list[ChildRange]) -> None:
    """Refuse a child partition whose bounds are not whole UTC days: its days cannot be archived apart."""
    for child in children:
        if not child.aligned:
            raise SourceError(
                f"partition {child.name!r} of {spec.name!r} covers {child.start} to {child.end}, which is not "
                "whole UTC days; use partitioning mode 'column' for this table", table=spec.name, retryable=False)


def declarative_days(conn: psycopg.Connection, spec: TableSpec) -> list[dt.date]:
    children = child_ranges(conn, spec)
    require_whole_days(spec, children)
    return sorted({day for child in children for day in child.whole_days()})


def naming_days(conn: psycopg.Connection, spec: TableSpec) -> list[dt.date]:
    schema = spec.schema_name
    names = [r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'f')", (schema,))]
    days = []
    for name in names:
        try:
            day = dt.datetime.strptime(name, spec.partitioning.pattern).date()
        except ValueError:
            continue
        if day.strftime(spec.partitioning.pattern) == name:  # reject near-misses such as unpadded days
            days.append(day)
    return sorted(days)


def existing_days(conn: psycopg.Connection, spec: TableSpec, candidates: list[dt.date]) -> list[dt.date]:
    """Which of ``candidates`` exist as data in PostgreSQL (see the module docstring)."""
    wanted = set(candidates)
    mode = spec.partitioning.mode
    if mode == "declarative":
        return [d for d in declarative_days(conn, spec) if d in wanted]
    if mode == "naming":
        return [d for d in naming_days(conn, spec) if d in wanted]
    conn.execute("SET TimeZone = 'UTC'")
    return days_with_rows(conn, describe_table(conn, spec.name, spec.day_column), sorted(wanted))


def source_table(conn: psycopg.Connection, spec: TableSpec, day: dt.date) -> SourceTable:
    """The relation holding ``day`` and its columns, per the table's partitioning mode."""
    if spec.partitioning.mode == "naming":
        child = f"{spec.schema_name}.{spec.child_table(day)}"
        try:
            return describe_table(conn, child, spec.day_column)
        except SourceError as exc:
            raise SourceError(f"no table for {day} of {spec.name}: {exc}", table=spec.name, retryable=False) from None
    if spec.partitioning.mode == "declarative":
        require_whole_days(spec, day_children(conn, spec, day))
    return describe_table(conn, spec.name, spec.day_column)


def day_children(conn: psycopg.Connection, spec: TableSpec, day: dt.date) -> list[ChildRange]:
    """Declarative mode: the child partitions whose range overlaps ``day``."""
    start = dt.datetime.combine(day, dt.time(), dt.UTC)
    end = start + dt.timedelta(days=1)
    return [c for c in child_ranges(conn, spec)
            if (c.start is None or c.start < end) and (c.end is None or c.end > start)]


def partition_of_day(conn: psycopg.Connection, spec: TableSpec, day: dt.date) -> dict | None:
    """Declarative mode: the one child holding ``day`` and its bound as the server prints it, so a
    restore can re-create and attach it after the child was dropped."""
    if spec.partitioning.mode != "declarative":
        return None
    children = day_children(conn, spec, day)
    if len(children) != 1:
        return None
    schema = spec.schema_name
    bound = conn.execute(
        "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
        "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s", (schema, children[0].name)).fetchone()
    return {"parent": spec.name, "child": f"{schema}.{children[0].name}", "bound": bound[0] if bound else None}
