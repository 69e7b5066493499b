"""The manifest written beside each archive: what it holds, whose it is, and how to prove it.

``<key>.manifest.json`` is the commit point of an archive. It is written only after the data
object is complete and verified, and it names that object (``object.key``: a re-archive writes a
new *generation* of the data under a new key and then replaces the manifest, so the previous pair
stays whole until the new one is). Its MD5/SHA-256 are of the object's exact bytes (a multipart
ETag is not), its ``fingerprint`` is the content fingerprint of the source rows in the archive's
snapshot, and ``manifest_sha256`` covers the manifest itself, so a manifest damaged in transit or
at rest is recognised as "no valid archive" rather than trusted.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import re
import weakref
from dataclasses import dataclass, field
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import psycopg
from psycopg._encodings import pg2pyenc  # (psycopg's own table of PostgreSQL encodings, as source reads names)

from archive_pipeline import __version__
from archive_pipeline.core import keys
from archive_pipeline.core.config import MAX_IDENTIFIER_BYTES
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.fingerprint import ALGORITHMS, Fingerprint
from archive_pipeline.core.keys import manifest_key  # noqa: F401 - re-exported: readers look manifests up by data key
from archive_pipeline.core.periods import Period, as_period, manifest_period, period_containing
from archive_pipeline.core.source import MAX_TYPE_NODES, Column, names_few, server_identity
from archive_pipeline.core.store import MAX_SMALL_OBJECT_BYTES, MISSING_ON_READ, OVERSIZED, StandIn, etag_text

# 3: since row-hash-sum-v6 (2026-12-06), which a release before it cannot compute: such a release, still running
# during an upgrade, reads a version 3 manifest as a newer version's and leaves the day alone, where it took a
# fingerprint it could not compute for "archive again" and re-archived a changed day over it. Versions 2 to 4
# are read alike (4's composites unfolded into its columns' shapes).
# 4: since a composite's shape is recorded once per manifest (its ``composites`` table, which columns[].shape refers
# to), where 300 columns of one 300-field type repeated its fields 300 times, past what any reader accepts; a release
# before it reads such a manifest as a newer version's, not as one whose columns record no shape. A manifest without
# that table is still written as version 3 (_PLAIN_VERSION), which every release since row-hash-sum-v6 reads.
MANIFEST_VERSION = 4
_PLAIN_VERSION = 3
# the shape nodes a manifest's composites table may unfold to, all columns together: about as many as a manifest of
# MAX_SMALL_OBJECT_BYTES could list one by one, so a table of types (or a forged one, nesting each type twice in the
# next) takes a reader no more memory than the largest manifest it reads did; the writer refuses what exceeds it
# (before folding), and source refuses a table whose types unfold to more before its catalog walks do
MAX_SHAPE_NODES = MAX_TYPE_NODES
log = logging.getLogger(__name__)
_CHECKSUM_FIELD = "manifest_sha256"


class ManifestError(ValueError):
    """A manifest that cannot be trusted: not JSON, not ours, or its checksum does not match."""

    remedy: str | None = None  # what to do, where it differs from the caller's (restore it, archive again)
    key: str | None = None  # the data key whose manifest it is, where a caller read the day's keys under other formats

    @property
    def message(self) -> str:
        """What is wrong, without the remedy (for a caller that gives its own where this has none)."""
        return super().__str__()

    def __str__(self) -> str:
        return f"{self.message}; to fix: {self.remedy}" if self.remedy else self.message


class ManifestTooLargeError(ArchiveError):
    """A manifest its readers would refuse (more bytes than MAX_SMALL_OBJECT_BYTES, or more shape nodes than
    MAX_SHAPE_NODES): never written, so no run ends green with an archive that list, verify and restore cannot
    read. The table's columns, not the day's rows, make it so: archiving the day again cannot end it."""


class NewerManifestError(ManifestError):
    """A manifest written by a newer archive_pipeline, in a format this one cannot read: not damaged, and
    not to be replaced by archiving the day again with this older version."""

    remedy = (f"upgrade archive_pipeline (this is {__version__}) to the version that wrote it, everywhere that "
              "reads the bucket (the code location and the command line)")


class ForeignManifestError(ManifestError):
    """A sound manifest of another table-day at this one's key: intact, and describing other rows."""

    remedy = ("if it was copied there by hand, delete the copy (the original stays at its own key); if another table "
              "or configuration renders this key, give each table its own key_template (with {schema}, {table} and "
              "{date}); archiving the day again does not replace another table-day's archive")


@dataclass(frozen=True)
class SourceIdentity:
    """Which database a day was read from: an archive of the same table name from another cluster is
    someone else's archive. ``system_identifier`` is shared by a primary and its physical replicas."""

    database: str
    system_identifier: str | None
    server_version: str
    encoding: str = ""  # the database's server_encoding ("" where unknown)


# whose database a reader of the day's archives reads: an identity, a callable that looks it up (asked only where the
# day has an archive under another format's key), or None (not known: every database's archive there counts)
Whose = SourceIdentity | Callable[[], SourceIdentity] | None

_IDENTITIES: weakref.WeakKeyDictionary[psycopg.Connection, SourceIdentity] = weakref.WeakKeyDictionary()


def source_identity(conn: psycopg.Connection) -> SourceIdentity:
    """The server a connection talks to, looked up once per connection: a run that archives many days
    on one connection would otherwise ask for the same three values (two round trips) every day."""
    identity = _IDENTITIES.get(conn)
    if identity is None:
        identity = _IDENTITIES[conn] = SourceIdentity(*server_identity(conn))
    return identity


def same_source(manifest: dict, identity: SourceIdentity) -> bool:
    """Whether ``manifest`` was archived from the database ``identity`` names (its name, and its system where both
    record one: a role that may not read pg_control_system() records none, and the database's name alone is then
    compared): the only database whose runs of the day this run's table-day lock excludes."""
    source = manifest.get("source") or {}
    other_cluster = (source.get("system_identifier") and identity.system_identifier
                     and source["system_identifier"] != identity.system_identifier)
    return not (other_cluster or (source.get("database") and source["database"] != identity.database))


def recorded_source(loose: dict | None) -> dict | None:
    """The source identity a manifest that failed its checks still records, as a manifest holding only that (for
    :func:`same_source`), or None where it names none: its JSON is unchecked, so only text fields count. Read as far
    as it can be, so that damage is never the way around the check of whose archive it is."""
    source = (loose or {}).get("source")
    named = {name: source[name] for name in ("database", "system_identifier")
             if isinstance(source, dict) and isinstance(source.get(name), str) and source[name]}
    return {"source": named} if named else None


def of_another_source(manifest: dict | None, whose: Whose) -> bool:
    """Whether ``manifest`` (checked, or read loosely: only its text fields count) was archived from another
    database than ``whose``'s: under another format's or template's key of the day, another deployment's archive
    sharing the bucket and prefix (two configurations' keys may differ only by the extension), not this table's
    own written before its format, codec or granularity changed. Never where ``whose`` is None (not known)."""
    if whose is None or manifest is None:
        return False
    recorded = recorded_source(manifest)
    return recorded is not None and not same_source(recorded, whose() if callable(whose) else whose)


@dataclass(frozen=True)
class ArchiveResult:
    table: str
    day: Period  # the period archived (a Period; for a daily UTC table it equals its date)
    key: str  # the data object (the rendered key, or its generation key after a re-archive); "" if empty
    uri: str
    rows: int
    bytes: int  # size of the stored object
    uncompressed_bytes: int  # formatted bytes before compression
    md5: str
    sha256: str
    format: str
    compression: str
    columns: tuple[Column, ...]
    output_types: dict[str, str]
    parts: int
    etag: str
    content_type: str
    content_encoding: str | None
    day_column: str | None
    source_relation: str  # the table read: the configured one, or the day's child in naming mode
    manifest_key: str
    snapshot_at: dt.datetime
    server_version: str
    extract_seconds: float  # until the last row was read and compressed
    duration_seconds: float  # everything, upload included
    upload_wait_seconds: float  # after the last row: waiting for the parts still in flight
    complete_seconds: float  # the store assembling the object
    fingerprint: str = ""  # content fingerprint of the day's source rows (fingerprint.Fingerprint as text)
    fingerprint_seconds: float = 0.0
    empty: bool = False  # the day has no rows: a manifest and no data object
    generation: int = 1
    encodings: dict[str, dict] = field(default_factory=dict)  # column -> {encoding, exact, note}
    skipped: bool = False  # an identical archive existed; nothing was uploaded
    archiver_version: str = __version__
    streams: str = ""  # with parallel_streams set: how many streams read the day, and why (e.g. a view: one)

    @property
    def stored_key(self) -> str:
        """What of the day is in the bucket to point a person at: its object, or an empty day's manifest."""
        return self.key or self.manifest_key

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.duration_seconds if self.duration_seconds > 0 else 0.0

    @property
    def compression_ratio(self) -> float:
        return self.uncompressed_bytes / self.bytes if self.bytes else 0.0

    @property
    def exact(self) -> bool:
        """Every column's encoding keeps every value exactly (see the manifest's ``columns[].exact``)."""
        return all(e.get("exact", True) for e in self.encodings.values())


