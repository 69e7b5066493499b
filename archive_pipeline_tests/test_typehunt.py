"""Type hunt: values at the edges of types in and beyond the README's type table, archived in every
format, restored into a new table and compared with the source value by value (and proven by deep
verification), or refused with a typed error naming table, day, column and remedy, nothing published.

Many values share one table per format (``_round_trip`` of test_exactness: restore with its
fingerprint check, ``EXCEPT ALL`` on each value's output text both ways, deep verification).
"""

from __future__ import annotations

import datetime as dt
import io

import pyarrow.parquet as pq
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import UnsupportedTypeError
from archive_pipeline.core.keys import table_day_key
from archive_pipeline.core.restore import FingerprintMismatchError, restore_day
from archive_pipeline.core.verify import deep_verify
from archive_pipeline_tests.helpers import assert_nothing_left, decompress, download, read_csv, read_jsonl
from archive_pipeline_tests.test_exactness import _differences, _hostile_table, _manifest_columns, _round_trip

DAY = dt.date(2024, 3, 10)
FORMATS = ("jsonl", "csv", "parquet")
# a codec each, besides test_fidelity's every format x codec
CODECS = {"jsonl": "lz4", "csv": "gzip", "parquet": "snappy"}

EDGE_TYPES = """CREATE TYPE {s}.lbl AS ENUM ('NULL', ' lead', 'a"b', 'back\\slash', '{}', 'ünï', 'c,d', '', E'new\\nline');
CREATE TYPE {s}.pr AS (x int, y text, z bytea, w int[]);
CREATE DOMAIN {s}.dpr AS {s}.pr CHECK ((VALUE).x IS DISTINCT FROM -1);
CREATE DOMAIN {s}.drng AS int4range CHECK (NOT isempty(VALUE));
CREATE DOMAIN {s}.dpra AS {s}.pr[]"""

