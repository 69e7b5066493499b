"""What Dagster shows about each day, through Dagster's own APIs: check results scoped to the day,
no red check after a failed run, day states, links, tags, freshness, retries, failures a person can
act on, and a sensor that finds what it should and never leaks a secret."""

from __future__ import annotations

import datetime as dt
import logging
import random
from pathlib import Path

import pytest
import yaml
from dagster import (
    AssetCheckKey,
    DagsterEventType,
    DagsterInstance,
    build_sensor_context,
    instance_for_test,
    materialize,
)
from dagster_aws.s3 import S3Resource
from psycopg import sql

from archive_pipeline.defs.assets import (
    ArchiveRetryPolicy,
    asset_key,
    freshness_policy,
    human_size,
    op_name,
    overwrite_run_config,
    retry_delay,
    retry_policy,
)
from archive_pipeline.defs.checks import object_link
from archive_pipeline.core.config import RetrySettings, ScheduleSettings, load_config, parse_config
from archive_pipeline.definitions import build_definitions, check_tables_exist
from archive_pipeline.local.local_stack import create_sample_events, free_port
from archive_pipeline.defs.resources import ArchiveStoreResource, PostgresResource
from archive_pipeline_tests.conftest import utc_today
from archive_pipeline_tests.test_dagster import events_config, job_name
from archive_pipeline_tests.helpers import run_check_evaluations, run_materializations

REPO = Path(__file__).resolve().parents[1]
DAY = dt.date(2024, 3, 10)


def _check_records(instance: DagsterInstance, schema: str, check: str = "archive_intact") -> list:
    key = AssetCheckKey(asset_key(events_config(schema, DAY).tables[0]), check)
    return list(instance.event_log_storage.get_asset_check_execution_history(key, limit=100))


def _meta(result) -> dict:
    [event] = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_check_results_carry_their_day_and_archive_runs_run_no_other_check(conn, schema, archive_env):
    days = [DAY, DAY + dt.timedelta(days=1)]
    create_sample_events(conn, days, rows_per_day=40, schema=schema)
    defs = build_definitions(events_config(schema, DAY))
    job = defs.resolve_job_def(job_name(schema))
    with instance_for_test() as instance:
        for day in days:
            result = job.execute_in_process(partition_key=day.isoformat(), instance=instance)
            assert [e.asset_check_evaluation_data.partition for e in result.all_events
                    if e.event_type == DagsterEventType.ASSET_CHECK_EVALUATION] == [day.isoformat()]
        records = _check_records(instance, schema)
        assert sorted((r.partition, r.status.value) for r in records) == [
            (d.isoformat(), "SUCCEEDED") for d in days]
        # The on-demand checks neither ran nor were planned (no "Skipped" twin) in archive runs.
        assert _check_records(instance, schema, "latest_archive_intact") == []
        assert _check_records(instance, schema, "source_unchanged") == []


def test_materialize_reports_the_days_check_with_or_without_the_check_definitions(conn, schema, archive_env):
    """``dagster.materialize`` as another project would call it: the asset alone, or with every check
    (as the asset's page launches it); either way one result per day, for that day."""
    days = [DAY, DAY + dt.timedelta(days=1)]
    create_sample_events(conn, days, rows_per_day=10, schema=schema)
    defs = build_definitions(events_config(schema, DAY))
    [archive] = defs.assets
    with instance_for_test() as instance:
        alone = materialize([archive], partition_key=days[0].isoformat(), instance=instance,
                            resources=defs.resources)
        together = materialize([archive, *defs.asset_checks], partition_key=days[1].isoformat(),
                               instance=instance, resources=defs.resources)
        assert alone.success and together.success
        assert sorted((r.partition, r.status.value) for r in _check_records(instance, schema)) == [
            (d.isoformat(), "SUCCEEDED") for d in days]
        # Inside a run that archives, source_unchanged does not fingerprint the source again.
        [unchanged] = [e.asset_check_evaluation_data for e in together.all_events
                       if e.event_type == DagsterEventType.ASSET_CHECK_EVALUATION
                       and e.asset_check_evaluation_data.check_name == "source_unchanged"]
        assert not unchanged.passed and unchanged.severity.value == "WARN"  # never compared: a warning, not a pass
        assert "not compared in a run that archives" in unchanged.description


