"""Hunt 20 (zd): the Dagster side under faults and hostile configuration: the daily schedule, the new-days sensor
(cursor, records, failed and repeated ticks), ranged backfill runs (per-day metadata, checks, failure isolation,
retries), RetryPolicy, asset checks, run config, termination mid-stream, the removal assets, and the code location's
load with hostile YAML.

What held up (probed, no test here): hostile table names (Python keywords and Dagster's reserved words as tables,
``__ASSET_JOB``, ``archive_new_days``, ``verify_archives``, names of 63 characters, zero-width and combining
characters, schemas named ``archive`` or ``source_removed``, a table ``<t>_archive_proven`` beside ``<t>`` with
retention) either load with distinct asset keys, ops, jobs and schedules or are refused naming both tables; the
schedule's periods for zones east and west of UTC (``select_days`` cuts at the UTC midnight, so a western zone's
day still in progress is never requested); the sensor's turn (cursor) over tables with and without new days; the
run-key bookkeeping of sensor runs that failed, succeeded and were wiped.

Both bugs below are in how the sensor and the schedule decide that a day is "already being archived": they look
only at runs in ``sensors.UNFINISHED`` (NOT_STARTED, QUEUED, STARTING, STARTED)."""

from __future__ import annotations

import datetime as dt
import uuid

from dagster import DagsterRun, DagsterRunStatus, build_schedule_context, build_sensor_context, instance_for_test
from dagster._core.execution.backfill import BulkActionStatus
from dagster_graphql.test.utils import execute_dagster_graphql

from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.assets import job_name, schedule_name
from archive_pipeline.defs.resources import PostgresResource
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.conftest import utc_today
from archive_pipeline_tests.test_assetbackfill import LAUNCH, _location


def _ticks(config, instance, pg, today: dt.date) -> tuple[list[str], list[str]]:
    """The days the sensor's tick and the schedule's tick of today 01:00 UTC request, on ``instance``."""
    defs = build_definitions(parse_config(config))
    repo = defs.get_repository_def()
    spec = parse_config(config).tables[0]
    sensor = repo.get_sensor_def("archive_new_days")
    found = sensor.evaluate_tick(build_sensor_context(
        instance=instance, resources={"postgres": PostgresResource(dsn=pg.dsn)}, repository_def=repo))
    schedule = repo.get_schedule_def(schedule_name(spec))
    at = dt.datetime.combine(today, dt.time(1), dt.UTC)
    ticked = schedule.evaluate_tick(build_schedule_context(instance=instance, scheduled_execution_time=at,
                                                           repository_def=repo))
    return (sorted(r.partition_key for r in found.run_requests or []),
            sorted(r.partition_key for r in ticked.run_requests or []))


def test_a_run_being_canceled_still_holds_its_days_yet_the_sensor_and_schedule_request_them(pg, conn, schema,
                                                                                            archive_env):
    """Scenario: a person terminates, from the UI, a run of the table's job that archives yesterday (launched from
    the partitions page, or a backfill's run). Dagster marks it CANCELING at once; the run's step is still going
    until it notices the interrupt and cleans up (the upload aborted, its marker deleted, the table-day lock let
    go), which takes as long as the store and the database take to answer, and for ever where the run worker hung
    (run monitoring marks it CANCELED only after its timeout). The sensor ticks, or the schedule's hour comes,
    meanwhile.

    Now: ``sensors.unfinished_runs`` asks for the runs in ``UNFINISHED`` = {NOT_STARTED, QUEUED, STARTING,
    STARTED}, which leaves out CANCELING (and SUSPENDED: Dagster's ``NOT_FINISHED_STATUSES`` has both), so
    ``days_in_flight`` does not see the run and both the sensor (``archive_new_days``) and the schedule
    (``_requests``) launch yesterday again. The new run starts while the old one still holds the (table, day)
    lock and fails the day as held by another run; with ``retry: {max_retries: 0}`` it stays failed, and being the
    sensor's run its run key is then used, so the sensor never requests the day again (``_current_keys``): a day
    nobody archived is left missing for good. (``retention_assets.removals_in_flight`` uses the same set for the
    removal schedule.)

    Should: a run that is not finished (every status in Dagster's ``NOT_FINISHED_STATUSES``, CANCELING included)
    keeps its days out of the sensor's and the schedule's requests until it has ended; a later tick requests what
    it left undone. Fix idea: ``UNFINISHED = set(NOT_FINISHED_STATUSES)``."""
    today = utc_today()
    yesterday = today - dt.timedelta(days=1)
    create_sample_events(conn, [yesterday], rows_per_day=3, schema=schema)
    config = {"retry": {"max_retries": 0}, "tables": [{"name": f"{schema}.events", "day_column": "created_at",
                                                       "start_date": (today - dt.timedelta(days=5)).isoformat()}]}
    spec = parse_config(config).tables[0]
    with instance_for_test() as instance:
        instance.add_run(DagsterRun(job_name=job_name(spec), run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTED,
                                    tags={"dagster/partition": yesterday.isoformat(), "archive/table": spec.name}))
        assert _ticks(config, instance, pg, today) == ([], [])  # (the premise: a running run keeps the day out)
        [run] = instance.get_runs()
        instance.report_run_canceling(run)  # what the UI's Terminate does first
        assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.CANCELING
        sensor, schedule = _ticks(config, instance, pg, today)
    assert (sensor, schedule) == ([], []), (
        f"while a run archiving {yesterday} is being canceled (still running), the sensor requests {sensor} and the "
        f"schedule {schedule}")


