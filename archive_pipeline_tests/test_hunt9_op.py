"""Hunt 9 (op): a hostile review of the newest fixes (manifest shapes, oversized manifests, decompression
limits, TMPDIR, zstd levels, pending detach, former formats and periods, layout changes)."""

from __future__ import annotations

import datetime as dt

import psycopg
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline_tests.helpers import decompress, download, read_jsonl


def test_another_days_partition_pending_detach_does_not_fail_a_role_that_reads_the_table_through_its_parent(
        pg, conn, schema, store, temp_dir, s3_client, bucket, request):
    """``ev`` is range-partitioned by day (d01, d10, d11); the archive role was given what a table needs,
    ``GRANT SELECT ON ev`` (partitions are read through the parent: PostgreSQL checks the parent's privileges
    only). An interrupted ``DETACH PARTITION d01 CONCURRENTLY`` leaves d01 (a day long dealt with) pending
    detach. Archiving 2024-03-10 (24 rows, all in d10) now fails, on every run of every day: "permission denied
    for table d01" -- the pending-detach check queries d01 itself. Before the latest fix a partition outside the
    day's partitions was never read. Should: 2024-03-10 archived with its 24 rows (d01 holds none of the day:
    its bounds say so, or it is asked through the parent's privileges). (Cause: source._may_hold_day runs
    ``SELECT EXISTS (SELECT FROM <pending partition> WHERE ...)`` for every partition pending detach that is not
    one of the day's, which needs SELECT on that partition itself.)"""
    from archive_pipeline_tests.test_mends import _interrupted_detach

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz) PARTITION BY RANGE (at)").format(s))
    for d in (1, 10, 11):
        conn.execute(sql.SQL("CREATE TABLE {}.{} PARTITION OF {}.ev FOR VALUES FROM ({}) TO ({})").format(
            s, sql.Identifier(f"d{d:02d}"), s, sql.Literal(f"2024-03-{d:02d} 00:00+00"),
            sql.Literal(f"2024-03-{d + 1:02d} 00:00+00")))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, '2024-03-10 00:30+00'::timestamptz + g * interval '1 hour' "
                         "FROM generate_series(0, 30) g").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (100, '2024-03-01 05:00+00')").format(s))
    role = f"arch_{schema}"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    request.addfinalizer(lambda: conn.execute(sql.SQL("DROP OWNED BY {}; DROP ROLE {}").format(
        sql.Identifier(role), sql.Identifier(role))))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(s, sql.Identifier(role)))
    conn.execute(sql.SQL("GRANT SELECT ON {}.ev TO {}").format(s, sql.Identifier(role)))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01", format="jsonl",
                     compression="none", partitioning={"mode": "declarative"})
    _interrupted_detach(pg, conn, f"{schema}.ev", f"{schema}.d01")
    with psycopg.connect(pg.dsn_for(role), autocommit=True) as reader:
        result = archive_partition(reader, spec, dt.date(2024, 3, 10), store, temp_dir=temp_dir)
    rows = read_jsonl(decompress(download(s3_client, bucket, result.key), "none"))
    assert result.rows == 24 and sorted(int(r["id"]) for r in rows) == list(range(24))
