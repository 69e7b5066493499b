"""Hunt 5 (ki): regressions and holes in this session's own product changes (restore's re-attachment of a
naming-mode day table, detach by DETACH PARTITION, ...). Each test asserts the correct behaviour and fails on
the current code because of a bug. Real PostgreSQL and S3 over HTTP."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.restore import restore_day

DAY = dt.date(2024, 3, 10)


def _count(conn, schema: str, table: str) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))).fetchone()[0]


def _naming_spec(schema: str, action: str) -> TableSpec:
    return TableSpec(name=f"{schema}.log", start_date=DAY, partitioning={"mode": "naming", "pattern": "log_%Y%m%d"},
                     retention={"keep_days": 1, "action": action})


def _log(conn, schema: str, layout: str, parent_extra: str = "") -> None:
    s = sql.Identifier(schema)
    if layout == "inherits":
        conn.execute(sql.SQL("CREATE TABLE {}.log (id int, at timestamptz NOT NULL" + parent_extra + ")").format(s))
        conn.execute(sql.SQL("CREATE TABLE {}.log_20240310 () INHERITS ({}.log)").format(s, s))
    else:
        conn.execute(sql.SQL("CREATE TABLE {}.log (id int, at timestamptz NOT NULL" + parent_extra +
                             ") PARTITION BY RANGE (at)").format(s))
        conn.execute(sql.SQL("CREATE TABLE {}.log_20240310 PARTITION OF {}.log FOR VALUES FROM ('2024-03-10 00:00+00') "
                             "TO ('2024-03-11 00:00+00')").format(s, s))
    conn.execute(sql.SQL("INSERT INTO {}.log_20240310 SELECT g, '2024-03-10 01:00+00' FROM generate_series(1, 10) g"
                         ).format(s))


@pytest.mark.parametrize("layout", ["inherits", "partition"])
def test_naming_mode_restore_into_original_of_a_dropped_day_table_whose_parent_has_a_check_constraint(
        conn, schema, store, layout):
    """A naming-mode table ``log`` with a CHECK constraint (``CHECK (id > 0)``), its day tables children of it
    (INHERITS, or declarative partitions). Retention ``drop`` proves and drops ``log_20240310``; the user then
    runs ``restore --into original``. Was (new in this version, which puts the re-created day table back under
    its parents): the table is created from the manifest's columns only, without the parent's CHECK, and the
    ``ALTER TABLE ... INHERIT`` / ``ATTACH PARTITION`` after the load fails ("child table is missing constraint"
    / "table is missing constraint"): the whole restore is rolled back with a raw server error, where the
    previous version restored the day (as a table of its own). Should: the day is restored and back under
    ``log`` (e.g. the table created with the parent's constraints, ``INHERITS``/``PARTITION OF``, or LIKE ...
    INCLUDING CONSTRAINTS), its 10 rows read through ``log``."""
    _log(conn, schema, layout, ", CONSTRAINT positive CHECK (id > 0)")
    spec = _naming_spec(schema, "drop")
    archive_partition(conn, spec, DAY, store)
    assert remove_day(conn, spec, DAY, store).rows == 10
    try:
        result = restore_day(conn, store, spec, DAY, into="original")
    except ArchiveError as exc:
        pytest.fail(f"restore into the original failed: {type(exc).__name__}: {exc} / {exc.remedy}")
    assert result.rows == 10 and _count(conn, schema, "log") == 10


def test_naming_mode_restore_refusing_a_detached_day_partition_gives_a_statement_that_works(conn, schema, store):
    """A naming-mode table whose day tables are declarative partitions of ``log``; retention ``detach`` now
    detaches ``log_20240310`` with ``DETACH PARTITION`` (new in this version). Later the user runs ``restore
    --into original``: it is refused, rightly (the detached table still holds the day), telling the user to
    "attach it again (ALTER TABLE ... log_20240310 INHERIT ... log)". The user runs that statement: PostgreSQL
    refuses it ("cannot inherit from partitioned table"). Should: the refusal gives the statement that attaches
    a partition (``ALTER TABLE log ATTACH PARTITION log_20240310 FOR VALUES FROM (...) TO (...)``), which works;
    after it the day reads through ``log`` again. (restore._refuse_detached_day_table always writes INHERIT.)"""
    _log(conn, schema, "partition")
    spec = _naming_spec(schema, "detach")
    archive_partition(conn, spec, DAY, store)
    assert remove_day(conn, spec, DAY, store).rows == 10
    with pytest.raises(ArchiveError) as caught:
        restore_day(conn, store, spec, DAY, into="original")
    message = str(caught.value)
    start = message.find("ALTER TABLE")
    assert start >= 0, message
    statement = message[start:].split("), or ")[0]
    try:
        conn.execute(statement)
    except psycopg.Error as exc:
        pytest.fail(f"the refusal's statement {statement!r} fails: {exc}")
    assert _count(conn, schema, "log") == 10
