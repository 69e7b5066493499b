"""Hunt 11 qn: dropping archive_pipeline into existing Dagster projects and deployments (factory, Component,
several code locations on one instance, schedules, pools). Each test asserts the right behaviour and fails on
the code as it was when written."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from dagster import AssetMaterialization, build_schedule_context, instance_for_test

from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions


def _env(monkeypatch) -> None:
    monkeypatch.setenv("ARCHIVE_PG_DSN", "host=127.0.0.1 port=1 dbname=x")
    monkeypatch.setenv("ARCHIVE_S3_BUCKET", "archive")


def _other_locations_run(instance, job: str, day: str, table: str, run_key: str, status) -> None:
    from dagster import DagsterRun
    from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin

    origin = RemoteJobOrigin(RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("other_database"), "__repository__"),
                             job)
    instance.add_run(DagsterRun(job_name=job, run_id=str(uuid.uuid4()), status=status, remote_job_origin=origin,
                                tags={"dagster/partition": day, "dagster/run_key": run_key, "archive/table": table}))


def test_a_removal_in_another_code_location_does_not_hold_back_this_locations_day(monkeypatch):
    """Tables whose Dagster names collide (``a.b_c`` here, ``a_b.c`` in the other database) are told to go to a
    second code location (README; config's "archive it from a second code location"); both locations share the
    instance (one webserver and daemon). There the removal job is ``Remove_a_b_c`` too, and the retention
    schedule's run keys are ``remove_a_b_c:<day>`` too. What happens: while the *other* location removes its
    table ``a_b.c``'s day 2024-01-05, this location's retention schedule skips ``a.b_c``'s archived, due
    2024-01-05, saying "no archived day of a.b_c older than 30 days is left in the source" (false: it is archived,
    due and still there): removals_in_flight matches runs by job name
    alone and removal_order by run key alone, across every location, so another table's run hides this one's
    day (the new-days sensor was fixed for the same collision: _same_repository). Expected: the day is requested.
    Fix idea: match a run to the table by its ``archive/table`` tag or its asset selection (the removal asset
    key, which differs), not by job name / run key only."""
    from dagster import DagsterRunStatus

    from archive_pipeline.defs.assets import asset_key

    _env(monkeypatch)
    config = parse_config({"tables": [{"name": "a.b_c", "day_column": "at", "start_date": "2024-01-01",
                                       "retention": {"keep_days": 30, "action": "delete"}}]}, "here")
    repo = build_definitions(config, check_source=False).get_repository_def()
    schedule = repo.get_schedule_def("remove_a_b_c_daily")
    day = "2024-01-05"
    with instance_for_test() as instance:
        instance.report_runless_asset_event(AssetMaterialization(asset_key=asset_key(config.tables[0]),
                                                                 partition=day))
        tick = dt.datetime(2024, 3, 1, 2, 30, tzinfo=dt.UTC)
        before = schedule.evaluate_tick(build_schedule_context(instance=instance, scheduled_execution_time=tick,
                                                                                repository_def=repo))
        assert [r.partition_key for r in before.run_requests or []] == [day], before  # the setup is right
        # the other location's table a_b.c, the same day, its removal running now
        _other_locations_run(instance, "Remove_a_b_c", day, "a_b.c", f"remove_a_b_c:{day}", DagsterRunStatus.STARTED)
        after = schedule.evaluate_tick(build_schedule_context(instance=instance, scheduled_execution_time=tick,
                                                                                repository_def=repo))
        assert [r.partition_key for r in after.run_requests or []] == [day], after.skip_message


@pytest.mark.parametrize("written", ['"{{ env.ARCHIVE_TABLES_FILE }}"', '"{{ env.ARCHIVE_TABLES_FILE }}/tables.yaml"'])
def test_a_component_config_path_naming_an_unset_environment_variable_says_so(monkeypatch, written):
    """A defs.yaml of ArchiveTablesComponent gives ``config_path: "{{ env.ARCHIVE_TABLES_FILE }}"`` (Dagster's
    env templating, so each deployment mounts its own table list), and the code location starts where the
    variable is not set. What happens: Dagster renders it as None and the load fails "give config_path (a YAML
    table list) or an inline tables list": the user did give config_path, and nothing names the variable; with
    ``"{{ env.ARCHIVE_TABLES_FILE }}/tables.yaml"`` the path becomes ``<defs folder>/None/tables.yaml`` and the
    load fails "archive configuration .../None/tables.yaml not found". Expected: the load fails naming
    ARCHIVE_TABLES_FILE as not set (as the inline tables' templates are expected to). Fix idea: in
    _relative_to_defs_yaml, refuse a template whose env variable is unset (or a rendered value of None / one
    holding "None" where the template had ``env.X``), naming X."""
    from archive_pipeline.defs.component import ArchiveTablesComponent

    monkeypatch.delenv("ARCHIVE_TABLES_FILE", raising=False)
    try:
        component = ArchiveTablesComponent.resolve_from_yaml(f"config_path: {written}\ncheck_source: false\n")
        component.archive_config()
    except Exception as exc:  # noqa: BLE001 - refused at load: it must name the variable that is not set
        assert "ARCHIVE_TABLES_FILE" in str(exc), exc
        return
    raise AssertionError("loaded a table list from a path whose variable is not set")


@pytest.mark.parametrize("written", ['"{{ env.ARCHIVE_REGION }}"', '"{{ env.ARCHIVE_REGION }}_archive"'])
def test_a_component_asset_key_prefix_from_an_unset_variable_does_not_load_without_its_prefix(monkeypatch, written):
    """Two deployments (eu, us) of one dg project archive the same tables from two databases, told apart by
    ``asset_key_prefix: "{{ env.ARCHIVE_REGION }}"`` in the component's defs.yaml (Dagster's env templating;
    README: the inline form takes ``asset_key_prefix:``). One location starts without ARCHIVE_REGION (a line
    missing from its env file). What happens: Dagster renders the template as None, the attribute is taken as
    "no prefix", and the location loads silently with the keys ``archive/public/events``: a second location
    doing the same shares every asset key, so each sees the other's materializations as its own archived days
    (its sensor never requests them) and the UI mixes the two databases' archives; ``"{{ env.ARCHIVE_REGION
    }}_archive"`` loads as the prefix ``None_archive``. (Not the tables' templates of test_hunt11_qh: this
    attribute goes through Dagster's default resolver, not _resolved_tables.) Expected: the load fails naming
    ARCHIVE_REGION as not set. Fix idea: a Resolver for asset_key_prefix (and the other inline sections) that
    refuses an ``env.X`` whose variable is unset, as for the tables."""
    from archive_pipeline.defs.component import ArchiveTablesComponent

    _env(monkeypatch)
    monkeypatch.delenv("ARCHIVE_REGION", raising=False)
    attributes = ("tables:\n  - {name: public.events, day_column: created_at, start_date: 2024-01-01}\n"
                  f"asset_key_prefix: {written}\ncheck_source: false\n")
    try:
        component = ArchiveTablesComponent.resolve_from_yaml(attributes)
        prefix = component.archive_config().tables[0].key_prefix
    except Exception as exc:  # noqa: BLE001 - refused at load: it must name the variable that is not set
        assert "ARCHIVE_REGION" in str(exc), exc
        return
    raise AssertionError(f"loaded with the asset key prefix {prefix!r}: an unset variable's prefix, silently")


def test_a_component_with_an_empty_inline_tables_list_is_told_the_list_is_empty(monkeypatch):
    """A defs.yaml gives ``tables: []`` (every table commented out while the database is migrated; a generated
    list that came out empty). README: both ways "validate exactly as the YAML file is validated (same
    messages)"; a file with ``tables: []`` fails "setting 'tables': List should have at least 1 item". What
    happens: the component fails "give config_path (a YAML table list) or an inline tables list", which tells
    the user to add what is already there (``not self.tables`` takes the empty list for a missing one).
    Expected: the message says the tables list is empty (names ``tables`` and that it needs at least one
    table), as the file's does. Fix idea: in _one_source_of_tables test ``self.tables is None``, and let
    parse_config refuse the empty list with the file's message."""
    from archive_pipeline.defs.component import ArchiveTablesComponent

    _env(monkeypatch)
    with pytest.raises(Exception) as refused:
        ArchiveTablesComponent.resolve_from_yaml("tables: []\ncheck_source: false\n").archive_config()
    message = str(refused.value)
    assert "give config_path" not in message, message
    assert "tables" in message and "at least 1" in message, message


