"""Hunt 3 (p): real PostgreSQL faults on the paths other than the plain first archive — deep verification,
compare, restore, removal, the sensor's discovery and the Dagster assets and checks. Each test injects the
fault for real (a backend terminated, a server out of disk, a role's connection limit, a privilege or a
column changed) and asserts the correct outcome: a typed error naming table, day and cause, classified
retryable exactly when a retry can help, no verdict on an archive that was not judged, and nothing left."""

from __future__ import annotations

import contextlib
import os
import pwd
import threading
import time

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.errors import ArchiveError, SourceError
from archive_pipeline.core.keys import table_day_key
from archive_pipeline.core.verify import deep_verify, load_manifest
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.helpers import tiny_tmpfs, run_check_evaluations
from archive_pipeline_tests.test_lifecycle import DAYS, events, spec_for  # noqa: F401 - the fixture

DAY = DAYS[0]
PASSWORD = "Zq9-hunt3p-S3kret"  # distinctive: grep every message for it


@pytest.fixture
def role(pg, conn, schema):
    """(name, dsn): a password LOGIN role that owns nothing yet and may use ``schema``; dropped afterwards."""
    name = f"h3p_{schema}"
    dsn = pg.create_password_role(name, PASSWORD)
    conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA {s} TO {r}").format(s=sql.Identifier(schema),
                                                                          r=sql.Identifier(name)))
    yield name, dsn
    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,))
    deadline = time.monotonic() + 30  # the terminated backends exit a moment later (seconds on a loaded machine)
    while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (name,)).fetchone()[0] \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    conn.execute(sql.SQL("REASSIGN OWNED BY {r} TO postgres; DROP OWNED BY {r}; DROP ROLE {r}").format(
        r=sql.Identifier(name)))


def _own(conn, schema: str, role: str) -> None:
    """``role`` owns the table and its day partitions (a removal's drop needs that)."""
    children = [r[0] for r in conn.execute("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                                           "WHERE i.inhparent = %s::regclass", (f'"{schema}".events',))]
    for name in ("events", *children):
        conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(sql.Identifier(schema, name), sql.Identifier(role)))


def _day_rows(conn, schema: str) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE created_at >= '2024-03-10+00' AND "
                                "created_at < '2024-03-11+00'").format(sql.Identifier(schema, "events"))).fetchone()[0]


def _removal_defs(spec):
    from archive_pipeline import definitions
    from archive_pipeline.core.config import parse_config

    return definitions.build_definitions(parse_config({"retry": {"max_retries": 1, "delay_seconds": 0}, "tables": [{
        "name": spec.name, "day_column": "created_at", "start_date": DAYS[0].isoformat(),
        "partitioning": {"mode": "declarative"}, "retention": {"keep_days": 30, "action": "drop"}}]}))


def _failures(run) -> list[str]:
    out = []
    for event in run.all_events:
        if event.event_type_value == "STEP_FAILURE":
            data = event.step_failure_data
            out.append(str(data.user_failure_data.description if data.user_failure_data else data.error))
    return out


@contextlib.contextmanager
def _tiny_temp_tablespace(pg, conn, name: str):
    """A tablespace ``name`` on a 256 KiB tmpfs (the server's disk for it fills up: ENOSPC, SQLSTATE 53100)."""
    with tiny_tmpfs(pg.root / name, "256k") as path:
        entry = pwd.getpwnam("postgres")
        os.chown(path, entry.pw_uid, entry.pw_gid)
        conn.execute(sql.SQL("CREATE TABLESPACE {} LOCATION {}").format(sql.Identifier(name), sql.Literal(str(path))))
        try:
            yield name
        finally:
            conn.execute(sql.SQL("DROP TABLESPACE {}").format(sql.Identifier(name)))


# ---- deep verification: the server's disk fills while the archive loads back ------------------------------

