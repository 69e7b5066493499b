"""What killed runs of a table-day left in the store, removed by the next operation that holds the day's lock.

A run killed mid-upload leaves a multipart upload (announced by its marker, see ``store.S3Upload``), one
killed between its upload and its manifest a whole object no manifest names. The archive run of the day
removes both before it starts; so does the day's removal, after which no archive run of the day comes
(a removed day is not archived again), so nothing else would (the README: the next run of the day does).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from archive_pipeline.core import keys
from archive_pipeline.core.errors import redact
from archive_pipeline.core.manifest import ManifestError, SourceIdentity, decode_manifest, foreign_manifest, \
    same_source, stored_object_problems  # (same_source: re-exported, as its callers import it from here)
from archive_pipeline.core.store import S3Store, decode_metadata

log = logging.getLogger(__name__)


def day_listing(store: S3Store, key: str) -> dict[str, dict] | None:
    """Size and ETag of every key that starts like ``key``'s generations (None: a store that cannot list)."""
    client = getattr(store, "client", None)
    if client is None or not hasattr(client, "get_paginator"):
        return None
    return {item["Key"]: {"ContentLength": item["Size"], "ETag": item.get("ETag", "")}
            for prefix in keys.day_listing_prefixes(key) for item in store.list_keys(prefix)}


def stored_generations(key: str, listing: dict[str, dict]) -> list[int]:
    """Generations of the day's data at ``key`` that ``listing`` shows."""
    pattern = keys.generation_pattern(key)
    return [int(m.group(1) or 1) for name in listing if (m := pattern.fullmatch(name))]


def marked_generations(key: str, listing: dict[str, dict] | None, tidied: set[str]) -> list[int]:
    """Generations of the day's ``key`` whose upload marker ``listing`` shows and tidying (``tidied``: the keys it
    deleted) left: another database's run may be uploading there now (see :func:`tidy_day`), so a new generation
    goes past them; two runs that share a key abort each other's upload (each aborts the key's others)."""
    pattern = keys.generation_pattern(key)
    return [int(m.group(1) or 1) for marker in keys.upload_markers(key, listing or {}) if marker not in tidied
            and (m := pattern.fullmatch(marker[:-len(keys.UPLOAD_MARKER_SUFFIX)]))]


def tidy_day(store: S3Store, key: str, listing: dict[str, dict] | None, manifest: dict | None,
             identity: SourceIdentity, label: str, others: Sequence[str] = (),
             owner: tuple[str, str] | None = None) -> set[str]:
    """Remove what earlier runs of the day at ``key`` left behind (the caller holds the day's lock): multipart
    uploads a killed run never finished, data objects of generations no manifest committed (a run killed
    between its upload and its manifest), and retired generations whose delete failed; the keys deleted (upload
    markers among them).

    Uploads are looked for only where ``listing`` (the day's, read under the lock) shows an upload marker:
    every multipart upload announces itself with one first, and deletes it only once no upload of its key
    can be left, so a day without a marker has no upload left to find. They are never anyone's data: all
    of the day's are aborted, but for those whose marker names another database than ``identity`` (a run there,
    which this run's lock does not exclude, may be uploading right now: its upload and marker are left alone,
    and :func:`marked_generations` keeps this run off its key). Objects are deleted only with a trustworthy
    ``manifest`` (None: none, or one that fails its checks) of ``owner``'s table-day, which names every object of the day worth keeping (its
    object and ``kept``); anything else of the day that is ours (:func:`why_not_ours`: a HEAD each, only for
    such strays) is garbage, since the manifest is the commit point; an object someone else put at one of the
    day's keys is no killed run's, and stays (logged). Without one, stored data might be the only copy of
    something and stays. A failure here is logged, never fatal:
    leftovers cost storage, not correctness. ``label``: the table-day, for the log. ``owner``: the table-day
    (name, ISO day) whose lock the caller holds, by default the one ``manifest`` names (a removal's proven one).
    ``others``: the day's keys under the table's other formats and codecs (:func:`keys.other_extension_keys`),
    whose uploads a run killed before the format changed left: those beside ``key`` (the same listing shows
    them) are aborted too where what is there is ``owner``'s (:func:`owned_by`); such a key may be another
    table's, whose upload the caller's lock does not cover."""
    owner = owner or _named(manifest)
    beside = [key, *(k for k in dict.fromkeys(others) if k != key and keys.day_prefix(k) == keys.day_prefix(key)
                     and keys.upload_markers(k, listing or {}) and _other_owned(store, k, listing, owner, label))]
    markers = [m for k in beside for m in keys.upload_markers(k, listing or {})]
    unmarked = _abort_stale_uploads(store, beside, markers, identity, label) if markers else set()
    if manifest is None or not listing:
        return unmarked
    if not same_source(manifest, identity):
        # archived from another database, whose runs this day's lock does not exclude (an advisory lock is the
        # database's own): an object its manifest does not name yet may be its run's, about to commit
        return unmarked
    if owner is not None and (foreign := foreign_manifest(manifest, *owner)):
        # another table's (or day's) archive, whose runs this day's lock does not exclude either
        log.warning("%s: left %s as it is: %s", label, store.uri(key), foreign)
        return unmarked
    keep = {(manifest.get("object") or {}).get("key"), *(k.get("key") for k in manifest.get("kept", []))}
    stray = [keys.generation_key(key, g) for g in stored_generations(key, listing)]
    stray += [k for k in manifest.get("superseded", []) if k in listing]  # e.g. another extension
    tidied = set(unmarked)
    for name in dict.fromkeys(stray):
        if name not in keep and why_not_ours(store, name, owner, label) is None and store.delete_quietly(name):
            tidied.add(name)
            log.info("%s: removed %s, a generation no manifest names", label, store.uri(name))
    return tidied


