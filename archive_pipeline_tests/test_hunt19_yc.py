"""Hunt 19 (yc): the S3 request fails or its response is corrupted on the WRITE side (the archive's upload and its
marker, the manifest PUT, an overwrite, a removal's marks, equal parts, parallel streams), injected through the fault
proxy between the archiver's own S3 client and moto. Each test asserts what the README promises and fails on the
current code because of a product bug.

The archiver builds its client with botocore's default checksum settings (core/environment.py ``Config(...)`` for the
command line, the Dagster resource alike): ``request_checksum_calculation=when_supported``, so every PutObject also
carries ``x-amz-checksum-crc32`` of the bytes the client sent, and ``response_checksum_validation=when_supported``, so
a GET of an object stored with such a checksum is checked against it. A store that keeps a body damaged on the way
(what these tests' fault model is: moto verifies neither Content-MD5 nor the CRC32, and answers with the damaged
copy's MD5 as its ETag) then keeps the client's CRC32 beside the damaged bytes: every later GET of that copy fails
botocore's check (FlexibleChecksumError), which ``S3Store.get_verified_bytes`` reads as "came back corrupted",
retryable. The write paths below take such an unreadable copy of their own damaged manifest for "not ours" and leave
it in place."""

from __future__ import annotations

import datetime as dt

import pytest

from archive_pipeline.core import keys
from archive_pipeline.core.archive import MANIFEST_PUT_ATTEMPTS, archive_partition
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.test_lifecycle import events, spec_for, table_exists  # noqa: F401 - two days of 300 rows

DAY = dt.date(2024, 3, 10)
MANIFEST = r"/2024-03-10\.jsonl\.zst\.manifest\.json$"


def _archivers_store(proxy: FaultProxy, bucket: str) -> S3Store:
    """The store as the command line and the Dagster resource build it: botocore's default checksum settings."""
    client = proxy.client(max_attempts=3, request_checksum_calculation="when_supported",
                          response_checksum_validation="when_supported")
    return S3Store(client, bucket, prefix="archive", part_size=MIN_PART_SIZE)


def _manifest_reads(store: S3Store, key: str) -> bytes | None:
    """The day's manifest as every later run reads it (raises what they raise)."""
    return store.get_verified_bytes(keys.manifest_key(key))


def test_a_first_manifest_damaged_on_every_put_leaves_an_unreadable_manifest_that_blocks_the_day_for_ever(
        conn, events, s3, bucket, store, temp_dir):
    """Scenario: the first archive of a day; the network path flips one byte of every copy of the day's manifest
    PUT (3 copies per put_bytes x MANIFEST_PUT_ATTEMPTS), with the archiver's own client (CRC32 sent beside the
    Content-MD5). The run fails, retryable ("arrived corrupted"). Then the network is healthy again and the day is
    archived once more (Dagster's retry, or the operator running the command line again).

    Now: ``_Archiving._undo_commit`` reads the key back to decide: ``_stored_manifest`` swallows the read's
    DownloadError (the damaged copy fails botocore's CRC32 check, FlexibleChecksumError, every time) and says None,
    "unreadable: not ours"; the damaged copy is deleted only in the ``except ManifestError`` branch (a copy read
    and found not to decode), so it stays, while the data object is withdrawn. The run knew that copy was its own:
    every PUT was answered, and ``CorruptedWrite.etag`` is the damaged copy's ETag as the store holds it. Every
    later run of the day then fails in ``read_existing`` ("came back corrupted or as an error 3 times ...;
    retryable"), for ever: Dagster retries until it gives up, ``list`` shows the day "not checked (retryable)",
    and nothing a user can do short of deleting the key by hand archives the day (the message says it is transient).

    Should: a failed first archive leaves nothing under the day's keys (the README: nothing is half written) and the
    re-run archives the day. Fix idea: in ``_undo_commit`` (and ``_put_back``), when the stored manifest cannot be
    read, compare its HEAD ETag with the damaged copy's ETag the CorruptedWrite carries (``exc.etag``; or the MD5
    ETags the store answered to our PUTs) and delete / replace it as ours; or read the copy back with
    response_checksum_validation off for that decision."""
    spec = spec_for(events)
    key = keys.table_day_key(spec, DAY, "archive")
    with FaultProxy(s3.endpoint_url) as proxy:
        faulty = _archivers_store(proxy, bucket)
        copies = MANIFEST_PUT_ATTEMPTS * faulty.corrupt_attempts
        fault = proxy.add(Fault(method="PUT", path=MANIFEST, action="flip_request_byte", times=copies))
        with pytest.raises(ArchiveError) as caught:
            archive_partition(conn, spec, DAY, faulty, temp_dir=str(temp_dir))
        assert fault.hits == copies
    assert caught.value.retryable
    # the network is healthy again: the retry must find the day as if never archived, and archive it
    try:
        again = archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    except ArchiveError as exc:
        pytest.fail(f"the day can no longer be archived after one failed run whose every request was answered: {exc}")
    assert again.rows == 300
    assert _manifest_reads(store, key) is not None


