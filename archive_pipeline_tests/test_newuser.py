"""The command line as a new user meets it: README commands and hostile input, run as a subprocess
against real PostgreSQL and moto's S3 server over HTTP. Each test fails on what was found before its
fix: a traceback, a wrong exit code, a wrong cause, or a finding that was not true."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import yaml
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import parse_config
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.conftest import utc_today
from archive_pipeline_tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "archive"  # the ``store`` fixture's prefix, so the CLI sees what the tests archive in-process


def _day() -> dt.date:
    return utc_today() - dt.timedelta(days=2)


def _setup(pg, s3, bucket, tmp_path, tables: list[dict]) -> dict[str, str]:
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": tables}, allow_unicode=True), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIVE_", "AWS_"))}
    env.update(PYTHONPATH=str(ROOT), ARCHIVE_PIPELINE_CONFIG=str(config), ARCHIVE_PG_DSN=pg.dsn,
               ARCHIVE_S3_BUCKET=bucket, ARCHIVE_S3_PREFIX=PREFIX, ARCHIVE_S3_ENDPOINT_URL=s3.endpoint_url,
               ARCHIVE_S3_ACCESS_KEY_ID="testing", ARCHIVE_S3_SECRET_ACCESS_KEY="testing", COLUMNS="250")
    return env


def _events(name: str, day: dt.date) -> dict:
    return {"name": name, "day_column": "created_at", "start_date": day.isoformat(),
            "partitioning": {"mode": "declarative"}}


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    # a real `python -m` process, never helpers.run_cli's in-process call: these are the command line as a new
    # user runs it, start-up, streams and exit included (see the module's docstring)
    done = run_cli(args, env, cwd=ROOT, timeout=60, process=True)
    assert "Traceback" not in done.stderr, done.stderr  # never, whatever the input
    return done


# --------------------------------------------------------------------------------------------------
# compare must not call a day it could not read "not in source"


def test_compare_of_an_archived_day_the_role_may_not_read_is_unreadable_not_gone(pg, s3, bucket, conn, schema,
                                                                                 store, tmp_path, request):
    """The day is archived and still in the source, but ARCHIVE_PG_DSN's role has no SELECT on the table.
    compare said `not-in-source  archived; the source no longer has this day` and exited 0: a green
    answer about rows it never read. It must say it could not read them (and why), and exit non-zero."""
    day = _day()
    create_sample_events(conn, [day, day + dt.timedelta(days=1)], 20, schema=schema)
    spec = parse_config({"tables": [_events(f"{schema}.events", day)]}).tables[0]
    archive_partition(conn, spec, day, store)
    role = f"nosel_{schema}"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    request.addfinalizer(lambda: conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role))))
    env = {**_setup(pg, s3, bucket, tmp_path, [_events(spec.name, day)]), "ARCHIVE_PG_DSN": pg.dsn_for(role)}

    done = cli(env, "compare", "--day", day.isoformat(), "--json")
    [result] = json.loads(done.stdout)["days"]
    assert result["result"] == "unreadable", result
    assert "SELECT" in result["note"] and result["archive_rows"] == 20, result
    assert done.returncode == 1, done.stderr

    # list --check-source fails the whole command on it: a grant is configuration (README: exit 2); so does
    # the dry run, which said "archive" (exit 0) for the day not archived yet, which every run would fail
    for args in (("list", "--check-source", "--day", day.isoformat()),
                 ("archive", "--dry-run", "--day", (day + dt.timedelta(days=1)).isoformat())):
        done = cli(env, *args)
        assert done.returncode == 2, done.stdout + done.stderr
        assert f'GRANT SELECT ON "{schema}"."events" TO "{role}"' in done.stderr


# --------------------------------------------------------------------------------------------------
# names are printed as they are


def test_a_table_name_with_brackets_or_colons_is_printed_as_it_is(pg, s3, bucket, conn, schema, tmp_path):
    """The tables printed names, keys and notes through rich's markup and emoji codes: a table named
    `[/]ev` failed every command with a MarkupError traceback, and `[red]x:ok:` was printed as `x🆗`
    (its key, which S3 holds with the brackets, too): a name the user cannot find in the catalog."""
    day = _day()
    create_sample_events(conn, [day], 5, schema=schema)
    name = "[/]ev [red]x:ok:"
    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(schema, "events"), sql.Identifier(name)))
    env = _setup(pg, s3, bucket, tmp_path, [_events(f"{schema}.{name}", day)])
    key = f"{PREFIX}/{schema}.{name}/{day:%Y/%m}/{day}.jsonl.zst"
    for args in (("archive", "--day", day.isoformat()), ("list",)):
        done = cli(env, *args)
        assert done.returncode == 0, done.stderr
        assert f"{schema}.{name}" in done.stdout and "🆗" not in done.stdout, done.stdout
    assert key in done.stdout, done.stdout


# --------------------------------------------------------------------------------------------------
# the store's settings


def test_an_endpoint_url_without_its_scheme_is_a_usage_error_naming_the_variable(pg, s3, bucket, conn, schema,
                                                                                  tmp_path):
    """ARCHIVE_S3_ENDPOINT_URL=127.0.0.1:9000 ended in botocore's "ValueError: Invalid endpoint" traceback
    (the code location refuses it at load); README: exit 2, naming the variable."""
    day = _day()
    env = {**_setup(pg, s3, bucket, tmp_path, [_events(f"{schema}.events", day)]),
           "ARCHIVE_S3_ENDPOINT_URL": "127.0.0.1:9000"}
    create_sample_events(conn, [day], 1, schema=schema)
    done = cli(env, "list", "--json")
    answer = json.loads(done.stdout)
    assert (done.returncode, answer["exit_code"], answer["retryable"]) == (2, 2, False), done.stderr
    assert "ARCHIVE_S3_ENDPOINT_URL" in answer["error"] and "127.0.0.1:9000" in answer["error"], answer


@pytest.mark.parametrize("variable, value", [
    ("ARCHIVE_S3_BUCKET", "archive/cli"),  # a prefix in the bucket: "cannot reach the object store", exit 3
    ("ARCHIVE_S3_REGION", "eu central"),  # "lost the object store (InvalidRegionError)", exit 3
])
def test_a_malformed_bucket_or_region_is_a_configuration_error_naming_the_variable(s3, bucket, variable, value):
    """A setting the user must fix was reported as an unreachable store (the CLI: exit 3, retryable,
    "check $ARCHIVE_S3_ENDPOINT_URL and the network"); a ConfigError is exit 2 (test_cli)."""
    from archive_pipeline.core.config import ConfigError
    from archive_pipeline.core.environment import store_from_env

    env = {"ARCHIVE_S3_BUCKET": bucket, "ARCHIVE_S3_ENDPOINT_URL": s3.endpoint_url, "ARCHIVE_S3_ACCESS_KEY_ID": "testing",
           "ARCHIVE_S3_SECRET_ACCESS_KEY": "testing", variable: value}
    with pytest.raises(ConfigError) as refused:
        store_from_env(env)
    assert variable in str(refused.value) and repr(value) in str(refused.value)


# --------------------------------------------------------------------------------------------------
# restore's target


def test_restore_refuses_a_target_it_would_not_restore_into_before_touching_anything(pg, s3, bucket, conn, schema,
                                                                                     store, tmp_path):
    """`restore --into original --target s.x` created s.x as a new table and left the original as it
    was (exit 0, "created: s.x"); an unqualified --target failed as a restore (exit 1) instead of a
    usage error; a --target in a schema that does not exist said "check the table name and day_column
    in archive_tables.yaml", which has nothing to change."""
    day = _day()
    create_sample_events(conn, [day], 5, schema=schema)
    spec = parse_config({"tables": [_events(f"{schema}.events", day)]}).tables[0]
    archive_partition(conn, spec, day, store)
    env = _setup(pg, s3, bucket, tmp_path, [_events(spec.name, day)])

    for args, named in ((("--into", "original", "--target", f"{schema}.x"), "--into original"),
                        (("--into", "new", "--target", "restored"), "schema.table"),
                        # created as its first 63 bytes, and "created: <the whole name>", a table that does not exist
                        (("--into", "new", "--target", f"{schema}.{'é' * 40}"), "keeps 63 bytes")):
        answer = json.loads(cli(env, "restore", "--day", day.isoformat(), *args, "--json").stdout)
        assert (answer["exit_code"], answer["retryable"]) == (2, False) and named in answer["error"], answer
    assert conn.execute("SELECT to_regclass(%s)", (f"{schema}.x",)).fetchone()[0] is None

    done = cli(env, "restore", "--day", day.isoformat(), "--target", f"{schema}_nope.restored")
    assert done.returncode == 2 and "archive_tables.yaml" not in done.stderr, done.stderr  # a target that cannot be: usage
    assert f"create the schema of the target {schema}_nope.restored" in done.stderr, done.stderr

    # a target without one of the archived columns: the same configuration remedy
    from archive_pipeline.core.restore import RestoreError, restore_day

    conn.execute(sql.SQL("CREATE TABLE {} (id bigint)").format(sql.Identifier(schema, "narrow")))
    with pytest.raises(RestoreError) as refused:
        restore_day(conn, store, spec, day, into="existing", target=f"{schema}.narrow")
    assert "archive_tables.yaml" not in str(refused.value) and "into='new'" in refused.value.remedy, refused.value


