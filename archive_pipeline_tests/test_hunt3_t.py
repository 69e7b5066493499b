"""Hunt 3 (t): what the Dagster side records and shows is true.

Every test drives the real Dagster APIs (``execute_in_process`` on an ``instance_for_test``,
``build_sensor_context``) against the real PostgreSQL and moto S3 of the fixtures, then reads back what
Dagster recorded (materializations, check evaluations, run requests) and compares it with the real state
of the bucket and the database. Each test asserts the correct behaviour."""

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
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.locks import lock_key
from archive_pipeline.core.store import S3Store
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.assets import asset_key
from archive_pipeline.defs.resources import PostgresResource
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.conftest import utc_today
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.helpers import run_check_evaluations

FIRST = dt.date(2024, 3, 10)
DAYS = [FIRST + dt.timedelta(days=i) for i in range(4)]
RANGE = {"dagster/asset_partition_range_start": DAYS[0].isoformat(),
         "dagster/asset_partition_range_end": DAYS[-1].isoformat()}


def _config(schema: str, max_retries: int = 1, **table):
    return parse_config({"retry": {"max_retries": max_retries, "delay_seconds": 0},
                         "backfill": {"max_days_per_run": 10},
                         "tables": [{"name": f"{schema}.events", "day_column": "created_at",
                                     "start_date": FIRST.isoformat(), **table}]})


def _job(defs, schema: str, table: str = "events"):
    return defs.resolve_job_def(f"Archive_{schema}_{table}")


def _on_event(instance, monkeypatch, action) -> None:
    """Call ``action(dagster_event)`` in the run's thread right after the instance stored each event (the
    test's instrument; the archiver runs unchanged)."""
    original = instance.handle_new_event

    def handle(event, *args, **kwargs):
        original(event, *args, **kwargs)
        if event.dagster_event is not None:
            action(event.dagster_event)

    monkeypatch.setattr(instance, "handle_new_event", handle)


def _verdicts(instance, spec, check: str = "archive_intact") -> list[tuple]:
    """(partition, status, description) of every execution of ``check``, newest first."""
    history = instance.event_log_storage.get_asset_check_execution_history(AssetCheckKey(asset_key(spec), check),
                                                                           limit=50)
    return [(h.partition, h.status.value, getattr(h.evaluation, "description", None) if h.evaluation else None)
            for h in history]


def _check_metadata(instance, spec, check: str) -> dict:
    [latest] = instance.event_log_storage.get_asset_check_execution_history(
        AssetCheckKey(asset_key(spec), check), limit=1)
    return {k: v.value for k, v in latest.evaluation.metadata.items()}


def _step_failures(result) -> list[str]:
    out = []
    for event in result.all_events:
        if event.event_type == DagsterEventType.STEP_FAILURE:
            data = event.step_failure_data
            out.append(data.user_failure_data.description if data.user_failure_data else data.error.message)
    return out


# ------------------------------------------------------------------------------------------------
# Bugs


def test_a_step_retry_does_not_archive_again_a_day_that_failed_for_good(pg, conn, schema, archive_env, monkeypatch):
    """A ranged backfill run of 2024-03-10..13 with a retry left: 2024-03-11 got a late row after it was
    archived (fails for good: "changed since archived", not retried), 2024-03-12's table-day lock is held by
    another run for a moment (retryable). The README: a step retry "does not redo the days the run already
    recorded, nor those that failed for good (the failure's permanent_days, still named by the retry's
    failure)". But the retry reads permanent_days from a STEP_FAILURE event, and a step that is retried
    records STEP_UP_FOR_RETRY instead: the retry fingerprints the changed day again (a whole day's read of
    the source for nothing, on every retry) and its failure does not say the day was left from the earlier
    attempt."""
    create_sample_events(conn, DAYS, rows_per_day=5, schema=schema)
    config = _config(schema)
    spec = config.tables[0]
    late, locked = DAYS[1], DAYS[2]
    job = _job(build_definitions(config), schema)
    with instance_for_test() as instance, pg.connect() as other:
        assert job.execute_in_process(instance=instance, partition_key=late.isoformat()).success
        conn.execute(sql.SQL("INSERT INTO {} (id, created_at, user_id, event_type) VALUES (999999, %s, 1, 'late')")
                     .format(sql.Identifier(schema, "events")), (dt.datetime.combine(late, dt.time(12), dt.UTC),))
        assert other.execute("SELECT pg_try_advisory_lock(%s)", lock_key(spec.name, locked)).fetchone()[0]

        def other_run_ends(event) -> None:  # the other run lets the day go once this run's first attempt passed it
            if event.event_type == DagsterEventType.ASSET_MATERIALIZATION and event.partition == DAYS[3].isoformat():
                other.execute("SELECT pg_advisory_unlock_all()")

        _on_event(instance, monkeypatch, other_run_ends)
        result = job.execute_in_process(instance=instance, tags=RANGE, raise_on_error=False)
        assert not result.success  # the late day needs overwrite: right
        assert [e.event_type_value for e in result.all_events if e.event_type_value.startswith("STEP_")] == \
            ["STEP_START", "STEP_UP_FOR_RETRY", "STEP_RESTARTED", "STEP_FAILURE"]
        tried = [entry.user_message for entry in instance.all_logs(result.run_id)
                 if entry.dagster_event is None and f"{late} changed since it was archived" in entry.user_message]
        [failure] = _step_failures(result)
    assert "from the earlier attempt of this run" in failure, failure
    assert len(tried) == 1, f"the day that failed for good was archived again by the retry ({len(tried)} attempts)"


