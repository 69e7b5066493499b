"""Hunt 6 (lw): least privilege. A role with only what the README asks for (SELECT on the table, USAGE on its
schema), in a database whose DBA restricted what PUBLIC may do (no TEMP, catalog views and functions revoked),
archiving, proving and restoring: each operation works exactly or fails naming the privilege and the exact
GRANT that fixes it."""

from __future__ import annotations

import datetime as dt
import itertools
import os
import re
from types import SimpleNamespace

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.restore import restore_day
from archive_pipeline.core.verify import deep_verify
from archive_pipeline.local.local_stack import create_sample_events

DAY = dt.date(2024, 3, 10)
PASSWORD = "pw-lw-Least"
_counter = itertools.count()


@pytest.fixture
def db(pg, conn):
    """A database of its own (its grants and catalog privileges are the test's to restrict) with a declaratively
    partitioned ``s.events`` of 500 rows on DAY, and a login role granted USAGE on ``s`` and SELECT on
    ``s.events``, nothing else."""
    name = f"lw_{os.getpid()}_{next(_counter)}"
    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    owner = psycopg.connect(pg.dsn_for("postgres", database=name), autocommit=True)
    role = f"{name}_reader"
    try:
        owner.execute("CREATE SCHEMA s")
        create_sample_events(owner, [DAY], rows_per_day=500, schema="s")
        pg.create_password_role(role, PASSWORD)
        owner.execute(sql.SQL("GRANT USAGE ON SCHEMA s TO {}").format(sql.Identifier(role)))
        owner.execute(sql.SQL("GRANT SELECT ON s.events TO {}").format(sql.Identifier(role)))
        yield SimpleNamespace(name=name, owner=owner, role=role, dsn=pg.dsn_for(role, PASSWORD, database=name))
    finally:
        owner.close()
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def _spec(fmt: str = "jsonl", **settings) -> TableSpec:
    return TableSpec(name="s.events", day_column="created_at", start_date=DAY, format=fmt,
                     partitioning={"mode": "declarative"}, **settings)


def _grant(db, statement: str) -> None:
    db.owner.execute(sql.SQL(statement).format(role=sql.Identifier(db.role)))


# ---- catalog views a DBA revoked from PUBLIC --------------------------------------------------------------------

def test_a_parallel_archive_by_a_role_that_may_not_read_pg_stat_activity_archives_the_day(db, store, temp_dir):
    """A DBA hardens the database: ``REVOKE SELECT ON pg_catalog.pg_stat_activity FROM PUBLIC`` (so application
    roles cannot see each other's queries). The archiving role may read the table; the table has
    ``parallel_streams: 2``. The day fails at once, not retried, with "permission denied for view
    pg_stat_activity ... the role may not read view pg_stat_activity, which s.events reads (a view's, or a
    rule's): GRANT SELECT ON pg_stat_activity TO the owner of the view": s.events is a table and reads no view;
    the refused query is the archiver's own count of free sessions (``parallel.free_sessions``), a planning aid.
    Every retry fails the same way. Expected: the day is archived (with the streams the archiver can vouch for,
    one if it cannot count), exactly its 500 rows; at worst a refusal that names the archiver's own need."""
    db.owner.execute("REVOKE SELECT ON pg_catalog.pg_stat_activity FROM PUBLIC")
    with psycopg.connect(db.dsn, autocommit=True) as reading:
        result = archive_partition(reading, _spec("jsonl", parallel_streams=2), DAY, store, temp_dir=temp_dir)
    assert result.rows == 500


