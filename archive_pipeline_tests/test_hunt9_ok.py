"""Hunt 9 (ok): what a Dagster operator sees after this session's changes (a day archived under the table's former
format or key_template, needs_overwrite from the error, retries), through Dagster's own APIs in process against
the real PostgreSQL and S3."""

from __future__ import annotations

import datetime as dt

from dagster import DagsterEventType, instance_for_test

from archive_pipeline.core.config import parse_config
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.assets import op_name
from archive_pipeline_tests.test_hunt4_tt import _failures

DAY = dt.date(2024, 3, 10)


def _keys(s3_client, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", []))


def _job(table: dict, name: str):
    return build_definitions(parse_config({"retry": {"max_retries": 0}, "tables": [table]})).resolve_job_def(name)


def test_the_ui_advice_for_a_strict_tables_inexact_archive_works_once_followed(conn, schema, archive_env, s3_client):
    """A JSONL day whose json value holds a line break was archived through Dagster; the user then makes the table
    ``strict: true``. The next run of the day fails: the core says "records column 'v' ... as not exact in jsonl ...;
    archive the day again as csv or parquet with overwrite", and the UI's "What to do" says "Choose another format
    for table ... (jsonl keeps every type as PostgreSQL prints it), or change the column's type" -- it recommends
    jsonl, the very format the column is inexact in, and names no overwrite. The user follows it: ``format: csv``,
    launch the partition again. It fails exactly as before: since this session a run finds the day's archive under
    the table's former format (``_Archiving._archived_elsewhere``) and ``_keep`` refuses that inexact jsonl archive
    again (before, the csv key was new and the day was archived exactly). Cause: ``assets.remedy`` answers every
    UnsupportedTypeError with the "choose another format" advice (meant for a column the format cannot hold), and
    the error carries neither a remedy of its own nor needs_overwrite. Should: the advice the UI gives for the day
    works when followed (another format with the overwrite run config, or the new format's archive written)."""
    conn.execute(f"CREATE TABLE {schema}.ev (id int PRIMARY KEY, at date, v json)")
    conn.execute(f"INSERT INTO {schema}.ev VALUES (1, %s, %s)", (DAY, '{"a":\n1}'))
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": str(DAY), "format": "jsonl",
             "compression": "none"}
    name = f"Archive_{schema}_ev"
    with instance_for_test() as instance:
        assert _job(table, name).execute_in_process(instance=instance, partition_key=str(DAY)).success
        strict = _job({**table, "strict": True}, name).execute_in_process(
            instance=instance, partition_key=str(DAY), raise_on_error=False)
        [failed] = _failures(instance, strict.run_id)
        assert "not exact in jsonl" in failed, failed  # (the premise)
        advice = failed.split("What to do:", 1)[1]
        assert "jsonl keeps every type" not in advice, advice  # the column is the one jsonl does not keep
        config = None
        if "overwrite" in advice:  # as the advice says: another format, archived again with overwrite
            op = op_name(parse_config({"tables": [table]}).tables[0])
            config = {"ops": {op: {"config": {"overwrite": True}}}}
        again = _job({**table, "strict": True, "format": "csv"}, name).execute_in_process(
            instance=instance, partition_key=str(DAY), raise_on_error=False, run_config=config)
        failures = _failures(instance, again.run_id)
    assert again.success, (advice, failures)
    assert any(k.endswith("2024-03-10.csv") for k in _keys(s3_client, archive_env)), _keys(s3_client, archive_env)


