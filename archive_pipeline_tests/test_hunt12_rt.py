"""Hunt 12, rt: S3-compatible stores that differ from AWS (conditional writes, checksum headers, ETags that are not
MD5s, listings, HEAD answers), imitated by the fault proxy in front of moto. Each test fails on the current code
because of a bug."""

from __future__ import annotations

import datetime as dt

import pytest

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline_tests.test_hunt3_bb import ev  # noqa: F401 - 20 rows on DAY, column mode
from archive_pipeline_tests.test_hunt8_nb import DialectProxy, _xml_error

DAY = dt.date(2024, 3, 10)


def _objects(s3_client, bucket) -> tuple[list[str], list[str]]:
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    uploads = [u["Key"] for u in s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    return keys, uploads


def refuse_checksum_headers_sha256_mismatch(handler, method, body):
    """A store that cannot take botocore >= 1.36's default checksum headers (x-amz-checksum-crc32,
    x-amz-sdk-checksum-algorithm) and answers them as some Ceph RGW releases and gateways do: 400
    XAmzContentSHA256Mismatch ("The provided 'x-amz-content-sha256' header does not match what was computed")."""
    names = [name.lower() for name in handler.headers.keys()]
    if any(n.startswith("x-amz-checksum-") or n == "x-amz-sdk-checksum-algorithm" for n in names):
        return _xml_error(400, "XAmzContentSHA256Mismatch",
                          "The provided 'x-amz-content-sha256' header does not match what was computed.")
    return None


def test_a_store_refusing_checksum_headers_with_sha256_mismatch_names_the_checksum_setting(
        conn, schema, ev, s3, bucket, temp_dir, s3_client):  # noqa: F811
    """A store that refuses botocore's default checksum headers (boto3 >= 1.36: every PutObject carries
    ``x-amz-checksum-crc32`` and ``x-amz-sdk-checksum-algorithm``) with ``400 XAmzContentSHA256Mismatch`` instead
    of B2's ``400 InvalidArgument "Unsupported header"`` (already named). The client is boto3's default
    (``request_checksum_calculation="when_supported"``); the user archives a new day.

    What happens: every PutObject is refused the same way; the code is taken for bytes damaged on the way (it is in
    the "corrupt" codes): sent three times, then UploadError "an upload arrived corrupted (BadDigest / checksum
    mismatch) ... transient, retried; to fix: retried automatically; if it recurs, check proxies between Dagster and
    the store". Every retry (Dagster's, the sensor's) fails alike, forever, and the one setting that fixes it is
    never named (README, Production notes: a store that refuses botocore's checksum headers "fails naming
    AWS_REQUEST_CHECKSUM_CALCULATION=when_required").

    What should happen: a checksum refusal that repeats on every attempt of a request that carried botocore's
    checksum headers names AWS_REQUEST_CHECKSUM_CALCULATION=when_required (the remedy), whatever the store's code
    for it; nothing is left in the bucket. Fix idea: after the last corrupt attempt, when the request carried
    x-amz-checksum-* (client config request_checksum_calculation != when_required) and the code is
    XAmzContentSHA256Mismatch / InvalidDigest / XAmzContentChecksumMismatch, add that setting to the remedy (or
    retry once without the checksum headers to tell a store that refuses them from a damaged network)."""
    with DialectProxy(s3.endpoint_url, before=[refuse_checksum_headers_sha256_mismatch]) as proxy:
        store = S3Store(proxy.client(max_attempts=1, request_checksum_calculation="when_supported"), bucket,
                        prefix="archive", part_size=MIN_PART_SIZE)
        with pytest.raises(ArchiveError) as caught:
            archive_partition(conn, ev, DAY, store, temp_dir=temp_dir)
    error = caught.value
    said = f"{error} | remedy: {error.remedy}"
    assert "AWS_REQUEST_CHECKSUM_CALCULATION" in said, said
    assert _objects(s3_client, bucket) == ([], [])


def no_list_bucket(handler, method, body):
    """Credentials without s3:ListBucket: AWS refuses the listing (403 AccessDenied)."""
    if method == "GET" and "list-type=2" in handler.path:
        return _xml_error(403, "AccessDenied", "Access Denied")
    return None


def missing_key_403(handler, method, status, headers, payload):
    """... and, without s3:ListBucket, AWS answers a GET or HEAD of a key that does not exist with 403 AccessDenied,
    not 404 (so as not to tell who may not list whether the key exists)."""
    if status == 404 and method in ("HEAD", "GET") and "list-type" not in handler.path:
        status, headers, body = _xml_error(403, "AccessDenied", "Access Denied")
        return status, headers, body if method == "GET" else b""
    return status, headers, payload


def test_a_403_for_a_missing_manifest_without_list_bucket_names_list_bucket_not_get_object(
        conn, schema, ev, s3, bucket, store, temp_dir):  # noqa: F811
    """A restore role with s3:GetObject but without s3:ListBucket, on AWS: a listing is refused, and a GET or HEAD of a
    key that does not exist is answered ``403 AccessDenied`` (AWS's documented behaviour without s3:ListBucket),
    never 404. 2024-03-10 is archived, 2024-03-11 never was. The same credentials restore 2024-03-10 fine (so they
    can read); the user then restores 2024-03-11.

    What happens: the manifest's GET is refused 403 and the error is "the object store refused access ... to fix:
    grant s3:GetObject on the bucket to these credentials (GetObject needs it ...)": the credentials have
    s3:GetObject (the day before restored with them); the real causes (the day has no archive, and without
    s3:ListBucket the store cannot say so) are not named. The HeadObject refusal already says "s3:GetObject (and
    s3:ListBucket, without which S3 answers 403 for a missing key)"; the GetObject one does not.

    What should happen: the refusal of a GET names s3:ListBucket alongside s3:GetObject and says that S3 answers 403
    for a key that does not exist without it (the day may simply not be archived). Fix idea: _PERMISSION_OF
    GetObject = the HeadObject wording; or on a 403 of a manifest GET, say the key may be missing."""
    from archive_pipeline.core.restore import restore_day

    archive_partition(conn, ev, DAY, store, temp_dir=temp_dir)
    other = DAY + dt.timedelta(days=1)
    with DialectProxy(s3.endpoint_url, before=[no_list_bucket], after=[missing_key_403]) as proxy:
        reader = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)
        assert restore_day(conn, reader, ev, DAY, into="new", target=f"{schema}.back").rows == 20
        with pytest.raises(ArchiveError) as caught:
            restore_day(conn, reader, ev, other, into="new", target=f"{schema}.back2")
    error = caught.value
    said = f"{error} | remedy: {error.remedy}"
    asked = (error.remedy or "").split("the archiver needs")[0]
    assert "s3:ListBucket" in asked, f"the remedy asks only for a permission the role has: {said}"


