"""Every value exact in every format, or a typed refusal naming the column (issue #10 §3, #11 §5/§6).

One table holds the values at the edges of every type in the README's type table. Each format
archives a view of it (every column the format can hold) through archive_partition, and the archive
is read back the way a restore would (JSONL: json_populate_record, CSV: COPY FROM, Parquet: Arrow,
each value converted back by PostgreSQL) and compared with PostgreSQL's own text output of the
source, value by value. Each value a format cannot hold is archived alone and must fail with an
UnsupportedTypeError naming the column, before anything is published.
"""

from __future__ import annotations

import datetime as dt
import io
import json

import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError, UnsupportedTypeError
from archive_pipeline.core.formats.common import Extraction, WriteStats, is_value_failure
from archive_pipeline.core.formats import get_format
from archive_pipeline.core.source import SNAPSHOT_SETTINGS, copy_chunks, day_filter, describe_table, prefetch, read_snapshot
from archive_pipeline_tests.helpers import decompress, download, read_csv, read_jsonl

DAY = dt.date(2024, 3, 10)
SCHEMA = "exact edge"
ROWS = 5
ALL_CONTROL = "(SELECT string_agg(chr(i), '') FROM generate_series(1, 31) AS i) || chr(127)"
ALL_BYTES = "(SELECT string_agg(set_byte('\\x00'::bytea, 0, i), ''::bytea ORDER BY i) FROM generate_series(0, 255) i)"

