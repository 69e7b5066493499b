"""Hunt 15 (ug): what Dagster records after faults (materializations, their metadata, check evaluations, partition
status) for the days whose archive is, or is not, exactly the day's rows."""

from __future__ import annotations

import datetime as dt
import types

import dagster as dg
from dagster import AssetCheckKey, AssetRecordsFilter, instance_for_test
from dagster._core.event_api import PartitionKeyFilter

from archive_pipeline.core.config import parse_config
from archive_pipeline.core.locks import lock_key
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs import assets as assets_module
from archive_pipeline.defs.assets import asset_key, daily_partitions
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.helpers import run_check_evaluations, run_materializations

DAY = dt.date(2024, 3, 10)
DAYS = [DAY + dt.timedelta(days=i) for i in range(3)]
RANGE = {"dagster/asset_partition_range_start": DAYS[0].isoformat(),
         "dagster/asset_partition_range_end": DAYS[-1].isoformat()}


def _latest_and_check(instance, key, day):
    latest = instance.fetch_materializations(AssetRecordsFilter(asset_key=key, asset_partitions=[day]),
                                             limit=1).records[0]
    intact = AssetCheckKey(key, "archive_intact")
    check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [intact], partition_filter=PartitionKeyFilter(key=day)).get(intact)
    return latest, check


def _with_report(config, spec, **build):
    """The README's "Using it from another Dagster project": the user's ``daily_report`` reads the archive (deps),
    in their job ``archive_and_report`` (no checks): the archive's ranged run hands its output to that step."""
    archive = asset_key(spec)

    @dg.asset(partitions_def=daily_partitions(spec), deps=[archive])
    def daily_report(context) -> None:
        context.log.info(f"report of {context.partition_keys}")

    mine = dg.define_asset_job("archive_and_report",
                               selection=dg.AssetSelection.assets(archive, daily_report.key).without_checks())
    return dg.Definitions.merge(build_definitions(config, **build),
                                dg.Definitions(assets=[daily_report], jobs=[mine])), daily_report.key


def test_a_deferred_range_retried_after_a_failed_day_leaves_each_days_latest_record_checked(
        pg, conn, schema, archive_env, monkeypatch):
    """Scenario (README "Using it from another Dagster project"): the user's job ``archive_and_report`` selects the
    archive asset and their ``daily_report`` (``deps=[archive]``), without checks; a ranged run of 2024-03-10..12
    (retry: max_retries 1). 2024-03-11 fails retryably the first time (another session holds its table-day lock,
    released during the retry's backoff); the two other days are archived and, the run failing, recorded one by one
    with their archive_intact. The step's retry archives 2024-03-11 and yields the range's output.

    Now: that output materializes all three days again (the asset re-adds 2024-03-10's and 2024-03-12's metadata),
    but archive_intact is recorded only for 2024-03-11: the latest materializations of 2024-03-10 and 2024-03-12
    have no check result about them (their verdicts target the first attempt's records, which are no longer the
    latest, so the UI shows the days' check as not evaluated), and they lose their ``archive/state`` tag although
    every day of the range is ``archived`` (README: the tag is there "where they all have the same state").

    Expected: every day's latest materialization has an archive_intact verdict targeting it (and its state tag).
    Fix idea: in DayRecords.output, after the MaterializeResult yield verdict_carried(context, key, day) for each
    ``earlier`` day (its last verdict about its newest record) and take their state tags into account."""
    create_sample_events(conn, DAYS, rows_per_day=3, schema=schema)
    config = parse_config({"retry": {"max_retries": 1, "delay_seconds": 1}, "tables": [
        {"name": f"{schema}.events", "day_column": "created_at", "start_date": DAY.isoformat()}]})
    spec = config.tables[0]
    archive = asset_key(spec)
    defs, report = _with_report(config, spec)
    other = pg.connect()
    assert other.execute("SELECT pg_try_advisory_lock(%s)", lock_key(spec.name, DAYS[1])).fetchone()[0]
    # the retry's backoff, waited inside the step (after_retry_wait): the other session lets the day go meanwhile
    monkeypatch.setattr(assets_module, "time", types.SimpleNamespace(sleep=lambda seconds: other.close()))
    with instance_for_test() as instance:
        result = defs.resolve_job_def("archive_and_report").execute_in_process(
            instance=instance, tags=RANGE, raise_on_error=False)
        assert result.success
        assert other.closed  # the retry happened
        assert sorted(instance.get_materialized_partitions(report)) == [d.isoformat() for d in DAYS]
        unchecked, untagged = [], []
        for day in DAYS:
            latest, check = _latest_and_check(instance, archive, day.isoformat())
            target = check.evaluation.target_materialization_data if check and check.evaluation else None
            if target is None or target.storage_id != latest.storage_id or not check.evaluation.passed:
                unchecked.append(day.isoformat())
            if latest.asset_materialization.tags.get("archive/state") != "archived":
                untagged.append(day.isoformat())
        assert (unchecked, untagged) == ([], []), (
            "days whose latest materialization has no archive_intact verdict about it / no archive/state tag")


def _execute_check(defs, instance, key, check: str, partition: str | None = None):
    job = defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_check_selection={AssetCheckKey(key, check)}, asset_selection=set())
    return job.execute_in_process(instance=instance, partition_key=partition, raise_on_error=False)


