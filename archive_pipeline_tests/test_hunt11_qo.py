"""Hunt 11 qo: a review of the newest product fixes (hunt 11 qe..ql). Each test asserts the right behaviour and
fails on the code as it was when written."""

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


def test_the_factorys_table_check_reads_an_envvar_dsn_of_the_given_postgres_resource(pg, schema, monkeypatch):
    """A host project passes its own resources to the factory with the DSN as Dagster's ``EnvVar`` (README:
    "Connection settings come only from the environment, through Dagster's EnvVar"; the factory's own
    resources are built the same way): ``PostgresResource(dsn=EnvVar("ARCHIVE_PG_DSN"))``, the variable set to
    the database, and a table list naming a table that does not exist there. What happens (since the qn fix
    "the factory looks for the tables in the database of the postgres resource it is given"): the check takes
    ``resources["postgres"].dsn``, which is the EnvVar itself, a str whose text is the variable's *name*;
    psycopg.connect("ARCHIVE_PG_DSN") fails as a malformed conninfo, which is taken for an unreachable
    database: a warning, and the load succeeds with a table that does not exist (before the fix, the same
    setup failed the load naming the table). Expected: the load fails naming the missing table. Fix idea: an
    EnvVar resolves through ``EnvVar.get_value()`` (os.environ[name]) before it is used as a DSN."""
    from dagster import EnvVar

    from archive_pipeline.core.config import ConfigError
    from archive_pipeline.defs.resources import ArchiveS3Resource, ArchiveStoreResource, PostgresResource

    monkeypatch.setenv("ARCHIVE_PG_DSN", pg.dsn)
    config = parse_config({"tables": [{"name": f"{schema}.no_such_table", "day_column": "created_at",
                                       "start_date": "2024-01-01"}]}, "host project")
    resources = {"postgres": PostgresResource(dsn=EnvVar("ARCHIVE_PG_DSN")),
                 "archive_store": ArchiveStoreResource(s3=ArchiveS3Resource(region_name="us-east-1"),
                                                       bucket="orders-archive")}
    with pytest.raises(ConfigError, match="no_such_table"):
        build_definitions(config, resources=resources, executor=None)
