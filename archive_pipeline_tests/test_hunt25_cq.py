"""Hunt 25 (cq): Dagster-side names and metadata at their limits: tables whose names are non-ASCII, long, contain
spaces, quotes or dots, through asset keys, op and job names, run tags, run keys and materialization metadata."""

from __future__ import annotations

import datetime as dt

from dagster import instance_for_test

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions, shared_job_names
from archive_pipeline_tests.test_hunt16_vm import YESTERDAY, _recorded, _sensor_run_failed, _table, _tick


def test_the_sensor_records_a_changed_day_whose_later_run_without_the_table_tag_refused_it(pg, conn, schema,
                                                                                           archive_env, store,
                                                                                           temp_dir):
    """Scenario: tables ``t`` and ``u`` share their partitions (so the UI's Materialize of both runs the shared job
    ``Archives_daily_<start>_UTC``). The sensor's run of ``t``'s yesterday failed; the operator follows the tick's
    remedy and archives the day with the command line; a late row then lands in that day; the operator (or a
    backfill launched from the UI) materializes yesterday of both tables, and that run rightly refuses ``t``'s day
    ("changed since archived": an overwrite is needed).

    Now: the next tick finds the day's manifest and records it materialized ("archived outside Dagster"): a green
    partition for an archive that lacks the late row, buried over the failure that said "overwrite needed". The
    guard against exactly this (outside._written_after, fed by outside._started) looks for the day's runs by the run
    tag ``archive/table``, which only the table's own job carries: the shared job's runs (and an asset backfill's,
    run as ``__ASSET_JOB``) have no such tag, so the run that refused the archive is not seen and the older archive
    passes for the remedy followed.

    Should: the day stays listed as failed, not recorded. Fix idea: in _started, find the day's runs as
    sensors.days_in_flight does (the table tag, the table's own or shared job name, or the asset key in the run's
    asset selection), e.g. RunsFilter(tags={"dagster/partition": days}) filtered by those."""
    _table(conn, schema, "t")
    _table(conn, schema, "u")
    start = (YESTERDAY - dt.timedelta(days=2)).isoformat()
    config = parse_config({"retry": {"max_retries": 0}, "tables": [
        {"name": f"{schema}.{name}", "day_column": "at", "start_date": start} for name in ("t", "u")]})
    t = config.tables[0]
    defs = build_definitions(config)
    with instance_for_test() as instance:
        remedy_followed_then_a_late_row(conn, instance, schema, t, store, temp_dir)
        run = defs.resolve_job_def(shared_job_names(config)[t.name]).execute_in_process(
            instance=instance, partition_key=YESTERDAY.isoformat(), raise_on_error=False)
        assert not run.success and "overwrite" in str(run.all_events), "the later run refuses the changed day"
        result = _tick(defs, instance, pg)
    assert _recorded(result) == [], [e.description for e in result.asset_events]


def test_another_regional_locations_run_of_the_same_table_name_makes_the_schedule_skip_the_day_for_good(monkeypatch):
    """Scenario: README's setup for two tables of the same name from two databases: two code locations on one
    instance, ``us`` and ``eu``, each with its own ``asset_key_prefix`` and ``public.events``, the daily schedules
    on and the sensor off (both defaults' usual deployment: ``schedule: {running: true}``). At 01:00 UTC on
    2024-03-11 the eu schedule ticks first and queues its run of 2024-03-10; the us schedule ticks next. The eu
    run then succeeds.

    Now: the us tick skips its own 2024-03-10 ("already being archived by a run not yet finished"): schedules._requests
    asks days_in_flight about every unfinished run of any location, which matches the eu run by its run tag
    ``archive/table=public.events`` and its job name ``Archive_public_events`` (neither holds the prefix; a
    schedule's run has no asset selection to tell them apart). The next ticks look back only at runs that failed or
    were canceled (_left_to_failed_runs); the eu run succeeded, so nothing ever requests us's 2024-03-10: the day
    stays missing for good, silently.

    Should: another location's run does not hold back this location's day (its origin's location differs, or the
    schedule's requests carry the prefixed asset key as their asset selection and runs are matched by it); at
    least the look-back requests a day left to a run that then succeeded without materializing this asset."""
    import uuid

    from dagster import DagsterRun, DagsterRunStatus, build_schedule_context
    from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin

    monkeypatch.setenv("ARCHIVE_PG_DSN", "host=127.0.0.1 port=1 dbname=x")
    monkeypatch.setenv("ARCHIVE_S3_BUCKET", "archive")
    table = {"name": "public.events", "day_column": "at", "start_date": "2024-03-01"}
    us = parse_config({"asset_key_prefix": ["us"], "schedule": {"running": True}, "tables": [table]}, "us")
    repo = build_definitions(us, check_source=False).get_repository_def()
    schedule = repo.get_schedule_def("archive_public_events_daily")
    job, day = "Archive_public_events", "2024-03-10"

    def tick(at: dt.datetime) -> list[str]:
        result = schedule.evaluate_tick(build_schedule_context(instance=instance, scheduled_execution_time=at,
                                                               repository_def=repo))
        return [r.partition_key for r in result.run_requests or []]

    with instance_for_test() as instance:
        origin = RemoteJobOrigin(RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("archive_eu"), "__repository__"),
                                 job)
        eu_run = DagsterRun(job_name=job, run_id=str(uuid.uuid4()), status=DagsterRunStatus.QUEUED,
                            remote_job_origin=origin,
                            tags={"dagster/partition": day, "archive/table": "public.events",
                                  "dagster/schedule_name": "archive_public_events_daily",
                                  "dagster/run_key": f"{job}:{day}"})
        instance.add_run(eu_run)
        first = tick(dt.datetime(2024, 3, 11, 1, tzinfo=dt.UTC))
        instance.delete_run(eu_run.run_id)
        instance.add_run(eu_run.with_status(DagsterRunStatus.SUCCESS))  # eu's day archived, in eu's database
        later = tick(dt.datetime(2024, 3, 12, 1, tzinfo=dt.UTC)) + tick(dt.datetime(2024, 3, 13, 1, tzinfo=dt.UTC))
    assert day in first + later, (first, later)


def remedy_followed_then_a_late_row(conn, instance, schema: str, t, store, temp_dir) -> None:
    """Yesterday's sensor run of table ``t`` failed after it started; the tick's remedy was followed (the day
    archived by the command line); then a late row arrived in the day (the archive is stale)."""
    _sensor_run_failed(instance, t, YESTERDAY.isoformat())
    archive_partition(conn, t, YESTERDAY, store, temp_dir=temp_dir)  # the tick's remedy, followed
    conn.execute(f'INSERT INTO "{schema}".t VALUES (3, %s)', (dt.datetime.combine(YESTERDAY, dt.time(20), dt.UTC),))
