"""Hunt 7 (md): S3 faults during the lifecycle operations (removal, restore, re-archive of a removed day), on real
PostgreSQL and moto S3 over HTTP behind the fault-injecting proxy."""

from __future__ import annotations

import datetime as dt

import pytest

from archive_pipeline.core.archive import DayRemovedError, archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.restore import restore_day
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline.core.verify import load_manifest
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

DAYS = [dt.date(2024, 3, 10), dt.date(2024, 3, 11)]
CSV_MANIFEST = "archive/{schema}.events/2024/03/2024-03-10.csv.zst.manifest.json"


def _spec(schema: str, fmt: str) -> TableSpec:
    return TableSpec(name=f"{schema}.events", day_column="created_at", start_date=DAYS[0], format=fmt,
                     partitioning={"mode": "declarative"}, retention={"keep_days": 30, "action": "drop"})


def _removed_under_jsonl_then_format_changed(conn, schema: str, store: S3Store) -> TableSpec:
    """Day 2024-03-10 archived as JSONL, proven and dropped from the source; then the table's format is CSV, so the
    day's archive lives only under a former format's key (found through the day's LIST)."""
    create_sample_events(conn, DAYS, rows_per_day=50, schema=schema)
    archive_partition(conn, _spec(schema, "jsonl"), DAYS[0], store)
    assert remove_day(conn, _spec(schema, "jsonl"), DAYS[0], store).rows == 50
    return _spec(schema, "csv")


def _flip_in_manifest_key(proxy: FaultProxy, s3_client, bucket: str, schema: str) -> Fault:
    """A fault that flips one byte of the LIST answer inside the listed manifest key: 'm' of '.manifest.json' (0x6D)
    becomes '7' (0x37), so the key still sorts after the data object's and the XML stays well formed."""
    import urllib.request

    body = urllib.request.urlopen(  # noqa: S310 - the local moto server
        f"{proxy.target_url}/{bucket}?list-type=2&prefix=archive%2F{schema}.events%2F2024%2F03%2F2024-03-10"
        "&encoding-type=url").read()
    offset = body.index(b".manifest.json</Key>") + 1
    assert body[offset:offset + 1] == b"m"
    return proxy.add(Fault(method="GET", query="list-type", action="flip_response_byte", offset=offset, times=1))


@pytest.fixture
def proxy(s3):
    with FaultProxy(s3.endpoint_url) as running:
        running.target_url = s3.endpoint_url
        yield running


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_corrupted_listing_never_archives_a_removed_day_again_as_empty(conn, schema, store, s3_client, bucket,
                                                                          proxy, overwrite):
    """A user drops 2024-03-10 after archiving it as JSONL, later switches the table to CSV (the day's archive is
    then found under the former format through the day's LIST, as the README says), and a backfill or the sensor
    runs the day again. One byte of the LIST answer is flipped on the way (LIST bodies carry no checksum), inside
    the listed manifest key. Was: the run sees the JSONL data object without a manifest, finds the source empty and
    archives the removed day as EMPTY: a new rows=0 manifest at the CSV key, which list, compare and restore read
    from then on (the 50 removed rows' archive is hidden behind an empty one). Should: never archive a removed day
    again from its emptied source (DayRemovedError, or a retryable typed error for the damaged listing: a data
    object listed without its manifest while the source is empty is a lost manifest, refused), and write
    nothing."""
    spec = _removed_under_jsonl_then_format_changed(conn, schema, store)
    before = sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"])
    fault = _flip_in_manifest_key(proxy, s3_client, bucket, schema)
    faulty = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)
    outcome: object
    try:
        outcome = archive_partition(conn, spec, DAYS[0], faulty, overwrite=overwrite)
    except ArchiveError as exc:
        outcome = exc
    assert fault.hits == 1
    after = sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"])
    assert CSV_MANIFEST.format(schema=schema) not in after, (
        f"the removed day was archived again as empty: {outcome!r}; "
        f"{load_manifest(store, CSV_MANIFEST.format(schema=schema)[:-len('.manifest.json')])}")
    assert after == before
    assert isinstance(outcome, DayRemovedError) or (isinstance(outcome, ArchiveError) and outcome.retryable), outcome
    with pytest.raises(DayRemovedError):  # and without the fault: refused, as a removed day always is
        archive_partition(conn, spec, DAYS[0], store, overwrite=overwrite)


def test_a_corrupted_listing_is_not_reported_as_a_day_without_archive_by_restore(conn, schema, store, s3_client,
                                                                                 bucket, proxy):
    """Same removed day, archive under the former JSONL format, table now CSV. The user restores the day
    (`restore --day 2024-03-10 --into new`); one byte of the day's LIST answer is flipped on the way, inside the
    manifest key. Was: RestoreError "has no archive for 2024-03-10", not retryable: a damaged answer of the store
    reported as the fact that no archive exists (a script or an operator gives up on a day whose archive is
    there). Should: either restore the day (50 rows) or fail with a retryable error saying the store's answer was
    damaged; run again without the fault, the restore succeeds."""
    spec = _removed_under_jsonl_then_format_changed(conn, schema, store)
    fault = _flip_in_manifest_key(proxy, s3_client, bucket, schema)
    faulty = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)
    try:
        result = restore_day(conn, faulty, spec, DAYS[0], into="new", target=f"{schema}.back")
    except ArchiveError as exc:
        assert fault.hits == 1
        assert exc.retryable, f"retryable={exc.retryable}: {exc}"
        assert "no archive" not in str(exc), str(exc)
    else:
        assert result.rows == 50
    again = restore_day(conn, store, spec, DAYS[0], into="new", target=f"{schema}.back2")
    assert again.rows == 50
