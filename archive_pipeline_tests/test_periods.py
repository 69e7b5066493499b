"""Hourly, daily and monthly partitions in a table's time zone: keys, bounds, DST days, round trips."""

from __future__ import annotations

import datetime as dt

import pytest
from dagster import DailyPartitionsDefinition, HourlyPartitionsDefinition, MonthlyPartitionsDefinition, \
    build_schedule_context, instance_for_test
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import ConfigError, TableSpec, parse_config
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.discovery import declarative_days, naming_days, source_table
from archive_pipeline.core.keys import table_day_key
from archive_pipeline.core.periods import PeriodError, parse_period
from archive_pipeline.core.plan import select_days
from archive_pipeline.core.restore import restore_day
from archive_pipeline.core.source import day_filter
from archive_pipeline.core.verify import load_manifest
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.assets import daily_partitions
from archive_pipeline_tests.helpers import decompress, download, range_partitioned_events, read_jsonl

BERLIN = "Europe/Berlin"


def spec(**kw) -> TableSpec:
    return TableSpec(**{"name": "public.events", "day_column": "at", "start_date": "2024-01-01", **kw})


# --- periods, keys and partition keys (no database) ------------------------------------------------

def test_partition_keys_are_dagsters_and_dst_days_are_23_and_25_hours():
    hourly = HourlyPartitionsDefinition(start_date="2024-10-26-00:00", end_date="2024-10-28-00:00", timezone=BERLIN)
    keys = hourly.get_partition_keys()
    assert "2024-10-27-02:00+0100" in keys  # Dagster names the repeated hour by its second offset
    assert [parse_period("hourly", BERLIN, k).key for k in keys] == keys
    first, second = (parse_period("hourly", BERLIN, k) for k in ("2024-10-27-02:00", "2024-10-27-02:00+0100"))
    assert first.utc_end == second.utc_start and first != second
    assert table_day_key(spec(granularity="hourly", timezone=BERLIN), second) == \
        "public.events/2024/10/2024-10-27/2024-10-27T02+0100.jsonl.zst"
    with pytest.raises(PeriodError, match="does not exist in Europe/Berlin"):
        parse_period("hourly", BERLIN, "2024-03-31-02:00")
    lengths = {d: (p.utc_end - p.utc_start) for d in ("2024-03-31", "2024-10-27", "2024-06-01")
               for p in [parse_period("daily", BERLIN, d)]}
    assert lengths == {"2024-03-31": dt.timedelta(hours=23), "2024-10-27": dt.timedelta(hours=25),
                       "2024-06-01": dt.timedelta(hours=24)}
    month = parse_period("monthly", BERLIN, "2024-03")
    assert month == parse_period("monthly", BERLIN, "2024-03-01") and month.key == "2024-03-01"
    assert table_day_key(spec(granularity="monthly", timezone=BERLIN), month) == "public.events/2024/2024-03.jsonl.zst"
    assert table_day_key(spec(), dt.date(2024, 3, 10)) == "public.events/2024/03/2024-03-10.jsonl.zst"  # unchanged


def test_partitions_definitions_follow_granularity_and_zone():
    for granularity, cls in (("hourly", HourlyPartitionsDefinition), ("daily", DailyPartitionsDefinition),
                             ("monthly", MonthlyPartitionsDefinition)):
        definition = daily_partitions(spec(granularity=granularity, timezone=BERLIN))
        assert isinstance(definition, cls) and definition.timezone == BERLIN
        key = definition.get_first_partition_key()
        window = definition.time_window_for_partition_key(key)
        assert spec(granularity=granularity, timezone=BERLIN).period(key).utc_start == window.start


