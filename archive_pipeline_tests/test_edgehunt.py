"""Hunt: parallel extraction of one day and the boundaries of a day. Each test asserts the correct
behaviour and failed on the bug it names before the fix."""

from __future__ import annotations

import datetime as dt
import os
import time

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core import archive as archive_module
from archive_pipeline.core import parallel
from archive_pipeline.core.archive import archive_partition, render_key
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline_tests.helpers import assert_nothing_left

DAY = dt.date(2024, 3, 10)


def _spread_table(conn, schema: str) -> str:
    """2,000 rows of DAY over ~70 pages (fillfactor 10), so four ctid ranges each hold rows."""
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz, body text) WITH (fillfactor = 10)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, {}::timestamptz + g * interval '1 s', repeat('x', 100) "
                         "FROM generate_series(1, 2000) g").format(table, sql.Literal(f"{DAY} 00:00+00")))
    return f"{schema}.ev"


def _reading_role(pg, conn, schema: str, tag: str) -> tuple[str, str]:
    role = f"eh_{os.getpid()}_{tag}"
    dsn = pg.create_password_role(role, "pw")
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {s} TO {r}; GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {r}").format(
        s=sql.Identifier(schema), r=sql.Identifier(role)))
    return role, dsn


def _sessions_left(conn, role: str) -> list[tuple[int, str]]:
    """The role's sessions, once those already ending have gone (bounded wait); any left are then
    terminated, so a failing test does not leave the schema locked for its teardown."""
    deadline = time.monotonic() + 10
    while (left := conn.execute("SELECT pid, state FROM pg_stat_activity WHERE usename = %s",
                                (role,)).fetchall()) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid, _ in left:
        conn.execute("SELECT pg_terminate_backend(%s, 30000)", (pid,))
    return left


@pytest.mark.parametrize("moment", ["before", "after"])
def test_a_coordinator_terminated_around_the_streams_import_leaves_no_session_behind(
        pg, conn, schema, s3_client, bucket, temp_dir, monkeypatch, moment):
    """JSONL with four streams; the coordinator (the session that exported the snapshot and holds the
    day's lock) is terminated just before or just after the stream sessions import its snapshot.
    After: its COMMIT failed while the streams' sessions were open but not yet in the try that closes
    them, so the four were left idle in transaction, holding the snapshot and the day's locks (here the
    schema's teardown then waited on them for ever). Before: the streams' import fails with "invalid
    snapshot identifier", which was explained as "the Parquet reader" and ADBC for a JSONL day."""
    name = _spread_table(conn, schema)
    role, dsn = _reading_role(pg, conn, schema, moment)
    real = parallel.open_snapshot_sessions

    def terminate(session: psycopg.Connection) -> None:
        with pg.connect() as other:
            other.execute("SELECT pg_terminate_backend(%s, 30000)", (session.info.backend_pid,))

    def around_import(coordinator, *args, **kwargs):
        if moment == "before":
            terminate(coordinator)
        opened = real(coordinator, *args, **kwargs)
        if moment == "after":
            terminate(coordinator)
        return opened

    monkeypatch.setattr(parallel, "open_snapshot_sessions", around_import)
    monkeypatch.setattr(archive_module, "FINGERPRINT_ALONGSIDE_ROWS", 10**9)  # the fingerprint first, no side session
    store = S3Store(s3_client, bucket, prefix="archive", part_size=MIN_PART_SIZE)
    spec = TableSpec(name=name, day_column="at", start_date="2024-01-01", format="jsonl", compression="zstd",
                     parallel_streams=4)
    with psycopg.connect(dsn, autocommit=True) as archiving:
        with pytest.raises(ArchiveError) as caught:
            archive_partition(archiving, spec, DAY, store, temp_dir=str(temp_dir))
    err = str(caught.value)
    assert caught.value.retryable and name in err and DAY.isoformat() in err, err
    if moment == "before":  # a stream's import failed (or the coordinator's next query, asking what the streams'
        # sessions must pin, met its termination): not blamed on a Parquet reader this day does not have
        assert ("a parallel stream" in err or "backend was terminated" in err) and \
            "before the Parquet reader" not in err and "ADBC" not in err, err
    assert _sessions_left(conn, role) == []
    assert_nothing_left(store, render_key(spec, DAY, store.prefix), temp_dir)


