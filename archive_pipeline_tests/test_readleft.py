"""Leftovers of the read-back side: a manifest of another table-day at a day's key (a hand copy, two
configurations sharing a key) met by prune, settling, verify and the asset checks; manifests of a newer
version, or sealed with a field missing; the source comparison's database errors; core messages in the
words of each caller. Real PostgreSQL and S3."""

from __future__ import annotations

import datetime as dt
import os

import pytest
from dagster import DagsterEventType, instance_for_test
from psycopg import sql

from archive_pipeline.core import keys
from archive_pipeline.core.archive import ForeignArchiveError, archive_partition
from archive_pipeline.core.config import TableSpec, parse_config
from archive_pipeline.core.errors import ArchiveError
from archive_pipeline.core.lifecycle import RemovalRefused, remove_day, settle_pending_removal
from archive_pipeline.core.manifest import decode_manifest, encode_manifest
from archive_pipeline.core.verify import deep_verify, load_manifest, source_changed
from archive_pipeline.defs.checks import verify_result
from archive_pipeline.definitions import build_definitions
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.test_dagster import job_name
from archive_pipeline_tests.helpers import run_check_evaluations

DAY = dt.date(2024, 3, 10)
NEXT = dt.date(2024, 3, 11)


def _ev(conn, schema: str, name: str = "ev") -> None:
    """``<schema>.<name> (id int, at timestamptz, v text)`` with the same three rows of DAY in every copy."""
    table = sql.Identifier(schema, name)
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at timestamptz, v text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2024-03-10 01:00+00', 'a'), (2, '2024-03-10 02:00+00', 'b'), "
                         "(3, '2024-03-10 03:00+00', NULL), (4, '2024-03-11 01:00+00', 'next')").format(table))


def _spec(schema: str, name: str = "ev", **extra) -> TableSpec:
    return TableSpec(name=f"{schema}.{name}", day_column="at", start_date=DAY, format="csv", compression="zstd",
                     partitioning={"mode": "column"}, retention={"keep_days": 1, "action": "delete"}, **extra)


def _manifest_key(store, spec: TableSpec, day: dt.date) -> str:
    return keys.manifest_key(keys.table_day_key(spec, spec.period(day), store.prefix))


def _raw(s3_client, bucket: str, key: str) -> bytes:
    return s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()


def _count(conn, schema: str, name: str = "ev") -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))).fetchone()[0]


@pytest.fixture
def twin(conn, schema):
    """A second schema holding a copy of the first's table (a staging clone, another tenant)."""
    name = f"{schema}_twin"
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    yield name
    conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


# ---- a manifest of another table-day ----------------------------------------------------------------

def test_prune_refuses_a_day_whose_key_holds_another_tables_archive_of_the_same_rows(conn, schema, twin, store,
                                                                                      temp_dir, s3_client, bucket):
    """Two configurations sharing a bucket prefix, each archiving a table ``ev`` of its own schema with a key
    template without {schema}: the twin's day renders the first table's key. Was: prune of the twin's day
    proved the first table's archive against the twin's rows (equal: a clone), deleted the twin's rows and
    marked the first table's manifest 'removed' for the twin's relation, so the only copy of the twin's rows
    was an archive another configuration owns (and may overwrite or remove). Now the day stays, refused with
    the manifest's real owner, and the manifest is left as it is."""
    template = "{prefix}/{table}/{date}.{ext}"
    first, second = _spec(schema, key_template=template), _spec(twin, key_template=template)
    _ev(conn, schema)
    _ev(conn, twin)
    archive_partition(conn, first, DAY, store, temp_dir=temp_dir)
    key = _manifest_key(store, first, DAY)
    assert key == _manifest_key(store, second, DAY)
    before = _raw(s3_client, bucket, key)
    for dry_run in (True, False):
        with pytest.raises(RemovalRefused) as refused:
            remove_day(conn, second, DAY, store, dry_run=dry_run)
        message = str(refused.value)
        assert f"{twin}.ev 2024-03-10 stays in the source" in message, message
        assert f"it is the manifest of table '{schema}.ev' for 2024-03-10, not of '{twin}.ev'" in message, message
        assert "key_template" in message and refused.value.day == "2024-03-10"
    assert _count(conn, twin) == 4 and _raw(s3_client, bucket, key) == before


