"""Check a stored archive: against its manifest (light), and against the source rows (deep).

The light check costs two requests (HEAD of the object, GET of the manifest). The deep check is
the proof a user runs before letting the source go: it downloads the object, checks its size,
MD5 and SHA-256, loads its rows back into PostgreSQL (a temporary table with the recorded column
types, in the source database or in a scratch database the user names — a hot standby allows no
temporary tables) and compares the content fingerprint of the loaded rows with the manifest's and
with the source's. It names the first difference it finds.
"""

from __future__ import annotations

import datetime as dt
import contextlib
import functools
import io
import itertools
import logging
import re
import threading
from collections.abc import Collection, Iterator, Sequence
from typing import Any
from dataclasses import dataclass

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from psycopg import sql

from archive_pipeline.core import fingerprint
from archive_pipeline.core import keys
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.discovery import NO_PERIOD_TABLE, pending_detach_days, pinned_settings, source_table, \
    still_detached
from archive_pipeline.core.errors import ArchiveError, named, note_cancelled, sql_name, wrap
from archive_pipeline.core.formats import readers
from archive_pipeline.core.formats.csv import header_lines
from archive_pipeline.core.manifest import (ForeignManifestError, ManifestError, NewerManifestError, Whose,
                                            another_period, archived_encoding, committed_at, current_archive,
                                            day_archive, decoded_manifest, foreign_objects, layout_change, object_key,
                                            owned, removal_state, source_identity, stored_object_problems)
from archive_pipeline.core.sink import temp_archive_file, temp_dir_given, temp_dir_named
from archive_pipeline.core.parallel import dsn_of
from archive_pipeline.core.periods import Period
from archive_pipeline.core.session_settings import CATALOG_FIRST, SESSION_PINNED, act_as, apply_settings, \
    session_pinned, set_session, speaks_utf8, switched_role, watch_client, without_user_triggers
from archive_pipeline.core.sqltext import CatalogText, with_params
from archive_pipeline.core.source import (Column, PrintedNames, SourceTable, acting_role, columns_as_archived, day_filter,
                                          describe_table, names_brief, names_database_errors, printed_names_changed,
                                          refuse_stale_standby, relation_printed_names, relation_shapes, shape_changes,
                                          type_parts, wrapped)
from archive_pipeline.core.store import MISSING_ON_READ, DownloadError, LocalFileError, S3Store, temp_file_refused

log = logging.getLogger(__name__)

__all__ = ["ManifestError", "archive_damage", "count_rows", "deep_verify", "load_manifest", "load_stored_manifest",
           "removed_object_problems", "rows_unproven", "source_changed", "stored_object_problems", "verify_archive"]

_temp_names = itertools.count()




def count_rows(path: str, fmt: str, compression: str, limit: int | None = None) -> int:
    """Rows in an archive file, read the way a user would read it, in flat memory: a Parquet file a row group
    at a time, one column of it (the whole file in one pass of batches held every row group's pages), a text
    file no further than ``limit`` decompressed bytes (its manifest's: a bomb is not counted to its end)."""
    if fmt == "parquet":
        # From the footer, decoding nothing: a forged row group of one dictionary value (or a page that
        # decompresses a thousandfold) decoded to hundreds of MB to be counted. Each row group's count is checked
        # against its first column's value count where that column is flat (a value per row, nulls included).
        metadata = pq.ParquetFile(path).metadata
        rows = 0
        for group in range(metadata.num_row_groups):
            counted = metadata.row_group(group).num_rows
            if metadata.num_columns and metadata.schema.column(0).max_repetition_level == 0 and \
                    metadata.row_group(group).column(0).num_values != counted:
                raise readers.ArchiveDecodeError(f"row group {group} of the Parquet file says {counted:,} rows, its "
                                                 f"first column {metadata.row_group(group).column(0).num_values:,}")
            rows += counted
        return rows
    if fmt == "jsonl":  # one record per line: JSON text never holds a raw newline
        rows = 0
        for chunk in readers.decompressed_chunks(path, compression, limit):
            rows += chunk.to_pybytes().count(b"\n")
        return rows
    # CSV: its line ends outside quotes, less the header. A quote inside a value is doubled (""), which turns
    # the state twice. Arrow's reader needed each row in one 1 MiB block (a 3 MB value was "undecodable") and
    # skipped the empty lines of a one-column table's NULLs (rows "missing").
    ends, quoted = 0, False
    for chunk in readers.decompressed_chunks(path, compression, limit):
        for i, piece in enumerate(chunk.to_pybytes().split(b'"')):
            quoted = quoted != (i > 0)
            if not quoted:
                ends += piece.count(b"\n")
    return max(ends - 1, 0)


def load_manifest(store: S3Store, key: str, owner: tuple[str, str] | None = None) -> dict | None:
    """The manifest beside the data key ``key``; None if there is none, :class:`ManifestError` (a
    ValueError) if it is not a manifest, was altered, or arrived damaged, or (``owner``: the table and
    the period's ISO form whose key ``key`` is) if it is another table-day's (see ``manifest.owned``)."""
    manifest = decoded_manifest(store, keys.manifest_key(key))
    if manifest is None:
        return None
    if owner:
        return owned(manifest, *owner, key=key)
    if problem := foreign_objects(manifest, key):
        raise ManifestError(problem)
    return manifest


def load_stored_manifest(store: S3Store, key: str, owner: tuple[str, str] | None = None,
                         listed: Collection[str] | None = None) -> dict | None:
    """:func:`load_manifest` of a manifest the caller has reason to hold stored (a listing shows it: ``listed``, the
    keys that listing showed; else it wrote it, or a record or a mark names it). A read that finds none (a GET and
    two HEADs answering 404) is believed only where no listing shows the manifest either: where one does, the store
    contradicts itself (a lagging replica, a caching gateway) and ``S3Store.confirm_missing`` raises a retryable
    DownloadError. "Missing", "no archive", "replaced" or "rejected" are verdicts that stand, and are never made of
    a moment's 404."""
    manifest = load_manifest(store, key, owner)
    if manifest is None:
        store.confirm_missing(keys.manifest_key(key), MISSING_ON_READ, listed)
    return manifest


def judged_archive(store: S3Store, spec: TableSpec, day: Period, recorded: str,
                   recorded_at: dt.datetime | None = None, *, identity: Whose = None) -> tuple[str, dict | None]:
    """(key, manifest) of the archive a check of ``day`` judges: the day's current one, chosen as the archive run,
    restore, list and compare choose it (manifest.day_archive: the rendered key and the table's other formats' keys,
    one listing), with ``recorded`` (the day's key as its last record names it: a former key_template's or prefix's
    is weighed too, by manifest.current_archive). A check that read the recorded key alone judged an archive
    superseded since (an overwrite under another format) and compared the source with it.

    ``recorded`` itself where it is the current one, or where the day has no archive (manifest None: the caller
    says it is missing), or where its manifest is gone and the one found elsewhere was committed before
    ``recorded_at`` (the record's snapshot): an older archive does not stand in for a recorded one that is missing.
    ``identity``: the database the deployment archives, where the check knows it (see manifest.day_archive: another
    database's archive under another format's key is not the day's; None: not told apart).
    Where nothing changed this costs the manifest's GET and the listing; more only where other keys hold archives
    (or where the recorded manifest reads as absent: a listing of it, which a store contradicting itself fails).
    A manifest that fails its checks and could be the current one raises its ManifestError, naming its key
    (``exc.key``); a failed read raises the store's error."""
    owner = (spec.name, day.isoformat())
    rendered = keys.table_day_key(spec, day, store.prefix)
    here = _owned_at(store, rendered, owner)
    key, manifest = day_archive(store, spec, day, rendered, here, identity=identity)  # (see day_archive)
    if key == recorded and manifest is not None:
        return key, manifest
    then = here if recorded == rendered else _owned_at(store, recorded, owner)  # (changed: one GET more)
    if then is not None:
        return current_archive([*([(key, manifest)] if manifest is not None else []), (recorded, then)])
    if manifest is None or recorded_at is not None and committed_at(manifest)[0] <= recorded_at:
        # the record names that manifest: "missing" only where no listing shows it either (else retryable)
        store.confirm_missing(keys.manifest_key(recorded), MISSING_ON_READ)
        return recorded, None
    return key, manifest


def archive_named(manifest: dict) -> str:
    """Which archive ``manifest`` is, as a check's text names the one it judged: its generation and object key."""
    return f"generation {manifest.get('generation', 1)}, {object_key(manifest) or 'no object: an empty day'}"


def _owned_at(store: S3Store, key: str, owner: tuple[str, str]) -> dict | None:
    """:func:`load_manifest` of ``owner``'s day at ``key``, whose ManifestError names ``key`` (``exc.key``)."""
    try:
        return load_manifest(store, key, owner)
    except ManifestError as exc:
        exc.key = exc.key or key
        raise


def _manifest_or_problem(store: S3Store, key: str, missing: str,
                         owner: tuple[str, str] | None) -> tuple[dict | None, list[str]]:
    """The manifest beside ``key``, or why there is none to check against (a check's caller expects one: a read
    that finds none while a listing shows it raises, see :func:`load_stored_manifest`)."""
    try:
        manifest = load_stored_manifest(store, key, owner)
    except NewerManifestError:  # not damaged: no verdict here either way (upgrade, its remedy says)
        raise
    except ManifestError as exc:
        return None, [unreadable_manifest(f"manifest {keys.manifest_key(key)} unreadable: {exc}", exc)]
    return manifest, ([] if manifest is not None else [missing])