@pytest.mark.parametrize(("layout", "children"), [
    # a two-column RANGE key: the bounds' text did not parse (a bare InvalidDatetimeFormat, every day)
    ("RANGE (at, tenant)", ["FROM ('2024-03-10 00:00+00', MINVALUE) TO ('2024-03-11 00:00+00', MINVALUE)"]),
    # LIST by day: no day was ever discovered, while an archive of a day read its rows
    ("LIST (day)", ["IN ('2024-03-10')"]),
    # RANGE of another column than day_column: days discovered by created, rows filtered by at
    ("RANGE (day)", ["FROM ('2024-03-10') TO ('2024-03-11')"]),
])
def test_declarative_mode_refuses_a_partition_key_that_is_not_the_day_column(
        conn, schema, store, layout, children):
    from archive_pipeline.core.discovery import declarative_days

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (tenant int, at timestamptz, day date) PARTITION BY " + layout).format(s))
    for i, bound in enumerate(children):
        conn.execute(sql.SQL("CREATE TABLE {}.{} PARTITION OF {}.ev FOR VALUES " + bound).format(
            s, sql.Identifier(f"c{i}"), s))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, '2024-03-10 05:00+00', '2024-03-10')").format(s))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-01-01",
                     partitioning={"mode": "declarative"})
    for attempt in (lambda: declarative_days(conn, spec), lambda: archive_partition(conn, spec, DAY, store)):
        with pytest.raises(ArchiveError) as caught:
            attempt()
        err = caught.value
        assert not err.retryable and spec.name in str(err) and "mode 'column'" in str(err), str(err)
        assert "PARTITION BY" not in str(err) and layout.split(" (")[0] in str(err), str(err)


def test_declarative_mode_still_reads_an_expression_key(conn, schema, store):
    """A key on an expression of the day column (days of a timestamp) keeps being read by its bounds."""
    from archive_pipeline.core.discovery import declarative_days

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamp) PARTITION BY RANGE ((at::date))").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.c PARTITION OF {}.ev FOR VALUES FROM ('2024-03-10') TO ('2024-03-11')").format(
        s, s))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, '2024-03-10 23:59:59.999999')").format(s))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-01-01",
                     partitioning={"mode": "declarative"})
    assert [p.key for p in declarative_days(conn, spec)] == ["2024-03-10"]
    assert archive_partition(conn, spec, DAY, store).rows == 1


@pytest.mark.parametrize("forever", ["10000-01-01 00:00+00", "294276-12-31 00:00+00"])
def test_a_forever_child_past_the_year_9999_is_a_catch_all(conn, schema, store, forever):
    """A "forever" child FROM (day after) TO ('10000-01-01') (or the last timestamptz) next to the
    daily children: reading its bound failed every day and every discovery with psycopg's bare
    DataError "timestamp too large". It is an unbounded side now, as TO (MAXVALUE) or ('infinity'): open towards the
    future, so its rows of 2024-03-12 are that day's (hunt 20 zi: not a catch-all that holds no day)."""
    from archive_pipeline.core.discovery import existing_days

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz) PARTITION BY RANGE (at)").format(s))
    for child, lo, hi in (("d10", "2024-03-10 00:00+00", "2024-03-11 00:00+00"), ("later", "2024-03-11 00:00+00", forever)):
        conn.execute(sql.SQL("CREATE TABLE {}.{} PARTITION OF {}.ev FOR VALUES FROM ({}) TO ({})").format(
            s, sql.Identifier(child), s, sql.Literal(lo), sql.Literal(hi)))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, '2024-03-10 12:00+00'), (2, '2024-03-12 12:00+00')").format(s))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-01-01",
                     partitioning={"mode": "declarative"})
    assert existing_days(conn, spec, [DAY, DAY + dt.timedelta(days=2)]) == [DAY, DAY + dt.timedelta(days=2)]
    assert archive_partition(conn, spec, DAY, store).rows == 1


