"""Hunt 6 (lp): the lifecycle of a day across its states (archived, overwritten, removed by drop / detach /
delete, restored, archived and removed again, left half-way by an interruption), and every command in each."""

from __future__ import annotations

import datetime as dt
import json

import yaml
from click.testing import CliRunner
from psycopg import sql

from archive_pipeline.cli import main

DAY = dt.date(2024, 3, 10)


def _day_partitions(conn, schema: str, *, default: bool = False) -> None:
    """``<schema>.t`` partitioned by day: t_20240309..t_20240311 (24 rows each), optionally a DEFAULT partition."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.t (id int, at timestamptz NOT NULL, v text, PRIMARY KEY (id, at)) "
                         "PARTITION BY RANGE (at)").format(s))
    for d in (9, 10, 11):
        conn.execute(sql.SQL("CREATE TABLE {}.{} PARTITION OF {}.t FOR VALUES FROM ({}) TO ({})").format(
            s, sql.Identifier(f"t_202403{d:02d}"), s, sql.Literal(f"2024-03-{d:02d} 00:00+00"),
            sql.Literal(f"2024-03-{d + 1:02d} 00:00+00")))
    if default:
        conn.execute(sql.SQL("CREATE TABLE {}.t_default PARTITION OF {}.t DEFAULT").format(s, s))
    conn.execute(sql.SQL("INSERT INTO {}.t SELECT g, '2024-03-09 00:00+00'::timestamptz + g * interval '1 hour', "
                         "'v' || g FROM generate_series(0, 71) g").format(s))


def _env(pg, s3, bucket: str, tmp_path, schema: str, *, partitioning: dict, action: str) -> dict[str, str]:
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [{
        "name": f"{schema}.t", "day_column": "at", "start_date": "2024-03-09", "format": "jsonl",
        "partitioning": partitioning, "retention": {"keep_days": 30, "action": action}}]}))
    return {"ARCHIVE_PIPELINE_CONFIG": str(config), "ARCHIVE_PG_DSN": pg.dsn, "ARCHIVE_S3_BUCKET": bucket,
            "ARCHIVE_S3_ENDPOINT_URL": s3.endpoint_url, "ARCHIVE_S3_PREFIX": "archive", "COLUMNS": "250",
            "ARCHIVE_S3_ACCESS_KEY_ID": "testing", "ARCHIVE_S3_SECRET_ACCESS_KEY": "testing"}


def _cli(env: dict[str, str], *args: str) -> tuple[int, dict]:
    done = CliRunner(env=env).invoke(main, [*args, "--json"])
    assert done.exception is None or isinstance(done.exception, SystemExit), done.exception
    return done.exit_code, json.loads(done.stdout)


def test_archive_dry_run_calls_a_removed_day_with_late_rows_in_the_default_partition_a_day_without_data(
        pg, s3, conn, schema, bucket, tmp_path):
    """A declaratively partitioned table with a DEFAULT partition, retention ``drop``. 2024-03-10 is archived and
    pruned (its partition dropped). Then a late row of 2024-03-10 is written: it lands in the DEFAULT partition (the
    state the README names: "rows of it have arrived since (back-dated into a DEFAULT partition ...)"). The user
    asks ``archive --dry-run --day 2024-03-10`` what archiving would do: it answers ``no-data``, "no data for this
    day in PostgreSQL". But ``archive --day 2024-03-10`` (which the dry run claims to decide "with the archiver's own
    rule") finds the row and fails the day as removed with other rows now (add --overwrite), and ``compare`` calls
    the day ``differs`` (1 source row). After ``archive --overwrite`` the dry run still says ``no-data`` where a
    real run skips the identical archive. The dry run should plan the day as the run does (refuse here, skip
    after the overwrite): it probes only the catalog's partitions, not the DEFAULT partition the run reads."""
    _day_partitions(conn, schema, default=True)
    env = _env(pg, s3, bucket, tmp_path, schema, partitioning={"mode": "declarative"}, action="drop")
    day = ["--day", DAY.isoformat()]
    assert _cli(env, "archive", *day)[0] == 0
    code, pruned = _cli(env, "prune", "--from", DAY.isoformat(), "--to", DAY.isoformat())
    assert code == 0 and [d["status"] for d in pruned["days"]] == ["removed"]
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1000, '2024-03-10 05:30+00', 'late')").format(
        sql.Identifier(schema, "t")))
    code, compared = _cli(env, "compare", *day)
    assert code == 1 and compared["days"][0]["result"] == "differs" and compared["days"][0]["source_rows"] == 1
    code, planned = _cli(env, "archive", "--dry-run", *day)
    code_run, ran = _cli(env, "archive", *day)
    assert code_run == 1 and ran["days"][0]["status"] == "failed", ran  # removed, with other rows now
    assert planned["days"][0]["action"] == "refuse", (
        f"the dry run plans {planned['days'][0]['action']!r} ({planned['days'][0]['reason']}) for a day the run "
        f"refuses: {ran['days'][0]['message'][:200]}")