def test_the_checks_find_an_archive_at_the_key_its_materialization_recorded(conn, schema, archive_env):
    """Days archived as jsonl + zstd; then the table's compression is changed to gzip (new days get
    ``.jsonl.gz`` keys; nothing in the README says existing archives move). verify_archives then shows both
    checks red: latest_archive_intact says the latest day's manifest "is missing" and records that day's
    archive_intact as NOT intact, and source_unchanged fails with "missing from the store (archive the day
    again)" for every archived day, although each archive is whole at the key its materialization recorded
    (``manifest_key``, ``object_key``) and the source has not changed. The checks render the key from the
    current configuration instead of reading what was recorded; archiving again as told writes a second
    archive of each day."""
    create_sample_events(conn, DAYS[:2], rows_per_day=5, schema=schema)
    before = _config(schema)
    spec = before.tables[0]
    with instance_for_test() as instance:
        for day in DAYS[:2]:
            assert _job(build_definitions(before), schema).execute_in_process(
                instance=instance, partition_key=day.isoformat()).success
        after = build_definitions(_config(schema, compression="gzip"))
        after.resolve_job_def("verify_archives").execute_in_process(instance=instance, raise_on_error=False)
        intact = _verdicts(instance, spec)[0]
        stored = _verdicts(instance, spec, "latest_archive_intact")[0]
        unchanged = _verdicts(instance, spec, "source_unchanged")[0]
    assert intact[:2] == (DAYS[1].isoformat(), "SUCCEEDED"), intact
    assert stored[1] == "SUCCEEDED", stored
    assert unchanged[1] == "SUCCEEDED", unchanged


def test_verify_archives_does_not_show_a_never_proven_deep_check_day_as_intact(conn, schema, archive_env, s3,
                                                                               monkeypatch):
    """A deep_check table ("the check is then blocking: a difference fails the run"): the day's proof could
    not run (the store refused the proof's download), so the run fails and the materialization says
    ``verified: not verified: ...``: the content was never proven. The weekly verify_archives then re-checks
    only object, size and manifest and records the day's archive_intact as passed, under a check whose
    description promises "its content equals the source's (deep_check)". (A failed proof, "NOT proven", is
    refused this way; a proof that never ran is not.)"""
    create_sample_events(conn, DAYS[:1], rows_per_day=5, schema=schema)
    config = _config(schema, max_retries=0, deep_check=True, compression="none")
    spec = config.tables[0]
    day = DAYS[0].isoformat()
    with instance_for_test() as instance:
        with FaultProxy(s3.endpoint_url) as proxy:
            monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", proxy.url)
            proxy.add(Fault(method="GET", path=r"\.jsonl$", action="error", status=403, code="AccessDenied"))
            run = _job(build_definitions(config), schema).execute_in_process(
                instance=instance, partition_key=day, raise_on_error=False)
        assert not run.success
        [record] = instance.get_records_for_run(run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records
        verified = record.event_log_entry.dagster_event.step_materialization_data.materialization.metadata["verified"]
        assert verified.value.startswith("not verified"), verified
        assert _verdicts(instance, spec) == []  # no verdict either way: right
        monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", s3.endpoint_url)
        build_definitions(config).resolve_job_def("verify_archives").execute_in_process(instance=instance,
                                                                                        raise_on_error=False)
        verdicts = _verdicts(instance, spec)
    assert verdicts and verdicts[0][:2] != (day, "SUCCEEDED"), \
        f"a deep_check day whose content was never proven is shown intact: {verdicts}"


def test_source_unchanged_names_a_day_whose_naming_mode_table_was_dropped_as_changed(conn, schema, archive_env):
    """Naming mode (one table per day): three days archived, then one day's table is dropped by hand (not by
    retention: its manifest has no ``removed`` mark), so its rows are gone from the source. source_unchanged
    should fail naming that day as changed and still compare the other two. Instead the whole check step
    fails as "could not check the archive ... to fix: check the table's name in the YAML configuration",
    no verdict is recorded (the check stays planned, shown as an execution failure) and the other days are
    not compared at all. (A declarative table whose day's child is dropped is reported as changed; retention's
    own removals of such tables are handled as 0 rows.)"""
    for day in DAYS[:3]:
        name = sql.Identifier(schema, f"log_{day:%Y%m%d}")
        conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz)").format(name))
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s), (2, %s)").format(name),
                     (dt.datetime.combine(day, dt.time(1), dt.UTC),) * 2)
    config = parse_config({"retry": {"max_retries": 0}, "tables": [{
        "name": f"{schema}.log", "start_date": FIRST.isoformat(),
        "partitioning": {"mode": "naming", "pattern": "log_%Y%m%d"}}]})
    spec = config.tables[0]
    defs = build_definitions(config)
    with instance_for_test() as instance:
        for day in DAYS[:3]:
            assert _job(defs, schema, "log").execute_in_process(instance=instance, partition_key=day.isoformat()).success
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, f"log_{DAYS[1]:%Y%m%d}")))
        result = defs.resolve_job_def("verify_archives").execute_in_process(instance=instance, raise_on_error=False)
        failures = _step_failures(result)
        [verdict] = _verdicts(instance, spec, "source_unchanged")
        assert verdict[1] == "FAILED", (verdict, failures)
        meta = _check_metadata(instance, spec, "source_unchanged")
    # (listed apart from changed days since hunt13 sb: its remedy is a restore or nothing, not an overwrite)
    assert meta["table_gone_days"] == [DAYS[1].isoformat()] and meta["changed_days"] == [], meta
    assert meta["checked_days"] == [d.isoformat() for d in DAYS[:3]], meta


