"""Hunt 9 (oj): a hostile review of the last hour's fixes (archives under a former format or key, the removal
asset's archive_key, hold_day's pending-detach filter, restore's locks and proofs, needs_overwrite)."""

from __future__ import annotations

import datetime as dt
import json

from dagster import instance_for_test
from psycopg import sql

from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.conftest import utc_today
from archive_pipeline_tests.test_hunt4_tt import _failures
from archive_pipeline_tests.helpers import run_check_evaluations


def _manifest_keys(s3_client, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])
                  if o["Key"].endswith(".manifest.json"))


def test_the_removal_asset_settles_a_pending_mark_left_on_an_archive_under_the_former_format(
        conn, schema, archive_env, s3_client):
    """A day (40 days ago) is archived through Dagster as jsonl. The user later sets ``format: csv`` and adds
    ``retention: {keep_days: 30, action: delete}``; the removal asset now finds the day's archive under the former
    format's key (``lifecycle.archive_key``). A removal of the day is interrupted after it marked that manifest
    'pending' (its transaction rolled back; the source still holds the rows). The next removal run (the schedule's
    ``Remove_<schema>_events``) reads the pending mark there and settles it with ``settle_pending_removal``, which
    looks only at the key the configuration renders now (the csv key, empty): "none", no manifest; the run then
    fails "... has no archive at s3://.../<day>.jsonl.zst ... Archive the day first" -- naming the very archive it
    just read, with a remedy that writes a second archive, on every run, the mark never settled (the CLI's prune,
    lifecycle.remove_day, settles it where it is). Should: the mark is taken back where it is (the removal never
    committed) and the day is proven and removed, as prune does. (Cause: retention_assets._removing calls
    settle_pending_removal(primary, spec, day, store) without the archive's key it found; settle_pending_removal
    reads keys.table_day_key only.)"""
    from archive_pipeline.core.lifecycle import _encoded

    day = utc_today() - dt.timedelta(days=40)
    create_sample_events(conn, [day], rows_per_day=3, schema=schema)
    table = {"name": f"{schema}.events", "day_column": "created_at", "start_date": day.isoformat()}
    before = parse_config({"retry": {"max_retries": 0}, "tables": [{**table, "format": "jsonl"}]})
    after = parse_config({"retry": {"max_retries": 0}, "tables": [
        {**table, "format": "csv", "retention": {"keep_days": 30, "action": "delete"}}]})
    with instance_for_test() as instance:
        assert build_definitions(before).resolve_job_def(f"Archive_{schema}_events").execute_in_process(
            instance=instance, partition_key=day.isoformat()).success
        [mkey] = _manifest_keys(s3_client, archive_env)
        manifest = json.loads(s3_client.get_object(Bucket=archive_env, Key=mkey)["Body"].read())
        manifest["removed"] = {"at": dt.datetime.now(dt.UTC).isoformat(), "action": "delete", "state": "pending",
                               "by": "dagster run x", "relation": f"{schema}.events"}  # (no xid: decided by the source)
        s3_client.put_object(Bucket=archive_env, Key=mkey, Body=_encoded(manifest))
        removal = build_definitions(after).resolve_job_def(f"Remove_{schema}_events").execute_in_process(
            instance=instance, partition_key=day.isoformat(), raise_on_error=False)
        failures = _failures(instance, removal.run_id)
    assert not any("has no archive" in f for f in failures), failures
    assert removal.success, failures
    left = conn.execute(sql.SQL("SELECT count(*) FROM {}.events WHERE created_at::date = %s").format(
        sql.Identifier(schema)), (day,)).fetchone()[0]
    assert left == 0


