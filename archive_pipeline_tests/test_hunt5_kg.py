"""Hunt 5 (kg): naming-mode tables (one table per day, `events_%Y%m%d`) through the whole round trip: archive,
list, compare, verify, prune with each action, restore, and archive again; every command must treat a naming-mode
day in each state as it treats a declarative or column-mode day."""

from __future__ import annotations

from psycopg import sql

from archive_pipeline_tests.test_hunt3_o import DAYS, cli, make_env, write_config


def day_tables(conn, schema: str, inherit: bool = True, rows: int = 20, name: str = "ev") -> None:
    """``schema.ev`` (when ``inherit``) and one table a day, ``ev_YYYYMMDD``, inheriting from it, ``rows`` each."""
    if inherit:
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at timestamptz NOT NULL, note text)").format(
            sql.Identifier(schema, name)))
    for n, day in enumerate(DAYS):
        child = sql.Identifier(schema, f"{name}_{day:%Y%m%d}")
        if inherit:
            conn.execute(sql.SQL("CREATE TABLE {} (PRIMARY KEY (id)) INHERITS ({})").format(
                child, sql.Identifier(schema, name)))
        else:
            conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at timestamptz NOT NULL, note text)").format(
                child))
        conn.execute(sql.SQL("INSERT INTO {} SELECT %s * 1000 + g, %s::timestamptz + g * interval '1 minute', "
                             "md5(g::text) FROM generate_series(1, %s) g").format(child),
                     (n, f"{day} 00:00+00", rows))


def naming_env(pg, s3, bucket, schema, tmp_path, action: str = "drop", inherit: bool = True):
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": DAYS[0].isoformat(),
             "partitioning": {"mode": "naming", "pattern": "ev_%Y%m%d"},
             "retention": {"keep_days": 1, "action": action}}
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    return make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [table]), tmp)


def archived_and_pruned(env) -> None:
    archived = cli(env, "archive", "--from", DAYS[0].isoformat(), "--to", DAYS[-1].isoformat())
    assert archived.returncode == 0, archived.stdout + archived.stderr
    pruned = cli(env, "prune", "--day", DAYS[1].isoformat())
    assert pruned.returncode == 0 and "removed" in pruned.stdout, pruned.stdout + pruned.stderr


def test_verify_deep_proves_a_naming_mode_day_that_prune_dropped_by_its_archive_alone(
        pg, s3, bucket, conn, schema, tmp_path):
    """A user with a naming-mode table (one table a day) and `retention: {action: drop}` runs `prune --day D`:
    D's table is dropped, its manifest marked removed. Then `verify --deep --day D` (the README: a day removed
    from the source by retention is proven by its archive alone; for a declarative table whose partition was
    dropped the same command says `ok`): it exits 1, `FAILED`, "not checked (not retryable): no table for D of
    schema.ev: table 'schema.ev_D' does not exist … check the table's name in the YAML configuration", sending
    the user to fix a configuration that is right, and the only copy of the day is never proven. Expected: exit
    0, the day `ok`, proven by its archive (object, digests, rows loaded back against the manifest)."""
    env = naming_env(pg, s3, bucket, schema, tmp_path, "drop")
    day_tables(conn, schema)
    archived_and_pruned(env)
    verified = cli(env, "verify", "--deep", "--day", DAYS[1].isoformat())
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "does not exist" not in verified.stdout + verified.stderr


def test_restore_into_original_puts_a_dropped_naming_mode_day_table_back_under_its_parent(
        pg, s3, bucket, conn, schema, tmp_path):
    """A naming-mode table whose day tables inherit from the configured table `schema.ev` (the legacy layout the
    README names: "one-table-per-day (inheritance or not)"); the application reads `SELECT … FROM schema.ev`.
    `prune --day D` (action drop) drops `ev_D`; later the user needs the day back and runs `restore --day D --into
    original`. It says `created: schema.ev_D`, the check passes, `list` says "back in the source" and `compare`
    says `equal`, yet `ev_D` is created as a stand-alone table: `schema.ev` shows 40 rows instead of 60 and the
    application still does not see the day. (For a declarative table the same command re-creates the dropped
    partition attached to its parent.) Expected: the re-created day table inherits from `schema.ev` again, as it
    did when it was archived, so `SELECT count(*) FROM schema.ev` is back to the 60 rows it had."""
    env = naming_env(pg, s3, bucket, schema, tmp_path, "drop")
    day_tables(conn, schema)
    archived_and_pruned(env)
    restored = cli(env, "restore", "--day", DAYS[1].isoformat(), "--into", "original")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "ev"))).fetchone()[0] == 60


