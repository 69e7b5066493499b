"""Hunt 6 (lf): the command line as a user tries it (a subprocess, real PostgreSQL, moto's S3 over HTTP):
hostile environment and configuration, edge dates, pipes, signals, and whether what each command prints and
exits with is what it did and what the README promises."""

from __future__ import annotations

import json

import pytest

from archive_pipeline_tests.test_hunt_cli import DAYS, cli, make_env, small_table, write_config


@pytest.mark.parametrize(("command", "column"), [("list", "nosuch"), ("archive", "note")])
def test_a_day_column_that_is_missing_or_not_a_date_is_a_configuration_error_exit_2(
        pg, s3, bucket, conn, schema, tmp_path, command, column):
    """A user whose YAML names a `day_column` the table does not have (a typo), or a text column, runs
    `archive-pipeline list` (or compare, archive). The message rightly names the setting ("has no column
    'nosuch' (day_column)", "day_column 'note' ... is text"), but the command exits 1, which the README
    reserves for "a check or comparison found differences, or a day failed"; a script reads it as data found
    wrong. The README: "2 usage or configuration error (the message names the setting or variable)", and a
    day column that does not exist is refused like a table that does not exist, which exits 2. (The
    SourceError of `source.describe_table` for a missing or mistyped day column carries no configuration
    cause.)"""
    small_table(conn, schema)
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [
        {"name": f"{schema}.ev", "day_column": column, "start_date": DAYS[0].isoformat()}]))
    done = cli(env, *command.split(), "--day", DAYS[0].isoformat(), "--json")
    assert "day_column" in done.stdout + done.stderr, done.stderr
    answer = json.loads(done.stdout)
    assert (done.returncode, answer["exit_code"]) == (2, 2), done.stdout + done.stderr