def test_prune_passes_over_a_due_archived_day_whose_late_rows_sit_in_the_default_partition(
        pg, s3, conn, schema, bucket, tmp_path):
    """The same table (DEFAULT partition), retention ``drop``: 2024-03-10 archived and pruned, then a late row of the
    day lands in the DEFAULT partition. The user follows the README: archives it again with ``--overwrite`` (the
    archive now holds exactly that row; ``compare`` says ``equal``), and, since ``drop`` cannot remove rows that are
    not a partition of their own, switches the table's retention to ``delete`` ("delete works in every mode"). Then
    ``prune`` (and ``prune --dry-run``) lists no day at all and exits 0: the due, archived, proven row stays in the
    source for good, with nothing said. The core ``remove_day`` on the same day deletes it (1 row). prune should
    remove the day (or at least list it): it looks for due days in the catalog only (``present_days(catalog=True)``),
    which sees partitions, not the DEFAULT partition's rows that ``archive``, ``list`` and ``compare`` find."""
    _day_partitions(conn, schema, default=True)
    env = _env(pg, s3, bucket, tmp_path, schema, partitioning={"mode": "declarative"}, action="drop")
    day, span = ["--day", DAY.isoformat()], ["--from", DAY.isoformat(), "--to", DAY.isoformat()]
    assert _cli(env, "archive", *day)[0] == 0
    assert [d["status"] for d in _cli(env, "prune", *span)[1]["days"]] == ["removed"]
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1000, '2024-03-10 05:30+00', 'late')").format(
        sql.Identifier(schema, "t")))
    code, again = _cli(env, "archive", "--overwrite", *day)
    assert code == 0 and again["days"][0]["rows"] == 1
    code, compared = _cli(env, "compare", *day)
    assert code == 0 and compared["days"][0]["result"] == "equal"
    env = _env(pg, s3, bucket, tmp_path, schema, partitioning={"mode": "declarative"}, action="delete")
    code, dry = _cli(env, "prune", "--dry-run", *span)
    code, pruned = _cli(env, "prune", *span)
    left = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE at >= '2024-03-10' AND at < '2024-03-11'").format(
        sql.Identifier(schema, "t"))).fetchone()[0]
    assert dry["days"] and pruned["days"] and left == 0, (
        f"prune --dry-run listed {dry['days']}, prune listed {pruned['days']} (exit {code}); "
        f"{left} archived row(s) of the due day are still in the source")