# column -> (type, values of rows 1..5 as SQL expressions, formats that refuse a value of it: reason text)
COLUMNS: dict[str, tuple[str, list[str], dict[str, str]]] = {
    "f8": ("double precision", ["'-0'", "'NaN'", "1.7976931348623157e308", "5e-324", "NULL"], {}),
    "f4": ("real", ["'-0'", "'-Infinity'", "3.4028235e38", "1e-45", "'NaN'"], {}),
    "n": ("numeric", ["'NaN'", "'-Infinity'", "'0.000000000000000000000000000000000000001'",
                      "(repeat('9', 1000) || '.5')::numeric", "NULL"], {}),
    "n_neg_scale": ("numeric(5,-2)", ["12300", "-9999900", "NULL", "0", "100"], {}),
    "n_scale_gt_p": ("numeric(3,5)", ["0.00123", "-0.00999", "NULL", "0", "0.00001"], {}),
    "n76": ("numeric(76,38)", [f"'{'9' * 38}.{'9' * 38}'", f"'-0.{'0' * 37}1'", "0", "NULL", "1.10"], {}),
    "mn": ("money", ["92233720368547758.07", "-92233720368547758.08", "0", "NULL", "-0.01"], {}),
    "ch": ("char(5)", ["'a'", "''", "NULL", "'abcde'", "' x '"], {}),
    "t": ("text", [ALL_CONTROL, "'𝄞😀 \u2028\u2029 ünï'", "E'\\\\.'", "''", r"E'back\\slash \"q\" ,;\r\n'"], {}),
    "by": ("bytea", [ALL_BYTES, "'\\x'", "'\\x00'", "NULL", "'\\x0a0d5c22'"], {}),
    "j": ("json", [r"""'{"a": 1, "a": 2,	"b": 1.000e3}'""", r"""'"esc \u00e9 \\ \/"'""", "'[1, {\"x\": null}]'",
                   "NULL", "'  {\"sp\" :  true }  '"], {}),
    "jb": ("jsonb", ["'{\"b\": 1, \"a\": [null, \"x\"]}'", "'\"null\"'", "'1e400'", "'[]'", "NULL"], {}),
    "d": ("date", ["'4714-11-24 BC'", "'5874897-12-31'", "'infinity'", "'-infinity'", "NULL"], {}),
    "ts": ("timestamp", ["'4714-11-24 00:00:00 BC'", "'294247-01-10 04:00:54.775806'", "'infinity'", "'-infinity'",
                         "'2000-01-01'"], {}),
    "tz": ("timestamptz", ["'4714-11-24 00:00:00+00 BC'", "'294247-01-10 04:00:54.775806+00'", "'-infinity'",
                           "'infinity'", "'2024-03-10 01:02:03.456789+05:30'"], {}),
    "tm": ("time", ["'00:00'", "'23:59:59.999999'", "NULL", "'12:00'", "'00:00:00.000001'"], {}),
    "ttz": ("timetz", ["'24:00:00-15:59'", "'00:00:00+15:59'", "NULL", "'12:34:56.789+05:30'", "'00:00Z'"], {}),
    "iv": ("interval", ["'1 mon 2 days 3 microseconds'", "'-178000000 years'", "'178000000 years -2147483648 days'",
                        "'2562047 hours 47 minutes 16.854775 seconds'", "NULL"], {}),
    "u": ("uuid", ["'00000000-0000-0000-0000-000000000000'", "NULL", "'ffffffff-ffff-ffff-ffff-ffffffffffff'",
                   "gen_random_uuid()", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'"], {}),
    "b": ("boolean", ["true", "false", "NULL", "true", "false"], {}),
    "m": ("mood", ["'sad'", "'hap,py \"q\"'", "''", "NULL", "'sad'"], {}),
    "ia": ("int[]", ["'{}'", "'{NULL}'", "'{1,2,3}'", "NULL", "'{-2147483648,2147483647}'"], {}),
    "ta": ("text[]", [r"""'{"",NULL,"NULL","a,b","\"q\"","{}"}'""", "'{}'", "NULL", "ARRAY[" + ALL_CONTROL + "]",
                      "'{x}'"], {}),
    "fa": ("double precision[]", ["'{NaN,-0,Infinity,-Infinity}'", "'{}'", "NULL", "'{NULL,1.5}'", "'{0.1}'"], {}),
    "na": ("numeric[]", ["'{NaN,1.000,-Infinity}'", "'{}'", "NULL", "'{NULL}'", "'{0.1}'"], {}),
    "tsa": ("timestamp[]", ["'{infinity,-infinity,\"2024-01-01 00:00:00\"}'", "'{}'", "NULL", "'{NULL}'",
                            "'{\"4714-11-24 00:00:00 BC\"}'"], {}),
    "da": ("date[]", ["'{infinity,-infinity,2024-01-01}'", "'{}'", "NULL", "'{NULL}'", "'{5874897-12-31}'"], {}),
    "tma": ("time[]", ["'{00:00,23:59:59.999999}'", "'{}'", "NULL", "'{NULL}'", "'{12:00}'"], {}),
    "ua": ("uuid[]", ["'{00000000-0000-0000-0000-000000000000,NULL}'", "'{}'", "NULL", "'{NULL}'", "NULL"], {}),
    "ba": ("bytea[]", ["ARRAY['\\x00'::bytea, NULL, '\\x']", "'{}'", "NULL", "'{NULL}'", "NULL"], {}),
    "mna": ("money[]", ["'{1.00,NULL,-0.01}'", "'{}'", "NULL", "'{NULL}'", "NULL"], {}),
    "ma": ("mood[]", ["ARRAY['sad', '', 'hap,py \"q\"']::mood[]", "'{}'", "NULL", "'{NULL}'", "NULL"], {}),
    "jba": ("jsonb[]", ["ARRAY['null'::jsonb, NULL, '{}']", "'{}'", "NULL", "'{NULL}'", "NULL"], {}),
    "p": ("pair", ["'(1,)'", "'(,)'", "NULL", "'(,\"\")'", "'(2,\"a,b\")'"], {}),
    "pa": ("pair[]", ["'{\"(1,)\",NULL,\"(,)\"}'", "'{}'", "NULL", "'{NULL}'", "'[0:0]={\"(3,x)\"}'"], {}),
    "w": ("wrap", ["'(\"(1,x)\",\"[0:1]={1,2}\",null)'", "'(,,)'", "NULL", "ROW('(,)', '{}', '{\"a\": null}')::wrap",
                   "ROW(NULL, NULL, 'null')::wrap"], {}),
    "r": ("int4range", ["'empty'", "'(,)'", "'[1,5)'", "NULL", "'[,3)'"], {}),
    "tr": ("tsrange", ["'[-infinity,infinity]'", "'empty'", "NULL", "'[2024-01-01,)'", "'(,)'"], {}),
    "ip": ("inet", ["'10.0.0.1/8'", "'::1'", "NULL", "'192.168.0.1'", "'10.0.0.0/8'"], {}),
    "iva": ("interval[]", ["'[0:1]={\"1 day\",\"-2 mons 3 us\"}'", "'{}'", "NULL", "'{NULL}'", "'{P1Y}'"], {}),
    "ipa": ("inet[]", ["'{10.0.0.1/8,::1,NULL}'", "'{}'", "NULL", "'{NULL}'", "'{192.168.0.1}'"], {}),
    "cha": ("char(3)[]", ["'{a,\"\",NULL}'", "'{}'", "NULL", "'{\" b \"}'", "'{abc}'"], {}),
    "n2a": ("numeric(10,2)[]", ["'{1.5,NULL,-0.01}'", "'{}'", "NULL", "'{NaN}'", "'{12345678.90}'"], {}),
    "tsv": ("tsvector", ["''", "'a:1 b:2'", "NULL", "$$'x y':3A$$", "''"], {}),
    "vb": ("varbit", ["B''", "B'101'", "NULL", "B'0'", "B'1111111111111111111'"], {}),
    "pt": ("point", ["'(1.5,-0)'", "'(NaN,Infinity)'", "NULL", "'(0,0)'", "'(1e300,-1e-300)'"], {}),
    "x": ("xml", ["'<a>&amp;</a>'", "''", "NULL", "'<b/>'", "'text'"], {}),
    "qc": ('"char"', ["'a'", "''", "NULL", "'\"'", "'z'"], {}),
    "dom": ("intarr", ["'{1,NULL}'", "'{}'", "NULL", "'{{1},{2}}'", "'[5:5]={5}'"],
            {"parquet": "multi-dimensional array or one whose lower bound is not 1"}),
    # values Parquet cannot hold, kept exactly by JSONL and CSV
    "ia_bounds": ("int[]", ["'[0:2]={1,2,3}'", "'{1}'", "NULL", "'[-5:-5]={7}'", "'{}'"],
                  {"parquet": "multi-dimensional array or one whose lower bound is not 1"}),
    "ia_multi": ("int[]", ["'{{1,2},{3,NULL}}'", "'[1:1][0:1]={{1,2}}'", "NULL", "'{}'", "'{1}'"],
                 {"parquet": "multi-dimensional array or one whose lower bound is not 1"}),
    "ta_bounds": ("text[]", ["'[2:3]={a,NULL}'", "NULL", "NULL", "NULL", "NULL"],
                  {"parquet": "multi-dimensional array or one whose lower bound is not 1"}),
    "ts_far": ("timestamp", ["'294276-12-31 23:59:59.999999'", "NULL", "NULL", "NULL", "NULL"],
               {"parquet": "after 294247-01-10"}),
    "ts_last": ("timestamp", ["'294247-01-10 04:00:54.775807'", "NULL", "NULL", "NULL", "NULL"],
                {"parquet": "after 294247-01-10"}),
    "tz_far": ("timestamptz", ["'294276-12-31 23:59:59.999999+00'", "NULL", "NULL", "NULL", "NULL"],
               {"parquet": "after 294247-01-10"}),
    "tsa_far": ("timestamp[]", ["'{2024-01-01,\"294276-12-31 23:59:59\"}'", "NULL", "NULL", "NULL", "NULL"],
                {"parquet": "after 294247-01-10"}),
    "tm24": ("time", ["'24:00:00'", "NULL", "NULL", "NULL", "NULL"], {"parquet": "24:00:00"}),
    "tma24": ("time[]", ["'{12:00,24:00}'", "NULL", "NULL", "NULL", "NULL"], {"parquet": "24:00:00"}),
    "iv_big": ("interval", ["'2562048 hours'", "NULL", "NULL", "NULL", "NULL"], {"parquet": "interval"}),
    "iv_big_neg": ("interval", ["'-2562048 hours 3 mons'", "NULL", "NULL", "NULL", "NULL"], {"parquet": "interval"}),
    "n_nan": ("numeric(10,2)", ["'NaN'", "NULL", "NULL", "NULL", "NULL"], {"parquet": "NaN or Infinity"}),
    # values JSONL cannot hold (json_populate_record reads JSON null as SQL NULL)
    "j_nul": ("json", [r"""'{"k": "nul \u0000 escape"}'""", "NULL", "NULL", "NULL", "NULL"], {"jsonl": "\\u0000"}),
    "jb_null": ("jsonb", ["'null'", "NULL", "NULL", "NULL", "NULL"], {"jsonl": "JSON value null"}),
    "j_null": ("json", ["' null '", "NULL", "NULL", "NULL", "NULL"], {"jsonl": "JSON value null"}),
}
FORMATS = ("jsonl", "csv", "parquet")


def _ddl(conn: psycopg.Connection) -> None:
    schema = sql.Identifier(SCHEMA)
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(schema))
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
    conn.execute(sql.SQL("SET search_path = {}, public").format(schema))
    conn.execute("CREATE TYPE mood AS ENUM ('sad', 'hap,py \"q\"', '')")
    conn.execute("CREATE TYPE pair AS (x int, y text)")
    conn.execute("CREATE TYPE wrap AS (p pair, arr int[], j jsonb)")
    conn.execute("CREATE DOMAIN intarr AS int[]")
    conn.execute("SET lc_monetary = 'C'")
    cols = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t))
                              for n, (t, _, _) in COLUMNS.items())
    conn.execute(sql.SQL("CREATE TABLE edge (id int, at date, {})").format(cols))
    for row in range(ROWS):
        values = sql.SQL(", ").join(sql.SQL(v[1][row]) for v in COLUMNS.values())
        conn.execute(sql.SQL("INSERT INTO edge VALUES ({}, {}, {})").format(sql.Literal(row + 1), sql.Literal(DAY),
                                                                            values))
    # A JSONL-lossy json (a raw line break between tokens) lives in a table of its own.
    conn.execute("CREATE TABLE multiline (id int, at date, j json)")
    conn.execute("INSERT INTO multiline VALUES (1, %s, %s), (2, %s, NULL)", (DAY, '{"k":\r\n\t"v"}', DAY))