def why_not_ours(store: S3Store, key: str, owner: tuple[str, str] | None, label: str,
                 recorded: dict | None = None) -> str | None:
    """Why the object at ``key``, a generation of the day about to be deleted (retired, or a stray no manifest
    names), may not be ``owner``'s (table name, ISO day) to delete, logged as left as it is; None where it is:
    its HEAD shows the size and ETag the manifest ``recorded`` names for it, or the ``table`` and ``day``
    metadata every data object an archive run writes carries name ``owner``, or nothing is there any more. An
    object without them was put at the key by someone else (another tool, a hand's PutObject), one naming
    another table-day is that one's, and a HEAD that failed says nothing: none of them is deleted on the
    strength of its key alone, which only says where it is. One HEAD, asked only on these rare paths."""
    why = _not_ours(store, key, owner, recorded)
    if why is not None:
        log.warning("%s: left %s as it is, not known to be an object of this table-day's archives: %s", label,
                    store.uri(key), why)
    return why


def _not_ours(store: S3Store, key: str, owner: tuple[str, str] | None, recorded: dict | None) -> str | None:
    """:func:`why_not_ours` without the log."""
    if owner is None:
        return "no manifest names the table-day whose lock this run holds"
    try:
        head = store.head(key)
    except Exception as exc:  # noqa: BLE001 - not known whose it is
        return f"its HEAD failed ({redact(f'{type(exc).__name__}: {exc}')})"
    if head is None:
        return None  # gone since the listing: nothing to lose
    if recorded is not None and (recorded.get("object") or {}).get("etag") and \
            not stored_object_problems(head, recorded):
        return None  # the very object the manifest recorded
    meta = decode_metadata(head.get("Metadata") or {})
    named = (meta.get("table"), meta.get("day"))
    if named == owner:
        return None
    if named == (None, None):
        return (f"it carries no table or day metadata, which every object an archive run writes does (another "
                f"tool's object, or one put there by hand; ETag {head.get('ETag')}, {head.get('ContentLength')} "
                "bytes)")
    return f"its metadata names table {named[0]!r} for {named[1]}, not {owner[0]!r} for {owner[1]}"


def owned_by(store: S3Store, key: str, listing: dict[str, dict] | None, raw: bytes | None,
             owner: tuple[str, str] | None, label: str) -> bool:
    """Whether what earlier runs left at ``key``, a key of the day other than the caller's own (under another
    format or codec, or a former key_template), is ``owner``'s table-day (name, ISO day), whose lock the caller
    holds: the manifest there (``raw``, its bytes as read; None: none) names it, or there is none, and so does each
    upload marker ``listing`` shows there (one that names no table-day, written before markers named theirs, only
    beside such a manifest). A key of the day under another format may be another table's (their keys differ only
    by the extension: refused at load within one configuration, not across two that share a bucket), whose live
    upload or just committed generation the caller must neither abort nor delete: it is left alone, logged."""
    why = _not_owned(store, key, listing, raw, owner)
    if why is not None:
        log.warning("%s: left %s as it is: %s", label, store.uri(key), why)
    return why is None


