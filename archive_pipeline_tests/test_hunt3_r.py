"""Hunt 3 (r): the full matrix of format x compression x shape of the day, round-tripped end to end:
archive -> deep verification -> restore into a new table -> EXCEPT ALL against the source, and `compare`;
the manifest's rows, bytes, MD5 and exactness records checked against the object itself."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import pytest
from psycopg import sql

from archive_pipeline.core import plan
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.keys import table_day_key
from archive_pipeline.core.restore import restore_day
from archive_pipeline.core.verify import deep_verify, verify_archive
from archive_pipeline_tests.helpers import decompress, download
from archive_pipeline_tests.test_exactness import _hostile_table


def _differences(conn, schema: str, source: str, restored: str, texts: dict[str, str]) -> list[tuple]:
    """The day's rows of one table missing from the other (EXCEPT ALL both ways), compared on each column's
    output text and NULL-ness (``texts``: column -> SQL of it, ``{c}`` the column)."""
    names = [n for (n,) in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
        "ORDER BY attnum", (sql.Identifier(schema, source).as_string(conn),)).fetchall()]
    exprs = sql.SQL(", ").join(
        sql.SQL("{} IS NULL, {}").format(sql.Identifier(n), sql.SQL(texts.get(n, "concat({c})")).format(
            c=sql.Identifier(n))) for n in names)
    a, b, d = sql.Identifier(schema, source), sql.Identifier(schema, restored), sql.Literal(DAY)
    query = sql.SQL("(SELECT 'lost', {e} FROM {a} WHERE at = {d} EXCEPT ALL SELECT 'lost', {e} FROM {b}) UNION ALL "
                    "(SELECT 'added', {e} FROM {b} EXCEPT ALL SELECT 'added', {e} FROM {a} WHERE at = {d})").format(
        e=exprs, a=a, b=b, d=d)
    return conn.execute(query).fetchall()

DAY = dt.date(2024, 3, 10)
FORMATS = ("jsonl", "csv", "parquet")
CODECS = ("zstd", "gzip", "lz4", "none")
MATRIX = [(f, c) for f in FORMATS for c in CODECS]


def _spec(schema: str, table: str, fmt: str, codec: str, **options) -> TableSpec:
    return TableSpec(name=f"{schema}.{table}", day_column="at", start_date=DAY, format=fmt, compression=codec,
                     **options)


def _full(conn, schema, store, s3_client, bucket, temp_dir, table, fmt, codec, texts=None, **options):
    """Archive, deep-verify, restore into a new table, EXCEPT ALL both ways, compare; check the manifest
    against the object. Returns (result, manifest)."""
    spec = _spec(schema, table, fmt, codec, **options)
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    manifest = json.loads(download(s3_client, bucket, result.manifest_key))
    source_rows = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE at = %s").format(
        sql.Identifier(schema, table)), (DAY,)).fetchone()[0]
    assert manifest["rows"] == result.rows == source_rows
    if source_rows:
        body = download(s3_client, bucket, result.key)
        assert manifest["object"]["bytes"] == len(body) == result.bytes
        assert manifest["object"]["md5"] == hashlib.md5(body).hexdigest() == result.md5
        assert manifest["object"]["sha256"] == hashlib.sha256(body).hexdigest()
        if fmt != "parquet":
            plain = decompress(body, codec)
            assert manifest["uncompressed_bytes"] == len(plain)
            assert plain.count(b"\n") >= source_rows
    else:
        assert manifest["empty"] is True and manifest["object"] is None
    assert deep_verify(conn, store, spec, DAY, temp_dir=temp_dir) == []
    expected = {"rows": source_rows, "bytes": manifest["object"]["bytes"] if source_rows else 0,
                "md5": manifest["object"]["md5"] if source_rows else ""}
    assert verify_archive(store, table_day_key(spec, DAY, store.prefix), expected, deep=True) == []
    back = f"{table}_back"
    restored = restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.{back}", temp_dir=temp_dir)
    assert restored.fingerprint_checked and restored.rows == source_rows
    assert _differences(conn, schema, table, back, texts or {}) == []
    if source_rows:
        [c] = plan.compare_days(conn, spec, store, [DAY])
        assert c.result == "equal", c
    return result, manifest


TYPES = """CREATE TYPE {s}.mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN {s}.posint AS int CHECK (VALUE > 0);
CREATE DOMAIN {s}.dbool AS boolean;
CREATE DOMAIN {s}.dinet AS inet;
CREATE TYPE {s}.comp AS (a float8[], r numrange, f float4, m {s}.mood[], t text);"""

MIXED = {
    "i": "int", "b": "boolean", "f4": "real", "f8": "float8", "n": "numeric", "t": "text", "by": "bytea",
    "d": "date", "ts": "timestamp", "tz": "timestamptz", "iv": "interval", "u": "uuid", "j": "jsonb",
    "ta": "text[]", "m": "{s}.mood", "ma": "{s}.mood[]", "pa": "{s}.posint[]", "c": "{s}.comp",
    "mr": "int4multirange", "tv": "tsvector", "tq": "tsquery", "mn": "money", "vb": "bit varying",
    "x": "xml", "lsn": "pg_lsn", "db": "{s}.dbool", "di": "{s}.dinet",
}
MIXED_ROW = {
    "i": "1", "b": "true", "f4": "'-0'", "f8": "'NaN'", "n": "'-Infinity'", "t": r"E'\\.\r\n,\"x\"'",
    "by": r"'\x00'", "d": "'infinity'", "ts": "'-infinity'", "tz": "'294276-12-31 23:59:59.999999+00'",
    "iv": "'178000000 years'", "u": "gen_random_uuid()", "j": """'{"a": [1, 2.50, "\\\\N"]}'""",
    "ta": "ARRAY['NULL', NULL, '']", "m": "'ok'", "ma": "ARRAY['sad', NULL]::{s}.mood[]",
    "pa": "ARRAY[1, NULL]::{s}.posint[]",
    "c": "ROW(ARRAY['-0', 'NaN', 'Infinity']::float8[], '[-Infinity,0)', '-0', ARRAY['happy']::{s}.mood[], '')",
    "mr": "'{[1,3),[5,)}'", "tv": "$$'a':1A 'b''c'$$", "tq": "$$'a' <2> 'b'$$", "mn": "'-92233720368547758.08'",
    "vb": "B'1011'", "x": "'<a>&amp;</a>'", "lsn": "'FFFFFFFF/FFFFFFFF'", "db": "false", "di": "'1.2.3.4'",
}


def _mixed_table(conn, schema, table, rows):
    conn.execute(TYPES.replace("{s}", sql.Identifier(schema).as_string(conn)))
    _hostile_table(conn, schema, table, MIXED, rows)


@pytest.mark.parametrize(("fmt", "codec"), MATRIX)
def test_one_row_all_null_row_and_empty_day_round_trip(fmt, codec, conn, schema, store, s3_client, bucket, temp_dir):
    """Guard (passes): every format x codec round-trips a one-row day of many mixed types (-0, NaN,
    -Infinity in floats, numerics, arrays and composites; infinities; year 294276 but in Parquet; enum and
    domain arrays; multirange, tsvector, tsquery, money, varbit, xml, pg_lsn), a day whose only row is all
    NULLs, and an empty day: deep verification, restore into a new table, EXCEPT ALL, compare, and the
    manifest's rows / bytes / MD5 / SHA-256 / uncompressed bytes against the object itself."""
    conn.execute("SET lc_monetary = 'C'")
    row = dict(MIXED_ROW, tz="'294247-01-10 04:00:54.775805+00'") if fmt == "parquet" else MIXED_ROW
    _mixed_table(conn, schema, "one", [[row[n] for n in MIXED]])
    _full(conn, schema, store, s3_client, bucket, temp_dir, "one", fmt, codec)
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {})").format(sql.Identifier(schema, "nul"),
                                                            sql.Identifier(schema, "one")))
    conn.execute(sql.SQL("INSERT INTO {} (at) VALUES (%s)").format(sql.Identifier(schema, "nul")), (DAY,))
    _full(conn, schema, store, s3_client, bucket, temp_dir, "nul", fmt, codec)
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {})").format(sql.Identifier(schema, "emp"),
                                                            sql.Identifier(schema, "one")))
    conn.execute(sql.SQL("INSERT INTO {} (at) VALUES (%s)").format(sql.Identifier(schema, "emp")),
                 (DAY + dt.timedelta(days=1),))
    _full(conn, schema, store, s3_client, bucket, temp_dir, "emp", fmt, codec)


