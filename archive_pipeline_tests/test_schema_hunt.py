"""Hunt: hostile schemas and the interplay of archive -> deep verify -> restore -> compare.
Each test asserts the correct behaviour and fails on the current code because of a bug."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core import fingerprint
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.plan import compare_days
from archive_pipeline.core.restore import restore_day
from archive_pipeline.core.source import describe_table
from archive_pipeline.core.verify import deep_verify

DAY = dt.date(2024, 3, 10)


def _fp(conn, qualified):
    t = describe_table(conn, qualified, None)
    return fingerprint.compute(conn, t.identifier, t.columns)


def _rows(conn, qualified, order="1"):
    schema, _, name = qualified.partition(".")
    return conn.execute(sql.SQL("SELECT to_jsonb(r) FROM {} r ORDER BY " + order).format(
        sql.Identifier(schema, name))).fetchall()


def test_rows_hidden_by_row_level_security_are_not_archived_as_the_whole_day(pg, conn, schema, store, temp_dir):
    """The archiving role owns the table but FORCE ROW LEVEL SECURITY hides half its rows from it: the
    archive must not be published (and proven) as the table's exact day while rows are missing."""
    role = f"{schema}_owner"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        table = sql.Identifier(schema, "tenant")
        conn.execute(sql.SQL("GRANT ALL ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(role)))
        conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, tenant text)").format(table))
        conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s, CASE WHEN g %% 2 = 0 THEN 'a' ELSE 'b' END "
                             "FROM generate_series(1, 10) g").format(table), (DAY,))
        conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(table, sql.Identifier(role)))
        conn.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(table))
        conn.execute(sql.SQL("ALTER TABLE {} FORCE ROW LEVEL SECURITY").format(table))
        conn.execute(sql.SQL("CREATE POLICY only_a ON {} USING (tenant = 'a')").format(table))
        spec = TableSpec(name=f"{schema}.tenant", day_column="at", start_date=DAY, format="jsonl")
        with psycopg.connect(pg.dsn_for(role), autocommit=True) as owner:
            try:
                result = archive_partition(owner, spec, DAY, store, temp_dir=temp_dir)
            except ArchiveError as exc:
                assert "row-level security" in str(exc) and "BYPASSRLS" in str(exc), str(exc)
                assert exc.retryable is False
                return
            # Published: then it must hold every row of the day, which it does not.
            assert result.rows == 10, (
                f"archived {result.rows} of the day's 10 rows as the exact day; "
                f"deep verification says {deep_verify(owner, store, spec, DAY)}")
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_naming_mode_drop_keeps_a_day_table_holding_rows_with_a_null_day(conn, schema, store, temp_dir):
    """A naming-mode day table with a day_column: rows whose day column is NULL are not the day's rows,
    so they are not archived; dropping the table would lose them. The removal must refuse, as it does
    for rows of another day."""
    from archive_pipeline.core.lifecycle import RemovalRefused, remove_day

    table = sql.Identifier(schema, f"ev_{DAY:%Y%m%d}")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s), (2, %s), (3, NULL)").format(table), (DAY, DAY))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv",
                     partitioning={"mode": "naming", "pattern": "ev_%Y%m%d"},
                     retention={"keep_days": 1, "action": "drop"})
    result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    assert result.rows == 2  # the NULL-day row is not the day's
    try:
        remove_day(conn, spec, DAY, store)
    except RemovalRefused as exc:
        assert "outside" in str(exc) or "NULL" in str(exc)
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table.as_string(conn),)).fetchone()[0]
    assert exists, "the day table was dropped with a row (id 3, day NULL) that no archive holds"


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_columns_whose_names_were_swapped_after_archiving_are_not_proven(fmt, conn, schema, store, temp_dir):
    """After archiving, two columns of the same type swap names (RENAME a->tmp, b->a, tmp->b): by name,
    every row's a and b now differ from the archive's. Deep verification must not prove the archive equal
    to the source (retention would then delete the rows, and a restore into the original table puts each
    value into the other column)."""
    table = sql.Identifier(schema, "sw")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, a int, b int)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, 10, 20), (2, %s, 30, 40)").format(table), (DAY, DAY))
    spec = TableSpec(name=f"{schema}.sw", day_column="at", start_date=DAY, format=fmt,
                     compression="zstd")
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(sql.SQL("ALTER TABLE {} RENAME a TO tmp").format(table))
    conn.execute(sql.SQL("ALTER TABLE {} RENAME b TO a").format(table))
    conn.execute(sql.SQL("ALTER TABLE {} RENAME tmp TO b").format(table))
    # the source's rows by name: (1, a=20, b=10), (2, a=40, b=30); the archive's: (1, a=10, b=20), ...
    problems = deep_verify(conn, store, spec, DAY)
    comparison = compare_days(conn, spec, store, [DAY])[0]
    assert problems and comparison.result == "differs", (problems, comparison)


