"""Hunt 15 (uf): a review of 759336f and c52b150 (a deferred range's output and its removed days' records and
verdicts, the commit's refusal on a failed manifest re-read, a range restore's commands for the tables not reached,
inline component settings rendered through _rendered)."""

from __future__ import annotations

import datetime as dt
import types

from dagster import AssetCheckKey, AssetRecordsFilter, instance_for_test
from dagster._core.event_api import PartitionKeyFilter

from archive_pipeline.core.config import parse_config
from archive_pipeline.defs.assets import asset_key
from archive_pipeline_tests.test_hunt15_ug import _with_report

DAY = dt.date(2024, 3, 10)
DAYS = [DAY + dt.timedelta(days=i) for i in range(3)]
RANGE = {"dagster/asset_partition_range_start": DAYS[0].isoformat(),
         "dagster/asset_partition_range_end": DAYS[-1].isoformat()}

def _deleting_days_with_report(conn, schema: str):
    """Three days of sample events in a table whose retention deletes its days, with the user's ``daily_report``
    downstream (see :func:`_with_report`): (spec, the archive's asset key, definitions, the report's key)."""
    from archive_pipeline.local.local_stack import create_sample_events

    create_sample_events(conn, DAYS, rows_per_day=3, schema=schema)
    config = parse_config({"retry": {"max_retries": 1, "delay_seconds": 1}, "tables": [{
        "name": f"{schema}.events", "day_column": "created_at", "start_date": DAY.isoformat(),
        "retention": {"keep_days": 30, "action": "delete"}}]})
    spec = config.tables[0]
    return (spec, asset_key(spec), *_with_report(config, spec))

def _archived_naming_days(conn, schema: str, store, empty: dt.date | None = None):
    """A naming-mode table (``events_%Y%m%d``) whose retention drops its day tables, each of ``DAYS`` holding two
    rows (``empty``: none), every day archived: (its configuration, its spec)."""
    from archive_pipeline.core.archive import archive_partition

    for day in DAYS:
        conn.execute(f"CREATE TABLE {schema}.events_{day:%Y%m%d} (id int, created_at timestamptz)")
        if day != empty:
            conn.execute(f"INSERT INTO {schema}.events_{day:%Y%m%d} VALUES (1, %s), (2, %s)",
                         (dt.datetime.combine(day, dt.time(1), dt.UTC), dt.datetime.combine(day, dt.time(2), dt.UTC)))
    config = parse_config({"retry": {"max_retries": 0}, "tables": [{
        "name": f"{schema}.events", "start_date": DAY.isoformat(),
        "partitioning": {"mode": "naming", "pattern": "events_%Y%m%d"},
        "retention": {"keep_days": 30, "action": "drop"}}]})
    spec = config.tables[0]
    for day in DAYS:
        archive_partition(conn, spec, spec.period(day), store)
    return config, spec


def test_a_deferred_range_holding_an_empty_day_dropped_by_retention_never_runs_the_assets_downstream(
        conn, schema, archive_env, store):
    """Scenario: a legacy one-table-per-day table (naming mode, ``events_%Y%m%d``, retention ``drop``). 2024-03-11's
    day table exists but holds no row; all three days are archived (2024-03-11 as an empty day: its manifest records
    ``empty``, no object) and 2024-03-11 is let go by retention (its empty table dropped, the manifest marked
    removed). The user's job ``archive_and_report`` then runs 2024-03-10..12 as one ranged run.

    Now (since c52b150): record_removed finds the day's manifest removed but without an ``object`` (an empty day has
    none), returns False, and the day is counted as "gone from the source that nothing records": the range's output
    is withheld, daily_report never runs for the range, the run still ends green, and the warning says "gone from
    the source with no archive recorded" -- false: the day's archive (its empty manifest, removal recorded) is there.
    Every range holding such a day is now withheld forever (relaunching gets the same).

    Expected: a removed empty day is recorded from its manifest (state removed, 0 rows) like any removed day, the
    range's output is yielded and daily_report runs for the three days. Fix idea: in record_removed, accept a
    manifest that is ``empty`` (no object) with a removal mark; only a day with no manifest at all is unrecorded."""
    from archive_pipeline.core.lifecycle import remove_day

    config, spec = _archived_naming_days(conn, schema, store, empty=DAYS[1])
    removal = remove_day(conn, spec, spec.period(DAYS[1]), store)
    assert not conn.execute("SELECT to_regclass(%s)", (f"{schema}.events_{DAYS[1]:%Y%m%d}",)).fetchone()[0], removal
    defs, report = _with_report(config, spec, check_source=False)
    with instance_for_test() as instance:
        result = defs.resolve_job_def("archive_and_report").execute_in_process(
            instance=instance, tags=RANGE, raise_on_error=False)
        reported = sorted(instance.get_materialized_partitions(report))
        warnings = [e.message for e in instance.all_logs(result.run_id) if "gone from the source" in (e.message or "")]
    assert reported == [d.isoformat() for d in DAYS], (
        f"daily_report ran for {reported} (run success {result.success}); warnings: {warnings}")


