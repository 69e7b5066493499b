"""Hunt 4, class: what a Dagster operator sees must be true (partition status, metadata, check results, run
tags, failure descriptions, sensor and schedule requests), through Dagster's own APIs."""

from __future__ import annotations

import datetime as dt
import uuid

from dagster import (AssetCheckKey, AssetKey, AssetMaterialization, DagsterEventType, DagsterRun, DagsterRunStatus,
                     build_schedule_context, instance_for_test)
from psycopg import sql

from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.helpers import run_check_evaluations

DAY = dt.date(2024, 3, 10)


def _config(*tables: dict, **top) -> object:
    return parse_config({**top, "tables": [{"day_column": "at", "start_date": "2024-01-01", **t} for t in tables]})


def test_the_removal_schedule_does_not_request_a_day_whose_removal_a_person_launched_and_is_running():
    """A person launches the removal of 2024-01-01 from the UI (Remove_public_events, partition 2024-01-01:
    a run with the `dagster/partition` tag and no run key). While it runs, the removal schedule ticks. The
    README: it requests due days "never a day whose removal is still queued or running". It requested
    2024-01-01 again (it only looks for its own run keys), so a second removal of the same day is queued
    behind the first: two runs on one day in the UI, one of them waiting on the other's lock."""
    config = _config({"name": "public.events", "retention": {"keep_days": 30, "action": "delete"}})
    [spec] = config.tables
    repo = build_definitions(config, resources={}, check_source=False).get_repository_def()
    schedule = repo.get_schedule_def("remove_public_events_daily")
    archive_key = AssetKey(["archive", *spec.asset_path])
    when = dt.datetime(2024, 3, 1, 1, 30, tzinfo=dt.UTC)
    with instance_for_test() as instance:
        instance.report_runless_asset_event(AssetMaterialization(asset_key=archive_key, partition="2024-01-01"))
        instance.add_run(DagsterRun(job_name="Remove_public_events", run_id=str(uuid.uuid4()),
                                    status=DagsterRunStatus.STARTED,
                                    tags={"dagster/partition": "2024-01-01", "archive/table": spec.name}))
        result = schedule.evaluate_tick(build_schedule_context(instance=instance, scheduled_execution_time=when,
                                                               repository_def=repo))
        requested = [r.partition_key for r in result.run_requests or []]
    assert "2024-01-01" not in requested, f"a day whose removal is running is requested again: {requested}"


def _events(schema: str, **table) -> object:
    return parse_config({"retry": {"max_retries": 0, "delay_seconds": 0},
                         "tables": [{"name": f"{schema}.events", "day_column": "created_at",
                                     "start_date": DAY.isoformat(), **table}]})


def _overwrite(schema: str) -> dict:
    return {"ops": {f"archive__{schema}__events": {"config": {"overwrite": True}}}}


def test_the_removal_schedule_requests_a_removed_day_that_is_back_in_the_source_and_archived_again(
        conn, schema, archive_env):
    """2024-03-10 is archived and removed by its Remove_ job (retention delete). Then a late row of that day
    arrives; source_unchanged says so and the person archives the day again with overwrite (the README's
    remedy): the day is archived (1 row) and in the source again, "an ordinary source day again: the next
    removal proves and removes it again". The removal schedule, which requests "due days that are archived
    and still in the source", never requests it: its source_removed partition is still materialized from
    the first removal, so the late row stays in PostgreSQL for good while the UI shows the day removed."""
    day = DAY
    create_sample_events(conn, [day, day + dt.timedelta(days=1)], rows_per_day=5, schema=schema)
    defs = build_definitions(_events(schema, retention={"keep_days": 30, "action": "delete"}))
    archive = defs.resolve_job_def(f"Archive_{schema}_events")
    events = sql.Identifier(schema, "events")
    with instance_for_test() as instance:
        assert archive.execute_in_process(partition_key=day.isoformat(), instance=instance).success
        assert defs.resolve_job_def(f"Remove_{schema}_events").execute_in_process(
            partition_key=day.isoformat(), instance=instance).success
        conn.execute(sql.SQL("CREATE TEMP TABLE late AS SELECT * FROM {} WHERE created_at >= %s LIMIT 1").format(
            events), (day + dt.timedelta(days=1),))
        conn.execute("UPDATE late SET id = -1, created_at = created_at - interval '1 day'")
        conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM late").format(events))
        again = archive.execute_in_process(partition_key=day.isoformat(), instance=instance,
                                           run_config=_overwrite(schema))
        assert again.success
        schedule = defs.get_repository_def().get_schedule_def(f"remove_{schema}_events_daily")
        when = dt.datetime(2024, 6, 1, 1, 30, tzinfo=dt.UTC)
        result = schedule.evaluate_tick(build_schedule_context(instance=instance, scheduled_execution_time=when,
                                                               repository_def=defs.get_repository_def()))
        requested = [r.partition_key for r in result.run_requests or []]
    assert day.isoformat() in requested, (f"a day archived again and back in the source is never removed again: "
                                          f"requested {requested}, {result.skip_message}")