def test_another_table_days_pending_removal_mark_is_never_settled_by_this_one(conn, schema, store, temp_dir,
                                                                               s3_client, bucket):
    """A manifest with a pending removal mark, copied by hand from 2024-03-10's key to 2024-03-11's. Was:
    archiving 2024-03-11 (and settling its removal) settled that mark first against 2024-03-11's rows (the
    source still has them: "not removed") and rewrote the copy without it, before noticing it was another
    day's archive. Now both refuse it as another day's and write nothing."""
    spec = _spec(schema)
    _ev(conn, schema)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    manifest = decode_manifest(_raw(s3_client, bucket, _manifest_key(store, spec, DAY)))
    manifest["removed"] = {"at": "2024-04-01T00:00:00+00:00", "action": "delete", "state": "pending", "by": "x",
                           "relation": f"{schema}.ev"}
    marked = encode_manifest({k: v for k, v in manifest.items() if k != "manifest_sha256"})
    copy = _manifest_key(store, spec, NEXT)
    s3_client.put_object(Bucket=bucket, Key=copy, Body=marked)
    with pytest.raises(RemovalRefused, match="it is the manifest of table .* for 2024-03-10, not of .* for 2024-03-11"):
        settle_pending_removal(conn, spec, NEXT, store)
    with pytest.raises(ForeignArchiveError) as refused:  # and says how to mend a copy (was: "key_template")
        archive_partition(conn, spec, NEXT, store, temp_dir=temp_dir)
    assert "for 2024-03-10, not of" in str(refused.value) and "delete the copy" in str(refused.value)
    assert _raw(s3_client, bucket, copy) == marked


def test_verify_and_the_deep_check_refuse_another_tables_manifest_of_identical_bytes(conn, schema, twin, store,
                                                                                      temp_dir, s3_client, bucket):
    """The twin's day was archived; then the first table's manifest was copied over the twin's (a hand
    "repair"). Both archives hold the same bytes, so size, MD5 and row count agree with what the twin's run
    recorded. Was: latest_archive_intact (verify_result) and the deep check (deep_verify) passed, proving
    the twin's day by an archive another table owns. Now both name the manifest's real owner."""
    first, second = _spec(schema), _spec(twin)
    _ev(conn, schema)
    _ev(conn, twin)
    archived = archive_partition(conn, first, DAY, store, temp_dir=temp_dir)
    recorded = archive_partition(conn, second, DAY, store, temp_dir=temp_dir)
    assert (archived.md5, archived.rows) == (recorded.md5, recorded.rows)  # the same bytes
    s3_client.copy_object(Bucket=bucket, Key=_manifest_key(store, second, DAY),
                          CopySource={"Bucket": bucket, "Key": _manifest_key(store, first, DAY)})
    expected = {"bytes": recorded.bytes, "md5": recorded.md5, "rows": recorded.rows, "format": "csv",
                "compression": "zstd", "fingerprint": recorded.fingerprint}
    owner = f"it is the manifest of table '{schema}.ev' for 2024-03-10, not of '{twin}.ev'"
    for verdict in (verify_result(store, second, second.period(DAY), expected, deep=True),
                    verify_result(store, second, second.period(DAY), expected, deep=False, conn=conn)):
        assert not verdict.passed and owner in verdict.description, verdict.description
    (problem,) = deep_verify(conn, store, second, DAY)
    assert owner in problem and "key_template" in problem
    with pytest.raises(ValueError, match="not of"):
        load_manifest(store, keys.table_day_key(second, second.period(DAY), store.prefix), (twin + ".ev", "2024-03-10"))


