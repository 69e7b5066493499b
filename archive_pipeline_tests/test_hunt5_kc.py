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


def test_an_archive_run_by_a_read_only_serializable_deferrable_role_does_not_wait_behind_a_serializable_writer(
        conn, schema, pg, store, temp_dir, archived_day):
    """The same role as above (read-only, serializable, deferrable by default: a reporting role a DBA hands
    the archiver, which only reads) archives a day the way a Dagster run does, through PostgresResource.
    While any application session has a serializable read-write transaction open, the resource's connect
    (its `SELECT set_config(...)` of the session's timeouts) waits for a safe snapshot: with the role's
    statement_timeout it escapes as a raw psycopg QueryCanceled (no table, day, cause or remedy, retryable
    unknown), and without one every run hangs until that writer ends. The plain connection's archive fails
    too, blamed on "reading the day took longer than allowed" (it was waiting on its lock statement). The
    archive's read is REPEATABLE READ READ ONLY and needs no safe snapshot; the session's other statements
    should not wait for one either (SET the transaction defaults, as the load's table check does)."""
    from archive_pipeline.defs.resources import PostgresResource

    spec = archived_day.model_copy(update={"key_template": "again/" + archived_day.key_template})
    role, dsn = _role(conn, pg, schema, "ro", [("default_transaction_isolation", "serializable"),
                                               ("default_transaction_read_only", "on"),
                                               ("default_transaction_deferrable", "on"),
                                               ("statement_timeout", "500ms")])
    try:
        with psycopg.connect(pg.dsn) as writer:
            writer.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
            writer.execute(sql.SQL("CREATE TABLE {} (i int)").format(sql.Identifier(schema, "w")))
            try:
                with PostgresResource(dsn=dsn).connect() as ro:
                    result = archive_partition(ro, spec, DAY, store, temp_dir=temp_dir)
            finally:
                writer.rollback()
        assert result.rows == 50
    finally:
        _drop(conn, role)


def test_a_delete_removal_that_overflows_the_lock_table_names_max_locks_per_transaction(store, temp_dir):
    """A table partitioned by day keeps ~2 years of partitions, and its retention action is `delete`.
    The removal's `LOCK TABLE <parent> IN SHARE MODE` locks every partition, which overflows a server
    whose lock table (max_locks_per_transaction x connections) is smaller than the partition count:
    PostgreSQL says "out of shared memory", HINT "You might need to increase max_locks_per_transaction".
    The removal fails as 'the database server ran out of memory or another resource', transient and
    retried (each retry needs the same locks and fails the same way), with the remedy 'lower the pool
    limit in dagster.yaml or work_mem', which cannot help. The error should name the setting to raise,
    max_locks_per_transaction (or the removal should lock only the day's own partitions)."""
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline.local.local_stack import start_postgres

    server = start_postgres({"max_locks_per_transaction": "10", "max_connections": "10", "autovacuum": "off"})
    try:
        with server.connect() as conn:
            conn.execute("CREATE TABLE ev (id int, at timestamptz, v text) PARTITION BY RANGE (at)")
            first = DAY - dt.timedelta(days=300)
            for batch in range(0, 600, 100):  # (100 per transaction: creating them locks them too)
                conn.execute(f"DO $$ BEGIN FOR i IN {batch}..{batch + 99} LOOP EXECUTE format('CREATE TABLE %I "
                             f"PARTITION OF ev FOR VALUES FROM (%L) TO (%L)', 'ev_' || i, ('{first}'::date + i)::text "
                             f"|| '+00', ('{first}'::date + i + 1)::text || '+00'); END LOOP; END $$")
            conn.execute("INSERT INTO ev SELECT g, %s::timestamptz + g * interval '1 second', 'x' "
                         "FROM generate_series(1, 100) g", (f"{DAY}+00",))
            spec = TableSpec(name="public.ev", day_column="at", start_date=first, partitioning={"mode": "declarative"},
                             retention={"keep_days": 30, "action": "delete"})
            archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
            with pytest.raises(ArchiveError) as caught:
                remove_day(conn, spec, DAY, store, temp_dir=str(temp_dir))
            assert "max_locks_per_transaction" in (caught.value.remedy or ""), str(caught.value)
    finally:
        server.stop()


