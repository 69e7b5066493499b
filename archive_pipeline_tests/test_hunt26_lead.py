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
