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

import functools
import logging
import os

import psycopg
from psycopg import sql
from dagster import (AssetSelection, Definitions, EnvVar, ExecutorDefinition, define_asset_job, definitions,
                     in_process_executor)

from archive_pipeline.defs.assets import (
    PREFIX_TAG,
    asset_key,
    build_archive_asset,
    daily_partitions,
    job_name,
    overwrite_run_config,
    prefix_tag,
    retry_policy,
    run_tags,
    shared_job_name,
)
from archive_pipeline.defs.checks import (
    build_intact_check,
    build_source_unchanged_check,
    build_stored_archive_check,
)
from archive_pipeline.core.config import ArchiveConfig, ConfigError, SourceSettings, TableSpec, config_path, load_config
from archive_pipeline.core.discovery import ChildrenMemo, child_ranges
from archive_pipeline.core.environment import (check_bucket_name, check_dsn, check_endpoint_url, check_key_pair, check_keys_fit,
                                              check_prefix, check_s3_settings, default_connect_timeout, equal_parts,
                                              server_side_encryption, session_settings, verify_etags)
from archive_pipeline.core.errors import SourceError, classify, describe_connect_error, password_of, redact
from archive_pipeline.defs.resources import ArchiveStoreResource, PostgresResource, ArchiveS3Resource
from archive_pipeline.defs.retention_assets import build_removal_asset, build_retention_schedule
from archive_pipeline.defs.schedules import build_daily_schedule
from archive_pipeline.defs.sensors import SensorTarget, build_new_days_sensor
from archive_pipeline.core.session_settings import CONNECT_PARAMETERS, session_pinned, set_session
from archive_pipeline.core.source import describe_table

log = logging.getLogger(__name__)

REQUIRED_ENV = {
    "ARCHIVE_PG_DSN": "the source database, as a libpq URI or key=value string",
    "ARCHIVE_S3_BUCKET": "the bucket the archives are written to",
}


def _optional_env(name: str) -> EnvVar | None:
    """The variable, if it is set to more than white space (a blank ARCHIVE_PG_PRIMARY_DSN is unset, as on the
    command line, not libpq's default database)."""
    return EnvVar(name) if os.environ.get(name, "").strip() else None


def require_environment(origin: str | None = None) -> None:
    """Fail the load, naming each variable, when the connection settings are not in the environment:
    otherwise the location loads and every run and sensor tick fails later with a vaguer message.
    ``origin`` is where the tables were configured (a file, a component's defs.yaml)."""
    missing = [name for name in REQUIRED_ENV if not os.environ.get(name, "").strip()]
    if missing:
        lines = "\n".join(f"  {name}: {REQUIRED_ENV[name]}" for name in missing)
        raise ConfigError(f"environment variable(s) not set for the archive_pipeline code location "
                          f"(configured by {origin or config_path()}):\n{lines}\nSet them where the code location runs "
                          "(see the README, Configuration), or pass resources to build_definitions().")
    for variable in ("ARCHIVE_PG_DSN", "ARCHIVE_PG_PRIMARY_DSN"):
        if os.environ.get(variable, "").strip():
            check_dsn(os.environ[variable].strip(), variable)
    check_endpoint_url(os.environ.get("ARCHIVE_S3_ENDPOINT_URL"), os.environ["ARCHIVE_S3_BUCKET"])
    check_bucket_name(os.environ["ARCHIVE_S3_BUCKET"].strip())
    check_key_pair(os.environ)
    check_s3_settings(os.environ)


def _store_prefix(resources: dict[str, object] | None) -> str:
    """The key prefix the archives are written under: $ARCHIVE_S3_PREFIX's, or the user's own
    ``archive_store`` resource's (checked as the variable is: a '..' part or keys past S3's 1,024 bytes
    failed every run of every day instead of the load)."""
    if resources is None:
        return os.environ.get("ARCHIVE_S3_PREFIX", "").strip()
    store = resources.get("archive_store")
    prefix = getattr(store, "prefix", None)
    if isinstance(prefix, EnvVar):
        prefix = os.environ.get(prefix.env_var_name, "")
    if not isinstance(prefix, str):
        return ""
    prefix = prefix.strip()
    check_prefix(prefix, "the archive_store resource's prefix")
    return prefix


