"""Hunt 13 (se): the command line used as a new user would, from a shell, as real ``archive-pipeline``
subprocesses against real PostgreSQL and S3 over HTTP (environment, signals, exit codes, flags combined)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import yaml

from archive_pipeline_tests.test_cli import cli, cli_json, days, setup  # noqa: F401 - fixtures


def test_an_endpoint_url_holding_the_bucket_as_its_path_is_not_called_a_missing_bucket(setup, bucket, s3, days):
    """ARCHIVE_S3_ENDPOINT_URL pasted as the store's console shows it, with the bucket as its path
    (Cloudflare R2's dashboard shows "S3 API: https://<account>.r2.cloudflarestorage.com/<bucket>"; MinIO's
    browser URL likewise), ARCHIVE_S3_BUCKET set right. botocore puts the bucket after the endpoint's path,
    so every request goes to /<bucket>/<bucket>. Now: exit 2 and `bucket '<bucket>' does not exist at
    http://host:port/<bucket>: check $ARCHIVE_S3_BUCKET (or create the bucket)` — the bucket exists, the
    variable to fix is the endpoint's, and "create the bucket" would create a second, wrong one.
    Should: a configuration error naming $ARCHIVE_S3_ENDPOINT_URL and its path (the bucket goes in
    $ARCHIVE_S3_BUCKET, the endpoint is scheme, host and port), as a query or credentials in it already are.
    (Fix idea: check_endpoint_url refuses a path equal to / ending in the bucket's name, or store_from_env's
    404 remedy names the endpoint's path when it has one.)"""
    env, _spec = setup
    env = {**env, "ARCHIVE_S3_ENDPOINT_URL": f"{s3.endpoint_url}/{bucket}"}
    done = cli(env, "list", "--day", days[0].isoformat())
    assert done.returncode == 2, done.stdout + done.stderr
    assert "ARCHIVE_S3_ENDPOINT_URL" in done.stderr, done.stderr
    assert "create the bucket" not in done.stderr, done.stderr


def test_a_dsn_whose_target_session_attrs_the_server_does_not_meet_is_not_called_unreachable(setup, pg, days):
    """ARCHIVE_PG_DSN with `target_session_attrs=standby` (a user making sure the CLI reads the hot standby,
    as the README's standby section suggests) while that server is a primary (never a standby here, or
    promoted by a failover). libpq connects, asks, and refuses: "server is not in hot standby mode". Now: exit 3
    and `the database server could not be reached (refused, unreachable or timed out) ...; to fix: run the command
    again ...; if it persists, check that PostgreSQL runs and listens on the host and port in ARCHIVE_PG_DSN
    (listen_addresses, firewall)` — the server was reached and answered; the remedy sends the user to the
    firewall. Should: name the cause (the server is not the kind target_session_attrs asks for: a primary, not a
    standby) and the setting to check (target_session_attrs in ARCHIVE_PG_DSN, or which server the host names).
    (Fix idea: classify libpq's "is not in hot standby mode" / "is in hot standby mode" / "session is read-only"
    connection failures apart from the unreachable ones.)"""
    env, _spec = setup
    sep = "&" if "?" in pg.dsn else "?"
    env = {**env, "ARCHIVE_PG_DSN": f"{pg.dsn}{sep}target_session_attrs=standby"}
    done = cli(env, "list", "--day", days[0].isoformat())
    assert done.returncode in (2, 3), done.stdout + done.stderr
    assert "could not be reached" not in done.stderr and "listen_addresses" not in done.stderr, done.stderr
    assert "target_session_attrs" in done.stderr, done.stderr


def test_an_empty_config_option_is_refused_not_replaced_by_the_environments_table_list(setup, days, s3_client,
                                                                                       bucket):
    """`archive-pipeline archive --config "$TABLES" --day D` in a script or cron line where $TABLES is unset or
    misspelt: the shell passes `--config ""`. Now: the empty path is taken as "not given" (load_config's
    `Path(path) if path else config_path()`), so the command silently reads $ARCHIVE_PIPELINE_CONFIG (or
    ./archive_tables.yaml) — another table list than the one the script meant — and archives its tables,
    exit 0. Should: a usage error (exit 2) naming --config, which was given but names no file; nothing
    archived. (Fix idea: in the command wrapper, `config_path is not None and not config_path.strip()` ->
    click.UsageError("--config is empty ..."), or click.Path(..., allow_dash=False) plus a check for "".)"""
    env, _spec = setup
    done = cli(env, "archive", "--config", "", "--day", days[0].isoformat())
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--config" in done.stderr, done.stderr
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_compare_of_a_day_without_rows_after_start_date_does_not_blame_start_date(setup, days, tmp_path):
    """A table with a day that has no rows (a holiday, a quiet weekend) well after its start_date: `archive`
    reports it `no-data` and archives nothing, as the README says. The user then runs
    `archive-pipeline compare --day <that day>` to check. Now: exit 1 and `nothing was compared: no day of the
    selection is a day of the tables (before start_date?)` — the day IS a day of the table (after start_date),
    the hint sends the user to a setting that is right, and the day is named nowhere. Should: say what is true of
    that day (no rows in PostgreSQL and no archive: nothing to compare, or equal as empty), naming the day, and
    not blame start_date. (Fix idea: compare's `nothing` case tells "before start_date" apart from "days in the
    selection without rows or archive", naming those days, as archive's `no-data` does.)"""
    env, spec = setup
    config = Path(env["ARCHIVE_PIPELINE_CONFIG"])
    raw = yaml.safe_load(config.read_text())
    quiet = days[0] - dt.timedelta(days=1)  # no rows on this day; start_date a week before it
    raw["tables"][0]["start_date"] = (quiet - dt.timedelta(days=7)).isoformat()
    config.write_text(yaml.safe_dump(raw))
    done = cli(env, "archive", "--day", quiet.isoformat(), "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["days"][0]["status"] == "no-data", done.stdout  # premise
    done = cli(env, "compare", "--day", quiet.isoformat())
    assert "start_date" not in done.stderr + done.stdout, done.stderr + done.stdout
    assert quiet.isoformat() in done.stderr + done.stdout, done.stderr + done.stdout


def test_archive_dry_run_with_a_missing_second_table_still_plans_the_first_as_the_real_run_archives_it(
        setup, days, schema, s3_client, bucket):
    """Two configured tables, the second missing from the database (dropped, or a typo). The README: `--dry-run`
    "decides with the archiver's own rule", and a table that cannot be read at all "after other tables' days
    were archived ... still leaves those days reported, with the table's error (exit 2)". The real `archive`
    does exactly that: the first table's days archived and listed, the second's error, exit 2. Now:
    `archive --dry-run` answers only `error: table '<schema>.gone' does not exist ...` (exit 2): the first
    table's plan (days, keys, estimates) is dropped, so the preview a user runs before the real command shows
    nothing of what that command will write. Should: plan the first table's days as the real run archives
    them, and list the second table's error beside them (exit 2), as `list` and `compare` do.
    (Fix idea: _archive_plan catches the table's ArchiveError per table, like archive's loop and _listed.)"""
    env, spec = setup
    config = Path(env["ARCHIVE_PIPELINE_CONFIG"])
    raw = yaml.safe_load(config.read_text())
    raw["tables"].append({**raw["tables"][0], "name": f"{schema}.gone", "partitioning": {"mode": "column"}})
    config.write_text(yaml.safe_dump(raw))
    day = days[0].isoformat()
    done = cli(env, "archive", "--dry-run", "--day", day, "--json")
    assert done.returncode == 2, done.stdout + done.stderr
    planned = [d for d in json.loads(done.stdout).get("days", []) if d.get("table") == spec.name]
    assert [(d["day"], d["action"]) for d in planned] == [(day, "archive")], done.stdout
    real = cli(env, "archive", "--day", day, "--json")  # what the real run does: the first table archived
    assert real.returncode == 2 and any(d.get("status") == "archived" for d in json.loads(real.stdout)["days"]), \
        real.stdout
