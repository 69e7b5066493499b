"""S3 fault hunt: answers that are not what they seem (a HEAD without its headers, a 404 for an object
that is there, a body cut short or reset mid-way, an answer without its ETag) on every operation, each
checked for the retry decision, a message naming table, day, cause and remedy, and nothing left behind."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core import keys
from archive_pipeline.core.archive import MANIFEST_PUT_ATTEMPTS, archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.lifecycle import RemovalRefused, remove_day
from archive_pipeline.core.restore import ArchiveMissingError, RestoreError, restore_day
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline.core.verify import deep_verify
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.helpers import assert_nothing_left
from archive_pipeline_tests.test_lifecycle import events, spec_for  # noqa: F401 - two days of 300 rows
from archive_pipeline_tests.test_readpath_faults_hunt import _exists

DAY = dt.date(2024, 3, 10)
OBJECT = r"/2024-03-10(\.g\d+)?\.jsonl(\.zst)?$"
MANIFEST = r"/2024-03-10\.jsonl(\.zst)?\.manifest\.json$"


def _store(client, bucket: str) -> S3Store:
    return S3Store(client, bucket, prefix="archive", part_size=MIN_PART_SIZE)


def _names_day_cause_and_remedy(error: ArchiveError, table: str) -> None:
    text = str(error)
    assert table in text and "2024-03-10" in text and error.cause and "; to fix: " in text, text
    assert "KeyError" not in text and "testing" not in text  # no crash, no secret (the test credentials)


# --- a HEAD answered 200 without the object's headers ------------------------------------------------

def _archived(conn, events, store):
    spec = spec_for(events)
    archive_partition(conn, spec, DAY, store)
    return spec


def test_verification_whose_head_answers_200_without_headers_is_retryable_and_no_verdict(s3, conn, events, store,
                                                                                         bucket):
    """A gateway answers the object's HEAD with 200 and an error page (no Content-Length, no ETag), every
    time. Before: stored_object_problems read head['ContentLength'] and a KeyError came out of
    verify_archive: `archive-pipeline verify` died with a traceback (its per-day handling catches
    ArchiveError), the Dagster check said "KeyError: 'ContentLength'", the settling of a removal the same.
    Now a retryable DownloadError that proves nothing either way."""
    from archive_pipeline.core.verify import verify_archive

    spec = _archived(conn, events, store)
    key = keys.table_day_key(spec, DAY, store.prefix)
    with FaultProxy(s3.endpoint_url) as proxy:
        fault = proxy.add(Fault(method="HEAD", path=OBJECT, action="error_200", times=None))
        with pytest.raises(ArchiveError) as caught:
            problems = verify_archive(_store(proxy.client(max_attempts=1), bucket), key, {})
            pytest.fail(f"a HEAD without its headers was taken for a verdict: {problems}")
        assert fault.hits >= 1
    assert caught.value.retryable
    _names_day_cause_and_remedy(caught.value, spec.name)
    assert verify_archive(store, key, {}) == []


# --- a 404 for an object that exists (a store only eventually consistent, a caching gateway) ---------


def test_deep_verification_whose_object_get_answers_404_for_an_object_there_is_no_verdict(
        s3, conn, events, store, bucket):
    """The object's GET answers 404 once although the object is there (its HEAD finds it). Before: the
    proof returned "object ... is missing", a failed proof of an intact archive (the asset check fails,
    the removal is refused for good) instead of a retryable 'nothing proven'."""
    spec = _archived(conn, events, store)
    with FaultProxy(s3.endpoint_url) as proxy:
        fault = proxy.add(Fault(method="GET", path=OBJECT, action="error", status=404, code="NoSuchKey", times=1))
        faulty = _store(proxy.client(max_attempts=1), bucket)
        with pytest.raises(ArchiveError) as caught:
            problems = deep_verify(conn, faulty, spec, DAY)
            pytest.fail(f"one 404 of an object that is there was taken for a verdict: {problems}")
        assert fault.hits == 1
    assert caught.value.retryable and "is missing" not in str(caught.value)
    _names_day_cause_and_remedy(caught.value, spec.name)
    assert deep_verify(conn, store, spec, DAY) == []


def test_restore_whose_object_get_answers_404_for_an_object_there_is_retryable(
        s3, conn, events, store, bucket, temp_dir):
    """Restore meets the same 404: before, ArchiveMissingError "does not exist although its manifest
    does; restore from a replica or backup of the bucket", not retryable. An object really gone still is
    ArchiveMissingError."""
    spec = _archived(conn, events, store)
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="GET", path=OBJECT, action="error", status=404, code="NoSuchKey", times=1))
        with pytest.raises(RestoreError) as caught:
            restore_day(conn, _store(proxy.client(max_attempts=1), bucket), spec, DAY, into="new",
                        target=f"{events}.back", temp_dir=temp_dir)
    assert not isinstance(caught.value, ArchiveMissingError) and caught.value.retryable, str(caught.value)
    _names_day_cause_and_remedy(caught.value, spec.name)
    assert list(temp_dir.iterdir()) == [] and not _exists(conn, f"{events}.back")
    store.delete(keys.generation_key(keys.table_day_key(spec, DAY, store.prefix), 1))
    with pytest.raises(ArchiveMissingError):
        restore_day(conn, store, spec, DAY, into="new", target=f"{events}.back", temp_dir=temp_dir)



def test_verification_whose_head_answers_404_once_for_an_object_there_finds_it_intact(s3, conn, events, store,
                                                                                       bucket):
    """The object's HEAD answers 404 once although the object is there. Before: verify_archive (the CLI's
    verify, the Dagster archive_intact check, the proof of a removed day, the settling of a removal) said
    "object ... is missing" at once, where a HEAD that gives another size or ETag is asked again."""
    from archive_pipeline.core.verify import verify_archive

    spec = _archived(conn, events, store)
    with FaultProxy(s3.endpoint_url) as proxy:
        fault = proxy.add(Fault(method="HEAD", path=OBJECT, action="error", status=404, code="NotFound", times=1))
        assert verify_archive(_store(proxy.client(max_attempts=1), bucket),
                              keys.table_day_key(spec, DAY, store.prefix), {}) == []
        assert fault.hits == 1

@pytest.mark.parametrize("step", ["restore", "prove", "remove"])
def test_a_manifest_get_answering_404_for_a_manifest_there_is_retryable_not_no_archive(
        s3, conn, events, store, bucket, temp_dir, step):
    """The manifest's GET answers 404 once although the manifest is there (its HEAD finds it). Before:
    restore said "has no archive" (not retryable), the proof returned "has no archive" (a failed check),
    the removal refused the day "archive it first" (not retryable): verdicts on an archive that is there."""
    spec = _archived(conn, events, store)
    with FaultProxy(s3.endpoint_url) as proxy:
        fault = proxy.add(Fault(method="GET", path=MANIFEST, action="error", status=404, code="NoSuchKey", times=1))
        faulty = _store(proxy.client(max_attempts=1), bucket)
        with pytest.raises(ArchiveError) as caught:
            if step == "restore":
                restore_day(conn, faulty, spec, DAY, into="new", target=f"{events}.back", temp_dir=temp_dir)
            elif step == "prove":
                pytest.fail(f"one 404 of a manifest that is there was taken for a verdict: "
                            f"{deep_verify(conn, faulty, spec, DAY)}")
            else:
                remove_day(conn, spec, DAY, faulty, removed_by="test")
        assert fault.hits == 1
    assert caught.value.retryable and not isinstance(caught.value, RemovalRefused), str(caught.value)
    assert "no archive" not in str(caught.value)
    _names_day_cause_and_remedy(caught.value, spec.name)
    assert _exists(conn, f"{events}.events_20240310") and not _exists(conn, f"{events}.back")
    assert list(temp_dir.iterdir()) == []


def test_an_overwrite_whose_last_manifest_read_fails_leaves_no_new_object(s3, conn, events, store, s3_client, bucket,
                                                                         temp_dir):
    """An overwrite reads the manifest once more just before it replaces it (a removal on the primary may
    have marked it); that read fails (503 every attempt). Before: the run failed retryable but left its
    new generation's complete object in the bucket, named by no manifest, until a later run tidied it, and
    its error had no cause or remedy of its own (only the read's text in parentheses)."""
    from archive_pipeline_tests.test_integrity import stored_keys

    spec = _archived(conn, events, store)
    before = stored_keys(s3_client, bucket)
    with FaultProxy(s3.endpoint_url) as proxy:
        fault = proxy.add(Fault(method="GET", path=MANIFEST, action="slow_down", skip=1, times=None))
        with pytest.raises(ArchiveError) as caught:
            archive_partition(conn, spec, DAY, _store(proxy.client(max_attempts=1), bucket), overwrite=True,
                              temp_dir=str(temp_dir))
        assert fault.hits >= 1
    assert caught.value.retryable
    _names_day_cause_and_remedy(caught.value, spec.name)
    assert stored_keys(s3_client, bucket) == before
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert list(temp_dir.iterdir()) == []


@pytest.mark.parametrize(("step", "head"), [
    ("prove", Fault(path=OBJECT, action="error_200", times=None)),
    ("restore", Fault(method="HEAD", path=OBJECT, action="slow_down", times=None)),
], ids=["prove-where-a-gateway-answers-everything-with-an-error-page", "restore-where-the-head-fails-too"])
def test_an_object_get_answered_with_an_error_page_whose_head_cannot_be_had_is_not_a_damaged_archive(
        s3, conn, events, store, bucket, temp_dir, head, step):
    """The object's GET is answered 200 with an error page (a few hundred bytes), and so is its HEAD (a
    gateway that answers everything so), or the HEAD fails. Before: with no HEAD to confirm the stored
    size, the GET's Content-Length was taken for it: "is damaged: the store holds 182 bytes ... restore it
    from a replica" (a failed proof; ArchiveCorruptError, not retryable) for an intact archive."""
    spec = _archived(conn, events, store)
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="GET", path=OBJECT, action="error_200", times=None))
        proxy.add(head)
        faulty = _store(proxy.client(max_attempts=1), bucket)
        with pytest.raises(ArchiveError) as caught:
            if step == "prove":
                pytest.fail(f"an error page was taken for a verdict: {deep_verify(conn, faulty, spec, DAY)}")
            restore_day(conn, faulty, spec, DAY, into="new", target=f"{events}.back", temp_dir=temp_dir)
    assert caught.value.retryable and "damaged" not in str(caught.value), str(caught.value)
    _names_day_cause_and_remedy(caught.value, spec.name)
    assert list(temp_dir.iterdir()) == [] and not _exists(conn, f"{events}.back")

