"""Hunt 6 (la): time and calendars through the round trip. Each test asserts what the README promises and
fails on the bug it names."""
from __future__ import annotations

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.lifecycle import remove_day


def spec(**kw) -> TableSpec:
    return TableSpec(**{"name": "public.events", "day_column": "at", "start_date": "2024-01-01", **kw})


@pytest.mark.parametrize("key_type,values", [
    ("date", "(1, '2024-11-02'), (2, '2024-11-03'), (3, '2024-11-04')"),
    ("timestamp", "(1, '2024-11-02 23:59:59.999999'), (2, '2024-11-03 00:00'), (3, '2024-11-03 00:30'), "
                  "(4, '2024-11-03 23:59:59.999999'), (5, '2024-11-04 00:00')"),
])
def test_drop_of_the_day_whose_midnight_a_fall_back_repeats_finds_its_own_partition(conn, schema, store, temp_dir,
                                                                                  key_type, values):
    """A user in Cuba partitions a table by day on a ``date`` (or wall-clock ``timestamp``) column, one child
    per local day, ``FOR VALUES FROM ('2024-11-03') TO ('2024-11-04')``, and configures
    ``timezone: America/Havana`` with ``retention: {action: drop}``. Havana's clocks go back from 01:00 to
    00:00 on 2024-11-03, so that day's midnight happens twice. The day is archived from exactly its own
    child's rows, yet its removal is refused: "is not one partition of its own (partitions: ['d02', 'd03'])".
    The bounds are read back as instants by PostgreSQL, which puts an ambiguous local time at its *second*
    occurrence (05:00 UTC), while the period starts at the first (04:00 UTC); d02 then seems to reach an hour
    into 2024-11-03. Every autumn DST day of such a table stays in the source for good. The child d03 holds
    exactly the day's rows (its labels are the day's), so the drop should remove it and nothing else."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at {}) PARTITION BY RANGE (at)").format(
        s, sql.SQL(key_type)))
    for name, lo, hi in (("d02", "2024-11-02", "2024-11-03"), ("d03", "2024-11-03", "2024-11-04"),
                         ("d04", "2024-11-04", "2024-11-05")):
        conn.execute(sql.SQL("CREATE TABLE {}.{} PARTITION OF {}.ev FOR VALUES FROM ({}) TO ({})").format(
            s, sql.Identifier(name), s, sql.Literal(lo), sql.Literal(hi)))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES " + values).format(s))
    table = spec(name=f"{schema}.ev", timezone="America/Havana", partitioning={"mode": "declarative"},
                 retention={"keep_days": 1, "action": "drop"})
    before = conn.execute(sql.SQL("SELECT array_agg(id ORDER BY id) FROM {}.d03").format(s)).fetchone()[0]
    result = archive_partition(conn, table, "2024-11-03", store)
    assert result.rows == len(before)
    remove_day(conn, table, "2024-11-03", store, temp_dir=str(temp_dir))
    assert conn.execute("SELECT to_regclass(%s)", (f"{schema}.d03",)).fetchone()[0] is None
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}.ev").format(s)).fetchone()[0] == 2
