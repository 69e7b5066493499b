"""What the archive holds and what archiving would do, day by day, without writing anything.

Used by the command line (``list``, ``archive --dry-run``, ``compare``); no Dagster import. Every
function here only reads: manifests and HEADs from the store, the catalog, counts and content
fingerprints from PostgreSQL in READ ONLY transactions. No lock is taken and nothing is written.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, replace

import psycopg
from psycopg import sql

from archive_pipeline.core.session_settings import speaks_utf8
from archive_pipeline.core import fingerprint, periods
from archive_pipeline.core.archive import (DayRemovedError, archived_elsewhere, compared_algorithm, keeps_existing,
                                           read_existing, removed_elsewhere, render_key)
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.discovery import (NO_PERIOD_TABLE, ChildRange, catalog_days, child_ranges,
                                             days_read_with_rows, existing_days, source_table, still_detached)
from archive_pipeline.core.errors import TABLE_MISSING, ArchiveError, SourceError
from archive_pipeline.core.lifecycle import in_doubt_remedy, pending_removal_committed, undecided_removal
from archive_pipeline.core.keys import other_extension_keys
from archive_pipeline.core.listing import day_listings, listed_absent, unmanifested
from archive_pipeline.core.manifest import (ForeignManifestError, SourceIdentity, Whose, day_archive, layout_change,
                                             manifest_key, owned, removal_state, source_identity)
from archive_pipeline.core.periods import Period, not_over
from archive_pipeline.core.source import SourceTable, day_filter, describe_table, read_snapshot, refuse_stale_standby, \
    server_identity, wrapped
from archive_pipeline.core.store import MISSING_ON_READ, S3Store
from archive_pipeline.core.verify import (NOT_CHECKED, ColumnsChangedError, archive_damage, columns_change,
                                          load_manifest, object_problems, problem_kind, rows_after_removal,
                                          source_fingerprint, unreadable_manifest)

log = logging.getLogger(__name__)


def last_complete_day(now: dt.datetime | None = None) -> dt.date:
    """Yesterday in UTC: today is still being written."""
    return (now or dt.datetime.now(dt.UTC)).date() - dt.timedelta(days=1)


def days_between(first: dt.date, last: dt.date) -> list[dt.date]:
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def _span(spec: TableSpec, value: dt.date | str) -> tuple[dt.datetime, dt.datetime]:
    """An hour, day or month named on the command line (or a date), as instants in the table's zone."""
    return periods.span(spec.timezone, value.isoformat() if isinstance(value, dt.date) else str(value))


def select_days(spec: TableSpec, first: dt.date | str | None, last: dt.date | str | None,
                today: dt.date | None = None, now: dt.datetime | None = None) -> list[Period]:
    """The periods of ``spec`` that overlap [first, last]; an open end is the table's ``start_date`` or now.

    ``first`` and ``last`` name an hour (``2024-03-10-14:00``), a day or a month (``2024-03``) in the
    table's zone: ``--day 2024-03-10`` selects the 24 hours of an hourly table and the month of a
    monthly one. Periods before ``start_date`` are left out (they are not partitions of the table),
    as are those not yet over (``today``: a UTC date whose midnight is "now", for tests)."""
    cutoff = dt.datetime.combine(today, dt.time(), dt.UTC) if today else (now or dt.datetime.now(dt.UTC))
    begin = spec.first_period.utc_start
    lo = max(_bound(spec, first, 0), begin) if first else begin
    hi = min(_bound(spec, last, 1), cutoff) if last else cutoff
    if lo >= hi:
        return []
    return [p for p in periods.periods_overlapping(spec.granularity, spec.timezone, lo, hi) if p.utc_end <= cutoff]


def not_ended(spec: TableSpec, first: dt.date | str | None, last: dt.date | str | None,
              now: dt.datetime | None = None) -> bool:
    """Whether a selection that holds no complete period of ``spec`` holds one that has not ended yet (in
    the table's zone and granularity: today's hour of an hourly table, this month of a monthly one), rather
    than lying before ``start_date``."""
    now = now or dt.datetime.now(dt.UTC)
    lo = _bound(spec, first, 0) if first else spec.first_period.utc_start
    # (without --to: at least to the end of the first period named, which may lie after now)
    hi = _bound(spec, last, 1) if last else max(now, _bound(spec, first, 1)) if first else now
    if hi <= spec.first_period.utc_start:
        return False
    return any(p.utc_end > now for p in periods.periods_overlapping(spec.granularity, spec.timezone,
                                                                   max(lo, spec.first_period.utc_start),
                                                                   max(hi, now)) if p.utc_start < hi)


def reversed_range(spec: TableSpec, first: dt.date | str, last: dt.date | str) -> bool:
    """Whether the range from ``first`` to ``last`` is empty: ``first`` begins when ``last`` has ended, in the
    table's zone. Text cannot tell for the hour a clock turned back repeats (``2024-10-27-02:00+0100`` is the hour
    after ``2024-10-27-02:00`` in Berlin); ``last`` is taken to its end (``--from 2024-03-11 --to 2024-03`` is
    the rest of March, as ``select_days`` reads it)."""
    lo, hi = _bound(spec, first, 0), _bound(spec, last, 1)
    # (both ends past the calendar's edge, clamped to the same instant: a range before any start_date, or after
    # now, which the selection says as such, not a reversed one)
    return lo >= hi and not (lo == hi and lo.replace(tzinfo=None) in (dt.datetime.min, dt.datetime.max))


def _bound(spec: TableSpec, value: dt.date | str, end: int) -> dt.datetime:
    """The start (``end`` 0) or end (1) of a period named on the command line, as an instant. The first
    and last hours of the calendar are no instants in a zone east (or west) of UTC: they are before any
    ``start_date``, or after now, which is what the selection is clipped to anyway."""
    try:
        return _span(spec, value)[end]
    except OverflowError:
        edge = dt.datetime.min if str(value)[:4] < "5000" else dt.datetime.max
        return edge.replace(tzinfo=dt.UTC)


# ----------------------------------------------------------------------------------------------
# Manifests


