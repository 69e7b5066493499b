"""Hunt 16 (va): S3 answers that are wrong but look plausible (a stale or misrouted GET, a HEAD and a GET that
disagree, weak ETags, listings) in the paths that read archives back: the archive run's own tidying, verify,
restore and the removal's last checks."""

from __future__ import annotations

import datetime as dt
import json
import re
import socket
import urllib.parse

import pytest
from psycopg import sql

from archive_pipeline.core import keys
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import parse_config
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline_tests import fault_proxy
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.test_hunt10_pe import small_table

DAY = dt.date(2024, 3, 1)


def _spec(schema: str, **extra):
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": DAY.isoformat(), "format": "csv",
             "compression": "none", **extra}
    return parse_config({"tables": [table]}).tables[0]


def answer_from(monkeypatch, rewrites: dict[str, str], methods: tuple[str, ...] = ("GET", "HEAD")) -> None:
    """Make every FaultProxy answer a GET/HEAD of a path in ``rewrites`` with the store's answer for another path
    (a cache or a lagging replica answering with another version, a gateway routing a read to another key): the
    store's own, well-formed answer, ETag and all, of the wrong object."""
    original = fault_proxy._Handler._forward

    def forward(self, method, body):
        split = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(split.path)
        if method in methods and path in rewrites:
            saved = self.path
            self.path = urllib.parse.quote(rewrites[path]) + (f"?{split.query}" if split.query else "")
            try:
                return original(self, method, body)
            finally:
                self.path = saved
        return original(self, method, body)

    monkeypatch.setattr(fault_proxy._Handler, "_forward", forward)


def cut_without_length(monkeypatch, path_re: str, keep: int) -> None:
    """Make every FaultProxy answer a 200 GET of a path matching ``path_re`` the way a gateway with a response size
    limit does: streamed without Content-Length (read until the connection closes), cut after ``keep`` bytes, the
    same way every time."""
    original = fault_proxy._Handler._answer

    def answer(self, status, headers, payload, method, rate=None):
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        if method == "GET" and status == 200 and re.search(path_re, path) and len(payload) > keep:
            self.send_response_only(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(payload[:keep])
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return None
        return original(self, status, headers, payload, method, rate)

    monkeypatch.setattr(fault_proxy._Handler, "_answer", answer)


def multipart_day(conn, schema: str, s3_client, bucket: str):
    """A day whose CSV (about 6.9 MB) is uploaded in two parts: its ETag is no MD5 (``…-2``)."""
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at timestamptz NOT NULL, note text)").format(
        sql.Identifier(schema, "ev")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s::timestamptz + g * interval '1 second', repeat(md5(g::text), 30) "
                         "FROM generate_series(1, 7000) g").format(sql.Identifier(schema, "ev")), (f"{DAY} 00:00+00",))
    spec = _spec(schema)
    result = archive_partition(conn, spec, DAY, S3Store(s3_client, bucket, prefix="archive", part_size=MIN_PART_SIZE))
    assert result.parts == 2 and result.etag.endswith("-2"), result.etag
    return spec, result


# ----------------------------------------------------------------------------------------------


def test_a_stale_manifest_read_does_not_make_the_archive_run_delete_the_current_generation(
        conn, schema, s3_client, bucket, s3, monkeypatch):
    """The day is archived (generation 1, 20 rows); 5 rows are deleted and the day is archived again with overwrite:
    generation 2 (``….g2.csv``, 15 rows) is the day's object now, and its manifest keeps generation 1 under
    ``kept``. A later plain run of the day reads the manifest through a cache / lagging replica that answers
    the GET with the manifest as it was before the overwrite (whole, its ETag its MD5: nothing in the bytes is
    wrong). The day's listing, made first, shows the manifest under its current ETag, which is not the GET's.

    Now: read_existing trusts the stale manifest (it names generation 1, which the listing shows as stored), and
    the run's tidying (leftovers.tidy_day) takes generation 2 for "a generation no manifest names" and DELETES it:
    the object the day's real manifest names is gone (the archive is lost), and the run then fails with a
    LateRowsError ("it has 15 rows now, the archive holds 20") about an archive that is not the current one.

    Should: a manifest whose GET answered another ETag than the day's listing shows for it is not the stored
    manifest: nothing is deleted on its word (the read is retried, or the run fails retryable), and generation 2
    stays. Fix idea: get the manifest's ETag out of get_verified_bytes and compare it with the listing's ETag of
    the manifest key in read_existing (a mismatch: read again, then a retryable DownloadError), before _tidy."""
    small_table(conn, schema, days=[DAY], rows=20)
    spec = _spec(schema)
    direct = S3Store(s3_client, bucket, prefix="archive", part_size=MIN_PART_SIZE)
    first = archive_partition(conn, spec, DAY, direct)
    mkey = keys.manifest_key(first.key)
    s3_client.copy_object(Bucket=bucket, Key="elsewhere/before.manifest.json", CopySource={"Bucket": bucket, "Key": mkey})
    conn.execute(sql.SQL("DELETE FROM {} WHERE id % 4 = 0").format(sql.Identifier(schema, "ev")))
    second = archive_partition(conn, spec, DAY, direct, overwrite=True)
    current = json.loads(s3_client.get_object(Bucket=bucket, Key=mkey)["Body"].read())
    assert current["object"]["key"] == second.key != first.key, current["object"]
    assert [k["key"] for k in current.get("kept", [])] == [first.key]

    with FaultProxy(s3.endpoint_url) as proxy:
        answer_from(monkeypatch, {f"/{bucket}/{mkey}": f"/{bucket}/elsewhere/before.manifest.json"})
        stale = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)
        try:
            archive_partition(conn, spec, DAY, stale)
        except ArchiveError:
            pass  # a failure is fine (retryable or not): what it must not do is delete the day's object
        deleted = [r.path for r in proxy.requests(method="DELETE")]

    stored = {o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket, Prefix="archive/")["Contents"]}
    assert second.key in stored, (f"the object the day's current manifest names was deleted on the word of a stale "
                                  f"manifest read: {deleted}")


