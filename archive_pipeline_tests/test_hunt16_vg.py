"""Hunt 16 (vg): regressions and holes in the fixes for removed days in ranged runs (record_removed,
_refuse_damaged, verdict_carried by storage id, verdicts_as_they_were for a damaged day, _removed_manifest)."""

from __future__ import annotations

import datetime as dt

from dagster import AssetCheckKey, instance_for_test

from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.assets import asset_key, job_name
from archive_pipeline_tests.helpers import run_check_evaluations, run_materializations
from archive_pipeline_tests.test_hunt16_vd import DAY, DAYS, _latest, _naming_days, _range


def _step_failures(instance, run_id: str) -> list[str]:
    said = []
    for e in instance.all_logs(run_id):
        if e.is_dagster_event and e.dagster_event.is_step_failure:
            data = e.dagster_event.step_failure_data
            said.append(data.user_failure_data.description if data.user_failure_data else data.error.message)
    return said


def test_a_single_day_run_of_a_naming_mode_day_let_go_whose_object_is_gone_is_not_nothing_to_do(
        conn, schema, archive_env, store, s3_client, bucket):
    """Scenario: a legacy one-table-per-day table (naming mode, retention ``drop``). Dagster archives 2024-03-10..12
    (archive_intact passed). Retention lets 2024-03-11 go (its day table dropped: the archive is the day's only copy).
    Its data object is then deleted from the bucket (a lifecycle rule, a mistaken cleanup). The person materializes
    partition 2024-03-11 alone WITH its archive_intact check (the asset's *Materialize* for one day; a backfill
    launched one run per partition does the same for each day).

    Now: _refuse_damaged (the HEAD of a removed day's object) runs only in ranged runs (record_removed). A run of
    the day alone raises the core's "no table for 2024-03-11 ...: nothing to archive ... if it should have some,
    create or restore its table" (flagged nothing to do), and verdicts_as_they_were repeats the day's last verdict,
    PASSED ("not checked again ... The last check found: ... match"): the UI shows the check green about an object
    that is gone, and the failure sends the person to recreate a table rather than restore the archive.

    Expected (README: a removed day "whose object is missing or replaced fails as damaged (restore it from a backup
    of the bucket), and where the run planned its check, that is the day's archive_intact verdict"): the run of the
    day alone fails naming the missing object and the backup remedy, and records no passed verdict. Fix idea: in
    _archive_days, look at the object of a removed day (``_removed`` failures) for a single-day run too, before
    raising (the same _removed_manifest/_refuse_damaged path, without recording)."""
    from archive_pipeline.core.lifecycle import remove_day

    config, spec = _naming_days(conn, schema)
    defs = build_definitions(config, check_source=False)
    key = asset_key(spec)
    gone = DAYS[1].isoformat()
    intact = AssetCheckKey(key, "archive_intact")
    with instance_for_test() as instance:
        assert defs.resolve_job_def(job_name(spec)).execute_in_process(
            instance=instance, tags=_range(DAYS[0], DAYS[2])).success
        remove_day(conn, spec, spec.period(DAYS[1]), store)
        obj = _latest(instance, key, gone).asset_materialization.metadata["object_key"].value
        s3_client.delete_object(Bucket=bucket, Key=obj)
        with_checks = defs.resolve_implicit_global_asset_job_def().get_subset(
            asset_selection={key}, asset_check_selection={intact})
        result = with_checks.execute_in_process(instance=instance, partition_key=gone, raise_on_error=False)
        failures = _step_failures(instance, result.run_id)
        verdicts = [(e.passed, e.description) for e in run_check_evaluations(instance, result.run_id)
                    if e.partition == gone]
    assert not result.success
    assert not any(passed for passed, _ in verdicts), (
        f"{gone}'s object {obj} is missing; the run of the day alone recorded {verdicts}; failed with {failures}")
    assert any(obj in f and "backup" in f for f in failures), failures


