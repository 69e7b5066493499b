"""Hunt: the let-the-source-go path (restore, deep verification, compare, removal) under hostile
names, zones, target tables and faults."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.plan import compare_days
from archive_pipeline.core.restore import restore_day
from archive_pipeline.core.verify import deep_verify, load_manifest
from archive_pipeline_tests.test_exactness import COLUMNS as EDGE_COLUMNS

DAY = dt.date(2024, 3, 10)


def _zone_table(conn, schema: str, name: str, zone: str) -> None:
    """A table partitioned by local days of ``zone`` (timestamptz bounds), one row a minute for 3 days."""
    table = sql.Identifier(schema, name)
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz NOT NULL, note text) PARTITION BY RANGE (at)"
                         ).format(table))

    def midnight(day: dt.date) -> dt.datetime:
        return dt.datetime.combine(day, dt.time(), ZoneInfo(zone))

    for d in (DAY - dt.timedelta(days=1), DAY, DAY + dt.timedelta(days=1)):
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier(schema, f"{name} {d:%Y%m%d}"), table, sql.Literal(midnight(d)),
            sql.Literal(midnight(d + dt.timedelta(days=1)))))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, {} + g * interval '1 minute', 'n' || g "
                         "FROM generate_series(0, 3 * 1440 - 1) g").format(
        table, sql.Literal(midnight(DAY - dt.timedelta(days=1)))))


@pytest.mark.parametrize("action", ["drop", "detach", "delete"])
def test_a_day_of_a_zone_s_partitions_removed_and_restored_under_a_foreign_session_zone(conn, schema, store, action):
    name = "Evénts Täble"
    _zone_table(conn, schema, name, "Europe/Berlin")
    conn.execute("SET TimeZone = 'America/New_York'")
    conn.execute("SET DateStyle = 'SQL, DMY'")
    conn.execute("SET IntervalStyle = 'sql_standard'")
    spec = TableSpec(name=f"{schema}.{name}", day_column="at", start_date=DAY - dt.timedelta(days=1),
                     timezone="Europe/Berlin", partitioning={"mode": "declarative"},
                     retention={"keep_days": 1, "action": action})
    result = archive_partition(conn, spec, DAY, store)
    assert result.rows == 1440
    assert deep_verify(conn, store, spec, DAY) == []
    removal = remove_day(conn, spec, DAY, store)
    assert removal.rows == 1440
    if action == "detach":
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, f"{name} {DAY:%Y%m%d}")))
    r = restore_day(conn, store, spec, DAY, into="original")
    assert r.rows == 1440 and r.fingerprint_checked
    [c] = compare_days(conn, spec, store, [DAY])
    assert c.result == "equal", c
    assert deep_verify(conn, store, spec, DAY) == []


HOSTILE = {"TimeZone": "Pacific/Chatham", "DateStyle": "SQL, DMY", "IntervalStyle": "sql_standard",
           "extra_float_digits": "-15", "bytea_output": "escape", "lc_monetary": "C", "xmloption": "document"}


@pytest.fixture
def edge_table(conn, schema):
    conn.execute(sql.SQL("SET search_path = {}, public").format(sql.Identifier(schema)))
    conn.execute("CREATE TYPE mood AS ENUM ('sad', 'hap,py \"q\"', '')")
    conn.execute("CREATE TYPE pair AS (x int, y text)")
    conn.execute("CREATE TYPE wrap AS (p pair, arr int[], j jsonb)")
    conn.execute("CREATE DOMAIN intarr AS int[]")
    cols = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t))
                              for n, (t, _, _) in EDGE_COLUMNS.items())
    conn.execute(sql.SQL("CREATE TABLE edge (id int, at date, {})").format(cols))
    for row in range(5):
        values = sql.SQL(", ").join(sql.SQL(v[1][row]) for v in EDGE_COLUMNS.values())
        conn.execute(sql.SQL("INSERT INTO edge VALUES ({}, {}, {})").format(sql.Literal(row + 1), sql.Literal(DAY),
                                                                            values))
    for fmt in ("jsonl", "csv", "parquet"):
        keep = [n for n, (_, _, refused) in EDGE_COLUMNS.items() if fmt not in refused and (fmt, n) != ("jsonl", "j")]
        conn.execute(sql.SQL("CREATE TABLE {} AS SELECT id, at, {} FROM edge").format(
            sql.Identifier(f"ok_{fmt}"), sql.SQL(", ").join(map(sql.Identifier, keep))))
    return schema


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_edge_values_prove_restore_and_compare_under_hostile_session_settings(fmt, conn, edge_table, store):
    schema = edge_table
    spec = TableSpec(name=f"{schema}.ok_{fmt}", day_column="at", start_date=DAY, format=fmt,
                     retention={"keep_days": 1, "action": "delete"})
    archive_partition(conn, spec, DAY, store)
    for name, value in HOSTILE.items():
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))
    assert deep_verify(conn, store, spec, DAY) == []
    r = restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back_{fmt}")
    assert r.rows == 5
    [c] = compare_days(conn, spec, store, [DAY])
    assert c.result == "equal", c
    assert remove_day(conn, spec, DAY, store).rows == 5
    r = restore_day(conn, store, spec, DAY, into="original")
    assert r.rows == 5
    [c] = compare_days(conn, spec, store, [DAY])
    assert c.result == "equal", c


def test_jsonl_arrays_of_fixed_length_chars_and_bits_restore_and_prove_whole(conn, schema, store):
    """JSONL restores a one-dimensional array through its array type's input; that type was spelt
    without modifier as format_type(oid, NULL) prints it, "character[]" and "bit[]", which mean
    character(1)[] and bit(1)[]: every element was cut to one character or bit (the fingerprint then
    refused the restore and failed the proof of a correct archive)."""
    table = sql.Identifier(schema, "fixed")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, c char(3)[], b bit(3)[], v varchar(4)[])").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, %s, '{{101,011}}', '{{abcd}}'), (2, %s, '{{x}}', '{{000}}', "
                         "'{{}}')").format(table), (DAY, '{abc," b ",NULL}', DAY))
    spec = TableSpec(name=f"{schema}.fixed", day_column="at", start_date=DAY, format="jsonl")
    archive_partition(conn, spec, DAY, store)
    assert deep_verify(conn, store, spec, DAY) == []
    restored = restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back")
    assert restored.rows == 2 and restored.fingerprint_checked
    texts = sql.SQL("SELECT id, c::text, b::text, v::text FROM {} ORDER BY id")
    assert conn.execute(texts.format(sql.Identifier(schema, "back"))).fetchall() == [
        (1, '{abc," b ",NULL}', "{101,011}", "{abcd}"), (2, '{"x  "}', "{000}", "{}")]
