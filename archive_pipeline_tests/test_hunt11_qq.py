"""Hunt 11 (qq): letting the source go, end to end through Dagster and the command line."""

from __future__ import annotations

import datetime as dt

import psycopg
from dagster import DagsterEventType, build_schedule_context, instance_for_test

from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs import retention_assets
from archive_pipeline.defs.assets import job_name
from archive_pipeline.defs.retention_assets import PROVEN_CHECK, removal_job_name
from archive_pipeline.local.local_stack import create_sample_events

DAY = dt.date(2024, 3, 10)


def _checks(instance, run_id: str) -> list:
    """The archive_proven evaluations a run recorded."""
    return [e.dagster_event.event_specific_data for e in instance.all_logs(run_id)
            if e.dagster_event is not None and e.dagster_event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION
            and e.dagster_event.event_specific_data.check_name == PROVEN_CHECK]


def _failure(result) -> str:
    return "\n".join(str(e.event_specific_data.error.message) for e in result.all_events
                     if e.event_type == DagsterEventType.STEP_FAILURE)




def _tick(defs, spec, instance, when: dt.datetime) -> list[str]:
    repo = defs.get_repository_def()
    schedule = repo.get_schedule_def(f"remove_{'_'.join(spec.asset_path)}_daily")
    tick = schedule.evaluate_tick(build_schedule_context(instance=instance, scheduled_execution_time=when,
                                                         repository_def=repo))
    return [r.partition_key for r in tick.run_requests or []]


def test_a_day_archived_empty_without_a_partition_is_not_a_removal_that_fails_every_day(
        pg, conn, schema, archive_env):
    """Scenario: a declaratively partitioned table with ``retention: {action: drop}`` whose ``start_date``
    (2024-03-09) precedes its first partition (2024-03-10): day 2024-03-09 has no partition and no rows. Its
    archive run succeeds ("no rows that day; its manifest records it as empty", archive_intact passed).
    The retention schedule then requests its removal, as the day is archived and due.

    Now: every removal run of 2024-03-09 fails, before its proof, with "is not one partition of its own:
    no range partition holds its rows ...: use retention action 'delete'", and the schedule requests it
    again on every tick (archived, never materialized as removed), forever: a red run per empty day each
    day, and a remedy (change the whole table's action to delete) for a day that holds nothing to remove.
    ``prune`` on the command line passes the same day over (nothing in the source), and ``remove_day`` says
    ``nothing`` for a day with no archive and no rows: the Dagster path alone calls it a failure. The README
    says the schedule requests "days that are archived and still in the source"; this day is not in it.

    Expected: a day archived empty whose source holds neither a partition nor a row is nothing to remove:
    the run succeeds (records the day as removed with 0 rows, or as nothing to remove), and the next tick
    does not request it again.
    Fix idea: in ``_target``/``check_removable``, a day with no partition whose archive holds 0 rows (and no
    row in the source) is ``Removal(nothing=True)``; the asset materializes it (rows 0) so the schedule stops."""
    create_sample_events(conn, [DAY], rows_per_day=5, schema=schema)
    empty = "2024-03-09"
    config = parse_config({"retry": {"max_retries": 0}, "tables": [{
        "name": f"{schema}.events", "day_column": "created_at", "start_date": empty,
        "partitioning": {"mode": "declarative"}, "retention": {"keep_days": 30, "action": "drop"}}]})
    spec = config.tables[0]
    defs = build_definitions(config)
    with instance_for_test() as instance:
        archived = defs.resolve_job_def(job_name(spec)).execute_in_process(instance=instance, partition_key=empty)
        assert archived.success
        when = dt.datetime(2024, 6, 1, 1, 30, tzinfo=dt.UTC)
        assert _tick(defs, spec, instance, when) == [empty]
        result = defs.resolve_job_def(removal_job_name(spec)).execute_in_process(
            instance=instance, partition_key=empty, raise_on_error=False)
        assert result.success, _failure(result)
        assert _tick(defs, spec, instance, when + dt.timedelta(days=1)) == []
        assert conn.execute(f'SELECT count(*) FROM "{schema}".events').fetchone()[0] == 5




