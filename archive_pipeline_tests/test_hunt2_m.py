"""Hunt m: discovery of days (declarative, naming, column) and the archive_new_days sensor / schedule."""

from __future__ import annotations

import datetime as dt
import os

import psycopg
import pytest
from dagster import build_sensor_context, instance_for_test
from psycopg import sql

from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.resources import PostgresResource
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.conftest import utc_today


def _config(*tables: dict, **sections):
    return parse_config({"retry": {"max_retries": 0, "delay_seconds": 0}, **sections, "tables": list(tables)})


def _table(name: str, start: dt.date, day_column: str = "created_at", mode: str = "declarative", **more) -> dict:
    return {"name": name, "day_column": day_column, "start_date": start.isoformat(),
            "partitioning": {"mode": mode, **more.pop("partitioning", {})}, **more}


def _tick(defs, instance, dsn: str):
    """One evaluation of archive_new_days: (requested partition keys by job, skip message or None)."""
    repo = defs.get_repository_def()
    sensor = repo.get_sensor_def("archive_new_days")
    result = sensor.evaluate_tick(build_sensor_context(instance=instance, resources={"postgres": PostgresResource(
        dsn=dsn)}, repository_def=repo))
    requested: dict[str, list[str]] = {}
    for request in result.run_requests:
        requested.setdefault(request.job_name, []).append(request.partition_key)
    return {job: sorted(keys) for job, keys in requested.items()}, result.skip_message


def _child(conn, schema: str, parent: str, name: str, lo: str, hi: str) -> None:
    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
        sql.Identifier(schema, name), sql.Identifier(schema, parent), sql.Literal(lo), sql.Literal(hi)))


def _insert_event(conn, schema: str, at: dt.datetime, table: str = "events") -> None:
    conn.execute(sql.SQL("INSERT INTO {} (id, created_at, user_id, event_type) VALUES (1, %s, 1, 'late')").format(
        sql.Identifier(schema, table)), (at,))


def test_the_sensor_does_not_request_a_day_whose_partition_has_no_rows(pg, conn, schema, archive_env):
    """A declarative table whose partitions are created ahead of the data (pg_partman's premake, a nightly
    job creating tomorrow's child; or a load that runs hours after midnight). The sensor ("requests archive
    runs for days that have data in PostgreSQL") requests every day that has a child, rows or not: the
    empty day is archived as `state: empty` and materialized, so when its rows are loaded an hour later the
    sensor never requests it again (it is materialized) and those rows are never archived. Its tick even
    reports such days as "N of them with data". A day must be requested once it has rows, not before."""
    today = utc_today()
    full, early = today - dt.timedelta(days=3), today - dt.timedelta(days=2)
    create_sample_events(conn, [full], rows_per_day=5, schema=schema)
    _child(conn, schema, "events", "events_early", f"{early} 00:00+00", f"{early + dt.timedelta(days=1)} 00:00+00")
    defs = build_definitions(_config(_table(f"{schema}.events", today - dt.timedelta(days=10))))
    job = f"Archive_{schema}_events"
    with instance_for_test() as instance:
        requested, _ = _tick(defs, instance, pg.dsn)
        for day in requested.get(job, []):  # what the daemon would launch
            assert defs.resolve_job_def(job).execute_in_process(partition_key=day, instance=instance).success
        _insert_event(conn, schema, dt.datetime.combine(early, dt.time(5), dt.UTC))  # the day's rows arrive
        again, _ = _tick(defs, instance, pg.dsn)
        # the empty day was not requested while empty, and is requested now that it holds a row
        assert requested.get(job) == [full.isoformat()], requested
        assert again.get(job) == [early.isoformat()], again


