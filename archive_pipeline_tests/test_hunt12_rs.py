"""Hunt 12 (rs): the whole lifecycle (archive, verify --deep, compare, prune, restore --into original) for
hourly and monthly tables, in every partitioning mode, in zones other than UTC, across DST changes."""

from __future__ import annotations

import datetime as dt

from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.lifecycle import RemovalRefused, remove_day

UTC = dt.UTC


def _london_hours_by_expression(conn, schema: str) -> str:
    """``ev (id, at timestamptz)`` partitioned by the README's "AT TIME ZONE with a zone's name" key,
    ``(at AT TIME ZONE 'Europe/London')``, one wall-clock hour a partition on the fall-back night 2024-10-27
    (00:00 .. 04:00 local), one row in every hour: 00:30 BST, both 01:xx, 02:00 GMT."""
    s = sql.Identifier(schema).as_string(conn)
    conn.execute(f"CREATE TABLE {s}.ev (id bigint, at timestamptz NOT NULL) "
                 "PARTITION BY RANGE ((at AT TIME ZONE 'Europe/London'))")
    for h in range(4):
        a = dt.datetime(2024, 10, 27, h)
        conn.execute(f"CREATE TABLE {s}.ev_{h:02d} PARTITION OF {s}.ev FOR VALUES FROM ('{a}') TO "
                     f"('{a + dt.timedelta(hours=1)}')")
    for i, moment in enumerate([dt.datetime(2024, 10, 26, 23, 30, tzinfo=UTC),  # 00:30 BST: hour 00:00
                                dt.datetime(2024, 10, 27, 0, 30, tzinfo=UTC),  # 01:30 BST: the first 01:00
                                dt.datetime(2024, 10, 27, 1, 30, tzinfo=UTC),  # 01:30 GMT: the second 01:00
                                dt.datetime(2024, 10, 27, 2, 0, tzinfo=UTC)]):  # 02:00 GMT
        conn.execute(f"INSERT INTO {s}.ev VALUES (%s, %s)", (i, moment))
    return s


def test_the_hour_before_a_repeated_hour_in_its_own_expression_partition_is_removable(conn, schema, store,
                                                                                        temp_dir):
    """An hourly Europe/London table whose ``timestamptz`` column is partitioned by the README's supported key
    ``(at AT TIME ZONE 'Europe/London')``, one partition per local wall-clock hour: ``ev_00`` is ``FROM
    ('2024-10-27 00:00') TO ('2024-10-27 01:00')`` and holds exactly the hour 2024-10-27-00:00 (BST), the hour
    before the clocks go back. Retention ``drop``, the hour archived and due. What happens: the removal (its
    dry run too) refuses it, "is not one partition of its own: its partition ev_00 ... also holds rows of other
    hours", which is false: discovery reads the child's upper bound, the ambiguous wall time 01:00, as an
    instant (PostgreSQL takes the second, GMT one), so the child seems to span two hours (23:00Z..01:00Z) and
    the first 01:00 (whose rows are all in ev_01) is said to be in ev_00 as well. The hour can never be
    dropped. What should happen: a child of a key that converts the column to the table's own zone holds
    wall-clock labels, as a ``timestamp`` key's does (compared by labels, ``ChildRange.is_period``): the hour
    is its own partition and the removal drops ev_00 (its one row gone, the other hours' rows left).
    Fix idea: in discovery, an expression key ``AT TIME ZONE '<the table's zone>'`` of a timestamptz column is
    wall_clock (its bounds are labels in that zone)."""
    s = _london_hours_by_expression(conn, schema)
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=dt.date(2024, 10, 27), granularity="hourly",
                     timezone="Europe/London", partitioning={"mode": "declarative"}, format="jsonl",
                     retention={"keep_days": 1, "action": "drop"})
    hour = spec.period("2024-10-27-00:00")
    assert archive_partition(conn, spec, hour, store, temp_dir=str(temp_dir)).rows == 1
    conn.autocommit = True
    try:
        removal = remove_day(conn, spec, hour, store, dry_run=True, temp_dir=str(temp_dir))
    except RemovalRefused as exc:
        raise AssertionError(f"the hour's own partition was refused: {exc}") from None
    assert removal.relation.endswith("ev_00"), removal
    remove_day(conn, spec, hour, store, temp_dir=str(temp_dir))
    left = conn.execute(f"SELECT id FROM {s}.ev ORDER BY id").fetchall()
    assert left == [(1,), (2,), (3,)], left
