"""Configuration at and beyond its edges (from the Dagster hunt): each value that loads must also run,
and each value that cannot run is refused at load with the file, table and setting named."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from dagster import build_schedule_context, instance_for_test

from archive_pipeline.core.config import ConfigError, load_config, parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.resources import PostgresResource

GOOD = {"name": "public.events", "day_column": "created_at", "start_date": "2024-01-01"}


def test_statement_timeout_beyond_postgresql_limit_is_refused_at_load(conn):
    """source.statement_timeout_ms (and the other timeouts) have no upper bound, but PostgreSQL takes at
    most 2147483647 ms: a config with 3000000000 (a 'very long' timeout, ~35 days) loads, and then every
    archive run fails when its session is set up."""
    with pytest.raises(psycopg.errors.InvalidParameterValue):  # what every run then hits
        with conn.transaction():
            conn.execute("SET LOCAL statement_timeout = '3000000000'")
    with pytest.raises(ConfigError) as failure:
        parse_config({"source": {"statement_timeout_ms": 3_000_000_000}, "tables": [GOOD]})
    assert "setting 'source.statement_timeout_ms'" in str(failure.value)


def test_a_start_date_at_the_end_of_the_calendar_is_a_config_error_not_a_crash():
    """start_date 9999-12-31 passes validation, then loading the definitions dies with a bare
    'OverflowError: date value out of range' naming neither file, table nor setting."""
    try:
        config = parse_config({"tables": [{**GOOD, "start_date": "9999-12-31"}]})
    except ConfigError as exc:
        assert "table 'public.events', setting 'start_date'" in str(exc)
        return
    from archive_pipeline.defs.resources import ArchiveStoreResource
    from dagster_aws.s3 import S3Resource

    resources = {"postgres": PostgresResource(dsn="postgresql://nobody@127.0.0.1:1/x"),
                 "archive_store": ArchiveStoreResource(s3=S3Resource(), bucket="b")}
    try:
        build_definitions(config, resources, check_source=False)
    except ConfigError as exc:
        assert "start_date" in str(exc)
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"the load fails with {type(exc).__name__}: {exc} (no file, table or setting named)")


def test_infinite_retry_delay_is_refused():
    """retry.delay_seconds: .inf (YAML infinity) is accepted (ge=0 only), and the policy then asks Dagster
    to wait forever before the first retry."""
    from archive_pipeline.defs.assets import retry_policy

    try:
        config = parse_config({"retry": {"delay_seconds": float("inf")}, "tables": [GOOD]})
    except ConfigError as exc:
        assert "setting 'retry.delay_seconds'" in str(exc)
        return
    delay = retry_policy(config.retry).calculate_delay(1)
    pytest.fail(f"accepted; the first retry would wait {delay} s")


def test_retention_keep_days_very_large_does_not_crash_the_retention_schedule():
    """retention.keep_days has no upper bound: keep_days: 1000000 (meant as 'practically forever') loads,
    and then every tick of remove_<table>_daily dies with 'OverflowError: date value out of range'."""
    from archive_pipeline.defs.resources import ArchiveStoreResource
    from dagster_aws.s3 import S3Resource

    try:
        config = parse_config({"tables": [{**GOOD, "retention": {"keep_days": 1_000_000, "action": "delete"}}]})
    except ConfigError as exc:
        assert "setting 'retention.keep_days'" in str(exc)
        return
    resources = {"postgres": PostgresResource(dsn="postgresql://nobody@127.0.0.1:1/x"),
                 "archive_store": ArchiveStoreResource(s3=S3Resource(), bucket="b")}
    defs = build_definitions(config, resources, check_source=False)
    repo = defs.get_repository_def()
    schedule = repo.get_schedule_def("remove_public_events_daily")
    with instance_for_test() as instance:
        try:
            tick = schedule.evaluate_tick(build_schedule_context(
                instance=instance, scheduled_execution_time=dt.datetime(2024, 3, 12, 1, 30, tzinfo=dt.UTC),
                repository_def=repo))
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"the retention schedule's tick fails: {type(exc).__name__}: {exc}")
    assert tick.run_requests == []


def test_a_setting_given_twice_in_the_yaml_file_is_refused(tmp_path):
    """A table entry with start_date twice (a merge conflict, a copy-paste) loads: PyYAML keeps the last
    value silently, so the table archives from a start nobody reviewed."""
    path = tmp_path / "tables.yaml"
    path.write_text("tables:\n  - name: public.events\n    day_column: created_at\n    start_date: 2020-01-01\n"
                    "    format: jsonl\n    start_date: 2024-06-01\n")
    with pytest.raises(ConfigError) as failure:
        load_config(path)
    assert "start_date" in str(failure.value)


def test_a_boolean_is_not_taken_as_a_number_of_days_to_keep():
    """keep_days: yes (YAML true) is taken as keep_days 1: retention removes every proven day older than
    yesterday. parallel_streams refuses booleans; the other counts do not."""
    with pytest.raises(ConfigError) as failure:
        parse_config({"tables": [{**GOOD, "retention": {"keep_days": True, "action": "delete"}}]})
    assert "retention.keep_days" in str(failure.value)


def test_a_file_that_is_not_a_table_list_is_not_quoted_into_the_error(tmp_path):
    """$ARCHIVE_PIPELINE_CONFIG pointed at another file (a password file, say): its lines that end in ':' read as
    YAML keys, and each unknown key was quoted whole into the load error, which ends up in logs. A name that
    does not look like a setting is now said by its length only; a mistyped setting is still named."""
    secret = "root:$6$saltsalt$c2VjcmV0aGFzaA0123456789:19000:0:99999:7::"
    path = tmp_path / "tables.yaml"
    path.write_text(f"{secret}:\ntables:\n  - {{name: public.events, day_column: at, start_date: 2024-03-01, "
                    "fromat: csv}\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    text = str(raised.value)
    assert "c2VjcmV0aGFzaA" not in text and "saltsalt" not in text, text
    assert f"a setting of {len(secret)} characters" in text, text
    assert "'fromat'" in text and "did you mean 'format'" in text, text
