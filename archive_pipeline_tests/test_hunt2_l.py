"""Hunt l: the day boundary (date / timestamp / timestamptz day columns in zones with odd clocks) and
hostile session settings a DBA put on the role or database. Each test asserts the correct behaviour."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec, parse_config
from archive_pipeline.core.periods import parse_period
from archive_pipeline_tests.helpers import decompress, download, read_jsonl


def spec(**kw) -> TableSpec:
    return TableSpec(**{"name": "public.events", "day_column": "at", "start_date": "2024-01-01", **kw})


def _ids(s3_client, bucket, result) -> list[int]:
    if result.empty:
        return []
    return sorted(r["id"] for r in read_jsonl(decompress(download(s3_client, bucket, result.key), "zstd")))


# --- the day boundary -------------------------------------------------------------------------------

def test_hourly_table_starting_on_a_day_whose_midnight_the_clocks_skip_loads(archive_env):
    """A user configures an hourly table in Africa/Cairo (or America/Havana, Asia/Beirut: zones whose
    clocks spring forward at 00:00) with ``start_date: 2024-04-26``, the day Cairo's clocks jumped from
    00:00 to 01:00. The configuration validates, and Dagster's own HourlyPartitionsDefinition starts at
    ``2024-04-26-01:00``; but ``TableSpec.first_period`` builds the key ``2024-04-26-00:00``, which names
    no hour there, so building the definitions (the code location's load, and with it the schedule, the
    CLI's day selection and retention's due days) dies with a bare PeriodError naming neither the file,
    the table nor the setting. The first period should be the first real hour, as a daily table's is."""
    from archive_pipeline.definitions import build_definitions

    config = parse_config({"tables": [{"name": "public.events", "day_column": "at", "start_date": "2024-04-26",
                                       "granularity": "hourly", "timezone": "Africa/Cairo"}]})
    [table] = config.tables
    assert table.first_period.key == "2024-04-26-01:00"
    assert table.first_period.utc_start == dt.datetime(2024, 4, 25, 22, tzinfo=dt.UTC)
    build_definitions(config, check_source=False)  # the code location loads (the table is not in this database)