@pytest.fixture(scope="module")
def edge(pg):
    with pg.connect() as conn:
        _ddl(conn)
        for fmt in FORMATS:
            keep = [n for n, (_, _, refused) in COLUMNS.items() if fmt not in refused]
            conn.execute(sql.SQL("CREATE VIEW {} AS SELECT id, at, {} FROM edge").format(
                sql.Identifier(f"ok_{fmt}"), sql.SQL(", ").join(map(sql.Identifier, keep))))
        yield
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(SCHEMA)))


@pytest.fixture
def session(conn):
    """The test's connection with the archive's session settings (and the edge schema on the path)."""
    for name, value in SNAPSHOT_SETTINGS.items():
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))
    conn.execute(sql.SQL("SET search_path = {}, public").format(sql.Identifier(SCHEMA)))
    conn.execute("SET lc_monetary = 'C'")
    return conn


def _text_rows(conn: psycopg.Connection, relation: str, columns: list[str]) -> list[tuple]:
    """PostgreSQL's output text of every value (NULL as None), ordered by id: what 'exact' is measured by."""
    exprs = sql.SQL(", ").join(sql.SQL("CASE WHEN {c} IS DISTINCT FROM NULL THEN concat({c}) END").format(
        c=sql.Identifier(c)) for c in columns)
    return conn.execute(sql.SQL("SELECT {} FROM {} ORDER BY id").format(
        exprs, sql.Identifier(SCHEMA, relation))).fetchall()