def default_resources(config: ArchiveConfig | None = None) -> dict[str, object]:
    source = config.source if config else SourceSettings()
    s3 = ArchiveS3Resource(
        endpoint_url=_optional_env("ARCHIVE_S3_ENDPOINT_URL"),
        region_name=_optional_env("ARCHIVE_S3_REGION") or "us-east-1",
        aws_access_key_id=_optional_env("ARCHIVE_S3_ACCESS_KEY_ID"),
        aws_secret_access_key=_optional_env("ARCHIVE_S3_SECRET_ACCESS_KEY"),
    )
    return {
        "postgres": PostgresResource(dsn=EnvVar("ARCHIVE_PG_DSN"), **source.model_dump()),
        # Removing days from the source (retention) writes: it needs the primary, when archiving reads a replica.
        "primary_postgres": PostgresResource(dsn=_optional_env("ARCHIVE_PG_PRIMARY_DSN") or EnvVar("ARCHIVE_PG_DSN"),
                                             dsn_setting="ARCHIVE_PG_PRIMARY_DSN" if _optional_env(
                                                 "ARCHIVE_PG_PRIMARY_DSN") else "ARCHIVE_PG_DSN",
                                             **source.model_dump()),
        "archive_store": ArchiveStoreResource(s3=s3, bucket=EnvVar("ARCHIVE_S3_BUCKET"),
                                              prefix=_optional_env("ARCHIVE_S3_PREFIX") or "",
                                              verify_etags=verify_etags(), equal_parts=equal_parts(),
                                              **server_side_encryption()),
    }


def check_table(conn: psycopg.Connection, spec: TableSpec, children: ChildrenMemo | None = None) -> None:
    """The table (or, in naming mode, its schema) exists as its partitioning mode needs. A declarative
    table's children, read and checked here, go into ``children`` (the sensor's): its first tick after a
    load then reads them again only if the catalog changed since."""
    if spec.partitioning.mode == "naming":
        # quoted as an identifier: a '"' in the schema's name is doubled, or the server refuses the name
        if conn.execute("SELECT pg_catalog.to_regnamespace(%s) IS NULL",
                        (sql.Identifier(spec.schema_name).as_string(conn),)).fetchone()[0]:
            raise SourceError(f"schema {spec.schema_name!r} does not exist", table=spec.name)
        return
    table = describe_table(conn, spec.name, spec.day_column)
    if spec.granularity == "hourly" and table.day_column is not None and table.day_column.base_type == "date":
        raise SourceError(f"setting 'granularity': hourly needs a timestamp or timestamptz day_column, and "
                          f"{spec.day_column!r} is a date; use granularity daily or monthly", table=spec.name)
    if spec.partitioning.mode == "declarative":
        if table.relkind != "p":
            raise SourceError(f"{spec.name!r} is not a partitioned table (partitioning mode 'declarative'); "
                              "use mode 'column'", table=spec.name)
        if children is not None:
            children.ranges(conn, spec)  # the same reading and check, kept for the sensor
        else:
            child_ranges(conn, spec)  # refuses a table not range-partitioned by its day column


_LOAD_LOCK_WAIT_MS = 2000  # how long the load's check of a table waits for a lock a migration holds


