"""The Dagster side at its edges: a sensor cap filled by failed days, a locked table, an hourly table east
of UTC, a key template without {prefix}, the component inline, object links, late schedules.
(Brought over from the hunt-dagster branch.)"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid

import psycopg
import pytest
from dagster import (
    DagsterRun,
    DagsterRunStatus,
    build_schedule_context,
    build_sensor_context,
    instance_for_test,
)
from psycopg import sql

from archive_pipeline.core.config import ConfigError, parse_config
from archive_pipeline.core.keys import table_day_key
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.resources import PostgresResource
from archive_pipeline_tests.conftest import utc_today

GOOD = {"name": "public.events", "day_column": "created_at", "start_date": "2024-01-01"}


def _plain_table(conn, schema: str, name: str, days: list[dt.date]) -> None:
    """``<schema>.<name> (id int, at timestamptz)``, not partitioned, one row on each of ``days``."""
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz)").format(sql.Identifier(schema, name)))
    for n, day in enumerate(days):
        conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(sql.Identifier(schema, name)),
                     (n, dt.datetime.combine(day, dt.time(12), dt.UTC)))


def _tables(schema: str, names: list[str], start: dt.date, **top) -> object:
    return parse_config({"retry": {"max_retries": 0, "delay_seconds": 0}, **top,
                         "tables": [{"name": f"{schema}.{n}", "day_column": "at", "start_date": start.isoformat()}
                                    for n in names]})


def test_sensor_cap_is_not_starved_by_days_whose_runs_already_failed(pg, conn, schema, archive_env):
    """max_runs_per_tick caps the list after building it oldest-first over all tables, and a day whose
    run failed stays 'missing' forever: its (already used) run key keeps taking a slot of the cap on every
    tick, the daemon drops it as a duplicate run key, and the days behind it (here: the other table's
    new day) are never requested. With the default cap of 50, 50 failing days stop the whole sensor."""
    today = utc_today()
    old, new = today - dt.timedelta(days=3), today - dt.timedelta(days=1)
    _plain_table(conn, schema, "a", [old])
    _plain_table(conn, schema, "b", [new])
    config = _tables(schema, ["a", "b"], today - dt.timedelta(days=5), sensor={"max_runs_per_tick": 1})
    defs = build_definitions(config)
    repo = defs.get_repository_def()
    sensor = repo.get_sensor_def("archive_new_days")
    with instance_for_test() as instance:
        def tick():
            return sensor.evaluate_tick(build_sensor_context(
                instance=instance, resources={"postgres": PostgresResource(dsn=pg.dsn)}, repository_def=repo))

        [first] = tick().run_requests
        assert first.partition_key == old.isoformat()
        # The daemon launched it and the run failed (e.g. the day changed since a CLI archive of it):
        # its run key is used, the day is still not materialized.
        instance.add_run(DagsterRun(job_name=first.job_name, run_id=str(uuid.uuid4()),
                                    status=DagsterRunStatus.FAILURE,
                                    tags={**first.tags, "dagster/run_key": first.run_key,
                                          "dagster/sensor_name": "archive_new_days"}))
        used = {r.tags.get("dagster/run_key") for r in instance.get_runs()}
        # What the daemon would launch from the next ticks (it drops requests whose run key was used).
        launched = [r.partition_key for _ in range(3) for r in tick().run_requests if r.run_key not in used]
    assert new.isoformat() in launched, "the other table's new day is never requested"


def test_sensor_tick_is_not_stuck_behind_a_locked_table(pg, conn, schema, archive_env):
    """A column-mode table held by an ACCESS EXCLUSIVE lock (a migration, VACUUM FULL): the sensor's
    probe waits for it without any lock_timeout (the sensor's session gets none of the source: settings),
    so the tick hangs until the daemon's timeout kills it, and no table's new day is requested meanwhile.
    It should give up on that table within source.lock_timeout_ms and still request the others' days."""
    today = utc_today()
    day = today - dt.timedelta(days=1)
    _plain_table(conn, schema, "locked", [day])
    _plain_table(conn, schema, "free", [day])
    config = _tables(schema, ["locked", "free"], today - dt.timedelta(days=5), source={"lock_timeout_ms": 300})
    defs = build_definitions(config)
    repo = defs.get_repository_def()
    sensor = repo.get_sensor_def("archive_new_days")
    outcome: dict = {}
    with instance_for_test() as instance, pg.connect() as blocker:
        blocker.execute("BEGIN")
        blocker.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema, "locked")))

        def run() -> None:
            try:
                outcome["result"] = sensor.evaluate_tick(build_sensor_context(
                    instance=instance, resources={"postgres": defs.resources["postgres"]}, repository_def=repo))
            except BaseException as exc:  # noqa: BLE001
                outcome["error"] = exc

        thread = threading.Thread(target=run)
        started = time.monotonic()
        thread.start()
        # the lock is held until the ROLLBACK: a tick waiting on it never ends before (60 s: a loaded machine's
        # tick may take more than a few seconds)
        thread.join(60)
        took = time.monotonic() - started
        blocker.execute("ROLLBACK")
        thread.join(30)
    assert took < 60, "the tick waited on the lock for more than 60 s (no lock_timeout on the sensor's session)"
    assert "error" not in outcome, f"one locked table failed the whole tick: {outcome.get('error')!r}"
    assert [(r.tags["archive/table"], r.partition_key) for r in outcome["result"].run_requests] == [
        (f"{schema}.free", day.isoformat())]


