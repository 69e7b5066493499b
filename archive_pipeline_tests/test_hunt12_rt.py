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
