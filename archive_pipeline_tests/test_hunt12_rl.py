"""Hunt 12 (rl): the Dagster side tells the truth (check partition status, targets, sensors, re-execution)."""

from __future__ import annotations

import pytest

import datetime as dt

from dagster import AssetCheckKey, instance_for_test
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionResolvedStatus

from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.assets import asset_key, daily_partitions, job_name
from archive_pipeline.local.local_stack import create_sample_events

DAY = dt.date(2024, 3, 10)
DAYS = [DAY + dt.timedelta(days=i) for i in range(3)]


def _check_status(instance, spec, check_key: AssetCheckKey, partitions_def=None) -> dict[str, list[str]]:
    """The check's per-partition status as the UI's partition view reads it (Dagster's AssetCheckState)."""
    partitions_def = partitions_def or daily_partitions(spec)
    state = instance.event_log_storage.get_asset_check_state([(check_key, partitions_def)])[check_key]
    return {status.value: sorted(subset.subset_value.get_partition_keys()) for status, subset in state.subsets.items()}


def test_an_archived_day_shows_its_archive_intact_check_succeeded_in_the_partition_status(conn, schema, archive_env):
    """Scenario: 2024-03-10 is archived by a run of Archive_<schema>_events (the schedule's, the sensor's, the UI's
    Materialize), then 2024-03-11..12 by a ranged backfill run. Each run records an archive_intact evaluation that
    passed, for its day.

    Now: the evaluation's target_materialization_data is computed (checks._target) BEFORE the day's
    materialization is logged, so it names no materialization (a first archive) or the previous one (an
    overwrite). Dagster reads a partitioned check's status per day as "current" only when the check targets the
    day's latest materialization (AssetCheckPartitionInfo.is_current); otherwise it clears the day's status. So
    the UI's partition status of archive_intact (Dagster's AssetCheckState, what the asset's check page and its
    partition bar show) has NO day succeeded after archiving: every archived day looks unchecked, as if the
    README's "archive_intact is reported by every successful archive for its day" did not hold. (Executing the
    check alone for a day, whose result Dagster targets itself, does turn it green: shown below as the control.)

    Expected: after the archive runs, 2024-03-10..12 are in the check's SUCCEEDED subset. Fix idea: log the
    materialization first, then build the evaluation with _target (or pass the materialization's storage id: read
    it back with fetch_materializations after log_event), in archive_one_day's both branches."""
    create_sample_events(conn, DAYS, rows_per_day=3, schema=schema)
    config = parse_config({"tables": [{"name": f"{schema}.events", "day_column": "created_at",
                                       "start_date": DAY.isoformat()}]})
    spec = config.tables[0]
    defs = build_definitions(config)
    check = AssetCheckKey(asset_key(spec), "archive_intact")
    with instance_for_test() as instance:
        job = defs.resolve_job_def(job_name(spec))
        assert job.execute_in_process(instance=instance, partition_key=DAYS[0].isoformat()).success
        assert job.execute_in_process(instance=instance, tags={
            "dagster/asset_partition_range_start": DAYS[1].isoformat(),
            "dagster/asset_partition_range_end": DAYS[2].isoformat()}).success
        after_archiving = _check_status(instance, spec, check)
        # the control: the check executed alone for 2024-03-10 (Dagster targets its result) shows green
        alone = defs.resolve_implicit_global_asset_job_def().get_subset(asset_check_selection={check},
                                                                        asset_selection=set())
        assert alone.execute_in_process(instance=instance, partition_key=DAYS[0].isoformat()).success
        assert DAYS[0].isoformat() in _check_status(instance, spec, check)[
            AssetCheckExecutionResolvedStatus.SUCCEEDED.value]
        assert after_archiving[AssetCheckExecutionResolvedStatus.SUCCEEDED.value] == \
            [d.isoformat() for d in DAYS], after_archiving


