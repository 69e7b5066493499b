"""Hunt 23 (ay): the store's conditional-write and cleanup fallbacks (store.py's with_conditions /
unconditional_after, replacing, holds and the KeyTakenError branches; what each leaves behind and how it is
classified), through the fault proxy in front of moto.

Suspicions checked: (1) a HEAD denied (403) behind a refused condition is reported as KeyTakenError: proven
(test_a_lost_answer...); (2) a 501 to one conditional request turns conditions off for the whole store object:
proven where it matters, a store that lacks If-Match only (test_a_501...); (3) and (4): see below. Found beside
them: replacing()'s fallback after a failed HEAD (two tests: a removal's mark, a data object) and _undo_commit
deleting a newer version's manifest after the store said it was another run's.

Held up (probed or read, not kept as tests): settle_stale_uploads(key) without a bound aborts every upload of the
key, a live one included, but every upload's key is a fresh generation chosen past every marked one, so only two
runs that start together share a key (documented in leftovers.marked_generations) or a zombie whose lock was lost
and whose listing after the create also failed; the live run then fails "another run aborted this upload",
retryable, and its retry succeeds: nothing wrong is published. _is_unimplemented's 400 that names a conditional
header (B2's words) also matches B2's 400 for botocore's checksum headers ("Unsupported header
'x-amz-checksum-crc32'"): conditions are turned off with a misleading warning, but the unconditional retry fails
the same way and the run ends with the right (checksum) remedy; no store is known to answer a condition's real
conflict as a 400. sink.py (nameless temp files, the mkstemp fallback) and boto.py held up.
"""

from __future__ import annotations

import datetime as dt
import json

from psycopg import sql

from archive_pipeline.core.manifest import MANIFEST_VERSION
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.keys import manifest_key, table_day_key
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.manifest import ManifestError, decode_manifest
from archive_pipeline.core.store import KeyTakenError, S3Store
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.test_hunt3_bb import DAY, ev  # noqa: F401 - 20 rows on DAY, column mode
from archive_pipeline_tests.test_hunt8_nb import DialectProxy, _xml_error
from archive_pipeline_tests.test_lifecycle import DAYS, events, spec_for  # noqa: F401 - fixtures
from archive_pipeline_tests.test_race_hunt import in_thread


def _bucket(s3_client, bucket: str) -> dict[str, str]:
    return {o["Key"]: o["ETag"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])}


def test_a_lost_answer_whose_check_is_denied_is_blamed_on_another_run_and_leaves_the_object(
        conn, schema, ev, s3, bucket, store, s3_client, temp_dir):  # noqa: F811
    """Scenario: the archiver's role may write objects but not read data objects back (s3:GetObject granted on
    ``*.manifest.json`` only, a least-privilege policy: every first archive of a day then runs green, since the
    commit's HEAD of the new object may fail). One day's data PUT (If-None-Match: *) is stored, but its answer is
    lost (the connection reset); botocore sends it again and the store answers 412, since the key now holds our
    own object.

    Now: _put_single sees _is_taken and asks S3Store.holds, whose HEAD is refused 403 AccessDenied; holds
    swallows every exception (``except Exception: return False``), and the taken branch reads "not known to be
    ours" as "another run's": KeyTakenError "... was written by another run meanwhile ...; nothing of this run was
    published", cause "another run wrote the same key", remedy "archive each table from one database, and one
    server, only". No other run exists; our own object stays at the key (not withdrawn: taken for another's),
    and the denied permission is never named.

    Should: a refused condition whose check cannot be made says so: the HEAD's own failure, classified as it is
    (403: the permission HeadObject needs, s3:GetObject, not retried), and the object left there named as
    possibly this run's. Fix idea: let holds() raise the HEAD's error (or return None for "unknown") and have the
    taken branches (put_bytes, _put_single, _finish) raise that, not _taken()."""
    key = table_day_key(ev, DAY, store.prefix)
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="PUT", path=r"\.jsonl\.zst$", action="reset_after", times=1))
        proxy.add(Fault(method="HEAD", path=r"\.jsonl\.zst$", action="error", status=403, code="AccessDenied",
                        times=None))
        proxy.add(Fault(method="GET", path=r"\.jsonl\.zst$", action="error", status=403, code="AccessDenied",
                        times=None))
        denied = S3Store(proxy.client(max_attempts=2), bucket, prefix=store.prefix)
        try:
            archive_partition(conn, ev, DAY, denied, temp_dir=temp_dir)
            error = None
        except ArchiveError as exc:
            error = exc
        seen = [(r.method, r.status) for r in proxy.records if r.path.endswith(".jsonl.zst")]
    assert error is not None, seen
    assert key in _bucket(s3_client, bucket)  # (the premise: our own object is at the key)
    # (a HEAD's answer has no body, so botocore names a refused HEAD by its status, "(403) ... Forbidden", never by
    # the code "AccessDenied": the denial is told by that status, the permission HeadObject needs and no retry)
    said = str(error)
    assert not isinstance(error, KeyTakenError) and ("AccessDenied" in said or "(403)" in said) \
        and "s3:GetObject" in said and not error.retryable, (
        f"{type(error).__name__} (retryable={error.retryable}, cause {error.cause!r}): {error}; requests {seen}")


