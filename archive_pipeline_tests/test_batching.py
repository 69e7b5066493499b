"""Several days in one run (a ranged backfill run): each day still its own materialization with its own
metadata, its own check result and lock, and a day that fails neither fails nor redoes its neighbours.
Status is read the way the UI computes it (the instance's partition status cache)."""

from __future__ import annotations

import datetime as dt

from dagster import (
    AssetCheckKey,
    AssetPartitionStatus,
    DagsterEventType,
    instance_for_test,
)

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import parse_config
from archive_pipeline.core.locks import lock_key
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.assets import asset_key, daily_partitions
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.test_dagster import job_name

FIRST = dt.date(2024, 3, 10)
DAYS = [FIRST + dt.timedelta(days=i) for i in range(4)]
RANGE = {"dagster/asset_partition_range_start": DAYS[0].isoformat(),
         "dagster/asset_partition_range_end": DAYS[-1].isoformat()}


def _config(schema: str, **table):
    return parse_config({"retry": {"max_retries": 1, "delay_seconds": 0}, "backfill": {"max_days_per_run": 10},
                         "tables": [{"name": f"{schema}.events", "day_column": "created_at",
                                     "start_date": FIRST.isoformat(), **table}]})


def _materializations(instance, run_id: str) -> list:
    return [r.event_log_entry.dagster_event for r in
            instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records]


def _status(instance, spec) -> dict[str, str | None]:
    found = instance.get_status_by_partition(asset_key(spec), [d.isoformat() for d in DAYS], daily_partitions(spec))
    return {day: status.value if status else None for day, status in found.items()}


def test_a_ranged_run_records_each_day_with_its_own_metadata_and_check(conn, schema, archive_env):
    create_sample_events(conn, DAYS, rows_per_day=5, schema=schema)
    conn.execute(f'DELETE FROM "{schema}".events WHERE created_at >= %s AND created_at < %s',
                 (DAYS[2], DAYS[3]))  # an empty day among full ones
    config = _config(schema)
    spec = config.tables[0]
    defs = build_definitions(config)
    assert defs.resolve_assets_def(asset_key(spec)).backfill_policy.max_partitions_per_run == 10
    with instance_for_test() as instance:
        result = defs.resolve_job_def(job_name(schema)).execute_in_process(instance=instance, tags=RANGE)
        assert result.success
        events = _materializations(instance, result.run_id)
        assert [e.partition for e in events] == [d.isoformat() for d in DAYS]
        metas = {e.partition: {k: v.value for k, v in e.step_materialization_data.materialization.metadata.items()}
                 for e in events}
        assert [metas[d.isoformat()]["dagster/row_count"] for d in DAYS] == [5, 5, 0, 5]
        assert metas[DAYS[2].isoformat()]["state"] == "empty"
        assert len({m["manifest_key"] for m in metas.values()}) == 4
        assert all(d.isoformat() in metas[d.isoformat()]["summary"] for d in DAYS)
        checks = instance.event_log_storage.get_asset_check_execution_history(
            AssetCheckKey(asset_key(spec), "archive_intact"), limit=10)
        assert sorted((c.partition, c.status.value) for c in checks) == [(d.isoformat(), "SUCCEEDED") for d in DAYS]
        assert set(_status(instance, spec).values()) == {"MATERIALIZED"}
        run = instance.get_run_by_id(result.run_id)
        assert run.tags["dagster/asset_partition_range_end"] == DAYS[-1].isoformat()


