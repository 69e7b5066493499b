"""Hunt 13 (sa): a review of session 27's newest fixes (lifecycle's source_differs/rows_lost remedies, cli._put_back,
checks.log_guarded, store.holds(content_md5=), restore's _view_base, keys.day_listing_prefixes) at their edges."""

from __future__ import annotations

import json
import re
import shlex

import yaml
from psycopg import sql

from archive_pipeline_tests.test_cli import cli
from archive_pipeline_tests.test_hunt10_px import _env

DAY = "2024-03-10"


def _table(pg, s3, bucket, conn, schema, tmp_path, name, columns, rows, **extra):
    t = sql.Identifier(schema, name)
    conn.execute(sql.SQL("CREATE TABLE {} (" + columns + ")").format(t))
    conn.execute(sql.SQL("INSERT INTO {} " + rows).format(t))
    table = {"name": f"{schema}.{name}", "day_column": "at", "start_date": DAY, "format": "jsonl",
             "partitioning": {"mode": "column"}, **extra}
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [table]}, allow_unicode=True), encoding="utf-8")
    env = _env(pg, s3, bucket, config)
    archived = cli(env, "archive", "--day", DAY)
    assert archived.returncode == 0, archived.stdout + archived.stderr
    return t, env


def _lost_one_row(pg, s3, bucket, conn, schema, tmp_path, name="t", **extra):
    t, env = _table(pg, s3, bucket, conn, schema, tmp_path, name,
                    "id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, at timestamptz NOT NULL, n int, "
                    "twice int GENERATED ALWAYS AS (n * 2) STORED",
                    "(at, n) VALUES ('2024-03-10 12:00+00', 1), ('2024-03-10 23:30+00', 2)", **extra)
    conn.execute(sql.SQL("DELETE FROM {} WHERE n = 2").format(t))
    return t, env


def test_verify_deep_put_back_remedy_fails_on_a_table_with_generated_or_identity_columns(
        pg, s3, bucket, conn, schema, tmp_path):
    """Edge of 93e7547 / a664acb (cli._put_back): verify --deep of a day whose source lost some rows tells to restore
    the day aside (`restore --into new --target "<schema>"."<name>_restored_<day>"`), then run
    `INSERT INTO <table> SELECT * FROM <aside> EXCEPT ALL SELECT * FROM <table>`. The fix assumed every column
    of the table takes an inserted value.

    Scenario: a table `(id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, at timestamptz, n int, twice int
    GENERATED ALWAYS AS (n * 2) STORED)` (ordinary PostgreSQL columns the product archives and restores); day
    2024-03-10 archived (2 rows); someone DELETEs one row; `verify --deep --json`; the user pastes the remedy's
    restore (works), then its INSERT.

    Now: the INSERT fails: "cannot insert a non-DEFAULT value into column "id"" (an identity ALWAYS column wants
    OVERRIDING SYSTEM VALUE; a stored generated column takes no value at all). The only remedy given to put the
    lost row back does not work; the row stays lost from the source.

    Should: the suggested statement works as pasted: name the columns that take values (not the generated ones) on
    both sides, `INSERT INTO t (id, at, n) OVERRIDING SYSTEM VALUE SELECT id, at, n FROM aside EXCEPT ALL SELECT
    id, at, n FROM t`; the lost row is back."""
    t, env = _lost_one_row(pg, s3, bucket, conn, schema, tmp_path)
    deep = cli(env, "verify", "--deep", "--day", DAY, "--json")
    [day] = json.loads(deep.stdout)["days"]
    remedy = day["remedy"]
    command = re.search(r"archive-pipeline restore [^)]*--into new --target '[^']*'", remedy)
    assert command, remedy
    args = shlex.split(command.group(0))
    restored = cli(env, *args[args.index("restore"):])
    assert restored.returncode == 0, restored.stdout + restored.stderr
    insert = re.search(r"INSERT INTO .*? EXCEPT ALL SELECT .*? FROM [^;]+(?=;)", remedy)  # (columns named)
    assert insert, remedy
    conn.execute(insert.group(0))  # now: psycopg.errors.GeneratedAlways
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(t)).fetchone()[0] == 2