def test_a_removed_days_head_failing_with_retries_off_does_not_say_it_is_retried(
        conn, schema, archive_env, store, monkeypatch):
    """Scenario: a legacy one-table-per-day table (naming mode, retention ``drop``), ``retry: max_retries: 0``.
    Dagster archives 2024-03-10..12; retention lets 2024-03-11 go (its day table dropped). A backfill of the three
    days runs again as one ranged run while the store answers the HEAD of 2024-03-11's object with 503 SlowDown.

    Now: record_removed's _refuse_damaged turns the HEAD's failure into ``failure(exc, spec, day, None)`` -- without
    the step's retry policy (nor the configuration's origin) -- so the day's failure says "... the run will be
    retried ... (retried as set by retry: in ...)" although retries are off: nothing retries it, and the person
    waits for a retry that never comes. (Every other failure of a day passes ``step_retries(context)``, and
    ``retries_off`` rewrites the words.)

    Expected: the day fails (not recorded as removed, not as damaged), and its message says retries are off and to
    launch it again, as every transient failure with ``max_retries: 0`` does. Fix idea: pass ``origin`` and
    ``step_retries(context)`` from _archive_days through record_removed to _refuse_damaged's (and
    _manifest_unread's) failure."""
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

    config, spec = _naming_days(conn, schema)
    defs = build_definitions(config, check_source=False)
    key = asset_key(spec)
    job = defs.resolve_job_def(job_name(spec))
    gone = DAYS[1].isoformat()
    with instance_for_test() as instance:
        assert job.execute_in_process(instance=instance, tags=_range(DAYS[0], DAYS[2])).success
        remove_day(conn, spec, spec.period(DAYS[1]), store)
        obj = _latest(instance, key, gone).asset_materialization.metadata["object_key"].value
        import os
        with FaultProxy(os.environ["ARCHIVE_S3_ENDPOINT_URL"]) as proxy:
            proxy.add(Fault(method="HEAD", path=rf"{obj.split('/')[-1]}$", action="error", status=503,
                            code="SlowDown", times=None))
            monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", proxy.url)
            result = job.execute_in_process(instance=instance, tags=_range(DAYS[0], DAYS[2]), raise_on_error=False)
            heads = proxy.requests(method="HEAD")
        failures = _step_failures(instance, result.run_id)
        recorded = {m.partition: m.metadata["state"].value
                    for m in run_materializations(instance, result.run_id) if m.asset_key == key}
    assert heads and not result.success and gone not in recorded, (heads, recorded, failures)
    said = "\n".join(failures)
    assert gone in said and "retries are off" in said and "will be retried" not in said \
        and "(retried as set by" not in said, said


def _copy_onto_itself_in_parts(s3_client, bucket: str, key: str) -> str:
    """``key`` copied onto itself by a multipart copy (as ``aws s3 cp``/a storage-class change does above its
    multipart threshold): the same bytes under an ETag ``<...>-1``; the new ETag."""
    upload = s3_client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    part = s3_client.upload_part_copy(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1,
                                      CopySource={"Bucket": bucket, "Key": key})["CopyPartResult"]["ETag"]
    return s3_client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": part}]})["ETag"]


