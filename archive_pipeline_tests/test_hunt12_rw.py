"""Hunt 12 (rw): a review of the newest fixes (4b88364, 1786c75, 93e7547, 46d5646) at their edges: prune's dry
run of a committed pending mark, prune's refusal of a changed day, prune's `already removed` for days not due,
verify --deep's restore-aside remedy, compare/list `tables_failed`, the partition key's zone comparison."""

from __future__ import annotations

import json
import re
import shlex

import yaml
from psycopg import sql

from archive_pipeline_tests.test_cli import cli
from archive_pipeline_tests.test_hunt10_px import _env

DAY = "2024-03-10"


def _two_row_table(pg, s3, bucket, conn, schema, tmp_path, name="t", **extra):
    t = sql.Identifier(schema, name)
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at timestamptz NOT NULL, note text)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 12:00+00', 'kept'), "
                         "(2, '2024-03-10 23:30+00', 'lost later')").format(t))
    table = dict(name=f"{schema}.{name}", day_column="at", start_date=DAY, format="jsonl",
                 partitioning={"mode": "column"}, **extra)
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [table]}, allow_unicode=True), encoding="utf-8")
    env = _env(pg, s3, bucket, config)
    archived = cli(env, "archive", "--day", DAY)
    assert archived.returncode == 0, archived.stdout + archived.stderr
    return t, env


def test_verify_deep_restore_aside_remedy_of_a_non_ascii_table_names_a_target_restore_refuses(
        pg, s3, bucket, conn, schema, tmp_path):
    """Edge of 93e7547 (cli._put_back: verify --deep of a day whose source lost some of its rows tells to
    `restore --into new --target "schema"."<name>_restored_<day>"` then INSERT ... EXCEPT ALL). The aside name is
    ``name[:40] + "_restored_" + 8 digits``: 40 *characters*, not bytes.

    Scenario: a table named with 21 CJK characters (63 bytes in UTF-8, a legal name); day 2024-03-10 archived (2
    rows); someone DELETEs one row; `verify --deep --json`.

    Now: the remedy's target is 21 CJK characters + "_restored_20240310" = 81 bytes; pasting the suggested restore
    command fails: restore refuses a target longer than PostgreSQL's 63 bytes. The remedy the fix added to put
    the rows back does not work for the very names the product promises to handle (and cut to 63 bytes, as
    PostgreSQL would keep it, the aside name IS the source table's name).

    Should: the suggested command works as pasted: the aside name cut to fit 63 bytes in the database's encoding
    (cut by bytes at a character boundary, e.g. ``name.encode()[:40].decode(errors="ignore")``)."""
    name = "事" * 21
    t, env = _two_row_table(pg, s3, bucket, conn, schema, tmp_path, name=name)
    conn.execute(sql.SQL("DELETE FROM {} WHERE id = 2").format(t))
    deep = cli(env, "verify", "--deep", "--day", DAY, "--json")
    said = json.dumps(json.loads(deep.stdout), ensure_ascii=False)
    command = re.search(r"(archive-pipeline|\S*archive_pipeline\S*) restore [^)]*--into new --target '[^']*'", said)
    assert command, said
    args = shlex.split(command.group(0).replace('\\"', '"'))
    args = args[args.index("restore"):]
    restored = cli(env, *args)
    assert restored.returncode == 0, (args, restored.stdout + restored.stderr)


