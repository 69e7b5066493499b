"""Hunt 18 (xg): a new user following the README literally: its commands and configuration snippets, each
subcommand's --help, typical typos and misuse (a wrong --day, a reversed range, an unknown --table, a bad format or
codec in YAML, ARCHIVE_* variables misspelled or empty, a missing config file, tabs or a BOM in the YAML, a bucket
that does not exist, a wrong endpoint), exit codes (0/1/2/3) and the --json answer of each command, and whether each
error message says what to do next. Each test runs ``archive-pipeline`` as a subprocess against real PostgreSQL and
moto's S3 server over HTTP."""

from __future__ import annotations

import json

from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import parse_config
from archive_pipeline_tests.test_hunt17_wf import _env, _events, cli


# --------------------------------------------------------------------------------------------------


def test_an_https_endpoint_for_a_plain_http_store_is_a_setting_to_fix_not_an_unreachable_store(
        pg, s3, bucket, conn, schema, store, tmp_path):
    """Scenario: the user copies the README's MinIO example but writes the endpoint with ``https://`` for a store
    that speaks plain HTTP (``ARCHIVE_S3_ENDPOINT_URL=https://127.0.0.1:<moto's port>``; the same happens with a
    MinIO whose self-signed certificate no CA bundle trusts), then runs ``archive-pipeline list --day D --json``.

    Now: exit 3 with ``"retryable": true`` and "cannot reach the object store (SSLError: SSL validation failed ...):
    check $ARCHIVE_S3_ENDPOINT_URL and the network": environment.store_from_env's HeadBucket check catches every
    BotoCoreError as an UnreachableError(retryable=True), so a TLS failure reads as a store that is down. A cron
    wrapper retries it forever. Yet the core's own classification of the same error (errors._classify_boto ->
    _S3_TLS) is not retryable ("TLS validation of the object store failed: check ARCHIVE_S3_ENDPOINT_URL and the CA
    bundle (AWS_CA_BUNDLE)"), and the database's TLS failure (``sslmode=require`` against a server without SSL) is
    exit 2, not retryable, "check sslmode, sslrootcert and the server certificate".

    Should: exit 2 (a setting to fix, README: "2 usage or configuration error (the message names the setting or
    variable)"), ``"retryable": false``, the message saying TLS failed and to check the endpoint's scheme and the CA
    bundle. Fix idea: in store_from_env catch botocore.exceptions.SSLError before BotoCoreError and raise a
    ConfigError (or UnreachableError(retryable=False)) with classify(exc)'s cause and remedy."""
    days, table = _events(conn, schema, n_days=1)
    spec = parse_config({"tables": [table]}).tables[0]
    archive_partition(conn, spec, days[0], store)
    env = _env(pg, s3, bucket, tmp_path, [table])
    assert cli(env, "list", "--day", days[0].isoformat()).returncode == 0  # the setup works over http
    env["ARCHIVE_S3_ENDPOINT_URL"] = s3.endpoint_url.replace("http://", "https://", 1)

    done = cli(env, "list", "--day", days[0].isoformat(), "--json")
    answer = json.loads(done.stdout)
    assert (done.returncode, answer["exit_code"], answer["retryable"]) == (2, 2, False), (done.returncode, answer)
    assert "TLS" in answer["error"] or "certificate" in answer["error"].lower(), answer["error"]


def test_restore_into_a_new_table_with_on_conflict_skip_of_a_table_without_a_key_is_not_refused_with_itself_as_remedy(
        pg, s3, bucket, conn, schema, store, tmp_path):
    """Scenario: the README's restore example with the safety option added, for a table without a primary key (the
    README's own sample ``events``): ``archive-pipeline restore --from D1 --to D2 --into new --target S.restored
    --on-conflict skip`` (a user adds skip so that a re-run cannot load rows twice).

    Now: exit 1, nothing restored: "restoring S.events for D1 with --on-conflict skip needs a primary key or unique
    constraint on S.restored to tell existing rows by, and it has none ...; to fix: restore into a new table
    (--into new), ...; then: run archive-pipeline restore ... --from D2 --to D2 --into new --target S.restored
    --on-conflict skip". restore_archive creates the new table from the manifest (no key: the archived table had
    none) and then core.restore._require_key refuses it. The remedy is the command the user ran, and the suggested
    "then" command repeats --on-conflict skip, which fails the same way. Into a table the restore itself has just
    created there is nothing to conflict with, so skip and fail would load the very same rows.

    Should: restore both days (exit 0: skip is vacuous into the empty table the restore creates; a re-run finds
    them "already restored" by the restore mark), or refuse up front as a usage error (exit 2) that does not offer
    --into new as the fix. Fix idea: in restore_archive call _require_key only when the target was not created in
    this transaction (``to_create`` empty), i.e. treat skip as fail for a table it creates; and never suggest the
    options that just failed."""
    days, table = _events(conn, schema, n_days=2)
    spec = parse_config({"tables": [table]}).tables[0]
    for day in days:
        archive_partition(conn, spec, day, store)
    env = _env(pg, s3, bucket, tmp_path, [table])
    target = f"{schema}.restored"

    done = cli(env, "restore", "--from", days[0].isoformat(), "--to", days[1].isoformat(), "--into", "new",
               "--target", target, "--on-conflict", "skip", "--json")
    answer = json.loads(done.stdout)
    if done.returncode == 0:
        rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "restored"))).fetchone()[0]
        assert rows == 40, answer
        return
    assert done.returncode == 2, (done.returncode, answer)
    assert "--into new" not in answer["error"], answer["error"]


