"""Hunt 17 (wi): parallel extraction (``parallel_streams``): N=1 vs N>1, plans over odd relations, one stream
failing, pool slots for the streams."""

from __future__ import annotations

import datetime as dt

import pytest

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline.local.local_stack import start_postgres

DAY = dt.date(2024, 3, 10)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_an_unchanged_day_read_by_one_stream_is_byte_identical_after_another_clients_partial_scan(
        fmt, s3_client, bucket, temp_dir):
    """README (Parallel extraction): the output is one object, rows in stream order, "byte-identical from run to
    run". A table with ``parallel_streams: auto`` (one stream below 2,000,000 estimated rows) and no index on the
    day column is read by one sequential scan. On a table bigger than a quarter of shared_buffers PostgreSQL's
    ``synchronize_seqscans`` (on by default) starts a sequential scan where the last scan of that table reported
    its position: another client's ``SELECT * FROM t LIMIT n`` (or the fingerprint's scan running alongside, or a
    report) leaves that hint in the middle of the table, and the next archive of the same, unchanged day begins
    there and wraps around.

    Now: the second archive (overwrite) of the unchanged day has other bytes (another MD5): its rows start at
    the page the other client's scan stopped at. Should: the same bytes, as the README says (the rows' order is
    the physical one, as pg_dump keeps it).
    Fix idea: ``synchronize_seqscans = off`` in the snapshot's settings (SNAPSHOT_SETTINGS, which every stream,
    the ADBC reader and the fingerprint take), as pg_dump does."""
    server = start_postgres({"shared_buffers": "2MB", "autovacuum": "off"})  # syncscan above 64 pages
    try:
        with server.connect() as conn:
            conn.autocommit = True
            conn.execute("CREATE TABLE ev (id int, at timestamptz, body text)")
            conn.execute("INSERT INTO ev SELECT g, timestamptz '2024-03-09 00:00+00' + (hashint4(g)::bigint & 262143)"
                         " * interval '1 second', md5(g::text) FROM generate_series(1, 60000) g")  # ~620 pages
            conn.execute("ANALYZE ev")
            spec = TableSpec(name="public.ev", day_column="at", start_date="2024-03-01", format=fmt,
                             compression="zstd", parallel_streams="auto")
            store = S3Store(s3_client, bucket, prefix=f"sync-{fmt}", part_size=MIN_PART_SIZE)
            first = archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
            assert first.rows > 10000
            with server.connect() as other:  # a report's look at the table: its scan stops at page ~200
                other.execute("SELECT * FROM ev LIMIT 20000").fetchall()
            again = archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir), overwrite=True)
            assert again.fingerprint == first.fingerprint and again.rows == first.rows
            assert again.md5 == first.md5, "the unchanged day's archive has other bytes: rows in another order"
    finally:
        server.stop()


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_a_day_read_by_one_stream_is_not_read_by_postgresqls_own_parallel_workers(fmt, conn, schema, s3_client,
                                                                                  bucket, temp_dir):
    """README (Parallel extraction): one object, rows in stream order, "byte-identical from run to run". A table
    with ``parallel_streams: auto`` (one stream below 2,000,000 estimated rows), no index on the day column, the day
    a twentieth of a 30 MB table: with PostgreSQL's defaults (max_parallel_workers_per_gather = 2) the planner reads
    the day's ``COPY (SELECT ...)`` with a Gather over a Parallel Seq Scan, whose rows arrive in whatever order the
    leader and the workers produce them.

    Now: three archives (overwrite) of the same unchanged day, with nothing else running, have three different
    MD5s. Should: the same bytes each time (the archive's own streams are what split a day; a stream reads its part
    in one backend, as the README's "one COPY is one PostgreSQL backend" says).
    Fix idea: ``max_parallel_workers_per_gather = 0`` in the read's settings (the streams', the ADBC reader's), as
    ALONGSIDE_SETTINGS already does for the fingerprint's session."""
    from psycopg import sql

    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, body text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s::date + (g %% 20), md5(g::text) "
                         "FROM generate_series(1, 400000) g").format(table), (DAY - dt.timedelta(days=10),))
    conn.execute(sql.SQL("ANALYZE {}").format(table))
    conn.execute("SET max_parallel_workers_per_gather = 2")  # PostgreSQL's default, whatever the test server's
    plan = " ".join(r[0] for r in conn.execute(sql.SQL("EXPLAIN SELECT * FROM {} WHERE at >= %s AND at < %s").format(
        table), (DAY, DAY + dt.timedelta(days=1))))
    assert "Parallel Seq Scan" in plan, plan  # the premise: the planner's choice for the day at the defaults
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01", format=fmt, compression="zstd",
                     parallel_streams="auto")
    store = S3Store(s3_client, bucket, prefix=f"gather-{fmt}", part_size=MIN_PART_SIZE)
    results = [archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir), overwrite=True) for _ in range(3)]
    assert {r.rows for r in results} == {20000} and len({r.fingerprint for r in results}) == 1
    assert results[0].streams.startswith("1 stream"), results[0].streams
    assert len({r.md5 for r in results}) == 1, f"one unchanged day, three archives: {[r.md5 for r in results]}"


