"""Hunt 17 (wk), class: hostile or foreign bucket contents as every command reads them: manifests edited by hand
and resealed (valid JSON, a correct manifest_sha256, fields of the wrong type or contradicting each other), and
objects other tools leave at the day's keys (a zero-byte object). Each test fails on the current code and passes
once the bug it names is fixed."""

from __future__ import annotations

import datetime as dt
import json

import yaml
from click.testing import CliRunner

from archive_pipeline.cli import main
from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.manifest import encode_manifest
from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.helpers import download, forge_object

DAY = dt.date(2024, 3, 10)


def _env(pg, s3, bucket: str, tmp_path, table: dict) -> dict[str, str]:
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [table]}))
    return {"ARCHIVE_PIPELINE_CONFIG": str(config), "ARCHIVE_PG_DSN": pg.dsn, "ARCHIVE_S3_BUCKET": bucket,
            "ARCHIVE_S3_ENDPOINT_URL": s3.endpoint_url, "ARCHIVE_S3_PREFIX": "archive", "COLUMNS": "250",
            "ARCHIVE_S3_ACCESS_KEY_ID": "testing", "ARCHIVE_S3_SECRET_ACCESS_KEY": "testing"}


def _archived(conn, schema: str, store, **extra):
    """``<schema>.events`` (declarative, one partition a day, 50 rows on DAY and the day after), DAY archived."""
    create_sample_events(conn, [DAY, DAY + dt.timedelta(days=1)], rows_per_day=50, schema=schema)
    table = {"name": f"{schema}.events", "day_column": "created_at", "start_date": DAY.isoformat(),
             "partitioning": {"mode": "declarative"}, "format": "jsonl", "compression": "zstd", **extra}
    spec = TableSpec(**{**table, "start_date": DAY})
    return table, spec, archive_partition(conn, spec, DAY, store)


def _reseal(s3_client, bucket: str, manifest_key: str, edit) -> None:
    """Edit the stored manifest by hand and seal it again (anyone can: the checksum covers only its content).
    (Read as JSON, not with decode_manifest: a second edit of one manifest starts from the first, which the fixed
    decode_manifest refuses, as it should.)"""
    manifest = json.loads(download(s3_client, bucket, manifest_key))
    edit(manifest)
    manifest.pop("manifest_sha256", None)
    s3_client.put_object(Bucket=bucket, Key=manifest_key, Body=encode_manifest(manifest))


def _run(pg, s3, bucket, tmp_path, table, *args):
    done = CliRunner(env=_env(pg, s3, bucket, tmp_path, table)).invoke(main, [*args, "--day", DAY.isoformat()])
    return done, done.output or ""


def test_archive_skip_check_of_a_manifest_whose_snapshot_time_is_not_a_time(pg, conn, schema, s3, bucket, store,
                                                                           s3_client, tmp_path):
    """A manifest edited by hand and resealed whose source.snapshot_at is a string but no ISO time ("yesterday"):
    decode_manifest checks only that it is a string, so the manifest passes for trustworthy. `archive --day` of the
    unchanged day then reaches the skip (same fingerprint) and fails with "an unexpected error (ValueError: Invalid
    isoformat string: 'yesterday'); ... to fix: read the message": a crash that names no manifest, no field and no
    remedy (list, verify, compare and restore all accept the same manifest). Expected: the manifest is refused as
    untrustworthy where it is read ("its field source.snapshot_at is 'yesterday', not a time"), so the archive run
    treats it as any unreadable manifest (archives the day again, or refuses naming the manifest and the field),
    never "an unexpected error". Fix idea: _optional_shape_problem parses source.snapshot_at (and archived_at)
    with datetime.fromisoformat, as _skipped and list do."""
    table, _, result = _archived(conn, schema, store)
    _reseal(s3_client, bucket, result.manifest_key, lambda m: m["source"].update(snapshot_at="yesterday"))
    done, out = _run(pg, s3, bucket, tmp_path, table, "archive")
    assert "unexpected error" not in out and "ValueError" not in out, out
    assert done.exit_code == 0 or "snapshot_at" in out, out


