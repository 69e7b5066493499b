"""Hunt 16 (vc): the command line's range operations and remedies (their commands run as printed, --json answers and
exit codes at every ending), and the Dagster component's rendering of its inline settings."""

from __future__ import annotations

import json
import re
import shlex

import pytest
from psycopg import sql

from archive_pipeline_tests.test_hunt3_o import DAYS, cli, make_env, small_table, write_config


def test_a_command_stopped_by_one_tables_configuration_says_retryable_in_its_json_answer(
        pg, s3, bucket, conn, schema, tmp_path):
    """Two configured tables, the second one missing from the database (renamed, a typo in the YAML).
    `archive --from D1 --to D2 --json` archives the first table's days, then the second stops the command: exit 2,
    and the answer carries ``exit_code`` 2 and ``error`` (the table does not exist; check its name). README: "With
    `--json` an error also says `"retryable"`: whether running the command again later may work", and "a command
    that fails as a whole answers `ok: false` with `exit_code`, `error` and `retryable`".

    Now the answer has ``exit_code`` and ``error`` but no ``retryable`` key (cli._stopped_by leaves it out; the same
    for `archive --dry-run`, `list`, `compare` and `prune`): a script that reads answer["retryable"] to decide whether
    to retry gets a KeyError, or treats the missing key as "retry" and loops on a configuration error.
    Expected: ``retryable: false`` beside them (a setting or grant fixes it, not a retry).
    Fix idea: cli._stopped_by returns {"exit_code": 2, "error": message, "retryable": False}."""
    small_table(conn, schema)
    tables = [{"name": f"{schema}.ev", "day_column": "at", "start_date": DAYS[0].isoformat()},
              {"name": f"{schema}.gone", "day_column": "at", "start_date": DAYS[0].isoformat()}]
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, tables), tmp_path)
    for args in (["archive"], ["list"]):
        done = cli(env, *args, "--from", DAYS[0].isoformat(), "--to", DAYS[1].isoformat(), "--json")
        answer = json.loads(done.stdout)
        assert done.returncode == 2 and answer["exit_code"] == 2 and "gone" in answer["error"], (args, done.stdout)
        assert answer.get("retryable", "(missing)") is False, (
            f"`{' '.join(args)} --json` stopped by a missing table (exit 2) answers without retryable: "
            f"{ {k: v for k, v in answer.items() if k not in ('days', 'summary')} }")


def test_an_inline_asset_key_prefix_templated_from_digits_and_underscores_keeps_its_underscore(monkeypatch):
    """A component's defs.yaml sets ``asset_key_prefix: "{{ env.REGION_ID }}_{{ env.SHARD }}"`` (or one variable,
    ``[archive, "{{ env.RELEASE }}"]`` with RELEASE=2024_10) with REGION_ID=1 and SHARD=2 in the code location's
    environment. The rendered text, ``1_2``, is a valid asset-key part (letters, digits and '_'; written as is it
    loads as "1_2", and so does the table file's), and README says inline a templated string is rendered by Dagster's
    templates.

    Now: _rendered hands the string to Dagster's NativeTemplate, which reads "1_2" back as a Python literal -- the int
    12 (underscores are digit separators) -- and the `text` fix (str() of a number) makes it "12": the location's
    every asset key is silently ``12/...`` instead of ``1_2/...`` (shard 12's keys, or another location's). Likewise
    "2024_10" becomes "202410".
    Expected: the prefix is the rendered text, ("1_2",) and ("archive", "2024_10").
    Fix idea: render a text setting with jinja's plain Template (the scope's env) rather than the native one, or
    keep the native result only when its text equals the rendered text."""
    from archive_pipeline.defs.component import ArchiveTablesComponent

    monkeypatch.setenv("REGION_ID", "1")
    monkeypatch.setenv("SHARD", "2")
    monkeypatch.setenv("RELEASE", "2024_10")
    tables = "tables:\n  - {name: public.events, day_column: created_at, start_date: 2024-01-01}\n"
    found = {}
    for written in ('"{{ env.REGION_ID }}_{{ env.SHARD }}"', '[archive, "{{ env.RELEASE }}"]'):
        component = ArchiveTablesComponent.resolve_from_yaml(f"{tables}asset_key_prefix: {written}\n")
        found[written] = tuple(component.archive_config().asset_key_prefix)
    assert found == {'"{{ env.REGION_ID }}_{{ env.SHARD }}"': ("1_2",),
                     '[archive, "{{ env.RELEASE }}"]': ("archive", "2024_10")}, found


