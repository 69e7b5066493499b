"""Hunt E: what an operator sees in Dagster is not the truth, or one bad day harms others."""

from __future__ import annotations

import datetime as dt

from dagster import AssetCheckKey, DagsterEventType, instance_for_test
from psycopg import sql

from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.assets import asset_key, daily_partitions
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.helpers import run_check_evaluations

FIRST = dt.date(2024, 3, 10)
DAYS = [FIRST + dt.timedelta(days=i) for i in range(3)]
RANGE = {"dagster/asset_partition_range_start": DAYS[0].isoformat(),
         "dagster/asset_partition_range_end": DAYS[-1].isoformat()}


def _config(schema: str, table: str = "events", **settings):
    return parse_config({"retry": {"max_retries": 1, "delay_seconds": 0}, "backfill": {"max_days_per_run": 10},
                         "tables": [{"name": f"{schema}.{table}", "day_column": "created_at",
                                     "start_date": FIRST.isoformat(), **settings}]})


def _materializations(instance, run_id: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records:
        e = r.event_log_entry.dagster_event
        out.setdefault(e.partition, []).append(
            {k: v.value for k, v in e.step_materialization_data.materialization.metadata.items()})
    return out


def _status(instance, spec) -> dict[str, str | None]:
    found = instance.get_status_by_partition(asset_key(spec), [d.isoformat() for d in DAYS], daily_partitions(spec))
    return {day: status.value if status else None for day, status in found.items()}


def _checks(instance, spec) -> list[tuple[str, str]]:
    history = instance.event_log_storage.get_asset_check_execution_history(
        AssetCheckKey(asset_key(spec), "archive_intact"), limit=50)
    return sorted((c.partition, c.status.value) for c in history)


def _failure_text(result) -> str:
    failures = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    return failures[-1].step_failure_data.user_failure_data.description


def _latest_verdict(instance, spec, day: str):
    history = instance.event_log_storage.get_asset_check_execution_history(
        AssetCheckKey(asset_key(spec), "archive_intact"), limit=50)
    [latest] = [h for h in history if h.partition == day][:1]
    return latest


def test_verify_archives_does_not_turn_a_failed_content_proof_green(conn, schema, archive_env, s3_client):
    """A deep_check table's day whose archive failed its content proof (the rows in the bucket are not the
    source's: a blocking archive_intact failure, the run failed) is shown green again by the weekly
    verify_archives: latest_archive_intact re-checks only object, size and manifest (no content proof) and
    records that as the day's archive_intact, whose description promises "its content equals the source's"."""
    from archive_pipeline_tests.helpers import download, forge_object

    day = DAYS[0].isoformat()
    create_sample_events(conn, DAYS[:1], rows_per_day=5, schema=schema)
    config = _config(schema, deep_check=True, compression="none")
    spec = config.tables[0]
    defs = build_definitions(config)
    job = defs.resolve_job_def(f"Archive_{schema}_events")
    with instance_for_test() as instance:
        assert job.execute_in_process(instance=instance, partition_key=day).success
        [meta] = next(iter(_materializations(instance, instance.get_runs()[0].run_id).values()))
        body = download(s3_client, archive_env, meta["object_key"])
        first = body.split(b"\n")[0]
        # a consistent forgery: object and manifest digests agree, only the rows differ from the source's
        forge_object(s3_client, archive_env, meta["object_key"], meta["manifest_key"],
                     body.replace(first, first.replace(b'"user_id":', b'"user_id":1'), 1))
        again = job.execute_in_process(instance=instance, partition_key=day, raise_on_error=False)
        assert not again.success  # the blocking content proof found the archive is not the source's rows
        proof = _latest_verdict(instance, spec, day)
        assert proof.status.value == "FAILED" and "NOT intact" in proof.evaluation.description

        assert defs.resolve_job_def("verify_archives").execute_in_process(instance=instance).success
        after = _latest_verdict(instance, spec, day)
        # the bucket still holds rows that are not the source's: the day must not show as intact
        assert after.status.value == "FAILED", after.evaluation.description


def test_a_locked_days_partition_does_not_hold_back_the_tables_other_new_days(pg, conn, schema, archive_env):
    """Column mode on a partitioned table: the sensor probes each day of its lookback for rows. While one
    day's partition is locked (a VACUUM FULL or ALTER on an old partition), that probe gives up after
    lock_timeout and the whole table is dropped from the tick: yesterday's new day, in a partition nobody
    locks, is not requested either, tick after tick, for as long as the lock is held."""
    from dagster import build_sensor_context

    from archive_pipeline.defs.resources import PostgresResource
    from archive_pipeline_tests.conftest import utc_today

    today = utc_today()
    days = [today - dt.timedelta(days=n) for n in (3, 2, 1)]
    create_sample_events(conn, days, rows_per_day=5, schema=schema)
    config = parse_config({"source": {"lock_timeout_ms": 300},
                           "tables": [{"name": f"{schema}.events", "day_column": "created_at",
                                       "start_date": (today - dt.timedelta(days=30)).isoformat()}]})
    defs = build_definitions(config)
    repo = defs.get_repository_def()
    sensor = repo.get_sensor_def("archive_new_days")
    resources = {"postgres": PostgresResource(dsn=pg.dsn, lock_timeout_ms=300)}
    with instance_for_test() as instance, pg.connect() as other:
        other.autocommit = False
        other.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
            sql.Identifier(schema, f"events_{days[0]:%Y%m%d}")))
        try:
            result = sensor.evaluate_tick(build_sensor_context(instance=instance, resources=resources,
                                                               repository_def=repo))
            requested = sorted(r.partition_key for r in result.run_requests)
        except Exception as exc:  # noqa: BLE001 - a failed tick: nothing requested
            requested = f"tick failed: {exc}"
        finally:
            other.rollback()
        # the two days nobody locks are requested; the locked one is reported (and requested on a later tick)
        assert requested == [days[1].isoformat(), days[2].isoformat()], requested