def table_definition(columns: tuple[Column, ...], primary_key: list[str] | None,
                     partition: dict | None, parents: list[dict] | None = None) -> dict[str, Any]:
    """Enough of the table's definition to re-create it for a restore (``parents``: a naming-mode day table's,
    see :func:`~archive_pipeline.core.discovery.day_table_parents`)."""
    return {"columns": [{"name": c.name, "type": c.type_name, "not_null": c.not_null} for c in columns],
            "primary_key": primary_key, "partition": partition, **({"parents": parents} if parents else {})}


def build_manifest(result: ArchiveResult, source: SourceIdentity, definition: dict[str, Any]) -> dict[str, Any]:
    obj = None if result.empty else {
        "key": result.key, "uri": result.uri, "bytes": result.bytes, "md5": result.md5, "sha256": result.sha256,
        "etag": result.etag, "parts": result.parts, "content_type": result.content_type,
        "content_encoding": result.content_encoding,
    }
    columns = []
    for c in result.columns:
        encoding = result.encodings.get(c.name, {})
        columns.append({"name": c.name, "pg_type": c.type_name, "output_type": result.output_types.get(c.name, "text"),
                        "nullable": not c.not_null, "encoding": encoding.get("encoding", result.output_types.get(
                            c.name, "text")), "exact": bool(encoding.get("exact", True)),
                        "note": encoding.get("note") or "",  # (always there: a script reads c["note"], as README lists)
                        # the day column's type through its domains: what picks a day's rows (see _same_wall_clock)
                        **({"base_type": c.base_type} if c.name == result.day_column else {}),
                        **({"numbers": [{"steps": list(n.steps), "type": n.type} for n in c.numbers]}
                           if getattr(c, "numbers", ()) else {}),
                        **({"shape": [{"at": at, "type": kind, **({"fields": list(fields)} if fields is not None else {})}
                                      for at, kind, fields, _ in c.shape], "shape_modifiers": True}
                           if getattr(c, "shape", ()) else {})})
    return {
        "manifest_version": _PLAIN_VERSION,  # (MANIFEST_VERSION where encode_manifest folds its shapes)
        "table": result.table,
        "day": result.day.isoformat(),  # the partition key (for a day: its ISO date, as always)
        **(result.day.manifest_fields() if isinstance(result.day, Period) else {}),
        "day_column": result.day_column,
        "source_relation": result.source_relation,
        "rows": result.rows,
        "empty": result.empty,
        "fingerprint": result.fingerprint,
        "generation": result.generation,
        "object": obj,
        "uncompressed_bytes": result.uncompressed_bytes,
        "format": result.format,
        "compression": result.compression,
        "exact": result.exact,
        "columns": columns,
        "table_definition": definition,
        "source": {"database": source.database, "system_identifier": source.system_identifier,
                   "server_version": source.server_version, "snapshot_at": result.snapshot_at.isoformat(),
                   **({"encoding": source.encoding} if source.encoding else {})},
        "archiver": {"name": "archive_pipeline", "version": result.archiver_version},
    }


def _canonical(manifest: dict[str, Any]) -> bytes:
    """The form the checksum is of: sorted keys, no spaces, strict UTF-8 (a string no UTF-8 encodes, a lone surrogate
    that JSON can escape, raises UnicodeEncodeError: decode_manifest calls such a manifest damaged)."""
    body = {k: v for k, v in manifest.items() if k != _CHECKSUM_FIELD}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def encode_manifest(manifest: dict[str, Any]) -> bytes:
    """Readable JSON with a checksum of its own canonical form, its composite shapes folded (see :func:`_folded`);
    :class:`ManifestTooLargeError` where a reader would refuse it (every writer encodes here: the archive's commit,
    a removal's marks), so nothing unreadable is ever written."""
    folded = _folded(manifest)
    sealed = {**folded, _CHECKSUM_FIELD: hashlib.sha256(_canonical(folded)).hexdigest()}
    data = (json.dumps(sealed, indent=2, ensure_ascii=False) + "\n").encode()
    if len(data) > MAX_SMALL_OBJECT_BYTES:
        _refuse_too_large(manifest, f"its manifest would be {len(data):,} bytes, more than any reader accepts "
                                    f"({MAX_SMALL_OBJECT_BYTES:,} bytes at most)")
    return data


def _refuse_too_large(manifest: dict[str, Any], cause: str) -> None:
    """Raise :class:`ManifestTooLargeError` for ``manifest``, naming its table, day and ``cause``."""
    table, day = str(manifest.get("table")), str(manifest.get("day"))
    raise ManifestTooLargeError(
        f"{table} {day}: {cause}; nothing was committed (list, verify and restore could not read it)",
        table=table, day=day, retryable=False, every_day=True, cause=cause,
        remedy="archive fewer columns, or columns of narrower composite types (the manifest records each column and "
               "each composite type's fields), e.g. a view selecting them as text or JSON, or split the table; if "
               "neither is wide, report this")


