"""Hunt 6 (lc): S3 faults and corrupted answers on the read side: listings (pagination, truncation),
HEAD/GET of manifests and objects, deletes. Each test fails on the current code because of a bug."""

from __future__ import annotations

import datetime as dt
import re
import threading
import urllib.parse

import pytest

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.plan import lookup_manifests
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests import fault_proxy
from archive_pipeline_tests.fault_proxy import FaultProxy

DAYS = [dt.date(2024, 3, 10) + dt.timedelta(days=n) for n in range(5)]


# --- a proxy that pages listings and rewrites their answers --------------------------------------------

class _ListingHandler(fault_proxy._Handler):
    """The fault proxy's handler; ListObjectsV2 requests get ``max-keys=<proxy.page_size>`` (so a few keys
    make several pages with real continuation tokens), and ``proxy.rewrites`` (callables taking the page
    number, 1-based, and the body; returning the body to send) are applied to their answers."""

    def _handle(self) -> None:
        proxy = self.server.proxy
        split = urllib.parse.urlsplit(self.path)
        self._page = self._upload_page = None
        if self.command == "GET" and "list-type=2" in split.query and proxy.page_size:
            query = re.sub(r"(^|&)max-keys=\d+", "", split.query) + f"&max-keys={proxy.page_size}"
            self.path = urllib.parse.urlunsplit(split._replace(query=query))
            with proxy._lock:
                proxy.pages += 1
                self._page = proxy.pages
        elif self.command == "GET" and re.search(r"(^|&)uploads(=|&|$)", split.query):
            with proxy._lock:
                proxy.upload_pages += 1
                self._upload_page = proxy.upload_pages
        super()._handle()

    def _answer(self, status, headers, payload, method, rate=None):
        if self._page is not None and status == 200:
            for rewrite in list(self.server.proxy.rewrites):
                payload = rewrite(self._page, payload)
        if self._upload_page is not None and status == 200:
            for rewrite in list(self.server.proxy.upload_rewrites):
                payload = rewrite(self._upload_page, payload)
        super()._answer(status, headers, payload, method, rate)


class ListingProxy(FaultProxy):
    def __init__(self, *args, page_size: int = 2, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.page_size = page_size
        self.pages = 0
        self.rewrites: list = []  # ListObjectsV2 answers
        self.upload_pages = 0
        self.upload_rewrites: list = []  # ListMultipartUploads answers

    def start(self) -> ListingProxy:
        self._server = fault_proxy._Server(("127.0.0.1", 0), _ListingHandler)
        self._server.proxy = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="listing-proxy", daemon=True)
        self._thread.start()
        return self


def _drop_token(on_page: int):
    def rewrite(page: int, body: bytes) -> bytes:
        if page != on_page:
            return body
        return re.sub(rb"<NextContinuationToken>[^<]*</NextContinuationToken>", b"", body)
    return rewrite


# --- fixtures -----------------------------------------------------------------------------------------

@pytest.fixture
def five_days(conn, schema):
    create_sample_events(conn, DAYS, rows_per_day=20, schema=schema)
    return TableSpec(name=f"{schema}.events", day_column="created_at", start_date=DAYS[0],
                     partitioning={"mode": "declarative"})


def _store(client, bucket) -> S3Store:
    return S3Store(client, bucket, prefix="archive", part_size=MIN_PART_SIZE)


# =====================================================================================================
# Listings
# =====================================================================================================

def test_listing_page_that_says_truncated_without_a_continuation_token_does_not_hide_archived_days(
        s3, conn, five_days, store, bucket):
    """`list`/`compare`/`verify` over more than three days look the manifests up with one bucket listing
    (lookup_manifests). A page of that listing arrives saying IsTruncated=true but without its
    NextContinuationToken (an element lost or cut by a gateway): botocore's paginator then simply stops,
    and the days on the pages never fetched are reported as never archived ("missing"), although their
    manifests are in the store. A page that says more follows but gives no way to it is not a listing:
    it should fail the listing (retryable), so each day's manifest is read on its own and every
    archived day is found."""
    spec = five_days
    for day in DAYS:
        archive_partition(conn, spec, day, store)
    with ListingProxy(s3.endpoint_url, page_size=2) as proxy:
        proxy.rewrites.append(_drop_token(on_page=2))
        found = lookup_manifests(_store(proxy.client(max_attempts=1), bucket), spec, DAYS)
        assert proxy.pages >= 2, "the listing was not paged (test's premise)"
    missing = [day for day, lookup in found.items() if lookup.archived is None]
    assert missing == [], f"archived days reported as missing after a listing page without its token: {missing}"


