"""Hunt 6 (ld): restore (and the loads of compare / deep verification) into targets that differ from the
archived table. Each test asserts the correct behaviour and fails on the current code because of a bug."""

from __future__ import annotations

import datetime as dt

import psycopg
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