def test_a_failed_run_leaves_the_days_check_alone(conn, schema, archive_env):
    create_sample_events(conn, [DAY, DAY + dt.timedelta(days=1)], rows_per_day=10, schema=schema)
    defs = build_definitions(events_config(schema, DAY))
    job = defs.resolve_job_def(job_name(schema))
    with instance_for_test() as instance:
        assert job.execute_in_process(partition_key=DAY.isoformat(), instance=instance).success
        conn.execute(sql.SQL("DROP TABLE {}.events").format(sql.Identifier(schema)))
        for day in (DAY, DAY + dt.timedelta(days=1)):  # archived before / never archived
            failed = job.execute_in_process(partition_key=day.isoformat(), instance=instance, raise_on_error=False)
            assert not failed.success
        records = _check_records(instance, schema)
        assert [(r.partition, r.status.value) for r in records] == [(DAY.isoformat(), "SUCCEEDED")]
        assert all(r.run_id != failed.run_id for r in records)


def test_day_states_are_distinct_at_a_glance(conn, schema, archive_env, s3):
    create_sample_events(conn, [DAY], rows_per_day=1500, schema=schema)
    defs = build_definitions(events_config(schema, DAY))
    job = defs.resolve_job_def(job_name(schema))
    with instance_for_test() as instance:
        first = job.execute_in_process(partition_key=DAY.isoformat(), instance=instance)
        again = job.execute_in_process(partition_key=DAY.isoformat(), instance=instance)
        [archived] = first.get_asset_materialization_events()
        [skipped] = again.get_asset_materialization_events()
        assert archived.materialization.tags["archive/state"] == "archived"
        assert skipped.materialization.tags["archive/state"] == "skipped"
        meta, skip_meta = _meta(first), _meta(again)
        assert (meta["state"], skip_meta["state"]) == ("archived", "skipped")
        assert meta["rows"] == "1,500" and meta["dagster/row_count"] == 1500
        assert meta["summary"].startswith(f"{DAY}: archived 1,500 rows") and "KiB" in meta["summary"]
        assert skip_meta["summary"].startswith(f"{DAY}: already archived, nothing uploaded")
        assert meta["compressed_size"] == human_size(meta["compressed_bytes"])
        # Not an AWS endpoint: the link is the object's s3:// URI.
        assert meta["object"] == meta["dagster/uri"] == f"s3://{archive_env}/{meta['object_key']}"
        # "missing" is a day with no materialization: not archived yet.
        assert instance.get_materialized_partitions(asset_key(events_config(schema, DAY).tables[0])) == {
            DAY.isoformat()}


def test_human_sizes_and_console_links():
    assert [human_size(n) for n in (0, 1023, 1536, 5 * 2**20, 3 * 2**40)] == [
        "0 B", "1,023 B", "1.5 KiB", "5.0 MiB", "3.0 TiB"]

    class Result:
        key, manifest_key = "archive/public.events/2024/03/2024-03-10.jsonl.zst", "m.json"

    aws = ArchiveStoreResource(s3=S3Resource(), bucket="prod-archive")
    assert object_link(aws, Result()) == ("https://s3.console.aws.amazon.com/s3/object/prod-archive"
                                          "?prefix=archive/public.events/2024/03/2024-03-10.jsonl.zst")
    minio = ArchiveStoreResource(s3=S3Resource(endpoint_url="http://minio:9000"), bucket="b")
    assert object_link(minio, Result()) == "s3://b/archive/public.events/2024/03/2024-03-10.jsonl.zst"