def test_the_sensor_does_not_request_days_a_running_backfill_or_ui_run_is_archiving(pg, conn, schema, archive_env):
    """The README: "a day whose sensor run already failed (or whose run from anywhere is queued or running) is
    left out". Runs are looked up by run key only, and a backfill's runs (ranged: range tags, or one day:
    ``dagster/partition``) and a partition launched from the UI carry none: while a backfill run archives
    three days, the sensor requests all three again, so two runs race for each table-day's lock (one fails
    that day as "held by another run", retried) and every day is done twice."""
    today = utc_today()
    days = [today - dt.timedelta(days=n) for n in (3, 2, 1)]
    create_sample_events(conn, days, rows_per_day=3, schema=schema)
    config = parse_config({"tables": [{"name": f"{schema}.events", "day_column": "created_at",
                                       "start_date": days[0].isoformat(), "partitioning": {"mode": "declarative"}}]})
    repo = build_definitions(config).get_repository_def()
    sensor = repo.get_sensor_def("archive_new_days")
    job = f"Archive_{schema}_events"
    with instance_for_test() as instance:
        # a backfill's ranged run of the first two days, and a UI launch of the third, both running now
        instance.add_run(DagsterRun(job_name=job, run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTED,
                                    tags={"dagster/backfill": "bkfl0001", "archive/table": f"{schema}.events",
                                          "dagster/asset_partition_range_start": days[0].isoformat(),
                                          "dagster/asset_partition_range_end": days[1].isoformat()}))
        instance.add_run(DagsterRun(job_name=job, run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTED,
                                    tags={"dagster/partition": days[2].isoformat(), "archive/table": f"{schema}.events"}))
        result = sensor.evaluate_tick(build_sensor_context(
            instance=instance, resources={"postgres": PostgresResource(dsn=pg.dsn)}, repository_def=repo))
    requested = sorted(r.partition_key for r in result.run_requests or [])
    assert requested == [], f"days being archived right now are requested again: {requested}"