def test_a_manifest_of_a_newer_version_is_not_called_damaged_nor_to_be_archived_again(conn, schema, store, temp_dir,
                                                                                       s3_client, bucket):
    """A manifest written by a newer archive_pipeline (manifest_version 5: the code location was upgraded,
    the command line not yet). Was: "unknown manifest_version 4", and prune's and restore's remedies said to
    archive the day again (overwrite) or restore the manifest from a backup, as for a damaged one: the older
    version would replace what the newer one wrote, and archiving replaced it (its dry run planned to). Now
    they name the version that wrote it and say to upgrade, and archiving leaves it as it is."""
    from archive_pipeline.core.plan import day_statuses, plan_archive
    from archive_pipeline.core.restore import RestoreError, restore_day

    spec = _spec(schema)
    _ev(conn, schema)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    key = _manifest_key(store, spec, DAY)
    manifest = decode_manifest(_raw(s3_client, bucket, key))
    newer = {**manifest, "manifest_version": 5, "archiver": {"name": "archive_pipeline", "version": "9.0.0"}}
    s3_client.put_object(Bucket=bucket, Key=key, Body=encode_manifest(
        {k: v for k, v in newer.items() if k != "manifest_sha256"}))
    said = "written by a newer archive_pipeline (9.0.0, manifest_version 5)"
    with pytest.raises(RemovalRefused) as refused:
        remove_day(conn, spec, DAY, store, dry_run=True)
    with pytest.raises(RestoreError) as restored:
        restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    (status,) = day_statuses(conn, spec, store, [DAY])
    stored = _raw(s3_client, bucket, key)
    with pytest.raises(ArchiveError) as archived:  # was: archived again, replacing what the newer version wrote
        archive_partition(conn, spec, DAY, store, temp_dir=temp_dir, overwrite=True)
    (planned,) = plan_archive(conn, spec, store, [DAY], overwrite=True)
    assert planned.action == "refuse" and _raw(s3_client, bucket, key) == stored
    for text in (str(refused.value), str(restored.value), status.note, str(archived.value), planned.reason):
        assert said in text and "upgrade archive_pipeline" in text and "archive the day again" not in text, text
    assert archived.value.day == "2024-03-10" and not archived.value.retryable


@pytest.mark.parametrize(("field", "value", "said"), [("columns", None, "its field columns is None, not a list"),
                                                    ("rows", "3", "its field rows is '3', not an integer")])
def test_a_sealed_manifest_with_a_field_missing_or_mistyped_is_unreadable_not_a_crash(conn, schema, store, temp_dir,
                                                                                     s3_client, bucket, field, value,
                                                                                     said):
    """A manifest whose checksum matches but whose fields are not what readers index (resealed after a hand
    edit, a writer's bug). Was: restore and the proof failed with a bare KeyError/TypeError naming neither
    table, day nor manifest. Now every reader calls it unreadable and says which field."""
    from archive_pipeline.core.restore import RestoreError, restore_day

    spec = _spec(schema)
    _ev(conn, schema)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    key = _manifest_key(store, spec, DAY)
    manifest = {k: v for k, v in decode_manifest(_raw(s3_client, bucket, key)).items() if k != "manifest_sha256"}
    manifest.pop(field) if value is None else manifest.update({field: value})
    s3_client.put_object(Bucket=bucket, Key=key, Body=encode_manifest(manifest))
    (problem,) = deep_verify(conn, store, spec, DAY)
    with pytest.raises(RestoreError) as restored:
        restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back", temp_dir=temp_dir)
    assert said in problem and said in str(restored.value) and restored.value.day == "2024-03-10", problem


# ---- the source comparison's database errors ----------------------------------------------------------

@pytest.fixture
def reader(pg, conn):
    """A role that may log in and nothing more (no SELECT on the archived tables)."""
    name = f"readleft_{os.getpid()}"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    yield name
    conn.execute(sql.SQL("DROP OWNED BY {}; DROP ROLE {}").format(sql.Identifier(name), sql.Identifier(name)))