# column -> (type, values of rows 1..4 as SQL); arrays Parquet refuses (bounds, dimensions) are in ``SHAPED``
EDGES = {
    "i2": ("smallint", ["-32768", "32767", "NULL", "0"]),
    "i8": ("bigint", ["-9223372036854775808", "9223372036854775807", "NULL", "0"]),
    "f8": ("float8", ["0.30000000000000004", "1.0000000000000002", "2.2250738585072014e-308", "2.225073858507201e-308"]),
    "f8b": ("float8", ["'-0'", "'Infinity'", "4.9e-324", "123456789012345678"]),
    "f4": ("float4", ["1.4e-45", "1.17549435e-38", "16777217", "0.1"]),
    "f4b": ("float4", ["'-0'", "'-Infinity'", "'NaN'", "3.4028235e38"]),
    "n": ("numeric", ["'1e131071'::numeric", "'1e-16383'::numeric", "'-0'", "'0.000'"]),
    "n1000": ("numeric(1000,500)", ["(repeat('9', 500) || '.' || repeat('9', 500))::numeric", "-1", "NULL", "0"]),
    "n38": ("numeric(38,0)", ["repeat('9', 38)::numeric", "-" + "9" * 38, "NULL", "0"]),
    "n39": ("numeric(39,39)", ["('0.' || repeat('9', 39))::numeric", "('-0.' || repeat('0', 38) || '1')::numeric",
                               "NULL", "0"]),
    "n10_4": ("numeric(10,4)", ["1.5", "-0.0001", "NULL", "0"]),
    "d": ("date", ["'0001-01-01'", "'0001-12-31 BC'", "'9999-12-31'", "'10000-01-01'"]),
    "d2": ("date", ["'4713-01-01 BC'", "'1970-01-01'", "'1969-12-31'", "'2000-02-29'"]),
    "ts": ("timestamp", ["'0001-01-01 00:00:00'", "'0001-12-31 23:59:59.999999 BC'", "'9999-12-31 23:59:59.999999'",
                         "'10000-01-01 00:00:00'"]),
    "ts2": ("timestamp", ["'1969-12-31 23:59:59.999999'", "'1970-01-01'", "'4713-01-01 12:00 BC'",
                          "'0001-01-01 00:00:00.000001 BC'"]),
    "tz": ("timestamptz", ["'0001-01-01 00:00:00+00'", "'0001-12-31 23:59:59.999999+00 BC'",
                           "'9999-12-31 23:59:59.999999+00'", "'10000-01-01 00:00:00+00'"]),
    "tz2": ("timestamptz", ["'2024-03-10 12:00:00+05:30:15'", "'1900-01-01 00:00:00 Europe/Amsterdam'", "NULL",
                            "'1969-12-31 23:59:59.999999+00'"]),
    "ttz": ("timetz", ["'12:00:00+05:30:15'", "'24:00:00+15:59'", "'00:00:00-15:59:59'", "'23:59:59.999999+00'"]),
    "iv": ("interval", ["'1 year -1 mon +1 day -00:00:00.000001'", "'-2147483648 mons'",
                        "'2147483647 mons 2147483647 days'",
                        "'-2147483648 days -2562047 hours -47 minutes -16.854775 seconds'"]),
    "iv2": ("interval", ["'-178956970 years -8 mons'", "'2562047:47:16.854775'", "'-0.000001 sec'", "'1.5 months'"]),
    "iva": ("interval[]", ["ARRAY['-2147483648 mons'::interval, NULL]", "'{}'", "NULL", "'[2:2]={P1D}'"]),
    "ta": ("text[]", ["ARRAY['NULL', 'null', ' sp ', '', NULL]", "ARRAY[E'\\\\', '\"', '{', '}', ',']",
                      "ARRAY[E'\\ufeffbom', E'a\\u2028b', E'cr\\rlf\\n']", "'{}'"]),
    "i8a": ("bigint[]", ["'{-9223372036854775808,9223372036854775807}'", "'{NULL}'", "'{}'", "NULL"]),
    "f8a": ("float8[]", ["'{0.30000000000000004,4.9e-324,-0}'", "'{NaN,Infinity}'", "'{NULL}'", "'{}'"]),
    "txt": ("text", ["E'\\ufeff starts with a BOM'", "E'line\\u2028sep\\u2029para\\u0085nel'",
                     "E'\\x01\\x02\\x1f\\x7f'", "repeat('long', 300000)"]),
    "txt2": ("text", ["E'crlf\\r\\n\\r\\n'", "E'\\\\ud800 not a surrogate'", "E'\\uffff\\ufffe\\U0010ffff'",
                      "E'\\\\.'"]),
    "bp": ("bpchar", ["'a  '", "' '", "NULL", "''"]),
    "qc": ('"char"', ["'\\200'", "'\\'", "NULL", "'\\377'"]),
    "nm": ("name", ["repeat('é', 40)", "''", "NULL", "' x '"]),
    "bt": ("bit(4)", ["B'0000'", "B'1111'", "NULL", "B'1010'"]),
    "tq": ("tsquery", ["$$'a' & !'b' | 'c' <-> 'd'$$", "''", "NULL", "$$'x y':*A$$"]),
    "tv": ("tsvector", ["$$'a\\\\b' 'c''d':1,2B$$", "''", "NULL", "$$'NULL'$$"]),
    "cd": ("cidr", ["'10.0.0.0/8'", "'::/0'", "NULL", "'2001:db8::/32'"]),
    "in": ("inet", ["'::ffff:1.2.3.4/128'", "'0.0.0.0/0'", "NULL", "'fe80::1/64'"]),
    "mac": ("macaddr", ["'08:00:2b:01:02:03'", "'ff:ff:ff:ff:ff:ff'", "NULL", "'00:00:00:00:00:00'"]),
    "mac8": ("macaddr8", ["'08:00:2b:01:02:03:04:05'", "'ff:ff:ff:ff:ff:ff:ff:ff'", "NULL", "'08:00:2b:01:02:03'"]),
    "lsn": ("pg_lsn", ["'0/0'", "'FFFFFFFF/FFFFFFFF'", "NULL", "'16/B374D848'"]),
    "o": ("oid", ["0", "4294967295", "NULL", "1"]),
    "x8": ("xid8", ["'0'", "'18446744073709551615'", "NULL", "'1'"]),
    "xi": ("xid", ["'0'", "'4294967295'", "NULL", "'1'"]),
    "ci": ("cid", ["'0'", "'4294967295'", "NULL", "'1'"]),
    "ti": ("tid", ["'(0,0)'", "'(4294967295,65535)'", "NULL", "'(1,1)'"]),
    "rc": ("regclass", ["'pg_class'", "'pg_catalog.pg_type'", "NULL", "0"]),
    "rt": ("regtype", ["'integer[]'", "'character varying'", "NULL", "'\"char\"'"]),
    "rpp": ("regprocedure", ["'abs(integer)'", "'now()'", "NULL", "0"]),
    "rop": ("regoperator", ["'+(integer,integer)'", "'-(NONE,integer)'", "NULL", "0"]),
    "rn": ("regnamespace", ["'pg_catalog'", "'public'", "NULL", "0"]),
    "rcfg": ("regconfig", ["'english'", "'simple'", "NULL", "0"]),
    "sn": ("pg_snapshot", ["'10:20:10,14,15'", "'1:1:'", "NULL", "'100:200:'"]),
    "txs": ("txid_snapshot", ["'10:20:10,14,15'", "'1:1:'", "NULL", "'100:200:'"]),
    "jp": ("jsonpath", ["'$.a ? (@ > 1)'", "$$strict $.\"key with space\"[*]$$", "NULL",
                        "$$$ like_regex \"^a\" flag \"i\"$$"]),
    "rcur": ("refcursor", ["'a cursor'", "''", "NULL", "'x'"]),
    "acl": ("aclitem[]", ["'{=r/postgres}'", "'{}'", "NULL", "'{NULL}'"]),
    "ln": ("line", ["'{1,-1,0}'", "'{0,1,-0}'", "NULL", "'{1e300,2,NaN}'"]),
    "ls": ("lseg", ["'[(0,0),(1,1)]'", "'[(-0,1e-300),(1,1)]'", "NULL", "'[(1,1),(1,1)]'"]),
    "bx": ("box", ["'(1,1),(0,0)'", "'(0,0),(1,1)'", "NULL", "'(NaN,1),(2,Infinity)'"]),
    "ph": ("path", ["'[(0,0),(1,1)]'", "'((0,0),(1,1),(2,0))'", "NULL", "'[(0.30000000000000004,1)]'"]),
    "pg": ("polygon", ["'((0,0),(1,1),(2,0))'", "'((0,0))'", "NULL", "'((1e-320,0))'"]),
    "cr": ("circle", ["'<(0,0),1>'", "'<(1e300,-0),0>'", "NULL", "'<(0.1,0.2),0.30000000000000004>'"]),
    "r8": ("int8range", ["'(,)'", "'empty'", "NULL", "'[-9223372036854775808,9223372036854775807)'"]),
    "nr": ("numrange", ["'[1.50,2.500)'", "'(,)'", "NULL", "'(-Infinity,Infinity)'"]),
    "dr": ("daterange", ["'[-infinity,infinity)'", "'empty'", "NULL", "'[4713-01-01 BC,)'"]),
    "tzr": ("tstzrange", ["'[-infinity,infinity]'", "'(\"2024-03-10 00:00+05:30\",)'", "NULL", "'empty'"]),
    "mr": ("int4multirange", ["'{}'", "'{[1,2),[5,)}'", "NULL", "'{(,)}'"]),
    "dmr": ("datemultirange", ["'{[-infinity,2024-01-01),[2025-01-01,infinity)}'", "'{}'", "NULL", "'{empty}'"]),
    "rarr": ("int4range[]", ["ARRAY['empty'::int4range, NULL, '(,)']", "'{}'", "NULL", "'[0:0]={\"[1,2)\"}'"]),
    "mra": ("int4multirange[]", ["ARRAY['{}'::int4multirange, NULL]", "'{}'", "NULL", "'{NULL}'"]),
    "l": ("{s}.lbl", ["'NULL'", "' lead'", "'a\"b'", "E'back\\\\slash'"]),
    "la": ("{s}.lbl[]", ["ARRAY['NULL', NULL, '', 'c,d']::{s}.lbl[]", "ARRAY['{}', 'ünï', E'new\\nline']::{s}.lbl[]",
                         "'{}'", "NULL"]),
    "dp": ("{s}.dpr", ["ROW(1, 'a\"b', '\\x00', '{1,NULL}')", "ROW(NULL, NULL, NULL, NULL)", "NULL",
                       "ROW(2, '', '\\x', '{}')"]),
    "drg": ("{s}.drng", ["'[1,2)'", "'(,)'", "NULL", "'[,5]'"]),
    "dpa": ("{s}.dpra", ["ARRAY[ROW(1, 'x', NULL, NULL)::{s}.pr, NULL]", "'{}'", "NULL",
                         "ARRAY[ROW(NULL, NULL, NULL, NULL)::{s}.pr]"]),
    "\ufeffbom": ("text", ["'x'", "NULL", "''", "'y'"]),
    'sp ace "q" ü': ("int", ["1", "NULL", "2", "3"]),
}
# arrays a Parquet list cannot hold (refused there: test_exactness); JSONL and CSV keep them
SHAPED = {
    "ta_shaped": ("text[]", ["'{{a,b},{NULL,\"\"}}'", "'[0:1]={NULL,x}'", "NULL", "'{}'"]),
    "i8a_shaped": ("bigint[]", ["'[0:0]={1}'", "'[-5:-4]={NULL,2}'", "'{{1},{2}}'", "NULL"]),
}