def test_a_step_retry_does_not_turn_a_failed_blocking_proof_into_a_successful_run(pg, conn, schema, archive_env,
                                                                                  s3_client):
    """A ranged run of a deep_check table: the first day's content proof fails (blocking: "a difference fails
    the run"), the second day fails transiently (its table-day lock held by another session). The step fails
    with the retryable batch failure, so Dagster retries it and never raises the blocking check's failure; the
    retry skips the unproven day as done, archives the other, and the run ends SUCCESS."""
    import threading

    from dagster import EventRecordsFilter

    from archive_pipeline.core.locks import lock_key
    from archive_pipeline_tests.helpers import download, forge_object

    days = DAYS[:2]
    create_sample_events(conn, days, rows_per_day=5, schema=schema)
    config = parse_config({"retry": {"max_retries": 1, "delay_seconds": 1}, "backfill": {"max_days_per_run": 10},
                           "tables": [{"name": f"{schema}.events", "day_column": "created_at", "deep_check": True,
                                       "compression": "none", "start_date": FIRST.isoformat()}]})
    spec = config.tables[0]
    job = build_definitions(config).resolve_job_def(f"Archive_{schema}_events")
    tags = {"dagster/asset_partition_range_start": days[0].isoformat(),
            "dagster/asset_partition_range_end": days[1].isoformat()}
    with instance_for_test() as instance, pg.connect() as other:
        first = job.execute_in_process(instance=instance, tags=tags)
        assert first.success
        meta = _materializations(instance, first.run_id)[days[0].isoformat()][0]
        body = download(s3_client, archive_env, meta["object_key"])
        line = body.split(b"\n")[0]
        forge_object(s3_client, archive_env, meta["object_key"], meta["manifest_key"],
                     body.replace(line, line.replace(b'"user_id":', b'"user_id":1'), 1))

        assert other.execute("SELECT pg_try_advisory_lock(%s)",
                             lock_key(spec.name, days[1])).fetchone()[0]
        done = threading.Event()

        def release_on_retry() -> None:  # the lock is let go once the step is up for retry
            while not done.is_set():
                if instance.get_event_records(EventRecordsFilter(event_type=DagsterEventType.STEP_UP_FOR_RETRY)):
                    other.execute("SELECT pg_advisory_unlock_all()")
                    return
                done.wait(0.05)

        watcher = threading.Thread(target=release_on_retry)
        watcher.start()
        try:
            again = job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)
        finally:
            done.set()
            watcher.join()
        proofs = [c for c in _checks(instance, spec) if c[0] == days[0].isoformat()]
        assert ("2024-03-10", "FAILED") in proofs  # the content proof of the first day did fail, blocking
        assert not again.success, "a run whose blocking integrity check failed ended as a success"


