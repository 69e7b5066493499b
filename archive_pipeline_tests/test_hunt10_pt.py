"""Review of the hunt-10 fixes (pt): real PostgreSQL and the real S3 over HTTP, forced into one interleaving by the
fault proxy's ``hold``."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline.core.verify import deep_verify, load_manifest
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.test_hunt3_bb import ev  # noqa: F401 - 20 rows on DAY, column mode
from archive_pipeline_tests.test_hunt8_nb import DialectProxy, _xml_error
from archive_pipeline_tests.test_letgo import standby  # noqa: F401 - fixture: a hot standby of pg
from archive_pipeline_tests.test_race_hunt import in_thread

DAY = dt.date(2024, 3, 10)


def _until(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_a_lost_object_s_put_back_never_replaces_a_later_run_s_commit_on_a_store_without_md5_etags(
        pg, standby, conn, schema, s3, bucket, store, s3_client):  # noqa: F811
    """A store whose ETags are not MD5s (SSE-KMS, ARCHIVE_S3_VERIFY_ETAGS=false: the README's setting for it),
    ARCHIVE_PG_DSN on a hot standby, and the same table archived from the primary too. A user re-archives
    2024-03-10 from the standby (`archive --overwrite`): its generation-2 manifest is written; just then an
    overwrite of the day on the primary runs to the end (its tidy removes the standby's object as a leftover, it
    commits generation 3 and retires what it superseded). The standby's run then finds its object gone and "puts
    the previous manifest back": with ``etag_of`` None (no MD5 ETags) that PUT has no If-Match at all, so it
    replaces the primary's later commit with the generation-1 manifest, whose object is no longer stored. The day
    is then recorded as archived while no object holds its rows. Expected: the put-back is conditional on the
    manifest still being ours (read back and compared, as ``_put_back`` does) and leaves a later commit alone; the
    day's manifest names a stored object and the archive proves."""
    from archive_pipeline.local.local_stack import create_sample_events, wait_for_replay

    create_sample_events(conn, [DAY], rows_per_day=100, schema=schema)
    spec = TableSpec(name=f"{schema}.events", day_column="created_at", start_date=DAY,
                     partitioning={"mode": "declarative"})
    first = archive_partition(conn, spec, DAY, store)
    wait_for_replay(pg, standby)
    with FaultProxy(s3.endpoint_url) as proxy, standby.connect() as replica:
        kms = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE,
                      verify_etags=False)
        put = proxy.add(Fault(method="PUT", path=r"\.manifest\.json$", action="hold", times=1))
        thread, outcome = in_thread(lambda: archive_partition(replica, spec, DAY, kms, overwrite=True))
        head = None
        try:
            assert proxy.wait_held(1), outcome  # the standby's generation 2 stored, its manifest about to land
            head = proxy.add(Fault(method="HEAD", path=r"\.jsonl\.zst$", action="hold", times=1))
            put.gate.set()
            assert _until(lambda: head.hits >= 1 or not thread.is_alive()), outcome  # its check of its object
            later = archive_partition(conn, spec, DAY, store, overwrite=True)  # the primary's overwrite, whole
        finally:
            put.gate.set()
            if head is not None:
                head.gate.set()
            thread.join(60)
    manifest = load_manifest(store, first.key)
    listed = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    # Now: the standby's put-back (no If-Match) replaced generation 3's manifest with generation 1's, whose
    # object the primary's run had tidied away.
    assert manifest["object"]["key"] == later.key and later.key in listed, (outcome, manifest["object"]["key"],
                                                                            later.key, sorted(listed))
    assert deep_verify(conn, store, spec, DAY) == []


