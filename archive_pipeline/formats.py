"""Output formats. Each one turns a day's rows into a byte stream with PostgreSQL's COPY doing the
per-value work (text escaping, JSON encoding), so no Python object is built per row or value.

JSONL is ``row_to_json`` of each row, sent through ``COPY ... (FORMAT csv)`` with control bytes as
quote and delimiter: JSON text never contains raw control bytes, so CSV mode passes it through
byte for byte, where text mode would double every backslash.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from psycopg import sql

from archive_pipeline.source import Chunk, SourceTable


class ByteSink(Protocol):
    def write(self, data: bytes | bytearray | memoryview, /) -> int: ...


@dataclass
class WriteStats:
    rows: int = 0
    bytes: int = 0  # formatted bytes before compression


def _select_list(table: SourceTable, *, json_as_jsonb: bool) -> sql.Composed:
    """The day's columns, cast only where the text form would lose meaning or framing."""
    items = []
    for col in table.columns:
        ident = sql.Identifier(col.name)
        if col.base_type == "money":
            # money's text form depends on lc_monetary ("$1,234.56"); numeric is exact and portable.
            cast = "numeric[]" if col.is_array else "numeric"
            items.append(sql.SQL("{}::{} AS {}").format(ident, sql.SQL(cast), ident))
        elif json_as_jsonb and col.base_type == "json":
            # json keeps its input text, raw newlines included, which would split a JSONL line.
            cast = "jsonb[]" if col.is_array else "jsonb"
            items.append(sql.SQL("{}::{} AS {}").format(ident, sql.SQL(cast), ident))
        else:
            items.append(ident)
    return sql.SQL(", ").join(items)


def _day_query(table: SourceTable, where: sql.Composable, *, json_as_jsonb: bool = False) -> sql.Composed:
    return sql.SQL("SELECT {cols} FROM {table} WHERE {where}").format(
        cols=_select_list(table, json_as_jsonb=json_as_jsonb), table=table.identifier, where=where)


class Format(Protocol):
    name: str
    extension: str
    content_type: str
    compresses_internally: bool

    def copy_statement(self, table: SourceTable, where: sql.Composable) -> sql.Composed: ...

    def write(self, table: SourceTable, chunks: Iterator[Chunk], out: ByteSink) -> WriteStats: ...


@dataclass(frozen=True)
class _PassThrough:
    """A format whose bytes COPY produces exactly; Python only moves the buffers."""

    name: str
    extension: str
    content_type: str
    compresses_internally = False

    def header(self, table: SourceTable) -> bytes:
        return b""

    def write(self, table: SourceTable, chunks: Iterator[Chunk], out: ByteSink) -> WriteStats:
        stats = WriteStats()
        head = self.header(table)
        if head:
            out.write(head)
            stats.bytes += len(head)
        for chunk in chunks:
            out.write(chunk.data)
            stats.rows += chunk.rows
            stats.bytes += len(chunk.data)
        return stats


class JsonLines(_PassThrough):
    def __init__(self) -> None:
        super().__init__("jsonl", "jsonl", "application/x-ndjson")

    def copy_statement(self, table: SourceTable, where: sql.Composable) -> sql.Composed:
        return sql.SQL("COPY (SELECT row_to_json(r) FROM ({query}) AS r) TO STDOUT "
                       "(FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02')").format(
            query=_day_query(table, where, json_as_jsonb=True))


class Csv(_PassThrough):
    """RFC 4180 as PostgreSQL writes it: NULL is an unquoted empty field, '' is a quoted one."""

    def __init__(self) -> None:
        super().__init__("csv", "csv", "text/csv; charset=utf-8")

    def header(self, table: SourceTable) -> bytes:
        line = io.StringIO()
        csv.writer(line, lineterminator="\n").writerow([c.name for c in table.columns])
        return line.getvalue().encode()

    def copy_statement(self, table: SourceTable, where: sql.Composable) -> sql.Composed:
        return sql.SQL("COPY ({query}) TO STDOUT (FORMAT csv)").format(query=_day_query(table, where))


def get_format(name: str) -> Format:
    if name == "jsonl":
        return JsonLines()
    if name == "csv":
        return Csv()
    if name == "parquet":
        from archive_pipeline.parquet import Parquet

        return Parquet()
    raise ValueError(f"unknown format {name!r}; choose jsonl, csv or parquet")