def test_a_removal_whose_pending_mark_arrived_damaged_destroys_the_days_manifest_after_one_failed_head(
        conn, events, s3, bucket, store, s3_client):  # noqa: F811
    """Scenario: 2024-03-10 (declarative, 300 rows) is archived; its removal (drop) runs. The pending mark's PUT
    (If-Match the proven manifest's ETag) arrives with one byte damaged on the way, so the store keeps a damaged
    copy over the manifest and answers its ETag; the HEAD that follows meets one 503 SlowDown (a store under load;
    the store's client here makes one attempt).

    Now: put_bytes asks S3Store.replacing for the next try's condition; replacing swallows the HEAD's failure and
    returns the first condition (If-Match the proven manifest), which our own damaged copy now fails: 412;
    holds() finds other bytes there, so KeyTakenError. lifecycle._remove reads KeyTakenError as "not written:
    nothing of ours to take back" (marking = False) and refuses "... was replaced since it was proven (an archive
    run of the day on another server?); nothing was removed; run the removal again". The day's manifest is left as
    the damaged copy of our mark (manifest_sha256 does not match): the run the message advises is refused for
    good ("cannot be trusted ... archive the day again (overwrite) or restore the manifest from a backup"), and
    the day's archive, whole a moment ago, no longer reads.

    Should: a copy of ours that arrived damaged is replaced only while it is ours; where its ETag cannot be had
    the write fails retryable as a CorruptedWrite-like error (nothing "taken"), and the removal takes its mark
    back (the proven manifest is put back, as _take_back does for a CorruptedWrite). Fix idea: replacing() raises
    a retryable error naming the HEAD's failure instead of falling back to the first condition, or the taken
    branch checks whether the object there is our own damaged copy (the ETag the store answered for it)."""
    spec = spec_for(events, "drop")
    mkey = archive_partition(conn, spec, DAYS[0], store).manifest_key
    proven = s3_client.get_object(Bucket=bucket, Key=mkey)["Body"].read()
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action="flip_request_byte", times=1))
        proxy.add(Fault(method="HEAD", path=r"\.manifest\.json$", action="error", status=503, code="SlowDown",
                        times=1))
        loaded = S3Store(proxy.client(max_attempts=1), bucket, prefix=store.prefix)
        try:
            remove_day(conn, spec, DAYS[0], loaded, removed_by="test")
            said = "removed"
        except ArchiveError as exc:
            said = f"{type(exc).__name__}: {exc}"
        seen = [(r.method, r.status, r.fault) for r in proxy.records if r.path.endswith(".manifest.json")]
    stored = s3_client.get_object(Bucket=bucket, Key=mkey)["Body"].read()
    try:
        decode_manifest(stored)
        readable = "readable"
    except ManifestError as exc:
        readable = f"unreadable ({exc})"
    assert stored == proven or readable == "readable", (
        f"the removal ended {said!r} and left the day's manifest {readable}; requests {seen}")