def test_a_removed_day_back_in_the_source_with_other_rows_does_not_record_a_passed_proof(pg, conn, schema,
                                                                                         archive_env, store):
    """Scenario: a table with retention (delete); its day (5 rows) is archived and removed by
    Remove_<schema>_events. The day is restored into the original table (``restore --into original``) and a
    late row of the day arrives (6 rows now). The day's removal is run again (the UI's Materialize).

    Now: the run records ``archive_proven`` PASSED for the day, described "2024-03-10: removed from the
    source (done, ...) after its archive was proven; the archive is intact", while the source holds the
    day's 6 rows again, and the same run then fails with "stays in the source: its archive is not proven:
    ... 6 rows against 5". The partition's check, the one the UI shows, is green and says the day is gone
    from the source; the removal's own proof (under the lock) failed. (The asset checked the archive alone,
    as for a day the source no longer holds, because the manifest says "done".)

    Expected: a day whose manifest says removed but whose rows are back in the source is proven against the
    source, as ``remove_day`` does: ``archive_proven`` is recorded failed (6 rows against 5), never passed with
    "removed from the source".
    Fix idea: in ``_removing``, take the "removed" branch (verify_archive) only when the source holds no rows
    of the day (or ``still_detached``); otherwise prove with ``deep_verify`` like an ordinary day."""
    from archive_pipeline.core.restore import restore_day
    create_sample_events(conn, [DAY], rows_per_day=5, schema=schema)
    config = parse_config({"retry": {"max_retries": 0}, "tables": [{
        "name": f"{schema}.events", "day_column": "created_at", "start_date": DAY.isoformat(),
        "retention": {"keep_days": 30, "action": "delete"}}]})
    spec = config.tables[0]
    defs = build_definitions(config)
    table = f'"{schema}".events'
    with instance_for_test() as instance:
        assert defs.resolve_job_def(job_name(spec)).execute_in_process(
            instance=instance, partition_key=DAY.isoformat()).success
        remove = defs.resolve_job_def(removal_job_name(spec))
        assert remove.execute_in_process(instance=instance, partition_key=DAY.isoformat()).success
        with psycopg.connect(pg.dsn, autocommit=True) as other:
            restore_day(other, store, spec, DAY, into="original")
        conn.execute(f"INSERT INTO {table} SELECT id + 1000, created_at, user_id, event_type, amount, session_id, "
                     f"is_mobile, tags, payload FROM {table} ORDER BY id LIMIT 1")
        again = remove.execute_in_process(instance=instance, partition_key=DAY.isoformat(), raise_on_error=False)
        assert not again.success and "not proven" in _failure(again)
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 6  # (nothing lost: the removal held)
        [proof] = _checks(instance, again.run_id)
        assert not proof.passed, proof.description
        assert "removed from the source" not in proof.description, proof.description




def test_a_removal_of_a_day_kept_at_the_smallest_keep_days_does_not_say_to_lower_keep_days(pg, conn, schema,
                                                                                          archive_env):
    """Scenario: a table with ``retention: {keep_days: 1, action: delete}``, the smallest window the
    configuration accepts (``keep_days: 0`` is refused at load: "greater than or equal to 1"). Yesterday is
    archived, and its removal is launched from the UI (Materialize of source_removed for yesterday).

    Now: the run fails with "... is kept: retention keeps the last 1 days; nothing removed. To remove it
    sooner, lower retention.keep_days for the table in <file>": keep_days cannot be lowered below 1, so the
    remedy given cannot be carried out (following it, the code location no longer loads).

    Expected: at the smallest keep_days the refusal says when the day becomes due (at the local midnight that
    ends today) instead of advising a value the configuration refuses.
    Fix idea: in ``remove`` (retention_assets.py), give the 'lower retention.keep_days' advice only when
    keep_days > 1, and say when the day becomes due (due_days's cutoff plus one day) in every case."""
    from archive_pipeline_tests.conftest import utc_today
    today = utc_today(margin=120)
    day = today - dt.timedelta(days=1)
    create_sample_events(conn, [day], rows_per_day=5, schema=schema)
    config = parse_config({"retry": {"max_retries": 0}, "tables": [{
        "name": f"{schema}.events", "day_column": "created_at", "start_date": day.isoformat(),
        "retention": {"keep_days": 1, "action": "delete"}}]})
    spec = config.tables[0]
    defs = build_definitions(config)
    with instance_for_test() as instance:
        assert defs.resolve_job_def(job_name(spec)).execute_in_process(
            instance=instance, partition_key=day.isoformat()).success
        result = defs.resolve_job_def(removal_job_name(spec)).execute_in_process(
            instance=instance, partition_key=day.isoformat(), raise_on_error=False)
        assert not result.success
        said = _failure(result)
        assert "is kept" in said, said
        assert conn.execute(f'SELECT count(*) FROM "{schema}".events').fetchone()[0] == 5
        assert "lower retention.keep_days" not in said, said