def _failures(result) -> list[str]:
    return [e.step_failure_data.error.message for e in result.all_events
            if e.event_type == DagsterEventType.STEP_FAILURE]


def test_a_removal_refused_because_the_day_changed_says_what_to_do(conn, schema, archive_env):
    """A day is archived, then a row of it is updated in PostgreSQL; the removal job (or its schedule) runs for
    it. The proof fails (right) and the run fails with "<table> <day> stays in the source: its archive is not
    proven: the source's rows ... are not the archive's ...": cause only. The README promises every message
    names the cause and what to do, and the archive job's own failure for the same situation gives the run
    config (overwrite: true) that archives the day again; the removal's says nothing, and the schedule will
    simply fail it again every day."""
    create_sample_events(conn, [DAY], rows_per_day=5, schema=schema)
    defs = build_definitions(_events(schema, retention={"keep_days": 30, "action": "delete"}))
    with instance_for_test() as instance:
        assert defs.resolve_job_def(f"Archive_{schema}_events").execute_in_process(
            partition_key=DAY.isoformat(), instance=instance).success
        conn.execute(sql.SQL("UPDATE {} SET event_type = 'edited' WHERE id = (SELECT min(id) FROM {})").format(
            sql.Identifier(schema, "events"), sql.Identifier(schema, "events")))
        result = defs.resolve_job_def(f"Remove_{schema}_events").execute_in_process(
            partition_key=DAY.isoformat(), instance=instance, raise_on_error=False)
    [failure] = _failures(result)
    assert not result.success and f"{schema}.events {DAY}" in failure
    assert "overwrite" in failure or "to fix" in failure or "What to do" in failure, failure


def _unbuildable_store_defs(pg, schema: str, **table):
    """The factory with another project's resources, whose S3 client cannot be built (an endpoint without
    its scheme: botocore's ValueError "Invalid endpoint")."""
    from dagster_aws.s3 import S3Resource

    from archive_pipeline.defs.resources import ArchiveStoreResource, PostgresResource

    config = parse_config({"retry": {"max_retries": 2, "delay_seconds": 0},
                           "tables": [{"name": f"{schema}.events", "day_column": "at", "start_date": "2024-01-01",
                                       **table}]})
    resources = {"postgres": PostgresResource(dsn=pg.dsn),
                 "archive_store": ArchiveStoreResource(s3=S3Resource(endpoint_url="minio:9000",
                                                                     region_name="us-east-1"), bucket="archive")}
    return build_definitions(config, resources=resources, check_source=False)


def _failure_texts(result) -> list[str]:
    return [e.step_failure_data.user_failure_data.description if e.step_failure_data.user_failure_data
            else e.step_failure_data.error.message for e in result.all_events
            if e.event_type == DagsterEventType.STEP_FAILURE]


def test_a_removal_whose_store_client_cannot_be_built_fails_at_once_naming_table_and_day(pg, schema):
    """The same resources make the archive job fail at once with "<table> <day>: ... Invalid endpoint" (see
    test_operator). The removal job (Remove_<table>) built the client outside its handling: botocore's bare
    ValueError escaped as a stack trace naming neither table nor day, and Dagster's retry policy retried
    it with backoff (STEP_UP_FOR_RETRY) although no retry can fix an endpoint without its scheme."""
    defs = _unbuildable_store_defs(pg, schema, retention={"keep_days": 30, "action": "delete"})
    with instance_for_test() as instance:
        run = defs.resolve_job_def(f"Remove_{schema}_events").execute_in_process(
            partition_key="2024-01-02", instance=instance, raise_on_error=False)
    kinds = [e.event_type_value for e in run.all_events]
    [text] = _failure_texts(run)
    assert not run.success
    assert f"{schema}.events" in text and "2024-01-02" in text and "Invalid endpoint" in text, text
    assert "STEP_UP_FOR_RETRY" not in kinds


def test_verify_archives_whose_store_client_cannot_be_built_names_the_table_and_is_not_retried(pg, schema):
    """verify_archives (latest_archive_intact, source_unchanged) with the same resources: each check built the
    client before its handling (`_unreachable`, which names table, day, cause and remedy), so the bare
    ValueError escaped as a stack trace naming no table, and was retried with backoff as if transient."""
    defs = _unbuildable_store_defs(pg, schema)
    key = AssetKey(["archive", schema, "events"])
    with instance_for_test() as instance:
        instance.report_runless_asset_event(AssetMaterialization(
            asset_key=key, partition="2024-01-02",
            metadata={"md5": "0" * 32, "compressed_bytes": 1, "dagster/row_count": 1, "format": "jsonl",
                      "compression": "zstd", "state": "archived"}))
        run = defs.resolve_job_def("verify_archives").execute_in_process(instance=instance, raise_on_error=False)
    kinds = [e.event_type_value for e in run.all_events]
    texts = _failure_texts(run)
    assert not run.success and len(texts) == 2
    for text in texts:
        assert f"{schema}.events" in text and "Invalid endpoint" in text, text
    assert "STEP_UP_FOR_RETRY" not in kinds