def _edge_table(conn, schema: str, name: str, columns: dict[str, tuple[str, list[str]]]) -> None:
    conn.execute(EDGE_TYPES.replace("{s}", sql.Identifier(schema).as_string(conn)))
    _hostile_table(conn, schema, name, {n: t for n, (t, _) in columns.items()},
                   [[values[row] for _, values in columns.values()] for row in range(4)])


def _spec(schema: str, table: str, fmt: str, **options) -> TableSpec:
    return TableSpec(name=f"{schema}.{table}", day_column="at", start_date=DAY, format=fmt, **options)


@pytest.mark.parametrize("fmt", FORMATS)
def test_edge_values_of_many_types_round_trip_exactly(fmt, conn, schema, store, temp_dir):
    """Limits, infinities, BC and year-10000 dates, offsets with seconds, interval extremes, NULL in arrays,
    composites and ranges, multiranges, domains over composites, ranges and arrays of composites, odd enum
    labels, BOM / U+2028 / control characters / long lines, system and geometric types, odd column names:
    every value comes back identical (already so before this hunt; kept as a regression net)."""
    columns = EDGES if fmt == "parquet" else {**EDGES, **SHAPED}
    _edge_table(conn, schema, "edges", columns)
    spec_compression = CODECS[fmt]
    spec = _spec(schema, "edges", fmt, compression=spec_compression)
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    restored = restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.edges_back", temp_dir=temp_dir)
    assert restored.fingerprint_checked and restored.rows == result.rows == 4
    assert _differences(conn, schema, "edges", "edges_back", {}) == []
    assert deep_verify(conn, store, spec, DAY) == []
    assert all(c["exact"] for c in _manifest_columns(store, result).values())


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_restore_reads_the_archive_whatever_the_sessions_input_settings(fmt, conn, schema, store, temp_dir):
    """A role may default to array_nulls off (an unquoted NULL in an array literal is then the string
    "NULL", or an error for other element types), another DateStyle, IntervalStyle, TimeZone: the restore
    and the proof read every archive as written. With array_nulls off every format's restore failed,
    blaming the column's type."""
    _hostile_table(conn, schema, "arr", {"ia": "int[]", "ta": "text[]", "iva": "interval[]", "ts": "timestamp",
                                          "iv": "interval", "f": "float8"},
                   [["'{1,NULL}'", "ARRAY[NULL, 'NULL', 'x']", "ARRAY['-1 mon'::interval, NULL]",
                     "'0001-12-31 23:59:59.999999 BC'", "'-1 year +2 days -00:00:01'", "0.30000000000000004"],
                    ["'{NULL}'", "'{NULL}'", "'{NULL}'", "'294276-12-31 23:59:59'", "NULL", "'-0'"]])
    if fmt == "parquet":
        conn.execute(sql.SQL("UPDATE {} SET ts = NULL WHERE id = 2").format(sql.Identifier(schema, "arr")))
    spec = _spec(schema, "arr", fmt)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute("SET array_nulls = off; SET DateStyle = 'SQL, DMY'; SET IntervalStyle = 'sql_standard'; "
                 "SET extra_float_digits = -15; SET TimeZone = 'America/St_Johns'; SET bytea_output = escape")
    restored = restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.arr_back", temp_dir=temp_dir)
    assert restored.fingerprint_checked and restored.rows == 2
    assert deep_verify(conn, store, spec, DAY) == []
    assert conn.execute("SHOW array_nulls").fetchone()[0] == "off"  # the caller's session as it was
    conn.execute("RESET ALL")
    assert _differences(conn, schema, "arr", "arr_back", {}) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_domains_that_refuse_null_restore_and_are_proven(fmt, conn, schema, store, temp_dir):
    """Domains whose CHECK (or NOT NULL) refuses NULL: deep verification looked their types up with
    ``NULL::domain``, which runs the CHECK on NULL and failed every proof of CSV and Parquet archives; a
    JSONL restore read an array it could not take the fast path for with ``json_populate_record(NULL::
    <target>, ...)``, which reads every other column as NULL too, and failed on such a domain."""
    s = sql.Identifier(schema).as_string(conn)
    conn.execute(f"CREATE TYPE {s}.pr AS (x int, y text); CREATE DOMAIN {s}.djb AS jsonb CHECK (VALUE IS NOT NULL); "
                 f"CREATE DOMAIN {s}.dnn AS int NOT NULL")
    _hostile_table(conn, schema, "dn", {"j": "{s}.djb", "n": "{s}.dnn", "pa": "{s}.pr[]", "ta": "text[]"},
                   [["'{\"a\": null}'", "1", "ARRAY[ROW(1, 'x')::{s}.pr, NULL]", "ARRAY[E'back\\\\slash', NULL]"],
                    ["'\"s\"'", "-2147483648", "'{}'", "'{{a},{b}}'"]])
    if fmt == "parquet":
        conn.execute(sql.SQL("UPDATE {} SET ta = NULL WHERE id = 2").format(sql.Identifier(schema, "dn")))
    _round_trip(conn, schema, store, temp_dir, "dn", fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_int2vector_and_oidvector_are_archived_as_their_own_types(fmt, conn, schema, store, temp_dir, s3_client,
                                                                    bucket):
    """int2vector and oidvector are arrays of int2 and oid indexed from 0 that print as "1 2 3"; they were
    taken for int2[] and oid[], and Parquet refused every value of them (a lower bound other than 1)."""
    _hostile_table(conn, schema, "vec", {"i2v": "int2vector", "oidv": "oidvector"},
                   [["'1 2 3'", "'1 2 4294967295'"], ["''", "''"], ["'-32768'", "'0'"], ["NULL", "NULL"]])
    result = _round_trip(conn, schema, store, temp_dir, "vec", fmt)
    if fmt == "parquet":
        table = pq.read_table(io.BytesIO(download(s3_client, bucket, result.key)))
        assert table.column("i2v").to_pylist() == ["1 2 3", "", "-32768", None]


REG_AMBIGUOUS = {  # format -> column, a value printing as a name its input refuses (the name is overloaded)
    "jsonl": ("rp", "'abs(int8)'::regprocedure::oid::regproc"),
    "csv": ("ro", "'+(int4,int4)'::regoperator::oid::regoper"),
    "parquet": ("rpa", "ARRAY['now'::regproc, 'abs(int8)'::regprocedure::oid::regproc]"),
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_regproc_and_regoper_names_that_do_not_read_back_are_refused(fmt, conn, schema, store, temp_dir):
    """regproc and regoper print an overloaded function or operator as its (qualified) name alone, which
    their input refuses ("more than one function named"): such a day was archived green and then could be
    neither restored nor proven. It is refused naming the column and the remedy (no format helps); names
    that read back, 0 ('-') and OIDs of nothing (printed as numbers) still round-trip."""
    _hostile_table(conn, schema, "rg", {"rp": "regproc", "ro": "regoper", "rpa": "regproc[]"},
                   [["'now'", "'||/'", "ARRAY['now'::regproc, 0, 4294967294::oid::regproc, NULL]"],
                    ["0", "0", "NULL"], ["4294967294", "4294967294", "'{}'"]])
    _round_trip(conn, schema, store, temp_dir, "rg", fmt)
    column, value = REG_AMBIGUOUS[fmt]
    conn.execute(sql.SQL("CREATE TABLE {} AS SELECT * FROM {}").format(
        sql.Identifier(schema, "rg2"), sql.Identifier(schema, "rg")))
    conn.execute(sql.SQL("UPDATE {} SET {} = {} WHERE id = 2").format(
        sql.Identifier(schema, "rg2"), sql.Identifier(column), sql.SQL(value)))
    spec = _spec(schema, "rg2", fmt)
    with pytest.raises(UnsupportedTypeError) as failure:
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    message = str(failure.value)
    assert f"{schema}.rg2" in message and DAY.isoformat() in message and f"column {column!r}" in message
    assert "regprocedure or regoperator" in message and failure.value.retryable is False, message
    assert_nothing_left(store, table_day_key(spec, DAY, store.prefix), temp_dir)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_table_without_columns_is_refused(fmt, conn, schema, store, temp_dir):
    """``CREATE TABLE t ()`` holds rows of no columns: JSONL and CSV archived them green and every restore
    then failed on a column list ``()``; Parquet read none of them and failed as retryable ("the table
    changed under the read"), for ever. Refused now, not retried, nothing published; an empty day of such
    a table is still archived as empty."""
    table = sql.Identifier(schema, f"z_{DAY:%Y%m%d}")
    conn.execute(sql.SQL("CREATE TABLE {} ()").format(table))
    spec = TableSpec(name=f"{schema}.z", start_date=DAY, format=fmt,
                     partitioning={"mode": "naming", "pattern": "z_%Y%m%d"})
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 0
    conn.execute(sql.SQL("INSERT INTO {} SELECT FROM generate_series(1, 3)").format(table))
    with pytest.raises(UnsupportedTypeError) as failure:
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir, overwrite=True)
    message = str(failure.value)
    assert f"{schema}.z_{DAY:%Y%m%d}" in message and DAY.isoformat() in message and "has no columns" in message
    assert failure.value.retryable is False
    assert store.head(table_day_key(spec, DAY, store.prefix)) is None  # still the empty day's manifest alone


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_type_postgresql_cannot_read_back_is_refused(fmt, conn, schema, store, temp_dir):
    """pg_node_tree (and the statistics' types) print, but their input refuses every value: a table may hold
    one (INSERT ... SELECT from the catalog), and its day was archived green and then could be neither
    restored nor proven. Refused naming the column and the remedy (a view with its text)."""
    table = sql.Identifier(schema, "nt")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, tree pg_node_tree)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT 1, %s, ev_qual FROM pg_rewrite LIMIT 1").format(table), (DAY,))
    spec = _spec(schema, "nt", fmt)
    with pytest.raises(UnsupportedTypeError) as failure:
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    message = str(failure.value)
    assert f"{schema}.nt" in message and DAY.isoformat() in message and "column 'tree' (pg_node_tree)" in message
    assert "tree::text" in message and failure.value.retryable is False, message
    assert_nothing_left(store, table_day_key(spec, DAY, store.prefix), temp_dir)