def test_a_deferred_ranges_retry_carries_onto_a_removed_days_record_the_verdict_about_the_archive_it_replaced(
        pg, conn, schema, archive_env, store, monkeypatch):
    """Scenario: Dagster archives 2024-03-10 alone (run R0: gen 1, archive_intact passed about it). Late rows come;
    the command line archives the day again (``archive --overwrite``: gen 2, gen 1 retired and deleted) and lets it
    go (``prune``: proven, rows deleted). The user's job ``archive_and_report`` (their daily_report downstream of
    the archive, README "Using it from another Dagster project") then runs 2024-03-10..12 (retry: max_retries 1);
    2024-03-11 fails retryably the first time (its table-day lock held elsewhere, released during the backoff).

    The first attempt records 2024-03-10 from its manifest (record_removed: R0's record names gen 1, the manifest
    gen 2, so ``same`` is False and, as its docstring says, "no verdict about another archive"). Now (c52b150): the
    step's retry re-records it in the range's output and DayRecords.output carries
    ``verdict_carried(..., this_run=True)``, which takes the day's latest verdict from ANY run: R0's, about gen 1,
    an object no longer in the bucket. The day's latest materialization (gen 2, removed) shows archive_intact
    "passed ... as checked by run R0: object, size and manifest match" with ``archive`` = gen 1's URI (had R0's
    verdict been a failure, a sound removed archive would show red).

    Expected: a day whose record the first attempt left without a verdict gets none carried (or only a verdict this
    run, or one about the same object, gave). Fix idea: carry only a verdict whose target is the record the earlier
    attempt logged (its storage id), or whose ``archive`` is the object the record names."""
    from psycopg import sql

    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline.core.locks import lock_key
    from archive_pipeline.defs import assets as assets_module
    from archive_pipeline.defs.assets import job_name

    spec, archive, defs, report = _deleting_days_with_report(conn, schema)
    day = DAYS[0].isoformat()
    with instance_for_test() as instance:
        first = defs.resolve_job_def(job_name(spec)).execute_in_process(instance=instance, partition_key=day)
        assert first.success
        conn.execute(sql.SQL("INSERT INTO {} SELECT id + 1000, created_at + interval '1 minute', user_id, event_type, "
                             "amount, session_id, is_mobile, tags, payload FROM {} WHERE created_at < %s").format(
            sql.Identifier(schema, "events"), sql.Identifier(schema, "events")),
            (dt.datetime.combine(DAYS[1], dt.time(), dt.UTC),))
        gen2 = archive_partition(conn, spec, spec.period(DAYS[0]), store, overwrite=True)
        assert remove_day(conn, spec, spec.period(DAYS[0]), store).rows == gen2.rows > 3
        other = pg.connect()
        assert other.execute("SELECT pg_try_advisory_lock(%s)", lock_key(spec.name, DAYS[1])).fetchone()[0]
        monkeypatch.setattr(assets_module, "time", types.SimpleNamespace(sleep=lambda seconds: other.close()))
        result = defs.resolve_job_def("archive_and_report").execute_in_process(
            instance=instance, tags=RANGE, raise_on_error=False)
        assert result.success and other.closed  # (the premise: the retry ran and yielded the output)
        latest = instance.fetch_materializations(AssetRecordsFilter(asset_key=archive, asset_partitions=[day]),
                                                 limit=1).records[0]
        assert latest.run_id == result.run_id
        assert latest.asset_materialization.metadata["object_key"].value == gen2.key
        intact = AssetCheckKey(archive, "archive_intact")
        check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [intact], partition_filter=PartitionKeyFilter(key=day)).get(intact)
    evaluation = check.evaluation if check is not None else None
    about = evaluation.target_materialization_data if evaluation is not None else None
    carried_onto_latest = about is not None and about.storage_id == latest.storage_id
    archive_uri = evaluation.metadata["archive"].value if carried_onto_latest else None
    assert not carried_onto_latest or gen2.key in str(archive_uri), (
        f"{day}'s record of gen 2 ({gen2.key}) carries archive_intact {evaluation.passed} from run "
        f"{evaluation.metadata.get('checked_in_run')} (R0 was {first.run_id}) about {archive_uri}: "
        f"{evaluation.description!r}")


