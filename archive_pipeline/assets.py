"""One daily-partitioned Dagster asset per configured table; materializing a partition archives it."""

import datetime as dt

from dagster import (
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    Backoff,
    Config,
    DailyPartitionsDefinition,
    Failure,
    Jitter,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    TableColumn,
    TableColumnConstraints,
    TableSchema,
    asset,
)
from pydantic import Field

from archive_pipeline.archive import ArchiveResult, archive_partition, render_key
from archive_pipeline.checks import INTACT_CHECK, check_result
from archive_pipeline.config import RetrySettings, TableSpec
from archive_pipeline.errors import is_retryable, redact
from archive_pipeline.resources import ArchiveStoreResource, PostgresResource


class ArchiveRunConfig(Config):
    """Per-run switches, settable in the launchpad or a backfill's config."""

    overwrite: bool = Field(default=False, description="archive again even if an identical archive exists")
    deep_check: bool = Field(default=False, description="re-download the object, hash it and count its rows")


def asset_key(spec: TableSpec) -> AssetKey:
    return AssetKey(["archive", *spec.asset_path])


def daily_partitions(spec: TableSpec) -> DailyPartitionsDefinition:
    """Days from ``start_date`` to the last complete UTC day (today is still being written)."""
    return DailyPartitionsDefinition(start_date=spec.start_date.isoformat(), timezone="UTC")


def retry_policy(settings: RetrySettings) -> RetryPolicy:
    backoff = Backoff.EXPONENTIAL if settings.backoff == "exponential" else Backoff.LINEAR
    return RetryPolicy(max_retries=settings.max_retries, delay=settings.delay_seconds, backoff=backoff,
                       jitter=Jitter.PLUS_MINUS)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n:.1f} TiB"


def column_schema(result: ArchiveResult) -> TableSchema:
    return TableSchema(columns=[
        TableColumn(c.name, type=c.type_name, constraints=TableColumnConstraints(nullable=not c.not_null))
        for c in result.columns
    ])


def materialization_metadata(result: ArchiveResult) -> dict[str, object]:
    """What a user checks after archiving a day, in the names Dagster's own integrations use."""
    return {
        "skipped": result.skipped,
        "source_relation": result.source_relation,
        "dagster/row_count": result.rows,
        "dagster/uri": MetadataValue.path(result.uri),
        "dagster/column_schema": column_schema(result),
        "object_key": result.key,
        "compressed_bytes": result.bytes,
        "compressed_size": _size(result.bytes),
        "uncompressed_bytes": result.uncompressed_bytes,
        "compression_ratio": round(result.compression_ratio, 2),
        "md5": result.md5,
        "sha256": result.sha256,
        "format": result.format,
        "compression": result.compression,
        "parts": result.parts,
        "duration_seconds": round(result.duration_seconds, 3),
        "extract_seconds": round(result.extract_seconds, 3),
        "upload_wait_seconds": round(result.upload_wait_seconds, 3),
        "rows_per_second": round(result.rows_per_second),
        "snapshot_at": MetadataValue.timestamp(result.snapshot_at),
        "source_server_version": result.server_version,
        "archiver_version": result.archiver_version,
        "manifest_key": result.manifest_key,
    }


def recorded(result: ArchiveResult) -> dict[str, object]:
    return {"bytes": result.bytes, "md5": result.md5, "rows": result.rows, "format": result.format,
            "compression": result.compression}


def build_archive_asset(spec: TableSpec, retry: RetrySettings) -> AssetsDefinition:
    """The partitioned asset that archives ``spec``, one UTC day per partition."""
    example_key = render_key(spec, spec.start_date, "<prefix>")

    @asset(
        key=asset_key(spec),
        partitions_def=daily_partitions(spec),
        group_name="archive",
        description=(f"Daily archive of PostgreSQL table `{spec.name}`: each partition holds the rows with "
                     f"`{spec.day_column}` in that UTC day, as {spec.format} ({spec.compression}) at "
                     f"`{example_key}` (one object per day)."),
        retry_policy=retry_policy(retry),
        kinds={"postgres", "s3"},
        pool=spec.pool,
        check_specs=[AssetCheckSpec(INTACT_CHECK, asset=asset_key(spec),
                                    description="The object exists; its size, MD5 (and, deep, row count) and "
                                                "its manifest agree with what was recorded")],
        metadata={"source_table": spec.name, "day_column": spec.day_column, "format": spec.format,
                  "compression": spec.compression, "key_template": spec.key_template},
    )
    def archive(context: AssetExecutionContext, config: ArchiveRunConfig, postgres: PostgresResource,
                archive_store: ArchiveStoreResource) -> MaterializeResult:
        day = dt.date.fromisoformat(context.partition_key)
        store = archive_store.store()

        def progress(rows: int, size: int) -> None:
            context.log.info(f"{spec.name} {day}: {rows:,} rows, {_size(size)} read so far")

        try:
            with postgres.connect() as conn:
                result = archive_partition(conn, spec, day, store, temp_dir=archive_store.temp_dir,
                                           progress=progress, session_settings=postgres.session_settings(),
                                           overwrite=spec.overwrite or config.overwrite)
        except Exception as exc:
            if not is_retryable(exc):  # retrying cannot help; fail now, without the backoff wait
                raise Failure(description=redact(str(exc), postgres.password), allow_retries=False) from None
            raise
        if result.skipped:
            context.log.info(f"{spec.name} {day}: {result.uri} already holds these {result.rows:,} rows "
                             "(manifest and row count match); nothing uploaded. Set overwrite to archive again.")
        else:
            context.log.info(f"archived {result.rows:,} rows of {spec.name} {day} to {result.uri} "
                             f"({_size(result.bytes)}, {result.rows_per_second:,.0f} rows/s)")
        check = check_result(INTACT_CHECK, store, result.key, recorded(result), deep=config.deep_check)
        return MaterializeResult(metadata=materialization_metadata(result), check_results=[check])

    return archive