def test_prune_put_back_remedy_names_a_mixed_case_table_unquoted(pg, s3, bucket, conn, schema, tmp_path):
    """Edge of a664acb (lifecycle.source_differs, shared by prune and the removal job): the refusal of a day whose
    source lost some rows tells to "restore the day into a new table (--into new) and insert the rows the table
    lacks (INSERT INTO <spec.name> SELECT * FROM <that table> EXCEPT ALL SELECT * FROM <spec.name>)". The table is
    spelled as configured (schema.name), not as SQL reads it; cli._put_back (verify --deep) quotes it.

    Scenario: a table named "Ev ents" (a space and a capital: a name the README promises to handle); retention
    delete; day 2024-03-10 archived; someone DELETEs one of its rows; `prune --day 2024-03-10 --json`; the user
    restores the day aside and runs the refusal's INSERT with <that table> filled in.

    Now: the statement says `INSERT INTO t_x.Ev ents SELECT * FROM ... EXCEPT ALL SELECT * FROM t_x.Ev ents`: a
    syntax error (and a mixed-case name without a space folds to another table, or none).

    Should: the remedy names the table as SQL reads it ("t_x"."Ev ents", as verify --deep's does), best with the
    aside table's name as verify --deep gives it. (Fix idea: sql_name(spec) in source_differs, or share
    cli._put_back's wording.)"""
    t, env = _table(pg, s3, bucket, conn, schema, tmp_path, "Ev ents",
                    "id int PRIMARY KEY, at timestamptz NOT NULL, note text",
                    "VALUES (1, '2024-03-10 12:00+00', 'kept'), (2, '2024-03-10 23:30+00', 'lost')",
                    retention={"keep_days": 1, "action": "delete"})
    conn.execute(sql.SQL("DELETE FROM {} WHERE id = 2").format(t))
    pruned = cli(env, "prune", "--day", DAY, "--json")
    [day] = json.loads(pruned.stdout)["days"]
    assert day["status"] == "refused", day
    aside = sql.Identifier(schema, "aside")
    restored = cli(env, "restore", "--day", DAY, "--into", "new", "--target", f'"{schema}"."aside"')
    assert restored.returncode == 0, restored.stdout + restored.stderr
    insert = re.search(r"\((INSERT INTO .*)\), then remove it", day["message"])  # (the statement, whole)
    assert insert, day["message"]
    statement = insert.group(1).replace("<that table>", aside.as_string(conn))
    conn.execute(statement)  # now: psycopg.errors.SyntaxError at "ents"
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(t)).fetchone()[0] == 2


def test_restore_rest_command_of_a_name_with_a_line_feed_names_another_table(pg, s3, bucket, conn, schema, tmp_path):
    """Edge of 1cbc386/af198df (cli: commands a message suggests quote a name holding a control character in bash's
    $'...', and _KEPT keeps configured names out of the rewording, their control characters escaped). The fix went
    to Run.suggest only: a range restore that stops at a day builds its "then: run <command> to restore the rest"
    with shlex.join (cli._the_rest), and appends it after the message was worded (_told).

    Scenario: a table named "ev<LF>ents" (a line feed: a name the README promises to handle; key_template without
    the name, as the configuration check asks); days 2024-03-10..12 archived; `restore --from 2024-03-10 --to
    2024-03-12 --into existing --target <x> --json` where x already holds another row with day 11's key (a
    conflict, not retryable: the range stops there).

    Now: the JSON error says `then: run archive-pipeline restore --table '<schema>.ev\\nents' --from 2024-03-12 ...`:
    the name's line feed escaped as a backslash and an 'n' inside single quotes, which bash reads as those two
    characters: the pasted command names a table that does not exist. (The text output prints the raw line feed,
    splitting the error line.)

    Should: the rest command is quoted as Run.suggest quotes it (`$'<schema>.ev\\nents'`), so the shell reads back
    the table's name. (Fix idea: _the_rest uses _shell_join, and the whole message goes through _told/_for_the_cli
    once it is complete.)"""
    import subprocess

    name = "ev\nents"
    t, env = _table(pg, s3, bucket, conn, schema, tmp_path, name, "id int PRIMARY KEY, at timestamptz NOT NULL",
                    "VALUES (1, '2024-03-10 12:00+00'), (2, '2024-03-11 12:00+00'), (3, '2024-03-12 12:00+00')",
                    key_template="{prefix}/nl/{date}.{ext}")
    for day in ("2024-03-11", "2024-03-12"):
        archived = cli(env, "archive", "--day", day)
        assert archived.returncode == 0, archived.stdout + archived.stderr
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at timestamptz NOT NULL)").format(
        sql.Identifier(schema, "x")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (2, '2024-03-11 13:00+00')").format(sql.Identifier(schema, "x")))
    done = cli(env, "restore", "--from", DAY, "--to", "2024-03-12", "--into", "existing", "--target", f"{schema}.x",
               "--json")
    error = json.loads(done.stdout)["error"]
    rest = re.search(r"then: run (archive-pipeline restore .*?) to restore the rest", error)
    assert rest, error
    said = subprocess.run(["bash", "-c", "printf '%s\\0' " + rest.group(1)], capture_output=True, text=True,
                          check=True).stdout.split("\0")
    assert said[said.index("--table") + 1] == f"{schema}.{name}", (rest.group(1), said)


