"""The read path on real PostgreSQL and S3 over HTTP: archive a day of every type and hard value,
load it back with load_into / restore_day, and prove it equal with PostgreSQL's own fingerprint."""

from __future__ import annotations

import datetime as dt
import json

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core import fingerprint
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline.core.manifest import decode_manifest, encode_manifest
from archive_pipeline.core.restore import (
    ArchiveCorruptError,
    FingerprintMismatchError,
    RestoreConflictError,
    RestoreError,
    load_into,
    restore_archive,
    restore_day,
    restore_days,
)
from archive_pipeline.core.source import day_filter, describe_table

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
    "tm": ("time", ["'13:14:15.161718'", "NULL", "'00:00:00'", "'23:59:59.999999'", "'12:00:00.5'",
                    "'00:00:00.000001'"]),
    "iv": ("interval", ["'1 year 2 mons 3 days 04:05:06.789'", "NULL", "'-1 year -2 mons +3 days -04:05:06.000007'",
                        "'0'", "'-0.000001 sec'",
                        "'178956970 years 7 mons 2147483647 days 2562047:00:54.775807'"]),
    "u": ("uuid", ["'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", "NULL", "'00000000-0000-0000-0000-000000000000'",
                   "'ffffffff-ffff-ffff-ffff-ffffffffffff'", "'0123abcd-0000-0000-0000-0000000000ff'", "NULL"]),
    "t": ("text", [r"E'back\\slash \"quote\" CR\r LF\n tab\t end'", "NULL", "''",
                   "'ünïcödé ☃ 𝄞 \u2028 line-sep'",
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
    "da": ("date[]", ["'{2024-03-10,NULL,0044-03-15 BC}'", "NULL", "'{}'", "'{1970-01-01}'",
                      "'{12345-06-07,infinity,-infinity}'",
                      "'{}'"]),
    "tza": ("timestamptz[]", ["'{\"2024-03-10 01:02:03.456789+00\",NULL}'", "NULL", "'{}'",
                              "'{\"1900-01-01 00:00:00+00\"}'", "'{infinity,-infinity,NULL}'", "'{}'"]),
    "ba": ("bytea[]", ["ARRAY['\\x00'::bytea, NULL, '\\x'::bytea, '\\x5c22'::bytea]", "NULL", "'{}'", "'{}'",
                       "'{}'", "'{}'"]),
    "ua": ("uuid[]", ["'{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11,NULL}'", "NULL", "'{}'", "'{}'", "'{}'", "'{}'"]),
    "ba2": ("boolean[]", ["'{t,f,NULL}'", "NULL", "'{}'", "'{t}'", "'{}'", "'{}'"]),
    "m": ("{s}.mood", ["'happy'", "NULL", "'sad'", "'happy'", "'sad'", "'sad'"]),
    "mna": ("money[]", ["'{1.50,-0.01,NULL}'", "NULL", "'{}'", "'{92233720368547758.07}'", "'{0}'", "'{}'"]),
    "ma": ("{s}.mood[]", ["'{happy,NULL,sad}'", "NULL", "'{}'", "'{sad}'", "'{}'", "'{happy}'"]),
    "mn": ("money", ["12.34", "NULL", "-0.01", "92233720368547758.07", "0", "-92233720368547758.08"]),
    "Spaced Col": ("inet", ["'10.0.0.1/8'", "NULL", "'::1'", "'192.168.0.1'", "'10.1.2.3/32'", "NULL"]),
    "comp": ("{s}.pair", ["ROW(1, 'x,\"y\"')", "NULL", "ROW(2, '')", "ROW(3, E'back\\\\slash')", "ROW(NULL, 'a')",
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
    schema_sql = sql.Identifier(schema).as_string(conn)
    col_defs = [sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(t.replace("{s}", schema_sql)))
                for name, (t, _) in columns.items()]
    if primary_key:
        col_defs.append(sql.SQL("PRIMARY KEY ({})").format(sql.Identifier(primary_key)))
    conn.execute(sql.SQL("CREATE TABLE {} ({})").format(ident, sql.SQL(", ").join(col_defs)))
    if rows:
        count = len(next(iter(columns.values()))[1])
        for row in range(count):
            values = sql.SQL(", ").join(sql.SQL(v[1][row].replace("{s}", schema_sql)) for v in columns.values())
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


# --- restore_day: into a new table, an existing one, the original partition; conflicts; damage ------------

def _column_types(conn: psycopg.Connection, qualified: str) -> list[tuple[str, str, bool]]:
    return [(c.name, c.type_name, c.not_null) for c in describe_table(conn, qualified, None).columns]


@pytest.mark.parametrize(("fmt", "codec"), [("jsonl", "zstd"), ("csv", "gzip"), ("parquet", "snappy")])
def test_restore_day_into_a_new_table_is_proven_by_fingerprint(fmt, codec, conn, hard_table, schema, store, temp_dir):
    spec = TableSpec(name=hard_table, day_column="Day At", start_date=DAY, format=fmt, compression=codec)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    target = f"{schema}.Restored {fmt}"
    result = restore_day(conn, store, spec, DAY, into="new", target=target, temp_dir=temp_dir)
    source = source_fingerprint(conn, hard_table, DAY)
    assert result.fingerprint_checked and result.fingerprint == str(source)
    assert (result.rows, result.inserted, result.target, result.created) == (6, 6, target, (target,))
    assert "equals the manifest's" in result.check and result.seconds > 0
    assert table_fingerprint(conn, schema, f"Restored {fmt}") == source
    assert _column_types(conn, target) == _column_types(conn, hard_table)  # types from the table definition
    assert list(temp_dir.iterdir()) == []  # the downloaded archive is removed


def test_restore_into_an_existing_empty_table(conn, hard_table, schema, store, temp_dir):
    spec = TableSpec(name=hard_table, day_column="Day At", start_date=DAY, format="csv", compression="lz4")
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {})").format(sql.Identifier(schema, "copy"),
                                                               sql.Identifier(SCHEMA_NAME, TABLE_NAME)))
    result = restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.copy")
    assert result.fingerprint_checked and result.created == () and result.rows == 6
    assert table_fingerprint(conn, schema, "copy") == source_fingerprint(conn, hard_table, DAY)
    with pytest.raises(RestoreError, match="does not exist"):
        restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.nothing_here")