def test_a_days_partition_two_levels_down_left_pending_detach_is_not_archived_as_an_empty_day(
        pg, conn, schema, store, temp_dir):
    """``ev`` is partitioned by year, each year by month, each month by day (``ev`` > ``y2024`` > ``m03`` >
    ``d10``), all RANGE on ``at``. An operator's ``ALTER TABLE m03 DETACH PARTITION d10 CONCURRENTLY`` is
    interrupted: d10, holding 2024-03-10's 24 rows, is left pending detach, so ``ev`` no longer reads them. The
    archive of 2024-03-10 used to refuse this ("d10 is pending detach ... ev no longer reads its rows", retried);
    since the filter by the day's partitions it archives the day as empty: 0 rows, a green partition whose
    archive holds none of the day's rows (a later removal would find nothing to keep). Should: refused as
    before, as a partition of the day is pending detach. (Cause: hold_day's ``day_partitions`` are the top-level
    children whose range overlaps the day (``day_children``: y2024); a pending partition counts only where it or
    its direct parent is one of them -- d10's parent is m03, a level below.)"""
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline_tests.test_mends import _interrupted_detach

    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz) PARTITION BY RANGE (at)").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.y2024 PARTITION OF {}.ev FOR VALUES FROM ('2024-01-01 00:00+00') TO "
                         "('2025-01-01 00:00+00') PARTITION BY RANGE (at)").format(s, s))
    conn.execute(sql.SQL("CREATE TABLE {}.m03 PARTITION OF {}.y2024 FOR VALUES FROM ('2024-03-01 00:00+00') TO "
                         "('2024-04-01 00:00+00') PARTITION BY RANGE (at)").format(s, s))
    for d in (10, 11):
        conn.execute(sql.SQL("CREATE TABLE {}.{} PARTITION OF {}.m03 FOR VALUES FROM ({}) TO ({})").format(
            s, sql.Identifier(f"d{d}"), s, sql.Literal(f"2024-03-{d:02d} 00:00+00"),
            sql.Literal(f"2024-03-{d + 1:02d} 00:00+00")))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, '2024-03-10 00:30+00'::timestamptz + g * interval '1 hour' "
                         "FROM generate_series(0, 30) g").format(s))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date="2024-03-01", format="jsonl",
                     compression="none", partitioning={"mode": "declarative"})
    _interrupted_detach(pg, conn, f"{schema}.m03", f"{schema}.d10")
    try:
        result = archive_partition(conn, spec, dt.date(2024, 3, 10), store, temp_dir=temp_dir)
    except ArchiveError as exc:
        assert "pending detach" in str(exc), str(exc)
        return
    raise AssertionError(f"2024-03-10 archived with {result.rows} rows while d10 (its 24 rows) is pending detach")


def test_the_removal_asset_records_a_failed_proof_for_a_days_damaged_manifest_not_a_raw_exception(
        conn, schema, archive_env, s3_client):
    """A day (40 days ago) is archived through Dagster; its table has ``retention: {keep_days: 30, action:
    delete}``. Its manifest is then damaged in the bucket (a broken write by a tool, a bit rot: not JSON, the same
    bytes at every read). The removal schedule runs the day. It used to prove the day and record the failed proof:
    ``archive_proven`` failed ("manifest ... unreadable"), the step failed "stays in the source: its archive is not
    proven ... archive the day again" -- the README's promise for a damaged archive. Now the run dies before
    proving anything, on a bare ``ManifestError`` with a Python stack trace and no ``archive_proven`` result: the
    new lookup of where the archive is (``lifecycle.archive_key``, called first, outside the try that turns a
    damaged or newer manifest into a failed proof or a named failure) raises it. Should: the failed proof is
    recorded and the failure says what to do, as before. (Cause: retention_assets._removing calls
    archive_key -> decoded_manifest before its ``try``; a NewerManifestError or a store error escapes the same way.)"""
    day = utc_today() - dt.timedelta(days=40)
    create_sample_events(conn, [day], rows_per_day=3, schema=schema)
    table = {"name": f"{schema}.events", "day_column": "created_at", "start_date": day.isoformat(),
             "retention": {"keep_days": 30, "action": "delete"}}
    config = parse_config({"retry": {"max_retries": 0}, "tables": [table]})

    with instance_for_test() as instance:
        definitions = build_definitions(config)
        assert definitions.resolve_job_def(f"Archive_{schema}_events").execute_in_process(
            instance=instance, partition_key=day.isoformat()).success
        [mkey] = _manifest_keys(s3_client, archive_env)
        s3_client.put_object(Bucket=archive_env, Key=mkey, Body=b"{ this is no manifest")
        removal = definitions.resolve_job_def(f"Remove_{schema}_events").execute_in_process(
            instance=instance, partition_key=day.isoformat(), raise_on_error=False)
        failures = _failures(instance, removal.run_id)
        proofs = [e for e in run_check_evaluations(instance, removal.run_id) if e.check_name == "archive_proven"]
    assert not removal.success
    assert [p.passed for p in proofs] == [False], (proofs, failures)
    assert any("stays in the source" in f for f in failures), failures


