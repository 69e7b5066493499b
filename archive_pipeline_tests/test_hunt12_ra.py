"""Hunt 12 (ra): a review of the previous session's fixes (ead2d28..c7b4480): regressions they introduced and holes
at their edges. Real PostgreSQL and moto S3 over HTTP. Each test fails on the current code because of a bug."""

from __future__ import annotations

import datetime as dt

from psycopg import sql

DAY = dt.date(2024, 3, 10)


def _run(conn, schema: str, statement: str) -> None:
    conn.execute(statement.replace("S.", sql.Identifier(schema).as_string(conn) + "."))


def test_restore_into_original_of_a_day_table_with_its_own_column_after_the_parent_gained_one_is_not_refused(
        conn, schema, store, temp_dir):
    """A naming-mode table ``S.ev (id, at, note)`` whose day table ``ev_20240310`` has a column of its own
    (``CREATE TABLE S.ev_20240310 (batch int) INHERITS (S.ev)``), 5 rows; archived, removed by retention ``drop``.
    Since then the application's table gained a column (``ALTER TABLE S.ev ADD COLUMN region text``): nothing was
    renamed or dropped. The user restores the day ``--into original``.

    What happens: ``_refuse_hidden_columns`` (hunt-11 qr fix) takes "the parent has a column the archive lacks
    (region) and lacks one it has (batch)" for a rename and refuses: "goes back under S.ev, which has no column(s)
    ['batch'] the archive has (renamed or dropped since) ... give S.ev the column(s) ['batch'] again": false (S.ev
    never had ``batch``: it was the day table's own, out of S.ev's sight when archived too), and its remedy changes
    the application's table. Any column added to the parent since makes every such day unrestorable this way.

    What should happen: the day table is created again as it was (``batch`` its own), under S.ev (``region`` NULL
    for its rows), the 5 rows restored. Fix idea: record which archived columns were inherited (attinhcount > 0)
    in the manifest's table definition and refuse only such a column the parent lacks now; a column the parent
    gained says nothing of a rename."""
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline.core.restore import restore_day

    _run(conn, schema, "CREATE TABLE S.ev (id int, at timestamptz NOT NULL, note text)")
    _run(conn, schema, "CREATE TABLE S.ev_20240310 (batch int) INHERITS (S.ev)")
    _run(conn, schema, "INSERT INTO S.ev_20240310 SELECT g, '2024-03-10 00:00+00'::timestamptz + g * "
                       "interval '1 min', 'n' || g, 7 FROM generate_series(1, 5) g")
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="jsonl",
                     partitioning={"mode": "naming", "pattern": "ev_%Y%m%d"},
                     retention={"keep_days": 1, "action": "drop"})
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 5
    remove_day(conn, spec, DAY, store, temp_dir=temp_dir)
    _run(conn, schema, "ALTER TABLE S.ev ADD COLUMN region text")
    try:
        restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir)
    except ArchiveError as exc:
        raise AssertionError(f"restore into original refused: {exc}") from None
    assert conn.execute(sql.SQL("SELECT count(*), min(batch), count(region) FROM {}").format(
        sql.Identifier(schema, "ev_20240310"))).fetchone() == (5, 7, 0)
