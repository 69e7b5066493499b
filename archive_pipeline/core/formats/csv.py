"""CSV as PostgreSQL's ``COPY ... (FORMAT csv)`` writes it, with a header line."""

from __future__ import annotations

import re

from psycopg import sql

from archive_pipeline.core.formats.common import CopyFormat, csv_expression, day_query, encoding
from archive_pipeline.core.source import Column, SourceTable

# A header field is quoted when PostgreSQL's CSV reader (COPY ... HEADER MATCH) or another reader would
# not read it back as the name: a comma, a quote, a CR or LF (Python's csv module leaves a lone CR
# unquoted when the line terminator is LF), white space at either end (readers that trim), and a name
# that is PostgreSQL's end-of-data marker on a line of its own.
_NEEDS_QUOTES = re.compile(r'[",\r\n]|^\s|\s$')


def header_field(name: str) -> str:
    if _NEEDS_QUOTES.search(name) or name == "\\.":
        return '"' + name.replace('"', '""') + '"'
    return name


def _encoding(col: Column) -> dict:
    if col.base_type == "money" and not col.nested:
        return encoding("text: numeric digits of the amount", note="money as numeric; 2 fraction digits (lc_monetary C)")
    if col.base_type == "xml":
        return encoding("text: PostgreSQL array literal of the xml texts as stored" if col.is_array
                        else "text: the xml text as stored", note="read back with xml's input")
    return encoding("text: the type's output (PostgreSQL CSV)")


class Csv(CopyFormat):
    """RFC 4180 as PostgreSQL writes it: NULL is an unquoted empty field, '' is a quoted one."""

    def __init__(self) -> None:
        super().__init__("csv", "csv", "text/csv; charset=utf-8")

    def header(self, table: SourceTable) -> bytes:
        return (",".join(header_field(c.name) for c in table.columns) + "\n").encode()

    def encodings(self, table: SourceTable) -> dict[str, dict]:
        return {c.name: _encoding(c) for c in table.columns}

    def probes(self, table: SourceTable) -> list[sql.Composable]:
        return [sql.SQL("pg_catalog.concat({})").format(csv_expression(c, i)) for i, c in enumerate(table.columns)]

    def copy_statement(self, table: SourceTable, where: sql.Composable) -> sql.Composed:
        return sql.SQL("COPY ({query}) TO STDOUT (FORMAT csv)").format(query=day_query(table, where))
