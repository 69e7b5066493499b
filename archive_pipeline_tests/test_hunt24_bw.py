"""Hunt 24 (bw): restore line by line, the load paths: values at the edge of their types and targets whose column
types differ from the archive's, where a restore reports success but the target's rows are not the archive's, or a
refusal is misclassified."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.restore import restore_days

DAY = dt.date(2024, 3, 10)
NEXT = DAY + dt.timedelta(days=1)


@pytest.mark.parametrize(("first_type", "second_type", "first_value", "second_value"), [
    ("numeric(8,2)", "numeric(10,4)", "12.50", "1.2345"),  # more digits after the point: 12.50 becomes 12.5000
    ("character(3)", "character(6)", "'ab'", "'abcdef'"),  # a longer char(n): 'ab ' padded to 'ab    '
])
def test_a_range_restore_run_again_after_a_column_widened_between_its_days_fails_on_its_first_day(
        conn, schema, store, temp_dir, first_type, second_type, first_value, second_value):
    """Scenario: a table ``pay (id, at timestamptz, amount numeric(8,2))`` has 2024-03-10 archived (amount 12.50);
    the source then widens the column (``ALTER COLUMN amount TYPE numeric(10,4)``, more decimals) and 2024-03-11 is
    archived (amount 1.2345); likewise a character(3) widened to character(6). The user restores the range into a
    new table (green: both days proven), then runs the very same command again, as the README says to do after a
    range restore was killed or cancelled ("a restore killed mid-range is finished by running the same command
    again: a day the mark lists, and whose rows the table still holds, is reported already restored").

    Now: on day 2, restore._widen_own follows the widening (_widens: numeric(8,2) -> numeric(10,4), character(3)
    -> character(6)) with ALTER COLUMN ... TYPE, which rewrites day 1's rows already committed in the table: 12.50
    becomes 12.5000, 'ab ' becomes 'ab    '. Their text is no longer the archived text, so on the run again day 1 is
    not "still restored" (_still_restored: the fingerprint of its rows differs) nor "loaded before"; it is loaded a
    second time and the check refuses it (FingerprintMismatchError, not retryable): "the target already held 1
    row(s) of the day before the restore ... the day partly deleted since it was archived, or partly restored ...
    delete the day's rows ... and restore again". The range never finishes by running it again, and the message
    blames the user's table for rows the restore itself wrote and itself rewrote.

    Should: the run again reports day 1 (and day 2) already restored, as for a range without a widening. Fix idea:
    _holds_archived_rows (for a table the restore marked) hashes a column the restore widened as the archived type
    it was (a numeric rescaled back to the recorded scale, a char(n) trimmed to its recorded length:
    fingerprint.as_archived with the recorded type's kind), or the mark records the widening so the listed day
    counts as restored; or _widens refuses a widening that changes the text of the rows already there (a larger
    scale, a longer char(n)) rather than rewriting them."""
    restore_twice_across_a_retype(conn, schema, store, temp_dir, "amount", first_type, first_value, second_type,
                                  second_value)


def restore_twice_across_a_retype(conn, schema: str, store, temp_dir, column: str, first_type: str, first_value: str,
                                  second_type: str, second_value: str) -> None:
    """A table whose ``column`` is ``first_type`` on 2024-03-10 and retyped to ``second_type`` before 2024-03-11 is
    archived day by day, then both days are restored into a new table twice: the second run finds both days
    restored already (0 rows each) and the table holds the 2 rows once."""
    t = sql.Identifier(schema, "pay")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz NOT NULL, {} {})").format(
        t, sql.Identifier(column), sql.SQL(first_type)))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 01:00+00', {})").format(t, sql.SQL(first_value)))
    spec = TableSpec(name=f"{schema}.pay", day_column="at", start_date=DAY, format="csv", compression="zstd",
                     partitioning={"mode": "column"})
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} TYPE {}").format(t, sql.Identifier(column),
                                                                          sql.SQL(second_type)))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (2, '2024-03-11 01:00+00', {})").format(t, sql.SQL(second_value)))
    archive_partition(conn, spec, NEXT, store, temp_dir=temp_dir)

    first = restore_days(conn, store, spec, DAY, NEXT, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    assert [r.inserted for r in first.results] == [1, 1]  # (the premise: the range restored green)

    again = restore_days(conn, store, spec, DAY, NEXT, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    assert [r.inserted for r in again.results] == [0, 0], [r.check for r in again.results]
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "back"))).fetchone()[0] == 2
