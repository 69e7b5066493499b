"""Real PostgreSQL faults on the paths other than the plain archive write: compare, deep verification,
restore, removal (and settling its mark), discovery and the retention asset. Each fault is injected for
real (a privilege taken away, a read-only session, a lock held by another session, a backend terminated
from another session or by a trigger); the outcome must be complete and exact or nothing changed, and
the error an ArchiveError naming table, day, cause and remedy, retryable exactly when a retry can help."""

from __future__ import annotations

import threading

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from archive_pipeline.core import plan
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.errors import ArchiveError, classify
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.restore import RestoreError, restore_day
from archive_pipeline.core.verify import deep_verify, load_manifest
from archive_pipeline_tests.test_lifecycle import DAYS, events, spec_for  # noqa: F401 - the fixture
from archive_pipeline_tests.helpers import run_check_evaluations

DAY = DAYS[0]
READ_ONLY = "-c default_transaction_read_only=on"


def _connect(pg, options: str) -> psycopg.Connection:
    return psycopg.connect(make_conninfo(pg.dsn, options=options), autocommit=True)


def _exists(conn, qualified: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (qualified,)).fetchone()[0]


def _day_rows(conn, schema: str) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE created_at >= '2024-03-10+00' AND "
                                "created_at < '2024-03-11+00'").format(sql.Identifier(schema, "events"))).fetchone()[0]


def _names_the_day(error: BaseException, spec) -> None:
    assert isinstance(error, ArchiveError), f"{type(error).__name__}: {error}"
    assert (error.table, error.day) == (spec.name, DAY.isoformat()), str(error)
    assert spec.name in str(error) and DAY.isoformat() in str(error) and "to fix:" in str(error), str(error)


# ---- compare ------------------------------------------------------------------------------------------

def test_compare_of_an_archived_day_the_role_may_no_longer_read_is_unreadable_not_gone(conn, events, store):
    """SELECT on the table taken away from the comparing role (here: SET ROLE to one without it). The day's
    partition is in the catalog; its fingerprint cannot be read. Was: 'not-in-source' ("archived; the source
    no longer has this day"), which is not a difference, so `compare` exited 0 and said the source had let
    the day go while every row is still there."""
    spec = spec_for(events)
    archive_partition(conn, spec, DAY, store)
    conn.execute("SET ROLE pg_monitor")  # may read the catalog, not the table
    try:
        [found] = plan.compare_days(conn, spec, store, [DAY])
    finally:
        conn.execute("RESET ROLE")
    assert (found.result, found.differs) == ("unreadable", True), found
    assert "may not SELECT" in found.note and found.archive_rows == 300, found


# ---- deep verification ----------------------------------------------------------------------------------

def test_deep_verification_whose_source_session_meets_a_lock_timeout_is_a_retryable_error_naming_the_day(
        pg, conn, events, store):
    """Another session holds the table ACCESS EXCLUSIVE (a migration, VACUUM FULL) while the proof's second
    session fingerprints the source. The proving session has a lock_timeout, set after connecting as
    PostgresResource and the command line set it. Was: the second session, opened from the connection
    string alone, had none and waited as long as the lock was held (here until the safety timer let it
    go, then "proven"); and a database error came out of deep_verify as the bare psycopg error (no table,
    no day, no remedy; the command line took it for a lost database and stopped checking other days)."""
    spec = spec_for(events)
    archive_partition(conn, spec, DAY, store)
    locker = pg.connect()
    release = threading.Timer(8, locker.close)  # (a safety net: the old code waits for the lock)
    try:
        locker.execute("BEGIN")
        locker.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(events, "events")))
        release.start()
        with pg.connect() as proving, pytest.raises(Exception) as caught:
            proving.execute("SELECT set_config('lock_timeout', '300', false)")
            deep_verify(proving, store, spec, DAY)
    finally:
        release.cancel()
        locker.close()
    _names_the_day(caught.value, spec)
    assert caught.value.retryable and "lock_timeout" in str(caught.value)
    assert not conn.execute("SELECT count(*) FROM pg_class WHERE relname LIKE 'archive_pipeline_verify%%'").fetchone()[0]


def test_deep_verification_on_a_read_only_session_says_so_and_is_not_retried(pg, conn, events, store):
    """default_transaction_read_only on the session (a role or database set that way, a pooler's read-only
    route): the proof's temporary table is refused. Was: the bare ReadOnlySqlTransaction, and wrapped it
    read 'a bug in the archiver; report it'."""
    spec = spec_for(events)
    archive_partition(conn, spec, DAY, store)
    with _connect(pg, READ_ONLY) as proving, pytest.raises(Exception) as caught:
        deep_verify(proving, store, spec, DAY)
    _names_the_day(caught.value, spec)
    assert not caught.value.retryable
    assert "read-only" in str(caught.value) and "bug" not in str(caught.value), str(caught.value)


