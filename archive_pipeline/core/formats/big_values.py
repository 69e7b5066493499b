"""Rows holding a value too big to pass through a text COPY whole (#11 §5): a bytea, or a text in JSONL.

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
string); memory is a few slices whatever the value's size.

JSONL has the same trap for text: ``row_to_json`` escapes each control character as ``\\u00XX``, so a
32 MiB text of them was one 192 MiB message (+418 MB). There (and only there: CSV's quoting at most
doubles a text, measured within the README's goal) a text value (text, varchar, bpchar, or a domain
over one) over :data:`BIG_BYTES` is marked too, by a random text of 64 hex digits, which its JSON
string then holds as it is; the marker's text is replaced by the value's JSON string (without its
quotes) as PostgreSQL's ``to_json`` escapes it, once, in the server, and converted to the client's
encoding by ``textsend``: the bytes are PostgreSQL's own, and the client reads them in slices of
:data:`SLICE_BYTES` through a cursor. Byte slices of one converted copy rather than ``substring`` of
the text: a character offset is found by walking the text from its start (in a multibyte encoding),
which made a value's slices cost its size squared; a byte slice may split a character, but the slices
are only concatenated.

Only a top-level column of those types (or a domain over one), and only rows stored in an ordinary
table or materialized view (found again by ``tableoid`` and ``ctid``, which mean nothing in a foreign
table: a foreign partition's or child's rows, and a view's, keep the plain COPY). The rows come
after the others, which no reader of an archive relies on (the fingerprint is a sum). A role that
may read the table's columns only column by column (no system column) keeps the plain COPY for every
row. A row whose text would pass PostgreSQL's 1 GB limit goes through the plain COPY, which refuses
it as before (no format could restore it).
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
from archive_pipeline.core.sqltext import with_params

BIG_BYTES = 8 << 20  # a bytea value above this is read in slices: its row's message would be over 16 MiB
SLICE_BYTES = 8 << 20
# text types whose JSON string (to_json, row_to_json) is their stored text escaped: their send function
# sends that text, and a text marker takes their place in the row as it is (bpchar's padding is stored)
_TEXT_TYPES = ("text", "varchar", "bpchar")
# a text byte's most in its JSON string in UTF-8: a control character as \u00XX (a byte of another
# server encoding becomes at most 3 bytes of UTF-8)
_ESCAPED_PER_BYTE = 6
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


def _is_text(column: Column) -> bool:
    """A text column (or domain over one) whose JSON string is its text escaped (see :data:`_TEXT_TYPES`)."""
    return column.base_type in _TEXT_TYPES and not column.is_array and not column.json_cast


def _candidates(table: SourceTable, json_text: bool = False) -> list[Column]:
    """The columns to look for big values in, in the table's order (the order of their markers in a
    row's text): bytea, and with ``json_text`` the text columns too (whose JSON string escaping may
    inflate six times); none in a view or foreign table (a scan would run the view or fetch the remote
    rows again, and their rows have no ctid to be found again by)."""
    if table.relkind not in _ROW_KINDS:
        return []
    return [c for c in table.columns if (c.base_type == "bytea" and not c.is_array) or (json_text and _is_text(c))]


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
        sql.SQL(", ").join(sql.SQL("coalesce(pg_catalog.bool_or({}), false)").format(_is_big(c)) for c in columns),
        table.identifier, where)).fetchone()
    return [c for c, big in zip(columns, found, strict=True) if big]


def find_big_rows(conn: psycopg.Connection, table: SourceTable, where: sql.Composable,
                  json_text: bool = False) -> BigRows | None:
    """The rows of ``where`` to write past the COPY (see the module's docstring), None if there are
    none: then the COPY is the plain one. One scan, reading each value's size from its header.
    ``json_text``: the COPY writes JSON (JSONL), where a text value's escaping may inflate it too."""
    columns = _candidates(table, json_text)
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
        marked = [(c, size) for c, size in zip(big.columns, sizes, strict=True)
                  if size is not None and size > BIG_BYTES]
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
    # a bytea's marker is 32 random bytes (64 hex digits in the row's text), a text's 64 random hex digits
    markers = {c.name: secrets.token_hex(_MARKER_BYTES) if _is_text(c) else secrets.token_bytes(_MARKER_BYTES)
               for c, _ in marked}
    values = sql.SQL(", ").join(
        sql.SQL("{}::text AS {}" if _is_text(c) else "{} AS {}").format(sql.Literal(markers[c.name]),
                                                                       sql.Identifier(c.name))
        if c.name in markers else sql.SQL("r.{}").format(sql.Identifier(c.name)) for c in table.columns)
    line = _one_row_text(conn, copy_statement(row.relation(values), sql.SQL("TRUE")), table)
    if _too_long(conn, row, len(line), marked):
        # PostgreSQL's own COPY of the row: it refuses a text over 1 GB, as it did before this path
        del line
        plain = _one_row_text(conn, copy_statement(row.relation(sql.SQL("r.*")), sql.SQL("TRUE")), table)
        write(plain)
        return len(plain)
    start = written = 0
    for column, size in marked:
        marker = markers[column.name]
        at = _find(line, marker.encode() if isinstance(marker, str) else binascii.hexlify(marker), start)
        if at < 0:
            raise RuntimeError(f"{table.qualified}: the marker of column {column.name!r}'s big value is not in its "
                               "row's text; please report this")
        write(line[start:at])
        written += at - start + (_write_text(conn, row, column, write) if _is_text(column)
                                 else _write_value(conn, row, column, size, write))
        start = at + 2 * _MARKER_BYTES
    write(line[start:])
    return written + len(line) - start


def _too_long(conn: psycopg.Connection, row: _Row, marked_line: int, marked: list[tuple[Column, int]]) -> bool:
    """Whether the row's text would reach :data:`TEXT_LIMIT`. A bytea's hex is twice its size; a text's
    JSON string is at most :data:`_ESCAPED_PER_BYTE` times its size, and only when that bound reaches the
    limit is its length asked of the server (which escapes the value once more to count)."""
    def grown(column: Column, size: int) -> int:
        return (_ESCAPED_PER_BYTE * size if _is_text(column) else 2 * size) - 2 * _MARKER_BYTES

    if marked_line + sum(grown(c, size) for c, size in marked) < TEXT_LIMIT:
        return False
    texts = [c for c, _ in marked if _is_text(c)]
    if texts:
        # each JSON string's bytes but its two quotes
        exact = conn.execute(sql.SQL("SELECT {} FROM {} AS r WHERE {}").format(
            sql.SQL(", ").join(sql.SQL("pg_catalog.octet_length({}) - 2").format(_json_bytes(c)) for c in texts),
            row.table.identifier, row.condition())).fetchone()
        sizes = dict(zip((c.name for c in texts), exact, strict=True))
        return marked_line + sum(sizes[c.name] - 2 * _MARKER_BYTES if _is_text(c) else grown(c, size)
                                 for c, size in marked) >= TEXT_LIMIT
    return True


def _json_bytes(column: Column) -> sql.Composable:
    """The column's value as a JSON string (as row_to_json writes it, quotes included), as bytes in the
    client's encoding (what the COPY sends)."""
    return sql.SQL("pg_catalog.textsend(pg_catalog.to_json(r.{})::text)").format(sql.Identifier(column.name))


def _find(text: memoryview, needle: bytes, start: int) -> int:
    """``needle``'s offset in ``text`` from ``start`` (-1 if absent), without copying ``text``."""
    found = re.compile(re.escape(needle)).search(text, start)
    return found.start() if found else -1


def _write_value(conn: psycopg.Connection, row: _Row, column: Column, size: int,
                 write: Callable[[bytes | bytearray | memoryview], object]) -> int:
    """The value's hex, slice by slice (bytea's output in hex, without its ``\\x``, which the marker's kept)."""
    query = with_params(sql.SQL("SELECT pg_catalog.substring(r.{c}, %s::int4, %s::int4) FROM {t} AS r WHERE {at}").format(
        c=sql.Identifier(column.name), t=row.table.identifier, at=row.condition()), conn)  # (a '%' in a name)
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


def _write_text(conn: psycopg.Connection, row: _Row, column: Column,
                write: Callable[[bytes | bytearray | memoryview], object]) -> int:
    """The text value's JSON string without its quotes, slice by slice: escaped once by the server
    (``to_json``: PostgreSQL's own escaping, so the bytes are the COPY's), read in byte slices of one
    copy through a cursor (the subquery is computed once; ``OFFSET 0`` keeps it from being inlined into
    each slice's expression)."""
    # No ORDER BY: the slices come in generate_series's order (checked below), where a sort spilled the whole
    # escaped value to a temporary file first (a role's temp_file_limit refused the day)
    query = sql.SQL(
        "SELECT pg_catalog.octet_length(v.b), g, "
        "pg_catalog.substring(v.b, g, least({n}, pg_catalog.octet_length(v.b) - g)) "
        "FROM (SELECT {b} AS b FROM {t} AS r WHERE {at} OFFSET 0) AS v, "
        "LATERAL pg_catalog.generate_series(2, pg_catalog.octet_length(v.b) - 1, {n}) AS g").format(
        b=_json_bytes(column), t=row.table.identifier, at=row.condition(), n=sql.Literal(SLICE_BYTES))
    sent = 0
    total = None
    with conn.cursor(name=f"big_value_{secrets.token_hex(8)}", binary=True) as cursor:
        cursor.itersize = 1
        cursor.execute(query)
        while (found := cursor.fetchone()) is not None:
            total, at, piece = found
            del found
            if at != 2 + sent:  # never written out of order
                raise RuntimeError(f"{row.table.qualified}: column {column.name!r}'s slices came out of order (at "
                                   f"{at:,} after {sent:,} bytes); please report this")
            write(piece)
            sent += len(piece)
            del piece
    if total is None or sent != total - 2:
        raise RuntimeError(f"{row.table.qualified}: column {column.name!r} gave {sent:,} bytes of its value's JSON "
                           f"string of {total or 0:,} in the read's snapshot; please report this")
    return sent
