"""Days archived outside Dagster after their sensor run failed, recorded in Dagster by the sensor's tick.

The daemon never launches a run key twice, so a day whose sensor run failed is not requested again; the tick names
it with a remedy, `archive-pipeline archive --table <t> --day <d>`. The command line archives the day but writes no
Dagster record (it does not import Dagster), so every later tick listed the day as failed again, with the command
already followed, and the UI kept the partition missing for good. The tick now reads such a day's manifest (where
runs find it: under the table's former format too) and, where it is this table-day's archive of this period from
this database, whole in the store, not removed and written after the day's last run started (an older archive is
the one that run refused: changed since, an overwrite needed), records it as materialized from that manifest, as
Dagster's runs record an archive: the partition shows it, the retention schedule sees it. A day whose manifest it
rejected is not read again while the bucket listing shows that archive unchanged (the sensor keeps what it saw
between ticks, while the code server keeps the definitions loaded); one rejected for its object's HEAD alone is
(a HEAD answer has no checksum and may be passing: remembered, it would keep the day unrecorded for good), and at
most LOOKUPS_PER_TICK manifests are read a tick: failed days do not grow the cost of every tick.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import psycopg
from botocore.exceptions import BotoCoreError, ClientError
from dagster import (AssetMaterialization, DagsterInstance, DagsterRun, RunRecord, RunsFilter, SensorEvaluationContext,
                     build_resources)

from archive_pipeline.core.config import ConfigError, TableSpec
from archive_pipeline.core.errors import ArchiveError, redact
from archive_pipeline.core.keys import day_prefix, table_day_key
from archive_pipeline.core.leftovers import same_source
from archive_pipeline.core.lifecycle import archive_key
from archive_pipeline.core.listing import unarchived_days
from archive_pipeline.core.manifest import SourceIdentity, committed_at, layout_change
from archive_pipeline.core.periods import Period
from archive_pipeline.core.source import server_identity
from archive_pipeline.core.store import S3Store
from archive_pipeline.core.verify import load_stored_manifest, object_problems
from archive_pipeline.defs.assets import STATE_TAG, _manifest_metadata
from archive_pipeline.defs.checks import EMPTY_DAY
from archive_pipeline.defs.resources import ArchiveStoreResource

STORE_RESOURCE = "archive_store"
# a store that does not answer, or cannot be built from its settings: the days stay listed, with a warning (a bug
# of ours, any other exception, fails the tick instead of passing for the store)
STORE_ERRORS = (ArchiveError, BotoCoreError, ClientError, ConfigError)
LOOKUPS_PER_TICK = 100  # manifests read a tick at most (a GET and a HEAD or two each); the others on the next ticks
PARTITION_TAG = "dagster/partition"  # a run of one partition's tag
# a ranged run's tags (a backfill's run of several partitions, by the asset's backfill policy): no PARTITION_TAG
RANGE_TAGS = ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")
# what reading a ranged run's tags as a table's periods raises where they name none (a range of another
# granularity, a malformed or hand-tagged one, past the calendar's last day): the run archives none of its days
RANGE_ERRORS = (ValueError, ArchiveError, OverflowError)
# what a record of the sensor's says was checked (``verified``, as a run's record says it): the command line proves
# nothing against the source, so a deep_check table's archive_intact fails such a day as never proven ("not proven",
# checks.NEVER_PROVEN), naming this cause, where a record without it read "archived before deep_check was set"; an
# empty day has no content to prove (its manifest alone, as archive_intact re-checks it)
OUTSIDE_PROOF = {
    "archived": "not proven: archived outside Dagster by the command line; the sensor's tick that recorded it checked "
                "the object's size and ETag against its manifest, not its rows against the source",
    "empty": f"{EMPTY_DAY} (archived outside Dagster by the command line, recorded by the sensor's tick)",
}


@dataclass(frozen=True)
class Store:
    """The code location's archive store, and its resource (the records link their object as runs link it)."""

    store: S3Store
    resource: ArchiveStoreResource


def store_of(context: SensorEvaluationContext) -> Store | None:
    """The code location's archive store, where the tick's context names its repository (the daemon's does). The
    sensor does not require the resource: a tick evaluated with the database alone still runs, without this."""
    repository = context.repository_def
    resource = repository.get_top_level_resources().get(STORE_RESOURCE) if repository is not None else None
    if resource is None:
        return None
    with build_resources({STORE_RESOURCE: resource}) as built:
        archive_store = getattr(built, STORE_RESOURCE)
        return Store(archive_store.store(), archive_store)


