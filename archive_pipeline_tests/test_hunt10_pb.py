"""Hunt 10, class: values at the edges of their types, round-tripped through every format (archive, restore
into a fresh table, compare, deep verification). Each test fails on the current code because of a bug."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.restore import restore_day
from archive_pipeline.core.verify import deep_verify

DAY = dt.date(2024, 3, 10)


@pytest.mark.parametrize("list_type", ["uuid[]", "jsonb[]", "json[]"])
def test_parquet_list_of_extension_type_beside_a_big_bytea(conn, schema, store, temp_dir, list_type):
    """A user archives as Parquet a table with a uuid[] (or jsonb[] / json[]) column and a bytea column, on a
    day one of whose bytea values is over 8 MiB (README: such a column is then written uncompressed in that
    day's file). The day fails with "an unexpected error (ArrowNotImplementedError: extension) ... read the
    message": pyarrow's ``Schema.empty_table()``, which the per-column codec setup uses to name the Parquet leaves
    (``parquet._codecs``), cannot build an empty list of an extension type (arrow.uuid / arrow.json). The same day
    without the big value, or with a plain uuid / jsonb column, archives fine. It should archive (every value fits)
    and restore into a new table with the same rows, and prove by deep verification."""
    t = sql.Identifier(schema, "t")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz, tags {}, blob bytea)").format(t, sql.SQL(list_type)))
    value = "{00000000-0000-0000-0000-000000000000,NULL}" if list_type == "uuid[]" else '{"{\\"a\\": 1}",NULL}'
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-03-10 12:00+00', %s::{}, '\\x00ff' "
                         "FROM generate_series(1, 20) g").format(t, sql.SQL(list_type)), (value,))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (21, '2024-03-10 13:00+00', NULL, "
                         "decode(repeat('00ff', 4200000), 'hex'))").format(t))  # 8.4 MB: over the 8 MiB
    spec = TableSpec(name=f"{schema}.t", day_column="at", start_date=DAY, format="parquet")
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    assert result.rows == 21
    restored = restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    assert restored.rows == 21 and restored.fingerprint_checked
    assert deep_verify(conn, store, spec, DAY, temp_dir=str(temp_dir)) == []
