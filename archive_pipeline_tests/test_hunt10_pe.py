"""Hunt 10 (pe): the command line and the README, taken literally by a user (a subprocess, real PostgreSQL,
moto's S3 over HTTP): what a command prints, suggests, exits with, and leaves behind."""

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

import yaml
from psycopg import sql

from archive_pipeline.core.archive import archive_partition, render_key
from archive_pipeline.core.config import parse_config
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
DAYS = [dt.date(2024, 3, 10), dt.date(2024, 3, 11), dt.date(2024, 3, 12)]


def make_env(pg, endpoint: str, bucket: str, **extra: str) -> dict[str, str]:
    """The environment of a user who names the table list with --config (no $ARCHIVE_PIPELINE_CONFIG)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIVE_", "AWS_"))}
    env.update(PYTHONPATH=str(ROOT), ARCHIVE_PG_DSN=pg.dsn, ARCHIVE_S3_BUCKET=bucket, ARCHIVE_S3_PREFIX="archive",
               ARCHIVE_S3_ENDPOINT_URL=endpoint, ARCHIVE_S3_ACCESS_KEY_ID="testing",
               ARCHIVE_S3_SECRET_ACCESS_KEY="testing", COLUMNS="200", **extra)
    return env


def cli(env: dict[str, str], *args: str, cwd: Path = ROOT, timeout: float = 60,
        process: bool = False) -> subprocess.CompletedProcess:
    # in this process (helpers.run_cli: a second of interpreter start-up and imports saved per call); process=True: a
    # real `python -m` process, for what only one shows (signals, start-up, rlimits)
    return run_cli(args, env, cwd=cwd, timeout=timeout, process=process or None)


def small_table(conn, schema: str, name: str = "ev", days=DAYS, rows: int = 50) -> None:
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at timestamptz NOT NULL, note text)").format(
        sql.Identifier(schema, name)))
    for n, day in enumerate(days):
        conn.execute(sql.SQL("INSERT INTO {} SELECT %s * 1000 + g, %s::timestamptz + g * interval '1 minute', "
                             "md5(g::text) FROM generate_series(1, %s) g").format(sql.Identifier(schema, name)),
                     (n, f"{day} 00:00+00", rows))


def write_config(tmp_path: Path, tables: list[dict], name: str = "my_tables.yaml") -> Path:
    config = tmp_path / name
    config.write_text(yaml.safe_dump({"tables": tables}, allow_unicode=True))
    return config


# ----------------------------------------------------------------------------------------------


def test_a_cancelled_restore_names_a_command_that_reads_the_same_table_list(pg, s3, bucket, conn, schema,
                                                                              s3_client, tmp_path):
    """A user keeps the table list in their own file and runs `archive-pipeline restore --config my_tables.yaml
    --table s.ev --from D1 --to D3 --target s.back`; Ctrl-C while the second day downloads. The first day stays
    committed, and the message says "to fix: run archive-pipeline restore --table s.ev --from D2 --to D3 --into
    existing --target s.back to restore the rest". Pasted, that command has no --config: it reads
    ./archive_tables.yaml (or $ARCHIVE_PIPELINE_CONFIG), which is another table list or none, and fails ("not in
    the configuration" / "archive_tables.yaml not found", exit 2). Cause: cli._restore_cancelled builds its
    command by hand without run.config_path, where Run.suggest (used for every other suggested command) adds
    `--config` for exactly this reason. Should: the named command carries the --config the run was given, and
    pasted, restores the rest."""
    small_table(conn, schema)
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": DAYS[0].isoformat()}
    spec = parse_config({"tables": [table]}).tables[0]
    from archive_pipeline.core.store import MIN_PART_SIZE, S3Store

    store = S3Store(s3_client, bucket, prefix="archive", part_size=MIN_PART_SIZE)
    for day in DAYS:
        archive_partition(conn, spec, day, store)
    config = write_config(tmp_path, [table])
    args = ["restore", "--config", str(config), "--table", f"{schema}.ev", "--from", DAYS[0].isoformat(),
            "--to", DAYS[-1].isoformat(), "--target", f"{schema}.back", "--json"]
    with FaultProxy(s3.endpoint_url) as proxy:
        held = proxy.add(Fault(method="GET", path=re.escape(render_key(spec, DAYS[1], "archive")) + "$",
                               action="hold", times=1, hold_timeout=60))
        child = subprocess.Popen([sys.executable, "-m", "archive_pipeline.cli", *args],
                                 env=make_env(pg, proxy.url, bucket), cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        try:
            assert proxy.wait_held(1, timeout=30), child.poll()
            child.send_signal(signal.SIGINT)
            out, err = child.communicate(timeout=45)
        finally:
            held.gate.set()
            child.kill()
    assert child.returncode == 130, err
    told = re.search(r"run archive-pipeline (restore .*?) to restore the rest", json.loads(out)["error"])
    assert told, out
    again = cli(make_env(pg, s3.endpoint_url, bucket), *shlex.split(told[1]))
    assert again.returncode == 0, (told[0], again.stderr)
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "back"))).fetchone()[0] == \
        50 * len(DAYS)


def test_the_command_an_archive_failure_suggests_is_a_command_a_shell_runs(pg, s3, bucket, conn, schema,
                                                                          s3_client, tmp_path):
    """A day changed after it was archived: `archive-pipeline archive --day D` fails it and ends with "the day(s)
    changed since they were archived are archived again only with overwrite: archive --table s.ev --day D
    --overwrite". A user pastes that into the shell: `archive: command not found` (exit 127); every other command
    the CLI names is spelled whole (`run archive-pipeline restore ...`, "see `archive-pipeline list`"). Same for
    verify's remedy ("compare --table ... --day ...", "archive --table ... --overwrite"). Cause: Run.suggest
    returns f"{verb} --table ..." without the program's name. Should: the suggested command begins with
    `archive-pipeline`, so that, pasted, it runs."""
    small_table(conn, schema)
    config = write_config(tmp_path, [{"name": f"{schema}.ev", "day_column": "at", "start_date": DAYS[0].isoformat()}])
    env = make_env(pg, s3.endpoint_url, bucket, ARCHIVE_PIPELINE_CONFIG=str(config))
    assert cli(env, "archive", "--day", DAYS[0].isoformat()).returncode == 0
    conn.execute(sql.SQL("UPDATE {} SET note = 'changed' WHERE id = 1").format(sql.Identifier(schema, "ev")))
    done = cli(env, "archive", "--day", DAYS[0].isoformat())
    assert done.returncode == 1, done.stderr
    told = re.search(r"only with overwrite: (.*)$", done.stderr.strip())
    assert told, done.stderr
    assert shlex.split(told[1])[0] == "archive-pipeline", told[1]


def _hourly(conn, schema: str, tmp_path: Path) -> Path:
    small_table(conn, schema)
    return write_config(tmp_path, [{"name": f"{schema}.ev", "day_column": "at", "start_date": DAYS[0].isoformat(),
                                    "granularity": "hourly"}])


def test_an_hour_of_a_day_after_today_as_to_is_refused_as_that_day_is(pg, s3, bucket, conn, schema, tmp_path):
    """README: "a day after today UTC is refused". On an hourly table a user types `archive-pipeline archive --from
    2024-03-10 --to <in two days>-03:00` (an hour, the form the table's partitions have): the command runs, exit
    0, archiving up to the last complete hour as if the range were right, where `--to <in two days>` (the same day
    as a date) is refused, exit 2, "... is after today (UTC): a day is archived once it has ended". Cause:
    cli._not_over looks only at texts of 10 (a day) or 7 (a month) characters, so an hour's text
    (YYYY-MM-DD-HH:00) is never checked, and plan.select_days clips it to now. Should: refused the same way
    (exit 2, "after today"), as the day it is on."""
    config = _hourly(conn, schema, tmp_path)
    env = make_env(pg, s3.endpoint_url, bucket)
    later = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=2)).isoformat()
    as_day = cli(env, "list", "--config", str(config), "--from", DAYS[0].isoformat(), "--to", later, "--json")
    assert as_day.returncode == 2 and "after today" in as_day.stderr, as_day.stderr  # (the premise)
    as_hour = cli(env, "list", "--config", str(config), "--from", DAYS[0].isoformat(), "--to", f"{later}-03:00",
                  "--json")
    assert as_hour.returncode == 2, (as_hour.returncode, as_hour.stderr[-400:])
    assert "after today" in as_hour.stderr, as_hour.stderr


def test_a_from_hour_after_today_is_not_blamed_on_start_date(pg, s3, bucket, conn, schema, tmp_path):
    """On an hourly table a user runs `archive-pipeline archive --from <in two days>-03:00` (a slip of the date).
    It is refused (exit 2), but stderr says "s.ev: no hourly period of the table in the selection (its first day,
    start_date, is 2024-03-10)": the user looks at start_date, which is years before the date they gave. The
    same slip as a day (`--from <in two days>`) says "... is after today (UTC): a day is archived once it has
    ended". Cause: cli._not_over skips an hour's text, and plan.not_ended, with no --to, takes now as the
    selection's end, finds nothing between a start after now and now, and answers False (so Run.days blames
    start_date). Should: the message says the hour is after today / not over, and never blames start_date."""
    config = _hourly(conn, schema, tmp_path)
    env = make_env(pg, s3.endpoint_url, bucket)
    later = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=2)).isoformat()
    done = cli(env, "archive", "--config", str(config), "--from", f"{later}-03:00")
    assert done.returncode == 2, done.stderr
    assert "start_date" not in done.stderr.split("Usage:")[0], done.stderr