NAMES = ["NULL", "\\N", "a\nb", 'q"t', "c,d", "\ufeffbom", "__index_level_0__", "Dup", "dup", "DUP", "null",
         "\\.", "#", "id ", "at\r", "{}", "[", "'", "é"]


@pytest.mark.parametrize(("fmt", "codec"), MATRIX)
def test_keyword_like_column_names(fmt, codec, conn, schema, store, s3_client, bucket, temp_dir):
    columns = {n: ("text" if i % 3 == 0 else "int" if i % 3 == 1 else "jsonb") for i, n in enumerate(NAMES)}
    values = {"text": ["'\\N'", "NULL", "''"], "int": ["0", "NULL", "-1"], "jsonb": ["'null'::jsonb", "NULL", "'\"\"'"]}
    if fmt == "jsonl":
        values["jsonb"] = ["'{}'", "NULL", "'\"\"'"]
    _hostile_table(conn, schema, "names", columns, [[values[t][r] for t in columns.values()] for r in range(3)])
    _full(conn, schema, store, s3_client, bucket, temp_dir, "names", fmt, codec)


SYNTAX = [r"E'\\.'", r"E'\\.\n'", r"E'\n\\.\n'", r"E'\r\n'", "E'\\r'", "'\"'", "','", "'\"\"'", "' '",
          "'NULL'", r"E'\\N'", "'null'", "'{\"a\":1}'", "'[1,2]'", "E'\\uffff'", "E'\\U0010ffff'", "E'\\ufeff'",
          "E'\\x01\\x02\\x1b\\x7f'", "E'\\u0085\\u2028\\u2029'", "E'\\t'", "E'a\\x01b'", "E'\\x02'",
          "'\"a\",\"b\"'", "E'\\\\'", "E'\\\\\\\\'", "E'\\\\u0000'", "E'}\\n{'", "'\"}'", "E'\\x1f'",
          "E'\\ud7ff\\ue000'", "E'\\U0001F600'"]


