"""Hunt 25 (ce): the Dagster asset checks and outside assets line by line (defs/checks.py, defs/outside.py, with
defs/assets.py where they meet): checks green on an archive that is not exact, misleading or misclassified
verdicts, and days archived outside Dagster that the sensor records (or not)."""

from __future__ import annotations

from dagster import instance_for_test

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.locks import lock_key
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.assets import asset_key
from archive_pipeline_tests.helpers import run_check_evaluations
from archive_pipeline_tests.test_hunt16_vm import YESTERDAY, _config, _recorded, _sensor_run, _table, _tick


def test_the_sensor_never_records_a_day_archived_by_the_command_line_after_its_run_really_failed(
        pg, conn, schema, archive_env, store, temp_dir):
    """Scenario: the sensor's run of yesterday starts and fails (another session holds the table-day's lock: a
    retryable failure, retry max_retries 0). The tick lists the day as failed with its remedy, `archive-pipeline
    archive --table <t> --day <day>`; the operator follows it (here the same core call, archive_partition) and the
    day is archived, intact, from this database, well after that run started. The next tick runs.

    Now: outside._taken keeps the manifest only where ``_written_after(manifest, started)``: it reads the manifest's
    ``archived_at``, which no manifest holds (manifest.build writes ``source.snapshot_at``, never ``archived_at``),
    so ``fromisoformat("")`` raises and _written_after answers False for every day whose run ever started. The sensor
    never records such a day: the partition stays missing and every tick lists it as failed, with the remedy already
    followed (the earlier tests of this, test_hunt16_vm, add a FAILURE run that never started: ``started`` None).

    Should: the tick records the day (state ``archived``) as the README says ("written after the day's last run
    started"). Fix idea: in _written_after read when the archive was committed as manifest.committed_at does
    (``archived_at``, else ``source.snapshot_at``)."""
    _table(conn, schema)
    config = _config(schema)
    spec = config.tables[0]
    defs = build_definitions(config)
    day = YESTERDAY.isoformat()
    with instance_for_test() as instance, pg.connect() as holder:
        assert holder.execute("SELECT pg_try_advisory_lock(%s)", lock_key(spec.name, YESTERDAY)).fetchone()[0]
        run = _sensor_run(defs, instance, spec, day)
        assert not run.success
        holder.execute("SELECT pg_advisory_unlock_all()")
        record = instance.get_run_records()[0]
        assert record.start_time is not None  # (the run started, as the daemon's runs do)
        archive_partition(conn, spec, YESTERDAY, store, temp_dir=temp_dir)  # the remedy, followed
        result = _tick(defs, instance, pg)
    assert _recorded(result) == [day], (result.skip_message, [e.description for e in result.asset_events or []])


def test_archive_intact_of_a_day_the_sensor_recorded_passes_on_an_older_archive_when_the_recorded_one_is_lost(
        pg, conn, schema, archive_env, store, temp_dir, s3_client, bucket):
    """Scenario: table ``t`` was CSV when the command line archived yesterday (key ``....csv.zst``). Its format then
    became JSONL and the operator archived the day again from the command line with overwrite (``....jsonl.zst``,
    the day's current archive; the CSV one stays beside it). The sensor's run of the day had failed, so the next tick
    records the day from the JSONL manifest (defs/outside.py). Later the JSONL archive is lost (its object and
    manifest deleted by a lifecycle rule or by hand). The operator executes archive_intact for the day.

    Now: the sensor's record is built by assets._manifest_metadata, which carries no ``snapshot_at``;
    checks._judged passes ``recorded_at`` None to verify.judged_archive, whose guard ("an older archive does not
    stand in for a recorded one that is missing") needs it: the older CSV archive is judged instead, and the check
    PASSES, "archived again since this was recorded (generation 1, ....csv.zst); the recorded ....jsonl.zst is
    superseded": green, while the archive Dagster recorded is gone and the one found predates it. A record made by
    a Dagster run (with snapshot_at) fails the same day as missing.

    Should: fail, naming the recorded manifest as missing, as for a run's record. Fix idea: _manifest_metadata
    records ``snapshot_at`` (MetadataValue.timestamp of the manifest's source.snapshot_at), or _judged falls back
    to the recorded manifest's generation/commit time when the record has no snapshot_at."""
    from archive_pipeline.core import keys
    from archive_pipeline_tests.test_hunt14_tc import _execute_check
    from archive_pipeline_tests.test_hunt16_vm import _sensor_run_failed

    _table(conn, schema)
    csv_spec = _config(schema, format="csv").tables[0]
    archive_partition(conn, csv_spec, YESTERDAY, store, temp_dir=temp_dir)
    config = _config(schema)
    spec = config.tables[0]
    archive_partition(conn, spec, YESTERDAY, store, temp_dir=temp_dir, overwrite=True)
    old_key = keys.table_day_key(csv_spec, csv_spec.period(YESTERDAY), store.prefix)
    new_key = keys.table_day_key(spec, spec.period(YESTERDAY), store.prefix)
    listed = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert old_key in listed and new_key in listed, listed
    defs = build_definitions(config)
    day = YESTERDAY.isoformat()
    with instance_for_test() as instance:
        _sensor_run_failed(instance, spec, day)
        tick = _tick(defs, instance, pg)
        assert _recorded(tick) == [day]
        for event in tick.asset_events:  # (stored as the daemon stores a tick's asset events)
            instance.report_runless_asset_event(event)
        for lost in (new_key, keys.manifest_key(new_key)):
            s3_client.delete_object(Bucket=bucket, Key=lost)
        run = _execute_check(defs, instance, asset_key(spec), "archive_intact", day)
        [verdict] = [e for e in run_check_evaluations(instance, run.run_id) if e.check_name == "archive_intact"]
    assert not verdict.passed, verdict.description
