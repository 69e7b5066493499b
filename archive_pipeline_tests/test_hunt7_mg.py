"""Hunt 7 (mg): what a Dagster operator sees and does, through Dagster's own APIs (jobs run in process with a
test instance, checks and partition status read back from it) against the real PostgreSQL and S3."""

from __future__ import annotations

import datetime as dt

from dagster import DagsterEventType, instance_for_test

from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.conftest import utc_today
from archive_pipeline_tests.test_hunt4_tt import _failures, _range
from archive_pipeline_tests.helpers import run_check_evaluations

ORIGIN = "attributes of /srv/project/defs/archive/defs.yaml"


def test_a_removal_refused_as_not_due_names_where_the_tables_were_configured(conn, schema, archive_env):
    """The tables come from a Component's inline attributes (or ``build_definitions(load_config("x.yaml"))``):
    the configuration's origin, which every archive failure names ("... in attributes of .../defs.yaml").
    A person materializes the removal of a day retention still keeps. The run fails saying "To remove it
    sooner, lower retention.keep_days for the table in archive_tables.yaml": a file this project does not
    have (or another code location's), so the person edits the wrong file, or finds none. The removal asset
    builds its words from ``config_path()`` instead of the configuration's origin (it should name ORIGIN)."""
    today = utc_today()
    day = today - dt.timedelta(days=1)
    create_sample_events(conn, [day], rows_per_day=3, schema=schema)
    config = parse_config({"retry": {"max_retries": 0}, "tables": [
        {"name": f"{schema}.events", "day_column": "created_at", "start_date": day.isoformat(),
         "retention": {"keep_days": 30, "action": "delete"}}]}, ORIGIN)
    defs = build_definitions(config)
    with instance_for_test() as instance:
        result = defs.resolve_job_def(f"Remove_{schema}_events").execute_in_process(
            instance=instance, partition_key=day.isoformat(), raise_on_error=False)
        [message] = _failures(instance, result.run_id)
    assert "keep_days" in message
    assert ORIGIN in message and "archive_tables.yaml" not in message, message


def test_the_on_demand_checks_after_a_granularity_change_neither_crash_unnamed_nor_retry(conn, schema, archive_env):
    """README (Periods and time zones): a table's ``granularity`` may be changed later; it gets new partitions,
    and Dagster keeps the old ones' materializations. A daily table with 2024-03-10 archived is made hourly; the
    person runs ``verify_archives``. Both on-demand checks read the latest materialized partition keys, which are
    the old daily ones, and parse them as hourly keys outside their error handling: each check's step dies with
    a bare ``PeriodError`` ("'2024-03-10' is not an hourly partition key"), which the RetryPolicy retries as if
    transient (by default 3 times over 3.5 minutes) and Dagster finally reports as "Exceeded max_retries of N":
    no table, no remedy. Should: the old daily partition is not read as one of the table's hours (left out, or
    named as a partition of the former granularity), and the checks give a verdict or a non-retried failure
    naming the table."""
    day = dt.date(2024, 3, 10)
    create_sample_events(conn, [day], rows_per_day=3, schema=schema)
    table = {"name": f"{schema}.events", "day_column": "created_at", "start_date": day.isoformat()}
    retry = {"max_retries": 1, "delay_seconds": 0}
    daily = parse_config({"retry": retry, "tables": [table]})
    hourly = parse_config({"retry": retry, "tables": [{**table, "granularity": "hourly"}]})
    with instance_for_test() as instance:
        assert build_definitions(daily).resolve_job_def(f"Archive_{schema}_events").execute_in_process(
            instance=instance, partition_key=day.isoformat()).success
        result = build_definitions(hourly).resolve_job_def("verify_archives").execute_in_process(
            instance=instance, raise_on_error=False)
        retried = [e.step_key for e in result.all_events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY]
        failures = {e.step_key: (e.step_failure_data.user_failure_data.description
                                 if e.step_failure_data.user_failure_data else e.step_failure_data.error.message)
                    for e in result.all_events if e.is_step_failure}
    assert not retried, (retried, failures)
    assert all(f"{schema}.events" in text for text in failures.values()), failures