def _folded(manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` with each composite's shape (its type, fields and the nodes below it) recorded once, in a
    ``composites`` table its columns' shapes refer to by index (``{"at": way, "composite": i}``): recorded per
    column, a wide table of one wide type repeated the same field names once per column, megabytes past what any
    reader accepts. Equal subtrees are one entry (by content, so folding never merges two types that differ), an
    entry's references point to earlier entries only, and the result depends only on the shapes' nodes, not their
    order: a decoded manifest (see :func:`_unfolded`) encodes to the same bytes. Unchanged where no column records
    a shape; else of MANIFEST_VERSION."""
    manifest = _unfolded(manifest)  # (one already folded, read as JSON and edited: its references renumbered)
    columns = manifest.get("columns")
    if not isinstance(columns, list) or not any(isinstance(c, dict) and c.get("shape") for c in columns):
        return manifest
    unfolded = sum(len(c["shape"]) for c in columns if isinstance(c, dict) and c.get("shape"))
    if unfolded > MAX_SHAPE_NODES:  # (before folding: what a reader refuses is not worth the time it takes)
        _refuse_too_large(manifest, f"its columns' composite types hold {unfolded:,} nodes, more than a reader "
                                    f"unfolds ({MAX_SHAPE_NODES:,})")
    table: list[dict] = []
    index: dict[str, int] = {}
    folded = [{**c, "shape": _fold_nodes(c["shape"], table, index)}
              if isinstance(c, dict) and c.get("shape") and _ways_unambiguous(c["shape"]) else c for c in columns]
    version = manifest.get("manifest_version")
    return {**manifest, "manifest_version": max(version if isinstance(version, int) else 0, MANIFEST_VERSION),
            "columns": folded, "composites": table}


def _ways_unambiguous(nodes: list[dict]) -> bool:
    """Whether the ways of a column's shape split into their steps unambiguously: a way joins its steps with
    spaces, so under a field whose name holds one (``"a "`` beside ``a``) no prefix tells which node is below
    which, and folding by prefix moved a field under another (the day then read as changed). Such a shape is
    recorded whole, as before the composites table."""
    return not any(" " in str(name) for node in nodes for name in node.get("fields") or ())


def _fold_nodes(nodes: list[dict], table: list[dict], index: dict[str, int]) -> list[dict]:
    """``nodes`` (a shape, its ways from the column) with each outermost composite's subtree replaced by a
    reference to its entry in ``table`` (added there once, ``index`` finding it by content; an entry's own
    entries first). Linear in the nodes: each is placed once under the nearest composite above it, where scanning
    every root found so far per node, and every node per root, took a minute for twelve columns of a 1,600-field
    composite of composites."""
    ordered = sorted(nodes, key=_node_order)
    composites: dict[str, int] = {}
    for number, node in enumerate(ordered):
        if node.get("fields") is not None:
            composites.setdefault(node["at"], number)
    under: dict[int | None, list[int]] = {}  # a composite's number (None: the column) -> the nodes it holds
    for number, node in enumerate(ordered):
        under.setdefault(_holder(node["at"], composites), []).append(number)

    def fold(holder: int | None, root: str) -> list[dict]:
        out: list[dict] = []
        for number in under.get(holder, ()):
            node = ordered[number]
            at = _relative(node["at"], root)
            if node.get("fields") is None or composites[node["at"]] != number:
                out.append({**node, "at": at})
                continue
            entry = {"type": node["type"], "fields": list(node["fields"]), "nodes": fold(number, node["at"])}
            text = json.dumps(entry, sort_keys=True)
            if text not in index:
                index[text] = len(table)
                table.append(entry)
            out.append({"at": at, "composite": index[text]})
        return out

    return fold(None, "")


def _holder(way: str, composites: dict[str, int]) -> int | None:
    """The number of the nearest composite in ``composites`` (by way) that the node at ``way`` is under (not at);
    None for a node under none."""
    while way:
        cut = way.rfind(" ")
        way = way[:cut] if cut >= 0 else ""
        if way in composites:
            return composites[way]
    return None


def _node_order(node: dict) -> tuple[int, str]:
    """A shape node's place: outer ways first (as shape_changes walks them), then by way."""
    return len(node["at"].split()), node["at"]


def _relative(way: str, root: str) -> str:
    """``way`` (under ``root``) as a way from ``root``; :func:`_joined` undoes it."""
    return way[len(root) + 1:] if root else way


def _joined(root: str, way: str) -> str:
    """The way ``way`` from the node at ``root`` as a way from the column."""
    return f"{root} {way}" if root and way else root or way


def _unfolded(manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` with its ``composites`` table (see :func:`_folded`) unfolded into each column's shape, as
    manifests recorded them before the table existed: every reader (restore, verify, compare, the archive run's
    skip) reads columns[].shape alike whichever wrote it. :class:`ManifestError` where the table is not one this
    writes: not a list of entries, a reference to no earlier entry, or more nodes than MAX_SHAPE_NODES."""
    if "composites" not in manifest or not isinstance(manifest["columns"], list):  # (the latter: _shape_problem's)
        return manifest
    table = manifest["composites"]
    if not isinstance(table, list) or not all(isinstance(e, dict) for e in table):
        raise ManifestError("its field composites is not a list of composite types")
    sizes: list[int] = []
    for number, entry in enumerate(table):
        if not (isinstance(entry.get("type"), str) and _is_names(entry.get("fields"))):
            raise ManifestError(f"its composites[{number}] has no type and field names")
        sizes.append(1 + _nodes_size(entry.get("nodes"), sizes, f"composites[{number}]"))
    columns = manifest["columns"]
    shaped = [c for c in columns if isinstance(c, dict) and c.get("shape") is not None]
    total = sum(_nodes_size(c["shape"], sizes, f"columns[{_shown(str(c.get('name')))}].shape") for c in shaped)
    if total > MAX_SHAPE_NODES:
        raise ManifestError(f"its composite shapes unfold to {total:,} nodes, more than any manifest records "
                            f"({MAX_SHAPE_NODES:,})")
    unfolded = [{**c, "shape": sorted(_unfold_nodes(c["shape"], "", table), key=_node_order)}
                if isinstance(c, dict) and c.get("shape") is not None else c for c in columns]
    return {**{k: v for k, v in manifest.items() if k != "composites"}, "columns": unfolded}


def _is_names(value: object) -> bool:
    """Whether ``value`` is a list of field names (strings)."""
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _nodes_size(nodes: object, sizes: list[int], where: str) -> int:
    """How many nodes ``nodes`` (a folded shape) unfold to, its references' entries' sizes in ``sizes`` (the
    entries before it: a reference to any other is refused, so a table cannot refer to itself)."""
    if not isinstance(nodes, list) or not all(isinstance(n, dict) and isinstance(n.get("at"), str) for n in nodes):
        raise ManifestError(f"its field {where} is not a list of nodes, each with a way ('at')")
    total = 0
    for node in nodes:
        ref = node.get("composite")
        if "composite" in node:
            if not (isinstance(ref, int) and not isinstance(ref, bool) and 0 <= ref < len(sizes)):
                raise ManifestError(f"its field {where} refers to composite {ref!r}, not an earlier entry of its "
                                    "composites")
            total += sizes[ref]
        elif not isinstance(node.get("type"), str) or not (node.get("fields") is None or _is_names(node["fields"])):
            raise ManifestError(f"its field {where} has a node without a type (or with fields not names)")
        else:
            total += 1
        if total > MAX_SHAPE_NODES:
            raise ManifestError(f"its field {where} unfolds to more nodes than any manifest records "
                                f"({MAX_SHAPE_NODES:,})")
    return total


def _unfold_nodes(nodes: list[dict], root: str, table: list[dict]) -> list[dict]:
    """The full nodes of ``nodes`` (a folded shape, checked by :func:`_nodes_size`), their ways from the column."""
    out: list[dict] = []
    for node in nodes:
        at = _joined(root, node["at"])
        if "composite" not in node:
            out.append({**node, "at": at})
            continue
        entry = table[node["composite"]]
        out.append({"at": at, "type": entry["type"], "fields": list(entry["fields"])})
        out.extend(_unfold_nodes(entry["nodes"], at, table))
    return out


def decode_manifest(raw: bytes) -> dict[str, Any]:
    """The manifest in ``raw``; :class:`ManifestError` if it is not one or was altered.

    Version 1 manifests (written before the checksum and fingerprint existed) are accepted as they
    are; their ``fingerprint`` is missing, which callers treat as "cannot prove content".
    """
    if isinstance(raw, StandIn) and raw.mark == OVERSIZED:  # (by its type: stored bytes that begin alike are JSON's)
        raise ManifestError(f"{raw.size:,} bytes, larger than any manifest ({MAX_SMALL_OBJECT_BYTES:,} bytes at most): "
                            "not read")
    if isinstance(raw, StandIn):  # (see S3Store.own_damaged)
        raise ManifestError("a copy a failed write of this run's left damaged: it cannot be read")
    if not raw:  # (a zero-byte object another tool left at the key: the store vouched for its emptiness)
        raise ManifestError("it is empty (a zero-byte object, not a manifest)")
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"not valid JSON ({str(exc)[:200]})") from None
    except ValueError:  # a number of more digits than Python converts (4,300): no manifest of ours
        raise ManifestError("not valid JSON (a number too long to read)") from None
    except RecursionError:  # JSON nested deeper than Python's recursion limit: no manifest of ours
        raise ManifestError("not valid JSON (nested too deeply to read)") from None
    if not isinstance(manifest, dict) or "object" not in manifest or "table" not in manifest:
        raise ManifestError("not an archive_pipeline manifest (no 'table' and 'object')")
    try:  # (a version 1's too: no manifest of ours holds a string UTF-8 cannot encode, and no reader expects one)
        canonical = _canonical(manifest)
    except UnicodeEncodeError:  # a lone UTF-16 surrogate escape ("\ud800"): valid JSON, no text
        raise ManifestError("not valid UTF-8 text (a string in it holds a lone UTF-16 surrogate escape): altered or "
                            "damaged") from None
    version = manifest.get("manifest_version")
    if version == 1:  # (no checksum to check; its fields are read as a sealed one's, so checked alike)
        if not isinstance(manifest["object"], dict):
            raise ManifestError("version 1 manifest without an object")
        if problem := _shape_problem(manifest) or _consistency_problem(manifest):
            raise ManifestError(problem)
        return manifest
    if isinstance(version, int) and not isinstance(version, bool) and version > MANIFEST_VERSION:
        writer = manifest.get("archiver") if isinstance(manifest.get("archiver"), dict) else {}
        raise NewerManifestError(f"it was written by a newer archive_pipeline ({writer.get('version', '?')}, "
                                 f"manifest_version {version}); this one reads manifest versions 1 to "
                                 f"{MANIFEST_VERSION}")
    if version not in (2, _PLAIN_VERSION, MANIFEST_VERSION):
        raise ManifestError(f"unknown manifest_version {version!r}")
    recorded = manifest.get(_CHECKSUM_FIELD)
    if recorded != hashlib.sha256(canonical).hexdigest():
        raise ManifestError("its manifest_sha256 does not match its content (altered or damaged)")
    manifest = _unfolded(manifest)
    if not manifest.get("empty") and not isinstance(manifest["object"], dict):
        raise ManifestError("a non-empty day without an object")
    if problem := _shape_problem(manifest) or _consistency_problem(manifest):
        raise ManifestError(problem)
    return manifest


def _consistency_problem(manifest: dict[str, Any]) -> str | None:
    """What makes a sealed manifest contradict itself, or None. Its checksum proves only that nobody altered
    it since it was sealed, and anyone can seal an edit: an "empty" day that records rows, or rows the
    fingerprint does not count, was proven by its source and its source rows removed, with no archive
    holding them; an absurd generation made an overwrite write over the archived object."""
    rows, empty, obj = manifest["rows"], manifest.get("empty", False), manifest["object"]
    if rows < 0:
        return f"its rows field is {rows}, a negative count"
    if not isinstance(empty, bool):
        return f"its field empty is {empty!r}, not true or false"
    if empty and (rows or obj is not None):
        return f"it says the day is empty, yet records {rows:,} rows" + (" and an object" if obj is not None else "")
    if isinstance(obj, dict) and obj["bytes"] < 0:
        return f"its field object.bytes is {obj['bytes']}, a negative size"
    if isinstance(obj, dict) and rows and not obj["bytes"]:
        # (no format holds a row in no bytes: a zero-byte object left at the key, the manifest matched to it)
        return f"its object holds 0 bytes, which cannot hold the {rows:,} rows it records"
    recorded = manifest.get("fingerprint")
    if recorded is not None:
        if not isinstance(recorded, str):
            return f"its fingerprint is {recorded!r}, not a string"
        try:
            counted = Fingerprint.parse(recorded).rows
        except (ValueError, TypeError):
            counted = None
        if recorded.rsplit(":", 2)[0] in ALGORITHMS and not re.fullmatch(r"[^:]+:[0-9]+:-?[0-9]+", recorded):
            # (an algorithm this version does not compute, a newer or a retired one, is read as it was written)
            return f"its fingerprint {recorded[:100]!r} is not <algorithm>:<rows>:<sum of hashes>"
        if counted is not None and counted != rows:
            return f"its fingerprint counts {counted:,} rows, its rows field {rows:,}"
    generation = manifest.get("generation", 1)
    if not isinstance(generation, int) or isinstance(generation, bool) or generation < 1:
        return f"its generation is {generation!r}, not a number from 1"
    if manifest.get("format") not in keys.FORMAT_EXTENSIONS:
        return f"its format {manifest.get('format')!r} is none of {', '.join(keys.FORMAT_EXTENSIONS)}"
    if manifest.get("compression") not in keys.CODEC_EXTENSIONS:
        return f"its compression {manifest.get('compression')!r} is none of {', '.join(keys.CODEC_EXTENSIONS)}"
    for name, kind, item in (("kept", list, dict), ("superseded", list, str)):
        value = manifest.get(name, [])
        if not isinstance(value, kind) or not all(isinstance(v, item) and (item is str or isinstance(v.get("key"), str))
                                                  for v in value):
            return f"its field {name} is {value!r}, not a list of " + ("keys" if item is str else "objects with a key")
    removed = manifest.get("removed")
    if removed is not None and not isinstance(removed, dict):
        return f"its field removed (the removal mark) is {removed!r}, not an object"
    definition = manifest.get("table_definition")
    if definition is not None and not (isinstance(definition, dict) and isinstance(definition.get("columns", []), list)
                                       and all(isinstance(c, dict) for c in definition.get("columns", []))):
        return "its table_definition is not an object with a list of columns"
    return None


def foreign_objects(manifest: dict[str, Any], key: str) -> str | None:
    """Why the objects ``manifest`` (the manifest beside the day's data key ``key``) names are not the day's
    own, or None: its object, and what it keeps and retires, must be ``key`` or one of its generations, the
    object the generation the manifest records. A manifest that names another day's object would have that
    day's rows skipped onto, proven and restored as this day's, or deleted as this day's old generation."""
    pattern = keys.generation_pattern(key)
    obj = manifest.get("object")
    if isinstance(obj, dict):
        found = pattern.fullmatch(obj.get("key", ""))
        if found is None:
            return f"its object {obj.get('key')!r} is not this day's ({key}, or a generation of it)"
        if int(found.group(1) or 1) != manifest.get("generation", 1):
            return f"its object {obj['key']!r} is not its generation's ({manifest.get('generation', 1)})"
    named = [k.get("key") for k in manifest.get("kept", []) if isinstance(k, dict)]
    named += [k for k in manifest.get("superseded", []) if isinstance(k, str)]
    strays = [k for k in named if not pattern.fullmatch(k or "")]
    if strays:
        return f"it names {', '.join(map(repr, strays))} among the day's objects, which are not this day's ({key})"
    return None


_FIELDS = {"table": str, "day": str, "rows": int, "format": str, "compression": str, "columns": list}
_OBJECT_FIELDS = {"key": str, "bytes": int, "md5": str, "uri": str}  # (uri: every version wrote it; messages index it)
_KINDS = {str: "a string", int: "an integer", list: "a list"}
MAX_COLUMNS = 1600  # PostgreSQL's limit of columns in a table (MaxHeapAttributeNumber)
_KIND_NAMES = {**_KINDS, dict: "an object"}


def _shape_problem(manifest: dict[str, Any]) -> str | None:
    """What makes a sealed manifest unusable (a field missing or of another type), or None: its checksum
    proves only that it was not altered since it was sealed, and every reader indexes these fields (a
    KeyError or TypeError in the middle of a restore or proof says nothing of the manifest)."""
    shapes = [(_FIELDS, "", manifest)] + ([(_OBJECT_FIELDS, "object.", manifest["object"])]
                                          if isinstance(manifest["object"], dict) else [])
    for fields, where, within in shapes:
        for name, kind in fields.items():
            value = within.get(name)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                return f"its field {where}{name} is {value!r}, not {_KINDS[kind]}"
    if not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in manifest["columns"]):
        return "its columns are not each an object with a name"
    if len(manifest["columns"]) > MAX_COLUMNS:  # (every reader's DDL and messages would be built from them)
        return (f"it records {len(manifest['columns']):,} columns, more than a PostgreSQL table can have "
                f"({MAX_COLUMNS:,})")
    if problem := _columns_problem(manifest["columns"], "columns", _source_encoding(manifest)):
        return problem
    if not manifest["columns"] and (manifest["rows"] or manifest["object"] is not None):
        # (a table without columns is refused before it is archived: no format's restore writes its rows back)
        return f"it records no column for its {manifest['rows']:,} rows"
    return _optional_shape_problem(manifest)


def _columns_problem(columns: list[dict], where: str, encoding: str) -> str | None:
    """A column named twice in ``columns`` (a manifest's columns[], or its table definition's), or None: no table
    has two columns of one name, and every restore, proof and removal builds its SQL from these names (a
    DuplicateColumn there read as "the server rejected the archiver's SQL ... report it"). Two names are one where
    PostgreSQL keeps the same 63 bytes of them, in the source's ``encoding`` (a name is not refused for its length
    alone: a LATIN1 source's 63-byte name is longer in UTF-8, and restore says so where it matters)."""
    seen: dict[str, str] = {}
    for column in columns:
        name = column["name"]
        kept = _kept_name(name, encoding)
        if kept in seen:
            if seen[kept] == name:
                return f"its {where} name {_shown(name)} twice"
            return (f"its {where} name {_shown(seen[kept])} and {_shown(name)}, one name to PostgreSQL, which keeps "
                    f"{MAX_IDENTIFIER_BYTES} bytes of a name ({_shown(kept)} in {encoding})")
        seen[kept] = name
    return None


def _source_encoding(manifest: dict[str, Any]) -> str:
    """The source database's encoding as the manifest records it, UTF8 where it does not (older versions, and
    the encoding of every database they could archive from without a note)."""
    source = manifest.get("source")
    encoding = source.get("encoding") if isinstance(source, dict) else None
    return encoding if isinstance(encoding, str) and encoding else "UTF8"


def _kept_name(name: str, encoding: str) -> str:
    """What PostgreSQL keeps of ``name`` in a database of ``encoding``: its first 63 bytes, cut at a character's
    end. SQL_ASCII keeps a name's UTF-8 bytes as sent. Where Python cannot count the bytes as the server does (no
    codec: EUC_TW, MULE_INTERNAL; or one narrower than the server's: EUC_JP's circled digits), the name as written:
    a cut counted in another encoding would call two names the server keeps whole one, and refuse its own archive."""
    if encoding.upper().replace("-", "").replace("_", "") in ("SQLASCII", "UTF8", "UNICODE", ""):
        codec = "utf-8"
        encoded = name[:MAX_IDENTIFIER_BYTES + 1].encode("utf-8", "surrogatepass")
    else:
        try:
            codec = pg2pyenc(encoding.encode())
            encoded = name[:MAX_IDENTIFIER_BYTES + 1].encode(codec)
        except (psycopg.NotSupportedError, UnicodeEncodeError, LookupError):
            return name
    if len(encoded) <= MAX_IDENTIFIER_BYTES:  # (it holds all of a longer name's first 64 characters: 64 bytes or more)
        return name
    return encoded[:MAX_IDENTIFIER_BYTES].decode(codec, "ignore")


def _shown(name: str) -> str:
    """A column name for a message: as it is, or its first 80 characters of a longer one (a forged manifest's name
    may be megabytes long)."""
    return repr(name) if len(name) <= 80 else f"{name[:80]!r}... ({len(name):,} characters)"


def _optional_shape_problem(manifest: dict[str, Any]) -> str | None:
    """:func:`_shape_problem` for the fields an older manifest may lack, where present: each reader indexes them
    as written (list reads the snapshot's time, restore the definition's partition and parents, the proof the
    columns by name), and a resealed manifest with one of another type failed as "a bug in archive_pipeline"."""
    for name, kind in (("source", dict), ("archived_at", str), ("source_relation", str), ("table_definition", dict),
                       ("timezone", str), ("granularity", str), ("day_column", str)):
        if manifest.get(name) is not None and not isinstance(manifest[name], kind):
            return f"its field {name} is {manifest[name]!r}, not {_KIND_NAMES[kind]}"
    size = manifest.get("uncompressed_bytes")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        return f"its field uncompressed_bytes is {size!r}, not a whole number of bytes"
    encoding = (manifest.get("object") or {}).get("content_encoding")
    if encoding is not None and not (isinstance(encoding, str) and re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+",
                                                                               encoding)):
        return f"its field object.content_encoding is {encoding!r}, not an HTTP token (it is sent as a header)"
    if problem := _times_problem(manifest) or _source_problem(manifest) or _archiver_problem(manifest):
        return problem
    if problem := _mark_problem(manifest.get("removed")):
        return problem
    definition = manifest.get("table_definition") or {}
    for name, kind in (("columns", list), ("partition", dict), ("parents", list)):
        if definition.get(name) is not None and not isinstance(definition[name], kind):
            return f"its field table_definition.{name} is {definition[name]!r}, not {_KIND_NAMES[kind]}"
    key = definition.get("primary_key")
    if key is not None and not (isinstance(key, list) and all(isinstance(name, str) for name in key)):
        return f"its field table_definition.primary_key is {key!r}, not a list of column names"
    columns = [*manifest["columns"], *(definition.get("columns") or [])]
    if not all(isinstance(c, dict) and isinstance(c.get("name"), str) and "\x00" not in c["name"] for c in columns):
        return "its columns (or its table definition's) are not each an object with a name (without NUL)"
    for column in manifest["columns"]:
        for name in ("output_type", "pg_type", "base_type"):  # (read by name where present: the run's metadata, the proof's types)
            # (pg_type is required: every version wrote it, and a proof or restore without a definition reads it)
            if (name in column or name == "pg_type") and not isinstance(column.get(name), str):
                return f"its field columns[{column['name']!r}].{name} is {column.get(name)!r}, not a string"
        if "nullable" in column and not isinstance(column["nullable"], bool):  # (every version wrote it so)
            return f"its field columns[{column['name']!r}].nullable is {column['nullable']!r}, not true or false"
        numbers = column.get("numbers")
        if numbers is not None and not (isinstance(numbers, list) and all(
                isinstance(n, dict) and isinstance(n.get("steps"), list) and isinstance(n.get("type"), str)
                for n in numbers)):
            return f"its field columns[{column['name']!r}].numbers is {numbers!r}, not a list of steps and types"
    if problem := _definition_problem(manifest):
        return problem
    if manifest.get("timezone") is not None or manifest.get("granularity") is not None:
        try:
            manifest_period(manifest)
        except (ValueError, KeyError, TypeError) as exc:  # (a PeriodError is a ValueError)
            return f"its period cannot be read ({exc})"
    return None


