"""Hunt 21 (ac): a code review of core/store.py and core/leftovers.py (the S3 side: single PUT and multipart upload,
Content-MD5 and ETag checks, retries and their classification, manifests as commit points, upload markers, listing
with pagination, cleanup of leftovers and open multipart uploads).

What held up (probed or read, no test here): an UploadPart or PutObject answered once without its ETag is sent again
(If-Match the copy the store holds) and the day is green and exact; a Complete answered 200 with an <Error> after
the store completed is withdrawn by its writer mark; a listing page that says more follows without a token, or a
last page with a token, is refused as retryable; the stale-upload path after a single PUT is reached only for a
client without paginators; cleanup messages quote botocore through redact()."""

from __future__ import annotations

import datetime as dt

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.store import S3Store
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.helpers import download, read_jsonl

DAY = dt.date(2024, 3, 10)


def _one_day(conn, schema: str) -> TableSpec:
    conn.execute(f"CREATE TABLE {schema}.ev (id int, at date)")
    conn.execute(f"INSERT INTO {schema}.ev SELECT g, %s FROM generate_series(1, 50) g", (DAY,))
    return TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, compression="none")


def test_an_object_put_refused_once_for_its_crc32_is_sent_again_like_one_refused_for_its_md5(
        conn, schema, s3, bucket, s3_client, temp_dir):
    """Scenario: a MinIO-style store checks the CRC32 botocore (>= 1.36) sends beside Content-MD5; one PutObject of
    the day's object arrives damaged on the way and the store answers 400 XAmzContentChecksumMismatch ("The provided
    'x-amz-checksum' header does not match what was computed": MinIO's code for it). The same fault answered with
    S3's BadDigest is sent again at once and the day is archived (this test with code="BadDigest" passes).

    Now: store.S3Upload._put_single (and _send_part, put_bytes) resend only codes in store._CORRUPT_CODES
    ({BadDigest, XAmzContentSHA256Mismatch, InvalidChecksum}); XAmzContentChecksumMismatch is not there (though
    errors._S3_CORRUPT_CODES lists it, and classify calls it "an upload arrived corrupted"), so the first damaged
    copy fails the whole day: the archive run is red and re-reads the day from PostgreSQL after Dagster's retry
    delay, and `archive-pipeline archive` exits non-zero for what one more PUT fixes.

    Should: every code that says "the body arrived damaged" is sent again up to corrupt_attempts, as BadDigest is;
    fix idea: one shared set of corrupt codes (errors._S3_CORRUPT_CODES plus InvalidChecksum) used by both modules."""
    spec = _one_day(conn, schema)
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="PUT", path=r"\.jsonl$", action="error", status=400,
                        code="XAmzContentChecksumMismatch", times=1))
        store = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive")
        result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    assert proxy.requests(method="PUT", path=r"\.jsonl$")[0].fault == "error"  # (the premise: the fault applied)
    assert result.rows == 50
    assert len(read_jsonl(download(s3_client, bucket, result.key))) == 50