def test_cli_selection_reads_days_hours_and_months_in_the_tables_zone():
    today = dt.date(2024, 12, 1)
    hours = select_days(spec(granularity="hourly", timezone=BERLIN), "2024-03-31", "2024-03-31", today=today)
    assert len(hours) == 23 and hours[0].key == "2024-03-31-00:00" and hours[2].key == "2024-03-31-03:00"
    months = select_days(spec(granularity="monthly"), "2024-03-15", "2024-04", today=today)
    assert [m.key for m in months] == ["2024-03-01", "2024-04-01"]
    assert select_days(spec(), "2024-03-10", "2024-03-11", today=today) == [dt.date(2024, 3, 10), dt.date(2024, 3, 11)]
    assert [m.key for m in select_days(spec(granularity="monthly"), "2024-10", None, today=today)] == \
        ["2024-10-01", "2024-11-01"]  # December is not over
    from archive_pipeline.defs.sensors import candidate_days  # the sensor's window: the same selection
    assert [p.key for p in candidate_days(spec(granularity="hourly"), today, 1)][::23] == \
        ["2024-11-30-00:00", "2024-11-30-23:00"]


@pytest.mark.parametrize("table, words", [
    ({"timezone": "Mars/Olympus"}, "setting 'timezone': unknown time zone 'Mars/Olympus'"),
    ({"granularity": "hourly", "key_template": "{prefix}/{schema}.{table}/{date}.{ext}"},
     "setting 'key_template': a hourly table's template must contain {date}, {hour} or"),
    ({"granularity": "monthly", "start_date": "2024-01-15"}, "setting 'start_date': a monthly table starts on the "
     "first day of a month"),
    ({"granularity": "hourly", "timezone": BERLIN, "day_column": None,
      "partitioning": {"mode": "naming", "pattern": "events_%Y%m%d%H"}}, "hourly tables in naming mode need a zone "
     "without daylight saving"),
    ({"granularity": "monthly", "day_column": None, "partitioning": {"mode": "naming", "pattern": "events_%Y"}},
     "must contain %Y and %m"),
    ({"granularity": "weekly"}, "setting 'granularity'"),
])
def test_bad_period_settings_are_refused_at_load(table, words):
    raw = {"tables": [{"name": "public.events", "day_column": "at", "start_date": "2024-01-01", **table}]}
    with pytest.raises(ConfigError, match="table 'public.events'") as failure:
        parse_config(raw, "tables.yaml")
    assert "tables.yaml" in str(failure.value) and words in str(failure.value)


def test_an_hourly_and_a_daily_table_whose_keys_collide_are_refused():
    raw = {"tables": [
        {"name": "a.ev", "day_column": "at", "start_date": "2024-01-01", "granularity": "hourly",
         "key_template": "x/{year}/{month}/{day}/{hour}.{ext}"},
        {"name": "b.ev", "day_column": "at", "start_date": "2024-01-01",
         "key_template": "x/{year}/{month}/{day}/{day}.{ext}"}]}
    with pytest.raises(ConfigError, match="tables 'a.ev' .* and 'b.ev' .* render the same object key"):
        parse_config(raw)


# --- on PostgreSQL and S3 --------------------------------------------------------------------------

def _events(conn, schema: str, column_type: str = "timestamptz", table: str = "events") -> None:
    conn.execute(sql.SQL("CREATE TABLE {}.{} (id int PRIMARY KEY, at {} NOT NULL, note text)").format(
        sql.Identifier(schema), sql.Identifier(table), sql.SQL(column_type)))


def _insert(conn, schema: str, rows: list[tuple[int, str]], table: str = "events") -> None:
    conn.cursor().executemany(sql.SQL("INSERT INTO {}.{} VALUES (%s, %s, 'r')").format(
        sql.Identifier(schema), sql.Identifier(table)), rows)


