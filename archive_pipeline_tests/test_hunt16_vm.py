"""Hunt 16 (vm): regressions and holes in the fixes just merged into the Dagster operations side: the sensor
recording days archived outside Dagster (defs/outside.py), the daily schedule leaving out days in flight, the
retention schedule and a removed day's record."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from dagster import DagsterRun, DagsterRunStatus, build_sensor_context, instance_for_test

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs import outside
from archive_pipeline.defs.assets import job_name
from archive_pipeline.defs.resources import PostgresResource

YESTERDAY = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).date()


def _table(conn, schema, name: str = "t") -> None:
    conn.execute(f'CREATE TABLE "{schema}".{name} (id int, at timestamptz)')
    conn.execute(f'INSERT INTO "{schema}".{name} VALUES (1, %s), (2, %s)',
                 (dt.datetime.combine(YESTERDAY, dt.time(5), dt.UTC),
                  dt.datetime.combine(YESTERDAY, dt.time(12), dt.UTC)))


def _config(schema, name: str = "t", **extra):
    return parse_config({"retry": {"max_retries": 0}, "tables": [
        {"name": f"{schema}.{name}", "day_column": "at",
         "start_date": (YESTERDAY - dt.timedelta(days=2)).isoformat(), **extra}]})


def _sensor_run_failed(instance, spec, day: str) -> None:
    """The sensor's run of ``day`` failed, as the daemon leaves it: a FAILURE run under the day's run key."""
    instance.add_run(DagsterRun(job_name=job_name(spec), run_id=str(uuid.uuid4()), status=DagsterRunStatus.FAILURE,
                                tags={"archive/table": spec.name, "dagster/partition": day,
                                      "dagster/run_key": f"{job_name(spec)}:{day}",
                                      "dagster/sensor_name": "archive_new_days"}))


def _tick(defs, instance, pg):
    repo = defs.get_repository_def()
    sensor = repo.get_sensor_def("archive_new_days")
    return sensor.evaluate_tick(build_sensor_context(
        instance=instance, resources={"postgres": PostgresResource(dsn=pg.dsn)}, repository_def=repo))


def _recorded(result) -> list[str]:
    return [event.partition for event in (result.asset_events or [])]


@pytest.fixture
def metadata_fixed(monkeypatch):
    """outside._record calls assets._manifest_metadata with three arguments, and the merge of 235fdd5 made it take
    four (archive_store): every recording fails (see the first test). This binds the fourth, as the obvious fix
    does, so the tests below look at what the sensor records once it records at all."""
    from types import SimpleNamespace

    from archive_pipeline.defs import assets

    real = assets._manifest_metadata

    def shim(manifest, store, day_key, archive_store=None):
        return real(manifest, store, day_key, archive_store or SimpleNamespace(
            s3=SimpleNamespace(endpoint_url="http://store.invalid"), bucket=store.bucket))

    monkeypatch.setattr(outside, "_manifest_metadata", shim, raising=False)


def test_the_sensor_records_a_day_the_command_line_archived_after_its_run_failed(pg, conn, schema, archive_env,
                                                                                 store, temp_dir):
    """Scenario: the sensor's run of yesterday failed; the operator follows the tick's remedy (`archive-pipeline
    archive --table <t> --day <day>`, here the same core call) and the day is archived, intact, from this database.

    Now: 1019cf4 (defs/outside.py) records such a day from its manifest, but it calls
    ``assets._manifest_metadata(manifest, store, day_key)`` while 235fdd5 (merged beside it) made that function take
    a fourth argument, ``archive_store``. Every recording raises TypeError, which ``_recorded_outside``'s broad
    ``except Exception`` turns into the warning "could not look in the store for days archived outside Dagster ...
    (TypeError: _manifest_metadata() missing 1 required positional argument: 'archive_store'); they stay listed":
    nothing is ever recorded, every tick lists the day as failed with the command already followed (what README's
    "is recorded by the next tick from its manifest" promises does not happen; test_hunt16_vi's remedy test fails
    on this too). A bug of ours is worded as the store not answering.

    Should: the tick records yesterday materialized (state ``archived``) and no longer lists it.
    Fix idea: pass the resource (store_of can return it beside the store) to _manifest_metadata; and catch only
    store errors (ArchiveError, botocore's) there, so a TypeError fails loudly in tests instead of a warning."""
    _table(conn, schema)
    config = _config(schema)
    spec = config.tables[0]
    archive_partition(conn, spec, YESTERDAY, store, temp_dir=temp_dir)
    defs = build_definitions(config)
    with instance_for_test() as instance:
        _sensor_run_failed(instance, spec, YESTERDAY.isoformat())
        result = _tick(defs, instance, pg)
    assert _recorded(result) == [YESTERDAY.isoformat()], result.skip_message


def _sensor_run(defs, instance, spec, day: str):
    """The sensor's run of ``day``, executed (as the daemon launches it: run key and sensor tags)."""
    return defs.resolve_job_def(job_name(spec)).execute_in_process(
        instance=instance, partition_key=day, raise_on_error=False,
        tags={"archive/table": spec.name, "dagster/run_key": f"{job_name(spec)}:{day}",
              "dagster/sensor_name": "archive_new_days"})


def test_the_sensor_does_not_record_a_changed_day_whose_run_refused_it(metadata_fixed, pg, conn, schema,
                                                                       archive_env, store, temp_dir):
    """Scenario: yesterday was archived by the command line (a cron beside Dagster, or before Dagster took over);
    a late row lands in it afterwards. The sensor sees yesterday with data and no materialization and requests it;
    that run fails, rightly: the stored archive no longer holds the day's rows ("changed since archived": an
    overwrite is needed). Nobody has run anything since.

    Now (with _manifest_metadata's argument fixed, see the fixture): the next tick finds the day's manifest (this
    table-day, this database, not removed, object as recorded) and records the day materialized ``state: archived``
    "archived outside Dagster (the command line)": the partition turns green and the tick stops listing the failed
    day, for an archive that lacks a row the source holds, made *before* the run that refused it. The failure that
    said "overwrite needed" is buried under a green record; retention may later be asked to remove the day.

    Should: only an archive written after the day's failed run (its manifest's archived_at / generation newer than
    that run's start) is taken for the remedy followed; this day stays listed as failed (not recorded).
    Fix idea: archived_outside gets each tried day's failed run (its start time, from _current_keys' lookup) and
    records a manifest only when its archived_at is later; or compare the manifest's row count with a count(*)."""
    _table(conn, schema)
    config = _config(schema)
    spec = config.tables[0]
    archive_partition(conn, spec, YESTERDAY, store, temp_dir=temp_dir)
    conn.execute(f'INSERT INTO "{schema}".t VALUES (3, %s)', (dt.datetime.combine(YESTERDAY, dt.time(20), dt.UTC),))
    defs = build_definitions(config)
    with instance_for_test() as instance:
        run = _sensor_run(defs, instance, spec, YESTERDAY.isoformat())
        assert not run.success and "overwrite" in str(run.all_events), "the run refuses the changed day"
        result = _tick(defs, instance, pg)
    assert _recorded(result) == [], [e.description for e in result.asset_events]


def test_the_sensor_does_not_record_another_zones_period_as_the_day(metadata_fixed, pg, conn, schema, archive_env,
                                                                   store, temp_dir):
    """Scenario: table ``t`` was archived as UTC days by the command line; its configuration then moves to
    ``timezone: Asia/Tokyo`` (the business day is Tokyo's). The key of Tokyo's yesterday is the same as UTC
    yesterday's, so the stored archive at that key is another period's (README: such an archive is refused, naming
    the zone). The sensor's run of Tokyo's yesterday fails on it.

    Now (with _manifest_metadata's argument fixed, see the fixture): the tick checks the manifest's table and day
    string, database, removal and object, never its period (manifest.another_period / layout_change), and records
    Tokyo's yesterday materialized from the UTC day's manifest: a green partition whose archive is the UTC day's
    (its rows from 15:00 UTC on are Tokyo's next day; Tokyo's first nine hours, the UTC day before, are not in it),
    which a real run of the day refuses and archive_intact / restore / removal then trip over.

    Should: a manifest of another period (zone, granularity or day_column changed: layout_change) is not recorded.
    Fix idea: in outside._record, return None where manifest.layout_change(manifest, period, spec.day_column)."""
    _table(conn, schema)
    spec_utc = _config(schema).tables[0]
    archive_partition(conn, spec_utc, YESTERDAY, store, temp_dir=temp_dir)
    config = _config(schema, timezone="Asia/Tokyo")
    spec = config.tables[0]
    defs = build_definitions(config)
    with instance_for_test() as instance:
        _sensor_run_failed(instance, spec, YESTERDAY.isoformat())
        result = _tick(defs, instance, pg)
    assert _recorded(result) == [], [e.description for e in result.asset_events]


def test_a_day_the_schedule_left_to_a_run_in_flight_that_then_failed_is_requested_again(pg, conn, schema,
                                                                                         archive_env):
    """Scenario: a deployment runs the daily schedule only (README: `schedule: {running: true}`; the sensor is
    stopped, its default). At 00:30 UTC on 2024-03-11 the operator launches a backfill that covers 2024-03-10 (a
    ranged run 2024-03-01..2024-03-10); it is still running at 01:00, when the schedule ticks for 2024-03-10. That
    run then fails (the store throttled it, or it was terminated).

    Now (0bbe492): the 01:00 tick leaves 2024-03-10 out ("already being archived by a queued or running run: not
    requested again") and requests nothing; the next ticks request only the day that just ended (2024-03-11, ...).
    Nothing ever requests 2024-03-10 again: the day the schedule exists to archive stays missing for good, silently
    (before 0bbe492 the schedule at least launched its own run of it).

    Should: a day the schedule left to a run in flight is requested by a later tick once that run has failed and the
    day is still not materialized (or the tick still requests it, queued behind the run in flight).
    Fix idea: each tick also looks back a few days (e.g. the days since the last tick it skipped one for a run in
    flight, kept in the tick's cursor or found by the 'not requested again' SkipReason) and requests those that are
    neither materialized nor in flight now."""
    from dagster import build_schedule_context

    from archive_pipeline.local.local_stack import create_sample_events as create

    days = [dt.date(2024, 3, 10), dt.date(2024, 3, 11)]
    create(conn, days, rows_per_day=3, schema=schema)
    config = parse_config({"schedule": {"running": True}, "tables": [
        {"name": f"{schema}.events", "day_column": "created_at", "start_date": "2024-03-01"}]})
    spec = config.tables[0]
    defs = build_definitions(config)
    repo = defs.get_repository_def()
    schedule = repo.get_schedule_def(f"archive_{schema}_events_daily")

    def tick(at: dt.datetime) -> list[str]:
        result = schedule.evaluate_tick(build_schedule_context(instance=instance, scheduled_execution_time=at,
                                                               repository_def=repo))
        return [r.partition_key for r in result.run_requests or []]

    with instance_for_test() as instance:
        backfill = DagsterRun(job_name=job_name(spec), run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTED,
                              tags={"archive/table": spec.name,
                                    "dagster/asset_partition_range_start": "2024-03-01",
                                    "dagster/asset_partition_range_end": "2024-03-10"})
        instance.add_run(backfill)
        assert tick(dt.datetime(2024, 3, 11, 1, tzinfo=dt.UTC)) == []  # left to the backfill's run, as 0bbe492 wants
        instance.delete_run(backfill.run_id)
        instance.add_run(backfill.with_status(DagsterRunStatus.FAILURE))  # that run failed; 2024-03-10 is missing
        later = tick(dt.datetime(2024, 3, 12, 1, tzinfo=dt.UTC)) + tick(dt.datetime(2024, 3, 13, 1, tzinfo=dt.UTC))
    assert "2024-03-10" in later, later


def test_a_tick_does_not_read_every_failed_days_manifest_again_each_time(metadata_fixed, pg, conn, schema,
                                                                         archive_env, store, s3_client, temp_dir,
                                                                         monkeypatch):
    """Scenario: ``events`` (declarative, a partition a day) has 60 days whose sensor runs failed, and the store holds
    for each an archive the tick will not take for the day's (here another day's manifest at its key; equally a
    manifest of another zone's period, another database's, a removed day's, one whose object was deleted: every day
    the tick's checks reject, which is what its fix of the days above turns into rejections too). Nothing changes in
    the store between ticks. (An hourly table whose zone changed has 24 such periods a day.)

    Now: every tick lists the table once, then GETs (and where the manifest is the day's, HEADs, twice when it
    differs) every one of those days again: 60 manifest reads per tick, each tick, for ever (every 5 minutes by
    default), growing with the failed days without bound: a year of an hourly table is ~9,000 GETs per tick, past
    the daemon's tick timeout, and the failed tick then requests no other table's new day.

    Should: the cost per tick is bounded whatever the number of failed days: a day whose manifest was looked at and
    rejected is not read again while the listing shows its manifest unchanged (same ETag / LastModified), or the
    lookups are capped per tick.
    Fix idea: keep the rejected days' manifest ETags (from the listing archived_outside already makes) in the
    sensor's cursor and GET only the days whose manifest is new or changed; cap the rest (e.g. max_runs_per_tick)."""
    from archive_pipeline.core.keys import manifest_key, table_day_key
    from archive_pipeline.local.local_stack import create_sample_events

    days = [YESTERDAY - dt.timedelta(days=i) for i in range(60, 0, -1)]
    create_sample_events(conn, days, rows_per_day=1, schema=schema)
    config = parse_config({"retry": {"max_retries": 0}, "sensor": {"max_runs_per_tick": 10}, "tables": [
        {"name": f"{schema}.events", "day_column": "created_at", "start_date": days[0].isoformat(),
         "partitioning": {"mode": "declarative"}}]})
    spec = config.tables[0]
    archive_partition(conn, spec, days[0], store, temp_dir=temp_dir)
    source = manifest_key(table_day_key(spec, days[0], store.prefix))
    for day in days[1:]:
        s3_client.copy_object(Bucket=store.bucket, Key=manifest_key(table_day_key(spec, day, store.prefix)),
                              CopySource={"Bucket": store.bucket, "Key": source})
    conn.execute(f'TRUNCATE "{schema}".events_{days[0]:%Y%m%d}')  # (the one real archive is not a wanted day)
    reads = []
    real = outside.load_stored_manifest
    monkeypatch.setattr(outside, "load_stored_manifest", lambda *a, **k: reads.append(a[1]) or real(*a, **k))
    defs = build_definitions(config)
    with instance_for_test() as instance:
        for day in days[1:]:
            _sensor_run_failed(instance, spec, day.isoformat())
        first = _tick(defs, instance, pg)
        assert _recorded(first) == [] and not first.run_requests
        reads.clear()
        _tick(defs, instance, pg)
    assert len(reads) <= 20, f"{len(reads)} manifests read again by a tick where nothing changed"


def test_the_sensor_records_a_failed_day_the_command_line_found_archived_under_the_former_format(
        metadata_fixed, pg, conn, schema, archive_env, store, temp_dir):
    """Scenario: table ``t`` was archived as JSONL (the command line, before Dagster took over); its configuration
    then moves to ``format: parquet``. The sensor's run of yesterday fails (a transient error: the store throttled
    it). The operator follows the tick's remedy, `archive-pipeline archive --table t --day <yesterday>`: the command
    finds yesterday archived under the former format, holding the day's rows, and skips it (README: a day archived
    under the table's former format is archived; a run skips it there). Nothing new is written at the parquet key.

    Now: the tick (outside._record) reads only the manifest at the day's key under the current format, finds none,
    and keeps listing yesterday as failed, giving the same command, which the operator has followed and which
    changes nothing: the remedy never clears the day (what 1019cf4 set out to end), the partition stays missing
    for good although a real run of the day would find it archived and record it (state skipped).

    Should: the tick finds the day's archive where runs and the command line find it (its key now, else under the
    table's former formats: lifecycle.archive_key / keys.other_extension_keys) and records it from that manifest.
    Fix idea: in outside._record, look the manifest up at archive_key(store, spec, period, former_keys) as the
    removal asset does (the listing archived_outside makes already covers the other formats' keys)."""
    _table(conn, schema)
    spec_jsonl = _config(schema).tables[0]
    archive_partition(conn, spec_jsonl, YESTERDAY, store, temp_dir=temp_dir)
    config = _config(schema, format="parquet")
    spec = config.tables[0]
    remedy = archive_partition(conn, spec, YESTERDAY, store, temp_dir=temp_dir)  # the command line's remedy
    assert "jsonl" in (remedy.key or remedy.manifest_key), remedy  # skipped: archived under the former format
    defs = build_definitions(config)
    with instance_for_test() as instance:
        _sensor_run_failed(instance, spec, YESTERDAY.isoformat())
        result = _tick(defs, instance, pg)
    assert _recorded(result) == [YESTERDAY.isoformat()], result.skip_message


def test_another_tables_probe_failure_does_not_throw_away_the_days_recorded_from_their_manifests(
        metadata_fixed, pg, conn, schema, archive_env, store, temp_dir):
    """Scenario: two tables, ``t`` and ``u``. ``t``'s sensor run of yesterday failed and the operator archived the
    day with the tick's remedy (the command line). ``u`` cannot be inspected for now (dropped and being recreated by a
    migration; equally a lock_timeout on its catalog, a privilege revoked).

    Now: the tick builds ``t``'s record from its manifest, then, having chosen no run, raises "archive_new_days could
    not inspect u ..." (a failed tick, by design, so ``u`` shows red). A failed tick carries no asset events: ``t``'s
    record is thrown away, and so on every tick while ``u`` stays broken: ``t``'s day stays missing and listed as
    failed with the remedy already followed. One table's problem hides another table's day, which README promises
    never happens ("one table's problem must not hide the others' new days").

    Should: ``t``'s day is recorded whatever ``u``'s problem (the tick still fails for ``u``).
    Fix idea: before raising for the problems, report the records directly
    (context.instance.report_runless_asset_event for each), or return them with the problems logged as an error."""
    from archive_pipeline.defs.assets import asset_key

    _table(conn, schema, "t")
    conn.execute(f'CREATE TABLE "{schema}".u (id int, at timestamptz)')
    config = parse_config({"retry": {"max_retries": 0}, "tables": [
        {"name": f"{schema}.{name}", "day_column": "at", "start_date": (YESTERDAY - dt.timedelta(days=2)).isoformat()}
        for name in ("t", "u")]})
    t = config.tables[0]
    archive_partition(conn, t, YESTERDAY, store, temp_dir=temp_dir)
    defs = build_definitions(config)
    conn.execute(f'DROP TABLE "{schema}".u')
    with instance_for_test() as instance:
        _sensor_run_failed(instance, t, YESTERDAY.isoformat())
        try:
            recorded = _recorded(_tick(defs, instance, pg))
        except Exception as exc:  # noqa: BLE001 - the failed tick for u, as designed
            assert ".u" in str(exc), exc
            recorded = []
        stored = instance.get_materialized_partitions(asset_key(t))
    assert YESTERDAY.isoformat() in recorded or YESTERDAY.isoformat() in stored, (recorded, stored)