@dataclass(frozen=True)
class Archived:
    """What a manifest says about one archived day (manifest versions 1 to 3)."""

    key: str  # the rendered key; the manifest is beside it
    manifest: dict

    @property
    def object(self) -> dict | None:
        return self.manifest.get("object")

    @property
    def object_key(self) -> str | None:
        return self.object["key"] if self.object else None

    @property
    def empty(self) -> bool:
        return bool(self.manifest.get("empty")) or self.object is None

    @property
    def rows(self) -> int:
        return int(self.manifest.get("rows") or 0)

    @property
    def column_names(self) -> list[str] | None:
        """The archived columns in their order (what the source is compared with, name for name)."""
        columns = self.manifest.get("columns")
        return [c["name"] for c in columns] if columns else None

    @property
    def bytes(self) -> int:
        return int(self.object["bytes"]) if self.object else 0

    @property
    def archived_at(self) -> str | None:
        return self.manifest.get("archived_at") or (self.manifest.get("source") or {}).get("snapshot_at")

    @property
    def fingerprint(self) -> str | None:
        return self.manifest.get("fingerprint")

    @property
    def removed(self) -> str:
        """How the day left the source, when the lifecycle removed it (empty if it did not)."""
        mark = self.manifest.get("removed") or {}
        if not mark:
            return ""
        done = {"detach": "detached", "drop": "dropped", "delete": "deleted"}.get(mark.get("action"), "removed")
        return f"{done} from the source at {mark.get('at', '?')[:19]}" + (
            "" if mark.get("state") == "done" else f" ({mark.get('state')})")

    @property
    def expected(self) -> dict:
        """What :func:`archive_pipeline.core.verify.verify_archive` checks the stored object against."""
        obj = self.object or {}
        return {"bytes": obj.get("bytes", 0), "md5": obj.get("md5", ""), "rows": self.rows,
                "format": self.manifest.get("format"), "compression": self.manifest.get("compression")}


@dataclass(frozen=True)
class ManifestLookup:
    key: str
    archived: Archived | None
    problem: str | None = None  # the manifest exists but cannot be read


def lookup_manifests(store: S3Store, spec: TableSpec, days: list, *, objects: bool = False, identity: Whose = None
                     ) -> dict[Period, ManifestLookup]:
    """Each day's manifest, read only where one exists (one bucket listing, then one GET per archived day).

    ``objects`` (list and compare): a day without a manifest whose data object is stored all the same (its manifest
    deleted or expired, a run killed before it) gets a problem naming it (see :func:`_without_manifest`), never
    "no archive": that object may be the only copy of the day's rows. The range's listing tells it where one was
    read; else the day's own listing is asked for, for such days only.

    A manifest that listing shows but whose read finds nothing (a GET and two HEADs answering 404: a lagging replica,
    a caching gateway) is no verdict, as for the archive run (``archive.read_existing``): the day is not checked
    (retryable), never "missing", "not archived" or left out of a verify.

    ``identity``: the database this deployment archives (asked only where a day has an archive under another
    format's key): another database's archive there is not the day's (see manifest.day_archive)."""
    days = [spec.period(d) for d in days]
    keys = {day: render_key(spec, day, store.prefix) for day in days}
    absent, in_order = listed_absent(store, spec, days)
    result: dict[dt.date, ManifestLookup] = {}
    for day, key in keys.items():
        if day in absent:
            result[day] = ManifestLookup(key, None)
            continue
        try:
            manifest = load_manifest(store, key, (spec.name, day.isoformat()))
            # the day's current archive: this key's, or one under another format (written before the format changed,
            # or since, the format then changed back); its listing failing is a day not checked, below
            current = day_archive(store, spec, day, key, manifest, in_order, asked_one_by_one=len(days) <= 10,
                                  identity=identity)[0]
            if current != key:
                key = current
                manifest = load_manifest(store, key, (spec.name, day.isoformat()))
            if manifest is None and in_order is not None:  # (no request: this command's listing tells)
                store.confirm_missing(manifest_key(key), MISSING_ON_READ, in_order)
        except ValueError as exc:  # (``key``: one under another format's key that may be the day's current archive)
            key = getattr(exc, "key", None) or key
            result[day] = ManifestLookup(key, None, unreadable_manifest(f"manifest {manifest_key(key)} is unreadable: "
                                                                        f"{exc}", exc))
            continue
        except ArchiveError as exc:  # the read failed (a 503, a timeout): this day is not checked, the others are
            retry = "retryable" if exc.retryable else "not retryable"
            result[day] = ManifestLookup(key, None, f"not checked ({retry}): reading manifest {manifest_key(key)} "
                                                    f"failed: {exc}")
            continue
        problem = _without_manifest(store, spec, day, key, in_order) if manifest is None and objects else None
        result[day] = ManifestLookup(key, Archived(key, manifest) if manifest is not None else None, problem)
    return result


def _without_manifest(store: S3Store, spec: TableSpec, day: Period, key: str, listed: list[str] | None) -> str | None:
    """Why a day with no manifest is not simply unarchived (None where nothing of it is stored): its data object
    is there (listing.unmanifested), and may hold the only copy of its rows; or, its upload marker still beside
    it, an archive run of the day is between its upload and its manifest (under way, or killed there: not
    checked, look again). A listing that failed leaves the day as it was (unarchived), with a warning."""
    try:
        stored, marked = unmanifested(store, [key, *other_extension_keys(spec, day, store.prefix)], listed)
    except ArchiveError as exc:
        log.warning("%s %s: no manifest at %s, and listing the day's keys to look for its data object failed (%s): "
                    "taken as not archived", spec.name, day.isoformat(), store.uri(manifest_key(key)), exc)
        return None
    if not stored:
        return None
    if len(marked) == len(stored):
        return (f"not checked (retryable): object {', '.join(map(store.uri, stored))} has no manifest (none at "
                f"{store.uri(manifest_key(key))}), and its upload marker is still beside it: an archive run of the "
                "day between its upload and its manifest, under way or killed there (the next archive run of the day "
                "settles it); look again once no run of the day is going")
    return (f"object {', '.join(store.uri(k) for k in stored if k not in marked)} is stored without a manifest (none "
            f"at {store.uri(manifest_key(key))}: deleted or expired, or a run killed between its upload and its "
            "manifest): it may hold the only copy of the day's rows, and no command reads it as the day's archive; "
            "put the manifest back from the bucket's versions or a backup, or, where the source still has the day, "
            'archive it again (the new manifest keeps that object under "kept"); do not delete the object before '
            "its rows are known to be elsewhere")


# ----------------------------------------------------------------------------------------------
# Source side


def _source(conn: psycopg.Connection, spec: TableSpec, day: Period) -> tuple[SourceTable, sql.Composable]:
    table = source_table(conn, spec, day)
    return table, day_filter(table, day)


def _has_catch_all(conn: psycopg.Connection, spec: TableSpec) -> bool:
    """Whether rows of a day with no partition of its own can still be in the table: its DEFAULT partition, or a
    child unbounded on both sides (see ChildRange.catch_all), which holds rows of any day and no day's own
    (declarative tables only; a column-mode day without rows has none, a naming-mode day without its table has
    none). Such days are probed through the parent."""
    if spec.partitioning.mode != "declarative":
        return False
    name = sql.Identifier(spec.schema_name, spec.table_name).as_string(conn)
    try:
        found = conn.execute("SELECT partdefid OPERATOR(pg_catalog.<>) 0 FROM pg_catalog.pg_partitioned_table "
                             "WHERE partrelid = pg_catalog.to_regclass(%s)", (name,)).fetchone()
        return bool(found and found[0]) or any(child.catch_all for child in child_ranges(conn, spec))
    except psycopg.Error:  # (a role without USAGE on the schema: the fingerprints will say so, day by day)
        return False


