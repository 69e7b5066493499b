"""Hunt 22 (am): partition discovery (core/discovery.py and its callers in plan.py, lifecycle.py, defs/sensors.py,
cli.py): declarative children, DEFAULT and catch-all partitions, open-ended bounds."""

from __future__ import annotations

import datetime as dt

from psycopg import sql

from archive_pipeline.core import plan
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec

DAY = dt.date(2024, 3, 10)
NEXT = dt.date(2024, 3, 11)


def test_a_catch_all_partition_s_rows_are_not_in_the_source_for_compare_list_and_the_command_line_archive(
        conn, schema, store, temp_dir):
    """Scenario: a declarative table ``ev`` (timestamptz key) whose only partition is a catch-all,
    ``FOR VALUES FROM (MINVALUE) TO (MAXVALUE)`` (a table just converted to partitioned, its rows attached as one
    partition to be split later; '-infinity'..'infinity' is the same). It holds one row on 2024-03-10 and one on
    2024-03-11. 2024-03-10 is archived through the asset's path (archive_partition reads the parent: 1 row,
    green). Then the command line's compare, list --check-source and archive --dry-run look at both days.

    Now: ChildRange treats a child unbounded on both sides as "a catch-all that holds no period, as a DEFAULT
    partition" (ChildRange._compared returns None), so catalog_days / existing_days find no day of it. For a
    DEFAULT partition plan.present_days and plan._compare_days then probe the remaining days through the parent
    (_has_default_partition), but that check reads pg_partitioned_table.partdefid only: a catch-all range child is
    not a DEFAULT partition, and present_days probes it only with ``catalog=True`` (prune's
    _has_open_ended_child). So compare calls the archived 2024-03-10 "not-in-source ... no removal of it was
    recorded (dropped or deleted by hand?): its archive is its only copy; restore --into original puts it back"
    while its row is in the table, list --check-source says "no longer in the source" (in_source False), and
    2024-03-11, whose row is there, is "no-data": the command line's archive reports it so and exits 0, and list
    never shows it missing. The asset's own run of 2024-03-11 would archive its row: the two paths disagree.

    Should: a child unbounded on both sides is probed through the parent wherever a DEFAULT partition is
    (compare, list, archive, the dry run): compare says "equal" for 2024-03-10, and 2024-03-11 is a day with data
    to archive. Fix idea: make _has_default_partition (or a sibling used by present_days and _compare_days) also
    true when child_ranges has a child with ``start is None and end is None``, i.e. probe ``rest`` when
    ``_has_default_partition or _has_catch_all_child``, as prune's catalog path already does for open-ended
    children."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz) PARTITION BY RANGE (at)").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.ev_all PARTITION OF {}.ev FOR VALUES FROM (MINVALUE) TO (MAXVALUE)")
                 .format(s, s))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, '2024-03-10 12:00+00'), (2, '2024-03-11 12:00+00')")
                 .format(s))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01",
                     partitioning={"mode": "declarative"}, format="csv", compression="none")
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 1  # the asset's path reads it

    days = plan.select_days(spec, DAY, NEXT)
    compared = {c.day.isoformat(): c for c in plan.compare_days(conn, spec, store, days)}
    statuses = {s.day.isoformat(): s for s in plan.day_statuses(conn, spec, store, days, check_source=True)}
    planned = {p.day.isoformat(): p for p in plan.plan_archive(conn, spec, store, days, overwrite=False)}
    found = (compared["2024-03-10"].result, statuses["2024-03-10"].in_source,
             "2024-03-11" in statuses and statuses["2024-03-11"].state, planned["2024-03-11"].action)
    assert found == ("equal", True, "missing", "archive"), (
        f"compare {compared['2024-03-10'].result!r} ({compared['2024-03-10'].note}); list in_source "
        f"{statuses['2024-03-10'].in_source}; 2024-03-11 listed as {found[2]!r}, planned "
        f"{planned['2024-03-11'].action!r} ({planned['2024-03-11'].reason})")