def test_a_deferred_range_whose_removed_days_manifest_read_fails_transiently_ends_green_with_nothing_downstream(
        conn, schema, archive_env, store, s3, monkeypatch):
    """Scenario: 2024-03-11 was archived and let go (``archive`` then ``prune`` from the command line: proven, rows
    deleted). The user's job ``archive_and_report`` (their daily_report downstream of the archive) runs
    2024-03-10..12 as one ranged run. The core finds 2024-03-11 removed (nothing to do); record_removed then reads
    its manifest again to record it, and that GET fails transiently (the store answers 503 SlowDown for a while).

    Now (c52b150): record_removed swallows the error and returns False, the day is taken for "gone from the source
    with no archive recorded", the range's output is withheld: the step and the run end SUCCESS, daily_report is
    skipped for the whole range, nothing is retried (retry: is never consulted), and the only trace is a warning
    that is false (the archive is recorded, it could not be read a moment ago) and names no cause.

    Expected: a read that failed transiently is a failure of the step (retryable, naming the table, the day and the
    store's error), so the step's retry records the day and yields the output -- not a green run whose downstream
    silently never ran. Fix idea: let record_removed raise (or return the error) when load_manifest fails for a
    reason other than "no manifest"; count the day as failed (retryable) in _archive_days."""
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline.local.local_stack import create_sample_events
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

    create_sample_events(conn, DAYS, rows_per_day=3, schema=schema)
    config = parse_config({"retry": {"max_retries": 0}, "tables": [{
        "name": f"{schema}.events", "day_column": "created_at", "start_date": DAY.isoformat(),
        "retention": {"keep_days": 30, "action": "delete"}}]})
    spec = config.tables[0]
    archive_partition(conn, spec, spec.period(DAYS[1]), store)
    assert remove_day(conn, spec, spec.period(DAYS[1]), store).rows == 3
    defs, report = _with_report(config, spec)
    gone = DAYS[1].isoformat()
    with FaultProxy(s3.endpoint_url) as proxy, instance_for_test() as instance:
        monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", proxy.url)
        # the core's read of the manifest goes through; the record's read again, a moment later, is throttled
        slow = proxy.add(Fault(method="GET", path=rf"/{gone}\.jsonl\.zst\.manifest\.json$", action="slow_down",
                               skip=1, times=None))
        result = defs.resolve_job_def("archive_and_report").execute_in_process(
            instance=instance, tags=RANGE, raise_on_error=False)
        reported = sorted(instance.get_materialized_partitions(report))
        warnings = [e.message for e in instance.all_logs(result.run_id) if "gone from the source" in (e.message or "")]
    assert slow.hits >= 1  # (the premise: the record's read failed)
    assert not (result.success and reported != [d.isoformat() for d in DAYS]), (
        f"the run ended SUCCESS with daily_report run for {reported} only, after a transient 503 reading {gone}'s "
        f"manifest; it said: {warnings}")


