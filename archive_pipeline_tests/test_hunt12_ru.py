"""Hunt 12 (ru): the README taken literally, as a new user reads it: each concrete promise about the command line
(commands, options, exit codes, `--json` fields, remedies) tried for real through ``archive-pipeline`` processes
against real PostgreSQL and S3 over HTTP."""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex

import psycopg
import pytest
import yaml

from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.conftest import utc_today
from archive_pipeline_tests.test_cli import ROOT, cli, cli_json

PREFIX = "cli"
ROWS = 50


@pytest.fixture
def days() -> list[dt.date]:
    today = utc_today()
    return [today - dt.timedelta(days=n) for n in (3, 2, 1)]


def _env(pg, s3, bucket, config) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIVE_", "AWS_"))}
    env.update(PYTHONPATH=str(ROOT), ARCHIVE_PIPELINE_CONFIG=str(config), ARCHIVE_PG_DSN=pg.dsn,
               ARCHIVE_S3_BUCKET=bucket, ARCHIVE_S3_PREFIX=PREFIX, ARCHIVE_S3_ENDPOINT_URL=s3.endpoint_url,
               ARCHIVE_S3_ACCESS_KEY_ID="testing", ARCHIVE_S3_SECRET_ACCESS_KEY="testing", COLUMNS="200")
    return env


@pytest.fixture
def setup(pg, conn, schema, s3, bucket, tmp_path, days):
    """The README's sample table (declaratively partitioned `events`, no primary key), three days, a config file
    with a short lock_timeout and the command line's environment."""
    create_sample_events(conn, days, ROWS, schema=schema)
    table = {"name": f"{schema}.events", "day_column": "created_at", "start_date": days[0].isoformat(),
             "partitioning": {"mode": "declarative"}}
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [table], "source": {"lock_timeout_ms": 300}}))
    return _env(pg, s3, bucket, config), f"{schema}.events"


def test_verify_deep_remedy_for_rows_lost_from_the_source_is_a_restore_that_cannot_work(setup, conn, days):
    """README (Command line): "`verify` says what to do about each failed day". A user loses ONE row of an archived
    day from the source (a stray DELETE) and runs `verify --deep`: the day fails, and its remedy says "if rows were
    lost from the source, the archive is their only copy: restore them into the table (archive-pipeline restore
    --table … --day … --into original)". Following it literally, the restore is rolled back, exit 1: "the rows of
    the day … are 99 rows with the restored ones, 50 archived: the target already held 49 other row(s) of the day
    (rows written after it was removed?) … move those rows out … restore again, then insert them back" (which, done,
    would put the 49 rows in twice); `--on-conflict skip` is refused too (the README's table has no key). The one
    remedy offered for the case it names cannot bring the lost row back, and the day stays broken.
    Should: the command the remedy names, run as printed, restores the lost rows (the source then compares equal
    to the archive), or the remedy names a way that works when the day still holds the other rows (restore into a
    new table and INSERT the rows the source lacks; --on-conflict skip only where the table has a key).
    (Fix idea: _verify_remedy tells a source with fewer rows that still holds some of the day from one that holds
    none, or restore --into original inserts only the archived rows the target lacks, counted by row hash.)"""
    env, name = setup
    day = days[0].isoformat()
    cli_json(env, "archive", "--day", day)
    conn.execute(f"DELETE FROM {name} WHERE id = 7 AND created_at >= %s AND created_at < %s::date + 1", (day, day))
    answer = cli_json(env, "verify", "--deep", "--day", day, code=1)
    remedy = answer["days"][0]["remedy"]
    assert "rows were lost from the source" in remedy, remedy
    # (fixed: the table still holds some of the day, so the remedy restores it aside and inserts what the table
    # lacks; a user follows it as printed: the command, then the statement)
    command = remedy.split("rows were lost from the source", 1)[1]
    command = command[command.index("archive-pipeline restore"):].split("), then run ")[0]
    done = cli(env, *shlex.split(command)[1:])
    assert done.returncode == 0, f"the remedy's own command `{command}` fails:\n{done.stderr}{done.stdout}"
    statement = remedy.split("), then run ", 1)[1].split("; (", 1)[0]
    assert statement.startswith("INSERT INTO "), remedy
    conn.execute(statement)
    compared = cli_json(env, "compare", "--day", day)
    assert [d["result"] for d in compared["days"]] == ["equal"]


