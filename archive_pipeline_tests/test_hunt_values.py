"""Hunt: hostile values and identifiers through the whole round trip (archive, restore into a new and an
existing table, compare, deep verification), in every format. Each test asserts what the README promises
and fails on the current code because of a bug."""

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
FORMATS = ("jsonl", "csv", "parquet")


def _typed_table(conn, schema: str, type_sql: str, values: list[str]) -> sql.Identifier:
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at date, v {})").format(table, sql.SQL(type_sql)))
    for i, value in enumerate(values, start=1):
        conn.execute(sql.SQL("INSERT INTO {} VALUES ({}, {}, {})").format(
            table, sql.Literal(i), sql.Literal(DAY), sql.SQL(value)))
    return table


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_column_of_a_type_whose_name_holds_a_percent_sign_restores_and_is_proven(fmt, conn, schema, store,
                                                                                     temp_dir):
    """An enum named ``mood %s`` (a type's name, or its schema's, may hold a ``%`` as a table's may). The day
    archives in every format, so it must restore and prove in every format. Was (JSONL): every restore and
    every deep verification of the day failed with psycopg's "the query has 2 placeholders but 1 parameters
    were passed": the JSONL loader's INSERT spells the target's column types as raw SQL text, which
    sqltext.with_params does not escape, so the archive was published and could never be read back."""
    mood = sql.Identifier(schema, "mood %s")
    conn.execute(sql.SQL("CREATE TYPE {} AS ENUM ('happy', 'sad')").format(mood))
    table = _typed_table(conn, schema, mood.as_string(conn), ["'happy'", "'sad'", "NULL"])
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format=fmt, compression="zstd")
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)

    restored = restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    assert restored.fingerprint_checked and restored.rows == 3
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {})").format(sql.Identifier(schema, "existing"), table))
    into_existing = restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.existing",
                                temp_dir=temp_dir)
    assert into_existing.inserted == 3
    assert [c.result for c in compare_days(conn, spec, store, [DAY])] == ["equal"]
    assert deep_verify(conn, store, spec, DAY, temp_dir=temp_dir) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_deep_verification_names_the_missing_row_of_a_column_whose_type_name_holds_a_percent_sign(
        fmt, conn, schema, store, temp_dir):
    """A composite type named ``pair %s``; after archiving, a row is deleted from the source. Deep verification
    must return the difference, naming the row the archive has and the source lacks. Was (CSV): it raised
    "proving ... failed: an unexpected error (ProgrammingError: the query has 2 placeholders but 1 parameters
    were passed); not retried" instead: the CSV proof reads a composite's field as its type named by raw SQL
    text (verify._text_table's parse_as), which with_params does not escape when the first difference is
    looked up with a parameter."""
    pair = sql.Identifier(schema, "pair %s")
    conn.execute(sql.SQL("CREATE TYPE {} AS (x int, y text)").format(pair))
    table = _typed_table(conn, schema, pair.as_string(conn), ["'(1,a)'", "'(2,b)'", "NULL"])
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format=fmt, compression="gzip")
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(sql.SQL("DELETE FROM {} WHERE id = 2").format(table))
    problems = deep_verify(conn, store, spec, DAY, temp_dir=temp_dir)
    assert any(p.startswith("first difference: the archive has a row the source lacks: (2,") for p in problems), \
        problems


@pytest.fixture
def latin1(pg, conn):
    """A connection to a fresh LATIN1 database (dropped afterwards)."""
    import psycopg

    name = f"hunt_values_latin1_{conn.info.backend_pid}"
    conn.execute(sql.SQL("CREATE DATABASE {} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0").format(
        sql.Identifier(name)))
    try:
        with psycopg.connect(pg.dsn_for("postgres", database=name), autocommit=True) as latin:
            yield latin
    finally:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_day_archived_from_latin1_restores_into_a_utf8_database(fmt, latin1, conn, schema, store, temp_dir):
    """The README's remedy for a value a LATIN1 target cannot hold is "restore into a UTF8 database", and "the
    fingerprint is the same on any server". A LATIN1 day holding 'é' (a character both encodings have) must
    restore into a UTF-8 database. Was: every format's restore was rolled back with "The archive does not hold
    the rows it was proven to hold (altered after it was written)": the content fingerprint hashes each text in
    the server's encoding (hashtextextended of é is of byte E9 in LATIN1, of C3 A9 in UTF-8), so no row with a
    non-ASCII character proves across encodings, and the message blames an intact archive."""
    latin1.execute("CREATE TABLE ev (at date, v text)")
    latin1.execute("INSERT INTO ev VALUES ('2024-03-10', 'é'), ('2024-03-10', 'plain')")
    spec = TableSpec(name="public.ev", day_column="at", start_date=DAY, format=fmt)
    archive_partition(latin1, spec, DAY, store, temp_dir=temp_dir)
    restored = restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    assert restored.fingerprint_checked and restored.rows == 2
    assert conn.execute(sql.SQL("SELECT v FROM {} ORDER BY v").format(
        sql.Identifier(schema, "back"))).fetchall() == [("plain",), ("é",)]