def test_an_overwrite_whose_manifest_is_damaged_on_every_put_destroys_the_days_only_readable_manifest(
        conn, events, s3, bucket, store, temp_dir):
    """Scenario: a day archived (300 rows) and proven readable; a row of it changes and the day is archived again with
    ``overwrite`` (the README's re-archive). Every copy of the new manifest's PUT gets one byte flipped on the way,
    with the archiver's own client (CRC32 beside the Content-MD5). The run fails retryable.

    Now: each damaged copy replaces the previous manifest (If-Match its ETag, then of the damaged copy). In
    ``_undo_commit`` → ``_put_back`` the stored manifest is read back to decide whether to restore the previous one:
    ``_stored_manifest`` returns None for the copy that fails botocore's CRC32 check, so ``_put_back`` writes the
    previous manifest with ``fresh=True`` (If-None-Match: *), which the store refuses (412: the damaged copy is
    there) and ``holds`` does not recognise: a KeyTakenError swallowed as a note. The day's manifest stays the
    damaged copy: the proven archive of 300 rows, whose object is still in the bucket, is named by no readable
    manifest any more; restore, verify, list and every later archive run fail on it ("came back corrupted ...;
    retryable") for ever, and the source's changed row cannot be archived either.

    Should: the README's commit protocol: until the manifest is written the previous pair is untouched, and a
    failed write puts the previous manifest back ("the previous manifest is put back if the failed write replaced
    it"). Fix idea: in ``_put_back``, a stored copy that cannot be read but whose HEAD ETag is one the run's own
    damaged PUTs got (``CorruptedWrite.etag``) is replaced If-Match that ETag; never write fresh over a key the
    store says holds something."""
    spec = spec_for(events, overwrite=True)
    key = keys.table_day_key(spec, DAY, "archive")
    first = archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    previous = _manifest_reads(store, key)
    conn.execute(f'UPDATE "{events}".events SET event_type = event_type || \'!\' WHERE id = '
                 f'(SELECT min(id) FROM "{events}".events WHERE created_at < %s)', (DAY + dt.timedelta(days=1),))
    with FaultProxy(s3.endpoint_url) as proxy:
        faulty = _archivers_store(proxy, bucket)
        copies = MANIFEST_PUT_ATTEMPTS * faulty.corrupt_attempts
        fault = proxy.add(Fault(method="PUT", path=MANIFEST, action="flip_request_byte", times=copies))
        with pytest.raises(ArchiveError) as caught:
            archive_partition(conn, spec, DAY, faulty, temp_dir=str(temp_dir))
        assert fault.hits == copies
    assert caught.value.retryable
    try:
        now = _manifest_reads(store, key)
    except ArchiveError as exc:
        pytest.fail(f"the failed overwrite left the day's manifest unreadable (the previous one, naming "
                    f"{first.key}, is gone): {exc}; notes: {getattr(caught.value, '__notes__', [])}")
    assert now == previous


def test_a_pending_removal_mark_damaged_on_every_put_replaces_the_proven_manifest_with_an_unreadable_one(
        conn, events, s3, bucket, store, temp_dir):
    """Scenario: a day archived and proven; its removal (retention action drop) starts, and every copy of the pending
    mark's PUT (the manifest rewritten with ``removed: pending``, If-Match the proven manifest's ETag) gets one byte
    flipped on the way, with the archiver's own client (CRC32 beside the Content-MD5). put_bytes tries 3 copies and
    raises a retryable CorruptedWrite; nothing is removed from the source (right).

    Now: lifecycle ``_remove``'s handler calls ``_take_back``, which reads the key first
    (``store.get_verified_bytes``): the damaged copy fails botocore's CRC32 check every time, the DownloadError is
    caught and only noted ("could not take back the pending removal mark ... the next removal of the day takes it
    back"). The proven manifest is gone, replaced by the damaged copy: the day's archive, whose object is whole in
    the bucket, is named by no readable manifest; the next removal (and every archive run, restore, verify, list)
    fails reading it, for ever, so the note's promise does not hold either.

    Should: a removal that removed nothing leaves the proven manifest as it was (the README: "a pending mark that
    never arrives refuses the removal, retryable, before anything is removed"; _take_back's docstring: "put the
    proven manifest back over our pending mark"). Fix idea: the CorruptedWrite carries the damaged copy's ETag
    (``exc.etag``): put the original back If-Match that ETag without needing to read the copy; or read it with
    response checksum validation off for this decision."""
    spec = spec_for(events, "drop")
    key = keys.table_day_key(spec, DAY, "archive")
    archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    proven = _manifest_reads(store, key)
    with FaultProxy(s3.endpoint_url) as proxy:
        faulty = _archivers_store(proxy, bucket)
        fault = proxy.add(Fault(method="PUT", path=MANIFEST, action="flip_request_byte",
                                times=faulty.corrupt_attempts))
        with pytest.raises(ArchiveError) as caught:
            remove_day(conn, spec, DAY, faulty, removed_by="hunt19", temp_dir=str(temp_dir))
        assert fault.hits == faulty.corrupt_attempts
    assert caught.value.retryable
    assert table_exists(conn, events, "events_20240310")  # nothing was removed: right
    try:
        now = _manifest_reads(store, key)
    except ArchiveError as exc:
        pytest.fail(f"the refused removal left the day's manifest unreadable (the proven one is gone): {exc}; "
                    f"notes: {getattr(caught.value, '__notes__', [])}")
    assert now is not None and now.rstrip() == proven.rstrip()
