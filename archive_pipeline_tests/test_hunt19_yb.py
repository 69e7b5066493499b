"""Hunt 19 (yb): real PostgreSQL faults during every command (pg_terminate_backend and pg_cancel_backend of the
archiver's session at each phase, role-level timeouts, a read-only role, connection limits, a role or database
refused, hostile role settings), judged on classification (retryable, permanent, usage error; the command line's exit
code), what is left behind and the message (table, day, cause, a remedy that leads to the right state)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import parse_config
from archive_pipeline_tests.test_hunt17_wf import ROOT, _env, _events, cli


def _blocked_by(conn, holder: psycopg.Connection, timeout: float = 60) -> int:
    """The pid of the session waiting for a lock ``holder`` holds (the command's, at the phase the lock gates)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute("SELECT pid FROM pg_catalog.pg_stat_activity WHERE %s = ANY(pg_catalog.pg_blocking_pids(pid))",
                           (holder.info.backend_pid,)).fetchone()
        if row:
            return row[0]
        time.sleep(0.05)
    raise AssertionError("the command never waited for the lock")


def restore_range_as(conn, pg, env: dict[str, str], role: str, days: list, into: str, target: str
                     ) -> subprocess.CompletedProcess:
    """The command line's ``restore --from <first> --to <last> --into <into> --target <target> --json`` run as
    ``role`` (created by the caller), which is dropped afterwards with what it owns."""
    env = {**env, "ARCHIVE_PG_DSN": psycopg.conninfo.make_conninfo(pg.dsn, user=role)}
    try:
        return cli(env, "restore", "--from", days[0].isoformat(), "--to", days[-1].isoformat(), "--into", into,
                   "--target", target, "--json")
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("refusal", ["read-only-role", "no-create-on-schema"])
def test_a_range_restore_refused_by_the_roles_setting_does_not_tell_to_restore_the_rest_without_its_first_day(
        pg, s3, bucket, conn, schema, store, tmp_path, refusal):
    """Scenario: three archived days D1..D3; ``archive-pipeline restore --from D1 --to D3 --into new --target
    S.back`` run with a role the database refuses writes to for every day alike: its DBA set
    ``ALTER ROLE ... SET default_transaction_read_only = on`` (the brief's read-only role used for restore), or the
    role lacks CREATE on the target's schema. Nothing can be restored until the role is fixed.

    Now: exit 2 (a configuration cause, rightly), nothing restored, and the message ends with "...; to fix: ...
    (ALTER ROLE <role> RESET default_transaction_read_only) ...; then: run archive-pipeline restore --table S.events
    --from D2 --to D3 --into new --target S.back to restore the rest of S.events (D2, D3, without D1)". cli.restore
    treats every non-retryable failure with a table and a day as a day that fails for good and appends
    ``_the_rest(..., skipped=failed_day)``, a command that skips D1; with a one-day range it says "S.events is done
    but for D1". But the cause is the session's, not D1's: D1 failed only because it came first. A user who fixes
    the role and then runs the suggested command never restores D1, and is told the table is otherwise done.

    Should: for a cause that refuses every day alike (errors.CONFIGURATION_CAUSES: a read-only session, a privilege,
    a missing table; the same test cli.restore already makes for the exit code), no "then" that leaves out the
    failed day: fix the cause and run the same command again (nothing was restored), or, with days already
    committed, the command for the rest from the failed day inclusive. Fix idea: in cli.restore, compute
    ``configuration`` before the "then" and skip ``_the_rest`` (or pass ``inclusive=True, skipped=""``) when it
    holds."""
    days, table = _events(conn, schema, n_days=3)
    spec = parse_config({"tables": [table]}).tables[0]
    for day in days:
        archive_partition(conn, spec, day, store)
    env = _env(pg, s3, bucket, tmp_path, [table])
    role = sql.Identifier(f"{schema}_restorer")
    if refusal == "read-only-role":
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER").format(role))
        conn.execute(sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(role))
    else:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), role))
        conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(sql.Identifier(schema), role))
    done = restore_range_as(conn, pg, env, f"{schema}_restorer", days, "new", f"{schema}.back")
    answer = json.loads(done.stdout)
    error = answer.get("error", "")
    assert (done.returncode, answer["days"]) == (2, []), (done.returncode, answer)  # refused, nothing restored
    assert conn.execute("SELECT to_regclass(%s)", (f"{schema}.back",)).fetchone()[0] is None
    assert f"without {days[0]}" not in error and f"but for {days[0]}" not in error, error
    if "then: run " in error:  # a command offered after the fix must restore the day that failed too
        assert f"--from {days[0]}" in error, error


def test_a_dry_run_prune_whose_session_is_terminated_says_it_was_removing_and_to_run_prune_without_dry_run(
        pg, s3, bucket, conn, schema, store, tmp_path):
    """Scenario: a table with retention (detach, keep_days 1), its days D1, D2, D3 archived and due; an operator
    previews ``archive-pipeline prune --from D1 --to D3 --dry-run --json``. While the dry run checks D2 (it waits for
    D2's partition, which a maintenance session holds), a DBA's reaper ends its session
    (``pg_terminate_backend``).

    Now: exit 3, retryable (right), D1 listed "would remove", D2 failed, and the command's error reads "lost the
    database while removing S.events D2: proving ... terminated ...; the days after it were not tried: run prune
    again". cli._prune_table raises _DatabaseLost with "while removing" whatever ``dry_run`` is, and cli.prune's
    remedy is the fixed text "run prune again". A dry run removes nothing, and the remedy, read as written, is the
    real ``prune``: the operator who only wanted a preview is told to run the command that detaches D1..D3.

    Should: the dry run's loss says what it was doing ("checking" / "previewing the removal of S.events D2"), and its
    remedy is the dry run again, e.g. ``run archive-pipeline prune --from D1 --to D3 --dry-run again`` (built with
    run.command('prune') and the selection, as restore's remedies are). Fix idea: pass dry_run into the _DatabaseLost
    text and build the "run prune again" remedy from the command line that was run."""
    days, table = _events(conn, schema, n_days=4, retention={"keep_days": 1, "action": "detach"})
    spec = parse_config({"tables": [table]}).tables[0]
    for day in days[:3]:
        archive_partition(conn, spec, day, store)
    env = _env(pg, s3, bucket, tmp_path, [table])
    with pg.connect() as holder:
        holder.execute("BEGIN")
        holder.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
            sql.Identifier(schema, f"events_{days[1]:%Y%m%d}")))
        running = subprocess.Popen([sys.executable, "-m", "archive_pipeline.cli", "prune", "--from",
                                    days[0].isoformat(), "--to", days[2].isoformat(), "--dry-run", "--json"],
                                   env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            conn.execute("SELECT pg_catalog.pg_terminate_backend(%s, 30000)", (_blocked_by(conn, holder),))
            out, err = running.communicate(timeout=90)
        finally:
            if running.poll() is None:
                running.kill()
        holder.rollback()
    answer = json.loads(out)
    assert running.returncode == 3 and answer["retryable"] is True, (running.returncode, answer, err)
    assert [(d["day"], d["status"]) for d in answer["days"]][:2] == [(days[0].isoformat(), "would remove"),
                                                                      (days[1].isoformat(), "failed")], answer
    # nothing was removed: the source still has every partition
    assert all(conn.execute("SELECT to_regclass(%s)", (f"{schema}.events_{d:%Y%m%d}",)).fetchone()[0] for d in days)
    error = answer["error"]
    assert "while removing" not in error, error  # a dry run removes nothing
    assert "--dry-run" in error, error  # its remedy is the preview again, not the removal