@pytest.fixture
def events(conn, schema):
    """A declaratively partitioned events table with a primary key, two days of 500 rows."""
    create_sample_events(conn, [DAY, DAY + dt.timedelta(days=1)], 500, schema=schema)
    conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (id, created_at)").format(sql.Identifier(schema, "events")))
    return TableSpec(name=f"{schema}.events", day_column="created_at", start_date=DAY,
                     partitioning={"mode": "declarative"}, format="parquet", compression="zstd")


def _day_fingerprint(conn, spec: TableSpec, day: dt.date) -> fingerprint.Fingerprint:
    table = describe_table(conn, spec.name, spec.day_column)
    return fingerprint.compute(conn, table.identifier, table.columns, day_filter(table, day))


def test_restore_original_recreates_a_dropped_partition(conn, schema, events, store, temp_dir):
    archived = archive_partition(conn, events, DAY, store, temp_dir=temp_dir)
    before = _day_fingerprint(conn, events, DAY)
    bound = "SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE oid = %s::regclass"
    child = sql.Identifier(schema, f"events_{DAY:%Y%m%d}").as_string(conn)
    recorded_bound = conn.execute(bound, (child,)).fetchone()[0]
    conn.execute(f"DROP TABLE {child}")
    assert _day_fingerprint(conn, events, DAY).rows == 0
    result = restore_day(conn, store, events, DAY, into="original", temp_dir=temp_dir)
    assert result.created == (f"{schema}.events_{DAY:%Y%m%d}",) and result.target == events.name
    assert result.fingerprint_checked and result.fingerprint == archived.fingerprint == str(before)
    assert conn.execute(bound, (child,)).fetchone()[0] == recorded_bound  # attached with its bound
    assert _day_fingerprint(conn, events, DAY) == before
    assert _day_fingerprint(conn, events, DAY + dt.timedelta(days=1)).rows == 500  # the other day untouched


def test_original_refuses_a_detached_partition_that_may_still_hold_the_day(conn, schema, events, store, temp_dir):
    archive_partition(conn, events, DAY, store, temp_dir=temp_dir)
    child = sql.Identifier(schema, f"events_{DAY:%Y%m%d}")
    conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(sql.Identifier(schema, "events"), child))
    with pytest.raises(RestoreError, match="exists but is not attached .*ATTACH PARTITION"):
        restore_day(conn, store, events, DAY, into="original", temp_dir=temp_dir)
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(child)).fetchone()[0] == 500


def test_conflict_policies(conn, schema, events, store, temp_dir):
    archive_partition(conn, events, DAY, store, temp_dir=temp_dir)
    before = _day_fingerprint(conn, events, DAY)
    # the day holds exactly its archived rows (restored before, or never removed): nothing to load, nothing refused
    done = restore_day(conn, store, events, DAY, into="original", on_conflict="fail", temp_dir=temp_dir)
    assert (done.inserted, done.check) == (0, f"already restored: {events.name} holds exactly its archived rows")
    conn.execute(sql.SQL("DELETE FROM {} WHERE id % 5 = 0 AND created_at < {}").format(
        sql.Identifier(schema, "events"), sql.Literal(dt.datetime(2024, 3, 11, tzinfo=dt.UTC))))
    partial = _day_fingerprint(conn, events, DAY)
    assert partial.rows == 400
    with pytest.raises(RestoreConflictError, match="already exist in .*on_conflict='skip'") as failure:
        restore_day(conn, store, events, DAY, into="original", on_conflict="fail", temp_dir=temp_dir)
    assert failure.value.table == events.name and failure.value.day == DAY.isoformat()
    assert _day_fingerprint(conn, events, DAY) == partial  # nothing half restored
    result = restore_day(conn, store, events, DAY, into="original", on_conflict="skip", temp_dir=temp_dir)
    assert (result.rows, result.inserted, result.created) == (500, 100, ())
    assert result.fingerprint_checked and _day_fingerprint(conn, events, DAY) == before


