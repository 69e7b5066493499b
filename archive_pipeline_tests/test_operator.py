"""The Dagster side as an operator meets it: loading the location (tags, names, configuration and its
messages), the component, the sensor, the schedule, checks and pools, through Dagster's own APIs."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import yaml
from dagster import (AssetCheckKey, AssetKey, AssetMaterialization, DagsterRun, DagsterRunStatus,
                     build_schedule_context, in_process_executor, instance_for_test, load_from_defs_folder,
                     materialize)
from dagster_aws.s3 import S3Resource
from psycopg import sql

from archive_pipeline.core.config import ConfigError, load_config, parse_config
from archive_pipeline.definitions import build_definitions, check_tables_exist
from archive_pipeline.defs.resources import ArchiveStoreResource, PostgresResource
from archive_pipeline.defs.retention_assets import build_retention_schedule
from archive_pipeline.local.local_stack import create_sample_events, free_port
from archive_pipeline_tests.test_dagster import events_config, job_name
from archive_pipeline_tests.helpers import run_check_evaluations


def _config(*tables: dict, **top) -> object:
    return parse_config({**top, "tables": [{"day_column": "at", "start_date": "2024-01-01", **t} for t in tables]})


def test_a_table_with_retention_and_a_non_ascii_or_spaced_name_loads():
    """The removal asset's tag was the table name with only '"' removed, so a table with a space or an
    accent in its name and retention failed the whole load (Dagster: "Invalid tag value"), although the
    archive asset itself loads. Its run tag is now the whole name, as the archive job's is."""
    names = ["Ventes Été.événements", "public.日本語", "public.a'b"]
    config = _config(*({"name": n, "retention": {"keep_days": 30, "action": "delete"}} for n in names))
    # executor=None: as a component builds it, the host project's executor in charge
    repo = build_definitions(config, resources={}, check_source=False, executor=None).get_repository_def()
    for spec in config.tables:
        archive_key, removal_key = AssetKey(["archive", *spec.asset_path]), AssetKey(["source_removed", *spec.asset_path])
        assert repo.asset_graph.get(removal_key).tags["archive/table"] == repo.asset_graph.get(archive_key).tags[
            "archive/table"]
        label = "_".join(spec.asset_path)
        assert repo.get_job(f"Remove_{label}").tags["archive/table"] == spec.name
        assert repo.get_job(f"Remove_{label}").executor_def is in_process_executor  # as Archive_'s
        assert repo.get_job(f"Archive_{label}").tags["archive/table"] == spec.name


# --- the component, loaded from a defs.yaml as dg loads it ------------------------------------------

def _component_project(root: Path, monkeypatch, attributes: str) -> None:
    """A dg-style project whose defs/archive/defs.yaml has these ``attributes`` (YAML text) as written."""
    from archive_pipeline_tests.test_deploy import _make_project

    _make_project(root, COMPONENT + textwrap.indent(textwrap.dedent(attributes), "  "))
    monkeypatch.syspath_prepend(str(root))


def _error_chain(error: BaseException) -> list[BaseException]:
    chain = []
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


COMPONENT = "type: archive_pipeline.defs.component.ArchiveTablesComponent\nattributes:\n"


def test_a_setting_given_twice_in_the_components_inline_tables_fails_the_load(tmp_path, monkeypatch):
    """In a table list file a setting given twice fails the load (YAML keeps the last value silently);
    written inline in the component's defs.yaml, Dagster's loader kept the last start_date and the
    location loaded with a start nobody reviewed."""
    _component_project(tmp_path, monkeypatch, ("""\
          check_source: false
          tables:
            - name: public.events
              day_column: at
              start_date: 2024-01-01
              start_date: 2023-01-01
        """))
    with pytest.raises(Exception) as raised:
        load_from_defs_folder(path_within_project=tmp_path)
    [error] = [e for e in _error_chain(raised.value) if isinstance(e, ConfigError)]
    assert "defs.yaml" in str(error)
    assert "table 'public.events', setting 'start_date' is given twice (lines 7 and 8)" in str(error)