def test_schedule_requests_the_first_hours_of_an_hourly_table_east_of_utc():
    """An hourly Pacific/Auckland table starting 2024-03-10: its first 13 hours (local 00:00..13:00,
    which is 2024-03-09 11:00Z..2024-03-10 00:00Z) end during UTC day 2024-03-09. The 2024-03-10 tick is
    for that UTC day, but skips it as 'before start_date' (it compares a UTC day with a local start
    date), so the schedule never requests those hours."""
    from archive_pipeline.core.plan import select_days
    from archive_pipeline.defs.resources import ArchiveStoreResource
    from dagster_aws.s3 import S3Resource

    config = parse_config({"tables": [{**GOOD, "granularity": "hourly", "timezone": "Pacific/Auckland",
                                       "start_date": "2024-03-10"}]})
    resources = {"postgres": PostgresResource(dsn="postgresql://nobody@127.0.0.1:1/x"),
                 "archive_store": ArchiveStoreResource(s3=S3Resource(), bucket="b")}
    defs = build_definitions(config, resources, check_source=False)
    repo = defs.get_repository_def()
    schedule = repo.get_schedule_def("archive_public_events_daily")
    requested = set()
    for day in range(8, 14):
        tick = schedule.evaluate_tick(build_schedule_context(
            scheduled_execution_time=dt.datetime(2024, 3, day, 1, tzinfo=dt.UTC), repository_def=repo))
        requested |= {r.partition_key for r in tick.run_requests}
    spec = config.tables[0]
    # every hourly partition that ended before the last tick's UTC day began
    expected = {p.key for p in select_days(spec, None, None, today=dt.date(2024, 3, 13))}
    missing = sorted(expected - requested)
    assert not missing, f"{len(missing)} hourly partitions are never requested by the schedule: {missing[:3]}..."


def test_key_collision_check_sees_a_template_without_prefix(tmp_path):
    """The load-time collision check renders every key with the prefix 'p'. A template without {prefix}
    that spells another table's path (here with the default, empty ARCHIVE_S3_PREFIX) renders the same
    object keys as that table at run time, yet is accepted."""
    raw = {"tables": [
        {**GOOD, "name": "public.b"},
        {**GOOD, "name": "public.a", "key_template": "public.b/{year}/{month}/{date}.{ext}"},
    ]}
    try:
        config = parse_config(raw)
    except ConfigError as exc:
        assert "public.a" in str(exc) and "public.b" in str(exc)
        return
    a, b = config.tables[1], config.tables[0]
    same = table_day_key(a, dt.date(2024, 3, 10)) == table_day_key(b, dt.date(2024, 3, 10))
    pytest.fail(f"accepted; without a prefix both tables render the same key: {same} "
                f"({table_day_key(a, dt.date(2024, 3, 10))!r})")


