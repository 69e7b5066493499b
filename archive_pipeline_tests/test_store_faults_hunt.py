"""Fault hunt 3: faults injected at every S3 request and PostgreSQL session, then the outcome checked."""

from __future__ import annotations

import datetime as dt
import hashlib
import urllib.request

import pytest
from psycopg import sql

from archive_pipeline.core.archive import LateRowsError, archive_partition
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.manifest import decode_manifest
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.helpers import decompress, download, read_jsonl

D = dt.date(2024, 3, 10)


from archive_pipeline_tests.test_integrity import stored_keys, table  # noqa: E402,F401 - the same 200-row day


def open_uploads(s3_client, bucket) -> list[str]:
    return [u["Key"] for u in s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def archived_rows(s3_client, bucket, manifest_key) -> list[dict]:
    manifest = decode_manifest(download(s3_client, bucket, manifest_key))
    body = download(s3_client, bucket, manifest["object"]["key"])
    assert hashlib.md5(body).hexdigest() == manifest["object"]["md5"]
    return read_jsonl(decompress(body, manifest["compression"]))


def listing_xml(s3, bucket, key) -> bytes:
    prefix = key.rsplit("/", 1)[0] + "/" + key.rsplit("/", 1)[1].split(".")[0]
    return urllib.request.urlopen(f"{s3.endpoint_url}/{bucket}?list-type=2&prefix={prefix}").read()



def _archive_changed_day_through(s3, bucket: str, conn, table, fault: Fault) -> FaultProxy:
    """Archive day D (changed since its archive) through a proxy with ``fault``, one attempt per request:
    it may be refused as changed (LateRowsError) or fail retryable, nothing else. Returns the (stopped)
    proxy, whose records stay readable."""
    with FaultProxy(s3.endpoint_url) as proxy:
        flaky = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive")
        proxy.add(fault)
        try:
            archive_partition(conn, table, D, flaky)
        except LateRowsError:
            pass
        except ArchiveError as exc:
            assert exc.retryable, exc
    return proxy

@pytest.mark.parametrize("field", ["ETag", "Size"])
def test_a_flipped_byte_in_the_listing_of_the_data_object_does_not_replace_a_changed_day(
        s3, conn, schema, table, store, s3_client, bucket, field):
    """One byte flipped in transit in the LIST answer (the data object's ETag or Size) makes the
    stored archive look damaged: the run then archives the changed day again without overwrite and
    deletes the previous (good) object, instead of refusing the changed day (or retrying)."""
    first = archive_partition(conn, table, D, store)
    before = stored_keys(s3_client, bucket)
    conn.execute(sql.SQL("UPDATE {} SET body = 'late edit' WHERE id = 1").format(sql.Identifier(schema, "t")))
    listing = listing_xml(s3, bucket, first.key)
    data_entry = listing.index(first.key.encode() + b"</Key>")
    at = listing.index(f"<{field}>".encode(), data_entry) + len(f"<{field}>") + (2 if field == "ETag" else 0)
    proxy = _archive_changed_day_through(s3, bucket, conn, table,
                                         Fault(method="GET", query="list-type=2", action="flip_response_byte", offset=at))
    assert proxy.requests("GET", query="list-type=2")[0].fault == "flip_response_byte"
    # the previous archive is untouched and the changed day was not archived without overwrite
    assert stored_keys(s3_client, bucket) == before
    assert decode_manifest(download(s3_client, bucket, first.manifest_key))["fingerprint"] == first.fingerprint


@pytest.mark.parametrize("action", ["reset_after", "error"])
def test_an_overwrite_whose_manifest_answers_are_lost_keeps_a_whole_manifest(
        s3, conn, schema, table, store, s3_client, bucket, action):
    """Every manifest PUT lands in the store but its answer is lost (reset or 500 after the store
    acted). The manifest key is never emptied: either the run finds its manifest in the store (the
    commit happened) or it fails retryable with the previous manifest in place; either way the
    manifest names a whole object holding exactly the day's rows. (Before: put_bytes withdrew, i.e.
    deleted, what it wrote after an ambiguous failure, the put-back of the previous manifest too.)"""
    first = archive_partition(conn, table, D, store)
    previous = download(s3_client, bucket, first.manifest_key)
    conn.execute(sql.SQL("UPDATE {} SET body = 'late edit' WHERE id = 1").format(sql.Identifier(schema, "t")))
    with FaultProxy(s3.endpoint_url) as proxy:
        flaky = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive")
        proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action=action, forward=True, times=None))
        try:
            archive_partition(conn, table, D, flaky, overwrite=True)
        except ArchiveError as exc:
            assert exc.retryable
            assert download(s3_client, bucket, first.manifest_key) == previous
    rows = archived_rows(s3_client, bucket, first.manifest_key)  # whole: its object is there, MD5 and all
    bodies = {r["id"]: r["body"] for r in rows}
    assert len(rows) == 200 and bodies[1] in ("late edit", hashlib.md5(b"1").hexdigest())


def test_a_manifest_get_answered_200_with_an_error_body_does_not_replace_a_changed_day(
        s3, conn, schema, table, store, s3_client, bucket):
    """The manifest's GET answers 200 with an S3 <Error> document (botocore does not check streaming
    bodies for that; there is no ETag to compare). The error document is taken for an unreadable
    manifest, so the changed day is archived again without overwrite (g2) and the next run deletes
    the previous good object, instead of a retryable failure or the "changed since archived" refusal."""
    first = archive_partition(conn, table, D, store)
    conn.execute(sql.SQL("UPDATE {} SET body = 'late edit' WHERE id = 1").format(sql.Identifier(schema, "t")))
    _archive_changed_day_through(s3, bucket, conn, table,
                                 Fault(method="GET", path=r"\.manifest\.json$", action="error_200", times=1))
    assert stored_keys(s3_client, bucket) == sorted([first.key, first.manifest_key])
    with pytest.raises(LateRowsError):  # without the fault: refused, the previous archive kept
        archive_partition(conn, table, D, store)
    assert first.key in stored_keys(s3_client, bucket)