def _times_problem(manifest: dict[str, Any]) -> str | None:
    """archived_at, source.snapshot_at and the removal mark's at and settled_at, where present, as ISO times with
    their offset: the skip, list, removal and the runs' metadata parse them, a resealed "yesterday" failed a skip
    as "an unexpected error (ValueError)", and a time without its zone one of Dagster's (MetadataValue.timestamp
    refuses a naive time: a CheckError naming nothing). Every archive_pipeline wrote them with their offset
    (PostgreSQL's now(), datetime.now(UTC)), so a time without one is an edit, whose zone nobody knows."""
    if not isinstance((manifest.get("source") or {}).get("snapshot_at"), str):  # (every version wrote it)
        return f"its field source.snapshot_at is {(manifest.get('source') or {}).get('snapshot_at')!r}, not a time"
    mark = manifest.get("removed") if isinstance(manifest.get("removed"), dict) else {}
    for where, value in (("its field archived_at", manifest.get("archived_at")),
                         ("its field source.snapshot_at", (manifest.get("source") or {}).get("snapshot_at")),
                         ("its removal mark's field at", mark.get("at")),
                         ("its removal mark's field settled_at", mark.get("settled_at"))):
        if value is not None and (problem := _time_problem(value)):
            return f"{where} is {problem}"
    return None


