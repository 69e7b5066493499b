"""Hunt 16 (vi): the Dagster operations side at its edges: the daily schedule, the new-days sensor, backfill
batching, partitions per table (granularity, zones, start_date) and the retention schedule."""

from __future__ import annotations

import datetime as dt
import uuid

from dagster import (DagsterEventType, DagsterRun, DagsterRunStatus, build_schedule_context, build_sensor_context,
                     instance_for_test)

from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.assets import job_name
from archive_pipeline.defs.resources import PostgresResource
from archive_pipeline.defs.retention_assets import removal_job_name
from archive_pipeline.local.local_stack import create_sample_events

FIRST = dt.date(2024, 3, 10)
DAYS = [FIRST + dt.timedelta(days=i) for i in range(3)]
RANGE = {"dagster/asset_partition_range_start": DAYS[0].isoformat(),
         "dagster/asset_partition_range_end": DAYS[-1].isoformat()}


def _failure(result) -> str:
    return "\n".join(str(e.event_specific_data.error.message) for e in result.all_events
                     if e.event_type == DagsterEventType.STEP_FAILURE)


def _removal_tick(defs, spec, instance, when: dt.datetime) -> list[str]:
    repo = defs.get_repository_def()
    schedule = repo.get_schedule_def(f"remove_{'_'.join(spec.asset_path)}_daily")
    tick = schedule.evaluate_tick(build_schedule_context(instance=instance, scheduled_execution_time=when,
                                                         repository_def=repo))
    return [r.partition_key for r in tick.run_requests or []]


def test_a_removed_day_met_by_a_ranged_run_is_not_requested_for_removal_again(conn, schema, archive_env):
    """Scenario: a table with ``retention: {keep_days: 30, action: delete}`` and ``backfill.max_days_per_run: 10``;
    2024-03-10..12 archived by one ranged run, 2024-03-11 removed by its removal run (the retention schedule's
    request). Later the range is backfilled again (a UI backfill over the table's history, which the README says is
    fine: a removed day "is logged as nothing to do ... and recorded again as materialized with state `removed`").

    Now: that `removed` materialization is newer than the day's `source_removed` one, so the retention schedule
    (``remove_<schema>_events_daily``) takes it for "a day archived again after its removal" and requests 2024-03-11
    once more on its next tick: a run that downloads and proves the whole archive again for a day the source no
    longer holds. Every backfill over removed history re-requests all of those days (50 a tick, each a full download).
    README: the schedule "requests up to 50 due days that are archived and still in the source"; a day is due again
    only once "archived again after its removal (late rows archived with overwrite)".

    Should: a day whose latest archive materialization has state `removed` (it repeats the removed archive) is not
    requested; only a real new archive of the day (state archived/skipped/empty after the removal) makes it due again.
    Fix idea: in build_retention_schedule, read the latest materialization's `archive/state` tag (or metadata `state`)
    and treat `removed` as not newer than the removal."""
    create_sample_events(conn, DAYS, rows_per_day=5, schema=schema)
    config = parse_config({"retry": {"max_retries": 0}, "backfill": {"max_days_per_run": 10}, "tables": [{
        "name": f"{schema}.events", "day_column": "created_at", "start_date": FIRST.isoformat(),
        "retention": {"keep_days": 30, "action": "delete"}}]})
    spec = config.tables[0]
    defs = build_definitions(config)
    removed = DAYS[1].isoformat()
    when = dt.datetime(2024, 6, 1, 1, 30, tzinfo=dt.UTC)
    with instance_for_test() as instance:
        assert defs.resolve_job_def(job_name(spec)).execute_in_process(instance=instance, tags=RANGE).success
        assert removed in _removal_tick(defs, spec, instance, when)
        done = defs.resolve_job_def(removal_job_name(spec)).execute_in_process(
            instance=instance, partition_key=removed, raise_on_error=False)
        assert done.success, _failure(done)
        assert removed not in _removal_tick(defs, spec, instance, when + dt.timedelta(days=1))
        again = defs.resolve_job_def(job_name(spec)).execute_in_process(instance=instance, tags=RANGE)
        assert again.success
        assert conn.execute(f'SELECT count(*) FROM "{schema}".events WHERE created_at::date = %s',
                            (DAYS[1],)).fetchone()[0] == 0
        assert removed not in _removal_tick(defs, spec, instance, when + dt.timedelta(days=2))


