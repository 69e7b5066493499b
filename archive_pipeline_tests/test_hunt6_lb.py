"""Hunt 6 (lb): the source or the target changes meanwhile, with real concurrency on real PostgreSQL. Each
test fails on a bug."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError

DAY = dt.date(2024, 3, 10)


@pytest.mark.parametrize("change", ["TRUNCATE {base}", "ALTER TABLE {base} ALTER COLUMN amount TYPE float8",
                                    "ALTER TABLE {base} DETACH PARTITION {day}"])
def test_a_views_base_table_rewritten_right_after_the_snapshot_is_not_archived_as_an_empty_day(pg, conn, schema, store,
                                                                                         monkeypatch, change):
    """A configured table that is a view (`CREATE VIEW ev AS SELECT id, at FROM ev_base`, ev_base partitioned
    by day): the run's snapshot is taken by its first statement, the base table is locked only by the first
    query of the day. A TRUNCATE, a rewriting ALTER TABLE of the base table, or a DETACH of the day's partition
    committed in that window is not MVCC-safe: the snapshot sees the new, empty file (or no partition).
    hold_day checks relfilenodes and detached partitions only of the configured relation's own pg_inherits
    tree (relkind r/m), so for a view it checks nothing: the day is published green as an "empty" archive
    (rows 0), although the day held 3 rows before and (but for the DETACH) still does. The same change on a
    table fails the day, retryable (test_snapshot_window). Should: the 3 rows, or a retryable failure."""
    from archive_pipeline.core import archive

    base, view, day = sql.Identifier(schema, "ev_base"), sql.Identifier(schema, "ev"), sql.Identifier(schema, "ev_0310")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz NOT NULL, amount numeric(12,2)) PARTITION BY RANGE (at)"
                         ).format(base))
    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ('2024-03-10+00') TO ('2024-03-11+00')"
                         ).format(day, base))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 01:00+00', 1), (2, '2024-03-10 02:00+00', 2), "
                         "(3, '2024-03-10 03:00+00', 3)").format(base))
    conn.execute(sql.SQL("CREATE VIEW {} AS SELECT id, at FROM {}").format(view, base))
    original = archive.source_table

    def change_commits_in_the_window(*args, **kwargs):  # another session, between snapshot and first lock
        with pg.connect() as other:
            other.execute(sql.SQL(change).format(base=base, day=day))
        return original(*args, **kwargs)

    monkeypatch.setattr(archive, "source_table", change_commits_in_the_window)
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, partitioning={"mode": "column"})
    try:
        result = archive_partition(conn, spec, DAY, store)
    except ArchiveError as exc:
        assert exc.retryable, str(exc)
        return
    # Now: green, rows 0, empty; the view shows 3 rows of the day before and after.
    assert (result.rows, result.empty) == (3, False), result


def _loopback_foreign_table(conn, schema: str) -> None:
    """``far``: a postgres_fdw foreign table over ``far_src`` of this very database (skipped where the extension
    is not available), 3 rows of the day."""
    if not conn.execute("SELECT EXISTS (SELECT FROM pg_available_extensions WHERE name = 'postgres_fdw')").fetchone()[0]:
        pytest.skip("postgres_fdw is not installed on this server")
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.far_src (id int, at date, body text)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.far_src SELECT g, %s, 'original' FROM generate_series(1, 3) g").format(s),
                 (DAY,))
    server = sql.Identifier(f"{schema}_loop")
    conn.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS postgres_fdw SCHEMA {}").format(s))
    conn.execute(sql.SQL("CREATE SERVER {} FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host {}, port {}, dbname {})"
                         ).format(server, sql.Literal(conn.info.host), sql.Literal(str(conn.info.port)),
                                  sql.Literal(conn.info.dbname)))
    conn.execute(sql.SQL("CREATE USER MAPPING FOR CURRENT_USER SERVER {} OPTIONS (user {})").format(
        server, sql.Literal(conn.info.user)))
    conn.execute(sql.SQL("CREATE FOREIGN TABLE {}.far (id int, at date, body text) SERVER {} OPTIONS (schema_name {}, "
                         "table_name 'far_src')").format(s, server, sql.Literal(schema)))


def test_a_foreign_table_archived_as_parquet_is_read_in_the_fingerprints_remote_snapshot(pg, conn, schema, store,
                                                                                        temp_dir, monkeypatch):
    """A foreign table (postgres_fdw) archived as Parquet. A day read from a foreign table is fingerprinted
    first, on the archive's own session, so that the fingerprint and the read share one remote transaction
    (test_hunt_parallel2). But Parquet reads on a second connection (ADBC) that imports only the local
    snapshot: postgres_fdw opens a remote transaction of its own there, with a later remote snapshot. A row
    updated on the remote side in between (here: committed just before ADBC connects) is archived as
    updated while the manifest records the fingerprint of the row as it was: the run is green, and its
    object is not the day its manifest describes (every restore and proof of it then fails as "altered").
    Should: the object holds the fingerprinted rows, or the run fails retryable."""
    from archive_pipeline.core.formats import parquet
    from archive_pipeline.core.restore import restore_day

    _loopback_foreign_table(conn, schema)
    original = parquet._adbc_connect

    def remote_row_updated_first(*args, **kwargs):  # another session, after the fingerprint, before the read
        with pg.connect() as other:
            other.execute(sql.SQL("UPDATE {} SET body = 'changed' WHERE id = 2").format(
                sql.Identifier(schema, "far_src")))
        return original(*args, **kwargs)

    monkeypatch.setattr(parquet, "_adbc_connect", remote_row_updated_first)
    spec = TableSpec(name=f"{schema}.far", day_column="at", start_date=DAY, format="parquet", compression="zstd",
                     partitioning={"mode": "column"})
    try:
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    except ArchiveError as exc:
        assert exc.retryable, str(exc)
        return
    monkeypatch.undo()
    # Now: green; the object holds 'changed', the manifest's fingerprint is of 'original', so a restore of the
    # day into a new table is rolled back ("the archive does not hold the rows it was proven to hold").
    restored = restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.far_back", temp_dir=temp_dir)
    assert restored.fingerprint_checked, restored


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_an_enum_label_renamed_between_the_fingerprint_and_the_read_is_not_archived_green(pg, conn, schema, store,
                                                                                         temp_dir, monkeypatch, fmt):
    """A user renames an enum label (`ALTER TYPE status RENAME VALUE 'pending' TO 'waiting'`) while a day of a
    table with such a column is being archived: after the snapshot's fingerprint, before the rows are read.
    Labels are catalog rows, which PostgreSQL does not read in the run's REPEATABLE READ snapshot: the
    fingerprint hashed 'pending', the read (a new statement, or ADBC's new session for Parquet) writes
    'waiting'. The run is green, yet its object does not hold the rows its manifest's fingerprint describes:
    every restore of the day is rolled back as "altered", and deep verification fails it. Should: the run
    fails retryable (the column's type changed under the read, as for a retyped column), or archives what it
    fingerprinted; never a green archive that contradicts its own manifest."""
    from archive_pipeline.core import archive
    from archive_pipeline.core.restore import restore_day

    s = sql.Identifier(schema).as_string(conn)
    conn.execute(f"CREATE TYPE {s}.status AS ENUM ('new', 'pending', 'done')")
    conn.execute(f"CREATE TABLE {s}.jobs (id int, at timestamptz, state {s}.status)")
    conn.execute(f"INSERT INTO {s}.jobs SELECT g, '2024-03-10 01:00+00', 'pending' FROM generate_series(1, 5) g")
    original = archive.write_day

    def renamed_first(*args, **kwargs):  # another session, after the fingerprint, before the read
        with pg.connect() as other:
            other.execute(f"ALTER TYPE {s}.status RENAME VALUE 'pending' TO 'waiting'")
        return original(*args, **kwargs)

    monkeypatch.setattr(archive, "write_day", renamed_first)
    spec = TableSpec(name=f"{schema}.jobs", day_column="at", start_date=DAY, format=fmt, compression="zstd",
                     partitioning={"mode": "column"})
    try:
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    except ArchiveError as exc:
        assert exc.retryable, str(exc)
        return
    monkeypatch.undo()
    # Now: green; the manifest's fingerprint hashes 'pending', the object holds 'waiting': the restore into a new
    # table (the labels as they are now) is rolled back, "the archive does not hold the rows it was proven to hold".
    restored = restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.jobs_back", temp_dir=temp_dir)
    assert restored.fingerprint_checked, restored