def test_a_range_restore_into_the_original_table_cancelled_while_finishing_a_day_names_its_target_in_json(
        pg, s3, bucket, conn, schema, tmp_path):
    """A plain table's days D1..D3 archived, then deleted from the source; `restore --into original --from D1 --to D3
    --json` gets Ctrl-C right after D2's transaction committed, before its result reached the command
    ("finishing"). The answer lists D1 and D2 as committed (README: cancelled after some days were committed, it
    lists them), D1 with ``target`` the table it went into, as every restored day's entry has it.

    Now the finishing day's entry (cli._restore_cancelled) is built from the --target option, which `--into original`
    has none of: D2 says ``"target": null`` while D1 says the table -- a script that reads where each committed day
    went (to check or undo it) finds D2 restored nowhere.
    Expected: D2's entry names the table it was restored into, as D1's does.
    Fix idea: for the finishing entry, use the target a result of that table gave (or spec.name for --into
    original) instead of the bare --target option."""
    from archive_pipeline_tests.test_hunt15_uc import signalling_cli

    small_table(conn, schema, rows=20)
    tables = [{"name": f"{schema}.ev", "day_column": "at", "start_date": DAYS[0].isoformat()}]
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, tables), tmp_path)
    done = cli(env, "archive", "--from", DAYS[0].isoformat(), "--to", DAYS[-1].isoformat())
    assert done.returncode == 0, done.stdout + done.stderr
    conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(schema, "ev")))
    done = signalling_cli(env, ["archive_pipeline.core.restore", "RestoreResult", 2, "SIGINT"], "restore", "--json",
                          "--from", DAYS[0].isoformat(), "--to", DAYS[-1].isoformat(), "--into", "original")
    assert done.returncode == 130, done.stdout + done.stderr
    answer = json.loads(done.stdout)
    assert [d["day"] for d in answer["days"]] == [DAYS[0].isoformat(), DAYS[1].isoformat()], answer  # (the premise)
    targets = [d.get("target") for d in answer["days"]]
    assert targets == [f"{schema}.ev", f"{schema}.ev"], f"the committed days' targets: {targets}: {answer['days']}"


def test_a_range_restores_remedy_keeps_a_target_named_like_the_cores_wording_as_it_was_given(
        pg, s3, bucket, conn, schema, s3_client, tmp_path):
    """`restore --from D1 --to D3 --into new --target '<schema>.imports (overwrite)'` (README: names are printed as they
    are, "a table called `imports (overwrite)` keeps its name"); D2's manifest is damaged, so the range stops there
    (not retryable) after D1 was committed into the new table, and the error names the command that restores the
    rest: `restore ... --from D3 --to D3 --into existing --target '<schema>.imports (overwrite)'`.

    Now the remedy is passed through the command line's rewording (_for_the_cli), which keeps only *configured* names
    as they are: "(overwrite)" in the --target becomes "(--overwrite)". The printed command says
    `--target '<schema>.imports (--overwrite)'`; pasted, it fails (no such table for --into existing) -- or, edited
    to --into new as the error for a missing target suggests, restores D3 into another, new table. The committed
    day's "check" and "target" in --json are reworded alike.
    Expected: the remedy's --target is the name given, and running the printed command restores D3 into that table.
    Fix idea: add the --target (and every name a command was given) to _KEPT for the command, not only the
    configured tables' names."""
    small_table(conn, schema, rows=20)
    tables = [{"name": f"{schema}.ev", "day_column": "at", "start_date": DAYS[0].isoformat()}]
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, tables), tmp_path)
    done = cli(env, "archive", "--from", DAYS[0].isoformat(), "--to", DAYS[-1].isoformat())
    assert done.returncode == 0, done.stdout + done.stderr
    damaged = next(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]
                   if DAYS[1].isoformat() in o["Key"] and o["Key"].endswith(".manifest.json"))
    s3_client.put_object(Bucket=bucket, Key=damaged, Body=b"{not json")
    target = f"{schema}.imports (overwrite)"
    done = cli(env, "restore", "--from", DAYS[0].isoformat(), "--to", DAYS[-1].isoformat(), "--into", "new",
               "--target", target, "--json")
    answer = json.loads(done.stdout)
    assert done.returncode == 1 and [d["day"] for d in answer["days"]] == [DAYS[0].isoformat()], done.stdout
    told = re.search(r"then: run (archive-pipeline restore .*?) to restore the rest", answer["error"])
    assert told, answer["error"]
    command = shlex.split(told.group(1))
    assert command[command.index("--target") + 1] == target, f"the remedy names another target: {told.group(1)}"
    again = cli(env, *command[1:])
    restored = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
        sql.Identifier(schema, "imports (overwrite)"))).fetchone()[0]
    assert again.returncode == 0 and restored == 40, (again.returncode, restored, again.stdout + again.stderr)


