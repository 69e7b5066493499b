"""Rows holding a bytea value too big to pass through a text COPY whole (#11 §5).

In a text COPY (CSV, and JSONL's ``row_to_json``) a bytea value travels as hex, twice its size, in
one message per row, and libpq holds that message twice (its input buffer, and ``PQgetCopyData``'s
copy): one 100 MiB value cost ~420 MB of memory before any of our code. So a day's rows whose bytea
values are all at most :data:`BIG_BYTES` go through the format's COPY as ever, and each row holding
a bigger one is written after them, from the same snapshot:

- the format's own COPY of that row alone, with each big value replaced by a marker (a random
  32-byte bytea, which the row's text then holds once, as 64 hex digits);
- the marker's hex replaced by the value's, read in slices of :data:`SLICE_BYTES` with
  ``substring`` (binary results: no hex through libpq).

The bytes are those the COPY writes (a bytea's hex needs no quoting in CSV, nor escaping in a JSON
string); memory is a few slices whatever the value's size. Only a top-level bytea column (or a domain
over bytea), and only rows stored in an ordinary table or materialized view (found again by
``tableoid`` and ``ctid``, which mean nothing in a foreign table: a foreign partition's or child's
rows, and a view's, keep the plain COPY). The rows come after the others, which no reader of an
archive relies on (the fingerprint is a sum). A role that may read the table's columns only
column by column (no system column) keeps the plain COPY for every row. A row whose text would
pass PostgreSQL's 1 GB limit goes through the plain COPY, which refuses it as before (no format
could restore it).
"""

from __future__ import annotations

import binascii
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from archive_pipeline.core.source import Column, SourceTable, copy_chunks

BIG_BYTES = 8 << 20  # a bytea value above this is read in slices: its row's message would be over 16 MiB
SLICE_BYTES = 8 << 20
TEXT_LIMIT = (1 << 30) - (1 << 20)  # a row's text from here on may not fit PostgreSQL's 1 GB: the plain COPY decides
_ROW_KINDS = ("r", "p", "m")  # relations whose rows (or partitions' rows) may have a tableoid and ctid
_STORED_KINDS = ("r", "m")  # where a row's tableoid and ctid find it again
_MARKER_BYTES = 32


@dataclass(frozen=True)
class _OneRow(SourceTable):
    """The table as a format's COPY sees it, narrowed to one row (its big values marked)."""

    relation: sql.Composable | None = None

    @property
    def identifier(self) -> sql.Composable:  # type: ignore[override]
        return self.relation


@dataclass(frozen=True)
class BigRows:
    """The rows of a day holding a big value in ``columns``, as (tableoid, ctid, sizes in column order)."""

    columns: tuple[Column, ...]
    rows: tuple[tuple[int, str, tuple[int | None, ...]], ...]

    @property
    def relations(self) -> list[int]:
        return sorted({tableoid for tableoid, _, _ in self.rows})


def bytea_columns(table: SourceTable) -> list[Column]:
    """The table's bytea columns (or domains over bytea), arrays aside."""
    return [c for c in table.columns if c.base_type == "bytea" and not c.is_array]


def _candidates(table: SourceTable) -> list[Column]:
    """The bytea columns to look for big values in: none in a view or foreign table (a scan would run
    the view or fetch the remote rows again, and their rows have no ctid to be found again by)."""
    return bytea_columns(table) if table.relkind in _ROW_KINDS else []


def _is_big(column: Column) -> sql.Composable:
    return sql.SQL("coalesce(pg_catalog.octet_length({}) > {}, false)").format(
        sql.Identifier(column.name), sql.Literal(BIG_BYTES))


def _any_big(columns: Sequence[Column]) -> sql.Composable:
    return sql.SQL("({})").format(sql.SQL(" OR ").join(_is_big(c) for c in columns))


