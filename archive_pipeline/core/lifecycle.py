"""Archive -> prove -> let go: remove a day from the source only once its archive is proven exact.

A day older than the table's retention window is removed (its partition detached or dropped, or
its rows deleted) only when

1. its archive passes the deep verification (object digests, archived rows loaded back and
   fingerprinted, equal to the source), and
2. the source still holds exactly the archived rows, re-checked by fingerprint inside the very
   transaction that detaches, drops or deletes, after locking the rows against writers, and under
   the same (table, day) advisory lock as archiving — so a row that arrives in between is never lost.

The manifest records the removal (``removed``): first as pending, written inside the removing
transaction before it changes anything (with that transaction's id, ``xid``), then as done after
it commits. Archiving refuses to replace the archive of a removed day (it would replace the only
copy with an empty day), whatever ``overwrite`` says.

A pending mark left behind (the "done" mark could not be written, the COMMIT's answer was lost, or
a refused removal could not put the unmarked manifest back) is settled by the next removal of the
day, under the table-day lock (:func:`settle_pending_removal`): if the removing transaction
committed (PostgreSQL's ``txid_status``; for a mark without a known transaction, the source having
no rows of the day), the mark is completed once the archive still checks out (object, digests,
rows); if it did not (for a mark without a known transaction: the source holds exactly the archived
rows), the manifest is put back without the mark and the removal starts again from the proof, so a
day whose rows are all still in the source is never taken for removed. A mark without a known
transaction over rows that are not the archived ones (or cannot be told them: a fingerprint this version
does not compute) stays pending (they may be late rows after a removal that committed): the removal refuses,
and an overwrite keeps the archive beside its own.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from archive_pipeline.core.session_settings import speaks_utf8, writing_as_origin
from archive_pipeline.core import fingerprint
from archive_pipeline.core import keys, periods
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.discovery import PENDING_DETACH_UNDER, day_children, partition_of_day, pinned_settings, \
    source_table, still_detached
from archive_pipeline.core.errors import ArchiveError, named, note_cancelled, redact, sql_name
from archive_pipeline.core.leftovers import day_listing, tidy_day
from archive_pipeline.core.locks import require_autocommit, table_day_lock
from archive_pipeline.core.manifest import ManifestError, SourceIdentity, Whose, day_archive, decode_manifest, \
    decoded_manifest, encode_manifest, foreign_manifest, layout_change, removal_state, source_identity, \
    stored_object_problems
from archive_pipeline.core.periods import UNIT, Period
from archive_pipeline.core.source import (SNAPSHOT_SETTINGS, Column, SourceTable, day_filter, descends_from,
                                          classified, describe_relation, detaching, explain, pending_detach_error,
                                          names_database_errors, relation_name, relation_shapes, scanned_relations,
                                          server_identity, shape_changes, wrapped)
from archive_pipeline.core.store import MISSING_ON_READ, CorruptedWrite, KeyTakenError, S3Store, etag_text
from archive_pipeline.core.sqltext import with_params
from archive_pipeline.core.verify import ColumnsChangedError, archived_order, deep_verify, load_manifest, \
    refuse_retype, source_fingerprint, source_side_only, verify_archive


log = logging.getLogger(__name__)


class RemovalRefused(ArchiveError):
    """The day was not removed: its archive is not proven, or the source changed; nothing was changed."""


class RemovalNotRecorded(ArchiveError):
    """The day's removal is committed in the source, but its manifest still says "pending" (writing the
    "done" mark failed, or the archive no longer checks out: ``problems``, what its check found); a re-run of the
    removal completes it."""


@dataclass(frozen=True)
class Settlement:
    """What :func:`settle_pending_removal` found and did about a pending removal mark."""

    # "none" (no pending mark) | "completed" (the removal had committed) | "taken back" (it had not) |
    # "kept pending" (whether it had cannot be told: see _in_doubt)
    outcome: str
    manifest: dict | None  # the manifest as it is now in the store
    why: str = ""  # the evidence, in words


@dataclass(frozen=True)
class Removal:
    table: str
    day: Period
    action: str  # detach | drop | delete
    relation: str  # what was detached/dropped, or deleted from
    rows: int
    archive: str  # the archive's data URI (or its manifest's, for an empty day)
    removed_at: dt.datetime | None  # None: dry run, or already removed before
    dry_run: bool = False
    already_removed: bool = False
    completed: bool = False  # an earlier removal's commit (removed_by's), whose "done" mark this call wrote
    nothing: bool = False  # no row of the day, nothing of its own removed, no mark (never archived, or archived empty
    # without a partition of its own): nothing to remove
    removed_by: str | None = None  # who removed it, as its mark says ("dagster run <id>", "archive-pipeline")


def due_days(spec: TableSpec, today: dt.date | dt.datetime) -> list[Period]:
    """Periods from start_date that ended before the retention window, i.e. before the local midnight
    ``keep_days`` days before ``today`` in the table's zone (none without retention).

    ``today`` is the moment now (an aware datetime: its date in the table's zone is today there) or the
    table's local date. Callers pass the moment: the UTC date is a day ahead of the local one in zones west
    of UTC for part of every day (in Los Angeles from 16:00 or 17:00), and taken as local it made the
    day before yesterday due with ``keep_days: 1`` a few hours after it ended."""
    if spec.retention is None:
        return []
    if isinstance(today, dt.datetime):
        if today.tzinfo is None:
            raise ValueError(f"due_days needs an aware datetime (the moment now), not the naive {today}")
        today = today.astimezone(periods.zone(spec.timezone)).date()
    cutoff = periods.period_of_date("daily", spec.timezone, today - dt.timedelta(days=spec.retention.keep_days))
    first = spec.first_period
    return [p for p in periods.periods_overlapping(spec.granularity, spec.timezone, first.utc_start, cutoff.utc_start)
            if p.utc_end <= cutoff.utc_start]


@speaks_utf8("conn", "scratch_conn")
@names_database_errors
def remove_day(conn: psycopg.Connection, spec: TableSpec, day: Period | dt.date, store: S3Store, *,
               dry_run: bool = False, proven: bool | str = False, scratch_conn: psycopg.Connection | None = None,
               removed_by: str | None = None, temp_dir: str | None = None, former_keys: Sequence[str] = (),
               reads: psycopg.Connection | None = None) -> Removal:
    """See :func:`_remove_day` (``temp_dir``: where the proof downloads the object; ``former_keys``: see
    :func:`archive_key`; ``reads``: the server the caller reads, ARCHIVE_PG_DSN, where ``conn`` is another
    connection, ARCHIVE_PG_PRIMARY_DSN's: a primary of another cluster is refused, see
    :func:`refuse_other_cluster`); a database error (a lock_timeout, a lost session) comes out as an
    :class:`ArchiveError` naming table, day, cause and remedy, with what was noted on it kept. ``conn``
    must be in autocommit mode (the removal commits its own transaction before it marks the manifest done)."""
    require_autocommit(conn, "removing a day")
    try:
        return _remove_day(conn, spec, day, store, dry_run=dry_run, proven=proven, scratch_conn=scratch_conn,
                           removed_by=removed_by, temp_dir=temp_dir, former_keys=former_keys, reads=reads)
    except psycopg.Error as exc:
        error = wrapped(exc, conn, spec, spec.period(day).isoformat(), doing="proving" if dry_run else "removing")  # a dry run removes nothing
        for note in getattr(exc, "__notes__", []):
            error.add_note(note)
        raise error from None
    except ArchiveError as exc:  # the store's (a manifest read that failed) or a refusal: it names the day
        named(exc, spec.name, spec.period(day).isoformat())
        raise
    except BaseException as exc:  # cancelled: what the removal leaves is settled on the way out (see _remove)
        note_cancelled(exc, spec.name, spec.period(day).isoformat(), "proving" if dry_run else "removing")
        raise


def _remove_day(conn: psycopg.Connection, spec: TableSpec, day: Period | dt.date, store: S3Store, *,
                dry_run: bool = False, proven: bool | str = False, scratch_conn: psycopg.Connection | None = None,
                removed_by: str | None = None, temp_dir: str | None = None,
                former_keys: Sequence[str] = (), reads: psycopg.Connection | None = None) -> Removal:
    """Remove ``day`` of ``spec`` from the source (``conn`` must be the primary), if and only if proven.

    The deep verification runs here, under the table-day lock, so what is proven is what is removed.
    ``proven`` may instead name the ``manifest_sha256`` of the manifest a caller just proved (it is
    then skipped only if the manifest is still that one), or be True for a caller that proved it
    itself under this lock; the in-transaction fingerprint re-check runs regardless.
    """
    day = spec.period(day)
    if spec.retention is None:
        raise RemovalRefused(f"{spec.name} has no retention setting; nothing is removed from it",
                             table=spec.name, day=day.isoformat())
    action = spec.retention.action
    _require_primary(conn, spec, day, f"removing {spec.name} {day}")
    if reads is not None and reads is not conn:  # (a staging copy's day was dropped, the real source's marked removed)
        refuse_other_cluster(conn, spec, day, None, reads=reads)
    with writing_as_origin(conn, spec.name, day.isoformat(), "removing"), table_day_lock(conn, spec.name, day):
        key = keys.table_day_key(spec, day, store.prefix)
        manifest = _trusted_manifest(store, spec, day, key)
        if (other := _archive_key_trusted(store, spec, day, key, manifest, former_keys, source_identity(conn))) != key:
            key, manifest = other, _trusted_manifest(store, spec, day, other)
        if manifest is None:
            if not _has_rows(conn, spec, day):  # an empty partition made ahead, a repeated hour's first occurrence
                return Removal(spec.name, day, action, "", 0, "", None, dry_run, nothing=True)
            store.confirm_missing(keys.manifest_key(key), MISSING_ON_READ)  # listed: no verdict (retryable)
            raise RemovalRefused(f"{spec.name} {day} has no archive at {store.uri(key)}; archive it first",
                                 table=spec.name, day=day.isoformat())
        archive = (manifest.get("object") or {}).get("uri") or store.uri(keys.manifest_key(key))
        if removal_state(manifest) == "pending":  # an earlier removal left its mark: settle it first
            # ...on the day's own cluster: on a staging copy, its rows count as the removal not committed, and the
            # mark was taken back while the real source had lost the day
            refuse_other_cluster(conn, spec, day, manifest)
            committed, why = _committed(conn, spec, day, manifest)
            if committed is None:
                raise _in_doubt(spec, day, store, key, manifest, why)
            if dry_run and committed:
                # what the real run's settling checks first: the archive, now the day's only copy
                problems = verify_archive(store, key, {}, deep=True, owner=(spec.name, day.isoformat()),
                                          temp_dir=temp_dir)
                if problems:
                    raise RemovalNotRecorded(
                        f"{spec.name} {day} was removed from the source ({why}), but its archive no longer checks "
                        f"out: {'; '.join(problems)}; a removal would leave it marked 'pending'",
                        table=spec.name, day=day.isoformat(), retryable=False, problems=problems,
                        remedy="restore the archive's object from a replica or backup of the bucket, then run the "
                               "removal again")
                if _nothing_back(conn, spec, day, manifest):
                    return Removal(spec.name, day, action, manifest["removed"].get("relation", ""),
                                   manifest["rows"], archive, None, True, already_removed=True)
                # its rows are back since (restored, or late rows): proven and removed below, as the real run does
            if not dry_run:
                settled = _settle(conn, spec, day, store, key, manifest, committed, why, temp_dir)
                if settled.outcome == "completed" and _nothing_back(conn, spec, day, settled.manifest):
                    mark = settled.manifest["removed"]
                    return Removal(spec.name, day, mark.get("action", action), mark.get("relation", ""),
                                   mark.get("rows", manifest["rows"]), archive, _parse_time(mark.get("at")),
                                   completed=True, removed_by=mark.get("by"))  # (the mark's remover, not this run)
                # taken back: proven and removed from scratch below; or completed, and the rows are back since
                # (restored into the table after the removal was killed past its COMMIT): removed again below
                manifest = settled.manifest
        if removal_state(manifest) == "done" and _nothing_back(conn, spec, day, manifest):
            # (rows of a removed day that are back, restored into the original table, are proven and
            # removed again below, as on the first removal; an empty partition or day table is such a restore
            # only of a day archived without rows: one created again empty, by a maintenance job, holds none
            # of the archived rows, and the day stays removed)
            if not dry_run:
                _tidy_removed(conn, spec, day, store, key, manifest)
            mark = manifest["removed"]  # (when and by whom: this run removed nothing)
            return Removal(spec.name, day, action, mark.get("relation", ""), manifest["rows"], archive,
                           _parse_time(mark.get("at")), dry_run, already_removed=True, removed_by=mark.get("by"))
        # (after a removed day found removed: a database moved to a new cluster since has it removed still; before
        # the proof's work: another cluster's rows may well be the same)
        refuse_other_cluster(conn, spec, day, manifest)
        refuse_layout_change(spec, day, manifest)
        try:
            # (before the proof's work; the real run checks again, locked)
            target = _removable(conn, spec, day, action, manifest)
        except RemovalRefused:
            if int(manifest.get("rows") or 0) == 0 and not manifest.get("removed") and \
                    spec.partitioning.mode == "declarative" and not day_children(conn, spec, day) and \
                    not _has_rows(conn, spec, day):
                # archived empty, and nothing of it to remove (no partition of its own: a start_date before the
                # first partition, a repeated hour's first occurrence): not a removal that fails every day
                return Removal(spec.name, day, action, "", 0, archive, None, dry_run, nothing=True)
            raise
        if proven is not True and proven != manifest.get("manifest_sha256"):
            problems = deep_verify(conn, store, spec, day, manifest=manifest, scratch_conn=scratch_conn,
                                   temp_dir=temp_dir)
            if source_side_only(problems) and int(manifest.get("rows") or 0) and not _has_rows(conn, spec, day):
                raise emptied(conn, spec, day, int(manifest["rows"]), 0, action)  # the source's, not the archive's
            if source_side_only(problems):  # the archive checks out: the source's rows are what changed
                raise source_differs(spec, day, problems, conn)
            if problems:
                raise RemovalRefused(f"{spec.name} {day} stays in the source: its archive is not proven: "
                                     + "; ".join(problems), table=spec.name, day=day.isoformat(), problems=problems)
        if dry_run:
            return Removal(spec.name, day, action, target.qualified, manifest["rows"], archive, None, True)
        return _remove(conn, spec, day, store, key, manifest, action, archive, removed_by)


def _nothing_back(conn: psycopg.Connection, spec: TableSpec, day: Period, manifest: dict) -> bool:
    """Whether a removed day is still out of the source: detached still, or no rows of it (an empty partition or
    day table is the day back only for a day archived without rows: one created again empty, by a maintenance
    job, holds none of the archived rows)."""
    return still_detached(conn, spec, day, manifest) or (
        not _has_rows(conn, spec, day) and not (manifest.get("rows") == 0 and _relation_back(conn, spec, day, manifest)))


def _tidy_removed(conn: psycopg.Connection, spec: TableSpec, day: Period, store: S3Store, key: str,
                  manifest: dict) -> None:
    """Remove what killed archive runs of the removed day left (an overwrite's upload, its uncommitted generation,
    also under a former format's key): no archive run of a removed day comes to do it. Called with the day's
    manifest as it is when the removal marks it done, just before (an archive run elsewhere may have replaced the
    proven one meanwhile: its object is kept), and by a removal that finds the day removed already: a removal
    killed past its "done" mark left them otherwise for good. Never fatal: the day is removed, and leftovers
    cost storage, not correctness."""
    try:
        day_keys = [keys.table_day_key(spec, day, store.prefix), *keys.other_extension_keys(spec, day, store.prefix)]
        tidy_day(store, key, day_listing(store, key), manifest, SourceIdentity(*server_identity(conn)),
                 f"{spec.name} {day}", others=day_keys)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        log.warning("%s %s: removed; what killed runs of the day left in the store was not looked at (%s)",
                    spec.name, day, redact(f"{type(exc).__name__}: {exc}"))


@classified("removing")
@speaks_utf8()
def check_removable(conn: psycopg.Connection, spec: TableSpec, day: Period | dt.date) -> str:
    """Raise :class:`RemovalRefused` for what the removal of ``day`` would refuse whatever its archive (a
    partition that is not the day's own, dependents that keep it from being dropped, a publication that
    forbids the DELETE, a role that may not do it...); return the relation it would remove. Callers that
    prove the archive themselves call it first, on the primary, so a day that cannot be removed costs no
    proof. A database error comes out as an :class:`ArchiveError` naming table, day, cause and remedy."""
    day = spec.period(day)
    if spec.retention is None:
        raise RemovalRefused(f"{spec.name} has no retention setting; nothing is removed from it",
                             table=spec.name, day=day.isoformat())
    return _removable(conn, spec, day, spec.retention.action).qualified


def _removable(conn: psycopg.Connection, spec: TableSpec, day: Period, action: str,
               manifest: dict | None = None) -> SourceTable:
    """The relation the action removes, once :func:`_refuse_unremovable` found nothing to refuse (nothing is
    locked or changed), nor :func:`archived_columns` against ``manifest`` where one is given."""
    with conn.transaction():
        table = source_table(conn, spec, day)
        target = _target(conn, spec, day, table, action)
        _refuse_unremovable(conn, spec, day, table, target, action)
        if manifest is not None:
            archived_columns(conn, spec, day, table, manifest)
    return target


def archived_columns(conn: psycopg.Connection, spec: TableSpec, day: Period, table: SourceTable,
                     manifest: dict) -> Sequence[Column]:
    """``table``'s columns by the archived names, in the archive's order (so a partition whose columns are in another
    order fingerprints like its parent, and two columns of one type swapping names are a change); refused where
    they are not the archived ones, or a column's type changed in a way a restore into the table would not
    reproduce (verify.refuse_retype: an inet or boolean retyped to text, a double to real). Such a day's
    fingerprint may still be the archived one, but once its rows were removed the one way back into their table
    would be refused: it stays until it is archived again as it is now."""
    try:
        columns = archived_order(spec, day, table, [c["name"] for c in manifest["columns"]])
        refuse_retype(conn, spec, day, columns, manifest["columns"])
    except ColumnsChangedError as exc:
        raise RemovalRefused(f"{spec.name} {day} stays in the source: {exc.message}", table=spec.name,
                             day=day.isoformat(), remedy=f"{exc.remedy}, then remove it" if exc.remedy else
                             "archive the day again (overwrite) if the new columns are right, then remove it") from None
    return columns


@classified("removing")
def refuse_other_cluster(conn: psycopg.Connection, spec: TableSpec, day: Period | dt.date, manifest: dict | None, *,
                         reads: psycopg.Connection | None = None) -> None:
    """:class:`RemovalRefused` where ``conn``, the primary a removal runs on, is another cluster, or another database,
    than the one the day was archived from (``manifest``'s system identifier and database, where it records them) or
    than ``reads``, the server the code location reads (ARCHIVE_PG_DSN: a standby shares its primary's identifier and
    database names, so no right setup is refused). ARCHIVE_PG_PRIMARY_DSN naming a staging copy loaded from a dump (the
    same rows), on another cluster or in another database of the same one, had that copy's day dropped and the manifest
    marked removed, while the real source kept the day, never to be archived again. Where a role may not read the
    identifier (pg_control_system()), only the database is compared."""
    day = spec.period(day)
    here = server_identity(conn)[:2]
    there = server_identity(reads)[:2] if reads is not None else None
    source = (manifest or {}).get("source") or {}
    archived = (source.get("database") or None, str(source.get("system_identifier") or "") or None)
    for other, whose in ((archived, "the day's archive was taken from"),
                         (there, "the code location reads (ARCHIVE_PG_DSN)")):
        if other is not None and (refusal := _elsewhere(spec, day, here, other, whose)) is not None:
            raise refusal


def _elsewhere(spec: TableSpec, day: Period, here: tuple[str, str | None], other: tuple[str | None, str | None],
               whose: str) -> RemovalRefused | None:
    """The refusal of :func:`refuse_other_cluster` where ``here`` (database, system identifier: the removal's
    primary) is another cluster than ``other``'s, else another database; None where neither differs (or is known)."""
    (database, system), (other_database, other_system) = here, other
    where = "the database a removal runs on (primary_postgres: ARCHIVE_PG_PRIMARY_DSN, else ARCHIVE_PG_DSN)"
    setting = "set ARCHIVE_PG_PRIMARY_DSN (or the primary_postgres resource's dsn) to"
    if system and other_system and system != other_system:
        kind, mine, theirs = "cluster", f"of cluster {system} (its system identifier)", f"cluster {other_system}"
        fix = (f"the primary of cluster {other_system} (SELECT system_identifier FROM pg_control_system() there); if "
               "this cluster replaced that one")
    elif other_database and database != other_database:
        kind, mine, theirs = "database", f"the database {database!r}", f"the database {other_database!r}"
        fix = f"the database {other_database!r} of the primary; if {database!r} replaced it"
    else:
        return None
    return RemovalRefused(
        f"{spec.name} {day} stays in the source: {where} is {mine}, and {whose} {theirs}: another {kind}'s copy of "
        "the table is not the day's source; nothing was removed", table=spec.name, day=day.isoformat(),
        retryable=False, cause=f"the removal's primary is another {kind}",
        remedy=f"{setting} {fix}, archive the day again from it with overwrite, then remove it")


def refuse_layout_change(spec: TableSpec, day: Period, manifest: dict) -> None:
    """:class:`RemovalRefused` where the table's zone, granularity or day column changed since the day was
    archived: its archive holds another period's (or column's) rows, which the proof would call "changed"
    (naming a first difference nobody made); said as what it is, before any proof."""
    if (change := layout_change(manifest, day, spec.day_column)) is not None:
        raise RemovalRefused(f"{spec.name} {day} stays in the source: {change}; archive the day again with overwrite "
                             "as the table is now configured, then remove it", table=spec.name, day=day.isoformat(),
                             remedy="archive the day again with overwrite (its rows as the table is now configured), "
                                    "or configure the table as it was when archived")


def archive_key(store: S3Store, spec: TableSpec, day: Period, former_keys: Sequence[str] = (), *,
                identity: Whose = None) -> str:
    """The key of the day's current archive (manifest.day_archive's choice, as the archive run, restore, list and
    compare make it): the one the configuration renders, or the day's key under another format or codec where the
    record there was committed later (the format changed since; or changed, the day archived again, and changed
    back: the one at the rendered key is then superseded, and proving the source against it called the day changed);
    with neither, one of ``former_keys`` (where the day's last materialization recorded it: the key_template or
    prefix changed since), else the rendered one. A removal and prune prove and mark the day there. ``identity``:
    the database removed from, this deployment's: another database's archive under another format's key is not
    the day's (see manifest.day_archive), so no removal proves this source against it, nor refuses the day as that
    database's (advising ARCHIVE_PG_PRIMARY_DSN be pointed there)."""
    key = keys.table_day_key(spec, day, store.prefix)
    return _current_key(store, spec, day, key, decoded_manifest(store, keys.manifest_key(key)), former_keys,
                        identity)


def _current_key(store: S3Store, spec: TableSpec, day: Period, key: str, manifest: dict | None,
                 former_keys: Sequence[str], identity: Whose) -> str:
    """:func:`archive_key`, given the manifest at the rendered ``key`` (None: none there)."""
    found, current = day_archive(store, spec, day, key, manifest, identity=identity)
    if current is not None:
        return found
    for former in former_keys:
        try:
            if decoded_manifest(store, keys.manifest_key(former)) is not None:
                return former
        except ManifestError as exc:
            exc.key = former
            raise
    return key


def _archive_key_trusted(store: S3Store, spec: TableSpec, day: Period, key: str, manifest: dict | None,
                         former_keys: Sequence[str], identity: SourceIdentity) -> str:
    """:func:`archive_key` (``manifest``: the one at the rendered ``key``, read already), where a damaged manifest
    that could be the day's current archive, under another format's key or a former one, refuses the removal, as
    one at its own key does (see :func:`_trusted_manifest`)."""
    try:
        return _current_key(store, spec, day, key, manifest, former_keys, identity)
    except ManifestError as exc:
        damaged = store.uri(keys.manifest_key(exc.key or key))
        raise RemovalRefused(f"{spec.name} {day} stays in the source: the day's manifest {damaged}, under the table's "
                             f"former format or key, cannot be trusted ({exc.message}); it may record the day's "
                             "current archive, so no older one is proven in its place", table=spec.name,
                             day=day.isoformat(),
                             remedy=exc.remedy or "archive the day again (overwrite) or restore that manifest from a "
                                                  "backup of the bucket") from None


def _trusted_manifest(store: S3Store, spec: TableSpec, day: Period, key: str) -> dict | None:
    """The day's manifest, or None; one that fails its own checks, or is another table-day's (whose rows
    may even equal this day's: a copy of the table), refuses the removal of that day and is left as it is."""
    try:
        return load_manifest(store, key, (spec.name, day.isoformat()))
    except ManifestError as exc:
        raise RemovalRefused(f"{spec.name} {day} stays in the source: its manifest {store.uri(keys.manifest_key(key))} "
                             f"cannot be trusted ({exc.message})", table=spec.name, day=day.isoformat(),
                             remedy=exc.remedy or "archive the day again (overwrite) or restore the manifest from a "
                                                  "backup of the bucket") from None


def _target(conn: psycopg.Connection, spec: TableSpec, day: Period, table: SourceTable, action: str) -> SourceTable:
    """The relation the action applies to: the day's own partition or table, or the table itself; one that
    cannot be locked, or that the role may not remove, is refused (the dry run finds both too)."""
    if action == "delete" or spec.partitioning.mode == "naming":
        target = table
    else:
        day = spec.period(day)
        children = day_children(conn, spec, day)
        whole = [c for c in children if c.is_period(day)]
        if not children and not _has_rows(conn, spec, day):
            raise _partition_gone(spec, day, table.qualified)
        if len(children) != 1 or not whole:
            raise RemovalRefused(f"{spec.name} {day} is not one partition of its own: {_not_own(spec, day, children)}; "
                                 f"{action} removes whole partitions: use retention action 'delete'",
                                 table=spec.name, day=day.isoformat())
        # the parent's owner first: describing the partition needs SELECT on it, and a role told to grant that
        # learned only afterwards that the detach or drop needs the owner's role
        _refuse_unprivileged(conn, spec, day, table, table, action)
        target = describe_relation(conn, *whole[0].relation(spec), spec.day_column)
    if target.relkind in ("v", "m"):
        kind = "a view" if target.relkind == "v" else "a materialized view"
        raise RemovalRefused(f"{spec.name} {day} stays in the source: {target.qualified} is {kind}, and retention "
                             "removes rows from tables", table=spec.name, day=day.isoformat(),
                             remedy="archive and remove the days of the table the view reads (configure that table), "
                                    "or remove them by hand; or drop the table's retention setting")
    if target.relkind == "f":  # LOCK TABLE refuses foreign tables ("not supported for foreign tables")
        raise RemovalRefused(f"{spec.name} {day} stays in the source: its table {target.qualified} is a foreign "
                             f"table (its rows live on another server), which PostgreSQL cannot lock for a {action}; "
                             + ("use retention action 'delete', or " if spec.partitioning.mode == "declarative" else "")
                             + f"{action} it by hand", table=spec.name, day=day.isoformat())
    if action != "delete" and (foreign := _foreign_partitions(conn, target)):
        raise RemovalRefused(f"{spec.name} {day} stays in the source: {target.qualified} has the foreign-table "
                             f"partition(s) {', '.join(foreign)} under it (their rows live on another server), which "
                             f"PostgreSQL cannot lock for a {action}, and a {action} would leave their rows of the day "
                             "on that server", table=spec.name, day=day.isoformat(),
                             remedy="use retention action 'delete' (the foreign data wrapper deletes the day's remote "
                                    "rows on their server), or remove the day by hand")
    _refuse_unprivileged(conn, spec, day, table, target, action)  # before the real run's lock, which needs them too
    return target


def _foreign_partitions(conn: psycopg.Connection, target: SourceTable) -> list[str]:
    """The foreign tables among the partitions under a sub-partitioned ``target``, at any depth: a drop or detach
    locks only their local definitions and takes them out of the table while their rows stay on the remote
    server, so the day would be marked removed with rows of it still there, and a restore would load them twice."""
    if target.relkind != "p":
        return []
    return [r[0] for r in conn.execute(
        "SELECT t.relid::pg_catalog.regclass::text FROM pg_catalog.pg_partition_tree(%s::pg_catalog.regclass) t "
        "JOIN pg_catalog.pg_class c ON c.oid = t.relid WHERE c.relkind = 'f' ORDER BY 1",
        (target.identifier.as_string(conn),))]


def _not_own(spec: TableSpec, day: Period, children: list) -> str:
    """Why the period's rows are not one partition of their own, in words: no partition holds them (the
    default's, or none), one holds more than the period (a month's partition under daily archives), one holds
    only part of it (the rest in a default partition, or nowhere), or several share them."""
    if not children:
        return "no range partition holds its rows (a default partition may)"
    if len(children) == 1:
        child = children[0]
        whole = (child.start is None or child.start <= day.utc_start) and (child.end is None or child.end >= day.utc_end)
        if whole:
            return (f"its partition {child.qualified(spec)} ({child.bound or 'its range'}) also holds rows of other "
                    f"{UNIT[spec.granularity]}s, which dropping or detaching it would remove with them")
        return (f"its partition {child.qualified(spec)} ({child.bound or 'its range'}) holds only part of it (the "
                f"rest of the {UNIT[spec.granularity]} is in a default partition, or in none)")
    return "its rows are split across the partitions " + ", ".join(c.qualified(spec) for c in children)


def _remove(conn: psycopg.Connection, spec: TableSpec, day: Period, store: S3Store, key: str, manifest: dict,
            action: str, archive: str, removed_by: str | None) -> Removal:
    """One transaction: mark the manifest pending (with this transaction's id), re-check and remove,
    commit; then mark it done. What fails before the COMMIT puts the manifest back as it was.

    The manifest must still be the one proven when the mark is written, and still carry our mark when
    it is put back or marked done: the table-day lock excludes archive runs only on the server it is
    taken on, and an archive run reading a hot standby may replace the archive meanwhile (retiring the
    object proven here). Its manifest is never overwritten with ours (which would name a deleted
    object); a replacement holding the removed rows is marked done instead."""
    mkey = keys.manifest_key(key)
    original = store.get_verified_bytes(mkey)
    if _sha(original) != manifest.get("manifest_sha256"):
        raise RemovalRefused(f"{spec.name} {day} stays in the source: its archive {store.uri(mkey)} was replaced "
                             "since it was proven (an archive run of the day on another server?); nothing was "
                             "removed", table=spec.name, day=day.isoformat(), retryable=True,
                             remedy="run the removal again: it proves the archive as it is now")
    now = dt.datetime.now(dt.UTC)
    marking = committing = False
    pending = b""
    try:
        with conn.transaction():
            # Whatever the role's default_transaction_isolation: under REPEATABLE READ the snapshot would date
            # from the first statement below, and the re-check after the lock would not see a row committed
            # meanwhile (the pending mark's PUT takes a while) that the detach or drop then takes with it.
            conn.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            table = source_table(conn, spec, day)
            target = _target(conn, spec, day, table, action)
            # The transaction's id, assigned now and recorded in the mark: whoever finds the mark later
            # asks PostgreSQL whether this transaction committed (txid_status).
            xid = conn.execute("SELECT pg_catalog.txid_current()").fetchone()[0]
            mark = {"at": now.isoformat(), "action": action, "state": "pending", "by": removed_by,
                    "relation": target.qualified, "xid": str(xid)}
            if target is not table and spec.partitioning.mode == "declarative":
                # the partition as it is removed (the table may have been laid out anew since the day was
                # archived): what a restore into the original table creates again
                partition = partition_of_day(spec, day_children(conn, spec, day))
                if partition:
                    mark["partition"] = partition
            system = server_identity(conn)[1]  # whose transaction ids these are (None: the role may not read it)
            if system is not None:
                mark["system"] = system
            # the bytes are known before the PUT: a PUT the store did but whose answer was lost is ours to take back
            pending = _encoded({**manifest, "removed": mark})
            marking = True
            try:  # only over the very manifest proven (If-Match its bytes' ETag): an archive run of the day on
                # another server may commit a new one between the read above and this write
                store.put_bytes(mkey, pending, "application/json", if_match=store.etag_of(original))
            except KeyTakenError:
                marking = False  # not written: nothing of ours to take back
                raise RemovalRefused(f"{spec.name} {day} stays in the source: its archive {store.uri(mkey)} was "
                                     "replaced since it was proven (an archive run of the day on another server?); "
                                     "nothing was removed", table=spec.name, day=day.isoformat(), retryable=True,
                                     remedy="run the removal again: it proves the archive as it is now") from None
            # (put_bytes checks it arrived: its ETag, or read back without verify_etags; else nothing is removed)
            _require_proven_object(store, spec, day, manifest)
            rows = _recheck_and_remove(conn, spec, day, table, target, manifest, action)
            committing = True  # from here the COMMIT is sent: if its answer is lost, it may have happened
    except BaseException as exc:
        if committing and isinstance(exc, psycopg.Error) and exc.sqlstate and not conn.closed:
            committing = False  # the server answered the COMMIT with an error (a deferred trigger's lock_timeout,
            # a serialization failure): it rolled the transaction back, and the mark is taken back as before it
        if committing:
            exc.add_note(f"the removal's COMMIT got no answer: it may have happened. {store.uri(mkey)} stays marked "
                         "'pending', so the day is never archived again from an emptied source; run the removal "
                         "of the day again: it completes the mark if the COMMIT happened, and takes it back if not")
            raise
        if marking:
            _take_back(store, mkey, original, pending, exc)
        raise
    done_mark = {**mark, "state": "done", "relation": target.qualified, "rows": rows}
    try:
        found = _marked_by_us(store, mkey, pending, manifest)
        if found is None and _completed_for_us(store, mkey, mark):
            # this session ended after the COMMIT, and another run of the day settled our mark as committed
            log.info("%s %s: the removal's mark was completed by another run", spec.name, day)
            return Removal(spec.name, day, action, target.qualified, rows, archive, now)
        if found is None:
            raise RemovalNotRecorded(
                f"{spec.name} {day}: the removal is committed in the source ({action} of {target.qualified}: its "
                f"{rows:,} rows are gone from the source), but its archive {store.uri(mkey)} was replaced meanwhile "
                "by one that does not hold those rows (an archive run of the day on another server?); it is left "
                "as it is", table=spec.name, day=day.isoformat(), retryable=False,
                remedy="compare the archive now in the store with the removed rows' fingerprint "
                       f"{manifest['fingerprint']}; their earlier object may be listed under 'superseded' or 'kept'")
        current, stored = found
        _tidy_removed(conn, spec, day, store, key, current)
        _write_manifest(store, mkey, {**{k: v for k, v in current.items() if k != "manifest_sha256"},
                                      "removed": done_mark}, previous=stored)
    except RemovalNotRecorded:
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised with what happened and how to settle it
        raise _not_recorded(spec, day, store, mkey, action, target.qualified, rows, exc) from exc
    return Removal(spec.name, day, action, target.qualified, rows, archive, now)


def _require_proven_object(store: S3Store, spec: TableSpec, day: Period, manifest: dict) -> None:
    """Refuse (retryable) to remove rows whose proven object is no longer stored as proven. The conditional writes
    keep an overwrite from another server from retiring it meanwhile, but some S3-compatible stores accept
    If-Match and ignore it: then only the object itself, asked once the mark is written, tells (twice alike)."""
    obj = manifest.get("object")
    if not obj:
        return
    proven = getattr(store, "proven_etag", lambda key: None)(obj["key"])  # (the proof's download saw its bytes)
    for _ in range(2):  # asked again before refusing: one answer damaged on the way, or a 404 lagging, is no verdict
        head = store.head(obj["key"])
        if head is not None and not stored_object_problems(head, manifest):  # (a copy onto itself: the same object)
            return
        if head is not None and proven and etag_text(head["ETag"]) == etag_text(proven):
            # the object whose bytes the proof downloaded and checked: under another ETag than recorded (copied onto
            # itself in other parts), or with a size its HEAD alone gets wrong (a gateway's Content-Length)
            return
    raise RemovalRefused(f"{spec.name} {day} stays in the source: its proven archive {obj.get('uri')} is "
                         f"{'gone' if head is None else 'replaced'} (an archive run of the day on another server, on "
                         "a store that ignores conditional writes?); nothing was removed", table=spec.name,
                         day=day.isoformat(), retryable=True,
                         remedy="run the removal again: it proves the archive as it is now")


def _sha(raw: bytes | None) -> str | None:
    """The manifest_sha256 of stored manifest bytes (None: none, or not a manifest)."""
    try:
        return decode_manifest(raw).get("manifest_sha256") if raw is not None else None
    except ManifestError:
        return None


def _take_back(store: S3Store, mkey: str, original: bytes | None, pending: bytes, exc: BaseException) -> None:
    """Put the proven manifest back over our pending mark after a removal that did not commit; a
    manifest someone else wrote meanwhile is left alone (it may name the only whole object).

    Put back with one more byte of trailing white space (the same manifest, read and checksummed alike, with
    another ETag): a copy of the pending mark still on its way (an attempt whose answer timed out) is
    conditioned on the proven manifest's ETag, and would land over the very same bytes put back. A mark that
    cannot be read is ours when its ETag is the damaged copy's ``exc`` names (see ``S3Store.own_damaged``)."""
    try:
        try:
            current = store.get_verified_bytes(mkey)
        except Exception:  # noqa: BLE001 - unreadable: ours only if it is the damaged copy our write left
            if (current := store.own_damaged(mkey, getattr(exc, "etag", None))) is None:
                raise
        if original is not None and current != original and (current == pending or _sha(current) is None):
            store.put_bytes(mkey, original + b" ", "application/json", if_match=store.etag_of(current))
    except Exception as cleanup:  # noqa: BLE001 - the original failure is the one to raise
        exc.add_note(f"cleanup: could not take back the pending removal mark in {store.uri(mkey)} "
                     f"({cleanup}); nothing was removed, and the next removal of the day takes it back")


def _marked_by_us(store: S3Store, mkey: str, pending: bytes, manifest: dict) -> tuple[dict, bytes] | None:
    """The manifest to mark done after the COMMIT, with its bytes as stored: our pending one, as normally;
    or one an archive run wrote over it meanwhile if it holds exactly the removed rows (same fingerprint,
    no removal mark); None for any other. A read that finds no manifest where this removal has just written its
    mark is no replacement: where a listing shows it, the store contradicts itself (``S3Store.confirm_missing``
    raises, retryable: the retry completes the mark)."""
    raw = store.get_verified_bytes(mkey)
    if raw is None:
        store.confirm_missing(mkey, MISSING_ON_READ)
    if raw == pending:
        return decode_manifest(pending), pending
    try:
        current = decode_manifest(raw) if raw is not None else None
    except ManifestError:
        return None
    if (current is None or current.get("removed") or current.get("fingerprint") != manifest.get("fingerprint")
            or foreign_manifest(current, manifest["table"], manifest["day"])):
        return None
    log.warning("%s: replaced during the removal by an archive of the same rows; marking that one done", mkey)
    return current, raw


# (the bare type: format_type(..., NULL) prints bpchar and bit as "character" and "bit", which SQL reads as char(1)
# and bit(1), so a cast to them would cut a char(3) value to one character: those are named by their own names)
_WRITABLE_COLUMNS = """
SELECT a.attname::text, a.attidentity = 'a', pg_catalog.format_type(a.atttypid, a.atttypmod),
       CASE WHEN t.typnamespace <> 'pg_catalog'::pg_catalog.regnamespace THEN pg_catalog.format_type(a.atttypid, NULL)
            WHEN t.typname = 'bpchar' THEN 'pg_catalog.bpchar' WHEN t.typname = '_bpchar' THEN 'pg_catalog.bpchar[]'
            WHEN t.typname = 'bit' THEN 'pg_catalog."bit"' WHEN t.typname = '_bit' THEN 'pg_catalog."bit"[]'
            ELSE pg_catalog.format_type(a.atttypid, NULL) END
FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = pg_catalog.to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
ORDER BY a.attnum
"""


def put_back_statement(conn: psycopg.Connection | None, spec: TableSpec, day: Period, aside: str) -> str:
    """The statement that inserts the rows of the day a restore put in ``aside`` (a qualified name, as SQL reads
    it) which the day's table lacks (EXCEPT ALL: a multiset difference, so rows that are there are not doubled):
    into the table that holds the day (naming mode: the day's own table), naming the columns that take a value
    (a generated column takes none) and overriding an identity column that is GENERATED ALWAYS, so it runs as
    pasted. Without ``conn`` (or where the table cannot be looked up), every column."""
    holder = spec.day_relation(day)
    quoted = sql_name(holder)
    columns: list[tuple[str, bool]] = []
    if conn is not None:
        try:
            with conn.transaction():
                columns = conn.execute(_WRITABLE_COLUMNS, (quoted,)).fetchall()
        except psycopg.Error:
            columns = []
    if not columns:
        return f"INSERT INTO {quoted} SELECT * FROM {aside} EXCEPT ALL SELECT * FROM {quoted}"
    names = ", ".join(sql_name(name, qualified=False) for name, _, _, _ in columns)
    overriding = " OVERRIDING SYSTEM VALUE" if any(always for _, always, _, _ in columns) else ""
    by_text = _without_equality(conn, quoted, [name for name, _, _, _ in columns])
    # the restored rows have the archived types, the table its own now (a uuid column retyped text since): each
    # read as the table's type without its length (an explicit cast to varchar(3) would cut a value the INSERT
    # then refuses); json, xml, point...: no equality to compare by, so compared by their text
    restored = ", ".join(f"{sql_name(n, qualified=False)}::{'text' if n in by_text else bare}"
                         for n, _, _, bare in columns)
    held = ", ".join(f"{sql_name(n, qualified=False)}::text" if n in by_text else sql_name(n, qualified=False)
                     for n, _, _, _ in columns)
    back = ", ".join(f"{sql_name(n, qualified=False)}::{kind}" if n in by_text else sql_name(n, qualified=False)
                     for n, _, kind, _ in columns)
    return (f"INSERT INTO {quoted} ({names}){overriding} SELECT {back} FROM (SELECT {restored} FROM {aside} EXCEPT "
            f"ALL SELECT {held} FROM {quoted}) AS lacking ({names})")


def _without_equality(conn: psycopg.Connection, quoted: str, names: list[str]) -> set[str]:
    """The columns of ``quoted`` whose type has no equality EXCEPT ALL could compare by (json, xml, point ...),
    as PostgreSQL's planner finds them."""
    def plans(chosen: list[str]) -> bool:
        listed = ", ".join(sql_name(n, qualified=False) for n in chosen)
        try:
            with conn.transaction():
                conn.execute(f"EXPLAIN (COSTS OFF) SELECT {listed} FROM {quoted} EXCEPT ALL SELECT {listed} FROM {quoted}")
        except psycopg.Error:
            return False
        return True

    if plans(names):
        return set()
    return {name for name in names if not plans([name])}


def source_differs(spec: TableSpec, day: Period, problems: list[str],
                   conn: psycopg.Connection | None = None) -> RemovalRefused:
    """The refusal of a day whose archive checks out and whose source's rows are not the archive's any more
    (rows changed, arrived late, or were deleted while the day still holds others): what to do either way
    (``conn``: to name the columns of the statement that puts lost rows back, see :func:`put_back_statement`)."""
    return RemovalRefused(
        f"{spec.name} {day} stays in the source, not proven: its rows are not the archive's any more (rows changed, "
        "arrived late or were deleted since it was archived; the archive checks out): " + "; ".join(problems),
        table=spec.name, day=day.isoformat(), needs_overwrite=True, problems=problems,
        remedy="if the source's rows are the right ones, archive the day again (overwrite), then remove it; if rows "
               "were lost from the source, put them back first: restore the day into a new table (into='new') and "
               f"insert the rows the table lacks ({put_back_statement(conn, spec, day, '<that table>')}), then "
               "remove it")


def _partition_gone(spec: TableSpec, day: Period, qualified: str) -> RemovalRefused:
    """No partition holds the day now: it was detached or dropped by someone else (its rows may all be in a detached
    table: not lost, and not to be restored a second time)."""
    return RemovalRefused(
        f"{spec.name} {day} stays as it is: no partition of {qualified} holds the day now (its partition "
        "was detached or dropped since the day was archived, by someone else: pg_partman's retention, a "
        "DBA); this run removed nothing", table=spec.name, day=day.isoformat(),
        remedy="if the partition went on purpose, the day is out of the table already (a detached partition "
               "is a table of its own now); if not, restore the day from its archive into the table "
               "(restore --into original: it creates the day's partition again)")


@classified("proving")
def emptied(conn: psycopg.Connection, spec: TableSpec, day: Period, archived: int, now: int,
            action: str) -> RemovalRefused:
    """The refusal of a day whose source holds fewer (no) rows than archived: its partition gone (declarative
    tables: detached or dropped, the rows perhaps all in a table of their own), or its rows lost. A database error
    looking for the partition comes out as an :class:`ArchiveError` naming table, day and cause."""
    if spec.partitioning.mode == "declarative" and not now and not day_children(conn, spec, spec.period(day)):
        return _partition_gone(spec, day, spec.name)
    return rows_lost(spec, day, archived, now, action)


def rows_lost(spec: TableSpec, day: Period, archived: int, now: int, action: str) -> RemovalRefused:
    """The source lost the day's rows since they were archived (a TRUNCATE or DELETE of someone else's): the
    archive is proven on its own; archiving the day again would replace it by the emptied day."""
    left = ("drop the emptied partition by hand" if action == "drop" else
            "detach the emptied partition by hand" if action == "detach" else "nothing is left to remove")
    return RemovalRefused(
        f"{spec.name} {day} stays as it is: the source holds {now:,} of the day's {archived:,} archived rows now "
        "(deleted or truncated by someone else since the day was archived); the archive is their only copy, and "
        "this run removed nothing", table=spec.name, day=day.isoformat(),
        remedy=f"if the rows were not meant to go, restore them from the archive into the table (restore --into "
               f"original); if they were, {left} (an archive run of the day now would replace the archive of the "
               "rows by one of the emptied day)")


def _completed_for_us(store: S3Store, mkey: str, mark: dict) -> bool:
    """Whether the manifest is marked done for this very removal (its transaction: ``xid`` and ``system``), by
    another run that found our pending mark and our transaction committed."""
    return _done_for(store, mkey, mark) is not None


def _done_for(store: S3Store, mkey: str, mark: dict) -> dict | None:
    """The manifest at ``mkey`` if it is marked done for the removal ``mark`` records (its transaction), else None."""
    try:
        raw = store.get_verified_bytes(mkey)
        manifest = decode_manifest(raw) if raw is not None else None
    except Exception:  # noqa: BLE001 - not known to be ours
        return None
    removed = (manifest or {}).get("removed")
    # (a mark an older release wrote has no xid: only a mark of the same transaction is ours, so none matches it)
    if (isinstance(removed, dict) and removed.get("state") == "done" and mark.get("xid") is not None
            and removed.get("xid") == mark.get("xid") and removed.get("system") == mark.get("system")):
        return manifest
    return None


def _not_recorded(spec: TableSpec, day: Period, store: S3Store, mkey: str, action: str, relation: str, rows: int,
                  exc: BaseException) -> RemovalNotRecorded:
    retryable = getattr(exc, "retryable", None)
    detail = exc.message if isinstance(exc, ArchiveError) else str(exc)  # its remedy is not ours to give
    return RemovalNotRecorded(
        f"{spec.name} {day}: the removal is committed in the source ({action} of {relation}: its {rows:,} rows are "
        f"gone from the source, the archive is their only copy), but writing the 'done' mark to {store.uri(mkey)} "
        f"failed ({type(exc).__name__}: {detail}); the manifest stays marked 'pending', so the day is never archived "
        "again from the emptied source", table=spec.name, day=day.isoformat(),
        retryable=True if retryable is None else retryable,
        remedy="run the removal of this day again (a retry does it): it finds the committed removal and completes "
               "the mark")


def _parse_time(text: str | None) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


@speaks_utf8()
@names_database_errors
def settle_pending_removal(conn: psycopg.Connection, spec: TableSpec, day: Period | dt.date,
                           store: S3Store, temp_dir: str | None = None, key: str | None = None) -> Settlement:
    """Settle a pending removal mark left in the day's manifest by a removal that did not finish.

    Under the (table, day) lock, on the primary (``conn``): if the removing transaction committed,
    the mark is completed ("done") once the archive still checks out; if it did not, the manifest is
    put back without the mark, so the day is an ordinary archived day again (archived again with
    ``overwrite`` if its rows changed, proven and removed by the next removal); if that cannot be told (no
    transaction to ask about, and rows that are not, or cannot be told, the archived ones: see
    :func:`_told_by_source`), the mark
    stays (``outcome="kept pending"``). A manifest without
    a pending mark is left as it is (``outcome="none"``); one that is not the day's (another table-day's,
    see ``manifest.owned``) is never settled, nor one on another cluster or database than the day's (see
    :func:`refuse_other_cluster`): :class:`RemovalRefused`. Raises :class:`RemovalNotRecorded` when the
    removal committed but the archive no longer checks out (the mark stays pending); a database error (a
    lost session, a timeout) comes out as an :class:`ArchiveError` naming table, day, cause and remedy. ``key``:
    the day's archive where it is not at the key the configuration renders (see :func:`archive_key`)."""
    require_autocommit(conn, "settling a pending removal")
    day = spec.period(day)
    try:
        if _in_recovery(conn):
            _still_removing(conn, spec, day, store, key)  # (the primary's removal, which this lock does not see)
            raise _primary_needed(spec, day, f"settling the removal of {spec.name} {day}")
        with table_day_lock(conn, spec.name, day):
            key = key or keys.table_day_key(spec, day, store.prefix)
            manifest = _trusted_manifest(store, spec, day, key)
            if removal_state(manifest) != "pending":
                return Settlement("none", manifest)
            # on the day's own database: a staging copy's rows count as the removal not committed, and the mark
            # was taken back while the real source had lost the day (prune's settle of a day gone, an archive run's)
            refuse_other_cluster(conn, spec, day, manifest)
            committed, why = _committed(conn, spec, day, manifest)
            return _settle(conn, spec, day, store, key, manifest, committed, why, temp_dir)
    except psycopg.Error as exc:  # the mark stays as it was: a terminated session, a timeout, a privilege
        raise wrapped(exc, conn, spec, day.isoformat(), doing="removing") from None
    except ArchiveError as exc:  # the store's (a manifest read that failed) or a refusal: it names the day
        named(exc, spec.name, day.isoformat())
        raise


def _still_removing(conn: psycopg.Connection, spec: TableSpec, day: Period, store: S3Store, key: str | None) -> None:
    """On a hot standby, refuse (retryable) to settle a pending mark whose removal is still running on the primary
    (its transaction in progress, as the standby has replayed it, or committed moments ago: its done mark on the
    way): the table-day lock is the primary's, so that removal was not seen, and "run it on the primary" told to
    configure what is configured.""",
    manifest = _trusted_manifest(store, spec, day, key or keys.table_day_key(spec, day, store.prefix))
    mark = (manifest or {}).get("removed") or {}
    xid = mark.get("xid") if removal_state(manifest) == "pending" else None
    if xid is None or mark.get("system") and mark["system"] != server_identity(conn)[1]:  # (another cluster's id)
        return
    marked = _parse_time(mark.get("at"))
    recent = marked is not None and marked.tzinfo is not None and \
        dt.datetime.now(dt.UTC) - marked < dt.timedelta(minutes=10)
    try:
        status = _transaction_status(conn, xid)
    except psycopg.Error as exc:  # "in the future": the primary gave it out a moment ago, and the standby has not
        # replayed it yet; a mark older than that is a lost timeline's (a promoted standby keeps the system id)
        status = "in progress" if "in the future" in str(exc) and recent else None
    except ValueError:
        return
    if status == "in progress":
        raise RemovalRefused(f"{spec.name} {day} is being removed by a run on the primary right now (its transaction "
                             f"{xid} is still open); nothing was archived", table=spec.name, day=day.isoformat(),
                             retryable=True, remedy="retried automatically, once that removal has ended")
    if status == "committed":  # committed, its "done" mark on its way to the store (however long the removal
        # took: its mark's time is when it began), or a removal that died here, whose mark a removal run settles
        raise RemovalRefused(f"{spec.name} {day} was removed by a run on the primary (its transaction {xid} "
                             "committed) that has not marked the day done yet: it is finishing, or it was killed "
                             "before; nothing was archived", table=spec.name, day=day.isoformat(), retryable=True,
                             remedy="retried automatically; if no removal of the day runs on the primary, run the "
                                    "removal of the day there (prune, or the day's removal job): it settles the mark")


def _require_primary(conn: psycopg.Connection, spec: TableSpec, day: Period, what: str) -> None:
    """Removals write to the source: a hot standby refuses them, so say where to run them instead."""
    if _in_recovery(conn):
        raise _primary_needed(spec, day, what)


def _in_recovery(conn: psycopg.Connection) -> bool:
    """Whether ``conn`` is a hot standby."""
    return conn.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone()[0]


def _primary_needed(spec: TableSpec, day: Period, what: str) -> RemovalRefused:
    return RemovalRefused(f"{what} must run on the primary, and this connection is a hot standby: set "
                          "ARCHIVE_PG_PRIMARY_DSN to the primary and run the removal of the day (the code "
                          "location's and the command line's removals run there)", table=spec.name,
                          day=day.isoformat())


def _transaction_status(conn: psycopg.Connection, xid: object) -> str | None:
    """PostgreSQL's txid_status of a removal mark's transaction (raises where the id is in the future, ...)."""
    with conn.transaction():
        return conn.execute("SELECT pg_catalog.txid_status(%s::bigint)", (int(xid),)).fetchone()[0]


@classified("proving")
@speaks_utf8()
def pending_removal_committed(conn: psycopg.Connection, spec: TableSpec, day: Period | dt.date,
                              manifest: dict) -> bool:
    """Whether the removal that left ``manifest``'s pending mark committed, decided as settling decides it but
    changing nothing (a dry run, a check on its own: the day is then removed, or still the source's to prove). A
    removal whose fate cannot be told (see :func:`_in_doubt`) is not known to have committed: False, and settling
    leaves its mark pending."""
    return _committed(conn, spec, spec.period(day), manifest)[0] is True


def _committed(conn: psycopg.Connection, spec: TableSpec, day: Period,
               manifest: dict) -> tuple[bool | None, str]:
    """Whether the removal that wrote the manifest's pending mark committed (None: it cannot be told), and the
    evidence.

    The mark's transaction id decides where PostgreSQL still knows it (``txid_status``), unless it says
    committed while the source still holds exactly the archived rows (an id handed out again after a
    crash: see :func:`_holds_archived_rows`'s caller); a mark without
    one (written by an older version), one too old to know, or one of another cluster (its ``system``
    identifier not this server's) falls back to the source (see :func:`_told_by_source`)."""
    mark = manifest["removed"]
    xid = mark.get("xid")
    # Transaction ids are a cluster's own: after the database moved to another cluster (a dump restored, a
    # logical migration; a promoted physical standby keeps the system identifier), the mark's number names
    # an unrelated transaction there, whose status would complete a removal that never happened or take
    # back one that did. Such a mark is settled by the source instead.
    here = server_identity(conn)[1] if mark.get("system") and xid is not None else None
    if here is not None and here != mark["system"]:
        why = f"its transaction {xid} ran on another cluster (system {mark['system']}, this one is {here}); "
    elif xid is not None:
        try:
            status = _transaction_status(conn, xid)
        except (psycopg.Error, ValueError) as exc:  # e.g. "in the future": another cluster's transaction
            status, unknown = None, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
        else:
            unknown = "too old for PostgreSQL to remember"
        if status == "committed":
            if not still_detached(conn, spec, day, manifest) and _holds_archived_rows(conn, spec, day, manifest):
                if _written_after(conn, spec, day, int(xid)):  # a restore into the original table since
                    return True, (f"its transaction {xid} committed; the day's rows in the source were written "
                                  "after it (restored since)")
                # A transaction that wrote nothing durable before a crash leaves its id to be handed out again
                # (the removal takes its id before it locks and removes): "committed" is then another's.
                return False, (f"its transaction id {xid} reads as committed, but the source still holds "
                               "exactly the archived rows of the day: the removal never took effect (after a "
                               "server crash, PostgreSQL hands out again the id of a transaction that wrote "
                               "nothing)")
            return True, f"its transaction {xid} committed"
        if status == "aborted":
            return False, f"its transaction {xid} was rolled back"
        if status == "in progress":
            raise RemovalRefused(f"{spec.name} {day}: the removal that marked its manifest pending (transaction {xid}) "
                                 "is still running; trying again later", table=spec.name, day=day.isoformat(),
                                 retryable=True)
        why = f"its transaction {xid} is unknown ({unknown}); "
    else:
        why = "the mark names no transaction; "
    return _told_by_source(conn, spec, day, manifest, why)


def _told_by_source(conn: psycopg.Connection, spec: TableSpec, day: Period, manifest: dict,
                    why: str) -> tuple[bool | None, str]:
    """:func:`_committed`'s answer for a mark whose transaction cannot be asked about (``why``: why not), from the
    source alone: a day with no rows left (its partition or table gone, or empty), or a naming-mode day table a
    detach left inheriting from nothing, was removed; a day that still holds exactly the archived rows was not (as
    for a "committed" status). Other rows tell nothing (None): the archived rows changed since (not removed), or
    rows that arrived after a removal that committed (late rows: they do not make the removed ones less gone),
    and taking the mark back over those made the removed rows' archive, their only copy, an ordinary archived
    day's, which an overwrite deleted. Nor do rows compared with a fingerprint this version cannot compute (an older
    or newer version's algorithm): said so, never called other rows (the operator would look for an edit)."""
    if still_detached(conn, spec, day, manifest):
        return True, why + "its day table inherits from no table any more"
    rows = _source_rows(conn, spec, day, manifest)
    if rows == 0:
        return True, why + "the source has no rows of the day left"
    if (unknown := fingerprint.why_uncomputable(manifest.get("fingerprint"))) is not None:
        return None, why + (f"the source has {rows:,} rows of the day, and whether they are the "
                            f"{manifest.get('rows', 0):,} archived ones cannot be told: {unknown[0]}")
    if _holds_archived_rows(conn, spec, day, manifest):
        return False, why + f"the source still holds exactly the {rows:,} archived rows of the day"
    return None, why + f"the source has {rows:,} rows of the day, which are not the {manifest.get('rows', 0):,} " \
                       "archived ones"


def _day_table_gone(conn: psycopg.Connection, spec: TableSpec, day: Period) -> bool:
    """Whether a naming-mode day's table no longer exists (its rows went with it; never in other modes)."""
    if spec.partitioning.mode != "naming":
        return False
    child = sql.Identifier(spec.schema_name, spec.child_table(day)).as_string(conn)
    return conn.execute("SELECT pg_catalog.to_regclass(%s) IS NULL", (child,)).fetchone()[0]


def _relation_back(conn: psycopg.Connection, spec: TableSpec, day: Period, manifest: dict) -> bool:
    """Whether the partition or day table a done drop or detach removed is in the source again (for a day archived
    without rows: its restore into the original table re-creates it empty, no rows tell it apart, but it is an
    ordinary source day again, and the next removal removes it again, not "already removed")."""
    mark = manifest.get("removed") or {}
    if mark.get("action") not in ("drop", "detach"):
        return False
    if spec.partitioning.mode == "naming":
        return not _day_table_gone(conn, spec, day) and not still_detached(conn, spec, day, manifest)
    if spec.partitioning.mode == "declarative":
        return any(relation_name(*child.relation(spec)) == mark.get("relation") for child in day_children(conn, spec, day))
    return False


def _has_rows(conn: psycopg.Connection, spec: TableSpec, day: Period) -> bool:
    """Whether the source has any row of the day (its day table or partition may be gone)."""
    if _day_table_gone(conn, spec, day):
        return False
    with conn.transaction():
        conn.execute("SELECT pg_catalog.set_config('row_security', 'off', true)")  # hidden rows are an error, not none
        table = source_table(conn, spec, day)
        return conn.execute(sql.SQL("SELECT EXISTS (SELECT FROM {} WHERE {})").format(
            table.identifier, day_filter(table, day))).fetchone()[0]


def _source_rows(conn: psycopg.Connection, spec: TableSpec, day: Period, manifest: dict) -> int:
    """Rows of the day in the source now (0 if its day table is gone), counted by the fingerprint the
    manifest records."""
    if _day_table_gone(conn, spec, day):
        return 0
    algorithm = fingerprint.algorithm_for(manifest.get("fingerprint") or "")
    return source_fingerprint(conn, spec, day, algorithm).rows


def _written_after(conn: psycopg.Connection, spec: TableSpec, day: Period, xid: int) -> bool:
    """Whether every row of the day was written after the transaction ``xid`` (its xmin younger): rows restored
    after a removal that committed, where an id handed out again after a crash finds the rows it never removed,
    older than it (some perhaps rewritten since). False where it cannot be told (a view, a foreign table)."""
    try:
        with conn.transaction():
            table = source_table(conn, spec, day)
            # every row (a restore writes them all; rows an upsert rewrote unchanged leave the others as they were)
            younger = sql.SQL("SELECT pg_catalog.count(*) > 0 AND pg_catalog.bool_and(pg_catalog.age(xmin) < "
                              "pg_catalog.age(%s::pg_catalog.text::pg_catalog.xid)) FROM {} WHERE {}").format(
                table.identifier, day_filter(table, day))
            # (with_params: a "%" in the table's name or its key expression is no placeholder)
            return bool(conn.execute(with_params(younger, conn), (str(xid % 2**32),)).fetchone()[0])
    except (psycopg.Error, ArchiveError):
        return False


def _holds_archived_rows(conn: psycopg.Connection, spec: TableSpec, day: Period, manifest: dict) -> bool:
    """Whether the source holds rows of the day, and exactly the archived ones (the manifest's fingerprint). False
    where this version cannot compute that fingerprint (see fingerprint.why_uncomputable): the caller that must not
    take that for "other rows" asks first (:func:`_told_by_source`)."""
    recorded = manifest.get("fingerprint") or ""
    if _day_table_gone(conn, spec, day) or fingerprint.why_uncomputable(recorded) is not None:
        return False
    try:
        now = source_fingerprint(conn, spec, day, fingerprint.algorithm_for(recorded),
                                 [c["name"] for c in manifest.get("columns", [])] or None)
    except ColumnsChangedError:
        return False
    return now.rows > 0 and str(now) == recorded


def _settle(conn: psycopg.Connection, spec: TableSpec, day: Period, store: S3Store, key: str, manifest: dict,
            committed: bool | None, why: str, temp_dir: str | None = None) -> Settlement:
    """Complete the pending mark (``committed``) or take it back; the caller holds the table-day lock. A mark
    whose removal cannot be told committed or not (None) stays pending: an archive run of the day then takes it
    for a removal (refused without overwrite; with it, the marked archive is kept beside the new one), and a
    removal refuses it (:func:`_in_doubt`)."""
    mkey = keys.manifest_key(key)
    mark = manifest["removed"]
    if committed is None:
        log.warning("%s %s: kept the pending removal mark of %s: whether its removal committed cannot be told (%s)",
                    spec.name, day, store.uri(mkey), why)
        return Settlement("kept pending", manifest, why)
    marked = store.get_verified_bytes(mkey)  # put back if what replaces it comes back damaged
    if not committed:
        unmarked = {k: v for k, v in manifest.items() if k not in ("removed", "manifest_sha256")}
        try:
            _write_manifest(store, mkey, unmarked, previous=marked)
        except Exception as exc:
            # refused: written meanwhile; by the removal that wrote the mark, taking it back itself (its session
            # ended, its process went on)? Then the manifest is as this would have put it: taken back all the same
            now = _unmarked_now(store, mkey, unmarked) if S3Store.refused(exc) else None
            if now is None:
                raise
            log.warning("%s %s: the pending removal mark of %s was taken back meanwhile by the run that wrote it "
                        "(%s)", spec.name, day, store.uri(mkey), why)
            return Settlement("taken back", now, why)
        log.warning("%s %s: took back the pending removal mark of %s (%s): the day was not removed",
                    spec.name, day, store.uri(mkey), why)
        return Settlement("taken back", decode_manifest(encode_manifest(unmarked)), why)
    problems = verify_archive(store, key, {}, deep=True, owner=(spec.name, day.isoformat()), temp_dir=temp_dir)
    if problems:
        raise RemovalNotRecorded(
            f"{spec.name} {day} was removed from the source ({mark.get('action')} at {mark.get('at')}; {why}), but "
            f"its archive no longer checks out: {'; '.join(problems)}; {store.uri(mkey)} stays marked 'pending'",
            table=spec.name, day=day.isoformat(), retryable=False, problems=problems,
            remedy="restore the archive's object from a replica or backup of the bucket, then run the removal again")
    done = {**{k: v for k, v in manifest.items() if k != "manifest_sha256"},
            "removed": {**mark, "state": "done", "relation": mark.get("relation") or "", "rows": manifest["rows"],
                        "settled_at": dt.datetime.now(dt.UTC).isoformat(), "settled_because": why}}
    _tidy_removed(conn, spec, day, store, key, manifest)
    try:
        _write_manifest(store, mkey, done, previous=marked)
    except Exception as exc:  # noqa: BLE001 - re-raised with what happened and how to settle it
        if (already := _done_for(store, mkey, mark)) is not None:  # the removal's own run completed its mark meanwhile
            log.info("%s %s: the pending removal mark of %s was completed meanwhile (by the run that removed the day)",
                     spec.name, day, store.uri(mkey))
            return Settlement("completed", already, why)
        raise _not_recorded(spec, day, store, mkey, mark.get("action", ""), mark.get("relation") or "?",
                            manifest["rows"], exc) from exc
    log.info("%s %s: completed the pending removal mark of %s (%s)", spec.name, day, store.uri(mkey), why)
    return Settlement("completed", decode_manifest(encode_manifest(done)), why)


def _in_doubt(spec: TableSpec, day: Period, store: S3Store, key: str, manifest: dict, why: str) -> RemovalRefused:
    """The refusal of a day whose pending mark's removal cannot be told committed or not (see
    :func:`_told_by_source`): taken back, an overwrite deleted the archive that may be the removed rows' only copy;
    completed, rows that may be the archived ones changed would pass for late ones. Archived again with
    overwrite, the marked archive is kept beside the new one (``kept``), so either way nothing is lost."""
    mark = manifest["removed"]
    uri = (manifest.get("object") or {}).get("uri") or store.uri(keys.manifest_key(key))
    untold = fingerprint.why_uncomputable(manifest.get("fingerprint")) is not None  # (see _told_by_source)
    those, over = (("those may be the archived rows (it never took effect)", "rows that cannot be told the archived "
                    "ones or not") if untold else
                   ("those are either the archived rows changed since (it never took effect)",
                    "rows that are not the archived ones"))
    return RemovalRefused(
        f"{spec.name} {day} stays in the source, and {store.uri(keys.manifest_key(key))} stays marked 'pending': "
        f"whether the removal that marked it ({mark.get('action') or '?'} at {mark.get('at') or '?'}) committed cannot "
        f"be told ({why}): {those} or rows that "
        f"arrived after it (it did, and {uri} is the only copy of the removed rows); this run removed nothing",
        table=spec.name, day=day.isoformat(), retryable=False, needs_overwrite=True,
        cause=f"a pending removal mark whose transaction cannot be checked, over {over}",
        remedy=in_doubt_remedy(uri))


def in_doubt_remedy(uri: str) -> str:
    """What settles a day whose pending mark's removal cannot be told committed or not (``uri``: its marked
    archive): the refusal's remedy (:func:`_in_doubt`), and what list says of the day (one wording)."""
    return (f"archive the day again with overwrite (the rows there are now are archived; {uri} is kept beside them, "
            "listed under 'kept' in the new manifest: restore it if you need the rows the removal may have taken), "
            "then remove the day")


@classified("proving")
def undecided_removal(conn: psycopg.Connection, spec: TableSpec, day: Period | dt.date,
                      manifest: dict) -> str | None:
    """Why the removal that left ``manifest``'s pending mark cannot be told committed or not (:func:`_committed`'s
    None: its transaction cannot be asked, and the source's rows are not, or cannot be told, the archived ones), or
    None where it can be told, or is still running: then the next archive run or removal of the day settles the mark,
    and only then.
    An undecided mark stays pending through both (they refuse the day): list says so, with the refusal's remedy."""
    try:
        committed, why = _committed(conn, spec, spec.period(day), manifest)
    except RemovalRefused:  # (its removal still running: that run settles it)
        return None
    return why if committed is None else None


def _recheck_and_remove(conn: psycopg.Connection, spec: TableSpec, day: Period, table: SourceTable,
                        target: SourceTable, manifest: dict, action: str) -> int:
    """Lock out writers, prove the source still equals the archive, then remove: one transaction."""
    try:
        _lock_day(conn, spec, table, target, action)
    except psycopg.errors.UndefinedTable:  # described before the pending mark's PUT: renamed or dropped since
        raise RemovalRefused(f"{spec.name} {day} stays in the source: its relation changed while it was being removed "
                             f"({target.qualified} is not found by that name any more: renamed or dropped meanwhile)",
                             table=spec.name, day=day.isoformat(), retryable=True,
                             remedy="run the removal again: it proves the day as it is now") from None
    table, target = _described_again(conn, spec, day, target, action)
    where = day_filter(table, day)
    columns = archived_columns(conn, spec, day, table, manifest)
    algorithm = fingerprint.algorithm_for(manifest["fingerprint"])
    columns = fingerprint.as_archived(conn, columns, manifest["columns"], algorithm)  # (as the proof hashed them)
    now = fingerprint.compute(conn, target.identifier, columns, day_filter(target, day), algorithm)
    archived_rows = fingerprint.Fingerprint.parse(manifest["fingerprint"]).rows
    # (the types named as the archive's snapshot named them: PostgreSQL's first on the path, whatever the session's)
    with pinned_settings(conn, search_path=SNAPSHOT_SETTINGS["search_path"]):
        described = relation_shapes(conn, table.identifier.as_string(conn))
    if shapes := shape_changes(manifest.get("columns", []), described):
        # a composite altered since the proof (a field renamed prints the same fingerprint): its archive would not
        # restore into the table any more, so the rows stay, as compare and a re-run call the day changed
        raise RemovalRefused(
            f"{spec.name} {day} stays in the source: a type inside its columns changed since the day was archived "
            f"and proven: {'; '.join(shapes)} ({now.rows:,} rows now, {archived_rows:,} archived"
            + ("" if str(now) == manifest["fingerprint"] else ", and the fingerprint differs") + "); archive the day "
            "again (overwrite), then remove it", table=spec.name, day=day.isoformat())
    if str(now) != manifest["fingerprint"] and now.rows == 0 and archived_rows:
        raise emptied(conn, spec, day, archived_rows, now.rows, action)
    if str(now) != manifest["fingerprint"]:
        raise RemovalRefused(
            f"{spec.name} {day} stays in the source: its rows changed since they were archived and proven "
            f"({now.rows:,} rows now, {fingerprint.Fingerprint.parse(manifest['fingerprint']).rows:,} archived); "
            "archive the day again (overwrite), then remove it", table=spec.name, day=day.isoformat())
    _refuse_unremovable(conn, spec, day, table, target, action)
    if action != "delete":
        if spec.partitioning.mode == "declarative":
            _detach(conn, spec, day, action, table.qualified,
                    sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(table.identifier, target.identifier))
        elif action == "detach":
            for parent, partition in _parents(conn, spec, target):
                if partition:  # a day table that is a declarative partition: NO INHERIT is refused for those
                    _detach(conn, spec, day, action, parent, _out_of(target, parent, partition))
                else:
                    conn.execute(_out_of(target, parent, partition))
        if action == "drop":
            conn.execute(sql.SQL("DROP TABLE {}").format(target.identifier))
        _removed_the_locked(conn, spec, day, table, target, action)
        return now.rows
    deleted = _foreign_delete(conn, spec, day, table, where)
    if deleted is None:  # no foreign table reached: in batches
        deleted = 0
        while True:
            # (tableoid, ctid): a ctid alone is not unique across the partitions of a partitioned table
            batch = conn.execute(sql.SQL(
                "DELETE FROM {t} WHERE {w} AND (tableoid, ctid) IN (SELECT tableoid, ctid FROM {t} WHERE {w} "
                "LIMIT {n})").format(t=table.identifier, w=where, n=sql.Literal(spec.retention.batch_rows))).rowcount
            if batch <= 0:
                break
            deleted += batch
    if deleted != now.rows:  # a trigger, a rule or row security changed what DELETE saw: keep everything
        raise RemovalRefused(f"{spec.name} {day} stays in the source: DELETE removed {deleted:,} rows where "
                             f"{now.rows:,} were archived (a trigger, rule or row-level security on the table?); "
                             "rolled back", table=spec.name, day=day.isoformat())
    left = conn.execute(sql.SQL("SELECT pg_catalog.count(*) FROM {} WHERE {}").format(table.identifier, where)
                        ).fetchone()[0]
    if left:  # DELETE said so, but an INSTEAD rule (or a trigger putting rows back) kept them: never "done"
        raise RemovalRefused(f"{spec.name} {day} stays in the source: DELETE reported {deleted:,} rows removed, but "
                             f"{left:,} rows of the day are still there (an INSTEAD rule or a trigger?); rolled back",
                             table=spec.name, day=day.isoformat())
    _removed_the_locked(conn, spec, day, table, target, action)
    return deleted


def _removed_the_locked(conn: psycopg.Connection, spec: TableSpec, day: Period, table: SourceTable,
                        target: SourceTable, action: str) -> None:
    """Refuse (retryable; the transaction rolls back) a removal whose statements, each resolving the names again,
    reached relations other than the ones locked and proven: ALTER SCHEMA ... RENAME takes no lock on the tables
    in it, so a migration swapping two schemas went through the removal's locks, and its DELETE (or DROP) removed
    another table's rows, which no archive holds. Asked inside the removal's transaction, after its statements."""
    named = {} if action == "drop" and table.oid == target.oid else {table.qualified: (table.identifier, table.oid)}
    if action == "delete":  # (the dropped table names nothing now: it is looked for by its oid below)
        named[target.qualified] = (target.identifier, target.oid)
    moved = [name for name, (identifier, oid) in named.items() if oid is not None and conn.execute(
        "SELECT pg_catalog.to_regclass(%s)::pg_catalog.oid", (identifier.as_string(conn),)).fetchone()[0] != oid]
    if action == "drop" and target.oid is not None and conn.execute(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_class WHERE oid = %s)", (target.oid,)).fetchone()[0]:
        moved.append(target.qualified)  # (the DROP dropped another table: the one locked is still there)
    if action == "detach" and target.oid is not None and conn.execute(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_inherits WHERE inhrelid = %s)", (target.oid,)).fetchone()[0]:
        moved.append(target.qualified)
    if moved:
        raise RemovalRefused(f"{spec.name} {day} stays in the source: {', '.join(sorted(set(moved)))} came to name "
                             "another relation while the day was being removed (it, or its schema, renamed: ALTER "
                             f"TABLE/SCHEMA ... RENAME, a migration swapping schemas), so the {action} reached a "
                             "relation that was not the one proven; rolled back", table=spec.name,
                             day=day.isoformat(), retryable=True,
                             remedy="run the removal again once the renaming is done: it proves the day as it is "
                                    "then; rename tables and schemas outside removal runs")


def _foreign_delete(conn: psycopg.Connection, spec: TableSpec, day: Period, table: SourceTable,
                    where: sql.Composable) -> int | None:
    """The day's DELETE where it reaches a foreign table (a postgres_fdw partition), as one statement the remote
    server runs itself; None where it reaches none (the caller deletes in batches). A delete the FDW cannot push
    down goes row by row, by ctid, to the remote table, and a ctid names a row in every partition of a
    partitioned remote table: rows of other days would go. That is refused, naming the foreign tables."""
    statement = sql.SQL("DELETE FROM {} WHERE {}").format(table.identifier, where)
    nodes, remote, foreign = [explain(conn, sql.SQL("EXPLAIN (FORMAT JSON, VERBOSE) ") + statement)], [], set()
    while nodes:
        node = nodes.pop()
        nodes.extend(node.get("Plans", []))
        if "Remote SQL" in node:
            remote.append(node["Remote SQL"])
            if "Relation Name" in node:
                foreign.add(relation_name(node.get("Schema", ""), node["Relation Name"]))
    if not remote:
        return None
    # the system column itself (WHERE ctid = $1, SELECT ctid ..., an alias's r1.ctid), not a name that holds the
    # letters: postgres_fdw qualifies every relation (ctid.t, public.ctid) and quotes what needs quoting
    if any(re.search(r"(?<![\w.$])ctid(?![\w.$])|\br\d+\.ctid(?![\w.$])", _unquoted(text)) for text in remote):
        raise RemovalRefused(
            f"{spec.name} {day} stays in the source: its DELETE reaches foreign table(s) {sorted(foreign)} that the "
            "foreign data wrapper cannot delete from on the remote server in one statement; row by row (by ctid) it "
            "would take rows of other days from a partitioned remote table. Remove the day's rows on the remote "
            "server, or use retention action 'detach' or 'drop' (which leave the remote rows)",
            table=spec.name, day=day.isoformat())
    return conn.execute(statement).rowcount


def _unquoted(remote_sql: str) -> str:
    """``remote_sql`` with its quoted names and string literals emptied (a name holding the letters ctid)."""
    return re.sub(r"'(?:[^']|'')*'", "''", re.sub(r'"(?:[^"]|"")*"', '""', remote_sql))


def _lock_day(conn: psycopg.Connection, spec: TableSpec, table: SourceTable, target: SourceTable, action: str) -> None:
    """The removal's locks, by the names described before the pending mark (see :func:`_described_again`)."""
    if action == "delete":  # readers go on, no writer may change the day meanwhile; SHARE ROW EXCLUSIVE, not SHARE:
        # it conflicts with itself, so a removal of another day waits here, where two SHARE locks each
        # waited for the other's to take their DELETE's ROW EXCLUSIVE (a deadlock, one removal aborted)
        conn.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(target.identifier))
        return
    # parent first, as inserting sessions take them, so the two cannot deadlock
    if spec.partitioning.mode == "declarative":
        conn.execute(sql.SQL("LOCK TABLE ONLY {} IN ACCESS EXCLUSIVE MODE").format(table.identifier))
    elif spec.partitioning.mode == "naming":  # a day table that is a partition: its parent is locked by the DDL
        for parent, partition in _parent_rows(conn, target):
            if partition:
                conn.execute(sql.SQL("LOCK TABLE ONLY ") + sql.SQL(parent) + sql.SQL(" IN ACCESS EXCLUSIVE MODE"))
    conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(target.identifier))


def _described_again(conn: psycopg.Connection, spec: TableSpec, day: Period, locked: SourceTable,
                     action: str) -> tuple[SourceTable, SourceTable]:
    """The table and the removal's target described again once the locks are held, which is what the
    re-check must hash and remove: the description before them dates from before the pending mark's
    PUT, and a column added (and filled) meanwhile would be left out of the fingerprint, its values
    removed with the rows though no archive holds them. A target that is no longer the relation locked
    (a partition replaced meanwhile) is refused."""
    table = source_table(conn, spec, day)
    target = _target(conn, spec, day, table, action)
    if target.qualified != locked.qualified or (locked.oid is not None and target.oid != locked.oid):
        raise RemovalRefused(f"{spec.name} {day} stays in the source: its partition changed while it was being "
                             f"removed ({locked.qualified} was locked, {target.qualified} holds the day now)",
                             table=spec.name, day=day.isoformat(), retryable=True,
                             remedy="run the removal again: it proves the day as it is now")
    return table, target


# Foreign keys referencing the table or any table below it (its partitions, at any depth, or tables inheriting
# from it): DELETE FROM the table deletes their rows too. A partition's clones of a key that references its
# parent (conparentid <> 0) are the parent's key again.
# (a key to a partitioned table covers its partitions' rows: one to a partitioned parent of the table counts too,
# the table a naming-mode day table that is a partition; its per-partition copies, conparentid <> 0, are its own)
_REFERENCING = """
WITH RECURSIVE tree(oid) AS (
    SELECT %(t)s::regclass::oid
    UNION
    SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree ON i.inhparent = tree.oid)
SELECT c.conname::text FROM pg_catalog.pg_constraint c
WHERE c.contype = 'f' AND c.conparentid = 0
  AND (c.confrelid IN (SELECT oid FROM tree)
       OR c.confrelid IN (SELECT relid FROM pg_catalog.pg_partition_ancestors(%(t)s::regclass)))
ORDER BY 1
"""


def _detach(conn: psycopg.Connection, spec: TableSpec, day: Period, action: str, parent: str,
            statement: sql.Composable) -> None:
    """A DETACH PARTITION of the day from ``parent`` (as printed), refused as a removal is where a foreign key to the
    parent references rows of the day (PostgreSQL checks them): they would be left dangling."""
    try:
        conn.execute(statement)
    except psycopg.errors.ForeignKeyViolation as exc:
        detail = " ".join(filter(None, (exc.diag.message_primary, exc.diag.message_detail)))
        raise RemovalRefused(
            f"{spec.name} {day} stays in the source: other tables' rows reference rows of the day through a foreign "
            f"key to {parent} ({detail}); a {action} would leave them dangling. Delete or re-point the referencing "
            "rows (or the foreign key), then remove the day again", table=spec.name, day=day.isoformat()) from None


# Foreign keys to a partitioned ancestor of the day's partition (not the partition itself: a key to it stays with it),
# each with the referencing table and the two column lists in key order: a DETACH PARTITION fails on any row they
# make reference a row of the partition (rows inside it too), which PostgreSQL checks only at the DETACH itself.
_KEYS_TO_ANCESTORS = """
SELECT c.conname::text, c.conrelid::regclass::text,
       ARRAY(SELECT a.attname::text FROM pg_catalog.unnest(c.conkey) WITH ORDINALITY k(n, i)
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i),
       ARRAY(SELECT a.attname::text FROM pg_catalog.unnest(c.confkey) WITH ORDINALITY k(n, i)
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.i)
FROM pg_catalog.pg_constraint c
WHERE c.contype = 'f' AND c.conparentid = 0 AND c.confrelid <> %(t)s::regclass
  AND c.confrelid IN (SELECT relid FROM pg_catalog.pg_partition_ancestors(%(t)s::regclass))
ORDER BY 1
"""


def _refuse_referenced_rows(conn: psycopg.Connection, spec: TableSpec, day: Period, target: SourceTable) -> None:
    """A detach refused before the proof where the DETACH PARTITION would be: rows that a foreign key to a parent of
    the day's partition makes reference rows of it (another table's, or the table's own across days)."""
    for name, referencing, columns, referenced in conn.execute(_KEYS_TO_ANCESTORS,
                                                               {"t": target.identifier.as_string(conn)}).fetchall():
        match = sql.SQL(" AND ").join(sql.SQL("r.{} = d.{}").format(sql.Identifier(a), sql.Identifier(b))
                                      for a, b in zip(columns, referenced, strict=True))
        if conn.execute(sql.SQL("SELECT EXISTS (SELECT FROM {} r JOIN {} d ON {})").format(
                sql.SQL(referencing), target.identifier, match)).fetchone()[0]:
            raise RemovalRefused(
                f"{spec.name} {day} stays in the source: rows of {referencing} reference rows of the day through the "
                f"foreign key {name} to a parent of {target.qualified}; a detach would leave them dangling",
                table=spec.name, day=day.isoformat(),
                remedy="delete or re-point the referencing rows (or the foreign key), then remove the day again")


def _refuse_referenced(conn: psycopg.Connection, spec: TableSpec, day: Period, table: SourceTable) -> None:
    """Deleting rows that other tables' foreign keys reference would cascade into (or fail on) rows
    that were never archived: refuse, naming the constraints. A key referencing one partition (or a table
    inheriting from the archived one) counts: the DELETE reaches its rows too (ON DELETE CASCADE deleted
    the referencing rows of other tables, which no archive holds)."""
    found = [r[0] for r in conn.execute(_REFERENCING, {"t": table.identifier.as_string(conn)})]
    if found:
        raise RemovalRefused(f"{spec.name} {day} stays in the source: foreign keys {found} reference the table (or "
                             "its partitions or inheriting tables), so deleting archived rows would reach rows of "
                             "other tables; remove days of this table by hand", table=spec.name, day=day.isoformat())


# DELETE triggers (row or statement, enabled, not PostgreSQL's own) and ON DELETE rules of the given tables.
_DELETE_SIDE_EFFECTS = """
SELECT DISTINCT pg_catalog.format('trigger %%I on %%s', t.tgname, t.tgrelid::regclass) FROM pg_catalog.pg_trigger t
WHERE t.tgrelid = ANY(%(rels)s::pg_catalog.oid[]) AND NOT t.tgisinternal AND t.tgenabled <> 'D' AND (t.tgtype & 8) <> 0
UNION
SELECT pg_catalog.format('rule %%I on %%s', r.rulename, r.ev_class::regclass) FROM pg_catalog.pg_rewrite r
WHERE r.ev_class = ANY(%(rels)s::pg_catalog.oid[]) AND r.ev_type = '4'
ORDER BY 1
"""


def _refuse_delete_side_effects(conn: psycopg.Connection, spec: TableSpec, day: Period, table: SourceTable) -> None:
    """A DELETE trigger or rule may write or delete rows of other tables (a cascade by trigger, an ON DELETE
    DO ALSO rule), which no archive holds, and an INSTEAD rule keeps the rows while DELETE reports them gone:
    refused, naming them, unless ``retention.allow_delete_triggers`` says they are harmless (an audit log)."""
    if spec.retention is not None and spec.retention.allow_delete_triggers:
        return
    own = table.oid if table.oid is not None else conn.execute(
        "SELECT %s::pg_catalog.regclass::pg_catalog.oid", (table.identifier.as_string(conn),)).fetchone()[0]
    relations = sorted({own, *_reached(conn, table, day)})
    found = [r[0] for r in conn.execute(_DELETE_SIDE_EFFECTS, {"rels": relations})]
    if found:
        raise RemovalRefused(
            f"{spec.name} {day} stays in the source: deleting its rows fires {', '.join(found)}, which may write or "
            "delete rows of other tables that no archive holds (or keep the rows, an INSTEAD rule)",
            table=spec.name, day=day.isoformat(),
            remedy="if they only log (an audit trigger), set retention.allow_delete_triggers: true for the table; "
                   "else remove its days by hand, or disable them for the removal"
                   + (", or use retention action 'detach' or 'drop', which fire no DELETE trigger"
                      if spec.partitioning.mode != "column" else ""))


# Tables inheriting (at any depth) from the given one, partitions left out, each with the columns it has that the
# given one lacks (none: it inherits the given one's columns only).
_INHERITING = """
WITH RECURSIVE below(oid) AS (
    SELECT inhrelid FROM pg_catalog.pg_inherits WHERE inhparent = %(t)s::regclass
    UNION
    SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN below ON i.inhparent = below.oid)
SELECT n.nspname::text, c.relname::text,
       ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = below.oid AND a.attnum > 0 AND NOT a.attisdropped
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute p WHERE p.attrelid = %(t)s::regclass
                               AND p.attname = a.attname AND NOT p.attisdropped)
             ORDER BY a.attnum)
FROM below JOIN pg_catalog.pg_class c ON c.oid = below.oid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE NOT c.relispartition
ORDER BY 1, 2
"""


def _holds_day(conn: psycopg.Connection, relation: sql.Identifier, table: SourceTable, day: Period) -> bool:
    """Whether a table below ``table`` holds rows of the day itself (ONLY: not through the tables below it; its
    inherited day column has the table's name and type: the table's filter selects the day there too)."""
    return conn.execute(sql.SQL("SELECT EXISTS (SELECT FROM ONLY {} WHERE {})").format(
        relation, day_filter(table, day))).fetchone()[0]


# An enabled BEFORE INSERT row trigger on the table (tgtype: ROW 1 | BEFORE 2 | INSERT 4): classic partitioning's
# router, which a restore's load fires too, putting each row into its child again.
_ROUTED = """
SELECT EXISTS (SELECT FROM pg_catalog.pg_trigger t WHERE t.tgrelid = %(t)s::regclass AND NOT t.tgisinternal
               AND t.tgenabled IN ('O', 'A') AND (t.tgtype::int & 7) = 7)
"""


def _routed_back(conn: psycopg.Connection, table: SourceTable, child: sql.Identifier, day: Period) -> bool:
    """Whether the table's BEFORE INSERT trigger takes a row of ``child``'s day away from the table itself, as a
    restore's load would insert it: one such row inserted into the table (in a savepoint, rolled back) lands
    nowhere in it. A trigger that only tidies a row (``NEW.v := btrim(NEW.v); RETURN NEW``) lets it land in the
    table, where a restore would put every row. A unique violation of another table's key is the row meeting itself
    in the child it was routed into (it is still there); of the table's own, the row landed in it; any other error
    proves nothing."""
    columns = sql.SQL(", ").join(sql.Identifier(c.name) for c in table.columns)
    probe = sql.SQL("WITH landed AS (INSERT INTO {table} ({columns}) SELECT {columns} FROM ONLY {child} WHERE {day} "
                    "LIMIT 1 RETURNING 1) SELECT pg_catalog.count(*) FROM landed").format(
        table=table.identifier, columns=columns, child=child, day=day_filter(table, day))
    try:
        with conn.transaction(force_rollback=True):
            return conn.execute(probe).fetchone()[0] == 0
    except psycopg.errors.UniqueViolation as exc:
        return (exc.diag.schema_name, exc.diag.table_name) != (table.schema, table.name)
    except psycopg.errors.OperationalError:
        raise
    except psycopg.Error:
        return False


def _refuse_inheriting_rows(conn: psycopg.Connection, spec: TableSpec, day: Period, table: SourceTable) -> None:
    """DELETE FROM the table also deletes the rows of tables that inherit from it; the archive holds them as rows
    of the table (what SELECT * FROM it returns), not which table each lay in, so a restore puts them back into
    the table itself, where its own primary key (a child's rows may repeat it: a key is per table) and constraints
    may refuse them, unless a BEFORE INSERT trigger on it routes them into their child (classic partitioning,
    which the restore's load fires); and a child's columns of its own (``CREATE TABLE special (extra text)
    INHERITS (events)``) are in no archive at all. Refuse, naming them, where such a table holds rows of the day:
    the day could not be put back as it was."""
    relation = table.identifier.as_string(conn)
    router = None  # (asked only where a child without columns of its own holds rows of the day)
    found, wider, plain = [], False, False
    for schema, name, columns in conn.execute(_INHERITING, {"t": relation}).fetchall():
        child = sql.Identifier(schema, name)
        if not _holds_day(conn, child, table, day):
            continue
        if not columns:
            router = conn.execute(_ROUTED, {"t": relation}).fetchone()[0] if router is None else router
            if router and _routed_back(conn, table, child, day):
                continue
        found.append(relation_name(schema, name) + (f" (columns {', '.join(columns)})" if columns else ""))
        wider, plain = wider or bool(columns), plain or not columns
    if not found:
        return
    why = []
    if plain:
        why.append(f"a restore would put them back into {table.qualified} itself, not into the tables they lay in (no "
                   "BEFORE INSERT trigger on it routes rows to them), where its own primary key or constraints may "
                   "refuse them")
    if wider:
        why.append("deleting them would lose the values of their columns of their own, which no archive holds")
    raise RemovalRefused(f"{spec.name} {day} stays in the source: rows of the day are in tables inheriting from "
                         f"{table.qualified}: {'; '.join(found)}; the archive holds them as rows of {table.qualified} "
                         f"(its columns, not which table each lay in), so {', and '.join(why)}",
                         table=spec.name, day=day.isoformat(),
                         remedy="archive those tables themselves (each configured, or naming mode), or move to "
                                "declarative partitions, then remove the day by hand"
                                + ("; or route inserts into the table to its children with a BEFORE INSERT trigger "
                                   "(classic partitioning), which a restore fires" if plain else ""))


# The relations DELETE FROM the table deletes from (the roots: those its plan scans, see _reached; and the tables
# below them) that PostgreSQL refuses a DELETE on,
# even of no row: a publication publishes their deletes (named, its partitioned ancestor named, FOR ALL TABLES,
# FOR TABLES IN SCHEMA of either) and they have no replica identity (REPLICA IDENTITY NOTHING, or DEFAULT or
# USING INDEX without a valid, unique, immediate, whole-table index to use). Unlogged tables are never published.
_UNIDENTIFIED = """
WITH RECURSIVE tree(oid) AS (
    SELECT pg_catalog.unnest(%(roots)s::pg_catalog.oid[])
    UNION
    SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree ON i.inhparent = tree.oid),
leaf(oid, up) AS (
    SELECT c.oid, ARRAY(SELECT c.oid UNION SELECT pg_catalog.pg_partition_ancestors(c.oid))
    FROM tree JOIN pg_catalog.pg_class c ON c.oid = tree.oid
    WHERE c.relkind = 'r' AND c.relpersistence = 'p' AND c.relreplident <> 'f'
      AND NOT EXISTS (SELECT FROM pg_catalog.pg_index x WHERE x.indrelid = c.oid AND x.indisvalid AND x.indisunique
                      AND x.indimmediate AND x.indpred IS NULL
                      AND CASE c.relreplident WHEN 'd' THEN x.indisprimary WHEN 'i' THEN x.indisreplident END))
SELECT n.nspname::text, c.relname::text, pg_catalog.array_agg(p.pubname::text ORDER BY p.pubname)
FROM leaf JOIN pg_catalog.pg_class c ON c.oid = leaf.oid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_publication p ON p.pubdelete AND (p.puballtables
    OR EXISTS (SELECT FROM pg_catalog.pg_publication_rel r WHERE r.prpubid = p.oid AND r.prrelid = ANY (leaf.up)){schemas})
GROUP BY n.nspname, c.relname, c.oid ORDER BY 1, 2
"""
_SCHEMA_PUBLICATIONS = """
    OR EXISTS (SELECT FROM pg_catalog.pg_publication_namespace s JOIN pg_catalog.pg_class a
               ON a.relnamespace = s.pnnspid WHERE s.pnpubid = p.oid AND a.oid = ANY (leaf.up))"""


def _reached(conn: psycopg.Connection, table: SourceTable, day: Period) -> list[int]:
    """The OIDs of the tables the day's DELETE FROM the table reaches: those its plan scans (see
    ``source.scanned_relations``). PostgreSQL checks each of them when the DELETE starts, holding rows of the
    day or not (a partition of a table partitioned by another column, or one whose bounds overlap the day
    while its rows are all of other days, is not pruned)."""
    return scanned_relations(conn, table, day_filter(table, day))


def _refuse_unidentified(conn: psycopg.Connection, spec: TableSpec, day: Period, table: SourceTable) -> None:
    """PostgreSQL refuses a DELETE from a table whose deletes a publication publishes while it has no replica
    identity ("does not have a replica identity and publishes deletes"), of no row alike: refuse before the proof's
    work is lost on it and before the dry run says "would delete", naming the relations, publications and remedy."""
    schemas = _SCHEMA_PUBLICATIONS if conn.info.server_version >= 150000 else ""  # FOR TABLES IN SCHEMA: 15+
    found = [f"{schema}.{name} has no replica identity, and publication {', '.join(publications)} publishes its "
             "deletes" for schema, name, publications in conn.execute(
                 _UNIDENTIFIED.replace("{schemas}", schemas), {"roots": _reached(conn, table, day)}).fetchall()]
    if found:
        raise RemovalRefused(f"{spec.name} {day} stays in the source: PostgreSQL refuses to delete its rows: "
                             f"{'; '.join(found)}. Give it one (ALTER TABLE ... REPLICA IDENTITY FULL, or USING INDEX "
                             "a unique index, or add a primary key), or stop publishing its deletes"
                             + (", or use retention action 'drop' or 'detach'" if spec.partitioning.mode != "column"
                                else ""), table=spec.name, day=day.isoformat())


def _refuse_unpublishable(conn: psycopg.Connection, spec: TableSpec, day: Period, table: SourceTable) -> None:
    """What else PostgreSQL checks when the DELETE starts, of no row alike (a publication's row filter or column
    list that the table's replica identity does not cover: "cannot delete from table ..."), asked of PostgreSQL
    itself: EXPLAIN starts the DELETE's plan, which makes those checks, and deletes nothing."""
    try:
        with conn.transaction():
            conn.execute(sql.SQL("EXPLAIN DELETE FROM {} WHERE {}").format(table.identifier, day_filter(table, day)))
    except (psycopg.errors.ObjectNotInPrerequisiteState, psycopg.errors.InvalidColumnReference,
            psycopg.errors.WrongObjectType) as exc:
        detail = " ".join(filter(None, (exc.diag.message_primary, exc.diag.message_detail)))
        if "foreign table" in (exc.diag.message_primary or ""):  # (postgres_fdw's updatable 'false', file_fdw's none)
            raise RemovalRefused(f"{spec.name} {day} stays in the source: a foreign table the DELETE reaches does not "
                                 f"allow deletes ({detail})", table=spec.name, day=day.isoformat(),
                                 cause="a foreign table refuses deletes",
                                 remedy="remove the day's rows on the foreign table's own server by hand, or make the "
                                        "foreign table writable (postgres_fdw: ALTER FOREIGN TABLE ... OPTIONS (SET "
                                        "updatable 'true'))") from None
        if isinstance(exc, psycopg.errors.WrongObjectType):
            raise
        raise RemovalRefused(f"{spec.name} {day} stays in the source: PostgreSQL refuses to delete its rows ({detail})",
                             table=spec.name, day=day.isoformat(), cause="publication",
                             remedy="make the table's replica identity (ALTER TABLE ... REPLICA IDENTITY) cover the "
                                    "columns the publication's row filter uses, and its column list cover the replica "
                                    "identity (every column under REPLICA IDENTITY FULL): ALTER PUBLICATION ... SET "
                                    "TABLE; or stop publishing its deletes") from None


def _refuse_unremovable(conn: psycopg.Connection, spec: TableSpec, day: Period, table: SourceTable,
                        target: SourceTable, action: str) -> None:
    """Raise :class:`RemovalRefused` for what the action cannot remove whatever the archive: a partition
    or day table also holding rows of other days, a day table with no parent to detach from, or (drop, detach)
    also under a table other than the configured one, rows that other tables' foreign keys reference. Checked by
    the removal itself and by its dry run alike."""
    _refuse_pending_detach(conn, spec, day, table, action)
    if action == "delete":
        _refuse_referenced(conn, spec, day, table)
        _refuse_delete_side_effects(conn, spec, day, table)
        _refuse_inheriting_rows(conn, spec, day, table)
        _refuse_unidentified(conn, spec, day, table)
        _refuse_unpublishable(conn, spec, day, table)
        return
    if spec.partitioning.mode == "naming":
        _refuse_other_parents(conn, spec, day, target, action)
    if action == "drop":
        _refuse_extension_members(conn, spec, day, target)
        _refuse_dependents(conn, spec, day, target)
    else:
        _refuse_referenced_rows(conn, spec, day, target)
    outside = conn.execute(sql.SQL("SELECT pg_catalog.count(*) FROM {} WHERE ({}) IS NOT TRUE").format(  # NULL days too
        target.identifier, day_filter(target, day))).fetchone()[0] if target.day_column is not None else 0
    if outside:
        raise RemovalRefused(f"{target.qualified} also holds {outside:,} rows outside {day}; it is not removed",
                             table=spec.name, day=day.isoformat())
    if spec.partitioning.mode == "declarative" and target.identifier != table.identifier:
        # the archive read the day through the parent: rows of it in another partition (a wall-clock hourly
        # partition of the hour a clock skips, say) are archived but would stay, and the re-check would fail
        others = [r[0] for r in conn.execute(sql.SQL(
            "SELECT DISTINCT tableoid::regclass::text FROM {} WHERE {} AND tableoid NOT IN "
            "(SELECT relid FROM pg_catalog.pg_partition_tree({}::regclass)) ORDER BY 1").format(  # its sub-partitions
                table.identifier, day_filter(table, day), sql.Literal(target.identifier.as_string(conn))))]
        if others:
            raise RemovalRefused(f"{spec.name} {day} stays in the source: rows of it are also in {', '.join(others)}, "
                                 f"not only in {target.qualified}, so a {action} of one partition would not remove "
                                 "the day; use retention action 'delete'", table=spec.name, day=day.isoformat())
    if action == "detach" and spec.partitioning.mode != "declarative":
        _parents(conn, spec, target)


def _refuse_pending_detach(conn: psycopg.Connection, spec: TableSpec, day: Period, table: SourceTable,
                           action: str) -> None:
    """A partition of the day pending detach (a DETACH ... CONCURRENTLY interrupted), the day's own or one
    under it, holds rows the table no longer reads: the proof would compare the wrong rows, and PostgreSQL
    refuses to detach it again. A naming-mode day table (``table``) is asked the same: one pending detach from its
    parent is refused only a ``detach`` (its rows are its own and proven as such: a drop or delete removes them,
    a DETACH PARTITION fails inside the removal, after the proof), partitions under it pending detach every action
    (read by no one, archived by no run: a drop would take their rows along)."""
    if spec.partitioning.mode not in ("declarative", "naming") or conn.info.server_version < 140000:
        return  # (no partition is ever pending before PostgreSQL 14)
    own = spec.partitioning.mode == "declarative" or action == "detach"
    relations = [child.relation(spec) for child in day_children(conn, spec, day)] \
        if spec.partitioning.mode == "declarative" else [(table.schema, table.name)]
    for relation in relations:
        parent = detaching(conn, sql.Identifier(*relation)) if own else None
        found = [(relation, parent)] if parent else \
            [((schema, name), under) for schema, name, under in conn.execute(PENDING_DETACH_UNDER, relation).fetchall()]
        if found:
            pending = pending_detach_error(spec.name, *found[0])
            raise RemovalRefused(f"{spec.name} {day} stays in the source: {pending.message}", table=spec.name,
                                 day=day.isoformat(), retryable=True, cause=pending.cause, remedy=pending.remedy)


def _refuse_unprivileged(conn: psycopg.Connection, spec: TableSpec, day: Period, table: SourceTable,
                        target: SourceTable, action: str) -> None:
    """PostgreSQL lets only a table's owner detach or drop it (DETACH PARTITION: the parent's owner too), and
    DELETE needs the DELETE privilege: the dry run would say "would drop" and the real run fail with "must be
    owner of table" after the whole proof. Refuse up front, naming the relation, its owner and the remedy."""
    if action == "delete":
        # the batched DELETE names rows by (tableoid, ctid): system columns, which only a table-wide SELECT covers
        role, allowed, reads = conn.execute(
            "SELECT current_user::text, pg_catalog.has_table_privilege(%(t)s, 'DELETE'), "
            "pg_catalog.has_column_privilege(%(t)s, 'ctid', 'SELECT') "
            "AND pg_catalog.has_column_privilege(%(t)s, 'tableoid', 'SELECT')",
            {"t": table.identifier.as_string(conn)}).fetchone()
        missing = [p for p, ok in (("DELETE", allowed), ("SELECT", reads)) if not ok]
        if missing:
            what = " and ".join(missing)
            raise RemovalRefused(f"{spec.name} {day} stays in the source: permission denied: the role {role} may not "
                                 f"{what} {'from' if allowed is False else 'on'} {table.qualified}"
                                 + (" as a whole (SELECT granted column by column does not cover the system columns "
                                    "the removal names rows by)" if not reads else ""),
                                 table=spec.name, day=day.isoformat(), cause="permission denied",
                                 remedy=f"GRANT {', '.join(missing)} ON {sql_name(table.qualified)} "
                                        f"TO {sql_name(role, qualified=False)}")
        return
    # (as SQL names and as printed) the partition's parent too: the removal locks it, as DETACH PARTITION does
    needed = [(r.identifier.as_string(conn), r.qualified) for r in
              ([table, target] if spec.partitioning.mode == "declarative" else [target])]
    if spec.partitioning.mode == "naming":
        needed += [(parent, parent) for parent, partition in _parent_rows(conn, target) if partition]
    for relation, printed in needed:
        role, owner, member, noinherit = conn.execute(
            "SELECT current_user::text, pg_catalog.pg_get_userbyid(relowner)::text, "
            "pg_catalog.pg_has_role(relowner, 'USAGE'), pg_catalog.pg_has_role(relowner, 'MEMBER') "
            "FROM pg_catalog.pg_class WHERE oid = %s::regclass", (relation,)).fetchone()
        if not member and noinherit:  # a member that does not inherit the owner's privileges (NOINHERIT)
            raise RemovalRefused(f"{spec.name} {day} stays in the source: permission denied: only the owner of "
                                 f"{printed} ({owner}) may {action} it, and the role {role} is a member of "
                                 f"{owner} that does not inherit its privileges (NOINHERIT)", table=spec.name,
                                 day=day.isoformat(), cause="permission denied",
                                 remedy=f"remove the day as {owner}, or as a role that inherits its privileges "
                                        f"(ALTER ROLE {sql_name(role, qualified=False)} INHERIT)")
        if not member:
            raise RemovalRefused(f"{spec.name} {day} stays in the source: permission denied: only the owner of "
                                 f"{printed} ({owner}) may {action} it, and the role {role} is not a member "
                                 f"of {owner}", table=spec.name, day=day.isoformat(), cause="permission denied",
                                 remedy=f"remove the day as its owner, {owner}, or GRANT "
                                        f"{sql_name(owner, qualified=False)} TO {sql_name(role, qualified=False)}")


# What keeps DROP TABLE from dropping the day's table or partition: views and rules over it, other tables'
# foreign keys referencing it directly (not the partition's clones of a foreign key referencing its parent,
# conparentid <> 0: the detach before the drop takes those away, refusing if a row of the day is referenced),
# tables inheriting from it (a naming-mode day table; its own partitions go with it), what uses its row type
# (a function's argument, another table's column) and what uses a sequence it owns (another table's default).
_DEPENDENTS = """
SELECT pg_catalog.format('view or rule of %%s', r.ev_class::regclass) FROM pg_catalog.pg_depend d
JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid
WHERE d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass
  AND d.refobjid = %(t)s::regclass AND r.ev_class <> %(t)s::regclass
UNION
SELECT pg_catalog.format('foreign key %%I of %%s', c.conname, c.conrelid::regclass) FROM pg_catalog.pg_constraint c
WHERE c.contype = 'f' AND c.conparentid = 0 AND c.conrelid <> %(t)s::regclass
  AND c.confrelid IN (SELECT relid FROM pg_catalog.pg_partition_ancestors(%(t)s::regclass))
UNION
SELECT pg_catalog.format('table %%s inheriting from it', i.inhrelid::regclass) FROM pg_catalog.pg_inherits i
JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %(t)s::regclass AND NOT c.relispartition
UNION
SELECT pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid) FROM pg_catalog.pg_depend d
JOIN pg_catalog.pg_type ty ON ty.oid = d.refobjid JOIN pg_catalog.pg_class t ON t.oid = %(t)s::regclass
WHERE d.refclassid = 'pg_catalog.pg_type'::regclass AND d.deptype = 'n' AND t.reltype IN (ty.oid, ty.typelem)
UNION
SELECT pg_catalog.format('%%s (its sequence %%s)', pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid),
              s.objid::regclass) FROM pg_catalog.pg_depend s
JOIN pg_catalog.pg_class q ON q.oid = s.objid AND q.relkind = 'S'
JOIN pg_catalog.pg_depend d ON d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid = s.objid AND d.deptype = 'n'
WHERE s.classid = 'pg_catalog.pg_class'::regclass AND s.refclassid = 'pg_catalog.pg_class'::regclass
  AND s.refobjid = %(t)s::regclass AND s.deptype IN ('a', 'i')
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_attrdef a WHERE d.classid = 'pg_catalog.pg_attrdef'::regclass
                  AND a.oid = d.objid AND a.adrelid = %(t)s::regclass)
UNION
-- a function whose SQL-standard body (BEGIN ATOMIC) reads it, another table's row-security policy reading it
SELECT pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid) FROM pg_catalog.pg_depend d
WHERE d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid = %(t)s::regclass AND d.deptype = 'n'
  AND (d.classid = 'pg_catalog.pg_proc'::regclass
       OR (d.classid = 'pg_catalog.pg_policy'::regclass
           AND NOT EXISTS (SELECT FROM pg_catalog.pg_policy p WHERE p.oid = d.objid AND p.polrelid = %(t)s::regclass)))
ORDER BY 1
"""


def _refuse_dependents(conn: psycopg.Connection, spec: TableSpec, day: Period, target: SourceTable) -> None:
    """Views, foreign keys, inheriting tables and the like (``_DEPENDENTS``) make DROP fail after a whole
    proof (the dry run said it would drop): refuse up front, naming them. Of a day partition that is itself
    partitioned, every partition under it is asked too (DROP drops them all)."""
    name = target.identifier.as_string(conn)
    members = [name] if target.relkind != "p" else [r[0] for r in conn.execute(
        "SELECT relid::pg_catalog.regclass::text FROM pg_catalog.pg_partition_tree(%s::pg_catalog.regclass)", (name,))]
    # (a view or foreign key "of" a relation of the tree itself goes with it)
    found = sorted({r[0] for member in members for r in conn.execute(_DEPENDENTS, {"t": member})
                    if r[0].rsplit(" of ", 1)[-1] not in members or " of " not in r[0]})
    if found:
        raise RemovalRefused(f"{spec.name} {day} stays in the source: {target.qualified} cannot be dropped while "
                             f"other objects depend on it ({'; '.join(found)}); drop or re-point them (a table "
                             "inheriting from it: ALTER TABLE ... NO INHERIT), or use retention action 'detach' "
                             "(which keeps the table)", table=spec.name,
                             day=day.isoformat())


# What DROP TABLE drops along with the table (it, its partitions at any depth, the sequences they own) that is a
# member of an extension (ALTER EXTENSION ... ADD TABLE): PostgreSQL refuses to drop it but with the extension.
_EXTENSION_MEMBERS = """
WITH RECURSIVE tree(oid) AS (
    SELECT %(t)s::regclass::oid
    UNION
    SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
    JOIN tree ON i.inhparent = tree.oid WHERE c.relispartition),
dropped(oid) AS (
    SELECT oid FROM tree
    UNION
    SELECT s.objid FROM pg_catalog.pg_depend s JOIN tree ON s.refobjid = tree.oid
    JOIN pg_catalog.pg_class q ON q.oid = s.objid AND q.relkind = 'S'
    WHERE s.classid = 'pg_catalog.pg_class'::regclass AND s.refclassid = 'pg_catalog.pg_class'::regclass
      AND s.deptype IN ('a', 'i'))
SELECT x.extname::text, pg_catalog.format('ALTER EXTENSION %%I DROP %%s %%s', x.extname,
              CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END, c.oid::regclass)
FROM dropped JOIN pg_catalog.pg_class c ON c.oid = dropped.oid
JOIN pg_catalog.pg_depend e ON e.classid = 'pg_catalog.pg_class'::regclass AND e.objid = c.oid AND e.deptype = 'e'
JOIN pg_catalog.pg_extension x ON e.refclassid = 'pg_catalog.pg_extension'::regclass AND x.oid = e.refobjid
ORDER BY 1, 2
"""


def _refuse_extension_members(conn: psycopg.Connection, spec: TableSpec, day: Period, target: SourceTable) -> None:
    """A table that belongs to an extension (or a partition or sequence of it that does) is dropped only with the
    extension ("cannot drop table ... because extension ... requires it", after the whole proof): refuse up front,
    naming the extension and the statements that take the objects out of it (detach and delete are not refused:
    PostgreSQL lets them be)."""
    found = conn.execute(_EXTENSION_MEMBERS, {"t": target.identifier.as_string(conn)}).fetchall()
    if found:
        names = ", ".join(dict.fromkeys(name for name, _ in found))
        raise RemovalRefused(f"{spec.name} {day} stays in the source: {target.qualified} (or a partition or sequence "
                             f"of it) belongs to extension {names}, and PostgreSQL drops it only with the extension",
                             table=spec.name, day=day.isoformat(), cause="member of an extension",
                             remedy=f"take it out of the extension ({'; '.join(s for _, s in found)}), or use "
                                    "retention action 'detach' (which keeps the table)")


def _parent_rows(conn: psycopg.Connection, target: SourceTable) -> list[tuple[str, bool]]:
    """The tables ``target`` inherits from or is a partition of (as SQL names), each with whether it is a
    partition's parent."""
    return conn.execute(
        "SELECT p.oid::pg_catalog.regclass::pg_catalog.text, c.relispartition FROM pg_catalog.pg_inherits i "
        "JOIN pg_catalog.pg_class p ON p.oid = i.inhparent JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhrelid = %s::pg_catalog.regclass", (target.identifier.as_string(conn),)).fetchall()


def _out_of(target: SourceTable, parent: str, partition: bool) -> sql.Composable:
    """The statement that takes ``target`` out of ``parent`` (as printed): DETACH PARTITION for a partition's parent
    (NO INHERIT is refused for those), else NO INHERIT."""
    if partition:
        return sql.SQL("ALTER TABLE ") + sql.SQL(parent) + sql.SQL(" DETACH PARTITION {}").format(target.identifier)
    return sql.SQL("ALTER TABLE {} NO INHERIT ").format(target.identifier) + sql.SQL(parent)


def _refuse_other_parents(conn: psycopg.Connection, spec: TableSpec, day: Period, target: SourceTable,
                          action: str) -> None:
    """A naming-mode day table that also inherits from (or is a partition of) a table other than the configured one
    or a partition of it (a second roll-up parent, ``INHERITS (events, audit_all)``): a ``drop`` takes the day's rows
    out of that table for good, since a restore puts the day table back under the configured table only (a
    manifest is sealed, not signed: see restore's ``_own_parents``), and a ``detach`` ends every inheritance (a
    detached day table inherits from nothing): either changes a table nobody configured for retention. Refused
    before the proof, naming it and the statement that takes the day table out of it. ``delete`` is not asked:
    it keeps the day table under every parent, and a restore into the original table refills that very table."""
    if action == "delete":
        return
    if others := _other_parents(conn, spec, target):
        names = ", ".join(parent for parent, _ in others)
        statements = "; ".join(_out_of(target, parent, partition).as_string(conn) for parent, partition in others)
        under = "is a partition of" if others[0][1] else "also inherits from"  # (a partition has that one parent)
        raise RemovalRefused(
            f"{spec.name} {day} stays in the source: its day table {target.qualified} {under} {names}, "
            f"which is not the configured table {spec.name} (nor a partition of it): a {action} would take the "
            f"day's rows out of {names} too, a table retention is not configured for"
            + (", and a restore puts the day table back under the configured table only, so they would not come "
               "back there" if action == "drop" else " (a detached day table inherits from nothing)"),
            table=spec.name, day=day.isoformat(), cause=f"the day table {under} {names}",
            remedy=f"if {names} may lose the day's rows, take the day table out of it first ({statements}) and "
                   "remove the day again; or use retention action 'delete', which keeps the day table under "
                   f"{names} (its rows leave it too, and a restore into the original table brings them back there)")


def _other_parents(conn: psycopg.Connection, spec: TableSpec, target: SourceTable) -> list[tuple[str, bool]]:
    """Of :func:`_parent_rows`, the tables other than the configured one and those under it at any depth, partitions
    or inheritance children (a month table of a table partitioned by month, then day; ``log_202403 INHERITS (log)``):
    those a restore does not put a dropped day table back under. Where the configured table does not exist (its
    name is only the day tables' pattern) and the day table has one parent, that parent is the layout's own (``base``
    of ``ev_20240311 INHERITS (base)``) and none is another: removals of that layout ran before this check was added,
    and are not refused now; a second parent there is."""
    configured = sql.Identifier(spec.schema_name, spec.table_name).as_string(conn)
    parents = _parent_rows(conn, target)
    if len(parents) == 1 and conn.execute("SELECT pg_catalog.to_regclass(%s) IS NULL", (configured,)).fetchone()[0]:
        return []
    return [(parent, partition) for parent, partition in parents
            if not (_same_relation_text(conn, parent, configured) or descends_from(conn, parent, configured))]


def _same_relation_text(conn: psycopg.Connection, relation: str, other: str) -> bool:
    return conn.execute("SELECT (pg_catalog.to_regclass(%s) = pg_catalog.to_regclass(%s)) IS TRUE",
                        (relation, other)).fetchone()[0]


def _parents(conn: psycopg.Connection, spec: TableSpec, target: SourceTable) -> list[tuple[str, bool]]:
    """The tables a naming-mode day table inherits from or is a partition of (what detaching it ends), each with
    whether it is a partition's parent; one with none is refused (any but the configured table and its partitions
    were, by :func:`_refuse_other_parents`)."""
    parents = _parent_rows(conn, target)
    if not parents:
        raise RemovalRefused(f"{target.qualified} inherits from no table, so there is nothing to detach it from: "
                             "use retention action 'drop'", table=spec.name)
    return parents


def _reads_back(store: S3Store, mkey: str, data: bytes) -> bool:
    """Whether the store holds exactly ``data`` under ``mkey`` (read once more; False if it cannot say)."""
    try:
        return store.get_verified_bytes(mkey) == data
    except Exception:  # noqa: BLE001 - not known to be there: the write's own failure is raised
        return False


def _encoded(manifest: dict) -> bytes:
    data = encode_manifest(manifest)
    decode_manifest(data)  # never write a manifest we could not read back
    return data


def _unmarked_now(store: S3Store, mkey: str, unmarked: dict) -> dict | None:
    """The manifest at ``mkey`` if it is ``unmarked`` (the proven manifest without its pending mark), or None."""
    try:
        raw = store.get_verified_bytes(mkey)
        current = decode_manifest(raw) if raw is not None else None
    except Exception:  # noqa: BLE001 - not known to be it
        return None
    if current is None or {k: v for k, v in current.items() if k != "manifest_sha256"} != unmarked:
        return None
    return current


def _write_manifest(store: S3Store, mkey: str, manifest: dict, *, previous: bytes | None = None) -> None:
    """Write the manifest (``put_bytes`` checks that it arrived: its ETag, or without ``verify_etags`` by
    reading it back); one that never arrived whole is a retryable ``CorruptedWrite``, and damaged bytes
    are replaced by ``previous`` (the manifest as it was), so a removed day's manifest never becomes
    unreadable."""
    data = _encoded(manifest)
    try:  # over ``previous`` only, where given (If-Match its ETag): a manifest written meanwhile is not ours
        store.put_bytes(mkey, data, "application/json", if_match=store.etag_of(previous))
    except CorruptedWrite as exc:
        if previous is not None:
            _take_back(store, mkey, previous, data, exc)
        raise
    except Exception as exc:
        # a write the store carried out but answered with an error (a 5xx after it acted, a reset): ours is there
        if S3Store.refused(exc) or not _reads_back(store, mkey, data):
            raise