def test_skip_with_a_changed_row_in_the_target_is_rolled_back(conn, schema, events, store, temp_dir):
    archive_partition(conn, events, DAY, store, temp_dir=temp_dir)
    conn.execute(sql.SQL("UPDATE {} SET user_id = -1 WHERE id = 7").format(sql.Identifier(schema, "events")))
    conn.execute(sql.SQL("DELETE FROM {} WHERE id = 8").format(sql.Identifier(schema, "events")))
    with pytest.raises(FingerprintMismatchError, match="rolled back"):
        restore_day(conn, store, events, DAY, into="original", on_conflict="skip", temp_dir=temp_dir)
    assert _day_fingerprint(conn, events, DAY).rows == 499  # the skipped insert of id 8 was rolled back too


def test_corrupted_archive_is_refused_before_loading(conn, schema, events, store, s3_client, bucket, temp_dir):
    archived = archive_partition(conn, events, DAY, store, temp_dir=temp_dir)
    body = bytearray(s3_client.get_object(Bucket=bucket, Key=archived.key)["Body"].read())
    body[len(body) // 2] ^= 0x01
    s3_client.put_object(Bucket=bucket, Key=archived.key, Body=bytes(body))
    with pytest.raises(ArchiveCorruptError, match="is damaged: .* MD5 .*nothing was loaded") as failure:
        restore_day(conn, store, events, DAY, into="new", target=f"{schema}.restored", temp_dir=temp_dir)
    assert failure.value.retryable is False  # damaged in the store: trying again cannot help
    s3_client.put_object(Bucket=bucket, Key=archived.key, Body=bytes(body[:-1]))
    with pytest.raises(ArchiveCorruptError, match="is damaged: the store holds .* bytes, expected"):
        restore_day(conn, store, events, DAY, into="new", target=f"{schema}.restored", temp_dir=temp_dir)
    assert conn.execute("SELECT to_regclass(%s)", (f"{schema}.restored",)).fetchone()[0] is None
    assert list(temp_dir.iterdir()) == []


def test_tampered_but_decodable_archive_is_rolled_back(conn, schema, events, store, s3_client, bucket, temp_dir):
    """An object that decodes but holds other rows, with a manifest whose MD5 and size match it."""
    spec = events.model_copy(update={"format": "csv", "compression": "none"})
    archived = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    body = s3_client.get_object(Bucket=bucket, Key=archived.key)["Body"].read()
    lines = body.split(b"\n")
    fields = lines[5].split(b",")
    fields[2] = str(int(fields[2]) + 1).encode()  # user_id of one row
    lines[5] = b",".join(fields)
    tampered = b"\n".join(lines)
    s3_client.put_object(Bucket=bucket, Key=archived.key, Body=tampered)
    manifest = decode_manifest(s3_client.get_object(Bucket=bucket, Key=archived.manifest_key)["Body"].read())
    import hashlib

    manifest["object"].update(bytes=len(tampered), md5=hashlib.md5(tampered).hexdigest())
    manifest.pop("manifest_sha256")
    s3_client.put_object(Bucket=bucket, Key=archived.manifest_key, Body=encode_manifest(manifest))
    with pytest.raises(FingerprintMismatchError) as failure:
        restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.restored", temp_dir=temp_dir)
    message = str(failure.value)
    assert archived.fingerprint in message and "rolled back" in message
    assert message.count("row-hash-sum-v6:500:") == 2  # both fingerprints, same row count
    assert conn.execute("SELECT to_regclass(%s)", (f"{schema}.restored",)).fetchone()[0] is None


def test_version_1_manifest_restores_with_row_count_check(conn, schema, events, store, s3_client, bucket, temp_dir):
    archived = archive_partition(conn, events, DAY, store, temp_dir=temp_dir)
    manifest = decode_manifest(s3_client.get_object(Bucket=bucket, Key=archived.manifest_key)["Body"].read())
    v1 = {k: v for k, v in manifest.items() if k not in ("fingerprint", "table_definition", "manifest_sha256",
                                                         "empty", "generation", "exact")}
    v1["manifest_version"] = 1
    v1["columns"] = [{k: c[k] for k in ("name", "pg_type", "output_type", "nullable")} for c in manifest["columns"]]
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {})").format(sql.Identifier(schema, "copy"),
                                                               sql.Identifier(schema, "events")))
    result = restore_archive(conn, store, v1, into="existing", target=f"{schema}.copy", temp_dir=temp_dir)
    assert not result.fingerprint_checked and result.fingerprint is None and result.rows == 500
    assert result.check.startswith("row count only") and "version 1" in result.check
    copy = describe_table(conn, f"{schema}.copy", None)
    assert fingerprint.compute(conn, copy.identifier, copy.columns) == _day_fingerprint(conn, events, DAY)
    # a new table from a version 1 manifest: columns, types and NOT NULL from columns[]
    result = restore_archive(conn, store, v1, into="new", target=f"{schema}.fresh", temp_dir=temp_dir)
    assert result.rows == 500 and _column_types(conn, f"{schema}.fresh") == _column_types(conn, events.name)


