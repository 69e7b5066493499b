"""Hunt 6 (ld): restore (and the loads of compare / deep verification) into targets that differ from the
archived table. Each test asserts the correct behaviour and fails on the current code because of a bug."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.restore import restore_day

DAY = dt.date(2024, 3, 10)


def _archived(conn, schema: str, store, temp_dir, fmt: str = "csv") -> TableSpec:
    """``<schema>.src (id int, at date, v text)``: six rows of DAY, archived."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.src (id int, at date, v text)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.src SELECT g, %s, 'v' || g FROM generate_series(1, 6) g").format(s), (DAY,))
    spec = TableSpec(name=f"{schema}.src", day_column="at", start_date=DAY, format=fmt)
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 6
    return spec


def _count(conn, schema: str, table: str) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))).fetchone()[0]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_skip_restore_into_a_target_whose_trigger_drops_a_row_names_the_trigger_not_skipped_keys(
        conn, schema, store, temp_dir, fmt):
    """A user restores a day with ``on_conflict="skip"`` into an EMPTY table of theirs
    (``into="existing"``) that has a primary key and a BEFORE INSERT trigger which drops some rows
    (``RETURN NULL`` for id 2: a filter the application put there). The restore is rightly rolled back, but
    it says "Skipping the rows whose key was taken left out 1 archived row(s) ... that is the difference; else
    the target already held other rows of the day", with the remedy to find the rows whose keys the archived
    rows have: the target was empty, no key was taken, and the trigger that dropped the row is not named.
    (With ``on_conflict="fail"`` the same target names "trigger dr on INSERT" and says to disable it; the
    README: "A restore that fails or is rolled back names ... its INSERT triggers and rules".) It should name
    the trigger as the cause (``_check``'s ``skipped`` branch counts rows - inserted as skipped keys, but a
    row a BEFORE trigger dropped is not inserted either, and that branch never adds ``_drift_explained``)."""
    spec = _archived(conn, schema, store, temp_dir, fmt)
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.tg (id int PRIMARY KEY, at date, v text)").format(s))
    conn.execute(sql.SQL("CREATE FUNCTION {}.dr() RETURNS trigger LANGUAGE plpgsql AS "
                         "$$BEGIN IF NEW.id = 2 THEN RETURN NULL; END IF; RETURN NEW; END$$").format(s))
    conn.execute(sql.SQL("CREATE TRIGGER dr BEFORE INSERT ON {}.tg FOR EACH ROW EXECUTE FUNCTION {}.dr()").format(s, s))
    with pytest.raises(ArchiveError) as caught:
        restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.tg", on_conflict="skip",
                    temp_dir=temp_dir)
    said = f"{caught.value} / remedy: {caught.value.remedy}"
    assert _count(conn, schema, "tg") == 0, said  # rolled back
    assert "trigger dr" in said, said
    assert "whose key was taken" not in said, said


@pytest.mark.parametrize("taken_by", ["CREATE TYPE {s}.restored AS ENUM ('a')", "CREATE DOMAIN {s}.restored AS int"])
def test_restore_into_a_new_table_whose_name_a_type_holds_says_so_not_report_it(conn, schema, store, temp_dir,
                                                                                   taken_by):
    """A user restores a day into a new table (``restore --into new --target s.restored``) in a schema that
    has an enum or a domain named ``restored`` (a table's row type shares the namespace of types, so
    PostgreSQL refuses ``CREATE TABLE s.restored``: 'type "restored" already exists'). The restore fails with
    "the server rejected the archiver's SQL (DuplicateObject ...)", remedy "check the table definition; if it
    looks right, report it with this message": an internal bug to report, for a name the user chose. It should
    say that the name is taken by a type of that schema and to choose another name (as it says for a table of
    that name: "already exists ... or choose a new name"). Cause: ``_resolve_target``'s ``_exists`` looks only in
    pg_class; ``CREATE TABLE``'s DuplicateObject reaches the generic classification."""
    spec = _archived(conn, schema, store, temp_dir)
    conn.execute(sql.SQL(taken_by).format(s=sql.Identifier(schema)))
    with pytest.raises(ArchiveError) as caught:
        restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.restored", temp_dir=temp_dir)
    said = f"{caught.value} / remedy: {caught.value.remedy}"
    assert "report it" not in said and "rejected the archiver's SQL" not in said, said
    assert "name" in (caught.value.remedy or "") or "choose" in said, said


def test_restore_into_an_existing_sequence_is_refused_as_not_a_table(conn, schema, store, temp_dir):
    """A user mistypes the target of ``restore --into existing`` and names a sequence (``s.tg`` is the
    sequence of an id column, say). The restore says "the table, column or schema does not exist (any more)
    (UndefinedColumn: column "id" of relation "tg" does not exist)", remedy "the target must have every column
    the archive has: add the one named": advice to add columns to a sequence. For an index, a composite type or
    a materialized view the same restore says "the target is not a table ... restore into a table". It should
    say the same of a sequence (found before loading: ``_resolve_target`` checks only that a pg_class row of that
    name exists, of any relkind). Nothing is changed either way."""
    spec = _archived(conn, schema, store, temp_dir)
    conn.execute(sql.SQL("CREATE SEQUENCE {}.tg").format(sql.Identifier(schema)))
    with pytest.raises(ArchiveError) as caught:
        restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.tg", temp_dir=temp_dir)
    said = f"{caught.value} / remedy: {caught.value.remedy}"
    assert "add the one named" not in said, said
    assert "not a table" in said and "sequence" in said, said