def test_a_removal_run_over_a_removed_day_with_a_damaged_archive_does_not_say_it_stays_in_the_source(
        pg, conn, schema, archive_env, s3_client):
    """A day archived through Dagster, then removed from the source outside the removal job (``prune`` on the
    command line, the core's ``remove_day``): its partition is dropped, its manifest marked removed. The removal
    schedule still requests it (its source_removed partition is not materialized), and meanwhile its archive,
    now the only copy of the rows, was damaged. The run fails saying "<table> <day> stays in the source: its
    archive is not proven": untrue, the rows are gone from the source; a person reading it believes the rows
    are safe in PostgreSQL while the only copy is damaged."""
    import psycopg

    day = DAYS[0]
    create_sample_events(conn, [day], rows_per_day=3, schema=schema)
    config = parse_config({"retry": {"max_retries": 0}, "tables": [{
        "name": f"{schema}.events", "day_column": "created_at", "start_date": day.isoformat(),
        "partitioning": {"mode": "declarative"}, "retention": {"keep_days": 30, "action": "drop"}}]})
    spec = config.tables[0]
    defs = build_definitions(config)
    with instance_for_test() as instance:
        assert _job(defs, schema).execute_in_process(instance=instance, partition_key=day.isoformat()).success
        with psycopg.connect(pg.dsn, autocommit=True) as primary:
            removal = remove_day(primary, spec, day, S3Store(s3_client, archive_env, prefix="archive"))
        assert removal.rows == 3 and not removal.dry_run
        s3_client.put_object(Bucket=archive_env, Key=f"archive/{schema}.events/2024/03/{day}.jsonl.zst", Body=b"damaged")
        result = defs.resolve_job_def(f"Remove_{schema}_events").execute_in_process(
            instance=instance, partition_key=day.isoformat(), raise_on_error=False)
        [proof] = run_check_evaluations(instance, result.run_id)
        [failure] = _step_failures(result)
    assert not result.success and not proof.passed  # the archive is damaged: right
    assert conn.execute("SELECT to_regclass(%s)", (f"{schema}.events_{day:%Y%m%d}",)).fetchone()[0] is None
    assert "stays in the source" not in failure, failure


# ------------------------------------------------------------------------------------------------
# Guard (passes): a ranged run's days each recorded with their own truth


def test_a_ranged_run_with_a_skipped_a_changed_an_empty_and_a_new_day_records_each_as_it_is(conn, schema,
                                                                                           archive_env, s3_client):
    """2024-03-10 already archived (skipped), 2024-03-11 changed after archiving (fails, not materialized),
    2024-03-12 emptied (empty: a manifest alone), 2024-03-13 new (archived): each day's materialization has its
    own state and rows equal to its manifest's, the object's size and MD5 are the stored object's, and each
    archive_intact result is scoped to its own day; the changed day gets neither."""
    import hashlib
    import json

    create_sample_events(conn, DAYS, rows_per_day=5, schema=schema)
    config = _config(schema, max_retries=0)
    spec = config.tables[0]
    job = _job(build_definitions(config), schema)
    events = sql.Identifier(schema, "events")
    with instance_for_test() as instance:
        for day in DAYS[:2]:
            assert job.execute_in_process(instance=instance, partition_key=day.isoformat()).success
        child = sql.Identifier(schema, f"events_{DAYS[1]:%Y%m%d}")  # the changed day's own partition
        conn.execute(sql.SQL("UPDATE {} SET event_type = 'edited' WHERE ctid = (SELECT min(ctid) FROM {})").format(
            child, child))
        conn.execute(sql.SQL("DELETE FROM {} WHERE created_at >= %s AND created_at < %s").format(events),
                     (DAYS[2], DAYS[3]))
        result = job.execute_in_process(instance=instance, tags=RANGE, raise_on_error=False)
        assert not result.success
        metas = {}
        for record in instance.get_records_for_run(result.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records:
            event = record.event_log_entry.dagster_event
            metas[event.partition] = {k: getattr(v, "value", v) for k, v in
                                      event.step_materialization_data.materialization.metadata.items()}
        run_checks = sorted((h.partition, h.status.value) for h in instance.event_log_storage.
                            get_asset_check_execution_history(AssetCheckKey(asset_key(spec), "archive_intact"), limit=50)
                            if h.run_id == result.run_id)
    assert {d: m["state"] for d, m in metas.items()} == {
        DAYS[0].isoformat(): "skipped", DAYS[2].isoformat(): "empty", DAYS[3].isoformat(): "archived"}
    assert run_checks == [(DAYS[0].isoformat(), "SUCCEEDED"), (DAYS[2].isoformat(), "SUCCEEDED"),
                          (DAYS[3].isoformat(), "SUCCEEDED")]
    for day, meta in metas.items():
        manifest = json.loads(s3_client.get_object(Bucket=archive_env, Key=meta["manifest_key"])["Body"].read())
        assert (manifest["day"], manifest["rows"], manifest["fingerprint"]) == \
            (day, meta["dagster/row_count"], meta["fingerprint"]), day
        assert day in meta["summary"]
        if meta["state"] != "empty":
            body = s3_client.get_object(Bucket=archive_env, Key=meta["object_key"])["Body"].read()
            assert (len(body), hashlib.md5(body).hexdigest()) == (meta["compressed_bytes"], meta["md5"]), day
            assert meta["dagster/uri"] == f"s3://{archive_env}/{meta['object_key']}"
