"""S3-compatible object store: multipart upload that runs alongside the stream and never publishes
a partial object.

Parts are cut from the growing temp file as soon as a whole part is there, so the upload overlaps
the extraction and only the last part is left when the last row is read. An object becomes visible
only at CompleteMultipartUpload (or a single PutObject for small files); any failure before that
aborts the upload. Each part is sent with its Content-MD5 and its returned ETag is checked against
our own MD5, which catches corruption even on stores that do not verify Content-MD5.
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from archive_pipeline.errors import UploadError

MiB = 1 << 20
MIN_PART_SIZE = 5 * MiB
MAX_PARTS = 10_000

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredObject:
    key: str
    uri: str
    size: int
    etag: str
    parts: int
    wait_seconds: float = 0.0  # after the stream ended, waiting for the remaining parts
    complete_seconds: float = 0.0  # the store assembling the object (CompleteMultipartUpload/PutObject)


def _read_exact(fd: int, length: int, offset: int) -> bytes:
    chunks = []
    while length:
        data = os.pread(fd, length, offset)
        if not data:
            raise UploadError(f"temp file ended early at offset {offset}")
        chunks.append(data)
        length -= len(data)
        offset += len(data)
    return b"".join(chunks) if len(chunks) != 1 else chunks[0]


def _md5_header(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


class S3Store:
    """Where archives go: a bucket of any S3-compatible endpoint (AWS, MinIO, R2, moto)."""

    def __init__(self, client: Any, bucket: str, *, prefix: str = "", part_size: int = 8 * MiB,
                 max_concurrency: int = 4, verify_etags: bool = True) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least 5 MiB (S3's minimum), got {part_size}")
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.part_size = part_size
        self.max_concurrency = max(1, max_concurrency)
        self.verify_etags = verify_etags

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def begin(self, key: str, *, content_type: str, content_encoding: str | None = None,
              metadata: dict[str, str] | None = None) -> S3Upload:
        headers: dict[str, Any] = {"ContentType": content_type, "Metadata": metadata or {}}
        if content_encoding:
            headers["ContentEncoding"] = content_encoding
        return S3Upload(self, key, headers)

    def head(self, key: str) -> dict | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        digest = hashlib.md5(data).digest()
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type,
                               ContentMD5=_md5_header(digest))

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def get_bytes(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def get_bytes_or_none(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            return self.get_bytes(key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise

    def abort_stale_uploads(self, key: str) -> int:
        """Abort multipart uploads of ``key`` left by a process that was killed mid-upload."""
        found = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=key).get("Uploads", [])
        stale = [u for u in found if u["Key"] == key]
        for upload in stale:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload["UploadId"])
        return len(stale)


@dataclass
class _Part:
    number: int
    etag: str
    md5: bytes


@dataclass
class S3Upload:
    """One object being written; feed it the growing file, then ``finish`` or ``abort``."""

    store: S3Store
    key: str
    headers: dict[str, Any]
    upload_id: str | None = None
    sent: int = 0  # bytes of the file already handed to part uploads
    _futures: list[cf.Future] = field(default_factory=list)
    _pool: cf.ThreadPoolExecutor | None = None
    _slots: threading.Semaphore | None = None

    def grow(self, fd: int, size: int) -> None:
        """Start uploading every whole part now present in the first ``size`` bytes of ``fd``."""
        while size - self.sent >= self.store.part_size:
            self._submit(fd, self.sent, self.store.part_size)

    def _start(self) -> None:
        store = self.store
        store.abort_stale_uploads(self.key)
        response = store.client.create_multipart_upload(Bucket=store.bucket, Key=self.key, **self.headers)
        self.upload_id = response["UploadId"]
        self._pool = cf.ThreadPoolExecutor(store.max_concurrency, thread_name_prefix="s3-part")
        self._slots = threading.Semaphore(store.max_concurrency)

    def _submit(self, fd: int, offset: int, length: int) -> None:
        if self.upload_id is None:
            self._start()
        number = len(self._futures) + 1
        if number > MAX_PARTS:
            raise UploadError(f"{self.key}: more than {MAX_PARTS} parts of {self.store.part_size} bytes; "
                              "raise the store's part_size")
        for done in (f for f in self._futures if f.done()):
            done.result()  # surface a failed part now rather than after the whole stream
        self._slots.acquire()  # backpressure: at most max_concurrency parts in memory
        future = self._pool.submit(self._send_part, number, fd, offset, length)
        future.add_done_callback(lambda _: self._slots.release())
        self._futures.append(future)
        self.sent = offset + length

    def _send_part(self, number: int, fd: int, offset: int, length: int) -> _Part:
        store = self.store
        data = _read_exact(fd, length, offset)
        digest = hashlib.md5(data).digest()
        response = store.client.upload_part(Bucket=store.bucket, Key=self.key, UploadId=self.upload_id,
                                            PartNumber=number, Body=data, ContentMD5=_md5_header(digest))
        etag = response["ETag"]
        if store.verify_etags and etag.strip('"') != digest.hex():
            raise UploadError(f"{self.key}: part {number} arrived corrupted (ETag {etag} != MD5 {digest.hex()})",
                              retryable=True)
        return _Part(number, etag, digest)

    def finish(self, fd: int, size: int, md5_hex: str) -> StoredObject:
        """Send what is left, wait for every part, publish the object, and check what was stored."""
        store = self.store
        started = time.perf_counter()
        if self.upload_id is None:
            waited = started
            etag = self._put_single(fd, size, md5_hex)
        else:
            if size > self.sent:
                self._submit(fd, self.sent, size - self.sent)
            parts = [f.result() for f in self._futures]
            waited = time.perf_counter()
            response = store.client.complete_multipart_upload(
                Bucket=store.bucket, Key=self.key, UploadId=self.upload_id,
                MultipartUpload={"Parts": [{"PartNumber": p.number, "ETag": p.etag} for p in parts]})
            etag = response["ETag"]
            self._shutdown()
            expected = hashlib.md5(b"".join(p.md5 for p in parts)).hexdigest() + f"-{len(parts)}"
            if store.verify_etags and etag.strip('"') != expected:
                self._delete_published()
                raise UploadError(f"{self.key}: stored object's ETag {etag} != expected {expected}", retryable=True)
        completed = time.perf_counter()
        head = store.head(self.key)
        if head is None or head["ContentLength"] != size:
            self._delete_published()
            raise UploadError(f"{self.key}: stored object has {head and head['ContentLength']} bytes, "
                              f"expected {size}", retryable=True)
        return StoredObject(key=self.key, uri=store.uri(self.key), size=size, etag=etag.strip('"'),
                            parts=max(1, len(self._futures)), wait_seconds=waited - started,
                            complete_seconds=completed - waited)

    def _put_single(self, fd: int, size: int, md5_hex: str) -> str:
        store = self.store
        data = _read_exact(fd, size, 0) if size else b""
        response = store.client.put_object(Bucket=store.bucket, Key=self.key, Body=data,
                                           ContentMD5=_md5_header(bytes.fromhex(md5_hex)), **self.headers)
        etag = response["ETag"]
        if store.verify_etags and etag.strip('"') != md5_hex:
            self._delete_published()
            raise UploadError(f"{self.key}: stored object's ETag {etag} != MD5 {md5_hex}", retryable=True)
        return etag

    def _delete_published(self) -> None:
        self.store.delete(self.key)

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def abort(self) -> None:
        """Stop sending and drop the uploaded parts; nothing becomes visible under the key."""
        self._shutdown()
        if self.upload_id is not None:
            try:
                self.store.client.abort_multipart_upload(Bucket=self.store.bucket, Key=self.key,
                                                         UploadId=self.upload_id)
            except Exception:  # noqa: BLE001 - the original failure matters more; a lifecycle rule cleans up
                log.warning("could not abort multipart upload of %s; a bucket lifecycle rule "
                            "(AbortIncompleteMultipartUpload) will remove its parts", self.key, exc_info=True)
            self.upload_id = None