def test_strict_refuses_an_inexact_column_before_publishing_and_the_manifest_records_it(conn, schema, store,
                                                                                          temp_dir):
    """strict: a json column in JSONL (a line break between tokens becomes a space) is refused before
    anything is uploaded, naming table, day, column and remedy. Without strict it is archived and the
    manifest records it as not exact; its restore, which the changed value fails, says so rather than
    only blaming an altered archive."""
    _hostile_table(conn, schema, "js", {"j": "json", "jb": "jsonb"}, [["E'[1,\\n2]'", "'{}'"], ["'{}'", "NULL"]])
    spec = _spec(schema, "js", "jsonl", strict=True)
    with pytest.raises(UnsupportedTypeError) as failure:
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    message = str(failure.value)
    assert f"{schema}.js" in message and DAY.isoformat() in message and "column 'j' (json)" in message
    assert "strict" in message and "csv or parquet" in message and failure.value.retryable is False
    assert_nothing_left(store, table_day_key(spec, DAY, store.prefix), temp_dir)
    lax = _spec(schema, "js", "jsonl")
    result = archive_partition(conn, lax, DAY, store, temp_dir=temp_dir, overwrite=True)
    columns = _manifest_columns(store, result)
    assert (columns["j"]["exact"], columns["jb"]["exact"], columns["id"]["exact"]) == (False, True, True)
    with pytest.raises(FingerprintMismatchError, match=r"not archived exactly in jsonl \('j': .*csv or parquet"):
        restore_day(conn, store, lax, DAY, into="new", target=f"{schema}.js_back", temp_dir=temp_dir)


