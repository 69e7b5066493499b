"""Hunt 8 (nr): the command line as an operator uses it (a subprocess, real PostgreSQL, moto's S3 over HTTP) for
this session's new or changed behaviours: exit codes, --json answers and whether each message names table, day,
cause and a remedy that works when followed literally."""

from __future__ import annotations

import datetime as dt
import json

import psycopg
import pytest
import yaml

from archive_pipeline_tests.test_hunt8_nk import _daily_table
from archive_pipeline_tests.test_hunt_cli import cli, make_env, write_config


def test_a_locked_partition_of_an_expression_keyed_table_holds_back_only_its_own_day_in_compare_and_list(
        pg, s3, bucket, conn, schema, tmp_path):
    """A user's ev is partitioned by RANGE ((at::date)) (at a timestamp), one child a day: the README's example of
    an expression key. A VACUUM FULL (or an ALTER) holds the partition of 2024-03-01 ACCESS EXCLUSIVE while the
    operator runs `compare --from 2024-02-29 --to 2024-03-04` (or `list --check-source`). Every day from
    2024-02-29 to 2024-03-03 is `unreadable`, "lock_timeout: another session holds a conflicting lock on the
    table", though only 03-01's partition is locked: the operator looks for a lock on ev_20240303 and finds none.
    The same table keyed by RANGE (at) loses 03-01 only. The README: "a lock on one partition holds back its day
    only". Cause: every read bounds the key by its values at the day's bounds widened by 26 h (for AT TIME ZONE's
    clock changes), also for a plain cast or date_trunc of a wall-clock column, whose key at the day's exact
    bounds already bounds every row of the day (the functions are monotonic), so each day plans and locks the
    two partitions on either side too. Should: only 2024-03-01 unreadable; the other days compared equal."""
    first = dt.date(2024, 2, 29)
    _daily_table(conn, schema, "(at::date)", first, 6)
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"source": {"lock_timeout_ms": 200}, "tables": [
        {"name": f"{schema}.ev", "day_column": "at", "start_date": first.isoformat(),
         "partitioning": {"mode": "declarative"}}]}))
    env = make_env(pg, s3.endpoint_url, bucket, config)
    span = ["--from", first.isoformat(), "--to", "2024-03-04"]
    assert cli(env, "archive", *span, "--json").returncode == 0
    with psycopg.connect(pg.dsn, autocommit=True) as vacuum:
        vacuum.execute("BEGIN")
        vacuum.execute(f"LOCK TABLE {schema}.ev_20240301 IN ACCESS EXCLUSIVE MODE")
        compared = json.loads(cli(env, "compare", *span, "--json").stdout)
        listed = json.loads(cli(env, "list", "--check-source", *span, "--json").stdout)
        vacuum.execute("ROLLBACK")
    assert {d["day"] for d in compared["days"] if d["result"] != "equal"} == {"2024-03-01"}, compared
    assert {d["day"] for d in listed["days"] if d["state"] != "archived"} == {"2024-03-01"}, listed



