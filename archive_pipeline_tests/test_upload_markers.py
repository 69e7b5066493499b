"""Upload markers: a multipart upload announces itself with ``<key>.uploading`` while it runs, so a day
whose LIST shows no marker has no killed run's upload to look for, and a small day (one PUT) costs no
listing of the store's multipart uploads. Against moto over HTTP, through the fault-injecting proxy
where requests are counted or failed."""

from __future__ import annotations

import datetime as dt
import threading
import urllib.parse
import urllib.request

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import UploadError
from archive_pipeline.core.keys import generation_key, upload_marker_key
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.test_store import proxy  # noqa: F401 - the fixture

D = dt.date(2024, 3, 10)
LIST_UPLOADS = dict(method="GET", query="uploads")  # ListMultipartUploads (CreateMultipartUpload is a POST)


def _keys(s3_client, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", []))


def _uploads(s3_client, bucket: str) -> list[str]:
    return [u["Key"] for u in s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


@pytest.fixture
def pstore(proxy, bucket) -> S3Store:
    return S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)


def _table(conn, schema: str, rows: int, name: str = "t") -> TableSpec:
    ident = sql.Identifier(schema, name)
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, body text)").format(ident))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s, repeat(md5(g::text), 6) FROM generate_series(1, %s) g")
                 .format(ident), (D, rows))
    return TableSpec(name=f"{schema}.{name}", day_column="at", start_date="2024-03-01", compression="none")


def test_a_small_day_costs_four_requests_and_its_skip_two(conn, schema, proxy, pstore, s3_client, bucket):
    """New: LIST of the day, PUT of the data, PUT of the manifest, HEAD of the data (still there once the manifest
    naming it is written: see archive._refuse_lost_object). Skipped: LIST and the manifest's GET.
    Neither lists the store's multipart uploads: no marker was listed."""
    spec = _table(conn, schema, 10)
    result = archive_partition(conn, spec, D, pstore)
    seen = [(r.method, r.path.rsplit("/", 1)[-1] if r.method != "GET" else r.query.split("&")[0])
            for r in proxy.records]
    assert seen == [("GET", "list-type=2"), ("PUT", result.key.rsplit("/", 1)[-1]),
                    ("PUT", result.manifest_key.rsplit("/", 1)[-1]), ("HEAD", result.key.rsplit("/", 1)[-1])]
    proxy.clear()
    assert archive_partition(conn, spec, D, pstore).skipped
    assert [r.method for r in proxy.records] == ["GET", "GET"] and not proxy.requests(**LIST_UPLOADS)
    assert _keys(s3_client, bucket) == sorted([result.key, result.manifest_key])


def test_the_marker_is_there_while_parts_upload_and_gone_after(conn, schema, proxy, pstore, s3_client, bucket):
    spec = _table(conn, schema, 30000)
    hold = proxy.add(Fault(method="PUT", query="partNumber=1", action="hold", times=1))
    done: dict = {}
    worker = threading.Thread(target=lambda: done.update(result=archive_partition(conn, spec, D, pstore)))
    worker.start()
    try:
        assert proxy.wait_held(1)
        during = _keys(s3_client, bucket)
        assert len(during) == 1 and during[0].endswith(".jsonl.uploading") and len(_uploads(s3_client, bucket)) == 1
    finally:
        hold.gate.set()
        worker.join(120)
    result = done["result"]
    assert result.parts > 1 and during == [upload_marker_key(result.key)]
    assert _keys(s3_client, bucket) == sorted([result.key, result.manifest_key]) and _uploads(s3_client, bucket) == []


def test_a_failed_upload_takes_its_marker_with_it(conn, schema, proxy, pstore, s3_client, bucket):
    spec = _table(conn, schema, 30000)
    proxy.add(Fault(method="PUT", query="partNumber=2", action="error", status=403, code="AccessDenied"))
    with pytest.raises(UploadError):
        archive_partition(conn, spec, D, pstore)
    assert _keys(s3_client, bucket) == [] and _uploads(s3_client, bucket) == []


def test_a_marker_that_cannot_be_written_stops_the_upload_before_it_starts(conn, schema, proxy, pstore, s3_client,
                                                                          bucket):
    spec = _table(conn, schema, 30000)
    proxy.add(Fault(method="PUT", path=r"\.uploading$", action="error", status=503, code="ServiceUnavailable"))
    with pytest.raises(UploadError) as caught:
        archive_partition(conn, spec, D, pstore)
    error = caught.value
    assert error.retryable and error.table == spec.name and error.day == "2024-03-10"
    assert "announcing the upload" in str(error) and ".uploading" in str(error)
    assert not proxy.requests(method="POST", query="uploads")  # no multipart upload was created
    assert _keys(s3_client, bucket) == [] and _uploads(s3_client, bucket) == []