def test_a_ranged_run_does_not_fail_as_damaged_a_naming_mode_day_let_go_whose_object_was_copied_onto_itself(
        conn, schema, archive_env, store, s3_client, bucket):
    """Scenario: a legacy one-table-per-day table (naming mode, retention ``drop``). Dagster archives 2024-03-10..12;
    retention lets 2024-03-11 go (its day table dropped). The bucket's owner then moves the day's object to another
    storage class by copying it onto itself in parts (``aws s3 cp`` above its multipart threshold, a Batch
    Operations job): the same bytes, size and MD5, under another ETag (``<...>-1``). A backfill of the three days
    runs again as one ranged run.

    Now: the new _refuse_damaged HEADs the object, sees only the ETag differ and fails the day for good as DAMAGED:
    "its archive is damaged (ETag: stored ...-1, manifest ... (object replaced?)); ... restore the archive's object
    or manifest from a backup of the bucket" -- the run fails, every run from now on fails it, and the person is
    sent to a backup for an archive whose bytes are exactly the ones proven (verify's deep check and the removal
    itself know this case: another ETag for the recorded size is the same object copied onto itself, proven by
    its download). Before the fix the day was recorded as removed.

    Expected: the day is recorded as removed (its archive kept), the run succeeds -- or at the very least the day is
    not failed as damaged before its bytes were downloaded and compared. Fix idea: in _refuse_damaged, where the
    object is there at the recorded size and only its ETag differs, prove it by download (size, MD5, SHA-256 as
    recorded, as verify.py does for a deep check) before calling it damaged."""
    from archive_pipeline.core.lifecycle import remove_day

    config, spec = _naming_days(conn, schema)
    defs = build_definitions(config, check_source=False)
    key = asset_key(spec)
    job = defs.resolve_job_def(job_name(spec))
    gone = DAYS[1].isoformat()
    with instance_for_test() as instance:
        assert job.execute_in_process(instance=instance, tags=_range(DAYS[0], DAYS[2])).success
        remove_day(conn, spec, spec.period(DAYS[1]), store)
        record = _latest(instance, key, gone).asset_materialization.metadata
        obj, md5 = record["object_key"].value, record["md5"].value
        before = s3_client.get_object(Bucket=bucket, Key=obj)["Body"].read()
        etag = _copy_onto_itself_in_parts(s3_client, bucket, obj)
        assert s3_client.get_object(Bucket=bucket, Key=obj)["Body"].read() == before and md5 not in etag, etag
        result = job.execute_in_process(instance=instance, tags=_range(DAYS[0], DAYS[2]), raise_on_error=False)
        failures = _step_failures(instance, result.run_id)
        recorded = {m.partition: m.metadata["state"].value
                    for m in run_materializations(instance, result.run_id) if m.asset_key == key}
    assert result.success and recorded.get(gone) == "removed", (recorded, failures)


def test_a_run_that_planned_the_checks_leaves_no_removed_day_it_recorded_unchecked_when_a_neighbour_fails(
        conn, schema, archive_env, store):
    """Scenario: ``events`` has retention (delete). 2024-03-10 and 2024-03-12 were archived from the command line
    (``archive``) and 2024-03-10 let go (``prune``: proven, rows deleted); Dagster has no record of either. Late
    rows then come for 2024-03-12. The asset is materialized for 2024-03-10..12 WITH its archive_intact check (the
    asset's *Materialize* with checks, a pure asset backfill: a run that plans the check for every day).

    Now: 2024-03-12 fails (changed since archived: overwrite), 2024-03-11 is archived and checked, and 2024-03-10 is
    recorded again as materialized, state ``removed`` (record_removed: built from its manifest, its object HEADed
    and found as recorded) -- with NO archive_intact evaluation (verdict_carried is offered only for a record that
    repeats an earlier one). The run planned that check and fails, so Dagster shows 2024-03-10's archive_intact as
    "Execution failed" (red) beside a materialization saying its archive is kept and intact: exactly what
    verdicts_as_they_were exists to prevent for failed days, here on a day that did not fail.

    Expected: every day the run recorded has an archive_intact evaluation of this run about its latest record
    (for the removed day: passed, it was just found as its manifest records and its removal proved it; or at least
    a warning saying it was not checked). Fix idea: in record_removed, where the run planned the check and no verdict
    is carried, record one (the HEAD _refuse_damaged just made, or verdict_as_it_was's warning)."""
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline_tests.test_hunt16_vd import _deleting_events, _late_rows

    config, spec = _deleting_events(conn, schema)
    defs = build_definitions(config)
    key = asset_key(spec)
    gone = DAYS[0].isoformat()
    intact = AssetCheckKey(key, "archive_intact")
    archive_partition(conn, spec, spec.period(DAYS[0]), store)
    archive_partition(conn, spec, spec.period(DAYS[2]), store)
    assert remove_day(conn, spec, spec.period(DAYS[0]), store).rows == 3
    _late_rows(conn, schema, DAYS[2])
    with instance_for_test() as instance:
        with_checks = defs.resolve_implicit_global_asset_job_def().get_subset(
            asset_selection={key}, asset_check_selection={intact})
        result = with_checks.execute_in_process(instance=instance, tags=_range(DAYS[0], DAYS[2]), raise_on_error=False)
        recorded = {m.partition: m.metadata["state"].value
                    for m in run_materializations(instance, result.run_id) if m.asset_key == key}
        verdicts = {e.partition: (e.passed, e.description) for e in run_check_evaluations(instance, result.run_id)}
        latest = _latest(instance, key, gone)
    assert not result.success and recorded.get(gone) == "removed" and latest.run_id == result.run_id, recorded
    assert gone in verdicts, f"{gone} recorded as removed with no archive_intact in a run that planned it: {verdicts}"


