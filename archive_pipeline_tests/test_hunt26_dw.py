"""Hunt 26 (dw): the Dagster side under failure: runs terminated from the UI, step retries, re-executions, and what
the run, its checks and its records say afterwards."""

from __future__ import annotations

import datetime as dt
import re
import tempfile

import pytest
from dagster import AssetCheckKey, AssetRecordsFilter, DagsterEventType, DagsterRunStatus, instance_for_test

from archive_pipeline.core.archive import render_key
from archive_pipeline.core.config import parse_config
from archive_pipeline.core.keys import manifest_key
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.assets import asset_key, job_name
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.helpers import download
from archive_pipeline_tests.test_cancelhunt import (DAY, dagster_env, proxy,  # noqa: F401 - fixtures
                                                    terminated_when_held, wide_day)


@pytest.mark.parametrize("held", [0, 1], ids=["its-download", "its-proof"])
def test_an_overwrite_terminated_while_its_new_archive_is_proven_does_not_say_nothing_was_published(
        held, conn, schema, pg, bucket, proxy, s3_client, dagster_env, monkeypatch):
    """Scenario: ``<schema>.ev`` (deep_check: true, overwrite: true, as the README offers for a table whose days keep
    changing) has 2024-03-10 archived by a run (generation 1, proven, green). A later run of the day archives it
    again: the new generation 2 is published (``…2024-03-10.g2.jsonl``, the manifest now names it, generation 1's
    object is deleted), and the run goes on to prove it (it downloads the object: ``its-download``; then loads it
    back into PostgreSQL, the long part of a big day: ``its-proof``). The person clicks Terminate meanwhile.

    Now: the step fails with "cancelled while archiving: ... nothing of the day was published (an earlier archive of
    it stays as it was)" (its-download) or "cancelled while proving: ... nothing was changed" (its-proof), while the
    bucket holds only the new generation: the earlier archive does not stay as it was, it is gone. Dagster's record
    of the day still names generation 1's object (deleted) with its green archive_intact, and the new archive is
    recorded nowhere. ``assets.archive_one_day`` lets an interrupt that lands after ``archive_partition`` returned
    (in ``verify_result``: ``verify_archive``'s download, ``verify.deep_verify_of``, which notes it "proving") reach
    ``_archive_days``'s ``except (DagsterExecutionInterruptedError, KeyboardInterrupt)``, which words it with
    CANCELLED_LEAVES["archiving"] (or the core's "proving"), both written for a cut-off before anything was
    published; ``log_guarded`` ("recording") covers only the moment the materialization is stored.

    Should: a termination after the day's new archive is published says so (the day is archived in the bucket, not
    recorded or proven; a run of the day finds it identical and records and proves it), never that nothing was
    published or changed. Fix idea: in ``archive_one_day``, catch the interrupt around the verification (and the
    summary's log line) once ``archive_partition`` returned, and re-note it with a CANCELLED_LEAVES entry of its own
    (e.g. "proving the new archive"), or record the day "not verified: cancelled" first, as ``unverified`` does."""
    wide_day(conn, schema, rows=20, width=64)
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": DAY.isoformat(), "format": "jsonl",
             "compression": "none", "deep_check": True}
    config = parse_config({"retry": {"max_retries": 2, "delay_seconds": 0}, "tables": [table]})
    spec = config.tables[0]
    key = render_key(spec, DAY, "archive")
    with instance_for_test() as instance:
        monkeypatch.setattr(tempfile, "tempdir", str(dagster_env))  # (the archive's temp files, as test_cancelhunt)
        job = build_definitions(config).resolve_job_def(f"Archive_{schema}_ev")
        assert job.execute_in_process(partition_key=DAY.isoformat(), instance=instance).success
        again = build_definitions(parse_config({"retry": {"max_retries": 2, "delay_seconds": 0},
                                                "tables": [{**table, "overwrite": True}]}))
        status, failures = terminated_when_held(instance, again.resolve_job_def(f"Archive_{schema}_ev"), proxy,
                                                method="GET", path=r"\.jsonl$", skip=held)
        [record] = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=asset_key(spec), asset_partitions=[DAY.isoformat()]), limit=1).records
        # then verify_archives: the deep_check day is red as never proven, not as "archived outside Dagster"
        checked = again.resolve_job_def("verify_archives").execute_in_process(instance=instance, raise_on_error=False)
        [intact] = [e.dagster_event.asset_check_evaluation_data for e in instance.all_logs(checked.run_id)
                    if e.dagster_event and e.dagster_event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION
                    and e.dagster_event.asset_check_evaluation_data.check_name == "archive_intact"]
    assert not intact.passed and "never proven" in intact.description, intact.description
    assert "outside Dagster" not in intact.description, intact.description
    stored = sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", []))
    recorded = record.asset_materialization.metadata["object_key"].value
    assert status == DagsterRunStatus.CANCELED, failures
    assert '"generation": 2' in download(s3_client, bucket, manifest_key(key)).decode()  # published: the fact
    # (was the premise ``recorded not in stored``: the record naming generation 1's deleted object is the bug itself;
    # the day is recorded as it is in the bucket, its new archive not verified)
    assert recorded in stored, (recorded, stored)
    assert record.asset_materialization.metadata["verified"].value.startswith("not verified"), \
        record.asset_materialization.metadata["verified"]
    [said] = failures
    assert "nothing of the day was published" not in said and "stays as it was" not in said \
        and "nothing was changed" not in said, (
        f"the terminated run says the day was left untouched, but its new archive (generation 2) replaced the "
        f"recorded one ({recorded}, now gone; the bucket holds {stored}):\n{said}")


