"""Archive one day of one table: source -> format -> compress -> hashed temp file -> object store.

This is the whole write path and it knows nothing of Dagster, so it can be tested, benchmarked and
run from a script or the CLI the same way the asset runs it.

What "archived" guarantees: the manifest at ``<key>.manifest.json`` exists only for a data object
that is complete and verified (size, MD5 of every part and of the whole, ETag), and it records the
content fingerprint of exactly the source rows that the object holds, read in one snapshot. A
re-archive writes the new data under a new generation key and commits by replacing the manifest,
so at every point either the previous object+manifest or the new pair is whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import functools
import datetime as dt
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from archive_pipeline.core import fingerprint
from archive_pipeline.core import keys
from archive_pipeline.core.compression import get_codec
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.discovery import day_children, day_table_parents, partition_may_hold, partition_of_day, \
    source_table, still_detached
from archive_pipeline.core.errors import (ArchiveError, SourceError, UnsupportedTypeError, is_cancellation, is_retryable,
                                          named, note_cancelled, renote_cancelled, without_verdict)
from archive_pipeline.core.formats.common import (
    OTHER_FORMATS,
    Extraction,
    WriteStats,
    explain_value_failure,
    failing_columns,
    is_value_failure,
    refuse_broken_domains,
    refuse_inexact,
    refuse_unreadable,
    refuse_unrestorable,
)
from archive_pipeline.core.leftovers import day_listing, marked_generations, owned_by, same_source, \
    stored_generations, tidy_day, why_not_ours
from archive_pipeline.core.lifecycle import RemovalRefused, refuse_other_cluster, settle_pending_removal
from archive_pipeline.core.listing import listed_once, overlapping_templates
from archive_pipeline.core.locks import require_autocommit, require_lock_held, table_day_lock
from archive_pipeline.core.manifest import (
    ArchiveResult,
    ForeignManifestError,
    ManifestError,
    NewerManifestError,
    SourceIdentity,
    another_period,
    build_manifest,
    current_archive,
    decode_manifest,
    object_key,
    encode_manifest,
    foreign_manifest,
    foreign_objects,
    holds_rows_of,
    inexact_groups,
    loose_manifest,
    manifest_bytes,
    of_another_source,
    other_format_listing,
    owned,
    recorded_source,
    removal_state,
    source_identity,
    stored_object_problems,
    table_definition,
)
from archive_pipeline.core.memory import bound_allocator
from archive_pipeline.core.periods import UNIT, Period, PeriodError, not_over
from archive_pipeline.core.parallel import StreamSlots, free_sessions, open_snapshot_sessions, plan_streams, write_day
from archive_pipeline.core.session_settings import resolved, speaks_utf8
from archive_pipeline.core.sink import temp_archive_file, temp_dir_given, temp_dir_named
from archive_pipeline.core.formats import get_format
from archive_pipeline.core.source import READ_SETTINGS, SNAPSHOT_SETTINGS, Replay, Snapshot, SourceTable, \
    columns_as_archived, composite_signature, day_filter, estimated_bytes, estimated_rows, hold_day, names_brief, \
    names_database_errors, primary_key, printed_names, read_relations, read_snapshot, reads_foreign_tables, \
    same_casts, same_members, same_printed_names, same_read_relations, same_shapes, shape_changes, \
    snapshot_open, snapshot_time, standby_replay, view_calls, wrapped
from archive_pipeline.core.store import MISSING_ON_READ, DownloadError, KeyTakenError, S3Store, S3Upload, etag_text
from archive_pipeline.core.streams import StreamGroup
from archive_pipeline.core.verify import archive_damage, columns_moved

__all__ = ["ArchiveResult", "DayRemovedError", "Existing", "ForeignArchiveError", "LateRowsError", "archive_partition",
           "keeps_existing", "read_existing", "render_key"]

Progress = Callable[[int, int], None]  # (rows so far, formatted bytes so far)
MANIFEST_PUT_ATTEMPTS = 3
# A new day the planner expects to have at least this many rows is fingerprinted by a second session
# while it is read (below it, a connection costs more than the fingerprint: ~1 ms per 1,000 rows).
FINGERPRINT_ALONGSIDE_ROWS = 50_000
# Alongside the read, one backend is enough (the fingerprint of 1M rows takes less CPU than their
# COPY), and parallel workers would only compete with the read for the host's cores.
ALONGSIDE_SETTINGS = {"max_parallel_workers_per_gather": "0"}
# How a manifest's ``kept`` entry begins for a generation kept only because no manifest vouched for it when the day was
# archived again (a possible only copy of rows): a later run retires it once proven to hold that run's very bytes.
_UNVOUCHED = "kept: the manifest before this one"
log = logging.getLogger(__name__)


class LateRowsError(ArchiveError):
    """The day changed in PostgreSQL after it was archived."""

    OVERWRITES = True


class ForeignArchiveError(ArchiveError):
    """The key holds an archive of another table or database: never skipped onto, never overwritten."""


_LATE_AFTER_REMOVAL = ("archive the day again with overwrite to archive the rows there are now (the removed rows' "
                       "archive is kept beside the new one); restore that archive if you need the removed rows back")
# ... where the table changed since (its columns or types): the rows perhaps restored already, no restore advised
_CHANGED_AFTER_REMOVAL = ("archive the day again with overwrite to archive it as the table is now (the removed rows' "
                          "archive is kept beside the new one)")


class DayRemovedError(ArchiveError):
    """The day was removed from the source after it was proven archived; its archive is the only copy."""

    REMEDY = ("nothing to do for this day: it is archived, and its archive is kept; leave it out of archive runs and "
              "backfills (running it again fails the same way). Restore it if you need the rows back")

    DAMAGED_REMEDY = ("restore the archive's object or manifest from a backup of the bucket (its versions, a "
                      "replica); the day's rows are in no other place")

    def __init__(self, message: str, *, manifest_key: str | None = None, damaged: bool = False, **kwargs) -> None:
        kwargs.setdefault("remedy", self.DAMAGED_REMEDY if damaged else self.REMEDY)
        super().__init__(message, **kwargs)
        self.manifest_key = manifest_key  # where the removed day's manifest is (its record is built from it)
        self.damaged = damaged  # its archive, the day's only copy, found damaged: what a check of it would say too

    @property
    def nothing_to_do(self) -> bool:
        """Whether the day has nothing to archive and its archive is kept (its remedy :data:`REMEDY`): no failure of
        the day's, as a removed day whose rows are gone is none (the asset's NOTHING_TO_DO, the command line's
        no-data), whether its rows were dropped or its naming-mode day table detached (see ``_refuse_detached``)."""
        return self.remedy == self.REMEDY


def object_extension(spec: TableSpec) -> str:
    return keys.extension(spec.format, spec.compression)


def render_key(spec: TableSpec, day: Period | dt.date | str, prefix: str = "") -> str:
    """The object key of one day, from the table's key template (the manifest sits at key + .manifest.json)."""
    return keys.table_day_key(spec, day, prefix)


@dataclass(frozen=True)
class Existing:
    """What the store holds for a table-day before this run: a trustworthy manifest or not, and why."""

    manifest: dict | None
    raw: bytes | None  # the manifest's bytes as read, to put back if a re-archive's commit fails
    problem: str | None  # why it cannot be skipped onto as it is (damaged object, unreadable manifest)
    listing: dict[str, dict] | None = None  # the keys beside the day's key: {key: {"ContentLength", "ETag"}}

    @property
    def generation(self) -> int:
        return int(self.manifest.get("generation", 1)) if self.manifest else 0


def read_existing(store: S3Store, key: str, listing: dict[str, dict] | None = None) -> Existing:
    """The manifest at ``key`` and whether its object is still the one it describes.

    One LIST of the keys beside ``key`` (its generations and its manifest) comes first: it says
    whether there is a manifest to read at all, gives the stored object's size and ETag without a
    HEAD, and the generations already stored, so a new day costs one request instead of a GET that
    finds nothing plus a LIST, and a kept day no HEAD (S3, MinIO and R2 list consistently). ``listing``: that
    listing, made already (one listing of a range's days: see listing.day_listings)."""
    if listing is None:
        listing = day_listing(store, key)
    listed = listing is not None and keys.manifest_key(key) in listing
    if listing == {}:  # nothing of this day is stored
        return Existing(None, None, None, listing)
    # Read the manifest when it is listed, and also when other keys of the day are listed without it:
    # a listing has no checksum, and one damaged key name must not pass for "no manifest" (a new
    # generation would then replace the manifest unchecked).
    raw = _get_manifest_bytes(store, keys.manifest_key(key))
    if raw is not None and listed:
        raw, listing = _as_listed(store, key, raw, listing)
    if raw is None and listed:
        raise DownloadError(f"{store.uri(keys.manifest_key(key))} is listed but reading it found nothing: the "
                            "store answered inconsistently (or another run replaced it meanwhile); the run will "
                            "be retried", retryable=True)
    if raw is None:
        return Existing(None, None, None, listing)
    try:
        manifest = decode_manifest(raw)
    except NewerManifestError as exc:  # not damaged: it may record what this version cannot read (a removal)
        raise ArchiveError(f"{store.uri(keys.manifest_key(key))}: {exc.message}; this version neither skips nor "
                           "replaces it, and wrote nothing", retryable=False, remedy=exc.remedy) from None
    except ManifestError as exc:
        return Existing(None, raw, f"manifest {keys.manifest_key(key)} is unreadable: {exc}", listing)
    if problem := foreign_objects(manifest, key):  # never skipped onto, nothing retired by it (see _retire)
        return Existing(manifest, raw, f"manifest {keys.manifest_key(key)} cannot be trusted: {problem}", listing)
    obj = manifest.get("object")
    if obj is None:
        return Existing(manifest, raw, None, listing)  # an empty day: nothing else to check
    head = (listing or {}).get(obj["key"]) or store.head(obj["key"])  # not listed: ask, to be sure
    if head is None:
        return Existing(manifest, raw, f"object {obj['key']} is missing", listing)
    problems = stored_object_problems(head, manifest)
    if problems and obj["key"] in (listing or {}):
        # A listing has no checksum: one byte of a size or ETag damaged on the way would make a good
        # archive look damaged (and be superseded). Only the object's own HEAD may say it is.
        head = store.head(obj["key"])
        if head is None:
            return Existing(manifest, raw, f"object {obj['key']} is missing", listing)
        problems = stored_object_problems(head, manifest)
    return Existing(manifest, raw, "; ".join(problems) or None, listing)


def _as_archived(columns: tuple, recorded: list[dict]) -> tuple:
    """The table's columns as the archive recorded them (its type and nullability): a skipped day is described
    as the archive holds it, not as the table is since (a column widened or made nullable prints the same rows)."""
    by_name = {c.get("name"): c for c in recorded if isinstance(c, dict)}
    return tuple(replace(c, type_name=by_name[c.name].get("pg_type") or c.type_name,
                             not_null=not by_name[c.name].get("nullable", not c.not_null))
                 if c.name in by_name else c for c in columns)


def _as_listed(store: S3Store, key: str, raw: bytes, listing: dict[str, dict]) -> tuple[bytes, dict[str, dict]]:
    """The manifest's bytes and the day's listing, once the bytes are known to be the stored manifest's: a GET
    answered under another ETag than the listing shows (a cache, a replica behind) may be the manifest as it was
    before an overwrite, and the run's tidying would delete the current generation on its word. A listing made
    again breaks the tie (the first may be older than another run's commit, or damaged on the way); a GET that is
    still not the version listed after a second read fails the run, retried, before anything is changed."""
    mkey = keys.manifest_key(key)
    answered = _answered(store, raw)  # (the GET's own: a multipart copy's "<md5>-1" is no MD5 of the bytes)
    if answered is None or etag_text(answered) == etag_text(listing[mkey].get("ETag")):
        return raw, listing
    fresh = day_listing(store, key)
    shown = etag_text(((fresh or {}).get(mkey) or {}).get("ETag")) or None
    if shown is None or etag_text(answered) == shown:
        return raw, fresh if fresh is not None else listing
    again = _get_manifest_bytes(store, mkey)
    if again is not None and etag_text(_answered(store, again)) == shown:
        return again, fresh
    raise DownloadError(f"{store.uri(mkey)}: the GET answered another version of the manifest (ETag "
                        f"{etag_text(answered)}) than the store lists ({shown}), twice: a cache or a replica behind "
                        "answered; nothing was changed, and the run will be retried", retryable=True,
                        cause="the store answered a GET with another version than it lists",
                        remedy="retried automatically; if it persists, check the caching gateways or replication "
                               "between the archiver and the store")


def _answered(store: S3Store, raw: bytes) -> str | None:
    """The ETag the store answered with ``raw`` (None from a store object that does not keep it)."""
    answered = getattr(store, "answered_etag", None)
    return answered(raw) if answered is not None else None


def _get_manifest_bytes(store: S3Store, key: str) -> bytes | None:
    """manifest.manifest_bytes, through one name in this module (a test swaps it to fail a read)."""
    return manifest_bytes(store, key)


def resolve_period(spec: TableSpec, day: Period | dt.date | str) -> Period:
    """The table's period for a partition key (or date), or an :class:`ArchiveError` naming table and key."""
    try:
        return spec.period(day)
    except PeriodError as exc:
        raise ArchiveError(f"{spec.name} {day}: {exc}", table=spec.name, day=str(day), retryable=False) from None