@pytest.mark.parametrize("fmt", FORMATS)
def test_standard_conforming_strings_off_changes_nothing(fmt, conn, schema, store, temp_dir):
    """A legacy role or database default of standard_conforming_strings off made the backslashes in the
    archiver's own literals ('\\u0000', its regular expressions) escapes: a JSONL archive of any json
    column failed with a syntax error ("report it") instead of refusing a \\u0000 by name."""
    _hostile_table(conn, schema, "sc", {"j": "json", "t": "text", "ta": "text[]"},
                   [[r"""'{"k": "nul \u0000"}'""", r"E'back\\slash'", r"ARRAY[E'\\', '\"']"],
                    [r"""'{"k": "\\ud800 \n"}'""", "NULL", "NULL"]])
    conn.execute("SET standard_conforming_strings = off")
    spec = _spec(schema, "sc", fmt)
    if fmt == "jsonl":
        with pytest.raises(UnsupportedTypeError, match=r"column 'j' \(json\).*\\u0000.*csv or parquet"):
            archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
        assert_nothing_left(store, table_day_key(spec, DAY, store.prefix), temp_dir)
        conn.execute(sql.SQL("UPDATE {} SET j = '{{\"k\": \"\\u00e9\"}}' WHERE id = 1").format(
            sql.Identifier(schema, "sc")))
    _round_trip(conn, schema, store, temp_dir, "sc", fmt)


