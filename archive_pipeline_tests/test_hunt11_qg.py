"""Hunt 11, qg: the object store misbehaving in the read and list paths (through the fault proxy in front of
moto) and in the dialects of other S3-compatible stores. Each test fails on the current code because of a bug."""

from __future__ import annotations

import re

import pytest

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.store import MIN_PART_SIZE, DownloadError, S3Store
from archive_pipeline.core.verify import verify_archive
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests import fault_proxy
from archive_pipeline_tests.fault_proxy import FaultProxy
from archive_pipeline_tests.test_lifecycle import DAYS, spec_for


class _PartialHandler(fault_proxy._Handler):
    """Answers a GET whose path matches the server's ``partial`` pattern with 206 Partial Content: only the first
    ``partial_bytes`` of the object, a Content-Range that says so, and a Content-Length of what is sent (what a
    caching gateway that mishandles ranges does to a GET without a Range). The store keeps no checksums of its
    own (moto answers an x-amz-checksum-crc32 header, which most S3-compatible stores do not): dropped."""

    def _forward(self, method, body):
        status, headers, payload = super()._forward(method, body)
        pattern = getattr(self.server, "partial", None)
        path = fault_proxy.urllib.parse.unquote(fault_proxy.urllib.parse.urlsplit(self.path).path)
        if method == "GET" and status == 200 and pattern and re.search(pattern, path):
            sent = payload[:self.server.partial_bytes]
            headers = [(k, v) for k, v in headers if k.lower() != "content-range"
                       and not k.lower().startswith("x-amz-checksum")]
            headers.append(("Content-Range", f"bytes 0-{len(sent) - 1}/{len(payload)}"))
            return 206, headers, sent
        return status, headers, payload


class _PartialProxy(FaultProxy):
    def __init__(self, target_url: str, partial: str, partial_bytes: int) -> None:
        super().__init__(target_url)
        self._partial, self._partial_bytes = partial, partial_bytes

    def start(self) -> FaultProxy:
        self._server = fault_proxy._Server(("127.0.0.1", 0), _PartialHandler)
        self._server.proxy = self
        self._server.partial, self._server.partial_bytes = self._partial, self._partial_bytes
        self._thread = fault_proxy.threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                                    daemon=True)
        self._thread.start()
        return self


def test_a_206_partial_answer_to_a_whole_manifest_get_is_no_verdict_on_the_archive(conn, schema, s3, bucket, store):
    """A store without MD5 ETags (SSE-KMS: the documented ``verify_etags: false``) sits behind a caching gateway
    that answers a GET without a Range with ``206 Partial Content``: the first 100 bytes of the manifest,
    ``Content-Range: bytes 0-99/<size>`` and a Content-Length of 100; the store keeps no x-amz-checksum of
    its own (MinIO, Ceph and most S3-compatible stores answer none). The archive is intact.

    What happens: ``get_verified_bytes`` never looks at the status or the Content-Range, so the 100 bytes pass
    for the whole manifest; they do not decode, the second read gives the same 100 bytes, and
    ``decoded_manifest`` calls the manifest damaged: ``verify`` reports "manifest ... unreadable" for an intact
    archive (a verdict: the archive run would supersede it, the removal refuses it as untrusted).

    What should happen: an answer that says itself that it is partial (206, or a Content-Range whose total is
    larger than what came) is not the object: a retryable DownloadError ("the store's answer was not the
    object"), no verdict. Fix idea: in get_verified_bytes (and download_to) refuse a 206 / a ContentRange whose
    total differs from the bytes read, as the empty-body and error-document answers are refused."""
    create_sample_events(conn, DAYS, rows_per_day=50, schema=schema)
    spec = spec_for(schema, "drop")
    plain = S3Store(store.client, bucket, prefix="archive", part_size=MIN_PART_SIZE, verify_etags=False)
    archive_partition(conn, spec, DAYS[0], plain)
    key = f"archive/{schema}.events/2024/03/2024-03-10.jsonl.zst"
    expected = {"rows": 50}
    assert verify_archive(plain, key, expected) == []
    with _PartialProxy(s3.endpoint_url, r"\.manifest\.json$", 100) as proxy:
        behind = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE,
                         verify_etags=False)
        try:
            problems = verify_archive(behind, key, expected)
        except DownloadError as exc:
            assert exc.retryable
            return
    pytest.fail(f"a 206 answer of 100 bytes was taken for the whole manifest; verdict: {problems}")


