"""Hunt 4 (nn): users' objects (operators, functions, casts, types, triggers) that change what the
archiver's SQL means. Each test asserts the correct behaviour and fails on the current code because of a bug."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.verify import deep_verify

DAY = dt.date(2024, 3, 10)


def test_a_users_operator_on_the_day_columns_domain_does_not_choose_the_days_rows(pg, conn, schema, store, temp_dir):
    """A user's day column is a domain over date (``CREATE DOMAIN bday AS date``), and the user gave the
    domain a ``>=`` of its own (``CREATE OPERATOR >= (LEFTARG = bday, RIGHTARG = date, ...)``, here one
    that also takes the day before). The archiving role's path is the default one (pg_catalog first,
    then the table's schema). The day's filter ``at >= '2024-03-10'::date AND at < ...`` finds that
    operator as an exact match for (bday, date) and uses it instead of PostgreSQL's date >= date, so the
    archive of 2024-03-10 is green with the 5 rows of 2024-03-09 in it (15 rows; the day has 10); its
    removal deletes them too, and its restore puts them back twice. The day's rows must be chosen by
    PostgreSQL's own comparison of dates (``OPERATOR(pg_catalog.>=)``), whatever the user defined on
    the domain."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE DOMAIN {s}.bday AS date").format(s=s))
    conn.execute(sql.SQL("CREATE TABLE {s}.ev (id int, at {s}.bday, note text)").format(s=s))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s, 'n' FROM generate_series(1, 10) g").format(s), (DAY,))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s, 'o' FROM generate_series(11, 15) g").format(s),
                 (DAY - dt.timedelta(days=1),))
    conn.execute(sql.SQL("CREATE FUNCTION {s}.on_or_after(d {s}.bday, x date) RETURNS bool LANGUAGE sql IMMUTABLE "
                         "AS 'SELECT $1::date >= $2 - 1'").format(s=s))
    conn.execute(sql.SQL("CREATE OPERATOR {s}.>= (LEFTARG = {s}.bday, RIGHTARG = date, FUNCTION = {s}.on_or_after)"
                         ).format(s=s))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY - dt.timedelta(days=5), format="csv")
    with psycopg.connect(pg.dsn, options=f"-c search_path={schema},public", autocommit=True) as archiving:
        result = archive_partition(archiving, spec, DAY, store, temp_dir=temp_dir)
    assert result.rows == 10, f"the archive of {DAY} holds {result.rows} rows; the day has 10"
