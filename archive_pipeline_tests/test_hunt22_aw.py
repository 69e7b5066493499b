"""Hunt 22 (aw): the S3 store's write path, second look (core/store.py: S3Upload's single PUT and multipart
publish, conditional writes, put_bytes and its retries, the upload marker, leftovers)."""

from __future__ import annotations

import hashlib
import os

from archive_pipeline.core.store import S3Store
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy


def _small_file(temp_dir, body: bytes) -> tuple[int, str]:
    path = temp_dir / "day.csv"
    path.write_bytes(body)
    return os.open(path, os.O_RDONLY), hashlib.md5(body).hexdigest()


def test_a_fresh_single_put_whose_first_answer_was_lost_fails_with_an_unbound_local_and_leaves_its_object(
        s3, bucket, temp_dir):
    """Scenario: a small object is written through the store's own API, as its docstring shows
    (``store.begin(key, ..., fresh=True)`` with the default ``stale_uploads=True``, then ``finish``). The first
    PutObject lands but its answer is lost (a 500 after the store acted); botocore retries it, and the retry meets
    412 (If-None-Match: our own copy is there).

    Now: S3Upload._put_single takes the 412 for its own earlier try (store.holds: same ETag, size and writer mark)
    and ``break``s out of the loop before ``response`` was ever assigned; the stale-upload cleanup after the loop
    then evaluates ``_server_time(response)`` and raises UnboundLocalError (outside abort_stale_uploads_quietly's
    guard). finish() aborts (nothing to abort on the single-PUT path) and the UnboundLocalError escapes: no
    ArchiveError (no table, day, cause, classification), and the object it just published stays at the key,
    named by nothing.

    Should: the object found whole after a lost answer is ours and the write succeeds (as it does with
    stale_uploads=False), or at worst a classified error with the object withdrawn. Fix idea: take the server
    time from the HEAD that holds() made (or our clock) when the loop ended without a response."""
    with FaultProxy(s3.endpoint_url) as proxy:
        client = proxy.client(max_attempts=3)
        store = S3Store(client, bucket, prefix="archive")
        key = "archive/t/2024-03-10.csv"
        body = b"id,at\n1,2024-03-10\n"
        proxy.add(Fault(method="PUT", path=r"2024-03-10\.csv$", action="error", status=500, forward=True, times=1))
        fd, md5 = _small_file(temp_dir, body)
        try:
            upload = store.begin(key, content_type="text/csv", metadata={"table": "t", "day": "2024-03-10"},
                                 fresh=True)
            try:
                stored = upload.finish(fd, len(body), md5)
            except UnboundLocalError as exc:  # the bug: surfaces as a programming error
                raise AssertionError(f"finish() raised {exc!r}; object left: "
                                     f"{proxy.client().list_objects_v2(Bucket=bucket).get('KeyCount')}") from exc
        finally:
            os.close(fd)
        assert stored.key == key and stored.size == len(body)


def test_a_single_put_answered_with_a_minus_0000_date_still_aborts_a_killed_runs_upload(s3, bucket, temp_dir):
    """Scenario: a killed run left a multipart upload of the key; a fresh single PUT of the key then succeeds, and
    the store dates its answer ``-0000`` (RFC 5322's UTC with no local zone known).

    Was: _server_time returned the naive datetime ``parsedate_to_datetime`` gives for ``-0000``; comparing it with
    the listing's timezone-aware ``Initiated`` raised TypeError inside abort_stale_uploads_quietly, which logged it
    as a failed cleanup: the leftover upload stayed (its parts billed) with nothing saying why.

    Should: a naive server time is read as UTC, and the killed run's upload is aborted."""
    import datetime as dt
    import email.utils

    key = "archive/t/2024-03-11.csv"
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)).replace(tzinfo=None)
    date = email.utils.format_datetime(later)
    assert date.endswith("-0000")
    with FaultProxy(s3.endpoint_url) as proxy:
        client = proxy.client()
        client.create_multipart_upload(Bucket=bucket, Key=key)  # the killed run's
        store = S3Store(client, bucket, prefix="archive")
        proxy.add(Fault(method="PUT", path=r"2024-03-11\.csv$", action="set_header", header=("Date", date)))
        body = b"id,at\n1,2024-03-11\n"
        fd, md5 = _small_file(temp_dir, body)
        try:
            upload = store.begin(key, content_type="text/csv", metadata={"table": "t", "day": "2024-03-11"},
                                 fresh=True)
            assert upload.finish(fd, len(body), md5).size == len(body)
        finally:
            os.close(fd)
        assert client.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", []) == []
