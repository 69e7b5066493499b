"""Hunt 16 (vd): what Dagster records for each day of a ranged run (materialization metadata, archive_intact
verdicts, red/green, retries) over ranges mixing new, skipped, removed, damaged and changed days."""

from __future__ import annotations

import datetime as dt

from dagster import AssetCheckKey, AssetRecordsFilter, instance_for_test
from dagster._core.event_api import PartitionKeyFilter

from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.assets import asset_key, job_name
from archive_pipeline_tests.helpers import run_check_evaluations, run_materializations

DAY = dt.date(2024, 3, 10)
DAYS = [DAY + dt.timedelta(days=i) for i in range(3)]


def _range(first: dt.date, last: dt.date) -> dict:
    return {"dagster/asset_partition_range_start": first.isoformat(),
            "dagster/asset_partition_range_end": last.isoformat()}


def _latest(instance, key, day: str):
    found = instance.fetch_materializations(AssetRecordsFilter(asset_key=key, asset_partitions=[day]), limit=1).records
    return found[0] if found else None


def _latest_check(instance, key, day: str):
    intact = AssetCheckKey(key, "archive_intact")
    return instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [intact], partition_filter=PartitionKeyFilter(key=day)).get(intact)


def _naming_days(conn, schema: str, empty: dt.date | None = None):
    """``events_%Y%m%d`` day tables for DAYS, two rows each (``empty``: none); retention drops them."""
    for day in DAYS:
        conn.execute(f"CREATE TABLE {schema}.events_{day:%Y%m%d} (id int, created_at timestamptz)")
        if day != empty:
            conn.execute(f"INSERT INTO {schema}.events_{day:%Y%m%d} VALUES (1, %s), (2, %s)",
                         (dt.datetime.combine(day, dt.time(1), dt.UTC), dt.datetime.combine(day, dt.time(2), dt.UTC)))
    config = parse_config({"retry": {"max_retries": 0}, "tables": [{
        "name": f"{schema}.events", "start_date": DAY.isoformat(),
        "partitioning": {"mode": "naming", "pattern": "events_%Y%m%d"},
        "retention": {"keep_days": 30, "action": "drop"}}]})
    return config, config.tables[0]


def test_a_ranged_run_over_an_empty_day_dagster_recorded_and_retention_dropped_archives_its_neighbours(
        conn, schema, archive_env, store):
    """Scenario: a legacy one-table-per-day table (naming mode, retention ``drop``). 2024-03-11's day table holds
    no row. A ranged run of Archive_<schema>_events archives 2024-03-10..11 (2024-03-11 recorded ``empty``: a
    manifest, no object). Retention lets 2024-03-11 go (its empty table dropped, the manifest marked removed). A
    backfill of 2024-03-10..12 then runs as one ranged run (2024-03-12 is new).

    Now: the core says 2024-03-11 has no table (nothing to do); record_removed reads its manifest (``object``:
    null, ``empty``: true, removed), finds the day's earlier Dagster record and compares
    ``manifest["object"].get("key")``: AttributeError on None. It escapes the loop (only a Failure is caught): the
    step dies with a bare "'NoneType' object has no attribute 'get'" naming no table, day or remedy, and 2024-03-12,
    a new day after it, is never archived (its neighbour's bug fails it).

    Expected: 2024-03-11 is recorded as removed (an empty day's archive is its manifest), 2024-03-12 is archived,
    the run succeeds. Fix idea: in record_removed compare ``(manifest.get("object") or {}).get("key")`` (and md5)."""
    from archive_pipeline.core.lifecycle import remove_day

    config, spec = _naming_days(conn, schema, empty=DAYS[1])
    defs = build_definitions(config, check_source=False)
    key = asset_key(spec)
    job = defs.resolve_job_def(job_name(spec))
    with instance_for_test() as instance:
        assert job.execute_in_process(instance=instance, tags=_range(DAYS[0], DAYS[1])).success
        assert _latest(instance, key, DAYS[1].isoformat()).asset_materialization.metadata["state"].value == "empty"
        remove_day(conn, spec, spec.period(DAYS[1]), store)
        assert not conn.execute("SELECT to_regclass(%s)", (f"{schema}.events_{DAYS[1]:%Y%m%d}",)).fetchone()[0]
        result = job.execute_in_process(instance=instance, tags=_range(DAYS[0], DAYS[2]), raise_on_error=False)
        errors = [e.message for e in instance.all_logs(result.run_id) if e.is_dagster_event
                  and e.dagster_event.is_step_failure]
        materialized = {m.partition: m.metadata["state"].value
                        for m in run_materializations(instance, result.run_id) if m.asset_key == key}
    assert result.success and materialized.get(DAYS[2].isoformat()) == "archived" and \
        materialized.get(DAYS[1].isoformat()) == "removed", (result.success, materialized, errors)


