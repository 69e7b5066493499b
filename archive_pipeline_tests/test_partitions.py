"""The three ways a day exists, re-runs that skip, overwrite or detect late rows, and locking."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from psycopg import sql

from archive_pipeline.core.archive import LateRowsError, archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.discovery import declarative_days, existing_days, naming_days
from archive_pipeline.core.locks import lock_key
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline_tests.helpers import decompress, download, range_partitioned_events, read_jsonl

D = dt.date(2024, 3, 10)


def days(first: dt.date, n: int) -> list[dt.date]:
    return [first + dt.timedelta(days=i) for i in range(n)]


@pytest.fixture
def declarative(conn, schema):
    """Daily children, a weekly child, a DEFAULT partition: bounds come from the catalog."""
    s = sql.Identifier(schema)
    range_partitioned_events(conn, schema, [("ev_a", "2024-03-10", "2024-03-11"), ("ev_b", "2024-03-11", "2024-03-12"),
                                            ("ev_week", "2024-03-18", "2024-03-25")])
    conn.execute(sql.SQL("CREATE TABLE {}.ev_other PARTITION OF {}.ev DEFAULT").format(s, s))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, '2024-03-10 00:00+00'::timestamptz + g * interval '1 hour' "
                         "FROM generate_series(0, 23) g").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (100, '2024-03-19 08:00+00'), (101, '2024-03-20 09:00+00')")
                 .format(s))
    return TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01",
                     partitioning={"mode": "declarative"})


def test_declarative_days_come_from_child_bounds(conn, declarative):
    assert declarative_days(conn, declarative) == days(D, 2) + days(dt.date(2024, 3, 18), 7)


def test_a_week_child_archives_as_its_days(conn, declarative, store, s3_client, bucket):
    result = archive_partition(conn, declarative, dt.date(2024, 3, 19), store)
    assert [r["id"] for r in read_jsonl(decompress(download(s3_client, bucket, result.key), "zstd"))] == [100]


def test_a_child_straddling_two_days_archives_each_day_whole(conn, schema, declarative, store, s3_client, bucket):
    """A child from noon to noon (created after the others, by hand) holds rows of two days, each of which
    other children hold rows of too: both days are discovered and each archive holds exactly its day's rows
    (read from the parent by the day column), whichever child they are in. It was refused, and with it every
    day of the table, the sensor's tick and the code location's next load."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev_half PARTITION OF {}.ev FOR VALUES FROM ('2024-03-12 12:00+00') "
                         "TO ('2024-03-13 12:00+00')").format(s, s))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (200, '2024-03-12 01:00+00'), (201, '2024-03-12 13:00+00'), "
                         "(202, '2024-03-13 11:59:59.999999+00'), (203, '2024-03-13 12:00+00')").format(s))
    assert {dt.date(2024, 3, 12), dt.date(2024, 3, 13)} <= set(declarative_days(conn, declarative))
    for day, ids in ((dt.date(2024, 3, 12), [200, 201]), (dt.date(2024, 3, 13), [202, 203])):
        result = archive_partition(conn, declarative, day, store)
        rows = read_jsonl(decompress(download(s3_client, bucket, result.key), "zstd"))
        assert sorted(r["id"] for r in rows) == ids and result.rows == 2