def check_tables_exist(config: ArchiveConfig, dsn: str, children: ChildrenMemo | None = None,
                       dsn_setting: str = "ARCHIVE_PG_DSN") -> None:
    """Fail the load on a table or day column that does not exist, naming it.

    An unreachable database only warns, naming host, port and reason (never the password) and, in its
    remedy, ``dsn_setting`` (where the DSN was set, as the runs' errors name it): the location must still
    load (and its runs fail with the same clear error) while the database is down for maintenance.
    """
    try:
        conn = psycopg.connect(dsn, **default_connect_timeout(dsn, 5), autocommit=True, **CONNECT_PARAMETERS)
        # SET: no snapshot (a serializable deferrable role's waits). A table a migration holds (describing an
        # expression-keyed parent reads its key, which locks it) is given up on quickly: the load goes on
        set_session(conn, {**session_settings(config.source), **session_pinned(conn), "lock_timeout": str(
            min(config.source.lock_timeout_ms or _LOAD_LOCK_WAIT_MS, _LOAD_LOCK_WAIT_MS))})
    except (psycopg.Error, UnicodeEncodeError) as exc:  # (a DSN not UTF-8: see errors.not_utf8)
        described = describe_connect_error(exc, dsn, dsn_setting)
        log.warning("could not %s the source database to check the tables of %s: %s; the code location loads "
                    "anyway and runs will fail until this is fixed", "reach" if described.retryable else "connect to",
                    config.origin, described)
        return
    with conn:
        for spec in config.tables:
            try:
                check_table(conn, spec, children)
            except SourceError as exc:  # (redacted: a DSN pasted as the table's name is quoted, its password too)
                raise ConfigError(redact(f"{config.origin}: table {spec.name!r}: {exc}", password_of(dsn))) from None
            except psycopg.Error as exc:  # the connection lost, a role's timeout: not the table's fault
                found = classify(exc)
                log.warning("could not finish checking the tables of %s: table %r: %s (%s: %s); to fix: %s; the "
                            "code location loads anyway and runs will fail until this is fixed", config.origin,
                            spec.name, found.cause, type(exc).__name__, redact(str(exc), password_of(dsn)),
                            found.remedy)
                if conn.closed or conn.broken:
                    return  # the session is gone; one table's error (a timeout, a lock) lets the others be checked


def build_definitions(config: ArchiveConfig | None = None, resources: dict[str, object] | None = None,
                      *, check_source: bool = True,
                      executor: ExecutorDefinition | None = in_process_executor) -> Definitions:
    """The archive assets, checks, jobs, schedules and sensor for ``config`` (default: the YAML file).

    Without ``resources`` the connection settings come from the environment and must be set;
    ``check_source`` checks the tables exist. ``executor`` applies to every job of the Definitions
    it ends up in, including the implicit asset job that UI backfills use; pass ``None`` when
    merging into a project that sets its own. This project's jobs run in-process either way.
    """
    if config is None:
        config = load_config()
    elif not isinstance(config, ArchiveConfig):  # a dict of the YAML's settings, a path: say what it takes
        given = type(config).__name__
        raise TypeError(f"build_definitions takes an ArchiveConfig, not a {given}: build one with "
                        "archive_pipeline.core.config.parse_config(settings) from a dict of the YAML file's settings, "
                        "or load_config(path) from a file")
    if resources is None:
        require_environment(config.origin)
    check_keys_fit(config, _store_prefix(resources))
    children = ChildrenMemo()  # the declarative tables' children: read by the checks, kept for the sensor
    # the tables are looked for where the runs will read them: the postgres resource given, else the environment's
    if check_source and (runs_read := _where_runs_read((resources or {}).get("postgres"), config.origin)):
        dsn, setting = runs_read
        check_tables_exist(config, dsn, children, setting)
    assets, checks, on_demand, jobs, schedules, targets = [], [], [], [], [], []
    owners: dict[str, str] = {}  # op name -> the table whose asset or check it runs
    sharing = shared_job_names(config)  # (the sensor and schedules count a queued run of a shared job as the table's)
    for spec in config.tables:
        archive_asset = build_archive_asset(spec, config.retry, config.schedule, config.backfill, config.origin)
        key = asset_key(spec)
        # The asset alone, without its checks: archive_intact is reported by the asset itself, and the
        # on-demand checks run only when asked for (verify_archives, or from the UI).
        job = define_asset_job(name=job_name(spec), selection=AssetSelection.assets(key).without_checks(),
                               tags=run_tags(spec), executor_def=in_process_executor,
                               description=f"Archive days of {spec.name}")
        retry = retry_policy(config.retry)  # the checks' errors say "retried" where the core's do
        latest = build_stored_archive_check(spec, key, retry, config.origin)
        unchanged = build_source_unchanged_check(spec, key, overwrite_run_config(spec), retry, config.origin)
        assets.append(archive_asset)
        intact = build_intact_check(spec, key, daily_partitions(spec), retry, config.origin)
        checks += [intact, latest, unchanged]
        on_demand += [latest, unchanged]
        jobs.append(job)
        targets.append(SensorTarget(spec=spec, asset_key=key, job=job, shared_job=sharing.get(spec.name)))
        schedules.append(build_daily_schedule(targets[-1], config.schedule))
        table_nodes = [archive_asset, intact, latest, unchanged]
        if spec.retention is not None:
            assets.append(build_removal_asset(spec, config.schedule, config.retry, config.origin))
            schedules.append(build_retention_schedule(spec, config.schedule.hour))
            table_nodes.append(assets[-1])
        _claim_op_names(owners, spec, table_nodes, config.origin)
    jobs += shared_jobs(config)
    verify = define_asset_job(name="verify_archives", selection=AssetSelection.checks(*on_demand),
                              executor_def=in_process_executor,
                              description="On demand: re-check every table's latest archive against what was "
                                          "recorded, and compare recently archived days with the source")
    return Definitions(
        # One process per run, not one more per step: an archive step is I/O- and database-bound, and
        # parallelism comes from concurrent runs bounded by the pools. Measured in bench/backfill.py.
        executor=executor,
        assets=assets,
        asset_checks=checks,
        jobs=[*jobs, verify],
        schedules=schedules,
        sensors=[build_new_days_sensor(targets, config.sensor, children)],
        resources=_with_primary(_with_source_limits(resources, config.source) if resources
                                else default_resources(config)),
    )


