"""Days archived outside Dagster after their sensor run failed, recorded in Dagster by the sensor's tick.

The daemon never launches a run key twice, so a day whose sensor run failed is not requested again; the tick names
it with a remedy, `archive-pipeline archive --table <t> --day <d>`. The command line archives the day but writes no
Dagster record (it does not import Dagster), so every later tick listed the day as failed again, with the command
already followed, and the UI kept the partition missing for good. The tick now reads such a day's manifest and, where
it is this table-day's archive from this database, whole in the store and not removed, records it as materialized
from that manifest, as Dagster's runs record an archive: the partition shows it, the retention schedule sees it.
"""

from __future__ import annotations

import psycopg
from dagster import AssetMaterialization, SensorEvaluationContext, build_resources

from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.keys import table_day_key
from archive_pipeline.core.leftovers import same_source
from archive_pipeline.core.listing import unarchived_days
from archive_pipeline.core.manifest import SourceIdentity
from archive_pipeline.core.source import server_identity
from archive_pipeline.core.store import S3Store
from archive_pipeline.core.verify import load_manifest, object_problems
from archive_pipeline.defs.assets import STATE_TAG, _manifest_metadata

STORE_RESOURCE = "archive_store"


def store_of(context: SensorEvaluationContext) -> S3Store | None:
    """The code location's archive store, where the tick's context names its repository (the daemon's does). The
    sensor does not require the resource: a tick evaluated with the database alone still runs, without this."""
    repository = context.repository_def
    resource = repository.get_top_level_resources().get(STORE_RESOURCE) if repository is not None else None
    if resource is None:
        return None
    with build_resources({STORE_RESOURCE: resource}) as built:
        return getattr(built, STORE_RESOURCE).store()


def archived_outside(store: S3Store, conn: psycopg.Connection, targets: dict, tried: list
                     ) -> tuple[list[AssetMaterialization], list]:
    """The records of the ``tried`` days (the sensor's WantedRuns whose run key is used) now archived in the store,
    and the tried days left. ``targets``: each table's SensorTarget by name. One listing per table tells most days
    without an archive apart (no GET for them); each of the others costs a manifest GET and a HEAD."""
    identity = SourceIdentity(*server_identity(conn)) if tried else None
    events, left = [], []
    for table in dict.fromkeys(wanted.table for wanted in tried):
        target, mine = targets[table], [wanted for wanted in tried if wanted.table == table]
        absent = {day.isoformat() for day in unarchived_days(store, target.spec, [w.partition_key for w in mine])}
        for wanted in mine:
            event = None if wanted.partition_key in absent else _record(store, identity, target, wanted.partition_key)
            (events if event is not None else left).append(event or wanted)
    return events, left


def _record(store: S3Store, identity: SourceIdentity, target, partition: str) -> AssetMaterialization | None:
    """The day's record from its manifest, or None where it is not to be taken for this day's archive: none, another
    table-day's or database's, damaged, removed (a removed day with rows again is not archived), its object not as
    recorded, or the store not answering (the day stays listed as failed, and is looked at again next tick)."""
    spec = target.spec
    day_key = table_day_key(spec, spec.period(partition), store.prefix)
    try:
        manifest = load_manifest(store, day_key, (spec.name, partition))
        if (not manifest or manifest.get("removed") or not same_source(manifest, identity)
                or (manifest.get("object") and object_problems(store, manifest))):
            return None
    except (ArchiveError, ValueError):  # (ManifestError is a ValueError)
        return None
    state = "empty" if manifest.get("empty") else "archived"
    said = (f"{partition}: archived outside Dagster (the command line), recorded from its manifest by the sensor "
            "archive_new_days; this record checked the object's size and ETag, not the rows (Execute archive_intact "
            "for the day to check it)")
    return AssetMaterialization(asset_key=target.asset_key, partition=partition, description=said,
                                metadata={**_manifest_metadata(manifest, store, day_key), "state": state,
                                          "summary": said}, tags={STATE_TAG: state})