def verify_archive(store: S3Store, key: str, expected: dict, *, deep: bool = False,
                   owner: tuple[str, str] | None = None, temp_dir: str | None = None,
                   period: Period | None = None, manifest: dict | None = None) -> list[str]:
    """What differs between the stored archive and ``expected`` (``bytes``, ``md5``, ``rows``,
    ``format``, ``compression``, optionally ``fingerprint``, ``object_key`` and ``generation``: a record names the
    object it is about); an empty list means it is intact.

    ``key`` is the rendered key of the day; the data object is the one the manifest names. ``owner``
    (table, period): a manifest of another table-day there is a problem, however intact its object.
    ``deep`` downloads the object (into ``temp_dir``, default the system's) and counts its rows. ``period``:
    the day as the table is configured now; an archive of another period at its key (the table's zone or
    granularity changed since) is a problem, however intact: it does not hold this period's rows. ``manifest``:
    the day's manifest, read already (a range's listing read each once): not read again.
    """
    if manifest is not None:
        problems: list[str] = []
        if owner:
            try:
                manifest = owned(manifest, *owner, key=key)
            except ManifestError as exc:
                return [unreadable_manifest(f"manifest {keys.manifest_key(key)} unreadable: {exc}", exc)]
    else:
        manifest, problems = _manifest_or_problem(store, key, f"manifest {keys.manifest_key(key)} is missing", owner)
    if manifest is None:
        return problems
    if period is not None and (other := another_period(manifest, period)):
        problems.append(Problem(f"{other}: archive the day again with overwrite for the period as the table is now",
                                OTHER_PERIOD))
    obj = manifest.get("object") or {}
    recorded = {"md5": obj.get("md5", ""), "bytes": obj.get("bytes", 0), "rows": manifest.get("rows")}
    if "fingerprint" in expected:
        recorded["fingerprint"] = manifest.get("fingerprint")
    # the object and generation recorded: an overwrite of the very same bytes names another object (the recorded one
    # deleted by its commit), which the digests alone took for the recorded archive
    if expected.get("object_key"):
        recorded["object_key"] = obj.get("key")
    if "generation" in expected:
        recorded["generation"] = int(manifest.get("generation", 1) or 1)
    for field, value in recorded.items():
        if field in expected and value != expected[field]:
            problems.append(f"manifest {field}: {value!r}, recorded {expected[field]!r}")
    if manifest.get("empty"):
        return problems
    try:
        stored = object_problems(store, manifest)
    except ArchiveError as exc:  # no answer about the object: no verdict, named as every failed check of the day is
        raise _named_for(exc, manifest)
    if deep and not problems and stored:
        # A HEAD's word (no checksum to it) is not believed where the download is made anyway: its digests tell.
        # Another ETag for the recorded size is an object copied onto itself in other parts (aws s3 cp above its
        # multipart threshold), the same bytes; another size may be a gateway's wrong Content-Length on HEAD.
        downloaded = _download_problems(store, manifest, expected, temp_dir)
        if not downloaded:
            _same_version_or_raise(store, manifest)
            log.warning("%s: the store's HEAD said %s, and the download holds the archived bytes exactly (size, MD5 "
                        "and SHA-256 as recorded): its HEAD answers are not to be trusted",
                        store.uri(obj.get("key", key)), "; ".join(stored))
            return problems
        return problems + stored + [p for p in downloaded if p not in stored]
    problems += stored
    if deep and not problems:
        problems += _download_problems(store, manifest, expected, temp_dir)
    return problems


def archive_damage(store: S3Store, key: str, manifest: dict, *, expected: dict | None = None,
                   owner: tuple[str, str] | None = None, period: Period | None = None,
                   temp_dir: str | None = None) -> list[str]:
    """What proves the archive of a day the source no longer holds damaged, or [] where it holds the day's rows:
    the light check of :func:`verify_archive` (one HEAD), believed where it finds nothing or the object missing.
    A HEAD that answers otherwise than recorded proves no damage (an object copied onto itself in parts, ``aws s3
    cp`` above its multipart threshold or a storage class changed, holds the same bytes under an ETag ``<...>-1``;
    a gateway may answer a wrong Content-Length): there the download's digests decide, as a deep check's do. Such a
    verdict tells a person the rows are in neither place, so it must be proven; the download is paid only where
    the HEAD already differs. Raises as :func:`verify_archive` does where no verdict could be had."""
    expected = expected or {}
    problems = verify_archive(store, key, expected, owner=owner, period=period, manifest=manifest)
    if not problems or any(problem.endswith(" is missing") for problem in problems):
        return problems
    return verify_archive(store, key, expected, deep=True, owner=owner, period=period, manifest=manifest,
                          temp_dir=temp_dir)


def _named_for(exc: ArchiveError, manifest: dict) -> ArchiveError:
    """``exc`` naming the manifest's table and day (where it records them)."""
    if manifest.get("table") and manifest.get("day"):
        named(exc, manifest["table"], manifest["day"])
    return exc


def _same_version_or_raise(store: S3Store, manifest: dict) -> None:
    """Before a download is believed over the object's HEAD: both must be answers about one version (the same
    ETag), as for an object copied onto itself or a HEAD's wrong Content-Length. A GET answered under another ETag
    than the HEAD's (a cache, a replica behind) proves a version the store may no longer hold: no verdict, retried."""
    key = manifest["object"]["key"]
    got = store.proven_etag(key)
    try:
        head = store.head(key)
    except ArchiveError as exc:  # no answer: nothing proven either way
        raise _named_for(exc, manifest)
    now = store.etag_in(head) if head is not None else None
    if got is not None and now == got:
        return
    raise DownloadError(f"{manifest.get('table')} {manifest.get('day')}: the archive {store.uri(key)} was downloaded "
                        f"as recorded (ETag {got}), but its HEAD names another version ("
                        f"{'missing' if head is None else f'ETag {now}'}): the store answered a HEAD and a GET of "
                        "two different versions (a cache or a replica behind), so nothing was proven either way; "
                        "retried", table=manifest.get("table"), day=manifest.get("day"), retryable=True,
                        damaged=False, cause="the store answered a HEAD and a GET of two different versions",
                        remedy="retried automatically; if it persists, check the caching gateways or replication "
                               "between the archiver and the store")


def stored_problems(store: S3Store, manifest: dict, head: dict | None) -> list[str]:
    """How the stored object, by its HEAD answer ``head`` (None: 404), differs from the one ``manifest`` describes
    (missing included)."""
    key = manifest["object"]["key"]
    return stored_object_problems(head, manifest) if head is not None else [f"object {store.uri(key)} is missing"]


def object_problems(store: S3Store, manifest: dict) -> list[str]:
    """The stored object's problems against its manifest (one HEAD), asked again a moment later before any is
    believed: a HEAD answer has no checksum, and a 404 may be a store's moment of inconsistency (a lagging replica,
    a caching gateway). "Missing" is believed only where a listing of the object does not show it either
    (``S3Store.confirm_missing``: a retryable DownloadError if it does, no verdict)."""
    key = manifest["object"]["key"]
    if not stored_problems(store, manifest, store.head(key)):
        return []
    head = store.head_again(key)
    if head is None:
        store.confirm_missing(key, "its HEAD answered 404 twice")
    return stored_problems(store, manifest, head)


@contextlib.contextmanager
def _proof_file(manifest: dict, temp_dir: str | None) -> Iterator[Any]:
    """The temp file a proof downloads the object into; one that cannot be created (the directory missing, full,
    not writable) is a local error naming table, day and directory, not a bare OSError."""
    with contextlib.ExitStack() as stack:
        try:
            sink = stack.enter_context(temp_archive_file(temp_dir, suffix=".verify"))
        except OSError as exc:
            raise temp_file_refused(exc, manifest.get("table"), manifest.get("day"), temp_dir, "proving",
                                    "the downloaded object") from None
        yield sink


def _download_problems(store: S3Store, manifest: dict, expected: dict, temp_dir: str | None = None) -> list[str]:
    with _proof_file(manifest, temp_dir) as sink:
        problems = _download(store, manifest, sink)
        if problems:
            return problems
        try:
            rows = count_rows(str(sink.path), manifest["format"], manifest["compression"],
                              readers.decompression_limit(manifest))
        except (pa.ArrowInvalid, OSError, io.UnsupportedOperation, readers.ArchiveDecodeError) as exc:
            return [f"object does not decode as {manifest['format']}/{manifest['compression']}: {exc}"]
        if rows != manifest["rows"]:
            return [f"rows: recorded {manifest['rows']:,}, object holds {rows:,}"]
    return []


def _download(store: S3Store, manifest: dict, sink) -> list[str]:
    """Stream the object into ``sink`` (a HashingFile) through the store's verified download, and
    compare size and digests with the manifest; what differs, as problems (empty: identical).

    Only a proven mismatch is a problem: the object missing, or the bytes of a complete download
    that differ from the manifest (size, or digests the store's own ETag confirms, or that a second
    download gives again). A download that fails (a 503, a dropped connection, bytes corrupted on the
    way, access denied) proves nothing about the archive: it raises an :class:`ArchiveError` naming
    the table and day, retryable when trying again can help; so does a full local temp directory
    (:class:`LocalFileError`, never retryable)."""
    obj = manifest["object"]
    table, day = manifest.get("table"), manifest.get("day")
    try:
        found = store.download_to(obj["key"], sink, obj["md5"], expected_size=obj["bytes"],
                                   content_encoding=obj.get("content_encoding"))
    except DownloadError as exc:
        if exc.damaged is True:  # the store's own size or MD5 says the stored object is not the archived one
            return [str(exc)]
        if exc.damaged is None and _stored_bytes_differ(store, obj, sink.md5):
            return [f"md5: recorded {obj['md5']}, stored object hashes to {sink.md5} (two complete downloads agree)"]
        raise _unproven(exc, table, day, store.uri(obj["key"])) from exc
    except LocalFileError as exc:
        raise _unproven(exc, table, day, store.uri(obj["key"])) from exc
    if found is None:
        return [f"object {store.uri(obj['key'])} is missing"]
    problems = []
    if sink.size != obj["bytes"]:
        problems.append(f"size: recorded {obj['bytes']:,} bytes, downloaded {sink.size:,}")
    if sink.md5 != obj["md5"]:
        problems.append(f"md5: recorded {obj['md5']}, stored object hashes to {sink.md5}")
    if obj.get("sha256") and sink.sha256 != obj["sha256"]:
        problems.append(f"sha256: recorded {obj['sha256']}, stored object hashes to {sink.sha256}")
    return problems


def _stored_bytes_differ(store: S3Store, obj: dict, first_md5: str) -> bool:
    """A complete download whose MD5 is not the manifest's, of an object whose ETag is no MD5 (multipart):
    corrupted on the way or damaged in the store. A second download tells: the same wrong digest again
    is what the store holds. Anything else (the right bytes this time, another digest, a failure) is not
    a proof of damage."""
    try:
        second = store.stored_digests(obj["key"], expected_size=obj["bytes"],
                                      content_encoding=obj.get("content_encoding"))
    except ArchiveError:
        return False
    return second is not None and second[0] == first_md5 != obj["md5"]


def _unproven(exc: ArchiveError, table: str | None, day: str | None, uri: str) -> ArchiveError:
    """A download that failed, as an error of the same kind naming table and day: no proof was made."""
    kind = LocalFileError if isinstance(exc, LocalFileError) else DownloadError
    what = ("" if "retried" in exc.message else "; retried" if exc.retryable
            else "; not retried: a retry cannot fix this")
    extra = {"directory": exc.directory} if isinstance(exc, LocalFileError) else {"damaged": exc.damaged}
    return kind(f"{table} {day}: the archive {uri} could not be downloaded to prove it, so nothing was proven "
                f"either way (this is no verdict on the archive): {exc.message}{what}", table=table, day=day,
                retryable=exc.retryable, remedy=exc.remedy, cause=exc.cause, **extra)


class ColumnsChangedError(ArchiveError):
    """The source's columns are not the archive's: renamed, added or dropped since it was archived."""


