"""Hunt 9 (of): the configuration changes between runs (format, key_template, retention added later), seen
through the Dagster layer (jobs run in process against a test instance) and the command line, against the real
PostgreSQL and S3."""

from __future__ import annotations

import datetime as dt

from dagster import DagsterEventType, instance_for_test

from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.conftest import utc_today
from archive_pipeline_tests.test_hunt4_tt import _failures
from archive_pipeline_tests.test_hunt_cli import cli, make_env, small_table, write_config


def _keys(s3_client, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", []))


def test_prune_after_a_format_change_does_not_call_a_day_list_verify_and_compare_find_archived_unarchived(
        pg, s3, bucket, conn, schema, tmp_path, s3_client):
    """A table's day (40 days ago) is archived as jsonl. Months later the user sets ``format: csv`` and adds
    ``retention: {keep_days: 30, action: delete}``. README (retention): after a format change "``restore``,
    ``list``, ``compare`` and ``verify`` find the day's archive there when nothing is at the new key": ``list``
    shows the day ``archived`` (the .jsonl.zst key), ``verify`` says ok, ``compare`` says equal. ``prune --dry-run``
    (and ``prune``) then refuses it: "... has no archive at s3://.../<day>.csv.zst; archive it first" -- untrue
    (every other command finds the archive), and its remedy writes a second archive of the day. Cause:
    ``lifecycle.remove_day``/``check_removable`` read only ``keys.table_day_key`` (the key the configuration
    renders now), not ``manifest.under_another_format`` as list/verify/compare/restore do. Should: prune proves
    the day from the archive the other commands find (or names that archive and the format change), never
    "has no archive"."""
    day = utc_today() - dt.timedelta(days=40)
    small_table(conn, schema, days=[day], rows=5)
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": day.isoformat()}
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [{**table, "format": "jsonl"}]))
    assert cli(env, "archive", "--day", day.isoformat()).returncode == 0
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [
        {**table, "format": "csv", "retention": {"keep_days": 30, "action": "delete"}}]))
    listed = cli(env, "list", "--day", day.isoformat())
    assert listed.returncode == 0 and "archived" in listed.stdout and ".jsonl.zst" in listed.stdout, listed.stdout
    assert cli(env, "verify", "--day", day.isoformat()).returncode == 0
    pruned = cli(env, "prune", "--dry-run", "--day", day.isoformat())
    out = pruned.stdout + pruned.stderr
    assert "has no archive" not in out, out
    assert pruned.returncode == 0, out


def test_the_removal_of_a_green_day_after_a_key_template_change_does_not_say_it_has_no_archive(
        conn, schema, archive_env, s3_client):
    """A day (40 days ago) is archived through Dagster: materialized, ``archive_intact`` passed. Later the user
    moves the table to a new ``key_template`` (``{prefix}/v2/{schema}.{table}/{date}.{ext}``) and adds
    ``retention: {keep_days: 30, action: delete}``. The day is green and due, so the removal schedule requests it
    (archived days still in the source). The removal run (``Remove_<schema>_events``) fails: "... has no archive at
    s3://.../archive/v2/...; nothing is proven or removed. Archive the day first" -- about a partition the UI shows
    archived and intact; and following it writes a second archive of the day. The archive asset knows the key the
    day's last materialization recorded (``assets.former_day_keys``; the checks use it too: ``recorded_day_key``),
    but the removal asset and ``lifecycle.remove_day`` look only at the key the configuration renders now. Should:
    the removal proves and removes the day from its recorded archive (or at least names that archive and the
    key_template change), not call a green day unarchived."""
    day = utc_today() - dt.timedelta(days=40)
    create_sample_events(conn, [day], rows_per_day=3, schema=schema)
    table = {"name": f"{schema}.events", "day_column": "created_at", "start_date": day.isoformat()}
    before = parse_config({"retry": {"max_retries": 0}, "tables": [table]})
    after = parse_config({"retry": {"max_retries": 0}, "tables": [
        {**table, "key_template": "{prefix}/v2/{schema}.{table}/{date}.{ext}",
         "retention": {"keep_days": 30, "action": "delete"}}]})
    with instance_for_test() as instance:
        assert build_definitions(before).resolve_job_def(f"Archive_{schema}_events").execute_in_process(
            instance=instance, partition_key=day.isoformat()).success
        removal = build_definitions(after).resolve_job_def(f"Remove_{schema}_events").execute_in_process(
            instance=instance, partition_key=day.isoformat(), raise_on_error=False)
        failures = _failures(instance, removal.run_id)
    assert not any("has no archive" in f for f in failures), failures
    assert removal.success, failures