# --- write-side checks: the message says cause and remedy ----------------------------------------------

@pytest.fixture
def wide(conn, schema) -> TableSpec:
    """Day D of 200 rows, uncompressed: ~17 KB (one PUT), or ~6.4 MB (two parts) with ``mib=6``."""
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at timestamptz NOT NULL, body text)").format(
        sql.Identifier(schema, "t")))
    return TableSpec(name=f"{schema}.t", day_column="at", start_date="2024-03-01", compression="none")


def _fill(conn, spec: TableSpec, mib: int) -> None:
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 12:00+00', md5(g::text) || repeat(md5(g::text), %s) "
                         "FROM generate_series(1, 200) g").format(sql.SQL(spec.name)), (mib * 200,))


@pytest.mark.parametrize(("mib", "fault"), [
    (0, Fault(method="PUT", path=OBJECT, action="set_header", header=("ETag", None), times=None)),
    (6, Fault(method="PUT", query="partNumber=", action="set_header",
              header=("ETag", '"0123456789abcdef0123456789abcdef"'), times=None)),
    # a multipart object's size is read back (one PUT whose ETag is our MD5 is not: it holds our bytes)
    (6, Fault(method="HEAD", path=OBJECT, action="set_header", header=("Content-Length", "5"), times=None)),
], ids=["put-without-etag", "part-with-wrong-etag", "head-with-wrong-size"])
def test_a_write_the_store_does_not_confirm_names_table_day_cause_and_remedy(
        s3, conn, wide, store, bucket, temp_dir, mib, fault):
    """The store's answers never confirm what was written: a PUT answered without its ETag, parts whose
    ETag is not their MD5, a HEAD with another size (a CompleteMultipartUpload whose ETag comes back
    damaged takes the same path).
    The run fails retryable and leaves nothing; before, the message ended at "the run will be retried",
    with no cause and no '; to fix:' (README: every message ends with one), where a store whose ETags are
    not MD5s (SSE-KMS, a gateway) fails so on every run and needs verify_etags off."""
    _fill(conn, wide, mib)
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(fault)
        faulty = _store(proxy.client(max_attempts=1), bucket)
        with pytest.raises(ArchiveError) as caught:
            archive_partition(conn, wide, DAY, faulty, temp_dir=str(temp_dir))
        assert fault.hits >= 1
    assert caught.value.retryable
    _names_day_cause_and_remedy(caught.value, wide.name)
    assert_nothing_left(store, keys.table_day_key(wide, DAY, "archive"), temp_dir)




def test_a_first_manifest_that_arrives_damaged_every_time_leaves_nothing_published(s3, conn, events, store, bucket,
                                                                                  temp_dir):
    """Every copy of a first archive's manifest arrives damaged (a flipped byte in each PUT body; the store
    answers each with the damaged copy's ETag). The run fails retryable. Before: it left its complete data
    object and the damaged manifest under the day's key (an overwrite its new generation's object, named by
    no manifest), although every attempt had been answered, so nothing could still land."""
    spec = spec_for(events)
    with FaultProxy(s3.endpoint_url) as proxy:
        faulty = _store(proxy.client(max_attempts=1), bucket)
        copies = MANIFEST_PUT_ATTEMPTS * faulty.corrupt_attempts  # every copy of the run's own manifest
        fault = proxy.add(Fault(method="PUT", path=MANIFEST, action="flip_request_byte", times=copies))
        with pytest.raises(ArchiveError) as caught:
            archive_partition(conn, spec, DAY, faulty, temp_dir=str(temp_dir))
        assert fault.hits == copies
    assert caught.value.retryable
    _names_day_cause_and_remedy(caught.value, spec.name)
    assert_nothing_left(store, keys.table_day_key(spec, DAY, store.prefix), temp_dir)