@speaks_utf8()
def source_fingerprint(conn: psycopg.Connection, spec: TableSpec, day: Period | dt.date,
                       algorithm: str = fingerprint.ALGORITHM,
                       names: Sequence[str] | None = None,
                       recorded: Sequence[dict] = ()) -> fingerprint.Fingerprint:
    """The day's fingerprint in the source now (one snapshot), by ``algorithm`` (to compare with a
    manifest, the one it records: see ``fingerprint.algorithm_for``). With ``names`` (an archive's
    columns) it is computed over the source's columns of those names in that order, and raises
    :class:`ColumnsChangedError` if the source's names are not those, or if a composite inside a column is not
    as ``recorded`` (the manifest's ``columns``) says it was."""
    return _fingerprint_now(conn, spec, spec.period(day), algorithm, names, recorded)[2]


def _fingerprint_now(conn: psycopg.Connection, spec: TableSpec, day: Period, algorithm: str,
                     names: Sequence[str] | None, recorded: Sequence[dict] = ()
                     ) -> tuple[SourceTable, sql.Composable, fingerprint.Fingerprint]:
    """(the day's table, its filter, its fingerprint now), in one snapshot (see :func:`source_fingerprint`)."""
    with conn.transaction():
        # the table's types read as the archive read them, PostgreSQL's names first: the fingerprint's settings
        # below put that path in force, and a type's name read before them under a role's path ("pg_catalog.date"
        # where a schema of the role's holds a "date") made the columns "change" within one transaction
        apply_settings(conn.execute, {"search_path": CATALOG_FIRST})
        table = source_table(conn, spec, day)
        where = day_filter(table, day)
        columns = archived_order(spec, day, table, names)
        columns = fingerprint.as_archived(conn, columns, recorded, algorithm)  # (where a type changed since)
        refuse_retype(conn, spec, day, columns, recorded)
        changes = shape_changes(recorded, {c.name: c.shape for c in table.columns})
        if changes:  # a composite's text is positional: its values would be read as other fields' (or not at all)
            raise ColumnsChangedError(
                f"{spec.name} {day}: a type inside the source's columns changed since the day was archived: "
                f"{'; '.join(changes)}", table=spec.name, day=day.isoformat(), retryable=False,
                remedy="put the type back as it was (ALTER TYPE) to prove or compare the day, or archive the day "
                       "again (overwrite) if the new type is right; the previous archive stays until the new one is "
                       "complete")
        now = fingerprint.compute(conn, table.identifier, columns, where, algorithm)
        _columns_unchanged(conn, spec, day, table)
        return table, where, now


def refuse_retype(conn: psycopg.Connection, spec: TableSpec, day: Period, columns: Sequence[Column],
                  recorded: Sequence[dict]) -> None:
    """Raise :class:`ColumnsChangedError` where a column's type changed since the archive in a way a restore into
    the table would not reproduce exactly (see ``fingerprint.inexact_retypes``): the source may not be called equal
    to, or removed on, an archive that a restore refuses to put back into it, however equal the fingerprints."""
    if changed := fingerprint.inexact_retypes(conn, columns, recorded):
        raise ColumnsChangedError(
            f"{spec.name} {day}: a column's type changed since the day was archived, and the archived values would "
            f"not read back into it as its values are now ({'; '.join(changed)}): a value's archived text is not "
            "what the column holds now (an inet's '10.0.0.1' for the text '10.0.0.1/32', a boolean's 't' for "
            "'true'), or reads as another number that prints alike (a binary float), so a restore into the table "
            "is refused and the archive no longer proves the rows", table=spec.name, day=day.isoformat(),
            retryable=False,
            remedy="archive the day again (overwrite) if the new type is right; the previous archive stays until "
                   "the new one is complete")


def _columns_unchanged(conn: psycopg.Connection, spec: TableSpec, day: Period, table: SourceTable) -> None:
    """Raise :class:`ColumnsChangedError` if the table's columns are no longer those it was described with.

    Asked after the fingerprint, whose scan holds the table until the transaction ends: the columns it
    hashed are those of the description before it, and a column added (and filled) in between would
    otherwise be left out, and the source called equal to an archive that lacks it. (Under REPEATABLE
    READ both descriptions and the rows are of one snapshot, which is consistent by itself.)"""
    again = source_table(conn, spec, day)
    if [(c.name, c.type_name) for c in again.columns] != [(c.name, c.type_name) for c in table.columns]:
        raise ColumnsChangedError(
            f"{spec.name} {day}: the source's columns changed while it was being compared: "
            f"{[c.name for c in table.columns]} became {[c.name for c in again.columns]}",
            table=spec.name, day=day.isoformat(), retryable=True,
            remedy="compare again; if the new columns are right, archive the day again (overwrite)")


def columns_moved(now: Sequence[str], archived: Sequence[str]) -> str:
    """The words compare, list --check-source, verify, the removal and an archive run of a removed day use for a
    table whose column names (``now``) are no longer an archive's (``archived``): one change, said one way."""
    return (f"the source's columns are now {names_brief(now)}, the archive's {names_brief(archived)} (renamed, "
            "added, dropped or reordered since it was archived)")


def archived_order(spec: TableSpec, day: Period, table: SourceTable, names: Sequence[str] | None) -> Sequence[Column]:
    """``table``'s columns as the archive with column ``names`` recorded them (see
    :func:`~archive_pipeline.core.source.columns_as_archived`)."""
    if names is None:
        return table.columns
    columns = columns_as_archived(table.columns, names)
    if columns is None:
        raise ColumnsChangedError(
            f"{spec.name} {day}: {columns_moved([c.name for c in table.columns], names)}, so its rows are not the "
            "archive's",
            table=spec.name, day=day.isoformat(), retryable=False,
            remedy="archive the day again (overwrite) if the new columns are right; the previous archive stays "
                   "until the new one is complete")
    return columns


@speaks_utf8()
@names_database_errors
def source_changed(conn: psycopg.Connection, spec: TableSpec, day: Period | dt.date, manifest: dict) -> str | None:
    """Why the source's day no longer equals its archive, or None if it does. A database error (a lost
    session, a lock_timeout or statement_timeout, a privilege refused) is no answer either way: an
    :class:`ArchiveError` naming table, day, cause and remedy, retryable where a retry can help."""
    day = spec.period(day)
    try:
        return _source_changed(conn, spec, day, manifest)
    except ArchiveError as exc:  # discovery's: the table gone or unreadable (a privilege), named for the day
        named(exc, spec.name, day.isoformat(), conn.info.password)
        raise
    except psycopg.Error as exc:
        raise wrapped(exc, conn, spec, day.isoformat(), doing="comparing") from None


def read_only(conn: psycopg.Connection) -> bool:
    """Whether ``conn`` can create no table, not even a temporary one: a hot standby, or a session whose transactions
    are read-only (``default_transaction_read_only``: a logical replica's role, a read-only pooler); deep
    verification then loads the archive elsewhere (the primary)."""
    return conn.execute("SELECT pg_catalog.pg_is_in_recovery() OR "
                        "pg_catalog.current_setting('transaction_read_only')::boolean").fetchone()[0]


def _nowhere_to_load(conn: psycopg.Connection, spec: TableSpec, day: Period) -> ArchiveError:
    """The refusal of a deep verification whose one connection creates no temporary table: a hot standby (a writable
    database is needed), or a primary's read-only session (default_transaction_read_only, which can be turned off)."""
    said = f"deep verification of {spec.name} {day} reads the archive back into PostgreSQL, and "
    if conn.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone()[0]:
        return ArchiveError(said + "a hot standby allows no temporary tables", table=spec.name, day=day.isoformat(),
                            retryable=False, remedy="give it a writable database with the same column types to load "
                            "them into (scratch_conn; the command line and the code location use the primary, "
                            "ARCHIVE_PG_PRIMARY_DSN, when it is set)")
    role = sql_name(conn.info.user, qualified=False)  # (a role's settings are the login role's)
    return ArchiveError(said + "the session is read-only (default_transaction_read_only is on for the role, the "
                        "database or the connection), which allows no temporary tables", table=spec.name,
                        day=day.isoformat(), retryable=False,
                        remedy=f"turn default_transaction_read_only off for the role and database (ALTER ROLE {role} "
                               "RESET default_transaction_read_only; ALTER DATABASE ... RESET "
                               "default_transaction_read_only) or in the connection's options, or give it a writable "
                               "database to load the archive into (scratch_conn)")


@names_database_errors
def rows_after_removal(conn: psycopg.Connection, spec: TableSpec, day: Period | dt.date) -> int:
    """How many rows the source holds now for a day retention removed: rows that arrived later (into a
    DEFAULT partition, a re-created child or the table itself) are in no archive. 0 when the day's table
    is gone (naming mode). Errors as :func:`source_changed`'s."""
    day = spec.period(day)
    try:
        with conn.transaction():
            table = source_table(conn, spec, day)
            return fingerprint.compute(conn, table.identifier, [], day_filter(table, day)).rows
    except ArchiveError as exc:
        if getattr(exc, "cause", None) == NO_PERIOD_TABLE:
            return 0
        named(exc, spec.name, day.isoformat(), conn.info.password)
        raise
    except psycopg.Error as exc:
        raise wrapped(exc, conn, spec, day.isoformat(), doing="comparing") from None


def _source_changed(conn: psycopg.Connection, spec: TableSpec, day: Period, manifest: dict) -> str | None:
    """:func:`source_changed`, letting a database error through (a proof wraps it as its own). A hot standby behind
    the archive (its replay paused, or lagging: see source.Replay.stale) gives no difference: a retryable
    :class:`SourceError`, as an archive run refuses it (its day read as it was, called changed, was overwritten)."""
    recorded = manifest.get("fingerprint")
    if (unknown := fingerprint.why_uncomputable(recorded)) is not None:
        return f"{unknown[0]}: {unknown[1]} to prove it"
    difference = _difference(conn, spec, day, manifest, recorded)
    if difference is not None:
        refuse_stale_standby(conn, spec.name, day.isoformat(), manifest, outcome="nothing is known to have changed",
                             instead="compare on the primary")
    return difference


def _difference(conn: psycopg.Connection, spec: TableSpec, day: Period, manifest: dict, recorded: str) -> str | None:
    """How the source's day differs from the archive's ``recorded`` fingerprint now, or None."""
    # A day archived without rows has no values a column could differ in: while the source has none
    # either, its columns (one added by a migration since) are not a change (as compare and re-runs see it).
    names = None if manifest.get("rows") == 0 else [c["name"] for c in manifest["columns"]]
    try:
        now = source_fingerprint(conn, spec, day, fingerprint.algorithm_for(recorded), names,
                                 manifest["columns"] if names is not None else ())
    except ColumnsChangedError as exc:
        return source_columns_changed(exc)
    except ArchiveError as exc:
        if getattr(exc, "cause", None) != NO_PERIOD_TABLE:
            raise
        rows = int(manifest.get("rows") or 0)  # (a day archived without rows is still what the source has)
        return f"{TABLE_GONE}; the archive holds {rows:,} rows" if rows else None
    if str(now) == recorded:
        return None
    then = fingerprint.Fingerprint.parse(recorded)
    if then.rows != now.rows:
        return f"the source has {now.rows:,} rows for {day} now, the archive {then.rows:,}"
    return f"the source's {now.rows:,} rows for {day} differ in content from the archive's (fingerprint {now} vs {then})"