def test_verify_download_is_not_green_when_the_get_serves_another_version_than_the_head_names(
        conn, schema, s3_client, bucket, s3, monkeypatch):
    """The day's object is replaced in the store by other bytes (another tool writing at the key; a store that
    ignores conditional writes), so its HEAD answers another size and ETag than the manifest records. The GET of
    ``verify --download`` is answered by a cache / lagging replica with the object as it was archived: whole, its
    ETag the recorded MD5, so every digest of the download is as recorded.

    Now: verify_archive(deep=True) sees the HEAD's problems, downloads "to let the digests decide", finds them as
    recorded, logs that the store's HEAD answers "are not to be trusted" and returns no problem: a green verdict
    for an object the store no longer holds. The download's own ETag (the old one) is not the HEAD's (the new
    one): the two answers are of two different versions, and the download proves only the one that is gone.
    (The HEAD-is-wrong cases the fallback is for, an object copied onto itself in other parts and a gateway's
    wrong Content-Length, have the GET's ETag equal to the HEAD's.)

    Should: not green: the HEAD's problems stand, or the check fails retryable saying the store answered a HEAD
    and a GET of two different versions. Fix idea: in verify_archive's deep fallback, believe the download over
    the HEAD only when the download's ETag (Downloaded.etag) is the HEAD's ETag."""
    from archive_pipeline.core.verify import verify_archive

    small_table(conn, schema, days=[DAY], rows=20)
    spec = _spec(schema)
    result = archive_partition(conn, spec, DAY, S3Store(s3_client, bucket, prefix="archive", part_size=MIN_PART_SIZE))
    s3_client.copy_object(Bucket=bucket, Key="elsewhere/as-archived.csv",
                          CopySource={"Bucket": bucket, "Key": result.key})
    s3_client.put_object(Bucket=bucket, Key=result.key, Body=b"id,at,note\n1,2024-03-01 00:00:00+00,replaced\n")
    expected = {"bytes": result.bytes, "md5": result.md5, "rows": result.rows}

    with FaultProxy(s3.endpoint_url) as proxy:
        # only GETs are answered by the "cache"; the HEAD goes to the store itself
        answer_from(monkeypatch, {f"/{bucket}/{result.key}": f"/{bucket}/elsewhere/as-archived.csv"}, ("GET",))
        store = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)
        light = verify_archive(store, result.key, expected)
        assert light, "the HEAD shows the replaced object"
        try:
            problems = verify_archive(store, result.key, expected, deep=True)
        except ArchiveError as exc:
            assert exc.retryable, exc
            return
    assert problems, ("verify --download called the archive intact: the GET's bytes were the archived ones, but "
                      "under another ETag than the object's HEAD names (another version, served from a cache)")