def test_restore_a_range_and_an_empty_day(conn, schema, store, temp_dir):
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at date NOT NULL, note text)").format(
        sql.Identifier(schema, "log")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, {} + (g % 3) * 2, 'n' || g FROM generate_series(1, 30) g").format(
        sql.Identifier(schema, "log"), sql.Literal(DAY)))
    spec = TableSpec(name=f"{schema}.log", day_column="at", start_date=DAY, format="jsonl", compression="gzip")
    days = [DAY + dt.timedelta(days=i) for i in range(5)]  # rows on days 0, 2, 4; days 1 and 3 are empty
    for day in days:
        archive_partition(conn, spec, day, store, temp_dir=temp_dir)
    restored = restore_days(conn, store, spec, DAY - dt.timedelta(days=1), days[-1], into="new",
                            target=f"{schema}.log_back", temp_dir=temp_dir)
    assert restored.missing == (DAY - dt.timedelta(days=1),)
    assert [r.rows for r in restored.results] == [10, 0, 10, 0, 10] and restored.rows == 30
    assert all(r.fingerprint_checked for r in restored.results)
    assert restored.results[0].created == (f"{schema}.log_back",)
    assert table_fingerprint(conn, schema, "log_back") == table_fingerprint(conn, schema, "log")
    assert conn.execute("SELECT count(*) FROM pg_index WHERE indrelid = %s::regclass AND indisprimary",
                        (f"{schema}.log_back",)).fetchone()[0] == 1


# Values only the text formats hold (Parquet refuses them by design: README type table).
TEXT_ONLY_COLUMNS = {
    "id": ("int", ["1", "2", "3"]),
    "at": ("date", ["'2024-03-10'", "'2024-03-10'", "'2024-03-10'"]),
    "tm": ("time", ["'24:00:00'", "NULL", "'00:00:00'"]),
    "grid": ("int[]", ["'{{1,2},{3,NULL}}'", "'[0:2]={1,2,3}'", "'[2:3][1:1]={{1},{2}}'"]),
    "tags": ("text[]", ["'[0:1]={\"a,b\",NULL}'", "'{{x,y},{\"\\\\\",\"\"}}'", "'{}'"]),
    "pair": ("{s}.pair", ["ROW(NULL, 'y')", "ROW(NULL, NULL)", "ROW(1, NULL)"]),
    "pairs": ("{s}.pair[]", ["ARRAY[ROW(NULL, 'y')::{s}.pair, NULL]", "'{}'", "NULL"]),
    "j": ("json", ["'{\"b\": 1, \"a\": 2, \"a\": 3}'", "'[1,  2]'", "'1.10'"]),
    "ja": ("json[]", ["ARRAY['null'::json, NULL]", "'{}'", "ARRAY['{\"k\": 1}'::json]"]),
    "ts": ("timestamp", ["'294276-12-31 23:59:59.999999'", "'4713-01-01 00:00:00 BC'", "NULL"]),
    "iv": ("interval", ["'2562047788:00:54.775807'", "'-2562047788:00:54.775807'", "NULL"]),
    "n2": ("numeric(10,2)", ["'NaN'", "1.50", "NULL"]),
}
# CSV keeps these too; JSONL refuses a JSON null (it would read back as SQL NULL) and cannot keep a
# line break between JSON tokens or white space around a json value (test below).
CSV_ONLY_COLUMNS = {
    "jn": ("json", ["'null'", "'{\"multi\":\n  \"line\"}'", "'  [1,2]  '"]),
    "jbn": ("jsonb", ["'null'", "NULL", "'[null]'"]),
}


@pytest.fixture
def text_only(conn, schema):
    conn.execute(sql.SQL("CREATE TYPE {}.pair AS (a int, b text)").format(sql.Identifier(schema)))
    _create_table(conn, schema, "text_only", TEXT_ONLY_COLUMNS)
    _create_table(conn, schema, "csv_only", {**TEXT_ONLY_COLUMNS, **CSV_ONLY_COLUMNS})
    return schema


@pytest.mark.parametrize(("fmt", "table"), [("csv", "csv_only"), ("jsonl", "text_only")])
def test_text_formats_restore_values_parquet_refuses(fmt, table, conn, schema, text_only, store, temp_dir):
    spec = TableSpec(name=f"{schema}.{table}", day_column="at", start_date=DAY, format=fmt, compression="zstd")
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    result = restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    assert result.fingerprint_checked and result.rows == 3
    assert table_fingerprint(conn, schema, "back") == table_fingerprint(conn, schema, table)


