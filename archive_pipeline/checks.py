"""On-demand check of the stored archive of an asset's latest materialized day, to run from the UI
(or a schedule) long after the day was written: catches objects deleted, replaced or corrupted."""

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetKey,
    Config,
    asset_check,
)
from pydantic import Field

from archive_pipeline.resources import ArchiveStoreResource
from archive_pipeline.store import S3Store
from archive_pipeline.verify import verify_archive

INTACT_CHECK = "archive_intact"  # runs inside every materialization
STORED_CHECK = "latest_archive_intact"  # runs on demand


def check_result(check_name: str, store: S3Store, key: str, expected: dict, *, deep: bool,
                 partition: str | None = None) -> AssetCheckResult:
    """The stored archive compared with what was recorded; the description says what differs."""
    problems = verify_archive(store, key, expected, deep=deep)
    where = f"{partition}: " if partition else ""
    verdict = "; ".join(problems) if problems else \
        f"object, size{', MD5 and row count' if deep else ''} and manifest match what was recorded"
    return AssetCheckResult(check_name=check_name, passed=not problems, severity=AssetCheckSeverity.ERROR,
                            description=where + verdict,
                            metadata={"object": store.uri(key), "deep": deep, "problems": len(problems),
                                      "partition": partition or ""})


class StoredCheckConfig(Config):
    deep: bool = Field(default=False, description="download the object, hash it and count its rows")


def build_stored_archive_check(key: AssetKey) -> AssetChecksDefinition:
    @asset_check(asset=key, name=STORED_CHECK, blocking=False,
                 description="Re-checks the archive of the latest materialized day against its recorded "
                             "size, MD5, row count and manifest.")
    def _check(context: AssetCheckExecutionContext, config: StoredCheckConfig,
               archive_store: ArchiveStoreResource) -> AssetCheckResult:
        records = context.instance.fetch_materializations(key, limit=1).records
        if not records:
            return AssetCheckResult(passed=True, description="nothing archived yet")
        event = records[0].asset_materialization
        meta = {k: v.value for k, v in event.metadata.items()}
        if "object_key" not in meta:
            return AssetCheckResult(passed=False, description=f"materialization of {event.partition} has no object_key")
        expected = {"bytes": meta["compressed_bytes"], "md5": meta["md5"], "rows": meta["dagster/row_count"],
                    "format": meta["format"], "compression": meta["compression"]}
        return check_result(STORED_CHECK, archive_store.store(), meta["object_key"], expected, deep=config.deep,
                            partition=event.partition)

    return _check