# --------------------------------------------------------------------------------------------------
# the source: timeouts


def test_verify_deep_gives_up_on_a_locked_day_after_lock_timeout_and_says_which(pg, s3, bucket, conn, schema, store,
                                                                                 tmp_path):
    """README: the `source:` timeouts are set "on the sessions of the CLI". Deep verification's second
    session (the source's fingerprint, computed while the archive loads) was opened without them:
    behind a migration's ACCESS EXCLUSIVE lock on the day's partition `verify --deep` waited as long
    as the lock was held (forever, here), with lock_timeout_ms: 300 in the file."""
    day = _day()
    create_sample_events(conn, [day], 5, schema=schema)
    spec = parse_config({"tables": [_events(f"{schema}.events", day)]}).tables[0]
    archive_partition(conn, spec, day, store)
    env = _setup(pg, s3, bucket, tmp_path, [_events(spec.name, day)])
    config = Path(env["ARCHIVE_PIPELINE_CONFIG"])
    config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "source": {"lock_timeout_ms": 300}}))
    with pg.connect() as holder, holder.transaction():
        holder.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
            sql.Identifier(schema, f"events_{day:%Y%m%d}")))
        try:
            done = subprocess.run([sys.executable, "-m", "archive_pipeline.cli", "verify", "--deep", "--json"],
                                  env=env, cwd=ROOT, capture_output=True, text=True, timeout=90)  # the lock is held till then
        except subprocess.TimeoutExpired:
            pytest.fail("verify --deep waited for the lock past lock_timeout_ms")
        # compare and list --check-source said "lost the source database: canceling statement due to lock
        # timeout" (exit 3) for the whole command: no table, no day, no remedy, and the connection was fine
        compared = cli(env, "compare", "--json")
        listed = cli(env, "list", "--check-source", "--json")
    assert "Traceback" not in done.stderr, done.stderr
    [result] = json.loads(done.stdout)["days"]
    assert result["ok"] is False and done.returncode == 1, done.stdout + done.stderr
    [problem] = result["problems"]
    assert problem.startswith("not checked (retryable)") and "lock_timeout" in problem, problem
    for answer, verdict, said in ((compared, "result", "not-checked"), (listed, "state", "not-checked")):
        [found] = json.loads(answer.stdout)["days"]
        assert (answer.returncode, found[verdict]) == (1, said), answer.stdout + answer.stderr
        problem = found["note"]
    for problem in (result["problems"][0], problem):
        assert f"{spec.name} for {day}" in problem and "lock_timeout" in problem and "to fix:" in problem, problem