def test_a_dagster_run_of_an_archived_day_after_a_key_template_change_does_not_archive_it_again_as_new(
        conn, schema, archive_env, s3_client):
    """A day is archived through Dagster (materialized, intact). The user then changes the table's ``key_template``
    (``{prefix}/v2/{schema}.{table}/{date}.{ext}``); nothing in PostgreSQL changes. A backfill (or *Materialize*)
    over the table's days runs the day again without ``overwrite``. The run uploads a second, brand-new archive of
    the unchanged day at the new key (state ``archived``, generation 1) and leaves the first one where it was: two
    archives of one day, the day silently archived again as new without overwrite -- and had its rows changed
    meanwhile, the "changed since archived" refusal would have been skipped just the same. The run knows the key
    the day's last materialization recorded (``assets.former_day_keys``) but hands it to the core only for
    removal marks (``_Archiving._removed_elsewhere``). Should: the day is recognised as archived there (skipped,
    ``state: skipped``, nothing uploaded) or refused naming the former key and ``overwrite`` -- as a format change
    under a template without ``{ext}`` is refused ("set overwrite to replace it")."""
    day = dt.date(2024, 3, 10)
    create_sample_events(conn, [day], rows_per_day=3, schema=schema)
    table = {"name": f"{schema}.events", "day_column": "created_at", "start_date": day.isoformat()}
    before = parse_config({"retry": {"max_retries": 0}, "tables": [table]})
    after = parse_config({"retry": {"max_retries": 0}, "tables": [
        {**table, "key_template": "{prefix}/v2/{schema}.{table}/{date}.{ext}"}]})
    with instance_for_test() as instance:
        assert build_definitions(before).resolve_job_def(f"Archive_{schema}_events").execute_in_process(
            instance=instance, partition_key=day.isoformat()).success
        first = _keys(s3_client, archive_env)
        again = build_definitions(after).resolve_job_def(f"Archive_{schema}_events").execute_in_process(
            instance=instance, partition_key=day.isoformat(), raise_on_error=False)
        states = [e.event_specific_data.materialization.metadata["state"].value for e in again.all_events
                  if e.event_type == DagsterEventType.ASSET_MATERIALIZATION]
    assert _keys(s3_client, archive_env) == first, (states, _keys(s3_client, archive_env))


