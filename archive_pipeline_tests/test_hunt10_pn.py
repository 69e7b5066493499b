"""Hunt 10 (pn): S3-compatible stores that behave differently from AWS (emulated with the fault proxy's dialect
hooks in front of moto): a bucket in another region, ..."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.test_hunt3_bb import ev  # noqa: F401 - 20 rows on DAY, column mode
from archive_pipeline_tests.test_hunt8_nb import DialectProxy
from archive_pipeline_tests.test_hunt_cli import cli, make_env, write_config

DAY = dt.date(2024, 3, 10)
OTHER_REGION = "eu-west-1"


def in_another_region(status: int, code: str, message: str):
    """The bucket lives in ``OTHER_REGION``: every request is answered as S3 (and MinIO/Ceph with regions) answers
    one sent to the wrong region, with ``x-amz-bucket-region`` naming the right one (a HEAD's answer has no body)."""
    def answer(handler, method, body):
        return status, [("Content-Type", "application/xml"), ("x-amz-bucket-region", OTHER_REGION)], (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<Region>{OTHER_REGION}</Region><RequestId>X</RequestId></Error>").encode()
    return answer


PERMANENT_REDIRECT = (301, "PermanentRedirect", "The bucket you are attempting to access must be addressed using the "
                      "specified endpoint. Please send all future requests to this endpoint.")
WRONG_REGION = (400, "AuthorizationHeaderMalformed", f"The authorization header is malformed; the region 'us-east-1' "
                f"is wrong; expecting '{OTHER_REGION}'")


@pytest.mark.parametrize("answer", [PERMANENT_REDIRECT, WRONG_REGION], ids=["301", "400"])
def test_the_bucket_check_of_a_bucket_in_another_region_names_the_region_and_is_not_retried(s3, bucket, monkeypatch,
                                                                                             answer):
    """A user points the command line (or the code location) at a bucket that lives in eu-west-1 while
    ARCHIVE_S3_REGION is unset (us-east-1), through an endpoint URL (a regional S3 endpoint, MinIO/Ceph with
    regions), so botocore does not follow the redirect. The first request, the bucket check (HeadBucket), is
    answered 301 PermanentRedirect (or 400 for a request signed for the wrong region), with the bucket's region in
    the x-amz-bucket-region header. The load fails with "bucket '...' answered 301 at ...: check $ARCHIVE_S3_BUCKET
    and the S3 credentials" and retryable=True (exit 3, "unreachable": a scheduler retries it for ever), or for the
    400 "answered 400 ... check $ARCHIVE_S3_BUCKET and the S3 credentials": both are right. Nothing mentions the
    region. Should: not retried (no retry changes the bucket's region), and the message names the region setting
    (ARCHIVE_S3_REGION), ideally the bucket's region the answer gives. (`environment.store_from_env`, the
    ClientError branch of the head_bucket check: only 403/404 are told apart, any other status is "answered N".)"""
    from archive_pipeline.core.environment import store_from_env

    with DialectProxy(s3.endpoint_url, before=[in_another_region(*answer)]) as proxy:
        monkeypatch.setenv("ARCHIVE_S3_BUCKET", bucket)
        monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", proxy.url)
        with pytest.raises(Exception) as caught:
            store_from_env()
    error = caught.value
    said = f"{error} {getattr(error, 'remedy', '') or ''}"
    assert getattr(error, "retryable", None) is False, f"a bucket in another region is retried: {error!r}"
    assert "ARCHIVE_S3_REGION" in said, said


def test_an_archive_into_a_bucket_in_another_region_names_the_region(conn, schema, ev, s3, bucket, temp_dir):
    """The same bucket in another region reached by the code location's store (or a command whose bucket check
    passed through a gateway): every request is answered 301 PermanentRedirect, with x-amz-bucket-region. The day
    fails, rightly not retried, as "the object store rejected the request ... to fix: read the error code in the
    message": the generic verdict for an unknown code, which tells the user nothing about what to change (S3's
    message only says to "send all future requests to this endpoint"). Should: the cause says the bucket is in
    another region (its region, from the answer, where given) and the remedy names ARCHIVE_S3_REGION (and the
    endpoint). (`errors._s3_code` knows no PermanentRedirect / 301, nor the region in the answer.)"""
    with DialectProxy(s3.endpoint_url, before=[in_another_region(*PERMANENT_REDIRECT)]) as proxy:
        store = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)
        with pytest.raises(ArchiveError) as caught:
            archive_partition(conn, ev, DAY, store, temp_dir=temp_dir)
    error = caught.value
    said = f"{error} {error.remedy or ''} {error.cause or ''}"
    assert not error.retryable, error
    assert "ARCHIVE_S3_REGION" in said or "region" in (error.remedy or ""), said



def keys_encoded_unannounced(handler, method, status, headers, payload):
    """A store that URL-encodes the keys of every listing but never says so (no <EncodingType> element in its
    answer), as Apache Ozone's S3 gateway did before HDDS-7710: botocore then leaves the keys encoded."""
    if method == "GET" and "list-type=2" in handler.path and status == 200:
        payload = re.sub(rb"<EncodingType>url</EncodingType>", b"", payload)
    return status, headers, payload


def test_archived_days_of_a_table_with_a_non_ascii_name_are_not_listed_missing_by_a_store_that_encodes_keys(
        pg, s3, bucket, conn, schema, tmp_path):
    """A table named ``événements`` (the README's own example of a non-ASCII name) on a store whose listings give
    keys URL-encoded without saying so (no <EncodingType>, Ozone's S3 gateway before 1.4): every key comes back
    as ``archive/<schema>.%C3%A9v%C3%A9nements/...``. The days archive fine (a re-run reads each manifest and
    skips the day). But ``list`` calls all five archived days "missing", ``verify`` of the range checks nothing
    ("no day in the selection is archived", exit 1) and ``restore --from/--to`` refuses with "no archive for" every
    day: the range's one listing shows keys under the table's prefix, none of them the days' own, and each day is
    taken for never archived, against the listing's own rule that a day is absent only when the listing shows
    nothing else of it. Should: the days are read (or the keys decoded) and reported archived; list, verify and
    restore agree with archive. (`listing.listed_absent` takes keys it cannot match for proof of absence.)"""
    table = "événements"
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at timestamptz NOT NULL)").format(
        sql.Identifier(schema, table)))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s::timestamptz + g * interval '1 hour' "
                         "FROM generate_series(0, 119) g").format(sql.Identifier(schema, table)), (f"{DAY} 00:00+00",))
    first, last = DAY.isoformat(), (DAY + dt.timedelta(days=4)).isoformat()
    with DialectProxy(s3.endpoint_url, after=[keys_encoded_unannounced]) as proxy:
        env = make_env(pg, proxy.url, bucket, write_config(tmp_path, [
            {"name": f"{schema}.{table}", "day_column": "at", "start_date": first}]))
        archived = cli(env, "archive", "--from", first, "--to", last)
        assert archived.returncode == 0 and archived.stdout.count(" archived ") == 5, archived.stdout  # (premise)
        listed = cli(env, "list", "--from", first, "--to", last)
        restored = cli(env, "restore", "--from", first, "--to", last, "--into", "new", "--target", f"{schema}.back")
    assert "missing" not in listed.stdout and len(re.findall(r" archived +\d", listed.stdout)) == 5, listed.stdout
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "back"))).fetchone()[0] == 120


