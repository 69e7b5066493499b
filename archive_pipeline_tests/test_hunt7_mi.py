"""Hunt 7 (mi): values nested in containers (composites in arrays in composites, domains over and inside
composites and ranges, ranges over domains, composites altered between archive and restore/verify),
through the whole round trip in JSONL, CSV and Parquet."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.restore import restore_day
from archive_pipeline.core.verify import deep_verify

DAY = dt.date(2024, 3, 10)


def _spec(schema: str, table: str, fmt: str) -> TableSpec:
    return TableSpec(name=f"{schema}.{table}", day_column="at", start_date=DAY, format=fmt, compression="zstd")


# column type -> a value holding the domain's 50 somewhere inside (not at the top: a domain column, or an array
# of a domain, is already read as the domain by CSV's text proof)
NESTED_DOMAIN = {
    "array of a composite with a domain field": ("{s}.holder[]", "ARRAY[ROW(50, 'x')::{s}.holder, NULL]"),
    "range over the domain": ("{s}.smallrange", "{s}.smallrange(5, 50, '[]')"),
    "multirange over the domain": ("{s}.smallmultirange", "{s}.smallmultirange({s}.smallrange(50, NULL))"),
}


@pytest.mark.parametrize("shape", list(NESTED_DOMAIN))
def test_a_csv_proof_of_a_domain_nested_in_an_array_or_range_applies_its_check_as_a_restore_does(
        shape, conn, schema, store, temp_dir):
    """A user's domain ``small`` (int, CHECK < 100) is a field of a composite kept in an array column, or the
    subtype of a range; the day is archived in CSV. A CHECK is added to the domain later NOT VALID (the rows
    stay), which refuses the archived 50. Deep verification of the CSV archive hashes such a column's text as
    it is (only a top-level domain, an array of one and a composite are read as their type: a composite holding the
    domain works), so it proves the
    day green (the source unchanged, retention may now remove it), and the restore of that proven archive
    then fails on the CHECK. For a domain column itself the proof reads the value as the domain and fails
    (test_schema_hunt): the same must hold wherever the domain sits inside the column's type (or the
    proof must otherwise not call it proven)."""
    s = sql.Identifier(schema).as_string(conn)
    conn.execute(f"CREATE DOMAIN {s}.small AS int CHECK (VALUE < 100)")
    conn.execute(f"CREATE TYPE {s}.holder AS (v {s}.small, t text)")
    conn.execute(f"CREATE TYPE {s}.smallrange AS RANGE (subtype = {s}.small)")
    column_type, value = (part.replace("{s}", s) for part in NESTED_DOMAIN[shape])
    conn.execute(f"CREATE TABLE {s}.dn (id int, at date, v {column_type})")
    conn.execute(f"INSERT INTO {s}.dn VALUES (1, %s, {value})", (DAY,))
    spec = _spec(schema, "dn", "csv")
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(f"ALTER DOMAIN {s}.small ADD CONSTRAINT lt10 CHECK (VALUE < 10) NOT VALID")
    try:
        proven = deep_verify(conn, store, spec, DAY) == []
    except ArchiveError:
        proven = False
    try:
        restored = restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.dn_back", temp_dir=temp_dir)
    except ArchiveError as exc:
        assert not proven, f"deep verification proved the archive, and its restore then fails: {exc}"
        return
    assert restored.fingerprint_checked


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])  # CSV already says so
def test_deep_verification_after_a_nested_composite_gained_an_attribute_does_not_call_the_archive_corrupt(
        fmt, conn, schema, store, temp_dir):
    """A column ``m`` of composite ``mid`` holds an array of composite ``leaf``; the day is archived, then
    ``ALTER TYPE leaf ADD ATTRIBUTE z int``. The archived ``(abc,1)`` no longer reads as ``leaf`` and deep
    verification cannot prove the day: CSV says so (the archive does not read back as its columns' types now;
    put the type back or archive again with overwrite). JSONL and Parquet raise ``ArchiveCorruptError`` ("does
    not load ...; check ... the object against its manifest (MD5)"), blaming an archive whose object was just
    checked against its manifest and is exact. Expected: no corrupt verdict; the error names the column and
    says that a type changed since the day was archived, with the remedy."""
    from archive_pipeline.core.restore import ArchiveCorruptError

    s = sql.Identifier(schema).as_string(conn)
    conn.execute(f"CREATE TYPE {s}.leaf AS (t text, j jsonb)")
    conn.execute(f"CREATE TYPE {s}.mid AS (n int, leaves {s}.leaf[])")
    conn.execute(f"CREATE TABLE {s}.n (id int, at date, m {s}.mid)")
    conn.execute(f"INSERT INTO {s}.n VALUES (1, %s, ROW(1, ARRAY[ROW('abc', '1')::{s}.leaf]))", (DAY,))
    spec = _spec(schema, "n", fmt)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(f"ALTER TYPE {s}.leaf ADD ATTRIBUTE z int")
    with pytest.raises(ArchiveError) as failure:
        deep_verify(conn, store, spec, DAY)
    message = str(failure.value)
    assert not isinstance(failure.value, ArchiveCorruptError), message
    assert "MD5" not in message, message
    assert f"{schema}.n" in message and "2024-03-10" in message, message
    assert "type" in message and "changed since the day was archived" in message, message


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_a_restore_refused_because_a_nested_field_was_retyped_does_not_blame_the_archive(
        fmt, conn, schema, store, temp_dir):
    """A day of a table whose column ``m`` (composite ``mid``) holds an array of composite ``leaf`` with a
    ``timestamptz`` field is archived; the table is dropped later and ``leaf``'s field is retyped to
    ``timestamp`` (``ALTER TYPE leaf ALTER ATTRIBUTE ts TYPE timestamp``; the same as restoring into another
    database whose ``leaf`` has that field as timestamp). A restore into a new table reads the archived
    ``2024-03-10 01:00:00+00`` as a timestamp without its offset, and its fingerprint check rightly rolls it
    back, but the error says "The archive does not hold the rows it was proven to hold (altered after it was
    written)": the object is exact (its MD5 was just checked), and the cause is the type named in the
    manifest, changed since (the restore checks such a change only for floats, ``_nested_narrowing``).
    Expected: the message names the column and says a type inside it differs from when the day was archived,
    without calling the archive altered."""
    s = sql.Identifier(schema).as_string(conn)
    conn.execute(f"CREATE TYPE {s}.leaf AS (t text, ts timestamptz)")
    conn.execute(f"CREATE TYPE {s}.mid AS (n int, leaves {s}.leaf[])")
    conn.execute(f"CREATE TABLE {s}.n (id int, at date, m {s}.mid)")
    conn.execute(f"INSERT INTO {s}.n VALUES (1, %s, ROW(1, ARRAY[ROW('abc', '2024-03-10 01:00+00')::{s}.leaf]))",
                 (DAY,))
    spec = _spec(schema, "n", fmt)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(f"DROP TABLE {s}.n")
    conn.execute(f"ALTER TYPE {s}.leaf ALTER ATTRIBUTE ts TYPE timestamp")
    with pytest.raises(ArchiveError) as failure:
        restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.n_back", temp_dir=temp_dir)
    message = str(failure.value)
    assert "altered after it was written" not in message, message
    assert "column m" in message or "column 'm'" in message or "m:" in message, message


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_a_real_field_nested_in_an_array_of_composites_widened_to_double_precision_is_refused_as_at_the_top(
        fmt, conn, schema, store, temp_dir):
    """A column ``m`` (composite ``mid``) holds an array of composite ``leaf`` whose field ``f`` is ``real``;
    the day (f = 0.1) is archived, the table dropped, and ``leaf.f`` retyped ``double precision``. The restore
    reads the archived text 0.1 as the double nearest 0.1, which is not the archived real (0.1 as real is
    0.100000001490116…): it prints the same, so the fingerprint proves it and the restore commits a changed
    value. At the top level a ``real`` column restored into ``double precision`` is refused before anything is
    loaded (README: "0.1 as real is not 0.1 as double precision"), and nested ``double precision`` retyped
    ``real`` is refused too, but the nested check (``_NARROWER``) only knows float8 → float4 and numeric →
    floats. Expected: refused the same way, naming the way to the field, nothing restored."""
    s = sql.Identifier(schema).as_string(conn)
    conn.execute(f"CREATE TYPE {s}.leaf AS (f real)")
    conn.execute(f"CREATE TYPE {s}.mid AS (n int, leaves {s}.leaf[])")
    conn.execute(f"CREATE TABLE {s}.n (id int, at date, m {s}.mid)")
    conn.execute(f"INSERT INTO {s}.n VALUES (1, %s, ROW(1, ARRAY[ROW(0.1)::{s}.leaf]))", (DAY,))
    spec = _spec(schema, "n", fmt)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    archived = conn.execute(f"SELECT ((m).leaves[1]).f::float8 FROM {s}.n").fetchone()[0]
    conn.execute(f"DROP TABLE {s}.n")
    conn.execute(f"ALTER TYPE {s}.leaf ALTER ATTRIBUTE f TYPE double precision")
    try:
        restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.n_back", temp_dir=temp_dir)
    except ArchiveError as exc:
        assert "field f" in str(exc), str(exc)
        return
    restored = conn.execute(f"SELECT ((m).leaves[1]).f FROM {s}.n_back").fetchone()[0]
    pytest.fail(f"restored: the archived real {archived!r} came back as the double {restored!r}")



@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_a_restore_after_two_nested_fields_swapped_names_does_not_put_values_under_the_other_name(
        fmt, conn, schema, store, temp_dir):
    """A column ``m`` (composite ``mid``) holds an array of composite ``person (first_name text, last_name
    text)``; the day (Ada Lovelace) is archived and the table dropped (retention). The type's two fields then
    swap names (``ALTER TYPE person RENAME ATTRIBUTE``, three times; or the type is defined so in the database
    restored into). A restore into a new table reads the archived literal by position: first_name is now
    'Lovelace' and last_name 'Ada', and the fingerprint (text by position) proves it. For top-level columns
    two swapping names is a change everywhere and a restore goes by name; inside a composite the manifest
    records no field names, so nothing sees it. Expected: the restore is refused naming the column and the
    fields (or the values land under their archived names)."""
    s = sql.Identifier(schema).as_string(conn)
    conn.execute(f"CREATE TYPE {s}.person AS (first_name text, last_name text)")
    conn.execute(f"CREATE TYPE {s}.mid AS (n int, people {s}.person[])")
    conn.execute(f"CREATE TABLE {s}.n (id int, at date, m {s}.mid)")
    conn.execute(f"INSERT INTO {s}.n VALUES (1, %s, ROW(1, ARRAY[ROW('Ada', 'Lovelace')::{s}.person]))", (DAY,))
    spec = _spec(schema, "n", fmt)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(f"DROP TABLE {s}.n")
    for old, new in (("first_name", "tmp"), ("last_name", "first_name"), ("tmp", "last_name")):
        conn.execute(f"ALTER TYPE {s}.person RENAME ATTRIBUTE {old} TO {new}")
    try:
        restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.n_back", temp_dir=temp_dir)
    except ArchiveError as exc:
        assert "m" in str(exc), str(exc)
        return
    first = conn.execute(f"SELECT ((m).people[1]).first_name FROM {s}.n_back").fetchone()[0]
    assert first == "Ada", f"restored with first_name {first!r}: the archived 'Ada' is now under last_name"


def test_a_rerun_after_a_nested_composite_gained_an_attribute_names_the_type_not_updated_rows(
        conn, schema, store, temp_dir):
    """A column ``m`` holds an array of composite ``leaf``; the day is archived, then ``ALTER TYPE leaf ADD
    ATTRIBUTE z int`` (no row is touched). The re-run rightly does not skip (every value now prints with one
    more field), but its error says "its content changed with the same 1 rows (rows updated, or inserted and
    deleted ...)": the user goes looking for writes to an archived day that nobody made. A column added to
    the table is named as such ("its columns changed from [...] to [...]"); an attribute added to a type
    inside a column is the same kind of change. Expected: the error names column m and its type leaf as
    changed since the day was archived, not rows updated."""
    s = sql.Identifier(schema).as_string(conn)
    conn.execute(f"CREATE TYPE {s}.leaf AS (t text, j jsonb)")
    conn.execute(f"CREATE TABLE {s}.n (id int, at date, m {s}.leaf[])")
    conn.execute(f"INSERT INTO {s}.n VALUES (1, %s, ARRAY[ROW('abc', '1')::{s}.leaf])", (DAY,))
    spec = _spec(schema, "n", "csv")
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(f"ALTER TYPE {s}.leaf ADD ATTRIBUTE z int")
    with pytest.raises(ArchiveError) as failure:
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    message = str(failure.value)
    assert "rows updated" not in message, message
    assert "leaf" in message, message
