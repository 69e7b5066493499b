"""Hunt 4, class: what a Dagster operator sees must be true (partition status, metadata, check results, run
tags, failure descriptions, sensor and schedule requests), through Dagster's own APIs."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from dagster import (AssetCheckKey, AssetKey, AssetMaterialization, DagsterEventType, DagsterRun, DagsterRunStatus,
                     build_schedule_context, build_sensor_context, instance_for_test, materialize)
from psycopg import sql

from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.local.local_stack import create_sample_events

DAY = dt.date(2024, 3, 10)


def _config(*tables: dict, **top) -> object:
    return parse_config({**top, "tables": [{"day_column": "at", "start_date": "2024-01-01", **t} for t in tables]})


def test_the_removal_schedule_does_not_request_a_day_whose_removal_a_person_launched_and_is_running():
    """A person launches the removal of 2024-01-01 from the UI (Remove_public_events, partition 2024-01-01:
    a run with the `dagster/partition` tag and no run key). While it runs, the removal schedule ticks. The
    README: it requests due days "never a day whose removal is still queued or running". It requested
    2024-01-01 again (it only looks for its own run keys), so a second removal of the same day is queued
    behind the first: two runs on one day in the UI, one of them waiting on the other's lock."""
    config = _config({"name": "public.events", "retention": {"keep_days": 30, "action": "delete"}})
    [spec] = config.tables
    repo = build_definitions(config, resources={}, check_source=False).get_repository_def()
    schedule = repo.get_schedule_def("remove_public_events_daily")
    archive_key = AssetKey(["archive", *spec.asset_path])
    when = dt.datetime(2024, 3, 1, 1, 30, tzinfo=dt.UTC)
    with instance_for_test() as instance:
        instance.report_runless_asset_event(AssetMaterialization(asset_key=archive_key, partition="2024-01-01"))
        instance.add_run(DagsterRun(job_name="Remove_public_events", run_id=str(uuid.uuid4()),
                                    status=DagsterRunStatus.STARTED,
                                    tags={"dagster/partition": "2024-01-01", "archive/table": spec.name}))
        result = schedule.evaluate_tick(build_schedule_context(instance=instance, scheduled_execution_time=when,
                                                               repository_def=repo))
        requested = [r.partition_key for r in result.run_requests or []]
    assert "2024-01-01" not in requested, f"a day whose removal is running is requested again: {requested}"