def test_missing_environment_names_the_components_defs_yaml_not_archive_tables_yaml(tmp_path, monkeypatch):
    """Loading the component without ARCHIVE_PG_DSN said "configured by archive_tables.yaml", a file the
    project does not have; it names the defs.yaml whose attributes hold the tables."""
    for name in ("ARCHIVE_PG_DSN", "ARCHIVE_S3_BUCKET", "ARCHIVE_PIPELINE_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    _component_project(tmp_path, monkeypatch, ("""\
          tables:
            - {name: public.events, day_column: at, start_date: 2024-01-01}
        """))
    with pytest.raises(Exception) as raised:
        load_from_defs_folder(path_within_project=tmp_path)
    [error] = [e for e in _error_chain(raised.value) if isinstance(e, ConfigError)]
    assert "ARCHIVE_PG_DSN" in str(error) and "archive_tables.yaml" not in str(error)
    assert re.search(r"configured by attributes of \S+/defs/archive/defs\.yaml", str(error)), str(error)


# --- loading: the configuration and the load-time table check -----------------------------------------

def test_a_naming_table_in_a_schema_with_a_double_quote_in_its_name_loads(conn, schema, archive_env):
    """The load checked a naming-mode table's schema with to_regnamespace('"<schema>"'): a '"' in the
    schema's name was not doubled, and the server's "invalid name syntax" escaped as a bare psycopg
    InvalidName that failed the load without naming the file or the table."""
    odd = f'{schema}"q'
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(odd)))
    try:
        config = _config({"name": f"{odd}.ev_x", "day_column": None,
                          "partitioning": {"mode": "naming", "pattern": "ev_%Y%m%d"}})
        check_tables_exist(config, os.environ["ARCHIVE_PG_DSN"])  # no error: the schema exists
        missing = _config({"name": f'{schema}"other.ev_x', "day_column": None,
                           "partitioning": {"mode": "naming", "pattern": "ev_%Y%m%d"}})
        with pytest.raises(ConfigError, match=f"table '{schema}\"other.ev_x': schema '{schema}\"other' does not"):
            check_tables_exist(missing, os.environ["ARCHIVE_PG_DSN"])
    finally:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(odd)))


@pytest.mark.parametrize(("table", "setting", "says"), [
    ({"name": "public.ev\x00"}, "name", "contains a NUL character"),
    ({"name": "public.events", "day_column": "at\x00"}, "day_column", "contains a NUL character"),
    ({"name": "public.events", "day_column": ""}, "day_column", "is empty"),
    ({"name": "public.events", "day_column": "c" * 64}, "day_column", "longer than PostgreSQL's 63 bytes"),
])
def test_names_postgresql_cannot_hold_are_refused_at_load_naming_the_table_and_setting(tmp_path, table, setting,
                                                                                     says):
    """A NUL in a name loaded, and then the load's table check failed with psycopg's bare DataError (or,
    without the database, every run did); an empty or over-long day_column loaded and failed later."""
    path = tmp_path / "archive_tables.yaml"
    path.write_text(yaml.safe_dump({"tables": [{"day_column": "at", "start_date": "2024-01-01", **table}]}))
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(path) in str(raised.value)
    assert f"table {table['name']!r}, setting '{setting}': " in str(raised.value)
    assert says in str(raised.value)


@pytest.mark.parametrize("names", [("a__b.c", "a.b__c"), ("x.a__b", "x__a.b")])
def test_two_tables_whose_op_names_coincide_are_refused_by_the_configuration(names):
    """a__b.c and a.b__c have different asset keys and job names, but Dagster names their ops
    archive__a__b__c alike: the location failed to load with Dagster's "op archive__a__b__c_archive_intact
    does not have input ..." instead of a configuration error naming both tables."""
    with pytest.raises(ConfigError) as raised:
        _config(*({"name": n} for n in names))
    assert f"tables {names[0]!r} and {names[1]!r} would share the op name 'archive__" in str(raised.value)
    for name in names:  # each alone loads
        build_definitions(_config({"name": name}), resources={}, check_source=False).get_repository_def()


# --- checks that must not turn green without looking ---------------------------------------------------

def test_an_archive_run_with_every_check_keeps_source_unchanged_red_when_it_last_found_a_change(conn, schema,
                                                                                                archive_env):
    """verify_archives found a day changed in PostgreSQL after archiving (source_unchanged red). A run that
    archives another day with every check of the asset (``materialize`` with the checks, or the UI's pure
    asset backfill) does not compare the source, yet reported source_unchanged as *passed*: the UI's
    latest verdict turned green while the day still differed. The run now carries the last comparison's
    verdict forward, saying it did not compare again."""
    day, other = dt.date(2024, 3, 10), dt.date(2024, 3, 11)
    create_sample_events(conn, [day, other], rows_per_day=10, schema=schema)
    config = events_config(schema, day)
    defs = build_definitions(config)
    [archive] = defs.assets
    key = AssetCheckKey(AssetKey(["archive", schema, "events"]), "source_unchanged")
    with instance_for_test() as instance:
        assert defs.resolve_job_def(job_name(schema)).execute_in_process(partition_key=day.isoformat(),
                                                                         instance=instance).success
        conn.execute(sql.SQL("UPDATE {}.events SET event_type = 'edited' WHERE id = 3 AND created_at < %s").format(
            sql.Identifier(schema)), (other,))
        defs.resolve_job_def("verify_archives").execute_in_process(instance=instance, raise_on_error=False)
        [found] = instance.event_log_storage.get_asset_check_execution_history(key, limit=1)
        assert found.status.value == "FAILED"
        run = materialize([archive, *defs.asset_checks], partition_key=other.isoformat(), instance=instance,
                          resources=defs.resources)
        assert run.success
        [latest] = instance.event_log_storage.get_asset_check_execution_history(key, limit=1)
        assert latest.run_id == run.run_id
        evaluation = latest.event.dagster_event.asset_check_evaluation_data
        assert latest.status.value == "FAILED" and not evaluation.passed
        assert "not compared in a run that archives" in evaluation.description
        assert f"{day}:" in evaluation.description and found.run_id in evaluation.description
        assert evaluation.metadata["changed_days"].value == [day.isoformat()]



def test_source_unchanged_says_a_day_whose_manifest_is_gone_is_not_compared_not_changed(conn, schema, archive_env, s3):
    """A day whose manifest was deleted from the store was reported among the days "changed in PostgreSQL
    after archiving" ("manifest missing"): a person would look for a change in the database that never
    happened. It is not compared, fails the check as an archive that cannot be trusted, and says so."""
    day, other = dt.date(2024, 3, 10), dt.date(2024, 3, 11)
    create_sample_events(conn, [day, other], rows_per_day=10, schema=schema)
    defs = build_definitions(events_config(schema, day))
    key = AssetCheckKey(AssetKey(["archive", schema, "events"]), "source_unchanged")
    with instance_for_test() as instance:
        for d in (day, other):
            assert defs.resolve_job_def(job_name(schema)).execute_in_process(partition_key=d.isoformat(),
                                                                             instance=instance).success
        client = s3.client()
        [gone] = [o["Key"] for o in client.list_objects_v2(Bucket=archive_env)["Contents"]
                  if o["Key"].endswith(f"{day}.jsonl.zst.manifest.json")]
        client.delete_object(Bucket=archive_env, Key=gone)
        defs.resolve_job_def("verify_archives").execute_in_process(instance=instance, raise_on_error=False)
        [found] = instance.event_log_storage.get_asset_check_execution_history(key, limit=1)
    evaluation = found.event.dagster_event.asset_check_evaluation_data
    assert found.status.value == "FAILED" and not evaluation.passed
    assert "changed in PostgreSQL" not in evaluation.description, evaluation.description
    assert f"not compared, {day}: its manifest s3://{archive_env}/{gone} is missing from the store" in \
        evaluation.description
    assert evaluation.metadata["untrusted_days"].value == [day.isoformat()]
    assert evaluation.metadata["checked_days"].value == [other.isoformat()]


def test_the_check_history_is_read_past_its_first_page(conn, schema, archive_env):
    """The last real comparison of source_unchanged was looked for in the latest 50 records only: 50 runs that
    only planned the check (a pure asset backfill's) pushed it out, and a red verdict became "no run has yet".
    The history is read a page at a time: with pages of 2, the same records in the same order as one read."""
    from archive_pipeline.defs.checks import _history

    day = dt.date(2024, 3, 10)
    create_sample_events(conn, [day], rows_per_day=10, schema=schema)
    defs = build_definitions(events_config(schema, day))
    key = AssetCheckKey(AssetKey(["archive", schema, "events"]), "source_unchanged")
    with instance_for_test() as instance:
        assert defs.resolve_job_def(job_name(schema)).execute_in_process(partition_key=day.isoformat(),
                                                                         instance=instance).success
        for _ in range(5):
            defs.resolve_job_def("verify_archives").execute_in_process(instance=instance, raise_on_error=False)
        whole = instance.event_log_storage.get_asset_check_execution_history(key, limit=100)
        paged = list(_history(instance, key, page=2))
    assert len(whole) >= 5 and [r.id for r in paged] == [r.id for r in whole]

# --- the retention schedule ----------------------------------------------------------------------------

def _fake_run(instance, request, status) -> None:
    """A run the daemon launched for ``request`` from the removal schedule, ended with ``status``."""
    instance.add_run(DagsterRun(job_name=request.job_name or "remove", run_id=str(uuid.uuid4()), status=status,
                                tags={**request.tags, "dagster/run_key": request.run_key,
                                      "dagster/partition": request.partition_key}))


def test_the_removal_schedule_is_not_starved_by_days_whose_removal_keeps_failing():
    """The schedule requested the oldest 50 due days that are archived and not removed. A day whose
    removal fails every time (its proof fails: rows changed after archiving) stays "not removed", so 50
    such days took every place of every tick, each re-proven daily, and no newer day was ever removed.
    Days not tried yet now come first; failed ones are requested again behind them; one still queued or
    running is not requested twice."""
    config = _config({"name": "public.events", "start_date": "2024-01-01",
                      "retention": {"keep_days": 30, "action": "delete"}})
    [spec] = config.tables
    schedule = build_retention_schedule(spec, hour=1, max_runs=1)  # one place a tick, as 50 failing days leave
    repo = build_definitions(config, resources={}, check_source=False).get_repository_def()
    archive_key = AssetKey(["archive", *spec.asset_path])
    days = ["2024-01-01", "2024-01-02", "2024-01-03"]
    when = dt.datetime(2024, 3, 1, 1, 30, tzinfo=dt.UTC)
    with instance_for_test() as instance:
        for day in days:
            instance.report_runless_asset_event(AssetMaterialization(asset_key=archive_key, partition=day))

        def tick() -> list:
            return schedule.evaluate_tick(build_schedule_context(instance=instance, scheduled_execution_time=when,
                                                                                 repository_def=repo)
                                          ).run_requests

        [first] = tick()
        assert first.partition_key == days[0]
        _fake_run(instance, first, DagsterRunStatus.FAILURE)
        [second] = tick()
        assert second.partition_key == days[1], "a failed day took the only place again"
        _fake_run(instance, second, DagsterRunStatus.STARTED)
        [third] = tick()
        assert third.partition_key == days[2]
        _fake_run(instance, third, DagsterRunStatus.FAILURE)
        # every due day tried: the failed ones again (oldest first), never the one still running
        assert [r.partition_key for r in tick()] == [days[0]]


@pytest.mark.parametrize(("pattern", "why"), [("ev_%Y%m%d%Q", "'Q' is a bad directive"),
                                              ("ev_%Y%m%d_%d", "redefinition of group name"),
                                              ("ev_%Y%m%d_%-d", "bad directive")])
def test_a_naming_pattern_whose_names_cannot_be_read_back_is_refused_at_load(pattern, why):
    """Naming mode reads each table's name back with the pattern. A pattern with an unknown code loaded,
    and then no day's table was ever found (the sensor's tick: "0 of them with data"); one with a code
    given twice crashed the tick with a bare re.error."""
    with pytest.raises(ConfigError) as raised:
        _config({"name": "public.events", "day_column": None,
                 "partitioning": {"mode": "naming", "pattern": pattern}})
    assert f"table 'public.events', setting 'partitioning': pattern {pattern!r}" in str(raised.value)
    assert "cannot be read back" in str(raised.value) and why in str(raised.value)
    for good, granularity in (("ev_%Y%m%d", "daily"), ("ev_%Y_%m", "monthly"), ("ev_%Y%m%d%H", "hourly"),
                              ("Ev_%d.%m.%Y", "daily")):
        _config({"name": "public.events", "day_column": None, "granularity": granularity,
                 "start_date": "2024-01-01", "partitioning": {"mode": "naming", "pattern": good}})


def test_a_removal_run_that_fails_before_proving_leaves_the_days_archive_proven_check_alone(pg, s3, bucket):
    """The removal job planned the blocking archive_proven check in every run, so a run that failed before
    proving anything (the source database down, the store unreachable, the day not due yet) left the day's
    check "Execution failed", red like a failed proof, as the archive job's check once did. The job now
    runs the asset without its check step and the asset reports the proof for its day when it has one."""
    config = parse_config({"retry": {"max_retries": 0, "delay_seconds": 0},
                           "tables": [{"name": "public.events", "day_column": "at", "start_date": "2024-01-01",
                                       "retention": {"keep_days": 3, "action": "delete"}}]})
    down = f"postgresql://archiver:secret@127.0.0.1:{free_port()}/db"
    resources = {"postgres": PostgresResource(dsn=down, connect_timeout_s=1),
                 "archive_store": ArchiveStoreResource(s3=S3Resource(endpoint_url=s3.endpoint_url,
                                                                     region_name="us-east-1"), bucket=bucket)}
    remove = build_definitions(config, resources=resources, check_source=False).resolve_job_def("Remove_public_events")
    key = AssetCheckKey(AssetKey(["source_removed", "public", "events"]), "archive_proven")
    with instance_for_test() as instance:
        run = remove.execute_in_process(partition_key="2024-01-02", instance=instance, raise_on_error=False)
        [failure] = [e for e in run.all_events if e.event_type_value == "STEP_FAILURE"]
        assert not run.success and "cannot connect to PostgreSQL" in str(failure.step_failure_data.error)
        assert instance.event_log_storage.get_asset_check_execution_history(key, limit=10) == []


def test_archive_proven_is_reported_for_its_day_by_the_job_and_executing_the_check_alone_removes_nothing(
        conn, schema, archive_env):
    """The removal job (no check step) records the day's proof as archive_proven for that day and removes
    the day; the check executed on its own (the UI's *Execute* on archive_proven, now possible since the
    asset can be subset) proves the day and removes nothing."""
    day = dt.date(2024, 3, 10)
    create_sample_events(conn, [day, day + dt.timedelta(days=1)], rows_per_day=10, schema=schema)
    config = events_config(schema, day, retention={"keep_days": 30, "action": "delete"})
    defs = build_definitions(config)
    removal = AssetKey(["source_removed", schema, "events"])
    check = AssetCheckKey(removal, "archive_proven")

    def rows(on: dt.date) -> int:
        return conn.execute(sql.SQL("SELECT count(*) FROM {}.events WHERE created_at >= %s AND created_at < %s").format(
            sql.Identifier(schema)), (on, on + dt.timedelta(days=1))).fetchone()[0]

    with instance_for_test() as instance:
        for archived in (day, day + dt.timedelta(days=1)):
            assert defs.resolve_job_def(job_name(schema)).execute_in_process(
                partition_key=archived.isoformat(), instance=instance).success
        prove_only = defs.resolve_implicit_global_asset_job_def().get_subset(asset_check_selection={check},
                                                                               asset_selection=set())
        alone = prove_only.execute_in_process(partition_key=day.isoformat(), instance=instance)
        assert alone.success and [(e.partition, e.passed) for e in run_check_evaluations(instance, alone.run_id)] == [
            (day.isoformat(), True)]
        assert rows(day) == 10 and alone.get_asset_materialization_events() == []
        removed = defs.resolve_job_def(f"Remove_{schema}_events").execute_in_process(
            partition_key=day.isoformat(), instance=instance)
        assert removed.success and rows(day) == 0 and rows(day + dt.timedelta(days=1)) == 10
        [evaluation] = run_check_evaluations(instance, removed.run_id)
        assert (evaluation.check_name, evaluation.partition, evaluation.passed) == ("archive_proven",
                                                                                     day.isoformat(), True)
        assert sorted((r.partition, r.status.value)
                      for r in instance.event_log_storage.get_asset_check_execution_history(check, limit=10)) == [
            (day.isoformat(), "SUCCEEDED"), (day.isoformat(), "SUCCEEDED")]
        assert instance.get_materialized_partitions(removal) == {day.isoformat()}


def test_a_utf8_table_list_loads_whatever_the_locale(tmp_path):
    """The file was read with the locale's encoding: in a C locale without Python's UTF-8 mode a table
    named 'public.événements' failed the load ("'ascii' codec can't decode"), and in a Latin-1 one
    (or Windows' cp1252) it silently became another name. YAML is UTF-8 (or UTF-16 with a BOM)."""
    path = tmp_path / "archive_tables.yaml"
    path.write_bytes("tables:\n  - {name: public.événements, day_column: at, start_date: 2024-01-01}\n".encode())
    script = ("import sys; from archive_pipeline.core.config import load_config; "
              "sys.stdout.buffer.write(load_config(sys.argv[1]).tables[0].name.encode())")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"}
    out = subprocess.run([sys.executable, "-X", "utf8=0", "-c", script, str(path)], env=env, capture_output=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    assert out.stdout.decode() == "public.événements"


def test_a_removal_run_whose_database_refuses_the_login_is_not_retried(pg, s3, bucket):
    """The removal asset let a connect failure escape as a bare SourceError, which Dagster's retry policy
    retries whatever it is: a database that does not exist (or a wrong password) was retried with
    backoff (30, 60, 120 s by default) before failing. Like the archive asset, it now fails at once when
    a retry cannot help, with the message naming the table and day."""
    config = parse_config({"retry": {"max_retries": 2, "delay_seconds": 0},
                           "tables": [{"name": "public.events", "day_column": "at", "start_date": "2024-01-01",
                                       "retention": {"keep_days": 3, "action": "delete"}}]})
    resources = {"postgres": PostgresResource(dsn=pg.dsn_for("postgres", database="no_such_database")),
                 "archive_store": ArchiveStoreResource(s3=S3Resource(endpoint_url=s3.endpoint_url,
                                                                     region_name="us-east-1"), bucket=bucket)}
    remove = build_definitions(config, resources=resources, check_source=False).resolve_job_def("Remove_public_events")
    with instance_for_test() as instance:
        run = remove.execute_in_process(partition_key="2024-01-02", instance=instance, raise_on_error=False)
    kinds = [e.event_type_value for e in run.all_events]
    assert not run.success and "STEP_UP_FOR_RETRY" not in kinds
    [failure] = [e for e in run.all_events if e.event_type_value == "STEP_FAILURE"]
    text = str(failure.step_failure_data.user_failure_data.description)
    assert "public.events 2024-01-02" in text and "no_such_database" in text


@pytest.mark.parametrize("url", ["minio:9000", "localhost:9000", "http//minio", "ftp://minio", "http://minio:abc"])
def test_an_endpoint_url_without_its_scheme_fails_the_load_naming_the_variable(monkeypatch, url):
    """ARCHIVE_S3_ENDPOINT_URL=minio:9000 (no http://) loaded, and then every run failed with a bare
    "ValueError: Invalid endpoint: minio:9000" from botocore, retried with backoff like a transient error."""
    monkeypatch.setenv("ARCHIVE_PG_DSN", "host=127.0.0.1 dbname=db")
    monkeypatch.setenv("ARCHIVE_S3_BUCKET", "archive")
    monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", url)
    with pytest.raises(ConfigError, match=rf"ARCHIVE_S3_ENDPOINT_URL {re.escape(repr(url))} is not an http\(s\) URL"):
        build_definitions(_config({"name": "public.events"}), check_source=False)
    monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", "http://minio:9000")
    build_definitions(_config({"name": "public.events"}), check_source=False)


def test_a_store_client_that_cannot_be_built_fails_the_archive_run_at_once_naming_table_and_day(pg, schema):
    """With resources passed to the factory (another project's), an S3 client that cannot be built (an
    endpoint without its scheme) raised botocore's bare ValueError before any day was tried, which
    Dagster's retry policy retried with backoff; it now fails the run at once, naming table and day."""
    config = parse_config({"retry": {"max_retries": 2, "delay_seconds": 0},
                           "tables": [{"name": f"{schema}.events", "day_column": "at", "start_date": "2024-01-01"}]})
    resources = {"postgres": PostgresResource(dsn=pg.dsn),
                 "archive_store": ArchiveStoreResource(s3=S3Resource(endpoint_url="minio:9000",
                                                                     region_name="us-east-1"), bucket="archive")}
    job = build_definitions(config, resources=resources, check_source=False).resolve_job_def(job_name(schema))
    with instance_for_test() as instance:
        run = job.execute_in_process(partition_key="2024-01-02", instance=instance, raise_on_error=False)
    assert not run.success and "STEP_UP_FOR_RETRY" not in [e.event_type_value for e in run.all_events]
    [failure] = [e for e in run.all_events if e.event_type_value == "STEP_FAILURE"]
    text = failure.step_failure_data.user_failure_data.description
    assert f"{schema}.events" in text and "2024-01-02" in text and "Invalid endpoint: minio:9000" in text


def test_archive_intact_executed_without_a_day_says_to_choose_one_and_records_no_unscoped_result(conn, schema,
                                                                                                 archive_env):
    """archive_intact is a check per day. Executed without choosing one it recorded "not archived yet" with
    no partition at all while nothing was archived, and once a day was archived it crashed inside Dagster
    ("Cannot access partition_key for a non-partitioned run"). It now fails saying to choose the days, or
    to run latest_archive_intact, and records no result without its day."""
    day = dt.date(2024, 3, 10)
    create_sample_events(conn, [day], rows_per_day=10, schema=schema)
    defs = build_definitions(events_config(schema, day))
    check = AssetCheckKey(AssetKey(["archive", schema, "events"]), "archive_intact")
    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_check_selection={check}, asset_selection=set())
    with instance_for_test() as instance:
        for archived in (False, True):
            if archived:
                assert defs.resolve_job_def(job_name(schema)).execute_in_process(partition_key=day.isoformat(),
                                                                                 instance=instance).success
            run = job.execute_in_process(instance=instance, raise_on_error=False)
            [failure] = [e for e in run.all_events if e.event_type_value == "STEP_FAILURE"]
            assert "no day was chosen" in failure.step_failure_data.user_failure_data.description
            assert run_check_evaluations(instance, run.run_id) == []
        assert [r.partition for r in instance.event_log_storage.get_asset_check_execution_history(check, limit=10)
                if r.status.value != "PLANNED"] == [day.isoformat()]


def test_a_failed_and_retried_archive_run_gives_its_pool_slot_back(s3, bucket):
    """The archive step holds a slot of its table's pool (dagster.yaml: 4 per pool); a run that fails after
    a retry must give it back, or after `limit` such runs no extraction of that database ever starts."""
    config = parse_config({"retry": {"max_retries": 1, "delay_seconds": 0},
                           "tables": [{"name": "public.events", "day_column": "at", "start_date": "2024-01-01",
                                       "pool": "operator_test_pool"}]})
    resources = {"postgres": PostgresResource(dsn=f"postgresql://u:secret@127.0.0.1:{free_port()}/db",
                                              connect_timeout_s=1),
                 "archive_store": ArchiveStoreResource(s3=S3Resource(endpoint_url=s3.endpoint_url,
                                                                     region_name="us-east-1"), bucket=bucket)}
    job = build_definitions(config, resources=resources, check_source=False).resolve_job_def("Archive_public_events")
    with instance_for_test(overrides={"concurrency": {"pools": {"default_limit": 1}}}) as instance:
        for _ in range(2):  # the second run gets the only slot only if the first gave it back
            run = job.execute_in_process(partition_key="2024-01-02", instance=instance, raise_on_error=False)
            kinds = [e.event_type_value for e in run.all_events]
            assert not run.success and "STEP_UP_FOR_RETRY" in kinds and kinds.count("STEP_START") == 1
            info = instance.event_log_storage.get_concurrency_info("operator_test_pool")
            assert info.slot_count == 1 and info.active_slot_count == 0 and info.claimed_slots == []


def test_source_unchanged_does_not_flag_a_day_that_retention_removed_from_the_source(conn, schema, archive_env):
    """source_unchanged compares the latest archived days with the source. A day retention removed (its
    proof passed, its rows deleted, the manifest marked 'removed') has no rows in the source any more, and
    the check flagged it red as "the source has 0 rows now" with the run config to archive it again,
    which would fail (a removed day is never archived again). A removed day is not a changed day."""
    day, kept = dt.date(2024, 3, 10), dt.date(2024, 3, 11)
    create_sample_events(conn, [day, kept], rows_per_day=10, schema=schema)
    defs = build_definitions(events_config(schema, day, retention={"keep_days": 30, "action": "delete"}))
    with instance_for_test() as instance:
        for archived in (day, kept):
            assert defs.resolve_job_def(job_name(schema)).execute_in_process(partition_key=archived.isoformat(),
                                                                             instance=instance).success
        assert defs.resolve_job_def(f"Remove_{schema}_events").execute_in_process(partition_key=day.isoformat(),
                                                                                  instance=instance).success
        run = defs.resolve_job_def("verify_archives").execute_in_process(instance=instance, raise_on_error=False)
        [unchanged] = [e for e in run_check_evaluations(instance, run.run_id) if e.check_name == "source_unchanged"]
        assert unchanged.passed, unchanged.description
        assert unchanged.metadata["checked_days"].value == [kept.isoformat()]
        assert f"{day}: removed from the source" in unchanged.description
        # a day of the source that did change is still flagged beside it
        conn.execute(sql.SQL("UPDATE {}.events SET event_type = 'edited' WHERE created_at >= %s").format(
            sql.Identifier(schema)), (kept,))
        run = defs.resolve_job_def("verify_archives").execute_in_process(instance=instance, raise_on_error=False)
        [changed] = [e for e in run_check_evaluations(instance, run.run_id) if e.check_name == "source_unchanged"]
        assert not changed.passed and changed.metadata["changed_days"].value == [kept.isoformat()]


@pytest.mark.parametrize("name", ["localtime", "posixrules"])
def test_a_host_dependent_zone_name_is_refused_at_load(name):
    """Debian's zoneinfo has 'localtime' (a link to /etc/localtime), so `timezone: localtime` loaded and
    meant whatever zone each host is set to: the code server's partitions, the run containers' day bounds
    and the database server's reading of declarative bounds could each use another zone."""
    with pytest.raises(ConfigError) as raised:
        _config({"name": "public.events", "timezone": name})
    assert f"table 'public.events', setting 'timezone': {name!r} is whatever zone each host is set to" in str(
        raised.value)
    _config({"name": "public.events", "timezone": "Europe/Berlin"})


def test_a_configuration_path_that_is_a_directory_fails_the_load_naming_it(tmp_path, monkeypatch):
    """ARCHIVE_PIPELINE_CONFIG pointing at a directory (a mounted config folder) failed the load with a bare
    IsADirectoryError; it is a configuration error naming the path and the variable."""
    monkeypatch.setenv("ARCHIVE_PIPELINE_CONFIG", str(tmp_path))
    with pytest.raises(ConfigError, match=rf"archive configuration {re.escape(str(tmp_path))} cannot be read \(Is a "
                                          r"directory\); set \$ARCHIVE_PIPELINE_CONFIG"):
        load_config()