def test_a_ranged_run_over_a_naming_mode_day_let_go_whose_manifest_is_damaged_ends_green_saying_nothing_was_archived(
        conn, schema, archive_env, store, s3_client, bucket):
    """Scenario: a legacy one-table-per-day table (naming mode, retention ``drop``). 2024-03-11 is archived and let
    go (its day table dropped: the archive is the day's only copy). Then its manifest is altered in the bucket (a
    field changed, its manifest_sha256 no longer matching: "damaged"). The user's job ``archive_and_report`` runs
    2024-03-10..12 as one ranged run (their daily_report downstream of the archive).

    Now: the core raises "no table for 2024-03-11 ... nothing to archive" (nothing to do, not failed);
    record_removed cannot load the damaged manifest, swallows the ManifestError and returns False; since c52b150 the
    range's output is withheld with the warning "2024-03-11: gone from the source with no archive recorded" and the
    run ends SUCCESS. The only copy of the day is damaged and nothing says so: not the day, not the manifest, not
    the remedy; the warning even says there is no archive. (Column mode refuses the same day: "... its archive is
    damaged ...; restore the archive or its manifest from a backup".)

    Expected: the day fails (typed, naming the table, the day, the damaged manifest and the remedy: restore it from a
    backup of the bucket), the run ends failed. Fix idea: in record_removed, a manifest that cannot be loaded for a
    reason other than its absence is the day's failure (ManifestError: the damaged-archive remedy), not "nothing
    recorded"."""
    from archive_pipeline.core.keys import manifest_key, table_day_key
    from archive_pipeline.core.lifecycle import remove_day

    config, spec = _archived_naming_days(conn, schema, store)
    assert remove_day(conn, spec, spec.period(DAYS[1]), store).rows == 2
    key = manifest_key(table_day_key(spec, spec.period(DAYS[1]), "archive"))
    body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert b'"rows": 2' in body or b'"rows":2' in body
    s3_client.put_object(Bucket=bucket, Key=key, Body=body.replace(b'"rows": 2', b'"rows": 3', 1).replace(
        b'"rows":2', b'"rows":3', 1))  # altered: its manifest_sha256 no longer matches
    defs, report = _with_report(config, spec, check_source=False)
    gone = DAYS[1].isoformat()
    with instance_for_test() as instance:
        result = defs.resolve_job_def("archive_and_report").execute_in_process(
            instance=instance, tags=RANGE, raise_on_error=False)
        said = [e.message for e in instance.all_logs(result.run_id) if gone in (e.message or "")]
    assert not result.success and any("damaged" in m or "altered" in m or "manifest" in m.lower() for m in said), (
        f"run success {result.success}; about {gone} it said: {said}")