def test_the_factorys_table_check_reads_the_database_of_the_resources_it_is_given(pg, conn, schema, monkeypatch):
    """A host project passes its own resources to the factory (README: "or pass your own ``resources=`` to the
    factory"): ``postgres`` reads ``EnvVar("ORDERS_PG_DSN")``, the database the tables are in. The deployment
    also has ARCHIVE_PG_DSN set, for the command line of another database (or left over from a shared env
    file). What happens: build_definitions' load-time check (check_source, on by default) reads
    ``os.environ["ARCHIVE_PG_DSN"]`` whatever resources it was given, so the load fails "table ... does not
    exist" for a table that exists in the database the runs will read (and with ARCHIVE_PG_DSN unset it checks
    nothing, silently). Expected: the check reads the ``postgres`` resource's database (here the load
    succeeds). Fix idea: take the DSN to check from ``resources["postgres"].dsn`` (an EnvVar read from the
    environment) when resources are given."""
    from dagster import EnvVar
    from psycopg import sql

    from archive_pipeline.defs.resources import ArchiveS3Resource, ArchiveStoreResource, PostgresResource

    conn.execute(sql.SQL("CREATE TABLE {} (id int, created_at timestamptz)").format(
        sql.Identifier(schema, "orders")))
    monkeypatch.setenv("ORDERS_PG_DSN", pg.dsn)
    monkeypatch.setenv("ARCHIVE_PG_DSN", pg.dsn_for("postgres", database="template1"))  # another database
    config = parse_config({"tables": [{"name": f"{schema}.orders", "day_column": "created_at",
                                       "start_date": "2024-01-01"}]}, "host project")
    resources = {"postgres": PostgresResource(dsn=EnvVar("ORDERS_PG_DSN")),
                 "archive_store": ArchiveStoreResource(s3=ArchiveS3Resource(region_name="us-east-1"),
                                                       bucket="orders-archive")}
    defs = build_definitions(config, resources=resources, executor=None)
    assert defs.get_repository_def().get_job(f"Archive_{schema}_orders")


def test_a_relative_table_list_path_the_factory_cannot_find_names_the_directory_it_looked_in(tmp_path,
                                                                                         monkeypatch):
    """The README's factory example, ``build_definitions(load_config("archive_tables.yaml"), executor=None)`` in
    ``my_project/definitions.py``, loaded by a code server or ``dagster dev`` started from another directory
    (the repository root, a container's WORKDIR, a daemon's working_directory), where the file is not. What
    happens: the load fails "archive configuration archive_tables.yaml not found (check the path given (a
    component's config_path is relative to its defs.yaml))": it names neither the directory the relative path
    was read from (the process's working directory, not the module's folder) nor says it is relative to it, so
    the user looks beside definitions.py, where the file is. Expected: the message names the absolute path
    looked at (or the working directory), so the user sees where it looked. Fix idea: in load_config, name
    ``file.resolve()`` (and "relative to the working directory ...") for a relative path not found."""
    from archive_pipeline.core.config import ConfigError, load_config

    elsewhere = tmp_path / "launched_from_here"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(ConfigError) as refused:
        load_config("archive_tables.yaml")
    assert str(elsewhere) in str(refused.value), refused.value
