"""Hunt 17 (wf): the command line as a new user runs it, end to end (README's Command line section), and
secrets. Each test runs ``archive-pipeline`` as a subprocess against real PostgreSQL and moto's S3 server over
HTTP, and fails on what is wrong now: a day not accounted for, a false exit code, a lie in the output."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import parse_config
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.conftest import utc_today
from archive_pipeline_tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "archive"  # the ``store`` fixture's prefix: the command line sees what the tests archive in-process


def _env(pg, s3, bucket, tmp_path, tables: list[dict]) -> dict[str, str]:
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": tables}, allow_unicode=True), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIVE_", "AWS_"))}
    env.update(PYTHONPATH=str(ROOT), ARCHIVE_PIPELINE_CONFIG=str(config), ARCHIVE_PG_DSN=pg.dsn,
               ARCHIVE_S3_BUCKET=bucket, ARCHIVE_S3_PREFIX=PREFIX, ARCHIVE_S3_ENDPOINT_URL=s3.endpoint_url,
               ARCHIVE_S3_ACCESS_KEY_ID="testing", ARCHIVE_S3_SECRET_ACCESS_KEY="testing", COLUMNS="250")
    return env


def cli(env: dict[str, str], *args: str, process: bool = False) -> subprocess.CompletedProcess:
    # in this process (helpers.run_cli: a second of interpreter start-up and imports saved per call); process=True: a
    # real `python -m` process, for what only one shows (signals, start-up, rlimits)
    done = run_cli(args, env, cwd=ROOT, timeout=90, process=process or None)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def _events(conn, schema, n_days: int = 3, **extra) -> tuple[list[dt.date], dict]:
    first = utc_today() - dt.timedelta(days=n_days)
    days = [first + dt.timedelta(days=i) for i in range(n_days)]
    create_sample_events(conn, days, 20, schema=schema)
    table = {"name": f"{schema}.events", "day_column": "created_at", "start_date": first.isoformat(),
             "partitioning": {"mode": "declarative"}, **extra}
    return days, table


# --------------------------------------------------------------------------------------------------


def test_prune_of_a_named_due_day_already_removed_lists_that_day(pg, s3, bucket, conn, schema, store, tmp_path):
    """Scenario: a table with retention (detach, keep_days 1); day D (three days ago) archived; `prune --day D`
    removes it (listed `removed`); the user runs the same `prune --day D --json` again (a cron retry, a second
    operator checking).

    Now: the answer is `{"ok": true, "days": [], ...}`, exit 0: the day the user named is not in it at all (the
    text output is an empty table), so a script cannot tell "removed before" from "the selection held nothing";
    yet the same day named while inside the window (keep_days raised) IS listed `already removed` (cli._not_due),
    and README promises JSON with "one entry per table-day".

    Should: D listed with status `already removed` (its mark's action, relation, archive), exit 0, as the
    not-due path and the core's own `remove_day` (removal.already_removed) say it.
    Fix idea: in cli._prune_table, a due day not in the source and not pending, whose manifest's removal mark is
    "done", is appended as `already removed` instead of `continue` (lookup_manifests is already run for it)."""
    days, table = _events(conn, schema, retention={"keep_days": 1, "action": "detach"})
    spec = parse_config({"tables": [table]}).tables[0]
    archive_partition(conn, spec, days[0], store)
    env = _env(pg, s3, bucket, tmp_path, [table])
    first = cli(env, "prune", "--day", days[0].isoformat(), "--json")
    assert [d["status"] for d in json.loads(first.stdout)["days"]] == ["removed"], first.stdout  # the setup

    again = cli(env, "prune", "--day", days[0].isoformat(), "--json")
    answer = json.loads(again.stdout)
    assert again.returncode == 0, again.stdout + again.stderr
    assert [(d["day"], d["status"]) for d in answer["days"]] == [(days[0].isoformat(), "already removed")], answer


def test_a_dsn_set_as_the_config_path_is_not_quoted_with_its_password(tmp_path, monkeypatch):
    """Swapped variables, as README's class of "a DSN set as the bucket or region" (a deployment's secret mapped
    to the wrong name): ARCHIVE_PIPELINE_CONFIG holds the DSN `postgresql://archiver:<secret>@db.internal/app`
    (ARCHIVE_PG_DSN holds it too), or `--config "$ARCHIVE_PG_DSN"` in a cron line.

    Now: `archive-pipeline list --json` exits 2 with "archive configuration
    postgresql:/archiver:Hunter2Sekret@db.internal/app (/…/postgresql:/archiver:Hunter2Sekret@…: relative to the
    working directory) not found" on stdout (JSON) and stderr, and the code location's load says the same: the
    password whole, in every log that keeps the output. The ConfigError path of cli.command calls _fail without
    redact (every other path redacts with _passwords()), and the path's `//` is folded to `/`, so even the URI
    pattern of errors.redact would not match it.

    Should: the same usage error (exit 2, naming the variable and "not found"), without the password: README
    "Messages never contain the DSN's password or a secret key".
    Fix idea: redact ConfigError messages with _passwords() in cli.command (and in load_config's not-found message
    for the code location), and hide a URI's user:password@ also after a single slash."""
    secret = "Hunter2Sekret"
    dsn = f"postgresql://archiver:{secret}@db.internal/app"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIVE_", "AWS_"))}
    env.update(PYTHONPATH=str(ROOT), ARCHIVE_PG_DSN=dsn, ARCHIVE_S3_BUCKET="bucket", ARCHIVE_PIPELINE_CONFIG=dsn)
    by_env = subprocess.run([sys.executable, "-m", "archive_pipeline.cli", "list", "--json"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    by_option = subprocess.run([sys.executable, "-m", "archive_pipeline.cli", "list", "--config", dsn],
                               env={**env, "ARCHIVE_PIPELINE_CONFIG": ""}, cwd=tmp_path, capture_output=True, text=True,
                               timeout=60)
    assert by_env.returncode == 2 and json.loads(by_env.stdout)["exit_code"] == 2, by_env.stdout + by_env.stderr
    assert "not found" in by_env.stderr and by_option.returncode == 2, by_option.stderr
    for said in (by_env.stdout, by_env.stderr, by_option.stdout, by_option.stderr):
        assert secret not in said, said

    from archive_pipeline.core.config import ConfigError, load_config

    monkeypatch.setenv("ARCHIVE_PG_DSN", dsn)
    monkeypatch.setenv("ARCHIVE_PIPELINE_CONFIG", dsn)
    monkeypatch.chdir(tmp_path)
    try:
        load_config()
    except ConfigError as exc:  # what the code location's load reports
        assert secret not in str(exc), str(exc)
    else:
        raise AssertionError("a DSN is no table file")


def test_restore_target_with_a_pasted_trailing_space_does_not_create_a_table_named_with_it(
        pg, s3, bucket, conn, schema, store, tmp_path):
    """Scenario: `archive-pipeline restore --day D --into new --target "S.events_back "`: the target pasted with a
    trailing space (a copied cell, a `read` line, a shell variable built from a padded column).

    Now: exit 0, "created: S.events_back " and the day's rows go into a new table whose catalog name is
    `events_back ` (trailing space): `SELECT * FROM S.events_back` then says the relation does not exist, the
    printed name cannot be told from the intended one, and `restore --into existing --target S.events_back`
    is refused (no such table) while a table with the rows exists. The command line strips --day/--from/--to
    (PeriodArg) and every ARCHIVE_S3_* value of white space, but takes --target's surrounding blanks as
    part of an unquoted name — where README offers SQL's double quotes for a name that needs them.

    Should: either a usage error (exit 2) saying the name begins or ends with white space and to write it in
    double quotes if meant (`S."events_back "`), or the blanks dropped (the table `events_back` created); never
    a silent table named with them. Fix idea: in restore.name_problem, refuse an unquoted part with leading or
    trailing white space (or strip it in cli.restore)."""
    days, table = _events(conn, schema)
    spec = parse_config({"tables": [table]}).tables[0]
    archive_partition(conn, spec, days[0], store)
    env = _env(pg, s3, bucket, tmp_path, [table])

    done = cli(env, "restore", "--day", days[0].isoformat(), "--into", "new", "--target", f"{schema}.events_back ",
               "--json")
    names = [r[0] for r in conn.execute("SELECT relname FROM pg_class WHERE relnamespace = %s::regnamespace "
                                        "AND relname LIKE 'events_back%%'", (schema,))]
    assert "events_back " not in names, (names, done.stdout)
    assert done.returncode == 2 or names == ["events_back"], (done.returncode, names, done.stdout, done.stderr)


def test_compare_of_a_day_lost_from_the_source_without_a_removal_says_none_was_recorded(
        pg, s3, bucket, conn, schema, store, tmp_path):
    """Scenario: day D archived (20 rows); then its partition is dropped by hand (a mistaken DROP, a DBA's
    clean-up script), not by `prune`: the manifest holds no removal mark. The user asks the command line whether
    the source still matches its archive.

    Now, for the same day and the same state: `compare --day D` says `not-in-source` "archived; the source no
    longer has this day" and "1 day(s) compared, 0 differ", exit 0 (and `list --check-source` `archived`, exit
    0); `verify --deep --day D` says FAILED, "the source's rows for D are not the archive's: 0 rows against 20",
    exit 1. README's compare compares "source against archive per day: row counts and content fingerprints";
    0 rows against 20 with no removal recorded is such a difference (the README's retention section is what
    makes a *recorded* removal not one; plan._absent treats "removed by retention, or gone" alike).

    Should: compare counts a day gone from the source without a removal mark as a difference (exit 1, its note
    saying no removal was recorded and that `restore --into original` puts it back), as verify --deep does;
    a day retention removed (mark done) stays `not-in-source`, exit 0.
    Fix idea: in plan._absent, a day with archived rows, no removal mark and no layout change is `differs`
    (or a new result counted by Comparison.differs).

    Decided otherwise (session 32): a partition dropped by hand after archiving is how many users let a day go; compare
    answers whether the source's content differs from the archive's, and a day gone is no difference of content (exit
    0, as for a day retention removed), while verify --deep has no rows to prove against and fails. What was wrong is
    that nothing told the two gone days apart: the note now says no removal was recorded, that the archive is the
    only copy, and how to put it back; the README says both commands' answers."""
    days, table = _events(conn, schema)
    spec = parse_config({"tables": [table]}).tables[0]
    archive_partition(conn, spec, days[0], store)
    from psycopg import sql
    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, f"events_{days[0]:%Y%m%d}")))
    env = _env(pg, s3, bucket, tmp_path, [table])
    day = days[0].isoformat()

    deep = cli(env, "verify", "--deep", "--day", day, "--json")
    assert deep.returncode == 1 and "0 rows against 20" in deep.stdout, deep.stdout  # the setup: verify's verdict
    compared = cli(env, "compare", "--day", day, "--json")
    assert compared.returncode == 0, compared.stdout + compared.stderr
    [found] = json.loads(compared.stdout)["days"]
    assert found["result"] == "not-in-source" and "no removal of it was recorded" in found["note"], found
    assert "restore --into original" in found["note"], found