def test_runs_are_tagged_with_their_table_and_assets_have_a_freshness_policy(conn, schema, archive_env):
    create_sample_events(conn, [DAY], rows_per_day=5, schema=schema)
    config = parse_config({"schedule": {"hour": 2, "minute": 30, "freshness_hours": 4},
                           "tables": [{"name": f"{schema}.events", "day_column": "created_at",
                                       "start_date": DAY.isoformat()}]})
    defs = build_definitions(config)
    with instance_for_test() as instance:
        result = defs.resolve_job_def(job_name(schema)).execute_in_process(partition_key=DAY.isoformat(),
                                                                           instance=instance)
        assert instance.get_run_by_id(result.run_id).tags["archive/table"] == f"{schema}.events"
    [spec] = defs.get_assets_def(asset_key(config.tables[0])).specs
    assert spec.tags["archive/table"] == f"{schema}.events"  # the same value as the runs' tag
    policy = spec.freshness_policy
    assert policy.deadline_cron == "30 6 * * *" and policy.timezone == "UTC"
    assert policy.lower_bound_delta == dt.timedelta(hours=6, minutes=30)  # since midnight UTC
    late = freshness_policy(ScheduleSettings(hour=22, minute=0, freshness_hours=3))
    # 22:00 + 3 h is 01:00 the next day (it was clamped to 23:59, an hour after the run starts); the window
    # reaches back a day at most (Dagster's limit), which holds the 22:00 run.
    assert (late.deadline_cron, late.lower_bound_delta) == ("0 1 * * *", dt.timedelta(days=1))


def test_same_table_name_in_two_schemas_is_told_apart(conn, schema, archive_env):
    other = f"{schema}_b"
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(other)))
    try:
        create_sample_events(conn, [DAY], rows_per_day=1, schema=schema)
        create_sample_events(conn, [DAY], rows_per_day=1, schema=other)
        config = parse_config({"tables": [{"name": f"{s}.events", "day_column": "created_at",
                                           "start_date": DAY.isoformat()} for s in (schema, other)]})
        defs = build_definitions(config)
        specs = [next(iter(defs.get_assets_def(asset_key(t)).specs)) for t in config.tables]
        assert [s.group_name for s in specs] == [f"archive_{schema}", f"archive_{other}"]
        assert {j.name for j in defs.resolve_all_job_defs()} >= {f"Archive_{schema}_events", f"Archive_{other}_events"}
    finally:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(other)))


def test_retry_waits_double_from_the_configured_delay():
    policy = retry_policy(RetrySettings(max_retries=3, delay_seconds=30, backoff="exponential"))
    assert isinstance(policy, ArchiveRetryPolicy) and policy.max_retries == 3
    random.seed(7)
    for attempt, nominal in ((1, 30), (2, 60), (3, 120)):
        waits = [policy.calculate_delay(attempt) for _ in range(200)]
        assert all(nominal * 0.9 <= w <= nominal * 1.1 for w in waits)
        assert max(waits) - min(waits) > nominal * 0.1  # jittered, not constant
    assert [retry_delay(30, "exponential", n, rand=lambda: 0.5) for n in (1, 2, 3)] == [30, 60, 120]
    assert [retry_delay(30, "linear", n, rand=lambda: 0.5) for n in (1, 2, 3)] == [30, 60, 90]
    assert retry_delay(30, "exponential", 1, rand=lambda: 0.0) == pytest.approx(27)


