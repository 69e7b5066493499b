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