def test_light_verify_does_not_call_an_object_replaced_for_a_weak_etag_of_its_own_md5(
        conn, schema, s3_client, bucket, s3):
    """A gateway in front of the store (nginx, a CDN: what they do to a response they may re-encode) answers the
    object's HEAD with its ETag marked weak: ``W/"<md5>"``, the recorded MD5 itself. Size as recorded.

    Now: the light check (verify without --download, the archive_proven check's first step) reports
    ``ETag: stored W/"320f…", manifest 320f… (object replaced?)``: an intact archive is a problem, and the message
    says the object may have been replaced, while the store's own digest in the ETag is the recorded one.
    etag_text strips quotes and case but not the ``W/`` prefix.

    Should: a weak ETag compares by its opaque value (RFC 9110's weak comparison): the HEAD matches the manifest
    and the light check passes. Fix idea: etag_text drops a leading ``W/`` before stripping the quotes."""
    from archive_pipeline.core.verify import verify_archive

    small_table(conn, schema, days=[DAY], rows=20)
    spec = _spec(schema)
    result = archive_partition(conn, spec, DAY, S3Store(s3_client, bucket, prefix="archive", part_size=MIN_PART_SIZE))
    expected = {"bytes": result.bytes, "md5": result.md5, "rows": result.rows}
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="HEAD", path=r"\.csv$", action="set_header", header=("ETag", f'W/"{result.md5}"'),
                        times=None))
        store = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)
        problems = verify_archive(store, result.key, expected)
        assert proxy.requests(method="HEAD"), proxy.records
    assert problems == [], problems


def test_verify_download_does_not_call_a_multipart_object_damaged_from_two_downloads_cut_short(
        conn, schema, s3_client, bucket, s3, monkeypatch):
    """A multipart archive (6.9 MB, ETag ``…-2``: no MD5 to check a download against). A gateway in front of the
    store streams GET answers without Content-Length and cuts each after 3 MiB (a response size limit), the same
    way every time. The object's HEAD gives its full, recorded size.

    Now: ``verify --download`` (verify_archive deep) downloads 3 MiB, which hashes to another MD5 than recorded
    (damaged=None: the way or the store), downloads a second time, gets the same 3 MiB, and reports
    ``md5: recorded …, stored object hashes to … (two complete downloads agree)``: the archive is called damaged,
    though neither download was complete (3,145,728 bytes of the 6,921,904 the manifest and the HEAD say): the
    count of bytes received is never compared with the expected size when the answer carries no Content-Length.

    Should: a download that ends before the expected size is a failed read (retryable DownloadError naming the
    bytes received and expected), never a verdict on the archive. Fix idea: in S3Store.download_to, compare the
    bytes received with ``expected_size`` whatever Content-Length said (and _stored_bytes_differ only takes a
    second download of the recorded size as proof)."""
    from archive_pipeline.core.verify import verify_archive

    _, result = multipart_day(conn, schema, s3_client, bucket)
    expected = {"bytes": result.bytes, "md5": result.md5, "rows": result.rows}
    with FaultProxy(s3.endpoint_url) as proxy:
        cut_without_length(monkeypatch, r"\.csv$", 3 * 1024 * 1024)
        store = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)
        with pytest.raises(ArchiveError) as raised:
            problems = verify_archive(store, result.key, expected, deep=True)
            pytest.fail(f"two downloads cut short were taken for a verdict on the archive: {problems}")
    assert raised.value.retryable and getattr(raised.value, "damaged", None) is not True, raised.value


def test_a_304_to_an_unconditional_head_is_a_retryable_answer_that_was_not_the_object(
        conn, schema, s3_client, bucket, s3):
    """A caching gateway in front of the store answers the object's HEAD ``304 Not Modified``, though the archiver
    sent no condition (no If-None-Match / If-Modified-Since): an answer that is not the object's, like the 200
    without size and ETag that store.head already refuses as retryable.

    Now: the light check fails with ``checking s3://…/2024-03-01.csv (HeadObject) failed: the object store
    rejected the request (ClientError: An error occurred (304) …); not retried: a retry cannot fix this; to fix:
    read the error code in the message``: a permanent failure (the Dagster check and the removal are not retried)
    whose remedy says nothing, for an answer no request of the archiver can legitimately get.

    Should: a 304 (or any 3xx but the region's 301) to a request without a condition is the store's answer not
    being the object: a retryable DownloadError whose cause says so (``the store's answer was not the object``),
    with the remedy to check the gateway / network path. Fix idea: in errors._s3_code (or store.head/_wrap),
    classify status 304 as retryable, cause "not the object's answer", remedy about caching proxies."""
    from archive_pipeline.core.verify import verify_archive

    small_table(conn, schema, days=[DAY], rows=20)
    spec = _spec(schema)
    result = archive_partition(conn, spec, DAY, S3Store(s3_client, bucket, prefix="archive", part_size=MIN_PART_SIZE))
    expected = {"bytes": result.bytes, "md5": result.md5, "rows": result.rows}
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="HEAD", path=r"\.csv$", action="error", status=304, code="NotModified", times=None))
        store = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)
        with pytest.raises(ArchiveError) as raised:
            verify_archive(store, result.key, expected)
        assert [r.status for r in proxy.requests(method="HEAD")][:1] == [304], proxy.records
    assert raised.value.retryable, raised.value
    assert "rejected the request" not in str(raised.value), raised.value