def _where_runs_read(postgres: object | None, origin: str) -> tuple[str, str] | None:
    """(DSN, the setting it came from) of the database the runs will read, where the load checks the tables: the
    given postgres resource's, else (none given) $ARCHIVE_PG_DSN's. None, said in a warning, where the given
    resource's DSN cannot be read at load (an EnvVar set only where runs start, a resource of another kind): the
    tables were looked for in ARCHIVE_PG_DSN's database instead (another code location's), and the load failed on
    a table every run would have found."""
    if postgres is None:
        dsn = os.environ.get("ARCHIVE_PG_DSN", "").strip()
        return (dsn, "ARCHIVE_PG_DSN") if dsn else None
    given = getattr(postgres, "dsn", None)
    unset = given.env_var_name if isinstance(given, EnvVar) else None
    if unset:  # (its value is the variable's name: the DSN is in the environment, of the runs at least)
        given = given.get_value()
    if isinstance(given, str) and given.strip():
        return given.strip(), _dsn_setting(postgres)
    log.warning("the tables of %s are not checked at load: the postgres resource's DSN %s; runs check them where "
                "they read them", origin, f"(${unset}) is not set where the code location loads" if unset else
                f"cannot be read at load (a {type(postgres).__name__})")
    return None


def _dsn_setting(postgres: object) -> str:
    """Where the given postgres resource's DSN was set, as its runs' errors name it (PostgresResource's
    ``dsn_setting``); a resource of another kind says which setting it is."""
    setting = getattr(postgres, "dsn_setting", None)
    return setting if isinstance(setting, str) and setting.strip() else "the postgres resource's dsn"


def _claim_op_names(owners: dict[str, str], spec: TableSpec, nodes: list, origin: str) -> None:
    """Refuse, naming both tables, an op name that another table's asset or check already runs: a check's
    op is named after its table and check (``archive__public__events_archive_intact``), so the table
    ``public.events_archive_intact`` had its archive op under the same name, and the load failed with
    Dagster's "Invalid dependencies" naming neither table."""
    for node in nodes:
        name = node.node_def.name
        other = owners.setdefault(name, spec.name)
        if other != spec.name:
            raise ConfigError(f"invalid archive configuration in {origin}:\n  tables {other!r} and {spec.name!r} "
                              f"would share the Dagster op name {name!r} (an asset's or a check's); rename one of "
                              "them in the database or archive it from a second code location")


