"""Hunt: time, periods and concurrency. Each test asserts the correct behaviour and fails on the bug."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.discovery import declarative_days
from archive_pipeline.core.periods import periods_overlapping
from archive_pipeline_tests.helpers import decompress, download, read_jsonl


def spec(**kw) -> TableSpec:
    return TableSpec(**{"name": "public.events", "day_column": "at", "start_date": "2024-01-01", **kw})


def _archived_ids(s3_client, bucket, result) -> list[int]:
    if result.empty:
        return []
    return sorted(r["id"] for r in read_jsonl(decompress(download(s3_client, bucket, result.key), "zstd")))


def test_timestamp_day_is_24_wall_clock_hours_where_dst_starts_at_midnight(conn, schema, store, s3_client, bucket):
    """README: a `timestamp` column's day is the local wall-clock day, "every day is 24 wall-clock hours".
    In Africa/Cairo the clocks go from 2024-04-26 00:00 to 01:00; a timestamp value of 2024-04-26 00:00
    (a date kept as a timestamp at midnight) is wall-clock 2024-04-26 and belongs in that day's archive,
    not in 2024-04-25's."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamp NOT NULL)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, '2024-04-25 12:00'), (2, '2024-04-26 00:00'), "
                         "(3, '2024-04-26 00:30'), (4, '2024-04-26 12:00'), (5, '2024-04-27 00:00')").format(s))
    table = spec(name=f"{schema}.ev", timezone="Africa/Cairo")
    before = archive_partition(conn, table, "2024-04-25", store)
    day = archive_partition(conn, table, "2024-04-26", store)
    assert (_archived_ids(s3_client, bucket, before), _archived_ids(s3_client, bucket, day)) == ([1], [2, 3, 4])