def test_archive_after_a_format_change_does_not_write_a_second_archive_of_a_day_list_shows_archived(
        pg, s3, bucket, conn, schema, tmp_path, s3_client):
    """A day is archived as jsonl with the default template (``{ext}`` after the day's name). The user sets
    ``format: csv``; nothing in PostgreSQL changes. ``list`` shows the day ``archived`` (its .jsonl.zst archive,
    found under the former format as the README promises), yet ``archive --dry-run`` plans it as "archive: not
    archived yet", and the nightly ``archive --from … --to …`` (no ``--overwrite``) writes a second archive of the
    unchanged day (.csv.zst) beside the first. With a template without ``{ext}`` the same change is refused ("holds
    this day archived as jsonl/zstd, and the table is now configured as csv/zstd; set overwrite to replace it"):
    whether a day archived before is archived again without overwrite depends on where ``{ext}`` sits. Cause: the
    archiver (``_Archiving.run``) and the plan (``_plan_day``) look under the former formats' keys only for a
    removal mark (``_removed_elsewhere``), while list/verify/compare use ``under_another_format``. Should: the day
    is recognised as archived (skipped, or refused naming the format change and ``--overwrite``), not archived
    again as new; the dry run does not call it "not archived yet"."""
    day = dt.date(2024, 3, 10)
    small_table(conn, schema, days=[day], rows=5)
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": day.isoformat()}
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [{**table, "format": "jsonl"}]))
    assert cli(env, "archive", "--day", day.isoformat()).returncode == 0
    first = _keys(s3_client, bucket)
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [{**table, "format": "csv"}]))
    listed = cli(env, "list", "--day", day.isoformat())
    assert "archived" in listed.stdout and ".jsonl.zst" in listed.stdout, listed.stdout  # (the premise)
    plan = cli(env, "archive", "--dry-run", "--day", day.isoformat())
    assert "not archived yet" not in plan.stdout, plan.stdout
    cli(env, "archive", "--day", day.isoformat())
    assert _keys(s3_client, bucket) == first, _keys(s3_client, bucket)


def test_compare_and_list_after_a_timezone_change_name_the_zone_not_rows_changed_in_the_source(
        pg, s3, bucket, conn, schema, tmp_path):
    """A daily UTC table has 2024-03-10 archived (29 rows, some late in the UTC evening). The user later sets
    ``timezone: Europe/Berlin``; no row changes. The day keeps its key and partition key (README, Periods and time
    zones), and ``archive --dry-run`` says it right: "its archive holds the daily period 2024-03-10 in UTC, and the
    table is now configured as daily in Europe/Berlin: another period with the same key". But ``compare`` says
    ``differs`` (15 source rows, 29 archive rows, no note) and ``list --check-source`` says ``changed``: "source has
    15 rows, archive 29" -- rows changed in PostgreSQL, which sends the operator hunting an edit nobody made (and
    plain ``list`` shows the day ``archived`` for the Berlin day). ``source_unchanged`` in Dagster was taught this
    (``manifest.another_period``); the command line's readers (``plan``/``verify.source_changed`` callers in
    ``cli.py``: list, compare, verify --deep) never ask. Should: both name the period change (the archive holds
    the UTC day, the table is now in Europe/Berlin), not a change of the source's rows."""
    day = dt.date(2024, 3, 10)
    small_table(conn, schema, days=[day, day + dt.timedelta(days=1)], rows=30)
    conn.execute(f"UPDATE {schema}.ev SET at = at + interval '23 hours 30 minutes' WHERE id % 2 = 0")
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": day.isoformat()}
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [table]))
    assert cli(env, "archive", "--day", day.isoformat()).returncode == 0
    env = make_env(pg, s3.endpoint_url, bucket, write_config(tmp_path, [{**table, "timezone": "Europe/Berlin"}]))
    plan = cli(env, "archive", "--dry-run", "--day", day.isoformat())
    assert "Europe/Berlin" in plan.stdout, plan.stdout  # (the premise: the archive run tells the zone change)
    compared = cli(env, "compare", "--day", day.isoformat())
    listed = cli(env, "list", "--check-source", "--day", day.isoformat())
    assert "Europe/Berlin" in compared.stdout + compared.stderr, compared.stdout
    assert "Europe/Berlin" in listed.stdout + listed.stderr, listed.stdout


def _evaluations(result, name: str) -> list:
    return [e.event_specific_data for e in result.all_events
            if e.event_type == DagsterEventType.ASSET_CHECK_EVALUATION and e.event_specific_data.check_name == name]


