"""hunt17 wl: a hot standby as the source (ARCHIVE_PG_DSN a streaming replica, ARCHIVE_PG_PRIMARY_DSN the primary).

Each test is a bug found: it fails now and passes once the product is fixed."""

from __future__ import annotations

import contextlib
import datetime as dt

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec, parse_config
from archive_pipeline.local.local_stack import create_sample_events, start_replica, wait_for_replay
from archive_pipeline_tests.conftest import utc_today
from archive_pipeline_tests.helpers import run_check_evaluations

DAY = utc_today() - dt.timedelta(days=5)


@pytest.fixture(scope="module")
def standby(pg):
    server = start_replica(pg)
    yield server
    server.stop()


@contextlib.contextmanager
def replay_paused(pg, standby):
    """WAL replay paused on the standby (pg_wal_replay_pause): what the primary commits meanwhile is not there."""
    wait_for_replay(pg, standby)
    with standby.connect() as c:
        c.execute("SELECT pg_wal_replay_pause()")
    try:
        yield
    finally:
        with standby.connect() as c:
            c.execute("SELECT pg_wal_replay_resume()")
        wait_for_replay(pg, standby)


def _table(schema: str, **extra) -> dict:
    return {"name": f"{schema}.events", "day_column": "created_at", "start_date": DAY.isoformat(),
            "partitioning": {"mode": "declarative"}, **extra}


def _late_row(conn, schema: str) -> None:
    events = sql.Identifier(schema, "events")
    conn.execute(sql.SQL("INSERT INTO {} SELECT id + 1000000, created_at, user_id, event_type, amount, session_id, "
                         "is_mobile, tags, payload FROM {} ORDER BY id LIMIT 1").format(events, events))


def test_the_removal_asset_proves_against_the_primary_it_removes_from_not_the_standbys_stale_view(
        pg, standby, conn, schema, store, archive_env, monkeypatch):
    """ARCHIVE_PG_DSN on a hot standby, ARCHIVE_PG_PRIMARY_DSN the primary (README: "Removal runs on the primary",
    "deep verification (... the removal's proof) loads the archive there"). A day of 50 rows is archived; then a
    late row of the day is committed on the primary while the standby has not replayed it (replay paused here; any
    replication lag does the same). The removal asset's proof (source_removed/archive_proven) fingerprints the
    source on the standby (deep_verify_of(source=standby, scratch_conn=primary)) and hands remove_day
    proven=<manifest sha>, which then skips its own proof. Now: a dry run says "archive proven equal to the
    source" (check passed) and "would drop ... (50 rows ...)" while the partition it would drop holds 51; the real
    run is refused by the in-transaction re-check on the primary ("51 rows now, 50 archived") and yet records
    archive_proven as PASSED. (The reverse lag, an archive holding a row the standby has not replayed, fails the
    check and advises an overwrite, which from the lagging standby shrinks the archive.)
    Should: the removal's proof compares the archive with the rows it would remove, on the primary (the source's
    fingerprint taken on ARCHIVE_PG_PRIMARY_DSN, or the standby asked to have replayed the primary's current LSN
    first): the dry run and the check say the source has a row the archive lacks, nothing is called proven."""
    from dagster import instance_for_test

    from archive_pipeline.definitions import build_definitions

    create_sample_events(conn, [DAY], rows_per_day=50, schema=schema)
    table = _table(schema, retention={"keep_days": 1, "action": "drop"})
    spec = TableSpec(**table)
    archive_partition(conn, spec, DAY, store)
    monkeypatch.setenv("ARCHIVE_PG_DSN", standby.dsn)
    monkeypatch.setenv("ARCHIVE_PG_PRIMARY_DSN", pg.dsn)
    defs = build_definitions(parse_config({"retry": {"max_retries": 0}, "tables": [table]}), check_source=False)
    with replay_paused(pg, standby):
        _late_row(conn, schema)  # 51 rows of the day on the primary, 50 on the standby and in the archive
        with instance_for_test() as instance:
            dry_ok, dry_failures, dry_checks = _removal(defs, spec, instance, dry=True)
            real_ok, real_failures, real_checks = _removal(defs, spec, instance)
    count = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "events"))
    assert conn.execute(count).fetchone()[0] == 51  # (the re-check on the primary kept the rows)
    assert not real_ok
    assert not any(passed for passed, _ in dry_checks + real_checks), (dry_checks, real_checks)
    assert not dry_ok, "the dry run said the day would be removed as proven: " + repr(dry_checks)