@pytest.mark.parametrize("fmt", ["jsonl"])  # JSONL restores by INSERT; CSV and Parquet by COPY
def test_dropped_generated_and_identity_columns_restore_into_the_original(fmt, conn, schema, store, temp_dir):
    """A column dropped before archiving (attisdropped), a stored generated column and an ALWAYS identity:
    restored into a new table and, after retention removed the day, into the original (already so)."""
    from archive_pipeline.core.lifecycle import remove_day

    table = sql.Identifier(schema, "g")
    conn.execute(sql.SQL("CREATE TABLE {} (id int GENERATED ALWAYS AS IDENTITY, gone text, at date, a int[], "
                         "g int GENERATED ALWAYS AS (coalesce(array_length(a, 1), -1)) STORED, tail text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} (gone, at, a, tail) VALUES ('x', %s, '{{1,2}}', 't'), ('y', %s, NULL, NULL), "
                         "('z', %s, '{{}}', '')").format(table), (DAY, DAY, DAY))
    conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN gone").format(table))
    spec = _spec(schema, "g", fmt, retention={"keep_days": 1, "action": "delete"})
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    before = conn.execute(sql.SQL("SELECT concat(r.*) FROM {} r ORDER BY id").format(table)).fetchall()
    assert restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.g_back",
                       temp_dir=temp_dir).fingerprint_checked
    remove_day(conn, spec, DAY, store)
    restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir)
    assert conn.execute(sql.SQL("SELECT concat(r.*) FROM {} r ORDER BY id").format(table)).fetchall() == before