def test_restoring_into_the_original_after_a_name_swap_is_not_a_silent_column_swap(conn, schema, store, temp_dir):
    """End to end after the swap above: retention proves and deletes the day, a restore into the
    original table 'succeeds', and every row comes back with a and b exchanged."""
    from archive_pipeline.core.lifecycle import remove_day

    table = sql.Identifier(schema, "sw")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, a int, b int)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, 10, 20), (2, %s, 30, 40)").format(table), (DAY, DAY))
    spec = TableSpec(name=f"{schema}.sw", day_column="at", start_date=DAY, format="csv",
                     retention={"keep_days": 1, "action": "delete"})
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    for old, new in (("a", "tmp"), ("b", "a"), ("tmp", "b")):
        conn.execute(sql.SQL("ALTER TABLE {} RENAME {} TO {}").format(table, sql.Identifier(old), sql.Identifier(new)))
    before = _rows(conn, f"{schema}.sw")
    try:
        remove_day(conn, spec, DAY, store)
        restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir)
    except ArchiveError:
        return  # refused: fine
    assert _rows(conn, f"{schema}.sw") == before


@pytest.mark.parametrize("fmt", ["csv"])  # JSONL and Parquet: deep verification already raises
def test_a_proven_archive_restores_after_its_domains_check_was_tightened(fmt, conn, schema, store, temp_dir):
    """The source's rows satisfy the domain they were written under; a CHECK added later NOT VALID rejects
    some of them. The day still deep-verifies (CSV: proven, the values are equal) and then a restore of the
    proven archive into a new table must not fail (or deep verification must not call it proven)."""
    conn.execute(sql.SQL("CREATE DOMAIN {} AS int CHECK (VALUE < 100)").format(sql.Identifier(schema, "small")))
    table = sql.Identifier(schema, "dm")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, s {})").format(table, sql.Identifier(schema, "small")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, 50), (2, %s, 5)").format(table), (DAY, DAY))
    spec = TableSpec(name=f"{schema}.dm", day_column="at", start_date=DAY, format=fmt, compression="zstd")
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(sql.SQL("ALTER DOMAIN {} ADD CONSTRAINT lt10 CHECK (VALUE < 10) NOT VALID").format(
        sql.Identifier(schema, "small")))
    try:
        proven = deep_verify(conn, store, spec, DAY) == []
    except ArchiveError:
        proven = False
    try:
        restored = restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.dm_back", temp_dir=temp_dir)
    except ArchiveError as exc:
        assert not proven, f"deep verification proved the archive, and its restore then fails: {exc}"
        return
    assert restored.fingerprint_checked


def test_deep_verification_of_csv_after_a_composite_type_changed_raises_a_typed_error(conn, schema, store, temp_dir):
    """A composite type gains an attribute after archiving: the archived '(1,a)' no longer reads as the
    type. JSONL and Parquet say so with an ArchiveError naming the table and day; CSV's text proof let a
    bare psycopg error out of deep_verify (no table, day or remedy)."""
    conn.execute(sql.SQL("CREATE TYPE {} AS (x int, y text)").format(sql.Identifier(schema, "cp")))
    table = sql.Identifier(schema, "ct")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, c {})").format(table, sql.Identifier(schema, "cp")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, '(1,a)'), (2, %s, NULL)").format(table), (DAY, DAY))
    spec = TableSpec(name=f"{schema}.ct", day_column="at", start_date=DAY, format="csv", compression="zstd")
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(sql.SQL("ALTER TYPE {} ADD ATTRIBUTE z int").format(sql.Identifier(schema, "cp")))
    try:
        problems = deep_verify(conn, store, spec, DAY)
    except ArchiveError as exc:
        assert f"{schema}.ct" in str(exc) and "2024-03-10" in str(exc)
        return
    except psycopg.Error as exc:
        pytest.fail(f"untyped {type(exc).__name__} out of deep_verify: {exc}")
    assert problems