def _columns_of(fmt: str) -> list[str]:
    return ["id", "at"] + [n for n, (_, _, refused) in COLUMNS.items() if fmt not in refused]


def _archive(conn, store, relation: str, fmt: str, compression: str = "zstd"):
    spec = TableSpec(name=f"{SCHEMA}.{relation}", day_column="at", start_date=DAY, format=fmt,
                     compression=compression if fmt != "parquet" else "zstd")
    return archive_partition(conn, spec, DAY, store)


def _restore_table(conn: psycopg.Connection, source: str, name: str) -> None:
    conn.execute(sql.SQL("CREATE TABLE {} AS SELECT * FROM {} WITH NO DATA").format(
        sql.Identifier(SCHEMA, name), sql.Identifier(SCHEMA, source)))


# ---- Parquet values back into PostgreSQL, by PostgreSQL ---------------------------------------------------

def _parquet_texts(conn: psycopg.Connection, table: pa.Table, pg_types: dict[str, str]) -> list[tuple]:
    columns = [_parquet_column_texts(conn, table.column(n).combine_chunks(), pg_types[n]) for n in table.column_names]
    rows = list(zip(*columns, strict=True))
    return sorted(rows, key=lambda r: int(r[0]))


def _scalar_sql(array: pa.Array, pg_type: str) -> list[tuple[sql.Composable, list] | None]:
    """Per value, an SQL expression (and its parameters) that rebuilds it as ``pg_type`` from Arrow."""
    out: list[tuple[sql.Composable, list] | None] = []
    typ = array.type
    target = sql.SQL(pg_type)
    if pa.types.is_date32(typ):
        for raw in array.view(pa.int32()).to_pylist():
            if raw is None:
                out.append(None)
            elif abs(raw) == 2**31 - 1:
                out.append((sql.SQL("{}::date").format(sql.Literal("infinity" if raw > 0 else "-infinity")), []))
            else:
                out.append((sql.SQL("'1970-01-01'::date + %s::int"), [raw]))
        return out
    if pa.types.is_timestamp(typ):
        for raw in array.view(pa.int64()).to_pylist():
            if raw is None:
                out.append(None)
            elif abs(raw) == 2**63 - 1:
                out.append((sql.SQL("{}::{}").format(sql.Literal("infinity" if raw > 0 else "-infinity"), target), []))
            else:
                days, micros = divmod(raw, 86_400_000_000)
                base = "'1970-01-01 00:00:00+00'::timestamptz" if typ.tz else "'1970-01-01'::timestamp"
                out.append((sql.SQL(base + " + make_interval(days => %s) + %s * interval '1 microsecond'"),
                            [days, micros]))
        return out
    if pa.types.is_time64(typ):
        for raw in array.view(pa.int64()).to_pylist():
            out.append(None if raw is None else (sql.SQL("'00:00'::time + %s * interval '1 microsecond'"), [raw]))
        return out
    if pa.types.is_struct(typ):  # interval: months, days, microseconds
        for value in array.to_pylist():
            if value is None:
                out.append(None)
            else:
                hours, micros = divmod(value["microseconds"], 3_600_000_000)
                out.append((sql.SQL("make_interval(months => %s, days => %s, hours => %s) "
                                    "+ %s * interval '1 microsecond'"),
                            [value["months"], value["days"], hours, micros]))
        return out
    for value in array.to_pylist():
        if value is None:
            out.append(None)
        elif isinstance(value, str):
            out.append((sql.SQL("%s::text::{}").format(target), [value]))
        elif isinstance(value, float):
            out.append((sql.SQL("%s::float8::{}").format(target), [repr(value)]))
        else:
            out.append((sql.SQL("%s::{}").format(target), [value]))
    return out