def test_prune_refusing_a_day_that_lost_some_rows_tells_a_restore_that_restore_refuses(
        pg, s3, bucket, conn, schema, tmp_path):
    """Edge of 1786c75 (lifecycle: prune's refusal of a day whose rows are not the archive's, every deep-verify
    problem the source's, says "if the source's rows are the right ones, archive the day again (overwrite), then
    remove it; if rows were lost from the source, restore them from the archive first") against 93e7547 (verify
    --deep learnt that restore --into original refuses a day the table holds some of, and tells to restore aside
    and INSERT ... EXCEPT ALL).

    Scenario: a table with retention (delete, keep_days 1); day 2024-03-10 archived (2 rows); someone DELETEs one
    of its rows; `prune --day 2024-03-10 --json`.

    Now: the day is refused with the remedy "restore them from the archive first"; the only restore there is,
    `restore --into original`, refuses the day (the table holds one of its rows). The remedy prune gives for lost
    rows does not work; its first choice, archive again with overwrite, makes the new generation lack the lost row.

    Should: the refusal's remedy for lost rows is one that works, as verify --deep's: restore the day into a new
    table (`--into new --target ...`) and INSERT the rows the table lacks (EXCEPT ALL). (Fix idea: share
    cli._put_back with the refusal, or give RemovalRefused the counts so the CLI words the remedy.)"""
    t, env = _two_row_table(pg, s3, bucket, conn, schema, tmp_path, retention={"keep_days": 1, "action": "delete"})
    conn.execute(sql.SQL("DELETE FROM {} WHERE id = 2").format(t))
    pruned = cli(env, "prune", "--day", DAY, "--json")
    assert pruned.returncode == 1, pruned.stdout + pruned.stderr
    [day] = json.loads(pruned.stdout)["days"]
    assert day["status"] == "refused", day
    original = cli(env, "restore", "--day", DAY, "--into", "original")
    assert original.returncode != 0, original.stdout  # (the remedy's restore: refused, the table holds some rows)
    said = json.dumps(day)
    assert "--into new" in said or "EXCEPT ALL" in said, said


def test_prune_of_a_not_due_day_whose_removal_committed_and_stayed_pending_says_nothing_was_removed(
        pg, s3, bucket, s3_client, conn, schema, tmp_path, monkeypatch):
    """Edge of 1786c75 (cli._not_due: a day asked for by name within the retention window is `already removed`
    when its manifest says its removal is done, not `not due`). It looks only at a "done" mark.

    Scenario: a table with retention (delete, keep_days 1); day 2024-03-10 archived; its removal's DELETE commits
    and the process dies before the "done" mark (manifest left `removed: pending`, the source holds none of the
    day); the operator then raises keep_days (36500: the day is within the window); `prune --day 2024-03-10`.

    Now: the day is listed `not due` with "within the retention window (keep_days 36500): nothing removed; due
    once that many days have passed after it" (exit 0): false (its rows are gone from the source, the archive is
    their only copy), and the pending mark stays for good (nothing settles it before the day is due again).

    Should: as for a "done" mark: `already removed` (or settled to done: `removal completed`), never "nothing
    removed"; a committed pending mark is a removal that happened. (Fix idea: in _not_due, a "pending" mark whose
    transaction committed (lifecycle._committed) is said as removed, and settled as _prune_table settles one.)"""
    from archive_pipeline.core.config import parse_config
    from archive_pipeline.core.store import S3Store
    from archive_pipeline_tests.test_hunt10_px import PREFIX
    from archive_pipeline_tests.test_hunt12_rx import _pending_committed

    t, env = _two_row_table(pg, s3, bucket, conn, schema, tmp_path, retention={"keep_days": 1, "action": "delete"})
    config = tmp_path / "tables.yaml"
    spec = parse_config(yaml.safe_load(config.read_text()), "t").tables[0]
    store = S3Store(s3_client, bucket, prefix=PREFIX)
    import datetime as dt
    _pending_committed(conn, spec, store, monkeypatch, dt.date(2024, 3, 10))
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(t)).fetchone()[0] == 0  # removed, mark pending
    raw = yaml.safe_load(config.read_text())
    raw["tables"][0]["retention"]["keep_days"] = 36500
    config.write_text(yaml.safe_dump(raw))
    pruned = cli(env, "prune", "--day", DAY, "--json")
    [day] = json.loads(pruned.stdout)["days"]
    assert day["status"] != "not due" and "nothing removed" not in day.get("message", ""), day


