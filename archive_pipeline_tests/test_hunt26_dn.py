"""Hunt 26 (dn): the S3 store misbehaving on the read paths (restore, verify, the removal's proof and its done
mark): answers that are another version of the key, or a moment's 404, taken for verdicts."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.manifest import decode_manifest, encode_manifest
from archive_pipeline_tests.helpers import download
from archive_pipeline_tests.test_hunt3_u import DAY, OBJECT, BodyProxy, _names_day, _store
from archive_pipeline_tests.test_lifecycle import events, spec_for  # noqa: F401 - two days of 300 rows
from archive_pipeline_tests.test_readpath_faults_hunt import _exists


def _as_multipart(client, bucket: str, result) -> str:
    """Store the archived object again as a one-part multipart upload (what ``aws s3 cp`` above its threshold, or
    an archive of a day over the part size, leaves: an ETag ``<md5 of the part MD5s>-1``, no MD5 of the bytes),
    its manifest recording that ETag; the ETag."""
    body = download(client, bucket, result.key)
    upload = client.create_multipart_upload(Bucket=bucket, Key=result.key)["UploadId"]
    part = client.upload_part(Bucket=bucket, Key=result.key, UploadId=upload, PartNumber=1, Body=body)["ETag"]
    etag = client.complete_multipart_upload(Bucket=bucket, Key=result.key, UploadId=upload, MultipartUpload={
        "Parts": [{"ETag": part, "PartNumber": 1}]})["ETag"].strip('"')
    manifest = decode_manifest(download(client, bucket, result.manifest_key))
    manifest["object"]["etag"] = etag
    client.put_object(Bucket=bucket, Key=result.manifest_key, Body=encode_manifest(manifest))
    return etag


def _older_multipart_version(body: bytes, headers):
    """What a cache that kept an earlier version of a multipart object's key answers: the same size, other bytes,
    and that version's own multipart ETag (``<md5 of its part's MD5>-1``), never the one the object's HEAD gives."""
    older = bytearray(body)
    older[len(older) // 2] ^= 0x01
    etag = f'"{hashlib.md5(hashlib.md5(bytes(older)).digest()).hexdigest()}-1"'
    return bytes(older), [(k, etag if k.lower() == "etag" else v) for k, v in headers]


@pytest.mark.parametrize("step", ["restore", "prove"])
def test_a_multipart_objects_get_answered_with_another_version_is_not_a_damaged_archive(
        s3, conn, events, store, bucket, temp_dir, step):
    """Scenario: a day whose object is a multipart upload (its ETag ``…-1`` is no MD5 of the bytes: a day over the
    part size, or one copied by ``aws s3 cp`` above its multipart threshold). A caching gateway in front of the
    store (or a replica behind it) answers the object's GET with an earlier version of the key: the same size,
    other bytes, under that version's own ETag, which is neither the ETag the manifest records nor the one the
    object's HEAD gives; the store itself holds the archived bytes. The user restores the day (``restore``) or
    proves it (``verify --deep``, the removal's proof).

    Now: core/store.py ``S3Store.download_to`` compares the GET's ETag with anything only where it is a plain MD5
    (``vouched``): for a multipart ETag it raises ``damaged=None`` without asking whether the GET even answered the
    object's version (``_same_version``, which the single-part case asks since test_hunt3_u). The second download
    (restore.downloaded / verify._stored_bytes_differ) comes from the same cache, so the two wrong digests agree:
    restore raises ArchiveCorruptError "is damaged: two complete downloads agree ... restore it from a replica or
    backup" (not retryable), and the proof returns the damage verdict "md5: recorded …, stored object hashes to …
    (two complete downloads agree)" (a failed proof: the removal refuses the day, archive_intact goes red) for an
    intact archive.

    Should: as for a single-part object, a GET answered under another ETag than the recorded one and the object's
    HEAD is another version's answer, no verdict: a retryable download error naming table and day (or a retry
    that gets the object's own bytes). Fix idea: in download_to, where the digest is not the expected one and the
    GET's ETag differs from the object's HEAD (``_same_version``), raise retryable ``damaged=False`` whatever the
    ETag's form; only the same ETag on GET and HEAD leaves ``damaged=None`` for the second download to decide."""
    from archive_pipeline.core.restore import ArchiveCorruptError, restore_day
    from archive_pipeline.core.verify import deep_verify

    spec = spec_for(events)
    with BodyProxy(s3.endpoint_url) as proxy:
        client = proxy.client(max_attempts=1)  # a store that keeps no CRC32 of its own
        faulty = _store(client, bucket)
        result = archive_partition(conn, spec, DAY, faulty)
        _as_multipart(client, bucket, result)
        assert deep_verify(conn, faulty, spec, DAY) == [], "the multipart archive is intact (premise)"
        proxy.rewrites.append(("GET", OBJECT, "", _older_multipart_version))
        try:
            if step == "restore":
                assert restore_day(conn, faulty, spec, DAY, into="new", target=f"{events}.back",
                                   temp_dir=temp_dir).rows == 300
            else:
                problems = deep_verify(conn, faulty, spec, DAY)
                assert problems == [], f"another version's bytes were taken for a verdict on the archive: {problems}"
        except ArchiveError as exc:
            assert not isinstance(exc, ArchiveCorruptError) and exc.retryable, f"{type(exc).__name__}: {exc}"
            assert "damaged" not in str(exc), str(exc)
            _names_day(exc, spec.name)
        assert proxy.rewritten >= 1
    assert list(temp_dir.iterdir()) == [] and not _exists(conn, f"{events}.back")
    assert deep_verify(conn, store, spec, DAY) == []  # the archive was intact all along


def test_a_removals_done_mark_read_answered_404_for_a_moment_is_not_an_archive_replaced(
        s3, conn, events, store, bucket, monkeypatch):
    """Scenario: retention removes a proven day (``prune``, the removal job). Right after the removal's COMMIT, a
    caching gateway in front of the store (or a replica behind it: the README's "a store contradicting itself is no
    verdict") answers the day's manifest GET 404 NoSuchKey once, and the two HEADs that confirm it 404 too; a moment
    later every read answers as stored again, with this removal's own pending mark, which it wrote and checked
    (ETag) a moment before.

    Now: core/lifecycle.py ``_remove`` -> ``_marked_by_us`` takes ``get_verified_bytes`` -> None for "the manifest was
    replaced" (``current is None`` -> None), ``_completed_for_us`` reads the pending mark back (not done) and the
    removal raises RemovalNotRecorded, NOT retryable: "its archive ... was replaced meanwhile by one that does not
    hold those rows (an archive run of the day on another server?); it is left as it is", remedy "compare the archive
    ... with the removed rows' fingerprint": the operator is sent hunting for a rival run and told the rows may be in
    neither place, and no retry completes the mark (the manifest stays 'pending' until some later run settles it).

    Should: a read that finds no manifest where this removal has just written its mark is the store contradicting
    itself, not another run's archive: the done mark is written (the manifest read again), or the error is
    retryable and says the store answered inconsistently. Fix idea: in ``_marked_by_us`` treat ``raw is None`` as
    ``inconsistent(...)`` (retryable, no verdict), as plan.lookup_manifests does for a manifest its listing shows; or
    read once more before concluding it was replaced."""
    from archive_pipeline.core import lifecycle
    from archive_pipeline.core.lifecycle import RemovalNotRecorded, remove_day
    from archive_pipeline.core.verify import load_manifest
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
    from archive_pipeline_tests.test_hunt3_u import MANIFEST

    spec = spec_for(events)
    archive_partition(conn, spec, DAY, store)
    recheck = lifecycle._recheck_and_remove
    with FaultProxy(s3.endpoint_url) as proxy:
        faults = []

        def then_a_moment_of_404(*args, **kwargs):  # the last step before the COMMIT: the faults start after it
            rows = recheck(*args, **kwargs)
            faults.append(proxy.add(Fault(method="GET", path=MANIFEST, action="error", status=404,
                                          code="NoSuchKey", times=1)))
            faults.append(proxy.add(Fault(method="HEAD", path=MANIFEST, action="error", status=404,
                                          code="NoSuchKey", times=2)))
            return rows

        monkeypatch.setattr(lifecycle, "_recheck_and_remove", then_a_moment_of_404)
        faulty = _store(proxy.client(max_attempts=1), bucket)
        try:
            done = remove_day(conn, spec, DAY, faulty, removed_by="test")
        except RemovalNotRecorded as exc:
            assert [f.hits for f in faults] == [1, 2], "the 404s were meant for the read after the COMMIT"
            assert exc.retryable and "replaced" not in str(exc), f"retryable={exc.retryable}: {exc}"
            return
        assert done.rows == 300
    assert load_manifest(store, f"archive/{events}.events/2024/03/2024-03-10.jsonl.zst")["removed"]["state"] == "done"


def test_a_manifest_the_sensors_listing_shows_but_one_tick_reads_as_404_is_not_rejected_for_good(
        pg, conn, schema, archive_env, store, s3, temp_dir, monkeypatch):
    """Scenario: five days of ``events`` whose sensor runs failed; the operator follows each tick's remedy and
    archives them with the command line (here the same core call). On the next tick, a caching gateway in front of
    the store (or a lagging replica) answers the middle day's manifest GET 404 NoSuchKey, and its HEADs 404 too,
    while the tick's own bucket listing shows that manifest (and its object) as stored. The tick after it reads a
    healthy store; nothing in the bucket changed.

    Now: defs/outside.py ``archived_outside`` -> ``_taken`` returns None for ``load_manifest`` -> None (no
    manifest), and ``archived_outside`` adds the day's listing mark to ``rejected`` as for a manifest it judged and
    refused. The next tick sees the same listing (same mark) and never reads the day again: the archived day stays
    unrecorded, listed as failed with the remedy already followed, for as long as nothing under its prefix changes
    (the module's own docstring keeps exactly this from happening for a HEAD's passing answer: "remembered, it would
    keep the day unrecorded for good").

    Should: a manifest the tick's listing shows but its read calls absent is the store contradicting itself: no
    verdict, not remembered (read again next tick, as the HEAD case is), so the second tick records the day.
    Fix idea: in ``_taken`` (or archived_outside) remember a rejection only for a manifest that was read and judged;
    for ``manifest is None`` where the listing shows its key, raise ``inconsistent`` (a STORE_ERROR) or skip the mark."""
    from dagster import instance_for_test

    from archive_pipeline.core.config import parse_config
    from archive_pipeline.definitions import build_definitions
    from archive_pipeline.local.local_stack import create_sample_events
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
    from archive_pipeline_tests.test_hunt16_vm import YESTERDAY, _recorded, _sensor_run_failed, _tick

    days = [YESTERDAY - dt.timedelta(days=i) for i in range(5, 0, -1)]
    create_sample_events(conn, days, rows_per_day=3, schema=schema)
    config = parse_config({"retry": {"max_retries": 0}, "tables": [
        {"name": f"{schema}.events", "day_column": "created_at", "start_date": days[0].isoformat(),
         "partitioning": {"mode": "declarative"}}]})
    spec = config.tables[0]
    for day in days:
        archive_partition(conn, spec, day, store, temp_dir=temp_dir)
    victim = days[2].isoformat()
    manifest = rf"/{victim}\.jsonl\.zst\.manifest\.json$"
    defs = build_definitions(config)
    with instance_for_test() as instance:
        for day in days:
            _sensor_run_failed(instance, spec, day.isoformat())
        with FaultProxy(s3.endpoint_url) as proxy:
            got = proxy.add(Fault(method="GET", path=manifest, action="error", status=404, code="NoSuchKey",
                                  times=None))
            headed = proxy.add(Fault(method="HEAD", path=manifest, action="error", status=404, code="NoSuchKey",
                                     times=None))
            monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", proxy.url)
            first = _tick(defs, instance, pg)
            assert got.hits and headed.hits, "the 404s were meant for this tick's read of the day's manifest"
            assert [r for r in proxy.requests(method="GET", query="list-type") if r.status == 200], \
                "the tick listed the table (the premise: its listing shows the manifest)"
        assert victim not in _recorded(first)  # (a moment's 404: no record of it this tick, rightly)
        monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", s3.endpoint_url)
        second = _tick(defs, instance, pg)
    assert victim in _recorded(second), (  # (the first tick's records were not stored: the others are recorded again)
        f"the archived {victim} was not recorded by the tick after the store's moment of 404s: {_recorded(second)}")


# --- the same false verdict at its siblings: a manifest that a listing shows, read as 404 (a GET and two HEADs), is
# the store contradicting itself (verify.load_stored_manifest / S3Store.confirm_missing), never "missing" for good


def _manifest_404(proxy, times):
    """The day's manifest answered 404 NoSuchKey by its GET and HEADs (``times`` each: None for ever), while the
    bucket listing still shows it; the two faults."""
    from archive_pipeline_tests.fault_proxy import Fault
    from archive_pipeline_tests.test_hunt3_u import MANIFEST

    manifest = MANIFEST if times is not None else r"\.manifest\.json$"
    return [proxy.add(Fault(method="GET", path=manifest, action="error", status=404, code="NoSuchKey", times=times)),
            proxy.add(Fault(method="HEAD", path=manifest, action="error", status=404, code="NoSuchKey",
                            times=None if times is None else 2 * times))]


def test_settling_a_pending_mark_whose_manifest_reads_404_for_a_moment_is_not_an_archive_that_no_longer_checks_out(
        s3, conn, events, store, bucket, monkeypatch):
    """Scenario: a removal committed, its done mark lost; the next run settles the pending mark (lifecycle._settle,
    committed) and checks the archive first (verify_archive, deep), whose read of the manifest answers 404 once (and
    its two HEADs) while the bucket lists it. Before: "its archive no longer checks out: manifest ... is missing",
    RemovalNotRecorded NOT retryable, remedy "restore the archive's object from a replica". Should: retryable, no
    verdict."""
    from archive_pipeline.core import lifecycle
    from archive_pipeline.core.verify import load_manifest
    from archive_pipeline_tests.fault_proxy import FaultProxy

    spec = spec_for(events)
    result = archive_partition(conn, spec, DAY, store)
    marked = {**load_manifest(store, result.key), "removed": {"state": "pending", "action": "drop",
                                                             "at": "2024-04-10T00:00:00+00:00", "xid": "1"}}
    check = lifecycle.verify_archive
    with FaultProxy(s3.endpoint_url) as proxy:
        faults = []

        def then_a_moment_of_404(*args, **kwargs):
            faults.extend(_manifest_404(proxy, 1))
            return check(*args, **kwargs)

        monkeypatch.setattr(lifecycle, "verify_archive", then_a_moment_of_404)
        faulty = _store(proxy.client(max_attempts=1), bucket)
        with pytest.raises(ArchiveError) as caught:
            lifecycle._settle(conn, spec, spec.period(DAY), faulty, result.key, marked, True, "test")
    assert [f.hits for f in faults] == [1, 2], "the 404s were meant for the check's read of the manifest"
    assert caught.value.retryable and "no longer checks out" not in str(caught.value), str(caught.value)
    assert load_manifest(store, result.key).get("removed") is None  # nothing was written


def test_a_removal_whose_manifest_reads_404_while_listed_is_not_a_day_without_an_archive(
        s3, conn, events, store, bucket):
    """Scenario: ``prune`` (lifecycle.remove_day) of an archived day, its manifest's GET and HEADs answering 404 (a
    caching gateway) while the bucket lists it. Before: RemovalRefused "has no archive at ...; archive it first"
    (its remedy writes a second archive of the day). Should: retryable, the store answering inconsistently."""
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline_tests.fault_proxy import FaultProxy

    spec = spec_for(events)
    archive_partition(conn, spec, DAY, store)
    with FaultProxy(s3.endpoint_url) as proxy:
        _manifest_404(proxy, None)
        with pytest.raises(ArchiveError) as caught:
            remove_day(conn, spec, DAY, _store(proxy.client(max_attempts=1), bucket), removed_by="test")
    assert caught.value.retryable and "no archive" not in str(caught.value), str(caught.value)
    assert "inconsistently" in str(caught.value), str(caught.value)


def _dagster_day_archived(conn, schema, **table):
    """A day 40 days ago of ``<schema>.events`` archived by its Dagster job; (config, day, instance)."""
    from dagster import instance_for_test

    from archive_pipeline.core.config import parse_config
    from archive_pipeline.definitions import build_definitions
    from archive_pipeline.local.local_stack import create_sample_events
    from archive_pipeline_tests.conftest import utc_today

    day = utc_today() - dt.timedelta(days=40)
    create_sample_events(conn, [day], rows_per_day=3, schema=schema)
    config = parse_config({"retry": {"max_retries": 0}, "tables": [
        {"name": f"{schema}.events", "day_column": "created_at", "start_date": day.isoformat(), **table}]})
    instance = instance_for_test()
    context = instance.__enter__()
    assert build_definitions(config).resolve_job_def(f"Archive_{schema}_events").execute_in_process(
        instance=context, partition_key=day.isoformat()).success
    return config, day, instance, context


@pytest.mark.parametrize("job", ["removal", "source_unchanged"])
def test_a_dagster_read_of_a_listed_manifest_answered_404_is_no_verdict(conn, schema, archive_env, s3, monkeypatch,
                                                                       job):
    """Scenario: a day archived through Dagster; then its manifest's GET and HEADs answer 404 (a caching gateway, a
    lagging replica) while the bucket lists it. ``removal``: the removal asset (Remove_<table>) failed "has no
    archive at ...: nothing is proven or removed. Archive the day first" (not retryable; its remedy writes a second
    archive). ``source_unchanged`` (verify_archives): "its manifest ... is missing from the store (archive the day
    again)", a failed check. Should: no verdict: the step fails retryable, naming the store's inconsistency."""
    from archive_pipeline.definitions import build_definitions
    from archive_pipeline_tests.fault_proxy import FaultProxy
    from archive_pipeline_tests.test_hunt4_tt import _failures

    config, day, instance, context = _dagster_day_archived(
        conn, schema, **({"retention": {"keep_days": 30, "action": "delete"}} if job == "removal" else {}))
    try:
        with FaultProxy(s3.endpoint_url) as proxy:
            faults = _manifest_404(proxy, None)
            monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", proxy.url)
            defs = build_definitions(config)
            if job == "removal":
                run = defs.resolve_job_def(f"Remove_{schema}_events").execute_in_process(
                    instance=context, partition_key=day.isoformat(), raise_on_error=False)
            else:
                run = defs.resolve_job_def("verify_archives").execute_in_process(instance=context,
                                                                                 raise_on_error=False)
            assert all(f.hits for f in faults), "the 404s were meant for the job's read of the manifest"
        failures = _failures(context, run.run_id)
        said = [e.description or "" for e in run.get_asset_check_evaluations() if e.check_name == "source_unchanged"]
    finally:
        instance.__exit__(None, None, None)
    assert not run.success
    assert not any("no archive" in f or "missing" in f for f in failures + said), (failures, said)
    assert any("inconsistently" in f for f in failures), failures