def test_a_day_archived_from_utf8_restores_into_latin1_when_latin1_has_its_characters(latin1, conn, schema, store,
                                                                                       temp_dir):
    """The converse: README says only a character LATIN1 lacks (値) rolls the day back. Was: 'é', which LATIN1
    has, rolled it back too ("altered after it was written"), for the same reason."""
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (at date, v text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES ('2024-03-10', 'é')").format(table))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv")
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    restored = restore_day(latin1, store, spec, DAY, into="new", target="public.back", temp_dir=temp_dir)
    assert restored.fingerprint_checked and restored.rows == 1


def test_a_strict_table_does_not_skip_onto_an_archive_recorded_as_not_exact(conn, schema, store, temp_dir):
    """A JSONL day with a json value holding a line break between tokens, archived before the table was made
    strict: its manifest records the column as not exact (the line break became a space). Once the table is
    ``strict: true``, archiving the day again must not accept that archive as the day's (README: "strict: true
    on a table refuses any encoding that is not [exact]"). Was: the re-run compared the *source's* fingerprint
    with the manifest's (equal, since the manifest records the source's) and skipped, reporting the day
    archived; the strict check (archive.py, after _keep) is only reached when the day is read again."""
    from archive_pipeline.core.errors import UnsupportedTypeError
    from archive_pipeline.core.manifest import decode_manifest

    table = _typed_table(conn, schema, "json", ["'{\"a\":\n1}'"])
    loose = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="jsonl", compression="none")
    first = archive_partition(conn, loose, DAY, store, temp_dir=temp_dir)
    manifest = decode_manifest(store.get_verified_bytes(f"{first.key}.manifest.json"))
    assert manifest["exact"] is False and [c["exact"] for c in manifest["columns"]] == [True, True, False]
    assert store.client.get_object(Bucket=store.bucket, Key=first.key)["Body"].read().count(b'{"a": 1}') == 1
    assert conn.execute(sql.SQL("SELECT v::text FROM {}").format(table)).fetchone()[0] == '{"a":\n1}'

    strict = loose.model_copy(update={"strict": True})
    with pytest.raises(UnsupportedTypeError, match="strict"):
        again = archive_partition(conn, strict, DAY, store, temp_dir=temp_dir)
        print(again)


def test_a_latin1_day_archived_with_v3_is_still_skipped_and_proven_in_its_own_database(latin1, store, s3_client,
                                                                                     bucket, temp_dir):
    """New archives record row-hash-sum-v4 (each text hashed as its UTF-8 bytes, so the proof crosses encodings);
    a day archived before it from a LATIN1 database recorded v3, the hash of the LATIN1 bytes, which differs for
    'é'. Computing v4 for it would call the unchanged day changed: everything computes the recorded v3 instead."""
    from archive_pipeline.core import fingerprint
    from archive_pipeline.core.manifest import decode_manifest, encode_manifest
    from archive_pipeline.core.verify import source_fingerprint

    latin1.execute("CREATE TABLE ev (at date, v text)")
    latin1.execute("INSERT INTO ev VALUES ('2024-03-10', 'é'), ('2024-03-10', 'plain')")
    spec = TableSpec(name="public.ev", day_column="at", start_date=DAY, format="csv")
    result = archive_partition(latin1, spec, DAY, store, temp_dir=temp_dir)
    v3 = str(source_fingerprint(latin1, spec, DAY, fingerprint.V3))
    assert v3 != result.fingerprint and result.fingerprint.startswith(fingerprint.ALGORITHM + ":")
    manifest = decode_manifest(s3_client.get_object(Bucket=bucket, Key=result.manifest_key)["Body"].read())
    manifest["fingerprint"] = v3  # as the previous version wrote it (resealed below)
    manifest.pop("manifest_sha256")
    s3_client.put_object(Bucket=bucket, Key=result.manifest_key, Body=encode_manifest(manifest))

    again = archive_partition(latin1, spec, DAY, store, temp_dir=temp_dir)
    assert again.skipped and again.fingerprint == v3
    assert deep_verify(latin1, store, spec, DAY, temp_dir=temp_dir) == []