def test_the_daily_schedule_does_not_request_a_day_the_sensors_run_is_still_archiving(pg, conn, schema, archive_env):
    """Scenario: the sensor and the daily schedule both run (``schedule: {hour: 1}``, the sensor every 5 minutes).
    Just after midnight UTC the sensor sees yesterday complete with rows and requests it; yesterday is a big day, so
    that run is still archiving at 01:00 when the schedule ticks.

    Now: the schedule requests yesterday regardless (a second run of the same table-day, launched concurrently). It
    waits on nothing: it fails the day on the table-day advisory lock, retryably, and with the default retries
    (30, 60, 120 s) a first run longer than ~4 minutes leaves it failed for good: a red run every such night for a
    day that was archived fine, and an extraction slot of the pool taken for nothing. The sensor avoids exactly
    this (README: a day "that a queued or running run archives ... is left out"); the schedule does not.

    Should: the schedule leaves out a period that a queued or running run of this table already archives (its
    ``dagster/partition`` tag or a ranged run's range), as the sensor does, and says so in its SkipReason.
    Fix idea: reuse sensors.unfinished_runs/days_in_flight in schedules._daily before building the RunRequests."""
    day = dt.date(2024, 3, 10)
    create_sample_events(conn, [day], rows_per_day=5, schema=schema)
    config = parse_config({"tables": [{"name": f"{schema}.events", "day_column": "created_at",
                                       "start_date": "2024-03-01"}]})
    spec = config.tables[0]
    defs = build_definitions(config)
    repo = defs.get_repository_def()
    schedule = repo.get_schedule_def(f"archive_{schema}_events_daily")
    with instance_for_test() as instance:
        instance.add_run(DagsterRun(job_name=job_name(spec), run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTED,
                                    tags={"archive/table": spec.name, "dagster/partition": day.isoformat(),
                                          "dagster/run_key": f"{job_name(spec)}:{day.isoformat()}",
                                          "dagster/sensor_name": "archive_new_days"}))
        tick = schedule.evaluate_tick(build_schedule_context(
            instance=instance, scheduled_execution_time=dt.datetime(2024, 3, 11, 1, tzinfo=dt.UTC),
            repository_def=repo))
        assert [r.partition_key for r in tick.run_requests or []] == [], tick.run_requests


def test_one_queued_run_with_a_far_range_end_does_not_stop_the_sensor_for_every_table(pg, conn, schema, archive_env):
    """Scenario: two tables, ``a`` and ``b``, each with rows yesterday. Someone launched a ranged run of ``a``'s job
    from the launchpad / GraphQL with ``dagster/asset_partition_range_start`` a few days ago and
    ``dagster/asset_partition_range_end: 9999-12-31`` ("everything from then on"); it is queued or started (waiting
    for its pool's slot behind a backfill) while the sensor ticks.

    Now: the sensor reads every unfinished run's range (days_in_flight) with ``spec.period(tag)``, which raises
    OverflowError ("date value out of range") for 9999-12-31 (its end is past datetime's last day); only
    ValueError/ArchiveError are caught, so the whole tick fails with a bare OverflowError naming neither run nor
    table, and no table's new day (here ``b``'s) is requested until that run leaves the queue.

    Should: a run whose range tags cannot be read as periods of the table is skipped (or read up to its last real
    period) and the other tables' days are requested as usual; the README promises one table's problem never hides
    the others' new days.
    Fix idea: in sensors.days_in_flight catch OverflowError too (or clamp the range end to now)."""
    yesterday = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    for name in ("a", "b"):
        conn.execute(f'CREATE TABLE "{schema}".{name} (id int, at timestamptz)')
        conn.execute(f'INSERT INTO "{schema}".{name} VALUES (1, %s)', (yesterday,))
    start = (yesterday.date() - dt.timedelta(days=3)).isoformat()
    config = parse_config({"tables": [{"name": f"{schema}.{n}", "day_column": "at", "start_date": start}
                                      for n in ("a", "b")]})
    a, b = config.tables
    defs = build_definitions(config)
    repo = defs.get_repository_def()
    sensor = repo.get_sensor_def("archive_new_days")
    with instance_for_test() as instance:
        instance.add_run(DagsterRun(job_name=job_name(a), run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTED,
                                    tags={"archive/table": a.name,
                                          "dagster/asset_partition_range_start": start,
                                          "dagster/asset_partition_range_end": "9999-12-31"}))
        tick = sensor.evaluate_tick(build_sensor_context(
            instance=instance, resources={"postgres": PostgresResource(dsn=pg.dsn)}, repository_def=repo))
        requested = {(r.tags["archive/table"], r.partition_key) for r in tick.run_requests or []}
    assert (b.name, yesterday.date().isoformat()) in requested, tick.skip_message


