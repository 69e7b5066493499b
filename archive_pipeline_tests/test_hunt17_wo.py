"""Hunt 17 (wo): review of the fresh manifest-validation fix (f8dba71, bdd89c3: _times_problem, _archiver_problem,
_columns_problem, _definition_problem, object.uri and columns[].pg_type required, store._stored_empty): manifests
archive_pipeline writes that it now refuses, and forged fields the new checks still let through to a crash or a
green verdict. Each test fails on the current code and passes once the bug it names is fixed."""

from __future__ import annotations

import datetime as dt
import json

from dagster import instance_for_test

from archive_pipeline.core import keys
from archive_pipeline.core.manifest import encode_manifest
from archive_pipeline.definitions import build_definitions
from archive_pipeline.defs.assets import asset_key, job_name
from archive_pipeline_tests.helpers import download, run_materializations
from archive_pipeline_tests.test_hunt16_vd import DAYS, _naming_days


def _step_failures(instance, run_id: str) -> list[str]:
    """Each failed step's whole error: its description, message and causes (a retry's "Exceeded max_retries"
    wraps the step's own error)."""
    said = []
    for e in instance.all_logs(run_id):
        if e.is_dagster_event and e.dagster_event.is_step_failure:
            data = e.dagster_event.step_failure_data
            said.append(" ".join(filter(None, [data.user_failure_data.description if data.user_failure_data
                                               else None, data.error.to_string() if data.error else None])))
    return said


def _reseal(s3_client, bucket: str, manifest_key: str, edit) -> None:
    """Edit the stored manifest by hand and seal it again (anyone can: the checksum covers only its content)."""
    manifest = json.loads(download(s3_client, bucket, manifest_key))
    edit(manifest)
    manifest.pop("manifest_sha256", None)
    s3_client.put_object(Bucket=bucket, Key=manifest_key, Body=encode_manifest(manifest))


def test_a_skip_in_dagster_of_a_manifest_whose_snapshot_time_has_no_zone_does_not_crash_with_a_checkerror(
        conn, schema, archive_env, store, s3_client, bucket):
    """Scenario: a day archived by Dagster, whose manifest was then resealed by a migration script that wrote
    source.snapshot_at as a local time without its offset ("2024-03-13T09:00:00", what datetime.now().isoformat()
    or many tools write). The fresh _times_problem accepts it: datetime.fromisoformat parses it (as a naive time).
    The next Dagster run of the unchanged day reaches the skip; materialization_metadata builds
    MetadataValue.timestamp(result.snapshot_at) from that naive datetime, and Dagster's check fails the step with
    "CheckError: Failure condition: Datetime values provided to MetadataValue.timestamp must have timezones": a
    crash naming no table, day, manifest or field, on every run of the day (the command line's skip of the same
    manifest succeeds).

    Expected: either the manifest is refused where it is read ("its field source.snapshot_at is ..., a time
    without its offset"), the run failing with a typed error naming the field; or the naive time is read as UTC
    and the skip succeeds. Never a CheckError. Fix idea: _times_problem requires an aware time
    (fromisoformat(value).tzinfo is not None) for snapshot_at and archived_at, or _skipped reads a naive time
    as UTC."""
    config, spec = _naming_days(conn, schema)
    defs = build_definitions(config, check_source=False)
    job = defs.resolve_job_def(job_name(spec))
    day = DAYS[0].isoformat()
    mkey = keys.manifest_key(keys.table_day_key(spec, spec.period(DAYS[0]), store.prefix))
    with instance_for_test() as instance:
        assert job.execute_in_process(instance=instance, partition_key=day).success
        _reseal(s3_client, bucket, mkey, lambda m: m["source"].update(snapshot_at="2024-03-13T09:00:00"))
        result = job.execute_in_process(instance=instance, partition_key=day, raise_on_error=False)
        failures = _step_failures(instance, result.run_id)
        recorded = [m for m in run_materializations(instance, result.run_id) if m.asset_key == asset_key(spec)]
    assert not any("CheckError" in f or "must have timezones" in f for f in failures), failures
    assert (result.success and recorded) or any("snapshot_at" in f for f in failures), failures


