"""Hunt 25 (cr): the store's less-trodden modes end to end: equal_parts (Cloudflare R2) and verify_etags=false
(stores whose ETags are not MD5s), with the recovery of a lost answer, verify, verify --deep and archive again."""

from __future__ import annotations

import datetime as dt
import hashlib

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import parse_config
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline.core.verify import verify_archive
from archive_pipeline_tests.fault_proxy import Fault
from archive_pipeline_tests.test_hunt8_nb import DialectProxy

DAY = dt.date(2024, 3, 10)


def kms_etags(handler, method, status, headers, payload):
    """A store whose data objects' ETags are not their MD5s (SSE-KMS, some gateways): each answer's ETag for the
    data object (a ``.csv`` key) is a stable stand-in derived from moto's, as such a store keeps one per object."""
    if handler.path.partition("?")[0].endswith(".csv"):
        headers = [(name, f'"kms-{hashlib.md5(value.encode()).hexdigest()[:24]}"' if name.lower() == "etag"
                    else value) for name, value in headers]
    return status, headers, payload


def test_a_lost_put_answer_recovered_without_md5_etags_records_our_md5_as_the_etag_and_verify_calls_it_replaced(
        conn, schema, s3, bucket, temp_dir):
    """Scenario: a store whose ETags are not MD5s (SSE-KMS: ``verify_etags: false``, as the README says for it),
    emulated by a proxy that answers every ETag of the data object as ``"kms-…"``. A small day (50 rows, csv/none:
    one PutObject). The PutObject's answer is lost (the store wrote it, then a 500: botocore sends it again, and
    the fresh key's If-None-Match answers 412). Then the HEAD that fetches the object's ETag for the record fails
    once (a 403 of a moment: a policy being rolled out, a gateway's hiccup); the HEAD after it, the stored size
    check, answers fine.

    Now: ``S3Upload._put_single`` finds the object ours (``held_after_refusal`` reads it back whole: right), then
    takes its ETag from ``_head_etag(md5_hex)``, which swallows the HEAD's failure and falls back to our own MD5;
    ``_checked`` then HEADs the object again (verify_etags off: its size is read back) and sees the store's real
    ETag, but keeps the MD5. The run is green and the manifest records ``etag: <our md5>``, which this store never
    gives. From then on the light ``verify`` (``stored_object_problems``: one HEAD) reports the intact archive as
    ``ETag: stored "kms-…", manifest <md5> (object replaced?)`` on every run, for ever (the multipart path,
    ``_finish`` after a lost Complete, has the same fallback: ``md5-of-parts-N``).

    Should: never record an ETag the store did not give: take it from the HEAD ``_checked`` makes anyway (or
    from ``holds``' own HEAD, which just read it), or fail the run retryable when no answer gives it, rather than
    make up one that the light check then reads as a replaced object."""
    conn.execute(f"CREATE TABLE {schema}.t (id int, at date, v text)")
    conn.execute(f"INSERT INTO {schema}.t SELECT g, %s, md5(g::text) FROM generate_series(1, 50) g", (DAY,))
    spec = parse_config({"tables": [{"name": f"{schema}.t", "day_column": "at", "start_date": DAY.isoformat(),
                                     "format": "csv", "compression": "none"}]}).tables[0]
    with DialectProxy(s3.endpoint_url, after=[kms_etags]) as proxy:
        lost = proxy.add(Fault(method="PUT", path=r"\.csv$", action="error", forward=True))
        # the first HEAD of the data key is holds' (it passes), the second _head_etag's (it fails once)
        blip = proxy.add(Fault(method="HEAD", path=r"\.csv$", action="error", status=403, code="AccessDenied",
                               skip=1))
        store = S3Store(proxy.client(), bucket, prefix="archive", part_size=MIN_PART_SIZE, verify_etags=False)
        result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
        assert lost.hits == 1 and blip.hits == 1  # (the premise: the answer was lost, the ETag's HEAD failed once)
        assert result.rows == 50
        stored = store.etag_in(store.client.head_object(Bucket=bucket, Key=result.key))
        problems = verify_archive(store, result.key, {})
    assert (result.etag, problems) == (stored, []), (result.etag, stored, problems)