def test_source_unchanged_never_compared_is_not_shown_passed(conn, schema, archive_env):
    """A run that archives with every check of the asset (``materialize`` with the checks, the UI's pure asset
    backfill) does not compare the source. When no comparison was ever recorded, source_unchanged is reported
    *passed* (green) "no comparison recorded yet", here while an archived day has in fact changed in
    PostgreSQL. The failed-run path says the same situation as a warning (on_demand_as_they_were), not a pass."""
    from dagster import AssetKey, materialize

    day, other = DAYS[0], DAYS[1]
    create_sample_events(conn, [day, other], rows_per_day=10, schema=schema)
    defs = build_definitions(_config(schema))
    [archive] = defs.assets
    key = AssetCheckKey(AssetKey(["archive", schema, "events"]), "source_unchanged")
    with instance_for_test() as instance:
        assert defs.resolve_job_def(f"Archive_{schema}_events").execute_in_process(
            partition_key=day.isoformat(), instance=instance).success
        conn.execute(sql.SQL("UPDATE {}.events SET event_type = 'edited' WHERE id = 3 AND created_at < %s").format(
            sql.Identifier(schema)), (other,))  # the archived day changes in the source
        run = materialize([archive, *defs.asset_checks], partition_key=other.isoformat(), instance=instance,
                          resources=defs.resources)
        assert run.success
        [latest] = instance.event_log_storage.get_asset_check_execution_history(key, limit=1)
        evaluation = latest.event.dagster_event.asset_check_evaluation_data
        assert "not compared" in evaluation.description
        # nothing was compared: not a green "unchanged" (a warning, as a failed run says it)
        assert not evaluation.passed, f"{latest.status.value}: {evaluation.description}"


def test_an_empty_days_metadata_and_check_name_what_is_in_the_bucket(conn, schema, archive_env, s3_client):
    """A day without rows is recorded by its manifest alone. Its materialization's ``dagster/uri`` is the
    empty string, and its archive_intact result's ``archive`` names ``s3://.../<day>.jsonl.zst``, an object
    that does not exist (and never will): an operator following it finds nothing."""
    day = DAYS[0].isoformat()
    create_sample_events(conn, DAYS[:1], rows_per_day=0, schema=schema)
    config = _config(schema)
    spec = config.tables[0]
    with instance_for_test() as instance:
        run = build_definitions(config).resolve_job_def(f"Archive_{schema}_events").execute_in_process(
            instance=instance, partition_key=day)
        [meta] = _materializations(instance, run.run_id)[day]
        assert meta["state"] == "empty"
        stored = {f"s3://{archive_env}/{o['Key']}" for o in s3_client.list_objects_v2(Bucket=archive_env)["Contents"]}
        [check] = instance.event_log_storage.get_asset_check_execution_history(
            AssetCheckKey(asset_key(spec), "archive_intact"), limit=1)
        assert check.evaluation.metadata["archive"].value in stored, (check.evaluation.metadata["archive"].value,
                                                                      stored)
        assert meta["dagster/uri"] in stored, repr(meta["dagster/uri"])


def test_a_rearchived_days_check_names_the_object_it_checked(conn, schema, archive_env, s3_client):
    """A day archived again with ``overwrite`` is written as a new generation (``<day>.g2.jsonl.zst``) and the
    first one is retired. The quick check the run records (written_verdict) names the day's first key as its
    ``archive``, an object deleted by that very run, not the one it checked (the materialization's object_key)."""
    day = DAYS[0].isoformat()
    create_sample_events(conn, DAYS[:1], rows_per_day=5, schema=schema)
    config = _config(schema)
    spec = config.tables[0]
    job = build_definitions(config).resolve_job_def(f"Archive_{schema}_events")
    with instance_for_test() as instance:
        assert job.execute_in_process(instance=instance, partition_key=day).success
        conn.execute(sql.SQL("UPDATE {}.events SET event_type = 'edited' WHERE id = 3").format(sql.Identifier(schema)))
        again = job.execute_in_process(instance=instance, partition_key=day, run_config={
            "ops": {f"archive__{schema}__events": {"config": {"overwrite": True}}}})
        [meta] = _materializations(instance, again.run_id)[day]
        assert ".g2." in meta["object_key"]
        stored = {f"s3://{archive_env}/{o['Key']}" for o in s3_client.list_objects_v2(Bucket=archive_env)["Contents"]}
        [check] = instance.event_log_storage.get_asset_check_execution_history(
            AssetCheckKey(asset_key(spec), "archive_intact"), limit=1)
        assert check.run_id == again.run_id
        assert check.evaluation.metadata["archive"].value == f"s3://{archive_env}/{meta['object_key']}", (
            check.evaluation.metadata["archive"].value, stored)


