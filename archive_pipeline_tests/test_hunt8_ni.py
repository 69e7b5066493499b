"""Hunt 8 (ni): declaratively partitioned tables of unusual but accepted layout, through the round trip
(archive, verify, retention, restore --into original, archive again)."""

from __future__ import annotations

import datetime as dt

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.lifecycle import remove_day


def _spec(schema: str, **overrides) -> TableSpec:
    settings = dict(name=f"{schema}.ev", day_column="at", start_date=dt.date(2024, 10, 1),
                    partitioning={"mode": "declarative"}, retention={"keep_days": 30, "action": "drop"})
    settings.update(overrides)
    return TableSpec(**settings)


def test_drop_of_the_hour_before_a_fall_back_with_an_expression_key_of_wall_clock_time(conn, schema, store, temp_dir):
    """An hourly Europe/Berlin table whose day column is a ``timestamp`` (wall-clock time, as the README
    describes) is partitioned by RANGE (date_trunc('hour', at)), one child per wall-clock hour, and keeps
    retention action 'drop'. On the fall-back night 2024-10-27 the hour 01:00 (+02:00) has its own child
    ``FROM ('2024-10-27 01:00:00') TO ('2024-10-27 02:00:00')`` holding exactly that hour's rows; it is
    archived and proven. Its removal is refused: "its partition ev_1 ... also holds rows of other hours,
    which dropping or detaching it would remove with them" -- which is false: the child holds only 01:xx rows.
    The same table keyed by RANGE (at) drops that hour. The expression key's bounds are read as instants
    (the ambiguous upper bound 02:00 as 02:00+01:00, two hours after 01:00+02:00) instead of as the
    wall-clock labels they are, so the child looks two hours wide. The hour should be dropped as with the
    plain key."""
    conn.execute(f"SET search_path TO {schema}")
    conn.execute("CREATE TABLE ev (id int, at timestamp, v text) PARTITION BY RANGE (date_trunc('hour', at))")
    for h in range(0, 5):
        conn.execute(f"CREATE TABLE ev_{h} PARTITION OF ev FOR VALUES FROM ('2024-10-27 0{h}:00') "
                     f"TO ('2024-10-27 0{h + 1}:00')")
    conn.execute("INSERT INTO ev SELECT g, '2024-10-27 00:00'::timestamp + g * interval '10 min', 'x' "
                 "FROM generate_series(0, 29) g")
    conn.execute("RESET search_path")
    spec = _spec(schema, granularity="hourly", timezone="Europe/Berlin")
    hour = spec.period("2024-10-27-01:00")
    assert archive_partition(conn, spec, hour, store, temp_dir=temp_dir).rows == 6
    removal = remove_day(conn, spec, hour, store, temp_dir=str(temp_dir))
    assert removal.rows == 6 and removal.relation == f"{schema}.ev_1"
    assert conn.execute("SELECT to_regclass(%s) IS NULL", (f"{schema}.ev_1",)).fetchone()[0]


def _layout(conn, schema: str) -> list[tuple]:
    """(partition, its bound, its parent) of every table of the schema."""
    return conn.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid), i.inhparent::regclass::text FROM pg_class c "
        "LEFT JOIN pg_inherits i ON i.inhrelid = c.oid WHERE c.relnamespace = %s::regnamespace "
        "AND c.relkind IN ('r', 'p') AND c.relispartition ORDER BY 1", (schema,)).fetchall()


