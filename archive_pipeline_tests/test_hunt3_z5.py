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


def tick(pg, defs, instance, cursor: str | None = None):
    """One evaluation, with the cursor the daemon kept from the tick before (``cursor``)."""
    repo = defs.get_repository_def()
    sensor = repo.get_sensor_def("archive_new_days")
    return sensor.evaluate_tick(build_sensor_context(
        instance=instance, resources={"postgres": PostgresResource(dsn=pg.dsn)}, repository_def=repo, cursor=cursor))


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
        # NOT_STARTED: unfinished like QUEUED (which Dagster stores only with a code origin)
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



def test_a_run_of_another_code_location_does_not_hold_back_this_locations_day(pg, conn, schema, archive_env):
    """The README's way to archive two tables of the same name from two databases: two code locations, each with
    its own ``asset_key_prefix`` (here ``us``; the other, ``eu``). Their jobs are both ``Archive_<schema>_events``
    and their runs both carry ``archive/table=<schema>.events``. While the ``eu`` location backfills its own
    day D (a run started there), the ``us`` sensor must still request ``us``'s D: the run archives another
    database's table. The sensor's check for days in flight matches runs by table tag and job name from any
    location (its run-key check keeps locations apart, this one does not), so ``us``'s D is held back for as long
    as ``eu``'s run is queued or running (a year-long backfill there: a year of ``us``'s new days)."""
    from dagster import SensorEvaluationContext
    from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin

    day = utc_today() - dt.timedelta(days=1)
    plain_table(conn, schema, "events", [day])
    config = tables_config(schema, ["events"], day - dt.timedelta(days=3), asset_key_prefix=["us"])
    defs = build_definitions(config)
    repo = defs.get_repository_def()
    job = f"Archive_{schema}_events"
    with instance_for_test() as instance:
        origin = RemoteJobOrigin(RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("eu"), repo.name), job)
        instance.add_run(DagsterRun(job_name=job, run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTED,
                                    remote_job_origin=origin,
                                    tags={"dagster/partition": day.isoformat(), "archive/table": f"{schema}.events"}))
        context = SensorEvaluationContext(
            instance_ref=None, instance=instance, repository_name=repo.name, repository_def=repo,
            sensor_name="archive_new_days", resources={"postgres": PostgresResource(dsn=pg.dsn)},
            code_location_origin=RegisteredCodeLocationOrigin("us"))
        result = repo.get_sensor_def("archive_new_days").evaluate_tick(context)
    assert requested(result) == [(job, day.isoformat())], requested(result)



def test_a_table_with_a_backlog_does_not_starve_another_tables_new_day_across_ticks(pg, conn, schema, archive_env):
    """``sensor.max_runs_per_tick`` is smaller than the number of tables with new days (here 1, two tables; the
    same holds for the default 50 and 100 tables): ``backlog`` was added with history (four days never archived),
    ``fresh`` has yesterday. Each tick's runs are done before the next tick. The sensor promises "a day of each table
    in turn ... a table added with years of history does not hold back another table's new day until its backlog
    is drained", but every tick starts its turn at the first table of the YAML: as ``backlog``'s requested day is
    archived by the next tick, its next day again takes the only place, and ``fresh``'s day waits until the whole
    backlog is drained (three years: three years of ticks at this cap)."""
    from dagster import AssetMaterialization

    today = utc_today()
    history = [today - dt.timedelta(days=n) for n in (4, 3, 2, 1)]
    plain_table(conn, schema, "backlog", history)
    plain_table(conn, schema, "fresh", [today - dt.timedelta(days=1)])
    config = tables_config(schema, ["backlog", "fresh"], history[0], sensor={"max_runs_per_tick": 1})
    defs = build_definitions(config)
    keys = {spec.table_name: asset_key(spec) for spec in config.tables}
    seen = []
    with instance_for_test() as instance:
        cursor = None
        for _ in range(3):
            result = tick(pg, defs, instance, cursor)
            cursor = result.cursor or cursor  # as the daemon keeps it
            for request in result.run_requests or []:
                seen.append((request.job_name.rsplit("_", 1)[-1], request.partition_key))
                name = request.job_name.rsplit("_", 1)[-1]
                instance.report_runless_asset_event(AssetMaterialization(keys[name], partition=request.partition_key))
    assert ("fresh", (today - dt.timedelta(days=1)).isoformat()) in seen[:2], \
        f"the new day of the second table waited behind the first table's backlog: {seen}"