@pytest.mark.parametrize("day, next_day", [("2024-03-31", "2024-04-01"), ("2024-10-27", "2024-10-28")])
def test_a_dst_day_in_berlin_is_archived_exactly(conn, schema, store, s3_client, bucket, day, next_day):
    _events(conn, schema)
    _insert(conn, schema, [(1, f"{day} 00:00 Europe/Berlin"), (2, f"{day} 23:59:59.999999 Europe/Berlin"),
                           (3, f"{next_day} 00:00 Europe/Berlin"), (4, f"{day} 00:00 Europe/Berlin")])
    conn.execute(sql.SQL("UPDATE {}.events SET at = at - interval '1 microsecond' WHERE id = 4").format(
        sql.Identifier(schema)))
    table = spec(name=f"{schema}.events", timezone=BERLIN)
    result = archive_partition(conn, table, day, store)
    assert sorted(r["id"] for r in read_jsonl(decompress(download(s3_client, bucket, result.key), "zstd"))) == [1, 2]
    manifest = load_manifest(store, table_day_key(table, day, store.prefix))
    hours = {"2024-03-31": 23, "2024-10-27": 25}[day]
    period = manifest["period"]
    assert (manifest["day"], manifest["granularity"], manifest["timezone"]) == (day, "daily", BERLIN)
    assert (dt.datetime.fromisoformat(period["end"]) - dt.datetime.fromisoformat(period["start"])).total_seconds() \
        == hours * 3600


def test_timestamp_columns_are_wall_clock_time_in_the_zone(conn, schema):
    _events(conn, schema, "timestamp")
    _insert(conn, schema, [(1, "2024-10-27 01:59"), (2, "2024-10-27 02:00"), (3, "2024-10-27 02:59:59"),
                           (4, "2024-10-27 03:00"), (5, "2024-10-26 23:59"), (6, "2024-10-27 23:59")])
    hourly = spec(name=f"{schema}.events", timezone=BERLIN, granularity="hourly")
    daily = spec(name=f"{schema}.events", timezone=BERLIN)

    def ids(table_spec, key):
        where = day_filter(source_table(conn, table_spec, key), table_spec.period(key))
        return [r[0] for r in conn.execute(sql.SQL("SELECT id FROM {}.events WHERE {} ORDER BY id").format(
            sql.Identifier(schema), where))]

    assert ids(hourly, "2024-10-27-02:00") == []  # wall-clock 02:xx cannot say which occurrence: the second
    assert ids(hourly, "2024-10-27-02:00+0100") == [2, 3]
    assert ids(daily, "2024-10-27") == [1, 2, 3, 4, 6]


def test_an_hourly_table_round_trips_through_restore(conn, schema, store):
    _events(conn, schema)
    _insert(conn, schema, [(1, "2024-10-27 00:59:59+00"), (2, "2024-10-27 01:00+00"), (3, "2024-10-27 01:30+00"),
                           (4, "2024-10-27 02:00+00")])
    table = spec(name=f"{schema}.events", timezone=BERLIN, granularity="hourly", format="csv", compression="gzip")
    first, second = archive_partition(conn, table, "2024-10-27-02:00", store), \
        archive_partition(conn, table, "2024-10-27-02:00+0100", store)
    assert (first.rows, second.rows) == (1, 2) and first.key != second.key
    assert second.key.endswith("/2024-10-27/2024-10-27T02+0100.csv.gz")
    restored = restore_day(conn, store, table, "2024-10-27-02:00+0100", into="new", target=f"{schema}.back")
    assert restored.fingerprint_checked and restored.rows == 2
    assert [r[0] for r in conn.execute(sql.SQL("SELECT id FROM {}.back ORDER BY id").format(
        sql.Identifier(schema)))] == [2, 3]
    assert archive_partition(conn, table, "2024-10-27-02:00+0100", store).skipped  # found again by its key