def test_a_view_over_a_same_named_table_of_another_schema_names_that_table_in_its_grant(pg, conn, schema, store,
                                                                                         temp_dir):
    """The configured table is ``<schema>.ev``, a view (security_invoker) over ``<schema>_raw.ev`` -- the common
    "reporting schema of views over the raw schema's tables of the same name". The archiving role has USAGE on both
    schemas and SELECT on the view, but not on the raw table, so PostgreSQL refuses with "permission denied for table
    ev". For a base table of another name the remedy is right ("the role may not read table X, which <schema>.ev
    reads (a view's ...): GRANT SELECT ON X ... or to <role> for a view with security_invoker").

    Now errors.refused_grant compares the refused name with the configured table's name part only ("ev" == "ev") and
    takes the refusal for the view's own: the remedy is "GRANT SELECT ON <schema>.ev TO <role> (and GRANT USAGE ON
    SCHEMA)" -- a grant the role already has. Pasted, it changes nothing, and the next run fails alike.
    Expected: the remedy names the table the view reads (ev in <schema>_raw), as for a base table of another name.
    Fix idea: in refused_grant, take a refused relation as the configured one only when the role lacks SELECT on the
    configured relation itself (has_table_privilege), or when the configured relation is not a view."""
    import psycopg

    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.errors import ArchiveError

    role, raw = f"{schema}_vc", f"{schema}_raw"
    r, s, base = sql.Identifier(role), sql.Identifier(schema), sql.Identifier(raw, "ev")
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(r))
    try:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(raw)))
        conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz)").format(base))
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 05:00+00')").format(base))
        conn.execute(sql.SQL("CREATE VIEW {}.ev WITH (security_invoker = true) AS SELECT * FROM {}").format(s, base))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {s}, {raw} TO {r}; GRANT SELECT ON {s}.ev TO {r}").format(
            s=s, raw=sql.Identifier(raw), r=r))
        spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01")
        with psycopg.connect(pg.dsn_for(role), autocommit=True) as archiving:
            with pytest.raises(ArchiveError) as caught:
                archive_partition(archiving, spec, DAYS[0], store, temp_dir=str(temp_dir))
        message, remedy = str(caught.value), caught.value.remedy or ""
        assert "permission denied for table ev" in message, message  # (the premise)
        assert "reads" in remedy and f"GRANT SELECT ON {schema}.ev TO" not in remedy, remedy
    finally:
        conn.execute(sql.SQL("DROP VIEW IF EXISTS {}.ev").format(s))
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(raw)))
        conn.execute(sql.SQL("DROP OWNED BY {}").format(r))
        conn.execute(sql.SQL("DROP ROLE {}").format(r))
