"""Hunt 8 (nb): S3-compatible stores that are not AWS and answer differently (MinIO, Ceph RGW, R2, B2, GCS's XML
interop, Wasabi, SeaweedFS, Garage). Each store's dialect is emulated by a proxy between boto3 and moto that
rewrites the answers (or refuses requests) as that store does. Real PostgreSQL and S3 over HTTP."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable

import pytest

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.keys import manifest_key, table_day_key
from archive_pipeline.core.store import S3Store
from archive_pipeline.core.verify import verify_archive
from archive_pipeline_tests import fault_proxy
from archive_pipeline_tests.fault_proxy import FaultProxy, error_xml
from archive_pipeline_tests.test_hunt3_bb import ev  # noqa: F401 - 20 rows on DAY, column mode

DAY = dt.date(2024, 3, 10)

# A dialect: (handler, method, body) -> None (forward as usual) or (status, headers, payload) to answer instead;
# and a rewrite of a forwarded answer: (handler, method, status, headers, payload) -> (status, headers, payload).
Before = Callable[..., tuple[int, list[tuple[str, str]], bytes] | None]
After = Callable[..., tuple[int, list[tuple[str, str]], bytes]]


_CHUNKED = "X-Dialect-Chunked"


class _DialectHandler(fault_proxy._Handler):
    def _forward(self, method: str, body: bytes):
        proxy = self.server.proxy
        for before in proxy.before:
            answer = before(self, method, body)
            if answer is not None:
                return answer
        status, headers, payload = super()._forward(method, body)
        for after in proxy.after:
            status, headers, payload = after(self, method, status, headers, payload)
        return status, headers, payload

    def _answer(self, status, headers, payload, method, rate=None):
        if not any(name == _CHUNKED for name, _ in headers):
            return super()._answer(status, headers, payload, method, rate)
        # an answer without Content-Length, its body sent in chunks (GCS's transcoded downloads)
        self.send_response_only(status)
        for name, value in headers:
            if name != _CHUNKED:
                self.send_header(name, value)
        self.send_header("Date", self.date_time_string())
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for start in range(0, len(payload), 65536):
            piece = payload[start:start + 65536]
            self.wfile.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class DialectProxy(FaultProxy):
    """A FaultProxy that speaks a store's dialect: ``before`` hooks may answer a request themselves (a header the
    store refuses), ``after`` hooks rewrite forwarded answers (an ETag's form, a listing's fields)."""

    def __init__(self, target_url: str, *, before: list[Before] = (), after: list[After] = ()) -> None:
        super().__init__(target_url)
        self.before, self.after = list(before), list(after)

    def start(self) -> DialectProxy:
        import threading

        self._server = fault_proxy._Server(("127.0.0.1", 0), _DialectHandler)
        self._server.proxy = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self


def _xml_error(status: int, code: str, message: str):
    return status, [("Content-Type", "application/xml")], error_xml(code, message)


def _query(handler) -> str:
    return handler.path.partition("?")[2]


# --- dialects -------------------------------------------------------------------------------------

def no_key_count(handler, method, status, headers, payload):
    """ListObjectsV2 answered without <KeyCount> (older Ceph RGW, some gateways)."""
    if method == "GET" and "list-type=2" in _query(handler):
        payload = re.sub(rb"<KeyCount>\d+</KeyCount>", b"", payload)
    return status, headers, payload


def upper_etags(handler, method, status, headers, payload):
    """ETags in upper-case hex, in headers and listings alike."""
    headers = [(k, v.upper() if k.lower() == "etag" else v) for k, v in headers]
    payload = re.sub(rb"<ETag>([^<]*)</ETag>", lambda m: b"<ETag>" + m.group(1).upper() + b"</ETag>", payload)
    return status, headers, payload


def refuse_checksum_headers_b2(handler, method, body):
    """Backblaze B2 (and others) after boto3 1.36: a 400 InvalidArgument for any x-amz-checksum-* header."""
    for name in handler.headers.keys():
        low = name.lower()
        if low.startswith("x-amz-checksum-") or low == "x-amz-sdk-checksum-algorithm":
            return _xml_error(400, "InvalidArgument", f"Unsupported header '{low}' received for this API call.")
    return None


def own_etag_form_in_conditions(handler, method, body):
    """The store takes its own (upper-case) ETag back in If-Match, as any store takes what it answered."""
    value = handler.headers.get("If-Match")
    if value is not None:
        handler.headers.replace_header("If-Match", value.lower())
    return None


def no_list_uploads_501(handler, method, body):
    """A store without ListMultipartUploads (501 NotImplemented), as some gateways and older R2."""
    if method == "GET" and re.search(r"(^|&)uploads(=|&|$)", _query(handler)):
        return _xml_error(501, "NotImplemented", "A header or query you provided implies functionality that is not "
                                                 "implemented.")
    return None


# --- tests ----------------------------------------------------------------------------------------

def test_a_store_whose_listings_have_no_key_count_can_be_archived_to(conn, schema, ev, s3, bucket, store, temp_dir):
    """A user points the archiver at an S3-compatible store whose ListObjectsV2 answers carry no ``<KeyCount>``
    (OpenStack Swift's s3api, Scality CloudServer before 8.1, versitygw: the field is optional in practice, and
    botocore reads such an answer fine: Name, Prefix, IsTruncated, Contents). Was: every run of every day fails
    before it reads a row, "the store answered 200 without a listing (Name, KeyCount missing)", retryable, with
    the remedy to check the network path; retries never help, and nothing names the store's dialect. Should: a
    listing with its Name and its keys is a listing (count the keys it lists where it says no KeyCount), so the
    day is archived and verifies; an empty 200 (no Name) is still a failed read."""
    with DialectProxy(s3.endpoint_url, after=[no_key_count]) as proxy:
        swift = S3Store(proxy.client(max_attempts=1), bucket, prefix=store.prefix)
        result = archive_partition(conn, ev, DAY, swift, temp_dir=temp_dir)
        assert result.rows == 20
        assert verify_archive(swift, table_day_key(ev, DAY, store.prefix), {}, deep=True, temp_dir=temp_dir) == []


def test_a_store_that_refuses_boto3s_checksum_headers_with_400_is_named_with_the_setting(conn, schema, ev, s3, bucket,
                                                                                          store, temp_dir):
    """A user archives to Backblaze B2 (or another store that predates boto3 1.36's default CRC32 headers) with the
    default client. B2 answers each PUT 400 InvalidArgument "Unsupported header 'x-amz-checksum-crc32' received for
    this API call." The README says such stores need AWS_REQUEST_CHECKSUM_CALCULATION=when_required, and a 501 for
    the same header is answered with that remedy. Was: the 400 is "the object store rejected the request", remedy
    "read the error code in the message": nothing points at the setting that fixes it. Should: a refusal of an
    ``x-amz-checksum-*`` header (any status) names AWS_REQUEST_CHECKSUM_CALCULATION=when_required, as the 501 does;
    not retryable, nothing published."""
    from archive_pipeline.core.errors import ArchiveError

    with DialectProxy(s3.endpoint_url, before=[refuse_checksum_headers_b2]) as proxy:
        b2 = S3Store(proxy.client(max_attempts=1, request_checksum_calculation="when_supported"), bucket,
                     prefix=store.prefix)
        with pytest.raises(ArchiveError) as caught:
            archive_partition(conn, ev, DAY, b2, temp_dir=temp_dir)
    said = f"{caught.value} {caught.value.remedy}"
    assert "x-amz-checksum-crc32" in said  # (the premise: the store refused the header)
    assert "AWS_REQUEST_CHECKSUM_CALCULATION" in said, said
    assert not caught.value.retryable
    assert store.head(manifest_key(table_day_key(ev, DAY, store.prefix))) is None


def test_a_store_that_writes_its_md5_etags_in_upper_case_is_not_called_corrupting(conn, schema, ev, s3, bucket, store,
                                                                                   temp_dir):
    """A user's store answers every ETag as the MD5 of the bytes in upper-case hex (``"B75D82...BA8"``: an ETag is
    an opaque string, and a hex digest's case carries no meaning). Was: every PUT is taken for a corrupted write,
    sent three times and withdrawn, "arrived corrupted 3 times (ETag B75D823F..., our MD5 b75d823f...): the network
    or store alters data", the same digest in both; every run fails, and the remedy is to turn verify_etags off,
    which gives up the very check that passes. Should: an ETag that is our MD5 in another case is our MD5; the day
    is archived and verifies."""
    with DialectProxy(s3.endpoint_url, before=[own_etag_form_in_conditions], after=[upper_etags]) as proxy:
        upper = S3Store(proxy.client(max_attempts=1), bucket, prefix=store.prefix)
        result = archive_partition(conn, ev, DAY, upper, temp_dir=temp_dir)
        assert result.rows == 20
        assert verify_archive(upper, table_day_key(ev, DAY, store.prefix), {}, deep=True, temp_dir=temp_dir) == []


class R2Parts:
    """Cloudflare R2's (and Mega S4's) multipart rule: every part but the last the same size, checked at
    CompleteMultipartUpload (400 InvalidPart "All non-trailing parts must have the same length.")."""

    def __init__(self) -> None:
        self.sizes: dict[str, dict[int, int]] = {}

    def before(self, handler, method, body):
        import urllib.parse

        query = urllib.parse.parse_qs(_query(handler), keep_blank_values=True)
        upload = (query.get("uploadId") or [None])[0]
        if method == "PUT" and upload and "partNumber" in query:
            self.sizes.setdefault(upload, {})[int(query["partNumber"][0])] = len(body)
        elif method == "POST" and upload:
            sizes = [size for _, size in sorted(self.sizes.get(upload, {}).items())]
            if len(set(sizes[:-1])) > 1 or (len(sizes) > 1 and sizes[-1] > sizes[0]):
                return _xml_error(400, "InvalidPart", "All non-trailing parts must have the same length.")
        return None


def test_r2s_refusal_of_grown_parts_names_equal_parts_and_is_not_retried(s3, bucket, temp_dir):
    """A user archives to Cloudflare R2 without ``equal_parts`` (the README: R2 needs it), and a day outgrows its
    estimate: past the 1,000th part the parts grow (0.1 % a part), so they are no longer all the same size. R2
    refuses the CompleteMultipartUpload with 400 InvalidPart "All non-trailing parts must have the same length."
    (here the growth is brought forward to the second part, by the plan a day past its 1,000th part follows, so
    the test sends 12 MiB instead of 8 GB). Was: InvalidPart is read as "the multipart upload disappeared or
    conflicted with another writer", retryable: every retry re-reads and re-sends the whole (very large) day and
    is refused again, and nothing mentions equal_parts. Should: not retryable, the cause and remedy naming the
    store's equal-size rule and ``equal_parts`` (ArchiveStoreResource.equal_parts: true)."""
    import hashlib
    import os

    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.store import MIN_PART_SIZE, MiB, PartPlan

    class PastThousandParts(PartPlan):  # the plan's own rule, with its growth from the second part on
        def size_at(self, offset: int) -> int:
            return self.first if offset == 0 else self.first + MiB

    class Store(S3Store):
        def plan(self, expected_size=None):
            return PastThousandParts(first=MIN_PART_SIZE, equal=False)

    r2 = R2Parts()
    data = os.urandom(2 * MIN_PART_SIZE + 2 * MiB)
    path = temp_dir / "day"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        with DialectProxy(s3.endpoint_url, before=[r2.before]) as proxy:
            store = Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)
            upload = store.begin("archive/big.jsonl.zst", content_type="application/zstd", fresh=True,
                                 metadata={"table": "public.events", "day": "2024-03-10"})
            upload.grow(fd, len(data))
            with pytest.raises(ArchiveError) as caught:
                upload.finish(fd, len(data), hashlib.md5(data).hexdigest())
            assert proxy.requests(method="POST", query="uploadId="), "(premise: the upload was completed)"
    finally:
        os.close(fd)
    said = f"{caught.value} {caught.value.remedy}"
    assert "same length" in said  # (the premise: R2 refused the parts)
    assert not caught.value.retryable, said
    assert "equal_parts" in said, said