def test_a_monthly_declarative_child_is_one_monthly_object(conn, schema, store, s3_client, bucket):
    s = sql.Identifier(schema)
    range_partitioned_events(conn, schema, [("ev_2024_02", "2024-02-01", "2024-03-01"),
                                            ("ev_0301", "2024-03-01", "2024-03-02"),
                                            ("ev_0302", "2024-03-02", "2024-03-03")], BERLIN, not_null=True)
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, '2024-02-01 00:00 Europe/Berlin'::timestamptz + g * "
                         "interval '8 hours' FROM generate_series(0, 92) g").format(s))  # 87 in February (29 days), 6 on March 1
    table = spec(name=f"{schema}.ev", timezone=BERLIN, granularity="monthly", partitioning={"mode": "declarative"})
    assert [p.key for p in declarative_days(conn, table)] == ["2024-02-01", "2024-03-01"]
    result = archive_partition(conn, table, "2024-02-01", store)
    assert result.key.endswith(f"{schema}.ev/2024/2024-02.jsonl.zst")
    rows = read_jsonl(decompress(download(s3_client, bucket, result.key), "zstd"))
    assert len(rows) == result.rows == 87
    manifest = load_manifest(store, result.key)
    assert manifest["table_definition"]["partition"]["child"] == f"{schema}.ev_2024_02"
    with pytest.raises(ConfigError):
        parse_config({"tables": [{"name": "public.ev", "day_column": "at", "start_date": "2024-02-01",
                                  "granularity": "monthly", "key_template": "{prefix}/{table}/{year}.{ext}"}]})


def test_monthly_naming_tables(conn, schema):
    for name in ("ev_202402", "ev_202403", "ev_20240"):
        conn.execute(sql.SQL("CREATE TABLE {}.{} (id int)").format(sql.Identifier(schema), sql.Identifier(name)))
    table = spec(name=f"{schema}.ev", day_column=None, granularity="monthly",
                 partitioning={"mode": "naming", "pattern": "ev_%Y%m"})
    assert [p.key for p in naming_days(conn, table)] == ["2024-02-01", "2024-03-01"]


def test_hourly_and_monthly_partitions_materialize_and_are_scheduled(conn, schema, archive_env, s3_client):
    _events(conn, schema)
    _insert(conn, schema, [(1, "2024-03-10 05:10+00"), (2, "2024-03-10 05:50+00"), (3, "2024-03-10 06:00+00")])
    _events(conn, schema, table="monthly")
    _insert(conn, schema, [(1, "2024-03-31 21:30+00"), (2, "2024-03-31 22:00+00")], table="monthly")  # 23:30, 00:00 CEST
    config = parse_config({"retry": {"max_retries": 0, "delay_seconds": 0}, "tables": [
        {"name": f"{schema}.events", "day_column": "at", "start_date": "2024-03-01", "granularity": "hourly"},
        {"name": f"{schema}.monthly", "day_column": "at", "start_date": "2024-01-01", "granularity": "monthly",
         "timezone": BERLIN}]})
    defs = build_definitions(config)
    with instance_for_test() as instance:
        for job, key, rows in ((f"Archive_{schema}_events", "2024-03-10-05:00", 2),
                               (f"Archive_{schema}_monthly", "2024-03-01", 1)):
            result = defs.resolve_job_def(job).execute_in_process(partition_key=key, instance=instance)
            assert result.success
            [event] = result.get_asset_materialization_events()
            meta = {k: v.value for k, v in event.materialization.metadata.items()}
            assert event.partition == key and meta["dagster/row_count"] == rows
    body = download(s3_client, archive_env, f"archive/{schema}.events/2024/03/2024-03-10/2024-03-10T05.jsonl.zst")
    assert [r["id"] for r in read_jsonl(decompress(body, "zstd"))] == [1, 2]
    repo = defs.get_repository_def()

    def requested(job: str, at: dt.datetime) -> list[str]:
        tick = repo.get_schedule_def(f"{job}_daily").evaluate_tick(build_schedule_context(
            scheduled_execution_time=at, repository_def=repo))
        return [r.partition_key for r in tick.run_requests]

    hours = requested(f"archive_{schema}_events", dt.datetime(2024, 4, 2, 1, tzinfo=dt.UTC))
    assert len(hours) == 24 and hours[0] == "2024-04-01-00:00" and hours[-1] == "2024-04-01-23:00"
    # Berlin's March ends at 2024-03-31 22:00 UTC: requested the next night, and only then.
    assert requested(f"archive_{schema}_monthly", dt.datetime(2024, 4, 1, 1, tzinfo=dt.UTC)) == ["2024-03-01"]
    assert requested(f"archive_{schema}_monthly", dt.datetime(2024, 4, 2, 1, tzinfo=dt.UTC)) == []