def delete_of_a_missing_key_404(handler, method, body):
    """Google Cloud Storage's XML API (and OpenStack Swift's S3 layer): a DeleteObject of a key that does not exist is
    answered ``404 NoSuchKey``, where AWS, MinIO and R2 answer 204 (the key is gone either way)."""
    if method == "DELETE" and "uploadId" not in handler.path:
        import http.client

        host, port = handler.server.proxy.target
        probe = http.client.HTTPConnection(host, port, timeout=10)
        try:
            probe.request("HEAD", handler.path)
            answer = probe.getresponse()
            answer.read()
        finally:
            probe.close()
        if answer.status == 404:
            return _xml_error(404, "NoSuchKey", "The specified key does not exist.")
    return None


def test_a_store_answering_404_to_the_delete_of_a_missing_marker_is_not_reported_as_a_leftover(
        conn, schema, s3, bucket, temp_dir, s3_client):
    """A store that answers a DeleteObject of a missing key with 404 NoSuchKey (GCS's XML API). A day big enough for a
    multipart upload is archived; the upload marker's PutObject fails with a 500 (the store kept nothing), so the run
    fails (retryable, rightly) and cleans up: it deletes the marker that may have landed.

    What happens: the marker never landed; the store answers the DELETE 404 NoSuchKey; ``delete_quietly`` takes any
    error for a failed delete, so the error carries the note "cleanup: could not delete s3://.../....jsonl.uploading
    (NoSuchKey ...); delete it by hand or archive the day again": the user is sent to delete by hand an object that
    does not exist (the bucket holds nothing; ``_marked`` also stays set, as if a marker were left).

    What should happen: a 404 to the DELETE means the key is gone, which is what the cleanup wanted: no note, no
    leftover reported. Fix idea: in S3Store.delete (or delete_quietly) take NoSuchKey / 404 as success."""
    from archive_pipeline_tests.fault_proxy import Fault
    from psycopg import sql

    from archive_pipeline.core.config import TableSpec

    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz NOT NULL, v text)").format(
        sql.Identifier(schema, "big")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s::timestamptz + g * interval '1 ms', md5(g::text) || "
                         "md5((g + 1)::text) FROM generate_series(1, 75000) g").format(sql.Identifier(schema, "big")),
                 (f"{DAY} 00:00+00",))
    spec = TableSpec(name=f"{schema}.big", day_column="at", start_date="2024-03-01", partitioning={"mode": "column"},
                     compression="none")
    with DialectProxy(s3.endpoint_url, before=[delete_of_a_missing_key_404]) as proxy:
        proxy.add(Fault(method="PUT", path=r"\.uploading$", action="error", status=500, times=None))
        gcs = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)
        with pytest.raises(ArchiveError) as caught:
            archive_partition(conn, spec, DAY, gcs, temp_dir=temp_dir)
    assert caught.value.retryable
    assert _objects(s3_client, bucket) == ([], [])
    notes = [n for n in getattr(caught.value, "__notes__", []) if "could not delete" in n]
    assert not notes, f"the user is told to delete by hand an object that does not exist: {notes}"
