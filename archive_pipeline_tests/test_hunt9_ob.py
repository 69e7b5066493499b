"""Hunt 9 (ob): partitioned source tables of unusual shapes, through archive, compare, verify --deep, removal and
restore into the original table."""

from __future__ import annotations

import datetime as dt

from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.discovery import existing_days
from archive_pipeline_tests.helpers import decompress, download, read_jsonl

DAY = dt.date(2024, 3, 10)


def test_a_partition_of_another_day_left_pending_detach_does_not_fail_every_days_archive(pg, conn, schema, store,
                                                                                        temp_dir, s3_client, bucket):
    """``ev`` is range-partitioned by ``at`` with daily partitions. An operator runs ``ALTER TABLE ev DETACH PARTITION
    p01 CONCURRENTLY`` on the partition of 2024-03-01 (a month-old day, already dealt with), and it is interrupted
    (cancelled while it waited for an older snapshot): p01 is left pending detach. The sensor then asks for
    2024-03-10 (discovery finds it, p10 holds its 24 rows, untouched) and its archive fails: "p01 is pending detach
    from ev ... ev no longer reads its rows", retryable, on every run -- and likewise every other day of the table,
    until someone finalizes a detach of a day none of them reads. The removal of 2024-03-10 is not refused for it
    (lifecycle._refuse_pending_detach looks at the day's partitions only). Should: 2024-03-10 is archived with
    exactly its 24 rows (p01 holds no row of it; only a partition pending detach whose range holds the day is a
    reason to refuse the day). (Cause: source.hold_day refuses every partition of the whole tree that
    _DETACHED_SINCE_SNAPSHOT lists, not only those the day's read plans or whose range holds the day.)"""
    from archive_pipeline_tests.test_mends import _interrupted_detach

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz) PARTITION BY RANGE (at)").format(s))
    for d in (1, 10, 11):
        conn.execute(sql.SQL("CREATE TABLE {}.{} PARTITION OF {}.ev FOR VALUES FROM ({}) TO ({})").format(
            s, sql.Identifier(f"p{d:02d}"), s, sql.Literal(f"2024-03-{d:02d} 00:00+00"),
            sql.Literal(f"2024-03-{d + 1:02d} 00:00+00")))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, '2024-03-10 00:30+00'::timestamptz + g * interval '1 hour' "
                         "FROM generate_series(0, 30) g").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (100, '2024-03-01 05:00+00')").format(s))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01", format="jsonl",
                     compression="none", partitioning={"mode": "declarative"})
    _interrupted_detach(pg, conn, f"{schema}.ev", f"{schema}.p01")
    assert DAY in [p.start.date() for p in existing_days(conn, spec, [DAY])]  # (the sensor asks for the day)
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    rows = read_jsonl(decompress(download(s3_client, bucket, result.key), "none"))
    assert result.rows == 24 and sorted(int(r["id"]) for r in rows) == list(range(24))


def test_a_table_range_partitioned_by_an_integer_day_key_is_refused_by_discovery_not_found_to_have_no_days(
        conn, schema):
    """A warehouse table ``ev (id int, day_id int)`` is ``PARTITION BY RANGE (day_id)`` with one partition per day
    (``FOR VALUES FROM (20240310) TO (20240311)``, the common yyyymmdd integer key), and holds rows. The user
    configures it in declarative mode with ``day_column: day_id``. The sensor's discovery (``existing_days``) returns
    no day at all, silently -- no error, no day ever requested, ``plan`` lists nothing -- while an archive of a day
    by hand says "day_column 'day_id' ... is integer; it must be date, timestamp or timestamptz". README: a parent
    partitioned by another column or kind of key "is refused, naming it, rather than have no day found". Should:
    discovery refuses the table with that SourceError (naming the column and its type), as it refuses an expression
    key giving a number. (Cause: discovery._require_day_range_key returns early for a key that is the day column
    itself without checking its type is one of _TIME_KEYS; the bounds' 5+ digit numbers are then read as unbounded
    sides by _SIDE_VALUE, so no child holds any day.)"""
    from archive_pipeline.core.errors import SourceError

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, day_id int) PARTITION BY RANGE (day_id)").format(s))
    for d in (9, 10, 11):
        conn.execute(sql.SQL("CREATE TABLE {}.{} PARTITION OF {}.ev FOR VALUES FROM ({}) TO ({})").format(
            s, sql.Identifier(f"p{d}"), s, sql.Literal(20240300 + d), sql.Literal(20240301 + d)))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, 20240309 + g % 3 FROM generate_series(1, 30) g").format(s))
    spec = TableSpec(name=f"{schema}.ev", day_column="day_id", start_date="2024-03-01",
                     partitioning={"mode": "declarative"})
    try:
        found = existing_days(conn, spec, [dt.date(2024, 3, d) for d in range(1, 15)])
    except SourceError as exc:
        assert "day_id" in str(exc) and "integer" in str(exc), str(exc)
        return
    raise AssertionError(f"discovery found {found} and said nothing: the table's integer key was not refused")


def test_a_table_range_partitioned_by_a_text_day_column_is_refused_for_its_type_not_for_its_rows(conn, schema, store,
                                                                                                  temp_dir):
    """``ev (id int, d text)`` is ``PARTITION BY RANGE (d)`` with partitions ``FROM ('a') TO ('m')`` and ``FROM ('m')
    TO ('z')`` (any text key); the user configures it declaratively with ``day_column: d`` and archives a day. The
    archive fails with "a value in the day cannot be read or converted (data exception) (InvalidDatetimeFormat ...
    "a"); ... to fix: fix the offending rows, or archive the table in a format that keeps the value as text" -- the
    rows are not at fault, and no format helps; the sensor's discovery raises a bare psycopg InvalidDatetimeFormat
    naming neither table nor cause. The same table with date-like text bounds is refused clearly: "day_column 'd' of
    ... is text; it must be date, timestamp or timestamptz". Should: that refusal (naming the column and its type)
    from both. (Cause: discovery._require_day_range_key accepts the day column as the key whatever its type; the
    children's bounds are then cast to timestamptz before describe_table's type check is reached.)"""
    from archive_pipeline.core.errors import SourceError

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, d text) PARTITION BY RANGE (d)").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.p1 PARTITION OF {}.ev FOR VALUES FROM ('a') TO ('m')").format(s, s))
    conn.execute(sql.SQL("CREATE TABLE {}.p2 PARTITION OF {}.ev FOR VALUES FROM ('m') TO ('z')").format(s, s))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, 'b'), (2, 'q')").format(s))
    spec = TableSpec(name=f"{schema}.ev", day_column="d", start_date="2024-03-01", partitioning={"mode": "declarative"})
    for attempt in (lambda: archive_partition(conn, spec, DAY, store, temp_dir=temp_dir),
                    lambda: existing_days(conn, spec, [DAY])):
        try:
            attempt()
        except SourceError as exc:
            assert "must be date, timestamp or timestamptz" in str(exc), str(exc)
            assert "offending rows" not in str(exc), str(exc)
            continue
        except Exception as exc:  # noqa: BLE001
            raise AssertionError(f"{type(exc).__name__}: {exc}") from None
        raise AssertionError("a text day column was not refused")