def test_a_removed_day_whose_object_was_restored_from_a_backup_does_not_carry_the_damaged_verdict(
        conn, schema, archive_env, store, s3_client, bucket):
    """Scenario: ``events`` has retention (delete). Dagster archives 2024-03-11 (archive_intact passed); the command
    line lets it go (``prune``). The day's object is then deleted by mistake. A run of the asset WITH its
    archive_intact check over 2024-03-10..12 fails the day as damaged and, as the fix intends, records its
    archive_intact FAILED ("its archive is damaged (object ... is missing) ..."), about the day's latest record.
    The person does what the remedy says: restores the object from a backup of the bucket (the same bytes). The
    archive job then runs 2024-03-10..12 again as one ranged run.

    Now: the day is recorded again as removed (its object HEADed: as recorded), repeating its last record -- and
    verdict_carried carries "the newest verdict whose target is the repeated record": the FAILED one the damaged
    run recorded about that same record. The day's newest materialization says its archive is kept, intact and
    proven, and its archive_intact says "as checked by run ...: ... its archive is damaged (object ... is
    missing)", red -- for good: every later ranged run carries it again, though each finds the object as recorded.

    Expected: after the restore, the day's archive_intact about its latest record is not the stale damaged
    verdict (passed: this run found the object as its manifest records, and the removal proved it). Fix idea: carry
    only a passed verdict (or one from a run that did check the object's bytes), or record a fresh verdict from the
    HEAD _refuse_damaged just made; never carry a verdict a damaged failure recorded once the object is found
    intact."""
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline_tests.test_hunt16_vd import _deleting_events, _latest_check

    config, spec = _deleting_events(conn, schema)
    defs = build_definitions(config)
    key = asset_key(spec)
    gone = DAYS[1].isoformat()
    intact = AssetCheckKey(key, "archive_intact")
    job = defs.resolve_job_def(job_name(spec))
    with instance_for_test() as instance:
        assert job.execute_in_process(instance=instance, partition_key=gone).success
        assert remove_day(conn, spec, spec.period(DAYS[1]), store).rows == 3
        obj = _latest(instance, key, gone).asset_materialization.metadata["object_key"].value
        backup = s3_client.get_object(Bucket=bucket, Key=obj)["Body"].read()
        s3_client.delete_object(Bucket=bucket, Key=obj)
        with_checks = defs.resolve_implicit_global_asset_job_def().get_subset(
            asset_selection={key}, asset_check_selection={intact})
        damaged = with_checks.execute_in_process(instance=instance, tags=_range(DAYS[0], DAYS[2]),
                                                 raise_on_error=False)
        assert not damaged.success and not _latest_check(instance, key, gone).evaluation.passed  # (the premise)
        s3_client.put_object(Bucket=bucket, Key=obj, Body=backup)  # restored from a backup, as advised
        again = job.execute_in_process(instance=instance, tags=_range(DAYS[0], DAYS[2]), raise_on_error=False)
        recorded = {m.partition: m.metadata["state"].value
                    for m in run_materializations(instance, again.run_id) if m.asset_key == key}
        latest = _latest(instance, key, gone)
        check = _latest_check(instance, key, gone)
    assert again.success and recorded.get(gone) == "removed", (recorded, _step_failures(instance, again.run_id))
    evaluation = check.evaluation
    about_latest = evaluation.target_materialization_data.storage_id == latest.storage_id
    assert not about_latest or evaluation.passed, (
        f"{gone}'s object restored and found as recorded by run {again.run_id}; its record carries archive_intact "
        f"passed={evaluation.passed}: {evaluation.description!r}")