# ------------------------------------------------------------------------------------------------
# The shared job


def _materialized(instance, run_id: str) -> dict[tuple[str, str], dict]:
    out = {}
    for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records:
        event = record.event_log_entry.dagster_event
        meta = {k: getattr(v, "value", v) for k, v in event.step_materialization_data.materialization.metadata.items()}
        out[(event.asset_key.path[-1], event.partition)] = meta
    return out


def _step_failures(result) -> dict[str, str]:
    out = {}
    for event in result.all_events:
        if event.event_type == DagsterEventType.STEP_FAILURE:
            data = event.step_failure_data
            out[event.step_key] = data.user_failure_data.description if data.user_failure_data else data.error.message
    return out


def test_a_shared_job_ranged_run_records_each_tables_days_as_they_are(pg, conn, schema, archive_env, s3_client):
    """Three tables share ``Archives_daily_...``: ``a`` has a day changed after it was archived, ``b`` is already
    archived (skipped), ``c`` has no rows (empty). One ranged run of the shared job over both days: each table's
    days are recorded for that table alone, with that table's own state and object; ``a``'s failure names ``a``
    and its day and does not keep ``b``'s and ``c``'s days from being recorded."""
    days = [dt.date(2024, 3, 10), dt.date(2024, 3, 11)]
    plain_table(conn, schema, "a", days)
    plain_table(conn, schema, "b", days, rows=4)
    plain_table(conn, schema, "c", [])
    config = tables_config(schema, ["a", "b", "c"], days[0], backfill={"max_days_per_run": 10})
    defs = build_definitions(config)
    shared = defs.resolve_job_def(f"Archives_daily_{days[0]:%Y_%m_%d}_UTC")
    rng = {"dagster/asset_partition_range_start": days[0].isoformat(),
           "dagster/asset_partition_range_end": days[1].isoformat()}
    with instance_for_test() as instance:
        for name in ("a", "b"):
            for day in days:
                assert defs.resolve_job_def(f"Archive_{schema}_{name}").execute_in_process(
                    instance=instance, partition_key=day.isoformat()).success
        conn.execute(sql.SQL("INSERT INTO {} VALUES (99, %s)").format(sql.Identifier(schema, "a")),
                     (dt.datetime.combine(days[1], dt.time(5), dt.UTC),))
        result = shared.execute_in_process(instance=instance, tags=rng, raise_on_error=False)
        assert not result.success
        metas = _materialized(instance, result.run_id)
        failures = _step_failures(result)
    assert {k: m["state"] for k, m in metas.items()} == {
        ("a", days[0].isoformat()): "skipped",
        ("b", days[0].isoformat()): "skipped", ("b", days[1].isoformat()): "skipped",
        ("c", days[0].isoformat()): "empty", ("c", days[1].isoformat()): "empty"}
    for (name, day), meta in metas.items():
        assert f"{schema}.{name}/" in meta["manifest_key"] and day in meta["manifest_key"], (name, day, meta)
        assert meta["dagster/row_count"] == {"a": 3, "b": 4, "c": 0}[name]
    assert list(failures) == [f"archive__{schema}__a"], failures
    assert f"{schema}.a" in failures[f"archive__{schema}__a"] and days[1].isoformat() in failures[f"archive__{schema}__a"]


# ------------------------------------------------------------------------------------------------
# verify_archives over several tables


def _verdicts(instance, schema: str, name: str, check: str) -> list[tuple]:
    key = asset_key(parse_config({"tables": [{"name": f"{schema}.{name}", "day_column": "at",
                                              "start_date": "2024-03-10"}]}).tables[0])
    history = instance.event_log_storage.get_asset_check_execution_history(AssetCheckKey(key, check), limit=50)
    return [(h.partition, h.status.value, getattr(h.evaluation, "description", None) if h.evaluation else None)
            for h in history]