def test_archive_skip_check_of_a_manifest_whose_archiver_is_not_an_object(pg, conn, schema, s3, bucket, store,
                                                                         s3_client, tmp_path):
    """A manifest edited by hand and resealed whose "archiver" (normally {"name": ..., "version": ...}) is a string:
    decode_manifest does not check its type. `archive --day` of the unchanged day reaches the skip and fails with
    "an unexpected error (AttributeError: 'str' object has no attribute 'get')": a crash naming no manifest, field
    or remedy, while list, verify, compare, prune and restore accept the same manifest. Expected: the manifest is
    refused where it is read ("its field archiver is 'x', not an object"), so the archive run treats it as any
    unreadable manifest (archives the day again, or refuses naming the manifest and the field). Fix idea: add
    ("archiver", dict) to _optional_shape_problem's typed fields (and archiver.version: a string)."""
    table, _, result = _archived(conn, schema, store)
    _reseal(s3_client, bucket, result.manifest_key, lambda m: m.update(archiver="x"))
    done, out = _run(pg, s3, bucket, tmp_path, table, "archive")
    assert "unexpected error" not in out and "AttributeError" not in out, out
    assert done.exit_code == 0 or "archiver" in out, out


def test_a_zero_byte_object_at_the_manifest_key_is_an_unreadable_manifest_not_a_network_fault(
        pg, conn, schema, s3, bucket, store, s3_client, tmp_path):
    """Another tool leaves a zero-byte object at the day's manifest key (a sync tool's placeholder, `aws s3 cp`
    of an empty file, a truncating editor): the store lists it with Size 0 and answers its GET with 200, an empty
    body and the ETag of the empty string (d41d8cd9...), which is exactly what is stored. get_verified_bytes takes
    every empty body for a proxy's fault ("what we read this way is never empty") and, three reads later, every
    command calls it transient: list and compare show the day `not-checked (retryable)`, archive, verify, restore
    and prune fail with "came back corrupted or as an error 3 times (the store answered 200 with an empty body);
    retryable; to fix: ... check the network path to the store". Retrying never helps, the Dagster run is retried
    for nothing, and the operator is sent to the network. Expected: an empty body whose ETag is the MD5 of
    nothing (and whose Content-Length says 0) is the stored object: the manifest is read as b"" and called
    unreadable ("not valid JSON", not retryable): list shows the day `unreadable`, and archive treats it as any
    unreadable manifest (archives the day again, or refuses naming the manifest), not as a network fault.
    Fix idea: in get_verified_bytes, return b"" when the body is empty, Content-Length is 0 and the ETag is
    d41d8cd98f00b204e9800998ecf8427e."""
    table, _, result = _archived(conn, schema, store)
    s3_client.put_object(Bucket=bucket, Key=result.manifest_key, Body=b"")
    done, out = _run(pg, s3, bucket, tmp_path, table, "list", "--json")
    [day] = json.loads(done.stdout)["days"]
    assert day["state"] == "unreadable", day
    done, out = _run(pg, s3, bucket, tmp_path, table, "archive")
    assert "network path" not in out and "empty body" not in out, out


def test_a_manifest_recording_a_column_twice_or_no_column_is_refused_as_a_manifest_not_as_our_sql(
        pg, conn, schema, s3, bucket, store, s3_client, tmp_path):
    """A manifest edited by hand and resealed whose columns[] names "id" twice (a merge of two manifests, a script
    that appended a column), or is empty: decode_manifest checks that each column has a name but not that the names
    are distinct, nor that there is one. restore, verify --deep and prune (--dry-run) then build their SQL from it
    and fail with "the server rejected the archiver's SQL (DuplicateColumn: column "id" specified more than once
    ...) / (SyntaxError at or near ")": INSERT INTO ... () SELECT  FROM ...); to fix: check the table
    definition; if it looks right, report it with this message": a bug report for a manifest that contradicts
    itself, and the table definition it points at is fine. (list and compare call the day archived / equal or
    differs.) Expected: the manifest is refused where it is read, as any untrustworthy manifest ("its columns
    name 'id' twice" / "it records no column", with the remedy to restore the manifest from a backup or archive
    the day again), by every command alike. Fix idea: _shape_problem refuses an empty columns list (for a day
    with an object) and duplicated names, in columns[] and in table_definition.columns[]."""
    table, _, result = _archived(conn, schema, store)
    for edit in (lambda m: m.update(columns=m["columns"] + [m["columns"][0]]), lambda m: m.update(columns=[])):
        _reseal(s3_client, bucket, result.manifest_key, edit)
        for command in (("restore", "--into", "new", "--target", f"{schema}.back"), ("verify", "--deep")):
            done, out = _run(pg, s3, bucket, tmp_path, table, *command)
            assert done.exit_code != 0, out
            assert "rejected the archiver's SQL" not in out and "report it" not in out, (command, out)
        conn.execute(f"DROP TABLE IF EXISTS {schema}.back")


