"""hunt17 wp: review of the hot-standby fixes (hunt17 wl): a standby's paused or lagging replay, a removal's primary
of another cluster, a restore on a standby, retries off for on-demand checks.

Each test is a bug found: it fails now and passes once the product is fixed."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import subprocess
import time

import psycopg
import pytest
import yaml
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.local.local_stack import create_sample_events, start_postgres, wait_for_replay
from archive_pipeline_tests.conftest import utc_today
from archive_pipeline_tests.test_hunt17_wl import replay_paused, standby  # noqa: F401 - the standby fixture
from archive_pipeline_tests.helpers import run_cli

DAY = utc_today() - dt.timedelta(days=5)




@contextlib.contextmanager
def receiver_cut(pg, standby):
    """The standby's WAL receiver cut off from the primary (primary_conninfo pointing nowhere, as a network
    partition or a primary's pg_hba change does): replay runs, nothing new arrives."""
    wait_for_replay(pg, standby)
    with standby.connect() as c:
        original = c.execute("SHOW primary_conninfo").fetchone()[0]
        c.execute("ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port=1 user=postgres connect_timeout=1'")
        c.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 20
        while c.execute("SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming' "
                        "AND conninfo NOT LIKE '%port=1 %'").fetchone()[0]:
            assert time.monotonic() < deadline, "the WAL receiver kept streaming"
            time.sleep(0.05)
    try:
        yield
    finally:
        with standby.connect() as c:
            c.execute(sql.SQL("ALTER SYSTEM SET primary_conninfo = {}").format(sql.Literal(original)))
            c.execute("SELECT pg_reload_conf()")
        wait_for_replay(pg, standby)


def _table(schema: str, **extra) -> dict:
    return {"name": f"{schema}.events", "day_column": "created_at", "start_date": DAY.isoformat(),
            "partitioning": {"mode": "declarative"}, **extra}


def _late_row(conn, schema: str) -> None:
    events = sql.Identifier(schema, "events")
    conn.execute(sql.SQL("INSERT INTO {} SELECT id + 1000000, created_at, user_id, event_type, amount, session_id, "
                         "is_mobile, tags, payload FROM {} ORDER BY id LIMIT 1").format(events, events))


def _cli(env: dict[str, str], *args: str, process: bool = False) -> subprocess.CompletedProcess:
    # in this process (helpers.run_cli: a second of interpreter start-up and imports saved per call); process=True: a
    # real `python -m` process, for what only one shows (signals, start-up, rlimits)
    return run_cli(args, env, timeout=90, process=process or None)


def _env(tmp_path, s3, bucket, table: dict, dsn: str, primary: str | None = None) -> dict[str, str]:
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [table]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIVE_", "AWS_"))}
    env.update(ARCHIVE_PIPELINE_CONFIG=str(config), ARCHIVE_PG_DSN=dsn, ARCHIVE_S3_BUCKET=bucket,
               ARCHIVE_S3_PREFIX="archive", ARCHIVE_S3_ENDPOINT_URL=s3.endpoint_url,
               ARCHIVE_S3_ACCESS_KEY_ID="testing", ARCHIVE_S3_SECRET_ACCESS_KEY="testing")
    if primary:
        env["ARCHIVE_PG_PRIMARY_DSN"] = primary
    return env