def test_a_removed_days_record_built_from_its_manifest_carries_the_object_link_and_sizes_the_readme_promises(
        conn, schema, archive_env, store):
    """Scenario: ``events`` has retention (delete). 2024-03-10 was archived and let go from the command line
    (``archive``, ``prune``); Dagster has no record of it. A backfill of 2024-03-10..12 runs as one ranged run: the
    day is recorded as materialized with state ``removed``, its record built from the manifest (_manifest_metadata).

    Now: that record has ``object_key``, ``md5``, ``compressed_bytes``... but no ``object`` (the clickable link: the
    AWS console's page, or the s3:// URI) and no human-readable ``compressed_size``/``uncompressed_size``, which
    every other day's record carries. README: "the archive's metadata repeated" (day table) and "Each
    materialization also carries a `summary` sentence, human-readable sizes and counts, and `object`, a link to the
    object" -- false for this one, the day whose archive is its only copy (the one a person most needs to find).

    Expected: the removed day's record carries ``object`` (a link to its object) and ``compressed_size``, as an
    archived day's does. Fix idea: in _manifest_metadata add ``object`` (object_link's rule, from the store's
    endpoint and bucket) and the human sizes (human_size of the manifest's bytes/uncompressed bytes)."""
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline_tests.test_hunt16_vd import _deleting_events

    config, spec = _deleting_events(conn, schema)
    defs = build_definitions(config)
    key = asset_key(spec)
    gone = DAYS[0].isoformat()
    archive_partition(conn, spec, spec.period(DAYS[0]), store)
    assert remove_day(conn, spec, spec.period(DAYS[0]), store).rows == 3
    with instance_for_test() as instance:
        result = defs.resolve_job_def(job_name(spec)).execute_in_process(
            instance=instance, tags=_range(DAYS[0], DAYS[2]))
        records = {m.partition: m.metadata for m in run_materializations(instance, result.run_id)
                   if m.asset_key == key}
    removed, archived = records[gone], records[DAYS[1].isoformat()]
    assert removed["state"].value == "removed" and "object" in archived
    missing = [name for name in ("object", "compressed_size", "summary") if name not in removed]
    assert not missing, f"{gone}'s removed record lacks {missing}: it has {sorted(removed)}"


