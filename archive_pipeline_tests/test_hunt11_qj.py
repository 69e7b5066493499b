"""Hunt 11 (qj): the command line and the README taken literally, as a new user and as a script use them
(real ``archive-pipeline`` processes against real PostgreSQL and S3 over HTTP)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from psycopg import sql

from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.conftest import utc_today
from archive_pipeline_tests.test_cli import ROOT, cli, cli_json

PREFIX = "cli"
ROWS = 200


@pytest.fixture
def days() -> list[dt.date]:
    today = utc_today()
    return [today - dt.timedelta(days=n) for n in (3, 2, 1)]


@pytest.fixture
def setup(pg, conn, schema, s3, bucket, tmp_path, days):
    """Three sample days in a declaratively partitioned table (retention: keep 1 day, delete), a config file and
    the command line's environment."""
    create_sample_events(conn, days, ROWS, schema=schema)
    table = {"name": f"{schema}.events", "day_column": "created_at", "start_date": days[0].isoformat(),
             "partitioning": {"mode": "declarative"}, "format": "jsonl", "compression": "zstd",
             "retention": {"keep_days": 1, "action": "delete"}}
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [table]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIVE_", "AWS_"))}
    env.update(PYTHONPATH=str(ROOT), ARCHIVE_PIPELINE_CONFIG=str(config), ARCHIVE_PG_DSN=pg.dsn,
               ARCHIVE_S3_BUCKET=bucket, ARCHIVE_S3_PREFIX=PREFIX, ARCHIVE_S3_ENDPOINT_URL=s3.endpoint_url,
               ARCHIVE_S3_ACCESS_KEY_ID="testing", ARCHIVE_S3_SECRET_ACCESS_KEY="testing", COLUMNS="200")
    return env, f"{schema}.events"


def _with_seam(env: dict[str, str], tmp_path: Path, seam: str, *args: str) -> subprocess.CompletedProcess:
    """``archive-pipeline *args`` in a process where ``seam`` (Python run before the command) patched a step of the
    core to send the process SIGTERM at a chosen point: the ``kill`` of a user or a service manager landing there."""
    runner = tmp_path / "runner.py"
    runner.write_text("import os, signal, sys, contextlib\n" + textwrap.dedent(seam) +
                      "\nfrom archive_pipeline.cli import main\nsys.argv[0] = 'archive-pipeline'\nmain()\n")
    return subprocess.run([sys.executable, str(runner), *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_prune_cancelled_after_the_second_days_removal_committed_does_not_say_that_day_was_left_as_it_was(
        setup, conn, days, tmp_path):
    """`prune` of two due days, stopped by SIGTERM (a `kill`, a service manager) after the second day's removal
    COMMITTED, while its manifest's 'done' mark is being written (an S3 PUT: the longest step after the commit).
    Now: exit 143 and `pruning was cancelled by SIGTERM after 1 day(s) were removed from the source (listed); the
    day it was on was left as it was`; the --json answer's `days` lists only the first day. But the second day's
    rows ARE gone from the source (its manifest left 'pending'): the message says the opposite of what happened to
    the only day a user would check. Run alone, the same cancel says "the source keeps the day unless the removal
    had committed" (CANCELLED_LEAVES['removing']); with earlier days removed that hedge is lost.
    Should: name the day it was on and what it is left as (removed, or maybe removed, its mark settled by the next
    run), e.g. list it in `days` as removed / pending, never "left as it was".
    (Fix idea: _prune_cancelled reads exc.interrupted and says CANCELLED_LEAVES of it for the day it was on.)"""
    env, name = setup
    first, second = days[0].isoformat(), days[1].isoformat()
    cli_json(env, "archive", "--from", first, "--to", second)
    seam = """
        import archive_pipeline.core.lifecycle as L
        original, calls = L._tidy_removed, []
        def tidy(*args, **kwargs):  # called after the day's removal committed, before its 'done' mark is written
            calls.append(1)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return original(*args, **kwargs)
        L._tidy_removed = tidy
    """
    done = _with_seam(env, tmp_path, seam, "prune", "--json")
    assert done.returncode == 143, done.stdout + done.stderr
    left = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE created_at >= %s AND created_at < %s").format(
        sql.Identifier(*name.split("."))), (days[1], days[2])).fetchone()[0]
    assert left == 0  # (the premise: the second day's removal committed)
    answer = json.loads(done.stdout)
    listed = {d["day"]: d for d in answer["days"]}
    assert listed.get(first, {}).get("status") == "removed", answer  # (as now)
    said = answer["error"]
    assert "left as it was" not in said, said
    assert second in listed or second in said, answer


