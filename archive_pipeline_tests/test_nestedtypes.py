"""Nested types: a value PostgreSQL prints but cannot read back is refused wherever it sits inside a
column's type (a composite's field, an array's element, a domain's base, a range's bounds), not only
when it is the column's own type: such days were archived green and then could not be restored.

- pg_node_tree (and the statistics' types) inside a composite, a domain, an array or a range: refused by
  type, before anything is read, naming the way to it.
- regproc and regoper inside a composite, an array of composites, a range or an array of a domain over
  an array: refused per value where the name is overloaded (``abs``), as the column's own values are.
"""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import UnsupportedTypeError
from archive_pipeline.core.formats.common import refuse_unrestorable
from archive_pipeline.core.keys import table_day_key
from archive_pipeline.core.source import describe_table
from archive_pipeline_tests.helpers import assert_nothing_left
from archive_pipeline_tests.test_exactness import _round_trip

DAY = dt.date(2024, 3, 10)
FORMATS = ("jsonl", "csv", "parquet")

TYPES = """CREATE TYPE {s}.nt AS (id int, t pg_node_tree);
CREATE DOMAIN {s}.dnt AS {s}.nt;
CREATE TYPE {s}.outer_nt AS (n {s}.nt[]);
CREATE TYPE {s}.ntrange AS RANGE (subtype = pg_node_tree, subtype_opclass = text_ops);
CREATE TYPE {s}.rp AS (f regproc, o regoper);
CREATE DOMAIN {s}.drpa AS regproc[];
CREATE TYPE {s}.rprange AS RANGE (subtype = regproc, subtype_opclass = oid_ops)"""

# column type -> the way to the pg_node_tree inside it, as the refusal names it
WRITE_ONLY = {
    "{s}.nt": "field t pg_node_tree",
    "{s}.dnt": "base type {s}.nt → field t pg_node_tree",
    "{s}.nt[]": "element {s}.nt → field t pg_node_tree",
    "{s}.outer_nt": "field n {s}.nt[] → element {s}.nt → field t pg_node_tree",
    "{s}.ntrange": "subtype pg_node_tree",
    "{s}.ntmultirange": "range {s}.ntrange → subtype pg_node_tree",
}


def _types(conn, schema: str) -> str:
    s = sql.Identifier(schema).as_string(conn)
    for statement in TYPES.split(";\n"):
        conn.execute(statement.replace("{s}", s))
    return s


def _spec(schema: str, table: str, fmt: str) -> TableSpec:
    return TableSpec(name=f"{schema}.{table}", day_column="at", start_date=DAY, format=fmt)


def test_a_type_that_does_not_read_back_is_refused_inside_any_type(conn, schema):
    """A composite with a pg_node_tree field, a domain over it, an array of it, a composite of an array of
    it, a range and a multirange over pg_node_tree: each column is refused, naming the way to the type."""
    s = _types(conn, schema)
    for i, (column_type, route) in enumerate(WRITE_ONLY.items()):
        conn.execute(f"CREATE TABLE {s}.w{i} (id int, at date, v {column_type.replace('{s}', s)})")
        table = describe_table(conn, f"{schema}.w{i}", "at")
        with pytest.raises(UnsupportedTypeError) as failure:
            refuse_unrestorable(table)
        message = str(failure.value)
        assert f"column 'v'" in message and f"{schema}.w{i}" in message, message
        assert route.replace("{s}", schema) in message and "holds pg_node_tree" in message, message
        assert "v::text" in message and failure.value.retryable is False, message


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_composite_holding_pg_node_tree_is_refused_and_nothing_published(fmt, conn, schema, store, temp_dir):
    """The whole archive: refused naming table, day, column, way and remedy; nothing uploaded."""
    s = _types(conn, schema)
    conn.execute(f"CREATE TABLE {s}.wc (id int, at date, v {s}.nt[])")
    conn.execute(f"INSERT INTO {s}.wc SELECT 1, %s, ARRAY[ROW(1, ev_qual)::{s}.nt] FROM pg_rewrite LIMIT 1", (DAY,))
    spec = _spec(schema, "wc", fmt)
    with pytest.raises(UnsupportedTypeError) as failure:
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    message = str(failure.value)
    assert f"{schema}.wc" in message and DAY.isoformat() in message and "column 'v'" in message, message
    assert "field t pg_node_tree" in message and "v::text" in message and failure.value.retryable is False
    assert_nothing_left(store, table_day_key(spec, DAY, store.prefix), temp_dir)