def _v1(manifest: dict) -> dict:
    """``manifest`` as the first release wrote it (manifest_version 1: no checksum, fingerprint, table definition,
    generation or empty days; see build_manifest at 2a2210a)."""
    return {"manifest_version": 1, "table": manifest["table"], "day": manifest["day"],
            "day_column": manifest["day_column"], "rows": manifest["rows"], "object": manifest["object"],
            "uncompressed_bytes": manifest["uncompressed_bytes"], "format": manifest["format"],
            "compression": manifest["compression"],
            "columns": [{k: c[k] for k in ("name", "pg_type", "output_type", "nullable")} for c in manifest["columns"]],
            "source": {"server_version": manifest["source"]["server_version"],
                       "snapshot_at": manifest["source"]["snapshot_at"]},
            "archiver": {"name": "archive_pipeline", "version": "0.1.0"}}


def test_a_version_1_manifest_without_a_columns_pg_type_is_refused_naming_it_not_restored_into_a_keyerror(
        pg, conn, schema, s3, bucket, store, s3_client, tmp_path):
    """Scenario: a day archived by the first release (manifest_version 1: no checksum, no table_definition), whose
    manifest was edited by hand since (a script that dropped a column's "pg_type", as a tidy-up of "redundant"
    fields). bdd89c3 made columns[].pg_type required "because a proof or restore without a definition reads it" --
    but a version 1 manifest is exactly the one without a definition, and decode_manifest returns a version 1
    manifest before _shape_problem looks at anything (only its object's type is checked).

    Now: `restore --into new` fails with "an unexpected error (KeyError: 'pg_type'); nothing was restored; to fix:
    read the message": no manifest, field or remedy named (list, verify and compare show the same day ok/equal).

    Expected: a version 1 manifest whose fields are not as every version 1 writer wrote them (columns[].pg_type,
    object.uri, ...) is refused as unreadable where it is read, naming the field (here: "its field
    columns['id'].pg_type is None, not a string"), as a sealed one is; restore fails with that typed error.
    Fix idea: run _shape_problem (the fields every version wrote: table, day, rows, format, compression,
    columns[].name/pg_type, object.key/uri/bytes/md5, source.snapshot_at) on version 1 manifests too."""
    from archive_pipeline_tests.test_hunt17_wk import _archived, _run

    table, _, result = _archived(conn, schema, store)
    old = _v1(json.loads(download(s3_client, bucket, result.manifest_key)))
    del old["columns"][0]["pg_type"]
    s3_client.put_object(Bucket=bucket, Key=result.manifest_key, Body=json.dumps(old, indent=2).encode())
    done, out = _run(pg, s3, bucket, tmp_path, table, "restore", "--into", "new", "--target", f"{schema}.back")
    assert "unexpected error" not in out and "KeyError" not in out, out
    assert done.exit_code != 0 and "pg_type" in out, out


