"""Hunt 11 qd: real PostgreSQL faults in every operation, classified by cause (retryable or not, cause and remedy
named, table and day named, no secret, nothing left behind)."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError

DAY = dt.date(2024, 3, 10)


def _events(conn, schema: str, rows: int = 500, name: str = "ev") -> sql.Identifier:
    table = sql.Identifier(schema, name)
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, created_at timestamptz, note text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, {}::timestamptz + (g % 86000) * interval '1 second', 'n' || g "
                         "FROM generate_series(1, {}) g").format(table, sql.Literal(DAY.isoformat()),
                                                                 sql.Literal(rows)))
    return table


def _spec(name: str, fmt: str = "csv", **extra) -> TableSpec:
    return TableSpec(name=name, day_column="created_at", start_date=DAY, format=fmt, compression="zstd", **extra)


def test_deep_verify_that_finds_a_changed_row_reports_the_difference_even_where_naming_it_meets_temp_file_limit(
        pg, conn, schema, store, temp_dir):
    """verify --deep of a day whose source row was changed after the archive, by a role with a small
    temp_file_limit (ALTER ROLE ... SET temp_file_limit = '64kB', work_mem small: a DBA's guard against runaway
    sorts). The fingerprints already prove the archive and the source differ; to *name* the first differing row
    deep verification then sorts both sides' row hashes (ORDER BY 1 over the whole day), which spills to a temp
    file and hits temp_file_limit.

    Now: the whole verification raises SourceError "a server configuration limit was exceeded ... not retried;
    to fix: raise the limit named in the message on the server": the verdict it had already reached (the source's
    rows are not the archive's) is lost, and the user is sent to change a server setting to learn what a plain
    fingerprint comparison already told. Should: return the problem ("the source's rows for 2024-03-10 are not the
    archive's ...") with the first difference left unnamed (naming it is best effort: say that it could not be
    named and why), as it does when nothing limits the sort. Fix idea: catch psycopg.Error (53400, 57014, 53100)
    around _name_first_difference and append "first difference not named: <cause>" instead."""
    from archive_pipeline.core.verify import deep_verify

    table = _events(conn, schema, rows=60000)
    spec = _spec(f"{schema}.ev")
    with pg.connect() as archiving:
        archive_partition(archiving, spec, DAY, store, temp_dir=str(temp_dir))
    conn.execute(sql.SQL("UPDATE {} SET note = 'changed' WHERE id = 7").format(table))
    with pg.connect(options="-c temp_file_limit=64kB -c work_mem=64kB") as proving:
        problems = deep_verify(proving, store, spec, DAY, temp_dir=str(temp_dir))
    assert any("are not the archive's" in p for p in problems), problems
