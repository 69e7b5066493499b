"""Hunt 3 (z5): several tables in one deployment interacting: the shared job ``Archives_<granularity>_<start>_<zone>``,
the sensor's fairness and its view of what is in flight, per-table verdicts of ``verify_archives``, tables whose
keys nest, renamed tables. Each test drives the real code (Dagster in process, real PostgreSQL, moto S3) and
asserts the correct behaviour."""

from __future__ import annotations

import datetime as dt
import uuid

from dagster import (
    AssetCheckKey,
    DagsterEventType,
    DagsterRun,
    DagsterRunStatus,
    build_sensor_context,
    instance_for_test,
)
from psycopg import sql

from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.assets import asset_key
from archive_pipeline.defs.resources import PostgresResource
from archive_pipeline_tests.conftest import utc_today


def plain_table(conn, schema: str, name: str, days: list[dt.date], rows: int = 3) -> None:
    """``<schema>.<name> (id int, at timestamptz)`` with ``rows`` rows on each of ``days`` (column mode)."""
    table = sql.Identifier(schema, name)
    conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (id int, at timestamptz NOT NULL)").format(table))
    for n, day in enumerate(days):
        conn.execute(sql.SQL("INSERT INTO {} SELECT %s * 1000 + g, %s::timestamptz + g * interval '1 minute' "
                             "FROM generate_series(1, %s) g").format(table), (n, f"{day} 00:00+00", rows))


def tables_config(schema: str, names: list[str], start: dt.date, **settings):
    return parse_config({**settings, "retry": {"max_retries": 0, "delay_seconds": 0},
                         "tables": [{"name": f"{schema}.{n}", "day_column": "at", "start_date": start.isoformat()}
                                    for n in names]})


def tick(pg, defs, instance):
    repo = defs.get_repository_def()
    sensor = repo.get_sensor_def("archive_new_days")
    return sensor.evaluate_tick(build_sensor_context(
        instance=instance, resources={"postgres": PostgresResource(dsn=pg.dsn)}, repository_def=repo))


def requested(result) -> list[tuple[str, str]]:
    return sorted((r.job_name, r.partition_key) for r in result.run_requests or [])


# ------------------------------------------------------------------------------------------------
# The sensor and what is in flight


def test_the_sensor_does_not_request_days_a_queued_shared_job_run_archives(pg, conn, schema, archive_env):
    """Two tables with the same partitions share the job ``Archives_daily_<start>_UTC``. An operator backfills
    both for the last two days through that job, as the README shows for a table's own job: ``dagster job
    backfill -w workspace.yaml -j Archives_daily_... --from D1 --to D2`` queues one run per day of the shared
    job (``dagster/partition`` tag, no asset selection, no ``archive/table`` tag: the shared job has none). While
    they wait in the queue, the sensor ticks. The README: a day "that a queued or running run archives (... a day
    launched from the UI or a schedule by its dagster/partition tag ...) is left out". The sensor recognises a
    run only by the table's tag, the table's own job name or an asset selection naming the table, so it requests
    all four table-days again: each races the shared run for the table-day lock (one fails, retried) and every
    day is archived twice."""
    today = utc_today()
    days = [today - dt.timedelta(days=2), today - dt.timedelta(days=1)]
    for name in ("a", "b"):
        plain_table(conn, schema, name, days)
    config = tables_config(schema, ["a", "b"], days[0])
    defs = build_definitions(config)
    shared = f"Archives_daily_{days[0]:%Y_%m_%d}_UTC"
    assert defs.resolve_job_def(shared) is not None
    with instance_for_test() as instance:
        for day in days:  # what create_backfill_run stores for a job backfill from the command line
            instance.add_run(DagsterRun(job_name=shared, run_id=str(uuid.uuid4()), status=DagsterRunStatus.NOT_STARTED,
                                        tags={"dagster/backfill": "bkfl0001", "dagster/partition": day.isoformat(),
                                              "dagster/partition_set": f"{shared}_partition_set"}))
        result = tick(pg, defs, instance)
    assert requested(result) == [], f"days queued shared-job runs archive are requested again: {requested(result)}"


def test_another_tables_long_queue_does_not_hide_a_tables_queued_day_from_the_sensor(pg, conn, schema, archive_env):
    """``dagster job backfill`` (the README's command line, one run per day) queues a year of table ``big``: 1,000
    queued runs. Table ``small``'s day D was launched from the UI a moment before them and is queued too. The
    sensor must leave D out ("a day ... that a queued or running run archives ... is left out"), but it reads only
    the 1,000 newest unfinished runs of the whole instance, so ``small``'s queued run is not among them and D is
    requested a second time: two runs of one table-day, one failing on the other's lock."""
    today = utc_today()
    day = today - dt.timedelta(days=1)
    plain_table(conn, schema, "small", [day])
    plain_table(conn, schema, "big", [])
    config = tables_config(schema, ["small", "big"], day)
    defs = build_definitions(config)
    with instance_for_test() as instance:
        instance.add_run(DagsterRun(job_name=f"Archive_{schema}_small", run_id=str(uuid.uuid4()),
                                    status=DagsterRunStatus.NOT_STARTED,
                                    tags={"dagster/partition": day.isoformat(), "archive/table": f"{schema}.small"}))
        start = today - dt.timedelta(days=1000)
        for n in range(1000):
            instance.add_run(DagsterRun(job_name=f"Archive_{schema}_big", run_id=str(uuid.uuid4()),
                                        status=DagsterRunStatus.NOT_STARTED,
                                        tags={"dagster/partition": (start + dt.timedelta(days=n)).isoformat(),
                                              "archive/table": f"{schema}.big"}))
        result = tick(pg, defs, instance)
    assert requested(result) == [], f"a queued day is requested again: {requested(result)}"