def test_hourly_timestamp_rows_of_a_two_hour_fall_back_are_archived_once(conn, schema, store, s3_client, bucket):
    """Antarctica/Troll moves its clocks by two hours (+02 -> +00 at 01:00 UTC on 2024-10-27), which the
    hourly check accepts ("whole hours"). The wall-clock times 01:00-02:59 then happen twice, and the
    README's rule for a ``timestamp`` column is that every value of a repeated hour goes to its second
    occurrence. But ``Period.wall_bounds`` makes only the *last* first-occurrence hour empty: the first
    ``2024-10-27-01:00`` (+02) is [01:00, 02:00) in wall-clock time, and so is the second
    ``2024-10-27-01:00+0000``. A row at 01:30 is archived in both partitions (a row in two days: a
    restore of both duplicates it, and retention of both removes it twice)."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamp NOT NULL)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, '2024-10-27 00:30'), (2, '2024-10-27 01:30'), "
                         "(3, '2024-10-27 02:30'), (4, '2024-10-27 03:30')").format(s))
    table = spec(name=f"{schema}.ev", granularity="hourly", timezone="Antarctica/Troll", start_date="2024-10-01")
    keys = ["2024-10-26-23:00", "2024-10-27-00:00", "2024-10-27-01:00", "2024-10-27-02:00",
            "2024-10-27-01:00+0000", "2024-10-27-02:00+0000", "2024-10-27-03:00"]
    archived = {}
    for key in keys:
        period = parse_period("hourly", "Antarctica/Troll", key)
        archived[period.key] = _ids(s3_client, bucket, archive_partition(conn, table, period, store))
    every = sorted(i for ids in archived.values() for i in ids)
    assert every == [1, 2, 3, 4], archived  # each row in exactly one hour
    assert archived["2024-10-27-01:00+0000"] == [2] and archived["2024-10-27-02:00+0000"] == [3]


def test_a_backfill_range_over_apias_skipped_day_neither_archives_a_day_twice_nor_drops_a_partition(
        conn, schema, archive_env):
    """Samoa (Pacific/Apia) skipped 2011-12-30: its clocks went from 2011-12-29 23:59:59 -10 to 2011-12-31
    00:00 +14. Dagster's DailyPartitionsDefinition still lists a partition 2011-12-30 (whose window is
    2011-12-31's). A run of that partition alone is refused ("there is no such day"), but a backfill run
    over the range 2011-12-29..2011-12-31 (one run, Dagster's range tags) reads both 2011-12-30 and
    2011-12-31 as the period 2011-12-31: it archives that day twice (the second time "already archived")
    and records nothing for Dagster's partition 2011-12-30, so the run is green while one of its
    partitions was neither archived nor refused, and stays missing after every backfill."""
    from dagster import instance_for_test

    from archive_pipeline.definitions import build_definitions

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, '2011-12-28 00:00+00'::timestamptz + g * interval '1 hour' "
                         "FROM generate_series(1, 100) g").format(s))
    config = parse_config({"retry": {"max_retries": 0, "delay_seconds": 0}, "tables": [
        {"name": f"{schema}.ev", "day_column": "at", "start_date": "2011-12-01", "timezone": "Pacific/Apia"}]})
    defs = build_definitions(config)
    with instance_for_test() as instance:
        result = defs.resolve_job_def(f"Archive_{schema}_ev").execute_in_process(
            instance=instance, raise_on_error=False,
            tags={"dagster/asset_partition_range_start": "2011-12-29",
                  "dagster/asset_partition_range_end": "2011-12-31"})
        recorded = [e.partition for e in result.get_asset_materialization_events()]
        failures = " ".join(f"{e.message} {e.event_specific_data}" for e in result.all_events if e.is_failure)
    assert len(recorded) == len(set(recorded)), recorded  # no period archived twice in one run
    # Dagster's partition 2011-12-30 is accounted for: recorded, or the run fails naming it
    assert "2011-12-30" in recorded or (not result.success and "2011-12-30" in failures), (recorded, failures)


# --- hostile session settings ------------------------------------------------------------------------

@pytest.fixture
def role_with(conn, schema, pg):
    """Open a session as a new role with the given ``ALTER ROLE ... SET`` settings, as a run does."""
    from archive_pipeline.defs.resources import PostgresResource

    role = f"{schema}_l"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw-l' SUPERUSER").format(sql.Identifier(role)))
    opened = []

    def session(**settings: str) -> psycopg.Connection:
        for name, value in settings.items():
            conn.execute(sql.SQL("ALTER ROLE {} SET {} = {}").format(sql.Identifier(role), sql.Identifier(name),
                                                                      sql.SQL(value)))
        dsn = psycopg.conninfo.make_conninfo(pg.dsn, user=role, password="pw-l")
        context = PostgresResource(dsn=dsn).connect()
        opened.append(context)
        return context.__enter__()

    yield session
    for context in opened:
        context.__exit__(None, None, None)
    conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_jsonl_archive_proves_and_restores_under_a_path_with_an_oracle_style_substr(conn, schema, store, temp_dir,
                                                                                       role_with):
    """A DBA gives the role an Oracle-compatibility schema first on its path (orafce's advice:
    ``search_path = oracle, pg_catalog, public``), whose ``substr(text, int, int)`` returns NULL for an
    empty result, as Oracle does. README: every function our queries use resolves to PostgreSQL's own,
    "the content fingerprint, restore and verification run under the same path". The archive and the
    compare do; but restore's JSONL load (``_jsonl_insert``: ``substr``, ``left``, ``strpos``,
    ``json_to_recordset`` ... unqualified, under the session's own path) calls the role's ``substr``, so an
    empty array comes back NULL: deep verification then declares a good archive altered ("the archive's
    rows are not the ones recorded") and restore is rolled back blaming the archive."""
    compat = sql.Identifier(f"{schema}_ora")
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(compat))
    conn.execute(sql.SQL("CREATE FUNCTION {}.substr(text, integer, integer) RETURNS text LANGUAGE sql IMMUTABLE "
                         "AS $$ SELECT NULLIF(pg_catalog.substr($1, $2, $3), '') $$").format(compat))
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz, tags text[])").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 00:00+00'::timestamptz + g * interval '1 min', "
                         "CASE WHEN g % 2 = 0 THEN '{{}}'::text[] ELSE ARRAY['a'] END "
                         "FROM generate_series(1, 10) g").format(table))
    from archive_pipeline.core.plan import compare_days
    from archive_pipeline.core.restore import restore_day
    from archive_pipeline.core.verify import deep_verify

    session = role_with(search_path=sql.SQL(", ").join([compat, sql.Identifier("pg_catalog"),
                                                         sql.Identifier("public")]).as_string(conn))
    day = dt.date(2024, 3, 10)
    table_spec = spec(name=f"{schema}.ev", start_date=day, format="jsonl")
    assert archive_partition(session, table_spec, day, store, temp_dir=temp_dir).rows == 10
    assert [c.result for c in compare_days(session, table_spec, store, [day])] == ["equal"]
    assert deep_verify(session, store, table_spec, day, temp_dir=temp_dir) == []
    restored = restore_day(session, store, table_spec, day, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    assert restored.fingerprint_checked and restored.rows == 10


def test_a_roles_idle_session_timeout_does_not_fail_every_day_whose_upload_outlasts_it(pg, s3, conn, schema, bucket):
    """A DBA reaps idle connections with ``ALTER ROLE ... SET idle_session_timeout = '1s'`` (often minutes,
    with days whose upload takes longer). The run's session sets statement_timeout, lock_timeout and
    idle_in_transaction_session_timeout from the ``source:`` settings, but not idle_session_timeout: once
    the day is read, the session waits outside any transaction while the parts upload, PostgreSQL ends
    it, and the table-day lock goes with it. At the commit the archive then fails "the connection holding
    the table-day lock was lost ... nothing was published" (retryable, and the same on every retry, as
    every upload of the day takes as long). Our sessions should be exempt, as from the other timeouts."""
    from archive_pipeline.defs.resources import PostgresResource
    from archive_pipeline_tests.helpers import archive_while_the_store_holds_a_part

    table = sql.Identifier(schema, "big")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, body text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10', md5(g::text) || md5((g * 7)::text) || "
                         "md5((g * 13)::text) FROM generate_series(1, 60000) g").format(table))
    role = f"{schema}_idle"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw-idle' SUPERUSER").format(sql.Identifier(role)))
    conn.execute(sql.SQL("ALTER ROLE {} SET idle_session_timeout = '1s'").format(sql.Identifier(role)))
    name = f"idle-session-{schema}"
    postgres = PostgresResource(dsn=psycopg.conninfo.make_conninfo(pg.dsn, user=role, password="pw-idle"),
                                application_name=name)
    day = dt.date(2024, 3, 10)
    table_spec = spec(name=f"{schema}.big", day_column="at", start_date=day, format="csv", compression="none")
    try:
        with postgres.connect() as session:  # the session is idle, outside a transaction, past 1 s
            result = archive_while_the_store_holds_a_part(pg, s3, conn, bucket, table_spec, day, name,
                                                          archiving=session,
                                                          session_settings=postgres.session_settings())
    finally:
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    assert result.rows == 60000