@speaks_utf8("conn", "scratch_conn")
def deep_verify(conn: psycopg.Connection, store: S3Store, spec: TableSpec, day: Period | dt.date, *,
                manifest: dict | None = None, scratch_conn: psycopg.Connection | None = None,
                temp_dir: str | None = None) -> list[str]:
    """Prove the archive of ``day`` holds exactly the source's rows; an empty list means proven (see
    :func:`deep_verify_of`, which also says which archive was proven)."""
    return deep_verify_of(conn, store, spec, day, manifest=manifest, scratch_conn=scratch_conn, temp_dir=temp_dir)[0]


@speaks_utf8("conn", "scratch_conn")
@names_database_errors
def deep_verify_of(conn: psycopg.Connection, store: S3Store, spec: TableSpec, day: Period | dt.date, *,
                   manifest: dict | None = None, scratch_conn: psycopg.Connection | None = None,
                   temp_dir: str | None = None) -> tuple[list[str], dict | None]:
    """Prove the archive of ``day`` holds exactly the source's rows: (the problems, empty when proven; the manifest
    of the archive the verdict is about: another than ``manifest`` where an overwrite replaced it meanwhile).

    Checks, in order: the manifest (present, untampered, with a fingerprint), the object (size,
    MD5, SHA-256 of the downloaded bytes), the archived rows (loaded back, their fingerprint equal
    to the manifest's) and the source (its fingerprint now equal to the archive's; a day removed
    from the source by retention, or marked as being removed, with no rows in the source, is proven
    by its archive alone; where this version cannot compute its fingerprint, by its object alone:
    :func:`removed_object_problems`, its note :func:`rows_unproven`). A mismatch
    names the first differing row. ``scratch_conn`` (a writable database with the same column
    types) receives the archived rows when the source cannot (a hot standby); by default they go to
    a temporary table on ``conn``. A database error of any of its sessions (terminated, timed out, a
    privilege refused) proves nothing either way: it raises a :class:`SourceError` naming table,
    day, cause and remedy, retryable where a retry can help.
    """
    day = spec.period(day)
    key = keys.table_day_key(spec, day, store.prefix)
    owner = (spec.name, day.isoformat())
    try:
        if manifest is None:
            manifest, problems = _manifest_or_problem(store, key, f"{spec.name} {day} has no archive at "
                                                      f"{store.uri(key)}", owner)
            if manifest is None:
                return problems, None
        _refuse_layout_change(spec, day, manifest)
        _refuse_pending_detach(conn, spec, day)
        with pinned_settings(scratch_conn or conn, search_path=CATALOG_FIRST):  # the manifest's type names as written
            problems = _prove(conn, store, spec, day, manifest, scratch_conn, temp_dir)
        if problems and (current := _committed_since(store, spec, day, key, manifest, conn)) is not None:
            # An overwrite that committed meanwhile retires the object being proven: "missing" (or rows that
            # are no longer the source's) would then be a verdict on an archive that is no longer the day's.
            # The current one is proven instead.
            log.info("%s %s: its archive was replaced while it was being proven; proving the new one", spec.name, day)
            with pinned_settings(scratch_conn or conn, search_path=CATALOG_FIRST):
                return _prove(conn, store, spec, day, current, scratch_conn, temp_dir), current
        return problems, manifest
    except psycopg.Error as exc:  # a session of the proof failed (terminated, timed out, refused): no verdict
        raise wrapped(exc, conn, spec, day.isoformat(), doing="proving") from None
    except ArchiveError as exc:  # the store's (a download that failed): no verdict either, and it names the day
        named(exc, spec.name, day.isoformat())
        raise
    except Exception as exc:
        # a local fault (memory, a thread, open files; Arrow's and zstd's words for them): no verdict, and it names
        # the day with its cause and remedy (errors.classify), where it went out bare ("a bug in archive_pipeline")
        if isinstance(exc, MemoryError | RuntimeError | OSError) or \
                (type(exc).__module__ or "").startswith(("pyarrow", "zstandard")):
            raise wrap(exc, spec.name, day.isoformat(), conn.info.password, doing="proving",
                       temp_dir=temp_dir_given(temp_dir) or temp_dir_named()) \
                from None
        raise
    except BaseException as exc:  # cancelled: the proof's temporary table and download go with it
        note_cancelled(exc, spec.name, day.isoformat(), "proving")
        raise


def removed_object_problems(store: S3Store, spec: TableSpec, day: Period, manifest: dict, *, key: str | None = None,
                            temp_dir: str | None = None) -> list[str]:
    """The check of the archive of a day the source no longer holds (removed, none of its rows back: the archive is
    its only copy) whose fingerprint this version cannot compute (fingerprint.why_uncomputable: an older version's
    retired algorithm, none recorded, a newer version's): its object, downloaded, as settling a removal mark checks it
    (size, MD5, SHA-256 and row count as recorded). The proof's own answer, "archive the day again", cannot be done
    (the source holds nothing of it: archive says no-data, and the next proof failed alike, every night) and is no
    damage; what this leaves unproven is said by :func:`rows_unproven`. One check for the removal, verify --deep and
    the deep_check asset check, so none calls the day failed where another finds it removed already. ``key``: the
    day's data key the manifest was read at, whose own it must be (manifest.owned); without it, the caller's read of
    the manifest as the day's stands (a proof's manifest: see :func:`deep_verify_of`)."""
    return verify_archive(store, key or keys.table_day_key(spec, day, store.prefix), {}, deep=True,
                          owner=(spec.name, day.isoformat()) if key else None, temp_dir=temp_dir, manifest=manifest)


def rows_unproven(manifest: dict | None) -> str | None:
    """What a passed check of ``manifest``'s archive did not prove, where it checked its object alone (a removed day
    whose fingerprint this version cannot compute: :func:`removed_object_problems`), in the words every verdict on it
    gives (the removal's archive_proven, archive_intact, verify --deep's note); None where its rows were proven (or
    it has none: an empty day's manifest is all there is)."""
    manifest = manifest or {}
    unknown = fingerprint.why_uncomputable(manifest.get("fingerprint"))
    if unknown is None or not manifest.get("removed") or manifest.get("empty"):
        return None
    return ("its archive's object checks out (downloaded now: size, MD5 and SHA-256 as recorded); its rows are not "
            f"proven by this version: {unknown[0]}")


def _committed_since(store: S3Store, spec: TableSpec, day: Period, key: str, manifest: dict,
                     conn: psycopg.Connection) -> dict | None:
    """The day's current archive where it is another than ``manifest`` and no older (an overwrite or a removal mark
    committed while ``manifest`` was being proven; a pending mark completed has the same time), else None. Chosen
    as the run, restore, list and compare choose it (manifest.day_archive), not read at the rendered ``key`` alone:
    after a format changed and changed back, that is a superseded archive, which, proven in the current one's
    place, made ``verify --deep`` pass a day whose current archive differs from the source. A manifest that fails
    its checks: None (the problems found stand)."""
    with contextlib.suppress(ManifestError):
        _, current = day_archive(store, spec, day, key, load_manifest(store, key, (spec.name, day.isoformat())),
                                 identity=functools.partial(source_identity, conn))  # (the proof's source)
        if current is not None and current.get("manifest_sha256") != manifest.get("manifest_sha256") \
                and committed_at(current) >= committed_at(manifest):
            return current
    return None


def _refuse_layout_change(spec: TableSpec, day: Period, manifest: dict) -> None:
    """No verdict where the table's zone, granularity or day column changed since the day was archived (and it is
    still in the source): the source's day is other rows than the archive's, which the proof would call "not the
    archive's" (and advise a backup): an :class:`ArchiveError` saying what changed, ended by an overwrite."""
    if manifest.get("removed"):  # (a removed day is proven by its archive alone)
        return
    if (change := layout_change(manifest, day, spec.day_column)) is not None:
        raise ArchiveError(f"{spec.name} {day}: {change}, so its archive cannot be proven against the source as the "
                           "table is now configured (no verdict on the archive)", table=spec.name, day=day.isoformat(),
                           retryable=False, needs_overwrite=True,
                           remedy="archive the day again with overwrite as the table is now configured, or configure "
                                  "the table as it was when the day was archived")


def _refuse_pending_detach(conn: psycopg.Connection, spec: TableSpec, day: Period) -> None:
    """No verdict where a partition that may hold the day is pending detach: the table no longer reads its rows,
    still in PostgreSQL, so the proof called them lost ("0 rows against 5") and the advice was to restore rows never
    lost. The day is not checked (retryable), naming the partition and the FINALIZE, as compare and the archive run
    say it (discovery.pending_detach_days)."""
    if (pending := pending_detach_days(conn, spec, [day]).get(day)) is not None:
        raise pending


