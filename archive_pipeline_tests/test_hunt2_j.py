"""Hunt (j): faults on the write path to S3 while a day is archived (core archive + store), injected
through the fault proxy between boto3 and moto. After each fault: a typed error naming table and day,
retryable where a retry can help; nothing in the bucket looks complete unless it is exact; no open
multipart upload that no run will ever look for; no temp file; the previous archive survives."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError, UploadError
from archive_pipeline.core.keys import manifest_key, upload_marker_key
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

DAY = dt.date(2024, 3, 10)
LIST = dict(method="GET", query="list-type")
GET_MANIFEST = dict(method="GET", path=r"\.manifest\.json$")
CREATE = dict(method="POST", query="uploads")


def _keys(s3_client, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", []))


def _uploads(s3_client, bucket: str) -> list[str]:
    return [u["Key"] for u in s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def _get(s3_client, bucket: str, key: str) -> bytes | None:
    try:
        return s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3_client.exceptions.NoSuchKey:
        return None


def _small_day(conn, schema: str, *, retention: bool = False) -> TableSpec:
    """``<schema>.ev``: 20 rows on DAY (column mode; with ``retention``, removable by delete)."""
    ev = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at timestamptz NOT NULL, v text)").format(ev))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 00:00+00'::timestamptz + g * interval '1 min', "
                         "'r' || g FROM generate_series(1, 20) g").format(ev))
    extra = {"retention": {"keep_days": 1, "action": "delete"}} if retention else {}
    return TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01", partitioning={"mode": "column"},
                     **extra)


def _big_day(conn, schema: str) -> TableSpec:
    """``<schema>.ev``: ~6.5 MB of incompressible text on DAY (CSV, no codec): two parts of 5 MiB."""
    ev = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at date, blob text)").format(ev))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s, (SELECT string_agg(md5(g::text || x::text), '') "
                         "FROM generate_series(1, 100) x) FROM generate_series(1, 2000) g").format(ev), (DAY,))
    return TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv", compression="none")


@pytest.mark.parametrize("state", ["changed", "removed"])
def test_a_listing_answered_200_with_an_empty_body_is_not_taken_for_a_day_with_nothing_stored(
        state, conn, schema, s3, bucket, s3_client, store):
    """A user re-runs a day that is archived: its source changed since (5 rows deleted: the run must refuse it
    as changed, LateRowsError), or retention removed it (the archive is the only copy of its 20 rows). The
    day's LIST (the run's first request) is answered 200 with an empty body once (a gateway's or proxy's
    made-up answer: no ListBucketResult at all). Was: botocore parses an empty body as a listing without
    ``Contents``, ``read_existing`` takes it for "nothing of this day is stored", and the run archives the day
    as new at generation 1, the very key of the stored object: the changed day is archived without overwrite,
    its previous object overwritten in place and its manifest replaced; the removed day gets an empty-day
    manifest over its ``removed`` one, and the next run deletes the object holding the only copy of the 20
    removed rows. Should: an answer that is no listing is a failed read (retryable), and nothing stored changes."""
    conn.autocommit = True
    spec = _small_day(conn, schema, retention=state == "removed")
    first = archive_partition(conn, spec, DAY, store)
    if state == "removed":
        remove_day(conn, spec, DAY, store)
    else:
        conn.execute(sql.SQL("DELETE FROM {} WHERE id <= 5").format(sql.Identifier(schema, "ev")))
    manifest_before = _get(s3_client, bucket, first.manifest_key)
    object_before = _get(s3_client, bucket, first.key)
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(**LIST, action="lose", times=1))
        flaky = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive")
        try:
            archive_partition(conn, spec, DAY, flaky)
        except ArchiveError as exc:  # LateRowsError / DayRemovedError, or a failed read (retryable)
            assert spec.name in str(exc) and "2024-03-10" in str(exc), str(exc)
    assert _get(s3_client, bucket, first.manifest_key) == manifest_before, "the day's manifest was replaced"
    assert _get(s3_client, bucket, first.key) == object_before, "the stored object was overwritten"
    with pytest.raises(ArchiveError):  # the next run, without faults, refuses the day as before
        archive_partition(conn, spec, DAY, store)
    assert _get(s3_client, bucket, first.key) == object_before, "the only copy of the day's rows was deleted"


def test_a_manifest_read_answered_200_with_an_empty_body_never_gets_the_previous_object_deleted(
        conn, schema, s3, bucket, s3_client, store):
    """A day archived with 20 rows; 5 of them are deleted from the source since (the archive is the only copy
    of those 5). While a run of the day (without overwrite: it should refuse the day as changed) is under
    way, every GET of the manifest is answered 200 with an empty body and no MD5 ETag (a gateway's made-up
    answer), which ``get_verified_bytes`` accepts as the manifest's bytes. Was: the manifest counts as
    unreadable, the day is archived again as generation 2 (15 rows) and its manifest replaced; the new
    manifest names neither the old object in ``kept`` nor anywhere, so the next run (no fault at all) deletes
    generation 1 as a leftover: the 5 deleted rows are gone from the bucket, after two transient bad answers
    and without overwrite ever being set. Should: the old object survives (the read fails retryable, or the
    old object is kept by the new manifest): no run deletes rows that exist nowhere else."""
    spec = _small_day(conn, schema)
    first = archive_partition(conn, spec, DAY, store)
    object_before = _get(s3_client, bucket, first.key)
    conn.execute(sql.SQL("DELETE FROM {} WHERE id <= 5").format(sql.Identifier(schema, "ev")))
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(**GET_MANIFEST, action="lose", times=None))
        flaky = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive")
        try:
            archive_partition(conn, spec, DAY, flaky)
        except ArchiveError as exc:
            assert spec.name in str(exc) and "2024-03-10" in str(exc), str(exc)
    try:  # the next run, with a store that answers well
        archive_partition(conn, spec, DAY, store)
    except ArchiveError:
        pass
    assert _get(s3_client, bucket, first.key) == object_before, (
        f"the object holding the day's 20 rows was deleted; the bucket holds {_keys(s3_client, bucket)}")


@pytest.mark.parametrize("attempts", [1, None], ids=["no_retries", "botocore_retries"])
def test_a_create_whose_answer_times_out_and_that_lands_later_is_never_left_unannounced(attempts, conn, schema, s3,
                                                                                        bucket, s3_client, temp_dir):
    """A first archive of a day of two parts; the store is slow to answer CreateMultipartUpload: the client's
    read timeout (3 s here) passes and the store creates the upload a moment later (the request was on its
    way). Without retries the run fails (retryable); with botocore's retries (its default) the retried create
    is answered at once and the run succeeds. Was: the listing that should find an upload botocore created
    before retrying (or the abort's) runs before the late create lands, finds none, counts the key as settled
    and deletes the ``.uploading`` marker; then the upload appears: an open multipart upload with no marker,
    which no run ever lists (only a day whose listing shows a marker lists its uploads; the next run of the
    archived day is a skip), its parts billed until a bucket lifecycle rule removes them. Should: a create
    whose answer was lost to a timeout (or that botocore retried) may still land, so its marker stays (as a
    manifest write that timed out counts as one that may still land) and the next run of the day aborts it."""
    spec = _big_day(conn, schema)
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(**CREATE, action="delay", delay=8.0, times=1))
        # read timeout 3 s: every other request answers within it, also without retries on a loaded machine
        flaky = S3Store(proxy.client(max_attempts=attempts, read_timeout=3.0), bucket, part_size=MIN_PART_SIZE,
                        max_concurrency=2)
        try:
            archive_partition(conn, spec, DAY, flaky, temp_dir=temp_dir)
        except UploadError as exc:
            assert attempts == 1 and exc.retryable, exc
            assert spec.name in str(exc) and "2024-03-10" in str(exc), str(exc)
        deadline = time.monotonic() + 30
        while proxy.requests(**CREATE)[0].status is None and time.monotonic() < deadline:
            time.sleep(0.05)  # the delayed create is forwarded to the store
    assert list(temp_dir.iterdir()) == []
    open_uploads = _uploads(s3_client, bucket)
    assert open_uploads, "the late create did not land (the test's premise)"
    markers = [k for k in _keys(s3_client, bucket) if k == upload_marker_key(open_uploads[0])]
    assert markers, f"open upload(s) {open_uploads} left without their marker: no run will look for them"
    archive_partition(conn, spec, DAY, S3Store(s3_client, bucket, part_size=MIN_PART_SIZE), temp_dir=temp_dir)
    assert _uploads(s3_client, bucket) == [], "the next run of the day left the upload open"


def test_a_create_answered_200_without_an_upload_id_fails_at_once_naming_the_request(conn, schema, s3, bucket,
                                                                                    s3_client, temp_dir):
    """CreateMultipartUpload answered 200 with an empty body (no ``UploadId``: a gateway's made-up answer).
    Was: ``response["UploadId"]`` raises KeyError in the upload's thread, uncaught ("Exception in thread
    s3-upload-0"), so the upload never learns it failed: the day is read to its end while no part is sent,
    and the run then fails with "the upload ended with 0 of N bytes in parts" (cause: "the uploaded parts do
    not add up to the file"), which says nothing of the request that failed. Should: the answer is a failed
    CreateMultipartUpload, raised as such (retryable, naming the request), no exception escapes a thread."""
    spec = _big_day(conn, schema)
    escaped: list[BaseException] = []
    previous_hook = threading.excepthook
    threading.excepthook = lambda args: escaped.append(args.exc_value)
    try:
        with FaultProxy(s3.endpoint_url) as proxy:
            proxy.add(Fault(**CREATE, action="lose", times=1))
            flaky = S3Store(proxy.client(max_attempts=1), bucket, part_size=MIN_PART_SIZE, max_concurrency=2)
            with pytest.raises(UploadError) as caught:
                archive_partition(conn, spec, DAY, flaky, temp_dir=temp_dir)
    finally:
        threading.excepthook = previous_hook
    assert escaped == [], f"exception escaped an upload thread: {escaped!r}"
    error = caught.value
    assert error.retryable and spec.name in str(error) and "2024-03-10" in str(error), str(error)
    assert "CreateMultipartUpload" in str(error), str(error)
    assert _uploads(s3_client, bucket) == [] and list(temp_dir.iterdir()) == []


def test_an_uploads_listing_answered_200_with_an_empty_body_keeps_the_killed_runs_marker(conn, schema, s3, bucket,
                                                                                        s3_client, store):
    """A day is archived; a later overwrite of it was killed mid-upload, leaving its multipart upload of
    generation 2 open and its ``.uploading`` marker (made by hand here, as the killed run leaves them). The next
    run of the day (a skip) sees the marker and lists the store's multipart uploads to abort the leftover; that
    listing is answered 200 with an empty body once (a made-up answer, no ListMultipartUploadsResult). Was: the
    empty answer reads as "no uploads", every upload it showed counts as accounted for, the marker is deleted
    and the killed run's upload stays open with no marker: no later run ever lists the day's uploads again.
    Should: an answer that is no listing is a failed listing: the marker stays, and the next run aborts it."""
    spec = _small_day(conn, schema)
    first = archive_partition(conn, spec, DAY, store)
    leftover = first.key.replace(".jsonl.zst", ".g2.jsonl.zst")
    s3_client.create_multipart_upload(Bucket=bucket, Key=leftover)
    s3_client.put_object(Bucket=bucket, Key=upload_marker_key(leftover), Body=b"marker")
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="GET", query="uploads", action="lose", times=1))
        flaky = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive")
        assert archive_partition(conn, spec, DAY, flaky).skipped
        assert proxy.requests(method="GET", query="uploads"), "the run did not list the uploads (test's premise)"
    left = _uploads(s3_client, bucket)
    assert not left or upload_marker_key(leftover) in _keys(s3_client, bucket), (
        f"open upload(s) {left} left without their marker: no run will look for them")
    archive_partition(conn, spec, DAY, store)
    assert _uploads(s3_client, bucket) == [], "the killed run's upload is never aborted"
