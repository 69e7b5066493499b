"""Hunt 25 (cc): the declarative configuration line by line (core/config.py, core/keys.py, defs/component.py,
definitions.py): options accepted and ignored on one path, values at the edge of their types, and the messages a
refusal gives."""

from __future__ import annotations

import datetime as dt
import threading
import time

import psycopg
from dagster import instance_for_test
from dagster_aws.s3 import S3Resource
from psycopg import sql

from archive_pipeline.core.config import ConfigError, parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.resources import ArchiveStoreResource, PostgresResource
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.test_dagster import job_name

DAY = dt.date(2024, 3, 10)


def test_the_files_source_timeouts_are_dropped_when_build_definitions_is_given_resources(pg, s3, conn, schema,
                                                                                        bucket):
    """Scenario: a project builds the archive location itself, as the README's Configuration invites ("pass your own
    resources to build_definitions(config, resources)"): ``build_definitions(load_config(), {"postgres":
    PostgresResource(dsn=...), "archive_store": ...})``. Its table file says ``source: {lock_timeout_ms: 200}``: an
    archive must give up on a lock after 200 ms, not queue behind a migration (and make every reader of the table
    queue behind it). A migration holds ACCESS EXCLUSIVE on the table while a day is archived.

    Now: build_definitions uses ``config.source`` only for the load's table check (check_tables_exist) and in
    default_resources(config), which is not called when resources are given; the run's sessions take their timeouts
    from the given PostgresResource's own defaults (assets.py: ``session_settings=postgres.session_settings()``), so
    the day waits on the lock for 30 s (PostgresResource's default lock_timeout_ms), 150 times what the file says,
    with nothing telling the user their ``source:`` section is not in force. The command line, reading the same
    file, honours it (Run._configured: session_settings(config.source)).

    Should: "The source: timeouts are set on every extraction session" (README) whatever builds the resources: apply
    the file's ``source:`` to a given PostgresResource whose timeouts were left at their defaults (or refuse, at the
    load, a file whose ``source:`` differs from the given resource's, naming both), so the run gives up after 200 ms
    (LockNotAvailable, retryable), as the command line does."""
    create_sample_events(conn, [DAY], rows_per_day=50, schema=schema)
    config = parse_config({"source": {"lock_timeout_ms": 200}, "retry": {"max_retries": 0},
                           "tables": [{"name": f"{schema}.events", "day_column": "created_at",
                                       "start_date": DAY.isoformat(), "partitioning": {"mode": "declarative"}}]})
    resources = {"postgres": PostgresResource(dsn=pg.dsn, application_name="hunt25cc"),
                 "archive_store": ArchiveStoreResource(s3=S3Resource(endpoint_url=s3.endpoint_url,
                                                                     region_name="us-east-1"),
                                                       bucket=bucket, prefix="archive")}
    defs = build_definitions(config, resources, check_source=False)
    outcome: dict[str, object] = {}

    def materialize() -> None:
        with instance_for_test() as instance:
            result = defs.resolve_job_def(job_name(schema)).execute_in_process(
                instance=instance, partition_key=DAY.isoformat(), raise_on_error=False)
            outcome["success"] = result.success

    with pg.connect() as migration:
        migration.autocommit = False
        migration.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema, "events")))
        runner = threading.Thread(target=materialize, daemon=True)
        runner.start()
        waited_long = False
        deadline = time.monotonic() + 60
        while runner.is_alive() and time.monotonic() < deadline:
            # a session of the run that has waited on the migration's lock for 3 s: 15 times the 200 ms configured
            waited_long = conn.execute(
                "SELECT count(*) > 0 FROM pg_stat_activity WHERE application_name LIKE 'hunt25cc%%' "
                "AND wait_event_type = 'Lock' AND %s = ANY(pg_blocking_pids(pid)) "
                "AND clock_timestamp() - query_start > interval '3 seconds'",
                (migration.info.backend_pid,)).fetchone()[0]
            if waited_long:
                break
            time.sleep(0.1)
        migration.rollback()
    runner.join(60)
    assert not waited_long, ("the run waited on the lock for more than 3 s: the file's source.lock_timeout_ms "
                             "(200 ms) is not in force when build_definitions is given resources")
    assert outcome.get("success") is False, outcome


def test_a_parallel_streams_of_a_superscript_digit_is_refused_with_pythons_int_message():
    """Scenario: a table file says ``parallel_streams: "²"`` (a superscript two, typed by an editor's autocorrect of
    "^2", or pasted from a document); the same goes for any digit ``str.isdigit`` accepts and ``int`` does not
    (``"①"``, ``"¹⁶"``).

    Now: TableSpec._streams takes a quoted value as a number when ``value.strip().isdigit()``, which is true for
    superscript and circled digits, and then calls ``int(value)``, which raises ValueError; pydantic turns that into
    the message "invalid literal for int() with base 10: '²'": Python's internals, without what the setting accepts,
    where every other wrong value gets the validator's own "must be a whole number from 1 to 16, or auto (got ...)".

    Should: the same refusal as any other value that is not a stream count: "must be a whole number from 1 to 16, or
    auto (got '²')". Fix idea: test ``value.strip().isdecimal()`` (the digits int() reads), or catch the ValueError of
    int() and fall through to the refusal."""
    try:
        parse_config({"tables": [{"name": "public.events", "day_column": "created_at", "start_date": "2024-01-01",
                                  "parallel_streams": "²"}]})
    except ConfigError as exc:
        said = str(exc)
    else:
        raise AssertionError("parallel_streams '²' was accepted")
    assert "parallel_streams" in said and "invalid literal for int()" not in said, said
    assert "from 1 to 16, or auto" in said, said