def test_verify_archives_with_one_tables_prefix_unreadable_checks_the_others(pg, conn, schema, archive_env, s3,
                                                                            monkeypatch):
    """``verify_archives`` over tables ``a`` and ``b``; the store refuses every request under ``a``'s folder
    (AccessDenied: a bucket policy changed for that prefix). ``b``'s checks still run and pass; ``a``'s fail as
    "could not check" naming ``a`` and the day, and ``a``'s day is not recorded as a damaged archive."""
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

    days = [dt.date(2024, 3, 10), dt.date(2024, 3, 11)]
    plain_table(conn, schema, "a", days)
    plain_table(conn, schema, "b", days)
    config = tables_config(schema, ["a", "b"], days[0])
    defs = build_definitions(config)
    with instance_for_test() as instance:
        for name in ("a", "b"):
            for day in days:
                assert defs.resolve_job_def(f"Archive_{schema}_{name}").execute_in_process(
                    instance=instance, partition_key=day.isoformat()).success
        with FaultProxy(s3.endpoint_url) as proxy:
            monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", proxy.url)
            proxy.add(Fault(path=rf"^/{archive_env}/archive/{schema}\.a/", action="error", status=403,
                            code="AccessDenied", times=None))
            result = defs.resolve_job_def("verify_archives").execute_in_process(instance=instance,
                                                                               raise_on_error=False)
        failures = _step_failures(result)
        a_intact = _verdicts(instance, schema, "a", "archive_intact")
        b_stored = _verdicts(instance, schema, "b", "latest_archive_intact")
        b_unchanged = _verdicts(instance, schema, "b", "source_unchanged")
    assert b_stored[0][1] == "SUCCEEDED" and b_unchanged[0][1] == "SUCCEEDED", (b_stored, b_unchanged, failures)
    assert set(failures) == {f"archive__{schema}__a_latest_archive_intact", f"archive__{schema}__a_source_unchanged"}, \
        failures
    for text in failures.values():
        assert f"{schema}.a" in text and days[1].isoformat() in text, text
    assert all(status == "SUCCEEDED" for _, status, _ in a_intact), a_intact


def test_cli_verify_with_one_tables_prefix_unreadable_verifies_the_other_tables(pg, conn, schema, s3, s3_client,
                                                                               bucket, tmp_path):
    """``archive-pipeline verify --from D1 --to D4`` over tables ``a`` and ``b``; the store refuses every request
    under ``a``'s folder (AccessDenied: a bucket policy changed for that prefix). ``b``'s four days are still
    verified and shown ok, and ``a``'s days are reported as not checked, naming ``a`` (as a store error of one day
    is: "a day it could not check ... is a problem of that day, and the other days are still checked"). Instead
    the command stops at ``a``'s listing: nothing of ``b`` is verified and no day is reported."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

    days = [dt.date(2024, 3, 10) + dt.timedelta(days=n) for n in range(4)]
    tables = [{"name": f"{schema}.{n}", "day_column": "at", "start_date": days[0].isoformat()} for n in ("a", "b")]
    store = S3Store(s3_client, bucket, prefix="archive", part_size=MIN_PART_SIZE)
    for spec in parse_config({"tables": tables}).tables:
        plain_table(conn, schema, spec.table_name, days)
        for day in days:
            archive_partition(conn, spec, day, store)
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": tables}))
    root = Path(__file__).resolve().parents[1]
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(path=rf"^/{bucket}/archive/{schema}\.a/", action="error", status=403, code="AccessDenied",
                        times=None))
        proxy.add(Fault(query=f"{schema}.a%2F", action="error", status=403, code="AccessDenied", times=None))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIVE_", "AWS_"))}
        env.update(PYTHONPATH=str(root), ARCHIVE_PIPELINE_CONFIG=str(config), ARCHIVE_PG_DSN=pg.dsn,
                   ARCHIVE_S3_BUCKET=bucket, ARCHIVE_S3_PREFIX="archive", ARCHIVE_S3_ENDPOINT_URL=proxy.url,
                   ARCHIVE_S3_ACCESS_KEY_ID="testing", ARCHIVE_S3_SECRET_ACCESS_KEY="testing",
                   AWS_MAX_ATTEMPTS="1")
        done = subprocess.run([sys.executable, "-m", "archive_pipeline.cli", "verify", "--from", days[0].isoformat(),
                               "--to", days[-1].isoformat(), "--json"], env=env, cwd=root, capture_output=True,
                              text=True, timeout=120)
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    report = json.loads(done.stdout)
    by_table = {}
    for day in report.get("days", []):
        by_table.setdefault(day["table"], []).append((day["day"], day["ok"]))
    assert by_table.get(f"{schema}.b") == [(d.isoformat(), True) for d in days], (report, done.stderr)
    assert [ok for _, ok in by_table.get(f"{schema}.a", [])] == [False] * 4, report