def _deleting_events(conn, schema: str, **table):
    """Three days of sample events in a table whose retention deletes its days: (config, spec)."""
    from archive_pipeline.local.local_stack import create_sample_events

    create_sample_events(conn, DAYS, rows_per_day=3, schema=schema)
    config = parse_config({"retry": {"max_retries": 0}, "tables": [{
        "name": f"{schema}.events", "day_column": "created_at", "start_date": DAY.isoformat(),
        "retention": {"keep_days": 30, "action": "delete"}, **table}]})
    return config, config.tables[0]


def _late_rows(conn, schema: str, day: dt.date, n: int = 2) -> None:
    from psycopg import sql

    conn.execute(sql.SQL("INSERT INTO {} SELECT id + 1000, created_at + interval '1 minute', user_id, event_type, "
                         "amount, session_id, is_mobile, tags, payload FROM {} WHERE created_at >= %s AND "
                         "created_at < %s LIMIT %s").format(sql.Identifier(schema, "events"),
                                                            sql.Identifier(schema, "events")),
                 (dt.datetime.combine(day, dt.time(), dt.UTC),
                  dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC), n))


def _overwrite_unverified(defs, spec, instance, day: str, monkeypatch):
    """Dagster archives ``day`` again with overwrite (deep_check run config), its check unable to run (the
    download for it fails): the record says "not verified", no archive_intact about it."""
    from archive_pipeline.defs import assets as assets_module

    def unreachable(*args, **kwargs):
        raise ConnectionError("the store did not answer the check's download")

    with monkeypatch.context() as patched:
        patched.setattr(assets_module, "verify_result", unreachable)
        return defs.resolve_job_def(job_name(spec)).execute_in_process(
            instance=instance, partition_key=day, raise_on_error=False,
            run_config={"ops": {assets_module.op_name(spec): {"config": {"overwrite": True, "deep_check": True}}}})


def test_a_removed_days_record_of_a_later_generation_does_not_carry_the_verdict_about_the_generation_it_replaced(
        conn, schema, archive_env, store, monkeypatch):
    """Scenario: Dagster archives 2024-03-10 (run R0: generation 1, archive_intact passed about it). Late rows come;
    a run archives the day again with overwrite (R1: generation 2, a new object key; generation 1 retired), and its
    check cannot run (the store did not answer its download): R1's record says "not verified", no verdict about it.
    The command line lets the day go (``prune``: proves generation 2, deletes the rows). A backfill of
    2024-03-10..12 then runs as one ranged run.

    Now: record_removed finds the day's latest record (R1's) naming the manifest's object, so it repeats it and
    carries "its last archive_intact verdict" -- verdict_carried takes the newest verdict of any other run: R0's,
    about generation 1. The removed day's latest materialization (generation 2) shows archive_intact passed "as
    checked by run R0: ..." with ``archive`` = generation 1's object, an object no longer in the bucket, which no run
    ever checked against this record.

    Expected: a verdict is carried only when it was about the record repeated (its target is that materialization,
    or its ``archive`` is the object the record names); otherwise none (or a fresh one). Fix idea: in
    verdict_carried (not this_run), require the last verdict's target_materialization_data.storage_id to be
    ``before``'s storage id, as the this_run branch requires its run."""
    from archive_pipeline.core.lifecycle import remove_day

    config, spec = _deleting_events(conn, schema)
    defs = build_definitions(config)
    key = asset_key(spec)
    day = DAYS[0].isoformat()
    with instance_for_test() as instance:
        first = defs.resolve_job_def(job_name(spec)).execute_in_process(instance=instance, partition_key=day)
        gen1 = first.asset_materializations_for_node(first.job_def.nodes[0].name)[0].metadata["object_key"].value
        _late_rows(conn, schema, DAYS[0])
        again = _overwrite_unverified(defs, spec, instance, day, monkeypatch)
        assert not again.success
        gen2_record = _latest(instance, key, day)
        gen2 = gen2_record.asset_materialization.metadata["object_key"].value
        assert gen2_record.run_id == again.run_id and gen2 != gen1, (gen1, gen2)
        assert remove_day(conn, spec, spec.period(DAYS[0]), store).rows == 5
        result = defs.resolve_job_def(job_name(spec)).execute_in_process(
            instance=instance, tags=_range(DAYS[0], DAYS[2]), raise_on_error=False)
        latest = _latest(instance, key, day)
        assert latest.run_id == result.run_id and latest.asset_materialization.metadata["state"].value == "removed"
        check = _latest_check(instance, key, day)
    evaluation = check.evaluation if check is not None else None
    target = evaluation.target_materialization_data if evaluation is not None else None
    onto_latest = target is not None and target.storage_id == latest.storage_id
    about = str(evaluation.metadata["archive"].value) if onto_latest else None
    assert not onto_latest or gen2 in about, (
        f"{day}'s removed record of {gen2} carries archive_intact passed={evaluation.passed} from run "
        f"{evaluation.metadata.get('checked_in_run')} (R0 {first.run_id}) about {about}: {evaluation.description!r}")