def test_dagster_waits_what_the_policy_says(pg, conn, schema, archive_env):
    """Through Dagster's executor: the UI's "retrying in N seconds" is the doubled, jittered delay."""
    create_sample_events(conn, [DAY], rows_per_day=10, schema=schema)
    config = parse_config({"source": {"lock_timeout_ms": 100},
                           "retry": {"max_retries": 2, "delay_seconds": 0.2, "backoff": "exponential"},
                           "tables": [{"name": f"{schema}.events", "day_column": "created_at",
                                       "start_date": DAY.isoformat()}]})
    defs = build_definitions(config)
    with pg.connect() as blocker, blocker.transaction(), instance_for_test() as instance:
        blocker.execute(sql.SQL("LOCK TABLE {}.events IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema)))
        result = defs.resolve_job_def(job_name(schema)).execute_in_process(
            partition_key=DAY.isoformat(), instance=instance, raise_on_error=False)
        waits = [e.dagster_event.event_specific_data.seconds_to_wait for e in instance.all_logs(result.run_id)
                 if e.dagster_event and e.dagster_event.event_type == DagsterEventType.STEP_UP_FOR_RETRY]
    assert not result.success and len(waits) == 2
    assert 0.18 <= waits[0] <= 0.22 and 0.36 <= waits[1] <= 0.44
    error = result.failure_data_for_node(op_name(config.tables[0])).error
    assert error.message.startswith("Exceeded max_retries of 2")  # Dagster's words; ours are the cause
    cause = error.cause.message
    assert "lock timeout" in cause and "What to do" in cause and "retried" in cause
    assert "lock_timeout_ms" in cause  # which setting to change if it persists


def test_a_failure_says_what_to_do_with_run_config_that_works(conn, schema, archive_env):
    create_sample_events(conn, [DAY], rows_per_day=30, schema=schema)
    config = events_config(schema, DAY)
    defs = build_definitions(config)
    job = defs.resolve_job_def(job_name(schema))
    with instance_for_test() as instance:
        assert job.execute_in_process(partition_key=DAY.isoformat(), instance=instance).success
        conn.execute(sql.SQL("DELETE FROM {}.events WHERE id = 1").format(sql.Identifier(schema)))
        failed = job.execute_in_process(partition_key=DAY.isoformat(), instance=instance, raise_on_error=False)
        error = failed.failure_data_for_node(op_name(config.tables[0])).error
        assert error.cls_name == "Failure" and f"{schema}.events" in error.message and str(DAY) in error.message
        assert "What to do" in error.message and overwrite_run_config(config.tables[0]) in error.message
        assert error.cause is None  # the cause is in the message; no chained internal traceback
        # The run config the message gives is real: launching with it archives the day again.
        run_config = yaml.safe_load(overwrite_run_config(config.tables[0]))
        fixed = job.execute_in_process(partition_key=DAY.isoformat(), instance=instance, run_config=run_config)
        assert fixed.success and _meta(fixed)["dagster/row_count"] == 29


def test_on_demand_check_with_an_unreachable_store_names_table_day_and_cause(conn, schema, archive_env,
                                                                              monkeypatch):
    create_sample_events(conn, [DAY], rows_per_day=5, schema=schema)
    config = events_config(schema, DAY)
    with instance_for_test() as instance:
        assert build_definitions(config).resolve_job_def(job_name(schema)).execute_in_process(
            partition_key=DAY.isoformat(), instance=instance).success
        monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
        verify = build_definitions(config).resolve_job_def("verify_archives")
        result = verify.execute_in_process(instance=instance, raise_on_error=False)
        assert not result.success
        # (the step is retried, as the store's error says: Dagster's error then says "Exceeded max_retries",
        # and the description is ours)
        failures = {e.step_key: e.step_failure_data.user_failure_data.description for e in result.all_events
                    if e.event_type == DagsterEventType.STEP_FAILURE}
        message = failures[f"{op_name(config.tables[0])}_latest_archive_intact"]
        assert f"{schema}.events {DAY}: could not check the archive" in message
        assert "EndpointConnectionError" in message or "Could not connect" in message
        # Not an integrity verdict: no failed archive_intact for the day.
        assert {r.status.value for r in _check_records(instance, schema)} == {"SUCCEEDED"}


def _shipped_table(schema: str, start: dt.date) -> dict:
    """The shipped YAML's table settings, pointed at the test's schema."""
    raw = yaml.safe_load((REPO / "archive_tables.yaml").read_text())
    [table] = raw["tables"]
    assert table["name"] == "public.events"
    return {**raw, "tables": [{**table, "name": f"{schema}.events", "start_date": start.isoformat()}]}


def test_shipped_config_sensor_finds_a_ten_day_old_new_partition(pg, conn, schema, archive_env):
    """The demo's table as shipped: a child partition created today for a day 10 days ago is found."""
    today = utc_today()
    recent = [today - dt.timedelta(days=n) for n in (2, 1)]
    create_sample_events(conn, recent, rows_per_day=20, schema=schema)
    config = parse_config(_shipped_table(schema, today - dt.timedelta(days=60)))
    assert config.tables[0].partitioning.mode == "declarative"
    defs = build_definitions(config)
    repo = defs.get_repository_def()
    sensor = repo.get_sensor_def("archive_new_days")
    resources = {"postgres": PostgresResource(dsn=pg.dsn)}
    with instance_for_test() as instance:
        job = defs.resolve_job_def(job_name(schema))
        for day in recent:
            assert job.execute_in_process(partition_key=day.isoformat(), instance=instance).success

        def tick():
            return sensor.evaluate_tick(build_sensor_context(instance=instance, resources=resources,
                                                             repository_def=repo))

        idle = tick()
        assert idle.run_requests == []
        assert f"no new days to archive; inspected {schema}.events (declarative" in idle.skip_message
        assert "60 day(s)" in idle.skip_message and "58 without an archive, 0 of them with data" in idle.skip_message
        old = today - dt.timedelta(days=10)
        create_sample_events(conn, [old], rows_per_day=3, schema=schema)
        found = tick()
        assert [(r.partition_key, r.tags["archive/table"]) for r in found.run_requests] == [
            (old.isoformat(), f"{schema}.events")]


def test_column_mode_skip_reason_names_the_window(pg, conn, schema, archive_env):
    today = utc_today()
    create_sample_events(conn, [today - dt.timedelta(days=10)], rows_per_day=3, schema=schema)
    defs = build_definitions(events_config(schema, today - dt.timedelta(days=30)))
    repo = defs.get_repository_def()
    with instance_for_test() as instance:
        result = repo.get_sensor_def("archive_new_days").evaluate_tick(build_sensor_context(
            instance=instance, resources={"postgres": PostgresResource(dsn=pg.dsn)}, repository_def=repo))
    first = today - dt.timedelta(days=7)
    assert result.run_requests == []
    assert (f"{schema}.events (column: probed each day for rows; 7 day(s) {first}..{today - dt.timedelta(days=1)}"
            in result.skip_message)


@pytest.mark.parametrize("dsn", [
    "postgresql://archiver:s3cr3t-pw@127.0.0.1:notaport/db",  # malformed: libpq echoes it whole
    "postgresql://archiver:s3cr3t-pw@127.0.0.1:{port}/db",  # well-formed, nothing listening
])
def test_sensor_tick_error_never_holds_the_password(conn, schema, archive_env, dsn):
    create_sample_events(conn, [DAY], rows_per_day=1, schema=schema)
    defs = build_definitions(events_config(schema, DAY))
    repo = defs.get_repository_def()
    resources = {"postgres": PostgresResource(dsn=dsn.format(port=free_port()), connect_timeout_s=2)}
    with instance_for_test() as instance, pytest.raises(Exception) as raised:
        repo.get_sensor_def("archive_new_days").evaluate_tick(build_sensor_context(
            instance=instance, resources=resources, repository_def=repo))
    chain, exc = [], raised.value
    while exc is not None:
        chain.append(str(exc))
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    text = "\n".join(chain)
    assert "could not connect to the source database" in text and "ARCHIVE_PG_DSN" in text
    assert "s3cr3t-pw" not in text


def test_unreachable_database_at_load_warns_with_host_port_and_reason(schema, caplog):
    port = free_port()
    config = events_config(schema, DAY)
    with caplog.at_level(logging.WARNING, logger="archive_pipeline.definitions"):
        check_tables_exist(config, f"postgresql://archiver:s3cr3t-pw@127.0.0.1:{port}/db")
    [record] = caplog.records
    assert f"127.0.0.1:{port}" in record.getMessage()
    assert "refused" in record.getMessage() or "connect" in record.getMessage()
    assert "s3cr3t-pw" not in record.getMessage()


@pytest.mark.parametrize("missing", ["ARCHIVE_PG_DSN", "ARCHIVE_S3_BUCKET"])
def test_unset_connection_variable_fails_the_load_naming_it(monkeypatch, missing):
    monkeypatch.setenv("ARCHIVE_PG_DSN", "postgresql://nobody@127.0.0.1:1/x")
    monkeypatch.setenv("ARCHIVE_S3_BUCKET", "b")
    monkeypatch.delenv(missing)
    config = load_config(REPO / "archive_tables.yaml")
    with pytest.raises(Exception, match=rf"{missing}: ") as raised:
        build_definitions(config, check_source=False)
    assert "not set" in str(raised.value)
    # Tests and the demo pass resources themselves; then nothing is required of the environment.
    build_definitions(config, resources={"postgres": PostgresResource(dsn="x"),
                                         "archive_store": ArchiveStoreResource(s3=S3Resource(), bucket="b")},
                      check_source=False)


def test_an_empty_day_is_recorded_as_empty_not_missing(conn, schema, archive_env, s3_client):
    create_sample_events(conn, [DAY], rows_per_day=5, schema=schema)
    empty_day = DAY + dt.timedelta(days=1)  # no child partition, no rows
    defs = build_definitions(events_config(schema, DAY))
    with instance_for_test() as instance:
        result = defs.resolve_job_def(job_name(schema)).execute_in_process(partition_key=empty_day.isoformat(),
                                                                           instance=instance)
        [event] = result.get_asset_materialization_events()
        meta = _meta(result)
        assert event.materialization.tags["archive/state"] == "empty"
        assert meta["state"] == "empty" and meta["dagster/row_count"] == 0
        assert meta["summary"].startswith(f"{empty_day}: no rows") and "no data object" in meta["summary"]
        assert meta["object"].endswith(".manifest.json")  # the link opens what exists: the manifest
        [check] = [e.asset_check_evaluation_data for e in result.all_events
                   if e.event_type == DagsterEventType.ASSET_CHECK_EVALUATION]
        assert check.passed and check.partition == empty_day.isoformat() and "empty" in check.description
    keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket=archive_env).get("Contents", [])}
    assert keys == {f"archive/{schema}.events/2024/03/{empty_day}.jsonl.zst.manifest.json"}