@pytest.mark.parametrize("doc", ['{"multi":\n  "line"}', '  [1,2] '])
def test_a_lossy_jsonl_column_is_never_restored_silently(doc, conn, schema, store, temp_dir):
    """JSONL cannot keep a json value's line breaks (the manifest marks the column inexact), nor white
    space around it (json_populate_record reads the value without it): the restore notices through
    the fingerprint and rolls back."""
    conn.execute(sql.SQL("CREATE TABLE {} (at date, doc json)").format(sql.Identifier(schema, "docs")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES ({}, {})").format(
        sql.Identifier(schema, "docs"), sql.Literal(DAY), sql.Literal(doc)))
    spec = TableSpec(name=f"{schema}.docs", day_column="at", start_date=DAY, format="jsonl", compression="none")
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    with pytest.raises(FingerprintMismatchError, match="rolled back"):
        restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.docs_back", temp_dir=temp_dir)
    assert conn.execute("SELECT to_regclass(%s)", (f"{schema}.docs_back",)).fetchone()[0] is None


def test_restore_original_recreates_a_dropped_day_table_in_naming_mode(conn, schema, store, temp_dir):
    day_table = sql.Identifier(schema, f"clicks_{DAY:%Y%m%d}")
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, url text NOT NULL, at timestamptz)").format(
        day_table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '/p/' || g, {} FROM generate_series(1, 50) g").format(
        day_table, sql.Literal(dt.datetime(2024, 3, 10, 12, tzinfo=dt.UTC))))
    spec = TableSpec(name=f"{schema}.clicks", start_date=DAY, format="csv", compression="gzip",
                     partitioning={"mode": "naming", "pattern": "clicks_%Y%m%d"})
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    before = table_fingerprint(conn, schema, f"clicks_{DAY:%Y%m%d}")
    conn.execute(sql.SQL("DROP TABLE {}").format(day_table))
    result = restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir)
    assert result.created == (f"{schema}.clicks_{DAY:%Y%m%d}",) and result.fingerprint_checked
    assert table_fingerprint(conn, schema, f"clicks_{DAY:%Y%m%d}") == before
    assert _column_types(conn, f"{schema}.clicks_{DAY:%Y%m%d}")[1] == ("url", "text", True)  # NOT NULL kept


def test_a_manifest_cannot_put_sql_into_ddl(conn, schema, events, store, temp_dir):
    """Type names and partition bounds come from the manifest, i.e. from the bucket: they reach DDL
    only as PostgreSQL's type-name parser accepts them, or rebuilt from their literals."""
    from archive_pipeline.core.restore import find_manifest, partition_bound

    archive_partition(conn, events, DAY, store, temp_dir=temp_dir)
    manifest = find_manifest(store, events, DAY)
    conn.execute(sql.SQL("CREATE TABLE {} (x int)").format(sql.Identifier(schema, "victim")))
    bad = json.loads(json.dumps(manifest))
    bad["table_definition"]["columns"][0]["type"] = f"int); DROP TABLE {schema}.victim; CREATE TABLE x (y int"
    with pytest.raises(RestoreError, match="is not a type name"):
        restore_archive(conn, store, bad, into="new", target=f"{schema}.restored", temp_dir=temp_dir)
    bad = json.loads(json.dumps(manifest))
    bad["table_definition"]["partition"]["bound"] = (f"FOR VALUES FROM ('2024-03-10') TO ('2024-03-11'); "
                                                     f"DROP TABLE {schema}.victim; --")
    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, f"events_{DAY:%Y%m%d}")))
    with pytest.raises(RestoreError, match="not a range, list or DEFAULT bound"):
        restore_archive(conn, store, bad, into="original", temp_dir=temp_dir)
    assert conn.execute("SELECT to_regclass(%s)", (f"{schema}.victim",)).fetchone()[0] is not None
    literal = partition_bound("FOR VALUES FROM ('it''s') TO (MAXVALUE)").as_string(conn)
    assert literal == "FOR VALUES FROM ('it''s') TO (MAXVALUE)"


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_load_into_names_an_archive_that_does_not_decode(fmt, conn, schema, store, s3_client, bucket, temp_dir,
                                                          tmp_path):
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, note text)").format(sql.Identifier(schema, "small")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, {}, 'a'), (2, {}, 'b')").format(
        sql.Identifier(schema, "small"), sql.Literal(DAY), sql.Literal(DAY)))
    spec = TableSpec(name=f"{schema}.small", day_column="at", start_date=DAY, format=fmt, compression="none")
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    manifest, path = download_archive(s3_client, bucket, result.manifest_key, tmp_path)
    body = bytearray(open(path, "rb").read())
    if fmt == "parquet":  # the footer: bytes inside an uncompressed page would just be other values
        body[-4:] = b"PAR0"
    else:
        body[len(body) // 3: len(body) // 3 + 4] = b"\x00\x7f{,"  # no longer the format's syntax
    open(path, "wb").write(bytes(body))
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {})").format(sql.Identifier(schema, "into"),
                                                               sql.Identifier(schema, "small")))
    with pytest.raises(ArchiveCorruptError, match=f"{schema}.small for 2024-03-10 \\({fmt}/none, .*does not load"):
        load_into(conn, path, manifest, sql.Identifier(schema, "into"))
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "into"))).fetchone()[0] == 0


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_load_into_reads_utf8_whatever_the_session_encoding(fmt, conn, schema, store, s3_client, bucket, temp_dir,
                                                            tmp_path):
    conn.execute(sql.SQL("CREATE TABLE {} (at date, note text, price money)").format(sql.Identifier(schema, "u")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES ({}, 'ü ☃ 𝄞', 1234.56)").format(
        sql.Identifier(schema, "u"), sql.Literal(DAY)))
    spec = TableSpec(name=f"{schema}.u", day_column="at", start_date=DAY, format=fmt, compression="gzip"
                     if fmt != "parquet" else "zstd")
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    manifest, path = download_archive(s3_client, bucket, result.manifest_key, tmp_path)
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {})").format(sql.Identifier(schema, "u2"), sql.Identifier(schema, "u")))
    conn.execute("SET client_encoding = 'LATIN1'")
    try:
        with conn.transaction():
            assert load_into(conn, path, manifest, sql.Identifier(schema, "u2")) == 1
            assert conn.execute("SHOW client_encoding").fetchone()[0] == "LATIN1"  # put back
    finally:
        conn.execute("SET client_encoding = 'UTF8'")
    assert table_fingerprint(conn, schema, "u2") == table_fingerprint(conn, schema, "u")


