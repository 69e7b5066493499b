"""Hunt 8 (ns): adversarial review of cb19d19 (composite_signature/same_shapes by column number, the removal's
type-change refusal before the fingerprint, NOTHING_TO_DO/NEEDS_OVERWRITE carried through FAILED_FOR_GOOD)."""

from __future__ import annotations

import datetime as dt

import pytest

from archive_pipeline.core import archive as archive_module
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError

DAY = dt.date(2024, 3, 10)


def _table(conn, schema: str) -> None:
    """ev(id int, at timestamp, c comp) with comp (a int, b text), three rows on DAY."""
    conn.execute(f"CREATE TYPE {schema}.comp AS (a int, b text)")
    conn.execute(f"CREATE TABLE {schema}.ev (id int, at timestamp, c {schema}.comp)")
    conn.execute(f"INSERT INTO {schema}.ev SELECT g, %s::timestamp + g * interval '1 hour', "
                 f"ROW(g, 'q')::{schema}.comp FROM generate_series(1, 3) g", (f"{DAY}",))


def _after_read(monkeypatch, pg, statement: str) -> None:
    """Commit ``statement`` in another session the moment the day's read transaction has ended (what a migration
    that waited for the read's locks does)."""
    real = archive_module.same_printed_names

    def migrated_then(*args):
        with pg.connect() as other:
            other.execute(statement)
        return real(*args)

    monkeypatch.setattr(archive_module, "same_printed_names", migrated_then)


@pytest.mark.parametrize("setup,migration", [
    ("CREATE TYPE {s}.comp2 AS (a int, b text)", "ALTER TABLE {s}.ev ALTER COLUMN c TYPE {s}.comp2 USING "
                                                "ROW((c).a, (c).b)::{s}.comp2"),
    ("CREATE DOMAIN {s}.compd AS {s}.comp", "ALTER TABLE {s}.ev ALTER COLUMN c TYPE {s}.compd"),
])
def test_a_column_retyped_by_a_migration_waiting_for_the_read_is_not_blamed_on_a_composite(
        setup, migration, pg, conn, schema, store, temp_dir, monkeypatch):
    """A user archives a day of ``ev`` (a column ``c`` of composite type ``comp``). A migration retypes the column,
    ``ALTER TABLE ev ALTER COLUMN c TYPE comp2`` (another composite with the same fields) or ``TYPE compd`` (a
    domain over comp). It needs the table's ACCESS EXCLUSIVE lock, so it waits for the day's read and commits the
    moment the read's transaction ends: the rows were read and fingerprinted consistently, under the snapshot's
    type. The run fails anyway: "a composite type inside column(s) 'c' of ev was altered (ALTER TYPE ... ADD, DROP
    or ALTER ATTRIBUTE) while the day was read ... alter types outside the table's archive runs": no type was
    altered. This commit made a column renamed or dropped by such a migration no type change; a column retyped by
    one is the same case and should not fail the day (or at least not name an ALTER TYPE that never happened).
    (Cause: ``source.same_shapes`` compares ``composite_signature`` per column number, whose first node is the
    column's own type oid: a column whose type was replaced by ALTER TABLE reads as a composite altered.)"""
    _table(conn, schema)
    conn.execute(setup.format(s=schema))  # (after the table: a domain over comp needs comp)
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv", compression="none")
    _after_read(monkeypatch, pg, migration.format(s=schema))
    try:
        result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    except ArchiveError as exc:
        assert "ALTER TYPE" not in str(exc) and "composite" not in str(exc), str(exc)
        return
    assert result.rows == 3


def test_a_view_with_a_whole_row_column_is_not_failed_by_a_column_added_to_its_table_after_the_read(
        pg, conn, schema, store, temp_dir, monkeypatch):
    """A user archives a view ``v AS SELECT e.id, e.at, e AS whole FROM ev e`` (its column ``whole`` is of ev's row
    type). A migration ``ALTER TABLE ev ADD COLUMN note text`` waits for the read (the view's read holds ev's
    ACCESS SHARE lock) and commits when the read's transaction ends: the day was read consistently. The run fails,
    "a composite type inside column(s) 'whole' of v was altered (ALTER TYPE ...) while the day was read": no type
    was altered during the read. (Cause: ``source.same_shapes`` re-reads the table's row type after the read;
    a change that waited for the read's locks cannot be told from one during it.)"""
    _table(conn, schema)
    conn.execute(f"CREATE VIEW {schema}.v AS SELECT e.id, e.at, e AS whole FROM {schema}.ev e")
    spec = TableSpec(name=f"{schema}.v", day_column="at", start_date=DAY, format="csv", compression="none")
    _after_read(monkeypatch, pg, f"ALTER TABLE {schema}.ev ADD COLUMN note text")
    try:
        result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    except ArchiveError as exc:
        assert "ALTER TYPE" not in str(exc), str(exc)
        return
    assert result.rows == 3