def test_a_removal_run_under_a_former_format_whose_day_another_removal_took_meanwhile_records_no_failed_proof(
        pg, conn, schema, archive_env, store, monkeypatch):
    """Scenario: a table with retention (delete) archived as JSON lines; its ``format`` is then changed to csv
    (with ``{ext}`` in the default key_template, old days stay at their .jsonl.zst keys, where removals find
    them). Two removals of an old day run at once (the UI's Materialize beside ``prune``): run B reads the
    day's manifest (at the former format's key, not removed yet) and checks the day is removable; run A,
    meanwhile, proves and removes the day and marks it done. B's proof then runs against the emptied source.

    Now: B records ``archive_proven`` FAILED for the day ("the source's rows ... are not the archive's: 0 rows
    against 5") and fails saying the day "stays in the source: its archive is not proven ... archive the day
    again, then remove it": false on both counts (the day was removed after a passing proof; the archive, now
    the only copy, is intact). At the day's current-format key the same race is told right: ``deep_verify``
    reads the manifest again after a failed proof, but only at ``table_day_key`` (the configured format's),
    where nothing is, so the removal mark at the former format's key is never seen.

    Expected: as for a day at its current key: B finds the day removed (no failed proof recorded; the run
    records the removal done before, or fails retryably).
    Fix idea: ``deep_verify`` re-reads the manifest at the key it was given (pass the key, or take it from the
    manifest's object), not at the key the configuration renders now."""
    from archive_pipeline.core.lifecycle import remove_day
    create_sample_events(conn, [DAY], rows_per_day=5, schema=schema)
    table = {"name": f"{schema}.events", "day_column": "created_at", "start_date": DAY.isoformat(),
             "retention": {"keep_days": 30, "action": "delete"}}
    before = parse_config({"retry": {"max_retries": 0}, "tables": [{**table, "format": "jsonl"}]})
    now = parse_config({"retry": {"max_retries": 0}, "tables": [{**table, "format": "csv"}]})
    spec = now.tables[0]
    original = retention_assets.check_removable
    done = []

    def meanwhile(primary, spec_, day):  # run A removes the day between B's manifest read and B's proof
        if not done:
            done.append(1)
            with psycopg.connect(pg.dsn, autocommit=True) as other:
                assert remove_day(other, spec, DAY, store).rows == 5
        return original(primary, spec_, day)

    with instance_for_test() as instance:
        assert build_definitions(before).resolve_job_def(job_name(before.tables[0])).execute_in_process(
            instance=instance, partition_key=DAY.isoformat()).success
        monkeypatch.setattr(retention_assets, "check_removable", meanwhile)
        result = build_definitions(now).resolve_job_def(removal_job_name(spec)).execute_in_process(
            instance=instance, partition_key=DAY.isoformat(), raise_on_error=False)
        assert done
        assert conn.execute(f'SELECT count(*) FROM "{schema}".events').fetchone()[0] == 0
        failed = [c for c in _checks(instance, result.run_id) if not c.passed]
        assert not failed, (failed[0].description, _failure(result))
        assert "not proven" not in _failure(result), _failure(result)



