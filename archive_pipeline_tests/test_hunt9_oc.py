"""Hunt 9 (oc): restore and compare against hostile targets (triggers, rules, constraints, types, locks)."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.restore import RestoreConflictError, RestoreError, restore_day

DAY = dt.date(2024, 3, 10)


def _day_table(conn, schema: str, fmt: str = "csv") -> TableSpec:
    conn.execute(f"CREATE TABLE {schema}.ev (id int PRIMARY KEY, at timestamptz NOT NULL, v text)")
    conn.execute(f"INSERT INTO {schema}.ev SELECT g, %s::timestamptz + g * interval '1 minute', 'Value' || g "
                 "FROM generate_series(1, 20) g", (f"{DAY} 00:00+00",))
    return TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format=fmt, compression="none")


def _rows(conn, relation: str) -> list[tuple]:
    return conn.execute(f"SELECT id, at, v FROM {relation} ORDER BY id").fetchall()


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_deferred_constraint_trigger_that_changes_the_restored_rows_at_commit_is_not_proven(
        fmt, conn, schema, store, temp_dir):
    """A user restores 2024-03-10 of ev into an existing table ``copy`` (``LIKE ev``) that has a DEFERRABLE
    INITIALLY DEFERRED constraint trigger ``AFTER INSERT ... FOR EACH ROW`` which rewrites the inserted row
    (``UPDATE copy SET v = upper(v) WHERE id = NEW.id``). The restore loads, proves "fingerprint ... of the rows
    of 2024-03-10 in copy equals the manifest's" and commits; the deferred trigger fires at COMMIT, after the
    check, and every committed row's v differs from the archive. The result says proven, the table holds other
    rows. Should: the check sees the rows as they will be committed (SET CONSTRAINTS ALL IMMEDIATE before it),
    so the restore is rolled back naming the trigger, and copy stays empty."""
    spec = _day_table(conn, schema, fmt)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    expected = _rows(conn, f"{schema}.ev")
    conn.execute(f"CREATE TABLE {schema}.copy (LIKE {schema}.ev)")
    conn.execute(f"CREATE FUNCTION {schema}.shout() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                 f"UPDATE {schema}.copy SET v = upper(v) WHERE id = NEW.id; RETURN NULL; END $$")
    conn.execute(f"CREATE CONSTRAINT TRIGGER shout AFTER INSERT ON {schema}.copy DEFERRABLE INITIALLY DEFERRED "
                 f"FOR EACH ROW EXECUTE FUNCTION {schema}.shout()")
    try:
        result = restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.copy", temp_dir=temp_dir)
    except ArchiveError:
        assert _rows(conn, f"{schema}.copy") == []
        return
    assert _rows(conn, f"{schema}.copy") == expected, result.check


@pytest.mark.parametrize("into", ["existing", "original"])
def test_a_target_whose_double_column_is_real_is_not_reported_already_restored_exactly(
        into, conn, schema, store, temp_dir):
    """ev (x double precision) is archived for 2024-03-10 (x = 0.1, 0.2, ... 0.5). Since then either the user made a
    copy ``copy (x real)`` of the day (``INSERT ... SELECT`` from ev), or a migration retyped ev.x to ``real``. The
    user restores the day into that table (``into='existing'`` / ``'original'``) to get the archived values back.
    The restore answers "already restored: ... holds exactly its archived rows" with fingerprint_checked=True and
    loads nothing, yet the table holds 0.10000000149011612 where the archive holds 0.1. README (Where to): a
    numeric/double value read into a column of another binary floating-point type "may print the same and still
    differ ... so such a target is refused before anything is loaded". Cause: restore_archive asks _loaded_before
    (a text fingerprint, which prints real 0.1 and double 0.1 alike) before _refuse_approximation. Should: refuse
    the target naming column x, as a load into it is refused; never claim it holds the archived rows exactly."""
    conn.execute(f"CREATE TABLE {schema}.ev (id int PRIMARY KEY, at date NOT NULL, x double precision)")
    conn.execute(f"INSERT INTO {schema}.ev SELECT g, %s, g / 10.0 FROM generate_series(1, 5) g", (DAY,))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv", compression="none")
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    if into == "existing":
        conn.execute(f"CREATE TABLE {schema}.copy (id int PRIMARY KEY, at date NOT NULL, x real)")
        conn.execute(f"INSERT INTO {schema}.copy SELECT * FROM {schema}.ev")
        target = f"{schema}.copy"
    else:
        conn.execute(f"ALTER TABLE {schema}.ev ALTER COLUMN x TYPE real")
        target = None
    with pytest.raises(RestoreError) as caught:
        result = restore_day(conn, store, spec, DAY, into=into, target=target, temp_dir=temp_dir)
        pytest.fail(f"restored: {result.check} (fingerprint_checked={result.fingerprint_checked})")
    assert "x" in str(caught.value)


def test_a_deferrable_key_that_finds_a_row_already_there_is_a_conflict_not_a_constraint_to_relax(
        conn, schema, store, temp_dir):
    """A user restores 2024-03-10 of ev into ``copy``, whose primary key is ``DEFERRABLE INITIALLY DEFERRED`` (common
    where rows are moved around in one transaction), and which holds row 3 already, moved to 2024-03-11 since the
    day was archived. With an immediate key the restore fails as RestoreConflictError ("rows of the archive ...
    already exist in copy (Key (id)=(3) already exists.) ..."). With the deferred key the check passes (the day's
    rows are the archive's), the violation surfaces at COMMIT, outside the load's handling (_load's
    UniqueViolation branch, _unique_violation), and the user is told "a value breaks a constraint (a CHECK, NOT
    NULL, unique key or domain constraint, perhaps added since the day was archived)", remedy "load into a table
    without that constraint ... or relax the constraint while the day is restored": following it (dropping the
    key) puts id 3 in twice. Should: a RestoreConflictError saying rows of the archive already exist in copy,
    without suggesting to relax the key (checking deferred constraints before the day's check, SET CONSTRAINTS ALL
    IMMEDIATE, would route it through the existing handling)."""
    spec = _day_table(conn, schema)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(f"CREATE TABLE {schema}.copy (id int, at timestamptz NOT NULL, v text, "
                 "PRIMARY KEY (id) DEFERRABLE INITIALLY DEFERRED)")
    conn.execute(f"INSERT INTO {schema}.copy VALUES (3, '2024-03-11 00:03+00', 'Value3')")
    before = _rows(conn, f"{schema}.copy")
    with pytest.raises(ArchiveError) as caught:
        restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.copy", temp_dir=temp_dir)
    assert _rows(conn, f"{schema}.copy") == before
    said = f"{caught.value} / remedy: {caught.value.remedy}"
    assert isinstance(caught.value, RestoreConflictError), said
    assert "relax the constraint" not in said, said


def test_a_target_whose_composite_fields_were_swapped_is_not_reported_already_restored(conn, schema, store, temp_dir):
    """ev (id, at, p pair) with ``pair AS (a int, b int)`` is archived for 2024-03-10, p = (1,2). Since then a migration
    swapped the fields' names (``ALTER TYPE pair RENAME ATTRIBUTE a TO t, b TO a, t TO b``): the stored (1,2) now reads
    b=1, a=2. The user restores the day into the original table. The restore answers "already restored: ev holds
    exactly its archived rows" (the composite's text is still ``(1,2)``), although README (Where to) says a target
    whose composite "renamed or reordered a field since is refused naming it (the archived values would go into
    other fields)", and a load into it is refused so. Cause: _loaded_before runs before _refuse_approximation /
    _refuse_changed_shapes in restore_archive. Should: refuse naming the type's change, never claim the rows exact."""
    conn.execute(f"CREATE TYPE {schema}.pair AS (a int, b int)")
    conn.execute(f"CREATE TABLE {schema}.ev (id int PRIMARY KEY, at date NOT NULL, p {schema}.pair)")
    conn.execute(f"INSERT INTO {schema}.ev SELECT g, %s, ROW(g, g + 1)::{schema}.pair FROM generate_series(1, 5) g", (DAY,))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv", compression="none")
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    for step in ("a TO t", "b TO a", "t TO b"):
        conn.execute(f"ALTER TYPE {schema}.pair RENAME ATTRIBUTE {step}")
    with pytest.raises(RestoreError) as caught:
        result = restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir)
        pytest.fail(f"restored: {result.check} (fingerprint_checked={result.fingerprint_checked})")
    assert "pair" in str(caught.value)