def test_latest_archive_intact_after_a_timezone_change_does_not_record_another_periods_archive_green(
        conn, schema, archive_env):
    """A daily UTC table has 2024-03-10 archived through Dagster (rows up to 23:00 UTC). The user sets ``timezone:
    Europe/Berlin``; the partition key stays 2024-03-10, now the Berlin day (23:00 UTC of 03-09 to 23:00 UTC of
    03-10), and the UI still shows it materialized (README). Then ``verify_archives`` runs: ``source_unchanged``
    rightly says the archive holds another period ("the daily period 2024-03-10 in UTC ... archive it again with
    overwrite for the new period"), yet ``latest_archive_intact`` re-checks the object against its record and records
    a fresh, green ``archive_intact`` for partition 2024-03-10 ("object, size and manifest match what was
    recorded"): a new green verdict for a partition whose archive does not hold its rows. Cause: ``checks.
    verify_result`` checks the manifest's owner (table, day key) but not its period (``manifest.another_period``,
    which the archive run and ``source_unchanged`` use). Should: the verdict for the day is not a pass (it names the
    period/zone change and the overwrite)."""
    day = dt.date(2024, 3, 10)
    create_sample_events(conn, [day, day + dt.timedelta(days=1)], rows_per_day=24, schema=schema)
    table = {"name": f"{schema}.events", "day_column": "created_at", "start_date": day.isoformat()}
    with instance_for_test() as instance:
        assert build_definitions(parse_config({"tables": [table]})).resolve_job_def(
            f"Archive_{schema}_events").execute_in_process(instance=instance, partition_key=day.isoformat()).success
        berlin = build_definitions(parse_config({"tables": [{**table, "timezone": "Europe/Berlin"}]}))
        result = berlin.resolve_job_def("verify_archives").execute_in_process(instance=instance, raise_on_error=False)
    [changed] = _evaluations(result, "source_unchanged")
    assert "Europe/Berlin" in changed.description, changed.description  # (the premise: the period change is known)
    intact = [(e.partition, e.passed, e.description) for e in _evaluations(result, "archive_intact")]
    assert intact and not any(passed for _, passed, _ in intact), intact


def test_source_unchanged_after_a_day_column_change_does_not_report_rows_changed_in_postgresql(
        conn, schema, archive_env):
    """``ev (id, at, loaded_at)`` is archived by ``day_column: at``; 2024-03-10 (24 rows) is materialized. The user
    later switches the table to ``day_column: loaded_at``; no row changes. An archive run of the day says it right:
    "the table's day_column is 'loaded_at' now and was 'at' when archived, so other rows are the day's (16 now, 24
    archived)" (``_Archiving._change_message``, from the manifest's ``day_column``). ``verify_archives``'
    ``source_unchanged`` instead fails with "1 of 1 archived days changed in PostgreSQL after archiving: 2024-03-10:
    the source has 16 rows for 2024-03-10 now, the archive 24", an untrue cause that sends the operator looking
    for who edited the table (``compare`` and ``list --check-source`` say the same, with no note). The check
    learnt the zone/granularity change (``another_period``) but not the day column's. Should: the check names the
    day_column change, as the archive run does."""
    day = dt.date(2024, 3, 10)
    conn.execute(f"CREATE TABLE {schema}.ev (id int, at timestamptz NOT NULL, loaded_at timestamptz NOT NULL)")
    conn.execute(f"INSERT INTO {schema}.ev SELECT g, '2024-03-10 00:00+00'::timestamptz + g * interval '1 hour', "
                 "'2024-03-10 00:00+00'::timestamptz + g * interval '90 minutes' FROM generate_series(0, 23) g")
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": day.isoformat()}
    with instance_for_test() as instance:
        assert build_definitions(parse_config({"tables": [table]})).resolve_job_def(
            f"Archive_{schema}_ev").execute_in_process(instance=instance, partition_key=day.isoformat()).success
        moved = build_definitions(parse_config({"tables": [{**table, "day_column": "loaded_at"}]}))
        result = moved.resolve_job_def("verify_archives").execute_in_process(instance=instance, raise_on_error=False)
    [changed] = _evaluations(result, "source_unchanged")
    assert "loaded_at" in changed.description, changed.description