def test_a_table_definition_typing_a_column_otherwise_than_columns_records_does_not_let_the_day_go_unrestorable(
        conn, schema, store, s3_client, bucket):
    """Scenario: a sealed manifest edited by hand and resealed whose table_definition types ``amount`` as ``text``
    while columns[] records it as ``numeric(12,2)`` (what it was archived as: every archive_pipeline writer builds
    both from the same columns, with the same type_name). f8dba71's _definition_problem checks that the definition
    names exactly the recorded columns and types each by a string, not that the types are the recorded ones -- the
    same contradiction for which it refuses a definition lacking a column ("the removal's proof ... let the day go"
    while a restore into a new table, built from the definition, does something else).

    Now: decode_manifest accepts it; the removal (retention drop) proves the day (its rows read back as text hash
    as the numbers did) and drops its partition, so the archive is the day's only copy; `restore --into new` then
    creates ``amount text`` from the definition, loads the rows and reports its fingerprint equal to the
    manifest's: a green restore of a table whose column is not of the archived type (sums, comparisons and
    ordering of amount are now text's).

    Expected: such a manifest is refused where it is read ("its table definition types 'amount' as 'text', its
    columns[] as 'numeric(12,2)'"): the removal refuses naming the manifest and field, nothing is dropped. (Or, at
    the least, a day that was let go restores into a new table with its columns of the archived types.) Fix idea:
    in _definition_problem compare each definition column's type with columns[].pg_type (and not_null with
    not nullable)."""
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline.core.restore import restore_day
    from archive_pipeline_tests.test_hunt17_wk import DAY, _archived

    _, spec, result = _archived(conn, schema, store, retention={"keep_days": 1, "action": "drop"})

    def retype(manifest):
        [column] = [c for c in manifest["table_definition"]["columns"] if c["name"] == "amount"]
        column["type"] = "text"

    _reseal(s3_client, bucket, result.manifest_key, retype)
    try:
        remove_day(conn, spec, spec.period(DAY), store)
    except ArchiveError as exc:  # refused: the day stays in the source
        assert "table_definition" in str(exc) or "table definition" in str(exc), str(exc)
        return
    assert not conn.execute(f"SELECT count(*) FROM {schema}.events WHERE created_at::date = %s",
                            (DAY,)).fetchone()[0], "premise: the day was let go"
    try:
        restored = restore_day(conn, store, spec, DAY, into="new", target=f"{schema}.back")
    except ArchiveError as exc:
        raise AssertionError(f"the day was let go, and its only copy does not restore: {exc}") from None
    assert restored.rows == result.rows
    assert conn.execute(f"SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = "
                        f"'{schema}.back'::regclass AND attname = 'amount'").fetchone()[0] == "numeric(12,2)"


def test_a_pending_removal_mark_whose_xid_is_no_number_is_refused_naming_it_not_a_typeerror(
        pg, conn, schema, s3, bucket, store, s3_client, tmp_path):
    """Scenario: a removed day's manifest edited by hand and resealed whose pending removal mark records its
    transaction as ``"xid": ["1234"]`` (a script that collected ids into a list; every writer records a string of
    digits, str(txid_current())). _optional_shape_problem types the mark's state, at, action and relation, and
    f8dba71 added the times of snapshot_at and archived_at, but nothing looks at xid (nor its system, nor rows).

    Now: `prune` settles the pending mark: lifecycle._committed calls _transaction_status, whose int(xid) raises
    TypeError, which its ``except (psycopg.Error, ValueError)`` does not catch: "an unexpected error (TypeError:
    int() argument must be ... not 'list')" with no manifest or field named.

    Expected: the manifest is refused where it is read ("its removal mark's field xid is ['1234'], not a
    transaction id"), prune reporting the day as not removed naming the manifest and field (or the mark settled
    by the source, as one without an xid is). Never a TypeError. Fix idea: type xid (a string of digits or an
    int) and system (a string) in _optional_shape_problem's mark check; catch TypeError beside ValueError."""
    from archive_pipeline_tests.test_hunt17_wk import _archived, _run

    table, spec, result = _archived(conn, schema, store)
    table = {**table, "retention": {"keep_days": 1, "action": "drop"}}
    system = str(conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])
    mark = {"at": dt.datetime.now(dt.UTC).isoformat(), "action": "drop", "state": "pending", "by": "prune",
            "relation": f"{schema}.events_20240310", "xid": ["1234"], "system": system}
    _reseal(s3_client, bucket, result.manifest_key, lambda m: m.update(removed=mark))
    done, out = _run(pg, s3, bucket, tmp_path, table, "prune")
    assert "unexpected error" not in out and "TypeError" not in out, out


