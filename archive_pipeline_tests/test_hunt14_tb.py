"""Hunt 14 (tb): faults and concurrent change during deep verification, compare and removal ("let go"), and the
removal's re-check: the source changing between the proof and the removal's lock, sessions that cannot write,
the store failing, the process stopped between two steps."""

from __future__ import annotations

import datetime as dt
import json

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from archive_pipeline.core import lifecycle
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.lifecycle import RemovalRefused, remove_day
from archive_pipeline_tests.test_cli import cli, days, setup  # noqa: F401 - fixtures

DAY = dt.date(2024, 3, 10)


def _partitioned(conn, schema: str, action: str, rows: int = 50) -> TableSpec:
    """ev(id, at timestamptz, v) partitioned by range of at: ev_20240310 holds ``rows`` rows of 2024-03-10,
    ev_20240311 one row of the next day."""
    parent = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz NOT NULL, v text) PARTITION BY RANGE (at)")
                 .format(parent))
    for d in (DAY, DAY + dt.timedelta(days=1)):
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier(schema, f"ev_{d:%Y%m%d}"), parent, sql.Literal(f"{d}+00"),
            sql.Literal(f"{d + dt.timedelta(days=1)}+00")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s::timestamptz + g * interval '1 minute', md5(g::text) "
                         "FROM generate_series(1, %s) g").format(parent), (f"{DAY}T00:00+00", rows))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (999, %s, 'next')").format(parent), (f"{DAY}T23:59:59+00",))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1000, %s, 'next day')").format(parent),
                 (f"{DAY + dt.timedelta(days=1)}T01:00+00",))
    return TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv", compression="none",
                     partitioning={"mode": "declarative"}, retention={"keep_days": 1, "action": action})


def _manifest(s3_client, bucket: str, key: str) -> dict:
    return json.loads(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())


def test_a_partition_detached_between_the_proof_and_the_delete_is_not_called_rows_deleted_by_someone(
        pg, conn, schema, store, s3_client, bucket, temp_dir, monkeypatch):
    """retention action ``delete`` on a declaratively partitioned table. The removal proves 2024-03-10 (51 rows,
    all in partition ev_20240310); before its transaction locks the table, a DBA's job (pg_partman's retention,
    a migration) runs ``ALTER TABLE ev DETACH PARTITION ev_20240310`` and commits. The re-check under the lock
    finds none of the day's rows in ev.

    Now: RemovalRefused "the source holds 0 of the day's 51 archived rows now (deleted or truncated by someone
    else since the day was archived) ...", remedy "if the rows were not meant to go, restore them from the archive
    into the table (restore --into original) ...". Nothing was deleted or truncated: all 51 rows are intact in
    the detached table ev_20240310, and the advice, given for lost rows, to restore the archive into the table
    would put a second copy of them there (re-attaching the detached table then fails on the overlap). The
    same removal with action detach/drop says what happened ("no partition of ev holds the day now (its
    partition was detached or dropped since the day was archived, by someone else ...)").

    Should: name the cause as it is, as detach/drop do: the day's partition ev_20240310 is no longer part of ev
    (detached, or dropped), so the user knows the rows may be in a table of their own now. Fix idea: before
    ``rows_lost`` (in the re-check and in the proof's path), for a declarative table whose day has no partition
    now, raise the detach/drop message of ``_target`` (naming the partition the removal saw before its lock)."""
    spec = _partitioned(conn, schema, "delete")
    archived = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    seam = lifecycle._require_proven_object  # runs after the proof, before the removal's LOCK

    def detached_meanwhile(*args, **kwargs):
        with psycopg.connect(pg.dsn, autocommit=True) as dba:
            dba.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(
                sql.Identifier(schema, "ev"), sql.Identifier(schema, "ev_20240310")))
        return seam(*args, **kwargs)

    monkeypatch.setattr(lifecycle, "_require_proven_object", detached_meanwhile)
    with pytest.raises(RemovalRefused) as refused:
        remove_day(conn, spec, DAY, store, temp_dir=temp_dir)
    # (the premise: nothing removed, the rows intact in the detached table, the manifest as it was)
    held = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "ev_20240310"))).fetchone()[0]
    assert held == 51
    assert "removed" not in _manifest(s3_client, bucket, archived.manifest_key)
    said = f"{refused.value} {refused.value.remedy or ''}"
    assert "deleted or truncated" not in said, said
    assert "detached" in said, said  # (as action detach/drop word it: "its partition was detached or dropped")