def test_restore_into_new_naming_a_table_that_exists_is_a_usage_error_as_a_missing_existing_target_is(
        pg, s3, bucket, conn, schema, store, tmp_path):
    """Scenario: a user types ``--target`` wrong in the two ways a name can be wrong: ``restore --day D --into new
    --target S.taken`` where S.taken already exists (a table of theirs), and ``restore --day D --into existing
    --target S.nosuch`` where the table is not there. Both are refused before anything is loaded, each naming the
    --target and what to do (choose a new name / --into existing; create it / --into new).

    Now: the missing target exits 2 (``"exit_code": 2``: its TargetError's cause, TABLE_MISSING, is in
    CONFIGURATION_CAUSES), but the existing one exits 1 (cli.restore: a TargetError without a configuration cause
    is EXIT_DIFFERENCES), which README's exit codes read as "a check or comparison found differences, or a day
    failed". Nothing was compared and no day failed: the option named a table that is there, the same kind of
    mistake as one that is not. (The README itself calls --target's refusals up front usage errors: a name too
    long or with a character the encoding lacks, "restore --target exits 2 on both".)

    Should: both exit 2 (usage error naming --target), ``retryable`` false, so a script can tell a mistyped command
    from a day that failed. Fix idea: in cli.restore, a TargetError raised before the day's rows were touched (the
    target's kind refused by _resolve_target) is EXIT_USAGE."""
    days, table = _events(conn, schema, n_days=1)
    spec = parse_config({"tables": [table]}).tables[0]
    archive_partition(conn, spec, days[0], store)
    conn.execute(sql.SQL("CREATE TABLE {} (x int)").format(sql.Identifier(schema, "taken")))
    env = _env(pg, s3, bucket, tmp_path, [table])
    day = days[0].isoformat()

    missing = cli(env, "restore", "--day", day, "--into", "existing", "--target", f"{schema}.nosuch", "--json")
    assert missing.returncode == 2, missing.stdout  # the baseline: a mistaken --target is a usage error
    taken = cli(env, "restore", "--day", day, "--into", "new", "--target", f"{schema}.taken", "--json")
    answer = json.loads(taken.stdout)
    assert "already exists" in answer["error"], answer
    assert (taken.returncode, answer["exit_code"], answer["retryable"]) == (2, 2, False), (taken.returncode, answer)


def test_a_configuration_indented_with_a_tab_says_to_indent_with_spaces_and_names_the_file_line(
        pg, s3, bucket, conn, schema, tmp_path):
    """Scenario: the user types the README's table list in an editor that indents with a tab:
    ``tables:\\n\\t- name: S.events\\n\\t  day_column: created_at ...``, and runs ``archive-pipeline list``.

    Now: exit 2 with "error: <file> is not valid YAML: while scanning for the next token\\nfound character '\\t' that
    cannot start any token\\n  in \\"<byte string>\\", line 2, column 1": PyYAML's text passed on by
    config.load_config (which reads the file as bytes, so PyYAML's mark names an internal "<byte string>" where the
    file's name belongs), with no remedy; other YAML mistakes of the same kind get one (an unquoted key_template is
    named with the quotes to add).

    Should: name the file and line as the file's ("<file>, line 2, column 1"), say that YAML does not allow tabs for
    indentation, and what to do: indent with spaces. Fix idea: in load_config, set the marks' ``name`` to the file's
    path (as their ``buffer`` is already cleared), and when the problem is "found character '\\t' that cannot start
    any token", add "YAML indents with spaces, not tabs: replace the tab(s) at line N with spaces"."""
    days, table = _events(conn, schema, n_days=1)
    env = _env(pg, s3, bucket, tmp_path, [table])
    config = tmp_path / "tables.yaml"
    config.write_text(f"tables:\n\t- name: {schema}.events\n\t  day_column: created_at\n"
                      f"\t  start_date: {days[0].isoformat()}\n", encoding="utf-8")

    done = cli(env, "list", "--config", str(config))
    assert done.returncode == 2, done.stdout + done.stderr
    message = done.stderr
    assert "<byte string>" not in message, message
    assert "space" in message.lower(), message
