"""Hunt: a table at PostgreSQL's column limit (1,600 columns, some dropped, names of 63 bytes, non-ASCII)
through the whole round trip in every format."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.plan import compare_days
from archive_pipeline.core.restore import restore_day
from archive_pipeline.core.verify import deep_verify

DAY = dt.date(2024, 3, 10)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_a_table_of_1600_columns_round_trips(fmt, conn, schema, store, temp_dir):
    table = sql.Identifier(schema, "wide")
    names = [f"c{i:04d}_" + ("é" * 29 if i % 3 == 0 else "x" * 57) for i in range(1598)]
    types = ["int8", "text", "numeric", "timestamptz", "bool", "float8", "jsonb", "int4[]"]
    cols = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(types[i % len(types)]))
                              for i, n in enumerate(names))
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at date, {})").format(table, cols))
    values = {"int8": "g * 3", "text": "'t' || g", "numeric": "g / 3.0", "timestamptz": "'2024-03-10'::timestamptz",
              "bool": "g % 2 = 0", "float8": "g * 0.1", "jsonb": "jsonb_build_object('g', g)", "int4[]": "ARRAY[g]"}
    # most values NULL: a row of 1,600 fixed-width values would not fit in a page
    exprs = sql.SQL(", ").join(sql.SQL(values[types[i % len(types)]] if i % 5 == 0 else "NULL")
                               for i in range(len(names)))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, {}, {} FROM generate_series(1, 20) g").format(
        table, sql.Literal(DAY), exprs))
    spec = TableSpec(name=f"{schema}.wide", day_column="at", start_date=DAY, format=fmt, compression="zstd")
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    assert result.rows == 20
    assert [c.result for c in compare_days(conn, spec, store, [DAY])] == ["equal"]
    assert deep_verify(conn, store, spec, DAY, temp_dir=temp_dir) == []
    restored = restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    assert restored.fingerprint_checked and restored.rows == 20
