"""Hunt 25 (cl): the Dagster resources and how a project wires them (PostgresResource, ArchiveStoreResource,
ArchiveS3Resource; build_definitions / default_resources / _with_primary) and how the assets, checks, removals and
the sensor use them."""

from __future__ import annotations

import datetime as dt

from dagster import EnvVar, build_sensor_context, instance_for_test
from dagster_aws.s3 import S3Resource
from psycopg import sql

from archive_pipeline.core.config import parse_config
from archive_pipeline.core.store import S3Store
from archive_pipeline.core.verify import load_manifest
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.resources import ArchiveStoreResource, PostgresResource
from archive_pipeline_tests.test_hunt20_zk import _connect_to, _table, other_db  # noqa: F401 - fixture

DAY = dt.date(2024, 3, 10)


def _store_resource(s3, bucket: str, **extra) -> ArchiveStoreResource:
    return ArchiveStoreResource(s3=S3Resource(endpoint_url=s3.endpoint_url, region_name="us-east-1"), bucket=bucket,
                                prefix="archive", **extra)


def _rows(conn, schema: str, name: str = "ev") -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))).fetchone()[0]


def test_a_primary_postgres_naming_another_database_of_the_cluster_removes_that_databases_copy(
        pg, conn, schema, other_db, s3, s3_client, bucket):  # noqa: F811 - fixture
    """Scenario: a project passes its own resources (README: ``build_definitions(config, resources)``):
    ``postgres`` reads the database ``postgres`` (where ``s.ev`` lives), and ``primary_postgres``, meant to be the
    same server's primary, names by mistake another database of the same cluster, a staging copy loaded from a dump
    (``s.ev`` there holds the same rows). A day is archived (from ``postgres``), then its removal job runs
    (retention: delete).

    Now: ``_removing`` asks ``refuse_other_cluster(primary, ..., reads=source)``, which compares only the clusters'
    system identifiers (the same here), never ``current_database()``, although the manifest records the database
    the day was archived from (``source.database``: ``postgres``) and the resource's ``reads`` session knows its own.
    The proof runs against the staging copy's rows (equal), the DELETE runs there, the manifest is marked removed
    (done) and the run is green: the real source still holds all its rows of the day, and since the archive says
    "removed", no later removal touches them (the next one finds the day "removed already" on the staging copy).

    Should: a removal refuses a primary whose database is not the one the day was archived from (the manifest's
    ``source.database``) or not the one ``postgres`` reads, naming both and primary_postgres /
    ARCHIVE_PG_PRIMARY_DSN, before it proves or removes anything (a standby's databases have its primary's names,
    so no right setup is refused). Fix idea: compare ``server_identity(conn)[0]`` in refuse_other_cluster too."""
    _table(conn, schema)
    with _connect_to(pg, other_db) as staging:
        _table(staging, schema)
        config = parse_config({"retry": {"max_retries": 0}, "tables": [{
            "name": f"{schema}.ev", "day_column": "at", "start_date": DAY.isoformat(),
            "retention": {"keep_days": 30, "action": "delete"}}]})
        resources = {"postgres": PostgresResource(dsn=pg.dsn),
                     "primary_postgres": PostgresResource(dsn=pg.dsn_for("postgres", database=other_db),
                                                          dsn_setting="ARCHIVE_PG_PRIMARY_DSN"),
                     "archive_store": _store_resource(s3, bucket)}
        defs = build_definitions(config, resources, check_source=False)
        with instance_for_test() as instance:
            archived = defs.resolve_job_def(f"Archive_{schema}_ev").execute_in_process(
                instance=instance, partition_key=DAY.isoformat(), raise_on_error=False)
            assert archived.success
            removal = defs.resolve_job_def(f"Remove_{schema}_ev").execute_in_process(
                instance=instance, partition_key=DAY.isoformat(), raise_on_error=False)
        manifest = load_manifest(S3Store(s3_client, bucket, prefix="archive"),
                                 f"archive/{schema}.ev/2024/03/2024-03-10.jsonl.zst")
        left = (_rows(conn, schema), _rows(staging, schema))
    # (the premise: the archive was taken from the database postgres reads)
    assert manifest["source"]["database"] == "postgres", manifest["source"]
    # Now: green, the manifest says removed, the staging copy lost the day, the real source kept its 50 rows
    assert not removal.success or left == (0, 50), (removal.success, left, manifest.get("removed"))


