"""Hunt 9 (ou): keys.listed_under's new rule (a day's key under another format counts as listed only by its own
exact names) misses a day's archive under a former format that the old rule (any listed name starting with the
key) found: a LIST answer damaged on the way in the manifest's suffix hides a manifest that stands alone (an
empty day's archive). Real PostgreSQL and moto S3 over HTTP behind the fault-injecting proxy."""

from __future__ import annotations

import datetime as dt
import urllib.parse
import urllib.request

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.plan import lookup_manifests
from archive_pipeline.core.restore import restore_day
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

DAY = dt.date(2024, 3, 10)
JSONL_MANIFEST = "archive/{schema}.t/2024/03/2024-03-10.jsonl.zst.manifest.json"
CSV_MANIFEST = "archive/{schema}.t/2024/03/2024-03-10.csv.zst.manifest.json"


def _spec(schema: str, fmt: str) -> TableSpec:
    return TableSpec(name=f"{schema}.t", day_column="at", start_date=dt.date(2024, 3, 9), format=fmt,
                     partitioning={"mode": "declarative"}, retention={"keep_days": 1, "action": "drop"})


def _empty_day_removed_under_jsonl(conn, schema: str, store: S3Store) -> TableSpec:
    """``<schema>.t`` partitioned by day (9th..14th), rows on the 9th only; the 10th (empty) archived as JSONL (a
    manifest alone: no data object), its partition dropped by retention; then the table's format is CSV."""
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz NOT NULL, v text) PARTITION BY RANGE (at)").format(
        sql.Identifier(schema, "t")))
    for d in range(9, 15):
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier(schema, f"t_202403{d:02d}"), sql.Identifier(schema, "t"),
            sql.Literal(f"2024-03-{d:02d} 00:00+00"), sql.Literal(f"2024-03-{d + 1:02d} 00:00+00")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-09 00:00+00'::timestamptz + g * interval '1 hour', "
                         "'v' || g FROM generate_series(0, 19) g").format(sql.Identifier(schema, "t")))
    jsonl = _spec(schema, "jsonl")
    assert archive_partition(conn, jsonl, DAY, store).rows == 0
    removal = remove_day(conn, jsonl, DAY, store)
    assert removal.removed_at is not None and removal.rows == 0
    return _spec(schema, "csv")


def _flip_in_manifest_suffix(proxy: FaultProxy, bucket: str, prefix: str, times: int = 1) -> Fault:
    """A fault that flips one byte of the LIST answer (of ``prefix``) inside the listed manifest's suffix: 'm' of
    '.manifest.json' becomes 'l' (0x6D ^ 1), so the listed name still starts with the day's JSONL key."""
    body = urllib.request.urlopen(  # noqa: S310 - the local moto server
        f"{proxy.target_url}/{bucket}?list-type=2&prefix={urllib.parse.quote(prefix, safe='')}"
        "&encoding-type=url").read()
    offset = body.index(b".manifest.json</Key>") + 1
    assert body[offset:offset + 1] == b"m"
    return proxy.add(Fault(method="GET", query="list-type", action="flip_response_byte", offset=offset, times=times))


@pytest.fixture
def proxy(s3):
    with FaultProxy(s3.endpoint_url) as running:
        running.target_url = s3.endpoint_url
        yield running


def _empty_day_archived_under_jsonl(conn, schema: str, store: S3Store) -> TableSpec:
    """As above, without the removal: 2024-03-10 (empty) archived as JSONL, its partition still there; then the
    table's format is CSV."""
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz NOT NULL, v text) PARTITION BY RANGE (at)").format(
        sql.Identifier(schema, "t")))
    for d in range(9, 15):
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier(schema, f"t_202403{d:02d}"), sql.Identifier(schema, "t"),
            sql.Literal(f"2024-03-{d:02d} 00:00+00"), sql.Literal(f"2024-03-{d + 1:02d} 00:00+00")))
    assert archive_partition(conn, _spec(schema, "jsonl"), DAY, store).rows == 0
    return _spec(schema, "csv")