def test_a_launched_backfill_not_yet_submitted_has_its_days_requested_again_by_the_sensor(pg, conn, schema,
                                                                                          archive_env, tmp_path,
                                                                                          monkeypatch):
    """Scenario: the operator launches a backfill of the last three days from the UI (Assets → the table →
    Materialize → a date range → Launch backfill; or the job's partitions page). The webserver only records the
    backfill (status REQUESTED); the backfill daemon submits its runs on its next iteration (up to ~30 s later, or
    much later for a long backfill of one run per day, which it submits a chunk at a time). The sensor ticks in
    between.

    Now: the sensor (and likewise the schedule's ``_requests``) looks only at runs (``unfinished_runs`` +
    ``days_in_flight``): a backfill whose runs are not submitted yet does not exist for it, so its tick requests the
    very days the backfill is about to archive. The daemon then launches both: two runs per table-day, racing for
    the day's lock (one fails the day as held by another run: red with ``max_retries: 0``, its sensor run key then
    used for good) or, one after the other, the second finding the archive identical (a run and a materialization
    for nothing, per day, for the whole range).

    Should: the days of a backfill that is still REQUESTED (and not yet submitted) count as in flight for the sensor
    and the schedule, as its queued runs do. Fix idea: in ``unfinished_runs``' callers also read
    ``instance.get_backfills(filters=BulkActionsFilter(statuses=[BulkActionStatus.REQUESTED]))`` and add each
    backfill's target partitions of the table (``asset_backfill_data.target_subset`` / ``partition_names`` of the
    table's job) to ``days_in_flight``."""
    today = utc_today()
    days = [today - dt.timedelta(days=n) for n in (3, 2, 1)]
    create_sample_events(conn, days, rows_per_day=5, schema=schema)
    config = {"tables": [{"name": f"{schema}.events", "day_column": "created_at",
                          "start_date": (today - dt.timedelta(days=10)).isoformat()}]}
    with _location(tmp_path, monkeypatch, config) as (instance, context):
        params = {"partitionsByAssets": [{"assetKey": {"path": ["archive", schema, "events"]}, "partitions": {
            "range": {"start": days[0].isoformat(), "end": days[-1].isoformat()}}}]}
        launched = execute_dagster_graphql(context.create_request_context(), LAUNCH, {"params": params}).data
        backfill = instance.get_backfill(launched["launchPartitionBackfill"]["backfillId"])
        assert backfill.status == BulkActionStatus.REQUESTED and instance.get_runs() == []  # (the premise)
        sensor, schedule = _ticks(config, instance, pg, today)
    assert (sensor, schedule) == ([], []), (
        f"days of a launched backfill ({days[0]}..{days[-1]}) are requested again: sensor {sensor}, schedule {schedule}")