def test_a_naming_mode_day_restored_with_skip_is_not_proven_before_a_deferred_trigger_rewrites_it(
        conn, schema, store, temp_dir):
    """A naming-mode table ``log`` (day tables ``log_YYYYMMDD``, no day column). The user restores 2024-03-10 with
    ``on_conflict='skip'`` into ``all_logs (id PRIMARY KEY, note)``, an existing table holding other days, which has a
    DEFERRABLE INITIALLY DEFERRED constraint trigger ``AFTER INSERT ... FOR EACH ROW`` rewriting the inserted row
    (``UPDATE all_logs SET note = upper(note)``). The fix fires deferred triggers before the proof (SET CONSTRAINTS
    ALL IMMEDIATE) for the 'fail' load, but the 'skip' load of a day without a day column proves first
    (_insert_contained: every archived row is in the target as archived) and fires them after (_fire_deferred):
    the restore reports the day proven and commits rows whose note is not the archive's. Should: the proof sees the
    rows as they will be committed, so the restore is rolled back, ``all_logs`` as it was. (Cause: restore._load's
    skip branch calls _insert_contained, which proves right after the INSERT; restore_archive's _fire_deferred
    runs after _load returns.)"""
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.restore import restore_day

    day = dt.date(2024, 3, 10)
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.log (id int, note text)").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.log_20240310 () INHERITS ({}.log)").format(s, s))
    conn.execute(sql.SQL("INSERT INTO {}.log_20240310 SELECT g, 'note ' || g FROM generate_series(1, 10) g").format(s))
    spec = TableSpec(name=f"{schema}.log", start_date=day, format="csv", compression="none",
                     partitioning={"mode": "naming", "pattern": "log_%Y%m%d"})
    archive_partition(conn, spec, day, store, temp_dir=temp_dir)
    expected = conn.execute(sql.SQL("SELECT id, note FROM {}.log_20240310 ORDER BY id").format(s)).fetchall()
    conn.execute(sql.SQL("CREATE TABLE {}.all_logs (id int PRIMARY KEY, note text)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.all_logs VALUES (100, 'an older day')").format(s))
    conn.execute(sql.SQL("CREATE FUNCTION {}.shout() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                         "UPDATE {}.all_logs SET note = upper(note) WHERE id = NEW.id; RETURN NULL; END $$"
                         ).format(s, s))
    conn.execute(sql.SQL("CREATE CONSTRAINT TRIGGER shout AFTER INSERT ON {}.all_logs DEFERRABLE INITIALLY DEFERRED "
                         "FOR EACH ROW EXECUTE FUNCTION {}.shout()").format(s, s))
    try:
        result = restore_day(conn, store, spec, day, into="existing", target=f"{schema}.all_logs",
                             on_conflict="skip", temp_dir=temp_dir)
    except ArchiveError:
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}.all_logs").format(s)).fetchone()[0] == 1
        return
    held = conn.execute(sql.SQL("SELECT id, note FROM {}.all_logs WHERE id < 100 ORDER BY id").format(s)).fetchall()
    assert held == expected, result.check


