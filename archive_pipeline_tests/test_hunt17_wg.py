"""Hunt 17 (wg): the Dagster side as an operator uses it (checks, schedules, sensors, metadata)."""

from __future__ import annotations

import datetime as dt

from dagster import instance_for_test

from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.local.local_stack import create_sample_events


def _config(schema, **table):
    return parse_config({"retry": {"max_retries": 0, "delay_seconds": 0},
                         "tables": [{"name": f"{schema}.events", "day_column": "created_at",
                                     "start_date": "2024-03-10", **table}]})


def test_source_unchanged_with_nothing_archived_is_not_a_green_comparison(conn, schema, archive_env):
    """Scenario: a table just added to the YAML (its days in PostgreSQL, nothing archived yet); the operator runs the
    on-demand job ``verify_archives`` (README: "Schedule `verify_archives` weekly if you like").

    Now: ``latest_archive_intact`` says, as a warning, "nothing archived yet; nothing to check", but
    ``source_unchanged`` passes green: "the source of 0 archived days still matches their manifests". A check that
    compared nothing is shown as a passed comparison (the asset's check tab is green for a table of which no day has
    an archive to compare with).

    Should: as ``latest_archive_intact`` and the README's "one that has never run says so as a warning": not passed,
    severity WARN, saying nothing is archived yet, so there is nothing to compare.
    Fix idea: in build_source_unchanged_check, when ``_latest`` returns no day, return
    ``AssetCheckResult(passed=False, severity=WARN, description="<table>: nothing archived yet; nothing to compare")``.
    """
    create_sample_events(conn, [dt.date(2024, 3, 10)], rows_per_day=5, schema=schema)
    defs = build_definitions(_config(schema))
    with instance_for_test() as instance:
        run = defs.resolve_job_def("verify_archives").execute_in_process(instance=instance, raise_on_error=False)
        found = {e.check_name: e for e in run.get_asset_check_evaluations()}
    latest, unchanged = found["latest_archive_intact"], found["source_unchanged"]
    assert not latest.passed and "nothing archived" in latest.description  # (its sibling says so)
    assert not unchanged.passed, unchanged.description
    assert "nothing" in unchanged.description.lower(), unchanged.description


def test_a_skipped_day_records_the_archiver_version_that_wrote_its_archive(conn, schema, archive_env, store, temp_dir,
                                                                          s3_client):
    """Scenario: a day archived by an earlier release of archive_pipeline (its manifest says ``archiver.version``
    0.0.7); after the upgrade the day is launched again (a backfill over history, the schedule's re-request) and
    found identical: state ``skipped``, nothing uploaded. The operator looks for the days a faulty release wrote by
    the materializations' ``archiver_version``.

    Now: the skipped day's materialization says ``archiver_version`` = the running release (0.1.0): ``_skipped``
    in core/archive.py builds the ArchiveResult from the manifest (rows, MD5, snapshot_at, and, deliberately, "the
    archive's server" version) but leaves ``archiver_version`` at its default, this process's ``__version__``. The
    latest record of the day names a writer that did not write its archive; the 0.0.7 archive is hidden.

    Should: the metadata describes the archive it records: ``archiver_version`` 0.0.7, as its manifest says (or no
    such entry when the manifest does not say).
    Fix idea: in ``_skipped`` pass ``archiver_version=(manifest.get("archiver") or {}).get("version") or "unknown"``.
    """
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.manifest import decode_manifest, encode_manifest

    day = dt.date(2024, 3, 10)
    create_sample_events(conn, [day], rows_per_day=5, schema=schema)
    config = _config(schema)
    result = archive_partition(conn, config.tables[0], day, store, temp_dir=temp_dir)
    raw = s3_client.get_object(Bucket=archive_env, Key=result.manifest_key)["Body"].read()
    manifest = decode_manifest(raw)
    manifest["archiver"] = {"name": "archive_pipeline", "version": "0.0.7"}  # written by an earlier release
    manifest.pop("manifest_sha256", None)
    s3_client.put_object(Bucket=archive_env, Key=result.manifest_key, Body=encode_manifest(manifest),
                         ContentType="application/json")
    defs = build_definitions(config)
    with instance_for_test() as instance:
        run = defs.resolve_job_def(f"Archive_{schema}_events").execute_in_process(partition_key=day.isoformat(),
                                                                                   instance=instance)
        [event] = run.get_asset_materialization_events()
    meta = {k: v.value for k, v in event.materialization.metadata.items()}
    assert meta["state"] == "skipped", meta["summary"]
    assert meta.get("archiver_version") == "0.0.7", meta.get("archiver_version")