def test_the_command_line_takes_hours_days_and_months(conn, schema, archive_env, tmp_path, monkeypatch):
    """In process (click's runner), so it stays cheap; test_cli.py runs the command as a subprocess."""
    import json

    import yaml
    from click.testing import CliRunner

    from archive_pipeline.cli import main

    _events(conn, schema)
    _insert(conn, schema, [(1, "2024-03-10 05:10+00"), (2, "2024-03-10 07:00+00")])
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [{"name": f"{schema}.events", "day_column": "at",
                                                  "start_date": "2024-03-01", "granularity": "hourly",
                                                  "partitioning": {"mode": "column"}}]}))
    monkeypatch.setenv("ARCHIVE_PIPELINE_CONFIG", str(config))
    runner = CliRunner()
    done = runner.invoke(main, ["archive", "--day", "2024-03-10-05:00", "--json"])
    assert done.exit_code == 0, done.output
    assert [(d["day"], d["status"]) for d in json.loads(done.stdout)["days"]] == [("2024-03-10-05:00", "archived")]
    listed = json.loads(runner.invoke(main, ["list", "--day", "2024-03-10", "--json"]).stdout)["days"]
    assert [(d["day"], d["state"]) for d in listed] == [("2024-03-10-05:00", "archived"),
                                                        ("2024-03-10-07:00", "missing")]
    bad = runner.invoke(main, ["list", "--day", "2024-03-10-25:00"])
    assert bad.exit_code == 2 and "2024-03-10-25:00" in bad.output


def test_an_hourly_table_on_a_date_column_is_refused_naming_the_column(conn, schema, store):
    _events(conn, schema, "date")
    with pytest.raises(ArchiveError, match=r"2024-03-10-05:00.*'at' is a date, which cannot hold hours"):
        archive_partition(conn, spec(name=f"{schema}.events", granularity="hourly"), "2024-03-10-05:00", store)
    with pytest.raises(ArchiveError, match="is not an hourly partition key"):
        archive_partition(conn, spec(name=f"{schema}.events", granularity="hourly"), "2024-03-10", store)


def test_an_hourly_table_on_a_date_column_fails_the_load(conn, schema, archive_env):
    _events(conn, schema, "date")
    config = parse_config({"tables": [{"name": f"{schema}.events", "day_column": "at", "start_date": "2024-03-01",
                                       "granularity": "hourly"}]})
    with pytest.raises(ConfigError, match=rf"table '{schema}.events': setting 'granularity': hourly needs a "
                                          r"timestamp or timestamptz day_column, and 'at' is a date"):
        build_definitions(config)


def test_held_periods_finds_what_each_child_holds_without_trying_every_child():
    """The sensor's question for a declarative table (which candidate days a child holds rows of), answered
    by one search per day: the same answer as asking every child, for disjoint children of a day, of
    several days, of part of a day, with gaps between them and unbounded ones (which hold no day)."""
    import random

    from archive_pipeline.core.discovery import ChildRange, held_periods
    from archive_pipeline.core.periods import period_of_date

    rng = random.Random(7)
    for timezone in ("UTC", "Europe/Berlin"):
        start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
        children, moment = [ChildRange("low", None, start)], start
        while moment < dt.datetime(2024, 12, 31, tzinfo=dt.UTC):
            length = dt.timedelta(hours=rng.choice([1, 7, 24, 24, 24, 48, 24 * 31]))
            if rng.random() < 0.8:  # else a gap: days no child holds
                children.append(ChildRange(f"c{len(children)}", moment, moment + length))
            moment += length
        children.append(ChildRange("high", moment, None))
        rng.shuffle(children)
        days = [period_of_date("daily", timezone, dt.date(2023, 12, 25) + dt.timedelta(days=n)) for n in range(380)]
        expected = [d for d in days if any(child.holds(d) for child in children)]
        assert 100 < len(expected) < len(days)
        assert held_periods(children, set(days)) == expected
