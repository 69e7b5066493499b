"""Hunt 14 (tc): the Dagster side at its edges (sensor, schedule, backfills, checks, metadata, definitions)."""

from __future__ import annotations

import datetime as dt

import pytest
from dagster import AssetCheckKey, instance_for_test

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.assets import asset_key, job_name
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.helpers import run_check_evaluations

DAY = dt.date(2024, 3, 10)
DAYS = [DAY + dt.timedelta(days=i) for i in range(3)]


def _config(schema: str, **table):
    return parse_config({"retry": {"max_retries": 0}, "tables": [{
        "name": f"{schema}.events", "day_column": "created_at", "start_date": DAY.isoformat(), **table}]})


def _execute_check(defs, instance, key, check: str, partition: str | None):
    job = defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_check_selection={AssetCheckKey(key, check)}, asset_selection=set())
    return job.execute_in_process(instance=instance, partition_key=partition, raise_on_error=False)


def test_an_empty_day_archived_again_with_its_late_rows_from_the_cli_checks_intact(conn, schema, archive_env, store):
    """Scenario: 2024-03-10 has no rows when Archive_<schema>_events archives it (state empty, a manifest alone).
    Rows for that day arrive late; the operator archives the day again from the command line
    (``archive-pipeline archive --day 2024-03-10 --overwrite``: the core's archive_partition with overwrite), a
    generation 2 with an object. Then archive_intact is executed for the day (or verify_archives re-checks it).

    Now: the check compares the store with the day's Dagster materialization (empty, no object key), and
    _archived_again only recognises an archive replaced since when the recording named an object: the
    check FAILS, "NOT intact", for a whole, correct archive; the same re-archiving of a day that had rows is
    reported "archived again since this was recorded ... checked as its manifest says" (passed).

    Expected: the check passes, saying the day was archived again since (generation 2) and that archive checked.
    Fix idea: in _archived_again, treat a recording of an empty day (no object_key) as replaced when the manifest
    now names an object of a later generation (compare generations; an empty recording has generation 1)."""
    create_sample_events(conn, [DAYS[1]], rows_per_day=3, schema=schema)  # 2024-03-10: no rows yet
    config = _config(schema)
    spec = config.tables[0]
    defs = build_definitions(config)
    key = asset_key(spec)
    with instance_for_test() as instance:
        result = defs.resolve_job_def(job_name(spec)).execute_in_process(instance=instance,
                                                                         partition_key=DAY.isoformat())
        assert result.success
        [mat] = [e for e in result.get_asset_materialization_events()]
        assert mat.materialization.metadata["state"].value == "empty"
        create_sample_events(conn, [DAY], rows_per_day=4, schema=schema)  # the late rows
        again = archive_partition(conn, spec, spec.period(DAY), store, overwrite=True)
        assert again.rows == 4 and not again.empty
        checked = _execute_check(defs, instance, key, "archive_intact", DAY.isoformat())
        [evaluation] = [e for e in run_check_evaluations(instance, checked.run_id)]
        assert evaluation.passed, evaluation.description


@pytest.mark.parametrize("granularity, periods_in_two_days", [("hourly", 48), ("monthly", 1)])
def test_max_days_per_run_counts_days_for_hourly_and_monthly_tables(granularity, periods_in_two_days):
    """Scenario: ``backfill: {max_days_per_run: 2}`` (README: "A backfill archives up to
    backfill.max_days_per_run days of a table per run"; the setting's own description: "days of one table archived
    by one backfill run") for an hourly table and a monthly one. The README's list of settings that are "not yet per
    granularity" says lookback_days and keep_days stay in days; it says nothing of max_days_per_run being anything
    but days.

    Now: the backfill policy is BackfillPolicy.multi_run(max_partitions_per_run=2), i.e. two PARTITIONS per run: an
    hourly table's year backfill is 4,380 runs of 2 hours each (each a ~2 s process start, the very cost the setting
    exists to spread), and a monthly table's default of 50 puts 50 months (four years of rows) in one run.

    Expected: a ranged run holds about max_days_per_run days of the table's periods: 48 hours, and (two days being
    less than a month) one month. Fix idea: backfill_policy(settings, granularity): hours * 24, months
    max(1, days // 28) (or name the setting in periods and say so in the README)."""
    config = parse_config({"backfill": {"max_days_per_run": 2}, "tables": [{
        "name": "public.events", "day_column": "created_at", "start_date": "2024-01-01",
        "granularity": granularity}]})
    spec = config.tables[0]
    defs = build_definitions(config, resources={"postgres": object(), "archive_store": object()}, check_source=False)
    policy = defs.resolve_assets_def(asset_key(spec)).backfill_policy
    per_run = policy.max_partitions_per_run if policy is not None else 1  # (no policy: one run per period)
    assert per_run == periods_in_two_days, policy


