"""PostgreSQL side of the trip: find the table, describe its columns, stream one day through COPY.

The database does the formatting (``COPY ... TO STDOUT``) because it is several times faster
than building Python objects per row; Python only moves byte buffers.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import functools
import inspect
import json
import queue
import re
import threading
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg._encodings import pg2pyenc  # (psycopg's own table of PostgreSQL encodings)
from psycopg.types.string import TextLoader

try:  # psycopg's own end-of-COPY step, for the fast path of copy_chunks (see _copy_ended)
    from psycopg.generators import _fetch_many
except ImportError:  # pragma: no cover - another psycopg: the plain path
    _fetch_many = None

from archive_pipeline.core.config import MAX_IDENTIFIER_BYTES as MAX_NAME_BYTES
from archive_pipeline.core.errors import SETTING_MISFITS, TABLE_MISSING, ArchiveError, SourceError, sql_name, sqlstate, \
    waited_row, wrap
from archive_pipeline.core.locks import end_interrupted_query
from archive_pipeline.core.periods import Period, as_period
from archive_pipeline.core.session_settings import CATALOG_FIRST, apply_settings
from archive_pipeline.core.sqltext import CatalogText

DAY_COLUMN_TYPES = {"date", "timestamp", "timestamptz"}

# Session settings that make COPY's text output unambiguous and reproducible whatever the
# server's or role's defaults are: UTC timestamps in ISO form, shortest exact floats, hex bytea.
SNAPSHOT_SETTINGS = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "iso_8601",
    "extra_float_digits": "1",
    "bytea_output": "hex",
    "client_encoding": "UTF8",
    # money is archived as numeric, whose scale money's cast takes from lc_monetary: the restore reads it
    # back, and the fingerprint prints it, under "C" (2 digits), so the archive writes it under "C" too (a
    # locale of 0 or 3 digits, ja_JP or ar_KW, gave amounts that restored 100 times larger or rounded)
    "lc_monetary": "C",
    # Our SQL's string literals ('\u0000', regular expressions) are written for standard strings: with
    # this off (a legacy role or database default) a backslash in them would be an escape.
    "standard_conforming_strings": "on",
    # A policy that would hide rows raises instead (42501): an archive of the rows a role may see is
    # not the day's rows. Owners (without FORCE), BYPASSRLS roles and superusers are not affected.
    "row_security": "off",
    # Every function, operator and type name our queries use (>=, row_to_json, concat, hashtextextended,
    # ::numeric ...) resolves to PostgreSQL's own, whatever schema the role's path puts first: a user's
    # ``>=`` on date in a schema listed before pg_catalog would otherwise pick the day's rows. The
    # session's own path follows (see session_settings), for the user's functions our reads run.
    "search_path": CATALOG_FIRST,
    # Names as the catalog spells them: with this on (a role set up for pg_dump), format_type printed
    # "text" quoted, types were misread (a Parquet column failed with ArrowInvalid) and a manifest's
    # types differed from the same table's read in another session.
    "quote_all_identifiers": "off",
    # Our catalog queries are recursive walks whose row estimates (thousands) exceed jit_above_cost: compiling them
    # took ~24 ms a query, half the fixed cost of a small day, for plans that run in under a millisecond. The
    # day's own read and its fingerprint run no faster with it (measured on the 1M-row benchmark day).
    "jit": "off",
    # Formats that build a list of an array's elements by reading its printed form back as text[] (Parquet's
    # numeric[] and enum arrays, formats.common.element_texts) read an unquoted NULL as a NULL element only with
    # this on: a role's array_nulls = off archived the string "NULL" for it, green and recorded exact.
    "array_nulls": "on",
    # Our probes catch an ERROR inside a savepoint (a domain refusing NULL, a value failure's column): a role's
    # exit_on_error = on made each one FATAL and ended the session (see session_settings.SESSION_PINNED).
    "exit_on_error": "off",
}

# Settings of every session that reads the day's rows into the archive (the archive's own session where it reads
# alone, each stream's, the Parquet reader's), for the README's "byte-identical from run to run": rows in the order
# the relation holds them, as pg_dump reads them. Not the fingerprint's (a sum: any order proves the same rows).
READ_SETTINGS = {
    # on (the default), a sequential scan of a table over a quarter of shared_buffers starts where another
    # client's last scan of it stopped (a report's LIMIT, the fingerprint's scan alongside) and wraps around
    "synchronize_seqscans": "off",
    # a Gather over a Parallel Seq Scan returns rows in whatever order the leader and its workers produce them;
    # the archive's own streams are what split a day (one stream, one backend)
    "max_parallel_workers_per_gather": "0",
}


# One node of a column's type, as a composite's values depend on it: (its way from the column: steps as in
# InnerType joined by spaces, "" for the column's own type; the type: a built-in type's name, or the kind of a
# user's, whose name may change harmlessly; a composite's field names in order, else None; the type's name now,
# for messages)
ShapeNode = tuple[str, str, tuple[str, ...] | None, str]


@dataclass(frozen=True)
class Column:
    """A column as the catalog describes it; ``base_type`` sees through domains and arrays."""

    name: str
    type_name: str  # format_type(): e.g. "numeric(12,2)", "timestamp with time zone", "text[]"
    # the element's type through domains at any depth: its name for a built-in type ("numeric", "jsonb"),
    # schema.name for any other (a user's type named uuid or json is not taken for the built-in one)
    base_type: str
    is_array: bool
    not_null: bool
    precision: int | None = None
    scale: int | None = None
    is_enum: bool = False
    # the base (element) type has a cast to json, which row_to_json and to_json call instead of its
    # output function (an enum's owner may create one: it is the user's function, not the value); the formats
    # never hand a value of a user's type to either (an enum is written by its labels' texts), so this only keeps
    # an enum with such a cast written as before (JSONL: its text, an array's literal)
    json_cast: bool = False
    text_cast: bool = False  # ... and a cast to text, which ``::text`` would call instead of its output function
    # ... a cast to text a user created (a built-in type's pinned casts cannot be replaced, but one without a
    # cast to text may be given one: a DBA's compatibility cast, which the fingerprint must not hash through)
    user_text_cast: bool = False
    # how many arrays deep the element is (through domains): 0 for a scalar, 1 for int[] or int[][], 2 for an
    # array of a domain over int[] (an array of arrays, each of its own length: see :attr:`nested`)
    arrays: int = 0
    # the types of :data:`INNER_TYPES` anywhere inside the column's type (see :func:`inner_types`)
    inner: tuple[InnerType, ...] = ()
    # the numbers (:data:`NUMBER_TYPES`) inside a composite or range of the column's type: what a
    # restore checks the type still holds there (a composite's double retyped real reads 0.1 as another value)
    numbers: tuple[InnerType, ...] = ()
    # the :data:`UNREADABLE_TYPES` anywhere in the column's type (its own, an array's element, a field...)
    unreadable: tuple[InnerType, ...] = ()
    # of a column holding a composite anywhere: its type's shape (see :func:`composite_shapes`)
    shape: tuple[ShapeNode, ...] = ()
    # how the fingerprint hashes it where not as its own type: as the archived column's (see fingerprint.as_archived)
    hash_as: str | None = None

    @property
    def nested(self) -> bool:
        """An array whose elements are arrays (through a domain): its elements are no values of ``base_type``, so
        every format writes it as its literal (xml's as its elements' stored texts, see :func:`xml_array_text`)."""
        return self.arrays > 1

    def cast_name(self, base: str) -> str:
        """The SQL type to cast this column to, keeping it an array if it is one."""
        return f"{base}[]" if self.is_array else base


@dataclass(frozen=True)
class InnerType:
    """A type found inside a column's type: how to reach a value of it, and the way there in words."""

    type: str  # pg_catalog's name of it ("regproc", "pg_node_tree")
    # from the column's value to this type's: "[]" an array's elements, ".name" a composite's field,
    # "range" a range's bounds, "multirange" its ranges, "domain" a domain's base (nothing to do)
    steps: tuple[str, ...]
    route: str  # e.g. "public.c[] → element public.c → field t pg_node_tree"


# How a step of an InnerType's way reaches the values one level down, as a LATERAL source of v(v) (unnest
# in a subquery: in FROM, a set of composites would be expanded to its fields).
_STEP_SOURCES = {"[]": "(SELECT pg_catalog.unnest({v}))", "multirange": "(SELECT pg_catalog.unnest({v}))",
                 "range": "(VALUES (pg_catalog.lower({v})), (pg_catalog.upper({v})))"}


# As _STEP_SOURCES, but only the values a restore's input is given: an infinite or empty range's bound is none
# (its input reads no bound there; lower() and upper() return NULL for it).
_READ_STEP_SOURCES = {
    **_STEP_SOURCES,
    "range": "(SELECT pg_catalog.lower({v}) WHERE NOT pg_catalog.isempty({v}) AND NOT pg_catalog.lower_inf({v}) "
             "UNION ALL SELECT pg_catalog.upper({v}) WHERE NOT pg_catalog.isempty({v}) "
             "AND NOT pg_catalog.upper_inf({v}))"}


def found_inside(column: sql.Composable, inner: InnerType, test: Callable[[sql.Composable], sql.Composable],
                 *, as_read: bool = False) -> sql.Composed:
    """Whether ``test`` (of one value) is true of any value at the end of ``inner``'s way through the value of
    ``column`` (an expression: the column's name, qualified or not): each step a LATERAL join (an array's
    elements, a field, a range's bounds). ``as_read``: only the values a restore's input reads (see
    :func:`walk_inside`), where a NULL matters as such."""
    sources, value = walk_inside(inner, as_read=as_read)
    return sql.SQL("EXISTS (SELECT FROM (SELECT {c}) AS s0(v) {sources} WHERE {t})").format(
        c=column, sources=sources, t=test(value))


def walk_inside(inner: InnerType, *, as_read: bool = False) -> tuple[sql.Composed, sql.Composable]:
    """(LATERAL joins, value) that reach every value at the end of ``inner``'s way from ``s0.v`` (a column's
    value): an array's elements, a composite's field, a range's bounds, a multirange's ranges. ``as_read``: only
    those a restore's input reads, where a NULL is one (a NULL composite's fields and an infinite or empty range's
    bounds are not: their NULLs are no values a domain's NOT NULL refuses)."""
    sources, value = [], sql.SQL("s0.v")
    for depth, step in enumerate(inner.steps, start=1):
        if step == "domain":
            continue
        if step.startswith("."):
            source = sql.SQL("(SELECT ({v}).{f}{only})").format(
                v=value, f=sql.Identifier(step[1:]),
                # (num_nulls: whether the composite is NULL, not whether all its fields are, as IS NULL says)
                only=sql.SQL(" WHERE pg_catalog.num_nulls({}) = 0").format(value) if as_read else sql.SQL(""))
        else:
            source = sql.SQL((_READ_STEP_SOURCES if as_read else _STEP_SOURCES)[step]).format(v=value)
        sources.append(sql.SQL("CROSS JOIN LATERAL {} AS {}(v)").format(source, sql.Identifier(f"s{depth}")))
        value = sql.SQL("{}.v").format(sql.Identifier(f"s{depth}"))
    return sql.SQL(" ").join(sources), value


def xml_in_fields(column) -> list[InnerType]:
    """The xml values a column holds inside a composite's field (at any depth, through arrays and domains): written
    by the composite's output, which drops or rewrites an XML declaration (an xml column and an array of xml are
    written as their stored text)."""
    return [t for t in getattr(column, "unreadable", ()) if t.type == "xml" and any(s.startswith(".") for s in t.steps)]


def rewritten_xml_inside(column, value: sql.Composable) -> sql.Composable | None:
    """A condition true where an xml value inside a composite's field of ``column`` (whose value ``value`` is)
    has a stored text its output does not print (see :func:`xml_in_fields`); None for a column without one."""
    inside = [found_inside(value, inner, xml_rewritten) for inner in xml_in_fields(column)]
    return sql.SQL("({})").format(sql.SQL(" OR ").join(inside)) if inside else None


def xml_rewritten(value: sql.Composable) -> sql.Composed:
    """Whether an xml ``value``'s stored text is not what xml's output prints (an XML declaration it drops or
    rewrites): where only the output is written (a composite's field), that text would be lost."""
    return sql.SQL("{v} IS NOT NULL AND {v}::pg_catalog.text <> pg_catalog.concat({v})").format(v=value)


def xml_array_text(value: sql.Composable, arrays: int = 1) -> sql.Composed:
    """The literal of an array of xml ``arrays`` deep (through domains: an array of a domain over xml[] is 2) with
    each xml element as its stored text (``::text``), which xml's output (what array_out prints) does not keep
    where it drops or rewrites an XML declaration; NULL for NULL. One deep: through ``text[]``, element by element,
    bounds and dimensions kept. Deeper: each element is such a literal itself, put into its array's literal as
    array_out would (see :func:`_array_literal`): xml's input reads it back to the same stored texts, and an array
    whose elements print as stored gives its own output exactly."""
    if arrays <= 1:
        return sql.SQL("(({})::pg_catalog.xml[]::pg_catalog.text[])::pg_catalog.text").format(value)
    return _array_literal(value, lambda element: xml_array_text(element, arrays - 1), arrays)


def _array_literal(value: sql.Composable, element_text: Callable[[sql.Composable], sql.Composable],
                   level: int) -> sql.Composed:
    """The literal array_out prints for the array ``value`` (any dimensions and bounds), but with each non-NULL
    element printed as ``element_text`` of it: quoted as array_out quotes a text (that of a one-element text[]),
    the dimensions' decoration where a lower bound is not 1, and the braces of each dimension around its elements
    in storage order (an element opens a brace for each dimension whose sub-array it starts, closes one for each
    it ends: by the products of the later dimensions' lengths). ``level`` keeps the aliases of nested ones apart."""
    names = {k: sql.Identifier(f"{k}{level}") for k in ("u", "s", "p", "x", "l", "z")}
    return sql.SQL(
        "CASE WHEN {v} IS NOT NULL THEN (SELECT CASE WHEN pg_catalog.cardinality({v}) = 0 THEN '{{}}' ELSE "
        "CASE WHEN pg_catalog.array_dims({v}) ~ '\\[(?!1:)' THEN pg_catalog.array_dims({v}) || '=' ELSE '' END || "
        "pg_catalog.string_agg(pg_catalog.repeat('{{', (SELECT pg_catalog.count(*)::pg_catalog.int4 FROM "
        "pg_catalog.unnest({s}.n) AS {z}(n) WHERE ({u}.i - 1) % {z}.n = 0)) || {u}.q || pg_catalog.repeat('}}', "
        "(SELECT pg_catalog.count(*)::pg_catalog.int4 FROM pg_catalog.unnest({s}.n) AS {z}(n) WHERE {u}.i % {z}.n = 0)"
        "), ',' ORDER BY {u}.i) END "
        # (the products of the lengths of each dimension and those after it: the sizes of its sub-arrays)
        "FROM (WITH RECURSIVE {p}(d, n) AS (SELECT pg_catalog.array_ndims({v}), pg_catalog.array_length({v}, "
        "pg_catalog.array_ndims({v})) UNION ALL SELECT {p}.d - 1, {p}.n * pg_catalog.array_length({v}, {p}.d - 1) "
        "FROM {p} WHERE {p}.d > 1) SELECT pg_catalog.array_agg({p}.n) FROM {p}) AS {s}(n) "
        "CROSS JOIN LATERAL (SELECT {x}.i, CASE WHEN {x}.e IS NULL THEN 'NULL' ELSE pg_catalog.substr({l}.t, 2, "
        "pg_catalog.length({l}.t) - 2) END FROM pg_catalog.unnest({v}) WITH ORDINALITY AS {x}(e, i) "
        "CROSS JOIN LATERAL (SELECT pg_catalog.concat(ARRAY[{t}]::pg_catalog.text[])) AS {l}(t)) AS {u}(i, q)) END"
    ).format(v=value, t=element_text(sql.SQL("{}.e").format(names["x"])), **names)


def relation_name(schema: str, name: str) -> str:
    """A relation as messages and results name it: ``schema.name``, the form configured names take (split at
    the first dot), unless that form would read back as another relation: the schema holds a dot (a partition may
    live in any schema: ``"old.data".events`` is not ``old``.``data.events``), or a part starts with a double quote
    (``S."x"`` reads as the table ``x``, not ``"x"``) or has white space around it (which ``restore --target``
    refuses as a pasting slip); then both parts double-quoted as SQL writes them, which reads back as this
    relation (``restore --target`` takes that form too)."""
    if "." not in schema and not any(part.startswith('"') or part != part.strip() for part in (schema, name)):
        return f"{schema}.{name}"
    return ".".join('"' + part.replace('"', '""') + '"' for part in (schema, name))


@dataclass(frozen=True)
class SourceTable:
    schema: str
    name: str
    relkind: str
    columns: tuple[Column, ...]
    day_column: Column | None  # None: the whole table is the day (naming mode)
    oid: int | None = None  # the relation the catalog lookup found (in the caller's snapshot)
    encoding: str | None = None  # the database's server_encoding (what a JSON \u escape can become in it)
    # a partitioned table's key, where it is one expression of the day column that only converts, truncates or
    # shifts it (see _key_expression and day_filter): as pg_get_expr prints it
    key_expression: str | None = None

    @property
    def qualified(self) -> str:
        return relation_name(self.schema, self.name)

    @property
    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)


