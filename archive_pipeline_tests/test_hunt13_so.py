"""Hunt 13 (so): a review of 8bed08b (owner-named upload markers deleted only while still one's own, v6's
other-type NULL test and "C" guard, Parquet uuids as 8-4-4-4-12, restore's 'null' / float key lookups)."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec

DAY = dt.date(2024, 3, 10)


def test_archived_rows_colliding_on_the_text_null_are_not_called_held_by_a_target_row_whose_key_is_null(
        conn, schema, store, temp_dir):
    """A day of ``(at date, code text, v text)`` whose two rows both have code = the text 'null' (a legacy
    export's spelling of "no code"), archived from a table without a key. It is restored ``into="existing"``
    into a table ``back`` with an ordinary ``UNIQUE (code)`` (NULLS DISTINCT, the default) that holds one row of
    another day whose code is NULL.

    Now: the load hits "Key (code)=(null) already exists." (the second archived 'null'); 8bed08b's _holds_key
    looks the printed value up as ``code = 'null'::text OR code IS NULL`` whatever the constraint, finds the NULL
    row (which under NULLS DISTINCT conflicts with nothing) and says "rows of the archive ... already exist in
    back ... Use on_conflict='skip' to add only the missing rows": false, back holds no row of that key, and a
    skip would silently drop one archived row.

    Should: say back held no row of that key and the archived rows break its constraint among themselves.
    Fix idea: add ``OR col IS NULL`` only where the constraint's index is NULLS NOT DISTINCT
    (pg_index.indnullsnotdistinct), and there only when the key is not held as the text 'null'."""
    from archive_pipeline.core.restore import RestoreError, restore_day

    s = sql.Identifier(schema).as_string(conn)
    conn.execute(f"CREATE TABLE {s}.t (at date, code text, v text)")
    conn.execute(f"INSERT INTO {s}.t VALUES ('2024-03-10', 'null', 'x'), ('2024-03-10', 'null', 'y')")
    spec = TableSpec(name=f"{schema}.t", day_column="at", start_date=DAY, format="csv")
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(f"CREATE TABLE {s}.back (at date, code text UNIQUE, v text)")
    conn.execute(f"INSERT INTO {s}.back VALUES ('2024-03-01', NULL, 'other day')")
    with pytest.raises(RestoreError) as caught:
        restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.back", temp_dir=temp_dir)
    said = f"{caught.value} {caught.value.remedy or ''}"
    assert "(null)" in said, said
    assert "among themselves" in said and "already exist in" not in said, said