def test_a_postgres_resources_envvar_unset_at_load_has_the_tables_checked_in_archive_pg_dsns_database(
        pg, conn, schema, other_db, s3, bucket, monkeypatch):  # noqa: F811 - fixture
    """Scenario: one deployment runs two code locations: the default one (``ARCHIVE_PG_DSN`` set for it, the database
    ``postgres``) and a project's own, built with ``build_definitions(config, resources)`` and
    ``PostgresResource(dsn=EnvVar("SALES_PG_DSN"))`` (README: resources of your own; Dagster's EnvVar is read when a
    run starts). ``SALES_PG_DSN`` is injected into the run workers only (the run launcher's env, a secret mounted per
    run), so it is unset where the code server loads. The project's table ``s.ev`` lives in the sales database only.

    Now: build_definitions reads the given resource's DSN (``EnvVar.get_value()``: None, unset), then falls back to
    ``os.environ["ARCHIVE_PG_DSN"]``, the other location's database, and check_tables_exist looks for ``s.ev``
    there: not found, so the load fails with a ConfigError ("table 's.ev' ... does not exist"), naming a database
    the project never configured; the location cannot load, although every run would read the right one.

    Should: the tables are checked only where the runs will read them: the given resource's DSN when it can be read
    at load, else not at all (a warning that the check was skipped because SALES_PG_DSN is unset). Fix idea: in
    build_definitions, fall back to ARCHIVE_PG_DSN only when no postgres resource is given."""
    with _connect_to(pg, other_db) as sales:
        _table(sales, schema)
    monkeypatch.setenv("ARCHIVE_PG_DSN", pg.dsn)
    monkeypatch.delenv("SALES_PG_DSN", raising=False)
    config = parse_config({"tables": [{"name": f"{schema}.ev", "day_column": "at", "start_date": DAY.isoformat()}]})
    resources = {"postgres": PostgresResource(dsn=EnvVar("SALES_PG_DSN")), "archive_store": _store_resource(s3, bucket)}
    defs = build_definitions(config, resources)  # Now: ConfigError, the table looked for in ARCHIVE_PG_DSN's database
    monkeypatch.setenv("SALES_PG_DSN", pg.dsn_for("postgres", database=other_db))  # what a run has
    with instance_for_test() as instance:
        archived = defs.resolve_job_def(f"Archive_{schema}_ev").execute_in_process(
            instance=instance, partition_key=DAY.isoformat(), raise_on_error=False)
    assert archived.success


def test_the_sensors_connect_error_sends_a_project_with_its_own_dsn_setting_to_archive_pg_dsn(pg, conn, schema, s3,
                                                                                             bucket):
    """Scenario: a project passes its own resources, ``PostgresResource(dsn=EnvVar("SALES_PG_DSN"),
    dsn_setting="SALES_PG_DSN")`` (the field exists so that remedies name where the DSN is set), and that DSN names
    a database that does not exist (a typo in the database name). The archive_new_days sensor ticks.

    Now: PostgresResource.connect raises a SourceError whose remedy names SALES_PG_DSN (describe_connect_error with
    dsn_setting), and sensors._connect wraps it as "archive_new_days could not connect to the source database (...);
    check ARCHIVE_PG_DSN and that the database is reachable from the daemon": a variable this location never reads,
    and "reachable", for a server that answered and refused the database name. A run's step failure for the same
    resource names SALES_PG_DSN only.

    Should: the tick's words come from the resource (its dsn_setting), as a run's do, with no second remedy naming
    another variable. Fix idea: in sensors._connect, when the error is already an ArchiveError (described by
    PostgresResource.connect), raise it as it is (or name ``postgres.dsn_setting``)."""
    _table(conn, schema)
    config = parse_config({"tables": [{"name": f"{schema}.ev", "day_column": "at", "start_date": DAY.isoformat()}]})
    resources = {"postgres": PostgresResource(dsn=pg.dsn_for("postgres", database=f"{schema}_no_such_db"),
                                              dsn_setting="SALES_PG_DSN"),
                 "archive_store": _store_resource(s3, bucket)}
    repo = build_definitions(config, resources, check_source=False).get_repository_def()
    with instance_for_test() as instance:
        try:
            repo.get_sensor_def("archive_new_days").evaluate_tick(build_sensor_context(
                instance=instance, resources={"postgres": resources["postgres"]}, repository_def=repo))
            said = ""
        except Exception as exc:  # noqa: BLE001 - the tick's error, as the daemon shows it
            said = str(exc)
    assert "SALES_PG_DSN" in said, said  # (the premise: the resource's own description is in it)
    assert "ARCHIVE_PG_DSN" not in said, said