def test_verify_deep_loads_the_archive_on_the_configured_primary_when_the_source_session_is_read_only(
        setup, pg, days):
    """ARCHIVE_PG_DSN points at a read-only server that is not a hot standby: a logical replica, or a
    pooler's read-only pool, with ``default_transaction_read_only = on`` (the README's error table lists it beside
    a standby); ARCHIVE_PG_PRIMARY_DSN points at the writable primary, as the README asks for deep verification
    ("the removal's proof loads the archive there"). The day is archived and unchanged.

    Now: ``verify --deep`` decides where to load the archive by ``pg_is_in_recovery()`` alone (Run.scratch; the
    source_removed asset's proof does the same), which is false here, so it loads into the read-only source and
    fails: "the database session is read-only ... cannot execute CREATE TABLE in a read-only transaction", exit 1,
    with the remedy "run ... deep verification against the primary (ARCHIVE_PG_PRIMARY_DSN ...)": already set.
    ``compare --rows`` of the same day works.

    Should: load the archive on the configured primary whenever the source session cannot write (a hot standby,
    or a read-only transaction), and prove the day (exit 0). Fix idea: ask ``current_setting('transaction_read_only')``
    (true on a standby too) instead of ``pg_is_in_recovery()`` in Run.scratch and in the removal asset."""
    env, spec = setup
    done = cli(env, "archive")
    assert done.returncode == 0, done.stderr
    params = conninfo_to_dict(pg.dsn)
    read_only = make_conninfo(**{**params, "options": "-c default_transaction_read_only=on"})
    env = {**env, "ARCHIVE_PG_DSN": read_only, "ARCHIVE_PG_PRIMARY_DSN": pg.dsn}
    assert cli(env, "compare", "--rows", "--day", days[0].isoformat()).returncode == 0  # (reading works)
    done = cli(env, "verify", "--deep", "--day", days[0].isoformat())
    assert done.returncode == 0, done.stdout + done.stderr


def _removal_run(config, spec, day):
    """Run the day's removal job (Dagster) in a fresh instance; its success, archive_proven verdicts and failure."""
    from dagster import DagsterEventType, instance_for_test

    from archive_pipeline.definitions import build_definitions
    from archive_pipeline.defs.retention_assets import PROVEN_CHECK, removal_job_name

    defs = build_definitions(config)
    with instance_for_test() as instance:
        result = defs.resolve_job_def(removal_job_name(spec)).execute_in_process(
            instance=instance, partition_key=day.isoformat(), raise_on_error=False)
        events = [ev.dagster_event for ev in instance.all_logs(result.run_id) if ev.dagster_event is not None]
        proofs = [e.event_specific_data for e in events if e.event_type == DagsterEventType.ASSET_CHECK_EVALUATION
                  and e.event_specific_data.check_name == PROVEN_CHECK]
        failures = [e.event_specific_data.error.message for e in events
                    if e.event_type == DagsterEventType.STEP_FAILURE]
    return result.success, proofs, "\n".join(failures)


def test_the_removal_asset_settling_a_committed_removal_whose_only_copy_is_damaged_records_the_failed_proof(
        conn, schema, archive_env, store, s3_client, bucket, monkeypatch):
    """retention action ``delete``. A removal of 2024-03-10 (30 rows) commits its DELETE, then is stopped before
    its "done" mark (the store failed the PUT: RemovalNotRecorded, the manifest stays 'pending'). Before the retry,
    the day's data object is damaged in the bucket (bit rot, a bad bucket restore: other bytes of the same size).
    The retry, a run of Remove_<table> for the day, settles the mark first (settle_pending_removal): the DELETE
    committed, and the archive, now the day's only copy, fails its deep check.

    Now: the run fails with RemovalNotRecorded ("its archive no longer checks out ...; stays marked 'pending'"),
    and records no archive_proven verdict at all: the day's check keeps whatever it said before (passed, from the
    proof before the DELETE), green in the UI while the only copy of the removed rows is damaged. The same damage
    found on a day marked 'done' records archive_proven FAILED ("its archive, the only copy, is NOT intact").

    Should: a settling that deep-checked the archive and found it damaged is a failed proof of the day: record
    archive_proven failed (with what the check found), as for a day marked done. Fix idea: in
    retention_assets._removing, on RemovalNotRecorded from settle_pending_removal whose archive checks failed
    (not a store fault), record _proof(context, spec, day, problems, ...) before raising the failure."""
    from archive_pipeline.core.config import parse_config
    from archive_pipeline.core.lifecycle import RemovalNotRecorded

    t = sql.Identifier(schema, "t")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at timestamptz NOT NULL, note text)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 00:00+00'::timestamptz + g * interval '30 minutes', "
                         "md5(g::text) FROM generate_series(1, 30) g").format(t))
    config = parse_config({"retry": {"max_retries": 0}, "tables": [{
        "name": f"{schema}.t", "day_column": "at", "start_date": "2024-03-01",
        "retention": {"keep_days": 1, "action": "delete"}}]})
    spec = config.tables[0]
    archived = archive_partition(conn, spec, DAY, store)

    def store_failed(*args, **kwargs):
        raise RuntimeError("the store refused the PUT")

    with monkeypatch.context() as patched:  # the "done" mark cannot be written
        patched.setattr(lifecycle, "_marked_by_us", store_failed)
        with pytest.raises(RemovalNotRecorded):
            remove_day(conn, spec, DAY, store)
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(t)).fetchone()[0] == 0  # (committed)
    assert _manifest(s3_client, bucket, archived.manifest_key)["removed"]["state"] == "pending"
    size = s3_client.head_object(Bucket=bucket, Key=archived.key)["ContentLength"]
    s3_client.put_object(Bucket=bucket, Key=archived.key, Body=b"\0" * size)  # damaged in the bucket

    success, proofs, failure = _removal_run(config, spec, DAY)
    assert not success
    assert "no longer checks out" in failure or "NOT intact" in failure, failure  # (the premise)
    assert [p.passed for p in proofs] == [False], (proofs, failure)
