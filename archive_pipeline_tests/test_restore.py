"""The read path on real PostgreSQL and S3 over HTTP: archive a day of every type and hard value,
load it back with load_into / restore_day, and prove it equal with PostgreSQL's own fingerprint."""

from __future__ import annotations

import datetime as dt
import json

import psycopg
import pytest
from psycopg import sql

from archive_pipeline import fingerprint
from archive_pipeline.archive import archive_partition
from archive_pipeline.config import TableSpec
from archive_pipeline.restore import load_into
from archive_pipeline.source import day_filter, describe_table

DAY = dt.date(2024, 3, 10)
SCHEMA_NAME = 'Restore "Mixed" Schema'
TABLE_NAME = "Every Type"

# column name -> (SQL type, values of rows as SQL literals); a type named {s} lives in the schema
HARD_COLUMNS = {
    "id": ("int", ["1", "2", "3", "4", "5", "6"]),
    "Day At": ("timestamptz", ["'2024-03-10 00:00:00+00'", "'2024-03-10 12:00:00+00'",
                               "'2024-03-10 23:59:59.999999+00'", "'2024-03-10 06:00:00+00'",
                               "'2024-03-10 07:00:00+00'", "'2024-03-10 08:00:00+00'"]),
    "i2": ("smallint", ["-32768", "NULL", "0", "32767", "1", "2"]),
    "i8": ("bigint", ["9223372036854775807", "NULL", "-9223372036854775808", "0", "1", "2"]),
    "r": ("real", ["1.5", "NULL", "'NaN'", "'-Infinity'", "'-0'", "3.4028235e38"]),
    "f": ("double precision", ["0.1", "NULL", "'Infinity'", "'NaN'", "'-0'", "5e-324"]),
    "n": ("numeric", ["'123456789012345678901234567890.123456789012'", "NULL", "'NaN'", "'-0.000000000001'",
                      "'Infinity'", "'-Infinity'"]),
    "n2": ("numeric(12,2)", ["1234567890.12", "NULL", "-0.10", "0.00", "0.01", "-9999999999.99"]),
    "n40": ("numeric(40,5)", ["'12345678901234567890123456789012345.12345'", "NULL", "-1.00001", "0",
                              "0.00001", "'-99999999999999999999999999999999999.99999'"]),
    "b": ("boolean", ["true", "NULL", "false", "true", "false", "true"]),
    "d": ("date", ["'2024-03-10'", "NULL", "'infinity'", "'-infinity'", "'0044-03-15 BC'", "'12345-06-07'"]),
    "ts": ("timestamp", ["'2024-03-10 01:02:03.456789'", "NULL", "'-infinity'", "'infinity'",
                         "'0044-03-15 12:30:00.000001 BC'", "'1969-12-31 23:59:59.999999'"]),
    "tz": ("timestamptz", ["'2024-03-10 01:02:03.456789+05:30'", "NULL", "'infinity'", "'-infinity'",
                           "'4713-01-01 00:00:00+00 BC'", "'20000-01-01 00:00:00.5+00'"]),
    "tm": ("time", ["'13:14:15.161718'", "NULL", "'00:00:00'", "'23:59:59.999999'", "'24:00:00'", "'00:00:00.000001'"]),
    "iv": ("interval", ["'1 year 2 mons 3 days 04:05:06.789'", "NULL", "'-1 year -2 mons +3 days -04:05:06.000007'",
                        "'0'", "'-0.000001 sec'",
                        "'178956970 years 7 mons 2147483647 days 2562047:00:54.775807'"]),
    "u": ("uuid", ["'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", "NULL", "'00000000-0000-0000-0000-000000000000'",
                   "'ffffffff-ffff-ffff-ffff-ffffffffffff'", "'0123abcd-0000-0000-0000-0000000000ff'", "NULL"]),
    "t": ("text", [r"E'back\\slash \"quote\" CR\r LF\n tab\t end'", "NULL", "''", "'ünïcödé ☃ 𝄞 \u2028 line-sep'",
                   r"E'\\.'", "'NULL'"]),
    "vc": ("varchar(20)", ["'a,b'", "NULL", "''", "'\"'", "' lead'", "'trail '"]),
    "ch": ("char(3)", ["'ab'", "NULL", "'abc'", "' '", "''", "'x'"]),
    # json text as jsonb prints it: JSONL normalises json through jsonb (README type table)
    "j": ("json", [r"""'{"q": "say \"hi\"\n\\ ü☃ 𝄞", "nested": {"a": [1, null, "x"]}}'""", "NULL", "'[]'",
                   "'\"just a string\"'", "'1.10'", "'{}'"]),
    "jb": ("jsonb", [r"""'{"q": "say \"hi\"", "u": "\u00fc", "n": null, "num": 1.10}'""", "NULL",
                     "'\"just a string\"'", "'{}'", "'[1, [2, {\"k\": \"\\\\\"}]]'", "'-0.0'"]),
    "by": ("bytea", [r"'\x00ff0001'", "NULL", r"'\x'", r"'\x5c0a0d22'", r"'\x00'", r"'\xdeadbeef'"]),
    "ta": ("text[]", ["ARRAY['a', NULL, 'c,d', 'e\"f', '', 'NULL', E'back\\\\slash', '{}', ' sp ']", "NULL", "'{}'",
                      "ARRAY[NULL]::text[]", "ARRAY[E'tab\\there', 'ü']", "'{}'"]),
    "ia": ("int[]", ["'{1,NULL,3}'", "NULL", "'{}'", "'{-1}'", "'{2147483647}'", "'{NULL}'"]),
    "fa": ("float8[]", ["'{NaN,Infinity,-Infinity,-0,0.1}'", "NULL", "'{}'", "'{NULL,1e300}'", "'{1}'", "'{2}'"]),
    "na": ("numeric[]", ["'{1.50,NaN,NULL,-0.000}'", "NULL", "'{}'", "'{1e-20}'", "'{Infinity}'", "'{3}'"]),
    "da": ("date[]", ["'{2024-03-10,NULL,0044-03-15 BC}'", "NULL", "'{}'", "'{1970-01-01}'", "'{12345-06-07}'",
                      "'{}'"]),
    "tza": ("timestamptz[]", ["'{\"2024-03-10 01:02:03.456789+00\",NULL}'", "NULL", "'{}'",
                              "'{\"1900-01-01 00:00:00+00\"}'", "'{}'", "'{}'"]),
    "ba": ("bytea[]", ["ARRAY['\\x00'::bytea, NULL, '\\x'::bytea, '\\x5c22'::bytea]", "NULL", "'{}'", "'{}'",
                       "'{}'", "'{}'"]),
    "ua": ("uuid[]", ["'{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11,NULL}'", "NULL", "'{}'", "'{}'", "'{}'", "'{}'"]),
    "ba2": ("boolean[]", ["'{t,f,NULL}'", "NULL", "'{}'", "'{t}'", "'{}'", "'{}'"]),
    "m": ("{s}.mood", ["'happy'", "NULL", "'sad'", "'happy'", "'sad'", "'sad'"]),
    "mn": ("money", ["12.34", "NULL", "-0.01", "92233720368547758.07", "0", "-92233720368547758.08"]),
    "Spaced Col": ("inet", ["'10.0.0.1/8'", "NULL", "'::1'", "'192.168.0.1'", "'10.1.2.3/32'", "NULL"]),
    "comp": ("{s}.pair", ["ROW(1, 'x,\"y\"')", "NULL", "ROW(2, '')", "ROW(3, E'back\\\\slash')", "ROW(4, 'a')",
                          "NULL"]),
    "rng": ("int4range", ["'[1,5)'", "NULL", "'empty'", "'(,3]'", "'[7,)'", "NULL"]),
    "tt": ("timetz", ["'13:14:15.5+05:30'", "NULL", "'00:00:00-12'", "'24:00:00+00'", "'01:02:03+00'", "NULL"]),
    "MixedCase": ("int", ["1", "NULL", "3", "4", "5", "6"]),
}
FORMAT_CODECS = [("jsonl", c) for c in ("zstd", "gzip", "lz4", "none")] + \
    [("csv", c) for c in ("zstd", "gzip", "lz4", "none")] + \
    [("parquet", c) for c in ("zstd", "snappy", "gzip", "lz4", "none")]