def test_a_data_put_that_arrived_damaged_is_blamed_on_another_run_and_its_copy_is_kept_for_ever(
        conn, schema, ev, s3, bucket, store, s3_client, temp_dir):  # noqa: F811
    """Scenario: the first archive of a day: its data PUT (If-None-Match: *) arrives with one byte damaged on the
    way (the store keeps the damaged copy, answering its ETag); the HEAD that follows meets one 503 SlowDown. The
    run fails; the retry (the store healthy) archives the day.

    Now: _put_single asks S3Store.replacing for the next try's condition; replacing swallows the HEAD's failure
    and returns If-None-Match: *, which our own damaged copy fails (412); holds() finds other bytes, so
    KeyTakenError "... was written by another run meanwhile ...; nothing of this run was published", and the
    damaged copy (carrying this upload's own ``writer`` mark) is left at the key, not withdrawn. The retry finds
    generation 1 without a manifest, writes generation 2, and its manifest keeps the damaged copy for ever
    (``kept: the manifest before this one was missing``: treated as a possible only copy of rows, never deleted
    by any later tidying), while no other run ever existed.

    Should: the damaged copy is this run's (its writer mark says so): replaced If-Match its ETag, or withdrawn and
    the run failed retryable as "arrived corrupted"; the retry's bucket holds just the committed generation and
    its manifest. Fix idea: replacing() raises rather than fall back to If-None-Match, and _put_single's taken
    branch withdraws an object carrying its own writer mark (holds with the mark but any bytes)."""
    key = table_day_key(ev, DAY, store.prefix)
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="PUT", path=r"\.jsonl\.zst$", action="flip_request_byte", times=1))
        proxy.add(Fault(method="HEAD", path=r"\.jsonl\.zst$", action="error", status=503, code="SlowDown", times=1))
        loaded = S3Store(proxy.client(max_attempts=1), bucket, prefix=store.prefix)
        try:
            archive_partition(conn, ev, DAY, loaded, temp_dir=temp_dir)
            said = "archived"
        except ArchiveError as exc:
            said = f"{type(exc).__name__}: {exc}"
    retry = archive_partition(conn, ev, DAY, store, temp_dir=temp_dir)
    manifest = json.loads(s3_client.get_object(Bucket=bucket, Key=manifest_key(key))["Body"].read())
    left = sorted(set(_bucket(s3_client, bucket)) - {retry.key, manifest_key(key)})
    assert not left and not manifest.get("kept"), (
        f"the first run ended {said!r}; after the retry the bucket still holds {left}, the manifest keeps "
        f"{manifest.get('kept')}")


def _no_if_match(handler, method, body):
    """A store that takes If-None-Match but not yet If-Match on writes (AWS S3 from August to November 2024, and
    S3-compatible stores that added If-Match later): 501 NotImplemented for a write with If-Match."""
    if method in ("PUT", "POST") and "If-Match" in handler.headers:
        return _xml_error(501, "NotImplemented", "A header you provided implies functionality that is not "
                                                 "implemented")
    return None


def test_a_501_to_if_match_turns_off_if_none_match_and_a_first_commit_replaces_another_runs(
        conn, schema, ev, s3, bucket, store, s3_client, temp_dir):  # noqa: F811
    """Scenario: a store that implements If-None-Match but answers If-Match with 501 NotImplemented (AWS S3 between
    its conditional writes of August 2024 and If-Match in November 2024; S3-compatible stores that added If-Match
    later). One command archives two days with ``--overwrite`` (one S3Store for the whole range): 2024-03-10 is
    archived already (its commit replaces the manifest, If-Match), 2024-03-11 is archived for the first time;
    while its commit is on its way, another run of the day (on another server, which the table-day lock does not
    exclude) commits its own first manifest of 2024-03-11.

    Now: the 501 to the first day's If-Match makes S3Store.unconditional_after set ``conditional_writes = False``
    for the whole store object: every later write goes without any condition, If-None-Match included, though the
    store implements it. The second day's first manifest (fresh: If-None-Match: *) is sent without it and
    silently replaces the other run's commit; the run reports success.

    Should: only the condition the store refused is turned off (If-Match, per request kind): the second day's
    commit keeps If-None-Match, the store answers 412, and the run fails with KeyTakenError (retryable), leaving
    the other run's manifest. Fix idea: keep one flag per header (and per operation: PutObject,
    CompleteMultipartUpload), set from the header the refused request carried."""
    day2 = DAY + dt.timedelta(days=1)
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s::timestamptz + g * interval '1 min', 'r' || g "
                         "FROM generate_series(1, 20) g").format(sql.Identifier(schema, "ev")), (f"{day2} 00:00+00",))
    mkey2 = manifest_key(table_day_key(ev, day2, store.prefix))
    # the other run's commit: a whole manifest of the day (written under another prefix here, as it stands in)
    elsewhere = S3Store(store.client, bucket, prefix="elsewhere")
    theirs = s3_client.get_object(Bucket=bucket, Key=archive_partition(
        conn, ev, day2, elsewhere, temp_dir=temp_dir).manifest_key)["Body"].read()
    with DialectProxy(s3.endpoint_url, before=[_no_if_match]) as proxy:
        aws_2024 = S3Store(proxy.client(max_attempts=1), bucket, prefix=store.prefix)
        archive_partition(conn, ev, DAY, aws_2024, temp_dir=temp_dir)
        archive_partition(conn, ev, DAY, aws_2024, temp_dir=temp_dir, overwrite=True)  # (If-Match: 501)
        commit = proxy.add(Fault(method="PUT", path=r"2024-03-11\.jsonl\.zst\.manifest\.json$", action="hold",
                                 times=1))
        thread, outcome = in_thread(lambda: archive_partition(conn, ev, day2, aws_2024, temp_dir=temp_dir,
                                                              overwrite=True))
        try:
            assert proxy.wait_held(1), outcome
            s3_client.put_object(Bucket=bucket, Key=mkey2, Body=theirs)  # the other run's commit, meanwhile
        finally:
            commit.gate.set()
            thread.join(60)
    stored = s3_client.get_object(Bucket=bucket, Key=mkey2)["Body"].read()
    assert stored == theirs and isinstance(outcome.get("error"), KeyTakenError), (
        f"the other run's manifest was {'kept' if stored == theirs else 'replaced'}; the run "
        f"{outcome.get('error') or 'succeeded'}; conditional_writes={aws_2024.conditional_writes}")