def test_a_stray_day_table_of_one_naming_table_does_not_stop_every_tables_sensor_tick(pg, conn, schema,
                                                                                       archive_env):
    """Naming mode reads days from table names (events_%Y%m%d). A table whose name parses as a real date the
    period maths cannot hold (``legacy_99991231``, a far-future catch-all) raises OverflowError out of
    naming_days; the sensor catches only ArchiveError and psycopg.Error per table, so the whole tick fails and
    no table's new days are requested, the other table's yesterday included."""
    from dagster import build_sensor_context

    from archive_pipeline.defs.resources import PostgresResource
    from archive_pipeline_tests.conftest import utc_today

    today = utc_today()
    yesterday = today - dt.timedelta(days=1)
    create_sample_events(conn, [yesterday], rows_per_day=5, schema=schema)
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.legacy (id int, at timestamptz)").format(s))
    for name in (f"legacy_{yesterday:%Y%m%d}", "legacy_99991231"):
        conn.execute(sql.SQL("CREATE TABLE {}.{} () INHERITS ({}.legacy)").format(s, sql.Identifier(name), s))
    start = (today - dt.timedelta(days=10)).isoformat()
    config = parse_config({"tables": [
        {"name": f"{schema}.legacy", "day_column": "at", "start_date": start,
         "partitioning": {"mode": "naming", "pattern": "legacy_%Y%m%d"}},
        {"name": f"{schema}.events", "day_column": "created_at", "start_date": start}]})
    defs = build_definitions(config)
    repo = defs.get_repository_def()
    sensor = repo.get_sensor_def("archive_new_days")
    with instance_for_test() as instance:
        try:
            result = sensor.evaluate_tick(build_sensor_context(
                instance=instance, resources={"postgres": PostgresResource(dsn=pg.dsn)}, repository_def=repo))
            requested = sorted((r.job_name, r.partition_key) for r in result.run_requests)
        except Exception as exc:  # noqa: BLE001 - a failed tick: nothing requested
            requested = f"tick failed: {type(exc).__name__}: {exc}"
        assert not isinstance(requested, str), requested
        assert (f"Archive_{schema}_events", yesterday.isoformat()) in requested, requested


def test_one_tables_backlog_does_not_hold_back_another_tables_new_day(pg, conn, schema, archive_env):
    """A table added with its history (a declarative table: every partition since start_date is a day to
    archive) fills sensor.max_runs_per_tick, oldest day first, tick after tick; the other tables' new day
    (yesterday) is requested only once that backlog is drained: with 3 years of history and the default cap
    of 50, some 22 ticks later, its freshness deadline long missed."""
    from dagster import build_sensor_context

    from archive_pipeline.defs.resources import PostgresResource
    from archive_pipeline_tests.conftest import utc_today
    from archive_pipeline_tests.helpers import range_partitioned_events

    today = utc_today()
    yesterday = today - dt.timedelta(days=1)
    history = [today - dt.timedelta(days=n) for n in range(30, 20, -1)]
    range_partitioned_events(conn, schema, [(f"ev_{d:%Y%m%d}", d.isoformat(), (d + dt.timedelta(days=1)).isoformat())
                                            for d in history])
    create_sample_events(conn, [yesterday], rows_per_day=5, schema=schema)
    start = (today - dt.timedelta(days=40)).isoformat()
    config = parse_config({"sensor": {"max_runs_per_tick": 3}, "tables": [
        {"name": f"{schema}.ev", "day_column": "at", "start_date": start, "partitioning": {"mode": "declarative"}},
        {"name": f"{schema}.events", "day_column": "created_at", "start_date": start}]})
    defs = build_definitions(config)
    repo = defs.get_repository_def()
    sensor = repo.get_sensor_def("archive_new_days")
    with instance_for_test() as instance:
        result = sensor.evaluate_tick(build_sensor_context(
            instance=instance, resources={"postgres": PostgresResource(dsn=pg.dsn)}, repository_def=repo))
        requested = sorted((r.job_name, r.partition_key) for r in result.run_requests)
        assert (f"Archive_{schema}_events", yesterday.isoformat()) in requested, requested