def test_a_catch_all_partition_bounded_by_infinity_does_not_break_every_day(conn, schema, store, s3_client, bucket):
    """A declarative table with a catch-all child FROM ('-infinity') TO (...) (or ... TO ('infinity')),
    a common layout for old or future rows: the daily children are still days to archive, like
    children bounded by MINVALUE / MAXVALUE. Now reading the bounds fails with psycopg's "timestamp too
    small (before year 1)" (an unexpected, not retried error) for every day of the table, and discovery
    (sensor, CLI list) raises a DataError, not an ArchiveError."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz) PARTITION BY RANGE (at)").format(s))
    for child, lo, hi in (("old", "-infinity", "2024-03-10 00:00+00"),
                          ("d10", "2024-03-10 00:00+00", "2024-03-11 00:00+00"),
                          ("future", "2024-03-11 00:00+00", "infinity")):
        conn.execute(sql.SQL("CREATE TABLE {}.{} PARTITION OF {}.ev FOR VALUES FROM ({}) TO ({})").format(
            s, sql.Identifier(child), s, sql.Literal(lo), sql.Literal(hi)))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, '2024-03-10 05:00+00'), (2, '2000-01-01+00'), "
                         "(3, '2030-01-01+00')").format(s))
    table = spec(name=f"{schema}.ev", partitioning={"mode": "declarative"})
    # (the children open on a side hold the table's days on that side, from start_date up to now: hunt 20 zi)
    today = table.period(dt.datetime.now(dt.UTC))
    assert [p.key for p in declarative_days(conn, table)] == [
        p.key for p in periods_overlapping("daily", "UTC", table.first_period.utc_start, today.utc_end)]
    result = archive_partition(conn, table, "2024-03-10", store)
    assert _archived_ids(s3_client, bucket, result) == [1]


def test_declarative_discovery_under_a_non_iso_datestyle_of_the_role(conn, schema):
    """The role's or database's DateStyle (ALTER ROLE ... SET DateStyle = 'SQL, DMY', common for UK/EU
    legacy applications) is the session default of the sensor's and the CLI's connection. The archive
    itself pins DateStyle ISO in its snapshot, but declarative discovery (``existing_days``: the sensor,
    ``list``, ``archive --dry-run``) reads the children's bounds in the session's style and fails with
    psycopg's "can't parse timestamptz with DateStyle 'SQL, DMY'" (a DataError, which the sensor does not
    catch per table, so one such table stops the whole tick)."""
    from archive_pipeline.core.discovery import existing_days
    from archive_pipeline_tests.helpers import range_partitioned_events

    range_partitioned_events(conn, schema, [("d10", "2024-03-10", "2024-03-11"), ("d11", "2024-03-11", "2024-03-12")],
                             "Europe/Berlin")
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, '2024-03-10 12:00+01'), (2, '2024-03-11 12:00+01')").format(
        sql.Identifier(schema)))
    conn.execute("SET DateStyle = 'SQL, DMY'")  # what ALTER ROLE/DATABASE ... SET DateStyle gives every session
    table = spec(name=f"{schema}.ev", partitioning={"mode": "declarative"}, timezone="Europe/Berlin")
    assert [p.key for p in existing_days(conn, table, ["2024-03-10", "2024-03-11", "2024-03-12"])] == \
        ["2024-03-10", "2024-03-11"]


def test_hourly_periods_tile_in_a_zone_whose_dst_shift_is_half_an_hour():
    """Australia/Lord_Howe moves its clocks by 30 minutes (02:00 -> 02:30 in October, 02:00 -> 01:30 in
    April). The table loaded as hourly, but the hour after 01:00 on 2024-10-06 was computed as
    '2024-10-06-01:30' [01:30+10:30, 03:00+11:00), overlapping '2024-10-06-01:00' by 30 minutes (rows
    of that half hour are in two periods), its key could not be parsed back, and Dagster's own keys for
    the half year after the change ('2024-10-06-02:30', ...) were refused as "not an hourly partition key".
    Dagster's keys cannot be matched: it names the same hours '2024-10-07-02:00' when the partitions
    start after the change and '2024-10-07-02:30' when they start before it. So such a zone is refused
    for hourly tables at load (naming the table, the setting and the zone); its days and months tile."""
    from archive_pipeline.core.config import ConfigError, parse_config

    zone = "Australia/Lord_Howe"
    with pytest.raises(ConfigError) as refused:
        parse_config({"tables": [{"name": "public.events", "day_column": "at", "start_date": "2024-01-01",
                                  "granularity": "hourly", "timezone": zone}]})
    assert "table 'public.events', setting 'granularity'" in str(refused.value) and zone in str(refused.value)
    for granularity in ("daily", "monthly"):
        parse_config({"tables": [{"name": "public.events", "day_column": "at", "start_date": "2024-01-01",
                                  "granularity": granularity, "timezone": zone}]})
    # A zone that moves its clocks by whole hours from an offset that is not whole hours is fine.
    parse_config({"tables": [{"name": "public.events", "day_column": "at", "start_date": "2024-01-01",
                              "granularity": "hourly", "timezone": "America/St_Johns"}]})


def test_hourly_naming_in_a_zone_that_had_dst_in_the_tables_years(conn, schema, store, s3_client, bucket):
    """Hourly naming tables need a zone without DST (one table name cannot hold both repeated hours);
    the load checks only the year 2024 (``has_dst(zone)``). America/Mexico_City dropped DST in late
    2022, so a table starting 2022-10-01 loads, and on 2022-10-30 the hour 01:00 repeats: both Dagster
    partitions ('2022-10-30-01:00' and '2022-10-30-01:00-0600') resolve to the same table
    events_2022103001, which is archived whole twice, so its rows are in two hourly archives.
    Correct: refused at load (the zone repeats an hour within the table's years), or each row archived
    in one period only."""
    from archive_pipeline.core.config import ConfigError, parse_config

    zone = "America/Mexico_City"
    table = {"name": f"{schema}.events", "day_column": None, "start_date": "2022-10-01", "granularity": "hourly",
             "timezone": zone, "partitioning": {"mode": "naming", "pattern": "events_%Y%m%d%H"}}
    try:
        config = parse_config({"tables": [table]})
    except ConfigError:
        return
    table_spec = config.tables[0]
    conn.execute(sql.SQL("CREATE TABLE {}.events_2022103001 (id int)").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("INSERT INTO {}.events_2022103001 VALUES (1), (2)").format(sql.Identifier(schema)))
    first = archive_partition(conn, table_spec, "2022-10-30-01:00", store)
    second = archive_partition(conn, table_spec, "2022-10-30-01:00-0600", store)
    assert first.rows + second.rows == 2, (first.key, second.key)


def test_archiving_a_declarative_day_leaves_the_callers_session_timezone_alone(conn, schema, store):
    """``child_ranges`` (and column-mode ``existing_days``) switch the caller's *session* TimeZone with
    ``set_config(..., false)`` / ``SET TimeZone = 'UTC'`` and never put back the one the session had:
    after archiving one day of a declarative table on a connection whose TimeZone is Europe/Berlin
    (a role default, or the caller's own SET), every later query of the caller prints timestamps in UTC.
    The archive's other settings are transaction-local (``set_config(..., true)``)."""
    from archive_pipeline_tests.helpers import range_partitioned_events

    range_partitioned_events(conn, schema, [("d10", "2024-03-10", "2024-03-11")])
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, '2024-03-10 05:00+00')").format(sql.Identifier(schema)))
    conn.execute("SET TimeZone = 'Europe/Berlin'")
    archive_partition(conn, spec(name=f"{schema}.ev", partitioning={"mode": "declarative"}), "2024-03-10", store)
    assert conn.execute("SHOW TimeZone").fetchone()[0] == "Europe/Berlin"


def test_a_month_before_the_year_1000_has_a_partition_key_that_parses_back():
    """Period keys and key-template fields format the year with strftime's %Y, which glibc does not pad:
    the monthly period of 0999-03 gets the key '999-03-01' (refused by parse_period, so the manifest's
    ``day`` cannot be read back) and ``{year}`` is '999' while ``{date}`` is '0999-03-01'."""
    from archive_pipeline.core.periods import parse_period

    month = parse_period("monthly", "UTC", "0999-03")
    assert month.key == "0999-03-01" and month.fields()["year"] == "0999"
    assert parse_period("monthly", "UTC", month.key) == month