def test_a_partition_under_a_lock_does_not_stop_the_other_days_being_found(pg, s3, bucket, conn, schema, tmp_path):
    """Reading the children's bounds printed them with pg_get_expr(relpartbound, <child oid>), which
    on PostgreSQL 16+ locks each child: one old partition under VACUUM FULL (or a migration) stopped
    `list` and `archive` of every day of the table, after lock_timeout, with the blocked one's error."""
    today = utc_today()
    locked, wanted = today - dt.timedelta(days=3), today - dt.timedelta(days=2)
    create_sample_events(conn, [locked, wanted], 5, schema=schema)
    env = _setup(pg, s3, bucket, tmp_path, [_events(f"{schema}.events", locked)])
    config = Path(env["ARCHIVE_PIPELINE_CONFIG"])
    config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "source": {"lock_timeout_ms": 300}}))
    with pg.connect() as holder, holder.transaction():
        holder.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
            sql.Identifier(schema, f"events_{locked:%Y%m%d}")))
        done = cli(env, "archive", "--day", wanted.isoformat(), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert [(d["day"], d["status"]) for d in json.loads(done.stdout)["days"]] == [(wanted.isoformat(), "archived")]


# --------------------------------------------------------------------------------------------------
# secrets


def test_a_password_with_an_unencoded_at_sign_is_not_shown_as_the_host(pg, s3, bucket, schema, tmp_path):
    """libpq ends a URI's password at its first '@': `postgresql://archiver:Zq9@tail-of-secret@host/db` is
    password 'Zq9' at host 'tail-of-secret@host', and the error printed that host, the rest of the
    password, twice ("at tail-of-secret@127.0.0.1:5432", "failed to resolve host ..."), and said to
    check the host and DNS."""
    env = _setup(pg, s3, bucket, tmp_path, [_events(f"{schema}.events", _day())])
    env["ARCHIVE_PG_DSN"] = f"postgresql://archiver:Zq9@tail-of-secret@127.0.0.1:{pg.port}/postgres"
    done = cli(env, "list", "--json")
    answer = json.loads(done.stdout)
    assert "tail-of-secret" not in done.stdout + done.stderr and "Zq9" not in done.stdout + done.stderr, answer
    assert (done.returncode, answer["retryable"]) == (2, False), answer
    assert "ARCHIVE_PG_DSN" in answer["error"] and "%40" in answer["error"], answer


# --------------------------------------------------------------------------------------------------
# exit codes


def test_archive_restore_or_verify_of_a_day_they_cannot_act_on_does_not_exit_0(pg, s3, bucket, conn, schema, tmp_path):
    """`archive --day D` and `restore --day D` with D before the table's start_date did nothing, said so on
    stderr, and exited 0 (`{"ok": true, "days": []}`), as if the day had been archived or restored."""
    day = _day()
    env = _setup(pg, s3, bucket, tmp_path, [_events(f"{schema}.events", day)])
    create_sample_events(conn, [day], 1, schema=schema)
    before = (day - dt.timedelta(days=30)).isoformat()
    for args in (("archive", "--day", before), ("restore", "--day", before, "--into", "original")):
        answer = json.loads(cli(env, *args, "--json").stdout)
        assert (answer["ok"], answer["exit_code"]) == (False, 2) and "start_date" in answer["error"], answer
    # `archive --day D --day E` archived E alone (Click keeps the last value of an option given twice), exit 0
    answer = json.loads(cli(env, "archive", "--day", before, "--day", day.isoformat(), "--json").stdout)
    assert answer["exit_code"] == 2 and "--day is given 2 times" in answer["error"], answer
    # `verify --day D` of a day with rows and no archive said "0 archived day(s) checked, 0 with problems", exit 0
    done = cli(env, "verify", "--day", day.isoformat())
    assert done.returncode == 1 and "nothing was verified" in done.stderr, done.stdout + done.stderr


def test_compare_of_a_manifest_whose_fingerprint_it_cannot_read_is_a_difference_not_a_traceback(
        pg, s3, bucket, conn, schema, store, tmp_path):
    """A manifest (its checksum intact) whose fingerprint is not `<algorithm>:<rows>:<sum>` (a newer
    version's, another tool's): compare died shortening it for its table (ValueError traceback)."""
    from archive_pipeline.core.manifest import decode_manifest, encode_manifest, manifest_key

    day = _day()
    create_sample_events(conn, [day], 5, schema=schema)
    spec = parse_config({"tables": [_events(f"{schema}.events", day)]}).tables[0]
    key = manifest_key(archive_partition(conn, spec, day, store).key)
    manifest = decode_manifest(store.client.get_object(Bucket=bucket, Key=key)["Body"].read())
    manifest.pop("manifest_sha256")
    store.client.put_object(Bucket=bucket, Key=key, Body=encode_manifest({**manifest, "fingerprint": "xxh3-rows=5"}))
    env = _setup(pg, s3, bucket, tmp_path, [_events(spec.name, day)])
    done = cli(env, "compare")
    assert done.returncode == 1 and "differs" in done.stdout and "xxh3-rows=5" in done.stdout, done.stdout + done.stderr


def test_a_table_name_written_with_sql_quotes_is_told_how_to_write_it(pg, s3, bucket, conn, schema, tmp_path):
    """README said of `name:` "quoted properly, so "Mixed Case"."Nasty Events" works"; a user who wrote
    it so got "does not exist (looked for schema '"Mixed Case"' ...)": names are given unquoted."""
    day = _day()
    create_sample_events(conn, [day], 1, schema=schema)
    env = _setup(pg, s3, bucket, tmp_path, [_events(f'"{schema}"."events"', day)])
    answer = json.loads(cli(env, "list", "--json").stdout)
    assert answer["exit_code"] == 2 and f"without SQL's double quotes: {schema}.events" in answer["error"], answer
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert '"Mixed Case"."Nasty Events" works' not in readme


def test_the_attach_statement_a_restore_gives_works_pasted_as_it_is_for_a_mixed_case_name(
        pg, s3, bucket, conn, schema, store, tmp_path):
    """`restore --into original` of a day whose partition is detached says to attach it again, with the
    statement: it named the tables unquoted (ALTER TABLE t1.Nasty Events ATTACH PARTITION ...), which
    PostgreSQL refuses for any name that needs quotes."""
    day = _day()
    create_sample_events(conn, [day], 5, schema=schema)
    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(schema, "events"),
                                                                 sql.Identifier("Nasty Events")))
    spec = parse_config({"tables": [_events(f"{schema}.Nasty Events", day)]}).tables[0]
    archive_partition(conn, spec, day, store)
    conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(
        sql.Identifier(schema, "Nasty Events"), sql.Identifier(schema, f"events_{day:%Y%m%d}")))
    env = _setup(pg, s3, bucket, tmp_path, [_events(spec.name, day)])
    answer = json.loads(cli(env, "restore", "--day", day.isoformat(), "--into", "original", "--json").stdout)
    assert answer["exit_code"] == 1 and "not attached" in answer["error"], answer
    statement = answer["error"].split("attach it again (", 1)[1].split("), or drop it", 1)[0]
    conn.execute(statement)  # as the user would paste it
    assert cli(env, "compare", "--day", day.isoformat()).returncode == 0