def test_a_deferred_ranges_retry_says_a_removed_days_verdict_was_checked_earlier_in_this_run(
        pg, conn, schema, archive_env, store, monkeypatch):
    """Scenario: Dagster archives 2024-03-10 alone (run R0, archive_intact passed); the command line lets it go
    (``prune``). The user's job ``archive_and_report`` then runs 2024-03-10..12 (retry: max_retries 1); 2024-03-11
    fails retryably the first time (its table-day lock held elsewhere, released during the backoff). The first
    attempt records 2024-03-10 as removed, repeating R0's record with R0's verdict carried ("as checked by run R0",
    ``checked_in_run`` = R0).

    Now (c52b150): the retry's output carries the day's latest verdict again with this_run=True; the latest is the
    first attempt's carried copy, so the day's newest archive_intact says "2024-03-10: as checked earlier in this
    run: 2024-03-10: as checked by run R0: ..." and its ``checked_in_run`` is THIS run's id: the verdict is told as
    this run's own check, which checked nothing of the day (R0 did), and the run R0 is lost from the metadata that
    marks a carried verdict.

    Expected: the verdict carried names the run that checked (checked_in_run = R0) and does not say this run checked
    it. Fix idea: in verdict_carried, where the record found is itself carried (``checked_in_run`` in its metadata),
    keep its checked_in_run and description (or skip carried records, as _planned_and_last does with ``carried``)."""
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline.core.locks import lock_key
    from archive_pipeline.defs import assets as assets_module
    from archive_pipeline.defs.assets import job_name

    spec, archive, defs, report = _deleting_days_with_report(conn, schema)
    day = DAYS[0].isoformat()
    with instance_for_test() as instance:
        first = defs.resolve_job_def(job_name(spec)).execute_in_process(instance=instance, partition_key=day)
        assert first.success
        assert remove_day(conn, spec, spec.period(DAYS[0]), store).rows == 3
        other = pg.connect()
        assert other.execute("SELECT pg_try_advisory_lock(%s)", lock_key(spec.name, DAYS[1])).fetchone()[0]
        monkeypatch.setattr(assets_module, "time", types.SimpleNamespace(sleep=lambda seconds: other.close()))
        result = defs.resolve_job_def("archive_and_report").execute_in_process(
            instance=instance, tags=RANGE, raise_on_error=False)
        assert result.success and other.closed  # (the premise: the retry ran and yielded the output)
        intact = AssetCheckKey(archive, "archive_intact")
        check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [intact], partition_filter=PartitionKeyFilter(key=day)).get(intact)
    evaluation = check.evaluation
    checked_in = evaluation.metadata.get("checked_in_run")
    checked_in = getattr(checked_in, "value", checked_in)
    assert checked_in == first.run_id and "earlier in this run" not in evaluation.description, (
        f"{day}'s verdict after the retry: checked_in_run {checked_in} (R0 {first.run_id}, this run "
        f"{result.run_id}): {evaluation.description!r}")


def test_an_inline_asset_key_prefix_templated_from_a_digits_variable_is_refused_as_not_digits(monkeypatch):
    """A component's defs.yaml sets ``asset_key_prefix: [team, "{{ env.TEAM_ID }}"]`` with TEAM_ID=42 in the code
    location's environment. README: "Inline, a string holding Dagster's template syntax ... is rendered by Dagster's
    templates"; the rendered text, ``42``, is a valid part of an asset key (``asset_key_prefix: [team, "42"]``
    written as is loads, so does the table file's).

    Now (759336f routes asset_key_prefix through _rendered, which hands a templated string to Dagster's native
    template): the result is read as a Python literal, the int 42, and the load fails with "setting
    'asset_key_prefix': 42 cannot be part of a Dagster asset key: use letters, digits and '_'" -- refusing a value of
    digits for not being letters and digits (a lone ``"{{ env.TEAM_ID }}"`` says only "Input should be a valid
    tuple"). _rendered's own docstring names the cause for plain strings ("2024.10" became 2024.1); a templated one
    still goes that way, and the user cannot quote an environment variable's value.

    Expected: the prefix loads as ("team", "42"). Fix idea: asset_key_prefix (a setting of text) renders its
    templates as text (str() of the rendered value, or jinja's plain Template), as the table file would read it."""
    from archive_pipeline.defs.component import ArchiveTablesComponent

    monkeypatch.setenv("TEAM_ID", "42")
    yaml = ("tables:\n  - {name: public.events, day_column: created_at, start_date: 2024-01-01}\n"
            "asset_key_prefix: [team, \"{{ env.TEAM_ID }}\"]\n")
    try:
        prefix = ArchiveTablesComponent.resolve_from_yaml(yaml).archive_config().asset_key_prefix
    except Exception as exc:  # noqa: BLE001 - shown in the failure
        raise AssertionError(f"asset_key_prefix [team, '{{{{ env.TEAM_ID }}}}'] with TEAM_ID=42 refused: "
                             f"{type(exc).__name__}: {exc}") from None
    assert tuple(prefix) == ("team", "42")
