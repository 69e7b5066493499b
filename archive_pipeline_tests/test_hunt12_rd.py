"""Hunt 12 (rd): ambiguous outcomes on the object store: the store carried out a write, the client never
got its answer (a reset after the store acted, a 5xx sent after the write took effect), and botocore sent
the request again. The second attempt then meets what the first one did (a completed upload is gone:
NoSuchUpload; a conditional write finds the key taken: 412)."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store, UploadError
from archive_pipeline.core.verify import deep_verify
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

DAY = dt.date(2024, 3, 10)
COMPLETE = dict(method="POST", query="uploadId=")


def _table(conn, schema, *, big: bool, **extra) -> TableSpec:
    """ev(id, at, blob): 50 rows (one PUT) or 2,000 rows of ~3.2 kB of incompressible text (~6.5 MB: two
    parts of 5 MiB, CSV without compression)."""
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at date, blob text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s, (SELECT string_agg(md5(g::text || x::text), '') "
                         "FROM generate_series(1, 100) x) FROM generate_series(1, %s) g").format(table),
                 (DAY, 2000 if big else 50))
    return TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv", compression="none", **extra)


def _keys(s3_client, bucket) -> list[str]:
    return sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", []))


def _uploads(s3_client, bucket) -> list[dict]:
    return s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


@pytest.mark.parametrize("overwrite", [False, True], ids=["new_day", "overwrite"])
def test_a_completed_upload_whose_retried_complete_says_nosuchupload_is_not_withdrawn(
        overwrite, conn, schema, s3, bucket, s3_client, temp_dir):
    """A user archives a day big enough for a multipart upload (a new day, or an overwrite of a changed day)
    through a client that retries, as every deployed one does. The store completes the upload, then the
    connection is reset before its answer; botocore sends CompleteMultipartUpload again and the store answers
    404 NoSuchUpload (S3: "the upload ID might be invalid, or the multipart upload might have been aborted or
    completed": a completed upload is no longer one). Now: the run reports UploadError "the multipart upload
    disappeared or conflicted with another writer", HEADs the key, finds exactly its own object there
    (our md5-of-parts ETag, our size) and DELETES it, so a day whose write landed whole fails and must upload
    its gigabytes again (the overwrite keeps the stale archive). Expected: a NoSuchUpload to a Complete that
    botocore retried (RetryAttempts > 0) is checked against the key, as a 412 already is (``store.holds``:
    the expected ``md5-of-parts-N`` ETag and the size); when the key holds our object the upload counts as
    completed and the run commits it. Fix idea: in ``S3Upload._finish``, treat ``_code(exc) == "NoSuchUpload"``
    like ``_is_taken`` when ``holds(key, expected, size)``."""
    spec = _table(conn, schema, big=True, overwrite=overwrite)
    plain = S3Store(s3_client, bucket, part_size=MIN_PART_SIZE)
    if overwrite:
        archive_partition(conn, spec, DAY, plain, temp_dir=temp_dir)
        conn.execute(sql.SQL("UPDATE {} SET blob = blob || 'x' WHERE id = 7").format(sql.Identifier(schema, "ev")))
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(**COMPLETE, action="reset_after", times=1))  # the store completed it; the answer is lost
        proxy.add(Fault(**COMPLETE, action="error", status=404, code="NoSuchUpload", times=1))  # botocore's retry
        store = S3Store(proxy.client(max_attempts=3), bucket, part_size=MIN_PART_SIZE)
        result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
        assert [r.status for r in proxy.requests(**COMPLETE)] == ["reset", 404]
    assert result.parts == 2
    assert deep_verify(conn, plain, spec, DAY, temp_dir=temp_dir) == []
    assert _keys(s3_client, bucket) == sorted([result.key, result.manifest_key])
    assert _uploads(s3_client, bucket) == []


def test_a_retried_conditional_complete_refused_412_is_not_another_runs_without_md5_etags(
        conn, schema, s3, bucket, s3_client, temp_dir):
    """A store whose ETags are not MD5s (SSE-KMS: ``verify_etags: false``, as the README says to set) and a
    new day big enough for a multipart upload, completed with If-None-Match: *. The store completes it, the
    connection is reset before the answer, botocore sends the Complete again and the store refuses it with 412
    (the key now holds an object: the one the first attempt made). Now: KeyTakenError "was written by another
    run meanwhile ... nothing of this run was published"; both statements are false: no other run exists, and
    this run's object stays in the store under the day's key without a manifest (an orphan the message denies,
    and the day is left unarchived). Expected: the run finds the key holds its own object and commits it (or,
    at the least, never blames another run). With MD5 ETags ``holds`` compares the ETag; without them it is
    skipped (``S3Upload._finish``: ``if self.store.verify_etags and self.store.holds(...)``). Fix idea: a
    Complete refused with 412 leaves the upload open on S3, so ask ListParts (or AbortMultipartUpload) of our
    UploadId: NoSuchUpload means our Complete is what made the object; or read the object back and hash it."""
    spec = _table(conn, schema, big=True)
    plain = S3Store(s3_client, bucket, part_size=MIN_PART_SIZE)
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(**COMPLETE, action="reset_after", times=1))  # the store completed it; the answer is lost
        proxy.add(Fault(**COMPLETE, action="error", status=412, code="PreconditionFailed", times=1))  # the retry
        store = S3Store(proxy.client(max_attempts=3), bucket, part_size=MIN_PART_SIZE, verify_etags=False)
        result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
        assert [r.status for r in proxy.requests(**COMPLETE)] == ["reset", 412]
    assert result.parts == 2
    assert deep_verify(conn, plain, spec, DAY, temp_dir=temp_dir) == []
    assert _keys(s3_client, bucket) == sorted([result.key, result.manifest_key])
    assert _uploads(s3_client, bucket) == []


def test_a_failed_put_the_store_carried_out_leaves_no_object_without_md5_etags(conn, schema, s3, bucket, s3_client,
                                                                               temp_dir):
    """A store whose ETags are not MD5s (SSE-KMS: ``verify_etags: false``), a new small day (one PutObject with
    If-None-Match: *). The store stores the object every time but answers 500 (a gateway failing after the
    backend acted); botocore's attempts all get 500 and the run fails, retryably, as it should. Now: the object
    stays under the day's key with no manifest naming it: the README's "nothing half written, nothing left
    behind" is not kept. With MD5 ETags the same failure withdraws it (``_withdraw_if_ours`` HEADs the key and
    deletes our ETag), but without them ``S3Store._withdraw_if_ours`` returns at once. The next run then finds
    a generation and no manifest, writes generation 2 and records the leftover under ``kept`` ("the manifest
    before this one was missing") unless its listed ETag happens to equal the new object's, which SSE-KMS ETags
    do not: the day's storage doubles for good. Expected: after the failed run the key holds nothing of it.
    Fix idea: without MD5 ETags, decide "ours" as ``S3Store.holds`` already does for a single PUT (the size,
    then the bytes read back and hashed), and delete it then."""
    spec = _table(conn, schema, big=False)
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="PUT", path=r"2024-03-10\.csv$", action="error", forward=True, times=None))
        store = S3Store(proxy.client(max_attempts=3), bucket, part_size=MIN_PART_SIZE, verify_etags=False)
        with pytest.raises(UploadError) as failure:
            archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
        assert proxy.requests(method="PUT", path=r"2024-03-10\.csv$")[0].status == 500
    assert failure.value.retryable and "InternalError" in str(failure.value)
    assert _keys(s3_client, bucket) == [], "the failed run left its object behind, named by no manifest"


def test_a_late_copy_of_a_taken_back_pending_mark_does_not_land(conn, schema, s3, bucket, s3_client, temp_dir):
    """A user removes an archived day (retention: delete). The pending mark's PutObject (If-Match the proven
    manifest's ETag) is slow: its first attempt is still on its way when the client's read timeout fires;
    botocore's second attempt lands. Then the removal fails before anything is removed (here the HEAD of the
    proven object fails, 503), and the pending mark is taken back as it should be: the proven manifest's very
    bytes are written back over it. The run reports a clean, retryable failure ("nothing was removed"). Then the
    slow first attempt reaches the store: its condition, If-Match the proven manifest's ETag, holds again (the
    same bytes, the same ETag), so the pending mark lands after the run that took it back has ended: the day's
    manifest says "removal pending" for a removal that never happened (an ABA on the ETag), until some later
    run settles it. Expected: a taken-back mark stays taken back; no copy of the pending write lands after the
    failed run. Fix idea: take back with bytes whose ETag differs from the proven manifest's (e.g. a
    ``taken_back`` note in the manifest), so any late copy conditioned on the proven ETag is refused (412)."""
    import json
    import time

    from archive_pipeline.core.lifecycle import remove_day

    spec = _table(conn, schema, big=False, retention={"keep_days": 1, "action": "delete"})
    plain = S3Store(s3_client, bucket, part_size=MIN_PART_SIZE)
    archived = archive_partition(conn, spec, DAY, plain, temp_dir=temp_dir)
    manifest_put = dict(method="PUT", path=r"manifest\.json$")
    with FaultProxy(s3.endpoint_url) as proxy:
        slow = proxy.add(Fault(**manifest_put, action="hold", hold_timeout=30, times=1))
        proxy.add(Fault(method="HEAD", path=r"2024-03-10\.csv$", action="error", status=503, code="SlowDown",
                        times=None))
        store = S3Store(proxy.client(max_attempts=3, read_timeout=1), bucket, part_size=MIN_PART_SIZE)
        with pytest.raises(Exception) as failure:
            remove_day(conn, spec, DAY, store, temp_dir=temp_dir)
        assert "cleanup: could not take back" not in " ".join(getattr(failure.value, "__notes__", []))
        taken_back = json.loads(s3_client.get_object(Bucket=bucket, Key=archived.manifest_key)["Body"].read())
        assert "removed" not in taken_back  # taken back by the failed run, as it should be
        slow.gate.set()  # the slow first attempt of the pending mark reaches the store now
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proxy.requests(**manifest_put)[0].status is None:
            time.sleep(0.05)
        assert proxy.requests(**manifest_put)[0].status is not None
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "ev"))).fetchone()[0] == 50
    manifest = json.loads(s3_client.get_object(Bucket=bucket, Key=archived.manifest_key)["Body"].read())
    assert "removed" not in manifest, f"a pending mark landed after the failed removal: {manifest['removed']}"


def test_a_done_mark_the_store_wrote_but_answered_5xx_is_not_reported_missing(conn, schema, s3, bucket, s3_client,
                                                                             temp_dir):
    """A user removes an archived day (retention: delete). The removal commits; its "done" mark's PutObject is
    carried out by the store, which answers 500 each time (a gateway failing after the backend acted; botocore
    tries 3 times, the first attempt landed, the others find it there and are answered 500 as well). Now:
    RemovalNotRecorded "writing the 'done' mark ... failed ...; the manifest stays marked 'pending', so the day
    is never archived again" while the manifest in the store is marked done: a removal that is complete and
    recorded fails (the Dagster step / ``prune`` reports an error, alerting someone to settle a mark that is
    settled), and its message is false. The archive commit reads its manifest back after a failed write and
    counts it committed when it is there (``_Archiving._commit``: ``self._stored_manifest() == data``); the done
    mark is not read back. Expected: remove_day reads the manifest after the failed write and, finding its done
    mark there, returns the removal (rows 50), as it does when the write answers 200. Fix idea: in
    ``lifecycle._remove`` (and ``_settle``), on a failed ``_write_manifest`` compare
    ``store.get_verified_bytes(mkey)`` with the bytes written before raising ``RemovalNotRecorded``."""
    import json

    from archive_pipeline.core.lifecycle import remove_day

    spec = _table(conn, schema, big=False, retention={"keep_days": 1, "action": "delete"})
    plain = S3Store(s3_client, bucket, part_size=MIN_PART_SIZE)
    archived = archive_partition(conn, spec, DAY, plain, temp_dir=temp_dir)
    with FaultProxy(s3.endpoint_url) as proxy:
        # the pending mark goes through; every attempt of the done mark is carried out, then answered 500
        proxy.add(Fault(method="PUT", path=r"manifest\.json$", action="error", forward=True, skip=1, times=None))
        store = S3Store(proxy.client(max_attempts=3), bucket, part_size=MIN_PART_SIZE)
        removal = remove_day(conn, spec, DAY, store, temp_dir=temp_dir)
    assert removal.rows == 50
    manifest = json.loads(s3_client.get_object(Bucket=bucket, Key=archived.manifest_key)["Body"].read())
    assert manifest["removed"]["state"] == "done"