def _has_open_ended_child(conn: psycopg.Connection, spec: TableSpec) -> bool:
    """Whether a declarative table has a child unbounded on a side (see ChildRange.open_ended): rows of a day with no
    partition of its own may be there, as in a DEFAULT partition."""
    return spec.partitioning.mode == "declarative" and any(c.open_ended for c in child_ranges(conn, spec))


def matches_source(archived: Archived, current: fingerprint.Fingerprint) -> bool:
    """Whether the archive holds what the source holds now: the fingerprint when the manifest has one
    (version 2), otherwise only the row count (version 1 recorded nothing finer)."""
    if archived.fingerprint and fingerprint.recorded_algorithm(archived.fingerprint) is not None:
        return archived.fingerprint == str(current)
    return archived.rows == current.rows  # (or one of an algorithm this version does not compute: see uncomputable)


def uncomputable(archived: Archived) -> str:
    """Why the archive's content cannot be compared here ("" if it can), in fingerprint.why_uncomputable's words (an
    older version's manifest or algorithm, or a newer one's). Row counts are compared alone then, and nothing is
    said of the content."""
    unknown = fingerprint.why_uncomputable(archived.fingerprint)
    if unknown is None:
        return ""
    return f"{unknown[0]}: row counts compared only; {unknown[1]} to compare the content"


def unread(conn: psycopg.Connection, spec: TableSpec, day: Period, exc: psycopg.Error | SourceError) -> str:
    """Why the source's rows of ``day`` could not be read (a lock_timeout behind a migration, a
    statement_timeout, a partition of the day pending detach), naming table, day, cause and remedy: that day is not
    checked, the others still are. A lost connection is raised: every other day would fail the same way."""
    if conn.closed:
        raise exc
    error = wrapped(exc, conn, spec, day.isoformat(), doing="reading")
    return f"not checked ({'retryable' if error.retryable else 'not retryable'}): {error}"


# ----------------------------------------------------------------------------------------------
# list


@dataclass(frozen=True)
class DayStatus:
    table: str
    day: Period
    state: str  # archived | missing | empty | changed | unreadable
    key: str
    in_source: bool | None  # None: the source could not be read
    rows: int | None = None  # in the archive
    bytes: int | None = None  # of the stored object
    archived_at: str | None = None
    source_rows: int | None = None  # with check_source
    note: str = ""

    def as_dict(self) -> dict:
        return {"table": self.table, "day": self.day.isoformat(), "state": self.state, "key": self.key,
                "in_source": self.in_source, "rows": self.rows, "bytes": self.bytes,
                "archived_at": self.archived_at, "source_rows": self.source_rows, "note": self.note}


STATES = ("archived", "missing", "empty", "changed", "unreadable", "not-checked")


def _found(conn: psycopg.Connection, spec: TableSpec, store: S3Store,
           days: Iterable) -> list[tuple[Period, ManifestLookup, bool, str | None]]:
    """Per day: its period, what the store holds for it, whether the source has rows for it (one
    probe of the source and one batch of store lookups for all the days, not one of each per day),
    and why that is not known (the probe failed: a lock_timeout behind a migration; else None)."""
    resolved = [spec.period(d) for d in days]
    in_source, unknown = present_days(conn, spec, resolved)
    manifests = lookup_manifests(store, spec, resolved, objects=True,
                                 identity=functools.partial(source_identity, conn))
    return [(day, manifests[day], day in in_source, unknown.get(day)) for day in resolved]


def present_days(conn: psycopg.Connection, spec: TableSpec, days: list[Period], *, catalog: bool = False
                 ) -> tuple[set[Period], dict[Period, str]]:
    """The days of ``days`` the source has rows for, and, where the source could not be asked (its rows
    locked past lock_timeout, a statement_timeout, a partition of the day pending detach: see catalog_days), why,
    per day (see :func:`unread`): those days are not checked, the other tables' still are. A lost connection is
    raised. ``catalog``: in declarative and naming mode, the days whose partition or table exists, rows or not
    (retention's prune: a day whose rows it deleted, its partition left, is settled as "already removed"; one whose
    partition is pending detach is there, and its removal refuses it naming the FINALIZE); a day held only by a
    child unbounded on a side (FROM (...) TO (MAXVALUE)) is, as one in the DEFAULT partition, where it has rows."""
    if not days:
        return set(), {}
    failed: dict[Period, psycopg.Error | SourceError] = {}
    try:
        if catalog and spec.partitioning.mode != "column":
            found = set(catalog_days(conn, spec, days, open_ended=False))
        else:
            found = set(existing_days(conn, spec, days, failed=failed))  # (open-ended children's days: probed)
        rest = [d for d in days if d not in found and d not in failed]
        if rest and (_has_catch_all(conn, spec) or catalog and _has_open_ended_child(conn, spec)):
            # a day with no partition of its own may still have rows in the DEFAULT partition (late rows after
            # its partition was dropped) or a catch-all child (one unbounded on a side, for prune): probed through the parent, as compare does
            found |= set(days_read_with_rows(conn, spec, rest, failed))
    except psycopg.Error as exc:
        return set(), {day: unread(conn, spec, day, exc) for day in days}
    except SourceError as exc:
        if exc.cause == TABLE_MISSING or spec.partitioning.mode == "column":
            raise
        # rows the role may not read (no SELECT): which days exist is the catalog's word, and each day's own
        # reading says why it cannot be read (compare: unreadable; list --check-source: the grant to give)
        failed.clear()
        found = set(catalog_days(conn, spec, days, failed=None if catalog else failed))
    return found, {day: unread(conn, spec, day, exc) for day, exc in failed.items()}


@speaks_utf8()
def day_statuses(conn: psycopg.Connection, spec: TableSpec, store: S3Store, days: list, *,
                 check_source: bool = False) -> list[DayStatus]:
    """Per day: ``archived`` (a manifest), ``missing`` (data in PostgreSQL, no archive), ``empty``
    (archived as a day without rows: a manifest and no object), ``changed`` (with ``check_source``: the source's content
    fingerprint, or row count for a version-1 manifest, differs from the archive's), ``unreadable``
    (a manifest that is not one, or, with ``check_source``, a day whose rows could not be read). Days
    with neither data nor an archive are left out."""
    used: dict[Period, str | None] = {}
    out = _day_statuses(conn, spec, store, days, check_source, used)
    if not check_source:
        return out
    return _again_where_replaced(out, used, store, spec, ("changed", "unreadable"),
                                 lambda again: _day_statuses(conn, spec, store, again, check_source, {}),
                                 functools.partial(source_identity, conn))