# ---- restore and removal on a read-only session --------------------------------------------------------

def test_restore_on_a_read_only_session_names_the_cause_and_creates_nothing(pg, conn, events, store):
    spec = spec_for(events)
    archive_partition(conn, spec, DAY, store)
    with _connect(pg, READ_ONLY) as restoring, pytest.raises(RestoreError) as caught:
        restore_day(restoring, store, spec, DAY, into="new", target=f"{events}.restored")
    _names_the_day(caught.value, spec)
    assert not caught.value.retryable and "nothing was restored" in str(caught.value)
    assert "read-only" in str(caught.value) and "bug" not in str(caught.value), str(caught.value)
    assert "ARCHIVE_PG_PRIMARY_DSN" in caught.value.remedy
    assert not _exists(conn, f"{events}.restored")


def test_removal_on_a_read_only_session_names_the_cause_and_leaves_day_and_manifest(pg, conn, events, store):
    """The pending mark is written, then DETACH is refused: the mark is taken back, every row stays."""
    spec = spec_for(events, "drop")
    result = archive_partition(conn, spec, DAY, store)
    with _connect(pg, READ_ONLY) as removing, pytest.raises(ArchiveError) as caught:
        remove_day(removing, spec, DAY, store, proven=True)
    _names_the_day(caught.value, spec)
    assert not caught.value.retryable and "read-only" in str(caught.value) and "bug" not in str(caught.value)
    assert _exists(conn, f"{events}.events_20240310") and _day_rows(conn, events) == 300
    assert "removed" not in load_manifest(store, result.key)


# ---- discovery ------------------------------------------------------------------------------------------

def test_discovery_whose_session_is_terminated_mid_probe_raises_the_termination(pg, conn, events):
    """Column mode probes each day with the session's settings pinned and put back afterwards. A backend
    terminated while its probe waits for a lock: the error raised is the termination (57P01), which the
    sensor reports as such. Was: putting the settings back on the dead session raised "the connection is
    closed" in its place."""
    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.discovery import existing_days

    spec = TableSpec(name=f"{events}.events", day_column="created_at", start_date=DAY,
                     partitioning={"mode": "column"})
    locker = pg.connect()
    probing = pg.connect()
    pid = probing.info.backend_pid

    def terminate_once_waiting() -> None:  # (bounded: a probe that never waits fails the test, not hangs it)
        with pg.connect() as watcher:
            for _ in range(100_000):
                watcher.execute("SELECT pg_stat_clear_snapshot()")
                if watcher.execute("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s",
                                   (pid,)).fetchone()[0]:
                    watcher.execute("SELECT pg_terminate_backend(%s, 30000)", (pid,))
                    return

    try:
        locker.execute("BEGIN")
        locker.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(events, "events")))
        killer = threading.Thread(target=terminate_once_waiting)
        killer.start()
        with pytest.raises(psycopg.Error) as caught:
            existing_days(probing, spec, [DAY])
        killer.join()
    finally:
        locker.execute("ROLLBACK")
        locker.close()
        probing.close()
    assert classify(caught.value).cause.startswith("the session's backend was terminated"), repr(caught.value)


# ---- the retention asset ----------------------------------------------------------------------------------

def test_removal_asset_on_a_read_only_source_fails_at_once_naming_the_day_and_records_no_failed_proof(
        pg, conn, events, store, archive_env, monkeypatch):
    """ARCHIVE_PG_DSN whose sessions are read-only: the proof cannot create its temporary table. The run
    fails once (a retry cannot make the session writable), naming table, day and the read-only session,
    and no failed archive_proven is recorded (nothing was judged). Was: the bare ReadOnlySqlTransaction,
    retried by the retry policy like any unknown exception, naming neither table nor day."""
    from dagster import DagsterEventType, instance_for_test

    from archive_pipeline import definitions
    from archive_pipeline.core.config import parse_config

    spec = spec_for(events)
    archive_partition(conn, spec, DAY, store)
    monkeypatch.setenv("ARCHIVE_PG_DSN", make_conninfo(pg.dsn, options=READ_ONLY))
    defs = definitions.build_definitions(parse_config({"retry": {"max_retries": 1, "delay_seconds": 0}, "tables": [{
        "name": spec.name, "day_column": "created_at", "start_date": DAYS[0].isoformat(),
        "partitioning": {"mode": "declarative"}, "retention": {"keep_days": 30, "action": "drop"}}]}))
    with instance_for_test() as instance:
        run = defs.resolve_job_def(f"Remove_{events}_events").execute_in_process(
            partition_key=DAY.isoformat(), instance=instance, raise_on_error=False)
        run_checks = run_check_evaluations(instance, run.run_id)
        kinds = [e.dagster_event.event_type for e in instance.all_logs(run.run_id) if e.dagster_event]
        failures = [e for e in run.all_events if e.event_type_value == "STEP_FAILURE"]
    assert not run.success and kinds.count(DagsterEventType.STEP_UP_FOR_RETRY) == 0
    assert [e for e in run_checks if not e.passed] == []
    text = str(failures[-1].step_failure_data.user_failure_data.description)
    assert spec.name in text and DAY.isoformat() in text and "read-only" in text, text
    assert _exists(conn, f"{events}.events_20240310") and _day_rows(conn, events) == 300


