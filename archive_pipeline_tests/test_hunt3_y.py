"""Hunt 3 y: the command line as a new user runs it, end to end (a subprocess, real PostgreSQL, moto's S3 over
HTTP): odd but plausible input, --json, pipes, Ctrl-C, two commands at once. Each test asserts what the README
promises (or what a clear message would say) and fails on what the command does now."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import yaml
from psycopg import sql

from archive_pipeline.core.archive import archive_partition, render_key
from archive_pipeline.core.config import parse_config
from archive_pipeline.core.keys import manifest_key
from archive_pipeline.core.locks import lock_key
from archive_pipeline.core.store import MIN_PART_SIZE, S3Store
from archive_pipeline_tests.conftest import utc_today
from archive_pipeline_tests.fault_proxy import Fault, FaultProxy
from archive_pipeline_tests.test_hunt_cli import make_env, small_table
from archive_pipeline_tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
DAYS = [dt.date(2024, 3, 10), dt.date(2024, 3, 11), dt.date(2024, 3, 12)]


def cli(env: dict[str, str], *args: str, timeout: float = 60, process: bool = False) -> subprocess.CompletedProcess:
    # in this process (helpers.run_cli: a second of interpreter start-up and imports saved per call); process=True: a
    # real `python -m` process, for what only one shows (signals, start-up, rlimits)
    done = run_cli(args, env, cwd=ROOT, timeout=timeout, process=process or None)
    assert "Traceback" not in done.stderr, done.stderr  # never, whatever the input
    return done


def write_config(tmp_path: Path, tables: list[dict], name: str = "tables.yaml") -> Path:
    config = tmp_path / name
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump({"tables": tables}, allow_unicode=True), encoding="utf-8")
    return config


def stored_keys(s3_client, bucket: str) -> set[str]:
    return {o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])}


# ----------------------------------------------------------------------------------------------


def test_stderr_into_a_closed_pipe_neither_stops_the_work_nor_changes_the_exit_code(pg, s3, bucket, conn, schema,
                                                                                     s3_client, tmp_path):
    """`archive-pipeline archive --from D1 --to D2 2>&1 | head -1` (or `|& true`, a log shipper that went away):
    the README says output into a pipe closed early goes to /dev/null and the command keeps its own exit code.
    That holds for stdout only. The first note the command writes to stderr (here "b: no daily period of the
    table in the selection", for a table whose start_date is later) hits the closed pipe, rich raises
    SystemExit(1) from inside the work, and the command ends at once with exit 1 ("a day failed"): table a's
    days, which it was asked to archive, are not archived at all. A usage error into such a pipe exits 1, not 2."""
    small_table(conn, schema, "a", DAYS[:2])
    small_table(conn, schema, "b", DAYS[2:])
    tables = [{"name": f"{schema}.a", "day_column": "at", "start_date": DAYS[0].isoformat()},
              {"name": f"{schema}.b", "day_column": "at", "start_date": DAYS[2].isoformat()}]
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, tables))

    def into_a_closed_pipe(*args: str) -> int:
        read, write = os.pipe()
        os.close(read)  # the reader is gone before the first line
        try:
            child = subprocess.Popen([sys.executable, "-m", "archive_pipeline.cli", *args], env=env, cwd=ROOT,
                                     stdout=write, stderr=write)
        finally:
            os.close(write)
        return child.wait(timeout=60)

    code = into_a_closed_pipe("archive", "--from", DAYS[0].isoformat(), "--to", DAYS[1].isoformat())
    spec = parse_config({"tables": tables}).tables[0]
    archived = {manifest_key(render_key(spec, day, "archive")) for day in DAYS[:2]}
    assert archived <= stored_keys(s3_client, bucket), (code, stored_keys(s3_client, bucket))
    assert code in (0, 141, -signal.SIGPIPE), code
    assert into_a_closed_pipe("list", "--day", "not-a-day") in (2, 141, -signal.SIGPIPE)


def test_a_config_file_given_with_the_config_option_that_is_not_there_is_not_called_a_components(
        pg, s3, bucket, tmp_path):
    """`archive-pipeline list --config ./tabels.yaml` (a typo): the message was "archive configuration tabels.yaml
    not found (check the path given (a component's config_path is relative to its defs.yaml))": the hint of a
    Dagster component, to a command line user who has no component and no defs.yaml. The same case through
    $ARCHIVE_PIPELINE_CONFIG was fixed (test_hunt_cli); --config, the option the README names first, was not."""
    env = make_env(pg, s3.endpoint_url, bucket, tmp_path / "unused.yaml")
    missing = tmp_path / "tabels.yaml"
    done = cli(env, "list", "--config", str(missing), "--json")
    answer = json.loads(done.stdout)
    assert done.returncode == 2, answer
    assert str(missing) in answer["error"], answer
    assert "component" not in answer["error"] and "defs.yaml" not in answer["error"], answer


def test_a_period_that_has_not_ended_is_refused_as_such_not_blamed_on_start_date(pg, s3, bucket, conn, schema,
                                                                                 tmp_path):
    """`list --day <today>` is refused (exit 2): "<today> is today or later (UTC): a day is archived once it has
    ended". The same day named by one of its hours, `--day <today>-00:00`, or an hour of an hourly table that has
    not ended (`--day <today>-23:00`), passed: the command exited 0 and said "no daily period of the table in the
    selection (its first day, start_date, is 2024-03-10)", sending the user to look at a start_date that is
    years before the day asked for. The README: a day that has not ended is refused."""
    today = utc_today()  # (its 23:00 ends at midnight: never over today)
    small_table(conn, schema, "d", DAYS[:1])
    small_table(conn, schema, "h", DAYS[:1])
    tables = [{"name": f"{schema}.d", "day_column": "at", "start_date": DAYS[0].isoformat()},
              {"name": f"{schema}.h", "day_column": "at", "start_date": DAYS[0].isoformat(), "granularity": "hourly"}]
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, tables))
    plain = cli(env, "list", "--table", f"{schema}.d", "--day", today.isoformat())
    assert plain.returncode == 2 and "not ended" in plain.stderr, plain.stderr  # as the README says
    for table, period in ((f"{schema}.d", f"{today}-00:00"), (f"{schema}.h", f"{today}-23:00")):
        done = cli(env, "list", "--table", table, "--day", period)
        assert "start_date" not in done.stderr, (period, done.stderr)
        assert done.returncode == 2, (period, done.returncode, done.stdout, done.stderr)


def test_after_a_failed_day_of_an_overwrite_the_message_does_not_say_archived_days_are_skipped(
        pg, s3, bucket, conn, schema, s3_client, tmp_path):
    """`archive --from D1 --to D2 --overwrite` where D2 fails (another run holds its table-day lock): the command
    says "1 day(s) failed; fix what the messages say and run the same command again (archived days are
    skipped)". With --overwrite they are not: the same command archives D1 all over again (a new generation,
    the whole day read and uploaded once more, and a Dagster sensor sees a new materialization). The advice is
    only true without --overwrite; here it should name the day that failed, not promise a skip."""
    small_table(conn, schema, "ev", DAYS[:2])
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": DAYS[0].isoformat()}
    spec = parse_config({"tables": [table]}).tables[0]
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [table]))
    args = ["archive", "--from", DAYS[0].isoformat(), "--to", DAYS[1].isoformat(), "--overwrite"]
    assert cli(env, *args).returncode == 0
    key = lock_key(spec.name, DAYS[1])
    assert conn.execute("SELECT pg_try_advisory_lock(%s)", key).fetchone()[0]
    try:
        done = cli(env, *args)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", key)
    assert done.returncode == 1, done.stderr
    told = done.stderr.strip().splitlines()[-1]
    assert DAYS[1].isoformat() in told and "--overwrite" in told, told  # the command for the failed day alone
    again = cli(env, *args, "--json")
    statuses = {d["day"]: d["status"] for d in json.loads(again.stdout)["days"]}
    assert "archived days are skipped" not in told or statuses[DAYS[0].isoformat()] == "skipped", (told, statuses)


def test_verify_does_not_call_a_day_damaged_that_was_re_archived_while_it_ran(pg, s3, bucket, conn, schema,
                                                                              s3_client, tmp_path):
    """`archive-pipeline verify` of a table, while the Dagster daemon (or a colleague's `archive --overwrite`)
    re-archives one of its days whose rows changed: verify reads every day's manifest first, then checks each
    day by reading its manifest again and comparing that with the first read. The day re-archived in between
    is reported FAILED, "manifest md5: '<new>', recorded '<old>'; manifest rows: 51, recorded 50", exit 1 ("a
    check found differences"): an operator is told an intact archive (the new generation, whole) is damaged.
    The archive as it is when checked is intact; at most the day was not checked (retryable)."""
    small_table(conn, schema, "ev", DAYS[:1])
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": DAYS[0].isoformat()}
    spec = parse_config({"tables": [table]}).tables[0]
    store = S3Store(s3_client, bucket, prefix="archive", part_size=MIN_PART_SIZE)
    archive_partition(conn, spec, DAYS[0], store)
    config = write_config(tmp_path, [table])
    with FaultProxy(s3.endpoint_url) as proxy:
        env = make_env(pg, proxy.url, bucket, config)
        # the check of the day's object after the lookup read its manifest (read once since hunt13 sj): the
        # overwrite happens before it
        held = proxy.add(Fault(method="HEAD", path=re.escape(render_key(spec, DAYS[0], "archive")) + "$",
                               action="hold", times=1, hold_timeout=60))
        child = subprocess.Popen([sys.executable, "-m", "archive_pipeline.cli", "verify", "--day",
                                  DAYS[0].isoformat(), "--json"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        try:
            assert proxy.wait_held(1, timeout=30), child.poll()
            conn.execute(sql.SQL("INSERT INTO {} VALUES (999, %s, 'late')").format(sql.Identifier(schema, "ev")),
                         (f"{DAYS[0]} 12:34+00",))
            assert archive_partition(conn, spec, DAYS[0], store, overwrite=True).rows == 51
        finally:
            held.gate.set()
        out, err = child.communicate(timeout=60)
    answer = json.loads(out)
    [day] = answer["days"]
    claimed = [p for p in day["problems"] if not p.startswith("not checked")]
    assert claimed == [], (child.returncode, day)
    assert cli(make_env(pg, s3.endpoint_url, bucket, config), "verify", "--day", DAYS[0].isoformat(),
               "--download").returncode == 0  # intact indeed


def test_a_prune_cancelled_after_it_removed_a_day_says_which_day_it_removed(pg, s3, bucket, conn, schema, s3_client,
                                                                            tmp_path):
    """`archive-pipeline prune --json` over two due days, Ctrl-C while the second day's archive is proven: the first
    day's rows are already deleted from PostgreSQL, and the command's whole answer is "proving <t> <D2> was
    cancelled by Ctrl-C: nothing was changed" (JSON: no days at all). The one command that destroys source rows
    tells the operator it changed nothing; and the next prune passes over the removed day in silence, so no
    output ever says it was removed. A cancelled restore lists the days it committed (README); a cancelled
    prune must at least name the days it removed."""
    small_table(conn, schema, "ev", DAYS[:2])
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": DAYS[0].isoformat(),
             "retention": {"keep_days": 30, "action": "delete"}}
    spec = parse_config({"tables": [table]}).tables[0]
    store = S3Store(s3_client, bucket, prefix="archive", part_size=MIN_PART_SIZE)
    for day in DAYS[:2]:
        archive_partition(conn, spec, day, store)
    with FaultProxy(s3.endpoint_url) as proxy:
        env = make_env(pg, proxy.url, bucket, write_config(tmp_path, [table]))
        held = proxy.add(Fault(method="GET", path=re.escape(render_key(spec, DAYS[1], "archive")) + "$",
                               action="hold", times=1, hold_timeout=60))  # the second day's proof downloads it
        child = subprocess.Popen([sys.executable, "-m", "archive_pipeline.cli", "prune", "--json"], env=env, cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proxy.wait_held(1, timeout=30), child.poll()
            child.send_signal(signal.SIGINT)
            out, err = child.communicate(timeout=30)
        finally:
            held.gate.set()
            child.kill()
    assert child.returncode == 130, err
    left = conn.execute(sql.SQL("SELECT at::date, count(*) FROM {} GROUP BY 1 ORDER BY 1").format(
        sql.Identifier(schema, "ev"))).fetchall()
    assert left == [(DAYS[1], 50)]  # the first day was removed by this command
    answer = json.loads(out)
    assert "nothing was changed" not in answer["error"] or DAYS[0].isoformat() in out, answer
    assert DAYS[0].isoformat() in out, answer  # (JSON: the removed day, as a cancelled restore lists its days)


def test_prune_refuses_a_selection_one_table_cannot_read_before_it_removes_anything(pg, s3, bucket, conn, schema,
                                                                                    s3_client, tmp_path):
    """`archive-pipeline prune --day 2024-03-10-05:00+0100` (an hour as Berlin names it) over a Berlin table and a
    UTC table: prune works table by table and reads each table's selection only when it reaches it. The Berlin
    table's day is proven and its rows DELETED; then the UTC table's selection is refused ("2024-03-10 05:00 in
    UTC never has the offset +0100") and the command ends as a usage error, exit 2, JSON `ok: false` and no
    days: a script reads "bad arguments, nothing done" while a day of rows is gone. archive and restore read
    every table's selection before they start; a usage error must come before prune removes anything (or the
    removal must be reported)."""
    small_table(conn, schema, "a", DAYS[:1])
    small_table(conn, schema, "b", DAYS[:1])
    retention = {"keep_days": 30, "action": "delete"}
    tables = [{"name": f"{schema}.a", "day_column": "at", "start_date": DAYS[0].isoformat(),
               "timezone": "Europe/Berlin", "retention": retention},
              {"name": f"{schema}.b", "day_column": "at", "start_date": DAYS[0].isoformat(), "retention": retention}]
    store = S3Store(s3_client, bucket, prefix="archive", part_size=MIN_PART_SIZE)
    for spec in parse_config({"tables": tables}).tables:
        archive_partition(conn, spec, DAYS[0], store)
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, tables))
    done = cli(env, "prune", "--day", f"{DAYS[0]}-05:00+0100", "--json")
    answer = json.loads(done.stdout)
    left = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "a"))).fetchone()[0]
    if done.returncode == 2:  # a usage error: nothing was done
        assert left == 50, (left, answer)
    else:
        assert DAYS[0].isoformat() in done.stdout and answer.get("days"), answer


def test_restore_into_a_target_that_does_not_exist_is_a_usage_error_exit_2(pg, s3, bucket, conn, schema, s3_client,
                                                                           tmp_path):
    """`restore --day D --into existing --target s.evnts` (a typo) or `--into new --target nosuch.t` (a schema
    not created yet): nothing was restored, and the message says what to fix in the command ("table 's.evnts'
    does not exist; create it or restore with --into new"). README: exit 2 is a usage or configuration error,
    1 "a check or comparison found differences, or a day failed"; an unknown --table, a configured table that
    does not exist, a malformed --target are all 2. These exit 1, as if a day's data had failed to restore."""
    small_table(conn, schema, "ev", DAYS[:1])
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": DAYS[0].isoformat()}
    archive_partition(conn, parse_config({"tables": [table]}).tables[0], DAYS[0],
                      S3Store(s3_client, bucket, prefix="archive", part_size=MIN_PART_SIZE))
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [table]))
    for into, target in (("existing", f"{schema}.evnts"), ("new", f"{schema}_nosuch.t")):
        done = cli(env, "restore", "--day", DAYS[0].isoformat(), "--into", into, "--target", target, "--json")
        answer = json.loads(done.stdout)
        assert "does not exist" in answer["error"], answer
        assert (done.returncode, answer["exit_code"]) == (2, 2), (into, answer)
