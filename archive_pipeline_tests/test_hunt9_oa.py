"""Hunt 9 (oa): hostile review of the previous session's change (f51a041..HEAD)."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline_tests.test_hunt_cli import cli, make_env, write_config

DAY = dt.date(2024, 3, 10)


def test_a_strict_tables_inexact_archive_is_not_summarised_as_fixed_by_overwrite_alone(pg, s3, bucket, conn, schema,
                                                                                        store, temp_dir, tmp_path):
    """A JSONL day whose json value holds a line break was archived before the table was made ``strict: true``
    (its manifest records the column as not exact). The user runs `archive --day 2024-03-10`: the day is refused
    ("archive the day again as <another format> with overwrite, or set strict: false"), and the command's summary
    says "the day(s) changed since they were archived are archived again only with overwrite: archive --table ...
    --day 2024-03-10 --overwrite". The user runs exactly that command: it fails again (the strict table still
    cannot hold the value exactly in jsonl), and nothing changed in the source either. Cause: cli._archive_day
    flags needs_overwrite on any non-retryable message containing "with overwrite" (here "... as csv with
    overwrite"), and cli.archive's summary then names plain --overwrite as the fix. Should: the command the
    summary names for the day works (or the summary does not offer --overwrite alone for it)."""
    conn.execute(f"CREATE TABLE {schema}.ev (id int PRIMARY KEY, at date, v json)")
    conn.execute(f"INSERT INTO {schema}.ev VALUES (1, %s, %s)", (DAY, '{"a":\n1}'))
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": str(DAY), "format": "jsonl",
             "compression": "none"}
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [table]))
    first = cli(env, "archive", "--day", str(DAY))
    assert first.returncode == 0, (first.stdout, first.stderr)
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [{**table, "strict": True}]))
    done = cli(env, "archive", "--day", str(DAY))
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "strict" in done.stdout, done.stdout  # (the premise: the day's own message)
    named = f"archive --table {schema}.ev --day {DAY} --overwrite"
    if named in done.stderr:
        again = cli(env, "archive", "--table", f"{schema}.ev", "--day", str(DAY), "--overwrite")
        assert again.returncode == 0, ("the summary named " + named, again.stdout[-600:])