def test_deep_verification_whose_server_runs_out_of_disk_is_no_verdict_on_the_archive(pg, conn, schema, store):
    """A user proves an intact archive (`verify --deep`, a removal's proof) while the server's disk for temporary
    tables is full (temp_tablespaces on a volume that fills: PostgreSQL answers "could not extend file ...: No
    space left on device", SQLSTATE 53100). Nothing about the archive was judged: the error must be the server's
    (a SourceError, cause "the database server ran out of disk space", not retried). Now: verify._load turns
    every non-retryable psycopg error into a plain ArchiveError saying "the archive ... does not load back into
    its recorded column types", a verdict on an archive that is intact (and the retention asset records it as a
    failed archive_proven)."""
    create_sample_events(conn, [DAY], rows_per_day=8000, schema=schema)
    spec = spec_for(schema)
    archive_partition(conn, spec, DAY, store)
    with _tiny_temp_tablespace(pg, conn, f"tiny_{schema}") as tablespace:
        with pg.connect() as proving, pytest.raises(ArchiveError) as caught:
            proving.execute(sql.SQL("SET temp_tablespaces = {}").format(sql.Literal(tablespace)))
            proving.execute("SET temp_buffers = '800kB'")  # (so the temporary table's pages reach the disk)
            deep_verify(proving, store, spec, DAY)
    error = caught.value
    assert "does not load back" not in str(error), str(error)
    assert isinstance(error, SourceError) and error.cause == "the database server ran out of disk space", \
        (type(error).__name__, error.cause, str(error))
    assert not error.retryable and (error.table, error.day) == (spec.name, DAY.isoformat())
    with pg.connect() as again:  # the archive itself is fine: proven once the disk has room
        assert deep_verify(again, store, spec, DAY) == []


def test_removal_asset_whose_proof_meets_a_full_server_disk_records_no_failed_proof(pg, conn, schema, store, role,
                                                                                   archive_env, monkeypatch):
    """The same fault in the retention asset (the role's temporary tables on a volume that is full). The run must
    fail without judging the archive: no failed archive_proven (red, "NOT proven", on an intact archive), the day
    kept in the source. Now the asset takes verify's plain ArchiveError for a failed proof and records it."""
    from dagster import instance_for_test

    name, dsn = role
    create_sample_events(conn, [DAY], rows_per_day=8000, schema=schema)
    _own(conn, schema, name)
    spec = spec_for(schema)
    archive_partition(conn, spec, DAY, store)
    with _tiny_temp_tablespace(pg, conn, f"tiny_{schema}") as tablespace:
        conn.execute(sql.SQL("GRANT CREATE ON TABLESPACE {t} TO {r}; ALTER ROLE {r} SET temp_tablespaces = {v}; "
                             "ALTER ROLE {r} SET temp_buffers = '800kB'").format(
            t=sql.Identifier(tablespace), r=sql.Identifier(name), v=sql.Literal(tablespace)))
        monkeypatch.setenv("ARCHIVE_PG_DSN", dsn)
        with instance_for_test() as instance:
            run = _removal_defs(spec).resolve_job_def(f"Remove_{schema}_events").execute_in_process(
                partition_key=DAY.isoformat(), instance=instance, raise_on_error=False)
            run_checks = run_check_evaluations(instance, run.run_id)
        conn.execute(sql.SQL("ALTER ROLE {} RESET ALL").format(sql.Identifier(name)))
    assert not run.success and _day_rows(conn, schema) == 8000
    failed_proofs = [e.description for e in run_checks if not e.passed]
    assert failed_proofs == [], failed_proofs
    text = _failures(run)[-1]
    assert "disk" in text and "does not load back" not in text and PASSWORD not in text, text


# ---- the removal asset and the role's connection limit ------------------------------------------------------