def test_verify_deep_of_a_removed_day_whose_enum_was_renamed_does_not_send_the_operator_to_archive_it_again(
        pg, s3, bucket, conn, schema, tmp_path):
    """Retention ('delete') removed 2024-03-10 of ev from PostgreSQL after proving its archive; the archive is
    now the only copy. Later a migration renames the enum of column m (ALTER TYPE mood RENAME TO mood2). The
    operator runs `verify --deep --day 2024-03-10`: "not checked (not retryable): ... its recorded type 's.mood'
    does not exist in this database ..., so the archived rows cannot be loaded to be proven (no verdict on the
    archive); ... to fix: archive the day again with overwrite, to record its columns as they are now". Followed
    literally, `archive --overwrite --day 2024-03-10` answers "no-data: no data for this day in PostgreSQL" and
    exits 0 (the rows are gone: retention removed them), and `verify --deep` says the same again: the remedy
    cannot work for a removed day. (The composite-shape variant of the same message knows this: "put the type
    back as it was (ALTER TYPE) to prove the day, or archive the day again (--overwrite) if the source still
    holds it".) Should: for a day retention removed (its manifest says so), name what does work: give the type
    its recorded name back (or create it) to prove the day, not archiving a day the source no longer has."""
    conn.execute(f"CREATE TYPE {schema}.mood AS ENUM ('a', 'b')")
    conn.execute(f"CREATE TABLE {schema}.ev (id int PRIMARY KEY, at timestamptz NOT NULL, m {schema}.mood)")
    conn.execute(f"INSERT INTO {schema}.ev SELECT g, '2024-03-10 00:00+00'::timestamptz + g * interval '1 minute', "
                 "'a' FROM generate_series(1, 20) g")
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [
        {"name": f"{schema}.ev", "day_column": "at", "start_date": "2024-03-10",
         "retention": {"keep_days": 30, "action": "delete"}}]))
    day = ["--day", "2024-03-10", "--json"]
    assert cli(env, "archive", *day).returncode == 0
    assert json.loads(cli(env, "prune", *day).stdout)["days"][0]["status"] == "removed"
    conn.execute(f"ALTER TYPE {schema}.mood RENAME TO mood2")
    verified = json.loads(cli(env, "verify", "--deep", *day).stdout)["days"][0]
    assert "no verdict" in " ".join(verified["problems"])  # (the premise)
    again = json.loads(cli(env, "archive", "--overwrite", *day).stdout)["days"][0]
    assert again["status"] == "no-data"  # (the premise: the remedy, followed, does nothing for a removed day)
    assert f"{schema}.mood" in verified["remedy"] and not verified["remedy"].startswith("archive the day again"), \
        verified["remedy"]


def test_a_range_archive_whose_day_was_refused_as_changed_names_the_overwrite_of_that_day_not_the_same_command(
        pg, s3, bucket, conn, schema, tmp_path):
    """2024-03-10 of ev was archived; then a migration renames a field of the composite in column p (ALTER TYPE pt
    RENAME ATTRIBUTE y TO z). The nightly `archive --from 2024-03-10 --to 2024-03-12` archives 03-11 and 03-12 and
    refuses 03-10 as changed ("a type inside its columns changed (not its rows) ...; add --overwrite to archive the
    day again") and ends: "1 day(s) failed; fix what the messages say and run the same command again (archived
    days are skipped)". Run again, the same command fails the same day again, forever (a changed day is never
    skipped); with --overwrite added, as the day's message says, it archives 03-11 and 03-12 all over again as
    new generations. (The Dagster side leaves such days out of a ranged run's 'Then:' and names overwrite; with
    --overwrite the command line already names each failed day's own command.) Should: the summary names the
    command that fixes the changed day, `archive --table <t> --day 2024-03-10 --overwrite`."""
    conn.execute(f"CREATE TYPE {schema}.pt AS (x int, y text)")
    conn.execute(f"CREATE TABLE {schema}.ev (id int PRIMARY KEY, at timestamptz NOT NULL, p {schema}.pt)")
    for n, day in enumerate(("2024-03-10", "2024-03-11", "2024-03-12")):
        conn.execute(f"INSERT INTO {schema}.ev SELECT %s * 1000 + g, %s::timestamptz + g * interval '1 minute', "
                     f"row(g, 'v')::{schema}.pt FROM generate_series(1, 20) g", (n, f"{day} 00:00+00"))
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [
        {"name": f"{schema}.ev", "day_column": "at", "start_date": "2024-03-10"}]))
    assert cli(env, "archive", "--day", "2024-03-10").returncode == 0
    conn.execute(f"ALTER TYPE {schema}.pt RENAME ATTRIBUTE y TO z")
    done = cli(env, "archive", "--from", "2024-03-10", "--to", "2024-03-12")
    assert done.returncode == 1
    assert "a type inside its columns changed" in done.stdout  # (the premise)
    assert "--day 2024-03-10 --overwrite" in done.stderr, done.stderr
