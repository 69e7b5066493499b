"""Changes that snapshots do not isolate, committed between the archive's snapshot and its first lock
(found by the third hunt): the day is archived whole or fails retryable, never published empty."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec


def spec(**kw) -> TableSpec:
    return TableSpec(**{"name": "public.events", "day_column": "at", "start_date": "2024-01-01", **kw})


@pytest.mark.parametrize("change", ["ALTER TABLE {t} ALTER COLUMN id TYPE bigint", "TRUNCATE {t}"])
def test_a_rewrite_committed_right_after_the_snapshot_is_not_archived_as_an_empty_day(pg, conn, schema, store,
                                                                                     monkeypatch, change):
    """The coordinator's snapshot is taken by its first statement (``SELECT set_config``), but the
    coordinator takes no lock on the table until its first query of the day (EXPLAIN / fingerprint),
    after the catalog lookups. A table rewrite (ALTER COLUMN TYPE) or TRUNCATE that commits in that
    window is not MVCC-safe: the snapshot then sees the day empty, and the day is published as an
    "empty" archive (rows 0, fingerprint agreeing) although the day held its rows before and, after
    the rewrite, still does. The README's guarantee ("one snapshot"; changes that snapshots do not
    isolate fail the day, retryable) holds for the sessions that import the snapshot, not for the
    coordinator. Correct: the archive holds the day's 3 rows, or the day fails retryable."""
    from archive_pipeline.core import archive
    from archive_pipeline.core.errors import ArchiveError

    t = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz NOT NULL, amount numeric(12,2))").format(t))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 01:00+00', 1), (2, '2024-03-10 02:00+00', 2), "
                         "(3, '2024-03-10 03:00+00', 3)").format(t))
    original = archive.source_table

    def change_commits_in_the_window(*args, **kwargs):  # another session, between snapshot and first lock
        with pg.connect() as other:
            other.execute(sql.SQL(change).format(t=t))
        return original(*args, **kwargs)

    monkeypatch.setattr(archive, "source_table", change_commits_in_the_window)
    table = spec(name=f"{schema}.ev")
    try:
        result = archive_partition(conn, table, "2024-03-10", store)
    except ArchiveError as exc:
        assert exc.retryable, str(exc)
        return
    assert (result.rows, result.empty) == (3, False)


def test_the_days_partition_dropped_right_after_the_snapshot_fails_the_day_retryable(pg, conn, schema, store,
                                                                                     monkeypatch, s3_client, bucket):
    from archive_pipeline.core import archive
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline_tests.helpers import range_partitioned_events

    range_partitioned_events(conn, schema, [("ev_20240310", "2024-03-10", "2024-03-11")])
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 12:00+00' FROM generate_series(1, 3) g").format(
        sql.Identifier(schema, "ev")))
    original = archive.source_table

    def dropped_in_the_window(*args, **kwargs):
        with pg.connect() as other:
            other.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, "ev_20240310")))
        return original(*args, **kwargs)

    monkeypatch.setattr(archive, "source_table", dropped_in_the_window)
    with pytest.raises(ArchiveError, match="ev_20240310.*changed") as failure:
        archive_partition(conn, spec(name=f"{schema}.ev", partitioning={"mode": "declarative"}), "2024-03-10", store)
    assert failure.value.retryable
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


@pytest.mark.parametrize("change", [
    "VACUUM FULL {day}",  # MVCC-safe rewrites: the snapshot still sees every row of the day
    "CLUSTER {day} USING ev_20240310_at_idx",
    "VACUUM FULL {other}",  # maintenance on another day's partition
    "TRUNCATE {other}",  # another day emptied (retention's delete, a reload)
])
def test_a_rewrite_that_keeps_the_snapshots_rows_does_not_fail_the_day(pg, conn, schema, store, monkeypatch, change):
    """(From the review.) A new file whose rows the snapshot still sees is no change to fail for."""
    from archive_pipeline.core import archive
    from archive_pipeline_tests.helpers import range_partitioned_events

    range_partitioned_events(conn, schema, [("ev_20240310", "2024-03-10", "2024-03-11"),
                                            ("ev_20240311", "2024-03-11", "2024-03-12")])
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 12:00+00'::timestamptz + (g % 2) * interval '1 day' "
                         "FROM generate_series(1, 6) g").format(sql.Identifier(schema, "ev")))
    conn.execute(sql.SQL("CREATE INDEX ev_20240310_at_idx ON {} (at)").format(sql.Identifier(schema, "ev_20240310")))
    original = archive.source_table

    def change_in_the_window(*args, **kwargs):
        with pg.connect() as other:
            other.execute(sql.SQL(change).format(other=sql.Identifier(schema, "ev_20240311"),
                                                 day=sql.Identifier(schema, "ev_20240310")))
        return original(*args, **kwargs)

    monkeypatch.setattr(archive, "source_table", change_in_the_window)
    result = archive_partition(conn, spec(name=f"{schema}.ev", partitioning={"mode": "declarative"}), "2024-03-10",
                               store)
    assert (result.rows, result.empty) == (3, False)


@pytest.mark.parametrize("change", ["DROP TABLE {day}", "ALTER TABLE {parent} DETACH PARTITION {day}"])
def test_a_partition_in_a_schema_holding_a_dot_is_named_so_it_reads_back(pg, conn, schema, store, monkeypatch, change):
    """The day's partition lives in the schema "<schema>.old" and is dropped or detached in the window: the
    failure named it old-style, `<schema>.old.ev_20240310`, which reads as the table "old.ev_20240310" of
    <schema>; it names it as SQL does, `"<schema>.old"."ev_20240310"`, as the rest of the project does."""
    from archive_pipeline.core import archive
    from archive_pipeline.core.errors import ArchiveError

    parent, day = sql.Identifier(schema, "ev"), sql.Identifier(f"{schema}.old", "ev_20240310")
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(f"{schema}.old")))
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz NOT NULL) PARTITION BY RANGE (at)").format(parent))
    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ('2024-03-10 00:00+00') TO "
                         "('2024-03-11 00:00+00')").format(day, parent))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 12:00+00')").format(parent))
    original = archive.source_table

    def changed_in_the_window(*args, **kwargs):
        with pg.connect() as other:
            other.execute(sql.SQL(change).format(parent=parent, day=day))
        return original(*args, **kwargs)

    monkeypatch.setattr(archive, "source_table", changed_in_the_window)
    with pytest.raises(ArchiveError) as failure:
        archive_partition(conn, spec(name=f"{schema}.ev", partitioning={"mode": "declarative"}), "2024-03-10", store)
    assert f'"{schema}.old"."ev_20240310"' in str(failure.value), str(failure.value)
    assert failure.value.retryable