@speaks_utf8()
@names_database_errors
def archive_partition(conn: psycopg.Connection, spec: TableSpec, day: Period | dt.date | str, store: S3Store, *,
                      temp_dir: str | None = None, progress: Progress | None = None, progress_every: float = 10.0,
                      session_settings: dict[str, str] | None = None, overwrite: bool | None = None,
                      stream_slots: StreamSlots | None = None, former_keys: Sequence[str] = ()) -> ArchiveResult:
    """Archive ``day`` of ``spec`` to ``store`` and describe what was stored.

    The rows, their fingerprint and the table's description are read in one REPEATABLE READ
    snapshot whose transaction ends when the rows are read; parts upload while rows are still read;
    any failure removes the temp file and aborts the upload. An archive whose manifest matches
    this table and whose fingerprint equals the source's now is kept (``skipped``) unless
    ``overwrite``; one whose day has changed raises :class:`LateRowsError`. Errors come out as
    :class:`ArchiveError` naming the table and day and saying whether a retry may help.

    ``stream_slots`` (the Dagster layer's: slots of the table's pool) is asked for a slot for each stream
    beyond the first before the streams start; the day reads with as many streams as it grants.

    ``former_keys``: keys the day was archived under before, where the configuration no longer renders them (the
    Dagster layer's: the key its last materialization of the day recorded, before a change of key_template or
    prefix); a removal marked there is honoured as one at the day's own key is (see ``_removed_elsewhere``).
    """
    require_autocommit(conn, "archiving a day")  # (its snapshot's transaction is its own, begun and ended here)
    overwrite = spec.overwrite if overwrite is None else overwrite
    day = resolve_period(spec, day)  # a partition key, date or period: resolved once, handed down
    standby = conn.info.parameter_status("in_hot_standby") == "on"  # reported by the server (14+), no query
    bound_allocator()
    try:
        with table_day_lock(conn, spec.name, day):
            require_lock_held(conn, spec.name, day)  # at once: a role that may not read pg_locks fails before any work
            return _Archiving(conn, spec, day, store, temp_dir=temp_dir, progress=progress,
                              progress_every=progress_every, stream_slots=stream_slots,
                              settings=resolved(conn, {**SNAPSHOT_SETTINGS, **(session_settings or {})}),
                              former_keys=former_keys).run(overwrite)
    except ArchiveError as exc:
        named(exc, spec.name, day.isoformat(), conn.info.password)
        raise
    except Exception as exc:
        raise wrapped(exc, conn, spec, day.isoformat(), standby=standby,
                      temp_dir=temp_dir_given(temp_dir) or temp_dir_named()) from None
    except BaseException as exc:  # cancelled (Ctrl-C, SIGTERM, a terminated run): cleaned up on the way out
        note_cancelled(exc, spec.name, day.isoformat(), "archiving")
        raise


def _bound_to_its_transaction(conn: psycopg.Connection, table: SourceTable, where) -> str:
    """Why the day's values are only what the transaction that reads them sees ('' if they are the snapshot's
    alone): a foreign table's rows (a remote snapshot per local transaction), a view's values (its query may call
    now(), txid_current(), pg_backend_pid(): stable in a transaction, another one's in a second session sharing
    the snapshot). Such a day is fingerprinted in the transaction that reads it, never alongside."""
    if reads_foreign_tables(conn, table, where):
        return "the day reads a foreign table"
    if table.relkind == "v":
        return "the day is read through a view, whose values may be its transaction's (now(), txid_current())"
    return ""


def keeps_existing(conn: psycopg.Connection, spec: TableSpec, day: Period | dt.date, store: S3Store, existing: Existing,
                   identity: SourceIdentity, table: SourceTable, fp: fingerprint.Fingerprint, overwrite: bool) -> bool:
    """The archiver's own rule for what is already stored, for callers that only plan (a dry run):
    True = skip (identical), False = archive (again); raises what ``archive_partition`` would raise
    (another table's or day's archive, changed content, a removed day, a removed period of the table's former
    granularity that overlaps it)."""
    day = resolve_period(spec, day)
    archiving = _planning(conn, spec, day, store)
    keep = _keeps(archiving, conn, day, existing, identity, table, fp, overwrite)
    if not keep:  # (what the run refuses before anything of the period is published)
        archiving._refuse_removed_in_overlapping(existing, table, fp, overwrite)
    return keep


def _keeps(archiving: _Archiving, conn: psycopg.Connection, day: Period, existing: Existing, identity: SourceIdentity,
           table: SourceTable, fp: fingerprint.Fingerprint, overwrite: bool) -> bool:
    """:func:`keeps_existing`, but for a removal of an overlapping period of the table's former granularity."""
    archiving._refuse_foreign(existing, overwrite)
    if existing.manifest is None and existing.problem is None:
        elsewhere = archiving._removed_elsewhere(existing)
        if elsewhere is not None:  # removed under the table's former format or codec: the same rule there
            archiving._refuse_removed_elsewhere(elsewhere, table, fp, overwrite)
            return False
        before = None if overwrite else archiving._archived_elsewhere(existing)  # (as the run: see run)
        return before is not None and archiving._keep(before[1].manifest, identity, table, fp, overwrite)
    elsewhere = archiving._removed_elsewhere(existing)
    if existing.problem is not None:  # damaged: never kept, and replaced only where the run's rules let it
        archiving._refuse_damaged(existing, identity, fp, overwrite)
        if elsewhere is not None:
            archiving._refuse_removed_elsewhere(elsewhere, table, _fingerprint_of(conn, table, day, fp, elsewhere),
                                                overwrite)
        return False
    before = archiving._current_elsewhere(existing, elsewhere, overwrite)  # (as the run does: see run)
    if elsewhere is not None and (before is not None or not _same_rows(existing.manifest, table, fp)):
        archiving._refuse_removed_elsewhere(elsewhere, table, _fingerprint_of(conn, table, day, fp, elsewhere),
                                            overwrite)
    if before is not None:  # a later archive of the day under another format decides, as in the run
        return archiving._keep(before[1].manifest, identity, table, _fingerprint_of(conn, table, day, fp, before[1]),
                               overwrite)
    return archiving._keep(existing.manifest, identity, table, fp, overwrite)


def _fingerprint_of(conn: psycopg.Connection, table: SourceTable, day: Period, fp: fingerprint.Fingerprint,
                    other: Existing) -> fingerprint.Fingerprint:
    """``fp``, or the day's fingerprint again in the algorithm ``other``'s manifest records (an older version's
    archive under another key is compared in its own), for a plan (see ``_Archiving._in_algorithm_of``)."""
    algorithm = _Archiving._algorithm(other, True)
    return fp if algorithm == fp.algorithm else fingerprint.compute(
        conn, table.identifier, table.columns, day_filter(table, day), algorithm)


def archived_elsewhere(conn: psycopg.Connection, spec: TableSpec, day: Period | dt.date, store: S3Store,
                       existing: Existing) -> tuple[str, Existing] | None:
    """(key, what is there) of the day's archive under the table's former format or codec where nothing is at
    its key now (see ``_Archiving._archived_elsewhere``): what a run decides on, for a plan."""
    return _planning(conn, spec, resolve_period(spec, day), store)._archived_elsewhere(existing)


def removed_elsewhere(conn: psycopg.Connection, spec: TableSpec, day: Period | dt.date, store: S3Store,
                      existing: Existing) -> Existing | None:
    """What is under another format's or codec's key where a day with nothing at its key was removed there, or
    where a finer period of the table's former granularity that overlaps the day (with rows in the source) was
    removed (a run would then apply that removal's rule, see :func:`keeps_existing`), or None: for callers that
    only plan."""
    archiving = _planning(conn, spec, resolve_period(spec, day), store)
    return archiving._removed_elsewhere(existing) or archiving._removed_in_overlapping(existing, empty=False)


def compared_algorithm(existing: Existing) -> str:
    """The fingerprint algorithm a run compares ``existing`` (an archive found elsewhere) in: its own."""
    return _Archiving._algorithm(existing, True)


def _planning(conn: psycopg.Connection, spec: TableSpec, day: Period, store: S3Store) -> _Archiving:
    """An archive attempt that only decides (a plan's questions of what a run would do), never runs."""
    return _Archiving(conn, spec, day, store, temp_dir=None, progress=None, progress_every=0, settings={})


def _same_rows(manifest: dict, table: SourceTable, fp: fingerprint.Fingerprint) -> bool:
    """Whether ``manifest`` records exactly the rows ``fp`` fingerprints now."""
    # the same values under other column names (two of one type that swapped names) are not the same rows
    names = [c["name"] for c in manifest.get("columns", [])]
    # (a day of no rows has no values a column could differ in: an empty day stays empty after a migration)
    return manifest.get("fingerprint") == str(fp) and (names == [c.name for c in table.columns] or fp.rows == 0)


# What an archive's manifest that records no column's exactness is: not proven exact (see _exactness_unrecorded).
_EXACTNESS_UNRECORDED = ("its manifest, written by an older archive_pipeline, records no column's encoding: not proven "
                         "exact")


def _exactness_unrecorded(manifest: dict) -> list[str]:
    """The columns whose exactness ``manifest`` does not record (one written before manifests recorded each
    column's encoding): taken for exact, a strict table skipped onto an archive that may have changed a value (a
    json's line break in JSONL), and a skip reported the day exact. Not proven exact, they are refused and
    reported as a recorded inexact column is."""
    return [c.get("name") for c in manifest.get("columns", []) if "exact" not in c]


def _writer_version(manifest: dict) -> str:
    """The release that wrote an archive, as its manifest says (a field nothing validates: a resealed manifest may
    name its writer as one string), or "unknown"."""
    archiver = manifest.get("archiver")
    version = archiver.get("version") if isinstance(archiver, dict) else None
    return version if isinstance(version, str) and version else "unknown"