def test_a_failed_day_fails_alone_and_a_retry_does_not_redo_its_neighbours(conn, schema, archive_env, pg):
    create_sample_events(conn, DAYS, rows_per_day=5, schema=schema)
    config = _config(schema)
    spec = config.tables[0]
    bad = DAYS[1]
    defs = build_definitions(config)
    with instance_for_test() as instance, pg.connect() as other:
        # Another session holds bad's table-day lock: that day fails (retryably) in both attempts.
        assert other.execute("SELECT pg_try_advisory_lock(%s)", lock_key(spec.name, bad)).fetchone()[0]
        result = defs.resolve_job_def(job_name(schema)).execute_in_process(instance=instance, tags=RANGE,
                                                                           raise_on_error=False)
        assert not result.success
        events = _materializations(instance, result.run_id)
        good = [d.isoformat() for d in DAYS if d != bad]
        assert sorted(e.partition for e in events) == good  # once each: the retry skipped them
        failures = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
        message = failures[-1].step_failure_data.user_failure_data.description
        assert "1 of 4 days failed" in message and "Re-execute" in message and spec.name in message
        assert any("not done again" in e.user_message for e in instance.all_logs(result.run_id))
        status = _status(instance, spec)
        assert {day: status[day] for day in good} == dict.fromkeys(good, "MATERIALIZED")
        assert status[bad.isoformat()] == "FAILED"
        checks = instance.event_log_storage.get_asset_check_execution_history(
            AssetCheckKey(asset_key(spec), "archive_intact"), limit=10)
        assert sorted(c.partition for c in checks) == good
        other.execute("SELECT pg_advisory_unlock_all()")

        # Launched again (a backfill of the range): the archived days are found identical, the bad one is archived.
        again = defs.resolve_job_def(job_name(schema)).execute_in_process(instance=instance, tags=RANGE)
        states = {e.partition: e.step_materialization_data.materialization.tags["archive/state"]
                  for e in _materializations(instance, again.run_id)}
        assert states == {**dict.fromkeys(good, "skipped"), bad.isoformat(): "archived"}
        assert set(_status(instance, spec).values()) == {"MATERIALIZED"}


def test_single_day_runs_keep_their_partition_tag(conn, schema, archive_env, store):
    create_sample_events(conn, DAYS[:1], rows_per_day=3, schema=schema)
    defs = build_definitions(_config(schema))
    with instance_for_test() as instance:
        result = defs.resolve_job_def(job_name(schema)).execute_in_process(partition_key=DAYS[0].isoformat(),
                                                                           instance=instance)
        assert result.success
        assert instance.get_run_by_id(result.run_id).tags["dagster/partition"] == DAYS[0].isoformat()
        [event] = result.get_asset_materialization_events()
        assert event.materialization.partition == DAYS[0].isoformat()
    assert archive_partition(conn, parse_config({"tables": [
        {"name": f"{schema}.events", "day_column": "created_at", "start_date": FIRST.isoformat()}]}).tables[0],
        DAYS[0], store).skipped


def test_a_day_whose_check_could_not_run_is_checked_by_the_retry(conn, schema, archive_env, s3, monkeypatch):
    """A day archived in a ranged run whose proof download fails in transit is recorded "not verified"
    and fails the step; the step's retry archives it again (found identical) and proves it, instead of
    skipping it as done: a blocking check is never bypassed by a retry."""
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

    create_sample_events(conn, DAYS, rows_per_day=5, schema=schema)
    config = _config(schema, deep_check=True)
    spec = config.tables[0]
    flaky = DAYS[1].isoformat()
    with FaultProxy(s3.endpoint_url) as proxy, instance_for_test() as instance:
        monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", proxy.url)
        flip = proxy.add(Fault(method="GET", path=rf"/{flaky}\.jsonl\.zst$", action="flip_response_byte", times=1))
        result = build_definitions(config).resolve_job_def(job_name(schema)).execute_in_process(
            instance=instance, tags=RANGE)
        assert result.success and flip.hits == 1
        verified = {}
        for event in _materializations(instance, result.run_id):
            metadata = event.step_materialization_data.materialization.metadata
            verified.setdefault(event.partition, []).append(metadata["verified"].value)
        assert [v.startswith("not verified") for v in verified[flaky]] == [True, False], verified[flaky]
        assert all(len(verified[d.isoformat()]) == 1 for d in DAYS if d.isoformat() != flaky)
        checks = instance.event_log_storage.get_asset_check_execution_history(
            AssetCheckKey(asset_key(spec), "archive_intact"), limit=10)
        assert sorted((c.partition, c.status.value) for c in checks) == [(d.isoformat(), "SUCCEEDED") for d in DAYS]
