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