def test_damaged_listing_archives_a_day_again_beside_its_former_format_archive(conn, schema, store, s3_client,
                                                                              bucket, proxy):
    """A user archived the empty day 2024-03-10 as JSONL (its archive: a manifest alone), then switched the table
    to CSV; the sensor runs the day again. The README/_archived_elsewhere: such a day is archived, and the run
    skips it (its rows are the archived ones), not archives it as a new day beside its archive. One byte of the
    day's LIST answer is flipped on the way in the listed manifest's suffix ('…jsonl.zst.lanifest.json'). Was
    (before keys.listed_under took only exact names): the name starts with the JSONL key, its manifest is read,
    the day skipped, nothing written. Now: a second archive of the day is written under the CSV key. Should:
    skip (or fail retryably) and write nothing."""
    spec = _empty_day_archived_under_jsonl(conn, schema, store)
    before = sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"])
    fault = _flip_in_manifest_suffix(proxy, bucket, f"archive/{schema}.t/2024/03/2024-03-10")
    faulty = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)
    try:
        outcome = archive_partition(conn, spec, DAY, faulty)
    except ArchiveError as exc:
        assert exc.retryable, exc
        outcome = exc
    assert fault.hits == 1
    after = sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"])
    assert after == before, f"archived again beside its JSONL archive ({outcome!r:.120}): {after}"


def test_damaged_listing_refuses_removal_of_an_archived_day_as_unarchived(conn, schema, store, bucket, proxy):
    """The same empty day archived as JSONL, table now CSV, retention (drop) due. The removal's lookup of the day's
    archive (lifecycle.archive_key -> under_another_format) gets a LIST answer damaged in the manifest's suffix.
    Was: the listed name starts with the JSONL key: its manifest is read and the day proven and removed (its
    partition dropped). Now: the day is taken for unarchived, and as its partition holds no rows the removal
    answers Removal(nothing=True) ("nothing to remove") and leaves the archived day's partition in place (with
    rows it would be RemovalRefused "has no archive ...; archive it first"). Should: remove the day (or fail
    retryably), not report an archived day as one with nothing to remove."""
    spec = _empty_day_archived_under_jsonl(conn, schema, store)
    fault = _flip_in_manifest_suffix(proxy, bucket, f"archive/{schema}.t/2024/03/2024-03-10")
    faulty = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)
    try:
        removal = remove_day(conn, spec, DAY, faulty)
    except ArchiveError as exc:
        assert fault.hits == 1
        assert exc.retryable and "no archive" not in str(exc), f"retryable={exc.retryable}: {exc}"
    else:
        assert removal.removed_at is not None


def test_damaged_listing_restore_calls_an_archived_day_without_archive(conn, schema, store, bucket, proxy):
    """Same removed empty day, archived under the former JSONL format, table now CSV. The user restores it
    (`restore --day 2024-03-10 --into new`); the day's LIST answer is damaged in the manifest's suffix. Was: the
    listed name starts with the JSONL key, so its manifest is read and the day restored (0 rows). Now: RestoreError
    "no archive", not retryable: a damaged answer of the store taken for the fact that the day has no archive.
    Should: restore the day, or fail retryably."""
    spec = _empty_day_removed_under_jsonl(conn, schema, store)
    fault = _flip_in_manifest_suffix(proxy, bucket, f"archive/{schema}.t/2024/03/2024-03-10")
    faulty = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)
    try:
        result = restore_day(conn, faulty, spec, DAY, into="new", target=f"{schema}.back")
    except ArchiveError as exc:
        assert fault.hits == 1
        assert exc.retryable and "no archive" not in str(exc), f"retryable={exc.retryable}: {exc}"
    else:
        assert result.rows == 0


def test_damaged_range_listing_calls_an_archived_day_unarchived(conn, schema, store, bucket, proxy):
    """Same removed empty day under the former JSONL format, table now CSV. The user runs `list` over
    2024-03-10..2024-03-14 (more than three days: one LIST of the month's folder). That answer is damaged in the
    JSONL manifest's suffix. Was: the day's prefix is listed, its CSV manifest absent, and under_another_format
    finds the JSONL key (a listed name starts with it) and reads its manifest. Now: the day is reported as
    having no archive at all (a removed day called unarchived). Should: the day found archived (the manifest read,
    as the listing shows something of the day)."""
    spec = _empty_day_removed_under_jsonl(conn, schema, store)
    fault = _flip_in_manifest_suffix(proxy, bucket, f"archive/{schema}.t/2024/03/")
    faulty = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive", part_size=MIN_PART_SIZE)
    days = [DAY + dt.timedelta(days=n) for n in range(5)]
    found = lookup_manifests(faulty, spec, days)
    assert fault.hits == 1
    day = spec.period(DAY)
    assert found[day].archived is not None, f"2024-03-10 called unarchived: {found[day]}"
    assert found[day].archived.manifest.get("removed")