@dataclass(frozen=True)
class Snapshot:
    taken_at: dt.datetime
    server_version: str
    snapshot_id: str  # lets a second connection (the Arrow reader) see exactly the same data
    release: Callable[[], None] = lambda: None  # end the read transaction now (idempotent)


# The relation, the columns the role may not read (none with SELECT on the table, or with SELECT
# granted on every column: either reads every value of every row), and that role: the one the session acts as
# (SET ROLE), whose privileges those checks ask, not the one it logged in as.
_TABLE_QUERY = """
SELECT c.oid, c.relkind, pg_catalog.has_any_column_privilege(c.oid, 'SELECT'),
       ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
               AND NOT pg_catalog.has_table_privilege(c.oid, 'SELECT')
               AND NOT pg_catalog.has_column_privilege(c.oid, a.attnum, 'SELECT')
             ORDER BY a.attnum),
       CURRENT_USER::text
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
"""

# A column's type is walked through any number of domains and arrays to its element type: base_type is the
# type at the end of the walk (``CREATE DOMAIN d2 AS d1`` over jsonb is jsonb; ``d1[]`` is an array of jsonb;
# an array of a domain over xml[] is xml, ``arrays`` deep: 2). The type modifier is the first one set along the
# walk (a domain's own, e.g. numeric(10,2), or the column's). An array of arrays (through a domain: nested) is
# archived as its literal like any type without a special encoding, xml's excepted (its elements' stored texts,
# see formats.common.xml_text); walking it to the end keeps every check that asks base_type (xml's texts, a type
# PostgreSQL cannot read back) from taking its inner array type for a type of its own. An array is its element
# type's array type: int2vector and oidvector, arrays of int2 and oid indexed from 0 that print as "1 2 3", are
# types of their own.
_COLUMNS_QUERY = """
SELECT a.attnum, a.attname,
       pg_catalog.format_type(a.atttypid, a.atttypmod),
       CASE WHEN base.typnamespace = 'pg_catalog'::regnamespace THEN base.typname::text
            ELSE base.typnamespace::regnamespace::text || '.' || base.typname END,
       b.is_array,
       -- (NOT NULL of every row the read returns: an inheritance parent's, set ONLY on it, keeps no child's NULL
       -- out; a partitioned table's holds for its partitions, which PostgreSQL keeps NOT NULL with it; a foreign
       -- table's, the configured one or a partition or child at any depth, keeps nothing out: PostgreSQL does not
       -- enforce it on the remote rows, and returns their NULLs)
       a.attnotnull AND NOT tree.remote AND (r.relkind = 'p' OR NOT EXISTS (
           WITH RECURSIVE below(oid) AS (
               SELECT i.inhrelid FROM pg_catalog.pg_inherits i WHERE i.inhparent = a.attrelid
               UNION
               SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN below ON i.inhparent = below.oid)
           SELECT FROM below JOIN pg_catalog.pg_attribute d ON d.attrelid = below.oid AND d.attname = a.attname
           WHERE NOT d.attnotnull)),
       CASE WHEN base.typname = 'numeric' AND b.typmod > 0 THEN ((b.typmod - 4) >> 16) & 65535 END,
       CASE WHEN base.typname = 'numeric' AND b.typmod > 0 THEN (((b.typmod - 4) & 2047) # 1024) - 1024 END,
       base.typtype = 'e',
       EXISTS (SELECT FROM pg_catalog.pg_cast c
               WHERE c.castsource = base.oid AND c.casttarget = 'pg_catalog.json'::pg_catalog.regtype),
       EXISTS (SELECT FROM pg_catalog.pg_cast c
               WHERE c.castsource = base.oid AND c.casttarget = 'pg_catalog.text'::pg_catalog.regtype),
       EXISTS (SELECT FROM pg_catalog.pg_cast c  -- (16384: FirstNormalObjectId, the first OID not PostgreSQL's own)
               JOIN pg_catalog.pg_type s ON s.oid = c.castsource AND s.typtype <> 'd'  -- (a domain's: ignored)
               -- (the element's, the column's array type's own, or the array type a domain is over)
               WHERE c.castsource IN (base.oid, a.atttypid, CASE WHEN b.is_array THEN base.typarray END)
                 AND c.casttarget = 'pg_catalog.text'::pg_catalog.regtype AND c.oid >= 16384),
       b.arrays
FROM pg_catalog.pg_attribute a
CROSS JOIN LATERAL (
    WITH RECURSIVE walk(oid, typmod, arrays, depth) AS (
        SELECT a.atttypid, a.atttypmod, 0, 0
        UNION ALL
        SELECT CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.typelem END,
               CASE WHEN w.typmod <> -1 THEN w.typmod WHEN t.typtype = 'd' THEN t.typtypmod ELSE -1 END,
               w.arrays + CASE WHEN t.typtype = 'd' THEN 0 ELSE 1 END,
               w.depth + 1
        FROM walk w JOIN pg_catalog.pg_type t ON t.oid = w.oid
        WHERE (t.typtype = 'd' OR (t.typcategory = 'A' AND t.typelem <> 0 AND EXISTS (
            SELECT FROM pg_catalog.pg_type e WHERE e.oid = t.typelem AND e.typarray = t.oid))) AND w.depth < 64
    )
    SELECT oid, typmod, arrays > 0 AS is_array, arrays FROM walk ORDER BY depth DESC LIMIT 1
) AS b
JOIN pg_catalog.pg_type base ON base.oid = b.oid
JOIN pg_catalog.pg_class r ON r.oid = a.attrelid
CROSS JOIN (  -- (once for the relation, not once per column)
    SELECT EXISTS (
        WITH RECURSIVE member(oid) AS (
            SELECT %(oid)s::pg_catalog.oid
            UNION
            SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN member ON i.inhparent = member.oid)
        SELECT FROM member JOIN pg_catalog.pg_class f ON f.oid = member.oid WHERE f.relkind = 'f')) AS tree(remote)
WHERE a.attrelid = %(oid)s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""


# Types PostgreSQL prints but never reads back (their input function refuses every value): the
# planner's and the statistics' own, which a table can still hold (INSERT ... SELECT from the catalog).
WRITE_ONLY_TYPES = frozenset({"pg_node_tree", "pg_ndistinct", "pg_dependencies", "pg_mcv_list", "gtsvector",
                              "pg_brin_bloom_summary", "pg_brin_minmax_multi_summary"})
# pg_catalog types whose values matter wherever they sit inside a column's type: those above, and
# regproc and regoper, whose names may not read back (formats.common.ambiguous_name).
INNER_TYPES = (*sorted(WRITE_ONLY_TYPES), "regproc", "regoper")

# Every column's type walked as a tree, in one query: a domain to its base type, an array to its
# element type, a composite to its fields' types, a range to its subtype, a multirange to its range.
# A composite cannot contain itself (PostgreSQL refuses it), so the walk ends; the depth bound is a guard.
# The route's steps are joined here, not in SQL: the statement stays ASCII, which a database whose encoding
# has no arrow (LATIN1) can read (an arrow in it failed every archive there: UntranslatableCharacter).
_WALK_DEPTH = 64
_TYPE_WALK = """
WITH RECURSIVE walk(attnum, oid, typmod, steps, route, depth) AS (
    SELECT a.attnum, a.atttypid, a.atttypmod, ARRAY[]::text[], ARRAY[pg_catalog.format_type(a.atttypid, NULL)], 0
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = %(oid)s AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT w.attnum, c.oid, c.typmod, w.steps || (c.step COLLATE "default"),
           w.route || ((c.label COLLATE "default") || pg_catalog.format_type(c.oid, NULL)),
           w.depth + 1
    FROM walk w JOIN pg_catalog.pg_type t ON t.oid = w.oid
    CROSS JOIN LATERAL (  -- (the type modifier: a domain's own, a field's, an array's for its elements)
        SELECT t.typbasetype, t.typtypmod, 'domain', 'base type ' WHERE t.typtype = 'd'
        UNION ALL
        SELECT t.typelem, w.typmod, '[]', 'element ' WHERE t.typtype <> 'd' AND t.typcategory = 'A' AND t.typelem <> 0
            AND EXISTS (SELECT FROM pg_catalog.pg_type e WHERE e.oid = t.typelem AND e.typarray = t.oid)
        UNION ALL
        SELECT f.atttypid, f.atttypmod, '.' || f.attname::text, 'field ' || f.attname::text || ' '
        FROM pg_catalog.pg_attribute f
        WHERE t.typtype = 'c' AND f.attrelid = t.typrelid AND f.attnum > 0 AND NOT f.attisdropped
        UNION ALL
        SELECT r.rngsubtype, -1, 'range', 'subtype ' FROM pg_catalog.pg_range r WHERE r.rngtypid = t.oid
        {multirange}
    ) AS c(oid, typmod, step, label)
    WHERE w.depth < """ + str(_WALK_DEPTH) + """
)"""
# the shape nodes (see composite_shapes: every node of each column whose type holds a composite) a relation's columns
# may hold together: as many as a manifest records (manifest's MAX_SHAPE_NODES is this), so what one records the
# source accepts; a type nesting each type twice in the next doubles per level, 2**64 nodes within the depth bound,
# which every query on the walk would spend hours and the server's disk on
MAX_TYPE_NODES = 1_000_000
# the most nodes the walk gives for a column holding no composite: without a field to branch at, its type is a chain
# (domain to base, array to element, range to subtype, multirange to range), one node per depth the walk reaches
_CHAIN_NODES = _WALK_DEPTH + 1
_WALK_SIZE_QUERY = _TYPE_WALK + """, sample AS (
    SELECT w.attnum, t.typtype = 'c' AS composite FROM walk w JOIN pg_catalog.pg_type t ON t.oid = w.oid
    LIMIT %(limit)s),
shaped AS (SELECT attnum, pg_catalog.count(*) AS nodes FROM sample GROUP BY attnum HAVING pg_catalog.bool_or(composite))
SELECT (SELECT pg_catalog.count(*) FROM sample), (SELECT pg_catalog.sum(nodes) FROM shaped),
       (SELECT pg_catalog.count(*) FROM shaped), (SELECT attnum FROM shaped ORDER BY nodes DESC, attnum LIMIT 1),
       (SELECT pg_catalog.max(nodes) FROM shaped)
"""  # (the LIMIT: PostgreSQL walks only as far as it is read, so a type past the bound costs the bound)
_INNER_QUERY = _TYPE_WALK + """
SELECT w.attnum, t.typname::text, w.steps, w.route
FROM walk w JOIN pg_catalog.pg_type t ON t.oid = w.oid
WHERE t.typnamespace = 'pg_catalog'::regnamespace AND t.typname::text = ANY(%(types)s)
ORDER BY w.attnum, w.depth, w.route
"""
_SHAPE_QUERY = _TYPE_WALK + """
SELECT w.attnum, w.steps,
       CASE WHEN t.typnamespace = 'pg_catalog'::regnamespace THEN pg_catalog.format_type(w.oid, w.typmod)
            ELSE CASE t.typtype WHEN 'c' THEN 'a composite' WHEN 'e' THEN 'an enum' WHEN 'd' THEN 'a domain'
                                WHEN 'r' THEN 'a range' WHEN 'm' THEN 'a multirange' ELSE 'a base type' END END,
       CASE WHEN t.typtype = 'c' THEN ARRAY(SELECT f.attname::text FROM pg_catalog.pg_attribute f
                                            WHERE f.attrelid = t.typrelid AND f.attnum > 0 AND NOT f.attisdropped
                                            ORDER BY f.attnum) END,
       pg_catalog.format_type(w.oid, NULL)
FROM walk w JOIN pg_catalog.pg_type t ON t.oid = w.oid
ORDER BY w.attnum, w.depth, w.steps
"""
_MULTIRANGE_STEP = """UNION ALL
        SELECT r.rngtypid, -1, 'multirange', 'range ' FROM pg_catalog.pg_range r WHERE r.rngmultitypid = t.oid"""


NUMBER_TYPES = ("float4", "float8", "numeric")
# Types whose functions can build values their input then refuses (see formats.common.UNREADABLE_VALUES):
# looked for at any depth of a column's type, its own included.
UNREADABLE_TYPES = ("xml", "circle", "aclitem")


def nested_numbers(found: tuple[InnerType, ...]) -> tuple[InnerType, ...]:
    """Of the types found inside a column's, the numbers reached through a composite's field, a range or a
    domain (not a plain column's own type, whose name the manifest records: the restore compares that by its
    base type). A domain's base is recorded since its name alone says nothing in another database: a domain
    ``amount`` over double precision there and over real here read 0.1 as another value, proven green."""
    return tuple(t for t in found if t.type in NUMBER_TYPES
                 and any(step.startswith(".") or step in ("range", "multirange", "domain") for step in t.steps))


def bounded_walk(conn: psycopg.Connection, oid: int, relation: str) -> None:
    """Refuse relation ``oid`` (``relation``, as messages name it) where its columns' shapes (the nodes of each column
    whose type holds a composite, :func:`composite_shapes`) hold more than MAX_TYPE_NODES nodes, as a manifest counts
    them (manifest.MAX_SHAPE_NODES): before any query walks them whole, and never a table a manifest records.

    The walk is read up to MAX_TYPE_NODES plus :data:`_CHAIN_NODES` per column: a walk that gives more holds more
    than MAX_TYPE_NODES shape nodes (the other columns give at most that many each); one that ends before is counted
    exactly. The columns without a composite are not counted: a manifest records no shape for them (counting them
    refused a table an earlier release had archived, naming a column whose own type was small)."""
    query = _WALK_SIZE_QUERY.format(multirange=_MULTIRANGE_STEP if conn.info.server_version >= 140000 else "")
    names = column_names(conn, oid)
    bound = MAX_TYPE_NODES + _CHAIN_NODES * len(names)
    walked, nodes, shaped, attnum, most = conn.execute(query, {"oid": oid, "limit": bound + 1}).fetchone()
    cut = walked > bound  # (read no further: more than MAX_TYPE_NODES shape nodes, the counts below only a part)
    if not cut and (nodes or 0) <= MAX_TYPE_NODES:
        return
    if (most or 0) > MAX_TYPE_NODES:  # one column's own type is past the limit
        column = names.get(attnum, f"number {attnum}")
        raise SourceError(f"table {relation!r}: the type of column {column!r} unfolds to more than "
                          f"{MAX_TYPE_NODES:,} nodes (composites, arrays, domains and ranges nested in it), more than "
                          "an archive records", table=relation, retryable=False, cause=SETTING_MISFITS,
                          remedy=f"archive column {column!r} as text or JSON (a view selecting it so), or give it a "
                                 "type that nests fewer composites")
    held = f"more than {MAX_TYPE_NODES:,} nodes together" if cut else \
        f"{nodes:,} nodes together, none of them over {MAX_TYPE_NODES:,} alone"  # (cut: one walked in part may be)
    raise SourceError(f"table {relation!r}: the types of its {'' if cut else f'{shaped:,} '}columns holding a "
                      f"composite unfold to {held} (composites, arrays, domains and ranges nested in them), more "
                      f"than an archive records",
                      table=relation, retryable=False, cause=SETTING_MISFITS,
                      remedy="archive fewer of its columns holding a composite, or some of them as text or JSON (a "
                             "view selecting them so), or split the table")


def composite_shapes(conn: psycopg.Connection, oid: int) -> dict[int, tuple[ShapeNode, ...]]:
    """Per column number of relation ``oid``, the shape of a column whose type holds a composite anywhere (itself,
    an array's element, a field's, a range's subtype): every node of its type tree with its way from the column,
    and each composite's field names in order. A composite's text is positional, so a field added, dropped,
    retyped or renamed since the day was archived reads the archived values into other fields, or fails:
    recorded in the manifest, it is compared with the target's (see :func:`shape_changes`)."""
    query = _SHAPE_QUERY.format(multirange=_MULTIRANGE_STEP if conn.info.server_version >= 140000 else "")
    found: dict[int, list[ShapeNode]] = {}
    for attnum, steps, kind, fields, name in conn.execute(query, {"oid": oid}):
        found.setdefault(attnum, []).append((" ".join(steps), kind, tuple(fields) if fields is not None else None,
                                             name))
    return {attnum: tuple(nodes) for attnum, nodes in found.items() if any(n[2] is not None for n in nodes)}


_ALTERED_QUERY = _TYPE_WALK + """
SELECT DISTINCT w.attnum FROM walk w JOIN pg_catalog.pg_type t ON t.oid = w.oid
WHERE t.typtype = 'c' AND EXISTS (SELECT FROM pg_catalog.pg_attribute f
                                  WHERE f.attrelid = t.typrelid AND f.attnum > 0 AND f.attisdropped
                                  AND EXISTS (SELECT FROM pg_catalog.pg_attribute l WHERE l.attrelid = t.typrelid
                                              AND l.attnum > f.attnum AND NOT l.attisdropped))
"""  # (a dropped field with a live one after it: a last field dropped moved nothing)


def altered_composites(conn: psycopg.Connection, relation: str) -> set[str]:
    """The columns of ``relation`` whose type holds, anywhere, a composite that has lost a field since it was
    created, a field after it still there (a dropped attribute stays in the catalog): those may have moved. What a manifest
    without a recorded shape (written before shapes were) can still be checked by."""
    oid = conn.execute("SELECT pg_catalog.to_regclass(%s)::pg_catalog.oid", (relation,)).fetchone()[0]
    if oid is None:
        return set()
    query = _ALTERED_QUERY.format(multirange=_MULTIRANGE_STEP if conn.info.server_version >= 140000 else "")
    names = column_names(conn, oid)
    return {names[attnum] for (attnum,) in conn.execute(query, {"oid": oid}) if attnum in names}


def _way(at: str) -> str:
    """A shape node's way from its column in words: "field leaves → element → field f"."""
    words = {"[]": "element", "domain": "base type", "range": "subtype", "multirange": "range"}
    return " → ".join(f"field {step[1:]}" if step.startswith(".") else words.get(step, step) for step in at.split())


def column_names(conn: psycopg.Connection, oid: int) -> dict[int, str]:
    """The columns of relation ``oid`` by number (dropped ones left out)."""
    return dict(conn.execute("SELECT attnum, attname::text FROM pg_catalog.pg_attribute WHERE attrelid = %s "
                             "AND attnum > 0 AND NOT attisdropped", (oid,)).fetchall())


def relation_shapes(conn: psycopg.Connection, relation: str) -> dict[str, tuple[ShapeNode, ...]]:
    """Every column of ``relation`` (a name as SQL writes it) by name, with its shape (empty: no composite in
    it); nothing for a relation that is not there."""
    oid = conn.execute("SELECT pg_catalog.to_regclass(%s)::pg_catalog.oid", (relation,)).fetchone()[0]
    if oid is None:
        return {}
    bounded_walk(conn, oid, relation)
    names = column_names(conn, oid)
    shapes = composite_shapes(conn, oid)
    return {name: shapes.get(attnum, ()) for attnum, name in names.items()}


def shape_changes(recorded: Sequence[dict], now_by_name: dict[str, tuple[ShapeNode, ...]]) -> list[str]:
    """How the composites inside the columns (their shapes now, by name) differ from the shapes a manifest recorded
    (its ``columns[].shape``; a column it records none for, or not at all, is not compared): a composite's fields
    renamed, added, dropped or reordered, a node's type changed. Empty where they are the same. Each change is said
    once, its columns and the places in them named up to a few and counted: one type changed inside a 1,600-field
    composite, or in 1,000 columns, made a failure of 200,000 characters said once per place."""
    changes: dict[tuple[str, str], dict[str, list[str]]] = {}  # a change's words around its place -> column -> places
    for entry in recorded:
        shape = entry.get("shape")
        if not shape or entry.get("name") not in now_by_name:
            continue
        if not now_by_name[entry["name"]]:  # no composite in it any more (a column retyped: said where columns are)
            continue
        then = {n["at"]: (n["type"], tuple(n["fields"]) if n.get("fields") is not None else None) for n in shape}
        here = {at: (kind, fields) for at, kind, fields, _ in now_by_name[entry["name"]]}
        names = {at: name for at, _, _, name in now_by_name[entry["name"]]}
        told: set[str] = set()  # ways whose difference is said: nothing below them is said again
        for at in sorted(then.keys() | here.keys(), key=lambda way: (len(way.split()), way)):
            if _at_or_under(at, told):
                continue
            was, now = then.get(at), here.get(at)
            if was is None or now is None:
                change = ("", f" {'was added' if was is None else 'is gone'}")
            elif was[1] != now[1]:
                change = (f"the composite {names[at]} ", f" has the fields ({', '.join(now[1] or ())}) now, "
                                                          f"({', '.join(was[1] or ())}) when archived")
            elif was[0] != now[0] and (entry.get("shape_modifiers") or was[0] != names[at]):
                # (a shape recorded before it held type modifiers: compared with the type's name without them)
                change = ("", f" is {now[0]} now, {was[0]} when archived")
            else:
                continue
            changes.setdefault(change, {}).setdefault(entry["name"], []).append(f"at {_way(at)}" if at else "itself")
            told.add(at)
    return [f"{_columns_named(list(places))}: {before}"
            f"{_listed(list(dict.fromkeys(p for found in places.values() for p in found)), ' places')}{after}"
            for (before, after), places in changes.items()]


def _at_or_under(way: str, ways: set[str]) -> bool:
    """Whether the node at ``way`` is at, or under, a node at one of ``ways`` (its own way and those above it
    looked up, not every one of ``ways`` scanned: a change at each of 1,600 fields made that quadratic)."""
    while way not in ways:
        if not way:
            return False
        cut = way.rfind(" ")
        way = way[:cut] if cut >= 0 else ""
    return True


def names_brief(names: Sequence[str], shown: int = 12) -> str:
    """A list of column names as a message shows it: whole up to ``shown`` names, else the first ones and how many
    more (a table of 1,600 columns, or a manifest recording 20,000, made a failure of 190,000 characters)."""
    names = list(names)
    if len(names) <= shown:
        return repr(names)
    return f"{names[:shown]!r} and {len(names) - shown:,} more"


def _columns_named(names: list[str]) -> str:
    """"column 'a'", "columns 'a', 'b'", "columns 'a', 'b', 'c' and 997 more" (a wide table's change said once)."""
    return f"column {names[0]!r}" if len(names) == 1 else f"columns {names_few(names)}"


def names_few(names: Sequence[str]) -> str:
    """"'a', 'b', 'c' and 197 more": a few names quoted and the rest counted, as a sentence names them."""
    return _listed([repr(name) for name in names])


def _listed(texts: list[str], more: str = "", shown: int = 3) -> str:
    """"a, b, c and 997 more" (``more``: what they are, e.g. " places"): a message names a few and counts the rest."""
    return ", ".join(texts[:shown]) + (f" and {len(texts) - shown:,} more{more}" if len(texts) > shown else "")


def inner_types(conn: psycopg.Connection, oid: int, types: tuple[str, ...] = INNER_TYPES
                ) -> dict[int, tuple[InnerType, ...]]:
    """Per column number, the ``types`` (pg_catalog's names) inside its type at any depth (the column's own
    type too): a check on the column's type alone missed them in a composite, a range or a nested array."""
    query = _INNER_QUERY.format(multirange=_MULTIRANGE_STEP if conn.info.server_version >= 140000 else "")
    found: dict[int, list[InnerType]] = {}
    for attnum, name, steps, route in conn.execute(query, {"oid": oid, "types": list(types)}):
        found.setdefault(attnum, []).append(InnerType(name, tuple(steps), " → ".join(route)))
    return {attnum: tuple(types) for attnum, types in found.items()}


# The domains anywhere in every column's type that constrain their values (NOT NULL, or a CHECK): each with its
# name and base type as this session reads them (to cast a value through), and its CHECKs added NOT VALID (which
# PostgreSQL never checked on the values already there).
_DOMAIN_QUERY = _TYPE_WALK + """
SELECT w.attnum, w.steps, w.route, pg_catalog.format_type(t.oid, NULL),
       pg_catalog.format_type(t.typbasetype, t.typtypmod), t.typnotnull,
       ARRAY(SELECT c.conname::text FROM pg_catalog.pg_constraint c
             WHERE c.contypid = t.oid AND NOT c.convalidated ORDER BY c.conname)
FROM walk w JOIN pg_catalog.pg_type t ON t.oid = w.oid
WHERE t.typtype = 'd' AND (t.typnotnull OR EXISTS (SELECT FROM pg_catalog.pg_constraint c WHERE c.contypid = t.oid))
ORDER BY w.attnum, w.depth, w.route
"""


@dataclass(frozen=True)
class DomainAt:
    """A constrained domain inside a column's type, and what of its values may break it."""

    at: InnerType  # the way to its values (``type``: the domain's name)
    base: str  # its base type, as SQL writes it in this session
    not_valid: tuple[str, ...]  # its CHECKs added NOT VALID: any value may break them
    refuses_null: bool  # NOT NULL, or a CHECK false for NULL: a NULL let in past it breaks it


def breakable_domains(conn: psycopg.Connection, oid: int) -> dict[int, tuple[DomainAt, ...]]:
    """Per column number, the domains inside its type (at any depth, its own type too) a stored value may break,
    though PostgreSQL checks a domain's constraints on every value converted to it: a CHECK added NOT VALID (the
    values already there were never checked) or a domain refusing NULL (a NULL of the domain's type, from a scalar
    subquery of no row or an outer join, is stored unchecked: CREATE DOMAIN's documented hole). A domain refusing
    NULL through a CHECK alone is told by converting a NULL to it, once per domain. Catalog reads only."""
    query = _DOMAIN_QUERY.format(multirange=_MULTIRANGE_STEP if conn.info.server_version >= 140000 else "")
    found: dict[int, list[DomainAt]] = {}
    nulls: dict[str, bool] = {}
    for attnum, steps, route, name, base, not_null, not_valid in conn.execute(query, {"oid": oid}).fetchall():
        if name not in nulls:
            nulls[name] = not_null or _refuses_null(conn, name, base)
        if not_valid or nulls[name]:
            found.setdefault(attnum, []).append(DomainAt(InnerType(name, tuple(steps), " → ".join(route)), base,
                                                         tuple(not_valid), nulls[name]))
    return {attnum: tuple(domains) for attnum, domains in found.items()}


def domain_value(value: sql.Composable, domain: DomainAt) -> sql.Composed:
    """``value`` converted to ``domain`` again (through its base type: a value already of the domain's type is
    not checked), which raises where the value breaks one of its constraints."""
    return sql.SQL("CAST(CAST({v} AS {base}) AS {domain})").format(v=value, base=sql.SQL(domain.base),
                                                                  domain=sql.SQL(domain.at.type))


def _refuses_null(conn: psycopg.Connection, name: str, base: str) -> bool:
    """Whether the domain's CHECKs refuse a NULL (``CHECK (VALUE IS NOT NULL)``): a NULL converted to it fails."""
    try:
        with conn.transaction():  # (a savepoint: its failure must not abort the caller's snapshot)
            conn.execute(sql.SQL("SELECT {}").format(domain_value(sql.SQL("NULL"), DomainAt(
                InnerType(name, (), ""), base, (), False))))
    except psycopg.errors.OperationalError:
        raise
    except psycopg.Error:
        return True
    return False


# Types whose values print names read from the catalog as committed when the statement runs (not as the snapshot
# sees them), and the catalog relation of the objects each names.
_NAMED_BY_CATALOG = {
    "regclass": "pg_class", "regtype": "pg_type", "regproc": "pg_proc", "regprocedure": "pg_proc",
    "regoper": "pg_operator", "regoperator": "pg_operator", "regnamespace": "pg_namespace", "regrole": "pg_roles",
    "regconfig": "pg_ts_config", "regdictionary": "pg_ts_dict", "regcollation": "pg_collation",
}

# Every type a day's values may print through: the columns' types of the relation and, for a view, of the
# relations it reads (and the types its query casts to), walked into domains, arrays, composites and ranges;
# of those, the enum types' labels and the names of the pg_catalog types in _NAMED_BY_CATALOG.
_PRINTED_TYPES = """
WITH RECURSIVE {roots},
seeds(oid) AS (
    SELECT a.atttypid FROM pg_catalog.pg_attribute a JOIN roots ON a.attrelid = roots.oid
    WHERE a.attnum > 0 AND NOT a.attisdropped
    UNION
    SELECT d.refobjid FROM roots JOIN pg_catalog.pg_rewrite r ON r.ev_class = roots.oid
    JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = r.oid
     AND d.refclassid = 'pg_catalog.pg_type'::pg_catalog.regclass),
types(oid) AS (
    SELECT oid FROM seeds
    UNION
    SELECT c.oid FROM types JOIN pg_catalog.pg_type t ON t.oid = types.oid
    CROSS JOIN LATERAL ({parts}) AS c(oid))
SELECT 'enum', e.enumtypid::text || ':' || e.oid::text, e.enumlabel::text
FROM types JOIN pg_catalog.pg_enum e ON e.enumtypid = types.oid
UNION ALL
SELECT 'named', t.typname::text, '' FROM types JOIN pg_catalog.pg_type t ON t.oid = types.oid
WHERE t.typnamespace = 'pg_catalog'::pg_catalog.regnamespace AND t.typname::text = ANY(%(named)s)
ORDER BY 1, 2
"""

PrintedNames = tuple[tuple[str, str, str], ...]

# The types a type ``t`` (a row of pg_type) is made of, one level down, as a LATERAL source of c(oid): a domain's
# base type, an array's element type, a composite's fields' types, a range's subtype, a multirange's range (14+)
_TYPE_PARTS = """
        SELECT t.typbasetype WHERE t.typtype = 'd'
        UNION ALL
        SELECT t.typelem WHERE t.typtype <> 'd' AND t.typcategory = 'A' AND t.typelem <> 0
        UNION ALL
        SELECT f.atttypid FROM pg_catalog.pg_attribute f
        WHERE t.typtype = 'c' AND f.attrelid = t.typrelid AND f.attnum > 0 AND NOT f.attisdropped
        UNION ALL
        SELECT r.rngsubtype FROM pg_catalog.pg_range r WHERE r.rngtypid = t.oid
        {multirange}"""


def type_parts(conn: psycopg.Connection) -> str:
    """:data:`_TYPE_PARTS` for ``conn``'s server (multiranges from PostgreSQL 14 on)."""
    return _TYPE_PARTS.format(multirange="UNION ALL SELECT r.rngtypid FROM pg_catalog.pg_range r WHERE "
                                         "r.rngmultitypid = t.oid" if conn.info.server_version >= 140000 else "")


def printed_names(conn: psycopg.Connection, table: SourceTable, where: sql.Composable | None = None) -> PrintedNames:
    """What the day's values print from the catalog, as ``conn``'s snapshot has it: the labels of the enum
    types inside its columns' types (a view's: of the relations it reads, and the types its query casts to),
    and, for the catalog objects its reg* values name, each one's name as such a value prints it (see
    :func:`same_printed_names`). With the day's ``where``, those are the objects the day's values name (read
    in the snapshot); without it, or for a view (whose query may print names it does not return), every
    object of each kind: a rename of any then fails the run."""
    if table.oid is None:
        return ()
    query = _PRINTED_TYPES.format(roots=_ROOTS, parts=type_parts(conn))
    found = conn.execute(query, {"rel": table.identifier.as_string(conn), "also": [],
                                 "named": [*_NAMED_BY_CATALOG, "aclitem"]}).fetchall()
    names: list[tuple[str, str, str]] = [row for row in found if row[0] == "enum"]
    kinds = sorted({row[1] for row in found if row[0] == "named" and row[1] in _NAMED_BY_CATALOG})
    named = _named_in_day(conn, table, where, kinds) if kinds else {}
    for type_name in kinds:  # (the objects the day's values name, or, where they are not known, every one)
        names += [(f"named:{type_name}", key, name)
                  for key, name in _catalog_names(conn, type_name, None if named is None else named[type_name])]
    if any(row[0] == "named" and row[1] == "aclitem" for row in found):
        # an aclitem prints its grantee's and grantor's role names as committed when it is printed (ALTER ROLE ...
        # RENAME takes no lock the read holds): every role's name, as for a regrole of any role
        names += [("named:regrole", key, name) for key, name in _catalog_names(conn, "regrole")]
    return tuple(names)


def _named_in_day(conn: psycopg.Connection, table: SourceTable, where: sql.Composable | None,
                  kinds: list[str]) -> dict[str, list[int]] | None:
    """Per reg* type of ``kinds``, the oids the day's values name anywhere in its columns (an array's elements,
    a composite's fields ...), read in the caller's snapshot; None where they cannot all be found there (no day
    given, or a view: its query may print names through casts it does not return)."""
    if where is None or table.relkind == "v" or table.oid is None:
        return None
    columns = column_names(conn, table.oid)
    selects = []
    for attnum, inners in inner_types(conn, table.oid, tuple(kinds)).items():
        for inner in inners:
            sources, value = walk_inside(inner)
            selects.append(sql.SQL("SELECT {kind}::text, {v}::pg_catalog.oid FROM (SELECT {c} FROM {rel} WHERE {where}) "
                                   "AS d(c) CROSS JOIN LATERAL (SELECT d.c) AS s0(v) {sources}").format(
                kind=sql.Literal(inner.type), v=value, c=sql.Identifier(columns[attnum]), rel=table.identifier,
                where=where, sources=sources))
    named: dict[str, list[int]] = {kind: [] for kind in kinds}
    if selects:
        for kind, oid in conn.execute(sql.SQL("SELECT DISTINCT * FROM ({}) AS u(k, o) WHERE o IS NOT NULL").format(
                sql.SQL(" UNION ALL ").join(selects))):
            named[kind].append(oid)
    return named


def _catalog_names(conn: psycopg.Connection, type_name: str, oids: list[int] | None = None) -> list[tuple[str, str]]:
    """(oid, the name a ``type_name`` value of it prints now) of every object such a value may name (or of those
    of ``oids``): printed by the type's own output in this session, so all a value's text depends on is in it (a
    function's argument types, the schema a relation is qualified with where the path no longer finds it first)."""
    query = (f"SELECT x.oid::text, pg_catalog.concat(x.oid::pg_catalog.{type_name}) "
             f"FROM pg_catalog.{_NAMED_BY_CATALOG[type_name]} AS x")
    if oids is None:  # (every object: but temporary relations, which other sessions drop as they please)
        return conn.execute(query + (" WHERE x.relpersistence <> 't'" if type_name == "regclass" else "")).fetchall()
    return conn.execute(query + " WHERE x.oid = ANY(%s::pg_catalog.oid[])", (oids,)).fetchall()


def snapshot_open(conn: psycopg.Connection) -> bool:
    """Whether ``conn`` is still in a transaction (the day's snapshot, before the read released it)."""
    return not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS


_SIGNATURE_QUERY = _TYPE_WALK + """
SELECT DISTINCT w.attnum, t.oid::pg_catalog.int8, r.relnatts::pg_catalog.text || ' ' || coalesce(
           (SELECT pg_catalog.string_agg(f.attnum::text || ':' || f.atttypid::text, ',' ORDER BY f.attnum)
            FROM pg_catalog.pg_attribute f WHERE f.attrelid = t.typrelid AND f.attnum > 0 AND NOT f.attisdropped), ''),
       CASE WHEN r.relkind <> 'c' THEN n.nspname::pg_catalog.text END, r.relname::pg_catalog.text
FROM walk w JOIN pg_catalog.pg_type t ON t.oid = w.oid JOIN pg_catalog.pg_class r ON r.oid = t.typrelid
JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace
WHERE t.typtype = 'c'
"""

# per column number: per composite type oid, (its attributes, the (schema, name) of the relation whose row type it
# is, or None for a free-standing composite type)
CompositeSignature = dict[int, dict[int, tuple[str, tuple[str, str] | None, str]]]


def composite_signature(conn: psycopg.Connection, table: SourceTable) -> CompositeSignature:
    """Per column number, every composite type inside the column's type (by oid) with its count of attributes ever
    made and its fields' numbers and types, as ``conn``'s snapshot sees them (none for a table without composites:
    nothing read). A field dropped and added again (the way to retype one a table uses) keeps its name and kind but
    not its number, and one added and dropped again still counts: what the described shape cannot tell."""
    if table.oid is None or not any(c.shape for c in table.columns):
        return {}
    with conn.transaction():  # under PostgreSQL's operators first, as the snapshot's reads (a user's > on int2)
        apply_settings(conn.execute, {"search_path": SNAPSHOT_SETTINGS["search_path"]})
        query = _SIGNATURE_QUERY.format(multirange=_MULTIRANGE_STEP if conn.info.server_version >= 140000 else "")
        found: CompositeSignature = {}
        for attnum, oid, fields, schema, name in conn.execute(query, {"oid": table.oid}):
            found.setdefault(attnum, {})[oid] = (fields, (schema, name) if schema is not None else None, name)
        return found


def same_shapes(conn: psycopg.Connection, table: SourceTable, then: CompositeSignature,
                where: sql.Composable) -> None:
    """Fail (retryable) if a composite inside the columns was altered (a field added, dropped, or dropped and added
    again) since the snapshot read ``then``. Asked once the rows are read, outside the snapshot: a composite's output
    reads its type as committed when the statement runs, and ALTER TYPE takes no lock the day's read holds, so a
    field added during a run wrote rows the fingerprint and the recorded shape did not describe, published green.
    By column number and type oid: a column renamed, dropped or retyped by ALTER TABLE, which waited for the read's
    locks, and a type renamed, are no alteration during the read; nor is the row type of a relation the day's read
    locked (the table's, or a view's tables': only ALTER TABLE, which waited for the read, changes it). Another
    table's row type used as a column's type is altered by an ALTER TABLE of that table, which does not wait."""
    if not then:
        return
    now = composite_signature(conn, table)
    changed = {attnum: [(relation, name) for oid, (fields, relation, name) in types.items()
                        if oid in now[attnum] and now[attnum][oid][0] != fields]
               for attnum, types in then.items() if attnum in now}
    locked: set[tuple[str, str]] | None = None
    altered, types = [], set()
    for attnum, found in sorted(changed.items()):
        if found and any(relation is not None for relation, _ in found) and locked is None:
            locked = _relations_read(conn, table, where) | {(table.schema, table.name)}  # (one more plan, only here)
        moved = [name for relation, name in found if relation is None or relation not in locked]
        if moved:
            altered.append(attnum)
            types.update(moved)
    if altered:
        names = column_names(conn, table.oid)
        shown = ", ".join(repr(names.get(attnum, f"#{attnum}")) for attnum in altered)
        raise SourceError(f"the composite type(s) {', '.join(sorted(types))} inside column(s) {shown} of "
                          f"{table.qualified} were altered (ALTER TYPE ... ADD, DROP or ALTER ATTRIBUTE, or ALTER TABLE "
                          "of the table whose row type it is) while the day was read: its rows may print other fields "
                          "than its fingerprint and recorded shape; nothing was published",
                          retryable=True, cause="a composite type was altered during the run",
                          remedy="retried automatically (the retry reads the type as it is then); alter types "
                                 "outside the table's archive runs")


def relation_printed_names(conn: psycopg.Connection, relation: sql.Composable) -> PrintedNames:
    """:func:`printed_names` of a relation that is no configured table (a restore's target, a proof's temporary
    table), taken before rows are loaded into it: every label of the enums inside its columns' types, and every
    name of each kind its reg* values may print. Asked again by :func:`printed_names_changed` after the loaded
    rows were fingerprinted, it tells a rename meanwhile from an altered archive."""
    oid, relkind, schema, name = conn.execute(
        "SELECT c.oid, c.relkind::text, n.nspname::text, c.relname::text FROM pg_catalog.pg_class c "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s::pg_catalog.regclass",
        (relation.as_string(conn),)).fetchone()
    return printed_names(conn, SourceTable(schema=schema, name=name, relkind=relkind, columns=(), day_column=None,
                                           oid=oid))


def printed_names_changed(conn: psycopg.Connection, names: PrintedNames) -> list[str]:
    """What of ``names`` (see :func:`printed_names`) was renamed since they were read: an enum label (ALTER TYPE
    ... RENAME VALUE), or a name a reg* (or aclitem) value prints; empty where nothing was. Objects created
    meanwhile are no rename, nor is a label added; an object dropped meanwhile is (a value naming it prints its
    number now). Where every object of a kind was read, other sessions' temporary relations were not."""
    if not names:
        return []
    changed = []
    labels = {(key, label) for kind, key, label in names if kind == "enum"}
    if labels:
        types = sorted({int(key.split(":")[0]) for key, _ in labels})
        now = {(f"{t}:{o}", label) for t, o, label in conn.execute(
            "SELECT enumtypid, oid, enumlabel::text FROM pg_catalog.pg_enum WHERE enumtypid = ANY(%s)", (types,))}
        if not labels <= now:  # (a label added meanwhile prints no value the day held)
            changed.append("an enum label (ALTER TYPE ... RENAME VALUE)")
    for type_name in sorted({kind.split(":", 1)[1] for kind, _, _ in names if kind.startswith("named:")}):
        then = {key: name for kind, key, name in names if kind == f"named:{type_name}"}
        with conn.transaction():  # printed as the snapshot printed them: its path and quoting, not the session's
            apply_settings(conn.execute, {name: SNAPSHOT_SETTINGS[name]
                                          for name in ("search_path", "quote_all_identifiers")})
            now = dict(_catalog_names(conn, type_name, [int(key) for key in then]))
        # (an object a value names, dropped meanwhile, prints as its number now: its name was hashed)
        if any(now.get(key) != name for key, name in then.items()):
            changed.append(f"a name a {type_name} value prints (a relation, type, function, role or schema renamed "
                           "or dropped)")
    return changed


def same_printed_names(conn: psycopg.Connection, table: SourceTable, names: PrintedNames) -> None:
    """Fail (retryable) if a name the day's values print was changed since the snapshot that read ``names``: an
    enum label renamed, or a relation, type, function ... (or its schema) renamed that a reg* value names. Asked
    once the rows are read, in a new statement outside that snapshot. A value prints such a name from the catalog
    as committed when the statement runs, not as the snapshot sees it, so a rename committed during a run made the
    fingerprint print the old name and the read the new one (or the other way round): a green archive whose rows
    its own manifest did not describe. Objects created or dropped meanwhile are no rename (a new table, another
    session's temporary one)."""
    changed = printed_names_changed(conn, names)
    if changed:
        raise SourceError(f"{' and '.join(changed)} of {table.qualified}'s values was changed while the day was "
                          "read: its fingerprint and its rows may print different names; nothing was published",
                          retryable=True, cause="a name the day's values print was renamed during the run",
                          remedy="retried automatically (the retry reads the names as they are then); rename enum "
                                 "labels and the objects reg* columns name outside the table's archive runs")


def _casts(column: Column) -> tuple[bool, ...]:
    """The casts of a column's type that decide how the day is hashed (see :class:`Column`): a user's cast to text,
    which the fingerprint's ``::text`` of a built-in type (and of any type, by the algorithms before v5) would call.
    The formats look no cast up for a value they print (see formats.common.element_texts), so none decides what is
    written."""
    return (column.user_text_cast,)


def same_casts(conn: psycopg.Connection, table: SourceTable) -> None:
    """Fail (retryable) if a user's cast to text of a column's (element) type was created or dropped since ``table``
    was described in the day's snapshot. Asked once the rows are read, outside that snapshot: CREATE CAST takes no
    lock the read holds, and PostgreSQL finds casts in the catalog as committed when the statement runs, so the
    fingerprint's ``::text`` of a built-in type (a DBA's compatibility cast of timestamptz to whole seconds) would
    hash the cast's output where the snapshot said the output function's was hashed: the day's proof would then
    hide changes the cast drops. What the formats write depends on no cast (an enum is written by its labels' texts,
    never through row_to_json's cast to json or ``::text``), so a cast to json, or one created and dropped again
    while the day is read, changes nothing written; the fingerprint is the one path left that resolves casts."""
    if table.oid is None:
        return
    with conn.transaction():  # (the types named as the snapshot's description named them: PostgreSQL's first)
        apply_settings(conn.execute, {"search_path": SNAPSHOT_SETTINGS["search_path"]})
        now = {r[1]: _casts(Column(*r[1:])) for r in conn.execute(_COLUMNS_QUERY, {"oid": table.oid})}
    changed = [c.name for c in table.columns if c.name in now and now[c.name] != _casts(c)]
    if changed:
        raise SourceError(f"a cast to text of the type of {_columns_named(changed)} of "
                          f"{table.qualified} was created or dropped (CREATE CAST / DROP CAST) while the day was "
                          "read: its fingerprint may hash the cast's output in place of the values the archive "
                          "holds; nothing was published", retryable=True,
                          cause="a cast of a column's type was created or dropped during the run",
                          remedy="retried automatically (the retry reads the casts as they are then); create and "
                                 "drop casts of the table's column types outside its archive runs")


# The user's functions a view's query calls (as the caller's snapshot has them: oid, row version), through the views
# it reads, the operators and casts it uses, and the functions whose bodies pg_depend records (BEGIN ATOMIC): CREATE OR REPLACE FUNCTION takes no lock
# a read holds, and a query runs a function as committed when it runs, not as its snapshot sees it.
_VIEW_FUNCTIONS = """
WITH RECURSIVE o(classid, objid) AS (
    SELECT 'pg_catalog.pg_rewrite'::pg_catalog.regclass::pg_catalog.oid, r.oid
    FROM pg_catalog.pg_rewrite r WHERE r.ev_class = %(rel)s
    UNION
    SELECT CASE WHEN r.oid IS NULL THEN d.refclassid ELSE 'pg_catalog.pg_rewrite'::pg_catalog.regclass::pg_catalog.oid
                END,
           coalesce(r.oid, d.refobjid)
    FROM o JOIN pg_catalog.pg_depend d ON d.classid = o.classid AND d.objid = o.objid
    LEFT JOIN pg_catalog.pg_rewrite r ON d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
        AND r.ev_class = d.refobjid AND r.ev_class <> %(rel)s
    -- a function, an operator (its function: oprcode), a cast (its function), or a view read (its rules)
    WHERE d.refclassid IN ('pg_catalog.pg_proc'::pg_catalog.regclass, 'pg_catalog.pg_operator'::pg_catalog.regclass,
                           'pg_catalog.pg_cast'::pg_catalog.regclass) OR r.oid IS NOT NULL)
SELECT p.oid::pg_catalog.text, p.xmin::pg_catalog.text FROM o JOIN pg_catalog.pg_proc p
    ON o.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND p.oid = o.objid
WHERE p.pronamespace <> 'pg_catalog'::pg_catalog.regnamespace
"""

ReadRelations = tuple[int | None, tuple[tuple[str, str], ...]]


def read_relations(conn: psycopg.Connection, table: SourceTable) -> ReadRelations:
    """What the day's read depends on beyond its locks, in the caller's snapshot: the relation the table's name
    resolves to, and (a view) the user's functions its query calls, with their row versions. See
    :func:`same_read_relations`."""
    if table.oid is None:
        return None, ()
    functions = conn.execute(_VIEW_FUNCTIONS, {"rel": table.oid}).fetchall() if table.relkind == "v" else []
    return table.oid, tuple((oid, version) for oid, version in functions)


def same_read_relations(conn: psycopg.Connection, table: SourceTable, then: ReadRelations) -> None:
    """Fail (retryable) if, since ``then`` (:func:`read_relations`), the table's name came to name another relation
    or a function its view calls was replaced. Asked once the rows are read: ALTER SCHEMA ... RENAME takes no lock
    on the tables in it, so a migration swapping two schemas went through a run's locks, and the read, resolving
    the name again, archived the other table's rows under the fingerprint of the locked one's; CREATE OR REPLACE
    FUNCTION likewise, and the read printed what the fingerprint had not."""
    oid, functions = then
    if oid is None:
        return
    now = conn.execute("SELECT pg_catalog.to_regclass(%s)::pg_catalog.oid", (table.identifier.as_string(conn),)
                       ).fetchone()[0]
    if now != oid:
        raise SourceError(f"{table.qualified} came to name another relation while the day was read (it, or its "
                          "schema, renamed: ALTER TABLE/SCHEMA ... RENAME, a migration swapping schemas): the rows "
                          "read may be another table's; nothing was published", retryable=True,
                          cause="the table was renamed or replaced under its name during the run",
                          remedy="retried automatically (the retry archives the table its name names then); rename "
                                 "tables and schemas outside the table's archive runs")
    if functions:
        current = dict(conn.execute("SELECT oid::pg_catalog.text, xmin::pg_catalog.text FROM pg_catalog.pg_proc "
                                    "WHERE oid = ANY(%s::pg_catalog.oid[])", ([int(o) for o, _ in functions],)))
        replaced = [int(o) for o, version in functions if current.get(o) != version]
        if replaced:
            names = [n for (n,) in conn.execute("SELECT pg_catalog.concat(o::pg_catalog.regprocedure) FROM "
                                                "pg_catalog.unnest(%s::pg_catalog.oid[]) AS u(o)", (replaced,))]
            raise SourceError(f"{', '.join(names)}, called by the view {table.qualified}, was replaced (CREATE OR "
                              "REPLACE FUNCTION) while the day was read: its rows and its fingerprint may hold "
                              "different values; nothing was published", retryable=True,
                              cause="a function the view calls was replaced during the run",
                              remedy="retried automatically (the retry reads the function as it is then); replace "
                                     "the view's functions outside the table's archive runs")


# The functions a view's query calls that are not immutable (read from its rules' node trees: a call of
# pg_catalog's, now() or random(), is no dependency pg_depend records), through the views it reads.
_VIEW_CALLS = """
WITH RECURSIVE""" + "{roots}" + """
SELECT DISTINCT p.provolatile::text, pg_catalog.concat(p.oid::pg_catalog.regprocedure)
FROM roots JOIN pg_catalog.pg_rewrite r ON r.ev_class = roots.oid
CROSS JOIN LATERAL pg_catalog.regexp_matches(r.ev_action::pg_catalog.text,
                                             ':(?:funcid|opfuncid|aggfnoid|winfnoid) ([0-9]+)', 'g') AS m(id)
JOIN pg_catalog.pg_proc p ON p.oid = m.id[1]::pg_catalog.oid
WHERE p.provolatile <> 'i'
ORDER BY 1, 2
"""


def view_calls(conn: psycopg.Connection, table: SourceTable) -> dict[str, list[str]]:
    """The functions a view's query calls (through views it reads) that are not immutable, by volatility ('v':
    volatile, another value on every call; 's': stable, its transaction's, such as now()); empty for a table."""
    if table.relkind != "v" or table.oid is None:
        return {}
    found: dict[str, list[str]] = {}
    for volatility, name in conn.execute(_VIEW_CALLS.format(roots=_ROOTS),
                                         {"rel": table.identifier.as_string(conn), "also": []}):
        found.setdefault(volatility, []).append(name)
    return found


def unquoted_hint(schema: str, name: str) -> str:
    """For a name written with SQL's double quotes ('"Mixed Case"."Events"'): names are given as the
    catalog spells them, so the quotes became part of the name looked for."""
    if not any(len(part) > 1 and part[0] == part[-1] == '"' for part in (schema, name)):
        return ""
    return f"; write it without SQL's double quotes: {schema.strip(chr(34))}.{name.strip(chr(34))}"


# Relations whose qualified name equals the one looked for but for case or Unicode normal form (only
# read when the name was not found, to say which one the configuration probably means)
_LOOKALIKE_QUERY = """
SELECT n.nspname::text, c.relname::text
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND pg_catalog.lower(n.nspname || '.' || c.relname) = ANY(SELECT pg_catalog.lower(x) FROM pg_catalog.unnest(%s::text[]) x)
ORDER BY 1, 2 LIMIT 3
"""


def _differs(wanted: str, found: str) -> str | None:
    """How ``found`` differs from ``wanted`` where a reader sees one name: in case, or in Unicode normal
    form (``é`` as one code point, NFC, or as ``e`` and a combining accent, NFD: a name typed on one
    system and copied from another); None where they differ otherwise (or not at all)."""
    nfc = [unicodedata.normalize("NFC", t) for t in (wanted, found)]
    how = [what for what, same in (("only in how its letters are encoded (Unicode NFC against NFD: {})",
                                    nfc[0] == nfc[1]),
                                   ("only in case", wanted.casefold() == found.casefold()),
                                   ("in case and in how its letters are encoded (Unicode NFC against NFD: {})",
                                    nfc[0].casefold() == nfc[1].casefold())) if same and wanted != found]
    return how[0].format(f"{ascii(found)} against {ascii(wanted)}") if how else None


def lookalike_hint(wanted: str, names: Sequence[str], what: str, where: str = "the catalog",
                   advice: str | None = None) -> str:
    """"; the catalog has the <what> <name>, which differs from it only in case" for a name in ``names``
    that is ``wanted`` to a reader, else "" (``advice``: what to do, if not to write it as ``where`` does)."""
    for name in names:
        how = _differs(wanted, name)
        if how:
            return f"; {where} has the {what} {name!r}, which differs from it {how}: " + \
                (advice or f"write it as {where} spells it")
    return ""


def lookalike_relations(conn: psycopg.Connection, qualified_name: str) -> list[tuple[str, str]]:
    """(schema, name) of up to 3 relations whose ``schema.name`` equals ``qualified_name`` but for case or Unicode
    normal form (none where the lookup fails: a database whose encoding cannot hold the name)."""
    forms = sorted({unicodedata.normalize(form, qualified_name) for form in ("NFC", "NFD")})
    try:
        with conn.transaction():  # a savepoint inside the caller's snapshot: a failed lookup leaves it usable
            return [tuple(row) for row in conn.execute(_LOOKALIKE_QUERY, (forms,)).fetchall()]
    except (psycopg.Error, UnicodeError):
        return []


def _table_lookalikes(conn: psycopg.Connection, qualified_name: str) -> str:
    """A hint naming the relation the configuration probably means: one whose name differs in case or
    normal form, or one whose schema holds a dot (the configuration splits a name at its first dot)."""
    found = lookalike_relations(conn, qualified_name)
    # the lookalike itself (the same name, or one differing in case or normal form) may be one whose schema holds a
    # dot: written as the catalog spells it, it would still be split at its first dot
    split = next(((schema, name) for schema, name in found if f"{schema}.{name}" == qualified_name), None) or \
        next(((schema, name) for schema, name in found if "." in schema), None)
    if split:
        return (f"; the catalog has the table {split[1]!r} in the schema {split[0]!r}, and a name is split at its "
                "first dot: a table of a schema whose name holds a dot cannot be archived (rename the schema)")
    return lookalike_hint(qualified_name, [f"{schema}.{name}" for schema, name in found], "table")


def _codec(encoding: str | None) -> str | None:
    """Python's codec for a PostgreSQL encoding, or None where psycopg knows none (MULE_INTERNAL)."""
    try:
        return pg2pyenc((encoding or "").encode())
    except psycopg.NotSupportedError:
        return None


def _encodings(conn: psycopg.Connection) -> tuple[str, dict[str, str]]:
    """(the encoding a name is stored in, {encoding a name must fit: whose it is}). SQL_ASCII stores the bytes
    the session sends; a name travels in the session's client_encoding."""
    server = conn.info.parameter_status("server_encoding")
    client = conn.info.parameter_status("client_encoding")
    checks = {} if server == "SQL_ASCII" else {server: "its encoding"}
    checks.setdefault(client, "the session's client_encoding")
    return (client if server == "SQL_ASCII" else server), checks


def missing_character(conn: psycopg.Connection, name: str) -> str | None:
    """"its encoding, LATIN1, has no '日'" when this database (or the session) cannot hold a character of
    ``name``, else None: such a name cannot be sent, nor be any relation's."""
    for encoding, whose in _encodings(conn)[1].items():
        codec = _codec(encoding)
        try:
            name.encode(codec) if codec else None
        except UnicodeEncodeError as exc:
            return f"{whose}, {encoding}, has no {exc.object[exc.start]!r}"
    return None


def stored_name_problem(conn: psycopg.Connection, name: str) -> str | None:
    """Why this database cannot hold ``name`` (one part: a schema's, a table's) as it is, or None: a character
    it lacks (:func:`missing_character`), or more than the 63 bytes PostgreSQL keeps of a name in the
    database's own encoding ('Ü' is one byte in LATIN1, two in UTF-8)."""
    missing = missing_character(conn, name)
    if missing:
        return f"{name!r} cannot be a name in this database: {missing}"
    stored = _encodings(conn)[0]
    codec = _codec(stored)
    encoded = name.encode(codec) if codec else b""
    if len(encoded) > MAX_NAME_BYTES:
        kept = encoded[:MAX_NAME_BYTES].decode(codec, "ignore")
        return (f"{name!r} is {len(encoded)} bytes long in {stored}, and PostgreSQL keeps {MAX_NAME_BYTES} bytes of "
                f"a name in the database's encoding (it is kept as {kept!r})")
    return None


def _stored_hint(conn: psycopg.Connection, *names: str) -> str:
    """"; <why the database holds no such name>" for a name not found that it cannot hold as it is, else ""."""
    problem = next(filter(None, (stored_name_problem(conn, name) for name in names)), None)
    return f"; {problem}" if problem else ""


def describe_table(conn: psycopg.Connection, qualified_name: str, day_column: str | None, *,
                   lookalikes: bool = True) -> SourceTable:
    """Look up a configured name, ``schema.table`` split at its first dot (see :func:`describe_relation`)."""
    schema, _, name = qualified_name.partition(".")
    return describe_relation(conn, schema, name, day_column, lookalikes=lookalikes)


def describe_relation(conn: psycopg.Connection, schema: str, name: str, day_column: str | None, *,
                      lookalikes: bool = True) -> SourceTable:
    """Look the table up in the catalog (by parameters, never by formatting names into SQL). A table not
    found is looked for once more, spelled otherwise, unless ``lookalikes`` is False (a naming-mode
    period's table, which is missing for every period not created yet). Schema and name come apart: a
    partition found in the catalog may live in a schema whose name holds a dot."""
    qualified_name = relation_name(schema, name)
    # (before sending it: psycopg cannot encode it, or the server cannot convert it, which aborts a transaction)
    missing = next(filter(None, (missing_character(conn, part) for part in (schema, name))), None)
    if missing:
        raise SourceError(f"table {qualified_name!r} cannot exist in this database: {missing}", table=qualified_name,
                          retryable=False, cause=TABLE_MISSING,
                          remedy="check the table's name in the YAML configuration and the database in ARCHIVE_PG_DSN")
    row = conn.execute(_TABLE_QUERY, (schema, name)).fetchone()
    if row is None:
        raise SourceError(
            f"table {qualified_name!r} does not exist (looked for schema {schema!r}, table {name!r}; "
            f"names are case-sensitive as in the catalog){unquoted_hint(schema, name)}"
            f"{_stored_hint(conn, schema, name)}"
            f"{_table_lookalikes(conn, qualified_name) if lookalikes else ''}",
            table=qualified_name, retryable=False, cause=TABLE_MISSING,
            remedy="check the table's name in the YAML configuration (schema.table, as the catalog spells it), "
                   "the database in ARCHIVE_PG_DSN, and whether the table was renamed or dropped",
        )
    oid, relkind, can_select, unreadable, role = row
    # a grant is configuration (the command line exits 2 on it); the statement quotes the names as SQL needs
    grant = sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(schema, name),
                                                       sql.Identifier(role)).as_string(conn)
    if not can_select:
        raise SourceError(f"role {role!r} may not SELECT from {qualified_name!r}; {grant}",
                          table=qualified_name, retryable=False, cause="permission denied",
                          remedy=f"{grant} (as the table's owner or a superuser)")
    if unreadable:  # SELECT granted on some columns only: every column is archived
        raise SourceError(f"role {role!r} may not SELECT column(s) {unreadable} of {qualified_name!r}, and "
                          f"every column is archived; {grant} (or SELECT on those columns)", table=qualified_name,
                          retryable=False, cause="permission denied",
                          remedy=f"{grant} (or SELECT on those columns), as the table's owner or a superuser")
    try:
        with conn.transaction():  # (a savepoint inside the caller's: the name's error must not abort it)
            bounded_walk(conn, oid, qualified_name)
            inner = inner_types(conn, oid, (*INNER_TYPES, *NUMBER_TYPES, *UNREADABLE_TYPES))
            shapes = composite_shapes(conn, oid)
            found = conn.execute(_COLUMNS_QUERY, {"oid": oid}).fetchall()
    except (psycopg.errors.CharacterNotInRepertoire, psycopg.errors.UntranslatableCharacter) as exc:
        raise _name_not_utf8(conn, qualified_name, oid, exc) from None
    columns = tuple(Column(*r[1:], inner=tuple(t for t in inner.get(r[0], ()) if t.type in INNER_TYPES),
                           numbers=nested_numbers(inner.get(r[0], ())),
                           unreadable=tuple(t for t in inner.get(r[0], ()) if t.type in UNREADABLE_TYPES),
                           shape=shapes.get(r[0], ()))
                    for r in found)
    if day_column is None:
        return SourceTable(schema=schema, name=name, relkind=relkind, columns=columns, day_column=None, oid=oid,
                           encoding=conn.info.parameter_status("server_encoding"))
    by_name = {c.name: c for c in columns}
    day = by_name.get(day_column)
    key = _key_expression(conn, oid, day_column) if relkind == "p" and day is not None else None
    if day is None:
        raise SourceError(f"table {qualified_name!r} has no column {day_column!r} (day_column); "
                          f"columns are {[c.name for c in columns]}{_stored_hint(conn, day_column)}"
                          f"{lookalike_hint(day_column, [c.name for c in columns], 'column')}",
                          table=qualified_name, retryable=False, cause=SETTING_MISFITS,
                          remedy="set the table's day_column in the YAML configuration to one of its columns")
    if day.base_type not in DAY_COLUMN_TYPES or day.is_array:
        raise SourceError(f"day_column {day_column!r} of {qualified_name!r} is {day.type_name}; "
                          "it must be date, timestamp or timestamptz", table=qualified_name, retryable=False,
                          cause=SETTING_MISFITS, remedy="set the table's day_column in the YAML configuration to a "
                                                        "date, timestamp or timestamptz column")
    return SourceTable(schema=schema, name=name, relkind=relkind, columns=columns, day_column=day, oid=oid,
                       encoding=conn.info.parameter_status("server_encoding"), key_expression=key)