def test_upload_listing_cut_short_without_its_markers_does_not_delete_the_upload_marker(
        s3, conn, five_days, store, bucket, s3_client):
    """A killed run left two multipart uploads of a day's next generation and the day's upload marker.
    The next run sees the marker and lists the day's uploads; the store's (or a gateway's) answer is cut
    short: it shows the first upload and IsTruncated=true, but no NextKeyMarker/NextUploadIdMarker to go
    on with. botocore's paginator stops there; the run aborts the one upload it saw, counts the listing as
    settled and deletes the marker, so the second upload stays forever (its parts billed) and no later
    run ever looks for it (nothing half written or left behind). A page that says more follows but
    gives no way to it should count as a failed listing: the marker stays for the next run (or the
    listing is done again), and no upload is left without a marker."""
    spec = five_days
    day = DAYS[0]
    first = archive_partition(conn, spec, day, store)
    stale_key = first.key.replace(".jsonl", ".g2.jsonl")
    for _ in range(2):
        s3_client.create_multipart_upload(Bucket=bucket, Key=stale_key)
    s3_client.put_object(Bucket=bucket, Key=first.key + ".uploading", Body=b"x")

    def cut_after_first(page: int, body: bytes) -> bytes:
        if page != 1:
            return body
        uploads = re.findall(rb"<Upload>.*?</Upload>", body, flags=re.S)
        assert len(uploads) == 2, body  # (test's premise)
        body = body.replace(uploads[1], b"", 1)
        body = re.sub(rb"<IsTruncated>false</IsTruncated>", b"<IsTruncated>true</IsTruncated>", body)
        return re.sub(rb"<Next(KeyMarker|UploadIdMarker)>[^<]*</Next\1>|<Next(KeyMarker|UploadIdMarker)\s*/>", b"",
                      body)

    with ListingProxy(s3.endpoint_url, page_size=0) as proxy:
        proxy.upload_rewrites.append(cut_after_first)
        assert archive_partition(conn, spec, day, _store(proxy.client(max_attempts=1), bucket)).skipped
        assert proxy.upload_pages >= 1, "the run did not list the uploads (test's premise)"
    left = s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    marker_kept = "Contents" in s3_client.list_objects_v2(Bucket=bucket, Prefix=first.key + ".uploading")
    assert not left or marker_kept, (f"{len(left)} multipart upload(s) of {stale_key} left behind and the day's "
                                     "upload marker deleted: no run will look for them again")


def test_listing_that_hands_back_the_token_it_was_given_is_a_failed_listing_not_a_misconfigured_client(
        s3, conn, five_days, store, bucket):
    """A re-run of an archived day lists the day's keys first. The store's second listing page hands back,
    as its NextContinuationToken, the very token it was asked with (a page repeated by a caching gateway,
    a store's listing loop): botocore's paginator raises PaginationError ("The same next token was
    received twice"). The run fails NOT retried, blaming our configuration: "the object store client is
    misconfigured (region, endpoint or parameters) ... to fix: check ARCHIVE_S3_REGION and
    ARCHIVE_S3_ENDPOINT_URL", neither of which is wrong. It is the store's answer that is not a
    listing, like a page out of order or shorter than its KeyCount (which the store refuses as a
    retryable failed read, "the store's answer was not a listing"): it should be reported so, naming
    table and day, retryable, without sending the user to the region and endpoint settings."""
    spec = five_days
    day = DAYS[0]
    archive_partition(conn, spec, day, store)

    given: list[bytes] = []

    def echo_token(page: int, body: bytes) -> bytes:
        if page == 1:
            given.extend(re.findall(rb"<NextContinuationToken>([^<]*)</NextContinuationToken>", body))
        if page != 2 or not given:
            return body
        body = re.sub(rb"<IsTruncated>false</IsTruncated>", b"<IsTruncated>true</IsTruncated>", body)
        body = re.sub(rb"<NextContinuationToken>[^<]*</NextContinuationToken>", b"", body)
        return body.replace(b"</IsTruncated>", b"</IsTruncated><NextContinuationToken>" + given[0]
                            + b"</NextContinuationToken>", 1)

    with ListingProxy(s3.endpoint_url, page_size=1) as proxy:
        proxy.rewrites.append(echo_token)
        with pytest.raises(ArchiveError) as caught:
            archive_partition(conn, spec, day, _store(proxy.client(max_attempts=1), bucket))
        assert proxy.pages >= 2, "the listing was not paged (test's premise)"
    error = caught.value
    assert "PaginationError" in str(error), error  # (test's premise: the loop was seen)
    assert (error.table, error.day) == (spec.name, day.isoformat()), error
    assert error.retryable, f"a listing that loops is a failed read of the store's, reported not retryable: {error}"
    assert "ARCHIVE_S3_REGION" not in str(error) and "misconfigured" not in str(error), error