def test_a_jsonl_restore_through_a_view_with_check_option_names_the_check_option(conn, schema, store, temp_dir):
    """A user restores a JSONL day of ev into ``copyv``, an updatable view over ``copy`` (``WHERE id < 15 WITH CHECK
    OPTION``; README: an updatable view takes a JSONL restore). Rows 15..20 are outside the view, so PostgreSQL
    refuses them. The restore fails with "failed: the database reported an error (WithCheckOptionViolation: new row
    violates check option for view "copyv" ...)", remedy "read the message; fix the cause and restore again": no
    cause of ours, no remedy. The same view without CHECK OPTION is named as the cause ("copyv is a view: it shows
    what its query selects ..."), remedy "restore into the view's base table, or into a new table". Should: name the
    view's check option as what refused archived rows, and the same remedy (restore into the base table or a new
    table); copy stays empty."""
    spec = _day_table(conn, schema, "jsonl")
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(f"CREATE TABLE {schema}.copy (LIKE {schema}.ev)")
    conn.execute(f"CREATE VIEW {schema}.copyv AS SELECT * FROM {schema}.copy WHERE id < 15 WITH CHECK OPTION")
    with pytest.raises(RestoreError) as caught:
        restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.copyv", temp_dir=temp_dir)
    assert _rows(conn, f"{schema}.copy") == []
    said = f"{caught.value} / remedy: {caught.value.remedy}"
    assert "read the message" not in said and "the database reported an error" not in said, said
    assert "base table" in said or "into='new'" in said, said