# A RANGE key of one expression (partattrs 0); pg_get_expr (which locks the parent, as the day's read does anyway)
# only then
_KEY_EXPRESSION = """
SELECT CASE WHEN pt.partstrat = 'r' AND pt.partnatts = 1 AND pt.partattrs[0] = 0
            THEN pg_catalog.pg_get_expr(pt.partexprs, pt.partrelid) END
FROM pg_catalog.pg_partitioned_table pt WHERE pt.partrelid = %s
"""
# The pieces a key expression that only converts, truncates or shifts a time is printed with
_KEY_TOKEN = re.compile(r"""\s*('(?:[^']|'')*'|::\s*(?:date|timestamp(?:\(\d\))? without time zone|text)\b|"""
                        r"""AT TIME ZONE\b|[(),]|"(?:[^"]|"")+"|[a-z_][a-z0-9_$]*)""")
_KEY_FUNCTIONS = {"date_trunc", "timezone"}
_TRUNC_UNITS = {"microseconds", "milliseconds", "second", "minute", "hour", "day", "week", "month", "quarter", "year",
                "decade", "century", "millennium"}


@functools.cache
def _zone_names() -> frozenset[str]:
    """The IANA zone names, in lower case (whose clocks never go back by more than a day): the zones a key
    expression may shift by and still be bounded (see :func:`_key_expression`)."""
    import zoneinfo

    return frozenset(name.lower() for name in zoneinfo.available_timezones()) | {"utc"}  # (PostgreSQL ignores case)