def test_archive_cancelled_after_its_manifest_was_written_does_not_say_nothing_was_published(
        setup, days, tmp_path, s3_client, bucket):
    """`archive --day D --overwrite` of an archived day, stopped by SIGTERM right after the new manifest was
    written (the commit point), while the superseded generation is deleted / the day's lock released. Now: exit 143
    and `archiving <table> D was cancelled by SIGTERM: nothing of the day was published (an earlier archive of it
    stays as it was)`. But the new generation IS published (the manifest names it, `list` shows it archived at
    the new time) and the earlier one is retired: both halves of the sentence are false, and a user who restores
    "the earlier archive" or re-runs expecting a first publication is misled.
    Should: say the day was archived (or may have been: "the next run of the day finds which", as a cancel
    during the manifest's PUT says), never "nothing of the day was published".
    (Fix idea: note_cancelled(..., "committing") / a "committed" state once _commit's PUT returned, which
    archive_partition's outer note does not overwrite.)"""
    env, name = setup
    day = days[0].isoformat()
    cli_json(env, "archive", "--day", day)
    before = cli_json(env, "list", "--day", day)["days"][0]
    seam = """
        import archive_pipeline.core.archive as A
        original = A._Archiving._commit
        def commit(self, *args, **kwargs):
            original(self, *args, **kwargs)  # the manifest is written: the day is published
            os.kill(os.getpid(), signal.SIGTERM)
        A._Archiving._commit = commit
    """
    done = _with_seam(env, tmp_path, seam, "archive", "--day", day, "--overwrite")
    assert done.returncode == 143, done.stdout + done.stderr
    after = cli_json(env, "list", "--day", day)["days"][0]
    assert after["state"] == "archived" and after["archived_at"] != before["archived_at"], (before, after)  # premise
    assert "nothing of the day was published" not in done.stderr, done.stderr


def test_restore_cancelled_after_the_days_transaction_committed_does_not_say_it_was_rolled_back(
        setup, conn, days, tmp_path, schema):
    """`restore --day D --into new --target s.r`, stopped by SIGTERM after the day's transaction COMMITTED, while
    the day's lock is released. Now: exit 143 and `restoring <table> D was cancelled by SIGTERM: the day's restore
    was rolled back; to fix: run the same command again`. But s.r exists and holds all the day's rows (proven):
    a user told "rolled back" drops nothing and re-runs, or worse, trusts that s.r does not exist and loads the
    rows elsewhere twice. Should: say the day was restored (committed) — or that it may have been and the same
    command finds which — never that it was rolled back.
    (Fix idea: a "committed" note once restore_archive's transaction block exits, kept by _restore_current.)"""
    env, name = setup
    day = days[0].isoformat()
    cli_json(env, "archive", "--day", day)
    seam = """
        import archive_pipeline.core.restore as R
        original = R.table_day_lock
        @contextlib.contextmanager
        def lock(*args, **kwargs):
            with original(*args, **kwargs):
                yield
            os.kill(os.getpid(), signal.SIGTERM)  # the day's transaction has committed; its lock is released
        R.table_day_lock = lock
    """
    done = _with_seam(env, tmp_path, seam, "restore", "--day", day, "--into", "new", "--target", f"{schema}.r")
    assert done.returncode == 143, done.stdout + done.stderr
    rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "r"))).fetchone()[0]
    assert rows == ROWS  # (the premise: the day is restored)
    assert "rolled back" not in done.stderr, done.stderr


def test_compare_of_a_day_before_start_date_does_not_answer_ok_with_nothing_compared(setup, days):
    """A script guards a manual DROP of an old partition with `archive-pipeline compare --day D --json` (exit 0 and
    "ok": true = the archive equals the source). D holds 200 rows in PostgreSQL but lies before the table's
    start_date (the configuration was started later), so it was never archived. Now: exit 0, `{"ok": true, "days":
    []}` ("0 day(s) compared, 0 differ" in text; only a stderr note says D is before start_date): the script drops
    rows that exist nowhere else. `verify --day D` refuses exactly this case ("nothing was verified", exit 1), and a
    day from start_date on that is not archived is a difference (`not-archived`, exit 1).
    Should: not ok and a non-zero exit (1 as verify, or 2 as a usage error like archive/restore's "nothing to
    ..."), saying nothing was compared."""
    env, name = setup
    config = Path(env["ARCHIVE_PIPELINE_CONFIG"])
    raw = yaml.safe_load(config.read_text())
    raw["tables"][0]["start_date"] = days[1].isoformat()
    config.write_text(yaml.safe_dump(raw))
    cli_json(env, "archive", "--day", days[1].isoformat())
    done = cli(env, "compare", "--day", days[0].isoformat(), "--json")
    answer = json.loads(done.stdout)
    assert (done.returncode, answer["ok"]) != (0, True), (done.returncode, answer, done.stderr)


