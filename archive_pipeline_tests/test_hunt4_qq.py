"""Hunt 4 (qq): parallel extraction (``parallel_streams`` > 1): how a day is split among the streams."""

from __future__ import annotations

import datetime as dt

from psycopg import sql

from archive_pipeline.core.parallel import plan_streams
from archive_pipeline.core.source import day_filter, describe_table, read_snapshot

DAY = dt.date(2024, 3, 10)


def test_a_table_wholly_of_the_day_indexed_on_its_timestamp_is_read_once_not_once_per_stream(conn, schema):
    """A user archives a plain table (or a naming-mode table of one day) whose rows are all the day's,
    with a btree index on its timestamptz day column, at ``parallel_streams: 4``. The README: "ctid page
    ranges ... for a day that is its own relation ... and for relations at least half of whose rows
    (planner statistics) are the day's" (each page read by one stream). What happens: the plan is 4 time
    slices of the index (``plan_streams`` takes the key plan for any plain table with such an index,
    before ``_index_reads_less`` asks whether the relation is mostly the day); rows inserted in no time
    order put every slice on every page, so each stream's bitmap heap scan reads the whole heap: 4 reads
    of the table where one stream (or ctid ranges) reads it once. Expected: ctid ranges, every page read
    by exactly one stream."""
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz, body text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, timestamptz '2024-03-10 00:00+00' + "
                         "(g * 7919 % 20000) * interval '4 seconds', md5(g::text) "
                         "FROM generate_series(1, 20000) g").format(table))
    conn.execute(sql.SQL("CREATE INDEX ON {} (at)").format(table))
    conn.execute(sql.SQL("ANALYZE {}").format(table))
    described = describe_table(conn, f"{schema}.ev", "at")
    where = day_filter(described, DAY)
    with read_snapshot(conn):
        plan = plan_streams(conn, described, where, DAY, 4)
    pages = conn.execute("SELECT relpages FROM pg_class WHERE oid = %s::regclass", (f"{schema}.ev",)).fetchone()[0]
    heap_pages_read = 0
    for condition in plan.conditions:
        with conn.transaction():
            for name, value in plan.settings.items():
                conn.execute("SELECT set_config(%s, %s, true)", (name, value))
            explained = conn.execute(sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) SELECT * FROM {} WHERE ({}) AND ({})").format(
                table, where, condition)).fetchone()[0][0]["Plan"]
        nodes = [explained]
        while nodes:
            node = nodes.pop()
            heap_pages_read += node.get("Exact Heap Blocks", 0) + node.get("Lossy Heap Blocks", 0)
            if node["Node Type"] == "Seq Scan":
                heap_pages_read += pages
            nodes.extend(node.get("Plans", []))
    # now: "key", each of the 4 streams reads all the table's pages (4 x pages in all)
    assert plan.kind == "ctid", f"{plan.reason}: the streams read {heap_pages_read} heap pages of {pages}"


def test_a_day_over_several_partitions_is_split_by_the_size_of_all_of_them_not_of_the_first(conn, schema):
    """A user archives a table partitioned by six hours (a day spans four partitions) with
    ``parallel_streams: 4``. The night's partition (00:00-06:00) holds 30 rows (4 pages), the other
    three 9,000 rows (1,000 pages). What happens: ``plan_streams`` picks "the relation holding the day's
    rows" with ``SELECT tableoid ... LIMIT 1`` (the first partition scanned: the night's) and cuts page
    ranges by *its* size, 4 pages: ranges [0,1) [1,2) [2,3) [3,∞) apply to every partition, so stream 3
    reads pages 3.. of the three big partitions, 99% of the day, while three streams read 12 rows each
    (with a night partition under 4 pages the whole day is read by one stream: "the relation has 1
    page(s)"). Expected: the day's partitions together decide the ranges, so that no stream reads more
    than about its share (here: at most half of the day's rows)."""
    parent = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz, body text) PARTITION BY RANGE (at)").format(parent))
    for hour in range(0, 24, 6):
        start = dt.datetime(2024, 3, 10, hour, tzinfo=dt.UTC)
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({}) WITH (fillfactor = 10)").format(
            sql.Identifier(schema, f"ev_{hour:02d}"), parent, sql.Literal(start), sql.Literal(start + dt.timedelta(hours=6))))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, timestamptz '2024-03-10 05:00+00' + g * interval '1 second', "
                         "md5(g::text) FROM generate_series(1, 30) g").format(parent))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, timestamptz '2024-03-10 06:00+00' + g * interval '6 seconds', "
                         "md5(g::text) FROM generate_series(1, 9000) g").format(parent))
    conn.execute(sql.SQL("ANALYZE {}").format(parent))
    described = describe_table(conn, f"{schema}.ev", "at")
    where = day_filter(described, DAY)
    with read_snapshot(conn):
        plan = plan_streams(conn, described, where, DAY, 4)
    shares = [conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE ({}) AND ({})").format(parent, where, condition)
                           ).fetchone()[0] for condition in plan.conditions]
    assert sum(shares) == 9030
    # now: [36, 36, 36, 8922] ("4 ctid ranges over 4 pages")
    assert plan.streams == 4 and max(shares) <= 9030 // 2, (plan.reason, shares)
