"""Hunt 6 (lx): regressions and holes in the latest fixes (2748074..)."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.restore import restore_day
from archive_pipeline_tests.test_hunt4_gg import encoded_db  # noqa: F401 - a fixture: databases in other encodings

DAY = dt.date(2024, 3, 10)


def test_a_latin1_json_escape_of_a_latin1_character_is_archived_and_restored(encoded_db, store, temp_dir):
    """A LATIN1 database holds ``json`` written by a serializer that escapes everything beyond ASCII
    (``{"name": "Ren\\u00e9"}``: Python's json.dumps default). The character é is in LATIN1. Before 58893b2 the
    day archived as JSONL and restored into its own database exactly. What happens now: the archive refuses the
    day ("a \\u escape of a character beyond ASCII in a database whose encoding is not UTF8"), though
    json_populate_record turns \\u00e9 into LATIN1's é without error. What should happen: only an escape of a
    character the database's encoding lacks is refused; this day archives and restores exactly."""
    db = encoded_db("LATIN1")
    db.execute("CREATE TABLE ev (id int, at date, j json)")
    value = '{"name": "Ren\\u00e9"}'
    db.execute("INSERT INTO ev VALUES (1, '2024-03-10', %s::json), (2, '2024-03-10', '[1]')", (value,))
    spec = TableSpec(name="public.ev", day_column="at", start_date=DAY, format="jsonl")
    assert archive_partition(db, spec, DAY, store, temp_dir=str(temp_dir)).rows == 2
    restored = restore_day(db, store, spec, DAY, into="new", target="public.back", temp_dir=str(temp_dir))
    assert restored.rows == 2 and restored.fingerprint_checked
    assert db.execute("SELECT j::text FROM back WHERE id = 1").fetchone()[0] == value