def _key_expression(conn: psycopg.Connection, oid: int, day_column: str) -> str | None:
    """The partition key of a table partitioned by RANGE of one expression of its day column, where that
    expression is made only of casts to date or timestamp, ``date_trunc`` and ``timezone`` (``AT TIME ZONE``):
    a time that never goes back by more than a clock change as the column's goes forward, which the day's
    filter can then bound (see :func:`day_filter`). None for any other table."""
    found = conn.execute(_KEY_EXPRESSION, (oid,)).fetchone()
    text = found[0] if found else None
    if not text:
        return None
    quoted = _quoted_identifier(day_column)
    matches = _key_tokens(text)
    if matches is None:
        return None
    tokens = [match.group(1) for match in matches]
    for i, token in enumerate(tokens):
        following = tokens[i + 1] if i + 1 < len(tokens) else ""
        if token[0] == "'" and token[1:-1].lower() not in _TRUNC_UNITS and token[1:-1].lower() not in _zone_names():
            return None  # a POSIX rule ('AAA+0BBB-100,M3.2.0,M11.1.0') may go back days at its clock change
        if token != "AT TIME ZONE" and (token[0].isalpha() or token[0] == "_" or token[0] == '"'):
            if following == "(":
                if token not in _KEY_FUNCTIONS:
                    return None
            elif token not in (day_column, quoted):
                return None
    return text if any(t in (day_column, quoted) for t in tokens) else None


