"""Hunt 8 (nf): an adversarial review of the session's newest product changes (f51a041..5986e35): the shared
legacy lock, the refusal of unrecorded composite shapes, the multibyte JSON escape check, the grant remedy for
one name of several objects, and the store's dialects (KeyCount, ETag case, Accept-Encoding: gzip,
Cache-Control: no-transform). Real PostgreSQL and S3 (moto) over HTTP."""

from __future__ import annotations

import datetime as dt
import gzip

from archive_pipeline_tests.test_hunt8_nb import _CHUNKED, DialectProxy
from archive_pipeline_tests.test_hunt3_bb import ev  # noqa: F401 - 20 rows on DAY
from archive_pipeline_tests.test_hunt8_nd import run_old

DAY = dt.date(2024, 3, 10)


def test_old_jsonl_archive_restored_into_a_composite_whose_fields_moved_is_not_proven_with_swapped_fields(
        pg, s3, conn, schema, bucket, store, temp_dir):
    """A user archived a day with the previous version in JSONL (the default format); a column is of a composite
    type ``pair (a int, b int)``. Its manifest has no ``columns[].shape``. Later the type's fields were moved
    (``ALTER TYPE pair DROP ATTRIBUTE a, ADD ATTRIBUTE a int``: now ``(b, a)``), and the user restores the day
    with today's code into a new table. The new refusal of unrecorded shapes (restore._refuse_unrecorded_shapes)
    skips JSONL, saying "JSONL names each field, so it loads by name", but JSONL writes a composite as its
    type's *output text*, a string ``"(1,101)"`` (formats/jsonl.py jsonl_column: "string: the type's output,
    read back with the type's input function"), which is as positional as CSV's. Was/is: the archived a=1, b=101
    load as b=1, a=101 and the restore reports success with its fingerprint proven. Should: refused as the same
    archive in CSV is (or loaded into the right fields)."""
    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.restore import restore_day

    conn.execute(f"CREATE TYPE {schema}.pair AS (a int, b int)")
    conn.execute(f"CREATE TABLE {schema}.ev (id int PRIMARY KEY, at date, p {schema}.pair)")
    conn.execute(f"INSERT INTO {schema}.ev SELECT g, %s, ROW(g, 100 + g)::{schema}.pair "
                 "FROM generate_series(1, 3) g", (DAY,))
    args = {"name": f"{schema}.ev", "day_column": "at", "start_date": DAY.isoformat(), "format": "jsonl"}
    done = run_old(pg, s3, bucket, args, [("archive", DAY)], temp_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    conn.execute(f"ALTER TYPE {schema}.pair DROP ATTRIBUTE a, ADD ATTRIBUTE a int")
    try:
        restore_day(conn, store, TableSpec(**args), DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    except ArchiveError:
        return  # refused: nothing loaded into the wrong fields
    restored = conn.execute(f"SELECT id, (p).a, (p).b FROM {schema}.back ORDER BY id").fetchall()
    assert restored == [(g, g, 100 + g) for g in (1, 2, 3)], f"restored as proven, fields swapped: {restored}"


def gzip_on_the_fly(handler, method, status, headers, payload):
    """A reverse proxy in front of the store with ``gzip on; gzip_types application/json text/csv ...`` (nginx,
    a gateway, a CDN): a 200 GET whose client accepts gzip and whose body has no Content-Encoding of its own is
    sent gzip-compressed (Content-Encoding: gzip, chunked, the ETag made weak), as nginx does. A client that
    accepts only ``identity`` (botocore's default) gets the body as stored."""
    kinds = ("application/json", "text/", "application/x-ndjson")
    got = {k.lower(): v for k, v in headers}
    if method != "GET" or status != 200 or "gzip" not in (handler.headers.get("Accept-Encoding") or "") or \
            "content-encoding" in got or not got.get("content-type", "").startswith(kinds):
        return status, headers, payload
    headers = [(k, f"W/{v}" if k.lower() == "etag" else v) for k, v in headers
               if k.lower() != "content-length"] + [("Content-Encoding", "gzip"), (_CHUNKED, "1")]
    return status, headers, gzip.compress(payload)


def test_an_archive_behind_a_proxy_that_gzips_on_the_fly_still_verifies(conn, schema, ev, s3, bucket, store,
                                                                         temp_dir):
    """A user's store sits behind a reverse proxy that compresses responses for clients that accept gzip (nginx
    ``gzip on`` with application/json among its gzip_types: a common setup in front of MinIO or Ceph RGW).
    botocore asks for ``Accept-Encoding: identity``, so until 5986e35 every read got the stored bytes. Now the
    store registers a handler on the client that sends ``Accept-Encoding: gzip`` on every GetObject
    (store._read_as_stored), for GCS's sake, and botocore never decodes a body: the manifest (application/json,
    no Content-Encoding of its own) comes back as gzip bytes, so verify (and restore, and a re-run that reads the
    manifest) takes an intact archive for an unreadable or damaged one. Should: an object the archiver wrote
    without a Content-Encoding is read as stored (ask for gzip only where the object is stored gzip-encoded, or
    decode a Content-Encoding the object was not written with); the day verifies clean."""
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.keys import table_day_key
    from archive_pipeline.core.store import S3Store
    from archive_pipeline.core.verify import verify_archive

    with DialectProxy(s3.endpoint_url, after=[gzip_on_the_fly]) as proxy:
        behind = S3Store(proxy.client(max_attempts=1), bucket, prefix=store.prefix)
        assert archive_partition(conn, ev, DAY, behind, temp_dir=temp_dir).rows == 20
        assert verify_archive(behind, table_day_key(ev, DAY, store.prefix), {}, deep=True, temp_dir=temp_dir) == []


def test_the_users_own_client_still_presigns_urls_a_browser_can_fetch(s3, bucket, store):
    """A user builds the store over their own boto3 client (``S3Store(client, bucket)``, as the README's Python API
    and environment.py do) and uses that client for other work too, e.g. handing out presigned download links
    (``client.generate_presigned_url("get_object", ...)``, SigV4). Since 5986e35 the store's constructor registers
    an event handler on the *user's* client (store._read_as_stored: ``before-sign.s3.GetObject`` sets
    ``Accept-Encoding: gzip``), and presigning goes through before-sign too: the URL now signs
    ``X-Amz-SignedHeaders=accept-encoding;host``, so any browser, curl or wget that does not send exactly
    ``Accept-Encoding: gzip`` gets 403 SignatureDoesNotMatch from S3 (moto checks no signature, so the test reads
    the URL). Should: the store leaves the client it is given as it was (register on a copy, or only on the
    archiver's own requests, and never on presigning); the link signs ``host`` alone, as before."""
    import boto3
    from botocore.config import Config

    from archive_pipeline.core.store import S3Store

    client = boto3.client("s3", endpoint_url=s3.endpoint_url, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing",
                          config=Config(signature_version="s3v4"))
    before = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "report.csv"})
    assert "X-Amz-SignedHeaders=host&" in before  # (the premise)
    S3Store(client, bucket, prefix=store.prefix)
    after = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "report.csv"})
    assert "X-Amz-SignedHeaders=host&" in after, after