def test_compare_drops_an_unreadable_tables_day_whose_manifest_is_damaged(pg, s3, bucket, s3_client, conn, schema,
                                                                        tmp_path):
    """Edge of a1d35a0/04ecba6 (cli._unreadable_table: a table whose days cannot be looked for in the source, among
    several, has its archived days listed `unreadable`, from plan.lookup_manifests, "never passed over as if it had
    nothing to say"). It keeps only the lookups with a manifest read (``lookup.archived is not None``): a day whose
    manifest exists but cannot be read (damaged, or its GET failing) has ``archived`` None and its ``problem`` set.

    Scenario: two column-mode tables `a` and `b`, days 2024-03-10 and 2024-03-11 archived for `a`, 2024-03-10 for
    `b`; the role compare runs as may read `b` but not `a`; then `a`'s 2024-03-11 manifest is overwritten with
    garbage (a damaged manifest); `compare --json` as that role.

    Now: `a` 2024-03-10 is listed `unreadable` (the grant), `b` is `equal`, and `a` 2024-03-11 is not listed at all:
    the one day whose archive is damaged (a day compare lists `unreadable` with "manifest ... is unreadable" when the
    table can be read) vanishes from the report.

    Should: every archived day of `a` is listed, the damaged one `unreadable` naming its manifest (lookups with a
    `problem` kept, as _compare_days keeps them)."""
    tables = []
    for name in ("a", "b"):
        conn.execute(f"CREATE TABLE {schema}.{name} (id int, at timestamptz NOT NULL)")
        conn.execute(f"INSERT INTO {schema}.{name} VALUES (1, '2024-03-10 12:00+00'), (2, '2024-03-11 12:00+00')")
        tables.append({"name": f"{schema}.{name}", "day_column": "at", "start_date": DAY,
                       "partitioning": {"mode": "column"}})
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": tables}))
    env = _env(pg, s3, bucket, config)
    for args in (("--day", DAY), ("--table", f"{schema}.a", "--day", "2024-03-11")):
        archived = cli(env, "archive", *args)
        assert archived.returncode == 0, archived.stdout + archived.stderr
    damaged = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]
               if f"{schema}.a/" in o["Key"] and "2024-03-11" in o["Key"] and o["Key"].endswith("manifest.json")]
    assert len(damaged) == 1, damaged
    s3_client.put_object(Bucket=bucket, Key=damaged[0], Body=b"{not a manifest")
    role = f"sa_ro_{schema}"
    conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'Ro-pass-7f3a'")
    conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}; GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}; "
                 f"REVOKE SELECT ON {schema}.a FROM {role}")
    ro = dict(env, ARCHIVE_PG_DSN=f"postgresql://{role}:Ro-pass-7f3a@{pg.dsn.split('@', 1)[1]}")
    done = cli(ro, "compare", "--from", DAY, "--to", "2024-03-11", "--json")
    answer = json.loads(done.stdout)
    results = {(d["table"], d["day"]): d["result"] for d in answer.get("days", [])}
    assert results.get((f"{schema}.a", DAY)) == "unreadable", answer  # (the fix's own case: holds)
    assert results.get((f"{schema}.a", "2024-03-11")) == "unreadable", answer


def test_verify_deep_put_back_remedy_of_a_naming_mode_day_inserts_into_a_table_that_is_not_the_days(
        pg, s3, bucket, conn, schema, tmp_path):
    """Edge of 93e7547 (cli._put_back): the restore-aside remedy's statement is `INSERT INTO <configured table> SELECT
    * FROM <aside> EXCEPT ALL SELECT * FROM <configured table>`. It assumed the configured name is the table that
    holds the day's rows (column and declarative modes). In naming mode (README: "legacy one-table-per-day,
    matched by `pattern`") the day's rows live in the day's own table (`ev_20240310`); the configured name `ev`
    is only the pattern's stem (a parent, or no table at all).

    Scenario: naming mode, pattern `ev_%Y%m%d`, no parent table; `ev_20240310` holds 2 rows; day archived; one row
    DELETEd; `verify --deep --json`; the user runs the remedy's restore (works) and then its INSERT.

    Now: the INSERT names `"<schema>"."ev"`, which does not exist (UndefinedTable); with an inheritance parent it
    would insert into the parent itself, not the day's table, and the day would still lack the row.

    Should: the statement inserts into the day's own table (`"<schema>"."ev_20240310"`), comparing against it;
    the lost row is back there."""
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz NOT NULL)").format(
        sql.Identifier(schema, "ev_20240310")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 12:00+00'), (2, '2024-03-10 13:00+00')").format(
        sql.Identifier(schema, "ev_20240310")))
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": DAY, "format": "jsonl",
             "partitioning": {"mode": "naming", "pattern": "ev_%Y%m%d"}}
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [table]}))
    env = _env(pg, s3, bucket, config)
    archived = cli(env, "archive", "--day", DAY)
    assert archived.returncode == 0, archived.stdout + archived.stderr
    day_table = sql.Identifier(schema, "ev_20240310")
    conn.execute(sql.SQL("DELETE FROM {} WHERE id = 2").format(day_table))
    deep = cli(env, "verify", "--deep", "--day", DAY, "--json")
    [day] = json.loads(deep.stdout)["days"]
    remedy = day["remedy"]
    command = re.search(r"archive-pipeline restore [^)]*--into new --target '[^']*'", remedy)
    assert command, remedy
    args = shlex.split(command.group(0))
    restored = cli(env, *args[args.index("restore"):])
    assert restored.returncode == 0, restored.stdout + restored.stderr
    insert = re.search(r"INSERT INTO .*? EXCEPT ALL SELECT .*? FROM [^;]+(?=;)", remedy)  # (columns named)
    assert insert, remedy
    conn.execute(insert.group(0))  # now: psycopg.errors.UndefinedTable: relation "<schema>.ev" does not exist
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(day_table)).fetchone()[0] == 2