def test_a_large_new_day_by_a_role_that_may_not_read_pg_stat_activity_archives_with_one_stream(db, store,
                                                                                                  temp_dir):
    """The same hardened database (pg_stat_activity revoked from PUBLIC), the default ``parallel_streams: 1``.
    A day the planner expects to hold 50,000 rows or more is fingerprinted alongside the read by a second
    session, and before opening it the archiver counts the free sessions in pg_stat_activity
    (``archive._read``: ``free_sessions`` whenever ``fp is None``). So every first archive of a large day fails,
    not retried, blaming a view that s.big does not read, while small days of the same table archive fine.
    Expected: the day is archived; where the sessions cannot be counted the fingerprint can be taken first."""
    db.owner.execute("CREATE TABLE s.big (id int, created_at timestamptz)")
    db.owner.execute("INSERT INTO s.big SELECT g, %s::timestamptz + g * interval '1 second' "
                     "FROM generate_series(1, 60000) g", (dt.datetime.combine(DAY, dt.time(), dt.UTC),))
    db.owner.execute("ANALYZE s.big")
    _grant(db, "GRANT SELECT ON s.big TO {role}")
    db.owner.execute("REVOKE SELECT ON pg_catalog.pg_stat_activity FROM PUBLIC")
    spec = TableSpec(name="s.big", day_column="created_at", start_date=DAY, format="csv", compression="none")
    with psycopg.connect(db.dsn, autocommit=True) as reading:
        result = archive_partition(reading, spec, DAY, store, temp_dir=temp_dir)
    assert result.rows == 60000


def test_a_parquet_archive_by_a_role_that_may_not_read_pg_settings_archives_the_day(db, store, temp_dir):
    """A DBA revokes ``SELECT ON pg_catalog.pg_settings FROM PUBLIC`` (settings such as data_directory and
    ssl_* paths are not the applications' business; ``SHOW`` and ``current_setting`` still work). A Parquet day
    (or any day with ``parallel_streams`` above 1) then fails, not retried, with "permission denied for view
    pg_settings ... the role may not read view pg_settings, which s.events reads (a view's, or a rule's)":
    the refused query is the archiver's own ``session_settings.unpinned_defaults``, which reads the settings'
    ``reset_val`` to decide whether the ADBC session needs libpq options. JSONL and CSV days of the same table
    archive fine. Expected: the Parquet day is archived (the start values can be read with SHOW, or the options
    sent anyway), exactly its 500 rows."""
    db.owner.execute("REVOKE SELECT ON pg_catalog.pg_settings FROM PUBLIC")
    with psycopg.connect(db.dsn, autocommit=True) as reading:
        result = archive_partition(reading, _spec("parquet"), DAY, store, temp_dir=temp_dir)
    assert result.rows == 500


def test_deep_verification_by_a_role_that_may_not_read_pg_settings_proves_the_day(db, conn, store, temp_dir):
    """The same database (pg_settings revoked from PUBLIC); the role was also granted TEMPORARY, as the README's
    proof asks. The day was archived (by its owner). ``verify --deep`` (and a removal's proof, and a table's
    ``deep_check``) fails, not retried, with "permission denied for view pg_settings ... which s.events reads
    (a view's, or a rule's)": the proof's second session is opened with ``parallel.dsn_of``, which reads
    pg_settings. Expected: the archive is proven ([]): the role has every privilege the README names."""
    _grant(db, f"GRANT TEMPORARY ON DATABASE {db.name} TO {{role}}")
    with psycopg.connect(db.owner.info.dsn, autocommit=True) as owning:
        archive_partition(owning, _spec(), DAY, store, temp_dir=temp_dir)
    db.owner.execute("REVOKE SELECT ON pg_catalog.pg_settings FROM PUBLIC")
    with psycopg.connect(db.dsn, autocommit=True) as reading:
        assert deep_verify(reading, store, _spec(), DAY, temp_dir=temp_dir) == []


def test_an_archive_by_a_role_that_may_not_read_pg_locks_is_not_retried_as_a_lost_connection(db, store, temp_dir):
    """A DBA revokes ``SELECT ON pg_catalog.pg_locks FROM PUBLIC``. Every archive of every day then reads the
    whole day, uploads it, and at the commit point fails *retryable* with "the connection holding the table-day
    lock was lost before the archive was committed (InsufficientPrivilege: permission denied for view
    pg_locks)": ``locks.require_lock_held`` takes any database error of its pg_locks query for a lost session.
    Nothing was lost; the refusal is permanent, so Dagster's retries read and upload the day again and again
    (a retry storm on a permanent refusal), and the message sends the user looking for network trouble.
    Expected: the day is archived (the session can tell it still holds its lock without pg_locks), or at worst
    the day fails not retried, naming pg_locks and the GRANT that lets the role read it."""
    db.owner.execute("REVOKE SELECT ON pg_catalog.pg_locks FROM PUBLIC")
    with psycopg.connect(db.dsn, autocommit=True) as reading:
        try:
            result = archive_partition(reading, _spec(), DAY, store, temp_dir=temp_dir)
        except ArchiveError as exc:
            assert not exc.retryable and "pg_locks" in (exc.remedy or ""), (exc.retryable, str(exc))
        else:
            assert result.rows == 500