def test_source_changed_after_archiving_is_flagged_on_demand(conn, schema, archive_env):
    create_sample_events(conn, [DAY, DAY + dt.timedelta(days=1)], rows_per_day=20, schema=schema)
    config = events_config(schema, DAY)
    defs = build_definitions(config)
    job = defs.resolve_job_def(job_name(schema))
    with instance_for_test() as instance:
        for day in (DAY, DAY + dt.timedelta(days=1)):
            assert job.execute_in_process(partition_key=day.isoformat(), instance=instance).success
        verify = defs.resolve_job_def("verify_archives")
        clean = {e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data
                 for e in verify.execute_in_process(instance=instance).all_events
                 if e.event_type == DagsterEventType.ASSET_CHECK_EVALUATION}
        assert clean["source_unchanged"].passed and "2 archived days still match" in clean["source_unchanged"].description
        # Same row count, different content: only a content fingerprint sees it.
        conn.execute(sql.SQL("UPDATE {}.events SET event_type = 'edited' WHERE id = 3 AND created_at < %s").format(
            sql.Identifier(schema)), (DAY + dt.timedelta(days=1),))
        result = verify.execute_in_process(instance=instance, raise_on_error=False)
        changed = {e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data for e in result.all_events
                   if e.event_type == DagsterEventType.ASSET_CHECK_EVALUATION}["source_unchanged"]
        assert not changed.passed
        assert f"1 of 2 archived days changed" in changed.description and f"{DAY}:" in changed.description
        assert overwrite_run_config(config.tables[0]) in changed.description
        assert changed.metadata["changed_days"].value == [DAY.isoformat()]
        # The archive itself is still intact: its day's integrity check stays green.
        assert {(r.partition, r.status.value) for r in _check_records(instance, schema)} == {
            (DAY.isoformat(), "SUCCEEDED"), ((DAY + dt.timedelta(days=1)).isoformat(), "SUCCEEDED")}