class _Archiving:
    """One archive attempt of one table-day; ``run`` is the sequence of steps in order."""

    def __init__(self, conn: psycopg.Connection, spec: TableSpec, day: dt.date, store: S3Store, *,
                 temp_dir: str | None, progress: Progress | None, progress_every: float,
                 settings: dict[str, str], stream_slots: StreamSlots | None = None,
                 former_keys: Sequence[str] = ()) -> None:
        self.conn, self.spec, self.day, self.store = conn, spec, day, store
        self.stream_slots = stream_slots
        self.temp_dir, self.progress, self.progress_every, self.settings = temp_dir, progress, progress_every, settings
        self.key = render_key(spec, day, store.prefix)
        self.manifest_key = keys.manifest_key(self.key)
        self.former_keys = [k for k in dict.fromkeys(former_keys) if k != self.key]
        # a manifest read at another key than this one -> its manifest key (held with the manifest, so its id is its own)
        self._read_from: dict[int, tuple[dict, str]] = {}
        self._manifest_settled = True  # no manifest write so far can still land (see _put_manifest)
        self._tidied: set[str] = set()  # the stray generations _tidy deleted (free to be written again)
        self.started = time.perf_counter()
        self.streams = ""  # how the day was split among parallel_streams (see _streams_note)
        self._replay: Replay | None | bool = False  # a standby's replay, asked once the snapshot is taken (False: not yet)
        # (the day's listing, its keys under other formats, the keys the listings of them show)
        self._other_formats: tuple[dict, list[str], Iterable[str]] | None = None

    def run(self, overwrite: bool) -> ArchiveResult:
        existing = read_existing(self.store, self.key)
        self._refuse_foreign(existing, overwrite)  # first: another table-day's pending mark is not ours to settle
        if removal_state(existing.manifest) == "pending" and self._settles_here(existing):
            # a removal that did not finish: settled first (completed if it committed, else taken back),
            # so an unfinished removal never passes for a removed day, nor a removed one for archivable
            settle_pending_removal(self.conn, self.spec, self.day, self.store, temp_dir=self.temp_dir)
            existing = read_existing(self.store, self.key)
            self._refuse_foreign(existing, overwrite)
        self._tidy(existing)
        self._tidy_former(existing)
        fmt = get_format(self.spec.format, self.spec.compression, self.spec.compression_level)
        codec = get_codec("none" if fmt.compresses_internally else self.spec.compression)
        upload: S3Upload | None = None
        published: str | None = None
        try:
            with temp_archive_file(self.temp_dir, suffix=f".{object_extension(self.spec)}") as sink:
                with read_snapshot(self.conn, self.settings) as snapshot:
                    self._refuse_stale_standby(None)  # (where the standby's replay stood as the snapshot was taken)
                    self._refuse_unended(snapshot)
                    declarative = self.spec.partitioning.mode == "declarative"
                    children = day_children(self.conn, self.spec, self.day) if declarative else []
                    table = source_table(self.conn, self.spec, self.day)
                    where = day_filter(table, self.day)
                    hold_day(self.conn, table, where, functools.partial(partition_may_hold, self.conn, self.spec,
                                                                        self.day) if declarative else None)
                    labels = printed_names(self.conn, table, where)
                    read = read_relations(self.conn, table)
                    composites = composite_signature(self.conn, table)
                    identity = source_identity(self.conn)
                    fp: fingerprint.Fingerprint | None = None
                    fp_seconds = 0.0
                    elsewhere = self._removed_elsewhere(existing)
                    before = self._current_elsewhere(existing, elsewhere, overwrite)
                    decides = elsewhere is not None or before is not None or \
                        self._decided_by_fingerprint(existing, overwrite)
                    estimate = None if decides else estimated_rows(self.conn, table, where)
                    if decides or estimate < FINGERPRINT_ALONGSIDE_ROWS:
                        # first: it decides whether the day is read at all, or the day is too small to pay
                        # for a second session (otherwise ``_read`` takes it while the rows stream)
                        # (this key's archive decides first; the other's, below, in its own algorithm)
                        # (superseded by a later archive under another format: that one decides, see before)
                        here = existing if existing.manifest is not None and existing.problem is None and \
                            before is None else None
                        decider = here or elsewhere or (before or (None, existing))[1]
                        algorithm = self._algorithm(decider, decides)
                        # a column retyped since as the README allows hashes as that archive's, as compare does
                        hashed = fingerprint.as_archived(self.conn, table.columns, (decider.manifest or {}).get(
                            "columns") or () if decides else (), algorithm)
                        fp, fp_seconds = self._timed_fingerprint(self.conn, table, where, algorithm, hashed)
                        if here is not None:
                            if elsewhere is not None and not _same_rows(existing.manifest, table, fp):
                                self._refuse_removed_elsewhere(elsewhere, table, self._in_algorithm_of(
                                    elsewhere, table, where, fp), overwrite)
                            if self._keep(existing.manifest, identity, table, fp, overwrite):
                                return self._skipped(existing.manifest, table, snapshot, fp_seconds)
                        else:
                            self._refuse_damaged(existing, identity, fp, overwrite)
                            if elsewhere is not None:
                                self._refuse_removed_elsewhere(elsewhere, table, fp, overwrite)
                            if before is not None and self._keep(before[1].manifest, identity, table, fp, overwrite):
                                # the day's current archive, under another format or key, holds these rows (a
                                # removed one's rows back exactly): archived
                                return self._skipped(before[1].manifest, table, snapshot, fp_seconds,
                                                     keys.manifest_key(before[0]))
                        if fp.algorithm != fingerprint.ALGORITHM or hashed != list(table.columns):
                            # decided by an older archive's algorithm, or its types: the new generation records
                            # the current one over the columns as they are (in the same snapshot)
                            fp, again = self._timed_fingerprint(self.conn, table, where)
                            fp_seconds += again
                    definition = table_definition(table.columns, primary_key(self.conn, table),
                                                  partition_of_day(self.spec, children),
                                                  day_table_parents(self.conn, self.spec, table))
                    generation = self._generation(existing, fp)
                    data_key = keys.generation_key(self.key, generation)
                    encodings = fmt.encodings(table)
                    if self.spec.strict:
                        refuse_inexact(self.spec.format, table, encodings)
                    self._warn_rows_outside(table, where)
                    if fp is None or fp.rows:
                        refuse_unrestorable(table)
                        refuse_unreadable(self.conn, table, where)
                        refuse_broken_domains(self.conn, table, where)
                    no_rows = WriteStats(output_types={c.name: "text" for c in table.columns}, encodings=encodings)
                    if fp is not None and fp.rows == 0:
                        stats = no_rows
                        if existing.listing is None:  # else _tidy saw to a killed run's upload (its marker)
                            # nothing is uploaded, so nothing else would end a killed run's upload of the key
                            self.store.abort_stale_uploads_quietly(data_key)
                    else:
                        upload = self.store.begin(
                            data_key, content_type=fmt.content_type, content_encoding=codec.content_encoding,
                            metadata={"table": self.spec.name, "day": self.day.isoformat(),
                                      "format": self.spec.format, "compression": self.spec.compression},
                            stale_uploads=existing.listing is None, fresh=True,
                            source=(identity.database, identity.system_identifier),
                            expected_size=estimated_bytes(
                                self.conn, table, where, fp.rows if fp is not None else 0,
                                fmt.row_overhead(table),  # (what the format adds to a row's text: JSONL's names)
                                fmt.text_escapes)  # (and writes for a character of it: JSON's escapes)
                            if self.store.equal_parts else None)
                        upload.still_owned = self._holds_day  # (its upload marker: see S3Upload._unmark_own)
                        sink.on_grow = lambda size: upload.grow(sink.fd, size)
                        stats, fp, fp_seconds = self._read(fmt, codec, table, where, snapshot, sink, fp, fp_seconds,
                                                           estimate)
                        if stats.rows != fp.rows:
                            # a relation that joined the table since (an ATTACH takes no lock the day's read holds)
                            # is the likeliest cause the catalog can still name: said as such where it can
                            if snapshot_open(self.conn):
                                same_members(self.conn, table, where)
                            raise ArchiveError(
                                f"read {stats.rows:,} rows but the snapshot's fingerprint counts {fp.rows:,}; "
                                "nothing was published", retryable=True,
                                cause="the table changed under the read in a way snapshots do not isolate",
                                remedy="retried automatically; TRUNCATE, ALTER TABLE that rewrites it, or "
                                       "dropping, detaching or attaching a partition of the day during a run causes "
                                       "this: run such changes outside the table's archive runs (if none ran, please "
                                       "report this)")
                        if fp.rows == 0:  # fingerprinted alongside: an empty day after all, nothing to publish
                            upload.abort()
                            upload, stats = None, no_rows
                    self._refuse_removed_in_overlapping(existing, table, fp, overwrite)  # (before it is published)
                extracted = time.perf_counter()  # the read transaction has ended here
                same_printed_names(self.conn, table, labels)
                # (a session killed meanwhile has lost its lock: said so before the next question fails for it)
                require_lock_held(self.conn, self.spec.name, self.day)
                same_casts(self.conn, table)
                same_shapes(self.conn, table, composites, where)
                same_read_relations(self.conn, table, read)
                stored = upload.finish(sink.fd, sink.size, sink.md5) if upload is not None else None
                upload, published = None, stored.key if stored is not None else None
                result = self._result(table, snapshot, fmt, codec, stats, sink, stored, fp, fp_seconds, generation,
                                      extracted)
            require_lock_held(self.conn, self.spec.name, self.day)
            published = None  # from here on, _commit withdraws what it cannot commit
            self._commit(result, identity, definition, existing)
            return result
        except BaseException as exc:
            if getattr(self, "_committed", False):  # its manifest is written: cancelled while tidying after it
                note_cancelled(exc, self.spec.name, self.day.isoformat(), "tidying")
                _carry_committed(exc, result)
            if upload is not None:
                upload.abort()
            if published is not None:  # complete, but never named by a manifest of ours: withdraw it
                self._withdraw_unnamed(published, exc)
            raise

    def _withdraw_unnamed(self, key: str, exc: BaseException) -> None:
        """Delete the object this run published but did not commit, unless the day's manifest names it: a run
        that took the day after this one lost its lock may have written the very same bytes at the same key
        (the same rows, the same generation), found there by this one as its own, and committed them."""
        try:
            raw = _get_manifest_bytes(self.store, self.manifest_key)
        except Exception:  # noqa: BLE001 - the store cannot say: left for the next run's tidy
            exc.add_note(f"cleanup: {self.store.uri(key)} is left for the next run of the day (the day's manifest "
                         "could not be read to tell whether another run committed it)")
            return
        try:
            named = raw is not None and (decode_manifest(raw).get("object") or {}).get("key") == key
        except Exception:  # noqa: BLE001 - a manifest that cannot be read names nothing
            named = False
        if named:
            exc.add_note(f"{self.store.uri(key)} is left as it is: the day's manifest names it (another run "
                         "committed the same object)")
        else:
            self.store.delete_quietly(key, exc)

    def _tidy(self, existing: Existing) -> None:
        """Remove what earlier runs of this day left behind, before anything else (see
        :func:`leftovers.tidy_day`): a manifest that fails its checks names nothing worth keeping. The day's keys
        under other formats and codecs are :meth:`_tidy_former`'s (each only where it is this table-day's)."""
        manifest = existing.manifest if existing.problem is None else None
        self._tidied |= tidy_day(self.store, self.key, existing.listing, manifest, source_identity(self.conn),
                                 self._label, owner=self._owner)

    def _tidy_former(self, existing: Existing) -> None:
        """Tidy the day's keys under the table's former formats, codecs or key_template too (the listing shows them
        beside its key, or ``former_keys`` names them): a run killed there before the table changed left its
        upload, marker or uncommitted generation, and no run of the day comes to that key again. Only where what
        is there is this table-day's (:func:`leftovers.owned_by`): such a key may be another table's (one whose
        keys differ from this one's only by the extension, in another configuration), whose runs this run's lock
        does not exclude."""
        former = [*self._listed_other_formats(existing), *self.former_keys]
        label = self._label
        for other in dict.fromkeys(k for k in former if k != self.key):
            try:
                there = read_existing(self.store, other)
            except Exception:  # noqa: BLE001 - leftovers cost storage, not correctness: the next run looks again
                continue
            if owned_by(self.store, other, there.listing, there.raw, self._owner, label):
                manifest = there.manifest if there.problem is None else None
                self._tidied |= tidy_day(self.store, other, there.listing, manifest, source_identity(self.conn), label,
                                         owner=self._owner)

    @property
    def _label(self) -> str:
        """This run's table-day, as log lines name it."""
        return f"{self.spec.name} {self.day}"

    @property
    def _owner(self) -> tuple[str, str]:
        """This run's table-day as manifests and upload markers name it (its lock's)."""
        return self.spec.name, self.day.isoformat()

    def _in_algorithm_of(self, other: Existing, table: SourceTable, where, fp: fingerprint.Fingerprint
                         ) -> fingerprint.Fingerprint:
        """``fp``, or the day's fingerprint again in the algorithm ``other``'s manifest records (an archive under
        another key written by an older version): a fingerprint compares only with one of its algorithm."""
        algorithm = self._algorithm(other, True)
        return fp if algorithm == fp.algorithm else self._timed_fingerprint(self.conn, table, where, algorithm)[0]

    def _holds_day(self) -> bool:
        """Whether this run's session still holds the table-day lock (a session that ended took it along)."""
        if self.conn.closed or self.conn.broken or \
                self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            return False
        try:
            require_lock_held(self.conn, self.spec.name, self.day)
        except Exception:  # noqa: BLE001 - not known to hold it
            return False
        return True

    def _timed_fingerprint(self, conn: psycopg.Connection, table: SourceTable, where,
                           algorithm: str = fingerprint.ALGORITHM, columns: Sequence | None = None
                           ) -> tuple[fingerprint.Fingerprint, float]:
        """The day's fingerprint in ``conn``'s snapshot (over ``columns``: the table's, or as an archive recorded
        them, see fingerprint.as_archived), and how long PostgreSQL took to compute it; a value PostgreSQL cannot
        convert is named by column, as the formats do."""
        started = time.perf_counter()
        conn.execute("SAVEPOINT archive_fingerprint")
        try:
            fp = fingerprint.compute(conn, table.identifier, table.columns if columns is None else columns, where,
                                     algorithm)
        except psycopg.Error as exc:
            if conn.closed or not is_value_failure(exc):
                raise
            conn.execute("ROLLBACK TO SAVEPOINT archive_fingerprint")
            with fingerprint.canonical_settings(conn):
                culprits, found = failing_columns(conn, table, where, [
                    fingerprint.column_text(c) for c in table.columns])
            raise explain_value_failure(self.spec.format, table, found or exc, culprits) from None
        conn.execute("RELEASE SAVEPOINT archive_fingerprint")
        return fp, time.perf_counter() - started

    @staticmethod
    def _algorithm(existing: Existing, decides: bool) -> str:
        """The fingerprint algorithm to compute first: the stored manifest's where the fingerprint is
        compared with it (``decides``: an archive written before the current algorithm is still
        proven or refused by its own), else the current one."""
        if not decides:
            return fingerprint.ALGORITHM
        return fingerprint.algorithm_for((existing.manifest or _loose_manifest(existing) or {}).get("fingerprint"))

    def _decided_by_fingerprint(self, existing: Existing, overwrite: bool) -> bool:
        """Whether the day's fingerprint must be known before it is read: to skip onto a manifest
        (or refuse a changed or removed day), or where data of the day is stored without a
        readable manifest (an empty source must then be refused before anything is written). A
        first archive, or an overwrite of a readable archive of a day not removed, reads the day
        whatever its fingerprint, so a second session in the snapshot can fingerprint it while it is
        read (``_read``): the fingerprint then costs PostgreSQL CPU instead of wall time."""
        if existing.raw is None:
            return bool(self._stored_generations(existing.listing))
        manifest = existing.manifest
        return not (overwrite and manifest is not None and existing.problem is None and not manifest.get("removed"))

    def _read(self, fmt, codec, table: SourceTable, where, snapshot, sink, fp: fingerprint.Fingerprint | None,
              fp_seconds: float, estimate: int | None) -> tuple[WriteStats, fingerprint.Fingerprint, float]:
        """The day's rows through the format into ``sink``, and the day's fingerprint: the one taken
        first, or one taken while the rows are read (by a second session in the snapshot; where
        none can be opened, e.g. at a connection limit, it is taken first after all)."""
        # the readers' settings: the snapshot's, and rows in the relation's order (see source.READ_SETTINGS)
        extraction = Extraction(conn=self.conn, table=table, where=where, snapshot=snapshot,
                                chunk_rows=self.spec.chunk_size, settings={**self.settings, **READ_SETTINGS},
                                progress=self.progress, progress_every=self.progress_every, strict=self.spec.strict)
        plan = plan_streams(self.conn, table, where, self.day, self.spec.parallel_streams, estimate)
        reason = plan.reason
        # the sessions the connection limits leave: asked only when more than this one is wanted (a round trip)
        free = free_sessions(self.conn) if plan.streams > 1 or fp is None else 0
        if plan.streams > 1 and _readers(fmt, plan) > free:
            # as many streams as the connection limits leave room for: more would fail every attempt
            reason = f"{plan.streams} planned, {free} more session(s) fit the connection limits"
            plan = plan_streams(self.conn, table, where, self.day, max(1, free), estimate)
        with contextlib.ExitStack() as slots:
            if plan.streams > 1 and self.stream_slots is not None:
                granted = 1 + slots.enter_context(self.stream_slots(plan.streams - 1))
                if granted < plan.streams:  # the pool is busy: read with the slots it has, rather than wait
                    reason = f"{plan.streams} planned, the pool had {granted} slot(s) for them"
                    plan = plan_streams(self.conn, table, where, self.day, granted, estimate)
            self.streams = _streams_note(self.spec.parallel_streams, plan.streams, reason)
            if self.streams:
                log.info("%s %s: %s", self.spec.name, self.day, self.streams)
            return self._read_planned(fmt, codec, table, where, extraction, plan, free, sink, fp, fp_seconds,
                                      slots.close)

    def _read_planned(self, fmt, codec, table: SourceTable, where, extraction: Extraction, plan, free: int, sink,
                      fp: fingerprint.Fingerprint | None, fp_seconds: float, release_slots: Callable[[], None]
                      ) -> tuple[WriteStats, fingerprint.Fingerprint, float]:
        """``_read`` once the streams are settled: the rows, and the fingerprint beside them if there is room."""
        readers = _readers(fmt, plan)

        def write() -> WriteStats:
            try:
                return write_day(fmt, codec, self.spec.compression_level, extraction, plan, sink, self.temp_dir)
            finally:
                # the streams' sessions are closed: their slots of the pool go back now (README), not when the
                # fingerprint alongside ends (often later), while the pool would count sessions that are gone
                release_slots()

        bound = _bound_to_its_transaction(self.conn, table, where)
        if fmt.reads_in_own_session and bound:
            # the reader's session sees the foreign rows in a remote transaction of its own, later than this
            # session's (a view's now() is its own transaction's): the fingerprint that describes what it reads is
            # taken there (one taken first decided only whether to read; the remote rows may have changed since)
            log.info("%s %s: fingerprinting in the reader's session: %s", self.spec.name, self.day, bound)
            extraction.fingerprint_in_reader = True
            stats = write()
            return stats, extraction.fingerprint, extraction.fingerprint_seconds
        if fp is None and free - readers < 1:  # no room for a fingerprint session beside the readers
            log.info("%s %s: fingerprinting before the read: %d free session(s), %d reader(s)", self.spec.name,
                     self.day, free, readers)
            fp, fp_seconds = self._timed_fingerprint(self.conn, table, where)
        if fp is None and bound:
            # a second session would see the foreign rows in a remote snapshot of its own (a view's now() in a
            # transaction of its own): this one's, first
            log.info("%s %s: fingerprinting before the read: %s", self.spec.name, self.day, bound)
            fp, fp_seconds = self._timed_fingerprint(self.conn, table, where)
        if fp is not None:
            extraction.expected_rows = fp.rows  # the same snapshot: these are all the rows there are
            return write(), fp, fp_seconds
        try:
            side = open_snapshot_sessions(self.conn, extraction.snapshot.snapshot_id, 1,
                                          {**self.settings, **ALONGSIDE_SETTINGS}, table, where)[0]
        except psycopg.OperationalError as exc:
            if self.conn.broken or self.conn.info.transaction_status == TransactionStatus.INERROR:
                raise  # the snapshot's own session failed (a timeout on its statement, a cancel), not a connect
            log.info("%s %s: fingerprinting before the read, no second session: %s", self.spec.name, self.day, exc)
            fp, fp_seconds = self._timed_fingerprint(self.conn, table, where)
            extraction.expected_rows = fp.rows
            return write(), fp, fp_seconds
        def write_then_release() -> WriteStats:
            stats = write()
            # Every row is read: the snapshot's transaction ends now, not when the fingerprint alongside does
            # (often later: it costs more than the COPY), since meanwhile the session would sit idle in it and
            # idle_in_transaction_session_timeout end it. The fingerprint's session imported the snapshot.
            extraction.snapshot.release()
            return stats

        stats, (fp, fp_seconds) = self._alongside(side, write_then_release, table, where)
        return stats, fp, fp_seconds

    def _alongside(self, side: psycopg.Connection, write: Callable[[], WriteStats], table: SourceTable,
                   where) -> tuple[WriteStats, tuple[fingerprint.Fingerprint, float]]:
        """``write`` here and the fingerprint in ``side`` at once; a failed write cancels the
        fingerprint at once (a failed fingerprint fails the day when the write has ended)."""
        group = StreamGroup([lambda: None, side.cancel_safe])

        def fingerprint_day() -> tuple[fingerprint.Fingerprint, float]:
            timed = self._timed_fingerprint(side, table, where)
            same_members(side, table, where)  # nothing joined the table the readers planned after the locks
            side.execute("COMMIT")
            group.finished(1)
            return timed

        try:
            stats, timed = group.run([write, fingerprint_day])
        finally:
            side.close()
        return stats, timed

    # --- deciding what an existing archive means -------------------------------------------------

    def _refuse_foreign(self, existing: Existing, overwrite: bool) -> None:
        """Another table's or day's archive at our key is never skipped onto or replaced; one in another
        format or codec (the configuration changed, the template has no {ext}) only with overwrite."""
        manifest = existing.manifest
        if manifest is None:
            return
        try:
            owned(manifest, self.spec.name, self.day.isoformat())
        except ForeignManifestError as exc:  # the readers' refusal, in the same words
            raise ForeignArchiveError(f"{self.store.uri(self.key)}: {exc.message}; this run neither skips nor "
                                      "overwrites it", retryable=False, remedy=exc.remedy) from None
        other = another_period(manifest, self.day)
        if other is not None and not overwrite:
            # the same key for another period (a day in another zone, a month's first day): other rows, not
            # this period's changed ones
            raise ForeignArchiveError(
                f"{self.store.uri(self.key)}: {other}; set overwrite to replace it, or give the table a "
                "key_template (another prefix, say) that keeps the new periods apart from the old", retryable=False,
                needs_overwrite=True)
        then = (manifest.get("format"), manifest.get("compression"))
        if then != (self.spec.format, self.spec.compression) and not overwrite:
            raise ForeignArchiveError(
                f"{self.store.uri(self.key)} holds this day archived as {then[0]}/{then[1]}, and the table is now "
                f"configured as {self.spec.format}/{self.spec.compression}; set overwrite to replace it",
                retryable=False, needs_overwrite=True)

    def _removed_elsewhere(self, existing: Existing) -> Existing | None:
        """The day's archive under another format's or codec's key (one before the table's configuration
        changed), where its manifest marks the day removed from the source; None if there is none.

        Where this key holds nothing (the day is then new here), or an archive not marked removed (written
        before the removal under the other format, by another configuration of the table or before its
        format changed and changed back): without this an emptied source would be archived as an empty day
        (with overwrite), beside the removed rows' archive that no run would look at again. Such keys are looked
        for where list, compare and restore look (``_listed_other_formats``): beside the day's key where the
        template's ``{ext}`` follows the day's name (as in the default), in each other format's folder where
        ``{format}`` or ``{ext}`` is in one."""
        if existing.raw is not None and (existing.manifest is None or existing.manifest.get("removed")):
            return None  # this key's own removal mark, or its damaged manifest, decides (see _keep, _refuse_removed)
        if existing.raw is None and existing.listing and self._stored_generations(existing.listing):
            return None
        listed, shown = self._other_format_listing(existing)
        for other in [*listed, *self.former_keys]:  # (a former key lives under another prefix: read, not listed)
            if (found := self._removal_at(other, self.day, existing, listed=shown)) is not None:
                return found
        return None

    def _removal_at(self, key: str, period: Period, existing: Existing, shared: bool = False,
                    listed: Iterable[str] | None = None) -> Existing | None:
        """What is at ``key`` where its manifest (read loosely: a damaged one's mark still counts) marks ``period``
        of this table removed from the source, else None. ``shared``: the manifest is read once per run (a key no
        run of the table as now configured writes, see ``_removed_in_overlapping``). ``listed``: the keys the listing
        that found ``key`` shows; a manifest it shows that reads as absent is no "no removal there" (the removal
        missed, the run archived the day again beside the removed rows' archive): ``S3Store.confirm_missing`` raises,
        retryable."""
        mkey = keys.manifest_key(key)
        raw = self.store.asked_once(("manifest", mkey), functools.partial(_get_manifest_bytes, self.store, mkey)) \
            if shared else _get_manifest_bytes(self.store, mkey)
        if raw is None and listed is not None:
            self.store.confirm_missing(mkey, MISSING_ON_READ, listed)
        loose = _loose_manifest(Existing(None, raw, None, None))
        if loose is None or not loose.get("removed") or foreign_manifest(loose, self.spec.name, period.isoformat()) \
                or self._of_another_source(key, loose):
            return None
        self._read_from[id(loose)] = (loose, keys.manifest_key(key))  # (where its record is read from)
        return Existing(loose, raw, None, existing.listing)

    def _refuse_removed_in_overlapping(self, existing: Existing, table: SourceTable, fp: fingerprint.Fingerprint,
                                       overwrite: bool) -> None:
        """Refuse a period (before anything of it is published) whose rows left the source with a removed period of
        the table's former granularity that overlaps it (``_refuse_removed_elsewhere``'s rule): the table's
        granularity changed since, and an archive here would pass for the whole period, an empty one for a period
        that never had rows, beside the removed rows' archive no run looks at again. A finer period (an hour of a
        day, a day of a month) is looked for always: one removed took a part of this one, and the rest may still be
        in the source. A coarser one (the day of an hour, the month of a day) only where the source holds no row
        of this period: its removal took all of them, so rows there now came after it and are archived as this
        period's (its archive stays where it is). A day of the default template, whose hours' keys are in its own
        listing, pays no request for this unless it is empty (see ``_removed_in_overlapping``)."""
        found = self._removed_in_overlapping(existing, empty=not fp.rows)
        if found is not None:
            self._refuse_removed_elsewhere(found, table, fp, overwrite)

    def _removed_in_overlapping(self, existing: Existing, empty: bool) -> Existing | None:
        """A removal of rows recorded for a period of the table's other granularities that overlaps this one, under
        that granularity's default key template or the table's own where it fits that granularity (see
        listing.overlapping_templates: which granularities, ``empty`` or not), or, where ``empty``, for a period of its
        own granularity in a zone it had before whose recorded instants overlap this one's (at a neighbouring key:
        a period's key is its local labels, so the former zone's overlapping periods have this one's neighbours'),
        else None. One listing per granularity
        and template (of what its keys of the overlapping periods share; the day's own listing where it covers
        them), then a GET of each listed key's manifest; neither is paid again by the run's later periods that ask
        the same (a range's days of one month: see S3Store.asked_once): no run of the table as it is now
        configured writes those keys."""
        groups = keys.overlapping_period_keys(self.spec, self.day, self.store.prefix,
                                              overlapping_templates(self.spec, empty))
        own = keys.day_listing_prefixes(self.key) if existing.listing is not None else []
        for group in groups:
            prefix = os.path.commonprefix([key for key, _ in group])
            covered = any(prefix.startswith(mine) for mine in own)
            names = existing.listing if covered else listed_once(self.store, prefix)
            listed = set(keys.listed_under([key for key, _ in group], names))
            for key, period in group:
                found = self._removal_at(key, period, existing, not covered, names) if key in listed else None
                if found is not None \
                        and found.manifest.get("rows") != 0 and (  # (a removal of no rows took none of this period's)
                            period.granularity != self.day.granularity or holds_rows_of(found.manifest, self.day)):
                    return found  # (a neighbouring key of the table's granularity: where another zone's period was)
        return None

    def _current_elsewhere(self, existing: Existing, elsewhere: Existing | None, overwrite: bool
                           ) -> tuple[str, Existing] | None:
        """(key, what is there) of the day's current archive where another key holds it, else None: the run judges
        the day by that archive (skips onto it where it holds the source's rows), not by an older one at this key.
        Without a removal found elsewhere: ``_archived_elsewhere`` (None with overwrite). With one (``elsewhere``)
        where this key holds an intact archive: the removed one where manifest.current_archive picks it over
        this key's, as restore, list, compare and a removal do (the format changed, the day archived again and
        removed, the format changed back), read whole (a damaged one is never skipped onto: this key's rules
        decide then); None where nothing is here (that removal's own rule decides, see
        ``_refuse_removed_elsewhere``)."""
        if elsewhere is None:
            return None if overwrite else self._archived_elsewhere(existing)
        if existing.manifest is None or existing.problem is not None:
            return None
        key = self._manifest_key_of(elsewhere.manifest)[:-len(keys.MANIFEST_SUFFIX)]
        if key == self.key or current_archive([(self.key, existing.manifest), (key, elsewhere.manifest)])[0] != key:
            return None
        there = read_existing(self.store, key)
        if there.manifest is None or there.problem is not None:
            return None
        self._read_from[id(there.manifest)] = (there.manifest, keys.manifest_key(key))
        return key, there

    def _archived_elsewhere(self, existing: Existing) -> tuple[str, Existing] | None:
        """(key, what is there) of the day's current archive, not marked removed, under another format's or codec's
        key or a key it was archived under before (``former_keys``), where this key holds nothing or an older one
        (the format changed, the day was archived again, and the format changed back): the one
        manifest.current_archive picks, as restore, list and compare do; None where that is this key's. Such a
        day is archived: a run skips it where it holds the day's rows, refuses it as changed where it does not,
        and archives it again only with overwrite, not as a new day beside its archive."""
        here = existing.manifest is not None and existing.problem is None
        if existing.raw is not None and not here or \
                existing.raw is None and existing.listing and self._stored_generations(existing.listing):
            return None  # (a damaged archive here, or data without a manifest: this key's own rules decide)
        listed = self._listed_other_formats(existing)
        found = []
        for other in [*listed, *self.former_keys]:
            there = read_existing(self.store, other)
            if there.manifest is None or there.problem is not None or there.manifest.get("removed") \
                    or foreign_manifest(there.manifest, self.spec.name, self.day.isoformat()) \
                    or self._of_another_source(other, there.manifest):
                continue
            if (period := another_period(there.manifest, self.day)) is not None:
                if other in self.former_keys or here:  # a key_template changed to keep the new periods apart, as
                    continue  # advised, or this key holds the day: that archive is another period's
                raise ForeignArchiveError(  # the day's key under its former format holds another period
                    f"{self.store.uri(other)}: {period}; set overwrite to archive this period as the table is now "
                    "configured (that archive stays where it is)", retryable=False, needs_overwrite=True)
            found.append((other, there))
            self._read_from[id(there.manifest)] = (there.manifest, keys.manifest_key(other))
        current = current_archive([*([(self.key, existing.manifest)] if here else []),
                                   *((other, there.manifest) for other, there in found)])
        return next((pair for pair in found if current is not None and pair[0] == current[0]), None)

    def _of_another_source(self, key: str, manifest: dict) -> bool:
        """Whether ``manifest``, found at ``key`` under another format's or template's key of the day, is another
        database's (manifest.of_another_source, as restore, list, compare, verify and the removal leave it out):
        another deployment's archive or removal sharing the bucket and prefix, which says nothing of this
        database's rows (``_keep`` refused this database's own first archive of the day as that one's, and a
        removal of that one's rows as this one's). Not on a key the day's last materialization recorded
        (``former_keys``): that is this deployment's own, judged as the one at this key is (another database's
        archive there needs overwrite)."""
        return key not in self.former_keys and of_another_source(manifest, functools.partial(source_identity,
                                                                                           self.conn))

    def _listed_other_formats(self, existing: Existing) -> list[str]:
        """The day's keys under the table's other formats and codecs that hold anything, found as list, compare and
        restore find them (manifest.other_format_keys): from the day's own listing (``existing``'s) where they lie
        beside its key, as by default (no request), else one listing of each other format's day prefix (a template
        with ``{format}`` in a folder), once per run. None of them where the store cannot list (as before)."""
        return self._other_format_listing(existing)[0]

    def _other_format_listing(self, existing: Existing) -> tuple[list[str], Iterable[str] | None]:
        """:meth:`_listed_other_formats`, and the keys the listings it went by show (None: the store cannot list):
        what a manifest among them that reads as absent is confirmed against (see :meth:`_removal_at`)."""
        if existing.listing is None:
            return [], None
        if self._other_formats is None or self._other_formats[0] is not existing.listing:
            found, shown = other_format_listing(self.store, self.spec, self.day, existing.listing,
                                                keys.day_listing_prefixes(self.key))
            self._other_formats = (existing.listing, [k for k in found if k != self.key], shown)
        return self._other_formats[1], self._other_formats[2]

    def _refuse_removed_elsewhere(self, elsewhere: Existing, table: SourceTable, fp: fingerprint.Fingerprint,
                                  overwrite: bool) -> None:
        """The rule of a removed day (see ``_keep``) for one archived under the table's former format or
        codec, or removed with a period of another granularity that holds it or that it holds: the source's rows
        are archived only with overwrite, or where they are the removed ones exactly; the removed rows' archive
        stays where it is either way."""
        manifest = elsewhere.manifest
        removed = manifest["removed"]
        then = f"{manifest.get('format')}/{manifest.get('compression')}"
        if (manifest.get("format"), manifest.get("compression")) == (self.spec.format, self.spec.compression):
            then += " under the key_template and prefix it had then"  # (the key moved, not the format)
        period = manifest.get("granularity") or "daily"
        rezoned = (manifest.get("timezone") or "UTC") != self.day.timezone and (
            manifest.get("day") != self.day.isoformat() or another_period(manifest, self.day) is not None)
        if period != self.spec.granularity or rezoned:  # (see _removed_in_overlapping)
            then = f"{period} in {manifest.get('timezone') or 'UTC'}"
        where = self._archive_uri(manifest)
        if removal_state(manifest) == "pending":
            raise DayRemovedError(
                f"{self.spec.name} {self.day}: its removal from the source, archived as {then} at {where}, is "
                "unfinished, and the table is now configured otherwise. Nothing was written: configure the table "
                f"as {then} again and run the day (or prune) to settle the removal first", retryable=False,
                remedy=f"configure the table as {then} again and run prune for the day, then change it back")
        self._refuse_detached(manifest)
        names = [c["name"] for c in manifest.get("columns", [])]
        if manifest.get("fingerprint") == str(fp) and names == [c.name for c in table.columns]:
            return  # the removed rows are back exactly (restored): archiving them again loses nothing
        if overwrite and fp.rows:
            return
        now = "holds no row of it now" if not fp.rows else f"now has other rows ({fp.rows:,})"
        if period != self.spec.granularity or rezoned:
            self._refuse_removed_with_period(manifest, then, where, now, fp)
        raise DayRemovedError(
            f"{self.spec.name} {self.day} was removed from the source at {removed.get('at')} after its archive "
            f"{where} ({then}, the table's format and compression then) was proven, and the source {now}. Nothing "
            "was written: that archive is the day's only copy; restore it (with the table configured as "
            f"{then}) if you need the rows back" + (
                "; to archive the rows there are now as well, set overwrite" if fp.rows else ""), retryable=False,
            manifest_key=self._manifest_key_of(manifest),
            **({"remedy": _LATE_AFTER_REMOVAL, "needs_overwrite": True} if fp.rows else {}))

    def _refuse_removed_with_period(self, manifest: dict, then: str, where: str, now: str,
                                    fp: fingerprint.Fingerprint) -> None:
        """The refusal of a period whose rows left the source with an overlapping period of the table's former
        granularity or time zone (see ``_removed_in_overlapping``). Not "nothing to do" with that manifest named, as a
        removed day's own refusal is: the manifest is another period's, which this partition's record cannot
        repeat."""
        granularity = manifest.get("granularity") or "daily"
        changed = "granularity" if granularity != self.spec.granularity else "time zone"
        raise DayRemovedError(
            f"{self.spec.name} {self.day}: its rows were removed from the source at {manifest['removed'].get('at')} "
            f"with the {granularity} period {manifest.get('day')} that overlaps it, after that period's archive "
            f"{where} was proven (the table was {then} then; its {changed} changed since), and the source {now}. "
            "Nothing was written: that archive is the only copy of the removed rows, and this period is not archived "
            "as if it were new", retryable=False, needs_overwrite=bool(fp.rows),
            remedy=f"to restore the removed rows, configure the table as {then} again and restore "
                   f"{manifest.get('day')}; " + (
                       "to archive the rows there are now as well, set overwrite (that archive stays)" if fp.rows else
                       "leave this period out of archive runs and backfills: it has no rows to archive, and running "
                       "it again fails the same way"))

    def _refuse_damaged(self, existing: Existing, identity: SourceIdentity, fp: fingerprint.Fingerprint,
                        overwrite: bool) -> None:
        """The rules an archive at this key that cannot be skipped onto (damaged, or its manifest unreadable) must
        pass before a new generation replaces it, in the order ``_keep`` applies them to an intact one: a removed
        day's (its archive is the only copy), another database's (damage is no proof it is this one's to replace),
        then rows recorded in an object lost since while the source is empty. The run's and the dry run's (see
        :func:`keeps_existing`) one decision. Nothing to do where no archive is here."""
        if existing.problem is None:
            return
        self._refuse_removed(existing, fp)
        if not overwrite:
            self._refuse_other_source(existing.manifest or recorded_source(_loose_manifest(existing)), identity,
                                      existing.problem)
        self._refuse_lost_rows(existing, fp, overwrite)

    def _refuse_other_source(self, manifest: dict | None, identity: SourceIdentity, damaged: str | None = None
                             ) -> None:
        """An archive written from another database (``manifest``'s source) is not replaced without overwrite: a
        bucket shared by two clusters, or a database replaced by a new one, whose runs this run's lock does not
        exclude. ``damaged``: why the archive cannot be skipped onto, said beside it (a damaged one is refused the
        same: only overwrite tells that this database is to replace it). A manifest naming no source (one whose
        owner a damaged manifest cannot tell) passes: such an archive is archived again, as the README promises."""
        if manifest is None or same_source(manifest, identity):
            return
        source = manifest.get("source", {})
        raise ForeignArchiveError(
            f"{self._archive_uri(manifest)} was archived from database {source.get('database')!r} (system "
            f"{source.get('system_identifier')}), not this one ({identity.database!r}, system "
            f"{identity.system_identifier})" + (f", and is damaged ({damaged})" if damaged else "") +
            "; if this database replaced that one, set overwrite to archive the day again", retryable=False,
            needs_overwrite=True)

    def _refuse_removed(self, existing: Existing, fp: fingerprint.Fingerprint) -> None:
        """A removed day whose archive is damaged, or whose manifest cannot be read but says it was
        removed, is never archived again from the source unless the source holds exactly its rows."""
        if existing.problem is None:  # (an intact archive here: its own rules decide, see _keep)
            return
        manifest = existing.manifest or _loose_manifest(existing)
        removed = (manifest or {}).get("removed")
        # (a day table retention detached holds the rows, but not in the source: see _refuse_detached)
        if removed and (manifest.get("fingerprint") != str(fp) or still_detached(self.conn, self.spec, self.day,
                                                                                  manifest)):
            raise DayRemovedError(
                f"{self.spec.name} {self.day} was removed from the source at {removed.get('at')}, and its archive "
                f"is damaged ({existing.problem}); archiving the now different source would replace the only "
                "copy. Nothing was written: restore the archive or its manifest from a backup", retryable=False,
                damaged=True)

    def _object_unsound(self, existing: Existing) -> bool:
        """Whether the day's own manifest was read whole and only its data object does not check out (missing,
        or of another size or ETag): what the archive held is then known, and the object is what to restore."""
        return existing.manifest is not None and existing.problem is not None and \
            foreign_objects(existing.manifest, self.key) is None

    def _refuse_lost_rows(self, existing: Existing, fp: fingerprint.Fingerprint, overwrite: bool) -> None:
        """A day whose manifest records rows in an object lost or damaged since, while the source holds none of
        them now, is not archived as empty unasked: the rows may have been removed from the source after they
        were archived (as where the manifest is lost, see ``_generation``), and an empty manifest would describe
        them as a day that never had rows. Overwrite records the day as empty deliberately, as it does over an
        intact archive (the previous manifest's object stays listed under ``kept``, see ``_retire``). An object whose
        HEAD differs but whose download is as recorded (copied onto itself in parts) is refused the same, said to hold
        the rows: the remedy is then the archive's restore, not the object's."""
        obj = (existing.manifest or {}).get("object")
        if overwrite or fp.rows or not obj or not self._object_unsound(existing):
            return
        uri = self.store.uri(obj["key"])
        # (a HEAD answering another ETag or size proves no damage: the download decides, as the command line's and
        # the Dagster layer's looks at such a day do; the day is refused either way, only its words depend on it)
        damage = archive_damage(self.store, self.key, existing.manifest, temp_dir=self.temp_dir)
        if not damage:
            raise ArchiveError(
                f"{self.spec.name} {self.day}: its manifest {self.store.uri(self.manifest_key)} records "
                f"{existing.manifest.get('rows', 0):,} rows in {uri}, which holds them as recorded (its HEAD answered "
                f"otherwise: {existing.problem}; its download's size, MD5 and SHA-256 are as recorded, as for an "
                "object copied onto itself in parts), and the source has no rows for the day now: they were deleted "
                "or dropped from the source after they were archived. Nothing was written", retryable=False,
                cause="the source is empty while the archive holds the day's rows",
                remedy=f"restore the day from its archive if its rows were removed by mistake (restore --day "
                       f"{self.day} --into original); or, to record the day as empty deliberately, set overwrite for "
                       f"this day alone (archive --day {self.day} --overwrite; the manifest keeps the object listed)")
        raise ArchiveError(
            f"{self.spec.name} {self.day}: its manifest {self.store.uri(self.manifest_key)} records "
            f"{existing.manifest.get('rows', 0):,} rows in {uri}, but that object is lost or damaged "
            f"({'; '.join(damage)}), and the source has no rows for the day now: they may have been removed from the "
            "source after they were archived. Nothing was written", retryable=False,
            cause="the archived object is lost or damaged while the source is empty",
            remedy=f"restore {uri} from a backup of the bucket or its versioning, then run the day again; or, to "
                   f"record the day as empty deliberately, set overwrite for this day alone (archive --day {self.day} "
                   "--overwrite; the manifest keeps the object listed)")

    def _settles_here(self, existing: Existing) -> bool:
        """Whether the day's pending removal mark is this database's to settle. One taken on another cluster or
        database (the table moved since) cannot be told committed or not here, and settling it is refused
        (lifecycle.refuse_other_cluster): the run leaves it as it is and decides on it as on a mark in doubt (with
        overwrite the day is archived again and the marked archive kept beside the new one; without, refused as
        removed). Settled, the refusal told the user to archive again with overwrite: the command that raised it."""
        try:
            refuse_other_cluster(self.conn, self.spec, self.day, existing.manifest)
        except RemovalRefused:
            return False
        return True

    def _keep(self, manifest: dict, identity: SourceIdentity, table: SourceTable, fp: fingerprint.Fingerprint,
              overwrite: bool) -> bool:
        """True to skip: the archive is this day's rows exactly. Raises if it must not be replaced."""
        same = _same_rows(manifest, table, fp)
        if not same:  # a standby behind the archive reads the day as it was, not as it changed
            self._refuse_stale_standby(manifest)
        removed = manifest.get("removed")
        if removed:
            self._refuse_detached(manifest)
            if same and self._reads_back(manifest, table):
                return True
            if overwrite and fp.rows:
                # The day is back in the source (restored into its table, then edited; or late rows): archived
                # again as asked. The removed rows' archive is kept beside the new one if it holds more rows
                # (see _retire), so no run deletes rows that exist nowhere else; an emptied source never gets here.
                return False
            if not fp.rows:  # overwrite or not: there is nothing to archive, and the archive is the only copy
                raise DayRemovedError(
                    f"{self.spec.name} {self.day} was removed from the source at {removed.get('at')} after its "
                    f"archive {self._archive_uri(manifest)} was proven, and the source holds no row of it now: there "
                    "is nothing to archive, and the archive is the day's only copy (kept as it is). Restore it if you "
                    "need the rows back", retryable=False, manifest_key=self._manifest_key_of(manifest))
            raise self._back_in_source(manifest, table, fp)
        if overwrite:
            return False
        self._refuse_other_source(manifest, identity)
        if fingerprint.recorded_algorithm(manifest.get("fingerprint")) is None:
            return False  # an older manifest or fingerprint cannot prove its content: archive again, as a new generation
        # a composite's field renamed prints the same text (the same fingerprint), but a restore of the archive
        # would be refused for it: the day is changed, as compare and list call it
        if same and self._reads_back(manifest, table):
            self._refuse_inexact_archive(manifest)
            return True
        raise LateRowsError(self._change_message(manifest, table, fp), retryable=False)

    def _back_in_source(self, manifest: dict, table: SourceTable, fp: fingerprint.Fingerprint) -> DayRemovedError:
        """The refusal, without overwrite, of a removed day with rows in the source again. Where the table changed
        since (its columns, said in the words compare, list --check-source and the removal use: rows fingerprinted
        over other columns are never the archive's, and no restore is advised, the rows perhaps restored already; or
        its types, over the removed rows exactly), that change is the cause; otherwise the rows are other rows (late,
        or restored and edited since), which replacing the archive would lose."""
        said = (f"{self.spec.name} {self.day} was removed from the source at {manifest['removed'].get('at')} after its "
                f"archive {self._archive_uri(manifest)} was proven")
        then, now = [c["name"] for c in manifest.get("columns", [])], [c.name for c in table.columns]
        back = manifest.get("fingerprint") == str(fp)  # the removed rows exactly (restored)
        moved = bool(then) and then != now  # (a version-1 manifest records no columns)
        if moved or back:
            change = columns_moved(now, then) if moved else self._change(manifest, table, fp)
            rows = (f"its {fp.rows:,} rows are back in the source (restored)" if back else
                    f"the source has {fp.rows:,} rows of it again (restored, or written since)")
            return DayRemovedError(
                f"{said}, and {rows}, but the table changed since: {change}. Nothing was written: that archive stays "
                "the record of the removed rows as they were archived", retryable=False,
                remedy=_CHANGED_AFTER_REMOVAL, needs_overwrite=True)
        return DayRemovedError(
            f"{said}, and the source now has other rows ({fp.rows:,}); archiving them without overwrite would replace "
            "the only copy. Restore the archive if you need the removed rows back; to archive the rows there are now, "
            "set overwrite (an archive that holds more rows than the new one is kept beside it)", retryable=False,
            remedy=_LATE_AFTER_REMOVAL, needs_overwrite=True)

    def _refuse_detached(self, manifest: dict) -> None:
        """A removed day whose naming-mode day table retention detached, still detached (discovery.still_detached:
        the one decision list, compare, verify --deep and prune make of it): the table keeps its name and rows, which
        the run reads by that name, but they are no longer the source's. Refused as a removed day the source holds no
        row of, overwrite or not: never skipped onto as "identical archive exists", never archived again from a table
        the application no longer reads (a new generation of it would retire the removal's record)."""
        if not still_detached(self.conn, self.spec, self.day, manifest):
            return
        raise DayRemovedError(
            f"{self.spec.name} {self.day} was removed from the source at {manifest['removed'].get('at')} after its "
            f"archive {self._archive_uri(manifest)} was proven: retention detached its day table "
            f"{self.spec.day_relation(self.day)}, which keeps its rows but no longer inherits from {self.spec.name}, "
            "so the source holds no row of the day now: there is nothing to archive, and the archive is the day's only "
            "copy (kept as it is). If its rows belong in the source again, attach the day table again (restore --into "
            "original names the statement)", retryable=False, manifest_key=self._manifest_key_of(manifest))

    def _reads_back(self, manifest: dict, table: SourceTable) -> bool:
        """Whether an archive whose fingerprint is the source's would also restore into the table as it is now: no
        composite's field renamed or retyped (it prints the same text, the same fingerprint) and no column retyped
        in a way a restore would not reproduce (an inet now text). Otherwise the day is changed, as compare and a
        removal call it, live or removed."""
        return not shape_changes(manifest.get("columns", []), {c.name: c.shape for c in table.columns}) \
            and not self._inexact_retypes(manifest, table)

    def _inexact_retypes(self, manifest: dict, table: SourceTable) -> list[str]:
        """The columns retyped since ``manifest``'s archive in a way a restore would not reproduce exactly (see
        fingerprint.inexact_retypes): their fingerprint may be as archived, and the archive no longer restores into
        them (the day is changed, as compare and a removal call it)."""
        recorded = manifest.get("columns", [])
        columns = columns_as_archived(table.columns, [c.get("name") for c in recorded])
        return fingerprint.inexact_retypes(self.conn, columns, recorded) if columns is not None else []

    def _refuse_unended(self, snapshot: Snapshot) -> None:
        """A period not over by the database's own clock (the snapshot's ``now()``) is refused, retryable, before
        anything is read: its rows are still being written (a ``DEFAULT now()`` stamps them by that clock), so
        its archive would publish part of the period as the whole, and its next run would find it "changed since
        archived". The asset, the command line and the sensor decide "over" by their host's clock, which can run
        ahead of the server's, and a caller of the core API may pass any day."""
        why = not_over(self.day, snapshot.taken_at)
        if why is None:
            return
        unit = UNIT[self.day.granularity]
        raise SourceError(
            f"{self.spec.name} {self.day.key}: {why}; nothing was written", table=self.spec.name,
            day=self.day.isoformat(), retryable=True, cause=f"the {unit} is not over yet",
            remedy="archive it once it is over (the schedule and the sensor request it then); if this host's clock "
                   "runs ahead of the database server's, set both by NTP")

    def _refuse_stale_standby(self, manifest: dict | None) -> None:
        """On a hot standby whose replay is paused with WAL waiting, or behind ``manifest``'s archive (no commit
        replayed since that archive's snapshot, and WAL received and not replayed, or none received: its WAL
        receiver cut off from the primary): refused, retryable (see Replay.stale). Its day is the primary's of some
        time ago: called "changed since it was archived ... set overwrite", and overwritten as advised, the archive
        lost rows the primary had committed before the run began."""
        if self.conn.info.parameter_status("in_hot_standby") not in ("on", None):
            return  # (a primary says so without a query, from PostgreSQL 14 on)
        if self._replay is False:
            self._replay = standby_replay(self.conn)
        replay = self._replay
        if replay is None or not replay.stale(snapshot_time(manifest)):
            return
        raise replay.refusal(self.spec.name, self.day.isoformat(),
                             archive=self._archive_uri(manifest) if manifest is not None else "",
                             snapshot=((manifest or {}).get("source") or {}).get("snapshot_at"),
                             outcome="nothing was written", instead="archive from the primary")

    def _refuse_inexact_archive(self, manifest: dict) -> None:
        """A ``strict`` table accepts no archive whose manifest records a column as not exact (one written
        before the table was made strict): its fingerprint is the source's, so it would be skipped onto. Nor one
        whose manifest does not record a column's exactness (:func:`_exactness_unrecorded`): not proven exact."""
        inexact = [c for c in manifest.get("columns", []) if c.get("exact") is False]
        unrecorded = _exactness_unrecorded(manifest)
        if not self.spec.strict or not (inexact or unrecorded):
            return
        fmt = manifest.get("format", self.spec.format)
        named = "; ".join(f"{names} ({encoding}: {note})" for names, encoding, note in inexact_groups(inexact))
        said = [f"records column(s) {named} as not exact in {fmt}"] if inexact else []
        if unrecorded:
            said.append(f"does not record whether column(s) {', '.join(map(repr, unrecorded))} are exact in {fmt} "
                        f"({_EXACTNESS_UNRECORDED})")
        other = OTHER_FORMATS.get(fmt, "another format")
        raise UnsupportedTypeError(
            f"its archive {self._archive_uri(manifest)} {' and '.join(said)}, and the table is strict; archive the "
            f"day again as {other} with overwrite, or set strict: false to accept it",
            table=self.spec.name, retryable=False,
            remedy=f"set the table's format to {other} (not {fmt}) and archive the day again with overwrite (both: "
                   "overwrite alone archives it as it is configured, and a changed format alone finds this archive "
                   "again), or set strict: false to accept the archive as it is")

    def _change_message(self, manifest: dict, table: SourceTable, fp: fingerprint.Fingerprint) -> str:
        return (f"{self.spec.name} {self.day} changed since it was archived to {self._archive_uri(manifest)} "
                f"(snapshot {manifest.get('source', {}).get('snapshot_at')}): {self._change(manifest, table, fp)}; "
                "set overwrite to archive the day again (the previous archive stays until the new one is complete)")

    def _change(self, manifest: dict, table: SourceTable, fp: fingerprint.Fingerprint) -> str:
        """What changed in the day since ``manifest``'s archive: its day column, columns, types or rows."""
        archived = fingerprint.Fingerprint.parse(manifest["fingerprint"])
        then = [c["name"] for c in manifest.get("columns", [])]
        now = [c.name for c in table.columns]
        recorded = {c["name"]: c.get("pg_type") for c in manifest.get("columns", [])}
        retyped = [f"{c.name} {recorded[c.name]} → {c.type_name}" for c in table.columns
                   if recorded.get(c.name) not in (None, c.type_name)]
        moved = manifest.get("day_column") not in (None, self.spec.day_column)
        if moved:  # the configuration's, not the rows': another column picks the day's rows now
            what = (f"the table's day_column is {self.spec.day_column!r} now and was {manifest['day_column']!r} "
                    f"when archived, so other rows are the day's ({fp.rows:,} now, {archived.rows:,} archived)")
        elif then != now:
            what = f"its columns changed from {names_brief(then)} to {names_brief(now)}" + (
                f" (types: {', '.join(retyped[:12])}{' ...' if len(retyped) > 12 else ''})" if retyped else "")
        elif retyped:
            what = f"column types changed: {', '.join(retyped)}" + (
                f"; and it has {fp.rows:,} rows now, the archive holds {archived.rows:,} (rows arrived or were "
                "deleted late)" if archived.rows != fp.rows else
                f"; its {fp.rows:,} rows hash as archived, but the archived values would not read back into the new "
                "types as they are now (a value's archived text is not its text now, an inet's '10.0.0.1' for "
                "'10.0.0.1/32'; or a number in another binary floating-point type is another value), and the archive "
                "would not restore into the table" if str(fp) == str(archived) else
                f"; and its content differs with the same {fp.rows:,} rows (rows edited since, or values the new "
                "types print otherwise: compare --rows names the first row that differs)")
        elif shapes := shape_changes(manifest.get("columns", []), {c.name: c.shape for c in table.columns}):
            what = f"a type inside its columns changed (not its rows): {'; '.join(shapes)}"
        elif archived.rows != fp.rows:
            what = f"it has {fp.rows:,} rows now, the archive holds {archived.rows:,} (rows arrived or were deleted late)"
        elif stable := view_calls(self.conn, table).get("s"):
            what = (f"its content differs with the same {fp.rows:,} rows, and the view calls "
                    f"{', '.join(stable[:5])}, whose values are the reading transaction's (now() is each run's "
                    "own): every run of the day reads other values, and an archive of it is one moment's; "
                    "archive the table the view reads, or a view without them")
        else:
            what = (f"its content changed with the same {fp.rows:,} rows (rows updated, or inserted and deleted: "
                    f"fingerprint {fp} now, {archived} archived)")
        return what

    def _warn_rows_outside(self, table: SourceTable, where) -> None:
        """Naming mode with a day column: say so where the day's own table holds rows outside the day (its tables
        laid out in another zone than the table's, a row put in the wrong day's table, a NULL day). The day's read
        filters them out and no other day reads this table: they are in no archive (a removal that would take
        them along refuses)."""
        if self.spec.partitioning.mode != "naming" or not self.spec.day_column:
            return
        outside = self.conn.execute(sql.SQL("SELECT pg_catalog.count(*) FROM {} WHERE ({}) IS NOT TRUE").format(
            table.identifier, where)).fetchone()[0]
        if outside:
            log.warning("%s %s: the day's table %s holds %d row(s) whose %s is outside the day in %s (or NULL): no "
                        "day's archive holds them; if its day tables are laid out in another zone, set the table's "
                        "timezone to it, or leave day_column out (the day's table is then archived whole)",
                        self.spec.name, self.day, table.qualified, outside, self.spec.day_column, self.spec.timezone)

    def _manifest_key_of(self, manifest: dict) -> str:
        """The key ``manifest`` was read from: this day's, or another format's or a former key's."""
        read, key = self._read_from.get(id(manifest), (None, self.manifest_key))
        return key if read is manifest else self.manifest_key

    def _archive_uri(self, manifest: dict) -> str:
        """Where ``manifest``'s archive is: its object, or (an empty day's) the manifest at the key it was read
        from (this key's, or another format's or a former key's: see ``_archived_elsewhere``)."""
        obj = manifest.get("object")
        if obj:
            return obj["uri"]
        return self.store.uri(self._manifest_key_of(manifest))

    # --- results and the commit -----------------------------------------------------------------

    def _skipped(self, manifest: dict, table: SourceTable, snapshot, fp_seconds: float,
                 manifest_key: str | None = None) -> ArchiveResult:
        obj = manifest.get("object") or {}
        elapsed = time.perf_counter() - self.started
        return ArchiveResult(
            table=self.spec.name, day=self.day, key=obj.get("key", ""), uri=obj.get("uri", ""), rows=manifest["rows"],
            bytes=obj.get("bytes", 0), uncompressed_bytes=manifest.get("uncompressed_bytes", 0),
            md5=obj.get("md5", ""), sha256=obj.get("sha256", ""), format=manifest["format"],
            compression=manifest["compression"], columns=_as_archived(table.columns, manifest["columns"]),
            output_types={c["name"]: c.get("output_type", "text") for c in manifest["columns"]}, parts=obj.get("parts", 0),
            etag=obj.get("etag", ""), content_type=obj.get("content_type", ""),
            content_encoding=obj.get("content_encoding"), day_column=self.spec.day_column,
            source_relation=table.qualified, manifest_key=manifest_key or self.manifest_key,
            snapshot_at=dt.datetime.fromisoformat(manifest["source"]["snapshot_at"]),
            # the archive's server (the skip read nothing but the fingerprint: no extraction to time)
            server_version=(manifest.get("source") or {}).get("server_version") or snapshot.server_version,
            # (the release that wrote the archive, which the operator looks for; not this one, which wrote nothing)
            archiver_version=_writer_version(manifest),
            extract_seconds=0.0, duration_seconds=elapsed,
            upload_wait_seconds=0.0, complete_seconds=0.0, fingerprint=manifest["fingerprint"],
            fingerprint_seconds=fp_seconds, empty=bool(manifest.get("empty")),
            generation=int(manifest.get("generation", 1)),
            encodings={c["name"]: {k: c[k] for k in ("encoding", "exact", "note") if k in c} | (
                {"exact": False, "note": _EXACTNESS_UNRECORDED} if c["name"] in _exactness_unrecorded(manifest) else {})
                for c in manifest["columns"]}, skipped=True,
        )

    def _result(self, table, snapshot, fmt, codec, stats: WriteStats, sink, stored, fp, fp_seconds: float,
                generation: int, extracted: float) -> ArchiveResult:
        empty = stored is None
        return ArchiveResult(
            table=self.spec.name, day=self.day, key="" if empty else stored.key, uri="" if empty else stored.uri,
            rows=stats.rows, bytes=0 if empty else stored.size, uncompressed_bytes=stats.bytes,
            md5="" if empty else sink.md5, sha256="" if empty else sink.sha256, format=self.spec.format,
            compression=self.spec.compression, columns=table.columns, output_types=stats.output_types,
            parts=0 if empty else stored.parts, etag="" if empty else stored.etag, content_type=fmt.content_type,
            content_encoding=codec.content_encoding, day_column=self.spec.day_column,
            source_relation=table.qualified, manifest_key=self.manifest_key, snapshot_at=snapshot.taken_at,
            server_version=snapshot.server_version, extract_seconds=extracted - self.started,
            duration_seconds=time.perf_counter() - self.started,
            upload_wait_seconds=0.0 if empty else stored.wait_seconds,
            complete_seconds=0.0 if empty else stored.complete_seconds, fingerprint=str(fp),
            fingerprint_seconds=fp_seconds, empty=empty, generation=generation,
            encodings=dict(getattr(stats, "encodings", {}) or {}), streams=self.streams,
        )

    def _commit(self, result: ArchiveResult, identity: SourceIdentity, definition: dict, existing: Existing) -> None:
        """Write the manifest (the commit point), then retire the generation it replaced.

        Until the manifest is written the previous pair is untouched. If the write fails, the store
        is read back: our manifest there means the commit happened after all; otherwise the previous
        manifest is put back if the failed write replaced it, and the new object is withdrawn unless
        the manifest now in the store names it. A cleanup failure never hides the original error.
        Nothing is ever deleted on the strength of a manifest that could not be read, and an
        overwrite that archives fewer rows keeps the previous object (``kept``), so no run deletes
        rows that exist nowhere else.
        """
        try:
            if existing.manifest is not None and existing.manifest.get("fingerprint") != result.fingerprint:
                self._refuse_stale_standby(existing.manifest)  # (an overwrite from it would lose the rows it lacks)
            superseded, kept = self._retire(result, existing)
            manifest = build_manifest(result, identity, definition)
            manifest.update(superseded=superseded, kept=kept)
            data = encode_manifest(manifest)
            self._refuse_replaced(result, existing)
            # last, right before the commit: a lock lost during the reads above (its session ended) lets another run
            # take the day, whose tidying deletes this generation as a leftover
            require_lock_held(self.conn, self.spec.name, self.day)
        except BaseException as exc:  # an interrupt too (Ctrl-C, a run's termination): no manifest names it yet
            if result.key and not getattr(exc, "withdrawn", False):  # (_refuse_replaced's refusals settled it)
                self._withdraw_unnamed(result.key, exc)
            raise
        try:
            # a first manifest must find no other there (a run on another server or database, which the lock
            # does not exclude, may have committed the day meanwhile): If-None-Match, see S3Store.conditions
            self._put_manifest(data, fresh=existing.raw is None, replacing=existing.raw)
        except BaseException as exc:
            try:
                landed = self._stored_manifest() == data
                if not landed:
                    self._undo_commit(exc, result, existing)
            except BaseException as inner:  # cancelled while the outcome was being learned: it may have landed
                note_cancelled(inner, self.spec.name, self.day.isoformat(), "committing")
                raise
            if not landed:
                raise
            log.warning("writing %s reported %s, but the manifest is in the store: committed", self.manifest_key,
                        without_verdict(exc))
            if is_cancellation(exc):  # committed, and the cancellation still ends the run: the day is archived, if
                # its new object is still there (an overwrite's is checked by _refuse_lost_object, not reached: the
                # note stays "committing", and the next run of the day finds which)
                if existing.raw is None or not result.key:
                    renote_cancelled(exc, self.spec.name, self.day.isoformat(), "tidying")
                self._committed = True
                raise
        confirmed = True
        if result.key:  # (a first archive's too: its object may have been taken for another run's and withdrawn)
            try:
                confirmed = self._refuse_lost_object(result, existing, data)
            except BaseException as exc:  # cancelled while the new object's presence was checked: not known yet
                note_cancelled(exc, self.spec.name, self.day.isoformat(), "committing")
                raise
        self._committed = True  # a cancellation from here on leaves the day archived (see the run's handler)
        if not confirmed:  # the new object's HEAD could not be had: its predecessor is left to the next run's tidy
            return
        pattern = keys.generation_pattern(self.key)
        for key in superseded:  # (only the day's own keys, whatever a manifest listed, and only where ours still)
            if pattern.fullmatch(key) and key != result.key and why_not_ours(
                    self.store, key, self._owner, self._label, self._record_of(key, existing)) is None:
                self.store.delete_quietly(key)  # after the commit: a failure leaves a stray object, never a wrong archive

    @staticmethod
    def _record_of(key: str, existing: Existing) -> dict | None:
        """The manifest whose object record (size, ETag) ``key`` must match to be the object it retires: the
        previous manifest for its own object; None for a key retired earlier, proven by its metadata alone."""
        return existing.manifest if key == object_key(existing.manifest) else None

    def _refuse_replaced(self, result: ArchiveResult, existing: Existing) -> None:
        """The manifest this run decided on must still be the one in the store when ours replaces it.

        The table-day lock is per server: a run reading a hot standby does not exclude a removal of the
        day on the primary, whose pending and done marks go into the manifest meanwhile. Overwriting
        them would lose the record that the source no longer holds the rows (and with it the refusal
        to replace the only copy). Read again just before the commit, so the race is down to one GET
        and one PUT; a changed manifest fails the run, retryable: the retry decides on what is there.
        The new object is withdrawn unless the manifest now names it. A day that had no manifest has no
        removal to race with (a removal starts from a manifest), so its first archive skips the GET."""
        if existing.raw is None:
            return
        uri = self.store.uri(self.manifest_key)
        try:
            now = _get_manifest_bytes(self.store, self.manifest_key)
        except Exception as exc:  # noqa: BLE001 - re-raised as the run's error, with the read's cause and remedy
            error = ArchiveError(f"{self.spec.name} {self.day}: reading {uri} again before replacing it failed "
                                 f"({getattr(exc, 'message', exc)}); nothing was replaced", table=self.spec.name,
                                 day=self.day.isoformat(), retryable=is_retryable(exc),
                                 cause=getattr(exc, "cause", None), remedy=getattr(exc, "remedy", None))
            if result.key and self._manifest_unchanged(existing):
                # the manifest this run decided on is still there (its HEAD): none names the new generation yet
                self.store.delete_quietly(result.key, error)  # (a failure to delete is noted on the error)
                error.withdrawn = True
            # else another run may have committed the very same generation: left to _commit's withdrawal, which
            # deletes it only where the manifest, read again, does not name it (or says it is left)
            raise error from exc
        if now == existing.raw:
            return
        try:
            named = object_key(decode_manifest(now)) if now else None
        except ManifestError:
            named = None
        changed = ArchiveError(
            f"{self.spec.name} {self.day}: {uri} changed while this run archived the day (a removal of the day on "
            "the primary, or a run on another server, wrote it); nothing was replaced", table=self.spec.name,
            day=self.day.isoformat(), retryable=True,
            remedy="retried automatically: the retry decides on the manifest as it is now (a removed day is not "
                   "archived again); archive each table from one server only")
        if result.key and named != result.key:
            self.store.delete_quietly(result.key, changed)  # (a failure to delete is noted on the error)
        changed.withdrawn = True  # (deleted or noted left above, or named by the manifest now there)
        raise changed

    def _manifest_unchanged(self, existing: Existing) -> bool:
        """Whether the day's manifest is, by its HEAD, still the one this run decided on (its MD5 as ETag); False
        where the store cannot say (the HEAD failing, ETags that are not MD5s)."""
        if existing.raw is None or not self.store.verify_etags:
            return False
        try:
            head = self.store.head(self.manifest_key)
        except Exception:  # noqa: BLE001 - no answer: not known to be unchanged
            return False
        return head is not None and etag_text(head.get("ETag")) == hashlib.md5(existing.raw).hexdigest()

    def _retire(self, result: ArchiveResult, existing: Existing) -> tuple[list[str], list[dict]]:
        """Which earlier objects of this day the new manifest retires (deleted after the commit where still ours,
        see leftovers.why_not_ours, and listed so a later run retries) and which it keeps (an overwrite that lost
        rows, or an object someone else put over the previous one: not ours to delete)."""
        previous = existing.manifest  # readable (a damaged object of a removed day never gets here)
        if previous is not None and foreign_objects(previous, self.key):
            previous = None  # it names other objects than the day's: nothing it lists is retired or carried
        if previous is None:
            # No manifest to trust (none, or one that could not be read: damaged, or a read the store answered
            # wrongly) while generations are stored: each may be the only copy of rows this day no longer has
            # (a lost manifest, rows deleted since), so the new manifest keeps them all (the next run's tidying
            # deletes what no manifest names).
            stored = [keys.generation_key(self.key, g) for g in self._stored_generations(existing.listing or {})]
            why = "could not be read" if existing.raw is not None or existing.problem is not None else "was missing"
            # one holding the new object's very bytes (a killed first run's, of the same rows, in whatever parts):
            # no only copy of anything, retired like a superseded object instead of kept for ever
            same = [key for key in stored if key != result.key and self._same_bytes(existing.listing, key, result)]
            return same, [{"key": key, "rows": None, "note": f"{_UNVOUCHED} {why}"}
                          for key in stored if key != result.key and key not in same]
        superseded = [k for k in previous.get("superseded", []) if k != result.key]
        # one kept only for want of a manifest, whose bytes the new object holds (recorded so before that was
        # proven by content, not by ETag), is no only copy either
        kept, same = [], []
        for entry in previous.get("kept", []):
            unvouched = str(entry.get("note") or "").startswith(_UNVOUCHED) and entry.get("key") != result.key
            (same if unvouched and self._same_bytes(existing.listing, entry["key"], result) else kept).append(entry)
        superseded += [entry["key"] for entry in same]
        obj = previous.get("object")
        if obj and obj.get("key") != result.key:
            # kept when the new rows may not hold the old ones: fewer of them, or the old ones were removed from
            # the source (late rows archived over a removed day: the removed rows exist nowhere else)
            if result.rows < previous.get("rows", 0) or previous.get("removed"):
                kept.append({"key": obj["key"], "rows": previous["rows"], "md5": obj.get("md5"),
                             "fingerprint": previous.get("fingerprint"),
                             "snapshot_at": previous.get("source", {}).get("snapshot_at")})
            elif existing.problem is not None and (why := why_not_ours(
                    self.store, obj["key"], self._owner, self._label, previous)) is not None:
                # read_existing found another object there than recorded (or none): one someone else put over it is
                # not ours to retire, and is named so that no later run's tidying takes it for a leftover either
                kept.append({"key": obj["key"], "rows": None, "note": f"kept: not this archive's object: {why}"})
            else:
                superseded.append(obj["key"])
        return superseded[-10:], kept

    def _same_bytes(self, listing: dict[str, dict] | None, key: str, result: ArchiveResult) -> bool:
        """Whether the listed object ``key`` is proven to hold the new object's very bytes: its size, and the new
        object's ETag (the same bytes in the same parts) or, where ETags are MD5s, a single part's ETag that is the
        new object's MD5, both without a read. A multipart ETag is the MD5 of its parts' MD5s, so the same bytes cut
        in other parts (another ``part_size``) have another one: there the object's MD5 and SHA-256, streamed, must
        be the new object's. Anything not proven (other bytes, a download that failed) is False: the caller keeps
        it, as a possible only copy of rows."""
        listed = (listing or {}).get(key) or {}
        if not result.key or listed.get("ContentLength") != result.bytes:
            return False
        etag = etag_text(listed.get("ETag"))
        if result.etag and etag == etag_text(result.etag):
            return True
        if self.store.verify_etags and "-" not in etag:  # one part's ETag is its bytes' MD5: no read needed
            return etag == result.md5
        try:
            digests = self.store.stored_digests(key, expected_size=result.bytes,
                                                content_encoding=result.content_encoding)
        except Exception as exc:  # noqa: BLE001 - not proven the same: kept, as any unvouched generation is
            log.warning("%s %s: %s was kept: reading it to compare it with the new object failed (%s)",
                        self.spec.name, self.day, self.store.uri(key), getattr(exc, "message", exc))
            return False
        return digests == (result.md5, result.sha256)

    def _stored_manifest(self, damaged: str | None = None) -> bytes | None:
        """The day's manifest as stored, None where there is none or it cannot be read (not ours), unless its HEAD
        names ``damaged``, the ETag of the copy this run's failed write left (``CorruptedWrite.etag``): that one is
        ours though unreadable, and comes as the store's stand-in (see ``S3Store.own_damaged``)."""
        try:
            return _get_manifest_bytes(self.store, self.manifest_key)
        except Exception:  # noqa: BLE001 - unreadable: not ours, unless it is our own damaged copy
            return self.store.own_damaged(self.manifest_key, damaged)

    def _refuse_lost_object(self, result: ArchiveResult, existing: Existing, data: bytes) -> bool:
        """The new object must still be stored once the manifest naming it is written (an overwrite's previous one
        still names its own object: nothing is retired yet). A run of the day on another server (a hot standby
        and its primary: the table-day lock is each server's own) tidies every generation no manifest names yet,
        this one's among them; a failed run of another database may withdraw what it took for its own object;
        and the day's manifest then named no object. Asked twice, a moment apart (a HEAD lagging a completed
        upload is no loss); a lost object puts the previous manifest back (If-Match ours), or takes a first one
        back (read back as ours first, then deleted), and fails the run, retryable. True once the object is seen
        (or a later run superseded it); False where its HEAD could not be had (the store failing for a moment): the
        commit stands (an object not seen is not known lost), and the generation it replaced is left for the next
        run's tidying."""
        for attempt in range(2):
            try:
                if self.store.head(result.key) is not None:
                    return True
            except Exception as exc:  # noqa: BLE001 - no answer is no loss: the next run of the day checks again
                log.warning("%s %s: committed, but the new object's HEAD failed (%s); the generation it replaced is "
                            "left for the next run of the day", self.spec.name, self.day, getattr(exc, "message", exc))
                return False
            if attempt == 0:
                time.sleep(1.0)
        if self._superseded_since(result.key, data):
            return True
        gone = (f"{self.spec.name} {self.day}: the new object {self.store.uri(result.key)} was gone once its manifest "
                "was written (a run of the day on another server or database removed it)")
        remedy = "retried automatically; archive each table from one server only"
        try:  # only over ours (If-Match where ETags are MD5s, and read back first either way: a later run's
            current = _get_manifest_bytes(self.store, self.manifest_key)  # commit is never replaced)
            if current == data and existing.raw is None:
                self.store.delete(self.manifest_key)
                said = "its manifest was taken back (the day is not archived)"
            elif current == data:
                self.store.put_bytes(self.manifest_key, existing.raw, "application/json",
                                     if_match=self.store.etag_of(current))
                said = "the previous archive was put back"
            else:
                said = "another run's manifest is there now, and was left as it is"
        except Exception as exc:  # noqa: BLE001 - said as it is: the retry finds the object missing and archives again
            said = (f"putting the previous archive back failed ({getattr(exc, 'message', exc)}): the day's manifest "
                    "names the missing object until the retry archives the day again")
        raise ArchiveError(f"{gone}; {said}", table=self.spec.name, day=self.day.isoformat(), retryable=True,
                           remedy=remedy)

    def _superseded_since(self, key: str, data: bytes) -> bool:
        """Whether a later run's manifest, committed over ours, lists our object as superseded: our commit stood,
        and that run retired our object as it should (a run that took the day once this one's session ended)."""
        try:
            current = _get_manifest_bytes(self.store, self.manifest_key)
            later = decode_manifest(current) if current is not None and current != data else None
        except Exception:  # noqa: BLE001 - not known: the object counts as lost
            return False
        if later is None or key not in (later.get("superseded") or []):
            return False
        log.info("%s %s: committed, then superseded by a later run's archive of the day (%s)", self.spec.name,
                 self.day, (later.get("object") or {}).get("key"))
        return True

    def _undo_commit(self, exc: BaseException, result: ArchiveResult, existing: Existing) -> None:
        damaged = getattr(exc, "etag", None)  # a CorruptedWrite's: the damaged copy of ours the store kept
        if existing.raw is not None:
            _quietly(exc, f"put back the previous manifest {self.manifest_key}",
                     lambda: self._put_back(existing.raw, damaged))
        if not result.key:
            return
        current = self._stored_manifest(damaged)
        try:
            named = object_key(decode_manifest(current)) if current else None
        except ManifestError:
            named = None
            # deleted only as our own damaged copy (no manifest was there before): by its ETag, the one our failed
            # write left (a CorruptedWrite's). Any other that does not decode is not ours: another run's commit
            # after a KeyTakenError, a newer version's manifest (NewerManifestError), another tool's object
            if existing.raw is None and self._manifest_settled and damaged \
                    and etag_text(self.store.answered_etag(current)) == etag_text(damaged):
                self.store.delete_quietly(self.manifest_key, exc)
        # Our manifest may still land (a write that timed out, or answered 5xx): its object must then be
        # there. It is withdrawn only when no write can land any more (refused, or every copy stored
        # damaged); else it stays, at worst a leftover the next run of the day deletes once a manifest
        # names another generation.
        if named != result.key and self._manifest_settled:
            self.store.delete_quietly(result.key, exc)

    def _put_back(self, previous: bytes, damaged: str | None = None) -> None:
        """Restore the previous manifest where a failed write of ours left a damaged copy over it (``damaged``: its
        ETag, which tells it from another's where it cannot be read); leave it alone if it is still there (rewriting
        identical bytes would only add a way to fail), and leave a whole manifest another run committed meanwhile
        (a run on another server): it is not ours to undo."""
        current = self._stored_manifest(damaged)
        if current == previous:
            return
        if current is not None:
            try:
                decode_manifest(current)
                return
            except ManifestError:
                pass
        self.store.put_bytes(self.manifest_key, previous, "application/json", fresh=current is None,
                             if_match=self.store.etag_of(current))

    def _put_manifest(self, data: bytes, fresh: bool = False, replacing: bytes | None = None) -> None:
        """A verified PUT, tried again at once when the store received damaged bytes: the data object
        is already whole, so only the commit is missing. ``fresh``: no manifest may be there yet;
        ``replacing``: the manifest this run decided on, the only one it may replace (If-Match its ETag: a
        copy of this write that lands late never replaces a later run's commit)."""
        damaged: str | None = None  # the ETag of a damaged copy of ours in the store: the next try replaces it
        previous = self.store.etag_of(replacing)
        for attempt in range(1, MANIFEST_PUT_ATTEMPTS + 1):
            try:
                self.store.put_bytes(self.manifest_key, data, "application/json", fresh=fresh and damaged is None,
                                     if_match=damaged or previous)
                return
            except BaseException as exc:  # noqa: BLE001 - re-raised after the last attempt
                damaged = getattr(exc, "etag", None) or damaged
                # settled only if every attempt was: one that timed out, or was cancelled on its way, may still land
                self._manifest_settled = self._manifest_settled and self.store.settled(exc)
                if is_cancellation(exc):
                    note_cancelled(exc, self.spec.name, self.day.isoformat(), "committing")
                    raise
                if attempt == MANIFEST_PUT_ATTEMPTS or not is_retryable(exc) or isinstance(exc, KeyTakenError):
                    raise
                log.warning("writing %s failed (%s); trying again", self.manifest_key, exc)

    def _generation(self, existing: Existing, fp: fingerprint.Fingerprint | None) -> int:
        """The generation the new data is written as: never the key of an object that might be the
        only copy of something. With a trustworthy manifest that is the next one (an object already
        there is an uncommitted leftover); without one, past every generation found in the store."""
        listed = self._stored_generations(existing.listing)
        found = [g for g in listed if keys.generation_key(self.key, g) not in self._tidied]
        # (past another database's live upload too: a key two runs share ends in one aborting the other's upload)
        listed += marked_generations(self.key, existing.listing, self._tidied)
        if existing.manifest is not None and existing.problem is None:
            # past any object still there (one this run's tidying left, another database's run's, say, is not this
            # run's to write over), and past those it just deleted: a store whose deletes land a moment after their
            # answer would take the new object with them
            return max([existing.generation, *listed]) + 1
        # (None only where nothing was found: _decided_by_fingerprint; a readable manifest whose object is lost or
        # damaged names its rows: _refuse_lost_rows decided, and only an overwrite gets here)
        if found and fp is not None and fp.rows == 0 and not self._object_unsound(existing):
            raise ArchiveError(
                f"{self.store.uri(self.key)} has archived data ({len(found)} object(s)) but "
                f"{'no readable manifest' if existing.raw is not None else 'no manifest'}, and the source has no rows "
                "for the day now: it may have been removed from the source after it was archived. Nothing was "
                "written; inspect the objects (restore the manifest from a backup or versioning) before archiving "
                "this day again", retryable=False)
        return max(listed, default=0) + 1

    def _stored_generations(self, listing: dict[str, dict] | None = None) -> list[int]:
        """Generations of this day's data in the store, from ``listing`` (read under this day's lock by
        ``read_existing``) or a LIST of their own."""
        return stored_generations(self.key, (day_listing(self.store, self.key) or {}) if listing is None else listing)