@pytest.mark.parametrize("next_run", ["small new day", "skip", "overwrite"])
def test_an_upload_whose_abort_failed_is_aborted_by_the_next_run(conn, schema, proxy, pstore, store, s3_client,
                                                                 bucket, next_run):
    """A part fails and so does the abort: the upload and its marker stay (the marker is deleted only
    when no upload is left). The next run of the day, whatever it does, sees the marker in its LIST,
    aborts the day's uploads and deletes the marker."""
    big = _table(conn, schema, 30000)
    first = archive_partition(conn, big, D, store) if next_run != "small new day" else None
    proxy.add(Fault(method="PUT", query="partNumber=2", action="error", status=403, code="AccessDenied"))
    proxy.add(Fault(method="DELETE", query="uploadId=", action="error", status=500, times=None))
    with pytest.raises(UploadError) as caught:
        archive_partition(conn, big, D, pstore, overwrite=True)
    assert "could not abort multipart upload" in "".join(getattr(caught.value, "__notes__", []))
    left = _uploads(s3_client, bucket)
    assert len(left) == 1 and upload_marker_key(left[0]) in _keys(s3_client, bucket)
    if next_run == "small new day":
        conn.execute(sql.SQL("DELETE FROM {} WHERE id > 10").format(sql.Identifier(schema, "t")))
        result = archive_partition(conn, big, D, store)
        assert result.rows == 10 and result.parts == 1
        expected = [result.key, result.manifest_key]
    elif next_run == "skip":
        assert archive_partition(conn, big, D, store).skipped
        expected = [first.key, first.manifest_key]
    else:
        result = archive_partition(conn, big, D, store, overwrite=True)
        expected = [result.key, result.manifest_key]
    assert _uploads(s3_client, bucket) == [] and _keys(s3_client, bucket) == sorted(expected)


def test_an_upload_botocore_created_twice_is_aborted_by_a_later_run(conn, schema, s3, bucket, store, s3_client):
    """CreateMultipartUpload's answer is lost after the store created the upload, and botocore creates
    another: two uploads, one id known. The listing after the create that would abort the other fails,
    so the run keeps its marker (it cannot show no upload of the key is left), and the next run aborts it."""
    spec = _table(conn, schema, 30000)
    with FaultProxy(s3.endpoint_url) as proxy:
        flaky = S3Store(proxy.client(max_attempts=2), bucket, prefix="archive", part_size=MIN_PART_SIZE)
        proxy.add(Fault(method="POST", query="uploads", action="reset_after", times=1))
        proxy.add(Fault(**LIST_UPLOADS, action="error", status=503, code="SlowDown", times=None))
        first = archive_partition(conn, spec, D, flaky)
        assert len(proxy.requests(method="POST", query="uploads")) == 2 and first.parts > 1
    assert len(_uploads(s3_client, bucket)) == 1  # the first create's upload: nobody knows its id
    assert upload_marker_key(first.key) in _keys(s3_client, bucket)
    assert archive_partition(conn, spec, D, store).skipped  # the next run of the day
    assert _uploads(s3_client, bucket) == [] and _keys(s3_client, bucket) == sorted([first.key, first.manifest_key])


def _left_with_marker(conn, spec, pstore, proxy, s3_client, bucket) -> str:
    """A failed overwrite whose abort failed too: its upload and marker stay; returns the upload's key."""
    proxy.add(Fault(method="PUT", query="partNumber=2", action="error", status=403, code="AccessDenied"))
    proxy.add(Fault(method="DELETE", query="uploadId=", action="error", status=500, times=None))
    with pytest.raises(UploadError):
        archive_partition(conn, spec, D, pstore, overwrite=True)
    proxy.clear()
    left = _uploads(s3_client, bucket)
    assert len(left) == 1 and upload_marker_key(left[0]) in _keys(s3_client, bucket)
    return left[0]


def test_one_damaged_byte_in_the_upload_listing_keeps_the_marker(conn, schema, s3, proxy, pstore, bucket, store,
                                                                 s3_client):
    """The next run's listing of the day's uploads arrives with a byte of the upload's key damaged: it
    matches no generation and is not aborted, and the run keeps the marker, so the run after it looks again."""
    spec = _table(conn, schema, 30000)
    first = archive_partition(conn, spec, D, store)
    key = _left_with_marker(conn, spec, pstore, proxy, s3_client, bucket)
    head, _, name = key.rpartition("/")
    raw = urllib.request.urlopen(f"{s3.endpoint_url}/{bucket}?uploads&encoding-type=url&prefix="
                                 f"{urllib.parse.quote(head + '/' + name.split('.')[0], safe='')}").read()
    proxy.add(Fault(**LIST_UPLOADS, action="flip_response_byte", offset=raw.index(b".jsonl</Key>") + 3, times=1))
    assert archive_partition(conn, spec, D, pstore).skipped
    assert proxy.requests(**LIST_UPLOADS)[0].fault == "flip_response_byte"
    assert len(_uploads(s3_client, bucket)) == 1 and upload_marker_key(key) in _keys(s3_client, bucket)
    assert archive_partition(conn, spec, D, store).skipped
    assert _uploads(s3_client, bucket) == [] and _keys(s3_client, bucket) == sorted([first.key, first.manifest_key])


