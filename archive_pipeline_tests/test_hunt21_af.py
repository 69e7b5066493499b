"""Hunt 21 (af): a code review of the command line (cli.py), the configuration (core/config.py), key templates
(core/keys.py) and discovery (core/discovery.py): exit codes, --json, option combinations, remedies printed."""

from __future__ import annotations

import datetime as dt
import json
import re
import shlex

from archive_pipeline_tests.test_hunt17_wf import _env, cli

DAY = dt.date(2024, 3, 10)


def _table(schema: str, name: str = "t", **extra) -> dict:
    return {"name": f"{schema}.{name}", "day_column": "at", "start_date": DAY.isoformat(), **extra}


def _run_as_printed(env: dict[str, str], command: str):
    """A command the CLI printed, run as a user pastes it (``archive-pipeline`` being this checkout's module)."""
    argv = shlex.split(command)
    assert argv[0] == "archive-pipeline", command
    return cli(env, *argv[1:])


def test_archive_of_a_day_emptied_by_hand_prints_a_restore_command_that_is_refused_as_printed(
        pg, s3, bucket, conn, schema, tmp_path):
    """Scenario: a column-mode table; day D (3 rows) archived with `archive --day D`; then D's rows are deleted by
    hand (a bad purge). The cron's `archive --day D` answers `no-data`, exit 0, with the note that the archive holds
    3 rows and "`archive-pipeline restore --table T --day D` puts the rows back". The user pastes that command.

    Now: cli._dropped_by_hand builds it with `run.suggest('restore', spec.name, day)`, no options; restore's
    `--into` defaults to `new`, which needs `--target` (cli.restore: "--into new needs --target schema.table"), so
    the command printed as the way to put the rows back is refused, exit 2, and nothing is restored.

    Should: the note's command works as printed: `... --into original` (the day holds no rows in the table, so
    restore puts them back into it, as cli._put_back and plan's notes already suggest for a day gone); fix idea:
    run.suggest('restore', spec.name, day, '--into', 'original') in _dropped_by_hand."""
    conn.execute(f"CREATE TABLE {schema}.t (id int, at date)")
    conn.execute(f"INSERT INTO {schema}.t SELECT g, %s FROM generate_series(1, 3) g", (DAY,))
    env = _env(pg, s3, bucket, tmp_path, [_table(schema)])
    assert cli(env, "archive", "--day", DAY.isoformat()).returncode == 0
    conn.execute(f"DELETE FROM {schema}.t WHERE at = %s", (DAY,))
    done = cli(env, "archive", "--day", DAY.isoformat(), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    [said] = json.loads(done.stdout)["days"]
    printed = re.search(r"`(archive-pipeline restore [^`]*)` puts the rows back", said["message"])
    assert printed, said
    restored = _run_as_printed(env, printed[1])
    count = conn.execute(f"SELECT count(*) FROM {schema}.t WHERE at = %s", (DAY,)).fetchone()[0]
    assert restored.returncode == 0 and count == 3, (
        f"{printed[1]!r}: exit {restored.returncode}, {count} rows back: {restored.stderr.strip()[-300:]}")


def test_dry_run_of_a_day_emptied_by_hand_on_an_overwrite_table_plans_what_the_run_does_not_do(
        pg, s3, bucket, conn, schema, tmp_path):
    """Scenario: a column-mode table configured with `overwrite: true`; day D (3 rows) archived; then D's rows are
    deleted by hand. The user previews `archive --day D --dry-run`, then runs `archive --day D`.

    Now: the dry run (cli._archive_plan) asks `_overwrites_dropped(days, overwrite or spec.overwrite)`, so with the
    table's own overwrite it plans to archive D again (as an empty day over the archive of its 3 rows); the real run
    (cli._archive_table) asks `_overwrites_dropped(days, overwrite)` with the command's flag alone, so it answers
    `no-data` and writes nothing. The preview promises one thing and the run does another (README: the dry run
    "decides with the archiver's own rule"), and the listing after it still shows the 3-row archive.

    Should: both take the same rule: the plan says what the run then does (either both archive D as empty,
    as the archiver does with the table's overwrite, or both keep it, `no-data` with the note); fix idea: one
    helper deciding `overwrite or spec.overwrite` (or the flag alone) used by both paths."""
    conn.execute(f"CREATE TABLE {schema}.t (id int, at date)")
    conn.execute(f"INSERT INTO {schema}.t SELECT g, %s FROM generate_series(1, 3) g", (DAY,))
    env = _env(pg, s3, bucket, tmp_path, [_table(schema, overwrite=True)])
    assert cli(env, "archive", "--day", DAY.isoformat()).returncode == 0
    conn.execute(f"DELETE FROM {schema}.t WHERE at = %s", (DAY,))
    planned = cli(env, "archive", "--day", DAY.isoformat(), "--dry-run", "--json")
    [plan_day] = json.loads(planned.stdout)["days"]
    done = cli(env, "archive", "--day", DAY.isoformat(), "--json")
    [run_day] = json.loads(done.stdout)["days"]
    [listed] = json.loads(cli(env, "list", "--day", DAY.isoformat(), "--json").stdout)["days"]
    writes = plan_day["action"] in ("archive", "overwrite")
    wrote = run_day["status"] in ("archived", "skipped") and listed.get("rows") == 0
    assert writes == wrote, (f"dry run: {plan_day['action']} ({plan_day.get('reason')}); run: {run_day['status']} "
                             f"({run_day.get('message')}); listed afterwards: {listed.get('rows')} rows")


def test_archive_of_a_day_gone_from_the_source_whose_manifest_is_damaged_says_no_data_exit_0(
        pg, s3, bucket, conn, schema, tmp_path, s3_client):
    """Scenario: a column-mode table; day D (3 rows) archived; then D's rows are deleted by hand, and D's manifest is
    damaged in the bucket (a bad copy, a truncated write by a sync tool): the archive's manifest is now the only
    record of the day, and the source has nothing left of it. The cron's `archive --day D --json` runs.

    Now: cli._archive_table asks cli._absent_days for the days without rows, which calls _pending_removals and
    drops its second answer (`pending, _ = ...`: the days whose manifest could not be read). D is then reported
    `no-data` "no data for this day in PostgreSQL", exit 0, `ok: true`: neither the damaged manifest (which `list`
    reports `unreadable`, exit 1, and `prune` reports as failed with the remedy "put it back from a backup of the
    bucket") nor a pending removal mark it may hold (which archive is documented to settle) is mentioned.

    Should: such a day is not a plain `no-data`: it fails (exit 1) or is reported `not-checked`, naming the manifest
    that could not be read and the remedy (retry for a read that failed; a backup of the bucket for a damaged one), as
    prune's `_prune_table` does with the same `unread` answer."""
    conn.execute(f"CREATE TABLE {schema}.t (id int, at date)")
    conn.execute(f"INSERT INTO {schema}.t SELECT g, %s FROM generate_series(1, 3) g", (DAY,))
    env = _env(pg, s3, bucket, tmp_path, [_table(schema)])
    archived = cli(env, "archive", "--day", DAY.isoformat(), "--json")
    assert archived.returncode == 0, archived.stdout
    key = json.loads(archived.stdout)["days"][0]["key"]
    conn.execute(f"DELETE FROM {schema}.t WHERE at = %s", (DAY,))
    s3_client.put_object(Bucket=bucket, Key=key + ".manifest.json", Body=b'{"manifest_version": 2, "rows": ')
    listed = cli(env, "list", "--day", DAY.isoformat(), "--json")
    assert listed.returncode == 1 and json.loads(listed.stdout)["days"][0]["state"] == "unreadable", listed.stdout
    done = cli(env, "archive", "--day", DAY.isoformat(), "--json")
    [said] = json.loads(done.stdout)["days"]
    assert done.returncode != 0 or "manifest" in (said.get("message") or ""), (
        f"exit {done.returncode}, {said['status']}: {said.get('message')}")