def test_restore_re_creates_the_daily_partition_retention_dropped_not_the_weekly_one_of_the_archive(
        conn, schema, store, temp_dir):
    """A table partitioned by RANGE (at) a week a child (ev_w12, 2024-03-18 .. 2024-03-25) has its days
    2024-03-20 and 2024-03-21 archived. The DBA then lays the table out by day (the README accepts children of
    unequal width and a layout that changes): ev_w12 is detached and dropped, ev_0320 and ev_0321 are created
    and the rows moved in. Retention 'drop' now proves each day and drops its own partition (ev_0320, then
    ev_0321). ``restore --into original`` of 2024-03-20 then creates ev_w12 again, with the week's bound of the
    archive-time layout, a partition the DBA had retired, and puts both days in it: the next 'drop' of either
    day is refused (its partition holds other days). The README promises the day's dropped partition is
    created again with its bound: the restore should put back ev_0320 FOR VALUES FROM ('2024-03-20') TO
    ('2024-03-21') (the partition the removal dropped, which its mark names), not one the removal never
    touched."""
    conn.execute(f"SET search_path TO {schema}")
    conn.execute("CREATE TABLE ev (id int, at timestamptz, v text) PARTITION BY RANGE (at)")
    conn.execute("CREATE TABLE ev_w12 PARTITION OF ev FOR VALUES FROM ('2024-03-18 00:00+00') TO ('2024-03-25 00:00+00')")
    conn.execute("INSERT INTO ev SELECT g, '2024-03-20 00:00+00'::timestamptz + g * interval '1 hour', 'x' "
                 "FROM generate_series(0, 5) g")
    conn.execute("INSERT INTO ev SELECT g, '2024-03-21 00:00+00'::timestamptz + g * interval '1 hour', 'x' "
                 "FROM generate_series(0, 5) g")
    spec = _spec(schema, start_date=dt.date(2024, 3, 1))
    days = [dt.date(2024, 3, 20), dt.date(2024, 3, 21)]
    for day in days:
        assert archive_partition(conn, spec, day, store, temp_dir=temp_dir).rows == 6
    conn.execute("ALTER TABLE ev DETACH PARTITION ev_w12")
    for d in (20, 21):
        conn.execute(f"CREATE TABLE ev_03{d} PARTITION OF ev FOR VALUES FROM ('2024-03-{d} 00:00+00') "
                     f"TO ('2024-03-{d + 1} 00:00+00')")
    conn.execute("INSERT INTO ev SELECT * FROM ev_w12")
    conn.execute("DROP TABLE ev_w12")
    conn.execute("RESET search_path")
    for day in days:
        assert remove_day(conn, spec, day, store, temp_dir=str(temp_dir)).relation == f"{schema}.ev_{day:%m%d}"
    from archive_pipeline.core.restore import restore_day

    restore_day(conn, store, spec, days[0], into="original")
    assert _layout(conn, schema) == [
        ("ev_0320", "FOR VALUES FROM ('2024-03-20 00:00:00+00') TO ('2024-03-21 00:00:00+00')", f"{schema}.ev")]


def test_restore_re_creates_the_partition_given_to_a_day_archived_from_the_default_partition(
        conn, schema, store, temp_dir):
    """A table partitioned by RANGE (at) with a DEFAULT partition: the day 2024-03-20 had no child yet (the
    partition maintenance job had not run), so its rows went to the DEFAULT partition and were archived from
    there. Then the maintenance job (as pg_partman's partition_data_proc does) creates ev_0320 for the day and
    moves its rows out of the DEFAULT partition into it. Retention 'drop' proves the day and drops ev_0320.
    ``restore --into original`` then creates no partition: the rows go back into the DEFAULT partition (the
    manifest recorded no partition at archive time), where they keep PostgreSQL from creating ev_0320 again
    ("updated partition constraint for default partition would be violated") and the day can no longer be
    dropped. The README promises a dropped partition of the day comes back with its bound; the removal knew
    it (its mark names ev_0320): the restore should re-create ev_0320 and put the rows there."""
    conn.execute(f"SET search_path TO {schema}")
    conn.execute("CREATE TABLE ev (id int, at timestamptz, v text) PARTITION BY RANGE (at)")
    conn.execute("CREATE TABLE ev_default PARTITION OF ev DEFAULT")
    conn.execute("INSERT INTO ev SELECT g, '2024-03-20 00:00+00'::timestamptz + g * interval '1 hour', 'x' "
                 "FROM generate_series(0, 5) g")
    spec = _spec(schema, start_date=dt.date(2024, 3, 1))
    day = dt.date(2024, 3, 20)
    assert archive_partition(conn, spec, day, store, temp_dir=temp_dir).rows == 6
    conn.execute("ALTER TABLE ev DETACH PARTITION ev_default")
    conn.execute("CREATE TABLE ev_0320 PARTITION OF ev FOR VALUES FROM ('2024-03-20 00:00+00') TO ('2024-03-21 00:00+00')")
    conn.execute("WITH moved AS (DELETE FROM ev_default RETURNING *) INSERT INTO ev SELECT * FROM moved")
    conn.execute("ALTER TABLE ev ATTACH PARTITION ev_default DEFAULT")
    conn.execute("RESET search_path")
    assert remove_day(conn, spec, day, store, temp_dir=str(temp_dir)).relation == f"{schema}.ev_0320"
    from archive_pipeline.core.restore import restore_day

    restore_day(conn, store, spec, day, into="original")
    assert conn.execute(f"SELECT tableoid::regclass::text, count(*) FROM {schema}.ev GROUP BY 1").fetchall() == [
        (f"{schema}.ev_0320", 6)]