def _quoted_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _key_tokens(text: str) -> list[re.Match[str]] | None:
    """The pieces of a key expression (see :data:`_KEY_TOKEN`), or None where one is not such a piece."""
    position, matches = 0, []
    while position < len(text.rstrip()):
        match = _KEY_TOKEN.match(text, position)
        if match is None:
            return None
        matches.append(match)
        position = match.end()
    return matches


def key_at(table: SourceTable, moment: sql.Composable) -> sql.Composable:
    """The table's key expression (:attr:`SourceTable.key_expression`) of ``moment`` (a literal of the day
    column's type) instead of the column: constant, so the planner prunes the partitions by it. The key's pieces
    are the catalog's text (:class:`~archive_pipeline.core.sqltext.CatalogText`): a ``%`` in a quoted name of
    it (``"at%"``) is no placeholder where the day's filter is sent with parameters."""
    quoted = _quoted_identifier(table.day_column.name)
    pieces, position = [], 0
    text = table.key_expression
    tokens = _key_tokens(text) or []
    for i, match in enumerate(tokens):
        token = match.group(1)
        following = tokens[i + 1].group(1) if i + 1 < len(tokens) else ""
        pieces.append(CatalogText(text[position:match.start(1)]))
        if token in (table.day_column.name, quoted) and following != "(":
            pieces.append(sql.SQL("({})").format(moment))
        else:
            pieces.append(CatalogText(token))
        position = match.end(1)
    pieces.append(CatalogText(text[position:]))
    return sql.Composed(pieces)


def _name_not_utf8(conn: psycopg.Connection, qualified_name: str, oid: int, exc: psycopg.Error) -> SourceError:
    """A name of the table's columns or of their types that is not valid UTF-8 (a SQL_ASCII database stores
    the bytes a client of another encoding sent): every name is read as UTF-8, so no format can archive it."""
    names = [bytes(r[0]).decode("utf-8", "backslashreplace") for r in conn.execute(
        "SELECT pg_catalog.convert_to(a.attname::text, pg_catalog.current_setting('server_encoding')) FROM pg_catalog.pg_attribute a WHERE a.attrelid = %s "
        "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum", (oid,))]
    bad = [n for n in names if "\\x" in n]
    what = f"column name(s) {', '.join(bad)}" if bad else "a name of its columns' types"
    return SourceError(f"table {qualified_name!r}: {what} is not valid UTF-8 in this {conn.info.parameter_status('server_encoding')} "
                       f"database ({exc.diag.message_primary or exc}); names are read as UTF-8, in every format",
                       table=qualified_name, retryable=False, cause="a name is not valid UTF-8",
                       remedy="rename it to valid UTF-8 (ALTER TABLE ... RENAME COLUMN, or ALTER TYPE ... RENAME), "
                              "from a session whose client_encoding is the one the name was written in")


def _bound_values(column: Column, day: Period | dt.date) -> tuple[dt.date | dt.datetime, dt.date | dt.datetime]:
    """The values of the period [start, end) in the column's type, so the planner can prune partitions up front.

    What the bounds mean per column type (a plain date is a UTC day, as before periods existed):
    ``timestamptz``: the zone's boundaries as instants with their offset (``2024-03-31 00:00+01`` to
    ``2024-04-01 00:00+02``: 23 hours); ``timestamp``: values are read as wall-clock time in the
    table's zone, so the bounds are the local wall-clock boundaries (a DST day is 24 wall-clock
    hours; in the repeated autumn hour all 02:xx values belong to its second occurrence);
    ``date``: the local calendar days of the period; an hour is not a range of dates and is refused."""
    if not isinstance(day, Period):
        day = as_period("daily", "UTC", day)
    if column.base_type == "date":
        if day.granularity == "hourly":
            raise SourceError(f"setting 'granularity': hourly needs a timestamp or timestamptz day_column, and "
                              f"{column.name!r} is a date, which cannot hold hours; use granularity daily or monthly",
                              retryable=False, cause=SETTING_MISFITS)
        return day.start.date(), day.end.date()
    if column.base_type == "timestamptz":
        return day.start, day.end
    return day.wall_bounds


