"""Hunt 9 (oq): the JSONL restore path as rewritten by ff62245 (a day's lines staged by one COPY into a temporary
table, then INSERT ... SELECT ... FROM lines CROSS JOIN LATERAL json_to_record(line::json))."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.restore import restore_day
from archive_pipeline_tests.test_hunt8_na import app_db  # noqa: F401 - a fixture: a database and an app role

DAY = dt.date(2024, 3, 10)


def test_a_jsonl_day_restores_into_an_existing_table_for_a_role_without_temporary(app_db, store, temp_dir):
    """The DBA revoked TEMPORARY on the database from PUBLIC (a common hardening); the app role has INSERT and
    SELECT on an existing table ``target`` without generated columns. It restores a JSONL day into it with the
    default ``on_conflict='fail'``. README: only ``on_conflict='skip'`` and a target's generated columns stage the
    day in a temporary table (and the refusal's own remedy says "or restore with on_conflict='fail' into a table
    without generated columns"); the same day archived as CSV or Parquet restores this way, and so did JSONL
    before ff62245. What happens: refused, "permission denied to create temporary tables in database ...
    CREATE TEMP TABLE pg_temp.archive_restore_lines_...": the new JSONL reader stages every day's lines in a
    temporary table (restore._staged_lines), so a JSONL restore now needs TEMPORARY whatever its options. What
    should happen: the 50 rows are restored, as for CSV (stage without a temporary table where the role may not
    create one, e.g. fall back to streaming the lines in blocks)."""
    schema = app_db.name
    spec = TableSpec(name=f"{schema}.events", day_column="created_at", start_date=DAY, format="jsonl",
                     partitioning={"mode": "declarative"})
    app_db.owner.execute(sql.SQL("CREATE TABLE {}.target (LIKE {}.events INCLUDING ALL)").format(
        sql.Identifier(schema), sql.Identifier(schema)))
    app_db.owner.execute(sql.SQL("GRANT SELECT, INSERT ON {}.target TO {}").format(sql.Identifier(schema),
                                                                                   sql.Identifier(app_db.role)))
    app_db.owner.execute(sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC").format(sql.Identifier(app_db.name)))
    with psycopg.connect(app_db.owner.info.dsn, autocommit=True) as owning:
        archive_partition(owning, spec, DAY, store, temp_dir=temp_dir)
    with psycopg.connect(app_db.dsn, autocommit=True) as restoring:
        restored = restore_day(restoring, store, spec, DAY, into="existing", target=f"{schema}.target",
                               temp_dir=temp_dir)
    assert restored.rows == 50 and restored.fingerprint_checked


def test_a_jsonl_day_restores_into_an_existing_table_under_an_event_trigger_refusing_app_ddl(app_db, store, temp_dir):
    """A database guards its schema with an event trigger that refuses DDL by anyone but a superuser (``ON
    ddl_command_start``: RAISE 'DDL (%) is reserved to migrations'; a common production guard). The app role has
    INSERT and SELECT on an existing table ``target`` without generated columns and restores a JSONL day into it
    with the default ``on_conflict='fail'``, which needs no DDL: the same day as CSV restores there, and so did
    JSONL before ff62245. What happens: RestoreError "the database reported an error (RaiseException: DDL (CREATE
    TABLE) is reserved to migrations ...); to fix: read the message": the JSONL reader now runs CREATE TEMP TABLE
    pg_temp.archive_restore_lines_... for every day (restore._staged_lines), and nothing says why a restore into
    an existing table creates a table. What should happen: the 50 rows are restored, as for CSV (the same cause as
    test_a_jsonl_day_restores_into_an_existing_table_for_a_role_without_temporary: the plain path does DDL)."""
    schema = app_db.name
    spec = TableSpec(name=f"{schema}.events", day_column="created_at", start_date=DAY, format="jsonl",
                     partitioning={"mode": "declarative"})
    app_db.owner.execute(sql.SQL("CREATE TABLE {}.target (LIKE {}.events INCLUDING ALL)").format(
        sql.Identifier(schema), sql.Identifier(schema)))
    app_db.owner.execute(sql.SQL("GRANT SELECT, INSERT ON {}.target TO {}").format(sql.Identifier(schema),
                                                                                   sql.Identifier(app_db.role)))
    with psycopg.connect(app_db.owner.info.dsn, autocommit=True) as owning:
        archive_partition(owning, spec, DAY, store, temp_dir=temp_dir)
    app_db.owner.execute("""CREATE FUNCTION public.no_app_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
            RAISE EXCEPTION 'DDL (%) is reserved to migrations', tg_tag;
          END IF;
        END $$""")
    app_db.owner.execute("CREATE EVENT TRIGGER no_app_ddl ON ddl_command_start EXECUTE FUNCTION public.no_app_ddl()")
    with psycopg.connect(app_db.dsn, autocommit=True) as restoring:
        restored = restore_day(restoring, store, spec, DAY, into="existing", target=f"{schema}.target",
                               temp_dir=temp_dir)
    assert restored.rows == 50 and restored.fingerprint_checked


def test_a_refused_jsonl_day_names_the_column_of_the_value_refused_not_another_rows(conn, schema, store, temp_dir):
    """A user restores a JSONL day (20,000 rows) into an existing table that differs from the archived one in two
    ways: its enum ``m`` lacks the label ``'b'`` that the first row holds, and its ``code`` is ``varchar(5)``
    where the last row's code has 12 characters. The INSERT stops at the first row, on ``m``: "invalid input
    value for enum ...: "b"". What happens: the error says ``(InvalidTextRepresentation, column code: invalid
    input value for enum ... "b")``, the enum's message next to the varchar column's name:
    restore._name_refused_column now probes each column over the whole day (``SELECT count(x.code) FROM lines
    ...`` finds the long code 20,000 rows further on) and names the first column refused anywhere, not the one
    whose value the INSERT refused (before ff62245 it probed only the failing 1 MiB block, and said ``column
    m``). What should happen: the column named is the one the message is about, ``m``."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TYPE {}.mood AS ENUM ('a', 'b')").format(s))
    conn.execute(sql.SQL("CREATE TYPE {}.narrow AS ENUM ('a')").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date, code text, pad text, m {}.mood)").format(s, s))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s, CASE WHEN g = 20000 THEN 'twelve chars' ELSE 'ok' END, "
                         "md5(g::text) || md5((-g)::text), CASE WHEN g = 1 THEN 'b' ELSE 'a' END::{}.mood "
                         "FROM generate_series(1, 20000) g").format(s, s), (DAY,))
    conn.execute(sql.SQL("CREATE TABLE {}.bad (id int, at date, code varchar(5), pad text, m {}.narrow)").format(s, s))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="jsonl")
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    with pytest.raises(ArchiveError) as refused:
        restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.bad", temp_dir=temp_dir)
    message = str(refused.value)
    assert "enum" in message and "column m:" in message and "column code" not in message, message
