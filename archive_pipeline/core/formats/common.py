"""What the output formats share: the day's query, the copy-format base, and how a value failure is
explained. One module per format beside it (jsonl, csv, parquet); :func:`archive_pipeline.core.formats.get_format` picks one.

Output formats. Each one turns a day's rows into a byte stream with PostgreSQL (COPY) or Arrow
doing the per-value work, so no Python object is built per row or value.

JSONL is ``row_to_json`` of each row, sent through ``COPY ... (FORMAT csv)`` with control bytes as
quote and delimiter: JSON text never contains raw control bytes, so CSV mode passes it through
byte for byte, where text mode would double every backslash.

Every value is archived exactly (read back to the identical PostgreSQL value: JSONL through
``json_populate_record``, CSV through ``COPY FROM``, Parquet through Arrow) or the day fails with an
:class:`UnsupportedTypeError` naming the column and the format to use instead. Each format says
per column how it encodes it (:meth:`Format.encodings`), before anything is read, so a table marked
``strict`` can refuse a lossy column before any upload starts. Values a format cannot hold are
caught in the same query that reads them (an expression that raises inside PostgreSQL for JSONL, a
per-row flag column for Parquet), never by a second scan; when PostgreSQL itself fails on a value
(a ``\\u0000`` it cannot translate, a value over its 1 GB text limit), a probe run only after the
failure finds the column to name.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import psycopg
from psycopg import sql

from archive_pipeline.core.errors import UnsupportedTypeError, is_recursion
from archive_pipeline.core.formats.big_values import find_big_rows, without_big_rows, write_big_rows
from archive_pipeline.core.source import (
    WRITE_ONLY_TYPES,
    Column,
    InnerType,
    Snapshot,
    SourceTable,
    DomainAt,
    breakable_domains,
    copy_chunks,
    domain_value,
    found_inside,
    prefetch,
    rewritten_xml_inside,
    xml_array_text,
    xml_in_fields,
)


class ByteSink(Protocol):
    def write(self, data: bytes | bytearray | memoryview, /) -> int: ...


def encoding(description: str, exact: bool = True, note: str = "") -> dict:
    """One column's entry in :attr:`WriteStats.encodings` (the manifest's ``columns[].encoding``)."""
    return {"encoding": description, "exact": exact, "note": note}


@dataclass
class WriteStats:
    rows: int = 0
    bytes: int = 0  # formatted bytes before compression (Arrow's in-memory size for Parquet)
    output_types: dict[str, str] = field(default_factory=dict)  # column -> type in the archive
    # column -> {"encoding": str, "exact": bool, "note": str}; see Format.encodings
    encodings: dict[str, dict] = field(default_factory=dict)


@dataclass
class Extraction:
    """Everything a format needs to read one day, plus throttled progress reporting."""

    conn: psycopg.Connection
    table: SourceTable
    where: sql.Composable
    snapshot: Snapshot
    chunk_rows: int
    settings: dict[str, str] = field(default_factory=dict)
    progress: Callable[[int, int], None] | None = None
    progress_every: float = 10.0
    strict: bool = False  # refuse, before COPY starts, any column whose encoding is not exact
    header: bool = True  # False for every parallel stream but the first: a CSV header is written once
    # The rows the snapshot holds for the day when already known (a fingerprint taken first, one
    # stream): a reader may then end its session on the last row instead of reading on to learn the
    # stream has ended, so its buffers (libpq's grows to the largest row and never shrinks) are freed
    # before that row is written.
    expected_rows: int | None = None
    # Set by the archive for a format whose reader is a session of its own (Parquet's ADBC) when the day reads a
    # foreign table: postgres_fdw gives each session its own remote transaction, so only the reader's session sees
    # the remote rows it reads; it takes the day's fingerprint there (``fingerprint``, ``fingerprint_seconds``).
    fingerprint_in_reader: bool = False
    fingerprint: object | None = None
    fingerprint_seconds: float = 0.0
    _last_report: float = field(default_factory=time.monotonic)

    def report(self, stats: WriteStats) -> None:
        if self.progress is not None and time.monotonic() - self._last_report >= self.progress_every:
            self._last_report = time.monotonic()
            self.progress(stats.rows, stats.bytes)


# Bytes read ahead of the consumer: the queue of 4 MiB chunks or Arrow batches as before, but one row
# at a time when rows are bigger (#11 §5).
READ_AHEAD_BYTES = 20 << 20

OTHER_FORMATS = {"jsonl": "csv or parquet", "csv": "parquet or jsonl", "parquet": "jsonl or csv"}


def refuse_inexact(format_name: str, table: SourceTable, encodings: dict[str, dict]) -> None:
    """For a ``strict`` table: fail before anything is read if any column would not be exact.

    Called by every format at the start of ``write``; the caller can call it earlier still (with
    ``Format.encodings(table)``) to refuse before an upload is begun.
    """
    for col in table.columns:
        enc = encodings.get(col.name)
        if enc is not None and not enc["exact"]:
            raise UnsupportedTypeError(
                f"column {col.name!r} ({col.type_name}) of {table.qualified} is not archived exactly as "
                f"{format_name} ({enc['encoding']}: {enc['note']}) and the table is strict; archive it as "
                f"{OTHER_FORMATS.get(format_name, 'another format')}, or set strict: false to accept it",
                table=table.qualified, retryable=False)


def refuse_unrestorable(table: SourceTable) -> None:
    """Rows no format's restore can write back, refused in every format before anything is read or
    uploaded (a day without rows is archived as empty, as any):

    - a table without columns (``CREATE TABLE t ()``): its rows hold nothing but their number, and COPY
      and INSERT cannot write them back through a column list, nor can Arrow count them;
    - a column of a type whose input refuses every value (:data:`WRITE_ONLY_TYPES`), or of a type holding
      one anywhere inside it (an array's element, a composite's field, a domain's or a range's base).
    """
    if not table.columns:
        raise UnsupportedTypeError(
            f"{table.qualified} has no columns: its rows hold nothing but their number, which no format's restore "
            "can write back (COPY and INSERT need a column); add a column to the table, or take it out of the "
            "archive configuration", table=table.qualified, retryable=False)
    for col in table.columns:
        inside = [t for t in col.inner if t.type in WRITE_ONLY_TYPES]
        if col.base_type in WRITE_ONLY_TYPES or inside:
            what = "is of a type" if col.base_type in WRITE_ONLY_TYPES else \
                f"holds {inside[0].type} ({inside[0].route}), a type"
            raise UnsupportedTypeError(
                f"column {col.name!r} ({col.type_name}) of {table.qualified} {what} PostgreSQL prints but "
                "cannot read back (its input refuses every value), so no format's restore can write it; archive a "
                f"view of the table with the column as text ({col.name}::text) or without it",
                table=table.qualified, retryable=False)


# Values that functions of their type build without the checks of its input, which then refuses their text:
# no format can hold them so that they read back. (type: (test of one value e, what it is))
UNREADABLE_VALUES = {
    "xml": ("NOT pg_catalog.xml_is_well_formed_content({e}::text)",
            "xml that xml's input refuses (a character XML 1.0 forbids, such as a control character or U+FFFF, "
            "which xmlelement(), xmlforest() and xmlcomment() let through)"),
    "circle": ("pg_catalog.radius({e}) < 0",
               "a circle of negative radius (circle(point, radius) checks nothing), which circle's input refuses"),
    "aclitem": ("CASE WHEN {e} IS NULL THEN false ELSE EXISTS (SELECT FROM pg_catalog.aclexplode(ARRAY[{e}]) AS x "
                "WHERE (x.grantee <> 0 AND NOT EXISTS (SELECT FROM pg_catalog.pg_roles AS r WHERE r.oid = x.grantee)) "
                "OR NOT EXISTS (SELECT FROM pg_catalog.pg_roles AS r WHERE r.oid = x.grantor)) "
                # an item without privileges gives aclexplode() no row: its text tells a dropped role by the number
                # printed for it (a name of digits only that no role has: a role so named prints as it is)
                "OR EXISTS (SELECT FROM pg_catalog.regexp_match({e}::pg_catalog.text, "
                "'^(?:([0-9]+)|\"(?:[^\"]|\"\")*\"|[^=\"]*)=[^/]*/(?:([0-9]+)|.*)$') AS m "
                "WHERE EXISTS (SELECT FROM pg_catalog.unnest(m) AS n WHERE n IS NOT NULL AND NOT EXISTS "
                "(SELECT FROM pg_catalog.pg_roles AS r WHERE r.rolname OPERATOR(pg_catalog.=) n))) END",
                "an aclitem naming a role that no longer exists (it prints the role's number, which aclitem's "
                "input refuses)"),
}


def refuse_unreadable(conn: psycopg.Connection, table: SourceTable, where: sql.Composable) -> None:
    """Refuse, before anything is read or uploaded, a day holding a value its type's input refuses to read
    back (:data:`UNREADABLE_VALUES`, anywhere in the column's value: itself, an array's element, a composite's
    field, a range's bound, through domains): archived, it would be green and recorded exact, and no restore
    or proof of the day could ever succeed. One query per column that holds such a type, none otherwise."""
    for col in table.columns:
        if not col.unreadable:
            continue
        holds = sql.SQL(" OR ").join(
            found_inside(sql.Identifier(col.name), inner, lambda v, test=UNREADABLE_VALUES[inner.type][0]: sql.SQL(test).format(e=v))
            for inner in col.unreadable)
        query = sql.SQL("SELECT EXISTS (SELECT FROM {table} WHERE ({where}) AND ({holds}))").format(
            table=table.identifier, where=where, holds=holds)
        if conn.execute(query).fetchone()[0]:
            what = " or ".join(dict.fromkeys(UNREADABLE_VALUES[t.type][1] for t in col.unreadable))
            where_inside = "; ".join(t.route for t in col.unreadable if t.steps and set(t.steps) != {"domain"})
            raise UnsupportedTypeError(
                f"column {col.name!r} ({col.type_name}{', at ' + where_inside if where_inside else ''}) of "
                f"{table.qualified} holds {what}: no format can archive the day so that it reads back; fix the "
                f"value in the source (or archive a view of the table with the column as text, {col.name}::text)",
                table=table.qualified, retryable=False)


def refuse_broken_domains(conn: psycopg.Connection, table: SourceTable, where: sql.Composable) -> None:
    """Refuse, before anything is read or uploaded, a day holding a value its own domain refuses (anywhere in the
    column's value): one under a CHECK added NOT VALID, or a NULL under a domain refusing NULL, which PostgreSQL
    lets in through a scalar subquery of no row (see :func:`~archive_pipeline.core.source.breakable_domains`).
    Archived, the day would be green, and no restore or proof of it could succeed: each loads the values back
    into the column's type, which checks them. A query per column holding such a domain, none for other tables;
    a NOT VALID CHECK is evaluated on every value there, a domain refusing NULL only looks for NULLs."""
    if table.oid is None:
        return
    domains = breakable_domains(conn, table.oid)
    if not domains:
        return
    by_number = dict(conn.execute("SELECT attnum, attname::text FROM pg_catalog.pg_attribute WHERE attrelid = %s "
                                  "AND attnum > 0 AND NOT attisdropped", (table.oid,)).fetchall())
    for attnum, found in domains.items():
        name = by_number.get(attnum)
        column = next((c for c in table.columns if c.name == name), None)
        if column is not None:
            _refuse_broken_domain(conn, table, where, column, found)


def _breaks(domain: DomainAt) -> Callable[[sql.Composable], sql.Composable]:
    """The test of one value of ``domain``: converted to it again where a NOT VALID CHECK may refuse any value
    (raising there), else whether it is NULL (num_nulls: a composite of NULL fields is no NULL)."""
    if domain.not_valid:
        return lambda v: sql.SQL("pg_catalog.num_nulls({}) < 0").format(domain_value(v, domain))
    return lambda v: sql.SQL("pg_catalog.num_nulls({}) = 1").format(v)


def _refuse_broken_domain(conn: psycopg.Connection, table: SourceTable, where: sql.Composable, column: Column,
                          found: Sequence[DomainAt]) -> None:
    """:func:`refuse_broken_domains` for one column (inside a savepoint: a value that breaks a NOT VALID CHECK
    raises, which must not abort the day's snapshot)."""
    holds = sql.SQL(" OR ").join(found_inside(sql.Identifier(column.name), d.at, _breaks(d), as_read=True)
                                 for d in found)
    query = sql.SQL("SELECT EXISTS (SELECT FROM {table} WHERE ({where}) AND ({holds}))").format(
        table=table.identifier, where=where, holds=holds)
    # (the detail is built whole here, never passed through str.format: PostgreSQL's message quotes the
    # constraint's name, which may hold braces)
    domains = ", ".join(dict.fromkeys(d.at.type for d in found))
    try:
        with conn.transaction():
            broken = conn.execute(query).fetchone()[0]
        detail = (f"a NULL its domain ({domains}) refuses (NOT NULL, or a CHECK false for NULL), which PostgreSQL "
                  "stored unchecked (as it does a NULL from a scalar subquery of no row, or of an outer join)")
    except psycopg.errors.OperationalError:
        raise
    except psycopg.Error as exc:
        broken = True
        detail = (f"a value its domain ({domains}) refuses ({first_line(exc)}), which PostgreSQL kept (a CHECK "
                  "added NOT VALID checks only values written after it)")
    if not broken:
        return
    nested = "; ".join(d.at.route for d in found if d.at.steps and set(d.at.steps) != {"domain"})
    # (only a domain that is the column's type, or one it is a domain over: PostgreSQL cannot validate one used
    # inside an array, composite or range, "cannot alter type ... because column ... uses it")
    not_valid = [f"ALTER DOMAIN {d.at.type} VALIDATE CONSTRAINT {sql.Identifier(c).as_string(conn)}"
                 for d in found if set(d.at.steps) <= {"domain"} for c in d.not_valid]
    own = next((d for d in found if set(d.at.steps) <= {"domain"}), None)  # (the column's own type's)
    view = (f"the column as its domains' base type ({sql.Identifier(column.name).as_string(conn)}::"
            f"{_ultimate_base(conn, own.at.type)})" if own else "the column as text")
    raise UnsupportedTypeError(
        f"column {column.name!r} ({column.type_name}{', at ' + nested if nested else ''}) of {table.qualified} holds "
        f"{detail}: archived, the day "
        "would be green, and no restore or proof of it could succeed (each loads the values back into the "
        "column's type, which checks them)", table=table.qualified, retryable=False,
        cause="a value its domain refuses",
        remedy="fix the value in the source (UPDATE the rows to values the domain takes"
               + (f", then {'; '.join(not_valid)}" if not_valid else "")
               + f"), or archive a view of the table with {view}")


def _ultimate_base(conn: psycopg.Connection, domain: str) -> str:
    """The type at the end of ``domain``'s chain of domains (a domain over a domain: casting to the one below would
    check the same constraint again), as SQL writes it in this session."""
    return conn.execute("WITH RECURSIVE chain(oid, typmod) AS (SELECT %s::pg_catalog.regtype::pg_catalog.oid, -1 "
                        "UNION ALL SELECT t.typbasetype, t.typtypmod FROM chain JOIN pg_catalog.pg_type t ON t.oid = "
                        "chain.oid WHERE t.typtype = 'd') SELECT pg_catalog.format_type(c.oid, NULLIF(c.typmod, -1)) "
                        "FROM chain c JOIN pg_catalog.pg_type t ON t.oid = c.oid WHERE t.typtype <> 'd'",
                        (domain,)).fetchone()[0]


# ---- refusals raised inside PostgreSQL and failures PostgreSQL raises on a value ----------------------

_MARKER = "archive_pipeline:refuse"
_MARKER_RE = re.compile(re.escape(_MARKER) + r":(\d+):(\w+)")


def raise_in_sql(column_index: int, reason: str, value: sql.Composable) -> sql.Composed:
    """An int expression that fails with a recognisable message when evaluated.

    PostgreSQL has no raise function usable in a read-only query, but a failing cast carries its
    input into the message: ``invalid input syntax for type integer: "archive_pipeline:refuse:3:..."``.
    ``value`` makes the expression non-constant, so the planner cannot fold (and raise) it up front.
    """
    return sql.SQL("pg_catalog.concat({m}, pg_catalog.pg_column_size({v}) * 0)::int4").format(
        m=sql.Literal(f"{_MARKER}:{column_index}:{reason}:"), v=value)


def refusal_in(exc: BaseException) -> tuple[int, str] | None:
    """(column index, reason) of a :func:`raise_in_sql` refusal carried by ``exc``, if it is one."""
    match = _MARKER_RE.search(str(exc))
    return (int(match.group(1)), match.group(2)) if match else None


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE of a psycopg or ADBC error (ADBC keeps it on the exception or in its text)."""
    state = getattr(exc, "sqlstate", None)
    if state:
        return state
    # a bare code, but never a port number ("port 54857", "127.0.0.1:54857") that happens to look like one
    match = re.search(r"SQLSTATE: ([0-9A-Z]{5})|(?<!port )(?<!:)\b(22[0-9A-Z]{3}|54[0-9A-Z]{3})\b", str(exc))
    return (match.group(1) or match.group(2)) if match else None


_TOO_BIG = ("invalid memory alloc request size", "out of memory", "string buffer", "requested length too large",
            "would overflow")


# A reader that could not import the archive's snapshot (its exporting session ended).
_SNAPSHOT_IMPORT = ("invalid snapshot identifier", "could not import the requested snapshot")


def is_value_failure(exc: BaseException) -> bool:
    """Whether PostgreSQL (or the Arrow reader) failed on a value rather than on the connection or the
    server: data exceptions (class 22, e.g. 22P05 untranslatable character), program limits (54000:
    a value or row over 1 GB as text), and the allocation failures such a value causes. Not a function or trigger
    recursing past the stack depth limit (54001 too): no value is at fault, and probing the columns would blame
    the first one, each probe evaluating the recursion again (see errors.is_recursion)."""
    state = sqlstate_of(exc) or ""
    text = str(exc)
    if any(marker in text for marker in _SNAPSHOT_IMPORT) or is_recursion(exc):  # (22023: the session's, no value's)
        return False
    if state.startswith(("22", "54")):
        return True
    if "failed on request of size" in text.lower() and "string buffer" not in text:
        return False  # the server out of memory for the moment (53200 without its SQLSTATE, as ADBC says it)
    return state in ("", "XX000") and any(marker in text for marker in _TOO_BIG)


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The error's own first line, short: enough to say what failed, never a whole query or value."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= limit else text[:limit] + "..."


def _probe(conn: psycopg.Connection, table: SourceTable, where: sql.Composable,
           probes: Sequence[sql.Composable]) -> psycopg.Error | None:
    """The value failure evaluating ``probes`` over the day raises, if any; inside a savepoint, so
    the snapshot survives it."""
    query = sql.SQL("SELECT pg_catalog.sum(pg_catalog.pg_column_size(ROW({exprs}))) FROM {table} WHERE {where}").format(
        exprs=sql.SQL(", ").join(probes), table=table.identifier, where=where)
    conn.execute("SAVEPOINT archive_probe")
    try:
        conn.execute(query)
    except psycopg.Error as exc:
        conn.execute("ROLLBACK TO SAVEPOINT archive_probe")
        if not is_value_failure(exc):
            raise  # a timeout or a lost connection says nothing about the columns: stop probing
        return exc
    conn.execute("RELEASE SAVEPOINT archive_probe")
    return None


def failing_columns(conn: psycopg.Connection, table: SourceTable, where: sql.Composable,
                    probes: Sequence[sql.Composable]) -> tuple[list[int] | None, BaseException | None]:
    """Which column's expression fails over the day, and PostgreSQL's error for it: bisection, about
    2·log2(columns) scans, run only after a failure. Several indexes when only their combination
    fails (a row over PostgreSQL's 1 GB limit); (None, None) when no probe fails. The error is a
    :class:`ReadFailure` when the column fails as the relation yields it, with no format's expression around it."""
    candidates = list(range(len(probes)))
    try:
        failure = _probe(conn, table, where, [probes[i] for i in candidates])
        if failure is None:
            # Nothing fails inside the server: it may be the sending, which converts every text to the
            # session's UTF-8 (a SQL_ASCII database stores bytes that are not). convert_to does the same.
            probes = [sql.SQL("pg_catalog.convert_to(pg_catalog.concat({}), 'UTF8')").format(p) for p in probes]
            failure = _probe(conn, table, where, probes)
        if failure is None:
            return None, None
        while len(candidates) > 1:
            half = len(candidates) // 2
            left, right = candidates[:half], candidates[half:]
            found = _probe(conn, table, where, [probes[i] for i in left])
            if found is None:
                found = _probe(conn, table, where, [probes[i] for i in right])
                if found is None:
                    break  # only together
                candidates = right
            else:
                candidates = left
            failure = found
    except psycopg.Error:
        return None, None  # the probe itself could not run (connection lost): report the original failure
    return candidates, _as_read(conn, table, where, candidates, failure)


class ReadFailure(Exception):
    """PostgreSQL's error reading the day as the relation yields it, with no format's expression around the values:
    the relation's own expression (a view's, a virtual generated column's, a row security policy's, a foreign
    table's conversion of its remote row) raises on a row of the day, so the day's query fails the same way in every
    format, and only fixing the row or that expression helps. ``in_columns``: the culprit columns raise it (False:
    reading the rows alone does, such as a view's WHERE, or a view that computes every column, DISTINCT's)."""

    def __init__(self, error: BaseException, in_columns: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.sqlstate = sqlstate_of(error)
        self.in_columns = in_columns


def _as_read(conn: psycopg.Connection, table: SourceTable, where: sql.Composable, culprits: list[int],
             failure: psycopg.Error) -> BaseException:
    """``failure`` (the culprit columns' as a format reads them), or a :class:`ReadFailure` where those columns fail
    as the relation yields them, plain: then no format can read the day, and naming another one would send the user
    round in a circle. Two probes more, after a failure only: the plain columns, then none (the rows alone). Not for
    a value too big or not UTF-8, which is the format's form of it failing (see :func:`explain_value_failure`)."""
    if _failure_kind(failure) != "conversion":
        return failure
    try:
        plain = _probe(conn, table, where, [sql.Identifier(table.columns[i].name) for i in culprits])
        rows = _probe(conn, table, where, []) if plain is not None else None
    except psycopg.Error:
        return failure  # (the connection lost: the format's failure is still the one to name)
    return failure if plain is None else ReadFailure(rows or plain, in_columns=rows is None)


# Text PostgreSQL cannot send in the session's encoding (UTF-8): the same in every format.
_ENCODING_STATES = ("22021", "22P05")  # character_not_in_repertoire, untranslatable_character
_ENCODING_MARKERS = ("invalid byte sequence for encoding", "has no equivalent in encoding")


def _failure_kind(exc: BaseException) -> str:
    """What a value failure is: "too_big" (over PostgreSQL's 1 GB per value or row as text), "encoding" (text that
    cannot be sent as UTF-8), or "conversion" (any other: a value PostgreSQL cannot convert)."""
    state = sqlstate_of(exc) or ""
    if state.startswith("54") or any(marker in str(exc) for marker in _TOO_BIG):
        return "too_big"
    if state in _ENCODING_STATES or any(marker in str(exc) for marker in _ENCODING_MARKERS):
        return "encoding"
    return "conversion"


def _culprits_named(table: SourceTable, culprits: list[int] | None) -> str:
    """The column(s) a value failure is on, as its message names them."""
    if culprits is None:
        return "a value of the day"
    if len(culprits) == 1:
        col = table.columns[culprits[0]]
        return f"column {col.name!r} ({col.type_name})"
    return "the row formed by columns " + ", ".join(repr(table.columns[i].name) for i in culprits)


def explain_value_failure(format_name: str, table: SourceTable, exc: BaseException,
                          culprits: list[int] | None) -> UnsupportedTypeError:
    """A typed, non-retryable error naming the column(s) PostgreSQL failed on, the cause, the remedy."""
    if isinstance(exc, ReadFailure):
        return _unreadable_in_any_format(table, exc, culprits)
    state = sqlstate_of(exc) or "?"
    kind = _failure_kind(exc)
    where = _culprits_named(table, culprits)
    if kind == "too_big":
        cause = ("is larger than PostgreSQL can send in one piece (1 GB per value or row as text, "
                 f"SQLSTATE {state}: {first_line(exc)})")
        remedy = _too_big_remedy(format_name, [table.columns[i] for i in culprits or []])
    elif kind == "encoding":
        cause = f"cannot be sent as UTF-8 (SQLSTATE {state}: {first_line(exc)})"
        if getattr(table, "encoding", None) in (None, "", "SQL_ASCII"):
            remedy = ("no format can archive it as it is: every format reads text as UTF-8. Fix the value in the "
                      "source (in a SQL_ASCII database, which stores any bytes, convert it from the encoding it was "
                      "written in, e.g. from LATIN1: convert_from(convert(convert_to(value, 'SQL_ASCII'), 'LATIN1', "
                      "'UTF8'), 'SQL_ASCII')), then archive the day again")
        else:  # a byte the database's own encoding leaves undefined (WIN1252's 0x81): SQL_ASCII's recipe mangles it
            remedy = (f"no format can archive it as it is: every format reads text as UTF-8, and the value holds a "
                      f"byte that {table.encoding}, the database's encoding, leaves undefined (the byte the message "
                      "names, written by a client in another encoding). Replace or remove that byte in the source "
                      "value, then archive the day again")
    else:
        cause = f"cannot be converted by PostgreSQL (SQLSTATE {state}: {first_line(exc)})"
        remedy = f"archive this table as {OTHER_FORMATS.get(format_name, 'another format')}, or fix the value"
    return UnsupportedTypeError(f"{where} of {table.qualified} {cause} in {format_name}; {remedy}",
                                table=table.qualified, retryable=False)


# What computes a value as a relation of the kind is read (and so can raise on a row of it in every format), and
# what to fix then; for the other kinds, _READ_BY_TABLE.
_READ_BY = {
    "v": ("the view's definition", "fix that row in the tables the view reads, or the view's definition (so that its "
                                   "expression takes the row)"),
    "f": ("the foreign table's conversion of its remote row", "fix that row in the remote table, or the foreign "
                                                              "table's column type"),
}
_READ_BY_TABLE = ("an expression PostgreSQL computes as it reads the table (a virtual generated column's, a row "
                  "security policy's, or a foreign partition's conversion of its remote row)",
                  "fix that row, or that expression")


def _unreadable_in_any_format(table: SourceTable, exc: ReadFailure, culprits: list[int] | None
                              ) -> UnsupportedTypeError:
    """The refusal of a day the relation itself cannot yield (see :class:`ReadFailure`): its own expression fails on
    a row, in PostgreSQL's words, with the remedy to fix the row or the expression; another format fails the same
    way, so none is named."""
    what, remedy = _READ_BY.get(table.relkind, _READ_BY_TABLE)
    said = f"SQLSTATE {exc.sqlstate or '?'}: {first_line(exc.error)}"
    if exc.in_columns:
        message = (f"{_culprits_named(table, culprits)} of {table.qualified} cannot be read in any format: {what} "
                   f"fails computing it on a row of the day ({said})")
    else:
        message = (f"the day's rows of {table.qualified} cannot be read in any format: {what} fails on one of them "
                   f"({said})")
    return UnsupportedTypeError(
        f"{message}, before any format sees it (every format fails the same way)", table=table.qualified,
        retryable=False, cause=f"{what} fails on a row of the day",
        remedy=f"{remedy}, then archive the day again")


def _too_big_remedy(format_name: str, culprits: list[Column]) -> str:
    """Parquet reads values in binary, so a text value whose CSV or JSON form passes 1 GB (quotes
    doubled, control characters escaped) fits there. A bytea's text form is hex, twice its size, and
    the content fingerprint and every restore read that form: no format can archive one over ~512 MiB,
    nor a row whose own binary form passes 1 GB."""
    if format_name != "parquet" and culprits and not any(c.base_type == "bytea" for c in culprits):
        return "archive this table as parquet (values are read in binary there)"
    if format_name != "parquet" and not culprits:
        return ("archive this table as parquet if the value is text or json (read in binary there); a bytea over "
                "~512 MiB cannot be archived in any format (its hex text form, which the content fingerprint and "
                "the restore read, passes 1 GB): keep such values smaller or outside the archived table")
    return ("no format can archive it: PostgreSQL cannot produce it in one piece (a bytea's hex text form, which the "
            "content fingerprint and the restore read, passes 1 GB over ~512 MiB, as does any row over 1 GB); keep "
            "such values smaller or outside the archived table (e.g. as objects the row points to)")


# ---- the day's query ------------------------------------------------------------------------------

def select_list(table: SourceTable) -> sql.Composed:
    """The day's columns for CSV, cast only where the text form would lose meaning."""
    return sql.SQL(", ").join(sql.SQL("{} AS {}").format(csv_expression(c, i), sql.Identifier(c.name))
                              for i, c in enumerate(table.columns))


# regproc and regoper print a function's or operator's name alone, qualified when it is not the only one
# of that name ("pg_catalog.abs"), which their input then refuses ("more than one function named"): such
# a value cannot be restored in any format. (A name on the path reads back under the same path; an OID
# of nothing prints as its number, which reads back as itself.)
NAME_INPUT = {"regproc": "to_regproc", "regoper": "to_regoper"}


def ambiguous_name(col: Column) -> sql.Composable | None:
    """For a column holding regproc or regoper values (itself, or inside arrays, composites, domains or
    ranges at any depth), a condition true where one prints as a name its input cannot read back (an
    overloaded function or operator); None for other columns."""
    function = NAME_INPUT.get(col.base_type) if not col.nested else None  # (an array of arrays: through inner)
    if function is None:
        inside = [_ambiguous_inside(col.name, t) for t in col.inner if t.type in NAME_INPUT]
        return sql.SQL("({})").format(sql.SQL(" OR ").join(inside)) if inside else None
    test = _name_does_not_read_back(function, sql.SQL("e"))
    if col.is_array:
        return sql.SQL("EXISTS (SELECT FROM pg_catalog.unnest({c}) AS u(e) WHERE {t})").format(c=sql.Identifier(col.name), t=test)
    return sql.SQL("(SELECT {t} FROM (SELECT {c}) AS u(e))").format(c=sql.Identifier(col.name), t=test)


def _name_does_not_read_back(function: str, value: sql.Composable) -> sql.Composed:
    return sql.SQL("{e}::oid <> 0 AND {e}::text !~ '^[0-9]+$' AND pg_catalog.{f}({e}::text)::oid IS DISTINCT FROM "
                   "{e}::oid").format(f=sql.Identifier(function), e=value)


def _ambiguous_inside(column: str, inner: InnerType) -> sql.Composed:
    """Whether any regproc or regoper value at the end of ``inner``'s way through the column's value
    does not read back."""
    return found_inside(sql.Identifier(column), inner, lambda value: _name_does_not_read_back(NAME_INPUT[inner.type], value))


def refused_column(col: Column, reason: str) -> str:
    """How a refusal names its column: with the way to the refused values when they sit inside its type
    (a regproc field of a composite), which the column's type name alone does not show."""
    if reason == "xml_rewritten":
        ways = [t.route for t in xml_in_fields(col)]
    else:
        ways = [t.route for t in col.inner if t.type in NAME_INPUT] \
            if reason == "reg_ambiguous" and (col.base_type not in NAME_INPUT or col.nested) else []
    return f"column {col.name!r} ({col.type_name}{', at ' + '; '.join(ways) if ways else ''})"


def inside_refusals(col: Column) -> list[tuple[sql.Composable, str]]:
    """(condition, reason) of each refusal of values inside the column's type, in every format: a regproc or
    regoper name that does not read back (:func:`ambiguous_name`), a composite's xml field whose text its output
    rewrites (:func:`rewritten_xml_inside`)."""
    found = [(ambiguous_name(col), "reg_ambiguous"),
             (rewritten_xml_inside(col, sql.Identifier(col.name)), "xml_rewritten")]
    return [(condition, reason) for condition, reason in found if condition is not None]


def refuse_ambiguous_names(col: Column, index: int, expr: sql.Composable) -> sql.Composable:
    """``expr`` (the column's value as a format writes it), failing the query where a value inside it cannot be
    written exactly by any format (see :func:`inside_refusals`)."""
    for condition, reason in inside_refusals(col):
        expr = sql.SQL("CASE WHEN {a} THEN CASE WHEN {r} IS NULL THEN {e} END ELSE {e} END").format(
            a=condition, r=raise_in_sql(index, reason, sql.Identifier(col.name)), e=expr)
    return expr


def csv_expression(col: Column, index: int) -> sql.Composable:
    ident = sql.Identifier(col.name)
    if col.base_type == "xml":
        return xml_text(col)
    if col.base_type in NAME_INPUT or col.inner or col.unreadable:
        return refuse_ambiguous_names(col, index, ident)
    if col.base_type == "money" and not col.nested:  # (an array of arrays is its literal, under lc_monetary C)
        # money's text form depends on lc_monetary ("$1,234.56"); numeric is exact and portable.
        return sql.SQL("{}::{}").format(ident, sql.SQL(col.cast_name("numeric")))
    return ident


def xml_text(col: Column) -> sql.Composed:
    """An xml column (or an array of xml, through domains, at any depth of arrays) as its stored text, in every
    format.

    xml's output function (what COPY, ``concat()`` and ``array_out`` write) drops an XML declaration
    that says nothing beyond the defaults (``<?xml version="1.0" encoding="UTF-8"?>`` and the line
    break after it) and rewrites the others, while the value keeps the text it was given, which
    ``::text`` returns as it is (and the content fingerprint hashes). An array goes through
    ``text[]`` (element by element, bounds and dimensions kept) to its literal; an array of arrays (of a domain
    over xml[]) is that literal of each element within its own (see source.xml_array_text). xml's input reads
    that text back to the same stored text (with ``xmloption`` content, so fragments are accepted).
    """
    ident = sql.Identifier(col.name)
    if col.is_array:
        return xml_array_text(ident, col.arrays)
    return sql.SQL("{}::pg_catalog.text").format(ident)


def day_query(table: SourceTable, where: sql.Composable, columns: sql.Composable | None = None) -> sql.Composed:
    return sql.SQL("SELECT {cols} FROM {table} WHERE {where}").format(
        cols=columns if columns is not None else select_list(table), table=table.identifier, where=where)


def output_text(expr: sql.Composable) -> sql.Composed:
    """The value's text as its type's output function writes it (what COPY and array_out use).

    ``concat()`` applies the output function (``::text`` can differ: inet adds its mask); the
    ``IS DISTINCT FROM NULL`` keeps a composite with a NULL field, for which ``IS NOT NULL`` is false.
    """
    return sql.SQL("CASE WHEN {e} IS DISTINCT FROM NULL THEN pg_catalog.concat({e}) END").format(e=expr)


def element_texts(array: sql.Composable) -> sql.Composed:
    """An array as the ``text[]`` of its elements' texts by their output function, its shape (dimensions, bounds)
    and NULL elements kept: its literal (array_out prints each element by the output function) read back as text[]
    (array_in of text undoes array_out's quoting). Neither step looks a cast up: ``::text[]`` of an enum array
    would call a cast of the enum to text, and row_to_json a cast to json, of whatever the catalog holds as the
    query runs (one a DBA created while the day is read included), where the snapshot's description said none."""
    return sql.SQL("({})::pg_catalog.text[]").format(output_text(array))


class Format(Protocol):
    name: str
    extension: str
    content_type: str
    compresses_internally: bool
    reads_in_own_session: bool  # the rows are read by another session than the archive's (see Extraction)

    def encodings(self, table: SourceTable) -> dict[str, dict]:
        """Per column {"encoding", "exact", "note"}, known before anything is read."""
        ...

    def row_overhead(self, table: SourceTable) -> int:
        """The bytes the format adds to a row's text (what ``source.estimated_bytes`` measures), for sizing an
        upload up front."""
        ...

    # (characters, bytes more than the one each is in a row's text) the format writes for a character of a value
    # (JSON's escapes), for sizing an upload up front (see ``source.estimated_bytes``); empty: as the text has it
    text_escapes: tuple[tuple[str, int], ...]

    def write(self, extraction: Extraction, out: ByteSink) -> WriteStats: ...


@dataclass(frozen=True)
class CopyFormat:
    """A format whose bytes COPY produces exactly; Python only moves the buffers."""

    name: str
    extension: str
    content_type: str
    compresses_internally = False
    reads_in_own_session = False
    # whether the COPY writes JSON, where a text value's escaping (\u00XX per control character) may make
    # its row's message six times its size: big text values then take big_values' sliced path as bytea's do
    json_text = False
    text_escapes = ()  # (CSV doubles a quote as a row's text already does)

    def header(self, table: SourceTable) -> bytes:
        return b""

    @staticmethod
    def row_overhead(table: SourceTable) -> int:
        """Nothing beyond the row's text: CSV quotes about as a row's text does (see JsonLines for one that adds)."""
        return 0

    def copy_statement(self, table: SourceTable, where: sql.Composable) -> sql.Composed:
        raise NotImplementedError

    def output_type(self, col: Column) -> str:
        return "text"

    def encodings(self, table: SourceTable) -> dict[str, dict]:
        raise NotImplementedError

    def probes(self, table: SourceTable) -> list[sql.Composable]:
        """Per column, an expression that fails where this format's COPY fails on that column."""
        raise NotImplementedError

    def write(self, extraction: Extraction, out: ByteSink) -> WriteStats:
        table = extraction.table
        encodings = self.encodings(table)
        if extraction.strict:
            refuse_inexact(self.name, table, encodings)
        stats = WriteStats(output_types={c.name: self.output_type(c) for c in table.columns}, encodings=encodings)
        conn = extraction.conn
        # A savepoint, so that after PostgreSQL fails on a value the snapshot is still there to find the column.
        conn.execute("SAVEPOINT archive_copy")
        try:
            # written after the others (see big_values)
            big = find_big_rows(conn, table, extraction.where, self.json_text)
            where = extraction.where if big is None else without_big_rows(extraction.where, big)
            statement = self.copy_statement(table, where)
            head = self.header(table) if extraction.header else b""
            if head:
                out.write(head)
                stats.bytes += len(head)
            chunks = copy_chunks(conn, statement, extraction.chunk_rows)
            for chunk in prefetch(chunks, depth=2, max_bytes=READ_AHEAD_BYTES, size=lambda c: len(c.data),
                                  cancel=conn.cancel_safe):
                out.write(chunk.data)
                stats.rows += chunk.rows
                stats.bytes += len(chunk.data)
                extraction.report(stats)
                del chunk  # before the next one is read: a big row must not be held twice
            if big is not None:
                rows, written = write_big_rows(conn, table, extraction.where, big, self.copy_statement, out.write)
                stats.rows += rows
                stats.bytes += written
        except psycopg.Error as exc:
            raise self._explain(extraction, exc) from None
        return stats

    def _explain(self, extraction: Extraction, exc: psycopg.Error) -> BaseException:
        table = extraction.table
        refused = refusal_in(exc)
        if refused is not None and refused[0] < len(table.columns) and refused[1] in REFUSALS:
            index, reason = refused
            col = table.columns[index]
            encoding = extraction.conn.info.parameter_status("server_encoding") or "?"
            return UnsupportedTypeError(
                f"{refused_column(col, reason)} of {table.qualified} "
                f"{REFUSALS[reason].replace('{encoding}', encoding)} in {self.name}; "
                f"{refusal_remedy(reason, self.name)}", table=table.qualified, retryable=False)
        if not is_value_failure(exc):
            return exc
        try:
            extraction.conn.execute("ROLLBACK TO SAVEPOINT archive_copy")
        except psycopg.Error:
            return exc
        culprits, failure = failing_columns(extraction.conn, table, extraction.where, self.probes(table))
        parsed = None if isinstance(failure, ReadFailure) else self.refused_by_parse(table, failure or exc, culprits)
        return parsed or explain_value_failure(self.name, table, failure or exc, culprits)

    def refused_by_parse(self, table: SourceTable, exc: BaseException, culprits: list[int] | None
                         ) -> UnsupportedTypeError | None:
        """A value failure the format's own check raised by parsing a value as its restore will (JSONL's json
        escapes in a multibyte database), as the refusal it is; None for any other."""
        return None


def refusal_remedy(reason: str, format_name: str) -> str:
    """What to do about a refused value: another format, unless no format can hold it."""
    return REMEDIES.get(reason) or f"archive this table as {OTHER_FORMATS.get(format_name, 'another format')}"


# Refusals no other format helps with (the value's text does not read back in any of them).
REMEDIES = {
    "reg_ambiguous": "no format can archive it (every one holds its text): change the column's type (or the type "
                     "inside it that is regproc or regoper) to regprocedure or regoperator, which print the argument types, then archive the day again",
    "xml_rewritten": "no format can archive it exactly (each writes a composite by its output): keep the XML "
                     "declaration out of the value (xml's output drops a version-only one), or make the field text "
                     "(or the document a column of its own, which every format writes as stored), then archive the "
                     "day again",
}


REFUSALS = {
    "reg_ambiguous": "holds a function or operator that is not the only one of its name, which regproc and regoper "
                     "print as a name their input cannot read back (more than one matches it)",
    "xml_rewritten": "holds an xml value inside a composite whose stored text has an XML declaration that xml's "
                     "output drops or rewrites, and a composite is written by its output",
    "json_null": "holds the JSON value null, which JSONL cannot keep apart from SQL NULL (json_populate_record "
                 "reads both as NULL)",
    "json_nul": "holds the escape \\u0000, which json_populate_record cannot read back (PostgreSQL text cannot "
                "hold NUL)",
    "json_escape_encoding": "holds a \\u escape of a character that this database's encoding, {encoding}, does "
                            "not have: json_populate_record (any de-escaping JSON parse) turns it into that encoding "
                            "(SQL_ASCII converts none beyond ASCII), and a restore of the day would fail on the whole "
                            "line",
    "json_surrogate": "holds a \\u escape of an unpaired UTF-16 surrogate (such as \\ud800 without the low half "
                      "that must follow it), which the json type stores but json_populate_record cannot read back "
                      "(it fails on the whole line)",
}