class _UnannouncedEncodingHandler(fault_proxy._Handler):
    """Drops ``<EncodingType>url</EncodingType>`` from every ListObjectsV2 answer: the keys stay URL-encoded (as
    botocore asked for), but the answer does not say so, and botocore then leaves them encoded."""

    def _forward(self, method, body):
        status, headers, payload = super()._forward(method, body)
        if method == "GET" and "list-type=2" in self.path:
            payload = payload.replace(b"<EncodingType>url</EncodingType>", b"")
        return status, headers, payload


class _UnannouncedEncodingProxy(FaultProxy):
    def start(self) -> FaultProxy:
        self._server = fault_proxy._Server(("127.0.0.1", 0), _UnannouncedEncodingHandler)
        self._server.proxy = self
        self._thread = fault_proxy.threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                                    daemon=True)
        self._thread.start()
        return self


def test_restore_range_through_a_store_that_url_encodes_listed_keys_unannounced_skips_no_archived_day(
        conn, schema, s3, bucket, store):
    """A table whose name holds a space (``my events``), with a key template that puts the date before the table
    (``{prefix}/{date}/{table}.{ext}``, which the README allows). Its four days are archived. The store
    URL-encodes the keys of a listing, as botocore's ``encoding-type=url`` asks, but its answer does not carry
    ``<EncodingType>url</EncodingType>`` (a store's dialect; listing.existing_keys names it: "a store URL-encoding
    them unannounced"), so botocore hands back ``archive/2024-03-10/my%20events.jsonl.zst.manifest.json``.

    What happens: existing_keys guards against such a listing only by checking that each key starts with the
    prefix asked for; here the prefix (``archive/2024-03-1``'s directory, ``archive/``) holds no character that
    gets encoded, so the encoded keys pass; no manifest key, and no key of a day's prefix
    (``archive/2024-03-10/my events``) is found among them, and listed_absent calls every day unarchived: ``restore_days`` restores nothing and reports all four archived days as having no archive
    (the same listing makes ``list``/``verify``/``compare`` call them missing).

    What should happen: every archived day is restored (a listing whose keys are not as stored tells nothing of
    the days: each is read by its own key, as existing_keys does when the prefix is encoded). Fix idea: in
    existing_keys also refuse (return None) when a listed key holds a ``%XX`` escape, or compare with the keys
    the listing should show decoded; or send ``EncodingType`` explicitly and decode keys whenever it was sent."""
    from psycopg import sql

    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.restore import restore_days

    days = [DAYS[0] + __import__("datetime").timedelta(days=i) for i in range(4)]
    table = sql.Identifier(schema, "my events")
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, created_at timestamptz NOT NULL)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, timestamptz '2024-03-10 00:00+00' + g * interval '1 hour' "
                         "FROM generate_series(0, 95) g").format(table))
    spec = TableSpec(name=f"{schema}.my events", day_column="created_at", start_date=days[0],
                     key_template="{prefix}/{date}/{table}.{ext}")
    for day in days:
        archive_partition(conn, spec, day, store)
    with _UnannouncedEncodingProxy(s3.endpoint_url) as proxy:
        behind = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)
        done = restore_days(conn, behind, spec, days[0], days[-1], into="new", target=f"{schema}.restored")
        listed = [r for r in proxy.requests(method="GET") if "list-type=2" in r.query]
    assert listed, "the range was not listed at all"
    assert not done.missing, f"archived days reported without an archive: {[str(d) for d in done.missing]}"
    assert len(done.results) == 4


class _GatewayPageHandler(fault_proxy._Handler):
    """Answers every GET of a manifest with what a gateway in maintenance sends: 200, text/html, its own page,
    no ETag (the store behind it is not asked)."""

    PAGE = (b"<!DOCTYPE html>\n<html><head><title>Maintenance</title></head><body><h1>Service temporarily "
            b"unavailable</h1><p>Please try again in a few minutes.</p></body></html>\n")

    def _forward(self, method, body):
        path = fault_proxy.urllib.parse.urlsplit(self.path).path
        if method == "GET" and path.endswith(".manifest.json"):
            return 200, [("Content-Type", "text/html; charset=utf-8")], self.PAGE
        return super()._forward(method, body)


class _GatewayPageProxy(FaultProxy):
    def start(self) -> FaultProxy:
        self._server = fault_proxy._Server(("127.0.0.1", 0), _GatewayPageHandler)
        self._server.proxy = self
        self._thread = fault_proxy.threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                                    daemon=True)
        self._thread.start()
        return self