def test_a_first_commit_refused_for_a_newer_versions_manifest_deletes_that_manifest(
        conn, schema, ev, s3, bucket, store, s3_client, temp_dir):  # noqa: F811
    """Scenario: a rolling upgrade: a second server already runs a newer archive_pipeline (manifest_version above this version's) and
    archives the same table from its own database, which this server's table-day lock does not exclude. This
    server's first archive of 2024-03-10 has stored its object (generation 1); while its commit (If-None-Match: *)
    is on its way, the newer run, which listed generation 1 without a manifest, stores generation 2 and commits its
    own first manifest. The store refuses ours (412), as it should.

    Now: put_bytes raises KeyTakenError ("written by another run meanwhile"), and archive._undo_commit reads the
    key: decode_manifest raises NewerManifestError (a ManifestError), which _undo_commit takes for "our own damaged
    copy: no manifest was there" (``existing.raw is None and self._manifest_settled``) and deletes the manifest at
    the key: the newer run's commit, after the store had just said it was another run's. The newer run reported
    the day archived; the bucket now holds its generation 2 named by no manifest, and the day reads as not
    archived. The README: a newer version's manifest "is not damaged ... archiving leaves it as it is (it is
    neither skipped onto nor replaced by the older version)".

    Should: after a KeyTakenError nothing at the manifest key is ours: it is left as it is (only our object is
    withdrawn); a copy of ours is deleted only where its ETag is one this run's own writes got (CorruptedWrite's
    etag, as _stored_manifest's ``damaged``). Fix idea: in _undo_commit, delete an unreadable first manifest only
    for a CorruptedWrite whose etag the HEAD confirms, never after a KeyTakenError nor for a NewerManifestError."""
    key = table_day_key(ev, DAY, store.prefix)
    mkey, g2 = manifest_key(key), key.replace(".jsonl.zst", ".g2.jsonl.zst")
    elsewhere = S3Store(store.client, bucket, prefix="elsewhere")
    template = archive_partition(conn, ev, DAY, elsewhere, temp_dir=temp_dir)
    newer = json.loads(s3_client.get_object(Bucket=bucket, Key=template.manifest_key)["Body"].read())
    newer.update(manifest_version=MANIFEST_VERSION + 1, generation=2, archiver={"name": "archive_pipeline", "version": "9.0.0"})
    newer["object"].update(key=g2, uri=f"s3://{bucket}/{g2}")
    theirs = json.dumps(newer, indent=2).encode()
    with FaultProxy(s3.endpoint_url) as proxy:
        ours = S3Store(proxy.client(max_attempts=1), bucket, prefix=store.prefix)
        commit = proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action="hold", times=1))
        thread, outcome = in_thread(lambda: archive_partition(conn, ev, DAY, ours, temp_dir=temp_dir))
        try:
            assert proxy.wait_held(1), outcome
            s3_client.put_object(Bucket=bucket, Key=g2, Body=b"the newer run's object")  # the newer run, meanwhile
            s3_client.put_object(Bucket=bucket, Key=mkey, Body=theirs)
        finally:
            commit.gate.set()
            thread.join(60)
    assert isinstance(outcome.get("error"), KeyTakenError), outcome  # (the premise: the store refused ours)
    there = _bucket(s3_client, bucket)
    assert mkey in there, (f"the newer version's committed manifest was deleted by the run the store refused; the "
                           f"day's keys now: {sorted(k for k in there if k.startswith(key[:-len('.jsonl.zst')]))}")