@pytest.mark.parametrize(("fmt", "codec"), MATRIX)
def test_syntax_lookalike_values(fmt, codec, conn, schema, store, s3_client, bucket, temp_dir):
    columns = {"t": "text", "v": "varchar", "c": "char(12)", "ta": "text[]", "j": "jsonb", "jt": "json",
               "n": "name"}
    rows = []
    for v in SYNTAX:
        rows.append([v, v, v, f"ARRAY[{v}, NULL, {v}]", f"to_jsonb({v}::text)", f"to_json({v}::text)",
                     f"{v}::name"])
    _hostile_table(conn, schema, "syn", columns, rows)
    _full(conn, schema, store, s3_client, bucket, temp_dir, "syn", fmt, codec)


TYPES2 = """CREATE TYPE {s}.mood AS ENUM ('sad', 'ok', 'happy', 'NULL', '');
CREATE DOMAIN {s}.df4 AS real;
CREATE DOMAIN {s}.dnum AS numeric(12,3);
CREATE DOMAIN {s}.dts AS timestamptz;
CREATE DOMAIN {s}.ddate AS date;
CREATE DOMAIN {s}.div AS interval;
CREATE TYPE {s}.cmp AS (fa float4[], na numeric[], r tstzrange, mr nummultirange, e {s}.mood[], d {s}.ddate[]);"""

