"""Hunt 4 (vv): an adversarial review of the latest product changes (conditional writes, manifest
validation, re-execution skipping, re-checks)."""

from __future__ import annotations

import datetime as dt
import json
import os

import pytest
from dagster import DagsterEventType, instance_for_test
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec, parse_config
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.plan import compare_days
from archive_pipeline.core.store import S3Store
from archive_pipeline.definitions import build_definitions
from archive_pipeline.core.verify import deep_verify
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

FIRST = dt.date(2024, 3, 10)
DAYS = [FIRST + dt.timedelta(days=i) for i in range(2)]


def _range(first, last) -> dict[str, str]:
    return {"dagster/asset_partition_range_start": str(first), "dagster/asset_partition_range_end": str(last)}


def _states(instance, run_id):
    out = {}
    for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records:
        event = record.event_log_entry.dagster_event
        out.setdefault(event.partition, []).append(event.step_materialization_data.materialization.tags["archive/state"])
    return out


def _job_from_environment():
    """The archive job of the table configured in $VV_CONFIG (reconstructable, as a re-execution needs)."""
    config = parse_config(json.loads(os.environ["VV_CONFIG"]))
    return build_definitions(config).resolve_job_def(os.environ["VV_JOB"])


def test_re_executing_a_successful_overwrite_run_after_the_source_changed_archives_the_change(
        pg, conn, schema, archive_env, s3_client, monkeypatch):
    """A person archives 2024-03-10..11 again with the launchpad's run config ``overwrite: true`` (the README's
    way to archive changed days again); the run succeeds. Later the rows of 2024-03-10 are corrected in the
    source once more, and the person does what Dagster offers for "run that again": Runs → this run →
    Re-execute (all steps; same run config, same range). The re-execution now finds the days in its run group's
    earlier run and archives neither: it succeeds, green, while the archive still holds the old rows of
    2024-03-10 (compare says "differs"). A re-execution of the whole run (not "from failure") of an overwrite
    must archive the days again, or at least not succeed with the archive no longer the day's rows."""
    from dagster import ReexecutionOptions, execute_job, reconstructable

    create_sample_events(conn, DAYS, rows_per_day=5, schema=schema)
    raw = {"retry": {"max_retries": 0}, "backfill": {"max_days_per_run": 10},
           "tables": [{"name": f"{schema}.events", "day_column": "created_at", "start_date": FIRST.isoformat()}]}
    monkeypatch.setenv("VV_CONFIG", json.dumps(raw))
    monkeypatch.setenv("VV_JOB", f"Archive_{schema}_events")
    spec = parse_config(raw).tables[0]
    run_config = {"ops": {f"archive__{schema}__events": {"config": {"overwrite": True}}}}
    tags = _range(DAYS[0], DAYS[-1])
    with instance_for_test() as instance:
        with execute_job(reconstructable(_job_from_environment), instance=instance, run_config=run_config,
                         tags=tags, raise_on_error=False) as first:
            assert first.success
        conn.execute(f'UPDATE "{schema}".events SET amount = amount + 1 '
                     "WHERE created_at >= '2024-03-10' AND created_at < '2024-03-11'")
        with execute_job(reconstructable(_job_from_environment), instance=instance, tags=tags,
                         reexecution_options=ReexecutionOptions(parent_run_id=first.run_id),
                         raise_on_error=False) as again:
            success = again.success
            states = _states(instance, again.run_id)
    store = S3Store(s3_client, archive_env, prefix="archive")
    verdicts = {c.day.isoformat(): c.result for c in compare_days(conn, spec, store, DAYS)}
    assert not (success and verdicts["2024-03-10"] != "equal"), (
        f"the re-executed overwrite run succeeded (materialized: {states}) yet the archive of 2024-03-10 "
        f"{verdicts['2024-03-10']} from the source it was asked to archive again: {verdicts}")


def _table(conn, schema, rows=50):
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at date, blob text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s, md5(g::text) FROM generate_series(1, %s) g").format(table),
                 (FIRST, rows))
    return TableSpec(name=f"{schema}.ev", day_column="at", start_date=FIRST, format="csv", compression="none")


