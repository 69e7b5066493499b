"""Hunt 23 (bc): restore into hostile target tables (core/restore.py, cli.py restore).

Held up (probed against real PostgreSQL and S3, not kept as tests): into an existing table with a conditional
``DO INSTEAD NOTHING`` rule (CSV's COPY ignores it and restores exactly, saying so; JSONL's INSERT is rolled back
naming the rule), a BEFORE INSERT trigger returning NULL for a row or upper-casing a value (rolled back, the
trigger named), an AFTER row or statement trigger that raises (named), GENERATED ALWAYS AS IDENTITY (restored, its
sequence advanced), a GENERATED ... STORED column computing other values (rolled back, named), column defaults that
differ (archived NULLs stay NULL), a domain whose CHECK refuses an archived value (named), a partitioned target
without the day's partition (named, with the CREATE to run) or with a DEFAULT partition catching the rows (exact),
an inheritance child already holding an archived row (rolled back, "held before"), a column dropped and re-added
(attnum differs: exact), row-level security under FORCE for the owning role (COPY refused as the target's; a WITH
CHECK refusal named with its policy; a SELECT policy refused by the check with row_security off; without FORCE:
exact), an EXCLUDE constraint meeting another day's row, a schema and table with non-ASCII names and a space (new
and existing, the restore mark and the re-run's "already restored"), and a concurrent writer inserting an
archived key while the load waits on it (committed: a conflict, or with skip a rollback naming the skipped row).
"""

from __future__ import annotations

import datetime as dt
import json

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec, parse_config
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.restore import restore_day
from archive_pipeline_tests.test_hunt17_wf import _env, _events, cli

DAY = dt.date(2024, 3, 10)