def test_a_jsonl_restore_into_a_table_under_row_security_says_restore_as_not_archive_with(
        pg, conn, schema, store, temp_dir):
    """A role that may SELECT and INSERT ``copy`` (row-level security on, a policy letting it insert any row and see
    rows id < 10) restores a JSONL day of ev into copy. The INSERT goes in, the check (row_security off) is refused,
    the day is rolled back: right. But the error says "row-level security would hide rows of the table from this
    role (an archive, its fingerprint and a removal must see every row ...)", remedy "archive with a role that
    bypasses row-level security ...": the archive's words (errors._ROW_SECURITY) for a restore. The same restore of
    a CSV day is told as errors._ROW_SECURITY_TARGET: "the target table has row-level security ...", remedy
    "restore as the table's owner ... or restore into a new table". Should: the restore's cause and remedy, naming
    the target, whatever the format."""
    spec = _day_table(conn, schema, "jsonl")
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    role = f"{schema}_restorer"
    conn.execute(f"CREATE ROLE {role} LOGIN; GRANT USAGE ON SCHEMA {schema} TO {role}")
    try:
        conn.execute(f"CREATE TABLE {schema}.copy (LIKE {schema}.ev)")
        conn.execute(f"GRANT SELECT, INSERT ON {schema}.copy TO {role}")
        conn.execute(f"ALTER TABLE {schema}.copy ENABLE ROW LEVEL SECURITY")
        conn.execute(f"CREATE POLICY ins ON {schema}.copy FOR INSERT WITH CHECK (true)")
        conn.execute(f"CREATE POLICY sel ON {schema}.copy FOR SELECT USING (id < 10)")
        with psycopg.connect(pg.dsn_for(role), autocommit=True) as restoring:
            with pytest.raises(RestoreError) as caught:
                restore_day(restoring, store, spec, DAY, into="existing", target=f"{schema}.copy", temp_dir=temp_dir)
        assert _rows(conn, f"{schema}.copy") == []
        said = f"{caught.value} / remedy: {caught.value.remedy}"
        assert "archive with a role" not in said, said
        assert "restore" in (caught.value.remedy or ""), said
    finally:
        conn.execute(f"DROP OWNED BY {role} CASCADE; DROP ROLE {role}")


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_naming_mode_day_restored_into_a_table_whose_after_trigger_rewrites_rows_is_not_proven(
        fmt, conn, schema, store, temp_dir):
    """A naming-mode table ``log`` (day tables ``log_YYYYMMDD``, no day column). The user restores 2024-03-10 into
    ``all_logs``, an existing table of theirs that holds other days, which has an ordinary ``AFTER INSERT ... FOR
    EACH ROW`` trigger rewriting the inserted row (``UPDATE all_logs SET note = upper(note) WHERE id = NEW.id``, a
    normalising trigger). Without a day column the check is the fingerprint of the INSERT's RETURNING rows
    (_insert_fingerprinted), and RETURNING shows each row before AFTER triggers ran: the restore reports
    "fingerprint ... of the day's rows the restore loaded into all_logs equals the manifest's" and commits rows
    whose note differs from the archive's. Should: the rows checked as the target holds them after the statement
    (its AFTER triggers included), so the restore is rolled back naming the trigger, all_logs as it was."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.log (id int, note text)").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.log_20240310 () INHERITS ({}.log)").format(s, s))
    conn.execute(sql.SQL("INSERT INTO {}.log_20240310 SELECT g, 'note ' || g FROM generate_series(1, 10) g").format(s))
    spec = TableSpec(name=f"{schema}.log", start_date=DAY, format=fmt, compression="none",
                     partitioning={"mode": "naming", "pattern": "log_%Y%m%d"})
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    expected = conn.execute(sql.SQL("SELECT id, note FROM {}.log_20240310 ORDER BY id").format(s)).fetchall()
    conn.execute(sql.SQL("CREATE TABLE {}.all_logs (id int, note text)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.all_logs VALUES (100, 'an older day')").format(s))
    conn.execute(sql.SQL("CREATE FUNCTION {}.shout() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                         "UPDATE {}.all_logs SET note = upper(note) WHERE id = NEW.id AND note <> upper(note); "
                         "RETURN NULL; END $$").format(s, s))
    conn.execute(sql.SQL("CREATE TRIGGER shout AFTER INSERT ON {}.all_logs FOR EACH ROW EXECUTE FUNCTION {}.shout()"
                         ).format(s, s))
    try:
        result = restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.all_logs", temp_dir=temp_dir)
    except ArchiveError:
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}.all_logs").format(s)).fetchone()[0] == 1
        return
    held = conn.execute(sql.SQL("SELECT id, note FROM {}.all_logs WHERE id < 100 ORDER BY id").format(s)).fetchall()
    assert held == expected, result.check