def _removal(defs, spec, instance, dry=False):
    from archive_pipeline.defs.retention_assets import removal_asset_key, removal_job_name
    job = defs.resolve_job_def(removal_job_name(spec))
    rc = {"ops": {removal_asset_key(spec).to_python_identifier(): {"config": {"dry_run": True}}}} if dry else None
    done = job.execute_in_process(partition_key=DAY.isoformat(), instance=instance, raise_on_error=False,
                                  run_config=rc)
    fails = [(str(e.event_specific_data.error.message)[:900], e.event_specific_data.user_failure_data and e.event_specific_data.user_failure_data.metadata.get("retryable")) for e in done.all_events if e.is_step_failure]
    return done.success, fails, [(e.passed, e.description[:400]) for e in run_check_evaluations(instance, done.run_id)]



def test_an_archive_run_on_a_standby_whose_replay_is_paused_does_not_take_its_stale_rows_for_the_day(
        pg, standby, conn, schema, store):
    """The standby's WAL replay is paused (pg_wal_replay_pause(): a DBA holding it still for a long report or a
    backup, and forgetting to resume) while the primary commits a late row of a day; the day was archived from the
    primary with that row (51 rows). An archive run reading the standby (ARCHIVE_PG_DSN) now: without overwrite it
    fails, not retried, saying the day "changed since it was archived ... it has 50 rows now, the archive holds 51
    (rows arrived or were deleted late); set overwrite" — nobody deleted anything; with overwrite (as advised) it
    replaces the 51-row archive with a green 50-row one that lacks a row the primary committed before the run
    started. Should: the archiver, knowing its source is a standby (in_hot_standby), sees replay paused with WAL
    received but not replayed (pg_is_wal_replay_paused(), pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn())
    and refuses the day, retryable, naming the paused replay and the remedy (SELECT pg_wal_replay_resume() on the
    standby, or archive from the primary); the archive in the store stays the 51-row one."""
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.verify import load_manifest

    create_sample_events(conn, [DAY], rows_per_day=50, schema=schema)
    spec = TableSpec(**_table(schema))
    with replay_paused(pg, standby):
        _late_row(conn, schema)
        first = archive_partition(conn, spec, DAY, store)  # from the primary: 51 rows
        assert first.rows == 51
        with standby.connect() as replica:
            with pytest.raises(ArchiveError) as refused:
                archive_partition(replica, spec, DAY, store)
            said = str(refused.value)
            assert refused.value.retryable and "replay" in said and "paused" in said, said
            assert "set overwrite" not in said, said
            with pytest.raises(ArchiveError):  # (an overwrite reads the same stale rows)
                archive_partition(replica, spec, DAY, store, overwrite=True)
    assert load_manifest(store, first.key)["rows"] == 51