def _parquet_column_texts(conn: psycopg.Connection, array: pa.Array, pg_type: str) -> list[str | None]:
    if pa.types.is_list(array.type):
        element_type = pg_type[:-2]
        texts = []
        for i in range(len(array)):
            if not array[i].is_valid:
                texts.append(None)
                continue
            elements = _parquet_column_texts(conn, array[i].values, element_type)
            texts.append(conn.execute(sql.SQL("SELECT concat(ARRAY(SELECT e::{t} FROM unnest(%s::text[]) "
                                              "WITH ORDINALITY AS u(e, o) ORDER BY o)::{t}[])").format(
                t=sql.SQL(element_type)), [elements]).fetchone()[0])
        return texts
    texts = []
    for item in _scalar_sql(array, pg_type):
        if item is None:
            texts.append(None)
        else:
            expr, params = item
            texts.append(conn.execute(sql.SQL("SELECT concat(({})::{})").format(expr, sql.SQL(pg_type)),
                                      params).fetchone()[0])
    return texts


# ---- round trips -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_every_edge_value_round_trips_exactly(fmt, edge, session, store, s3_client, bucket):
    conn = session
    relation = f"ok_{fmt}"
    columns = _columns_of(fmt)
    result = _archive(conn, store, relation, fmt)
    assert result.rows == ROWS
    body = decompress(download(s3_client, bucket, result.key), "zstd" if fmt != "parquet" else "none")
    expected = _text_rows(conn, relation, columns)
    restored = f"restored_{fmt}"
    _restore_table(conn, relation, restored)
    try:
        if fmt == "jsonl":
            lines = [line for line in body.split(b"\n") if line]
            assert len(lines) == ROWS
            for line in lines:
                conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM json_populate_record(NULL::{}, %s::json)").format(
                    sql.Identifier(SCHEMA, restored), sql.Identifier(SCHEMA, restored)), [line.decode()])
            actual = _text_rows(conn, restored, columns)
            records = {r["id"]: r for r in read_jsonl(body)}
            # what a plain JSON reader sees for the classes that used to be lossy
            assert records[1]["w"] == '("(1,x)","[0:1]={1,2}",null)'  # composite: its literal, bounds and all
            assert records[1]["p"] == "(1,)" and records[3]["p"] is None  # NULL field kept, NULL composite null
            assert records[5]["pa"] == '[0:0]={"(3,x)"}'
            assert records[4]["dom"] == [[1], [2]] and records[5]["dom"] == "[5:5]={5}"
            assert records[1]["ia_bounds"] == "[0:2]={1,2,3}" and records[2]["ia_bounds"] == [1]
            assert records[1]["jb"] == {"b": 1, "a": [None, "x"]} and records[2]["jb"] == "null"
        elif fmt == "csv":
            with conn.cursor() as cur, cur.copy(sql.SQL("COPY {} FROM STDIN (FORMAT csv, HEADER)").format(
                    sql.Identifier(SCHEMA, restored))) as copy:
                copy.write(body)
            actual = _text_rows(conn, restored, columns)
            # an ordinary CSV reader sees PostgreSQL's text of every value (money as its numeric digits)
            parsed = sorted(read_csv(body), key=lambda r: int(r["id"]))
            money = conn.execute(sql.SQL("SELECT concat(mn::numeric), concat(mna::numeric[]) FROM {} ORDER BY id")
                                 .format(sql.Identifier(SCHEMA, relation))).fetchall()
            for row, exp, (mn, mna) in zip(parsed, expected, money, strict=True):
                got = [row[c] for c in columns]
                want = [{"mn": mn, "mna": mna}.get(c, v) if v is not None else None
                        for c, v in zip(columns, exp, strict=True)]
                assert got == want
        else:
            parquet = pq.read_table(io.BytesIO(body))
            assert parquet.column_names == columns
            pg_types = json.loads(parquet.schema.metadata[b"archive_pipeline.pg_types"])
            pg_types = {n: t.replace(f'"{SCHEMA}".', "") for n, t in pg_types.items()}
            actual = _parquet_texts(conn, parquet, pg_types)
            assert parquet.schema.field("n76").type == pa.decimal256(76, 38)
            assert parquet.schema.field("n_scale_gt_p").type == pa.string()  # Parquet needs scale <= precision
            assert parquet.schema.field("n_neg_scale").type == pa.string()
            assert pa.types.is_list(parquet.schema.field("tsa").type)
        for exp, act in zip(expected, actual, strict=True):
            for name, e, a in zip(columns, exp, act, strict=True):
                if fmt == "jsonl" and name == "j" and e is not None:
                    # recorded as not exact: json_populate_record re-escapes a top-level JSON string
                    assert json.loads(a) == json.loads(e)
                    continue
                assert (name, a) == (name, e)
    finally:
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(SCHEMA, restored)))