def test_a_removed_days_record_repeated_from_an_unverified_archive_is_not_called_never_proven_after_its_removal(
        conn, schema, archive_env, store, monkeypatch):
    """Scenario: ``events`` has ``deep_check: true`` and retention (delete). Dagster archives 2024-03-10 and its
    content proof cannot run (the store did not answer the proof's download): the record says "verified: not
    verified: ...", the step fails. The command line then lets the day go (``prune``: remove_day proves the archive
    against the source, then deletes the rows). A backfill of 2024-03-10..12 runs as one ranged run: the day is
    recorded again as removed; then archive_intact is executed for it (the UI's *Execute* on the check).

    Now: record_removed repeats the earlier record whole (it names the manifest's object), "verified: not verified"
    included, although the removal proved that very archive (the record built from a manifest says "content proven:
    the day's removal ... proved its archive first"). archive_intact reads the record and fails the day, red: "its
    content was never proven (not verified: ...); ... archive the day again (overwrite: true ...)" -- false (the
    removal proved it) and impossible (the rows are gone; the archive is the only copy).

    Expected: the removed day's record says its removal proved it, and archive_intact passes (the object is as its
    manifest records). Fix idea: in record_removed, where the record is repeated (``same``), set ``verified`` to the
    removal's proof too (the ``proven`` line) when the repeated record does not already say "content proven"."""
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline.defs import assets as assets_module
    from archive_pipeline_tests.test_hunt15_ug import _execute_check

    config, spec = _deleting_events(conn, schema, deep_check=True)
    defs = build_definitions(config)
    key = asset_key(spec)
    day = DAYS[0].isoformat()

    def unreachable(*args, **kwargs):
        raise ConnectionError("the store did not answer the proof's download")

    with instance_for_test() as instance:
        with monkeypatch.context() as patched:
            patched.setattr(assets_module, "verify_result", unreachable)
            assert not defs.resolve_job_def(job_name(spec)).execute_in_process(
                instance=instance, partition_key=day, raise_on_error=False).success
        said = _latest(instance, key, day).asset_materialization.metadata["verified"].value
        assert said.startswith("not verified"), said
        assert remove_day(conn, spec, spec.period(DAYS[0]), store).rows == 3  # proven, then deleted
        assert defs.resolve_job_def(job_name(spec)).execute_in_process(
            instance=instance, tags=_range(DAYS[0], DAYS[2])).success
        latest = _latest(instance, key, day).asset_materialization.metadata
        assert latest["state"].value == "removed"
        run = _execute_check(defs, instance, key, "archive_intact", day)
        verdicts = [(e.passed, e.description) for e in run_check_evaluations(instance, run.run_id)
                    if e.check_name == "archive_intact"]
    assert verdicts and all(passed for passed, _ in verdicts), (latest["verified"].value, verdicts)


