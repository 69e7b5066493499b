"""What one bucket listing tells of a table's days: which keys are stored, and which days have no archive at all.

Below plan (list, compare, verify) and restore (a range's days), which both ask it: one LIST of the days' common
prefix instead of a GET, a HEAD and a LIST per day.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import urllib.parse
from collections.abc import Callable, Iterable

from archive_pipeline.core.config import DEFAULT_KEY_TEMPLATES, UNIQUE_KEY_FIELDS, TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.keys import (day_listing_prefixes, day_prefix, generation_key, listed_under, manifest_key,
                                        other_extension_keys, overlapping_period_keys, table_day_key,
                                        template_fields, upload_marker_key)
from archive_pipeline.core.leftovers import day_listing, stored_generations
from archive_pipeline.core.periods import GRANULARITIES, Period
from archive_pipeline.core.store import S3Store

log = logging.getLogger(__name__)
# The repeated hour of a fall-back night carries its UTC offset in {hour} and {period} (``02+0100``): still a
# period's key, of another length than the other hours'.
_REPEATED_HOUR_OFFSET = re.compile(r"(?<=\d)[+-]\d{4}(?!\d)")
_DIGIT = re.compile(r"\d")


def listed_once(store: S3Store, prefix: str) -> frozenset[str]:
    """The keys under ``prefix``, listed once per store object (see :meth:`S3Store.asked_once`, which says for what)."""
    return store.asked_once(("list", prefix), lambda: frozenset(item["Key"] for item in store.list_keys(prefix)))


def existing_keys(store: S3Store, keys: list[str]) -> set[str] | None:
    """The keys of :func:`listed_items` (see there), or None."""
    items = listed_items(store, keys)
    return None if items is None else set(items)


def listed_items(store: S3Store, keys: list[str]) -> dict[str, dict] | None:
    """Every key in the bucket under the common prefix of ``keys`` (a listing); None
    when that would list much more than the keys themselves (a key template that puts the date
    before the table, or no common directory), where one GET per key costs less, or when the store
    answers keys not as stored (a listing not to be read by name): ones that do not start with the prefix asked
    for, or a key asked for URL-encoded (``my%20events``: a store encoding keys without saying so)."""
    common = os.path.commonprefix(keys)
    if "/" not in common:
        return None
    prefix = common[: common.rindex("/") + 1]
    found: dict[str, dict] = {}
    asked = set(keys)
    for item in store.list_keys(prefix):
        if not item["Key"].startswith(prefix):  # keys not as asked (a store URL-encoding them unannounced): the
            return None                         # listing tells nothing of the days, each is read on its own
        if "%" in item["Key"] and item["Key"] not in asked and \
                asked.intersection((urllib.parse.unquote(item["Key"]), urllib.parse.unquote_plus(item["Key"]))):
            return None  # the same, where the prefix has nothing to encode: a key asked for, listed encoded
        found[item["Key"]] = item
        if len(found) > 4 * len(keys) + 1000:  # objects, manifests, generations: about 2-3 per day
            return None
    return found


def listed_absent(store: S3Store, spec: TableSpec, days: list[Period], etags: dict[str, str] | None = None
                  ) -> tuple[set[Period], list[str] | None]:
    """The days a bucket listing shows to have no archive (none when it could not be listed, or shows a key that is
    no day's of the table: see :func:`_unaccounted`), and the listed keys in order (None then) for the former
    formats' lookups. ``etags``, if given, gets each listed key's ETag
    (the sensor tells by them a day's archive unchanged since it looked at it)."""
    keys = {day: table_day_key(spec, day, store.prefix) for day in days}
    # the days' keys under the table's other formats too, where the template puts a day archived before a change
    # of format under another day prefix ({format} or {ext} in a folder, or before the file name's first dot): the
    # listing must cover them; after it, as by default, they share the day's prefix (rendered for every day, they
    # cost a range 20 times its own keys: asked of the first day, which shows it for all)
    elsewhere = bool(days) and any(day_prefix(other) != day_prefix(keys[days[0]])
                                   for other in other_extension_keys(spec, days[0], store.prefix))
    others = {day: other_extension_keys(spec, day, store.prefix) if elsewhere else [] for day in days}
    mine = [*keys.values(), *itertools.chain(*others.values())]
    try:
        present = listed_items(store, [manifest_key(k) for k in mine]) if len(days) > 3 else None
    except ArchiveError:  # the listing failed (refused, throttled): each day is read, and fails, on its own
        present = None
    if present is None or _unaccounted(spec.name, present, mine, lambda: _overlapping_keys(spec, days[0], store.prefix)):
        return set(), None
    if etags is not None:
        etags.update((key, item.get("ETag", "")) for key, item in present.items())
    listed_days = {day_prefix(k) for k in present}
    former = _former_granularities(present, mine)
    # A listing has no checksum: a manifest it does not show is taken as absent only when nothing else
    # of the day is listed either (else it is read, so one damaged key name cannot hide an archive), nor anything
    # of a period of another granularity that overlaps it (its removal, if it holds one, is the run's to apply).
    absent = {day for day, key in keys.items()
              if manifest_key(key) not in present and day_prefix(key) not in listed_days
              and not any(day_prefix(other) in listed_days for other in others[day])
              and not (former and listed_under(_overlapping_keys(spec, day, store.prefix), former))}
    return absent, sorted(present)


def _overlapping_keys(spec: TableSpec, day: Period, prefix: str) -> list[str]:
    """The keys of every period of the table's other granularities (and former zones) that overlaps ``day``, under
    every template the archive run looks for their removals under (:func:`overlapping_templates`, whatever the
    source holds): the table's archives written before its granularity changed, not strays in its folder."""
    return [key for group in overlapping_period_keys(spec, day, prefix, overlapping_templates(spec, True))
            for key, _ in group]


def _former_granularities(listed: Iterable[str], mine: list[str]) -> list[str]:
    """The ``listed`` keys (sorted) of none of the shapes of ``mine`` (the days' keys under every format): after
    :func:`_unaccounted` passed them, those of the table's other granularities' periods."""
    shapes = {_shape(key) for key in mine}
    return sorted(key for key in listed if _shape(key) not in shapes)


def unmanifested(store: S3Store, keys: list[str], listed: Iterable[str] | None) -> tuple[list[str], list[str]]:
    """Of a day whose manifest was not found, the data objects (any generation of its ``keys``: its key, and its keys
    under the table's other formats) that are stored all the same, and those of them whose upload marker is still
    beside them (a run between its upload and its manifest: under way, or killed). Such an object may hold the only
    copy of the day's rows (a manifest deleted or expired, the rows deleted since), so list and compare name it
    rather than call the day unarchived. ``listed``: the keys a listing already read shows (no request); None: one
    listing of the day's prefix is asked for, or a HEAD of the key where the store cannot list. Raises the store's
    error."""
    names = set(listed) if listed is not None else day_listing(store, keys[0])
    if names is None:
        return ([keys[0]] if store.head(keys[0]) is not None else []), []
    objects = [generation_key(key, g) for key in keys for g in stored_generations(key, names)]
    return objects, [name for name in objects if upload_marker_key(name) in names]


def day_listings(store: S3Store, keys: list[str], spec: TableSpec | None = None, day: Period | None = None
                 ) -> dict[str, dict[str, dict]]:
    """For each day's data key, what :func:`leftovers.day_listing` would list of it (size and ETag of every key
    starting as its generations do), from one listing of the days' common prefix; a key left out where that
    listing cannot serve (a flat layout, no common directory, a listing that failed or that shows a key of no day:
    see :func:`_unaccounted`): read on its own then. ``spec`` and ``day`` (one of the days): the table, whose
    archives under its other granularities are its own keys, as :func:`listed_absent` counts them."""
    if len(keys) <= 3 or any(day_listing_prefixes(key) != [day_prefix(key)] for key in keys):
        return {}
    try:
        items = listed_items(store, [*keys, *(manifest_key(k) for k in keys)])
    except ArchiveError:
        return {}
    former = (lambda: _overlapping_keys(spec, day, store.prefix)) if spec is not None and day is not None else list
    if items is None or _unaccounted(os.path.dirname(os.path.commonprefix(keys)), items, keys, former):
        return {}
    by_day: dict[str, dict[str, dict]] = {day_prefix(key): {} for key in keys}
    for name, item in items.items():
        held = by_day.get(day_prefix(name))
        if held is not None:
            held[name] = {"ContentLength": item["Size"], "ETag": item.get("ETag", "")}
    return {key: by_day[day_prefix(key)] for key in keys}


def overlapping_templates(spec: TableSpec, empty: bool) -> dict[str, tuple[str, ...]]:
    """Per granularity whose removed periods may have taken rows of this table's periods with them (see
    archive._Archiving._refuse_removed_in_overlapping): the finer ones always (a month's days, a day's hours: each one
    removed took a part of the period), the coarser ones where the source is ``empty`` (an hour's day, a day's
    month: removed, it took every row of the period, so rows there now came after it); with the key templates its
    periods may have been archived under before the table's granularity changed: its default, and the table's own
    where that holds what keeps that granularity's periods apart (config.UNIQUE_KEY_FIELDS: ``{period}`` fits
    hours, days and months alike), as a template kept across the change does. Where the source is ``empty``, the
    table's own granularity too: the neighbouring periods of a zone the table had before (its time zone changed
    since) that overlap this one (see keys.overlapping_period_keys), removed, took its rows likewise."""
    fields = template_fields(spec.key_template)
    finer = GRANULARITIES[:GRANULARITIES.index(spec.granularity)]
    return {granularity: tuple(dict.fromkeys([default, *([spec.key_template] if any(
        needed <= fields for needed in UNIQUE_KEY_FIELDS[granularity]) else [])]))
        for granularity, default in DEFAULT_KEY_TEMPLATES.items() if granularity in finer or empty}


def _shape(key: str) -> str:
    """The day prefix of ``key`` with every digit alike (and a repeated hour's offset left out): the same for every
    period's key of a table, whatever its date."""
    return _DIGIT.sub("0", _REPEATED_HOUR_OFFSET.sub("", day_prefix(key)))


def _unaccounted(where: str, listed: Iterable[str], day_keys: list[str],
                 overlapping: Callable[[], list[str]] = list) -> bool:
    """Whether a listing shows a key that is no period's key of the table (``day_keys``: keys it renders; and
    ``overlapping()``'s, asked only where the listing shows others: those of the periods of its other
    granularities that the archive run looks at, its archives from before its granularity changed), nor one of
    their generations, manifests or upload markers. A listing has no checksum: one bit of a key flipped on the way
    (``<date>.jsonl`` arriving as ``<date>/jsonl``) moves it out of its day, and a day archived empty, whose
    manifest is its only key, would pass for one never archived. Such a listing is not used: each day is read on its
    own. A key put there by something else costs the same, so it is named (``where``: the table or its folder) in a
    warning."""
    shapes = {_shape(key) for key in day_keys}
    stray = [key for key in listed if _shape(key) not in shapes]
    if stray:  # (rendered only now: a month's hours are 10,000 keys)
        former = {_shape(key) for key in overlapping()}
        stray = [key for key in stray if _shape(key) not in former]
    if stray:
        log.warning("%s: the bucket listing shows %d key(s) that are no day's key of the table (%s%s): damaged on "
                    "the way, or put there by something else; each day is read on its own instead. Move what is "
                    "not the table's archives out of its folder", where, len(stray), ", ".join(stray[:3]),
                    ", …" if len(stray) > 3 else "")
    return bool(stray)


def unarchived_days(store: S3Store, spec: TableSpec, days: list, etags: dict[str, str] | None = None) -> set[Period]:
    """The days of ``days`` a bucket listing shows to have no archive at all (one listing, no GET): a range
    of years mostly never archived is told in a few requests, not three per day. Empty where the bucket
    could not be listed that way (each day is then read on its own). ``etags``: see :func:`listed_absent`."""
    return listed_absent(store, spec, [spec.period(d) for d in days], etags)[0]