def test_jsonl_keeps_json_text_but_line_breaks(edge, session, store, s3_client, bucket):
    """json keeps key order, duplicate keys and number spelling; only a raw line break between tokens
    becomes a space (recorded as not exact)."""
    result = _archive(session, store, "multiline", "jsonl", "none")
    lines = download(s3_client, bucket, result.key).split(b"\n")
    assert lines[0] == b'{"id":1,"at":"2024-03-10","j":{"k":  \t"v"}}'
    assert lines[1] == b'{"id":2,"at":"2024-03-10","j":null}'


# ---- refusals ----------------------------------------------------------------------------------------------

REFUSED = [(fmt, name, reason) for name, (_, _, refused) in COLUMNS.items() for fmt, reason in refused.items()]


@pytest.mark.parametrize(("fmt", "column", "reason"), REFUSED, ids=[f"{f}-{c}" for f, c, _ in REFUSED])
def test_values_a_format_cannot_hold_are_refused_naming_the_column(fmt, column, reason, edge, session, store,
                                                                   s3_client, bucket):
    view = f"only_{column}"
    session.execute(sql.SQL("CREATE VIEW {} AS SELECT id, at, {} FROM edge").format(
        sql.Identifier(SCHEMA, view), sql.Identifier(column)))
    try:
        with pytest.raises(UnsupportedTypeError) as failure:
            _archive(session, store, view, fmt)
    finally:
        session.execute(sql.SQL("DROP VIEW {}").format(sql.Identifier(SCHEMA, view)))
    message = str(failure.value)
    remedy = {"jsonl": "csv or parquet", "parquet": "jsonl or csv"}[fmt]
    assert f"column {column!r} ({COLUMNS[column][0].replace('int[]', 'integer[]')}" in message.replace(
        "timestamp without time zone", "timestamp").replace("timestamp with time zone", "timestamptz").replace(
        "time without time zone", "time")
    assert reason in message and remedy in message and f"{SCHEMA}.{view}" in message
    assert failure.value.retryable is False and failure.value.day == DAY.isoformat()
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_value_postgresql_cannot_convert_names_its_column(fmt, edge, session, store, s3_client, bucket):
    """PostgreSQL fails on the value itself (\\u0000 into jsonb: 22P05) while reading: the error names the
    column, found by a probe after the failure, and is not retried."""
    session.execute("CREATE VIEW bad_json AS SELECT id, at, b, j_nul::jsonb AS as_jsonb, t FROM edge")
    try:
        with pytest.raises(UnsupportedTypeError) as failure:
            _archive(session, store, "bad_json", fmt)
    finally:
        session.execute("DROP VIEW bad_json")
    message = str(failure.value)
    assert "column 'as_jsonb' (jsonb)" in message and "22P05" in message and failure.value.retryable is False
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