def holding_big_values(conn: psycopg.Connection, table: SourceTable, where: sql.Composable) -> list[Column]:
    """The bytea columns holding a value over :data:`BIG_BYTES` in the rows of ``where`` (one scan,
    which reads each value's size from its header, not the value; none without a bytea column, and
    none asked of a view or foreign table, which the scan would run or fetch again).

    For Parquet: a column page holds a value whole, and Arrow's writer holds the plain page, the
    compressed page and their concatenation at once, so one 100 MiB value of random bytes (which
    no codec shrinks) cost 4.0x its size; such a column is written uncompressed in that day's file
    (3.1x, bench/RESULTS.md). Big binary values are mostly compressed already (images, archives)."""
    columns = _candidates(table)
    if not columns:
        return []
    found = conn.execute(sql.SQL("SELECT {} FROM {} WHERE {}").format(
        sql.SQL(", ").join(sql.SQL("coalesce(bool_or({}), false)").format(_is_big(c)) for c in columns),
        table.identifier, where)).fetchone()
    return [c for c, big in zip(columns, found, strict=True) if big]


def find_big_rows(conn: psycopg.Connection, table: SourceTable, where: sql.Composable) -> BigRows | None:
    """The rows of ``where`` to write past the COPY (see the module's docstring), None if there are
    none: then the COPY is the plain one. One scan, reading each value's size from its header."""
    columns = _candidates(table)
    if not columns or not _may_read_system_columns(conn, table):
        return None
    found = conn.execute(sql.SQL(
        "SELECT r.tableoid::int8, r.ctid::text, {sizes} FROM {t} AS r WHERE ({w}) AND {big}").format(
        sizes=sql.SQL(", ").join(sql.SQL("pg_catalog.octet_length({})").format(sql.Identifier(c.name))
                                 for c in columns),
        t=table.identifier, w=where, big=_any_big(columns))).fetchall()
    if not found:
        return None
    kinds = dict(conn.execute("SELECT oid::int8, relkind::text FROM pg_catalog.pg_class WHERE oid = ANY(%s::oid[])",
                              ([row[0] for row in found],)).fetchall())
    rows = tuple((row[0], row[1], tuple(row[2:])) for row in found if kinds.get(row[0]) in _STORED_KINDS)
    return BigRows(tuple(columns), rows) if rows else None


def _may_read_system_columns(conn: psycopg.Connection, table: SourceTable) -> bool:
    """Whether the role may read the table's tableoid and ctid: SELECT on the table, not only granted
    column by column (which reads every value, as the plain COPY does, but no system column)."""
    relation = table.oid if table.oid is not None else table.identifier.as_string(conn)
    return conn.execute("SELECT pg_catalog.has_table_privilege(%s::pg_catalog.regclass, 'SELECT')",
                        (str(relation),)).fetchone()[0]


def without_big_rows(where: sql.Composable, big: BigRows) -> sql.Composable:
    """``where`` without ``big``'s rows: those holding a big value in a relation that has them."""
    return sql.SQL("({}) AND NOT ({} AND tableoid IN ({}))").format(
        where, _any_big(big.columns), sql.SQL(", ").join(sql.SQL("{}::oid").format(sql.Literal(oid))
                                                          for oid in big.relations))


def write_big_rows(conn: psycopg.Connection, table: SourceTable, where: sql.Composable, big: BigRows,
                   copy_statement: Callable[[SourceTable, sql.Composable], sql.Composable],
                   write: Callable[[bytes | bytearray | memoryview], object]) -> tuple[int, int]:
    """Write ``big``'s rows (found in ``where``), each as the format's ``copy_statement`` writes it;
    returns (rows, bytes written). Runs in the read's snapshot."""
    written = 0
    for tableoid, ctid, sizes in big.rows:
        row = _Row(table, where, tableoid, ctid)
        marked = [(c, size) for c, size in zip(big.columns, sizes, strict=True) if size is not None and size > BIG_BYTES]
        written += _write_row(conn, row, marked, copy_statement, write)
    return len(big.rows), written


