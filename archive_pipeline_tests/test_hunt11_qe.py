"""Hunt 11 (qe): what Dagster records must be true (materializations, checks, ticks, failures)."""

from __future__ import annotations

import datetime as dt

from dagster import DagsterEventType, build_sensor_context, instance_for_test

from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.assets import job_name
from archive_pipeline.defs.retention_assets import removal_asset_key, removal_job_name
from archive_pipeline.local.local_stack import create_sample_events

DAY = dt.date(2024, 3, 10)


def _meta(materialization) -> dict:
    return {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}


def test_a_second_removal_run_of_a_removed_day_does_not_claim_the_removal(conn, schema, archive_env):
    """Scenario: a table with retention (delete); its old day is archived and removed by a run of
    Remove_<schema>_events; the day's removal is launched again (a re-execution, a backfill over the range,
    the UI's Materialize of the partition).

    Now: the second run records a new materialization of source_removed for the day saying
    ``run_id: <the second run>``, ``dagster/row_count: 5`` and ``removed_at: "before"``: the latest
    materialization, the one the UI shows, credits a run that removed nothing with removing 5 rows, and the
    time of the real removal is lost. The module promises "the materialization says what was removed, when,
    and by which run".

    Expected: the materialization of an already-removed day names the run that removed it and when (the
    manifest's removal mark holds both: ``removed_by``, ``at``), or no new materialization is recorded.
    Fix idea: for ``removal.already_removed`` take run_id / removed_at from the manifest's mark (and say
    ``already_removed``), or yield no MaterializeResult."""
    create_sample_events(conn, [DAY], rows_per_day=5, schema=schema)
    config = parse_config({"retry": {"max_retries": 0}, "tables": [{
        "name": f"{schema}.events", "day_column": "created_at", "start_date": DAY.isoformat(),
        "retention": {"keep_days": 30, "action": "delete"}}]})
    spec = config.tables[0]
    defs = build_definitions(config)
    with instance_for_test() as instance:
        assert defs.resolve_job_def(job_name(spec)).execute_in_process(
            instance=instance, partition_key=DAY.isoformat()).success
        remove = defs.resolve_job_def(removal_job_name(spec))
        first = remove.execute_in_process(instance=instance, partition_key=DAY.isoformat())
        [removed] = first.get_asset_materialization_events()
        removed = _meta(removed.materialization)
        assert removed["run_id"] == first.run_id and removed["dagster/row_count"] == 5
        second = remove.execute_in_process(instance=instance, partition_key=DAY.isoformat())
        assert second.success
        for event in second.get_asset_materialization_events():
            again = _meta(event.materialization)
            assert event.materialization.asset_key == removal_asset_key(spec)
            # the run that removed the day, and when: not the run that found it removed
            assert again["run_id"] == first.run_id, again
            assert again["removed_at"] == removed["removed_at"], again
