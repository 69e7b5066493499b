"""Hunt 4, zd: adversarial review of the very last product fixes (restore's unique violations ...)."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.restore import restore_day

DAY = dt.date(2024, 3, 10)


def test_a_unique_violation_in_the_recreated_partition_of_a_table_holding_other_days_is_not_rows_already_there(
        conn, schema, store, temp_dir):
    """A user archives a day of ev (partitioned by day, one child a day; the next day's partition holds its own
    rows) and drops the day's partition. Later a unique index on (at, note) is added to ev; the day's archived
    rows have two equal notes. The user restores the day into='original': the restore re-creates the day's
    partition, and the load is refused by the index. What happens: ``_unique_violation`` counts the re-created
    partition as the target's (fixed), but then asks whether the *whole* target ``ev`` holds rows -- it does,
    another day's -- and says "rows of the archive ... already exist in ev ... Use on_conflict='skip'": the
    partition the rows went to was created empty by this very restore, and skipping would drop archived rows.
    Expected: the archived rows collide among themselves under the target's constraint (as when ev is empty)."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {s}.ev (id int, at date, note text) PARTITION BY RANGE (at); "
                         "CREATE TABLE {s}.ev_20240310 PARTITION OF {s}.ev FOR VALUES FROM ('2024-03-10') "
                         "TO ('2024-03-11'); "
                         "CREATE TABLE {s}.ev_20240311 PARTITION OF {s}.ev FOR VALUES FROM ('2024-03-11') "
                         "TO ('2024-03-12')").format(s=s))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, %s, 'same'), (2, %s, 'same'), (3, %s, 'other'), "
                         "(4, %s, 'next')").format(s), (DAY, DAY, DAY, DAY + dt.timedelta(days=1)))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv",
                     partitioning={"mode": "declarative"})
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 3
    conn.execute(sql.SQL("DROP TABLE {}.ev_20240310").format(s))
    conn.execute(sql.SQL("CREATE UNIQUE INDEX ev_note ON {}.ev (at, note)").format(s))
    with pytest.raises(ArchiveError) as caught:
        restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir)
    text = f"{caught.value} {getattr(caught.value, 'remedy', '')}"
    assert "on_conflict='skip'" not in text, text
    assert "among themselves" in text, text


def test_a_raising_trigger_whose_function_sets_its_own_search_path_is_named(conn, schema, store, temp_dir):
    """A user's ev has a BEFORE INSERT trigger ``guard`` running ``<schema>_fn.guard()``, a function declared,
    as PostgreSQL's security advice has it, with ``SET search_path = <schema>_fn, pg_temp``; it raises. The
    user restores a day into='original'. What happens: the function is compiled under its own path, so the
    error's context names it unqualified (``PL/pgSQL function guard() line 1 at RAISE``); ``_RAISING_TRIGGERS``
    takes an unqualified name only where ``pg_function_is_visible`` -- on the restoring session's path, which
    does not hold ``<schema>_fn`` -- so no trigger is named (before the last change, any function of that
    name was). Expected: trigger guard named as the cause, with the remedy to disable it."""
    s, f = sql.Identifier(schema), sql.Identifier(f"{schema}_fn")
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int PRIMARY KEY, at date, note text)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, %s, 'n' FROM generate_series(1, 10) g").format(s), (DAY,))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv")
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 10
    conn.execute(sql.SQL("DELETE FROM {}.ev").format(s))
    conn.execute(sql.SQL("CREATE SCHEMA {f}; "
                         "CREATE FUNCTION {f}.guard() RETURNS trigger LANGUAGE plpgsql "
                         "SET search_path = {f}, pg_temp AS $$ BEGIN RAISE EXCEPTION 'no inserts'; END $$; "
                         "CREATE TRIGGER guard BEFORE INSERT ON {s}.ev FOR EACH ROW "
                         "EXECUTE FUNCTION {f}.guard()").format(s=s, f=f))
    try:
        with pytest.raises(ArchiveError) as caught:
            restore_day(conn, store, spec, DAY, into="original", temp_dir=temp_dir)
    finally:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(f))
    text = f"{caught.value} {getattr(caught.value, 'remedy', '')}"
    assert "trigger guard" in text, text