def _time_problem(value: object) -> str | None:
    """What keeps ``value`` from being a recorded time (ISO 8601 with its offset), or None."""
    if not isinstance(value, str):
        return f"{value!r}, not a string"
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return f"{value[:100]!r}, not a time (ISO 8601)"
    if parsed.utcoffset() is None:
        return f"{value[:100]!r}, a time without its offset (from UTC), which archive_pipeline always writes"
    try:  # (every reader orders it as a UTC instant, see _instant: year 1 ahead of UTC is none, nor 9999 behind it)
        parsed.astimezone(dt.UTC)
    except OverflowError:
        return f"{value[:100]!r}, not a time in UTC's years 1 to 9999 (its offset moves it past them)"
    return None


def _mark_problem(mark: object) -> str | None:
    """The removal mark's fields, where present, as its writer (lifecycle.remove_day) writes them: each removal,
    settling and restore reads them as such. Its transaction id (``xid``, str(txid_current()), or a number) is
    asked of PostgreSQL (txid_status): a list failed prune as "an unexpected error (TypeError)"; ``system`` is
    compared with this server's identifier, and ``rows`` counted (its times: :func:`_times_problem`)."""
    if not isinstance(mark, dict):  # (its type is _consistency_problem's)
        return None
    for name in ("state", "action", "relation", "by", "system", "settled_because"):
        if mark.get(name) is not None and not isinstance(mark[name], str):
            return f"its removal mark's field {name} is {mark[name]!r}, not a string"
    xid = mark.get("xid")
    if xid is not None and not (_count(xid) or isinstance(xid, str) and re.fullmatch(r"[0-9]{1,20}", xid)):
        return f"its removal mark's field xid is {repr(xid)[:100]}, not a transaction id (a string of digits)"
    if mark.get("rows") is not None and not _count(mark["rows"]):
        return f"its removal mark's field rows is {repr(mark['rows'])[:100]}, not a count of rows"
    return None


def _count(value: object) -> bool:
    """Whether ``value`` is a whole number from 0 (not a boolean, which JSON and Python read as one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _source_problem(manifest: dict[str, Any]) -> str | None:
    """The source's identity, where recorded, as text: compared with this database's, shown in messages and the
    run's metadata (its server version), and its encoding decides how a restore reads the rows."""
    source = manifest.get("source") or {}
    for name in ("database", "system_identifier", "server_version", "encoding"):
        if source.get(name) is not None and not isinstance(source[name], str):
            return f"its field source.{name} is {source[name]!r}, not a string"
    return None


def _archiver_problem(manifest: dict[str, Any]) -> str | None:
    """The writer, where recorded: an object whose name and version (where present) are strings. A writer named as
    one string (``"archive_pipeline 0.9"``, resealed by a migration tool) is only shown, and is read as "unknown"
    (see archive._writer_version): such a manifest stays readable, as it was before writers were checked."""
    archiver = manifest.get("archiver")
    if archiver is None or isinstance(archiver, str):
        return None
    if not isinstance(archiver, dict):
        return f"its field archiver is {archiver!r}, not an object"
    for name in ("name", "version"):
        if archiver.get(name) is not None and not isinstance(archiver[name], str):
            return f"its field archiver.{name} is {archiver[name]!r}, not a string"
    return None


def _definition_problem(manifest: dict[str, Any]) -> str | None:
    """The table definition's columns, where it has any: the ones columns[] records (a restore into a new table
    creates them, then inserts columns[]: a definition without them made the table the restore then failed to
    fill, and the removal's proof, which reads columns[], let the day go), each once, of a type named by a string
    (PostgreSQL's type-name parser is asked about it: a number failed as "the server rejected the archiver's
    SQL") and NOT NULL or not."""
    definition = manifest.get("table_definition") or {}
    if not definition:  # (none recorded: restore derives it from columns[], as for a version 1 manifest)
        return None
    columns = definition.get("columns")
    if not isinstance(columns, list):
        return f"its field table_definition.columns is {columns!r}, not a list"
    if problem := _columns_problem(columns, "table definition's columns", _source_encoding(manifest)):
        return problem
    for column in columns:
        if not isinstance(column.get("type"), str):
            return (f"its field table_definition.columns[{column['name']!r}].type is {column.get('type')!r}, "
                    "not a string")
        if column.get("not_null") is not None and not isinstance(column["not_null"], bool):
            return (f"its field table_definition.columns[{column['name']!r}].not_null is {column['not_null']!r}, "
                    "not true or false")
    defined, recorded = {c["name"] for c in columns}, {c["name"] for c in manifest["columns"]}
    if defined != recorded:
        missing, extra = sorted(recorded - defined), sorted(defined - recorded)
        return ("its table definition does not define the columns it records: "
                + "; ".join([*([f"it lacks {_names(missing)}"] if missing else []),
                             *([f"it adds {_names(extra)}"] if extra else [])]))
    return _retyped_problem(columns, manifest["columns"])