@pytest.mark.parametrize("forward", [False, True])
def test_a_head_answered_200_without_its_headers_is_retryable_and_withdraws_the_object(
        s3, conn, table, s3_client, bucket, temp_dir, forward):
    """The HEAD that checks the stored size after the PUT answers 200 without Content-Length (a
    gateway's error page): the run fails with an 'unexpected error (KeyError)', not retried, and
    leaves the complete data object without a manifest (S3Upload._checked reads head['ContentLength']
    outside its try). (A store whose ETags are not MD5s: a single PUT whose ETag is our MD5 is not read back.)"""
    with FaultProxy(s3.endpoint_url) as proxy:
        flaky = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", verify_etags=False)
        proxy.add(Fault(method="HEAD", action="error_200", forward=forward, times=None))
        with pytest.raises(ArchiveError) as caught:
            archive_partition(conn, table, D, flaky, temp_dir=str(temp_dir))
    assert caught.value.retryable, str(caught.value)
    assert "KeyError" not in str(caught.value)
    assert stored_keys(s3_client, bucket) == []
    assert open_uploads(s3_client, bucket) == []
    assert list(temp_dir.iterdir()) == []


def test_a_manifest_read_that_keeps_coming_back_corrupted_names_table_day_and_remedy(
        s3, conn, table, store, bucket):
    """Every message ends with '; to fix: …' and names table and day (README, Retries and errors).
    A manifest GET whose body fails botocore's checksum every time raises a DownloadError whose text
    has neither a remedy nor a cause (the key merely contains the table and the day)."""
    archive_partition(conn, table, D, store)
    with FaultProxy(s3.endpoint_url) as proxy:
        flaky = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive")
        proxy.add(Fault(method="GET", path=r"\.manifest\.json$", action="flip_response_byte", times=None))
        with pytest.raises(ArchiveError) as caught:
            archive_partition(conn, table, D, flaky)
    assert caught.value.retryable
    assert "; to fix: " in str(caught.value), str(caught.value)
    assert caught.value.cause, str(caught.value)


def test_a_manifest_put_that_lands_after_the_client_gave_up_never_names_a_deleted_object(
        s3, conn, table, s3_client, bucket, temp_dir):
    """The store is slow: every manifest PUT is carried out after the client's read timeout. Before,
    the run failed (retryable) and withdrew its data object, and the manifest landed afterwards: the
    day then had a manifest naming an object that does not exist. While the manifest's fate is
    unknown, the object it names must stay."""
    with FaultProxy(s3.endpoint_url) as proxy:
        # read timeout 3 s: every other request (no retries) answers within it on a loaded machine too
        flaky = S3Store(proxy.client(max_attempts=1, read_timeout=3), bucket, prefix="archive")
        late = proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action="delay", delay=6, times=3))
        try:  # committed (our manifest found in the store afterwards), or failed retryable
            archive_partition(conn, table, D, flaky, temp_dir=str(temp_dir))
        except ArchiveError as exc:
            assert exc.retryable
        import time
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(
                r.status is None for r in proxy.requests("PUT", path=r"\.manifest\.json$")):
            time.sleep(0.1)
        assert late.hits == 3
    keys_now = stored_keys(s3_client, bucket)
    manifests = [k for k in keys_now if k.endswith(".manifest.json")]
    for key in manifests:  # a manifest that landed late must name an object that is there, whole
        manifest = decode_manifest(download(s3_client, bucket, key))
        assert manifest["object"]["key"] in keys_now, (keys_now, manifest["object"]["key"])


def test_an_overwrite_never_leaves_the_day_without_a_manifest_after_one_lost_answer(
        s3, conn, schema, table, store, s3_client, bucket):
    """One manifest PUT of an overwrite lands but its answer is lost (500 after the store acted).
    put_bytes then withdraws 'its' object, i.e. deletes the manifest key, which held the previous
    manifest until a moment ago: until the next attempt lands, the day has no manifest at all (a
    SIGKILL or a second failure there loses the previous archive's commit). At every moment the
    manifest key must name a whole object (README: 'Re-archiving never destroys the last good archive')."""
    import threading

    first = archive_partition(conn, table, D, store)
    conn.execute(sql.SQL("UPDATE {} SET body = 'late edit' WHERE id = 1").format(sql.Identifier(schema, "t")))
    with FaultProxy(s3.endpoint_url) as proxy:
        flaky = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive")
        proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action="error", forward=True, times=1))
        held = proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action="hold", times=1, hold_timeout=60))
        outcome: dict = {}

        def run() -> None:
            try:
                outcome["result"] = archive_partition(conn, table, D, flaky, overwrite=True)
            except BaseException as exc:  # noqa: BLE001
                outcome["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        try:
            assert proxy.wait_held(1, timeout=60), outcome
            keys_now = stored_keys(s3_client, bucket)  # the second attempt is held: what does the day look like?
        finally:
            held.gate.set()
            thread.join(60)
    assert "error" not in outcome, outcome.get("error")
    assert first.manifest_key in keys_now, keys_now
    named = decode_manifest(download(s3_client, bucket, first.manifest_key))["object"]["key"]
    assert named in stored_keys(s3_client, bucket)