def _archived(conn, schema: str, store, temp_dir, fmt: str, rows: str) -> TableSpec:
    """``<schema>.ev (id int PRIMARY KEY, at timestamptz, v text)`` holding ``rows`` (all of DAY), archived."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int PRIMARY KEY, at timestamptz NOT NULL, v text)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES " + rows).format(s))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01", format=fmt, compression="none")
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == rows.count("(")
    return spec


def test_archived_rows_colliding_under_a_plain_unique_index_are_not_called_rows_already_in_the_target(
        conn, schema, store, temp_dir):
    """Scenario: the archived day holds rows (1, 'a'), (2, 'b'), (3, 'b'): the source never had a unique key on
    ``v``. The user restores it into an existing table ``tg`` of theirs that holds a row of another day,
    (9, '2024-03-09', 'z'), and has ``CREATE UNIQUE INDEX tg_v ON tg (v)`` (the common way to add uniqueness: an
    index, not a constraint). No row of tg has v = 'b'; the archived rows collide among themselves.

    Now: the load fails with a UniqueViolation on tg_v; restore._unique_violation sees that tg holds rows, so asks
    _holds_key whether one of them has the refused key. _holds_key looks the index's columns up in pg_constraint
    only (``c.conname = %s AND c.contype IN ('u', 'p', 'x')``): a unique index made by CREATE UNIQUE INDEX has no
    pg_constraint row, so ``columns`` is empty and it answers True ("cannot be told"), and the user reads "rows of
    the archive of ev for 2024-03-10 already exist in tg (Key (v)=(b) already exists.) ... Use on_conflict='skip' to
    add only the missing rows". Following that advice skips the second 'b' row and is rolled back. The same target
    with ``ADD CONSTRAINT tg_v UNIQUE (v)`` gets the right words ("tg held no row of that key, and the archived rows
    break its constraint tg_v among themselves").

    Should: a unique index is looked up as a constraint is: its columns from pg_index.indkey (joined through
    pg_constraint.conindid, or pg_class by the index's name when no constraint owns it); only an expression index
    stays "cannot be told". Then the message says the archived rows break the index among themselves, without the
    advice to skip."""
    spec = _archived(conn, schema, store, temp_dir, "csv", "(1, '2024-03-10 01:00+00', 'a'), "
                     "(2, '2024-03-10 02:00+00', 'b'), (3, '2024-03-10 03:00+00', 'b')")
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.tg (LIKE {}.ev INCLUDING ALL)").format(s, s))
    conn.execute(sql.SQL("INSERT INTO {}.tg VALUES (9, '2024-03-09 01:00+00', 'z')").format(s))
    conn.execute(sql.SQL("CREATE UNIQUE INDEX tg_v ON {}.tg (v)").format(s))
    with pytest.raises(ArchiveError) as caught:
        restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.tg", temp_dir=temp_dir)
    said = f"{caught.value} / remedy: {caught.value.remedy}"
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}.tg").format(s)).fetchone()[0] == 1, said  # (nothing left)
    assert "already exist in" not in said and "on_conflict='skip'" not in said, said
    assert "among themselves" in said, said


def test_a_restore_through_an_updatable_view_whose_table_holds_an_archived_row_blames_no_trigger(
        conn, schema, store, temp_dir):
    """Scenario: the user restores a JSONL day ``into="existing"`` naming ``vw``, a plain auto-updatable view
    ``CREATE VIEW vw AS SELECT * FROM tg`` (the README: "an updatable view takes a JSONL restore"); ``tg`` has a
    primary key and already holds the archived row id 2 (the day partly there). Neither has any trigger.

    Now: the INSERT through the view hits tg_pkey; restore._unique_violation builds the target's tree from
    pg_inherits (the view alone: a view has no partitions), finds the refusing table tg outside it and says "a row
    an INSERT trigger of vw writes into table tg was refused by its constraint tg_pkey (Key (id)=(2) already
    exists.)", remedy "disable the target's triggers for the restore (ALTER TABLE ... DISABLE TRIGGER)": there is
    no trigger to disable, and the real cause (the day's row 2 is already in the view's table) goes unsaid.

    Should: the tree includes the table the view writes into (_view_base, as _tree_root and _advance_sequences
    already use), so the conflict is told as rows already there: "rows of the archive ... already exist in vw
    (its table tg)", with the skip/new-table advice (skip naming the view's base table, which _skip_mode asks
    for)."""
    spec = _archived(conn, schema, store, temp_dir, "jsonl", "(1, '2024-03-10 01:00+00', 'a'), "
                     "(2, '2024-03-10 02:00+00', 'b'), (3, '2024-03-10 03:00+00', 'c')")
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.tg (LIKE {}.ev INCLUDING ALL)").format(s, s))
    conn.execute(sql.SQL("CREATE VIEW {}.vw AS SELECT * FROM {}.tg").format(s, s))
    conn.execute(sql.SQL("INSERT INTO {}.tg VALUES (2, '2024-03-10 02:00+00', 'b')").format(s))
    with pytest.raises(ArchiveError) as caught:
        restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.vw", temp_dir=temp_dir)
    said = f"{caught.value} / remedy: {caught.value.remedy}"
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}.tg").format(s)).fetchone()[0] == 1, said  # (nothing left)
    assert "trigger" not in said, said
    assert "already exist" in said, said


def test_a_range_restore_refused_by_the_targets_statement_trigger_keeps_its_first_day_in_the_rest(
        pg, s3, bucket, conn, schema, store, tmp_path):
    """Scenario: three archived days D1..D3. The user runs ``archive-pipeline restore --from D1 --to D3 --into
    existing --target S.back --json``; ``back`` has ``CREATE TRIGGER frozen AFTER INSERT ON back FOR EACH STATEMENT
    EXECUTE FUNCTION frozen()``, which raises on any INSERT or COPY (a table frozen by its owner): every day is
    refused alike, whatever its rows.

    Now: nothing is restored, exit 1, and the error says "back's trigger frozen on INSERT refused the rows ...; to
    fix: ... disable it for the restore (ALTER TABLE ... DISABLE TRIGGER) and restore again; then: run
    archive-pipeline restore --table S.events --from D2 --to D3 --into existing --target S.back to restore the rest
    of S.events (D2, D3, without D1)". restore_archive's _raising_hooks branch replaces the cause with words naming
    the trigger but leaves ``every_day`` None, so cli._refuses_every_day falls back to the cause's text (in no
    configuration set) and cli.restore treats D1 as a day that failed for good (``skipped=failed_day``). A user who
    disables the trigger and runs the suggested command never restores D1 (the fix-yb / hunt19_ye pattern, for a
    trigger).

    Should: a refusal by the target's own trigger is the target's: every day of the range alike (``every_day``
    True where the trigger is a statement trigger, or at least never the day left out of the command that follows
    "disable it ... and restore again"): exit 2 and "then, once that is fixed, run the command again for the whole
    range", or a rest that starts at D1."""
    days, table = _events(conn, schema, n_days=3)
    spec = parse_config({"tables": [table]}).tables[0]
    for day in days:
        archive_partition(conn, spec, day, store)
    env = _env(pg, s3, bucket, tmp_path, [table])
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.back (LIKE {}.events INCLUDING ALL)").format(s, s))
    conn.execute(sql.SQL("CREATE FUNCTION {}.frozen() RETURNS trigger LANGUAGE plpgsql AS "
                         "$$BEGIN RAISE EXCEPTION 'back is frozen'; END$$").format(s))
    conn.execute(sql.SQL("CREATE TRIGGER frozen AFTER INSERT ON {}.back FOR EACH STATEMENT "
                         "EXECUTE FUNCTION {}.frozen()").format(s, s))
    done = cli(env, "restore", "--from", days[0].isoformat(), "--to", days[-1].isoformat(), "--into", "existing",
               "--target", f"{schema}.back", "--json")
    answer = json.loads(done.stdout)
    error = answer.get("error", "")
    assert answer["days"] == [] and "trigger frozen" in error, answer  # (the premise: nothing restored, named)
    assert f"without {days[0]}" not in error and f"but for {days[0]}" not in error, error