def _prove(conn: psycopg.Connection, store: S3Store, spec: TableSpec, day: Period, manifest: dict,
           scratch_conn: psycopg.Connection | None, temp_dir: str | None) -> list[str]:
    """deep_verify of the archive ``manifest`` describes. A day whose naming-mode day table retention detached, and
    which is still detached, is a removed day (discovery.still_detached, as list, compare and prune decide it): its
    table keeps the rows, but they are no longer the source's, so its archive, their only copy as the source goes, is
    proven by itself, as a removed day's whose rows are gone, never against that table."""
    detached = still_detached(conn, spec, day, manifest)
    if (unknown := fingerprint.why_uncomputable(manifest.get("fingerprint"))) is not None:
        if removal_state(manifest) in ("done", "pending") and (detached or rows_after_removal(conn, spec, day) == 0):
            # the day's only copy: "archive it again" would find nothing to archive (see removed_object_problems)
            return removed_object_problems(store, spec, day, manifest, temp_dir=temp_dir)
        # (an older version's remedy archives again, a newer one's upgrades: fingerprint.why_uncomputable's words)
        return [Problem(f"{unknown[0]}: {unknown[1]} to prove it", NEWER if unknown[1].startswith("upgrade") else OLDER)]
    if manifest.get("empty"):  # nothing to load: what differs is the source (rows arrived since)
        changed = _source_changed(conn, spec, day, manifest)  # (a change of columns carries its own remedy)
        return [Problem(changed, SOURCE, getattr(changed, "remedy", ""))] if changed else []
    if scratch_conn is None:
        if read_only(conn):
            raise _nowhere_to_load(conn, spec, day)
        scratch_conn = conn
    algorithm = fingerprint.algorithm_for(manifest["fingerprint"])
    # The archive against the manifest: by the manifest's algorithm. The archive against the source: by the
    # strongest, whatever the manifest records: both sides are at hand, and a manifest resealed with an older
    # algorithm's fingerprint of the source (v2 cannot see a bpchar's trailing blanks) proved an archive that
    # lost them, and the source was removed.
    with _proof_file(manifest, temp_dir) as sink, contextlib.nullcontext() if detached else _SourceFingerprint(
            conn, scratch_conn, spec, day, fingerprint.ALGORITHM, [c["name"] for c in manifest["columns"]],
            manifest["columns"]) as source:
        problems = _download(store, manifest, sink)
        if problems:
            return problems
        temp = None
        try:
            from archive_pipeline.core.restore import TypeMissingError

            try:
                with scratch_conn.transaction():
                    if algorithm not in fingerprint.CHAINED:
                        temp, columns = _temp_table(scratch_conn, manifest)
                    elif manifest["format"] == "csv":
                        temp, columns = _text_table(scratch_conn, manifest)
                    else:
                        temp, columns = _temp_table(scratch_conn, manifest, _verbatim_parquet_columns(
                            scratch_conn, manifest, str(sink.path)) if manifest["format"] == "parquet" else ())
                    names = relation_printed_names(scratch_conn, temp)  # (see _renamed_meanwhile)
                    _load(scratch_conn, str(sink.path), manifest, temp)
                    loaded = _loaded_fingerprint(scratch_conn, manifest, temp, columns)
            except NameGone as exc:  # (the CSV path loads such values as text, and finds the difference so)
                return [f"the source's rows for {day} are not the archive's: {exc}"]
            except TypeMissingError as exc:  # a type renamed or dropped since: no verdict, and no restore's error
                scratch = scratch_conn is not conn
                removed = bool(manifest.get("removed"))  # (its rows are gone from the source: nothing to archive)
                raise ArchiveError(_type_missing(exc, scratch), table=manifest.get("table"),
                                   day=manifest.get("day"), retryable=False, cause=TYPE_GONE,
                                   remedy=_type_missing_remedy(exc, scratch, removed),
                                   needs_overwrite=not removed) from None
            except ArchiveError as exc:  # an object that matched its MD5 but does not decode as recorded: altered
                if not isinstance(exc.__cause__, readers.ArchiveDecodeError) and \
                        not getattr(exc.__cause__, "not_json", False):
                    raise
                return [f"the archive {manifest['object']['uri']} matches its manifest's size and MD5 but does not "
                        f"decode as the manifest records ({exc.__cause__}): it was altered (and its manifest with it) "
                        "or written wrong; its rows are NOT proven the source's"]
            # Committed before the wait for the source's fingerprint, which often takes longer than the load:
            # waiting inside the transaction, the session would sit idle in it, and the role's or the
            # code location's idle_in_transaction_session_timeout end it (and with it every retry's proof).
            # The temporary table lives on in the session, for naming the first difference, and is dropped
            # below (or with the session, however the process ends).
            loaded_now = loaded if algorithm == fingerprint.ALGORITHM else \
                _loaded_fingerprint(scratch_conn, manifest, temp, columns, fingerprint.ALGORITHM)
            problems = _compare(conn, scratch_conn, day, manifest, temp, columns, source, loaded, loaded_now)
            if problems:
                _renamed_meanwhile(scratch_conn, manifest, names)
            if source_side_only(problems):  # the archive is intact: a standby behind it read the day as it was
                refuse_stale_standby(conn, spec.name, day.isoformat(), manifest,
                                     outcome="no verdict on the archive", instead="prove it on the primary")
            return problems
        finally:
            if temp is not None:
                _drop_quietly(scratch_conn, temp)


def _renamed_meanwhile(conn: psycopg.Connection, manifest: dict, names: PrintedNames) -> None:
    """Raise (retryable, no verdict) if a name the loaded values print was renamed while the proof ran: an enum
    label (ALTER TYPE ... RENAME VALUE takes no lock a proof holds) or an object a reg* value names. The values
    loaded before it print the new name from the catalog, so the archive's rows seemed altered, and the source's
    seemed not the archive's, where only the catalog's words for them changed."""
    changed = printed_names_changed(conn, names)
    if changed:
        raise ArchiveError(f"{' and '.join(changed)} of the types {manifest.get('table')}'s archived rows were loaded "
                           f"into was changed while its day {manifest.get('day')} was proven, so its rows printed other "
                           "names than when they were read: no verdict on the archive",
                           table=manifest.get("table"), day=manifest.get("day"), retryable=True,
                           cause="a name the day's values print was renamed during the proof",
                           remedy="prove the day again (a retry reads the names as they are then); rename enum labels "
                                  "and the objects reg* columns name outside the table's proofs")


# The caller's limits on its session, which PostgresResource and the command line set after connecting
# (not in the connection string): the proof's second session keeps to them too, so a lock held on the
# table ends its wait after lock_timeout, as it ends the removal's, instead of never; and it reads the
# table's types as the caller's does (session_settings.SESSION_PINNED).
# what the second session takes over from the caller's: its limits, its pinned settings, and its search_path (a
# regclass value prints its name as the path finds it: the fingerprint must print it as the caller's session does)
_LIMITS = ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout", "search_path", *SESSION_PINNED)


def _limits_of(conn: psycopg.Connection) -> dict[str, str]:
    """``conn``'s current :data:`_LIMITS`."""
    values = conn.execute(sql.SQL("SELECT {}").format(sql.SQL(", ").join(
        sql.SQL("pg_catalog.current_setting({})").format(sql.Literal(name)) for name in _LIMITS))).fetchone()
    return dict(zip(_LIMITS, values, strict=True))


class _SourceFingerprint:
    """The source's fingerprint of the day, computed in another thread while the archive downloads
    and loads (on ``conn`` itself when the rows load elsewhere, else on a second session), so the
    proof costs the longer of the two instead of their sum. Where no second session can be opened
    (e.g. a connection limit), it is computed when asked for. Leaving the block early cancels it."""

    def __init__(self, conn: psycopg.Connection, scratch: psycopg.Connection, spec: TableSpec, day: Period,
                 algorithm: str, names: Sequence[str], recorded: Sequence[dict] = ()) -> None:
        self.conn, self.scratch, self.spec, self.day, self.algorithm = conn, scratch, spec, day, algorithm
        self.names = names
        self.recorded = recorded
        self.side: psycopg.Connection | None = None
        self.thread: threading.Thread | None = None
        self.outcome: tuple | BaseException | None = None

    def __enter__(self) -> _SourceFingerprint:
        worker = self.conn
        if self.scratch is self.conn:
            limits = _limits_of(self.conn)
            try:
                worker = self.side = psycopg.connect(dsn_of(self.conn), autocommit=True)
            except psycopg.OperationalError:
                return self  # no second session: computed on conn when asked for
            try:
                apply_settings(self.side.execute, limits, local=False)
                act_as(self.side.execute, switched_role(self.conn))  # as the caller's role (its SET ROLE)
                # as the caller's session: killed mid-fingerprint, the server notices and ends it (no scan for nobody)
                set_session(self.side, session_pinned(self.side))
                watch_client(self.side)
            except BaseException:
                self.side.close()
                raise
        self.thread = threading.Thread(target=self._compute, args=(worker,), name="verify-source", daemon=True)
        self.thread.start()
        return self

    def _compute(self, conn: psycopg.Connection) -> None:
        try:
            self.outcome = self.compute(conn)
        except BaseException as exc:  # noqa: BLE001 - raised by result() in the caller's thread
            self.outcome = exc

    def compute(self, conn: psycopg.Connection) -> tuple[SourceTable, sql.Composable, fingerprint.Fingerprint]:
        return _fingerprint_now(conn, self.spec, self.day, self.algorithm, self.names, self.recorded)

    def result(self) -> tuple[SourceTable, sql.Composable, fingerprint.Fingerprint]:
        if self.thread is None:
            return self.compute(self.conn)
        self.thread.join()
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    def __exit__(self, *exc_info) -> None:
        if self.thread is not None and self.thread.is_alive():
            with contextlib.suppress(Exception):
                (self.side or self.conn).cancel_safe()
            self.thread.join()
        if self.side is not None:
            self.side.close()


def _types_changed(conn: psycopg.Connection, manifest: dict, target: sql.Composable) -> list[str]:
    """How the composites inside ``target``'s columns differ from those the manifest recorded (see
    :func:`~archive_pipeline.core.source.shape_changes`); empty where they do not, or cannot be read."""
    try:
        with conn.transaction():
            return shape_changes(manifest.get("columns", []), relation_shapes(conn, target.as_string(conn)))
    except psycopg.Error:
        return []


_SOURCE_SIDE = ("the source's rows for ", "first difference: ", "first difference not named: ")

# A problem's kinds (see :func:`problem_kind`): what its remedy follows.
NEWER, OLDER, FOREIGN, OTHER_PERIOD = "newer", "older", "foreign", "other-period"  # intact, not this version's or day's
NOT_CHECKED, INEXACT, SOURCE, UNREADABLE, DAMAGE = "not-checked", "inexact", "source", "unreadable", "damage"


class Problem(str):
    """A check's problem: its text as said, with its kind where its maker knew it and its start does not tell it
    (a manifest unreadable for a cause its key precedes in the text, an older version's fingerprint), and the remedy
    its cause gave (``remedy``, "" where none). A remedy is chosen by kind, never by words inside a problem's text,
    which may quote a row, a key or a table's name ("not checked" in a late row steered verify's advice)."""

    kind: str
    remedy: str

    def __new__(cls, text: str, kind: str = "", remedy: str = "") -> Problem:
        made = super().__new__(cls, text)
        made.kind, made.remedy = kind, remedy
        return made


def problem_kind(problem: str) -> str:
    """What kind of problem ``problem`` is: the kind it carries (:class:`Problem`), else told by its start, as
    every maker of one begins it ("not checked (...)", the source's rows and first difference), else damage. One
    rule for the command line's and the Dagster layer's remedies."""
    if kind := getattr(problem, "kind", ""):
        return kind
    if problem.startswith("not checked"):
        return NOT_CHECKED
    return SOURCE if problem.startswith(_SOURCE_SIDE) else DAMAGE


def columns_change(exc: ColumnsChangedError) -> Problem:
    """What a source whose columns (or a type inside them) are not the archive's means, for every check that
    compares the two (verify --deep, compare, list --check-source): changed since the day was archived, the
    source's problem (kind SOURCE, with the cause's own remedy: archive again with overwrite if the new columns are
    right), never the archive's damage; changed while they were being compared (retryable: a migration committed
    mid-check), no verdict either way: kind NOT_CHECKED, "not checked (retryable): ...", to be checked again (one
    called "differs" or "changed" was a race taken for a difference)."""
    if exc.retryable:
        return Problem(f"not checked (retryable): {exc}", NOT_CHECKED, exc.remedy or "")
    return Problem(str(exc), SOURCE, exc.remedy or "")


def source_columns_changed(exc: ColumnsChangedError) -> Problem:
    """The problem of a proof whose source's columns are not the archive's (:func:`columns_change`): the source's,
    never the archive's damage, which sent an intact archive's owner to a backup of the bucket. One whose columns
    changed while they were being compared is raised, as every retryable error of a proof is (its callers make the
    day not checked)."""
    if exc.retryable:
        raise exc
    return columns_change(exc)