def test_two_restores_of_one_day_into_the_archived_table_and_its_parent_do_not_both_load_it(pg, conn, schema, store):
    """``s.legacy`` (a table the configuration archives by ``created_at``) is a partition of ``s.allev`` (it holds
    2024). 2024-03-10 is archived, then deleted from it. Two people restore the day at once: one into the archived
    table (``restore --into existing --target s.legacy``), the other into its parent (``--target s.allev``), whose
    rows land in s.legacy too. The fix made two restores into a table and its partition take one lock, the tree's
    root -- except where one of them names the archived table: that one takes the table's own lock
    ("s.legacy"), the other "restore into s.allev". Neither waits for the other; each proves only its own
    uncommitted rows, and both commit: s.legacy holds the day twice, both reported proven. Should: the second
    waits for the first (then finds the day there) and the day is held once. (Cause: restore_archive's lock_name
    is the table's name for a target in ``original`` and ``restore into <_tree_root>`` for any other, so one tree
    is locked under two names.) (The test holds both restores between their proof and their COMMIT: both targets
    carry the restore mark of an earlier restore, so each writes the mark after its proof (COMMENT ON TABLE, SHARE
    UPDATE EXCLUSIVE), which the test's lock holds up.)"""
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.restore import _RESTORE_MARK, restore_day
    from archive_pipeline_tests.test_race_hunt import in_thread, wait_until

    day = dt.date(2024, 3, 10)
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.allev (id int, created_at timestamptz NOT NULL, v text) "
                         "PARTITION BY RANGE (created_at)").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.legacy PARTITION OF {}.allev FOR VALUES FROM ('2024-01-01+00') TO "
                         "('2025-01-01+00')").format(s, s))
    conn.execute(sql.SQL("INSERT INTO {}.allev SELECT g, '2024-03-10 00:00+00'::timestamptz + g * interval '1 min', "
                         "'v' || g FROM generate_series(1, 50) g").format(s))
    spec = TableSpec(name=f"{schema}.legacy", day_column="created_at", start_date=day, format="csv",
                     compression="none")
    archive_partition(conn, spec, day, store)
    conn.execute(sql.SQL("DELETE FROM {}.legacy").format(s))
    mark = _RESTORE_MARK.format(table=spec.name) + " 2024-03-01"
    for name in ("allev", "legacy"):
        conn.execute(sql.SQL("COMMENT ON TABLE {}.{} IS {}").format(s, sql.Identifier(name), sql.Literal(mark)))

    def held() -> int:
        return conn.execute(sql.SQL("SELECT count(*) FROM {}.legacy").format(s)).fetchone()[0]

    def waiting(locktype: str) -> int:
        return conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = %s AND NOT granted",
                            (locktype,)).fetchone()[0]

    with pg.connect() as holder, pg.connect() as first, pg.connect() as second:
        first.autocommit = second.autocommit = True
        holder.execute("BEGIN")
        holder.execute(sql.SQL("LOCK TABLE {}.allev IN SHARE UPDATE EXCLUSIVE MODE").format(s))  # (and legacy)
        t1, o1 = in_thread(lambda: restore_day(first, store, spec, day, into="existing", target=f"{schema}.legacy",
                                               on_conflict="fail"))
        assert wait_until(lambda: waiting("relation") == 1), o1
        t2, o2 = in_thread(lambda: restore_day(second, store, spec, day, into="existing", target=f"{schema}.allev",
                                               on_conflict="fail"))
        wait_until(lambda: waiting("relation") == 2 or waiting("advisory") == 1 or not t2.is_alive(), timeout=10)
        holder.execute("ROLLBACK")
        t1.join(60)
        t2.join(60)
    proven = [o["result"].check for o in (o1, o2) if "result" in o]
    assert held() == 50, (held(), proven, [o.get("error") for o in (o1, o2)])


