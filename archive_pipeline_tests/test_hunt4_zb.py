"""Hunt zb: archiving from a hot standby, with the primary as scratch and as the place of writes."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from archive_pipeline.local.local_stack import LocalPostgres, create_sample_events, start_postgres, start_replica, wait_for_replay
from archive_pipeline_tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
DAYS = [dt.date(2024, 3, 10), dt.date(2024, 3, 11), dt.date(2024, 3, 12)]


@pytest.fixture(scope="module")
def primary() -> Iterator[LocalPostgres]:
    server = start_postgres({"autovacuum": "off"})
    with server.connect() as conn:
        create_sample_events(conn, DAYS, 200)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def replica(primary: LocalPostgres) -> Iterator[LocalPostgres]:
    server = start_replica(primary)
    yield server
    server.stop()


def env_for(primary, replica, s3, bucket, tmp_path, **table) -> dict[str, str]:
    import os
    config = tmp_path / "tables.yaml"
    spec = {"name": "public.events", "day_column": "created_at", "start_date": DAYS[0].isoformat(), **table}
    config.write_text(yaml.safe_dump({"tables": [spec]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIVE_", "AWS_"))}
    env.update(PYTHONPATH=str(ROOT), ARCHIVE_PIPELINE_CONFIG=str(config), ARCHIVE_PG_DSN=replica.dsn,
               ARCHIVE_PG_PRIMARY_DSN=primary.dsn,
               ARCHIVE_S3_BUCKET=bucket, ARCHIVE_S3_PREFIX="archive", ARCHIVE_S3_ENDPOINT_URL=s3.endpoint_url,
               ARCHIVE_S3_ACCESS_KEY_ID="testing", ARCHIVE_S3_SECRET_ACCESS_KEY="testing", COLUMNS="200")
    return env


def cli(env, *args, process: bool = False):
    # in this process (helpers.run_cli: a second of interpreter start-up and imports saved per call); process=True: a
    # real `python -m` process, for what only one shows (signals, start-up, rlimits)
    return run_cli(args, env, cwd=ROOT, timeout=120, process=process or None)


def test_verify_deep_on_a_standby_without_a_primary_does_not_tell_to_mend_an_intact_archive(primary, replica, s3,
                                                                                             bucket, tmp_path):
    """An operator whose ARCHIVE_PG_DSN is a hot standby (archiving from it works) runs `archive-pipeline verify
    --deep --day D --json` without ARCHIVE_PG_PRIMARY_DSN. The proof cannot run there (a standby allows no
    temporary tables) and the day is rightly reported "not checked (not retryable): ... set ARCHIVE_PG_PRIMARY_DSN
    ...". But its remedy is the one for a damaged archive: "archive it again: archive ... --overwrite (a new
    generation; the damaged one is kept ...)" or "restore the object or its manifest from a backup of the bucket"
    -- for an intact archive nothing was checked of. Following it writes a needless generation or restores over
    a good manifest. A day not checked should be told what its error says (set the primary, verify again).
    Cause: cli.verify's per-day results call `_verify_remedy(spec.name, day)` without the problem (only the
    manifest-read path passes it), so the "not checked" branch of _verify_remedy is never taken there."""
    env = env_for(primary, replica, s3, bucket, tmp_path)
    with primary.connect() as p:
        p.execute("DROP TABLE IF EXISTS events CASCADE")
        create_sample_events(p, DAYS, 200)
    wait_for_replay(primary, replica)
    done = cli(env, "archive", "--day", DAYS[0].isoformat())
    assert done.returncode == 0, done.stdout + done.stderr
    del env["ARCHIVE_PG_PRIMARY_DSN"]
    done = cli(env, "verify", "--deep", "--day", DAYS[0].isoformat(), "--json")
    day = json.loads(done.stdout)["days"][0]
    assert day["problems"][0].startswith("not checked"), day  # the proof could not run: nothing is known wrong
    assert "--overwrite" not in day.get("remedy", "") and "backup" not in day.get("remedy", ""), day


def _removal_defs():
    from archive_pipeline import definitions
    from archive_pipeline.core.config import parse_config

    return definitions.build_definitions(parse_config({"retry": {"max_retries": 1, "delay_seconds": 0}, "tables": [{
        "name": "public.events", "day_column": "created_at", "start_date": DAYS[0].isoformat(),
        "partitioning": {"mode": "declarative"}, "retention": {"keep_days": 30, "action": "drop"}}]}))


def _failures(run) -> list[str]:
    out = []
    for event in run.all_events:
        if event.event_type_value == "STEP_FAILURE":
            data = event.step_failure_data
            out.append(str(data.user_failure_data.description if data.user_failure_data else data.error))
    return out


def test_removal_asset_on_a_standby_without_a_primary_refuses_before_writing_there(primary, replica, s3, bucket,
                                                                                  store, temp_dir, monkeypatch):
    """A code location whose ARCHIVE_PG_DSN is a hot standby (archiving from it works) and no
    ARCHIVE_PG_PRIMARY_DSN materializes the retention asset of a due, archived day. `archive-pipeline prune`
    in the same setting refuses at once: "removing ... must run on the primary, and this connection is a hot
    standby: set ARCHIVE_PG_PRIMARY_DSN". The asset instead passes the standby itself as the proof's scratch
    (``scratch_conn=primary if standby``, primary being the same standby session), which bypasses
    deep_verify's own standby guard, and runs CREATE TEMPORARY TABLE on the standby: the run fails with
    "proving ... failed: ... cannot execute CREATE TABLE in a read-only transaction" and the remedy "ALTER ROLE
    postgres RESET default_transaction_read_only", a setting that is not the cause. It should refuse before any
    write, as prune does (retention_assets._removing: check_removable/_require_primary before the proof, or no
    scratch when the primary is the source)."""
    from dagster import instance_for_test

    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.config import TableSpec

    with primary.connect() as p:
        p.execute("DROP TABLE IF EXISTS events CASCADE")
        create_sample_events(p, DAYS, 200)
    wait_for_replay(primary, replica)
    with replica.connect() as r:
        archive_partition(r, TableSpec(name="public.events", day_column="created_at", start_date=DAYS[0]), DAYS[0],
                          store, temp_dir=str(temp_dir))
    monkeypatch.setenv("ARCHIVE_PG_DSN", replica.dsn)
    monkeypatch.delenv("ARCHIVE_PG_PRIMARY_DSN", raising=False)
    monkeypatch.setenv("ARCHIVE_S3_BUCKET", bucket)
    monkeypatch.setenv("ARCHIVE_S3_ENDPOINT_URL", s3.endpoint_url)
    monkeypatch.setenv("ARCHIVE_S3_PREFIX", store.prefix)
    with instance_for_test() as instance:
        run = _removal_defs().resolve_job_def("Remove_public_events").execute_in_process(
            partition_key=DAYS[0].isoformat(), instance=instance, raise_on_error=False)
    assert not run.success
    text = _failures(run)[-1]
    assert "hot standby" in text and "ARCHIVE_PG_PRIMARY_DSN" in text, text
    assert "CREATE" not in text and "default_transaction_read_only" not in text, text  # nothing tried on the standby