def unreadable_manifest(text: str, exc: BaseException) -> Problem:
    """The problem of a manifest that could not be read (``text`` names it and says ``exc``), of ``exc``'s kind: a
    newer version's, another table-day's, or damaged."""
    kind = NEWER if isinstance(exc, NewerManifestError) else FOREIGN if isinstance(exc, ForeignManifestError) \
        else UNREADABLE
    return Problem(text, kind, getattr(exc, "remedy", "") or "")


def source_side_only(problems: list[str]) -> bool:
    """Whether a deep verification's problems are all the source's: its rows against the archive's, which were
    loaded and found to be the ones recorded (an archive-side problem, damage or rows not the recorded ones, is
    said apart and first)."""
    first = problems[0] if problems else ""
    return bool(problems) and (first.startswith(_SOURCE_SIDE[0]) or getattr(first, "kind", "") == SOURCE) and \
        all(problem_kind(p) == SOURCE for p in problems)


class NameGone(Exception):
    """A reg* value of the archive names an object that no longer exists: the archive matched its digests and
    cannot be loaded into its types here; the source's value (printed as a bare OID now) is not the archive's."""


def _load(conn: psycopg.Connection, path: str, manifest: dict, target: sql.Composable) -> None:
    from archive_pipeline.core.restore import ArchiveCorruptError, load_into  # the read path, imported here

    changes = _types_changed(conn, manifest, target)  # before loading: values read into other fields prove nothing
    if changes:  # not the archive's doing: the types it is loaded into are not those it was archived with
        raise ColumnsChangedError(
            f"the archive {manifest['object']['uri']} does not load into its columns' types now: a type inside "
            f"them changed since the day was archived: {'; '.join(changes)}", table=manifest.get("table"),
            day=manifest.get("day"), retryable=False,
            remedy="put the type back as it was (ALTER TYPE) to prove the day, or archive the day again "
                   "(overwrite) if the source still holds it")
    try:
        load_into(conn, path, manifest, target)
    except ArchiveCorruptError as exc:
        if getattr(exc.__cause__, "not_json", False):  # its lines are no JSON objects: altered, a verdict (see _prove)
            raise
        said = getattr(getattr(exc.__cause__, "diag", None), "message_primary", None) or ""
        if isinstance(exc.__cause__, _NOT_ITS_LAYOUT):  # the file's, not a value's: no type of the user's refused it
            where = (exc.__cause__.diag.context or "").split("\n", 1)[0]  # (COPY's line, less the header line)
            if manifest.get("format") == "csv":  # COPY counts from the first data row (see _object_line)
                where = _object_line(where, manifest)
            said = f"{said} ({where})" if where else said
            raise ArchiveError(f"the archive {manifest['object']['uri']} is not {manifest['format']} as this version "
                               f"reads it: {said}", table=manifest.get("table"), day=manifest.get("day"),
                               retryable=False) from readers.ArchiveDecodeError(said)
        if isinstance(exc.__cause__, psycopg.DataError) and _BUILT_IN_FIELD.search(said):
            # an integer or uuid field that is none: no type of the user's refuses it, the archive holds it (altered)
            raise ArchiveError(f"the archive {manifest['object']['uri']} holds a field that is no value of its "
                               f"built-in type: {said}", table=manifest.get("table"), day=manifest.get("day"),
                               retryable=False) from readers.ArchiveDecodeError(said)
        if isinstance(exc.__cause__, (psycopg.DataError, psycopg.IntegrityError)) and \
                not isinstance(exc.__cause__, psycopg.errors.UntranslatableCharacter):
            # the object matched its manifest's MD5 on the way down: a value this database's types refuse (an enum
            # without the label, a range's collation, a domain's constraint) is no damage of the archive
            raise ArchiveError(f"the archive {manifest['object']['uri']}, which matches its manifest (MD5), holds a "
                               f"value the types of database {conn.info.dbname!r} refuse ({exc.__cause__}), so it "
                               "cannot be loaded there to be proven (no verdict on the archive)",
                               table=manifest.get("table"), day=manifest.get("day"), retryable=False,
                               remedy="prove the day in a database whose types are as they were when it was "
                                      "archived (scratch_conn; ARCHIVE_PG_PRIMARY_DSN for the command line), or "
                                      "make this one's types hold the value (ALTER TYPE ... ADD VALUE, the "
                                      "collation)") from None
        if not isinstance(exc.__cause__, psycopg.errors.UntranslatableCharacter):
            raise
        encoding = conn.info.parameter_status("server_encoding")
        raise ArchiveError(f"the archive {manifest['object']['uri']} holds a character the encoding of database "
                           f"{conn.info.dbname!r}, {encoding}, lacks ({exc.__cause__}), so it cannot be loaded there "
                           "to be proven (no verdict on the archive)", table=manifest.get("table"),
                           day=manifest.get("day"), retryable=False,
                           remedy="prove the day in a database whose encoding holds every archived value (UTF8): "
                                  "the scratch database (scratch_conn; ARCHIVE_PG_PRIMARY_DSN for the command "
                                  "line)") from None
    except (psycopg.Error, ValueError, pa.ArrowInvalid, OSError) as exc:
        from archive_pipeline.core.restore import gone_by_name, name_gone_cause

        if gone := gone_by_name(exc, manifest):  # the source's side: what a value names was dropped since
            raise NameGone(name_gone_cause(gone, exc)) from None
        # Only a value (22xxx: bad input, too long, out of range) or a constraint of the recorded types (23xxx: a
        # domain's CHECK, NOT NULL) is the archive's doing; anything else is the server's or the session's (terminated,
        # timed out, disk full, out of memory, a privilege): no verdict on the archive either way.
        if isinstance(exc, psycopg.Error) and not isinstance(exc, (psycopg.DataError, psycopg.IntegrityError)):
            raise wrap(exc, manifest.get("table") or "?", manifest.get("day") or "?", conn.info.password,
                       user=lambda: acting_role(conn), login=conn.info.user, database=conn.info.dbname,
                       doing="proving") from None
        raise ArchiveError(f"the archive {manifest['object']['uri']} does not load back into its recorded column "
                           f"types: {type(exc).__name__}: {exc}", table=manifest.get("table"),
                           day=manifest.get("day"), retryable=False) from None


def _object_line(where: str, manifest: dict) -> str:
    """COPY's context ``where`` ("COPY t, line N ...") naming the CSV object's line: COPY counts the lines after the
    header restore reads itself, and the header is as many lines as it holds line feeds (a column name holding one
    is quoted across two: ``formats.csv.header_lines``, whose every spelling holds the same)."""
    header = header_lines([c["name"] for c in manifest["columns"]])[0].count(b"\n")
    return re.sub(r"\bline (\d+)", lambda m: f"line {int(m.group(1)) + header} of the object", where, count=1)


def _drop_quietly(conn: psycopg.Connection, temp: sql.Composable) -> None:
    """Drop the proof's temporary table; one that cannot be (a lost session) goes with its session."""
    if conn.closed or conn.broken or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        return
    with contextlib.suppress(psycopg.Error):
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(temp))


# COPY's refusals of the file itself, not of a value: its structure (22P04: a header, an unterminated quote, a field
# count, a bare CR) or its bytes (22021: not UTF-8). The archive's own (damaged, or a layout this version does not
# read), with the damaged archive's remedy; never "a value the types of the database refuse".
_NOT_ITS_LAYOUT = (psycopg.errors.BadCopyFileFormat, psycopg.errors.CharacterNotInRepertoire)

# PostgreSQL's refusal of a field as an integer or a uuid (the types v6 reads a CSV archive's fields as)
_BUILT_IN_FIELD = re.compile(r"(invalid input syntax for type|is out of range for type) (smallint|integer|bigint|uuid)")


def _loaded_fingerprint(scratch: psycopg.Connection, manifest: dict, temp: sql.Composable,
                        columns: Sequence[Column], algorithm: str | None = None) -> fingerprint.Fingerprint:
    """The fingerprint of the archive's rows as loaded into ``temp``, by the manifest's algorithm (or
    ``algorithm``)."""
    recorded = fingerprint.Fingerprint.parse(manifest["fingerprint"])
    try:  # a CSV field read as its column's type now (see _text_table) may no longer be one
        return fingerprint.compute(scratch, temp, columns, algorithm=algorithm or recorded.algorithm)
    except (psycopg.DataError, psycopg.IntegrityError) as exc:
        said = (exc.diag.message_primary or "") if isinstance(exc, psycopg.Error) else ""
        if any(getattr(c, "parsed_by_v6_only", False) for c in columns) and _BUILT_IN_FIELD.search(said):
            # an integer or uuid field that is none: no type of the user's changed, the archive holds it (altered)
            raise ArchiveError(f"the archive {manifest['object']['uri']} holds a field that is no value of its "
                               f"built-in type: {said}", table=manifest.get("table"), day=manifest.get("day"),
                               retryable=False) from readers.ArchiveDecodeError(said)
        raise ArchiveError(f"the archive {manifest['object']['uri']} does not read back as its columns' types now: "
                           f"{type(exc).__name__}: {str(exc).strip()}", table=manifest.get("table"),
                           day=manifest.get("day"), retryable=False,
                           remedy="a type or domain of the table changed since the day was archived (an attribute "
                           "added, a constraint tightened): put it back to prove the day, or archive the day again "
                           "(overwrite) if the source still holds it") from None