def test_archive_dry_run_takes_a_pending_mark_of_a_rolled_back_removal_for_a_removed_day(
        pg, s3, conn, schema, bucket, tmp_path, store):
    """2024-03-10 (24 rows) is archived; a removal (retention ``drop``) wrote its pending mark and was then rolled
    back (a late row, a lost session) and the mark could not be taken back: the manifest says ``pending`` with the
    id of a transaction PostgreSQL reports aborted, while every row is still in the source (the README: the next run
    of the day settles it; "one that did not commit is taken back ... and the day is an ordinary archived day
    again"). The user asks ``archive --dry-run --overwrite``: the plan says ``skip`` ("identical archive exists"),
    but ``archive --overwrite`` settles the mark first (taken back) and archives the day again as a new generation.
    With a row of the day edited, ``archive --dry-run`` refuses it saying the day "was removed from the source ...
    the archive is the only copy ... restore the archive if you need the removed rows back", where the run says the
    day changed since it was archived: no row was ever removed. The dry run should decide as the run does (the
    mark's transaction rolled back: an ordinary archived day), as ``lifecycle.pending_removal_committed`` allows
    without writing; ``plan.plan_day`` reads any removal mark, pending or not, as a removal."""
    from archive_pipeline.core.manifest import encode_manifest, manifest_key
    from archive_pipeline.core.verify import load_manifest

    _day_partitions(conn, schema)
    env = _env(pg, s3, bucket, tmp_path, schema, partitioning={"mode": "declarative"}, action="drop")
    day = ["--day", DAY.isoformat()]
    code, archived = _cli(env, "archive", *day)
    assert code == 0
    key = archived["days"][0]["key"]
    manifest = load_manifest(store, key)
    conn.execute("BEGIN")
    xid = conn.execute("SELECT txid_current()").fetchone()[0]
    conn.execute("ROLLBACK")  # the removal's transaction, rolled back; its mark stayed
    mark = {"at": "2024-05-01T00:00:00+00:00", "action": "drop", "state": "pending", "xid": str(xid),
            "relation": f"{schema}.t_20240310"}
    store.put_bytes(manifest_key(key), encode_manifest(
        {**{k: v for k, v in manifest.items() if k != "manifest_sha256"}, "removed": mark}), "application/json")
    planned_overwrite = _cli(env, "archive", "--dry-run", "--overwrite", *day)[1]["days"][0]
    row = sql.SQL("UPDATE {} SET v = {} WHERE id = 30").format(sql.Identifier(schema, "t"), sql.Placeholder())
    conn.execute(row, ("edited",))
    planned_edited = _cli(env, "archive", "--dry-run", *day)[1]["days"][0]
    conn.execute(row, ("v30",))
    code, ran = _cli(env, "archive", "--overwrite", *day)
    assert code == 0 and ran["days"][0]["status"] == "archived", ran  # the mark taken back, archived again
    assert planned_overwrite["action"] == "overwrite" and "removed from the source" not in planned_edited["reason"], (
        f"dry run --overwrite: {planned_overwrite['action']} ({planned_overwrite['reason']}), the run archived the "
        f"day again; dry run of the edited day: {planned_edited['reason'][:160]}")


def test_restore_and_list_lose_a_removed_days_only_archive_once_the_tables_format_changes(
        pg, s3, conn, schema, bucket, tmp_path):
    """2024-03-10 is archived as JSONL and pruned (retention ``delete``): the archive is the day's only copy. Later the
    team switches the table to ``format: csv`` (the README: with ``{ext}`` in the key template this "moves the day's
    key", and an archive run "looks at the day's keys under every other format and codec ... and refuses a day
    removed there just the same"). Now they need the day back: ``restore --day 2024-03-10 --into new`` answers "no
    archive for: ... 2024-03-10 ... some requested days have no archive (see `archive-pipeline list`)", exit 1, and
    ``list`` does not show the day at all: the removed rows' only copy, still at its ``.jsonl.zst`` key, is
    reported as not existing, with a remedy that shows nothing. Restore (and list) should find the removed day's
    archive under the former format as the archiver does, or at least name where it is."""
    _day_partitions(conn, schema)
    env = _env(pg, s3, bucket, tmp_path, schema, partitioning={"mode": "declarative"}, action="delete")
    day, span = ["--day", DAY.isoformat()], ["--from", DAY.isoformat(), "--to", DAY.isoformat()]
    code, archived = _cli(env, "archive", *day)
    assert code == 0
    old_key = archived["days"][0]["key"]
    assert [d["status"] for d in _cli(env, "prune", *span)[1]["days"]] == ["removed"]
    config = tmp_path / "tables.yaml"
    tables = yaml.safe_load(config.read_text())
    tables["tables"][0]["format"] = "csv"
    config.write_text(yaml.safe_dump(tables))
    listed = _cli(env, "list", *day)[1]
    code, restored = _cli(env, "restore", "--into", "new", "--target", f"{schema}.back", *day)
    told = json.dumps(restored)
    assert (code == 0 and restored["days"] and restored["days"][0]["rows"] == 24) or old_key in told, (
        f"restore exit {code}: {told[:300]}; list shows {listed['days']}")