def test_the_sensor_requests_again_a_day_whose_materialization_was_wiped_after_its_sensor_run_succeeded(
        pg, conn, schema, archive_env):
    """Scenario: the archive_new_days sensor requests yesterday of a column-mode table; the run (launched with the
    request's run key, as the daemon does) archives it and succeeds. An operator then wipes the asset's
    materializations (Assets -> the table -> Wipe materializations; per partition only on Dagster+), e.g. after a
    bucket was emptied or replaced, to have automation archive the days again. The day has rows and no materialization: exactly what the README
    says the sensor requests ("days that have data but no materialization").

    Now: the next tick requests nothing: untried() finds a run under the day's run key from this sensor and drops
    the day for good, and the tick says "1 day(s) already have a run (failed, queued or running) under their run
    key and are not requested again" - but that run SUCCEEDED; nothing failed, queued or runs. The day stays
    missing forever, with a false account of why.

    Expected: a day whose sensor run succeeded but that has no materialization now is requested again (under a
    new run key, e.g. suffixed with the count of earlier successful runs), or at least the tick does not call a
    successful run failed/queued/running. Fix idea: in untried(), count as "used" only run keys whose runs are
    unfinished or failed; for a key whose run succeeded, request the day with a run key naming the attempt."""
    from dagster import build_sensor_context

    from archive_pipeline.defs.resources import PostgresResource

    today = dt.datetime.now(dt.UTC).date()
    yesterday = today - dt.timedelta(days=1)
    conn.execute(f"CREATE TABLE {schema}.ev (id int, at timestamptz)")
    conn.execute(f"INSERT INTO {schema}.ev VALUES (1, %s), (2, %s)",
                 (dt.datetime.combine(yesterday, dt.time(1), dt.UTC), dt.datetime.combine(yesterday, dt.time(2), dt.UTC)))
    config = parse_config({"retry": {"max_retries": 0}, "sensor": {"lookback_days": 2}, "tables": [{
        "name": f"{schema}.ev", "day_column": "at", "start_date": (today - dt.timedelta(days=3)).isoformat()}]})
    spec = config.tables[0]
    defs = build_definitions(config)
    repo = defs.get_repository_def()
    sensor = repo.get_sensor_def("archive_new_days")
    with instance_for_test() as instance:
        def tick():
            return sensor.evaluate_tick(build_sensor_context(
                instance=instance, resources={"postgres": PostgresResource(dsn=pg.dsn)}, repository_def=repo))

        [request] = tick().run_requests
        assert request.partition_key == yesterday.isoformat()
        result = defs.resolve_job_def(job_name(spec)).execute_in_process(
            instance=instance, partition_key=request.partition_key,
            tags={**request.tags, "dagster/run_key": request.run_key, "dagster/sensor_name": "archive_new_days"})
        assert result.success
        assert yesterday.isoformat() in instance.get_materialized_partitions(asset_key(spec))
        instance.wipe_assets([asset_key(spec)])  # the UI's Wipe materializations (per partition: Dagster+ only)
        assert yesterday.isoformat() not in instance.get_materialized_partitions(asset_key(spec))
        again = tick()
        said = again.skip_message or ""
        assert [r.partition_key for r in again.run_requests or []] == [yesterday.isoformat()], said