def test_list_and_compare_do_not_call_an_empty_partition_a_day_with_data(conn, schema, store):
    """`archive-pipeline list` and `compare` on a declarative table with an empty child partition (created
    ahead of its data): `list` shows the day as `missing` ("data in PostgreSQL, no archive") and `compare`
    as `not-archived` ("the source has this day") with 0 source rows, so compare exits non-zero for a table
    that is fully archived. The same empty day in column mode is (correctly) left out of both."""
    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.plan import compare_days, day_statuses

    day = dt.date(2024, 3, 10)
    create_sample_events(conn, [day], rows_per_day=5, schema=schema)
    _child(conn, schema, "events", "events_empty", "2024-03-11 00:00+00", "2024-03-12 00:00+00")
    days = [day, day + dt.timedelta(days=1)]
    for mode in ("column", "declarative"):
        spec = TableSpec(name=f"{schema}.events", day_column="created_at", start_date="2024-03-01",
                         partitioning={"mode": mode})
        listed = [(s.day.isoformat(), s.state) for s in day_statuses(conn, spec, store, days)]
        compared = [(c.day.isoformat(), c.result, c.source_rows) for c in compare_days(conn, spec, store, days)]
        assert listed == [("2024-03-10", "missing")], (mode, listed)
        assert compared == [("2024-03-10", "not-archived", 5)], (mode, compared)


@pytest.mark.parametrize("mode", ["declarative", "naming"])
def test_the_sensor_does_not_request_days_of_a_table_the_role_may_not_read(pg, conn, schema, archive_env, mode):
    """The role the sensor and the runs connect as may not SELECT the table (a grant forgotten on a new
    table, or revoked after the location loaded). Column mode's tick says so, naming the table and the
    GRANT. Declarative and naming mode read only the catalog, so the tick requests every day since
    start_date (up to max_runs_per_tick a tick): every run fails with "permission denied", and once the
    grant is given none of those days is ever requested again (their run keys are used). The tick must
    report the table instead, as column mode and `archive --dry-run` (plan_archive) do."""
    today = utc_today()
    days = [today - dt.timedelta(days=3), today - dt.timedelta(days=2)]
    if mode == "declarative":
        create_sample_events(conn, days, rows_per_day=5, schema=schema)
        table = _table(f"{schema}.events", today - dt.timedelta(days=10))
    else:
        s = sql.Identifier(schema)
        conn.execute(sql.SQL("CREATE TABLE {}.events (id int, created_at timestamptz)").format(s))
        for day in days:
            conn.execute(sql.SQL("CREATE TABLE {}.{} () INHERITS ({}.events)").format(
                s, sql.Identifier(f"events_{day:%Y%m%d}"), s))
            conn.execute(sql.SQL("INSERT INTO {}.{} VALUES (1, %s)").format(s, sql.Identifier(f"events_{day:%Y%m%d}")),
                         (dt.datetime.combine(day, dt.time(5), dt.UTC),))
        table = _table(f"{schema}.events", today - dt.timedelta(days=10), mode="naming",
                       partitioning={"pattern": "events_%Y%m%d"})
    role = f"m_{os.getpid()}_{mode}"
    dsn = pg.create_password_role(role, "pw")
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(role)))
    try:
        defs = build_definitions(_config(table), check_source=False)
        with instance_for_test() as instance:
            try:
                requested, skipped = _tick(defs, instance, dsn)
                outcome = f"requested {requested}, skipped {skipped!r}"
            except Exception as exc:  # noqa: BLE001 - a failed tick naming the table is the correct outcome
                outcome = f"tick failed: {exc}"
        assert outcome.startswith("tick failed") and ("may not SELECT" in outcome or "permission denied" in outcome), outcome
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_an_expression_key_on_another_column_is_refused_like_a_column_key(pg, conn, schema, archive_env):
    """A table range-partitioned by the day of its load time, ``PARTITION BY RANGE ((loaded_at::date))``,
    configured with day_column ``created_at`` in declarative mode. Partitioned by the column ``loaded_at``
    it is refused at load ("not range-partitioned by its day column"); by an expression of that column it
    is accepted, and the days come from loaded_at's bounds while the archive reads created_at: the sensor
    requests the load day (archived empty), and the day the row was created is never found."""
    from archive_pipeline.core.config import ConfigError

    today = utc_today()
    loaded, created = today - dt.timedelta(days=3), today - dt.timedelta(days=8)
    conn.execute(sql.SQL("CREATE TABLE {} (id int, loaded_at timestamp, created_at timestamp) "
                         "PARTITION BY RANGE ((loaded_at::date))").format(sql.Identifier(schema, "ev")))
    _child(conn, schema, "ev", "ev_load", f"{loaded}", f"{loaded + dt.timedelta(days=1)}")
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, %s)").format(sql.Identifier(schema, "ev")),
                 (dt.datetime.combine(loaded, dt.time(5)), dt.datetime.combine(created, dt.time(5))))
    config = _config(_table(f"{schema}.ev", today - dt.timedelta(days=10)))
    try:
        defs = build_definitions(config)
    except ConfigError as exc:
        assert "day_column" in str(exc) and f"{schema}.ev" in str(exc), exc
        return
    with instance_for_test() as instance:
        requested, _ = _tick(defs, instance, pg.dsn)
    assert requested == {f"Archive_{schema}_ev": [created.isoformat()]}, requested