def test_source_unchanged_of_an_hourly_table_compares_the_latest_days_not_the_latest_seven_hours(
        conn, schema, archive_env):
    """README (checks): ``source_unchanged`` "compares the source's fingerprint of the latest archived days (run
    config ``days``, default 7)"; its run config says "how many of the latest archived days to compare". An hourly
    table has 2024-03-10 and the first two hours of 2024-03-11 archived (one ranged backfill run). A row is then
    loaded late into 2024-03-10's 05:00 hour, the day before the latest archived one. The person runs
    ``verify_archives`` with the defaults: the check passes ("the source of 7 archived days still matches"),
    because it took the 7 latest *partitions*: 7 hours, 2024-03-10 19:00 to 2024-03-11 01:00 (and ``days`` is
    capped at 366, 15 days of hours). Should: the latest 7 days' hours are compared, and the changed hour
    fails the check, named."""
    from psycopg import sql

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz NOT NULL)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, '2024-03-10 00:30+00'::timestamptz + g * interval '1 hour' "
                         "FROM generate_series(0, 25) g").format(s))
    config = parse_config({"retry": {"max_retries": 0}, "backfill": {"max_days_per_run": 50}, "tables": [
        {"name": f"{schema}.ev", "day_column": "at", "start_date": "2024-03-10", "granularity": "hourly"}]})
    defs = build_definitions(config)
    with instance_for_test() as instance:
        assert defs.resolve_job_def(f"Archive_{schema}_ev").execute_in_process(
            instance=instance, tags=_range("2024-03-10-00:00", "2024-03-11-01:00")).success
        conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (999, '2024-03-10 05:10+00')").format(s))
        result = defs.resolve_job_def("verify_archives").execute_in_process(instance=instance, raise_on_error=False)
        [evaluation] = [e.event_specific_data for e in result.all_events
                        if e.event_type == DagsterEventType.ASSET_CHECK_EVALUATION
                        and e.event_specific_data.check_name == "source_unchanged"]
    assert not evaluation.passed, evaluation.description
    assert "2024-03-10-05:00" in evaluation.description, evaluation.description


def test_source_unchanged_after_a_timezone_change_does_not_report_rows_changed_in_postgresql(
        conn, schema, archive_env):
    """README (Periods and time zones): a table's ``timezone`` may be changed later; a daily table keeps
    ``2024-03-10`` as partition key, and an archive run then "finds the old period's archive at the new period's
    key and refuses it, naming both (... holds the daily period 2024-03-10 in UTC, and the table is now
    configured as daily in Europe/Berlin ...)". A UTC table with 2024-03-10 archived (24 rows, one an hour) is
    moved to Europe/Berlin; nothing in PostgreSQL changes. ``verify_archives``: ``source_unchanged`` fails saying
    "1 of 1 archived days changed in PostgreSQL after archiving: 2024-03-10: the source has 23 rows for
    2024-03-10 now, the archive 24", an untrue cause (the rows are all there; the archive holds another period),
    which sends the person looking for who edited the table. The manifest records its granularity, zone and
    period: the check should say, as the archive run does, that the archive holds the UTC period and the table is
    now configured in Europe/Berlin."""
    day = dt.date(2024, 3, 10)
    create_sample_events(conn, [day, day + dt.timedelta(days=1)], rows_per_day=24, schema=schema)
    table = {"name": f"{schema}.events", "day_column": "created_at", "start_date": day.isoformat()}
    with instance_for_test() as instance:
        assert build_definitions(parse_config({"tables": [table]})).resolve_job_def(
            f"Archive_{schema}_events").execute_in_process(instance=instance, partition_key=day.isoformat()).success
        berlin = build_definitions(parse_config({"tables": [{**table, "timezone": "Europe/Berlin"}]}))
        result = berlin.resolve_job_def("verify_archives").execute_in_process(instance=instance, raise_on_error=False)
        [evaluation] = [e.event_specific_data for e in result.all_events
                        if e.event_type == DagsterEventType.ASSET_CHECK_EVALUATION
                        and e.event_specific_data.check_name == "source_unchanged"]
    assert "Europe/Berlin" in evaluation.description, evaluation.description


def test_executing_archive_proven_alone_proves_a_day_retention_still_keeps(conn, schema, archive_env):
    """README (retention): "*Execute* on ``archive_proven`` alone proves the day and removes nothing". A table with
    ``retention: {keep_days: 30}``; yesterday is archived. Before trusting retention, the person executes
    ``archive_proven`` alone for yesterday (the check's *Execute*, no removal). The run fails before proving
    anything: "... is kept: retention keeps the last 30 days; nothing removed. To remove it sooner, lower
    retention.keep_days" (advice to delete data sooner, for a request to prove), and the check, planned and never
    evaluated, is left as "Execution failed" for the day: red, like a failed proof, on an archive nobody proved.
    Nothing is removed either way, so the due-date refusal belongs to the removal: the proof should run and
    record its verdict for the day (here: proven)."""
    from dagster import AssetCheckKey

    from archive_pipeline.defs.retention_assets import removal_asset_key

    day = utc_today() - dt.timedelta(days=1)
    create_sample_events(conn, [day], rows_per_day=3, schema=schema)
    config = parse_config({"retry": {"max_retries": 0}, "tables": [
        {"name": f"{schema}.events", "day_column": "created_at", "start_date": day.isoformat(),
         "retention": {"keep_days": 30, "action": "delete"}}]})
    defs = build_definitions(config)
    check = AssetCheckKey(removal_asset_key(config.tables[0]), "archive_proven")
    with instance_for_test() as instance:
        assert defs.resolve_job_def(f"Archive_{schema}_events").execute_in_process(
            instance=instance, partition_key=day.isoformat()).success
        prove_only = defs.resolve_implicit_global_asset_job_def().get_subset(asset_check_selection={check},
                                                                            asset_selection=set())
        result = prove_only.execute_in_process(instance=instance, partition_key=day.isoformat(), raise_on_error=False)
        failures = _failures(instance, result.run_id)
        evaluations = run_check_evaluations(instance, result.run_id)
    assert [(e.partition, e.passed) for e in evaluations] == [(day.isoformat(), True)], failures