def test_a_damaged_manifest_or_missing_object_is_named(conn, schema, events, store, s3_client, bucket, temp_dir):
    archived = archive_partition(conn, events, DAY, store, temp_dir=temp_dir)
    s3_client.delete_object(Bucket=bucket, Key=archived.key)
    with pytest.raises(RestoreError, match="is missing: .* does not exist although its manifest does"):
        restore_day(conn, store, events, DAY, into="new", target=f"{schema}.restored", temp_dir=temp_dir)
    raw = s3_client.get_object(Bucket=bucket, Key=archived.manifest_key)["Body"].read()
    s3_client.put_object(Bucket=bucket, Key=archived.manifest_key, Body=raw.replace(b'"rows": 500', b'"rows": 501'))
    with pytest.raises(RestoreError, match="cannot be trusted .*manifest_sha256"):
        restore_day(conn, store, events, DAY, into="new", target=f"{schema}.restored", temp_dir=temp_dir)
    with pytest.raises(RestoreError, match="has no archive for 2024-03-12"):
        restore_day(conn, store, events, DAY + dt.timedelta(days=2), into="new", target=f"{schema}.restored")
    assert conn.execute("SELECT to_regclass(%s)", (f"{schema}.restored",)).fetchone()[0] is None


# --- what fails on the way to the load is named for what it is (found by a fault hunt) -----------------------

@pytest.fixture
def bulky(conn, schema, store, temp_dir):
    """A day whose object (about 700 KB) does not fit a 256 KiB temp dir, archived."""
    spec = TableSpec(name=f"{schema}.bulky", day_column="at", start_date=DAY, format="csv", compression="none")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at date, body text)").format(
        sql.Identifier(schema, "bulky")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, {}, repeat(md5(g::text), 10) FROM generate_series(1, 2000) g"
                         ).format(sql.Identifier(schema, "bulky"), sql.Literal(DAY)))
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    assert result.bytes > 512 * 1024
    return spec


def test_a_full_temp_dir_is_a_local_error_not_the_store_or_a_damaged_archive(conn, schema, bulky, store, tmp_path,
                                                                               temp_dir):
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline_tests.helpers import tiny_tmpfs

    with tiny_tmpfs(tmp_path / "tiny") as tiny:
        with pytest.raises(ArchiveError) as caught:
            restore_day(conn, store, bulky, DAY, into="new", target=f"{schema}.restored", temp_dir=tiny)
        assert list(tiny.iterdir()) == []  # the partial download is gone
    error = caught.value
    text = str(error)
    assert not isinstance(error, ArchiveCorruptError) and not error.retryable
    assert type(error).__name__ == "LocalFileError" and (error.table, error.day) == (bulky.name, "2024-03-10")
    assert f"the temp directory {tiny} is full" in text and "No space left on device" in text
    assert "temp_dir" in text and "nothing was loaded" in text
    assert "bucket" not in text and "credentials" not in text and "damaged" not in text
    assert conn.execute("SELECT to_regclass(%s)", (f"{schema}.restored",)).fetchone()[0] is None
    assert restore_day(conn, store, bulky, DAY, into="new", target=f"{schema}.restored",
                       temp_dir=temp_dir).rows == 2000  # with room, the same restore goes through