def test_compare_on_a_standby_whose_replay_is_paused_does_not_call_the_day_changed(
        pg, standby, conn, schema, store, s3, bucket, tmp_path):
    """The README (Read replicas) now promises: a standby whose WAL replay is paused with WAL waiting "has its day
    refused, retryable, naming pg_wal_replay_resume() ...: never called changed, nor overwritten with its older
    rows". The archive run keeps that promise (archive._refuse_stale_standby); `archive-pipeline compare` (and the
    source_unchanged check, which share verify.source_changed) do not: the standby's replay is paused, the primary
    commits a late row of the day, the day is archived from the primary (51 rows). `compare --day` reading the
    standby (ARCHIVE_PG_DSN) says result "differs" (source_rows 50, archive_rows 51, no note): the day called
    changed, the verdict that led to the overwrite which lost rows before the fix (an overwrite is now refused,
    but the verdict is still false: nothing changed, the standby is behind). Should: the day is not-checked (retryable), naming the paused replay
    (pg_wal_replay_resume()), not "changed" with advice to overwrite. Fix idea: ask standby_replay in
    verify.source_changed's snapshot (as _Archiving does) and raise the same retryable SourceError."""
    create_sample_events(conn, [DAY], rows_per_day=50, schema=schema)
    table = _table(schema)
    env = _env(tmp_path, s3, bucket, table, standby.dsn, pg.dsn)
    with replay_paused(pg, standby):
        _late_row(conn, schema)
        assert archive_partition(conn, TableSpec(**table), DAY, store).rows == 51
        done = _cli(env, "compare", "--day", DAY.isoformat(), "--json")
    [day] = json.loads(done.stdout)["days"]
    assert day["result"] not in ("changed", "differs"), day
    assert "paused" in day.get("note", "") and "overwrite" not in day.get("note", ""), day


def test_an_overwrite_from_a_standby_cut_off_from_its_primary_does_not_shrink_the_archive(
        pg, standby, conn, schema, store):
    """The standby's WAL receiver is cut off (network partition, the primary's pg_hba changed, primary_conninfo
    wrong after a failover): replay is not paused and has nothing waiting, but the primary committed a late row of
    the day since. The day was archived from the primary with it (51 rows, snapshot after that commit). An archive
    run reading the standby: _refuse_stale_standby asks only pg_is_wal_replay_paused() and WAL received but not
    replayed (Replay.stale: "a running one only with WAL waiting"), so a standby that receives nothing passes: the
    run says "changed since it was archived ... set overwrite", and with overwrite (as advised) replaces the
    51-row archive with a green 50-row one: the original bug (rows lost), through the other kind of lag (WAL not
    received). Should: a standby whose WAL receiver is not streaming (pg_stat_wal_receiver has no streaming row;
    or its last message is older than the archive's snapshot) and that replayed no commit since the archive's
    snapshot is refused retryably as lagging (naming the receiver), the 51-row archive kept."""
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.verify import load_manifest

    create_sample_events(conn, [DAY], rows_per_day=50, schema=schema)
    spec = TableSpec(**_table(schema))
    with receiver_cut(pg, standby):
        _late_row(conn, schema)
        first = archive_partition(conn, spec, DAY, store)  # from the primary: 51 rows
        assert first.rows == 51
        with standby.connect() as replica:
            with pytest.raises(ArchiveError) as refused:
                archive_partition(replica, spec, DAY, store, overwrite=True)
    assert refused.value.retryable, str(refused.value)
    assert load_manifest(store, first.key)["rows"] == 51


