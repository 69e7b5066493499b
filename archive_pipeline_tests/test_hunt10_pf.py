"""hunt10 pf: parallel extraction (the streams' readers) and batched runs under faults and edge data.

Each test is a bug found: it fails now and passes once the product is fixed."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator

import pyarrow.parquet as pq
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition, render_key
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.local.local_stack import LocalPostgres, start_postgres, start_replica, wait_for_replay
from archive_pipeline_tests.helpers import assert_nothing_left, download

DAY = dt.date(2024, 3, 10)


def test_a_parquet_day_read_while_a_partition_is_attached_is_not_published_short_of_its_rows(
        pg, conn, schema, store, temp_dir, monkeypatch):
    """A user archives a small day (300 rows, so its fingerprint is taken first) of a list-partitioned table as
    Parquet with one stream, while a migration ATTACHes a partition ``ev_aa`` holding 5 rows of the day (ATTACH
    takes no lock the archive holds; here it commits right after the archive's snapshot and locks, as in
    test_hunt3_s). The ADBC reader plans with the partitions as they are now: it reads ev_aa's 5 rows first
    (its list value sorts first), then ev_eu's. ``parquet._until_expected`` closes the reader as soon as it has
    seen the fingerprint's 300 rows (one batch ends there: row 295 of ev_eu is a ~5 MB value), so the day's row
    count agrees with the fingerprint and nothing else is checked: the archive is published green holding ids
    1-295 and 1001-1005, rows 296-300 lost, a day the table never had. CSV and JSONL fail the same run
    retryable ("ev_aa joined it ... after the snapshot"). Correct: the day fails, retryable, nothing published,
    or the archive holds the rows of one moment (ids 1-300, or those and 1001-1005)."""
    from archive_pipeline.core import archive

    ev, eu, aa = (sql.Identifier(schema, n) for n in ("ev", "ev_eu", "ev_aa"))
    conn.execute(sql.SQL("CREATE TABLE {} (id int, created_at timestamptz, region text, body text) "
                         "PARTITION BY LIST (region)").format(ev))
    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES IN ('eu')").format(eu, ev))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 00:00+00'::timestamptz + g * interval '1 min', 'eu', "
                         "CASE WHEN g = 295 THEN (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 150000) i) "
                         "ELSE 'x' END FROM generate_series(1, 300) g").format(ev))
    conn.execute(sql.SQL("CREATE TABLE {} (id int, created_at timestamptz, region text, body text)").format(aa))
    conn.execute(sql.SQL("INSERT INTO {} SELECT 1000 + g, '2024-03-10 12:00+00', 'aa', 'y' "
                         "FROM generate_series(1, 5) g").format(aa))
    spec = TableSpec(name=f"{schema}.ev", day_column="created_at", start_date="2024-03-01", format="parquet",
                     compression="zstd")
    planned = archive.plan_streams

    def attached_meanwhile(*args, **kwargs):  # the archive holds its snapshot, its locks and the fingerprint here
        with pg.connect() as other, other.transaction():
            other.execute(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES IN ('aa')").format(ev, aa))
        return planned(*args, **kwargs)

    monkeypatch.setattr(archive, "plan_streams", attached_meanwhile)
    try:
        result = archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    except ArchiveError as exc:
        assert exc.retryable, str(exc)
        assert store.head(archive.render_key(spec, DAY, store.prefix)) is None
        return
    ids = sorted(pq.read_table(io.BytesIO(download(store.client, store.bucket, result.key))).column("id").to_pylist())
    # Now: published green with 300 rows, ids 1-295 and 1001-1005.
    assert ids in (list(range(1, 301)), [*range(1, 301), *range(1001, 1006)]), (result.rows, ids[290:])


@pytest.fixture(scope="module")
def standby() -> Iterator[tuple[LocalPostgres, LocalPostgres]]:
    """A primary with an UNLOGGED table holding a day, and its hot-standby streaming replica."""
    primary = start_postgres({"autovacuum": "off"})
    try:
        with primary.connect() as conn:
            conn.execute("CREATE UNLOGGED TABLE scratch_events (id int, created_at timestamptz, body text)")
            conn.execute("INSERT INTO scratch_events SELECT g, '2024-03-10'::timestamptz + g * interval '1 second', "
                         "md5(g::text) FROM generate_series(1, 3000) g")
        replica = start_replica(primary)
        try:
            wait_for_replay(primary, replica)
            yield primary, replica
        finally:
            replica.stop()
    finally:
        primary.stop()


@pytest.mark.parametrize(("fmt", "streams"), [("jsonl", 1), ("parquet", 4)])
def test_an_unlogged_table_archived_from_a_standby_is_refused_as_such_not_as_the_archivers_sql(
        standby, store, temp_dir, fmt, streams):
    """A user archives from a hot-standby replica, as the README advises for production, a table that is
    UNLOGGED on the primary (a staging or scratch table, say). A standby has no data of an unlogged table:
    PostgreSQL refuses every read of it (0A000 "cannot access temporary or unlogged relations during
    recovery"). The day fails, not retried, as "the server rejected the archiver's SQL", with the remedy
    "check the table definition; if it looks right, report it with this message": a bug of ours, to be
    reported, while nothing in the archiver is wrong and no table definition needs fixing to archive it.
    Correct: a typed, non-retryable refusal naming the table as UNLOGGED, which a standby cannot read,
    with the remedy (archive it from the primary, or ALTER TABLE ... SET LOGGED), nothing left behind."""
    _, replica = standby
    spec = TableSpec(name="public.scratch_events", day_column="created_at", start_date="2024-03-01", format=fmt,
                     compression="zstd", parallel_streams=streams)
    with replica.connect() as conn:
        with pytest.raises(ArchiveError) as caught:
            archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    err = str(caught.value)
    assert "public.scratch_events" in err and DAY.isoformat() in err and not caught.value.retryable, err
    assert_nothing_left(store, render_key(spec, DAY, store.prefix), temp_dir)
    # Now: "the server rejected the archiver's SQL ...; to fix: check the table definition; if it looks right,
    # report it with this message".
    assert "rejected the archiver's SQL" not in err and "report it" not in err, err
    assert "primary" in err, err