# =====================================================================================================
# Object reads: a multipart object (its ETag is no MD5) corrupted on the way, differently each time
# =====================================================================================================

@pytest.fixture
def big_day(conn, schema):
    """One day whose CSV object (no compression) is over 5 MiB: uploaded in parts, so its ETag is no MD5."""
    conn.execute(f'CREATE TABLE "{schema}".big (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, '
                 "payload text NOT NULL)")
    conn.execute(f'INSERT INTO "{schema}".big SELECT g, timestamptz \'2024-03-10 00:00:00+00\' + g * interval '
                 "'1 second', repeat(md5(g::text), 24) FROM generate_series(1, 7000) g")
    conn.commit()
    return TableSpec(name=f"{schema}.big", day_column="created_at", start_date=DAYS[0], format="csv",
                     compression="none")


def test_restore_of_a_multipart_object_corrupted_differently_on_each_download_is_no_damaged_archive(
        s3, conn, big_day, store, bucket, temp_dir):
    """Restoring a day whose object was uploaded in parts (its ETag is no MD5, so only the manifest's MD5
    can catch a byte flipped on the way). The network flips a byte of the first download and another
    byte of the second: two downloads that disagree with each other say the way is at fault, not the
    store, and deep verification reports exactly that (a retryable DownloadError, no verdict). The
    restore instead raises ArchiveCorruptError, "the archive ... does not match ... (corrupted in transit
    or damaged in the store; if it repeats, the stored object is damaged)", after the second download
    merely differed too: a damaged-archive error for an intact archive. It should be a RestoreError
    that is not ArchiveCorruptError (the download failed), retryable, as deep verification decides."""
    from archive_pipeline.core.restore import ArchiveCorruptError, RestoreError, restore_day
    from archive_pipeline_tests.fault_proxy import Fault

    spec = big_day
    result = archive_partition(conn, spec, DAYS[0], store)
    assert result.parts > 1, "the object was not uploaded in parts (test's premise)"
    obj = rf"/{DAYS[0]}\.csv$"
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="GET", path=obj, action="flip_response_byte", offset=1000, times=1))
        proxy.add(Fault(method="GET", path=obj, action="flip_response_byte", offset=2000, times=1))
        with pytest.raises(RestoreError) as caught:
            restore_day(conn, _store(proxy.client(max_attempts=1), bucket), spec, DAYS[0], into="new",
                        target=f"{spec.schema_name}.big_restored", temp_dir=temp_dir)
        assert len(proxy.requests(method="GET", path=obj)) == 2
    assert not isinstance(caught.value, ArchiveCorruptError), \
        f"two downloads that differ from each other were taken for a damaged archive: {caught.value!r}"
    assert caught.value.retryable


# =====================================================================================================
# Secrets in what a failed upload listing logs
# =====================================================================================================

def test_a_failed_listing_of_a_killed_runs_uploads_logs_no_credentials_of_the_endpoint(
        s3, conn, five_days, store, bucket, s3_client, caplog):
    """An S3Store built in code (archive_partition's API) whose endpoint carries a user and secret
    (http://AKID:<secret>@host: botocore quotes that URL whole in every error). A killed run left an
    upload marker beside a day; the next run sees it and lists the day's multipart uploads, and the
    connection is reset. The run goes on (leftovers cost storage), logging a warning; the store's own
    warnings redact botocore's text (_said), but this one is logged with exc_info=True: the whole
    traceback, whose ConnectionClosedError quotes the endpoint URL with the secret, lands in the log.
    No secret may reach a message or a log line."""
    import logging

    import boto3
    from botocore.config import Config

    from archive_pipeline_tests.fault_proxy import Fault

    secret = "Sup3rS3cretV4lue"
    spec = five_days
    day = DAYS[0]
    first = archive_partition(conn, spec, day, store)
    s3_client.put_object(Bucket=bucket, Key=first.key + ".uploading", Body=b"x")
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="GET", query="uploads", action="reset_before", times=None))
        port = proxy.url.rsplit(":", 1)[1]
        client = boto3.client("s3", endpoint_url=f"http://AKID:{secret}@127.0.0.1:{port}", region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing",
                              config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1,
                                                                                      "mode": "legacy"}))
        with caplog.at_level(logging.WARNING):
            result = archive_partition(conn, spec, day, _store(client, bucket))
        assert proxy.requests(method="GET", query="uploads"), "the run did not list the uploads (test's premise)"
    assert result.skipped
    assert "stale multipart uploads" in caplog.text  # (test's premise: the warning was logged)
    assert secret not in caplog.text, [r.getMessage() + (r.exc_text or "") for r in caplog.records
                                       if secret in (r.exc_text or "") + r.getMessage()]
