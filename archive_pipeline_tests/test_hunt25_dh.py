"""Hunt 25 (dh): a review of this session's Dagster-side changes: SensorTarget.archived_by and the prefix run tag,
outside._started and _written_after, the removal asset's and source_unchanged's uncomputable fingerprints,
definitions._with_source_limits and _where_runs_read, the sensor's connect message."""

from __future__ import annotations

import datetime as dt

from dagster import instance_for_test

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.assets import job_name
from archive_pipeline_tests.test_hunt16_vm import YESTERDAY, _config, _recorded, _sensor_run_failed, _table, _tick
from archive_pipeline_tests.test_hunt25_cq import remedy_followed_then_a_late_row


def test_the_sensor_records_a_changed_day_whose_later_ranged_backfill_run_refused_it(pg, conn, schema, archive_env,
                                                                                     store, temp_dir):
    """Scenario: the sensor's run of ``t``'s yesterday failed; the operator follows the tick's remedy and archives the
    day with the command line; a late row then lands in that day; the operator then backfills the table's last days
    from the UI. The archive asset's backfill policy (multi_run, 50 days a run by default) runs them as one ranged
    run (tags dagster/asset_partition_range_start/_end, no dagster/partition), which rightly refuses yesterday
    ("changed since archived": an overwrite is needed).

    Now: the next tick records the day materialized from the command line's manifest (a green partition for an
    archive that lacks the late row, over the failure that said "overwrite needed"): outside._started, rewritten to
    find a day's runs "whatever job ran them", still queries RunsFilter(tags={"dagster/partition": days}), which a
    ranged run does not carry, so the run that refused the archive is unseen and _written_after compares the archive
    with the sensor's older failed run only.

    Should: the day stays listed as failed. Fix idea: _started also counts runs whose range tags cover the day (as
    sensors.days_in_flight reads them with _range_keys), e.g. a second query by the table's job names / asset
    selection over the read days' window, still one query a tick."""
    _table(conn, schema)
    config = _config(schema)
    t = config.tables[0]
    defs = build_definitions(config)
    with instance_for_test() as instance:
        remedy_followed_then_a_late_row(conn, instance, schema, t, store, temp_dir)
        run = defs.resolve_job_def(job_name(t)).execute_in_process(
            instance=instance, raise_on_error=False,
            tags={"dagster/asset_partition_range_start": (YESTERDAY - dt.timedelta(days=1)).isoformat(),
                  "dagster/asset_partition_range_end": YESTERDAY.isoformat()})
        assert not run.success and "overwrite" in str(run.all_events), "the ranged run refuses the changed day"
        result = _tick(defs, instance, pg)
    assert _recorded(result) == [], [e.description for e in result.asset_events]


def test_a_dry_run_removal_of_the_day_keeps_the_command_lines_archive_unrecorded_for_good(pg, conn, schema,
                                                                                         archive_env, store, temp_dir):
    """Scenario: a table with retention (keep_days 1, delete). The sensor's run of ``t``'s yesterday failed; the
    operator follows the tick's remedy and archives the day with the command line, then runs the day's removal job
    ``Remove_<table>`` with ``dry_run: true`` (README: prove the archive, say what would be removed, remove nothing)
    to see what retention will do. Nothing in the source or the archive changes.

    Now: the next tick does not record the day, and no later tick ever will: outside._started takes the latest run of
    the day that SensorTarget.archived_by calls the table's archive run, and the Remove_* job's runs carry
    ``archive/table`` (retention_assets.build_retention_schedule) but no asset selection and no prefix tag, so
    archived_by (untagged=True: "launched before the jobs carried the tag") counts the dry run as an archive run
    that refused the command line's archive; _written_after is then False on every tick, and the partition stays
    missing (listed failed, its remedy already followed) over an intact archive. The same match makes an unfinished
    Remove_* run of a day count as that day's archive run in flight (days_in_flight: schedules and sensor skip it).

    Should: a run that does not materialize the archive asset (a removal job's: its job name is neither the table's
    archive job nor the shared one) is not an archive run of the day. Fix idea: archived_by checks the job name
    (own, shared, __ASSET_JOB with the key in its selection) before the table tag, or the removal job carries a tag
    of its own kind."""
    from archive_pipeline.defs.retention_assets import removal_asset_key, removal_job_name

    _table(conn, schema)
    config = _config(schema, retention={"keep_days": 1, "action": "delete"})
    t = config.tables[0]
    defs = build_definitions(config)
    with instance_for_test() as instance:
        _sensor_run_failed(instance, t, YESTERDAY.isoformat())
        archive_partition(conn, t, YESTERDAY, store, temp_dir=temp_dir)  # the tick's remedy, followed
        run = defs.resolve_job_def(removal_job_name(t)).execute_in_process(
            instance=instance, partition_key=YESTERDAY.isoformat(), raise_on_error=False,
            run_config={"ops": {removal_asset_key(t).to_python_identifier(): {"config": {"dry_run": True}}}})
        assert conn.execute(f'SELECT count(*) FROM "{schema}".t').fetchone()[0] == 2, "a dry run removes nothing"
        result = _tick(defs, instance, pg)
    assert _recorded(result) == [YESTERDAY.isoformat()], (run.success, [e.description for e in result.asset_events])
