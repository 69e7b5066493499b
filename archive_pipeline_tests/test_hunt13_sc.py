"""Hunt 13 (SC): parallel extraction of one day (``parallel_streams``) under hostile data and faults."""

from __future__ import annotations

import datetime as dt

from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.parallel import plan_streams
from archive_pipeline.core.source import day_filter, describe_table, read_snapshot

DAY = dt.date(2024, 3, 10)


def _spec(name: str, fmt: str, streams: int | str, **kwargs) -> TableSpec:
    return TableSpec(name=name, day_column=kwargs.pop("day_column", "created_at"), start_date="2024-03-01",
                     format=fmt, compression=kwargs.pop("compression", "zstd"), chunk_size=100,
                     parallel_streams=streams, **kwargs)


def test_a_one_page_indexed_table_is_not_read_by_sixteen_time_slices(conn, schema, store, temp_dir):
    """Parallel extraction (README): "one stream for views and foreign tables (no ctid), when the relation
    has fewer pages than N". The ctid plan keeps to that (``_ctid_plan``: "the relation has 1 page(s):
    nothing to split"), but the key plan never looks at the relation's size: a plain table of one page
    (20 rows, one a day) with a btree index on its timestamptz day column holds "far more than the day",
    so ``parallel_streams: 16`` plans 16 time slices -- 16 sessions, each importing the snapshot, taking
    the day's locks and an index scan, 15 more pool slots of the table's pool (Dagster), for ONE row.
    What happens now: the day is read by 16 streams ("16 stream(s) ... 16 time slices"). Expected: one
    stream, the day's ``streams`` note saying the relation is too small to split, as for a ctid plan.
    Fix idea: in plan_streams, cap the key plan's N by the pages of the relation(s) the day reads
    (pg_relation_size of the largest scanned), as _ctid_plan does, before choosing time slices."""
    table = sql.Identifier(schema, "tiny")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, created_at timestamptz)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-01 12:00+00'::timestamptz + g * interval '1 day' "
                         "FROM generate_series(0, 19) g").format(table))
    conn.execute(sql.SQL("CREATE INDEX ON {} (created_at)").format(table))
    conn.execute(sql.SQL("ANALYZE {}").format(table))
    assert conn.execute("SELECT pg_relation_size(%s::regclass) / 8192", (f"{schema}.tiny",)).fetchone()[0] == 1
    described = describe_table(conn, f"{schema}.tiny", "created_at")
    with read_snapshot(conn):
        plan = plan_streams(conn, described, day_filter(described, DAY), DAY, 16)
    result = archive_partition(conn, _spec(f"{schema}.tiny", "jsonl", 16), DAY, store, temp_dir=str(temp_dir))
    assert result.rows == 1
    assert plan.streams == 1, (plan.kind, plan.reason)
    assert result.streams.startswith("1 stream(s)"), result.streams