def _inheritance_parent(conn, schema: str) -> None:
    """``ev`` (id, at date, body), empty, indexed on ``at``: the parent of an inheritance tree."""
    from psycopg import sql

    conn.execute(sql.SQL("CREATE TABLE {s}.ev (id int, at date, body text); CREATE INDEX ON {s}.ev (at)").format(
        s=sql.Identifier(schema)))


def test_a_date_day_among_a_months_rows_of_an_inheritance_child_is_read_by_the_index_not_page_ranges(
        conn, schema, s3_client, bucket, temp_dir):
    """README (Parallel extraction): "one stream ... for a `date` day (it cannot be cut in time slices) among many
    days of a relation indexed on it: page ranges would read all its days, the index reads the day". An
    inheritance tree (the parent empty, as parents are; a history child of 30 days, 60,000 rows, analyzed; a btree
    index on the date column in both), ``parallel_streams: 4``, one day (2,000 rows).

    Now: 4 ctid ranges over the child's 561 pages, read with index scans turned off: the streams read all 30 days
    for one. Cause: ``_index_reads_less`` counts the tree's rows with ``_tree_tuples``, which answers "unknown"
    (-1) because the empty parent was never analyzed (reltuples -1, and autovacuum never analyzes a parent whose
    own rows never change), and "unknown" means page ranges. Should: one stream through the index (the streams
    note saying why), as for the same child archived on its own.
    Fix idea: a relation of 0 pages holds 0 rows whatever its reltuples says (or count only the relations the
    day's query scans that hold pages)."""
    from psycopg import sql

    _inheritance_parent(conn, schema)
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {s}.ev_hist () INHERITS ({s}.ev); CREATE INDEX ON {s}.ev_hist (at)").format(s=s))
    conn.execute(sql.SQL("INSERT INTO {s}.ev_hist SELECT g, %s::date - (g %% 30), md5(g::text) "
                         "FROM generate_series(1, 60000) g").format(s=s), (DAY,))
    conn.execute(sql.SQL("ANALYZE {s}.ev_hist").format(s=s))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01", format="jsonl",
                     compression="zstd", parallel_streams=4)
    store = S3Store(s3_client, bucket, prefix="inherit-hist", part_size=MIN_PART_SIZE)
    result = archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    assert result.rows == 2000
    assert result.streams.startswith("1 stream"), result.streams