def _loose_manifest(existing: Existing) -> dict | None:
    """The stored manifest's JSON even where it failed its checks (to honour a ``removed`` mark)."""
    return loose_manifest(existing.raw)


def _readers(fmt, plan) -> int:
    """Sessions a day's read opens besides the archive's own: one per stream (the archive's own only
    exports the snapshot then), except a single text stream, which reads on the archive's own."""
    return plan.streams if fmt.compresses_internally or plan.streams > 1 else 0


def _carry_committed(exc: BaseException, result: ArchiveResult) -> None:
    """Carry ``result``, the day's archive just committed, on ``exc``, a cancellation that cut off the tidying after
    it (noted "tidying": an overwrite's landed-but-unchecked commit stays "committing" and carries nothing), for a
    caller to record the day as that archive (see :func:`committed_result`)."""
    if getattr(exc, "cancelled_at", (None,))[0] == "tidying":
        try:
            exc.committed = result  # type: ignore[attr-defined]
        except (AttributeError, TypeError):  # an exception type without a __dict__
            pass


def committed_result(exc: BaseException) -> ArchiveResult | None:
    """The archive of the day in the bucket where ``exc``, a cancellation of :func:`archive_partition`, came after
    its commit (while the run tidied the generation it replaced), else None: the caller that records days records
    it as that archive (not verified) rather than leave the record naming the generation being deleted."""
    return getattr(exc, "committed", None)


def _streams_note(configured: int | str, streams: int, reason: str) -> str:
    """How many streams read the day and why, for a table configured with more than one (or auto):
    a view, a foreign table, a small relation, column privileges or the connection limits read with
    fewer, and a user who set ``parallel_streams`` sees it in the day's result and its metadata."""
    if configured == 1:
        return ""
    return f"{streams} stream(s), parallel_streams is {configured}: {reason.removeprefix('auto: ')}"


def _quietly(original: BaseException, what: str, action: Callable[[], object]) -> None:
    """Run a cleanup step; if it fails, note it on the original error instead of replacing it."""
    try:
        action()
    except Exception as exc:  # noqa: BLE001 - the original error is the one to raise
        log.warning("could not %s: %s", what, without_verdict(exc))
        original.add_note(f"cleanup: could not {what}: {type(exc).__name__}: {exc}")