def test_deep_check_proves_content_and_is_blocking(conn, schema, archive_env):
    create_sample_events(conn, [DAY], rows_per_day=200, schema=schema)
    config = events_config(schema, DAY, deep_check=True)
    defs = build_definitions(config)
    check_def = next(c for c in defs.asset_checks if "archive_intact" in {k.name for k in c.check_keys})
    assert next(iter(check_def.check_specs)).blocking
    with instance_for_test() as instance:
        result = defs.resolve_job_def(job_name(schema)).execute_in_process(partition_key=DAY.isoformat(),
                                                                           instance=instance)
        [check] = [e.asset_check_evaluation_data for e in result.all_events
                   if e.event_type == DagsterEventType.ASSET_CHECK_EVALUATION]
        assert check.passed and check.blocking and "content proven" in check.description
        assert _meta(result)["verified"].startswith("content proven")


def test_a_failed_deep_check_blocks_and_marks_the_archive_not_proven(conn, schema, archive_env, s3, s3_client,
                                                                    monkeypatch):
    """A byte flipped on the way proves nothing: the run is retried and the archive proven. An object
    damaged in the store (replaced while the proof's download waits) fails the blocking check."""
    import threading

    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

    create_sample_events(conn, [DAY], rows_per_day=300, schema=schema)
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")  # only our own digests judge
    monkeypatch.setenv("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")
    with FaultProxy(s3.endpoint_url) as proxy:
        monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", proxy.url)
        proxy.add(Fault(method="GET", path=r"\.jsonl\.zst$", action="flip_response_byte"))
        defs = build_definitions(events_config(schema, DAY, deep_check=True))
        with instance_for_test() as instance:
            result = defs.resolve_job_def(job_name(schema)).execute_in_process(
                partition_key=DAY.isoformat(), instance=instance, raise_on_error=False)
            assert proxy.requests(method="GET", path=r"\.jsonl\.zst$")  # the proof did read the object
            # the first attempt judged nothing; its retry does the day again (its check had not run), finds
            # the archive identical and proves it
            attempts = [m.metadata["verified"].value for m in run_materializations(instance, result.run_id)]
            assert len(attempts) == 2 and attempts[0].startswith("not verified: "), attempts
            assert "nothing was proven" in attempts[0] and attempts[1].startswith("content proven"), attempts
            assert DagsterEventType.STEP_UP_FOR_RETRY in [e.event_type for e in result.all_events]
            assert result.success
            assert [r.status.value for r in _check_records(instance, schema)] == ["SUCCEEDED"]
        proxy.clear()
        key = f"archive/{schema}.events/2024/03/2024-03-10.jsonl.zst"
        body = bytearray(s3_client.get_object(Bucket=archive_env, Key=key)["Body"].read())
        body[len(body) // 2] ^= 0x01
        held = proxy.add(Fault(method="GET", path=r"\.jsonl\.zst$", action="hold", times=1))
        outcome = {}
        with instance_for_test() as instance:
            run = threading.Thread(target=lambda: outcome.update(result=defs.resolve_job_def(
                job_name(schema)).execute_in_process(partition_key=DAY.isoformat(), instance=instance,
                                                     raise_on_error=False)))
            run.start()
            try:
                assert proxy.wait_held(1)  # the proof's download waits; meanwhile the stored object is damaged
                s3_client.put_object(Bucket=archive_env, Key=key, Body=bytes(body))
            finally:
                held.gate.set()
                run.join(120)
            result = outcome["result"]
            assert not result.success
            [check] = run_check_evaluations(instance, result.run_id)
            assert not check.passed and check.blocking and "md5" in check.description.lower()
            assert "is damaged" in check.description
            [materialization] = run_materializations(instance, result.run_id)
            assert materialization.metadata["verified"].value.startswith("NOT proven: ")
            error = result.failure_data_for_node(op_name(events_config(schema, DAY).tables[0])).error
            assert "NOT proven, so the run fails (deep_check is blocking)" in error.message and "2024-03-10" in error.message
            assert [(r.partition, r.status.value) for r in _check_records(instance, schema)] == [
                (DAY.isoformat(), "FAILED")]


def test_archive_intact_run_alone_for_a_day_rechecks_that_day(conn, schema, archive_env, s3_client):
    """As the UI runs a partitioned check on its own (the implicit asset job, check selected, one day)."""
    days = [DAY, DAY + dt.timedelta(days=1)]
    create_sample_events(conn, days, rows_per_day=50, schema=schema)
    config = events_config(schema, DAY)
    defs = build_definitions(config)
    check_key = AssetCheckKey(asset_key(config.tables[0]), "archive_intact")
    with instance_for_test() as instance:
        for day in days:
            assert defs.resolve_job_def(job_name(schema)).execute_in_process(partition_key=day.isoformat(),
                                                                             instance=instance).success
        s3_client.put_object(Bucket=archive_env, Key=f"archive/{schema}.events/2024/03/{days[1]}.jsonl.zst",
                             Body=b"replaced")
        only_check = defs.resolve_implicit_global_asset_job_def().get_subset(asset_check_selection={check_key},
                                                                            asset_selection=set())
        for day in days:
            only_check.execute_in_process(partition_key=day.isoformat(), instance=instance, raise_on_error=False)
        latest = {}
        for record in reversed(_check_records(instance, schema)):  # oldest first: the last one wins
            latest[record.partition] = record.status.value
        assert latest == {days[0].isoformat(): "SUCCEEDED", days[1].isoformat(): "FAILED"}
        [failed] = [r for r in _check_records(instance, schema) if r.status.value == "FAILED"]
        description = failed.event.dagster_event.event_specific_data.description
        assert description.startswith(f"{days[1]}: NOT intact") and "size" in description