@pytest.mark.parametrize("column_type", ["timestamptz", "timestamp", "date"])
@pytest.mark.parametrize("zone, days", [("Australia/Lord_Howe", ["2024-04-06", "2024-04-07", "2024-04-08"]),
                                        ("Pacific/Apia", ["2011-12-29", "2011-12-31", "2012-01-01"])])
def test_guard_days_around_a_half_hour_shift_and_a_skipped_day_tile_the_rows(conn, schema, store, s3_client, bucket,
                                                                              column_type, zone, days):
    """Guard (passes): rows every 15 minutes and a microsecond before each, over Lord_Howe's 30-minute
    fall-back and Samoa's skipped 2011-12-30, are each archived in exactly one day, none lost between."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id serial, at {})").format(s, sql.SQL(column_type)))
    first, last = parse_period("daily", zone, days[0]), parse_period("daily", zone, days[-1])
    value = "x" if column_type == "timestamptz" else f"(x AT TIME ZONE {sql.Literal(zone).as_string(conn)})::{column_type}"
    conn.execute(sql.SQL("INSERT INTO {}.ev (at) SELECT " + value + " FROM (SELECT generate_series(%(lo)s::timestamptz, "
                         "%(hi)s::timestamptz - interval '1 microsecond', '15 min') + d AS x FROM "
                         "(VALUES (interval '0'), (interval '15 min' - interval '1 microsecond')) v(d)) s").format(s),
                 {"lo": first.utc_start, "hi": last.utc_end})
    table = spec(name=f"{schema}.ev", timezone=zone, start_date="2011-01-01")
    archived = [i for day in days for i in _ids(s3_client, bucket, archive_partition(conn, table, day, store))]
    expected = [r[0] for r in conn.execute(sql.SQL("SELECT id FROM {}.ev").format(s))]
    assert sorted(archived) == sorted(expected)
