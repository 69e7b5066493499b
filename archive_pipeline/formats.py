"""Output formats. Each one turns a day's rows into a byte stream with PostgreSQL (COPY) or Arrow
doing the per-value work, so no Python object is built per row or value.

JSONL is ``row_to_json`` of each row, sent through ``COPY ... (FORMAT csv)`` with control bytes as
quote and delimiter: JSON text never contains raw control bytes, so CSV mode passes it through
byte for byte, where text mode would double every backslash.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import psycopg
from psycopg import sql

from archive_pipeline.source import Snapshot, SourceTable, copy_chunks, prefetch


class ByteSink(Protocol):
    def write(self, data: bytes | bytearray | memoryview, /) -> int: ...


@dataclass
class WriteStats:
    rows: int = 0
    bytes: int = 0  # formatted bytes before compression (Arrow's in-memory size for Parquet)
    output_types: dict[str, str] = field(default_factory=dict)  # column -> type in the archive


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
    _last_report: float = field(default_factory=time.monotonic)

    def report(self, stats: WriteStats) -> None:
        if self.progress is not None and time.monotonic() - self._last_report >= self.progress_every:
            self._last_report = time.monotonic()
            self.progress(stats.rows, stats.bytes)


def select_list(table: SourceTable, *, json_as_jsonb: bool) -> sql.Composed:
    """The day's columns, cast only where the text form would lose meaning or framing."""
    items = []
    for col in table.columns:
        ident = sql.Identifier(col.name)
        if col.base_type == "money":
            # money's text form depends on lc_monetary ("$1,234.56"); numeric is exact and portable.
            items.append(sql.SQL("{}::{} AS {}").format(ident, sql.SQL(col.cast_name("numeric")), ident))
        elif json_as_jsonb and col.base_type == "json":
            # json keeps its input text, raw newlines included, which would split a JSONL line.
            items.append(sql.SQL("{}::{} AS {}").format(ident, sql.SQL(col.cast_name("jsonb")), ident))
        else:
            items.append(ident)
    return sql.SQL(", ").join(items)


def day_query(table: SourceTable, where: sql.Composable, columns: sql.Composable | None = None) -> sql.Composed:
    return sql.SQL("SELECT {cols} FROM {table} WHERE {where}").format(
        cols=columns if columns is not None else select_list(table, json_as_jsonb=False),
        table=table.identifier, where=where)


class Format(Protocol):
    name: str
    extension: str
    content_type: str
    compresses_internally: bool

    def write(self, extraction: Extraction, out: ByteSink) -> WriteStats: ...


@dataclass(frozen=True)
class _CopyFormat:
    """A format whose bytes COPY produces exactly; Python only moves the buffers."""

    name: str
    extension: str
    content_type: str
    compresses_internally = False

    def header(self, table: SourceTable) -> bytes:
        return b""

    def copy_statement(self, table: SourceTable, where: sql.Composable) -> sql.Composed:
        raise NotImplementedError

    def output_type(self, type_name: str) -> str:
        return "text"

    def write(self, extraction: Extraction, out: ByteSink) -> WriteStats:
        table = extraction.table
        stats = WriteStats(output_types={c.name: self.output_type(c.type_name) for c in table.columns})
        head = self.header(table)
        if head:
            out.write(head)
            stats.bytes += len(head)
        statement = self.copy_statement(table, extraction.where)
        for chunk in prefetch(copy_chunks(extraction.conn, statement, extraction.chunk_rows), depth=2):
            out.write(chunk.data)
            stats.rows += chunk.rows
            stats.bytes += len(chunk.data)
            extraction.report(stats)
        return stats


class JsonLines(_CopyFormat):
    def __init__(self) -> None:
        super().__init__("jsonl", "jsonl", "application/x-ndjson")

    def copy_statement(self, table: SourceTable, where: sql.Composable) -> sql.Composed:
        query = day_query(table, where, select_list(table, json_as_jsonb=True))
        return sql.SQL("COPY (SELECT row_to_json(r.*) FROM ({query}) AS r) TO STDOUT "
                       "(FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02')").format(query=query)

    def output_type(self, type_name: str) -> str:
        return json_type(type_name)


class Csv(_CopyFormat):
    """RFC 4180 as PostgreSQL writes it: NULL is an unquoted empty field, '' is a quoted one."""

    def __init__(self) -> None:
        super().__init__("csv", "csv", "text/csv; charset=utf-8")

    def header(self, table: SourceTable) -> bytes:
        line = io.StringIO()
        csv.writer(line, lineterminator="\n").writerow([c.name for c in table.columns])
        return line.getvalue().encode()

    def copy_statement(self, table: SourceTable, where: sql.Composable) -> sql.Composed:
        return sql.SQL("COPY ({query}) TO STDOUT (FORMAT csv)").format(query=day_query(table, where))


def json_type(type_name: str) -> str:
    """How row_to_json encodes a PostgreSQL type (see the README's type table)."""
    if type_name.endswith("[]"):
        return f"array of {json_type(type_name[:-2])}"
    if type_name.startswith(("smallint", "integer", "bigint")):
        return "number"
    if type_name.startswith(("real", "double precision", "numeric", "money")):
        return 'number ("NaN", "Infinity", "-Infinity" as strings)'
    if type_name == "boolean":
        return "boolean"
    if type_name in ("json", "jsonb"):
        return "json"
    return "string"


def get_format(name: str, compression: str = "zstd", level: int | None = None) -> Format:
    if name == "jsonl":
        return JsonLines()
    if name == "csv":
        return Csv()
    if name == "parquet":
        from archive_pipeline.parquet import Parquet

        return Parquet(compression=compression, level=level)
    raise ValueError(f"unknown format {name!r}; choose jsonl, csv or parquet")