@pytest.fixture
def legacy(conn, schema):
    """Legacy one-table-per-day with inheritance, plus tables that only look similar."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.events (id int, note text)").format(s))
    for day in days(D, 3):
        child = sql.Identifier(f"events_{day:%Y%m%d}")
        conn.execute(sql.SQL("CREATE TABLE {}.{} () INHERITS ({}.events)").format(s, child, s))
        conn.execute(sql.SQL("INSERT INTO {}.{} SELECT g, {} FROM generate_series(1, %s) g").format(
            s, child, sql.Literal(day.isoformat())), (day.day,))
    for near_miss in ("events_2024031", "events_20240399", "events_20240310_old"):
        conn.execute(sql.SQL("CREATE TABLE {}.{} (id int)").format(s, sql.Identifier(near_miss)))
    return TableSpec(name=f"{schema}.events", start_date="2024-03-01",
                     partitioning={"mode": "naming", "pattern": "events_%Y%m%d"})


def test_naming_days_come_from_table_names(conn, legacy):
    assert naming_days(conn, legacy) == days(D, 3)


def test_naming_mode_archives_the_day_table(conn, legacy, store, s3_client, bucket):
    result = archive_partition(conn, legacy, dt.date(2024, 3, 11), store)
    records = read_jsonl(decompress(download(s3_client, bucket, result.key), "zstd"))
    assert sorted(r["id"] for r in records) == list(range(1, 12)) and {r["note"] for r in records} == {"2024-03-11"}
    assert result.source_relation.endswith(".events_20240311")
    with pytest.raises(ArchiveError, match=r"no table for 2024-03-20 of .*events.*events_20240320.*does not exist"):
        archive_partition(conn, legacy, dt.date(2024, 3, 20), store)


def test_column_mode_probes_days(conn, schema):
    conn.execute(sql.SQL("CREATE TABLE {}.plain (at date, v int)").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("INSERT INTO {}.plain VALUES ('2024-03-10', 1), ('2024-03-12', 2)").format(
        sql.Identifier(schema)))
    spec = TableSpec(name=f"{schema}.plain", day_column="at", start_date="2024-03-01")
    assert existing_days(conn, spec, days(dt.date(2024, 3, 9), 5)) == [D, dt.date(2024, 3, 12)]


@pytest.fixture
def small(conn, schema):
    conn.execute(sql.SQL("CREATE TABLE {}.small (id int, at date)").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("INSERT INTO {}.small SELECT g, '2024-03-10' FROM generate_series(1, 100) g").format(
        sql.Identifier(schema)))
    return TableSpec(name=f"{schema}.small", day_column="at", start_date="2024-03-01")


def test_rerun_skips_a_matching_archive_and_overwrite_forces_it(conn, small, store, s3_client, bucket):
    first = archive_partition(conn, small, D, store)
    stamp = s3_client.head_object(Bucket=bucket, Key=first.key)["LastModified"]
    again = archive_partition(conn, small, D, store)
    assert again.skipped and not first.skipped
    assert (again.rows, again.md5, again.key) == (first.rows, first.md5, first.key)
    assert s3_client.head_object(Bucket=bucket, Key=first.key)["LastModified"] == stamp
    forced = archive_partition(conn, small, D, store, overwrite=True)
    assert not forced.skipped and forced.rows == 100
    assert forced.snapshot_at > first.snapshot_at


def test_late_rows_are_detected_not_ignored(conn, schema, small, store, s3_client, bucket):
    first = archive_partition(conn, small, D, store)
    conn.execute(sql.SQL("INSERT INTO {}.small VALUES (101, '2024-03-10')").format(sql.Identifier(schema)))
    with pytest.raises(LateRowsError, match=r"has 101 rows now, the archive holds 100") as failure:
        archive_partition(conn, small, D, store)
    assert failure.value.retryable is False
    assert s3_client.head_object(Bucket=bucket, Key=first.key)["ContentLength"] == first.bytes  # untouched
    assert archive_partition(conn, small, D, store, overwrite=True).rows == 101


def test_a_damaged_archive_is_written_again(conn, small, store, s3_client, bucket):
    first = archive_partition(conn, small, D, store)
    # damaged in the store, still ours: its metadata kept (an object put there without it is someone else's, and
    # kept: test_hunt23_bb)
    ours = s3_client.head_object(Bucket=bucket, Key=first.key)["Metadata"]
    s3_client.put_object(Bucket=bucket, Key=first.key, Body=b"truncated", Metadata=ours)
    again = archive_partition(conn, small, D, store)
    assert not again.skipped and again.generation == 2 and again.key != first.key
    keys = sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == sorted([again.key, again.manifest_key])  # the damaged generation is gone
    assert archive_partition(conn, small, D, store).skipped


def test_two_runs_never_archive_the_same_day_at_once(pg, conn, small, store, s3_client, bucket):
    with pg.connect() as other:
        other.execute("SELECT pg_advisory_lock(%s)", lock_key(small.name, D))
        with pytest.raises(ArchiveError, match="being archived, removed or restored by another run") as failure:
            archive_partition(conn, small, D, store)
        assert failure.value.retryable is True
        assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    # The lock goes with the other session, once its backend has exited (closing does not wait for that).
    deadline = time.monotonic() + 10
    while conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()[0] and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    assert archive_partition(conn, small, D, store).rows == 100
