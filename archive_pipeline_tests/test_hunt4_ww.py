"""Hunt 4 ww: the command line end to end as an operator uses it on a bad day (a subprocess, real PostgreSQL,
moto's S3 over HTTP): a mix of damaged, changed, removed and renamed days through list, compare, verify,
restore, prune and archive. Each test asserts what the README promises and fails on what the command does now."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import yaml
from psycopg import sql

from archive_pipeline_tests.test_hunt_cli import make_env, small_table
from archive_pipeline_tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
DAYS = [dt.date(2024, 3, 10), dt.date(2024, 3, 11), dt.date(2024, 3, 12)]


def cli(env: dict[str, str], *args: str, timeout: float = 60, process: bool = False) -> subprocess.CompletedProcess:
    # in this process (helpers.run_cli: a second of interpreter start-up and imports saved per call); process=True: a
    # real `python -m` process, for what only one shows (signals, start-up, rlimits)
    done = run_cli(args, env, cwd=ROOT, timeout=timeout, process=process or None)
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    return done


def write_config(tmp_path: Path, tables: list[dict]) -> Path:
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": tables}, allow_unicode=True), encoding="utf-8")
    return config


def stored_keys(s3_client, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", []))


# ----------------------------------------------------------------------------------------------


def test_a_restore_refused_for_a_renamed_type_names_the_table_and_the_day(pg, s3, bucket, conn, schema, tmp_path):
    """An operator archives days of a table with an enum column; later a migration renames the enum type
    (`ALTER TYPE mood RENAME TO mood2`). `archive-pipeline restore --table s.e --day D --into new --target s.r
    --json` is refused, rightly, but the error says only "column 'm': type 's.mood' does not exist in this
    database; create it ... and restore again": neither the table nor the day it was restoring (with
    --from/--to, which day of the range stopped it is unknown), although restore_days promises "the error names
    the day" and every other restore failure names both (`verify --deep` of the same day names them). It
    should name the table and the day. Cause: restore.checked_type_sql raises TypeMissingError with only
    ``where`` (the column); nothing on the way out (_restore_current / iter_restore_days) adds table and day."""
    conn.execute(sql.SQL("CREATE TYPE {} AS ENUM ('a', 'b')").format(sql.Identifier(schema, "mood")))
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at timestamptz NOT NULL, m {})").format(
        sql.Identifier(schema, "e"), sql.Identifier(schema, "mood")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s::timestamptz + g * interval '1 minute', 'a' "
                         "FROM generate_series(1, 20) g").format(sql.Identifier(schema, "e")), (f"{DAYS[0]} 00:00+00",))
    tables = [{"name": f"{schema}.e", "day_column": "at", "start_date": DAYS[0].isoformat()}]
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, tables))
    assert cli(env, "archive", "--day", DAYS[0].isoformat()).returncode == 0
    conn.execute(sql.SQL("ALTER TYPE {} RENAME TO {}").format(sql.Identifier(schema, "mood"),
                                                             sql.Identifier("mood2")))
    done = cli(env, "restore", "--table", f"{schema}.e", "--day", DAYS[0].isoformat(), "--into", "new",
               "--target", f"{schema}.r", "--json")
    answer = json.loads(done.stdout)
    assert done.returncode == 1 and answer["ok"] is False, (done.returncode, answer)
    assert f"{schema}.e" in answer["error"] and DAYS[0].isoformat() in answer["error"], answer["error"]


def test_verify_of_a_damaged_day_says_what_to_do_about_it(pg, s3, bucket, conn, schema, s3_client, tmp_path):
    """A bad day in the bucket: of three archived days, one day's data object was deleted (a lifecycle rule, a
    hand clean-up) and another's manifest was hand-edited (its `rows` changed). `archive-pipeline verify --from
    D1 --to D3` rightly exits 1 and lists both, but each line gives only the fact: "s.a D1: object s3://... is
    missing", "s.a D2: manifest ... is unreadable: its manifest_sha256 does not match its content (altered or
    damaged)", and nothing on what to do, while `restore` of the same damaged day says "to fix: restore it from a
    replica or backup of the bucket, or archive the day again if the source still has it" (and `verify --deep`
    of a renamed type says "archive the day again with overwrite"). Every failing day's line should name the
    remedy (here: the source still has both days, so archiving them again mends them). Cause: verify_archive /
    stored_problems / _manifest_or_problem in core/verify.py return bare facts, and cli.verify prints them as
    they are."""
    small_table(conn, schema, "a", DAYS)
    tables = [{"name": f"{schema}.a", "day_column": "at", "start_date": DAYS[0].isoformat()}]
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, tables))
    span = ["--from", DAYS[0].isoformat(), "--to", DAYS[2].isoformat()]
    assert cli(env, "archive", *span).returncode == 0
    keys = stored_keys(s3_client, bucket)
    gone = next(k for k in keys if DAYS[0].isoformat() in k and not k.endswith(".manifest.json"))
    s3_client.delete_object(Bucket=bucket, Key=gone)
    edited = next(k for k in keys if DAYS[1].isoformat() in k and k.endswith(".manifest.json"))
    manifest = json.loads(s3_client.get_object(Bucket=bucket, Key=edited)["Body"].read())
    manifest["rows"] -= 1
    s3_client.put_object(Bucket=bucket, Key=edited, Body=json.dumps(manifest).encode())

    done = cli(env, "verify", *span)
    assert done.returncode == 1, done.stdout
    for day in DAYS[:2]:
        lines = [line for line in done.stdout.splitlines() if line.startswith(f"{schema}.a {day}:")]
        assert lines, done.stdout
        assert any("to fix" in line or "again" in line for line in lines), (day, lines)


def test_archive_dry_run_with_one_day_locked_plans_the_other_days(pg, s3, bucket, conn, schema, tmp_path):
    """A bad day in the database: a migration holds a lock on one day's partition (`LOCK TABLE ev_0311`, an
    `ALTER TABLE` on it) while the operator asks what `archive --from D1 --to D3 --dry-run --json` would do.
    `archive` itself fails that day only ("not checked (retryable): ... lock_timeout ...") and archives the
    others; `compare`, `list --check-source`, `verify --deep` and `prune --dry-run` list that day as not checked
    and the others as they are. The dry run ends the whole command instead: exit 3 ("cannot be reached") and one
    error, "the source database failed (s.ev): lock_timeout ...", with no plan for any day (nor any other
    table's), and naming no day. It should plan every other day, list the locked day as not checked (or
    refused) with the cause, and not call a lock an unreachable database. Cause: plan.plan_day /
    plan_archive in core/plan.py catch nothing around estimate_day and the fingerprint of the day, so the
    LockNotAvailable escapes to cli.command's psycopg.Error branch."""
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz NOT NULL) PARTITION BY RANGE (at)").format(
        sql.Identifier(schema, "ev")))
    for n, day in enumerate(DAYS):
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier(schema, f"p{n}"), sql.Identifier(schema, "ev"), sql.Literal(f"{day} 00:00+00"),
            sql.Literal(f"{day + dt.timedelta(days=1)} 00:00+00")))
        conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s::timestamptz + g * interval '1 minute' "
                             "FROM generate_series(1, 20) g").format(sql.Identifier(schema, "ev")), (f"{day} 00:00+00",))
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"source": {"lock_timeout_ms": 500}, "tables": [
        {"name": f"{schema}.ev", "day_column": "at", "start_date": DAYS[0].isoformat(),
         "partitioning": {"mode": "declarative"}}]}))
    env = make_env(pg, s3.endpoint_url, bucket, config)
    span = ["--from", DAYS[0].isoformat(), "--to", DAYS[2].isoformat()]
    assert cli(env, "archive", "--from", DAYS[0].isoformat(), "--to", DAYS[1].isoformat()).returncode == 0
    with psycopg.connect(pg.dsn) as blocker:
        blocker.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema, "p1")))
        done = cli(env, "archive", "--dry-run", *span, "--json")
    answer = json.loads(done.stdout)
    assert done.returncode != 3, answer  # nothing is unreachable: one day's partition is locked
    planned = {d["day"]: d["action"] for d in answer.get("days", [])}
    assert planned.get(DAYS[0].isoformat()) == "skip" and planned.get(DAYS[2].isoformat()) == "archive", answer
    assert DAYS[1].isoformat() in planned, answer


def _partitioned_days(conn, schema: str, days=DAYS) -> None:
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz NOT NULL) PARTITION BY RANGE (at)").format(
        sql.Identifier(schema, "ev")))
    for n, day in enumerate(days):
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier(schema, f"p{n}"), sql.Identifier(schema, "ev"), sql.Literal(f"{day} 00:00+00"),
            sql.Literal(f"{day + dt.timedelta(days=1)} 00:00+00")))
        conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s::timestamptz + g * interval '1 minute' "
                             "FROM generate_series(1, 20) g").format(sql.Identifier(schema, "ev")), (f"{day} 00:00+00",))


def _wait_for_a_lock_wait(conn, relation: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        waiting = conn.execute("SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = %s::regclass",
                               (relation,)).fetchone()[0]
        if waiting:
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing waited for {relation}")


def test_a_cancelled_prune_dry_run_does_not_say_a_removal_may_have_committed(pg, s3, bucket, conn, schema,
                                                                            tmp_path):
    """An operator on a bad day runs `archive-pipeline prune --dry-run` ("prove each due day and list what would
    be removed; remove nothing"); it hangs on a day whose partition a migration holds locked, and they press
    Ctrl-C. Exit 130, rightly, but the one line says "removing s.ev 2024-03-11 was cancelled by Ctrl-C: the
    source keeps the day unless the removal had committed; a removal left marked 'pending' is settled by the
    next run of the day": a dry run removes nothing and marks nothing, yet the operator is told a removal of
    the day may have committed. It should say the dry run was cancelled and nothing was removed (as a cancelled
    `verify --deep` says "proving ... was cancelled: nothing was changed"). Cause: lifecycle.remove_day notes
    every cancel as "removing" (note_cancelled(..., "removing")) whatever dry_run is, and CANCELLED_LEAVES
    ["removing"] in core/errors.py speaks of a removal."""
    _partitioned_days(conn, schema)
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [
        {"name": f"{schema}.ev", "day_column": "at", "start_date": DAYS[0].isoformat(),
         "partitioning": {"mode": "declarative"}, "retention": {"keep_days": 30, "action": "detach"}}]}))
    env = make_env(pg, s3.endpoint_url, bucket, config)
    span = ["--from", DAYS[0].isoformat(), "--to", DAYS[2].isoformat()]
    assert cli(env, "archive", *span).returncode == 0
    with psycopg.connect(pg.dsn) as blocker:
        blocker.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema, "p1")))
        child = subprocess.Popen([sys.executable, "-m", "archive_pipeline.cli", "prune", "--dry-run", *span],
                                 env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            _wait_for_a_lock_wait(conn, f"{schema}.p1")
            child.send_signal(signal.SIGINT)
            out, err = child.communicate(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
    assert child.returncode == 130, (child.returncode, out, err)
    assert "Traceback" not in err, err
    assert "removal had committed" not in err and "pending" not in err, err
    assert conn.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = %s::regclass",
                        (f"{schema}.ev",)).fetchone()[0] == 3  # nothing was removed, as the line should say


def _two_tables_one_unreadable(pg, s3, bucket, conn, schema, tmp_path):
    """Tables a and b, both archived (as the superuser); a role that may read (and delete from) a, not b."""
    small_table(conn, schema, "a", DAYS[:2])
    small_table(conn, schema, "b", DAYS[:2])
    retention = {"keep_days": 30, "action": "delete"}
    tables = [{"name": f"{schema}.{name}", "day_column": "at", "start_date": DAYS[0].isoformat(),
               "retention": retention} for name in ("a", "b")]
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, tables))
    role = f"r_{schema}"
    dsn = pg.create_password_role(role, "pw")
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(role)))
    conn.execute(sql.SQL("GRANT SELECT, DELETE ON {} TO {}").format(sql.Identifier(schema, "a"), sql.Identifier(role)))
    return env, {**env, "ARCHIVE_PG_DSN": dsn}


def test_archive_reports_the_days_it_archived_before_another_table_was_refused(pg, s3, bucket, conn, schema,
                                                                               s3_client, tmp_path):
    """An operator runs `archive-pipeline archive --from D1 --to D2 --json` over two configured tables with a
    role that may read the first (a) but not the second (b: SELECT was never granted). The command archives
    both days of a (their objects and manifests are in the bucket), then stops at b with exit 2 and the JSON
    {"ok": false, "error": "role ... may not SELECT from 's.b'; GRANT SELECT ...", ...}: no `days`, so the
    two days it did archive are reported nowhere (the text output is the error alone too). One table's
    failure must not hide the work done for the others: the answer should list a's days as archived beside
    the error (as restore's does: "its answer lists the days committed before it"). Cause: cli.archive
    collects results in a local list and the SourceError from plan.present_days of b escapes to
    cli.command's ArchiveError branch, which prints only the error."""
    _, env = _two_tables_one_unreadable(pg, s3, bucket, conn, schema, tmp_path)
    done = cli(env, "archive", "--from", DAYS[0].isoformat(), "--to", DAYS[1].isoformat(), "--json")
    answer = json.loads(done.stdout)
    assert sum(k.endswith(".manifest.json") and f"/{schema}.a/" in k for k in stored_keys(s3_client, bucket)) == 2
    assert done.returncode != 0, answer
    reported = {(d["table"], d["day"], d.get("status")) for d in answer.get("days", [])}
    assert {(f"{schema}.a", day.isoformat(), "archived") for day in DAYS[:2]} <= reported, answer


def test_prune_reports_the_days_it_removed_before_another_table_was_refused(pg, s3, bucket, conn, schema,
                                                                            tmp_path):
    """`archive-pipeline prune --json` over two tables past their retention window, run by a role that may read
    and delete from a but not read b. It removes both days of a from PostgreSQL (proven, deleted, committed),
    then stops at b with exit 2 and {"ok": false, "error": "role ... may not SELECT from 's.b' ..."}: the two
    days it deleted from the source are listed nowhere, so the operator does not learn that rows were removed
    (the README: a prune cancelled after it removed days lists them; a failure should too). The answer should
    list a's days as removed beside b's error. Cause: cli.prune collects results in a local list; the
    SourceError of b's plan.present_days escapes _prune_table to cli.command, which prints only the error."""
    admin, env = _two_tables_one_unreadable(pg, s3, bucket, conn, schema, tmp_path)
    assert cli(admin, "archive", "--from", DAYS[0].isoformat(), "--to", DAYS[1].isoformat()).returncode == 0
    done = cli(env, "prune", "--json")
    answer = json.loads(done.stdout)
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "a"))).fetchone()[0] == 0
    assert done.returncode != 0, answer
    reported = {(d["table"], d["day"], d.get("status")) for d in answer.get("days", [])}
    assert {(f"{schema}.a", day.isoformat(), "removed") for day in DAYS[:2]} <= reported, answer