def test_a_database_error_of_the_source_comparison_names_table_day_cause_and_remedy(pg, conn, schema, store,
                                                                                    temp_dir, reader):
    """source_changed (the source_unchanged check's comparison) let the driver's error through: the check said
    "could not check the archive: LockNotAvailable: ..." with the remedy for an unreachable store, never
    retried, for a lock held by a migration, a privilege refused or a lost session alike. Now each is an
    ArchiveError naming table, day, cause and remedy, retryable where a retry can help."""
    spec = _spec(schema)
    _ev(conn, schema)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    manifest = load_manifest(store, keys.table_day_key(spec, spec.period(DAY), store.prefix))
    with pg.connect() as locker, pg.connect() as waiting:
        waiting.execute("SET lock_timeout = '100ms'")
        with locker.transaction():
            locker.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema, "ev")))
            with pytest.raises(ArchiveError) as locked:
                source_changed(waiting, spec, DAY, manifest)
    with pg.connect(user=reader) as refused, pytest.raises(ArchiveError) as denied:
        source_changed(refused, spec, DAY, manifest)
    with pg.connect() as lost:
        conn.execute("SELECT pg_terminate_backend(%s, 30000)", (lost.info.backend_pid,))
        with pytest.raises(ArchiveError) as terminated:
            source_changed(lost, spec, DAY, manifest)
    for error, cause, retryable, remedy in ((locked, "failed: lock_timeout", True, "pg_blocking_pids"),
                                            (denied, "may not SELECT", False, f'GRANT SELECT ON "{schema}"."ev" TO'),
                                            (terminated, "failed: the session's backend was terminated", True, "")):
        text = str(error.value)
        assert text.startswith((f"comparing {schema}.ev for 2024-03-10 failed: ", f"{schema}.ev 2024-03-10: ")), text
        assert cause in text and remedy in text and error.value.retryable is retryable, text
        assert (error.value.table, error.value.day) == (f"{schema}.ev", "2024-03-10")


# ---- the same through Dagster -------------------------------------------------------------------------

def _failures(run) -> list[str]:
    return [e.step_failure_data.user_failure_data.description for e in run.all_events
            if e.event_type == DagsterEventType.STEP_FAILURE]


def test_the_on_demand_checks_refuse_a_copied_manifest_and_say_why_a_comparison_failed(pg, conn, schema, store,
                                                                                      s3_client, bucket, temp_dir,
                                                                                      archive_env):
    """verify_archives after 2024-03-11's manifest was copied to 2024-03-10's key: latest_archive_intact said
    "manifest md5 ... recorded ..." and source_unchanged "changed in PostgreSQL after archiving" with the run
    config to archive the day again (which refuses another day's archive). Both now say whose manifest it is.
    Then with the day's partition locked: source_unchanged failed "could not check the archive:
    LockNotAvailable", told to check the store's settings and was never retried; now it names the
    lock_timeout and its remedy, and the tables' retry policy tries it again."""
    create_sample_events(conn, [DAY, NEXT], rows_per_day=20, schema=schema)
    defs = build_definitions(parse_config({"retry": {"max_retries": 1, "delay_seconds": 0},
                                           "source": {"lock_timeout_ms": 100},
                                           "tables": [{"name": f"{schema}.events", "day_column": "created_at",
                                                       "start_date": DAY.isoformat()}]}))
    spec = TableSpec(name=f"{schema}.events", day_column="created_at", start_date=DAY)
    with instance_for_test() as instance:
        assert defs.resolve_job_def(job_name(schema)).execute_in_process(partition_key=DAY.isoformat(),
                                                                         instance=instance).success
        archive_partition(conn, spec, NEXT, store, temp_dir=temp_dir)
        own = _raw(s3_client, bucket, _manifest_key(store, spec, DAY))
        s3_client.copy_object(Bucket=bucket, Key=_manifest_key(store, spec, DAY),
                              CopySource={"Bucket": bucket, "Key": _manifest_key(store, spec, NEXT)})
        verify = defs.resolve_job_def("verify_archives")
        run = verify.execute_in_process(instance=instance, raise_on_error=False)
        checks = {e.check_name: e for e in run_check_evaluations(instance, run.run_id)}
        owner = f"it is the manifest of table '{schema}.events' for 2024-03-11, not of '{schema}.events' for 2024-03-10"
        latest, unchanged = checks["latest_archive_intact"], checks["source_unchanged"]
        assert not latest.passed and owner in latest.description, latest.description
        assert not unchanged.passed and owner in unchanged.description, unchanged.description
        assert "changed in PostgreSQL" not in unchanged.description
        assert unchanged.metadata["untrusted_days"].value == ["2024-03-10"]
        s3_client.put_object(Bucket=bucket, Key=_manifest_key(store, spec, DAY), Body=own)  # its own again
        with pg.connect() as locker, locker.transaction():
            locker.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                sql.Identifier(schema, "events_20240310")))
            run = verify.execute_in_process(instance=instance, raise_on_error=False)
    assert DagsterEventType.STEP_UP_FOR_RETRY in [e.event_type for e in run.all_events]
    failure = _failures(run)[-1]
    # (table and day named once: the comparison's own error names them, test_hunt6_self)
    assert failure.startswith(f"could not check the archive: comparing {schema}.events "
                              "for 2024-03-10 failed: lock_timeout"), failure
    assert "What to do: " in failure and "pg_blocking_pids" in failure and "ARCHIVE_S3_BUCKET" not in failure