def test_a_day_whose_manifest_key_holds_an_oversized_object_is_not_retried_as_another_runs_write(
        conn, schema, archive_env, s3_client):
    """A day is archived through Dagster; then something writes a 17 MiB object at the day's manifest key (a bad
    copy job, anyone with write access). The day's next run (the schedule, a backfill; with retries on) reads
    it as "larger than any manifest: not read" -- a damaged manifest, which a run replaces by a new generation
    (a small damaged manifest is, and that run succeeds). Here every attempt fails instead with "...manifest.json
    was written by another run meanwhile (PreconditionFailed) ... retried automatically", no other run exists,
    and Dagster retries the step, each attempt failing the same way: a retry that cannot succeed, behind an
    untrue cause. Cause: ``store.get_verified_bytes`` answers an oversized object with the OVERSIZED sentinel,
    ``read_existing`` keeps that sentinel as ``Existing.raw``, and the commit's If-Match is the ETag of those
    sentinel bytes (``_put_manifest(replacing=existing.raw)`` -> ``store.etag_of``), which never matches the
    stored object. Should: the run replaces the damaged manifest as it does any other, or refuses the day once
    (not retried) saying what is at the key and what to do -- never "another run" and never a retry loop."""
    from archive_pipeline.local.local_stack import create_sample_events

    create_sample_events(conn, [DAY], rows_per_day=3, schema=schema)
    table = {"name": f"{schema}.events", "day_column": "created_at", "start_date": DAY.isoformat()}
    config = parse_config({"retry": {"max_retries": 1, "delay_seconds": 0}, "tables": [table]})
    job = build_definitions(config).resolve_job_def(f"Archive_{schema}_events")
    with instance_for_test() as instance:
        assert job.execute_in_process(instance=instance, partition_key=DAY.isoformat()).success
        [manifest] = [k for k in _keys(s3_client, archive_env) if k.endswith(".manifest.json")]
        s3_client.put_object(Bucket=archive_env, Key=manifest, Body=b"{" + b" " * (17 * 1024 * 1024) + b"}")
        again = job.execute_in_process(instance=instance, partition_key=DAY.isoformat(), raise_on_error=False)
        failures = _failures(instance, again.run_id)
        retries = [e for e in again.all_events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY]
    assert not any("another run" in f for f in failures), failures
    assert again.success or not retries, (len(retries), failures)


def test_a_key_template_that_keeps_a_new_zones_periods_apart_as_advised_lets_the_day_be_archived(
        conn, schema, archive_env, s3_client):
    """A daily UTC table has 2024-03-10 archived through Dagster (24 rows, one an hour). The user sets ``timezone:
    Europe/Berlin``; the next run of the day is refused, rightly: "its archive holds the daily period 2024-03-10 in
    UTC ... another period with the same key; set overwrite to replace it, or give the table a key_template
    (another prefix, say) that keeps the new periods apart from the old". The user takes the second way, to keep
    the UTC archives as they are: ``key_template: {prefix}/berlin/{schema}.{table}/{date}.{ext}``, and launches the
    day again. It fails: "... 2024-03-10 changed since it was archived to s3://.../2024-03-10.jsonl.zst: it has 23
    rows now, the archive holds 24 (rows arrived or were deleted late); set overwrite ..." -- no row changed, and
    the advice just followed does not work. Cause: since this session the run looks for the day under the key its
    last materialization recorded (``assets.former_day_keys`` -> ``_Archiving._archived_elsewhere``) and holds the
    Berlin day's rows against that UTC period's archive in ``_keep``, which never asks ``another_period`` (only
    ``_refuse_foreign`` does, for the rendered key). Should: an archive of another period at a former key is not
    the day's archive: the day is archived at the new key, as the advice promises (and nothing says late rows)."""
    from archive_pipeline.local.local_stack import create_sample_events

    create_sample_events(conn, [DAY, DAY + dt.timedelta(days=1)], rows_per_day=24, schema=schema)
    table = {"name": f"{schema}.events", "day_column": "created_at", "start_date": DAY.isoformat()}
    name = f"Archive_{schema}_events"
    berlin = {**table, "timezone": "Europe/Berlin"}
    with instance_for_test() as instance:
        assert _job(table, name).execute_in_process(instance=instance, partition_key=DAY.isoformat()).success
        refused = _job(berlin, name).execute_in_process(instance=instance, partition_key=DAY.isoformat(),
                                                        raise_on_error=False)
        [said] = _failures(instance, refused.run_id)
        assert "give the table a key_template" in said, said  # (the premise: the advice)
        apart = {**berlin, "key_template": "{prefix}/berlin/{schema}.{table}/{date}.{ext}"}
        again = _job(apart, name).execute_in_process(instance=instance, partition_key=DAY.isoformat(),
                                                     raise_on_error=False)
        failures = _failures(instance, again.run_id)
    assert not any("rows arrived or were deleted late" in f for f in failures), failures
    assert again.success, failures
    assert any("/berlin/" in k for k in _keys(s3_client, archive_env)), _keys(s3_client, archive_env)


