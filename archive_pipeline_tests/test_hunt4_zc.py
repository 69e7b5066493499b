"""Hunt 4 zc: wide and odd tables under the row-hash-sum-v5 fingerprint."""

from __future__ import annotations

import datetime as dt

from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.restore import restore_day

DAY = dt.date(2024, 3, 10)


def test_jsonl_does_not_write_an_enum_array_with_other_bounds_through_a_users_cast_on_the_array_type(
        conn, schema, store, temp_dir):
    """The owner of an enum ``mood`` creates a cast from its array type to text (``CREATE CAST (mood[] AS
    text) WITH FUNCTION lossy(mood[])``, returning 'x'), as v5's note says an owner may. A row holds a
    ``mood[]`` whose lower bound is not 1 (``'[0:1]={a,"b,c"}'``); the day is archived as jsonl. What
    happens: the archive succeeds (green, fingerprint recorded from the source), but the JSONL line holds
    the user's cast's ``"x"`` for that array instead of its literal, so restore (and deep verification)
    fail with "malformed array literal" — the archive does not hold the day's rows. It should write the
    array by its output function (as ``output_text``/concat does elsewhere), and restore should give the
    rows back. Cause: formats/jsonl.py JsonLines._line writes such arrays as ``to_json({v}::text)``."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TYPE {}.mood AS ENUM ('a', 'b,c')").format(s))
    conn.execute(sql.SQL("CREATE FUNCTION {}.lossy({}.mood[]) RETURNS text LANGUAGE sql IMMUTABLE "
                         "AS $$ SELECT 'x' $$").format(s, s))
    conn.execute(sql.SQL("CREATE CAST ({}.mood[] AS text) WITH FUNCTION {}.lossy({}.mood[])").format(s, s, s))
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at date, ms {}.mood[])").format(s, s))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, %s, '[0:1]={{a,\"b,c\"}}'), (2, %s, '{{a}}')").format(s),
                 (DAY, DAY))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="jsonl")
    assert archive_partition(conn, spec, DAY, store, temp_dir=temp_dir).rows == 2
    restored = restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    assert restored.fingerprint_checked and restored.rows == 2
    back = conn.execute(sql.SQL("SELECT pg_catalog.concat(ms) FROM {}.back ORDER BY id").format(s)).fetchall()
    assert back == [('[0:1]={a,"b,c"}',), ("{a}",)]
