"""Hunt 18 (xm): honesty of what Dagster shows: the materialization metadata and the asset checks (archive_intact,
latest_archive_intact) compared with the bucket after an overwrite outside Dagster and a day the sensor recorded from
the command line's archive."""

from __future__ import annotations

import datetime as dt

from dagster import AssetCheckKey, instance_for_test
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import parse_config
from archive_pipeline.core.manifest import decode_manifest
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.assets import asset_key, job_name
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.helpers import run_check_evaluations, run_materializations
from archive_pipeline_tests.test_hunt16_vm import YESTERDAY, _sensor_run_failed, _table, _tick
from archive_pipeline_tests.test_hunt16_vm import _config as _yesterdays_config

DAY = dt.date(2024, 3, 10)


def _config(schema: str, **table):
    return parse_config({"retry": {"max_retries": 0}, "tables": [{
        "name": f"{schema}.events", "day_column": "created_at", "start_date": "2024-03-01", **table}]})


def _verify_archives(defs, instance) -> dict:
    run = defs.resolve_job_def("verify_archives").execute_in_process(instance=instance, raise_on_error=False)
    return {e.check_name: e for e in run_check_evaluations(instance, run.run_id)}


def _execute_intact(defs, instance, spec, day: str) -> list:
    job = defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_check_selection={AssetCheckKey(asset_key(spec), "archive_intact")}, asset_selection=set())
    run = job.execute_in_process(instance=instance, partition_key=day, raise_on_error=False)
    return run_check_evaluations(instance, run.run_id)


def test_a_deep_checked_day_archived_again_from_the_command_line_is_not_shown_intact_without_a_proof(
        conn, schema, archive_env, store):
    """Scenario: a table with ``deep_check: true``. Archive_<schema>_events archives 2024-03-10 and proves it
    (archive_intact passed: "content proven"). A row of the day is then edited, and the operator archives the day
    again from the command line (``archive-pipeline archive --day 2024-03-10 --overwrite``: the core's
    archive_partition with overwrite), which writes generation 2 and proves nothing against the source. Then the
    operator runs verify_archives (latest_archive_intact, which records the day's archive_intact too).

    Now: ``_recheck`` (defs/checks.py) sees the recorded proof ("content proven", about generation 1) and calls
    ``verify_result`` without a connection; the recorded object is gone, ``_archived_again`` finds generation 2 and
    checks it against its own manifest only (size and ETag): both checks PASS, green, "archived again since ...;
    that archive checked as its manifest says". The day's partition shows a deep_check archive intact whose content
    no one ever proved; the materialization beside it still says "content proven" of an object deleted since.

    Should: README: "a `deep_check` day whose content proof never ran is not shown intact". An archive found
    replaced since the record, of a deep_check table, is proven before it is called intact (deep_verify_of against
    the source, as the run's own check does), or the check fails saying that the archive now in the bucket
    (generation 2, archived outside Dagster) was never proven, with the remedy (archive the day through Dagster).
    Fix idea: in verify_result, when ``replaced`` and the caller is a deep_check table's recheck, pass the source's
    connection (or return a not-proven problem) instead of the quick check of the replacement."""
    create_sample_events(conn, [DAY], rows_per_day=5, schema=schema)
    config = _config(schema, deep_check=True)
    spec = config.tables[0]
    defs = build_definitions(config)
    with instance_for_test() as instance:
        run = defs.resolve_job_def(job_name(spec)).execute_in_process(instance=instance, partition_key=DAY.isoformat())
        [first] = run_check_evaluations(instance, run.run_id)
        assert first.passed and "content proven" in first.description  # (the premise: generation 1 proven)
        conn.execute(sql.SQL("UPDATE {t} SET user_id = user_id + 1 WHERE id = (SELECT min(id) FROM {t})").format(
            t=sql.Identifier(schema, "events")))
        again = archive_partition(conn, spec, spec.period(DAY), store, overwrite=True)  # the command line's
        assert again.generation == 2
        found = _verify_archives(defs, instance)
    for name in ("archive_intact", "latest_archive_intact"):
        assert not found[name].passed, (name, found[name].description)
        assert "proven" in found[name].description, (name, found[name].description)