def shared_jobs(config: ArchiveConfig) -> list:
    """A job without checks for each partitions definition (granularity, start_date, zone) that two or
    more tables share: what the UI runs when several of them are materialized together (a run per
    day, or ranged runs of a backfill, by the same backfill policy as each table's own job)."""
    return [define_asset_job(
        name=name, selection=AssetSelection.assets(*(asset_key(s) for s in specs)).without_checks(),
        tags={PREFIX_TAG: prefix_tag(specs[0])},  # (one location's tables: one prefix; the table is in the selection)
        executor_def=in_process_executor,
        description=f"Archive days of {', '.join(s.name for s in specs)} together (for the UI's Materialize of "
                    "several tables; each table's own job is the one scheduled)")
        for name, specs in _shared_groups(config)]


def shared_job_names(config: ArchiveConfig) -> dict[str, str]:
    """Each table that shares its partitions with others, and the name of the job they share."""
    return {spec.name: name for name, specs in _shared_groups(config) for spec in specs}


def _shared_groups(config: ArchiveConfig) -> list[tuple[str, list[TableSpec]]]:
    """(job name, tables) for each partitions definition (granularity, start_date, zone) two or more share."""
    groups: dict[tuple[str, object, str], list[TableSpec]] = {}
    for spec in config.tables:
        groups.setdefault((spec.granularity, spec.start_date, spec.timezone), []).append(spec)
    found, names = [], set()
    for specs in (specs for specs in groups.values() if len(specs) > 1):
        base = name = shared_job_name(specs[0])
        number = 0
        while name in names:  # zones that differ only in what a job name cannot hold (Etc/GMT+1, Etc/GMT-1)
            number += 1
            name = f"{base}_{number}"
        names.add(name)
        found.append((name, specs))
    return found


def _with_source_limits(resources: dict[str, object], source: SourceSettings) -> dict[str, object]:
    """The given PostgreSQL resources with the table file's ``source:`` limits where the resource leaves them at
    their defaults: the README promises them on every extraction session, and a project passing its own resources
    had them dropped (a 200 ms lock_timeout waited 30 s behind a migration). A resource that sets a limit itself
    keeps its own, said once at the load where the file says otherwise."""
    asked = {name: getattr(source, name) for name in source.model_fields_set}
    if not asked:
        return resources
    given = dict(resources)
    for role, resource in resources.items():
        if not isinstance(resource, PostgresResource):
            continue
        own = resource.model_fields_set
        for name in sorted(own & asked.keys()):
            if getattr(resource, name) != asked[name]:
                log.warning("the %s resource sets %s=%s; the table file's source: section says %s, which does not "
                            "apply to it (the resource's own setting is in force)", role, name,
                            getattr(resource, name), asked[name])
        missing = {name: value for name, value in asked.items() if name not in own}
        if missing:
            given[role] = type(resource)(**{name: getattr(resource, name) for name in own}, **missing)
    return given


def _with_primary(resources: dict[str, object]) -> dict[str, object]:
    """Removals use ``primary_postgres``; without one, the source connection is the primary."""
    if "primary_postgres" not in resources and "postgres" in resources:
        return {**resources, "primary_postgres": resources["postgres"]}
    return resources


@definitions
def defs() -> Definitions:
    """What Dagster loads (``dagster dev``, ``definitions validate``, the daemon). Lazy, so importing
    this module (to call ``build_definitions`` from another project or a test) reads no file and needs
    no environment; loading the location does both and fails early when either is wrong.

    Dagster 1.13 calls this twice for one load of the location (``LoadedRepositories`` finds the
    targets, then reconstructs the repository from its pointer), which checked every table in the
    catalog twice and printed each warning twice. The second call gets the first one's definitions
    while the table file and the environment are what they were; any change builds them again."""
    return _definitions_for(_load_inputs())


def _load_inputs() -> tuple:
    """What the definitions are built from: the table file's bytes and the environment."""
    try:
        table_file = config_path().read_bytes()
    except OSError:
        table_file = None  # build_definitions says what is wrong with it
    return str(config_path()), table_file, tuple(sorted(os.environ.items()))


@functools.lru_cache(maxsize=1)
def _definitions_for(inputs: tuple) -> Definitions:
    """The definitions for ``inputs`` (see :func:`_load_inputs`), built once; a failed build is not kept."""
    return build_definitions()