def _retyped_problem(defined: list[dict], recorded: list[dict]) -> str | None:
    """A column the table definition types (or makes NOT NULL) otherwise than columns[] records it, or None. Every
    writer builds both from the same columns (format_type's text, spelled alike), and the proof and the removal
    read columns[] while a restore into a new table creates the definition's: a resealed ``amount text`` for a
    ``numeric(12,2)`` let the day go, proven, and restored green as text."""
    by_name = {c["name"]: c for c in recorded}
    for column in defined:
        archived = by_name[column["name"]]
        if column["type"] != archived["pg_type"]:
            return (f"its table definition types {_shown(column['name'])} as {column['type'][:100]!r}, its columns[] "
                    f"as {archived['pg_type'][:100]!r}")
        nullable = archived.get("nullable")
        if isinstance(column.get("not_null"), bool) and isinstance(nullable, bool) and column["not_null"] == nullable:
            return (f"its table definition makes {_shown(column['name'])} "
                    f"{'NOT NULL' if column['not_null'] else 'nullable'}, its columns[] "
                    f"{'nullable' if nullable else 'NOT NULL'}")
    return None


def _names(names: list[str]) -> str:
    """Column names for a message, the first ten of a wide table's."""
    return ", ".join(map(repr, names[:10])) + (f" and {len(names) - 10:,} more" if len(names) > 10 else "")


def foreign_manifest(manifest: dict, table: str, day: str) -> str | None:
    """Why ``manifest``, read at the key of ``table``'s ``day`` (the period's ISO form), is not that
    table-day's archive, or None: a manifest copied from another day's key, or written by another table
    (or configuration) that renders the same key, describes other rows however intact it is."""
    if manifest.get("table") == table and manifest.get("day") == day:
        return None
    return (f"it is the manifest of table {manifest.get('table')!r} for {manifest.get('day')}, not of {table!r} for "
            f"{day} (copied from another key, or written by another table or configuration that renders this key)")


def another_period(manifest: dict, period: Period) -> str | None:
    """How the period ``manifest`` holds differs from ``period``, the table's for the same key now (its granularity
    or time zone changed since: another period's rows), or None (the same, or a manifest that does not record it).
    A zone renamed to another name of the same zone (Europe/Kiev, Europe/Kyiv) keeps the period: compared by its
    instants where the manifest records them."""
    # (a manifest written before periods were recorded is a UTC day, as manifest_period reads it)
    then = (manifest.get("granularity") or "daily", manifest.get("timezone") or "UTC")
    if then == (period.granularity, period.timezone):
        return None
    bounds = manifest.get("period") or {}
    if then[0] == period.granularity and manifest.get("day") == period.isoformat() \
            and _same_wall_clock(manifest, bounds, period):
        return None  # a date or timestamp day column: its rows are wall-clock values, in any zone (_bound_values)
    try:  # by instants: the bounds it records, or (written before they were) its day in its zone (Etc/UTC is UTC)
        held = (dt.datetime.fromisoformat(bounds["start"]), dt.datetime.fromisoformat(bounds["end"])) if bounds \
            else (manifest_period(manifest).start, manifest_period(manifest).end)
        # as UTC instants: aware times of two zones never compare equal at an ambiguous wall time (PEP 495), so
        # Europe/Kiev's repeated autumn hour was "another period" of Europe/Kyiv's
        same = then[0] == period.granularity and tuple(t.astimezone(dt.UTC) for t in held) == (
            period.start.astimezone(dt.UTC), period.end.astimezone(dt.UTC))
    except (KeyError, TypeError, ValueError):
        same = False
    if same:
        return None
    return (f"its archive holds the {then[0]} period {manifest.get('day')} in {then[1]}, and the table is now "
            f"configured as {period.granularity} in {period.timezone}: another period with the same key, not this "
            "one's rows")


def _same_dates(bounds: dict, period: Period) -> bool:
    """Whether the recorded bounds (if any) span the same calendar dates as ``period``: a day whose zone skipped the
    next date (Pacific/Apia's 2011-12-29 ran to 2011-12-31) held two dates' rows, another period than UTC's."""
    try:
        start, end = dt.datetime.fromisoformat(bounds["start"]), dt.datetime.fromisoformat(bounds["end"])
    except (KeyError, TypeError, ValueError):
        return True  # (written before bounds were recorded: a date day as it always was)
    return (start.date(), end.date()) == (period.start.date(), period.end.date())


def _same_wall_clock(manifest: dict, bounds: dict, period: Period) -> bool:
    """Whether the archived period (same key and granularity, another zone) picked the same rows as ``period``
    because its day column holds wall-clock values (``date``, ``timestamp`` without time zone), which pick a
    period's rows by its wall-clock bounds in any zone (``Period.wall_bounds``, ``source._bound_values``). A day or
    month: where the recorded bounds span the same dates (:func:`_same_dates`); an hour (of a ``timestamp``) only
    where its wall-clock bounds are the same -- a fall-back night's first 02:00 holds no wall-clock value (all go to
    the second), so it is not UTC's 02:00 hour."""
    kind = _wall_clock_type(manifest)
    if kind is None or (period.granularity == "hourly" and kind != "timestamp"):
        return False
    if period.granularity != "hourly":
        return _same_dates(bounds, period)
    held = _held_period(manifest)
    return held is not None and held.wall_bounds == period.wall_bounds


def _held_period(manifest: dict) -> Period | None:
    """The period ``manifest`` holds, in its recorded granularity and zone: the one starting at its recorded start
    (read in its zone: the fold says which occurrence of a repeated hour it was), or (written before bounds were
    recorded) its key's; None where it names none (a zone or key no longer known, bounds unreadable)."""
    bounds = manifest.get("period") or {}
    try:
        return period_containing(manifest.get("granularity") or "daily", manifest.get("timezone") or "UTC",
                                 dt.datetime.fromisoformat(bounds["start"])) if bounds else manifest_period(manifest)
    except (KeyError, TypeError, ValueError):  # (PeriodError is a ValueError)
        return None


def holds_rows_of(manifest: dict, period: Period) -> bool:
    """Whether the period ``manifest`` holds (of another zone: the table's time zone changed since) took rows of
    ``period``: their instants overlap, or, for a day column of wall-clock values (``date``, ``timestamp``), their
    wall-clock bounds do (``source._bound_values``: such a day is its local dates in any zone, so the UTC day before
    a Berlin day holds none of its rows). A record that names no period it can be read as (a zone no longer known)
    is not said to: a neighbouring period's removal is no reason to refuse this one."""
    held = _held_period(manifest)
    if held is None:
        return False
    if _wall_clock_type(manifest) is not None:
        (start, end), (first, after) = held.wall_bounds, period.wall_bounds
    else:
        (start, end), (first, after) = (held.utc_start, held.utc_end), (period.utc_start, period.utc_end)
    return max(start, first) < min(end, after)


# the archived day column's type as the manifest records it: its base type (through domains), or (written before
# base types were recorded) its format_type text
_WALL_CLOCK_TYPES = {"date": "date", "timestamp": "timestamp"}
_WALL_CLOCK_TEXT = re.compile(r"timestamp(?:\(\d+\))? without time zone")


def _wall_clock_type(manifest: dict) -> str | None:
    """``date`` or ``timestamp`` where the archived day column holds wall-clock values (either type, or a domain
    over one), else None (``timestamptz``: instants, whose period in another zone is other rows)."""
    for c in manifest.get("columns") or ():
        if not isinstance(c, dict) or c.get("name") != manifest.get("day_column"):
            continue
        for text in (c.get("base_type"), c.get("pg_type")):
            if isinstance(text, str) and (text in _WALL_CLOCK_TYPES or _WALL_CLOCK_TEXT.fullmatch(text)):
                return _WALL_CLOCK_TYPES.get(text, "timestamp")
    return None