def gcs_decompressive_transcoding(handler, method, status, headers, payload):
    """Google Cloud Storage (XML API): an object stored with ``Content-Encoding: gzip`` is served decompressed to a
    client that does not send ``Accept-Encoding: gzip`` (botocore sends ``identity``), without Content-Length or
    Content-Encoding, the stored encoding in ``x-goog-stored-content-encoding``; its ETag stays the stored bytes'."""
    import gzip

    encoding = next((v for k, v in headers if k.lower() == "content-encoding"), "")
    if method != "GET" or status != 200 or encoding.lower() != "gzip" or \
            "gzip" in (handler.headers.get("Accept-Encoding") or ""):
        return status, headers, payload
    stored = len(payload)
    payload = gzip.decompress(payload)
    headers = [(k, v) for k, v in headers if k.lower() not in ("content-encoding", "content-length")]
    headers += [("x-goog-stored-content-encoding", "gzip"), ("x-goog-stored-content-length", str(stored)),
                (_CHUNKED, "1")]
    return status, headers, payload


@pytest.mark.parametrize("verify_etags", [True, False])
def test_a_gzip_archive_on_gcs_restores_and_verifies(conn, schema, ev, s3, bucket, store, temp_dir, verify_etags):
    """A user archives to Google Cloud Storage through its S3 (XML) interoperability with ``compression: gzip``. The
    object is stored with ``Content-Encoding: gzip`` (README: "Content-Encoding is zstd or gzip where a registered
    encoding exists"), and GCS serves such an object *decompressed* to any GET that does not accept gzip
    (decompressive transcoding; botocore sends ``Accept-Encoding: identity``), under the stored bytes' ETag. Was:
    every restore and deep verification of the day fails as "came back corrupted ... retried", forever, with the
    remedy to turn verify_etags off; with verify_etags off, ``verify --deep`` calls the intact archive damaged
    ("two complete downloads agree") and restore refuses it as corrupt. Should: the archive is read as stored (ask
    for the stored encoding: ``Accept-Encoding: gzip``, or store it with ``Cache-Control: no-transform``), so the
    day restores with its fingerprint proven and verifies clean."""
    from archive_pipeline.core.restore import restore_day

    gz = ev.model_copy(update={"compression": "gzip"})
    with DialectProxy(s3.endpoint_url, after=[gcs_decompressive_transcoding]) as proxy:
        gcs = S3Store(proxy.client(max_attempts=1), bucket, prefix=store.prefix, verify_etags=verify_etags)
        assert archive_partition(conn, gz, DAY, gcs, temp_dir=temp_dir).rows == 20
        assert verify_archive(gcs, table_day_key(gz, DAY, store.prefix), {}, deep=True, temp_dir=temp_dir) == []
        restored = restore_day(conn, gcs, gz, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    assert restored.rows == 20 and "equals the manifest's" in restored.check