def test_a_store_with_upper_case_etags_gets_its_part_etags_back_as_it_answered_them(s3, bucket, temp_dir):
    """A user's store answers ETags in upper-case hex (the dialect test_hunt8_nb emulates) and, as S3 does,
    checks CompleteMultipartUpload's part list against the parts' ETags as it answered them (an ETag is an
    opaque string: a mismatch is 400 InvalidPart). Until 5986e35 such a user ran with ``verify_etags: false``
    (the remedy the archiver gave for it), and every part's ETag went back to the store exactly as answered,
    so multipart uploads (every day bigger than one part) completed. Now etag_text lower-cases any 32-hex ETag
    before it is kept (store._etag, used for the part list too: ``_Part(number, f'"{etag}"', ...)``), so the
    store is sent ETags it never gave and refuses every Complete: every big day fails, verify_etags or not.
    Should: compare ETags case-insensitively, but send the store back the ETag it answered."""
    import hashlib
    import os
    import re

    from archive_pipeline.core.store import MIN_PART_SIZE, MiB, S3Store
    from archive_pipeline_tests import fault_proxy
    from archive_pipeline_tests.test_hunt8_nb import _DialectHandler, upper_etags

    class StrictParts(_DialectHandler):
        def _forward(self, method, body):
            if method == "POST" and "uploadId=" in self.path:
                sent = re.findall(rb"<ETag>([^<]*)</ETag>", body)
                if any(etag != etag.upper() for etag in sent):  # not an ETag this store answered
                    return 400, [("Content-Type", "application/xml")], fault_proxy.error_xml(
                        "InvalidPart", "One or more of the specified parts could not be found. The part may not "
                        "have been uploaded, or the specified entity tag may not match the part's entity tag.")
                body = re.sub(rb"<ETag>([^<]*)</ETag>", lambda m: b"<ETag>" + m.group(1).lower() + b"</ETag>", body)
            return super()._forward(method, body)

    class Proxy(DialectProxy):
        def start(self):
            import threading

            self._server = fault_proxy._Server(("127.0.0.1", 0), StrictParts)
            self._server.proxy = self
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                            daemon=True)
            self._thread.start()
            return self

    data = os.urandom(2 * MIN_PART_SIZE + MiB)
    path = temp_dir / "day"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        with Proxy(s3.endpoint_url, after=[upper_etags]) as proxy:
            store = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE,
                            verify_etags=False)
            upload = store.begin("archive/big.jsonl.zst", content_type="application/zstd", fresh=True,
                                 metadata={"table": "public.events", "day": "2024-03-10"})
            upload.grow(fd, len(data))
            upload.finish(fd, len(data), hashlib.md5(data).hexdigest())
            assert [r.status for r in proxy.requests(method="POST", query="uploadId=")] == [200]
    finally:
        os.close(fd)