def test_a_range_restore_refused_by_the_targets_row_level_security_with_check_keeps_its_first_day_in_the_rest(
        pg, s3, bucket, conn, schema, store, tmp_path):
    """Scenario: three archived JSONL days D1..D3, restored ``--from D1 --to D3 --into existing --target S.back`` by
    the role owning ``back``, which has ``FORCE ROW LEVEL SECURITY`` and a policy whose ``WITH CHECK (false)``
    refuses every row it inserts (the JSONL load's INSERT, not a COPY): every day alike, until the role or the
    policy is changed.

    Now (found with the statement trigger's case): restore_archive's branch for a policy refusing an inserted row
    names the policy but leaves ``every_day`` None, so the rest of the range is told without D1, exit 1.

    Should: the target's row-level security refuses every day alike (README: "its row-level security" exits 2), as
    the check's refusal under row security already is: exit 2, and nothing leaves D1 out."""
    from archive_pipeline_tests.test_hunt19_yb import restore_range_as

    days, table = _events(conn, schema, n_days=3, format="jsonl")
    spec = parse_config({"tables": [table]}).tables[0]
    for day in days:
        archive_partition(conn, spec, day, store)
    env = _env(pg, s3, bucket, tmp_path, [table])
    role, back = sql.Identifier(f"{schema}_rls"), sql.Identifier(schema, "back")
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(back, sql.Identifier(schema, "events")))
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), role))
    conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(back, role))
    conn.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY").format(back))
    conn.execute(sql.SQL("CREATE POLICY frozen ON {} USING (true) WITH CHECK (false)").format(back))
    done = restore_range_as(conn, pg, env, f"{schema}_rls", days, "existing", f"{schema}.back")
    answer = json.loads(done.stdout)
    error = answer.get("error", "")
    assert answer["days"] == [] and "frozen" in error, answer  # (the premise: nothing restored, the policy named)
    assert f"without {days[0]}" not in error and f"but for {days[0]}" not in error, error
    assert done.returncode == 2, (done.returncode, error)
