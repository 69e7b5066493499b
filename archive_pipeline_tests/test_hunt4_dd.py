"""Hunt 4 (dd): the table's definition changes between archiving a day and later operations on it.
Each test asserts the correct behaviour and fails on the current code because of a bug."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.plan import compare_days
from archive_pipeline.core.verify import deep_verify

DAY = dt.date(2024, 3, 10)


@pytest.mark.parametrize("mode", ["column", "declarative"])
def test_an_empty_day_after_a_column_was_added_gets_one_verdict(mode, conn, schema, store, temp_dir):
    """A day with no rows is archived (an empty manifest); later a migration adds a column to the table
    (``ALTER TABLE ev ADD COLUMN c int``); the day still has no rows. The user compares the day, deep-verifies
    it and re-runs its archive (a backfill over the range). Was: ``compare`` says ``equal`` ("archived as empty;
    the source still has no rows"), while ``deep_verify`` reports "the source's columns are now [...] so its
    rows are not the archive's" and the re-run fails, not retried, with LateRowsError "changed since it was
    archived: its columns changed", so the same day is green in one place and changed in the two others (and
    every re-run of an empty day fails after any migration). Should: one verdict; either the empty day is
    still exactly the day's (no rows either way: compare equal, deep_verify proves it, the re-run skips) or
    all three call it changed."""
    s = sql.Identifier(schema)
    if mode == "declarative":
        conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz NOT NULL) PARTITION BY RANGE (at)").format(s))
        conn.execute(sql.SQL("CREATE TABLE {}.ev_0310 PARTITION OF {}.ev FOR VALUES FROM ('2024-03-10 00:00+00') "
                             "TO ('2024-03-11 00:00+00')").format(s, s))
        spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv",
                         partitioning={"mode": "declarative"})
    else:
        conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz NOT NULL)").format(s))
        conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, '2024-03-11 01:00+00')").format(s))
        spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv")
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 0
    conn.execute(sql.SQL("ALTER TABLE {}.ev ADD COLUMN c int").format(s))

    [comparison] = compare_days(conn, spec, store, [DAY])
    problems = deep_verify(conn, store, spec, DAY)
    try:
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
        rerun = "skipped"
    except ArchiveError as exc:
        rerun = f"{type(exc).__name__}: {exc}"
    verdicts = {"compare": comparison.result == "equal", "deep_verify": problems == [], "rerun": rerun == "skipped"}
    assert len(set(verdicts.values())) == 1, (verdicts, comparison.note, problems, rerun)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_a_day_archived_before_its_enum_type_was_renamed_is_refused_for_removal_with_a_remedy_that_works(
        fmt, conn, schema, store, temp_dir):
    """A table with an enum column (``mood``) is archived; then a migration renames the type (``ALTER TYPE mood
    RENAME TO feeling``): no value changes, and the re-run check (skipped) and ``compare`` (equal) agree the day is
    still exactly its archive. Then retention's removal (``prune``, the ``source_removed`` asset) and deep
    verification of every such day fail with a ``RestoreError``: "column 'm' of the manifest: type 'mood' does
    not exist in this database; create it ... and restore again" -- a restore's remedy for a removal or a proof
    that restores nothing, and not a ``RemovalRefused``. The day stays in the source forever, each prune a
    failure. Should: a refusal (a ``RemovalRefused``, say) naming table and day whose remedy works: archive the day
    again with overwrite, which records the type under its present name (after which the day is proven and
    removed); or the proof resolves the renamed type and removes the day."""
    from archive_pipeline.core.lifecycle import remove_day

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TYPE {}.mood AS ENUM ('ok', 'bad')").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date, m {}.mood)").format(s, s))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, %s, 'ok'), (2, %s, 'bad')").format(s), (DAY, DAY))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format=fmt,
                     retention={"keep_days": 1, "action": "delete"})
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(sql.SQL("ALTER TYPE {}.mood RENAME TO feeling").format(s))
    assert compare_days(conn, spec, store, [DAY])[0].result == "equal"
    try:
        remove_day(conn, spec, DAY, store)
    except ArchiveError as exc:
        said = str(exc)
        assert "restore again" not in said and "overwrite" in said, f"{type(exc).__name__}: {said}"
        assert f"{schema}.ev" in said and "2024-03-10" in said, said
        # and the remedy works: archived again, the day is proven and removed
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir, overwrite=True)
        assert deep_verify(conn, store, spec, DAY) == []
        remove_day(conn, spec, DAY, store)