def test_a_non_time_expression_key_is_refused_with_the_partitioning_cause(pg, conn, schema, archive_env):
    """``PARTITION BY RANGE ((extract(year from created_at)::int))`` in declarative mode (a yearly table).
    A LIST or an integer column key is refused at load naming the partitioning; this expression key passes
    the check, the load only warns ("could not finish checking the tables", and stops checking the tables
    after it), and every sensor tick reports "a value in the day cannot be read or converted ... to fix:
    fix the offending rows" (a DataError reading the bound 2020 as a timestamp): the wrong cause and a
    remedy that cannot help."""
    from archive_pipeline.core.config import ConfigError

    today = utc_today()
    conn.execute(sql.SQL("CREATE TABLE {} (id int, created_at timestamp) "
                         "PARTITION BY RANGE ((extract(year from created_at)::int))").format(sql.Identifier(schema, "yr")))
    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM (2020) TO (2030)").format(
        sql.Identifier(schema, "yr_a"), sql.Identifier(schema, "yr")))
    with pytest.raises(ConfigError, match="not range-partitioned by its day column|RANGE bounds on its day_column"):
        build_definitions(_config(_table(f"{schema}.yr", today - dt.timedelta(days=10))))


def test_a_sub_partitioned_child_yields_only_the_days_its_own_children_can_hold(pg, conn, schema, archive_env):
    """Two-level partitioning: a monthly child of ``events`` that is itself partitioned by day, with a
    grandchild for only one day so far. The sensor reads the monthly child's bound and requests every day of
    the month; the days without a grandchild cannot hold a row (an INSERT fails: no partition), yet each is
    archived as empty and materialized, so when a grandchild is later created and filled for one of those
    past days (the README: "a new child partition created and filled for a past day of any age shows up on
    the next tick") the sensor never requests it."""
    today = utc_today()
    first = (today.replace(day=1) - dt.timedelta(days=1)).replace(day=1)  # last month: all of it is over
    after = today.replace(day=1)
    filled = first + dt.timedelta(days=4)
    create_sample_events(conn, [], rows_per_day=5, schema=schema)
    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({}) PARTITION BY RANGE (created_at)")
                 .format(sql.Identifier(schema, "events_m"), sql.Identifier(schema, "events"),
                         sql.Literal(f"{first} 00:00+00"), sql.Literal(f"{after} 00:00+00")))
    _child(conn, schema, "events_m", "events_d", f"{filled} 00:00+00", f"{filled + dt.timedelta(days=1)} 00:00+00")
    _insert_event(conn, schema, dt.datetime.combine(filled, dt.time(5), dt.UTC))
    defs = build_definitions(_config(_table(f"{schema}.events", first), sensor={"max_runs_per_tick": 100}))
    with instance_for_test() as instance:
        requested, _ = _tick(defs, instance, pg.dsn)
    assert requested == {f"Archive_{schema}_events": [filled.isoformat()]}, requested
