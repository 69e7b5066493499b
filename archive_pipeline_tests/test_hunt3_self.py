"""My own hunt of the eighteenth session: discovery while a migration holds the table."""

from __future__ import annotations

import datetime as dt

from psycopg import sql

from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.discovery import existing_days

DAY = dt.date(2024, 3, 1)
DAYS = [DAY + dt.timedelta(days=i) for i in range(12)]


def _declarative(conn, schema: str) -> TableSpec:
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz) PARTITION BY RANGE (at)").format(s))
    for day in DAYS:
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {}.ev FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier(schema, f"d{day:%Y%m%d}"), s, sql.Literal(f"{day} 00:00+00"),
            sql.Literal(f"{day + dt.timedelta(days=1)} 00:00+00")))
        conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, {})").format(s, sql.Literal(f"{day} 12:00+00")))
    return TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-01-01",
                     partitioning={"mode": "declarative"})


def test_a_locked_parent_costs_one_lock_timeout_not_one_per_day(pg, conn, schema):
    """A migration (ALTER TABLE on the parent) holds the table while the sensor ticks over a year of days:
    each day's row probe waited the whole lock_timeout, one after the other, so a tick over 365 days with
    lock_timeout 5 s took half an hour (Dagster gives a tick 60 s). Once the table itself is found locked,
    the other days are reported unprobed with the same error, without waiting again."""
    spec = _declarative(conn, schema)
    with pg.connect() as migration:
        migration.execute("BEGIN")
        migration.execute(sql.SQL("LOCK TABLE {}.ev IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema)))
        conn.execute("SET lock_timeout = 500")
        try:
            failed: dict = {}
            assert existing_days(conn, spec, DAYS, failed=failed) == []
            assert sorted(failed) == DAYS
            assert {type(e).__name__ for e in failed.values()} == {"LockNotAvailable"}
            assert len({id(e) for e in failed.values()}) == 1  # one probe waited; the others were not tried
        finally:
            conn.execute("RESET lock_timeout")
            migration.execute("ROLLBACK")
    assert existing_days(conn, spec, DAYS) == DAYS  # the lock gone, every day is found again


def test_a_locked_partition_holds_back_only_its_own_day(pg, conn, schema):
    """VACUUM FULL (or ALTER) of one day's partition locks only that child: the other days are still probed
    and found, and only the locked one is reported unprobed."""
    spec = _declarative(conn, schema)
    locked = DAYS[4]
    with pg.connect() as vacuum:
        vacuum.execute("BEGIN")
        vacuum.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
            sql.Identifier(schema, f"d{locked:%Y%m%d}")))
        conn.execute("SET lock_timeout = 300")
        try:
            failed: dict = {}
            assert existing_days(conn, spec, DAYS, failed=failed) == [d for d in DAYS if d != locked]
            assert list(failed) == [locked]
        finally:
            conn.execute("RESET lock_timeout")
            vacuum.execute("ROLLBACK")
