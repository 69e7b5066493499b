"""Hunt 5 (kc): server-side limits and settings a DBA puts on the role or the database."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.plan import compare_days
from archive_pipeline.core.restore import restore_day
from archive_pipeline.core.verify import deep_verify
from archive_pipeline.local.local_stack import create_sample_events

DAY = dt.date(2024, 3, 10)


def _role(conn, pg, schema, name, settings, extra=""):
    role = f"{schema}_{name}"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw-kc' " + extra).format(sql.Identifier(role)))
    conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(role)))
    conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(sql.Identifier(schema),
                                                                                 sql.Identifier(role)))
    for setting, value in settings:
        conn.execute(sql.SQL("ALTER ROLE {} SET {} = {}").format(sql.Identifier(role), sql.Identifier(setting),
                                                                  sql.Literal(value)))
    return role, psycopg.conninfo.make_conninfo(pg.dsn, user=role, password="pw-kc")


def _drop(conn, role):
    conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.fixture
def archived_day(conn, schema, store, temp_dir):
    create_sample_events(conn, [DAY], rows_per_day=50, schema=schema)
    spec = TableSpec(name=f"{schema}.events", day_column="created_at", start_date=DAY,
                     partitioning={"mode": "declarative"}, retention={"keep_days": 30, "action": "drop"})
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    return spec


def test_compare_by_a_read_only_serializable_deferrable_role_does_not_wait_behind_a_serializable_writer(
        conn, schema, pg, store, archived_day):
    """A DBA gives the auditors' role default_transaction_read_only, default_transaction_isolation
    serializable and default_transaction_deferrable (the settings test_mends covers for the load's table
    check). `compare` of an archived day by that role, while any application session has a serializable
    read-write transaction open, waits for a safe snapshot: with the role's statement_timeout it reports the
    day 'unreadable' (statement_timeout), and through the command line (source.statement_timeout_ms 0) it
    hangs until that writer ends. The archive's own read says REPEATABLE READ READ ONLY and never waits; the
    comparison's read should too, and find the day equal."""
    spec = archived_day
    role, dsn = _role(conn, pg, schema, "ro", [("default_transaction_isolation", "serializable"),
                                               ("default_transaction_read_only", "on"),
                                               ("default_transaction_deferrable", "on"),
                                               ("statement_timeout", "500ms")])
    try:
        with psycopg.connect(pg.dsn) as writer:
            writer.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
            writer.execute(sql.SQL("CREATE TABLE {} (i int)").format(sql.Identifier(schema, "w")))
            with psycopg.connect(dsn, autocommit=True) as ro:
                compared = compare_days(ro, spec, store, [DAY])
            writer.rollback()
        assert [c.result for c in compared] == ["equal"], compared[0].note
    finally:
        _drop(conn, role)