def test_an_archive_run_on_the_standby_is_not_told_forever_to_wait_for_a_removal_whose_transaction_never_comes(
        pg, standby, conn, schema, s3, bucket, store, s3_client):  # noqa: F811
    """The README's production setup: ARCHIVE_PG_DSN on a hot standby. A week ago a removal of 2024-03-10 wrote its
    pending mark (transaction id N, the cluster's system identifier) and its primary crashed before that
    transaction's WAL reached the standby, which was promoted (a promoted standby keeps the system identifier): the
    new cluster has not handed out N, and may not for months. On the primary such a mark is settled from the source
    (txid_status says "in the future": ``_committed`` falls back to the rows, still there, so the mark is taken
    back). An archive run of the day on a standby of it is refused, RETRYABLE, "is being removed by a run on the
    primary right now (its transaction N is still open)" - no removal is running, and every retry says the same
    until the cluster reaches N: a day that never archives, retried forever. Expected: an id in the future of a mark
    written long ago (its "at") is not taken for a removal running right now: the run is told to settle the day on
    the primary (not retryable), as for any other pending mark a standby meets."""
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.manifest import decode_manifest, encode_manifest
    from archive_pipeline.core.source import server_identity
    from archive_pipeline.local.local_stack import create_sample_events, wait_for_replay

    create_sample_events(conn, [DAY], rows_per_day=100, schema=schema)
    spec = TableSpec(name=f"{schema}.events", day_column="created_at", start_date=DAY,
                     partitioning={"mode": "declarative"}, retention={"keep_days": 1, "action": "drop"})
    first = archive_partition(conn, spec, DAY, store)
    mkey = first.key + ".manifest.json"
    manifest = decode_manifest(s3_client.get_object(Bucket=bucket, Key=mkey)["Body"].read())
    never = conn.execute("SELECT txid_current()").fetchone()[0] + 50_000_000  # given out on the lost timeline
    manifest["removed"] = {"at": (dt.datetime.now(dt.UTC) - dt.timedelta(days=7)).isoformat(), "action": "drop",
                           "state": "pending", "by": "dagster run x", "relation": f"{schema}.events",
                           "xid": str(never), "system": server_identity(conn)[1]}
    s3_client.put_object(Bucket=bucket, Key=mkey, Body=encode_manifest(manifest))
    wait_for_replay(pg, standby)
    with standby.connect() as replica:
        try:
            archive_partition(replica, spec, DAY, store)
        except ArchiveError as exc:
            error = exc
        else:
            error = None
    # Now: RemovalRefused, retryable=True, "... is being removed by a run on the primary right now (its transaction
    # N is still open)", on every retry.
    assert error is None or not error.retryable, (type(error).__name__, error.retryable, str(error))


def minio_wrong_region(handler, method, body):
    """MinIO's (and RustFS's, Garage-alikes') answer to a request signed for another region than the server's: its
    own words, which name the expected region only (not the wrong one in quotes, as AWS does)."""
    return _xml_error(400, "AuthorizationHeaderMalformed",
                      "The authorization header is malformed; the region is wrong; expecting 'eu-central-1'.")


def test_a_minio_bucket_in_another_region_is_still_told_as_the_region(conn, schema, ev, s3, bucket, temp_dir):
    """A user archives to a MinIO server configured with region eu-central-1 (MINIO_SITE_REGION) while
    ARCHIVE_S3_REGION is unset (us-east-1). MinIO answers every request 400 AuthorizationHeaderMalformed "The
    authorization header is malformed; the region is wrong; expecting 'eu-central-1'." Before the pq fix this was
    told as the region (set ARCHIVE_S3_REGION). The fix now takes only "region '<r>' is wrong" (AWS's wording) for
    the region, so MinIO's "the region is wrong" falls to the other AuthorizationHeaderMalformed: the
    credentials' remedy; the user checks keys that are right. Should: any "region ... is wrong" / "expecting
    '<region>'" answer is the region's (`errors._classify_boto`: the regex `region '[^']*' is wrong`)."""
    with DialectProxy(s3.endpoint_url, before=[minio_wrong_region]) as proxy:
        store = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)
        with pytest.raises(ArchiveError) as caught:
            archive_partition(conn, ev, DAY, store, temp_dir=temp_dir)
    error = caught.value
    said = f"{error.cause} {error.remedy}"
    assert "ARCHIVE_S3_REGION" in (error.remedy or ""), said