@pytest.mark.parametrize(("fault", "retryable"), [
    ({"action": "error", "status": 403, "code": "AccessDenied"}, False),
    ({"action": "error", "status": 503, "code": "ServiceUnavailable"}, True),
    ({"action": "flip_response_byte"}, True),
], ids=["AccessDenied", "503", "byte flipped in transit"])
def test_a_download_that_fails_is_not_a_damaged_archive(conn, schema, events, store, s3, bucket, temp_dir, fault,
                                                        retryable):
    from archive_pipeline.core.store import S3Store
    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

    archived = archive_partition(conn, events, DAY, store, temp_dir=temp_dir)
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="GET", path=r"\.parquet$", times=None, **fault))
        faulty = S3Store(proxy.client(max_attempts=1), bucket, prefix="archive")
        with pytest.raises(RestoreError) as caught:
            restore_day(conn, faulty, events, DAY, into="new", target=f"{schema}.restored", temp_dir=temp_dir)
    error = caught.value
    assert not isinstance(error, ArchiveCorruptError) and error.retryable is retryable
    assert (error.table, error.day) == (events.name, "2024-03-10")
    assert f"the archive of {events.name} for 2024-03-10 could not be downloaded" in str(error)
    assert "nothing was loaded" in str(error) and "damaged" not in str(error)
    assert conn.execute("SELECT to_regclass(%s)", (f"{schema}.restored",)).fetchone()[0] is None
    assert list(temp_dir.iterdir()) == []
    assert restore_day(conn, store, events, DAY, into="new", target=f"{schema}.restored",
                       temp_dir=temp_dir).rows == archived.rows


# --- the session's settings and the target's computed columns --------------------------------------------------

XML_VALUES = ["'text only'", "'<a/><b/>'", "'<doc><c x=\"1\">ü</c></doc>'", "''", "NULL"]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_xml_fragments_restore_whatever_the_sessions_xmloption(fmt, pg, conn, schema, store, temp_dir):
    """Under ``xmloption = document`` a fragment is no xml value; the load reads every value as content."""
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, x xml)").format(sql.Identifier(schema, "x")))
    for number, value in enumerate(XML_VALUES):
        conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s, {})").format(sql.Identifier(schema, "x"), sql.SQL(value)),
                     (number, DAY))
    spec = TableSpec(name=f"{schema}.x", day_column="at", start_date=DAY, format=fmt,
                     compression="none" if fmt != "parquet" else "zstd")
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    with pg.connect() as restoring:
        restoring.execute("SET xmloption = document")
        restored = restore_day(restoring, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
        assert restored.rows == len(XML_VALUES) and restored.fingerprint_checked
        assert restoring.execute("SHOW xmloption").fetchone()[0] == "document"  # put back afterwards
        restoring.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(schema, "x")))
        again = restore_day(restoring, store, spec, DAY, into="original", temp_dir=temp_dir)
        assert again.rows == len(XML_VALUES) and restoring.execute("SHOW xmloption").fetchone()[0] == "document"
    assert table_fingerprint(conn, schema, "back") == table_fingerprint(conn, schema, "x")
    assert conn.execute(sql.SQL("SELECT array_agg(x::text ORDER BY id) FROM {}").format(
        sql.Identifier(schema, "x"))).fetchone()[0] == ["text only", "<a/><b/>", '<doc><c x="1">ü</c></doc>', "", None]


@pytest.fixture
def computed(conn, schema):
    """A table with a GENERATED ALWAYS identity and a stored generated column, two days of rows."""
    conn.execute(sql.SQL("CREATE TABLE {} (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, at date NOT NULL, "
                         "price numeric(8,2), qty int, total numeric GENERATED ALWAYS AS (price * qty) STORED)").format(
        sql.Identifier(schema, "sales")))
    conn.execute(sql.SQL("INSERT INTO {} (at, price, qty) SELECT {} + (g % 2), g * 1.25, g % 7 "
                         "FROM generate_series(1, 40) g").format(sql.Identifier(schema, "sales"), sql.Literal(DAY)))
    return sql.Identifier(schema, "sales")


def _rows_of_day(conn, table: sql.Identifier) -> list[tuple]:
    return conn.execute(sql.SQL("SELECT * FROM {} WHERE at = %s ORDER BY id").format(table), (DAY,)).fetchall()


@pytest.mark.parametrize("on_conflict", ["fail", "skip"])
@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_restore_into_the_original_table_with_identity_and_generated_columns(fmt, on_conflict, conn, schema, computed,
                                                                            store, temp_dir):
    """COPY writes no generated column and an INSERT no GENERATED ALWAYS identity without OVERRIDING
    SYSTEM VALUE: the generated values are left to the table, and the fingerprint proves them equal."""
    spec = TableSpec(name=f"{schema}.sales", day_column="at", start_date=DAY, format=fmt,
                     compression="gzip" if fmt != "parquet" else "zstd")
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    before = _rows_of_day(conn, computed)
    assert len(before) == 20 and all(row[4] is not None for row in before if row[3] is not None)
    conn.execute(sql.SQL("DELETE FROM {} WHERE at = %s").format(computed), (DAY,))
    restored = restore_day(conn, store, spec, DAY, into="original", on_conflict=on_conflict, temp_dir=temp_dir)
    assert (restored.rows, restored.inserted, restored.fingerprint_checked) == (20, 20, True)
    assert _rows_of_day(conn, computed) == before  # ids as archived, totals computed to the archived values
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(computed)).fetchone()[0] == 40