def _create_table(conn: psycopg.Connection, schema: str, table: str, columns: dict, *, primary_key: str | None = None,
                  rows: bool = True) -> sql.Identifier:
    ident = sql.Identifier(schema, table)
    col_defs = [sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(t.replace("{s}", sql.Identifier(schema).as_string(conn))))
                for name, (t, _) in columns.items()]
    if primary_key:
        col_defs.append(sql.SQL("PRIMARY KEY ({})").format(sql.Identifier(primary_key)))
    conn.execute(sql.SQL("CREATE TABLE {} ({})").format(ident, sql.SQL(", ").join(col_defs)))
    if rows:
        count = len(next(iter(columns.values()))[1])
        for row in range(count):
            values = sql.SQL(", ").join(sql.SQL(v[1][row]) for v in columns.values())
            conn.execute(sql.SQL("INSERT INTO {} VALUES ({})").format(ident, values))
    return ident


@pytest.fixture(scope="module")
def hard_table(pg):
    """Created once, read-only afterwards: every type of the README's type table and its hard values."""
    with pg.connect() as conn:
        schema = sql.Identifier(SCHEMA_NAME)
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(schema))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
        conn.execute(sql.SQL("CREATE TYPE {}.mood AS ENUM ('sad', 'happy')").format(schema))
        conn.execute(sql.SQL("CREATE TYPE {}.pair AS (a int, b text)").format(schema))
        _create_table(conn, SCHEMA_NAME, TABLE_NAME, HARD_COLUMNS)
        yield f"{SCHEMA_NAME}.{TABLE_NAME}"
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(schema))


