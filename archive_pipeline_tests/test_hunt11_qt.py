"""Hunt 11, qt: S3-compatible stores that behave unlike AWS, in the write paths (archive, overwrite with
generations, manifest commits with If-None-Match / If-Match, upload markers, removal marks, settle, tidy), emulated
by the fault proxy in front of moto. Each test fails on the current code because of a bug."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.manifest import decode_manifest, encode_manifest
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.test_hunt3_bb import ev  # noqa: F401 - 20 rows on DAY, column mode
from archive_pipeline_tests.test_hunt8_nb import DialectProxy, _xml_error
from archive_pipeline_tests.test_lifecycle import DAYS, spec_for
from archive_pipeline_tests.test_race_hunt import in_thread

DAY = DAYS[0]


def test_an_overwrite_commit_without_md5_etags_does_not_replace_a_removals_pending_mark_written_meanwhile(
        conn, schema, s3, bucket, store, s3_client):
    """A bucket with SSE-KMS (ETags are not MD5s: the README's ``verify_etags: false``) on AWS, which does take
    If-Match. ``archive --overwrite`` of 2024-03-10 has uploaded its generation 2, read the day's manifest again
    and is about to commit; just then a removal of the day on another server (ARCHIVE_PG_DSN on a standby, the
    README's own case) writes its pending mark over that manifest.

    What happens: with ``verify_etags`` off ``S3Store.etag_of`` answers None, so the commit's PUT carries no
    If-Match at all: it replaces the removal's pending mark with the new generation's manifest (read back and
    found as written: success). The mark that keeps an emptied source from being archived again is gone, while
    the removal goes on dropping the rows.

    What should happen (README: "every replacement of a manifest (a re-archive's commit, ...) with If-Match of
    the very manifest it decided on"; the store does take conditions, only its ETags are not MD5s): the commit
    is refused (412), the run replaces nothing, withdraws its new object and fails, retryable; the pending mark
    stays. Fix idea: keep the ETag the store answered for the manifest bytes read (get_verified_bytes) and
    use it for If-Match where ``etag_of`` cannot compute one (a HEAD's ETag would race; the GET's does not)."""
    create_sample_events(conn, [DAY], rows_per_day=40, schema=schema)
    spec = spec_for(schema, "drop")
    plain = S3Store(store.client, bucket, prefix="archive", part_size=MIN_PART_SIZE, verify_etags=False)
    first = archive_partition(conn, spec, DAY, plain)
    mkey = first.key + ".manifest.json"
    manifest = decode_manifest(s3_client.get_object(Bucket=bucket, Key=mkey)["Body"].read())
    manifest["removed"] = {"at": dt.datetime.now(dt.UTC).isoformat(), "action": "drop", "state": "pending",
                           "by": "removal on the other server", "relation": f"{schema}.events_2024_03_10",
                           "xid": "12345"}
    pending = encode_manifest(manifest)
    with FaultProxy(s3.endpoint_url) as proxy:
        kms = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE,
                      verify_etags=False)
        commit = proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action="hold", times=1))
        thread, outcome = in_thread(lambda: archive_partition(conn, spec, DAY, kms, overwrite=True))
        try:
            assert proxy.wait_held(1), outcome
            s3_client.put_object(Bucket=bucket, Key=mkey, Body=pending)  # the removal's pending mark, meanwhile
        finally:
            commit.gate.set()
            thread.join(60)
        sent = [r for r in proxy.requests(method="PUT", path=r"\.manifest\.json$")]
    stored = s3_client.get_object(Bucket=bucket, Key=mkey)["Body"].read()
    # Now: the commit (no If-Match) replaced the pending mark; the run succeeded.
    assert stored == pending, ("the removal's pending mark was replaced by the overwrite's commit; the run "
                               f"{outcome.get('error') or 'succeeded'}; manifest PUTs {sent}")
    assert isinstance(outcome.get("error"), ArchiveError) and outcome["error"].retryable, outcome


def unquoted_etags(handler, method, status, headers, payload):
    """ETags without their double quotes, in headers and listings alike (SeaweedFS, some gateways)."""
    headers = [(k, v.strip('"') if k.lower() == "etag" else v) for k, v in headers]
    payload = re.sub(rb"<ETag>(?:&quot;|\")?([^<&\"]*)(?:&quot;|\")?</ETag>", rb"<ETag>\1</ETag>", payload)
    return status, headers, payload


def literal_if_match(handler, method, body):
    """The store compares If-Match byte for byte with its own (unquoted) ETag, as an opaque string."""
    value = handler.headers.get("If-Match")
    if value is not None and value.startswith('"'):
        return _xml_error(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold")
    return None


def test_an_overwrite_on_a_store_whose_etags_have_no_quotes_is_not_refused_as_another_runs(
        conn, schema, ev, s3, bucket, store, temp_dir):  # noqa: F811
    """A store that answers its (MD5) ETags without the double quotes (``ETag: 9f86d0...``: SeaweedFS, several
    gateways) and compares an If-Match header with that form, as the opaque string it answered (what the README
    says of upper-case ETags: "part ETags go back to the store as it answered them"; the hunt-8 fix keeps the
    store's case for the same reason). The user archives a day, then archives it again with ``overwrite``.

    What happens: the commit's condition is computed by ``S3Store.etag_of`` as ``"<md5>"`` (always quoted), which
    is not the store's ETag; the store answers 412 and the run fails "... was written by another run meanwhile",
    retryable: no other run exists, every retry fails the same, and the day can never be archived again (nor
    removed: the pending mark is refused the same way).

    What should happen: the condition is the store's own form of the manifest's ETag (note whether its answers
    quote ETags, as ``etag_in`` notes upper case, or use the ETag its GET answered), so the overwrite commits."""
    with DialectProxy(s3.endpoint_url, before=[literal_if_match], after=[unquoted_etags]) as proxy:
        bare = S3Store(proxy.client(max_attempts=1), bucket, prefix=store.prefix)
        first = archive_partition(conn, ev, DAY, bare, temp_dir=temp_dir)
        try:
            again = archive_partition(conn, ev, DAY, bare, temp_dir=temp_dir, overwrite=True)
        except ArchiveError as exc:
            pytest.fail(f"the overwrite was refused: {type(exc).__name__} retryable={exc.retryable}: {exc}")
        assert again.generation == first.generation + 1


def refuse_conditions_400(handler, method, body):
    """A store that refuses an unsupported header with 400 InvalidArgument, as Backblaze B2 does (its words for
    botocore's checksum headers): here If-None-Match / If-Match on writes."""
    for name in ("If-None-Match", "If-Match"):
        if method in ("PUT", "POST") and name in handler.headers:
            return _xml_error(400, "InvalidArgument", f"Unsupported header '{name.lower()}' received for this API "
                                                      "call.")
    return None


def test_a_store_that_refuses_conditional_headers_with_400_is_archived_to_as_one_answering_501(
        conn, schema, ev, s3, bucket, store, temp_dir):  # noqa: F811
    """A store without conditional writes that says so with a 400 InvalidArgument "Unsupported header
    'if-none-match' received for this API call." (Backblaze B2's way of refusing a header it does not implement,
    as it refuses botocore's checksum headers) instead of a 501 NotImplemented.

    What happens: ``_is_unimplemented`` knows only 501 / NotImplemented, so the first archive's fresh data PUT
    (If-None-Match: *) fails "the object store rejected the request ... not retried", remedy "read the error code
    in the message": no day can ever be archived to this store, and no setting turns conditional writes off.

    What should happen: a refusal that names the condition header is the store saying it does not implement it,
    as its 501 would: written without (logged once), as the README says of a 501; the day is archived and
    verifies. Fix idea: in ``_is_unimplemented`` also take a 400 (InvalidArgument / InvalidRequest /
    NotImplemented) whose message names If-None-Match / If-Match / conditional; or offer a
    ``conditional_writes: false`` setting and name it in the error."""
    from archive_pipeline.core.keys import table_day_key
    from archive_pipeline.core.verify import verify_archive

    with DialectProxy(s3.endpoint_url, before=[refuse_conditions_400]) as proxy:
        b2 = S3Store(proxy.client(max_attempts=1), bucket, prefix=store.prefix)
        try:
            archive_partition(conn, ev, DAY, b2, temp_dir=temp_dir)
        except ArchiveError as exc:
            pytest.fail(f"the day could not be archived: {type(exc).__name__} retryable={exc.retryable}: {exc}")
        assert verify_archive(b2, table_day_key(ev, DAY, store.prefix), {}, deep=True, temp_dir=temp_dir) == []


def not_modified_for_if_none_match(handler, method, status, headers, payload):
    """MinIO before its conditional writes (minio/minio#19442): a PUT whose If-None-Match holds no more (the key
    exists) is answered ``304 Not Modified``, empty, not 412 (the object is left as it was)."""
    if method == "PUT" and status == 412 and "If-None-Match" in handler.headers:
        return 304, [(k, v) for k, v in headers if k.lower() not in ("content-type", "etag")], b""
    return status, headers, payload


def test_a_lost_answer_to_a_fresh_put_on_a_store_answering_304_is_recognised_as_ours(
        conn, schema, ev, s3, bucket, store, temp_dir):  # noqa: F811
    """A MinIO release that answers a PUT whose ``If-None-Match: *`` no longer holds with ``304 Not Modified``
    (minio/minio#19442: RFC 7232's answer for GET applied to PUT) instead of 412. The first archive of a day: the
    data object's PUT (If-None-Match: *) is stored, but its answer is lost (the connection reset), and botocore
    sends it again: the store answers 304, since the key now holds our own object.

    What happens: botocore raises ClientError code "304"; ``_is_taken`` knows only 412 / PreconditionFailed /
    ConditionalRequestConflict, so the refusal is neither recognised as our own earlier try (``holds``) nor as
    another run's write: the run fails "the object store rejected the request ... not retried: a retry cannot fix
    this", remedy "read the error code in the message" (our object is withdrawn; a retry would have worked). The
    same 304 for another run's object (a real race) is told as a setting, never retried, not as KeyTakenError.

    What should happen: a 304 to a conditional PUT is the condition failing, as a 412 is: ``holds`` finds our
    own bytes there and the archive commits (or at worst a retryable KeyTakenError and nothing left behind). Fix
    idea: add "304" / NotModified to ``_TAKEN_CODES`` (for writes)."""
    from archive_pipeline.core.keys import table_day_key
    from archive_pipeline.core.verify import verify_archive

    with DialectProxy(s3.endpoint_url, after=[not_modified_for_if_none_match]) as proxy:
        proxy.add(Fault(method="PUT", path=r"\.jsonl\.zst$", action="reset_after", times=1))
        minio = S3Store(proxy.client(max_attempts=3), bucket, prefix=store.prefix)
        try:
            archive_partition(conn, ev, DAY, minio, temp_dir=temp_dir)
        except ArchiveError as exc:
            puts = [(r.path.rsplit("/", 1)[-1], r.status) for r in proxy.requests(method="PUT")]
            pytest.fail(f"{type(exc).__name__} retryable={exc.retryable}: {exc}; PUTs {puts}")
        assert verify_archive(minio, table_day_key(ev, DAY, store.prefix), {}, deep=True, temp_dir=temp_dir) == []


def gcs_condition_not_met(handler, method, status, headers, payload):
    """Google Cloud Storage's XML API: a failed precondition is 412 with the code ``ConditionNotMet`` (not S3's
    PreconditionFailed)."""
    if status == 412:
        payload = re.sub(rb"<Code>[^<]*</Code>", b"<Code>ConditionNotMet</Code>", payload)
    return status, headers, payload


def test_an_overwrite_refused_412_condition_not_met_by_gcs_is_a_retryable_race_not_a_setting(
        conn, schema, s3, bucket, store, s3_client):
    """Google Cloud Storage through its S3 (XML) interop, which the README names: a precondition that does not hold
    is answered ``412`` with ``<Code>ConditionNotMet</Code>``. ``archive --overwrite`` of 2024-03-10 has uploaded its
    generation 2 and read the manifest again; just then a removal of the day on another server writes its pending
    mark. The commit's PUT (If-Match the manifest it decided on) is refused, 412.

    What happens: ``_is_taken`` knows the codes PreconditionFailed / ConditionalRequestConflict / "412", not the
    status, so the refusal is told as a setting: "the object store rejected the request ... not retried: a retry
    cannot fix this", remedy "read the error code in the message" (the same for a first archive racing another
    run, and for an answer lost and retried, where our own write landed: never recognised as ours).

    What should happen: any 412 to a conditional write is the condition failing: the run fails retryable ("written
    by another run meanwhile"), the pending mark stays, and the retry decides on what is there. Fix idea: in
    ``_is_taken`` look at the HTTP status (412, 409 with a conditional code) as well as the code."""
    create_sample_events(conn, [DAY], rows_per_day=40, schema=schema)
    spec = spec_for(schema, "drop")
    first = archive_partition(conn, spec, DAY, store)
    mkey = first.key + ".manifest.json"
    manifest = decode_manifest(s3_client.get_object(Bucket=bucket, Key=mkey)["Body"].read())
    manifest["removed"] = {"at": dt.datetime.now(dt.UTC).isoformat(), "action": "drop", "state": "pending",
                           "by": "removal on the other server", "relation": f"{schema}.events_2024_03_10",
                           "xid": "12345"}
    pending = encode_manifest(manifest)
    with DialectProxy(s3.endpoint_url, after=[gcs_condition_not_met]) as proxy:
        gcs = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)
        commit = proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action="hold", times=1))
        thread, outcome = in_thread(lambda: archive_partition(conn, spec, DAY, gcs, overwrite=True))
        try:
            assert proxy.wait_held(1), outcome
            s3_client.put_object(Bucket=bucket, Key=mkey, Body=pending)  # the removal's pending mark, meanwhile
        finally:
            commit.gate.set()
            thread.join(60)
    assert s3_client.get_object(Bucket=bucket, Key=mkey)["Body"].read() == pending
    error = outcome.get("error")
    assert isinstance(error, ArchiveError), outcome
    assert error.retryable, f"{type(error).__name__} retryable={error.retryable}: {error}"


def literal_part_etags(handler, method, body):
    """CompleteMultipartUpload compares each part's ETag byte for byte with the (unquoted) one the store answered
    for it: a part ETag sent back with quotes names no part the store knows."""
    if method == "POST" and "uploadId=" in handler.path and re.search(rb"<ETag>(\"|&quot;)", body):
        return _xml_error(400, "InvalidPart", "One or more of the specified parts could not be found. The part may "
                                              "not have been uploaded, or the specified entity tag may not match the "
                                              "part's entity tag.")
    return None


def test_a_multipart_day_on_a_store_whose_etags_have_no_quotes_sends_its_part_etags_back_as_answered(
        conn, schema, s3, bucket, temp_dir):
    """A store that answers ETags without their double quotes (UploadPart's ``ETag: 5d41...``) and, in
    CompleteMultipartUpload, takes a part's ETag only in the form it answered. The README (Production notes): "part
    ETags go back to the store as it answered them". A user archives a day big enough for two parts.

    What happens: ``_send_part`` keeps ``'"{}"'.format(etag.strip('"'))``: every part ETag goes back WITH quotes,
    not as answered; the store refuses the completion (400 InvalidPart), which is classified "the multipart upload
    disappeared or conflicted with another writer", retryable: every retry re-reads and re-uploads the day to
    fail the same way; no multipart day can ever be archived to this store.

    What should happen: the parts go back exactly as the store answered them (quoted only if it quoted them), and
    the day archives. Fix idea: keep ``response["ETag"]`` verbatim in ``_Part``."""
    from psycopg import sql

    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.keys import table_day_key
    from archive_pipeline.core.verify import verify_archive

    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz NOT NULL, v text)").format(
        sql.Identifier(schema, "big")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s::timestamptz + g * interval '1 ms', md5(g::text) || "
                         "md5((g + 1)::text) FROM generate_series(1, 75000) g").format(sql.Identifier(schema, "big")),
                 (f"{DAY} 00:00+00",))
    spec = TableSpec(name=f"{schema}.big", day_column="at", start_date="2024-03-01", partitioning={"mode": "column"},
                     compression="none")
    with DialectProxy(s3.endpoint_url, before=[literal_part_etags], after=[unquoted_etags]) as proxy:
        bare = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)
        try:
            result = archive_partition(conn, spec, DAY, bare, temp_dir=temp_dir)
        except ArchiveError as exc:
            pytest.fail(f"{type(exc).__name__} retryable={exc.retryable}: {exc}")
        assert result.parts >= 2 and result.rows == 75000
        assert verify_archive(bare, table_day_key(spec, DAY, "archive"), {}, temp_dir=temp_dir) == []
