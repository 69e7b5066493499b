"""Hunt 13 (sq): a review of 2a8a6cb/cb78884/f7c388b (manifest_version 3, the overwrite's recomputed fingerprint,
put_back_statement's casts, restore._widens to text, the upload marker's still_owned) at their edges."""

from __future__ import annotations

import datetime as dt
import re

import psycopg
from psycopg import sql

DAY = dt.date(2024, 3, 10)


def _refused_remedy(conn, spec, store, temp_dir) -> str:
    from archive_pipeline.core.lifecycle import RemovalRefused, remove_day

    try:
        remove_day(conn, spec, DAY, store, temp_dir=temp_dir, removed_by="test")
    except RemovalRefused as exc:
        return exc.remedy or ""
    raise AssertionError("a day missing a row was removed")


def test_the_put_back_statement_truncates_a_value_longer_than_a_column_narrowed_since(conn, schema, store, temp_dir):
    """Edge of 2a8a6cb (lifecycle.put_back_statement now reads every restored column as ``c::<the table's type>``).

    Scenario: ``t (at date, id int, s varchar(10))``, day 2024-03-10 archived with rows (1, 'abc') and
    (2, 'abcdefgh'). Row 2 is deleted by mistake; later ``s`` is narrowed to varchar(3) (every value left fits).
    The removal refuses (rows not the archive's) and its remedy says: restore the day into a new table and run
    ``INSERT INTO t (at, id, s) SELECT ... FROM (SELECT at::date, id::integer, s::character varying(3) FROM <that
    table> EXCEPT ALL ...)``. The user does so.

    Now: an explicit cast to varchar(n) truncates silently (PostgreSQL's rule for explicit casts, unlike an
    INSERT's assignment, which refuses 'value too long'): the statement "puts back" (2, 'abc'), a row the day never
    had; the source is corrupted by the product's own remedy (before 2a8a6cb the INSERT failed, naming the value).

    Should: the put-back never alters a value: it fails (value too long for type character varying(3)) or puts
    the row back as archived; no row (2, 'abc') appears.
    Fix idea: cast the restored side to the type without its typmod (format_type(atttypid, NULL), or only where the
    archived type differs) so the INSERT's assignment cast checks length/precision; likewise char(n), bit(n)."""
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.restore import restore_day

    t = sql.Identifier(schema, "t")
    conn.execute(sql.SQL("CREATE TABLE {} (at date NOT NULL, id int, s varchar(10))").format(t))
    conn.execute(sql.SQL("INSERT INTO {} VALUES ('2024-03-10', 1, 'abc'), ('2024-03-10', 2, 'abcdefgh')").format(t))
    spec = TableSpec(name=f"{schema}.t", day_column="at", start_date=DAY.isoformat(), format="csv",
                     retention={"keep_days": 30, "action": "delete"})
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(sql.SQL("DELETE FROM {} WHERE id = 2").format(t))
    conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN s TYPE varchar(3)").format(t))
    remedy = _refused_remedy(conn, spec, store, temp_dir)
    statement = re.search(r"\((INSERT INTO .*?)\), then", remedy).group(1)
    restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    try:
        conn.execute(statement.replace("<that table>", sql.Identifier(schema, "back").as_string(conn)))
    except psycopg.errors.StringDataRightTruncation:
        pass  # refused, naming the value: acceptable
    rows = conn.execute(sql.SQL("SELECT id, s FROM {} ORDER BY id").format(t)).fetchall()
    assert (2, "abc") not in rows, f"the put-back altered the archived value: {rows}; statement {statement}"


def test_a_refused_rerun_blames_a_widening_for_a_day_whose_rows_were_edited(conn, schema, store, temp_dir):
    """Edge of 2a8a6cb (archive._change_message names late rows beside retyped columns, not edited ones).

    Scenario: ``t (at date, id int, s text)`` day 2024-03-10 archived (2 rows, row-hash-sum-v6). Since then ``id``
    was widened to bigint (which alone is skipped: v6 hashes it as archived, every value the same) and row 2's ``s``
    was updated by mistake (same row count). The next run without overwrite refuses the day.

    Now: the refusal says only "changed since it was archived ...: column types changed: id integer → bigint; set
    overwrite to archive the day again": it blames the widening (which the README says alone changes nothing) and
    hides that a row's content changed, so the user overwrites the archive of the rows as they were without looking.

    Should: the message says the content changed with the same 2 rows (rows updated), beside or instead of the
    widening, as 2a8a6cb now does for a changed row count.
    Fix idea: in _change_message's ``retyped`` branch, where the retyping is a widening the fingerprint sees through
    (or always), add "its content changed with the same N rows (rows updated ...)" when the counts are equal."""
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.errors import ArchiveError

    t = sql.Identifier(schema, "t")
    conn.execute(sql.SQL("CREATE TABLE {} (at date NOT NULL, id int, s text)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} VALUES ('2024-03-10', 1, 'a'), ('2024-03-10', 2, 'b')").format(t))
    spec = TableSpec(name=f"{schema}.t", day_column="at", start_date=DAY.isoformat(), format="csv")
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN id TYPE bigint").format(t))
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).skipped  # a widening alone: skipped
    conn.execute(sql.SQL("UPDATE {} SET s = 'edited by mistake' WHERE id = 2").format(t))
    try:
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    except ArchiveError as exc:
        said = str(exc)
    else:
        raise AssertionError("a day whose row was edited was skipped")
    assert re.search(r"content changed|rows? (were )?updated|edited", said), said