def test_a_child_of_many_years_is_not_listed_day_by_day(conn, schema, store, monkeypatch):
    """A child FROM (day after) TO ('9999-12-29'), a common "forever" bound: which of the candidate days
    it holds, and whether it is whole days, were found by listing every day it covers (2.9 million
    periods: minutes per sensor tick, per archive of one of its days, and at load). Here listing more
    than a year of periods fails the test; the days are found from the children's ends."""
    from archive_pipeline.core import discovery, periods
    from archive_pipeline.core.discovery import existing_days

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz) PARTITION BY RANGE (at)").format(s))
    for child, lo, hi in (("d10", "2024-03-10 00:00+00", "2024-03-11 00:00+00"),
                          ("later", "2024-03-11 00:00+00", "9999-12-29 00:00+00")):
        conn.execute(sql.SQL("CREATE TABLE {}.{} PARTITION OF {}.ev FOR VALUES FROM ({}) TO ({})").format(
            s, sql.Identifier(child), s, sql.Literal(lo), sql.Literal(hi)))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, '2024-03-10 12:00+00'), (2, '2024-03-12 12:00+00')").format(s))
    real = periods.periods_overlapping

    def at_most_a_year(granularity, timezone, start, end):
        assert end - start <= dt.timedelta(days=366), f"listed the periods from {start} to {end}"
        return real(granularity, timezone, start, end)

    monkeypatch.setattr(discovery, "periods_overlapping", at_most_a_year)
    monkeypatch.setattr(periods, "periods_overlapping", at_most_a_year)
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-01-01",
                     partitioning={"mode": "declarative"})
    twelfth = DAY + dt.timedelta(days=2)
    assert existing_days(conn, spec, [DAY - dt.timedelta(days=1), DAY, twelfth]) == [DAY, twelfth]
    assert archive_partition(conn, spec, twelfth, store).rows == 1


def test_the_partition_key_check_waits_for_no_lock_on_the_parent(pg, conn, schema):
    """Reading the partition key takes no lock (pg_get_partkeydef() would): while a migration holds the
    parent (CREATE TABLE ... PARTITION OF takes ACCESS EXCLUSIVE on it), the catalog still says which days
    the children hold, and the day's probe for a row (which reads the parent) gives up after lock_timeout,
    saying so for that day, as the sensor's next tick looks again."""
    from archive_pipeline.core.discovery import existing_days

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz) PARTITION BY RANGE (at)").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.d10 PARTITION OF {}.ev FOR VALUES FROM ('2024-03-10 00:00+00') "
                         "TO ('2024-03-12 00:00+00')").format(s, s))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-01-01",
                     partitioning={"mode": "declarative"})
    with pg.connect() as migration:
        migration.execute("BEGIN")
        migration.execute(sql.SQL("LOCK TABLE {}.ev IN ACCESS EXCLUSIVE MODE").format(s))
        conn.execute("SET lock_timeout = 2000")
        try:
            from archive_pipeline.core.discovery import catalog_days

            both = [DAY, DAY + dt.timedelta(days=1)]
            assert catalog_days(conn, spec, both) == both
            failed: dict = {}
            assert existing_days(conn, spec, both, failed=failed) == []
            # each day said unprobed, after lock_timeout (a lock on one day's partition holds back no other day)
            assert sorted(failed) == both and {type(e).__name__ for e in failed.values()} == {"LockNotAvailable"}
        finally:
            conn.execute("RESET lock_timeout")
            migration.execute("ROLLBACK")
