"""Hunt 7 (ma): values of types beyond the README's type table and at the edges of their type, through
the whole round trip (archive in each format, restore, deep verification, the re-run's fingerprint skip)."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.restore import restore_day

DAY = dt.date(2024, 3, 10)
FORMATS = ("jsonl", "csv", "parquet")
DECLARED = '<?xml version="1.0"?><doc/>'


def _composite_xml_table(conn, schema: str) -> sql.Identifier:
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TYPE {}.doc AS (n int, x xml)").format(s))
    table = sql.Identifier(schema, "docs")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, d {}.doc, ds {}.doc[])").format(table, s, s))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, ROW(1, %s), ARRAY[ROW(2, %s)::{}.doc])").format(table, s),
                 (DAY, DECLARED, DECLARED))
    return table


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_xml_field_of_a_composite_keeps_its_declaration_through_a_restore(fmt, conn, schema, store, temp_dir):
    """A user archives a table with a composite column (and an array of it) whose xml field holds a
    document with an XML declaration, then restores the day. The archive is green and the restore's
    fingerprint check passes, but the restored field is '<doc/>': the composite is written as its output
    (record_out), which prints the field through xml's output function, and that drops the declaration.
    A top-level xml column and an xml[] are archived as the stored text (formats.common.xml_text), exactly
    because xml's output loses it; a composite's xml field should come back exactly too (or the day be
    refused naming the column)."""
    table = _composite_xml_table(conn, schema)
    spec = TableSpec(name=f"{schema}.docs", day_column="at", start_date=DAY, format=fmt)
    try:
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    except ArchiveError as exc:  # (fixed by refusing it: every format writes a composite by its output)
        assert "column 'd'" in str(exc) and "declaration" in str(exc) and not exc.retryable, exc
        return
    restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    back = conn.execute(sql.SQL("SELECT (d).x::text, (ds[1]).x::text FROM {}").format(
        sql.Identifier(schema, "back"))).fetchone()
    assert back == (DECLARED, DECLARED)


def test_a_changed_declaration_in_a_composites_xml_field_is_not_skipped_as_unchanged(conn, schema, store, temp_dir):
    """A user archives the day, then an UPDATE changes a composite's xml field from '<doc/>' to the same
    document with an XML declaration (a different stored value: ``(d).x::text`` differs). The re-run
    skips the day as unchanged: the v5 fingerprint hashes a composite by its output (concat()), which
    prints xml through xml's output function and so drops the declaration, while a plain xml column is
    hashed by ``::text`` (its stored text). It should fail as "changed since it was archived"."""
    table = _composite_xml_table(conn, schema)
    conn.execute(sql.SQL("UPDATE {} SET d = ROW(1, '<doc/>'), ds = NULL").format(table))
    spec = TableSpec(name=f"{schema}.docs", day_column="at", start_date=DAY, format="csv")
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(sql.SQL("UPDATE {} SET d = ROW(1, %s)").format(table), (DECLARED,))
    with pytest.raises(ArchiveError, match="changed since it was archived"):
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)


def _display_cast_of_numeric(conn, schema: str) -> None:
    """A DBA's display cast of numeric to text (two decimals, as reports want them): numeric has no cast to
    text of PostgreSQL's own (``::text`` is an I/O conversion), so CREATE CAST may give it one."""
    conn.execute(f"CREATE FUNCTION {schema}.n_text(numeric) RETURNS text LANGUAGE sql IMMUTABLE "
                 "AS $$ SELECT to_char($1, 'FM999999999990.00') $$")
    conn.execute(f"CREATE CAST (numeric AS text) WITH FUNCTION {schema}.n_text(numeric)")


def test_a_users_cast_of_numeric_to_text_does_not_make_every_fingerprint_alike(conn, schema, store, temp_dir):
    """A database carries a DBA's cast ``CREATE CAST (numeric AS text) WITH FUNCTION n_text(numeric)``
    (``to_char(n, 'FM999999999990.00')``). A day of a table with no numeric column at all is archived, then a
    value of it changes. The re-run skips the day as unchanged: the fingerprint's sum of row hashes is a numeric
    printed with ``::text`` (``fingerprint.fingerprint_query``: ``coalesce(sum(h), 0)::text``), which runs the
    DBA's cast, so the manifest records ``row-hash-sum-v5:2:############.##`` and every day of the same row count
    and sign has "the same" fingerprint. The sum should be printed by numeric's output function (or the cast
    qualified away), so the change is "changed since it was archived"."""
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, t text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, 'before'), (2, %s, 'other')").format(table), (DAY, DAY))
    _display_cast_of_numeric(conn, schema)
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv")
    try:
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
        conn.execute(sql.SQL("UPDATE {} SET t = 'later' WHERE id = 1").format(table))
        with pytest.raises(ArchiveError, match="changed since it was archived"):
            archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    finally:
        conn.execute("DROP CAST IF EXISTS (numeric AS text)")


def test_parquet_does_not_write_numeric_through_a_users_cast_to_text(conn, schema, store, temp_dir):
    """With the same DBA's cast of numeric to text, a user archives a day with an unconstrained ``numeric``
    column (1.255) and a ``numeric[]`` as Parquet, then restores it: the archive is green, the restore's
    fingerprint check passes, and the restored values are 1.26 and {1.26,NULL}. The Parquet reader reads
    numeric as ``col::text`` (``formats.parquet._read_expression``; money as ``::numeric::text``), which runs
    the user's cast instead of numeric's output. It should read the exact digits (numeric_out), as the
    fingerprint's own column text already does for such a cast (``user_text_cast``)."""
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, n numeric, na numeric[])").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, 1.255, '{{1.255,NULL}}')").format(table), (DAY,))
    _display_cast_of_numeric(conn, schema)
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="parquet")
    try:
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
        restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    finally:
        conn.execute("DROP CAST IF EXISTS (numeric AS text)")
    back = conn.execute(sql.SQL("SELECT concat(n), concat(na) FROM {}").format(
        sql.Identifier(schema, "back"))).fetchone()
    assert back == ("1.255", "{1.255,NULL}")


@pytest.mark.parametrize("column", ["xml[]", "{s}.label[]", "money[]"], ids=["xml", "domain", "money"])
def test_deep_verification_of_a_csv_archive_reads_null_elements_whatever_the_sessions_array_nulls(
        column, conn, schema, store, temp_dir):
    """A user archives a day as CSV whose array column (xml[], an array of a domain over text, money[]) has a
    NULL element, then proves it with ``deep_verify`` on a connection where ``array_nulls`` is off (a role's
    setting; README: restore reads "with array_nulls on (a role's off would read an array's NULL element as the
    string "NULL")"). The CSV proof parses such columns from their text (``verify._text_table``: money and xml
    arrays, arrays of domains) without setting ``array_nulls``: the xml[] and domain array's NULL element is read
    as the string 'NULL' and the exact archive is reported as a fingerprint mismatch; money[] fails with "does
    not read back as its columns' types now ... a type or domain of the table changed". It should prove the
    archive ([]), as the restore path does by setting array_nulls on."""
    from archive_pipeline.core.verify import deep_verify

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE DOMAIN {}.label AS text").format(s))
    table = sql.Identifier(schema, "ev")
    kind = sql.SQL(column.replace("{s}", s.as_string(conn)))
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, a {})").format(table, kind))
    first = "'1.50'" if column == "money[]" else "'a'"
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, ARRAY[{}, NULL]::{})").format(table, sql.SQL(first), kind),
                 (DAY,))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv")
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute("SET array_nulls = off")
    conn.commit()
    assert deep_verify(conn, store, spec, DAY, temp_dir=temp_dir) == []