T2 = {
    "f4a": ("real[]", ["'{-0,NaN,Infinity,-Infinity,1.4e-45,3.4028235e38}'", "'{NULL}'", "NULL"]),
    "f8a": ("float8[]", ["'{-0,NaN,Infinity,-Infinity,4.9e-324,0.1}'", "'{}'", "NULL"]),
    "na": ("numeric[]", ["'{-0,NaN,Infinity,-Infinity,1.000}'", "'{NULL}'", "NULL"]),
    "df4a": ("{s}.df4[]", ["'{-0,NaN,-Infinity}'", "'{}'", "NULL"]),
    "dnuma": ("{s}.dnum[]", ["'{-0.000,1.500,NULL}'", "'{}'", "NULL"]),
    "dtsa": ("{s}.dts[]", ["'{infinity,-infinity,\"2024-03-10 01:02:03.000001+00\"}'", "'{NULL}'", "NULL"]),
    "dda": ("{s}.ddate[]", ["'{infinity,-infinity,4713-01-01 BC}'", "'{}'", "NULL"]),
    "diva": ("{s}.div[]", ["ARRAY['-2147483648 mons -2147483648 days'::interval, '2562047:47:16.854775']",
                           "'{}'", "NULL"]),
    "da": ("date[]", ["'{infinity,-infinity,5874897-12-31}'", "'{NULL,2024-03-10}'", "NULL"]),
    "tsa": ("timestamp[]", ["'{infinity,-infinity,\"4713-01-01 00:00:00 BC\"}'", "'{}'", "NULL"]),
    "tma": ("time[]", ["'{00:00:00,23:59:59.999999}'", "'{}'", "NULL"]),
    "ttz": ("timetz[]", ["'{\"00:00:00+15:59\",\"23:59:59.999999-15:59\"}'", "'{}'", "NULL"]),
    "ea": ("{s}.mood[]", ["'{NULL,\"NULL\",\"\",happy}'", "'{}'", "NULL"]),
    "ma": ("money[]", ["'{-92233720368547758.08,92233720368547758.07,0}'", "'{NULL}'", "NULL"]),
    "c": ("{s}.cmp", ["ROW('{-0,NaN}', '{NaN,-0.0}', '[-infinity,infinity)', '{[1.5,2),(,-1]}', '{NULL,ok}', "
                      "'{infinity}')", "ROW(NULL, NULL, NULL, NULL, NULL, NULL)", "NULL"]),
    "ca": ("{s}.cmp[]", ["ARRAY[ROW('{-0}', '{NaN}', 'empty', '{}', '{}', '{-infinity}')::{s}.cmp, NULL]", "'{}'",
                         "NULL"]),
    "n1000": ("numeric", ["('-' || repeat('9', 1000) || '.' || repeat('0', 999) || '1')::numeric", "'-0.0'",
                          "NULL"]),
    "n76": ("numeric(76,0)", ["repeat('9', 76)::numeric", "('-' || repeat('9', 76))::numeric", "NULL"]),
    "n38s": ("numeric(38,38)", ["('0.' || repeat('9', 38))::numeric", "0", "NULL"]),
    "nneg": ("numeric(5,-2)", ["9999900", "-100", "NULL"]),
    "nbig": ("numeric(3,5)", ["0.00999", "-0.00001", "NULL"]),
    "f4": ("real", ["'-0'", "'NaN'", "NULL"]),
    "f8": ("float8", ["'-0'", "'-Infinity'", "NULL"]),
    "iv": ("interval", ["'-2147483648 mons -2147483648 days -2562047:47:16.854775'", "'1 day'", "'-0.000001 sec'"]),
    "d": ("date", ["'5874897-12-31'", "'4713-01-01 BC'", "'infinity'"]),
    "tz": ("timestamptz", ["'294247-01-10 04:00:54.775806+00'", "'4713-01-01 00:00:00+00 BC'", "'-infinity'"]),
    "mr": ("datemultirange", ["'{[-infinity,2024-01-01),[2025-01-01,infinity]}'", "'{}'", "NULL"]),
    "mra": ("int8multirange[]", ["ARRAY['{[1,2),[4,5)}'::int8multirange, '{}', NULL]", "'{}'", "NULL"]),
    "tv": ("tsvector", ["$$'\\\\' '''' 'a b':1A,65535D$$", "''", "NULL"]),
    "tq": ("tsquery", ["$$!('a' <-> 'b') | 'c':*AB & 'd\\\\'$$", "''", "NULL"]),
    "mn": ("money", ["'-92233720368547758.08'", "'92233720368547758.07'", "NULL"]),
    "vb": ("bit varying", ["B''", "(repeat('10', 5000))::varbit", "NULL"]),
    "vb5": ("varbit(5)[]", ["ARRAY[B'1', B'', NULL]", "'{}'", "NULL"]),
    "lsn": ("pg_lsn[]", ["'{0/0,FFFFFFFF/FFFFFFFF}'", "'{}'", "NULL"]),
    "x": ("xml", ["'<?xml version=\"1.0\"?><a b=\"&quot;\"/>'", "''", "NULL"]),
}


@pytest.mark.parametrize(("fmt", "codec"), MATRIX)
def test_hard_types(fmt, codec, conn, schema, store, s3_client, bucket, temp_dir):
    conn.execute("SET lc_monetary = 'C'")
    conn.execute(TYPES2.replace("{s}", sql.Identifier(schema).as_string(conn)))
    cols = dict(T2)
    if fmt == "parquet":  # documented refusals
        for n in ("iv", "diva"):
            cols.pop(n)
    _hostile_table(conn, schema, "hard", {n: t for n, (t, _) in cols.items()},
                   [[v[r] for _, v in cols.values()] for r in range(3)])
    _full(conn, schema, store, s3_client, bucket, temp_dir, "hard", fmt, codec)