def test_a_removed_days_damaged_manifest_is_not_told_as_a_day_that_stays_in_the_source(pg, conn, schema,
                                                                                     archive_env, s3_client, bucket):
    """Scenario: a table with retention (delete); its day is archived and removed by Remove_<schema>_events
    (materialized: 5 rows deleted, manifest marked done). Later the day's manifest is edited in the bucket
    (``"rows": 5`` made ``6``, its manifest_sha256 left as it was). The day's removal (or archive_proven
    alone) is run again, to check the removed day's archive.

    Now: archive_proven is recorded failed (right), but the run fails with "<table> <day> stays in the
    source: its archive is not proven: its manifest_sha256 does not match its content. If the source's rows
    are the right ones (rows changed or arrived late), archive the day again, then remove it. To archive ...
    again ... use this run config: overwrite: true": the day is NOT in the source (it was removed; the source
    holds none of its rows), the archive is the only copy, and the advice is to overwrite it. (The archive
    run itself refuses rightly: "was removed from the source ..., and its archive is damaged ...; restore the
    archive or its manifest from a backup".)

    Expected: the removal run says what the archive run says: the day was removed from the source and its
    archive, the only copy, is damaged; restore the manifest (or object) from a backup of the bucket; no
    "stays in the source", no overwrite advice.
    Fix idea: in ``_removing``'s ``except ValueError`` (ManifestError) branch, tell a removed day (the source
    holds no rows of it, or its last source_removed materialization / the raw manifest says ``removed``) as
    the "NOT intact" case, with the backup remedy."""
    create_sample_events(conn, [DAY], rows_per_day=5, schema=schema)
    config = parse_config({"retry": {"max_retries": 0}, "tables": [{
        "name": f"{schema}.events", "day_column": "created_at", "start_date": DAY.isoformat(),
        "retention": {"keep_days": 30, "action": "delete"}}]})
    spec = config.tables[0]
    defs = build_definitions(config)
    with instance_for_test() as instance:
        assert defs.resolve_job_def(job_name(spec)).execute_in_process(
            instance=instance, partition_key=DAY.isoformat()).success
        remove = defs.resolve_job_def(removal_job_name(spec))
        assert remove.execute_in_process(instance=instance, partition_key=DAY.isoformat()).success
        [key] = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]
                 if o["Key"].endswith(".manifest.json")]
        body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert b'"state": "done"' in body
        s3_client.put_object(Bucket=bucket, Key=key, Body=body.replace(b'"rows": 5', b'"rows": 6', 1))
        again = remove.execute_in_process(instance=instance, partition_key=DAY.isoformat(), raise_on_error=False)
        assert not again.success
        assert conn.execute(f'SELECT count(*) FROM "{schema}".events').fetchone()[0] == 0
        said = _failure(again)
        assert "stays in the source" not in said, said
        assert "overwrite: true" not in said, said
        assert "removed" in said and "backup" in said, said



def test_a_removed_day_whose_manifest_was_deleted_is_not_told_to_be_archived_first(pg, conn, schema, archive_env,
                                                                                  s3_client, bucket):
    """Scenario: a table with retention (delete); its day is archived and removed by Remove_<schema>_events
    (materialized: 5 rows deleted). Later the day's manifest is deleted from the bucket (a cleanup script, a
    lifecycle rule on ``*.json``); the data object stays. The day's removal is run again (to check it).

    Now: the run fails "<table> <day> has no archive at ...: nothing is proven or removed. Archive the day first
    (partition <day> of Archive_...), then remove it": the day WAS removed (this asset's own last
    materialization says so, and the source holds none of its rows), its data object is still in the store,
    and the advice cannot work (the archive run refuses rightly: "has archived data (1 object(s)) but no
    manifest, and the source has no rows for the day now: it may have been removed ... restore the manifest
    from a backup or versioning before archiving this day again").

    Expected: the removal run says the day was removed from the source (when, by which run: its last
    source_removed materialization) and its archive's manifest is missing, the object being the only copy:
    restore the manifest from a backup or the bucket's versions; not "archive the day first".
    Fix idea: in ``_removing``'s ``manifest is None`` branch, look at the day's last source_removed
    materialization (and the source's rows, and the data objects at the key) before advising an archive."""
    create_sample_events(conn, [DAY], rows_per_day=5, schema=schema)
    config = parse_config({"retry": {"max_retries": 0}, "tables": [{
        "name": f"{schema}.events", "day_column": "created_at", "start_date": DAY.isoformat(),
        "retention": {"keep_days": 30, "action": "delete"}}]})
    spec = config.tables[0]
    defs = build_definitions(config)
    with instance_for_test() as instance:
        assert defs.resolve_job_def(job_name(spec)).execute_in_process(
            instance=instance, partition_key=DAY.isoformat()).success
        remove = defs.resolve_job_def(removal_job_name(spec))
        assert remove.execute_in_process(instance=instance, partition_key=DAY.isoformat()).success
        [key] = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]
                 if o["Key"].endswith(".manifest.json")]
        s3_client.delete_object(Bucket=bucket, Key=key)
        again = remove.execute_in_process(instance=instance, partition_key=DAY.isoformat(), raise_on_error=False)
        assert not again.success
        assert conn.execute(f'SELECT count(*) FROM "{schema}".events').fetchone()[0] == 0
        said = _failure(again)
        assert "Archive the day first" not in said, said
        assert "nothing is proven or removed" not in said, said
        assert "removed" in said and "manifest" in said, said