def test_an_archive_refused_pg_export_snapshot_names_that_function_not_a_select_grant(db, store, temp_dir):
    """A DBA revokes ``EXECUTE ON FUNCTION pg_catalog.pg_export_snapshot() FROM PUBLIC``. Every archive of the
    table fails, not retried (right), with "permission denied for function pg_export_snapshot; to fix: GRANT
    SELECT ON s.events TO <role> (and GRANT USAGE ON SCHEMA)": the role already has both, so the user grants
    them again and nothing changes. Expected: the remedy names the refused function and the grant that fixes it
    (GRANT EXECUTE ON FUNCTION pg_catalog.pg_export_snapshot() TO the role), not SELECT on the table."""
    db.owner.execute("REVOKE EXECUTE ON FUNCTION pg_catalog.pg_export_snapshot() FROM PUBLIC")
    with psycopg.connect(db.dsn, autocommit=True) as reading:
        with pytest.raises(ArchiveError) as refused:
            archive_partition(reading, _spec(), DAY, store, temp_dir=temp_dir)
    remedy = refused.value.remedy or ""
    assert not refused.value.retryable
    assert "pg_export_snapshot" in remedy and "GRANT SELECT ON" not in remedy, remedy


# ---- restore by a role without CREATE / TEMP ----------------------------------------------------------------------

def test_a_restore_refused_create_on_the_schema_names_the_schema_and_the_role(db, store, temp_dir):
    """The reading role (USAGE on ``s``, no CREATE) restores the day into a new table ``s.back``. It is refused,
    not retried (right), but the remedy is a template: "GRANT INSERT, SELECT ON <target> TO <role>, and ...
    GRANT CREATE ON SCHEMA <schema> TO <role>", while deep verification's refusal of the same role names the
    real database and role ("GRANT TEMPORARY ON DATABASE lw_... TO lw_..._reader"). Expected: the remedy is the
    statement to run, GRANT CREATE ON SCHEMA s TO the role, with its names filled in."""
    with psycopg.connect(db.owner.info.dsn, autocommit=True) as owning:
        archive_partition(owning, _spec(), DAY, store, temp_dir=temp_dir)
    with psycopg.connect(db.dsn, autocommit=True) as restoring:
        with pytest.raises(ArchiveError) as refused:
            restore_day(restoring, store, _spec(), DAY, into="new", target="s.back", temp_dir=temp_dir)
    remedy = refused.value.remedy or ""
    assert re.search(rf'GRANT CREATE ON SCHEMA "?s"? TO "?{db.role}', remedy), remedy


