"""Hunt 9 (oc): restore and compare against hostile targets (triggers, rules, constraints, types, locks)."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.restore import restore_day

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
