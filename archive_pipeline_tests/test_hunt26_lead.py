"""Hunt 26 (lead): what the lead found while merging the session's hunts."""

from __future__ import annotations

import yaml
from psycopg import sql

from archive_pipeline_tests.test_cli import cli
from archive_pipeline_tests.test_hunt10_px import _env


def test_compare_of_a_day_before_start_date_says_why_once(pg, s3, bucket, conn, schema, tmp_path):
    """Scenario: ``archive-pipeline compare --day 2024-03-01`` for a table whose start_date is 2024-03-10.

    Before: compare asked for the table's days twice (once to compare them, once more for its "nothing was
    compared" line), and ``Run.days`` printed its note each time: "no daily period of the table in the selection"
    twice on stderr.

    Should: the note once per table, the exit code 1 (nothing compared is never a pass)."""
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date)").format(sql.Identifier(schema, "t")))
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [dict(name=f"{schema}.t", day_column="at",
                                                      start_date="2024-03-10")]}))
    done = cli(_env(pg, s3, bucket, config), "compare", "--day", "2024-03-01")
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.count("no daily period of the table in the selection") == 1, done.stderr


def test_a_json_values_surrounding_blanks_are_said_to_be_lost_in_jsonl(conn, schema, store, temp_dir):
    """Scenario: a json column holding ``'  {"a": 1}  '`` (blanks around the value, which json keeps) archived as
    JSONL and restored.

    Before: the restore was refused (the value comes back as ``{"a": 1}``, so the fingerprint differs) blaming the
    column's inexact encoding, whose note named line breaks and top-level strings only: not what changed here.

    Should: the note (in the manifest and in the refusal) says blanks around the value are not kept."""
    import datetime as dt
    import json

    import pytest

    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.restore import FingerprintMismatchError, restore_day

    day = dt.date(2024, 3, 10)
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, doc json)").format(sql.Identifier(schema, "j")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, '  {{\"a\": 1}}  ')").format(sql.Identifier(schema, "j")),
                 (day,))
    spec = TableSpec(name=f"{schema}.j", day_column="at", start_date="2024-03-01", format="jsonl")
    done = archive_partition(conn, spec, day, store, temp_dir=str(temp_dir))
    manifest = json.loads(store.client.get_object(Bucket=store.bucket, Key=done.manifest_key)["Body"].read())
    doc = next(c for c in manifest["columns"] if c["name"] == "doc")
    assert doc["exact"] is False and "blanks before and after the value are not kept" in doc["note"], doc
    with pytest.raises(FingerprintMismatchError) as refused:
        restore_day(conn, store, spec, day, into="new", target=f"{schema}.back", temp_dir=str(temp_dir))
    assert "blanks before and after the value are not kept" in str(refused.value), refused.value
