"""Hunt 5 (kd): S3 bucket features and key/prefix shapes a real deployment has."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.restore import restore_day
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline.core.verify import deep_verify, verify_archive
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

DAY = dt.date(2024, 3, 10)


def _small_table(conn, schema, rows=50):
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at date, v text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s, md5(g::text) FROM generate_series(1, %s) g").format(table),
                 (DAY, rows))
    return TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv", compression="none")


def _keys(s3_client, bucket):
    return sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", []))


def _to_glacier(s3_client, bucket, key):
    """What a bucket lifecycle rule (Transition to GLACIER after N days) does to an object: same bytes, same ETag,
    another storage class; a GET is then refused with 403 InvalidObjectState until the object is restored."""
    s3_client.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": key}, StorageClass="GLACIER",
                          MetadataDirective="COPY")


@pytest.mark.parametrize("doing", ["deep_verify", "restore"])
def test_an_archive_moved_to_glacier_is_not_called_an_access_refusal(doing, conn, schema, store, s3_client, bucket,
                                                                     temp_dir):
    """A user keeps archives cheap with a bucket lifecycle rule that moves objects to GLACIER after 30 days (the
    usual setup for an archive bucket). Later they run ``verify --deep`` (or the removal's proof), or ``restore``,
    on such a day. S3 refuses the GET with 403 ``InvalidObjectState`` ("not valid for the object's storage
    class"), and the archiver reports it as "the object store refused access", not retryable, with the remedy
    "grant s3:PutObject, s3:GetObject, s3:DeleteObject, ... to these credentials": the user goes hunting for a
    missing permission the credentials already have. Expected: the error says the object is in an archive
    storage class (GLACIER) and must be restored (RestoreObject, then wait) before it can be read, naming table
    and day; not an access refusal. (``errors._s3_code`` maps every 403 to ``_S3_ACCESS``; InvalidObjectState
    has no entry of its own.)"""
    spec = _small_table(conn, schema)
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    _to_glacier(s3_client, bucket, result.key)
    assert verify_archive(store, result.key, {}) == []  # intact: HEAD still answers
    with pytest.raises(ArchiveError) as caught:
        if doing == "deep_verify":
            deep_verify(conn, store, spec, DAY, temp_dir=temp_dir)
        else:
            restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.restored", temp_dir=temp_dir)
    exc = caught.value
    assert exc.table == spec.name and exc.day == DAY.isoformat()
    cause, remedy = (exc.cause or "").lower(), (exc.remedy or "").lower()
    assert "refused access" not in cause and "grant" not in remedy, (exc.cause, exc.remedy)
    assert "storage class" in cause or "glacier" in cause, exc.cause
    assert "restore" in remedy, exc.remedy


def test_a_listing_refused_for_want_of_s3_listbucket_names_that_permission(conn, schema, s3, bucket, s3_client,
                                                                           temp_dir):
    """A least-privilege deployment grants the archiver's credentials what its errors ask for: "grant s3:PutObject,
    s3:GetObject, s3:DeleteObject, s3:ListBucketMultipartUploads and s3:AbortMultipartUpload on the bucket" (the
    README lists no permissions, so that remedy is the user's only guide). Every run first lists the day's keys
    (ListObjectsV2), which needs s3:ListBucket, so every archive fails with AccessDenied on the listing, and the
    error's remedy again names the five permissions already granted, never s3:ListBucket (which is also what makes
    S3 answer 404 rather than 403 for a missing manifest, and what the command line's HeadBucket needs). Expected:
    the remedy of a refused ListObjectsV2 names s3:ListBucket (ideally the one permission the refused operation
    needs). (``errors._S3_ACCESS``'s remedy; ``store._wrap`` does not say which permission the operation needs.)"""
    import re

    spec = _small_table(conn, schema)
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="GET", query="list-type", action="error", status=403, code="AccessDenied", times=None))
        store = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)
        with pytest.raises(ArchiveError) as caught:
            archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    exc = caught.value
    assert exc.table == spec.name and exc.day == DAY.isoformat() and not exc.retryable
    assert "ListObjectsV2" in str(exc)
    assert re.search(r"s3:ListBucket(?![A-Za-z])", exc.remedy or ""), exc.remedy
    assert _keys(s3_client, bucket) == []
