"""S3-compatible object store: a multipart upload that follows the stream without ever holding it
up, verified writes and reads, and nothing half written left behind.

- **The reader never waits on the upload.** ``S3Upload.grow`` only records how far the temp file
  has grown and wakes the upload's own threads; they cut parts from the file as parts become
  whole and send ``max_concurrency`` of them at once. The temp file is the buffer: the upload may
  lag behind the PostgreSQL read, never the other way round, so a slow store cannot leave the read
  transaction idle. Parts are streamed from the file, never held whole in memory. A failed part
  surfaces at the next ``grow``/``finish``.
- **Every write is verified against our own MD5**: parts, single PUTs and ``put_bytes`` send
  Content-MD5 and their returned ETag must equal our MD5 (a part or small object that arrived
  corrupted is sent again, up to ``corrupt_attempts`` times in all); CompleteMultipartUpload's
  ETag must be the MD5 of the part MD5s; the stored size is checked with HEAD. Reads
  (``get_verified_bytes``, ``download_to``) check the body's MD5 against the ETag (or the MD5 the
  caller expects).
- **Nothing is left behind.** An object becomes visible only at CompleteMultipartUpload or a
  verified PutObject; any failure aborts the upload, and a failure that may have published an
  object withdraws it if it is ours. Multipart uploads of the key left by a killed process are
  aborted on every path (single PUT too). A failed cleanup never replaces the original error: it
  is logged and added to the original as a note.
- **Days of any size**: see :func:`plan_parts`.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import datetime as dt
import errno
import functools
import hashlib
import logging
import os
import re
import sys
import threading
import time
import uuid
from dataclasses import dataclass, replace
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator
from typing import Any, BinaryIO, NoReturn, TypeVar

from archive_pipeline.core.errors import (S3_CORRUPT_CODES, ArchiveError, UploadError, classify, for_operation,
                                         hide_signing_secrets, is_cancellation, names_its_cause, redact,
                                         refuses_encryption)
from archive_pipeline.core.keys import upload_marker_key, upload_marker_naming
from archive_pipeline.core.sink import temp_dir_given, temp_dir_named

_T = TypeVar("_T")
KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40
MIN_PART_SIZE = 5 * MiB  # S3: every part but the last
MAX_PART_SIZE = 5 * GiB
MAX_PARTS = 10_000
MAX_OBJECT_SIZE = 5 * TiB
GROWTH_DIVISOR = 1_000  # growing parts: a part is at least 1/1000 of the bytes before it
EQUAL_PARTS_SAFETY = 4  # equal parts: sized so that 4x the estimate still fits in 10,000 parts
CANCEL_WAIT = 1.0  # seconds a cancelled upload waits for parts in flight before it is aborted
_MISSING_AGAIN_SECONDS = 0.1  # between the two HEADs that confirm a GET's 404 or another size (see S3Store)
_READ_CHUNK = 1 * MiB
_PLAIN_MD5 = re.compile(r"^[0-9a-f]{32}$")
_MARKER = (b"A multipart upload of the key without this suffix was started here; if no run of it is going on, its "
           b"next run aborts it and deletes this marker.\n")
_NOT_THE_OBJECT = "the store's answer was not the object"
MISSING_ON_READ = "its GET and two HEADs answered 404"  # what a read that found nothing asked (see confirm_missing)
WRITER_METADATA = "writer"  # a fresh key's object: the upload that wrote it (see S3Store.begin)
SSE_VALUES = ("AES256", "aws:kms")  # the x-amz-server-side-encryption values S3 takes (SSE-S3, SSE-KMS)
_S3_TOO_LARGE = "the day is larger than S3's object limit"
_CORRUPTED = "the object's checksum did not match on the way"
_RETRIED = ("retried automatically; if it persists, check the network path to the store (proxies, gateways) and the "
            "store's health")
_NOT_MD5_ETAGS = ("if every run fails so, the store's ETags are not the MD5 of the bytes (SSE-KMS, some gateways): turn "
                  "off the archive_store resource's verify_etags (ARCHIVE_S3_VERIFY_ETAGS=false for the default "
                  "resources and the command line)")
_CORRUPTED_REMEDY = f"{_RETRIED}; {_NOT_MD5_ETAGS}"

log = logging.getLogger(__name__)


def _is_error_document(data: bytes) -> bool:
    """An S3 error document (``<?xml ...?><Error><Code>...``) where an object's bytes were expected;
    manifests are JSON, so one can never be mistaken for the other."""
    head = data[:512].lstrip()
    return head.startswith(b"<") and b"<Error>" in head


class DownloadError(ArchiveError):
    """Reading an object failed or its bytes did not match their checksum.

    ``damaged`` says where the fault is: False for corruption in transit or a failed request
    (retryable: reading again may succeed), True when the object as stored differs from what was
    expected (size, or an MD5 the store's own ETag confirms; not retryable: restore it from a
    replica or archive the day again), None when that cannot be told apart (a multipart object, answered
    under its own HEAD's ETag, whose bytes do not match the expected MD5: retryable once more; if it
    repeats, it is damaged). An answer under another ETag than the object's HEAD is another version's
    (a cache, a replica behind), whatever the ETag's form: False."""

    def __init__(self, message: str, *, damaged: bool | None = False, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.damaged = damaged


class CorruptedWrite(UploadError):
    """A small object's write whose every copy the store answered with an ETag other than our MD5: each
    attempt was carried out, so nothing of the write is still on its way; the key may hold a damaged copy
    (``etag``: its ETag as the store answered, or None)."""

    etag: str | None = None


class LocalFileError(ArchiveError):
    """Writing downloaded bytes to the local (temp) file failed: a full disk, no permission, an I/O
    error. A local problem, never the store's or the archive's; ``directory`` is where the file is."""

    def __init__(self, message: str, *, directory: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.directory = directory


@dataclass(frozen=True)
class StoredObject:
    key: str
    uri: str
    size: int
    etag: str
    parts: int
    wait_seconds: float = 0.0  # after the stream ended, waiting for the remaining parts
    complete_seconds: float = 0.0  # the store assembling the object (CompleteMultipartUpload/PutObject)
    part_sizes: tuple[int, ...] = ()  # as uploaded, in part order (empty for a single PUT)


@dataclass(frozen=True)
class Downloaded:
    """What ``download_to`` wrote: the object's size, the MD5 of the bytes written, its ETag."""

    key: str
    size: int
    md5: str
    etag: str


# --- part planning ------------------------------------------------------------------------------

def _round_up(value: int, granule: int) -> int:
    return -(-value // granule) * granule


@dataclass(frozen=True)
class PartPlan:
    """Which size each part of an upload gets; see :func:`plan_parts` for the rule."""

    first: int  # size of part 1 (and of every part while the estimate holds)
    equal: bool  # every part but the last the same size (Cloudflare R2)
    max_parts: int = MAX_PARTS
    granule: int = MiB  # grown sizes are rounded up to this
    max_part: int = MAX_PART_SIZE
    expected_size: int | None = None

    @property
    def capacity(self) -> int:
        """The largest stream this plan can upload within ``max_parts`` parts."""
        if self.equal:
            return min(self.first * self.max_parts, MAX_OBJECT_SIZE)
        return MAX_OBJECT_SIZE

    def size_at(self, offset: int) -> int:
        """The size of the part that starts at ``offset`` of the stream."""
        if self.equal:
            return self.first
        grown = _round_up(-(-offset // GROWTH_DIVISOR), self.granule)
        return min(max(self.first, grown), self.max_part)

    def sizes(self, total: int) -> list[int]:
        """The part sizes of a stream of ``total`` bytes (the last one is the remainder)."""
        sizes, offset = [], 0
        while offset < total:
            size = min(self.size_at(offset), total - offset)
            sizes.append(size)
            offset += size
        return sizes


def plan_parts(part_size: int, expected_size: int | None = None, *, equal_parts: bool = False,
               max_parts: int = MAX_PARTS, min_part_size: int = MIN_PART_SIZE) -> PartPlan:
    """Plan part sizes so that a stream of any size up to S3's 5 TiB object limit fits in 10,000
    parts, whether or not its size is known in advance.

    Growing parts (default; S3, MinIO and most stores accept parts of different sizes): the first
    part size is the store's ``part_size``, raised to ``expected_size / 1000`` (rounded up to 1 MiB)
    when an estimate is given, so a day that matches its estimate uploads in at most ~1,000 equal
    parts. Each further part is at least 1/1000 of the bytes already sent (rounded up to 1 MiB,
    at most 5 GiB): parts stay equal until the stream passes 1000 x the first part size, then grow
    with it by 0.1 % per part. From 5 MiB parts a 5 TiB stream needs about 8,000 parts; the
    9,000 parts left after the estimate cover any estimate that was too low.

    Equal parts (``equal_parts=True``, for Cloudflare R2, which wants every part but the last the
    same size): one size, ``part_size`` raised to ``4 x expected_size / 10,000`` (rounded up to
    1 MiB), so the stream may exceed the estimate 4 times. A stream that outgrows that capacity
    fails as soon as it does, before the 10,000-part limit is hit, with a message saying to raise
    the part size or give a better estimate.
    """
    if part_size < min_part_size:
        raise ValueError(f"part_size must be at least {min_part_size} bytes (S3's minimum), got {part_size}")
    granule = min(MiB, part_size)
    first = part_size
    if expected_size and expected_size > 0:
        divisor = max_parts // EQUAL_PARTS_SAFETY if equal_parts else GROWTH_DIVISOR
        first = max(part_size, _round_up(-(-expected_size // divisor), granule))
    return PartPlan(first=min(first, MAX_PART_SIZE), equal=equal_parts, max_parts=max_parts, granule=granule,
                    expected_size=expected_size)


# --- metadata -----------------------------------------------------------------------------------

_RFC2047 = re.compile(r"^=\?UTF-8\?B\?([A-Za-z0-9+/=]*)\?=$")
_SAFE_VALUE = re.compile(r"^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$|^$")
_SAFE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def encode_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """User metadata that S3 accepts: every value that is not plain printable ASCII (non-ASCII,
    control characters, leading/trailing spaces, or text that itself looks encoded) becomes RFC 2047
    ``=?UTF-8?B?<base64>?=``, as AWS suggests; ``decode_metadata`` reverses it exactly."""
    encoded = {}
    for key, value in metadata.items():
        if not _SAFE_KEY.match(key):
            raise ValueError(f"metadata key {key!r} must be ASCII letters, digits, '.', '_' or '-'")
        value = str(value)
        if _SAFE_VALUE.match(value) and not value.startswith("=?"):
            encoded[key] = value
        else:
            encoded[key] = "=?UTF-8?B?" + base64.b64encode(value.encode()).decode() + "?="
    if sum(len(k) + len(v) for k, v in encoded.items()) > 2048:
        raise ValueError("user metadata is longer than S3's 2 KB limit (keys and encoded values)")
    return encoded


def decode_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """The original values of metadata written through ``encode_metadata`` (e.g. HEAD's
    ``Metadata``); values that are not RFC 2047 words are returned as they are. Names are lower-cased: HTTP
    header names carry no case, and a store that answers ``X-Amz-Meta-Writer`` (Go's canonical form) gave
    botocore the key ``Writer``, so a run took its own object for another run's."""
    decoded = {}
    for key, value in metadata.items():
        match = _RFC2047.match(value)
        if match:
            try:
                value = base64.b64decode(match.group(1), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                pass
        decoded[key.lower()] = value
    return decoded


# --- helpers ------------------------------------------------------------------------------------

def _written_by(head: dict, writer: str | None) -> bool:
    """Whether the object a HEAD answered carries the upload mark ``writer`` (any object, without one)."""
    return writer is None or decode_metadata(head.get("Metadata") or {}).get(WRITER_METADATA) == writer


def encryption_headers(server_side_encryption: str | None, kms_key_id: str | None = None) -> dict[str, str]:
    """The server-side-encryption parameters every object write sends (PutObject, CreateMultipartUpload; the parts of
    a multipart upload take the upload's): a bucket policy that denies writes without them (AWS's own advice for
    encrypted buckets) otherwise refuses every archive. Empty without a setting (the bucket's default encryption
    applies). ValueError, saying what is wrong, for a value S3 does not take or a KMS key without aws:kms."""
    sse, key = (server_side_encryption or "").strip() or None, (kms_key_id or "").strip() or None
    if sse is not None and sse not in SSE_VALUES:
        raise ValueError(f"server-side encryption {sse!r} is not one S3 takes: {' or '.join(SSE_VALUES)}")
    if key is not None and sse != "aws:kms":
        raise ValueError("a KMS key id for server-side encryption needs server-side encryption aws:kms")
    return {"ServerSideEncryption": sse, **({"SSEKMSKeyId": key} if key else {})} if sse else {}


def _md5_header(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _is_read_timeout(exc: BaseException) -> bool:
    """The request was sent and its answer did not come in time: the store may still act on it."""
    from botocore.exceptions import ReadTimeoutError

    return isinstance(exc, ReadTimeoutError)


def _require_listing(page: dict, fields: tuple[str, ...], doing: str) -> None:
    """Refuse a listing page without the fields every real answer has: botocore reads a 200 with an empty
    body as a page listing nothing, and "nothing stored for this day" then re-archived a changed day over
    its object, replaced a removed day's manifest, and took a killed run's upload for gone."""
    if not all(field in page for field in fields):
        raise DownloadError(f"{doing} failed: the store answered 200 without a listing ({', '.join(fields)} "
                            "missing); the run will be retried", retryable=True,
                            cause="the store's answer was not a listing",
                            remedy="retried automatically; if it persists, check the network path to the store")


def _require_in_order(page: dict, contents: list[dict], last: str | None, doing: str) -> None:
    """Refuse a listing page that is not what S3 sends: its keys in strictly ascending (UTF-8 binary) order, after
    the previous page's, and as many as its KeyCount says. A page damaged on the way (a key repeated, one left
    out) made a day with its archive look unarchived: verify passed over it, list called it missing."""
    keys_listed = [item["Key"] for item in contents]
    ordered = all(a < b for a, b in zip(keys_listed, keys_listed[1:])) and \
        (last is None or not keys_listed or last < keys_listed[0])
    # (a store that sends no KeyCount, as OpenStack Swift's S3 layer and some gateways: nothing to count against)
    counted = "KeyCount" not in page or int(page["KeyCount"]) == len(contents) + len(page.get("CommonPrefixes", []))
    if not (ordered and counted):
        raise DownloadError(f"{doing} failed: the store's listing is not in order or not as long as it says "
                            f"({'keys out of order or repeated' if not ordered else 'KeyCount differs from the keys'}); "
                            "the run will be retried", retryable=True, cause="the store's answer was not a listing",
                            remedy="retried automatically; if it persists, check the network path to the store")


# a later page's refusal of the token the store's own last page gave: AWS's code, and some stores' (see _pages)
_PAGE_TOKEN_CODES = ("InvalidArgument", "InvalidToken")


def _pages(pages: Iterable[dict], doing: str, way_on: str) -> Iterator[dict]:
    """The pages of a paginated listing, refusing one that says more follows (IsTruncated) without the
    ``way_on`` field to fetch it by (botocore's paginator then just stops, and the pages never fetched
    looked like nothing stored: archived days listed as missing, an upload left without its marker), and
    a page that hands back the token it was given (botocore's PaginationError, which reads as a client
    misconfigured): either is an answer that is not a listing, retried."""
    from botocore.exceptions import ClientError, PaginationError

    first = True
    try:
        for page in pages:
            first = False
            if page.get("IsTruncated") and not page.get(way_on):
                raise DownloadError(f"{doing} failed: a page of the store's listing says more follows but gives no "
                                    f"{way_on} to fetch it by; the run will be retried", retryable=True,
                                    cause="the store's answer was not a listing",
                                    remedy="retried automatically; if it persists, check the network path to the store")
            if way_on == "NextContinuationToken" and page.get(way_on) and not page.get("IsTruncated"):
                # ListObjectsV2 gives a next page's token only while more follows: a last page holding one said
                # "true" in words botocore did not read as such (damaged on the way), and the keys of the pages
                # after it would look like nothing stored (archived days taken for missing ones)
                raise DownloadError(f"{doing} failed: a page of the store's listing gives a {way_on} for a next page "
                                    "yet says it is the last; the run will be retried", retryable=True,
                                    cause="the store's answer was not a listing",
                                    remedy="retried automatically; if it persists, check the network path to the store")
            yield page
    except PaginationError as exc:
        raise DownloadError(f"{doing} failed: the store's listing went round in a loop ({type(exc).__name__}: "
                            f"{_said(exc)}); the run will be retried", retryable=True,
                            cause="the store's answer was not a listing",
                            remedy="retried automatically; if it persists, check the network path to the store"
                            ) from None
    except ClientError as exc:
        # (a 400 whose code names another cause is that cause: S3 answers an expired session token, ExpiredToken,
        # with 400 too, and it may expire between two pages. Not InvalidToken: some stores answer a continuation
        # token they do not take with it, and a session token malformed cannot be what refuses a next page when
        # the same credentials were just taken for the first; read again from its start, a listing whose
        # credentials are bad fails at its first page, for them)
        refused = _code(exc) in _PAGE_TOKEN_CODES or _status(exc) == 400 and not names_its_cause(_code(exc))
        if first or not refused:
            raise
        # a next page refused for the token the store's own last page gave (damaged on the way, or another node's
        # behind a load balancer): a listing to read again from its start, not a request refused for good
        raise DownloadError(f"{doing} failed: the store refused the token of its own listing's next page "
                            f"({_said(exc)}); the run will be retried", retryable=True,
                            cause="the store's answer was not a listing",
                            remedy="retried automatically; if it persists, check the network path to the store "
                                   "(proxies, load balancers in front of several store nodes)") from None


_READ_AFTER_WRITE_PAUSES = (0.2, 0.8, 2.0)
# A conditional write answered 409 ConditionalRequestConflict (AWS: "a conflicting conditional operation is currently
# in progress against this resource; try again"; botocore does not retry a 409) is sent again after each pause.
_CONFLICT_PAUSES = (0.5, 1.0, 2.0)
_CONFLICT = "ConditionalRequestConflict"
_HEX_ETAG = re.compile(r"[0-9A-Fa-f]{32}(-[0-9]+)?")


EMPTY_MD5 = hashlib.md5(b"").hexdigest()  # d41d8cd98f00b204e9800998ecf8427e: the ETag of a zero-byte object


def _stored_empty(response: dict, etag: str) -> bool:
    """Whether an empty body is the object as stored, not a 200 that lost its body on the way: the answer says
    Content-Length 0 and its (strong) ETag is the MD5 of nothing. Another tool's zero-byte object at a manifest
    key (a sync tool's placeholder, a copy of an empty file) was read three times as a network fault, and every
    command sent the operator to the network path for what no retry changes."""
    return (response.get("ContentLength") == 0 and etag == EMPTY_MD5
            and not str(response.get("ETag", "")).strip().startswith(("W/", "w/")))


def etag_text(etag: object) -> str:
    """An ETag without its quotes, an MD5's hex digits (a multipart's ``md5-N`` too) in lower case: some stores
    answer them in upper case, and a digest's case means nothing. A weak ETag (``W/"..."``, as a gateway that may
    re-encode answers marks it) compares by its opaque value, as RFC 9110's weak comparison does."""
    text = str(etag or "").strip()
    if text[:2] in ("W/", "w/"):
        text = text[2:]
    text = text.strip('"')
    return text.lower() if _HEX_ETAG.fullmatch(text) else text




def _md5_of_range(fd: int, offset: int, length: int, whole: Any = None) -> bytes:
    """The MD5 of ``length`` bytes of ``fd`` from ``offset``, also fed to ``whole`` (a running MD5) where given: a
    multipart upload hashes its parts' bytes in file order from the same reads that give each part its Content-MD5,
    so the whole file's MD5 costs no second read of it."""
    md5 = hashlib.md5()
    end = offset + length
    while offset < end:
        data = os.pread(fd, min(_READ_CHUNK, end - offset), offset)
        if not data:
            raise UploadError(f"temp file ended at offset {offset}, {end - offset} bytes early; "
                              "it was truncated while uploading", retryable=True,
                              cause="the temp file was truncated while uploading",
                              remedy="retried automatically; if it persists, look for what else writes to or "
                                     "cleans temp_dir")
        md5.update(data)
        if whole is not None:
            whole.update(data)
        offset += len(data)
    return md5.digest()


class _FileRange:
    """A read-only, seekable view of ``length`` bytes of ``fd`` from ``offset``: a part's body that
    botocore streams (and rewinds on retry) without the part ever being held in memory."""

    def __init__(self, fd: int, offset: int, length: int) -> None:
        self._fd, self._start, self._length, self._pos = fd, offset, length, 0

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        left = self._length - self._pos
        size = left if size is None or size < 0 else min(size, left)
        if size <= 0:
            return b""
        data = os.pread(self._fd, size, self._start + self._pos)
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._length}[whence]
        self._pos = min(max(base + offset, 0), self._length)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True


def inconsistent(what: str) -> DownloadError:
    """The retryable error of a store whose answers about one object contradict each other (``what``: which)."""
    return DownloadError(f"{what}: the store answered inconsistently; the run will be retried", retryable=True,
                         damaged=False, cause="the store answered inconsistently (an object it holds was reported "
                         "missing)", remedy="retried automatically; if it persists, check the store's consistency "
                         "settings (replication, a caching gateway) and the network path to it")


def _status(exc: BaseException) -> int:
    response = getattr(exc, "response", None) or {}
    return response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)


def _code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


# A conditional write the store refused: the key is not as the condition said (412), or another conditional
# write of it is under way (AWS: 409 ConditionalRequestConflict, sent again first: see S3Store.with_conditions). Either
# way the key is read: it may hold this run's own earlier try; else see _refusal.
_TAKEN_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "412"})


def _is_taken(exc: BaseException) -> bool:
    """A conditional write refused for its condition: by code, or by status (GCS's 412 ConditionNotMet; an older
    MinIO's 304 to a failed If-None-Match)."""
    status = (getattr(exc, "response", None) or {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
    return _code(exc) in _TAKEN_CODES or status in (304, 412)


_CONDITION_NAMED = re.compile(r"if-none-match|if-match|conditional|unsupported header", re.I)


def _is_unimplemented(exc: BaseException) -> bool:
    """A store that does not implement a header it was sent (conditional writes: older MinIO, some gateways; B2
    answers 400 InvalidArgument "Unsupported header 'If-None-Match'"). Not one whose answer is about the server-side
    encryption it was sent (MinIO without a KMS: 501 NotImplemented "Server side encryption specified but KMS is not
    configured"): taken for the condition's, it turned conditional writes off for nothing (see
    :func:`errors.refuses_encryption`)."""
    response = getattr(exc, "response", None) or {}
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if refuses_encryption(exc):
        return False
    if _code(exc) in ("NotImplemented", "501") or status == 501:
        return True
    return status == 400 and bool(_CONDITION_NAMED.search(str((response.get("Error") or {}).get("Message", ""))))


class KeyTakenError(UploadError):
    """A write that must not replace what is at its key found something there: another run wrote it meanwhile."""


def _refusal(uri: str, exc: BaseException) -> UploadError:
    """The error of a conditional write of ``uri`` refused (``exc``) for a key that does not hold this run's object.
    A 412 means the key is not as the condition said: :class:`KeyTakenError`. A 409 ConditionalRequestConflict still
    answered after :meth:`S3Store.with_conditions` sent the write again says only that a conditional write of the key
    was under way at the store: nothing is known to be at the key, so no other run is blamed, and the write fails
    retryable with the store's own answer as the cause."""
    if _code(exc) != _CONFLICT:
        return _taken(uri, exc)
    return UploadError(f"{uri}: the store answered every try of this run's conditional write that a conflicting "
                       f"conditional write of the key was in progress ({_said(exc)}, {len(_CONFLICT_PAUSES) + 1} "
                       f"tries over {sum(_CONFLICT_PAUSES):.1f} s); the key does not hold this run's write, and the "
                       "run will be retried", retryable=True,
                       cause="the store reported a conflicting conditional write of the key in progress (409 "
                             "ConditionalRequestConflict)",
                       remedy="retried automatically; if it persists, check what else writes under the bucket's "
                              "prefix (the store answers so while another conditional write of the same key is "
                              "under way)")


def _taken(uri: str, exc: BaseException) -> KeyTakenError:
    return KeyTakenError(f"{uri} was written by another run meanwhile ({_said(exc)}); this run's write did not "
                         "replace it, and nothing of this run was published", retryable=True,
                         cause="another run wrote the same key",
                         remedy="retried automatically: the retry decides on what is stored now; archive each table "
                                "from one database, and one server, only")


def _sent_again(refused: BaseException) -> bool:
    """Whether botocore sent the refused request more than once (a try whose answer was lost, then this one)."""
    metadata = (getattr(refused, "response", None) or {}).get("ResponseMetadata") or {}
    return bool(metadata.get("RetryAttempts"))


def _unchecked(uri: str, refused: BaseException, check: ArchiveError) -> UploadError:
    """A write refused for what its key holds (``refused``: a 412, NoSuchUpload) whose check of that object failed
    (``check``): not known to be another run's, since it may be this run's own earlier try whose answer was lost, so
    no :class:`KeyTakenError` but the check's own failure as it was classified (a denied HEAD names the permission it
    needs, s3:GetObject, and is not retried); the object is left as it is."""
    return UploadError(f"{uri}: the store refused this run's write for what the key holds ({_said(refused)}), and "
                       f"whether that is this run's own earlier try could not be checked: {check.message}; the object "
                       "there was left as it is (it may be this run's)", retryable=check.retryable, cause=check.cause,
                       remedy=check.remedy)


def _is_not_found(exc: BaseException) -> bool:
    """A missing key (not a missing bucket, which is a configuration error)."""
    return _code(exc) in ("NoSuchKey", "404", "NotFound")


def _is_checksum_error(exc: BaseException) -> bool:
    """botocore found a response body that fails its checksum: corruption in transit."""
    try:
        from botocore.exceptions import ChecksumError, FlexibleChecksumError
    except ImportError:  # pragma: no cover - botocore is a dependency
        return False
    return isinstance(exc, FlexibleChecksumError | ChecksumError)


def _is_transport_error(exc: BaseException) -> bool:
    """The request failed on its connection (reset, timeout, truncated body, TLS), so the store may or may not
    have acted on it. Not whether a retry helps, which :func:`classify` says (a TLS handshake that fails is a
    botocore ConnectionError too, and fails the same way each time). botocore's ConnectionClosedError,
    ReadTimeoutError and ResponseStreamingError are HTTPClientErrors, not botocore ConnectionErrors."""
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError, IncompleteReadError
    except ImportError:  # pragma: no cover - botocore is a dependency
        return False
    return isinstance(exc, HTTPClientError | BotoConnectionError | IncompleteReadError | ConnectionError
                      | TimeoutError)


def _said(exc: BaseException) -> str:
    """``exc`` as our messages, notes and log lines quote it, without credentials: botocore quotes the endpoint
    URL whole, with a user and secret written in it (the code location refuses such a URL, a resource built
    in code may still hold one)."""
    return redact(f"{type(exc).__name__}: {exc}")


def _note(original: BaseException | None, text: str) -> None:
    if original is not None and hasattr(original, "add_note"):
        original.add_note(text)


# The Content-Encoding a GetObject of ours asks for, only while we read an object stored with one (see
# _read_as_stored): a context variable, so nothing else the client sends (a user's own GETs, presigned URLs) and
# no other thread's request carries it.
# What get_verified_bytes reads whole (a manifest: a few KB, a 1,600-column table's with its shapes well under a MB):
# anything larger is answered by a StandIn marked OVERSIZED, never read, so a huge object written at a manifest's key
# (by whoever may write to the bucket) cannot take the process's memory; decode_manifest refuses it as no manifest.
MAX_SMALL_OBJECT_BYTES = 16 * MiB
OVERSIZED = b"\x00archive_pipeline:oversized:"
# What S3Store.own_damaged answers (a StandIn so marked) for a copy a failed write of ours left damaged at a key that
# cannot be read: decode_manifest refuses it as no manifest, etag_of gives the ETag it is replaced by.
OWN_DAMAGED = b"\x00archive_pipeline:own-damaged:"


class _Sha256Sink:
    """A download's sink that keeps nothing, only the SHA-256 of what passes (``download_to`` hashes the MD5)."""

    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._sha256.update(data)
        return len(data)

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()


class StandIn(bytes):
    """What the store answers in place of an object's bytes it did not read (``mark``: :data:`OVERSIZED` or
    :data:`OWN_DAMAGED`), with the object's size and ETag as the store answered them (``etag`` None: it answered
    none). Bytes still, for the callers that pass a manifest's bytes on (compared; If-Match'd through
    :meth:`S3Store.etag_of`), but known by their type, never by their first bytes: an object anyone stored at a
    manifest's key that merely begins like one was read, and is a damaged manifest, not the store's word on a copy
    it did not read (the bytes a marker began, parsed, failed the archive run as an IndexError)."""

    mark: bytes
    size: int
    etag: str | None

    def __new__(cls, mark: bytes, size: int, etag: str | None) -> StandIn:
        self = super().__new__(cls, mark + f"{size}:{etag or ''}".encode())
        self.mark, self.size, self.etag = mark, size, etag or None
        return self


_ACCEPT_STORED: contextvars.ContextVar[str | None] = contextvars.ContextVar("archive_pipeline_accept", default=None)


def _accept_stored_encoding(request: Any, **_: Any) -> None:
    encoding = _ACCEPT_STORED.get()
    if encoding:
        request.headers["Accept-Encoding"] = encoding


def _read_as_stored(client: Any) -> None:
    """Let :meth:`S3Store.download_to` ask for an object as stored: an archive written with ``Content-Encoding:
    gzip`` (before ``Cache-Control: no-transform`` was set on it) is served decompressed by Google Cloud Storage's
    S3 interop to a GET that does not accept gzip (botocore's says ``identity``), under the stored bytes' ETag, so
    every read of it looked corrupted. The handler, registered once on the client, adds the header only inside
    such a read (:data:`_ACCEPT_STORED`); botocore never decodes a body."""
    events = getattr(getattr(client, "meta", None), "events", None)
    if events is not None:
        events.register("before-sign.s3.GetObject", _accept_stored_encoding,
                        unique_id="archive_pipeline-accept-stored-encoding")


class S3Store:
    """Where archives go: a bucket of any S3-compatible endpoint (AWS, MinIO, R2, moto).

    ``part_size``: the base part size (see :func:`plan_parts`); ``max_concurrency``: parts sent at
    once (each streamed from the temp file, so memory does not grow with the part size);
    ``verify_etags``: compare ETags with our MD5s (off only for stores whose ETags are not MD5s,
    e.g. SSE-KMS); ``equal_parts``: every part but the last the same size (Cloudflare R2);
    ``server_side_encryption`` / ``sse_kms_key_id``: sent with every object write (see :func:`encryption_headers`);
    ``corrupt_attempts``: how often a part or small object that arrived corrupted is sent
    (botocore itself retries 5xx, throttling and dropped connections); ``abort_timeout``: how long
    ``abort`` waits for parts already in flight.
    """

    min_part_size = MIN_PART_SIZE  # class attributes so benchmarks of the bookkeeping can shrink them
    max_parts = MAX_PARTS

    def __init__(self, client: Any, bucket: str, *, prefix: str = "", part_size: int = 8 * MiB,
                 max_concurrency: int = 4, verify_etags: bool = True, equal_parts: bool = False,
                 corrupt_attempts: int = 3, abort_timeout: float = 10.0,
                 server_side_encryption: str | None = None, sse_kms_key_id: str | None = None) -> None:
        if part_size < self.min_part_size:
            raise ValueError(f"part_size must be at least 5 MiB (S3's minimum), got {part_size}")
        if part_size > MAX_PART_SIZE:
            raise ValueError(f"part_size must be at most 5 GiB (S3's maximum), got {part_size}")
        self.client = client
        hide_signing_secrets(client)  # (every message about this store quotes botocore, which may quote them)
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.part_size = part_size
        self.max_concurrency = max(1, max_concurrency)
        self.verify_etags = verify_etags
        self.equal_parts = equal_parts
        self.encryption = encryption_headers(server_side_encryption, sse_kms_key_id)
        self.corrupt_attempts = max(1, corrupt_attempts)
        self.abort_timeout = abort_timeout
        # Writes that must not replace anything (a data object's fresh key, a day's first manifest) carry
        # If-None-Match: * (S3, MinIO, R2), so two runs that race for one key (two databases or servers, which
        # the table-day lock does not exclude) never leave one's manifest over the other's object. A condition is
        # off once the store answers that it does not implement it, for that operation only (see
        # unconditional_after): AWS took If-None-Match in August 2024 and If-Match only in November, so a refused
        # If-Match must not send a first manifest without its If-None-Match.
        self._unimplemented: set[tuple[str, str]] = set()  # (operation, condition) the store does not implement
        self.upper_etags = False  # the store answers MD5 ETags in upper case (see etag_in)
        self.unquoted_etags = False  # ... or without their quotes
        self._answered_etags: dict[str, str] = {}  # MD5 of a manifest's bytes -> the ETag answered (see etag_of)
        self._proven_etags: dict[str, str] = {}  # key -> the ETag its verified download's bytes had
        self._asked_once: dict[Hashable, object] = {}  # what this store was asked once, for later asks (see asked_once)
        _read_as_stored(client)

    def asked_once(self, what: Hashable, ask: Callable[[], _T]) -> _T:
        """``ask()``'s answer, asked once of this store object for ``what`` and shared by every later ask through it:
        each run builds its own store, so the days of a range (or of a dry run) share one answer, and the next run asks
        again. Only for what the run's own writes do not change: keys of another granularity's periods, which only a
        configuration of that granularity writes (see archive._Archiving._removed_in_overlapping), asked the same by
        every day of a month. A failed ask is not kept (the next day asks again)."""
        if what not in self._asked_once:
            self._asked_once[what] = ask()
        return self._asked_once[what]  # type: ignore[return-value]

    @property
    def conditional_writes(self) -> bool:
        """Whether every conditional write still carries its condition (the store refused none as unimplemented)."""
        return not self._unimplemented

    def conditions(self, operation: str, wanted: dict[str, str]) -> dict[str, str]:
        """``wanted`` (IfNoneMatch, IfMatch) without those the store said ``operation`` does not implement."""
        return {name: value for name, value in wanted.items() if (operation, name) not in self._unimplemented}

    def with_conditions(self, call: Callable[..., dict], condition: dict[str, str], uri: str, operation: str) -> dict:
        """``call(**condition)`` (``operation``: the S3 operation it sends), without a condition once the store says
        it does not implement it for that operation (see :meth:`unconditional_after`); back on where the write without
        it is refused the same way: the store does not implement another header it was sent (a server-side
        encryption, a checksum), and the conditions stayed off for nothing, letting two runs of a day race."""
        wanted = self.conditions(operation, condition)
        try:
            return self._past_conflicts(call, wanted, uri, operation) if wanted else call()
        except Exception as exc:
            if not (wanted and self.unconditional_after(exc, uri, operation, wanted)):
                raise
        try:
            return call(**self.conditions(operation, condition))
        except Exception as exc:
            if _is_unimplemented(exc):  # refused the same way without them: not the conditions (another header)
                self._unimplemented.difference_update((operation, name) for name in wanted)
                log.warning("the store refuses %s without its conditions too (%s, writing %s): they were not what "
                            "it does not implement, and stay on", operation, _said(exc), uri)
            raise

    @staticmethod
    def _past_conflicts(call: Callable[..., dict], wanted: dict[str, str], uri: str, operation: str) -> dict:
        """``call(**wanted)``, sent again after each of :data:`_CONFLICT_PAUSES` while the store answers 409
        ConditionalRequestConflict: a transient answer (another conditional write of the key under way, which may be
        this very write's own earlier attempt, its answer lost and botocore's retry refused), which the condition
        decides anew on every try against what the key holds then (a 412 once a write landed, which the caller
        reads the key for). A conflict that persists is raised for the caller (see :func:`_refusal`); where an
        earlier one came after botocore's own retries (an attempt that may still land), that one, so the failure
        does not pass for a write the store certainly refused (:meth:`S3Store.settled`)."""
        open_conflict: BaseException | None = None
        for pause in (*_CONFLICT_PAUSES, None):
            try:
                return call(**wanted)
            except Exception as exc:
                if _code(exc) != _CONFLICT:
                    raise
                if open_conflict is None and not S3Store.refused(exc):
                    open_conflict = exc
                if pause is None:
                    raise open_conflict or exc
                log.warning("writing %s (%s): the store answered that a conflicting conditional write of the key is "
                            "in progress (%s); trying again in %.1f s", uri, operation, _said(exc), pause)
                time.sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover

    def unconditional_after(self, exc: BaseException, uri: str, operation: str, sent: dict[str, str]) -> bool:
        """Whether ``exc`` says the store does not implement the conditions ``sent`` with ``operation``: they are
        then off for that operation (logged), and only they: a store may implement If-None-Match and not yet
        If-Match (AWS between August and November 2024), and a first manifest sent without its If-None-Match
        replaced another run's commit."""
        if not _is_unimplemented(exc):
            return False
        headers = ", ".join(re.sub(r"(?<=[a-z])(?=[A-Z])", "-", name) for name in sent)
        log.warning("the store does not implement %s on %s (%s, writing %s): writing without it from now on; two runs "
                    "of one day on different servers can then race", headers, operation, _said(exc), uri)
        self._unimplemented.update((operation, name) for name in sent)
        return True

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def plan(self, expected_size: int | None = None) -> PartPlan:
        """The part plan of one upload (see :func:`plan_parts`)."""
        return plan_parts(self.part_size, expected_size, equal_parts=self.equal_parts, max_parts=self.max_parts,
                          min_part_size=self.min_part_size)

    def begin(self, key: str, *, content_type: str, content_encoding: str | None = None,
              metadata: dict[str, str] | None = None, expected_size: int | None = None,
              stale_uploads: bool = True, fresh: bool = False,
              source: tuple[str, str | None] | None = None) -> S3Upload:
        """Start writing ``key``; feed the upload with ``grow`` and end it with ``finish``/``abort``.

        ``expected_size`` (bytes, e.g. estimated from the catalog) sizes the parts; ``metadata``
        values may be any text (non-ASCII is encoded, see ``encode_metadata``). Nothing is sent
        until a whole part is there. ``stale_uploads=False``: the caller has already dealt with
        uploads of the key a killed process may have left (it listed no upload marker, see
        ``S3Upload``), so a single PUT does not list the store's uploads after it. ``fresh``: the key
        holds nothing and must not be replaced (If-None-Match; :class:`KeyTakenError` if it is); its object then
        carries the upload's own mark (``writer`` metadata), by which alone a refused write takes what is there for
        its own earlier try (another database's run may have written the very same bytes). ``source``: the
        database the upload's run reads (name, system identifier), named in its upload marker."""
        meta = dict(metadata or {})
        writer = f"{os.getpid()}.{uuid.uuid4().hex}"
        if fresh:
            meta[WRITER_METADATA] = writer
        headers: dict[str, Any] = {"ContentType": content_type, "Metadata": encode_metadata(meta), **self.encryption}
        if content_encoding:
            # no-transform: served as stored to every reader, whatever it accepts (see _read_as_stored)
            headers.update(ContentEncoding=content_encoding, CacheControl="no-transform")
        return S3Upload(self, key, headers, self.plan(expected_size), table=meta.get("table"), day=meta.get("day"),
                        stale_uploads=stale_uploads, fresh=fresh, source=source, writer=writer)

    # --- small objects and reads -----------------------------------------------------------------
    def head(self, key: str) -> dict | None:
        """The object's HEAD answer, None if it does not exist; a failure is a :class:`DownloadError`, and so
        is an answer without the object's size and ETag (a gateway's error page passed on as a 200: callers
        compare both with a manifest, and must not take a missing one for a damaged or a different object)."""
        try:
            head = self._head(key)
        except Exception as exc:
            raise _wrap(exc, f"checking {self.uri(key)} (HeadObject)", DownloadError) from exc
        if head is not None and not ("ContentLength" in head and "ETag" in head):
            raise DownloadError(f"checking {self.uri(key)} (HeadObject): the store answered without the object's "
                                "size or ETag, so that answer was not the object's; the run will be retried",
                                retryable=True, cause=_NOT_THE_OBJECT, remedy=_RETRIED)
        return head

    def head_after_write(self, key: str) -> dict | None:
        """The HEAD of an object just written, asked again a few times (about 3 s in all) while the store says it
        does not exist: a store whose reads lag its writes answers 404 right after a completed upload, and the
        run would call its own object missing and delete it."""
        head = self._head(key)
        for pause in _READ_AFTER_WRITE_PAUSES:
            if head is not None:
                break
            time.sleep(pause)
            head = self._head(key)
        return head

    def _head(self, key: str) -> dict | None:
        """HEAD with botocore's own errors (the upload path wraps them as an :class:`UploadError`)."""
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _status(exc) == 404:
                return None
            raise

    def list_keys(self, prefix: str) -> Iterator[dict]:
        """Every object under ``prefix`` as ListObjectsV2 gives it (Key, Size, ETag, ...); a failed
        listing is a :class:`DownloadError` saying what failed and whether retrying helps."""
        doing = f"listing {self.uri(prefix)} (ListObjectsV2)"
        try:
            last = None
            for page in _pages(self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix),
                               doing, "NextContinuationToken"):
                _require_listing(page, ("Name",), doing)
                contents = page.get("Contents", [])
                _require_in_order(page, contents, last, doing)
                if contents:
                    last = contents[-1]["Key"]
                yield from contents
        except ValueError as exc:  # botocore parses numbers with int(): a <Size> damaged on the way ends here
            raise DownloadError(f"listing {self.uri(prefix)} gave an answer that cannot be read ({exc}); the run "
                                "will be retried", retryable=True, cause="the store's answer was damaged on the way",
                                remedy="retried automatically; if it persists, check the network path to the store"
                                ) from None
        except Exception as exc:
            raise _wrap(exc, f"listing {self.uri(prefix)} (ListObjectsV2)", DownloadError) from exc

    def put_bytes(self, key: str, data: bytes, content_type: str, *, fresh: bool = False,
                  if_match: str | None = None) -> str:
        """Write a small object (a manifest) with Content-MD5 and check the returned ETag against our
        MD5; without ``verify_etags`` a 200 proves nothing, so it is read back and compared (a manifest
        is never reported written when the store kept nothing). A copy that arrived corrupted is sent
        again (``corrupt_attempts`` in all); if it never arrives whole, a retryable ``UploadError`` is
        raised (the key is left as it is). Returns the ETag.

        A write that fails ambiguously (a reset, a timeout, a 5xx: it may have landed, or land later)
        is not withdrawn: a manifest key is never emptied here, since it may hold the previous commit
        a moment ago; the caller reads the key back and decides (see :func:`refused`).

        ``fresh``: the key must hold nothing yet (a day's first manifest): written with If-None-Match, and
        :class:`KeyTakenError` if another run's is there; a copy of ours that arrived damaged is replaced
        only while it is still ours (If-Match its ETag; ``if_match`` for a caller's next try after a
        :class:`CorruptedWrite`, whose ``etag`` it is). Where what the key holds cannot be checked (its HEAD
        failing), the write fails with that failure (a :class:`CorruptedWrite` after a damaged copy), never as
        :class:`KeyTakenError`: the object there may be our own."""
        digest = hashlib.md5(data).digest()
        first = {"IfMatch": if_match} if if_match else {"IfNoneMatch": "*"} if fresh else {}
        condition, etag = first, ""
        for attempt in range(1, self.corrupt_attempts + 1):
            try:
                response = self.with_conditions(functools.partial(
                    self.client.put_object, Bucket=self.bucket, Key=key, Body=data, ContentType=content_type,
                    ContentMD5=_md5_header(digest), **self.encryption), condition, self.uri(key), "PutObject")
            except Exception as exc:
                if _code(exc) in S3_CORRUPT_CODES and attempt < self.corrupt_attempts:
                    continue
                if condition and _is_taken(exc):
                    # ours arrived whole after all: an answer lost and the PUT retried (by botocore, or by us after
                    # an answer that said it arrived damaged) finds our own copy there
                    if self.held_after_refusal(key, exc, digest.hex(), len(data)):
                        if self.verify_etags:
                            return digest.hex()
                        try:  # the store's own ETag, as an answer would have given it
                            answered = self.head(key) or {}
                        except Exception:  # noqa: BLE001 - read back whole just now: only its ETag is unknown
                            answered = {}
                        self._note_answered(data, answered)
                        return self.etag_in(answered) or digest.hex()
                    raise _refusal(self.uri(key), exc) from None
                raise _wrap(exc, f"writing {self.uri(key)} (PutObject)", encryption=self.encryption) from exc
            etag = self.etag_in(response)
            if (etag == digest.hex()) if self.verify_etags else (self.get_verified_bytes(key) == data):
                self._note_answered(data, response)
                return etag
            log.warning("%s arrived corrupted (%s), attempt %d of %d", self.uri(key),
                        f"ETag {etag}, MD5 {digest.hex()}" if self.verify_etags else "it does not read back as written",
                        attempt, self.corrupt_attempts)
            if condition:
                try:
                    condition = self.replacing(key, first)
                except ArchiveError as check:  # the answer's ETag stands in for the one the HEAD would have read
                    raise self._corrupted_write(key, attempt, etag, digest, response.get("ETag"), check) from check
        raise self._corrupted_write(key, self.corrupt_attempts, etag, digest, condition.get("IfMatch"))

    def _corrupted_write(self, key: str, attempts: int, etag: str, digest: bytes, stored: str | None,
                         unchecked: ArchiveError | None = None) -> CorruptedWrite:
        """The error of a small object's write whose ``attempts`` copies all arrived damaged. ``stored``: the damaged
        copy's ETag as the store has it (a next try replaces only that one); ``unchecked``: the HEAD that was to read
        it failed, so the write stops there, retryable, rather than be sent again as the first time (our own
        damaged copy would refuse it, 412, and be taken for another run's).

        Not deleted: a manifest key may have held the previous commit (or a removal's mark) a moment ago, and an
        ETag damaged on the way back proves nothing about what was stored; the caller reads it back."""
        error = CorruptedWrite(f"{self.uri(key)} arrived corrupted {attempts} time{'s' if attempts > 1 else ''} "
                               f"(ETag {etag}, our MD5 {digest.hex()}" + ("" if self.verify_etags else ", and it did "
                               "not read back as written") + "): the network or store alters data"
                               + (f"; the copy the store kept could not be checked ({unchecked.message})"
                                  if unchecked is not None else ""), retryable=True, cause=_CORRUPTED,
                               remedy=_CORRUPTED_REMEDY)
        error.etag = stored
        return error

    def etag_in(self, response: dict) -> str:
        """The ETag of a store's answer (see :func:`etag_text`), noting whether the store writes MD5s in upper case
        or without quotes: it may compare an If-Match with its own form only."""
        answered = str(response.get("ETag", ""))
        raw = answered.strip('"')
        if _HEX_ETAG.fullmatch(raw) and raw != raw.lower():
            self.upper_etags = True
        if raw and not answered.startswith('"'):
            self.unquoted_etags = True
        return etag_text(raw)

    def _note_answered(self, data: bytes, response: dict) -> None:
        """Keep the ETag the store answered for ``data`` (a manifest read or written): without MD5 ETags
        (``verify_etags`` off) it is the only If-Match that replaces exactly those bytes."""
        if response.get("ETag"):
            answered = self._answered_etags
            answered[hashlib.md5(data).hexdigest()] = str(response["ETag"])
            while len(answered) > 256:
                answered.pop(next(iter(answered)))

    def answered_etag(self, data: bytes | None) -> str | None:
        """The ETag the store last answered for ``data`` (a manifest read or written by this store object), as it
        answered it, or None where none was seen: what a GET's bytes are compared with a listing by."""
        if data is None:
            return None
        if isinstance(data, StandIn):  # not read: the ETag the store answered for it
            return data.etag
        return self._answered_etags.get(hashlib.md5(data).hexdigest())

    def etag_of(self, data: bytes | None) -> str | None:
        """The ETag ``data`` has as a small object written in one PUT, where ETags are MD5s (else None), in the
        store's case: the condition that replaces exactly those bytes (If-Match) with no further request."""
        if data is None:
            return None
        if isinstance(data, StandIn):  # not read: the ETag the store answered for it
            return data.etag
        if not self.verify_etags:  # the ETag the store answered for these bytes, if it was seen
            return self._answered_etags.get(hashlib.md5(data).hexdigest())
        digest = hashlib.md5(data).hexdigest()
        digest = digest.upper() if self.upper_etags else digest
        return digest if self.unquoted_etags else f'"{digest}"'

    def own_damaged(self, key: str, etag: str | None) -> bytes | None:
        """After a read of ``key`` failed: a stand-in (:data:`OWN_DAMAGED`, with the copy's size and ETag) when the
        key's HEAD names the damaged copy a failed write of ours left there (``etag``: :attr:`CorruptedWrite.etag`),
        else None. A store that keeps a body damaged on the way (checking neither Content-MD5 nor the CRC32
        botocore sends beside it) keeps that CRC32 too, and every later GET of the copy fails botocore's check:
        "cannot be read" is then no sign that another run wrote it, and a cleanup that left it in place blocked
        the day for good. Its ETag proves whose it is: the cleanup deletes it (a first manifest's), or replaces it
        only If-Match that ETag (see :meth:`etag_of`). None too where the HEAD fails (not known to be ours)."""
        if not etag:
            return None
        try:
            head = self.head(key)
        except Exception:  # noqa: BLE001 - not known to be ours: left as it is
            return None
        if head is None or etag_text(head["ETag"]) != etag_text(etag):
            return None
        log.warning("%s cannot be read, and it is the copy a failed write of this run's left damaged (ETag %s)",
                    self.uri(key), etag_text(head["ETag"]))
        return StandIn(OWN_DAMAGED, head["ContentLength"], head["ETag"])

    def replacing(self, key: str, first: dict[str, str]) -> dict[str, str]:
        """The condition for writing ``key`` again after a copy of ours did not arrive whole: replace the copy
        the store holds (If-Match its ETag, as a HEAD reads it: an answer's ETag may be the damaged thing), or,
        where it kept nothing, write as the first time (``first``). A HEAD that fails raises its error: written as
        the first time, the write would meet our own damaged copy (412) and take it for another run's."""
        head = self.head(key)
        return {"IfMatch": head["ETag"]} if head is not None else first

    def holds(self, key: str, md5_hex: str | None, size: int | None, content_md5: str | None = None,
              writer: str | None = None, retried: bool = False) -> bool:
        """Whether ``key`` holds exactly the object of ETag ``md5_hex`` and ``size`` bytes: a write whose answer was
        lost, retried and refused (412, or NoSuchUpload for a multipart Complete), was ours after all. By its ETag
        (a single PUT's MD5, or a multipart's ``md5-of-parts-N``); without MD5 ETags (``verify_etags`` off) by
        reading it back and hashing it against ``content_md5`` (the whole object's MD5; a single PUT's is its
        ETag): a rare path, after an answer was lost, so a big object is read back whole rather than guessed.
        ``writer``: the upload's own mark (see :meth:`begin`), which the object must carry too: the same bytes may
        be another run's (another database's, a hot standby's), whose object is not ours to take or withdraw.
        ``md5_hex`` and ``size`` None: any object carrying ``writer`` (a copy of that upload's, whole or damaged).
        ``retried``: the write was sent more than once, so an object without any user metadata may be its own on a
        store that drops metadata (said so); sent once, such an object is another writer's.

        A check that cannot be made (the HEAD, or the read back, failing) raises its error, classified (a denied
        HEAD names s3:GetObject): "not known" is no "not ours", which a caller would blame on another run."""
        head = self.head(key)
        if head is not None and writer is not None and not head.get("Metadata") and retried:
            raise UploadError(f"{self.uri(key)} carries no user metadata at all, where every object this archiver "
                              "writes carries its writer, table and day (x-amz-meta-*): the store does not keep them, "
                              "so whether it is this run's own write cannot be told", retryable=False,
                              cause="the object store keeps no user metadata (x-amz-meta-* headers)",
                              remedy="use a store, or a store setting or gateway, that keeps S3 user metadata: the "
                                     "archiver tells its own objects from others' by it")
        if head is None or (size is not None and head.get("ContentLength") != size) or not _written_by(head, writer):
            return False
        if md5_hex is None:
            return True
        if self.verify_etags:
            return self.etag_in(head) == md5_hex
        try:
            return self._content_md5(key) == (content_md5 or md5_hex)
        except Exception as exc:
            raise _wrap(exc, f"reading {self.uri(key)} back (GetObject)", DownloadError,
                        encryption=self.encryption) from exc

    def held_after_refusal(self, key: str, refused: BaseException, md5_hex: str | None, size: int | None,
                           content_md5: str | None = None, writer: str | None = None) -> bool:
        """:meth:`holds`, asked after a write of ``key`` was refused for what the key holds (``refused``: a 412, a
        NoSuchUpload): a check that cannot be made raises that failure (see :func:`_unchecked`), never "taken"."""
        try:
            return self.holds(key, md5_hex, size, content_md5, writer, retried=_sent_again(refused))
        except ArchiveError as check:
            raise _unchecked(self.uri(key), refused, check) from refused

    def _content_md5(self, key: str) -> str:
        """The MD5 of the object's bytes, read back in chunks (flat memory whatever its size)."""
        digest = hashlib.md5()
        body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        try:
            for chunk in body.iter_chunks(1 << 20):
                digest.update(chunk)
        finally:
            body.close()
        return digest.hexdigest()

    @staticmethod
    def refused(exc: BaseException) -> bool:
        """Whether the store certainly did not carry out the request that failed with ``exc``: it
        answered with a 4xx (refused, bad digest, denied). A reset, a timeout, a 5xx or a 200 with
        an error body may have been carried out, or may still be."""
        from botocore.exceptions import ClientError

        seen: set[int] = set()
        current: BaseException | None = exc
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            if isinstance(current, ClientError):
                meta = current.response.get("ResponseMetadata", {})
                status = meta.get("HTTPStatusCode") or 0
                # botocore's own earlier attempts (a timeout, a 5xx) may have been carried out
                return 400 <= status < 500 and not meta.get("RetryAttempts")
            current = current.__cause__ or current.__context__
        return False

    @staticmethod
    def settled(exc: BaseException) -> bool:
        """Whether nothing of the write that failed with ``exc`` can still land: the store refused it
        (:meth:`refused`), or carried out every attempt and answered it (:class:`CorruptedWrite`)."""
        return isinstance(exc, CorruptedWrite) or S3Store.refused(exc)

    def delete(self, key: str) -> None:
        """Delete ``key``; one that is not there counts as deleted (S3 answers 204 either way; GCS's XML API
        answers 404 NoSuchKey)."""
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if _code(exc) != "NoSuchKey" and not (_status(exc) == 404 and _code(exc) in ("", "NotFound")):
                raise

    def delete_quietly(self, key: str, original: BaseException | None = None) -> bool:
        """Delete ``key`` as cleanup after ``original`` failed: a failure to delete is logged and added
        to ``original`` as a note, never raised, so the error that matters is the one reported.
        Returns whether the delete went through. Usage: ``except Exception as exc:
        store.delete_quietly(key, exc); raise``."""
        try:
            self.delete(key)
            return True
        except Exception as exc:  # noqa: BLE001 - cleanup must not replace the original error
            text = (f"cleanup: could not delete {self.uri(key)} ({_said(exc)}); "
                    "delete it by hand or archive the day again")
            log.warning(text)
            _note(original, text)
            return False

    def _withdraw_if_ours(self, key: str, expected_etag: str | set[str], size: int, original: BaseException,
                          content_md5: str | None = None, writer: str | None = None) -> None:
        """After a write that failed ambiguously (reset, 5xx, 200-with-Error after the store acted),
        delete the object under ``key`` only if it is the one we sent (one of our ETags, our size):
        an older archive that is still there must survive. Without MD5 ETags (``verify_etags`` off), by
        reading it back against ``content_md5`` (the object's MD5; a single PUT's is its ETag). ``writer``: the
        upload's own mark, which the object must carry too (see :meth:`holds`)."""
        etags = {expected_etag} if isinstance(expected_etag, str) else set(expected_etag)
        try:
            head = self.head(key)
            ours = head is not None and head.get("ContentLength") == size and _written_by(head, writer) and (
                self.etag_in(head) in etags - {""} if self.verify_etags else
                self._content_md5(key) == (content_md5 or next(iter(etags))))
        except Exception as exc:  # noqa: BLE001 - cleanup must not replace the original error
            _note(original, f"cleanup: could not check whether {self.uri(key)} was written "
                            f"({_said(exc)}); the next archive of this day replaces it")
            return
        if ours:
            self.delete_quietly(key, original)

    def get_bytes(self, key: str) -> bytes:
        """A small object's bytes, verified (see ``get_verified_bytes``); KeyError if missing."""
        data = self.get_verified_bytes(key)
        if data is None:
            raise KeyError(self.uri(key))
        return data

    def get_bytes_or_none(self, key: str) -> bytes | None:
        return self.get_verified_bytes(key)

    def get_verified_bytes(self, key: str, *, attempts: int = 3) -> bytes | None:
        """A small object (a manifest) read whole, or None if the key does not exist (a 404 that the key's
        HEAD confirms, see ``_confirm_missing``).

        When the ETag is a plain MD5 (and ``verify_etags``), the body must hash to it; a body that
        does not, or that botocore rejects by its checksum, is read again (``attempts`` in all)
        and then raises a retryable ``DownloadError``."""
        problem = ""
        for _ in range(max(1, attempts)):
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=key)
                length = response.get("ContentLength") or 0
                if length > MAX_SMALL_OBJECT_BYTES:  # no manifest of ours: not read into memory (the bucket's say)
                    response["Body"].close()  # (its ETag kept: a new manifest replaces exactly it, If-Match)
                    return StandIn(OVERSIZED, length, response.get("ETag"))
                data = response["Body"].read()
            except Exception as exc:
                if _is_not_found(exc):
                    self._confirm_missing(key)
                    return None
                if not _is_checksum_error(exc):
                    raise _wrap(exc, f"reading {self.uri(key)} (GetObject)", DownloadError,
                                encryption=self.encryption) from exc
                problem = _said(exc)
                continue
            etag = self.etag_in(response)
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            if status == 206 or response.get("ContentRange") or (length and len(data) != length):
                # a part of the object (a gateway's 206 to a whole GET, a body cut short): not the manifest
                problem = (f"the store answered {status} with {len(data)} bytes of the object "
                           f"({response.get('ContentRange') or f'Content-Length {length}'}), not all of it")
                log.warning("%s read failed: %s", self.uri(key), problem)
                continue
            if self.verify_etags and not etag:  # every S3 answer to a GET has an ETag: a gateway's page has none
                problem = f"the store answered {status} without an ETag (not the object: a gateway's own page?)"
                log.warning("%s read failed: %s", self.uri(key), problem)
                continue
            if not data and _stored_empty(response, etag):  # a zero-byte object another tool left at the key:
                self._note_answered(data, response)  # what is stored, for the caller to refuse as no manifest
                return data
            if not data:  # what we read this way is never empty: a 200 without its body (a proxy's, a gateway's)
                problem = "the store answered 200 with an empty body"
                log.warning("%s read failed: %s", self.uri(key), problem)
                continue
            if _is_error_document(data):  # a 200 whose body is an S3 <Error> (no ETag to catch it): not the object
                problem = f"the store answered 200 with an error document: {data[:200]!r}"
                log.warning("%s read failed: %s", self.uri(key), problem)
                continue
            if not self.verify_etags or not _PLAIN_MD5.match(etag) or hashlib.md5(data).hexdigest() == etag:
                self._note_answered(data, response)
                return data
            problem = f"body hashes to {hashlib.md5(data).hexdigest()}, ETag is {etag}"
            log.warning("%s read corrupted: %s", self.uri(key), problem)
        etags = f"; {_NOT_MD5_ETAGS}" if problem.startswith("body hashes to") else ""
        raise DownloadError(f"{self.uri(key)} came back corrupted or as an error {attempts} times ({problem}); the "
                            "run will be retried", retryable=True,
                            cause="the object came back corrupted in transit, or the store answered with an error",
                            remedy="retried automatically; if it persists, check the network path to the store "
                                   f"(proxies, TLS-terminating gateways) and the store's health{etags}")

    def download_to(self, key: str, sink: BinaryIO | Any, expected_md5: str | None = None, *,
                    expected_size: int | None = None, chunk_size: int = 4 * MiB,
                    content_encoding: str | None = None) -> Downloaded | None:
        """Stream ``key`` into ``sink`` (anything with ``write``) in ``chunk_size`` pieces (1-8 MiB),
        hashing as it goes, and check the whole object; None (nothing written) when the key does not
        exist.

        Checks, in order: the stored size against ``expected_size`` (before any byte is written),
        the bytes received against ContentLength, their MD5 against the ETag when that is a plain
        MD5 (corruption in transit: retryable ``DownloadError``), then against ``expected_md5``
        (a mismatch the ETag confirms means the stored object is damaged: ``DownloadError`` with
        ``damaged=True``, not retryable; a GET answered under another ETag than the object's HEAD is another
        version's bytes, never a verdict: ``damaged=False``). On any error the sink holds bad bytes: discard it.
        ``content_encoding``: the one the object was stored with, asked for (see :func:`_read_as_stored`)."""
        chunk_size = min(max(chunk_size, MiB), 8 * MiB)
        md5, size = hashlib.md5(), 0
        uri = self.uri(key)
        try:
            accepting = _ACCEPT_STORED.set(content_encoding)
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=key)
            finally:
                _ACCEPT_STORED.reset(accepting)
            length = response.get("ContentLength")
            if expected_size is not None and length is not None and length != expected_size:
                response["Body"].close()
                raise self._unexpected_size(key, f"the GET answered {length:,} bytes", expected_size)
            body = response["Body"]
            while chunk := body.read(chunk_size):
                md5.update(chunk)
                try:
                    sink.write(chunk)
                except OSError as exc:  # the local file, not the store: never blamed on the bucket
                    body.close()
                    raise _local_write_error(exc, uri, sink) from exc
                size += len(chunk)
        except (DownloadError, LocalFileError):
            raise
        except Exception as exc:
            if _is_not_found(exc) and size == 0:
                self._confirm_missing(key)
                # a data object's, not a manifest's (get_verified_bytes: every unarchived day's read would list)
                self.confirm_missing(key, MISSING_ON_READ)
                return None
            if _is_checksum_error(exc):
                raise DownloadError(f"{uri} came back corrupted ({_said(exc)}); "
                                    "the download will be retried", retryable=True) from exc
            raise _wrap(exc, f"downloading {uri} (GetObject)", DownloadError, encryption=self.encryption) from exc
        etag, digest = self.etag_in(response), md5.hexdigest()
        if length is not None and length != size:
            raise DownloadError(f"{uri}: got {size:,} bytes of {length:,}; the download will be retried",
                                retryable=True)
        if expected_size is not None and size != expected_size:  # an answer without Content-Length, cut or padded
            raise self._unexpected_size(key, f"the GET's answer (without Content-Length) held {size:,} bytes",
                                        expected_size)
        vouched = self.verify_etags and bool(_PLAIN_MD5.match(etag))
        if vouched and digest != etag:
            raise DownloadError(f"{uri} came back corrupted (MD5 {digest}, the store's ETag {etag}); "
                                "the download will be retried", retryable=True, remedy=_CORRUPTED_REMEDY)
        if expected_md5 is not None and digest != expected_md5:
            if not self._same_version(key, etag):
                # the bytes may be whole, but another version's than the object's now (a cache, a replica behind):
                # asked whatever the ETag's form, for a multipart ETag ("<md5 of the part MD5s>-N") vouches for
                # nothing, and a second download from the same cache agrees with the first
                raise DownloadError(f"{uri}: the store answered with other bytes than the object's now (MD5 {digest}, "
                                    f"ETag {etag}; its HEAD says otherwise); the download will be retried",
                                    retryable=True, damaged=False)
            if vouched:  # the store's own MD5 agrees with what we got: the stored object is not the expected one
                raise DownloadError(f"{uri} is damaged: the stored object has MD5 {digest}, expected {expected_md5}; "
                                    "restore it from a replica or backup, or archive the day again",
                                    retryable=False, damaged=True)
            raise DownloadError(f"{uri} does not match: MD5 {digest}, expected {expected_md5} (corrupted in transit "
                                "or damaged in the store; if it repeats, the stored object is damaged)",
                                retryable=True, damaged=None)
        if expected_md5 is not None:  # its bytes are the expected ones, stored under this ETag (see proven_etag)
            self._proven_etags[key] = etag
        return Downloaded(key=key, size=size, md5=digest, etag=etag)

    def stored_digests(self, key: str, *, expected_size: int | None = None,
                       content_encoding: str | None = None) -> tuple[str, str] | None:
        """The MD5 and SHA-256 of the object's bytes as stored (None: no object), streamed through ``download_to``
        a few MiB at a time and kept nowhere, so a day of any size costs neither memory nor disk. What tells the
        same bytes uploaded in other parts apart from other bytes where ETags cannot: a multipart ETag is the MD5
        of its parts' MD5s, so it changes with the part size. Raises as ``download_to`` does."""
        sink = _Sha256Sink()
        found = self.download_to(key, sink, expected_size=expected_size, content_encoding=content_encoding)
        return None if found is None else (found.md5, sink.sha256)

    def _unexpected_size(self, key: str, answered: str, expected_size: int) -> DownloadError:
        """The error for a GET whose answer is not ``expected_size`` bytes: the answer's fault (an error page, a body
        cut short or altered on the way: retryable) unless the object's own HEAD confirms another size (damaged)."""
        uri, stored = self.uri(key), self._stored_size(key, expected_size)
        if stored in (expected_size, None):  # the answer, not the object, or nothing confirms the object's size: only
            # the store's own HEAD, asked twice alike, may call it damaged
            held = "stored" if stored is not None else "recorded (the object's HEAD did not confirm another size)"
            return DownloadError(f"{uri}: {answered} where {expected_size:,} are {held} (an error page, or an answer "
                                 "cut short or altered on the way); the download will be retried", retryable=True,
                                 damaged=False, cause=_NOT_THE_OBJECT, remedy=_RETRIED)
        return DownloadError(f"{uri} is damaged: the store holds {stored:,} bytes, expected {expected_size:,}; "
                             "restore it from a replica or backup, or archive the day again",
                             retryable=False, damaged=True)

    def proven_etag(self, key: str) -> str | None:
        """The ETag under which a download of ``key`` got exactly the expected bytes (this store object's last):
        a multipart object copied onto itself in other parts has the same bytes under another ETag."""
        return self._proven_etags.get(key)

    def _same_version(self, key: str, etag: str) -> bool:
        """Whether the object's HEAD names the version a GET answered with (``etag``); a HEAD that fails is no
        answer (False: the GET's bytes may be any version's)."""
        try:
            head = self.head(key)
        except Exception:  # noqa: BLE001 - asked only to tell a damaged object from a stale answer
            return False
        return head is not None and self.etag_in(head) == etag

    def _confirm_missing(self, key: str) -> None:
        """After a GET answered 404: raise a retryable :class:`DownloadError` unless the object's HEAD
        agrees that it does not exist. A store that is only eventually consistent (or a gateway that
        answers 404 for a moment) must not make an archive whose object is there pass for one whose
        object is lost: that verdict fails proofs and checks, and is never retried. The HEAD is asked
        twice (a moment apart), as the light check asks it: the GET's 404 and one HEAD's may be the
        same moment of the store's."""
        if self.head(key) is None and self.head_again(key) is None:
            return
        raise inconsistent(f"{self.uri(key)}: the GET answered 404 (no such key) but the object's HEAD finds it")

    def head_again(self, key: str) -> dict | None:
        """The object's HEAD (see :meth:`head`) asked again a moment after an answer not to be believed alone
        (a 404, another size): the first may be a store's moment of inconsistency (a lagging replica, a caching
        gateway), and two answers back to back the same moment's."""
        time.sleep(_MISSING_AGAIN_SECONDS)
        return self.head(key)

    def confirm_missing(self, key: str, said: str, listed: Collection[str] | None = None) -> None:
        """After the store said (``said``: which answers) that ``key`` does not exist: raise a retryable
        :class:`DownloadError` where a listing of the key shows the object all the same. Two HEADs answered by one
        lagging replica or caching gateway agree with each other; a listing is another kind of answer, and a store
        contradicting itself is no verdict ("missing" fails proofs, checks and removals for good, and names a remedy
        that rewrites the archive; "replaced" or "rejected" sends the operator after a rival run). ``listed``: the
        keys a listing the caller made already shows (no request), else the key's own listing is asked for. A
        listing that fails is no answer either: its error is raised."""
        if listed is not None:
            if key in listed:
                raise inconsistent(f"{self.uri(key)}: {said} (no such key), but this run's bucket listing shows it")
            return
        shown = next(self.list_keys(key), None)  # (the key itself sorts first under its own prefix)
        if shown is not None and shown["Key"] == key:
            raise inconsistent(f"{self.uri(key)}: {said} (no such key), but the bucket listing shows the object "
                                f"({shown.get('Size', '?')} bytes, ETag {shown.get('ETag', '?')})")

    def _stored_size(self, key: str, expected_size: int) -> int | None:
        """The object's size by its own HEAD (None if that cannot be had): what a GET's answer is checked against
        before an object is called damaged by its size. A HEAD answer has no checksum (a gateway's own
        Content-Length, a passing fault), so another size than ``expected_size`` is believed only when a second
        HEAD, a moment later, gives it again (as ``verify.object_problems`` asks): one wrong answer after a GET's
        error page must not become the permanent verdict "damaged"."""
        first = self._head_size(key)
        if first is None or first == expected_size:
            return first
        time.sleep(_MISSING_AGAIN_SECONDS)
        return first if self._head_size(key) == first else None

    def _head_size(self, key: str) -> int | None:
        try:
            head = self.head(key)
        except Exception:  # noqa: BLE001 - no confirmation either way
            return None
        return head.get("ContentLength") if head is not None else None

    # --- multipart leftovers ---------------------------------------------------------------------
    def abort_stale_uploads(self, key: str, *, initiated_before: dt.datetime | None = None,
                            keep: str | None = None) -> int:
        """Abort multipart uploads of exactly ``key`` left behind by a killed process, and return how
        many. Only uploads initiated before ours are touched: at or before ``initiated_before``, or,
        with ``keep`` (our own upload id), at or before the time the store gives ours in the same
        listing; without either, all of them. The archiver holds a per table-day lock, so no
        legitimate upload of the key can run concurrently; the time bound is a second safety."""
        return self.settle_stale_uploads(key, initiated_before=initiated_before, keep=keep)[0]

    def settle_stale_uploads(self, key: str, *, initiated_before: dt.datetime | None = None,
                             keep: str | None = None) -> tuple[int, bool]:
        """:meth:`abort_stale_uploads`, and whether the listing accounts for every upload it showed:
        each of exactly ``key``, ``keep`` among them, every other one aborted. A listing has no
        checksum: one damaged byte in a key or a date would make a leftover look like someone else's
        upload, or newer than ours; then the caller keeps the key's upload marker, so the next run
        lists again instead of no run ever looking (see ``S3Upload``)."""
        listed = self._uploads_under(key)
        uploads = [u for u in listed if u["Key"] == key]
        bound = initiated_before
        if keep is not None:
            ours = [u.get("Initiated") for u in uploads if u["UploadId"] == keep]
            if bound is None and ours and isinstance(ours[0], dt.datetime):
                bound = ours[0]
        stale = [u["UploadId"] for u in uploads if u["UploadId"] != keep
                 and (bound is None or not isinstance(u.get("Initiated"), dt.datetime) or u["Initiated"] <= bound)]
        for upload_id in stale:
            self.abort_upload(key, upload_id)
        if stale:
            log.info("aborted %d stale multipart upload(s) of %s", len(stale), self.uri(key))
        ours = sum(1 for u in uploads if keep is not None and u["UploadId"] == keep)
        settled = len(uploads) == len(listed) and ours == (keep is not None) and len(stale) + ours == len(uploads)
        return len(stale), settled

    def abort_stale_uploads_under(self, prefix: str, pattern: re.Pattern[str]) -> tuple[int, bool]:
        """Abort every multipart upload under ``prefix`` whose key ``pattern`` matches in full (one
        listing): for a caller that holds the lock of everything those keys stand for, so none of
        them can be a live upload. Returns how many, and whether every upload listed matched (else
        one may be a leftover whose key a damaged byte disguised: see :meth:`settle_stale_uploads`).
        ``prefix`` should be an upload's exact key: some stores (MinIO) list only the uploads of the
        object a prefix names exactly, so a prefix that is no object's name lists none there."""
        listed = self._uploads_under(prefix)
        uploads = [u for u in listed if pattern.fullmatch(u["Key"])]
        for upload in uploads:
            self.abort_upload(upload["Key"], upload["UploadId"])
            log.info("aborted a stale multipart upload of %s", self.uri(upload["Key"]))
        return len(uploads), len(uploads) == len(listed)

    def abort_upload(self, key: str, upload_id: str) -> None:
        """AbortMultipartUpload of ``upload_id``, where NoSuchUpload counts as done: the upload is gone, which is all
        an abort wants. botocore sends an abort again whose answer was lost after the store carried it out, and the
        store answers that retry NoSuchUpload; taken for a failure, it kept a killed run's marker for good (a day is
        archived once, so no later run comes to remove it). Any other failure is raised as botocore gives it."""
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except Exception as exc:
            if _code(exc) != "NoSuchUpload":
                raise

    def _uploads_under(self, prefix: str) -> list[dict]:
        """Every open multipart upload whose key starts with ``prefix`` (all pages of the listing)."""
        uploads = []
        doing = f"listing the uploads under {self.uri(prefix)} (ListMultipartUploads)"
        for page in _pages(self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket,
                                                                                          Prefix=prefix),
                           doing, "NextKeyMarker"):
            _require_listing(page, ("Bucket",), doing)
            uploads += page.get("Uploads", [])
        return uploads

    def abort_stale_uploads_quietly(self, key: str, **kwargs: Any) -> None:
        """:meth:`abort_stale_uploads`, with a failure logged instead of raised (cleanup only)."""
        try:
            self.abort_stale_uploads(key, **kwargs)
        except Exception as exc:  # noqa: BLE001 - leftovers cost storage, not correctness; a lifecycle rule also helps
            log.warning("could not abort stale multipart uploads of %s (%s); a bucket lifecycle rule "
                        "(AbortIncompleteMultipartUpload) will remove them", self.uri(key), _said(exc))


def temp_file_refused(exc: OSError, table: str | None, day: str | None, temp_dir: str | os.PathLike | None,
                      doing: str, what: str) -> LocalFileError:
    """The temp file of ``what`` (the download, the proof's copy) could not be created: a local problem of the
    directory, named as one, with the setting that moves it."""
    from archive_pipeline.core.errors import classify

    directory = temp_dir_given(temp_dir) or temp_dir_named()
    found = classify(exc)
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    cause = f"the temp directory {directory} is full" if full else f"{found.cause} ({directory})"
    remedy = (f"free space in {directory}, or pass temp_dir (TMPDIR for the default) on a volume that holds the "
              "whole object" if full else f"{found.remedy} (the temp directory: {directory}; temp_dir sets it, "
              "TMPDIR the default)")
    return LocalFileError(f"{doing} {table} for {day}: no temp file for {what}: {cause} "
                          f"({type(exc).__name__}: {exc}); a local problem, not the store's or the archive's; "
                          "nothing was loaded", table=table, day=day, retryable=False, remedy=remedy, cause=cause,
                          directory=directory)


def _local_write_error(exc: OSError, uri: str, sink: Any) -> LocalFileError:
    """A failed write of downloaded bytes into ``sink`` as a local error naming the file's directory
    (found through ``/proc/self/fd``: the file may have no name) and what to change."""
    from archive_pipeline.core.errors import classify

    directory = None
    fd = getattr(sink, "fd", None)
    if fd is None and hasattr(sink, "fileno"):
        try:
            fd = sink.fileno()
        except (OSError, ValueError, AttributeError):
            fd = None
    if isinstance(fd, int):
        try:
            directory = os.path.dirname(os.readlink(f"/proc/self/fd/{fd}").removesuffix(" (deleted)"))
        except OSError:
            directory = None
    where = directory or "the temp directory"
    found = classify(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        cause = f"the temp directory {where} is full (no space left for the downloaded object)"
        remedy = (f"free space in {where}, or point the temp directory at a volume that holds the whole object: "
                  "the temp_dir argument (restore, deep_verify) or the archive_store resource's temp_dir, and "
                  "TMPDIR for the default; retrying at once would fail the same way")
    else:
        cause = f"writing to the local temp file in {where} failed ({found.cause})"
        remedy = f"{found.remedy} (the temp directory: {where})"
    return LocalFileError(f"downloading {uri} stopped: {cause} ({_said(exc)}); a local problem, "
                          "not the store's or the archive's", retryable=False, remedy=remedy, cause=cause,
                          directory=directory)


def _wrap(exc: BaseException, what: str, kind: type[ArchiveError] = UploadError, *,
          encryption: dict[str, str] | None = None) -> ArchiveError:
    """``exc`` (botocore, OSError, ...) as an archive error saying what failed and whether retrying helps: as
    :func:`classify` says, whose words the message quotes (a dropped connection, a checksum or an upload that
    arrived damaged are retried there; a TLS handshake that fails is not, though botocore's SSLError is a
    ConnectionError: called transient, it was retried through the whole backoff and failed the same way each time).
    ``encryption``: the store's server-side-encryption parameters (:attr:`S3Store.encryption`), which a KMS key's
    refusal or an unimplemented write is explained by (see :func:`errors.for_operation`)."""
    if isinstance(exc, ArchiveError):
        return exc
    found = classify(exc)
    retryable = found.retryable
    if found.where == "unknown":
        found = replace(found, cause="the request failed", remedy="retried automatically" if retryable else
                        "check the bucket, its permissions and the store's credentials and endpoint")
    else:
        found = for_operation(found, what, encryption)
    return kind(f"{what} failed: {found.cause} ({_said(exc)}); "
                f"{'transient, retried' if retryable else 'not retried: a retry cannot fix this'}",
                retryable=retryable, remedy=found.remedy, cause=found.cause)


@dataclass
class _Part:
    number: int
    etag: str
    md5: bytes
    size: int


class S3Upload:
    """One object being written: feed it the growing file with ``grow``, then ``finish`` or ``abort``.

    Threads: ``grow`` (the writer's thread) only records the size and wakes the upload's threads;
    the first of them creates the multipart upload (after the first whole part exists) and aborts
    stale uploads of the key, then up to ``max_concurrency`` threads claim whole parts in order
    (O(1) bookkeeping per part) and stream them from a duplicate of the file descriptor.

    Before it creates a multipart upload it writes an *upload marker* beside the key
    (``<key>.uploading``), and deletes it once the upload is completed or aborted and no other upload
    of the key can be left (one botocore created before retrying the create is found by the listing
    after it; a listing that failed or that cannot account for every upload it shows keeps the
    marker). A process killed in between leaves the marker with its upload, so the next run of the
    key sees it in the LIST it makes anyway and only then lists the store's multipart uploads: a
    small day, written by one PUT, costs no listing of uploads (which S3 has no cheaper way to show).
    """

    def __init__(self, store: S3Store, key: str, headers: dict[str, Any], plan: PartPlan, *,
                 table: str | None = None, day: str | None = None, stale_uploads: bool = True,
                 fresh: bool = False, source: tuple[str, str | None] | None = None,
                 writer: str | None = None) -> None:
        self.store = store
        self.key = key
        self.fresh = fresh  # the key must hold nothing: published with If-None-Match (see S3Store.conditions)
        self.stale_uploads = stale_uploads  # look for a killed process's uploads of the key after a single PUT
        self._marked = False  # the upload marker may be in the store (written, or its write attempted)
        # this upload's own marker: its text names the upload's owner, so a run that lost the day (its session ended
        # and another run took the key) never deletes the marker of the run that took it over (see _unmark_own),
        # and its table-day and source, so a run of another table-day, or of another database (whose lock does not
        # exclude this one), that finds it beside its own keys leaves it alone
        self._writer = writer or f"{os.getpid()}.{uuid.uuid4().hex}"
        self._marker_body = _MARKER + upload_marker_naming(table, day, source) + f"owner: {self._writer}\n".encode()
        # the owner's word that the key is still its own (its table-day lock held): then the marker is deleted as it
        # is; else (the lock gone with its session, or no owner said) only if it reads back as this upload's
        self.still_owned: Callable[[], bool] | None = None
        self._leftover = False  # an upload created after abort() could not be aborted
        self._creating = False  # CreateMultipartUpload is under way
        self._settled = True  # no upload of the key but ours can be left (else the marker stays for the next run)
        self.headers = headers
        self.plan = plan
        self.table = table
        self.day = day
        self.upload_id: str | None = None
        self._cond = threading.Condition()
        self._size = 0  # bytes present in the file, as announced by grow()
        self._final: int | None = None  # the file's final size, once finish() was called
        self._cut = 0  # bytes handed to parts so far
        self._next = 1  # next part number
        self._parts: dict[int, _Part] = {}
        self._error: BaseException | None = None
        self._aborted = False
        self._finished = False
        self._create_ambiguous = False  # CreateMultipartUpload failed in a way the store may have acted on
        # a create whose answer was lost (or that botocore retried) may land after any listing of ours: then
        # the marker stays, whatever the listings said, and the next run of the key lists and aborts it
        self._late_create = False
        self._cleaned = False
        self._aborted_id: str | None = None  # the upload abort() aborted
        self._threads: list[threading.Thread] = []
        self._live = 0  # the upload's threads still running: the last to end closes _fd once _close_fd was called
        self._closing = False  # _close_fd was called: _fd goes as soon as no thread of the upload reads it
        self._fd: int | None = None
        # the parts' bytes hashed in file order as they are read for their Content-MD5 (up to _hashed): _finish
        # compares it with the MD5 the sink computed while writing, so the file cannot change unseen in between
        self._whole = hashlib.md5()
        self._hashed = 0

    # --- public API ------------------------------------------------------------------------------
    @property
    def sent(self) -> int:
        """Bytes of the file already handed to part uploads."""
        return self._cut

    def in_flight(self) -> int:
        """Parts claimed but not yet stored."""
        with self._cond:
            return self._next - 1 - len(self._parts)

    def parts_done(self) -> int:
        with self._cond:
            return len(self._parts)

    def grow(self, fd: int, size: int) -> None:
        """The file behind ``fd`` now holds ``size`` bytes. Never blocks on the network: whole parts
        are sent by the upload's threads. Raises the error of a part that already failed."""
        if self._error is not None:
            raise self._error
        if self._aborted:
            raise self._error_here("the upload was aborted", retryable=False, cause="the upload was aborted")
        if size > self.plan.capacity:
            self._fail(self._too_big(size))
            raise self._error
        with self._cond:
            self._size = size
            if self._threads:
                if self._size - self._cut >= self.plan.size_at(self._cut):
                    self._cond.notify_all()
                return
        if size >= self.plan.size_at(0):
            self._start(fd)

    def finish(self, fd: int, size: int, md5_hex: str) -> StoredObject:
        """Send what is left, wait for every part, publish the object and check what was stored.

        Any failure aborts the upload (or withdraws an object we published) before it is raised."""
        try:
            return self._finish(fd, size, md5_hex)
        except BaseException as exc:
            self.abort(exc)
            raise

    def abort(self, original: BaseException | None = None) -> None:
        """Stop sending and drop the uploaded parts; nothing becomes visible under the key.

        Claims no new part at once, waits (at most the store's ``abort_timeout``) for parts in
        flight so none lands after the abort, then aborts the multipart upload. A cleanup failure is
        logged and added as a note to ``original`` (default: the exception being handled)."""
        original = original if original is not None else sys.exc_info()[1]
        with self._cond:
            if self._cleaned:  # abort() is idempotent: finish() aborts, then so may the archiver
                return
            self._cleaned = True
            self._aborted = True
            self._cond.notify_all()
        # Cancelled (Ctrl-C, SIGTERM, a terminated run): the person waits for the process to end, and a
        # stalled part would hold it for the whole abort_timeout. The upload is aborted after a short wait
        # instead; a part that lands later aborts it again while the process lives (see _work), and the
        # next archive of the key aborts what is left.
        wait = min(self.store.abort_timeout, CANCEL_WAIT) if is_cancellation(original) else self.store.abort_timeout
        if not self._join(wait):
            text = f"cleanup: parts of {self.store.uri(self.key)} were still in flight after {wait:.0f} s"
            (log.info if is_cancellation(original) else log.warning)(text)
            _note(original, text)
        with self._cond:
            upload_id, self.upload_id = self.upload_id, None
            unknown = self._create_ambiguous and upload_id is None
            # The marker goes once no upload of ours is left or can still be made. A part still in flight
            # does not keep it: an aborted upload is listed no more, so the marker would help no one.
            gone = not self._creating and not self._leftover
        if upload_id is not None:
            gone = self._abort_quietly(upload_id, original) and gone
            with self._cond:
                self._aborted_id = upload_id  # a part still in flight that lands later aborts it again
        elif unknown:  # CreateMultipartUpload failed ambiguously (e.g. reset after the store acted)
            try:
                gone = self.store.settle_stale_uploads(self.key)[1] and gone
            except Exception as exc:  # noqa: BLE001 - the original failure matters more
                gone = False
                text = (f"cleanup: could not look for an upload of {self.store.uri(self.key)} that may have been "
                        f"created ({_said(exc)}); the next archive of this key removes it")
                log.warning(text)
                _note(original, text)
        if gone:
            self._unmark(original)
        self._close_fd()

    # --- the writer's side ---------------------------------------------------------------------
    def _start(self, fd: int) -> None:
        self._fd = os.dup(fd)
        self._spawn(self._lead, "s3-upload-0")

    def _finish(self, fd: int, size: int, md5_hex: str) -> StoredObject:
        started = time.perf_counter()
        if size > self.plan.capacity:
            raise self._too_big(size)
        if self._error is not None:
            raise self._error
        if not self._threads and size >= self.plan.size_at(0):  # finish() without grow(): still in parts
            with self._cond:
                self._size = size
            self._start(fd)
        if not self._threads:
            etag = self._put_single(fd, size, md5_hex)
            waited = time.perf_counter()
            self._finished = True
            return self._checked(size, etag, 1, (), started, waited, waited, expected_etag=md5_hex)
        with self._cond:
            self._size = max(self._size, size)
            self._final = size
            self._cond.notify_all()
        self._join(None)
        if self._error is not None:
            raise self._error
        parts = [self._parts[n] for n in range(1, self._next)]
        if self.upload_id is None or sum(p.size for p in parts) != size:
            raise self._error_here(f"the upload ended with {sum(p.size for p in parts):,} of {size:,} bytes in parts",
                                   retryable=True, cause="the uploaded parts do not add up to the file",
                                   remedy=_RETRIED)
        if self._whole.hexdigest() != md5_hex:  # the parts are not the bytes the manifest will describe
            raise self._changed_on_disk()
        waited = time.perf_counter()
        expected = hashlib.md5(b"".join(p.md5 for p in parts)).hexdigest() + f"-{len(parts)}"
        upload_id = self.upload_id
        try:
            response = self._complete(upload_id, parts)
        except Exception as exc:
            # a retried Complete meets a 412 (fresh key) or NoSuchUpload (a completed upload is no longer one)
            # when an earlier try, whose answer was lost, completed it: the key then holds our object
            lost = (self.fresh and _is_taken(exc)) or _code(exc) == "NoSuchUpload"
            if lost and self._ours_after_refusal(exc, expected, size, content_md5=md5_hex):
                response = {"ETag": f'"{expected}"'} if self.store.verify_etags else self._head_etag(expected)
            elif self.fresh and _is_taken(exc):
                self._refuse_taken(exc)
            else:
                error = _wrap(exc, f"publishing {self.store.uri(self.key)} (CompleteMultipartUpload)",
                              encryption=self.store.encryption)
                # the store may have completed it before failing
                self._withdraw_if_ours(expected, size, error, content_md5=md5_hex)
                raise self._named(error) from exc
        # Checked before the upload counts as completed: a store that answered 200 without completing it (a
        # proxy's or gateway's made-up answer) still holds its parts, which finish()'s abort then removes
        # (an upload the store did complete is no longer listed: its abort answers NoSuchUpload).
        stored = self._checked(size, self.store.etag_in(response), len(parts), tuple(p.size for p in parts), started,
                               waited, time.perf_counter(), expected_etag=expected)
        with self._cond:
            self.upload_id = None  # completed: nothing left to abort
        self._close_fd()
        self._finished = True
        self._unmark(None)
        return stored

    def _head_etag(self, fallback: str) -> dict:
        """The key's ETag as the store gives it (a store's own, not an MD5), for the record of an upload found
        completed after its answer was lost; ``fallback`` where that HEAD fails, replaced by the ETag of the HEAD
        every such upload gets afterwards (see :meth:`_checked`)."""
        try:
            head = self.store.head(self.key)
        except Exception:  # noqa: BLE001 - only recorded; the object was just read back whole
            head = None
        return {"ETag": (head or {}).get("ETag") or f'"{fallback}"'}

    def _complete(self, upload_id: str, parts: list[_Part]) -> dict:
        """CompleteMultipartUpload, conditional on a fresh key where the store takes conditions."""
        complete = functools.partial(
            self.store.client.complete_multipart_upload, Bucket=self.store.bucket, Key=self.key, UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": p.number, "ETag": p.etag} for p in parts]})
        return self.store.with_conditions(complete, {"IfNoneMatch": "*"} if self.fresh else {},
                                          self.store.uri(self.key), "CompleteMultipartUpload")

    def _checked(self, size: int, etag: str, parts: int, part_sizes: tuple[int, ...], started: float,
                 waited: float, completed: float, *, expected_etag: str) -> StoredObject:
        """Check the published object (ETag, stored size); withdraw it and raise if it is not right.

        One PutObject whose ETag is our MD5 needs no HEAD: the store hashed exactly the bytes we sent
        (it also checked them against our Content-MD5), so it holds our ``size`` bytes; a small day
        saves a round trip. A multipart object's ETag hashes the parts' MD5s, not their bytes in order
        as stored, and a store that is not asked for MD5 ETags proves nothing: their size is read back."""
        store = self.store
        if store.verify_etags and etag != expected_etag:
            error = self._error_here(f"stored object's ETag {etag!r} != expected {expected_etag}: it arrived "
                                     "corrupted; the run will be retried", retryable=True)
            # withdraw what the store says it made (or what we sent), never an older archive of the key
            store._withdraw_if_ours(self.key, {expected_etag, etag}, size, error)
            raise error
        stored_object = StoredObject(key=self.key, uri=store.uri(self.key), size=size, etag=etag, parts=parts,
                                     wait_seconds=waited - started, complete_seconds=completed - waited,
                                     part_sizes=part_sizes)
        if store.verify_etags and parts == 1 and not part_sizes:
            return stored_object
        try:
            head = store.head_after_write(self.key)
        except Exception as exc:
            error = self._named(_wrap(exc, f"checking {store.uri(self.key)} (HeadObject)"))
            store.delete_quietly(self.key, error)
            raise error from exc
        except BaseException as exc:  # cancelled (Ctrl-C, SIGTERM, a terminated run): the object is whole and
            store.delete_quietly(self.key, exc)  # ours, but no manifest will name it: withdrawn as on a failure
            raise
        stored = head.get("ContentLength") if head is not None else None  # absent in a gateway's error page
        if stored != size:
            error = self._error_here(f"stored object has {stored} bytes (HeadObject), expected {size}; "
                                     "the run will be retried", retryable=True,
                                     cause="the stored object's size is not the size sent", remedy=_RETRIED)
            store.delete_quietly(self.key, error)
            raise error
        if not store.verify_etags and head.get("ETag"):  # the store's own ETag, which verify compares: never one
            return replace(stored_object, etag=store.etag_in(head))  # made up where a lost answer's HEAD failed
        return stored_object

    def _put_single(self, fd: int, size: int, md5_hex: str) -> str:
        """The whole (small) file in one verified PutObject; stale multipart uploads of the key are
        aborted afterwards (unless the caller has seen to them: ``stale_uploads``), since this path
        creates none that would find them."""
        store = self.store
        digest = bytes.fromhex(md5_hex)
        if size and _md5_of_range(fd, 0, size) != digest:
            raise self._changed_on_disk()
        first = {"IfNoneMatch": "*"} if self.fresh else {}
        condition = first
        answer: dict = {}  # the store's last answer, whose Date bounds the stale uploads below
        for attempt in range(1, store.corrupt_attempts + 1):
            try:
                answer = self._put_whole(fd, size, digest, condition)
            except Exception as exc:
                if _code(exc) in S3_CORRUPT_CODES and attempt < store.corrupt_attempts:
                    continue
                if condition and _is_taken(exc):
                    if self._ours_after_refusal(exc, md5_hex, size):
                        # ours arrived whole after all (an answer lost and the PUT retried, or damaged): its ETag as
                        # the store gives it (not an MD5 where ETags are not: the manifest records what verify compares)
                        etag = md5_hex if store.verify_etags else store.etag_in(self._head_etag(md5_hex))
                        answer = getattr(exc, "response", None) or {}  # the 412 came after our PUT landed
                        break
                    self._refuse_taken(exc)
                error = self._named(_wrap(exc, f"writing {store.uri(self.key)} (PutObject)",
                                          encryption=store.encryption))
                self._withdraw_if_ours(md5_hex, size, error)
                raise error from exc
            etag = self.store.etag_in(answer)
            if not store.verify_etags or etag == md5_hex:
                break
            log.warning("%s arrived corrupted (ETag %s, MD5 %s), attempt %d of %d", store.uri(self.key), etag,
                        md5_hex, attempt, store.corrupt_attempts)
            if condition:  # a copy that arrived damaged is ours: replaced only while it still is
                try:
                    condition = store.replacing(self.key, first)
                except ArchiveError as check:
                    self._withdraw_corrupted(attempt, etag, md5_hex, check)
        else:
            self._withdraw_corrupted(store.corrupt_attempts, etag, md5_hex)
        if self.stale_uploads:
            store.abort_stale_uploads_quietly(self.key,
                                              initiated_before=_server_time(answer) + dt.timedelta(seconds=1))
        return etag

    def _withdraw_corrupted(self, attempts: int, etag: str, md5_hex: str,
                            unchecked: ArchiveError | None = None) -> NoReturn:
        """Withdraw the damaged copy a single PUT of ours left at the key and fail, retryable: every one of
        ``attempts`` tries arrived corrupted, or (``unchecked``) the HEAD that was to read the damaged copy's ETag
        for the next try failed. The store answered that PUT, so the copy there is ours (a fresh key's written
        If-None-Match, or If-Match the copy before it)."""
        checked = f"; the copy the store kept could not be checked ({unchecked.message})" if unchecked else ""
        error = self._error_here(f"arrived corrupted {attempts} time{'s' if attempts > 1 else ''} (ETag {etag}, our "
                                 f"MD5 {md5_hex}): the network or store alters data{checked}; the run will be "
                                 "retried", retryable=True)
        self.store.delete_quietly(self.key, error)
        raise error

    def _ours_after_refusal(self, refused: BaseException, md5_hex: str | None, size: int | None,
                            content_md5: str | None = None) -> bool:
        """Whether the key holds this upload's object (``md5_hex``, ``size``; None: any of its copies) after the
        store refused a write of it for what the key holds: see :meth:`S3Store.held_after_refusal`."""
        try:
            return self.store.held_after_refusal(self.key, refused, md5_hex, size, content_md5, writer=self._own_mark)
        except ArchiveError as error:
            raise self._named(error)

    def _refuse_taken(self, refused: BaseException) -> NoReturn:
        """Raise for a fresh key's write refused (``refused``: 412) for an object that is not this upload's whole.
        One carrying this upload's own mark is a copy of ours that arrived damaged (a try whose answer was lost, and
        the request sent again): withdrawn, and the run fails, retryable, as arrived corrupted; kept, the next
        run's manifest would keep it for ever as a possible only copy of rows. Any other is not ours to withdraw:
        another run's after a 412 (:class:`KeyTakenError`), after a 409 a conflict the store kept reporting (see
        :func:`_refusal`)."""
        if not (self._own_mark and self._ours_after_refusal(refused, None, None)):
            raise self._named(_refusal(self.store.uri(self.key), refused)) from None
        error = self._error_here(f"the store refused this run's write for what the key holds ({_said(refused)}): a "
                                 "copy of this upload's that arrived damaged (it carries the upload's own mark, not "
                                 "its bytes); withdrawn, and the run will be retried", retryable=True)
        self.store.delete_quietly(self.key, error)
        raise error

    def _changed_on_disk(self) -> UploadError:
        """The bytes about to be published are not those hashed while writing the temp file (the MD5 and SHA-256 the
        manifest records): refused, retryable, before the object can count (one PUT or CompleteMultipartUpload)."""
        return self._error_here("the temp file does not hash to the MD5 computed while writing it (local disk or "
                                "memory corruption); the run will be retried", retryable=True,
                                cause="the temp file changed on the local disk",
                                remedy="retried automatically; if it persists, check the disk behind temp_dir and "
                                       "the machine's memory")

    def _put_whole(self, fd: int, size: int, digest: bytes, condition: dict[str, str]) -> dict:
        """One PutObject of the whole file, with ``condition`` where the store takes conditions."""
        store = self.store

        def put(**extra: str) -> dict:  # (a fresh range of the file for every try)
            return store.client.put_object(Bucket=store.bucket, Key=self.key, Body=_FileRange(fd, 0, size),
                                           ContentLength=size, ContentMD5=_md5_header(digest), **self.headers,
                                           **extra)

        return store.with_conditions(put, condition, store.uri(self.key), "PutObject")

    def _withdraw_if_ours(self, expected_etag: str, size: int, original: BaseException,
                          content_md5: str | None = None) -> None:
        self.store._withdraw_if_ours(self.key, expected_etag, size, original, content_md5, writer=self._own_mark)

    @property
    def _own_mark(self) -> str | None:
        """The ``writer`` metadata this upload's object carries (a fresh key's, see :meth:`S3Store.begin`), or None."""
        return decode_metadata(self.headers.get("Metadata") or {}).get(WRITER_METADATA)

    # --- the upload's threads ------------------------------------------------------------------
    def _lead(self) -> None:
        store = self.store
        with self._cond:
            if self._aborted:
                return
        try:
            self._marked = True  # from the first attempt on: it may land even if it fails
            store.put_bytes(upload_marker_key(self.key), self._marker_body, "text/plain")
        except BaseException as exc:
            said = _wrap(exc, "writing it")
            self._fail(self._named(UploadError(
                f"announcing the upload of {store.uri(self.key)} with its marker {upload_marker_key(self.key)}: "
                f"{said.message}", retryable=said.retryable, cause=said.cause, remedy=said.remedy)))
            return
        with self._cond:
            aborted = self._aborted
            self._creating = not aborted
            # from the first create attempt until the listing after it: botocore may retry a create the store
            # acted on, and the upload it made is known to no one (see _unmark)
            self._settled = aborted
        if aborted:  # abort() may have deleted the marker before this write landed: delete it again
            self._marked = not self._unmark_own(None)
            return
        try:
            response = store.client.create_multipart_upload(Bucket=store.bucket, Key=self.key, **self.headers)
        except BaseException as exc:
            with self._cond:  # a dropped answer or a 5xx may come after the store created the upload
                self._creating = False
                self._create_ambiguous = _is_transport_error(exc) or _status(exc) >= 500 or _status(exc) == 0
                # a create whose answer timed out may still be under way, and land after any listing of ours:
                # the marker stays for the next run (a reset or a 5xx came after the store had acted, or never)
                self._late_create = _is_read_timeout(exc)
            self._fail(self._named(_wrap(exc, f"starting the upload of {store.uri(self.key)} "
                                              "(CreateMultipartUpload)", encryption=store.encryption)))
            return
        upload_id = response.get("UploadId") if isinstance(response, dict) else None
        if not upload_id:  # a 200 without the upload's id (a proxy's answer): failed, and maybe created after all
            with self._cond:
                self._creating = False
                self._create_ambiguous = self._late_create = True
            self._fail(self._error_here(f"starting the upload of {store.uri(self.key)} (CreateMultipartUpload): the "
                                        "store answered without an UploadId", retryable=True,
                                        cause="the store's answer was not one", remedy=_RETRIED))
            return
        if response.get("ResponseMetadata", {}).get("RetryAttempts"):
            self._late_create = True  # botocore retried it: the first attempt may land after the listing below
        with self._cond:
            self._creating = False
            orphan = self._aborted
            if not orphan:
                self.upload_id = upload_id
                for n in range(1, store.max_concurrency):
                    try:
                        self._spawn(self._work, f"s3-upload-{n}")
                    except RuntimeError as exc:  # no thread to be had (a thread or memory limit): fewer workers
                        log.warning("%s uploads with %d of %d threads: %s", store.uri(self.key), n,
                                    store.max_concurrency, exc)
                        break
        if orphan:  # aborted while we were creating it (abort() left the marker for this thread to settle)
            self._leftover = not self._abort_quietly(upload_id, None)
            if not self._leftover:
                self._unmark(None)
            return
        try:  # botocore may have retried the create after the store acted: that upload is stale too
            self._settled = store.settle_stale_uploads(self.key, keep=upload_id)[1]
        except Exception as exc:  # noqa: BLE001 - leftovers cost storage; the marker stays for the next run
            self._settled = False
            log.warning("could not list stale multipart uploads of %s (%s); it is listed again when the upload "
                        "ends, else its marker stays and the next archive of the key looks", store.uri(self.key),
                        _said(exc))
        self._work()

    def _work(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._aborted or self._error is not None:
                        return
                    end = self._final if self._final is not None else self._size
                    available = end - self._cut
                    if self._final is not None and available <= 0:
                        return
                    length = self.plan.size_at(self._cut)
                    if available >= length or (self._final is not None and available > 0):
                        length = min(length, available)
                        break
                    self._cond.wait()
                number, offset = self._next, self._cut
                if number > self.plan.max_parts:
                    error = self._too_big(self._final or self._size)
                    self._error = error
                    self._cond.notify_all()
                    return
                self._next += 1
                self._cut += length
                if self._final is None and self._size - self._cut >= self.plan.size_at(self._cut):
                    self._cond.notify()  # another whole part is waiting: wake a sibling
            try:
                part = self._send_part(number, offset, length)
            except BaseException as exc:
                self._fail(exc)
                return
            with self._cond:
                self._parts[number] = part
                late = self._aborted_id
            if late is not None:  # landed after abort() gave up waiting: S3 may keep it unless aborted again
                self._abort_quietly(late, None)

    def _send_part(self, number: int, offset: int, length: int) -> _Part:
        store = self.store
        digest = self._hash_in_order(offset, length)
        for attempt in range(1, store.corrupt_attempts + 1):
            if self._aborted:
                raise self._error_here("aborted", retryable=False, cause="the upload was aborted")
            try:
                response = store.client.upload_part(Bucket=store.bucket, Key=self.key, UploadId=self.upload_id,
                                                    PartNumber=number, Body=_FileRange(self._fd, offset, length),
                                                    ContentLength=length, ContentMD5=_md5_header(digest))
            except Exception as exc:
                if _code(exc) in S3_CORRUPT_CODES and attempt < store.corrupt_attempts:
                    continue
                raise self._named(_wrap(exc, f"uploading part {number} of {store.uri(self.key)} (UploadPart)",
                                              encryption=store.encryption)) \
                    from exc
            etag = self.store.etag_in(response)
            if not store.verify_etags or etag == digest.hex():
                # sent back in the completion as the store answered it (a store may compare them exactly: one
                # answering them without quotes refused quoted ones as InvalidPart)
                return _Part(number, str(response.get("ETag", "")), digest, length)
            log.warning("part %d of %s arrived corrupted (ETag %s, MD5 %s), attempt %d of %d", number,
                        store.uri(self.key), etag, digest.hex(), attempt, store.corrupt_attempts)
        raise self._error_here(f"part {number} arrived corrupted {store.corrupt_attempts} times (ETag {etag}, our "
                               f"MD5 {digest.hex()}): the network or store alters data; the run will be retried",
                               retryable=True)

    def _hash_in_order(self, offset: int, length: int) -> bytes:
        """A part's MD5 (its Content-MD5), its bytes fed to the running MD5 of the whole file by the same reads.

        Parts are claimed in file order, so the part at ``_hashed`` is always held by some thread: a part waits
        only for the hashing (not the upload) of the parts before it, which keeps the reads single."""
        with self._cond:
            while self._hashed != offset:
                if self._aborted or self._error is not None:
                    raise self._error_here("aborted", retryable=False, cause="the upload was aborted")
                self._cond.wait()
        digest = _md5_of_range(self._fd, offset, length, self._whole)
        with self._cond:
            self._hashed = offset + length
            self._cond.notify_all()
        return digest

    # --- shared --------------------------------------------------------------------------------
    def _fail(self, exc: BaseException) -> None:
        with self._cond:
            if self._error is None:
                self._error = exc
            self._cond.notify_all()

    def _join(self, timeout: float | None) -> bool:
        """Wait for the upload's threads (also those started meanwhile); False if some still run."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._cond:
                alive = [t for t in self._threads if t.is_alive() and t is not threading.current_thread()]
            if not alive:
                return True
            for thread in alive:
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if deadline is not None and time.monotonic() >= deadline:
                return not any(t.is_alive() for t in alive)

    def _abort_quietly(self, upload_id: str, original: BaseException | None) -> bool:
        """Abort ``upload_id``; False (logged, noted on ``original``) if the store may still hold it."""
        try:
            self.store.abort_upload(self.key, upload_id)
        except Exception as exc:  # noqa: BLE001 - the original failure matters more
            text = (f"cleanup: could not abort multipart upload of {self.store.uri(self.key)} "
                    f"({_said(exc)}); a bucket lifecycle rule (AbortIncompleteMultipartUpload) "
                    "or the next archive of this key removes its parts")
            log.warning(text)
            _note(original, text)
            return False
        return True

    def _unmark(self, original: BaseException | None) -> None:
        """Delete the upload marker once our upload is completed or aborted and no other upload of the
        key can be left. If the listing after the create could not show that, the key's uploads are
        listed (and aborted) once more now: ours is no longer among them, so any listed is a leftover.
        If that fails too, or the delete does, the marker stays and the next run of the key looks."""
        if not self._marked:
            return
        if not self._settled or self._late_create:
            try:
                self._settled = self.store.settle_stale_uploads(self.key)[1]
            except Exception as exc:  # noqa: BLE001 - the marker stays: the next run of the key looks again
                _note(original, f"cleanup: could not list the uploads of {self.store.uri(self.key)} ({_said(exc)}); "
                                "the next archive of this key aborts any left")
        if self._settled and not self._late_create:  # (a create that may still land: the marker stays)
            self._marked = not self._unmark_own(original, owner_asked=True)

    def _unmark_own(self, original: BaseException | None, owner_asked: bool = False) -> bool:
        """Delete the key's upload marker if it is still this upload's: at once where the owner says the key is
        still its own (``owner_asked``, :attr:`still_owned`), else read first: another run that took the key over
        since, our session's lock gone, may have written its own there. Whether none of ours is left."""
        marker = upload_marker_key(self.key)
        if owner_asked and self.still_owned is not None and self._owned():
            return self.store.delete_quietly(marker, original)
        try:
            there = self.store.get_bytes_or_none(marker)
        except Exception as exc:  # noqa: BLE001 - not known to be ours: it stays, and the next run looks
            text = (f"cleanup: could not read the upload marker {self.store.uri(marker)} ({_said(exc)}); it stays, "
                    "and the next archive of this key looks at the key's uploads and removes it")
            log.warning(text)
            _note(original, text)
            return False
        if there is None or there != self._marker_body:  # gone, or another run's now
            return True
        return self.store.delete_quietly(marker, original)

    def _owned(self) -> bool:
        try:
            return bool(self.still_owned())
        except Exception:  # noqa: BLE001 - not known: read the marker first
            return False

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        """Start one of the upload's threads, counted in ``_live`` from before it starts until ``target`` ends."""
        thread = threading.Thread(target=self._run, args=(target,), name=name, daemon=True)
        with self._cond:
            self._live += 1
            try:
                thread.start()
            except BaseException:
                self._live -= 1
                raise
            self._threads.append(thread)

    def _run(self, target: Callable[[], None]) -> None:
        """A thread of the upload: ``target``, then the descriptor closed if this was the last thread reading it
        after _close_fd (a part stalled past abort_timeout and answered since)."""
        try:
            target()
        finally:
            with self._cond:
                self._live -= 1
                self._release_fd()

    def _close_fd(self) -> None:
        """Close the upload's duplicate of the temp file's descriptor now, or, while a thread still reads it (a part
        stalled past abort_timeout), when the last one ends: a failed day's nameless temp file is freed once its
        upload's threads are done, never kept until the process exits (a ranged run would fill temp_dir)."""
        with self._cond:
            self._closing = True
            self._release_fd()

    def _release_fd(self) -> None:
        """Close ``_fd`` if it is to go and no thread of the upload runs (counted under the lock, so the last thread
        to end and _close_fd cannot both miss it, nor both close it)."""
        with self._cond:
            fd = self._fd if self._closing and self._live == 0 else None
            if fd is not None:
                self._fd = None
                os.close(fd)

    def _too_big(self, size: int) -> UploadError:
        plan = self.plan
        if plan.equal and plan.capacity < MAX_OBJECT_SIZE:
            estimate = f"{plan.expected_size:,} bytes" if plan.expected_size else "none"
            return self._error_here(
                f"the stream passed {plan.capacity:,} bytes, all that {plan.max_parts:,} equal parts of "
                f"{plan.first:,} bytes can hold (estimate: {estimate})", retryable=False,
                cause="the day outgrew the upload's equal parts", remedy="raise the store's part_size, give a better "
                "size estimate, or turn off equal_parts if the store accepts parts of different sizes")
        return self._error_here(f"the stream passed {size:,} bytes, more than S3's object limit of "
                                f"{MAX_OBJECT_SIZE:,} bytes", retryable=False, cause=_S3_TOO_LARGE,
                                remedy="split the day or use a smaller key range")

    def _error_here(self, message: str, *, retryable: bool, cause: str = _CORRUPTED,
                    remedy: str | None = None) -> UploadError:
        """An :class:`UploadError` about this upload, naming its key, table and day; ``cause`` and
        ``remedy`` default to those of bytes that did not arrive as sent (retried automatically)."""
        remedy = remedy if remedy is not None else _CORRUPTED_REMEDY if retryable else None
        return self._named(UploadError(f"{self.store.uri(self.key)}: {message}", retryable=retryable, cause=cause,
                                       remedy=remedy))

    def _named(self, error: ArchiveError) -> ArchiveError:
        """Attach the table and day the upload is for (from its metadata) to ``error``."""
        if isinstance(error, ArchiveError):
            error.table = error.table or self.table
            error.day = error.day or self.day
        return error


CLOCK_SKEW_ALLOWED = dt.timedelta(minutes=15)  # S3 refuses a request signed further off its clock (RequestTimeTooSkewed)


def _server_time(response: dict) -> dt.datetime:
    """The store's clock from a response's Date header, always timezone-aware, and our clock where the header cannot
    stand for the store's: absent, unparseable, or further from ours than a signed request may be (a store checks
    that skew, so a Date beyond it is a gateway's or a broken clock's, such as one at the calendar's edge, whose
    bound would abort everyone's uploads and overflow the caller's arithmetic). It bounds the stale-upload cleanup,
    a best effort: it must never raise. Compared with the aware ``Initiated`` times of a listing, a naive one (a
    ``-0000`` or zoneless Date, which ``parsedate_to_datetime`` leaves naive) would raise TypeError there; HTTP dates
    are UTC (RFC 9110), and ``-0000`` means UTC with no local zone known (RFC 5322), so a naive one is read as UTC."""
    import email.utils

    ours = dt.datetime.now(dt.UTC)
    header = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    try:
        when = email.utils.parsedate_to_datetime(header) if header else ours
        when = when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)
        usable = abs(when - ours) <= CLOCK_SKEW_ALLOWED
    except (TypeError, ValueError, OverflowError):
        usable = False
    if not usable:
        log.info("the store's Date header %r cannot stand for its clock; this machine's clock bounds the "
                 "stale-upload cleanup", header)
        return ours
    return when


__all__ = ["CLOCK_SKEW_ALLOWED", "MAX_OBJECT_SIZE", "MISSING_ON_READ", "MAX_PARTS", "MAX_PART_SIZE", "MIN_PART_SIZE", "MiB",
           "CorruptedWrite", "DownloadError", "Downloaded", "PartPlan", "S3Store", "S3Upload", "StoredObject",
           "decode_metadata", "encode_metadata", "plan_parts"]