def test_archive_intact_of_a_range_terminated_from_the_ui_stops_checking(conn, schema, pg, bucket, proxy, s3_client,
                                                                         dagster_env, monkeypatch):
    """Scenario: 2024-03-10..13 of ``<schema>.events`` are archived. The person launches ``archive_intact`` alone for
    the four days (the asset's Checks tab → Execute for a partition range; with ``deep: true`` each day is a whole
    download of its object) and clicks Terminate while 2024-03-11 is being checked.

    Now: the step goes on and checks 2024-03-12 and 2024-03-13 after the termination, records their verdicts, and
    only then fails with "1 of 4 days could not be checked (2024-03-11); the others were." over the cancellation.
    ``checks._build_intact_check``'s loop catches every ``Failure`` of ``_day_result`` as a day that "could not be
    checked" and continues; ``_recheck`` has already turned the interrupt into one (``terminated``: "cancelled while
    checking", metadata error "cancelled"), so the termination is taken for one day's refused request. A range of a
    year with ``deep: true`` downloads every remaining object after Terminate (the UI's Terminate interrupts the run
    worker once; it does not kill it), where the archive step's range and source_unchanged stop at once.

    Should: a terminated range check stops at the day it was cut off, records no verdict after the termination, and
    says which days it left unchecked. Fix idea: in the loop, re-raise a Failure that is a cancellation
    (``metadata["error"] == "cancelled"``, or catch the interrupt before ``_recheck`` words it), naming the days not
    checked, as ``assets.cancelled_batch`` does for an archive range."""
    days = [DAY + dt.timedelta(days=i) for i in range(4)]
    ranged = {"dagster/asset_partition_range_start": days[0].isoformat(),
              "dagster/asset_partition_range_end": days[-1].isoformat()}
    create_sample_events(conn, days, rows_per_day=5, schema=schema)
    config = parse_config({"retry": {"max_retries": 2, "delay_seconds": 0}, "backfill": {"max_days_per_run": 10},
                           "tables": [{"name": f"{schema}.events", "day_column": "created_at",
                                       "start_date": DAY.isoformat()}]})
    spec = config.tables[0]
    defs = build_definitions(config)
    check = AssetCheckKey(asset_key(spec), "archive_intact")
    with instance_for_test() as instance:
        monkeypatch.setattr(tempfile, "tempdir", str(dagster_env))
        assert defs.resolve_job_def(job_name(spec)).execute_in_process(instance=instance, tags=ranged).success
        alone = defs.resolve_implicit_global_asset_job_def().get_subset(asset_check_selection={check},
                                                                        asset_selection=set())
        cut_off = render_key(spec, days[1], "archive")
        status, failures = terminated_when_held(instance, alone, proxy, None, tags=ranged, method="HEAD",
                                                path=re.escape(cut_off) + "$")
        [run] = [r for r in instance.get_runs() if r.job_name == alone.name]
        checked = sorted(r.event_log_entry.dagster_event.asset_check_evaluation_data.partition
                         for r in instance.get_records_for_run(
                             run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION).records)
    assert status == DagsterRunStatus.CANCELED, failures
    assert days[1].isoformat() not in checked  # the day cut off: right
    assert checked == [days[0].isoformat()], (
        f"the range check went on after it was terminated on {days[1]} and checked {checked}; its failure:\n"
        f"{failures}")