def test_the_component_takes_every_section_of_the_file_inline():
    """README: the component takes 'the file's settings inline' and validates 'exactly as the YAML file'.
    The file's backfill: section (max_days_per_run) is refused inline with pydantic's bare
    'Extra inputs are not permitted' (ArchiveTablesComponent has source, retry, schedule, sensor, tables
    but no backfill), so an inline project cannot set how backfills are batched."""
    from archive_pipeline.defs.component import ArchiveTablesComponent

    component = ArchiveTablesComponent.model_validate({"tables": [GOOD], "backfill": {"max_days_per_run": 1}})
    assert component.archive_config().backfill.max_days_per_run == 1


def test_the_object_link_on_aws_survives_a_key_with_url_special_characters():
    """The 'object' link on AWS puts the key into the query string unencoded: a table named 'a+b' or
    'x#y' (quoted identifiers) links to another object ('+' reads as a space) or to a truncated prefix
    ('#' starts the fragment)."""
    from types import SimpleNamespace
    from urllib.parse import parse_qs, urlsplit

    from dagster_aws.s3 import S3Resource

    from archive_pipeline.defs.checks import object_link
    from archive_pipeline.defs.resources import ArchiveStoreResource

    store = ArchiveStoreResource(s3=S3Resource(), bucket="bucket")
    key = "archive/public.a+b #1/2024/03/2024-03-10.jsonl.zst"
    link = object_link(store, SimpleNamespace(key=key, manifest_key=key + ".manifest.json"))
    assert parse_qs(urlsplit(link).query).get("prefix") == [key], link


def test_a_late_schedule_does_not_make_every_archive_overdue():
    """schedule {hour: 23, minute: 45, freshness_hours: 3} loads, and the freshness deadline is clamped to
    23:59 UTC, 14 minutes after the schedule starts the day's run: every day whose run takes longer
    shows as overdue (with minute 59, the deadline is the very minute the run starts). freshness_hours
    is not what the UI enforces; the config should be refused or the deadline moved past midnight."""
    from archive_pipeline.defs.assets import freshness_policy

    try:
        config = parse_config({"schedule": {"hour": 23, "minute": 45, "freshness_hours": 3}, "tables": [GOOD]})
    except ConfigError as exc:
        assert "schedule" in str(exc)
        return
    policy = freshness_policy(config.schedule)
    minute, hour = (int(x) for x in policy.deadline_cron.split()[:2])
    deadline = dt.timedelta(hours=hour, minutes=minute)
    start = dt.timedelta(hours=23, minutes=45)
    allowed = (deadline - start) % dt.timedelta(days=1)
    assert allowed >= dt.timedelta(hours=3), f"deadline {policy.deadline_cron!r}: {allowed} after the run starts"


def test_the_component_has_an_inline_field_for_each_section_of_the_file():
    """A section added to the file's format must be added to the component too, or inline projects
    cannot set it (backfill: was missing)."""
    from archive_pipeline.core.config import ArchiveConfig
    from archive_pipeline.defs.component import ArchiveTablesComponent

    component = ArchiveTablesComponent.model_validate({"tables": [GOOD]})
    assert set(component._inline()) == set(ArchiveConfig.model_fields)
    assert set(ArchiveConfig.model_fields) <= set(ArchiveTablesComponent.model_fields)


def test_a_late_schedule_moves_a_monthly_deadline_to_the_next_day_too():
    from archive_pipeline.core.config import ScheduleSettings
    from archive_pipeline.defs.assets import freshness_policy

    policy = freshness_policy(ScheduleSettings(hour=23, minute=45, freshness_hours=3), "monthly")
    assert policy.deadline_cron == "45 2 3 * *"  # the month is requested on the 2nd at the latest
    assert policy.lower_bound_delta == dt.timedelta(days=2, hours=2, minutes=45)  # since the 1st, 00:00
