"""The code location: one Definitions object built from the YAML table list and the environment.

Environment variables (read by Dagster at run time through ``EnvVar``, never stored):
  ARCHIVE_PG_DSN            source database, libpq URI or key=value string (required)
  ARCHIVE_S3_BUCKET         bucket for the archives (required)
  ARCHIVE_S3_PREFIX         key prefix (optional)
  ARCHIVE_S3_ENDPOINT_URL   S3-compatible endpoint, e.g. MinIO or R2 (optional; AWS when unset)
  ARCHIVE_S3_REGION         region (optional, default us-east-1)
  ARCHIVE_S3_ACCESS_KEY_ID / ARCHIVE_S3_SECRET_ACCESS_KEY   credentials (optional; otherwise boto3's
                            usual chain: AWS_* variables, profile, instance role)
  ARCHIVE_PIPELINE_CONFIG   path of the table list (default ./archive_tables.yaml)
"""

import logging
import os

import psycopg
from dagster import (AssetSelection, Definitions, EnvVar, ExecutorDefinition, define_asset_job, definitions,
                     in_process_executor)
from dagster_aws.s3 import S3Resource

from archive_pipeline.assets import asset_key, build_archive_asset
from archive_pipeline.checks import build_stored_archive_check
from archive_pipeline.config import ArchiveConfig, ConfigError, SourceSettings, TableSpec, load_config
from archive_pipeline.discovery import declarative_days
from archive_pipeline.errors import SourceError
from archive_pipeline.resources import ArchiveStoreResource, PostgresResource
from archive_pipeline.schedules import build_daily_schedule
from archive_pipeline.sensors import SensorTarget, build_new_days_sensor
from archive_pipeline.source import describe_table

log = logging.getLogger(__name__)


def _optional_env(name: str) -> EnvVar | None:
    return EnvVar(name) if os.environ.get(name) else None


def default_resources(config: ArchiveConfig | None = None) -> dict[str, object]:
    source = config.source if config else SourceSettings()
    s3 = S3Resource(
        endpoint_url=_optional_env("ARCHIVE_S3_ENDPOINT_URL"),
        region_name=_optional_env("ARCHIVE_S3_REGION") or "us-east-1",
        aws_access_key_id=_optional_env("ARCHIVE_S3_ACCESS_KEY_ID"),
        aws_secret_access_key=_optional_env("ARCHIVE_S3_SECRET_ACCESS_KEY"),
    )
    return {
        "postgres": PostgresResource(dsn=EnvVar("ARCHIVE_PG_DSN"), **source.model_dump()),
        "archive_store": ArchiveStoreResource(s3=s3, bucket=EnvVar("ARCHIVE_S3_BUCKET"),
                                              prefix=_optional_env("ARCHIVE_S3_PREFIX") or ""),
    }


def check_table(conn: psycopg.Connection, spec: TableSpec) -> None:
    """The table (or, in naming mode, its schema) exists as its partitioning mode needs."""
    if spec.partitioning.mode == "naming":
        if conn.execute("SELECT to_regnamespace(%s) IS NULL", (f'"{spec.schema_name}"',)).fetchone()[0]:
            raise SourceError(f"schema {spec.schema_name!r} does not exist", table=spec.name)
        return
    table = describe_table(conn, spec.name, spec.day_column)
    if spec.partitioning.mode == "declarative":
        if table.relkind != "p":
            raise SourceError(f"{spec.name!r} is not a partitioned table (partitioning mode 'declarative'); "
                              "use mode 'column'", table=spec.name)
        declarative_days(conn, spec)  # refuses children that do not cover whole UTC days


def check_tables_exist(config: ArchiveConfig, dsn: str) -> None:
    """Fail the load on a table or day column that does not exist, naming it.

    An unreachable database only warns: the location must still load (and its runs fail with the
    same clear error) while the database is down for maintenance.
    """
    try:
        conn = psycopg.connect(dsn, connect_timeout=5, autocommit=True)
    except psycopg.Error as exc:
        log.warning("could not reach the source database to check the configured tables: %s",
                    type(exc).__name__)
        return
    with conn:
        for spec in config.tables:
            try:
                check_table(conn, spec)
            except SourceError as exc:
                raise ConfigError(f"table {spec.name!r}: {exc}") from None


def build_definitions(config: ArchiveConfig | None = None, resources: dict[str, object] | None = None,
                      *, check_source: bool = True,
                      executor: ExecutorDefinition | None = in_process_executor) -> Definitions:
    """The archive assets, checks, jobs, schedules and sensor for ``config`` (default: the YAML file).

    ``executor`` applies to every job of the Definitions it ends up in, including the implicit asset
    job that UI backfills use; pass ``None`` when merging into a project that sets its own. This
    project's jobs run in-process either way.
    """
    config = config or load_config()
    if check_source and os.environ.get("ARCHIVE_PG_DSN"):
        check_tables_exist(config, os.environ["ARCHIVE_PG_DSN"])
    assets, checks, jobs, schedules, targets = [], [], [], [], []
    for spec in config.tables:
        archive_asset = build_archive_asset(spec, config.retry)
        key = asset_key(spec)
        job = define_asset_job(name=f"archive_{'_'.join(key.path[1:])}", selection=[archive_asset],
                               executor_def=in_process_executor,
                               description=f"Archive days of {spec.name}")
        assets.append(archive_asset)
        checks.append(build_stored_archive_check(key))
        jobs.append(job)
        schedules.append(build_daily_schedule(spec, job, config.schedule))
        targets.append(SensorTarget(spec=spec, asset_key=key, job=job))
    verify = define_asset_job(name="verify_archives", selection=AssetSelection.checks(*checks),
                              executor_def=in_process_executor,
                              description="Re-check every table's latest archive against what was recorded")
    return Definitions(
        # One process per run, not one more per step: an archive step is I/O- and database-bound, and
        # parallelism comes from concurrent runs bounded by the pools. Measured in bench/backfill.py.
        executor=executor,
        assets=assets,
        asset_checks=checks,
        jobs=[*jobs, verify],
        schedules=schedules,
        sensors=[build_new_days_sensor(targets, config.sensor)],
        resources=resources or default_resources(config),
    )


@definitions
def defs() -> Definitions:
    """The code location (`-m archive_pipeline.definitions`), built when Dagster loads it, not at import,
    so another project can import build_definitions without this project's YAML file or environment."""
    return build_definitions()