def test_prune_whose_primary_dsn_names_another_cluster_is_refused_as_the_removal_asset_refuses_it(
        pg, conn, schema, store, s3, bucket, tmp_path):
    """README (ARCHIVE_PG_PRIMARY_DSN): "the command line's prune and restore run there (a removal ... refuses a
    primary of another cluster than the archive's or ARCHIVE_PG_DSN's ...)". The day was archived by a role that
    may not run pg_control_system() (revoked from PUBLIC on a hardened server: the manifest's source.system_identifier is null, as server_identity allows;
    or a manifest from before identifiers were recorded). ARCHIVE_PG_DSN is the real source A (a superuser, who may
    read A's identifier), ARCHIVE_PG_PRIMARY_DSN by mistake a staging cluster B loaded from a dump of A (same
    rows). The removal asset refuses (refuse_other_cluster(primary, reads=source)); `archive-pipeline prune` does
    not: it calls remove_day(run.primary, ...), whose refuse_other_cluster compares with the manifest only (null),
    so B's partition of the day is dropped and the manifest marked removed, while A keeps the day, never to be
    archived again. Should: prune refuses as the asset does (B's system identifier is not ARCHIVE_PG_DSN's), B keeps
    its rows, the manifest is not marked. Fix idea: prune passes reads=run.conn to refuse_other_cluster (or
    remove_day takes the reading connection)."""
    from archive_pipeline.core.verify import load_manifest

    create_sample_events(conn, [DAY], rows_per_day=50, schema=schema)
    role = f"r_{schema}"[:60]
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(role)))
    conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(sql.Identifier(schema),
                                                                                  sql.Identifier(role)))
    table = _table(schema, retention={"keep_days": 1, "action": "drop"})
    conn.execute("REVOKE EXECUTE ON FUNCTION pg_catalog.pg_control_system() FROM PUBLIC")  # (a hardened server)
    try:
        with psycopg.connect(pg.dsn_for(role), autocommit=True) as limited:
            archived = archive_partition(limited, TableSpec(**table), DAY, store)
    finally:
        conn.execute("GRANT EXECUTE ON FUNCTION pg_catalog.pg_control_system() TO PUBLIC")
    assert load_manifest(store, archived.key)["source"].get("system_identifier") is None  # (the scenario)
    other = start_postgres()
    try:
        with other.connect() as copy:
            copy.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            create_sample_events(copy, [DAY], rows_per_day=50, schema=schema)
        env = _env(tmp_path, s3, bucket, table, pg.dsn, other.dsn)
        done = _cli(env, "prune", "--day", DAY.isoformat(), "--json")
        with other.connect() as copy:
            left_on_b = copy.execute(sql.SQL("SELECT count(*) FROM {}").format(
                sql.Identifier(schema, "events"))).fetchone()[0]
    finally:
        other.stop()
    mark = load_manifest(store, archived.key).get("removed")
    assert mark is None and left_on_b == 50, (done.stdout[-1500:], done.stderr[-1500:], mark, left_on_b)


def _removal(defs, spec, instance, dry=False):
    from archive_pipeline.defs.retention_assets import removal_asset_key, removal_job_name
    job = defs.resolve_job_def(removal_job_name(spec))
    rc = {"ops": {removal_asset_key(spec).to_python_identifier(): {"config": {"dry_run": True}}}} if dry else None
    done = job.execute_in_process(partition_key=DAY.isoformat(), instance=instance, raise_on_error=False,
                                  run_config=rc)
    fails = [str(e.event_specific_data.error.message)[:1500] for e in done.all_events if e.is_step_failure]
    return done.success, fails


def test_the_removal_asset_does_not_refuse_a_day_removed_before_the_database_moved_to_a_new_cluster(
        pg, conn, schema, store, archive_env, monkeypatch):
    """A day was archived and removed (retention ``drop``, its mark "done") on cluster A. The database then moved
    to a new cluster B (pg_upgrade to a new major version, or a dump/restore or logical-replication migration: B
    has its own system identifier; the removed day is not in it, as it was not in A). ARCHIVE_PG_DSN now names B
    (no separate primary). The removal asset runs the day again (a backfill of source_removed over its partitions
    after the move). core.remove_day on B says "already removed" (its done mark is checked before
    refuse_other_cluster); the asset calls refuse_other_cluster(primary, manifest) on every manifest first and
    fails: "<table> <day> stays in the source: ... cluster B ..., and the day's archive was taken from cluster A:
    another cluster's copy of the table is not the day's source; nothing was removed ... archive the day again from
    it with overwrite, then remove it" — the day is in no source (nothing to archive: that remedy fails with
    DayRemovedError), so the partition stays red for good. Should: a day whose mark is done and whose rows are
    not back is reported removed (as remove_day does); the other-cluster refusal only where something would be
    removed (rows back) or a pending mark settled. Fix idea: move the asset's manifest refuse_other_cluster after
    the `back` test (for `back` days and pending marks only)."""
    from dagster import instance_for_test

    from archive_pipeline.core.config import parse_config
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline.definitions import build_definitions

    create_sample_events(conn, [DAY, DAY + dt.timedelta(days=1)], rows_per_day=20, schema=schema)
    table = _table(schema, retention={"keep_days": 1, "action": "drop"})
    spec = TableSpec(**table)
    archive_partition(conn, spec, DAY, store)
    assert remove_day(conn, spec, DAY, store).rows == 20  # removed on A: done
    other = start_postgres()
    try:
        with other.connect() as moved:  # the database as it is on B: the removed day is not there
            moved.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            create_sample_events(moved, [DAY + dt.timedelta(days=1)], rows_per_day=20, schema=schema)
            assert remove_day(moved, spec, DAY, store, dry_run=True).already_removed  # (the core says so)
        monkeypatch.setenv("ARCHIVE_PG_DSN", other.dsn)
        monkeypatch.delenv("ARCHIVE_PG_PRIMARY_DSN", raising=False)
        defs = build_definitions(parse_config({"retry": {"max_retries": 0}, "tables": [table]}), check_source=False)
        with instance_for_test() as instance:
            ok, failures = _removal(defs, spec, instance)
    finally:
        other.stop()
    assert ok, failures


