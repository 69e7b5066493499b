"""Fault hunt C: the request fails or the response is corrupted, on the round-trip operations (restore,
deep verification, removal, checks) and on archiving. Real PostgreSQL, real S3 (moto over HTTP) through
the fault proxy; each test asserts the documented behaviour and fails on the current code."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.lifecycle import RemovalRefused, remove_day
from archive_pipeline.core.restore import restore_day
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline.core.verify import deep_verify
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.test_lifecycle import DAYS, events, spec_for  # noqa: F401 - fixture

DAY = DAYS[0]
OBJECT = r"/2024-03-10\.jsonl\.zst$"


def _rows(conn, schema: str) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE created_at >= '2024-03-10+00' AND "
                                "created_at < '2024-03-11+00'").format(sql.Identifier(schema, "events"))).fetchone()[0]


MANIFEST = r"/2024-03-10\.jsonl\.zst\.manifest\.json$"


def _two_404s(proxy: FaultProxy, path: str = OBJECT) -> None:
    """The key's GET answers 404 once, and so does the HEAD that follows it (a store or caching gateway
    that reports an object it holds missing for a moment: two requests, not one)."""
    proxy.add(Fault(method="GET", path=path, action="error", status=404, code="NoSuchKey", times=1))
    proxy.add(Fault(method="HEAD", path=path, action="error", status=404, code="NoSuchKey", times=1))


# =====================================================================================================
# 1. "a HEAD that says 404 is asked once more before the object is called missing" (README, Proof before
#    deletion) -- not on the download paths: after a GET 404, _confirm_missing asks HEAD once.
# =====================================================================================================

@pytest.mark.parametrize("path", [OBJECT, MANIFEST], ids=["object", "manifest"])
def test_deep_verification_whose_get_and_first_head_answer_404_for_an_object_there_is_no_verdict(
        s3, conn, events, store, bucket, path):
    spec = spec_for(events, "delete")
    archive_partition(conn, spec, DAY, store)
    with FaultProxy(s3.endpoint_url) as proxy:
        _two_404s(proxy, path)
        flaky = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)
        try:
            problems = deep_verify(conn, flaky, spec, DAY)
        except ArchiveError as exc:  # no verdict, retryable: what the README promises
            assert exc.retryable, exc
            return
        heads = [r.status for r in proxy.requests(method="HEAD", path=path)]
    # the object is there (a second HEAD finds it): calling it missing is a failed proof of an intact archive
    assert store.head(f"archive/{events}.events/2024/03/2024-03-10.jsonl.zst") is not None
    assert problems == [], (problems, heads)


def test_removal_whose_get_and_first_head_answer_404_is_not_refused_as_missing(s3, conn, events, store, bucket):
    spec = spec_for(events, "delete")
    archive_partition(conn, spec, DAY, store)
    with FaultProxy(s3.endpoint_url) as proxy:
        _two_404s(proxy)
        flaky = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)
        try:
            remove_day(conn, spec, DAY, flaky)
        except RemovalRefused as exc:  # not retryable: "its archive is not proven: object ... is missing"
            pytest.fail(f"an intact archive was refused as not proven after two transient 404s: {exc}")
        except ArchiveError as exc:
            assert exc.retryable, exc  # no verdict: fine
            assert _rows(conn, events) == 300


def test_restore_whose_get_and_first_head_answer_404_is_not_a_missing_archive(s3, pg, conn, events, store, bucket):
    spec = spec_for(events, "delete")
    archive_partition(conn, spec, DAY, store)
    with FaultProxy(s3.endpoint_url) as proxy, pg.connect() as restoring:
        _two_404s(proxy)
        flaky = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)
        try:
            result = restore_day(restoring, flaky, spec, DAY, into="new", target=f"{events}.back")
        except ArchiveError as exc:
            assert exc.retryable and "missing" not in str(exc), \
                f"{type(exc).__name__} (retryable={exc.retryable}): {exc}"
            return
        assert result.rows == 300


# =====================================================================================================
# 2. "Every message names the table, the day, the cause" (README, Retries and errors): a store request of
#    remove_day / deep_verify that fails outside the object's download comes out as the store's bare
#    DownloadError/UploadError, with table=None and day=None and only the key in its words.
# =====================================================================================================

@pytest.mark.parametrize("skip", [0, 1], ids=["proof's-manifest-read", "removal's-manifest-read"])
def test_a_removal_whose_manifest_read_fails_names_table_and_day(s3, conn, events, store, bucket, skip):
    """With a key template of the table's own words ({schema}/{table}/{date}), the only place a person (or the
    CLI's --json, or a caller reading ``exc.table``/``exc.day``) could learn which table-day failed."""
    spec = spec_for(events, "delete", key_template="{prefix}/{schema}/{table}/{date}.{ext}")
    archive_partition(conn, spec, DAY, store)
    with FaultProxy(s3.endpoint_url) as proxy:
        # GETs of the manifest: 0 = the proof's (load_manifest), 1 = _remove's read before it marks it pending
        proxy.add(Fault(method="GET", path=r"\.manifest\.json$", action="slow_down", skip=skip, times=1))
        flaky = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)
        with pytest.raises(ArchiveError) as caught:
            remove_day(conn, spec, DAY, flaky)
    exc = caught.value
    assert exc.retryable and _rows(conn, events) == 300
    assert (exc.table, exc.day) == (spec.name, DAY.isoformat()), str(exc)
    assert spec.name in str(exc) and DAY.isoformat() in str(exc)