def test_list_check_source_calls_a_day_whose_rows_are_locked_unreadable_not_not_checked(setup, pg, conn, days):
    """README (Command line): "`verify` and `compare` (and `list --check-source`) check every day even when one
    cannot be checked (its download failing, its rows locked past `lock_timeout_ms`, say): that day is listed `not
    checked`, with whether a retry may help". `compare` does (result `not-checked`, counted apart). But `list
    --check-source` with one day's partition locked by another session lists that day as state `unreadable`,
    counted in the summary's `unreadable` (the state the README gives a manifest that cannot be trusted or rows
    the role may not read: a difference to act on), though its note says "not checked (retryable)". A script reading
    `state`/`summary` sees an unreadable archive where nothing is wrong but a passing lock.
    Should: the day's state is `not-checked` (JSON and text), counted apart in the summary, as `compare` does.
    (Fix idea: the list command maps a retryable 'not checked' failure of the source fingerprint to a state of its
    own, not to `unreadable`.)"""
    env, name = setup
    cli_json(env, "archive")
    child = conn.execute("SELECT i.inhrelid::regclass::text FROM pg_inherits i WHERE i.inhparent = %s::regclass "
                         "ORDER BY 1 LIMIT 1", (name,)).fetchone()[0]
    with psycopg.connect(pg.dsn) as other:
        other.execute(f"LOCK TABLE {child} IN ACCESS EXCLUSIVE MODE")
        answer = cli_json(env, "list", "--check-source", code=1)
        other.rollback()
    first = answer["days"][0]
    assert first["day"] == days[0].isoformat() and "not checked (retryable)" in first["note"], first
    assert first["state"] == "not-checked", first
    assert answer["summary"][name].get("unreadable", 0) == 0, answer["summary"]


def test_compare_with_one_column_mode_table_the_role_may_not_read_reports_nothing_of_the_other_tables(
        pg, conn, schema, s3, bucket, tmp_path, days):
    """README (Command line, `compare`): "A day whose rows the role may not read is `unreadable` (a difference),
    never 'not in the source'", and `compare` "check[s] every day even when one cannot be checked". Two tables, both
    archived; the read-only role `compare` runs as may read the declarative `events` but not the column-mode
    `plain` (a REVOKE, a new table not yet granted). With `events` alone unreadable, compare lists each of its days
    `unreadable`, as promised. But with `plain` unreadable, `compare --json` answers only `{"ok": false,
    "exit_code": 2, "error": "role … may not SELECT from 'plain' …"}`: not one day is listed, neither `plain`'s
    archived day (as `unreadable`) nor `events`' three days, which it could compare (all equal). A nightly
    `compare` loses its whole report to one table's grant.
    Should: `events`' days compared and listed (`equal`), `plain`'s archived day listed `unreadable` with the GRANT
    to run, exit 1 (or 2 for the grant), as the declarative table's days are.
    (Fix idea: compare catches the table's failure to look for its days (plan.present_days in column mode) like the
    lock_timeout case, and lists the table's archived days `unreadable` with that error.)"""
    create_sample_events(conn, days, ROWS, schema=schema)
    conn.execute(f"CREATE TABLE {schema}.plain (id int, created_at timestamptz)")
    conn.execute(f"INSERT INTO {schema}.plain VALUES (1, %s)",
                 (dt.datetime.combine(days[0], dt.time(1), dt.timezone.utc),))
    start = days[0].isoformat()
    tables = [{"name": f"{schema}.events", "day_column": "created_at", "start_date": start,
               "partitioning": {"mode": "declarative"}},
              {"name": f"{schema}.plain", "day_column": "created_at", "start_date": start}]
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": tables}))
    env = _env(pg, s3, bucket, config)
    cli_json(env, "archive")
    role = f"ru_ro_{schema}"
    conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'Ro-pass-7f3a'")
    conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}; GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}; "
                 f"REVOKE SELECT ON {schema}.plain FROM {role}")
    ro = dict(env, ARCHIVE_PG_DSN=f"postgresql://{role}:Ro-pass-7f3a@{pg.dsn.split('@', 1)[1]}")
    done = cli(ro, "compare", "--json")
    answer = json.loads(done.stdout)
    assert done.returncode in (1, 2), done.stderr
    results = {(d["table"], d["day"]): d["result"] for d in answer.get("days", [])}
    assert results == {**{(f"{schema}.events", d.isoformat()): "equal" for d in days},
                       (f"{schema}.plain", start): "unreadable"}, answer
