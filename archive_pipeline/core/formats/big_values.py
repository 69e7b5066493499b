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
over bytea) of a table or materialized view (rows found again by ``tableoid`` and ``ctid``); the rows
come after the others, which no reader of an archive relies on (the fingerprint is a sum).
"""

from __future__ import annotations

import binascii
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from archive_pipeline.core.source import Column, SourceTable, copy_chunks

BIG_BYTES = 8 << 20  # a bytea value above this is read in slices: its row's message would be over 16 MiB
SLICE_BYTES = 8 << 20
_ROW_KINDS = ("r", "p", "m")  # relations whose rows have a tableoid and ctid to be found again by


@dataclass(frozen=True)
class _OneRow(SourceTable):
    """The table as a format's COPY sees it, narrowed to one row with its big values marked."""

    relation: sql.Composable | None = None

    @property
    def identifier(self) -> sql.Composable:  # type: ignore[override]
        return self.relation


def bytea_columns(table: SourceTable) -> list[Column]:
    """The table's bytea columns (or domains over bytea), arrays aside."""
    return [c for c in table.columns if c.base_type == "bytea" and not c.is_array]


def big_value_columns(table: SourceTable) -> list[Column]:
    """The columns whose values may be too big for one COPY message (see the module's docstring)."""
    return bytea_columns(table) if table.relkind in _ROW_KINDS else []


def holding_big_values(conn: psycopg.Connection, table: SourceTable, where: sql.Composable) -> list[Column]:
    """The bytea columns holding a value over :data:`BIG_BYTES` in the rows of ``where`` (one scan,
    which reads each value's size from its header, not the value; none without a bytea column).

    For Parquet: a column page holds a value whole, and Arrow's writer holds the plain page, the
    compressed page and their concatenation at once, so one 100 MiB value of random bytes (which
    no codec shrinks) cost 4.0x its size; such a column is written uncompressed in that day's file
    (3.1x, bench/RESULTS.md). Big binary values are mostly compressed already (images, archives)."""
    columns = bytea_columns(table)
    if not columns:
        return []
    found = conn.execute(sql.SQL("SELECT {}").format(sql.SQL(", ").join(
        sql.SQL("EXISTS (SELECT FROM {t} WHERE ({w}) AND {big})").format(t=table.identifier, w=where, big=_is_big(c))
        for c in columns))).fetchone()
    return [c for c, big in zip(columns, found, strict=True) if big]


def _is_big(column: Column) -> sql.Composable:
    return sql.SQL("coalesce(pg_catalog.octet_length({}) > {}, false)").format(
        sql.Identifier(column.name), sql.Literal(BIG_BYTES))


def without_big_values(where: sql.Composable, columns: Sequence[Column]) -> sql.Composable:
    """``where`` narrowed to the rows whose values in ``columns`` are all at most :data:`BIG_BYTES`."""
    return sql.SQL("({}) AND NOT ({})").format(where, sql.SQL(" OR ").join(_is_big(c) for c in columns))


def write_big_rows(conn: psycopg.Connection, table: SourceTable, where: sql.Composable, columns: Sequence[Column],
                   copy_statement: Callable[[SourceTable, sql.Composable], sql.Composable],
                   write: Callable[[bytes | bytearray | memoryview], object]) -> tuple[int, int]:
    """Write the rows of ``where`` holding a value over :data:`BIG_BYTES` in ``columns``, each as the
    format's ``copy_statement`` writes it; returns (rows, bytes written). Runs in the read's snapshot."""
    found = conn.execute(sql.SQL("SELECT tableoid::int8, ctid::text, {sizes} FROM {t} WHERE ({w}) AND ({big})").format(
        sizes=sql.SQL(", ").join(sql.SQL("pg_catalog.octet_length({})").format(sql.Identifier(c.name))
                                 for c in columns),
        t=table.identifier, w=where, big=sql.SQL(" OR ").join(_is_big(c) for c in columns))).fetchall()
    written = 0
    for tableoid, ctid, *sizes in found:
        big = [(c, size) for c, size in zip(columns, sizes, strict=True) if size is not None and size > BIG_BYTES]
        written += _write_row(conn, table, (tableoid, ctid), big, copy_statement, write)
    return len(found), written


def _write_row(conn: psycopg.Connection, table: SourceTable, row: tuple[int, str], big: list[tuple[Column, int]],
               copy_statement: Callable[[SourceTable, sql.Composable], sql.Composable],
               write: Callable[[bytes | bytearray | memoryview], object]) -> int:
    markers = {c.name: secrets.token_bytes(32) for c, _ in big}
    values = sql.SQL(", ").join(
        sql.SQL("{} AS {}").format(sql.Literal(markers[c.name]), sql.Identifier(c.name)) if c.name in markers
        else sql.Identifier(c.name) for c in table.columns)
    relation = sql.SQL("(SELECT {values} FROM {t} WHERE {at}) AS big_value_row").format(
        values=values, t=table.identifier, at=_at(row))
    one_row = _OneRow(**{f: getattr(table, f) for f in table.__dataclass_fields__}, relation=relation)
    line = b"".join(bytes(chunk.data) for chunk in copy_chunks(conn, copy_statement(one_row, sql.SQL("TRUE")), 1))
    start = written = 0
    for column, size in big:
        marker = binascii.hexlify(markers[column.name])
        at = line.find(marker, start)
        if at < 0:
            raise RuntimeError(f"{table.qualified}: the marker of column {column.name!r}'s big value is not in its "
                               "row's text; please report this")
        write(line[start:at])
        written += at - start + _write_value(conn, table, row, column, size, write)
        start = at + len(marker)
    write(line[start:])
    return written + len(line) - start


def _at(row: tuple[int, str]) -> sql.Composable:
    return sql.SQL("tableoid = {}::oid AND ctid = {}::tid").format(sql.Literal(row[0]), sql.Literal(row[1]))


def _write_value(conn: psycopg.Connection, table: SourceTable, row: tuple[int, str], column: Column, size: int,
                 write: Callable[[bytes | bytearray | memoryview], object]) -> int:
    """The value's hex, slice by slice (bytea's output in hex, without its ``\\x``, which the marker's kept)."""
    query = sql.SQL("SELECT pg_catalog.substring({c}, %s::int4, %s::int4) FROM {t} WHERE {at}").format(
        c=sql.Identifier(column.name), t=table.identifier, at=_at(row))
    sent = 0
    while sent < size:
        piece = conn.execute(query, (sent + 1, SLICE_BYTES), binary=True).fetchone()[0]
        if not piece:
            break
        hexed = binascii.hexlify(piece)
        del piece
        write(hexed)
        sent += len(hexed) // 2
    if sent != size:
        raise RuntimeError(f"{table.qualified}: column {column.name!r} gave {sent:,} of its value's {size:,} bytes "
                           "in the read's snapshot; please report this")
    return 2 * sent