def _stalling_view(conn, schema: str) -> None:
    """``<schema>.ev``: the events, whose row 1 sleeps in the server while a fingerprint (hashtextextended) reads
    it and ``<schema>.flag`` has a row; ``<schema>.churn``: rows for the primary to delete and vacuum."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.flag (on_ boolean)").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.churn (id int)").format(s))
    conn.execute(sql.SQL("CREATE VIEW {}.ev AS SELECT e.*, CASE WHEN e.id = 1 AND current_query() ILIKE "
                         "'%%hashtextextended%%' AND EXISTS (SELECT FROM {}.flag) THEN pg_sleep(20)::text END AS stall "
                         "FROM {}.events e").format(s, s, s))


def _sleeping_on(replica) -> bool:
    """Whether a session of the standby sleeps inside the view; this poll itself may be cancelled by a conflict with
    recovery (another test's vacuum replayed under max_standby_streaming_delay 0): then not yet."""
    try:
        return bool(replica.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'").fetchone()[0])
    except psycopg.errors.SerializationFailure:  # (autocommit: the session goes on)
        return False


def _vacuum_once_stalled(pg, standby, schema: str, out: list) -> None:
    """Once a standby session sleeps inside the view, delete and vacuum rows on the primary: replaying that
    cancels the standby's read (max_standby_streaming_delay 0, hot_standby_feedback off)."""
    import time

    deadline = time.monotonic() + 15
    with standby.connect() as replica:
        while not _sleeping_on(replica):
            if time.monotonic() > deadline:
                out.append("never stalled")
                return
            time.sleep(0.05)
    with pg.connect() as primary:
        primary.execute(sql.SQL("DELETE FROM {}.churn").format(sql.Identifier(schema)))
        primary.execute(sql.SQL("VACUUM {}.churn").format(sql.Identifier(schema)))
    out.append("vacuumed")


def test_the_command_lines_recovery_conflict_note_does_not_say_it_is_retried_automatically(
        pg, standby, conn, schema, store, s3, bucket, tmp_path):
    """`archive-pipeline compare` with ARCHIVE_PG_DSN on a hot standby (hot_standby_feedback off,
    max_standby_streaming_delay 0, as the README's Read replicas section describes) while the primary vacuums rows
    the standby's snapshot still needs: the read is cancelled ('canceling statement due to conflict with
    recovery'). The day's note says "... raise max_standby_streaming_delay ... above the longest day's read;
    retried automatically" — but the command line tries once (README; its other transient errors say "run the
    command again (it tries once)"): _CLI_WORDING rewrites "retried automatically" only at the start of a remedy
    ("; to fix: retried automatically"), and this remedy, the only one, ends with it. Should: the note says to run
    the command again (it tries once), never that it is retried. Fix idea: match "; retried automatically" at the
    end of a remedy too (or word the remedy "retried automatically; ..." like the others)."""
    import json
    import os
    import subprocess
    import sys
    import threading

    import yaml

    create_sample_events(conn, [DAY], rows_per_day=50, schema=schema)
    _stalling_view(conn, schema)
    table = {"name": f"{schema}.ev", "day_column": "created_at", "start_date": DAY.isoformat()}
    archive_partition(conn, TableSpec(**table), DAY, store)
    conn.execute(sql.SQL("INSERT INTO {}.flag VALUES (true)").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("INSERT INTO {}.churn SELECT generate_series(1, 100)").format(sql.Identifier(schema)))
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [table]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIVE_", "AWS_"))}
    env.update(ARCHIVE_PIPELINE_CONFIG=str(config), ARCHIVE_PG_DSN=standby.dsn, ARCHIVE_PG_PRIMARY_DSN=pg.dsn,
               ARCHIVE_S3_BUCKET=bucket, ARCHIVE_S3_PREFIX="archive", ARCHIVE_S3_ENDPOINT_URL=s3.endpoint_url,
               ARCHIVE_S3_ACCESS_KEY_ID="testing", ARCHIVE_S3_SECRET_ACCESS_KEY="testing")
    standby.reconfigure({"max_standby_streaming_delay": "0", "hot_standby_feedback": "off"})
    try:
        wait_for_replay(pg, standby)
        out: list = []
        vacuum = threading.Thread(target=_vacuum_once_stalled, args=(pg, standby, schema, out))
        vacuum.start()
        done = subprocess.run([sys.executable, "-m", "archive_pipeline.cli", "compare", "--day", DAY.isoformat(),
                               "--json"], env=env, capture_output=True, text=True, timeout=60)
        vacuum.join()
    finally:
        standby.reconfigure({"max_standby_streaming_delay": "30s"})
    assert out == ["vacuumed"], out
    [day] = json.loads(done.stdout)["days"]
    note = day["note"]
    assert day["result"] == "not-checked" and "conflict with recovery" in note, day  # (the scenario happened)
    assert "retried automatically" not in note, note
    assert "run the command again" in note, note


def test_a_removal_whose_primary_dsn_names_another_cluster_is_refused_not_done_there(
        pg, standby, conn, schema, store, archive_env, monkeypatch):
    """ARCHIVE_PG_DSN is a hot standby of cluster A; ARCHIVE_PG_PRIMARY_DSN, by mistake, names another cluster B
    holding a copy of the table (a staging database loaded from a dump of A: same schema, same rows). The day was
    archived from A (the manifest records A's system identifier: README "Whose archive it is"). The removal asset
    proves the archive against the standby (A), then removes on "the primary": B's partition of the day is
    dropped (its in-transaction re-check passes: the copy has the same rows), the manifest is marked
    removed: done — and A, the real source, still holds the day, now recorded as removed (never archived again).
    Should: the removal refuses, before removing anything, a primary whose system identifier is not the one of the
    archive's source (nor of ARCHIVE_PG_DSN's server), naming ARCHIVE_PG_PRIMARY_DSN and both identifiers; B keeps
    its rows and the manifest stays unmarked."""
    from dagster import instance_for_test

    from archive_pipeline.core.verify import load_manifest
    from archive_pipeline.definitions import build_definitions
    from archive_pipeline.local.local_stack import start_postgres

    create_sample_events(conn, [DAY], rows_per_day=50, schema=schema)
    table = _table(schema, retention={"keep_days": 1, "action": "drop"})
    spec = TableSpec(**table)
    archived = archive_partition(conn, spec, DAY, store)
    wait_for_replay(pg, standby)
    other = start_postgres()
    try:
        with other.connect() as copy:
            copy.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            create_sample_events(copy, [DAY], rows_per_day=50, schema=schema)
        monkeypatch.setenv("ARCHIVE_PG_DSN", standby.dsn)
        monkeypatch.setenv("ARCHIVE_PG_PRIMARY_DSN", other.dsn)
        defs = build_definitions(parse_config({"retry": {"max_retries": 0}, "tables": [table]}), check_source=False)
        with instance_for_test() as instance:
            ok, failures, _ = _removal(defs, spec, instance)
        with other.connect() as copy:
            left_on_b = copy.execute(sql.SQL("SELECT count(*) FROM {}").format(
                sql.Identifier(schema, "events"))).fetchone()[0]
    finally:
        other.stop()
    count = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "events"))
    assert conn.execute(count).fetchone()[0] == 50  # A, the source, was never touched
    mark = load_manifest(store, archived.key).get("removed")
    assert not ok and mark is None and left_on_b == 50, (ok, failures, mark, left_on_b)
    assert "ARCHIVE_PG_PRIMARY_DSN" in failures[0][0], failures