OVER_THE_LIMIT = [  # (column, its type, an expression PostgreSQL refuses with 54000 without allocating 1 GB)
    ("huge", "text", "repeat('x', 1100000000 + id)"),
    ("blob", "bytea", "convert_to(repeat('x', 1100000000 + id), 'UTF8')"),
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("column", "typ", "expression"), OVER_THE_LIMIT, ids=[c[1] for c in OVER_THE_LIMIT])
def test_a_value_over_postgresqls_1gb_limit_names_its_column_and_a_true_remedy(fmt, column, typ, expression, edge,
                                                                             session, store):
    """SQLSTATE 54000 (program_limit_exceeded): the message names the column and the remedy instead
    of PostgreSQL's bare error. Parquet reads text in binary, so it is the remedy for text in CSV or
    JSONL; a bytea's text form is hex, which the content fingerprint and the restore read, so no
    format helps it (found with a real 600 MiB bytea, bench/big_value.py) and none may be suggested."""
    session.execute(f"CREATE VIEW too_big AS SELECT id, at, CASE WHEN id = 3 THEN {expression} END AS {column} "
                    "FROM edge")
    try:
        with pytest.raises(UnsupportedTypeError) as failure:
            _archive(session, store, "too_big", fmt)
    finally:
        session.execute("DROP VIEW too_big")
    message = str(failure.value)
    assert f"column '{column}' ({typ})" in message and "1 GB" in message and "54000" in message, message
    if typ == "text" and fmt != "parquet":
        assert "archive this table as parquet" in message, message
    else:
        assert "no format can archive it" in message and "keep such values smaller" in message, message
        assert "as parquet" not in message, message
    assert failure.value.retryable is False


def test_the_mapping_covers_allocation_failures():
    assert is_value_failure(psycopg.errors.InternalError_("invalid memory alloc request size 1258291204"))
    assert is_value_failure(psycopg.errors.ProgramLimitExceeded("out of memory"))
    assert not is_value_failure(psycopg.errors.AdminShutdown("terminating connection"))
    assert not is_value_failure(psycopg.errors.InternalError_("could not read block"))


# ---- encodings and strict ----------------------------------------------------------------------------------

def _write(conn, relation: str, fmt: str, *, strict: bool) -> tuple[WriteStats, bytes]:
    out = io.BytesIO()
    with read_snapshot(conn) as snapshot:
        table = describe_table(conn, f"{SCHEMA}.{relation}", "at")
        extraction = Extraction(conn=conn, table=table, where=day_filter(table, DAY), snapshot=snapshot,
                                chunk_rows=1000, settings=dict(SNAPSHOT_SETTINGS), strict=strict)
        stats = get_format(fmt).write(extraction, out)
    return stats, out.getvalue()


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_column_has_an_encoding_record(fmt, edge, session):
    stats, _ = _write(session, f"ok_{fmt}", fmt, strict=False)
    assert stats.rows == ROWS
    assert list(stats.encodings) == _columns_of(fmt)
    with read_snapshot(session):
        table = describe_table(session, f"{SCHEMA}.ok_{fmt}", "at")
    assert get_format(fmt).encodings(table) == stats.encodings  # known before reading
    for name, enc in stats.encodings.items():
        assert set(enc) == {"encoding", "exact", "note"} and enc["encoding"], name
        assert isinstance(enc["exact"], bool) and (enc["exact"] or enc["note"]), name
    inexact = {n for n, e in stats.encodings.items() if not e["exact"]}
    assert inexact == ({"j"} if fmt == "jsonl" else set())
    if fmt == "parquet":
        assert stats.encodings["n76"]["encoding"] == "decimal256(76, 38)"


def test_strict_refuses_an_inexact_column_before_reading(edge, session):
    with pytest.raises(UnsupportedTypeError, match=r"column 'j' \(json\).*strict.*csv or parquet") as failure:
        _write(session, "multiline", "jsonl", strict=True)
    assert failure.value.retryable is False
    for fmt in ("csv", "parquet"):  # exact there: strict changes nothing
        stats, body = _write(session, "multiline", fmt, strict=True)
        assert stats.rows == 2 and body