def test_removal_asset_without_a_primary_dsn_needs_no_more_sessions_than_prune(pg, conn, events, store, role,
                                                                             archive_env, monkeypatch):
    """The archiving role has CONNECTION LIMIT 1 (a DBA's cap on an application role; the README's remedy says a
    day needs "one session, two for Parquet", and archiving and `archive-pipeline prune` work with one). Without
    ARCHIVE_PG_PRIMARY_DSN the primary *is* the source, yet the removal asset opens two sessions to the same DSN
    (``primary_postgres`` and ``postgres``): the second is refused ("too many connections for role") on every
    attempt, retried as transient, and the due day is never removed, with advice to lower a pool limit that is
    not the cause. It must do with one session, as prune does (the proof's extra session is optional)."""
    from dagster import instance_for_test

    name, dsn = role
    _own(conn, events, name)
    spec = spec_for(events)
    archive_partition(conn, spec, DAY, store)
    conn.execute(sql.SQL("ALTER ROLE {} CONNECTION LIMIT 1").format(sql.Identifier(name)))
    monkeypatch.setenv("ARCHIVE_PG_DSN", dsn)
    monkeypatch.delenv("ARCHIVE_PG_PRIMARY_DSN", raising=False)
    with instance_for_test() as instance:
        run = _removal_defs(spec).resolve_job_def(f"Remove_{events}_events").execute_in_process(
            partition_key=DAY.isoformat(), instance=instance, raise_on_error=False)
    assert run.success, _failures(run)
    assert _day_rows(conn, events) == 0
    assert load_manifest(store, table_day_key(spec, DAY, store.prefix))["removed"]["state"] == "done"


def test_restore_into_the_original_by_a_role_that_does_not_own_the_table_says_ownership_is_needed(
        pg, conn, events, store, role):
    """The day's partition was dropped; a role with INSERT and SELECT on the table (not its owner) restores the
    day into the original. Re-creating and attaching the partition takes ownership ("must be owner of table"),
    but the remedy asked for GRANT INSERT, SELECT, which the role already has: it must say ownership."""
    import psycopg

    from archive_pipeline.core.restore import RestoreError, restore_day

    name, dsn = role
    spec = spec_for(events)
    archive_partition(conn, spec, DAY, store)
    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(events, f"events_{DAY:%Y%m%d}")))
    conn.execute(sql.SQL("GRANT SELECT, INSERT ON {} TO {}").format(sql.Identifier(events, "events"),
                                                                    sql.Identifier(name)))
    with psycopg.connect(dsn, autocommit=True) as restoring:
        with pytest.raises(RestoreError) as refused:
            restore_day(restoring, store, spec, DAY, into="original")
    assert "owner" in (refused.value.remedy or "") and "GRANT INSERT" not in (refused.value.remedy or ""), \
        refused.value.remedy
    assert PASSWORD not in str(refused.value)
    assert _day_rows(conn, events) == 0


def test_list_check_source_of_a_schema_the_role_may_not_use_keeps_what_the_archive_holds(pg, conn, events, store,
                                                                                          role):
    """`list --check-source` run by a role whose USAGE on the schema was revoked: each archived day was shown as
    unreadable with in_source false and no rows or bytes, as if the archive held nothing and the source lacked
    the day. The archive's rows and object are known from its manifest, and whether the source has the day is
    not known: it must say so (in_source null), not "no"."""
    import psycopg

    from archive_pipeline.core.plan import day_statuses

    name, dsn = role
    spec = spec_for(events)
    result = archive_partition(conn, spec, DAY, store)
    conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(events, "events"), sql.Identifier(name)))
    conn.execute(sql.SQL("REVOKE USAGE ON SCHEMA {} FROM {}").format(sql.Identifier(events), sql.Identifier(name)))
    with psycopg.connect(dsn, autocommit=True) as reading:
        [status] = day_statuses(reading, spec, store, [DAY], check_source=True)
    assert status.state == "unreadable", status
    assert (status.rows, status.bytes, status.in_source) == (result.rows, result.bytes, None), status
    assert PASSWORD not in status.note and "<role>" not in status.note and name in status.note, status.note