# xml values PostgreSQL's xml functions build but xml's input refuses (characters XML 1.0 forbids)
UNREADABLE_XML = ["xmlelement(name a, E'\\uffff')", "xmlelement(name a, E'tab\\ttab bell\\x07')",
                  "xmlcomment(E'\\x01')", "xmlforest(E'\\ufffe' AS b)"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_xml_value_xml_input_refuses_is_refused_not_archived_green(fmt, conn, schema, store, temp_dir):
    """A user's audit table fills an xml column with xmlelement()/xmlcomment() over free text that holds a
    control character or U+FFFF (PostgreSQL builds such values without checking them). The day archives
    green and its manifest records the column exact, but xml's input refuses the value: deep verification
    then blames the archive (ArchiveCorruptError "does not load ... check the object against its MD5") and
    no restore of the day can ever succeed, in any format. Exact or refused: the archive must refuse the
    day, naming the column, before publishing anything."""
    from archive_pipeline.core.errors import UnsupportedTypeError
    from archive_pipeline_tests.helpers import assert_nothing_left

    _hostile_table(conn, schema, "xmlday", {"x": "xml"}, [["xmlelement(name ok)"]] + [[v] for v in UNREADABLE_XML])
    spec = _spec(schema, "xmlday", fmt, {"jsonl": "zstd", "csv": "gzip", "parquet": "lz4"}[fmt])
    with pytest.raises(UnsupportedTypeError, match="'x'") as caught:
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    assert (caught.value.table, caught.value.day) == (spec.name, DAY.isoformat())
    assert_nothing_left(store, table_day_key(spec, DAY, store.prefix), temp_dir)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_circle_whose_output_circle_input_refuses_is_refused_not_archived_green(fmt, conn, schema, store,
                                                                                  temp_dir):
    """A geometry table stores circle(center, radius) computed by a query; a radius that came out negative
    is stored as it is (circle(point, float8) checks nothing), but circle's input refuses its output
    '<(0,0),-1>'. The day archives green with the column recorded exact, and then no restore or proof of it
    can succeed in any format (ArchiveCorruptError blaming the object). Exact or refused: the archive must
    refuse the day naming the column, as it does for the other values no format can read back."""
    from archive_pipeline.core.errors import UnsupportedTypeError
    from archive_pipeline_tests.helpers import assert_nothing_left

    _hostile_table(conn, schema, "shapes", {"c": "circle"}, [["circle(point '(1,2)', 3)"],
                                                             ["circle(point '(0,0)', -1)"]])
    spec = _spec(schema, "shapes", fmt, "zstd")
    with pytest.raises(UnsupportedTypeError, match="'c'") as caught:
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    assert (caught.value.table, caught.value.day) == (spec.name, DAY.isoformat())
    assert_nothing_left(store, table_day_key(spec, DAY, store.prefix), temp_dir)


@pytest.mark.parametrize(("fmt", "codec"), [("jsonl", "zstd"), ("csv", "none"), ("parquet", "lz4")])
def test_compare_calls_a_day_archived_as_empty_and_still_empty_equal(fmt, codec, conn, schema, store, temp_dir):
    """A day without rows is archived as empty (a manifest, no object), and the source still has no rows
    for it. `compare` reports it 'not-in-source' with the note 'archived; the source no longer has this
    day', which says the source lost the day: it never had rows, and source and archive agree (0 rows,
    the same fingerprint). The comparison must be 'equal'."""
    _hostile_table(conn, schema, "quiet", {"v": "text"}, [])
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, 'other day')").format(sql.Identifier(schema, "quiet")),
                 (DAY + dt.timedelta(days=1),))
    spec = _spec(schema, "quiet", fmt, codec)
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    assert result.rows == 0
    assert deep_verify(conn, store, spec, DAY, temp_dir=temp_dir) == []
    [c] = plan.compare_days(conn, spec, store, [DAY])
    assert (c.result, c.source_rows, c.archive_rows) == ("equal", 0, 0), c
    assert "no longer" not in c.note