def archived_outside(where: Store, conn: psycopg.Connection, instance: DagsterInstance, targets: dict, tried: list,
                     seen: Collection[str] = ()) -> tuple[list[AssetMaterialization], list, set[str], dict[str, str]]:
    """The records of the ``tried`` days (the sensor's WantedRuns whose run key is used) now archived in the store,
    the tried days left, the marks (:func:`_marks`) of the days whose manifest was rejected, now or (``seen``:
    the last tick's) before and listed unchanged since: those are not read again, and why each table the store did
    not answer for was not looked at (its days stay left). ``targets``: each table's SensorTarget by name. One
    listing per table tells most days without an archive apart (no GET for them). One table's refusal (a 403 on
    its prefix alone) is that table's: the other tables' days are still recorded."""
    identity = SourceIdentity(*server_identity(conn)) if tried else None
    rejected, budget, looked, unanswered = set(), LOOKUPS_PER_TICK, [], {}
    for table in dict.fromkeys(wanted.table for wanted in tried):
        target, mine = targets[table], [wanted for wanted in tried if wanted.table == table]
        etags: dict[str, str] = {}
        try:
            absent = {day.isoformat() for day in unarchived_days(where.store, target.spec,
                                                                 [w.partition_key for w in mine], etags)}
            marks = _marks(where.store, target.spec, identity, [w.partition_key for w in mine], etags)
        except STORE_ERRORS as exc:
            unanswered[table] = _unanswered(exc)
            continue
        rejected |= {mark for mark in marks.values() if mark in seen}
        read = [w.partition_key for w in mine if w.partition_key not in absent and marks.get(w.partition_key)
                not in seen][:budget]
        budget -= len(read)
        looked.append((target, mine, marks, read, etags))
    started = _started(instance, [(target, read) for target, _, _, read, _ in looked])
    events, left = [], [wanted for wanted in tried if wanted.table in unanswered]
    for target, mine, marks, read, etags in looked:
        try:  # (its manifests read, and its objects' HEADs in _record: all of it the table's own)
            found = {day: _taken(where, identity, target, day, started.get((target.spec.name, day)), etags)
                     for day in (wanted.partition_key for wanted in mine) if day in read}
            recorded = {day: _record(where, target, day, *found[day]) for day in found if found[day] is not None}
        except STORE_ERRORS as exc:
            unanswered[target.spec.name] = _unanswered(exc)
            left.extend(mine)
            continue
        for wanted in mine:
            day = wanted.partition_key
            event = recorded.get(day)
            (events if event is not None else left).append(event or wanted)
            if found.get(day) is None and day in read and marks.get(day):  # (rejected by its manifest: the same
                rejected.add(marks[day])                                   # listing, manifest and verdict)
    return events, left, rejected, unanswered


