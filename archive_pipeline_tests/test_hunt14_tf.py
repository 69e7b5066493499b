"""Hunt 14 (tf): regressions and holes in the session's fresh fixes (removed days met by ranged runs, DayRecords,
archive_intact / backfill_policy / the sensor's re-request, put-back casts and restore widening)."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pytest
import yaml
from psycopg import sql

from archive_pipeline_tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
DAY = dt.date(2024, 3, 10)


def _cli(env, *args, process: bool = False):
    # in this process (helpers.run_cli: a second of interpreter start-up and imports saved per call); process=True: a
    # real `python -m` process, for what only one shows (signals, start-up, rlimits)
    return run_cli(args, env, cwd=ROOT, timeout=90, process=process or None)


def _env(pg, s3, bucket, tmp_path, table, **sections):
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [table], **sections}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIVE_", "AWS_"))}
    env.update(PYTHONPATH=str(ROOT), ARCHIVE_PIPELINE_CONFIG=str(config), ARCHIVE_PG_DSN=pg.dsn,
               ARCHIVE_S3_BUCKET=bucket, ARCHIVE_S3_PREFIX="tf", ARCHIVE_S3_ENDPOINT_URL=s3.endpoint_url,
               ARCHIVE_S3_ACCESS_KEY_ID="testing", ARCHIVE_S3_SECRET_ACCESS_KEY="testing", COLUMNS="200")
    return env


def test_a_restore_cut_short_by_the_configured_statement_timeout_says_to_raise_it(pg, conn, schema, s3, bucket,
                                                                                  tmp_path):
    """Scenario: the archive config sets ``source: {statement_timeout_ms: 1000}``; a day of ``t`` is archived and its
    rows deleted by mistake; ``restore --into original`` runs while a migration holds a lock on ``t``, so the
    restore's session (which the CLI opens with statement_timeout = source.statement_timeout_ms) is cancelled.

    Now (since "Fix hunt14 ta", 888366c): the cause is worded for the restore, but the remedy says only "raise the
    session's statement_timeout (ALTER ROLE postgres SET statement_timeout = ...)". That cannot help: the CLI sets
    statement_timeout for its own session from source.statement_timeout_ms, which overrides any role setting, so a
    day that takes longer than 1 s times out again after the ALTER ROLE. The setting that decides is never named,
    though README says of statement_timeout: "the message says to raise `source.statement_timeout_ms`" (the
    generic remedy it replaced did say so).

    Should: the remedy names ``source.statement_timeout_ms`` (0 = no limit) in the archive config as what to raise
    (the role's setting only where the session sets none).
    Fix idea: keep the restore wording of the cause but reuse errors._STATEMENT_TIMEOUT's remedy (source.
    statement_timeout_ms first), adding the lock-wait advice."""
    t = sql.Identifier(schema, "t")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date NOT NULL)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s), (2, %s)").format(t), (DAY, DAY))
    table = {"name": f"{schema}.t", "day_column": "at", "start_date": DAY.isoformat(), "format": "csv"}
    env = _env(pg, s3, bucket, tmp_path, table, source={"statement_timeout_ms": 1000})
    done = _cli(env, "archive", "--table", f"{schema}.t", "--day", DAY.isoformat(), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    conn.execute(sql.SQL("DELETE FROM {}").format(t))
    with pg.connect() as other:
        other.autocommit = False
        other.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(t))
        try:
            done = _cli(env, "restore", "--table", f"{schema}.t", "--day", DAY.isoformat(), "--into", "original",
                        "--json")
        finally:
            other.rollback()
    answer = json.loads(done.stdout)
    assert done.returncode != 0 and "statement_timeout" in answer["error"], answer
    assert "source.statement_timeout_ms" in answer["error"], answer["error"]



def _range_restore_after_retype(conn, schema, store, temp_dir, fmt, old, new, first, second):
    """Day 1 archived with column c of type ``old``, c retyped ``new`` in the source, day 2 archived; both days
    restored into a new table by one range restore: the rows it holds then, and the source's."""
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.restore import restore_days

    t = sql.Identifier(schema, "t")
    day2 = DAY + dt.timedelta(days=1)
    conn.execute(sql.SQL(f"CREATE TABLE {{}} (id int PRIMARY KEY, at date NOT NULL, c {old})").format(t))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, %s)").format(t), (DAY, first))
    spec = TableSpec(name=f"{schema}.t", day_column="at", start_date=DAY.isoformat(), format=fmt)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(sql.SQL(f"ALTER TABLE {{}} ALTER COLUMN c TYPE {new}").format(t))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (2, %s, %s)").format(t), (day2, second))
    archive_partition(conn, spec, day2, store, temp_dir=temp_dir)
    done = restore_days(conn, store, spec, DAY, day2, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    assert [r.rows for r in done.results] == [1, 1]
    rows = conn.execute(sql.SQL("SELECT id, c::text FROM {} ORDER BY id").format(
        sql.Identifier(schema, "back"))).fetchall()
    return rows, conn.execute(sql.SQL("SELECT id, c::text FROM {} ORDER BY id").format(t)).fetchall()


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_a_range_restore_into_its_own_table_follows_a_char_column_lengthened(conn, schema, store, temp_dir, fmt):
    """Scenario: ``t (id int PRIMARY KEY, at date, c char(3))``; day 2024-03-10 archived with (1, 'ab'); codes grow,
    the source runs ``ALTER TABLE t ALTER c TYPE char(5)`` and day 2024-03-11 is archived with (2, 'abcd'). The user
    restores both days into a new table (``restore --from 2024-03-10 --to 2024-03-11 --into new``).

    Now: "Fix hunt14 ta" (888366c) taught restore._widens that char(n) widens to text, varchar and varchar(m >= n),
    but not to char(m > n): the table made from day 1 keeps char(3) and day 2 is refused "value too long for type
    character(3) ... its column types are not the archived ones (c: character(3) here, character(5) when archived)
    ... to fix: restore into a new table (into='new'), created with the archived types" -- which is what the user
    did: the same circular remedy the fix removed for char(n) -> text.

    Should: the range's own table follows the source as for varchar(3) -> varchar(5) (c becomes char(5); char(n)
    compares without its padding, so day 1's row reads back as the source's own ALTER made it), both days restored.
    Fix idea: in restore._widens, ``character(m)`` with m > n is a widening of ``character(n)``."""
    rows, source = _range_restore_after_retype(conn, schema, store, temp_dir, fmt, "char(3)", "char(5)", "ab", "abcd")
    assert rows == source, rows


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
@pytest.mark.parametrize("old, new, first, second", [("bit(3)", "varbit", "101", "10110"),
                                                     ("varbit(3)", "varbit(8)", "101", "10110"),
                                                     ("bit(3)[]", "varbit[]", "{101}", "{10110}")])
def test_a_range_restore_into_its_own_table_follows_a_bit_column_widened(conn, schema, store, temp_dir, fmt,
                                                                          old, new, first, second):
    """Scenario: ``t (id int PRIMARY KEY, at date, c bit(3))`` (flags); day 2024-03-10 archived with (1, B'101'); more
    flags are needed, the source runs ``ALTER TABLE t ALTER c TYPE varbit`` (or varbit(3) -> varbit(8), or the same
    on an array) and day 2024-03-11 is archived with (2, B'10110'). The user restores both days into a new table.

    Now: restore._widens knows varchar(n) -> varchar(m)/text and (since 888366c) char(n) -> text, but not the bit
    strings that mirror them: day 2 is refused "bit string length 5 does not match type bit(3)" (or "bit string too
    long for type bit varying(3)") with the remedy "restore into a new table (into='new'), created with the archived
    types", which is what the user did: a remedy in a circle (the fix's own put-back half treats bit beside char).

    Should: the range's own table follows the source (c becomes varbit / varbit(8); every value already restored
    reads back the same: bit(3)'s values are exactly 3 bits), both days restored and proven.
    Fix idea: in restore._widens, ``bit(n)`` / ``bit varying(n)`` widen to ``bit varying`` and ``bit varying(m)``
    with m >= n, as character varying does."""
    rows, source = _range_restore_after_retype(conn, schema, store, temp_dir, fmt, old, new, first, second)
    assert rows == source, rows




def test_a_ranged_run_meeting_a_removed_day_succeeds_and_records_it_removed(conn, schema, archive_env):
    """Scenario: ``events`` has retention (delete); 2024-03-10 is archived by a run of Archive_<schema>_events and then
    removed by Remove_<schema>_events (proven; its archive is the day's only copy). Rows of 2024-03-11 arrive and the
    operator backfills 2024-03-10..11 in one ranged run (nothing else wrong).

    Now: 9f8aa3e (DayRecords) gave ``record_removed`` a parameter ``records`` (the run's DayRecords) and kept its
    local ``records = context.instance.fetch_materializations(...).records`` (the day's last materialization), which
    rebinds the name: ``records.record(...)`` is then called on a list and raises "AttributeError: 'list' object has
    no attribute 'record'". The untyped error escapes the day loop: the whole step fails (retried max_retries times,
    a traceback instead of a message), 2024-03-11 is not archived at all and every day of the range is marked
    failed, the removed one red again. Any ranged run (schedule catch-up, backfill) that reaches a removed day
    fails so: exactly the case 7d5a10e set out to make green. (test_hunt13_sg's removed-day test fails the same.)

    Should: the run succeeds; 2024-03-10 recorded materialized with state ``removed`` (its archive's metadata
    repeated), 2024-03-11 archived.
    Fix idea: rename the local list in record_removed (e.g. ``last = ...records``)."""
    import dagster as dg
    from dagster import AssetPartitionStatus, instance_for_test

    from archive_pipeline.core.config import parse_config
    from archive_pipeline.definitions import build_definitions
    from archive_pipeline.defs.assets import asset_key, daily_partitions, job_name
    from archive_pipeline.defs.retention_assets import removal_job_name
    from archive_pipeline.local.local_stack import create_sample_events

    days = [DAY, DAY + dt.timedelta(days=1)]
    create_sample_events(conn, days[:1], rows_per_day=4, schema=schema)
    config = parse_config({"retry": {"max_retries": 0}, "tables": [{
        "name": f"{schema}.events", "day_column": "created_at", "start_date": DAY.isoformat(),
        "retention": {"keep_days": 30, "action": "delete"}}]})
    spec = config.tables[0]
    defs = build_definitions(config)
    job = defs.resolve_job_def(job_name(spec))
    with instance_for_test() as instance:
        assert job.execute_in_process(instance=instance, partition_key=DAY.isoformat()).success
        assert defs.resolve_job_def(removal_job_name(spec)).execute_in_process(
            instance=instance, partition_key=DAY.isoformat()).success
        create_sample_events(conn, days[1:], rows_per_day=4, schema=schema)
        result = job.execute_in_process(instance=instance, raise_on_error=False, tags={
            "dagster/asset_partition_range_start": days[0].isoformat(),
            "dagster/asset_partition_range_end": days[1].isoformat()})
        failures = [[line for line in e.event_specific_data.error.to_string().splitlines() if "Error" in line]
                    for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        assert result.success, failures
        status = {day: found.value if found else None for day, found in instance.get_status_by_partition(
            asset_key(spec), [d.isoformat() for d in days], daily_partitions(spec)).items()}
        assert status == {d.isoformat(): AssetPartitionStatus.MATERIALIZED.value for d in days}, status
        latest = instance.fetch_materializations(dg.AssetRecordsFilter(
            asset_key=asset_key(spec), asset_partitions=[DAY.isoformat()]), limit=1).records[0]
        assert latest.asset_materialization.metadata["state"].value == "removed"



def test_a_removed_day_archived_outside_dagster_is_not_recorded_as_an_archive_without_md5(conn, schema, archive_env,
                                                                                          store, temp_dir):
    """Scenario: ``events`` (retention: delete) is archived and pruned by the command line (``archive``, then
    ``prune`` once proven), as README allows beside Dagster; 2024-03-10 is thus removed from the source, its archive
    the day's only copy, and Dagster's instance holds no materialization of it. Later a ranged run of
    Archive_<schema>_events covers 2024-03-10..11 (a backfill, a schedule's catch-up), then the operator runs
    ``archive_intact`` for 2024-03-10 on demand.

    Now (7d5a10e's record_removed, with ff185d0's name clash set aside): the removed day is recorded materialized
    with ``state: removed`` and "the last materialization's metadata repeated" -- there is none, so the record holds
    only state/removed/summary: no object, no md5, no row count, and no archive_intact verdict. archive_intact then
    reads that record and fails "2024-03-10: NOT intact: the materialization of 2024-03-10 records no archive
    (md5)": the intact, proven only copy of the day is reported broken, by the record this run invented.

    Should: a removed day's record describes its archive (read from its manifest: object, md5, rows, sizes) and
    archive_intact on demand passes for the intact archive (or, no record made, at most warns as for any day
    Dagster has not recorded: never "NOT intact").
    Fix idea: in record_removed, when no earlier materialization is found, build the metadata from the day's
    manifest in the store (as a skipped day's record is built), or log only the info line."""
    import dagster as dg
    from dagster import instance_for_test

    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import parse_config
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline.definitions import build_definitions
    from archive_pipeline.defs.assets import asset_key, job_name
    from archive_pipeline.local.local_stack import create_sample_events
    from archive_pipeline_tests.helpers import run_check_evaluations

    days = [DAY, DAY + dt.timedelta(days=1)]
    create_sample_events(conn, days[:1], rows_per_day=3, schema=schema)
    config = parse_config({"retry": {"max_retries": 0}, "tables": [
        {"name": f"{schema}.events", "day_column": "created_at", "start_date": DAY.isoformat(),
         "retention": {"keep_days": 30, "action": "delete"}}]})
    spec = config.tables[0]
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)  # (the command line's archive and prune)
    assert remove_day(conn, spec, DAY, store, temp_dir=temp_dir, removed_by="cli").rows == 3
    create_sample_events(conn, days[1:], rows_per_day=3, schema=schema)
    defs = build_definitions(config)
    check = dg.AssetCheckKey(asset_key(spec), "archive_intact")
    with instance_for_test() as instance:
        ranged = defs.resolve_job_def(job_name(spec)).execute_in_process(instance=instance, raise_on_error=False, tags={
            "dagster/asset_partition_range_start": days[0].isoformat(),
            "dagster/asset_partition_range_end": days[1].isoformat()})
        assert ranged.success  # (fails today on ff185d0's AttributeError first)
        alone = defs.resolve_implicit_global_asset_job_def().get_subset(asset_check_selection={check},
                                                                        asset_selection=set())
        checked = alone.execute_in_process(instance=instance, partition_key=DAY.isoformat(), raise_on_error=False)
        [verdict] = [e for e in run_check_evaluations(instance, checked.run_id) if e.check_name == "archive_intact"]
    assert verdict.passed or (verdict.severity == dg.AssetCheckSeverity.WARN and "NOT intact" not in
                              (verdict.description or "")), verdict.description


def test_a_naming_day_retention_dropped_stays_materialized_when_another_day_of_the_ranged_run_fails(
        conn, schema, archive_env):
    """Scenario: a legacy one-table-per-day table in naming mode (``ev_%Y%m%d``) with retention ``{keep_days: 30,
    action: drop}``. 2024-03-10..11 are archived by one ranged run; Remove_<schema>_ev lets 2024-03-10 go (proven,
    then its table dropped: the archive is the day's only copy). A late row lands in ev_20240311 (a changed day:
    the next run fails it, overwrite needed) and ev_20240312 appears. The operator backfills 2024-03-10..12.

    Now: README (ranged runs): "A day retention removed is logged as nothing to do ..., neither failed nor redone,
    and recorded again as materialized with state `removed` ..., so its partition stays materialized even when
    another day of the run fails". 7d5a10e's record_removed records only a DayRemovedError: a naming day whose
    table retention dropped ends as NO_PERIOD_TABLE, is logged "no table for 2024-03-10 ... check the table's name
    in the YAML configuration ... whether the table was renamed or dropped" and not recorded, so Dagster marks it
    FAILED beside the one day that needs an overwrite: the partition bar shows a proven, archived day red, as the
    fix set out to end (hunt13_sg's test named this case too).

    Should: 2024-03-10 MATERIALIZED (recorded with state removed, its archive's metadata repeated), 2024-03-11
    FAILED, 2024-03-12 MATERIALIZED.
    Fix idea: in record_removed, also record a NO_PERIOD_TABLE day whose removal is on record (its source_removed
    materialization / the manifest's removal mark), as for DayRemovedError; a day never archived stays unrecorded."""
    from dagster import AssetPartitionStatus, instance_for_test

    from archive_pipeline.core.config import parse_config
    from archive_pipeline.definitions import build_definitions
    from archive_pipeline.defs.assets import asset_key, daily_partitions, job_name
    from archive_pipeline.defs.retention_assets import removal_job_name

    days = [DAY + dt.timedelta(days=i) for i in range(3)]
    for d in days[:2]:
        conn.execute(f'CREATE TABLE "{schema}".ev_{d:%Y%m%d} (id int, v text)')
        conn.execute(f'INSERT INTO "{schema}".ev_{d:%Y%m%d} VALUES (1, \'a\'), (2, \'b\')')
    config = parse_config({"retry": {"max_retries": 0}, "backfill": {"max_days_per_run": 10}, "tables": [{
        "name": f"{schema}.ev", "start_date": DAY.isoformat(), "partitioning": {"mode": "naming", "pattern": "ev_%Y%m%d"},
        "retention": {"keep_days": 30, "action": "drop"}}]})
    spec = config.tables[0]
    defs = build_definitions(config)
    job = defs.resolve_job_def(job_name(spec))
    with instance_for_test() as instance:
        assert job.execute_in_process(instance=instance, tags={
            "dagster/asset_partition_range_start": days[0].isoformat(),
            "dagster/asset_partition_range_end": days[1].isoformat()}).success
        assert defs.resolve_job_def(removal_job_name(spec)).execute_in_process(
            instance=instance, partition_key=days[0].isoformat()).success
        conn.execute(f'INSERT INTO "{schema}".ev_{days[1]:%Y%m%d} VALUES (3, \'late\')')
        conn.execute(f'CREATE TABLE "{schema}".ev_{days[2]:%Y%m%d} (id int, v text)')
        conn.execute(f'INSERT INTO "{schema}".ev_{days[2]:%Y%m%d} VALUES (1, \'a\')')
        result = job.execute_in_process(instance=instance, raise_on_error=False, tags={
            "dagster/asset_partition_range_start": days[0].isoformat(),
            "dagster/asset_partition_range_end": days[2].isoformat()})
        assert not result.success  # (the changed day fails, as it should)
        status = {day: found.value if found else None for day, found in instance.get_status_by_partition(
            asset_key(spec), [d.isoformat() for d in days], daily_partitions(spec)).items()}
    assert status == {days[0].isoformat(): AssetPartitionStatus.MATERIALIZED.value,
                      days[1].isoformat(): AssetPartitionStatus.FAILED.value,
                      days[2].isoformat(): AssetPartitionStatus.MATERIALIZED.value}, status



def test_the_sensor_requests_again_a_wiped_day_whose_failed_sensor_run_was_retried_successfully(
        pg, conn, schema, archive_env):
    """Scenario: the archive_new_days sensor requests yesterday of a column-mode table; that run fails (here another
    session holds the day's lock; in life a dropped connection with retries off, an S3 outage), and Dagster's run
    retries (``run_retries`` in dagster.yaml) or the operator (Runs -> Re-execute) run it again: the new run copies
    the parent's tags, ``dagster/run_key`` and ``dagster/sensor_name`` included, and SUCCEEDS; the day is
    materialized. Later the operator wipes the asset's materializations to have automation archive the days again
    (the case 2dbec78 fixed).

    Now: sensors._current_keys drops a day for good when ANY run of this sensor under its key did not succeed, and
    the failed first attempt is still there beside its successful retry: the tick requests nothing and says the
    day already has "a run (failed, queued or running) under their run key", though the day's sensor run group
    succeeded; the wiped day stays missing for ever (only days whose first attempt succeeded are re-requested).

    Should: as for a sensor run that succeeded at once: the day is requested again (under a key naming the
    successful run, ``<key>@<run id>``).
    Fix idea: in _current_keys, judge a key by its newest run of this sensor (or by whether any of them
    succeeded), not by any failed attempt among them."""
    from dagster import build_sensor_context, instance_for_test

    from archive_pipeline.core.config import parse_config
    from archive_pipeline.core.locks import lock_key
    from archive_pipeline.definitions import build_definitions
    from archive_pipeline.defs.assets import asset_key, job_name
    from archive_pipeline.defs.resources import PostgresResource

    today = dt.datetime.now(dt.UTC).date()
    yesterday = today - dt.timedelta(days=1)
    conn.execute(f"CREATE TABLE {schema}.ev (id int, at timestamptz)")
    conn.execute(f"INSERT INTO {schema}.ev VALUES (1, %s), (2, %s)",
                 (dt.datetime.combine(yesterday, dt.time(1), dt.UTC), dt.datetime.combine(yesterday, dt.time(2), dt.UTC)))
    config = parse_config({"retry": {"max_retries": 0}, "sensor": {"lookback_days": 2}, "tables": [{
        "name": f"{schema}.ev", "day_column": "at", "start_date": (today - dt.timedelta(days=3)).isoformat()}]})
    spec = config.tables[0]
    defs = build_definitions(config)
    repo = defs.get_repository_def()
    sensor = repo.get_sensor_def("archive_new_days")
    job = defs.resolve_job_def(job_name(spec))
    with instance_for_test() as instance:
        def tick():
            return sensor.evaluate_tick(build_sensor_context(
                instance=instance, resources={"postgres": PostgresResource(dsn=pg.dsn)}, repository_def=repo))

        [request] = tick().run_requests
        tags = {**request.tags, "dagster/run_key": request.run_key, "dagster/sensor_name": "archive_new_days"}
        with pg.connect() as other:
            assert other.execute("SELECT pg_try_advisory_lock(%s)", lock_key(spec.name, yesterday)).fetchone()[0]
            first = job.execute_in_process(instance=instance, partition_key=request.partition_key, tags=tags,
                                           raise_on_error=False)
        assert not first.success
        retried = job.execute_in_process(instance=instance, partition_key=request.partition_key, tags={
            **tags, "dagster/parent_run_id": first.run_id, "dagster/root_run_id": first.run_id})
        assert retried.success
        assert yesterday.isoformat() in instance.get_materialized_partitions(asset_key(spec))
        instance.wipe_assets([asset_key(spec)])  # the UI's Wipe materializations
        again = tick()
        said = again.skip_message or ""
        assert [r.partition_key for r in again.run_requests or []] == [yesterday.isoformat()], said