def test_a_manifest_get_answered_without_an_etag_is_not_taken_for_the_manifest(conn, schema, s3, bucket, store):
    """An intact archive, a store with MD5 ETags (``verify_etags`` on, the default). A gateway in front of the
    store is in maintenance and answers the manifest's GET with its own page: 200, ``text/html``, no ETag.

    What happens: get_verified_bytes checks the body against the ETag only "when the ETag is a plain MD5"; an
    answer without any ETag passes unverified, the page does not decode, the second read gives the same page, and
    ``verify`` reports "manifest ... unreadable: not valid JSON" for the intact archive (the archive run's skip
    check likewise takes it as damaged: a verdict, where the store was never asked).

    What should happen: with ``verify_etags`` on, every GET answer of the store carries the object's ETag; one
    without it is not the object's answer (as S3Store.head already refuses a HEAD without size or ETag): a
    retryable DownloadError, no verdict on the archive. Fix idea: in get_verified_bytes, when verify_etags is on
    and the answer has no ETag, treat it like the error-document answer (read again, then retryable)."""
    create_sample_events(conn, DAYS, rows_per_day=50, schema=schema)
    spec = spec_for(schema, "drop")
    archive_partition(conn, spec, DAYS[0], store)
    key = f"archive/{schema}.events/2024/03/2024-03-10.jsonl.zst"
    assert verify_archive(store, key, {"rows": 50}) == []
    with _GatewayPageProxy(s3.endpoint_url) as proxy:
        behind = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)
        try:
            problems = verify_archive(behind, key, {"rows": 50})
        except DownloadError as exc:
            assert exc.retryable
            return
    pytest.fail(f"a gateway's page without an ETag was taken for the manifest; verdict: {problems}")


class _TokenRefusedHandler(fault_proxy._Handler):
    """Pages every ListObjectsV2 one key at a time (``max-keys=1``, as a store with a small page size does), and
    answers the request for a next page as AWS answers a continuation token it does not take: 400 InvalidArgument
    "The continuation token provided is incorrect" (a token damaged on the way, or one the node that answers did
    not issue)."""

    def _handle(self):
        if self.command == "GET" and "list-type=2" in self.path:
            if "continuation-token=" in self.path:
                self.server.proxy._record(None, fault_proxy.Record("GET", self.path, "continuation-token", 400,
                                                                   "error"))
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._answer(400, [("Content-Type", "application/xml")], fault_proxy.error_xml(
                    "InvalidArgument", "The continuation token provided is incorrect"), "GET")
                return
            self.path += "&max-keys=1"
        super()._handle()


class _TokenRefusedProxy(FaultProxy):
    def start(self) -> FaultProxy:
        self._server = fault_proxy._Server(("127.0.0.1", 0), _TokenRefusedHandler)
        self._server.proxy = self
        self._thread = fault_proxy.threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                                    daemon=True)
        self._thread.start()
        return self


def test_a_refused_continuation_token_is_a_failed_listing_retried_not_a_refused_request(
        conn, schema, s3, bucket, store):
    """An archived day is archived again (the daily schedule's re-run: the skip-check lists the day's keys). The
    store pages its listing (one key a page here) and refuses the continuation token of its own first page with
    400 InvalidArgument "The continuation token provided is incorrect" (the token damaged on the way, or a
    load-balanced store whose other node did not issue it).

    What happens: the 400 goes through _wrap's generic classification: "the object store rejected the request
    ... not retried: a retry cannot fix this", remedy "read the error code in the message": a permanent failure
    of the day, whose Dagster step is not retried, for a listing that a new LIST from its start would read.

    What should happen: as for the other broken pagings list_keys already refuses (a page that hands back its
    own token, IsTruncated without a token: "the store's answer was not a listing", retried), a next page that
    the store refuses for its token is a failed listing: a retryable DownloadError naming the listing. Fix idea:
    in list_keys/_uploads_under, catch an InvalidArgument/400 on a request that carried a ContinuationToken
    (not the first page) and raise the retryable "not a listing" DownloadError."""
    create_sample_events(conn, DAYS, rows_per_day=50, schema=schema)
    spec = spec_for(schema, "drop")
    archive_partition(conn, spec, DAYS[0], store)
    with _TokenRefusedProxy(s3.endpoint_url) as proxy:
        behind = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)
        with pytest.raises(Exception) as caught:
            archive_partition(conn, spec, DAYS[0], behind)
        assert any(r.query == "continuation-token" for r in proxy.records), "no second page was asked for"
    exc = caught.value
    assert getattr(exc, "retryable", False), f"a refused continuation token failed the day for good: {exc}"
