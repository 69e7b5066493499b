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
        self._page = None
        if self.command == "GET" and "list-type=2" in split.query and proxy.page_size:
            query = re.sub(r"(^|&)max-keys=\d+", "", split.query) + f"&max-keys={proxy.page_size}"
            self.path = urllib.parse.urlunsplit(split._replace(query=query))
            with proxy._lock:
                proxy.pages += 1
                self._page = proxy.pages
        super()._handle()

    def _answer(self, status, headers, payload, method, rate=None):
        if self._page is not None and status == 200:
            for rewrite in list(self.server.proxy.rewrites):
                payload = rewrite(self._page, payload)
        super()._answer(status, headers, payload, method, rate)


class ListingProxy(FaultProxy):
    def __init__(self, *args, page_size: int = 2, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.page_size = page_size
        self.pages = 0
        self.rewrites: list = []

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