def _day_statuses(conn: psycopg.Connection, spec: TableSpec, store: S3Store, days: list, check_source: bool,
                  used: dict[Period, str | None]) -> list[DayStatus]:
    statuses = []
    for day, found, present, unknown in _found(conn, spec, store, days):
        used[day] = found.archived.manifest.get("manifest_sha256") if found.archived is not None else None
        if found.problem or unknown:
            # what the archive holds is still said when only the source could not be read, and whether the source
            # has the day is not known (None), not "no"
            held = found.archived if not found.problem else None
            statuses.append(DayStatus(spec.name, day, _unread_result(found.problem or unknown),
                                      (held.object_key if held else None) or found.key,
                                      None if unknown else present, held.rows if held else None,
                                      held.bytes if held else None, held.archived_at if held else None,
                                      note=found.problem or unknown))
            continue
        archived = found.archived
        if archived is None:
            if present:
                statuses.append(DayStatus(spec.name, day, "missing", found.key, True))
            continue
        state = "empty" if archived.empty else "archived"
        source_rows, note = None, ""
        if archived.removed and present:  # the source probed before this manifest was read: a removal that
            present = day in present_days(conn, spec, [day])[0] and \
                not still_detached(conn, spec, day, archived.manifest)  # committed in between emptied it (asked again)
        if check_source and present:
            try:
                current = source_fingerprint(conn, spec, day, fingerprint.algorithm_for(archived.fingerprint),
                                             archived.column_names, archived.manifest.get("columns") or ())
            except ColumnsChangedError as exc:  # (changed while it was being checked: not checked, no verdict)
                why = _changed_meanwhile(exc)
                statuses.append(DayStatus(spec.name, day, _unread_result(why) if why else "changed",
                                          archived.object_key or found.key, present, archived.rows, archived.bytes,
                                          archived.archived_at, None, why or exc.message))
                continue
            except SourceError as exc:
                if exc.cause != NO_PERIOD_TABLE:
                    raise
                current = None  # its day table dropped since it was asked again (by a removal: as compare says)
            except psycopg.Error as exc:
                why = unread(conn, spec, day, exc)
                statuses.append(DayStatus(spec.name, day, _unread_result(why), archived.object_key or found.key,
                                          present, archived.rows, archived.bytes, archived.archived_at, None, why))
                continue
            source_rows = current.rows if current is not None else None
            other = layout_change(archived.manifest, day, spec.day_column)
            if current is None or archived.removed and current.rows == 0:  # its removal (or a drop) committed since
                present, source_rows = False, None  # it was asked again (as compare says)
                note = archived.removed or other or "no longer in the source"
            elif not matches_source(archived, current) and (behind := _stale_standby(conn, spec, day, archived)):
                statuses.append(DayStatus(spec.name, day, "not-checked", archived.object_key or found.key, present,
                                          archived.rows, archived.bytes, archived.archived_at, None, behind))
                continue  # (a standby behind its archive: the primary's day of some time ago, as compare says)
            elif not matches_source(archived, current):
                state = "changed"
                note = (f"source has {current.rows:,} rows, archive {archived.rows:,}" if current.rows != archived.rows
                        else "same row count, different content (fingerprint)")
                if other:
                    note = f"{note}: {other}"
            elif other:  # the same rows, yet the proof and the removal refuse it: said
                note = other + _LAYOUT_EQUAL
            elif uncomputable(archived) and archived.fingerprint:
                note = uncomputable(archived)
            elif archived.removed:  # in the source and equal: a removal begun and not finished, or rows restored
                note = _removed_yet_present(conn, spec, day, archived)
        elif archived.removed and present:
            note = _removed_yet_present(conn, spec, day, archived)
        elif check_source and archived.empty and not archived.removed:  # (compare's words for it)
            other = layout_change(archived.manifest, day, spec.day_column)
            note = other + _LAYOUT_EQUAL if other else "archived as empty; the source still has no rows"
        elif check_source or archived.removed:
            note = archived.removed or layout_change(archived.manifest, day, spec.day_column) or \
                "no longer in the source"
        if check_source and state == "archived":  # (as compare checks an equal or a gone day: its object's HEAD)
            stored, unchecked = _object_check(store, spec, day, archived, gone=not present)
            if unchecked or stored:
                state = _unread_result(unchecked) if unchecked else "unreadable"
                note = unchecked or _object_note(stored, gone=not present)
        if state == "empty" and not note:
            note = "no rows: a manifest and no object"
        statuses.append(DayStatus(spec.name, day, state, archived.object_key or found.key, present, archived.rows,
                                  archived.bytes, archived.archived_at, source_rows, note))
    return statuses


# what a layout change means for a day whose rows are the archive's all the same
_LAYOUT_EQUAL = ("; its rows are the archive's all the same, but the proof and retention (and, after a zone or "
                 "granularity change, archive runs) refuse it until it is archived again with overwrite")


def _removed_yet_present(conn: psycopg.Connection, spec: TableSpec, day: Period, archived) -> str:
    """What a day the source shows again after its removal is: a removal still marked pending (killed before or
    after its COMMIT: the next run of the day settles it; a drop rolled back is no drop and restore; or, where
    whether it committed cannot be told, which no run settles, what does: see lifecycle.undecided_removal), or
    restored since (restore --into original). (A naming-mode day table a detach left in place is no such day: it is
    not in the source, see discovery.still_detached.)"""
    mark = archived.manifest.get("removed") or {}
    action, at = mark.get("action", "removal"), mark.get("at", "?")[:19]
    if removal_state(archived.manifest) == "pending" and \
            (why := undecided_removal(conn, spec, day, archived.manifest)) is not None:
        uri = (archived.manifest.get("object") or {}).get("uri") or archived.object_key
        return (f"{action} begun at {at} not finished (marked pending), and whether it committed cannot be told "
                f"({why}): archive runs and prunes of the day refuse it until it is settled; to settle: "
                f"{in_doubt_remedy(uri)}")
    if removal_state(archived.manifest) == "pending":
        return (f"{action} begun at {at} not finished (marked pending): the source still shows the day; the next "
                "archive run or prune of the day settles it")
    return (f"rows of the day are in the source again after its {action} at {at} (restored, or rows arrived since: "
            "compare, or list --check-source, tells which)")


# ----------------------------------------------------------------------------------------------
# archive --dry-run