def test_a_store_without_list_objects_v2_is_not_sent_to_the_checksum_settings(conn, schema, ev, s3, bucket, temp_dir):
    """A store that implements only the first version of ListObjects and answers ``list-type=2`` with 501
    NotImplemented (some gateways and older S3 layers). Every run lists the day's keys first (ListObjectsV2), so
    every day fails, rightly not retried, with "the object store does not implement a request or header the
    archiver sent ... to fix: on an S3-compatible store, set AWS_REQUEST_CHECKSUM_CALCULATION=when_required and
    AWS_RESPONSE_CHECKSUM_VALIDATION=when_required, and check that it supports multipart uploads": the user sets two
    variables that change nothing for a listing (a GET with no body) and looks at multipart uploads, which work.
    Should: the remedy names what the store lacks, the operation that was refused (ListObjectsV2, which the
    archiver needs), not the checksum settings. (`errors._S3_UNSUPPORTED` has one remedy for every operation;
    `errors.for_operation` specialises only a refused access.)"""
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="GET", query="list-type=2", action="error", status=501, code="NotImplemented",
                        times=None))
        store = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)
        with pytest.raises(ArchiveError) as caught:
            archive_partition(conn, ev, DAY, store, temp_dir=temp_dir)
    error = caught.value
    assert (error.table, error.day, error.retryable) == (ev.name, DAY.isoformat(), False), error
    assert "ListObjectsV2" in (error.remedy or ""), error.remedy
    assert "CHECKSUM" not in (error.remedy or ""), error.remedy


@pytest.mark.parametrize(("status", "code"), [(503, "SlowDown"), (429, "TooManyRequests")])
def test_a_throttled_bucket_check_is_not_blamed_on_the_bucket_name_and_credentials(s3, bucket, monkeypatch, status,
                                                                                    code):
    """A busy S3-compatible store (a MinIO under load, Ceph RGW's rate limits, S3's 503 SlowDown with Retry-After)
    throttles the command line's first request, the bucket check (HeadBucket), past botocore's retries. The load
    fails, rightly retryable, with "bucket '...' answered 503 at ...: check $ARCHIVE_S3_BUCKET and the S3
    credentials": the operator goes to check a bucket name and keys that are right, while the store only asked to
    slow down. Every other request throttled so says "the object store is throttling or temporarily failing (5xx,
    SlowDown) ... retried automatically". Should: a 5xx/429 to the bucket check says the store is throttling or
    failing for the moment and is retried, without sending the user to the bucket name and credentials.
    (`environment.store_from_env`: any status but 403/404 gets "check $ARCHIVE_S3_BUCKET and the S3 credentials".)"""
    from archive_pipeline.core.environment import store_from_env

    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="HEAD", path=rf"^/{bucket}/?$", action="error", status=status, code=code, times=None))
        monkeypatch.setenv("ARCHIVE_S3_BUCKET", bucket)
        monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", proxy.url)
        with pytest.raises(Exception) as caught:
            store_from_env()
    error = caught.value
    said = f"{error} {getattr(error, 'remedy', '') or ''}"
    assert getattr(error, "retryable", None) is True, repr(error)
    assert "credentials" not in said and "ARCHIVE_S3_BUCKET" not in said, said