def test_restore_of_two_tables_cancelled_in_the_second_names_that_table_and_the_command_for_the_rest(
        setup, conn, days, tmp_path, schema):
    """`restore --from D0 --to D1 --into original` of two configured tables (the README: "Cancelled after some
    days were committed, it lists them too and names the command that restores the rest"), stopped by SIGTERM
    while the second table's first day is restored. Now: exit 143 and `restoring <first table> was cancelled by
    SIGTERM after 2 day(s) were committed ...; to fix: <first table> is done, then the other tables (<second
    table>)`: it names the wrong table as the one being restored, and no command at all for the rest (the user
    must work out `--table`, `--from`, `--to` and `--into` by hand).
    Should: name the second table as the one cancelled, and give the pasteable command that restores it
    (`archive-pipeline restore --table <second> --from D0 --to D1 --into original`).
    (Fix idea: _restore_cancelled / _the_rest take the day being restored from exc.interrupted, and for the
    tables not reached print `restore --table T --from .. --to .. --into ..` each.)"""
    env, first = setup
    second = f"{schema}.ev2"
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at timestamptz NOT NULL)").format(
        sql.Identifier(schema, "ev2")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, %s::timestamptz + g * interval '1 hour' FROM "
                         "generate_series(0, 47) g").format(sql.Identifier(schema, "ev2")), (days[0],))
    config = Path(env["ARCHIVE_PIPELINE_CONFIG"])
    raw = yaml.safe_load(config.read_text())
    raw["tables"].append({"name": second, "day_column": "at", "start_date": days[0].isoformat(),
                          "partitioning": {"mode": "column"}, "format": "jsonl"})
    config.write_text(yaml.safe_dump(raw))
    d0, d1 = days[0].isoformat(), days[1].isoformat()
    cli_json(env, "archive", "--from", d0, "--to", d1)
    seam = f"""
        import archive_pipeline.core.restore as R
        original = R._restore_current
        def current(conn, store, spec, day, *args, **kwargs):
            if spec.name == {second!r}:
                os.kill(os.getpid(), signal.SIGTERM)  # the second table's first day
            return original(conn, store, spec, day, *args, **kwargs)
        R._restore_current = current
    """
    done = _with_seam(env, tmp_path, seam, "restore", "--from", d0, "--to", d1, "--into", "original")
    assert done.returncode == 143, done.stdout + done.stderr
    said = done.stderr
    assert f"restoring {second}" in said, said
    assert f"archive-pipeline restore --table {second} --from {d0} --to {d1} --into original" in said, said


def test_a_config_given_by_option_that_cannot_be_read_is_not_told_to_set_the_environment_variable(setup, tmp_path):
    """`archive-pipeline list --config deploy/tables.yaml` where `deploy` is a file, not a directory (a path
    pasted wrong; an unreadable path behaves alike: ELOOP, EIO). Now: exit 2 and `archive configuration
    deploy/tables.yaml cannot be read (Not a directory); set $ARCHIVE_PIPELINE_CONFIG to the YAML file's path,
    readable by the user the code location runs as`: --config wins over the variable, so doing what it says and
    running the same command again fails the same way (and there is no code location here). A missing file given
    by --config is told "--config names it: point it at the YAML file of the tables".
    Should: name --config as what to correct (as the not-found message does)."""
    env, _ = setup
    (tmp_path / "deploy").write_text("not a directory\n")
    done = cli(env, "list", "--config", str(tmp_path / "deploy" / "tables.yaml"), "--json")
    assert done.returncode == 2, done.stdout + done.stderr
    error = json.loads(done.stdout)["error"]
    assert "cannot be read" in error  # (the premise)
    assert "$ARCHIVE_PIPELINE_CONFIG" not in error and "--config" in error, error


def test_prune_of_a_chosen_day_inside_the_retention_window_says_why_nothing_was_removed(setup, days):
    """`archive-pipeline prune --day D` for a day D still inside the table's retention window (keep_days 1, D =
    yesterday), archived. Now: exit 0, the text output is a bare header line (`table  day  status  action  relation
    rows  archive`) and nothing else; --json answers `{"ok": true, "days": []}`. The user asked for D to be removed
    and is told nothing: not that D is not due yet, nor when it will be, nor that nothing was removed (a script
    reads `ok: true` as "pruned"). `archive`/`restore` make a selection that holds nothing to do a usage error, and
    `verify` says "nothing was verified". Should: name D and say it is within the retention window (due from
    <date>), nothing removed — in text and in JSON (a note, or a `not due` day entry)."""
    env, _ = setup
    day = days[2].isoformat()
    cli_json(env, "archive", "--day", day)
    done = cli(env, "prune", "--day", day)
    assert day in done.stdout + done.stderr, (done.returncode, done.stdout, done.stderr)
    answer = json.loads(cli(env, "prune", "--day", day, "--json").stdout)
    assert answer["days"] or answer.get("error") or answer.get("note"), answer