def test_aws_profile_with_a_malformed_aws_config_file_is_a_config_error_at_load(tmp_path, bucket, s3):
    """The deployment sets ``AWS_PROFILE=archive`` and ``AWS_CONFIG_FILE`` to a file an edit broke (a section
    header without its closing bracket). The new load-time check of AWS_PROFILE (``_check_botocore_settings``)
    asks botocore for the available profiles, which parses the file and raises botocore's own
    ``ConfigParseError`` -- it escapes ``check_s3_settings`` (the code location's load, the command line's start)
    as a bare botocore exception with a stack trace, not the ConfigError naming the setting the check exists for.
    Should: a ConfigError naming the AWS config file (and AWS_PROFILE) to fix. (Cause:
    environment._check_botocore_settings catches nothing around ``session.available_profiles``.)"""
    from archive_pipeline.core.environment import check_s3_settings
    from archive_pipeline.core.config import ConfigError

    broken = tmp_path / "aws_config"
    broken.write_text("[profile archive\nregion = us-east-1\n")
    env = {"ARCHIVE_S3_BUCKET": bucket, "ARCHIVE_S3_ENDPOINT_URL": s3.endpoint_url, "AWS_PROFILE": "archive",
           "AWS_CONFIG_FILE": str(broken), "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    try:
        check_s3_settings(env)
    except ConfigError as exc:
        assert "AWS_CONFIG_FILE" in str(exc) or str(broken) in str(exc), str(exc)
        return
    except Exception as exc:  # noqa: BLE001
        raise AssertionError(f"{type(exc).__module__}.{type(exc).__name__}: {exc}") from None


def test_an_unchanged_day_archived_under_both_formats_once_removed_under_the_other_is_skipped_not_called_changed(
        conn, schema, store, s3_client, bucket):
    """2024-03-10 of ``events`` was archived as csv by the previous version (a v4 fingerprint). The user switched the
    table to jsonl and archived the day with overwrite (jsonl, v5 fingerprint); switched back to csv a while,
    when prune removed the day (the csv manifest marked removed); then restored the day into the original table
    (its rows are back, exactly) and set jsonl again -- the back-and-forth ``_removed_elsewhere``'s docstring names.
    Nothing changes any more; the next run of the day without overwrite fails: LateRowsError "changed since it was
    archived ... set overwrite". The run now looks for a removal under another format also where this key holds
    an archive, computes the source's fingerprint with the removed csv archive's algorithm (v4), finds it equal to
    that archive's (the removed rows are back) and then compares the same v4 value with the jsonl manifest's v5
    fingerprint (``_keep``): never equal. Should: the unchanged day is skipped (the jsonl archive holds it
    exactly). (Cause: archive._Archiving.run picks the fingerprint algorithm by ``elsewhere`` first --
    ``_algorithm(elsewhere or ...)`` -- and compares the one result with both manifests; before the fix,
    _removed_elsewhere looked only where this key held nothing.)"""
    from archive_pipeline.core import fingerprint
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import TableSpec
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.manifest import decode_manifest, encode_manifest
    from archive_pipeline.core.verify import source_fingerprint

    day = dt.date(2024, 3, 10)
    create_sample_events(conn, [day], rows_per_day=40, schema=schema)
    table = {"name": f"{schema}.events", "day_column": "created_at", "start_date": day,
             "partitioning": {"mode": "declarative"}}
    as_csv, as_jsonl = TableSpec(**table, format="csv"), TableSpec(**table, format="jsonl")

    def rewrite(key: str, **changes) -> None:
        manifest = decode_manifest(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())
        manifest.update(changes)
        manifest.pop("manifest_sha256")
        s3_client.put_object(Bucket=bucket, Key=key, Body=encode_manifest(manifest))

    first = archive_partition(conn, as_csv, day, store)
    rewrite(first.manifest_key, fingerprint=str(source_fingerprint(conn, as_csv, day, fingerprint.V4)))  # (v4 era)
    second = archive_partition(conn, as_jsonl, day, store, overwrite=True)
    assert second.fingerprint.startswith(fingerprint.ALGORITHM + ":") and second.key.endswith(".jsonl.zst"), second
    rewrite(first.manifest_key, removed={"at": "2024-05-01T00:00:00+00:00", "action": "delete", "state": "done",
                                         "by": "prune", "relation": f"{schema}.events_20240310", "rows": 40})
    try:
        third = archive_partition(conn, as_jsonl, day, store)  # nothing changed: the rows are the archives' exactly
    except ArchiveError as exc:
        raise AssertionError(f"{type(exc).__name__}: {exc}") from None
    assert third.skipped, third


def test_a_deep_checked_day_skipped_under_its_former_format_is_not_checked_red(conn, schema, archive_env, s3_client):
    """A table with ``deep_check: true`` is archived through Dagster as jsonl (2024-03-10, archive_intact passed).
    The user sets ``format: csv``; a backfill runs the day again. The run now recognises the day as archived under
    the jsonl key and skips it (nothing uploaded, the materialization records the jsonl manifest) -- and then its
    deep check loads "the day's archive" from the key the configuration renders now (the csv key, empty):
    ``archive_intact`` FAILED "... has no archive at s3://.../2024-03-10.csv.zst", the day red, for an archive the
    same run just read and found to hold the day's rows exactly (before the fix the day was archived again as
    new, and the check found that). Should: the deep check proves the archive the run skipped onto (its recorded
    manifest key), and passes. (Cause: checks.verify_result calls verify.deep_verify(conn, store, spec, day)
    without the manifest or its key; deep_verify reads keys.table_day_key only.)"""
    from dagster import DagsterEventType

    day = dt.date(2024, 3, 10)
    create_sample_events(conn, [day], rows_per_day=3, schema=schema)
    table = {"name": f"{schema}.events", "day_column": "created_at", "start_date": day.isoformat(),
             "deep_check": True}
    before = parse_config({"retry": {"max_retries": 0}, "tables": [{**table, "format": "jsonl"}]})
    after = parse_config({"retry": {"max_retries": 0}, "tables": [{**table, "format": "csv"}]})
    with instance_for_test() as instance:
        assert build_definitions(before).resolve_job_def(f"Archive_{schema}_events").execute_in_process(
            instance=instance, partition_key=day.isoformat()).success
        again = build_definitions(after).resolve_job_def(f"Archive_{schema}_events").execute_in_process(
            instance=instance, partition_key=day.isoformat(), raise_on_error=False)
        failures = _failures(instance, again.run_id)
        checks = [e.event_specific_data for e in again.all_events
                  if e.event_type == DagsterEventType.ASSET_CHECK_EVALUATION
                  and e.event_specific_data.check_name == "archive_intact"]
        states = [e.event_specific_data.materialization.metadata["state"].value for e in again.all_events
                  if e.event_type == DagsterEventType.ASSET_MATERIALIZATION]
    assert [c.passed for c in checks] == [True], (states, [c.description for c in checks], failures)
    assert again.success, failures