def test_a_removal_of_a_day_never_archived_is_a_failed_run_not_a_failed_proof(conn, schema, archive_env):
    """A person launches Remove_<table> for a due day that was never archived (its archive partition is
    missing: the sensor had not got to it yet). The run fails (right), but it also records the day's
    blocking archive_proven check as failed (ERROR, red: "has no archive"), the colour of an archive
    proven wrong. Nothing was proven either way: archive_intact says "not archived yet; nothing to check"
    as a warning for such a day, and the README has a removal that fails before it can prove anything
    show as a failed run, not as a failed proof."""
    create_sample_events(conn, [DAY], rows_per_day=5, schema=schema)
    defs = build_definitions(_events(schema, retention={"keep_days": 30, "action": "delete"}))
    with instance_for_test() as instance:
        result = defs.resolve_job_def(f"Remove_{schema}_events").execute_in_process(
            partition_key=DAY.isoformat(), instance=instance, raise_on_error=False)
        result_checks = run_check_evaluations(instance, result.run_id)
    assert not result.success
    red = [(e.partition, e.description) for e in result_checks
           if not e.passed and e.severity.value == "ERROR"]
    assert red == [], f"a day never archived shows a failed proof: {red}"


def test_archive_proven_alone_is_not_green_for_a_day_a_refused_removal_left_pending_in_the_source(
        conn, schema, archive_env, s3_client):
    """A removal of 2024-03-10 was refused (a late row arrived) and the manifest it had marked "pending" could
    not be put back (README: "the pending mark stays while every row is still in the source"). A person then
    runs *Execute* on archive_proven for the day (or the removal job with dry_run: true) to see whether it
    can go. The check passes, green: "removed from the source (pending, ...) after its archive was proven;
    the archive is intact". The day was never removed, its source holds a row the archive lacks, and nothing
    was compared with the source; the real removal run settles the mark and refuses the day as changed. A
    dry run must not be green where the removal itself is refused."""
    from archive_pipeline.core.manifest import encode_manifest
    from archive_pipeline.core.store import S3Store
    from archive_pipeline.core.verify import load_manifest

    create_sample_events(conn, [DAY], rows_per_day=5, schema=schema)
    defs = build_definitions(_events(schema, retention={"keep_days": 30, "action": "delete"}))
    store = S3Store(s3_client, archive_env, prefix="archive")
    key = f"archive/{schema}.events/2024/03/{DAY}.jsonl.zst"
    removal = AssetKey(["source_removed", schema, "events"])
    with instance_for_test() as instance:
        assert defs.resolve_job_def(f"Archive_{schema}_events").execute_in_process(
            partition_key=DAY.isoformat(), instance=instance).success
        events = sql.Identifier(schema, "events")
        conn.execute(sql.SQL("CREATE TEMP TABLE late AS SELECT * FROM {} LIMIT 1").format(events))
        conn.execute(sql.SQL("UPDATE late SET id = -1, event_type = 'late'"))
        conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM late").format(events))
        # the refused removal's mark, left pending (no transaction of it is known: a source with rows was not removed)
        marked = {**load_manifest(store, key), "removed": {"at": "2024-05-01T00:00:00+00:00", "action": "delete",
                                                            "state": "pending"}}
        store.put_bytes(key + ".manifest.json", encode_manifest(marked), "application/json")
        prove_only = defs.resolve_implicit_global_asset_job_def().get_subset(
            asset_check_selection={AssetCheckKey(removal, "archive_proven")}, asset_selection=set())
        run = prove_only.execute_in_process(partition_key=DAY.isoformat(), instance=instance, raise_on_error=False)
        [proof] = run_check_evaluations(instance, run.run_id)
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(events)).fetchone()[0] == 6  # all still there
    assert not proof.passed, f"green for a day still in the source with a row the archive lacks: {proof.description}"


def test_a_failed_archive_intact_does_not_say_in_its_metadata_that_everything_matched(conn, schema, archive_env,
                                                                                       s3_client):
    """The archived object of 2024-03-10 is replaced in the bucket by 7 bytes; verify_archives re-checks it and
    records the day's archive_intact as failed: "NOT intact: size: recorded ... bytes, stored 7; ETag ...",
    right. The same result's metadata says `verified: object, size and manifest match what was recorded`,
    the sentence of a passing check, beside a red one (the verdict's text is set whatever it found)."""
    create_sample_events(conn, [DAY], rows_per_day=5, schema=schema)
    defs = build_definitions(_events(schema))
    with instance_for_test() as instance:
        assert defs.resolve_job_def(f"Archive_{schema}_events").execute_in_process(
            partition_key=DAY.isoformat(), instance=instance).success
        s3_client.put_object(Bucket=archive_env, Key=f"archive/{schema}.events/2024/03/{DAY}.jsonl.zst", Body=b"damaged")
        run = defs.resolve_job_def("verify_archives").execute_in_process(instance=instance, raise_on_error=False)
        run_checks = run_check_evaluations(instance, run.run_id)
    [intact] = [e for e in run_checks if e.check_name == "archive_intact"]
    assert not intact.passed and intact.partition == DAY.isoformat()
    said = intact.metadata["verified"].value
    assert "match what was recorded" not in said, f"a failed check's metadata says verified: {said!r}"