def test_checking_several_days_one_unreachable_day_does_not_leave_the_others_unchecked(conn, schema, archive_env,
                                                                                        s3, monkeypatch):
    """*Execute* on archive_intact for a range of days re-checks each day and records its verdict. When one day's
    object cannot be read (the store refuses that HEAD), the check step fails at that day: the days after it,
    whose archives are intact and reachable, are left planned by a failed run, which Dagster resolves as
    "Execution failed" (red) for each. A ranged archive run lets a failed day fail alone; this does not."""
    from dagster import AssetSelection, materialize

    create_sample_events(conn, DAYS, rows_per_day=5, schema=schema)
    config = _config(schema)
    spec = config.tables[0]
    defs = build_definitions(config)
    with instance_for_test() as instance:
        assert defs.resolve_job_def(f"Archive_{schema}_events").execute_in_process(instance=instance, tags=RANGE).success
        [archive] = defs.assets
        [intact] = [c for c in defs.asset_checks
                    if c.node_def.name == f"{asset_key(spec).to_python_identifier()}_archive_intact"]
        with FaultProxy(s3.endpoint_url) as proxy:
            monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", proxy.url)
            proxy.add(Fault(method="HEAD", path=rf"/{DAYS[1].isoformat()}\.jsonl\.zst$", action="error", status=403,
                            code="AccessDenied"))
            run = materialize([archive, intact], selection=AssetSelection.checks(intact), instance=instance,
                              tags=RANGE, resources=build_definitions(config).resources, raise_on_error=False)
        history = instance.event_log_storage.get_asset_check_execution_history(
            AssetCheckKey(asset_key(spec), "archive_intact"), limit=20)
        this_run = {h.partition: h.status.value for h in history if h.run_id == run.run_id}
        assert this_run[DAYS[0].isoformat()] == "SUCCEEDED"
        # the last day's archive is intact and reachable: checked, not left "planned" by the failed run
        assert this_run[DAYS[2].isoformat()] == "SUCCEEDED", this_run