def test_a_removed_day_shows_its_archive_proven_check_succeeded_in_the_partition_status(conn, schema, archive_env):
    """Scenario: a table with retention (delete); 2024-03-10 is archived, then removed by a run of
    Remove_<schema>_events, which proves the archive equal to the source first and records archive_proven (passed)
    for the day, then the day's source_removed materialization.

    Now: the proof is logged as an AssetCheckEvaluation with no target_materialization_data, and the removal's
    materialization after it. Dagster reads a partitioned check's status as current only when it targets the day's
    latest materialization (AssetCheckPartitionInfo.is_current), so the UI's partition status of archive_proven
    has no day succeeded: the day whose archive was proven before its rows were deleted shows as never proven.

    Expected: 2024-03-10 in archive_proven's SUCCEEDED subset after the removal. Fix idea: log the removal's
    materialization first and the proof with target_materialization_data naming it (checks._target), or give
    the proof the target when it is logged after the materialization."""
    from archive_pipeline.defs.retention_assets import removal_asset_key, removal_job_name

    create_sample_events(conn, [DAY], rows_per_day=5, schema=schema)
    config = parse_config({"retry": {"max_retries": 0}, "tables": [{
        "name": f"{schema}.events", "day_column": "created_at", "start_date": DAY.isoformat(),
        "retention": {"keep_days": 30, "action": "delete"}}]})
    spec = config.tables[0]
    defs = build_definitions(config)
    check = AssetCheckKey(removal_asset_key(spec), "archive_proven")
    with instance_for_test() as instance:
        assert defs.resolve_job_def(job_name(spec)).execute_in_process(
            instance=instance, partition_key=DAY.isoformat()).success
        assert defs.resolve_job_def(removal_job_name(spec)).execute_in_process(
            instance=instance, partition_key=DAY.isoformat()).success
        assert conn.execute(f"SELECT count(*) FROM {schema}.events").fetchone()[0] == 0  # removed indeed
        partitions = defs.resolve_assets_def(removal_asset_key(spec)).partitions_def
        status = _check_status(instance, spec, check, partitions)
        assert status[AssetCheckExecutionResolvedStatus.SUCCEEDED.value] == [DAY.isoformat()], status


