"""Hunt 24 (br): S3 faults in the middle of an upload and its commit, through the fault proxy.

What held up (probed or read, no test here): a lost answer (reset after the store acted) at UploadPart, at
CompleteMultipartUpload (botocore's retry meets NoSuchUpload and the object is recognised as ours by its ETag, size
and writer mark), at the single PUT and at the manifest's conditional PUT (the 412 after a retry is checked against
the key), a 200 with an <Error> body at Complete, 5xx/SlowDown at the last part, and a reset on the upload's own
ListMultipartUploads (listed again when the upload ends) are all covered by earlier hunts and hold. The upload's
own abort (``S3Upload._abort_quietly``) takes NoSuchUpload as aborted; the tidying of a killed run's upload does not
(first test)."""

from __future__ import annotations

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.test_hunt4_uu import _small_table
from archive_pipeline_tests.test_integrity import D, _killed_child, _open_uploads, big, stored_keys  # noqa: F401


def test_a_killed_runs_upload_whose_abort_answer_was_lost_leaves_its_marker_after_a_green_run(
        pg, s3, conn, schema, big, bucket, s3_client, tmp_path):
    """Scenario: the first archive of a ~6 MB day (two 5 MiB parts) is killed (SIGKILL) right after its first part
    was stored: its multipart upload is open and announced by its marker ``<day>.jsonl.uploading``. The next run of
    the day (a client with botocore's usual retries) tidies it: the AbortMultipartUpload is carried out by the store,
    but the connection is reset before its answer; botocore sends it again and the store answers 404 NoSuchUpload
    (the upload no longer exists: it was just aborted).

    Now: the run is green, yet the killed run's marker stays in the bucket. ``leftovers._abort_stale_uploads`` ->
    ``S3Store.abort_stale_uploads_under`` calls ``client.abort_multipart_upload`` bare, so the retry's NoSuchUpload
    is raised, caught as "could not read ..., or list or abort its stale multipart uploads", and the marker is kept
    (not in ``_tidied``; ``marked_generations`` also pushes the new archive past it). The upload's own abort
    (``S3Upload._abort_quietly``) already treats NoSuchUpload as aborted; this second caller does not. A day is
    archived once, so no later run of it comes to remove the marker: a stray object stays for ever beside the
    archive (the README: what a killed run leaves is removed by the next run of the day).

    Should: an abort answered NoSuchUpload counts as done (the upload is gone either way), the marker is deleted,
    and the bucket holds exactly the object and its manifest. Fix idea: treat NoSuchUpload as success in
    ``abort_stale_uploads_under`` and ``settle_stale_uploads`` as ``_abort_quietly`` does."""
    spec = {"name": big.name, "day_column": "at", "start_date": "2024-03-01", "compression": "none"}
    temp = tmp_path / "child-tmp"
    temp.mkdir()
    _killed_child(pg, s3, bucket, spec, False, temp, ("after-call", "UploadPart", 1))
    assert _open_uploads(s3_client, bucket)  # the premise: the killed run's upload and its marker
    assert any(k.endswith(".uploading") for k in stored_keys(s3_client, bucket))
    with FaultProxy(s3.endpoint_url) as proxy:
        lost = proxy.add(Fault(method="DELETE", query="uploadId=", action="reset_after", times=1))
        store = S3Store(proxy.client(max_attempts=3), bucket, prefix="archive", part_size=MIN_PART_SIZE)
        result = archive_partition(conn, big, D, store)  # green
    assert lost.hits == 1 and result.rows == 30000
    assert _open_uploads(s3_client, bucket) == []  # the store did abort it
    assert stored_keys(s3_client, bucket) == sorted([result.key, result.manifest_key])


def test_a_conditional_request_conflict_on_the_first_manifest_is_blamed_on_another_run_and_not_tried_again(
        conn, schema, s3, bucket, s3_client, temp_dir):
    """Scenario: the first archive of a small day (one PUT). Its manifest's PUT (If-None-Match: *) is answered
    409 ConditionalRequestConflict, which AWS documents as "a conflicting conditional operation is currently in
    progress against this resource; try again" (a transient answer: nothing is at the key). The same client retries
    as deployed clients do (botocore does not retry a 409).

    Now: ``S3Store.put_bytes`` counts the 409 as ``_is_taken`` (``_TAKEN_CODES``), finds nothing at the key (HEAD
    404) and raises KeyTakenError "…manifest.json was written by another run meanwhile", cause "another run wrote
    the same key", remedy "archive each table from one database, and one server, only"; ``_put_manifest`` never
    tries a KeyTakenError again (its MANIFEST_PUT_ATTEMPTS loop breaks out on it), so the commit is given up, the
    data object withdrawn, and the run fails. No other run exists and nothing was written at the key: the user is
    sent hunting for a second server that is not there, and a run that one more PUT would have committed fails.

    Should: a 409 ConditionalRequestConflict with nothing (or our own bytes) at the key is a transient conflict:
    the manifest PUT is tried again (``_put_manifest``'s loop) and the run commits; if it still fails, the error
    says the store reported a conflicting write in progress, retryable, without asserting another run wrote the
    key. Fix idea: in ``put_bytes``/``_refuse_taken``, raise KeyTakenError only when the HEAD shows an object that
    is not ours; a conflict with the key still empty is a retryable UploadError that ``_put_manifest`` retries."""
    spec = _small_table(conn, schema)
    with FaultProxy(s3.endpoint_url) as proxy:
        conflict = proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action="error", status=409,
                                   code="ConditionalRequestConflict", times=1))
        store = S3Store(proxy.client(max_attempts=3), bucket, part_size=MIN_PART_SIZE)
        try:
            result = archive_partition(conn, spec, D, store, temp_dir=temp_dir)
        except Exception as exc:  # noqa: BLE001 - asserted on below
            result = exc
    assert conflict.hits == 1
    assert not isinstance(result, Exception) or "another run" not in str(result), (
        f"{type(result).__name__}: {result}; left in the bucket: {stored_keys(s3_client, bucket)}")
    if not isinstance(result, Exception):
        assert stored_keys(s3_client, bucket) == sorted([result.key, result.manifest_key])