def _unanswered(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {redact(str(exc))}"


def _marks(store: S3Store, spec, identity: SourceIdentity, days: list[str], etags: dict[str, str]) -> dict[str, str]:
    """Each listed day's mark: a digest of what the listing shows under its prefix (every key, with its ETag: its
    manifests, objects and generations) and of what its archive is judged against (the table's period, day column
    and database). Same mark, same verdict: a day's archive rejected once is rejected again. None for a day where
    there was no listing (a few days, a flat layout): read every tick (within LOOKUPS_PER_TICK)."""
    if not etags:
        return {}
    by_prefix: dict[str, list] = {}
    for key, etag in etags.items():
        by_prefix.setdefault(day_prefix(key), []).append((key, etag))
    marks = {}
    for day in days:
        held = sorted(by_prefix.get(day_prefix(table_day_key(spec, spec.period(day), store.prefix)), []))
        judged = (spec.name, day, spec.granularity, spec.timezone, spec.day_column, repr(identity), held)
        marks[day] = hashlib.sha256(repr(judged).encode()).hexdigest()[:16]
    return marks


def _started(instance: DagsterInstance, reads: list[tuple]) -> dict[tuple[str, str], float]:
    """When the latest run of each (table, day) of ``reads`` (each table's SensorTarget and the days read) that
    started did, as a POSIX time; a day whose runs never started is left out. An archive written before is the one
    that run looked at (and refused, the day being missing: stale, changed since). Every run of the day counts,
    whatever job ran it (the sensor's failed one, a re-run from the UI, the shared job's run of several tables, an
    asset backfill's), where it is a run of this location's table (SensorTarget.archived_by), and whether it names
    the day by its partition tag or covers it by its range (a ranged backfill run, :func:`run_keys`): one missed
    had the archive it refused recorded as the remedy followed. A bounded cost whatever the days: one query for
    every table's days by their partition tag (the tick reads at most LOOKUPS_PER_TICK manifests, so at most as
    many days' runs), and :func:`_ranged_runs`'s two."""
    days = sorted({day for _, read in reads for day in read})
    if not days:
        return {}
    looked = [(target, read, sorted(target.spec.period(day) for day in read)) for target, read in reads if read]
    started: dict[tuple[str, str], float] = {}
    for record in [*instance.get_run_records(RunsFilter(tags={PARTITION_TAG: days})), *_ranged_runs(instance, days)]:
        if record.start_time is None:
            continue
        for target, read, within in looked:
            if not target.archived_by(record.dagster_run):
                continue
            try:
                covered = run_keys(target.spec, record.dagster_run, within)
            except RANGE_ERRORS:  # (its range names no period of the table: it archives none of its days)
                continue
            for key in ((target.spec.name, day) for day in covered if day in read):
                started[key] = max(started.get(key, float("-inf")), record.start_time)
    return started


def _ranged_runs(instance: DagsterInstance, days: list[str]) -> Sequence[RunRecord]:
    """The ranged runs whose range may cover one of ``days`` (partition keys, sorted): those ending on or after the
    first one's date (every key starts with one, ``2024-03-10``), of any table; the caller keeps its tables' and
    reads each range as the table's periods. Two queries whatever the days: the distinct range ends the instance
    holds (one a backfill's chunk of days), then the runs with those ends."""
    ends = [end for _, values in instance.get_run_tags(tag_keys=[RANGE_TAGS[1]]) for end in values
            if end[:10] >= days[0][:10]]
    return instance.get_run_records(RunsFilter(tags={RANGE_TAGS[1]: ends})) if ends else []


def run_keys(spec: TableSpec, run: DagsterRun, within: Sequence[Period]) -> set[str]:
    """The partition keys of ``spec``'s table a run archives: its partition tag's, else those of its range (range
    tags) that meet ``within`` (:func:`range_keys`); none for a run with neither. A range that names no periods of
    the table raises one of RANGE_ERRORS (the caller says or skips it)."""
    if run.tags.get(PARTITION_TAG):
        return {run.tags[PARTITION_TAG]}
    if all(run.tags.get(tag) for tag in RANGE_TAGS):
        return range_keys(spec, run, within)
    return set()


def range_keys(spec: TableSpec, run: DagsterRun, within: Sequence[Period]) -> set[str]:
    """The partition keys of a ranged run's range, read as the table's periods, where it meets ``within`` (oldest
    first): stepped from the later start to the earlier end only. A range hand-tagged "from then on" (its end in
    year 9999) stepped whole was ~70 million hours, a tick of tens of minutes and gigabytes, past the daemon's
    timeout: every tick failed, and no table's new day was requested while the run was unfinished."""
    day, last = (spec.period(run.tags[tag]) for tag in RANGE_TAGS)  # (read first: a malformed tag is said)
    if not within:
        return set()
    day, last = max(day, within[0]), min(last, within[-1])
    keys = set()
    while day <= last:
        keys.add(day.isoformat())
        day = day.next()
    return keys


def _taken(where: Store, identity: SourceIdentity, target, partition: str, started: float | None,
           listed: Collection[str]) -> tuple[str, dict] | None:
    """The day's key and manifest where the manifest is to be taken for this day's archive, else None: none,
    damaged, another table-day's, period's (the zone, granularity or day column changed since) or database's,
    removed (a removed day with rows again is not archived), or written before the day's last run started
    (``started``). A store that does not answer raises (STORE_ERRORS): no verdict, looked at again next tick; so
    does one whose read finds no manifest where the tick's listing (``listed``: its keys) shows it, a store
    contradicting itself (remembered as rejected, the day would stay unrecorded while that listing is unchanged)."""
    spec, store = target.spec, where.store
    period = spec.period(partition)
    try:
        day_key = archive_key(store, spec, period, identity=identity)  # its key, else under a former format's
        manifest = load_stored_manifest(store, day_key, (spec.name, partition), listed)
    except ValueError:  # (ManifestError: damaged or another table-day's)
        return None
    if (not manifest or manifest.get("removed") or not same_source(manifest, identity)
            or layout_change(manifest, period, spec.day_column) or not _written_after(manifest, started)):
        return None
    return day_key, manifest


def _record(where: Store, target, partition: str, day_key: str, manifest: dict) -> AssetMaterialization | None:
    """The day's record from its manifest (taken: see :func:`_taken`), or None where its object is not as recorded
    (by two HEADs; a listing showing an object they call missing raises, no verdict). Such a day is not remembered
    as rejected: a HEAD's answer has no checksum and may be passing, so it is read again next tick."""
    store = where.store
    if manifest.get("object") and object_problems(store, manifest):
        return None
    state = "empty" if manifest.get("empty") else "archived"
    said = (f"{partition}: archived outside Dagster (the command line), recorded from its manifest by the sensor "
            "archive_new_days; this record checked the object's size and ETag, not the rows (Execute archive_intact "
            "for the day to check it)")
    return AssetMaterialization(asset_key=target.asset_key, partition=partition, description=said,
                                metadata={**_manifest_metadata(manifest, store, day_key, where.resource),
                                          "state": state, "summary": said, "verified": OUTSIDE_PROOF[state]},
                                tags={STATE_TAG: state})


def _written_after(manifest: dict, started: float | None) -> bool:
    """Whether the archive was written after ``started`` (none: no run of the day started, nothing refused it), by
    the time its manifest records it committed (manifest.committed_at: ``archived_at`` where a version wrote one,
    else its snapshot's, the one every version writes; reading ``archived_at`` alone, no day whose run had started
    was ever recorded). A manifest whose time does not read as one counts as the earliest: not known to be the
    remedy's."""
    return started is None or committed_at(manifest)[0].timestamp() > started