def test_a_users_asset_downstream_of_the_archive_runs_in_a_ranged_run_of_its_job(conn, schema, archive_env):
    """Scenario (README "Using it from another Dagster project"): the user merges build_definitions into their
    project and adds ``daily_report``, partitioned like the table, ``deps=[<the archive asset>]`` (it reads the
    archived day from the bucket), and a job selecting both. They launch a backfill of 2024-03-10..12 of that job
    (one ranged run: the archive asset has a backfill policy).

    Now: the three days are archived and each recorded as materialized (logged per day from the asset's code), but
    the archive step yields no output for a range (output_required=False), so Dagster SKIPS daily_report's step:
    "not materialized: upstream output not yielded". The run succeeds and the report is silently missing for the
    three archived days; the README says nothing of downstream assets being skipped (only that a failed blocking
    deep_check keeps them from reading an unproven archive).

    Expected: daily_report is materialized for 2024-03-10..12 in that run (its upstream days were all archived).
    Fix idea: where another step reads the asset's output (output_read_downstream), also yield the step's output
    once the range is done when every day was recorded (a MaterializeResult with no metadata is one more
    materialization per range; an Output without materializing, or yield the last day's result)."""
    import dagster as dg
    from dagster._core.event_api import PartitionKeyFilter

    create_sample_events(conn, DAYS, rows_per_day=3, schema=schema)
    config = parse_config({"tables": [{"name": f"{schema}.events", "day_column": "created_at",
                                       "start_date": DAY.isoformat()}]})
    spec = config.tables[0]
    archive = asset_key(spec)

    @dg.asset(partitions_def=daily_partitions(spec), deps=[archive])
    def daily_report(context) -> None:
        context.log.info(f"report of {context.partition_keys}")

    mine = dg.define_asset_job("archive_and_report", selection=dg.AssetSelection.assets(archive, daily_report.key))
    defs = dg.Definitions.merge(build_definitions(config), dg.Definitions(assets=[daily_report], jobs=[mine]))
    with instance_for_test() as instance:
        result = defs.resolve_job_def("archive_and_report").execute_in_process(instance=instance, tags={
            "dagster/asset_partition_range_start": DAYS[0].isoformat(),
            "dagster/asset_partition_range_end": DAYS[-1].isoformat()})
        assert result.success
        assert sorted(instance.get_materialized_partitions(archive)) == [d.isoformat() for d in DAYS]
        assert sorted(instance.get_materialized_partitions(daily_report.key)) == [d.isoformat() for d in DAYS]
        # each day recorded once, with its own metadata (handed to the step's output), and checked about that record
        from archive_pipeline_tests.helpers import run_materializations

        days = [m for m in run_materializations(instance, result.run_id) if m.asset_key == archive]
        assert sorted(m.partition for m in days) == [d.isoformat() for d in DAYS], days
        assert all(m.metadata["state"].value == "archived" and m.metadata["dagster/row_count"].value == 3
                   for m in days), days
        assert len({m.metadata["object_key"].value for m in days}) == 3, days
        intact = dg.AssetCheckKey(archive, "archive_intact")
        for day in DAYS:
            latest = instance.fetch_materializations(dg.AssetRecordsFilter(
                asset_key=archive, asset_partitions=[day.isoformat()]), limit=1).records[0]
            check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
                [intact], partition_filter=PartitionKeyFilter(key=day.isoformat()))[intact]
            assert check.evaluation.passed and (check.evaluation.target_materialization_data.storage_id
                                                == latest.storage_id), (day, check.evaluation)


def test_a_ranged_run_with_a_downstream_asset_records_each_archived_day_when_another_day_fails(conn, schema,
                                                                                                archive_env, pg):
    """The same job as above (the archive and the user's ``daily_report`` downstream of it), 2024-03-10..12 in one
    ranged run, retries off; another session holds 2024-03-11's table-day lock. Where another step reads the
    archive's output, a range's days are handed to that output; the run fails instead, so no output is yielded:
    the two archived days must still be recorded (each with its own metadata and check), 2024-03-11 failed, and
    the report not run (its upstream range was not archived whole)."""
    import dagster as dg
    from dagster import AssetPartitionStatus

    from archive_pipeline.core.locks import lock_key

    create_sample_events(conn, DAYS, rows_per_day=3, schema=schema)
    config = parse_config({"retry": {"max_retries": 0}, "tables": [
        {"name": f"{schema}.events", "day_column": "created_at", "start_date": DAY.isoformat()}]})
    spec = config.tables[0]
    archive = asset_key(spec)

    @dg.asset(partitions_def=daily_partitions(spec), deps=[archive])
    def daily_report(context) -> None:
        context.log.info(f"report of {context.partition_keys}")

    mine = dg.define_asset_job("archive_and_report", selection=dg.AssetSelection.assets(archive, daily_report.key))
    defs = dg.Definitions.merge(build_definitions(config), dg.Definitions(assets=[daily_report], jobs=[mine]))
    with pg.connect() as other, instance_for_test() as instance:
        assert other.execute("SELECT pg_try_advisory_lock(%s)", lock_key(spec.name, DAYS[1])).fetchone()[0]
        result = defs.resolve_job_def("archive_and_report").execute_in_process(instance=instance, tags={
            "dagster/asset_partition_range_start": DAYS[0].isoformat(),
            "dagster/asset_partition_range_end": DAYS[-1].isoformat()}, raise_on_error=False)
        assert not result.success
        status = {day: found.value if found else None for day, found in instance.get_status_by_partition(
            archive, [d.isoformat() for d in DAYS], daily_partitions(spec)).items()}
        assert status == {DAYS[0].isoformat(): AssetPartitionStatus.MATERIALIZED.value,
                          DAYS[1].isoformat(): AssetPartitionStatus.FAILED.value,
                          DAYS[2].isoformat(): AssetPartitionStatus.MATERIALIZED.value}, status
        from archive_pipeline_tests.helpers import run_check_evaluations, run_materializations

        days = [m for m in run_materializations(instance, result.run_id) if m.asset_key == archive]
        assert sorted(m.partition for m in days) == [DAYS[0].isoformat(), DAYS[2].isoformat()], days
        assert all(m.metadata["state"].value == "archived" and m.metadata["dagster/row_count"].value == 3
                   for m in days), days
        checked = [e for e in run_check_evaluations(instance, result.run_id) if e.asset_key == archive]
        assert sorted(e.partition for e in checked if e.passed) == [DAYS[0].isoformat(), DAYS[2].isoformat()]
        assert not instance.get_materialized_partitions(daily_report.key)


