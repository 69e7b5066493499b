"""On-demand check of the stored archive of an asset's latest materialized day, to run from the UI
(or a schedule) long after the day was written: catches objects deleted, replaced or corrupted."""

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetKey,
    Config,
    asset_check,
)
from pydantic import Field

from archive_pipeline.resources import ArchiveStoreResource
from archive_pipeline.verify import verify_archive

STORED_CHECK = "latest_archive_intact"


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
        store = archive_store.store()
        problems = verify_archive(store, meta["object_key"], expected, deep=config.deep)
        return AssetCheckResult(
            passed=not problems,
            description=(f"{event.partition}: " + "; ".join(problems)) if problems
            else f"{event.partition}: archive matches what was recorded",
            metadata={"partition": event.partition or "", "object": store.uri(meta["object_key"]),
                      "deep": config.deep},
        )

    return _check
