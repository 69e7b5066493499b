"""Hunt 9 (ob): partitioned source tables of unusual shapes, through archive, compare, verify --deep, removal and
restore into the original table."""

from __future__ import annotations

import datetime as dt

from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.discovery import existing_days
from archive_pipeline_tests.helpers import decompress, download, read_jsonl

DAY = dt.date(2024, 3, 10)


def test_a_partition_of_another_day_left_pending_detach_does_not_fail_every_days_archive(pg, conn, schema, store,
                                                                                        temp_dir, s3_client, bucket):
    """``ev`` is range-partitioned by ``at`` with daily partitions. An operator runs ``ALTER TABLE ev DETACH PARTITION
    p01 CONCURRENTLY`` on the partition of 2024-03-01 (a month-old day, already dealt with), and it is interrupted
    (cancelled while it waited for an older snapshot): p01 is left pending detach. The sensor then asks for
    2024-03-10 (discovery finds it, p10 holds its 24 rows, untouched) and its archive fails: "p01 is pending detach
    from ev ... ev no longer reads its rows", retryable, on every run -- and likewise every other day of the table,
    until someone finalizes a detach of a day none of them reads. The removal of 2024-03-10 is not refused for it
    (lifecycle._refuse_pending_detach looks at the day's partitions only). Should: 2024-03-10 is archived with
    exactly its 24 rows (p01 holds no row of it; only a partition pending detach whose range holds the day is a
    reason to refuse the day). (Cause: source.hold_day refuses every partition of the whole tree that
    _DETACHED_SINCE_SNAPSHOT lists, not only those the day's read plans or whose range holds the day.)"""
    from archive_pipeline_tests.test_mends import _interrupted_detach

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz) PARTITION BY RANGE (at)").format(s))
    for d in (1, 10, 11):
        conn.execute(sql.SQL("CREATE TABLE {}.{} PARTITION OF {}.ev FOR VALUES FROM ({}) TO ({})").format(
            s, sql.Identifier(f"p{d:02d}"), s, sql.Literal(f"2024-03-{d:02d} 00:00+00"),
            sql.Literal(f"2024-03-{d + 1:02d} 00:00+00")))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, '2024-03-10 00:30+00'::timestamptz + g * interval '1 hour' "
                         "FROM generate_series(0, 30) g").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (100, '2024-03-01 05:00+00')").format(s))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01", format="jsonl",
                     compression="none", partitioning={"mode": "declarative"})
    _interrupted_detach(pg, conn, f"{schema}.ev", f"{schema}.p01")
    assert DAY in [p.start.date() for p in existing_days(conn, spec, [DAY])]  # (the sensor asks for the day)
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    rows = read_jsonl(decompress(download(s3_client, bucket, result.key), "none"))
    assert result.rows == 24 and sorted(int(r["id"]) for r in rows) == list(range(24))
