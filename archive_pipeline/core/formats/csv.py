"""CSV as PostgreSQL's ``COPY ... (FORMAT csv)`` writes it, with a header line."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from psycopg import sql

from archive_pipeline.core.formats.common import CopyFormat, csv_expression, day_query, encoding
from archive_pipeline.core.source import Column, SourceTable

# A header field is quoted when PostgreSQL's CSV reader (COPY ... HEADER MATCH) or another reader would
# not read it back as the name: a comma, a quote, a CR or LF (Python's csv module leaves a lone CR
# unquoted when the line terminator is LF), white space at either end (readers that trim), and a name
# that is PostgreSQL's end-of-data marker on a line of its own.
_NEEDS_QUOTES = re.compile(r'[",\r\n]|^\s|\s$')

# Before a62bf11 the header was Python's csv.writer(lineterminator="\n")'s line, which quoted a name holding a
# comma, a quote or an LF, and a CR too from Python 3.13 (up to 3.12 a lone CR was left bare); never white space
# at either end nor ``\.``. Objects of those releases begin with one of these spellings (see header_lines).
_WRITER_QUOTES = (re.compile(r'[",\n]'), re.compile(r'[",\r\n]'))


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def header_field(name: str) -> str:
    """``name`` as today's header spells it (see _NEEDS_QUOTES)."""
    return _quoted(name) if _NEEDS_QUOTES.search(name) or name == "\\." else name


def _line(fields: Iterable[str]) -> bytes:
    return (",".join(fields) + "\n").encode()


def header_lines(names: Sequence[str]) -> tuple[bytes, ...]:
    """Every header line of the columns ``names`` that a release of this archiver wrote, today's first, each once:
    a CSV object begins with one of them. Restore checks the object's leading bytes against these and COPYs the
    rows after them, since PostgreSQL's HEADER MATCH misreads an older release's line (a bare CR ends it; a bare
    ``\\.`` ends the data)."""
    lines = [_line(header_field(n) for n in names)]
    for quotes in _WRITER_QUOTES:
        line = _line(_quoted(n) if quotes.search(n) else n for n in names)
        if line not in lines:
            lines.append(line)
    return tuple(lines)


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
        return header_lines([c.name for c in table.columns])[0]

    def encodings(self, table: SourceTable) -> dict[str, dict]:
        return {c.name: _encoding(c) for c in table.columns}

    def probes(self, table: SourceTable) -> list[sql.Composable]:
        return [sql.SQL("pg_catalog.concat({})").format(csv_expression(c, i)) for i, c in enumerate(table.columns)]

    def copy_statement(self, table: SourceTable, where: sql.Composable) -> sql.Composed:
        return sql.SQL("COPY ({query}) TO STDOUT (FORMAT csv)").format(query=day_query(table, where))