@dataclass(frozen=True)
class Estimate:
    rows: int
    bytes: int  # bytes the rows take in PostgreSQL (heap), not the size of the archive
    method: str  # "catalog" (reltuples / pg_relation_size) or "count" (count(*) and pg_column_size)


_RELATION_STATS = """
SELECT c.reltuples::pg_catalog.int8, pg_catalog.pg_relation_size(c.oid)
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s
"""


def _catalog_estimate(conn: psycopg.Connection, schema: str, name: str, share: int) -> Estimate | None:
    """reltuples read whole (a float printed under a role's extra_float_digits -15 keeps one digit: 1234 as 1000)."""
    row = conn.execute(_RELATION_STATS, (schema, name)).fetchone()
    if row is None or row[0] < 0:  # never analyzed or vacuumed: the catalog does not know
        return None
    return Estimate(rows=round(row[0] / share), bytes=row[1] // share, method="catalog")


def catalog_estimate(conn: psycopg.Connection, spec: TableSpec, day: Period | dt.date,
                     children: list[ChildRange] | None = None) -> Estimate | None:
    """Rows and bytes of one day from the catalog's statistics of the day's own partition (declarative:
    shared evenly when a child covers several days; naming: the day's table); None where the catalog
    cannot say (column mode, or a relation never analyzed). Costs one or two catalog queries."""
    day = spec.period(day)
    if spec.partitioning.mode == "naming":
        return _catalog_estimate(conn, spec.schema_name, spec.child_table(day), 1)
    if spec.partitioning.mode != "declarative":
        return None
    total = None  # a month of daily children: the sum of theirs; a child of several periods: its share
    for child in children if children is not None else child_ranges(conn, spec):
        if child.start is None or child.end is None or child.end <= day.utc_start or child.start >= day.utc_end:
            continue
        part = _catalog_estimate(conn, child.schema or spec.schema_name, child.name, max(1, child.period_count(spec)))
        if part is None:
            return None
        total = part if total is None else Estimate(total.rows + part.rows, total.bytes + part.bytes, "catalog")
    return total


def estimate_day(conn: psycopg.Connection, spec: TableSpec, day: Period,
                 children: list[ChildRange] | None = None) -> Estimate:
    """Rows and bytes of one day, as cheaply as the partitioning allows: :func:`catalog_estimate`, else
    one scan of the day (``count(*)``, ``sum(pg_column_size(row))``). ``children``: the declarative
    table's child ranges, when the caller has read them already."""
    day = spec.period(day)
    estimate = catalog_estimate(conn, spec, day, children)
    if estimate is not None:
        return estimate
    with read_snapshot(conn):
        table, where = _source(conn, spec, day)
        rows, size = conn.execute(sql.SQL("SELECT pg_catalog.count(*), "
                                          "coalesce(pg_catalog.sum(pg_catalog.pg_column_size(t.*)), 0) FROM {} AS t "
                                          "WHERE {}").format(table.identifier, where)).fetchone()
    return Estimate(rows=rows, bytes=int(size), method="count")


@dataclass(frozen=True)
class PlannedDay:
    table: str
    day: Period
    key: str
    action: str  # archive | overwrite | skip | refuse | no-data (| settle: the command line's)
    reason: str
    estimate: Estimate | None

    def as_dict(self) -> dict:
        est = self.estimate
        return {"table": self.table, "day": self.day.isoformat(), "key": self.key, "action": self.action,
                "reason": self.reason, "estimated_rows": est.rows if est else None,
                "estimated_bytes": est.bytes if est else None, "estimate_method": est.method if est else None}


def plan_day(conn: psycopg.Connection, spec: TableSpec, store: S3Store, day: Period, *, overwrite: bool,
             in_source: bool, children: list[ChildRange] | None = None, unarchived: bool = False,
             listing: dict[str, dict] | None = None) -> PlannedDay:
    """What :func:`archive_pipeline.core.archive.archive_partition` would do with ``day``, decided by the
    archiver's own rule (``read_existing`` and the same keep-or-refuse decision on the content
    fingerprint) but only reading: no lock, no upload, no manifest. A decision against the archive (refuse,
    overwrite) is made once more where its manifest changed meanwhile: a removal that committed between the
    manifest's read and the source's emptied the source of a day whose mark came later. ``unarchived``: a listing
    of the range showed nothing of the day stored, under any format (see listing.listed_absent); ``listing``: what
    is stored of the day, from that listing (see listing.day_listings)."""
    if unarchived and in_source:
        day = spec.period(day)
        return PlannedDay(spec.name, day, render_key(spec, day, store.prefix), "archive", "not archived yet",
                          estimate_day(conn, spec, day, children))
    read: dict[str, bytes | None] = {}
    planned = _plan_day(conn, spec, store, day, overwrite=overwrite, in_source=in_source, children=children, read=read,
                        listing=listing)
    if planned.action in ("refuse", "overwrite") and read.get("raw") is not None:
        try:
            moved = read_existing(store, render_key(spec, spec.period(day), store.prefix)).raw != read["raw"]
        except ArchiveError as exc:
            # a failed read tells not whether the manifest changed: after a passing fault the day is decided afresh
            # (a read failing again makes it "not checked (retryable)", see plan_archive), not refused on a stale read
            moved = exc.retryable
        if moved:
            return _plan_day(conn, spec, store, day, overwrite=overwrite, in_source=in_source, children=children)
    return planned


def _plan_day(conn: psycopg.Connection, spec: TableSpec, store: S3Store, day: Period, *, overwrite: bool,
              in_source: bool, children: list[ChildRange] | None = None,
              read: dict[str, bytes | None] | None = None, listing: dict[str, dict] | None = None) -> PlannedDay:
    """:func:`plan_day` once; ``read`` is given the manifest's bytes it decided on."""
    day = spec.period(day)
    key = render_key(spec, day, store.prefix)
    if not in_source:
        return PlannedDay(spec.name, day, key, "no-data", "no data for this day in PostgreSQL", None)
    estimate = estimate_day(conn, spec, day, children)
    try:
        existing = read_existing(store, key, listing)
    except ArchiveError as exc:  # a manifest of a newer version, a store answering inconsistently
        if exc.retryable:
            raise
        return PlannedDay(spec.name, day, key, "refuse", str(exc), estimate)
    if read is not None:
        read["raw"] = existing.raw
    removed = existing.manifest is None and not existing.problem and removed_elsewhere(conn, spec, day, store,
                                                                                        existing)
    try:
        before = None if existing.manifest is not None or existing.problem or removed or overwrite else \
            archived_elsewhere(conn, spec, day, store, existing)
    except ArchiveError as exc:  # another period's archive under the day's former format: what the run refuses
        return PlannedDay(spec.name, day, key, "refuse", str(exc), estimate)
    if existing.manifest is None and not existing.problem and not removed and before is None:
        return PlannedDay(spec.name, day, key, "archive", "not archived yet", estimate)
    if existing.manifest is None and not existing.problem:
        # removed, or archived, under the table's former format or codec: the run's rule
        with read_snapshot(conn):
            table, where = _source(conn, spec, day)
            # in the algorithm the run compares in: the former archive's, or the removed one's (an older version's)
            current = fingerprint.compute(conn, table.identifier, table.columns, where,
                                          compared_algorithm(before[1] if before else removed))
            identity = SourceIdentity(*server_identity(conn))
        try:
            keep = keeps_existing(conn, spec, day, store, existing, identity, table, current, overwrite)
        except ArchiveError as exc:
            return _refused(spec, day, key, exc, estimate)
        if keep:
            stored = (before[1].manifest.get("object") or {}).get("key") or before[0]
            return PlannedDay(spec.name, day, stored, "skip", f"identical archive exists under the table's former "
                              f"format ({current.rows:,} rows, same content fingerprint)", estimate)
        return PlannedDay(spec.name, day, key, "archive", (
            "archived under the table's former format, by a manifest that cannot prove its content: archived again "
            "here" if before else "removed under the table's former format or codec; the source's rows are archived "
            "here (overwrite, or the removed rows exactly)"), estimate)
    if existing.manifest is not None:  # (an unreadable one names no table-day to check)
        try:
            owned(existing.manifest, spec.name, day.isoformat())
        except ForeignManifestError as exc:  # before reading the source: it decides nothing here
            return PlannedDay(spec.name, day, key, "refuse", str(exc), estimate)
    # a damaged archive (or unreadable manifest) too: what the run refuses before it replaces one (a removed day's
    # only copy, another database's archive, another format's without overwrite) is the run's own decision below
    if removal_state(existing.manifest) == "pending" and \
            not pending_removal_committed(conn, spec, day, existing.manifest):
        # a removal that never committed: the run takes its mark back first, and the day is an ordinary
        # archived day again (see lifecycle.settle_pending_removal)
        existing = replace(existing, manifest={k: v for k, v in existing.manifest.items()
                                                           if k != "removed"})
    with read_snapshot(conn):
        table, where = _source(conn, spec, day)
        # in the algorithm the run compares in: the manifest's (a damaged one's, read loosely)
        current = fingerprint.compute(conn, table.identifier, table.columns, where, compared_algorithm(existing))
        identity = SourceIdentity(*server_identity(conn))
    try:
        keep = keeps_existing(conn, spec, day, store, existing, identity, table, current, overwrite)
    except ArchiveError as exc:
        return _refused(spec, day, key, exc, estimate)
    if existing.problem:  # (never kept: see keeps_existing)
        return PlannedDay(spec.name, day, key, "overwrite", f"stored archive damaged: {existing.problem}", estimate)
    if keep:  # the object its manifest names (a later generation after an overwrite)
        stored = (existing.manifest.get("object") or {}).get("key") or key
        return PlannedDay(spec.name, day, stored, "skip", f"identical archive exists ({current.rows:,} rows, same "
                          "content fingerprint)", estimate)
    unknown = fingerprint.why_uncomputable(existing.manifest.get("fingerprint"))
    reason = ("overwrite requested" if overwrite else
              f"{unknown[0] if unknown else 'its manifest cannot prove its content'}: archived again as a new "
              "generation")
    return PlannedDay(spec.name, day, key, "overwrite", reason, estimate)


def _refused(spec: TableSpec, day: Period, key: str, exc: ArchiveError, estimate: Estimate | None) -> PlannedDay:
    """What the run's refusal of a day plans: no-data for a removed day with nothing to archive (its naming-mode day
    table detached by retention: DayRemovedError.nothing_to_do, which the run reports as no-data), else refuse."""
    nothing = isinstance(exc, DayRemovedError) and exc.nothing_to_do
    return PlannedDay(spec.name, day, key, "no-data" if nothing else "refuse", str(exc), estimate)


@speaks_utf8()
def plan_archive(conn: psycopg.Connection, spec: TableSpec, store: S3Store, days: list, *, overwrite: bool,
                 archived_absent: Callable[[list[Period]], Collection[Period]] | None = None) -> list[PlannedDay]:
    """What archive would do with each of ``days`` (see :func:`plan_day`). ``archived_absent``: of the days the
    source has no rows of, those the run still passes to the archiver (an archive of rows, no removal mark: refused
    as changed, or overwritten, not "no data"), as the command line's run decides them."""
    days = [spec.period(d) for d in days]
    # the days the source has rows for, a DEFAULT partition's included (late rows of a day whose partition was
    # dropped: the run reads them), and the days whose own probe failed (a lock on the day's partition)
    in_source, unreadable = present_days(conn, spec, days)
    if archived_absent is not None:
        in_source = {*in_source, *archived_absent([d for d in days if d not in in_source and d not in unreadable])}
    if in_source and spec.partitioning.mode == "declarative":
        # the catalog gave the days; a role that may not read the table would fail every one of them, where
        # the plan said "archive" (column mode's discovery reads the table, and refuses the same way)
        describe_table(conn, spec.name, spec.day_column)
    children = child_ranges(conn, spec) if spec.partitioning.mode == "declarative" and in_source else None
    planned = []
    # one listing of the range for the days nothing of is stored (a range of years mostly never archived is not
    # a LIST per day); the others are read one by one, as the run reads them
    unarchived = listed_absent(store, spec, [d for d in days if d in in_source])[0]
    listed = [d for d in days if d in in_source and d not in unarchived]
    stored = day_listings(store, [render_key(spec, d, store.prefix) for d in listed], spec,
                          listed[0] if listed else None)
    now = conn.execute("SELECT pg_catalog.now()").fetchone()[0]  # (the database's clock, as the run's snapshot)
    for day in days:
        if day in unreadable:
            planned.append(PlannedDay(spec.name, day, render_key(spec, day, store.prefix),
                                      unplanned_action(unreadable[day]), unreadable[day], None))
            continue
        if day in in_source and (why := not_over(day, now)) is not None:
            # (the run refuses it, retryable: see archive._refuse_unended; a day without rows is no-data, as the run
            # reports it: the command line passes it no further)
            planned.append(PlannedDay(spec.name, day, render_key(spec, day, store.prefix), "refuse",
                                      f"{why}; the run refuses it (retryable) until it is over", None))
            continue
        try:
            planned.append(plan_day(conn, spec, store, day, overwrite=overwrite, in_source=day in in_source,
                                    children=children, unarchived=day in unarchived,
                                    listing=stored.get(render_key(spec, day, store.prefix))))
        except psycopg.Error as exc:  # a lock_timeout on the day's partition, a statement_timeout: this day only
            why = unread(conn, spec, day, exc)
            planned.append(PlannedDay(spec.name, day, render_key(spec, day, store.prefix), unplanned_action(why),
                                      why, None))
        except ArchiveError as exc:  # (a pending mark's settling check, say: already wrapped) this day only
            if conn.closed:
                raise
            planned.append(PlannedDay(spec.name, day, render_key(spec, day, store.prefix), "not-checked",
                                      f"not checked ({'retryable' if exc.retryable else 'not retryable'}): {exc}", None))
    return planned


def unplanned_action(why: str) -> str:
    """A day the dry run could not plan: ``not-checked`` where a fault kept it from looking (not a day refused as
    changed), else ``refuse`` (also the command line's word for a gone day whose manifest it could not read)."""
    return "not-checked" if why.startswith("not checked") else "refuse"


# ----------------------------------------------------------------------------------------------
# compare


@dataclass(frozen=True)
class Comparison:
    table: str
    day: Period
    result: str  # equal | differs | not-archived | not-in-source | unreadable | not-checked
    source_rows: int | None
    archive_rows: int | None
    source_fingerprint: str | None
    archive_fingerprint: str | None
    key: str
    note: str = ""

    @property
    def differs(self) -> bool:
        return self.result in ("differs", "not-archived", "unreadable")

    def as_dict(self) -> dict:
        return {"table": self.table, "day": self.day.isoformat(), "result": self.result,
                "source_rows": self.source_rows, "archive_rows": self.archive_rows,
                "source_fingerprint": self.source_fingerprint, "archive_fingerprint": self.archive_fingerprint,
                "key": self.key, "note": self.note}


def _absent(store: S3Store, spec: TableSpec, day: Period, archived: Archived, key: str) -> Comparison:
    """:func:`_gone_from_source`, with the object of an archive of rows checked (see :func:`_object_check`): its
    only copy now, so one missing or damaged is a difference (the rows are in neither place), never a note that
    the archive holds them; a check that could not be made leaves the day not checked."""
    said = _gone_from_source(spec, day, archived, key)
    if said.result != "not-in-source":
        return said
    stored, unchecked = _object_check(store, spec, day, archived, gone=True)
    if unchecked:
        return replace(said, result=_unread_result(unchecked), note=unchecked)
    return replace(said, result="differs", note=_object_note(stored, gone=True)) if stored else said


def _object_check(store: S3Store, spec: TableSpec, day: Period, archived: Archived, *, gone: bool
                  ) -> tuple[list[str], str]:
    """The stored object of ``archived`` against its manifest: (its problems, "") where that could be told, ([],
    why) where it could not (why: "not checked (...)"), ([], "") for an archive of no rows (no object). One HEAD
    (verify.object_problems); for a day ``gone`` from the source, whose object is its rows' only copy, a HEAD
    answering another size or ETag is settled by the download, as archive checks such a day (verify.archive_damage:
    an object copied onto itself in parts holds the same bytes), since the verdict says the rows are lost."""
    if archived.empty:
        return [], ""
    try:
        problems = archive_damage(store, archived.key, archived.manifest, expected=archived.expected,
                                  owner=(spec.name, day.isoformat()), period=day) if gone else \
            object_problems(store, archived.manifest)
    except ArchiveError as exc:
        return [], (f"not checked ({'retryable' if exc.retryable else 'not retryable'}): asking the store for the "
                    f"object failed: {exc}")
    unchecked = next((p for p in problems if p.startswith("not checked")), "")
    return ([] if unchecked else problems), unchecked


def _object_note(problems: list[str], *, gone: bool) -> str:
    """What compare and list --check-source say of an archive whose object is not as its manifest records."""
    said = "the archive's object is not as recorded: " + "; ".join(problems)
    if gone:
        return (f"the source no longer has this day, and {said}: the rows are in neither place now; restore the "
                "object from the bucket's versions or a replica")
    return said


def _gone_from_source(spec: TableSpec, day: Period, archived: Archived, key: str) -> Comparison:
    """A day the source has no rows of: equal to an archive of no rows (archived as empty, and still
    empty), else the archive's rows are no longer in the source (removed by retention, or gone)."""
    if archived.rows == 0 and not archived.removed:
        other = layout_change(archived.manifest, day, spec.day_column)
        return Comparison(spec.name, day, "equal", 0, 0, archived.fingerprint, archived.fingerprint,
                          archived.object_key or key,
                          other + _LAYOUT_EQUAL if other else "archived as empty; the source still has no rows")
    # (a zone, granularity or day column changed: not rows gone). A day gone with no removal recorded (a partition
    # dropped by hand after archiving, as many do) is no difference of content either; said so, with what it means.
    said = archived.removed or layout_change(archived.manifest, day, spec.day_column) or (
        "archived; the source no longer has this day, and no removal of it was recorded (dropped or deleted by hand?): "
        "its archive is its only copy; restore --into original puts it back")
    return Comparison(spec.name, day, "not-in-source", None, archived.rows, None, archived.fingerprint,
                      archived.object_key or key, said)


def _unreadable(spec: TableSpec, day: Period, found: ManifestLookup, why: str) -> Comparison:
    """A day whose source could not be read, with what its archive says."""
    archived = found.archived
    if archived is None:
        return Comparison(spec.name, day, _unread_result(why), None, None, None, None, found.key, why)
    return Comparison(spec.name, day, _unread_result(why), None, archived.rows, None, archived.fingerprint,
                      archived.object_key or found.key, why)


def _changed_meanwhile(exc: ColumnsChangedError) -> str:
    """Why a day whose source's columns changed while compare or list --check-source fingerprinted it is not checked
    ("not checked (retryable): ...": a migration committed mid-check, nothing is known to differ), as verify --deep
    says (verify.columns_change); "" for columns changed since the day was archived, a verdict (differs, changed)."""
    said = columns_change(exc)
    return str(said) if problem_kind(said) == NOT_CHECKED else ""


def _unread_result(why: str) -> str:
    """``not-checked`` for a day a passing fault kept from being compared (a read that failed, a lock held past
    lock_timeout_ms: nothing is known to differ), ``unreadable`` (a difference) for rows the role may not read
    and whatever else no retry helps."""
    return "not-checked" if why.startswith("not checked (retryable)") else "unreadable"


@speaks_utf8()
def compare_days(conn: psycopg.Connection, spec: TableSpec, store: S3Store,
                 days: Iterable[dt.date]) -> list[Comparison]:
    """Source against archive per day: row counts and content fingerprints (the manifest's
    ``fingerprint``; a version-1 manifest has none, and then only the counts are compared), and for a
    day found equal, its object's HEAD against the manifest (missing, or another size or ETag: differs)."""
    used: dict[Period, str | None] = {}
    out = _compare_days(conn, spec, store, days, used)
    return _again_where_replaced(out, used, store, spec, ("differs", "not-in-source"),
                                 lambda again: _compare_days(conn, spec, store, again, {}),
                                 functools.partial(source_identity, conn))


def _again_where_replaced(out: list, used: dict, store: S3Store, spec: TableSpec, verdicts: tuple[str, ...],
                          again: Callable[[list[Period]], list], identity: Whose) -> list:
    """``out`` with the days whose verdict is one of ``verdicts`` compared again where their manifest changed
    since it was read (``used``: the manifest_sha256 each day was compared with): an overwrite that committed
    meanwhile retired the object compared with, and a removal that committed meanwhile emptied the source
    of a day whose mark came after the read; either made an intact day "differ" or "change". ``identity``: see
    :func:`lookup_manifests`."""
    suspect = [item.day for item in out if getattr(item, "result", getattr(item, "state", None)) in verdicts]
    if not suspect:
        return out
    now = lookup_manifests(store, spec, suspect, identity=identity)
    raced = [day for day in suspect if now[day].archived is not None
             and now[day].archived.manifest.get("manifest_sha256") != used.get(day)]
    if not raced:
        return out
    redone = {item.day: item for item in again(raced)}
    return [redone.get(item.day, item) for item in out]


def _stale_standby(conn: psycopg.Connection, spec: TableSpec, day: Period, archived: Archived) -> str | None:
    """Why a day read as differing is not checked, where ``conn`` is a hot standby behind its archive (replay paused,
    or lagging: source.Replay.stale): its day is the primary's of some time ago, not a change (called "differs",
    it was archived again with overwrite from the standby, and lost rows); else None."""
    try:
        refuse_stale_standby(conn, spec.name, day.isoformat(), archived.manifest,
                             outcome="nothing is known to differ", instead="compare on the primary")
    except SourceError as exc:
        return f"not checked (retryable): {exc}"
    return None


def _compare_days(conn: psycopg.Connection, spec: TableSpec, store: S3Store, days: Iterable[dt.date],
                  used: dict[Period, str | None]) -> list[Comparison]:
    out = []
    elsewhere = _has_catch_all(conn, spec)
    for day, found, present, unknown in _found(conn, spec, store, days):
        used[day] = found.archived.manifest.get("manifest_sha256") if found.archived is not None else None
        if found.problem:
            out.append(Comparison(spec.name, day, _unread_result(found.problem), None, None, None, None, found.key,
                                  found.problem))
            continue
        if unknown:
            out.append(_unreadable(spec, day, found, unknown))
            continue
        archived = found.archived
        if archived is None and not present:
            continue
        if not present and not elsewhere:  # nowhere else the day's rows could be: no query
            out.append(_absent(store, spec, day, archived, found.key))
            continue
        try:
            if archived is not None and still_detached(conn, spec, day, archived.manifest):
                # its day table, detached by retention, keeps its name and rows: they are no longer the source's
                out.append(_absent(store, spec, day, archived, found.key))
                continue
            algorithm = fingerprint.algorithm_for(archived.fingerprint if archived is not None else None)
            # An archived day the catalog shows no partition for is still looked for where it can be: its
            # rows may sit in a DEFAULT partition (a late row after the day's partition was dropped).
            current = source_fingerprint(conn, spec, day, algorithm, archived.column_names if archived else None,
                                         (archived.manifest.get("columns") or ()) if archived else ())
        except ColumnsChangedError as exc:
            if why := _changed_meanwhile(exc):  # no verdict (and perhaps no archive: one of a day not archived)
                out.append(_unreadable(spec, day, found, why))
                continue
            if archived.removed and rows_after_removal(conn, spec, day) == 0:  # a column added since: no rows to differ
                out.append(_absent(store, spec, day, archived, found.key))
                continue
            if (behind := _stale_standby(conn, spec, day, archived)) is not None:
                out.append(_unreadable(spec, day, found, behind))
                continue
            out.append(Comparison(spec.name, day, "differs", None, archived.rows, None, archived.fingerprint,
                                  archived.object_key or found.key, exc.message))
            continue
        except psycopg.Error as exc:  # a lock_timeout on the day's partition, a statement_timeout: this day only
            out.append(_unreadable(spec, day, found, unread(conn, spec, day, exc)))
            continue
        except SourceError as exc:
            if archived is None or exc.cause != NO_PERIOD_TABLE:
                # a day the catalog shows that this role cannot read (SELECT revoked, its day column gone): say
                # so, never "not in the source"; only a naming-mode day whose own table is gone has left it
                out.append(_unreadable(spec, day, found, str(exc)))
                continue
            current, present = None, False
        if current is not None and current.rows == 0 and (not present or archived is not None and archived.removed):
            current = None  # (retention's delete leaves the day's partition, empty)
        if archived is None:
            out.append(Comparison(spec.name, day, "not-archived", current.rows, None, str(current), None, found.key,
                                  "the source has this day; no archive"))
            continue
        key = archived.object_key or found.key
        if current is None:
            out.append(_absent(store, spec, day, archived, found.key))
            continue
        note = uncomputable(archived)
        result = "equal" if matches_source(archived, current) else "differs"
        if result == "differs" and (behind := _stale_standby(conn, spec, day, archived)) is not None:
            out.append(_unreadable(spec, day, found, behind))
            continue
        if archived.fingerprint and fingerprint.recorded_algorithm(archived.fingerprint) is None:
            result = "differs"  # not proven equal: none of the content could be compared (the note says why)
            note = (f"not compared: source has {current.rows:,} rows, archive {archived.rows:,}; "
                    f"{note.replace(': row counts compared only', '')}")
        elif result == "differs" and current.rows == archived.rows:
            note = "same row count, different content"
        elif result == "differs" and note:
            note = f"source has {current.rows:,} rows, archive {archived.rows:,}; {note}"
        if other := layout_change(archived.manifest, day, spec.day_column):  # (equal rows too: an archive run,
            note = f"{note}; {other}" if note else other  # the proof and the removal refuse it, so it is said)
            if result == "equal":
                note += _LAYOUT_EQUAL
        # "equal" says the bucket holds the day: its object is there as the manifest describes it (one HEAD);
        # a manifest alone, its object deleted or replaced, was called equal
        stored, unchecked = _object_check(store, spec, day, archived, gone=False) if result == "equal" else ([], "")
        if unchecked:  # the HEAD failed (throttled, unreachable): this day is not checked, the others are
            out.append(_unreadable(spec, day, found, unchecked))
            continue
        if stored:
            result, note = "differs", _object_note(stored, gone=False)
        out.append(Comparison(spec.name, day, result, current.rows, archived.rows, str(current),
                              archived.fingerprint, key, note))
    return out