def test_a_generated_column_computed_otherwise_now_rolls_the_restore_back(conn, schema, computed, store, temp_dir):
    spec = TableSpec(name=f"{schema}.sales", day_column="at", start_date=DAY, format="csv", compression="none")
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(sql.SQL("DELETE FROM {} WHERE at = %s").format(computed), (DAY,))
    conn.execute(sql.SQL("ALTER TABLE {t} DROP COLUMN total, ADD COLUMN total numeric "
                         "GENERATED ALWAYS AS (price * qty + 1) STORED").format(t=computed))
    with pytest.raises(FingerprintMismatchError, match=r"computes its generated column\(s\) \['total'\] otherwise"):
        restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir)
    assert _rows_of_day(conn, computed) == []  # rolled back


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_restore_into_a_table_with_an_always_identity_writes_the_archived_ids(fmt, conn, schema, store, temp_dir):
    """No generated column: loaded straight into the table (JSONL's INSERT with OVERRIDING SYSTEM VALUE)."""
    table = sql.Identifier(schema, "ids")
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, at date, note text)"
                         ).format(table))
    conn.execute(sql.SQL("INSERT INTO {} (at, note) SELECT {}, 'n' || g FROM generate_series(1, 30) g").format(
        table, sql.Literal(DAY)))
    spec = TableSpec(name=f"{schema}.ids", day_column="at", start_date=DAY, format=fmt,
                     compression="none" if fmt != "parquet" else "zstd")
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    before = conn.execute(sql.SQL("SELECT * FROM {} ORDER BY id").format(table)).fetchall()
    conn.execute(sql.SQL("DELETE FROM {} WHERE id % 3 = 0").format(table))
    conn.execute(sql.SQL("INSERT INTO {} (at, note) VALUES ({}, 'later')").format(
        table, sql.Literal(DAY + dt.timedelta(days=1))))
    restore_day(conn, store, spec, DAY, into="original", on_conflict="skip", temp_dir=temp_dir)  # adds ids 3, 6, ...
    assert conn.execute(sql.SQL("SELECT * FROM {} WHERE at = %s ORDER BY id").format(table),
                        (DAY,)).fetchall() == before
    conn.execute(sql.SQL("DELETE FROM {} WHERE at = %s").format(table), (DAY,))
    assert restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir).inserted == 30
    assert conn.execute(sql.SQL("SELECT * FROM {} WHERE at = %s ORDER BY id").format(table),
                        (DAY,)).fetchall() == before


def test_skip_into_a_table_keyed_only_by_a_deferrable_constraint_is_refused_up_front(conn, schema, events, store,
                                                                                   temp_dir):
    """ON CONFLICT cannot use a deferrable unique constraint to tell existing rows by: such a target is
    refused before anything is read, naming the constraint and the remedy, and keeps its rows."""
    archive_partition(conn, events, DAY, store, temp_dir=temp_dir)
    target = sql.Identifier(schema, "deferred")
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS, "
                         "CONSTRAINT deferred_id UNIQUE (id, created_at) DEFERRABLE)").format(
        target, sql.Identifier(schema, "events")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM {} WHERE id <= 10 AND created_at < %s").format(
        target, sql.Identifier(schema, "events")), (DAY + dt.timedelta(days=1),))
    with pytest.raises(RestoreError, match="deferrable.*deferred_id.*nothing was restored") as failure:
        restore_day(conn, store, events, DAY, into="existing", target=f"{schema}.deferred", on_conflict="skip",
                    temp_dir=temp_dir)
    assert failure.value.day == DAY.isoformat()
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(target)).fetchone()[0] == 10


def test_a_restore_refused_by_the_database_says_to_restore_again(conn, schema, events, store, temp_dir):
    """An error PostgreSQL raises on the load that no rule knows (here a trigger's): the catch-all remedy
    says to restore again, not to archive again."""
    archive_partition(conn, events, DAY, store, temp_dir=temp_dir)
    target = sql.Identifier(schema, "guarded")
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {})").format(target, sql.Identifier(schema, "events")))
    conn.execute(sql.SQL("CREATE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS "
                         "$$BEGIN RAISE EXCEPTION 'no rows here, please'; END$$").format(sql.Identifier(schema, "refuse")))
    conn.execute(sql.SQL("CREATE TRIGGER refuse BEFORE INSERT ON {} FOR EACH ROW EXECUTE FUNCTION {}()").format(
        target, sql.Identifier(schema, "refuse")))
    with pytest.raises(RestoreError, match="(?s)no rows here, please.*nothing was restored") as failure:
        restore_day(conn, store, events, DAY, into="existing", target=f"{schema}.guarded", temp_dir=temp_dir)
    assert failure.value.remedy.endswith("restore again"), failure.value.remedy