def test_a_data_put_whose_answer_is_lost_is_not_called_another_runs_on_a_store_without_md5_etags(
        conn, schema, s3, bucket, s3_client, temp_dir):
    """A user archives a day to a store whose ETags are not MD5s, so the README has them set
    ``verify_etags: false``. The answer to the data object's PUT is lost (the connection resets after the store
    kept the object) and boto3 sends the PUT again, with If-None-Match: *; the store answers 412, because this
    very run's first PUT landed. The run fails with KeyTakenError "written by another run meanwhile" and leaves
    its own whole object behind, named by no manifest. With MD5 ETags the same fault is now recognised as our
    own object (store.py S3Upload, ``store.verify_etags and self._holds_ours``); without them it should be too
    (read it back, as put_bytes's ``holds`` does), and the day archive."""
    spec = _table(conn, schema)
    with FaultProxy(s3.endpoint_url) as proxy:
        store = S3Store(proxy.client(), bucket, verify_etags=False)
        proxy.add(Fault(method="PUT", path=r"\.csv$", action="reset_after", times=1))
        try:
            result = archive_partition(conn, spec, FIRST, store, temp_dir=temp_dir)
        except ArchiveError as exc:
            left = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])]
            pytest.fail(f"{type(exc).__name__}: {exc}; left in the bucket: {left}")
        assert result.rows == 50
    assert deep_verify(conn, S3Store(s3_client, bucket, verify_etags=False), spec, FIRST, temp_dir=temp_dir) == []


def _removed_day(conn, schema, store):
    """``<schema>.rv`` (column mode, retention delete): 20 rows on FIRST, archived, then removed by retention."""
    from archive_pipeline.core.lifecycle import remove_day

    table = sql.Identifier(schema, "rv")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz NOT NULL, v text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s::timestamptz + g * interval '1 min', 'r' || g "
                         "FROM generate_series(1, 20) g").format(table), (f"{FIRST} 00:00+00",))
    spec = TableSpec(name=f"{schema}.rv", day_column="at", start_date="2024-03-01", partitioning={"mode": "column"},
                     retention={"keep_days": 1, "action": "delete"})
    archive_partition(conn, spec, FIRST, store)
    assert remove_day(conn, spec, FIRST, store).rows == 20
    return spec, table


def test_a_removed_day_with_late_rows_is_not_told_there_is_nothing_to_do(conn, schema, store, temp_dir):
    """Retention removed 2024-03-10 after its archive was proven; then a late row of that day arrives in the
    source. The next archive run of the day (the schedule, a backfill) refuses it with DayRemovedError, whose
    message rightly says "to archive the rows there are now as well, set overwrite". But its remedy (the "to
    fix" a person and the Dagster failure read) is DayRemovedError's new default for every case: "nothing to do
    for this day: it is archived ...; leave it out of archive runs and backfills (running it again fails the
    same way)". The late row is in no archive, and a run with overwrite archives it: following the remedy leaves
    it unarchived for good (and the batch failure leaves the day out of its "Then: re-execute ..." advice). The
    remedy of a removed day whose source has rows again must say to archive it with overwrite."""
    spec, table = _removed_day(conn, schema, store)
    conn.execute(sql.SQL("INSERT INTO {} VALUES (100, %s, 'late')").format(table), (f"{FIRST} 05:00+00",))
    with pytest.raises(ArchiveError) as caught:
        archive_partition(conn, spec, FIRST, store, temp_dir=temp_dir)
    error = caught.value
    assert "set overwrite" in error.message  # what the message says to do ...
    assert archive_partition(conn, spec, FIRST, store, temp_dir=temp_dir, overwrite=True).rows == 1  # ... works
    assert "nothing to do" not in (error.remedy or "") and "fails the same way" not in (error.remedy or ""), (
        f"{type(error).__name__}: remedy {error.remedy!r} for: {error.message}")


def test_a_removed_day_whose_archive_is_damaged_is_not_told_its_archive_is_kept(conn, schema, store, s3_client,
                                                                               bucket, temp_dir):
    """Retention removed 2024-03-10 after its archive was proven; later its data object is damaged in the store
    and a late row arrives. The archive run refuses the day (rightly: "its archive is damaged ...; restore the
    archive or its manifest from a backup"), but the error's remedy is DayRemovedError's new default: "nothing to
    do for this day: it is archived, and its archive is kept; leave it out of archive runs". The only copy of the
    removed rows is damaged: the remedy must say to restore it from a backup, not that nothing is to be done."""
    from archive_pipeline.core.keys import table_day_key

    spec, table = _removed_day(conn, schema, store)
    s3_client.put_object(Bucket=bucket, Key=table_day_key(spec, FIRST, store.prefix), Body=b"damaged")
    conn.execute(sql.SQL("INSERT INTO {} VALUES (100, %s, 'late')").format(table), (f"{FIRST} 05:00+00",))
    with pytest.raises(ArchiveError) as caught:
        archive_partition(conn, spec, FIRST, store, temp_dir=temp_dir)
    error = caught.value
    assert "damaged" in error.message
    assert "nothing to do" not in (error.remedy or "") and "archive is kept" not in (error.remedy or ""), (
        f"{type(error).__name__}: remedy {error.remedy!r} for: {error.message}")