def _not_owned(store: S3Store, key: str, listing: dict[str, dict] | None, raw: bytes | None,
               owner: tuple[str, str] | None) -> str | None:
    """Why what is at ``key`` may not be ``owner``'s (see :func:`owned_by`), or None."""
    if owner is None:
        return "no manifest names the table-day whose lock this run holds"
    named = None
    if raw is not None:
        try:
            manifest = decode_manifest(raw)
        except ManifestError as exc:
            return f"its manifest cannot be read ({exc})"
        if foreign := foreign_manifest(manifest, *owner):
            return foreign
        named = owner
    for marker in keys.upload_markers(key, listing or {}):
        try:
            body = store.get_bytes_or_none(marker)
        except Exception as exc:  # noqa: BLE001 - not known whose it is
            return f"its upload marker {marker} could not be read ({redact(f'{type(exc).__name__}: {exc}')})"
        if body is None:
            continue  # gone since the listing: its upload completed or was aborted
        marked = keys.upload_marker_owner(body) or named
        if marked is None:
            return (f"its upload marker {marker} names no table-day (written by an older version) and no manifest "
                    f"there names {owner[0]!r} for {owner[1]}")
        if marked != owner:
            return (f"its upload marker {marker} is of table {marked[0]!r} for {marked[1]}, not of {owner[0]!r} for "
                    f"{owner[1]}")
    return None


def _other_owned(store: S3Store, key: str, listing: dict[str, dict] | None, owner: tuple[str, str] | None,
                 label: str) -> bool:
    """:func:`owned_by` for another format's key of the day, its manifest read first (not read: not known)."""
    try:
        raw = store.get_bytes_or_none(keys.manifest_key(key))
    except Exception as exc:  # noqa: BLE001 - see tidy_day's docstring
        log.warning("%s: left %s as it is: its manifest could not be read (%s)", label, store.uri(key),
                    redact(f"{type(exc).__name__}: {exc}"))
        return False
    return owned_by(store, key, listing, raw, owner, label)


def _named(manifest: dict | None) -> tuple[str, str] | None:
    """The table-day ``manifest`` names, None without one."""
    table, day = (manifest or {}).get("table"), (manifest or {}).get("day")
    return (table, day) if isinstance(table, str) and isinstance(day, str) else None


def _abort_stale_uploads(store: S3Store, day_keys: list[str], markers: list[str], identity: SourceIdentity,
                         label: str) -> set[str]:
    """Abort every multipart upload of the generations of the day's keys that the ``markers`` announced, then
    delete each marker whose upload was seen settled (kept if its uploads could not be listed or aborted, or its
    listing showed an upload it cannot account for, so the next run tries again); the markers deleted. A marker
    that names another database than ``identity`` (:func:`_of_another_source`) is left alone with its upload: a
    run there is not excluded by this run's lock, and its upload may be live. Each marker's uploads are listed
    with the key it names (``<key>.uploading``) as the prefix, not under the day's: some stores (MinIO, by design:
    minio/minio#20989) list only the uploads of the object a prefix names exactly, and a listing under the day's
    prefix would show none there, and the marker be deleted with its upload left open for ever."""
    patterns = [keys.generation_pattern(k) for k in day_keys]
    generations = re.compile("|".join(f"(?:{p.pattern})" for p in patterns))
    unmarked = set()
    for marker in markers:
        try:
            if _of_another_source(store, marker, identity, label):
                continue
            _, settled = store.abort_stale_uploads_under(marker[:-len(keys.UPLOAD_MARKER_SUFFIX)], generations)
        except Exception as exc:  # noqa: BLE001 - see tidy_day's docstring
            # the cause, redacted, not a traceback: botocore quotes the endpoint URL, credentials and all
            log.warning("%s: could not read %s, or list or abort its stale multipart uploads (%s); the marker stays "
                        "for the next run, and a bucket lifecycle rule (AbortIncompleteMultipartUpload) would remove "
                        "them", label, store.uri(marker), redact(f"{type(exc).__name__}: {exc}"))
            continue
        if settled and store.delete_quietly(marker):  # else an upload listed there that is no generation of the
            unmarked.add(marker)  # day's keys: damaged, or another table's; the marker stays and the next run looks
    return unmarked


def _of_another_source(store: S3Store, marker: str, identity: SourceIdentity, label: str) -> bool:
    """Whether ``marker`` names another database than ``identity`` (see :func:`same_source`): logged, and its upload
    left to its own database's runs (or a bucket lifecycle rule). One gone since the listing, or written by an older
    version that named none, counts as this database's (as before: a killed run's)."""
    body = store.get_bytes_or_none(marker)
    source = keys.upload_marker_source(body) if body is not None else None
    if source is None or same_source({"source": source}, identity):
        return False
    log.info("%s: left %s and its upload as they are: written by a run on database %r (system %s), which this run's "
             "table-day lock does not exclude", label, store.uri(marker), source["database"],
             source["system_identifier"])
    return True