def day_filter(table: SourceTable, day: Period | dt.date) -> sql.Composable:
    """The WHERE condition that selects the period's rows (TRUE when the whole relation is the period)."""
    if table.day_column is None:
        return sql.SQL("TRUE")
    start, end = _bound_values(table.day_column, day)
    col = sql.Identifier(table.day_column.name)
    # PostgreSQL's operators by name: a user's >= on a domain over the column's type (CREATE DOMAIN bday AS date)
    # matches a domain column exactly, pg_catalog first on the path or not, and chose the day's rows
    where = sql.SQL("{col} OPERATOR(pg_catalog.>=) {start} AND {col} OPERATOR(pg_catalog.<) {end}").format(
        col=col, start=sql.Literal(start), end=sql.Literal(end))
    if table.key_expression is None:
        return where
    # A key expression of the column ((at::date)) cannot be pruned by from the column's bounds: every partition
    # would be planned, scanned and locked (a lock table of a few thousand fills up). A key that only casts or
    # truncates the column never goes back as it goes forward: its values at the day's first and last moments bound
    # the day's rows exactly (no neighbour's partition is planned, locked or waited for). One that shifts it by a
    # zone (AT TIME ZONE, timezone()) may go back at a clock change: its bounds are widened by 26 hours. (Moved in
    # Python: literals, so the key's immutable functions of them fold into constants when planned.)
    zoned = "AT TIME ZONE" in table.key_expression or "timezone(" in table.key_expression
    last = dt.timedelta(days=1) if table.day_column.base_type == "date" else dt.timedelta(microseconds=1)
    try:
        low, high = (sql.Literal(start - _KEY_SLACK), sql.Literal(end + _KEY_SLACK)) if zoned else \
            (sql.Literal(start), sql.Literal(end - last))
    except OverflowError:  # a day at the end of Python's calendar (year 1 or 9999): unbounded, as before
        return where
    key = sql.SQL("({})").format(CatalogText(table.key_expression))  # (the catalog's text: see key_at)
    return sql.SQL("{} AND {key} OPERATOR(pg_catalog.>=) ({low}) AND {key} OPERATOR(pg_catalog.<=) ({high})").format(
        where, key=key, low=key_at(table, low), high=key_at(table, high))


_KEY_SLACK = dt.timedelta(hours=26)  # more than any clock change, and than any zone's offset from another's


@contextlib.contextmanager
def read_snapshot(conn: psycopg.Connection, settings: dict[str, str] | None = None) -> Iterator[Snapshot]:
    """One REPEATABLE READ, READ ONLY transaction: every read of the day sees the same data.

    The transaction is begun and ended explicitly (the connection must be in autocommit mode), so
    the caller can end it early with ``snapshot.release()`` as soon as nothing more needs it (e.g.
    once another connection has imported the exported snapshot), and so the connection's own
    isolation and read-only attributes are left as they were.
    """
    if not conn.autocommit:
        raise ValueError("read_snapshot needs a connection in autocommit mode")
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    open_ = [True]

    def release() -> None:
        if open_[0]:
            open_[0] = False
            conn.execute("COMMIT")

    try:
        apply_settings(conn.execute, {**SNAPSHOT_SETTINGS, **(settings or {})})
        taken_at, version, snapshot_id = conn.execute(
            "SELECT pg_catalog.now(), pg_catalog.current_setting('server_version'), pg_catalog.pg_export_snapshot()"
        ).fetchone()
        yield Snapshot(taken_at=taken_at, server_version=version, snapshot_id=snapshot_id, release=release)
    except BaseException as exc:
        end_interrupted_query(conn, exc)
        if open_[0]:
            open_[0] = False
            if not conn.closed:
                with contextlib.suppress(psycopg.Error):
                    conn.execute("ROLLBACK")
        raise
    release()


@dataclass
class Chunk:
    """Raw COPY output of ``rows`` whole rows (PostgreSQL sends one CopyData message per row)."""

    data: bytes | bytearray | memoryview
    rows: int


def copy_chunks(conn: psycopg.Connection, statement: sql.Composable, chunk_rows: int,
                max_chunk_bytes: int = 4 << 20) -> Iterator[Chunk]:
    """Stream COPY ... TO STDOUT as chunks of at most ``chunk_rows`` rows or about ``max_chunk_bytes``.

    Small rows are gathered into one buffer so the consumer sees few, large writes. A row as big
    as a whole chunk is handed on as the message psycopg returned, without copying it: gathering
    it would hold the row twice (#11 §5: one 100 MiB value must not cost several times its size).

    PostgreSQL sends one CopyData message per row, so this loop runs once per row and is written
    for that: libpq's non-blocking ``PQgetCopyData`` is called here directly (see
    :func:`_buffered_rows`), and psycopg's ``Copy.read`` (a generator driven by
    ``Connection.wait``, about 1 µs of Python per row) only when libpq holds no whole row and the
    socket must be waited for. Inlined rather than a function per row: that call cost ~0.07 s of
    CPU per 1M rows of the benchmark day (bench/RESULTS.md).
    """
    with conn.cursor() as cur, cur.copy(statement) as copy:
        data = bytearray()
        rows = 0
        get = _buffered_rows(copy)
        # no ``for message in copy``: that iterator (and a for loop's variable) would keep the previous
        # message alive while the next one is read
        while True:
            nbytes, message = get(1)
            if nbytes <= 0:
                message = copy.read() if nbytes == 0 else _copy_ended(copy)
                if not message:
                    break
                nbytes = len(message)
            if nbytes >= max_chunk_bytes:
                if rows:
                    yield Chunk(data, rows)
                    data, rows = bytearray(), 0
                yield Chunk(message, 1)
                del message
                continue
            data += message
            rows += 1
            if rows >= chunk_rows or len(data) >= max_chunk_bytes:
                yield Chunk(data, rows)
                data = bytearray()
                rows = 0
        if rows:
            yield Chunk(data, rows)


def _nothing_buffered(_async: int) -> tuple[int, bytes]:
    return 0, b""


def _buffered_rows(copy: psycopg.Copy) -> Callable[[int], tuple[int, memoryview | bytes]]:
    """libpq's non-blocking ``PQgetCopyData``: ``(n, row)`` for a row already received, ``(0, _)`` when
    none is buffered, ``(-1 or -2, _)`` at the end of the COPY or an error (see :func:`_copy_ended`).

    It needs two private pieces of psycopg (pinned in pyproject.toml), checked here; without them,
    a function that always answers "nothing buffered", so every row comes through ``copy.read``.
    """
    if _fetch_many is None or not hasattr(copy, "_finished"):
        return _nothing_buffered
    return copy.connection.pgconn.get_copy_data


def _copy_ended(copy: psycopg.Copy) -> bytes:
    """Complete a COPY whose end (or error) the non-blocking call met, exactly as psycopg's own
    ``copy_from`` generator does, and mark the Copy finished so its exit does not read again.
    Returns ``b""`` (the end), or raises the COPY's error."""
    pgconn = copy.connection.pgconn
    results = copy.connection.wait(_fetch_many(pgconn))  # the COPY ended: its final result
    copy._finished = True
    if len(results) != 1:
        raise psycopg.ProgrammingError("you cannot mix COPY with other operations")
    if results[0].status != psycopg.pq.ExecStatus.COMMAND_OK:
        raise psycopg.errors.error_from_result(results[0], encoding=pgconn._encoding)
    return b""


_DONE = object()
T = TypeVar("T")


def prefetch(chunks: Iterator[T], depth: int = 4, max_bytes: int | None = None,
             size: Callable[[T], int] | None = None, cancel: Callable[[], None] | None = None) -> Iterator[T]:
    """Read ahead in a thread so PostgreSQL keeps sending while the caller compresses and hashes.

    At most ``depth`` items wait in memory. With ``max_bytes``, the reader also stops pulling the
    next item while the items read and not yet finished by the consumer (queued, or the one it
    holds) reach ``max_bytes`` (``size(item)`` each): read-ahead overlaps small chunks, but a
    100 MiB row is not read while the previous one is still being written, so memory is bounded
    by the largest value rather than ``depth`` times it (#11 §5). If the consumer stops early the
    reader is told to stop and its error, if any, is re-raised here, so the COPY never outlives
    the caller's failure. ``cancel`` (the source's query cancel) is called then too: the reader only
    looks up between items, and the next may be long in coming (a slow link, a day's rows sparse in a
    long scan), while the person who pressed Ctrl-C or terminated the run waits.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    failure: list[BaseException] = []
    room = threading.Condition()
    in_flight = [0]
    measure = size if size is not None else (lambda item: 0)

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def wait_for_room() -> bool:
        if max_bytes is None:
            return not stop.is_set()
        with room:
            while not stop.is_set() and in_flight[0] >= max_bytes:
                room.wait(0.1)
        return not stop.is_set()

    def reader() -> None:
        try:
            iterator = iter(chunks)
            while wait_for_room():
                try:
                    chunk = next(iterator)
                except StopIteration:
                    break
                with room:
                    in_flight[0] += measure(chunk)
                if not put(chunk):
                    break
                del chunk  # not held while the next one is read: a big row would be in memory twice
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            failure.append(exc)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None and stop.is_set():
                with contextlib.suppress(Exception):
                    close()
            put(_DONE)

    thread = threading.Thread(target=reader, name="copy-reader", daemon=True)
    thread.start()
    done = False
    try:
        while True:
            item = q.get()
            if item is _DONE:
                done = True
                break
            yield item
            with room:  # the consumer is done with it
                in_flight[0] -= measure(item)
                room.notify_all()
            del item
    finally:
        stop.set()
        if not done and cancel is not None:
            with contextlib.suppress(Exception):
                cancel()
        thread.join()
    if failure:
        raise failure[0]


# How long a session that imported the archive's snapshot waits for its first lock on the day's
# relations. The coordinator still holds its own then, so only a lock request queued in between can
# delay it: a TRUNCATE, ALTER TABLE or DROP/DETACH of the day's partition waiting for the coordinator.
IMPORT_LOCK_WAIT_MS = 200


def lock_day(execute: Callable[[str], object], table: SourceTable, where: sql.Composable,
             quoting: psycopg.Connection) -> None:
    """Take the day's locks in a session that imported the archive's snapshot (``execute`` runs one
    statement there), before the coordinator ends its transaction and lets its own go.

    TRUNCATE, a table rewrite (ALTER TABLE ... TYPE) and dropping or detaching a partition are not
    MVCC-safe: a session whose snapshot predates them, but which locks the table only after they
    commit, sees the day empty (or gone) and would archive it as an empty day, its fingerprint
    agreeing. Locked here, while the coordinator's lock keeps such a change waiting, every reader
    sees the snapshot's rows. A change already waiting would let these requests queue behind it
    while the coordinator waits for them (a deadlock PostgreSQL cannot see), so they wait briefly
    and the day fails, retryable, instead."""
    # planned and started, never run: it locks what the day's read locks (the pruned partitions too)
    touch = sql.SQL("SELECT 1 FROM {} WHERE {} LIMIT 0").format(table.identifier, where).as_string(quoting)
    # the day's filter with PostgreSQL's own operators, as every query of the day reads it (it decides
    # which partitions the planner prunes, and so which are locked)
    apply_settings(lambda statement: execute(statement.as_string(quoting)),
                   {"lock_timeout": IMPORT_LOCK_WAIT_MS, "search_path": SNAPSHOT_SETTINGS["search_path"]})
    try:
        execute(touch)
    except Exception as exc:
        # (55P03 lock_not_available: in any language the server speaks; the words for ADBC's text without it)
        if sqlstate(exc) != "55P03" and "lock timeout" not in str(exc).lower():
            raise
        raise SourceError(
            f"another session is waiting to change {table.qualified} (TRUNCATE, ALTER TABLE, or DROP/DETACH of the "
            "day's partition) while this run was starting to read it; reading on would queue behind that change, "
            "or see the day after it", retryable=True, cause="a change of the table was waiting for its lock",
            remedy="retried automatically; if it recurs, run the table's DDL outside its archive runs") from None
    execute("RESET lock_timeout")


def columns_as_archived(columns: Sequence[Column], names: Sequence[str]) -> list[Column] | None:
    """The table's columns if they are the ones an archive recorded, by name and in that order; None
    otherwise. A fingerprint chains values by position: only a name-for-name comparison compares
    anything (two columns of one type that swapped names would otherwise look unchanged, and a
    restore would put each value in the other column). Another order is a change too, as it is for
    the archive's own re-run check (the archive would be written in another column order)."""
    return list(columns) if [c.name for c in columns] == list(names) else None


def hold_day(conn: psycopg.Connection, table: SourceTable, where: sql.Composable,
             may_hold_day: Callable[[tuple[str, str]], bool] | None = None) -> None:
    """Take the day's locks in the session that took the snapshot, then check that no change the
    snapshot does not isolate committed between the snapshot and the locks.

    The snapshot is taken by the transaction's first statement, but a table is locked only by the
    first query that reads it. A TRUNCATE, a rewrite (ALTER TABLE ... TYPE, VACUUM FULL) or a DROP or
    DETACH of the day's partition committed in between would show the snapshot the day empty, and
    the day would be archived as empty with a fingerprint that agrees. All but DETACH give the
    relation a new file (or none): ``pg_class`` read in the snapshot still names the old one, the
    relation cache the current one. A new file whose rows the snapshot still sees was rewritten
    keeping them (VACUUM FULL, CLUSTER: MVCC-safe) and is no reason to fail. A DETACH keeps the
    file: the partitions ``pg_inherits`` lists in the snapshot are checked against it as committed
    (:data:`_DETACHED_SINCE_SNAPSHOT`). Once the locks are held nothing can change them any more.

    The columns and the relation itself are checked the same way (:func:`_same_relation`): the
    snapshot described them, but every query is planned on the current catalog, so a column dropped,
    renamed or added, or the table renamed or replaced (a new table renamed into its place, whose rows
    the snapshot cannot see) in between would read other columns than those described, or none.

    ``may_hold_day`` (declarative mode: whether a partition, by its bound as the snapshot sees it, may hold rows
    of the day): a partition dropped, detached or pending detach since the snapshot refuses the day only where it
    may. Another day's (the retention of 03-10 committing while the archive of 03-11 waits for its locks; a
    ``DETACH ... CONCURRENTLY`` left pending) holds none of this day's rows, and the day's read never scanned it.
    None: any such partition refuses the day."""
    _same_relation(conn, table, where)  # its first query takes the day's locks
    also = view_reads(conn, table, where)
    found = conn.execute(_CHANGED_SINCE_SNAPSHOT, {"rel": table.identifier.as_string(conn), "also": also}).fetchall()
    read = _relations_read(conn, table, where) if found else set()
    changed = [relation_name(schema, name) for schema, name, gone in found
               if (gone and (may_hold_day is None or may_hold_day((schema, name))))
               or ((schema, name) in read and not conn.execute(sql.SQL("SELECT EXISTS (SELECT FROM ONLY {})")
                                                              .format(sql.Identifier(schema, name))).fetchone()[0])]
    if changed:
        raise SourceError(
            f"{', '.join(changed)} changed (TRUNCATE, a rewriting ALTER TABLE or VACUUM FULL, or a partition "
            f"dropped or detached) just after this run took its snapshot of {table.qualified}; reading on would "
            "see the day as it was not", retryable=True, cause="the table changed while the run was starting",
            remedy="retried automatically; if it recurs, run the table's DDL outside its archive runs")
    detached = conn.execute(_DETACHED_SINCE_SNAPSHOT, {"rel": table.identifier.as_string(conn), "also": also}
                            ).fetchall()
    if may_hold_day is not None:  # (before detaching(): a partition dropped since has no regclass)
        detached = [tuple(d) for d in detached if may_hold_day(tuple(d))]
    pending = [(relation, parent) for relation, parent in
               (((s, n), detaching(conn, sql.Identifier(s, n))) for s, n in detached) if parent]
    if pending:
        raise pending_detach_error(table.qualified, *pending[0])
    if detached:
        names = ", ".join(relation_name(s, n) for s, n in detached)
        raise _changed_under_snapshot(table, f"{names} is no longer its partition "
                                             "(DETACH PARTITION keeps the partition's file, so the snapshot would "
                                             "see the rows the parent no longer reads)")
    same_members(conn, table, where)


# The relation and, where it is a view, every relation it reads: through views in views (their rewrite rules'
# dependencies), and those its day query reads as planned (``also``: an inlined SQL function's tables): a
# TRUNCATE, DETACH or ATTACH on a view's base table is what the snapshot does not isolate.
_ROOTS = """
roots(oid) AS (
    SELECT %(rel)s::pg_catalog.regclass::pg_catalog.oid
    UNION
    SELECT pg_catalog.unnest(%(also)s::pg_catalog.regclass[])::pg_catalog.oid
    UNION
    SELECT d.refobjid FROM roots JOIN pg_catalog.pg_class v ON v.oid = roots.oid AND v.relkind = 'v'
    JOIN pg_catalog.pg_rewrite r ON r.ev_class = v.oid
    JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = r.oid
     AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid <> v.oid AND d.deptype = 'n')"""