# ---- settling a pending removal mark ----------------------------------------------------------------------

def test_settling_a_pending_mark_whose_source_check_meets_a_lock_timeout_names_the_day_and_keeps_the_mark(
        pg, conn, events, store):
    """A pending mark that names no transaction (written by an older version) is settled by looking at the
    source: a lock held on the table ends that look after lock_timeout. The mark stays as it was, and the
    error names table, day and cause, retryable. Was: the bare psycopg LockNotAvailable."""
    from archive_pipeline.core.keys import manifest_key
    from archive_pipeline.core.lifecycle import _write_manifest, settle_pending_removal

    spec = spec_for(events, "drop")
    result = archive_partition(conn, spec, DAY, store)
    manifest = {k: v for k, v in load_manifest(store, result.key).items() if k != "manifest_sha256"}
    _write_manifest(store, manifest_key(result.key), {**manifest, "removed": {
        "at": "2024-04-20T00:00:00+00:00", "action": "drop", "state": "pending", "relation": f"{events}.events_20240310"}})
    locker = pg.connect()
    try:
        locker.execute("BEGIN")
        locker.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(events, "events")))
        with pg.connect() as settling, pytest.raises(Exception) as caught:
            settling.execute("SELECT set_config('lock_timeout', '300', false)")
            settle_pending_removal(settling, spec, DAY, store)
    finally:
        locker.close()
    _names_the_day(caught.value, spec)
    assert caught.value.retryable and "lock_timeout" in str(caught.value)
    assert load_manifest(store, result.key)["removed"]["state"] == "pending" and _day_rows(conn, events) == 300


# ---- a privilege the step needs, refused ------------------------------------------------------------------

@pytest.mark.parametrize("action", ["drop", "delete"])
def test_removal_by_a_role_that_may_only_read_names_what_a_removal_needs(pg, conn, events, store, action):
    """The removing role may SELECT the table (the proof passes) but not change it: the removal is refused
    before its pending mark (it was: by the LOCK, after the mark, which was taken back), every row stays, and
    the remedy says what a removal needs. Was: 'GRANT SELECT ON <table>', which the role already had."""
    spec = spec_for(events, action)
    result = archive_partition(conn, spec, DAY, store)
    role = sql.Identifier(f"{events}_reader")
    conn.execute(sql.SQL("CREATE ROLE {}").format(role))
    try:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {s} TO {r}; GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {r}").format(
            s=sql.Identifier(events), r=role))
        with pg.connect() as removing, pytest.raises(ArchiveError) as caught:
            removing.execute(sql.SQL("SET ROLE {}").format(role))
            remove_day(removing, spec, DAY, store)
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {r}; DROP ROLE {r}").format(r=role))
    _names_the_day(caught.value, spec)
    assert not caught.value.retryable and "permission denied" in str(caught.value)
    needed = "DELETE" if action == "delete" else "owner"
    assert "GRANT SELECT ON" not in caught.value.remedy and needed in caught.value.remedy, caught.value.remedy
    assert _exists(conn, f"{events}.events_20240310") and _day_rows(conn, events) == 300
    assert "removed" not in load_manifest(store, result.key)