# column -> (type, a value that reads back, one that does not: abs and + are overloaded, the way to it)
REG_NESTED = {
    "c": ("{s}.rp", "ROW('now', '||/')::{s}.rp", "ROW('now', '+(int4,int4)'::regoperator::oid::regoper)::{s}.rp",
          "{s}.rp → field o regoper"),
    "ca": ("{s}.rp[]", "ARRAY[ROW('now', NULL)::{s}.rp, NULL]",
           "ARRAY[NULL, ROW('abs(int8)'::regprocedure::oid::regproc, NULL)::{s}.rp]",
           "{s}.rp[] → element {s}.rp → field f regproc"),
    "r": ("{s}.rprange", "{s}.rprange('now', 'now', '[]')",
          "{s}.rprange('now', 'abs(int8)'::regprocedure::oid::regproc)", "{s}.rprange → subtype regproc"),
    "mr": ("{s}.rpmultirange", "{s}.rpmultirange({s}.rprange('now', 'now', '[]'))",
           "{s}.rpmultirange({s}.rprange(NULL, 'now'), {s}.rprange('abs(int8)'::regprocedure::oid::regproc, NULL))",
           "{s}.rpmultirange → range {s}.rprange → subtype regproc"),
    "da": ("{s}.drpa[]", "ARRAY[ARRAY['now']::{s}.drpa]",
           "ARRAY[ARRAY['abs(int8)'::regprocedure::oid::regproc]::{s}.drpa]",
           "{s}.drpa[] → element {s}.drpa → base type regproc[] → element regproc"),
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_overloaded_name_inside_a_composite_range_or_nested_array_is_refused(fmt, conn, schema, store,
                                                                                 temp_dir):
    """regproc and regoper inside composites, arrays of composites, ranges, multiranges and arrays of a
    domain over an array print an overloaded name that no restore reads back: refused per value as the
    column's own are (names that read back are archived, restored and proven), naming table, day, column,
    the way to the value and the remedy; nothing published."""
    s = _types(conn, schema)
    columns = ", ".join(f"{name} {t.replace('{s}', s)}" for name, (t, _, _, _) in REG_NESTED.items())
    conn.execute(f"CREATE TABLE {s}.fine (id int, at date, {columns})")
    values = ", ".join(good.replace("{s}", s) for _, good, _, _ in REG_NESTED.values())
    conn.execute(f"INSERT INTO {s}.fine VALUES (1, %s, {values})", (DAY,))
    assert _round_trip(conn, schema, store, temp_dir, "fine", fmt).rows == 1
    for name, (_, _, bad, way) in REG_NESTED.items():
        conn.execute(f"CREATE TABLE {s}.bad_{name} AS SELECT * FROM {s}.fine")
        conn.execute(f"UPDATE {s}.bad_{name} SET {name} = {bad.replace('{s}', s)}")
        spec = _spec(schema, f"bad_{name}", fmt)
        with pytest.raises(UnsupportedTypeError) as failure:
            archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
        message = str(failure.value)
        assert f"{schema}.bad_{name}" in message and DAY.isoformat() in message, message
        assert f"column {name!r}" in message and "regprocedure or regoperator" in message, message
        assert way.replace("{s}", schema) in message, message
        assert failure.value.retryable is False
        assert_nothing_left(store, table_day_key(spec, DAY, store.prefix), temp_dir)