def test_a_role_whose_valid_until_has_passed_is_not_only_told_to_check_its_password(conn, schema, pg):
    """A DBA sets the archiving role's password to expire (ALTER ROLE ... VALID UNTIL) and the date passes.
    Every run then fails with 'wrong password (password authentication failed)' and the remedy 'check the
    password in ARCHIVE_PG_DSN (and that the role's password was not rotated)': the password is right, and
    PostgreSQL tells the client the same words for an expired one (the reason is in the server log only).
    The remedy should name the other cause it may be, the role's VALID UNTIL having passed (and where to
    look: pg_roles.rolvaliduntil, ALTER ROLE ... VALID UNTIL), so nobody rotates a correct password."""
    from archive_pipeline.core.errors import SourceError
    from archive_pipeline.defs.resources import PostgresResource

    role = f"{schema}_expired"
    dsn = pg.create_password_role(role, "pw-right-kc")
    try:
        conn.execute(sql.SQL("ALTER ROLE {} VALID UNTIL '2001-01-01'").format(sql.Identifier(role)))
        with pytest.raises(SourceError) as caught:
            with PostgresResource(dsn=dsn).connect():
                pass
        assert not caught.value.retryable and "pw-right-kc" not in str(caught.value)
        assert "valid until" in (caught.value.remedy or "").lower(), str(caught.value)
    finally:
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_role_with_serializable_default_archives_and_compares_on_a_hot_standby(store, temp_dir):
    """A DBA makes SERIALIZABLE the default for the application's role (ALTER ROLE ... SET
    default_transaction_isolation = 'serializable', a common way to get SSI everywhere), and the archiver
    uses that role against a hot standby (ARCHIVE_PG_DSN = the replica, as the README supports). A standby
    allows no serializable transaction, and every statement that does not say its isolation fails with
    "cannot use serializable mode in a hot standby" (0A000; its HINT: SET default_transaction_isolation =
    'repeatable read'). The archive's own read is REPEATABLE READ, but PostgresResource.connect's SELECT of
    the session settings fails first, raising a raw psycopg FeatureNotSupported (no table, day, cause or
    remedy); on a plain connection the archive fails with 'the server rejected the archiver's SQL ... check the
    table definition; if it looks right, report it', existing_days and plan_archive raise raw, and compare
    calls the day 'unreadable'. The same role archives fine on the primary. The sessions should not depend on
    the default isolation (SET it, or say it on every transaction), so the day is archived and compares equal."""
    from archive_pipeline.defs.resources import PostgresResource
    from archive_pipeline.local.local_stack import start_postgres, start_replica, wait_for_replay

    primary = start_postgres({"autovacuum": "off"})
    try:
        with primary.connect() as conn:
            create_sample_events(conn, [DAY], 50)
            conn.execute("CREATE ROLE archiver LOGIN SUPERUSER")
        replica = start_replica(primary)
        try:
            with primary.connect() as conn:
                conn.execute("ALTER ROLE archiver SET default_transaction_isolation = 'serializable'")
            wait_for_replay(primary, replica)
            spec = TableSpec(name="public.events", day_column="created_at", start_date=DAY,
                             partitioning={"mode": "declarative"})
            with PostgresResource(dsn=replica.dsn_for("archiver")).connect() as standby:
                assert archive_partition(standby, spec, DAY, store, temp_dir=temp_dir).rows == 50
                compared = compare_days(standby, spec, store, [DAY])
                assert [c.result for c in compared] == ["equal"], compared[0].note
        finally:
            replica.stop()
    finally:
        primary.stop()


def test_a_restore_refused_by_the_roles_default_tablespace_names_the_tablespace_grant(conn, schema, pg, store,
                                                                                     temp_dir, archived_day):
    """A DBA puts the restoring role's new tables on a tablespace by default (ALTER ROLE ... SET
    default_tablespace) without granting it CREATE there. A restore into a new table (or into the original
    table, re-creating the dropped day's partition) fails 'permission denied for tablespace <ts>', typed and
    not retried, but its remedy says to GRANT INSERT, SELECT on the target and CREATE on its schema, which
    the role has: the grant it lacks is CREATE ON TABLESPACE <ts> (or the role's default_tablespace is to be
    reset). The remedy should name the tablespace and that grant, as a refused schema or type is named."""
    from archive_pipeline.core.restore import RestoreError
    import pathlib
    import shutil
    import tempfile

    from archive_pipeline.local.local_stack import _chown_for_server

    location = pathlib.Path(tempfile.mkdtemp(prefix="kc-tablespace-"))  # (where the server's user may reach it)
    _chown_for_server(location)
    space = f"{schema}_ts"
    conn.execute(sql.SQL("CREATE TABLESPACE {} LOCATION {}").format(sql.Identifier(space), sql.Literal(str(location))))
    role, dsn = _role(conn, pg, schema, "restorer", [("default_tablespace", space)])
    try:
        with psycopg.connect(dsn, autocommit=True) as restorer:
            with pytest.raises(RestoreError) as caught:
                restore_day(restorer, store, archived_day, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
        assert not caught.value.retryable
        assert "tablespace" in (caught.value.remedy or "").lower(), str(caught.value)
    finally:
        _drop(conn, role)
        conn.execute(sql.SQL("DROP TABLESPACE {}").format(sql.Identifier(space)))
        shutil.rmtree(location, ignore_errors=True)