def test_the_first_month_of_a_table_moved_from_daily_to_monthly_is_not_refused_as_changed(
        conn, schema, archive_env, s3_client):
    """A daily table has 2024-03-01 archived through Dagster (24 rows) at the daily default key
    ``.../2024/03/2024-03-01.jsonl.zst``. The user sets ``granularity: monthly``; the monthly default template puts
    March at ``.../2024/2024-03.jsonl.zst``, a key nothing is at, and the month's partition key is ``2024-03-01``
    (README: "a monthly one's first month key is its first day's"). Launching March fails: "... 2024-03-01 changed
    since it was archived to s3://.../2024/03/2024-03-01.jsonl.zst: it has 48 rows now, the archive holds 24 (rows
    arrived or were deleted late); set overwrite" -- nothing changed in PostgreSQL; the archive named is the old
    daily period's, at another key. Cause: the day's last materialization (partition ``2024-03-01``, the daily one)
    hands its key to the run as a former key (``assets.former_day_keys``), ``_Archiving._archived_elsewhere``
    accepts that manifest (same table, same ``day`` text) and ``_keep`` compares the month's rows with the day's,
    never asking ``another_period``. Should: the month is archived at its own key, nothing being there (an archive of
    another period at a former key is not the month's; README: a refusal only where the keys are the same)."""
    from archive_pipeline.local.local_stack import create_sample_events

    first = dt.date(2024, 3, 1)
    create_sample_events(conn, [first, first + dt.timedelta(days=1)], rows_per_day=24, schema=schema)
    table = {"name": f"{schema}.events", "day_column": "created_at", "start_date": first.isoformat()}
    name = f"Archive_{schema}_events"
    with instance_for_test() as instance:
        assert _job(table, name).execute_in_process(instance=instance, partition_key=first.isoformat()).success
        month = _job({**table, "granularity": "monthly"}, name).execute_in_process(
            instance=instance, partition_key=first.isoformat(), raise_on_error=False)
        failures = _failures(instance, month.run_id)
    assert not any("rows arrived or were deleted late" in f for f in failures), failures
    assert month.success, failures


def test_a_day_archived_empty_under_the_former_format_is_refused_naming_the_archive_that_exists(
        conn, schema, archive_env, s3_client):
    """2024-03-10 of ``ev`` had no rows when it was archived through Dagster as jsonl (an empty day: a manifest
    alone, ``.../2024-03-10.jsonl.zst.manifest.json``). The user sets ``format: csv``; then a row for that day
    arrives late. The day's next run is refused, rightly, but says "... 2024-03-10 changed since it was archived to
    s3://.../2024-03-10.csv.zst.manifest.json ...: it has 1 rows now, the archive holds 0" -- a key where nothing
    is stored; the operator who looks there (or lists it) finds no archive at all, and the archive the refusal is
    about is the jsonl one. Cause: since this session the run holds the day against its archive under the
    former format (``_Archiving._archived_elsewhere``), and ``_archive_uri`` names an empty day's archive by
    ``self.manifest_key`` -- the key the configuration renders now -- instead of the key the manifest was read
    from (the same for the refusals of another database and of a removed day there). Should: the failure names
    the archive that exists (the jsonl manifest's key)."""
    conn.execute(f"CREATE TABLE {schema}.ev (id int PRIMARY KEY, at date)")
    table = {"name": f"{schema}.ev", "day_column": "at", "start_date": str(DAY), "format": "jsonl"}
    name = f"Archive_{schema}_ev"
    with instance_for_test() as instance:
        assert _job(table, name).execute_in_process(instance=instance, partition_key=str(DAY)).success
        [stored] = _keys(s3_client, archive_env)
        conn.execute(f"INSERT INTO {schema}.ev VALUES (1, %s)", (DAY,))
        again = _job({**table, "format": "csv"}, name).execute_in_process(
            instance=instance, partition_key=str(DAY), raise_on_error=False)
        [failed] = _failures(instance, again.run_id)
    assert "changed since it was archived" in failed, failed  # (the premise: refused as changed)
    cause = failed.split("What to do:", 1)[0]
    assert stored in cause and ".csv.zst.manifest.json" not in cause, (stored, cause)