def test_compare_and_list_where_one_days_table_is_locked_report_that_day_and_check_the_others(
        pg, conn, schema, store):
    """A migration holds one day's table (naming mode) ACCESS EXCLUSIVE past the session's lock_timeout:
    that day cannot be compared now (retryable), the other day still is. Was: the bare LockNotAvailable
    ended the whole comparison (the command line: 'lost the source database', exit 3, no day reported).
    (Declarative mode cannot show it: listing the partitions' bounds, pg_get_expr, already waits for the
    lock, for every day of the table.)"""
    from archive_pipeline.core.config import TableSpec

    for day in DAYS:
        name = sql.Identifier(schema, f"log_{day:%Y%m%d}")
        conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(name))
        conn.execute(sql.SQL("INSERT INTO {} SELECT generate_series(1, 10)").format(name))
    spec = TableSpec(name=f"{schema}.log", start_date=DAY, partitioning={"mode": "naming", "pattern": "log_%Y%m%d"})
    for day in DAYS:
        archive_partition(conn, spec, day, store)
    locker = pg.connect()
    try:
        locker.execute("BEGIN")
        locker.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema, "log_20240310")))
        with pg.connect() as comparing:
            comparing.execute("SELECT set_config('lock_timeout', '200', false)")
            compared = plan.compare_days(comparing, spec, store, DAYS)
            listed = plan.day_statuses(comparing, spec, store, DAYS, check_source=True)
    finally:
        locker.close()
    assert [(c.result, c.differs) for c in compared] == [("not-checked", False), ("equal", False)], compared
    assert [s.state for s in listed] == ["not-checked", "archived"], listed
    for note in (compared[0].note, listed[0].note):
        assert note.startswith("not checked (retryable)") and "lock_timeout" in note, note


# ---- the source changing between the removal's first statement and its lock ---------------------------

@pytest.mark.parametrize("action", ["detach", "drop", "delete"])
def test_a_row_committed_while_the_removal_marks_its_manifest_stops_it_whatever_the_default_isolation(
        pg, conn, events, store, s3_client, action):
    """The removing role's sessions default to REPEATABLE READ (ALTER ROLE ... SET
    default_transaction_isolation). A late row of the day commits while the removal writes its pending mark,
    after its transaction began and before it locks the partition. The re-check after the lock must see
    it and refuse. Was: the transaction's snapshot dated from its first statement, the re-check's
    fingerprint still equalled the archive's, and the partition was detached or dropped with the late
    row, which no archive holds (delete left it behind a 'done' mark)."""
    spec = spec_for(events, action)
    result = archive_partition(conn, spec, DAY, store)
    late = []

    def insert_a_late_row(params, **_) -> None:  # the pending mark's PUT: the removal's transaction is open
        if not late and params["Key"].endswith(".manifest.json"):
            with pg.connect() as writer:
                writer.execute(sql.SQL("INSERT INTO {} (id, created_at, user_id, event_type) "
                                       "VALUES (999999, '2024-03-10 23:59:59+00', 1, 'late')").format(
                    sql.Identifier(events, "events")))
            late.append(True)

    s3_client.meta.events.register("before-parameter-build.s3.PutObject", insert_a_late_row)
    try:
        with pg.connect() as removing, pytest.raises(ArchiveError) as caught:
            removing.execute("SET default_transaction_isolation = 'repeatable read'")
            remove_day(removing, spec, DAY, store, proven=True)
    finally:
        s3_client.meta.events.unregister("before-parameter-build.s3.PutObject", insert_a_late_row)
    assert late and "changed since they were archived" in str(caught.value), str(caught.value)
    assert _exists(conn, f"{events}.events_20240310") and _day_rows(conn, events) == 301
    assert "removed" not in load_manifest(store, result.key)


def test_a_removal_whose_backend_is_terminated_in_the_middle_of_its_delete_keeps_every_row(pg, conn, events, store):
    """A trigger terminates the removing backend half-way through the day's DELETE (a stand-in for an
    operator's pg_terminate_backend): the transaction is gone with everything it deleted, the pending mark
    is taken back, and the error is retryable and names the day. (Checked, holds.) The trigger is allowed
    (retention.allow_delete_triggers): a table's DELETE triggers are refused otherwise."""
    spec = spec_for(events, "delete")
    spec = spec.model_copy(update={"retention": spec.retention.model_copy(update={"allow_delete_triggers": True})})
    result = archive_partition(conn, spec, DAY, store)
    conn.execute(sql.SQL("CREATE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF OLD.id = 150 THEN "
                         "PERFORM pg_terminate_backend(pg_backend_pid()); END IF; RETURN OLD; END $$").format(
        sql.Identifier(events, "die")))
    conn.execute(sql.SQL("CREATE TRIGGER die BEFORE DELETE ON {} FOR EACH ROW EXECUTE FUNCTION {}()").format(
        sql.Identifier(events, "events"), sql.Identifier(events, "die")))
    with pg.connect() as removing, pytest.raises(ArchiveError) as caught:
        remove_day(removing, spec, DAY, store, proven=True)
    _names_the_day(caught.value, spec)
    assert caught.value.retryable and "terminated" in str(caught.value)
    assert _day_rows(conn, events) == 300 and "removed" not in load_manifest(store, result.key)