def test_the_retention_asset_over_a_day_whose_removal_time_has_no_zone_does_not_crash_with_a_checkerror(
        conn, schema, archive_env, store, s3_client, bucket):
    """Scenario: a legacy one-table-per-day table (naming mode, retention drop). A day was archived and let go
    (its table dropped, the manifest marked removed: done). The manifest was then resealed by a migration script
    that wrote the removal mark's ``at`` as a local time without its offset ("2024-04-20T09:00:00"). The fresh
    _times_problem checks snapshot_at and archived_at as ISO times; the mark's ``at`` is only typed a string
    (and a naive time is accepted where it is checked at all).

    Now: the Dagster retention asset (Remove_<table>) for that day finds it already removed and reports when:
    lifecycle._parse_time reads the naive time, and MetadataValue.timestamp(removal.removed_at) fails the step
    with "CheckError: Failure condition: Datetime values provided to MetadataValue.timestamp must have
    timezones": a crash naming no table, day or field, on every run of the day (a mark's ``at`` that is no time
    at all, "yesterday", is reported "before", fine).

    Expected: the day is reported removed (the naive time read as UTC, or "before"), or the manifest is refused
    where it is read naming the mark's field; never a CheckError. Fix idea: _times_problem checks the removal
    mark's at (and settled_at) as aware ISO times, or _parse_time returns None / UTC for a naive time."""
    from archive_pipeline.core.archive import archive_partition
    from archive_pipeline.core.lifecycle import remove_day
    from archive_pipeline.defs.retention_assets import removal_job_name

    config, spec = _naming_days(conn, schema)
    result = archive_partition(conn, spec, DAYS[0], store)
    remove_day(conn, spec, spec.period(DAYS[0]), store)
    _reseal(s3_client, bucket, result.manifest_key, lambda m: m["removed"].update(at="2024-04-20T09:00:00"))
    job = build_definitions(config, check_source=False).resolve_job_def(removal_job_name(spec))
    with instance_for_test() as instance:
        run = job.execute_in_process(instance=instance, partition_key=DAYS[0].isoformat(), raise_on_error=False)
        failures = _step_failures(instance, run.run_id)
    assert not any("CheckError" in f or "must have timezones" in f for f in failures), failures
    assert run.success or any("removed.at" in f or "removal mark" in f for f in failures), failures


def test_a_manifest_whose_column_names_meet_once_cut_to_63_bytes_is_refused_not_sent_to_the_server(
        pg, conn, schema, s3, bucket, store, s3_client, tmp_path):
    """Scenario: a sealed manifest edited by hand and resealed whose columns[] (and table definition) rename two
    columns to 71-character names sharing their first 63 characters ("xxx...x1", "xxx...x2"). f8dba71's
    _columns_problem refuses a column named twice, because "every restore, proof and removal builds its SQL from
    these names (a DuplicateColumn there read as 'the server rejected the archiver's SQL ... report it')" -- but
    it compares the names as Python strings, and PostgreSQL keeps 63 bytes of a name: no table of any database
    can have a 71-character column, and these two are one name to the server.

    Now: `verify --deep` (and `prune --dry-run`, the removal's proof) fail with "the server rejected the
    archiver's SQL (DuplicateColumn SQLSTATE 42701: column "xxx..." specified more than once); ... to fix: check
    the table definition; if it looks right, report it with this message": the archiver blamed, the manifest not
    named. (restore already refuses such a name, saying PostgreSQL keeps 63 bytes of it.)

    Expected: such a manifest is refused where it is read, naming the column ("its columns name 'xxx...' twice
    once cut to 63 bytes" / "a column name longer than PostgreSQL keeps"): verify --deep reports the day's
    manifest unreadable, never "the server rejected the archiver's SQL". Fix idea: in _columns_problem compare
    the names cut to 63 bytes in the source's encoding (manifest source.encoding, UTF-8 where unrecorded), or
    refuse a name longer than 63 bytes there."""
    from archive_pipeline_tests.test_hunt17_wk import _archived, _run

    table, _, result = _archived(conn, schema, store)
    names = {"event_type": "x" * 70 + "1", "payload": "x" * 70 + "2"}

    def rename(manifest):
        for column in manifest["columns"] + manifest["table_definition"]["columns"]:
            column["name"] = names.get(column["name"], column["name"])

    _reseal(s3_client, bucket, result.manifest_key, rename)
    done, out = _run(pg, s3, bucket, tmp_path, table, "verify", "--deep")
    assert done.exit_code != 0, out
    assert "rejected the archiver's SQL" not in out and "report it" not in out, out
