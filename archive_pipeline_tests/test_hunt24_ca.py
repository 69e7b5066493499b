"""Hunt 24 (ca): the Dagster sensors and schedules line by line (defs/sensors.py, defs/schedules.py): cursors, run
keys, in-flight ranges, per-table probe failures and the messages a tick gives."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap

import psycopg
from dagster import build_sensor_context, instance_for_test
from psycopg import sql

from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.resources import PostgresResource


def _tick(pg_dsn: str, config, **resource) -> tuple[object | None, str]:
    """One tick of archive_new_days on a fresh instance: (its result or None, its error text)."""
    repo = build_definitions(config).get_repository_def()
    sensor = repo.get_sensor_def("archive_new_days")
    with instance_for_test() as instance:
        try:
            return sensor.evaluate_tick(build_sensor_context(
                instance=instance, resources={"postgres": PostgresResource(dsn=pg_dsn, **resource)},
                repository_def=repo)), ""
        except Exception as exc:  # noqa: BLE001 - the tick's error, as the daemon shows it
            return None, str(exc)


_CHILD = textwrap.dedent("""
    import datetime as dt, json, resource, sys, uuid
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # (the stepping's set would fill the machine)
    from dagster import DagsterRun, DagsterRunStatus, build_sensor_context, instance_for_test
    from archive_pipeline.core.config import parse_config
    from archive_pipeline.definitions import build_definitions
    from archive_pipeline.defs.assets import job_name
    from archive_pipeline.defs.resources import PostgresResource
    dsn, schema, start, end = sys.argv[1:5]
    config = parse_config({"tables": [
        {"name": f"{schema}.a", "day_column": "at", "start_date": start, "granularity": "hourly"},
        {"name": f"{schema}.b", "day_column": "at", "start_date": start}]})
    a, b = config.tables
    repo = build_definitions(config).get_repository_def()
    with instance_for_test() as instance:
        instance.add_run(DagsterRun(job_name=job_name(a), run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTED,
                                    tags={"archive/table": a.name,
                                          "dagster/asset_partition_range_start": f"{start}-00:00",
                                          "dagster/asset_partition_range_end": end}))
        tick = repo.get_sensor_def("archive_new_days").evaluate_tick(build_sensor_context(
            instance=instance, resources={"postgres": PostgresResource(dsn=dsn)}, repository_def=repo))
        print(json.dumps(sorted([r.tags["archive/table"], r.partition_key] for r in tick.run_requests or [])))