# The table and every relation under it (a view: the relations it reads and theirs), as the snapshot's catalog has
# them, whether each is a partition, and whether it is one of the roots.
_SNAPSHOT_TREE = """
WITH RECURSIVE""" + _ROOTS + """,
tree(oid) AS (
    SELECT oid FROM roots
    UNION
    SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree ON i.inhparent = tree.oid)
SELECT n.nspname, c.relname, c.relispartition, tree.oid IN (SELECT oid FROM roots)
FROM tree JOIN pg_catalog.pg_class c ON c.oid = tree.oid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relpersistence <> 't' OR c.relnamespace = pg_catalog.pg_my_temp_schema()  -- (others' temp children: never read)
"""


# Whether a view (or a view it reads) calls a function of the user's: its rules depend on one (built-in
# functions are pinned, with no dependency recorded).
_VIEW_CALLS_FUNCTIONS = """
WITH RECURSIVE""" + _ROOTS + """
SELECT EXISTS (SELECT FROM roots JOIN pg_catalog.pg_rewrite r ON r.ev_class = roots.oid
               JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
                AND d.objid = r.oid AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass)
"""


def view_reads(conn: psycopg.Connection, table: SourceTable, where: sql.Composable) -> list[str]:
    """For a view that calls a function of the user's, the relations its day query reads as planned (an inlined
    SQL function's tables, which no dependency records; regclass text, see :data:`_ROOTS`); none for any other
    relation, whose roots its rules' dependencies give exactly (a relation that joined a base table since the
    snapshot is then told from them, see :func:`same_members`). A PL/pgSQL function's tables are in no plan: a
    view reading through one is held by the function's own locks only, when it runs."""
    if table.relkind != "v" or not conn.execute(_VIEW_CALLS_FUNCTIONS, {"rel": table.identifier.as_string(conn),
                                                                          "also": []}).fetchone()[0]:
        return []
    return [sql.Identifier(schema, name).as_string(conn) for schema, name in _relations_read(conn, table, where)]


def same_members(conn: psycopg.Connection, table: SourceTable, where: sql.Composable) -> None:
    """Fail (retryable) if a relation joined the table (ATTACH PARTITION, ALTER TABLE ... INHERIT) or an
    inheritance child left it (NO INHERIT) since the snapshot ``conn`` reads in (its own, or one it imported).
    The planner reads the tree as committed now, the snapshot sees the rows as they were: a relation that
    joined would be read with rows the snapshot sees (committed before it), one that left would not be read
    at all, and the archive would hold the table as it never was. Asked after the day's locks, and again by
    the session that fingerprints the day alongside the read once it is done: an ATTACH takes no lock the
    readers hold, so one committed after the locks is still planned into a later session's query.
    (A partition detached is :data:`_DETACHED_SINCE_SNAPSHOT`.)"""
    if table.relkind not in ("r", "p", "v"):
        return
    found = conn.execute(_SNAPSHOT_TREE, {"rel": table.identifier.as_string(conn),
                                          "also": view_reads(conn, table, where)}).fetchall()
    tree = {(schema, name): partition for schema, name, partition, _ in found}
    roots = {(schema, name) for schema, name, _, root in found if root}
    read = _relations_read(conn, table, where)
    joined = sorted(read - set(tree))
    if joined:
        raise _changed_under_snapshot(table, f"{', '.join(relation_name(s, n) for s, n in joined)} joined it (ATTACH "
                                             "PARTITION or INHERIT) after the snapshot, which sees its rows")
    # inheritance children the day's plan does not read: excluded by their constraints, or gone (a view's query may
    # read its tables with ONLY, and a child it never reads is none of its rows: a view is held to the joined test)
    children = set() if table.relkind == "v" else \
        {member for member, partition in tree.items() if not partition} - roots - read
    if children:
        everything = _relations_read(conn, table, sql.SQL("TRUE"))
        left = sorted(children - everything)
        if left:
            raise _changed_under_snapshot(table, f"{', '.join(relation_name(s, n) for s, n in left)} is no longer "
                                                 "its child (NO INHERIT) since the snapshot, which sees its rows")


