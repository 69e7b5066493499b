"""The code location through Dagster itself: materialize(), metadata, retries, schedule, sensor."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import threading
import time
import warnings
from pathlib import Path

import pytest
from dagster import (
    DagsterEventType,
    DagsterInstance,
    build_schedule_context,
    build_sensor_context,
    instance_for_test,
)
from psycopg import sql

from archive_pipeline.core.config import ConfigError, parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline.defs.resources import PostgresResource
from archive_pipeline_tests.conftest import utc_today
from archive_pipeline_tests.helpers import decompress, download, read_jsonl

REPO = Path(__file__).resolve().parents[1]


def events_config(schema: str, start: dt.date, **table) -> object:
    return parse_config({"retry": {"max_retries": 2, "delay_seconds": 0},
                         "tables": [{"name": f"{schema}.events", "day_column": "created_at",
                                     "start_date": start.isoformat(), **table}]})


def job_name(schema: str) -> str:
    return f"Archive_{schema}_events"


def test_materialize_partitions_records_metadata(conn, schema, archive_env, s3_client):
    days = [dt.date(2024, 3, 10), dt.date(2024, 3, 11)]
    create_sample_events(conn, days, rows_per_day=800, schema=schema)
    defs = build_definitions(events_config(schema, days[0]))
    with instance_for_test() as instance:
        for day in days:
            result = defs.resolve_job_def(job_name(schema)).execute_in_process(
                partition_key=day.isoformat(), instance=instance)
            assert result.success
            [event] = result.get_asset_materialization_events()
            meta = {k: v.value for k, v in event.materialization.metadata.items()}
            key = f"archive/{schema}.events/2024/03/{day.isoformat()}.jsonl.zst"
            body = download(s3_client, archive_env, key)
            assert meta["dagster/row_count"] == 800 == len(read_jsonl(decompress(body, "zstd")))
            assert meta["dagster/uri"] == f"s3://{archive_env}/{key}"
            assert meta["md5"] == hashlib.md5(body).hexdigest()
            assert meta["compressed_bytes"] == len(body)
            assert meta["uncompressed_bytes"] == len(decompress(body, "zstd"))
            assert meta["format"] == "jsonl" and meta["compression"] == "zstd"
            assert meta["rows_per_second"] > 0 and meta["duration_seconds"] > 0
            columns = {c.name: c.type for c in meta["dagster/column_schema"].columns}
            assert columns["created_at"] == "timestamp with time zone"
            assert columns["amount"] == "numeric(12,2)"
            assert event.partition == day.isoformat()
        assert instance.get_materialized_partitions(event.asset_key) == {d.isoformat() for d in days}


def test_tables_sharing_partitions_materialize_together_without_check_steps(conn, schema, archive_env, s3_client):
    """The shared job (what the UI's Materialize of several tables runs) archives each table's day in one
    run, with the per-day check result the asset reports, and plans no check step: a run of it that
    fails cannot turn a check red."""
    day = dt.date(2024, 3, 10)
    create_sample_events(conn, [day], rows_per_day=50, schema=schema)
    conn.execute(sql.SQL("CREATE TABLE {}.orders (id int, placed date)").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("INSERT INTO {}.orders SELECT g, %s FROM generate_series(1, 7) g").format(
        sql.Identifier(schema)), (day,))
    config = parse_config({"tables": [
        {"name": f"{schema}.events", "day_column": "created_at", "start_date": "2024-03-01"},
        {"name": f"{schema}.orders", "day_column": "placed", "start_date": "2024-03-01", "format": "csv"},
        {"name": f"{schema}.other", "day_column": "placed", "start_date": "2024-03-02"}]})
    defs = build_definitions(config, check_source=False)
    names = {j.name for j in defs.resolve_all_job_defs()}
    assert "Archives_daily_2024_03_01_UTC" in names  # two tables share it; the third starts another day
    assert not any(n.startswith("Archives_daily_2024_03_02") for n in names)
    # zones whose names differ only in characters a job name cannot hold still get a job each
    zones = parse_config({"tables": [
        {"name": f"{schema}.{t}{n}", "day_column": "placed", "start_date": "2024-03-01", "timezone": zone}
        for n, zone in enumerate(["Etc/GMT+1", "Etc/GMT-1"]) for t in ("a", "b")]})
    zone_jobs = {j.name: sorted(k.path[-1] for k in j.asset_layer.selected_asset_keys)
                 for j in build_definitions(zones, check_source=False).resolve_all_job_defs()
                 if j.name.startswith("Archives_")}
    assert zone_jobs == {"Archives_daily_2024_03_01_Etc_GMT_1": ["a0", "b0"],
                         "Archives_daily_2024_03_01_Etc_GMT_1_1": ["a1", "b1"]}, zone_jobs
    job = defs.resolve_job_def("Archives_daily_2024_03_01_UTC")
    with instance_for_test() as instance:
        result = job.execute_in_process(partition_key=day.isoformat(), instance=instance)
        assert result.success
        rows = {e.asset_key.path[-1]: e.materialization.metadata["dagster/row_count"].value
                for e in result.get_asset_materialization_events()}
        assert rows == {"events": 50, "orders": 7}
        planned = [e for e in instance.all_logs(result.run_id)
                   if e.dagster_event and e.dagster_event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED]
        assert planned == []
        evaluations = [e.dagster_event.event_specific_data for e in instance.all_logs(result.run_id)
                       if e.dagster_event and e.dagster_event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION]
        assert sorted((ev.asset_key.path[-1], ev.check_name, ev.passed) for ev in evaluations) == [
            ("events", "archive_intact", True), ("orders", "archive_intact", True)]


def _step_events(instance: DagsterInstance, run_id: str) -> list[DagsterEventType]:
    return [e.dagster_event.event_type for e in instance.all_logs(run_id) if e.dagster_event]


def test_missing_table_fails_without_retries(conn, schema, archive_env):
    create_sample_events(conn, [dt.date(2024, 3, 10)], rows_per_day=10, schema=schema)
    defs = build_definitions(events_config(schema, dt.date(2024, 3, 10)))
    conn.execute(sql.SQL("DROP TABLE {}.events").format(sql.Identifier(schema)))  # dropped after load
    with instance_for_test() as instance:
        result = defs.resolve_job_def(job_name(schema)).execute_in_process(
            partition_key="2024-03-10", instance=instance, raise_on_error=False)
        assert not result.success
        events = _step_events(instance, result.run_id)
        assert DagsterEventType.STEP_UP_FOR_RETRY not in events
        failure = [e for e in instance.all_logs(result.run_id) if e.dagster_event
                   and e.dagster_event.event_type == DagsterEventType.STEP_FAILURE][0]
        assert f"{schema}.events" in failure.dagster_event.step_failure_data.error.to_string()


def test_missing_table_fails_the_code_location_load(schema, archive_env):
    with pytest.raises(ConfigError, match=rf"table '{schema}.events'.*does not exist"):
        build_definitions(events_config(schema, dt.date(2024, 3, 10)))


def test_definitions_load_without_deprecation_warnings(conn, schema, archive_env):
    create_sample_events(conn, [dt.date(2024, 3, 10)], rows_per_day=10, schema=schema)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        defs = build_definitions(events_config(schema, dt.date(2024, 3, 10)))
        defs.resolve_all_job_defs()
        repo = defs.get_repository_def()
    assert len(repo.schedule_defs) == 1 and len(repo.sensor_defs) == 1


def test_schedule_requests_the_day_that_just_ended(conn, schema, archive_env):
    create_sample_events(conn, [dt.date(2024, 3, 10)], rows_per_day=10, schema=schema)
    defs = build_definitions(events_config(schema, dt.date(2024, 3, 10)))
    repo = defs.get_repository_def()
    schedule = repo.get_schedule_def(f"archive_{schema}_events_daily")
    assert schedule.cron_schedule == "0 1 * * *" and schedule.execution_timezone == "UTC"
    tick = schedule.evaluate_tick(build_schedule_context(
        scheduled_execution_time=dt.datetime(2024, 3, 12, 1, 0, tzinfo=dt.UTC), repository_def=repo))
    assert [r.partition_key for r in tick.run_requests] == ["2024-03-11"]
    early = schedule.evaluate_tick(build_schedule_context(
        scheduled_execution_time=dt.datetime(2024, 3, 10, 1, 0, tzinfo=dt.UTC), repository_def=repo))
    assert early.run_requests == [] and "before" in early.skip_message


@pytest.mark.parametrize("mode", ["column", "declarative"])
def test_sensor_requests_days_with_rows_and_no_archive(pg, conn, schema, archive_env, mode):
    today = utc_today()
    days = [today - dt.timedelta(days=n) for n in (3, 2, 1, 0)]  # today has rows but is not over yet
    create_sample_events(conn, days, rows_per_day=50, schema=schema)
    defs = build_definitions(events_config(schema, today - dt.timedelta(days=30), partitioning={"mode": mode}))
    repo = defs.get_repository_def()
    sensor = repo.get_sensor_def("archive_new_days")
    resources = {"postgres": PostgresResource(dsn=pg.dsn)}
    with instance_for_test() as instance:
        defs.resolve_job_def(job_name(schema)).execute_in_process(
            partition_key=days[0].isoformat(), instance=instance)

        def tick() -> list[str]:
            result = sensor.evaluate_tick(build_sensor_context(instance=instance, resources=resources,
                                                                       repository_def=repo))
            assert all(r.job_name == job_name(schema) for r in result.run_requests)
            return sorted(r.partition_key for r in result.run_requests)

        assert tick() == [days[1].isoformat(), days[2].isoformat()]
        # A new partition created and filled for an older day shows up on the next tick.
        new_day = today - dt.timedelta(days=5)
        create_sample_events(conn, [new_day], rows_per_day=5, schema=schema)
        assert tick() == sorted([new_day.isoformat(), days[1].isoformat(), days[2].isoformat()])


def test_postgres_instance_storage_block_in_dagster_yaml_works(pg, conn, schema, archive_env, tmp_path,
                                                                monkeypatch):
    """The commented production block, uncommented as a user would, against a real PostgreSQL."""
    text = (REPO / "dagster.yaml").read_text()
    block = re.search(r"# BEGIN postgres-storage\n(.*?)# END postgres-storage", text, re.S).group(1)
    (tmp_path / "dagster.yaml").write_text(re.sub(r"^# ?", "", block, flags=re.M))
    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(f"dagster_{schema}")))
    for name, value in {"DAGSTER_PG_USERNAME": "postgres", "DAGSTER_PG_PASSWORD": "unused",
                        "DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_DB": f"dagster_{schema}",
                        "DAGSTER_PG_PORT": str(pg.port)}.items():
        monkeypatch.setenv(name, value)
    create_sample_events(conn, [dt.date(2024, 3, 10)], rows_per_day=20, schema=schema)
    defs = build_definitions(events_config(schema, dt.date(2024, 3, 10)))
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        result = defs.resolve_job_def(job_name(schema)).execute_in_process(partition_key="2024-03-10",
                                                                           instance=instance)
        assert result.success
        assert instance.get_run_by_id(result.run_id) is not None
    conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(f"dagster_{schema}")))


def _check_results(result) -> dict[str, object]:
    return {e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data
            for e in result.all_events if e.event_type == DagsterEventType.ASSET_CHECK_EVALUATION}


def test_rematerialization_skips_and_checks_pass_then_fail_when_corrupted(conn, schema, archive_env, s3_client):
    create_sample_events(conn, [dt.date(2024, 3, 10)], rows_per_day=300, schema=schema)
    defs = build_definitions(events_config(schema, dt.date(2024, 3, 10)))
    job = defs.resolve_job_def(job_name(schema))
    with instance_for_test() as instance:
        first = job.execute_in_process(partition_key="2024-03-10", instance=instance,
                                       run_config={"ops": {f"archive__{schema}__events": {
                                           "config": {"deep_check": True}}}})
        check = _check_results(first)["archive_intact"]
        assert check.passed and "MD5 and row count" in check.description
        again = job.execute_in_process(partition_key="2024-03-10", instance=instance)
        [event] = again.get_asset_materialization_events()
        assert event.materialization.metadata["skipped"].value is True
        assert _check_results(again)["archive_intact"].passed

        verify = defs.resolve_job_def("verify_archives")
        assert _check_results(verify.execute_in_process(instance=instance))["latest_archive_intact"].passed
        key = f"archive/{schema}.events/2024/03/2024-03-10.jsonl.zst"
        s3_client.put_object(Bucket=archive_env, Key=key, Body=b"not the archive")
        failed = _check_results(verify.execute_in_process(instance=instance, raise_on_error=False))
        assert not failed["latest_archive_intact"].passed
        assert "size: recorded" in failed["latest_archive_intact"].description
        assert "2024-03-10" in failed["latest_archive_intact"].description


def test_dropped_connection_is_retried_and_succeeds(pg, conn, schema, archive_env, s3_client):
    """The backend is terminated mid-stream once; Dagster's RetryPolicy runs the whole day again."""
    create_sample_events(conn, [dt.date(2024, 3, 10)], rows_per_day=150_000, schema=schema)
    defs = build_definitions(events_config(schema, dt.date(2024, 3, 10)))
    killed = []

    def kill_first_copy() -> None:
        with pg.connect() as watcher:
            deadline = time.monotonic() + 60
            while not killed and time.monotonic() < deadline:
                row = watcher.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'archive_pipeline' "
                                      "AND query LIKE 'COPY%%' AND state = 'active'").fetchone()
                if row:
                    watcher.execute("SELECT pg_terminate_backend(%s, 30000)", row)
                    killed.append(row[0])
                time.sleep(0.005)

    watcher = threading.Thread(target=kill_first_copy)
    watcher.start()
    with instance_for_test() as instance:
        result = defs.resolve_job_def(job_name(schema)).execute_in_process(partition_key="2024-03-10",
                                                                           instance=instance)
        watcher.join()
        assert killed and result.success
        events = _step_events(instance, result.run_id)
        assert events.count(DagsterEventType.STEP_UP_FOR_RETRY) == 1
        [event] = result.get_asset_materialization_events()
        assert event.materialization.metadata["dagster/row_count"].value == 150_000
    assert s3_client.list_multipart_uploads(Bucket=archive_env).get("Uploads", []) == []