def test_source_unchanged_cancelled_by_a_recovery_conflict_with_retries_off_does_not_say_it_is_retried(
        pg, standby, conn, schema, store, archive_env, monkeypatch):
    """The code location reads a hot standby (ARCHIVE_PG_DSN; ARCHIVE_PG_PRIMARY_DSN the primary) with
    `retry: max_retries: 0`. The on-demand source_unchanged check (verify_archives) is cancelled by a recovery
    conflict (the primary vacuums rows the standby's snapshot needs; max_standby_streaming_delay 0). Its step fails
    ("Exceeded max_retries of 0": nothing is retried) and its description says "... recovery conflict ...;
    transient, retried ... What to do: set hot_standby_feedback = on ...; retried automatically": the check's
    failure (checks._unreachable) is not passed through retries_off as the archive and removal steps' are.
    Should: with retries off it says so (not retried: retries are off (retry: max_retries: 0 in ...); launch it
    again), as the archive step does, keeping the hot_standby_feedback / max_standby_streaming_delay remedy."""
    import threading

    from dagster import DagsterEventType, instance_for_test

    from archive_pipeline.definitions import build_definitions
    from archive_pipeline.defs.assets import job_name

    create_sample_events(conn, [DAY], rows_per_day=50, schema=schema)
    _stalling_view(conn, schema)
    table = {"name": f"{schema}.ev", "day_column": "created_at", "start_date": DAY.isoformat()}
    spec = TableSpec(**table)
    wait_for_replay(pg, standby)
    monkeypatch.setenv("ARCHIVE_PG_DSN", standby.dsn)
    monkeypatch.setenv("ARCHIVE_PG_PRIMARY_DSN", pg.dsn)
    defs = build_definitions(parse_config({"retry": {"max_retries": 0}, "tables": [table]}), check_source=False)
    with instance_for_test() as instance:
        assert defs.resolve_job_def(job_name(spec)).execute_in_process(partition_key=DAY.isoformat(),
                                                                      instance=instance).success
        conn.execute(sql.SQL("INSERT INTO {}.flag VALUES (true)").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("INSERT INTO {}.churn SELECT generate_series(1, 100)").format(sql.Identifier(schema)))
        standby.reconfigure({"max_standby_streaming_delay": "0", "hot_standby_feedback": "off"})
        try:
            wait_for_replay(pg, standby)
            out: list = []
            vacuum = threading.Thread(target=_vacuum_once_stalled, args=(pg, standby, schema, out))
            vacuum.start()
            done = defs.resolve_job_def("verify_archives").execute_in_process(instance=instance, raise_on_error=False)
            vacuum.join()
        finally:
            standby.reconfigure({"max_standby_streaming_delay": "30s"})
        retried = [e for e in done.all_events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY]
        failures = [e.step_failure_data.user_failure_data.description for e in done.all_events
                    if e.is_step_failure and e.step_key.endswith("source_unchanged")]
    assert out == ["vacuumed"] and not retried, (out, retried)
    [said] = failures
    assert "conflict with recovery" in said and "hot_standby_feedback = on" in said, said  # (the scenario happened)
    assert "retried automatically" not in said and "transient, retried" not in said, said
    assert "max_retries: 0" in said, said


