"""This session's own checks of its changes (hunt 8)."""

from __future__ import annotations

import datetime as dt

import pytest

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.discovery import source_table
from archive_pipeline.core.source import day_filter

DAY = dt.date(2024, 3, 10)


@pytest.mark.parametrize(("column", "key", "zone"), [
    ("timestamptz", "((at AT TIME ZONE 'UTC')::date)", "Pacific/Kiritimati"),
    ("timestamptz", "((at AT TIME ZONE 'Pacific/Pago_Pago')::date)", "Pacific/Kiritimati"),
    ("timestamp", "(date_trunc('month', at))", "UTC"),
    ("timestamp", "((at::date))", "America/New_York"),
])
def test_an_expression_keyed_day_is_read_whole_and_only_its_partitions_planned(conn, schema, store, temp_dir,
                                                                                column, key, zone):
    """The day's filter of a table partitioned by RANGE of an expression of its day column bounds that
    expression too (so the planner prunes), by its values at the day's bounds widened by 26 hours: every row of the
    day is still read, however far the key's zone is from the table's (the day in Kiritimati, UTC+14, spans two UTC
    dates and three in Pago Pago, UTC-11), and a key coarser than the day (a month) keeps its one partition."""
    s = f'"{schema}"'
    conn.execute(f"CREATE TABLE {s}.ev (id int, at {column}, v text) PARTITION BY RANGE ({key})")
    conn.execute(f"CREATE TABLE {s}.ev_default PARTITION OF {s}.ev DEFAULT")
    monthly = "month" in key
    for i in range(-20, 21):
        if monthly:
            if i:
                continue
            lo, hi = "2024-03-01", "2024-04-01"
        else:
            lo, hi = DAY + dt.timedelta(days=i), DAY + dt.timedelta(days=i + 1)
        conn.execute(f"CREATE TABLE {s}.ev_{i + 20} PARTITION OF {s}.ev FOR VALUES FROM ('{lo}') TO ('{hi}')")
    conn.execute("SET TimeZone = 'UTC'")
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-01-01", timezone=zone,
                     partitioning={"mode": "declarative"}, format="csv")
    period = spec.period(DAY)
    start = period.start if column == "timestamptz" else period.wall_bounds[0]
    # a row every 10 minutes from 2 days before the day to 2 days after
    conn.execute(f"INSERT INTO {s}.ev SELECT g, %s::{column} + g * interval '10 minutes', 'x' "
                 "FROM generate_series(-288, 432) g", (start,))
    table = source_table(conn, spec, period)
    assert table.key_expression is not None
    where = day_filter(table, period).as_string(conn)
    expected = conn.execute(f"SELECT count(*) FROM {s}.ev WHERE at >= %s AND at < %s",
                            (start, start + (period.end - period.start) if column == "timestamptz"
                             else period.wall_bounds[1])).fetchone()[0]
    assert expected in (138, 144, 150)  # (a DST day of New York's has 23 hours)
    assert conn.execute(f"SELECT count(*) FROM {s}.ev WHERE {where}").fetchone()[0] == expected
    planned = " ".join(r[0] for r in conn.execute(f"EXPLAIN SELECT * FROM {s}.ev WHERE {where}").fetchall())
    assert planned.count("Scan on") <= 6, planned
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    assert result.rows == expected


def test_equal_parts_is_set_by_its_variable_for_the_command_line_and_the_default_resources(s3, bucket, monkeypatch):
    """R2's refusal of unequal parts names ARCHIVE_S3_EQUAL_PARTS: the command line's store and the default code
    location's archive_store take it, and a value that is not true or false fails the load naming it."""
    from archive_pipeline.core.config import ConfigError
    from archive_pipeline.core.environment import equal_parts, store_from_env
    from archive_pipeline.definitions import default_resources

    env = {"ARCHIVE_S3_BUCKET": bucket, "ARCHIVE_S3_ENDPOINT_URL": s3.endpoint_url, "ARCHIVE_S3_ACCESS_KEY_ID": "x",
           "ARCHIVE_S3_SECRET_ACCESS_KEY": "x", "ARCHIVE_S3_EQUAL_PARTS": "true"}
    assert store_from_env(env, check=False).equal_parts is True
    assert store_from_env({**env, "ARCHIVE_S3_EQUAL_PARTS": "false"}, check=False).equal_parts is False
    with pytest.raises(ConfigError, match="ARCHIVE_S3_EQUAL_PARTS"):
        equal_parts({"ARCHIVE_S3_EQUAL_PARTS": "maybe"})
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ARCHIVE_PG_DSN", "postgresql://u@127.0.0.1:1/db")
    assert default_resources()["archive_store"].equal_parts is True