def test_list_calls_late_rows_of_a_removed_day_a_restore_of_its_archive(pg, s3, conn, schema, bucket, tmp_path):
    """2024-03-10 (24 rows) is archived and pruned (retention ``delete``). Nobody restores it, but two late rows of
    the day arrive (a back-dated batch). ``list --day 2024-03-10`` shows the day ``archived`` with the note "back in
    the source (restored after its delete at ...)": it tells the user the source holds the archive's rows put back,
    while it holds 2 rows that are in no archive (``compare`` says ``differs``, 2 source rows against 24; the
    archive run refuses them as a removed day with other rows now). ``plan._removed_yet_present`` takes any row of a
    removed day for a restore. list should not claim a restore it did not see: say the day has rows again
    (restored, or rows arrived since) and how to tell (``--check-source``), or check what it claims."""
    _day_partitions(conn, schema)
    env = _env(pg, s3, bucket, tmp_path, schema, partitioning={"mode": "declarative"}, action="delete")
    day, span = ["--day", DAY.isoformat()], ["--from", DAY.isoformat(), "--to", DAY.isoformat()]
    assert _cli(env, "archive", *day)[0] == 0
    assert [d["status"] for d in _cli(env, "prune", *span)[1]["days"]] == ["removed"]
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1000, '2024-03-10 05:30+00', 'late'), "
                         "(1001, '2024-03-10 06:30+00', 'late')").format(sql.Identifier(schema, "t")))
    code, compared = _cli(env, "compare", *day)
    assert code == 1 and compared["days"][0]["result"] == "differs"
    listed = _cli(env, "list", *day)[1]["days"][0]
    assert "restored after" not in listed["note"], (listed["state"], listed["note"])


def test_archive_dry_run_plans_a_removed_day_archived_under_the_former_format_as_never_archived(
        pg, s3, conn, schema, bucket, tmp_path):
    """2024-03-10 is archived as JSONL and pruned (retention ``delete``); the table is then switched to ``format:
    csv``, and a late row of the day arrives. ``archive --day 2024-03-10`` refuses the day as the README says ("a
    run that finds nothing at the new key looks at the day's keys under every other format and codec ... and
    refuses a day removed there just the same"): removed, its JSONL archive the only copy. But ``archive --dry-run``
    (with or without ``--overwrite``) plans ``archive``, reason "not archived yet": it tells the user the day was
    never archived and that a run would archive it, where the run refuses. ``plan.plan_day`` reads only the
    day's key under the current format; it should apply the archiver's rule for a removed day found under another
    format or codec (``_removed_elsewhere``), as it claims to decide "with the archiver's own rule"."""
    _day_partitions(conn, schema)
    env = _env(pg, s3, bucket, tmp_path, schema, partitioning={"mode": "declarative"}, action="delete")
    day, span = ["--day", DAY.isoformat()], ["--from", DAY.isoformat(), "--to", DAY.isoformat()]
    assert _cli(env, "archive", *day)[0] == 0
    assert [d["status"] for d in _cli(env, "prune", *span)[1]["days"]] == ["removed"]
    config = tmp_path / "tables.yaml"
    tables = yaml.safe_load(config.read_text())
    tables["tables"][0]["format"] = "csv"
    config.write_text(yaml.safe_dump(tables))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1000, '2024-03-10 05:30+00', 'late')").format(
        sql.Identifier(schema, "t")))
    planned = _cli(env, "archive", "--dry-run", *day)[1]["days"][0]
    code, ran = _cli(env, "archive", *day)
    assert code == 1 and ran["days"][0]["status"] == "failed" and "was removed" in ran["days"][0]["message"], ran
    assert planned["action"] == "refuse", (planned["action"], planned["reason"])