def test_retention_drop_under_row_level_security_loses_the_hidden_rows(pg, conn, schema, store, temp_dir):
    """Naming mode, retention drop, run by the day table's owner under FORCE ROW LEVEL SECURITY: the
    archive, its proof and the removal's re-check all see only the visible rows, and DROP TABLE then
    takes the hidden ones, which no archive holds."""
    from archive_pipeline.core.lifecycle import remove_day

    role = f"{schema}_owner"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        table = sql.Identifier(schema, f"ev_{DAY:%Y%m%d}")
        conn.execute(sql.SQL("GRANT ALL ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(role)))
        conn.execute(sql.SQL("CREATE TABLE {} (id int, tenant text)").format(table))
        conn.execute(sql.SQL("INSERT INTO {} SELECT g, CASE WHEN g % 2 = 0 THEN 'a' ELSE 'b' END "
                             "FROM generate_series(1, 10) g").format(table))
        conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(table, sql.Identifier(role)))
        conn.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(table))
        conn.execute(sql.SQL("ALTER TABLE {} FORCE ROW LEVEL SECURITY").format(table))
        conn.execute(sql.SQL("CREATE POLICY only_a ON {} USING (tenant = 'a')").format(table))
        spec = TableSpec(name=f"{schema}.ev", start_date=DAY, format="csv",
                         partitioning={"mode": "naming", "pattern": "ev_%Y%m%d"},
                         retention={"keep_days": 1, "action": "drop"})
        with psycopg.connect(pg.dsn_for(role), autocommit=True) as owner:
            try:
                archive_partition(owner, spec, DAY, store, temp_dir=temp_dir)
                remove_day(owner, spec, DAY, store)
            except ArchiveError:
                pass  # refused somewhere: nothing lost
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table.as_string(conn),)).fetchone()[0]
        assert exists, "the day table was dropped; its 5 rows hidden by row-level security were in no archive"
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_user_types_named_like_built_in_ones_are_not_taken_for_them(conn, schema, store, temp_dir, fmt):
    """A composite named uuid, enums named json and numeric, a domain named text over int: the archiver
    decides encodings by a column's type, and a user's type is not the built-in one of the same name
    (it failed with an Arrow cast error in Parquet and an SQL error in JSONL), nor is a restore target's
    enum named jsonb. Each round-trips, and restores into an existing table too."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TYPE {s}.uuid AS (a int, b text); CREATE TYPE {s}.json AS ENUM ('x', 'y'); "
                         "CREATE TYPE {s}.numeric AS ENUM ('one', 'two'); CREATE DOMAIN {s}.text AS int; "
                         "CREATE TYPE {s}.jsonb AS ENUM ('p', 'q')")
                 .format(s=s))
    conn.execute(sql.SQL("CREATE TABLE {s}.t (at timestamptz, u {s}.uuid, j {s}.json, n {s}.numeric, "
                         "ua {s}.uuid[], d {s}.text, real_uuid uuid, jb {s}.jsonb)").format(s=s))
    conn.execute(sql.SQL("INSERT INTO {s}.t VALUES ('2024-03-10 01:00+00', ROW(1, 'a'), 'x', 'two', "
                         "ARRAY[ROW(2, 'b')::{s}.uuid, NULL], 7, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'q'), "
                         "('2024-03-10 02:00+00', NULL, NULL, NULL, NULL, NULL, NULL, NULL)").format(s=s))
    conn.commit()
    table = describe_table(conn, f"{schema}.t", "at")
    assert [c.base_type for c in table.columns] == ["timestamptz", f"{schema}.uuid", f"{schema}.json",
                                                    f"{schema}.numeric", f"{schema}.uuid", "int4", "uuid",
                                                    f"{schema}.jsonb"]
    spec = TableSpec(name=f"{schema}.t", day_column="at", start_date=DAY, format=fmt, compression="zstd")
    archive_partition(conn, spec, DAY, store)
    assert deep_verify(conn, store, spec, DAY) == []
    restored = restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.t_back", temp_dir=temp_dir)
    assert restored.rows == 2
    assert _rows(conn, f"{schema}.t_back") == _rows(conn, f"{schema}.t")
    conn.execute(sql.SQL("TRUNCATE {s}.t_back").format(s=s))
    conn.commit()
    restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.t_back", temp_dir=temp_dir)
    assert _rows(conn, f"{schema}.t_back") == _rows(conn, f"{schema}.t")