def test_an_archive_written_again_with_the_same_bytes_is_not_checked_as_the_recorded_object(
        conn, schema, archive_env, store, s3_client):
    """Scenario: Archive_<schema>_events archives 2024-03-10 (generation 1 at ``2024-03-10.jsonl.zst``; the
    materialization records that object_key, dagster/uri and generation 1). Later the day is archived again outside
    Dagster with overwrite and unchanged rows (``archive-pipeline archive --overwrite``): generation 2 is written at
    ``2024-03-10.g2.jsonl.zst`` with the very same bytes (same MD5, size, rows and fingerprint), the manifest names
    it, and generation 1's object is deleted. The operator runs verify_archives.

    Now: ``verify_archive`` (core/verify.py) compares only md5, bytes, rows and fingerprint of the manifest with the
    record, not the object's key or generation, so ``verify_result`` finds no problem and never asks
    ``_archived_again``: latest_archive_intact and archive_intact pass with "object, size and manifest match what
    was recorded", and their metadata ``archive`` links ``s3://.../2024-03-10.jsonl.zst``, an object that no longer
    exists. The record beside it (object_key, dagster/uri, generation 1) names the deleted object, and nothing says
    it is stale.

    Should: a manifest naming another object (or a later generation) than the record is "archived again since this
    was recorded (generation 2, ...2024-03-10.g2.jsonl.zst)", as for an overwrite with other bytes, and the check's
    ``archive`` is the object now in the bucket. Fix idea: compare ``expected['object_key']`` (and ``generation``)
    with the manifest's in verify_archive, or call ``_archived_again`` whenever the manifest's object key is not the
    recorded one."""
    create_sample_events(conn, [DAY], rows_per_day=5, schema=schema)
    config = _config(schema)
    spec = config.tables[0]
    defs = build_definitions(config)
    with instance_for_test() as instance:
        run = defs.resolve_job_def(job_name(spec)).execute_in_process(instance=instance, partition_key=DAY.isoformat())
        [record] = run_materializations(instance, run.run_id)
        recorded_key = record.metadata["object_key"].value
        again = archive_partition(conn, spec, spec.period(DAY), store, overwrite=True)  # the command line's
        assert again.generation == 2 and again.md5 == record.metadata["md5"].value  # (the premise: same bytes)
        listed = [o["Key"] for o in s3_client.list_objects_v2(Bucket=archive_env)["Contents"]]
        assert recorded_key not in listed and again.key in listed  # (generation 1's object is gone)
        found = _verify_archives(defs, instance)
    for name in ("archive_intact", "latest_archive_intact"):
        evaluation = found[name]
        assert "archived again" in evaluation.description, (name, evaluation.description)
        assert evaluation.metadata["archive"].value.endswith(again.key), (name, evaluation.metadata["archive"])


def test_a_deep_checked_day_the_sensor_recorded_from_the_command_line_is_not_said_archived_before_deep_check(
        pg, conn, schema, archive_env, store, temp_dir):
    """Scenario: a table with ``deep_check: true``. The sensor's run of yesterday failed; the operator follows the
    tick's remedy (``archive-pipeline archive --table <t> --day <yesterday>``, here the same core call), and the next
    tick records the day from its manifest (defs/outside.py). The operator then executes archive_intact for the day.

    Now: the record the sensor builds (``_manifest_metadata``) has no ``verified`` entry at all, and ``_recheck``
    (defs/checks.py) takes a deep_check record without "content proven" for one "archived before deep_check was
    set": the check fails, ERROR and blocking, "NOT intact: its content was never proven against the source
    (archived before deep_check was set: no proof recorded)". deep_check was set all along: the day was archived
    outside Dagster on the sensor's own advice. The cause shown is false, and nothing in the record said the
    content was unproven.

    Should: the sensor's record says what was and was not checked (``verified``: not proven: archived outside
    Dagster by the command line; the tick checked the object's size and ETag), and the check names that cause
    (archived outside Dagster, never proven), with the remedy that proves it.
    Fix idea: outside._record adds ``verified`` ("not proven: archived outside Dagster ...") to the record, and
    _recheck words a record without a proof by what its ``verified`` says, not always "before deep_check was set"."""
    _table(conn, schema)
    config = _yesterdays_config(schema, deep_check=True)
    spec = config.tables[0]
    archive_partition(conn, spec, YESTERDAY, store, temp_dir=temp_dir)  # the tick's remedy, followed
    defs = build_definitions(config)
    with instance_for_test() as instance:
        _sensor_run_failed(instance, spec, YESTERDAY.isoformat())
        [record] = _tick(defs, instance, pg).asset_events
        instance.report_runless_asset_event(record)
        [checked] = _execute_intact(defs, instance, spec, YESTERDAY.isoformat())
    assert "before deep_check was set" not in checked.description, checked.description
    assert "verified" in record.metadata, sorted(record.metadata)


def test_the_sensors_record_of_a_command_line_archive_carries_the_manifests_column_schema(
        pg, conn, schema, archive_env, store, temp_dir, s3_client):
    """Scenario: the sensor's run of yesterday failed; the operator archives the day from the command line, as the
    tick says, and the next tick records it from its manifest (the day's latest materialization, and the asset's
    latest: the one the UI's Columns tab and column lineage read).

    Now: ``outside._record`` builds the record from ``assets._manifest_metadata``, which carries rows, sizes,
    digests and keys but no ``dagster/column_schema``: the asset's column schema, shown from every run's record
    (TableSchema of the archived columns), disappears from the UI once the sensor has recorded a day, though the
    manifest records every column (name, pg_type, nullable). A run that meets the same archive (a skip) records the
    schema from the manifest.

    Should: every record of an archive carries the archived columns as ``dagster/column_schema``, built from the
    manifest's ``columns`` (name, pg_type, nullable), as a skipped run's record does.
    Fix idea: add a TableSchema from ``manifest['columns']`` in ``_manifest_metadata`` (used by the sensor and by a
    ranged run's record of a removed day alike)."""
    _table(conn, schema)
    config = _yesterdays_config(schema)
    spec = config.tables[0]
    archived = archive_partition(conn, spec, YESTERDAY, store, temp_dir=temp_dir)  # the tick's remedy, followed
    manifest = decode_manifest(s3_client.get_object(Bucket=archive_env, Key=archived.manifest_key)["Body"].read())
    defs = build_definitions(config)
    with instance_for_test() as instance:
        _sensor_run_failed(instance, spec, YESTERDAY.isoformat())
        [record] = _tick(defs, instance, pg).asset_events
    assert "dagster/column_schema" in record.metadata, sorted(record.metadata)
    columns = record.metadata["dagster/column_schema"].value.columns
    assert [(c.name, c.type) for c in columns] == [(c["name"], c["pg_type"]) for c in manifest["columns"]]