def test_restore_into_existing_naming_the_original_table_bypasses_the_detached_partition_refusal(
        pg, s3, conn, schema, bucket, tmp_path):
    """A declaratively partitioned table with a DEFAULT partition, retention ``detach``: 2024-03-10 is archived and
    pruned, so t_20240310 is detached and still holds the day's 24 rows (what detach means). ``restore --into
    original`` refuses the day, as the README says ("a partition that exists but is detached ... may still hold the
    day and is refused with the ATTACH to run"). The same restore spelled ``--into existing --target <schema>.t``
    (the archived table itself, which the restore otherwise treats as the original: same lock) loads the 24 rows
    through the parent into the DEFAULT partition and succeeds. The day's rows now exist twice (the detached
    partition and the table), and the ATTACH the refusal recommends can never run again (the DEFAULT partition
    holds rows of its range). Naming the archived table as an ``existing`` target should meet the same refusal."""
    _day_partitions(conn, schema, default=True)
    env = _env(pg, s3, bucket, tmp_path, schema, partitioning={"mode": "declarative"}, action="detach")
    day, span = ["--day", DAY.isoformat()], ["--from", DAY.isoformat(), "--to", DAY.isoformat()]
    assert _cli(env, "archive", *day)[0] == 0
    assert [d["status"] for d in _cli(env, "prune", *span)[1]["days"]] == ["removed"]
    code, original = _cli(env, "restore", "--into", "original", *day)
    assert code == 1 and "not attached" in original["error"]  # refused, with the ATTACH to run
    code, existing = _cli(env, "restore", "--into", "existing", "--target", f"{schema}.t", *day)
    where = conn.execute(sql.SQL("SELECT tableoid::regclass::text, count(*) FROM {} GROUP BY 1 ORDER BY 1").format(
        sql.Identifier(schema, "t_default"))).fetchall()
    assert code != 0, f"restored into the table while its detached partition holds the day: {existing['days']}, {where}"


def test_prune_refuses_for_ever_a_dropped_day_whose_partition_was_created_again_empty(
        pg, s3, conn, schema, bucket, tmp_path):
    """Retention ``drop``: 2024-03-10 (24 rows) is archived and pruned (its partition dropped). Later its partition is
    created again, empty (a partition-maintenance job that creates missing partitions, or a DBA; the README names
    "a re-created child"). ``prune --dry-run`` now says ``would remove`` 24 rows; ``prune`` refuses the day, exit 1:
    "its rows changed since they were archived and proven (0 rows now, 24 archived); archive the day again
    (--overwrite), then remove it". That remedy cannot work: ``archive --overwrite`` finds no data for the day (and
    an archive run of a removed day with no rows is refused by design), so every prune fails again, for ever.
    Nothing of the day is in the source: the removal should call the day already removed (or drop the empty
    partition again), and the dry run should agree with the run. ``lifecycle._relation_back`` takes the empty
    re-created partition for a restored day, then the in-transaction re-check refuses 0 rows against 24."""
    _day_partitions(conn, schema)
    env = _env(pg, s3, bucket, tmp_path, schema, partitioning={"mode": "declarative"}, action="drop")
    day, span = ["--day", DAY.isoformat()], ["--from", DAY.isoformat(), "--to", DAY.isoformat()]
    assert _cli(env, "archive", *day)[0] == 0
    assert [d["status"] for d in _cli(env, "prune", *span)[1]["days"]] == ["removed"]
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.t_20240310 PARTITION OF {}.t FOR VALUES FROM ('2024-03-10 00:00+00') "
                         "TO ('2024-03-11 00:00+00')").format(s, s))
    dry = _cli(env, "prune", "--dry-run", *span)[1]["days"]
    code, first = _cli(env, "prune", *span)
    remedy = _cli(env, "archive", "--overwrite", *day)[1]["days"]  # what the refusal says to do
    code_again, again = _cli(env, "prune", *span)
    assert code_again == 0, (f"prune --dry-run: {[(d['status'], d.get('rows')) for d in dry]}; prune: exit {code}, "
                             f"{first['days']}; archive --overwrite as told: {[d['status'] for d in remedy]}; "
                             f"prune again: exit {code_again}, {[d['status'] for d in again['days']]}")