def test_a_skipped_days_column_schema_is_the_archives_not_the_tables_now(conn, schema, archive_env, s3_client):
    """Scenario: 2024-03-10 is archived (user_id integer NOT NULL, event_type text NOT NULL). A migration then runs
    ``ALTER COLUMN user_id TYPE bigint`` and ``ALTER COLUMN event_type DROP NOT NULL``; every row prints the same,
    so the day's content fingerprint is unchanged, and a second run of the day (the sensor's, a backfill's)
    finds the archive identical and records ``state: skipped`` ("already archived, nothing uploaded").

    Now: that materialization's ``dagster/column_schema`` (the Columns tab of the day's latest materialization) is
    built from the table as it is now (ArchiveResult.columns = the source's columns): user_id ``bigint``,
    event_type nullable. The archive in the bucket holds what its manifest records (integer, NOT NULL), and a
    restore creates those types: the UI's latest record of the day describes an archive that does not exist.

    Expected: a skipped day's column schema is the archive's (its manifest's column types and nullability), as
    the rest of its metadata (rows, bytes, MD5, snapshot_at, server version) already is. Fix idea: in
    ArchiveResult for a skip (_Archiving._skipped), build columns from manifest["columns"] (type, not_null)."""
    import json

    from archive_pipeline_tests.helpers import download, run_materializations

    create_sample_events(conn, [DAY], rows_per_day=3, schema=schema)
    config = parse_config({"tables": [{"name": f"{schema}.events", "day_column": "created_at",
                                       "start_date": DAY.isoformat()}]})
    spec = config.tables[0]
    defs = build_definitions(config)
    with instance_for_test() as instance:
        job = defs.resolve_job_def(job_name(spec))
        first = job.execute_in_process(instance=instance, partition_key=DAY.isoformat())
        [archived] = run_materializations(instance, first.run_id)
        conn.execute(f"ALTER TABLE {schema}.events ALTER COLUMN user_id TYPE bigint")
        conn.execute(f"ALTER TABLE {schema}.events ALTER COLUMN event_type DROP NOT NULL")
        again = job.execute_in_process(instance=instance, partition_key=DAY.isoformat())
        assert again.success
        [skipped] = run_materializations(instance, again.run_id)
        assert skipped.metadata["state"].value == "skipped"
        manifest = json.loads(download(s3_client, archive_env, skipped.metadata["manifest_key"].value))
        recorded = {c["name"]: c for c in manifest["columns"]}
        then = {c.name: (c.type, c.constraints.nullable) for c in archived.metadata["dagster/column_schema"].value.columns}
        now = {c.name: (c.type, c.constraints.nullable) for c in skipped.metadata["dagster/column_schema"].value.columns}
        assert now["user_id"] == then["user_id"], (now["user_id"], then["user_id"], recorded["user_id"])
        assert now["event_type"] == then["event_type"], (now["event_type"], then["event_type"], recorded["event_type"])
