"""The store and the temp file, against moto's S3 server over HTTP through a fault-injecting proxy.

After every injected fault: the error has the right type and retry flag, no object is visible
under the key, no multipart upload is open, and the temp dir is empty. Timing is never asserted:
"the writer does not wait" is shown by writes returning while the proxy still holds every part.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from archive_pipeline.core.errors import ArchiveError, UploadError, is_retryable
from archive_pipeline.core.keys import upload_marker_key
from archive_pipeline.core.sink import open_nameless, temp_archive_file
from archive_pipeline.core.store import (
    MAX_OBJECT_SIZE,
    MIN_PART_SIZE,
    DownloadError,
    MiB,
    S3Store,
    decode_metadata,
    encode_metadata,
    plan_parts,
)
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

KEY = "archive/sch\u00e9ma.t/2024/03/2024-03-10.jsonl.zst"  # non-ASCII on purpose
META = {"table": "sch\u00e9ma.\u00e9v\u00e9nements \U0001F600", "day": "2024-03-10", "format": "jsonl"}


@pytest.fixture
def proxy(s3):
    with FaultProxy(s3.endpoint_url) as running:
        yield running


@pytest.fixture
def pstore(proxy, bucket) -> S3Store:
    """A store whose requests go through the proxy, one attempt each (boto3 retries off)."""
    return S3Store(proxy.client(max_attempts=1), bucket, part_size=MIN_PART_SIZE, max_concurrency=2,
                   abort_timeout=30)


def payload(size: int, seed: int = 1) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * 4096  # 128 KiB, not compressible to nothing
    return (block * (size // len(block) + 1))[:size]


def upload(store: S3Store, data: bytes, temp_dir: Path, *, key: str = KEY, chunk: int = MiB,
           expected_size: int | None = None):
    """Write ``data`` through a HashingFile with an upload attached, as the archiver does."""
    with temp_archive_file(temp_dir, suffix=".jsonl.zst") as sink:
        up = store.begin(key, content_type="application/x-ndjson", content_encoding="zstd", metadata=META,
                         expected_size=expected_size)
        try:
            sink.on_grow = lambda size: up.grow(sink.fd, size)
            for start in range(0, len(data), chunk):
                sink.write(data[start:start + chunk])
            return up.finish(sink.fd, sink.size, sink.md5)
        except BaseException:
            up.abort()
            raise


def assert_nothing_left(s3_client, bucket: str, temp_dir: Path, key: str = KEY) -> None:
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert key not in keys and upload_marker_key(key) not in keys
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert list(temp_dir.iterdir()) == []


def stored(s3_client, bucket: str, key: str = KEY) -> bytes:
    return s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()


# --- happy paths ---------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1000, MIN_PART_SIZE - 1, MIN_PART_SIZE, 3 * MIN_PART_SIZE + 12345])
def test_round_trip_of_sizes_around_the_part_size(pstore, s3_client, bucket, temp_dir, size):
    data = payload(size)
    result = upload(pstore, data, temp_dir)
    assert stored(s3_client, bucket) == data and result.size == size
    whole, rest = divmod(size, MIN_PART_SIZE)
    assert result.parts == max(1, whole + (rest > 0))
    assert (result.etag == hashlib.md5(data).hexdigest()) == (size < MIN_PART_SIZE)
    assert list(temp_dir.iterdir()) == []
    head = s3_client.head_object(Bucket=bucket, Key=KEY)
    assert head["ContentEncoding"] == "zstd" and decode_metadata(head["Metadata"]) == META


def test_parts_uploaded_are_the_planned_parts(pstore, proxy, s3_client, bucket, temp_dir):
    """The store that counts parts here is the proxy: one UploadPart per planned part, of its size."""
    data = payload(4 * MIN_PART_SIZE + 777)
    result = upload(pstore, data, temp_dir, chunk=300_000)  # chunks that do not align with parts
    planned = pstore.plan().sizes(len(data))
    assert planned == [MIN_PART_SIZE] * 4 + [777]
    assert list(result.part_sizes) == planned
    part_puts = proxy.requests(method="PUT", query="partNumber=")
    assert sorted(int(r.query.split("partNumber=")[1].split("&")[0]) for r in part_puts) == [1, 2, 3, 4, 5]
    assert stored(s3_client, bucket) == data


# --- the writer never waits ---------------------------------------------------------------------

def test_a_stalled_link_does_not_block_the_writer(pstore, proxy, s3_client, bucket, temp_dir):
    """Every UploadPart is held by the proxy, yet 40 MiB of writes return; parts in flight stay
    bounded by max_concurrency; releasing the link completes the same upload."""
    hold = proxy.add(Fault(method="PUT", query="partNumber=", action="hold", times=None, hold_timeout=60))
    data = payload(40 * MiB)
    with temp_archive_file(temp_dir) as sink:
        up = pstore.begin(KEY, content_type="application/x-ndjson", metadata=META)
        sink.on_grow = lambda size: up.grow(sink.fd, size)
        for start in range(0, len(data), MiB):
            sink.write(data[start:start + MiB])
        assert proxy.wait_held(pstore.max_concurrency), "parts should be in flight (held by the proxy)"
        # all 40 MiB written while no part has been stored: the writer did not wait for the upload
        assert sink.size == len(data) and up.parts_done() == 0
        assert up.in_flight() == pstore.max_concurrency  # memory bound: never more parts than threads
        hold.gate.set()
        result = up.finish(sink.fd, sink.size, sink.md5)
    assert result.parts == 8 and stored(s3_client, bucket) == data
    assert list(temp_dir.iterdir()) == []


def test_a_failed_part_surfaces_at_the_next_grow(proxy, bucket, s3_client, temp_dir):
    store = S3Store(proxy.client(max_attempts=1), bucket, part_size=MIN_PART_SIZE, max_concurrency=1)
    proxy.add(Fault(method="PUT", query="partNumber=1", action="error", status=403, code="AccessDenied"))
    with temp_archive_file(temp_dir) as sink:
        up = store.begin(KEY, content_type="text/csv", metadata=META)
        sink.on_grow = lambda size: up.grow(sink.fd, size)
        sink.write(payload(MIN_PART_SIZE))  # part 1 is whole: it goes out, and fails
        with pytest.raises(UploadError) as failure:
            for _ in range(3000):  # bounded wait (30 s) for the part's answer to be seen by grow()
                sink.write(b"x" * 1000)
                threading.Event().wait(0.01)
        up.abort()
    assert failure.value.retryable is False and "AccessDenied" in str(failure.value)
    assert failure.value.table == META["table"] and failure.value.day == META["day"]
    assert_nothing_left(s3_client, bucket, temp_dir)


# --- corruption in transit ----------------------------------------------------------------------

def test_part_flipped_once_is_sent_again(pstore, proxy, s3_client, bucket, temp_dir):
    proxy.add(Fault(method="PUT", query="partNumber=2", action="flip_request_byte", times=1))
    data = payload(3 * MIN_PART_SIZE)
    upload(pstore, data, temp_dir)
    assert len(proxy.requests(method="PUT", query="partNumber=2")) == 2
    assert stored(s3_client, bucket) == data


def test_part_corrupted_every_time_fails_retryable_and_leaves_nothing(pstore, proxy, s3_client, bucket, temp_dir):
    proxy.add(Fault(method="PUT", query="partNumber=2", action="flip_request_byte", times=None))
    with pytest.raises(UploadError) as failure:
        upload(pstore, payload(3 * MIN_PART_SIZE), temp_dir)
    assert failure.value.retryable and is_retryable(failure.value) and "part 2 arrived corrupted" in str(failure.value)
    assert len(proxy.requests(method="PUT", query="partNumber=2")) == pstore.corrupt_attempts
    assert_nothing_left(s3_client, bucket, temp_dir)


def test_single_put_flipped_once_is_sent_again(pstore, proxy, s3_client, bucket, temp_dir):
    proxy.add(Fault(method="PUT", path=r"\.jsonl\.zst$", action="flip_request_byte", times=1))
    data = payload(100_000)
    result = upload(pstore, data, temp_dir)
    assert result.etag == hashlib.md5(data).hexdigest() and stored(s3_client, bucket) == data


def test_single_put_corrupted_every_time_fails_and_is_withdrawn(pstore, proxy, s3_client, bucket, temp_dir):
    proxy.add(Fault(method="PUT", path=r"\.jsonl\.zst$", action="flip_request_byte", times=None))
    with pytest.raises(UploadError) as failure:
        upload(pstore, payload(100_000), temp_dir)
    assert failure.value.retryable and "arrived corrupted" in str(failure.value)
    assert len(proxy.requests(method="DELETE", path=r"\.jsonl\.zst$")) == 1  # the corrupt copy was withdrawn
    assert_nothing_left(s3_client, bucket, temp_dir)


def test_manifest_flipped_once_is_sent_again(pstore, proxy, s3_client, bucket):
    proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action="flip_request_byte", times=1))
    body = b'{"rows": 1, "table": "sch\xc3\xa9ma"}'
    pstore.put_bytes("a/x.manifest.json", body, "application/json")
    assert stored(s3_client, bucket, "a/x.manifest.json") == body


def test_manifest_corrupted_every_time_fails_retryable_and_is_left_to_the_caller(pstore, proxy, s3_client, bucket):
    """Not deleted: the key may have held the previous commit a moment ago; the archiver reads it back
    (a damaged manifest is never trusted) and puts the previous one back."""
    proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action="flip_request_byte", times=None))
    with pytest.raises(UploadError) as failure:
        pstore.put_bytes("a/x.manifest.json", b'{"rows": 1}' * 50, "application/json")
    assert failure.value.retryable and "; to fix: " in str(failure.value)
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount") == 1


@pytest.mark.parametrize("action", ["reset_after", "error"])
def test_manifest_write_that_fails_after_landing_is_left_to_the_caller(pstore, proxy, s3_client, bucket, action):
    """The store kept the manifest but the answer was lost: put_bytes fails retryable and does not
    delete the key (it may have held the previous commit a moment ago); the archiver reads it back and
    counts it as committed, keeping the object it names (test_store_faults_hunt.py)."""
    proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action=action, forward=True, times=None))
    with pytest.raises(UploadError) as failure:
        pstore.put_bytes("a/x.manifest.json", b'{"rows": 2}', "application/json")
    assert failure.value.retryable
    assert stored(s3_client, bucket, "a/x.manifest.json") == b'{"rows": 2}'


def test_corrupted_complete_etag_is_caught(pstore, proxy, s3_client, bucket, temp_dir):
    """A CompleteMultipartUpload answer whose ETag is not md5(part md5s)-N: object withdrawn."""
    proxy.add(Fault(method="POST", query="uploadId=", action="flip_response_byte", times=1,
                    offset=-45))  # a hex digit of <ETag>"…-N"</ETag></CompleteMultipartUploadResult>
    with pytest.raises(UploadError) as failure:
        upload(pstore, payload(2 * MIN_PART_SIZE + 1), temp_dir)
    assert failure.value.retryable and "ETag" in str(failure.value)
    assert_nothing_left(s3_client, bucket, temp_dir)


# --- 5xx, SlowDown and resets on every request kind ----------------------------------------------

KINDS = {  # request kind: (fault matcher, bytes to upload)
    "create": (dict(method="POST", query="uploads"), MIN_PART_SIZE + 5),
    "upload_part": (dict(method="PUT", query="partNumber=2"), MIN_PART_SIZE + 5),
    "complete": (dict(method="POST", query="uploadId="), MIN_PART_SIZE + 5),
    "put": (dict(method="PUT", path=r"\.jsonl\.zst$"), 200_000),
    "head_after_complete": (dict(method="HEAD", path=r"\.jsonl\.zst$"), MIN_PART_SIZE + 5),
}


@pytest.mark.parametrize("action", ["error", "slow_down", "reset_before", "reset_after"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_fault_on_each_request_kind_leaves_nothing(pstore, proxy, s3_client, bucket, temp_dir, kind, action):
    match, size = KINDS[kind]
    fault = proxy.add(Fault(**match, action=action, times=None))
    with pytest.raises(UploadError) as failure:
        upload(pstore, payload(size), temp_dir)
    assert fault.hits >= 1
    assert failure.value.retryable, str(failure.value)
    assert failure.value.table == META["table"]
    assert_nothing_left(s3_client, bucket, temp_dir)


def test_one_put_whose_etag_is_our_md5_is_not_read_back(pstore, proxy, temp_dir):
    """A single PutObject sent with Content-MD5 whose ETag is our MD5 holds exactly our bytes: no HEAD
    (a round trip of every small day's fixed cost). A multipart object's size is still read back."""
    upload(pstore, payload(200_000), temp_dir)
    assert len(proxy.requests(method="PUT")) == 1 and not proxy.requests(method="HEAD")
    proxy.clear()
    upload(pstore, payload(MIN_PART_SIZE + 5), temp_dir)
    assert len(proxy.requests(method="HEAD")) == 1


@pytest.mark.parametrize(("match", "action", "size"), [
    (dict(method="POST", query="uploadId="), "error", MIN_PART_SIZE + 5),
    (dict(method="POST", query="uploadId="), "error_200", MIN_PART_SIZE + 5),
    (dict(method="POST", query="uploadId="), "reset_before", MIN_PART_SIZE + 5),
    (dict(method="PUT", path=r"\.jsonl\.zst$"), "reset_before", 1000),
    (dict(method="PUT", path=r"\.jsonl\.zst$"), "slow_down", 1000),
])
def test_a_failed_overwrite_keeps_the_older_archive(pstore, proxy, s3_client, bucket, temp_dir, match, action, size):
    """Cleanup withdraws only what we wrote: when publishing fails before the store acted, the
    archive already under the key (an overwrite run) is left as it was."""
    s3_client.put_object(Bucket=bucket, Key=KEY, Body=b"the older archive")
    proxy.add(Fault(**match, action=action, times=None))
    with pytest.raises(UploadError) as failure:
        upload(pstore, payload(size), temp_dir)
    assert failure.value.retryable
    assert stored(s3_client, bucket) == b"the older archive"
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


@pytest.mark.parametrize("forward", [False, True])
def test_complete_answering_200_with_an_error_body(proxy, bucket, s3_client, temp_dir, forward):
    """S3 may answer CompleteMultipartUpload 200 and put an <Error> in the body. botocore retries
    it (here twice in all); if it keeps failing, nothing is left, even when the store had in fact
    assembled the object before answering (forward=True)."""
    store = S3Store(proxy.client(max_attempts=2), bucket, part_size=MIN_PART_SIZE)
    proxy.add(Fault(method="POST", query="uploadId=", action="error_200", forward=forward, times=None))
    with pytest.raises(UploadError) as failure:
        upload(store, payload(MIN_PART_SIZE + 10), temp_dir)
    assert failure.value.retryable and "InternalError" in str(failure.value)
    assert len(proxy.requests(method="POST", query="uploadId=")) == 2  # botocore retried it
    assert_nothing_left(s3_client, bucket, temp_dir)


def test_complete_answering_200_with_an_error_once_is_retried_by_botocore(proxy, bucket, s3_client, temp_dir):
    store = S3Store(proxy.client(max_attempts=2), bucket, part_size=MIN_PART_SIZE)
    proxy.add(Fault(method="POST", query="uploadId=", action="error_200", times=1))
    data = payload(MIN_PART_SIZE + 10)
    upload(store, data, temp_dir)
    assert stored(s3_client, bucket) == data


def test_transient_5xx_on_a_part_is_retried_by_botocore(proxy, bucket, s3_client, temp_dir):
    store = S3Store(proxy.client(max_attempts=3), bucket, part_size=MIN_PART_SIZE)
    proxy.add(Fault(method="PUT", query="partNumber=1", action="slow_down", times=1))
    data = payload(MIN_PART_SIZE + 10)
    upload(store, data, temp_dir)
    assert [r.status for r in proxy.requests(method="PUT", query="partNumber=1")] == [503, 200]
    assert stored(s3_client, bucket) == data


def test_access_denied_is_not_retryable(pstore, proxy, s3_client, bucket, temp_dir):
    proxy.add(Fault(method="PUT", path=r"\.jsonl\.zst$", action="error", status=403, code="AccessDenied"))
    with pytest.raises(UploadError) as failure:
        upload(pstore, payload(1000), temp_dir)
    assert not failure.value.retryable and "to fix: grant s3:PutObject" in str(failure.value)
    assert_nothing_left(s3_client, bucket, temp_dir)


# --- cleanup failures never mask the original error ---------------------------------------------

@pytest.mark.parametrize("action", ["error", "slow_down", "reset_before"])
def test_failing_abort_does_not_mask_the_original_error(pstore, proxy, s3_client, bucket, temp_dir, action):
    proxy.add(Fault(method="PUT", query="partNumber=2", action="error", status=500, times=None))
    proxy.add(Fault(method="DELETE", query="uploadId=", action=action, times=None))
    with pytest.raises(UploadError) as failure:
        upload(pstore, payload(2 * MIN_PART_SIZE + 5), temp_dir)
    assert "UploadPart" in str(failure.value) and failure.value.retryable
    assert any("could not abort multipart upload" in note for note in failure.value.__notes__)
    assert len(s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])) == 1
    assert list(temp_dir.iterdir()) == []
    # the next archive of the key (small: the single-PUT path) removes the orphan
    proxy.clear()
    upload(pstore, b"small now", temp_dir)
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


@pytest.mark.parametrize("action", ["error", "reset_before", "reset_after"])
def test_failing_delete_does_not_mask_the_original_error(pstore, proxy, s3_client, bucket, temp_dir, action):
    proxy.add(Fault(method="PUT", path=r"\.jsonl\.zst$", action="flip_request_byte", times=None))
    proxy.add(Fault(method="DELETE", path=r"\.jsonl\.zst$", action=action, status=503, code="ServiceUnavailable"))
    with pytest.raises(UploadError) as failure:
        upload(pstore, payload(1000), temp_dir)
    assert "arrived corrupted" in str(failure.value)
    assert any("could not delete" in note for note in failure.value.__notes__)
    assert list(temp_dir.iterdir()) == []


def test_delete_quietly_keeps_the_original(pstore, proxy, bucket):
    original = RuntimeError("the real problem")
    proxy.add(Fault(method="DELETE", action="reset_before"))
    assert pstore.delete_quietly("a/key", original) is False
    assert "could not delete" in original.__notes__[0] and str(original) == "the real problem"
    assert pstore.delete_quietly("a/key", original) is True


# --- stale uploads ------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [10, 2 * MIN_PART_SIZE])
def test_stale_upload_of_the_key_is_aborted_on_either_path(pstore, s3_client, bucket, temp_dir, size):
    stale = s3_client.create_multipart_upload(Bucket=bucket, Key=KEY)["UploadId"]
    other = s3_client.create_multipart_upload(Bucket=bucket, Key=KEY + ".other")["UploadId"]
    data = payload(size)
    upload(pstore, data, temp_dir)
    left = {u["UploadId"] for u in s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}
    assert stale not in left and left == {other}  # only uploads of exactly this key
    assert stored(s3_client, bucket) == data


NASTY_KEY = 'archive/"Mixed Case"."Nasty Events"/2024/03/a+b %20c?x=1#frag&\u00e9\U0001F600.csv.gz'


@pytest.mark.parametrize("size", [10, MIN_PART_SIZE + 10])
def test_nasty_keys_round_trip_and_find_their_stale_uploads(pstore, s3_client, bucket, temp_dir, size):
    stale = s3_client.create_multipart_upload(Bucket=bucket, Key=NASTY_KEY)["UploadId"]
    data = payload(size)
    upload(pstore, data, temp_dir, key=NASTY_KEY)
    assert stored(s3_client, bucket, NASTY_KEY) == data
    assert stale not in {u["UploadId"] for u in s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}
    pstore.put_bytes(NASTY_KEY + ".manifest.json", b"{}", "application/json")
    assert pstore.get_verified_bytes(NASTY_KEY + ".manifest.json") == b"{}"


@pytest.mark.parametrize("size", [10, MIN_PART_SIZE + 10])
def test_failing_stale_cleanup_does_not_fail_the_upload(pstore, proxy, s3_client, bucket, temp_dir, size):
    """Looking for leftovers is housekeeping: if ListMultipartUploads fails, the archive still lands."""
    fault = proxy.add(Fault(method="GET", query="uploads", action="error", times=None))
    data = payload(size)
    upload(pstore, data, temp_dir)
    assert fault.hits >= 1 and stored(s3_client, bucket) == data


# --- verified reads -----------------------------------------------------------------------------

def test_get_verified_bytes(pstore, proxy, s3_client, bucket):
    body = b'{"manifest": true}' * 100
    s3_client.put_object(Bucket=bucket, Key="m.json", Body=body)
    assert pstore.get_verified_bytes("m.json") == body
    assert pstore.get_verified_bytes("missing.json") is None
    proxy.add(Fault(method="GET", path=r"m\.json$", action="flip_response_byte", times=1))
    assert pstore.get_verified_bytes("m.json") == body  # read again after a corrupt copy
    proxy.add(Fault(method="GET", path=r"m\.json$", action="flip_response_byte", times=None))
    with pytest.raises(DownloadError) as failure:
        pstore.get_verified_bytes("m.json")
    assert failure.value.retryable and isinstance(failure.value, ArchiveError)
    proxy.clear()
    proxy.add(Fault(method="GET", path=r"m\.json$", action="error", times=None))
    with pytest.raises(DownloadError) as failure:
        pstore.get_verified_bytes("m.json")
    assert failure.value.retryable


@pytest.mark.parametrize("action", ["error", "slow_down", "reset_before", "reset_after"])
def test_faults_on_reads_are_retryable_download_errors(pstore, proxy, s3_client, bucket, action):
    s3_client.put_object(Bucket=bucket, Key="m.json", Body=b"[1]")
    proxy.add(Fault(method="GET", path=r"m\.json$", action=action, times=None))
    with pytest.raises(DownloadError) as failure:
        pstore.get_verified_bytes("m.json")
    assert failure.value.retryable, str(failure.value)
    with pytest.raises(DownloadError) as failure:
        pstore.download_to("m.json", io.BytesIO())
    assert failure.value.retryable, str(failure.value)


def test_abort_is_prompt_while_parts_hang(proxy, bucket, s3_client, temp_dir):
    """abort() claims no further part, waits at most abort_timeout for hung parts, aborts the
    upload; the hung parts that finish later cannot bring it back."""
    store = S3Store(proxy.client(max_attempts=1), bucket, part_size=MIN_PART_SIZE, max_concurrency=2,
                    abort_timeout=0.2)
    hold = proxy.add(Fault(method="PUT", query="partNumber=", action="hold", times=None, hold_timeout=60))
    original = RuntimeError("the read failed")
    with temp_archive_file(temp_dir) as sink:
        up = store.begin(KEY, content_type="text/csv")
        sink.on_grow = lambda size: up.grow(sink.fd, size)
        sink.write(payload(6 * MIN_PART_SIZE))
        assert proxy.wait_held(2)
        up.abort(original)
        assert any("still in flight" in note for note in original.__notes__)
        assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
        hold.gate.set()
    assert up._join(30)  # the hung parts end (their upload is gone) and claim nothing more
    assert len(proxy.requests(method="PUT", query="partNumber=")) == 2
    assert_nothing_left(s3_client, bucket, temp_dir)


def test_botocore_checksum_error_on_read_is_retryable(proxy, bucket):
    """With boto3's default checksums the store keeps a CRC32; a corrupted GET raises botocore's
    FlexibleChecksumError, which comes out as a retryable DownloadError (or is read again)."""
    client = proxy.client(max_attempts=1, request_checksum_calculation="when_supported")
    client.put_object(Bucket=bucket, Key="m.json", Body=b"{}" * 5000)
    store = S3Store(client, bucket)
    proxy.add(Fault(method="GET", path=r"m\.json$", action="flip_response_byte", times=1))
    assert store.get_verified_bytes("m.json") == b"{}" * 5000
    proxy.add(Fault(method="GET", path=r"m\.json$", action="flip_response_byte", times=None))
    with pytest.raises(DownloadError) as failure:
        store.get_verified_bytes("m.json")
    assert failure.value.retryable and "FlexibleChecksumError" in str(failure.value)
    with pytest.raises(DownloadError) as failure:
        store.download_to("m.json", io.BytesIO())
    assert failure.value.retryable


def test_download_to_streams_and_verifies(pstore, proxy, s3_client, bucket, temp_dir):
    data = payload(2 * MIN_PART_SIZE + 3)
    upload(pstore, data, temp_dir)  # multipart: its ETag is not an MD5
    sink = io.BytesIO()
    got = pstore.download_to(KEY, sink, expected_md5=hashlib.md5(data).hexdigest(), expected_size=len(data))
    assert sink.getvalue() == data and got.size == len(data) and got.md5 == hashlib.md5(data).hexdigest()
    assert pstore.download_to("missing", io.BytesIO()) is None
    with pytest.raises(DownloadError) as failure:  # cannot tell transit from store: retry once more
        pstore.download_to(KEY, io.BytesIO(), expected_md5="0" * 32)
    assert failure.value.retryable and failure.value.damaged is None
    proxy.add(Fault(method="GET", path=r"\.jsonl\.zst$", action="flip_response_byte"))
    with pytest.raises(DownloadError) as failure:
        pstore.download_to(KEY, io.BytesIO(), expected_md5=hashlib.md5(data).hexdigest())
    assert failure.value.retryable


def test_download_to_tells_transit_corruption_from_a_damaged_object(pstore, proxy, s3_client, bucket):
    good = b"the archived bytes" * 1000
    s3_client.put_object(Bucket=bucket, Key="small", Body=good)
    proxy.add(Fault(method="GET", path=r"/small$", action="flip_response_byte"))
    with pytest.raises(DownloadError) as failure:  # no expected MD5 given: the plain-MD5 ETag is the reference
        pstore.download_to("small", io.BytesIO())
    assert failure.value.retryable and failure.value.damaged is False and "corrupted" in str(failure.value)
    damaged = bytearray(good)
    damaged[7] ^= 1
    s3_client.put_object(Bucket=bucket, Key="small", Body=bytes(damaged))  # replaced at rest
    with pytest.raises(DownloadError) as failure:
        pstore.download_to("small", io.BytesIO(), expected_md5=hashlib.md5(good).hexdigest())
    assert not failure.value.retryable and failure.value.damaged is True and "is damaged" in str(failure.value)
    sink = io.BytesIO()
    with pytest.raises(DownloadError) as failure:
        pstore.download_to("small", sink, expected_size=len(good) + 1)
    assert failure.value.damaged is True and not failure.value.retryable and sink.getvalue() == b""


# --- the temp file ------------------------------------------------------------------------------

def test_temp_file_has_no_name_and_readers_get_a_path(temp_dir):
    table = pa.table({"a": list(range(1000)), "b": ["x\u00e9"] * 1000})
    with temp_archive_file(temp_dir, suffix=".parquet") as sink:
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer)
        sink.write(buffer.getvalue().to_pybytes())
        assert list(temp_dir.iterdir()) == []  # nameless from the start
        assert pq.read_table(str(sink.path)).equals(table)  # verify.py's way of reading it
    assert list(temp_dir.iterdir()) == []


def test_temp_file_without_o_tmpfile_is_unlinked_at_once(temp_dir, monkeypatch):
    monkeypatch.delattr(os, "O_TMPFILE", raising=False)
    fd, path, name = open_nameless(temp_dir, ".csv")
    try:
        assert name is None and list(temp_dir.iterdir()) == []
        os.write(fd, b"a,b\n1,2\n")
        assert Path(path).read_bytes() == b"a,b\n1,2\n"
    finally:
        os.close(fd)


@pytest.mark.parametrize("tmpfile", [True, False])
def test_sigkill_leaves_no_temp_file(temp_dir, tmpfile):
    child = textwrap.dedent(f"""
        import os, sys
        if not {tmpfile}:
            del os.O_TMPFILE
        from archive_pipeline.core.sink import temp_archive_file
        with temp_archive_file(sys.argv[1], suffix=".jsonl") as sink:
            sink.write(b"x" * 3_000_000)
            print(os.readlink(f"/proc/self/fd/{{sink.fd}}"), flush=True)
            sys.stdin.read()  # wait to be killed
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen([sys.executable, "-c", child, str(temp_dir)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, env=env)
    try:
        target = process.stdout.readline().strip()
        assert target.startswith(str(temp_dir)) and target.endswith("(deleted)")  # it lived in temp_dir
        assert list(temp_dir.iterdir()) == []
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        process.stdin.close()
        process.stdout.close()
    assert process.returncode == -signal.SIGKILL
    assert list(temp_dir.iterdir()) == []


# --- part planning ------------------------------------------------------------------------------

def _parts_to(plan, total: int) -> int:
    offset = count = 0
    while offset < total:
        offset += plan.size_at(offset)
        count += 1
    return count


@pytest.mark.parametrize("part_size", [MIN_PART_SIZE, 8 * MiB, 100 * MiB])
@pytest.mark.parametrize("estimate", [None, 1 << 30, 100 << 30, MAX_OBJECT_SIZE])
def test_growing_parts_reach_5_tib_within_10000_parts(part_size, estimate):
    plan = plan_parts(part_size, estimate)
    assert _parts_to(plan, MAX_OBJECT_SIZE) <= 10_000
    assert all(MIN_PART_SIZE <= plan.size_at(o) <= 5 << 30 for o in (0, 1 << 30, 1 << 40, MAX_OBJECT_SIZE))
    if estimate:  # while the estimate holds, the parts are equal and at most ~1,000
        assert plan.size_at(estimate - 1) == plan.first
        assert _parts_to(plan, estimate) <= max(1_001, -(-estimate // (5 << 30)))


def test_part_plan_without_estimate_keeps_small_days_in_base_parts():
    plan = plan_parts(8 * MiB)
    assert plan.sizes(20 * MiB) == [8 * MiB, 8 * MiB, 4 * MiB]
    assert plan.size_at(1000 * 8 * MiB - 1) == 8 * MiB  # the first 1,000 parts are equal
    assert plan.size_at(1000 * 8 * MiB + 1) == 9 * MiB  # then 1/1000 of what was sent, whole MiB
    assert plan_parts(8 * MiB, 80 << 30).first == 82 * MiB  # an 80 GiB estimate: ~1,000 parts


def test_equal_parts_are_planned_from_the_estimate_with_headroom():
    assert plan_parts(8 * MiB, None, equal_parts=True).capacity == 8 * MiB * 10_000
    plan = plan_parts(8 * MiB, 100 << 30, equal_parts=True)
    assert plan.first == 41 * MiB and plan.capacity >= 4 * (100 << 30)
    sizes = plan.sizes(300 << 30)
    assert len(sizes) <= 10_000 and set(sizes[:-1]) == {41 * MiB}


class _CountingClient:
    """An in-process stand-in for S3 that counts parts and keeps their sizes."""

    def __init__(self) -> None:
        self.parts: dict[int, int] = {}
        self.created = self.aborted = 0

    def create_multipart_upload(self, **_):
        self.created += 1
        return {"UploadId": "u1"}

    def upload_part(self, PartNumber, Body, ContentLength, **_):  # noqa: N803 - boto3's names
        data = Body.read()
        assert len(data) == ContentLength
        self.parts[PartNumber] = len(data)
        self.md5s = getattr(self, "md5s", {})
        self.md5s[PartNumber] = hashlib.md5(data).digest()
        return {"ETag": f'"{hashlib.md5(data).hexdigest()}"'}

    def complete_multipart_upload(self, MultipartUpload, **_):  # noqa: N803
        numbers = [p["PartNumber"] for p in MultipartUpload["Parts"]]
        assert numbers == list(range(1, len(numbers) + 1)) == sorted(self.parts)
        etag = hashlib.md5(b"".join(self.md5s[n] for n in numbers)).hexdigest()
        return {"ETag": f'"{etag}-{len(numbers)}"'}

    def head_object(self, **_):
        return {"ContentLength": sum(self.parts.values())}

    def abort_multipart_upload(self, **_):
        self.aborted += 1

    def put_object(self, Key, Body, **_):  # noqa: N803 - the upload marker
        self.marked = Key
        return {"ETag": f'"{hashlib.md5(Body).hexdigest()}"'}

    def delete_object(self, Key, **_):  # noqa: N803
        assert Key == self.marked
        self.marked = None

    def get_paginator(self, _name):
        class _Pages:
            def paginate(self, **_):
                return [{"Uploads": []}]
        return _Pages()


class _TinyStore(S3Store):
    min_part_size = 1024
    max_parts = 100


@pytest.mark.parametrize(("equal_parts", "expected_size", "total", "first"), [
    (False, None, 1_500_000, 1024),  # no estimate: base parts, growing after 1,000 parts
    (False, 3_000_000, 1_500_000, 3072),  # estimate / 1000, rounded up to the grain (1 KiB here)
    (True, None, 90 * 1024 + 5, 1024),  # equal, no estimate: base parts, capacity 100 parts
    (True, 600 * 1024, 1_500_000, 24 * 1024),  # equal: 4 x estimate / 100 parts
])
def test_parts_sent_are_the_planned_parts(temp_dir, equal_parts, expected_size, total, first):
    """A store that counts parts (1 KiB base parts, 100 parts at most for equal parts): the parts
    sent, their order and sizes are the plan's."""
    client = _CountingClient()
    store_cls = _TinyStore if equal_parts else type("_TinyGrowing", (_TinyStore,), {"max_parts": 10_000})
    store = store_cls(client, "bucket", part_size=1024, max_concurrency=3, equal_parts=equal_parts)
    with temp_archive_file(temp_dir) as sink:
        up = store.begin("k", content_type="text/csv", expected_size=expected_size)
        sink.on_grow = lambda size: up.grow(sink.fd, size)
        for start in range(0, total, 7_000):
            sink.write(b"z" * min(7_000, total - start))
        result = up.finish(sink.fd, sink.size, sink.md5)
    planned = store.plan(expected_size).sizes(total)
    assert list(result.part_sizes) == planned == [client.parts[n] for n in sorted(client.parts)]
    assert sum(planned) == total and planned[0] == first
    if equal_parts or expected_size:
        assert set(planned[:-1]) == {first} and len(planned) <= 100 + (not equal_parts) * 900
    else:  # 1,001 parts of 1 KiB (until 1,000 x 1 KiB is passed), then 1/1000 of what was sent
        assert planned[:1001] == [1024] * 1001 and planned[1001] == 2048 and planned[-2] == 2048


def test_equal_parts_fail_clearly_before_the_part_limit(temp_dir):
    client = _CountingClient()
    store = _TinyStore(client, "bucket", part_size=1024, max_concurrency=2, equal_parts=True)
    up = store.begin("k", content_type="text/csv", metadata={"table": "s.t", "day": "2024-03-10"},
                     expected_size=10 * 1024)  # 4 x 10 KiB / 100 parts -> 1 KiB parts, 100 KiB capacity
    with temp_archive_file(temp_dir) as sink:
        sink.on_grow = lambda size: up.grow(sink.fd, size)
        with pytest.raises(UploadError) as failure:
            for _ in range(200):
                sink.write(b"y" * 1024)
        up.abort()
    assert sink.size == 101 * 1024  # the write that passed the capacity failed
    assert not failure.value.retryable and "equal parts" in str(failure.value)
    assert "part_size" in str(failure.value) and failure.value.table == "s.t"
    # however far the upload threads got before the abort: no part past 100, all equal, none left open
    assert all(n <= 100 for n in client.parts) and set(client.parts.values()) <= {1024}
    assert client.aborted == client.created


# --- metadata -----------------------------------------------------------------------------------

def test_metadata_encoding_round_trips():
    values = {"a": "sch\u00e9ma.\u00e9v\u00e9nements \U0001F600", "b": "plain.ascii_1", "c": " padded ",
              "d": "=?UTF-8?B?Zm9v?=", "e": "line\nbreak", "f": ""}
    encoded = encode_metadata(values)
    assert all(v.isascii() and v.isprintable() for v in encoded.values())
    assert encoded["b"] == "plain.ascii_1"
    assert decode_metadata(encoded) == values
    with pytest.raises(ValueError):
        encode_metadata({"t\u00e9": "x"})


def test_finish_without_grow_still_uploads_in_parts(pstore, s3_client, bucket, temp_dir):
    data = payload(2 * MIN_PART_SIZE + 9)
    with temp_archive_file(temp_dir) as sink:
        sink.write(data)  # no upload attached while writing
        up = pstore.begin(KEY, content_type="text/csv")
        result = up.finish(sink.fd, sink.size, sink.md5)
    assert result.parts == 3 and stored(s3_client, bucket) == data


def test_metadata_over_s3s_limit_is_refused():
    with pytest.raises(ValueError, match="2 KB"):
        encode_metadata({"table": "\u00e9" * 1000})


# --- the proxy itself ---------------------------------------------------------------------------

def test_proxy_throttle_and_delay_deliver_intact_data(proxy, bucket, s3_client):
    client = proxy.client(max_attempts=1)
    data = payload(300_000)
    proxy.add(Fault(method="PUT", path="/slow$", action="throttle", rate=3_000_000))
    proxy.add(Fault(method="GET", path="/slow$", action="delay", delay=0.05))
    client.put_object(Bucket=bucket, Key="slow", Body=data)
    assert client.get_object(Bucket=bucket, Key="slow")["Body"].read() == data
    assert [(r.method, r.fault, r.status) for r in proxy.requests(path="/slow$")] == [
        ("PUT", "throttle", 200), ("GET", "delay", 200)]


def test_proxy_flips_payload_bytes_not_aws_chunked_framing():
    from archive_pipeline_tests.fault_proxy import flip_byte, payload_spans

    body = b"5;chunk-signature=abc\r\nhello\r\n6\r\n world\r\n0\r\nx-amz-checksum-crc32:AAAA\r\n\r\n"
    spans = payload_spans(body, "aws-chunked")
    assert [body[a:b] for a, b in spans] == [b"hello", b" world"]
    for offset in range(11):
        flipped = flip_byte(body, spans, offset)
        diff = [i for i in range(len(body)) if body[i] != flipped[i]]
        assert len(diff) == 1 and any(a <= diff[0] < b for a, b in spans)
    assert payload_spans(b"plain", "") == [(0, 5)]


def test_download_to_a_full_disk_is_a_local_error_not_the_stores(store, s3_client, bucket):
    """/dev/full answers every write with ENOSPC, as a full temp directory does."""
    from archive_pipeline.core.store import LocalFileError

    s3_client.put_object(Bucket=bucket, Key="small", Body=b"x" * 1000)
    with open("/dev/full", "wb", buffering=0) as full, pytest.raises(ArchiveError) as failure:
        store.download_to("small", full, expected_size=1000)
    error = failure.value
    assert isinstance(error, LocalFileError) and not isinstance(error, DownloadError)
    assert not error.retryable and error.directory == "/dev"
    assert "the temp directory /dev is full" in str(error) and "No space left on device" in str(error)
    assert "temp_dir" in str(error) and "TMPDIR" in str(error)
    assert "bucket" not in str(error) and "credentials" not in str(error)
