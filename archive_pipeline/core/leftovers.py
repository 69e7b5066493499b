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
from archive_pipeline.core.manifest import SourceIdentity
from archive_pipeline.core.store import S3Store

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


def same_source(manifest: dict, identity: SourceIdentity) -> bool:
    """Whether ``manifest`` was archived from the database ``identity`` names (its name, and its system where both
    record one): the only database whose runs of the day this run's table-day lock excludes."""
    source = manifest.get("source") or {}
    other_cluster = (source.get("system_identifier") and identity.system_identifier
                     and source["system_identifier"] != identity.system_identifier)
    return not (other_cluster or (source.get("database") and source["database"] != identity.database))


def tidy_day(store: S3Store, key: str, listing: dict[str, dict] | None, manifest: dict | None,
             identity: SourceIdentity, label: str, others: Sequence[str] = ()) -> set[str]:
    """Remove what earlier runs of the day at ``key`` left behind (the caller holds the day's lock): multipart
    uploads a killed run never finished, data objects of generations no manifest committed (a run killed
    between its upload and its manifest), and retired generations whose delete failed; the keys deleted.

    Uploads are looked for only where ``listing`` (the day's, read under the lock) shows an upload marker:
    every multipart upload announces itself with one first, and deletes it only once no upload of its key
    can be left, so a day without a marker has no upload left to find. They are never anyone's data: all
    of the day's are aborted. Objects are deleted only with a trustworthy ``manifest`` (None: none, or one
    that fails its checks), which names every object of the day worth keeping (its object and ``kept``);
    anything else of the day is garbage, since the manifest is the commit point. Without one, stored data
    might be the only copy of something and stays. A failure here is logged, never fatal: leftovers cost
    storage, not correctness. ``label``: the table-day, for the log. ``others``: the day's keys under the table's
    other formats and codecs (:func:`keys.other_extension_keys`), whose uploads a run killed before the format
    changed left: those beside ``key`` (the same listing shows them) are aborted too."""
    beside = [key, *(k for k in dict.fromkeys(others) if k != key and keys.day_prefix(k) == keys.day_prefix(key))]
    markers = [m for k in beside for m in keys.upload_markers(k, listing or {})]
    if markers:
        _abort_stale_uploads(store, beside, markers, label)
    if manifest is None or not listing:
        return set()
    if not same_source(manifest, identity):
        # archived from another database, whose runs this day's lock does not exclude (an advisory lock is the
        # database's own): an object its manifest does not name yet may be its run's, about to commit
        return set()
    keep = {(manifest.get("object") or {}).get("key"), *(k.get("key") for k in manifest.get("kept", []))}
    stray = [keys.generation_key(key, g) for g in stored_generations(key, listing)]
    stray += [k for k in manifest.get("superseded", []) if k in listing]  # e.g. another extension
    tidied = set()
    for name in dict.fromkeys(stray):
        if name not in keep and store.delete_quietly(name):
            tidied.add(name)
            log.info("%s: removed %s, a generation no manifest names", label, store.uri(name))
    return tidied


def _abort_stale_uploads(store: S3Store, day_keys: list[str], markers: list[str], label: str) -> None:
    """Abort every multipart upload of the generations of the day's keys (one prefix: the first's), then delete
    the ``markers`` that announced them (kept if the uploads could not be listed or aborted, or the listing
    showed an upload it cannot account for, so the next run tries again)."""
    patterns = [keys.generation_pattern(k) for k in day_keys]
    generations = re.compile("|".join(f"(?:{p.pattern})" for p in patterns))
    try:
        _, settled = store.abort_stale_uploads_under(keys.day_prefix(day_keys[0]), generations)
    except Exception as exc:  # noqa: BLE001 - see tidy_day's docstring
        # the cause, redacted, not a traceback: botocore quotes the endpoint URL, credentials and all
        log.warning("%s: could not list or abort stale multipart uploads (%s); a bucket lifecycle rule "
                    "(AbortIncompleteMultipartUpload) will remove them", label, redact(f"{type(exc).__name__}: {exc}"))
        return
    if not settled:  # an upload listed under the day's prefix that is no generation of it: damaged, or
        return       # another table's; the markers stay and the next run looks again
    for marker in markers:
        store.delete_quietly(marker)