def test_late_row_fails_the_run_without_retrying(conn, schema, archive_env):
    create_sample_events(conn, [dt.date(2024, 3, 10)], rows_per_day=50, schema=schema)
    defs = build_definitions(events_config(schema, dt.date(2024, 3, 10)))
    job = defs.resolve_job_def(job_name(schema))
    with instance_for_test() as instance:
        assert job.execute_in_process(partition_key="2024-03-10", instance=instance).success
        conn.execute(sql.SQL("INSERT INTO {}.events (id, created_at, user_id, event_type) "
                             "VALUES (999999, '2024-03-10 10:00+00', 1, 'late')").format(sql.Identifier(schema)))
        result = job.execute_in_process(partition_key="2024-03-10", instance=instance, raise_on_error=False)
        assert not result.success
        assert DagsterEventType.STEP_UP_FOR_RETRY not in _step_events(instance, result.run_id)
        assert "has 51 rows now, the archive holds 50" in str(result.failure_data_for_node(
            f"archive__{schema}__events").error.to_string())


def test_lock_timeout_from_the_yaml_file_is_a_retried_error(pg, conn, schema, archive_env):
    create_sample_events(conn, [dt.date(2024, 3, 10)], rows_per_day=10, schema=schema)
    config = parse_config({"source": {"lock_timeout_ms": 200}, "retry": {"max_retries": 1, "delay_seconds": 0},
                           "tables": [{"name": f"{schema}.events", "day_column": "created_at",
                                       "start_date": "2024-03-10"}]})
    defs = build_definitions(config)
    with pg.connect() as blocker, blocker.transaction(), instance_for_test() as instance:
        blocker.execute(sql.SQL("LOCK TABLE {}.events IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema)))
        result = defs.resolve_job_def(job_name(schema)).execute_in_process(
            partition_key="2024-03-10", instance=instance, raise_on_error=False)
        assert not result.success
        assert _step_events(instance, result.run_id).count(DagsterEventType.STEP_UP_FOR_RETRY) == 1
        assert "lock timeout" in result.failure_data_for_node(f"archive__{schema}__events").error.to_string()


def test_assets_run_in_the_source_pool(conn, schema, archive_env):
    create_sample_events(conn, [dt.date(2024, 3, 10)], rows_per_day=1, schema=schema)
    defs = build_definitions(events_config(schema, dt.date(2024, 3, 10), pool="reporting_db"))
    [asset] = [a for a in defs.assets]
    assert asset.op.pool == "reporting_db"
