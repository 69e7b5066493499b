"""Hunt 5 (kq): regressions and holes of the two latest product commits (a newer version's manifest met by every
reader, the Dagster checks' and removal's classification; restore's naming-mode day table and its parents).
Each test asserts the correct behaviour and fails on the current code because of a bug. Real PostgreSQL and S3
over HTTP."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import yaml
from click.testing import CliRunner
from dagster import DagsterEventType, instance_for_test
from psycopg import sql

from archive_pipeline.core.manifest import MANIFEST_VERSION
from archive_pipeline.cli import main
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec, parse_config
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.lifecycle import remove_day
from archive_pipeline.core.restore import restore_day
from archive_pipeline.definitions import build_definitions
from archive_pipeline.local.local_stack import create_sample_events

DAY = dt.date(2024, 3, 10)


def _newer(s3_client, bucket: str) -> None:
    """The day's manifest as a newer archive_pipeline writes it (manifest_version above this version's)."""
    from archive_pipeline_tests.helpers import download

    [key] = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]
             if o["Key"].endswith(".manifest.json")]
    manifest = json.loads(download(s3_client, bucket, key))
    manifest.update(manifest_version=MANIFEST_VERSION + 1, archiver={**manifest.get("archiver", {}), "version": "9.0.0"})
    s3_client.put_object(Bucket=bucket, Key=key, Body=json.dumps(manifest).encode())


def _cli_env(pg, s3, bucket: str, tmp_path, schema: str) -> dict[str, str]:
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [{"name": f"{schema}.events", "day_column": "created_at",
                                                  "start_date": DAY.isoformat()}]}))
    return {"ARCHIVE_PIPELINE_CONFIG": str(config), "ARCHIVE_PG_DSN": pg.dsn, "ARCHIVE_S3_BUCKET": bucket,
            "ARCHIVE_S3_ENDPOINT_URL": s3.endpoint_url, "ARCHIVE_S3_PREFIX": "archive", "COLUMNS": "250",
            "ARCHIVE_S3_ACCESS_KEY_ID": "testing", "ARCHIVE_S3_SECRET_ACCESS_KEY": "testing"}


def test_cli_verify_does_not_call_a_newer_versions_archive_damaged(conn, schema, pg, s3, s3_client, bucket, tmp_path):
    """The bucket is shared with a newer archive_pipeline (the code location upgraded first), which archived
    2024-03-10 again with its manifest_version above this version's. The person runs `archive-pipeline verify --day 2024-03-10`
    with this version's command line. README: such a manifest "is not damaged: every command and asset names the
    version that wrote it and says to upgrade, and archiving leaves it as it is" (the code location's
    verify_archives and the removal were made so in the last commit). The day is reported FAILED with the problem
    "... is unreadable: it was written by a newer archive_pipeline ...; to fix: upgrade", and then "to fix: ...
    archive it again: archive ... --overwrite (a new generation; the damaged one is kept ...); ... restore the
    object or its manifest from a backup of the bucket": the remedy of a damaged archive, for one nothing is wrong
    with (``plan.lookup_manifests`` turns the NewerManifestError into a ``problem`` like any damaged manifest's,
    and ``cli._verify_remedy`` gives that problem the damaged archive's remedy). Expected: the day not checked,
    its remedy the upgrade, nothing about --overwrite or a backup."""
    create_sample_events(conn, [DAY], rows_per_day=5, schema=schema)
    env = _cli_env(pg, s3, bucket, tmp_path, schema)
    done = CliRunner(env=env).invoke(main, ["archive", "--day", DAY.isoformat()])
    assert done.exit_code == 0, done.output
    _newer(s3_client, bucket)
    done = CliRunner(env=env).invoke(main, ["verify", "--day", DAY.isoformat(), "--json"])
    [day] = json.loads(done.stdout)["days"]
    remedy = day.get("remedy", "")
    assert "upgrade" in remedy, day
    assert "--overwrite" not in remedy and "backup" not in remedy and "damaged" not in remedy, day


def test_source_unchanged_does_not_fail_a_newer_versions_archive_as_untrusted(conn, schema, s3_client, archive_env):
    """The bucket is shared with a newer archive_pipeline (the command line upgraded first), which archived
    2024-03-10 again with its manifest_version above this version's. The person runs verify_archives on the code location. The last
    commit made latest_archive_intact fail to run for that day, saying to upgrade, instead of recording a failed
    verdict ("a newer version's archive unchecked, not damaged"). source_unchanged, in the same job, records a
    FAILED verdict: "not compared, 2024-03-10: its manifest cannot be trusted: it was written by a newer
    archive_pipeline ...": red, in the words of a damaged manifest, for an archive nothing is wrong with
    (``checks.build_source_unchanged_check`` catches every ``verify.ManifestError``, NewerManifestError
    included, as "cannot be trusted" and fails the check on it). Expected: no failed source_unchanged verdict
    calling the manifest untrusted: the check fails to run saying to upgrade (as latest_archive_intact now does),
    or leaves the day out as not compared without failing."""
    from archive_pipeline_tests.helpers import download

    create_sample_events(conn, [DAY], rows_per_day=5, schema=schema)
    config = parse_config({"retry": {"max_retries": 0, "delay_seconds": 0},
                           "tables": [{"name": f"{schema}.events", "day_column": "created_at",
                                       "start_date": DAY.isoformat()}]})
    with instance_for_test() as instance:
        archived = build_definitions(config).resolve_job_def(f"Archive_{schema}_events").execute_in_process(
            instance=instance, partition_key=DAY.isoformat())
        [event] = archived.get_asset_materialization_events()
        key = event.materialization.metadata["manifest_key"].value
        manifest = json.loads(download(s3_client, archive_env, key))
        manifest.update(manifest_version=MANIFEST_VERSION + 1, archiver={**manifest.get("archiver", {}), "version": "9.0.0"})
        s3_client.put_object(Bucket=archive_env, Key=key, Body=json.dumps(manifest).encode())
        result = build_definitions(config).resolve_job_def("verify_archives").execute_in_process(
            instance=instance, raise_on_error=False)
        verdicts = [r.event_log_entry.dagster_event.event_specific_data for r in instance.get_records_for_run(
            result.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION).records]
    failed = [v.description for v in verdicts if v.check_name == "source_unchanged" and not v.passed]
    assert not failed, failed


def _count(conn, schema: str, table: str) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))).fetchone()[0]


@pytest.mark.parametrize("then", ["parent_dropped", "parent_now_partitioned"])
def test_naming_restore_of_a_detached_day_table_whose_parent_is_gone_or_changed_kind(conn, schema, store, then):
    """A naming-mode table ``log`` whose day tables inherit from it, retention ``action: detach``: the removal
    proves ``log_20240310`` and detaches it (NO INHERIT; the manifest's mark says "detach"). Later ``log`` itself
    is dropped (the table retired; or migrated to declarative partitioning). The user restores the day into the
    original: refused, "exists but no longer inherits from log (detached by retention) ... attach it again (ALTER
    TABLE log_20240310 INHERIT log), or drop it and restore again": the INHERIT cannot work (``log`` is gone, or
    partitioned: "cannot inherit from partitioned table"). Following the other way out, they drop log_20240310
    and restore again: the table is created on its own with its 10 rows (right: nothing to put it under). Then the
    same restore run again (a range restore re-run after a kill, as README says is safe): refused again, the same
    impossible INHERIT, for ever. The last commit made ``_refuse_detached_day_table`` refuse "only from a recorded
    parent it would go back under (existing, of the configured table, of the same kind now)", as ``_own_parents``
    decides, but only for the race leg: a manifest whose removal mark says "detach" still refuses whatever the
    recorded parents are now. Expected: the re-run reports the day already restored (the table holds exactly the
    archived rows), as for a day table retention dropped."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.log (id int, at timestamptz NOT NULL)").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.log_20240310 () INHERITS ({}.log)").format(s, s))
    conn.execute(sql.SQL("INSERT INTO {}.log_20240310 (id, at) SELECT g, '2024-03-10 01:00+00' "
                         "FROM generate_series(1, 10) g").format(s))
    spec = TableSpec(name=f"{schema}.log", start_date=DAY, partitioning={"mode": "naming", "pattern": "log_%Y%m%d"},
                     retention={"keep_days": 1, "action": "detach"})
    archive_partition(conn, spec, DAY, store)
    assert remove_day(conn, spec, DAY, store).action == "detach"
    conn.execute(sql.SQL("DROP TABLE {}.log").format(s))
    if then == "parent_now_partitioned":
        conn.execute(sql.SQL("CREATE TABLE {}.log (id int, at timestamptz NOT NULL) PARTITION BY RANGE (at)").format(s))
    try:  # the detached table still holds the day: refused, or (its parent gone or changed) already restored
        first = restore_day(conn, store, spec, DAY, into="original")
        assert first.inserted == 0, first
    except ArchiveError as exc:
        assert "attach it again" not in str(exc), exc  # no statement naming a parent that cannot take it
    conn.execute(sql.SQL("DROP TABLE {}.log_20240310").format(s))  # its other way out: drop it, restore again
    assert restore_day(conn, store, spec, DAY, into="original").inserted == 10
    try:
        again = restore_day(conn, store, spec, DAY, into="original")
    except ArchiveError as exc:
        pytest.fail(f"the same restore run again is refused: {exc}")
    assert again.inserted == 0 and _count(conn, schema, "log_20240310") == 10