def test_a_ranged_run_does_not_record_green_a_naming_mode_day_let_go_whose_archived_object_is_gone(
        conn, schema, archive_env, store, s3_client, bucket):
    """Scenario: a legacy one-table-per-day table (naming mode, retention ``drop``). A ranged run archives
    2024-03-10..12 (each day archived, archive_intact passed). Retention lets 2024-03-11 go (its day table dropped:
    the archive is the day's only copy). Then the day's data object is deleted from the bucket (a lifecycle rule, a
    mistaken cleanup); its manifest stays. A backfill of 2024-03-10..12 runs again as one ranged run.

    Now: the core finds no table for 2024-03-11 (nothing to do) before it looks at what its read of the day's keys
    found (``object ... is missing``); record_removed reads the manifest alone and records the day green, state
    removed, "its archive is kept (nothing to do)", the object's key, size and MD5 repeated, and carries the last
    archive_intact verdict, passed -- about an object that is no longer there. The run ends SUCCESS; nothing says
    the day's only copy is gone. (A column-mode day removed the same way fails: "... its archive is damaged (object
    ... is missing) ...; restore the archive or its manifest from a backup".)

    Expected: the day is not recorded as a kept, intact archive: it fails (typed, naming the missing object and the
    remedy: restore it from a backup of the bucket), the run fails, its neighbours are recorded as usual. Fix idea:
    in record_removed (or the core, before NO_PERIOD_TABLE is raised for a day whose manifest records a removal),
    HEAD the manifest's object and fail the day as damaged when it is missing or not as recorded."""
    from archive_pipeline.core.lifecycle import remove_day

    config, spec = _naming_days(conn, schema)
    defs = build_definitions(config, check_source=False)
    key = asset_key(spec)
    job = defs.resolve_job_def(job_name(spec))
    gone = DAYS[1].isoformat()
    with instance_for_test() as instance:
        assert job.execute_in_process(instance=instance, tags=_range(DAYS[0], DAYS[2])).success
        remove_day(conn, spec, spec.period(DAYS[1]), store)
        assert not conn.execute("SELECT to_regclass(%s)", (f"{schema}.events_{DAYS[1]:%Y%m%d}",)).fetchone()[0]
        obj = _latest(instance, key, gone).asset_materialization.metadata["object_key"].value
        s3_client.delete_object(Bucket=bucket, Key=obj)
        result = job.execute_in_process(instance=instance, tags=_range(DAYS[0], DAYS[2]), raise_on_error=False)
        recorded = {m.partition: m.metadata["state"].value
                    for m in run_materializations(instance, result.run_id) if m.asset_key == key}
        verdicts = {e.partition: e.passed for e in run_check_evaluations(instance, result.run_id)}
    assert not result.success and gone not in recorded, (
        f"object {obj} deleted; the run (success {result.success}) recorded {recorded}, verdicts {verdicts}")


def test_a_ranged_run_with_its_checks_does_not_repeat_a_passed_verdict_for_a_removed_day_it_found_damaged(
        conn, schema, archive_env, store, s3_client, bucket):
    """Scenario: ``events`` has retention (delete). Dagster archives 2024-03-11 (archive_intact passed); the command
    line lets it go (``prune``: proven, rows deleted). Later the day's data object is deleted from the bucket (its
    manifest stays: the day's only copy is gone). A run of the archive asset WITH its archive_intact check (the
    asset's *Materialize* with checks, ``materialize``, a pure asset backfill: runs that plan the check) archives
    2024-03-10..12.

    Now: the core refuses 2024-03-11: "... its archive is damaged (object ... is missing) ...; restore the archive or
    its manifest from a backup" -- the day fails, rightly. But verdicts_as_they_were then records the day's last
    archive_intact again, PASSED: "2024-03-11: not checked again: this run failed before checking it. The last check
    (run R0) found: ... object, size and manifest match". This run did look, and found the object missing: the UI
    shows the day's check green beside a failure that says its archive is damaged.

    Expected: a day the run failed because its archive is damaged does not get a passed verdict repeated (a failed
    archive_intact naming the damage, or no evaluation, so the check shows as not passing). Fix idea: in
    _archive_days, skip verdicts_as_they_were for a failure that says the archive is damaged (DayRemovedError with
    the backup remedy, _manifest_unread), or record the failure as the day's verdict."""
    from archive_pipeline.core.lifecycle import remove_day

    config, spec = _deleting_events(conn, schema)
    defs = build_definitions(config)
    key = asset_key(spec)
    gone = DAYS[1].isoformat()
    intact = AssetCheckKey(key, "archive_intact")
    with instance_for_test() as instance:
        assert defs.resolve_job_def(job_name(spec)).execute_in_process(instance=instance, partition_key=gone).success
        assert remove_day(conn, spec, spec.period(DAYS[1]), store).rows == 3
        obj = _latest(instance, key, gone).asset_materialization.metadata["object_key"].value
        s3_client.delete_object(Bucket=bucket, Key=obj)
        with_checks = defs.resolve_implicit_global_asset_job_def().get_subset(
            asset_selection={key}, asset_check_selection={intact})
        result = with_checks.execute_in_process(instance=instance, tags=_range(DAYS[0], DAYS[2]), raise_on_error=False)
        failures = [e.message for e in instance.all_logs(result.run_id) if "damaged" in (e.message or "")]
        verdicts = [(e.passed, e.description) for e in run_check_evaluations(instance, result.run_id)
                    if e.partition == gone]
    assert failures, "(the premise: the run failed the day as damaged)"
    assert not any(passed for passed, _ in verdicts), (
        f"{gone}'s object {obj} is missing and the run failed it as damaged, yet it recorded: {verdicts}")