def test_a_restore_with_on_conflict_skip_refused_temp_names_temporary_not_grants_it_has(db, store, temp_dir):
    """The DBA revoked TEMP on the database from PUBLIC. A role with INSERT and SELECT on an existing table with a
    primary key restores the day into it with ``on_conflict='skip'``, which stages the rows in a temporary table.
    It is refused, not retried (right), with "permission denied to create temporary tables in database ...; to
    fix: the restoring role needs INSERT and SELECT on the target (GRANT INSERT, SELECT ON <target> TO <role>),
    and CREATE on its schema ...": the role has INSERT and SELECT, the table exists, and the privilege that is
    missing, TEMPORARY on the database, is not named. Expected: the remedy names it (GRANT TEMPORARY ON DATABASE
    <the database> TO the role)."""
    db.owner.execute("CREATE TABLE s.target (LIKE s.events INCLUDING ALL)")
    db.owner.execute("ALTER TABLE s.target ADD PRIMARY KEY (id)")
    _grant(db, "GRANT SELECT, INSERT ON s.target TO {role}")
    db.owner.execute(sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC").format(sql.Identifier(db.name)))
    with psycopg.connect(db.owner.info.dsn, autocommit=True) as owning:
        archive_partition(owning, _spec(), DAY, store, temp_dir=temp_dir)
    with psycopg.connect(db.dsn, autocommit=True) as restoring:
        with pytest.raises(ArchiveError) as refused:
            restore_day(restoring, store, _spec(), DAY, into="existing", target="s.target", on_conflict="skip",
                        temp_dir=temp_dir)
    remedy = refused.value.remedy or ""
    assert "TEMPORARY" in remedy and db.name in remedy, remedy


# ---- removal by a role that may read the table ---------------------------------------------------------------------

def test_a_detach_by_a_role_that_does_not_own_the_table_names_the_owner_first(db, store, temp_dir):
    """The archiving role (SELECT on ``s.events``, which reads every partition through the parent) is given
    ``retention: {action: detach}`` and runs the removal (a dry run, as ``prune --dry-run`` does). It is refused,
    not retried (right), but with "role ... may not SELECT from 's.events_20240310'; to fix: GRANT SELECT ON
    "s"."events_20240310" TO ...". The user runs that GRANT, runs the removal again, and only then learns the
    real obstacle: "only the owner of s.events (postgres) may detach it ... GRANT postgres TO ...". (A role
    that is a member of pg_read_all_data gets that answer at once.) Expected: the first refusal names what the
    detach needs, the owner's role, not a SELECT grant that cannot make the detach possible."""
    from archive_pipeline.core.lifecycle import remove_day

    spec = _spec(retention={"keep_days": 1, "action": "detach"})
    with psycopg.connect(db.owner.info.dsn, autocommit=True) as owning:
        archive_partition(owning, spec, DAY, store, temp_dir=temp_dir)
    with psycopg.connect(db.dsn, autocommit=True) as removing:
        with pytest.raises(ArchiveError) as refused:
            remove_day(removing, spec, DAY, store, dry_run=True, temp_dir=temp_dir)
    remedy = refused.value.remedy or ""
    assert "owner" in remedy and "GRANT SELECT" not in remedy, remedy


# ---- a login the database refuses --------------------------------------------------------------------------------

@pytest.mark.parametrize("refusal, expected", [
    ("REVOKE CONNECT ON DATABASE {db} FROM PUBLIC", r'GRANT CONNECT ON DATABASE "?{db}"? TO "?{role}'),
    ("ALTER DATABASE {db} ALLOW_CONNECTIONS false", r'ALTER DATABASE "?{db}"? (WITH )?ALLOW_CONNECTIONS'),
    ("ALTER DATABASE {db} CONNECTION LIMIT 0", r'ALTER DATABASE "?{db}"? CONNECTION LIMIT'),
], ids=["connect-revoked", "allow-connections-false", "database-connection-limit"])
def test_a_login_the_database_refuses_names_the_statement_that_lets_the_role_in(db, conn, refusal, expected):
    """A DBA restricts who may connect to the database: ``REVOKE CONNECT ON DATABASE ... FROM PUBLIC`` (the
    common hardening step; the archiving role was never granted CONNECT itself), or the database is closed to
    connections (``ALLOW_CONNECTIONS false``) or given ``CONNECTION LIMIT 0``. Every command and run fails with
    the connect error (``errors.describe_connect_error``, as the code location's resource and the command line
    report it), whose remedy is "read the message; fix the cause and archive again" for the first two, and
    "ALTER DATABASE <database> CONNECTION LIMIT <n>" (a placeholder for a name it knows) for the third, while a
    refused role login gets "ALTER ROLE reader LOGIN". Expected: the remedy is the statement that lets the role
    in, with the database (and role) named: GRANT CONNECT ON DATABASE lw_... TO lw_..._reader, ALTER DATABASE
    lw_... ALLOW_CONNECTIONS true, ALTER DATABASE lw_... CONNECTION LIMIT <n>."""
    from archive_pipeline.core.errors import describe_connect_error

    conn.execute(refusal.format(db=db.name))
    try:
        with pytest.raises(psycopg.OperationalError) as refused:
            psycopg.connect(db.dsn, connect_timeout=5).close()
        described = describe_connect_error(refused.value, db.dsn)
    finally:
        conn.execute(f"ALTER DATABASE {db.name} ALLOW_CONNECTIONS true")
        conn.execute(f"ALTER DATABASE {db.name} CONNECTION LIMIT -1")
    assert PASSWORD not in str(described)
    assert re.search(expected.format(db=db.name, role=db.role), described.remedy or ""), described.remedy