def _compare(conn: psycopg.Connection, scratch: psycopg.Connection, day: dt.date, manifest: dict,
             temp: sql.Composable, columns: Sequence[Column], source: _SourceFingerprint | None,
             loaded: fingerprint.Fingerprint, loaded_now: fingerprint.Fingerprint) -> list[str]:
    """What differs: the loaded rows against the manifest (``loaded``, by its algorithm), the source against the
    loaded rows (``loaded_now``, by the source's: the strongest); no ``source`` for a day whose day table retention
    detached (see :func:`_prove`): the archive alone."""
    recorded = fingerprint.Fingerprint.parse(manifest["fingerprint"])
    problems = []
    from archive_pipeline.core.restore import rows_outside_period  # (restore's, as the load)

    try:
        outside = rows_outside_period(scratch, temp, manifest)
    except psycopg.DataError:
        outside = 0  # (a value that does not read as its type: the fingerprints tell)
    if outside:  # the rows of another period: the archive is not this day's, whatever its manifest says
        problems.append(f"{outside:,} of the archive's rows have a {manifest.get('day_column')} outside {day}: it "
                        "holds another period's rows (put in this day's place, its manifest altered with it)")
    if loaded != recorded:
        mismatch = fingerprint.encoding_mismatch(manifest["fingerprint"], archived_encoding(conn, manifest),
                                                 scratch.info.parameter_status("server_encoding") or "")
        if mismatch:  # no verdict on the archive: its rows cannot be fingerprinted as archived in this database
            raise ArchiveError(f"deep verification of {manifest.get('table')} {day} loaded the archive into database "
                               f"{scratch.info.dbname!r}: {mismatch}", table=manifest.get("table"),
                               day=manifest.get("day"), retryable=False,
                               remedy="prove it with a scratch database of the archived encoding (scratch_conn; "
                                      "ARCHIVE_PG_PRIMARY_DSN for the command line)")
        from archive_pipeline.core.restore import _inexact_explained  # (the restore's words for the same case)

        lossy, lossy_remedy = _inexact_explained(manifest)
        problems.append(Problem(f"the archive's rows are not the ones recorded: {_fp_difference(loaded, recorded)}"
                                + (f".{lossy} To fix: {lossy_remedy} (archived again as it is, it would fail alike)"
                                   if lossy else ""), INEXACT if lossy else DAMAGE))
    if source is None:  # removed: its day table, detached by retention, is no longer the source
        return problems
    try:
        table, where, now = source.result()
    except ColumnsChangedError as exc:
        if removal_state(manifest) in ("done", "pending") and rows_after_removal(conn, source.spec, day) == 0:
            return problems  # removed, and a column added since: nothing of the day left to compare with
        return [*problems, source_columns_changed(exc)]
    except ArchiveError as exc:
        if getattr(exc, "cause", None) == NO_PERIOD_TABLE and removal_state(manifest) in ("done", "pending"):
            return problems  # its day table dropped by the removal (naming mode): the archive, proven by itself
        raise
    if now.rows == 0 and removal_state(manifest) in ("done", "pending"):
        # removed from the source after it was proven (or being removed: a pending mark the next removal or
        # archive run settles): the archive is the day's only copy, proven by itself
        return problems
    if now != loaded_now:
        problems.append(f"the source's rows for {day} are not the archive's: {_fp_difference(now, loaded_now)}")
        in_order = columns_as_archived(table.columns, [c.name for c in columns]) or table.columns
        in_order = fingerprint.as_archived(conn, in_order, manifest["columns"], now.algorithm)  # (as hashed above)
        try:
            with conn.transaction():  # both row streams in one transaction where conn is the scratch session too
                problems.append(_name_first_difference(conn, table.identifier, in_order, where, scratch, temp,
                                                       columns, now.algorithm))
        except psycopg.Error as exc:
            if conn.closed or scratch.closed:
                raise  # the session itself went: what fails the proof, as anywhere else
            # naming the row sorts the day's row hashes on both sides, which a role's temp_file_limit,
            # statement_timeout or work_mem can refuse: the verdict, reached already, stands without it
            problems.append(f"first difference not named: {type(exc).__name__}: {str(exc).strip()}")
    return problems


def _fp_difference(a: fingerprint.Fingerprint, b: fingerprint.Fingerprint) -> str:
    if a.rows != b.rows:
        return f"{a.rows:,} rows against {b.rows:,}"
    return f"the same {a.rows:,} rows in number but other content (fingerprint {a} against {b})"


def _name_first_difference(conn, relation, rel_columns, where, scratch, temp, temp_columns, algorithm: str) -> str:
    found = fingerprint.first_difference(
        fingerprint.row_hashes(conn, relation, rel_columns, where, algorithm=algorithm),
        fingerprint.row_hashes(scratch, temp, temp_columns, algorithm=algorithm))
    if found is None:
        return "no single row differs (the row hashes agree; the difference is in the recorded fingerprint)"
    side, value = found
    rel, cols, db, filt = (relation, rel_columns, conn, where) if side == "left" else (temp, temp_columns, scratch, None)
    # ROW(r.*): a bare r would be a column of that name, where the table has one
    query = sql.SQL("SELECT ROW(r.*)::text FROM {rel} AS r WHERE {where} AND {h} = %s LIMIT 1").format(
        rel=rel, where=filt if filt is not None else sql.SQL("TRUE"),
        h=fingerprint.row_hash(cols, "r", algorithm, fingerprint.server_encoding(db)))
    with fingerprint.canonical_settings(db):
        row = db.execute(with_params(query, db), (value,)).fetchone()
    text = row[0] if row else "?"
    if len(text) > 300:
        text = text[:300] + "…"
    where_from = "the source has a row the archive lacks" if side == "left" else "the archive has a row the source lacks"
    return f"first difference: {where_from}: {text}"


TYPE_GONE = "a type the archive records is gone (renamed, moved or dropped since)"  # (no verdict on the archive)


TABLE_GONE = "the day's table is gone from the source"  # (naming mode: dropped by hand, not by retention)


def _type_missing(exc, scratch: bool) -> str:
    """Why a day whose recorded column type is gone cannot be proven."""
    where = "the scratch database" if scratch else "this database"
    return (f"{exc.where}: its recorded type {exc.type_text!r} does not exist in {where} (renamed, moved or dropped "
            "since the day was archived?), so the archived rows cannot be loaded to be proven (no verdict on the "
            "archive)")


def _type_missing_remedy(exc, scratch: bool, removed: bool) -> str:
    """What makes such a day provable: for a day retention removed (nothing left to archive again), the type back
    under its recorded name; else archiving the day again with overwrite, which records the column as it is now."""
    if removed:
        return (f"give the type its recorded name {exc.type_text!r} back (ALTER TYPE ... RENAME TO, or ALTER TYPE ... "
                "SET SCHEMA where it moved to another schema), or create it"
                + (" in the scratch database" if scratch else "") + ", then verify the day again (the day was removed "
                "from the source: archiving it again has nothing to archive)")
    return ("archive the day again with overwrite, to record its columns as they are now"
            + (", or create the type in the scratch database" if scratch else ""))


def _column_types(conn: psycopg.Connection, manifest: dict) -> dict[str, sql.Composable]:
    """Each manifest column's recorded type, as SQL checked by PostgreSQL's type-name parser."""
    definition = manifest.get("table_definition") or {}
    types = {c["name"]: c["type"] for c in definition.get("columns", [])}
    from archive_pipeline.core.restore import checked_type_sql  # a manifest comes from the bucket: no SQL from it

    return {c["name"]: checked_type_sql(conn, types.get(c["name"], c["pg_type"]), f"column {c['name']!r} of the manifest")
            for c in manifest["columns"]}


def _type_oids(conn: psycopg.Connection, types: dict[str, sql.Composable]) -> list[int]:
    """The OID of each type, in order, by its name alone: ``NULL::domain`` would run the domain's
    CHECKs on NULL, and one that refuses NULL (``CHECK (VALUE IS NOT NULL)``) failed every proof."""
    texts = [t.as_string(conn) for t in types.values()]
    return [oid for (oid,) in conn.execute("SELECT pg_catalog.to_regtype(u.t)::oid FROM pg_catalog.unnest(%s::text[]) "
                                           "WITH ORDINALITY AS u(t, i) ORDER BY u.i", (texts,))]


def _create_temp(conn: psycopg.Connection, types: dict[str, sql.Composable]) -> tuple[sql.Identifier, str]:
    """A temporary table with these columns (the proof drops it; else it goes with the session): its
    identifier and schema.name."""
    name = f"archive_pipeline_verify_{next(_temp_names)}"
    cols = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(n), t) for n, t in types.items())
    conn.execute(sql.SQL("CREATE TEMPORARY TABLE {} ({})").format(sql.Identifier("pg_temp", name), cols))
    schema = conn.execute("SELECT nspname FROM pg_catalog.pg_namespace WHERE oid = pg_catalog.pg_my_temp_schema()"
                          ).fetchone()[0]
    without_user_triggers(conn, sql.Identifier(schema, name))
    return sql.Identifier(schema, name), f"{schema}.{name}"


def _temp_table(conn: psycopg.Connection, manifest: dict,
                as_text: Collection[str] = ()) -> tuple[sql.Identifier, Sequence[Column]]:
    """A temporary table with the manifest's column names and types, except that the columns named in
    ``as_text`` are text (their archived text is what the fingerprint hashes: no parsing needed)."""
    types = {name: sql.SQL("text") if name in as_text else kind for name, kind in _column_types(conn, manifest).items()}
    temp, qualified = _create_temp(conn, types)
    # the manifest's columns only, in its order: an event trigger may add a column of its own to every new table
    described = {c.name: c for c in describe_table(conn, qualified, None).columns}
    return temp, [described[name] for name in types]


# PostgreSQL types whose hashed text (``::text``) is exactly what the Parquet reader gives back for
# the Arrow type the archiver writes them as: text, varchar, json and jsonb as strings (jsonb as its
# output, which ADBC's binary COPY carries). Domains and everything else are parsed into their type,
# integers and booleans too: v6 hashes them by value, which costs less than hashing their text.
def _is_string(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


_VERBATIM_IN_PARQUET = {  # built-in type OIDs (fixed) -> the Arrow type the archiver writes them as
    25: _is_string, 1043: _is_string, 114: _is_string, 3802: _is_string,  # text, varchar, json, jsonb
}


def _verbatim_parquet_columns(conn: psycopg.Connection, manifest: dict, path: str) -> set[str]:
    """The columns of a Parquet archive that deep verification loads as text and hashes as they are,
    about halving the proof's cost for text and JSON (parsing every jsonb into its type and printing it
    again is most of it). A field whose text differs from the source's fails the proof, as a forged
    value must; the restore path reads the same text into the type."""
    types = _column_types(conn, manifest)
    oids = _type_oids(conn, types)
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError):  # not Parquet after all: the load says so, as the archive's problem
        return set()
    if any(schema.get_field_index(name) < 0 for name in types):
        return set()  # a column the file lacks: the load says so
    verbatim = set()
    for name, oid in zip(types, oids, strict=True):
        kind = schema.field(name).type
        if isinstance(kind, pa.BaseExtensionType):
            kind = kind.storage_type if kind.extension_name == "arrow.json" else None
        check = _VERBATIM_IN_PARQUET.get(oid)
        if kind is not None and check is not None and check(kind):
            verbatim.add(name)
    return verbatim


@dataclass(frozen=True)
class _TextColumn:
    """A column of the text copy of a CSV archive (see :func:`_text_table`), as the fingerprint sees it."""

    name: str
    parse_as: sql.Composable | None = None  # read the text as this type before hashing its text form
    base_type: str = "text"  # (of a parsed field: "xml" with is_array for an array of xml, see _PARSED_COLUMNS)
    is_array: bool = False
    arrays: int = 1  # (of an array of xml: how many arrays deep, see source.Column.arrays)
    is_enum: bool = False
    user_type: bool = False  # parse_as is a type outside pg_catalog: hashed by its output function (fingerprint)
    user_text_cast: bool = False  # parse_as has a cast to text a user created: hashed by its output function too
    hash_as: str | None = None  # (never set: a field is hashed as its parse_as type, see fingerprint._typed_link)
    parsed_by_v6_only: bool = False  # an integer or uuid field: parsed for v6 (by value), hashed as it is by older ones