def _report_job_from_environment():
    """The user's ``archive_and_report`` job (see test_hunt15_ug._with_report) of the table configured in
    $VD_CONFIG (reconstructable, as a re-execution needs)."""
    import json
    import os

    from archive_pipeline_tests.test_hunt15_ug import _with_report

    config = parse_config(json.loads(os.environ["VD_CONFIG"]))
    defs, _ = _with_report(config, config.tables[0])
    return defs.resolve_job_def("archive_and_report")


def test_re_executing_from_failure_a_deferred_overwrite_range_leaves_the_days_it_re_records_checked(
        pg, conn, schema, archive_env, monkeypatch):
    """Scenario (README "Using it from another Dagster project"): the user's job ``archive_and_report`` (their
    daily_report downstream of the archive, no checks) runs 2024-03-10..12 with run config ``overwrite: true``
    (run R1; retries off). 2024-03-11 fails retryably (another session holds its table-day lock); 2024-03-10 and
    2024-03-12 are archived again and recorded, each with archive_intact passed. The lock is let go and the person
    re-executes R1 from failure (R2, as its failure advises: "re-execute this run ... From failure").

    R2 counts R1's two days as done (not archived again: README), archives 2024-03-11 and yields the range's output,
    which materializes all three days again (R1's records repeated for 2024-03-10 and 2024-03-12, so daily_report
    runs for the range). Now: archive_intact is recorded only for 2024-03-11; DayRecords.output carries the earlier
    days' verdicts only where they target a record of THIS run (verdict_carried this_run=True), and R1's do not.
    The latest materializations of 2024-03-10 and 2024-03-12 (R2's) have no archive_intact about them: the UI shows
    their check as not evaluated, though R1 checked exactly these archives.

    Expected: every day's latest materialization has a passed archive_intact verdict targeting it. Fix idea: in
    DayRecords.output carry, for each ``earlier`` day, the verdict whose target is the record repeated (its storage
    id), whichever run of the re-execution group logged it."""
    import json

    from dagster import ReexecutionOptions, execute_job, reconstructable

    from archive_pipeline.core.locks import lock_key
    from archive_pipeline.local.local_stack import create_sample_events

    create_sample_events(conn, DAYS, rows_per_day=3, schema=schema)
    raw = {"retry": {"max_retries": 0}, "tables": [
        {"name": f"{schema}.events", "day_column": "created_at", "start_date": DAY.isoformat()}]}
    monkeypatch.setenv("VD_CONFIG", json.dumps(raw))
    spec = parse_config(raw).tables[0]
    key = asset_key(spec)
    run_config = {"ops": {f"archive__{schema}__events": {"config": {"overwrite": True}}}}
    job = reconstructable(_report_job_from_environment)
    with instance_for_test() as instance:
        with pg.connect() as other:
            assert other.execute("SELECT pg_try_advisory_lock(%s)", lock_key(spec.name, DAYS[1])).fetchone()[0]
            with execute_job(job, instance=instance, tags=_range(DAYS[0], DAYS[2]), run_config=run_config,
                             raise_on_error=False) as r1:
                assert not r1.success
                r1_id = r1.run_id
            other.execute("SELECT pg_advisory_unlock_all()")
        with execute_job(job, instance=instance, tags={**_range(DAYS[0], DAYS[2]), "dagster/is_resume_retry": "true"},
                         run_config=run_config, reexecution_options=ReexecutionOptions.from_failure(r1_id, instance),
                         raise_on_error=False) as r2:
            assert r2.success
            r2_id = r2.run_id
        unchecked = {}
        for day in DAYS:
            latest = _latest(instance, key, day.isoformat())
            check = _latest_check(instance, key, day.isoformat())
            target = check.evaluation.target_materialization_data if check and check.evaluation else None
            if latest.run_id != r2_id or target is None or target.storage_id != latest.storage_id \
                    or not check.evaluation.passed:
                unchecked[day.isoformat()] = (latest.run_id == r2_id, target and target.run_id)
    assert not unchecked, f"days whose latest record (R2 {r2_id}) has no verdict about it (R1 {r1_id}): {unchecked}"