def test_a_composite_field_added_during_the_read_and_dropped_again_is_not_archived_green(
        pg, conn, schema, store, s3_client, bucket, temp_dir, monkeypatch):
    """A user archives a day of ``ev`` (a column ``c`` of composite type ``comp (a int, b text)``). While the day is
    read, a deploy commits ``ALTER TYPE comp ADD ATTRIBUTE z int`` (ALTER TYPE takes no lock the read holds) and,
    before the run's check after the read, its rollback commits ``ALTER TYPE comp DROP ATTRIBUTE z``. The
    fingerprint hashed ``(1,q)``, the COPY wrote ``(1,q,)`` (three fields); the run publishes green an archive whose
    rows are not the snapshot's, under a recorded shape of (a, b): restoring it fails (a malformed record: too
    many columns). It should fail the day, retryable, as it does when the field is still there after the read.
    (Cause: ``source.composite_signature`` lists only the live fields' ``attnum:atttypid``; a field added and
    dropped again leaves the same live fields, only a dropped attribute (or a higher ``relnatts``) behind.)"""
    from archive_pipeline_tests.helpers import decompress, download, read_csv

    _table(conn, schema)
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv", compression="none")
    real_read = archive_module.refuse_unrestorable

    def added(table):  # after the fingerprint, before the day's rows are read
        with pg.connect() as other:
            other.execute(f"ALTER TYPE {schema}.comp ADD ATTRIBUTE z int")
        return real_read(table)

    monkeypatch.setattr(archive_module, "refuse_unrestorable", added)
    _after_read(monkeypatch, pg, f"ALTER TYPE {schema}.comp DROP ATTRIBUTE z")
    try:
        result = archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    except ArchiveError as exc:
        assert exc.retryable and "comp" in str(exc), str(exc)
        return
    values = [r["c"] for r in read_csv(decompress(download(s3_client, bucket, result.key), "none"))]
    assert values == ["(1,q)", "(2,q)", "(3,q)"], f"archived green with {values} under a fingerprint of (1,q) ..."


def test_a_removal_under_a_path_that_shadows_a_builtin_type_name_is_not_refused_as_a_type_change(
        conn, schema, store, temp_dir):
    """A role whose search_path lists its own schema before pg_catalog (``SET search_path = s, pg_catalog``), that
    schema holding a domain named ``inet`` (the archive promises PostgreSQL's own names on such a path). ``ev`` has
    a column ``c`` of ``comp (a int, b pg_catalog.inet)``; retention action 'delete'. The day is archived (its
    shape records field b as ``inet``) and nothing changes afterwards. The removal is refused: "a type inside its
    columns changed since the day was archived and proven: column 'c': at field b is pg_catalog.inet now, inet
    when archived (3 rows now, 3 archived)" and advises archiving again with overwrite, which records the same
    shape (the archive reads it pg_catalog first): the day can never be removed. It should be removed (no type and
    no row changed). (Cause: since this commit ``lifecycle._recheck_and_remove`` asks ``shape_changes`` whatever
    the fingerprint says, against ``table.columns`` described under the session's own path, where
    ``format_type`` qualifies a shadowed built-in type; the archive described it pg_catalog first.)"""
    from archive_pipeline.core.lifecycle import remove_day

    s = schema
    conn.execute(f"CREATE TYPE {s}.comp AS (a int, b pg_catalog.inet)")
    conn.execute(f"CREATE TABLE {s}.ev (id int, at timestamp, c {s}.comp)")
    conn.execute(f"INSERT INTO {s}.ev SELECT g, %s::timestamp + g * interval '1 hour', "
                 f"ROW(g, '10.0.0.1')::{s}.comp FROM generate_series(1, 3) g", (f"{DAY}",))
    conn.execute(f"CREATE DOMAIN {s}.inet AS text")
    conn.execute(f'SET search_path = "{s}", pg_catalog')
    spec = TableSpec(name=f"{s}.ev", day_column="at", start_date=DAY, format="csv", compression="none",
                     retention={"keep_days": 30, "action": "delete"})
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 3
    remove_day(conn, spec, DAY, store, temp_dir=str(temp_dir))
    assert conn.execute(f"SELECT count(*) FROM {s}.ev").fetchone()[0] == 0


def test_a_field_holding_a_nested_composite_renamed_during_the_read_is_not_called_an_alteration(
        pg, conn, schema, store, temp_dir, monkeypatch):
    """A user archives a day of ``ev`` (a column ``c`` of ``comp (a int, b inner1)``, ``inner1 (x int, y text)``).
    During the read a migration commits ``ALTER TYPE comp RENAME ATTRIBUTE b TO bb``. A composite prints
    positionally: every row reads the same as the fingerprint hashed, and the manifest records the snapshot's
    shape, which is what the rows were read under. The same rename of a field of a plain type (``a`` to ``aa``,
    or inner1's ``y``) leaves the run green, as this commit means (fields compared by number and type); renaming
    ``b`` fails the day, "a composite type inside column(s) 'c' ... was altered (ALTER TYPE ... ADD, DROP or ALTER
    ATTRIBUTE) while the day was read: its rows may print other fields than its fingerprint": no field was added,
    dropped or retyped. It should archive green, as for the other renames. (Cause: ``source._SIGNATURE_QUERY``
    keys each composite by ``w.steps``, the route of field *names* to it, so a rename of a field on the way to a
    nested composite changes the signature.)"""
    s = schema
    conn.execute(f"CREATE TYPE {s}.inner1 AS (x int, y text)")
    conn.execute(f"CREATE TYPE {s}.comp AS (a int, b {s}.inner1)")
    conn.execute(f"CREATE TABLE {s}.ev (id int, at timestamp, c {s}.comp)")
    conn.execute(f"INSERT INTO {s}.ev SELECT g, %s::timestamp + g * interval '1 hour', "
                 f"ROW(g, ROW(g, 'q'))::{s}.comp FROM generate_series(1, 3) g", (f"{DAY}",))
    spec = TableSpec(name=f"{s}.ev", day_column="at", start_date=DAY, format="csv", compression="none")
    real = archive_module.refuse_unrestorable

    def renamed(table):  # after the fingerprint, before the day's rows are read
        with pg.connect() as other:
            other.execute(f"ALTER TYPE {s}.comp RENAME ATTRIBUTE b TO bb")
        return real(table)

    monkeypatch.setattr(archive_module, "refuse_unrestorable", renamed)
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 3