def test_a_detached_naming_mode_day_restored_as_the_restore_error_says_is_a_source_day_again(
        pg, s3, bucket, conn, schema, tmp_path):
    """Retention `detach` (naming mode) took `ev_D` out of `schema.ev`. The user runs `restore --day D --into
    original`; it refuses: "ev_D … no longer inherits from schema.ev (detached by retention) …: attach it again
    (ALTER TABLE … INHERIT …), or drop it and restore again". The user takes the second way: `DROP TABLE ev_D`,
    then the same restore, which succeeds (`created: schema.ev_D`). The day is still not back: the new `ev_D`
    inherits from nothing, so `list` still says "detached from the source at …", `prune` calls the day "already
    removed", and the very same restore now refuses again with the same message (drop and restore again: an
    endless loop). The README: a day restored into the original table after retention removed it is an ordinary
    source day again, which the next removal proves and removes again. Expected: after the drop and restore, the
    day is back under `schema.ev` (its 20 rows seen through it), `list` calls it back in the source, and `prune
    --dry-run` would remove it again rather than call it already removed."""
    env = naming_env(pg, s3, bucket, schema, tmp_path, "detach")
    day_tables(conn, schema)
    archived_and_pruned(env)
    day = ["--day", DAYS[1].isoformat()]
    refused = cli(env, "restore", *day, "--into", "original")
    assert refused.returncode == 1 and "or drop it and restore again" in refused.stdout + refused.stderr
    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, f"ev_{DAYS[1]:%Y%m%d}")))
    restored = cli(env, "restore", *day, "--into", "original")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE at >= %s AND at < %s").format(
        sql.Identifier(schema, "ev")), (f"{DAYS[1]} 00:00+00", f"{DAYS[2]} 00:00+00")).fetchone()[0] == 20
    listed = cli(env, "list", *day)
    assert "detached from the source" not in listed.stdout, listed.stdout
    dry = cli(env, "prune", "--dry-run", *day)
    assert "already removed" not in dry.stdout and "would remove" in dry.stdout, dry.stdout + dry.stderr


def test_the_restore_refusal_after_a_naming_mode_detach_names_the_table_the_day_was_detached_from(
        pg, s3, bucket, conn, schema, tmp_path):
    """A naming-mode table configured as `schema.ev` whose day tables `ev_YYYYMMDD` inherit from a parent of
    another name, `schema.base` (naming mode needs no table called `schema.ev`: the README's legacy layout,
    "inheritance or not"). Retention `detach` takes `ev_D` out of `schema.base` (NO INHERIT of the tables it
    inherits from). Then `restore --day D --into original` refuses, as the README says, "with the `INHERIT`" to
    run: "attach it again (ALTER TABLE "schema"."ev_D" INHERIT "schema"."ev")". That statement names a table
    that does not exist: running it fails ("relation … does not exist") and the day is never attached again.
    Expected: the statement the refusal gives names the table the day table was detached from (`schema.base`),
    so running it puts the day back where it was."""
    env = naming_env(pg, s3, bucket, schema, tmp_path, "detach")
    day_tables(conn, schema)
    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO base").format(sql.Identifier(schema, "ev")))
    archived_and_pruned(env)
    refused = cli(env, "restore", "--day", DAYS[1].isoformat(), "--into", "original")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    message = refused.stdout + refused.stderr
    statement = message[message.index("ALTER TABLE"):message.index(")", message.index("ALTER TABLE"))]
    conn.execute(statement)  # what the user is told to run
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "base"))).fetchone()[0] == 60


def test_list_calls_a_naming_mode_day_deleted_by_prune_deleted_when_its_table_holds_another_days_row(
        pg, s3, bucket, conn, schema, tmp_path):
    """A naming-mode table with a `day_column` (the README: optional, it "adds a filter"), whose day table `ev_D`
    also holds one row of D+1 (a legacy app that named its tables by its local date, a late insert into the wrong
    table): archiving D takes D's 20 rows only. `prune --day D` with action `delete` deletes those 20 rows and
    leaves the row of D+1, as it should (`compare` then says `not-in-source`, "deleted from the source at …",
    and `prune` "already removed"). But `list --day D` says "back in the source (restored after its delete at …)"
    (nothing was restored), `list --check-source` calls the day `changed` ("source has 0 rows, archive 20") and
    exits 1, and `archive --dry-run` counts it "refused (changed since archived)". For a declarative or
    column-mode table the same delete leaves the day "deleted from the source". Expected: both `list`s say the
    day was deleted from the source and exit 0, as `compare` does: a naming-mode day is in the source when its
    table holds a row of the day, not any row."""
    env = naming_env(pg, s3, bucket, schema, tmp_path, "delete")
    day_tables(conn, schema)
    conn.execute(sql.SQL("INSERT INTO {} VALUES (5555, %s, 'of the next day')").format(
        sql.Identifier(schema, f"ev_{DAYS[1]:%Y%m%d}")), (f"{DAYS[2]} 05:00+00",))
    archived_and_pruned(env)
    day = ["--day", DAYS[1].isoformat()]
    compared = cli(env, "compare", *day)
    assert compared.returncode == 0 and "deleted from the source" in compared.stdout  # (as it should)
    listed = cli(env, "list", *day)
    assert listed.returncode == 0 and "deleted from the source" in listed.stdout, listed.stdout + listed.stderr
    checked = cli(env, "list", "--check-source", *day)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "deleted from the source" in checked.stdout, checked.stdout
