"""CSV as PostgreSQL's ``COPY ... (FORMAT csv)`` writes it, with a header line."""

from __future__ import annotations

import csv
import io

from psycopg import sql

from archive_pipeline.core.formats.common import CopyFormat, csv_expression, day_query, encoding
from archive_pipeline.core.source import SourceTable

class Csv(CopyFormat):
    """RFC 4180 as PostgreSQL writes it: NULL is an unquoted empty field, '' is a quoted one."""

    def __init__(self) -> None:
        super().__init__("csv", "csv", "text/csv; charset=utf-8")

    def header(self, table: SourceTable) -> bytes:
        line = io.StringIO()
        csv.writer(line, lineterminator="\n").writerow([c.name for c in table.columns])
        return line.getvalue().encode()

    def encodings(self, table: SourceTable) -> dict[str, dict]:
        return {c.name: (encoding("text: numeric digits of the amount",
                                  note="money as numeric; lc_monetary decides the scale")
                         if c.base_type == "money" else encoding("text: the type's output (PostgreSQL CSV)"))
                for c in table.columns}

    def probes(self, table: SourceTable) -> list[sql.Composable]:
        return [sql.SQL("concat({})").format(csv_expression(c)) for c in table.columns]

    def copy_statement(self, table: SourceTable, where: sql.Composable) -> sql.Composed:
        return sql.SQL("COPY ({query}) TO STDOUT (FORMAT csv)").format(query=day_query(table, where))
