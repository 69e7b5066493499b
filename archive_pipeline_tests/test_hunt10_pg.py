"""Hunt 10 pg: what a Dagster operator sees, taken literally (issue #13)."""

from __future__ import annotations

import datetime as dt
import re

from dagster import build_schedule_context, build_sensor_context, instance_for_test

from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.assets import asset_key
from archive_pipeline.defs.resources import PostgresResource
from archive_pipeline_tests.conftest import utc_today


def _repo(monkeypatch, tables: list[dict]):
    monkeypatch.setenv("ARCHIVE_PG_DSN", "postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("ARCHIVE_S3_BUCKET", "bucket")
    config = parse_config({"tables": tables})
    return config, build_definitions(config, check_source=False).get_repository_def()


def test_naming_mode_asset_description_names_no_none_column(monkeypatch):
    """A legacy one-table-per-day table (partitioning mode naming, no day_column: optional there, README "Three
    ways a day exists") is configured. The asset's page in the UI says "each partition holds the rows with `None`
    in that day": a column named None that does not exist. It should say what a partition holds: the whole day's
    table (events_YYYYMMDD), as the README says ("The day's table is archived whole")."""
    config, repo = _repo(monkeypatch, [{"name": "public.events", "start_date": "2024-01-01",
                                        "partitioning": {"mode": "naming", "pattern": "events_%Y%m%d"}}])
    node = repo.asset_graph.get(asset_key(config.tables[0]))
    assert "`None`" not in node.description, node.description
    assert "events_%Y%m%d" in node.description or "day's table" in node.description, node.description


def test_hourly_and_monthly_asset_descriptions_do_not_say_one_object_per_day(monkeypatch):
    """An hourly and a monthly table are configured (README "Periods and time zones": an hourly table has one
    object per hour, a monthly one one per month). The asset's page says "(one object per day; an empty day is a
    manifest alone)" for both: an operator expecting 30 objects for a month of an hourly table finds 720, and a
    monthly table's single object reads as a month of missing days. It should name the table's own period."""
    config, repo = _repo(monkeypatch, [
        {"name": "public.hr", "day_column": "at", "granularity": "hourly", "start_date": "2024-01-01"},
        {"name": "public.mo", "day_column": "at", "granularity": "monthly", "start_date": "2024-01-01"}])
    for spec, unit in zip(config.tables, ("hour", "month"), strict=True):
        description = repo.asset_graph.get(asset_key(spec)).description
        assert "one object per day" not in description, description
        assert f"one object per {unit}" in description, description


def test_schedule_description_of_a_monthly_table_does_not_say_yesterday(monkeypatch):
    """A monthly table's schedule (archive_public_mo_daily) is shown in the UI as "Archives yesterday's rows of
    public.mo at 01:00 UTC." Its ticks do not: on 2024-03-15 it requests nothing (no month ended the day before),
    and on 2024-03-01 it requests the whole of February. The description should say what the tick requests
    (the month that ended), not yesterday's rows."""
    config, repo = _repo(monkeypatch, [{"name": "public.mo", "day_column": "at", "granularity": "monthly",
                                        "start_date": "2024-01-01"}])
    schedule = repo.get_schedule_def("archive_public_mo_daily")
    mid = schedule.evaluate_tick(build_schedule_context(
        scheduled_execution_time=dt.datetime(2024, 3, 15, 1, 0, tzinfo=dt.UTC), repository_def=repo))
    start = schedule.evaluate_tick(build_schedule_context(
        scheduled_execution_time=dt.datetime(2024, 3, 1, 1, 0, tzinfo=dt.UTC), repository_def=repo))
    assert mid.run_requests == [] and [r.partition_key for r in start.run_requests] == ["2024-02-01"]
    assert "yesterday" not in schedule.description, schedule.description


def test_sensor_tick_counts_an_hourly_tables_hours_as_hours(pg, conn, schema, archive_env):
    """An hourly column-mode table with sensor.lookback_days 2 has no new rows. The sensor's tick in the UI says
    "probed each day for rows; 48 day(s) <yesterday-1>-00:00..<yesterday>-23:00, 48 without an archive": 48
    hours counted and named as days, so an operator reads that 48 days were looked at (and 48 of them lack an archive). The
    account of what was inspected (issue #13: "the skip reason names what was inspected") should count the
    table's periods as what they are: 48 hours (probed each hour)."""
    today = utc_today()
    conn.execute(f"CREATE TABLE {schema}.hr (id int, at timestamptz)")
    config = parse_config({"sensor": {"lookback_days": 2}, "tables": [
        {"name": f"{schema}.hr", "day_column": "at", "granularity": "hourly",
         "start_date": (today - dt.timedelta(days=5)).isoformat()}]})
    repo = build_definitions(config).get_repository_def()
    sensor = repo.get_sensor_def("archive_new_days")
    with instance_for_test() as instance:
        result = sensor.evaluate_tick(build_sensor_context(
            instance=instance, resources={"postgres": PostgresResource(dsn=pg.dsn)}, repository_def=repo))
    assert result.run_requests == []
    assert "48 day(s)" not in result.skip_message and "each day" not in result.skip_message, result.skip_message
    # (48 hours of the lookback, and today's hours that have ended: the tick counts every period over by then)
    counted = int(re.search(r"(\d+) hour\(s\)", result.skip_message).group(1))
    assert 48 <= counted <= 72, result.skip_message
