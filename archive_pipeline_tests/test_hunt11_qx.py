"""Hunt 11 (qx): a review of the newest fixes (count_rows, decompression_limit, rows_outside_period, the proof
by the strongest algorithm, _archived_again's generation, proven_etag, _run_group, prune's chunks)."""

from __future__ import annotations

import datetime as dt

from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.verify import deep_verify


def test_a_wall_clock_day_where_dst_starts_at_midnight_is_proven_and_restored(conn, schema, store):
    """A daily table with a ``timestamp`` (without time zone) day column and ``timezone: Africa/Cairo``, where
    the clocks go from 2024-04-26 00:00 to 01:00. README: a timestamp column's day is the local wall-clock day
    (24 wall-clock hours), so the values 2024-04-26 00:30 belong to 2024-04-26's archive (test_time_edges holds
    this: the archive takes them). The new ``rows_outside_period`` bounds a timestamp column by
    ``period.start``/``period.end`` with the zone stripped, i.e. [2024-04-26 01:00, 2024-04-27 00:00), not by the
    wall-clock bounds the archive selected with (``Period.wall_bounds``: [2024-04-26 00:00, 2024-04-27 00:00)). Now `verify --deep`
    of this good archive reports "1 of the archive's rows have a at outside 2024-04-26: it holds another
    period's rows", and a restore into a new table refuses it as "not this day's archive" (the day can never
    be proven, so never removed, and never be restored into a new table).
    Expected: proven (no problem), and restored (2 rows). Fix idea: bound a timestamp column by
    ``period.wall_bounds`` in rows_outside_period (better: reuse source._bound_values / day_filter)."""
    from archive_pipeline.core.restore import restore_day
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamp NOT NULL)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, '2024-04-25 12:00'), (2, '2024-04-26 00:30'), "
                         "(3, '2024-04-26 12:00'), (4, '2024-04-27 00:00')").format(s))
    table = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-01-01", timezone="Africa/Cairo")
    assert archive_partition(conn, table, "2024-04-26", store).rows == 2
    problems = deep_verify(conn, store, table, dt.date(2024, 4, 26))
    assert problems == [], problems
    restore_day(conn, store, table, dt.date(2024, 4, 26), into="new", target=f"{schema}.back")
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}.back").format(s)).fetchone()[0] == 2
