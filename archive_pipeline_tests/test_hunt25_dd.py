"""Hunt 25 (dd): the command line's machine-readable side (--json answers and exit codes)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

from psycopg import sql

from archive_pipeline_tests.test_cli import ROOT, cli
from archive_pipeline_tests.test_hunt10_px import _env
from archive_pipeline_tests.test_hunt14_ti import _tables, end_cli_session_waiting_on_a_lock

DAYS = [dt.date(2024, 3, 10), dt.date(2024, 3, 11)]


def _ended_while_waiting(conn, pg, env, locked: str, *args: str) -> tuple[int, str, str]:
    """``archive-pipeline *args`` as a real process, its session ended (pg_terminate_backend) once it waits behind
    an ACCESS EXCLUSIVE lock on ``locked`` (schema.table): (exit code, stdout, stderr)."""
    schema, table = locked.split(".")
    with pg.connect() as migration:
        migration.autocommit = False
        migration.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema, table)))
        child = subprocess.Popen([sys.executable, "-m", "archive_pipeline.cli", *args], env=env, cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            ended = end_cli_session_waiting_on_a_lock(conn, child, 60)
            assert ended == 1, (child.poll(), child.stdout.read() if child.poll() is not None else "")
        finally:
            migration.rollback()
        out, err = child.communicate(timeout=120)
    return child.returncode, out, err


def test_prune_json_answers_ok_true_beside_exit_code_3_when_the_database_is_lost_between_tables(
        pg, s3, bucket, conn, schema, tmp_path):
    """Scenario: a nightly `archive-pipeline prune --json` over tables `a` and `b` (retention delete, keep_days 1),
    each with two archived days past the window. prune removes `a`'s two days; while it looks for `b`'s due days
    (``plan.present_days``, waiting behind a migration's lock on `b`), the server ends its session (a failover, an
    operator's pg_terminate_backend).

    Now: ``_losing_the_database`` turns the lost connection into ``_DatabaseLost`` (right: exit 3, a's removed days
    listed, the error and retryable), but ``prune`` computes ``"ok": not refused``, and no day was refused or failed
    (b's days were never tried, so none of them is in ``days``): the answer is ``{"ok": true, "exit_code": 3,
    "error": "lost the source database while looking for the due days of ...", "retryable": true}``. A script that
    reads ``ok`` (README: "a command that fails as a whole answers `ok: false` with `exit_code`, `error` and
    `retryable`") takes the night's prune for a success while b was never pruned; archive's same path answers
    ``ok: false``.

    Should: ``ok: false`` whenever the answer carries an error / a non-zero exit code. Fix idea: in ``prune``,
    ``"ok": not refused and not lost and not stopped``."""
    config = _tables(conn, schema, tmp_path, ["a", "b"], DAYS, retention={"keep_days": 1, "action": "delete"})
    env = _env(pg, s3, bucket, config)
    done = cli(env, "archive", "--from", "2024-03-10", "--to", "2024-03-11")
    assert done.returncode == 0, done.stdout + done.stderr
    code, out, err = _ended_while_waiting(conn, pg, env, f"{schema}.b", "prune", "--json")
    answer = json.loads(out)
    assert code == 3, out + err
    removed = {(d["table"], d["day"]) for d in answer["days"] if d["status"] == "removed"}
    assert removed == {(f"{schema}.a", "2024-03-10"), (f"{schema}.a", "2024-03-11")}, answer  # (the premise)
    assert answer["exit_code"] == 3 and answer["ok"] is False, answer


def test_a_usage_error_under_json_prints_the_database_password_a_pasted_dsn_holds(
        pg, s3, bucket, conn, schema, tmp_path):
    """Scenario: ``ARCHIVE_PG_DSN`` holds a password (``postgresql://postgres:Sup3rSecret@.../postgres``). In a
    restore script the operator pastes the wrong variable: ``archive-pipeline restore --day 2024-03-10 --target
    "$ARCHIVE_PG_DSN" --json`` (a slip the command already guards against for ``--table``, whose refusal is
    redacted "a DSN pasted there").

    Now: ``restore`` raises ``click.UsageError(f"--target: {name_problem(target)} ...")``, whose text quotes the
    target whole (``'postgresql://postgres:Sup3rSecret@localhost/postgres' is not a schema-qualified table name``);
    ``_Commands.main`` writes ``exc.format_message()`` into the JSON error object on stdout and Click's usage text
    on stderr as they are: the database password lands in the job's log and in whatever collects the JSON. Every
    other refusal goes through ``redact(..., *_passwords())`` (``_fail``, ``_told``, the unknown ``--table``).

    Should: no secret in any message (README: "Messages never contain the DSN's password or a secret key"). Fix
    idea: in ``_Commands.main``, redact ``exc.format_message()`` (and the text Click shows) with ``_passwords()``
    for every ClickException, as ``_fail`` does."""
    secret = "Sup3rSecret"
    config = _tables(conn, schema, tmp_path, ["a"], DAYS[:1])
    env = _env(pg, s3, bucket, config)
    env["ARCHIVE_PG_DSN"] = pg.dsn.replace("postgresql://postgres@", f"postgresql://postgres:{secret}@")
    assert secret in env["ARCHIVE_PG_DSN"]  # (the premise)
    pasted = f"postgresql://postgres:{secret}@localhost/postgres"
    done = cli(env, "restore", "--day", "2024-03-10", "--target", pasted, "--json")
    answer = json.loads(done.stdout)
    assert done.returncode == 2 and answer["ok"] is False, done.stdout + done.stderr  # (refused: right)
    assert secret not in done.stdout + done.stderr, done.stdout + done.stderr
