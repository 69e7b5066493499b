"""Hunt: settings a DBA put on the role (ALTER ROLE ... SET) change how every value prints, and the
archive, its fingerprint, the restore, compare and deep verification must not follow them."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.plan import compare_days
from archive_pipeline.core.restore import restore_day
from archive_pipeline.core.verify import deep_verify

DAY = dt.date(2024, 3, 10)
HOSTILE = [("DateStyle", "SQL, DMY"), ("IntervalStyle", "sql_standard"), ("extra_float_digits", "-15"),
           ("bytea_output", "escape"), ("TimeZone", "Pacific/Chatham"), ("standard_conforming_strings", "off"),
           ("default_transaction_isolation", "serializable"), ("lc_monetary", "C"),
           ("xmloption", "document"), ("timezone_abbreviations", "India"), ("enable_seqscan", "off"),
           ("max_parallel_workers_per_gather", "4"), ("parallel_setup_cost", "0"), ("parallel_tuple_cost", "0"),
           ("min_parallel_table_scan_size", "0"), ("jit", "on"), ("jit_above_cost", "0"),
           ("session_replication_role", "replica"), ("array_nulls", "off"), ("backslash_quote", "on"),
           ("escape_string_warning", "off"), ("quote_all_identifiers", "on"), ("default_with_oids", "off")]
# a second role: other styles, and settings that change plans, messages and what a transaction may do
HOSTILE_TOO = [("DateStyle", "German"), ("IntervalStyle", "postgres_verbose"), ("TimeZone", "<+0530>-05:30"),
               ("transform_null_equals", "on"),
               ("enable_partition_pruning", "off"), ("plan_cache_mode", "force_generic_plan"),
               ("client_min_messages", "debug5"), ("search_path", ""), ("work_mem", "64kB"),
               ("xmlbinary", "hex"), ("default_transaction_deferrable", "on"), ("extra_float_digits", "3"),
               ("bytea_output", "hex"), ("standard_conforming_strings", "on"), ("synchronous_commit", "off")]
VALUES = """
SELECT g, %(day)s::date + (g %% 86400) * interval '1 second',
       g * 1.5::float8, (g * 1.1)::float4, g::numeric / 7, (g - 500) * interval '1 day 03:04:05.123456',
       decode(lpad(to_hex(g), 8, '0'), 'hex'), ('2024-03-10 12:00+05:30'::timestamptz + g * interval '1 hour'),
       ('2024-03-10 12:00'::timestamp + g * interval '1 minute'), ('2024-03-10'::date + g),
       '12:34:56.789'::time, '12:34:56+05'::timetz, ARRAY[g, NULL, g + 1], g::money,
       E'back\\\\slash ''q'' ' || g, 'a"b' || g, ('<a>' || g || '</a>')::xml
FROM generate_series(1, 300) g
"""


@pytest.fixture(params=["styles", "plans"])
def hostile_role(request, conn, schema, pg):
    settings = HOSTILE if request.param == "styles" else HOSTILE_TOO
    role = f"{schema}_hostile"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw-hostile' SUPERUSER").format(sql.Identifier(role)))
    for name, value in settings:
        try:
            conn.execute(sql.SQL("ALTER ROLE {} SET {} = {}").format(sql.Identifier(role), sql.Identifier(name),
                                                                      sql.Literal(value)))
        except psycopg.Error:
            conn.rollback() if not conn.autocommit else None
    dsn = psycopg.conninfo.make_conninfo(pg.dsn, user=role, password="pw-hostile")
    from archive_pipeline.defs.resources import PostgresResource

    with PostgresResource(dsn=dsn).connect() as hostile:  # the session a run archives with
        yield hostile
    conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_role_settings_change_nothing_in_the_round_trip(fmt, conn, schema, store, temp_dir, hostile_role):
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL(
        "CREATE TABLE {} (id int PRIMARY KEY, at timestamp, f8 float8, f4 float4, n numeric, iv interval, b bytea, "
        "tz timestamptz, ts timestamp, d date, t time, ttz timetz, arr int[], m money, tx text, q varchar, x xml)"
    ).format(table))
    conn.execute(sql.SQL("INSERT INTO {} " + VALUES).format(table), {"day": DAY})
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format=fmt, compression="zstd")
    result = archive_partition(hostile_role, spec, DAY, store, temp_dir=temp_dir)
    plain = archive_partition(conn, spec.model_copy(update={"key_template": "plain/" + spec.key_template}), DAY,
                              store, temp_dir=temp_dir)
    assert result.rows == 300 and result.fingerprint == plain.fingerprint
    compared = compare_days(hostile_role, spec, store, [DAY])
    assert [c.result for c in compared] == ["equal"], compared
    assert deep_verify(hostile_role, store, spec, DAY, temp_dir=temp_dir) == []
    restored = restore_day(hostile_role, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    assert restored.fingerprint_checked and restored.rows == 300
    back = sql.Identifier(schema, "back")
    diff = conn.execute(sql.SQL("SELECT count(*) FROM ((SELECT src::text FROM {} src EXCEPT ALL SELECT dst::text FROM {} dst) "
                                "UNION ALL (SELECT dst::text FROM {} dst EXCEPT ALL SELECT src::text FROM {} src)) d").format(
        table, back, back, table)).fetchone()[0]
    assert diff == 0