def layout_change(manifest: dict, period: Period, day_column: str | None) -> str | None:
    """How the configuration changed since ``manifest`` was archived so that its rows are not this period's
    rows as the table is configured now (another zone or granularity: :func:`another_period`; another
    day_column: other rows pick the day), or None: what a comparison with the source must say, rather than
    "rows changed in PostgreSQL", which sends the operator looking for an edit nobody made."""
    other = another_period(manifest, period)
    if other is not None:
        return other
    then = manifest.get("day_column")
    if then is not None and day_column is not None and then != day_column:
        return (f"its archive holds the rows whose {then!r} falls in {manifest.get('day')}, and the table's "
                f"day_column is {day_column!r} now: other rows are the day's, not rows changed in the source")
    return None


def owned(manifest: dict, table: str, day: str, key: str | None = None) -> dict:
    """``manifest`` if it is the archive of ``table``'s ``day`` (the period's ISO form); else
    :class:`ForeignManifestError`. Every reader that acts on a day's manifest (list, compare, verify,
    restore, prune, the asset checks) asks this, so none proves, restores, marks or removes one
    table-day on the strength of another's archive. With the day's data ``key``, the objects it names
    must be the day's own too (see :func:`foreign_objects`), else :class:`ManifestError`."""
    if problem := foreign_manifest(manifest, table, day):
        raise ForeignManifestError(problem)
    if key is not None and (problem := foreign_objects(manifest, key)):
        raise ManifestError(problem)
    return manifest


def stored_object_problems(head: dict, manifest: dict) -> list[str]:
    """How the stored object (its HEAD) differs from the one its manifest describes."""
    obj = manifest["object"]
    problems = []
    recorded = obj.get("bytes")
    if head["ContentLength"] != recorded:  # a number as the other sizes print; anything else as it is
        shown = f"{recorded:,}" if isinstance(recorded, int) and not isinstance(recorded, bool) else repr(recorded)
        problems.append(f"size: recorded {shown} bytes, stored {head['ContentLength']:,}")
    stored = etag_text(head["ETag"])
    # a multipart object copied onto itself (a storage class changed: the console, a Batch Operations job) is
    # stored again as one part, whose ETag is then its MD5: the recorded MD5 itself, the same bytes
    copied = stored == obj.get("md5") and head["ContentLength"] == recorded
    if obj.get("etag") and stored != etag_text(obj["etag"]) and not copied:
        problems.append(f"ETag: stored {head['ETag']}, manifest {obj['etag']} (object replaced?)")
    return problems


def object_key(manifest: dict | None) -> str | None:
    """The key of the object ``manifest`` names (None for an empty day's, or no manifest)."""
    obj = manifest.get("object") if manifest else None
    return obj.get("key") if obj else None


def removal_state(manifest: dict | None) -> str | None:
    """The manifest's removal mark: "pending", "done", or None (never removed)."""
    return ((manifest or {}).get("removed") or {}).get("state")


def manifest_bytes(store, manifest_key: str) -> bytes | None:
    """The stored bytes at ``manifest_key`` (None: none there), verified against the store's checksum where it
    keeps one (``get_verified_bytes``; a test's or an older store object may only have ``get_bytes_or_none``)."""
    return (getattr(store, "get_verified_bytes", None) or store.get_bytes_or_none)(manifest_key)


def decoded_manifest(store, manifest_key: str) -> dict | None:
    """The manifest at ``manifest_key`` decoded, or None if there is none. One that does not decode is read
    again before it is called damaged: without MD5 ETags (``verify_etags: false``, SSE-KMS) or a checksum the
    store keeps, nothing vouches for the bytes, and one byte flipped on the way made an intact archive's
    manifest "untrusted" for good (a failed proof, a refused restore or removal). Two reads that differ are
    a failed read (retryable); the same bytes twice are the store's."""
    from archive_pipeline.core.store import DownloadError  # (the store knows nothing of manifests)

    raw = manifest_bytes(store, manifest_key)
    if raw is None:
        return None
    try:
        manifest = decode_manifest(raw)
    except ManifestError:
        again = manifest_bytes(store, manifest_key)
        if again is not None and again != raw:
            raise DownloadError(f"reading {store.uri(manifest_key)} gave two different answers (damaged on the way); "
                                "the run will be retried", retryable=True,
                                cause="the store's answer was damaged on the way",
                                remedy="retried automatically; if it persists, check the network path to the store"
                                ) from None
        raise
    return manifest


def archived_encoding(conn, manifest: dict) -> str | None:
    """The encoding of the database the day was archived from: the manifest's, or (a manifest an older version
    wrote records none) ``conn``'s, where ``conn`` is that very database (its name and system identifier)."""
    source = manifest.get("source") or {}
    if source.get("encoding"):
        return source["encoding"]
    database, system, _, encoding = server_identity(conn)
    same = source.get("database") == database and (not source.get("system_identifier") or not system
                                                    or source["system_identifier"] == system)
    return encoding if same else None


def under_another_format(store, spec, day, listed: set[str] | None = None, *, asked_one_by_one: bool = True,
                         identity: Whose = None) -> tuple[str, dict] | None:
    """(key, manifest) of ``spec``'s archive of ``day`` under another format's or codec's key (written before the
    table's format or compression changed; with ``{ext}`` in the template that moves the day's key), the day's
    current one where there are several (see :func:`current_archive`); None if there is none. ``listed``: the keys
    a listing already found (one LIST of the day's prefix otherwise; where that fails, each former key's manifest is
    asked for, unless ``asked_one_by_one`` is off: the listing's error is raised). A damaged manifest there raises
    its ManifestError where it could be the current one (see :func:`day_archive`). ``identity``: whose database the
    reader reads (see :func:`day_archive`)."""
    found = day_archive(store, spec, day, "", None, listed, asked_one_by_one=asked_one_by_one,
                        identity=identity)  # (only the others)
    return found if found[1] is not None else None


def day_archive(store, spec, day, key: str, manifest: dict | None, listed: set[str] | None = None, *,
                asked_one_by_one: bool = True, identity: Whose = None) -> tuple[str, dict | None]:
    """(key, manifest) of the day's current archive: ``manifest`` (read at its rendered ``key``; None if there is
    none) or one under another format's or codec's key, whichever :func:`current_archive` picks. Not the rendered
    key's alone: a format changed and changed back leaves the day's newer archive (the one its removal was proven
    against, say) under the other format, and the one at the rendered key is then a superseded one. The archive
    run, restore, list, compare, verify and a removal read the day through this; ``listed`` and
    ``asked_one_by_one``: see :func:`under_another_format`.

    ``identity``: the database the reader reads (see :data:`Whose`). An archive under another format's key that
    another database wrote (:func:`of_another_source`) is not the day's: two deployments archiving the table from
    their own databases into one bucket and prefix, configured with other formats, have keys of a day that differ
    only by the extension, and each took the other's archive (or removal) for its own former format's (a restore put
    back the other's rows). The one at the rendered ``key`` is taken whoever wrote it: its own rules (the archive
    run's overwrite, the removal's lifecycle.refuse_other_cluster) decide what another database's archive there
    means. A role that may not read pg_control_system() records no system identifier: the database's name alone
    tells then (:func:`same_source`).

    A manifest under another format's key that fails its checks is not the day's current archive where what it
    still reads as (its JSON) shows it older than the one chosen, as the archive run, which never skips onto it,
    has it: left out, with a warning, so a damaged superseded manifest does not make an intact archive unreadable.
    Where it could be the current one (it says it is later, or a removal, or says nothing readable, or there is
    no other), its ManifestError is raised, naming its key (``key``): an older archive is not read in its place.

    A manifest the listing this looks with shows (``listed``, or the day's own) that reads as absent, at ``key`` or
    under another format, is no "no archive there": the store contradicts itself (a lagging replica, a caching
    gateway), and ``S3Store.confirm_missing`` raises its retryable DownloadError. Taken as absent, the day was
    "without an archive" for a removal, left out of a verify, and missing from a restore (no request: that listing
    tells; where none was made, a read that finds nothing is believed, as before)."""
    found, damaged, shown = _other_format_archives(store, spec, day, listed, asked_one_by_one,
                                                   key if manifest is not None else None, identity)
    if manifest is None and key and shown is not None:
        store.confirm_missing(keys.manifest_key(key), MISSING_ON_READ, shown)
    current = current_archive([*([(key, manifest)] if manifest is not None else []), *found])
    for other, loose, exc in damaged:
        if current is None or _could_be_later(loose, other, current):
            exc.key = other
            raise exc
        log.warning("%s %s: the manifest %s fails its checks (%s) and records an archive older than the day's "
                    "current one, %s: left out", spec.name, as_period(spec.granularity, spec.timezone, day),
                    store.uri(keys.manifest_key(other)), exc.message, store.uri(keys.manifest_key(current[0])))
    return current or (key, manifest)