def test_a_late_row_during_the_content_proof_fails_the_run_with_table_day_and_remedy(conn, schema, archive_env,
                                                                                      s3, monkeypatch):
    """A deep_check table's day is archived from its snapshot; a late row lands while the archive is being
    proven. The archive is an exact copy of the snapshot, but the day's archive_intact is recorded as "NOT
    intact" (the integrity check red) and the run fails with Dagster's bare "1 blocking asset check failed
    with ERROR severity: archive/<schema>/<table>: archive_intact": no day, no cause in the run's failure, and
    not the overwrite run config a changed day's failure gives everywhere else."""
    import threading

    day = DAYS[0]
    create_sample_events(conn, [day], rows_per_day=5, schema=schema)
    config = _config(schema, deep_check=True)
    gate = threading.Event()
    with FaultProxy(s3.endpoint_url) as proxy, instance_for_test() as instance:
        monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", proxy.url)
        # the proof's download waits while a late row of the day arrives
        proxy.add(Fault(method="GET", path=rf"/{day.isoformat()}\.jsonl\.zst$", action="hold", gate=gate, times=1))
        job = build_definitions(config).resolve_job_def(f"Archive_{schema}_events")

        def late_row() -> None:
            try:
                assert proxy.wait_held(1)
                conn.execute(sql.SQL("INSERT INTO {t} SELECT * FROM {t} LIMIT 1").format(
                    t=sql.Identifier(schema, "events")))
            finally:
                gate.set()

        writer = threading.Thread(target=late_row)
        writer.start()
        run = job.execute_in_process(instance=instance, partition_key=day.isoformat(), raise_on_error=False)
        writer.join()
        assert not run.success
        [failure] = [e for e in run.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
        data = failure.step_failure_data
        text = (data.user_failure_data.description if data.user_failure_data else None) or data.error.message
        assert day.isoformat() in text and "overwrite" in text, text


def test_source_unchanged_compares_the_latest_days_not_the_last_backfilled(conn, schema, archive_env):
    """source_unchanged compares "the latest archived days" (run config days). It takes the latest
    *materializations*: after older days are backfilled, those are the history just archived, and the newest
    day, the one late rows land in, is not compared: the check is green while that day changed."""
    newest, older = DAYS[2], DAYS[:2]
    create_sample_events(conn, DAYS, rows_per_day=5, schema=schema)
    defs = build_definitions(_config(schema))
    job = defs.resolve_job_def(f"Archive_{schema}_events")
    with instance_for_test() as instance:
        assert job.execute_in_process(instance=instance, partition_key=newest.isoformat()).success  # the schedule
        conn.execute(sql.SQL("UPDATE {}.events SET event_type = 'late' WHERE created_at >= %s").format(
            sql.Identifier(schema)), (newest,))  # the newest day changes after archiving
        assert job.execute_in_process(instance=instance, tags={  # then a backfill of older history
            "dagster/asset_partition_range_start": older[0].isoformat(),
            "dagster/asset_partition_range_end": older[-1].isoformat()}).success
        verify = defs.resolve_job_def("verify_archives").execute_in_process(
            instance=instance, raise_on_error=False, run_config={"ops": {
                f"archive__{schema}__events_source_unchanged": {"config": {"days": 2}}}})
        [evaluation] = [e for e in run_check_evaluations(instance, verify.run_id) if e.check_name == "source_unchanged"]
        compared = evaluation.metadata["checked_days"].value
        assert newest.isoformat() in compared and not evaluation.passed, (compared, evaluation.description)


def test_two_long_table_names_do_not_share_one_asset_tag():
    """The asset tag archive/table (a filter in the UI's asset catalog) holds at most 63 characters: an ASCII
    name is cut there, so two tables whose names differ only after character 63 (a 17-character schema and
    tables of 50) get the same tag, and filtering by one lists both. A non-ASCII name gets a digest for exactly
    this reason ("one filter for two tables"); a long ASCII one does not."""
    first = "reporting_archive.clickstream_events_by_customer_segment_and_region_eu"
    second = "reporting_archive.clickstream_events_by_customer_segment_and_region_us"
    config = parse_config({"tables": [{"name": name, "day_column": "at", "start_date": "2024-01-01"}
                                      for name in (first, second)]})
    defs = build_definitions(config, resources={"postgres": None, "archive_store": None}, check_source=False)
    tags = {spec.name: defs.resolve_assets_def(asset_key(spec)).tags_by_key[asset_key(spec)]["archive/table"]
            for spec in config.tables}
    assert tags[first] != tags[second], tags


def test_changing_a_tables_timezone_is_not_reported_as_rows_changed_in_the_source(conn, schema, archive_env):
    """The README: changing a table's timezone later "gives it new partitions and new keys: the archives
    written before stay where they are". For a daily table with the default template the keys and partition
    keys stay the same: the UTC archive of 2024-03-11 now stands for the Berlin day 2024-03-11 (the sensor sees
    it materialized), source_unchanged says its rows "changed in PostgreSQL after archiving", and a run of the
    day fails as "The source changed after it was archived", offering overwrite, while no row changed."""
    day = DAYS[1].isoformat()
    create_sample_events(conn, DAYS, rows_per_day=5, schema=schema)
    with instance_for_test() as instance:
        assert build_definitions(_config(schema)).resolve_job_def(f"Archive_{schema}_events").execute_in_process(
            instance=instance, partition_key=day).success
        berlin = build_definitions(_config(schema, timezone="Europe/Berlin"))
        run = berlin.resolve_job_def(f"Archive_{schema}_events").execute_in_process(
            instance=instance, partition_key=day, raise_on_error=False)
        text = "" if run.success else _failure_text(run)
        # whatever it does with the day, it must not say that the source's rows changed: the zone did
        assert "source changed after it was archived" not in text and "changed since it was archived" not in text, text