def test_the_grant_a_permission_error_names_works_pasted_as_it_is(conn, schema, request):
    """A query refused for lack of privilege ends with `to fix: GRANT SELECT ON <table> TO <role>`, filled in
    with the names as written in the configuration: `GRANT SELECT ON s.Nasty Events TO App-User`, which
    PostgreSQL refuses."""
    from archive_pipeline.core.errors import wrap

    table, role = sql.Identifier(schema, "Nasty Events"), f"App-User {schema}"
    conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(table))
    conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
    request.addfinalizer(lambda: conn.execute(sql.SQL("DROP OWNED BY {}; DROP ROLE {}").format(
        sql.Identifier(role), sql.Identifier(role))))
    conn.execute("SET ROLE pg_monitor")
    try:
        conn.execute(sql.SQL("SELECT * FROM {}").format(table))
    except psycopg.errors.InsufficientPrivilege as exc:
        refused = exc
    finally:
        conn.execute("RESET ROLE")
    message = str(wrap(refused, f"{schema}.Nasty Events", "2024-03-10", user=role))
    grant = message.split("to fix: ", 1)[1].split(" (and", 1)[0]
    conn.execute(grant)  # as the user would paste it
    assert conn.execute("SELECT has_table_privilege(%s, %s, 'SELECT')",
                        (role, table.as_string(conn))).fetchone()[0]


def test_a_non_ascii_table_name_works_in_a_c_locale(pg, s3, bucket, conn, schema, tmp_path):
    """The table list is read as UTF-8 whatever the locale, but in a C locale (no UTF-8 mode) `--table
    Ünï.x` reached the command as surrogates and was "not in the configuration", and printing the name
    failed with UnicodeEncodeError."""
    day = _day()
    create_sample_events(conn, [day], 1, schema=schema)
    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(schema, "events"), sql.Identifier("év")))
    name = f"{schema}.év"
    env = {**_setup(pg, s3, bucket, tmp_path, [_events(name, day)]), "LC_ALL": "C", "LANG": "C",
           "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "PYTHONIOENCODING": ""}
    done = subprocess.run([sys.executable, "-m", "archive_pipeline.cli", "list", "--table", name],
                          env=env, cwd=ROOT, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode("utf-8", "replace")
    assert f"{name}: 1 missing".encode() in done.stdout, done.stdout