@pytest.mark.parametrize("other", ["CREATE SEQUENCE {s}.tg", "CREATE INDEX tg ON {s}.src (id)"])
def test_restore_into_a_new_table_named_as_an_index_or_sequence_does_not_say_to_restore_into_it(
        conn, schema, store, temp_dir, other):
    """A user restores into a new table whose name an index or a sequence of the schema already has. The
    restore is refused with "s.tg already exists; restore into it with into='existing', or choose a new
    name", and no remedy: following the first half restores into an index or a sequence, which fails again
    ("is an index" / a missing column). It should say what ``s.tg`` is (an index, a sequence: not a table) and
    that a new name is needed, with that as the remedy (``_resolve_target``: ``_exists`` is any pg_class row)."""
    spec = _archived(conn, schema, store, temp_dir)
    conn.execute(sql.SQL(other).format(s=sql.Identifier(schema)))
    with pytest.raises(ArchiveError) as caught:
        restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.tg", temp_dir=temp_dir)
    said = f"{caught.value} / remedy: {caught.value.remedy}"
    assert "into='existing'" not in said, said
    assert caught.value.remedy and ("index" in said or "sequence" in said), said


_RAISING_TARGETS = {
    "check": ("CREATE TABLE {s}.tg (id int, at date, v text CONSTRAINT ratio CHECK (100 / (id - 3) <> 7))",
              ("ratio", "CHECK")),
    "generated": ("CREATE TABLE {s}.tg (id int, at date, v text, g int GENERATED ALWAYS AS (100 / (id - 3)) STORED)",
                  ("generated",)),
    "default": ("CREATE TABLE {s}.tg (id int, at date, v text, d int DEFAULT (1 / 0))", ("default", "DEFAULT")),
}


@pytest.mark.parametrize("on_conflict", ["fail", "skip"])
@pytest.mark.parametrize("kind", list(_RAISING_TARGETS))
def test_a_targets_own_expression_that_raises_is_named_not_a_type_or_the_archive_format(
        conn, schema, store, temp_dir, kind, on_conflict):
    """A user restores a day into a table of theirs (``into="existing"``) whose own expression raises a data
    error on the archived rows: a CHECK constraint ``CHECK (100 / (id - 3) <> 7)``, a column the target
    computes itself (``GENERATED ALWAYS AS (100 / (id - 3)) STORED``, not an archived column) or a column
    DEFAULT that fails; the archived row id=3 (or every row) makes it divide by zero. Nothing is restored,
    rightly, but with ``on_conflict="fail"`` the restore says "a type of tg as this database defines it refuses
    it (an enum lacking one of the archived labels ...)", remedy "ALTER TYPE ... ADD VALUE, or restore into a
    table whose column has the type's base type or text", and with ``"skip"`` "a value in the day cannot be read
    or converted", remedy "fix the offending rows, or archive the table in a format that keeps the value as
    text": archive-time advice; neither names the constraint, the generated column or the default that
    raised. It should name the target's expression as the cause (its CHECK constraint / generated column /
    default) and say to restore into a new table or change that expression, as a raising trigger is named
    (``_load``'s ArchiveCorruptError branch reads any DataError as a type refusing a value; the stage path's
    INSERT error reaches ``classify``'s source-side wording)."""
    spec = _archived(conn, schema, store, temp_dir)
    ddl, named = _RAISING_TARGETS[kind]
    conn.execute(sql.SQL(ddl).format(s=sql.Identifier(schema)))
    if on_conflict == "skip":
        conn.execute(sql.SQL("CREATE UNIQUE INDEX ON {}.tg (id)").format(sql.Identifier(schema)))
    with pytest.raises(ArchiveError) as caught:
        restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.tg", on_conflict=on_conflict,
                    temp_dir=temp_dir)
    said = f"{caught.value} / remedy: {caught.value.remedy}"
    assert _count(conn, schema, "tg") == 0, said
    assert "ALTER TYPE" not in said and "archive the table in a format" not in said, said
    assert any(word in str(caught.value) for word in named), said


def test_a_jsonl_restore_into_a_view_that_hides_some_rows_names_the_view_not_an_altered_archive(
        conn, schema, store, temp_dir):
    """A user restores a JSONL day ``into="existing"`` naming a view of theirs, ``CREATE VIEW s.recent AS
    SELECT * FROM s.base WHERE id < 4`` (auto-updatable: JSONL's INSERT goes through it into ``base``; a CSV or
    Parquet restore into a view is refused as "the target is not a table"). Rows 4..6 go into ``base`` but are
    not seen through the view, so the check is rolled back (rightly), saying "The archive does not hold the
    rows it was proven to hold (altered after it was written), or the target already held other rows of the
    day", with no remedy: the archive is intact and the target held nothing. It should name the cause, that
    the target is a view (whose rows are not all the rows inserted through it), and say to restore into a table
    (its base table, or a new one); ``_drift_explained`` looks at column types, triggers and rules only."""
    spec = _archived(conn, schema, store, temp_dir, "jsonl")
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.base (id int, at date, v text)").format(s))
    conn.execute(sql.SQL("CREATE VIEW {}.recent AS SELECT * FROM {}.base WHERE id < 4").format(s, s))
    with pytest.raises(ArchiveError) as caught:
        restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.recent", temp_dir=temp_dir)
    said = f"{caught.value} / remedy: {caught.value.remedy}"
    assert _count(conn, schema, "base") == 0, said
    assert "altered after it was written" not in said, said
    assert "view" in str(caught.value) and caught.value.remedy, said