@pytest.mark.parametrize("fmt", FORMATS)
def test_money_is_archived_under_the_monetary_locale_its_restore_and_fingerprint_use(fmt, conn, schema, store,
                                                                                      temp_dir, s3_client, bucket):
    """money is archived as numeric, whose scale its cast takes from lc_monetary; the restore reads it and
    the fingerprint prints it under "C". Parquet's reading session (and CSV's and JSONL's on a day big
    enough to be fingerprinted alongside, in another session) read it under the role's or server's
    lc_monetary: in a locale of 0 or 3 fraction digits (ja_JP, ar_KW) every amount restored 100 times
    larger or rounded, and the green archive failed its proof. (Only C locales exist here: the
    lc_monetary the reading session sees is read through a view.)"""
    s = sql.Identifier(schema).as_string(conn)
    conn.execute(f"CREATE TABLE {s}.m (id int, at date, mn money)")
    conn.execute(f"INSERT INTO {s}.m VALUES (1, '2024-03-10', 12.34), (2, '2024-03-10', NULL)")
    conn.execute(f"CREATE VIEW {s}.mv AS SELECT id, at, mn, current_setting('lc_monetary') AS locale FROM {s}.m")
    conn.execute("SET lc_monetary = 'C.utf8'")
    spec = _spec(schema, "mv", fmt)
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    body = download(s3_client, bucket, result.key)
    if fmt == "parquet":
        rows = pq.read_table(io.BytesIO(body)).to_pylist()
    else:
        rows = (read_jsonl if fmt == "jsonl" else read_csv)(decompress(body, "zstd"))
    assert sorted((str(r["id"]), r["locale"]) for r in rows) == [("1", "C"), ("2", "C")], rows
    restored = restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.mv_back", temp_dir=temp_dir)
    assert restored.fingerprint_checked