def test_a_deferred_range_records_a_naming_mode_day_let_go_under_the_tables_former_format(
        conn, schema, archive_env, store):
    """Scenario: a legacy one-table-per-day table (naming mode, retention ``drop``), archived as jsonl: a ranged run
    of Archive_<schema>_events records 2024-03-10..12. Retention lets 2024-03-11 go (its day table dropped; the jsonl
    manifest marked removed). The table's format is then changed to csv (README: a day archived under its former
    format is found there). The user's job ``archive_and_report`` (their daily_report downstream of the archive)
    runs 2024-03-10..12 as one ranged run.

    Now: 2024-03-10 and 2024-03-12 are found under their jsonl keys and skipped, as promised. 2024-03-11 has no table
    (nothing to do, no manifest key named by the core); record_removed looks only at the key the configuration
    renders now (``.csv.zst``), finds nothing, although the day's own latest materialization names its manifest
    (``manifest_key``, the jsonl one, marked removed); the day counts as "gone from the source with no archive
    recorded": the warning says so (false: the archive is there, recorded, removal marked), the range's output is
    withheld and daily_report never runs for the range -- on every run from now on.

    Expected: the day is recorded as removed from the manifest its last materialization names (as a column-mode
    day removed under a former format is), the output is yielded, daily_report runs for the three days. Fix idea:
    in record_removed, without REMOVED_MANIFEST use recorded_day_key(spec, day, store, <the latest record's
    manifest_key>) (as former_day_keys does), and look under the other formats' keys too."""
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline_tests.test_hunt15_ug import _with_report

    config, spec = _naming_days(conn, schema)
    key = asset_key(spec)
    with instance_for_test() as instance:
        assert build_definitions(config, check_source=False).resolve_job_def(job_name(spec)).execute_in_process(
            instance=instance, tags=_range(DAYS[0], DAYS[2])).success
        remove_day(conn, spec, spec.period(DAYS[1]), store)
        assert not conn.execute("SELECT to_regclass(%s)", (f"{schema}.events_{DAYS[1]:%Y%m%d}",)).fetchone()[0]
        csv = parse_config({"retry": {"max_retries": 0}, "tables": [{
            "name": f"{schema}.events", "start_date": DAY.isoformat(), "format": "csv",
            "partitioning": {"mode": "naming", "pattern": "events_%Y%m%d"},
            "retention": {"keep_days": 30, "action": "drop"}}]})
        defs, report = _with_report(csv, csv.tables[0], check_source=False)
        result = defs.resolve_job_def("archive_and_report").execute_in_process(
            instance=instance, tags=_range(DAYS[0], DAYS[2]), raise_on_error=False)
        recorded = {m.partition: m.metadata.get("state") for m in run_materializations(instance, result.run_id)
                    if m.asset_key == key}
        reported = sorted(instance.get_materialized_partitions(report))
        warnings = [e.message for e in instance.all_logs(result.run_id) if "gone from the source" in (e.message or "")]
    assert reported == [d.isoformat() for d in DAYS], (
        f"daily_report ran for {reported} (run success {result.success}); recorded {recorded}; warnings {warnings}")