# ---- core messages in the caller's words -------------------------------------------------------------

def _cli(monkeypatch, tmp_path, schema: str, *args: str):
    """The command line in this process (a subprocess costs a second of imports), with one table ``ev``."""
    from click.testing import CliRunner

    from archive_pipeline.cli import main

    config = tmp_path / "tables.yaml"
    config.write_text(f"tables:\n  - {{name: {schema}.ev, day_column: at, start_date: '2024-03-10', format: csv, "
                      "compression: zstd, partitioning: {mode: column}}\n")
    monkeypatch.setenv("ARCHIVE_PIPELINE_CONFIG", str(config))
    return CliRunner().invoke(main, list(args))


def test_the_command_line_names_the_options_a_core_message_names_as_options(conn, schema, store, temp_dir,
                                                                           monkeypatch, tmp_path, archive_env):
    """The core's messages name its arguments as a Python caller writes them, and the command line printed
    them so: `restore --into existing` of a missing table said "restore with into='new'", `archive --dry-run`
    of a changed day "set overwrite", and the restore's remedies said both "(into='new', --into new)" to
    every caller. Now a Python caller reads into='new', the command line --into new and --overwrite, in its
    text and JSON output alike."""
    from archive_pipeline.core.restore import RestoreError, restore_day

    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv", compression="zstd",
                     partitioning={"mode": "column"})
    _ev(conn, schema)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    with pytest.raises(RestoreError) as python:
        restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.missing")
    assert "restore with into='new'" in str(python.value) and "--into" not in str(python.value)
    done = _cli(monkeypatch, tmp_path, schema, "restore", "--day", "2024-03-10", "--into", "existing",
                "--target", f"{schema}.missing")
    # exit 2: a target that is not there is a usage error (README, exit codes)
    assert done.exit_code == 2 and "restore with --into new" in done.stderr and "into='" not in done.stderr, done.stderr
    conn.execute(sql.SQL("UPDATE {} SET v = 'changed' WHERE id = 1").format(sql.Identifier(schema, "ev")))
    for json_args in ((), ("--json",)):
        done = _cli(monkeypatch, tmp_path, schema, "archive", "--dry-run", "--day", "2024-03-10", *json_args)
        assert done.exit_code == 0 and "add --overwrite to archive the day again" in done.stdout, done.stdout
        assert "set overwrite" not in done.stdout