def test_a_restore_whose_primary_dsn_names_the_standby_says_so_not_to_reset_read_only_defaults(
        pg, standby, conn, schema, store, s3, bucket, tmp_path):
    """The DSNs swapped by mistake: ARCHIVE_PG_DSN the primary, ARCHIVE_PG_PRIMARY_DSN its hot standby.
    `archive-pipeline prune` says it plainly ("must run on the primary, and this connection is a hot standby: set
    ARCHIVE_PG_PRIMARY_DSN to the primary"). `archive-pipeline restore --into new` fails with a guess of two causes
    ("the database session is read-only (a hot standby, or default_transaction_read_only on ...)") and remedies for
    the wrong one: "ALTER ROLE postgres RESET default_transaction_read_only" (which changes nothing on a standby)
    and "an archive of a view whose functions write cannot be taken in the archive's READ ONLY snapshot" (no
    archive is being taken). Should: the restore knows its target is a hot standby (pg_is_in_recovery(), as the
    removal asks) and says ARCHIVE_PG_PRIMARY_DSN names a hot standby: point it at the primary; no advice to
    reset read-only defaults or about a view's snapshot."""
    import json
    import os
    import subprocess
    import sys

    import yaml

    create_sample_events(conn, [DAY], rows_per_day=50, schema=schema)
    table = _table(schema)
    archive_partition(conn, TableSpec(**table), DAY, store)
    wait_for_replay(pg, standby)
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [table]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIVE_", "AWS_"))}
    env.update(ARCHIVE_PIPELINE_CONFIG=str(config), ARCHIVE_PG_DSN=pg.dsn, ARCHIVE_PG_PRIMARY_DSN=standby.dsn,
               ARCHIVE_S3_BUCKET=bucket, ARCHIVE_S3_PREFIX="archive", ARCHIVE_S3_ENDPOINT_URL=s3.endpoint_url,
               ARCHIVE_S3_ACCESS_KEY_ID="testing", ARCHIVE_S3_SECRET_ACCESS_KEY="testing")
    done = subprocess.run([sys.executable, "-m", "archive_pipeline.cli", "restore", "--day", DAY.isoformat(),
                           "--into", "new", "--target", f"{schema}.restored", "--json"], env=env,
                          capture_output=True, text=True, timeout=60)
    said = json.loads(done.stdout)["error"]
    assert done.returncode != 0 and ("read-only" in said or "standby" in said), said  # (the scenario happened)
    assert "ARCHIVE_PG_PRIMARY_DSN" in said and "is a hot standby" in said, said
    assert "RESET default_transaction_read_only" not in said and "READ ONLY snapshot" not in said, said