def test_a_day_let_go_from_the_command_line_recorded_by_a_ranged_run_is_not_called_never_proven(
        conn, schema, archive_env, store):
    """Scenario: ``events`` has ``deep_check: true`` and retention (delete). 2024-03-12 is archived and let go from
    the command line (``archive`` then ``prune``: archive_partition and remove_day, which proves the archive against
    the source before deleting anything); Dagster has no record of it. A backfill of 2024-03-10..12 of
    Archive_<schema>_events then runs (one ranged run): the two other days are archived and proven, and the removed
    day is recorded again as materialized with state ``removed`` from its manifest (record_removed), as the README
    says. Then verify_archives' ``latest_archive_intact`` (or *Execute* on archive_intact for the day) re-checks it.

    Now: the record built from the manifest has no ``verified`` entry, so the check reads it as a deep_check day whose
    content was never proven and fails it, red: "NOT intact: its content was never proven against the source
    (archived before deep_check was set: no proof recorded) ... archive it again (overwrite: true ...), which proves
    it". Every word is false: the archive was proven by its removal, deep_check was set, and archiving the day again
    has nothing to archive (its rows are gone from the source; the archive is the only copy).

    Expected: the day's archive_intact passes (its object checks out as its manifest records; a removal mark is the
    proof that ran). Fix idea: _manifest_metadata should record a ``verified`` saying the removal proved it
    (e.g. "content proven before removal ...") when the manifest has a removal mark, or _recheck should accept a
    removed day's record as proven."""
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline.defs.assets import job_name

    create_sample_events(conn, DAYS, rows_per_day=3, schema=schema)
    config = parse_config({"retry": {"max_retries": 0}, "backfill": {"max_days_per_run": 10}, "tables": [{
        "name": f"{schema}.events", "day_column": "created_at", "start_date": DAY.isoformat(), "deep_check": True,
        "retention": {"keep_days": 30, "action": "delete"}}]})
    spec = config.tables[0]
    removed = spec.period(DAYS[-1])
    archive_partition(conn, spec, removed, store)
    assert remove_day(conn, spec, removed, store).rows == 3  # proven, then deleted (the command line's prune)
    defs = build_definitions(config)
    key = asset_key(spec)
    with instance_for_test() as instance:
        assert defs.resolve_job_def(job_name(spec)).execute_in_process(instance=instance, tags=RANGE).success
        [record] = [m for m in instance.fetch_materializations(
            AssetRecordsFilter(asset_key=key, asset_partitions=[removed.key]), limit=1).records]
        assert record.asset_materialization.metadata["state"].value == "removed"  # (the premise)
        verdicts = {}
        for check, partition in (("archive_intact", removed.key), ("latest_archive_intact", None)):
            run = _execute_check(defs, instance, key, check, partition)
            verdicts[check] = [(e.passed, e.description) for e in run_check_evaluations(instance, run.run_id)
                               if e.check_name == check]
    assert all(passed for found in verdicts.values() for passed, _ in found) and all(verdicts.values()), verdicts


def test_a_deferred_range_does_not_materialize_a_naming_mode_day_whose_table_is_gone(conn, schema, archive_env):
    """Scenario: a legacy one-table-per-day table (naming mode, ``events_%Y%m%d``); the user's job
    ``archive_and_report`` selects the archive asset and their ``daily_report`` (``deps=[archive]``), so the archive's
    ranged run hands its output to that step (README "Using it from another Dagster project"). A backfill of
    2024-03-10..12 is planned; the day table of 2024-03-11 is dropped before the run reads it (or never existed).

    Now: 2024-03-11 fails with "no table for 2024-03-11 ... nothing to archive", which a ranged run treats like a
    removed day (nothing to do); record_removed finds no manifest and records nothing, the day is not counted as
    failed, and the step yields the range's output: Dagster materializes ALL three partitions. 2024-03-11 shows
    MATERIALIZED (green) with no metadata at all, while the bucket holds nothing for it (no object, no manifest), no
    archive_intact is recorded about it, and daily_report runs for it too. (The same run without a downstream step
    leaves the day unmaterialized.)

    Expected: a day nothing was archived or recorded for is not materialized: the output is not yielded for the range
    (or the step fails / the day is left out), so 2024-03-11 is not shown as archived. Fix idea: in
    _archive_days, a NOTHING_TO_DO day that record_removed did not record must keep the deferred output from being
    yielded (flush the records one by one and skip the output, as a failed day does)."""
    from archive_pipeline.core.keys import manifest_key
    from archive_pipeline.core.keys import table_day_key

    for day in (DAYS[0], DAYS[2]):
        conn.execute(f"CREATE TABLE {schema}.events_{day:%Y%m%d} (id int, created_at timestamptz)")
        conn.execute(f"INSERT INTO {schema}.events_{day:%Y%m%d} VALUES (1, %s), (2, %s)",
                     (dt.datetime.combine(day, dt.time(1), dt.UTC), dt.datetime.combine(day, dt.time(2), dt.UTC)))
    config = parse_config({"retry": {"max_retries": 0}, "tables": [{
        "name": f"{schema}.events", "start_date": DAY.isoformat(),
        "partitioning": {"mode": "naming", "pattern": "events_%Y%m%d"}}]})
    spec = config.tables[0]
    archive = asset_key(spec)
    defs, _ = _with_report(config, spec, check_source=False)
    gone = DAYS[1].isoformat()
    with instance_for_test() as instance:
        result = defs.resolve_job_def("archive_and_report").execute_in_process(
            instance=instance, tags=RANGE, raise_on_error=False)
        materialized = sorted(instance.get_materialized_partitions(archive))
        records = {m.partition: m for m in run_materializations(instance, result.run_id) if m.asset_key == archive}
    store_key = manifest_key(table_day_key(spec, spec.period(DAYS[1]), "archive"))
    assert gone not in materialized, (
        f"{gone} shows materialized (metadata {dict(records[gone].metadata) if gone in records else None}) though "
        f"nothing was archived for it (no {store_key}); materialized: {materialized}, run success {result.success}")
