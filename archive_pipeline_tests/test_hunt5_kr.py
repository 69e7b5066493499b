"""Hunt5 kr: the round trip archive -> remove (retention) -> restore --into original -> list/compare/verify
-> remove again, over partitioning mode x granularity x removal action x format. Only the cells that fail
because of a real bug are kept here."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.restore import restore_day

DAY = dt.date(2024, 3, 10)


def _day_partitions(conn, schema: str) -> None:
    """``<schema>.t`` partitioned by day: t_20240309..t_20240311, rows on the 9th only (the 10th is empty)."""
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz NOT NULL, v text) PARTITION BY RANGE (at)").format(
        sql.Identifier(schema, "t")))
    for d in (9, 10, 11):
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier(schema, f"t_202403{d:02d}"), sql.Identifier(schema, "t"),
            sql.Literal(f"2024-03-{d:02d} 00:00+00"), sql.Literal(f"2024-03-{d + 1:02d} 00:00+00")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-09 00:00+00'::timestamptz + g * interval '1 hour', "
                         "'v' || g FROM generate_series(0, 19) g").format(sql.Identifier(schema, "t")))


@pytest.mark.parametrize("mode", ["declarative", "naming"])
def test_an_empty_day_restored_after_its_drop_is_dropped_again(conn, schema, store, temp_dir, mode):
    """A user's retention (action drop) dropped the partition of a day archived as empty; they restore the day
    with ``--into original``, which creates the partition again (``created`` names it). The README: "A day
    restored into the original table after retention removed it is an ordinary source day again: the next
    removal proves and removes it again instead of calling it 'already removed'". Today the next removal
    answers "already removed" (no row of the day is there) and leaves the re-created partition in place, while
    the manifest still says it was dropped. It should drop the partition again (or at least not report a
    removal that did not happen)."""
    _day_partitions(conn, schema)
    part = {"mode": "declarative"} if mode == "declarative" else {"mode": "naming", "pattern": "t_%Y%m%d"}
    spec = TableSpec(name=f"{schema}.t", day_column="at", start_date=DAY, format="jsonl", partitioning=part,
                     retention={"keep_days": 1, "action": "drop"})
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    first = remove_day(conn, spec, DAY, store)
    assert first.removed_at is not None and first.rows == 0
    exists = sql.SQL("SELECT to_regclass({}) IS NOT NULL").format(sql.Literal(f'"{schema}"."t_20240310"'))
    assert conn.execute(exists).fetchone()[0] is False
    restored = restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir)
    assert f"{schema}.t_20240310" in restored.created
    assert conn.execute(exists).fetchone()[0] is True
    again = remove_day(conn, spec, DAY, store)
    assert (again.already_removed, conn.execute(exists).fetchone()[0]) == (False, False), again