@dataclass(frozen=True)
class _Row:
    """One row of the day, found again by its relation and ctid (with the day's filter, so the query
    plans and locks the day's relations only)."""

    table: SourceTable
    where: sql.Composable
    tableoid: int
    ctid: str

    def relation(self, values: sql.Composable) -> _OneRow:
        relation = sql.SQL("(SELECT {values} FROM {t} AS r WHERE {at}) AS big_value_row").format(
            values=values, t=self.table.identifier, at=self.condition())
        fields = {f: getattr(self.table, f) for f in SourceTable.__dataclass_fields__}
        return _OneRow(**fields, relation=relation)

    def condition(self) -> sql.Composable:
        return sql.SQL("({}) AND r.tableoid = {}::oid AND r.ctid = {}::tid").format(
            self.where, sql.Literal(self.tableoid), sql.Literal(self.ctid))


def _one_row_text(conn: psycopg.Connection, statement: sql.Composable, table: SourceTable) -> memoryview:
    """The COPY output of a statement that must give exactly one row."""
    chunks = list(copy_chunks(conn, statement, 1))
    if len(chunks) != 1:
        raise RuntimeError(f"{table.qualified}: a row looked up by its ctid gave {len(chunks)} rows; please report this")
    return memoryview(chunks[0].data)


def _write_row(conn: psycopg.Connection, row: _Row, marked: list[tuple[Column, int]],
               copy_statement: Callable[[SourceTable, sql.Composable], sql.Composable],
               write: Callable[[bytes | bytearray | memoryview], object]) -> int:
    table = row.table
    markers = {c.name: secrets.token_bytes(_MARKER_BYTES) for c, _ in marked}
    values = sql.SQL(", ").join(
        sql.SQL("{} AS {}").format(sql.Literal(markers[c.name]), sql.Identifier(c.name)) if c.name in markers
        else sql.SQL("r.{}").format(sql.Identifier(c.name)) for c in table.columns)
    line = _one_row_text(conn, copy_statement(row.relation(values), sql.SQL("TRUE")), table)
    if len(line) + sum(2 * size - 2 * _MARKER_BYTES for _, size in marked) >= TEXT_LIMIT:
        # PostgreSQL's own COPY of the row: it refuses a text over 1 GB, as it did before this path
        del line
        plain = _one_row_text(conn, copy_statement(row.relation(sql.SQL("r.*")), sql.SQL("TRUE")), table)
        write(plain)
        return len(plain)
    start = written = 0
    for column, size in marked:
        at = _find(line, binascii.hexlify(markers[column.name]), start)
        if at < 0:
            raise RuntimeError(f"{table.qualified}: the marker of column {column.name!r}'s big value is not in its "
                               "row's text; please report this")
        write(line[start:at])
        written += at - start + _write_value(conn, row, column, size, write)
        start = at + 2 * _MARKER_BYTES
    write(line[start:])
    return written + len(line) - start


def _find(text: memoryview, needle: bytes, start: int) -> int:
    """``needle``'s offset in ``text`` from ``start`` (-1 if absent), without copying ``text``."""
    found = re.compile(re.escape(needle)).search(text, start)
    return found.start() if found else -1


def _write_value(conn: psycopg.Connection, row: _Row, column: Column, size: int,
                 write: Callable[[bytes | bytearray | memoryview], object]) -> int:
    """The value's hex, slice by slice (bytea's output in hex, without its ``\\x``, which the marker's kept)."""
    query = sql.SQL("SELECT pg_catalog.substring(r.{c}, %s::int4, %s::int4) FROM {t} AS r WHERE {at}").format(
        c=sql.Identifier(column.name), t=row.table.identifier, at=row.condition())
    sent = 0
    while sent < size:
        found = conn.execute(query, (sent + 1, SLICE_BYTES), binary=True).fetchall()
        if len(found) != 1 or not found[0][0]:
            break
        hexed = binascii.hexlify(found[0][0])
        del found
        write(hexed)
        sent += len(hexed) // 2
    if sent != size:
        raise RuntimeError(f"{row.table.qualified}: column {column.name!r} gave {sent:,} of its value's {size:,} "
                           "bytes in the read's snapshot; please report this")
    return 2 * sent
