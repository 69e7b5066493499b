"""Hunt 18 (xe): the Dagster side under faults: run config and run tags that name days outside the partitions
definition, retries of a run whose days cannot be archived, what a failed run leaves and says."""

from __future__ import annotations

import datetime as dt

from dagster import DagsterEventType, instance_for_test

from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.assets import asset_key, job_name
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.helpers import run_materializations

DAY = dt.date(2024, 3, 10)
DAYS = [DAY + dt.timedelta(days=i) for i in range(3)]


def _range(first: str, last: str) -> dict:
    return {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}


def test_a_run_whose_partition_range_ends_before_it_starts_is_refused_naming_table_and_range_not_retried(
        conn, schema, archive_env):
    """Scenario: a column-mode table with three archivable days (2024-03-10..12), retry: max_retries 1. A run of
    Archive_<schema>_events is launched with the range tags reversed (``dagster/asset_partition_range_start``
    2024-03-12, ``..._end`` 2024-03-10: a hand-written launch through the GraphQL API or the launchpad's tags, a
    script that swapped --from and --to). Dagster accepts the tags and hands the step an empty
    ``context.partition_keys``.

    Now: ``run_periods`` returns no day (it refuses keys that are not the table's periods, a tag naming a skipped
    hour, a day not over yet, but never an empty range); ``_archive_days`` then builds the store's label with
    ``days[0]`` and dies with a bare ``IndexError: list index out of range`` naming no table, no day and no cause.
    It is not a Failure, so the retry policy takes it for transient: STEP_UP_FOR_RETRY, the same IndexError again,
    "Exceeded max_retries" (with the default retry settings, 3.5 minutes of waits for a launch that can never work).

    Should: a usage error, refused at once and not retried, as a range before start_date already is ("<table> ...:
    not a partition of Archive_...: ...; nothing was archived. What to do: launch a partition the job lists"),
    naming the table and both ends of the range and saying the range is reversed/empty. Fix idea: in
    ``run_periods``, ``if not context.partition_keys: raise refuse(f"{start}..{end}", "the range ends before it
    starts: it holds no partition")``."""
    create_sample_events(conn, DAYS, rows_per_day=3, schema=schema)
    config = parse_config({"retry": {"max_retries": 1, "delay_seconds": 0.01}, "tables": [{
        "name": f"{schema}.events", "day_column": "created_at", "start_date": DAY.isoformat()}]})
    spec = config.tables[0]
    job = build_definitions(config, check_source=False).resolve_job_def(job_name(spec))
    with instance_for_test() as instance:
        result = job.execute_in_process(instance=instance, tags=_range(DAYS[2].isoformat(), DAYS[0].isoformat()),
                                        raise_on_error=False)
        retried = [e for e in instance.all_logs(result.run_id, of_type=DagsterEventType.STEP_UP_FOR_RETRY)]
        failures = [e.dagster_event.step_failure_data.error
                    for e in instance.all_logs(result.run_id, of_type=DagsterEventType.STEP_FAILURE)]
        materialized = [m for m in run_materializations(instance, result.run_id) if m.asset_key == asset_key(spec)]
    assert not result.success and not materialized
    assert len(failures) == 1, failures
    said = failures[0].message + "".join(failures[0].cause.message if failures[0].cause else "")
    assert not retried, f"a reversed range was retried as if transient: {said}"
    assert spec.name in said and DAYS[0].isoformat() in said and DAYS[2].isoformat() in said, \
        f"the refusal names neither the table nor the range: {said}"
    assert "IndexError" not in said, said