def source_fingerprint(conn: psycopg.Connection, qualified: str, day: dt.date) -> fingerprint.Fingerprint:
    table = describe_table(conn, qualified, "Day At")
    return fingerprint.compute(conn, table.identifier, table.columns, day_filter(table, day))


def table_fingerprint(conn: psycopg.Connection, schema: str, table: str) -> fingerprint.Fingerprint:
    described = describe_table(conn, f"{schema}.{table}", None)
    return fingerprint.compute(conn, described.identifier, described.columns)


def download_archive(s3_client, bucket: str, manifest_key: str, directory) -> tuple[dict, str]:
    manifest = json.loads(s3_client.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    path = directory / "archive.bin"
    path.write_bytes(s3_client.get_object(Bucket=bucket, Key=manifest["object"]["key"])["Body"].read())
    return manifest, str(path)


@pytest.mark.parametrize(("fmt", "codec"), FORMAT_CODECS)
def test_load_into_gives_back_every_value(fmt, codec, conn, hard_table, store, s3_client, bucket, temp_dir, tmp_path):
    spec = TableSpec(name=hard_table, day_column="Day At", start_date=DAY, format=fmt, compression=codec)
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    manifest, path = download_archive(s3_client, bucket, result.manifest_key, tmp_path)
    conn.execute(sql.SQL("CREATE TEMP TABLE loaded (LIKE {})").format(sql.Identifier(SCHEMA_NAME, TABLE_NAME)))
    try:
        rows = load_into(conn, path, manifest, sql.Identifier("loaded"))
        assert rows == result.rows == len(HARD_COLUMNS["id"][1])
        source = source_fingerprint(conn, hard_table, DAY)
        loaded_table = describe_table(conn, f"{_temp_schema(conn)}.loaded", None)
        loaded = fingerprint.compute(conn, sql.Identifier("loaded"), loaded_table.columns)
        assert loaded == source
        assert source.rows == rows
    finally:
        conn.execute("DROP TABLE loaded")


def _temp_schema(conn: psycopg.Connection) -> str:
    return conn.execute("SELECT nspname FROM pg_namespace WHERE oid = pg_my_temp_schema()").fetchone()[0]
