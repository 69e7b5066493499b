"""Hunt 6 (lf): the command line as a user tries it (a subprocess, real PostgreSQL, moto's S3 over HTTP):
hostile environment and configuration, edge dates, pipes, signals, and whether what each command prints and
exits with is what it did and what the README promises."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys

import pytest

from archive_pipeline_tests.conftest import utc_today
from archive_pipeline_tests.test_hunt_cli import DAYS, ROOT, cli, make_env, small_table, write_config


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


def _closing(fd: int):
    """A ``preexec_fn`` that starts the command with file descriptor ``fd`` closed (a shell's ``>&-`` or
    ``2>&-``, as cron lines and service units sometimes have)."""
    def close() -> None:
        os.close(fd)
    return close


@pytest.mark.parametrize("closed", [1, 2], ids=["stdout", "stderr"])
def test_archive_with_stdout_or_stderr_closed_still_archives_the_day(pg, s3, bucket, conn, schema, tmp_path,
                                                                      s3_client, closed):
    """A cron line `archive-pipeline archive --day D >&- 2>>archive.log` (or `2>&-`) starts the command with
    stdout (stderr) closed. Python then has no sys.stdout (None), and `_Commands.main` died before running
    anything: `AttributeError: 'NoneType' object has no attribute 'flush'` (it registers
    `sys.stdout.flush` / `sys.stderr.flush` callbacks unconditionally), exit 1, which reads as "a day failed";
    the day was never archived. Output that cannot be shown should go nowhere, as the README says of a pipe
    closed early, and the command should do its work and keep its own exit code (0 here)."""
    small_table(conn, schema)
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [
        {"name": f"{schema}.ev", "day_column": "at", "start_date": DAYS[0].isoformat()}]))
    done = subprocess.run([sys.executable, "-m", "archive_pipeline.cli", "archive", "--day", DAYS[0].isoformat()],
                          env=env, cwd=ROOT, stdout=subprocess.PIPE if closed == 2 else None,
                          stderr=subprocess.PIPE if closed == 1 else None, text=True, timeout=60,
                          preexec_fn=_closing(closed))
    said = (done.stdout or "") + (done.stderr or "")
    assert "Traceback" not in said, said
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert any(k.endswith(f"{DAYS[0].isoformat()}.jsonl.zst") for k in keys), (done.returncode, said, keys)
    assert done.returncode == 0, said


def test_a_report_that_cannot_be_written_for_a_full_disk_is_not_called_a_bug_nor_a_traceback(
        pg, s3, bucket, conn, schema, tmp_path):
    """`archive-pipeline list --json > /mnt/full/report.json` on a full disk (here /dev/full): writing the answer
    fails with ENOSPC. The command said "unexpected error (...): OSError: [Errno 28] No space left on device;
    this is a bug in archive_pipeline: report it", then, writing that error as JSON to the same stdout, died
    with a second traceback. A full disk is the machine's state, not a bug: it should say that its output could
    not be written (no space left), without a traceback, with a non-zero exit code."""
    small_table(conn, schema)
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [
        {"name": f"{schema}.ev", "day_column": "at", "start_date": DAYS[0].isoformat()}]))
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "archive_pipeline.cli", "list", "--day", DAYS[0].isoformat(),
                               "--json"], env=env, cwd=ROOT, stdout=full, stderr=subprocess.PIPE, text=True,
                              timeout=60)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    assert "this is a bug" not in done.stderr, done.stderr
    assert "No space left" in done.stderr or "no space left" in done.stderr, done.stderr


@pytest.mark.parametrize(("args", "dsn", "code"), [
    (["list", "--day", "2024-99-01"], None, 2),  # a malformed day: usage error
    (["list", "--day", "2024-03-10"], "postgresql://postgres@127.0.0.1:1/postgres", 3),  # the database is down
], ids=["usage", "unreachable"])
def test_stderr_on_a_full_disk_does_not_change_the_exit_code(pg, s3, bucket, conn, schema, tmp_path, args, dsn,
                                                             code):
    """A cron line `archive-pipeline list ... 2>>/var/log/archive.log` whose log disk is full (here stderr is
    /dev/full): the error message cannot be written (ENOSPC), and the command exits 1 with an uncaught
    OSError instead of its own code, 2 (usage) or 3 (unreachable, retry later). 1 means "differences found or a
    day failed", so the script alarms about data instead of retrying. The README's exit codes are the contract
    for scripts; output that cannot be written (a pipe closed early: "the command keeps its own exit code")
    must not change them. (`_ClosedPipeSafe` takes only BrokenPipeError; `_fail` and `exc.show()` write to
    stderr and let any other OSError escape.)"""
    small_table(conn, schema)
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [
        {"name": f"{schema}.ev", "day_column": "at", "start_date": DAYS[0].isoformat()}]))
    if dsn:
        env["ARCHIVE_PG_DSN"] = dsn
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "archive_pipeline.cli", *args], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=full, text=True, timeout=60)
    assert done.returncode == code, done.stdout


@pytest.mark.parametrize(("first", "last"), [("2024-03-11", "2024-03"), ("2024-03-11-05:00", "2024-03-11")])
def test_a_range_ending_with_a_longer_period_that_holds_its_start_is_not_refused_as_reversed(
        pg, s3, bucket, conn, schema, tmp_path, first, last):
    """`--to` takes "the last day, hour or month of a range", and `--day 2024-03` (or `--from 2024-03-01 --to
    2024-03`) selects every day of March. A user who wants the rest of March from the 11th writes `list --from
    2024-03-11 --to 2024-03`; one who names an hour to begin with writes `--from 2024-03-11-05:00 --to
    2024-03-11`. Both were refused as a usage error: "--from 2024-03-11 is after --to 2024-03". The range
    [start of --from, end of --to] is not empty: it holds 2024-03-11 and 2024-03-12 (first case) and
    2024-03-11 (second), which is what `select_days` itself selects. (`plan.reversed_range` compares the start
    of --from with the *start* of --to, where select_days reads --to up to its end.)"""
    small_table(conn, schema)
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [
        {"name": f"{schema}.ev", "day_column": "at", "start_date": DAYS[0].isoformat()}]))
    done = cli(env, "list", "--from", first, "--to", last, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    wanted = ["2024-03-11", "2024-03-12"] if last == "2024-03" else ["2024-03-11"]
    assert [d["day"] for d in json.loads(done.stdout)["days"]] == wanted


def test_this_month_selects_its_ended_days_of_a_daily_table(pg, s3, bucket, conn, schema, tmp_path):
    """On 2026-12-04 a user archives what December has so far of a daily table: `archive --day 2026-12` (or
    `--from 2026-11-28 --to 2026-12`). Refused as a usage error: "2026-12 is this month or later (UTC): a month is
    archived once it has ended". That is true of a monthly table, not of a daily one, whose December 1..3 have
    ended and are archived day by day; `--day` takes a month to mean "the table's periods that overlap it",
    and the README refuses a selection whose period has not ended only "when no chosen table has a period in
    it". (`cli._not_over` refuses every month from this one on, whatever the tables' granularity.)"""
    today = utc_today()
    if today.day == 1:
        pytest.skip("on the 1st no day of this month has ended yet")
    yesterday = today - dt.timedelta(days=1)
    small_table(conn, schema, days=[yesterday])
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [
        {"name": f"{schema}.ev", "day_column": "at", "start_date": yesterday.isoformat()}]))
    done = cli(env, "archive", "--day", f"{today:%Y-%m}", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert [(d["day"], d["status"]) for d in json.loads(done.stdout)["days"]] == [(yesterday.isoformat(), "archived")]