def test_prune_of_a_removed_day_whose_manifest_a_newer_version_wrote_is_told_to_restore_it_from_a_backup(
        pg, s3, bucket, s3_client, conn, schema, tmp_path):
    """Edge of 1786c75 (cli._prune_table: a removed day whose manifest cannot be read, not retryably, now adds "the
    source no longer holds <day>: if it was removed, its archive is the day's only copy, and its manifest must be
    put back from a backup of the bucket (its versions, a replica)"). Every non-retryable read is taken for damage.

    Scenario: a table with retention (delete, keep_days 1); day 2024-03-10 archived and removed by `prune`; then a
    newer archive_pipeline rewrites the day's manifest (manifest_version 99: this version raises
    NewerManifestError, "written by a newer archive_pipeline ... upgrade"); `prune --day 2024-03-10 --json`.

    Now: the day fails with "... written by a newer archive_pipeline ...; the source no longer holds 2024-03-10: ...
    its manifest must be put back from a backup of the bucket": told to replace an intact manifest, the newer
    version's record of the removal, with an older copy.

    Should: a newer version's manifest is not damaged: the remedy is NewerManifestError's (upgrade archive_pipeline),
    never "put back from a backup" (as cli._verify_remedy special-cases it). (Fix idea: add the backup words only
    to a manifest that is damaged (lookup problem from a plain ManifestError), not to a newer/foreign one or a
    read refused (403 AccessDenied is also "not retryable", and a grant is its fix).)"""
    t, env = _two_row_table(pg, s3, bucket, conn, schema, tmp_path, retention={"keep_days": 1, "action": "delete"})
    removed = cli(env, "prune", "--day", DAY, "--json")
    assert removed.returncode == 0 and json.loads(removed.stdout)["days"][0]["status"] == "removed", removed.stdout
    [mkey] = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"] if "manifest" in o["Key"]]
    manifest = json.loads(s3_client.get_object(Bucket=bucket, Key=mkey)["Body"].read())
    manifest["manifest_version"] = 99
    s3_client.put_object(Bucket=bucket, Key=mkey, Body=json.dumps(manifest).encode())
    pruned = cli(env, "prune", "--day", DAY, "--json")
    [day] = json.loads(pruned.stdout)["days"]
    assert "newer archive_pipeline" in day["message"], day  # (the scenario as described)
    assert "backup" not in day["message"] and "upgrade" in day["message"], day


def test_the_removal_job_of_a_day_that_lost_some_rows_is_told_only_to_archive_it_again(conn, schema, archive_env,
                                                                                      store):
    """Edge of 1786c75, whose refusal of a changed day (lifecycle: "its rows are not the archive's any more ...;
    if rows were lost from the source, restore them from the archive first") was made for the command line's
    prune only; the Dagster removal job (retention_assets._removing) words the same case its own, older way.

    Scenario: a table with retention (delete, keep_days 1); day 2024-03-10 archived (30 rows, proven); someone
    DELETEs 10 of its rows; the removal job Remove_<table> runs for the day.

    Now: the run fails with "its archive is not proven: the source's rows ... 20 rows against 30 ...; If the
    source's rows are the right ones (rows changed or arrived late), archive the day again, then remove it":
    the archive (which checks out, and is now the only copy of the 10 lost rows) is called not proven, and the
    only remedy offered, archiving again, makes a new generation without them. Nothing says rows may have been
    lost and that the archive holds them.

    Should: as prune says it since 1786c75: the archive checks out, the source's rows changed; if they were lost,
    put them back from the archive (restore aside + INSERT ... EXCEPT ALL, as verify --deep says), else archive
    the day again with overwrite. (Fix idea: in _removing, a proof whose problems are all the source's
    (source_side_only) raises lifecycle's changed-day wording and remedy.)"""
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import parse_config
    from archive_pipeline_tests.test_hunt12_rn import DAY as RN_DAY, _removal_run, _table

    t = _table(conn, schema)
    config = parse_config({"retry": {"max_retries": 0}, "tables": [{
        "name": f"{schema}.t", "day_column": "at", "start_date": "2024-03-01",
        "retention": {"keep_days": 1, "action": "delete"}}]})
    spec = config.tables[0]
    assert archive_partition(conn, spec, RN_DAY, store).rows == 30
    conn.execute(sql.SQL("DELETE FROM {} WHERE id <= 10").format(t))
    result, proofs, failure = _removal_run(config, spec, RN_DAY)
    assert not result.success
    assert "20 rows against 30" in failure, failure  # (the scenario as described)
    assert "lost" in failure and "restore" in failure, failure