def test_following_the_ticks_remedy_for_a_failed_day_clears_it(pg, conn, schema, archive_env, tmp_path):
    """Scenario: the sensor's run of yesterday failed (here: recorded as a FAILURE run of the sensor under the day's
    run key, as the daemon leaves it). Every tick then says "1 day(s) already have a run (failed, queued or running)
    under their run key and are not requested again (...): re-run a failed day from the asset's partitions in the UI
    or with `archive-pipeline archive --table <t> --day <day>`". The operator runs that command; it archives the day.

    Now: the command line writes no Dagster record, so the partition stays unmaterialized and its run key used: every
    later tick still lists the day as failed and gives the same command, which the operator has already run
    (it now finds the archive identical and changes nothing). The remedy the tick gives does not clear what the
    tick reports; the UI keeps the partition missing for good.

    Should: the tick's remedy is one that clears it (launch the partition from Dagster: the UI's partition, or
    `dagster job launch ... --tags '{"dagster/partition": ...}'`), or the tick recognises a day whose archive is now in
    the store (its manifest) and no longer reports it as failed.
    Fix idea: in sensors._rerun, give the Dagster launch (job name and partition) instead of the CLI."""
    import json
    import os
    import re
    import shlex
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    yesterday = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).date()
    conn.execute(f'CREATE TABLE "{schema}".t (id int, at timestamptz)')
    conn.execute(f'INSERT INTO "{schema}".t VALUES (1, %s)', (dt.datetime.combine(yesterday, dt.time(5), dt.UTC),))
    table = {"name": f"{schema}.t", "day_column": "at", "start_date": (yesterday - dt.timedelta(days=2)).isoformat()}
    config_file = tmp_path / "tables.yaml"
    config_file.write_text(yaml.safe_dump({"tables": [table]}))
    config = parse_config({"tables": [table]})
    spec = config.tables[0]
    defs = build_definitions(config)
    repo = defs.get_repository_def()
    sensor = repo.get_sensor_def("archive_new_days")
    key = f"{job_name(spec)}:{yesterday.isoformat()}"
    with instance_for_test() as instance:
        instance.add_run(DagsterRun(job_name=job_name(spec), run_id=str(uuid.uuid4()), status=DagsterRunStatus.FAILURE,
                                    tags={"archive/table": spec.name, "dagster/partition": yesterday.isoformat(),
                                          "dagster/run_key": key, "dagster/sensor_name": "archive_new_days"}))

        def tick() -> str:
            result = sensor.evaluate_tick(build_sensor_context(
                instance=instance, resources={"postgres": PostgresResource(dsn=pg.dsn)}, repository_def=repo))
            assert not result.run_requests
            return result.skip_message or ""

        said = tick()
        command = re.search(r"`(archive-pipeline archive [^`]*)`", said)
        assert command, said
        root = Path(__file__).resolve().parents[1]
        env = {**os.environ, "PYTHONPATH": str(root), "ARCHIVE_PIPELINE_CONFIG": str(config_file)}
        done = subprocess.run([sys.executable, "-m", "archive_pipeline.cli", *shlex.split(command.group(1))[1:],
                               "--json"], env=env, cwd=root, capture_output=True, text=True, timeout=90)
        assert done.returncode == 0, done.stdout + done.stderr
        assert json.loads(done.stdout)  # the day is archived now
        again = tick()
    assert yesterday.isoformat() not in again, again