def test_parquet_refusal_flags_fit_a_very_wide_table(conn, schema, store, s3_client, bucket):
    """1,000 columns of which 400 are arrays: one flag column, not one per array (PostgreSQL allows
    1,664 target entries); the refused array is named."""
    cols = ", ".join([f"c{i} int" for i in range(599)] + [f"a{i} int[]" for i in range(400)]
                     + ['"__archive_pipeline_refuse" int[]'])  # the name of Parquet's own flag column
    conn.execute(sql.SQL(f"CREATE TABLE {{}}.wide (at date, {cols})").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("INSERT INTO {}.wide (at, c0, a0, a399) VALUES (%s, 1, '{{1,2}}', '{{3}}')").format(
        sql.Identifier(schema)), [DAY])
    spec = TableSpec(name=f"{schema}.wide", day_column="at", start_date=DAY, format="parquet")
    result = archive_partition(conn, spec, DAY, store)
    table = pq.read_table(io.BytesIO(download(s3_client, bucket, result.key)))
    assert table.num_columns == 1001 and table.column("a0").to_pylist() == [[1, 2]]
    conn.execute(sql.SQL("UPDATE {}.wide SET a250 = '[0:0]={{5}}'").format(sql.Identifier(schema)))
    with pytest.raises(ArchiveError, match=r"column 'a250' \(integer\[\]\).*lower bound"):
        archive_partition(conn, spec, DAY, store, overwrite=True)
    conn.execute(sql.SQL("UPDATE {}.wide SET a250 = NULL, __archive_pipeline_refuse = '{{{{1}}}}'").format(
        sql.Identifier(schema)))
    with pytest.raises(ArchiveError, match=r"column '__archive_pipeline_refuse' \(integer\[\]\).*multi-dim"):
        archive_partition(conn, spec, DAY, store, overwrite=True)


# ---- memory bounded by the largest value ------------------------------------------------------------------

def test_read_ahead_stops_at_max_bytes_whatever_the_depth():
    """With max_bytes, the next item is not pulled while the consumer still holds one that big:
    several huge rows are never held at once (the bound is structural, no timing involved)."""
    pulled = []

    def source():
        for i in range(20):
            pulled.append(i)
            yield i

    for held in prefetch(source(), depth=8, max_bytes=10, size=lambda item: 10):
        assert len(pulled) <= held + 1  # nothing after the item being consumed has been read
    assert pulled == list(range(20))


def test_read_ahead_overlaps_small_items():
    seen = list(prefetch(iter(range(100)), depth=2, max_bytes=1 << 20, size=lambda item: 10))
    assert seen == list(range(100))


def test_copy_chunks_hands_a_big_row_on_without_copying(conn):
    statement = sql.SQL("COPY (SELECT i, repeat('x', CASE WHEN i % 3 = 0 THEN 5000 ELSE 10 END) "
                        "FROM generate_series(1, 9) AS i) TO STDOUT")
    chunks = list(copy_chunks(conn, statement, chunk_rows=100, max_chunk_bytes=4000))
    assert [c.rows for c in chunks] == [2, 1, 2, 1, 2, 1]
    assert [isinstance(c.data, bytearray) for c in chunks] == [True, False] * 3  # big rows: psycopg's buffer
    assert [len(c.data) for c in chunks if c.rows == 1] == [len(f"{i}\t".encode()) + 5001 for i in (3, 6, 9)]


@pytest.mark.parametrize("codec", ["zstd", "gzip", "lz4", "none"])
def test_a_row_bigger_than_a_chunk_passes_every_codec_intact(codec, conn, schema, store, s3_client, bucket):
    """Rows over the 4 MiB chunk size go to the compressor as psycopg's own buffer (a memoryview)."""
    conn.execute(sql.SQL("CREATE TABLE {}.big (at date, id int, v text)").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("INSERT INTO {}.big SELECT %s, i, repeat(md5(i::text), 1 + (i %% 2) * 200000) "
                         "FROM generate_series(1, 4) AS i").format(sql.Identifier(schema)), [DAY])
    spec = TableSpec(name=f"{schema}.big", day_column="at", start_date=DAY, format="csv", compression=codec)
    result = archive_partition(conn, spec, DAY, store)
    body = decompress(download(s3_client, bucket, result.key), codec)
    rows = pacsv.read_csv(io.BytesIO(body), read_options=pacsv.ReadOptions(block_size=32 << 20),
                          parse_options=pacsv.ParseOptions(newlines_in_values=True)).to_pylist()
    expected = conn.execute(sql.SQL("SELECT v FROM {}.big ORDER BY id").format(sql.Identifier(schema))).fetchall()
    assert [r["v"] for r in sorted(rows, key=lambda r: int(r["id"]))] == [e[0] for e in expected]
    assert len(expected[0][0]) == 32 * 200001 > 4 << 20
