"""Hunt G: the command line as a user runs it (a subprocess, real PostgreSQL, moto's S3 over HTTP): wrong
answers, misleading messages, wrong exit codes, results that are not what the README says."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from psycopg import sql

from archive_pipeline.core.archive import archive_partition, render_key
from archive_pipeline.core.config import parse_config
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
DAYS = [dt.date(2024, 3, 10), dt.date(2024, 3, 11), dt.date(2024, 3, 12)]


def make_env(pg, endpoint: str, bucket: str, config: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIVE_", "AWS_"))}
    env.update(PYTHONPATH=str(ROOT), ARCHIVE_PIPELINE_CONFIG=str(config), ARCHIVE_PG_DSN=pg.dsn,
               ARCHIVE_S3_BUCKET=bucket, ARCHIVE_S3_PREFIX="archive", ARCHIVE_S3_ENDPOINT_URL=endpoint,
               ARCHIVE_S3_ACCESS_KEY_ID="testing", ARCHIVE_S3_SECRET_ACCESS_KEY="testing", COLUMNS="200", **extra)
    return env


def cli(env: dict[str, str], *args: str, timeout: float = 60, process: bool = False) -> subprocess.CompletedProcess:
    # in this process (helpers.run_cli: a second of interpreter start-up and imports saved per call); process=True: a
    # real `python -m` process, for what only one shows (signals, start-up, rlimits)
    return run_cli(args, env, cwd=ROOT, timeout=timeout, process=process or None)


def small_table(conn, schema: str, name: str = "ev", days=DAYS, rows: int = 50) -> None:
    """``<schema>.<name> (id int primary key, at timestamptz)`` with ``rows`` rows on each of ``days`` (UTC)."""
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at timestamptz NOT NULL, note text)").format(
        sql.Identifier(schema, name)))
    for n, day in enumerate(days):
        conn.execute(sql.SQL("INSERT INTO {} SELECT %s * 1000 + g, %s::timestamptz + g * interval '1 minute', "
                             "md5(g::text) FROM generate_series(1, %s) g").format(sql.Identifier(schema, name)),
                     (n, f"{day} 00:00+00", rows))


def write_config(tmp_path: Path, tables: list[dict]) -> Path:
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": tables}, allow_unicode=True))
    return config


# ----------------------------------------------------------------------------------------------


def test_a_range_from_the_year_1_is_clipped_to_start_date_in_a_zone_east_of_utc(pg, s3, bucket, conn, schema,
                                                                                  tmp_path):
    """`--from 0001-01-01` is a valid day (PeriodArg accepts it) and for a UTC or an America/* table it is clipped
    to start_date. For a table in a zone east of UTC (Asia/Tokyo) the same command died with "unexpected error:
    OverflowError: date value out of range; this is a bug in archive_pipeline" and exit 1 (the exit code of
    "differences found"): local midnight of 0001-01-01 in Tokyo is before datetime.min in UTC."""
    small_table(conn, schema)
    tables = [{"name": f"{schema}.ev", "day_column": "at", "start_date": DAYS[0].isoformat(), "timezone": zone}
              for zone in ("Asia/Tokyo",)]
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, tables))
    done = cli(env, "list", "--from", "0001-01-01", "--to", DAYS[-1].isoformat(), "--json")
    assert "OverflowError" not in done.stderr + done.stdout, done.stderr
    assert done.returncode in (0, 2), done.stderr  # listed from start_date, or refused as a usage error
    if done.returncode == 0:
        assert [d["day"] for d in json.loads(done.stdout)["days"]][:1] == [DAYS[0].isoformat()]


def test_a_cancelled_restore_of_a_range_into_a_new_table_can_be_finished_as_the_message_says(
        pg, s3, bucket, conn, schema, s3_client, tmp_path):
    """`restore --from D1 --to D3 --into new --target T` interrupted (Ctrl-C) while the second day downloads: the
    first day is committed into the new table T. The message said "the day's restore was rolled back; to fix: run
    the same command again to finish" and the JSON answer listed no day, where the README says the answer lists
    the days committed before the failure (they stay restored). Running the same command again then fails at
    once: "T already exists; restore into it with --into existing" (exit 1)."""
    small_table(conn, schema)
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": DAYS[0].isoformat()}
    spec = parse_config({"tables": [table]}).tables[0]
    from archive_pipeline.core.store import MIN_PART_SIZE, S3Store

    store = S3Store(s3_client, bucket, prefix="archive", part_size=MIN_PART_SIZE)
    for day in DAYS:
        archive_partition(conn, spec, day, store)
    config = write_config(tmp_path, [table])
    target = f"{schema}.back"
    args = ["restore", "--from", DAYS[0].isoformat(), "--to", DAYS[-1].isoformat(), "--into", "new",
            "--target", target, "--json"]
    with FaultProxy(s3.endpoint_url) as proxy:
        env = make_env(pg, proxy.url, bucket, config)
        held = proxy.add(Fault(method="GET", path=re.escape(render_key(spec, DAYS[1], "archive")) + "$",
                               action="hold", times=1, hold_timeout=60))
        child = subprocess.Popen([sys.executable, "-m", "archive_pipeline.cli", *args], env=env, cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proxy.wait_held(1, timeout=30), child.poll()
            child.send_signal(signal.SIGINT)
            out, err = child.communicate(timeout=45)  # before the hold (60 s) ends
        finally:
            held.gate.set()
            child.kill()
    assert child.returncode == 130, err
    # the first day is committed in the new table
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "back"))).fetchone()[0] == 50
    answer = json.loads(out)
    assert [d["day"] for d in answer.get("days", [])] == [DAYS[0].isoformat()], answer  # README: listed
    # the remedy is the command that restores the rest (the same command would refuse the table it created)
    told = re.search(r"run archive-pipeline (restore .*?) to restore the rest", answer["error"])
    assert told, answer["error"]
    again = cli(make_env(pg, s3.endpoint_url, bucket, config), *shlex.split(told[1]))
    assert again.returncode == 0, (err, again.stderr)
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "back"))).fetchone()[0] == \
        50 * len(DAYS)


def test_missing_s3_credentials_are_a_configuration_error_not_an_unreachable_store(pg, s3, bucket, conn, schema,
                                                                                    tmp_path):
    """No S3 keys anywhere (neither $ARCHIVE_S3_ACCESS_KEY_ID / _SECRET_ACCESS_KEY nor boto3's chain): the README
    lists "missing credentials" among the S3 errors that fail at once, and exit 2 for a configuration error
    naming the variable. The command said "cannot reach the object store (NoCredentialsError: Unable to locate
    credentials): check $ARCHIVE_S3_ENDPOINT_URL and the network", exit 3 (unreachable) and retryable: true, so
    a script waits and retries a setting that no retry fixes, and the user checks the wrong variable."""
    small_table(conn, schema)
    config = write_config(tmp_path, [{"name": f"{schema}.ev", "day_column": "at", "start_date": DAYS[0].isoformat()}])
    env = make_env(pg, s3.endpoint_url, bucket, config, AWS_EC2_METADATA_DISABLED="true",
                   AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"))
    del env["ARCHIVE_S3_ACCESS_KEY_ID"], env["ARCHIVE_S3_SECRET_ACCESS_KEY"]
    done = cli(env, "list", "--json")
    answer = json.loads(done.stdout)
    assert answer["retryable"] is False, answer
    assert done.returncode == 2, answer
    assert "ARCHIVE_S3_ACCESS_KEY_ID" in answer["error"], answer


def test_list_does_not_call_a_day_restored_into_its_table_deleted_from_the_source(pg, s3, bucket, conn, schema,
                                                                                   store, tmp_path):
    """A day removed by retention (delete) and then restored with `restore --into original` is "an ordinary source
    day again" (README): `compare` says equal, `list --check-source` says archived with no note, `prune` would
    remove it again. Plain `list` still said "deleted from the source at ..." beside "in_source": true."""
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline.core.restore import restore_day

    small_table(conn, schema)
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": DAYS[0].isoformat(),
             "retention": {"keep_days": 30, "action": "delete"}}
    spec = parse_config({"tables": [table]}).tables[0]
    day = DAYS[0]
    archive_partition(conn, spec, day, store)
    remove_day(conn, spec, day, store)
    restore_day(conn, store, spec, day, into="original")
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [table]))
    [compared] = json.loads(cli(env, "compare", "--day", day.isoformat(), "--json").stdout)["days"]
    assert compared["result"] == "equal"
    done = cli(env, "list", "--day", day.isoformat(), "--json")
    [status] = json.loads(done.stdout)["days"]
    assert status["in_source"] is True
    assert "from the source" not in status["note"], status


def test_one_locked_table_does_not_hide_or_fail_the_work_done_on_the_others(pg, s3, bucket, conn, schema, tmp_path):
    """Two tables; the second is held by a migration's ACCESS EXCLUSIVE lock (past lock_timeout_ms). `archive`
    archived the first table's day (its object and manifest are in the bucket) and then answered as if the whole
    command had failed: exit 3 ("cannot be reached"), `ok: false` with no `days`, so the archived day is
    reported nowhere. `compare` likewise ended with exit 3 and compared nothing, where the README says compare
    "check[s] every day even when one cannot be checked (its rows locked past lock_timeout_ms, say): that day is
    listed `not checked` ...; only a lost database connection ends the command", and exit 1 is "a day failed
    (the other days still run)"."""
    small_table(conn, schema, "a", days=DAYS[:1])
    small_table(conn, schema, "b", days=DAYS[:1])
    tables = [{"name": f"{schema}.{name}", "day_column": "at", "start_date": DAYS[0].isoformat()} for name in "ab"]
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"source": {"lock_timeout_ms": 300}, "tables": tables}))
    env = make_env(pg, s3.endpoint_url, bucket, config)
    day = DAYS[0].isoformat()
    with pg.connect() as holder, holder.transaction():
        holder.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema, "b")))
        archived = cli(env, "archive", "--day", day, "--json")
        compared = cli(env, "compare", "--day", day, "--json")
    answer = json.loads(archived.stdout)
    assert archived.returncode == 1, answer
    assert {(d["table"], d["status"]) for d in answer["days"]} == {(f"{schema}.a", "archived"), (f"{schema}.b", "failed")}
    answer = json.loads(compared.stdout)
    assert compared.returncode == 1, answer
    assert [(d["table"], d["result"]) for d in answer["days"]][:1] == [(f"{schema}.a", "equal")], answer


def test_output_into_a_pipe_closed_early_is_not_reported_as_differences(pg, s3, bucket, conn, schema, tmp_path):
    """`archive-pipeline verify | head -1`, `list | head`: the reader goes away after the first line. The command
    exited 1, silently: in the README's exit codes 1 is "a check or comparison found differences, or a day
    failed", so a script with `set -o pipefail` (or one checking PIPESTATUS) reads that the archive has problems.
    A closed pipe is no finding: exit 0 (the work was done), or die of SIGPIPE as shell tools do (141)."""
    small_table(conn, schema, days=DAYS[:1])
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": DAYS[0].isoformat()}
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [table]))
    assert cli(env, "archive", "--day", DAYS[0].isoformat()).returncode == 0
    assert cli(env, "verify", "--day", DAYS[0].isoformat()).returncode == 0  # nothing wrong with the archive
    for args in (["verify", "--day", DAYS[0].isoformat()], ["verify", "--day", DAYS[0].isoformat(), "--json"]):
        child = subprocess.Popen([sys.executable, "-m", "archive_pipeline.cli", *args], env=env, cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        child.stdout.close()  # `| true`: the reader is gone before the first line
        err = child.stderr.read().decode()
        assert child.wait(timeout=60) in (0, 141, -signal.SIGPIPE), (args, child.returncode, err)


def test_a_range_reversed_across_the_repeated_autumn_hour_is_refused_as_reversed(pg, s3, bucket, conn, schema,
                                                                                  tmp_path):
    """`--from 2024-10-27-02:00+0100 --to 2024-10-27-02:00` (Berlin): the second 02:00 (+01:00) is an hour after
    the first (+02:00), so the range is reversed, as `--from 2024-10-27-03:00 --to 2024-10-27-02:00` is, which is
    refused "--from ... is after --to" (exit 2). This one passed the textual check, selected nothing, and `list`
    exited 0 after blaming start_date: "no hourly period of the table in the selection (its first day,
    start_date, is 2024-10-26)"."""
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz)").format(sql.Identifier(schema, "hb")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, '2024-10-26 22:00+00'::timestamptz + g * interval '1 minute' "
                         "FROM generate_series(1, 300) g").format(sql.Identifier(schema, "hb")))
    table = {"name": f"{schema}.hb", "day_column": "at", "granularity": "hourly", "timezone": "Europe/Berlin",
             "start_date": "2024-10-26"}
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [table]))
    plain = cli(env, "list", "--from", "2024-10-27-03:00", "--to", "2024-10-27-02:00")
    assert plain.returncode == 2 and "is after --to" in plain.stderr
    done = cli(env, "list", "--from", "2024-10-27-02:00+0100", "--to", "2024-10-27-02:00")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "after" in done.stderr and "start_date" not in done.stderr, done.stderr


def test_a_missing_config_file_named_by_the_variable_says_which_variable(pg, s3, bucket, tmp_path):
    """$ARCHIVE_PIPELINE_CONFIG pointing at a file that is not there (a typo, another machine's path): the command
    said "archive configuration /x/tables.yml not found (check the path given (a component's config_path is
    relative to its defs.yaml))": the hint of a Dagster component, given to a command line user who gave no path
    and has no defs.yaml; nothing says the path came from $ARCHIVE_PIPELINE_CONFIG (Click hands the variable's
    value over as if it were --config, and load_config words a given path for a component)."""
    env = make_env(pg, s3.endpoint_url, bucket, tmp_path / "tables.yml")
    done = cli(env, "list", "--json")
    answer = json.loads(done.stdout)
    assert done.returncode == 2, answer
    assert "ARCHIVE_PIPELINE_CONFIG" in answer["error"] and "component" not in answer["error"], answer