def test_a_removal_on_another_cluster_does_not_settle_the_days_pending_mark_there_before_refusing(
        pg, conn, schema, store, monkeypatch):
    """A removal of the day on cluster A committed (the partition dropped) and was killed before its "done" mark:
    the manifest stays "pending" (README: the next removal or archive settles it on the primary). Then
    `archive-pipeline prune` (core.remove_day) runs with ARCHIVE_PG_PRIMARY_DSN naming, by mistake, a staging
    cluster B loaded from a dump of A taken before the removal (the day's 50 rows are there). remove_day settles
    the mark FIRST, on B: the mark's transaction is of another cluster, so "a source that still has rows [counts]
    as not [removed]": the mark is taken back (the manifest put back unmarked) — and only then refuse_other_cluster
    refuses ("another cluster's copy of the table is not the day's source; nothing was removed"). A, the real
    source, has lost the day's rows, and its archive, now their only copy, is no longer marked removed: the next
    archive run on A reads an emptied day under an unmarked manifest. The removal asset does it in the other order
    (refuse_other_cluster "before a pending mark is settled there"). Should: remove_day refuses another cluster
    before settling anything: the mark stays pending, B untouched. Fix idea: in lifecycle._remove_day call
    refuse_other_cluster before the pending branch (as the asset does)."""
    from archive_pipeline.core import lifecycle as L
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.verify import load_manifest

    create_sample_events(conn, [DAY], rows_per_day=50, schema=schema)
    spec = TableSpec(**_table(schema, retention={"keep_days": 1, "action": "drop"}))
    archived = archive_partition(conn, spec, DAY, store)

    def _killed(*_a, **_k):
        raise RuntimeError("killed right after the removal's COMMIT")

    with monkeypatch.context() as m:
        m.setattr(L, "_tidy_removed", _killed)
        with pytest.raises(Exception, match="committed|killed"):
            L.remove_day(conn, spec, DAY, store)
    assert load_manifest(store, archived.key)["removed"]["state"] == "pending"  # (the scenario)
    other = start_postgres()
    try:
        with other.connect() as copy:
            copy.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            create_sample_events(copy, [DAY], rows_per_day=50, schema=schema)
            with pytest.raises(ArchiveError) as refused:
                L.remove_day(copy, spec, DAY, store)
            left_on_b = copy.execute(sql.SQL("SELECT count(*) FROM {}").format(
                sql.Identifier(schema, "events"))).fetchone()[0]
    finally:
        other.stop()
    assert "another cluster" in str(refused.value) or "cluster" in str(refused.value), str(refused.value)
    assert left_on_b == 50
    mark = load_manifest(store, archived.key).get("removed")
    assert mark is not None and mark.get("state") == "pending", mark