def _could_be_later(loose: dict | None, key: str, current: tuple[str, dict]) -> bool:
    """Whether a damaged manifest, read loosely as ``loose`` (None: not even JSON), could be the day's current
    archive rather than ``current``: :func:`current_archive` picks it, or it tells no time it was committed."""
    if loose is None:
        return True
    with contextlib.suppress(TypeError, ValueError, AttributeError, OverflowError):  # (a generation of 1e999)
        when = committed_at(loose)[0]
        return when == _EARLIEST or current_archive([current, (key, loose)])[0] == key
    return True


def current_archive(found: list[tuple[str, dict]]) -> tuple[str, dict] | None:
    """Of a day's archives under its current and former format keys, (key, manifest), the one that is the day's
    now, or None: the one whose record of the day was committed last (:func:`committed_at`), not whichever sits at
    the key the table's settings render now. A removal recorded in any of them governs the day: its mark is the
    last thing committed of it, unless rows of the day came back and were archived since (an archive of no rows
    never outranks a removal: it is an emptied source's, the removed rows are in the marked one). The archive run
    (archive._Archiving), restore, list and compare all choose by this."""
    if any(manifest.get("removed") for _, manifest in found):
        found = [(key, m) for key, m in found if m.get("removed") or not m.get("empty") and m.get("rows")]
    return max(found, key=lambda pair: committed_at(pair[1]), default=None)


def committed_at(manifest: dict) -> tuple[dt.datetime, int, int]:
    """When ``manifest``'s record of its day was committed, to order one day's archives under several keys: its
    removal mark's time where it has one, else when it was archived (``archived_at``, or its snapshot's time where
    a version recorded none), as UTC instants (two offsets' texts do not sort as times); a removal, then the later
    generation, wins a tie."""
    mark = manifest.get("removed") if isinstance(manifest.get("removed"), dict) else {}
    archived = manifest.get("archived_at") or (manifest.get("source") or {}).get("snapshot_at")
    return _instant(mark.get("at") or archived), bool(mark), int(manifest.get("generation") or 1)


_EARLIEST = dt.datetime.min.replace(tzinfo=dt.UTC)


def _instant(value: object) -> dt.datetime:
    """A recorded time as a UTC instant; the earliest one for none or one that does not read as a time, or as no
    UTC instant (year 1 ahead of UTC, 9999 behind it: an unchecked manifest's, since _time_problem refuses such a
    time in a checked one; it never outranks one whose time is known)."""
    try:
        moment = dt.datetime.fromisoformat(value) if isinstance(value, str) else None
        return (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).astimezone(dt.UTC) if moment else _EARLIEST
    except (ValueError, OverflowError):
        return _EARLIEST


def other_format_keys(store, spec, day, listed: Iterable[str] | None = None,
                      covered: Sequence[str] | None = None) -> list[str]:
    """The day's keys under the table's other formats and codecs (:func:`keys.other_extension_keys`) that a
    listing shows anything of (:func:`keys.listed_under`): where an archive of it written before the table's format
    or codec changed may be. The one lookup of them for the archive run, restore, list and compare alike, so no
    reader misses one another finds. ``listed``: the keys a listing already read shows, and ``covered``: the
    prefixes it listed (the day's own listing: :func:`keys.day_listing_prefixes` of its key), None where it covers
    every other key (a range's listing made to: see listing.listed_absent). Each prefix of the other keys it does
    not cover is listed once: none for the usual layout, where ``{ext}`` follows the day's name and they lie beside
    its key; each other format's folder where the template has ``{format}`` in one. ``listed`` None: each prefix of
    theirs is listed. Raises the listing's ArchiveError."""
    return other_format_listing(store, spec, day, listed, covered)[0]


def other_format_listing(store, spec, day, listed: Iterable[str] | None = None, covered: Sequence[str] | None = None
                         ) -> tuple[list[str], Iterable[str]]:
    """:func:`other_format_keys`, and every key the listings it went by show (``listed`` and those it made): what a
    manifest among them that then reads as absent is confirmed against (``S3Store.confirm_missing``), no request."""
    others = keys.other_extension_keys(spec, day, store.prefix)
    prefixes = dict.fromkeys(p for k in others for p in keys.day_listing_prefixes(k)) \
        if listed is None or covered is not None else {}
    missing = [p for p in prefixes if not any(p.startswith(mine) for mine in covered or ())]
    if missing:
        listed = {*(listed or ()), *(item["Key"] for p in missing for item in store.list_keys(p))}
    return keys.listed_under(others, listed or ()), listed or ()


def _other_format_archives(store, spec, day, listed: set[str] | None, asked_one_by_one: bool, rendered: str | None,
                           identity: Whose = None
                           ) -> tuple[list[tuple[str, dict]], list[tuple[str, dict | None, ManifestError]],
                                      Iterable[str] | None]:
    """(key, manifest) of every archive of ``spec``'s ``day`` under another format's or codec's key (another
    table-day's manifest there is not the day's, nor another database's than ``identity``'s: see
    :func:`day_archive`), (key, its JSON read loosely or None, why) of every manifest
    there that fails its checks (see :func:`day_archive`), and the keys the listing looked with shows (``listed``
    where there are no other keys; None where none could be made); see :func:`under_another_format` for ``listed``.
    A candidate's manifest that listing shows and a read finds absent raises (``S3Store.confirm_missing``).
    ``rendered``: the rendered key, where it holds the day's archive: a listing refused then (a role without
    s3:ListBucket, which S3 answers 403 for each missing key too) leaves the day to that archive, with a warning,
    not to a GET of each other key that would fail it (such a role restored and listed such days before)."""
    others = keys.other_extension_keys(spec, day, store.prefix)
    if not others:
        return [], [], listed
    try:
        candidates, shown = other_format_listing(store, spec, day, listed)
    except ArchiveError as exc:  # the listing only saves requests: each other key's manifest is asked instead
        from archive_pipeline.core.errors import without_verdict  # (the listing's failure)

        if rendered is not None:
            log.warning("%s %s: the day's keys under the table's other formats could not be listed (%s); its "
                        "archive at %s is taken as its current one (one written under another format since "
                        "is not looked for%s)", spec.name, as_period(spec.granularity, spec.timezone, day),
                        without_verdict(exc), store.uri(rendered),
                        ": the listing was not tried again; a later look lists them" if exc.retryable else "")
            return [], [], None
        if not asked_one_by_one:  # (a dozen GETs a day: for a few days, not a range of years)
            raise
        candidates, shown = others, None
    iso = as_period(spec.granularity, spec.timezone, day).isoformat()
    found, damaged = [], []
    for other in candidates:
        try:
            manifest = decoded_manifest(store, keys.manifest_key(other))
        except NewerManifestError:  # not damaged: what it records is unknown to this version
            raise
        except ManifestError as exc:
            loose = loose_manifest(manifest_bytes(store, keys.manifest_key(other)))
            if loose is None or not foreign_manifest(loose, spec.name, iso) and not of_another_source(loose, identity):
                damaged.append((other, loose, exc))
            continue
        if manifest is None and shown is not None:  # listed, read as absent: no verdict (retryable)
            store.confirm_missing(keys.manifest_key(other), MISSING_ON_READ, shown)
        if manifest is not None and not foreign_manifest(manifest, spec.name, iso) \
                and not of_another_source(manifest, identity):
            found.append((other, manifest))
    return found, damaged, shown


def loose_manifest(raw: bytes | None) -> dict | None:
    """A stored manifest's JSON even where it fails its checks (to honour a ``removed`` mark, to tell when it was
    committed), or None (none, or not a JSON object)."""
    if raw is None:
        return None
    with contextlib.suppress(ValueError, TypeError, RecursionError):
        loose = json.loads(raw)
        if not isinstance(loose, dict):
            return None
        if loose.get("removed") and not isinstance(loose["removed"], dict):  # a mark itself damaged: still a mark
            loose["removed"] = {"at": "an unknown time (its removal mark is damaged)", "state": "done"}
        return loose
    return None


def inexact_groups(columns: Iterable[dict]) -> list[tuple[str, object, object]]:
    """The manifest's ``columns`` recorded as not exact, as (their names, a few quoted and the rest counted; the
    encoding; its note), one per distinct encoding and note: a table of 200 json columns in JSONL said the same
    400-character note 200 times in one message (80 kB), where one note and a list of names say it."""
    groups: dict[tuple[object, object], list[str]] = {}
    for column in columns:
        if column.get("exact") is False:
            groups.setdefault((column.get("encoding"), column.get("note")), []).append(column["name"])
    return [(names_few(names), encoding, note) for (encoding, note), names in groups.items()]
