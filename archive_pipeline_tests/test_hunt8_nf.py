"""Hunt 8 (nf): an adversarial review of the session's newest product changes (f51a041..5986e35): the shared
legacy lock, the refusal of unrecorded composite shapes, the multibyte JSON escape check, the grant remedy for
one name of several objects, and the store's dialects (KeyCount, ETag case, Accept-Encoding: gzip,
Cache-Control: no-transform). Real PostgreSQL and S3 (moto) over HTTP."""

from __future__ import annotations

import datetime as dt
import gzip

from archive_pipeline_tests.test_hunt8_nb import _CHUNKED, DialectProxy
from archive_pipeline_tests.test_hunt8_nd import run_old

DAY = dt.date(2024, 3, 10)


def test_old_jsonl_archive_restored_into_a_composite_whose_fields_moved_is_not_proven_with_swapped_fields(
        pg, s3, conn, schema, bucket, store, temp_dir):
    """A user archived a day with the previous version in JSONL (the default format); a column is of a composite
    type ``pair (a int, b int)``. Its manifest has no ``columns[].shape``. Later the type's fields were moved
    (``ALTER TYPE pair DROP ATTRIBUTE a, ADD ATTRIBUTE a int``: now ``(b, a)``), and the user restores the day
    with today's code into a new table. The new refusal of unrecorded shapes (restore._refuse_unrecorded_shapes)
    skips JSONL, saying "JSONL names each field, so it loads by name", but JSONL writes a composite as its
    type's *output text*, a string ``"(1,101)"`` (formats/jsonl.py jsonl_column: "string: the type's output,
    read back with the type's input function"), which is as positional as CSV's. Was/is: the archived a=1, b=101
    load as b=1, a=101 and the restore reports success with its fingerprint proven. Should: refused as the same
    archive in CSV is (or loaded into the right fields)."""
    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.restore import restore_day

    conn.execute(f"CREATE TYPE {schema}.pair AS (a int, b int)")
    conn.execute(f"CREATE TABLE {schema}.ev (id int PRIMARY KEY, at date, p {schema}.pair)")
    conn.execute(f"INSERT INTO {schema}.ev SELECT g, %s, ROW(g, 100 + g)::{schema}.pair "
                 "FROM generate_series(1, 3) g", (DAY,))
    args = {"name": f"{schema}.ev", "day_column": "at", "start_date": DAY.isoformat(), "format": "jsonl"}
    done = run_old(pg, s3, bucket, args, [("archive", DAY)], temp_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    conn.execute(f"ALTER TYPE {schema}.pair DROP ATTRIBUTE a, ADD ATTRIBUTE a int")
    try:
        restore_day(conn, store, TableSpec(**args), DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    except ArchiveError:
        return  # refused: nothing loaded into the wrong fields
    restored = conn.execute(f"SELECT id, (p).a, (p).b FROM {schema}.back ORDER BY id").fetchall()
    assert restored == [(g, g, 100 + g) for g in (1, 2, 3)], f"restored as proven, fields swapped: {restored}"