def _same_relation(conn: psycopg.Connection, table: SourceTable, where: sql.Composable) -> None:
    """Fail (retryable) unless ``table``'s name still resolves to the relation the snapshot described,
    with the same columns in the same order (the catalog as the relation cache holds it now, which is
    what plans the day's queries; read after the day's locks, so it stays that way). Planned with the
    day's filter, it locks only the day's partitions: unfiltered, it waited for a lock on every other
    partition of the table (one under VACUUM FULL failed every day's archive). Planning it takes the
    day's locks, and the relation cache is brought up to date once they are held."""
    try:
        current = conn.execute(sql.SQL("SELECT * FROM {} WHERE {} LIMIT 0").format(table.identifier, where))
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn, psycopg.errors.InvalidSchemaName) as exc:
        raise _changed_under_snapshot(table, f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    names = [c.name for c in current.description or []]
    oid = conn.execute("SELECT %s::pg_catalog.regclass::pg_catalog.oid",
                       (table.identifier.as_string(conn),)).fetchone()[0]
    described = [c.name for c in table.columns]
    if table.oid is not None and oid != table.oid:
        raise _changed_under_snapshot(table, "another relation has its name now (renamed, or dropped and created "
                                             "again)")
    if names != described:
        raise _changed_under_snapshot(table, f"its columns were {described} and are {names} now (ALTER TABLE ... "
                                             "ADD, DROP or RENAME COLUMN)")
    if table.oid is not None and table.relkind in ("r", "p", "f") and current.pgresult is not None:
        _same_columns(conn, table, current.pgresult)


# The columns as the snapshot's catalog has them: number, type, and whether the type is a domain (the rows'
# description names a domain's base type instead).
_SNAPSHOT_COLUMNS = """
SELECT a.attnum, a.atttypid, t.typtype = 'd'
FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum
"""


def _same_columns(conn: psycopg.Connection, table: SourceTable, result: psycopg.pq.abc.PGresult) -> None:
    """Fail (retryable) if a column was replaced under its name (DROP and ADD COLUMN: a new column number) or
    retyped since the snapshot: the day's queries would read the new column while the manifest records the
    old type, an archive no restore or proof could read back. The rows' description says, per column, the
    table column it comes from and its type as the relation cache holds them now."""
    then = conn.execute(_SNAPSHOT_COLUMNS, (table.oid,)).fetchall()
    now = [(result.ftable(i), result.ftablecol(i), result.ftype(i)) for i in range(result.nfields)]
    if len(now) != len(then) or any(origin != table.oid for origin, _, _ in now):
        return  # not plain columns of the table (cannot be told apart this way)
    changed = [c.name for c, (_, number, type_oid), (was_number, was_type, domain) in zip(table.columns, now, then)
               if number != was_number or (not domain and type_oid != was_type)]
    if changed:
        raise _changed_under_snapshot(table, f"its column(s) {changed} were replaced or retyped since the snapshot "
                                             "(ALTER TABLE ... DROP and ADD COLUMN of the same name, or ALTER COLUMN "
                                             "... TYPE)")


def _changed_under_snapshot(table: SourceTable, what: str) -> SourceError:
    return SourceError(
        f"{table.qualified} changed just after this run took its snapshot: {what}; reading on would not read "
        "the table the snapshot describes", retryable=True, cause="the table changed while the run was starting",
        remedy="retried automatically (the retry archives the table as it is then); if it recurs, run the table's "
               "DDL outside its archive runs")


def explain(conn: psycopg.Connection, query: sql.Composable) -> dict:
    """The top plan node of ``EXPLAIN (FORMAT JSON ...) query``. Read as text in the session's encoding:
    psycopg's json loader reads UTF-8 only, and in a LATIN1 database a name like ``événements`` in the plan
    failed the removal with a UnicodeDecodeError."""
    with conn.cursor() as cur:
        cur.adapters.register_loader("json", TextLoader)
        return json.loads(cur.execute(query).fetchone()[0])[0]["Plan"]


def scanned_relations(conn: psycopg.Connection, table: SourceTable, where: sql.Composable) -> list[int]:
    """The OIDs of the relations the day's query scans, as the planner leaves them after pruning partitions by
    the day's bounds. Looked up by name in the catalog, not cast to regclass: a partition may live in a schema
    the role has no USAGE on (reading or deleting through the parent needs none)."""
    nodes, found = [explain(conn, sql.SQL("EXPLAIN (FORMAT JSON, VERBOSE) SELECT FROM {} WHERE {}").format(
        table.identifier, where))], set()
    while nodes:
        node = nodes.pop()
        nodes.extend(node.get("Plans", []))
        if "Relation Name" in node:
            found.add((node["Schema"], node["Relation Name"]))
    if not found:
        return []
    schemas, names = zip(*sorted(found))
    return sorted(oid for (oid,) in conn.execute(
        "SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "JOIN unnest(%s::text[], %s::text[]) AS u(s, r) ON n.nspname = u.s AND c.relname = u.r",
        (list(schemas), list(names))))


def reads_foreign_tables(conn: psycopg.Connection, table: SourceTable, where: sql.Composable) -> bool:
    """Whether the day's query reads a foreign table (the table itself, or a postgres_fdw child or partition,
    as planned now). Its rows come from the remote server's snapshot, one per local transaction, not from
    the exported one: only the session that read the rows sees them as they were read, so the day is read
    by one stream and fingerprinted on that session (see ``plan_streams`` and the archive's fingerprint)."""
    if table.relkind == "f":
        return True
    nodes = [explain(conn, sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM {} WHERE {}").format(table.identifier, where))]
    while nodes:
        node = nodes.pop()
        if node.get("Node Type") == "Foreign Scan":
            return True
        nodes.extend(node.get("Plans", []))
    return False


def _relations_read(conn: psycopg.Connection, table: SourceTable, where: sql.Composable) -> set[tuple[str, str]]:
    """(schema, name) of every relation the day's query reads, as planned now (partitions pruned):
    another day's partition emptied meanwhile is no change of this day."""
    found: set[tuple[str, str]] = set()
    nodes = [explain(conn, sql.SQL("EXPLAIN (FORMAT JSON, VERBOSE) SELECT 1 FROM {} WHERE {}").format(
        table.identifier, where))]
    while nodes:
        node = nodes.pop()
        if "Relation Name" in node:
            found.add((node.get("Schema", ""), node["Relation Name"]))
        nodes.extend(node.get("Plans", []))
    return found


# Every relation of the table's tree as the snapshot sees it whose file is no longer the one the
# snapshot sees (NULL: the relation is gone). Partitioned tables have no file of their own.
_CHANGED_SINCE_SNAPSHOT = """
WITH RECURSIVE""" + _ROOTS + """,
tree(oid) AS (
    SELECT oid FROM roots
    UNION
    SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree ON i.inhparent = tree.oid)
SELECT n.nspname, c.relname, pg_catalog.pg_relation_filenode(c.oid) IS NULL
FROM tree JOIN pg_catalog.pg_class c ON c.oid = tree.oid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm') AND c.relfilenode IS DISTINCT FROM pg_catalog.pg_relation_filenode(c.oid)
"""


# Every partition of the table's tree as the snapshot sees it that is no longer in that tree now:
# pg_partition_ancestors reads pg_inherits as it is committed (like the planner's partition
# descriptor), not as the snapshot sees it, and locks nothing.
_DETACHED_SINCE_SNAPSHOT = """
WITH RECURSIVE""" + _ROOTS + """,
tree(root, oid) AS (
    SELECT roots.oid, i.inhrelid FROM pg_catalog.pg_inherits i JOIN roots ON i.inhparent = roots.oid
    UNION
    SELECT tree.root, i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree ON i.inhparent = tree.oid)
SELECT DISTINCT n.nspname, c.relname
FROM tree JOIN pg_catalog.pg_class c ON c.oid = tree.oid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relispartition AND NOT EXISTS (SELECT FROM pg_catalog.pg_partition_ancestors(c.oid) a WHERE a.relid = tree.root)
"""


def detaching(conn: psycopg.Connection, relation: sql.Identifier) -> str | None:
    """The parent ``relation`` is pending detach from (``DETACH PARTITION ... CONCURRENTLY`` running, or
    interrupted and never finished: its rows are then read neither through the parent nor as the day's
    partition), or None. PostgreSQL 14+; before, no partition is ever pending."""
    if conn.info.server_version < 140000:
        return None
    found = conn.execute("SELECT inhparent::pg_catalog.regclass::text FROM pg_catalog.pg_inherits WHERE inhrelid = "
                         "%s::pg_catalog.regclass AND inhdetachpending", (relation.as_string(conn),)).fetchone()
    return found[0] if found else None


def pending_detach_error(table: str, relation: tuple[str, str], parent: str, then: str | None = None) -> SourceError:
    """The day's partition (schema, name) is neither in the table nor out of it: retried (a running DETACH
    finishes once the run's snapshot is gone), and what to do when it was interrupted; ``then``: what follows the
    FINALIZE (a restore's is not an archive's: its rows are the day's, to attach again)."""
    pasted = ".".join(sql_name(part, qualified=False) for part in relation)  # each part whole, dots and all
    then = then or (f"its rows then leave {table} for a table of their own: archive that one as a table if they are "
                    "to be kept")
    return SourceError(
        f"{relation_name(*relation)} is pending detach from {parent} (ALTER TABLE ... DETACH PARTITION ... "
        f"CONCURRENTLY, running or interrupted): {table} no longer reads its rows, which are not yet a table of "
        "their own", retryable=True,
        cause="a partition of the day is pending detach",
        remedy=f"if no such DETACH is running, finish the interrupted one: ALTER TABLE {parent} DETACH PARTITION "
               f"{pasted} FINALIZE ({then})")


def estimated_rows(conn: psycopg.Connection, table: SourceTable, where: sql.Composable) -> int:
    """The planner's estimate of the day's rows (one EXPLAIN: no row is read; as good as the table's
    statistics, so only for choosing how to read, never for what was read)."""
    return int(explain(conn, sql.SQL("EXPLAIN (FORMAT JSON) SELECT FROM {} WHERE {}").format(
        table.identifier, where))["Plan Rows"])


SIZE_SAMPLE_ROWS = 1000  # rows of the day whose text is measured to estimate its size
# The estimate's margin over the row text measured: a format quotes, escapes and frames values otherwise than a
# row's text does (a JSON string's escapes, a bytea's hex in Parquet), and the sample is only the day's first rows
SIZE_MARGIN = 1.25


def estimated_bytes(conn: psycopg.Connection, table: SourceTable, where: sql.Composable, rows: int = 0,
                    row_overhead: int = 0, escapes: Sequence[tuple[str, int]] = ()) -> int:
    """The day's size as the format writes it: rows (the planner's estimate, at least ``rows``, the day's count
    where the run has it) x (the average width of a row's text (the planner's, at least that of the day's first
    :data:`SIZE_SAMPLE_ROWS` rows, each character of ``escapes``' ``(characters, bytes more)`` counted at what the
    format writes for it: JSON's ``\\u0001`` is six bytes where the text holds one) + ``row_overhead``, the bytes
    the format adds to each row's text: a JSON line's column names), with :data:`SIZE_MARGIN`. Statistics taken
    before the day's rows arrived say one row of a few bytes, so both are checked against the day itself. What
    sizes an upload's parts up front (a store of equal parts cannot grow them once the first is sent, and fails a
    day past 4 x its estimate): as good as an estimate, never used for what was read."""
    plan = explain(conn, sql.SQL("EXPLAIN (FORMAT JSON) SELECT * FROM {} WHERE {}").format(table.identifier, where))
    escaped = sql.SQL("").join(
        sql.SQL(" + {} * (pg_catalog.length(s) - pg_catalog.length(pg_catalog.translate(s, {}, '')))").format(
            sql.Literal(more), sql.Literal(chars)) for chars, more in escapes)
    sampled = conn.execute(sql.SQL("SELECT pg_catalog.avg(pg_catalog.octet_length(s){}) FROM (SELECT t::text AS s "
                                   "FROM (SELECT * FROM {} WHERE {} LIMIT {}) t) x").format(
        escaped, table.identifier, where, sql.Literal(SIZE_SAMPLE_ROWS))).fetchone()[0]
    width = max(int(plan["Plan Width"]), int(sampled or 0)) + row_overhead
    return int(max(int(plan["Plan Rows"]), rows) * width * SIZE_MARGIN)


def primary_key(conn: psycopg.Connection, table: SourceTable) -> list[str] | None:
    """The table's primary key columns in key order (a restore re-creates it), or None; None too for a table
    with inheritance children, whose rows the read returns with its own: its key is its own rows' alone (a
    child's rows may repeat it), where a partitioned table's holds across its partitions."""
    rows = conn.execute(
        "SELECT a.attname FROM pg_catalog.pg_index i CROSS JOIN LATERAL pg_catalog.unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) "
        "JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
        "WHERE i.indrelid = %s::regclass AND i.indisprimary AND NOT EXISTS (SELECT FROM pg_catalog.pg_inherits h "
        "JOIN pg_catalog.pg_class c ON c.oid = h.inhrelid WHERE h.inhparent = i.indrelid AND NOT c.relispartition) "
        "ORDER BY k.n",
        (table.identifier.as_string(conn),)).fetchall()
    return [r[0] for r in rows] or None


@dataclass(frozen=True)
class Replay:
    """Where a hot standby's WAL replay stands: what it reads is the primary's data as of ``replayed``.
    ``received`` is None on a standby that reads WAL from an archive (restore_command), not a stream.
    ``streaming``: whether a WAL receiver streams from the primary now (False: none, cut off or log shipping;
    None: the role may not see its status, pg_stat_wal_receiver shows it to pg_read_all_stats only);
    ``last_message``: when the primary sent the last message the receiver got (the primary's clock, as the
    archive's snapshot time is)."""

    paused: bool
    received: str | None
    replayed: str | None
    unreplayed: bool  # WAL received and not replayed: the primary committed more than the standby shows
    last_commit: dt.datetime | None  # the primary's time of the last transaction replayed
    streaming: bool | None = None
    last_message: dt.datetime | None = None

    def behind_by(self) -> str:
        """The replay's position in words, for a refusal."""
        last = f"; its last replayed commit is of {self.last_commit.isoformat()}" if self.last_commit else ""
        return (f"WAL received up to {self.received or 'unknown (no WAL stream)'}, replayed up to {self.replayed}"
                f"{last}; {self._receiver()}")

    def _receiver(self) -> str:
        if self.streaming is None:
            return "its WAL receiver's status is not visible to this role (pg_read_all_stats)"
        if not self.streaming:
            return "no WAL receiver streaming from the primary (pg_stat_wal_receiver)"
        sent = self.last_message.isoformat() if self.last_message else "unknown"
        return f"its WAL receiver streams, the primary's last message sent at {sent}"

    def stale(self, taken_after: dt.datetime | None) -> bool:
        """Whether the standby's rows may be older than what a read of the primary at ``taken_after`` saw (an
        archive's snapshot): replay paused with WAL waiting; or no commit replayed since then, and replay paused,
        or WAL waiting, or nothing heard from the primary since (see :meth:`cut_off`). (A commit the primary has
        not sent yet, synchronous_commit off, shows only in the time: a running, streaming standby is taken at its
        word, else every day changed by configuration, not by a commit, on an idle primary would be called stale.)
        Asked only before a day is called changed or its archive replaced, where being wrong loses rows."""
        if self.paused and (self.unreplayed or self.received is None):
            return True
        behind = taken_after is not None and (self.last_commit is None or self.last_commit < taken_after)
        return behind and (self.paused or self.unreplayed or self.cut_off(taken_after))

    def cut_off(self, taken_after: dt.datetime) -> bool:
        """Whether the standby may have received nothing the primary committed since ``taken_after``: no WAL
        receiver streaming (a network partition, primary_conninfo or the primary's pg_hba.conf wrong, a log-shipping
        standby), or its last message sent before then. A status the role may not see counts as cut off: a cut-off
        standby shows no WAL waiting, and its day called changed was overwritten with fewer rows."""
        return self.streaming is not True or self.last_message is None or self.last_message < taken_after

    def refusal(self, table: str, day: str, *, archive: str, snapshot: Any, outcome: str,
                instead: str) -> SourceError:
        """The retryable refusal of a standby :meth:`stale` says may be stale: its day read as it was, not as it
        changed (``outcome``: what was not done; ``instead``: where else to do it)."""
        said = f"{table} {day}: the source (ARCHIVE_PG_DSN) is a hot standby "
        if self.paused:
            return SourceError(said + f"whose WAL replay is paused (pg_is_wal_replay_paused(); {self.behind_by()}): "
                               "what the primary committed since is not there to read, so its day may be stale, not "
                               f"changed; {outcome}", table=table, day=day, retryable=True,
                               cause="the standby's WAL replay is paused",
                               remedy="retried automatically; resume replay on the standby (SELECT "
                                      f"pg_wal_replay_resume(), as a superuser or a role granted it), or {instead}")
        cause, remedy = self._lag()
        return SourceError(said + f"lagging behind the archive {archive} (snapshot {snapshot}; {self.behind_by()}): "
                           f"its day may lack rows the primary committed since, not have changed; {outcome}",
                           table=table, day=day, retryable=True, cause=cause, remedy=f"{remedy}; or {instead}")

    def _lag(self) -> tuple[str, str]:
        """(cause, remedy) of a running standby's lag, by what shows it."""
        if self.unreplayed:
            return ("the standby has not replayed the WAL it received",
                    "retried automatically, once the standby has replayed it; if it persists, look at its replay lag "
                    "(pg_stat_replication.replay_lag on the primary, the standby's recovery conflicts and I/O)")
        if self.streaming is None:
            return ("this role cannot see whether the standby's WAL receiver streams from the primary "
                    "(pg_stat_wal_receiver shows its status to pg_read_all_stats only), and no commit was replayed "
                    "since the archive's snapshot",
                    "retried automatically; GRANT pg_read_all_stats to the role so a current standby is told from a "
                    "cut-off one")
        if not self.streaming:
            return ("the standby's WAL receiver is not streaming from the primary (cut off, or a log-shipping "
                    "standby), and no commit was replayed since the archive's snapshot",
                    "retried automatically, once the standby receives the primary's WAL again; if it persists, look "
                    "at pg_stat_wal_receiver and the server log on the standby (primary_conninfo, the network, the "
                    "primary's pg_hba.conf and max_wal_senders; a log-shipping standby's restore_command)")
        return ("the standby has heard nothing from the primary since the archive's snapshot (its WAL receiver's "
                "last message is older)",
                "retried automatically; if it persists, the stream is stalled: look at pg_stat_wal_receiver on the "
                "standby and pg_stat_replication on the primary (wal_receiver_timeout ends a dead connection)")


def snapshot_time(manifest: dict | None) -> dt.datetime | None:
    """When ``manifest``'s archive read its source (None where it does not say, or not as a time with its zone)."""
    try:
        taken = dt.datetime.fromisoformat(str(((manifest or {}).get("source") or {}).get("snapshot_at")))
    except ValueError:
        return None
    return taken if taken.tzinfo is not None else None


def standby_replay(conn: psycopg.Connection) -> Replay | None:
    """Where ``conn``'s WAL replay stands, if it is a hot standby (None on a primary, or where the server cannot
    say). Asked in a savepoint: a refused function must not end the caller's snapshot. (pg_stat_wal_receiver has a
    row while a receiver runs; its status is NULL to a role without pg_read_all_stats.)"""
    query = ("SELECT pg_catalog.pg_is_wal_replay_paused(), pg_catalog.pg_last_wal_receive_lsn()::text, "
             "pg_catalog.pg_last_wal_replay_lsn()::text, COALESCE(pg_catalog.pg_last_wal_receive_lsn() > "
             "pg_catalog.pg_last_wal_replay_lsn(), false), pg_catalog.pg_last_xact_replay_timestamp(), "
             "(SELECT CASE WHEN pg_catalog.count(*) = 0 THEN false WHEN pg_catalog.bool_or(status IS NULL) THEN NULL "
             "ELSE pg_catalog.bool_or(status = 'streaming') END FROM pg_catalog.pg_stat_wal_receiver), "
             "(SELECT pg_catalog.max(last_msg_send_time) FROM pg_catalog.pg_stat_wal_receiver "
             "WHERE status = 'streaming') "
             "WHERE pg_catalog.pg_is_in_recovery()")
    try:
        with conn.transaction():
            row = conn.execute(query).fetchone()
    except psycopg.Error:
        return None
    return Replay(*row) if row else None


def refuse_stale_standby(conn: psycopg.Connection, table: str, day: str, manifest: dict, *, outcome: str,
                         instead: str) -> None:
    """Raise :meth:`Replay.refusal` where ``conn`` is a hot standby that may be behind ``manifest``'s archive (see
    :meth:`Replay.stale`): a day it reads otherwise than the archive is not known to have changed. Asked only where a
    day would be called changed (compare, verify, the source_unchanged check), as an archive run asks it."""
    if conn.info.parameter_status("in_hot_standby") not in ("on", None):
        return  # (a primary says so without a query, from PostgreSQL 14 on)
    replay = standby_replay(conn)
    if replay is not None and replay.stale(snapshot_time(manifest)):
        raise replay.refusal(table, day, archive=(manifest.get("object") or {}).get("uri") or "of the day",
                             snapshot=(manifest.get("source") or {}).get("snapshot_at"), outcome=outcome,
                             instead=instead)


def server_identity(conn: psycopg.Connection) -> tuple[str, str | None, str, str]:
    """(database, system identifier or None where the role may not read it, server version, the database's
    encoding: a fingerprint taken in a multibyte encoding other than UTF-8 proves only in that encoding)."""
    database, version, allowed, encoding = conn.execute(
        "SELECT pg_catalog.current_database(), pg_catalog.current_setting('server_version'), "
        "pg_catalog.has_function_privilege('pg_catalog.pg_control_system()', 'EXECUTE'), "
        "pg_catalog.current_setting('server_encoding')").fetchone()
    system = None
    if allowed:
        system = str(conn.execute("SELECT system_identifier FROM pg_catalog.pg_control_system()").fetchone()[0])
    return database, system, version, encoding


def wrapped(exc: BaseException, conn: psycopg.Connection, spec: Any, day: str, **kwargs: Any) -> ArchiveError:
    """:func:`errors.wrap` of a failure of an operation on ``spec``'s table through ``conn``: with the connection's
    password (redacted), the role whose privileges PostgreSQL checked (:func:`acting_role`: the remedy's GRANT ... TO),
    the login role (its ALTER ROLE ... SET: see :func:`errors.with_roles`) and the database (ON DATABASE), and, where PostgreSQL refused a relation of the configured table's name,
    whether the role may read the configured one itself (asked then: a reporting view ``s.ev`` over ``raw.ev``
    refuses the other ``ev``)."""
    return wrap(exc, spec.name, day, conn.info.password, user=lambda: acting_role(conn), login=conn.info.user,
                database=conn.info.dbname, own_readable=lambda: may_read(conn, spec.schema_name, spec.table_name),
                waited=lambda: (row := row_waited(conn, exc, spec.schema_name)) and str(row), **kwargs)


@dataclass(frozen=True)
class RowWait:
    """The row another session's open transaction held that a statement waited for until lock_timeout (see
    :func:`row_waited`): ``tid`` its tuple id ("block,offset"), ``relation`` its table or index as
    :func:`relation_name` writes it (unqualified where the catalog could not say which schema's), ``index`` whether
    that is an index (the wait was for a row of the same key, not yet committed: None where not known)."""

    tid: str
    relation: str
    index: bool | None

    def __str__(self) -> str:
        return f"tuple ({self.tid}) of {'the unique index ' if self.index else ''}{self.relation}"


# The relations of a name the server printed unqualified, those of ``schema`` (the operation's table's) first
_RELATIONS_NAMED = """
SELECT n.nspname, c.relkind IN ('i', 'I') FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname = %s ORDER BY n.nspname <> %s, n.nspname
"""


def row_waited(conn: psycopg.Connection, exc: BaseException, schema: str) -> RowWait | None:
    """The row ``exc`` (a lock_timeout) waited for, or None where it waited for a table's lock: PostgreSQL's
    CONTEXT names it (:func:`errors.waited_row`, any lc_messages) by a relation name without its schema, looked up
    here, in ``schema`` first (the operation's table's: its partitions and indexes live there), else where it is
    the only relation of that name. The one reading of a row's wait for every step that may meet one (a restore's
    load, a removal's DELETE): told as a table's lock, the user looked in pg_locks for a DDL that did not exist.
    Asked only on a session outside a failed transaction (not asked: the name as printed)."""
    row = waited_row(exc)
    if row is None:
        return None
    tid, name = row
    found: list[tuple[str, bool]] = []
    if conn.info.transaction_status in (psycopg.pq.TransactionStatus.IDLE, psycopg.pq.TransactionStatus.INTRANS):
        with contextlib.suppress(psycopg.Error):
            with conn.transaction():
                found = conn.execute(_RELATIONS_NAMED, (name, schema)).fetchall()
    if found and (found[0][0] == schema or len(found) == 1):
        return RowWait(tid, relation_name(found[0][0], name), found[0][1])
    return RowWait(tid, name, found[0][1] if found and all(i == found[0][1] for _, i in found) else None)


# True while a core entry point runs that names every database error of its work by its own step (see
# :func:`names_database_errors`): the :func:`classified` steps it calls let theirs through to it unchanged
_NAMED_BY_CALLER: contextvars.ContextVar[bool] = contextvars.ContextVar("archive_pipeline_named_by_caller",
                                                                        default=False)


def names_database_errors(function: Callable[..., T]) -> Callable[..., T]:
    """Decorate a core entry point that catches every database error of its work and names it by its own step (a
    removal's "removing", with the words of its idle and statement timeouts; an archive run's "archiving"; a
    proof's "proving"): the :func:`classified` steps it calls (``still_detached``'s "comparing", ``emptied``'s
    "proving") let theirs through to it unchanged. Classified first, a prune's removal that timed out while it asked
    whether the day table was still detached failed as "comparing ... failed", without the removal's words for its
    timeouts, and a wrapped error is past any caller's rewording."""
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        token = _NAMED_BY_CALLER.set(True)
        try:
            return function(*args, **kwargs)
        finally:
            _NAMED_BY_CALLER.reset(token)

    return wrapper


def classified(doing: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorate a core entry point whose parameters ``conn``, ``spec`` and ``day`` name the connection, the table and
    the day it works on: a database error it lets through (a session the server terminated, a failover, a
    statement_timeout, a privilege refused) comes out as :func:`wrapped`'s :class:`ArchiveError` naming table, day,
    cause and remedy, ``retryable`` where a retry can help. The one place the lifecycle's entry points classify their
    errors: a bare psycopg error reached their callers unnamed (the removal asset failed as Dagster's bare retry
    error) or was taken for an unreachable store (the source_unchanged check, never retried). ``doing``: what
    failed, as the message begins ("comparing", "proving", "removing"), where the step is called on its own: called
    by an entry point that names its errors by its own step (:func:`names_database_errors`, an outer classified
    step), it lets the error through to that one unchanged."""
    def decorate(function: Callable[..., T]) -> Callable[..., T]:
        signature = inspect.signature(function)
        naming = names_database_errors(function)

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> T:
            if _NAMED_BY_CALLER.get():  # the caller's step names it (a removal's timeouts in its own words)
                return function(*args, **kwargs)
            try:
                return naming(*args, **kwargs)
            except psycopg.Error as exc:
                given = signature.bind(*args, **kwargs).arguments
                spec = given["spec"]
                raise wrapped(exc, given["conn"], spec, spec.period(given["day"]).isoformat(), doing=doing) from None

        return wrapper

    return decorate


def descends_from(conn: psycopg.Connection, relation: str, table: str) -> bool:
    """Whether ``relation`` (a regclass text) is under ``table`` at any depth, as a partition or an inheritance child
    (a month table ``INHERITS (log)`` whose day tables inherit from it, as pre-partitioning layouts nest them; a month
    partition of a table partitioned by month, then day): its rows are ``table``'s rows. pg_inherits holds both;
    pg_partition_tree only the first. False where either does not exist."""
    return conn.execute(
        "WITH RECURSIVE below(oid) AS (SELECT i.inhrelid FROM pg_catalog.pg_inherits i "
        "WHERE i.inhparent = pg_catalog.to_regclass(%(t)s) UNION SELECT i.inhrelid FROM pg_catalog.pg_inherits i "
        "JOIN below ON i.inhparent = below.oid) "
        "SELECT EXISTS (SELECT FROM below WHERE oid = pg_catalog.to_regclass(%(r)s))",
        {"t": table, "r": relation}).fetchone()[0]


def acting_role(conn: psycopg.Connection) -> str:
    """The role ``conn``'s session acts as (``current_user``: the one a ``SET ROLE`` switched to), whose privileges
    PostgreSQL checks, so the one a remedy's GRANT must name: a GRANT to the login role of a session that switched
    changes nothing the archive reads with, and its next run was refused the same way. The login role where it
    cannot be asked (the connection lost, or in a failed transaction)."""
    found = _asked(conn, "SELECT CURRENT_USER::text")
    return found[0] if found else conn.info.user


def may_read(conn: psycopg.Connection, schema: str, name: str) -> bool:
    """Whether the role may read the relation ``schema.name`` (SELECT on it); False where that cannot be asked (the
    connection lost, or in a failed transaction)."""
    if conn.closed:
        return False
    found = _asked(conn, "SELECT pg_catalog.has_table_privilege(pg_catalog.to_regclass(%s), 'SELECT')",
                   (sql.Identifier(schema, name).as_string(conn),))
    return bool(found and found[0])


def _asked(conn: psycopg.Connection, query: str, params: Sequence[object] = ()) -> tuple | None:
    """``query``'s row, asked after a failure to word its error (in a savepoint where a transaction is open, so a
    refusal leaves it as it was); None where it cannot be asked: the connection lost or in a failed transaction."""
    if conn.closed or conn.info.transaction_status not in (psycopg.pq.TransactionStatus.IDLE,
                                                             psycopg.pq.TransactionStatus.INTRANS):
        return None
    try:
        with conn.transaction() if conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS \
                else contextlib.nullcontext():
            return conn.execute(query, params).fetchone()
    except Exception:  # noqa: BLE001 - not known: the caller's default stands
        return None