def test_a_day_in_its_own_check_constrained_inheritance_child_is_split_not_refused_for_the_other_days(
        conn, schema, s3_client, bucket, temp_dir):
    """README (Parallel extraction): ctid page ranges "for a day that is its own relation" and "for relations at
    least half of whose rows (planner statistics) are the day's". Pre-10 partitioning: an inheritance parent
    (analyzed) with one child per day, each with its CHECK constraint on the date column and an index on it; the
    day's query reads the parent (empty) and the day's child only (constraint exclusion), every row of which is
    the day's. ``parallel_streams: 4``.

    Now: one stream, and the day's ``streams`` note says "ctid ranges would read all of <schema>.ev (~50,000
    rows) for the day's ~5,001, which the index on at reads alone": false, page ranges would read the day's child
    (5,000 rows, all of the day) and the empty parent. Cause: ``_index_reads_less`` (and ``_mostly_the_day``) count
    the reltuples of the whole inheritance tree (``_tree_tuples``), the nine children the query never reads
    included. Should: 4 ctid ranges over the day's child, as for a declarative partition of the day.
    Fix idea: count the reltuples of the relations the day's query scans (``scanned_relations``), not the tree's."""
    from psycopg import sql

    _inheritance_parent(conn, schema)
    s = sql.Identifier(schema)
    for back in range(10):
        day = DAY - dt.timedelta(days=back)
        child = sql.Identifier(f"ev_{day:%Y%m%d}")
        conn.execute(sql.SQL("CREATE TABLE {s}.{c} (CHECK (at >= {lo} AND at < {hi})) INHERITS ({s}.ev); "
                             "CREATE INDEX ON {s}.{c} (at)").format(
            s=s, c=child, lo=sql.Literal(day), hi=sql.Literal(day + dt.timedelta(days=1))))
        conn.execute(sql.SQL("INSERT INTO {s}.{c} SELECT g, %s, md5(g::text) FROM generate_series(1, 5000) g").format(
            s=s, c=child), (day,))
        conn.execute(sql.SQL("ANALYZE {s}.{c}").format(s=s, c=child))
    conn.execute(sql.SQL("ANALYZE {s}.ev").format(s=s))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01", format="jsonl",
                     compression="zstd", parallel_streams=4)
    store = S3Store(s3_client, bucket, prefix="inherit-days", part_size=MIN_PART_SIZE)
    result = archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    assert result.rows == 5000
    assert result.streams.startswith("4 stream(s)"), result.streams


def test_the_pools_stream_slots_go_back_when_the_day_is_read_not_when_its_fingerprint_alongside_ends(
        conn, schema, s3_client, bucket, temp_dir, monkeypatch):
    """README (Sessions and the pool): a day read with N streams claims N - 1 more slots of the table's pool, "and
    the slots go back as soon as the day is read"; the pool's limit is there to bound the sessions on the source. A
    new day at ``parallel_streams: 4`` is fingerprinted by one more session alongside the streams, which often ends
    later than they do (README: the fingerprint costs more than the COPY). Here the fingerprint starts once the
    four streams have read every row and closed their sessions (a seam holds it until ``write_day`` returned).

    Now: the three stream slots are still held while the fingerprint runs (the core gives them back only when
    ``_read_planned`` returns, fingerprint included): for the fingerprint's whole duration the pool counts three
    sessions that no longer exist, and other days' streams are refused slots for nothing. Should: given back as
    soon as the streams' rows are read (``write_day`` returned).
    Fix idea: exit the slots' context right after ``write_day`` (e.g. inside ``write_then_release``), not around
    the fingerprint alongside."""
    import contextlib
    import threading

    from psycopg import sql

    from archive_pipeline.core import archive

    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, body text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s, md5(g::text) FROM generate_series(1, 60000) g").format(table),
                 (DAY,))  # over FINGERPRINT_ALONGSIDE_ROWS: fingerprinted alongside the streams
    conn.execute(sql.SQL("ANALYZE {}").format(table))
    held: list[int] = []

    @contextlib.contextmanager
    def stream_slots(wanted: int):
        held.append(wanted)
        try:
            yield wanted
        finally:
            held.remove(wanted)

    read = threading.Event()
    real_write_day, real_fingerprint = archive.write_day, archive._Archiving._timed_fingerprint
    seen: list[list[int]] = []

    def write_day(*args, **kwargs):
        try:
            return real_write_day(*args, **kwargs)
        finally:
            read.set()

    def timed_fingerprint(self, session, *args, **kwargs):
        if session is not self.conn:  # the session alongside the streams
            assert read.wait(20), "the streams never finished"
            seen.append(list(held))
        return real_fingerprint(self, session, *args, **kwargs)

    monkeypatch.setattr(archive, "write_day", write_day)
    monkeypatch.setattr(archive._Archiving, "_timed_fingerprint", timed_fingerprint)
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01", format="jsonl",
                     compression="zstd", parallel_streams=4)
    store = S3Store(s3_client, bucket, prefix="slots", part_size=MIN_PART_SIZE)
    result = archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir), stream_slots=stream_slots)
    assert result.rows == 60000 and result.streams.startswith("4 stream(s)"), result.streams
    assert seen, "the day was not fingerprinted alongside its streams (the premise)"
    assert seen == [[]], f"slots still held for the streams while only the fingerprint runs: {seen}"
    assert held == []