""")


def test_a_queued_run_hand_tagged_to_the_calendars_end_stalls_every_tick_stepping_its_range(pg, conn, schema,
                                                                                          archive_env):
    """Scenario: two tables, an hourly ``a`` and a daily ``b``, each with rows yesterday (UTC). Someone launched a
    ranged run of ``a``'s job from the launchpad with ``dagster/asset_partition_range_start`` a few days ago and
    ``dagster/asset_partition_range_end: 9999-12-30-23:00`` ("everything from then on"; one hour before the calendar's
    end, so not the OverflowError case test_hunt16_vi covers); it is running (or waiting on
    its pool) while the sensor ticks.

    Now: days_in_flight reads every unfinished run's range with sensors._range_keys, which steps the range one period
    at a time from its start tag to its end tag (``while day <= last: keys.add(...); day = day.next()``), never
    clipped to the periods the tick considers (start_date..now): ~70 million hours, a set of 70 million strings. The
    tick runs for tens of minutes and gigabytes (here: killed after 60 s or out of its 3 GB), far past Dagster's 60 s
    sensor timeout, so every tick fails and no table's new day (``b``'s yesterday) is ever requested while that run is
    unfinished. The schedule's _requests and _left_to_failed_runs step the same ranges.

    Should: a run's range is read only where it meets the table's candidate periods (clip its start and end to
    start_date..now before stepping, or test each candidate for membership in [start, end]); the tick takes the time
    of its days, and ``b``'s yesterday is requested. Fix idea: in _range_keys, ``last = min(last, the period of now)``
    and ``day = max(day, spec.first_period)`` (or compare the candidates' instants to the range's)."""
    yesterday = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).replace(hour=12, minute=0, second=0, microsecond=0)
    for name in ("a", "b"):
        conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz)").format(sql.Identifier(schema, name)))
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s)").format(sql.Identifier(schema, name)), (yesterday,))
    start = (yesterday.date() - dt.timedelta(days=3)).isoformat()
    try:
        done = subprocess.run([sys.executable, "-c", _CHILD, pg.dsn, schema, start, "9999-12-30-23:00"], capture_output=True, text=True,
                              timeout=60, env={**os.environ, "PYTHONPATH": os.getcwd()})
    except subprocess.TimeoutExpired:
        raise AssertionError("the sensor's tick was still stepping the queued run's range after 60 s") from None
    assert done.returncode == 0, f"the tick failed: {done.stderr[-1500:]}"
    requested = json.loads(done.stdout.strip().splitlines()[-1])
    assert [f"{schema}.b", yesterday.date().isoformat()] in requested, requested


def test_a_naming_day_table_the_role_may_not_read_gets_a_grant_on_a_table_that_does_not_exist(pg, conn, schema,
                                                                                             archive_env, capfd):
    """Scenario: a naming-mode table ``ev`` (one table per day, ``ev_%Y%m%d``); the code location's role was granted
    SELECT on the day tables that existed, and ``ev_20230102`` was created later by another role without the grant.
    The sensor ticks.

    Now: the tick requests the two readable days and warns "1 day(s) not inspected (2023-01-02): looking for days to
    archive failed: permission denied (InsufficientPrivilege: permission denied for table ev_20230102); ...; to fix:
    GRANT SELECT ON <schema>.ev TO <role> ...": sensors.probe_failure classifies the day's error with
    ``table=spec.name``, the configured base name, which in naming mode is no table at all. The operator who runs the
    remedy gets 'relation "<schema>.ev" does not exist'; the day stays unrequested on every tick. (The archive run's
    own failure names the day's table since test_hunt5_ko; the sensor is a second caller that was left out.)

    Should: the remedy names the table the probe read, ``GRANT SELECT ON <schema>.ev_20230102 TO <role>``. Fix idea:
    in archive_new_days pass the unprobed day's relation (spec.table_for(day) / discovery's naming name) to
    probe_failure, or let probe_failure take ``table=`` from the caller."""
    role = f"{schema}_r"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'ca-pw'").format(sql.Identifier(role)))
    try:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(role)))
        for day in ("20230101", "20230102", "20230103"):
            table = sql.Identifier(schema, f"ev_{day}")
            conn.execute(sql.SQL("CREATE TABLE {} (id int, at date)").format(table))
            conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s)").format(table), (day,))
            if day != "20230102":
                conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(table, sql.Identifier(role)))
        config = parse_config({"tables": [{"name": f"{schema}.ev", "day_column": "at", "start_date": "2023-01-01",
                                           "partitioning": {"mode": "naming", "pattern": "ev_%Y%m%d"}}]})
        dsn = psycopg.conninfo.make_conninfo(pg.dsn, user=role, password="ca-pw")
        repo = build_definitions(config).get_repository_def()
        sensor = repo.get_sensor_def("archive_new_days")
        with instance_for_test() as instance:
            context = build_sensor_context(instance=instance, resources={"postgres": PostgresResource(dsn=dsn)},
                                           repository_def=repo)
            tick = sensor.evaluate_tick(context)
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    assert sorted(r.partition_key for r in tick.run_requests) == ["2023-01-01", "2023-01-03"]  # (the premise)
    told = capfd.readouterr().err  # (the tick's warning, as its log shows it)
    assert "not inspected (2023-01-02)" in told, told
    assert f"GRANT SELECT ON {schema}.ev TO" not in told, told
    assert f"{schema}.ev_20230102" in told.split("to fix:")[-1], told


def test_the_not_inspected_warning_says_the_retry_twice_before_its_remedy(pg, conn, schema, archive_env, capfd):
    """Scenario: a declarative table ``ev`` with two children; a migration holds one child (days 4..7) ACCESS
    EXCLUSIVE while the sensor ticks (``source: {lock_timeout_ms: 200}``).

    Now: the tick requests the other child's days (right) and warns "4 day(s) not inspected (...): looking for days
    to archive failed: lock_timeout: ... (LockNotAvailable: canceling statement due to lock timeout); the next tick
    looks again; to fix: retried automatically; if it persists, ...": sensors.probe_failure writes its own "the next
    tick looks again" and then appends the classification's whole remedy, which begins with the same thing
    ("retried automatically", errors._RETRIED): the message repeats itself, and the "fix" it offers first is no fix.

    Should: the retry is said once: either probe_failure's own words or the remedy's. Fix idea: in probe_failure drop
    a leading "retried automatically; " from ``found.remedy`` when ``found.retryable`` (the next tick is the retry)."""
    parent = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz) PARTITION BY RANGE (at)").format(parent))
    for name, lo, hi in (("ev_a", "2023-01-01", "2023-01-04"), ("ev_b", "2023-01-04", "2023-01-08")):
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier(schema, name), parent, sql.Literal(f"{lo} 00:00+00"), sql.Literal(f"{hi} 00:00+00")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2023-01-01 12:00+00'::timestamptz + g * interval '1 day' "
                         "FROM generate_series(0, 6) g").format(parent))
    config = parse_config({"source": {"lock_timeout_ms": 200},
                           "tables": [{"name": f"{schema}.ev", "day_column": "at", "start_date": "2023-01-01",
                                       "partitioning": {"mode": "declarative"}}]})
    with psycopg.connect(pg.dsn, autocommit=True) as migration:
        migration.execute("BEGIN")
        migration.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema, "ev_b")))
        try:
            tick, error = _tick(pg.dsn, config, lock_timeout_ms=200)
        finally:
            migration.execute("ROLLBACK")
    assert tick is not None and [r.partition_key for r in tick.run_requests] == [
        "2023-01-01", "2023-01-02", "2023-01-03"], error  # (the premise)
    told = next(line for line in capfd.readouterr().err.splitlines() if "not inspected" in line)
    assert "the next tick looks again; to fix: retried automatically" not in told, told