def test_a_manifest_whose_table_definition_has_no_column_is_not_proof_enough_to_remove_the_day(
        pg, conn, schema, s3, bucket, store, s3_client, tmp_path):
    """A manifest edited by hand and resealed whose table_definition.columns is empty (columns[] untouched): the
    definition is what `restore --into new` creates the table from. decode_manifest accepts it (a list of objects:
    none), the removal's deep proof reads only columns[] and passes, and `prune --dry-run` says "would remove" the
    day (a real prune drops its partition). Afterwards `restore --into new` of the day creates a table with no
    column and fails with "column "id" of relation "back" does not exist ... to fix: the target must have every
    column the archive has: add the one named, or restore into a new table (--into new)", the very option that
    was given: the README's way back for a removed day does not work, and the removal proceeded on that proof.
    Expected: a manifest whose table definition does not define the columns it records (none, duplicated, or
    other names than columns[]) is refused as untrustworthy where it is read, so prune refuses the day ("its
    archive is not proven: ...") and restore names the manifest. Fix idea: _consistency_problem compares
    table_definition.columns' names with columns[]' (where the definition is present)."""
    table, _, result = _archived(conn, schema, store, retention={"keep_days": 30, "action": "drop"})
    _reseal(s3_client, bucket, result.manifest_key, lambda m: m["table_definition"].update(columns=[]))
    done, out = _run(pg, s3, bucket, tmp_path, table, "prune", "--dry-run")
    assert "would remove" not in out, out
    done, out = _run(pg, s3, bucket, tmp_path, table, "restore", "--into", "new", "--target", f"{schema}.back")
    assert done.exit_code != 0 and "(--into new)" not in out, out


def test_a_manifest_whose_definition_gives_a_column_a_type_that_is_no_name_is_refused_as_a_manifest(
        pg, conn, schema, s3, bucket, store, s3_client, tmp_path):
    """A manifest edited by hand and resealed whose table_definition.columns[0].type is a number (5) instead of a
    type name: decode_manifest checks the definition's columns are objects with a name, not the type's kind.
    `restore --into new`, `verify --deep` and `prune --dry-run` then pass the number to to_regtype and fail with
    "column 'id': checking the type name 5 failed: the server rejected the archiver's SQL (UndefinedFunction:
    function pg_catalog.to_regtype(smallint) does not exist); to fix: check the table definition; if it looks
    right, report it with this message": a bug report, and "check the table definition" points at the source
    table, which is fine. Expected: the manifest is refused as untrustworthy where it is read ("its field
    table_definition.columns['id'].type is 5, not a string"), by every command alike. Fix idea: in
    _optional_shape_problem, check table_definition.columns[].type (and not_null: a bool) as columns[].pg_type is."""
    table, _, result = _archived(conn, schema, store)
    _reseal(s3_client, bucket, result.manifest_key, lambda m: m["table_definition"]["columns"][0].update(type=5))
    for command in (("restore", "--into", "new", "--target", f"{schema}.back"), ("verify", "--deep")):
        done, out = _run(pg, s3, bucket, tmp_path, table, *command)
        assert done.exit_code != 0, out
        assert "rejected the archiver's SQL" not in out and "report it" not in out, (command, out)


def test_a_zero_byte_object_whose_manifest_records_rows_is_not_skipped_onto_or_called_equal(
        pg, conn, schema, s3, bucket, store, s3_client, tmp_path):
    """The day's object is replaced by a zero-byte one (a sync tool's placeholder, a failed copy) and its manifest
    updated to match (helpers.forge_object: bytes 0, the MD5/SHA-256/ETag of nothing), its rows (50) and
    fingerprint left as they were. No format holds 50 rows in no bytes, and the manifest says so itself, yet
    decode_manifest accepts it: `archive --day` says `skipped` (the README: skipped only where "the object it
    names is whole"), `compare` says `equal`, `list` says `archived` and `verify` says `ok`; only a download
    finds out. Nothing archives the day again, and the one green verdict the operator gets is on bytes that are
    not the day's archive. Expected: a manifest recording rows in an object of 0 bytes contradicts itself and
    is untrustworthy: the archive run archives the day again (a new generation) instead of skipping, and
    compare calls the day differing or unreadable, not equal. Fix idea: _consistency_problem refuses a
    non-empty day whose object.bytes is 0 (or less than the format's least bytes a row)."""
    table, _, result = _archived(conn, schema, store)
    forge_object(s3_client, bucket, result.key, result.manifest_key, b"")
    done, out = _run(pg, s3, bucket, tmp_path, table, "compare", "--json")
    [day] = json.loads(done.stdout)["days"]
    assert day["result"] != "equal", day
    done, out = _run(pg, s3, bucket, tmp_path, table, "archive", "--json")
    [day] = json.loads(done.stdout)["days"]
    assert day["status"] != "skipped", day