# Every type whose text form (what the fingerprint hashes: ``value::text``) is its output function's, as
# COPY writes it, except those with a cast function to text (boolean 't' is 'true', inet's mask,
# "char", name; not bpchar, hashed as its output), seen through domains; money, which CSV archives
# as numeric, is parsed too, as are arrays of money or xml (CSV holds their elements as numeric and
# as the stored xml text), and composites, whose ``IS NULL`` (part of the fingerprint) is also true
# when every field is NULL. With each, how many arrays deep it is an array of xml (0: none): the fingerprint hashes
# its elements' stored texts where xml's output rewrites one (fingerprint._xml_array_text), as on the source's side.
_PARSED_COLUMNS = sql.SQL("""
WITH RECURSIVE base(name, oid) AS (
    SELECT * FROM unnest(%s::text[], %s::oid[])
    UNION ALL
    SELECT base.name, t.typbasetype FROM base JOIN pg_catalog.pg_type t ON t.oid = base.oid WHERE t.typtype = 'd')
SELECT base.name, CASE WHEN array_of.oid = 'pg_catalog.xml'::regtype THEN array_of.arrays ELSE 0 END
FROM base JOIN pg_catalog.pg_type t ON t.oid = base.oid
LEFT JOIN LATERAL (
    -- arrays of xml (archived as the elements' stored text) or money (as numeric), through domains and arrays
    -- (as source's column query walks them)
    WITH RECURSIVE element(oid, arrays) AS (
        SELECT t.typelem, 1 WHERE t.typcategory = 'A'
        UNION ALL
        SELECT CASE WHEN e.typtype = 'd' THEN e.typbasetype ELSE e.typelem END,
               element.arrays + CASE WHEN e.typtype = 'd' THEN 0 ELSE 1 END
        FROM element JOIN pg_catalog.pg_type e ON e.oid = element.oid
        WHERE (e.typtype = 'd' OR (e.typcategory = 'A' AND e.typelem <> 0)) AND element.arrays < 64)
    SELECT element.oid, element.arrays FROM element
    WHERE element.oid IN ('pg_catalog.xml'::regtype, 'pg_catalog.money'::regtype)
) AS array_of ON true
WHERE t.typtype <> 'd' AND (t.oid = 'pg_catalog.money'::regtype OR t.typtype = 'c' OR array_of.oid IS NOT NULL OR (
    t.oid <> 'pg_catalog.bpchar'::regtype  -- hashed as its output, blanks and all: the field as it is
    AND EXISTS (SELECT 1 FROM pg_catalog.pg_cast c
                WHERE c.castsource = t.oid AND c.casttarget = 'pg_catalog.text'::regtype AND c.castmethod = 'f')))
""")


# Columns of a domain type, or holding one anywhere (an array's element, a composite's field, a range's subtype,
# a multirange's range): read as their type, so the domain's constraints as they are now
# apply to the archived values as they would on restore (a CHECK added NOT VALID since the day was
# archived fails the proof, instead of a proof whose archive then does not restore).
_DOMAIN_COLUMNS = """
WITH RECURSIVE walk(name, oid, depth) AS (
    SELECT u.name, u.oid, 0 FROM unnest(%s::text[], %s::oid[]) AS u(name, oid)
    UNION ALL
    SELECT w.name, c.oid, w.depth + 1 FROM walk w JOIN pg_catalog.pg_type t ON t.oid = w.oid
    CROSS JOIN LATERAL ({parts}) AS c(oid)
    WHERE w.depth < 64)
SELECT DISTINCT w.name FROM walk w JOIN pg_catalog.pg_type t ON t.oid = w.oid WHERE t.typtype = 'd'
"""


# Columns whose type is a domain over bpchar (at any depth): read as the domain in the text copy, and
# hashed as bpchar is, by its output with the trailing blanks (``::text`` strips them; the source's
# side keeps them).
_BPCHAR_DOMAIN_COLUMNS = sql.SQL("""
WITH RECURSIVE base(name, oid) AS (
    SELECT * FROM unnest(%s::text[], %s::oid[])
    UNION ALL
    SELECT base.name, t.typbasetype FROM base JOIN pg_catalog.pg_type t ON t.oid = base.oid WHERE t.typtype = 'd')
SELECT base.name FROM base WHERE base.oid = 'pg_catalog.bpchar'::regtype
""")


def _text_table(conn: psycopg.Connection, manifest: dict) -> tuple[sql.Identifier, Sequence[_TextColumn]]:
    """A CSV archive's proof without typed loading: every field of a CSV archive is its column's text
    form under the fingerprint's settings (COPY writes the type's output), so the rows are loaded as
    text and hashed as they are, at about half the cost of parsing every value into its type and
    printing it again (``bench/restore.py``). Columns whose hashed text is not the field's are read as
    their type first. Equal fingerprints mean equal text, which gives back equal values on restore
    (every type's input reads its own output)."""
    types = _column_types(conn, manifest)
    names = list(types)
    oids = _type_oids(conn, types)
    found = conn.execute(_PARSED_COLUMNS, (names, list(oids))).fetchall()
    parsed = {name for name, _ in found}
    xml_arrays = {name: arrays for name, arrays in found if arrays}
    domains = _DOMAIN_COLUMNS.format(parts=type_parts(conn))
    parsed |= {name for (name,) in conn.execute(domains, (names, list(oids))).fetchall()}
    # the columns v6 hashes by their value (integers, uuids: see fingerprint._typed_link). Of an archive recording
    # v6, the plain ones are loaded as their type (COPY reads them once, and they hash by value as the source's do:
    # a field of another spelling of the same value, '+5' or an upper-case uuid, restores as that value and proves
    # so); of an older one, loaded as text and hashed as they are by its own algorithm, read as their type for v6
    typed = dict(conn.execute(_TYPED_HASH_COLUMNS, (names, list(oids), sorted(fingerprint.TYPED_HASHED))).fetchall())
    by_value = set(typed) - parsed if fingerprint.algorithm_for(manifest.get("fingerprint")) == fingerprint.ALGORITHM \
        else set()
    temp, _ = _create_temp(conn, {name: types[name] if name in by_value else sql.SQL("text") for name in names})
    # a type of the user's is named with its schema, so it is found whatever the path of this session
    # (a manifest names it as the archiving session's path showed it)
    own = conn.execute(_QUALIFIED_TYPES, (list(oids),)).fetchall()
    kinds = {name: CatalogText(spelled) if spelled else types[name]
             for name, (spelled,) in zip(names, own, strict=True)}
    # a parsed domain over char(n) is hashed as bpchar is, by its output with the trailing blanks (``::text``
    # strips them; the source's side keeps them)
    bpchar = {name for (name,) in conn.execute(_BPCHAR_DOMAIN_COLUMNS, (names, list(oids))).fetchall()}
    text_before_v6 = set(typed) - parsed - by_value  # v5 and older hash these fields as they are: as strictly as ever
    parsed |= set(typed) - by_value
    users = {name for (name,) in conn.execute(_USER_BASE_COLUMNS, (names, list(oids))).fetchall()}
    cast = {name for (name,) in conn.execute(_USER_TEXT_CAST_COLUMNS, (names, list(oids))).fetchall()}
    return temp, [_TextColumn(name, kinds[name], is_array=name in xml_arrays, arrays=xml_arrays.get(name, 1),
                              base_type="bpchar" if name in bpchar
                              else "xml" if name in xml_arrays else typed.get(name, "text"),
                              user_type=name in users, user_text_cast=name in cast,
                              parsed_by_v6_only=name in text_before_v6) if name in parsed
                  else _TextColumn(name, base_type=typed[name]) if name in by_value
                  else _TextColumn(name) for name in names]


# Columns whose type, through domains, is one v6 hashes by its value (fingerprint.TYPED_HASHED), with that type's name
_TYPED_HASH_COLUMNS = sql.SQL("""
WITH RECURSIVE base(name, oid) AS (
    SELECT * FROM unnest(%s::text[], %s::oid[])
    UNION ALL
    SELECT base.name, t.typbasetype FROM base JOIN pg_catalog.pg_type t ON t.oid = base.oid WHERE t.typtype = 'd')
SELECT base.name, t.typname::text FROM base JOIN pg_catalog.pg_type t ON t.oid = base.oid
WHERE t.typnamespace = 'pg_catalog'::pg_catalog.regnamespace AND t.typname::text = ANY(%s::text[])
""")


# Columns whose type (through domains; not an array) has a cast to text a user created (see source.Column)
_USER_TEXT_CAST_COLUMNS = sql.SQL("""
WITH RECURSIVE base(name, oid) AS (
    SELECT * FROM unnest(%s::text[], %s::oid[])
    UNION ALL
    SELECT base.name, t.typbasetype FROM base JOIN pg_catalog.pg_type t ON t.oid = base.oid WHERE t.typtype = 'd')
SELECT DISTINCT base.name FROM base JOIN pg_catalog.pg_type t ON t.oid = base.oid
JOIN pg_catalog.pg_cast c ON c.castsource = base.oid
WHERE t.typtype <> 'd'  -- (a cast of a domain is ignored by PostgreSQL: its base type's casts apply)
  AND c.casttarget = 'pg_catalog.text'::pg_catalog.regtype AND c.oid >= 16384
""")


# Columns whose type, through domains and arrays to its element (at any depth), as source's column query
# walks it, is a type outside pg_catalog: the fingerprint hashes those by their output function, not ::text.
_USER_BASE_COLUMNS = sql.SQL("""
SELECT u.name FROM unnest(%s::text[], %s::oid[]) AS u(name, oid)  -- (ROWS FROM sugar: not a function to qualify)
CROSS JOIN LATERAL (
    WITH RECURSIVE walk(oid, depth) AS (
        SELECT u.oid, 0
        UNION ALL
        SELECT CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.typelem END, w.depth + 1
        FROM walk w JOIN pg_catalog.pg_type t ON t.oid = w.oid
        WHERE (t.typtype = 'd' OR (t.typcategory = 'A' AND t.typelem <> 0 AND EXISTS (
            SELECT FROM pg_catalog.pg_type e WHERE e.oid = t.typelem AND e.typarray = t.oid))) AND w.depth < 64
    )
    SELECT oid FROM walk ORDER BY depth DESC LIMIT 1
) AS b
JOIN pg_catalog.pg_type base ON base.oid = b.oid
WHERE base.typnamespace <> 'pg_catalog'::pg_catalog.regnamespace OR base.typtype = 'e'
""")


# A type outside pg_catalog as schema.name, quoted by PostgreSQL (NULL for a built-in type, whose
# manifest spelling, typmod included, reads the same under any path).
_QUALIFIED_TYPES = """
SELECT CASE WHEN t.typnamespace <> 'pg_catalog'::pg_catalog.regnamespace
            THEN pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(t.typname) END
FROM pg_catalog.unnest(%s::pg_catalog.oid[]) WITH ORDINALITY AS u(oid, i)
JOIN pg_catalog.pg_type t ON t.oid = u.oid JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
ORDER BY u.i
"""