def test_a_marker_that_lands_after_a_cancelled_abort_is_deleted(s3, proxy, pstore, bucket, s3_client, tmp_path):
    """Ctrl-C while the marker's PUT is on its way: abort() waits a moment, deletes the marker (not there
    yet) and returns; the PUT then lands, and the upload's thread, finding itself aborted, deletes it."""
    hold = proxy.add(Fault(method="PUT", path=r"\.uploading$", action="hold", times=1))
    upload = pstore.begin("archive/x/2024-03-10.jsonl", content_type="application/x-ndjson")
    path = tmp_path / "part"
    path.write_bytes(b"x" * MIN_PART_SIZE)
    with open(path, "rb") as file:
        upload.grow(file.fileno(), MIN_PART_SIZE)
        assert proxy.wait_held(1)
        upload.abort(KeyboardInterrupt())
        hold.gate.set()
        for thread in upload._threads:
            thread.join(30)
    assert _uploads(s3_client, bucket) == [] and _keys(s3_client, bucket) == []
    assert not proxy.requests(method="POST", query="uploads")


def _retried_create(proxy) -> None:
    """The first CreateMultipartUpload is reset after the store acted on it; botocore creates again."""
    proxy.add(Fault(method="POST", query="uploads", action="reset_after", times=1))


def _grown(flaky: S3Store, key: str, tmp_path):
    upload = flaky.begin(key, content_type="application/x-ndjson")
    path = tmp_path / "part"
    path.write_bytes(b"x" * MIN_PART_SIZE)
    file = open(path, "rb")  # noqa: SIM115 - closed by the caller
    upload.grow(file.fileno(), MIN_PART_SIZE)
    return upload, file


def test_a_cancel_during_the_listing_after_the_create_keeps_the_marker(conn, schema, s3, bucket, store, s3_client,
                                                                      tmp_path):
    """Ctrl-C while the listing that would find botocore's first upload is on its way: abort() aborts ours
    and must not take the marker while the other upload may be there (a process ends after Ctrl-C)."""
    spec = _table(conn, schema, 10)
    first = archive_partition(conn, spec, D, store)
    key = generation_key(first.key, 2)
    gate = threading.Event()
    with FaultProxy(s3.endpoint_url) as proxy:
        flaky = S3Store(proxy.client(max_attempts=2, read_timeout=2), bucket, prefix="archive",
                        part_size=MIN_PART_SIZE)
        _retried_create(proxy)
        proxy.add(Fault(**LIST_UPLOADS, action="hold", gate=gate, times=None, hold_timeout=30))
        upload, file = _grown(flaky, key, tmp_path)
        with file:
            assert proxy.wait_held(1)  # the leader's listing after the create
            assert len(proxy.requests(method="POST", query="uploads")) == 2
            upload.abort(KeyboardInterrupt())
            at_abort = (_uploads(s3_client, bucket), _keys(s3_client, bucket))
            for thread in upload._threads:
                thread.join(30)
        gate.set()
    assert at_abort[0] and upload_marker_key(key) in at_abort[1]  # what a process ending after Ctrl-C leaves
    assert archive_partition(conn, spec, D, store).skipped  # the next run of the day
    assert _uploads(s3_client, bucket) == [] and _keys(s3_client, bucket) == sorted([first.key, first.manifest_key])


def test_an_upload_created_after_a_cancelled_abort_takes_botocores_first_with_it(conn, schema, s3, bucket, store,
                                                                                 s3_client, tmp_path):
    """abort() while botocore's second create is on its way: the upload's thread aborts what that create
    made, and lists the key's uploads, which finds the first create's. The marker stays: botocore retried the
    create, and a first attempt may land after any listing (the next run of the key lists again)."""
    spec = _table(conn, schema, 10)
    first = archive_partition(conn, spec, D, store)
    key = generation_key(first.key, 2)
    gate = threading.Event()
    with FaultProxy(s3.endpoint_url) as proxy:
        flaky = S3Store(proxy.client(max_attempts=2), bucket, prefix="archive", part_size=MIN_PART_SIZE)
        _retried_create(proxy)
        proxy.add(Fault(method="POST", query="uploads", action="hold", gate=gate, times=1))
        upload, file = _grown(flaky, key, tmp_path)
        with file:
            assert proxy.wait_held(1)  # botocore's second create
            upload.abort(KeyboardInterrupt())
            gate.set()
            for thread in upload._threads:
                thread.join(30)
    assert _uploads(s3_client, bucket) == []
    assert _keys(s3_client, bucket) == sorted([first.key, first.manifest_key, upload_marker_key(key)])