def test_a_deferred_range_records_a_naming_mode_day_let_go_under_its_current_key_when_its_record_names_another(
        conn, schema, archive_env, store):
    """Scenario: a legacy one-table-per-day table (naming mode, retention ``drop``), archived by Dagster as jsonl
    (records naming the jsonl manifests). The table's format is changed to csv. The operator archives 2024-03-11
    again from the command line with overwrite (``archive --overwrite``: the csv archive, the jsonl one left where
    it is) and lets it go (``prune``: the removal proves and marks the archive at the key the configuration renders
    now, the csv one, and drops the day's table). The user's job ``archive_and_report`` (daily_report downstream of
    the archive) then runs 2024-03-10..12 as one ranged run.

    Now: _removed_manifest looks only at the key the day's last Dagster record names (the jsonl one): that manifest
    is there, not marked removed, so record_removed returns False and never looks at the key the configuration
    renders (where the removal mark is, the key the removal itself looks at first: lifecycle.archive_key). The day
    counts as "gone from the source with no archive recorded" -- false -- the range's output is withheld and
    daily_report never runs for the range, on every run from now on.

    Expected: the day is recorded as removed from the manifest that records its removal (the csv one), the output is
    yielded, daily_report runs for the three days. Fix idea: in _removed_manifest, when the recorded key's manifest
    is absent or not marked removed, look at the key the configuration renders now and under the other formats too
    (the order lifecycle.archive_key uses), taking the one marked removed."""
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline_tests.test_hunt15_ug import _with_report

    config, spec = _naming_days(conn, schema)
    key = asset_key(spec)
    with instance_for_test() as instance:
        assert build_definitions(config, check_source=False).resolve_job_def(job_name(spec)).execute_in_process(
            instance=instance, tags=_range(DAYS[0], DAYS[2])).success
        csv = parse_config({"retry": {"max_retries": 0}, "tables": [{
            "name": f"{schema}.events", "start_date": DAY.isoformat(), "format": "csv",
            "partitioning": {"mode": "naming", "pattern": "events_%Y%m%d"},
            "retention": {"keep_days": 30, "action": "drop"}}]})
        now = csv.tables[0]
        written = archive_partition(conn, now, now.period(DAYS[1]), store, overwrite=True)
        assert written.manifest_key.endswith(".csv.zst.manifest.json"), written.manifest_key  # (the premise)
        remove_day(conn, now, now.period(DAYS[1]), store)
        assert not conn.execute("SELECT to_regclass(%s)", (f"{schema}.events_{DAYS[1]:%Y%m%d}",)).fetchone()[0]
        defs, report = _with_report(csv, now, check_source=False)
        result = defs.resolve_job_def("archive_and_report").execute_in_process(
            instance=instance, tags=_range(DAYS[0], DAYS[2]), raise_on_error=False)
        recorded = {m.partition: m.metadata.get("state") for m in run_materializations(instance, result.run_id)
                    if m.asset_key == key}
        reported = sorted(instance.get_materialized_partitions(report))
        warnings = [e.message for e in instance.all_logs(result.run_id) if "gone from the source" in (e.message or "")]
    assert reported == [d.isoformat() for d in DAYS], (
        f"daily_report ran for {reported} (run success {result.success}); recorded {recorded}; warnings {warnings}")


def test_a_run_of_a_removed_day_alone_with_its_check_after_its_object_was_restored_records_it_found_intact(
        conn, schema, archive_env, store, s3_client, bucket):
    """Scenario: as the restored-from-a-backup test above, but both later runs are of the day alone WITH its
    archive_intact check (the asset's *Materialize* with checks): the first fails the day as damaged (its verdict
    failed), the object is restored, the second fails as nothing to do (the day is removed).

    Expected: the second run's verdict is what it found (passed: the object as recorded), not the damaged one
    repeated ("not checked again ... The last check found: ... damaged"), red for good."""
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline_tests.test_hunt16_vd import _deleting_events, _latest_check

    config, spec = _deleting_events(conn, schema)
    defs = build_definitions(config)
    key = asset_key(spec)
    gone = DAYS[1].isoformat()
    intact = AssetCheckKey(key, "archive_intact")
    with instance_for_test() as instance:
        assert defs.resolve_job_def(job_name(spec)).execute_in_process(instance=instance, partition_key=gone).success
        assert remove_day(conn, spec, spec.period(DAYS[1]), store).rows == 3
        obj = _latest(instance, key, gone).asset_materialization.metadata["object_key"].value
        backup = s3_client.get_object(Bucket=bucket, Key=obj)["Body"].read()
        s3_client.delete_object(Bucket=bucket, Key=obj)
        with_checks = defs.resolve_implicit_global_asset_job_def().get_subset(
            asset_selection={key}, asset_check_selection={intact})
        damaged = with_checks.execute_in_process(instance=instance, partition_key=gone, raise_on_error=False)
        assert not damaged.success and not _latest_check(instance, key, gone).evaluation.passed  # (the premise)
        s3_client.put_object(Bucket=bucket, Key=obj, Body=backup)
        again = with_checks.execute_in_process(instance=instance, partition_key=gone, raise_on_error=False)
        verdicts = [(e.passed, e.description) for e in run_check_evaluations(instance, again.run_id)]
    assert not again.success and verdicts and all(passed for passed, _ in verdicts), verdicts
